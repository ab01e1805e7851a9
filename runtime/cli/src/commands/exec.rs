//! `husk exec`: run a command in a detached appliance, with its output
//! here and its exit status as husk's own, as `docker exec` does.
//!
//! The keeper hands over connections to the guest agent; the command's
//! streams each get one, so its bytes go straight between this process
//! and the guest.

use anyhow::Context;
use std::io::{self, IsTerminal, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use agent::{Process, Request, Response, Stream, WindowSize};

use crate::vms::control::Control;
use crate::vms::{Status, VmDir};

/// Exit status when the command could not be started for a reason other
/// than its own (docker exec's 126/127 come from the guest).
const EXIT_EXEC_FAILED: u8 = 125;

#[derive(clap::Args)]
pub struct Args {
    /// Keep stdin open and pass it to the command
    #[arg(short, long)]
    interactive: bool,
    /// Give the command a terminal
    #[arg(short, long)]
    tty: bool,
    /// Run the command in the background: start it and return (its output
    /// is discarded, as docker exec -d does)
    #[arg(short, long, conflicts_with_all = ["interactive", "tty"])]
    detach: bool,
    /// Set an environment variable for the command; KEY alone takes
    /// husk's own value of KEY (left out when husk has none)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE|KEY")]
    env: Vec<String>,
    /// Read environment variables from a file: a KEY=VALUE or KEY per line,
    /// blank lines and lines starting with # skipped (before -e's)
    #[arg(long, value_name = "FILE")]
    env_file: Vec<std::path::PathBuf>,
    /// Run as this user (user, uid, user:group or uid:gid)
    #[arg(short, long)]
    user: Option<String>,
    /// Working directory in the guest
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    name: String,
    /// The command and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let vm = VmDir::find(&args.name)?;
    if vm.current_state()?.status == Status::Exited {
        anyhow::bail!("{} is not running (husk ps -a)", args.name);
    }
    let env = super::env::gather(&args.env, &args.env_file)?;
    let tty = args.tty && io::stdin().is_terminal();
    if args.tty && !tty {
        eprintln!("husk: -t: stdin is not a terminal; running without one");
    }
    let process = Process {
        argv: args.command.clone(),
        env,
        cwd: args.workdir.clone(),
        user: args.user.clone(),
        tty,
        size: None,
        stdin: args.interactive,
        detached: args.detach,
        ..Process::default()
    };
    exec_process(&vm, process)
}

/// Runs `process` in `vm` with this process's streams (its terminal, when
/// `process.tty`: stdin must then be one) and returns its exit status.
pub fn exec_process(vm: &VmDir, mut process: Process) -> anyhow::Result<ExitCode> {
    let tty = process.tty;
    if tty {
        block_sigwinch();
        process.size = process.size.or_else(window_size);
    }
    let interactive = process.stdin;
    let process_detached = process.detached;
    let mut control = Control::connect(&vm.control(), &vm.name)?;
    let mut main = control.agent()?;
    let started = agent::call(&mut main, &Request::Start { process }).with_context(|| {
        format!(
            "{}'s guest agent did not take the command (is {} stopping?)",
            vm.name, vm.name
        )
    })?;
    let id = match started {
        Response::Started { id, .. } => id,
        Response::Error {
            kind: agent::ErrorKind::StartFailed { status },
            message,
        } => {
            eprintln!("husk: {message}");
            return Ok(ExitCode::from(status));
        }
        Response::Error { message, .. } => {
            eprintln!("husk: {message}");
            return Ok(ExitCode::from(EXIT_EXEC_FAILED));
        }
        other => anyhow::bail!("unexpected answer from the guest agent: {other:?}"),
    };
    if process_detached {
        return Ok(ExitCode::SUCCESS);
    }
    let mut attach = |stream: Stream| -> anyhow::Result<UnixStream> {
        let mut conn = control.agent()?;
        match agent::call(&mut conn, &Request::Attach { id, stream })? {
            Response::Ok => Ok(conn),
            Response::Error { message, .. } => anyhow::bail!("attach: {message}"),
            other => anyhow::bail!("unexpected answer from the guest agent: {other:?}"),
        }
    };
    let mut outputs = Vec::new();
    let mut raw = None;
    if tty {
        let conn = attach(Stream::Tty)?;
        raw = Some(RawMode::enter());
        if interactive {
            pump_stdin(conn.try_clone()?);
        }
        outputs.push(pump_out(conn, io::stdout()));
        forward_resizes(control, id);
    } else {
        if interactive {
            pump_stdin(attach(Stream::Stdin)?);
        }
        outputs.push(pump_out(attach(Stream::Stdout)?, io::stdout()));
        outputs.push(pump_out(attach(Stream::Stderr)?, io::stderr()));
    }
    main.set_read_timeout(None)?;
    let status = match agent::call(&mut main, &Request::Wait { id }) {
        Ok(Response::Exited { status }) => Some(status),
        Ok(_) | Err(_) => None,
    };
    for o in outputs {
        let _ = o.join();
    }
    drop(raw);
    match status {
        Some(s) => Ok(ExitCode::from(s.shell_code())),
        None => {
            eprintln!("husk: lost the command's status (did {} stop?)", vm.name);
            Ok(ExitCode::from(EXIT_EXEC_FAILED))
        }
    }
}

/// Copies this process's stdin to the command; at its end, the command's
/// stdin ends too. Not joined: it may sit in a read of the terminal (on
/// a descriptor of its own, not holding std's stdin lock, which the
/// terminal's restore takes).
pub(crate) fn pump_stdin(conn: UnixStream) {
    let Ok(stdin) = io::stdin().as_fd().try_clone_to_owned() else {
        let _ = conn.shutdown(Shutdown::Write);
        return;
    };
    std::thread::spawn(move || copy_in(std::fs::File::from(stdin), conn));
}

/// Copies `from` into a process's stdin stream `conn` until its end, then
/// ends the stream (the process reads the end of its input).
pub(crate) fn copy_in(mut from: impl Read, mut conn: UnixStream) {
    let mut buf = [0u8; 16 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}

/// Copies the command's output from `conn` to `to`, each read passed on
/// at once, until its end; the thread doing it.
pub(crate) fn pump_out(
    mut conn: UnixStream,
    mut to: impl Write + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 << 10];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to.write_all(&buf[..n]).and_then(|_| to.flush()).is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// This terminal's size.
pub(crate) fn window_size() -> Option<WindowSize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize to a valid pointer.
    let ret = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) };
    (ret == 0 && ws.ws_row > 0).then_some(WindowSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

pub(crate) fn sigwinch() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, set up by sigemptyset/sigaddset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGWINCH);
        set
    }
}

/// Blocks SIGWINCH in this thread, before any other starts: every thread
/// inherits the mask, so the signal waits for [`forward_resizes`]'s sigwait.
pub(crate) fn block_sigwinch() {
    let set = sigwinch();
    // SAFETY: a valid set; the old mask is not wanted.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Passes each change of this terminal's size to the command's.
fn forward_resizes(mut control: Control, id: u32) {
    let set = sigwinch();
    std::thread::spawn(move || {
        let mut conn: Option<UnixStream> = None;
        loop {
            let mut signal = 0;
            // SAFETY: set is a valid sigset_t, signal a valid out-pointer.
            if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                return;
            }
            let Some(size) = window_size() else { continue };
            if conn.is_none() {
                conn = control.agent().ok();
            }
            let Some(c) = conn.as_mut() else { return };
            if agent::call(c, &Request::Resize { id, size }).is_err() {
                conn = None;
            }
        }
    });
}

/// Raw mode on this terminal for as long as it lives; the settings it
/// found are put back.
pub(crate) struct RawMode(libc::termios);

impl RawMode {
    pub(crate) fn enter() -> Option<Self> {
        // SAFETY: termios is plain data; tcgetattr fills it from fd 0.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: a valid termios out-pointer.
        if unsafe { libc::tcgetattr(0, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: a valid termios, applied to fd 0.
        (unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw) } == 0).then_some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: the settings read in enter(), applied to fd 0.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.0) };
    }
}
