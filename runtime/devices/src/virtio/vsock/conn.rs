//! One vsock stream between a guest port and a host Unix socket: its
//! state, the credit both sides give each other, and the bytes on their
//! way to the host.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::packet::{SHUTDOWN_RCV, SHUTDOWN_SEND};

/// The receive buffer husk advertises to the guest for each stream: the
/// most guest bytes it ever holds for one host peer that is slow to read.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Tell the guest about freed buffer once this much was forwarded since
/// the last time it heard, so a guest that only sends never stalls.
const CREDIT_THRESHOLD: u32 = BUF_ALLOC / 4;
/// The longest `CONNECT <port>\n` line a host program may send.
pub const MAX_LINE: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// A host program connected to the VM's socket; its `CONNECT` line is
    /// being read.
    HostHandshake,
    /// The guest was asked to accept a host program's connection.
    HostRequest,
    /// The guest asked for a host port; the broker is connecting.
    Connecting,
    Established,
}

/// Packets a connection owes the guest, sent in this order before data.
pub mod owed {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const CREDIT_UPDATE: u8 = 4;
    pub const SHUTDOWN: u8 = 8;
}

pub struct Conn {
    pub state: ConnState,
    /// None while the broker connects.
    pub stream: Option<UnixStream>,
    /// The vsock address: husk's (host) port and the guest's port.
    pub host_port: u32,
    pub guest_port: u32,
    /// The bytes of the `CONNECT` line read so far.
    pub line: Vec<u8>,
    /// The host socket may have bytes to read (edge-triggered: true until
    /// a read would block).
    pub readable: bool,
    /// The host program shut its sending side, or closed the socket.
    pub host_eof: bool,
    pub host_hup: bool,
    /// The `SHUTDOWN_*` flags the guest sent.
    pub guest_shutdown: u32,
    /// The guest's receive buffer and how much of it it has consumed.
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    pub rx_cnt: u32,
    /// Bytes received from the guest, and written to the host socket.
    pub recv_cnt: u32,
    pub fwd_cnt: u32,
    /// `fwd_cnt` as the guest last heard it.
    pub fwd_told: u32,
    /// Guest bytes the host socket did not take yet (at most
    /// [`BUF_ALLOC`], which the guest's credit guarantees).
    pub to_host: VecDeque<u8>,
    /// [`owed`] flags.
    pub owed: u8,
    /// In the device's queue of connections with packets for the guest.
    pub queued: bool,
}

/// What happened when guest bytes were written towards the host.
#[derive(Debug, PartialEq, Eq)]
pub enum Forward {
    Ok,
    /// The guest sent more than the credit it was given.
    OverCredit,
    /// The host socket is gone.
    Failed,
}

impl Conn {
    pub fn new(
        state: ConnState,
        stream: Option<UnixStream>,
        host_port: u32,
        guest_port: u32,
    ) -> Self {
        Conn {
            state,
            stream,
            host_port,
            guest_port,
            line: Vec::new(),
            readable: false,
            host_eof: false,
            host_hup: false,
            guest_shutdown: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            recv_cnt: 0,
            fwd_cnt: 0,
            fwd_told: 0,
            to_host: VecDeque::new(),
            owed: 0,
            queued: false,
        }
    }

    /// How many bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether host bytes could go to the guest now.
    pub fn can_send_data(&self) -> bool {
        self.state == ConnState::Established
            && self.readable
            && !self.host_eof
            && self.guest_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// Whether the connection has a packet for the guest.
    pub fn has_packet(&self) -> bool {
        self.owed != 0 || self.can_send_data()
    }

    /// Reads host bytes for the guest into `buf`, within the guest's
    /// credit. `Ok(0)` is the host's end of stream (noted here).
    pub fn read_host(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.peer_credit() as usize);
        let Some(stream) = &mut self.stream else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        match stream.read(&mut buf[..n]) {
            Ok(0) => {
                self.host_eof = true;
                self.owed |= owed::SHUTDOWN;
                Ok(0)
            }
            Ok(n) => {
                self.rx_cnt = self.rx_cnt.wrapping_add(n as u32);
                Ok(n)
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::WouldBlock {
                    self.readable = false;
                }
                Err(e)
            }
        }
    }

    /// The flags of the `SHUTDOWN` husk owes the guest: the host sends no
    /// more, and if it closed the socket, receives no more either.
    pub fn shutdown_flags(&self) -> u32 {
        if self.host_hup {
            SHUTDOWN_SEND | SHUTDOWN_RCV
        } else {
            SHUTDOWN_SEND
        }
    }

    /// Takes `data` from the guest towards the host: written now, or held
    /// until the host socket is writable.
    pub fn forward(&mut self, data: &[u8]) -> Forward {
        let in_flight = self.recv_cnt.wrapping_sub(self.fwd_cnt);
        if u64::from(in_flight) + data.len() as u64 > u64::from(BUF_ALLOC) {
            return Forward::OverCredit;
        }
        self.recv_cnt = self.recv_cnt.wrapping_add(data.len() as u32);
        let mut rest = data;
        if self.to_host.is_empty() {
            let Some(stream) = &mut self.stream else {
                return Forward::Failed;
            };
            match send(stream, data) {
                Ok(n) => {
                    self.forwarded(n);
                    rest = &data[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Forward::Failed,
            }
        }
        self.to_host.extend(rest);
        Forward::Ok
    }

    /// Writes held guest bytes to the host socket until it would block.
    pub fn flush(&mut self) -> Forward {
        let Some(stream) = &mut self.stream else {
            return Forward::Ok;
        };
        let mut written = 0;
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match send(stream, front) {
                Ok(n) => {
                    self.to_host.drain(..n);
                    written += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return Forward::Failed,
            }
        }
        if self.to_host.is_empty() && self.guest_shutdown & SHUTDOWN_SEND != 0 {
            // The guest sends no more: the host program reads its end.
            let _ = stream.shutdown(Shutdown::Write);
        }
        self.forwarded(written);
        Forward::Ok
    }

    fn forwarded(&mut self, n: usize) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        if self.fwd_cnt.wrapping_sub(self.fwd_told) >= CREDIT_THRESHOLD {
            self.owed |= owed::CREDIT_UPDATE;
        }
    }

    /// Reads the host program's `CONNECT <port>\n` a byte at a time (so no
    /// stream byte after it is taken): `Ok(Some(port))` once complete,
    /// `Ok(None)` while more is to come, an error for anything else.
    pub fn read_connect_line(&mut self) -> io::Result<Option<u32>> {
        let Some(stream) = &mut self.stream else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) if byte[0] == b'\n' => {
                    return parse_connect(&self.line)
                        .map(Some)
                        .ok_or_else(|| io::ErrorKind::InvalidData.into())
                }
                Ok(_) if self.line.len() < MAX_LINE => self.line.push(byte[0]),
                Ok(_) => return Err(io::ErrorKind::InvalidData.into()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Writes to a host socket without SIGPIPE (`MSG_NOSIGNAL`): a host
/// program that closed its end is an `EPIPE` for this stream, never the
/// end of husk, which keeps SIGPIPE's default action for its stdout.
pub fn send(stream: &UnixStream, data: &[u8]) -> io::Result<usize> {
    stream.send_with_fds(&[data], &[]).map_err(io::Error::from)
}

/// `CONNECT <port>` (without its newline) to the port.
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.strip_prefix("CONNECT ")?.trim_end_matches('\r');
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295\r"), Some(u32::MAX));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT ",
            b"connect 5",
            b"CONNECT -1",
            b"CONNECT 4294967296",
            b"\xff",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn credit_counts_wrap() {
        let mut c = Conn::new(ConnState::Established, None, 1, 2);
        c.peer_buf_alloc = 1000;
        c.rx_cnt = 10;
        c.peer_fwd_cnt = u32::MAX - 5;
        // 16 bytes in flight across the wrap.
        assert_eq!(c.peer_credit(), 984);
        // A guest claiming to have consumed more than was sent gets no
        // more than its buffer.
        c.peer_fwd_cnt = 20;
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn a_guest_over_its_credit_is_refused() {
        let (a, _b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Conn::new(ConnState::Established, Some(a), 1, 2);
        // The host peer never reads: the socket fills, the rest is held.
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0usize;
        while sent + chunk.len() <= BUF_ALLOC as usize * 4 {
            match c.forward(&chunk) {
                Forward::Ok => sent += chunk.len(),
                Forward::OverCredit => break,
                Forward::Failed => panic!("the socket is open"),
            }
        }
        assert!(c.to_host.len() <= BUF_ALLOC as usize);
        assert_eq!(c.forward(&chunk), Forward::OverCredit);
    }
}
