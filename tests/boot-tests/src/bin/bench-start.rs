//! Start-up bench: VMM process start to the guest's first instructions,
//! with a tiny guest (guest/tiny.S) instead of a kernel, so only the VMM's
//! own start-up is measured.
//!
//!   bench-start [--runs N]
//!
//! On the host as it is (PVM included: the tiny guest needs no real KVM),
//! it reports when husk saw the guest's first port write (`--timings`) and
//! an instruction count of husk's whole run under callgrind. Where QEMU
//! can run the tiny guest (real KVM, or inside ci/kvm-testbed with
//! HUSK_KVM=testbed), it also runs husk and QEMU `microvm` side by side,
//! spawn to exit: after its first instructions the guest triple-faults,
//! which ends both.

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use boot_tests::husk::bench_husk_bin;
use boot_tests::{guest, stats, KvmKind};

/// husk's --timings line for `phase`, in milliseconds.
fn phase_ms(stderr: &str, phase: &str) -> Option<f64> {
    stderr.lines().find_map(|l| {
        let rest = l.strip_prefix("husk:")?.trim_start();
        let (ms, name) = rest.split_once(" ms  ")?;
        (name == phase).then(|| ms.trim().parse().ok())?
    })
}

fn husk_marks(
    bin: &Path,
    elf: &Path,
    jail: &str,
    runs: usize,
) -> Result<Vec<(f64, f64, f64)>, String> {
    let mut out = Vec::new();
    for _ in 0..=runs {
        let o = Command::new(bin)
            .args(["run", jail, "--memory", "32", "--timeout", "0.3"])
            .args(["--timings", "--kernel"])
            .arg(elf)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&o.stderr);
        let get = |p| phase_ms(&err, p).ok_or_else(|| format!("no '{p}' in:\n{err}"));
        out.push((
            get("VM created")?,
            get("memory ready")?,
            get("command exited")?,
        ));
    }
    out.remove(0); // warm-up
    Ok(out)
}

fn spawn_to_exit(cmd: &mut Command) -> Result<f64, String> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let watchdog = boot_tests::Watchdog::new(child.id(), std::time::Duration::from_secs(30));
    let status = child.wait().map_err(|e| e.to_string())?;
    drop(watchdog);
    let elapsed = start.elapsed().as_secs_f64() * 1e3;
    if !status.success() {
        return Err(format!("{cmd:?} failed: {status}"));
    }
    Ok(elapsed)
}

fn callgrind(bin: &Path, elf: &Path, dir: &Path) -> Option<u64> {
    let out = dir.join("callgrind.out");
    let o = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(bin)
        // One process: the jail's supervisor would be a second count.
        .args(["run", "--no-jail", "--memory", "32", "--timeout", "0.3"])
        .arg("--kernel")
        .arg(elf)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let log = String::from_utf8_lossy(&o.stderr);
    // "==pid== Collected : 1234567"
    log.lines()
        .find_map(|l| l.split("Collected :").nth(1))
        .and_then(|n| n.trim().parse().ok())
}

fn main() -> ExitCode {
    let runs = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    if std::env::var("HUSK_KVM").as_deref() == Ok("testbed")
        && std::env::var_os("HUSK_IN_TESTBED").is_none()
    {
        let script = boot_tests::workspace_root().join("ci/kvm-testbed");
        eprintln!("bench-start: running inside the KVM test bed");
        return boot_tests::rerun_in_testbed(&script);
    }
    match bench(runs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-start: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(runs: usize) -> Result<(), String> {
    let kind = KvmKind::detect();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let bin = bench_husk_bin(dir.path())?;
    let spin = guest::tiny_guest(dir.path(), true)?;
    // /proc/self belongs to the process's effective user.
    let root = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata("/proc/self").map_err(|e| e.to_string())?,
    ) == 0;
    let mut ways = vec![("the VMM alone (--no-jail)", "--no-jail")];
    if root {
        ways.push(("jailed (the default for root)", "--jail"));
    }
    println!("husk start-up with a tiny guest on /dev/kvm ({kind:?}), {runs} runs, ms from husk's main():");
    for (way, flag) in ways {
        let marks = husk_marks(&bin, &spin, flag, runs)?;
        let col = |f: fn(&(f64, f64, f64)) -> f64| marks.iter().map(f).collect::<Vec<_>>();
        println!("{way:<34} {:>8} {:>8} {:>8}", "median", "min", "max");
        for (name, v) in [
            ("  VM created", col(|m| m.0)),
            ("  memory ready (32 MiB)", col(|m| m.1)),
            ("  guest's first port write", col(|m| m.2)),
        ] {
            let (m, lo, hi) = stats(&v);
            println!("{name:<34} {m:>8.2} {lo:>8.2} {hi:>8.2}");
        }
    }
    match callgrind(&bin, &spin, dir.path()) {
        Some(n) => println!("callgrind: {n} instructions for one whole husk run (tiny guest)"),
        None => println!("callgrind: valgrind not available or failed"),
    }

    // Side by side with QEMU, where QEMU can run the tiny guest.
    let exiting = guest::tiny_guest(dir.path(), false)?;
    let qemu = || {
        let mut c = Command::new("qemu-system-x86_64");
        c.arg("-M")
            .arg("microvm,x-option-roms=off,pit=off,pic=off,isa-serial=off,rtc=off,acpi=off")
            .args(["-accel", "kvm", "-cpu", "host", "-m", "32M", "-nodefaults"])
            .args([
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
                "-kernel",
            ])
            .arg(&exiting);
        c
    };
    // The probe runs under `timeout` (a QEMU that cannot run the guest may
    // hang); the measured runs do not, as husk's do not: the extra process
    // would add its own start-up to QEMU's figure (57 ms in the test bed).
    let probe = Command::new("timeout")
        .arg("10")
        .arg(qemu().get_program())
        .args(qemu().get_args())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if probe.status.code() != Some(0) {
        println!(
            "QEMU cannot run the tiny guest on this /dev/kvm ({kind:?}); compare side by side \
             with HUSK_KVM=testbed ci/bench-start"
        );
        return Ok(());
    }
    let (mut h, mut q) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        h.push(spawn_to_exit(
            Command::new(&bin)
                .args(["run", "--memory", "32", "--timeout", "10", "--kernel"])
                .arg(&exiting),
        )?);
        q.push(spawn_to_exit(&mut qemu())?);
    }
    let ((hm, hl, hh), (qm, ql, qh)) = (stats(&h), stats(&q));
    println!("spawn to exit, the guest leaving after its first instructions, {runs} runs, ms:");
    println!("{:<34} {hm:>8.2} {hl:>8.2} {hh:>8.2}", "husk");
    println!("{:<34} {qm:>8.2} {ql:>8.2} {qh:>8.2}", "QEMU microvm");
    println!("husk/QEMU ratio: {:.2}x", hm / qm);
    Ok(())
}
