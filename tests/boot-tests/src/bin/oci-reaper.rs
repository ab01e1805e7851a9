//! A stand-in for conmon in the OCI runtime tests:
//!
//!   oci-reaper PID_FILE -- RUNTIME create ... ID
//!
//! Becomes a child subreaper, runs the `create` command with its own
//! stdin, stdout and stderr (which the container's process then has),
//! reads the pid the runtime wrote, and waits for that process (an orphan
//! of `create`, so a child of this one now), as conmon does. Exits with
//! its status (128 + N for signal N); 125 when `create` failed. Its own
//! words go to stderr, each line starting "oci-reaper:".

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (pid_file, command) = match args.split_first() {
        Some((p, rest)) if rest.first().map(String::as_str) == Some("--") && rest.len() > 1 => {
            (p.clone(), rest[1..].to_vec())
        }
        _ => {
            eprintln!("oci-reaper: usage: oci-reaper PID_FILE -- COMMAND...");
            return ExitCode::from(2);
        }
    };
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) changes only this process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) } != 0 {
        eprintln!(
            "oci-reaper: cannot become a subreaper: {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::from(125);
    }
    match Command::new(&command[0]).args(&command[1..]).status() {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("oci-reaper: create failed: {s}");
            return ExitCode::from(125);
        }
        Err(e) => {
            eprintln!("oci-reaper: cannot run {}: {e}", command[0]);
            return ExitCode::from(125);
        }
    }
    let pid: libc::pid_t = match std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        Some(p) => p,
        None => {
            eprintln!("oci-reaper: no pid in {pid_file}");
            return ExitCode::from(125);
        }
    };
    eprintln!("oci-reaper: pid {pid}");
    let mut raw = 0;
    // SAFETY: waitpid for one pid, writing only `raw`.
    let waited = unsafe { libc::waitpid(pid, &mut raw, 0) };
    if waited != pid {
        eprintln!(
            "oci-reaper: waitpid {pid}: {} (not reparented here?)",
            std::io::Error::last_os_error()
        );
        return ExitCode::from(125);
    }
    let status = std::process::ExitStatus::from_raw(raw);
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(s)) => 128u8.wrapping_add(s as u8),
        _ => 125,
    };
    eprintln!("oci-reaper: exited {code}");
    ExitCode::from(code)
}
