//! husk-runtime, runc's command line, driven as conmon drives runc: a
//! subreaper (the `oci-reaper` helper) runs `create` with the streams the
//! container gets, waits for the pid in `--pid-file`, and takes its exit
//! status for the container's; `start`, `state`, `kill` and `delete` come
//! from elsewhere. Every test checks that `delete` leaves no process, no
//! folder under `--root`, no virtiofsd, no jail folder and no cgroup.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use boot_tests::containerd::daemon;
use boot_tests::husk::{husk_bin, output_within, HuskRun};
use libtest_mimic::{Failed, Trial};

use super::detached::{nothing_left, tree};
use super::network::ip;
use super::shares::{busybox_root, folder, virtiofsd_serving};

mod systemd;

pub fn trials() -> Vec<Trial> {
    vec![
        boot_tests::trial(
            "runtime_create_start_streams_state_exit_status_and_delete",
            lifecycle,
        ),
        boot_tests::trial(
            "runtime_kill_by_name_pause_resume_update_events_and_delete_force_running",
            kill_and_delete,
        ),
        boot_tests::trial(
            "runtime_100_create_start_kill_delete_cycles_leave_nothing",
            cycles,
        ),
        boot_tests::trial(
            "podman_runs_containers_on_husk_runtime_and_leaves_nothing",
            podman,
        ),
        boot_tests::trial(
            "podman_networks_a_dual_stack_namespace_and_its_own_bridge_with_a_published_port",
            podman_network,
        ),
        boot_tests::trial(
            "docker_and_containerd_run_containers_on_husk_runtime",
            docker_and_containerd,
        ),
        boot_tests::trial(
            "runtime_puts_each_vm_in_a_systemd_scope_for_a_systemd_cgroups_path",
            systemd::scopes,
        ),
    ]
}

/// Where the bed mounts cgroup v2.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// One `--root` and the bundles made in it.
struct Runtime {
    root: tempfile::TempDir,
    bin: PathBuf,
    /// `--root` as deep as containerd's runc shim makes it, so a VM's
    /// socket paths under it would be too long.
    deep: bool,
    /// What husk-runtime (and the reaper) run under: nothing, or `nsenter`
    /// into a systemd host's namespaces.
    under: Vec<std::ffi::OsString>,
    /// `--systemd-cgroup`, with containers' cgroupsPath in systemd's form.
    systemd: bool,
}

impl Runtime {
    fn new() -> Result<Self, Failed> {
        let bin = husk_bin()?.with_file_name("husk-runtime");
        if !bin.is_file() {
            return Err(format!("no {} (cargo build --workspace --bins)", bin.display()).into());
        }
        Ok(Runtime {
            root: folder("oci")?,
            bin,
            deep: false,
            under: Vec::new(),
            systemd: false,
        })
    }

    fn deep() -> Result<Self, Failed> {
        let mut rt = Runtime::new()?;
        rt.deep = true;
        Ok(rt)
    }

    /// The `linux.cgroupsPath` of container `id`: under a parent cgroup
    /// of this runtime's own, removed with it.
    fn cgroups_path(&self, id: &str) -> String {
        if self.systemd {
            // podman's with its systemd cgroup manager.
            return format!("machine.slice:libpod:{id}");
        }
        let own = self.root.path().file_name().unwrap_or_default();
        format!("/{}/{id}", own.to_string_lossy())
    }

    /// Container `id`'s cgroup on the host (the bed's cgroup v2).
    fn cgroup(&self, id: &str) -> PathBuf {
        Path::new(CGROUP_ROOT).join(self.cgroups_path(id).trim_start_matches('/'))
    }

    fn state_dir(&self) -> PathBuf {
        let state = self.root.path().join("state");
        if self.deep {
            state.join("run/containerd/runc/k8s.io")
        } else {
            state
        }
    }

    /// `program` as this runtime runs it (under `under`).
    fn program(&self, program: &Path) -> Command {
        match self.under.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn command(&self) -> Command {
        let mut c = self.program(&self.bin);
        if self.systemd {
            c.arg("--systemd-cgroup");
        }
        c.arg("--root")
            .arg(self.state_dir())
            .arg("--log")
            .arg(self.root.path().join("log.json"))
            .args(["--log-format", "json"]);
        c
    }

    /// `husk-runtime ARGS`: (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> Result<(bool, String, String), Failed> {
        let out = self.command().args(args).output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    fn ok(&self, args: &[&str]) -> Result<String, Failed> {
        match self.run(args)? {
            (true, out, _) => Ok(out),
            (false, _, err) => Err(format!("husk-runtime {args:?} failed: {err}").into()),
        }
    }

    fn state(&self, id: &str) -> Result<serde_json::Value, Failed> {
        Ok(serde_json::from_str(&self.ok(&["state", id])?)?)
    }

    /// A bundle: a busybox root and a config.json running `script`.
    fn bundle(&self, id: &str, script: &str) -> Result<PathBuf, Failed> {
        let dir = self.root.path().join(format!("bundle-{id}"));
        std::fs::create_dir_all(dir.join("rootfs"))?;
        busybox_root(&dir.join("rootfs"))?;
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "hostname": id,
            "process": {
                "args": ["/bin/sh", "-c", script],
                "env": ["PATH=/bin", format!("CONTAINER={id}")],
                "cwd": "/",
                "user": {"uid": 0, "gid": 0}
            },
            "linux": {
                "namespaces": [{"type": "network"}, {"type": "mount"}],
                "cgroupsPath": self.cgroups_path(id)
            }
        });
        std::fs::write(dir.join("config.json"), config.to_string())?;
        Ok(dir)
    }

    /// `create` under the reaper, which then holds the container's
    /// streams and exit status; returns once the container is created.
    fn create(&self, id: &str, bundle: &Path) -> Result<Container, Failed> {
        let reaper = husk_bin()?.with_file_name("oci-reaper");
        let pid_file = self.root.path().join(format!("{id}.pid"));
        let mut child = self
            .program(&reaper)
            .arg(&pid_file)
            .arg("--")
            .arg(&self.bin)
            .args(self.systemd.then_some("--systemd-cgroup"))
            .arg("--root")
            .arg(self.state_dir())
            .arg("--log")
            .arg(self.root.path().join("log.json"))
            .args(["--log-format", "json", "create", "--bundle"])
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = drain(child.stdout.take().ok_or("stdout")?);
        let stderr = drain(child.stderr.take().ok_or("stderr")?);
        let deadline = Instant::now() + Duration::from_secs(120);
        let pid = loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            {
                break pid;
            }
            if let Some(status) = child.try_wait()? {
                let err = stderr.join()?;
                return Err(format!("create of {id} ended ({status}): {err}").into());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("create of {id} did not finish in 120 s").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok(Container {
            id: id.to_string(),
            reaper: child,
            stdout,
            stderr,
            pid,
        })
    }
}

struct Container {
    id: String,
    reaper: Child,
    stdout: Drained,
    stderr: Drained,
    pid: u32,
}

impl Container {
    /// Waits until the container has written `text` to its stdout: a
    /// signal sent sooner could end its shell before the first line.
    fn wait_for(&self, text: &str, limit: Duration) -> Result<(), Failed> {
        let deadline = Instant::now() + limit;
        while !self.stdout.text().contains(text) {
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not print {text:?} within {limit:?}; stdout {:?}, stderr {:?}",
                    self.id,
                    self.stdout.text(),
                    self.stderr.text()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The container's exit status as the reaper saw it, and its output.
    fn finish(mut self, limit: Duration) -> Result<(i32, String, String), Failed> {
        drop(self.reaper.stdin.take());
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.reaper.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.reaper.kill();
                return Err(format!("{} did not end within {limit:?}", self.id).into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = self.stdout.join()?;
        let err = self.stderr.join()?;
        let code = status.code().ok_or("the reaper was killed")?;
        Ok((code, out, err))
    }
}

/// A stream read to its end on a thread, readable as it comes.
struct Drained {
    text: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Drained {
    /// What has come so far.
    fn text(&self) -> String {
        let bytes = self.text.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Everything, once the stream has ended.
    fn join(self) -> Result<String, Failed> {
        let Drained { text, thread } = self;
        thread.join().map_err(|_| "a reader thread panicked")?;
        let bytes = text.lock().map(|b| b.clone()).unwrap_or_default();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

fn drain(mut from: impl Read + Send + 'static) -> Drained {
    let text = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = text.clone();
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Ok(mut text) = sink.lock() {
                        text.extend_from_slice(&buf[..n]);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });
    Drained { text, thread }
}

fn expect_state(rt: &Runtime, id: &str, status: &str) -> Result<serde_json::Value, Failed> {
    let state = rt.state(id)?;
    if state["status"] != status {
        return Err(format!("{id}: expected status {status}, state is {state}").into());
    }
    Ok(state)
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // The parent of its containers' cgroups, made by husk-runtime as
        // runc makes a cgroupsPath's parents (and leaves them).
        if let Some(parent) = self.cgroup("x").parent().filter(|_| !self.systemd) {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// After `delete`: nothing of the container is left.
fn all_gone(rt: &Runtime, id: &str, processes: &[u32], rootfs: &Path) -> Result<(), Failed> {
    nothing_left(&rt.state_dir().join(id), processes)?;
    let cgroup = bundle_cgroup(rootfs.parent().unwrap_or(rootfs))?;
    if cgroup.exists() {
        return Err(format!("cgroup {} is left after delete", cgroup.display()).into());
    }
    let serving: Vec<u32> = virtiofsd_serving(rootfs)
        .into_iter()
        .filter(|p| !super::network::gone(*p))
        .collect();
    if !serving.is_empty() {
        return Err(format!("virtiofsd {serving:?} still serves {}", rootfs.display()).into());
    }
    Ok(())
}

fn lifecycle() -> Result<(), Failed> {
    // A deep --root (the VM's folder then lives at a short path that
    // --root/ID links to) and a 64-digit id, as containerd gives them.
    let rt = Runtime::deep()?;
    let id = "c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1";
    let script =
        "echo out $CONTAINER $(hostname); echo err >&2; read line; echo \"got $line\"; exit 7";
    let bundle = rt.bundle("c1", script)?;
    let mut c = rt.create(id, &bundle)?;
    let state = expect_state(&rt, id, "created")?;
    let canonical = std::fs::canonicalize(&bundle)?;
    let checks = [
        (state["ociVersion"] == "1.0.2", "ociVersion"),
        (state["id"] == id, "id"),
        (state["pid"] == c.pid, "pid is the --pid-file's"),
        (
            state["bundle"] == canonical.to_string_lossy().as_ref(),
            "bundle",
        ),
        (
            state["rootfs"] == canonical.join("rootfs").to_string_lossy().as_ref(),
            "rootfs",
        ),
        (
            state["created"].as_str().is_some_and(|t| t.ends_with('Z')),
            "created",
        ),
    ];
    for (ok, what) in checks {
        if !ok {
            return Err(format!("state: {what} wrong in {state}").into());
        }
    }
    // The same id again: refused, and the first is untouched.
    let (ok, _, err) = rt.run(&["create", "--bundle", &bundle.to_string_lossy(), id])?;
    if ok || !err.contains(&format!("container {id} already exists")) {
        return Err(format!("a second create of c1: ok={ok}, stderr {err:?}").into());
    }
    let list = rt.ok(&["list", "--format", "json"])?;
    let list: serde_json::Value = serde_json::from_str(&list)?;
    if list.as_array().map(Vec::len) != Some(1) || list[0]["status"] != "created" {
        return Err(format!("list: {list}").into());
    }
    let processes = tree(c.pid);
    whole_vm_in_its_cgroup(&rt, id, &bundle, &processes)?;
    rt.ok(&["start", id])?;
    expect_state(&rt, id, "running")?;
    c.reaper
        .stdin
        .as_mut()
        .ok_or("stdin")?
        .write_all(b"hello\n")?;
    let (code, out, err) = c.finish(Duration::from_secs(60))?;
    if code != 7
        || !out.contains("out c1 c1\n")
        || !out.contains("got hello\n")
        || !err.contains("err\n")
    {
        return Err(format!(
            "container c1: status {code} (want 7), stdout {out:?}, stderr {err:?}"
        )
        .into());
    }
    let state = expect_state(&rt, id, "stopped")?;
    if state["pid"] != 0 {
        return Err(format!("a stopped container has a pid: {state}").into());
    }
    let (ok, _, err) = rt.run(&["start", id])?;
    if ok || !err.contains("only a created container can be started") {
        return Err(format!("start of a stopped container: ok={ok}, {err:?}").into());
    }
    // The deep root holds a link to the VM's short folder: both go.
    let short = std::fs::read_link(rt.state_dir().join(id))
        .map_err(|e| format!("--root/ID is not a link to a short folder: {e}"))?;
    rt.ok(&["delete", id])?;
    all_gone(&rt, id, &processes, &bundle.join("rootfs"))?;
    if short.exists() {
        return Err(format!("{} is left after delete", short.display()).into());
    }
    let (ok, _, err) = rt.run(&["state", id])?;
    if ok || !err.contains("does not exist") {
        return Err(format!("state after delete: ok={ok}, {err:?}").into());
    }
    Ok(())
}

/// The cgroup on the host of the container of `bundle`: its config's
/// `cgroupsPath`.
fn bundle_cgroup(bundle: &Path) -> Result<PathBuf, Failed> {
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)?;
    let path = config["linux"]["cgroupsPath"]
        .as_str()
        .ok_or("the bundle has no cgroupsPath")?;
    Ok(Path::new(CGROUP_ROOT).join(path.trim_start_matches('/')))
}

/// The container's cgroup on the host, at its `cgroupsPath`, holds the
/// whole VM (keeper, VMM, virtiofsd), which `ps` lists, with the VM's
/// limits.
fn whole_vm_in_its_cgroup(
    rt: &Runtime,
    id: &str,
    bundle: &Path,
    processes: &[u32],
) -> Result<(), Failed> {
    let dir = bundle_cgroup(bundle)?;
    all_in_cgroup(processes, &dir)?;
    // ps lists the cgroup's processes: the VM's, as they were a moment
    // ago and are now (a helper may have started meanwhile).
    let listed: Vec<u32> = serde_json::from_str(&rt.ok(&["ps", "--format", "json", id])?)?;
    let now = tree(processes[0]);
    // KVM's kernel thread for the VM (kvm-nx-lpage-recovery) joins the
    // cgroup of the process that made the VM: no descendant, but the VM's.
    let kernel_thread = |p: &u32| super::detached::parent(*p) == 2;
    if processes.len() < 3
        || processes.iter().any(|p| !listed.contains(p))
        || listed.iter().any(|p| !now.contains(p) && !kernel_thread(p))
    {
        let named: Vec<String> = listed
            .iter()
            .map(|p| format!("{p} {}", super::network::comm(*p)))
            .collect();
        return Err(format!(
            "ps lists {named:?}; the VM's processes were {processes:?} and are {now:?}"
        )
        .into());
    }
    // One vCPU; the VM's memory (256 MiB with no limit).
    vm_limits(&dir, 256, 1)
}

/// Every process of `pids` is in the cgroup at `dir` (under the cgroup v2
/// mount).
pub(super) fn all_in_cgroup(pids: &[u32], dir: &Path) -> Result<(), Failed> {
    let inner = dir.strip_prefix(CGROUP_ROOT).unwrap_or(dir);
    let want = format!("0::/{}", inner.display());
    for pid in pids {
        let at = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if at.trim() != want {
            return Err(format!(
                "{pid} ({}) is in cgroup {:?}, not the VM's {want:?}",
                super::network::comm(*pid),
                at.trim()
            )
            .into());
        }
    }
    Ok(())
}

/// The cgroup at `dir` has the limits of a VM of `memory_mib` MiB and
/// `cpus` vCPUs: its memory and 256 MiB more, its vCPUs' time.
pub(super) fn vm_limits(dir: &Path, memory_mib: u64, cpus: u64) -> Result<(), Failed> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let (memory, cpu) = (read("memory.max"), read("cpu.max"));
    if memory.trim() != ((memory_mib + 256) << 20).to_string()
        || cpu.trim() != format!("{} 100000", cpus * 100_000)
    {
        return Err(format!(
            "{}: memory.max {memory:?}, cpu.max {cpu:?} for a VM of {memory_mib} MiB, {cpus} CPUs",
            dir.display()
        )
        .into());
    }
    Ok(())
}

fn kill_and_delete() -> Result<(), Failed> {
    let rt = Runtime::new()?;
    let waiting = "trap 'echo caught; exit 3' USR1; echo ready; while true; do sleep 1; done";

    // Running: a signal by name reaches the process, which exits 3.
    let bundle = rt.bundle("k1", waiting)?;
    let c = rt.create("k1", &bundle)?;
    let processes = tree(c.pid);
    rt.ok(&["start", "k1"])?;
    // Its trap is set once it says ready.
    c.wait_for("ready", Duration::from_secs(30))?;
    rt.ok(&["kill", "k1", "SIGUSR1"])?;
    let (code, out, err) = c.finish(Duration::from_secs(60))?;
    if code != 3 || !out.contains("caught") {
        return Err(format!("k1: status {code} (want 3), stdout {out:?}, stderr {err:?}").into());
    }
    rt.ok(&["delete", "k1"])?;
    all_gone(&rt, "k1", &processes, &bundle.join("rootfs"))?;

    // Created, never started: delete needs no --force, as with runc.
    let bundle = rt.bundle("k2", waiting)?;
    let c = rt.create("k2", &bundle)?;
    let processes = tree(c.pid);
    rt.ok(&["delete", "k2"])?;
    let (code, out, _) = c.finish(Duration::from_secs(30))?;
    if code == 0 || out.contains("ready") {
        return Err(format!("k2 was deleted unstarted: status {code}, stdout {out:?}").into());
    }
    all_gone(&rt, "k2", &processes, &bundle.join("rootfs"))?;

    // Running: paused and resumed, its limits changed and its figures
    // read; delete refuses without --force, and with it ends it.
    let ticking = "echo ready; while true; do echo tick; sleep 0.2; done";
    let bundle = rt.bundle("k3", ticking)?;
    let c = rt.create("k3", &bundle)?;
    let processes = tree(c.pid);
    rt.ok(&["start", "k3"])?;
    c.wait_for("tick", Duration::from_secs(30))?;
    pause_update_events(&rt, &c)?;
    // A stream of figures ends when the container does.
    let mut stream = rt
        .command()
        .args(["events", "--interval", "200ms", "k3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let streamed = drain(stream.stdout.take().ok_or("stdout")?);
    let deadline = Instant::now() + Duration::from_secs(30);
    while streamed.text().lines().count() < 3 {
        if Instant::now() > deadline {
            let _ = stream.kill();
            return Err(format!("events gave {:?} in 30 s", streamed.text()).into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, _, err) = rt.run(&["delete", "k3"])?;
    if ok || !err.contains("is running") {
        return Err(format!("delete of a running container: ok={ok}, {err:?}").into());
    }
    expect_state(&rt, "k3", "running")?;
    rt.ok(&["delete", "--force", "k3"])?;
    let (code, _, _) = c.finish(Duration::from_secs(30))?;
    if code == 0 {
        return Err("k3 ended with status 0 after delete --force".into());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let ended = loop {
        if let Some(status) = stream.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = stream.kill();
            return Err("events went on after the container was deleted".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let lines = streamed.join()?;
    let stats = lines
        .lines()
        .map(serde_json::from_str::<serde_json::Value>)
        .collect::<Result<Vec<_>, _>>()?;
    if !ended.success()
        || stats
            .iter()
            .any(|e| e["type"] != "stats" || e["id"] != "k3")
    {
        return Err(format!("events: {ended}, {lines:?}").into());
    }
    all_gone(&rt, "k3", &processes, &bundle.join("rootfs"))?;

    // The keeper killed with SIGKILL, as a crash would: its VM ends with
    // it, the container reads as stopped, and delete leaves nothing (its
    // cgroup neither).
    let bundle = rt.bundle("k4", ticking)?;
    let c = rt.create("k4", &bundle)?;
    let processes = tree(c.pid);
    rt.ok(&["start", "k4"])?;
    c.wait_for("tick", Duration::from_secs(30))?;
    // SAFETY: kill(2) of this test's own container's keeper, alive.
    unsafe { libc::kill(c.pid as libc::pid_t, libc::SIGKILL) };
    let (code, _, _) = c.finish(Duration::from_secs(30))?;
    if code != 128 + libc::SIGKILL {
        return Err(format!("k4's keeper, killed, ended with status {code}").into());
    }
    expect_state(&rt, "k4", "stopped")?;
    rt.ok(&["delete", "k4"])?;
    all_gone(&rt, "k4", &processes, &bundle.join("rootfs"))?;

    // `create` killed while the VM boots (cold, so the boot is long
    // enough to be caught in), as when its caller dies: `delete --force`
    // at once, the VM perhaps still booting, leaves nothing.
    let bundle = rt.bundle("k5", ticking)?;
    let config = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config)?)?;
    spec["annotations"] = serde_json::json!({"io.husk.vm.cold": "true"});
    std::fs::write(&config, spec.to_string())?;
    let rootfs = bundle.join("rootfs");
    let mut create = rt
        .command()
        .args(["create", "--bundle"])
        .arg(&bundle)
        .arg("k5")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let processes = loop {
        // The keeper and its VM name the root they boot from.
        let running: Vec<u32> = processes_naming(&rootfs.to_string_lossy())
            .iter()
            .filter_map(|l| l.split(':').next()?.parse().ok())
            .collect();
        if running.len() >= 2 {
            break running;
        }
        if Instant::now() > deadline || create.try_wait()?.is_some() {
            let _ = create.kill();
            let _ = create.wait();
            // Whatever it started ends here, not in the next test's
            // check that nothing is left before it.
            let _ = rt.run(&["delete", "--force", "k5"]);
            return Err(format!("k5's VM never showed while create ran: {running:?}").into());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    create.kill()?;
    create.wait()?;
    // The keeper goes on booting without it (as runc's init outlives a
    // killed `runc create`): the container is still being created, or
    // has just become created.
    let state = rt.state("k5")?;
    if state["status"] != "creating" && state["status"] != "created" {
        return Err(format!("k5 after its create was killed: {state}").into());
    }
    rt.ok(&["delete", "--force", "k5"])?;
    all_gone(&rt, "k5", &processes, &rootfs)?;
    Ok(())
}

/// One `events --stats` line of container `id`: its figures.
fn figures(rt: &Runtime, id: &str) -> Result<serde_json::Value, Failed> {
    let out = rt.ok(&["events", "--stats", id])?;
    let event: serde_json::Value = serde_json::from_str(out.trim())?;
    if event["type"] != "stats" || event["id"] != id {
        return Err(format!("events --stats: {out}").into());
    }
    Ok(event["data"].clone())
}

/// `pause` freezes every process of running container `c` (its output
/// stops, its CPU time stands still, exec is refused), `resume` thaws
/// them; `update` sets its cgroup's limits in the guest within the VM's
/// size, seen from inside and by `events --stats`.
fn pause_update_events(rt: &Runtime, c: &Container) -> Result<(), Failed> {
    let id = c.id.as_str();
    let cpu = |d: &serde_json::Value| d["cpu"]["usage"]["total"].as_u64().unwrap_or(0);
    let before = figures(rt, id)?;
    if cpu(&before) == 0 || before["pids"]["current"].as_u64().unwrap_or(0) == 0 {
        return Err(format!("{id}'s figures: {before}").into());
    }
    rt.ok(&["pause", id])?;
    expect_state(rt, id, "paused")?;
    let (ok, _, err) = rt.run(&["pause", id])?;
    if ok || !err.contains("already paused") {
        return Err(format!("a second pause: ok={ok}, {err:?}").into());
    }
    let (ok, _, err) = rt.run(&["exec", id, "true"])?;
    if ok || !err.contains("is paused") {
        return Err(format!("exec into a paused container: ok={ok}, {err:?}").into());
    }
    let ticks = |c: &Container| c.stdout.text().matches("tick").count();
    let (frozen_ticks, frozen_cpu) = (ticks(c), cpu(&figures(rt, id)?));
    std::thread::sleep(Duration::from_millis(1500));
    let (later_ticks, later_cpu) = (ticks(c), cpu(&figures(rt, id)?));
    if later_ticks != frozen_ticks || later_cpu != frozen_cpu {
        return Err(format!(
            "{id} ran while paused: ticks {frozen_ticks} -> {later_ticks}, \
             CPU {frozen_cpu} -> {later_cpu} ns"
        )
        .into());
    }
    rt.ok(&["resume", id])?;
    expect_state(rt, id, "running")?;
    let (ok, _, err) = rt.run(&["resume", id])?;
    if ok || !err.contains("is not paused") {
        return Err(format!("a second resume: ok={ok}, {err:?}").into());
    }
    c.wait_for(&"tick\n".repeat(later_ticks + 2), Duration::from_secs(20))?;

    let update = |json: &str| -> Result<(bool, String), Failed> {
        let mut child = rt
            .command()
            .args(["update", "--resources", "-", id])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .ok_or("stdin")?
            .write_all(json.as_bytes())?;
        let out = child.wait_with_output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let (ok, err) = update(r#"{"memory":{"limit":67108864},"pids":{"limit":50}}"#)?;
    if !ok {
        return Err(format!("update: {err}").into());
    }
    // An exec'd process is in the container's cgroup, and sees its limits.
    let inside = rt.ok(&[
        "exec",
        id,
        "sh",
        "-c",
        "g=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup); cat $g/memory.max $g/pids.max",
    ])?;
    if inside.split_whitespace().collect::<Vec<_>>() != ["67108864", "50"] {
        return Err(format!("the guest's limits after update: {inside:?}").into());
    }
    let after = figures(rt, id)?;
    if after["memory"]["usage"]["limit"] != 67108864u64 || after["pids"]["limit"] != 50 {
        return Err(format!("figures after update: {after}").into());
    }
    // Beyond the VM (256 MiB): refused, the limits as they were.
    let (ok, err) = update(r#"{"memory":{"limit":1073741824}}"#)?;
    if ok || !err.contains("has 256 MiB") {
        return Err(format!("an update beyond the VM: ok={ok}, {err:?}").into());
    }
    let (ok, err) = update(r#"{"memory":{"limit":-1},"pids":{"limit":-1}}"#)?;
    let lifted = figures(rt, id)?;
    if !ok || lifted["memory"]["usage"]["limit"] != u64::MAX || lifted["pids"]["limit"] != 0 {
        return Err(format!("lifting the limits: ok={ok}, {err:?}, {lifted}").into());
    }
    Ok(())
}

/// Cgroups the jail made (`husk-PID`), and mounts naming `path`.
fn cgroups_and_mounts(rt: &Runtime, path: &Path) -> (Vec<String>, usize) {
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    // husk's jail cgroups, and the containers' under this runtime's parent
    // (which stays while the runtime does, as runc leaves a parent).
    let parent = rt.cgroup("x");
    let parent = parent.parent().unwrap_or(Path::new(CGROUP_ROOT));
    let own = parent.file_name().unwrap_or_default().to_string_lossy();
    let mut cgroups: Vec<String> = names(Path::new(CGROUP_ROOT))
        .into_iter()
        .filter(|n| n.starts_with("husk-") && *n != own)
        .collect();
    cgroups.extend(names(parent).into_iter().map(|n| format!("{own}/{n}")));
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let path = path.to_string_lossy();
    (
        cgroups,
        mounts.lines().filter(|l| l.contains(&*path)).count(),
    )
}

/// The whole life of a container, 100 times over (`HUSK_RUNTIME_CYCLES`
/// sets another count): each cycle's processes, folder and virtiofsd
/// gone, and at the end no cgroup, mount or jail folder more than before.
fn cycles() -> Result<(), Failed> {
    let rt = Runtime::new()?;
    let n: usize = std::env::var("HUSK_RUNTIME_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let bundle = rt.bundle("cycle", "echo up; while true; do sleep 1; done")?;
    let rootfs = bundle.join("rootfs");
    let before = cgroups_and_mounts(&rt, &rootfs);
    let jails_before = std::fs::read_dir("/run/husk/jail").map_or(0, |d| d.count());
    for i in 0..n {
        let id = format!("cycle-{i}");
        let c = rt.create(&id, &bundle)?;
        let processes = tree(c.pid);
        rt.ok(&["start", &id])?;
        c.wait_for("up", Duration::from_secs(60))?;
        rt.ok(&["kill", &id, "TERM"])?;
        let (code, out, err) = c.finish(Duration::from_secs(60))?;
        if code != 128 + libc::SIGTERM || !out.contains("up") {
            return Err(format!(
                "cycle {i}: status {code} (want 143), stdout {out:?}, stderr {err:?}"
            )
            .into());
        }
        rt.ok(&["delete", &id])?;
        all_gone(&rt, &id, &processes, &rootfs)
            .map_err(|e| format!("cycle {i}: {}", e.message().unwrap_or("left over")))?;
    }
    let after = cgroups_and_mounts(&rt, &rootfs);
    let jails_after = std::fs::read_dir("/run/husk/jail").map_or(0, |d| d.count());
    if after != before || jails_after > jails_before {
        return Err(format!(
            "after {n} cycles: cgroups and mounts {after:?} (before {before:?}), \
             jail folders {jails_after} (before {jails_before})"
        )
        .into());
    }
    let left: Vec<String> = std::fs::read_dir(rt.state_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if !left.is_empty() {
        return Err(format!("left under --root: {left:?}").into());
    }
    Ok(())
}

/// podman 4.3 (Debian's) with `--runtime husk-runtime`, its store on the
/// bed's tmpfs, no systemd: the image is examples/busybox's layout.
struct Podman {
    dir: tempfile::TempDir,
    runtime: PathBuf,
}

/// husk-runtime's --root when its caller names none, as with podman
/// (whose cleanup process passes no runtime flags).
const RUNTIME_ROOT: &str = "/run/husk-runtime";

impl Podman {
    fn new() -> Result<Self, Failed> {
        if Command::new("podman").arg("--version").output().is_err() {
            return Err("podman is not installed (ci/setup installs it)".into());
        }
        // podman writes a cache under /var/cache/containers, read-only in
        // the test bed (the host's root): a tmpfs there, in the bed only.
        if std::env::var_os("HUSK_IN_TESTBED").is_some()
            && std::fs::create_dir_all("/var/cache/containers").is_err()
        {
            let mounted = Command::new("mount")
                .args(["-t", "tmpfs", "podman-cache", "/var/cache"])
                .status()?;
            if !mounted.success() {
                return Err("cannot mount a tmpfs on /var/cache for podman".into());
            }
        }
        let runtime = husk_bin()?.with_file_name("husk-runtime");
        let p = Podman {
            dir: folder("podman")?,
            runtime,
        };
        let layout =
            std::fs::canonicalize(boot_tests::workspace_root().join("examples/busybox/image"))?;
        let image = format!("oci:{}:latest", layout.display());
        let pulled = p.run(&["pull", "-q", &image], b"", Duration::from_secs(120))?;
        if pulled.code != Some(0) {
            return Err(pulled.explain("podman pull of examples/busybox").into());
        }
        let tagged = p.run(
            &["tag", pulled.stdout.trim(), "husk-test-busybox"],
            b"",
            Duration::from_secs(30),
        )?;
        if tagged.code != Some(0) {
            return Err(tagged.explain("podman tag").into());
        }
        Ok(p)
    }

    fn command(&self) -> Command {
        boot_tests::podman_command(self.dir.path(), self.runtime.as_os_str())
    }

    /// Nothing of its containers is left: no container under husk-runtime's
    /// root whose bundle is in this podman's store (other tests' may run
    /// beside), no process (keeper, VMM, virtiofsd) naming the store.
    fn nothing_left(&self) -> Result<(), Failed> {
        let store = self.dir.path().to_string_lossy().into_owned();
        let left: Vec<String> = std::fs::read_dir(RUNTIME_ROOT)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("oci.json"))
                    .is_ok_and(|record| record.contains(&store))
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !left.is_empty() {
            return Err(format!("left under {RUNTIME_ROOT}: {left:?}").into());
        }
        let store = self.dir.path().join("root");
        let left = processes_left(&store.to_string_lossy());
        if !left.is_empty() {
            return Err(format!("processes left: {left:?}").into());
        }
        Ok(())
    }

    fn run<S: AsRef<str>>(
        &self,
        args: &[S],
        stdin: &[u8],
        limit: Duration,
    ) -> Result<HuskRun, Failed> {
        let mut c = self.command();
        c.args(args.iter().map(AsRef::as_ref));
        Ok(output_within(c, stdin, limit)?)
    }

    /// `podman run -d ARGS`, which must succeed; the container's id.
    fn detached(&self, args: &[&str]) -> Result<String, Failed> {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(args);
        Ok(self.expect(&all, b"", 0)?.trim().to_string())
    }

    /// `podman ARGS`, which must exit `code`; its stdout.
    fn expect<S: AsRef<str>>(&self, args: &[S], stdin: &[u8], code: i32) -> Result<String, Failed> {
        let r = self.run(args, stdin, Duration::from_secs(120))?;
        if r.code != Some(code) {
            let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
            return Err(r
                .explain(&format!("podman {args:?}: expected exit status {code}"))
                .into());
        }
        Ok(r.stdout)
    }
}

/// Processes whose command line mentions `what` and that still run, now.
pub(super) fn processes_naming(what: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (text.contains(what) && !super::network::ended(pid)).then(|| format!("{pid}: {text}"))
        })
        .collect()
}

/// [`processes_naming`] after up to 10 s for them to end: what is left
/// of what should be ending.
fn processes_left(what: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_naming(what);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn podman() -> Result<(), Failed> {
    let p = Podman::new()?;
    let img = "husk-test-busybox";
    let run = |extra: &[&str], script: &str| -> Vec<String> {
        let mut a: Vec<String> = ["run", "--rm", "--network", "none"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a.extend([img.into(), "sh".into(), "-c".into(), script.into()]);
        a
    };

    // Each `podman run` boots a VM (10 to 20 s under the test bed's
    // emulation): one run checks several things where they do not meddle.
    let status = |out: &str, key: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let probe = "grep -E '^(CapEff|CapBnd|NoNewPrivs|Groups|Seccomp):' /proc/self/status; \
                 echo soft $(ulimit -n) hard $(ulimit -Hn)";

    // Exit status, hostname, stdin; and the process's capabilities and
    // seccomp as podman asks by default: its own capability set (not all
    // of root's), its default profile (seccomp mode 2, a filter).
    let args = run(
        &["-i"],
        &format!("read x; echo got $x; echo host $(hostname); {probe}; exit 7"),
    );
    let out = p.expect(&args, b"piped\n", 7)?;
    if !out.starts_with("got piped\nhost ") {
        return Err(format!("podman run -i: stdout {out:?}").into());
    }
    let bounding = status(&out, "CapBnd:");
    if bounding.is_empty() || bounding == "000001ffffffffff" || status(&out, "CapEff:") != bounding
    {
        return Err(format!("podman's default capabilities are not applied: {out}").into());
    }
    if status(&out, "Seccomp:") != "2" {
        return Err(format!("podman's default seccomp profile is not applied: {out}").into());
    }

    // A seccomp profile of one's own (mkdir refused with EPERM, the rest
    // allowed), with the capabilities, limits, groups and no_new_privs
    // the flags say.
    let profile = folder("seccomp")?;
    let path = profile.path().join("profile.json");
    std::fs::write(
        &path,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )?;
    let opt = format!("seccomp={}", path.display());
    let args = run(
        &[
            "--security-opt",
            &opt,
            "--cap-drop",
            "ALL",
            "--cap-add",
            "NET_BIND_SERVICE",
            "--ulimit",
            "nofile=1000:2000",
            "--group-add",
            "1234",
            "--security-opt",
            "no-new-privileges",
            "--sysctl",
            "net.core.somaxconn=1234",
        ],
        &format!(
            "mkdir /tmp/refused 2>&1; echo mkdir $?; touch /tmp/allowed && echo touch ok; \
             echo somaxconn $(cat /proc/sys/net/core/somaxconn); {probe}"
        ),
    );
    let out = p.expect(&args, b"", 0)?;
    if !out.contains("Operation not permitted")
        || !out.contains("mkdir 1")
        || !out.contains("touch ok")
    {
        return Err(format!("--security-opt seccomp=PROFILE: {out}").into());
    }
    // CAP_NET_BIND_SERVICE is capability 10.
    let want = [
        ("CapEff:", "0000000000000400"),
        ("CapBnd:", "0000000000000400"),
        ("NoNewPrivs:", "1"),
        ("Seccomp:", "2"),
    ];
    if want.iter().any(|(k, v)| status(&out, k) != *v)
        || !status(&out, "Groups:")
            .split_whitespace()
            .any(|g| g == "1234")
        || !out.contains("soft 1000 hard 2000")
        || !out.contains("somaxconn 1234")
    {
        return Err(format!(
            "--cap-drop/--cap-add, --ulimit, --group-add, no-new-privileges, --sysctl: {out}"
        )
        .into());
    }

    // A volume written from the container, read here; --memory sizes the
    // VM: the limit and husk-runtime's overhead.
    let volume = folder("podman-volume")?;
    let v = format!("{}:/data", volume.path().display());
    let args = run(
        &["-v", &v, "--memory", "256m"],
        "echo from-container > /data/f; grep MemTotal /proc/meminfo",
    );
    let out = p.expect(&args, b"", 0)?;
    let written = std::fs::read_to_string(volume.path().join("f")).unwrap_or_default();
    if written != "from-container\n" {
        return Err(format!("-v: the host reads {written:?}").into());
    }
    let kib: u64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or(format!("--memory: no MemTotal in {out:?}"))?;
    if !(256 * 1024..320 * 1024).contains(&kib) {
        return Err(format!("--memory 256m: the guest has {kib} kB").into());
    }

    // Detached: ps, logs, exec (status, stdin, a missing program), stop.
    let cid = p
        .expect(
            &[
                "run",
                "-d",
                "--network",
                "none",
                img,
                "sh",
                "-c",
                "echo started; trap 'echo term; exit 0' TERM; while true; do sleep 1; done",
            ],
            b"",
            0,
        )?
        .trim()
        .to_string();
    let ps = p.expect(&["ps", "--format", "{{.ID}} {{.Status}}"], b"", 0)?;
    if !ps
        .lines()
        .any(|l| cid.starts_with(l.split(' ').next().unwrap_or("-")) && l.contains("Up"))
    {
        return Err(format!("podman ps does not show {cid} up: {ps:?}").into());
    }
    // The container's seccomp profile holds for what is exec'd in it.
    let out = p.expect(
        &["exec", &cid, "grep", "Seccomp:", "/proc/self/status"],
        b"",
        0,
    )?;
    if out.split_whitespace().nth(1) != Some("2") {
        return Err(format!("podman exec runs without the container's seccomp: {out}").into());
    }
    let out = p.expect(&["exec", &cid, "sh", "-c", "echo exec-ok; exit 5"], b"", 5)?;
    if out.trim() != "exec-ok" {
        return Err(format!("podman exec: stdout {out:?}").into());
    }
    // A PID namespace of its own, as runc gives: the command is PID 1,
    // and an exec sees the container's processes, not the guest's (husk's
    // init and agent).
    let out = p.expect(
        &[
            "exec",
            &cid,
            "sh",
            "-c",
            "echo 1=$(cat /proc/1/comm); cat /proc/[0-9]*/comm | sort -u | tr '\\n' ' '",
        ],
        b"",
        0,
    )?;
    let seen: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    if !out.starts_with("1=sh\n")
        || seen
            .iter()
            .any(|p| !["sh", "sleep", "cat", "sort", "tr"].contains(p))
    {
        return Err(format!("podman exec: expected the command as PID 1 and only the container's processes: {out:?}").into());
    }
    // The VM is in the container's cgroup on the host, which podman
    // reads: podman stats shows what it uses, within the VM's limit.
    let pid = p.expect(&["inspect", "--format", "{{.State.Pid}}", &cid], b"", 0)?;
    let cgroup = cgroup_of(&pid)?;
    if !cgroup.ends_with(format!("libpod-{cid}")) {
        return Err(format!("podman's container {cid} runs in cgroup {cgroup:?}").into());
    }
    let stats = p.expect(&["stats", "--no-stream", "--format", STATS, &cid], b"", 0)?;
    // Its usage is the cgroup's anonymous memory (a warm VM's guest pages
    // it wrote; those it only read are the snapshot file's page cache);
    // its limit podman takes from the spec, not the cgroup.
    let (used, pids) = stats_of(&stats);
    if pids < 3 || !used.is_some_and(|u| u > 1e6) {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| e.to_string());
        return Err(format!(
            "podman stats: {stats:?}; {}: memory.current {:?}, procs {:?}",
            cgroup.display(),
            read(&cgroup.join("memory.current")),
            read(&cgroup.join("cgroup.procs")),
        )
        .into());
    }
    let out = p.expect(
        &["exec", "-i", &cid, "sh", "-c", "read x; echo exec-got $x"],
        b"in\n",
        0,
    )?;
    if out.trim() != "exec-got in" {
        return Err(format!("podman exec -i: stdout {out:?}").into());
    }
    p.expect(&["exec", &cid, "no-such-program"], b"", 127)?;
    // pause and unpause: husk-runtime's freezer, seen in podman's state.
    let status = |p: &Podman| -> Result<String, Failed> {
        let s = p.expect(&["inspect", "--format", "{{.State.Status}}", &cid], b"", 0)?;
        Ok(s.trim().to_string())
    };
    p.expect(&["pause", &cid], b"", 0)?;
    if status(&p)? != "paused" {
        return Err(format!("after podman pause: {}", status(&p)?).into());
    }
    p.expect(&["unpause", &cid], b"", 0)?;
    if status(&p)? != "running" {
        return Err(format!("after podman unpause: {}", status(&p)?).into());
    }
    p.expect(&["stop", "-t", "10", &cid], b"", 0)?;
    let logs = p.expect(&["logs", &cid], b"", 0)?;
    if logs != "started\nterm\n" {
        return Err(format!("podman logs: {logs:?}").into());
    }
    let code = p.expect(
        &["inspect", "--format", "{{.State.ExitCode}}", &cid],
        b"",
        0,
    )?;
    if code.trim() != "0" {
        return Err(format!("exit code after stop: {code:?}").into());
    }
    p.expect(&["rm", &cid], b"", 0)?;
    if cgroup.exists() {
        return Err(format!("cgroup {} is left after podman rm", cgroup.display()).into());
    }

    // A terminal: podman's pty reaches the guest's, with its size.
    // The same podman command line, typed into the terminal `script` makes.
    let podman = p.command();
    let line: Vec<String> = std::iter::once(podman.get_program())
        .chain(podman.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let inner = format!(
        "stty rows 33 cols 101; {} run --rm -it --network none {img} sh -c 'tty; stty size; exit 4'",
        line.join(" ")
    );
    let mut script = Command::new("script");
    script
        .args(["-qec", &inner, "/dev/null"])
        .env("TMPDIR", p.dir.path());
    let r = output_within(script, b"", Duration::from_secs(120))?;
    if r.code != Some(4) || !r.stdout.contains("/dev/pts/") || !r.stdout.contains("33 101") {
        return Err(r.explain("podman run -it under script").into());
    }

    p.nothing_left()?;
    Ok(())
}

/// What podman and docker stats print of a container here.
const STATS: &str = "{{.MemUsage}}|{{.PIDs}}";

/// A [`STATS`] line: the memory in use, in bytes, and the processes.
fn stats_of(line: &str) -> (Option<f64>, u32) {
    let (usage, pids) = line.trim().split_once('|').unwrap_or_default();
    let used = usage.split_once(" / ").and_then(|(u, _)| bytes(u));
    (used, pids.parse().unwrap_or(0))
}

/// The cgroup (v2) of process `pid` (as a tool prints it).
fn cgroup_of(pid: &str) -> Result<PathBuf, Failed> {
    let at = std::fs::read_to_string(format!("/proc/{}/cgroup", pid.trim()))?;
    Ok(Path::new(CGROUP_ROOT).join(at.trim().trim_start_matches("0::/")))
}

/// A size as podman and docker print one (`45.1MB`, `512MiB`), in bytes.
fn bytes(text: &str) -> Option<f64> {
    let text = text.trim();
    let at = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(at);
    let scale = match unit {
        "B" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(number.trim().parse::<f64>().ok()? * scale)
}

/// A network namespace with a veth into it, as a container tool makes
/// one: `10.231.N.1/24` here, `10.231.N.2/24` and a default route there.
struct Netns {
    name: String,
    host_end: String,
}

impl Netns {
    fn new(n: u8) -> Result<Self, Failed> {
        let name = format!("husk-test-{}-{n}", std::process::id());
        let host_end = format!("hkt{n}h{}", std::process::id() % 10_000);
        let peer = format!("hkt{n}c{}", std::process::id() % 10_000);
        let ns = Netns {
            name: name.clone(),
            host_end: host_end.clone(),
        };
        let host = format!("10.231.{n}.1/24");
        let guest = format!("10.231.{n}.2/24");
        let gateway = format!("10.231.{n}.1");
        // Dual stack, as a container network with IPv6 has it (addresses
        // given out, so no duplicate detection).
        let host6 = format!("fd00:231:{n}::1/64");
        let guest6 = format!("fd00:231:{n}::2/64");
        let gateway6 = format!("fd00:231:{n}::1");
        let steps: [&[&str]; 11] = [
            &["netns", "add", &name],
            &[
                "link", "add", &host_end, "type", "veth", "peer", "name", &peer,
            ],
            &["link", "set", &peer, "netns", &name],
            &["addr", "add", &host, "dev", &host_end],
            &["addr", "add", &host6, "dev", &host_end, "nodad"],
            &["link", "set", &host_end, "up"],
            &["-n", &name, "addr", "add", &guest, "dev", &peer],
            &["-n", &name, "addr", "add", &guest6, "dev", &peer, "nodad"],
            &["-n", &name, "link", "set", &peer, "up"],
            &["-n", &name, "route", "add", "default", "via", &gateway],
            &[
                "-n", &name, "-6", "route", "add", "default", "via", &gateway6,
            ],
        ];
        for step in steps {
            ip(step)?;
        }
        Ok(ns)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_end])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// podman with a dual-stack network namespace of the test's making
/// (`--network ns:PATH`, the path CNI, netavark, docker and CRI hand over
/// too): the VM takes the namespace's IPv4 and IPv6 addresses and routes,
/// and busybox httpd in it answers curl from the host over both; its tap
/// goes with the container. Then podman's own bridge network.
fn podman_network() -> Result<(), Failed> {
    let p = Podman::new()?;
    let ns = Netns::new(1)?;
    let network = format!("ns:{}", ns.path());
    let serve =
        "mkdir -p /www && echo hello-from-the-vm > /www/index.html && exec httpd -f -p 80 -h /www";
    let cid = p.detached(&[
        "--network",
        &network,
        "--dns",
        "192.0.2.53",
        "husk-test-busybox",
        "sh",
        "-c",
        serve,
    ])?;
    let checked = (|| -> Result<(), Failed> {
        let addr = p.expect(&["exec", &cid, "ip", "addr"], b"", 0)?;
        if !addr.contains("10.231.1.2/24") || !addr.contains("fd00:231:1::2/64") {
            return Err(format!("the guest lacks the namespace's addresses: {addr}").into());
        }
        let route6 = p.expect(&["exec", &cid, "ip", "-6", "route"], b"", 0)?;
        if !route6.contains("default via fd00:231:1::1") {
            return Err(format!("the guest lacks the namespace's IPv6 route: {route6}").into());
        }
        // podman's /etc/resolv.conf and /etc/hosts are single files it
        // bind-mounts: the guest sees podman's, with --dns, and the
        // container's name at its address.
        let etc = p.expect(
            &["exec", &cid, "cat", "/etc/resolv.conf", "/etc/hosts"],
            b"",
            0,
        )?;
        let named = format!("10.231.1.2\t{}", &cid[..12.min(cid.len())]);
        if !etc.contains("nameserver 192.0.2.53") || !etc.contains(&named) {
            return Err(
                format!("the guest's resolv.conf and hosts are not podman's: {etc}").into(),
            );
        }
        curl_until("http://10.231.1.2/", "hello-from-the-vm")?;
        curl_until("http://[fd00:231:1::2]/", "hello-from-the-vm")
    })();
    p.expect(&["rm", "-f", "-t", "0", &cid], b"", 0)?;
    checked?;
    let tap = Command::new("ip")
        .args(["-n", &ns.name, "link", "show", "husk0"])
        .output()?;
    if tap.status.success() {
        return Err("the tap husk0 is left in the namespace after rm".into());
    }
    p.nothing_left()?;
    podman_bridge(&p, serve)
}

/// podman's own network, as a user gets it with no `--network`: netavark
/// makes the namespace, a veth from its bridge into it, an address of
/// 10.88.0.0/16 and iptables DNAT for `-p`. The VM takes that namespace's
/// address; `-p` reaches busybox httpd in it from the host's loopback, and
/// the guest reaches a host server through the bridge's gateway. Nothing
/// of the container is left in the firewall after rm.
fn podman_bridge(p: &Podman, serve: &str) -> Result<(), Failed> {
    let host = std::net::TcpListener::bind("0.0.0.0:0")?;
    let host_port = host.local_addr()?.port();
    std::thread::spawn(move || {
        for mut conn in host.incoming().flatten() {
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request);
            let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 14\r\n\r\nhello-the-host");
        }
    });
    let cid = p.detached(&[
        "-p",
        "127.0.0.1:18090:80",
        "husk-test-busybox",
        "sh",
        "-c",
        serve,
    ])?;
    let checked = (|| -> Result<(), Failed> {
        let addr = p.expect(&["exec", &cid, "ip", "-4", "addr"], b"", 0)?;
        if !addr.contains("inet 10.88.") {
            return Err(format!("the guest lacks podman's bridge address: {addr}").into());
        }
        curl_until("http://127.0.0.1:18090/", "hello-from-the-vm")?;
        let fetch = format!(
            "gw=$(ip route | awk '/^default/ {{print $3}}'); wget -q -O - http://$gw:{host_port}/"
        );
        let page = p.expect(&["exec", &cid, "sh", "-c", &fetch], b"", 0)?;
        if page != "hello-the-host" {
            return Err(format!("the guest through the bridge's gateway got {page:?}").into());
        }
        Ok(())
    })();
    p.expect(&["rm", "-f", "-t", "0", &cid], b"", 0)?;
    checked?;
    let nat = Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()?;
    let rules = String::from_utf8_lossy(&nat.stdout);
    if rules.contains("18090") || rules.contains(&cid[..12.min(cid.len())]) {
        return Err(format!("podman's port rules outlived the container: {rules}").into());
    }
    p.nothing_left()
}

/// A bridge of the test's own, removed with it.
struct Bridge(&'static str);

impl Bridge {
    fn new(name: &'static str, address: &str) -> Result<Self, Failed> {
        let bridge = Bridge(name);
        for step in [
            &["link", "add", name, "type", "bridge"][..],
            &["addr", "add", address, "dev", name],
            &["link", "set", name, "up"],
        ] {
            ip(step)?;
        }
        Ok(bridge)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", self.0]).output();
    }
}

/// GETs `url` until it answers `body` (60 s at most).
fn curl_until(url: &str, body: &str) -> Result<(), Failed> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("curl")
            .args(["-s", "-g", "--max-time", "5", url])
            .output()?;
        let got = String::from_utf8_lossy(&out.stdout);
        if got.trim() == body {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("curl {url}: {got:?}").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// docker 20.10 (`dockerd --add-runtime husk=husk-runtime`) and
/// containerd 1.6 (`ctr run --runc-binary husk-runtime`), Debian's, each
/// with its own state on the bed's tmpfs: exit statuses, output, `docker
/// exec`; their deep runtime roots take the short-folder path.
fn docker_and_containerd() -> Result<(), Failed> {
    for tool in ["dockerd", "containerd", "ctr", "skopeo"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()?
            .status
            .code()
            != Some(0)
        {
            return Err(format!(
                "{tool} is not installed (ci/setup installs docker.io, containerd, skopeo)"
            )
            .into());
        }
    }
    if std::env::var_os("HUSK_IN_TESTBED").is_some() {
        // What they write outside their own folders, read-only in the bed
        // (the host's root): tmpfs there, in the bed only.
        for (dir, probe) in [("/var/tmp", "/var/tmp"), ("/etc/docker", "/etc/docker")] {
            let writable =
                std::fs::create_dir_all(probe).is_ok() && tempfile::tempdir_in(probe).is_ok();
            if !writable {
                let mounted = Command::new("mount")
                    .args(["-t", "tmpfs", "husk-test", dir])
                    .status()?;
                if !mounted.success() {
                    return Err(format!("cannot mount a tmpfs on {dir}").into());
                }
            }
        }
    }
    let runtime = husk_bin()?.with_file_name("husk-runtime");
    let dir = folder("docker")?;
    let d = dir.path();
    let layout =
        std::fs::canonicalize(boot_tests::workspace_root().join("examples/busybox/image"))?;
    let archive = d.join("busybox.tar");
    let copied = Command::new("skopeo")
        .args(["copy", "-q"])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!(
            "docker-archive:{}:docker.io/library/busybox:latest",
            archive.display()
        ))
        .env("TMPDIR", d)
        .output()?;
    if !copied.status.success() {
        return Err(format!("skopeo copy: {}", String::from_utf8_lossy(&copied.stderr)).into());
    }

    // containerd's runc shim, with husk-runtime as its runc.
    {
        let socket = d.join("containerd.sock");
        let mut c = Command::new("containerd");
        c.arg("--root")
            .arg(d.join("containerd-root"))
            .arg("--state")
            .arg(d.join("containerd-state"))
            .arg("--address")
            .arg(&socket);
        let _containerd = daemon(c, &d.join("containerd.log"), &socket)?;
        let ctr = |args: &[&str]| {
            let mut c = Command::new("ctr");
            c.arg("--address").arg(&socket).args(args);
            c
        };
        let mut import = ctr(&["images", "import", "--snapshotter", "native"]);
        import.arg(&archive);
        let r = output_within(import, b"", Duration::from_secs(120))?;
        if r.code != Some(0) {
            return Err(r.explain("ctr images import").into());
        }
        let mut run = ctr(&["run", "--snapshotter", "native", "--rm", "--runc-binary"]);
        run.arg(&runtime).args([
            "docker.io/library/busybox:latest",
            "husk-ctr-1",
            "sh",
            "-c",
            "echo hi from containerd; exit 3",
        ]);
        let r = output_within(run, b"", Duration::from_secs(120))?;
        if r.code != Some(3) || !r.stdout.contains("hi from containerd") {
            return Err(r
                .explain("ctr run --runc-binary husk-runtime: expected status 3")
                .into());
        }
    }

    // dockerd with husk-runtime as the runtime "husk".
    {
        let bridge = Bridge::new("husk-dk0", "10.89.7.1/24")?;
        let socket = d.join("docker.sock");
        let mut c = Command::new("dockerd");
        c.arg("--data-root")
            .arg(d.join("docker-data"))
            .arg("--exec-root")
            .arg(d.join("docker-exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            // A bridge network as docker's default one (on a bridge of the
            // test's own, not a docker0 another dockerd may own), with
            // docker's iptables rules and port proxy: docker puts the
            // container's interface into the namespace husk-runtime made,
            // from its prestart hook (libnetwork-setkey).
            .args(["--bridge", bridge.0, "--ip-forward=false"])
            .args(["--storage-driver", "vfs"])
            .arg("--add-runtime")
            .arg(format!("husk={}", runtime.display()));
        let _dockerd = daemon(c, &d.join("dockerd.log"), &socket)?;
        let docker = |args: &[&str]| {
            // Debian's client (20.10), whatever else PATH has.
            let mut c = Command::new("/usr/bin/docker");
            c.arg("-H")
                .arg(format!("unix://{}", socket.display()))
                .args(args);
            c
        };
        let mut load = docker(&["load", "-q", "-i"]);
        load.arg(&archive);
        let r = output_within(load, b"", Duration::from_secs(120))?;
        if r.code != Some(0) {
            return Err(r.explain("docker load").into());
        }
        let r = output_within(
            docker(&[
                "run",
                "--runtime",
                "husk",
                "--rm",
                "--network",
                "none",
                "busybox",
                "sh",
                "-c",
                "echo hi from docker; exit 6",
            ]),
            b"",
            Duration::from_secs(120),
        )?;
        if r.code != Some(6) || !r.stdout.contains("hi from docker") {
            return Err(r
                .explain("docker run --runtime husk: expected status 6")
                .into());
        }
        let r = output_within(
            docker(&[
                "run",
                "--runtime",
                "husk",
                "-d",
                "-p",
                "127.0.0.1:18091:80",
                "busybox",
                "sh",
                "-c",
                "mkdir -p /www && echo hello-from-docker > /www/index.html && exec httpd -f -p 80 -h /www",
            ]),
            b"",
            Duration::from_secs(120),
        )?;
        let cid = r.stdout.trim().to_string();
        if r.code != Some(0) || cid.is_empty() {
            return Err(r.explain("docker run -d --runtime husk").into());
        }
        let e = output_within(
            docker(&[
                "exec",
                &cid,
                "sh",
                "-c",
                "cat /etc/hostname; echo exec-ok; exit 2",
            ]),
            b"",
            Duration::from_secs(60),
        )?;
        // docker stats and docker top read the container's cgroup on the
        // host (containerd's runc shim finds it from the pid; top asks
        // husk-runtime ps): the VM is in it.
        let pid = output_within(
            docker(&["inspect", "-f", "{{.State.Pid}}", &cid]),
            b"",
            Duration::from_secs(30),
        )?;
        let cgroup = cgroup_of(&pid.stdout)?;
        let stats = output_within(
            docker(&["stats", "--no-stream", "--format", STATS, &cid]),
            b"",
            Duration::from_secs(60),
        )?;
        let top = output_within(docker(&["top", &cid]), b"", Duration::from_secs(60))?;
        let seen = stats.stdout.trim().to_string();
        let (used, pids) = stats_of(&seen);
        let top_lines = top.stdout.lines().count();
        if !cgroup.ends_with(&cid)
            || pids < 3
            || !used.is_some_and(|u| u > 1e6)
            || top_lines < 4
            || !top.stdout.contains("husk-runtime")
        {
            return Err(format!(
                "docker's container in cgroup {cgroup:?}; docker stats {seen:?} ({}); docker top {:?} ({})",
                stats.stderr, top.stdout, top.stderr
            )
            .into());
        }
        // pause, unpause and update reach husk-runtime through
        // containerd's runc shim.
        let mut changes = Vec::new();
        for args in [
            &["pause", cid.as_str()][..],
            &["unpause", &cid],
            &["update", "--memory", "96m", &cid],
        ] {
            changes.push(output_within(docker(args), b"", Duration::from_secs(60))?);
        }
        let limit = output_within(
            docker(&[
                "exec",
                &cid,
                "sh",
                "-c",
                "cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max",
            ]),
            b"",
            Duration::from_secs(60),
        )?;
        // docker's bridge network: the VM has the address docker gave the
        // container, and -p reaches it from the host's loopback.
        let published = curl_until("http://127.0.0.1:18091/", "hello-from-docker").map_err(|e| {
            let seen = |args: &[&str]| {
                output_within(docker(args), b"", Duration::from_secs(30))
                    .map_or_else(|e| e.to_string(), |r| format!("{}{}", r.stdout, r.stderr))
            };
            format!(
                "{e:?}; docker's address for it: {}; the guest's: {}",
                seen(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &cid]),
                seen(&["exec", &cid, "ip", "-4", "addr"]),
            )
        });
        let rm = output_within(docker(&["rm", "-f", &cid]), b"", Duration::from_secs(60))?;
        published?;
        // /etc/hostname is docker's own file, bind-mounted: the short id.
        let want = format!("{}\nexec-ok", &cid[..12.min(cid.len())]);
        if e.code != Some(2) || e.stdout.trim() != want {
            return Err(e
                .explain("docker exec: expected status 2 and docker's /etc/hostname")
                .into());
        }
        for r in changes {
            if r.code != Some(0) {
                return Err(r
                    .explain("docker pause, unpause, update --memory 96m")
                    .into());
            }
        }
        if limit.code != Some(0) || limit.stdout.trim() != "100663296" {
            return Err(limit
                .explain("after docker update --memory 96m, the container's memory.max")
                .into());
        }
        if rm.code != Some(0) {
            return Err(rm.explain("docker rm -f").into());
        }
        if cgroup.exists() {
            return Err(format!("cgroup {} is left after docker rm", cgroup.display()).into());
        }
        // The namespaces husk-runtime made for docker's hooks went with
        // their containers.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
        let kept: Vec<&str> = mounts
            .lines()
            .filter(|l| {
                l.split(' ').nth(4).is_some_and(|at| {
                    at.ends_with("/netns")
                        && (at.contains("husk-runtime") || at.contains(d.to_str().unwrap_or("/")))
                })
            })
            .collect();
        if !kept.is_empty() {
            return Err(format!("network namespaces left mounted: {kept:?}").into());
        }
    }
    let left = processes_left(&d.to_string_lossy());
    let left: Vec<&String> = left
        .iter()
        .filter(|l| !l.contains("dockerd") && !l.contains("containerd"))
        .collect();
    if !left.is_empty() {
        return Err(format!("processes left: {left:?}").into());
    }
    Ok(())
}
