//! `husk ps`: the detached appliances, as `docker ps` lists containers.

use std::process::ExitCode;
use std::time::Duration;

use crate::vms::control::{Control, Request, Response};
use crate::vms::{human_duration, now_ms, HealthStatus, Status, VmDir};

#[derive(clap::Args)]
pub struct Args {
    /// Also list appliances that have exited
    #[arg(short, long)]
    all: bool,
    /// Only their names, one a line (husk rm $(husk ps -aq))
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut rows = vec![[
        "NAME".to_string(),
        "IMAGE".into(),
        "STATUS".into(),
        "PORTS".into(),
        "ADDRESSES".into(),
    ]];
    for vm in VmDir::all()? {
        let Ok(state) = vm.current_state() else {
            continue;
        };
        if state.status == Status::Exited && !args.all {
            continue;
        }
        if args.quiet {
            println!("{}", state.name);
            continue;
        }
        let (status, addresses) = match state.status {
            Status::Starting => ("Starting".into(), String::new()),
            Status::Created => ("Created".into(), String::new()),
            Status::Running => {
                // A paused guest cannot answer.
                let guest = if state.paused { None } else { guest_info(&vm) };
                let up = guest.as_ref().map_or_else(
                    || human_duration(now_ms().saturating_sub(state.started_ms.unwrap_or(0))),
                    |g| human_duration(g.uptime_ms),
                );
                let addresses = guest
                    .map(|g| {
                        g.addresses
                            .iter()
                            .filter_map(|a| a.split_once(' ').map(|(_, addr)| addr.to_string()))
                            .filter(|a| !a.starts_with("fe80:"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                // As docker shows them: paused over the health check.
                let note = match (&state.paused, state.health.as_ref().map(|h| h.status)) {
                    (true, _) => " (Paused)",
                    (false, Some(HealthStatus::Starting)) => " (health: starting)",
                    (false, Some(HealthStatus::Healthy)) => " (healthy)",
                    (false, Some(HealthStatus::Unhealthy)) => " (unhealthy)",
                    (false, None) => "",
                };
                (format!("Up {up}{note}"), addresses)
            }
            Status::Restarting => {
                let code = state.exit_code.map_or("?".into(), |c| c.to_string());
                let ago = human_duration(now_ms().saturating_sub(state.finished_ms.unwrap_or(0)));
                (format!("Restarting ({code}) {ago} ago"), String::new())
            }
            Status::Exited => {
                let ago = state
                    .finished_ms
                    .map(|f| format!(" {} ago", human_duration(now_ms().saturating_sub(f))))
                    .unwrap_or_default();
                let code = match state.exit_code {
                    Some(c) => format!("Exited ({c}){ago}"),
                    None => "Exited (unknown: its keeper was killed)".into(),
                };
                (code, String::new())
            }
        };
        rows.push([
            state.name,
            state.image,
            status,
            state.ports.join(", "),
            addresses,
        ]);
    }
    if !args.quiet {
        let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
        super::print_columns(&rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// The guest's own view, or `None` when it does not answer in time.
pub fn guest_info(vm: &VmDir) -> Option<agent::GuestInfo> {
    let mut control = Control::connect(&vm.control(), &vm.name).ok()?;
    control.set_timeout(Some(Duration::from_secs(2)));
    match control.call(&Request::Info).ok()? {
        Response::Info { guest } => Some(guest),
        _ => None,
    }
}
