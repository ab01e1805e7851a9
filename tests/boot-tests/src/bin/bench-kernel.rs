//! Kernel boot bench: husk's guest kernel against a peer kernel (Debian's
//! linux-image-cloud-amd64), side by side under QEMU `microvm` on KVM.
//! Run it through `ci/bench-kernel`, which fetches the peer.
//!
//!   bench-kernel --peer-kernel VMLINUZ --peer-modules DIR [--runs N]
//!
//! Each run boots a busybox initramfs whose init reads the guest's uptime
//! first thing (guest time to init), prints it, and reboots; the wall time
//! is QEMU's spawn to exit. The peer's init loads its virtio modules first.
//! Both inits wait 0.2 s before printing (SETTLE): Debian's modular console
//! loses a write made right after /dev/hvc0 appears (seen 2 times in 3), and
//! the wait is the same for both so their wall times stay comparable.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use boot_tests::qemu::Microvm;
use boot_tests::{guest, husk_kernel, route, stats, Route};

struct Args {
    peer_kernel: PathBuf,
    peer_modules: PathBuf,
    runs: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut peer_kernel = None;
    let mut peer_modules = None;
    let mut runs = 10;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--peer-kernel" => peer_kernel = Some(PathBuf::from(value()?)),
            "--peer-modules" => peer_modules = Some(PathBuf::from(value()?)),
            "--runs" => runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    Ok(Args {
        peer_kernel: peer_kernel.ok_or("--peer-kernel is required")?,
        peer_modules: peer_modules.ok_or("--peer-modules is required")?,
        runs,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-kernel: {e}");
            return ExitCode::FAILURE;
        }
    };
    match route() {
        Err(why) => {
            eprintln!("bench-kernel: no usable KVM: {why}");
            ExitCode::FAILURE
        }
        Ok(Route::TestBed { script, host }) => {
            eprintln!("bench-kernel: host /dev/kvm is {host:?}; running inside the KVM test bed");
            boot_tests::rerun_in_testbed(&script)
        }
        Ok(Route::Direct(kind)) => match bench(&args) {
            Ok(()) => {
                println!("(measured on /dev/kvm: {kind:?})");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bench-kernel: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

struct Subject {
    name: &'static str,
    vm: Microvm,
    init_s: Vec<f64>,
    wall_s: Vec<f64>,
}

const INIT_PROBE: &str = "read up rest </proc/uptime";
const SETTLE: &str = "usleep 200000";

fn bench(args: &Args) -> Result<(), String> {
    let husk = husk_kernel()?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let husk_dir = dir.path().join("husk");
    let peer_dir = dir.path().join("peer");
    for d in [&husk_dir, &peer_dir] {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }

    let mut husk_vm = Microvm::new(&husk.vmlinux());
    husk_vm.initrd = Some(
        guest::busybox_initramfs(
            &husk_dir,
            &format!("{INIT_PROBE}\n{SETTLE}\necho init_at=$up\nreboot -f"),
        )
        .map_err(|e| e.to_string())?,
    );

    let order = std::fs::read_to_string(args.peer_modules.join("order"))
        .map_err(|e| format!("{}: {e}", args.peer_modules.join("order").display()))?;
    let extra: Vec<(PathBuf, String)> = order
        .lines()
        .map(|m| (args.peer_modules.join(m), format!("lib/modules/{m}")))
        .collect();
    let mut peer_vm = Microvm::new(&args.peer_kernel);
    peer_vm.acpi = true;
    peer_vm.initrd = Some(
        guest::busybox_initramfs_with(
            &peer_dir,
            &format!(
                "{INIT_PROBE}\nfor m in {}; do insmod /lib/modules/$m; done\n\
                 until [ -c /dev/hvc0 ]; do usleep 1000; done\n{SETTLE}\n\
                 echo init_at=$up > /dev/hvc0\nreboot -f",
                order.split_whitespace().collect::<Vec<_>>().join(" ")
            ),
            &extra,
        )
        .map_err(|e| e.to_string())?,
    );

    let mut subjects = [
        Subject {
            name: "husk",
            vm: husk_vm,
            init_s: vec![],
            wall_s: vec![],
        },
        Subject {
            name: "debian-cloud",
            vm: peer_vm,
            init_s: vec![],
            wall_s: vec![],
        },
    ];
    for s in &mut subjects {
        s.vm.cmdline = "quiet".into();
        s.vm.timeout = Duration::from_secs(120);
    }
    // One warm-up boot each (page cache), then rounds in a changing order.
    let times: [_; 2] = boot_tests::rounds(args.runs, |i, _| {
        let s = &mut subjects[i];
        let run_dir = if s.name == "husk" {
            &husk_dir
        } else {
            &peer_dir
        };
        let boot = s.vm.run(run_dir).map_err(|e| e.to_string())?;
        let init_at = boot
            .console
            .lines()
            .find_map(|l| l.trim().strip_prefix("init_at="))
            .and_then(|v| v.parse::<f64>().ok());
        match init_at.filter(|_| boot.exit == Some(0)) {
            Some(init_at) => Ok((init_at, boot.elapsed.as_secs_f64())),
            None => Err(format!(
                "{} did not reach init (exit {:?}):\n{}\n{}",
                s.name, boot.exit, boot.console, boot.qemu_stderr
            )),
        }
    })?;
    for (s, t) in subjects.iter_mut().zip(times) {
        (s.init_s, s.wall_s) = t.into_iter().unzip();
    }

    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    println!(
        "Kernel boot under QEMU microvm (1 vCPU, 128 MiB, quiet), {} runs each, seconds \
         (wall times include both inits' 0.2 s settle):",
        args.runs
    );
    println!("{:<34} {:>8} {:>8} {:>8}", "", "median", "min", "max");
    for s in &subjects {
        for (what, v) in [
            ("guest time to init", &s.init_s),
            ("spawn to exit (wall)", &s.wall_s),
        ] {
            let (med, min, max) = stats(v);
            println!(
                "{:<34} {med:>8.3} {min:>8.3} {max:>8.3}",
                format!("{} {what}", s.name)
            );
        }
    }
    let (h, p) = (&subjects[0], &subjects[1]);
    println!(
        "husk/debian-cloud ratio: guest time to init {:.2}x, spawn to exit {:.2}x",
        stats(&h.init_s).0 / stats(&p.init_s).0,
        stats(&h.wall_s).0 / stats(&p.wall_s).0
    );
    println!(
        "sizes: husk vmlinux {:.1} MB, husk bzImage {:.1} MB, debian-cloud vmlinuz {:.1} MB",
        size(&husk.vmlinux()),
        size(&husk.bz_image()),
        size(&args.peer_kernel)
    );
    Ok(())
}
