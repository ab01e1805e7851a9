//! virtio-net: one receive and one transmit queue, a MAC address, link
//! status, mergeable receive buffers, and the checksum and segmentation
//! offloads when the backend carries them (a tap; passt's stream does not).
//!
//! Frames cross the backend with their 12-byte `virtio_net_hdr_v1`. At most
//! one frame is held on each side: a received frame waits for the guest's
//! buffers (the backend is not read meanwhile), and a frame the backend
//! cannot take yet waits for it to become writable (the transmit queue is
//! not read meanwhile). Nothing grows with what a guest or a peer does.

pub mod backend;

use std::io::{Read, Write};

use tracing::warn;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{DescriptorChain, QueueT};

pub use backend::{NetBackend, Sent, StreamBackend};

use super::{
    notify, ActivateError, Activation, DeviceError, DeviceState, HostEvent, LogLimit, Mem, Ready,
    VirtioDevice,
};

/// The size of `virtio_net_hdr_v1`, which precedes every frame.
pub const HDR_LEN: usize = 12;
/// The largest frame with its header: 64 KiB of IP (a TSO segment) plus
/// Ethernet and VLAN headers.
pub const MAX_FRAME: usize = HDR_LEN + 65_550;
/// Where the header's `num_buffers` field sits.
const NUM_BUFFERS_AT: usize = 10;

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// The queues' largest sizes (a slot for an interface has the same).
pub const QUEUE_SIZES: &[u16] = &[256, 256];

/// The token of the backend's descriptor.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetToken {
    Backend = 0,
}

/// Counters of frames that did not make it, for tests and diagnostics.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Transmit chains that were not a frame (shorter than the header,
    /// longer than [`MAX_FRAME`]), or that the backend refused.
    pub tx_dropped: LogLimit,
    /// Received frames no guest buffer could hold.
    pub rx_dropped: LogLimit,
}

pub struct Net {
    backend: Box<dyn NetBackend>,
    mac: [u8; 6],
    state: DeviceState,
    /// A received frame (with header) waiting for guest buffers.
    rx: Box<[u8]>,
    rx_len: usize,
    /// A frame the backend has not taken yet.
    tx: Box<[u8]>,
    tx_len: usize,
    /// The backend failed (its peer went away): frames are dropped.
    backend_gone: bool,
    pub stats: NetStats,
}

impl Net {
    pub fn new(backend: Box<dyn NetBackend>, mac: [u8; 6]) -> Self {
        Net {
            backend,
            mac,
            state: DeviceState::Inactive,
            rx: vec![0u8; MAX_FRAME].into_boxed_slice(),
            rx_len: 0,
            tx: vec![0u8; MAX_FRAME].into_boxed_slice(),
            tx_len: 0,
            backend_gone: false,
            stats: NetStats::default(),
        }
    }

    /// Moves frames from the backend to the guest until either runs out.
    fn receive(&mut self) -> Result<(), DeviceError> {
        let DeviceState::Active(a) = &mut self.state else {
            return Ok(());
        };
        let mergeable = a.features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let mut delivered = false;
        let mut rearmed_at = None;
        loop {
            if self.rx_len == 0 {
                if self.backend_gone {
                    break;
                }
                match self.backend.recv(&mut self.rx) {
                    Ok(Some(n)) => self.rx_len = n,
                    Ok(None) => break,
                    Err(e) => {
                        backend_failed(&mut self.backend_gone, "receiving", &e);
                        break;
                    }
                }
            }
            match deliver(a, &mut self.rx[..self.rx_len], mergeable)? {
                Delivery::Done => {
                    delivered = true;
                    self.rx_len = 0;
                }
                Delivery::Dropped => {
                    delivered = true;
                    self.rx_len = 0;
                    if self.stats.rx_dropped.hit() {
                        warn!(
                            "network: a received frame fits no guest buffer; dropped ({} so far)",
                            self.stats.rx_dropped.count()
                        );
                    }
                }
                // Held until the guest adds buffers and notifies (unless
                // it added some meanwhile: then try again).
                Delivery::NoBuffers { seen } => {
                    if !rearm_once(a, RX_QUEUE, seen, &mut rearmed_at)? {
                        break;
                    }
                }
            }
        }
        if delivered {
            notify(a, RX_QUEUE)?;
        }
        Ok(())
    }

    /// Moves frames from the guest to the backend until either runs out.
    fn transmit(&mut self) -> Result<(), DeviceError> {
        if self.tx_len > 0 {
            match self.backend.send(&self.tx[..self.tx_len]) {
                Ok(Sent::Done) => self.tx_len = 0,
                Ok(Sent::WouldBlock) => return Ok(()),
                Err(e) => {
                    backend_failed(&mut self.backend_gone, "sending", &e);
                    self.tx_len = 0;
                }
            }
        }
        match self.backend.flush() {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => backend_failed(&mut self.backend_gone, "sending", &e),
        }
        let DeviceState::Active(a) = &mut self.state else {
            return Ok(());
        };
        let mem = a.mem.clone();
        let mut used = false;
        let mut rearmed_at = None;
        loop {
            let Some(chain) = a.queues[TX_QUEUE].pop_descriptor_chain(&mem) else {
                // Drained: have the guest notify its next frame, unless one
                // came meanwhile.
                let seen = a.queues[TX_QUEUE].next_avail();
                if rearm_once(a, TX_QUEUE, seen, &mut rearmed_at)? {
                    continue;
                }
                break;
            };
            let head = chain.head_index();
            let len = read_frame(chain, &mem, &mut self.tx)?;
            a.queues[TX_QUEUE]
                .add_used(&mem, head, 0)
                .map_err(|source| DeviceError::Queue {
                    queue: TX_QUEUE,
                    source,
                })?;
            used = true;
            let Some(len) = len else {
                if self.stats.tx_dropped.hit() {
                    warn!(
                        "network: the guest sent a buffer that is not a frame; dropped ({} so far)",
                        self.stats.tx_dropped.count()
                    );
                }
                continue;
            };
            if self.backend_gone {
                continue;
            }
            match self.backend.send(&self.tx[..len]) {
                Ok(Sent::Done) => {}
                Ok(Sent::WouldBlock) => {
                    // Resumed when the backend becomes writable.
                    self.tx_len = len;
                    break;
                }
                Err(e) => backend_failed(&mut self.backend_gone, "sending", &e),
            }
        }
        if used {
            notify(a, TX_QUEUE)?;
        }
        Ok(())
    }
}

/// Asks the guest to notify the next buffer it adds to `queue` after the
/// `seen` ones, the avail index the device last read (with event indexes:
/// the avail event becomes `seen`, so a device waiting for more buffers
/// than are posted hears of the next one). True when the guest added
/// buffers past `seen` meanwhile: it may not notify those, so the device
/// must look again. (Comparing with an avail index read here instead
/// would take a buffer added since the last look as seen, and leave it in
/// the ring until the guest's next one: a frame unsent, which Linux's TCP
/// does not send again while it is still queued.)
fn rearm(a: &mut Activation, queue: usize, seen: u16) -> Result<bool, DeviceError> {
    let q = &mut a.queues[queue];
    let next = q.next_avail();
    q.set_next_avail(seen);
    let more = q
        .enable_notification(&a.mem)
        .map_err(|source| DeviceError::Queue { queue, source });
    q.set_next_avail(next);
    more
}

/// [`rearm`], unless the device rearmed at `seen` already in this pass:
/// the ring did not move since, so what the avail index shows past `seen`
/// cannot be taken (an index a hostile guest set too far ahead, a ring
/// outside memory), and looking again would loop for ever. The guest's
/// next notification brings the device back.
fn rearm_once(
    a: &mut Activation,
    queue: usize,
    seen: u16,
    rearmed_at: &mut Option<u16>,
) -> Result<bool, DeviceError> {
    if *rearmed_at == Some(seen) {
        return Ok(false);
    }
    *rearmed_at = Some(seen);
    rearm(a, queue, seen)
}

/// Notes that the backend failed (its peer went away): said once, and
/// from then on frames are dropped.
fn backend_failed(gone: &mut bool, what: &str, e: &std::io::Error) {
    if !*gone {
        warn!("network backend: {what}: {e}; the guest's network is down");
    }
    *gone = true;
}

/// Reads a transmit chain into `buf`: its length, or `None` when it holds
/// no frame (shorter than the header, or longer than [`MAX_FRAME`]).
fn read_frame(
    chain: DescriptorChain<&Mem>,
    mem: &Mem,
    buf: &mut [u8],
) -> Result<Option<usize>, DeviceError> {
    let head = chain.head_index();
    let chain_error = |reason: String| DeviceError::Chain { head, reason };
    let mut r = chain.reader(mem).map_err(|e| chain_error(e.to_string()))?;
    let len = r.available_bytes();
    if !(HDR_LEN..=MAX_FRAME).contains(&len) {
        return Ok(None);
    }
    r.read_exact(&mut buf[..len])
        .map_err(|e| chain_error(e.to_string()))?;
    Ok(Some(len))
}

enum Delivery {
    Done,
    /// The frame can never fit what the guest offers.
    Dropped,
    /// Not enough buffers now; nothing was consumed. `seen`: the avail
    /// index at which the ring ran out.
    NoBuffers {
        seen: u16,
    },
}

/// Writes one received frame into the guest's receive buffers: one chain,
/// or with mergeable buffers as many as it takes (their count goes into
/// the header's `num_buffers`).
fn deliver(a: &mut Activation, frame: &mut [u8], mergeable: bool) -> Result<Delivery, DeviceError> {
    let mem = a.mem.clone();
    let q = &mut a.queues[RX_QUEUE];
    let queue_error = |source| DeviceError::Queue {
        queue: RX_QUEUE,
        source,
    };
    let start = q.next_avail();
    let mut chains: Vec<(DescriptorChain<&Mem>, usize)> = Vec::new();
    let mut room = 0usize;
    while room < frame.len() {
        if chains.len() >= usize::from(q.size()) {
            // Even every buffer the ring can hold is too small.
            q.set_next_avail(start);
            return Ok(Delivery::Dropped);
        }
        let Some(chain) = q.pop_descriptor_chain(&mem) else {
            let seen = q.next_avail();
            q.set_next_avail(start);
            return Ok(Delivery::NoBuffers { seen });
        };
        let head = chain.head_index();
        let cap = chain
            .clone()
            .writer(&mem)
            .map_err(|e| DeviceError::Chain {
                head,
                reason: e.to_string(),
            })?
            .available_bytes();
        room += cap;
        chains.push((chain, cap));
        if !mergeable && room < frame.len() {
            // One buffer per frame, and this one is too small: it is
            // returned unused, and the frame goes.
            q.add_used(&mem, head, 0).map_err(queue_error)?;
            return Ok(Delivery::Dropped);
        }
    }
    // The header must lie whole in the first buffer's first descriptor to
    // be patched there (Linux always puts it there).
    let count = chains.len() as u16;
    frame[NUM_BUFFERS_AT..NUM_BUFFERS_AT + 2].copy_from_slice(&count.to_le_bytes());
    let mut at = 0;
    for (chain, cap) in chains {
        let head = chain.head_index();
        let n = cap.min(frame.len() - at);
        let mut w = chain.writer(&mem).map_err(|e| DeviceError::Chain {
            head,
            reason: e.to_string(),
        })?;
        w.write_all(&frame[at..at + n])
            .map_err(|e| DeviceError::Chain {
                head,
                reason: e.to_string(),
            })?;
        at += n;
        q.add_used(&mem, head, n as u32).map_err(queue_error)?;
    }
    Ok(Delivery::Done)
}

/// The features a backend's offloads allow.
fn offload_features() -> u64 {
    [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_ECN,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_HOST_ECN,
    ]
    .iter()
    .fold(0, |f, bit| f | 1 << bit)
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let mut f = super::BASE_FEATURES
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_STATUS
            | 1 << VIRTIO_NET_F_MRG_RXBUF
            | 1 << VIRTIO_RING_F_EVENT_IDX;
        if self.backend.offloads() {
            f |= offload_features();
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config: mac[6], status (le16).
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac);
        config[6..].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        super::read_config_bytes(&config, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        if let Err(e) = self.backend.set_offloads(a.features) {
            warn!("network backend: cannot set its offloads: {e}");
        }
        self.state.activate(a, QUEUE_SIZES.len())
    }

    fn reset(&mut self) {
        self.state = DeviceState::Inactive;
        self.rx_len = 0;
        self.tx_len = 0;
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.state.queue_states()
    }

    fn process_queue(&mut self, queue: usize) -> Result<(), DeviceError> {
        match queue {
            // New buffers: deliver what is held, then read on.
            RX_QUEUE => self.receive(),
            TX_QUEUE => self.transmit(),
            _ => Ok(()),
        }
    }

    fn host_events(&self) -> Vec<HostEvent> {
        vec![HostEvent {
            fd: self.backend.as_raw_fd(),
            token: NetToken::Backend as u32,
            readable: true,
            writable: true,
        }]
    }

    fn process_host_event(&mut self, _token: u32, ready: Ready) -> Result<(), DeviceError> {
        if !matches!(self.state, DeviceState::Active(_)) {
            // Frames before the driver is ready have nowhere to go; the
            // first receive-queue notification reads what is waiting.
            return Ok(());
        }
        if ready.writable || ready.closed {
            self.transmit()?;
        }
        if ready.readable || ready.closed {
            self.receive()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
