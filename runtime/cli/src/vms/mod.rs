//! Detached appliances: where their state lives, and the records in it.
//!
//! Each detached VM has a folder `<root>/<name>/` (root: `/var/lib/husk/vms`;
//! anyone else: `$XDG_DATA_HOME/husk/vms`, else `~/.local/share/husk/vms`;
//! it outlives a host restart, as a container does, with its root's
//! writes and its log) holding:
//! - `state.json`: what `ps` shows and what outlives the VM (written
//!   whole, by rename; see [`State`]),
//! - `control.sock`: the keeper's control socket, mode 0600 (see
//!   [`control`]), the one way the CLI reaches a running VM,
//! - `vsock.sock`: the VM's hybrid vsock socket (the guest agent's way
//!   in; only the keeper connects to it),
//! - `console.log` and `console.log.1` (and older ones, as
//!   `--log-opt max-file` says): the console, rotated at its
//!   [`log::Limits`],
//! - `state.lock`: locked by whoever reads, changes and writes back
//!   `state.json` (see [`VmDir::lock_state`]).
//!
//! The keeper ([`keeper`]) is the process that owns a VM: it starts the
//! VMM as a foreground `husk run` child, writes its console to the log,
//! serves the control socket, and records the exit status. The folder is
//! created with `mkdir`, so one name is one VM; `husk rm` removes it.

pub mod control;
pub mod keeper;
pub mod log;
pub mod restart;

use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The folder of every detached VM of this user: `$HUSK_STATE_DIR`; for
/// root `/var/lib/husk/vms`; else `$XDG_DATA_HOME/husk/vms` or
/// `~/.local/share/husk/vms`. Not under `/run`: an appliance, its root's
/// kept writes and its log outlive a restart of the host, and `husk start
/// --at-boot` starts those whose restart policy says so.
pub fn root() -> anyhow::Result<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("HUSK_STATE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(PathBuf::from("/var/lib/husk/vms"));
    }
    if let Some(dir) = var("XDG_DATA_HOME") {
        return Ok(Path::new(&dir).join("husk/vms"));
    }
    match var("HOME") {
        Some(home) => Ok(Path::new(&home).join(".local/share/husk/vms")),
        None => anyhow::bail!(
            "neither HUSK_STATE_DIR, XDG_DATA_HOME nor HOME is set: husk keeps a user's \
             detached appliances there"
        ),
    }
}

/// A name as docker takes it: letters, digits, `_.-`, starting with a
/// letter or digit, at most 64 bytes.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        anyhow::bail!(
            "{name:?} is not a valid name: use letters, digits, '_', '.' and '-', \
             starting with a letter or digit, at most 64 characters"
        );
    }
    Ok(())
}

/// A fresh name: `husk-` and six random hex digits.
pub fn random_name() -> String {
    format!("husk-{}", random_hex(3))
}

/// `bytes` bytes of the kernel's random source, in hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut buf));
    agent::hex::encode(&buf)
}

/// Writes `bytes` to `path` whole: a temporary file beside it, renamed.
pub fn write_file(path: &Path, bytes: impl AsRef<[u8]>) -> io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Booting; the command has not started yet.
    Starting,
    /// Booted and set up; the command waits to be started (husk-runtime's
    /// `create` made it).
    Created,
    Running,
    /// It ended; `exit_code` says how.
    Exited,
    /// Its command ended (`exit_code`) and its restart policy starts it
    /// again after a delay.
    Restarting,
}

/// `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    /// What was run: the appliance file or image reference.
    pub image: String,
    /// The `husk` command line that started it, and the folder it was
    /// typed in (`husk start` runs it again there).
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub cwd: Option<std::path::PathBuf>,
    /// Published ports as given to `-p` (and the appliance's).
    pub ports: Vec<String>,
    pub created_ms: u64,
    pub status: Status,
    /// When the command started.
    #[serde(default)]
    pub started_ms: Option<u64>,
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// The command's exit status (128 + N for signal N); for a VM whose
    /// keeper was killed, unknown.
    #[serde(default)]
    pub exit_code: Option<u8>,
    /// The keeper's pid and its start time (`/proc/PID/stat` field 22),
    /// so a recycled pid is not taken for it.
    pub keeper_pid: u32,
    pub keeper_start: u64,
    /// `--restart`, and how many times it has started the command again.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub restart: String,
    #[serde(default)]
    pub restart_count: u32,
    /// Its vCPUs are stopped (`husk pause`) until `husk unpause`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// What its health check found (`--health-cmd`, `[run.health]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Seconds `husk stop` waits before SIGKILL when not told (10 when
    /// `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<u32>,
    /// The named volumes it shares.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// The husk networks it is on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    /// `--label`s: what the user tagged it with, for `ps --filter label=`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// It ended by `husk stop` (or a `husk kill` that ends it): an
    /// `unless-stopped` one is not started at boot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
    /// What its init runs: the image's run configuration under the run's
    /// flags (`inspect`'s `Config`); none for an image husk did not build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<husk_init::config::RunConfig>,
}

impl State {
    /// Made by `husk create` and never started: stopped, with no start on
    /// record.
    pub fn never_started(&self) -> bool {
        self.status == Status::Exited && self.started_ms.is_none() && self.keeper_pid == 0
    }

    /// Its restart policy (none recorded, or one an older husk wrote that
    /// does not parse: `no`).
    pub fn restart_policy(&self) -> restart::Policy {
        self.restart.parse().unwrap_or_default()
    }

    /// Fails unless the state keeps the `husk run` command line that
    /// started it (what `start`, `update`, `rename` and `network connect`
    /// work from), as every husk since detached appliances could start
    /// again writes it.
    pub fn check_recorded(&self) -> anyhow::Result<()> {
        if self.args.first().map(String::as_str) != Some("run") {
            anyhow::bail!(
                "{0} was made by an older husk that did not keep its command line: \
                 husk rm {0}, then run it again",
                self.name
            );
        }
        Ok(())
    }
}

/// A health check's view of a detached VM, as docker's `State.Health`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    /// Checks failed in a row.
    pub failing_streak: u32,
    /// The last [`Health::KEPT`] checks, oldest first.
    pub log: Vec<HealthCheck>,
}

impl Health {
    pub const KEPT: usize = 5;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// No check has passed yet.
    #[default]
    Starting,
    Healthy,
    /// `retries` checks failed in a row.
    Unhealthy,
}

impl HealthStatus {
    /// docker's word for it (`State.Health.Status`, `ps -f health=`).
    pub fn word(self) -> &'static str {
        match self {
            HealthStatus::Starting => "starting",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// One health check: when it ran, its exit code (0 passed, -1 it took too
/// long) and the start of what it printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub start_ms: u64,
    pub end_ms: u64,
    pub exit_code: i32,
    pub output: String,
}

/// One VM's folder.
#[derive(Debug, Clone)]
pub struct VmDir {
    pub name: String,
    pub dir: PathBuf,
}

impl VmDir {
    pub fn at(root: &Path, name: &str) -> Self {
        VmDir {
            name: name.into(),
            dir: root.join(name),
        }
    }

    /// The folder of an existing VM, or an error naming what exists.
    pub fn find(name: &str) -> anyhow::Result<Self> {
        check_name(name)?;
        let vm = VmDir::at(&root()?, name);
        if !vm.dir.join("state.json").exists() {
            anyhow::bail!("no appliance named {name:?} (see husk ps -a)");
        }
        Ok(vm)
    }

    /// A new connection to the guest agent of this running VM (a paused
    /// or stopped one is an error that says so).
    pub fn agent(&self) -> anyhow::Result<std::os::unix::net::UnixStream> {
        let name = &self.name;
        let state = self.current_state()?;
        if state.status != Status::Running {
            anyhow::bail!("{name} is not running (husk ps -a)");
        }
        if state.paused {
            anyhow::bail!("{name} is paused (husk unpause {name})");
        }
        control::Control::connect(&self.control(), name)?.agent()
    }

    /// Every VM of this user, by name.
    pub fn all() -> anyhow::Result<Vec<Self>> {
        let root = root()?;
        let mut vms = Vec::new();
        match std::fs::read_dir(&root) {
            Ok(entries) => {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if e.path().join("state.json").exists() {
                        vms.push(VmDir::at(&root, &name));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", root.display())),
        }
        vms.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(vms)
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn control(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
    pub fn vsock(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// What a snapshot of the running VM would be (its VM child writes it).
    pub fn snapshot_offer(&self) -> PathBuf {
        self.dir.join("snapshot-offer.json")
    }

    pub fn read_state(&self) -> anyhow::Result<State> {
        let text = std::fs::read(self.state_file())
            .with_context(|| format!("cannot read {}", self.state_file().display()))?;
        serde_json::from_slice(&text)
            .with_context(|| format!("{} is damaged", self.state_file().display()))
    }

    /// Locks `state.json` against every other husk process (and every
    /// other thread) that changes it, until the lock is dropped: the
    /// keeper as it records the VM's life, and the commands that change a
    /// record (`update`, `rename`, `network connect`) or act on what it
    /// says (`start`, `rm`). A change is then never lost to a write based
    /// on an older read, and no VM is started, renamed or removed between
    /// another's look at its state and its act. Held for a read and a
    /// write, never while waiting for a VM.
    pub fn lock_state(&self) -> anyhow::Result<StateLock> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join("state.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => {
                    anyhow::anyhow!("{} is gone (removed or renamed meanwhile)", self.name)
                }
                _ => anyhow::Error::new(e).context(format!("cannot open {}", path.display())),
            })?;
        loop {
            // SAFETY: flock on a descriptor this function owns.
            if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) } == 0 {
                return Ok(StateLock { _file: file });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
    }

    /// Writes the state whole: to a temporary file, then renamed over.
    pub fn write_state(&self, state: &State) -> io::Result<()> {
        let text = serde_json::to_vec_pretty(state).expect("plain data serializes");
        write_file(&self.state_file(), text)
    }

    /// The state as it really is: a VM whose keeper is gone without
    /// recording the end (killed) shows as exited with no status.
    pub fn current_state(&self) -> anyhow::Result<State> {
        let mut state = self.read_state()?;
        if state.status != Status::Exited && !process_alive(state.keeper_pid, state.keeper_start) {
            state.status = Status::Exited;
            state.paused = false;
        }
        Ok(state)
    }
}

/// [`VmDir::lock_state`]'s lock, released when dropped (or when the
/// process ends, however it ends).
pub struct StateLock {
    _file: std::fs::File,
}

/// A process's start time in clock ticks since boot (`/proc/PID/stat`
/// field 22), or `None` when it is gone.
pub fn process_start(pid: u32) -> Option<u64> {
    stat_fields(pid, [22]).map(|[start]| start)
}

/// Numeric fields of `/proc/PID/stat` (numbered from 1, as proc(5) does;
/// 4 and up), read once; `None` when the process is gone.
pub fn stat_fields<const N: usize>(pid: u32, fields: [usize; N]) -> Option<[u64; N]> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after it start after the last ')', with field 3.
    let rest: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let mut out = [0; N];
    for (value, n) in out.iter_mut().zip(fields) {
        *value = rest.get(n.checked_sub(3)?)?.parse().ok()?;
    }
    Some(out)
}

pub fn process_alive(pid: u32, start: u64) -> bool {
    process_start(pid) == Some(start)
}

/// "3 minutes", "2 hours": how long, as `ps` shows it.
pub fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s} second{}", if s == 1 { "" } else { "s" }),
        60..=3599 => plural(s / 60, "minute"),
        3600..=172_799 => plural(s / 3600, "hour"),
        _ => plural(s / 86400, "day"),
    }
}

fn plural(n: u64, unit: &str) -> String {
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["web", "a", "db-1", "x.y_z", &"n".repeat(64)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", ".x", "a/b", "a b", "..", &"n".repeat(65), "é"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        let n = random_name();
        assert!(check_name(&n).is_ok() && n.len() == 11, "{n}");
    }

    #[test]
    fn own_start_time_is_found_and_a_dead_pid_is_not_alive() {
        let me = std::process::id();
        let start = process_start(me).unwrap();
        assert!(process_alive(me, start));
        assert!(!process_alive(me, start + 1));
        // pid_max is at most 2^22.
        assert!(!process_alive(u32::MAX - 1, 0));
    }

    #[test]
    fn the_state_lock_excludes_other_holders_and_names_a_folder_gone() {
        let root = tempfile::tempdir().unwrap();
        let vm = VmDir::at(root.path(), "db");
        std::fs::create_dir(&vm.dir).unwrap();
        let held = vm.lock_state().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let other = VmDir::at(root.path(), "db");
        let waiter = std::thread::spawn(move || {
            let _second = other.lock_state().unwrap();
            tx.send(()).unwrap();
        });
        let wait = std::time::Duration::from_millis(200);
        assert!(rx.recv_timeout(wait).is_err(), "taken while held");
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("taken once let go");
        waiter.join().unwrap();
        std::fs::remove_dir_all(&vm.dir).unwrap();
        let gone = vm.lock_state().err().unwrap().to_string();
        assert!(gone.contains("db is gone"), "{gone}");
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(999), "0 seconds");
        assert_eq!(human_duration(1000), "1 second");
        assert_eq!(human_duration(61_000), "1 minute");
        assert_eq!(human_duration(7_200_000), "2 hours");
        assert_eq!(human_duration(3 * 86_400_000), "3 days");
    }

    #[test]
    fn state_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let vm = VmDir::at(dir.path(), "x");
        std::fs::create_dir(&vm.dir).unwrap();
        let state = State {
            name: "x".into(),
            image: "examples/hello".into(),
            args: vec!["run".into(), "-d".into(), "examples/hello".into()],
            cwd: None,
            ports: vec!["8080:80".into()],
            created_ms: 1,
            status: Status::Running,
            started_ms: Some(2),
            finished_ms: None,
            exit_code: None,
            keeper_pid: std::process::id(),
            keeper_start: process_start(std::process::id()).unwrap(),
            restart: String::new(),
            restart_count: 0,
            paused: true,
            health: None,
            stop_timeout: Some(30),
            volumes: vec!["db".into()],
            networks: vec!["backend".into()],
            labels: [("tier".to_string(), "db".to_string())].into(),
            stopped: false,
            config: Some(husk_init::config::RunConfig {
                command: vec!["httpd".into(), "-f".into()],
                env: vec!["PATH=/bin".into()],
                ..Default::default()
            }),
        };
        vm.write_state(&state).unwrap();
        let back = vm.current_state().unwrap();
        assert_eq!((back.status, back.paused), (Status::Running, true));
        assert_eq!((&back.ports, &back.volumes), (&state.ports, &state.volumes));
        assert_eq!(back.labels, state.labels);
        assert_eq!(back.config, state.config);
        assert_eq!(back.networks, state.networks);
        // A keeper that is gone: exited (paused no longer), status unknown.
        vm.write_state(&State {
            keeper_start: state.keeper_start + 1,
            ..state
        })
        .unwrap();
        let back = vm.current_state().unwrap();
        assert_eq!(
            (back.status, back.exit_code, back.paused),
            (Status::Exited, None, false)
        );
        std::fs::write(vm.state_file(), b"{").unwrap();
        assert!(vm.read_state().unwrap_err().to_string().contains("damaged"));
    }
}
