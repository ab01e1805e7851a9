//! Containers' cgroups in the guest (cgroup v2): each container the agent
//! starts gets one at `/sys/fs/cgroup/container-N`, with the limits of its
//! spec; its exec'd processes join it. The agent reads its figures for the
//! host's `Stats`, sets new limits for `Update`, and when the container's
//! process ends, kills what is left in it and removes it.
//!
//! The hierarchy is mounted when the first container starts, so a guest
//! that runs no container never has it.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use agent::{CgroupStats, Resources};

const ROOT: &str = "/sys/fs/cgroup";
/// The controllers a container's limits and figures need.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

static MOUNTED: Mutex<bool> = Mutex::new(false);
static NEXT: AtomicU64 = AtomicU64::new(1);

/// Mounts the cgroup v2 hierarchy (once) and hands the controllers down
/// to its children.
fn mounted() -> io::Result<()> {
    let mut done = MOUNTED.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return Ok(());
    }
    let root = Path::new(ROOT);
    if !root.join("cgroup.controllers").exists() {
        fs::create_dir_all(root)?;
        // favordynmods: moving a process into a cgroup (each container's
        // start) then need not wait for an RCU grace period; kernels
        // before 6.0 refuse the option, and get the plain mount.
        let mount = |data: &std::ffi::CStr| {
            let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            // SAFETY: NUL-terminated literals that outlive the call,
            // which only reads them.
            let rc = unsafe {
                libc::mount(
                    c"cgroup2".as_ptr(),
                    c"/sys/fs/cgroup".as_ptr(),
                    c"cgroup2".as_ptr(),
                    flags,
                    data.as_ptr().cast(),
                )
            };
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        mount(c"favordynmods").or_else(|_| mount(c""))?;
    }
    let available = fs::read_to_string(root.join("cgroup.controllers"))?;
    let wanted: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    fs::write(root.join("cgroup.subtree_control"), wanted.join(" "))?;
    *done = true;
    Ok(())
}

/// A new container's cgroup with `limits` set: its path, and its
/// `cgroup.procs` opened for the child to move itself into
/// ([`crate::container::Entry::in_cgroup`]).
pub fn create(limits: &Resources) -> io::Result<(PathBuf, OwnedFd)> {
    mounted()?;
    let path = Path::new(ROOT).join(format!(
        "container-{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir(&path)?;
    let made = set(&path, limits).and_then(|_| procs(&path));
    if made.is_err() {
        let _ = fs::remove_dir(&path);
    }
    made.map(|procs| (path, procs))
}

/// The `cgroup.procs` of the container cgroup process `pid` runs in,
/// opened for a process exec'd into that container.
pub fn procs_of(pid: libc::pid_t) -> io::Result<OwnedFd> {
    procs(&path_of(pid)?)
}

/// The cgroup process `pid` runs in (the `0::` line of its
/// `/proc/PID/cgroup`), when it is a container's.
pub fn path_of(pid: libc::pid_t) -> io::Result<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let relative = text
        .lines()
        .find_map(|l| l.strip_prefix("0::/"))
        .filter(|r| r.starts_with("container-") && !r.contains('/'))
        .ok_or_else(|| io::Error::other("the process is not in a container's cgroup"))?;
    Ok(Path::new(ROOT).join(relative))
}

fn procs(path: &Path) -> io::Result<OwnedFd> {
    let name = CString::new(
        path.join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated path that outlives the call.
    let fd = unsafe { libc::open(name.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just opened, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Writes the limits `limits` sets into the cgroup at `path`.
pub fn set(path: &Path, limits: &Resources) -> io::Result<()> {
    let write = |file: &str, value: String| {
        fs::write(path.join(file), &value)
            .map_err(|e| io::Error::new(e.kind(), format!("{file} = {value}: {e}")))
    };
    if let Some(max) = limits.memory_max {
        write("memory.max", limit(max))?;
    }
    if limits.cpu_quota.is_some() || limits.cpu_period.is_some() {
        let quota = limits.cpu_quota.map_or_else(|| "max".to_string(), limit);
        let period = limits.cpu_period.unwrap_or(100_000);
        write("cpu.max", format!("{quota} {period}"))?;
    }
    if let Some(weight) = limits.cpu_weight {
        write("cpu.weight", weight.to_string())?;
    }
    if let Some(max) = limits.pids_max {
        write("pids.max", limit(max))?;
    }
    Ok(())
}

/// A limit as a cgroup file takes it: [`agent::NO_LIMIT`] is "max".
fn limit(value: u64) -> String {
    if value == agent::NO_LIMIT {
        "max".into()
    } else {
        value.to_string()
    }
}

/// The cgroup's figures.
pub fn stats(path: &Path) -> io::Result<CgroupStats> {
    let read = |file: &str| fs::read_to_string(path.join(file));
    let number = |file: &str| -> io::Result<u64> {
        read(file)?
            .trim()
            .parse()
            .map_err(|_| io::Error::other(format!("{file} is not a number")))
    };
    let limit = |file: &str| -> io::Result<Option<u64>> {
        let text = read(file)?;
        match text.trim() {
            "max" => Ok(None),
            n => n
                .parse()
                .map(Some)
                .map_err(|_| io::Error::other(format!("{file} is not a number"))),
        }
    };
    Ok(CgroupStats {
        memory_current: number("memory.current")?,
        memory_max: limit("memory.max")?,
        memory_peak: number("memory.peak").ok(),
        memory_stat: pairs(&read("memory.stat")?),
        memory_events: pairs(&read("memory.events")?),
        cpu_stat: pairs(&read("cpu.stat")?),
        pids_current: number("pids.current")?,
        pids_max: limit("pids.max")?,
    })
}

/// How long a freeze or a thaw may take to reach every process.
const FREEZE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Freezes or thaws the cgroup at `path` (`cgroup.freeze`) and waits until
/// `cgroup.events` says every process in it is (or is no longer) frozen.
/// The root cgroup, which has no freezer, is refused: a process there is
/// not a container's.
pub fn freeze(path: &Path, frozen: bool) -> io::Result<()> {
    if !path.join("cgroup.freeze").exists() {
        return Err(io::Error::other(format!(
            "{} has no freezer: the process runs in no container's cgroup",
            path.display()
        )));
    }
    fs::write(path.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
    let want = u64::from(frozen);
    let began = std::time::Instant::now();
    loop {
        let events = fs::read_to_string(path.join("cgroup.events"))?;
        if pairs(&events).get("frozen") == Some(&want) {
            return Ok(());
        }
        if began.elapsed() > FREEZE_LIMIT {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "its cgroup was not {} after {FREEZE_LIMIT:?}",
                    if frozen { "frozen" } else { "thawed" }
                ),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// `key value` lines (the flat-keyed cgroup files).
fn pairs(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// The container's process ended: what it left running in its cgroup is
/// killed (as runc's container ends with its init), and the cgroup is
/// removed once empty. Answers whether it is gone.
pub fn end(path: &Path) -> bool {
    match fs::remove_dir(path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(_) => {
            let _ = fs::write(path.join("cgroup.kill"), "1");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_limit_is_written_as_max() {
        assert_eq!(limit(agent::NO_LIMIT), "max");
        assert_eq!(limit(64 << 20), "67108864");
    }

    #[test]
    fn flat_keyed_files_parse_and_odd_lines_are_skipped() {
        let m = pairs("anon 4096\nfile 8192\nbroken\nslab x\n");
        assert_eq!(m.len(), 2);
        assert_eq!(m["anon"], 4096);
        assert_eq!(m["file"], 8192);
    }
}
