//! QEMU's `microvm` machine on KVM: the peer husk is checked and measured
//! against, and a way to prove the guest kernel boots on its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One QEMU `microvm` boot.
pub struct Microvm {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Disk images attached as virtio-blk, in order (`/dev/vda`, ...).
    pub disks: Vec<PathBuf>,
    /// Describe the devices by ACPI (for kernels without virtio-mmio
    /// command-line devices); husk's kernel has no ACPI and needs none.
    pub acpi: bool,
    pub timeout: Duration,
}

/// What a boot printed on its console and how it ended.
#[derive(Debug)]
pub struct Boot {
    pub console: String,
    /// QEMU's exit code; `None` when it was killed at the timeout.
    pub exit: Option<i32>,
    pub elapsed: Duration,
    pub qemu_stderr: String,
}

impl Microvm {
    pub fn new(kernel: &Path) -> Self {
        Microvm {
            kernel: kernel.to_path_buf(),
            initrd: None,
            cmdline: String::new(),
            cpus: 1,
            memory_mib: 128,
            disks: Vec::new(),
            acpi: false,
            timeout: Duration::from_secs(120),
        }
    }

    /// Boots with QEMU's fastest microvm options (no firmware option ROMs,
    /// no legacy PIT/PIC/RTC/serial, no ACPI); the console is a virtio
    /// console written to a file under `dir`.
    pub fn run(&self, dir: &Path) -> std::io::Result<Boot> {
        let console = dir.join("console.txt");
        let mut cmd = Command::new("qemu-system-x86_64");
        let acpi = if self.acpi { "on" } else { "off" };
        cmd.arg("-M").arg(format!(
            "microvm,x-option-roms=off,pit=off,pic=off,isa-serial=off,rtc=off,acpi={acpi}"
        ));
        cmd.args([
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-smp")
        .arg(self.cpus.to_string())
        .arg("-m")
        .arg(format!("{}M", self.memory_mib))
        .arg("-kernel")
        .arg(&self.kernel)
        .arg("-append")
        .arg(format!("console=hvc0 reboot=t panic=-1 {}", self.cmdline))
        .args(["-device", "virtio-serial-device", "-chardev"])
        .arg(format!("file,id=con,path={}", console.display()))
        .args(["-device", "virtconsole,chardev=con"]);
        if let Some(initrd) = &self.initrd {
            cmd.arg("-initrd").arg(initrd);
        }
        for (i, disk) in self.disks.iter().enumerate() {
            cmd.arg("-drive")
                .arg(format!(
                    "id=d{i},file={},format=raw,if=none",
                    disk.display()
                ))
                .arg("-device")
                .arg(format!("virtio-blk-device,drive=d{i}"));
        }
        let stderr_path = dir.join("qemu-stderr.txt");
        let stderr = std::fs::File::create(&stderr_path)?;
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()?;
        let exit = loop {
            if let Some(status) = child.try_wait()? {
                break status.code();
            }
            if started.elapsed() > self.timeout {
                child.kill()?;
                child.wait()?;
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let elapsed = started.elapsed();
        Ok(Boot {
            console: std::fs::read_to_string(&console).unwrap_or_default(),
            exit,
            elapsed,
            qemu_stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
        })
    }
}

/// QEMU `microvm` with its fastest options (as [`Microvm::run`]), 1 vCPU,
/// 128 MiB, the guest console on QEMU's stdout, for the benches, which
/// bound it with a [`crate::Watchdog`]. The caller adds the initrd or
/// disks.
pub fn microvm_stdio(kernel: &Path, cmdline: &str) -> Command {
    microvm_stdio_with(kernel, cmdline, 128, false)
}

/// [`microvm_stdio`] with `memory_mib` of RAM, which is a shared memfd
/// when `shared_memory` (what a vhost-user device such as virtio-fs needs).
pub fn microvm_stdio_with(
    kernel: &Path,
    cmdline: &str,
    memory_mib: u32,
    shared_memory: bool,
) -> Command {
    let mut machine =
        String::from("microvm,x-option-roms=off,pit=off,pic=off,isa-serial=off,rtc=off,acpi=off");
    let mut c = Command::new("qemu-system-x86_64");
    if shared_memory {
        machine.push_str(",memory-backend=mem");
        c.arg("-object").arg(format!(
            "memory-backend-memfd,id=mem,size={memory_mib}M,share=on"
        ));
    }
    c.args(["-M", &machine, "-accel", "kvm", "-cpu", "host", "-m"])
        .arg(format!("{memory_mib}M"))
        .args([
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-device",
            "virtio-serial-device",
            "-chardev",
            "stdio,id=con",
            "-device",
            "virtconsole,chardev=con",
            "-append",
        ])
        .arg(format!("console=hvc0 reboot=t panic=-1 quiet {cmdline}"))
        .arg("-kernel")
        .arg(kernel);
    c
}

/// OVMF, Debian's UEFI firmware for QEMU: its code and the template of its
/// variable store.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// QEMU's standard PC (`q35`) on TCG with 512 MiB and one vCPU, no reboot,
/// booting `disk` (QEMU's `format`, writes kept apart) attached by
/// `device` (a `-device` spec naming drive `d0`), the first serial port
/// into `console`. With `uefi_vars`, OVMF is the firmware, its variables
/// a writable copy made at that path; without, SeaBIOS (for `-kernel`).
pub fn q35(
    disk: &Path,
    format: &str,
    device: &str,
    console: &Path,
    uefi_vars: Option<&Path>,
) -> std::io::Result<Command> {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-machine", "q35", "-accel", "tcg", "-m", "512", "-smp", "1"])
        .args(["-display", "none", "-no-reboot", "-nodefaults"])
        .arg("-drive")
        .arg(format!(
            "if=none,id=d0,format={format},snapshot=on,file={}",
            disk.display()
        ))
        .args(["-device", device])
        .arg("-serial")
        .arg(format!("file:{}", console.display()));
    if let Some(vars) = uefi_vars {
        if !Path::new(OVMF_CODE).is_file() || !Path::new(OVMF_VARS).is_file() {
            return Err(std::io::Error::other(
                "OVMF is not installed (apt-get install ovmf)",
            ));
        }
        std::fs::copy(OVMF_VARS, vars)?;
        std::fs::set_permissions(vars, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        c.arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
    }
    Ok(c)
}
