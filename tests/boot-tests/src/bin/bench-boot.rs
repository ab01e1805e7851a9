//! Boot bench: `husk run` against QEMU's `microvm` machine, side by side,
//! on the same kernel (husk's vmlinux, PVH), the same initramfs and the
//! same init, 1 vCPU and 128 MiB. Run it through `ci/bench-boot`.
//!
//!   bench-boot [--runs N]
//!
//! Figures per run: spawn to the appliance command's first output line
//! (the init's marker), and spawn to process exit; and husk's spawn to
//! output with the four empty network slots a detached appliance's VM
//! boots with (`--net-slots 4`), against none.

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use boot_tests::husk::{bench_husk_bin, report_tool};
use boot_tests::{guest, husk_kernel, stats};

const MARK: &str = "HUSK-BENCH-MARK";

fn main() -> ExitCode {
    let runs = boot_tests::runs_arg(10);
    boot_tests::bench_main("bench-boot", || bench(runs))
}

/// Spawns `cmd` and returns (time to the marker line, time to exit).
fn measure(cmd: &mut Command) -> Result<(f64, f64), String> {
    boot_tests::time_run(cmd, boot_tests::First::LineWith(MARK))
}

fn qemu(kernel: &Path, initrd: &Path) -> Command {
    let mut c = boot_tests::qemu::microvm_stdio(kernel, "");
    c.arg("-initrd").arg(initrd);
    c
}

/// `husk run` of its default kernel (the same file QEMU is given).
fn husk(bin: &Path, initrd: &Path, timings: bool) -> Command {
    let mut c = Command::new(bin);
    c.arg("run")
        .arg("--initrd")
        .arg(initrd)
        .args(["--cmdline", "quiet", "--cpus", "1", "--memory", "128"])
        .args(["--timeout", "60"]);
    if timings {
        c.arg("--timings");
    }
    c
}

/// The same with the four empty network slots a detached appliance's VM
/// boots with.
fn husk_with_slots(bin: &Path, initrd: &Path) -> Command {
    let mut c = husk(bin, initrd, false);
    c.args(["--net-slots", "4"]);
    c
}

fn bench(runs: usize) -> Result<(), String> {
    let kernel = husk_kernel()?.vmlinux();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let bin = bench_husk_bin(dir.path())?;
    let report = report_tool(dir.path())?;
    let initrd = guest::busybox_initramfs_with(
        dir.path(),
        &format!("husk-report mark\necho {MARK}\nhusk-report 0\nreboot -f"),
        &[(report, "bin/husk-report".into())],
    )
    .map_err(|e| e.to_string())?;

    // One warm-up each, then rounds in a changing order.
    let [h, q, s] = boot_tests::rounds(runs, |side, _| {
        measure(&mut match side {
            0 => husk(&bin, &initrd, false),
            1 => qemu(&kernel, &initrd),
            _ => husk_with_slots(&bin, &initrd),
        })
    })?;
    let (h_first, h_exit): (Vec<f64>, Vec<f64>) = h.into_iter().unzip();
    let (q_first, q_exit): (Vec<f64>, Vec<f64>) = q.into_iter().unzip();
    let s_first: Vec<f64> = s.into_iter().map(|t| t.0).collect();
    println!(
        "Boot under KVM, husk's kernel + busybox initramfs, 1 vCPU, 128 MiB, {runs} runs each, seconds:"
    );
    println!("{:<40} {:>8} {:>8} {:>8}", "", "median", "min", "max");
    for (name, v) in [
        ("husk: spawn to command output", &h_first),
        ("QEMU microvm: spawn to command output", &q_first),
        ("husk: spawn to exit", &h_exit),
        ("QEMU microvm: spawn to exit", &q_exit),
    ] {
        let (m, lo, hi) = stats(v);
        println!("{name:<40} {m:>8.3} {lo:>8.3} {hi:>8.3}");
    }
    println!(
        "husk/QEMU ratio: command output {:.2}x, exit {:.2}x",
        stats(&h_first).0 / stats(&q_first).0,
        stats(&h_exit).0 / stats(&q_exit).0
    );
    let (m, lo, hi) = stats(&s_first);
    println!(
        "{:<40} {m:>8.3} {lo:>8.3} {hi:>8.3}",
        "husk, 4 network slots: command output"
    );
    println!(
        "4 empty network slots (a detached appliance's) / none: {:.3}x",
        m / stats(&h_first).0
    );

    // Where husk's time goes, from one run with --timings.
    let out = husk(&bin, &initrd, true)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    println!("husk --timings (one run):");
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        if let Some(t) = line.strip_prefix("husk: ") {
            println!("  {t}");
        }
    }
    Ok(())
}
