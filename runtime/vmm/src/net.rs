//! The host side of virtio-net: what a VM's interface is attached to, and
//! the tap backend (`/dev/net/tun` with the virtio-net header, so the
//! guest's checksum and segmentation offloads reach the host kernel).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;

use devices::virtio::net::{NetBackend, Sent, StreamBackend, HDR_LEN};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
};

/// One guest network interface.
#[derive(Debug)]
pub struct NetConfig {
    pub mac: [u8; 6],
    pub backend: NetBackendConfig,
    /// The husk network it is on, by which a request finds its slot
    /// ([`crate::snapshot::locate`]) to take it out while the VM runs.
    pub network: Option<String>,
}

#[derive(Debug)]
pub enum NetBackendConfig {
    /// A tap device by name: an existing one, or (with CAP_NET_ADMIN) one
    /// made for this VM that disappears when the VM ends.
    Tap(String),
    /// A connected stream socket speaking passt's framing (see
    /// [`crate::passt`]).
    Stream(OwnedFd),
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot open /dev/net/tun")]
    TunOpen(#[source] io::Error),
    #[error(
        "no permission to attach tap {0:?}: run as root, or make it yours first \
         (ip tuntap add {0} mode tap user $USER)"
    )]
    TapPermission(String),
    #[error("cannot attach tap {name:?}")]
    TapAttach {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("tap name {0:?} is not an interface name (1 to 15 bytes)")]
    TapName(String),
    #[error("cannot use the network socket")]
    Stream(#[source] io::Error),
}

// From <linux/if_tun.h>.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: u32 = 0x01;
const TUN_F_TSO4: u32 = 0x02;
const TUN_F_TSO6: u32 = 0x04;
const TUN_F_TSO_ECN: u32 = 0x08;

/// The request of `ioctl(tap, TUNSETOFFLOAD, flags)`, for the seccomp
/// policy (the VMM thread sets the offloads once the driver chose them).
pub const TAP_SET_OFFLOAD: u64 = TUNSETOFFLOAD;

/// Opens the backend `cfg` names (before any sandbox).
pub fn open_backend(cfg: &NetBackendConfig) -> Result<Box<dyn NetBackend>, NetError> {
    match cfg {
        NetBackendConfig::Tap(name) => Ok(Box::new(Tap::open(name)?)),
        NetBackendConfig::Stream(fd) => {
            let stream = UnixStream::from(fd.try_clone().map_err(NetError::Stream)?);
            stream.set_nonblocking(true).map_err(NetError::Stream)?;
            Ok(Box::new(StreamBackend::new(stream)))
        }
    }
}

/// A tap device with the 12-byte virtio-net header on every frame.
pub struct Tap {
    file: File,
    /// `TUN_F_*` flags the driver accepted, applied on the VMM thread at
    /// the next frame (activation happens on a vCPU thread, whose seccomp
    /// filter allows no ioctl but KVM_RUN).
    pending_offloads: Option<u32>,
}

/// Attaches to (or, with CAP_NET_ADMIN, makes) tap `name` with `flags`,
/// non-blocking.
fn tun_attach(name: &str, flags: libc::c_short) -> Result<File, NetError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(NetError::TapName(name.into()));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(NetError::TunOpen)?;
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_flags = flags;
    // SAFETY: TUNSETIFF reads and writes the ifreq we own, which lives
    // across the call; the fd is our open /dev/net/tun.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => NetError::TapPermission(name.into()),
            _ => NetError::TapAttach {
                name: name.into(),
                source: e,
            },
        });
    }
    Ok(file)
}

/// A tap made for a switch in userspace (a husk network's hub): whole
/// Ethernet frames, no virtio-net header, non-blocking; it goes when its
/// last descriptor closes.
pub fn plain_tap(name: &str) -> Result<File, NetError> {
    tun_attach(name, IFF_TAP | IFF_NO_PI)
}

impl Tap {
    pub fn open(name: &str) -> Result<Tap, NetError> {
        let file = tun_attach(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)?;
        let hdr_len = HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads the int we pass by reference.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(NetError::TapAttach {
                name: name.into(),
                source: io::Error::last_os_error(),
            });
        }
        set_link_up(name).map_err(|source| NetError::TapAttach {
            name: name.into(),
            source,
        })?;
        Ok(Tap {
            file,
            pending_offloads: None,
        })
    }

    fn apply_offloads(&mut self) -> io::Result<()> {
        if let Some(flags) = self.pending_offloads.take() {
            // SAFETY: TUNSETOFFLOAD takes its flags by value; the fd is our tap.
            let ret = unsafe {
                libc::ioctl(
                    self.file.as_raw_fd(),
                    TUNSETOFFLOAD,
                    libc::c_ulong::from(flags),
                )
            };
            if ret < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// An ifreq naming `name` (checked by the caller to fit).
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: an all-zero ifreq is a valid value of this plain C struct.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

/// Brings interface `name` up (a tap made for the VM starts down).
fn set_link_up(name: &str) -> io::Result<()> {
    // SAFETY: socket() has no memory preconditions; the result is checked.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sock` is a descriptor we just opened and own from here on.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sock) };
    let mut req = ifreq(name);
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        if req.ifr_ifru.ifru_flags & libc::IFF_UP as libc::c_short != 0 {
            return Ok(());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl NetBackend for Tap {
    fn offloads(&self) -> bool {
        true
    }

    fn set_offloads(&mut self, features: u64) -> io::Result<()> {
        let has = |bit: u32| features & (1 << bit) != 0;
        let mut flags = 0;
        if has(VIRTIO_NET_F_GUEST_CSUM) {
            flags |= TUN_F_CSUM;
            // Segments come only with checksum offload.
            if has(VIRTIO_NET_F_GUEST_TSO4) {
                flags |= TUN_F_TSO4;
            }
            if has(VIRTIO_NET_F_GUEST_TSO6) {
                flags |= TUN_F_TSO6;
            }
            if has(VIRTIO_NET_F_GUEST_ECN) && flags & (TUN_F_TSO4 | TUN_F_TSO6) != 0 {
                flags |= TUN_F_TSO_ECN;
            }
        }
        self.pending_offloads = Some(flags);
        Ok(())
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<Sent> {
        self.apply_offloads()?;
        loop {
            match self.file.write(frame) {
                Ok(_) => return Ok(Sent::Done),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if would_block(&e) => return Ok(Sent::WouldBlock),
                Err(e) => return Err(e),
            }
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        self.apply_offloads()?;
        loop {
            match self.file.read(buf) {
                Ok(n) if n >= HDR_LEN => return Ok(Some(n)),
                // A runt without its header: nothing the guest can use.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if would_block(&e) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    /// With SIGPIPE's default action (as the husk binary has it), a frame
    /// sent to a passt that is gone must be EPIPE, not the end of an
    /// unjailed husk: checked in a child process, whose death would be the
    /// failure.
    #[test]
    fn a_frame_to_a_passt_that_is_gone_is_epipe_not_sigpipe() {
        // SAFETY: fork in a test; the child only makes system calls and
        // leaves with _exit.
        let child = unsafe { libc::fork() };
        assert!(child >= 0);
        if child == 0 {
            // SAFETY: restoring the default action has no preconditions.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
            let (ours, theirs) = UnixStream::pair().expect("socketpair");
            drop(theirs);
            let code = match open_backend(&NetBackendConfig::Stream(ours.into())) {
                Ok(mut backend) => match backend.send(&[0u8; HDR_LEN + 60]) {
                    Err(e) if e.raw_os_error() == Some(libc::EPIPE) => 0,
                    _ => 1,
                },
                Err(_) => 2,
            };
            // SAFETY: leaving the forked child without running destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child; status is a valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child ended with status {status:#x} (signal {})",
            libc::WTERMSIG(status)
        );
    }
}
