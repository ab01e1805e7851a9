//! The host side of a VM's vsock device (see `devices::virtio::vsock::host`
//! for the protocol): the Unix socket host programs connect to, bound
//! before the VMM is jailed, and the broker, a small process outside the
//! jail that connects guest streams to `<uds>_<port>` and hands the
//! sockets to the VMM. The VMM itself never opens a host path.
//!
//! The broker lives as long as some process holds the VMM's end of its
//! socket pair: when the VMM ends, however it ends (`kill -9` of husk
//! included: the jailed VMM dies with its supervisor), the broker reads
//! the end of its socket, removes the VM's socket file if it is still the
//! one husk made, and exits. So nothing is left behind.

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::seccomp::{Filters, SeccompMode, ThreadKind};
use devices::virtio::vsock::host;
pub use devices::virtio::vsock::MAX_CONNECTIONS;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// What the VMM needs for a vsock device.
pub struct VsockConfig {
    /// The guest's context ID (3 or more).
    pub cid: u32,
    /// The VM's socket (non-blocking) and the VMM's end of the broker's
    /// socket pair (non-blocking), from [`HostVsock::start`]; none for a
    /// device with no socket ([`VsockConfig::without_socket`]).
    pub socket: Option<host::Socket>,
    /// Host ports the device serves itself, each with a socket given up
    /// front, once (see `devices::virtio::vsock::HostSide::presets`).
    pub presets: Vec<(u32, std::os::unix::net::UnixStream)>,
}

impl VsockConfig {
    /// A device only husk speaks to, through its presets: no socket on
    /// the host, no broker process (see `devices::virtio::vsock::HostSide`).
    pub fn without_socket(cid: u32) -> VsockConfig {
        VsockConfig {
            cid,
            socket: None,
            presets: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("{}: another VM or program listens on this socket; choose another path", .0.display())]
    InUse(PathBuf),
    #[error("{} exists and is not a socket; remove it or choose another path", .0.display())]
    NotASocket(PathBuf),
    #[error("{}: the path is too long for a Unix socket with a port after it (at most {MAX_UDS} bytes)", .0.display())]
    TooLong(PathBuf),
    #[error("cannot create the vsock socket {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the vsock connection broker")]
    Broker(#[source] io::Error),
}

/// `sun_path` holds 108 bytes with its NUL; `_4294967295` may follow.
pub const MAX_UDS: usize = 107 - 11;

/// The VM's socket and its broker. The broker removes the socket and
/// exits when the VMM's end of its socket pair closes (the VMM ended).
pub struct HostVsock {
    broker: libc::pid_t,
}

impl HostVsock {
    /// Makes the VM's socket at `uds` (replacing a stale one nobody
    /// listens on) and starts its broker, under its own seccomp filter in
    /// `seccomp` mode.
    pub fn start(
        uds: &Path,
        cid: u32,
        seccomp: SeccompMode,
    ) -> Result<(HostVsock, VsockConfig), VsockError> {
        if uds.as_os_str().len() > MAX_UDS {
            return Err(VsockError::TooLong(uds.to_owned()));
        }
        claim(uds)?;
        let bind = |source| VsockError::Bind {
            path: uds.to_owned(),
            source,
        };
        let listener = UnixListener::bind(uds).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let meta = std::fs::symlink_metadata(uds).map_err(bind)?;
        let id = (meta.dev(), meta.ino());
        let (ours, theirs) = seqpacket_pair().map_err(VsockError::Broker)?;
        let ours = UnixDatagram::from(ours);
        ours.set_nonblocking(true).map_err(VsockError::Broker)?;
        // SAFETY: the child only runs `serve`, which never returns. It
        // allocates (glibc's fork leaves the allocator usable in the
        // child) and takes no other lock: no stdio, no logging. The CLI
        // forks before it starts any thread.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => {
                let _ = std::fs::remove_file(uds);
                Err(VsockError::Broker(io::Error::last_os_error()))
            }
            0 => {
                drop(listener);
                drop(ours);
                serve(theirs, uds, id, seccomp)
            }
            pid => {
                drop(theirs);
                Ok((
                    HostVsock { broker: pid },
                    VsockConfig {
                        cid,
                        socket: Some(host::Socket {
                            listener,
                            broker: ours,
                        }),
                        presets: Vec::new(),
                    },
                ))
            }
        }
    }
}

impl HostVsock {
    /// The broker's process ID.
    pub fn broker_pid(&self) -> libc::pid_t {
        self.broker
    }
}

// No Drop: the broker tidies up by itself once the VMM's end of its
// socket pair is closed, and a VMM thread could not do it anyway (its
// seccomp filter allows no stat, unlink, kill or wait). The exited broker
// is reaped with husk.

/// Makes `uds` free to bind: a socket nobody listens on is a leftover
/// (of a VM that was killed before its broker could tidy up) and goes.
fn claim(uds: &Path) -> Result<(), VsockError> {
    let Ok(meta) = std::fs::symlink_metadata(uds) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(VsockError::NotASocket(uds.to_owned()));
    }
    match UnixStream::connect(uds) {
        Ok(_) => Err(VsockError::InUse(uds.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(uds)
            .map_err(|source| VsockError::Bind {
                path: uds.to_owned(),
                source,
            }),
        Err(source) => Err(VsockError::Bind {
            path: uds.to_owned(),
            source,
        }),
    }
}

fn remove_if_ours(uds: &Path, id: (u64, u64)) {
    if let Ok(meta) = std::fs::symlink_metadata(uds) {
        if (meta.dev(), meta.ino()) == id {
            let _ = std::fs::remove_file(uds);
        }
    }
}

/// A connected `SOCK_SEQPACKET` pair, both ends close-on-exec.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid array of two ints for the new descriptors.
    let ret = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair returned two new descriptors, owned from here on.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The broker's life: answer connection requests until the VMM's end
/// closes, then remove the VM's socket and exit.
fn serve(sock: OwnedFd, uds: &Path, id: (u64, u64), seccomp: SeccompMode) -> ! {
    // Keep only the socket pair and stderr: a host program must not find
    // the VM's listener alive in here after the VM is gone.
    // SAFETY: dup2 onto fd 3 and close_range above it; no Rust object
    // owns those descriptors any more in this process (the listener and
    // the VMM's end were dropped before the call).
    let sock = unsafe {
        let fd = sock.as_raw_fd();
        if fd != 3 {
            libc::dup2(fd, 3);
        }
        std::mem::forget(sock);
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
        libc::prctl(libc::PR_SET_NAME, c"husk-vsock".as_ptr());
        UnixDatagram::from_raw_fd(3)
    };
    // Built here, in the broker's own process: the SIGSYS report names
    // (and ends) the process that built the filter.
    let installed = Filters::build(seccomp).and_then(|f| match f {
        Some(f) => f.install(ThreadKind::Broker),
        None => Ok(()),
    });
    if installed.is_err() {
        // SAFETY: _exit ends this forked process at once; the VMM then
        // sees its guest connections refused.
        unsafe { libc::_exit(1) }
    }
    let mut buf = [0u8; host::MSG_LEN];
    loop {
        let n = match sock.recv(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let Some((port, tag)) = host::decode_request(&buf[..n]) else {
            continue;
        };
        let sent = match connect(&host::port_path(uds, port)) {
            Ok(stream) => sock.send_with_fd(&host::encode_reply(tag, 0)[..], stream.as_raw_fd()),
            Err(e) => sock
                .send(&host::encode_reply(
                    tag,
                    e.raw_os_error().unwrap_or(libc::EIO),
                ))
                .map_err(Into::into),
        };
        if sent.is_err() {
            break;
        }
    }
    remove_if_ours(uds, id);
    // SAFETY: _exit ends this forked process without running the parent's
    // exit handlers or destructors.
    unsafe { libc::_exit(0) }
}

/// Connects to a host listener without waiting: a listener whose backlog
/// is full refuses (EAGAIN) instead of holding up every other guest
/// connection behind it.
fn connect(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let bytes = c.as_bytes_with_nul();
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() > addr.sun_path.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket returned a new descriptor, owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len();
    // SAFETY: addr is a valid sockaddr_un and len covers its family and
    // the path with its NUL.
    let ret = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn the_broker_connects_to_port_sockets_and_tidies_up() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vm.sock");
        let (hv, cfg) = HostVsock::start(&uds, 3, SeccompMode::Kill).unwrap();
        assert!(matches!(
            HostVsock::start(&uds, 3, SeccompMode::Kill),
            Err(VsockError::InUse(_))
        ));
        let port = UnixListener::bind(host::port_path(&uds, 80)).unwrap();
        let broker = &cfg.socket.as_ref().unwrap().broker;
        broker.set_nonblocking(false).unwrap();
        broker.send(&host::encode_request(80, 7)).unwrap();
        broker.send(&host::encode_request(81, 8)).unwrap();
        let ok = host::recv_reply(broker).unwrap().unwrap();
        let refused = host::recv_reply(broker).unwrap().unwrap();
        assert_eq!(refused.0, 8);
        assert_eq!(refused.1.unwrap_err(), libc::ENOENT);
        assert_eq!(ok.0, 7);
        let mut s = UnixStream::from(ok.1.unwrap());
        s.set_nonblocking(false).unwrap();
        let (mut peer, _) = port.accept().unwrap();
        s.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        // The VMM's end closes (it exited or was killed): the broker
        // removes the socket file and exits by itself.
        let pid = hv.broker_pid();
        drop(cfg);
        let mut status = 0;
        // SAFETY: waitpid on the child this test forked.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert!(!uds.exists());
        // In the same test: a broker forked while another test thread
        // holds a listener would hold it too, for a moment.
        stale_sockets_are_replaced_and_other_files_kept();
    }

    fn stale_sockets_are_replaced_and_other_files_kept() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vm.sock");
        drop(UnixListener::bind(&uds).unwrap());
        assert!(uds.exists(), "a leftover socket nobody listens on");
        let (hv, cfg) = HostVsock::start(&uds, 3, SeccompMode::Kill).unwrap();
        drop(cfg);
        // SAFETY: waitpid on the child this test forked.
        unsafe { libc::waitpid(hv.broker_pid(), std::ptr::null_mut(), 0) };
        assert!(!uds.exists());
        std::fs::write(&uds, "data").unwrap();
        assert!(matches!(
            HostVsock::start(&uds, 3, SeccompMode::Kill),
            Err(VsockError::NotASocket(_))
        ));
        assert_eq!(std::fs::read(&uds).unwrap(), b"data");
        let long = dir.path().join("x".repeat(MAX_UDS));
        assert!(matches!(
            HostVsock::start(&long, 3, SeccompMode::Kill),
            Err(VsockError::TooLong(_))
        ));
    }
}

/// Why [`connect_guest`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {0}")]
    Socket(PathBuf, #[source] io::Error),
    /// Nothing in the guest listens on the port (or the guest is not up).
    #[error("the guest refused port {0}")]
    Refused(u32),
    #[error("expected \"OK <port>\" for port {0}, got {1:?}")]
    Protocol(u32, String),
}

/// A host program's side of hybrid vsock: a stream to guest `port`
/// through the VM's socket `uds` (`CONNECT <port>\n`, answered with
/// `OK <host port>\n`). `timeout` bounds the wait for the answer.
pub fn connect_guest(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, ConnectError> {
    let socket_err = |e| ConnectError::Socket(uds.to_path_buf(), e);
    let mut s = UnixStream::connect(uds).map_err(socket_err)?;
    s.set_read_timeout(Some(timeout)).map_err(socket_err)?;
    writeln!(s, "CONNECT {port}").map_err(socket_err)?;
    // A byte at a time: nothing after the line is taken from the stream.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match s.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            Ok(_) if line.is_empty() => return Err(ConnectError::Refused(port)),
            Err(e) if line.is_empty() && e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(ConnectError::Refused(port))
            }
            Ok(_) => break,
            Err(e) => return Err(socket_err(e)),
        }
    }
    let text = String::from_utf8_lossy(&line);
    match text
        .strip_prefix("OK ")
        .and_then(|p| p.trim().parse::<u32>().ok())
    {
        Some(_) => {
            s.set_read_timeout(None).map_err(socket_err)?;
            Ok(s)
        }
        None => Err(ConnectError::Protocol(port, text.into_owned())),
    }
}
