//! A guest driving a virtio-mmio device with any register accesses, any
//! guest memory contents (descriptors, rings, requests) and queue
//! notifications in any order, for the network device a host peer sending
//! any bytes, and for vsock host programs connecting and sending any bytes
//! and a connection broker answering anything, a network device put into
//! and taken out of a slot at any point of the driver's dance, and
//! snapshots of it saved, damaged and restored: each device answers, fails
//! the request or marks itself broken, a damaged snapshot is refused or
//! restores a device that does the same, and nothing panics the VMM.
#![no_main]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener, UnixStream};
use std::sync::atomic::{AtomicU32, Ordering};

use arbitrary::Arbitrary;
use devices::storage::{Overlay, Storage};
use devices::virtio::block::Block;
use devices::virtio::console::Console;
use devices::virtio::mmio::{MmioTransport, TransportState};
use devices::virtio::net::{Net, StreamBackend};
use devices::virtio::rng::Rng;
use devices::virtio::slot::Slot;
use devices::virtio::vsock::{host, HostSide, Socket, Vsock};
use devices::virtio::{Ready, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Guest memory: rings and buffers all live in these 64 KiB.
const MEM: u64 = 0x1_0000;
const DISK: u64 = 64 * 1024;

#[derive(Arbitrary, Debug)]
enum Device {
    Block,
    BlockReadOnly,
    BlockOverlay,
    Console,
    Rng,
    /// virtio-net on passt's stream framing; the peer is the fuzzer too.
    Net,
    /// virtio-vsock; host programs and the broker are the fuzzer too.
    Vsock,
    /// An empty slot, which [`Op::Plug`] puts a virtio-net device into.
    Slot,
    /// A slot holding a virtio-net device from boot (a detached VM's
    /// boot-time interface), which [`Op::Unplug`] takes out.
    SlotWithNet,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A 32-bit register write (offsets past the registers reach the
    /// device's config space).
    Write {
        offset: u16,
        value: u32,
    },
    Read {
        offset: u16,
    },
    /// Guest memory contents.
    Poke {
        addr: u16,
        bytes: Vec<u8>,
    },
    /// The driver's kick, then the VMM thread serving it.
    Notify {
        queue: u8,
    },
    /// A Linux driver's register sequence, so the fuzzer spends its time
    /// on the queues rather than on finding the handshake.
    BringUp {
        size: u16,
    },
    /// The host peer (passt, for the net device) sends these bytes.
    PeerSend {
        bytes: Vec<u8>,
    },
    /// The event loop reports one of the device's host descriptors ready.
    HostReady {
        token: u8,
        readable: bool,
        writable: bool,
        closed: bool,
    },
    /// The host peer reads what it was sent (or goes away).
    PeerDrain {
        hang_up: bool,
    },
    /// vsock: a host program connects to the VM's socket and sends these
    /// bytes (a `CONNECT` line, or anything).
    HostConnect {
        bytes: Vec<u8>,
    },
    /// vsock: the broker answers a request, with a connected socket or
    /// an error, matching one or not.
    BrokerReply {
        tag: u8,
        connected: bool,
    },
    /// A snapshot: the transport saved, the state (as an untrusted file
    /// would carry it) changed by the fuzzer, and restored into a new
    /// transport with a new device of the same kind, which goes on.
    SaveRestore {
        tamper: Option<Tamper>,
    },
    /// A slot: a virtio-net device (its peer the fuzzer) put in, refused
    /// while a driver holds the window or the slot is full.
    Plug,
    /// A slot: its device taken out, refused as a plug is.
    Unplug,
}

/// What a damaged or hostile snapshot file could change.
#[derive(Arbitrary, Debug)]
enum Tamper {
    Status(u32),
    Features(u64),
    Active(bool),
    Streams(bool),
    DropDeviceQueues,
    Queue {
        which: u8,
        device: bool,
        size: u16,
        next_avail: u16,
        next_used: u16,
        desc: u64,
        avail: u64,
        used: u64,
        ready: bool,
    },
}

fn tamper(s: &mut TransportState, t: Tamper) {
    match t {
        Tamper::Status(v) => s.status = v,
        Tamper::Features(v) => s.driver_features = v,
        Tamper::Active(v) => s.active = v,
        Tamper::Streams(v) => s.streams = v,
        Tamper::DropDeviceQueues => s.device_queues = None,
        Tamper::Queue {
            which,
            device,
            size,
            next_avail,
            next_used,
            desc,
            avail,
            used,
            ready,
        } => {
            let queues = if device {
                match &mut s.device_queues {
                    Some(q) => q,
                    None => return,
                }
            } else {
                &mut s.queues
            };
            if let Some(q) = queues.get_mut(usize::from(which)) {
                q.size = size;
                q.next_avail = next_avail;
                q.next_used = next_used;
                q.desc_table = desc;
                q.avail_ring = avail;
                q.used_ring = used;
                q.ready = ready;
            }
        }
    }
}

/// The host side of a vsock device under test.
#[derive(Default)]
struct VsockPeers {
    listener: Option<SocketAddr>,
    broker: Option<UnixDatagram>,
    /// Every host socket the fuzzer holds, kept open until the input ends.
    held: Vec<UnixStream>,
}

fn vsock(peers: &mut VsockPeers) -> Box<dyn VirtioDevice> {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "husk-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = UnixListener::bind_addr(&addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    let (ours, theirs) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    theirs.set_nonblocking(true).unwrap();
    peers.listener = Some(addr);
    peers.broker = Some(theirs);
    Box::new(
        Vsock::new(
            3,
            HostSide {
                socket: Some(Socket {
                    listener,
                    broker: ours,
                }),
                presets: Vec::new(),
            },
        )
        .unwrap(),
    )
}

fn disk(writable: bool) -> File {
    let f = tempfile::tempfile().expect("a disk file");
    f.set_len(DISK).expect("size the disk");
    if writable {
        return f;
    }
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f));
    OpenOptions::new()
        .read(true)
        .open(path)
        .expect("reopen read-only")
}

/// A virtio-net device on passt's framing; `peer` gets the other end.
fn net(peer: &mut Option<UnixStream>) -> Box<dyn VirtioDevice> {
    let (ours, theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    theirs.set_nonblocking(true).unwrap();
    *peer = Some(theirs);
    Box::new(Net::new(
        Box::new(StreamBackend::new(ours)),
        [2, 0, 0, 0, 0, 1],
    ))
}

fn device(
    kind: &Device,
    peer: &mut Option<UnixStream>,
    peers: &mut VsockPeers,
) -> Box<dyn VirtioDevice> {
    match kind {
        Device::Vsock => vsock(peers),
        Device::Net => net(peer),
        Device::Block => Box::new(Block::new(Storage::File(disk(true)), false, "fuzz").unwrap()),
        Device::BlockReadOnly => {
            Box::new(Block::new(Storage::File(disk(false)), true, "fuzz").unwrap())
        }
        Device::BlockOverlay => {
            let o = Overlay::new(disk(false), tempfile::tempfile().unwrap()).unwrap();
            Box::new(Block::new(Storage::Overlay(o), false, "fuzz").unwrap())
        }
        Device::Console => Box::new(Console::new(Box::new(std::io::sink()))),
        Device::Slot => Box::new(Slot::new(devices::virtio::net::QUEUE_SIZES).unwrap()),
        Device::SlotWithNet => Box::new(Slot::holding(net(peer)).unwrap()),
        Device::Rng => Box::new(Rng::with_source(File::open("/dev/urandom").unwrap())),
    }
}

fn write32(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

fn bring_up(t: &mut MmioTransport, size: u16) {
    const ACK: u32 = 1;
    const DRIVER: u32 = 2;
    const FEATURES_OK: u32 = 8;
    const DRIVER_OK: u32 = 4;
    write32(t, 0x070, ACK);
    write32(t, 0x070, ACK | DRIVER);
    write32(t, 0x024, 1);
    write32(t, 0x020, 1); // VIRTIO_F_VERSION_1
    write32(t, 0x024, 0);
    write32(t, 0x020, 0);
    write32(t, 0x070, ACK | DRIVER | FEATURES_OK);
    for q in 0..t.queue_evts().len() as u64 {
        let base = 0x1000 + q * 0x3000;
        write32(t, 0x030, q as u32);
        write32(t, 0x038, u32::from(size));
        write32(t, 0x080, base as u32);
        write32(t, 0x084, 0);
        write32(t, 0x090, (base + 0x1000) as u32);
        write32(t, 0x094, 0);
        write32(t, 0x0a0, (base + 0x2000) as u32);
        write32(t, 0x0a4, 0);
        write32(t, 0x044, 1);
    }
    write32(t, 0x070, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
}

fuzz_target!(|input: (Device, Vec<Op>)| {
    let (kind, ops) = input;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut peer = None;
    let mut peers = VsockPeers::default();
    let mut t = MmioTransport::new(mem.clone(), device(&kind, &mut peer, &mut peers), irq).unwrap();
    for op in ops {
        match op {
            Op::Write { offset, value } => write32(&mut t, u64::from(offset), value),
            Op::Read { offset } => {
                let mut b = [0u8; 4];
                t.read(u64::from(offset), &mut b);
            }
            Op::Poke { addr, bytes } => {
                let n = bytes.len().min((MEM - u64::from(addr)) as usize);
                mem.write_slice(&bytes[..n], GuestAddress(u64::from(addr)))
                    .unwrap();
            }
            Op::Notify { queue } => {
                write32(&mut t, 0x050, u32::from(queue));
                let q = usize::from(queue);
                if q < t.queue_evts().len() {
                    t.process_queue(q);
                }
            }
            Op::BringUp { size } => bring_up(&mut t, size),
            Op::PeerSend { bytes } => {
                if let Some(p) = &mut peer {
                    let _ = p.write_all(&bytes);
                }
            }
            Op::HostReady {
                token,
                readable,
                writable,
                closed,
            } => t.process_host_event(
                u32::from(token % 3),
                Ready {
                    readable,
                    writable,
                    closed,
                },
            ),
            Op::HostConnect { bytes } => {
                if let Some(addr) = &peers.listener {
                    if let Ok(mut s) = UnixStream::connect_addr(addr) {
                        s.set_nonblocking(true).unwrap();
                        let _ = s.write(&bytes);
                        peers.held.push(s);
                    }
                }
            }
            Op::BrokerReply { tag, connected } => {
                if let Some(b) = &peers.broker {
                    let mut req = [0u8; host::MSG_LEN];
                    let _ = b.recv(&mut req);
                    let tag = u32::from(tag);
                    if connected {
                        let (ours, theirs) = UnixStream::pair().unwrap();
                        ours.set_nonblocking(true).unwrap();
                        let _ = b.send_with_fd(
                            &host::encode_reply(tag, 0)[..],
                            std::os::fd::AsRawFd::as_raw_fd(&ours),
                        );
                        peers.held.push(theirs);
                    } else {
                        let _ = b.send(&host::encode_reply(tag, 111));
                    }
                }
            }
            Op::SaveRestore { tamper: change } => {
                // A device that cannot be saved says so; nothing else.
                let Ok(mut state) = t.save() else { continue };
                if let Some(change) = change {
                    tamper(&mut state, change);
                }
                let irq = EventFd::new(EFD_NONBLOCK).unwrap();
                let mut fresh =
                    MmioTransport::new(mem.clone(), device(&kind, &mut peer, &mut peers), irq)
                        .unwrap();
                // A refused state leaves the old transport in use.
                if fresh.restore(&state).is_ok() {
                    // A device whose driver cannot hear of it says so.
                    let _ = fresh.resume();
                    t = fresh;
                }
            }
            Op::Plug => {
                let mut next = None;
                // Refused (a driver holds it, it is full, it is no slot):
                // the device goes, and the old peer stays.
                if t.plug(net(&mut next)).is_ok() {
                    peer = next;
                }
            }
            Op::Unplug => {
                if t.unplug().is_ok() {
                    peer = None;
                }
            }
            Op::PeerDrain { hang_up } => {
                if hang_up {
                    peer = None;
                } else if let Some(p) = &mut peer {
                    let mut buf = [0u8; 4096];
                    while std::io::Read::read(p, &mut buf).is_ok_and(|n| n > 0) {}
                }
            }
        }
    }
});
