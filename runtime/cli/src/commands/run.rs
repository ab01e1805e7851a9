//! `husk run`: build (or find in the cache) an appliance's image, boot it
//! on husk's VMM, and exit with its command's status; or boot a kernel and
//! disks given by flags.
//!
//! Exit status: the appliance command's own (0-255) as the guest reports
//! it on the control port; 124 when `--timeout` passed; 125 when the guest
//! stopped without reporting a status (a kernel panic, or an init that does
//! not report); 1 when husk itself failed.

use std::fs::File;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use appliance_spec::{ByteSize, ImageFormat, KernelRef, Vm};
use builder::kernel;
use husk_init::config::Overrides;
use vmm::{DiskAccess, DiskConfig, VmConfig, VmExit};

use super::target::{boot_cmdline, Target};
use vmm_sys_util::terminal::Terminal;

pub const EXIT_TIMEOUT: u8 = 124;
pub const EXIT_NO_STATUS: u8 = 125;

#[derive(clap::Args)]
pub struct Args {
    /// An appliance file (or a folder holding appliance.toml) or an image
    /// reference (oci:DIR[:TAG], oci-archive:PATH, docker-archive:PATH),
    /// built first (from the cache when nothing changed). Without one,
    /// husk boots --kernel with the --disk and --initrd given.
    target: Option<String>,
    /// The command to run instead of the appliance's, after --
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
    /// Set an environment variable for the appliance's command
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Kernel: an ELF vmlinux with a PVH entry, or a bzImage (default:
    /// the appliance's vm.kernel, else husk's kernel)
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// An initramfs for the guest
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// A disk image, attached after the appliance's own disks as /dev/vdX;
    /// append ",ro" for read-only, ",overlay" to keep the guest's writes for
    /// this run only (the file is not changed)
    #[arg(long = "disk", value_name = "PATH[,ro|,overlay]")]
    disks: Vec<String>,
    /// Extra kernel command-line arguments
    #[arg(long, default_value = "")]
    cmdline: String,
    /// vCPUs, 1 to 32 (default: the appliance's vm.cpus, else 1)
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=32))]
    cpus: Option<u8>,
    /// Guest memory: a size such as 256MiB, or a number of MiB (default:
    /// the appliance's vm.memory, else 128MiB)
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// Stop the guest after this many seconds (exit status 124)
    #[arg(long)]
    timeout: Option<f64>,
    /// Print when each boot phase was reached, on stderr
    #[arg(long)]
    timings: bool,
    /// Seccomp filters on the VMM's threads: kill (a refused system call
    /// ends husk with SIGSYS, naming the call), log (the kernel logs it and
    /// lets it through), off
    #[arg(long, value_enum, default_value_t = Seccomp::Kill)]
    seccomp: Seccomp,
    /// Run the VMM in a jail: its own namespaces, an empty root, an
    /// unprivileged user, no capabilities, a cgroup (default when root)
    #[arg(long, overrides_with = "no_jail")]
    jail: bool,
    /// Run the VMM without the jail
    #[arg(long)]
    no_jail: bool,
    /// The user the jailed VMM runs as
    #[arg(long, value_name = "UID:GID", default_value = "65534:65534")]
    jail_user: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Seccomp {
    Kill,
    Log,
    Off,
}

/// Guest memory in MiB from `--memory`.
fn memory_mib(arg: &str) -> anyhow::Result<u64> {
    let bytes = match arg.parse::<u64>() {
        Ok(mib) => mib << 20,
        Err(_) => {
            arg.parse::<ByteSize>()
                .map_err(|e| anyhow::anyhow!("--memory: {e}"))?
                .0
        }
    };
    if bytes < Vm::MIN_MEMORY.0 || bytes % (1 << 20) != 0 {
        anyhow::bail!("--memory {arg}: give a whole number of MiB, at least 32MiB");
    }
    Ok(bytes >> 20)
}

fn disk(arg: &str) -> DiskConfig {
    let (path, access) = if let Some(path) = arg.strip_suffix(",ro") {
        (path, DiskAccess::ReadOnly)
    } else if let Some(path) = arg.strip_suffix(",overlay") {
        (path, DiskAccess::Overlay)
    } else {
        (arg, DiskAccess::ReadWrite)
    };
    DiskConfig {
        path: path.into(),
        access,
    }
}

/// What the run boots, from the target (if any) and the flags.
struct Plan {
    config_kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    disks: Vec<DiskConfig>,
    cmdline: String,
    cpus: u8,
    memory_mib: u64,
}

fn plan(args: &Args) -> anyhow::Result<Plan> {
    let mut plan = Plan {
        config_kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        disks: Vec::new(),
        cmdline: String::new(),
        cpus: args.cpus.unwrap_or(1),
        memory_mib: match &args.memory {
            Some(m) => memory_mib(m)?,
            None => 128,
        },
    };
    let Some(target) = &args.target else {
        if !args.command.is_empty() || !args.env.is_empty() {
            anyhow::bail!("a command after -- and -e need an appliance or image to run");
        }
        plan.disks = args.disks.iter().map(|d| disk(d)).collect();
        plan.cmdline = args.cmdline.clone();
        return Ok(plan);
    };
    let target = Target::parse(target)?;
    let built = target.build()?;
    let appliance = target.appliance();
    let readonly = appliance.is_some_and(|a| a.rootfs.readonly);
    let mut cmdline = vec!["quiet".to_string(), boot_cmdline(built.format, readonly)];
    match built.format {
        ImageFormat::Ext4 => {
            // The cached image stays as built: a writable root keeps this
            // run's writes in an overlay that ends with the VM.
            plan.disks.push(DiskConfig {
                path: built.path.clone(),
                access: if readonly {
                    DiskAccess::ReadOnly
                } else {
                    DiskAccess::Overlay
                },
            });
        }
        ImageFormat::Initramfs => {
            if args.initrd.is_some() {
                anyhow::bail!("--initrd: this appliance's root filesystem is its initramfs");
            }
            plan.initrd = Some(built.path.clone());
        }
    }
    if let Some(a) = appliance {
        if !a.vm.net.is_empty() || a.vm.vsock.is_some() {
            anyhow::bail!(
                "vm.net and vm.vsock are not supported by husk's VMM yet; remove them to run this appliance"
            );
        }
        if args.cpus.is_none() {
            plan.cpus = u8::try_from(a.vm.cpus).context("vm.cpus")?;
        }
        if args.memory.is_none() {
            plan.memory_mib = a.vm.memory.0 >> 20;
        }
        if args.kernel.is_none() {
            if let KernelRef::Path(p) = &a.vm.kernel {
                plan.config_kernel = Some(p.clone());
            }
        }
        if plan.initrd.is_none() {
            plan.initrd = a.vm.initrd.clone();
        }
        plan.disks.extend(a.vm.disks.iter().map(|d| DiskConfig {
            path: d.path.clone(),
            access: if d.readonly {
                DiskAccess::ReadOnly
            } else {
                DiskAccess::ReadWrite
            },
        }));
        cmdline.extend(a.vm.cmdline.clone());
    }
    plan.disks.extend(args.disks.iter().map(|d| disk(d)));
    let overrides = Overrides {
        command: (!args.command.is_empty()).then(|| args.command.clone()),
        env: args.env.clone(),
    };
    for e in &overrides.env {
        if !e.contains('=') || e.starts_with('=') {
            anyhow::bail!("-e {e}: write KEY=VALUE");
        }
    }
    if !overrides.is_empty() {
        cmdline.push(overrides.to_param());
    }
    if !args.cmdline.is_empty() {
        cmdline.push(args.cmdline.clone());
    }
    plan.cmdline = cmdline.join(" ");
    Ok(plan)
}

pub fn run(args: Args, started: Instant) -> anyhow::Result<ExitCode> {
    let plan = plan(&args)?;
    // husk's own kernel needs no PIT; any other kernel gets one.
    let (kernel, legacy_pit) = match &plan.config_kernel {
        Some(k) => (k.clone(), true),
        None => {
            let cache = builder::cache::root().context("cannot find husk's cache folder")?;
            (kernel::find(&cache)?.vmlinux(), false)
        }
    };
    let stdin = std::io::stdin();
    let input = stdin
        .as_fd()
        .try_clone_to_owned()
        .map(File::from)
        .context("cannot duplicate stdin")?;
    // A terminal goes raw, so keys reach the guest as typed; restored on
    // every way out of this function.
    let _raw = RawTerminal::enter();
    let config = VmConfig {
        cpus: plan.cpus,
        memory_mib: plan.memory_mib,
        kernel,
        initrd: plan.initrd.clone(),
        cmdline: plan.cmdline.clone(),
        disks: plan.disks.clone(),
        console_output: Box::new(std::io::stdout()),
        console_input: Some(input),
        timeout: args.timeout.map(Duration::from_secs_f64),
        legacy_pit,
        report_memory: args.timings,
        seccomp: match args.seccomp {
            Seccomp::Kill => vmm::SeccompMode::Kill,
            Seccomp::Log => vmm::SeccompMode::Log,
            Seccomp::Off => vmm::SeccompMode::Off,
        },
        started,
    };
    let jail = if args.jail || (!args.no_jail && is_root()) {
        let (uid, gid) = args
            .jail_user
            .split_once(':')
            .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
            .context("--jail-user: write UID:GID with numbers")?;
        Some(vmm::jail::JailConfig {
            uid,
            gid,
            // Guest RAM plus room for the VMM and the disks' page cache.
            memory_limit: (plan.memory_mib + 256) << 20,
            cpus: u32::from(plan.cpus),
            max_files: 256,
            new_netns: true,
        })
    } else {
        None
    };
    let mut files = vmm::open_host_files(&config)?;
    if let Some(jail) = &jail {
        match vmm::jail::enter(jail, || files.reopen_own())? {
            vmm::jail::Side::Supervisor(status) => {
                drop(_raw);
                return Ok(ExitCode::from(status));
            }
            vmm::jail::Side::Jailed => {}
        }
    }
    let outcome = vmm::run_with(config, files)?;
    drop(_raw);
    drop(plan);
    if args.timings {
        for (phase, at) in &outcome.timings {
            eprintln!("husk: {:>9.3} ms  {}", at.as_secs_f64() * 1e3, phase.name());
        }
        eprintln!(
            "husk: {:>9.3} ms  exit",
            started.elapsed().as_secs_f64() * 1e3
        );
        if let Some((peak, guest)) = outcome.memory {
            let mib = |b: u64| b as f64 / f64::from(1 << 20);
            eprintln!(
                "husk: memory: peak RSS {:.1} MiB, guest RAM touched {:.1} MiB, VMM overhead {:.1} MiB",
                mib(peak),
                mib(guest),
                mib(peak.saturating_sub(guest))
            );
        }
    }
    Ok(match outcome.exit {
        VmExit::Shutdown { status: Some(s) } => ExitCode::from(s),
        VmExit::Shutdown { status: None } => {
            eprintln!("husk: the guest stopped without reporting an exit status");
            ExitCode::from(EXIT_NO_STATUS)
        }
        VmExit::Timeout => {
            eprintln!("husk: the guest was still running after --timeout; stopped it");
            ExitCode::from(EXIT_TIMEOUT)
        }
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Raw mode on a terminal stdin for as long as it lives.
struct RawTerminal(bool);

impl RawTerminal {
    fn enter() -> Self {
        let stdin = std::io::stdin();
        let tty = stdin.is_terminal() && stdin.lock().set_raw_mode().is_ok();
        RawTerminal(tty)
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if self.0 {
            let _ = std::io::stdin().lock().set_canon_mode();
        }
    }
}
