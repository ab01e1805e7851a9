//! containerd shim bench: containerd 1.6 (Debian's) running the same
//! busybox image through `containerd-shim-husk-v2` and through its own
//! runc shim (`io.containerd.runc.v2`), side by side, rounds alternating:
//!
//! - `ctr run --rm IMAGE ID true`: a one-container pod (a shim, for husk
//!   its VM) made, started, run to its end and removed;
//! - the host memory of one idle pod (`ctr run -d ... sleep`): the
//!   proportional set size (PSS) of the shim and everything under it
//!   (keeper, supervisor, jailed VMM, virtiofsd, vsock broker) beyond the
//!   guest RAM (the shared memfd they all map), and that guest RAM as the
//!   guest touched it.
//!
//! - through CRI (as the kubelet, `boot_tests::cri`), with runtime
//!   handlers `husk` and `runc` and a CNI network: RunPodSandbox,
//!   CreateContainer and StartContainer of a one-container pod, until
//!   its process runs (`crictl runp` + `create` + `start`); the pod is
//!   removed untimed.
//!
//! husk runs twice in each: warm-started, as it runs by default (the pod's
//! VM restored from the snapshot the warm-up round took, in a snapshot
//! folder of the bench's own), and cold (`io.husk.vm.cold=true`: booted).
//!
//! Median, min and max of N runs (default 10) after one warm-up each.
//!
//!   bench-shim [--runs N]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use boot_tests::containerd::{Containerd, IMAGE};
use boot_tests::cri::{container_config, pod_config, Cri, NamespaceMode};
use boot_tests::husk::build_appliances;
use boot_tests::time_command as time;
use boot_tests::{descendants, table_header, table_ratio, table_row};

const HUSK: &str = "io.containerd.husk.v2";
const RUNC: &str = "io.containerd.runc.v2";
/// The annotation that boots a pod's VM cold.
const COLD: (&str, &str) = ("io.husk.vm.cold", "true");
/// What a CRI round runs: its name, the runtime handler and the pod's
/// annotations.
type Variant = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

fn main() -> ExitCode {
    let runs = boot_tests::runs_arg(10);
    if let Err(e) = build_appliances() {
        eprintln!("bench-shim: {e}");
        return ExitCode::FAILURE;
    }
    boot_tests::bench_main("bench-shim", || bench(runs))
}

fn bench(runs: usize) -> Result<(), String> {
    // Warm starts need a snapshot folder that can be written (the bed's
    // cache cannot): one of the bench's own, given to containerd and so to
    // the shims and the pods' `husk run`.
    let snapshots = tempfile::Builder::new()
        .prefix("bench-shim-snapshots-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let env = [("HUSK_SNAPSHOT_DIR", snapshots.path().as_os_str())];
    let c = Containerd::start_with_env(&env)?;
    let cold = format!("{}={}", COLD.0, COLD.1);
    let shims: [(&str, &str, &[&str]); 3] = [
        ("ctr run --rm true (husk shim, warm)", HUSK, &["--rm"]),
        (
            "ctr run --rm true (husk shim, cold)",
            HUSK,
            &["--rm", "--annotation", &cold],
        ),
        ("ctr run --rm true (runc shim)", RUNC, &["--rm"]),
    ];
    let times: [_; 3] = boot_tests::rounds(runs, |i, round| {
        let (_, runtime, extra) = shims[i];
        time(&mut c.run(runtime, extra, &format!("bench-{i}-{round}"), &["true"]))
    })?;
    table_header(&format!(
        "ctr run --rm busybox true (a one-container pod), {runs} runs:"
    ));
    let medians: Vec<f64> = shims
        .iter()
        .zip(&times)
        .map(|((name, ..), t)| table_row(name, t))
        .collect();
    table_ratio(
        "husk shim warm / runc shim (median)",
        medians[0] / medians[2],
    );
    table_ratio(
        "husk shim cold / runc shim (median)",
        medians[1] / medians[2],
    );
    println!();
    memory(&c)?;
    drop(c);
    println!();
    cri_pod_start(runs, &env)
}

/// RunPodSandbox + CreateContainer + StartContainer through CRI, each
/// handler in turn; seconds to the process running.
fn cri_pod_start(runs: usize, env: &[(&str, &std::ffi::OsStr)]) -> Result<(), String> {
    let c = Containerd::start_cri_with_env(env)?;
    let cri = Cri::connect(&c.socket)?;
    let logs = c.dir.path().join("pods");
    std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
    let handlers: [Variant; 3] = [
        ("CRI pod start (handler husk, warm)", "husk", &[]),
        ("CRI pod start (handler husk, cold)", "husk", &[COLD]),
        ("CRI pod start (handler runc)", "runc", &[]),
    ];
    let times: [_; 3] = boot_tests::rounds(runs, |i, round| {
        let (_, handler, annotations) = handlers[i];
        let pc = pod_config(
            &format!("bench-{i}-{round}"),
            &logs,
            NamespaceMode::Pod,
            annotations,
        );
        let began = Instant::now();
        let pod = cri.run_pod(&pc, handler)?;
        let id = cri.create(
            &pod,
            &container_config("sleep", IMAGE, &["sleep", "3600"]),
            &pc,
        )?;
        cri.start(&id)?;
        let t = began.elapsed().as_secs_f64();
        cri.stop_pod(&pod)?;
        cri.remove_pod(&pod)?;
        Ok(t)
    })?;
    table_header(&format!(
        "CRI RunPodSandbox + CreateContainer + StartContainer (crictl runp, create, start), \
         {runs} runs:"
    ));
    let medians: Vec<f64> = handlers
        .iter()
        .zip(&times)
        .map(|((name, ..), t)| table_row(name, t))
        .collect();
    table_ratio("husk warm / runc (median)", medians[0] / medians[2]);
    table_ratio("husk cold / runc (median)", medians[1] / medians[2]);
    Ok(())
}

fn memory(c: &Containerd) -> Result<(), String> {
    c.ok(
        c.run(HUSK, &["-d"], "bench-idle", &["sleep", "3600"]),
        "ctr run -d",
    )?;
    // Idle: the boot is over, the command sleeps.
    std::thread::sleep(Duration::from_secs(5));
    let connect = c.ok(c.ctr(&["task", "ls"]), "ctr task ls")?;
    let keeper: u32 = connect
        .stdout
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&"bench-idle")).then(|| f.get(1)?.parse().ok())?
        })
        .ok_or("ctr task ls has no pid for the idle pod")?;
    // The shim is the keeper's parent.
    let stat =
        std::fs::read_to_string(format!("/proc/{keeper}/stat")).map_err(|e| e.to_string())?;
    let shim: u32 = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(1)?.parse().ok())
        .ok_or("cannot read the keeper's parent")?;
    let mut removed = Ok(());
    boot_tests::print_memory(
        "host memory of one idle pod (ctr run -d ... sleep 3600)",
        &descendants(shim),
        || removed = c.remove("bench-idle"),
    );
    removed?;
    Ok(())
}
