//! Export bench: `husk export` of each target to every format (the image
//! already built and cached, as a second export finds it), median, min
//! and max of N runs with the output's size; beside it, `qemu-img
//! convert` of the same raw disk to that format alone, the floor an
//! export cannot go under. Then the exported qcow2 booted under QEMU q35
//! with OVMF (TCG on this host): to the appliance's first output and to
//! the machine powering itself off, beside the same kernel and root
//! booted by QEMU's `-kernel` under SeaBIOS, which shows what UEFI and
//! booting from the disk add. Run it through `ci/bench-export`.
//!
//!   bench-export [--runs N] TARGET...

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use boot_tests::husk::husk_bin;
use boot_tests::{table_header, table_ratio, table_row};

const FORMATS: [(&str, &str, &str); 7] = [
    // (--format, extension, qemu-img's name for the floor; "" none)
    ("raw", "raw", ""),
    ("qcow2", "qcow2", "qcow2"),
    ("vmdk", "vmdk", "vmdk"),
    ("vhd", "vhd", "vpc"),
    ("vhdx", "vhdx", "vhdx"),
    ("ova", "ova", "vmdk"),
    ("gce", "tar.gz", ""),
];

fn main() -> ExitCode {
    boot_tests::targets_main("bench-export", 5, bench)
}

fn husk(args: &[&str]) -> Result<String, String> {
    let out = Command::new(husk_bin()?)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "husk {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn bench(runs: usize, targets: &[String]) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut busybox_qcow2 = None;
    for target in targets {
        husk(&["build", target])?;
        let name = Path::new(target.trim_end_matches(":latest"))
            .file_name()
            .map_or("image".into(), |n| n.to_string_lossy().into_owned());
        let raw = dir.path().join(format!("{name}.raw"));
        husk(&[
            "export",
            target,
            "--format",
            "raw",
            "-o",
            raw.to_str().unwrap(),
        ])?;
        println!(
            "{target}: raw disk {:.0} MiB",
            mib(fs::metadata(&raw).unwrap().len())
        );
        table_header(&format!(
            "husk export {name}, {runs} runs (size of the output; floor: qemu-img convert alone)"
        ));
        for (format, ext, qemu_name) in FORMATS {
            let out = dir.path().join(format!("{name}-bench.{ext}"));
            let mut times = Vec::new();
            for _ in 0..runs {
                let start = Instant::now();
                husk(&[
                    "export",
                    target,
                    "--format",
                    format,
                    "-o",
                    out.to_str().unwrap(),
                ])?;
                times.push(start.elapsed().as_secs_f64());
            }
            let size = fs::metadata(&out).map_err(|e| e.to_string())?.len();
            let med = table_row(&format!("{format} ({:.1} MiB)", mib(size)), &times);
            if format == "qcow2" && busybox_qcow2.is_none() {
                let keep = dir.path().join(format!("{name}-boot.qcow2"));
                fs::rename(&out, &keep).map_err(|e| e.to_string())?;
                busybox_qcow2 = Some(keep);
            } else {
                fs::remove_file(&out).map_err(|e| e.to_string())?;
            }
            if qemu_name.is_empty() {
                continue;
            }
            let floor_out = dir.path().join("floor.img");
            let mut floor = Vec::new();
            for _ in 0..runs {
                let start = Instant::now();
                let mut cmd = Command::new("qemu-img");
                cmd.args(["convert", "-f", "raw", "-O", qemu_name]);
                if format == "ova" {
                    cmd.args(["-o", "subformat=streamOptimized"]);
                }
                let st = cmd
                    .arg(&raw)
                    .arg(&floor_out)
                    .status()
                    .map_err(|e| format!("qemu-img: {e}"))?;
                if !st.success() {
                    return Err(format!("qemu-img convert to {qemu_name} failed"));
                }
                floor.push(start.elapsed().as_secs_f64());
            }
            let _ = fs::remove_file(&floor_out);
            let floor_med = table_row(&format!("  qemu-img convert -O {qemu_name}"), &floor);
            table_ratio("  export / convert", med / floor_med);
        }
        fs::remove_file(&raw).map_err(|e| e.to_string())?;
    }
    if let Some(disk) = busybox_qcow2 {
        boot(runs, &disk, dir.path())?;
    }
    Ok(())
}

/// Waits until `console` holds `text` or `child` exits; seconds since
/// `start`, or None when it exited first.
fn until(console: &Path, text: &str, child: &mut Child, start: Instant) -> Option<f64> {
    loop {
        if fs::read_to_string(console).is_ok_and(|c| c.contains(text)) {
            return Some(start.elapsed().as_secs_f64());
        }
        if child.try_wait().ok().flatten().is_some() || start.elapsed() > Duration::from_secs(300) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn boot(runs: usize, disk: &Path, dir: &Path) -> Result<(), String> {
    let kernel = PathBuf::from(husk(&["kernel", "path", "--flavor", "portable"])?);
    // The root partition's UUID, for the firmware-less boot's command line.
    let out = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(disk)
        .arg(dir.join("boot.raw"))
        .status()
        .map_err(|e| e.to_string())?;
    if !out.success() {
        return Err("qemu-img convert to raw failed".into());
    }
    let table = Command::new("sfdisk")
        .arg("--json")
        .arg(dir.join("boot.raw"))
        .output()
        .map_err(|e| format!("sfdisk: {e}"))?;
    let _ = fs::remove_file(dir.join("boot.raw"));
    let json: serde_json::Value =
        serde_json::from_slice(&table.stdout).map_err(|e| e.to_string())?;
    let uuid = json["partitiontable"]["partitions"][1]["uuid"]
        .as_str()
        .ok_or("no root partition")?
        .to_string();

    let mut first = [Vec::new(), Vec::new()];
    let mut off = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (i, uefi) in [true, false].into_iter().enumerate() {
            let console = dir.join("console.log");
            let _ = fs::remove_file(&console);
            let vars = dir.join("vars.fd");
            let mut qemu = boot_tests::qemu::q35(
                disk,
                "qcow2",
                "virtio-blk-pci,drive=d0",
                &console,
                uefi.then_some(vars.as_path()),
            )
            .map_err(|e| e.to_string())?;
            if !uefi {
                qemu.arg("-kernel").arg(&kernel).arg("-append").arg(format!(
                    "root=PARTUUID={uuid} rootfstype=ext4 rootwait rw init=/.husk/init \
                     husk.portable console=ttyS0,115200 panic=10"
                ));
            }
            let start = Instant::now();
            let mut child = qemu
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("qemu-system-x86_64: {e}"))?;
            let shown = until(&console, "Welcome to a husk appliance", &mut child, start);
            let status = child.wait().map_err(|e| e.to_string())?;
            let done = start.elapsed().as_secs_f64();
            let Some(shown) = shown else {
                return Err(format!(
                    "no appliance output ({status}):\n{}",
                    fs::read_to_string(&console).unwrap_or_default()
                ));
            };
            first[i].push(shown);
            off[i].push(done);
        }
    }
    table_header(&format!(
        "the exported busybox qcow2 under QEMU q35, TCG, {runs} runs"
    ));
    let a = table_row("UEFI (OVMF) from the disk: to the output", &first[0]);
    table_row("UEFI (OVMF) from the disk: to power off", &off[0]);
    let b = table_row("SeaBIOS, -kernel: to the output", &first[1]);
    table_row("SeaBIOS, -kernel: to power off", &off[1]);
    table_ratio("UEFI from the disk / -kernel, to the output", a / b);
    println!("(what UEFI and booting from the disk add: {:.1} s)", a - b);
    Ok(())
}
