//! Block-device bench: husk against QEMU `microvm`, side by side in the
//! same run. Each boots the busybox image as its root (husk through its
//! overlay, QEMU from a copy) with a second disk, a raw ext4 image holding
//! --mib MiB (default 256) of random data, writable, the same file for
//! both; virtio-blk over virtio-mmio on both, the host's page cache under
//! both (QEMU's default cache mode, writeback), the same kernel, 256 MiB of
//! RAM. One boot per run and peer does, timed inside the guest
//! (CLOCK_MONOTONIC around each step):
//!
//! - read: `dd` of the data file, the guest's caches dropped;
//! - write: `dd` of as many MiB of zeros with fsync (removed again, so
//!   every run starts from the same disk).
//!
//! Median, min and max of N runs (default 10) after one warm-up each.
//!
//!   bench-disk [--runs N] [--mib M]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use boot_tests::husk::{bench_husk_bin, build_appliances, built_image, guest_tool};
use boot_tests::qemu::microvm_stdio_with;
use boot_tests::{
    husk_kernel, table_header as header, table_ratio, table_row as row, workspace_root,
};
use husk_init::config::Overrides;

const IMAGE: &str = "oci:examples/busybox/image:latest";
const MEMORY_MIB: u32 = 256;
/// How long one boot and its workload may take: a guest that hangs must
/// not hang the bench.
const LIMIT: Duration = Duration::from_secs(600);

fn main() -> ExitCode {
    let runs = boot_tests::runs_arg(10);
    if let Err(e) = build_appliances() {
        eprintln!("bench-disk: {e}");
        return ExitCode::FAILURE;
    }
    boot_tests::bench_main("bench-disk", || bench(runs))
}

/// The guest's command: mount the data disk and run its workload.
fn command() -> Vec<String> {
    [
        "sh",
        "-c",
        "mkdir -p /m && mount /dev/vdb /m && sh /m/workload.sh",
    ]
    .map(String::from)
    .to_vec()
}

/// The workload, on the data disk beside the data and the clock tool.
fn workload(mib: u64) -> String {
    format!(
        r#"T=/m/clock
echo 3 > /proc/sys/vm/drop_caches
a=$($T now); dd if=/m/data of=/dev/null bs=1M 2>/dev/null || echo FAILED read; b=$($T now)
c=$($T now); dd if=/dev/zero of=/m/out bs=1M count={mib} conv=fsync 2>/dev/null || echo FAILED write; d=$($T now)
echo "written $(stat -c %s /m/out)"
rm /m/out; sync
echo "times $a $b $c $d"
"#
    )
}

/// The two steps' durations (read, write) from the guest's output.
fn steps(output: &str, mib: u64) -> Result<[f64; 2], String> {
    if output.contains("FAILED") {
        return Err(format!("a step failed in the guest:\n{output}"));
    }
    let want = format!("written {}", mib << 20);
    if !output.lines().any(|l| l.trim_end() == want) {
        return Err(format!("the guest did not write {mib} MiB:\n{output}"));
    }
    let t: Vec<f64> = output
        .lines()
        .find_map(|l| l.strip_prefix("times "))
        .ok_or_else(|| format!("no times from the guest:\n{output}"))?
        .split_whitespace()
        .map(|w| w.parse::<f64>().map_err(|e| format!("{w}: {e}")))
        .collect::<Result<_, _>>()?;
    match t[..] {
        [a, b, c, d] => Ok([b - a, d - c]),
        _ => Err(format!("four times expected:\n{output}")),
    }
}

fn output(cmd: &mut Command, what: &str) -> Result<String, String> {
    boot_tests::output_within(cmd, what, LIMIT)
}

struct Peers {
    husk: PathBuf,
    kernel: PathBuf,
    /// QEMU's copy of the root image.
    qemu_root: PathBuf,
    data: PathBuf,
    mib: u64,
}

impl Peers {
    fn husk(&self) -> Result<[f64; 2], String> {
        let out = output(
            Command::new(&self.husk)
                .args(["run", "--net", "none", "--timeout", "600", "--memory"])
                .arg(MEMORY_MIB.to_string())
                .arg("--disk")
                .arg(&self.data)
                .arg(IMAGE)
                .arg("--")
                .args(command()),
            "husk run",
        )?;
        steps(&out, self.mib)
    }

    fn qemu(&self) -> Result<[f64; 2], String> {
        let overrides = Overrides {
            command: Some(command()),
            ..Overrides::default()
        };
        let cmdline = format!(
            "root=/dev/vda rootfstype=ext4 rw init=/.husk/init {}",
            overrides.to_param()
        );
        let mut qemu = microvm_stdio_with(&self.kernel, &cmdline, MEMORY_MIB, false);
        for (id, file) in [("d0", &self.qemu_root), ("d1", &self.data)] {
            qemu.arg("-drive")
                .arg(format!(
                    "id={id},file={},format=raw,if=none",
                    file.display()
                ))
                .arg("-device")
                .arg(format!("virtio-blk-device,drive={id}"));
        }
        steps(&output(&mut qemu, "qemu microvm")?, self.mib)
    }
}

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

/// The data disk: `mib` MiB of random data, the clock tool and the
/// workload, with room for the write.
fn data_disk(dir: &Path, mib: u64) -> Result<PathBuf, String> {
    let staging = dir.join("data-root");
    std::fs::create_dir_all(&staging).map_err(|e| e.to_string())?;
    output(
        Command::new("dd")
            .arg("if=/dev/urandom")
            .arg(format!("of={}", staging.join("data").display()))
            .args(["bs=1M", &format!("count={mib}"), "status=none"]),
        "dd",
    )?;
    guest_tool(&staging, "husk-fsprobe")?;
    std::fs::rename(staging.join("husk-fsprobe"), staging.join("clock"))
        .map_err(|e| e.to_string())?;
    std::fs::write(staging.join("workload.sh"), workload(mib)).map_err(|e| e.to_string())?;
    let disk = dir.join("data.ext4");
    let size_mib = u32::try_from(2 * mib + 64).map_err(|_| "--mib is too large")?;
    boot_tests::guest::ext4_image(&staging, &disk, size_mib)
        .map_err(|e| format!("making the data disk: {e}"))?;
    // Every block allocated now, by this process: in the bed the disk is
    // on tmpfs, where the blocks the guest's write fills would otherwise
    // be charged to the jailed VMM's cgroup (its RAM and 128 MiB more),
    // and the write test would end in the cgroup's OOM kill; QEMU has no
    // such limit.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len)
        .map_err(|e| format!("allocating the data disk: {e}"))?;
    std::fs::remove_dir_all(&staging).map_err(|e| e.to_string())?;
    Ok(disk)
}

fn bench(runs: usize) -> Result<(), String> {
    std::env::set_current_dir(workspace_root()).map_err(|e| e.to_string())?;
    let mib: u64 =
        arg("--mib").map_or(Ok(256), |v| v.parse().map_err(|e| format!("--mib: {e}")))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let husk = bench_husk_bin(dir.path())?;
    let image = built_image(IMAGE)?;
    let qemu_root = dir.path().join("qemu-root.ext4");
    std::fs::copy(&image, &qemu_root).map_err(|e| format!("copying the image: {e}"))?;
    let peers = Peers {
        husk,
        kernel: husk_kernel()?.vmlinux(),
        qemu_root,
        data: data_disk(dir.path(), mib)?,
        mib,
    };
    let [h, q] = boot_tests::rounds(runs, |side, i| {
        let (who, r) = if side == 0 {
            ("husk", peers.husk()?)
        } else {
            ("qemu", peers.qemu()?)
        };
        eprintln!("bench-disk: run {i}: {who} {r:.3?}");
        Ok(r)
    })?;
    for (s, name) in [
        format!("read {mib} MiB (sequential, 1 MiB)"),
        format!("write {mib} MiB (sequential, 1 MiB, fsync)"),
    ]
    .iter()
    .enumerate()
    {
        header(&format!("virtio-blk: {name}, seconds"));
        let hm = row("husk", &h.iter().map(|r| r[s]).collect::<Vec<_>>());
        let qm = row("qemu microvm", &q.iter().map(|r| r[s]).collect::<Vec<_>>());
        table_ratio("QEMU time / husk time (>1: husk faster)", qm / hm);
    }
    Ok(())
}
