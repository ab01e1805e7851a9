//! Running the `husk` binary the workspace built, as a user would.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `husk` binary next to this test binary (`target/<profile>/husk`).
pub fn husk_bin() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/deps/boot-<hash>, or target/<profile>/bench-kernel
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("husk");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "no husk binary next to {}; build it first (cargo build -p cli)",
        exe.display()
    ))
}

/// The `husk` binary a bench measures. In the KVM test bed the workspace
/// is an uncached 9p share while QEMU runs from the bed's cached root, so
/// there husk is first copied to `dir`, a folder on the bed's tmpfs: both
/// programs then start from memory, as both would from an installed
/// system. Elsewhere: [`husk_bin`].
pub fn bench_husk_bin(dir: &Path) -> Result<PathBuf, String> {
    let bin = husk_bin()?;
    if std::env::var_os("HUSK_IN_TESTBED").is_none() {
        return Ok(bin);
    }
    // The init the original would use, linked where the copy looks first
    // (a link, so that its remembered digest still applies).
    if let Ok(init) = builder::build::find_init(&bin) {
        let init = std::fs::canonicalize(&init).map_err(|e| e.to_string())?;
        std::os::unix::fs::symlink(&init, dir.join("husk-init"))
            .map_err(|e| format!("linking {} into {}: {e}", init.display(), dir.display()))?;
    }
    let copy = dir.join("husk");
    std::fs::copy(&bin, &copy)
        .map_err(|e| format!("copying {} to {}: {e}", bin.display(), dir.display()))?;
    Ok(copy)
}

/// What one `husk run` did.
#[derive(Debug)]
pub struct HuskRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl HuskRun {
    /// A failure message with everything needed to see why.
    pub fn explain(&self, what: &str) -> String {
        format!(
            "{what}\n--- exit: {:?} after {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }

    /// The value of the first `name=value` line of the guest's output.
    pub fn field(&self, name: &str) -> Option<String> {
        self.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    }
}

/// Runs `husk run ARGS` with `stdin` as input, killed after `limit`.
pub fn husk_run(args: &[&str], stdin: &[u8], limit: Duration) -> Result<HuskRun, String> {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    husk(&all, stdin, limit)
}

/// Runs `husk ARGS` with `stdin` as input, killed after `limit`.
pub fn husk(args: &[&str], stdin: &[u8], limit: Duration) -> Result<HuskRun, String> {
    let bin = husk_bin()?;
    let mut command = Command::new(&bin);
    command.args(args);
    output_within(command, stdin, limit)
}

/// Runs `command` with `stdin` as its input and its output collected,
/// killed (SIGKILL) if it runs past `limit`.
pub fn output_within(
    mut command: Command,
    stdin: &[u8],
    limit: Duration,
) -> Result<HuskRun, String> {
    let start = Instant::now();
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let mut input = child.stdin.take().expect("piped stdin");
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        // Only a real timeout kills (the child is still ours then); the
        // VMM's own --timeout should have fired long before this.
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(limit) {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    });
    let out = child.wait_with_output().map_err(|e| e.to_string());
    let _ = done.send(());
    let _ = watchdog.join();
    let _ = feeder.join();
    let out = out?;
    Ok(HuskRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    })
}

/// Compiles the guest's status reporter (`guest/husk-report.c`) statically
/// into `dir`.
pub fn report_tool(dir: &Path) -> Result<PathBuf, String> {
    guest_tool(dir, "husk-report")
}

/// Compiles the guest program `guest/NAME.c` statically into `dir`.
pub fn guest_tool(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("guest/{name}.c"));
    let out = dir.join(name);
    let status = Command::new("cc")
        .args(["-static", "-Os", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .map_err(|e| format!("cc: {e} (install build-essential: ci/setup)"))?;
    if !status.success() {
        return Err(format!("cc failed on {}", src.display()));
    }
    Ok(out)
}

/// The appliances and images the appliance tests boot. They are built on
/// the host before the tests move into the KVM test bed, where husk's
/// cache is read-only and every build must be a cache hit.
pub const APPLIANCES: [&str; 6] = [
    "examples/hello",
    "examples/busybox",
    "examples/web",
    "oci:examples/busybox/image:latest",
    VOLUMES_IMAGE,
    // The initramfs that brings init to any root from a folder.
    "dir:/",
];

/// The busybox image with VOLUMEs `/home` and `/var/lib/app`, for the
/// anonymous volumes' test: a copy of its layout that
/// [`build_appliances`] makes, relative to the workspace root.
pub const VOLUMES_IMAGE: &str = "oci:target/boot-test-images/volumes:latest";

/// Makes [`VOLUMES_IMAGE`]'s layout at `dir` unless it is there: the
/// busybox layout copied and its config given the VOLUMEs by umoci, in a
/// temporary folder renamed into place.
pub fn make_volumes_layout(dir: &std::path::Path) -> Result<(), String> {
    let root = crate::workspace_root();
    if dir.join("index.json").exists() {
        return Ok(());
    }
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(dir.parent().expect("a parent")).map_err(|e| e.to_string())?;
    let copied = Command::new("cp")
        .arg("-a")
        .arg(root.join("examples/busybox/image"))
        .arg(&tmp)
        .status()
        .map_err(|e| format!("cp: {e}"))?;
    let tag = format!("{}:latest", tmp.display());
    let configured = Command::new("umoci")
        .args(["config", "--image", &tag])
        .args([
            "--config.volume",
            "/home",
            "--config.volume",
            "/var/lib/app",
        ])
        .status()
        .map_err(|e| format!("umoci (ci/setup installs it): {e}"))?;
    if !copied.success() || !configured.success() {
        return Err("cannot make the layout of an image with VOLUMEs".into());
    }
    std::fs::rename(&tmp, dir).map_err(|e| e.to_string())
}

/// Makes the examples' inputs and builds every entry of [`APPLIANCES`]
/// with `husk build`, from the workspace root.
pub fn build_appliances() -> Result<(), String> {
    let root = crate::workspace_root();
    let prepare = Command::new(root.join("examples/prepare"))
        .status()
        .map_err(|e| format!("examples/prepare: {e}"))?;
    if !prepare.success() {
        return Err("examples/prepare failed".into());
    }
    make_volumes_layout(&root.join("target/boot-test-images/volumes"))?;
    for target in APPLIANCES {
        built_image(target)?;
    }
    Ok(())
}

/// The cached image `husk build TARGET` names (a cache hit after
/// [`build_appliances`]).
pub fn built_image(target: &str) -> Result<PathBuf, String> {
    let out = Command::new(husk_bin()?)
        .arg("build")
        .arg(target)
        .current_dir(crate::workspace_root())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "husk build {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}
