//! The system calls PID 1 needs, each wrapped once.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// husk's control port (see `runtime/vmm/src/control.rs`).
const CONTROL_PORT: u16 = 0x600;
const KIND_MARK: u32 = 1;
const KIND_STATUS: u32 = 2;
pub const MARK_INIT_RUNNING: u8 = 1;
pub const MARK_COMMAND_STARTED: u8 = 2;
const MARK_SNAPSHOT_POINT: u8 = 3;
/// After the status: nothing in the guest needs the VM any more (the
/// VMM may end it before the kernel's power-off).
pub const MARK_DONE: u8 = 4;

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in fixed strings")
}

pub fn check(ret: libc::c_int) -> io::Result<()> {
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

fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong) -> io::Result<()> {
    mount_with(source, target, fstype, flags, "")
}

fn mount_with(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    // Tags, paths and options come from the command line: a NUL is an
    // error, not a panic of PID 1.
    let c = |s: &str| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let (src, tgt, ty, dat) = (c(source)?, c(target)?, c(fstype)?, c(data)?);
    let dat = if data.is_empty() {
        std::ptr::null()
    } else {
        dat.as_ptr().cast()
    };
    // SAFETY: every pointer is a NUL-terminated string that outlives the
    // call (or null for no data); mount(2) only reads them.
    check(unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), ty.as_ptr(), flags, dat) })
}

/// `--tmpfs`: a tmpfs on `t.path` (made when missing) with its options.
pub fn mount_tmpfs(t: &husk_init::config::TmpfsMount) -> io::Result<()> {
    let (flags, data) = t
        .flags_and_data()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    fs::create_dir_all(&t.path)?;
    mount_with("tmpfs", &t.path, "tmpfs", flags, &data)
}

/// Mounts the virtio-fs share `tag` on `target`, making the folder (and
/// its parents) first when it is missing, as container runtimes make the
/// targets of bind mounts.
pub fn mount_share(tag: &str, target: &str, readonly: bool) -> io::Result<()> {
    if !std::path::Path::new(target).is_dir() {
        fs::create_dir_all(target)?;
    }
    let flags = if readonly { libc::MS_RDONLY } else { 0 };
    mount(tag, target, "virtiofs", flags)
}

/// Fills the volume that virtio-fs share `tag` serves with what the image
/// holds at `target`, when the volume is empty and `target` is a folder
/// (docker's first use of a named volume; see [`husk_init::populate`]).
/// The share is mounted for that on a folder of its own in the guest's
/// devtmpfs, then detached and the folder removed. Says whether it
/// copied, and what it skipped.
pub fn populate_share(tag: &str, target: &str) -> io::Result<Option<husk_init::populate::Skipped>> {
    const STAGING: &str = "/dev/.husk-volume";
    if !std::path::Path::new(target).is_dir() {
        return Ok(None);
    }
    fs::create_dir(STAGING)?;
    let copied = mount(tag, STAGING, "virtiofs", 0).and_then(|()| {
        let copied = husk_init::populate::fill(target.as_ref(), STAGING.as_ref());
        let staging = cstr(STAGING);
        // SAFETY: a NUL-terminated path that outlives the call.
        let detached = check(unsafe { libc::umount2(staging.as_ptr(), libc::MNT_DETACH) });
        copied.and_then(|c| detached.map(|()| c))
    });
    let removed = fs::remove_dir(STAGING);
    copied.and_then(|c| removed.map(|()| c))
}

/// Binds each `(name, target, readonly)` file of the virtio-fs share
/// `tag`, which serves single files, onto its target, made (an empty file,
/// and its folders) where it is missing, as container runtimes make the
/// targets of bind mounts. The share is mounted only for that, on a folder
/// of its own in the guest's devtmpfs, then detached and the folder
/// removed: the files' mounts outlive it, and the share is seen nowhere.
pub fn mount_files(tag: &str, files: &[(&str, &str, bool)]) -> io::Result<()> {
    const STAGING: &str = "/dev/.husk-files";
    fs::create_dir(STAGING)?;
    let bound = mount(tag, STAGING, "virtiofs", 0).and_then(|()| {
        let bound = files.iter().try_for_each(|(name, target, readonly)| {
            bind_file(&format!("{STAGING}/{name}"), target, *readonly)
                .map_err(|e| io::Error::new(e.kind(), format!("{target}: {e}")))
        });
        let staging = cstr(STAGING);
        // SAFETY: a NUL-terminated path that outlives the call.
        let detached = check(unsafe { libc::umount2(staging.as_ptr(), libc::MNT_DETACH) });
        bound.and(detached)
    });
    let removed = fs::remove_dir(STAGING);
    bound.and(removed)
}

/// Where a chain of symbolic links from `path` ends (`path` itself when it
/// is no link), followed at most 8 links deep.
fn dangling_end(path: &std::path::Path) -> std::path::PathBuf {
    let mut at = path.to_path_buf();
    for _ in 0..8 {
        match fs::read_link(&at) {
            Ok(next) => {
                at = match at.parent() {
                    Some(dir) if next.is_relative() => dir.join(next),
                    _ => next,
                }
            }
            Err(_) => break,
        }
    }
    at
}

fn bind_file(source: &str, target: &str, readonly: bool) -> io::Result<()> {
    let path = std::path::Path::new(target);
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "it is a folder in the guest",
            ))
        }
        Ok(_) => {}
        Err(_) => {
            // Missing, or a link to what is missing (an image's
            // /etc/resolv.conf -> ../run/systemd/resolve/stub-resolv.conf):
            // make what the link names, as mount(2) follows it.
            let made = dangling_end(path);
            if let Some(parent) = made.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&made)?;
        }
    }
    mount(source, target, "", libc::MS_BIND)?;
    if readonly {
        mount(
            "",
            target,
            "",
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
        )?;
    }
    Ok(())
}

/// Makes the virtio-fs share `tag` the root, as `switch_root` does from
/// an initramfs: mount it, move the API filesystems init mounted into it
/// (where the folder has their mount points: init writes nothing into it),
/// move it onto `/` and enter it. The initramfs's few files (init and its
/// configuration) stay behind in memory, unreachable.
pub fn switch_to_share(tag: &str, readonly: bool) -> io::Result<()> {
    const NEW_ROOT: &str = "/.husk/root";
    fs::create_dir_all(NEW_ROOT)?;
    let flags = if readonly { libc::MS_RDONLY } else { 0 };
    mount(tag, NEW_ROOT, "virtiofs", flags)?;
    for api in ["/dev", "/proc", "/sys", "/run", "/tmp"] {
        let inside = format!("{NEW_ROOT}{api}");
        if std::path::Path::new(&inside).is_dir() {
            mount(api, &inside, "", libc::MS_MOVE)?;
        } else {
            crate::say(&format!(
                "the root folder has no {api}: the command runs without it"
            ));
        }
    }
    std::env::set_current_dir(NEW_ROOT)?;
    mount(".", "/", "", libc::MS_MOVE)?;
    let dot = cstr(".");
    // SAFETY: a NUL-terminated path that outlives the call.
    check(unsafe { libc::chroot(dot.as_ptr()) })?;
    std::env::set_current_dir("/")
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

    /// No control port: on a machine husk does not run, the port may be
    /// another device's.
    pub fn none() -> Self {
        ControlPort { usable: false }
    }

    pub fn mark(&self, what: u8) {
        self.write(KIND_MARK << 8 | u32::from(what));
    }

    pub fn status(&self, status: u8) {
        self.write(KIND_STATUS << 8 | u32::from(status));
    }

    /// The snapshot-point mark, naming the resume area (its virtual
    /// address and pages; 0 and 0: none) in RSI and RDI for the VMM.
    pub fn snapshot_point(&self, area: u64, pages: u64) {
        if self.usable {
            let value = KIND_MARK << 8 | u32::from(MARK_SNAPSHOT_POINT);
            // SAFETY: as in `write`; RSI and RDI are only read, by the VMM.
            // Not `nomem`: the VMM writes this run's frame into the area
            // while the guest is stopped in this very instruction, so the
            // compiler must not assume the area unchanged across it.
            unsafe {
                std::arch::asm!("out dx, eax", in("dx") CONTROL_PORT, in("eax") value,
                    in("rsi") area, in("rdi") pages, options(nostack, preserves_flags));
            }
        }
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

/// Takes resource limits `limits` for init itself, so that every process
/// it starts from now on inherits them.
pub fn set_rlimits(limits: &[agent::Rlimit]) -> io::Result<()> {
    for r in limits {
        let value = libc::rlimit {
            rlim_cur: r.soft,
            rlim_max: r.hard,
        };
        // SAFETY: setrlimit reads the rlimit value, which outlives the call.
        check(unsafe { libc::setrlimit(r.resource as _, &value) })?;
    }
    Ok(())
}

/// Drops from init's bounding set every capability this kernel knows
/// that `keep` (bit N for capability N) does not hold: no program init
/// starts from then on gains it, root included. Init's own capabilities
/// stay (the bounding set only limits what an exec gains).
pub fn limit_capabilities(keep: u64) -> io::Result<()> {
    let last: u32 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")?
        .trim()
        .parse()
        .map_err(|_| io::Error::other("/proc/sys/kernel/cap_last_cap is not a number"))?;
    for cap in (0..=last.min(63)).filter(|c| keep & (1 << c) == 0) {
        // SAFETY: prctl with PR_CAPBSET_DROP and a capability number;
        // it touches no memory of ours.
        check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) })?;
    }
    Ok(())
}

/// Sets no_new_privs on init, which every program it starts inherits.
pub fn no_new_privileges() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS and plain integers.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
}

/// Sets `/dev/shm`'s size to `bytes` (a remount of the tmpfs
/// [`mount_filesystems`] made, its other options kept).
pub fn resize_shm(bytes: u64) -> io::Result<()> {
    let data = format!("size={bytes},mode=1777");
    let flags = libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
    mount_with("shm", "/dev/shm", "tmpfs", flags, &data)
}

pub fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: the buffer is valid for name.len() bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
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

    /// Blocks the set, so they wait for [`SignalSet::next`] (the child
    /// unblocks them in [`drop_to`]).
    pub fn block(&self) {
        // SAFETY: self.0 is a valid set; the old mask is not wanted.
        unsafe { libc::sigprocmask(libc::SIG_BLOCK, &self.0, std::ptr::null_mut()) };
    }

    /// Waits for the next signal of the set.
    pub fn next(&self) -> libc::c_int {
        // SAFETY: self.0 is valid; a null siginfo is allowed.
        unsafe { libc::sigwaitinfo(&self.0, std::ptr::null_mut()) }
    }

    pub fn is_forwarded(signal: libc::c_int) -> bool {
        Self::FORWARDED.contains(&signal)
    }
}

/// Reaps every exited child, calling `ended` with each pid and raw wait
/// status.
pub fn reap(mut ended: impl FnMut(libc::pid_t, i32)) {
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out-pointer.
        let reaped = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if reaped <= 0 {
            return;
        }
        ended(reaped, status);
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
        reap(|_, _| {});
        // SAFETY: a probe of whether any child is left.
        let left = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if left == -1 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    reap(|_, _| {});
}

/// Waits until the console has passed on everything written to it (the
/// console driver can hold a tail back for a kernel thread to push).
pub fn drain_console() {
    // SAFETY: tcdrain only waits on fd 1; on a non-terminal it fails with
    // ENOTTY, which leaves nothing to wait for.
    unsafe { libc::tcdrain(1) };
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

/// `_IOW('R', 0x03, int[2])` and `_IO('R', 0x07)` of `<linux/random.h>`.
const RNDADDENTROPY: libc::Ioctl = 0x4008_5203;
const RNDRESEEDCRNG: libc::Ioctl = 0x5207;

/// A VM restored from a snapshot starts with the random state of the VM
/// that was saved, the same in every VM restored from it: mix in fresh
/// bytes from the entropy device (the host's `/dev/urandom` through
/// virtio-rng, read anew by each VM) and `seed` (the host's, handed over
/// at resume), both credited, and reseed the kernel's generator at once
/// rather than at its next scheduled reseed. Fails only when neither
/// source could be added.
pub fn reseed(seed: &[u8]) -> io::Result<()> {
    use std::io::Read;
    let urandom = fs::OpenOptions::new().write(true).open("/dev/urandom")?;
    let mut hwrng = [0u8; 64];
    let from_device = fs::File::open("/dev/hwrng")
        .and_then(|mut f| f.read_exact(&mut hwrng))
        .and_then(|()| add_entropy(&urandom, &hwrng));
    let from_host = add_entropy(&urandom, seed);
    if from_device.is_err() && from_host.is_err() {
        return from_device;
    }
    // SAFETY: RNDRESEEDCRNG takes no argument and touches no memory of ours.
    check(unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG) })
}

/// Adds up to 64 bytes to the kernel's pool, credited as full entropy.
fn add_entropy(urandom: &fs::File, bytes: &[u8]) -> io::Result<()> {
    #[repr(C)]
    struct PoolInfo {
        entropy_count: libc::c_int,
        buf_size: libc::c_int,
        buf: [u8; 64],
    }
    let len = bytes.len().min(64);
    if len == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no bytes"));
    }
    let mut pool = PoolInfo {
        entropy_count: (len * 8) as libc::c_int,
        buf_size: len as libc::c_int,
        buf: [0; 64],
    };
    pool.buf[..len].copy_from_slice(&bytes[..len]);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info header and then
    // buf_size (at most 64) bytes, all inside `pool`, which outlives the
    // call.
    check(unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY, &pool) })
}

/// Powers the machine off through ACPI (an exported disk's machine; husk's
/// own VMs end by [`power_off`]'s reboot).
pub fn halt() -> ! {
    // SAFETY: reboot(2) with a valid command; it does not return on success.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    crate::say(&format!("power off failed: {}", io::Error::last_os_error()));
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// A new AF_VSOCK stream socket (close-on-exec), and the address of
/// `port` at `cid`.
fn vsock_socket(cid: u32, port: u32) -> io::Result<(OwnedFd, libc::sockaddr_vm)> {
    // SAFETY: socket(2) with constant arguments; a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    Ok((fd, addr))
}

/// An AF_VSOCK stream socket bound to `port`, any CID, not yet
/// listening ([`listen`]).
pub fn vsock_bind(port: u32) -> io::Result<OwnedFd> {
    let (fd, addr) = vsock_socket(libc::VMADDR_CID_ANY, port)?;
    // SAFETY: addr is a valid sockaddr_vm and its size is passed with it.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    check(ret)?;
    Ok(fd)
}

/// Listens on a bound socket: connections are taken from now on.
pub fn listen(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: listen(2) on a socket the caller owns.
    check(unsafe { libc::listen(fd.as_raw_fd(), 64) })
}

/// A stream to `port` of vsock peer `cid` (the host is CID 2).
pub fn vsock_connect(cid: u32, port: u32) -> io::Result<OwnedFd> {
    let (fd, addr) = vsock_socket(cid, port)?;
    // SAFETY: addr is a valid sockaddr_vm and its size is passed with it.
    let ret = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    check(ret)?;
    Ok(fd)
}

/// The next connection on `listener` (retrying on EINTR).
pub fn accept(listener: &OwnedFd) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: accept4 on a listening socket; the peer address is not
        // wanted, so both pointers are null.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: a new fd from accept4, owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A new pseudo-terminal: (master, slave), both close-on-exec.
pub fn open_pty(size: Option<(u16, u16)>) -> io::Result<(fs::File, fs::File)> {
    // SAFETY: posix_openpt with valid flags; a new fd or -1.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if master < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd, owned from here on.
    let master = unsafe { fs::File::from_raw_fd(master) };
    // SAFETY: grantpt/unlockpt on the master we own.
    check(unsafe { libc::grantpt(master.as_raw_fd()) })?;
    // SAFETY: as above.
    check(unsafe { libc::unlockpt(master.as_raw_fd()) })?;
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: the buffer is valid for its length; ptsname_r NUL-terminates.
    let ret = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    // SAFETY: ptsname_r succeeded, so name holds a NUL-terminated string.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    // SAFETY: path is NUL-terminated; a new fd or -1.
    let slave = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd, owned from here on.
    let slave = unsafe { fs::File::from_raw_fd(slave) };
    if let Some((rows, cols)) = size {
        set_window_size(&master, rows, cols)?;
    }
    Ok((master, slave))
}

/// Sets a terminal's size (the process on it gets SIGWINCH).
pub fn set_window_size(tty: &fs::File, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
    check(unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &size) })
}

/// `kill(2)`.
pub fn signal(pid: libc::pid_t, signal: i32) -> io::Result<()> {
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: kill(2) with a positive pid: one process, never a group.
    check(unsafe { libc::kill(pid, signal) })
}

/// Sets the realtime clock.
pub fn set_clock(secs: u64, nanos: u32) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(secs)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        tv_nsec: libc::c_long::from(nanos.min(999_999_999) as i32),
    };
    // SAFETY: a valid timespec pointer.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) })
}

/// The IPv4 and IPv6 addresses of every interface but loopback, as
/// `iface addr/prefix`.
pub fn addresses() -> Vec<String> {
    let mut list = std::ptr::null_mut();
    // SAFETY: getifaddrs fills list with a chain freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: cur is a node of the chain getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0 {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the chain.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        // SAFETY: ifa_addr is non-null and points at a sockaddr whose
        // family says which sockaddr_* it is; the netmask has that family
        // too when present.
        let entry = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let addr = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                    let prefix = if ifa.ifa_netmask.is_null() {
                        32
                    } else {
                        let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                        m.sin_addr.s_addr.count_ones()
                    };
                    Some(format!("{name} {addr}/{prefix}"))
                }
                libc::AF_INET6 => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    let addr = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
                    let prefix = if ifa.ifa_netmask.is_null() {
                        128
                    } else {
                        let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in6);
                        m.sin6_addr.s6_addr.iter().map(|b| b.count_ones()).sum()
                    };
                    Some(format!("{name} {addr}/{prefix}"))
                }
                _ => None,
            }
        };
        out.extend(entry);
    }
    // SAFETY: list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    out
}

/// Opens `/proc/PID/WHAT` (`pid` None: the calling thread's).
pub fn open_proc(pid: Option<libc::pid_t>, what: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
    let of = pid.map_or("thread-self".to_string(), |p| p.to_string());
    let path = CString::new(format!("/proc/{of}/{what}")).expect("no NUL");
    // SAFETY: a NUL-terminated path that outlives the call.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just opened, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
