//! Detached-appliance bench: husk against podman with runc, side by side
//! on the same OCI image (examples/busybox's layout), in the same run:
//!
//! - `husk exec NAME true` against `podman exec CTR true` into a running
//!   container (spawn to exit);
//! - `husk run -d` until it returns (the command has started, the agent
//!   answers) against `podman run -d` of the same image, neither with a
//!   network;
//! - with `--baseline-init PATH`: foreground `husk run` of the hello
//!   appliance's initramfs with today's init against the same initramfs
//!   with the init at PATH (built by `ci/bench-exec` from the commit
//!   before the guest agent), alternated: what the agent costs a boot.
//!
//! Median, min and max of N runs (default 20) after one warm-up each.
//!
//!   bench-exec [--runs N] [--baseline-init PATH] [--only exec|run|boot]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use boot_tests::husk::{bench_husk_bin, build_appliances, built_image};
use boot_tests::time_command as time;
use boot_tests::{husk_kernel, table_header, table_ratio, table_row, workspace_root};

const IMAGE: &str = "oci:examples/busybox/image:latest";
const PODMAN_IMAGE: &str = "localhost/husk-bench-busybox:latest";

fn main() -> ExitCode {
    let runs = boot_tests::runs_arg(20);
    if let Err(e) = build_appliances() {
        eprintln!("bench-exec: {e}");
        return ExitCode::FAILURE;
    }
    boot_tests::bench_main("bench-exec", || bench(runs))
}

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

/// podman on the bed's tmpfs, with runc, no network, no systemd.
fn podman(root: &Path) -> Command {
    boot_tests::podman_command(root, "runc".as_ref())
}

fn bench(runs: usize) -> Result<(), String> {
    std::env::set_current_dir(workspace_root()).map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let bin = bench_husk_bin(dir.path())?;
    let only = arg("--only");
    let want = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let podman_root = dir.path().join("podman");
    if want("exec") || want("run") {
        // The image into podman's store once, as husk's is in its cache.
        let pulled = podman(&podman_root)
            .args(["pull", "-q", IMAGE])
            .output()
            .map_err(|e| format!("podman pull: {e}"))?;
        let id = String::from_utf8_lossy(&pulled.stdout).trim().to_string();
        if !pulled.status.success() || id.is_empty() {
            return Err(format!(
                "podman pull {IMAGE}: {}",
                String::from_utf8_lossy(&pulled.stderr)
            ));
        }
        let mut tag = podman(&podman_root);
        tag.args(["tag", &id, PODMAN_IMAGE]);
        time(&mut tag)?;
    }
    if want("exec") {
        exec(&bin, &podman_root, runs)?;
    }
    if want("run") {
        run_detached(&bin, &podman_root, runs)?;
    }
    if want("boot") {
        match arg("--baseline-init") {
            Some(init) => boot(&bin, Path::new(&init), dir.path(), runs)?,
            None if only.is_some() => return Err("--only boot needs --baseline-init PATH".into()),
            None => {}
        }
    }
    Ok(())
}

fn exec(bin: &Path, podman_root: &Path, runs: usize) -> Result<(), String> {
    time(Command::new(bin).args([
        "run",
        "-d",
        "--net",
        "none",
        "--name",
        "bench-exec",
        IMAGE,
        "--",
        "sleep",
        "3600",
    ]))?;
    let mut start = podman(podman_root);
    start.args([
        "run",
        "-d",
        "--net",
        "none",
        "--name",
        "bench-exec",
        PODMAN_IMAGE,
        "sleep",
        "3600",
    ]);
    let result = (|| {
        time(&mut start)?;
        side_by_side(
            &format!("exec of `true` into a running appliance / container, {runs} runs:"),
            ("husk exec NAME true", &mut |_| {
                time(Command::new(bin).args(["exec", "bench-exec", "true"]))
            }),
            ("podman exec CTR true (runc)", &mut |_| {
                time(podman(podman_root).args(["exec", "bench-exec", "true"]))
            }),
            "husk / podman (median)",
            runs,
        )
    })();
    let _ = Command::new(bin).args(["rm", "-f", "bench-exec"]).output();
    let _ = podman(podman_root)
        .args(["rm", "-f", "-t", "0", "bench-exec"])
        .output();
    result
}

fn run_detached(bin: &Path, podman_root: &Path, runs: usize) -> Result<(), String> {
    side_by_side(
        &format!("run -d of the busybox image until it returns (command started), {runs} runs:"),
        ("husk run -d (VM booted, agent answered)", &mut |i| {
            let name = format!("bench-run-{i}");
            let t = time(Command::new(bin).args([
                "run", "-d", "--net", "none", "--name", &name, IMAGE, "--", "sleep", "3600",
            ]));
            let _ = Command::new(bin).args(["rm", "-f", &name]).output();
            t
        }),
        ("podman run -d (runc)", &mut |i| {
            let name = format!("bench-run-{i}");
            let t = time(podman(podman_root).args([
                "run",
                "-d",
                "--net",
                "none",
                "--name",
                &name,
                PODMAN_IMAGE,
                "sleep",
                "3600",
            ]));
            let _ = podman(podman_root)
                .args(["rm", "-f", "-t", "0", &name])
                .output();
            t
        }),
        "husk / podman (median)",
        runs,
    )
}

/// One timed attempt of a side, given the round's number.
type Side<'a> = (&'a str, &'a mut dyn FnMut(usize) -> Result<f64, String>);

/// Times the two sides in rounds ([`boot_tests::rounds`]), `runs` after
/// one warm-up, and prints each one's median, min and max and the ratio
/// of the medians.
fn side_by_side(
    title: &str,
    (a_name, a): Side,
    (b_name, b): Side,
    ratio: &str,
    runs: usize,
) -> Result<(), String> {
    let [at, bt] = boot_tests::rounds(runs, |side, i| if side == 0 { a(i) } else { b(i) })?;
    table_header(title);
    let am = table_row(a_name, &at);
    let bm = table_row(b_name, &bt);
    table_ratio(ratio, am / bm);
    Ok(())
}

/// The hello appliance's initramfs with `init` in place of husk's init.
fn with_init(image: &Path, init: &Path, dir: &Path, name: &str) -> Result<PathBuf, String> {
    let tree = dir.join(format!("{name}-tree"));
    std::fs::create_dir_all(&tree).map_err(|e| e.to_string())?;
    let out = dir.join(format!("{name}.cpio.gz"));
    let script = "gzip -dc \"$1\" | cpio -idm --quiet && cp \"$2\" .husk/init && \
                  find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1 > \"$3\"";
    let ok = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(image)
        .arg(init)
        .arg(&out)
        .current_dir(&tree)
        .status()
        .map_err(|e| e.to_string())?
        .success();
    if !ok {
        return Err(format!(
            "cannot put {} into {}",
            init.display(),
            image.display()
        ));
    }
    Ok(out)
}

fn boot(bin: &Path, baseline: &Path, dir: &Path, runs: usize) -> Result<(), String> {
    let image = built_image("examples/hello")?;
    let current = builder::build::find_init(bin).map_err(|e| e.to_string())?;
    let kernel = husk_kernel()?.vmlinux();
    let now = with_init(&image, &current, dir, "current")?;
    let before = with_init(&image, baseline, dir, "baseline")?;
    let boot = |initrd: &Path| -> Result<f64, String> {
        let mut c = Command::new(bin);
        c.args(["run", "--memory", "128", "--timeout", "60", "--kernel"])
            .arg(&kernel)
            .arg("--initrd")
            .arg(initrd)
            .args(["--cmdline", "quiet rdinit=/.husk/init"]);
        Ok(boot_tests::time_run(&mut c, boot_tests::First::Byte)?.1)
    };
    side_by_side(
        &format!("foreground husk run of the hello appliance to exit, {runs} runs, alternated:"),
        ("init with the guest agent", &mut |_| boot(&now)),
        ("init before the guest agent", &mut |_| boot(&before)),
        "with / before (median)",
        runs,
    )
}
