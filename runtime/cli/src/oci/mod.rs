//! `husk-runtime`: runc's command line over husk's detached VMs, so the
//! container tools that drive runc (podman and conmon, docker, containerd's
//! runc shim) run each container in a micro-VM.
//!
//! A container is a detached VM (`crate::vms`) under `--root`, booted by
//! `create` with its command held (`husk run -d --hold`), its root the
//! bundle's `rootfs/` through virtio-fs. The pid `create` writes to
//! `--pid-file` is the VM's keeper: it stays as long as the container,
//! relays the command's stdin, stdout and stderr (or its terminal) to the
//! streams `create` was given, and exits with the command's status, so
//! conmon or the shim reap it as they would runc's container process.
//! `start` hands the command to the guest agent through the keeper;
//! `kill` signals it there; `delete` removes what is left.

mod args;
pub(crate) mod bundle;
mod cgroup;
mod hooks;
pub(crate) mod host_cgroup;
mod log;
pub(crate) mod netns;
pub(crate) mod resources;
pub(crate) mod seccomp;
pub(crate) mod systemd_scope;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::commands::run::{spawn_keeper, KeeperStdio};
use crate::commands::stop::parse_signal;
use crate::vms::control::{Control, Request};
use crate::vms::{self, keeper, State, Status, VmDir};
use args::{Cli, Command, CreateArgs, ExecArgs};

/// The OCI runtime specification version husk-runtime implements.
pub const OCI_VERSION: &str = "1.0.2";
/// Where containers live when the caller names no `--root`.
const DEFAULT_ROOT: &str = "/run/husk-runtime";
/// The container's own record beside the VM's `state.json`.
const OCI_FILE: &str = "oci.json";
/// How long `create` waits for the VM to boot and its agent to answer.
const CREATE_TIMEOUT: Duration = Duration::from_secs(180);

/// Set for the process `exec --detach` leaves behind: the process it
/// runs, as the agent's JSON.
const EXEC_ENV: &str = "HUSK_RUNTIME_EXEC";

/// The container's own record: what OCI state reports that the VM's
/// `state.json` does not, and the process `start` hands the guest.
#[derive(Debug, Serialize, Deserialize)]
struct OciRecord {
    bundle: PathBuf,
    rootfs: PathBuf,
    created: String,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
    process: agent::Process,
    /// The network namespace joined (its tap goes at delete): the
    /// caller's, or one husk-runtime made for the spec's hooks to fill.
    #[serde(default)]
    netns: Option<PathBuf>,
    /// `netns` is husk-runtime's own, kept by a bind mount at delete.
    #[serde(default)]
    own_netns: bool,
    #[serde(default)]
    hooks: Option<oci_spec::runtime::Hooks>,
    /// The VM's size, the bounds of an `update`.
    #[serde(default)]
    size: Option<resources::VmSize>,
    /// The container's cgroup on the host, the whole VM in it (see
    /// [`host_cgroup`]); removed at delete. A systemd scope's is known
    /// once systemd has made it.
    #[serde(default)]
    host_cgroup: Option<PathBuf>,
    /// The systemd scope that cgroup is (`--systemd-cgroup`), stopped at
    /// delete.
    #[serde(default)]
    systemd_scope: Option<systemd_scope::Scope>,
}

impl OciRecord {
    /// The OCI state of container `id` as `status` with `pid`.
    fn state(&self, id: &str, status: &'static str, pid: u32) -> OciState {
        OciState {
            oci_version: OCI_VERSION,
            id: id.to_string(),
            status,
            pid,
            bundle: self.bundle.clone(),
            rootfs: self.rootfs.clone(),
            created: self.created.clone(),
            annotations: self.annotations.clone(),
        }
    }

    /// Undoes the container's network: its tap, and a namespace of its
    /// own.
    fn release_net(&self) {
        match (&self.netns, self.own_netns) {
            (Some(ns), true) => netns::release(ns),
            (Some(ns), false) => netns::leave(ns),
            (None, _) => {}
        }
    }
}

/// The file under a container's folder that keeps a network namespace
/// husk-runtime made for it.
const NETNS_FILE: &str = "netns";
/// There while the container is paused (its cgroup in the guest frozen).
const PAUSED_FILE: &str = "paused";

/// OCI state, as `state` prints it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct OciState {
    oci_version: &'static str,
    id: String,
    status: &'static str,
    pid: u32,
    bundle: PathBuf,
    rootfs: PathBuf,
    created: String,
    annotations: std::collections::BTreeMap<String, String>,
}

/// husk-runtime's main: a keeper or VM started by husk-runtime runs as
/// husk (they are husk run's own).
pub fn main() -> ExitCode {
    if keeper::from_env(keeper::KEEPER_ENV).is_some() || keeper::from_env(keeper::VM_ENV).is_some()
    {
        return crate::husk_main();
    }
    let cli = Cli::parse();
    let logger = log::Logger::new(cli.log.clone(), cli.log_format, cli.debug);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            logger.error(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Every VM of this runtime lives under --root; the keepers it starts
    // inherit the setting.
    // SAFETY: set before any thread starts (husk-runtime is single-threaded
    // until here), so no other thread reads the environment meanwhile.
    unsafe { std::env::set_var("HUSK_STATE_DIR", &cli.root) };
    let root = cli.root.as_path();
    match cli.command {
        Command::Create(args) => create(root, args, cli.systemd_cgroup),
        Command::Start { id } => start(root, &id),
        Command::State { id } => {
            let state = oci_state(root, &id)?;
            println!("{}", serde_json::to_string_pretty(&state)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Kill { id, signal, .. } => kill(root, &id, &signal),
        Command::Delete { force, id } => delete(root, &id, force),
        Command::List { format, quiet } => list(root, &format, quiet),
        Command::Ps { format, id } => ps(root, &id, &format),
        Command::Features => {
            println!("{}", serde_json::to_string_pretty(&features())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Pause { id } => cgroup::pause(root, &id, true),
        Command::Resume { id } => cgroup::pause(root, &id, false),
        Command::Update { id, resources } => cgroup::update(root, &id, resources.as_deref()),
        Command::Exec(args) => exec(root, args),
        Command::Events {
            id,
            stats,
            interval,
        } => cgroup::events(root, &id, stats, interval),
    }
}

/// Where container `id`'s VM folder is: `root/ID`, or where that is a
/// symlink to (see [`make_vm_dir`]).
fn vm_dir(root: &Path, id: &str) -> VmDir {
    let link = root.join(id);
    match std::fs::read_link(&link) {
        Ok(target) => VmDir {
            name: target
                .file_name()
                .map_or_else(|| id.to_string(), |n| n.to_string_lossy().into_owned()),
            dir: root.join(target),
        },
        Err(_) => VmDir::at(root, id),
    }
}

/// Short folders for VMs whose `--root` is too long for their sockets.
fn short_base() -> anyhow::Result<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(PathBuf::from("/run/husk-runtime/.vm"));
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => Ok(PathBuf::from(d).join("husk-runtime/.vm")),
        _ => {
            anyhow::bail!("XDG_RUNTIME_DIR is not set: husk-runtime keeps short socket paths there")
        }
    }
}

/// Makes container `id`'s VM folder: `root/ID` itself, or, where a socket
/// path in it would be too long (containerd's and docker's roots with a
/// 64-digit id), a folder under [`short_base`] that `root/ID` links to.
/// An id in use is an error.
fn make_vm_dir(root: &Path, id: &str) -> anyhow::Result<VmDir> {
    use std::os::unix::fs::DirBuilderExt;
    let exists = || anyhow::anyhow!("container {id} already exists");
    let link = root.join(id);
    if link.symlink_metadata().is_ok() {
        return Err(exists());
    }
    std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    let mut private = std::fs::DirBuilder::new();
    private.mode(0o700);
    let vm = VmDir::at(root, id);
    if vm.vsock().as_os_str().len() <= vmm::vsock::MAX_UDS {
        return match private.create(&vm.dir) {
            Ok(()) => Ok(vm),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(exists()),
            Err(e) => Err(e).with_context(|| format!("cannot create {}", vm.dir.display())),
        };
    }
    let base = short_base()?;
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    let short = loop {
        let short = VmDir::at(&base, &vms::random_name());
        match private.create(&short.dir) {
            Ok(()) => break short,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create {}", short.dir.display()))
            }
        }
    };
    if let Err(e) = std::os::unix::fs::symlink(&short.dir, &link) {
        let _ = std::fs::remove_dir(&short.dir);
        return match e.kind() {
            std::io::ErrorKind::AlreadyExists => Err(exists()),
            _ => Err(e).with_context(|| format!("cannot create {}", link.display())),
        };
    }
    Ok(short)
}

/// Removes container `id`'s VM folder and the link to it, if any.
fn remove_vm_dir(root: &Path, id: &str, vm: &VmDir) -> std::io::Result<()> {
    std::fs::remove_dir_all(&vm.dir)?;
    let link = root.join(id);
    if link
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        std::fs::remove_file(link)?;
    }
    Ok(())
}

/// A container known under `root`: its VM folder.
fn container(root: &Path, id: &str) -> anyhow::Result<VmDir> {
    vms::check_name(id).with_context(|| format!("container id {id:?}"))?;
    let vm = vm_dir(root, id);
    if !vm.dir.join(OCI_FILE).is_file() {
        anyhow::bail!("container {id} does not exist (under {})", root.display());
    }
    Ok(vm)
}

fn record(vm: &VmDir) -> anyhow::Result<OciRecord> {
    let path = vm.dir.join(OCI_FILE);
    let text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{} is damaged", path.display()))
}

fn create(root: &Path, args: CreateArgs, systemd_cgroup: bool) -> anyhow::Result<ExitCode> {
    let id = &args.id;
    vms::check_name(id).with_context(|| format!("container id {id:?}"))?;
    if args.preserve_fds > 0 {
        anyhow::bail!(
            "--preserve-fds {}: a descriptor of the host cannot be passed into a VM",
            args.preserve_fds
        );
    }
    let launch = bundle::load(&args.bundle)?;
    let vm = make_vm_dir(root, id)?;
    // The keeper finds its VM's folder as `husk run -d --name` does.
    if let Some(parent) = vm.dir.parent() {
        // SAFETY: husk-runtime has one thread until the keeper starts.
        unsafe { std::env::set_var("HUSK_STATE_DIR", parent) };
    }
    // Whatever fails from here leaves nothing: the folder goes.
    let made = create_in(&vm, &args, launch, systemd_cgroup);
    if made.is_err() {
        if let Ok(r) = record(&vm) {
            r.release_net();
            let _ = host_cgroup::remove_all(r.host_cgroup.as_deref(), r.systemd_scope.as_ref());
        }
        let _ = remove_vm_dir(root, id, &vm);
    }
    made
}

fn create_in(
    vm: &VmDir,
    args: &CreateArgs,
    launch: bundle::Launch,
    systemd_cgroup: bool,
) -> anyhow::Result<ExitCode> {
    let mut before_boot = launch
        .hooks
        .as_ref()
        .map(hooks::before_boot)
        .unwrap_or_default();
    // A new namespace asked for without a path is made here when hooks
    // run before the boot: they may put the container's interface in it.
    let own_netns = launch.network == bundle::Network::None && !before_boot.is_empty();
    let placement =
        host_cgroup::for_container(launch.cgroups_path.as_deref(), &args.id, systemd_cgroup)?;
    let mut record = OciRecord {
        bundle: launch.bundle.clone(),
        rootfs: launch.rootfs.clone(),
        created: log::rfc3339(std::time::SystemTime::now()),
        annotations: launch.annotations.clone(),
        process: launch.process.clone(),
        netns: match &launch.network {
            bundle::Network::Join(path) => Some(path.clone()),
            _ if own_netns => Some(vm.dir.join(NETNS_FILE)),
            _ => None,
        },
        own_netns,
        hooks: launch.hooks.clone(),
        size: Some(launch.size),
        host_cgroup: placement
            .as_ref()
            .and_then(|p| p.dir())
            .map(Path::to_path_buf),
        systemd_scope: placement.as_ref().and_then(|p| p.scope()).cloned(),
    };
    let record_at = vm.dir.join(OCI_FILE);
    crate::vms::write_file(&record_at, serde_json::to_vec_pretty(&record)?)?;
    bundle::mount_points(&launch.rootfs)?;
    let tty = launch.process.tty;
    // A terminal: its master goes to the caller's socket; its slave is the
    // keeper's stdin, stdout and stderr.
    let slave = match (&args.console_socket, tty) {
        (Some(socket), true) => Some(bundle::console(socket)?),
        (None, true) => anyhow::bail!("the process wants a terminal: --console-socket is needed"),
        _ => None,
    };
    let cwd = std::env::current_dir().context("the current folder")?;
    let mut keeper_args: Vec<std::ffi::OsString> = vec!["run".into(), "-d".into()];
    keeper_args.extend(["--name".into(), vm.name.clone().into(), "--hold".into()]);
    // The state the hooks read: this process stands for the container
    // (its namespace is the container's, as the process's is under runc).
    let state = serde_json::to_vec(&record.state(&args.id, "creating", std::process::id()))?;
    let net = match &launch.network {
        bundle::Network::User => "user".to_string(),
        bundle::Network::None if !own_netns => "none".to_string(),
        bundle::Network::None => {
            let ns = vm.dir.join(NETNS_FILE);
            netns::own(&ns)?;
            hooks::run(&std::mem::take(&mut before_boot), &state)?;
            netns::join(&ns)?.unwrap_or_else(|| "none".into())
        }
        bundle::Network::Join(ns) => {
            let net = netns::join(ns)?.unwrap_or_else(|| "none".into());
            // The keeper and its VM start inside the namespace: the tap
            // is opened there.
            netns::enter(ns)?;
            net
        }
    };
    hooks::run(&before_boot, &state)?;
    keeper_args.extend(["--net".into(), net.into()]);
    let cgroup = match &placement {
        Some(p) => {
            let memory = (launch.size.memory_mib << 20) + vmm::jail::MEMORY_ROOM;
            let made = host_cgroup::make(p, memory, launch.size.cpus)?;
            if record.host_cgroup.is_none() {
                record.host_cgroup = Some(made.dir.clone());
                crate::vms::write_file(&record_at, serde_json::to_vec_pretty(&record)?)?;
            }
            keeper_args.push("--keep-cgroup".into());
            Some(made)
        }
        None => None,
    };
    keeper_args.extend(launch.husk_args.iter().map(Into::into));
    // With a terminal, its slave is the keeper's three standard streams.
    let (mut keeper, word) = spawn_keeper(
        vm,
        &keeper_args,
        &cwd,
        None,
        KeeperStdio::Inherit { terminal: slave },
        cgroup.as_ref().map(|c| c.dir.as_path()),
    )?;
    // The keeper is in: a systemd scope's placeholder may go.
    drop(cgroup);
    let pid = keeper.id();
    let waited = await_word(word, CREATE_TIMEOUT);
    match waited {
        Ok(None) => {}
        Ok(Some(code)) => {
            let _ = keeper.wait();
            let tail = vms::log::tail(&vm.log(), Some(20)).unwrap_or_default();
            anyhow::bail!(
                "the container's VM stopped before it was ready (status {}); its console ends with:\n{}",
                code.map_or("unknown".into(), |c| c.to_string()),
                String::from_utf8_lossy(&tail).trim_end()
            );
        }
        Err(e) => {
            let _ = keeper.kill();
            let _ = keeper.wait();
            return Err(e);
        }
    }
    if let Some(path) = &args.pid_file {
        crate::vms::write_file(path, pid.to_string())
            .with_context(|| format!("cannot write --pid-file {}", path.display()))?;
    }
    // The keeper is the container's: whoever reaps it is the caller's
    // subreaper (conmon, the shim), not this process (dropping a Child
    // leaves the process be).
    drop(keeper);
    Ok(ExitCode::SUCCESS)
}

/// The keeper's word, within `timeout`: `Ok(None)` once ready,
/// `Ok(Some(code))` when the VM ended first.
pub(crate) fn await_word(
    word: std::io::PipeReader,
    timeout: Duration,
) -> anyhow::Result<Option<Option<u8>>> {
    await_word_with(word, timeout, |line| eprintln!("{line}"))
}

/// [`await_word`], the keeper's other lines handed to `other`.
pub(crate) fn await_word_with(
    word: std::io::PipeReader,
    timeout: Duration,
    other: impl FnMut(String) + Send + 'static,
) -> anyhow::Result<Option<Option<u8>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(keeper::await_keeper_with(word, other));
    });
    let deadline = Instant::now() + timeout;
    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .map_err(|_| {
            anyhow::anyhow!(
                "the container's VM did not come up within {} s",
                timeout.as_secs()
            )
        })?
}

fn start(root: &Path, id: &str) -> anyhow::Result<ExitCode> {
    let vm = container(root, id)?;
    let state = vm.current_state()?;
    if state.status != Status::Created {
        anyhow::bail!(
            "container {id} is {}: only a created container can be started",
            oci_status(&vm, &state)
        );
    }
    let record = record(&vm)?;
    let mut control = Control::connect(&vm.control(), id)?;
    control.call(&Request::Start {
        process: Box::new(record.process),
    })?;
    // A poststart hook that fails is told, and the container runs on.
    after_hooks(
        root,
        id,
        record.hooks.as_ref().and_then(|h| h.poststart().clone()),
        "poststart",
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `list`, the poststart or poststop hooks of container `id`, with
/// its state now; a failure is a warning (the container has started, or
/// is gone), as with runc.
fn after_hooks(
    root: &Path,
    id: &str,
    list: Option<Vec<oci_spec::runtime::Hook>>,
    kind: &'static str,
) {
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return;
    };
    let ran = oci_state(root, id)
        .and_then(|state| Ok(serde_json::to_vec(&state)?))
        .and_then(|state| {
            let all: Vec<_> = list.iter().map(|h| (kind, h)).collect();
            hooks::run(&all, &state)
        });
    if let Err(e) = ran {
        eprintln!("husk-runtime: warning: container {id}: {e:#}");
    }
}

/// `exec`: the process runs in the guest; here, a process relays its
/// streams and exits with its status (with --detach, one left behind,
/// whose pid goes to --pid-file, for the caller to reap).
fn exec(root: &Path, args: ExecArgs) -> anyhow::Result<ExitCode> {
    let vm = container(root, &args.id)?;
    if let Ok(json) = std::env::var(EXEC_ENV) {
        // The relay that a detached exec left.
        let process: agent::Process = serde_json::from_str(&json).context(EXEC_ENV)?;
        return crate::commands::exec::exec_process(&vm, process);
    }
    let state = vm.current_state()?;
    if state.status != Status::Running {
        anyhow::bail!(
            "container {} is {}, not running",
            args.id,
            oci_status(&vm, &state)
        );
    }
    if vm.dir.join(PAUSED_FILE).exists() {
        // It would join the frozen cgroup and never start (runc refuses it
        // too).
        anyhow::bail!("container {} is paused: resume it first", args.id);
    }
    if args.preserve_fds > 0 {
        anyhow::bail!("--preserve-fds: a descriptor of the host cannot be passed into a VM");
    }
    let mut process = match &args.process {
        Some(path) => {
            let text = std::fs::read(path)
                .with_context(|| format!("cannot read --process {}", path.display()))?;
            let p: oci_spec::runtime::Process = serde_json::from_slice(&text)
                .with_context(|| format!("--process {} is not OCI process JSON", path.display()))?;
            bundle::process(&p).with_context(|| format!("--process {}", path.display()))?
        }
        None => {
            if args.command.is_empty() {
                anyhow::bail!("exec: give a COMMAND or --process FILE");
            }
            agent::Process {
                argv: args.command.clone(),
                env: args.env.clone(),
                cwd: args.cwd.clone(),
                user: args.user.clone(),
                tty: args.tty,
                size: None,
                stdin: !args.tty,
                ..Default::default()
            }
        }
    };
    // The container's seccomp profile holds for everything run in it.
    process.seccomp = record(&vm)?.process.seccomp;
    let slave = match (&args.console_socket, process.tty) {
        (Some(socket), true) => Some(bundle::console(socket)?),
        (None, true) if !std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
            anyhow::bail!("the process wants a terminal: --console-socket is needed")
        }
        _ => None,
    };
    if !args.detach && slave.is_none() {
        return crate::commands::exec::exec_process(&vm, process);
    }
    // A relay: this same program again, with the process in its
    // environment, in a session of its own (with a terminal, the slave as
    // its streams and controlling terminal). Detached, it is left for the
    // caller to reap; otherwise its status is exec's.
    let exe = std::env::current_exe().context("cannot locate husk-runtime")?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("--root")
        .arg(root)
        .args(["exec", &args.id])
        .env(EXEC_ENV, serde_json::to_string(&process)?);
    crate::commands::run::in_new_session(&mut command, slave.is_some());
    if let Some(t) = slave {
        command
            .stdin(t.try_clone()?)
            .stdout(t.try_clone()?)
            .stderr(t);
    }
    let mut child = command.spawn().context("cannot start the exec relay")?;
    drop(command);
    if !args.detach {
        use std::os::unix::process::ExitStatusExt;
        let status = child.wait()?;
        let code = match (status.code(), status.signal()) {
            (Some(c), _) => c as u8,
            (None, Some(signal)) => 128u8.wrapping_add(signal as u8),
            _ => 1,
        };
        return Ok(ExitCode::from(code));
    }
    if let Some(path) = &args.pid_file {
        crate::vms::write_file(path, child.id().to_string())
            .with_context(|| format!("cannot write --pid-file {}", path.display()))?;
    }
    // Not waited for: the caller's subreaper reaps it, as it does the
    // container's process (dropping a Child leaves the process be).
    drop(child);
    Ok(ExitCode::SUCCESS)
}

fn kill(root: &Path, id: &str, signal: &str) -> anyhow::Result<ExitCode> {
    let signal = parse_signal(signal)?;
    let vm = container(root, id)?;
    let state = vm.current_state()?;
    if state.status == Status::Exited {
        anyhow::bail!("container {id} is not running");
    }
    let mut control = Control::connect(&vm.control(), id)?;
    control.call(&Request::Kill { signal })?;
    Ok(ExitCode::SUCCESS)
}

fn delete(root: &Path, id: &str, force: bool) -> anyhow::Result<ExitCode> {
    let vm = container(root, id)?;
    let state = vm.current_state()?;
    match state.status {
        Status::Running | Status::Starting if !force => {
            anyhow::bail!("container {id} is running: stop it first, or delete --force")
        }
        Status::Exited => {}
        _ => {
            // A created container holds no process: it goes as runc's does.
            if let Ok(mut control) = Control::connect(&vm.control(), id) {
                let _ = control.call(&Request::Kill {
                    signal: libc::SIGKILL,
                });
            }
            wait_keeper_gone(&state, Duration::from_secs(10));
        }
    }
    let record = record(&vm).ok();
    if let Some(r) = &record {
        r.release_net();
    }
    let cgroup_dir = record.as_ref().and_then(|r| r.host_cgroup.clone());
    let scope = record.as_ref().and_then(|r| r.systemd_scope.clone());
    // A keeper that was killed took its VM with it (parent-death
    // signals) but left the jail's folder: swept, as `husk rm` does.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        vmm::jail::sweep(vmm::jail::Cgroups::detect().as_ref());
    }
    let poststop = record
        .and_then(|r| r.hooks)
        .and_then(|h| h.poststop().clone());
    after_hooks(root, id, poststop, "poststop");
    let cgroup = host_cgroup::remove_all(cgroup_dir.as_deref(), scope.as_ref());
    remove_vm_dir(root, id, &vm).with_context(|| format!("cannot remove {}", vm.dir.display()))?;
    cgroup?;
    Ok(ExitCode::SUCCESS)
}

/// Waits until the keeper of `state` is gone (its VM then too); a keeper
/// that does not go is killed.
fn wait_keeper_gone(state: &State, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while vms::process_alive(state.keeper_pid, state.keeper_start) {
        if Instant::now() >= deadline {
            // SAFETY: kill(2) of the keeper, checked alive by pid and start
            // time just now.
            unsafe { libc::kill(state.keeper_pid as libc::pid_t, libc::SIGKILL) };
            std::thread::sleep(Duration::from_millis(50));
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn oci_status(vm: &VmDir, state: &State) -> &'static str {
    match state.status {
        Status::Starting => "creating",
        Status::Created => "created",
        Status::Running if vm.dir.join(PAUSED_FILE).exists() => "paused",
        Status::Running => "running",
        // husk-runtime's containers have no restart policy.
        Status::Exited | Status::Restarting => "stopped",
    }
}

fn oci_state(root: &Path, id: &str) -> anyhow::Result<OciState> {
    let vm = container(root, id)?;
    let record = record(&vm)?;
    let state = vm.current_state()?;
    let status = oci_status(&vm, &state);
    let pid = if status == "stopped" {
        0
    } else {
        state.keeper_pid
    };
    Ok(record.state(id, status, pid))
}

fn list(root: &Path, format: &str, quiet: bool) -> anyhow::Result<ExitCode> {
    let mut states = Vec::new();
    if root.is_dir() {
        let mut ids: Vec<String> = std::fs::read_dir(root)
            .with_context(|| format!("cannot read {}", root.display()))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        for id in ids {
            if let Ok(state) = oci_state(root, &id) {
                states.push(state);
            }
        }
    }
    if quiet {
        for s in &states {
            println!("{}", s.id);
        }
    } else if format == "json" {
        println!("{}", serde_json::to_string(&states)?);
    } else if format == "table" {
        println!(
            "{:<20} {:<8} {:<10} {:<40} CREATED",
            "ID", "PID", "STATUS", "BUNDLE"
        );
        for s in &states {
            println!(
                "{:<20} {:<8} {:<10} {:<40} {}",
                s.id,
                s.pid,
                s.status,
                s.bundle.display(),
                s.created
            );
        }
    } else {
        anyhow::bail!("--format {format}: use table or json");
    }
    Ok(ExitCode::SUCCESS)
}

fn ps(root: &Path, id: &str, format: &str) -> anyhow::Result<ExitCode> {
    let state = oci_state(root, id)?;
    // Every process of the VM where it has a cgroup of its own, as runc
    // lists its container's cgroup; else the keeper, which stands for it.
    let in_cgroup = record(&container(root, id)?)?
        .host_cgroup
        .map(|dir| host_cgroup::procs(&dir))
        .unwrap_or_default();
    let pids: Vec<u32> = if in_cgroup.is_empty() {
        (state.pid != 0).then_some(state.pid).into_iter().collect()
    } else {
        in_cgroup
    };
    match format {
        "json" => println!("{}", serde_json::to_string(&pids)?),
        "table" => {
            println!("PID");
            for p in pids {
                println!("{p}");
            }
        }
        other => anyhow::bail!("--format {other}: use table or json"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `features`: what the OCI runtime spec's features document asks.
fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "bind", "rbind"],
        "linux": {
            "namespaces": ["mount", "network", "pid", "ipc", "uts"],
            "capabilities": [],
            "cgroup": { "v1": false, "v2": true, "systemd": true, "systemdUser": true },
            "seccomp": { "enabled": false },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false }
        },
        "annotations": {
            "io.husk.runtime": "micro-VM",
            "io.husk.vm.cpus": "vCPUs of the container's VM",
            "io.husk.vm.memory": "memory of the container's VM (a size, or MiB)"
        }
    })
}
