//! OCI runtime bench: podman with husk-runtime against podman with runc
//! and with crun (Debian's), side by side on the same image, in the same
//! run, rounds alternating:
//!
//! - `podman run --rm --network none IMAGE true`, spawn to exit; husk
//!   twice: warm, as containers start by default (the VM restored from
//!   the snapshot the warm-up round took, in a snapshot folder of the
//!   bench's own, since the bed's cache is read-only), and cold (the
//!   annotation `io.husk.vm.cold=true`: the VM boots);
//! - inside husk: `husk-runtime create` (the VM booted or restored, the
//!   agent answered, the command held) and `start` (the command running),
//!   each timed, for the same bundle, warm and cold;
//! - the host memory of one idle container: the proportional set size
//!   (PSS) of every process husk runs for it (keeper, supervisor, jailed
//!   VMM, virtiofsd, vsock broker) beyond the guest RAM (the shared memfd
//!   they all map), and that guest RAM as the guest touched it.
//!
//! Median, min and max of N runs (default 10) after one warm-up each.
//!
//!   bench-runtime [--runs N]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use boot_tests::husk::{bench_husk_bin, build_appliances};
use boot_tests::time_command as time;
use boot_tests::{
    descendants, podman_command, table_header, table_ratio, table_row, workspace_root,
};

const TAG: &str = "localhost/husk-bench-busybox:latest";

fn main() -> ExitCode {
    let runs = boot_tests::runs_arg(10);
    if let Err(e) = build_appliances() {
        eprintln!("bench-runtime: {e}");
        return ExitCode::FAILURE;
    }
    boot_tests::bench_main("bench-runtime", || bench(runs))
}

/// The annotation that boots a container's VM cold.
const COLD: &str = "io.husk.vm.cold=true";

fn bench(runs: usize) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    // Warm starts need a snapshot folder that can be written. podman
    // hands conmon, and so the runtime, only HOME and its configuration's
    // `conmon_env_vars` of its environment: the folder goes there.
    let snapshots = dir.path().join("snapshots");
    std::fs::create_dir(&snapshots).map_err(|e| e.to_string())?;
    let conf = dir.path().join("containers.conf");
    let path = std::env::var("PATH").unwrap_or_default();
    std::fs::write(
        &conf,
        format!(
            "[engine]\nconmon_env_vars = [{:?}, {:?}]\n",
            format!("PATH={path}"),
            format!("HUSK_SNAPSHOT_DIR={}", snapshots.display())
        ),
    )
    .map_err(|e| e.to_string())?;
    // SAFETY: set before any thread of the bench starts.
    unsafe {
        std::env::set_var("HUSK_SNAPSHOT_DIR", &snapshots);
        std::env::set_var("CONTAINERS_CONF", &conf);
    }
    // husk and husk-runtime from the bed's tmpfs, as podman's runtimes
    // run from its cached root (see bench_husk_bin).
    let husk = bench_husk_bin(dir.path())?;
    let runtime = husk.with_file_name("husk-runtime");
    if !runtime.exists() {
        let built = boot_tests::husk::husk_bin()?.with_file_name("husk-runtime");
        std::fs::copy(&built, &runtime).map_err(|e| format!("{}: {e}", built.display()))?;
    }
    if std::env::var_os("HUSK_IN_TESTBED").is_some()
        && std::fs::create_dir_all("/var/cache/containers").is_err()
    {
        // podman's cache folder, read-only in the bed (the host's root).
        let _ = Command::new("mount")
            .args(["-t", "tmpfs", "podman-cache", "/var/cache"])
            .status();
    }
    let store = dir.path().join("podman");
    let layout = std::fs::canonicalize(workspace_root().join("examples/busybox/image"))
        .map_err(|e| e.to_string())?;
    let pulled = podman_command(&store, "runc".as_ref())
        .args(["pull", "-q", &format!("oci:{}:latest", layout.display())])
        .output()
        .map_err(|e| format!("podman pull: {e}"))?;
    let id = String::from_utf8_lossy(&pulled.stdout).trim().to_string();
    if !pulled.status.success() || id.is_empty() {
        return Err(format!(
            "podman pull: {}",
            String::from_utf8_lossy(&pulled.stderr)
        ));
    }
    time(podman_command(&store, "runc".as_ref()).args(["tag", &id, TAG]))?;

    podman_run(&store, &runtime, runs, &snapshots)?;
    create_start(dir.path(), &runtime, runs)?;
    memory(&store, &runtime)
}

fn podman_run(store: &Path, runtime: &Path, runs: usize, snapshots: &Path) -> Result<(), String> {
    let runtimes: [(&str, &std::ffi::OsStr, &[&str]); 4] = [
        (
            "podman run --rm true (husk-runtime, warm)",
            runtime.as_os_str(),
            &[],
        ),
        (
            "podman run --rm true (husk-runtime, cold)",
            runtime.as_os_str(),
            &["--annotation", COLD],
        ),
        ("podman run --rm true (runc)", "runc".as_ref(), &[]),
        ("podman run --rm true (crun)", "crun".as_ref(), &[]),
    ];
    let times: [_; 4] = boot_tests::rounds(runs, |i, round| {
        let (_, rt, extra) = runtimes[i];
        let t = time(
            podman_command(store, rt)
                .args(["run", "--rm", "--network", "none"])
                .args(extra)
                .args([TAG, "true"]),
        )?;
        if i == 0 && round == 0 && taken(snapshots) == 0 {
            return Err(format!(
                "the warm-up took no snapshot in {}: husk-runtime did not start warm",
                snapshots.display()
            ));
        }
        Ok(t)
    })?;
    table_header(&format!(
        "podman run --rm --network none busybox true, {runs} runs:"
    ));
    let medians: Vec<f64> = runtimes
        .iter()
        .zip(&times)
        .map(|((name, ..), t)| table_row(name, t))
        .collect();
    table_ratio("husk-runtime warm / runc (median)", medians[0] / medians[2]);
    table_ratio("husk-runtime cold / runc (median)", medians[1] / medians[2]);
    table_ratio("husk-runtime warm / crun (median)", medians[0] / medians[3]);
    println!();
    Ok(())
}

/// How many snapshots the folder holds.
fn taken(snapshots: &Path) -> usize {
    std::fs::read_dir(snapshots).map_or(0, |d| d.flatten().count())
}

/// A bundle of examples/busybox's root (unpacked with umoci) running
/// `true`, in `dir`.
fn bundle(dir: &Path, cold: bool) -> Result<PathBuf, String> {
    let bundle = dir.join(if cold { "bundle-cold" } else { "bundle" });
    let layout = workspace_root().join("examples/busybox/image");
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:latest", layout.display()))
        .arg(&bundle)
        .output()
        .map_err(|e| format!("umoci: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "umoci unpack: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let (key, value) = COLD.split_once('=').unwrap_or_default();
    let annotations: serde_json::Map<String, serde_json::Value> = if cold {
        [(key.to_string(), value.into())].into_iter().collect()
    } else {
        Default::default()
    };
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "annotations": annotations,
        "root": {"path": "rootfs"},
        "process": {"args": ["true"], "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "linux": {"namespaces": [{"type": "network"}]}
    });
    std::fs::write(bundle.join("config.json"), config.to_string()).map_err(|e| e.to_string())?;
    Ok(bundle)
}

fn create_start(dir: &Path, runtime: &Path, runs: usize) -> Result<(), String> {
    let root = dir.join("runtime-root");
    let rt = |args: &[&str]| {
        let mut c = Command::new(runtime);
        c.arg("--root").arg(&root).args(args);
        c
    };
    let variants = [("warm", bundle(dir, false)?), ("cold", bundle(dir, true)?)];
    // (create, start) per variant.
    let times: [_; 2] = boot_tests::rounds(runs, |v, round| {
        let (name, bundle) = &variants[v];
        let id = format!("bench-{name}-{round}");
        let pid_file = dir.join(format!("{id}.pid"));
        let c = time(
            rt(&["create", "--bundle"])
                .arg(bundle)
                .arg("--pid-file")
                .arg(&pid_file)
                .arg(&id)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        let s = time(&mut rt(&["start", &id]))?;
        // `true` ends at once; the container then stops on its own.
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let state = rt(&["state", &id]).output().map_err(|e| e.to_string())?;
            if String::from_utf8_lossy(&state.stdout).contains("\"stopped\"") {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{id} did not stop"));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        time(&mut rt(&["delete", &id]))?;
        Ok((c, s))
    })?;
    let times = times.map(|t| t.into_iter().unzip::<_, _, Vec<f64>, Vec<f64>>());
    table_header(&format!(
        "inside husk-runtime, the busybox bundle running `true`, {runs} runs:"
    ));
    for ((name, _), (created, started)) in variants.iter().zip(&times) {
        let c = table_row(
            &format!("create, {name} (VM up, agent answered, held)"),
            created,
        );
        let s = table_row(&format!("start, {name} (the process running)"), started);
        table_row(
            &format!("create + start, {name}"),
            &created
                .iter()
                .zip(started)
                .map(|(a, b)| a + b)
                .collect::<Vec<_>>(),
        );
        println!(
            "({name}: create is {:.0}% of create + start)",
            100.0 * c / (c + s)
        );
    }
    println!();
    Ok(())
}

fn memory(store: &Path, runtime: &Path) -> Result<(), String> {
    let podman = |args: &[&str]| {
        let mut c = podman_command(store, runtime.as_os_str());
        c.args(args);
        c
    };
    let out = podman(&["run", "-d", "--network", "none", TAG, "sleep", "3600"])
        .output()
        .map_err(|e| e.to_string())?;
    let cid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || cid.is_empty() {
        return Err(format!(
            "podman run -d: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // Idle: the boot is over, the command sleeps.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let state = Command::new(runtime)
        .args(["--root", "/run/husk-runtime", "state", &cid])
        .output()
        .map_err(|e| e.to_string())?;
    let state: serde_json::Value =
        serde_json::from_slice(&state.stdout).map_err(|e| format!("state: {e}"))?;
    let keeper = state["pid"].as_u64().ok_or("state has no pid")? as u32;
    let procs = descendants(keeper);
    boot_tests::print_memory(
        "host memory of one idle container (podman run -d ... sleep 3600)",
        &procs,
        || {
            let _ = podman(&["rm", "-f", "-t", "0", &cid]).output();
        },
    );
    Ok(())
}
