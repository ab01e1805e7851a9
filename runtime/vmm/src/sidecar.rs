//! Programs that run beside a VM (passt, virtiofsd): started by the husk
//! process before the VMM is built (the VMM itself never execs), each
//! handed one descriptor it serves the VM on. [`Sidecar`] owns one such
//! process's lifetime: it gets SIGKILL when the thread that started it
//! dies (even by `kill -9` of husk), and dropping it waits for it to end
//! (it quits once the VM's end of its socket is closed) or kills it.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A running program beside a VM.
pub struct Sidecar {
    child: Child,
    /// The process that started it: only it may wait for or kill it (a
    /// forked, jailed VMM sees other process numbers).
    owner: u32,
}

impl Sidecar {
    /// Spawns `cmd`, which inherits `keep` (its socket) across exec and
    /// dies with the thread that started it.
    pub fn spawn(cmd: &mut Command, keep: RawFd) -> io::Result<Sidecar> {
        // SAFETY: between fork and exec the closure makes only
        // async-signal-safe calls (prctl, fcntl) on memory it owns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::fcntl(keep, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(Sidecar {
            child: cmd.spawn()?,
            owner: std::process::id(),
        })
    }

    /// How it ended, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if std::process::id() != self.owner {
            return;
        }
        // It quits once every copy of the VM's end is closed; give it a
        // moment, then make sure.
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether husk runs as root, which decides how a sidecar sandboxes
/// itself (passt drops to nobody; virtiofsd makes its own namespaces).
pub fn as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The program `$ENV` names, else `name` on `PATH`, else the first of
/// `elsewhere` that exists.
pub fn find_program(env: &str, name: &str, elsewhere: &[PathBuf]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(p.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .chain(elsewhere.iter().cloned())
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sidecar_keeps_its_descriptor_and_is_reaped_on_drop() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::os::fd::AsRawFd;
        let fd = theirs.as_raw_fd();
        // The child proves the descriptor survived exec by writing to it,
        // then would run far longer than the drop waits. bash, not sh:
        // dash takes no descriptor past 9 in a redirection, and with other
        // tests' files open at once this one's can be 10 or more.
        let mut cmd = Command::new("bash");
        cmd.args(["-c", &format!("echo kept >&{fd}; exec sleep 30")]);
        let mut s = Sidecar::spawn(&mut cmd, fd).unwrap();
        drop(theirs);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&ours), &mut line).unwrap();
        assert_eq!(line, "kept\n");
        assert!(s.exited().is_none());
        let pid = s.child.id();
        let started = Instant::now();
        drop(s);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn programs_are_found_by_variable_path_or_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let fallback = dir.path().join("tool");
        std::fs::write(&fallback, "").unwrap();
        assert_eq!(
            find_program(
                "HUSK_TEST_UNSET_VARIABLE",
                "no-such-tool-here",
                std::slice::from_ref(&fallback)
            ),
            Some(fallback)
        );
        assert_eq!(
            find_program("HUSK_TEST_UNSET_VARIABLE", "sh", &[]).map(|p| p.is_file()),
            Some(true)
        );
        assert_eq!(
            find_program("HUSK_TEST_UNSET_VARIABLE", "no-such-tool-here", &[]),
            None
        );
    }
}
