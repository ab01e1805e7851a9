//! The virtio device model shared by every device.

pub mod block;
pub mod console;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod slot;
pub mod vsock;

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as devices see it.
pub type Mem = GuestMemoryMmap;

/// Interrupt status bits (virtio-mmio `InterruptStatus`).
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// Feature bits every husk device offers: modern virtio only.
pub const BASE_FEATURES: u64 = 1 << VIRTIO_F_VERSION_1;

/// A device's interrupt: status bits the driver reads and acknowledges over
/// MMIO, and an eventfd the VMM registers as a KVM irqfd.
#[derive(Debug)]
pub struct IrqLine {
    status: AtomicU32,
    /// Bits that read as set whatever the driver acknowledges: a device
    /// whose backend signals the irqfd itself holds `INT_VRING`.
    held: AtomicU32,
    evt: EventFd,
}

impl IrqLine {
    pub fn new(evt: EventFd) -> Self {
        IrqLine {
            status: AtomicU32::new(0),
            held: AtomicU32::new(0),
            evt,
        }
    }

    /// Raises the interrupt for `kind` ([`INT_VRING`] or [`INT_CONFIG`]).
    pub fn trigger(&self, kind: u32) -> io::Result<()> {
        self.status.fetch_or(kind, Ordering::SeqCst);
        self.evt.write(1)
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst) | self.held.load(Ordering::SeqCst)
    }

    /// Makes `bits` read as set until [`IrqLine::release`].
    pub fn hold(&self, bits: u32) {
        self.held.fetch_or(bits, Ordering::SeqCst);
    }

    pub fn release(&self, bits: u32) {
        self.held.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// What a device gets when the driver sets `DRIVER_OK`.
pub struct Activation {
    pub mem: Mem,
    pub irq: Arc<IrqLine>,
    pub queues: Vec<Queue>,
    /// The features the driver acknowledged.
    pub features: u64,
}

/// A device's life: set up by the driver, or running with its queues.
pub enum DeviceState {
    Inactive,
    Active(Activation),
}

impl DeviceState {
    /// Becomes active with `a`, which must bring `queues` ready queues.
    pub fn activate(&mut self, a: Activation, queues: usize) -> Result<(), ActivateError> {
        check_queues(&a.queues, queues)?;
        *self = DeviceState::Active(a);
        Ok(())
    }

    /// Runs `f` with the active state; does nothing while inactive (a kick
    /// before `DRIVER_OK` is the driver's mistake and is ignored).
    /// Where an active device is in each of its rings (for a snapshot);
    /// None while inactive.
    pub fn queue_states(&self) -> Option<Vec<QueueState>> {
        match self {
            DeviceState::Inactive => None,
            DeviceState::Active(a) => Some(a.queues.iter().map(|q| q.state()).collect()),
        }
    }

    pub fn with_active<T>(
        &mut self,
        f: impl FnOnce(&mut Activation) -> Result<T, DeviceError>,
    ) -> Result<Option<T>, DeviceError> {
        match self {
            DeviceState::Inactive => Ok(None),
            DeviceState::Active(a) => f(a).map(Some),
        }
    }
}

/// Errors in what the guest put in a queue. The transport answers them by
/// marking the device `DEVICE_NEEDS_RESET`; they never stop the VMM.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("queue {queue}: {source}")]
    Queue {
        queue: usize,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("descriptor chain {head}: {reason}")]
    Chain { head: u16, reason: String },
    #[error("cannot signal the guest")]
    Interrupt(#[source] io::Error),
    #[error("the vhost-user backend refused {what}")]
    Backend {
        what: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("the vhost-user backend is gone")]
    BackendGone,
}

/// Why a device could not start with what the driver set up.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    #[error("expected {expected} queues, got {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("an empty slot has no device to start")]
    NoDevice,
}

/// What one event on the VMM thread's loop is for: a queue notification
/// from the guest, or readiness of one of the device's own host file
/// descriptors (a tap, a socket). Stored as the epoll event's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventToken {
    /// The driver notified this queue.
    Queue(u16),
    /// A host descriptor the device registered, with the device's token.
    Host(u32),
}

impl EventToken {
    const HOST: u32 = 1 << 31;

    pub fn to_data(self) -> u32 {
        match self {
            EventToken::Queue(q) => u32::from(q),
            EventToken::Host(t) => Self::HOST | (t & !Self::HOST),
        }
    }

    pub fn from_data(data: u32) -> Self {
        if data & Self::HOST != 0 {
            EventToken::Host(data & !Self::HOST)
        } else {
            EventToken::Queue(data as u16)
        }
    }
}

/// A host file descriptor a device waits on. The VMM watches it
/// edge-triggered: the device reads (or writes) until the call would
/// block, or remembers that it stopped early and resumes when the guest
/// gives it room (a queue notification), so the loop never spins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostEvent {
    pub fd: RawFd,
    /// Handed back to [`VirtioDevice::process_host_event`].
    pub token: u32,
    pub readable: bool,
    pub writable: bool,
}

/// What the event loop saw on a host descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ready {
    pub readable: bool,
    pub writable: bool,
    /// The peer hung up or the descriptor failed.
    pub closed: bool,
}

impl From<vmm_sys_util::epoll::EventSet> for Ready {
    fn from(set: vmm_sys_util::epoll::EventSet) -> Self {
        use vmm_sys_util::epoll::EventSet;
        Ready {
            readable: set.contains(EventSet::IN),
            writable: set.contains(EventSet::OUT),
            closed: set.intersects(EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP),
        }
    }
}

/// One virtio device, behind the MMIO transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (`VIRTIO_ID_*`).
    fn device_type(&self) -> u32;
    /// The largest size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The feature bits offered to the driver.
    fn features(&self) -> u64;
    /// Reads the device-specific config space at `offset`; bytes past its
    /// end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes to the config space; husk's devices have no writable fields.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device with the queues the driver set up.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops the device and returns it to its initial state.
    fn reset(&mut self);
    /// Handles the driver's notification that queue `queue` has new buffers
    /// (or, for a device with host input, that input is waiting).
    fn process_queue(&mut self, queue: usize) -> Result<(), DeviceError>;
    /// The host descriptors this device waits on, registered once when the
    /// VM starts (a device with a changing set, such as vsock's
    /// connections, keeps its own epoll and registers that).
    fn host_events(&self) -> Vec<HostEvent> {
        Vec::new()
    }
    /// True for a device whose queues another process serves (a
    /// vhost-user backend): the transport hands it the queues'
    /// notification eventfds (KVM ioeventfds) with
    /// [`VirtioDevice::take_queue_notifiers`], and the VMM's event loop
    /// leaves them to that process.
    fn queues_served_elsewhere(&self) -> bool {
        false
    }
    /// Takes the queues' notification eventfds, index = queue (see
    /// [`VirtioDevice::queues_served_elsewhere`]).
    fn take_queue_notifiers(&mut self, _evts: Vec<EventFd>) {}
    /// Handles readiness of the host descriptor registered as `token`.
    fn process_host_event(&mut self, _token: u32, _ready: Ready) -> Result<(), DeviceError> {
        Ok(())
    }

    /// Where the active device is in each of its rings, for a snapshot
    /// (None while inactive). Every device says: a snapshot of an active
    /// device without its queues could not be restored.
    fn queue_states(&self) -> Option<Vec<QueueState>>;

    /// Whether the device has streams to host programs open (vsock): a
    /// snapshot keeps none of them, since the host's ends belong to this
    /// process. Saved with the device's state.
    fn has_streams(&self) -> bool {
        false
    }

    /// Restored from a snapshot taken while [`VirtioDevice::has_streams`]:
    /// tells the driver that the streams it had are gone (vsock: a
    /// transport reset, as Firecracker sends after every restore).
    fn streams_lost(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }

    /// Why the device cannot be part of a snapshot, where it cannot.
    fn snapshot_refusal(&self) -> Option<&'static str> {
        None
    }

    /// A disk's blocks that a snapshot must keep (its overlay's writes),
    /// saved into `out` as runs `(first block, count)`; `None` for every
    /// other device and for a disk that is a host file.
    fn save_disk(&self, _out: &std::fs::File) -> std::io::Result<Option<Vec<(u64, u64)>>> {
        Ok(None)
    }

    /// The [`slot::Slot`] this is, for putting a device in or taking it
    /// out; `None` for every real device.
    fn as_slot(&mut self) -> Option<&mut slot::Slot> {
        None
    }
}

/// Counts a guest's or a peer's misbehaviour and says when to log it: the
/// 1st, 2nd, 4th, 8th, ... time, so a hostile guest cannot flood the log.
#[derive(Debug, Default)]
pub struct LogLimit(u64);

impl LogLimit {
    /// Counts one more; true when this one should be logged.
    pub fn hit(&mut self) -> bool {
        self.0 += 1;
        self.0.is_power_of_two()
    }

    pub fn count(&self) -> u64 {
        self.0
    }
}

/// Checks the queue count and readiness every device needs at activation.
fn check_queues(queues: &[Queue], expected: usize) -> Result<(), ActivateError> {
    if queues.len() != expected {
        return Err(ActivateError::QueueCount {
            expected,
            got: queues.len(),
        });
    }
    match queues.iter().position(|q| !q.ready()) {
        Some(i) => Err(ActivateError::QueueNotReady(i)),
        None => Ok(()),
    }
}

/// Signals the guest if the queue asks for it (event index aware).
pub(crate) fn notify(a: &mut Activation, queue: usize) -> Result<(), DeviceError> {
    let needs = a.queues[queue]
        .needs_notification(&a.mem)
        .map_err(|source| DeviceError::Queue { queue, source })?;
    if needs {
        a.irq.trigger(INT_VRING).map_err(DeviceError::Interrupt)?;
    }
    Ok(())
}

/// Copies `config` at `offset` into `data`, zero past its end.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start < config.len() {
        let n = data.len().min(config.len() - start);
        data[..n].copy_from_slice(&config[start..start + n]);
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use vm_memory::GuestAddress;

    use super::*;

    pub fn mem() -> Mem {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    pub fn irq() -> Arc<IrqLine> {
        Arc::new(IrqLine::new(
            EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap(),
        ))
    }
}
