//! Boot tests: real Linux guests on KVM. On a host whose KVM cannot boot
//! Linux (PVM), this binary re-runs itself inside ci/kvm-testbed.

use std::process::ExitCode;

use std::path::{Path, PathBuf};
use std::time::Duration;

use boot_tests::guest;
use boot_tests::husk::{husk_run, report_tool, HuskRun};
use boot_tests::qemu::{Boot, Microvm};
use boot_tests::{husk_kernel, route, Route};
use libtest_mimic::{Arguments, Failed, Trial};

mod appliances;
mod kvm;

fn main() -> ExitCode {
    let args = Arguments::from_args();
    // A run the test bed's emulator stopped goes on with `--skip NAME`
    // for each test that passed (a part of a name): no name may be a
    // part of another.
    let all = trials();
    for a in &all {
        if let Some(b) = all
            .iter()
            .find(|b| b.name() != a.name() && b.name().contains(a.name()))
        {
            eprintln!(
                "boot tests: the name {:?} is a part of {:?}: rename one",
                a.name(),
                b.name()
            );
            return ExitCode::FAILURE;
        }
    }
    // Images are built here, where the cache is writable; inside the test
    // bed these builds are cache hits.
    if let Err(e) = boot_tests::husk::build_appliances() {
        eprintln!("boot tests: cannot build the test appliances: {e}");
        return ExitCode::FAILURE;
    }
    match route() {
        Err(why) => {
            eprintln!("boot tests: no usable KVM: {why}");
            ExitCode::FAILURE
        }
        Ok(Route::TestBed { script, host }) => {
            eprintln!(
                "boot tests: host /dev/kvm is {host:?}; running inside the KVM test bed ({})",
                script.display()
            );
            if args.list {
                return boot_tests::rerun_in_testbed(&script);
            }
            let selected: Vec<String> = all
                .iter()
                .filter(|t| !args.is_filtered_out(t))
                .map(|t| t.name().to_string())
                .collect();
            boot_tests::rerun_in_testbeds(&script, &selected)
        }
        Ok(Route::Direct(kind)) => {
            eprintln!("boot tests: running on /dev/kvm ({kind:?})");
            libtest_mimic::run(&args, all).exit_code()
        }
    }
}

fn trials() -> Vec<Trial> {
    let mut all = appliances::trials();
    all.extend(kvm::trials());
    all.extend([
        boot_tests::trial(
            "qemu_microvm_boots_husk_kernel_to_init",
            qemu_microvm_boots_husk_kernel_to_init,
        ),
        boot_tests::trial(
            "husk_kernel_sees_cpus_memory_and_an_ext4_virtio_disk",
            husk_kernel_sees_cpus_memory_and_an_ext4_virtio_disk,
        ),
        boot_tests::trial(
            "husk_run_exits_with_the_guest_status",
            husk_run_exits_with_the_guest_status,
        ),
        boot_tests::trial(
            "husk_run_guest_sees_2_cpus_and_its_memory",
            husk_run_guest_sees_2_cpus_and_its_memory,
        ),
        boot_tests::trial(
            "husk_run_disk_persists_and_readonly_refuses",
            husk_run_disk_persists_and_readonly_refuses,
        ),
        boot_tests::trial(
            "husk_run_console_input_reaches_the_guest",
            husk_run_console_input_reaches_the_guest,
        ),
        boot_tests::trial(
            "husk_run_boots_debian_bzimage_with_initrd",
            husk_run_boots_debian_bzimage_with_initrd,
        ),
        boot_tests::trial(
            "husk_run_timeout_stops_a_hung_guest",
            husk_run_timeout_stops_a_hung_guest,
        ),
        boot_tests::trial(
            "husk_run_refuses_a_file_that_is_not_a_kernel",
            husk_run_refuses_a_file_that_is_not_a_kernel,
        ),
        boot_tests::trial(
            "husk_run_says_when_memory_is_too_small",
            husk_run_says_when_memory_is_too_small,
        ),
        boot_tests::trial(
            "husk_run_boots_husks_kernel_in_32_mib",
            husk_run_boots_husks_kernel_in_32_mib,
        ),
        boot_tests::trial(
            "husk_run_timings_show_phases_and_vmm_memory",
            husk_run_timings_show_phases_and_vmm_memory,
        ),
    ]);
    all
}

/// Generous bound for one boot inside the emulated test bed.
const LIMIT: Duration = Duration::from_secs(120);

/// A busybox initramfs with `husk-report` (status on the control port).
fn husk_initramfs(dir: &Path, init: &str) -> Result<PathBuf, Failed> {
    std::fs::create_dir_all(dir)?;
    let report = report_tool(dir)?;
    Ok(guest::busybox_initramfs_with(
        dir,
        init,
        &[(report, "bin/husk-report".to_string())],
    )?)
}

/// `husk run` of husk's default kernel with `initrd` and extra arguments.
fn husk_boot(initrd: &Path, extra: &[&str], stdin: &[u8]) -> Result<HuskRun, Failed> {
    husk_kernel()?; // fail early, and clearly, when there is none
    let mut args = vec![
        "--initrd",
        initrd.to_str().unwrap(),
        "--cmdline",
        "quiet",
        "--timeout",
        "90",
    ];
    args.extend_from_slice(extra);
    Ok(husk_run(&args, stdin, LIMIT)?)
}

fn husk_run_exits_with_the_guest_status() -> Result<(), Failed> {
    for status in [0, 1, 3] {
        let dir = tempfile::tempdir()?;
        let initrd = husk_initramfs(
            dir.path(),
            &format!("echo HUSK-MARKER-{status}\nhusk-report {status}\nreboot -f"),
        )?;
        let run = husk_boot(&initrd, &[], b"")?;
        if run.code != Some(status) {
            return Err(run
                .explain(&format!("expected exit status {status}"))
                .into());
        }
        if !run.stdout.contains(&format!("HUSK-MARKER-{status}")) {
            return Err(run.explain("the guest's output is missing").into());
        }
        eprintln!("status {status}: booted and exited in {:?}", run.elapsed);
    }
    Ok(())
}

fn husk_run_guest_sees_2_cpus_and_its_memory() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let initrd = husk_initramfs(
        dir.path(),
        "echo cpus=$(grep -c ^processor /proc/cpuinfo)\n\
         echo mem=$(awk '/MemTotal/ {print $2}' /proc/meminfo)\n\
         husk-report 0\nreboot -f",
    )?;
    let run = husk_boot(&initrd, &["--cpus", "2", "--memory", "256"], b"")?;
    if run.field("cpus").as_deref() != Some("2") {
        return Err(run.explain("the guest does not see 2 CPUs").into());
    }
    let mem: u64 = run.field("mem").and_then(|m| m.parse().ok()).unwrap_or(0);
    if !(200_000..=262_144).contains(&mem) {
        return Err(run.explain("MemTotal is not about 256 MiB").into());
    }
    Ok(())
}

fn husk_run_disk_persists_and_readonly_refuses() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty)?;
    let disk = dir.path().join("data.ext4");
    guest::ext4_image(&empty, &disk, 16)?;
    let disk = disk.to_str().unwrap().to_string();

    let write = husk_initramfs(
        &dir.path().join("w"),
        "mount -t ext4 /dev/vda /mnt && echo kept-across-boots > /mnt/note && umount /mnt && \
         husk-report 0\nreboot -f",
    )?;
    let run = husk_boot(&write, &["--disk", &disk], b"")?;
    if run.code != Some(0) {
        return Err(run.explain("writing to the disk failed").into());
    }

    let read = husk_initramfs(
        &dir.path().join("r"),
        "mount -t ext4 -o ro /dev/vda /mnt && echo note=$(cat /mnt/note)\n\
         if dd if=/dev/zero of=/dev/vda bs=512 count=1 conv=fsync 2>/dev/null; \
         then echo raw=written; else echo raw=refused; fi\nhusk-report 0\nreboot -f",
    )?;
    let ro = format!("{disk},ro");
    let run = husk_boot(&read, &["--disk", &ro], b"")?;
    if run.field("note").as_deref() != Some("kept-across-boots") {
        return Err(run
            .explain("the file written in the first boot is not there")
            .into());
    }
    if run.field("raw").as_deref() != Some("refused") {
        return Err(run.explain("a read-only disk accepted a write").into());
    }
    Ok(())
}

fn husk_run_console_input_reaches_the_guest() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let initrd = husk_initramfs(
        dir.path(),
        // As husk's init does: console open, then "init running".
        "husk-report mark\nread line\necho got=$line\nhusk-report 0\nreboot -f",
    )?;
    let run = husk_boot(&initrd, &[], b"hello-from-stdin\n")?;
    if run.field("got").as_deref() != Some("hello-from-stdin") {
        return Err(run.explain("stdin did not reach the guest").into());
    }
    Ok(())
}

/// Debian's stock cloud kernel (a bzImage), fetched by ci/setup.
fn debian_kernel() -> Result<PathBuf, Failed> {
    let cache = builder::cache::root()?.join("peers");
    let kernel = std::fs::read_dir(&cache)
        .ok()
        .and_then(|d| {
            d.flatten()
                .map(|e| e.path().join("vmlinuz"))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| {
            format!(
                "no Debian cloud kernel in {}; run ci/setup (it fetches one)",
                cache.display()
            )
        })?;
    Ok(kernel)
}

fn husk_run_boots_debian_bzimage_with_initrd() -> Result<(), Failed> {
    let kernel = debian_kernel()?;
    let dir = tempfile::tempdir()?;
    // Debian's cloud kernel finds devices only through ACPI, which husk does
    // not provide: it reaches init and reports through the control port.
    let initrd = husk_initramfs(dir.path(), "husk-report 7\nreboot -f")?;
    let args = [
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cmdline",
        "quiet",
        "--timeout",
        "90",
    ];
    let run = husk_run(&args, b"", LIMIT)?;
    if run.code != Some(7) {
        return Err(run
            .explain("the bzImage guest did not reach init and report 7")
            .into());
    }
    eprintln!("Debian bzImage booted to init in {:?}", run.elapsed);
    Ok(())
}

fn husk_run_timeout_stops_a_hung_guest() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    // One sleep that never ends: no user code runs after it starts.
    let initrd = husk_initramfs(dir.path(), "echo hanging\nexec sleep 1000000")?;
    let args = ["--initrd", initrd.to_str().unwrap(), "--timeout", "15"];
    let run = husk_run(&args, b"", LIMIT)?;
    if run.code != Some(124) || !run.stderr.contains("--timeout") {
        return Err(run
            .explain("expected exit 124 with a one-line reason")
            .into());
    }
    // No husk init in this guest: its kernel runs, nothing reports more.
    if !run
        .stderr
        .contains("(the last it reached: vCPUs started at ")
    {
        return Err(run
            .explain("the reason does not say how far the guest got")
            .into());
    }
    // Where the vCPU was: in the guest's kernel (it idles under the
    // sleep), whose addresses are the top 2 GiB.
    let rip = run
        .stderr
        .split("; vCPU 0 at 0x")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|hex| u64::from_str_radix(hex, 16).ok());
    if rip.is_none_or(|r| r < 0xffff_ffff_8000_0000) {
        return Err(run
            .explain("the reason does not say where the vCPU was in the guest's kernel")
            .into());
    }
    Ok(())
}

fn husk_run_refuses_a_file_that_is_not_a_kernel() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let bogus = dir.path().join("not-a-kernel");
    std::fs::write(&bogus, b"this is text, not a kernel\n".repeat(100))?;
    let run = husk_run(&["--kernel", bogus.to_str().unwrap()], b"", LIMIT)?;
    if run.code != Some(1) || !run.stderr.contains("is not a kernel husk can boot") {
        return Err(run.explain("expected a clear error and exit 1").into());
    }
    Ok(())
}

/// Fails with everything a reader needs when a boot did not go as expected.
fn explain(boot: &Boot, what: &str) -> Failed {
    format!(
        "{what}\n--- exit: {:?} after {:?}\n--- console:\n{}\n--- qemu stderr:\n{}",
        boot.exit, boot.elapsed, boot.console, boot.qemu_stderr
    )
    .into()
}

fn qemu_microvm_boots_husk_kernel_to_init() -> Result<(), Failed> {
    let kernel = husk_kernel()?;
    let dir = tempfile::tempdir()?;
    let mut vm = Microvm::new(&kernel.vmlinux());
    vm.initrd = Some(guest::busybox_initramfs(
        dir.path(),
        "echo HUSK-INIT-REACHED uptime=$(cut -d' ' -f1 /proc/uptime)\nreboot -f",
    )?);
    vm.cmdline = "quiet".into();
    let boot = vm.run(dir.path())?;
    eprintln!("booted to init and back in {:?}", boot.elapsed);
    if !boot.console.contains("HUSK-INIT-REACHED") {
        return Err(explain(&boot, "the guest's init did not print its marker"));
    }
    if boot.exit != Some(0) {
        return Err(explain(
            &boot,
            "QEMU did not exit cleanly after the guest rebooted",
        ));
    }
    Ok(())
}

fn husk_kernel_sees_cpus_memory_and_an_ext4_virtio_disk() -> Result<(), Failed> {
    let kernel = husk_kernel()?;
    let dir = tempfile::tempdir()?;
    let content = dir.path().join("disk-content");
    std::fs::create_dir_all(&content)?;
    std::fs::write(content.join("hello.txt"), "written-on-the-host\n")?;
    let disk = dir.path().join("disk.ext4");
    guest::ext4_image(&content, &disk, 16)?;

    let mut vm = Microvm::new(&kernel.vmlinux());
    vm.cpus = 2;
    vm.memory_mib = 256;
    vm.disks = vec![disk];
    vm.initrd = Some(guest::busybox_initramfs(
        dir.path(),
        "echo cpus=$(grep -c ^processor /proc/cpuinfo)\n\
         echo mem=$(awk '/MemTotal/ {print $2}' /proc/meminfo)\n\
         mount -t ext4 /dev/vda /mnt && echo disk=$(cat /mnt/hello.txt)\n\
         reboot -f",
    )?);
    vm.cmdline = "quiet".into();
    let boot = vm.run(dir.path())?;
    let field = |name: &str| {
        boot.console
            .lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    if field("cpus").as_deref() != Some("2") {
        return Err(explain(&boot, "the guest does not see 2 CPUs"));
    }
    // 256 MiB less what the kernel keeps for itself, in KiB.
    let mem: u64 = field("mem").and_then(|m| m.parse().ok()).unwrap_or(0);
    if !(200_000..=262_144).contains(&mem) {
        return Err(explain(&boot, "MemTotal is not about 256 MiB"));
    }
    if field("disk").as_deref() != Some("written-on-the-host") {
        return Err(explain(&boot, "the ext4 virtio disk was not readable"));
    }
    Ok(())
}

fn husk_run_says_when_memory_is_too_small() -> Result<(), Failed> {
    // Debian's bzImage decompresses itself into 51 MiB above where it loads.
    let kernel = debian_kernel()?;
    let args = ["--kernel", kernel.to_str().unwrap(), "--memory", "32"];
    let run = husk_run(&args, b"", LIMIT)?;
    if run.code != Some(1) || !run.stderr.contains("too small for the kernel") {
        return Err(run
            .explain("expected exit 1 saying memory is too small")
            .into());
    }
    Ok(())
}

/// The smallest memory an appliance may ask for (32 MiB) is enough for
/// husk's kernel, which loads at 2 MiB.
fn husk_run_boots_husks_kernel_in_32_mib() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let initrd = husk_initramfs(
        dir.path(),
        "echo mem=$(awk '/MemTotal/ {print $2}' /proc/meminfo)\nhusk-report 0\nreboot -f",
    )?;
    let run = husk_boot(&initrd, &["--memory", "32"], b"")?;
    let mem: u64 = run.field("mem").and_then(|m| m.parse().ok()).unwrap_or(0);
    if run.code != Some(0) || !(16_000..=32_768).contains(&mem) {
        return Err(run.explain("expected a 32 MiB guest to boot").into());
    }
    Ok(())
}

/// `--timings`: every phase once, in order, and a memory line about the VMM
/// itself, jailed (a forked child) or not.
fn husk_run_timings_show_phases_and_vmm_memory() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let initrd = husk_initramfs(
        dir.path(),
        "husk-report mark\necho hello\nhusk-report 0\nreboot -f",
    )?;
    let phases = [
        "VM created",
        "memory ready",
        "kernel loaded",
        "vCPUs started",
        "guest reached init",
        "command exited",
        "exit",
    ];
    for jail in ["--jail", "--no-jail"] {
        let run = husk_boot(&initrd, &["--timings", "--memory", "128", jail], b"")?;
        if run.code != Some(0) {
            return Err(run.explain(&format!("{jail}: expected status 0")).into());
        }
        let mut times = Vec::new();
        for phase in phases {
            let at = run.stderr.lines().find_map(|l| {
                let rest = l.strip_prefix("husk:")?.trim_end().strip_suffix(phase)?;
                rest.trim().strip_suffix("ms")?.trim().parse::<f64>().ok()
            });
            match at {
                Some(t) => times.push(t),
                None => return Err(run.explain(&format!("{jail}: no '{phase}' timing")).into()),
            }
        }
        if times.windows(2).any(|w| w[0] > w[1]) {
            return Err(run.explain(&format!("{jail}: phases out of order")).into());
        }
        // "memory: peak RSS P MiB, RSS R MiB, guest RAM touched G MiB,
        // VMM overhead O MiB"
        let figures: Vec<f64> = run
            .stderr
            .lines()
            .find(|l| l.starts_with("husk: memory:"))
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let [peak, resident, guest, overhead] = figures[..] else {
            return Err(run.explain(&format!("{jail}: no memory line")).into());
        };
        // The kernel alone is 14 MiB of loaded segments; the VMM itself
        // is a few MiB (the figure README gives). Unjailed, the VMM is the
        // whole husk process, its command line's work and the pages of
        // its (here debug) binary included: 16.1 to 16.6 MiB in the test
        // bed.
        let most = if jail == "--jail" { 16.0 } else { 24.0 };
        if !(14.0..=128.0).contains(&guest)
            || overhead > most
            || peak < guest
            || (resident - guest - overhead).abs() > 0.16
        {
            return Err(run
                .explain(&format!(
                    "{jail}: implausible memory report (peak {peak}, resident {resident}, guest {guest}, VMM {overhead} MiB)"
                ))
                .into());
        }
    }
    Ok(())
}
