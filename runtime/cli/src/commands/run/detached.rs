//! `husk run -d`: the user's side (check, build, make the VM's folder,
//! start the keeper, wait for its word) and the keeper's (the same
//! command line again, in the background: see `crate::vms::keeper`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use appliance_spec::{Appliance, ImageFormat};

use super::{plan, Args, Plan, DEFAULT_CID};
use crate::vms::{self, keeper, VmDir};

/// A built image, as `husk run -d` hands it to its keeper and VM (in
/// [`BUILT_ENV`]) so that they do not look it up in the cache again.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub(super) path: PathBuf,
    pub(super) format: ImageFormat,
}

const BUILT_ENV: &str = "HUSK_BUILT_IMAGE";

impl BuiltImage {
    fn to_env(&self) -> std::ffi::OsString {
        let mut v = std::ffi::OsString::from(match self.format {
            ImageFormat::Ext4 => "ext4:",
            ImageFormat::Initramfs => "initramfs:",
        });
        v.push(&self.path);
        v
    }
}

/// The image a detaching `husk run` built, in a keeper or its VM.
pub(super) fn handed_down() -> anyhow::Result<Option<BuiltImage>> {
    if keeper::from_env(keeper::KEEPER_ENV).is_none() && keeper::from_env(keeper::VM_ENV).is_none()
    {
        return Ok(None);
    }
    let Some(value) = std::env::var_os(BUILT_ENV) else {
        return Ok(None);
    };
    let value = value.to_string_lossy();
    let (format, path) = match value.split_once(':') {
        Some(("ext4", p)) => (ImageFormat::Ext4, p),
        Some(("initramfs", p)) => (ImageFormat::Initramfs, p),
        _ => anyhow::bail!("{BUILT_ENV}={value}: not FORMAT:PATH"),
    };
    Ok(Some(BuiltImage {
        path: path.into(),
        format,
    }))
}

/// A detached VM's vsock: the appliance's own, else one in its folder
/// (the guest agent's way in).
pub(super) fn detached_vsock(plan: &Plan, vm: &VmDir) -> (u32, PathBuf) {
    plan.vsock
        .clone()
        .unwrap_or_else(|| (DEFAULT_CID, vm.vsock()))
}

/// A detached appliance's root keeps its writes across its runs (its
/// restarts, `husk start`), as a container's writable layer does until
/// `husk rm`: in its folder, `root.upper` and its journal (see
/// `vmm::disk`), with `root.base` naming the build of the image they were
/// written over. A build that differs (the appliance or image changed)
/// is refused while writes are kept. A run that restores a named
/// snapshot goes on from the snapshot's disk each time: nothing is kept.
pub(super) fn keep_root(plan: &mut Plan, vm: &VmDir, from_snapshot: bool) -> anyhow::Result<()> {
    let Some(image) = &plan.image else {
        return Ok(());
    };
    let root = plan
        .disks
        .iter_mut()
        .find(|d| d.path == image.path && d.access == vmm::DiskAccess::Overlay);
    let (Some(root), false) = (root, from_snapshot) else {
        return Ok(());
    };
    let upper = vm.dir.join("root.upper");
    let base = vm.dir.join("root.base");
    // The builder's digest of the image (builds are reproducible: the same
    // inputs give the same bytes), else the file's identity.
    let build = match builder::images::digest_of(&image.path) {
        Some(digest) => digest,
        None => super::warm::file_id(&image.path)?,
    };
    match std::fs::read_to_string(&base) {
        Ok(kept) if kept == build => {}
        Ok(_) if vmm::disk::has_kept_writes(&upper) => anyhow::bail!(
            "{} keeps what its earlier runs wrote to its root, over another build of its \
             image ({}): the appliance or image changed since. husk rm {} and run it again \
             to use this build (data that must outlive that belongs in a volume: -v NAME:/PATH)",
            vm.name,
            image.path.display(),
            vm.name
        ),
        _ => {
            for stale in [upper.clone(), vmm::disk::journal_path(&upper)] {
                if let Err(e) = std::fs::remove_file(&stale) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        return Err(e)
                            .with_context(|| format!("cannot remove {}", stale.display()));
                    }
                }
            }
            vms::write_file(&base, &build)
                .with_context(|| format!("cannot write {}", base.display()))?;
        }
    }
    root.upper = Some(upper);
    Ok(())
}

/// What [`detach`] does once the appliance's folder is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Then {
    /// `husk run -d`: start the keeper and wait for its word.
    Start,
    /// `husk create`: record the appliance, stopped and never started.
    Record,
}

/// `husk run -d` (or `husk create`) as the user typed it: checks and
/// builds, makes the VM's folder, then starts the keeper and waits for its
/// word, or only records it.
pub(super) fn detach(args: &Args, then: Then) -> anyhow::Result<ExitCode> {
    if args.target.is_none() {
        anyhow::bail!("-d runs an appliance or an image in the background: name one");
    }
    let name = match &args.name {
        Some(n) => n.clone(),
        None => vms::random_name(),
    };
    vms::check_name(&name)?;
    let root = vms::root()?;
    let vm = VmDir::at(&root, &name);
    // Its sockets live in its folder: their paths must fit a socket
    // address (with `_PORT` after the vsock one).
    if vm.vsock().as_os_str().len() > vmm::vsock::MAX_UDS {
        anyhow::bail!(
            "{}: too long a path for the appliance's sockets (at most {} bytes): \
             choose a shorter --name",
            vm.vsock().display(),
            vmm::vsock::MAX_UDS
        );
    }
    let plan = plan(args)?;
    if args.wait_ready {
        ready_check(args, &plan)?;
    }
    health_check(args, &plan)?;
    super::labels(args, None)?;
    // The command line the keeper runs (and husk start again), read now.
    let mut typed = std::env::args_os()
        .skip(1)
        .map(|a| {
            a.into_string().map_err(|a| {
                anyhow::anyhow!(
                    "{a:?} is not UTF-8: a detached appliance's command line is kept as text"
                )
            })
        })
        .collect::<anyhow::Result<Vec<String>>>()?;
    // husk create's line is husk run -d's.
    if then == Then::Record {
        typed[0] = "run".to_string();
        let given: Vec<std::ffi::OsString> = typed[1..].iter().map(Into::into).collect();
        if !crate::says_detach(&given) {
            typed.insert(1, "-d".to_string());
        }
    }
    let typed = super::recorded::with_label_files_read(&typed)?;
    let typed = super::recorded::without_cidfile(&typed)?;
    let mut recorded: Vec<std::ffi::OsString> = super::recorded::with_volumes_from_read(&typed)?
        .into_iter()
        .map(Into::into)
        .collect();
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    // The user's alone: its log and sockets are nobody else's business.
    let made = std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&vm.dir);
    if let Err(e) = made {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            let running = vm
                .current_state()
                .map_or(true, |s| s.status != vms::Status::Exited);
            if running {
                anyhow::bail!(
                    "the name {name:?} is in use by a running appliance: \
                     husk stop {name}, or choose another --name"
                );
            }
            anyhow::bail!(
                "the name {name:?} is taken by an appliance that has exited: \
                 husk rm {name} first, or choose another --name"
            );
        }
        return Err(e).with_context(|| format!("cannot create {}", vm.dir.display()));
    }
    if let Some(path) = &args.cidfile {
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, name.as_bytes()));
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&vm.dir);
            return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                anyhow::anyhow!(
                    "--cidfile {}: the file exists; remove it (another appliance may have \
                     written it)",
                    path.display()
                )
            } else {
                anyhow::Error::new(e).context(format!("--cidfile {}", path.display()))
            });
        }
    }
    let image = plan.image.clone();
    // Its anonymous volumes, named here, are on the keeper's command line
    // (the one husk start runs again): each start mounts the same ones.
    let named = plan
        .new_anonymous
        .iter()
        .flat_map(|(name, path)| ["--anonymous-volume".into(), format!("{name}:{path}").into()]);
    recorded.splice(1..1, named);
    let cwd = std::env::current_dir().context("the current folder")?;
    if then == Then::Record {
        let recorded: Vec<String> = recorded
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let state = created(args, &plan, &name, recorded, cwd);
        let written = state.and_then(|s| Ok(vm.write_state(&s)?));
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&vm.dir);
            return Err(e);
        }
        println!("{name}");
        return Ok(ExitCode::SUCCESS);
    }
    drop(plan);
    start_keeper(&vm, &recorded, &cwd, image.as_ref())
}

/// The state of an appliance `husk create` made: stopped and never
/// started, with the command line `husk start` runs and what `ps`,
/// `volume` and `network` read of it.
fn created(
    args: &Args,
    plan: &super::Plan,
    name: &str,
    recorded: Vec<String>,
    cwd: std::path::PathBuf,
) -> anyhow::Result<vms::State> {
    let appliance = plan.appliance.as_deref();
    Ok(vms::State {
        name: name.to_string(),
        image: args.target.clone().unwrap_or_default(),
        args: recorded,
        cwd: Some(cwd),
        ports: Vec::new(),
        created_ms: vms::now_ms(),
        status: vms::Status::Exited,
        started_ms: None,
        finished_ms: None,
        exit_code: None,
        keeper_pid: 0,
        keeper_start: 0,
        restart: args
            .restart
            .unwrap_or_else(|| default_restart(args, appliance))
            .recorded(),
        restart_count: 0,
        paused: false,
        health: None,
        stop_timeout: super::service::stop_timeout(&args.service, appliance.map(|a| &a.run)),
        volumes: plan
            .shares
            .iter()
            .filter_map(|s| s.volume.clone())
            .collect(),
        networks: plan.net.iter().filter_map(|n| n.network.clone()).collect(),
        labels: super::labels(args, plan.image.as_ref().map(|i| i.path.as_path()))?,
        stopped: false,
        config: super::run_config(plan)?,
    })
}

/// Where a keeper's standard streams go.
pub enum KeeperStdio {
    /// `husk run -d`: stdin is /dev/null, stdout and stderr a pipe that
    /// carries its word (and errors before it); then /dev/null.
    Word,
    /// husk-runtime: the keeper keeps the caller's stdin, stdout and
    /// stderr for the held command (or, given a `terminal`, has that as
    /// all three, and as its controlling terminal: it hears of size
    /// changes), and says its word on another pipe.
    Inherit {
        terminal: Option<std::os::fd::OwnedFd>,
    },
}

/// Starts the keeper of `vm` with the `husk` arguments `args` in `cwd`,
/// in a session of its own; the child, and the pipe its word comes on.
pub fn spawn_keeper(
    vm: &VmDir,
    args: &[std::ffi::OsString],
    cwd: &std::path::Path,
    image: Option<&BuiltImage>,
    stdio: KeeperStdio,
    cgroup: Option<&std::path::Path>,
) -> anyhow::Result<(std::process::Child, std::io::PipeReader)> {
    let (from_keeper, to_cli) = std::io::pipe().context("pipe")?;
    let exe = std::env::current_exe().context("cannot locate the husk binary")?;
    let mut command = std::process::Command::new(exe);
    command
        .args(args)
        .current_dir(cwd)
        .env(keeper::KEEPER_ENV, &vm.dir)
        .env_remove(keeper::VM_ENV)
        .env_remove(BUILT_ENV)
        .env_remove(keeper::WORD_FD_ENV);
    // The write end the keeper inherits as fd 3, closed here after the spawn.
    let mut word_end = None;
    let tty = match stdio {
        KeeperStdio::Word => {
            command
                .stdin(std::process::Stdio::null())
                .stdout(to_cli.try_clone().context("pipe")?)
                .stderr(to_cli);
            false
        }
        KeeperStdio::Inherit { terminal } => {
            use std::os::fd::{AsRawFd, OwnedFd};
            let tty = terminal.is_some();
            if let Some(t) = terminal {
                command
                    .stdin(t.try_clone()?)
                    .stdout(t.try_clone()?)
                    .stderr(t);
            }
            // The word's pipe becomes the keeper's fd 3 (dup2 clears its
            // close-on-exec there).
            let word = OwnedFd::from(to_cli);
            let raw = word.as_raw_fd();
            command.env(keeper::WORD_FD_ENV, "3");
            // SAFETY: dup2 (or fcntl) in the forked child, async-signal-safe; `word`
            // outlives the spawn (held in `word_end`).
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                    let ok = if raw == 3 {
                        libc::fcntl(3, libc::F_SETFD, 0) == 0
                    } else {
                        libc::dup2(raw, 3) == 3
                    };
                    if !ok {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            word_end = Some(word);
            tty
        }
    };
    // The keeper leaves this terminal's session, so closing the terminal
    // or ^C here does not reach it.
    in_new_session(&mut command, tty);
    if let Some(dir) = cgroup {
        into_cgroup(&mut command, dir)?;
    }
    if let Some(image) = image {
        command.env(BUILT_ENV, image.to_env());
    }
    let keeper = command.spawn().context("cannot start the keeper")?;
    drop(command);
    drop(word_end);
    Ok((keeper, from_keeper))
}

/// Starts `command` in cgroup `dir` (v2): what it starts stays there.
fn into_cgroup(command: &mut std::process::Command, dir: &std::path::Path) -> anyhow::Result<()> {
    let procs = dir.join("cgroup.procs");
    let procs = std::ffi::CString::new(procs.into_os_string().into_encoded_bytes())
        .context("a cgroup path holds a NUL byte")?;
    // SAFETY: open, write and close in the forked child, async-signal-safe;
    // the closure owns the path it opens.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0": the writing process itself.
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let error = std::io::Error::last_os_error();
            libc::close(fd);
            if written == 1 {
                Ok(())
            } else {
                Err(error)
            }
        });
    }
    Ok(())
}

/// Starts `command` in a session of its own; with `tty`, the terminal on
/// its stdin becomes its controlling terminal (it then hears of size
/// changes: SIGWINCH).
pub fn in_new_session(command: &mut std::process::Command, tty: bool) {
    // SAFETY: setsid(2) and ioctl(TIOCSCTTY) in the forked child, both
    // async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, move || {
            libc::setsid();
            if tty && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Starts the keeper of `vm` with the `husk` arguments `args` in `cwd`
/// and waits for its word: the name printed once the appliance is up.
pub fn start_keeper(
    vm: &VmDir,
    args: &[std::ffi::OsString],
    cwd: &std::path::Path,
    image: Option<&BuiltImage>,
) -> anyhow::Result<ExitCode> {
    let name = &vm.name;
    match launch_keeper(vm, args, cwd, image) {
        Ok(None) => {
            println!("{name}");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Some(code)) => {
            let status = code.map_or("unknown".into(), |c| c.to_string());
            eprintln!("husk: {name} stopped before it was ready (exit status {status}); its console ends with:");
            let tail = vms::log::tail(&vm.log(), Some(20)).unwrap_or_default();
            eprint!("{}", String::from_utf8_lossy(&tail));
            eprintln!("husk: see husk logs {name}; husk rm {name} removes it");
            Ok(ExitCode::from(code.filter(|c| *c != 0).unwrap_or(1)))
        }
        Err(e) => Err(e),
    }
}

/// Starts the keeper of `vm` and waits for its word: `None` once the
/// appliance runs, `Some(status)` when it stopped before (its keeper has
/// ended then). A keeper that failed before it wrote a state leaves no
/// folder behind.
pub fn launch_keeper(
    vm: &VmDir,
    args: &[std::ffi::OsString],
    cwd: &std::path::Path,
    image: Option<&BuiltImage>,
) -> anyhow::Result<Option<Option<u8>>> {
    let (mut keeper, from_keeper) = spawn_keeper(vm, args, cwd, image, KeeperStdio::Word, None)?;
    let word = keeper::await_keeper(from_keeper);
    if !matches!(word, Ok(None)) {
        let _ = keeper.wait();
    }
    if word.is_err() && !vm.state_file().exists() {
        let _ = std::fs::remove_dir_all(&vm.dir);
    }
    word
}

/// What `--wait-ready` waits for: the appliance's `[run.ready]` check,
/// else its health check passing once (tried as often, for 60 s), as
/// compose waits for a healthy service.
fn ready_check(args: &Args, plan: &Plan) -> anyhow::Result<(keeper::Check, Duration)> {
    if let Some(ready) = plan.appliance.as_ref().and_then(|a| a.run.ready.clone()) {
        let check = match (ready.tcp, ready.command) {
            (Some(port), _) => keeper::Check::Tcp(port),
            (None, Some(argv)) => keeper::Check::Command(argv),
            (None, None) => anyhow::bail!("[run.ready] names no check"),
        };
        return Ok((check, Duration::from_secs(ready.timeout.into())));
    }
    match health_check(args, plan)? {
        Some(health) => Ok((health.check, Duration::from_secs(60))),
        None => anyhow::bail!(
            "--wait-ready: the appliance has no [run.ready] check (tcp = PORT or command = \
             [...]) and no health check (--health-cmd, [run.health], the image's HEALTHCHECK)"
        ),
    }
}

/// The health check the keeper runs: `--health-*` over the appliance's;
/// a stop it makes waits the run's stop timeout.
fn health_check(args: &Args, plan: &Plan) -> anyhow::Result<Option<keeper::HealthCheck>> {
    let appliance = plan.appliance.as_deref();
    // The image's HEALTHCHECK, as its build recorded it.
    let recorded = plan
        .image
        .as_ref()
        .and_then(|i| builder::images::run_config_of(&i.path).ok())
        .and_then(|r| r.healthcheck);
    let health = super::service::resolve(
        &args.service,
        appliance.and_then(|a| a.run.health.as_ref()),
        recorded.as_ref(),
    )?;
    if args.restart.is_some() && args.service.health_on_failure == keeper::OnFailure::Restart {
        anyhow::bail!(
            "--health-on-failure restart starts it again itself: drop --restart (or use \
             --health-on-failure kill, after which the restart policy applies)"
        );
    }
    let grace = super::service::stop_timeout(&args.service, appliance.map(|a| &a.run));
    Ok(health.map(|h| keeper::HealthCheck {
        stop_grace: grace.map_or(h.stop_grace, |s| Duration::from_secs(s.into())),
        ..h
    }))
}

/// The restart policy of a `husk run -d` that names none: an appliance
/// that says it is a service (`run.on_exit = "restart"`, what an exported
/// machine does) is started again unless stopped; anything else is not.
fn default_restart(args: &Args, appliance: Option<&Appliance>) -> crate::vms::restart::Policy {
    use crate::vms::restart::Policy;
    let service = !args.rm
        && !args.hold
        && appliance.map(|a| a.run.on_exit) == Some(appliance_spec::OnExit::Restart);
    if service {
        Policy::UnlessStopped
    } else {
        Policy::No
    }
}

/// The keeper's side of `husk run -d`.
pub(super) fn keep(args: &Args, vm: VmDir) -> anyhow::Result<ExitCode> {
    let plan = plan(args)?;
    let appliance = plan.appliance.as_deref();
    let (_, uds) = detached_vsock(&plan, &vm);
    let ready = if args.wait_ready {
        Some(ready_check(args, &plan)?)
    } else {
        None
    };
    let ports = plan
        .net
        .iter()
        .flat_map(|n| &n.ports)
        .map(super::net::published)
        .collect();
    // The host ports chosen for `-p GUEST_PORT`: the VM child and this
    // keeper's restarts publish the same.
    let chosen: Vec<String> = plan.chosen_ports.iter().map(u16::to_string).collect();
    let env = vec![(super::net::CHOSEN_PORTS_ENV, chosen.join(","))];
    let volumes = plan
        .shares
        .iter()
        .filter_map(|s| s.volume.clone())
        .collect();
    let image = args.target.clone().unwrap_or_default();
    let options = keeper::Options {
        ready,
        health: health_check(args, &plan)?,
        stop_timeout: super::service::stop_timeout(&args.service, appliance.map(|a| &a.run)),
        env,
        volumes,
        networks: plan.net.iter().filter_map(|n| n.network.clone()).collect(),
        labels: super::labels(args, plan.image.as_ref().map(|i| i.path.as_path()))?,
        config: super::run_config(&plan)?,
        remove_at_end: args.rm,
        hold: args.hold,
        stdin: args.interactive,
        log: super::service::log_limits(&args.service),
        restart: args
            .restart
            .unwrap_or_else(|| default_restart(args, appliance)),
    };
    drop(plan);
    let code = keeper::keep(vm, uds, image, ports, options)?;
    Ok(ExitCode::from(code))
}

#[cfg(test)]
mod tests {
    use crate::vms::restart::Policy;

    #[test]
    fn a_service_appliance_restarts_unless_stopped_by_default() {
        let dir = tempfile::tempdir().unwrap();
        // The file the appliance adds (only looked at, not built).
        std::fs::write(dir.path().join("hello"), "").unwrap();
        let app = |name: &str, on_exit: &str| {
            let path = dir.path().join(name);
            let text = std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../examples/hello/appliance.toml"),
            )
            .unwrap()
            .replace("[run]\n", &format!("[run]\n{on_exit}\n"));
            std::fs::write(&path, text).unwrap();
            path.to_string_lossy().into_owned()
        };
        let service = app("service.toml", "on_exit = \"restart\"");
        let plain = app("plain.toml", "");
        let policy = |args: &[&str]| {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            let args = crate::parse_run_args(&args).unwrap();
            args.restart.unwrap_or_else(|| {
                let target = super::super::Target::parse(args.target.as_deref().unwrap()).unwrap();
                super::default_restart(&args, target.appliance())
            })
        };
        assert_eq!(policy(&["run", "-d", &service]), Policy::UnlessStopped);
        assert_eq!(policy(&["run", "-d", "--rm", &service]), Policy::No);
        assert_eq!(
            policy(&["run", "-d", "--restart", "no", &service]),
            Policy::No
        );
        assert_eq!(policy(&["run", "-d", &plain]), Policy::No);
        assert_eq!(
            policy(&["run", "-d", "--restart", "on-failure:5", &plain]),
            Policy::OnFailure { max: Some(5) }
        );
        assert_eq!(policy(&["run", "-d", "oci:/nowhere"]), Policy::No);
    }
}
