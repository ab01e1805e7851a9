//! Appliance bench: `husk run` of cached appliance images against QEMU's
//! `microvm` booting the same image with the same kernel, side by side:
//! spawn to the command's first output byte and to exit, median, min and
//! max of N runs (default 20). Run it through `ci/bench-build`.

use std::path::Path;
use std::process::{Command, ExitCode};

use boot_tests::husk::{bench_husk_bin, build_appliances, built_image};
use boot_tests::{husk_kernel, stats, workspace_root};

fn main() -> ExitCode {
    let runs = boot_tests::runs_arg(20);
    if let Err(e) = build_appliances() {
        eprintln!("bench-appliance: {e}");
        return ExitCode::FAILURE;
    }
    boot_tests::bench_main("bench-appliance", || bench(runs))
}

/// (spawn to first stdout byte, spawn to exit), in seconds.
fn measure(cmd: &mut Command) -> Result<(f64, f64), String> {
    boot_tests::time_run(cmd, boot_tests::First::Byte)
}

fn qemu(kernel: &Path, image: &Path, ext4: bool) -> Command {
    if ext4 {
        let mut c = boot_tests::qemu::microvm_stdio(
            kernel,
            "root=/dev/vda rootfstype=ext4 ro init=/.husk/init",
        );
        c.arg("-drive")
            .arg(format!(
                "id=root,file={},format=raw,if=none,readonly=on",
                image.display()
            ))
            .args(["-device", "virtio-blk-device,drive=root"]);
        c
    } else {
        let mut c = boot_tests::qemu::microvm_stdio(kernel, "rdinit=/.husk/init");
        c.arg("-initrd").arg(image);
        c
    }
}

fn bench(runs: usize) -> Result<(), String> {
    std::env::set_current_dir(workspace_root()).map_err(|e| e.to_string())?;
    let kernel = husk_kernel()?.vmlinux();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let bin = bench_husk_bin(dir.path())?;
    println!("husk run of a cached appliance vs QEMU microvm on the same image and kernel,");
    println!("1 vCPU, 128 MiB, {runs} runs each, seconds:");
    println!("{:<48} {:>8} {:>8} {:>8}", "", "median", "min", "max");
    for (target, ext4) in [("examples/hello", false), ("examples/busybox", true)] {
        let image = built_image(target)?;
        let [husk, peer] = boot_tests::rounds(runs, |side, _| {
            if side == 0 {
                let mut husk = Command::new(&bin);
                husk.args(["run", "--memory", "128", "--timeout", "60", target]);
                measure(&mut husk)
            } else {
                measure(&mut qemu(&kernel, &image, ext4))
            }
        })?;
        let (hf, he): (Vec<f64>, Vec<f64>) = husk.into_iter().unzip();
        let (qf, qe): (Vec<f64>, Vec<f64>) = peer.into_iter().unzip();
        for (what, v) in [
            ("husk: spawn to output", &hf),
            ("QEMU microvm: spawn to output", &qf),
            ("husk: spawn to exit", &he),
            ("QEMU microvm: spawn to exit", &qe),
        ] {
            let (m, lo, hi) = stats(v);
            println!(
                "{:<48} {m:>8.3} {lo:>8.3} {hi:>8.3}",
                format!("{target} {what}")
            );
        }
        println!(
            "{target}: husk/QEMU ratio: output {:.2}x, exit {:.2}x",
            stats(&hf).0 / stats(&qf).0,
            stats(&he).0 / stats(&qe).0
        );
    }

    // What the sandbox costs: the same run with seccomp and the jail (the
    // default for root) and with both off.
    let [on, off] = boot_tests::rounds(runs, |side, _| {
        let mut husk = Command::new(&bin);
        husk.arg("run");
        if side == 1 {
            husk.args(["--seccomp", "off", "--no-jail"]);
        }
        husk.args(["--timeout", "60", "examples/hello"]);
        Ok(measure(&mut husk)?.1)
    })?;
    for (what, v) in [("sandbox on", &on), ("sandbox off", &off)] {
        let (m, lo, hi) = stats(v);
        println!(
            "{:<48} {m:>8.3} {lo:>8.3} {hi:>8.3}",
            format!("examples/hello {what}: spawn to exit")
        );
    }
    println!(
        "sandbox (seccomp + jail) on/off: {:+.1}%",
        (stats(&on).0 / stats(&off).0 - 1.0) * 100.0
    );
    Ok(())
}
