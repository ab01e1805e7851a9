//! The virtio-mmio transport, version 2 (virtio 1.x, section 4.2.2): the
//! register file a driver programs, feature negotiation, the device status
//! machine, and the queues while the driver sets them up.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::warn;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueState, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::slot::SlotError;

use super::{
    ActivateError, Activation, DeviceError, HostEvent, IrqLine, Mem, Ready, VirtioDevice,
    INT_CONFIG,
};

/// Size of one transport's MMIO window.
pub const MMIO_SIZE: u64 = 0x1000;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4b53_5548; // "HUSK"

// Register offsets.
const R_MAGIC: u64 = 0x000;
const R_VERSION: u64 = 0x004;
const R_DEVICE_ID: u64 = 0x008;
const R_VENDOR_ID: u64 = 0x00c;
const R_DEVICE_FEATURES: u64 = 0x010;
const R_DEVICE_FEATURES_SEL: u64 = 0x014;
const R_DRIVER_FEATURES: u64 = 0x020;
const R_DRIVER_FEATURES_SEL: u64 = 0x024;
const R_QUEUE_SEL: u64 = 0x030;
const R_QUEUE_NUM_MAX: u64 = 0x034;
const R_QUEUE_NUM: u64 = 0x038;
const R_QUEUE_READY: u64 = 0x044;
const R_QUEUE_NOTIFY: u64 = 0x050;
const R_INTERRUPT_STATUS: u64 = 0x060;
const R_INTERRUPT_ACK: u64 = 0x064;
const R_STATUS: u64 = 0x070;
const R_QUEUE_DESC_LOW: u64 = 0x080;
const R_QUEUE_DESC_HIGH: u64 = 0x084;
const R_QUEUE_DRIVER_LOW: u64 = 0x090;
const R_QUEUE_DRIVER_HIGH: u64 = 0x094;
const R_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const R_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const R_CONFIG_GENERATION: u64 = 0x0fc;
const R_CONFIG: u64 = 0x100;

/// Offset of the notify register, which the VMM backs with ioeventfds.
pub const NOTIFY_OFFSET: u64 = R_QUEUE_NOTIFY;

/// A queue's state as a snapshot holds it (virtio-queue's `QueueState`,
/// which has no serde of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQueue {
    pub max_size: u16,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

impl From<QueueState> for SavedQueue {
    fn from(q: QueueState) -> Self {
        SavedQueue {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl From<SavedQueue> for QueueState {
    fn from(q: SavedQueue) -> Self {
        QueueState {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// A transport's registers and its device's queues, for a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    pub device_type: u32,
    pub status: u32,
    pub driver_features: u64,
    pub queue_select: u32,
    pub device_features_select: u32,
    pub driver_features_select: u32,
    pub interrupt_status: u32,
    pub active: bool,
    pub bad_queue_size: bool,
    /// The queues as the driver set them up (what the registers read).
    pub queues: Vec<SavedQueue>,
    /// Where the active device is in each ring.
    pub device_queues: Option<Vec<SavedQueue>>,
    /// The device had streams to host programs open (see
    /// [`VirtioDevice::has_streams`]); absent in older snapshots.
    #[serde(default)]
    pub streams: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("the VM cannot be snapshotted: {0}")]
pub struct SaveError(pub &'static str);

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("the snapshot holds device type {saved} where this VM has {here}")]
    DeviceType { saved: u32, here: u32 },
    #[error("the snapshot holds {saved} queues for a device with {here}")]
    QueueCount { saved: usize, here: usize },
    #[error("saved queue {0} is not valid: {1}")]
    Queue(usize, String),
    #[error("the snapshot's device is active without queue state, or the reverse")]
    Inconsistent,
    #[error(
        "the snapshot's driver uses features {extra:#x} this device does not offer \
         (another backend?)"
    )]
    Features { extra: u64 },
    #[error("cannot activate the restored device")]
    Activate(#[source] ActivateError),
}

/// Queues from saved states, each checked by virtio-queue as the driver's
/// writes would be.
fn rebuild(saved: &[SavedQueue], count: usize) -> Result<Vec<Queue>, RestoreError> {
    if saved.len() != count {
        return Err(RestoreError::QueueCount {
            saved: saved.len(),
            here: count,
        });
    }
    saved
        .iter()
        .enumerate()
        .map(|(i, q)| {
            Queue::try_from(QueueState::from(*q)).map_err(|e| RestoreError::Queue(i, e.to_string()))
        })
        .collect()
}

/// One virtio device behind its MMIO register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: Mem,
    irq: Arc<IrqLine>,
    /// The queues while the driver configures them; handed to the device at
    /// `DRIVER_OK` and made anew at reset.
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    active: bool,
    /// The driver wrote a queue size virtio-queue refused (not a power of
    /// two, zero, or over the maximum); the queue would otherwise keep its
    /// old size and disagree with the driver's rings.
    bad_queue_size: bool,
    /// What a restore leaves for [`MmioTransport::resume`].
    on_resume: Option<OnResume>,
}

/// What a restored transport still owes its driver once the VM's
/// interrupt controllers and vCPUs are restored: an interrupt raised
/// before that would be overwritten by their saved state, and lost.
#[derive(Debug, Clone, Copy)]
struct OnResume {
    /// Pending at the save: raised again (a spurious interrupt is
    /// harmless, a lost one stalls the driver).
    interrupt_status: u32,
    /// The device had streams the snapshot cannot keep.
    streams: bool,
}

impl MmioTransport {
    /// Wraps `device`; `irq_evt` is the eventfd the VMM will register as its
    /// irqfd. Each queue gets an eventfd for the VMM to register as an
    /// ioeventfd on the notify register.
    pub fn new(mem: Mem, device: Box<dyn VirtioDevice>, irq_evt: EventFd) -> std::io::Result<Self> {
        let queue_evts: Vec<EventFd> = device
            .queue_max_sizes()
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<_, _>>()?;
        let mut device = device;
        if device.queues_served_elsewhere() {
            let copies = queue_evts
                .iter()
                .map(EventFd::try_clone)
                .collect::<Result<Vec<_>, _>>()?;
            device.take_queue_notifiers(copies);
        }
        let mut t = MmioTransport {
            device,
            mem,
            irq: Arc::new(IrqLine::new(irq_evt)),
            queues: Vec::new(),
            queue_evts,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            active: false,
            bad_queue_size: false,
            on_resume: None,
        };
        t.queues = t.fresh_queues();
        Ok(t)
    }

    fn fresh_queues(&self) -> Vec<Queue> {
        self.device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).expect("device queue sizes are powers of two"))
            .collect()
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// Eventfds signalled when the driver notifies queue `i` (index = i).
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    pub fn irq_evt(&self) -> &EventFd {
        self.irq.eventfd()
    }

    /// The device status register (for tests and diagnostics).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Called by the event loop when queue `queue` was notified (or host
    /// input for it is waiting). A guest error marks the device as needing
    /// a reset; it is logged once, then the device stays quiet until reset.
    pub fn process_queue(&mut self, queue: usize) {
        self.serve(|d| d.process_queue(queue));
    }

    /// Whether the VMM's loop leaves the queue notifications to another
    /// process (see [`VirtioDevice::queues_served_elsewhere`]).
    pub fn queues_served_elsewhere(&self) -> bool {
        self.device.queues_served_elsewhere()
    }

    /// The host descriptors the device waits on (see [`VirtioDevice::host_events`]).
    pub fn host_events(&self) -> Vec<HostEvent> {
        self.device.host_events()
    }

    /// Called by the event loop when a host descriptor of the device is
    /// ready. Before `DRIVER_OK` the device still sees it (it may accept
    /// and hold host work); errors are handled as for queues.
    pub fn process_host_event(&mut self, token: u32, ready: Ready) {
        if self.status & VIRTIO_CONFIG_S_NEEDS_RESET != 0 {
            return;
        }
        self.fail_on_error(|d| d.process_host_event(token, ready));
    }

    fn serve(&mut self, f: impl FnOnce(&mut dyn VirtioDevice) -> Result<(), DeviceError>) {
        if !self.active || self.status & VIRTIO_CONFIG_S_NEEDS_RESET != 0 {
            return;
        }
        self.fail_on_error(f);
    }

    fn fail_on_error(&mut self, f: impl FnOnce(&mut dyn VirtioDevice) -> Result<(), DeviceError>) {
        if let Err(e) = f(self.device.as_mut()) {
            warn!(
                device = self.device.device_type(),
                "guest error, device needs reset: {e}"
            );
            self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
            let _ = self.irq.trigger(INT_CONFIG);
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            return None; // queue setup is frozen once running
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    /// A driver read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= R_CONFIG {
            self.device.read_config(offset - R_CONFIG, data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            return; // registers are 32-bit only
        }
        let q = self.queues.get(self.queue_select as usize);
        let value = match offset {
            R_MAGIC => MAGIC,
            R_VERSION => VERSION,
            R_DEVICE_ID => self.device.device_type(),
            R_VENDOR_ID => VENDOR,
            R_DEVICE_FEATURES => match self.device_features_select {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            R_QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            R_QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            R_INTERRUPT_STATUS => self.irq.status(),
            R_STATUS => self.status,
            R_CONFIG_GENERATION => 0,
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A driver write of `data` at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= R_CONFIG {
            self.device.write_config(offset - R_CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return; // registers are 32-bit only
        };
        let v = u32::from_le_bytes(bytes);
        // Features may change only before FEATURES_OK; queues only before
        // DRIVER_OK (selected_queue enforces the latter).
        let negotiating = self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0;
        match offset {
            R_DEVICE_FEATURES_SEL => self.device_features_select = v,
            R_DRIVER_FEATURES_SEL => self.driver_features_select = v,
            R_DRIVER_FEATURES if negotiating => match self.driver_features_select {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            R_QUEUE_SEL => self.queue_select = v,
            R_QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(v as u16);
                    if u32::from(q.size()) != v {
                        self.bad_queue_size = true;
                    }
                }
            }
            R_QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            R_QUEUE_DESC_LOW => self.with_queue(|q| q.set_desc_table_address(Some(v), None)),
            R_QUEUE_DESC_HIGH => self.with_queue(|q| q.set_desc_table_address(None, Some(v))),
            R_QUEUE_DRIVER_LOW => self.with_queue(|q| q.set_avail_ring_address(Some(v), None)),
            R_QUEUE_DRIVER_HIGH => self.with_queue(|q| q.set_avail_ring_address(None, Some(v))),
            R_QUEUE_DEVICE_LOW => self.with_queue(|q| q.set_used_ring_address(Some(v), None)),
            R_QUEUE_DEVICE_HIGH => self.with_queue(|q| q.set_used_ring_address(None, Some(v))),
            R_QUEUE_NOTIFY => {
                // Normally caught by the ioeventfd before it gets here; if
                // not, hand it to the event loop the same way, so device
                // work never runs on a vCPU thread.
                if let Some(evt) = self.queue_evts.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            R_INTERRUPT_ACK => self.irq.ack(v),
            R_STATUS => self.set_status(v),
            _ => {}
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let added = v & !self.status;
        if v & self.status != self.status {
            return; // bits may only be added, except by a reset
        }
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let offered = self.device.features();
            let acceptable = self.driver_features & !offered == 0
                && self.driver_features & super::BASE_FEATURES != 0;
            if !acceptable {
                // Leave FEATURES_OK unset: the driver reads it back and fails.
                self.status = v & !VIRTIO_CONFIG_S_FEATURES_OK;
                return;
            }
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 && !self.activate() {
            self.status = v | VIRTIO_CONFIG_S_NEEDS_RESET;
            let _ = self.irq.trigger(INT_CONFIG);
            return;
        }
        self.status = v;
    }

    fn activate(&mut self) -> bool {
        let order =
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        if self.status & order != order || self.status & VIRTIO_CONFIG_S_FAILED != 0 {
            warn!(device = self.device.device_type(), "DRIVER_OK out of order");
            return false;
        }
        if self.bad_queue_size {
            warn!(
                device = self.device.device_type(),
                "a queue size was invalid"
            );
            return false;
        }
        if let Some(i) = self
            .queues
            .iter()
            .position(|q| q.ready() && !q.is_valid(&self.mem))
        {
            warn!(device = self.device.device_type(), "queue {i} is not valid");
            return false;
        }
        // The device gets its own copies; the transport keeps the originals
        // so the registers still read back what the driver set.
        let queues = match self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(q) => q,
            Err(e) => {
                warn!(
                    device = self.device.device_type(),
                    "queue set-up is invalid: {e}"
                );
                return false;
            }
        };
        let mut queues = queues;
        // Event indexes (offered by devices that handle them: they re-arm
        // a queue's notification when they stop for want of buffers).
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        let activation = Activation {
            mem: self.mem.clone(),
            irq: self.irq.clone(),
            queues,
            features: self.driver_features,
        };
        match self.device.activate(activation) {
            Ok(()) => {
                self.active = true;
                // Buffers the driver queued (and kicked) before DRIVER_OK
                // were ignored: have the event loop look at every queue once.
                for evt in &self.queue_evts {
                    let _ = evt.write(1);
                }
                true
            }
            Err(e) => {
                warn!(device = self.device.device_type(), "cannot activate: {e}");
                false
            }
        }
    }

    /// The transport's state and where its device is in each ring, for a
    /// snapshot (the vCPUs and the event loop stopped).
    /// The device's disk blocks a snapshot keeps, if it is a disk (see
    /// [`VirtioDevice::save_disk`]).
    pub fn save_disk(&self, out: &std::fs::File) -> std::io::Result<Option<Vec<(u64, u64)>>> {
        self.device.save_disk(out)
    }

    pub fn save(&self) -> Result<TransportState, SaveError> {
        if let Some(why) = self.device.snapshot_refusal() {
            return Err(SaveError(why));
        }
        let device_queues = if self.active {
            let states = self
                .device
                .queue_states()
                .ok_or(SaveError("an active device that reports no queue state"))?;
            Some(states.into_iter().map(SavedQueue::from).collect())
        } else {
            None
        };
        Ok(TransportState {
            device_type: self.device.device_type(),
            status: self.status,
            driver_features: self.driver_features,
            queue_select: self.queue_select,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            interrupt_status: self.irq.status(),
            active: self.active,
            bad_queue_size: self.bad_queue_size,
            queues: self.queues.iter().map(|q| q.state().into()).collect(),
            device_queues,
            streams: self.device.has_streams(),
        })
    }

    /// Puts a saved state into this transport, whose device is new (as
    /// built at boot): the registers, the queues as the driver set them,
    /// and an active device activated with its rings where they were. The
    /// saved state is untrusted: a queue it describes must be valid in
    /// this VM's memory, as at `DRIVER_OK`.
    pub fn restore(&mut self, s: &TransportState) -> Result<(), RestoreError> {
        let device_type = self.device.device_type();
        if s.device_type != device_type {
            return Err(RestoreError::DeviceType {
                saved: s.device_type,
                here: device_type,
            });
        }
        // The driver goes on with what it negotiated: the device must
        // offer all of it (a tap's offloads are not every backend's).
        let extra = s.driver_features & !self.device.features();
        if extra != 0 {
            return Err(RestoreError::Features { extra });
        }
        let count = self.device.queue_max_sizes().len();
        let queues = rebuild(&s.queues, count)?;
        let device_queues = match (&s.device_queues, s.active) {
            (Some(q), true) => Some(rebuild(q, count)?),
            (None, false) => None,
            _ => return Err(RestoreError::Inconsistent),
        };
        if let Some(i) = device_queues
            .iter()
            .flatten()
            .position(|q| !q.is_valid(&self.mem))
        {
            return Err(RestoreError::Queue(i, "outside this VM's memory".into()));
        }
        self.queues = queues;
        self.status = s.status;
        self.driver_features = s.driver_features;
        self.queue_select = s.queue_select;
        self.device_features_select = s.device_features_select;
        self.driver_features_select = s.driver_features_select;
        self.bad_queue_size = s.bad_queue_size;
        self.active = false;
        if let Some(queues) = device_queues {
            let activation = Activation {
                mem: self.mem.clone(),
                irq: self.irq.clone(),
                queues,
                features: self.driver_features,
            };
            self.device
                .activate(activation)
                .map_err(RestoreError::Activate)?;
            self.active = true;
            // Whatever the driver queued while the VM was saved gets looked
            // at, as after DRIVER_OK.
            for evt in &self.queue_evts {
                let _ = evt.write(1);
            }
        }
        self.on_resume = Some(OnResume {
            interrupt_status: s.interrupt_status,
            streams: s.streams && self.active,
        });
        Ok(())
    }

    /// The second half of [`MmioTransport::restore`], once the VM's
    /// interrupt controllers and vCPUs have their saved state and before
    /// the vCPUs run: raises the interrupt pending at the save and tells
    /// the driver of a device that had streams that they are gone.
    pub fn resume(&mut self) -> Result<(), DeviceError> {
        let Some(r) = self.on_resume.take() else {
            return Ok(());
        };
        if r.streams {
            self.device.streams_lost()?;
        }
        if r.interrupt_status != 0 {
            let _ = self.irq.trigger(r.interrupt_status);
        }
        Ok(())
    }

    /// Puts `device` into this transport's empty slot
    /// ([`super::slot::Slot`]), and resets the transport. Only while no
    /// driver holds the window (never probed into use, or let go by the
    /// guest's unbinding), so no driver ever sees its device change.
    pub fn plug(&mut self, device: Box<dyn VirtioDevice>) -> Result<(), SlotError> {
        self.free_slot()?.put(device)?;
        self.reset();
        Ok(())
    }

    /// Takes the device out of this transport's slot, on the terms of
    /// [`MmioTransport::plug`].
    pub fn unplug(&mut self) -> Result<Box<dyn VirtioDevice>, SlotError> {
        let device = self.free_slot()?.take().ok_or(SlotError::Empty)?;
        self.reset();
        Ok(device)
    }

    /// The slot, while no driver holds its window: the status is 0, or
    /// ACKNOWLEDGE alone (what Linux leaves when it unbinds a driver: it
    /// acknowledges the device's existence again).
    fn free_slot(&mut self) -> Result<&mut super::slot::Slot, SlotError> {
        if self.status & !VIRTIO_CONFIG_S_ACKNOWLEDGE != 0 {
            return Err(SlotError::Driven(self.status));
        }
        self.device.as_slot().ok_or(SlotError::NotASlot)
    }

    /// Whether a device can be put into this transport now: it is an
    /// empty slot that no driver holds.
    pub fn can_plug(&mut self) -> bool {
        self.free_slot().is_ok_and(|s| s.is_empty())
    }

    fn reset(&mut self) {
        self.device.reset();
        self.queues = self.fresh_queues();
        self.active = false;
        self.bad_queue_size = false;
        self.status = 0;
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.on_resume = None;
        self.irq.ack(u32::MAX);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::virtio::rng::Rng;
    use crate::virtio::test_util::mem;
    use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;

    pub fn read32(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn write32(t: &mut MmioTransport, offset: u64, v: u32) {
        t.write(offset, &v.to_le_bytes());
    }

    /// Drives the register sequence a Linux driver uses, with queue 0 at
    /// the given guest addresses and size.
    pub fn bring_up(t: &mut MmioTransport, size: u32, desc: u64, avail: u64, used: u64) {
        write32(t, R_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        write32(
            t,
            R_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        write32(t, R_DRIVER_FEATURES_SEL, 1);
        write32(t, R_DRIVER_FEATURES, 1); // VERSION_1
        write32(t, R_DRIVER_FEATURES_SEL, 0);
        write32(t, R_DRIVER_FEATURES, 0);
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        write32(t, R_STATUS, s);
        for q in 0..t.queues.len() as u32 {
            write32(t, R_QUEUE_SEL, q);
            write32(t, R_QUEUE_NUM, size);
            let off = u64::from(q) * 0x1000;
            write32(t, R_QUEUE_DESC_LOW, (desc + off) as u32);
            write32(t, R_QUEUE_DESC_HIGH, ((desc + off) >> 32) as u32);
            write32(t, R_QUEUE_DRIVER_LOW, (avail + off) as u32);
            write32(t, R_QUEUE_DRIVER_HIGH, ((avail + off) >> 32) as u32);
            write32(t, R_QUEUE_DEVICE_LOW, (used + off) as u32);
            write32(t, R_QUEUE_DEVICE_HIGH, ((used + off) >> 32) as u32);
            write32(t, R_QUEUE_READY, 1);
        }
        write32(t, R_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
    }

    fn rng_transport() -> MmioTransport {
        let rng = Rng::new().unwrap();
        MmioTransport::new(mem(), Box::new(rng), EventFd::new(EFD_NONBLOCK).unwrap()).unwrap()
    }

    #[test]
    fn identity_registers() {
        let mut t = rng_transport();
        assert_eq!(read32(&mut t, R_MAGIC), MAGIC);
        assert_eq!(read32(&mut t, R_VERSION), 2);
        assert_eq!(read32(&mut t, R_DEVICE_ID), VIRTIO_ID_RNG);
        write32(&mut t, R_DEVICE_FEATURES_SEL, 1);
        assert_eq!(read32(&mut t, R_DEVICE_FEATURES), 1, "VERSION_1 offered");
        write32(&mut t, R_QUEUE_SEL, 0);
        assert_eq!(read32(&mut t, R_QUEUE_NUM_MAX), 256);
        // Narrow reads of registers read as zero rather than panic.
        let mut b = [0xffu8; 2];
        t.read(R_MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
    }

    #[test]
    fn activates_with_valid_queues() {
        let mut t = rng_transport();
        bring_up(&mut t, 16, 0x1000, 0x2000, 0x3000);
        assert_eq!(
            t.status() & VIRTIO_CONFIG_S_DRIVER_OK,
            VIRTIO_CONFIG_S_DRIVER_OK
        );
        assert_eq!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert!(t.active);
    }

    #[test]
    fn refuses_unoffered_features() {
        let mut t = rng_transport();
        write32(
            &mut t,
            R_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        write32(&mut t, R_DRIVER_FEATURES_SEL, 1);
        write32(&mut t, R_DRIVER_FEATURES, 1 | 1 << 4); // VERSION_1 + an unoffered bit
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        write32(&mut t, R_STATUS, s);
        assert_eq!(read32(&mut t, R_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    }

    #[test]
    fn legacy_driver_without_version_1_is_refused() {
        let mut t = rng_transport();
        write32(
            &mut t,
            R_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        write32(&mut t, R_STATUS, s);
        assert_eq!(read32(&mut t, R_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    }

    #[test]
    fn queue_size_not_a_power_of_two_needs_reset() {
        let mut t = rng_transport();
        bring_up(&mut t, 12, 0x1000, 0x2000, 0x3000);
        assert!(!t.active);
        assert_ne!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert_ne!(read32(&mut t, R_INTERRUPT_STATUS) & INT_CONFIG, 0);
    }

    #[test]
    fn queue_outside_guest_memory_needs_reset() {
        let mut t = rng_transport();
        bring_up(&mut t, 16, 0xfff_f000_0000, 0x2000, 0x3000);
        assert!(!t.active);
        assert_ne!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    }

    #[test]
    fn driver_ok_without_features_ok_needs_reset() {
        let mut t = rng_transport();
        write32(&mut t, R_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        write32(
            &mut t,
            R_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        assert!(!t.active);
        assert_ne!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    }

    #[test]
    fn a_slot_takes_a_device_only_while_no_driver_holds_it() {
        use crate::virtio::slot::{Slot, SlotError};
        let rng = Rng::new().unwrap();
        let slot = Slot::new(rng.queue_max_sizes()).unwrap();
        let mut t =
            MmioTransport::new(mem(), Box::new(slot), EventFd::new(EFD_NONBLOCK).unwrap()).unwrap();
        // Empty: a placeholder, which a hostile driver cannot start, and
        // which a snapshot keeps.
        assert_eq!(read32(&mut t, R_DEVICE_ID), 0);
        assert_eq!(t.save().unwrap().device_type, 0);
        assert!(t.can_plug());
        bring_up(&mut t, 16, 0x1000, 0x2000, 0x3000);
        assert!(!t.active);
        assert!(!t.can_plug(), "a driver dirtied it");
        assert!(matches!(t.plug(Box::new(rng)), Err(SlotError::Driven(_))));
        // Reset and acknowledged again (as the guest's unbinding leaves
        // it), it takes one.
        write32(&mut t, R_STATUS, 0);
        write32(&mut t, R_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        assert!(t.can_plug());
        t.plug(Box::new(Rng::new().unwrap())).unwrap();
        assert!(!t.can_plug(), "full");
        assert_eq!(t.status(), 0, "a plug resets the transport");
        // A VM restored from a snapshot would have the slot empty.
        let refused = t.save().unwrap_err();
        assert!(refused.0.contains("connected"), "{}", refused.0);
        assert_eq!(read32(&mut t, R_DEVICE_ID), VIRTIO_ID_RNG);
        bring_up(&mut t, 16, 0x1000, 0x2000, 0x3000);
        assert!(t.active, "the device in the slot starts");
        assert!(matches!(t.unplug(), Err(SlotError::Driven(_))));
        write32(&mut t, R_STATUS, 0);
        assert_eq!(t.unplug().unwrap().device_type(), VIRTIO_ID_RNG);
        assert_eq!(read32(&mut t, R_DEVICE_ID), 0);
        assert!(matches!(t.unplug(), Err(SlotError::Empty)));
        // A transport that is no slot is never changed.
        let mut plain = rng_transport();
        assert!(!plain.can_plug());
        assert!(matches!(
            plain.plug(Box::new(Rng::new().unwrap())),
            Err(SlotError::NotASlot)
        ));
    }

    #[test]
    fn a_device_booted_in_a_slot_is_saved_until_it_is_taken_out() {
        use crate::virtio::slot::{Slot, SlotError};
        let slot = Slot::holding(Box::new(Rng::new().unwrap())).unwrap();
        let mut t =
            MmioTransport::new(mem(), Box::new(slot), EventFd::new(EFD_NONBLOCK).unwrap()).unwrap();
        assert_eq!(read32(&mut t, R_DEVICE_ID), VIRTIO_ID_RNG);
        assert!(!t.can_plug());
        bring_up(&mut t, 16, 0x1000, 0x2000, 0x3000);
        assert!(t.active);
        let saved = t.save().expect("a device the VM booted with is saved");
        assert_eq!(saved.device_type, VIRTIO_ID_RNG);
        assert!(matches!(t.unplug(), Err(SlotError::Driven(_))));
        // The guest unbinds its driver (reset, then ACKNOWLEDGE again).
        write32(&mut t, R_STATUS, 0);
        write32(&mut t, R_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        t.unplug().unwrap();
        assert_eq!(read32(&mut t, R_DEVICE_ID), 0);
        let refused = t.save().unwrap_err();
        assert!(refused.0.contains("disconnected"), "{}", refused.0);
        assert!(t.can_plug(), "the emptied slot takes another device");
    }

    #[test]
    fn reset_returns_to_the_start() {
        let mut t = rng_transport();
        bring_up(&mut t, 16, 0x1000, 0x2000, 0x3000);
        write32(&mut t, R_STATUS, 0);
        assert_eq!(read32(&mut t, R_STATUS), 0);
        assert!(!t.active);
        write32(&mut t, R_QUEUE_SEL, 0);
        assert_eq!(read32(&mut t, R_QUEUE_READY), 0);
        // And it comes up again.
        bring_up(&mut t, 16, 0x1000, 0x2000, 0x3000);
        assert!(t.active);
    }

    #[test]
    fn queue_setup_is_frozen_after_driver_ok() {
        let mut t = rng_transport();
        bring_up(&mut t, 16, 0x1000, 0x2000, 0x3000);
        write32(&mut t, R_QUEUE_SEL, 0);
        write32(&mut t, R_QUEUE_READY, 0);
        assert_eq!(read32(&mut t, R_QUEUE_READY), 1);
    }

    #[test]
    fn a_notify_that_missed_the_ioeventfd_goes_to_the_event_loop() {
        let mut t = rng_transport();
        bring_up(&mut t, 16, 0x1000, 0x2000, 0x3000);
        let _ = t.queue_evts()[0].read(); // the kick made at activation
        write32(&mut t, R_QUEUE_NOTIFY, 0);
        assert_eq!(t.queue_evts()[0].read().unwrap(), 1);
    }

    #[test]
    fn a_restored_transport_raises_its_pending_interrupt_on_resume_only() {
        let new_rng = || {
            MmioTransport::new(
                mem(),
                Box::new(Rng::new().unwrap()),
                EventFd::new(EFD_NONBLOCK).unwrap(),
            )
            .unwrap()
        };
        let mut saved = new_rng().save().unwrap();
        saved.interrupt_status = crate::virtio::INT_VRING;
        let mut r = new_rng();
        r.restore(&saved).unwrap();
        // The interrupt controllers are restored after the devices: an
        // interrupt raised now would be overwritten.
        assert_eq!(read32(&mut r, R_INTERRUPT_STATUS), 0);
        r.resume().unwrap();
        assert_eq!(read32(&mut r, R_INTERRUPT_STATUS), crate::virtio::INT_VRING);
        write32(&mut r, R_INTERRUPT_ACK, crate::virtio::INT_VRING);
        r.resume().unwrap();
        assert_eq!(read32(&mut r, R_INTERRUPT_STATUS), 0, "once");
    }

    #[test]
    fn a_restored_transport_goes_on_where_the_saved_one_was() {
        use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
        use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
        use virtio_queue::mock::MockSplitQueue;

        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let chain = |i: u16| {
            [RawDescriptor::from(SplitDescriptor::new(
                0x8000 + u64::from(i) * 0x100,
                64,
                VRING_DESC_F_WRITE as u16,
                0,
            ))]
        };
        let new_rng = || {
            MmioTransport::new(
                m.clone(),
                Box::new(Rng::new().unwrap()),
                EventFd::new(EFD_NONBLOCK).unwrap(),
            )
            .unwrap()
        };
        let mut t = new_rng();
        let (desc, avail, used) = (vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0);
        bring_up(&mut t, 16, desc, avail, used);
        vq.add_desc_chains(&chain(0), 0).unwrap();
        t.process_queue(0);
        assert_eq!(vq.used().idx().load(), 1);

        // Through serde, as a snapshot file carries it.
        let saved = t.save().unwrap();
        let text = serde_json::to_string(&saved).unwrap();
        let saved: TransportState = serde_json::from_str(&text).unwrap();
        assert!(saved.active);
        assert_eq!(saved.device_queues.as_ref().unwrap()[0].next_avail, 1);
        assert!(!saved.streams, "an rng holds no streams");
        // A snapshot from before `streams` was saved still reads.
        let older = text.replace(",\"streams\":false", "");
        assert_ne!(older, text);
        let older: TransportState = serde_json::from_str(&older).unwrap();
        assert_eq!(older, saved);

        // The driver queues another buffer; a new transport with a new
        // device takes it, not the first one again.
        vq.add_desc_chains(&chain(1), 1).unwrap();
        let mut r = new_rng();
        r.restore(&saved).unwrap();
        assert_eq!(r.status(), t.status());
        write32(&mut r, R_QUEUE_SEL, 0);
        assert_eq!(read32(&mut r, R_QUEUE_READY), 1);
        assert_eq!(read32(&mut r, R_QUEUE_NUM_MAX), 256);
        r.process_queue(0);
        assert_eq!(vq.used().idx().load(), 2);
        assert_eq!(vq.used().ring().ref_at(1).unwrap().load().id(), 1);

        // Untrusted states are refused, never half applied.
        let mut bad = saved.clone();
        bad.device_type = 1;
        assert!(matches!(
            new_rng().restore(&bad),
            Err(RestoreError::DeviceType { .. })
        ));
        let mut bad = saved.clone();
        bad.device_queues.as_mut().unwrap()[0].size = 12;
        assert!(matches!(
            new_rng().restore(&bad),
            Err(RestoreError::Queue(0, _))
        ));
        let mut bad = saved.clone();
        bad.device_queues = None;
        assert!(matches!(
            new_rng().restore(&bad),
            Err(RestoreError::Inconsistent)
        ));
        // A driver that negotiated what this device does not offer.
        let mut bad = saved.clone();
        bad.driver_features |= 1 << 40;
        assert!(matches!(
            new_rng().restore(&bad),
            Err(RestoreError::Features { extra }) if extra == 1 << 40
        ));
        let mut bad = saved.clone();
        bad.device_queues.as_mut().unwrap()[0].desc_table = 0xfff_f000_0000;
        let mut fresh = new_rng();
        assert!(matches!(
            fresh.restore(&bad),
            Err(RestoreError::Queue(0, _))
        ));
        assert_eq!(fresh.status(), 0, "a refused state changes nothing");

        // A transport the driver never set up saves and restores as such.
        let idle = new_rng().save().unwrap();
        assert!(!idle.active && idle.device_queues.is_none());
        let mut r = new_rng();
        r.restore(&idle).unwrap();
        assert_eq!(r.status(), 0);
    }

    #[test]
    fn stray_accesses_are_harmless() {
        let mut t = rng_transport();
        for off in (0..0x200).step_by(4) {
            write32(&mut t, off, 0xdead_beef);
            let _ = read32(&mut t, off);
        }
        write32(&mut t, R_QUEUE_SEL, 99);
        write32(&mut t, R_QUEUE_NUM, 8);
        assert_eq!(read32(&mut t, R_QUEUE_NUM_MAX), 0);
        t.process_queue(7);
    }
}
