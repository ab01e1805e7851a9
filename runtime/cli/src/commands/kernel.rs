use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use builder::kernel::{self, Build, Flavor, Progress, Source};

#[derive(clap::Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Build husk's guest kernel into the cache (returns at once when cached)
    Build {
        /// Linux source: a tarball or an unpacked tree
        #[arg(long, default_value = kernel::DEFAULT_TARBALL)]
        source: PathBuf,
        /// Parallel compile jobs (default: the number of CPUs)
        #[arg(long)]
        jobs: Option<usize>,
        /// microvm: the kernel husk boots; portable: the one exported disks
        /// boot under other hypervisors (PCI, ACPI, UEFI, their disks and
        /// network cards)
        #[arg(long, value_enum, default_value_t = FlavorArg::Microvm)]
        flavor: FlavorArg,
    },
    /// Print the path of a built guest kernel (vmlinux, or the portable
    /// flavour's bzImage)
    Path {
        #[arg(long, value_enum, default_value_t = FlavorArg::Microvm)]
        flavor: FlavorArg,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum FlavorArg {
    Microvm,
    Portable,
}

impl From<FlavorArg> for Flavor {
    fn from(f: FlavorArg) -> Flavor {
        match f {
            FlavorArg::Microvm => Flavor::MicroVm,
            FlavorArg::Portable => Flavor::Portable,
        }
    }
}

/// The file that flavour boots from: the ELF for husk's PVH entry, the
/// bzImage (an EFI program) for a portable machine's firmware.
fn boot_file(k: &kernel::Kernel, flavor: Flavor) -> PathBuf {
    match flavor {
        Flavor::MicroVm => k.vmlinux(),
        Flavor::Portable => k.bz_image(),
    }
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    let cache = builder::cache::root().context("cannot find husk's cache folder")?;
    match cmd {
        Command::Build {
            source,
            jobs,
            flavor,
        } => {
            let flavor = Flavor::from(flavor);
            let jobs =
                jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let build = Build {
                source: Source::at(&source),
                flavor,
                jobs,
                cache,
            };
            let started = Instant::now();
            let mut shown = Shown::new();
            let k = build.run(&mut |p| shown.show(p))?;
            shown.finish(started.elapsed());
            println!("{}", boot_file(&k, flavor).display());
        }
        Command::Path { flavor } => {
            let flavor = Flavor::from(flavor);
            let k = kernel::find_flavor(&cache, flavor)?;
            println!("{}", boot_file(&k, flavor).display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Progress on stderr: one line updated in place on a terminal, a line
/// every 15 seconds otherwise (CI logs).
struct Shown {
    tty: bool,
    last: Instant,
    any: bool,
}

impl Shown {
    fn new() -> Self {
        Shown {
            tty: std::io::stderr().is_terminal(),
            last: Instant::now(),
            any: false,
        }
    }

    fn show(&mut self, p: Progress) {
        let mut err = std::io::stderr();
        self.any = true;
        match p {
            Progress::Step(step) => {
                if self.tty {
                    let _ = write!(err, "\r\x1b[K");
                }
                let _ = writeln!(err, "kernel: {step}");
            }
            Progress::Compiled { count, file } => {
                if self.tty {
                    let _ = write!(err, "\r\x1b[Kkernel: {count} objects compiled ({file})");
                } else if self.last.elapsed() >= Duration::from_secs(15) {
                    let _ = writeln!(err, "kernel: {count} objects compiled");
                    self.last = Instant::now();
                }
            }
        }
    }

    fn finish(&self, took: Duration) {
        if self.any {
            if self.tty {
                eprint!("\r\x1b[K");
            }
            eprintln!("kernel: built in {:.0?}", took);
        }
    }
}
