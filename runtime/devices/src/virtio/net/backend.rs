//! Where a virtio-net device's frames go: the [`NetBackend`] trait, and the
//! stream backend (frames on a Unix stream socket, each behind a 4-byte
//! big-endian length: the protocol of passt and of QEMU's `-netdev
//! stream`). The tap backend needs ioctls and lives in the VMM.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::{HDR_LEN, MAX_FRAME};

/// What became of a frame handed to [`NetBackend::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Taken (perhaps partly held by the backend until it can write).
    Done,
    /// Not taken: the backend is full; try again once it is writable.
    WouldBlock,
}

/// A host endpoint for Ethernet frames. Every frame crossing this trait
/// starts with the 12-byte `virtio_net_hdr_v1`: a backend that cannot
/// carry it drops it on send and supplies a zeroed one on receive.
pub trait NetBackend: Send + AsRawFd {
    /// Whether the backend carries the header's checksum and segmentation
    /// offloads (a tap with `IFF_VNET_HDR`), so the device may offer them.
    fn offloads(&self) -> bool;
    /// Tells the backend which receive offloads the driver accepted
    /// (`VIRTIO_NET_F_GUEST_*` feature bits).
    fn set_offloads(&mut self, _features: u64) -> io::Result<()> {
        Ok(())
    }
    /// Sends one frame (header included).
    fn send(&mut self, frame: &[u8]) -> io::Result<Sent>;
    /// Writes out what an earlier send left held; true once nothing is.
    fn flush(&mut self) -> io::Result<bool> {
        Ok(true)
    }
    /// Receives one frame (header included) into `buf`, which holds
    /// [`MAX_FRAME`] bytes; `None` when nothing is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>>;
}

/// Frames on a stream socket (passt, QEMU `-netdev stream`): a 4-byte
/// big-endian length, then the frame without a virtio header. The socket
/// must be non-blocking. At most one frame is ever held on either side.
/// Writes are `sendmsg` with `MSG_NOSIGNAL`: a peer that went away is an
/// error for this backend, never a SIGPIPE for the VMM.
pub struct StreamBackend<S> {
    stream: S,
    /// Bytes of a sent frame the socket has not taken yet.
    out: Vec<u8>,
    out_at: usize,
    /// Bytes read from the socket and not yet handed out as frames.
    inbuf: Box<[u8]>,
    in_start: usize,
    in_end: usize,
}

const LEN: usize = 4;
/// The largest Ethernet frame a stream peer may send (no header).
const MAX_WIRE_FRAME: usize = MAX_FRAME - HDR_LEN;

impl<S: Read + ScmSocket + AsRawFd + Send> StreamBackend<S> {
    pub fn new(stream: S) -> Self {
        StreamBackend {
            stream,
            out: Vec::with_capacity(LEN + MAX_WIRE_FRAME),
            out_at: 0,
            inbuf: vec![0u8; 2 * (LEN + MAX_WIRE_FRAME)].into_boxed_slice(),
            in_start: 0,
            in_end: 0,
        }
    }

    /// A complete frame at the front of the input, if there is one.
    fn parse(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let have = self.in_end - self.in_start;
        if have < LEN {
            return Ok(None);
        }
        let at = self.in_start;
        let len = u32::from_be_bytes(self.inbuf[at..at + LEN].try_into().expect("4 bytes"));
        let len = len as usize;
        if len > MAX_WIRE_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the peer sent a {len}-byte frame (at most {MAX_WIRE_FRAME})"),
            ));
        }
        if have < LEN + len {
            return Ok(None);
        }
        buf[..HDR_LEN].fill(0);
        buf[HDR_LEN..HDR_LEN + len].copy_from_slice(&self.inbuf[at + LEN..at + LEN + len]);
        self.in_start += LEN + len;
        Ok(Some(HDR_LEN + len))
    }
}

impl<S: Read + ScmSocket + AsRawFd + Send> AsRawFd for StreamBackend<S> {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// One `sendmsg(MSG_NOSIGNAL)` of `parts`, as an io result.
fn send(stream: &impl ScmSocket, parts: &[&[u8]]) -> io::Result<usize> {
    stream
        .send_with_fds(parts, &[])
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))
}

impl<S: Read + ScmSocket + AsRawFd + Send> NetBackend for StreamBackend<S> {
    fn offloads(&self) -> bool {
        false
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<Sent> {
        if !self.flush()? {
            return Ok(Sent::WouldBlock);
        }
        let payload = frame.get(HDR_LEN..).unwrap_or_default();
        let len = (payload.len() as u32).to_be_bytes();
        let written = loop {
            match send(&self.stream, &[&len[..], payload]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if would_block(&e) => return Ok(Sent::WouldBlock),
                Err(e) => return Err(e),
            }
        };
        // Hold the rest: the stream must never carry half a frame followed
        // by another one.
        if written < LEN + payload.len() {
            self.out.clear();
            self.out.extend_from_slice(&len);
            self.out.extend_from_slice(payload);
            self.out_at = written;
        }
        Ok(Sent::Done)
    }

    fn flush(&mut self) -> io::Result<bool> {
        while self.out_at < self.out.len() {
            match send(&self.stream, &[&self.out[self.out_at..]]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if would_block(&e) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.out_at = 0;
        Ok(true)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            if let Some(n) = self.parse(buf)? {
                return Ok(Some(n));
            }
            // Keep the partial frame at the front, then read more.
            if self.in_start > 0 {
                self.inbuf.copy_within(self.in_start..self.in_end, 0);
                self.in_end -= self.in_start;
                self.in_start = 0;
            }
            match self.stream.read(&mut self.inbuf[self.in_end..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.in_end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if would_block(&e) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use super::*;

    fn pair() -> (StreamBackend<UnixStream>, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (StreamBackend::new(a), b)
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; HDR_LEN];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frames_cross_with_a_length_and_no_header() {
        let (mut backend, mut peer) = pair();
        assert_eq!(backend.send(&frame(b"hello")).unwrap(), Sent::Done);
        let mut wire = [0u8; 9];
        peer.read_exact(&mut wire).unwrap();
        assert_eq!(&wire, b"\0\0\0\x05hello");

        // Two frames and a half in one read; the half completes later.
        peer.write_all(b"\0\0\0\x02ab\0\0\0\x01c\0\0\0\x03d")
            .unwrap();
        let mut buf = vec![0u8; MAX_FRAME];
        assert_eq!(backend.recv(&mut buf).unwrap(), Some(HDR_LEN + 2));
        assert_eq!(&buf[..HDR_LEN + 2], &frame(b"ab")[..]);
        assert_eq!(backend.recv(&mut buf).unwrap(), Some(HDR_LEN + 1));
        assert_eq!(backend.recv(&mut buf).unwrap(), None);
        peer.write_all(b"ef").unwrap();
        assert_eq!(backend.recv(&mut buf).unwrap(), Some(HDR_LEN + 3));
        assert_eq!(&buf[HDR_LEN..HDR_LEN + 3], b"def");
    }

    #[test]
    fn an_oversized_length_is_an_error_not_an_allocation() {
        let (mut backend, mut peer) = pair();
        peer.write_all(&u32::MAX.to_be_bytes()).unwrap();
        let mut buf = vec![0u8; MAX_FRAME];
        assert!(backend.recv(&mut buf).is_err());
    }

    #[test]
    fn a_full_socket_holds_one_frame_and_refuses_the_next() {
        let (mut backend, mut peer) = pair();
        let big = frame(&vec![7u8; MAX_WIRE_FRAME]);
        let mut sent = 0;
        while backend.send(&big).unwrap() == Sent::Done {
            sent += 1;
            assert!(sent < 10_000, "the socket never filled");
        }
        assert!(!backend.flush().unwrap());
        // The peer drains everything: whole frames, none cut.
        peer.set_nonblocking(true).unwrap();
        let mut wire = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            match peer.read(&mut chunk) {
                Ok(n) => wire.extend_from_slice(&chunk[..n]),
                Err(e) if would_block(&e) => {
                    if backend.flush().unwrap() {
                        // Drain what the flush wrote too.
                        while let Ok(n) = peer.read(&mut chunk) {
                            wire.extend_from_slice(&chunk[..n]);
                        }
                        break;
                    }
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(wire.len(), sent * (LEN + MAX_WIRE_FRAME));
        assert_eq!(backend.send(&big).unwrap(), Sent::Done);
    }

    #[test]
    fn a_closed_peer_is_an_error() {
        let (mut backend, peer) = pair();
        drop(peer);
        let mut buf = vec![0u8; MAX_FRAME];
        assert!(backend.recv(&mut buf).is_err());
    }
}
