//! Boot tests: real Linux guests on KVM. On a host whose KVM cannot boot
//! Linux (PVM), this binary re-runs itself inside ci/kvm-testbed.

use std::process::ExitCode;

use boot_tests::guest;
use boot_tests::qemu::{Boot, Microvm};
use boot_tests::{husk_kernel, route, Route};
use libtest_mimic::{Arguments, Failed, Trial};

fn main() -> ExitCode {
    let args = Arguments::from_args();
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
            boot_tests::rerun_in_testbed(&script)
        }
        Ok(Route::Direct(kind)) => {
            eprintln!("boot tests: running on /dev/kvm ({kind:?})");
            libtest_mimic::run(&args, trials()).exit_code()
        }
    }
}

fn trials() -> Vec<Trial> {
    vec![
        Trial::test(
            "qemu_microvm_boots_husk_kernel_to_init",
            qemu_microvm_boots_husk_kernel_to_init,
        ),
        Trial::test(
            "husk_kernel_sees_cpus_memory_and_an_ext4_virtio_disk",
            husk_kernel_sees_cpus_memory_and_an_ext4_virtio_disk,
        ),
    ]
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
