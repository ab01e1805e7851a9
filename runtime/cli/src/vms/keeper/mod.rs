//! The keeper: the process that owns one detached VM.
//!
//! `husk run -d` starts it (the same command line, in a session of its
//! own) and waits for its word on a pipe. The keeper starts the VM as a
//! foreground `husk run` child (so the jail, passt and the vsock broker
//! are exactly what a foreground run gets), writes the child's console
//! to the rotated log, waits for the guest agent to say the appliance's
//! command started (and for the readiness check, when asked), says
//! `ready`, then serves the control socket until the VM ends, records
//! the exit status and leaves. The VM child dies with the keeper
//! (`PR_SET_PDEATHSIG`): a killed keeper leaves no VM behind, and `ps`
//! shows it exited.

use std::io::{self, BufRead, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::log::{Limits, LogWriter};
use super::{now_ms, process_alive, process_start, restart, State, Status, VmDir};
use crate::commands::exec::block_sigwinch;
use crate::commands::run::named::SNAPSHOT_FD_ENV;

mod attach;
mod check;
mod gate;
mod serve;
pub use check::{Check, HealthCheck, OnFailure};
use serve::serve;

/// Set in the keeper's environment: the VM's folder.
pub const KEEPER_ENV: &str = "HUSK_KEEPER_DIR";
/// Set in the VM child's environment: the VM's folder (its vsock socket).
pub const VM_ENV: &str = "HUSK_VM_DIR";
/// The line the keeper prints once the appliance is up; anything else it
/// prints before is an error for the user.
pub const READY: &str = "husk-keeper: ready";
/// The line the keeper prints when the VM ended before it was ready.
pub const EXITED: &str = "husk-keeper: exited";
/// Set in the keeper's environment by a caller whose standard streams are
/// the held command's (husk-runtime: those podman or containerd gave it):
/// the descriptor the keeper says its word on. The keeper then leaves its
/// stdin, stdout and stderr as they are, and relays the command's streams
/// to them once it starts.
pub const WORD_FD_ENV: &str = "HUSK_KEEPER_WORD_FD";

/// Set in a restarted keeper's environment (the keeper runs itself
/// again): the delay it waited, in milliseconds, which the next doubles.
const RESTART_DELAY_ENV: &str = "HUSK_KEEPER_RESTART_DELAY_MS";

/// How long the keeper waits for the guest agent after the VM started.
const AGENT_BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// An agent request's answer, when the guest is up.
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The VM's end, shared between the keeper's threads.
struct Shared {
    vm: VmDir,
    uds: PathBuf,
    /// The VM child as a pidfd: a signal through it can only reach that
    /// process, even once it is reaped and its pid reused.
    child: std::os::fd::OwnedFd,
    /// `Some(code)` once the VM child ended (`None` inside: no status).
    exit: Mutex<Option<Option<u8>>>,
    ended: Condvar,
    /// Control requests come in through it; the keeper closes it before
    /// it leaves or runs itself again, so a `stop` or `wait` hears how
    /// the VM ended, and a stop that was answered is heeded.
    gate: gate::Gate,
    /// The guest holds its command until a [`Request::Start`].
    held: Mutex<bool>,
    /// The threads copying the command's output to the keeper's stdout
    /// and stderr: joined before the keeper leaves, so nothing is lost.
    relays: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Our end of the VM child's snapshot request socket; one snapshot at
    /// a time.
    snapshots: Mutex<std::os::unix::net::UnixDatagram>,
    /// `husk stop` (or a `husk kill` that ends it) came: the restart
    /// policy no longer applies.
    stopped: std::sync::atomic::AtomicBool,
    /// `husk pause` stopped the vCPUs: the guest agent cannot answer.
    /// Changed with `snapshots` held.
    paused: std::sync::atomic::AtomicBool,
    /// The health check stopped the VM to start it again
    /// (`--health-on-failure restart`), whatever the restart policy.
    health_restart: std::sync::atomic::AtomicBool,
    /// With `-i`: the console's input.
    input: Mutex<Option<io::PipeWriter>>,
    /// The `husk attach` connections the console's output goes to; `None`
    /// once the output ended.
    attached: Mutex<Option<Vec<attach::Client>>>,
    /// The networks connected while the VM runs, each in a slot of its.
    connected: Mutex<Vec<serve::Connected>>,
}

impl Shared {
    fn wait_exit(&self, timeout: Option<Duration>) -> Option<Option<u8>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut exit = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(code) = *exit {
                return Some(code);
            }
            match deadline {
                None => exit = self.ended.wait(exit).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    exit = self
                        .ended
                        .wait_timeout(exit, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    /// Takes no more control requests, and waits (a few seconds at
    /// most: once the VM ended, each is answered at once) for those being
    /// answered.
    fn drain(&self) {
        if !self.gate.close(Duration::from_secs(5)) {
            tracing::warn!("a control request was still being answered as the keeper went on");
        }
    }

    fn has_ended(&self) -> bool {
        self.exit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// A new connection to the guest agent.
    fn agent(&self) -> anyhow::Result<UnixStream> {
        if self.has_ended() {
            anyhow::bail!("{} has stopped", self.vm.name);
        }
        if self.paused.load(std::sync::atomic::Ordering::SeqCst) {
            let name = &self.vm.name;
            anyhow::bail!("{name} is paused (husk unpause {name})");
        }
        let conn = vmm::vsock::connect_guest(&self.uds, agent::PORT, AGENT_TIMEOUT)
            .with_context(|| format!("cannot reach {}'s guest agent", self.vm.name))?;
        conn.set_read_timeout(Some(AGENT_TIMEOUT))?;
        Ok(conn)
    }

    /// One agent request on a connection of its own.
    fn agent_call(&self, request: &agent::Request) -> anyhow::Result<agent::Response> {
        let mut conn = self.agent()?;
        match agent::call(&mut conn, request)? {
            agent::Response::Error { message, .. } => Err(anyhow::anyhow!("{message}")),
            r => Ok(r),
        }
    }

    /// Changes `state.json` while the VM runs (a later change of another
    /// thread is not lost); once it ended, the keeper's own record of the
    /// end stands, and this changes nothing.
    fn update_state(&self, change: impl FnOnce(&mut State)) {
        let Ok(_held) = self.vm.lock_state() else {
            return;
        };
        if self.has_ended() {
            return;
        }
        if let Ok(mut state) = self.vm.read_state() {
            change(&mut state);
            let _ = self.vm.write_state(&state);
        }
    }

    /// Writes the keeper's own record whole, but for what `husk update`
    /// may have changed meanwhile (the restart policy and the recorded
    /// command line), which stays as the file has it.
    fn write_state(&self, state: &State) {
        let Ok(_held) = self.vm.lock_state() else {
            return;
        };
        let mut state = state.clone();
        if let Ok(now) = self.vm.read_state() {
            state.restart = now.restart;
            state.args = now.args;
        }
        let _ = self.vm.write_state(&state);
    }

    /// The recorded command line, as `husk update` may have changed it.
    fn recorded_args(&self) -> Option<Vec<String>> {
        let _held = self.vm.lock_state().ok()?;
        self.vm.read_state().ok().map(|s| s.args)
    }

    /// The VM child, ended at once; what the jail leaves is swept.
    fn kill_vm(&self) {
        let _ = kill_pidfd(&self.child);
    }
}

/// The keeper's life: never returns an error to a caller who is gone;
/// errors before `ready` go to the `husk run -d` that waits on stdout.
/// How the keeper keeps its VM, besides what it runs.
pub struct Options {
    /// Wait for this check (and at most so long) before saying ready.
    pub ready: Option<(Check, Duration)>,
    /// Run this health check while the VM runs.
    pub health: Option<HealthCheck>,
    /// What `husk stop` waits by default (state.json keeps it).
    pub stop_timeout: Option<u32>,
    /// Set in the environment of the VM child and of the keeper's own
    /// restarts: what the keeper chose for this run and they must share.
    pub env: Vec<(&'static str, String)>,
    /// The named volumes it shares (state.json keeps them: `husk volume
    /// rm` refuses those an appliance that was not removed uses).
    pub volumes: Vec<String>,
    /// The husk networks it is on (likewise for `husk network rm`).
    pub networks: Vec<String>,
    /// Its `--label`s.
    pub labels: std::collections::BTreeMap<String, String>,
    /// What its init runs (the image's run configuration under the run's
    /// flags).
    pub config: Option<husk_init::config::RunConfig>,
    /// `--rm`: the VM's folder goes when it ends.
    pub remove_at_end: bool,
    /// The command waits for husk-runtime's start.
    pub hold: bool,
    pub restart: restart::Policy,
    /// `-i`: the console's input stays open for `husk attach`.
    pub stdin: bool,
    /// How much of the console log is kept (`--log-opt`); `None`: none
    /// (`--log-driver none`).
    pub log: Option<Limits>,
}

pub fn keep(
    vm: VmDir,
    uds: PathBuf,
    image: String,
    ports: Vec<String>,
    options: Options,
) -> anyhow::Result<u8> {
    let Options {
        ready,
        health,
        stop_timeout,
        env,
        volumes,
        networks,
        labels,
        config,
        remove_at_end,
        hold,
        restart,
        stdin,
        log: log_limits,
    } = options;
    // Everything the keeper makes is the user's alone.
    // SAFETY: umask(2) cannot fail.
    unsafe { libc::umask(0o077) };
    // The waiting `husk run -d` may be gone (interrupted): its pipe's
    // end is then EPIPE, not a signal.
    // SAFETY: ignoring SIGPIPE has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // First: it blocks SIGWINCH before any thread starts.
    let word_fd = word_fd();
    let me = std::process::id();
    // One keeper per VM: the state is checked and this keeper's record
    // written under the lock every starter and changer of it takes.
    let held = vm.lock_state()?;
    let previous = vm.read_state().ok();
    if let Some(p) = previous.as_ref().filter(|p| {
        p.keeper_pid != me
            && p.status != Status::Exited
            && process_alive(p.keeper_pid, p.keeper_start)
    }) {
        anyhow::bail!(
            "{} is running already (its keeper, pid {}, started meanwhile)",
            vm.name,
            p.keeper_pid
        );
    }
    // Run again by its own restart policy: it counts on.
    let restart_count = previous
        .as_ref()
        .filter(|s| s.status == Status::Restarting)
        .map_or(0, |s| s.restart_count);
    let mut state = State {
        name: vm.name.clone(),
        image,
        args: std::env::args().skip(1).collect(),
        cwd: std::env::current_dir().ok(),
        ports,
        // Started again (husk start): still created when it first was.
        created_ms: previous.map_or_else(now_ms, |s| s.created_ms),
        status: Status::Starting,
        started_ms: None,
        finished_ms: None,
        exit_code: None,
        keeper_pid: me,
        keeper_start: process_start(me).context("cannot read this process's start time")?,
        restart: restart.recorded(),
        restart_count,
        paused: false,
        health: None,
        stop_timeout,
        volumes,
        networks,
        labels,
        stopped: false,
        config,
    };
    vm.write_state(&state)
        .with_context(|| format!("cannot write {}", vm.state_file().display()))?;
    drop(held);
    // A keeper that was killed left its socket: this folder is ours now
    // (the VM is new, or was found exited), so it goes.
    let _ = std::fs::remove_file(vm.control());
    let listener = UnixListener::bind(vm.control())
        .with_context(|| format!("cannot bind {}", vm.control().display()))?;
    // Where the guest agent's announcement arrives (hybrid vsock: the
    // guest's connection to host port P reaches `<uds>_P`).
    let announce_path = announce_socket(&uds);
    let _ = std::fs::remove_file(&announce_path);
    let announce = UnixListener::bind(&announce_path)
        .with_context(|| format!("cannot bind {}", announce_path.display()))?;
    announce.set_nonblocking(true)?;

    let (log_r, log_w) = io::pipe().context("pipe")?;
    // With -i, the console's input: `husk attach` writes to it.
    let (input_r, input) = match stdin {
        true => {
            let (r, w) = io::pipe().context("pipe")?;
            (Stdio::from(r), Some(w))
        }
        false => (Stdio::null(), None),
    };
    // Snapshots on request: the VM child's VMM takes its end.
    let (snapshots, vm_end) = vmm::snapshot::request_pair().context("socketpair")?;
    let vm_fd = std::os::fd::AsRawFd::as_raw_fd(&vm_end);
    let exe = std::env::current_exe().context("cannot locate the husk binary")?;
    let mut command = Command::new(exe);
    command
        .args(std::env::args_os().skip(1))
        .env_remove(KEEPER_ENV)
        .env(VM_ENV, &vm.dir)
        .env(SNAPSHOT_FD_ENV, vm_fd.to_string())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(input_r)
        .stdout(log_w.try_clone().context("pipe")?)
        .stderr(log_w);
    // SAFETY: prctl and fcntl in the forked child only set its
    // parent-death signal and let the socket's end (open in this process
    // until after the spawn) through exec: async-signal-safe system calls.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                || libc::fcntl(vm_fd, libc::F_SETFD, 0) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().context("cannot start the VM")?;
    // The command builder holds the pipe's write ends: gone with it, so
    // the log sees the end of the pipe when the VM child is gone.
    drop(command);
    drop(vm_end);
    let shared = Arc::new(Shared {
        vm: vm.clone(),
        uds,
        child: pidfd(child.id()).context("pidfd_open of the VM")?,
        exit: Mutex::new(None),
        ended: Condvar::new(),
        gate: gate::Gate::default(),
        held: Mutex::new(hold),
        relays: Mutex::new(Vec::new()),
        snapshots: Mutex::new(snapshots),
        stopped: std::sync::atomic::AtomicBool::new(false),
        paused: std::sync::atomic::AtomicBool::new(false),
        health_restart: std::sync::atomic::AtomicBool::new(false),
        input: Mutex::new(input),
        attached: Mutex::new(Some(Vec::new())),
        connected: Mutex::new(Vec::new()),
    });
    let log = match log_limits {
        Some(limits) => LogWriter::create(&vm.log(), limits)
            .with_context(|| format!("cannot create {}", vm.log().display()))?,
        None => LogWriter::none(&vm.log()),
    };
    let pump = std::thread::Builder::new().name("log".into()).spawn({
        let shared = Arc::clone(&shared);
        move || pump_log(log_r, log, &shared)
    })?;
    let waiter = Arc::clone(&shared);
    std::thread::Builder::new()
        .name("wait".into())
        .spawn(move || wait_child(child, &waiter))?;
    let server = Arc::clone(&shared);
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || serve(listener, &server))?;

    // The word goes to `husk run -d` on stdout, or where WORD_FD_ENV says.
    let mut stdout: Box<dyn Write> = match &word_fd {
        Some(fd) => Box::new(std::fs::File::from(fd.try_clone()?)),
        None => Box::new(io::stdout()),
    };
    // Whether the command ran (its restart policy applies to how it ended).
    let mut ran = false;
    let mut progress = Progress::Booting;
    match until_ready(&shared, &announce, ready, hold, &mut progress) {
        Ok(()) => {
            ran = !hold;
            if hold {
                state.status = Status::Created;
            } else {
                state.status = Status::Running;
                state.started_ms = Some(now_ms());
            }
            shared.write_state(&state);
            if let (Some(health), false) = (health, hold) {
                let watcher = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name("health".into())
                    .spawn(move || check::watch_health(watcher, health))?;
            }
            let _ = writeln!(stdout, "{READY}");
        }
        Err(e) => {
            // A command that ended at once powers its guest off itself.
            if progress == Progress::Ended {
                shared.wait_exit(Some(Duration::from_secs(10)));
            }
            if shared.has_ended() {
                ran = progress != Progress::Booting;
                if ran && restart != restart::Policy::No {
                    let _ = writeln!(
                        stdout,
                        "husk: {e:#}; its restart policy ({restart}) may start it again \
                         (husk stop {} ends that)",
                        vm.name
                    );
                }
            } else {
                let _ = writeln!(stdout, "husk: {e:#}; stopping it");
                shared.kill_vm();
            }
            let code = shared.wait_exit(None).flatten();
            let _ = writeln!(
                stdout,
                "{EXITED} {}",
                code.map_or("unknown".into(), |c| c.to_string())
            );
        }
    }
    // Nobody reads any more: later output would go nowhere.
    let _ = stdout.flush();
    drop(stdout);
    if word_fd.is_none() {
        detach_stdio();
    }
    drop(word_fd);
    drop(announce);
    let _ = std::fs::remove_file(&announce_path);

    let code = shared.wait_exit(None).flatten();
    serve::leave_connected(&shared);
    let _ = pump.join();
    // The command's last output, still on its way from the guest.
    let relays = std::mem::take(&mut *shared.relays.lock().unwrap_or_else(|e| e.into_inner()));
    for relay in relays {
        let _ = relay.join();
    }
    // Started meanwhile (a control request wrote that down), the health
    // check's last word, and what husk update changed: its restart
    // policy counts from now on.
    let mut restart = restart;
    if let Ok(now) = vm.read_state() {
        state.started_ms = now.started_ms;
        state.health = now.health;
        if now.restart != state.restart {
            restart = now.restart.parse().unwrap_or_default();
            state.restart = now.restart;
        }
        state.args = now.args;
    }
    state.finished_ms = Some(now_ms());
    state.exit_code = code;
    let stopped = || shared.stopped.load(std::sync::atomic::Ordering::SeqCst);
    let health_restart = shared
        .health_restart
        .load(std::sync::atomic::Ordering::SeqCst);
    if ran && !stopped() && (health_restart || restart.restarts(code, state.restart_count)) {
        let previous = std::env::var(RESTART_DELAY_ENV)
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis);
        // A command that ended at once has no start recorded: no time.
        let ran_for = match (state.started_ms, state.finished_ms) {
            (Some(start), Some(end)) => end.saturating_sub(start),
            _ => 0,
        };
        let delay = restart::delay(previous, Duration::from_millis(ran_for));
        state.status = Status::Restarting;
        state.restart_count += 1;
        shared.write_state(&state);
        // The control socket still answers meanwhile: a stop ends this.
        let until = Instant::now() + delay;
        while Instant::now() < until && !stopped() {
            std::thread::sleep(Duration::from_millis(20).min(delay));
        }
        if !stopped() {
            // No request comes in any more; one on its way is answered
            // (a stop among them still counts).
            let _ = std::fs::remove_file(vm.control());
            shared.drain();
            if !stopped() {
                let args = shared.recorded_args().unwrap_or(state.args);
                return run_again(&shared, delay, &env, &args);
            }
        }
    }
    state.status = Status::Exited;
    state.stopped = stopped();
    shared.write_state(&state);
    shared.drain();
    let _ = std::fs::remove_file(vm.control());
    let _ = std::fs::remove_file(&shared.uds);
    if remove_at_end {
        let _ = std::fs::remove_dir_all(&vm.dir);
        // Its anonymous volumes go with it, as docker's --rm takes them.
        for name in &state.volumes {
            if let Err(e) = crate::volumes::remove_anonymous(name) {
                tracing::warn!("the volume {name} stays: {e:#}");
            }
        }
    }
    // A VM child killed from here (a stop past its grace period) left its
    // jail folder and cgroup: swept, as every jail sweeps the dead's.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        vmm::jail::sweep(vmm::jail::Cgroups::detect().as_ref());
    }
    Ok(code.unwrap_or(0))
}

/// The keeper once more, in this process (its pid and start time are
/// what the state names): it starts a new VM. The old VM's vsock socket
/// and jail go first, as when a keeper leaves.
fn run_again(
    shared: &Shared,
    delay: Duration,
    env: &[(&'static str, String)],
    recorded: &[String],
) -> anyhow::Result<u8> {
    let _ = std::fs::remove_file(&shared.uds);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        vmm::jail::sweep(vmm::jail::Cgroups::detect().as_ref());
    }
    let exe = std::env::current_exe().context("cannot locate the husk binary")?;
    // exec only returns on failure; every descriptor this process opened
    // is close-on-exec.
    // Its recorded command line, as husk update may have changed it.
    let args: Vec<std::ffi::OsString> = if recorded.is_empty() {
        std::env::args_os().skip(1).collect()
    } else {
        recorded.iter().map(Into::into).collect()
    };
    let e = Command::new(exe)
        .args(args)
        .env(RESTART_DELAY_ENV, delay.as_millis().to_string())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .exec();
    Err(e).context("cannot run the keeper again")
}

/// A pidfd for process `pid` (our child, not yet reaped: it was just
/// spawned and only the waiter thread, started after this, reaps it).
fn pidfd(pid: u32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open with a pid and no flags; a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd was just returned by pidfd_open and is owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// SIGKILL to the process behind `pidfd`.
fn kill_pidfd(pidfd: &std::os::fd::OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_send_signal with a pidfd we own, a plain signal number
    // and no siginfo; it touches no memory of ours.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Points stdin, stdout and stderr at /dev/null.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, which this
            // process owns; Rust's handles to them stay valid fds.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// The console's output into the log and to every `husk attach`, until
/// the VM child ends; the attached then see the end of their stream.
fn pump_log(mut from: io::PipeReader, mut log: LogWriter, shared: &Shared) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match io::Read::read(&mut from, &mut buf) {
            Ok(0) => break,
            Ok(n) => attach::log_and_send(shared, &mut log, &buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    attach::end(shared);
}

fn wait_child(mut child: Child, shared: &Shared) {
    let code = match child.wait() {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            match (status.code(), status.signal()) {
                (Some(c), _) => Some(c as u8),
                (None, Some(s)) => Some(128u8.wrapping_add(s as u8)),
                _ => None,
            }
        }
        Err(_) => None,
    };
    *shared.exit.lock().unwrap_or_else(|e| e.into_inner()) = Some(code);
    shared.ended.notify_all();
}

/// Waits until the guest agent answers and says the command started (a
/// held guest: only that the agent answers); then for the readiness
/// check, if any.
/// How far a VM got on its way to ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Booting,
    /// Its command started.
    Started,
    /// Its command started and ended at once.
    Ended,
}

fn until_ready(
    shared: &Shared,
    announce: &UnixListener,
    ready: Option<(Check, Duration)>,
    hold: bool,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + AGENT_BOOT_TIMEOUT;
    let mut conn = loop {
        if shared.has_ended() {
            anyhow::bail!("the VM stopped before its guest agent answered");
        }
        // The agent says when it listens; until then a try now and then
        // (a connection attempt costs the booting guest an interrupt).
        let announced = wait_announce(announce, Duration::from_millis(500));
        match vmm::vsock::connect_guest(&shared.uds, agent::PORT, AGENT_TIMEOUT) {
            Ok(c) => break c,
            Err(vmm::vsock::ConnectError::Protocol(..)) => {
                anyhow::bail!("the VM's vsock socket does not speak hybrid vsock")
            }
            Err(_) if Instant::now() < deadline => {
                if announced {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            Err(e) => {
                return Err(anyhow::Error::from(e).context(format!(
                    "the guest agent did not answer within {} s",
                    AGENT_BOOT_TIMEOUT.as_secs()
                )))
            }
        }
    };
    conn.set_read_timeout(Some(AGENT_BOOT_TIMEOUT))?;
    if hold {
        return match agent::call(&mut conn, &agent::Request::Ping)? {
            agent::Response::Pong => Ok(()),
            other => anyhow::bail!("unexpected answer from the guest agent: {other:?}"),
        };
    }
    match agent::call(&mut conn, &agent::Request::MainStarted)? {
        agent::Response::Started { .. } => *progress = Progress::Started,
        agent::Response::Exited { status } => {
            *progress = Progress::Ended;
            anyhow::bail!(
                "the appliance's command ended at once (status {})",
                status.shell_code()
            )
        }
        other => anyhow::bail!("unexpected answer from the guest agent: {other:?}"),
    }
    match ready {
        Some((check, timeout)) => check::until_ready(shared, &check, timeout),
        None => Ok(()),
    }
}

/// Waits up to `timeout` for the agent's announcement; whether it came.
fn wait_announce(listener: &UnixListener, timeout: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    if ready == 1 {
        // Taken, so the next wait does not see it again.
        let _ = listener.accept();
        return true;
    }
    false
}

/// The descriptor named by [`WORD_FD_ENV`], taken (it is the keeper's
/// alone). While it is set, SIGWINCH is blocked here, before any thread
/// starts, so the thread that follows a terminal's size receives it.
fn word_fd() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let fd: i32 = std::env::var(WORD_FD_ENV).ok()?.parse().ok()?;
    if fd < 3 {
        return None;
    }
    // SAFETY: F_GETFD only asks whether `fd` is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the caller handed this descriptor to the keeper alone
    // (WORD_FD_ENV's contract); nothing else in this process owns it.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    block_sigwinch();
    Some(owned)
}

fn announce_socket(uds: &std::path::Path) -> PathBuf {
    let mut p = uds.as_os_str().to_owned();
    p.push(format!("_{}", agent::ANNOUNCE_PORT));
    PathBuf::from(p)
}

/// The VM folder named in the keeper's environment.
pub fn from_env(var: &str) -> Option<VmDir> {
    let dir = PathBuf::from(std::env::var_os(var)?);
    let name = dir.file_name()?.to_string_lossy().into_owned();
    let root = dir.parent()?.to_path_buf();
    Some(VmDir::at(&root, &name))
}

/// `husk run -d`'s side: reads the keeper's word. `Ok(None)` once ready;
/// `Ok(Some(code))` when the VM ended first. Other lines go to stderr.
pub fn await_keeper(out: impl io::Read) -> anyhow::Result<Option<Option<u8>>> {
    await_keeper_with(out, |line| eprintln!("{line}"))
}

/// [`await_keeper`], the other lines (errors before the VM started)
/// handed to `other`.
pub fn await_keeper_with(
    out: impl io::Read,
    mut other: impl FnMut(String),
) -> anyhow::Result<Option<Option<u8>>> {
    for line in io::BufReader::new(out).lines() {
        let line = line?;
        if line == READY {
            return Ok(None);
        }
        if let Some(code) = line.strip_prefix(EXITED) {
            return Ok(Some(code.trim().parse().ok()));
        }
        other(line);
    }
    anyhow::bail!("the keeper ended without a word (see husk logs)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pidfd_kills_its_process_and_only_it() {
        use std::os::unix::process::ExitStatusExt;
        let mut child = Command::new("sleep").arg("100").spawn().unwrap();
        let fd = pidfd(child.id()).unwrap();
        kill_pidfd(&fd).unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        // Reaped: the pidfd now names nobody, whatever takes its pid.
        let err = kill_pidfd(&fd).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
    }
}
