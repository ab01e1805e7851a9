//! husk-init: PID 1 of every husk image.
//!
//! Mounts the usual filesystems, reads the run configuration baked into
//! the image (with the kernel command line's overrides), starts the
//! appliance's command as the configured user, forwards signals to it,
//! reaps orphans, reports the command's exit status to husk's VMM on the
//! control port, syncs and powers the VM off. Exit statuses of its own:
//! 127 command not found, 126 not executable, 125 anything else that kept
//! the command from starting (bad configuration, unknown user).

mod agent;
mod cgroup;
mod container;
mod leases;
mod net;
mod pidns;
mod resume;
mod sys;
mod usage;

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use husk_init::config::{
    FsSetup, NetSetup, OnExit, Overrides, RunConfig, CONFIG_PATH, DEFAULT_PATH, PORTABLE_ARG,
    SNAPSHOT_ARG,
};
use husk_init::user::{self, Identity};

const STATUS_NOT_FOUND: u8 = 127;
const STATUS_NOT_EXECUTABLE: u8 = 126;
pub(crate) const STATUS_SETUP_FAILED: u8 = 125;

/// Why the command never ran, with the status init reports for it.
pub(crate) struct Failure {
    pub status: u8,
    pub message: String,
}

impl Failure {
    fn setup(message: impl Into<String>) -> Self {
        Failure {
            status: STATUS_SETUP_FAILED,
            message: message.into(),
        }
    }
}

/// A message on the console. Never panics: PID 1 must not die because
/// the console went away. One write per line: stderr is unbuffered, and
/// `writeln!` would write the prefix, the message and the newline apart,
/// letting the kernel's own console messages in between.
fn say(message: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("husk-init: {message}\n").as_bytes());
}

fn main() {
    if std::process::id() != 1 {
        say("this is the guest's init; it only runs as PID 1 inside a husk image");
        std::process::exit(2);
    }
    sys::mount_filesystems();
    sys::ensure_console();
    // Read once: the overrides, the shares and the network are all on it.
    let mut cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let portable = is_portable(&cmdline);
    let control = if portable {
        sys::ControlPort::none()
    } else {
        sys::ControlPort::open()
    };
    control.mark(sys::MARK_INIT_RUNNING);
    // What every run of this image shares is done before a snapshot point,
    // so that a restored VM does not do it again: the image's own run
    // configuration read, the loopback interface up.
    let image_config = read_config();
    if let Err(e) = net::loopback_up() {
        say(&format!("cannot bring up lo: {e}"));
    }
    let agent = agent::Agent::new();
    let signals = sys::SignalSet::forwarded();
    // Blocked before the agent's threads start, so they inherit the mask
    // and the signals come to this thread's sigwaitinfo.
    signals.block();
    if cmdline.split_whitespace().any(|w| w == SNAPSHOT_ARG) {
        // Its socket and thread made (it listens once it has the run's
        // configuration): a restored VM makes neither on the way to its
        // command.
        agent.bind();
        // The VMM saves the VM during the snapshot point's port write, and
        // a restored VM goes on from there: it reads this run's parameters
        // and makes its random state its own.
        let seed = match resume::at_snapshot_point(&control) {
            Ok(Some(r)) => {
                cmdline.push(' ');
                cmdline.push_str(&r.params);
                r.seed
            }
            Ok(None) => Vec::new(),
            Err(e) => {
                say(&format!("cannot read this run's parameters: {e}"));
                Vec::new()
            }
        };
        if let Err(e) = sys::reseed(&seed) {
            say(&format!("cannot reseed the random generator: {e}"));
        }
    }
    let mut on_exit = OnExit::Poweroff;
    let mut on_console = false;
    let status = match run(
        &control,
        &cmdline,
        image_config,
        &agent,
        &signals,
        (&mut on_exit, &mut on_console),
    ) {
        Ok(status) => status,
        Err(f) => {
            say(&f.message);
            f.status
        }
    };
    sys::sync_all();
    if !portable {
        control.status(status);
        // The command's output went to the console: once all of it is out
        // the VMM can end the VM here rather than after the kernel's
        // power-off (its devices' shutdown: most of a short run's exits).
        // A held command's output went through the agent's streams, which
        // the power-off's time lets the VMM pass on.
        if on_console {
            sys::drain_console();
            control.mark(sys::MARK_DONE);
        }
        sys::power_off();
    }
    // An exported disk's machine: the console is all there is to say it on.
    match on_exit {
        OnExit::Poweroff => {
            say(&format!(
                "the command exited with status {status}; powering off"
            ));
            sys::halt();
        }
        OnExit::Restart => {
            say(&format!(
                "the command exited with status {status}; restarting"
            ));
            sys::power_off();
        }
    }
}

/// Booted from an exported disk, by another hypervisor: no husk VMM.
fn is_portable(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == PORTABLE_ARG)
}

/// Runs the appliance's command to its end and returns its exit status;
/// `on_exit` gets the configuration's choice once it is read, and
/// `on_console` whether the command's output goes to the console (it is
/// not held for the agent to start).
fn run(
    control: &sys::ControlPort,
    cmdline: &str,
    image_config: Result<RunConfig, Failure>,
    agent: &Arc<agent::Agent>,
    signals: &sys::SignalSet,
    (on_exit, on_console): (&mut OnExit, &mut bool),
) -> Result<u8, Failure> {
    let (config, overrides) = with_overrides(image_config?, cmdline)?;
    let hold = overrides.hold;
    *on_exit = config.on_exit;
    *on_console = !hold;
    mount_shares(cmdline)?;
    tune(&overrides)?;
    if config.command.is_empty() && !hold {
        return Err(Failure::setup(
            "the image has no command to run: set run.command, or pass one after --",
        ));
    }
    if let Some(name) = &config.hostname {
        sys::set_hostname(name).map_err(|e| Failure::setup(format!("hostname {name:?}: {e}")))?;
    }
    let net_setup = NetSetup::from_cmdline(cmdline);
    match &net_setup {
        Ok(Some(setup)) => net::setup(setup, config.hostname.as_deref(), say),
        Ok(None) => {}
        Err(e) => say(&chain(e)),
    }
    match &net_setup {
        Ok(Some(setup)) => net::follow_networks(setup, say),
        // An exported disk's machine: the hypervisor's DHCP server says.
        Ok(None) if is_portable(cmdline) => leases::start(config.hostname.as_deref(), say),
        _ => {}
    }
    if hold {
        // The command comes through the agent (StartMain); the loop
        // below learns of it from the agent's table.
        agent.hold_main();
    } else {
        let main = Prepared::new(&config, &config.command, true)
            .and_then(|p| spawn_main(agent, &p, &config.command[0]));
        // The agent serves once the command started, off the boot path:
        // a host that connects earlier is refused and tries again.
        match main {
            Ok(pid) => agent.main_spawned(Ok(pid)),
            Err(f) => {
                agent.main_spawned(Err(f.status));
                agent.serve(config);
                return Err(f);
            }
        }
        control.mark(sys::MARK_COMMAND_STARTED);
    }
    agent.serve(config);
    let status = loop {
        let signal = signals.next();
        if signal == libc::SIGCHLD || signal == -1 {
            agent.reap();
            if let Some(status) = agent.main_status() {
                break status;
            }
        } else if sys::SignalSet::is_forwarded(signal) {
            if let Some(pid) = agent.main_pid() {
                let _ = sys::signal(pid, signal);
            }
        }
    };
    // Whatever the command left behind gets a chance to finish writing.
    sys::terminate_others();
    Ok(status)
}

fn spawn_main(agent: &Arc<agent::Agent>, p: &Prepared, name: &str) -> Result<i32, Failure> {
    let mut command = p.command();
    let child = agent
        .spawning(|| command.spawn())
        .map_err(|e| spawn_failure(name, &e))?;
    Ok(child.id() as i32)
}

/// A command ready to spawn: who runs it, where, with what.
pub(crate) struct Prepared {
    identity: Identity,
    restrictions: container::Restrictions,
    env: Vec<String>,
    workdir: String,
    program: PathBuf,
    argv: Vec<String>,
}

impl Prepared {
    /// `argv` as `config` says to run it; `create_workdir` makes a
    /// missing working directory (as Docker does for a container's).
    pub fn new(config: &RunConfig, argv: &[String], create_workdir: bool) -> Result<Self, Failure> {
        Self::new_in(Path::new("/"), config, argv, create_workdir)
    }

    /// The same for a process whose filesystem is the folder `root` of
    /// this one (a container's): its user, working directory and program
    /// are looked up there, and named as the process will see them.
    pub fn new_in(
        root: &Path,
        config: &RunConfig,
        argv: &[String],
        create_workdir: bool,
    ) -> Result<Self, Failure> {
        let inside = |path: &str| root.join(path.trim_start_matches('/'));
        let group = || fs::read_to_string(inside("/etc/group")).unwrap_or_default();
        let mut identity = match &config.user {
            Some(spec) => {
                let passwd = fs::read_to_string(inside("/etc/passwd")).unwrap_or_default();
                user::resolve(spec, &passwd, &group()).map_err(|e| Failure::setup(e.to_string()))?
            }
            None => Identity {
                uid: 0,
                gid: 0,
                groups: vec![0],
                home: root_home(root),
            },
        };
        if !config.groups.is_empty() {
            let group = group();
            for spec in &config.groups {
                let gid = user::group_id(spec, &group)
                    .map_err(|e| Failure::setup(format!("--group-add: {e}")))?;
                if !identity.groups.contains(&gid) {
                    identity.groups.push(gid);
                }
            }
        }
        let env = environment(config, &identity);
        let workdir = config.workdir.clone().unwrap_or_else(|| "/".into());
        let seen = inside(&workdir);
        if !seen.is_dir() {
            if !create_workdir {
                return Err(Failure::setup(format!("{workdir}: no such directory")));
            }
            fs::create_dir_all(&seen)
                .map_err(|e| Failure::setup(format!("cannot create workdir {workdir}: {e}")))?;
        }
        let program = find_program(root, &argv[0], &env)?;
        Ok(Prepared {
            identity,
            restrictions: container::Restrictions::default(),
            env,
            workdir,
            program,
            argv: argv.to_vec(),
        })
    }

    /// Narrows the process further: supplementary groups beside the
    /// user's, resource limits, capabilities, `no_new_privs`.
    pub fn restrict(&mut self, groups: &[u32], restrictions: container::Restrictions) {
        for g in groups {
            if !self.identity.groups.contains(g) {
                self.identity.groups.push(*g);
            }
        }
        self.restrictions = restrictions;
    }

    /// The command, as the user it runs as, in a session of its own.
    pub fn command(&self) -> Command {
        self.command_entering(None)
    }

    /// The command, entering `container` first (then the working
    /// directory is the container's).
    pub fn command_entering(&self, container: Option<container::Entry>) -> Command {
        let mut command = Command::new(&self.program);
        command
            .arg0(&self.argv[0])
            .args(&self.argv[1..])
            .env_clear()
            .envs(self.env.iter().filter_map(|e| e.split_once('=')));
        match container {
            // Entered before the identity drops (pre_exec closures run in
            // order), with the working directory inside it.
            Some(entry) => container::enter(&mut command, entry, &self.workdir),
            None => {
                command.current_dir(&self.workdir);
            }
        }
        container::drop_to(
            &mut command,
            self.identity.clone(),
            self.restrictions.clone(),
        );
        command
    }
}

/// The image's run configuration, as its build wrote it.
fn read_config() -> Result<RunConfig, Failure> {
    let text = fs::read(CONFIG_PATH).map_err(|e| {
        Failure::setup(format!(
            "cannot read {CONFIG_PATH}: {e} (was this image built by husk?)"
        ))
    })?;
    RunConfig::from_json(&text).map_err(|e| Failure::setup(format!("{CONFIG_PATH}: {}", chain(&e))))
}

/// `config` under this boot's overrides, and the overrides (none: the
/// defaults).
fn with_overrides(mut config: RunConfig, cmdline: &str) -> Result<(RunConfig, Overrides), Failure> {
    let overrides = Overrides::from_cmdline(cmdline)
        .map_err(|e| Failure::setup(chain(&e)))?
        .unwrap_or_default();
    config
        .apply(&overrides)
        .map_err(|e| Failure::setup(chain(&e)))?;
    Ok((config, overrides))
}

/// What `--ulimit`, `--sysctl`, `--shm-size`, `--cap-drop` and
/// `--security-opt no-new-privileges` ask of the guest, before anything of
/// the appliance's starts: init's own resource limits (the defaults, then
/// those given), the kernel parameters, `/dev/shm`, init's bounding set
/// and no_new_privs (which every program it starts inherits).
fn tune(overrides: &Overrides) -> Result<(), Failure> {
    let limits = husk_init::config::DEFAULT_RLIMITS
        .iter()
        .filter(|d| !overrides.ulimits.iter().any(|u| u.resource == d.resource))
        .chain(&overrides.ulimits)
        .copied()
        .collect::<Vec<_>>();
    sys::set_rlimits(&limits)
        .map_err(|e| Failure::setup(format!("cannot set the resource limits: {e}")))?;
    for entry in &overrides.sysctls {
        let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
        let path = husk_init::config::sysctl_path(key).map_err(|e| Failure::setup(chain(&e)))?;
        fs::write(&path, value)
            .map_err(|e| Failure::setup(format!("cannot set {key} to {value:?}: {e}")))?;
    }
    if let Some(bytes) = overrides.shm_size {
        sys::resize_shm(bytes)
            .map_err(|e| Failure::setup(format!("cannot size /dev/shm to {bytes} bytes: {e}")))?;
    }
    if let Some(keep) = overrides.capabilities {
        sys::limit_capabilities(keep)
            .map_err(|e| Failure::setup(format!("cannot drop capabilities: {e}")))?;
    }
    if overrides.no_new_privileges {
        sys::no_new_privileges()
            .map_err(|e| Failure::setup(format!("cannot set no_new_privs: {e}")))?;
    }
    Ok(())
}

/// The shared folders `husk run` attached: the root first, when it is a
/// host folder (the image was only the initramfs that brought init and its
/// configuration), then the others, the single files and `--tmpfs`
/// mounts, before the command starts.
fn mount_shares(cmdline: &str) -> Result<(), Failure> {
    let Some(setup) = FsSetup::from_cmdline(cmdline).map_err(|e| Failure::setup(chain(&e)))? else {
        return Ok(());
    };
    if let Some(root) = setup.root() {
        sys::switch_to_share(&root.tag, root.readonly).map_err(|e| {
            Failure::setup(format!(
                "cannot boot from the root folder (virtio-fs {}): {e}",
                root.tag
            ))
        })?;
    }
    for m in setup.mounts.iter().filter(|m| m.path != "/") {
        if m.populate && !m.readonly {
            match sys::populate_share(&m.tag, &m.path) {
                Ok(Some(skipped)) => {
                    for path in skipped {
                        say(&format!(
                            "{}: not copied into the new volume (neither a file, a folder nor a link)",
                            path.display()
                        ));
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(Failure::setup(format!(
                        "cannot fill the new volume at {} with the image's files: {e}",
                        m.path
                    )))
                }
            }
        }
        sys::mount_share(&m.tag, &m.path, m.readonly).map_err(|e| {
            Failure::setup(format!(
                "cannot mount the shared folder {} (virtio-fs {}): {e}",
                m.path, m.tag
            ))
        })?;
    }
    if let Some(share) = &setup.files {
        let files: Vec<(&str, &str, bool)> = share
            .files
            .iter()
            .map(|f| (f.name.as_str(), f.path.as_str(), f.readonly))
            .collect();
        sys::mount_files(&share.tag, &files).map_err(|e| {
            Failure::setup(format!(
                "cannot mount the shared files (virtio-fs {}): {e}",
                share.tag
            ))
        })?;
    }
    for t in &setup.tmpfs {
        sys::mount_tmpfs(t)
            .map_err(|e| Failure::setup(format!("cannot mount a tmpfs on {}: {e}", t.path)))?;
    }
    Ok(())
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

fn root_home(root: &Path) -> Option<String> {
    let passwd = fs::read_to_string(root.join("etc/passwd")).ok()?;
    user::resolve("0", &passwd, "").ok()?.home
}

/// The command's environment: the configuration's, plus `PATH`, `HOME`,
/// `HOSTNAME` and `TERM` when it leaves them out.
fn environment(config: &RunConfig, identity: &Identity) -> Vec<String> {
    let mut env = config.env.clone();
    let keys: HashSet<String> = env
        .iter()
        .filter_map(|e| Some(e.split_once('=')?.0.to_string()))
        .collect();
    let mut default = |key: &str, value: &str| {
        if !keys.contains(key) {
            env.push(format!("{key}={value}"));
        }
    };
    default("PATH", DEFAULT_PATH);
    default("HOME", identity.home.as_deref().unwrap_or("/"));
    if let Some(name) = &config.hostname {
        default("HOSTNAME", name);
    }
    default("TERM", "linux");
    env
}

/// `name` itself when it holds a `/`, else the first executable file of
/// that name in the command's `PATH` (any execute bit, as root sees it),
/// looked up in the folder `root` and named as seen from it.
fn find_program(root: &Path, name: &str, env: &[String]) -> Result<PathBuf, Failure> {
    let inside = |path: &Path| root.join(path.strip_prefix("/").unwrap_or(path));
    let not_found = || Failure {
        status: STATUS_NOT_FOUND,
        message: format!("{name}: command not found"),
    };
    if name.contains('/') {
        return match fs::metadata(inside(Path::new(name))) {
            Ok(_) => Ok(name.into()),
            Err(_) => Err(not_found()),
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let mut found_but_not_executable = None;
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(name);
        if let Ok(meta) = fs::metadata(inside(&candidate)) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
            found_but_not_executable.get_or_insert(candidate);
        }
    }
    match found_but_not_executable {
        Some(p) => Err(Failure {
            status: STATUS_NOT_EXECUTABLE,
            message: format!("{}: permission denied", p.display()),
        }),
        None => Err(not_found()),
    }
}

pub(crate) fn spawn_failure(name: &str, e: &std::io::Error) -> Failure {
    let status = match e.raw_os_error() {
        Some(libc::ENOENT) => STATUS_NOT_FOUND,
        Some(libc::EACCES | libc::ENOEXEC | libc::EISDIR | libc::EPERM) => STATUS_NOT_EXECUTABLE,
        _ => STATUS_SETUP_FAILED,
    };
    let message = match status {
        STATUS_NOT_FOUND => format!("{name}: command not found ({e})"),
        STATUS_NOT_EXECUTABLE => format!("{name}: cannot execute: {e}"),
        _ => format!("cannot start {name}: {e}"),
    };
    Failure { status, message }
}
