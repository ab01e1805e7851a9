//! Snapshot bench: the hello appliance (husk's kernel, its initramfs and
//! init, 1 vCPU, 64 MiB) booted cold by husk's VMM, against the same VM
//! restored from a snapshot taken at its init's snapshot point (pages read
//! as the guest touches them, and with the working set a first restore
//! recorded read in ahead), against QEMU `microvm` booting it cold; time
//! to the command's output and to the end, median, min and max of N runs
//! each, alternated. Run it through
//! `ci/bench-snapshot` (in the KVM test bed where the host's KVM is PVM).
//!
//! First the VMM alone: it runs in this process (`vmm::run`, as `husk
//! run`'s child does, filters and all), timed from the call. Then the
//! whole command a user types, timed from its spawn: `husk run
//! examples/hello` restoring the snapshot it took on its first run (warm
//! start), `husk run --cold examples/hello`, and QEMU; plus what one warm
//! run reads of the snapshot's memory (`--timings`' guest RAM touched).
//! husk, its init, the appliance and a cache with the kernel are copied
//! into the bench's temporary folder first (in the bed, its tmpfs), as a
//! host has them on a disk of its own (see [`local_files`]).
//!
//! With `--tiny` it measures on this host's own `/dev/kvm` (PVM here)
//! instead: a tiny PVH guest whose first instruction marks the snapshot
//! point and whose next reports status 0, snapshotted once and restored N
//! times, from the `vmm::run` call to the status reaching the VMM.
//!
//!   bench-snapshot [--runs N] [--tiny]

use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use boot_tests::husk::{bench_husk_bin, built_image};
use boot_tests::{husk_kernel, table_header, table_ratio, table_row};
use husk_init::config::{INIT_PATH, SNAPSHOT_ARG};
use vmm::snapshot::{Header, Pages, Restore, Target};
use vmm::{VmConfig, VmExit};

const MARK: &str = "Hello from hello";

fn main() -> ExitCode {
    let runs = boot_tests::runs_arg(20);
    if std::env::args().any(|a| a == "--tiny") {
        return match tiny(runs) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench-snapshot: {e}");
                ExitCode::FAILURE
            }
        };
    }
    boot_tests::bench_main("bench-snapshot", || bench(runs))
}

/// The tiny guest on this host's `/dev/kvm`: ms from the `vmm::run` call
/// to the guest's status, cold (from its entry point) and restored.
fn tiny(runs: usize) -> Result<(), String> {
    use std::time::Duration;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let guest = boot_tests::guest::tiny_guest_with(dir.path(), true, true)?;
    let snap_dir = dir.path().join("snapshot");
    let header = Header::new("sha256:tiny", "", 1, 32, Vec::new());
    let config = || {
        let mut cfg = boot_tests::vm::initramfs(&guest, &guest, 32, "", Box::new(std::io::sink()));
        cfg.initrd = None;
        // The guest spins once it has reported (PVM cannot end it by a
        // triple fault): the VM ends at the timeout.
        cfg.timeout = Some(Duration::from_millis(300));
        cfg.started = Instant::now();
        cfg
    };
    let to_status = |out: &vmm::Outcome| {
        out.timings
            .iter()
            .find(|(p, _)| *p == vmm::Phase::CommandExited)
            .map(|(_, at)| at.as_secs_f64() * 1e3)
            .ok_or_else(|| format!("the guest reported no status: {:?}", out.exit))
    };
    let mut cfg = config();
    cfg.snapshot = Some(Target::create(&snap_dir, header.clone(), 0).map_err(|e| e.to_string())?);
    let out = boot_tests::vm::run(cfg)?;
    if out.snapshot != Some(Ok(())) {
        return Err(format!("no snapshot: {:?}", out.snapshot));
    }
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        cold.push(to_status(&boot_tests::vm::run(config())?)?);
        let mut cfg = config();
        cfg.restore = Some(Restore::open(&snap_dir, &header).map_err(|e| e.to_string())?);
        cfg.started = Instant::now();
        warm.push(to_status(&boot_tests::vm::run(cfg)?)?);
    }
    let kind = boot_tests::KvmKind::detect();
    println!(
        "tiny guest on this host's /dev/kvm ({kind:?}), 32 MiB, {runs} runs, ms from vmm::run to \
         its status:"
    );
    println!("{:<34} {:>8} {:>8} {:>8}", "", "median", "min", "max");
    for (what, v) in [("cold (from its entry point)", &cold), ("restored", &warm)] {
        let (m, lo, hi) = boot_tests::stats(v);
        println!("{what:<34} {m:>8.2} {lo:>8.2} {hi:>8.2}");
    }
    Ok(())
}

/// Console output that notes when `MARK` first appears.
struct Watch {
    seen: Arc<Mutex<Option<Instant>>>,
    text: Vec<u8>,
}

impl Write for Watch {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(buf);
        let mut seen = self.seen.lock().unwrap();
        if seen.is_none() && String::from_utf8_lossy(&self.text).contains(MARK) {
            *seen = Some(Instant::now());
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn config(kernel: &Path, image: &Path, seen: Arc<Mutex<Option<Instant>>>) -> VmConfig {
    let console = Watch {
        seen,
        text: Vec::new(),
    };
    boot_tests::vm::initramfs(
        kernel,
        image,
        64,
        &format!("quiet {SNAPSHOT_ARG}"),
        Box::new(console),
    )
}

/// One VM on a thread of its own (the VMM filters the calling thread):
/// seconds to the command's output and to the end.
fn run(cfg: VmConfig, seen: &Arc<Mutex<Option<Instant>>>) -> Result<(f64, f64), String> {
    let start = Instant::now();
    let out = boot_tests::vm::run(cfg)?;
    let end = start.elapsed().as_secs_f64();
    if out.exit != (VmExit::Shutdown { status: Some(0) }) {
        return Err(format!("the VM ended {:?}", out.exit));
    }
    let first = seen
        .lock()
        .unwrap()
        .ok_or("no command output")?
        .duration_since(start)
        .as_secs_f64();
    Ok((first, end))
}

fn bench(runs: usize) -> Result<(), String> {
    let kernel = husk_kernel()?.vmlinux();
    let image = built_image("examples/hello")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let snap_dir = dir.path().join("snapshot");
    let header = Header::new("sha256:bench", "sha256:hello", 1, 64, Vec::new());

    // The snapshot, once.
    let seen = Arc::new(Mutex::new(None));
    let mut cfg = config(&kernel, &image, seen.clone());
    cfg.snapshot = Some(Target::create(&snap_dir, header.clone(), 0).map_err(|e| e.to_string())?);
    let taking = Instant::now();
    let out = boot_tests::vm::run(cfg)?;
    if out.snapshot != Some(Ok(())) {
        return Err(format!("no snapshot: {:?}", out.snapshot));
    }
    let taking = taking.elapsed().as_secs_f64();
    let memory = snap_dir.join("memory");
    let allocated = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&memory)
            .map_err(|e| e.to_string())?
            .blocks()
            * 512
    };

    // A warm start's first restore records the working set the later ones
    // read in ahead.
    let seen = Arc::new(Mutex::new(None));
    let mut cfg = config(&kernel, &image, seen.clone());
    let recording = Restore::open_warm(&snap_dir, &header).map_err(|e| e.to_string())?;
    if !matches!(recording.pages, Pages::Record(_)) {
        return Err(format!(
            "the first restore records no working set: {:?}",
            recording.pages
        ));
    }
    cfg.restore = Some(recording);
    run(cfg, &seen)?;
    let set_pages = match Restore::open_warm(&snap_dir, &header)
        .map_err(|e| e.to_string())?
        .pages
    {
        Pages::Prefetch(set) => set.pages(),
        other => return Err(format!("no working set was recorded: {other:?}")),
    };

    // The first round warms the page cache and is not counted.
    let sides = boot_tests::rounds(runs, |side, _| {
        if side == 3 {
            let mut q = boot_tests::qemu::microvm_stdio_with(
                &kernel,
                &format!("quiet rdinit={INIT_PATH}"),
                64,
                false,
            );
            q.arg("-initrd").arg(&image);
            return boot_tests::time_run(&mut q, boot_tests::First::LineWith(MARK));
        }
        let seen = Arc::new(Mutex::new(None));
        let mut cfg = config(&kernel, &image, seen.clone());
        match side {
            0 => cfg.cmdline = format!("rdinit={INIT_PATH} quiet"),
            1 => cfg.restore = Some(Restore::open(&snap_dir, &header).map_err(|e| e.to_string())?),
            _ => {
                cfg.restore =
                    Some(Restore::open_warm(&snap_dir, &header).map_err(|e| e.to_string())?)
            }
        }
        run(cfg, &seen)
    })?;
    let [cold, warm, ahead, qemu] =
        sides.map(|v| v.into_iter().unzip::<_, _, Vec<f64>, Vec<f64>>());
    table_header(&format!(
        "hello appliance (husk's kernel + initramfs), 1 vCPU, 64 MiB, {runs} runs each"
    ));
    let cold_first = table_row("husk cold: to the command's output", &cold.0);
    table_row("husk cold: to the end", &cold.1);
    let warm_first = table_row("husk restored: to the command's output", &warm.0);
    table_row("husk restored: to the end", &warm.1);
    let ahead_first = table_row(
        "husk restored, working set read ahead: to the output",
        &ahead.0,
    );
    table_row(
        "husk restored, working set read ahead: to the end",
        &ahead.1,
    );
    let qemu_first = table_row("QEMU microvm cold: spawn to the output", &qemu.0);
    table_row("QEMU microvm cold: spawn to the end", &qemu.1);
    table_ratio(
        "restored / husk cold, to the output",
        warm_first / cold_first,
    );
    table_ratio(
        "restored / QEMU cold, to the output",
        warm_first / qemu_first,
    );
    table_ratio(
        "read ahead / restored, to the output",
        ahead_first / warm_first,
    );
    table_ratio(
        "read ahead / husk cold, to the output",
        ahead_first / cold_first,
    );
    println!(
        "(the working set: {set_pages} pages, {:.1} MiB)",
        (set_pages * 4096) as f64 / f64::from(1 << 20)
    );
    println!(
        "(taking the snapshot: boot + save + run {taking:.3} s; memory file 64 MiB, \
         {:.1} MiB allocated)",
        allocated as f64 / f64::from(1 << 20)
    );
    husk_run(runs, &kernel, &image, dir.path())
}

/// Everything `husk run` reads, in the bench's own folder (in the bed, its
/// tmpfs), as a host has them on its own disk: the hello appliance, husk's
/// init (a copy: [`bench_husk_bin`] links it from the work tree) and a
/// cache with the kernel, where the first run builds the image. In the
/// bed the work tree is a 9p share without a metadata cache, where each
/// of husk's `stat` and `open` calls is a round trip through the emulator
/// (a warm run took 75-95 ms to its image from there, 31-38 ms from
/// tmpfs). Returns the appliance's folder and the cache's.
fn local_files(
    dir: &Path,
    bin_dir: &Path,
    kernel: &Path,
) -> Result<(std::path::PathBuf, std::path::PathBuf), String> {
    let copy = |from: &Path, to: &Path| {
        std::fs::copy(from, to)
            .map(drop)
            .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))
    };
    let copy_files = |from: &Path, to: &Path| -> Result<(), String> {
        std::fs::create_dir_all(to).map_err(|e| e.to_string())?;
        let entries = std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))?;
        for e in entries {
            let e = e.map_err(|e| e.to_string())?;
            if e.file_type().map_err(|e| e.to_string())?.is_file() {
                copy(&e.path(), &to.join(e.file_name()))?;
            }
        }
        Ok(())
    };
    let appliance = dir.join("hello");
    copy_files(
        &boot_tests::workspace_root().join("examples/hello"),
        &appliance,
    )?;
    let init = bin_dir.join("husk-init");
    if let Ok(target) = std::fs::read_link(&init) {
        std::fs::remove_file(&init).map_err(|e| e.to_string())?;
        copy(&target, &init)?;
    }
    let cache = dir.join("cache");
    let kernel_dir = kernel.parent().ok_or("the kernel has no folder")?;
    let name = kernel_dir
        .file_name()
        .ok_or("the kernel's folder has no name")?;
    copy_files(kernel_dir, &cache.join("kernels").join(name))?;
    Ok((appliance, cache))
}

/// `husk run` as a user types it: warm (restoring its cached snapshot)
/// against `--cold` against QEMU, from spawn to the command's output.
fn husk_run(runs: usize, kernel: &Path, image: &Path, dir: &Path) -> Result<(), String> {
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).map_err(|e| e.to_string())?;
    let husk = bench_husk_bin(&bin_dir)?;
    let (appliance, cache) = local_files(dir, &bin_dir, kernel)?;
    let snapshots = dir.join("snapshots");
    let cmd = |extra: &[&str]| {
        let mut c = Command::new(&husk);
        c.arg("run")
            .args(extra)
            .arg(&appliance)
            .env("HUSK_SNAPSHOT_DIR", &snapshots)
            .env("HUSK_CACHE_DIR", &cache)
            .current_dir(dir);
        c
    };
    // The first run takes the snapshot.
    let first = cmd(&[]).output().map_err(|e| e.to_string())?;
    if !first.status.success() {
        return Err(format!(
            "the first husk run failed: {}",
            String::from_utf8_lossy(&first.stderr)
        ));
    }
    let [cold, warm, qemu] = boot_tests::rounds(runs, |side, _| {
        let mut c = match side {
            0 => cmd(&["--cold"]),
            1 => cmd(&[]),
            _ => {
                let mut q = boot_tests::qemu::microvm_stdio_with(
                    kernel,
                    &format!("quiet rdinit={INIT_PATH}"),
                    64,
                    false,
                );
                q.arg("-initrd").arg(image);
                q
            }
        };
        Ok(boot_tests::time_run(&mut c, boot_tests::First::LineWith(MARK))?.0)
    })?;
    table_header(&format!(
        "husk run examples/hello, spawn to the command's output, {runs} runs each"
    ));
    let cold_first = table_row("husk run --cold", &cold);
    let warm_first = table_row("husk run (warm: restores its snapshot)", &warm);
    let qemu_first = table_row("QEMU microvm cold", &qemu);
    table_ratio("warm / husk cold", warm_first / cold_first);
    table_ratio("warm / QEMU cold", warm_first / qemu_first);
    let timed = cmd(&["--timings"]).output().map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&timed.stderr);
    let touched = stderr
        .lines()
        .find_map(|l| l.split("guest RAM touched ").nth(1))
        .and_then(|t| t.split(',').next())
        .unwrap_or("?");
    println!("(one warm run read {touched} of the snapshot's guest memory)");
    Ok(())
}
