//! `husk update`: change how detached appliances run, as `docker update`
//! does: the restart policy at once (the keeper reads it when the command
//! ends), vCPUs and memory from the next start of a stopped one (a VM's
//! are fixed while it runs). What changes is written to its state and
//! its recorded command line, so `husk start` runs it so.

use std::process::ExitCode;

use anyhow::Context;

use crate::vms::{restart::Policy, Status, VmDir};

#[derive(clap::Args)]
pub struct Args {
    /// The restart policy, as husk run --restart: no, always,
    /// unless-stopped, on-failure[:MAX-RESTARTS]
    #[arg(long, value_name = "POLICY")]
    restart: Option<Policy>,
    /// vCPUs, 1 to 32 (a stopped appliance: from its next start)
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=32))]
    cpus: Option<u8>,
    /// Guest memory, as husk run -m (a stopped appliance: from its next
    /// start)
    #[arg(short = 'm', long, value_name = "SIZE")]
    memory: Option<String>,
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.restart.is_none() && args.cpus.is_none() && args.memory.is_none() {
        anyhow::bail!("say what to change: --restart, --cpus or --memory");
    }
    if let Some(m) = &args.memory {
        super::memory_mib(m)?;
    }
    super::each_name(&args.names, |name| update(name, &args))
}

fn update(name: &str, args: &Args) -> anyhow::Result<()> {
    let vm = VmDir::find(name)?;
    let _held = vm.lock_state()?;
    let mut state = vm.current_state()?;
    state.check_recorded()?;
    if state.status != Status::Exited && (args.cpus.is_some() || args.memory.is_some()) {
        anyhow::bail!(
            "{name} is running, and a VM's vCPUs and memory are fixed while it runs: \
             husk stop {name} first (husk start {name} after)"
        );
    }
    let mut recorded = state.args.clone();
    let context = || format!("{name} cannot run so");
    if let Some(policy) = &args.restart {
        recorded = super::run::with_option(&recorded, &["--restart"], &policy.to_string())
            .with_context(context)?;
        state.restart = policy.recorded();
    }
    if let Some(cpus) = args.cpus {
        recorded = super::run::with_option(&recorded, &["--cpus"], &cpus.to_string())
            .with_context(context)?;
    }
    if let Some(memory) = &args.memory {
        recorded = super::run::with_option(&recorded, &["--memory", "-m"], memory)
            .with_context(context)?;
    }
    state.args = recorded;
    vm.write_state(&state)
        .with_context(|| format!("cannot write {}", vm.state_file().display()))?;
    println!("{name}");
    Ok(())
}
