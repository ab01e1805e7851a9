//! A process's stdio as containerd hands it over (FIFO paths, `file://`
//! or `binary://` URIs), relayed to and from the guest agent's streams of
//! the process: one agent connection per stream, one thread per direction.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

use anyhow::Context;

use super::logger::{self, BinaryUri, Logger};
use super::pod::Pod;
use crate::commands::exec::{copy_in, pump_out};
use agent::{Request, Response, Stream};

/// Where a process's streams go, as containerd named them ("" for none).
#[derive(Debug, Clone, Default)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
    /// Whose they are, for a logging binary: the container's or the
    /// exec's id, and containerd's namespace.
    pub id: String,
    pub namespace: String,
}

/// The threads copying a process's output; joined before its exit is
/// reported, so its last bytes arrive before containerd hears it ended.
/// Then a logging binary behind them is waited for.
pub struct Relays {
    threads: Vec<JoinHandle<()>>,
    logger: Option<Logger>,
}

impl Relays {
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
        if let Some(mut logger) = self.logger {
            let _ = logger.finish();
        }
    }
}

type Output = Box<dyn Write + Send>;

impl Stdio {
    /// Refuses, before anything starts, output URIs that cannot work:
    /// a logging binary that is not there, a relative log file.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(uri) = BinaryUri::parse(&self.stdout) {
            uri?.check()?;
        }
        // A log file's folder is made now, as runc's shim makes it.
        for target in [&self.stdout, &self.stderr] {
            if let Some(path) = logger::file_target(target) {
                path?;
            }
        }
        Ok(())
    }

    /// Opens the outputs now (a FIFO's reader is containerd, already
    /// there) and attaches process `id`'s streams through `pod`.
    pub fn attach(&self, pod: &Pod, id: u32) -> anyhow::Result<Relays> {
        let (stdout, stderr, logger) = self.outputs()?;
        if self.terminal {
            let conn = attach(pod, id, Stream::Tty)?;
            if !self.stdin.is_empty() {
                let to = conn.try_clone()?;
                input(self.stdin.clone(), to);
            }
            return Ok(Relays {
                threads: vec![pump_out(conn, stdout)],
                logger,
            });
        }
        // Each attach is a round trip to the guest: all three at once.
        let mut wanted = vec![Stream::Stdout, Stream::Stderr];
        if !self.stdin.is_empty() {
            wanted.push(Stream::Stdin);
        }
        let mut conns = std::thread::scope(|s| {
            let attaching: Vec<_> = wanted
                .iter()
                .map(|&stream| s.spawn(move || attach(pod, id, stream)))
                .collect();
            attaching
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("an attach thread panicked")))
                })
                .collect::<anyhow::Result<Vec<UnixStream>>>()
        })?
        .into_iter();
        let (Some(out), Some(err)) = (conns.next(), conns.next()) else {
            anyhow::bail!("the process's output streams were not attached");
        };
        if let Some(conn) = conns.next() {
            input(self.stdin.clone(), conn);
        }
        Ok(Relays {
            threads: vec![pump_out(out, stdout), pump_out(err, stderr)],
            logger,
        })
    }

    /// Where the output and the error output go. A logging binary, as
    /// runc's shim reads it, takes both when the output names one.
    fn outputs(&self) -> anyhow::Result<(Output, Output, Option<Logger>)> {
        if let Some(uri) = BinaryUri::parse(&self.stdout) {
            let (logger, out, err) = Logger::start(&uri?, &self.id, &self.namespace)?;
            return Ok((Box::new(out), Box::new(err), Some(logger)));
        }
        Ok((output(&self.stdout)?, output(&self.stderr)?, None))
    }
}

/// A connection to the agent made one of process `id`'s streams.
fn attach(pod: &Pod, id: u32, stream: Stream) -> anyhow::Result<UnixStream> {
    let mut conn = pod.agent()?;
    match agent::call(&mut conn, &Request::Attach { id, stream })? {
        Response::Ok => Ok(conn),
        Response::Error { message, .. } => anyhow::bail!("attach {stream:?}: {message}"),
        other => anyhow::bail!("attach {stream:?}: unexpected answer {other:?}"),
    }
}

/// Where output goes: containerd's FIFO, a `file://` file, or nowhere.
fn output(target: &str) -> anyhow::Result<Output> {
    if target.is_empty() {
        return Ok(Box::new(io::sink()));
    }
    if let Some(path) = logger::file_target(target) {
        let path = path?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open the log file {}", path.display()))?;
        return Ok(Box::new(file));
    }
    if target.starts_with("binary://") {
        anyhow::bail!("{target}: a logging binary takes the output, not only the error output");
    }
    // Not blocking: with nobody reading (containerd gone), the output is
    // dropped rather than the shim hanging in open.
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(target)
    {
        Ok(fifo) => {
            blocking(&fifo)?;
            Ok(Box::new(fifo))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(Box::new(io::sink())),
        Err(e) => Err(e).with_context(|| format!("cannot open {target}")),
    }
}

fn blocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor `file` owns; no memory passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Copies the stdin FIFO into `to` until its writer closes it, then ends
/// the process's input. The open waits for the writer (containerd opens
/// it when someone attaches); the thread is not joined.
fn input(path: String, to: UnixStream) {
    std::thread::spawn(move || match File::open(&path) {
        Ok(from) => copy_in(from, to),
        Err(_) => {
            let _ = to.shutdown(Shutdown::Write);
        }
    });
}
