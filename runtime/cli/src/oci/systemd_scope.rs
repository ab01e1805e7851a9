//! A container's cgroup as a systemd scope: what runc's systemd driver
//! makes for `linux.cgroupsPath` in systemd's `slice:prefix:name` form
//! (podman's and docker's default on a systemd host, CRI's with
//! `SystemdCgroup = true`). On such a host the cgroup tree is systemd's:
//! a container's cgroup is a transient unit `prefix-name.scope` in
//! `slice`, which only systemd makes (D-Bus `StartTransientUnit`), with
//! `Delegate=yes` so what runs in it may manage its own subtree, and the
//! VM's limits as the unit's properties.
//!
//! systemd makes a scope around processes that run already: husk forks
//! a placeholder, asks for the scope with its pid, and waits until the
//! kernel shows it there; the keeper then starts in the scope's folder,
//! and the placeholder ends once it has ([`Made`] is dropped). A scope
//! ends by itself when its last process does (`CollectMode=
//! inactive-or-failed` leaves no failed unit behind); `delete` kills
//! what is left and stops the unit.
//!
//! systemd is reached with `busctl`, systemd's own client: on the system
//! bus as root, on the user's bus otherwise (rootless podman), as runc
//! reaches it. No D-Bus library is linked into husk for the two calls.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// How long systemd has to put the placeholder in its new scope.
const PLACE_TIMEOUT: Duration = Duration::from_secs(10);

/// A container's systemd scope: its unit, the slice it is in, and whose
/// manager made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub unit: String,
    pub slice: String,
    /// The calling user's manager (`--user` bus), not the system's.
    #[serde(default)]
    pub user: bool,
}

/// Whether a name is a systemd unit name's characters (systemd's
/// `VALID_CHARS`), not empty, within its 255 bytes.
fn unit_chars(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":_.\\-@".contains(&b))
}

impl Scope {
    /// The scope `cgroups_path` names, as runc's systemd driver reads it:
    /// `slice:prefix:name` makes `prefix-name.scope` (`name.scope` with
    /// no prefix) in `slice`; an empty slice is `system.slice` (root) or
    /// `user.slice`, and an empty path `husk` scope named `id`.
    pub fn parse(cgroups_path: Option<&str>, id: &str, user: bool) -> anyhow::Result<Scope> {
        let path = cgroups_path.filter(|p| !p.is_empty());
        let (slice, prefix, name) = match path {
            None => ("", "husk", id),
            Some(p) => match p.split(':').collect::<Vec<_>>()[..] {
                [slice, prefix, name] => (slice, prefix, name),
                _ => anyhow::bail!(
                    "cgroupsPath {p:?}: systemd cgroups (--systemd-cgroup) are named \
                     \"slice:prefix:name\""
                ),
            },
        };
        let at = path.unwrap_or(id);
        if name.is_empty() {
            anyhow::bail!("cgroupsPath {at:?} has no name (\"slice:prefix:name\")");
        }
        if name.ends_with(".slice") {
            anyhow::bail!(
                "cgroupsPath {at:?} names a slice as the container's own unit: \
                 husk makes a scope for each container; name one (\"slice:prefix:name\")"
            );
        }
        let unit = if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        let slice = match slice {
            "" if user => "user.slice",
            "" => "system.slice",
            s => s,
        };
        if !slice.ends_with(".slice") || !unit_chars(slice) {
            anyhow::bail!("cgroupsPath {at:?}: {slice:?} is not a systemd slice (NAME.slice)");
        }
        if !unit_chars(&unit) {
            anyhow::bail!(
                "cgroupsPath {at:?}: {unit:?} is not a systemd unit name \
                 (letters, digits and \":_.\\-@\", at most 255 bytes)"
            );
        }
        Ok(Scope {
            unit,
            slice: slice.to_string(),
            user,
        })
    }

    /// Asks systemd for the scope, holding a placeholder process, with the
    /// VM's limits: `memory` bytes, no swap, `cpus` CPUs. Returns, once
    /// it is there, the scope's folder under the cgroup v2 mount `root`.
    pub fn make(&self, root: &Path, memory: u64, cpus: u32) -> anyhow::Result<(PathBuf, Hold)> {
        let holder = Holder::fork()?;
        let quota = u64::from(cpus.max(1)) * 1_000_000;
        let description = format!("husk micro-VM {}", self.unit);
        let pid = holder.pid.to_string();
        let (memory, quota) = (memory.to_string(), quota.to_string());
        #[rustfmt::skip]
        let properties: [&[&str]; 12] = [
            &["Description", "s", &description],
            &["Slice", "s", &self.slice],
            &["Delegate", "b", "true"],
            &["PIDs", "au", "1", &pid],
            &["DefaultDependencies", "b", "false"],
            &["CollectMode", "s", "inactive-or-failed"],
            &["MemoryAccounting", "b", "true"],
            &["CPUAccounting", "b", "true"],
            &["TasksAccounting", "b", "true"],
            &["MemoryMax", "t", &memory],
            &["MemorySwapMax", "t", "0"],
            &["CPUQuotaPerSecUSec", "t", &quota],
        ];
        let mut args: Vec<&str> = vec![&self.unit, "fail"];
        let count = properties.len().to_string();
        args.push(&count);
        args.extend(properties.iter().flat_map(|p| p.iter().copied()));
        // No auxiliary units.
        args.push("0");
        self.call("StartTransientUnit", "ssa(sv)a(sa(sv))", &args)
            .with_context(|| format!("systemd did not make scope {}", self.unit))?;
        let dir = holder
            .wait_in(root, &self.unit)
            .inspect_err(|_| self.stop())?;
        Ok((dir, Hold { _holder: holder }))
    }

    /// Stops the unit, if systemd still has it (a scope whose processes
    /// all ended is gone already); what fails is only logged.
    pub fn stop(&self) {
        if let Err(e) = self.call("StopUnit", "ss", &[&self.unit, "replace"]) {
            let e = format!("{e:#}");
            if !e.contains("not loaded") {
                log::warn!("cannot stop {}: {e}", self.unit);
            }
        }
    }

    /// Calls `method` of systemd's manager with `busctl`.
    fn call(&self, method: &str, signature: &str, args: &[&str]) -> anyhow::Result<()> {
        let out = std::process::Command::new("busctl")
            .arg(if self.user { "--user" } else { "--system" })
            .args(["--quiet", "call", "org.freedesktop.systemd1"])
            .args([
                "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager",
            ])
            .args([method, signature])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output();
        let out = match out {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
                "busctl (systemd's) is not on PATH: systemd cgroups (--systemd-cgroup, \
                 a \"slice:prefix:name\" cgroupsPath) need a host that systemd runs"
            ),
            Err(e) => return Err(e).context("cannot run busctl"),
        };
        if !out.status.success() {
            anyhow::bail!(
                "{method}: {}",
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
        }
        Ok(())
    }
}

/// The placeholder that holds a new scope until the keeper is in it (it
/// ends when this is dropped).
pub struct Hold {
    _holder: Holder,
}

/// A forked process that does nothing until its pipe closes (this one's
/// end dropped, or this process gone), then exits; reaped on drop.
struct Holder {
    pid: libc::pid_t,
    /// The pipe's write end; the child reads until it closes.
    release: Option<OwnedFd>,
}

impl Holder {
    fn fork() -> anyhow::Result<Holder> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error()).context("pipe");
        }
        // SAFETY: pipe2 succeeded: both are open descriptors owned here.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let (r, w) = (read.as_raw_fd(), write.as_raw_fd());
        // SAFETY: the child (of a process that may have other threads: the
        // shim) calls only close, read and _exit, all async-signal-safe,
        // and touches no memory another thread could have left locked.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: as above; `b` is a local byte read() may write.
            unsafe {
                libc::close(w);
                let mut b = 0u8;
                while libc::read(r, (&mut b as *mut u8).cast(), 1) < 0
                    && *libc::__errno_location() == libc::EINTR
                {}
                libc::_exit(0);
            }
        }
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("fork");
        }
        drop(read);
        Ok(Holder {
            pid,
            release: Some(write),
        })
    }

    /// Waits until the kernel shows this process in `unit`'s cgroup: the
    /// scope's folder under the cgroup v2 mount `root`.
    fn wait_in(&self, root: &Path, unit: &str) -> anyhow::Result<PathBuf> {
        let file = format!("/proc/{}/cgroup", self.pid);
        let deadline = Instant::now() + PLACE_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let path = text.lines().find_map(|l| l.strip_prefix("0::"));
            if let Some(path) = path.filter(|p| p.rsplit('/').next() == Some(unit)) {
                return Ok(root.join(path.trim_start_matches('/')));
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "systemd took scope {unit} but did not put its first process there in {:?} \
                     (it is in {:?})",
                    PLACE_TIMEOUT,
                    path.unwrap_or("no cgroup v2")
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.release.take());
        // SAFETY: waitpid on this process's own child; a subreaper thread
        // that reaped it first (the shim's) leaves ECHILD, which is fine.
        unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(path: Option<&str>) -> anyhow::Result<Scope> {
        Scope::parse(path, "c1", false)
    }

    #[test]
    fn systemd_paths_name_scopes_as_runc_names_them() {
        let s = |slice: &str, unit: &str| Scope {
            unit: unit.into(),
            slice: slice.into(),
            user: false,
        };
        for (path, slice, unit) in [
            // podman's, docker's and CRI's.
            (
                Some("machine.slice:libpod:c1"),
                "machine.slice",
                "libpod-c1.scope",
            ),
            (
                Some("system.slice:docker:c1"),
                "system.slice",
                "docker-c1.scope",
            ),
            (
                Some("kubepods-besteffort-pod1.slice:cri-containerd:c1"),
                "kubepods-besteffort-pod1.slice",
                "cri-containerd-c1.scope",
            ),
            // No prefix; no slice (the manager's default); no path at all.
            (Some("a.slice::c1"), "a.slice", "c1.scope"),
            (Some(":p:c1"), "system.slice", "p-c1.scope"),
            (None, "system.slice", "husk-c1.scope"),
        ] {
            assert_eq!(scope(path).unwrap(), s(slice, unit), "{path:?}");
        }
        assert_eq!(
            Scope::parse(Some(":p:c1"), "c1", true).unwrap().slice,
            "user.slice"
        );
    }

    #[test]
    fn paths_systemd_would_refuse_are_refused_first() {
        for (path, says) in [
            ("/kubepods/c1", "are named \"slice:prefix:name\""),
            ("a.slice:c1", "are named"),
            ("a.slice:p:", "has no name"),
            (
                "a.slice:p:inner.slice",
                "names a slice as the container's own unit",
            ),
            ("kubepods:p:c1", "is not a systemd slice"),
            ("a/b.slice:p:c1", "is not a systemd slice"),
            ("a.slice:p:c 1", "is not a systemd unit name"),
        ] {
            let e = format!("{:#}", scope(Some(path)).unwrap_err());
            assert!(e.contains(says), "{path}: {e}");
        }
        let long = format!("a.slice:p:{}", "x".repeat(300));
        assert!(format!("{:#}", scope(Some(&long)).unwrap_err()).contains("at most 255"));
    }

    #[test]
    fn a_holder_waits_for_its_release_and_is_reaped() {
        let holder = Holder::fork().unwrap();
        let pid = holder.pid;
        std::thread::sleep(Duration::from_millis(50));
        // SAFETY: kill with signal 0 only checks the pid exists.
        assert_eq!(unsafe { libc::kill(pid, 0) }, 0, "the holder ended early");
        drop(holder);
        // Reaped: the pid is no longer this process's child.
        // SAFETY: waitpid with WNOHANG on a pid; no memory is passed.
        let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        assert_eq!(r, -1, "the holder was not reaped");
    }
}
