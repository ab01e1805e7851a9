//! `containerd-shim-husk-v2` under Debian's containerd 1.6, driven with
//! `ctr` (runtime `io.containerd.husk.v2`): tasks, execs, a terminal,
//! pods of several containers in one VM (CRI's sandbox annotations, as
//! the CRI plugin sets them), and the end of a pod's VM or of the shim
//! itself by `kill -9`. Each test starts a containerd of its own on the
//! bed's tmpfs and checks that nothing of husk's is left after it: no
//! shim, keeper, VMM or virtiofsd, no folder under /run/husk-shim, no
//! mount.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use boot_tests::husk::{husk_bin, output_within, HuskRun};
use libtest_mimic::{Failed, Trial};

use super::oci::{daemon, processes_naming, Daemon};
use super::shares::folder;

const RUNTIME: &str = "io.containerd.husk.v2";
const IMAGE: &str = "docker.io/library/busybox:latest";
const LIMIT: Duration = Duration::from_secs(120);
const STATE_ROOT: &str = "/run/husk-shim";

pub fn trials() -> Vec<Trial> {
    vec![
        boot_tests::trial(
            "shim_ctr_run_exec_stdin_kill_and_a_terminal",
            tasks_and_execs,
        ),
        boot_tests::trial(
            "shim_pod_containers_share_one_vm_and_localhost",
            pod_of_three,
        ),
        boot_tests::trial("shim_kill_9_of_the_vmm_or_the_shim_leaves_nothing", killed),
        boot_tests::trial("shim_pods_made_and_removed_in_a_loop", pod_cycles),
    ]
}

/// A containerd of the test's own, with the shim on its PATH and the
/// busybox example imported (native snapshotter: the bed has no overlay).
struct Containerd {
    // Dropped first: containerd ends before its folder goes.
    _daemon: Daemon,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Containerd {
    fn start() -> Result<Self, Failed> {
        for tool in ["containerd", "ctr", "skopeo", "script"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()?;
            if !found.status.success() {
                return Err(format!(
                    "{tool} is not installed (ci/setup installs containerd, skopeo, bsdutils)"
                )
                .into());
            }
        }
        let shim = husk_bin()?.with_file_name("containerd-shim-husk-v2");
        if !shim.is_file() {
            return Err(format!(
                "{} is missing: cargo build --workspace --bins",
                shim.display()
            )
            .into());
        }
        if std::env::var_os("HUSK_IN_TESTBED").is_some()
            && tempfile::tempdir_in("/var/tmp").is_err()
        {
            // skopeo's scratch space: the host's read-only root in the bed.
            let mounted = Command::new("mount")
                .args(["-t", "tmpfs", "husk-test", "/var/tmp"])
                .status()?;
            if !mounted.success() {
                return Err("cannot mount a tmpfs on /var/tmp".into());
            }
        }
        nothing_left("before the test")?;
        let dir = folder("shim")?;
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let path = format!(
            "{}:{}",
            shim.parent().expect("a folder").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = Command::new("containerd");
        c.arg("--root")
            .arg(d.join("root"))
            .arg("--state")
            .arg(d.join("state"))
            .arg("--address")
            .arg(&socket)
            .env("PATH", path);
        let daemon = daemon(c, &d.join("containerd.log"), &socket)?;
        let me = Containerd {
            socket,
            _daemon: daemon,
            dir,
        };
        let layout =
            std::fs::canonicalize(boot_tests::workspace_root().join("examples/busybox/image"))?;
        let archive = me.dir.path().join("busybox.tar");
        let copied = Command::new("skopeo")
            .args(["copy", "-q"])
            .arg(format!("oci:{}:latest", layout.display()))
            .arg(format!("docker-archive:{}:{IMAGE}", archive.display()))
            .env("TMPDIR", me.dir.path())
            .output()?;
        if !copied.status.success() {
            return Err(format!("skopeo copy: {}", String::from_utf8_lossy(&copied.stderr)).into());
        }
        let mut import = me.ctr(&["images", "import", "--snapshotter", "native"]);
        import.arg(&archive);
        me.ok(import, "ctr images import")?;
        Ok(me)
    }

    fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&self.socket).args(args);
        c
    }

    /// `ctr run --runtime io.containerd.husk.v2 [extra] IMAGE ID argv...`
    fn run(&self, extra: &[&str], id: &str, argv: &[&str]) -> Command {
        let mut c = self.ctr(&["run", "--snapshotter", "native", "--runtime", RUNTIME]);
        c.args(extra).args([IMAGE, id]).args(argv);
        c
    }

    fn ok(&self, c: Command, what: &str) -> Result<HuskRun, Failed> {
        let r = output_within(c, b"", LIMIT)?;
        if r.code != Some(0) {
            return Err(self.explain(&r, what).into());
        }
        Ok(r)
    }

    fn expect(&self, c: Command, code: i32, out: &str, what: &str) -> Result<HuskRun, Failed> {
        let r = output_within(c, b"", LIMIT)?;
        if r.code != Some(code) || !r.stdout.contains(out) {
            return Err(self
                .explain(&r, &format!("{what}: expected status {code} and {out:?}"))
                .into());
        }
        Ok(r)
    }

    /// A failure with containerd's log (the shim's log lines are in it).
    fn explain(&self, r: &HuskRun, what: &str) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "{}\n--- containerd's log ends:\n{}",
            r.explain(what),
            tail.join("\n")
        )
    }

    /// `ctr task rm -f` and `ctr c rm`: the task killed, waited for and
    /// deleted, then the container.
    fn remove(&self, id: &str) -> Result<(), Failed> {
        self.ok(self.ctr(&["task", "rm", "-f", id]), "ctr task rm -f")?;
        self.ok(self.ctr(&["containers", "rm", id]), "ctr containers rm")?;
        Ok(())
    }

    /// The task's status as `ctr task ls` shows it.
    fn status(&self, id: &str) -> Result<String, Failed> {
        let r = self.ok(self.ctr(&["task", "ls"]), "ctr task ls")?;
        Ok(r.stdout
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first() == Some(&id)).then(|| f.last().unwrap_or(&"").to_string())
            })
            .unwrap_or_default())
    }

    fn wait_status(&self, id: &str, want: &str) -> Result<(), Failed> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.status(id)?;
            if s == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("task {id} is {s:?}, not {want} after 60 s").into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Pod VM folders under /run/husk-shim.
fn pod_folders() -> Vec<PathBuf> {
    std::fs::read_dir(STATE_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// Nothing of the shim's on the host: processes, folders, mounts.
fn nothing_left(when: &str) -> Result<(), Failed> {
    // What ends asynchronously (a keeper, its VM) gets a moment.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let procs: Vec<String> = ["containerd-shim-husk-v2", "husk-shim", "virtiofsd"]
            .iter()
            .flat_map(|w| processes_naming(w))
            .collect();
        let folders = pod_folders();
        let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")?
            .lines()
            .filter(|l| l.contains(STATE_ROOT))
            .map(str::to_string)
            .collect();
        if procs.is_empty() && folders.is_empty() && mounts.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{when}: left behind: processes {procs:?}, folders {folders:?}, mounts {mounts:?}"
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Exit statuses, output, execs (status, output, stdin), a kill's
/// status, and a terminal.
fn tasks_and_execs() -> Result<(), Failed> {
    let c = Containerd::start()?;
    c.expect(
        c.run(
            &["--rm"],
            "t1",
            &["sh", "-c", "echo hi from the shim; exit 3"],
        ),
        3,
        "hi from the shim",
        "ctr run --rm",
    )?;
    // The container's own root, with /proc, /sys and /dev in it.
    c.expect(
        c.run(
            &["--rm"],
            "t2",
            &[
                "sh",
                "-c",
                "test -d /proc/self && test -c /dev/null && ls /bin/busybox",
            ],
        ),
        0,
        "/bin/busybox",
        "the container's root",
    )?;

    c.ok(c.run(&["-d"], "t3", &["sleep", "1000"]), "ctr run -d")?;
    c.wait_status("t3", "RUNNING")?;
    c.expect(
        c.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            "t3",
            "sh",
            "-c",
            "echo exec here; exit 4",
        ]),
        4,
        "exec here",
        "ctr task exec",
    )?;
    let mut with_stdin = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e2",
        "t3",
        "sh",
        "-c",
        "read x; echo got $x",
    ]);
    with_stdin.stdin(std::process::Stdio::piped());
    let r = output_within(with_stdin, b"hello-stdin\n", LIMIT)?;
    if r.code != Some(0) || !r.stdout.contains("got hello-stdin") {
        return Err(c.explain(&r, "ctr task exec with stdin").into());
    }
    c.ok(c.ctr(&["task", "kill", "t3"]), "ctr task kill")?;
    c.wait_status("t3", "STOPPED")?;
    let r = c.ok(c.ctr(&["task", "delete", "t3"]), "ctr task delete")?;
    // sleep ended by SIGTERM: 128 + 15, as runc's shim reports it.
    if !r.stderr.contains("143") && !r.stdout.contains("143") {
        return Err(c
            .explain(&r, "ctr task delete: expected exit status 143")
            .into());
    }
    c.ok(c.ctr(&["containers", "rm", "t3"]), "ctr containers rm")?;

    // A terminal: ctr -t needs one of its own, from script(1).
    let line = format!(
        "ctr --address {} run --snapshotter native --runtime {RUNTIME} -t --rm {IMAGE} t4 sh -c 'tty; exit 5'",
        c.socket.display()
    );
    let mut script = Command::new("script");
    script.args(["-qec", &line, "/dev/null"]);
    c.expect(script, 5, "/dev/pts/", "ctr run -t")?;
    drop(c);
    nothing_left("after the tasks")
}

/// A pod as CRI makes one: a sandbox container, then containers naming it
/// (annotations), in one shim and one VM; they reach each other on
/// localhost, each with its own root.
fn pod_of_three() -> Result<(), Failed> {
    let c = Containerd::start()?;
    let pod = |kind: &str| -> Vec<String> {
        vec![
            "--annotation".into(),
            format!("io.kubernetes.cri.container-type={kind}"),
            "--annotation".into(),
            "io.kubernetes.cri.sandbox-id=pod1".into(),
        ]
    };
    let sandbox = pod("sandbox");
    let member = pod("container");
    let sb: Vec<&str> = sandbox.iter().map(String::as_str).collect();
    let mb: Vec<&str> = member.iter().map(String::as_str).collect();
    let mut extra = vec!["-d"];
    extra.extend(&sb);
    c.ok(c.run(&extra, "pod1", &["sleep", "100000"]), "the sandbox")?;
    let mut extra = vec!["-d"];
    extra.extend(&mb);
    c.ok(
        c.run(
            &extra,
            "web",
            &[
                "sh",
                "-c",
                "mkdir -p /www && echo pod-page > /www/index.html && exec httpd -f -p 8080 -h /www",
            ],
        ),
        "the web container",
    )?;
    let folders = pod_folders();
    if folders.len() != 1 {
        return Err(
            format!("two containers of a pod: expected one VM folder, found {folders:?}").into(),
        );
    }
    let shims = processes_naming("containerd-shim-husk-v2 -namespace");
    if shims.len() != 1 {
        return Err(format!("two containers of a pod: expected one shim, found {shims:?}").into());
    }
    let mut extra = vec!["--rm"];
    extra.extend(&mb);
    c.expect(
        c.run(
            &extra,
            "client",
            &[
                "sh",
                "-c",
                "test ! -e /www || exit 9; for i in $(seq 1 100); do wget -qO- http://127.0.0.1:8080/ && exit 0; sleep 0.2; done; exit 1",
            ],
        ),
        0,
        "pod-page",
        "a container reaching its pod's web server on localhost",
    )?;
    c.remove("web")?;
    c.remove("pod1")?;
    drop(c);
    nothing_left("after the pod")
}

/// `kill -9` of a pod's VMM: containerd sees the task end (255); of the
/// shim: containerd cleans up through `containerd-shim-husk-v2 delete`.
/// Nothing is left either way.
fn killed() -> Result<(), Failed> {
    let c = Containerd::start()?;
    c.ok(c.run(&["-d"], "k1", &["sleep", "100000"]), "ctr run -d")?;
    c.wait_status("k1", "RUNNING")?;
    // The VMM: the jailed VM process (runs as nobody) of the one pod.
    let vmm = vmm_pids();
    if vmm.is_empty() {
        return Err("no VMM process found for the pod".into());
    }
    for pid in &vmm {
        // SAFETY: kill(2) with a pid just read; it touches no memory.
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
    }
    c.wait_status("k1", "STOPPED")?;
    c.remove("k1")?;
    nothing_left("after kill -9 of the VMM")?;

    c.ok(c.run(&["-d"], "k2", &["sleep", "100000"]), "ctr run -d")?;
    c.wait_status("k2", "RUNNING")?;
    let shims: Vec<u32> = processes_naming("containerd-shim-husk-v2 -namespace")
        .iter()
        .filter_map(|l| l.split(':').next()?.parse().ok())
        .collect();
    if shims.len() != 1 {
        return Err(format!("expected one shim, found {shims:?}").into());
    }
    // SAFETY: as above.
    unsafe { libc::kill(shims[0] as libc::pid_t, libc::SIGKILL) };
    // containerd notices, cleans up and forgets the task.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c.status("k2")?.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = output_within(c.ctr(&["containers", "rm", "k2"]), b"", LIMIT)?;
    drop(c);
    nothing_left("after kill -9 of the shim")
}

/// The pid of every process running as nobody whose command line names
/// the pod root: the jailed VMMs.
fn vmm_pids() -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    processes_naming(STATE_ROOT)
        .iter()
        .filter_map(|l| l.split(':').next()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}"))
                .map(|m| m.uid() == 65534)
                .unwrap_or(false)
        })
        .collect()
}

/// Pods made and removed one after another (`HUSK_SHIM_PODS`, 50 by
/// default): each leaves nothing.
fn pod_cycles() -> Result<(), Failed> {
    let n: usize = std::env::var("HUSK_SHIM_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let c = Containerd::start()?;
    for i in 0..n {
        let id = format!("cycle{i}");
        c.expect(
            c.run(&["--rm"], &id, &["sh", "-c", "echo cycle; exit 0"]),
            0,
            "cycle",
            &format!("pod {i}"),
        )?;
        if !pod_folders().is_empty() {
            nothing_left(&format!("after pod {i}"))?;
        }
    }
    drop(c);
    nothing_left(&format!("after {n} pods"))
}
