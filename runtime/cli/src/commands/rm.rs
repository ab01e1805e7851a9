//! `husk rm`: remove a detached appliance that has stopped (with -f, stop
//! it first).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::vms::{process_alive, Status, VmDir};

#[derive(clap::Args)]
pub struct Args {
    /// Stop a running appliance at once (SIGKILL) and remove it
    #[arg(short, long)]
    force: bool,
    /// Also remove its anonymous volumes (those of -v /PATH and of the
    /// image's VOLUMEs); named volumes stay
    #[arg(short, long)]
    volumes: bool,
    #[arg(required = true)]
    names: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    super::each_name(&args.names, |name| {
        let volumes = remove(name, args.force)?;
        println!("{name}");
        if args.volumes {
            // As docker rm -v: one another appliance uses stays, and says
            // so; the appliance is removed all the same.
            for volume in volumes {
                if let Err(e) = crate::volumes::remove_anonymous(&volume) {
                    eprintln!("husk: the volume {volume} stays: {e:#}");
                }
            }
        }
        Ok(())
    })
}

/// Removes appliance `name`; the volumes it used.
pub(super) fn remove(name: &str, force: bool) -> anyhow::Result<Vec<String>> {
    let vm = VmDir::find(name)?;
    let state = vm.current_state()?;
    if state.status != Status::Exited {
        if !force {
            anyhow::bail!("{name} is running: husk stop {name} first, or husk rm -f {name}");
        }
        super::stop::stop_one(name, Some(0), Some(libc::SIGKILL))?;
    }
    // The keeper answers a stop before it is done: it still records the
    // end in its folder. Removing the folder under it races with that (a
    // file written mid-removal fails it with "Directory not empty"): wait
    // until it has gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_alive(state.keeper_pid, state.keeper_start) {
        if Instant::now() >= deadline {
            anyhow::bail!(
                "{name}'s keeper (pid {}) did not end within 10 s",
                state.keeper_pid
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // A keeper that was killed took its VM with it (parent-death
    // signals) but left the jail's folder and cgroup: swept.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        vmm::jail::sweep(vmm::jail::Cgroups::detect().as_ref());
    }
    // Removed under the state lock, and only if no keeper started it
    // again meanwhile (a husk start, or the host's start at boot).
    let _held = vm.lock_state()?;
    let state = vm.current_state()?;
    if state.status != Status::Exited {
        anyhow::bail!("{name} was started again meanwhile: not removed");
    }
    std::fs::remove_dir_all(&vm.dir)
        .with_context(|| format!("cannot remove {}", vm.dir.display()))?;
    Ok(state.volumes)
}
