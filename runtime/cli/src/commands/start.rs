//! `husk start` and `husk restart`: run a detached appliance that has
//! stopped again, with the command line it was started with (its folder,
//! log and name stay), as `docker start` and `docker restart` do.

use std::process::ExitCode;

use anyhow::Context;

use crate::vms::{Status, VmDir};

#[derive(clap::Args)]
pub struct StartArgs {
    /// Start every stopped appliance whose restart policy is always, or
    /// unless-stopped and it was not stopped by husk stop (what a host
    /// restart stopped; a systemd unit runs this at boot)
    #[arg(long, conflicts_with_all = ["names", "attach", "interactive"])]
    at_boot: bool,
    /// Its console here, from its start on, until it stops; exits with
    /// its status (one appliance)
    #[arg(short, long)]
    attach: bool,
    /// Also send this input to its console (run -i or create -i; implies
    /// --attach)
    #[arg(short, long)]
    interactive: bool,
    /// The keys that detach (with -a or -i), as docker's
    #[arg(long, default_value = "ctrl-p,ctrl-q", value_name = "KEYS")]
    detach_keys: String,
    #[arg(required_unless_present = "at_boot")]
    names: Vec<String>,
}

#[derive(clap::Args)]
pub struct RestartArgs {
    /// Seconds between the stop signal and SIGKILL when stopping
    /// (default: the appliance's --stop-timeout, else 10)
    #[arg(short = 't', long = "time")]
    time: Option<u32>,
    #[arg(required = true)]
    names: Vec<String>,
}

pub fn start(args: StartArgs) -> anyhow::Result<ExitCode> {
    if args.at_boot {
        return super::each_name(&at_boot()?, |name| start_one(name, false));
    }
    if args.attach || args.interactive {
        let [name] = args.names.as_slice() else {
            anyhow::bail!(
                "husk start -a and -i take one appliance, not {}",
                args.names.len()
            );
        };
        return start_attached(name, args.interactive, &args.detach_keys);
    }
    super::each_name(&args.names, |name| start_one(name, false))
}

/// `husk start -a`: started as `husk start` starts it, then its console
/// from the start on (read from the log, so nothing it said before the
/// attach is missed), with its status, as docker start -a.
fn start_attached(name: &str, stdin: bool, detach_keys: &str) -> anyhow::Result<ExitCode> {
    let vm = VmDir::find(name)?;
    let state = vm.current_state()?;
    if state.status != Status::Exited {
        anyhow::bail!("{name} is running already (husk attach {name})");
    }
    let (args, cwd) = recorded(&state)?;
    // The log's lines carry the time they arrived: this run's are after.
    let since = crate::vms::now_ms();
    match super::run::launch_keeper(&vm, &args, &cwd, None)? {
        // Stopped before it was ready: what it said, and its status.
        Some(_) => super::attach::replay_ended(&vm, since),
        None => super::attach::attach_since(&vm, stdin, detach_keys, since),
    }
}

/// The `husk run` command line a start runs again, and the folder it was
/// typed in.
fn recorded(
    state: &crate::vms::State,
) -> anyhow::Result<(Vec<std::ffi::OsString>, std::path::PathBuf)> {
    state.check_recorded()?;
    let cwd = state
        .cwd
        .clone()
        .with_context(|| format!("{}'s state does not say where it was started", state.name))?;
    Ok((state.args.iter().map(Into::into).collect(), cwd))
}

/// The appliances `--at-boot` starts: stopped, and their restart policy
/// says a host restart is no reason to stay stopped.
fn at_boot() -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for vm in VmDir::all()? {
        let Ok(state) = vm.current_state() else {
            continue;
        };
        let policy = state.restart_policy();
        // One husk create made and nobody started stays so, as docker's.
        if state.status == Status::Exited
            && !state.never_started()
            && policy.starts_at_boot(state.stopped)
        {
            names.push(vm.name);
        }
    }
    Ok(names)
}

pub fn restart(args: RestartArgs) -> anyhow::Result<ExitCode> {
    super::each_name(&args.names, |name| {
        super::stop::stop_one(name, args.time, None)?;
        start_one(name, true)
    })
}

fn start_one(name: &str, stopped_just_now: bool) -> anyhow::Result<()> {
    let vm = VmDir::find(name)?;
    // The keeper looks again under the state lock, and does not start
    // if another keeper started meanwhile (a second husk start).
    let state = vm.current_state()?;
    if state.status != Status::Exited {
        if stopped_just_now {
            anyhow::bail!("{name} did not stop");
        }
        // Running already: nothing to do, as with docker.
        println!("{name}");
        return Ok(());
    }
    let (args, cwd) = recorded(&state)?;
    let started = super::run::start_keeper(&vm, &args, &cwd, None);
    if matches!(started, Ok(code) if code == ExitCode::SUCCESS) {
        return Ok(());
    }
    // Another start's keeper took it first (ours was refused): it runs,
    // which is what this start was for, as docker's second start says.
    if !stopped_just_now && vm.current_state()?.status != Status::Exited {
        println!("{name}");
        return Ok(());
    }
    started?;
    anyhow::bail!("{name} did not start again")
}
