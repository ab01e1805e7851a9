//! The device manager: one place that gives each virtio device its MMIO
//! window, its interrupt and its kernel command-line entry, wires its
//! interrupt to a KVM irqfd and its queue notifications to ioeventfds, and
//! puts its queues and host descriptors on the VMM thread's event loop.
//! Adding a device is one [`DeviceManager::attach`].

use std::sync::{Arc, Mutex};

use devices::virtio::mmio::{MmioTransport, MMIO_SIZE, NOTIFY_OFFSET};
use devices::virtio::{EventToken, Ready, VirtioDevice};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use kvm_ioctls::{IoEventAddress, VmFd};
use linux_loader::cmdline::Cmdline;
use tracing::warn;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::layout::{FIRST_DEVICE_IRQ, LAST_DEVICE_IRQ, VIRTIO_MMIO_BASE};
use crate::vcpu::MmioBus;

/// The most devices one VM can have: one IOAPIC pin each.
pub const MAX_DEVICES: usize = (LAST_DEVICE_IRQ - FIRST_DEVICE_IRQ + 1) as usize;

#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    #[error("too many devices: at most {MAX_DEVICES}")]
    TooManyDevices,
    #[error("creating an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("{0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error("adding a device to the kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
}

pub type Transport = Arc<Mutex<MmioTransport>>;

#[derive(Default)]
pub struct DeviceManager {
    bus: MmioBus,
    transports: Vec<Transport>,
}

impl DeviceManager {
    /// Puts `dev` behind the next MMIO window and interrupt, and tells the
    /// guest kernel where it is.
    pub fn attach(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        dev: Box<dyn VirtioDevice>,
        cmdline: &mut Cmdline,
    ) -> Result<Transport, DeviceManagerError> {
        let index = self.transports.len();
        if index >= MAX_DEVICES {
            return Err(DeviceManagerError::TooManyDevices);
        }
        let base = VIRTIO_MMIO_BASE + index as u64 * MMIO_SIZE;
        let irq = FIRST_DEVICE_IRQ + index as u32;
        let irq_evt = EventFd::new(EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)?;
        let t =
            MmioTransport::new(mem.clone(), dev, irq_evt).map_err(DeviceManagerError::EventFd)?;
        vm.register_irqfd(t.irq_evt(), irq)
            .map_err(|e| DeviceManagerError::Kvm("KVM_IRQFD", e))?;
        for (i, evt) in t.queue_evts().iter().enumerate() {
            vm.register_ioevent(evt, &IoEventAddress::Mmio(base + NOTIFY_OFFSET), i as u32)
                .map_err(|e| DeviceManagerError::Kvm("KVM_IOEVENTFD", e))?;
        }
        cmdline
            .add_virtio_mmio_device(MMIO_SIZE, GuestAddress(base), irq, None)
            .map_err(DeviceManagerError::Cmdline)?;
        let t = Arc::new(Mutex::new(t));
        self.bus.insert(base, t.clone());
        self.transports.push(t.clone());
        Ok(t)
    }

    /// How many devices are attached: the next one's platform device
    /// number (`virtio-mmio.N`, in command-line order).
    pub fn len(&self) -> usize {
        self.transports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.transports.is_empty()
    }

    /// One event-loop subscriber per device, and the MMIO bus for the vCPUs.
    pub fn finish(self) -> (Vec<DeviceEvents>, MmioBus) {
        let subscribers = self.transports.into_iter().map(DeviceEvents).collect();
        (subscribers, self.bus)
    }
}

fn lock(t: &Mutex<MmioTransport>) -> std::sync::MutexGuard<'_, MmioTransport> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// A device's events on the VMM thread: its queue notifications and the
/// host descriptors it waits on (edge-triggered), told apart by
/// [`EventToken`].
pub struct DeviceEvents(Transport);

impl MutEventSubscriber for DeviceEvents {
    fn init(&mut self, ops: &mut EventOps) {
        let t = lock(&self.0);
        let queue_evts = if t.queues_served_elsewhere() {
            &[][..]
        } else {
            t.queue_evts()
        };
        for (i, evt) in queue_evts.iter().enumerate() {
            let token = EventToken::Queue(i as u16).to_data();
            if let Err(e) = ops.add(Events::with_data(evt, token, EventSet::IN)) {
                warn!("cannot watch queue {i} of device {}: {e}", t.device_type());
            }
        }
        for h in t.host_events() {
            let mut set = EventSet::EDGE_TRIGGERED;
            set.set(EventSet::IN, h.readable);
            set.set(EventSet::OUT, h.writable);
            let token = EventToken::Host(h.token).to_data();
            if let Err(e) = ops.add(Events::with_data_raw(h.fd, token, set)) {
                warn!(
                    "cannot watch a host descriptor of device {}: {e}",
                    t.device_type()
                );
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let mut t = lock(&self.0);
        match EventToken::from_data(events.data()) {
            EventToken::Queue(q) => {
                if let Some(evt) = t.queue_evts().get(usize::from(q)) {
                    let _ = evt.read();
                }
                t.process_queue(usize::from(q));
            }
            EventToken::Host(token) => {
                t.process_host_event(token, Ready::from(events.event_set()));
            }
        }
    }
}
