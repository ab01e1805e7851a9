//! A slot: a virtio-mmio window a device can be put into, and taken out
//! of, while the VM runs (`husk network connect` of a running appliance).
//!
//! An empty slot reads as device ID 0, which Linux's virtio-mmio driver
//! probes at boot and leaves alone ("a placeholder with no function"). Once
//! a device is in it, the guest probes the window again (writing its
//! platform device's name to `/sys/bus/platform/drivers_probe`) and finds
//! that device; before one is taken out, the guest unbinds its driver,
//! which resets the device. The transport only lets either happen while
//! no driver holds the window ([`crate::virtio::mmio::MmioTransport::plug`]).
//!
//! A detached VM's boot-time network interfaces are in slots too, each
//! holding its device from the start ([`Slot::holding`]), so that one can
//! be taken out while the VM runs (`husk network disconnect` of a network
//! it booted on).
//!
//! A slot's window, interrupt and queue notifications are wired once, at
//! boot, like any device's, so putting a device in needs no new KVM
//! registration on the sandboxed VMM thread. Its host descriptors change
//! with its device, so the slot keeps an epoll of its own over them and
//! the VMM's loop watches that one descriptor, as vsock does for its
//! streams.

use std::io;
use std::os::fd::AsRawFd;

use tracing::warn;
use virtio_queue::QueueState;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::{ActivateError, Activation, DeviceError, HostEvent, Ready, VirtioDevice};

/// The device ID of an empty window.
pub const EMPTY: u32 = 0;

/// Why a device cannot be put into a slot.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("the slot has a device already")]
    Occupied,
    #[error("the slot is empty")]
    Empty,
    #[error("the slot's queues are {slot:?}, the device's {device:?}")]
    Queues { slot: Vec<u16>, device: Vec<u16> },
    #[error("a device whose queues another process serves cannot go into a slot")]
    ServedElsewhere,
    #[error("cannot watch the device's host descriptors")]
    Watch(#[source] io::Error),
    #[error("a driver holds the slot's window (status {0:#x}): the guest must let it go first")]
    Driven(u32),
    #[error("the device is no slot")]
    NotASlot,
}

pub struct Slot {
    /// The queues every device in this slot has (their number is fixed by
    /// the notifications wired at boot).
    queues: Vec<u16>,
    device: Option<Box<dyn VirtioDevice>>,
    /// The device's host descriptors, each under its own token.
    epoll: Epoll,
    watched: Vec<i32>,
    /// It held a device at boot ([`Slot::holding`]).
    booted_full: bool,
    /// A device was put in or taken out since boot: the slot is no longer
    /// what a VM restored from a snapshot of it would boot with.
    changed: bool,
}

impl Slot {
    /// An empty slot for devices with queues of these maximum sizes.
    pub fn new(queues: &[u16]) -> io::Result<Self> {
        Ok(Slot {
            queues: queues.to_vec(),
            device: None,
            epoll: Epoll::new()?,
            watched: Vec::new(),
            booted_full: false,
            changed: false,
        })
    }

    /// A slot that holds `device` from boot: a device the VM boots with,
    /// and saves and restores as it would without a slot, until it is
    /// taken out.
    pub fn holding(device: Box<dyn VirtioDevice>) -> Result<Self, SlotError> {
        let mut slot = Slot::new(device.queue_max_sizes()).map_err(SlotError::Watch)?;
        slot.put(device)?;
        slot.booted_full = true;
        slot.changed = false;
        Ok(slot)
    }

    pub fn is_empty(&self) -> bool {
        self.device.is_none()
    }

    /// Puts `device` into the empty slot and watches its host descriptors.
    /// Call through the transport, which checks that no driver is bound.
    pub(crate) fn put(&mut self, device: Box<dyn VirtioDevice>) -> Result<(), SlotError> {
        if self.device.is_some() {
            return Err(SlotError::Occupied);
        }
        if device.queue_max_sizes() != self.queues.as_slice() {
            return Err(SlotError::Queues {
                slot: self.queues.clone(),
                device: device.queue_max_sizes().to_vec(),
            });
        }
        if device.queues_served_elsewhere() {
            return Err(SlotError::ServedElsewhere);
        }
        for h in device.host_events() {
            let mut set = EventSet::EDGE_TRIGGERED | EventSet::READ_HANG_UP;
            set.set(EventSet::IN, h.readable);
            set.set(EventSet::OUT, h.writable);
            let added = self.epoll.ctl(
                ControlOperation::Add,
                h.fd,
                EpollEvent::new(set, u64::from(h.token)),
            );
            if let Err(e) = added {
                self.unwatch();
                return Err(SlotError::Watch(e));
            }
            self.watched.push(h.fd);
        }
        self.device = Some(device);
        self.changed = true;
        Ok(())
    }

    /// Takes the device out, off the slot's epoll, leaving the slot empty.
    pub(crate) fn take(&mut self) -> Option<Box<dyn VirtioDevice>> {
        self.unwatch();
        let device = self.device.take();
        self.changed |= device.is_some();
        device
    }

    fn unwatch(&mut self) {
        for fd in self.watched.drain(..) {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
    }
}

impl VirtioDevice for Slot {
    fn device_type(&self) -> u32 {
        self.device.as_ref().map_or(EMPTY, |d| d.device_type())
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queues
    }

    fn features(&self) -> u64 {
        self.device.as_ref().map_or(0, |d| d.features())
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        match &self.device {
            Some(d) => d.read_config(offset, data),
            None => data.fill(0),
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if let Some(d) = &mut self.device {
            d.write_config(offset, data);
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        match &mut self.device {
            Some(d) => d.activate(activation),
            None => Err(ActivateError::NoDevice),
        }
    }

    fn reset(&mut self) {
        if let Some(d) = &mut self.device {
            d.reset();
        }
    }

    fn process_queue(&mut self, queue: usize) -> Result<(), DeviceError> {
        match &mut self.device {
            Some(d) => d.process_queue(queue),
            None => Ok(()),
        }
    }

    fn host_events(&self) -> Vec<HostEvent> {
        vec![HostEvent {
            fd: self.epoll.as_raw_fd(),
            token: 0,
            readable: true,
            writable: false,
        }]
    }

    /// Hands the device what its descriptors are ready for.
    fn process_host_event(&mut self, _token: u32, _ready: Ready) -> Result<(), DeviceError> {
        let mut events = [EpollEvent::default(); 8];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("a slot's epoll failed: {e}");
                    return Ok(());
                }
            };
            let Some(device) = &mut self.device else {
                return Ok(());
            };
            for ev in &events[..n] {
                device.process_host_event(ev.data() as u32, Ready::from(ev.event_set()))?;
            }
            if n < events.len() {
                return Ok(());
            }
        }
    }

    fn queue_states(&self) -> Option<Vec<QueueState>> {
        self.device.as_ref().and_then(|d| d.queue_states())
    }

    fn has_streams(&self) -> bool {
        self.device.as_ref().is_some_and(|d| d.has_streams())
    }

    fn streams_lost(&mut self) -> Result<(), DeviceError> {
        match &mut self.device {
            Some(d) => d.streams_lost(),
            None => Ok(()),
        }
    }

    fn snapshot_refusal(&self) -> Option<&'static str> {
        // A snapshot's devices are the ones a VM boots with: one put in
        // while it ran would be an empty slot in the restored VM, and one
        // taken out would be back in it.
        match (&self.device, self.changed) {
            (Some(_), true) => Some("a network was connected to it while it ran"),
            (None, true) if self.booted_full => {
                Some("a network it booted on was disconnected while it ran")
            }
            (Some(d), false) => d.snapshot_refusal(),
            (None, _) => None,
        }
    }

    fn as_slot(&mut self) -> Option<&mut Slot> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    /// A device with one host descriptor, counting what it was told.
    struct Probe {
        fd: UnixStream,
        heard: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[256, 256]
        }
        fn features(&self) -> u64 {
            7
        }
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0xab);
        }
        fn activate(&mut self, _a: Activation) -> Result<(), ActivateError> {
            Ok(())
        }
        fn reset(&mut self) {}
        fn process_queue(&mut self, _queue: usize) -> Result<(), DeviceError> {
            Ok(())
        }
        fn host_events(&self) -> Vec<HostEvent> {
            vec![HostEvent {
                fd: self.fd.as_raw_fd(),
                token: 5,
                readable: true,
                writable: false,
            }]
        }
        fn process_host_event(&mut self, token: u32, ready: Ready) -> Result<(), DeviceError> {
            assert_eq!(token, 5);
            assert!(ready.readable);
            self.heard.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
        fn queue_states(&self) -> Option<Vec<QueueState>> {
            None
        }
    }

    fn probe() -> (
        Probe,
        UnixStream,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let heard = std::sync::Arc::default();
        let p = Probe {
            fd: ours,
            heard: std::sync::Arc::clone(&heard),
        };
        (p, theirs, heard)
    }

    #[test]
    fn an_empty_slot_is_a_placeholder() {
        let mut slot = Slot::new(&[256, 256]).unwrap();
        assert_eq!(slot.device_type(), EMPTY);
        assert_eq!(slot.features(), 0);
        let mut config = [1u8; 8];
        slot.read_config(0, &mut config);
        assert_eq!(config, [0; 8]);
        assert_eq!(slot.queue_max_sizes(), &[256, 256]);
        assert!(slot.process_queue(0).is_ok());
        assert!(slot.snapshot_refusal().is_none());
        assert!(slot.take().is_none());
    }

    #[test]
    fn a_device_put_in_is_served_and_taken_out_is_not() {
        use std::io::Write;
        let mut slot = Slot::new(&[256, 256]).unwrap();
        let (dev, mut peer, heard) = probe();
        slot.put(Box::new(dev)).unwrap();
        assert_eq!(slot.device_type(), 1);
        assert_eq!(slot.features(), 7);
        assert!(slot.snapshot_refusal().is_some());
        let (second, _, _) = probe();
        assert!(matches!(
            slot.put(Box::new(second)),
            Err(SlotError::Occupied)
        ));

        // The device's descriptor reaches it through the slot's epoll.
        peer.write_all(b"x").unwrap();
        slot.process_host_event(0, Ready::default()).unwrap();
        assert_eq!(heard.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Edge-triggered, and drained: nothing new, nothing heard.
        slot.process_host_event(0, Ready::default()).unwrap();
        assert_eq!(heard.load(std::sync::atomic::Ordering::SeqCst), 1);

        let out = slot.take().expect("the device comes back");
        assert_eq!(out.device_type(), 1);
        assert_eq!(slot.device_type(), EMPTY);
        peer.write_all(b"y").unwrap();
        slot.process_host_event(0, Ready::default()).unwrap();
        assert_eq!(
            heard.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "a device taken out hears nothing more"
        );
        // And it can go back in.
        slot.put(out).unwrap();
        slot.process_host_event(0, Ready::default()).unwrap();
        assert_eq!(heard.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn a_device_held_from_boot_is_saved_until_taken_out() {
        use std::io::Write;
        let (dev, mut peer, heard) = probe();
        let mut slot = Slot::holding(Box::new(dev)).unwrap();
        assert_eq!(slot.device_type(), 1);
        assert_eq!(slot.queue_max_sizes(), &[256, 256]);
        assert!(
            slot.snapshot_refusal().is_none(),
            "a device the VM booted with is saved as any other"
        );
        peer.write_all(b"x").unwrap();
        slot.process_host_event(0, Ready::default()).unwrap();
        assert_eq!(heard.load(std::sync::atomic::Ordering::SeqCst), 1);

        let out = slot.take().expect("the boot device comes out");
        let refusal = slot
            .snapshot_refusal()
            .expect("a restore would bring it back");
        assert!(refusal.contains("disconnected"), "{refusal}");
        // Back in (or another one in), it is still not the VM's boot state.
        slot.put(out).unwrap();
        let refusal = slot
            .snapshot_refusal()
            .expect("not the device it booted with");
        assert!(refusal.contains("connected"), "{refusal}");
    }

    #[test]
    fn a_slot_emptied_again_is_as_it_booted() {
        let mut slot = Slot::new(&[256, 256]).unwrap();
        let (dev, _, _) = probe();
        slot.put(Box::new(dev)).unwrap();
        assert!(slot.snapshot_refusal().is_some());
        slot.take().unwrap();
        assert!(slot.snapshot_refusal().is_none());
    }

    #[test]
    fn a_device_with_other_queues_does_not_fit() {
        let mut slot = Slot::new(&[128]).unwrap();
        let (dev, _, _) = probe();
        let err = slot.put(Box::new(dev)).unwrap_err();
        assert!(matches!(err, SlotError::Queues { .. }), "{err}");
        assert!(slot.is_empty());
    }
}
