//! The protocol between husk's host side and the guest agent that husk's
//! init serves on vsock port [`PORT`].
//!
//! A connection carries frames: a 4-byte little-endian length, then that
//! many bytes of JSON. The host sends one [`Request`] and reads one
//! [`Response`], as often as it likes, in order. Two requests turn the
//! connection into something else once answered: [`Request::Attach`]
//! makes it one of a process's byte streams (stdin, stdout, stderr or its
//! terminal), and [`Request::Wait`] holds it until the process ends. So a
//! process's output never waits behind a request, and nobody polls.
//!
//! Every request names the protocol version it speaks ([`VERSION`]); an
//! agent refuses another with [`ErrorKind::Version`]. New optional fields
//! may be added within a version (unknown fields are refused, so both
//! sides move together: they ship in one husk).

#![forbid(unsafe_code)]

pub mod copy;
pub mod hex;
pub mod resume_area;

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The guest agent's vsock port.
pub const PORT: u32 = 1024;
/// The host port (CID 2) the agent connects to once it listens, to say
/// so: it writes one [`Response::Pong`] frame and closes. A host that
/// waits for the guest listens there instead of trying to connect while
/// the guest boots; where nobody listens the guest is refused at once.
pub const ANNOUNCE_PORT: u32 = 1024;
/// The host port (CID 2) a guest restored from a snapshot (or booted to
/// take one) connects to at its snapshot point, to read this run's
/// [`Resume`] frame: what a snapshot must not fix for every run.
pub const RESUME_PORT: u32 = 1025;
/// The protocol version this crate speaks.
pub const VERSION: u32 = 1;
/// The largest frame either side accepts: a request is small; a process's
/// argv and environment fit many times over.
pub const MAX_FRAME: usize = 1 << 20;
/// The id of the appliance's own command (the one init starts).
pub const MAIN: u32 = 0;

/// A process to start in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    /// argv; a program without a `/` is looked up in `PATH`.
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries set over the appliance's own environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory (default: the appliance's).
    #[serde(default)]
    pub cwd: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid` (default: the appliance's).
    #[serde(default)]
    pub user: Option<String>,
    /// Give the process a terminal (one stream, [`Stream::Tty`]) instead
    /// of three pipes.
    #[serde(default)]
    pub tty: bool,
    /// The terminal's size, when `tty`.
    #[serde(default)]
    pub size: Option<WindowSize>,
    /// Keep stdin open for an [`Request::Attach`] of [`Stream::Stdin`];
    /// without it the process reads `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// In the background (`husk exec -d`): its streams are `/dev/null`,
    /// and the agent forgets it when it ends (nobody waits for it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detached: bool,
    /// Run in a container of its own: a mount namespace whose root is a
    /// folder of the guest (a pod's containers share one VM this way).
    #[serde(default)]
    pub container: Option<Container>,
    /// Run inside the container that process `within` runs in (its mount
    /// namespace and root), as an exec into a container does. The user,
    /// working directory and `PATH` lookup are that container's.
    #[serde(default)]
    pub within: Option<u32>,
    /// A process in the guest's own root that is a container all the
    /// same (husk-runtime's, whose VM is one container): it runs in a
    /// cgroup of its own with these limits, which every later process
    /// started without `container` or `within` joins while it runs, so
    /// [`Request::Stats`], [`Request::Update`] and [`Request::Freeze`]
    /// reach the container's every process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<Resources>,
    /// The PID namespace of a new container (`container`) or of a
    /// process with a cgroup of its own (`cgroup`; with one of its own it
    /// also sees a `/proc` of its own). A process `within` a container is
    /// born in that container's; a later process in the guest's root, in
    /// the command's (and its mounts) when the command has one of its own.
    #[serde(default, skip_serializing_if = "PidNamespace::is_guest")]
    pub pid_ns: PidNamespace,
    /// Supplementary groups beside the user's own (OCI's
    /// `additionalGids`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<u32>,
    /// Resource limits, set before the process drops to its user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
    /// The capability sets to run with; without them root keeps every
    /// capability and another user has none, as an ordinary exec gives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// Set `no_new_privs`: no exec may grant privileges (setuid bits, file
    /// capabilities).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_new_privileges: bool,
    /// Seccomp BPF programs to install, in order, as the last thing
    /// before exec (each instruction as [`pack_bpf`] packs it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seccomp: Vec<Vec<u64>>,
}

/// One BPF instruction (`struct sock_filter`) as a number: `code` in the
/// low 16 bits, then `jt`, `jf`, and `k` in the high 32.
pub fn pack_bpf(code: u16, jt: u8, jf: u8, k: u32) -> u64 {
    u64::from(code) | u64::from(jt) << 16 | u64::from(jf) << 24 | u64::from(k) << 32
}

/// The fields [`pack_bpf`] packed: (code, jt, jf, k).
pub fn unpack_bpf(i: u64) -> (u16, u8, u8, u32) {
    (i as u16, (i >> 16) as u8, (i >> 24) as u8, (i >> 32) as u32)
}

/// One resource limit: `resource` is Linux's number (`RLIMIT_NOFILE` is 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// Capability sets as bit masks, bit N for capability N
/// (`CAP_NET_BIND_SERVICE` is 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

/// A container's filesystem: its root and what is mounted into it.
/// `/proc`, `/sys` (read-only) and the guest's `/dev` are mounted in
/// every container, on mount points its root has.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Container {
    /// The root folder, a guest path.
    pub root: String,
    #[serde(default)]
    pub readonly: bool,
    /// Mounted in order, after the standard ones.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Limits of the container's cgroup (every container has one, which
    /// its exec'd processes join).
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
}

/// Which processes a container's process sees, and which see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum PidNamespace {
    /// The guest's own: every process of the guest.
    #[default]
    Guest,
    /// One of its own, whose PID 1 the container's process is (an OCI
    /// spec's `pid` namespace without a path).
    Own,
    /// That of the running container whose process has this id: a pod
    /// whose containers share their processes (CRI's `POD` mode). Only
    /// for a new `container`.
    Of(u32),
}

impl PidNamespace {
    pub fn is_guest(&self) -> bool {
        *self == PidNamespace::Guest
    }
}

/// Limits of a container's cgroup in the guest (cgroup v2), from its OCI
/// `linux.resources`; what is `None` is left as it is (at first, as the
/// kernel makes it: no limit, the default weight), and a limit of
/// [`NO_LIMIT`] is lifted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// `memory.max`, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
    /// `cpu.max`: microseconds of CPU time per `cpu_period` (default
    /// 100,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_quota: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_period: Option<u64>,
    /// `cpu.weight`, 1 to 10,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u64>,
    /// `pids.max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u64>,
}

/// In [`Resources`], a limit of this value is "max": none (what an update
/// sets to lift a limit).
pub const NO_LIMIT: u64 = u64::MAX;

impl Resources {
    pub fn is_empty(&self) -> bool {
        *self == Resources::default()
    }
}

/// A container's cgroup figures, as the guest kernel's cgroup v2 files
/// give them; the `*_stat` and `*_events` maps hold every `key value`
/// line of `memory.stat`, `memory.events` and `cpu.stat`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupStats {
    /// `memory.current`, bytes.
    pub memory_current: u64,
    /// `memory.max`; `None` for no limit.
    pub memory_max: Option<u64>,
    /// `memory.peak` where the kernel has it (6.1 does not).
    #[serde(default)]
    pub memory_peak: Option<u64>,
    pub memory_stat: std::collections::BTreeMap<String, u64>,
    pub memory_events: std::collections::BTreeMap<String, u64>,
    pub cpu_stat: std::collections::BTreeMap<String, u64>,
    pub pids_current: u64,
    /// `pids.max`; `None` for no limit.
    pub pids_max: Option<u64>,
}

/// One mount into a container; `target` is a path inside it, made when
/// missing (a file for a file's bind mount).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Mount {
    /// A guest file or folder (`source`, a guest path) seen at `target`.
    Bind {
        source: String,
        target: String,
        #[serde(default)]
        readonly: bool,
    },
    /// A new tmpfs; `options` as mount(8) takes them (`size=64m,mode=1777`).
    Tmpfs {
        target: String,
        #[serde(default)]
        options: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

/// One of a process's byte streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdin,
    Stdout,
    Stderr,
    /// The terminal of a process started with `tty`: both directions.
    Tty,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// This signal ended it.
    Signal(i32),
}

impl ExitStatus {
    /// The status a shell shows: the code, or 128 + the signal.
    pub fn shell_code(self) -> u8 {
        match self {
            ExitStatus::Code(c) => c as u8,
            ExitStatus::Signal(s) => 128u8.wrapping_add(s as u8),
        }
    }
}

/// What the host asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Answered with [`Response::Pong`]: the agent is there.
    Ping,
    /// Waits until the appliance's command has started (or failed to).
    /// Answer: [`Response::Started`] with id [`MAIN`], or
    /// [`Response::Exited`] when it could not start or already ended.
    MainStarted,
    /// Starts a process. Answer: [`Response::Started`].
    Start { process: Process },
    /// Starts the appliance's command, as process [`MAIN`], in a guest
    /// booted to hold it (`husk run --hold`: init set everything up and
    /// waits for this). Its end is the guest's end, as for a command init
    /// started itself. Answer: [`Response::Started`], or an error when
    /// the guest does not hold a command or already started one.
    StartMain { process: Process },
    /// Makes this connection one of the process's streams. Answer:
    /// [`Response::Ok`], then raw bytes: what the host writes reaches the
    /// process's stdin (or terminal); what the process writes arrives, and
    /// the end of its output is the end of the connection. Each stream can
    /// be attached once; a refused attach is answered with an error and
    /// the connection takes requests as before.
    Attach { id: u32, stream: Stream },
    /// Sends a signal to the process. Answer: [`Response::Ok`].
    Signal { id: u32, signal: i32 },
    /// Waits for the process to end, and forgets it. Answer:
    /// [`Response::Exited`].
    Wait { id: u32 },
    /// Closes the process's stdin (the end of its input). Answer:
    /// [`Response::Ok`].
    CloseStdin { id: u32 },
    /// Sets the size of the process's terminal. Answer: [`Response::Ok`].
    Resize { id: u32, size: WindowSize },
    /// The guest's hostname, addresses and uptime. Answer:
    /// [`Response::Info`].
    Info,
    /// Sets the guest's clock. Answer: [`Response::Ok`].
    SetTime { secs: u64, nanos: u32 },
    /// Mixes fresh random bytes from the host into the guest's generator
    /// and reseeds it at once (a guest restored from a snapshot must not
    /// go on with the random state every other restore of it has).
    /// Answer: [`Response::Ok`].
    Reseed { seed: Vec<u8> },
    /// Whether something in the guest accepts TCP connections on
    /// 127.0.0.1:`port` (a readiness check). Answer: [`Response::Ok`] or
    /// an error.
    ProbeTcp { port: u16 },
    /// The figures of the cgroup the container process `id` runs in.
    /// Answer: [`Response::Stats`].
    Stats { id: u32 },
    /// What the whole guest uses: memory, network and disk traffic,
    /// processes (`husk stats`). Answer: [`Response::Usage`].
    Usage,
    /// The guest's processes, kernel threads left out (`husk top`).
    /// Answer: [`Response::Processes`].
    Processes,
    /// Copies `path` out of the guest (`husk cp NAME:PATH ...`). Answer:
    /// [`Response::Ok`], then the connection carries a [`copy`] archive
    /// of it (what it holds, with `contents`) and ends with it; or an
    /// error when there is nothing at `path`. An archive cut short is the
    /// guest failing to read something.
    CopyOut { path: String, contents: bool },
    /// Copies an archive into the guest at `path` by [`copy::unpack`]'s
    /// rules (`husk cp ... NAME:PATH`), its files owned by root, or with
    /// `owners` by the archive's owners. Answer: [`Response::Ok`]; then
    /// the host sends the archive and ends its side of the connection
    /// (`shutdown(SHUT_WR)`); then the agent answers once more:
    /// [`Response::Ok`] once it is all in place, or an error.
    CopyIn {
        path: String,
        contents: bool,
        owners: bool,
    },
    /// Sets limits of the cgroup the container process `id` runs in
    /// (what `resources` leaves `None` stays as it is). Answer:
    /// [`Response::Ok`].
    Update { id: u32, resources: Resources },
    /// Freezes (`frozen`) or thaws every process of the cgroup the
    /// container process `id` runs in (cgroup v2's freezer, as runc pauses
    /// a container), and answers once the kernel says it is done. Answer:
    /// [`Response::Ok`].
    Freeze { id: u32, frozen: bool },
    /// Stops the guest cleanly: `signal` (default: the appliance's stop
    /// signal, else SIGTERM) to the appliance's command, SIGKILL after
    /// `grace_ms`, then init ends every process and powers off. Answer:
    /// [`Response::Ok`] at once.
    Shutdown {
        grace_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
    },
    /// Takes the network interface the VMM has just put into the empty
    /// slot `virtio-mmio.{device}` (`husk network connect` of a running
    /// VM): probes it, gives it `address`/`prefix` (and `address6` on a
    /// network with IPv6), and keeps the names of husk network `network`'s
    /// members in `/etc/hosts`. No default route:
    /// the guest's way out stays the one it booted with, as docker's
    /// `network connect` leaves a container's. Answer: [`Response::Ok`].
    PlugInterface {
        device: u32,
        network: String,
        address: std::net::Ipv4Addr,
        prefix: u8,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address6: Option<(std::net::Ipv6Addr, u8)>,
    },
    /// Lets go of the interface in slot `virtio-mmio.{device}`: its
    /// network's names leave `/etc/hosts` and its driver is unbound,
    /// after which the VMM can take it out. Answer: [`Response::Ok`].
    UnplugInterface { device: u32 },
}

/// What the agent answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "re", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    Ok,
    Pong,
    Started { id: u32, pid: i32 },
    Exited { status: ExitStatus },
    Info(GuestInfo),
    Stats(CgroupStats),
    Usage(Usage),
    Processes { processes: Vec<GuestProcess> },
    Error { kind: ErrorKind, message: String },
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request was not understood.
    BadRequest,
    /// The request speaks another protocol version.
    Version,
    /// No process has that id (never started, or already waited for).
    NoSuchProcess,
    /// The process could not start; `status` as a shell would report it
    /// (127 not found, 126 not executable, 125 anything else).
    StartFailed { status: u8 },
    /// The stream is already attached, or the process has no such stream.
    NotAttachable,
    /// Too many processes or streams at once.
    Busy,
    /// The operation failed in the guest.
    Failed,
}

/// The guest's view of itself.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestInfo {
    pub hostname: String,
    pub uptime_ms: u64,
    /// Addresses as `iface addr/prefix`, loopback left out.
    pub addresses: Vec<String>,
    /// Processes the agent is keeping (running, or ended and not waited for).
    pub processes: u32,
}

/// What the whole guest uses, as its kernel counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    /// `MemTotal` and `MemAvailable` of `/proc/meminfo`, bytes.
    pub memory_total: u64,
    pub memory_available: u64,
    /// Bytes received and sent on every interface but loopback.
    pub net_rx: u64,
    pub net_tx: u64,
    /// Bytes read from and written to the guest's disks.
    pub block_read: u64,
    pub block_write: u64,
    /// Processes (kernel threads left out).
    pub pids: u32,
}

/// One process of the guest, as `ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestProcess {
    pub pid: u32,
    pub ppid: u32,
    /// Its effective user, by name where the guest's `/etc/passwd` has one.
    pub user: String,
    /// `R` running, `S` sleeping, `D` in uninterruptible sleep, `Z` a
    /// zombie, `T` stopped.
    pub state: String,
    /// Resident memory, bytes.
    pub rss: u64,
    /// CPU time in user and kernel mode, milliseconds.
    pub cpu_ms: u64,
    /// Since it started, milliseconds.
    pub elapsed_ms: u64,
    /// Its command line, arguments joined by spaces.
    pub command: String,
}

/// What init reads on [`RESUME_PORT`]: this run's part of the kernel
/// command line (the `husk.run=`, `husk.net=` parameters a cold boot
/// would have had), and a seed for the guest's random generator, so no
/// two runs of one snapshot share their random state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resume {
    /// Appended to the saved kernel command line (a later parameter wins).
    pub params: String,
    /// Fresh random bytes from the host.
    pub seed: Vec<u8>,
}

/// A request with the version it speaks, as framed on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    v: u32,
    #[serde(flatten)]
    body: T,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection: {0}")]
    Io(#[source] io::Error),
    #[error("the connection ended in the middle of a frame")]
    Truncated,
    #[error("a frame of {0} bytes is larger than the {MAX_FRAME} allowed")]
    TooLarge(usize),
    #[error("a frame is not a valid message")]
    Json(#[source] serde_json::Error),
    #[error("the peer speaks protocol version {0}; this side speaks {VERSION}")]
    Version(u32),
}

/// Encodes `message` as one frame.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let envelope = Envelope {
        v: VERSION,
        body: message,
    };
    let json = serde_json::to_vec(&envelope).expect("protocol types serialize");
    let mut frame = Vec::with_capacity(4 + json.len());
    frame.extend_from_slice(&(json.len() as u32).to_le_bytes());
    frame.extend_from_slice(&json);
    frame
}

/// Decodes one frame's body (the bytes after the length).
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, FrameError> {
    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    // The version first, so a newer peer hears why, not a shape error.
    let version: Version = serde_json::from_slice(body).map_err(FrameError::Json)?;
    if version.v != VERSION {
        return Err(FrameError::Version(version.v));
    }
    let envelope: Envelope<T> = serde_json::from_slice(body).map_err(FrameError::Json)?;
    Ok(envelope.body)
}

/// Writes one frame.
pub fn write<T: Serialize>(w: &mut impl Write, message: &T) -> Result<(), FrameError> {
    w.write_all(&encode(message)).map_err(FrameError::Io)
}

/// Reads one frame; `None` when the connection ended cleanly before it.
pub fn read<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    decode(&body).map(Some)
}

/// Sends `request` and reads its answer.
pub fn call(conn: &mut (impl Read + Write), request: &Request) -> Result<Response, FrameError> {
    write(conn, request)?;
    read(conn)?.ok_or(FrameError::Truncated)
}

#[cfg(test)]
mod tests;
