//! How a process enters its container and narrows itself, as an OCI
//! process asks: prepared in init (where memory may be allocated), done
//! by the forked child before exec (where it may not), in runc's order.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use husk_init::user::Identity;

use crate::sys::{check, open_proc};

/// What narrows a process beyond its user and groups, as an OCI process
/// asks: resource limits, capability sets, `no_new_privs`.
#[derive(Debug, Clone, Default)]
pub struct Restrictions {
    pub rlimits: Vec<agent::Rlimit>,
    pub capabilities: Option<agent::Capabilities>,
    pub no_new_privileges: bool,
    /// Seccomp BPF programs, packed as `agent::pack_bpf` packs them.
    pub seccomp: Vec<Vec<u64>>,
}

/// The capabilities this kernel knows, as a mask (bits past
/// `cap_last_cap` make `capset` fail).
fn known_capabilities() -> u64 {
    let last: u32 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
        .min(63);
    u64::MAX >> (63 - last)
}

/// In the child, before exec: a new session with the console as its
/// controlling terminal, then the identity and restrictions in runc's
/// order: resource limits and the bounding set while still root, the
/// groups, gid and uid (keeping the permitted capabilities across the
/// change), the capability sets, the ambient ones, then `no_new_privs`.
pub fn drop_to(command: &mut Command, id: Identity, limits: Restrictions) {
    let caps = limits.capabilities.map(|c| {
        let known = known_capabilities();
        agent::Capabilities {
            bounding: c.bounding & known,
            effective: c.effective & known,
            permitted: c.permitted & known,
            inheritable: c.inheritable & known,
            ambient: c.ambient & known,
        }
    });
    let programs: Vec<Vec<libc::sock_filter>> = limits
        .seccomp
        .iter()
        .map(|p| {
            p.iter()
                .map(|i| {
                    let (code, jt, jf, k) = agent::unpack_bpf(*i);
                    libc::sock_filter { code, jt, jf, k }
                })
                .collect()
        })
        .collect();
    // Installed while still root (runc's order) unless no_new_privs lets
    // an unprivileged process install them, then as late as can be.
    let seccomp_early = !limits.no_new_privileges;
    // SAFETY: the closure runs in the forked child and only makes
    // async-signal-safe system calls on memory prepared before the fork;
    // it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            // The command starts with no signal blocked (init blocks the
            // ones it waits for, and a mask survives exec).
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            check(libc::setsid())?;
            if libc::isatty(0) == 1 {
                // Best effort: a console that is not a tty has no session.
                libc::ioctl(0, libc::TIOCSCTTY, 0);
            }
            for r in &limits.rlimits {
                let value = libc::rlimit {
                    rlim_cur: r.soft,
                    rlim_max: r.hard,
                };
                check(libc::setrlimit(r.resource as _, &value))?;
            }
            if let Some(c) = &caps {
                for cap in 0..64 {
                    if c.bounding & (1 << cap) == 0
                        && libc::prctl(libc::PR_CAPBSET_DROP, cap) != 0
                        && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                check(libc::prctl(libc::PR_SET_KEEPCAPS, 1))?;
            }
            if seccomp_early {
                install_seccomp(&programs)?;
            }
            check(libc::setgroups(id.groups.len(), id.groups.as_ptr()))?;
            check(libc::setgid(id.gid))?;
            check(libc::setuid(id.uid))?;
            if let Some(c) = &caps {
                check(libc::prctl(libc::PR_SET_KEEPCAPS, 0))?;
                set_capabilities(c)?;
                for cap in 0..64 {
                    if c.ambient & (1 << cap) != 0 {
                        check(libc::prctl(
                            libc::PR_CAP_AMBIENT,
                            libc::PR_CAP_AMBIENT_RAISE,
                            cap,
                            0,
                            0,
                        ))?;
                    }
                }
            }
            if limits.no_new_privileges {
                check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            }
            if !seccomp_early {
                install_seccomp(&programs)?;
            }
            Ok(())
        });
    }
}

/// Installs each seccomp program on the calling thread. Async-signal-safe.
fn install_seccomp(programs: &[Vec<libc::sock_filter>]) -> io::Result<()> {
    for p in programs {
        let prog = libc::sock_fprog {
            len: p.len() as libc::c_ushort,
            filter: p.as_ptr().cast_mut(),
        };
        // SAFETY: the program and its header live for the call; the kernel
        // copies the instructions and checks them.
        check(unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            )
        })?;
    }
    Ok(())
}

/// capset(2) of the effective, permitted and inheritable sets (version 3:
/// two 32-bit words per set). Async-signal-safe.
fn set_capabilities(c: &agent::Capabilities) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let word = |mask: u64, i: u32| (mask >> (32 * i)) as u32;
    let data = [0, 1].map(|i| Data {
        effective: word(c.effective, i),
        permitted: word(c.permitted, i),
        inheritable: word(c.inheritable, i),
    });
    // SAFETY: capset reads a version-3 header and two data structs, laid
    // out as the kernel's (repr(C)), alive for the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How a process enters its container, prepared in init (where memory may
/// be allocated) for the forked child (where it may not).
pub struct Entry {
    way: Way,
    /// The `cgroup.procs` of the container's cgroup, which the child
    /// moves itself into first.
    cgroup: Option<OwnedFd>,
}

enum Way {
    /// The guest's own root and mounts: only the cgroup is the
    /// container's, and with `own_proc` a mount namespace whose only
    /// change is a `/proc` of the process's own PID namespace.
    Here { own_proc: bool },
    /// A new mount namespace rooted at a folder.
    New(NewRoot),
    /// Another process's container: its mount namespace and its root.
    Join { ns: OwnedFd, root: OwnedFd },
}

impl Entry {
    /// A new container rooted as `root` says.
    pub fn new(root: NewRoot) -> Entry {
        Entry {
            way: Way::New(root),
            cgroup: None,
        }
    }

    /// A container in the guest's own root: its cgroup, whose
    /// `cgroup.procs` is `procs`, and with `own_proc` a `/proc` of its own
    /// (for a process born in a PID namespace of its own).
    pub fn here(procs: OwnedFd, own_proc: bool) -> Entry {
        Entry {
            way: Way::Here { own_proc },
            cgroup: Some(procs),
        }
    }

    /// The child moves itself into the cgroup whose `cgroup.procs` is
    /// `procs` before anything else.
    pub fn in_cgroup(self, procs: OwnedFd) -> Entry {
        Entry {
            cgroup: Some(procs),
            ..self
        }
    }
}

/// A container's root and its mounts, as paths the child passes to the
/// kernel unchanged.
pub struct NewRoot {
    root: CString,
    readonly: bool,
    /// (source, target, fstype, flags, data); target under `root`.
    mounts: Vec<(CString, CString, CString, libc::c_ulong, CString)>,
    /// Bind mounts to make read-only once mounted (targets).
    readonly_binds: Vec<CString>,
}

impl NewRoot {
    /// The standard mounts (`/proc`, read-only `/sys`, the guest's `/dev`)
    /// then `mounts`. Missing mount points are made here, before the
    /// fork: folders, or an empty file for a file's bind mount.
    pub fn prepare(container: &agent::Container) -> io::Result<Self> {
        const NOSUID_NODEV_NOEXEC: libc::c_ulong =
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        let root = std::path::Path::new(&container.root);
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("the container's root {} is not a folder", container.root),
            ));
        }
        let c = |s: &str| {
            CString::new(s)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a path"))
        };
        let target = |inside: &str, file: bool| -> io::Result<CString> {
            let path = root.join(inside.trim_start_matches('/'));
            if file {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)?;
                }
                if !path.exists() {
                    fs::File::create(&path)?;
                }
            } else if !path.is_dir() {
                fs::create_dir_all(&path)?;
            }
            c(&path.to_string_lossy())
        };
        let mut new = NewRoot {
            root: c(&container.root)?,
            readonly: container.readonly,
            mounts: Vec::new(),
            readonly_binds: Vec::new(),
        };
        let standard: [(&str, &str, &str, libc::c_ulong); 3] = [
            ("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC),
            (
                "sysfs",
                "/sys",
                "sysfs",
                NOSUID_NODEV_NOEXEC | libc::MS_RDONLY,
            ),
            ("/dev", "/dev", "", libc::MS_BIND | libc::MS_REC),
        ];
        for (source, inside, fstype, flags) in standard {
            let t = target(inside, false)?;
            new.mounts.push((c(source)?, t, c(fstype)?, flags, c("")?));
        }
        for m in &container.mounts {
            match m {
                agent::Mount::Bind {
                    source,
                    target: inside,
                    readonly,
                } => {
                    let file = !std::path::Path::new(source).is_dir();
                    let t = target(inside, file)?;
                    if *readonly {
                        new.readonly_binds.push(t.clone());
                    }
                    new.mounts
                        .push((c(source)?, t, c("")?, libc::MS_BIND | libc::MS_REC, c("")?));
                }
                agent::Mount::Tmpfs {
                    target: inside,
                    options,
                } => {
                    let t = target(inside, false)?;
                    let flags = libc::MS_NOSUID | libc::MS_NODEV;
                    new.mounts
                        .push((c("tmpfs")?, t, c("tmpfs")?, flags, c(options)?));
                }
            }
        }
        Ok(new)
    }
}

/// Opens what joining process `pid`'s container takes.
pub fn join(pid: libc::pid_t) -> io::Result<Entry> {
    Ok(Entry {
        way: Way::Join {
            ns: open_proc(Some(pid), "ns/mnt", libc::O_RDONLY)?,
            root: open_proc(Some(pid), "root", libc::O_RDONLY | libc::O_DIRECTORY)?,
        },
        cgroup: None,
    })
}

/// In the child, before the identity drops: enter the container, then
/// its working directory.
pub fn enter(command: &mut Command, entry: Entry, workdir: &str) {
    let workdir = CString::new(workdir).unwrap_or_else(|_| c"/".into());
    // SAFETY: the closure runs in the forked child, before exec; it uses
    // only what was prepared before the fork (or literals) and makes
    // async-signal-safe system calls (write, unshare, mount, pivot_root,
    // setns, chroot, chdir), allocating nothing.
    unsafe {
        command.pre_exec(move || {
            if let Some(procs) = &entry.cgroup {
                // "0": the writing process itself.
                let moved = libc::write(procs.as_raw_fd(), c"0".as_ptr().cast(), 1);
                if moved != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            match &entry.way {
                Way::Here { own_proc: false } => {}
                Way::Here { own_proc: true } => {
                    check(libc::unshare(libc::CLONE_NEWNS))?;
                    check(libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_SLAVE,
                        std::ptr::null(),
                    ))?;
                    check(libc::mount(
                        c"proc".as_ptr(),
                        c"/proc".as_ptr(),
                        c"proc".as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        std::ptr::null(),
                    ))?;
                }
                Way::New(new) => enter_new(new)?,
                Way::Join { ns, root } => {
                    check(libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS))?;
                    check(libc::fchdir(root.as_raw_fd()))?;
                    check(libc::chroot(c".".as_ptr()))?;
                }
            }
            check(libc::chdir(workdir.as_ptr()))
        });
    }
}

/// A mount namespace of the child's own, its root the container's: what
/// it mounts does not reach init's namespace, and `pivot_root` leaves
/// the guest's own root out of it (where the guest's root cannot be
/// pivoted, as an initramfs's cannot, the root is moved and chrooted into).
/// Only for a forked child before exec: it changes the calling process's
/// mounts and root.
fn enter_new(new: &NewRoot) -> io::Result<()> {
    let null = std::ptr::null();
    let none = c"".as_ptr();
    // SAFETY: every pointer is null or one of `new`'s NUL-terminated
    // strings (or a literal), alive for the whole block; the calls only
    // read them.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            null,
            c"/".as_ptr(),
            null,
            libc::MS_REC | libc::MS_SLAVE,
            null.cast(),
        ))?;
        // pivot_root needs the new root to be a mount point.
        check(libc::mount(
            new.root.as_ptr(),
            new.root.as_ptr(),
            null,
            libc::MS_BIND | libc::MS_REC,
            null.cast(),
        ))?;
        for (source, target, fstype, flags, data) in &new.mounts {
            let fstype = if fstype.is_empty() {
                null
            } else {
                fstype.as_ptr()
            };
            let data = if data.is_empty() {
                null.cast()
            } else {
                data.as_ptr().cast()
            };
            check(libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype,
                *flags,
                data,
            ))?;
        }
        let remount_ro = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
        for target in &new.readonly_binds {
            check(libc::mount(
                none,
                target.as_ptr(),
                null,
                remount_ro,
                null.cast(),
            ))?;
        }
        if new.readonly {
            check(libc::mount(
                none,
                new.root.as_ptr(),
                null,
                remount_ro,
                null.cast(),
            ))?;
        }
        check(libc::chdir(new.root.as_ptr()))?;
        let dot = c".".as_ptr();
        if libc::syscall(libc::SYS_pivot_root, dot, dot) == 0 {
            // The old root is stacked under the new one: gone from view.
            check(libc::umount2(dot, libc::MNT_DETACH))?;
        } else {
            check(libc::mount(
                dot,
                c"/".as_ptr(),
                null,
                libc::MS_MOVE,
                null.cast(),
            ))?;
            check(libc::chroot(dot))?;
        }
        check(libc::chdir(c"/".as_ptr()))
    }
}
