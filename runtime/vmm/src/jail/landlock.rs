//! Landlock's scopes, where they keep the jailed VMM from the host's
//! network as well as a network namespace of its own would.
//!
//! What an empty network namespace kept from a VMM whose seccomp filter
//! refuses `socket`, `connect` and `bind`: the host's abstract Unix
//! socket names, which a `sendto` or `sendmsg` naming one on a datagram
//! socket the VMM holds could still reach (the namespace's own names are
//! an empty set). Landlock ABI 6 (Linux 6.12) scopes those names to the
//! process's own domain (`LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET`), and
//! signals likewise; TCP `bind` and `connect` (ABI 4) are refused too,
//! for good measure. Creating the namespace was the largest part of the
//! jail's cost (in the KVM test bed, 6 ms of CPU a run under `perf`, and
//! the kernel's cleanup of it after the run some 3 ms more); a ruleset
//! is two system calls.
//!
//! Rules on files are none of this module's business: the VMM's root is
//! an empty read-only tmpfs and its filter refuses every `open`.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// `landlock_create_ruleset`'s flag: return the ABI version.
const CREATE_RULESET_VERSION: u32 = 1 << 0;
/// `LANDLOCK_ACCESS_NET_BIND_TCP | LANDLOCK_ACCESS_NET_CONNECT_TCP`.
const NET_TCP: u64 = (1 << 0) | (1 << 1);
/// `LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL`.
const SCOPES: u64 = (1 << 0) | (1 << 1);
/// The first ABI with scopes.
const SCOPED_ABI: i64 = 6;

/// `struct landlock_ruleset_attr` as of ABI 6.
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

/// The kernel's Landlock ABI version; 0 where it has no Landlock or has
/// it turned off.
pub fn abi() -> i64 {
    // SAFETY: with a null attribute, size 0 and the version flag, the
    // call reads and writes no memory; it returns the version or -1.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    v.max(0)
}

/// Whether [`restrict`] can scope abstract Unix sockets here.
pub fn can_scope() -> bool {
    abi() >= SCOPED_ABI
}

/// Restricts the calling thread, and every thread and process it starts
/// from here on: no abstract Unix socket made outside its domain can be
/// connected or sent to, no process outside it signalled, and no TCP
/// port bound or connected. Needs `no_new_privs` (or CAP_SYS_ADMIN) and
/// [`can_scope`]; a thread alone, so call it while the process has one.
pub fn restrict() -> io::Result<()> {
    let attr = RulesetAttr {
        handled_access_fs: 0,
        handled_access_net: NET_TCP,
        scoped: SCOPES,
    };
    // SAFETY: `attr` is a valid ruleset attribute of the size passed,
    // which the kernel only reads.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call returned a new descriptor, owned from here on.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: a ruleset descriptor this thread owns, and no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_restrict_self,
            std::os::fd::AsRawFd::as_raw_fd(&ruleset),
            0u32,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

    /// A child restricted by [`restrict`] tries each thing the scopes
    /// refuse, against the parent's abstract sockets and TCP listener;
    /// its exit code says which went through.
    #[test]
    fn a_restricted_process_reaches_no_abstract_socket_and_no_tcp_port() {
        if !can_scope() {
            panic!(
                "this kernel's Landlock ABI is {}; scoping abstract sockets needs 6 (Linux \
                 6.12). Without it the jail gives the VMM a network namespace instead (the KVM \
                 test bed's jail test checks which one it got)",
                abi()
            );
        }
        use std::os::linux::net::SocketAddrExt;
        let name = format!("husk-landlock-test-{}", std::process::id());
        let stream_addr =
            std::os::unix::net::SocketAddr::from_abstract_name(format!("{name}-s")).unwrap();
        let dgram_addr =
            std::os::unix::net::SocketAddr::from_abstract_name(format!("{name}-d")).unwrap();
        let listener = UnixListener::bind_addr(&stream_addr).unwrap();
        let dgram = UnixDatagram::bind_addr(&dgram_addr).unwrap();
        dgram.set_nonblocking(true).unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap();
        // The child's own datagram socket, made before it is restricted,
        // like the sockets a VMM holds. (The child of a multithreaded
        // harness must not allocate: everything it uses is made here.)
        let sender = UnixDatagram::unbound().unwrap();
        let control = UnixStream::connect_addr(&stream_addr);
        assert!(control.is_ok(), "unrestricted connect: {control:?}");
        drop(control);
        let _ = listener.accept().unwrap();

        // SAFETY: the child only makes system calls and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: prctl with valid arguments.
            let nnp = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            let mut code = 0u8;
            if nnp != 0 || restrict().is_err() {
                code |= 1;
            }
            if UnixStream::connect_addr(&stream_addr).is_ok() {
                code |= 2;
            }
            if sender.send_to_addr(b"x", &dgram_addr).is_ok() {
                code |= 4;
            }
            if std::net::TcpStream::connect(port).is_ok() {
                code |= 8;
            }
            // SAFETY: signal 0 only checks; the parent is outside the domain.
            if unsafe { libc::kill(libc::getppid(), 0) } == 0 {
                code |= 16;
            }
            // SAFETY: leaving the child without running the harness.
            unsafe { libc::_exit(code.into()) };
        }
        let mut status = 0;
        // SAFETY: status is a valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        let code = libc::WEXITSTATUS(status);
        assert_eq!(code & 1, 0, "restricting the child failed");
        assert_eq!(
            code & 2,
            0,
            "the child connected to an abstract socket outside its domain"
        );
        assert_eq!(
            code & 4,
            0,
            "the child sent to an abstract socket outside its domain"
        );
        assert_eq!(code & 8, 0, "the child connected to a TCP port");
        assert_eq!(
            code & 16,
            0,
            "the child signalled a process outside its domain"
        );
        let mut got = [0u8; 1];
        let sent = dgram.recv(&mut got);
        assert!(
            sent.is_err(),
            "a datagram reached the parent's abstract socket"
        );
    }
}
