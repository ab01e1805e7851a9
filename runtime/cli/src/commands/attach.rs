//! `husk attach`: the console of a running detached appliance here, as
//! `docker attach` does: its output from now on, and what is typed to
//! its input (an appliance run with `-i`). Ctrl-P Ctrl-Q (or
//! `--detach-keys`) detaches and leaves it running; when it stops,
//! attach exits with its status.

use std::io::{IsTerminal, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::vms::control::{Control, Request, Response};
use crate::vms::{Status, VmDir};

#[derive(clap::Args)]
pub struct Args {
    /// Send nothing to its input
    #[arg(long)]
    no_stdin: bool,
    /// The keys that detach, as docker's: letters or ctrl-LETTER,
    /// comma-separated
    #[arg(long, default_value = "ctrl-p,ctrl-q", value_name = "KEYS")]
    detach_keys: String,
    name: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let keys = detach_keys(&args.detach_keys)?;
    let name = &args.name;
    let vm = VmDir::find(name)?;
    if vm.current_state()?.status != Status::Running {
        anyhow::bail!("{name} is not running (husk start {name} starts it)");
    }
    attach_to(&vm, !args.no_stdin, &keys, None)
}

/// `husk start -a`: the console of the run it just started, from `since_ms`
/// (before the start) on, so none of its output is missed, also when it
/// has ended already; exits with its status.
pub fn attach_since(
    vm: &VmDir,
    stdin: bool,
    detach: &str,
    since_ms: u64,
) -> anyhow::Result<ExitCode> {
    let keys = detach_keys(detach)?;
    let attached = attach_to(vm, stdin, &keys, Some(since_ms));
    // Its keeper was gone before it could attach (the run was short): the
    // log and the recorded status tell all.
    if attached.is_err() && vm.current_state()?.status == Status::Exited {
        return replay_ended(vm, since_ms);
    }
    attached
}

/// A run that has ended: its console since `since_ms`, from the log, and
/// the status its keeper recorded.
pub fn replay_ended(vm: &VmDir, since_ms: u64) -> anyhow::Result<ExitCode> {
    let select = crate::vms::log::Select {
        since: Some(i128::from(since_ms) * 1_000_000),
        ..Default::default()
    };
    let (text, _) = crate::vms::log::read(&vm.log(), &select)?;
    std::io::stdout().write_all(&text)?;
    Ok(exit_code(&vm.name, vm.current_state()?.exit_code))
}

fn attach_to(
    vm: &VmDir,
    want_stdin: bool,
    keys: &[u8],
    since_ms: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let name = &vm.name;
    let keys = keys.to_vec();
    // Its status, asked for first on a connection of its own: answered
    // when the VM ends, whatever the console says meanwhile.
    let mut waiter = Control::connect(&vm.control(), name)?;
    let status = std::thread::spawn(move || match waiter.call(&Request::Wait) {
        Ok(Response::Exited { code }) => code,
        _ => None,
    });
    let mut control = Control::connect(&vm.control(), name)?;
    let stdin = match control.call(&Request::Attach {
        stdin: want_stdin,
        since_ms,
    })? {
        Response::Attached { stdin } => stdin,
        other => anyhow::bail!("unexpected answer from {name}'s keeper: {other:?}"),
    };
    if want_stdin && !stdin {
        eprintln!("husk: {name} was not run with -i: its console takes no input here");
    }
    let conn = control.into_stream();
    let detached = Arc::new(AtomicBool::new(false));
    let raw = (stdin && std::io::stdin().is_terminal())
        .then(super::exec::RawMode::enter)
        .flatten();
    if stdin {
        let (conn, detached) = (conn.try_clone()?, Arc::clone(&detached));
        std::thread::spawn(move || send_input(conn, &keys, &detached));
    }
    let mut out = std::io::stdout();
    let mut buf = [0u8; 64 << 10];
    let mut conn = conn;
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
        }
    }
    drop(raw);
    if detached.load(Ordering::SeqCst) {
        eprintln!("husk: detached from {name}; it runs on (husk attach {name} again)");
        return Ok(ExitCode::SUCCESS);
    }
    let code = status.join().ok().flatten().or_else(|| {
        // The keeper is gone: what it recorded.
        vm.current_state().ok().and_then(|s| s.exit_code)
    });
    Ok(exit_code(name, code))
}

fn exit_code(name: &str, code: Option<u8>) -> ExitCode {
    match code {
        Some(c) => ExitCode::from(c),
        None => {
            eprintln!("husk: {name} stopped; its exit status is unknown");
            ExitCode::FAILURE
        }
    }
}

/// This terminal's input to the console, until the detach keys (then the
/// stream is shut, which ends the output) or the end of the input (then
/// the output goes on).
fn send_input(mut conn: UnixStream, keys: &[u8], detached: &AtomicBool) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 4096];
    let mut scan = Scanner { keys, matched: 0 };
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let (send, detach) = scan.feed(&buf[..n]);
        if detach {
            detached.store(true, Ordering::SeqCst);
            let _ = conn.write_all(&send);
            let _ = conn.shutdown(Shutdown::Both);
            return;
        }
        if conn.write_all(&send).is_err() {
            return;
        }
    }
}

/// Finds the detach keys in the input, across reads.
struct Scanner<'a> {
    keys: &'a [u8],
    /// How many of the keys the input ended with so far.
    matched: usize,
}

impl Scanner<'_> {
    /// What of `input` goes to the console, and whether the keys were
    /// typed (what follows them is dropped). Keys of a sequence begun and
    /// then broken were input after all and go too.
    fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut send = Vec::with_capacity(input.len() + self.keys.len());
        for &b in input {
            if b == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    return (send, true);
                }
                continue;
            }
            send.extend_from_slice(&self.keys[..self.matched]);
            self.matched = usize::from(b == self.keys[0]);
            if self.matched == 0 {
                send.push(b);
            }
        }
        (send, false)
    }
}

/// docker's `--detach-keys`: `ctrl-p,ctrl-q`, `a,ctrl-@`.
fn detach_keys(spec: &str) -> anyhow::Result<Vec<u8>> {
    let bad = || {
        anyhow::anyhow!(
            "--detach-keys {spec:?}: give keys as LETTER or ctrl-KEY (KEY: a letter, @, [, \\, ], ^ or _), \
             comma-separated"
        )
    };
    spec.split(',')
        .map(|k| {
            let k = k.trim();
            match k.strip_prefix("ctrl-") {
                Some(c) if c.len() == 1 => {
                    let c = c.as_bytes()[0].to_ascii_lowercase();
                    match c {
                        b'a'..=b'z' => Ok(c - b'a' + 1),
                        b'@' => Ok(0),
                        b'[' | b'\\' | b']' | b'^' | b'_' => Ok(c - b'@'),
                        _ => Err(bad()),
                    }
                }
                None if k.len() == 1 && k.is_ascii() => Ok(k.as_bytes()[0]),
                _ => Err(bad()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_as_docker_writes_them() {
        assert_eq!(detach_keys("ctrl-p,ctrl-q").unwrap(), [0x10, 0x11]);
        assert_eq!(detach_keys("a,ctrl-@,ctrl-_").unwrap(), [b'a', 0, 0x1f]);
        for bad in ["", "ctrl-", "ctrl-pq", "shift-a", "ab", "ctrl-1"] {
            assert!(detach_keys(bad).is_err(), "{bad:?}");
        }
    }

    /// What reaches the console of what is typed: everything but the
    /// detach keys, a begun and broken sequence included, across reads.
    #[test]
    fn input_stops_at_the_detach_keys_and_keeps_a_broken_sequence() {
        let keys = [0x10, 0x11];
        let mut scan = Scanner {
            keys: &keys,
            matched: 0,
        };
        assert_eq!(scan.feed(b"ls\n"), (b"ls\n".to_vec(), false));
        // Ctrl-P then x: both are input.
        assert_eq!(scan.feed(b"a\x10x"), (b"a\x10x".to_vec(), false));
        // Ctrl-P Ctrl-P Ctrl-Q: the first Ctrl-P is input, then detach.
        assert_eq!(scan.feed(b"\x10\x10\x11tail"), (b"\x10".to_vec(), true));
        // Split across reads.
        let mut scan = Scanner {
            keys: &keys,
            matched: 0,
        };
        assert_eq!(scan.feed(b"echo\x10"), (b"echo".to_vec(), false));
        assert_eq!(scan.feed(b"\x11"), (Vec::new(), true));
    }
}
