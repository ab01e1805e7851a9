//! The jail around the VMM process (`husk run --jail`, the default for
//! root), entered after [`crate::open_host_files`] and before the VM is
//! built.
//!
//! husk forks, the child started in a cgroup with memory and CPU limits
//! (or moved there where it cannot start there). The parent stays outside
//! as the supervisor: it waits for the child, relays its
//! exit status, and removes the jail folder and the cgroup, also when the
//! child was killed. The child (PID 1 of a new PID namespace) enters new
//! mount, IPC and UTS namespaces, pivot_roots into an empty read-only
//! tmpfs (every file the VMM needs is already open), limits its open
//! files, drops to an unprivileged user with no capabilities, sets
//! no_new_privs, and returns to build the VM. From the host's network it
//! is kept by Landlock's scopes where the kernel has them and the seccomp
//! filter refuses sockets (see [`landlock`]), else by a network namespace
//! of its own.
//! If the supervisor dies the child is killed (`PR_SET_PDEATHSIG`); what
//! such a crash leaves behind is removed by the next `husk run`.

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

pub mod landlock;

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
    /// How the VMM is kept from the host's network.
    pub network: NetworkFence,
    /// The jail makes the VMM a cgroup of its own with the limits above.
    /// Without: the VMM stays in the cgroup husk runs in, which its
    /// caller made and limits (husk-runtime's container cgroup).
    pub own_cgroup: bool,
}

/// What keeps a jailed VMM from the host's network namespace: its
/// abstract Unix sockets, and IP where a socket could still be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkFence {
    /// An empty network namespace of the VMM's own.
    Namespace,
    /// Landlock's scopes ([`landlock::restrict`]) where the kernel has
    /// them (Linux 6.12), else a namespace. Only for a VMM whose seccomp
    /// filters refuse `socket`, `connect` and `bind`.
    Landlock,
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

    /// Makes supervisor `pid`'s cgroup with its limits.
    fn make(&self, pid: u32, cfg: &JailConfig) -> Result<(), JailError> {
        let dirs = self.dirs(pid);
        for dir in &dirs {
            std::fs::create_dir(dir).map_err(sys(format!("cannot create {}", dir.display())))?;
        }
        match self {
            Cgroups::V2(_) => {
                for (file, value) in v2_limits(cfg.memory_limit, cfg.cpus) {
                    let written = write_cgroup(&dirs[0], file, value);
                    // A host may have no swap accounting.
                    if file != "memory.swap.max" {
                        written?;
                    }
                }
            }
            Cgroups::V1 { .. } => {
                let period = CPU_PERIOD;
                let quota = period * u64::from(cfg.cpus.max(1));
                let memory = cfg.memory_limit.to_string();
                write_cgroup(&dirs[0], "memory.limit_in_bytes", memory)?;
                write_cgroup(&dirs[1], "cpu.cfs_period_us", period.to_string())?;
                write_cgroup(&dirs[1], "cpu.cfs_quota_us", quota.to_string())?;
            }
        }
        Ok(())
    }

    /// Moves `child` into supervisor `pid`'s cgroup, made already.
    fn admit(&self, pid: u32, child: libc::pid_t) -> Result<(), JailError> {
        for dir in self.dirs(pid) {
            write_cgroup(&dir, "cgroup.procs", child.to_string())?;
        }
        Ok(())
    }

    /// A v2 cgroup folder to start the VMM in (clone3's
    /// `CLONE_INTO_CGROUP`); v1 has none.
    fn open_v2(&self, pid: u32) -> Result<Option<OwnedFd>, JailError> {
        match self {
            Cgroups::V2(_) => {
                let dir = &self.dirs(pid)[0];
                let file = std::fs::File::open(dir)
                    .map_err(sys(format!("cannot open {}", dir.display())))?;
                Ok(Some(file.into()))
            }
            Cgroups::V1 { .. } => Ok(None),
        }
    }
}

fn write_cgroup(dir: &Path, file: &str, value: String) -> Result<(), JailError> {
    std::fs::write(dir.join(file), &value).map_err(sys(format!(
        "cannot write {value} to {}",
        dir.join(file).display()
    )))
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

    // The cgroup is made before the fork so that the VMM can start in it.
    let cgroup = match &cgroups {
        Some(c) => match c.make(pid, cfg).and_then(|()| c.open_v2(pid)) {
            Ok(fd) => fd,
            Err(e) => {
                cleanup(&jail, Some(c), pid);
                return Err(e);
            }
        },
        None => None,
    };

    let prepared = (|| {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid array of two ints.
        let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        check(ret, "pipe2")?;
        // SAFETY: pipe2 returned two new descriptors, owned from here on.
        let pipe = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // This process's own PID namespace, for its children after the fork.
        let own_pid_ns = std::fs::File::open("/proc/self/ns/pid")
            .map_err(sys("cannot open /proc/self/ns/pid"))?;
        // Children from here on start in a new PID namespace (this process
        // stays where it is).
        // SAFETY: unshare with a valid flag.
        let ret = unsafe { libc::unshare(libc::CLONE_NEWPID) };
        check(ret, "new PID namespace")?;
        Ok((pipe, own_pid_ns))
    })();
    let ((ready_r, ready_w), own_pid_ns) = match prepared {
        Ok(p) => p,
        Err(e) => {
            cleanup(&jail, cgroups.as_ref(), pid);
            return Err(e);
        }
    };
    let forked = fork_into(cgroup.as_ref());
    drop(cgroup);
    match forked {
        Err(e) => {
            cleanup(&jail, cgroups.as_ref(), pid);
            Err(sys("fork")(e))
        }
        Ok(Fork::Child) => {
            drop(ready_w);
            drop(own_pid_ns);
            after_fork(Forked::Child);
            become_jailed(cfg, &jail, ready_r)?;
            Ok(Side::Jailed)
        }
        Ok(Fork::Parent { child, placed }) => {
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
            let setup = match &cgroups {
                Some(c) if !placed => c.admit(pid, child),
                _ => Ok(()),
            };
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

/// What [`fork_into`] returns on each side.
enum Fork {
    Child,
    /// `placed`: the child started in the cgroup.
    Parent {
        child: libc::pid_t,
        placed: bool,
    },
}

/// `CLONE_INTO_CGROUP` (Linux 5.7), which the libc crate gives only as a
/// deprecated, overflowing `c_int`.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// prctl's `PR_GET_TID_ADDRESS`, absent from the libc crate on glibc.
const PR_GET_TID_ADDRESS: libc::c_int = 40;

/// This thread's clear-child-TID address: where glibc keeps its thread
/// ID (set at its start with set_tid_address). `None` where the kernel
/// does not say (PR_GET_TID_ADDRESS needs CONFIG_CHECKPOINT_RESTORE).
fn tid_slot() -> Option<*mut libc::c_int> {
    let mut slot: *mut libc::c_int = std::ptr::null_mut();
    // SAFETY: PR_GET_TID_ADDRESS writes one pointer to slot.
    let ret = unsafe {
        libc::prctl(
            PR_GET_TID_ADDRESS,
            &mut slot as *mut *mut libc::c_int,
            0,
            0,
            0,
        )
    };
    (ret == 0 && !slot.is_null()).then_some(slot)
}

/// Forks; where `cgroup` (a v2 cgroup folder) is given and the kernel
/// can, the child starts in it (clone3 with `CLONE_INTO_CGROUP`). Moving
/// a running process into a cgroup waits for an RCU grace period (6 to
/// 28 ms measured on this project's hosts and test bed, each run), most of
/// a warm start's time on hardware KVM; starting it there costs nothing
/// beyond the fork. Where clone3 is refused (an older kernel, a seccomp
/// profile that answers it ENOSYS), a plain fork, and the caller moves the
/// child.
///
/// Call with no other thread running, as for `fork`.
fn fork_into(cgroup: Option<&OwnedFd>) -> io::Result<Fork> {
    if let Some(cgroup) = cgroup {
        // The child of a raw clone3 must look to glibc as a forked one
        // does: glibc's fork has the kernel write the child's thread ID
        // into the thread's own record (its clear-child-TID address,
        // which PR_GET_TID_ADDRESS reads back), and registers its robust
        // futex list again (a child starts without one).
        let mut robust: *mut libc::c_void = std::ptr::null_mut();
        let mut robust_len: libc::size_t = 0;
        // SAFETY: get_robust_list(0, ..) writes this thread's list head
        // and length to the two out-pointers.
        let robust_known = unsafe {
            libc::syscall(
                libc::SYS_get_robust_list,
                0,
                &mut robust as *mut *mut libc::c_void,
                &mut robust_len as *mut libc::size_t,
            ) == 0
        };
        if let Some(tid_slot) = tid_slot().filter(|_| robust_known) {
            let mut args = libc::clone_args {
                flags: CLONE_INTO_CGROUP
                    | libc::CLONE_CHILD_SETTID as u64
                    | libc::CLONE_CHILD_CLEARTID as u64,
                pidfd: 0,
                child_tid: tid_slot as u64,
                parent_tid: 0,
                exit_signal: libc::SIGCHLD as u64,
                stack: 0,
                stack_size: 0,
                tls: 0,
                set_tid: 0,
                set_tid_size: 0,
                cgroup: cgroup.as_raw_fd() as u64,
            };
            // SAFETY: clone3 with no stack given duplicates this process
            // as fork does (the child returns here on a copy of this
            // stack); the caller runs no other thread, so no lock is held
            // that the child could wait on; child_tid is this thread's
            // own clear-child-TID slot, as glibc's fork passes it.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_clone3,
                    &mut args as *mut libc::clone_args,
                    std::mem::size_of::<libc::clone_args>(),
                )
            };
            match r {
                0 => {
                    // SAFETY: the list head read above, in this process's
                    // copy of the same memory.
                    unsafe { libc::syscall(libc::SYS_set_robust_list, robust, robust_len) };
                    return Ok(Fork::Child);
                }
                child if child > 0 => {
                    return Ok(Fork::Parent {
                        child: child as libc::pid_t,
                        placed: true,
                    })
                }
                _ => tracing::debug!(
                    "clone3 into the cgroup refused ({}): forking, then moving the VMM",
                    io::Error::last_os_error()
                ),
            }
        }
    }
    // SAFETY: the caller runs no other thread; the child only makes system
    // calls and returns to single-threaded code.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Fork::Child),
        child => Ok(Fork::Parent {
            child,
            placed: false,
        }),
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

    let landlock = cfg.network == NetworkFence::Landlock && landlock::can_scope();
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    if !landlock {
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
    if landlock {
        // After no_new_privs, which it needs; this thread is the child's
        // only one, and every VMM thread starts from it.
        landlock::restrict().map_err(sys("Landlock's scopes"))?;
    }
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
        // Every capability the kernel knows, up to the first it does not
        // (EINVAL): /proc, where cap_last_cap says which that is, is out
        // of sight in the jail.
        for cap in 0..=63 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINVAL) && cap > 0 {
                    break;
                }
                return Err(sys(format!("drop capability {cap} from the bounding set"))(
                    e,
                ));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a whole small file with system calls alone (a forked child
    /// of the multithreaded test harness must not allocate).
    fn read_raw(path: &CString, buf: &mut [u8]) -> usize {
        // SAFETY: a NUL-terminated path; read writes at most buf.len()
        // bytes into buf.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return 0;
            }
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            libc::close(fd);
            n.max(0) as usize
        }
    }

    #[test]
    fn the_vmm_starts_in_its_v2_cgroup_with_its_own_thread_id() {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "this test mounts a cgroup2 hierarchy and makes a cgroup: run it as root (CI does)"
        );
        let mnt = tempfile::tempdir().unwrap();
        let target = cstr(mnt.path());
        let (none, kind) = (
            CString::new("none").unwrap(),
            CString::new("cgroup2").unwrap(),
        );
        // SAFETY: NUL-terminated strings; mount(2) only reads them.
        let ret = unsafe {
            libc::mount(
                none.as_ptr(),
                target.as_ptr(),
                kind.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(ret, 0, "mount cgroup2: {}", io::Error::last_os_error());
        let name = format!("husk-jail-test-{}", std::process::id());
        let dir = mnt.path().join(&name);
        std::fs::create_dir(&dir).unwrap();
        let fd: OwnedFd = std::fs::File::open(&dir).unwrap().into();
        // What the child checks, made before the fork.
        let want = format!("0::/{name}\n");
        let cgroup_file = CString::new("/proc/self/cgroup").unwrap();

        match fork_into(Some(&fd)).unwrap() {
            Fork::Child => {
                let mut buf = [0u8; 1024];
                let n = read_raw(&cgroup_file, &mut buf);
                let text = &buf[..n];
                let in_cgroup = text
                    .split_inclusive(|&b| b == b'\n')
                    .any(|line| line.ends_with(want.as_bytes()));
                // SAFETY: the slot is this thread's own clear-child-TID
                // int (glibc's thread record), valid while it lives.
                let tid_ok = tid_slot().is_some_and(|slot| unsafe {
                    *slot as libc::c_long == libc::syscall(libc::SYS_gettid)
                });
                let code = u8::from(!in_cgroup) | u8::from(!tid_ok) << 1;
                // SAFETY: leaving the child without running the harness.
                unsafe { libc::_exit(code.into()) };
            }
            Fork::Parent { child, placed } => {
                let mut status = 0;
                // SAFETY: status is a valid out-pointer.
                assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
                drop(fd);
                let removed = std::fs::remove_dir(&dir);
                // SAFETY: a NUL-terminated path.
                unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
                removed.unwrap();
                assert!(placed, "clone3 did not start the child in the cgroup");
                assert!(libc::WIFEXITED(status), "child status {status:#x}");
                match libc::WEXITSTATUS(status) {
                    0 => {}
                    1 => panic!("the child is not in {} ({want:?})", dir.display()),
                    2 => panic!("glibc's thread ID of the child is not its own"),
                    c => panic!("the child is neither in its cgroup nor knows its thread ID ({c})"),
                }
            }
        }
    }
}
