//! The vhost-user conversation against a scripted backend on the other end
//! of a socket pair: what the frontend sends, in which order, with which
//! descriptors, and what it makes of the answers.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::*;
use crate::virtio::mmio::tests::{bring_up, read32, write32};
use crate::virtio::mmio::MmioTransport;

// vhost-user request codes (the vhost-user specification's numbering).
const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const SET_OWNER: u32 = 3;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_ADDR: u32 = 9;
const SET_VRING_BASE: u32 = 10;
const GET_VRING_BASE: u32 = 11;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_CALL: u32 = 13;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const SET_VRING_ENABLE: u32 = 18;

const NEED_REPLY: u32 = 0x8;
const REPLY: u32 = 0x4;
const REPLY_ACK: u64 = 1 << 3;
/// What the scripted backend offers: virtio 1, event index, indirect
/// descriptors, protocol features, and a bit husk must not pass on.
const OFFERED: u64 =
    (1 << 32) | (1 << 29) | (1 << 28) | (1 << 30) | (1 << VIRTIO_F_RING_PACKED_BIT);
const VIRTIO_F_RING_PACKED_BIT: u64 = 34;

/// One message the backend received.
#[derive(Debug)]
struct Message {
    request: u32,
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.body[at..at + 8].try_into().unwrap())
    }
}

type Log = Arc<Mutex<Vec<Message>>>;

/// Serves the frontend on `sock` until it hangs up: records every message
/// and answers as virtiofsd would.
fn backend(sock: UnixStream, log: Log) {
    let mut pending = Vec::new();
    let mut pending_fds: Vec<OwnedFd> = Vec::new();
    loop {
        // A read never crosses into a message with other descriptors,
        // and each message here carries at most one.
        let mut buf = [0u8; 4096];
        let (n, file) = match sock.recv_with_fd(&mut buf) {
            Ok((0, _)) | Err(_) => return,
            Ok(got) => got,
        };
        pending.extend_from_slice(&buf[..n]);
        pending_fds.extend(file.map(OwnedFd::from));
        while pending.len() >= 12 {
            let word = |i: usize| u32::from_le_bytes(pending[i..i + 4].try_into().unwrap());
            let (request, flags, size) = (word(0), word(4), word(8) as usize);
            if pending.len() < 12 + size {
                break;
            }
            let body = pending[12..12 + size].to_vec();
            pending.drain(..12 + size);
            let fds = match request {
                SET_MEM_TABLE | SET_VRING_KICK | SET_VRING_CALL => std::mem::take(&mut pending_fds),
                _ => Vec::new(),
            };
            let answer = match request {
                GET_FEATURES => Some(OFFERED),
                GET_PROTOCOL_FEATURES => Some(REPLY_ACK),
                GET_VRING_BASE => None,
                _ if flags & NEED_REPLY != 0 => Some(0),
                _ => None,
            };
            let mut reply = Vec::new();
            if let Some(v) = answer {
                reply.extend_from_slice(&request.to_le_bytes());
                reply.extend_from_slice(&(1 | REPLY).to_le_bytes());
                reply.extend_from_slice(&8u32.to_le_bytes());
                reply.extend_from_slice(&v.to_le_bytes());
            } else if request == GET_VRING_BASE {
                reply.extend_from_slice(&request.to_le_bytes());
                reply.extend_from_slice(&(1 | REPLY).to_le_bytes());
                reply.extend_from_slice(&8u32.to_le_bytes());
                reply.extend_from_slice(&body[..4]); // the queue index
                reply.extend_from_slice(&7u32.to_le_bytes()); // where it stopped
            }
            log.lock().unwrap().push(Message { request, body, fds });
            if !reply.is_empty() && std::io::Write::write_all(&mut &sock, &reply).is_err() {
                return;
            }
        }
    }
}

/// Guest memory backed by a file, as a backend needs.
fn shared_mem() -> Mem {
    let file = tempfile::tempfile().unwrap();
    file.set_len(0x10_0000).unwrap();
    GuestMemoryMmap::from_ranges_with_files(&[(
        GuestAddress(0),
        0x10_0000,
        Some(FileOffset::new(file, 0)),
    )])
    .unwrap()
}

fn start(mem: &Mem) -> (Fs, Log, std::thread::JoinHandle<()>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let log: Log = Arc::default();
    let thread = std::thread::spawn({
        let log = log.clone();
        move || backend(theirs, log)
    });
    let fs = Fs::new(ours, "myfs", mem).unwrap();
    (fs, log, thread)
}

/// A transport over a device on a scripted backend, as the VMM builds it.
fn transport(mem: &Mem) -> (MmioTransport, Log, std::thread::JoinHandle<()>) {
    let (fs, log, thread) = start(mem);
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let t = MmioTransport::new(mem.clone(), Box::new(fs), irq).unwrap();
    (t, log, thread)
}

fn requests(log: &Log) -> Vec<u32> {
    log.lock().unwrap().iter().map(|m| m.request).collect()
}

#[test]
fn setup_negotiates_and_sends_the_memory_table_with_its_file() {
    let mem = shared_mem();
    let (fs, log, _t) = start(&mem);
    assert_eq!(
        requests(&log),
        [
            SET_OWNER,
            GET_FEATURES,
            GET_PROTOCOL_FEATURES,
            SET_PROTOCOL_FEATURES,
            SET_MEM_TABLE
        ]
    );
    let log = log.lock().unwrap();
    assert_eq!(log[3].u64_at(0), REPLY_ACK);
    let table = &log[4];
    assert_eq!(table.fds.len(), 1, "the memory file goes with the table");
    // num_regions, padding, then guest address, size, user address, offset.
    assert_eq!(u32::from_le_bytes(table.body[..4].try_into().unwrap()), 1);
    assert_eq!(table.u64_at(8), 0);
    assert_eq!(table.u64_at(16), 0x10_0000);
    let host = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
    assert_eq!(table.u64_at(24), host);
    // The guest sees the virtio bits the backend offers and husk passes,
    // never one it did not check (packed rings).
    assert_eq!(fs.features(), (1 << 32) | (1 << 29) | (1 << 28));
    let mut config = [0u8; 40];
    fs.read_config(0, &mut config);
    assert_eq!(&config[..4], b"myfs");
    assert!(config[4..36].iter().all(|&b| b == 0));
    assert_eq!(u32::from_le_bytes(config[36..].try_into().unwrap()), 1);
}

#[test]
fn activation_hands_the_rings_kicks_and_interrupt_to_the_backend() {
    let mem = shared_mem();
    let (fs, log, _t) = start(&mem);
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(mem.clone(), Box::new(fs), irq).unwrap();
    assert!(t.queues_served_elsewhere());
    bring_up(&mut t, 256, 0x1_0000, 0x2_0000, 0x3_0000);
    let status = read32(&mut t, 0x70);
    assert_eq!(status & 0x4, 0x4, "DRIVER_OK holds: {status:#x}");
    // Nothing reaches the backend until the VMM thread takes the request.
    let before = requests(&log).len();
    let events = t.host_events();
    assert_eq!(events.len(), 2);
    t.process_host_event(events[0].token, Ready::default());
    let all = requests(&log);
    let per_queue = [
        SET_VRING_NUM,
        SET_VRING_ADDR,
        SET_VRING_BASE,
        SET_VRING_CALL,
        SET_VRING_KICK,
        SET_VRING_ENABLE,
    ];
    let mut want = vec![SET_FEATURES];
    want.extend(per_queue);
    want.extend(per_queue);
    assert_eq!(all[before..], want[..]);
    let log = log.lock().unwrap();
    // Acked: what the driver took, plus the protocol-features bit.
    assert_eq!(log[before].u64_at(0), (1 << 32) | (1 << 30));
    // Queue 1's rings, as this process's addresses.
    let addr = &log[before + 8];
    let host = |gpa: u64| mem.get_host_address(GuestAddress(gpa)).unwrap() as u64;
    assert_eq!(addr.u64_at(8), host(0x1_1000), "descriptors");
    assert_eq!(addr.u64_at(16), host(0x3_1000), "used ring");
    assert_eq!(addr.u64_at(24), host(0x2_1000), "available ring");
    // The call descriptor is the irqfd; the kick is the queue's ioeventfd:
    // a notify write reaches the backend's copy without the VMM.
    let call = &log[before + 4].fds[0];
    std::io::Write::write_all(
        &mut std::fs::File::from(call.try_clone().unwrap()),
        &1u64.to_le_bytes(),
    )
    .unwrap();
    assert_eq!(t.irq_evt().read().unwrap(), 1, "the call fd is the irqfd");
    let mut kick = std::fs::File::from(log[before + 11].fds[0].try_clone().unwrap());
    let mut count = [0u8; 8];
    // The transport kicks every queue once at DRIVER_OK, for buffers the
    // driver queued before it; then each notify is one more.
    kick.read_exact(&mut count).unwrap();
    assert_eq!(u64::from_le_bytes(count), 1);
    write32(&mut t, 0x50, 1);
    kick.read_exact(&mut count).unwrap();
    assert_eq!(u64::from_le_bytes(count), 1);
    // The backend raises the interrupt itself: VRING reads as set.
    assert_eq!(read32(&mut t, 0x60) & INT_VRING, INT_VRING);
}

#[test]
fn reset_stops_the_rings_and_a_backend_hangup_needs_a_reset() {
    let mem = shared_mem();
    let (mut t, log, _backend) = transport(&mem);
    bring_up(&mut t, 256, 0x1_0000, 0x2_0000, 0x3_0000);
    let events = t.host_events();
    t.process_host_event(events[0].token, Ready::default());
    write32(&mut t, 0x70, 0);
    let before = requests(&log).len();
    t.process_host_event(events[0].token, Ready::default());
    assert_eq!(requests(&log)[before..], [GET_VRING_BASE, GET_VRING_BASE]);
    assert_eq!(read32(&mut t, 0x60) & INT_VRING, 0, "released at reset");
    // The backend going away marks the device as needing a reset.
    bring_up(&mut t, 256, 0x1_0000, 0x2_0000, 0x3_0000);
    t.process_host_event(
        events[1].token,
        Ready {
            closed: true,
            ..Ready::default()
        },
    );
    assert_ne!(read32(&mut t, 0x70) & 0x40, 0, "NEEDS_RESET");
}

#[test]
fn private_memory_and_bad_tags_are_refused() {
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let e = Fs::new(ours, "", &shared_mem()).err().unwrap();
    assert!(matches!(e, FsError::Tag(_)), "{e}");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let _t = std::thread::spawn(move || backend(theirs, Log::default()));
    let private = crate::virtio::test_util::mem();
    let e = Fs::new(ours, "t", &private).err().unwrap();
    assert!(matches!(e, FsError::MemoryNotShared(0)), "{e}");
}

#[test]
fn a_backend_that_is_gone_is_an_error() {
    // virtiofsd that died before accepting: its socket is closed.
    let (ours, theirs) = UnixStream::pair().unwrap();
    drop(theirs);
    let e = Fs::new(ours, "t", &shared_mem()).err().unwrap();
    assert!(matches!(e, FsError::Backend { .. }), "{e}");
}

#[test]
fn a_snapshot_holds_the_device_until_the_guest_makes_a_request() {
    let mem = shared_mem();
    let (mut t, _log, _backend) = transport(&mem);
    // Set up but not yet handed to the backend, then handed: both save.
    bring_up(&mut t, 256, 0x1_0000, 0x2_0000, 0x3_0000);
    let pending = t.save().unwrap();
    let events = t.host_events();
    t.process_host_event(events[0].token, Ready::default());
    let state = t.save().unwrap();
    // The same rings; once handed over, VRING reads as held set.
    assert_eq!(pending.device_queues, state.device_queues);
    assert_eq!(state.interrupt_status, INT_VRING);
    let queues = state.device_queues.as_ref().unwrap();
    assert_eq!(queues.len(), 2);
    assert!(queues.iter().all(|q| q.next_avail == 0 && q.next_used == 0));
    assert_eq!(queues[1].avail_ring, 0x2_1000);
    // The guest's first request (the request queue's index moves): what
    // the backend holds from then on is its own.
    mem.write_obj(1u16, GuestAddress(0x2_1000 + 2)).unwrap();
    let e = t.save().unwrap_err();
    assert!(e.to_string().contains("used the shared folder"), "{e}");
}

#[test]
fn a_restored_device_hands_a_new_backend_the_rings_where_they_were() {
    let mem = shared_mem();
    let (mut t, old, _backend) = transport(&mem);
    bring_up(&mut t, 256, 0x1_0000, 0x2_0000, 0x3_0000);
    t.process_host_event(t.host_events()[0].token, Ready::default());
    let state = t.save().unwrap();
    let first = requests(&old);
    let setup = first.iter().position(|&r| r == SET_FEATURES).unwrap();

    // A new VM's device on a new backend, as a restore builds it.
    let (mut r, new, _new_backend) = transport(&mem);
    r.restore(&state).unwrap();
    r.resume().unwrap();
    assert_eq!(read32(&mut r, 0x70), state.status, "the driver's status");
    r.process_host_event(r.host_events()[0].token, Ready::default());
    // The same conversation, message for message and word for word, as
    // the first backend had at DRIVER_OK (the addresses are this
    // process's, the same mapping).
    let (old, new) = (old.lock().unwrap(), new.lock().unwrap());
    let new_setup = new.iter().position(|m| m.request == SET_FEATURES).unwrap();
    assert_eq!(new.len() - new_setup, old.len() - setup);
    for (a, b) in old[setup..].iter().zip(&new[new_setup..]) {
        assert_eq!(a.request, b.request);
        assert_eq!(a.body, b.body, "request {}", a.request);
    }
    let base = new[new_setup..]
        .iter()
        .find(|m| m.request == SET_VRING_BASE)
        .unwrap();
    assert_eq!(
        base.u64_at(0) >> 32,
        0,
        "the backend starts at the rings' start"
    );
}
