//! virtio-vsock in userspace, with the host side of Firecracker's hybrid
//! vsock ([`host`]): guest streams meet host programs on Unix sockets.
//!
//! The device owns an epoll of its own over the connections' host
//! sockets, registered once on the VMM's loop beside the listener and the
//! broker; connections come and go inside it. Everything is bounded:
//! at most [`MAX_CONNECTIONS`] streams, each holding at most
//! [`conn::BUF_ALLOC`] guest bytes (the credit the guest is given; a guest
//! that sends more is reset), host bytes read only when the guest has a
//! buffer and credit for them, one owed packet of each kind per stream, and
//! at most [`MAX_RESETS`] resets waiting for the guest.

pub mod conn;
pub mod host;
pub mod packet;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use tracing::warn;
use virtio_queue::{DescriptorChain, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use conn::{owed, Conn, ConnState, Forward};
pub use host::{HostSide, Socket};
use packet::*;

use super::{
    notify, ActivateError, Activation, DeviceError, DeviceState, HostEvent, LogLimit, Mem, Ready,
    VirtioDevice,
};

/// `VIRTIO_ID_VSOCK`.
pub const VIRTIO_ID_VSOCK: u32 = 19;

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
const QUEUE_SIZES: &[u16] = &[256, 256, 256];

/// The most streams one VM has open at once (either direction).
pub const MAX_CONNECTIONS: usize = 512;
/// The most guest connections waiting for the broker at once.
const MAX_CONNECTING: usize = 64;
/// The most resets waiting for the guest's buffers.
pub const MAX_RESETS: usize = 1024;
/// The first port husk gives a host program's connection (as Firecracker).
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` (`struct virtio_vsock_event`'s
/// id): the driver drops every stream it has.
const EVENT_TRANSPORT_RESET: u32 = 0;

/// The tokens of the device's host descriptors on the VMM's loop.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VsockToken {
    Listener = 0,
    Broker = 1,
    Streams = 2,
}

/// Counters of what went wrong, for tests and diagnostics.
#[derive(Debug, Default)]
pub struct VsockStats {
    /// Packets from the guest that were not a vsock packet husk carries.
    pub bad_packets: LogLimit,
    /// Connections refused for lack of room.
    pub refused: LogLimit,
    /// Resets that did not fit the queue for the guest.
    pub lost_resets: LogLimit,
    /// Host programs whose first line was not `CONNECT <port>`.
    pub bad_handshakes: LogLimit,
}

pub struct Vsock {
    cid: u64,
    host: HostSide,
    broker_gone: bool,
    streams: Epoll,
    state: DeviceState,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    by_addr: HashMap<(u32, u32), usize>,
    /// Connections with a packet for the guest, in turn.
    ready: VecDeque<usize>,
    /// Resets (headers ready to send) for streams that are gone.
    resets: VecDeque<Header>,
    /// Guest connections the broker is making: (tag, slot, address).
    connecting: VecDeque<(u32, usize, (u32, u32))>,
    next_tag: u32,
    next_port: u32,
    scratch: Box<[u8]>,
    /// [`MAX_CONNECTIONS`], lower in tests.
    max_connections: usize,
    /// After [`VirtioDevice::streams_lost`]: the event queue's available
    /// index when the transport reset went to the driver. Nothing goes to
    /// the guest until the driver gives a buffer back to that queue (it
    /// has then dropped its old streams), so that a stream made after a
    /// restore is never taken for one from before it and reset with them.
    reset_sent_at: Option<u16>,
    pub stats: VsockStats,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot create the vsock device's epoll")]
pub struct VsockError(#[source] io::Error);

impl Vsock {
    pub fn new(cid: u64, host: HostSide) -> Result<Self, VsockError> {
        Ok(Vsock {
            cid,
            host,
            broker_gone: false,
            streams: Epoll::new().map_err(VsockError)?,
            state: DeviceState::Inactive,
            conns: Vec::new(),
            free: Vec::new(),
            by_addr: HashMap::new(),
            ready: VecDeque::new(),
            resets: VecDeque::new(),
            connecting: VecDeque::new(),
            next_tag: 0,
            next_port: FIRST_LOCAL_PORT,
            scratch: vec![0u8; MAX_PAYLOAD as usize].into_boxed_slice(),
            max_connections: MAX_CONNECTIONS,
            reset_sent_at: None,
            stats: VsockStats::default(),
        })
    }

    /// The number of open streams (for tests and diagnostics).
    pub fn connections(&self) -> usize {
        self.conns.len() - self.free.len()
    }

    /// Queues a reset for the guest's stream `(host_port, guest_port)`.
    fn queue_reset(&mut self, host_port: u32, guest_port: u32) {
        if self.resets.len() >= MAX_RESETS {
            if self.stats.lost_resets.hit() {
                warn!(
                    "vsock: the guest takes no packets; a reset was dropped ({} so far)",
                    self.stats.lost_resets.count()
                );
            }
            return;
        }
        self.resets.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: host_port,
            dst_port: guest_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Header::default()
        });
    }

    /// Closes a stream; `reset` tells the guest.
    fn remove(&mut self, slot: usize, reset: bool) {
        let Some(c) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.free.push(slot);
        if c.queued {
            self.ready.retain(|&s| s != slot);
        }
        if c.state != ConnState::HostHandshake {
            self.by_addr.remove(&(c.host_port, c.guest_port));
        }
        if reset && c.state != ConnState::HostHandshake {
            self.queue_reset(c.host_port, c.guest_port);
        }
        // Dropping the socket takes it off the epoll.
    }

    fn insert(&mut self, c: Conn) -> usize {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        if c.state != ConnState::HostHandshake {
            self.by_addr.insert((c.host_port, c.guest_port), slot);
        }
        self.conns[slot] = Some(c);
        slot
    }

    /// Puts a stream's host socket on the device's epoll.
    fn watch(&self, slot: usize) -> io::Result<()> {
        let Some(Some(Conn {
            stream: Some(s), ..
        })) = self.conns.get(slot)
        else {
            return Ok(());
        };
        let events =
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        self.streams.ctl(
            ControlOperation::Add,
            s.as_raw_fd(),
            EpollEvent::new(events, slot as u64),
        )
    }

    /// Queues the stream for the guest if it has a packet.
    fn schedule(&mut self, slot: usize) {
        if let Some(Some(c)) = self.conns.get_mut(slot) {
            if !c.queued && c.has_packet() {
                c.queued = true;
                self.ready.push_back(slot);
            }
        }
    }

    fn refuse(&mut self, what: &str) {
        if self.stats.refused.hit() {
            warn!(
                "vsock: {what} refused: {} streams open, at most {} ({} refused so far)",
                self.connections(),
                self.max_connections,
                self.stats.refused.count()
            );
        }
    }

    // ---- the guest's packets -------------------------------------------

    fn transmit(&mut self) -> Result<(), DeviceError> {
        let mut used = false;
        while let DeviceState::Active(a) = &mut self.state {
            let mem = a.mem.clone();
            let Some(chain) = a.queues[TX_QUEUE].pop_descriptor_chain(&mem) else {
                break;
            };
            let head = chain.head_index();
            let packet = self.read_packet(chain, &mem);
            if let DeviceState::Active(a) = &mut self.state {
                a.queues[TX_QUEUE]
                    .add_used(&mem, head, 0)
                    .map_err(|source| DeviceError::Queue {
                        queue: TX_QUEUE,
                        source,
                    })?;
            }
            used = true;
            match packet {
                Some((hdr, len)) => self.handle(hdr, len),
                None => {
                    if self.stats.bad_packets.hit() {
                        warn!(
                            "vsock: the guest sent a buffer that is not a packet; dropped ({} so far)",
                            self.stats.bad_packets.count()
                        );
                    }
                }
            }
        }
        if used {
            if let DeviceState::Active(a) = &mut self.state {
                notify(a, TX_QUEUE)?;
            }
        }
        Ok(())
    }

    /// Reads one packet: its header, and its payload into the scratch
    /// buffer. `None` when the chain holds no packet husk accepts.
    fn read_packet(&mut self, chain: DescriptorChain<&Mem>, mem: &Mem) -> Option<(Header, usize)> {
        let mut r = chain.reader(mem).ok()?;
        let mut raw = [0u8; HDR_LEN];
        r.read_exact(&mut raw).ok()?;
        let hdr = Header::parse(&raw);
        let len = hdr.len as usize;
        if hdr.len > MAX_PAYLOAD || len > r.available_bytes() {
            return None;
        }
        if hdr.op == OP_RW {
            r.read_exact(&mut self.scratch[..len]).ok()?;
        }
        if hdr.src_cid != self.cid || hdr.dst_cid != HOST_CID {
            return None;
        }
        Some((hdr, len))
    }

    fn handle(&mut self, hdr: Header, len: usize) {
        let addr = (hdr.dst_port, hdr.src_port);
        if hdr.type_ != TYPE_STREAM {
            if hdr.op != OP_RST {
                self.queue_reset(hdr.dst_port, hdr.src_port);
            }
            return;
        }
        let Some(&slot) = self.by_addr.get(&addr) else {
            match hdr.op {
                OP_REQUEST => self.guest_connect(hdr),
                OP_RST => {}
                _ => self.queue_reset(hdr.dst_port, hdr.src_port),
            }
            return;
        };
        let Some(Some(c)) = self.conns.get_mut(slot) else {
            return;
        };
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = hdr.fwd_cnt;
        match (c.state, hdr.op) {
            (_, OP_RST) => self.remove(slot, false),
            (ConnState::HostRequest, OP_RESPONSE) => {
                c.state = ConnState::Established;
                let ok = format!("OK {}\n", c.host_port);
                let wrote = match &mut c.stream {
                    // A fresh socket's buffer takes these few bytes whole.
                    Some(s) => matches!(conn::send(s, ok.as_bytes()), Ok(n) if n == ok.len()),
                    None => false,
                };
                if !wrote {
                    self.remove(slot, true);
                    return;
                }
                self.schedule(slot);
            }
            (ConnState::Established, OP_RW) => {
                if c.guest_shutdown & SHUTDOWN_SEND != 0 {
                    return;
                }
                match c.forward(&self.scratch[..len]) {
                    Forward::Ok => self.schedule(slot),
                    Forward::OverCredit => {
                        if self.stats.bad_packets.hit() {
                            let (guest, host) = (hdr.src_port, hdr.dst_port);
                            warn!("vsock: the guest sent past its credit; stream {guest}:{host} reset");
                        }
                        self.remove(slot, true);
                    }
                    Forward::Failed => self.remove(slot, true),
                }
            }
            (ConnState::Established, OP_SHUTDOWN) => {
                c.guest_shutdown |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                let both = c.guest_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND;
                let flushed = c.flush() == Forward::Ok && c.to_host.is_empty();
                if both && flushed {
                    // The guest closed: the reset ends the stream on both sides.
                    self.remove(slot, true);
                }
            }
            (ConnState::Established, OP_CREDIT_UPDATE) => self.schedule(slot),
            (ConnState::Established, OP_CREDIT_REQUEST) => {
                c.owed |= owed::CREDIT_UPDATE;
                self.schedule(slot);
            }
            // A second request, a packet before the stream is up, an
            // unknown op: the stream ends.
            _ => self.remove(slot, true),
        }
    }

    /// The guest connects to host port `dst_port`: asks the broker.
    fn guest_connect(&mut self, hdr: Header) {
        if self.connections() >= self.max_connections || self.connecting.len() >= MAX_CONNECTING {
            self.refuse("a guest connection");
            self.queue_reset(hdr.dst_port, hdr.src_port);
            return;
        }
        if let Some(i) = self
            .host
            .presets
            .iter()
            .position(|(p, _)| *p == hdr.dst_port)
        {
            let (_, stream) = self.host.presets.swap_remove(i);
            let mut c = Conn::new(ConnState::Established, None, hdr.dst_port, hdr.src_port);
            c.peer_buf_alloc = hdr.buf_alloc;
            c.peer_fwd_cnt = hdr.fwd_cnt;
            c.owed |= owed::RESPONSE;
            let nonblocking = stream.set_nonblocking(true);
            c.stream = Some(stream);
            let slot = self.insert(c);
            if nonblocking.is_err() || self.watch(slot).is_err() {
                self.remove(slot, true);
                return;
            }
            self.schedule(slot);
            return;
        }
        let tag = self.next_tag;
        let sent = !self.broker_gone
            && self.host.socket.as_ref().is_some_and(|s| {
                s.broker
                    .send(&host::encode_request(hdr.dst_port, tag))
                    .is_ok()
            });
        if !sent {
            self.queue_reset(hdr.dst_port, hdr.src_port);
            return;
        }
        self.next_tag = tag.wrapping_add(1);
        let mut c = Conn::new(ConnState::Connecting, None, hdr.dst_port, hdr.src_port);
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = hdr.fwd_cnt;
        let slot = self.insert(c);
        self.connecting
            .push_back((tag, slot, (hdr.dst_port, hdr.src_port)));
    }

    // ---- packets for the guest ------------------------------------------

    fn receive(&mut self) -> Result<(), DeviceError> {
        let DeviceState::Active(a) = &mut self.state else {
            return Ok(());
        };
        if self.reset_sent_at.is_some() {
            return Ok(());
        }
        let mem = a.mem.clone();
        let mut used = false;
        loop {
            let slot = match (self.resets.is_empty(), self.ready.front()) {
                (false, _) => None,
                (true, Some(&s)) => Some(s),
                (true, None) => break,
            };
            let DeviceState::Active(a) = &mut self.state else {
                break;
            };
            let q = &mut a.queues[RX_QUEUE];
            let start = q.next_avail();
            let Some(chain) = q.pop_descriptor_chain(&mem) else {
                // Resumed when the guest adds buffers.
                break;
            };
            let head = chain.head_index();
            let written = match slot {
                None => {
                    let hdr = self.resets.pop_front().unwrap_or_default();
                    write_packet(chain, &mem, hdr, &[])
                }
                Some(slot) => match self.conn_packet(slot, chain, &mem) {
                    Some(n) => n,
                    None => {
                        // Nothing after all (the host socket had no
                        // bytes): the buffer goes back unused.
                        if let DeviceState::Active(a) = &mut self.state {
                            a.queues[RX_QUEUE].set_next_avail(start);
                        }
                        self.ready.pop_front();
                        if let Some(Some(c)) = self.conns.get_mut(slot) {
                            c.queued = false;
                        }
                        continue;
                    }
                },
            };
            let DeviceState::Active(a) = &mut self.state else {
                break;
            };
            a.queues[RX_QUEUE]
                .add_used(&mem, head, written)
                .map_err(|source| DeviceError::Queue {
                    queue: RX_QUEUE,
                    source,
                })?;
            used = true;
            if let Some(slot) = slot {
                // Round robin: a stream with more goes to the back.
                self.ready.pop_front();
                let more = match self.conns.get_mut(slot) {
                    Some(Some(c)) => {
                        c.queued = c.has_packet();
                        c.queued
                    }
                    _ => false,
                };
                if more {
                    self.ready.push_back(slot);
                }
            }
        }
        if used {
            if let DeviceState::Active(a) = &mut self.state {
                notify(a, RX_QUEUE)?;
            }
        }
        Ok(())
    }

    /// Writes the stream's next packet into `chain`: its length, or `None`
    /// when the stream had nothing to send after all. A chain too small
    /// for a header is returned empty.
    fn conn_packet(&mut self, slot: usize, chain: DescriptorChain<&Mem>, mem: &Mem) -> Option<u32> {
        let Some(Some(c)) = self.conns.get_mut(slot) else {
            return None;
        };
        let (op, flags) = if c.owed & owed::REQUEST != 0 {
            c.owed &= !owed::REQUEST;
            (OP_REQUEST, 0)
        } else if c.owed & owed::RESPONSE != 0 {
            c.owed &= !owed::RESPONSE;
            (OP_RESPONSE, 0)
        } else if c.can_send_data() {
            let room = chain
                .clone()
                .writer(mem)
                .map(|w| w.available_bytes().saturating_sub(HDR_LEN))
                .unwrap_or(0)
                .min(MAX_PAYLOAD as usize);
            if room == 0 {
                return Some(0);
            }
            match c.read_host(&mut self.scratch[..room]) {
                Ok(0) => (OP_SHUTDOWN, take_shutdown(c)),
                Ok(n) => {
                    c.owed &= !owed::CREDIT_UPDATE;
                    c.fwd_told = c.fwd_cnt;
                    let mut hdr = header(self.cid, c, OP_RW);
                    hdr.len = n as u32;
                    return Some(write_packet(chain, mem, hdr, &self.scratch[..n]));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return self.control_packet(slot, chain, mem);
                }
                Err(_) => {
                    self.remove(slot, true);
                    return None;
                }
            }
        } else {
            return self.control_packet(slot, chain, mem);
        };
        let Some(Some(c)) = self.conns.get(slot) else {
            return None;
        };
        let mut hdr = header(self.cid, c, op);
        hdr.flags = flags;
        Some(write_packet(chain, mem, hdr, &[]))
    }

    /// A credit update or shutdown the stream owes, if any.
    fn control_packet(
        &mut self,
        slot: usize,
        chain: DescriptorChain<&Mem>,
        mem: &Mem,
    ) -> Option<u32> {
        let c = self.conns.get_mut(slot)?.as_mut()?;
        let (op, flags) = if c.owed & owed::CREDIT_UPDATE != 0 {
            c.owed &= !owed::CREDIT_UPDATE;
            c.fwd_told = c.fwd_cnt;
            (OP_CREDIT_UPDATE, 0)
        } else if c.owed & owed::SHUTDOWN != 0 {
            (OP_SHUTDOWN, take_shutdown(c))
        } else {
            return None;
        };
        let mut hdr = header(self.cid, c, op);
        hdr.flags = flags;
        Some(write_packet(chain, mem, hdr, &[]))
    }

    // ---- host events ------------------------------------------------------

    /// Host programs connecting to the VM's socket.
    fn accept(&mut self) {
        loop {
            let Some(socket) = &self.host.socket else {
                return;
            };
            let stream = match socket.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors: the pending connection waits in
                    // the backlog for the next one.
                    warn!("vsock: cannot accept a host connection: {e}");
                    return;
                }
            };
            if self.connections() >= self.max_connections {
                self.refuse("a host connection");
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                warn!("vsock: cannot use a host connection: {e}");
                continue;
            }
            let slot = self.insert(Conn::new(ConnState::HostHandshake, Some(stream), 0, 0));
            if let Err(e) = self.watch(slot) {
                warn!("vsock: cannot watch a host connection: {e}");
                self.remove(slot, false);
                continue;
            }
            // The line is usually there already.
            self.handshake(slot);
        }
    }

    /// The broker's answers to guest connections.
    fn broker_replies(&mut self) {
        loop {
            let Some(socket) = &self.host.socket else {
                return;
            };
            let (tag, result) = match host::recv_reply(&socket.broker) {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    warn!("vsock: the connection broker is gone ({e}); the guest cannot reach the host");
                    self.broker_gone = true;
                    while let Some((_, slot, _)) = self.connecting.pop_front() {
                        self.remove(slot, true);
                    }
                    return;
                }
            };
            let Some((want, slot, addr)) = self.connecting.pop_front() else {
                continue;
            };
            let live = self.by_addr.get(&addr) == Some(&slot)
                && matches!(&self.conns[slot], Some(c) if c.state == ConnState::Connecting);
            if !live {
                // The guest gave up already; a socket that came is dropped.
                continue;
            }
            match result {
                Ok(fd) if tag == want => {
                    let Some(Some(c)) = self.conns.get_mut(slot) else {
                        continue;
                    };
                    c.stream = Some(UnixStream::from(fd));
                    c.state = ConnState::Established;
                    c.owed |= owed::RESPONSE;
                    if self.watch(slot).is_err() {
                        self.remove(slot, true);
                        continue;
                    }
                    self.schedule(slot);
                }
                // Nobody listens on that port (or the broker lost track).
                _ => self.remove(slot, true),
            }
        }
    }

    /// Readiness of the streams' host sockets.
    fn stream_events(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        loop {
            let n = match self.streams.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("vsock: waiting on the streams failed: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                self.stream_event(ev.data() as usize, ev.event_set());
            }
            if n < events.len() {
                return;
            }
        }
    }

    fn stream_event(&mut self, slot: usize, set: EventSet) {
        let Some(Some(c)) = self.conns.get_mut(slot) else {
            return;
        };
        if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            c.host_hup = true;
        }
        if set
            .intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR)
        {
            c.readable = true;
        }
        match c.state {
            ConnState::HostHandshake => self.handshake(slot),
            ConnState::Established => {
                if set.contains(EventSet::OUT) || c.host_hup {
                    let flushed = c.flush();
                    let done =
                        c.to_host.is_empty() && c.guest_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND;
                    if flushed == Forward::Failed || done {
                        self.remove(slot, true);
                        return;
                    }
                }
                self.schedule(slot);
            }
            ConnState::HostRequest | ConnState::Connecting => {
                if c.host_hup {
                    // The host program left before the guest accepted.
                    self.remove(slot, true);
                }
            }
        }
    }

    /// Reads a host program's `CONNECT` line, then asks the guest.
    fn handshake(&mut self, slot: usize) {
        let Some(Some(c)) = self.conns.get_mut(slot) else {
            return;
        };
        let port = match c.read_connect_line() {
            Ok(Some(port)) => port,
            Ok(None) => return,
            Err(e) => {
                if self.stats.bad_handshakes.hit() {
                    warn!(
                        "vsock: a host program did not send CONNECT <port> ({e}); closed ({} so far)",
                        self.stats.bad_handshakes.count()
                    );
                }
                self.remove(slot, false);
                return;
            }
        };
        let Some(host_port) = self.free_port(port) else {
            self.remove(slot, false);
            return;
        };
        let Some(Some(c)) = self.conns.get_mut(slot) else {
            return;
        };
        c.state = ConnState::HostRequest;
        c.host_port = host_port;
        c.guest_port = port;
        c.owed |= owed::REQUEST;
        // Bytes after the line wait in the socket until the guest accepts.
        c.readable = true;
        self.by_addr.insert((host_port, port), slot);
        self.schedule(slot);
    }

    /// A host port not in use towards guest port `guest_port`.
    fn free_port(&mut self, guest_port: u32) -> Option<u32> {
        for _ in 0..=self.max_connections {
            let p = self.next_port;
            self.next_port = if p == u32::MAX - 1 {
                FIRST_LOCAL_PORT
            } else {
                p + 1
            };
            if !self.by_addr.contains_key(&(p, guest_port)) {
                return Some(p);
            }
        }
        None
    }

    fn clear(&mut self) {
        self.conns.clear();
        self.free.clear();
        self.by_addr.clear();
        self.ready.clear();
        self.resets.clear();
        // Replies still on their way are matched to nothing and dropped.
        self.connecting.clear();
        self.reset_sent_at = None;
    }

    /// Sends the driver a transport reset on the event queue (see
    /// [`Vsock::reset_sent_at`]).
    fn send_transport_reset(&mut self) -> Result<(), DeviceError> {
        let DeviceState::Active(a) = &mut self.state else {
            return Ok(());
        };
        let mem = a.mem.clone();
        let q = &mut a.queues[EVENT_QUEUE];
        let Some(chain) = q.pop_descriptor_chain(&mem) else {
            warn!("vsock: the driver gave no event buffer; its streams from before the snapshot are not reset");
            return Ok(());
        };
        let head = chain.head_index();
        let written = match chain.writer(&mem) {
            Ok(mut w) if w.available_bytes() >= 4 => w
                .write_all(&EVENT_TRANSPORT_RESET.to_le_bytes())
                .map_or(0, |()| 4),
            _ => 0,
        };
        let queue_error = |source| DeviceError::Queue {
            queue: EVENT_QUEUE,
            source,
        };
        q.add_used(&mem, head, written).map_err(queue_error)?;
        if written == 0 {
            warn!("vsock: the driver's event buffer is too small for a transport reset");
            return notify(a, EVENT_QUEUE);
        }
        let avail = q
            .avail_idx(&mem, std::sync::atomic::Ordering::Acquire)
            .map_err(queue_error)?;
        self.reset_sent_at = Some(avail.0);
        notify(a, EVENT_QUEUE)
    }

    /// The driver notified the event queue: once it has given a buffer
    /// back after a transport reset, the guest gets its packets again.
    fn event_buffers(&mut self) -> Result<(), DeviceError> {
        let (DeviceState::Active(a), Some(sent_at)) = (&self.state, self.reset_sent_at) else {
            return Ok(());
        };
        let avail = a.queues[EVENT_QUEUE]
            .avail_idx(&a.mem, std::sync::atomic::Ordering::Acquire)
            .map_err(|source| DeviceError::Queue {
                queue: EVENT_QUEUE,
                source,
            })?;
        if avail.0 != sent_at {
            self.reset_sent_at = None;
        }
        Ok(())
    }
}

/// A packet header from the host's side of stream `c`.
fn header(cid: u64, c: &Conn, op: u16) -> Header {
    Header {
        src_cid: HOST_CID,
        dst_cid: cid,
        src_port: c.host_port,
        dst_port: c.guest_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: conn::BUF_ALLOC,
        fwd_cnt: c.fwd_cnt,
    }
}

fn take_shutdown(c: &mut Conn) -> u32 {
    c.owed &= !owed::SHUTDOWN;
    c.shutdown_flags()
}

/// Writes a packet into a receive chain; the bytes written (0 when the
/// chain cannot hold the header: the guest's mistake, answered with an
/// empty buffer).
fn write_packet(chain: DescriptorChain<&Mem>, mem: &Mem, hdr: Header, data: &[u8]) -> u32 {
    let Ok(mut w) = chain.writer(mem) else {
        return 0;
    };
    if w.available_bytes() < HDR_LEN + data.len() {
        return 0;
    }
    if w.write_all(&hdr.to_bytes()).is_err() || w.write_all(data).is_err() {
        return 0;
    }
    (HDR_LEN + data.len()) as u32
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        super::BASE_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config: guest_cid (le64).
        super::read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.state.activate(a, QUEUE_SIZES.len())
    }

    fn reset(&mut self) {
        self.state = DeviceState::Inactive;
        self.clear();
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.state.queue_states()
    }

    fn process_queue(&mut self, queue: usize) -> Result<(), DeviceError> {
        // Otherwise new receive buffers.
        match queue {
            TX_QUEUE => self.transmit()?,
            EVENT_QUEUE => self.event_buffers()?,
            _ => {}
        }
        self.receive()
    }

    fn has_streams(&self) -> bool {
        self.connections() > 0 || !self.resets.is_empty() || !self.connecting.is_empty()
    }

    fn streams_lost(&mut self) -> Result<(), DeviceError> {
        self.send_transport_reset()
    }

    fn host_events(&self) -> Vec<HostEvent> {
        let readable = |fd: &dyn AsRawFd, token: VsockToken| HostEvent {
            fd: fd.as_raw_fd(),
            token: token as u32,
            readable: true,
            writable: false,
        };
        let mut events = vec![readable(&self.streams, VsockToken::Streams)];
        if let Some(s) = &self.host.socket {
            events.push(readable(&s.listener, VsockToken::Listener));
            events.push(readable(&s.broker, VsockToken::Broker));
        }
        events
    }

    fn process_host_event(&mut self, token: u32, _ready: Ready) -> Result<(), DeviceError> {
        // Host programs are accepted and their lines read even before the
        // driver is up; what they owe the guest waits for its buffers.
        match token {
            t if t == VsockToken::Listener as u32 => self.accept(),
            t if t == VsockToken::Broker as u32 => self.broker_replies(),
            _ => self.stream_events(),
        }
        self.receive()
    }
}
