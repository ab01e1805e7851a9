//! virtio-vsock over in-process guest memory, a driver written here, and
//! real Unix sockets on the host side (with the broker served inline).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::*;
use crate::virtio::test_util::irq;

const CID: u64 = 3;
const QSIZE: u16 = 256;
const RX_BUFS: u64 = 0x10_0000;
const RX_BUF_LEN: u32 = (HDR_LEN + 4096) as u32;
const TX_BUFS: u64 = 0x40_0000;
const TX_SLOT: u64 = 0x1_1000;
const EVENT_BUFS: u64 = 0x3_0000;

/// A split virtqueue of [`QSIZE`] entries laid out at `base` (the
/// `virtio-queue` mock places its used ring inside its avail ring at this
/// size).
struct Ring {
    base: u64,
}

impl Ring {
    fn desc(&self) -> u64 {
        self.base
    }

    fn avail(&self) -> u64 {
        self.base + 16 * u64::from(QSIZE)
    }

    fn used(&self) -> u64 {
        self.avail() + 0x1000
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(self.desc());
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail());
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used());
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        q
    }
}

/// A guest driver: fills the receive queue, sends packets, reads what the
/// device delivered.
struct Guest<'a> {
    mem: &'a Mem,
    rx: Ring,
    tx: Ring,
    ev: Ring,
    rx_seen: u16,
    tx_next: u16,
    /// The guest's own receive buffer, as it tells the device.
    buf_alloc: u32,
    fwd_cnt: u32,
}

/// Puts descriptor `head` in the ring and makes it available.
fn push(mem: &Mem, q: &Ring, head: u16, d: RawDescriptor) {
    mem.write_obj(d, GuestAddress(q.desc() + u64::from(head) * 16))
        .unwrap();
    let idx: u16 = mem.read_obj(GuestAddress(q.avail() + 2)).unwrap();
    mem.write_obj(
        head,
        GuestAddress(q.avail() + 4 + u64::from(idx % QSIZE) * 2),
    )
    .unwrap();
    mem.write_obj(idx.wrapping_add(1), GuestAddress(q.avail() + 2))
        .unwrap();
}

fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, 0))
}

impl<'a> Guest<'a> {
    /// Offers up to `n` receive buffers, as many as the ring has room for
    /// (descriptor i holds buffer i).
    fn offer(&mut self, n: u16) {
        for _ in 0..n.min(QSIZE - self.offered_ahead()) {
            let i = self.rx_seen.wrapping_add(self.offered_ahead()) % QSIZE;
            push(
                self.mem,
                &self.rx,
                i,
                desc(
                    RX_BUFS + u64::from(i) * 0x2000,
                    RX_BUF_LEN,
                    VRING_DESC_F_WRITE,
                ),
            );
        }
    }

    /// Gives the device event buffer `i` (4 bytes at [`EVENT_BUFS`]), as
    /// the driver does at probe and after each event, and notifies.
    fn offer_event(&mut self, dev: &mut Vsock, i: u16) {
        push(
            self.mem,
            &self.ev,
            i,
            desc(EVENT_BUFS + u64::from(i) * 16, 4, VRING_DESC_F_WRITE),
        );
        dev.process_queue(EVENT_QUEUE).unwrap();
    }

    /// The events the device used so far: (buffer, length, id).
    fn events(&self) -> Vec<(u32, u32, u32)> {
        let used: u16 = self.mem.read_obj(GuestAddress(self.ev.used() + 2)).unwrap();
        (0..used)
            .map(|n| {
                let at = self.ev.used() + 4 + u64::from(n) * 8;
                let head: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
                let id: u32 = self
                    .mem
                    .read_obj(GuestAddress(EVENT_BUFS + u64::from(head) * 16))
                    .unwrap();
                (head, len, id)
            })
            .collect()
    }

    fn offered_ahead(&self) -> u16 {
        let idx: u16 = self
            .mem
            .read_obj(GuestAddress(self.rx.avail() + 2))
            .unwrap();
        idx.wrapping_sub(self.rx_seen)
    }

    fn send(&mut self, dev: &mut Vsock, hdr: Header, data: &[u8]) {
        let slot = u64::from(self.tx_next % 64);
        let addr = TX_BUFS + slot * TX_SLOT;
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(addr))
            .unwrap();
        self.mem
            .write_slice(data, GuestAddress(addr + HDR_LEN as u64))
            .unwrap();
        push(
            self.mem,
            &self.tx,
            self.tx_next % QSIZE,
            desc(addr, (HDR_LEN + data.len()) as u32, 0),
        );
        self.tx_next = self.tx_next.wrapping_add(1);
        dev.process_queue(TX_QUEUE).unwrap();
    }

    fn packet(&self, op: u16, guest_port: u32, host_port: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: guest_port,
            dst_port: host_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
            ..Header::default()
        }
    }

    /// The packets the device delivered since the last call.
    fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let used: u16 = self.mem.read_obj(GuestAddress(self.rx.used() + 2)).unwrap();
            if used == self.rx_seen {
                return out;
            }
            // struct virtq_used_elem { le32 id; le32 len; }
            let at = self.rx.used() + 4 + u64::from(self.rx_seen % QSIZE) * 8;
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let addr = RX_BUFS + u64::from(id) * 0x2000;
            let mut raw = [0u8; HDR_LEN];
            self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
            let hdr = Header::parse(&raw);
            let mut data = vec![0u8; len as usize - HDR_LEN];
            self.mem
                .read_slice(&mut data, GuestAddress(addr + HDR_LEN as u64))
                .unwrap();
            assert_eq!(hdr.len as usize, data.len());
            self.fwd_cnt = self.fwd_cnt.wrapping_add(data.len() as u32);
            out.push((hdr, data));
        }
    }
}

struct Rig {
    dir: tempfile::TempDir,
    uds: PathBuf,
    /// The broker's end of its socket pair.
    broker: UnixDatagram,
}

impl Rig {
    /// Answers the broker requests waiting, as husk's broker does.
    fn serve_broker(&self) -> usize {
        let mut served = 0;
        let mut buf = [0u8; host::MSG_LEN];
        while let Ok(n) = self.broker.recv(&mut buf) {
            let (port, tag) = host::decode_request(&buf[..n]).unwrap();
            match UnixStream::connect(host::port_path(&self.uds, port)) {
                Ok(s) => {
                    s.set_nonblocking(true).unwrap();
                    self.broker
                        .send_with_fd(&host::encode_reply(tag, 0)[..], s.as_raw_fd())
                        .unwrap();
                }
                Err(e) => {
                    let errno = e.raw_os_error().unwrap();
                    self.broker.send(&host::encode_reply(tag, errno)).unwrap();
                }
            }
            served += 1;
        }
        served
    }

    fn listen(&self, port: u32) -> UnixListener {
        UnixListener::bind(host::port_path(&self.uds, port)).unwrap()
    }
}

fn setup(mem: &Mem) -> (Rig, Vsock, Guest<'_>) {
    setup_with(mem, Vec::new())
}

fn setup_with(mem: &Mem, presets: Vec<(u32, UnixStream)>) -> (Rig, Vsock, Guest<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let listener = UnixListener::bind(&uds).unwrap();
    listener.set_nonblocking(true).unwrap();
    let (ours, theirs) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    theirs.set_nonblocking(true).unwrap();
    let host = HostSide {
        socket: Some(Socket {
            listener,
            broker: ours,
        }),
        presets,
    };
    let (dev, guest) = started(mem, host);
    (
        Rig {
            dir,
            uds,
            broker: theirs,
        },
        dev,
        guest,
    )
}

/// A device over `host`, activated with the guest's three queues.
fn started(mem: &Mem, host: HostSide) -> (Vsock, Guest<'_>) {
    let mut dev = Vsock::new(CID, host).unwrap();
    let rx = Ring { base: 0 };
    let tx = Ring { base: 0x1_0000 };
    let ev = Ring { base: 0x2_0000 };
    dev.activate(Activation {
        mem: mem.clone(),
        irq: irq(),
        queues: vec![rx.queue(), tx.queue(), ev.queue()],
        features: dev.features(),
    })
    .unwrap();
    let guest = Guest {
        mem,
        rx,
        tx,
        ev,
        rx_seen: 0,
        tx_next: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    };
    (dev, guest)
}

fn big_mem() -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}

fn host_event(dev: &mut Vsock, token: VsockToken) {
    dev.process_host_event(token as u32, Ready::default())
        .unwrap();
}

/// Waits until the device's epoll has something, then lets it run.
fn settle(dev: &mut Vsock) {
    std::thread::sleep(Duration::from_millis(20));
    host_event(dev, VsockToken::Streams);
}

fn ops(packets: &[(Header, Vec<u8>)]) -> Vec<u16> {
    packets.iter().map(|(h, _)| h.op).collect()
}

/// The guest connects to host port 5000 and the stream carries bytes
/// both ways; returns the host's end.
fn guest_connect<'a>(
    rig: &Rig,
    dev: &mut Vsock,
    g: &mut Guest<'a>,
    listener: &UnixListener,
) -> UnixStream {
    g.offer(32);
    g.send(dev, g.packet(OP_REQUEST, 1234, 5000), &[]);
    assert_eq!(rig.serve_broker(), 1);
    host_event(dev, VsockToken::Broker);
    let got = g.received();
    assert_eq!(ops(&got), vec![OP_RESPONSE]);
    let h = got[0].0;
    assert_eq!((h.src_port, h.dst_port, h.dst_cid), (5000, 1234, CID));
    assert_eq!(h.buf_alloc, conn::BUF_ALLOC);
    let (s, _) = listener.accept().unwrap();
    s
}

#[test]
fn a_guest_stream_to_a_host_port_carries_bytes_both_ways() {
    let m = big_mem();
    let (rig, mut dev, mut g) = setup(&m);
    let l = rig.listen(5000);
    let mut host = guest_connect(&rig, &mut dev, &mut g, &l);

    g.send(&mut dev, g.packet(OP_RW, 1234, 5000).with_len(5), b"hello");
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");

    host.write_all(b"world").unwrap();
    settle(&mut dev);
    let got = g.received();
    assert_eq!(ops(&got), vec![OP_RW]);
    assert_eq!(got[0].1, b"world");
    assert_eq!(got[0].0.fwd_cnt, 5, "the guest hears what reached the host");
}

#[test]
fn a_host_program_connects_with_a_connect_line() {
    let m = big_mem();
    let (rig, mut dev, mut g) = setup(&m);
    g.offer(8);
    let mut host = UnixStream::connect(&rig.uds).unwrap();
    // Bytes right after the line belong to the stream.
    host.write_all(b"CONNECT 52\nearly").unwrap();
    host_event(&mut dev, VsockToken::Listener);
    let got = g.received();
    assert_eq!(ops(&got), vec![OP_REQUEST]);
    let req = got[0].0;
    assert_eq!(req.dst_port, 52);
    assert_eq!(req.src_port, 1 << 30);

    g.send(&mut dev, g.packet(OP_RESPONSE, 52, req.src_port), &[]);
    let mut line = [0u8; 14];
    host.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"OK 1073741824\n");
    let got = g.received();
    assert_eq!(ops(&got), vec![OP_RW]);
    assert_eq!(got[0].1, b"early");
}

#[test]
fn nobody_listening_means_a_reset() {
    let m = big_mem();
    let (rig, mut dev, mut g) = setup(&m);
    g.offer(8);
    g.send(&mut dev, g.packet(OP_REQUEST, 1, 7777), &[]);
    rig.serve_broker();
    host_event(&mut dev, VsockToken::Broker);
    assert_eq!(ops(&g.received()), vec![OP_RST]);
    assert_eq!(dev.connections(), 0);
    // A guest's host listener that refuses the guest, likewise.
    let mut host = UnixStream::connect(&rig.uds).unwrap();
    host.write_all(b"CONNECT 9\n").unwrap();
    host_event(&mut dev, VsockToken::Listener);
    let req = g.received()[0].0;
    g.send(&mut dev, g.packet(OP_RST, 9, req.src_port), &[]);
    let mut buf = [0u8; 8];
    assert_eq!(
        host.read(&mut buf).unwrap(),
        0,
        "the host program sees the end"
    );
    assert_eq!(dev.connections(), 0);
}

#[test]
fn hostile_packets_are_dropped_or_reset_never_trusted() {
    let m = big_mem();
    let (_rig, mut dev, mut g) = setup(&m);
    g.offer(16);
    // A data packet, a shutdown and an unknown op on no stream: resets.
    g.send(&mut dev, g.packet(OP_RW, 1, 2).with_len(3), b"abc");
    g.send(&mut dev, g.packet(OP_SHUTDOWN, 1, 2), &[]);
    g.send(&mut dev, g.packet(99, 1, 2), &[]);
    // A reset on no stream: nothing (no reset storms between peers).
    g.send(&mut dev, g.packet(OP_RST, 1, 2), &[]);
    // Seqpacket, which husk does not offer: a reset.
    let mut seq = g.packet(OP_REQUEST, 1, 2);
    seq.type_ = 2;
    g.send(&mut dev, seq, &[]);
    assert_eq!(ops(&g.received()), vec![OP_RST; 4]);

    // Dropped and counted: a wrong source CID, a length past the
    // buffer, a length past the largest packet, a chain shorter than a
    // header, a chain the device can only write.
    let mut spoof = g.packet(OP_REQUEST, 1, 2);
    spoof.src_cid = 7;
    g.send(&mut dev, spoof, &[]);
    g.send(&mut dev, g.packet(OP_RW, 1, 2).with_len(100), b"short");
    g.send(
        &mut dev,
        g.packet(OP_RW, 1, 2).with_len(MAX_PAYLOAD + 1),
        &[],
    );
    for d in [desc(TX_BUFS, 10, 0), desc(TX_BUFS, 64, VRING_DESC_F_WRITE)] {
        push(&m, &g.tx, g.tx_next % QSIZE, d);
        g.tx_next += 1;
        dev.process_queue(TX_QUEUE).unwrap();
    }
    assert_eq!(dev.stats.bad_packets.count(), 5);
    assert!(g.received().is_empty());
    assert_eq!(dev.connections(), 0);
}

#[test]
fn a_guest_past_its_credit_is_reset() {
    let m = big_mem();
    let (rig, mut dev, mut g) = setup(&m);
    let l = rig.listen(5000);
    let _host = guest_connect(&rig, &mut dev, &mut g, &l);
    // The host program reads nothing; the guest ignores its credit.
    let chunk = vec![1u8; MAX_PAYLOAD as usize];
    for _ in 0..(conn::BUF_ALLOC / MAX_PAYLOAD) * 3 {
        if dev.connections() == 0 {
            break;
        }
        g.send(
            &mut dev,
            g.packet(OP_RW, 1234, 5000).with_len(MAX_PAYLOAD),
            &chunk,
        );
    }
    assert_eq!(dev.connections(), 0);
    // Credit updates while the host socket took bytes, then the reset.
    let got = ops(&g.received());
    assert_eq!(got.last(), Some(&OP_RST), "{got:?}");
    assert!(got[..got.len() - 1]
        .iter()
        .all(|&op| op == OP_CREDIT_UPDATE));
}

#[test]
fn a_guest_that_never_reads_holds_nothing_on_the_host_side() {
    let m = big_mem();
    let (rig, mut dev, mut g) = setup(&m);
    let l = rig.listen(5000);
    let mut host = guest_connect(&rig, &mut dev, &mut g, &l);
    host.set_nonblocking(true).unwrap();
    // No more receive buffers: the host program's bytes stay in its
    // socket, which fills and pushes back.
    let mut written = 0usize;
    let chunk = [9u8; 4096];
    loop {
        match host.write(&chunk) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
        settle(&mut dev);
        assert!(written < 64 << 20, "the device keeps reading");
    }
    // What the 31 buffers left after the response could hold, no more.
    let delivered: usize = g.received().iter().map(|(_, d)| d.len()).sum();
    assert!(delivered <= 31 * 4096, "{delivered}");
    assert!(written > delivered);
    // Floods of packets that need resets are bounded too.
    for i in 0..(MAX_RESETS as u32 + 50) {
        g.send(&mut dev, g.packet(OP_RW, i, 1), &[]);
    }
    assert!(dev.resets.len() <= MAX_RESETS);
    assert!(dev.stats.lost_resets.count() >= 50);
    // Buffers again: the resets go, then the bytes flow.
    let mut data = 0;
    for _ in 0..40 {
        g.offer(64);
        dev.process_queue(RX_QUEUE).unwrap();
        data += g
            .received()
            .iter()
            .filter(|(h, d)| h.op == OP_RW && d.iter().all(|&b| b == 9))
            .count();
    }
    assert!(data > 0);
}

#[test]
fn the_guest_gets_no_more_than_its_credit() {
    let m = big_mem();
    let (rig, mut dev, mut g) = setup(&m);
    let l = rig.listen(5000);
    g.buf_alloc = 100;
    let mut host = guest_connect(&rig, &mut dev, &mut g, &l);
    host.write_all(&[5u8; 1000]).unwrap();
    settle(&mut dev);
    let got = g.received();
    let total: usize = got.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(total, 100);
    // The guest consumed it and says so: the rest comes.
    g.buf_alloc = 10_000;
    g.send(&mut dev, g.packet(OP_CREDIT_UPDATE, 1234, 5000), &[]);
    let total: usize = g.received().iter().map(|(_, d)| d.len()).sum();
    assert_eq!(total, 900);
}

#[test]
fn half_close_in_both_directions() {
    let m = big_mem();
    let (rig, mut dev, mut g) = setup(&m);
    let l = rig.listen(5000);
    let mut host = guest_connect(&rig, &mut dev, &mut g, &l);
    // The host program is done sending; the guest hears SHUTDOWN(send)
    // after the bytes before it.
    host.write_all(b"last").unwrap();
    host.shutdown(std::net::Shutdown::Write).unwrap();
    settle(&mut dev);
    let got = g.received();
    assert_eq!(ops(&got), vec![OP_RW, OP_SHUTDOWN]);
    assert_eq!(got[1].0.flags, SHUTDOWN_SEND);
    // The guest still answers, then closes its side: the host program
    // reads the answer and its end.
    g.send(&mut dev, g.packet(OP_RW, 1234, 5000).with_len(5), b"reply");
    let mut sd = g.packet(OP_SHUTDOWN, 1234, 5000);
    sd.flags = SHUTDOWN_SEND;
    g.send(&mut dev, sd, &[]);
    let mut all = Vec::new();
    host.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"reply");
    // Full close from the guest: a reset ends the stream.
    sd.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    g.send(&mut dev, sd, &[]);
    assert_eq!(ops(&g.received()), vec![OP_RST]);
    assert_eq!(dev.connections(), 0);
}

/// Host port 1025's preset: a socket holding "params", then its end.
fn preset() -> Vec<(u32, UnixStream)> {
    let (mut host, theirs) = UnixStream::pair().unwrap();
    host.write_all(b"params").unwrap();
    vec![(1025, theirs)]
}

/// The guest connects to the preset port 1025 and reads "params" and the
/// end of the stream.
fn read_preset(dev: &mut Vsock, g: &mut Guest<'_>) {
    g.offer(32);
    g.send(dev, g.packet(OP_REQUEST, 1234, 1025), &[]);
    settle(dev);
    let got = g.received();
    assert_eq!(ops(&got), vec![OP_RESPONSE, OP_RW, OP_SHUTDOWN]);
    assert_eq!(got[1].1, b"params");
}

#[test]
fn a_preset_port_serves_its_socket_once_without_the_broker() {
    let m = big_mem();
    let (rig, mut dev, mut g) = setup_with(&m, preset());
    read_preset(&mut dev, &mut g);
    assert_eq!(rig.serve_broker(), 0, "the broker was not asked");
    // Taken: a second connection to the port goes to the broker, and
    // nobody listens there.
    g.send(&mut dev, g.packet(OP_REQUEST, 1235, 1025), &[]);
    assert_eq!(rig.serve_broker(), 1);
    host_event(&mut dev, VsockToken::Broker);
    assert_eq!(ops(&g.received()), vec![OP_RST]);
}

#[test]
fn a_device_without_a_socket_serves_its_presets_and_resets_the_rest() {
    let m = big_mem();
    let (mut dev, mut g) = started(
        &m,
        HostSide {
            socket: None,
            presets: preset(),
        },
    );
    let tokens: Vec<u32> = dev.host_events().iter().map(|e| e.token).collect();
    assert_eq!(tokens, vec![VsockToken::Streams as u32], "only the streams");
    read_preset(&mut dev, &mut g);
    // Any other port, and the preset's once taken: reset at once, as a
    // port nobody listens on.
    g.send(&mut dev, g.packet(OP_REQUEST, 1235, 1025), &[]);
    g.send(&mut dev, g.packet(OP_REQUEST, 1236, 5000), &[]);
    assert_eq!(ops(&g.received()), vec![OP_RST, OP_RST]);
    assert_eq!(dev.connections(), 1, "only the preset's stream, closing");
}

#[test]
fn a_host_program_that_does_not_say_connect_is_closed() {
    let m = big_mem();
    let (rig, mut dev, mut g) = setup(&m);
    g.offer(4);
    let mut bad = UnixStream::connect(&rig.uds).unwrap();
    bad.write_all(b"GET / HTTP/1.0\n").unwrap();
    let mut long = UnixStream::connect(&rig.uds).unwrap();
    long.write_all(&[b'1'; 100]).unwrap();
    host_event(&mut dev, VsockToken::Listener);
    // Closed: the end of the stream, or a reset where bytes went unread.
    for s in [&mut bad, &mut long] {
        let mut buf = [0u8; 4];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("the stream is still open: {other:?}"),
        }
    }
    assert!(g.received().is_empty());
    assert_eq!(dev.stats.bad_handshakes.count(), 2);
    assert_eq!(dev.connections(), 0);
}

#[test]
fn connections_past_the_limit_are_refused() {
    let m = big_mem();
    let (rig, mut dev, _g) = setup(&m);
    dev.max_connections = 8;
    let mut held = Vec::new();
    for _ in 0..8 + 3 {
        held.push(UnixStream::connect(&rig.uds).unwrap());
        host_event(&mut dev, VsockToken::Listener);
    }
    assert_eq!(dev.connections(), 8);
    assert_eq!(dev.stats.refused.count(), 3);
    // Leaving frees the room.
    drop(held);
    settle(&mut dev);
    assert_eq!(dev.connections(), 0);
}

#[test]
fn reset_drops_every_stream() {
    let m = big_mem();
    let (rig, mut dev, mut g) = setup(&m);
    let l = rig.listen(5000);
    let mut host = guest_connect(&rig, &mut dev, &mut g, &l);
    dev.reset();
    assert_eq!(dev.connections(), 0);
    let mut buf = [0u8; 1];
    assert_eq!(host.read(&mut buf).unwrap(), 0);
    drop(rig.dir);
}

/// What a restore does to a device whose snapshot had streams: the
/// driver gets a transport reset, and nothing else until it has handled
/// it (given an event buffer back), so a host program's connection made
/// right after the restore is not dropped with the old streams.
#[test]
fn a_restore_after_streams_resets_the_transport_before_anything_else() {
    let m = big_mem();
    let (rig, mut dev, mut g) = setup(&m);
    assert!(!dev.has_streams());
    let l = rig.listen(5000);
    let _host = guest_connect(&rig, &mut dev, &mut g, &l);
    assert!(dev.has_streams(), "an open stream is one a snapshot loses");

    // The restored device: new, as a restore builds it.
    let m = big_mem();
    let (rig, mut dev, mut g) = setup(&m);
    for i in 0..2 {
        g.offer_event(&mut dev, i);
    }
    g.offer(8);
    dev.streams_lost().unwrap();
    assert_eq!(g.events(), vec![(0, 4, EVENT_TRANSPORT_RESET)]);

    let mut host = UnixStream::connect(&rig.uds).unwrap();
    host.write_all(b"CONNECT 52\n").unwrap();
    host_event(&mut dev, VsockToken::Listener);
    assert!(
        g.received().is_empty(),
        "held until the driver handled the reset"
    );
    // A notification without a new buffer is not the driver's answer.
    dev.process_queue(EVENT_QUEUE).unwrap();
    assert!(g.received().is_empty());

    // The driver handled the event and gives its buffer back.
    g.offer_event(&mut dev, 0);
    let got = g.received();
    assert_eq!(ops(&got), vec![OP_REQUEST]);
    assert_eq!(got[0].0.dst_port, 52);
    assert_eq!(g.events().len(), 1, "one reset, once");
}

#[test]
fn a_restore_without_an_event_buffer_holds_nothing_back() {
    let m = big_mem();
    let (rig, mut dev, mut g) = setup(&m);
    g.offer(8);
    dev.streams_lost().unwrap();
    assert!(g.events().is_empty());
    let mut host = UnixStream::connect(&rig.uds).unwrap();
    host.write_all(b"CONNECT 52\n").unwrap();
    host_event(&mut dev, VsockToken::Listener);
    assert_eq!(ops(&g.received()), vec![OP_REQUEST]);
}

impl Header {
    fn with_len(mut self, len: u32) -> Self {
        self.len = len;
        self
    }
}
