//! husk-runtime with `--systemd-cgroup` on a host that systemd runs, as
//! podman and docker drive it there: the VM's cgroup is a scope systemd
//! makes. The bed's init is not systemd, so the test starts one: systemd
//! as PID 1 of its own PID, mount and cgroup namespaces (in a cgroup of
//! its own, with its own `/run` and system bus), and runs husk-runtime
//! inside them with `nsenter`, where systemd's pids are the runtime's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::Failed;

use super::super::detached::tree;
use super::super::network::gone;
use super::{all_in_cgroup, expect_state, vm_limits, Runtime, CGROUP_ROOT};

/// systemd as PID 1 of namespaces of its own, with dbus; killed (and its
/// cgroup removed) on drop.
struct SystemdHost {
    /// `unshare`, whose child is systemd.
    unshare: Child,
    /// systemd's pid here.
    pid: u32,
    /// Its cgroup here: the root of its cgroup namespace.
    cgroup: PathBuf,
    log: PathBuf,
}

/// What the namespaces' first process does before it becomes systemd:
/// says the namespaces are made, waits until `unshare` has left their
/// cgroup (a cgroup with a process of its own cannot hand controllers
/// down to systemd's), makes its own /proc, cgroup mount (rooted at its
/// cgroup) and /run. Its target starts only the system bus (dbus), with
/// no default dependencies: they would pull in sysinit.target, whose
/// tmpfiles would empty the bed's shared /tmp.
const BECOME_SYSTEMD: &str = r#"set -e
: > "$HUSK_TEST_MADE"
while [ ! -e "$HUSK_TEST_RELEASED" ]; do sleep 0.05; done
mount -t proc proc /proc
umount /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs -o mode=755 run /run
u=/run/systemd/system
mkdir -p $u/dbus.service.d $u/dbus.socket.d
printf '[Unit]\nDescription=husk test host\nWants=dbus.service\n' > $u/husk-test.target
for d in dbus.service.d dbus.socket.d; do
  printf '[Unit]\nDefaultDependencies=no\n' > $u/$d/bare.conf
done
exec env container=husk-test /lib/systemd/systemd --unit=husk-test.target --log-target=console
"#;

impl SystemdHost {
    fn start(log: PathBuf) -> Result<SystemdHost, Failed> {
        for tool in [
            "/lib/systemd/systemd",
            "/usr/bin/busctl",
            "/usr/bin/dbus-daemon",
        ] {
            if !Path::new(tool).exists() {
                return Err(format!("{tool} is missing: install systemd and dbus").into());
            }
        }
        let cgroup =
            Path::new(CGROUP_ROOT).join(format!("husk-test-systemd-{}", std::process::id()));
        std::fs::create_dir(&cgroup)
            .map_err(|e| format!("cannot make cgroup {}: {e}", cgroup.display()))?;
        let procs = cgroup.join("cgroup.procs");
        let out = std::fs::File::create(&log)?;
        let released = log.with_extension("released");
        let made = log.with_extension("made");
        let mut command = Command::new("unshare");
        command
            .env("HUSK_TEST_MADE", &made)
            .env("HUSK_TEST_RELEASED", &released)
            .args([
                "--pid",
                "--fork",
                "--mount",
                "--cgroup",
                "--propagation",
                "private",
            ])
            .args(["--", "bash", "-c", BECOME_SYSTEMD])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // The namespace's cgroup root is the one unshare is in.
        let procs = std::ffi::CString::new(procs.into_os_string().into_encoded_bytes())?;
        // SAFETY: open, write and close in the forked child, all
        // async-signal-safe; the closure owns the path.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
        let mut unshare = command.spawn()?;
        // Once the namespaces are made (the cgroup namespace's root is
        // where unshare was then), unshare itself goes back to the root
        // cgroup; then its child may become systemd.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !made.exists() {
            if unshare.try_wait()?.is_some() || Instant::now() > deadline {
                let _ = unshare.kill();
                let _ = unshare.wait();
                let _ = std::fs::remove_dir(&cgroup);
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("unshare did not make the namespaces: {log}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let back = std::fs::write(
            Path::new(CGROUP_ROOT).join("cgroup.procs"),
            unshare.id().to_string(),
        );
        let flag = std::fs::write(&released, "");
        let mut host = SystemdHost {
            pid: 0,
            unshare,
            cgroup,
            log,
        };
        back.map_err(|e| format!("cannot move unshare out of {}: {e}", host.cgroup.display()))?;
        flag?;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if host.pid == 0 {
                host.pid = super::super::network::children(host.unshare.id())
                    .first()
                    .copied()
                    .unwrap_or(0);
            }
            if host.pid != 0
                && host
                    .busctl(&["list", "--acquired"])
                    .is_ok_and(|l| l.contains("org.freedesktop.systemd1"))
            {
                return Ok(host);
            }
            if let Some(status) = host.unshare.try_wait()? {
                return Err(format!("systemd ended ({status}): {}", host.log_tail()).into());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "systemd and its bus were not up in 90 s: {}",
                    host.log_tail()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The command line prefix that runs a program in systemd's namespaces.
    fn under(&self) -> Vec<std::ffi::OsString> {
        [
            "nsenter",
            "--target",
            &self.pid.to_string(),
            "--pid",
            "--mount",
            "--cgroup",
            "--",
        ]
        .iter()
        .map(Into::into)
        .collect()
    }

    /// `program` with `args` in systemd's namespaces: its stdout, or its
    /// stderr as the error.
    fn run(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let under = self.under();
        let out = Command::new(&under[0])
            .args(&under[1..])
            .arg(program)
            .args(args)
            .env("SYSTEMD_IGNORE_CHROOT", "1")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn busctl(&self, args: &[&str]) -> Result<String, String> {
        self.run("busctl", &[&["--system", "--no-pager"], args].concat())
    }

    /// Whether systemd has `unit` loaded.
    fn has_unit(&self, unit: &str) -> bool {
        let path = [
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
        ];
        self.busctl(
            &[
                &["call", "org.freedesktop.systemd1"],
                &path[..],
                &["GetUnit", "s", unit],
            ]
            .concat(),
        )
        .is_ok()
    }

    /// systemd's properties `names` of `unit`, as `systemctl show` gives them.
    fn show(&self, unit: &str, names: &str) -> Result<String, Failed> {
        Ok(self.run("systemctl", &["show", "-p", names, unit])?)
    }

    /// The pid here of process `inner` of systemd's namespace.
    fn outer_pid(&self, inner: u32) -> Result<u32, Failed> {
        let ns = std::fs::read_link(format!("/proc/{}/ns/pid", self.pid))?;
        for e in std::fs::read_dir("/proc")?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if std::fs::read_link(format!("/proc/{pid}/ns/pid"))
                .ok()
                .as_ref()
                != Some(&ns)
            {
                continue;
            }
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:"));
            if nspid.and_then(|l| l.split_whitespace().last()) == Some(&inner.to_string()) {
                return Ok(pid);
            }
        }
        Err(format!("no process {inner} in systemd's namespace").into())
    }

    /// Scopes left anywhere under systemd's cgroup but its own and dbus's.
    fn scopes(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut dirs = vec![self.cgroup.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.ends_with(".scope") && name != "init.scope" {
                        found.push(name);
                    }
                    dirs.push(e.path());
                }
            }
        }
        found
    }

    /// Kills systemd (and so everything in its PID namespace) and removes
    /// its cgroups, deepest first; what is left is an error.
    fn stop(&mut self) -> Result<(), Failed> {
        if self.pid != 0 {
            // SAFETY: kill(2) of systemd, PID 1 of a namespace this test made.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
            self.pid = 0;
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        let mut all = vec![self.cgroup.clone()];
        let mut i = 0;
        while i < all.len() {
            for e in std::fs::read_dir(&all[i]).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    all.push(e.path());
                }
            }
            i += 1;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for dir in all.iter().rev() {
            while let Err(e) = std::fs::remove_dir(dir) {
                if e.kind() == std::io::ErrorKind::NotFound {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("cannot remove cgroup {}: {e}", dir.display()).into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

impl Drop for SystemdHost {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

pub(super) fn scopes() -> Result<(), Failed> {
    // podman's store (and its cache's tmpfs) made before systemd's
    // namespaces, which then see them.
    let podman = super::Podman::new()?;
    let mut rt = Runtime::new()?;
    let mut host = SystemdHost::start(rt.root.path().join("systemd.log"))?;
    rt.under = host.under();
    rt.systemd = true;
    let scope_dir = |unit: &str| host.cgroup.join("machine.slice").join(unit);

    // A path not in systemd's form is refused before anything is made.
    let bad = rt.bundle("bad", "true")?;
    let config = std::fs::read_to_string(bad.join("config.json"))?
        .replace("machine.slice:libpod:bad", "/machine/bad");
    std::fs::write(bad.join("config.json"), config)?;
    let (ok, _, err) = rt.run(&["create", "--bundle", &bad.to_string_lossy(), "bad"])?;
    if ok || !err.contains("are named \"slice:prefix:name\"") || rt.state_dir().join("bad").exists()
    {
        return Err(format!("create with cgroupsPath /machine/bad: ok={ok}, {err:?}").into());
    }

    // The VM's processes are in scope libpod-sd1.scope in machine.slice,
    // delegated, with the VM's limits; the container runs and exits.
    let script = "echo ready; read line; echo \"got $line\"; exit 5";
    let bundle = rt.bundle("sd1", script)?;
    let mut c = rt.create("sd1", &bundle)?;
    expect_state(&rt, "sd1", "created")?;
    let keeper = host.outer_pid(c.pid)?;
    let processes = tree(keeper);
    let dir = scope_dir("libpod-sd1.scope");
    all_in_cgroup(&processes, &dir)?;
    vm_limits(&dir, 256, 1)?;
    let shown = host.show("libpod-sd1.scope", "ActiveState,Delegate,Slice")?;
    for want in ["ActiveState=active", "Delegate=yes", "Slice=machine.slice"] {
        if !shown.contains(want) {
            return Err(format!("systemd shows libpod-sd1.scope as {shown:?}, not {want}").into());
        }
    }
    // ps lists the scope's processes.
    let listed: Vec<u32> = serde_json::from_str(&rt.ok(&["ps", "--format", "json", "sd1"])?)?;
    if listed.len() < processes.len() {
        return Err(format!(
            "ps lists {listed:?} for the VM's {} processes",
            processes.len()
        )
        .into());
    }
    rt.ok(&["start", "sd1"])?;
    c.wait_for("ready", Duration::from_secs(60))?;
    std::io::Write::write_all(c.reaper.stdin.as_mut().ok_or("stdin")?, b"hello\n")?;
    let (code, out, err) = c.finish(Duration::from_secs(60))?;
    if code != 5 || !out.contains("got hello") {
        return Err(format!("sd1: status {code} (want 5), stdout {out:?}, stderr {err:?}").into());
    }
    rt.ok(&["delete", "sd1"])?;
    scope_gone(&host, &dir, "libpod-sd1.scope", &processes)?;

    // kill -9 of the keeper: delete kills what it left (the VMM) and
    // stops the scope.
    let bundle = rt.bundle("sd2", "echo ready; while true; do sleep 1; done")?;
    let c = rt.create("sd2", &bundle)?;
    rt.ok(&["start", "sd2"])?;
    c.wait_for("ready", Duration::from_secs(60))?;
    let keeper = host.outer_pid(c.pid)?;
    let processes = tree(keeper);
    // SAFETY: kill(2) of the keeper this test started.
    unsafe { libc::kill(keeper as libc::pid_t, libc::SIGKILL) };
    rt.ok(&["delete", "--force", "sd2"])?;
    scope_gone(
        &host,
        &scope_dir("libpod-sd2.scope"),
        "libpod-sd2.scope",
        &processes,
    )?;
    // The reaper saw its container killed.
    let _ = c.finish(Duration::from_secs(30));

    podman_in_scopes(&host, &podman)?;
    shim_in_scopes(&host)?;

    let left = host.scopes();
    if !left.is_empty() {
        return Err(format!("scopes left under systemd: {left:?}").into());
    }
    let cgroup = host.cgroup.clone();
    host.stop()?;
    if cgroup.exists() {
        return Err(format!("{} is left", cgroup.display()).into());
    }
    Ok(())
}

/// podman with its systemd cgroup manager (its default where systemd
/// runs) passes `--systemd-cgroup` and `machine.slice:libpod:ID`: the
/// container's VM is in scope libpod-ID.scope, which `podman rm -f` ends.
fn podman_in_scopes(host: &SystemdHost, p: &super::Podman) -> Result<(), Failed> {
    let podman = |args: &[&str]| -> Result<String, Failed> {
        let base = p.command();
        let under = host.under();
        let mut c = Command::new(&under[0]);
        c.args(&under[1..])
            .arg(base.get_program())
            .args(base.get_args())
            .args(["--cgroup-manager", "systemd"])
            .args(args)
            .stdin(Stdio::null());
        for (k, v) in base.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        let out = c.output()?;
        if !out.status.success() {
            return Err(format!(
                "podman {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let id = podman(&[
        "run",
        "-d",
        "--network",
        "none",
        "husk-test-busybox",
        "sh",
        "-c",
        "while true; do sleep 1; done",
    ])?;
    let inner: u32 = podman(&["inspect", "--format", "{{.State.Pid}}", &id])?.parse()?;
    let keeper = host.outer_pid(inner)?;
    let processes = tree(keeper);
    let unit = format!("libpod-{id}.scope");
    let dir = host.cgroup.join("machine.slice").join(&unit);
    let checked = all_in_cgroup(&processes, &dir).and_then(|()| vm_limits(&dir, 256, 1));
    podman(&["rm", "-f", &id])?;
    checked?;
    scope_gone(host, &dir, &unit, &processes)
}

/// The shim with a spec whose cgroupsPath has systemd's form (CRI's with
/// `SystemdCgroup`; here `ctr run --cgroup`): the pod's VM is in the
/// scope systemd makes, which goes with the task.
fn shim_in_scopes(host: &SystemdHost) -> Result<(), Failed> {
    let c = boot_tests::containerd::Containerd::start_under(&host.under())?;
    let checked = (|| -> Result<(), Failed> {
        let run = c.run(
            "io.containerd.husk.v2",
            &["-d", "--cgroup", "machine.slice:ctr:sdc1"],
            "sdc1",
            &["sleep", "1000"],
        );
        c.ok(run, "ctr run -d --cgroup machine.slice:ctr:sdc1")?;
        c.wait_status("sdc1", "RUNNING")?;
        let dir = host.cgroup.join("machine.slice/ctr-sdc1.scope");
        let procs: Vec<u32> = std::fs::read_to_string(dir.join("cgroup.procs"))
            .map_err(|e| c.with_log(&format!("the pod's scope {}: {e}", dir.display())))?
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect();
        // The keeper, the jail's supervisor and the VMM at least.
        let max = std::fs::read_to_string(dir.join("memory.max")).unwrap_or_default();
        if procs.len() < 3 || max.trim().parse::<u64>().is_err() {
            return Err(format!("the pod's scope holds {procs:?}, memory.max {max:?}").into());
        }
        let shown = host.show("ctr-sdc1.scope", "ActiveState,Delegate")?;
        if !shown.contains("ActiveState=active") || !shown.contains("Delegate=yes") {
            return Err(format!("systemd shows ctr-sdc1.scope as {shown:?}").into());
        }
        c.remove("sdc1")?;
        scope_gone(host, &dir, "ctr-sdc1.scope", &procs)
    })();
    // containerd ends in systemd's namespace (nsenter, its parent here,
    // passes it no signal).
    let _ = host.run("pkill", &["-x", "containerd"]);
    checked
}

/// After `delete`: no process of the VM, no scope folder, no unit.
fn scope_gone(host: &SystemdHost, dir: &Path, unit: &str, processes: &[u32]) -> Result<(), Failed> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive: Vec<&u32> = processes.iter().filter(|p| !gone(**p)).collect();
        let done = alive.is_empty() && !dir.exists() && !host.has_unit(unit);
        if done {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "after delete: processes {alive:?} alive, {} there: {}, unit {unit} loaded: {}",
                dir.display(),
                dir.exists(),
                host.has_unit(unit)
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
