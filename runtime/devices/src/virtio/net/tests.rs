//! virtio-net over in-process guest memory, with a backend in memory.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::virtio::test_util::{irq, mem};
use crate::virtio::{IrqLine, Mem, INT_VRING};

#[derive(Default)]
struct Wire {
    /// Frames waiting to be received by the device.
    inbound: VecDeque<Vec<u8>>,
    /// Frames the device sent.
    sent: Vec<Vec<u8>>,
    /// The backend takes nothing while this is set.
    full: bool,
    recv_calls: usize,
}

struct MockBackend {
    wire: Arc<Mutex<Wire>>,
    offloads: bool,
    fd: EventFd,
}

impl AsRawFd for MockBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl NetBackend for MockBackend {
    fn offloads(&self) -> bool {
        self.offloads
    }

    fn send(&mut self, frame: &[u8]) -> std::io::Result<Sent> {
        let mut w = self.wire.lock().unwrap();
        if w.full {
            return Ok(Sent::WouldBlock);
        }
        w.sent.push(frame.to_vec());
        Ok(Sent::Done)
    }

    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        let mut w = self.wire.lock().unwrap();
        w.recv_calls += 1;
        Ok(w.inbound.pop_front().map(|f| {
            buf[..f.len()].copy_from_slice(&f);
            f.len()
        }))
    }
}

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

struct Rig<'a> {
    mem: &'a Mem,
    rx: MockSplitQueue<'a, Mem>,
    tx: MockSplitQueue<'a, Mem>,
    dev: Net,
    irq: Arc<IrqLine>,
    wire: Arc<Mutex<Wire>>,
}

fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
}

/// A device with 16-slot queues, activated with `features` (masked to
/// what it offers).
fn rig(mem: &Mem, features: u64) -> Rig<'_> {
    let wire = Arc::new(Mutex::new(Wire::default()));
    let backend = MockBackend {
        wire: wire.clone(),
        offloads: false,
        fd: EventFd::new(0).unwrap(),
    };
    let mut dev = Net::new(Box::new(backend), MAC);
    // The queues' rings live apart: rx at 0, tx at 64 KiB.
    let rx = MockSplitQueue::new(mem, 16);
    let tx = MockSplitQueue::create(mem, GuestAddress(0x1_0000), 16);
    let irq = irq();
    let features = features & dev.features();
    let mut queues: Vec<Queue> = vec![rx.create_queue().unwrap(), tx.create_queue().unwrap()];
    // As the transport does when the driver took event indexes.
    for q in &mut queues {
        q.set_event_idx(features & 1 << VIRTIO_RING_F_EVENT_IDX != 0);
    }
    dev.activate(Activation {
        mem: mem.clone(),
        irq: irq.clone(),
        queues,
        features,
    })
    .unwrap();
    Rig {
        mem,
        rx,
        tx,
        dev,
        irq,
        wire,
    }
}

const MERGEABLE: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;
const DATA: u64 = 0x2_0000;

fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; HDR_LEN];
    f.extend((0..len).map(|i| (i * 7 + 3) as u8));
    f
}

impl Rig<'_> {
    fn used(&self, q: &MockSplitQueue<Mem>, i: usize) -> (u32, u32) {
        let e = q.used().ring().ref_at(i).unwrap().load();
        (e.id(), e.len())
    }

    fn used_idx(&self, q: &MockSplitQueue<Mem>) -> u16 {
        q.used().idx().load()
    }
}

#[test]
fn transmits_a_frame_split_over_descriptors() {
    let m = mem();
    let mut r = rig(&m, MERGEABLE);
    let f = frame(100);
    m.write_slice(&f[..HDR_LEN], GuestAddress(DATA)).unwrap();
    m.write_slice(&f[HDR_LEN..], GuestAddress(DATA + 0x1000))
        .unwrap();
    r.tx.add_desc_chains(
        &[
            desc(DATA, HDR_LEN as u32, VRING_DESC_F_NEXT, 1),
            desc(DATA + 0x1000, 100, 0, 0),
        ],
        0,
    )
    .unwrap();
    r.dev.process_queue(TX_QUEUE).unwrap();
    assert_eq!(r.wire.lock().unwrap().sent, vec![f]);
    assert_eq!(r.used_idx(&r.tx), 1);
    assert_eq!(r.used(&r.tx, 0), (0, 0));
    assert_eq!(r.irq.status() & INT_VRING, INT_VRING);
}

#[test]
fn chains_that_are_no_frame_are_dropped_and_returned() {
    let m = mem();
    let mut r = rig(&m, MERGEABLE);
    m.write_slice(&frame(60), GuestAddress(DATA)).unwrap();
    r.tx.add_desc_chains(
        &[
            // Too short for the header, then empty, then a real frame.
            desc(DATA, 6, 0, 0),
            desc(DATA, 0, 0, 0),
            desc(DATA, (HDR_LEN + 60) as u32, 0, 0),
            // Only writable: nothing to read, so no frame.
            desc(DATA, 64, VRING_DESC_F_WRITE, 0),
        ],
        0,
    )
    .unwrap();
    r.dev.process_queue(TX_QUEUE).unwrap();
    assert_eq!(r.wire.lock().unwrap().sent, vec![frame(60)]);
    assert_eq!(r.used_idx(&r.tx), 4, "every chain goes back to the guest");
    assert_eq!(r.dev.stats.tx_dropped.count(), 3);
}

#[test]
fn a_looping_chain_neither_hangs_nor_panics() {
    let m = mem();
    let mut r = rig(&m, MERGEABLE);
    m.write_slice(&frame(20), GuestAddress(DATA)).unwrap();
    // Descriptor 0 points at itself.
    r.tx.add_desc_chains(&[desc(DATA, 32, VRING_DESC_F_NEXT, 0)], 0)
        .unwrap();
    let _ = r.dev.process_queue(TX_QUEUE);
    assert!(r.wire.lock().unwrap().sent.len() <= 1);
}

#[test]
fn a_full_backend_holds_one_frame_until_writable() {
    let m = mem();
    let mut r = rig(&m, MERGEABLE);
    m.write_slice(&frame(10), GuestAddress(DATA)).unwrap();
    r.wire.lock().unwrap().full = true;
    let chain = [desc(DATA, (HDR_LEN + 10) as u32, 0, 0)];
    r.tx.add_desc_chains(&chain, 0).unwrap();
    r.tx.add_desc_chains(&chain, 1).unwrap();
    r.dev.process_queue(TX_QUEUE).unwrap();
    // The first frame was read and is held; the second stays in the ring.
    assert_eq!(r.used_idx(&r.tx), 1);
    assert!(r.wire.lock().unwrap().sent.is_empty());
    r.wire.lock().unwrap().full = false;
    r.dev
        .process_host_event(
            NetToken::Backend as u32,
            Ready {
                writable: true,
                ..Ready::default()
            },
        )
        .unwrap();
    assert_eq!(r.wire.lock().unwrap().sent.len(), 2);
    assert_eq!(r.used_idx(&r.tx), 2);
}

/// Offers `n` receive buffers of `size` bytes each, one descriptor each.
fn offer_rx(r: &Rig, first: u16, n: u16, size: u32) {
    let descs: Vec<_> = (0..n)
        .map(|i| {
            desc(
                DATA + u64::from(first + i) * 0x1000,
                size,
                VRING_DESC_F_WRITE,
                0,
            )
        })
        .collect();
    r.rx.add_desc_chains(&descs, first).unwrap();
}

#[test]
fn a_large_frame_spans_mergeable_buffers() {
    let m = mem();
    let mut r = rig(&m, MERGEABLE);
    let f = frame(3000);
    r.wire.lock().unwrap().inbound.push_back(f.clone());
    offer_rx(&r, 0, 4, 1526);
    r.dev.process_queue(RX_QUEUE).unwrap();
    assert_eq!(r.used_idx(&r.rx), 2);
    assert_eq!(r.used(&r.rx, 0), (0, 1526));
    assert_eq!(r.used(&r.rx, 1), (1, (f.len() - 1526) as u32));
    let mut got = vec![0u8; f.len()];
    r.mem
        .read_slice(&mut got[..1526], GuestAddress(DATA))
        .unwrap();
    r.mem
        .read_slice(&mut got[1526..], GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 2, "num_buffers");
    assert_eq!(&got[HDR_LEN..], &f[HDR_LEN..]);
    assert_eq!(r.irq.status() & INT_VRING, INT_VRING);
}

#[test]
fn without_buffers_a_frame_waits_and_nothing_more_is_read() {
    let m = mem();
    let mut r = rig(&m, MERGEABLE);
    for n in [50, 60, 70] {
        r.wire.lock().unwrap().inbound.push_back(frame(n));
    }
    let readable = Ready {
        readable: true,
        ..Ready::default()
    };
    r.dev
        .process_host_event(NetToken::Backend as u32, readable)
        .unwrap();
    r.dev
        .process_host_event(NetToken::Backend as u32, readable)
        .unwrap();
    // One frame held; the other two stay with the backend.
    assert_eq!(r.wire.lock().unwrap().inbound.len(), 2);
    assert_eq!(r.used_idx(&r.rx), 0);
    // One buffer: the held frame goes, the next one waits.
    offer_rx(&r, 0, 1, 1526);
    r.dev.process_queue(RX_QUEUE).unwrap();
    assert_eq!(r.used_idx(&r.rx), 1);
    assert_eq!(r.used(&r.rx, 0).1, (HDR_LEN + 50) as u32);
    assert_eq!(r.wire.lock().unwrap().inbound.len(), 1);
    offer_rx(&r, 1, 4, 1526);
    r.dev.process_queue(RX_QUEUE).unwrap();
    assert_eq!(r.used_idx(&r.rx), 3);
    assert!(r.wire.lock().unwrap().inbound.is_empty());
}

/// The avail event (event indexes): after the used ring's entries.
fn avail_event(r: &Rig) -> u16 {
    let at = r.rx.used_addr().0 + 4 + 8 * 16;
    r.mem.read_obj(GuestAddress(at)).unwrap()
}

#[test]
fn with_event_indexes_a_frame_short_of_buffers_asks_for_the_next_one() {
    let m = mem();
    let mut r = rig(&m, MERGEABLE | 1 << VIRTIO_RING_F_EVENT_IDX);
    r.wire.lock().unwrap().inbound.push_back(frame(3000));
    // One buffer posted, two needed: the frame waits, and the guest is
    // asked to notify its next buffer (avail event = the avail index),
    // though one buffer is still unused.
    offer_rx(&r, 0, 1, 1526);
    r.dev.process_queue(RX_QUEUE).unwrap();
    assert_eq!(r.used_idx(&r.rx), 0);
    assert_eq!(avail_event(&r), 1);
    offer_rx(&r, 1, 1, 1526);
    r.dev.process_queue(RX_QUEUE).unwrap();
    assert_eq!(r.used_idx(&r.rx), 2);
}

#[test]
fn with_event_indexes_transmit_rearms_after_draining() {
    let m = mem();
    let mut r = rig(&m, MERGEABLE | 1 << VIRTIO_RING_F_EVENT_IDX);
    m.write_slice(&frame(10), GuestAddress(DATA)).unwrap();
    let chain = [desc(DATA, (HDR_LEN + 10) as u32, 0, 0)];
    r.tx.add_desc_chains(&chain, 0).unwrap();
    r.tx.add_desc_chains(&chain, 1).unwrap();
    r.dev.process_queue(TX_QUEUE).unwrap();
    assert_eq!(r.wire.lock().unwrap().sent.len(), 2);
    // The guest notifies again when it adds the third frame.
    let at = r.tx.used_addr().0 + 4 + 8 * 16;
    let event: u16 = m.read_obj(GuestAddress(at)).unwrap();
    assert_eq!(event, 2);
}

#[test]
fn a_frame_too_big_for_a_lone_buffer_is_dropped() {
    let m = mem();
    // Not mergeable: one buffer per frame.
    let mut r = rig(&m, 0);
    r.wire.lock().unwrap().inbound.push_back(frame(2000));
    r.wire.lock().unwrap().inbound.push_back(frame(100));
    offer_rx(&r, 0, 2, 1526);
    r.dev.process_queue(RX_QUEUE).unwrap();
    assert_eq!(r.dev.stats.rx_dropped.count(), 1);
    assert_eq!(r.used_idx(&r.rx), 2);
    assert_eq!(r.used(&r.rx, 0), (0, 0), "the small buffer goes back empty");
    assert_eq!(r.used(&r.rx, 1), (1, (HDR_LEN + 100) as u32));
}

#[test]
fn tiny_mergeable_buffers_cannot_stall_the_device() {
    let m = mem();
    let mut r = rig(&m, MERGEABLE);
    // 16 buffers of 16 bytes can never hold 2000 bytes.
    r.wire.lock().unwrap().inbound.push_back(frame(2000));
    r.wire.lock().unwrap().inbound.push_back(frame(40));
    offer_rx(&r, 0, 16, 16);
    r.dev.process_queue(RX_QUEUE).unwrap();
    assert_eq!(r.dev.stats.rx_dropped.count(), 1);
    // The next, small frame used the buffers left in place.
    assert_eq!(r.used_idx(&r.rx), 4);
}

#[test]
fn receive_buffers_outside_memory_are_a_device_error() {
    let m = mem();
    let mut r = rig(&m, MERGEABLE);
    r.wire.lock().unwrap().inbound.push_back(frame(100));
    r.rx.add_desc_chains(&[desc(0xffff_0000_0000, 1526, VRING_DESC_F_WRITE, 0)], 0)
        .unwrap();
    assert!(r.dev.process_queue(RX_QUEUE).is_err());
}

#[test]
fn config_space_holds_the_mac_and_link_up() {
    let m = mem();
    let r = rig(&m, 0);
    let mut c = [0u8; 8];
    r.dev.read_config(0, &mut c);
    assert_eq!(&c[..6], &MAC);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1);
}

#[test]
fn offloads_are_offered_only_when_the_backend_carries_them() {
    let with = |offloads| {
        let backend = MockBackend {
            wire: Arc::default(),
            offloads,
            fd: EventFd::new(0).unwrap(),
        };
        Net::new(Box::new(backend), MAC).features()
    };
    assert_eq!(with(false) & offload_features(), 0);
    assert_eq!(with(true) & offload_features(), offload_features());
    assert_ne!(with(false) & MERGEABLE, 0);
}

#[test]
fn host_events_before_activation_are_ignored() {
    let wire = Arc::new(Mutex::new(Wire::default()));
    wire.lock().unwrap().inbound.push_back(frame(10));
    let backend = MockBackend {
        wire: wire.clone(),
        offloads: false,
        fd: EventFd::new(0).unwrap(),
    };
    let mut dev = Net::new(Box::new(backend), MAC);
    dev.process_host_event(
        NetToken::Backend as u32,
        Ready {
            readable: true,
            ..Ready::default()
        },
    )
    .unwrap();
    assert_eq!(wire.lock().unwrap().inbound.len(), 1);
}

/// The guest may add a buffer after the device found the ring empty and
/// before it rearms, and not notify it (the avail event it read was
/// older). Rearming must report it: left in the ring until the guest's
/// next buffer, a frame stays unsent, and Linux's TCP does not send again
/// what is still queued in the device (a transfer stopped for good).
#[test]
fn rearm_reports_a_buffer_added_after_the_ring_was_found_empty() {
    let m = mem();
    let mut r = rig(&m, MERGEABLE | 1 << VIRTIO_RING_F_EVENT_IDX);
    m.write_slice(&frame(10), GuestAddress(DATA)).unwrap();
    let chain = [desc(DATA, (HDR_LEN + 10) as u32, 0, 0)];
    r.tx.add_desc_chains(&chain, 0).unwrap();
    let DeviceState::Active(a) = &mut r.dev.state else {
        panic!("not active");
    };
    // The device takes the frame and finds the ring empty at index 1.
    assert!(a.queues[TX_QUEUE].pop_descriptor_chain(&m).is_some());
    assert!(a.queues[TX_QUEUE].pop_descriptor_chain(&m).is_none());
    let seen = a.queues[TX_QUEUE].next_avail();
    // The guest adds one more now.
    r.tx.add_desc_chains(&chain, 1).unwrap();
    assert!(rearm(a, TX_QUEUE, seen).unwrap(), "the added frame is seen");
    let at = r.tx.used_addr().0 + 4 + 8 * 16;
    assert_eq!(m.read_obj::<u16>(GuestAddress(at)).unwrap(), seen);

    // Receiving: a frame short of buffers, and one more posted before
    // the device rearms.
    let mut f = frame(3000);
    offer_rx(&r, 0, 1, 1526);
    let DeviceState::Active(a) = &mut r.dev.state else {
        panic!("not active");
    };
    let Delivery::NoBuffers { seen } = deliver(a, &mut f, true).unwrap() else {
        panic!("one buffer cannot hold 3000 bytes");
    };
    assert_eq!(seen, 1);
    assert_eq!(a.queues[RX_QUEUE].next_avail(), 0, "nothing consumed");
    let buffer = desc(DATA + 0x1000, 1526, VRING_DESC_F_WRITE, 0);
    r.rx.add_desc_chains(&[buffer], 1).unwrap();
    assert!(
        rearm(a, RX_QUEUE, seen).unwrap(),
        "the added buffer is seen"
    );
    assert!(matches!(deliver(a, &mut f, true), Ok(Delivery::Done)));
}

/// An avail index a hostile guest set past what the ring can hold reads as
/// "more buffers" to a rearm, but none can be taken: neither queue loops
/// on it, and the device still works once the guest mends the ring.
#[test]
fn an_avail_index_too_far_ahead_neither_hangs_nor_panics() {
    let m = mem();
    let mut r = rig(&m, MERGEABLE | 1 << VIRTIO_RING_F_EVENT_IDX);
    r.tx.avail().idx().store(1000);
    r.rx.avail().idx().store(1000);
    r.wire.lock().unwrap().inbound.push_back(frame(100));
    r.dev.process_queue(TX_QUEUE).unwrap();
    r.dev.process_queue(RX_QUEUE).unwrap();
    assert_eq!(r.used_idx(&r.tx), 0);
    assert_eq!(r.used_idx(&r.rx), 0);
    // Mended: one receive buffer, and the held frame goes.
    r.rx.avail().idx().store(0);
    offer_rx(&r, 0, 1, 1526);
    r.dev.process_queue(RX_QUEUE).unwrap();
    assert_eq!(r.used_idx(&r.rx), 1);
}
