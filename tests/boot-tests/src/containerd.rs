//! Daemons the boot tests and benches start (containerd, dockerd), and a
//! containerd of a test's own with Debian's `ctr` to drive it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::husk::{husk_bin, output_within, HuskRun};

/// The image every containerd of the tests and benches has imported.
pub const IMAGE: &str = "docker.io/library/busybox:latest";
const LIMIT: Duration = Duration::from_secs(120);

/// A daemon a test started, ended (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // Our own child, not yet reaped: its pid is still its own.
        if let Some(pid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `program` run under the command line prefix `under` (none: itself).
fn program_under(under: &[std::ffi::OsString], program: &str) -> Command {
    match under.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Starts `command` (its output to `log`) and waits for `socket`.
pub fn daemon(mut command: Command, log: &Path, socket: &Path) -> Result<Daemon, String> {
    let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let child = command
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("{command:?}: {e}"))?;
    let d = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !socket.exists() {
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("{command:?} did not listen: {text}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(d)
}

/// A containerd of the caller's own on the bed's tmpfs, with husk's
/// binaries on its PATH (the shim) and the busybox example imported
/// (native snapshotter: the bed has no overlay module).
pub struct Containerd {
    // Dropped first: containerd ends before its folder goes.
    _daemon: Daemon,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
    /// What containerd and `ctr` run under (see [`Containerd::start_under`]).
    under: Vec<std::ffi::OsString>,
}

/// Pod networks of the CRI tests: CNI's `ptp` (a veth pair per pod, no
/// bridge module needed) with addresses from `host-local`.
pub const POD_SUBNET: &str = "10.123.0.0/24";

/// The pod sandbox ("pause") image of the CRI tests: the busybox layout
/// with `sleep` as its command (Kubernetes' own pause image cannot be
/// pulled here).
pub const PAUSE_IMAGE: &str = "husk.test/pause:1";

/// containerd 1.6's configuration for CRI: husk as the runtime handler
/// `husk` (a RuntimeClass's `handler: husk`), runc's shim as `runc`.
fn cri_config(dir: &Path) -> String {
    format!(
        r#"version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.husk]
      runtime_type = "io.containerd.husk.v2"
      pod_annotations = ["io.husk.*"]
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{}"
"#,
        dir.join("net.d").display()
    )
}

fn cni_config(dir: &Path) -> String {
    format!(
        r#"{{"cniVersion": "0.4.0", "name": "husk-test", "plugins": [
  {{"type": "ptp", "ipMasq": false, "ipam": {{"type": "host-local",
    "subnet": "{POD_SUBNET}", "routes": [{{"dst": "0.0.0.0/0"}}],
    "dataDir": "{}"}}}}]}}
"#,
        dir.join("ipam").display()
    )
}

/// Whether `tool` is on PATH.
fn have(tool: &str) -> Result<bool, String> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map_err(|e| e.to_string())?;
    Ok(found.status.success())
}

/// A tmpfs on `folder` when the bed's read-only root does not let us
/// write there (skopeo's scratch space, libcni's cache).
fn writable_in_bed(folder: &str) -> Result<(), String> {
    if std::env::var_os("HUSK_IN_TESTBED").is_none() || tempfile::tempdir_in(folder).is_ok() {
        return Ok(());
    }
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "husk-test", folder])
        .status()
        .map_err(|e| e.to_string())?;
    if !mounted.success() {
        return Err(format!(
            "cannot mount a tmpfs on {folder} (ci/setup makes the folders the bed needs)"
        ));
    }
    Ok(())
}

impl Containerd {
    /// containerd with its default configuration, busybox in the
    /// `default` namespace (what `ctr` uses).
    pub fn start() -> Result<Self, String> {
        Self::launch(false, &[])
    }

    /// As [`Containerd::start`], with `env` added to containerd's
    /// environment (and so to its shims').
    pub fn start_with_env(env: &[(&str, &std::ffi::OsStr)]) -> Result<Self, String> {
        Self::launch(false, env)
    }

    /// containerd with CRI set up as a Kubernetes node's would be for
    /// husk (see `cri_config`), a CNI network, and busybox and the pause
    /// image in CRI's `k8s.io` namespace. Drive it with `crate::cri::Cri`.
    pub fn start_cri() -> Result<Self, String> {
        Self::launch(true, &[])
    }

    /// As [`Containerd::start_cri`], with `env` as for
    /// [`Containerd::start_with_env`].
    pub fn start_cri_with_env(env: &[(&str, &std::ffi::OsStr)]) -> Result<Self, String> {
        Self::launch(true, env)
    }

    /// As [`Containerd::start`], with containerd (and so its shims) and
    /// `ctr` run under `under`, a command line prefix (`nsenter` into a
    /// test's namespaces); the caller ends what it leaves there.
    pub fn start_under(under: &[std::ffi::OsString]) -> Result<Self, String> {
        Self::launch_in(false, &[], under)
    }

    fn launch(cri: bool, env: &[(&str, &std::ffi::OsStr)]) -> Result<Self, String> {
        Self::launch_in(cri, env, &[])
    }

    fn launch_in(
        cri: bool,
        env: &[(&str, &std::ffi::OsStr)],
        under: &[std::ffi::OsString],
    ) -> Result<Self, String> {
        let mut tools = vec!["containerd", "ctr", "skopeo", "script"];
        if cri {
            tools.extend(["umoci", "runc"]);
        }
        for tool in tools {
            if !have(tool)? {
                return Err(format!(
                    "{tool} is not installed (ci/setup installs containerd, skopeo, umoci, runc, bsdutils)"
                ));
            }
        }
        if cri && !Path::new("/usr/lib/cni/ptp").is_file() {
            return Err(
                "/usr/lib/cni/ptp is missing: ci/setup installs containernetworking-plugins".into(),
            );
        }
        let shim = husk_bin()?.with_file_name("containerd-shim-husk-v2");
        if !shim.is_file() {
            return Err(format!(
                "{} is missing: cargo build --workspace --bins",
                shim.display()
            ));
        }
        writable_in_bed("/var/tmp")?;
        if cri {
            writable_in_bed("/var/lib/cni")?;
        }
        let dir = tempfile::Builder::new()
            .prefix("husk-test-containerd-")
            .tempdir_in("/tmp")
            .map_err(|e| e.to_string())?;
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let path = format!(
            "{}:{}",
            shim.parent().expect("a folder").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = program_under(under, "containerd");
        if cri {
            let write = |p: PathBuf, text: String| {
                std::fs::create_dir_all(p.parent().expect("a folder"))
                    .and_then(|()| std::fs::write(&p, text))
                    .map_err(|e| format!("{}: {e}", p.display()))
            };
            write(d.join("config.toml"), cri_config(d))?;
            write(d.join("net.d/10-husk-test.conflist"), cni_config(d))?;
            c.arg("--config").arg(d.join("config.toml"));
        }
        c.arg("--root")
            .arg(d.join("root"))
            .arg("--state")
            .arg(d.join("state"))
            .arg("--address")
            .arg(&socket)
            .env("PATH", path)
            .envs(env.iter().copied());
        let daemon = daemon(c, &d.join("containerd.log"), &socket)?;
        let me = Containerd {
            socket,
            _daemon: daemon,
            dir,
            under: under.to_vec(),
        };
        let layout = std::fs::canonicalize(crate::workspace_root().join("examples/busybox/image"))
            .map_err(|e| e.to_string())?;
        let namespace = if cri { "k8s.io" } else { "default" };
        me.import(&layout, "latest", IMAGE, namespace)?;
        if cri {
            // A copy of the layout with `sleep` as the image's command.
            let pause = me.dir.path().join("pause");
            let copied = Command::new("cp")
                .arg("-a")
                .arg(&layout)
                .arg(&pause)
                .status()
                .map_err(|e| e.to_string())?;
            if !copied.success() {
                return Err(format!("cannot copy {}", layout.display()));
            }
            let mut umoci = Command::new("umoci");
            umoci
                .args(["config", "--image"])
                .arg(format!("{}:latest", pause.display()))
                .args(["--config.cmd", "sleep", "--config.cmd", "2147483647"])
                .args(["--tag", "pause"]);
            me.ok(umoci, "umoci config (the pause image)")?;
            me.import(&pause, "pause", PAUSE_IMAGE, namespace)?;
        }
        Ok(me)
    }

    /// `TAG` of the OCI layout, imported as `name` into `namespace`.
    fn import(&self, layout: &Path, tag: &str, name: &str, namespace: &str) -> Result<(), String> {
        let archive = self.dir.path().join(format!("{tag}.tar"));
        let copied = Command::new("skopeo")
            .args(["copy", "-q"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker-archive:{}:{name}", archive.display()))
            .env("TMPDIR", self.dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !copied.status.success() {
            return Err(format!(
                "skopeo copy: {}",
                String::from_utf8_lossy(&copied.stderr)
            ));
        }
        let mut import = self.ctr(&[
            "-n",
            namespace,
            "images",
            "import",
            "--snapshotter",
            "native",
        ]);
        import.arg(&archive);
        self.ok(import, "ctr images import")?;
        std::fs::remove_file(&archive).map_err(|e| e.to_string())
    }

    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut c = program_under(&self.under, "ctr");
        c.arg("--address").arg(&self.socket).args(args);
        c
    }

    /// `ctr run --runtime RUNTIME [extra] IMAGE ID argv...`
    pub fn run(&self, runtime: &str, extra: &[&str], id: &str, argv: &[&str]) -> Command {
        let mut c = self.ctr(&["run", "--snapshotter", "native", "--runtime", runtime]);
        c.args(extra).args([IMAGE, id]).args(argv);
        c
    }

    pub fn ok(&self, c: Command, what: &str) -> Result<HuskRun, String> {
        let r = output_within(c, b"", LIMIT)?;
        if r.code != Some(0) {
            return Err(self.explain(&r, what));
        }
        Ok(r)
    }

    pub fn expect(&self, c: Command, code: i32, out: &str, what: &str) -> Result<HuskRun, String> {
        let r = output_within(c, b"", LIMIT)?;
        if r.code != Some(code) || !r.stdout.contains(out) {
            return Err(self.explain(&r, &format!("{what}: expected status {code} and {out:?}")));
        }
        Ok(r)
    }

    /// A failure with containerd's log (the shim's log lines are in it).
    pub fn explain(&self, r: &HuskRun, what: &str) -> String {
        self.with_log(&r.explain(what))
    }

    /// `what`, then the last lines of containerd's log.
    pub fn with_log(&self, what: &str) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{what}\n--- containerd's log ends:\n{}", tail.join("\n"))
    }

    /// `ctr task rm -f` and `ctr c rm`: the task killed, waited for and
    /// deleted, then the container.
    pub fn remove(&self, id: &str) -> Result<(), String> {
        self.ok(self.ctr(&["task", "rm", "-f", id]), "ctr task rm -f")?;
        self.ok(self.ctr(&["containers", "rm", id]), "ctr containers rm")?;
        Ok(())
    }

    /// The task's status as `ctr task ls` shows it.
    pub fn status(&self, id: &str) -> Result<String, String> {
        let r = self.ok(self.ctr(&["task", "ls"]), "ctr task ls")?;
        Ok(r.stdout
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first() == Some(&id)).then(|| f.last().unwrap_or(&"").to_string())
            })
            .unwrap_or_default())
    }

    pub fn wait_status(&self, id: &str, want: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.status(id)?;
            if s == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("task {id} is {s:?}, not {want} after 60 s"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
