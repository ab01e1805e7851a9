//! The guest agent: husk's host side reaches it on vsock port
//! [`agent::PORT`] and speaks the `agent` crate's protocol.
//!
//! One thread accepts; each connection gets a thread that answers its
//! requests in order, and becomes a byte pump once it is attached to a
//! process's stream. Processes started here are children of init; init's
//! main loop reaps them ([`Agent::reaped`]) and their status stays in the
//! table until a `Wait` collects it. Nothing here may panic (init is PID
//! 1, and husk-init is built with `panic = "abort"`): every failure is an
//! answer or a closed connection, and a connection that sends garbage
//! is answered and closed, while the agent goes on.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use agent::{ErrorKind, ExitStatus, GuestInfo, Request, Response, Stream, MAIN};
use husk_init::config::RunConfig;

use crate::{cgroup, container, pidns, sys};

mod copy;
mod start;

/// Processes kept at once (running, or ended and not yet waited for).
const MAX_PROCESSES: usize = 1024;
/// Connections served at once.
const MAX_CONNECTIONS: usize = 256;

/// The appliance's command, as the agent sees it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Main {
    Starting,
    /// Booted with `--hold`: waits for [`Request::StartMain`].
    Held,
    Running,
    /// It never started; init reports this status.
    Failed(u8),
}

struct Proc {
    pid: libc::pid_t,
    status: Option<ExitStatus>,
    stdin: Option<File>,
    stdout: Option<File>,
    stderr: Option<File>,
    /// The terminal's master, kept for resizes.
    tty: Option<File>,
    tty_attached: bool,
    /// The connection pumping into stdin, shut to close stdin early.
    stdin_conn: Option<UnixStream>,
    /// The cgroup of the container this process is the first of, ended
    /// with it.
    cgroup: Option<PathBuf>,
    /// Nobody waits for it: forgotten when it ends.
    detached: bool,
}

/// A new container's cgroup, removed when dropped before [`keep`] (its
/// process did not start).
///
/// [`keep`]: NewCgroup::keep
struct NewCgroup(Option<PathBuf>);

impl NewCgroup {
    fn keep(mut self) -> Option<PathBuf> {
        self.0.take()
    }
}

impl Drop for NewCgroup {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            cgroup::end(&path);
        }
    }
}

impl Proc {
    fn new(pid: libc::pid_t) -> Self {
        Proc {
            pid,
            status: None,
            stdin: None,
            stdout: None,
            stderr: None,
            tty: None,
            tty_attached: false,
            stdin_conn: None,
            cgroup: None,
            detached: false,
        }
    }
}

struct Table {
    main: Main,
    next_id: u32,
    procs: HashMap<u32, Proc>,
    /// Cgroups of ended containers, removed once what was left in them
    /// has been killed and has ended.
    ending: Vec<PathBuf>,
}

pub struct Agent {
    table: Mutex<Table>,
    changed: Condvar,
    /// What an exec'd process inherits: the appliance's configuration
    /// under this run's overrides, set once init has read them.
    config: OnceLock<RunConfig>,
    connections: AtomicUsize,
    /// Whether [`Agent::bind`] has run.
    bound: AtomicBool,
}

/// A connection's answer, or why it ends.
type Answer = Result<Response, (ErrorKind, String)>;

fn error(kind: ErrorKind, message: impl Into<String>) -> (ErrorKind, String) {
    (kind, message.into())
}

impl Agent {
    pub fn new() -> Arc<Self> {
        Arc::new(Agent {
            table: Mutex::new(Table {
                main: Main::Starting,
                next_id: MAIN + 1,
                procs: HashMap::new(),
                ending: Vec::new(),
            }),
            changed: Condvar::new(),
            config: OnceLock::new(),
            connections: AtomicUsize::new(0),
            bound: AtomicBool::new(false),
        })
    }

    /// Gives the agent the run's configuration and serves: it takes
    /// connections (and says it listens) from now on.
    pub fn serve(self: &Arc<Self>, config: RunConfig) {
        self.configure(config);
        self.bind();
    }

    fn configure(&self, config: RunConfig) {
        let _table = self.lock();
        let _ = self.config.set(config);
        self.changed.notify_all();
    }

    /// The run's configuration, waited for (the accept loop waits, so a
    /// connection's requests find it set).
    fn config(&self) -> &RunConfig {
        if let Some(config) = self.config.get() {
            return config;
        }
        let mut table = self.lock();
        loop {
            if let Some(config) = self.config.get() {
                return config;
            }
            table = self.changed.wait(table).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A poisoned lock cannot happen (panics abort); take it anyway.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds the agent's vsock port and starts its thread, which listens
    /// once [`Agent::serve`] gave the configuration and serves each
    /// connection on a thread of its own. A second call does nothing.
    /// Called before a snapshot point, a restored VM has the socket and the
    /// thread already, and makes neither on the way to its command; it
    /// takes no connection before the snapshot, so none is open in it.
    /// Without a vsock device there is nobody to serve: says so quietly
    /// and returns.
    pub fn bind(self: &Arc<Self>) {
        if self.bound.swap(true, Ordering::Relaxed) {
            return;
        }
        let listener = match sys::vsock_bind(agent::PORT) {
            Ok(l) => l,
            Err(_) => return,
        };
        let agent = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("agent".into())
            .spawn(move || agent.accept_loop(listener));
        if let Err(e) = spawned {
            crate::say(&format!("agent: cannot start: {e}"));
        }
    }

    fn accept_loop(self: Arc<Self>, listener: OwnedFd) {
        self.config();
        if let Err(e) = sys::listen(&listener) {
            crate::say(&format!("agent: cannot listen: {e}"));
            return;
        }
        // Listening: tell a host that waits for it (connections queue
        // meanwhile). Refused at once where nobody listens.
        if let Ok(fd) = sys::vsock_connect(libc::VMADDR_CID_HOST, agent::ANNOUNCE_PORT) {
            let _ = agent::write(&mut UnixStream::from(fd), &Response::Pong);
        }
        loop {
            let conn = match sys::accept(&listener) {
                Ok(c) => UnixStream::from(c),
                Err(e) => {
                    crate::say(&format!("agent: accept: {e}"));
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if self.connections.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
                self.connections.fetch_sub(1, Ordering::Relaxed);
                let mut conn = conn;
                let _ = agent::write(
                    &mut conn,
                    &Response::Error {
                        kind: ErrorKind::Busy,
                        message: format!("more than {MAX_CONNECTIONS} connections"),
                    },
                );
                continue;
            }
            let agent = Arc::clone(&self);
            let spawned = std::thread::Builder::new()
                .name("agent-conn".into())
                .spawn(move || {
                    agent.connection(conn);
                    agent.connections.fetch_sub(1, Ordering::Relaxed);
                });
            if spawned.is_err() {
                self.connections.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// One connection: requests and answers until it ends, is attached
    /// or says something that is not a request.
    fn connection(self: &Arc<Self>, mut conn: UnixStream) {
        loop {
            let request = match agent::read::<Request>(&mut conn) {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(agent::FrameError::Io(_) | agent::FrameError::Truncated) => return,
                Err(e) => {
                    let kind = match e {
                        agent::FrameError::Version(_) => ErrorKind::Version,
                        _ => ErrorKind::BadRequest,
                    };
                    let _ = agent::write(
                        &mut conn,
                        &Response::Error {
                            kind,
                            message: e.to_string(),
                        },
                    );
                    return;
                }
            };
            match request {
                Request::CopyOut { path, contents } => return copy::out(conn, &path, contents),
                Request::CopyIn {
                    path,
                    contents,
                    owners,
                } => return copy::into(conn, &path, contents, owners),
                _ => {}
            }
            if let Request::Attach { id, stream } = request {
                // A refused attach leaves the connection for requests.
                match self.attach(conn, id, stream) {
                    Some(c) => {
                        conn = c;
                        continue;
                    }
                    None => return,
                }
            }
            let answer = self.answer(request);
            let response =
                answer.unwrap_or_else(|(kind, message)| Response::Error { kind, message });
            if agent::write(&mut conn, &response).is_err() {
                return;
            }
        }
    }

    fn answer(self: &Arc<Self>, request: Request) -> Answer {
        match request {
            Request::Ping => Ok(Response::Pong),
            Request::MainStarted => self.main_started(),
            Request::Start { process } => self.start(&process, false),
            Request::StartMain { process } => self.start_main(&process),
            Request::Attach { .. } | Request::CopyOut { .. } | Request::CopyIn { .. } => {
                Err(error(
                    ErrorKind::BadRequest,
                    "attach and copies are answered on a connection of their own",
                ))
            }
            Request::Signal { id, signal } => {
                let pid = self.running_pid(id)?;
                sys::signal(pid, signal)
                    .map(|_| Response::Ok)
                    .map_err(|e| error(ErrorKind::Failed, format!("signal {signal}: {e}")))
            }
            Request::Wait { id } => self.wait(id),
            Request::CloseStdin { id } => {
                let mut table = self.lock();
                let p = table.procs.get_mut(&id).ok_or_else(|| no_such(id))?;
                p.stdin = None;
                if let Some(c) = p.stdin_conn.take() {
                    // The pump sees the end of its input and closes the pipe.
                    let _ = c.shutdown(Shutdown::Read);
                }
                Ok(Response::Ok)
            }
            Request::Resize { id, size } => {
                let table = self.lock();
                let p = table.procs.get(&id).ok_or_else(|| no_such(id))?;
                let tty = p.tty.as_ref().ok_or_else(|| {
                    error(ErrorKind::NotAttachable, "the process has no terminal")
                })?;
                sys::set_window_size(tty, size.rows, size.cols)
                    .map(|_| Response::Ok)
                    .map_err(|e| error(ErrorKind::Failed, format!("resize: {e}")))
            }
            Request::Info => Ok(Response::Info(self.info())),
            Request::Usage => Ok(Response::Usage(crate::usage::now())),
            Request::Processes => {
                let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
                Ok(Response::Processes {
                    processes: crate::usage::process_list(&passwd),
                })
            }
            Request::SetTime { secs, nanos } => sys::set_clock(secs, nanos)
                .map(|_| Response::Ok)
                .map_err(|e| error(ErrorKind::Failed, format!("set the clock: {e}"))),
            Request::Reseed { seed } => {
                sys::reseed(&seed).map_err(|e| error(ErrorKind::Failed, format!("reseed: {e}")))?;
                // On the console (the appliance's log): a restored guest
                // says it no longer runs on its snapshot's random state.
                crate::say("agent: the random generator is reseeded with the host's bytes");
                // The reseed is a restore's first request: the network
                // hears of the guest before anyone connects to it.
                crate::net::announce(|m| crate::say(&format!("agent: {m}")));
                Ok(Response::Ok)
            }
            Request::PlugInterface {
                device,
                network,
                address,
                prefix,
                address6,
            } => {
                let name =
                    crate::net::plug(device, &network, (address, prefix), address6, crate::say)
                        .map_err(|e| error(ErrorKind::Failed, format!("network {network}: {e}")))?;
                let v6 = address6
                    .map(|(a, p)| format!(" and {a}/{p}"))
                    .unwrap_or_default();
                crate::say(&format!(
                    "agent: {name} is on network {network} at {address}/{prefix}{v6}"
                ));
                Ok(Response::Ok)
            }
            Request::UnplugInterface { device } => crate::net::unplug(device, crate::say)
                .map(|()| Response::Ok)
                .map_err(|e| error(ErrorKind::Failed, format!("virtio-mmio.{device}: {e}"))),
            Request::ProbeTcp { port } => {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                    .map(|_| Response::Ok)
                    .map_err(|e| error(ErrorKind::Failed, format!("127.0.0.1:{port}: {e}")))
            }
            Request::Stats { id } => {
                let path = self.cgroup_of(id)?;
                cgroup::stats(&path)
                    .map(Response::Stats)
                    .map_err(|e| error(ErrorKind::Failed, format!("cgroup figures: {e}")))
            }
            Request::Update { id, resources } => {
                let path = self.cgroup_of(id)?;
                cgroup::set(&path, &resources)
                    .map(|_| Response::Ok)
                    .map_err(|e| error(ErrorKind::Failed, format!("cgroup limits: {e}")))
            }
            Request::Freeze { id, frozen } => {
                let path = self.cgroup_of(id)?;
                cgroup::freeze(&path, frozen)
                    .map(|_| Response::Ok)
                    .map_err(|e| error(ErrorKind::Failed, format!("process {id}: {e}")))
            }
            Request::Shutdown { grace_ms, signal } => {
                let signal = signal.or(self.config().stop_signal);
                self.shutdown(
                    Duration::from_millis(grace_ms),
                    signal.unwrap_or(libc::SIGTERM),
                )
            }
        }
    }

    fn main_started(&self) -> Answer {
        let mut table = self.lock();
        loop {
            match table.main {
                Main::Starting | Main::Held => {
                    table = self.changed.wait(table).unwrap_or_else(|e| e.into_inner());
                }
                Main::Failed(status) => {
                    return Ok(Response::Exited {
                        status: ExitStatus::Code(status.into()),
                    })
                }
                Main::Running => {
                    let p = table.procs.get(&MAIN).ok_or_else(|| no_such(MAIN))?;
                    return Ok(match p.status {
                        Some(status) => Response::Exited { status },
                        None => Response::Started {
                            id: MAIN,
                            pid: p.pid,
                        },
                    });
                }
            }
        }
    }

    fn running_pid(&self, id: u32) -> Result<libc::pid_t, (ErrorKind, String)> {
        let table = self.lock();
        let p = table.procs.get(&id).ok_or_else(|| no_such(id))?;
        match p.status {
            None => Ok(p.pid),
            Some(_) => Err(error(
                ErrorKind::NoSuchProcess,
                format!("process {id} has ended"),
            )),
        }
    }

    /// What a process started beside the appliance's command enters:
    /// nothing while the command has no cgroup of its own; its cgroup
    /// when it has ([`Process::cgroup`]); and its mount and PID
    /// namespaces when it has those too, as `runc exec` joins a container.
    fn command_entry(&self) -> io::Result<(Option<container::Entry>, PidNs)> {
        let Ok(pid) = self.running_pid(MAIN) else {
            return Ok((None, PidNs::Guest));
        };
        let Ok(procs) = cgroup::procs_of(pid) else {
            return Ok((None, PidNs::Guest));
        };
        if !pidns::own_pid_ns(pid)? {
            return Ok((Some(container::Entry::here(procs, false)), PidNs::Guest));
        }
        let entry = container::join(pid)?.in_cgroup(procs);
        Ok((Some(entry), PidNs::Join(pidns::pid_ns_of(pid)?)))
    }

    /// The cgroup of the container process `id` runs in.
    fn cgroup_of(&self, id: u32) -> Result<PathBuf, (ErrorKind, String)> {
        let pid = self.running_pid(id)?;
        cgroup::path_of(pid).map_err(|e| error(ErrorKind::Failed, format!("process {id}: {e}")))
    }

    fn wait(&self, id: u32) -> Answer {
        let mut table = self.lock();
        loop {
            let p = table.procs.get(&id).ok_or_else(|| no_such(id))?;
            if let Some(status) = p.status {
                if id != MAIN {
                    table.procs.remove(&id);
                }
                return Ok(Response::Exited { status });
            }
            table = self.changed.wait(table).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn info(&self) -> GuestInfo {
        let uptime_ms = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0, |s| (s * 1000.0) as u64);
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        GuestInfo {
            hostname,
            uptime_ms,
            addresses: sys::addresses(),
            processes: self.lock().procs.len() as u32,
        }
    }

    /// `signal` to the appliance's command now, SIGKILL after `grace`
    /// unless it ended; init does the rest when it ends.
    fn shutdown(self: &Arc<Self>, grace: Duration, signal: i32) -> Answer {
        {
            let mut table = self.lock();
            if table.main == Main::Held {
                // Nothing to stop: init ends the guest.
                table.main = Main::Failed(0);
                drop(table);
                self.wake_init();
                return Ok(Response::Ok);
            }
        }
        let pid = self.running_pid(MAIN)?;
        let _ = sys::signal(pid, signal);
        let deadline = Instant::now() + grace;
        let watch = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("agent-stop".into())
            .spawn(move || {
                let mut table = watch.lock();
                loop {
                    let ended = table.procs.get(&MAIN).is_none_or(|p| p.status.is_some());
                    let now = Instant::now();
                    if ended {
                        return;
                    }
                    if now >= deadline {
                        let _ = sys::signal(pid, libc::SIGKILL);
                        return;
                    }
                    table = watch
                        .changed
                        .wait_timeout(table, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            });
        match spawned {
            Ok(_) => Ok(Response::Ok),
            Err(e) => {
                let _ = sys::signal(pid, libc::SIGKILL);
                Err(error(
                    ErrorKind::Failed,
                    format!("grace timer: {e}; killed"),
                ))
            }
        }
    }

    /// Makes `conn` the stream of process `id`, and pumps it; gives the
    /// connection back when the stream cannot be attached.
    fn attach(&self, mut conn: UnixStream, id: u32, stream: Stream) -> Option<UnixStream> {
        let ends = {
            let mut table = self.lock();
            match table.procs.get_mut(&id) {
                None => Err(no_such(id)),
                Some(p) => take_stream(p, stream, &conn),
            }
        };
        let (output, input) = match ends {
            Ok(ends) => ends,
            Err((kind, message)) => {
                let sent = agent::write(&mut conn, &Response::Error { kind, message });
                return sent.is_ok().then_some(conn);
            }
        };
        if agent::write(&mut conn, &Response::Ok).is_err() {
            return None;
        }
        match (output, input) {
            (Some(mut out), None) => {
                let _ = pump(&mut out, &mut conn);
                let _ = conn.shutdown(Shutdown::Write);
            }
            (None, Some(mut pipe)) => {
                let _ = pump(&mut conn, &mut pipe);
            }
            (Some(mut out), Some(mut tty_in)) => {
                if let Ok(mut from_host) = conn.try_clone() {
                    let _ = std::thread::Builder::new()
                        .name("agent-tty".into())
                        .spawn(move || {
                            let _ = pump(&mut from_host, &mut tty_in);
                        });
                }
                // The terminal reads EIO once no process holds it open.
                let _ = pump(&mut out, &mut conn);
                let _ = conn.shutdown(Shutdown::Both);
            }
            (None, None) => {}
        }
        None
    }

    /// Registers the appliance's command: its pid once spawned, or the
    /// status init reports because it could not start.
    pub fn main_spawned(&self, spawned: Result<libc::pid_t, u8>) {
        let mut table = self.lock();
        match spawned {
            Ok(pid) => {
                table.procs.insert(MAIN, Proc::new(pid));
                table.main = Main::Running;
            }
            Err(status) => table.main = Main::Failed(status),
        }
        self.changed.notify_all();
    }

    /// Boots to hold the command: it comes through [`Request::StartMain`].
    pub fn hold_main(&self) {
        self.lock().main = Main::Held;
    }

    /// The command's pid, once it runs.
    pub fn main_pid(&self) -> Option<libc::pid_t> {
        let table = self.lock();
        match table.main {
            Main::Running => table.procs.get(&MAIN).map(|p| p.pid),
            _ => None,
        }
    }

    /// How the command ended, as a shell reports it: its status once
    /// reaped, or the status of a command that never started.
    pub fn main_status(&self) -> Option<u8> {
        let table = self.lock();
        match table.main {
            Main::Failed(status) => Some(status),
            Main::Running => table.procs.get(&MAIN)?.status.map(ExitStatus::shell_code),
            Main::Starting | Main::Held => None,
        }
    }

    /// Runs `spawn` under the table's lock (see [`Agent::start`]).
    pub fn spawning<T>(&self, spawn: impl FnOnce() -> T) -> T {
        let _table = self.lock();
        spawn()
    }

    /// Reaps every ended child, keeping the statuses of the agent's
    /// processes (the command's among them: [`Agent::main_status`]).
    pub fn reap(&self) {
        let mut table = self.lock();
        let Table { procs, ending, .. } = &mut *table;
        sys::reap(|pid, raw| {
            if let Some(p) = procs
                .values_mut()
                .find(|p| p.pid == pid && p.status.is_none())
            {
                let status = std::process::ExitStatus::from_raw(raw);
                p.status = Some(match (status.code(), status.signal()) {
                    (Some(code), _) => ExitStatus::Code(code),
                    (None, Some(signal)) => ExitStatus::Signal(signal),
                    _ => ExitStatus::Code(crate::STATUS_SETUP_FAILED.into()),
                });
                ending.extend(p.cgroup.take());
            }
        });
        procs.retain(|_, p| !(p.detached && p.status.is_some()));
        // Each pass kills what is left and removes what is empty; the
        // killed processes' ends bring the next pass.
        ending.retain(|path| !cgroup::end(path));
        self.changed.notify_all();
    }
}

/// The host ends of `stream` of `p`: (what the process writes, what it reads).
#[allow(clippy::type_complexity)]
fn take_stream(
    p: &mut Proc,
    stream: Stream,
    conn: &UnixStream,
) -> Result<(Option<File>, Option<File>), (ErrorKind, String)> {
    let taken = |what: &str| {
        error(
            ErrorKind::NotAttachable,
            format!("{what}: already attached, or the process has none"),
        )
    };
    match stream {
        Stream::Stdout => Ok((Some(p.stdout.take().ok_or_else(|| taken("stdout"))?), None)),
        Stream::Stderr => Ok((Some(p.stderr.take().ok_or_else(|| taken("stderr"))?), None)),
        Stream::Stdin => {
            let pipe = p.stdin.take().ok_or_else(|| taken("stdin"))?;
            p.stdin_conn = conn.try_clone().ok();
            Ok((None, Some(pipe)))
        }
        Stream::Tty => {
            let master = p
                .tty
                .as_ref()
                .filter(|_| !p.tty_attached)
                .ok_or_else(|| taken("tty"))?;
            let io = |e: io::Error| error(ErrorKind::Failed, format!("tty: {e}"));
            let ends = (
                master.try_clone().map_err(io)?,
                master.try_clone().map_err(io)?,
            );
            p.tty_attached = true;
            Ok((Some(ends.0), Some(ends.1)))
        }
    }
}

/// Copies until the end of `from` or any error (a terminal's master
/// reads EIO, not the end, once the other side is closed), each read
/// passed on at once. Not `io::copy`: between a socket and a pipe it
/// splices, and a vsock socket's splice waits for more than a keystroke.
fn pump(from: &mut impl Read, to: &mut impl Write) -> io::Result<()> {
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
    }
}

/// Where a process is born, of PID namespaces.
enum PidNs {
    Guest,
    New,
    Join(OwnedFd),
}

fn no_such(id: u32) -> (ErrorKind, String) {
    error(ErrorKind::NoSuchProcess, format!("no process {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_is_waited_for_until_it_is_given() {
        let agent = Agent::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = Arc::clone(&agent);
        let waiter = std::thread::spawn(move || {
            let config = waiting.config().clone();
            tx.send(config).unwrap();
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "the configuration was read before it was given"
        );
        let config = RunConfig {
            command: vec!["/bin/true".into()],
            ..RunConfig::default()
        };
        agent.configure(config.clone());
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), config);
        waiter.join().unwrap();
        // Given once: a later read does not wait.
        assert_eq!(agent.config(), &config);
    }
}
