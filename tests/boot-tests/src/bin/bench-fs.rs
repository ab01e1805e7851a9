//! Shared-folder bench: husk against QEMU `microvm`, side by side in the
//! same run, both with virtio-fs (virtio-mmio) served by the same
//! virtiofsd binary with the same options, the same kernel, the same
//! busybox image (its ext4 root; husk's init mounts the share at /data),
//! 512 MiB of RAM each. One boot per run and peer does, timed inside the
//! guest (CLOCK_MONOTONIC, around each step):
//!
//! - unpack: `tar -x` of a Debian bookworm minbase tree (6,661 entries,
//!   made by `ci/bench-fs`; with `--small`, its /etc and /usr/share/doc,
//!   725 entries) from the share into the share;
//! - find+stat: `find | xargs stat` over that tree, guest caches dropped;
//! - write: `dd` of --big-mib MiB (default 1024) of zeros, with fsync;
//! - read: `dd` of that file back, guest caches dropped.
//!
//! Then boots (spawn to exit of `husk run IMAGE -- true`): without a share
//! against with one empty share (guest RAM becomes a shared memfd, and a
//! virtiofsd starts), with shmem huge pages as the host has them and, where
//! the bench may change it, with `shmem_enabled=advise`; and the busybox
//! image booted from a folder (dir:) against from its ext4 image.
//!
//! `--only cache` runs husk alone with virtiofsd's `--cache=auto|always|
//! never` on the same workload.
//!
//! Median, min and max of N runs (default 10) after one warm-up each.
//!
//!   bench-fs --tar MINBASE.tar [--runs N] [--big-mib M] [--only fs|boot|cache]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use boot_tests::husk::{bench_husk_bin, build_appliances, built_image, guest_tool};
use boot_tests::qemu::microvm_stdio_with;
use boot_tests::{
    husk_kernel, table_header as header, table_ratio, table_row as row, workspace_root,
};
use husk_init::config::{FsSetup, Overrides, ShareMount};

const IMAGE: &str = "oci:examples/busybox/image:latest";
const MEMORY_MIB: u32 = 512;
const TAG: &str = "husk-fs0";

fn main() -> ExitCode {
    let runs = boot_tests::runs_arg(10);
    if let Err(e) = build_appliances() {
        eprintln!("bench-fs: {e}");
        return ExitCode::FAILURE;
    }
    boot_tests::bench_main("bench-fs", || bench(runs))
}

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

/// The guest's script: each step between two clock readings.
/// The clock tool runs from the guest's tmpfs: run from the share, it
/// crashed QEMU's guest in the middle of the unpack in the test bed (QEMU
/// exited as if the guest had rebooted); husk's ran either way.
const WORKLOAD: &str = r#"cp /data/tools/husk-fsprobe /tmp/clock; T=/tmp/clock
mkdir /data/out
echo 3 > /proc/sys/vm/drop_caches
a=$($T now); tar -xf /data/minbase.tar -C /data/out || echo FAILED tar; b=$($T now)
echo 3 > /proc/sys/vm/drop_caches
c=$($T now); find /data/out | xargs stat -c %s > /dev/null || echo FAILED find; d=$($T now)
e=$($T now); dd if=/dev/zero of=/data/big bs=1M count=$BIG conv=fsync 2>/dev/null || echo FAILED write; f=$($T now)
echo 3 > /proc/sys/vm/drop_caches
g=$($T now); dd if=/data/big of=/dev/null bs=1M 2>/dev/null || echo FAILED read; h=$($T now)
echo "entries $(find /data/out | wc -l) big $(stat -c %s /data/big)"
echo "times $a $b $c $d $e $f $g $h"
"#;

/// The four steps' durations from the guest's "times" line.
fn steps(output: &str, big_mib: u64) -> Result<[f64; 4], String> {
    if output.contains("FAILED") {
        return Err(format!("a step failed in the guest:\n{output}"));
    }
    let want = format!("big {}", big_mib << 20);
    if !output
        .lines()
        .any(|l| l.starts_with("entries ") && l.ends_with(&want))
    {
        return Err(format!("the guest did not write {big_mib} MiB:\n{output}"));
    }
    let t: Vec<f64> = output
        .lines()
        .find_map(|l| l.strip_prefix("times "))
        .ok_or_else(|| format!("no times from the guest:\n{output}"))?
        .split_whitespace()
        .map(|w| w.parse::<f64>().map_err(|e| format!("{w}: {e}")))
        .collect::<Result<_, _>>()?;
    if t.len() != 8 {
        return Err(format!("eight times expected:\n{output}"));
    }
    Ok([t[1] - t[0], t[3] - t[2], t[5] - t[4], t[7] - t[6]])
}

fn output(cmd: &mut Command, what: &str, limit: Duration) -> Result<String, String> {
    boot_tests::output_within(cmd, what, limit)
}

/// How long one boot and its workload may take: a guest that hangs must
/// not hang the bench.
const QEMU_LIMIT: Duration = Duration::from_secs(600);
const HUSK_LIMIT: Duration = Duration::from_secs(660);

/// virtiofsd as husk starts it (same binary, same options), but on a
/// socket path, for QEMU, which connects as a client.
fn virtiofsd_for_qemu(folder: &Path, socket: &Path) -> Result<std::process::Child, String> {
    let bin = vmm::virtiofsd::find_virtiofsd().ok_or("virtiofsd is not installed (ci/setup)")?;
    let _ = std::fs::remove_file(socket);
    let child = Command::new(bin)
        .arg(format!("--socket-path={}", socket.display()))
        .arg("--shared-dir")
        .arg(folder)
        .args([
            "--cache=auto",
            "--log-level=error",
            "--xattr",
            "--sandbox=namespace",
        ])
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("virtiofsd: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if Instant::now() > deadline {
            return Err("virtiofsd made no socket within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(child)
}

struct Peers {
    husk: PathBuf,
    kernel: PathBuf,
    /// QEMU's copy of the image (husk's writes go to an overlay; QEMU's
    /// snapshot=on wants /var/tmp, read-only in the test bed).
    qemu_root: PathBuf,
    share: PathBuf,
    big_mib: u64,
    /// Entries in the tree the guest unpacks (for the table's title).
    entries: usize,
}

impl Peers {
    fn clean(&self) -> Result<(), String> {
        let _ = std::fs::remove_dir_all(self.share.join("out"));
        let _ = std::fs::remove_file(self.share.join("big"));
        Ok(())
    }

    fn husk(&self, cache: &str) -> Result<[f64; 4], String> {
        self.clean()?;
        let out = output(
            Command::new(&self.husk)
                .env("HUSK_VIRTIOFS_CACHE", cache)
                .args(["run", "--net", "none", "--timeout", "600", "--memory"])
                .arg(MEMORY_MIB.to_string())
                .args(["-e", &format!("BIG={}", self.big_mib), "-v"])
                .arg(format!("{}:/data", self.share.display()))
                .args([IMAGE, "--", "sh", "/data/tools/workload.sh"]),
            "husk run",
            HUSK_LIMIT,
        )?;
        steps(&out, self.big_mib)
    }

    fn qemu(&self, dir: &Path) -> Result<[f64; 4], String> {
        self.clean()?;
        let socket = dir.join("virtiofsd.sock");
        let mut daemon = virtiofsd_for_qemu(&self.share, &socket)?;
        let overrides = Overrides {
            command: Some(vec!["sh".into(), "/data/tools/workload.sh".into()]),
            env: vec![format!("BIG={}", self.big_mib)],
            ..Overrides::default()
        };
        let fs = FsSetup {
            mounts: vec![ShareMount {
                tag: TAG.into(),
                path: "/data".into(),
                readonly: false,
                populate: false,
            }],
            ..FsSetup::default()
        };
        let cmdline = format!(
            "root=/dev/vda rootfstype=ext4 rw init=/.husk/init {} {}",
            overrides.to_param(),
            fs.to_param()
        );
        let mut qemu = microvm_stdio_with(&self.kernel, &cmdline, MEMORY_MIB, true);
        qemu.arg("-drive")
            .arg(format!(
                "id=d0,file={},format=raw,if=none",
                self.qemu_root.display()
            ))
            .args(["-device", "virtio-blk-device,drive=d0", "-chardev"])
            .arg(format!("socket,id=fs0,path={}", socket.display()))
            .arg("-device")
            .arg(format!(
                "vhost-user-fs-device,chardev=fs0,tag={TAG},queue-size=1024"
            ));
        let result = output(&mut qemu, "qemu microvm", QEMU_LIMIT);
        let _ = daemon.kill();
        let _ = daemon.wait();
        steps(&result?, self.big_mib)
    }
}

fn bench(runs: usize) -> Result<(), String> {
    std::env::set_current_dir(workspace_root()).map_err(|e| e.to_string())?;
    let only = arg("--only");
    let want = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let husk = bench_husk_bin(dir.path())?;
    let kernel = husk_kernel()?.vmlinux();
    let image = built_image(IMAGE)?;
    if want("fs") || want("cache") {
        let tar = PathBuf::from(arg("--tar").ok_or("--tar MINBASE.tar is required")?);
        let big_mib: u64 = arg("--big-mib").map_or(Ok(1024), |v| {
            v.parse().map_err(|e| format!("--big-mib: {e}"))
        })?;
        let share = dir.path().join("share");
        std::fs::create_dir_all(&share).map_err(|e| e.to_string())?;
        std::fs::copy(&tar, share.join("minbase.tar"))
            .map_err(|e| format!("copying {}: {e}", tar.display()))?;
        let listing = output(
            Command::new("tar").arg("-tf").arg(&tar),
            "tar -tf",
            HUSK_LIMIT,
        )?;
        std::fs::create_dir_all(share.join("tools")).map_err(|e| e.to_string())?;
        guest_tool(&share.join("tools"), "husk-fsprobe")?;
        std::fs::write(share.join("tools/workload.sh"), WORKLOAD).map_err(|e| e.to_string())?;
        let qemu_root = dir.path().join("qemu-root.ext4");
        std::fs::copy(&image, &qemu_root).map_err(|e| format!("copying the image: {e}"))?;
        let peers = Peers {
            husk: husk.clone(),
            kernel: kernel.clone(),
            qemu_root,
            share,
            big_mib,
            entries: listing.lines().count(),
        };
        if want("fs") {
            fs(&peers, dir.path(), runs)?;
        }
        if only.as_deref() == Some("cache") {
            caches(&peers, runs)?;
        }
    }
    if want("boot") {
        boot(&husk, &image, dir.path(), runs)?;
    }
    Ok(())
}

fn fs(peers: &Peers, dir: &Path, runs: usize) -> Result<(), String> {
    let [h, q] = boot_tests::rounds(runs, |side, i| {
        let (who, r) = if side == 0 {
            ("husk", peers.husk("auto")?)
        } else {
            ("qemu", peers.qemu(dir)?)
        };
        eprintln!("bench-fs: run {i}: {who} {r:.3?}");
        Ok(r)
    })?;
    let steps = [
        &format!("unpack the tree ({} entries)", peers.entries),
        "find + stat over it",
        &format!("write {} MiB (fsync)", peers.big_mib),
        &format!("read {} MiB", peers.big_mib),
    ];
    for (s, name) in steps.iter().enumerate() {
        header(&format!("virtio-fs: {name}"));
        let hm = row("husk", &h.iter().map(|r| r[s]).collect::<Vec<_>>());
        let qm = row("qemu microvm", &q.iter().map(|r| r[s]).collect::<Vec<_>>());
        table_ratio("QEMU time / husk time (>1: husk faster)", qm / hm);
    }
    Ok(())
}

/// husk alone with virtiofsd's three cache modes, alternated.
fn caches(peers: &Peers, runs: usize) -> Result<(), String> {
    let modes = ["auto", "always", "never"];
    let all: [_; 3] = boot_tests::rounds(runs, |m, i| {
        let r = peers.husk(modes[m])?;
        eprintln!("bench-fs: run {i}: --cache={} {r:.3?}", modes[m]);
        Ok(r)
    })?;
    let steps = ["unpack", "find + stat", "write", "read"];
    for (s, name) in steps.iter().enumerate() {
        header(&format!("husk, virtiofsd --cache=MODE: {name}"));
        for (m, mode) in modes.iter().enumerate() {
            row(mode, &all[m].iter().map(|r| r[s]).collect::<Vec<_>>());
        }
    }
    Ok(())
}

const SHMEM_THP: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";

/// The selected value of a sysfs choice such as "always [never] advise".
fn selected(text: &str) -> Option<String> {
    let start = text.find('[')? + 1;
    let end = text[start..].find(']')? + start;
    Some(text[start..end].to_string())
}

fn boot(husk: &Path, image: &Path, dir: &Path, runs: usize) -> Result<(), String> {
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).map_err(|e| e.to_string())?;
    let folder = dir.join("busybox-root");
    std::fs::create_dir_all(&folder).map_err(|e| e.to_string())?;
    // The busybox image's own tree, for the folder boot.
    output(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("rdump / {}", folder.display()))
            .arg(image),
        "debugfs rdump",
        HUSK_LIMIT,
    )?;
    let run = |extra: &[String]| -> Result<f64, String> {
        let start = Instant::now();
        output(
            Command::new(husk)
                .args(["run", "--net", "none", "--timeout", "60"])
                .args(extra),
            "husk run",
            HUSK_LIMIT,
        )?;
        Ok(start.elapsed().as_secs_f64())
    };
    let plain: Vec<String> = [IMAGE, "--", "true"].map(String::from).to_vec();
    let shared: Vec<String> = vec![
        "-v".into(),
        format!("{}:/data", empty.display()),
        IMAGE.into(),
        "--".into(),
        "true".into(),
    ];
    let from_folder: Vec<String> = vec![
        format!("dir:{}", folder.display()),
        "--".into(),
        "true".into(),
    ];
    let thp = std::fs::read_to_string(SHMEM_THP).ok();
    let host_thp = thp.as_deref().and_then(selected).unwrap_or("none".into());
    let can_advise = host_thp != "advise" && std::fs::write(SHMEM_THP, &host_thp).is_ok();
    let names = ["no share", "share", "share, THP advise", "from a folder"];
    let [p, s, a, f] = boot_tests::rounds(runs, |side, i| {
        let t = match side {
            0 => run(&plain)?,
            1 => run(&shared)?,
            2 if can_advise => {
                std::fs::write(SHMEM_THP, "advise").map_err(|e| e.to_string())?;
                let t = run(&shared);
                std::fs::write(SHMEM_THP, &host_thp).map_err(|e| e.to_string())?;
                t?
            }
            2 => 0.0,
            _ => run(&from_folder)?,
        };
        eprintln!("bench-fs: boot run {i}: {}: {t:.3}", names[side]);
        Ok(t)
    })?;
    header("boot: husk run busybox -- true, spawn to exit");
    let pm = row("no share (private RAM)", &p);
    let sm = row(&format!("one share (memfd RAM, shmem THP {host_thp})"), &s);
    table_ratio("with a share / without", sm / pm);
    if can_advise {
        let am = row("one share (memfd RAM, shmem THP advise)", &a);
        table_ratio("advise / without", am / pm);
    }
    let fm = row("root from a folder (dir:, virtio-fs)", &f);
    table_ratio("from a folder / from its ext4 image", fm / pm);
    Ok(())
}
