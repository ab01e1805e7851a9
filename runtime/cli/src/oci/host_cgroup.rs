//! The container's cgroup on the host, at the spec's `linux.cgroupsPath`
//! (cgroup v2). The whole VM runs in it: the keeper (the pid husk-runtime
//! reports), the jail's supervisor and the VMM, passt and virtiofsd. Host
//! tools that find a container's cgroup through its pid (`podman stats`,
//! and `docker stats` and `docker top` through containerd's runc shim)
//! then see what the VM costs the host. Its limits bound the VM as a
//! whole, as the jail's own cgroup bounds a `husk run`: guest memory plus
//! [`vmm::jail::MEMORY_ROOM`], and its vCPUs. The container's own limits
//! are those of its cgroup in the guest (`super::resources`).
//!
//! Made at `create`, removed at `delete` (whatever still runs in it is
//! killed first), as runc does: a folder husk makes for a path (runc's
//! cgroupfs driver), or a scope systemd makes for systemd's
//! `slice:prefix:name` (`--systemd-cgroup`; [`super::systemd_scope`]).
//! Not made on a host without cgroup v2: the VM then runs in its
//! caller's cgroup, the VMM in a jail cgroup of its own.

use std::ffi::OsStr;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::systemd_scope::{Hold, Scope};

/// The controllers whose limits and figures the cgroup needs.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// A path as runc cleans it: `.` and `..` resolved as if it began at the
/// root, so it never climbs above it; relative.
fn clean(path: &str) -> PathBuf {
    let mut parts: Vec<&OsStr> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => parts.push(n),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    parts.iter().collect()
}

/// This process's cgroup v2 path, from `/proc/self/cgroup` (`0::/PATH`).
fn own_cgroup() -> String {
    std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        })
        .unwrap_or_default()
}

/// Where a container's cgroup goes, and who makes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Placement {
    /// A folder husk makes (runc's cgroupfs driver).
    Dir(PathBuf),
    /// A scope systemd makes (runc's systemd driver).
    Scope(Scope),
}

impl Placement {
    /// The folder, where it is known before the cgroup is made.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Placement::Dir(d) => Some(d),
            Placement::Scope(_) => None,
        }
    }

    /// The systemd scope, if this is one.
    pub fn scope(&self) -> Option<&Scope> {
        match self {
            Placement::Dir(_) => None,
            Placement::Scope(s) => Some(s),
        }
    }
}

/// Where container `id`'s cgroup goes under the cgroup v2 mount `root`,
/// as runc's cgroupfs driver reads `linux.cgroupsPath`: an absolute path
/// is under the root; a relative one (or none: the container's id) is
/// under the parent of `own`, the caller's cgroup.
pub fn place(
    root: &Path,
    own: &str,
    cgroups_path: Option<&str>,
    id: &str,
) -> anyhow::Result<PathBuf> {
    let path = cgroups_path.filter(|p| !p.is_empty());
    let inner = match path {
        Some(p) if p.starts_with('/') => clean(p),
        other => clean(own)
            .parent()
            .unwrap_or(Path::new(""))
            .join(clean(other.unwrap_or(id))),
    };
    if inner.as_os_str().is_empty() {
        anyhow::bail!("cgroupsPath {:?} names the root cgroup", path.unwrap_or(id));
    }
    Ok(root.join(inner))
}

/// Whether `cgroups_path` has systemd's `slice:prefix:name` form, for a
/// caller that is not told which driver its cgroups are for (the shim:
/// containerd gives runc's shim that choice in runc's own options, and
/// CRI writes this form only for `SystemdCgroup`).
pub fn systemd_form(cgroups_path: &str) -> bool {
    !cgroups_path.starts_with('/') && cgroups_path.matches(':').count() == 2
}

/// Where this host's cgroup v2 hierarchy is mounted, if it has one.
fn v2_root() -> Option<PathBuf> {
    match vmm::jail::Cgroups::detect() {
        Some(vmm::jail::Cgroups::V2(root)) => Some(root),
        _ => None,
    }
}

/// The cgroup container `id` gets, where this host has cgroup v2: a
/// systemd scope for `systemd` (runc's `--systemd-cgroup`), else a
/// folder.
pub fn for_container(
    cgroups_path: Option<&str>,
    id: &str,
    systemd: bool,
) -> anyhow::Result<Option<Placement>> {
    let Some(root) = v2_root() else {
        return Ok(None);
    };
    if systemd {
        // SAFETY: geteuid has no preconditions.
        let user = unsafe { libc::geteuid() } != 0;
        return Ok(Some(Placement::Scope(Scope::parse(
            cgroups_path,
            id,
            user,
        )?)));
    }
    place(&root, &own_cgroup(), cgroups_path, id).map(|d| Some(Placement::Dir(d)))
}

/// A container's cgroup, made: its folder, and for a systemd scope the
/// placeholder that holds it until the keeper is in (drop this after).
pub struct Made {
    pub dir: PathBuf,
    _hold: Option<Hold>,
}

/// Makes the cgroup `placement` (from [`for_container`]) names, with the
/// VM's limits: `memory` bytes, `cpus` CPUs.
pub fn make(placement: &Placement, memory: u64, cpus: u32) -> anyhow::Result<Made> {
    let root = v2_root().context("this host has no cgroup v2 hierarchy")?;
    match placement {
        Placement::Dir(dir) => {
            create(&root, dir, memory, cpus)?;
            Ok(Made {
                dir: dir.clone(),
                _hold: None,
            })
        }
        Placement::Scope(scope) => {
            let (dir, hold) = scope.make(&root, memory, cpus)?;
            Ok(Made {
                dir,
                _hold: Some(hold),
            })
        }
    }
}

/// Removes a container's cgroup: folder `dir` (see [`remove`]), then
/// systemd's unit for `scope`.
pub fn remove_all(dir: Option<&Path>, scope: Option<&Scope>) -> anyhow::Result<()> {
    let removed = dir.map_or(Ok(()), remove);
    if let Some(scope) = scope {
        scope.stop();
    }
    removed
}

/// Makes cgroup `dir` under `root` with the VM's limits: `memory` bytes
/// and `cpus` CPUs. Each cgroup on the way down hands its children the
/// controllers it has of [`CONTROLLERS`], as runc does; a cgroup already
/// there is taken as it is, its limits set.
fn create(root: &Path, dir: &Path, memory: u64, cpus: u32) -> anyhow::Result<()> {
    let inner = dir.strip_prefix(root).unwrap_or(dir);
    let mut at = root.to_path_buf();
    for part in inner.components() {
        let available = std::fs::read_to_string(at.join("cgroup.controllers")).unwrap_or_default();
        let enabled =
            std::fs::read_to_string(at.join("cgroup.subtree_control")).unwrap_or_default();
        let has = |list: &str, c: &str| list.split_whitespace().any(|x| x == c);
        let missing: Vec<String> = CONTROLLERS
            .iter()
            .filter(|c| has(&available, c) && !has(&enabled, c))
            .map(|c| format!("+{c}"))
            .collect();
        if !missing.is_empty() {
            // One at a time where all at once is refused: what cannot be
            // enabled leaves its limits unset and its figures unread.
            let control = at.join("cgroup.subtree_control");
            if std::fs::write(&control, missing.join(" ")).is_err() {
                for c in &missing {
                    let _ = std::fs::write(&control, c);
                }
            }
        }
        at.push(part);
        match std::fs::create_dir(&at) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create cgroup {}", at.display()))
            }
        }
    }
    for (file, value) in vmm::jail::v2_limits(memory, cpus) {
        let path = dir.join(file);
        // A controller the parents do not have: no such limit to set.
        if path.exists() {
            std::fs::write(&path, &value)
                .with_context(|| format!("cannot write {value} to {}", path.display()))?;
        }
    }
    Ok(())
}

/// Removes cgroup `dir`, killing whatever still runs in it first (what a
/// keeper killed with SIGKILL left); gone already is fine.
pub fn remove(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    // The kernel takes the killed processes out a moment later.
    for _ in 0..250 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot remove cgroup {}", dir.display()))
            }
        }
    }
    anyhow::bail!(
        "cannot remove cgroup {}: processes are still in it",
        dir.display()
    )
}

/// The processes in cgroup `dir`, none where it is gone.
pub fn procs(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(own: &str, path: Option<&str>) -> PathBuf {
        place(Path::new("/sys/fs/cgroup"), own, path, "c1").unwrap()
    }

    #[test]
    fn cgroups_paths_are_placed_as_runc_places_them() {
        let p = PathBuf::from;
        // podman's (cgroupfs), docker's, containerd's: absolute.
        assert_eq!(
            placed("/libpod_parent/conmon", Some("/libpod_parent/libpod-c1")),
            p("/sys/fs/cgroup/libpod_parent/libpod-c1")
        );
        assert_eq!(
            placed("/", Some("/docker/c1")),
            p("/sys/fs/cgroup/docker/c1")
        );
        // Relative, or none: beside the caller's cgroup.
        assert_eq!(
            placed("/system.slice/shim.scope", Some("pods/c1")),
            p("/sys/fs/cgroup/system.slice/pods/c1")
        );
        assert_eq!(placed("/a/b", None), p("/sys/fs/cgroup/a/c1"));
        assert_eq!(placed("/", None), p("/sys/fs/cgroup/c1"));
        // `..` never climbs out of the cgroup mount.
        assert_eq!(placed("/", Some("/../../etc/x")), p("/sys/fs/cgroup/etc/x"));
        assert_eq!(placed("/a", Some("../../../x")), p("/sys/fs/cgroup/x"));
        // The shim tells that form by its look: containerd's CRI writes
        // `slice:cri-containerd:ID` for the systemd driver.
        assert!(systemd_form("kubepods-pod1.slice:cri-containerd:c1"));
        for cgroupfs in ["/kubepods/pod1/c1", "/default/c1", "c1", "/a:b:c", "a:b"] {
            assert!(!systemd_form(cgroupfs), "{cgroupfs}");
        }
        // The root cgroup is nobody's container.
        for root in ["/", "/..", "/./"] {
            let e = place(Path::new("/sys/fs/cgroup"), "/", Some(root), "c1");
            let e = e.unwrap_err().to_string();
            assert!(e.contains("names the root cgroup"), "{root}: {e}");
        }
    }

    #[test]
    fn create_enables_the_controllers_on_the_way_down_and_sets_the_limits() {
        // A folder tree standing in for cgroupfs: the files a kernel
        // would show, and what husk-runtime writes to them.
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        std::fs::write(root.join("cgroup.subtree_control"), "cpu\n").unwrap();
        let parent = root.join("libpod_parent");
        std::fs::create_dir(&parent).unwrap();
        std::fs::write(parent.join("cgroup.controllers"), "memory pids\n").unwrap();
        std::fs::write(parent.join("cgroup.subtree_control"), "").unwrap();
        let dir = parent.join("libpod-c1");
        std::fs::create_dir(&dir).unwrap();
        for f in ["memory.max", "cpu.max"] {
            std::fs::write(dir.join(f), "max").unwrap();
        }
        create(root, &dir, 300 << 20, 2).unwrap();
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        // The root had cpu enabled already.
        assert_eq!(read(root.join("cgroup.subtree_control")), "+memory +pids");
        // The parent has no cpu to hand down.
        assert_eq!(read(parent.join("cgroup.subtree_control")), "+memory +pids");
        assert_eq!(read(dir.join("memory.max")), (300u64 << 20).to_string());
        assert_eq!(read(dir.join("cpu.max")), "200000 100000");
        // No swap controller file there: left alone, not made.
        assert!(!dir.join("memory.swap.max").exists());
    }

    #[test]
    fn remove_is_fine_with_a_cgroup_already_gone() {
        let t = tempfile::tempdir().unwrap();
        remove(&t.path().join("gone")).unwrap();
        assert!(procs(&t.path().join("gone")).is_empty());
    }
}
