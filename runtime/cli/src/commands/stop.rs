//! `husk stop` and `husk kill`: end a detached appliance's command.

use std::process::ExitCode;

use crate::vms::control::{Control, Request, Response};
use crate::vms::{Status, VmDir};

#[derive(clap::Args)]
pub struct StopArgs {
    /// Seconds between SIGTERM and SIGKILL
    #[arg(short = 't', long = "time", default_value_t = 10)]
    time: u32,
    /// The appliances to stop
    #[arg(required = true)]
    names: Vec<String>,
}

#[derive(clap::Args)]
pub struct KillArgs {
    name: String,
    /// A signal name (TERM, SIGTERM) or number
    #[arg(default_value = "KILL")]
    signal: String,
}

/// SIGTERM to the command, SIGKILL after the grace period; the VM powers
/// off when the command ends. Stopping one that has stopped is not an
/// error (as with docker).
pub fn stop(args: StopArgs) -> anyhow::Result<ExitCode> {
    super::each_name(&args.names, |name| {
        stop_one(name, args.time)?;
        println!("{name}");
        Ok(())
    })
}

/// The keeper's control socket, or `None` once the appliance has exited.
/// A keeper that restarts its appliance (`--restart`) runs itself again
/// and binds the socket anew: it is waited for.
fn connect(vm: &VmDir, name: &str) -> anyhow::Result<Option<Control>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = vm.current_state()?.status;
        if status == Status::Exited {
            return Ok(None);
        }
        match Control::connect(&vm.control(), name) {
            Ok(c) => return Ok(Some(c)),
            Err(_)
                if matches!(status, Status::Restarting | Status::Starting)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            // It ended between the two looks.
            Err(_) if vm.current_state()?.status == Status::Exited => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

pub fn stop_one(name: &str, grace_secs: u32) -> anyhow::Result<()> {
    let vm = VmDir::find(name)?;
    let Some(mut control) = connect(&vm, name)? else {
        return Ok(());
    };
    let asked = control.call(&Request::Stop {
        grace_ms: u64::from(grace_secs) * 1000,
    });
    match asked {
        Ok(_) => {}
        // The keeper left as the VM ended: stopped all the same.
        Err(_) if vm.current_state()?.status == Status::Exited => {}
        Err(e) => return Err(e),
    }
    // The keeper answers once the VM ended, and records the end just
    // after (or, for `run -d --rm`, removes the folder): a `start` right
    // after this (`husk restart`) must find it recorded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match vm.current_state() {
            Ok(state) if state.status == Status::Exited => break,
            // Removed (--rm), or being removed now.
            Err(_) if !vm.dir.exists() => break,
            _ => {}
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{name} stopped, but its keeper did not record it within 10 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(())
}

pub fn kill(args: KillArgs) -> anyhow::Result<ExitCode> {
    let signal = parse_signal(&args.signal)?;
    let vm = VmDir::find(&args.name)?;
    let Some(mut control) = connect(&vm, &args.name)? else {
        anyhow::bail!("{} is not running", args.name);
    };
    match control.call(&Request::Kill { signal })? {
        Response::Ok => {
            println!("{}", args.name);
            Ok(ExitCode::SUCCESS)
        }
        other => anyhow::bail!("unexpected answer from the keeper: {other:?}"),
    }
}

const SIGNALS: [(&str, i32); 19] = [
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("WINCH", libc::SIGWINCH),
];

/// A signal by number, or by name with or without `SIG` (any case).
pub fn parse_signal(arg: &str) -> anyhow::Result<i32> {
    if let Ok(n) = arg.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        anyhow::bail!("{arg}: signal numbers go from 1 to 64");
    }
    let upper = arg.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .ok_or_else(|| anyhow::anyhow!("{arg:?} is not a signal husk knows (try a number, or TERM, KILL, HUP, INT, USR1...)"))
}

#[cfg(test)]
mod tests {
    use super::parse_signal;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("sigterm").unwrap(), 15);
        assert_eq!(parse_signal("SIGUSR1").unwrap(), libc::SIGUSR1);
        assert_eq!(parse_signal("hup").unwrap(), 1);
        for bad in ["0", "65", "-1", "SIGNOPE", "", "SIG"] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }
}
