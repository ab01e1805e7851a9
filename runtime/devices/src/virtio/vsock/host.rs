//! The host side of husk's hybrid vsock, as Firecracker defined it.
//!
//! A host program reaches a guest port by connecting to the VM's Unix
//! socket (`uds`) and writing `CONNECT <port>\n`; husk answers
//! `OK <host port>\n` once the guest accepted, and the socket then carries
//! the stream. A guest reaching host port P reaches whatever listens on the
//! Unix socket `<uds>_P`.
//!
//! The VMM never opens a host path itself: its listener is bound before it
//! is jailed, and each guest connection is made by a broker outside the
//! jail, which connects to `<uds>_P` and passes the connected socket back
//! over a `SOCK_SEQPACKET` pair. The messages, all little-endian:
//! a request is `port: u32, tag: u32`; a reply is `tag: u32, errno: i32`
//! with the socket attached (`SCM_RIGHTS`) when `errno` is 0.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// What the VMM's vsock device holds of the host.
pub struct HostSide {
    /// The VM's socket and its broker; none where only husk speaks to the
    /// guest, through `presets` (a plain `husk run`'s warm start: nothing
    /// on the host knows of a socket, so it has none, and no broker). The
    /// guest's connections to any other host port are then reset, as
    /// those to a port nobody listens on are.
    pub socket: Option<Socket>,
    /// Host ports served by a socket given up front: the guest's first
    /// connection to the port gets the socket, without the broker (a
    /// restored guest's init reads this run's parameters this way).
    pub presets: Vec<(u32, UnixStream)>,
}

/// The VM's Unix socket and the broker behind it.
pub struct Socket {
    /// Host programs connect here (non-blocking; bound before the jail).
    pub listener: UnixListener,
    /// The broker that makes guest-initiated connections (non-blocking).
    pub broker: UnixDatagram,
}

/// The Unix socket a guest connection to host port `port` reaches.
pub fn port_path(uds: &Path, port: u32) -> PathBuf {
    let mut p = uds.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

pub const MSG_LEN: usize = 8;

pub fn encode_request(port: u32, tag: u32) -> [u8; MSG_LEN] {
    pair(port, tag)
}

pub fn decode_request(msg: &[u8]) -> Option<(u32, u32)> {
    unpair(msg)
}

pub fn encode_reply(tag: u32, errno: i32) -> [u8; MSG_LEN] {
    pair(tag, errno as u32)
}

/// `(tag, Ok(socket) | Err(errno))`.
pub fn decode_reply(msg: &[u8], fd: Option<OwnedFd>) -> Option<(u32, Result<OwnedFd, i32>)> {
    let (tag, errno) = unpair(msg)?;
    let result = match (errno as i32, fd) {
        (0, Some(fd)) => Ok(fd),
        // A success without a socket is the broker's mistake.
        (0, None) => Err(EPROTO),
        (e, _) => Err(e),
    };
    Some((tag, result))
}

/// Linux's "protocol error" errno.
const EPROTO: i32 = 71;

fn pair(a: u32, b: u32) -> [u8; MSG_LEN] {
    let mut m = [0u8; MSG_LEN];
    m[..4].copy_from_slice(&a.to_le_bytes());
    m[4..].copy_from_slice(&b.to_le_bytes());
    m
}

fn unpair(msg: &[u8]) -> Option<(u32, u32)> {
    let msg: &[u8; MSG_LEN] = msg.try_into().ok()?;
    let a = u32::from_le_bytes(msg[..4].try_into().ok()?);
    let b = u32::from_le_bytes(msg[4..].try_into().ok()?);
    Some((a, b))
}

/// Receives one broker reply: `Ok(None)` when none is waiting, an error
/// when the broker is gone.
pub fn recv_reply(broker: &UnixDatagram) -> io::Result<Option<(u32, Result<OwnedFd, i32>)>> {
    let mut buf = [0u8; MSG_LEN];
    match broker.recv_with_fd(&mut buf) {
        Ok((0, _)) => Err(io::ErrorKind::UnexpectedEof.into()),
        Ok((n, fd)) => decode_reply(&buf[..n], fd.map(OwnedFd::from))
            .map(Some)
            .ok_or_else(|| io::ErrorKind::InvalidData.into()),
        Err(e) => {
            let e = io::Error::from(e);
            if e.kind() == io::ErrorKind::WouldBlock {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}
