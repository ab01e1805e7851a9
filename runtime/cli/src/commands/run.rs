//! `husk run`: boot a guest on husk's VMM and exit with its status.
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
use builder::kernel;
use vmm::{DiskConfig, VmConfig, VmExit};
use vmm_sys_util::terminal::Terminal;

pub const EXIT_TIMEOUT: u8 = 124;
pub const EXIT_NO_STATUS: u8 = 125;

#[derive(clap::Args)]
pub struct Args {
    /// Kernel: an ELF vmlinux with a PVH entry, or a bzImage (default: husk's kernel)
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// An initramfs for the guest
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// A disk image, attached in order as /dev/vda, /dev/vdb, ...; append ",ro" for read-only
    #[arg(long = "disk", value_name = "PATH[,ro]")]
    disks: Vec<String>,
    /// Extra kernel command-line arguments
    #[arg(long, default_value = "")]
    cmdline: String,
    /// vCPUs (1 to 32)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=32))]
    cpus: u8,
    /// Guest memory in MiB
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(32..))]
    memory: u64,
    /// Stop the guest after this many seconds (exit status 124)
    #[arg(long)]
    timeout: Option<f64>,
    /// Print when each boot phase was reached, on stderr
    #[arg(long)]
    timings: bool,
}

pub fn run(args: Args, started: Instant) -> anyhow::Result<ExitCode> {
    // husk's own kernel needs no PIT; any other kernel gets one.
    let (kernel, legacy_pit) = match args.kernel {
        Some(k) => (k, true),
        None => {
            let cache = builder::cache::root().context("cannot find husk's cache folder")?;
            (kernel::find(&cache)?.vmlinux(), false)
        }
    };
    let disks = args
        .disks
        .iter()
        .map(|d| match d.strip_suffix(",ro") {
            Some(path) => DiskConfig {
                path: path.into(),
                readonly: true,
            },
            None => DiskConfig {
                path: d.into(),
                readonly: false,
            },
        })
        .collect();
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
        cpus: args.cpus,
        memory_mib: args.memory,
        kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        disks,
        console_output: Box::new(std::io::stdout()),
        console_input: Some(input),
        timeout: args.timeout.map(Duration::from_secs_f64),
        legacy_pit,
        report_memory: args.timings,
        started,
    };
    let outcome = vmm::run(config)?;
    drop(_raw);
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
