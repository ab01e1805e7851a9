//! The system calls PID 1 needs, each wrapped once.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use husk_init::user::Identity;

/// husk's control port (see `runtime/vmm/src/control.rs`).
const CONTROL_PORT: u16 = 0x600;
const KIND_MARK: u32 = 1;
const KIND_STATUS: u32 = 2;
pub const MARK_INIT_RUNNING: u8 = 1;
pub const MARK_COMMAND_STARTED: u8 = 2;

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in fixed strings")
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Mounts what every Linux program expects. A filesystem already mounted
/// (the kernel mounts devtmpfs itself on a disk root) is fine; any other
/// failure is reported and boot goes on.
pub fn mount_filesystems() {
    const NOSUID_NODEV: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV;
    let mounts: [(&str, &str, &str, libc::c_ulong, &str); 7] = [
        ("proc", "/proc", "proc", NOSUID_NODEV | libc::MS_NOEXEC, ""),
        ("sysfs", "/sys", "sysfs", NOSUID_NODEV | libc::MS_NOEXEC, ""),
        ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755"),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "mode=0620,ptmxmode=0666",
        ),
        ("shm", "/dev/shm", "tmpfs", NOSUID_NODEV, "mode=1777"),
        ("tmpfs", "/tmp", "tmpfs", NOSUID_NODEV, "mode=1777"),
        ("tmpfs", "/run", "tmpfs", NOSUID_NODEV, "mode=0755"),
    ];
    for (source, target, fstype, flags, data) in mounts {
        // A read-only root cannot take new folders; the builder makes them.
        let _ = fs::create_dir(target);
        let (src, tgt, ty, dat) = (cstr(source), cstr(target), cstr(fstype), cstr(data));
        // SAFETY: every pointer is a NUL-terminated string that outlives
        // the call; mount(2) only reads them.
        let ret = unsafe {
            libc::mount(
                src.as_ptr(),
                tgt.as_ptr(),
                ty.as_ptr(),
                flags,
                dat.as_ptr().cast(),
            )
        };
        if let Err(e) = check(ret) {
            if e.raw_os_error() != Some(libc::EBUSY) {
                crate::say(&format!("cannot mount {fstype} on {target}: {e}"));
            }
        }
    }
}

/// Makes fds 0-2 the console when the kernel could not open it for init
/// (Rust's runtime then put /dev/null there). That happens when the
/// console driver registers late, as a multiport virtio console does under
/// QEMU: wait up to 3 s for it.
pub fn ensure_console() {
    // SAFETY: isatty only queries the fd.
    if unsafe { libc::isatty(0) } == 1 {
        return;
    }
    let path = cstr("/dev/console");
    let mut fd = -1;
    for _ in 0..300 {
        // SAFETY: path is NUL-terminated; open returns a new fd or -1.
        fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
        if fd >= 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    if fd < 0 {
        return;
    }
    for target in 0..3 {
        if fd != target {
            // SAFETY: dup2 between fds of this process; fd is open.
            unsafe { libc::dup2(fd, target) };
        }
    }
    if fd > 2 {
        // SAFETY: fd is ours and no longer used.
        unsafe { libc::close(fd) };
    }
}

/// The guest side of husk's control port. Under another VMM the writes
/// go nowhere.
pub struct ControlPort {
    usable: bool,
}

impl ControlPort {
    pub fn open() -> Self {
        // SAFETY: ioperm only changes this process's I/O permission bitmap.
        let usable = unsafe { libc::ioperm(CONTROL_PORT.into(), 4, 1) } == 0;
        ControlPort { usable }
    }

    pub fn mark(&self, what: u8) {
        self.write(KIND_MARK << 8 | u32::from(what));
    }

    pub fn status(&self, status: u8) {
        self.write(KIND_STATUS << 8 | u32::from(status));
    }

    fn write(&self, value: u32) {
        if self.usable {
            // SAFETY: ioperm granted this process the port; an `out` to it
            // traps to the VMM (or to nothing) and touches no memory.
            unsafe {
                std::arch::asm!("out dx, eax", in("dx") CONTROL_PORT, in("eax") value,
                    options(nomem, nostack, preserves_flags));
            }
        }
    }
}

pub fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: the buffer is valid for name.len() bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
}

/// In the child, before exec: a new session with the console as its
/// controlling terminal, then the identity (groups before gid before uid,
/// while still allowed).
pub fn drop_to(command: &mut Command, id: Identity) {
    // SAFETY: the closure runs in the forked child of a single-threaded
    // process and only makes async-signal-safe system calls.
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
            check(libc::setgroups(id.groups.len(), id.groups.as_ptr()))?;
            check(libc::setgid(id.gid))?;
            check(libc::setuid(id.uid))?;
            Ok(())
        });
    }
}

/// The signals init handles itself: children ending, and those it forwards.
pub struct SignalSet(libc::sigset_t);

impl SignalSet {
    const FORWARDED: [libc::c_int; 6] = [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ];

    pub fn forwarded() -> Self {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: set is a valid sigset_t.
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            for s in Self::FORWARDED {
                libc::sigaddset(&mut set, s);
            }
        }
        SignalSet(set)
    }

    /// Blocks the set, so the signals wait for `wait_for` (the child
    /// unblocks them in [`drop_to`]).
    pub fn block(&self) {
        // SAFETY: self.0 is a valid set; the old mask is not wanted.
        unsafe { libc::sigprocmask(libc::SIG_BLOCK, &self.0, std::ptr::null_mut()) };
    }

    /// Forwards signals to `pid` and reaps every child until `pid` ends;
    /// returns its raw wait status.
    pub fn wait_for(&self, pid: libc::pid_t) -> i32 {
        loop {
            // SAFETY: self.0 is valid; a null siginfo is allowed.
            let signal = unsafe { libc::sigwaitinfo(&self.0, std::ptr::null_mut()) };
            if signal == libc::SIGCHLD || signal == -1 {
                if let Some(status) = reap(pid) {
                    return status;
                }
            } else {
                // SAFETY: kill(2) with a plain pid and signal number.
                unsafe { libc::kill(pid, signal) };
            }
        }
    }
}

/// Reaps every exited child; the wait status of `pid` if it was one.
fn reap(pid: libc::pid_t) -> Option<i32> {
    let mut found = None;
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out-pointer.
        let reaped = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if reaped <= 0 {
            return found;
        }
        if reaped == pid {
            found = Some(status);
        }
    }
}

/// SIGTERM to every process left, up to a second for them to end, then
/// SIGKILL.
pub fn terminate_others() {
    // SAFETY: kill(-1) signals every process but init itself.
    if unsafe { libc::kill(-1, libc::SIGTERM) } != 0 {
        return; // nobody left
    }
    for _ in 0..100 {
        reap(0);
        // SAFETY: a probe of whether any child is left.
        let left = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if left == -1 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    reap(0);
}

pub fn sync_all() {
    // SAFETY: sync(2) has no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Reboots, which husk's kernel command line (`reboot=t`) turns into a
/// VM exit the VMM sees as shutdown; QEMU with `-no-reboot` exits too.
pub fn power_off() -> ! {
    // SAFETY: reboot(2) with a valid command; it does not return on success.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    crate::say(&format!("reboot failed: {}", io::Error::last_os_error()));
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
