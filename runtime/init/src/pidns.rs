//! PID namespaces of the processes the agent starts: a container's
//! process born as PID 1 of a namespace of its own, or in another
//! container's, as runc makes them.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::sys::{check, open_proc};

/// Whether process `pid` has a PID namespace other than the caller's.
pub fn own_pid_ns(pid: libc::pid_t) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let theirs = fs::metadata(format!("/proc/{pid}/ns/pid"))?;
    let ours = fs::metadata("/proc/thread-self/ns/pid")?;
    Ok((theirs.dev(), theirs.ino()) != (ours.dev(), ours.ino()))
}

/// Process `pid`'s PID namespace, to be born in with [`BornIn::join`].
pub fn pid_ns_of(pid: libc::pid_t) -> io::Result<OwnedFd> {
    open_proc(Some(pid), "ns/pid", libc::O_RDONLY)
}

/// The PID namespace the calling thread's children are born in, changed
/// for one spawn and put back when this is dropped. (A process cannot
/// change its own PID namespace, only its children's; the setting is the
/// thread's, so the agent's other threads spawn as before.)
pub struct BornIn {
    back: OwnedFd,
}

impl BornIn {
    /// A new PID namespace, whose PID 1 the next child is.
    pub fn new_ns() -> io::Result<Self> {
        let back = open_proc(None, "ns/pid", libc::O_RDONLY)?;
        // SAFETY: unshare with a flag, no memory passed.
        check(unsafe { libc::unshare(libc::CLONE_NEWPID) })?;
        Ok(BornIn { back })
    }

    /// The PID namespace `ns` (a container's, below the guest's).
    pub fn join(ns: &OwnedFd) -> io::Result<Self> {
        let back = open_proc(None, "ns/pid", libc::O_RDONLY)?;
        // SAFETY: setns on a namespace descriptor we hold; no memory passed.
        check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWPID) })?;
        Ok(BornIn { back })
    }
}

impl Drop for BornIn {
    fn drop(&mut self) {
        // Back to the thread's own namespace, which a thread may always
        // enter again.
        // SAFETY: as in `join`.
        if unsafe { libc::setns(self.back.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
            // Its later children would be born in a container's namespace.
            crate::say(&format!(
                "cannot return to the guest's PID namespace: {}",
                io::Error::last_os_error()
            ));
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn pid_seen_by(command: &mut Command) -> (u32, String) {
        let child = command
            .args(["-c", "echo $$"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh starts");
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        (pid, String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Needs root (CAP_SYS_ADMIN), as init has.
    #[test]
    fn a_child_is_born_pid_1_of_a_new_namespace_and_the_thread_goes_back() {
        use std::io::BufRead;
        // SAFETY: geteuid reads the caller's id; no memory passed.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(root, "this test makes PID namespaces: run it as root");
        let born = BornIn::new_ns().expect("unshare(CLONE_NEWPID)");
        let mut first = Command::new("/bin/sh")
            .args(["-c", "echo $$; exec sleep 60"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(born);
        let mut line = String::new();
        std::io::BufReader::new(first.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "1",
            "the first child is PID 1 of its namespace"
        );
        let pid = first.id() as libc::pid_t;
        assert!(
            own_pid_ns(pid).unwrap(),
            "the child's namespace is not ours"
        );
        // A second child joins it: not PID 1 there.
        let ns = pid_ns_of(pid).unwrap();
        let joined = BornIn::join(&ns).expect("setns(CLONE_NEWPID)");
        let (_, inside) = pid_seen_by(&mut Command::new("/bin/sh"));
        drop(joined);
        let _ = first.kill();
        let _ = first.wait();
        assert!(inside.parse::<u32>().unwrap() > 1, "joined: {inside}");
        // Back in our own: a child sees the pid we see.
        let (pid, seen) = pid_seen_by(&mut Command::new("/bin/sh"));
        assert_eq!(seen, pid.to_string());
    }
}
