//! `husk top NAME`: the processes running in a detached appliance, as the
//! guest's kernel lists them (`docker top`), kernel threads left out.

use std::process::ExitCode;
use std::time::Duration;

use crate::vms::VmDir;

#[derive(clap::Args)]
pub struct Args {
    /// The running appliance
    name: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut conn = VmDir::find(&args.name)?.agent()?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let processes = match agent::call(&mut conn, &agent::Request::Processes)? {
        agent::Response::Processes { processes } => processes,
        agent::Response::Error { message, .. } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer from the guest agent: {other:?}"),
    };
    let mut rows = vec![[
        "USER", "PID", "PPID", "STAT", "RSS", "TIME", "ELAPSED", "COMMAND",
    ]
    .map(String::from)
    .to_vec()];
    rows.extend(processes.iter().map(|p| {
        vec![
            p.user.clone(),
            p.pid.to_string(),
            p.ppid.to_string(),
            p.state.clone(),
            super::human_size(p.rss),
            clock(p.cpu_ms / 1000),
            clock(p.elapsed_ms / 1000),
            p.command.clone(),
        ]
    }));
    super::print_columns(&rows);
    Ok(ExitCode::SUCCESS)
}

/// Seconds as `ps` shows a time: `HH:MM:SS`, with `D-` in front past a day.
fn clock(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let hms = format!(
        "{:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    );
    if days > 0 {
        format!("{days}-{hms}")
    } else {
        hms
    }
}

#[cfg(test)]
mod tests {
    use super::clock;

    #[test]
    fn times_read_as_ps_writes_them() {
        assert_eq!(clock(0), "00:00:00");
        assert_eq!(clock(3_723), "01:02:03");
        assert_eq!(clock(2 * 86_400 + 59), "2-00:00:59");
    }
}
