//! The control socket of a detached VM: what the CLI (and the OCI
//! runtime) asks the keeper. Frames as the agent protocol's
//! (`agent::encode`/`agent::read`); one request, one answer, in order.
//!
//! [`Request::Agent`] is answered with a connection to the guest agent,
//! passed as a file descriptor (SCM_RIGHTS): the caller then speaks the
//! agent protocol itself (start, attach, wait), so a process's bytes never
//! pass through the keeper.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// A new connection to the guest agent. Answer: [`Response::Ok`]
    /// carrying the connection.
    Agent,
    /// The guest's own view (addresses, uptime). Answer: [`Response::Info`].
    Info,
    /// `signal` (default: the appliance's stop signal, else SIGTERM) to
    /// the command, SIGKILL after `grace_ms`, the VM powered off. Answer:
    /// [`Response::Exited`] once the VM is gone.
    Stop {
        grace_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
    },
    /// Starts the command of a VM booted to hold it (husk-runtime's
    /// `start`); the keeper relays its streams to its own. Answer:
    /// [`Response::Ok`].
    Start { process: Box<agent::Process> },
    /// A signal to the command (to a VM that holds its command: the end
    /// of the VM). Answer: [`Response::Ok`].
    Kill { signal: i32 },
    /// Waits for the VM to end. Answer: [`Response::Exited`].
    Wait,
    /// Snapshots the running VM into the new folder `dir` (paused, saved,
    /// resumed). Answer: [`Response::Ok`] once it is whole.
    Snapshot { dir: std::path::PathBuf },
    /// Stops every vCPU (`paused`) or lets them run on (`husk pause`,
    /// `husk unpause`). Answer: [`Response::Ok`] once it is done.
    Pause { paused: bool },
    /// `husk attach`: the connection becomes the console's stream, its
    /// output from now on and (`stdin`, for an appliance run with `-i`)
    /// its input, until the VM ends. Answer: [`Response::Attached`].
    /// `since_ms`: the console's output since then (ms since the epoch)
    /// first, from the log (`husk start -a`: all of the run just started).
    Attach {
        stdin: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since_ms: Option<u64>,
    },
    /// `husk network connect` of the running VM: joins `network` (known
    /// on it by the VM's name and `aliases`, at `ip` when given), puts an interface on it into
    /// an empty slot of the VM, and has the guest take it. Answer:
    /// [`Response::Ok`] once the guest has its address.
    Connect {
        network: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        aliases: Vec<String>,
        /// Its address there (`--ip`), or none at all.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ip: Option<std::net::Ipv4Addr>,
    },
    /// `husk network disconnect` of the running VM from a network it was
    /// connected to while it ran: the guest lets the interface go and the
    /// VMM takes it out. Answer: [`Response::Ok`].
    Disconnect { network: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "re", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    Ok,
    Info {
        guest: agent::GuestInfo,
    },
    /// The VM ended; the command's status when known.
    Exited {
        code: Option<u8>,
    },
    Error {
        message: String,
    },
    /// The connection is the console's stream from here on; `stdin`:
    /// what is sent on it reaches the console's input.
    Attached {
        stdin: bool,
    },
}

/// A connection to a VM's keeper.
pub struct Control {
    conn: UnixStream,
}

impl Control {
    pub fn connect(socket: &Path, name: &str) -> anyhow::Result<Self> {
        let conn = UnixStream::connect(socket).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                anyhow::anyhow!("{name} is not running (see husk ps -a)")
            }
            _ => anyhow::Error::from(e).context(format!("cannot reach {name}'s keeper")),
        })?;
        Ok(Control { conn })
    }

    pub fn set_timeout(&self, t: Option<Duration>) {
        let _ = self.conn.set_read_timeout(t);
    }

    /// Sends `request`; its answer, an error answer made an error.
    pub fn call(&mut self, request: &Request) -> anyhow::Result<Response> {
        agent::write(&mut self.conn, request)?;
        match agent::read::<Response>(&mut self.conn)? {
            Some(Response::Error { message }) => Err(anyhow::anyhow!("{message}")),
            Some(r) => Ok(r),
            None => anyhow::bail!("the keeper closed the connection"),
        }
    }

    /// The connection itself (after a [`Request::Attach`]: the console's
    /// stream).
    pub fn into_stream(self) -> UnixStream {
        self.conn
    }

    /// A connection to the guest agent.
    pub fn agent(&mut self) -> anyhow::Result<UnixStream> {
        agent::write(&mut self.conn, &Request::Agent)?;
        // The descriptor rides on the frame's first bytes.
        let mut len = [0u8; 4];
        let (n, fd) = self.conn.recv_with_fd(&mut len).context("control socket")?;
        if n == 0 {
            anyhow::bail!("the keeper closed the connection");
        }
        self.conn.read_exact(&mut len[n..])?;
        let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
        if body.len() > agent::MAX_FRAME {
            anyhow::bail!("the keeper sent a frame too large");
        }
        self.conn.read_exact(&mut body)?;
        match agent::decode::<Response>(&body)? {
            Response::Ok => {
                let fd = fd.context("the keeper sent no agent connection")?;
                Ok(UnixStream::from(std::os::fd::OwnedFd::from(fd)))
            }
            Response::Error { message } => Err(anyhow::anyhow!("{message}")),
            other => anyhow::bail!("unexpected answer from the keeper: {other:?}"),
        }
    }
}

/// The keeper's side: an answer with a descriptor.
pub fn send_with_fd(conn: &UnixStream, response: &Response, fd: &impl AsRawFd) -> io::Result<()> {
    let frame = agent::encode(response);
    let sent = conn
        .send_with_fd(&frame[..], fd.as_raw_fd())
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    if sent < frame.len() {
        std::io::Write::write_all(&mut &*conn, &frame[sent..])?;
    }
    Ok(())
}
