//! A network's hub: the switch its VMs' interfaces are plugged into.
//!
//! A member joins on a connection to the hub's socket: its first frame
//! (passt's framing: a 4-byte big-endian length, then an Ethernet frame)
//! is the joining `husk run`'s [`Hello`] (its MAC, the names it answers
//! to, the address it would like), sent with one end of a
//! `SOCK_SEQPACKET` pair attached; the VMM's stream backend speaks on the
//! other end unchanged, and the hub answers with a [`Reply`] on the
//! connection. Every message on that pair is one frame in the stream
//! framing, whole: a hub that dies leaves no half frame behind, and the
//! joining husk, which keeps a copy of the hub's end, hands it to the next
//! hub with the same hello ([`super::Membership`]), so a killed hub costs
//! its members the frames it held and nothing more. A frame goes to the
//! member whose MAC it is addressed to, or to every other member when it
//! is broadcast or multicast; a frame for a MAC no member has is dropped.
//! MACs are the ones members joined with, never learned from frames, so a
//! guest cannot draw another's traffic by sending from its MAC. A
//! member's frames of [`NETWORK_ETHERTYPE`] are never passed on: they ask
//! for the members' names, which the hub sends back (and sends every
//! member whenever one joins or leaves) for init's `/etc/hosts`. A member
//! that does not read its frames loses the ones beyond [`MAX_QUEUED`], as
//! a switch port drops what it cannot send. A network of root's has one
//! port more, the host's ([`HostPort`]): a tap whose other side is a host
//! interface with the network's gateway address, so the host reaches the
//! members by address, as docker's host reaches its bridge's containers.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use husk_init::config::{is_resolver_word, NetworkHost, NetworkHosts, NETWORK_ETHERTYPE};
use serde::{Deserialize, Serialize};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// The descriptor the hub process finds its listening socket on.
pub const LISTENER_FD: i32 = 3;
/// The descriptor it finds the host's tap on, when it has one.
pub const HOST_TAP_FD: i32 = 4;
/// The longest frame in the stream framing, as the VMM's stream backend
/// takes it.
pub const MAX_FRAME: usize = 65_550;
/// What the hub holds for one member that is not reading.
pub const MAX_QUEUED: usize = 4 << 20;
pub const BROADCAST: [u8; 6] = [0xff; 6];
/// The hub's own (locally administered) MAC, the source of its frames.
pub const HUB_MAC: [u8; 6] = [0x02, 0x48, 0x55, 0x53, 0x4b, 0x00];
const HEADER: usize = 14;
/// Names one member may register.
const MAX_NAMES: usize = 16;

/// A joining run's first frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The names other members resolve to it (its name, aliases).
    pub names: Vec<String>,
    /// Its interface's MAC: frames for it go to this member.
    pub mac: [u8; 6],
    /// The address it would like (a restart's earlier one), if free.
    pub want: Option<Ipv4Addr>,
    /// `want` or nothing (`--ip`): refused when another member has it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fixed: bool,
    /// The addresses members whose husks live hold on the network, as the
    /// joiner found their leases (under the network's lock): none is given
    /// to another MAC, so a member on its way to this hub after the last
    /// one died finds its address still its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<Held>,
}

/// An address a living member holds: its lease (`members/` in the
/// network's folder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Held {
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Welcome { address: Ipv4Addr },
    Refused { reason: String },
}

/// A frame of [`NETWORK_ETHERTYPE`] in the stream framing.
pub fn control_frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let len = HEADER + payload.len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&dst);
    out.extend_from_slice(&src);
    out.extend_from_slice(&NETWORK_ETHERTYPE.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of a frame of [`NETWORK_ETHERTYPE`]; `None` for any other.
pub fn payload(frame: &[u8]) -> Option<&[u8]> {
    (frame.len() >= HEADER && frame[12..14] == NETWORK_ETHERTYPE.to_be_bytes())
        .then(|| &frame[HEADER..])
}

/// Has `command` (a hub's) start with `listener` as its
/// [`LISTENER_FD`], the host's tap (if any) as its [`HOST_TAP_FD`], and
/// with `session`, in a session of its own. The caller keeps both open
/// until the spawn.
pub fn hand_listener(
    command: &mut std::process::Command,
    listener: &UnixListener,
    tap: Option<&File>,
    session: bool,
) {
    let fds = [
        Some((listener.as_raw_fd(), LISTENER_FD)),
        tap.map(|t| (t.as_raw_fd(), HOST_TAP_FD)),
    ];
    // SAFETY: setsid(2), dup(2), dup2(2) and fcntl(2) are
    // async-signal-safe; the descriptors are the caller's, open across the
    // fork.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, move || {
            if session {
                libc::setsid();
            }
            // Each first to a number above both targets, so that moving
            // one never overwrites the other.
            let mut moved = Vec::with_capacity(2);
            for (fd, to) in fds.into_iter().flatten() {
                let high = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, HOST_TAP_FD + 1);
                if high < 0 {
                    return Err(io::Error::last_os_error());
                }
                moved.push((high, to));
            }
            for (high, to) in moved {
                // dup2 leaves the copy without close-on-exec.
                if libc::dup2(high, to) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Confines the hub process before it reads a guest's frame: a user
/// namespace of its own (no capability on the host, also when started by
/// root), its network's folder `dir` as its root, and the seccomp filter
/// of [`ThreadKind::Hub`](vmm::seccomp::ThreadKind) (no open, socket,
/// connect or exec). Returns where `dir` is seen from then on. Where user
/// namespaces are not allowed, seccomp alone confines it, and its log
/// says so.
pub fn confine(dir: &Path) -> anyhow::Result<PathBuf> {
    let seen = match own_root(dir) {
        Ok(()) => PathBuf::from("/"),
        Err(e) => {
            eprintln!(
                "husk: the hub keeps the host's view ({e}); its seccomp filter alone confines it"
            );
            dir.to_path_buf()
        }
    };
    let filters = vmm::seccomp::Filters::build(vmm::seccomp::SeccompMode::Kill)?
        .expect("mode kill builds filters");
    filters.install(vmm::seccomp::ThreadKind::Hub)?;
    Ok(seen)
}

/// A new user namespace (the process is single-threaded here, as
/// unshare requires) and `dir` as the root.
fn own_root(dir: &Path) -> io::Result<()> {
    // SAFETY: unshare changes only this process's namespaces; nothing
    // here depends on its capabilities in the host's namespace after it.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        return Err(io::Error::other(format!(
            "no user namespace: {}",
            io::Error::last_os_error()
        )));
    }
    std::os::unix::fs::chroot(dir)?;
    std::env::set_current_dir("/")
}

/// Whether a connection waits in `listener`'s backlog.
pub fn pending(listener: &UnixListener) -> bool {
    let mut fd = pollfd(listener, libc::POLLIN);
    // SAFETY: one pollfd we own, for the call; no waiting.
    unsafe { libc::poll(&mut fd, 1, 0) > 0 }
}

struct Joined {
    names: Vec<String>,
    mac: [u8; 6],
    address: Ipv4Addr,
}

/// One member: the connection it joined on, and the socket its VM's
/// frames cross, handed over with its hello.
struct Member {
    /// The connection it joined on; `None` once its husk closed it (the
    /// member stays while its VM's socket is open).
    control: Option<UnixStream>,
    /// What came on `control` before its hello was whole.
    input: Vec<u8>,
    /// The member's end of its VM's socket pair (`SOCK_SEQPACKET`: one
    /// message is one frame in the stream framing, so a hub that dies
    /// leaves no half frame on it for the next).
    data: Option<UnixStream>,
    /// Frames (in the stream framing) waiting for `data` to take them,
    /// and their bytes.
    output: VecDeque<Vec<u8>>,
    queued: usize,
    joined: Option<Joined>,
}

/// The host's port on the network: a tap (whole frames, one a read)
/// whose other side is the host's interface with the gateway's address.
/// It is no member: the hub leaves with its last member all the same,
/// and the tap (and the host's interface) with it.
pub struct HostPort {
    tap: File,
    /// The host interface's MAC: frames for it go to the tap.
    mac: [u8; 6],
    /// Frames (without the stream framing's length) waiting for the tap.
    output: VecDeque<Vec<u8>>,
    queued: usize,
}

impl HostPort {
    /// The port on `tap`, made non-blocking (the hub never waits on one
    /// descriptor).
    pub fn new(tap: File, mac: [u8; 6]) -> io::Result<Self> {
        let on: libc::c_int = 1;
        // SAFETY: FIONBIO reads the int we pass by reference; `tap` is an
        // open descriptor we own.
        if unsafe { libc::ioctl(tap.as_raw_fd(), libc::FIONBIO, &on) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(HostPort {
            tap,
            mac,
            output: VecDeque::new(),
            queued: 0,
        })
    }
}

/// Which of a member's descriptors a poll entry is, or the host's tap.
#[derive(Clone, Copy)]
enum Watched {
    Control(usize),
    Data(usize),
    Host,
}

pub struct Hub {
    /// The first and last address members are given.
    range: (u32, u32),
    members: Vec<Member>,
    /// The leases the latest joiner saw: their addresses are their MACs'.
    held: Vec<Held>,
    /// The host's port, on a network of root's.
    host: Option<HostPort>,
    /// A member's IPv6 address from its IPv4 one, on a network with IPv6.
    ipv6: Option<Box<dyn Fn(Ipv4Addr) -> Option<std::net::Ipv6Addr>>>,
    /// Frames dropped for members that did not read them.
    dropped: u64,
    /// Messages on a member's socket that were no frame.
    malformed: u64,
    /// Where a member's messages are read: one byte more than the
    /// longest, to tell one cut short.
    buf: Box<[u8]>,
}

impl Hub {
    pub fn new(range: (u32, u32)) -> Self {
        Hub {
            range,
            members: Vec::new(),
            held: Vec::new(),
            host: None,
            ipv6: None,
            dropped: 0,
            malformed: 0,
            buf: vec![0u8; 4 + MAX_FRAME + 1].into_boxed_slice(),
        }
    }

    /// The host's port on the network.
    pub fn with_host(mut self, host: HostPort) -> Self {
        self.host = Some(host);
        self
    }

    /// IPv6 on the network: `address6` gives a member's IPv6 address from
    /// its IPv4 one, for the names the members are sent.
    pub fn with_ipv6(
        mut self,
        address6: impl Fn(Ipv4Addr) -> Option<std::net::Ipv6Addr> + 'static,
    ) -> Self {
        self.ipv6 = Some(Box::new(address6));
        self
    }

    /// Switches frames until the last member left and `may_leave` says
    /// no other is on its way.
    pub fn run(
        mut self,
        listener: &UnixListener,
        mut may_leave: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        listener.set_nonblocking(true)?;
        loop {
            self.accept(listener).map_err(|e| {
                anyhow::anyhow!("descriptor {LISTENER_FD} is no listening socket: {e}")
            })?;
            if self.members.is_empty() && may_leave() {
                return Ok(());
            }
            let mut fds = vec![libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            let mut watched = Vec::new();
            for (i, m) in self.members.iter().enumerate() {
                if let Some(c) = &m.control {
                    fds.push(pollfd(c, libc::POLLIN));
                    watched.push(Watched::Control(i));
                }
                if let (Some(d), Some(_)) = (&m.data, &m.joined) {
                    let out = if m.output.is_empty() {
                        0
                    } else {
                        libc::POLLOUT
                    };
                    fds.push(pollfd(d, libc::POLLIN | out));
                    watched.push(Watched::Data(i));
                }
            }
            if let Some(h) = &self.host {
                let out = if h.output.is_empty() {
                    0
                } else {
                    libc::POLLOUT
                };
                fds.push(pollfd(&h.tap, libc::POLLIN | out));
                watched.push(Watched::Host);
            }
            // SAFETY: `fds` is ours and alive for the call; its length is
            // what we pass.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            let ready: Vec<Watched> = watched
                .into_iter()
                .zip(&fds[1..])
                .filter(|(_, fd)| fd.revents != 0)
                .map(|(w, _)| w)
                .collect();
            self.step(&ready);
        }
    }

    /// Takes every connection waiting; fails when `listener` is no
    /// listening socket.
    fn accept(&mut self, listener: &UnixListener) -> io::Result<()> {
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        self.members.push(Member {
                            control: Some(stream),
                            input: Vec::new(),
                            data: None,
                            output: VecDeque::new(),
                            queued: 0,
                            joined: None,
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOTSOCK | libc::EINVAL | libc::EBADF)
                    ) =>
                {
                    return Err(e);
                }
                // Gone before it was taken, or out of descriptors for now.
                Err(_) => return Ok(()),
            }
        }
    }

    /// Serves the `ready` descriptors: hellos answered, frames read and
    /// switched; drops the members that left, tells everyone the names
    /// when they changed, and writes what it can.
    fn step(&mut self, ready: &[Watched]) {
        let mut gone = vec![false; self.members.len()];
        let mut changed = false;
        for &w in ready {
            match w {
                Watched::Control(i) => match self.on_control(i) {
                    Ok(joined) => changed |= joined,
                    Err(()) => gone[i] = true,
                },
                Watched::Data(i) => {
                    let (frames, alive) = self.receive(i);
                    for wire in frames {
                        self.on_frame(i, &wire);
                    }
                    gone[i] |= !alive;
                }
                Watched::Host => {
                    for wire in self.read_host() {
                        self.switch(None, &wire);
                    }
                }
            }
        }
        for (i, m) in self.members.iter_mut().enumerate() {
            if flush(m).is_err() {
                gone[i] = true;
            }
        }
        self.flush_host();
        let mut i = 0;
        self.members.retain(|m| {
            let keep = !gone[i];
            i += 1;
            if !keep {
                if let Some(j) = &m.joined {
                    eprintln!("husk: {} left ({})", j.address, j.names.join(" "));
                    changed = true;
                }
            }
            keep
        });
        if changed {
            self.tell_names();
            for m in &mut self.members {
                let _ = flush(m);
            }
        }
    }

    /// Reads member `i`'s connection: before it joined, its hello (with
    /// its socket), answered there; after, only whether its husk closed
    /// it. `Ok(true)` when it joined; `Err` when it is to go.
    fn on_control(&mut self, i: usize) -> Result<bool, ()> {
        let m = &mut self.members[i];
        let Some(control) = &m.control else {
            return Ok(false);
        };
        let mut buf = [0u8; 4096];
        loop {
            match control.recv_with_fd(&mut buf) {
                Ok((0, _)) => break,
                Ok((n, socket)) => {
                    if let (None, Some(s)) = (&m.data, socket) {
                        m.data = Some(UnixStream::from(std::os::fd::OwnedFd::from(s)));
                    }
                    if m.joined.is_none() {
                        m.input.extend_from_slice(&buf[..n]);
                        if m.input.len() > 4 + MAX_FRAME {
                            return Err(());
                        }
                    }
                    continue;
                }
                Err(e) if e.errno() == libc::EAGAIN => return self.hello(i),
                Err(e) if e.errno() == libc::EINTR => continue,
                Err(_) => break,
            }
        }
        // Closed: before its hello that is the member gone; after, only
        // its husk (the VM's socket says when the member leaves).
        if m.joined.is_none() {
            return Err(());
        }
        m.control = None;
        Ok(false)
    }

    /// Member `i`'s hello, once it is whole: the answer written on its
    /// connection. `Ok(true)` when it joined, `Err` when refused (the
    /// member goes once it has the answer).
    fn hello(&mut self, i: usize) -> Result<bool, ()> {
        let m = &mut self.members[i];
        if m.joined.is_some() || m.input.len() < 4 {
            return Ok(false);
        }
        let len = u32::from_be_bytes(m.input[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(());
        }
        if m.input.len() < 4 + len {
            return Ok(false);
        }
        let frame = std::mem::take(&mut m.input);
        let frame = &frame[4..4 + len];
        let reply = match payload(frame).map(serde_json::from_slice::<Hello>) {
            Some(Ok(hello)) => match self.members[i].data.as_ref().map(|d| d.set_nonblocking(true)) {
                Some(Ok(())) => self.admit(i, hello),
                _ => Reply::Refused {
                    reason: "a member hands over its socket with its hello (is this husk older than the network's hub?)".into(),
                },
            },
            _ => Reply::Refused {
                reason: "the first frame must be husk's hello".into(),
            },
        };
        let admitted = matches!(reply, Reply::Welcome { .. });
        let src = frame.get(6..12).and_then(|s| s.try_into().ok());
        let json = serde_json::to_vec(&reply).expect("a reply serializes");
        let answer = control_frame(src.unwrap_or(BROADCAST), HUB_MAC, &json);
        // A few hundred bytes on a connection nothing was written to
        // yet: taken whole, or the joiner is gone.
        let written = self.members[i]
            .control
            .as_ref()
            .map(|mut c| c.write(&answer));
        match (admitted, written) {
            (true, Some(Ok(n))) if n == answer.len() => Ok(true),
            _ => {
                self.members[i].joined = None;
                Err(())
            }
        }
    }

    /// The frames member `i`'s VM sent since its last read, each in the
    /// stream framing as it came (so it goes on as it is), and whether it
    /// is still there. Each message on its socket is one frame in the
    /// stream framing; one that is not is dropped.
    fn receive(&mut self, i: usize) -> (Vec<Vec<u8>>, bool) {
        let Some(data) = &self.members[i].data else {
            return (Vec::new(), false);
        };
        let buf = &mut self.buf;
        let mut frames = Vec::new();
        let mut alive = true;
        // A bounded batch: the others get their turn.
        while frames.len() < 64 {
            match (&*data).read(buf) {
                Ok(0) => {
                    alive = false;
                    break;
                }
                Ok(n) => {
                    let framed = (4..=4 + MAX_FRAME).contains(&n)
                        && u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize
                            == n - 4;
                    if !framed {
                        self.malformed += 1;
                        if self.malformed.is_power_of_two() {
                            eprintln!(
                                "husk: {} messages that are no frame dropped",
                                self.malformed
                            );
                        }
                        continue;
                    }
                    frames.push(buf[..n].to_vec());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    alive = false;
                    break;
                }
            }
        }
        (frames, alive)
    }

    /// Switches one frame of member `i`'s VM, `wire` in the stream
    /// framing (its length checked).
    fn on_frame(&mut self, i: usize, wire: &[u8]) {
        let frame = &wire[4..];
        if frame.len() < HEADER {
            return;
        }
        if payload(frame).is_some() {
            let names = self.names_frame(i);
            self.queue(i, &names);
            return;
        }
        self.switch(Some(i), wire);
    }

    /// Sends a frame (`wire`, in the stream framing, at least a header
    /// long) from member `from` (the host's port for `None`) on to the
    /// member whose MAC it is for, or to all others when it is broadcast
    /// or multicast; the host's port among them.
    fn switch(&mut self, from: Option<usize>, wire: &[u8]) {
        let dst: [u8; 6] = wire[4..10].try_into().expect("6 bytes");
        let to: Vec<usize> = self
            .members
            .iter()
            .enumerate()
            .filter(|(j, m)| {
                Some(*j) != from
                    && m.joined
                        .as_ref()
                        .is_some_and(|jm| dst[0] & 1 == 1 || jm.mac == dst)
            })
            .map(|(j, _)| j)
            .collect();
        for j in to {
            self.queue(j, wire);
        }
        if let (Some(_), Some(h)) = (from, &mut self.host) {
            if dst[0] & 1 == 1 || h.mac == dst {
                if h.queued + wire.len() > MAX_QUEUED {
                    self.dropped += 1;
                    return;
                }
                h.queued += wire.len() - 4;
                h.output.push_back(wire[4..].to_vec());
            }
        }
    }

    /// The frames the host sent through its tap since the last read, each
    /// in the stream framing; the host's port goes (with a line in the
    /// log) when its tap fails.
    fn read_host(&mut self) -> Vec<Vec<u8>> {
        let Some(h) = &self.host else {
            return Vec::new();
        };
        let mut frames = Vec::new();
        let mut failed = None;
        // A bounded batch of reads (the members get their turn), whatever
        // they hold.
        for _ in 0..64 {
            match (&h.tap).read(&mut self.buf[4..]) {
                Ok(0) => {
                    failed = Some(io::Error::from(io::ErrorKind::UnexpectedEof));
                    break;
                }
                // Never more than the framing carries: an MTU above
                // 65520 is the host's own misconfiguration.
                Ok(n) if (HEADER..=MAX_FRAME).contains(&n) => {
                    let frame = &self.buf[4..4 + n];
                    // The names are the hub's to send, not the host's.
                    if payload(frame).is_none() {
                        let mut wire = Vec::with_capacity(4 + n);
                        wire.extend_from_slice(&(n as u32).to_be_bytes());
                        wire.extend_from_slice(frame);
                        frames.push(wire);
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            self.drop_host(&e);
        }
        frames
    }

    /// Lets the host's port go after its tap failed with `e`.
    fn drop_host(&mut self, e: &io::Error) {
        eprintln!("husk: the host's port failed ({e}); the host no longer reaches the members");
        self.host = None;
    }

    /// Writes what waits for the host's tap, as far as it takes it now.
    fn flush_host(&mut self) {
        let Some(h) = &mut self.host else {
            return;
        };
        while let Some(frame) = h.output.front() {
            match (&h.tap).write(frame) {
                Ok(_) => {
                    h.queued -= frame.len();
                    h.output.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The host's interface is down (EIO): what it is sent
                // now is lost, as on a wire.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    h.queued = 0;
                    h.output.clear();
                    return;
                }
                Err(e) => {
                    self.drop_host(&e);
                    return;
                }
            }
        }
    }

    /// Member `i`'s hello: its address, or why it cannot join.
    fn admit(&mut self, i: usize, hello: Hello) -> Reply {
        let refuse = |reason: String| Reply::Refused { reason };
        if hello.names.len() > MAX_NAMES {
            return refuse(format!("at most {MAX_NAMES} names"));
        }
        if let Some(bad) = hello.names.iter().find(|n| !is_resolver_word(n)) {
            return refuse(format!("{bad:?} is not a name /etc/hosts can hold"));
        }
        if hello.mac[0] & 1 == 1 || hello.mac == [0; 6] {
            return refuse("a member's MAC is a unicast address".into());
        }
        // What the joiner found is newer than what the last one did.
        self.held = hello.held.clone();
        let joined = || self.members.iter().filter_map(|m| m.joined.as_ref());
        if joined().any(|j| j.mac == hello.mac) {
            return refuse("another member has this MAC".into());
        }
        let held_by_another = |a: u32| {
            self.held
                .iter()
                .any(|h| u32::from(h.address) == a && h.mac != hello.mac)
        };
        let (first, last) = self.range;
        let free = |a: u32| joined().all(|j| u32::from(j.address) != a) && !held_by_another(a);
        if let (true, Some(want)) = (hello.fixed, hello.want) {
            let a = u32::from(want);
            if !(first..=last).contains(&a) {
                return refuse(format!(
                    "{want} is not an address it gives its members ({} to {})",
                    Ipv4Addr::from(first),
                    Ipv4Addr::from(last)
                ));
            }
            if let Some(j) = joined().find(|j| j.address == want) {
                return refuse(format!(
                    "{want} is taken by another member ({})",
                    j.names.join(" ")
                ));
            }
            if held_by_another(a) {
                return refuse(format!(
                    "{want} is held by another member, joining the network again"
                ));
            }
        }
        let wanted = hello
            .want
            .map(u32::from)
            .filter(|a| (first..=last).contains(a) && free(*a));
        let Some(address) = wanted.or_else(|| (first..=last).find(|a| free(*a))) else {
            return refuse("no address is left in its subnet".into());
        };
        let address = Ipv4Addr::from(address);
        eprintln!("husk: {address} joined ({})", hello.names.join(" "));
        self.members[i].joined = Some(Joined {
            names: hello.names,
            mac: hello.mac,
            address,
        });
        Reply::Welcome { address }
    }

    /// Every member's address and names, for member `i`.
    fn names_frame(&self, i: usize) -> Vec<u8> {
        let mut hosts = NetworkHosts {
            hosts: self
                .members
                .iter()
                .filter_map(|m| m.joined.as_ref())
                .filter(|j| !j.names.is_empty())
                .map(|j| NetworkHost {
                    address: j.address,
                    address6: self.ipv6.as_ref().and_then(|f| f(j.address)),
                    names: j.names.clone(),
                })
                .collect(),
        };
        let mac = self.members[i].joined.as_ref().map_or(BROADCAST, |j| j.mac);
        loop {
            let json = serde_json::to_vec(&hosts).expect("names serialize");
            if HEADER + json.len() <= MAX_FRAME || hosts.hosts.is_empty() {
                return control_frame(mac, HUB_MAC, &json);
            }
            hosts.hosts.pop();
        }
    }

    /// Sends every member the names.
    fn tell_names(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].joined.is_some() {
                let names = self.names_frame(i);
                self.queue(i, &names);
            }
        }
    }

    /// Queues `wire` (a frame in the stream framing) for member `j`,
    /// unless that member already has its fill waiting.
    fn queue(&mut self, j: usize, wire: &[u8]) {
        let m = &mut self.members[j];
        if m.queued + wire.len() > MAX_QUEUED {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                eprintln!(
                    "husk: {} frames dropped for members not reading",
                    self.dropped
                );
            }
            return;
        }
        m.queued += wire.len();
        m.output.push_back(wire.to_vec());
    }
}

/// A `pollfd` for `fd`, waiting for `events` (0: hang-ups only).
pub(super) fn pollfd(fd: &impl AsRawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    }
}

/// Writes what member `m` has queued, a frame per message, as far as its
/// socket takes them now.
fn flush(m: &mut Member) -> io::Result<()> {
    let Some(data) = &m.data else {
        return Ok(());
    };
    while let Some(frame) = m.output.front() {
        match (&*data).write(frame) {
            Ok(n) if n == frame.len() => {
                m.queued -= n;
                m.output.pop_front();
            }
            Ok(_) => return Err(io::ErrorKind::WriteZero.into()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
