//! Snapshots through the VMM itself (issue #17's first part): the hello
//! appliance boots with `husk.snapshot` on its command line, its init stops
//! at its snapshot point and the VMM saves the VM there (every vCPU parked,
//! under the seccomp filters); two later VMs restored from that snapshot go
//! on from the same point, run the command and report its status, without
//! booting the kernel.

use std::fs;
use std::time::{Duration, Instant};

use boot_tests::husk::built_image;
use boot_tests::husk_kernel;
use husk_init::config::Overrides;
use husk_init::config::{INIT_PATH, SNAPSHOT_ARG};
use libtest_mimic::{Failed, Trial};
use vmm::snapshot::{Header, Restore, Snapshot, Target};
use vmm::{DiskAccess, DiskConfig, VmConfig, VmExit};

pub fn trials() -> Vec<Trial> {
    vec![
        boot_tests::trial(
            "snapshot_at_init_restores_twice_and_runs_the_command",
            snapshot_restores,
        ),
        boot_tests::trial(
            "snapshot_restores_differ_in_randomness_keep_the_wall_clock_and_report_no_stall",
            restores_differ,
        ),
    ]
}

fn config(kernel: &std::path::Path, image: &std::path::Path, console: fs::File) -> VmConfig {
    boot_tests::vm::initramfs(
        kernel,
        image,
        64,
        &format!("{SNAPSHOT_ARG} loglevel=7"),
        Box::new(console),
    )
}

fn run_vm(cfg: VmConfig) -> Result<vmm::Outcome, Failed> {
    boot_tests::vm::run(cfg).map_err(Failed::from)
}

fn snapshot_restores() -> Result<(), Failed> {
    let kernel = husk_kernel()?.vmlinux();
    let image = built_image("examples/hello")?;
    let dir = tempfile::tempdir()?;
    let header = Header::new("sha256:test-kernel", "sha256:test-image", 1, 64, Vec::new());
    let snap_dir = dir.path().join("snapshot");

    // Cold: boot, snapshot at init's point, run the command.
    let console = dir.path().join("cold.log");
    let mut cfg = config(&kernel, &image, fs::File::create(&console)?);
    cfg.snapshot = Some(Target::create(&snap_dir, header.clone(), 0)?);
    let started = Instant::now();
    let out = run_vm(cfg)?;
    let cold = started.elapsed();
    let text = fs::read_to_string(&console)?;
    if out.snapshot != Some(Ok(())) {
        return Err(format!("no snapshot: {:?}\n{text}", out.snapshot).into());
    }
    if out.exit != (VmExit::Shutdown { status: Some(0) }) || !text.contains("Hello from hello") {
        return Err(format!("the cold run: {:?}\n{text}", out.exit).into());
    }
    let memory_bytes = fs::metadata(snap_dir.join("memory"))?.len();
    let allocated = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(snap_dir.join("memory"))?.blocks() * 512
    };

    // Warm, twice: from the snapshot, the same output and status.
    let mut warm = Vec::new();
    for run in 0..2 {
        let restore = Restore::open(&snap_dir, &header)?;
        if restore.snapshot.header.devices != ["console", "rng"] {
            return Err(format!("devices saved: {:?}", restore.snapshot.header.devices).into());
        }
        let console = dir.path().join(format!("warm-{run}.log"));
        let mut cfg = config(&kernel, &image, fs::File::create(&console)?);
        cfg.restore = Some(restore);
        let started = Instant::now();
        let out = run_vm(cfg)?;
        warm.push(started.elapsed());
        let text = fs::read_to_string(&console)?;
        if out.exit != (VmExit::Shutdown { status: Some(0) }) || !text.contains("Hello from hello")
        {
            return Err(format!("restore {run}: {:?}\n{text}", out.exit).into());
        }
        if text.contains("Linux version") || text.contains("Run /.husk/init") {
            return Err(format!("restore {run} booted the kernel again:\n{text}").into());
        }
        // The VMM ran in this process: it unmapped the guest's RAM (the
        // snapshot's memory file, mapped private) when it returned.
        let maps = fs::read_to_string("/proc/self/maps")?;
        let memory = snap_dir.join("memory");
        if let Some(l) = maps
            .lines()
            .find(|l| l.ends_with(memory.to_str().unwrap_or("?")))
        {
            return Err(format!("restore {run} left the guest's RAM mapped: {l}").into());
        }
    }

    // A snapshot for another image is refused before any VM is made.
    let other = Header::new("sha256:test-kernel", "sha256:other", 1, 64, Vec::new());
    match Snapshot::read(&snap_dir, &other) {
        Err(vmm::snapshot::SnapshotError::Mismatch { what: "image", .. }) => {}
        other => return Err(format!("another image's snapshot: {other:?}").into()),
    }
    eprintln!(
        "snapshot: cold {:.3} s (boot, save, run); warm {:.3} s and {:.3} s; \
         memory file {} MiB, {:.1} MiB allocated",
        cold.as_secs_f64(),
        warm[0].as_secs_f64(),
        warm[1].as_secs_f64(),
        memory_bytes >> 20,
        allocated as f64 / f64::from(1 << 20)
    );
    Ok(())
}

/// The busybox image's read-only ext4 root (a writable disk refuses to be
/// snapshotted), printing 16 random bytes, its boot id and the time.
fn busybox_config(image: &std::path::Path, console: fs::File) -> Result<VmConfig, Failed> {
    let kernel = husk_kernel()?.vmlinux();
    let overrides = Overrides {
        command: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo rand=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'); \
             echo boot=$(cat /proc/sys/kernel/random/boot_id); echo time=$(date +%s); \
             echo clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
                .into(),
        ]),
        ..Default::default()
    };
    let mut cfg = config(&kernel, image, console);
    cfg.initrd = None;
    cfg.memory_mib = 128;
    // RCU's stall timeout at its least (3 s, against 21 s), so that the
    // waits below outlast it: a restored guest whose clock moved on by
    // more than that reported a stall at its first tick until the VMM
    // marked its kvm-clock stopped by the host.
    cfg.cmdline = format!(
        "root=/dev/vda rootfstype=ext4 ro init={INIT_PATH} {SNAPSHOT_ARG} \
         rcupdate.rcu_cpu_stall_timeout=3 {}",
        overrides.to_param()
    );
    cfg.disks = vec![DiskConfig {
        path: image.to_path_buf(),
        access: DiskAccess::ReadOnly,
        upper: None,
    }];
    Ok(cfg)
}

fn unix_secs() -> Result<u64, Failed> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs())
}

/// `key=value` from a console's text.
fn field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

fn restores_differ() -> Result<(), Failed> {
    let image = built_image("examples/busybox")?;
    let dir = tempfile::tempdir()?;
    let header = Header::new("sha256:test-kernel", "sha256:busybox", 1, 128, Vec::new());
    let snap_dir = dir.path().join("snapshot");
    let console = dir.path().join("cold.log");
    let mut cfg = busybox_config(&image, fs::File::create(&console)?)?;
    cfg.snapshot = Some(Target::create(&snap_dir, header.clone(), 1)?);
    let out = run_vm(cfg)?;
    let text = fs::read_to_string(&console)?;
    if out.snapshot != Some(Ok(())) || out.exit != (VmExit::Shutdown { status: Some(0) }) {
        return Err(format!("the cold run: {:?} {:?}\n{text}", out.snapshot, out.exit).into());
    }

    let mut seen = Vec::new();
    for run in 0..2 {
        // Long enough that a clock resumed where it was saved would show,
        // and longer than the stall timeout above.
        std::thread::sleep(Duration::from_secs(5));
        let restore = Restore::open(&snap_dir, &header)?;
        if restore.snapshot.header.devices != ["console", "block", "rng"] {
            return Err(format!("devices saved: {:?}", restore.snapshot.header.devices).into());
        }
        let console = dir.path().join(format!("warm-{run}.log"));
        let mut cfg = busybox_config(&image, fs::File::create(&console)?)?;
        cfg.restore = Some(restore);
        let before = unix_secs()?;
        let out = run_vm(cfg)?;
        let after = unix_secs()?;
        let text = fs::read_to_string(&console)?;
        let (Some(rand), Some(boot), Some(time)) = (
            field(&text, "rand"),
            field(&text, "boot"),
            field(&text, "time"),
        ) else {
            return Err(format!("restore {run}: {:?}\n{text}", out.exit).into());
        };
        // The guest read its clock during the run: within the host's
        // window around it (a second either side for the two clocks'
        // rounding), not 3 s behind it as a clock resumed where it was
        // saved would be (as it was when KVM dropped the restored TSC).
        let time: u64 = time.parse()?;
        if time + 1 < before || time > after + 1 {
            return Err(format!(
                "restore {run}: the guest's clock says {time}, the host's run lasted \
                 from {before} to {after}\n{text}"
            )
            .into());
        }
        // The kernel's watchdogs took the time the snapshot waited for
        // no stuck CPU: RCU's stall reports ("rcu: INFO: ... self-detected
        // stall", "... detected stalls") and soft-lockup warnings.
        if let Some(l) = text
            .lines()
            .find(|l| l.contains("rcu: INFO") || l.contains("soft lockup"))
        {
            return Err(format!("restore {run}: the guest's kernel said {l:?}\n{text}").into());
        }
        if rand.len() != 32 || boot.len() != 36 {
            return Err(format!("restore {run}: {rand:?} {boot:?}\n{text}").into());
        }
        seen.push((rand, boot));
    }
    if seen[0].0 == seen[1].0 || seen[0].1 == seen[1].1 {
        return Err(format!("two restores share random bytes or a boot id: {seen:?}").into());
    }
    Ok(())
}
