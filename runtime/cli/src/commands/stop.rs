//! `husk stop` and `husk kill`: end a detached appliance's command.

use std::process::ExitCode;

use crate::vms::control::{Control, Request, Response};
use crate::vms::{Status, VmDir};

#[derive(clap::Args)]
pub struct StopArgs {
    /// Seconds between the stop signal and SIGKILL (default: the
    /// appliance's --stop-timeout, else 10)
    #[arg(short = 't', long = "time")]
    time: Option<u32>,
    /// The signal to send first (default: the appliance's stop signal,
    /// else TERM)
    #[arg(short = 's', long = "signal", value_name = "SIGNAL")]
    signal: Option<appliance_spec::Signal>,
    /// The appliances to stop
    #[arg(required = true)]
    names: Vec<String>,
}

#[derive(clap::Args)]
pub struct KillArgs {
    /// The signal: a name (TERM, SIGTERM) or number, as docker kill -s
    #[arg(short, long, default_value = "KILL")]
    signal: String,
    #[arg(required = true)]
    names: Vec<String>,
}

/// The stop signal to the command, SIGKILL after the grace period; the VM
/// powers off when the command ends. Stopping one that has stopped is not
/// an error (as with docker).
pub fn stop(args: StopArgs) -> anyhow::Result<ExitCode> {
    super::each_name(&args.names, |name| {
        stop_one(name, args.time, args.signal.map(|s| s.0))?;
        println!("{name}");
        Ok(())
    })
}

/// Seconds `husk stop` waits for the command when neither it nor the
/// appliance says (docker's).
const DEFAULT_STOP_TIMEOUT: u32 = 10;

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

/// Sends `request` to the keeper of `vm`; `None` once the appliance has
/// exited. A keeper that restarts its appliance runs itself again, and a
/// request that reached it just then is closed unanswered (the keeper
/// takes none while it goes): it is sent again to the keeper's next run.
fn ask(vm: &VmDir, name: &str, request: &Request) -> anyhow::Result<Option<Response>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let Some(mut control) = connect(vm, name)? else {
            return Ok(None);
        };
        match control.call(request) {
            Ok(r) => return Ok(Some(r)),
            Err(e) => match vm.current_state()?.status {
                // The keeper left as the VM ended.
                Status::Exited => return Ok(None),
                Status::Restarting | Status::Starting if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                _ => return Err(e),
            },
        }
    }
}

/// Stops `name`: `signal` (default: its stop signal) to its command,
/// SIGKILL after `grace_secs` (default: its stop timeout, else 10 s).
pub fn stop_one(name: &str, grace_secs: Option<u32>, signal: Option<i32>) -> anyhow::Result<()> {
    let vm = VmDir::find(name)?;
    let grace_secs = match grace_secs {
        Some(s) => s,
        None => vm
            .current_state()?
            .stop_timeout
            .unwrap_or(DEFAULT_STOP_TIMEOUT),
    };
    let stop = Request::Stop {
        grace_ms: u64::from(grace_secs) * 1000,
        signal,
    };
    // Answered, or exited meanwhile: stopped all the same.
    ask(&vm, name, &stop)?;
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
    // A signal where a name goes (husk kill NAME TERM, as husk once took
    // it) is refused before anything is signalled: not a KILL meant as
    // another signal.
    if let Some(word) = args
        .names
        .iter()
        .find(|n| parse_signal(n).is_ok() && VmDir::find(n).is_err())
    {
        anyhow::bail!("{word} is a signal, not an appliance: write husk kill -s {word} NAME");
    }
    super::each_name(&args.names, |name| {
        let vm = VmDir::find(name)?;
        match ask(&vm, name, &Request::Kill { signal })? {
            None => anyhow::bail!("{name} is not running"),
            Some(Response::Ok) => {
                println!("{name}");
                Ok(())
            }
            Some(other) => anyhow::bail!("unexpected answer from the keeper: {other:?}"),
        }
    })
}

/// A signal by number, or by name with or without `SIG` (any case).
pub fn parse_signal(arg: &str) -> anyhow::Result<i32> {
    arg.parse::<appliance_spec::Signal>()
        .map(|s| s.0)
        .map_err(|e| anyhow::anyhow!(e))
}

#[cfg(test)]
mod tests {
    use super::parse_signal;

    #[test]
    fn signal_names_agree_with_the_c_librarys_numbers() {
        let known = [
            ("HUP", libc::SIGHUP),
            ("INT", libc::SIGINT),
            ("QUIT", libc::SIGQUIT),
            ("KILL", libc::SIGKILL),
            ("USR1", libc::SIGUSR1),
            ("USR2", libc::SIGUSR2),
            ("PIPE", libc::SIGPIPE),
            ("TERM", libc::SIGTERM),
            ("CHLD", libc::SIGCHLD),
            ("CONT", libc::SIGCONT),
            ("STOP", libc::SIGSTOP),
            ("WINCH", libc::SIGWINCH),
            ("PWR", libc::SIGPWR),
            ("SYS", libc::SIGSYS),
            ("RTMIN", libc::SIGRTMIN()),
            ("RTMAX", libc::SIGRTMAX()),
        ];
        for (name, number) in known {
            assert_eq!(parse_signal(name).unwrap(), number, "{name}");
        }
        let err = parse_signal("SIGNOPE").unwrap_err().to_string();
        assert!(err.contains("is not a signal"), "{err}");
    }
}
