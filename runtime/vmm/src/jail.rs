//! The jail around the VMM process (`husk run --jail`, the default for
//! root), entered after [`crate::open_host_files`] and before the VM is
//! built.
//!
//! husk forks. The parent stays outside as the supervisor: it puts the
//! child in a cgroup with memory and CPU limits, waits for it, relays its
//! exit status, and removes the jail folder and the cgroup, also when the
//! child was killed. The child (PID 1 of a new PID namespace) enters new
//! mount, IPC, UTS and (without networking) network namespaces,
//! pivot_roots into an empty read-only tmpfs (every file the VMM needs is
//! already open), limits its open files, drops to an unprivileged user
//! with no capabilities, sets no_new_privs, and returns to build the VM.
//! If the supervisor dies the child is killed (`PR_SET_PDEATHSIG`); what
//! such a crash leaves behind is removed by the next `husk run`.

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Where jail folders live on the host: `<JAIL_DIR>/<supervisor pid>`.
pub const JAIL_DIR: &str = "/run/husk/jail";
/// The prefix of husk's cgroups: `husk-<supervisor pid>`.
pub const CGROUP_PREFIX: &str = "husk-";
/// What a VM's cgroup allows beyond its guest memory: the VMM's own
/// memory and the page cache of its disks (and, where the cgroup is a
/// container's, its keeper, passt and virtiofsd).
pub const MEMORY_ROOM: u64 = 256 << 20;

#[derive(Debug, Clone)]
pub struct JailConfig {
    /// The user and group the VMM runs as.
    pub uid: u32,
    pub gid: u32,
    /// The cgroup's memory limit, in bytes.
    pub memory_limit: u64,
    /// The cgroup's CPU limit, in CPUs.
    pub cpus: u32,
    /// Open files the VMM may have.
    pub max_files: u64,
    /// A network namespace of its own (no network devices yet: always).
    pub new_netns: bool,
    /// The jail makes the VMM a cgroup of its own with the limits above.
    /// Without: the VMM stays in the cgroup husk runs in, which its
    /// caller made and limits (husk-runtime's container cgroup).
    pub own_cgroup: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("the jail needs root (run with --no-jail to go without)")]
    NotRoot,
    #[error("jail: {what}")]
    Sys {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn sys(what: impl Into<String>) -> impl FnOnce(io::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Sys { what, source }
}

fn check(ret: libc::c_int, what: &str) -> Result<(), JailError> {
    if ret == -1 {
        Err(sys(what)(io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).expect("no NUL in jail paths")
}

/// Which side of the fork this is.
pub enum Side {
    /// The supervisor, after the jailed VMM ended: exit with this status.
    Supervisor(u8),
    /// The jailed VMM: build and run the VM, then exit.
    Jailed,
}

/// The cgroup hierarchy in use: v2 where it has the memory and cpu
/// controllers, else v1's memory and cpu hierarchies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroups {
    V2(PathBuf),
    V1 { memory: PathBuf, cpu: PathBuf },
}

impl Cgroups {
    /// Finds where to make husk's cgroups on this host.
    pub fn detect() -> Option<Self> {
        for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
            let controllers = std::fs::read_to_string(Path::new(root).join("cgroup.controllers"));
            if let Ok(c) = controllers {
                let has = |name: &str| c.split_whitespace().any(|x| x == name);
                if has("memory") && has("cpu") {
                    return Some(Cgroups::V2(root.into()));
                }
            }
        }
        let memory = PathBuf::from("/sys/fs/cgroup/memory");
        let cpu = ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.join("cpu.cfs_quota_us").exists())?;
        memory
            .join("memory.limit_in_bytes")
            .exists()
            .then_some(Cgroups::V1 { memory, cpu })
    }

    /// The cgroup folders of supervisor `pid`.
    pub fn dirs(&self, pid: u32) -> Vec<PathBuf> {
        let name = format!("{CGROUP_PREFIX}{pid}");
        match self {
            Cgroups::V2(root) => vec![root.join(name)],
            Cgroups::V1 { memory, cpu } => vec![memory.join(&name), cpu.join(name)],
        }
    }

    /// Makes the cgroup with its limits and moves `child` into it.
    fn create(&self, pid: u32, child: libc::pid_t, cfg: &JailConfig) -> Result<(), JailError> {
        let write = |dir: &Path, file: &str, value: String| {
            std::fs::write(dir.join(file), &value).map_err(sys(format!(
                "cannot write {value} to {}",
                dir.join(file).display()
            )))
        };
        let period = CPU_PERIOD;
        let quota = period * u64::from(cfg.cpus.max(1));
        for dir in self.dirs(pid) {
            std::fs::create_dir(&dir).map_err(sys(format!("cannot create {}", dir.display())))?;
        }
        match self {
            Cgroups::V2(_) => {
                let dir = &self.dirs(pid)[0];
                for (file, value) in v2_limits(cfg.memory_limit, cfg.cpus) {
                    let written = write(dir, file, value);
                    // A host may have no swap accounting.
                    if file != "memory.swap.max" {
                        written?;
                    }
                }
                write(dir, "cgroup.procs", child.to_string())?;
            }
            Cgroups::V1 { .. } => {
                let dirs = self.dirs(pid);
                write(
                    &dirs[0],
                    "memory.limit_in_bytes",
                    cfg.memory_limit.to_string(),
                )?;
                write(&dirs[1], "cpu.cfs_period_us", period.to_string())?;
                write(&dirs[1], "cpu.cfs_quota_us", quota.to_string())?;
                for d in &dirs {
                    write(d, "cgroup.procs", child.to_string())?;
                }
            }
        }
        Ok(())
    }
}

/// The CPU limit's period, in microseconds.
const CPU_PERIOD: u64 = 100_000;

/// A VM's cgroup v2 limits, as (file, value): `memory` bytes, no swap,
/// and `cpus` CPUs.
pub fn v2_limits(memory: u64, cpus: u32) -> [(&'static str, String); 3] {
    let quota = CPU_PERIOD * u64::from(cpus.max(1));
    [
        ("memory.max", memory.to_string()),
        ("memory.swap.max", "0".to_string()),
        ("cpu.max", format!("{quota} {CPU_PERIOD}")),
    ]
}

fn alive(pid: &str) -> bool {
    Path::new("/proc").join(pid).exists()
}

/// Removes jail folders and cgroups of supervisors that are gone (killed
/// before they could clean up).
pub fn sweep(cgroups: Option<&Cgroups>) {
    if let Ok(entries) = std::fs::read_dir(JAIL_DIR) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !alive(&name) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
    let parents: Vec<PathBuf> = match cgroups {
        Some(Cgroups::V2(root)) => vec![root.clone()],
        Some(Cgroups::V1 { memory, cpu }) => vec![memory.clone(), cpu.clone()],
        None => Vec::new(),
    };
    for parent in parents {
        if let Ok(entries) = std::fs::read_dir(&parent) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix(CGROUP_PREFIX) {
                    if !alive(pid) {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
        }
    }
}

/// The side of the fork [`enter`]'s `after_fork` runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// The VMM's process, right after the fork, while it can still see
    /// the host's files (e.g. to open `/proc/self`).
    Child,
    /// The supervisor, right after the fork, before it waits for the
    /// VMM: back in its own PID namespace for what it starts, so it may
    /// start threads, and programs that outlive the VMM.
    Supervisor,
}

/// Forks into supervisor and jailed VMM. Call with no other thread
/// running. `after_fork` runs once on each side of the fork.
pub fn enter(cfg: &JailConfig, mut after_fork: impl FnMut(Forked)) -> Result<Side, JailError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(JailError::NotRoot);
    }
    let cgroups = Cgroups::detect();
    sweep(cgroups.as_ref());
    let cgroups = cgroups.filter(|_| cfg.own_cgroup);
    let pid = std::process::id();
    let jail = Path::new(JAIL_DIR).join(pid.to_string());
    std::fs::create_dir_all(&jail).map_err(sys(format!("cannot create {}", jail.display())))?;

    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    check(ret, "pipe2")?;
    // SAFETY: pipe2 returned two new descriptors, owned from here on.
    let (ready_r, ready_w) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // This process's own PID namespace, for its children after the fork.
    let own_pid_ns =
        std::fs::File::open("/proc/self/ns/pid").map_err(sys("cannot open /proc/self/ns/pid"))?;
    // Children from here on start in a new PID namespace (this process
    // stays where it is).
    // SAFETY: unshare with a valid flag.
    let ret = unsafe { libc::unshare(libc::CLONE_NEWPID) };
    check(ret, "new PID namespace")?;
    // SAFETY: the caller runs no other thread; the child only makes system
    // calls and returns to single-threaded code.
    let child = unsafe { libc::fork() };
    match child {
        -1 => Err(sys("fork")(io::Error::last_os_error())),
        0 => {
            drop(ready_w);
            drop(own_pid_ns);
            after_fork(Forked::Child);
            become_jailed(cfg, &jail, ready_r)?;
            Ok(Side::Jailed)
        }
        child => {
            drop(ready_r);
            // Back to its own PID namespace for what it starts from now
            // on: threads (which the kernel refuses while children would
            // start in another) and programs that outlive the VM.
            // SAFETY: setns with a namespace descriptor we own and its
            // matching flag; it changes only where later children start.
            if unsafe { libc::setns(own_pid_ns.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
                tracing::warn!(
                    "the supervisor cannot return to its PID namespace: {}",
                    io::Error::last_os_error()
                );
            }
            drop(own_pid_ns);
            after_fork(Forked::Supervisor);
            let setup = cgroups
                .as_ref()
                .map(|c| c.create(pid, child, cfg))
                .transpose();
            let mut ready_w = std::fs::File::from(ready_w);
            let status = match setup {
                Ok(_) => {
                    // A child that died already must not take the
                    // supervisor with it through SIGPIPE.
                    // SAFETY: changing SIGPIPE's disposition around one write.
                    let old = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
                    let _ = ready_w.write_all(b"1");
                    // SAFETY: restoring the disposition saved above.
                    unsafe { libc::signal(libc::SIGPIPE, old) };
                    // Held open while the child lives: its end reads as
                    // hung up once this process is gone.
                    let status = wait(child);
                    drop(ready_w);
                    status
                }
                Err(e) => {
                    // The child sees the pipe close without a go and exits.
                    drop(ready_w);
                    let _ = wait(child);
                    cleanup(&jail, cgroups.as_ref(), pid);
                    return Err(e);
                }
            };
            cleanup(&jail, cgroups.as_ref(), pid);
            if cgroups.is_none() && cfg.own_cgroup {
                tracing::warn!("no cgroup hierarchy with memory and cpu controllers: the jailed VMM ran without resource limits");
            }
            Ok(Side::Supervisor(status))
        }
    }
}

/// The child's exit status as a shell reports it; says how it died.
fn wait(child: libc::pid_t) -> u8 {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let r = unsafe { libc::waitpid(child, &mut status, 0) };
        if r == child {
            break;
        }
        if r == -1 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return 1;
        }
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u8
    } else {
        let sig = libc::WTERMSIG(status);
        let _ = writeln!(
            io::stderr(),
            "husk: the jailed VMM was killed by signal {sig}"
        );
        128u8.wrapping_add(sig as u8)
    }
}

fn cleanup(jail: &Path, cgroups: Option<&Cgroups>, pid: u32) {
    let _ = std::fs::remove_dir(jail);
    if let Some(c) = cgroups {
        for dir in c.dirs(pid) {
            // The child has been reaped: the cgroup is empty; removal can
            // still race the kernel's own cleanup, which on a loaded host
            // (the test bed under CI) took more than a second: up to 5 s.
            for _ in 0..250 {
                if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// The child's side: wait for the cgroup, then namespaces, the empty
/// root, limits and the drop to the unprivileged user.
fn become_jailed(cfg: &JailConfig, jail: &Path, ready: OwnedFd) -> Result<(), JailError> {
    // SAFETY: prctl with valid arguments.
    let ret = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    check(ret, "parent-death signal")?;
    // The supervisor holds the pipe's only write end: if it died before
    // the death signal was armed, this read sees the end of the pipe.
    let mut go = [0u8; 1];
    let mut ready = std::fs::File::from(ready);
    if ready.read(&mut go).ok() != Some(1) {
        // SAFETY: leaving the child without running anything else.
        unsafe { libc::_exit(1) };
    }

    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    if cfg.new_netns {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: unshare with valid flags.
    check(unsafe { libc::unshare(flags) }, "new namespaces")?;
    let name = b"husk-vmm";
    // SAFETY: the buffer is valid for its length.
    let ret = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    check(ret, "hostname")?;

    let none = CString::new("none").expect("static");
    let root = CString::new("/").expect("static");
    let tmpfs = CString::new("tmpfs").expect("static");
    let jail_c = cstr(jail);
    let opts = CString::new("size=16k,mode=0755").expect("static");
    // SAFETY: every pointer is a NUL-terminated string or null; mount(2)
    // reads them only.
    unsafe {
        // Nothing done here propagates back to the host.
        check(
            libc::mount(
                none.as_ptr(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            "make / private",
        )?;
        check(
            libc::mount(
                tmpfs.as_ptr(),
                jail_c.as_ptr(),
                tmpfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                opts.as_ptr().cast(),
            ),
            "mount the jail's tmpfs",
        )?;
    }
    limit_resources(cfg)?;
    let old = jail.join("old");
    std::fs::create_dir(&old).map_err(sys("create the old-root folder"))?;
    let old_c = cstr(&old);
    let old_in = CString::new("/old").expect("static");
    // SAFETY: as above; pivot_root has no libc wrapper, so the raw syscall.
    unsafe {
        check(
            libc::syscall(libc::SYS_pivot_root, jail_c.as_ptr(), old_c.as_ptr()) as libc::c_int,
            "pivot_root",
        )?;
        check(libc::chdir(root.as_ptr()), "chdir /")?;
        check(
            libc::umount2(old_in.as_ptr(), libc::MNT_DETACH),
            "detach the old root",
        )?;
        check(libc::rmdir(old_in.as_ptr()), "remove the old-root folder")?;
        check(
            libc::mount(
                none.as_ptr(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                std::ptr::null(),
            ),
            "make the jail read-only",
        )?;
    }

    drop_privileges(cfg.uid, cfg.gid)?;
    // Changing credentials disarmed the parent-death signal: arm it again,
    // then make sure the supervisor did not die in between.
    // SAFETY: prctl with valid arguments.
    let ret = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    check(ret, "parent-death signal")?;
    let mut pfd = libc::pollfd {
        fd: ready.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    if unsafe { libc::poll(&mut pfd, 1, 0) } != 0 && pfd.revents & libc::POLLHUP != 0 {
        // SAFETY: the supervisor is gone; leave at once.
        unsafe { libc::_exit(1) };
    }
    drop(ready);
    Ok(())
}

/// Lower limits: open files, and no core dumps (guest memory).
fn limit_resources(cfg: &JailConfig) -> Result<(), JailError> {
    for (resource, limit) in [(libc::RLIMIT_NOFILE, cfg.max_files), (libc::RLIMIT_CORE, 0)] {
        let lim = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: a valid rlimit; lowering limits needs no capability.
        check(unsafe { libc::setrlimit(resource, &lim) }, "resource limit")?;
    }
    Ok(())
}

/// To `uid`:`gid` with no supplementary groups and every capability set
/// empty (bounding, ambient, inheritable; setuid clears the others).
fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    // SAFETY: plain prctl/setgroups/setres*id/capset calls with valid
    // arguments; the capset header and data are owned locals.
    unsafe {
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse::<libc::c_ulong>().ok())
            .unwrap_or(63);
        for cap in 0..=last_cap {
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        check(
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ),
            "clear ambient capabilities",
        )?;
        check(libc::setgroups(0, std::ptr::null()), "setgroups")?;
        check(libc::setresgid(gid, gid, gid), "setresgid")?;
        check(libc::setresuid(uid, uid, uid), "setresuid")?;
        #[repr(C)]
        struct CapHeader {
            version: u32,
            pid: libc::c_int,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct CapData {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const CAPS_V3: u32 = 0x2008_0522;
        let mut header = CapHeader {
            version: CAPS_V3,
            pid: 0,
        };
        let data = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        check(
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) as libc::c_int,
            "capset",
        )?;
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            "no_new_privs",
        )?;
    }
    Ok(())
}
