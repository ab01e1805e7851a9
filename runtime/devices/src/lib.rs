//! husk's devices: virtio over the MMIO transport, and nothing else.
//!
//! Three layers, as in the house style: the queue (rust-vmm `virtio-queue`
//! as it is), the device ([`virtio::VirtioDevice`]: type, queues, features,
//! config space, activate, reset, queue processing), and the transport
//! ([`virtio::mmio::MmioTransport`]: the register file, which owns the queues
//! while the driver sets them up). Nothing here knows KVM: the VMM wires
//! queue notifications to ioeventfds and the interrupt to an irqfd, and the
//! devices unit-test over in-process guest memory.

#![forbid(unsafe_code)]

pub mod storage;
pub mod virtio;
