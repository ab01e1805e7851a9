//! Seccomp: one allowlist per VMM thread kind, built with seccompiler
//! before any thread starts and installed by each thread as its first
//! step, before it touches anything the guest controls.
//!
//! The lists cover what a thread does once the VM is built: the VM, its
//! memory, devices and vCPU file descriptors all exist before the filters
//! go on, so neither thread may open, create, map executable memory,
//! socket, or exec. KVM ioctls are narrowed by request: `KVM_RUN` on vCPU
//! threads only; the VMM thread has none (interrupts go out through
//! irqfds, queue kicks come in through ioeventfds).
//!
//! A refused call (mode `kill`) raises SIGSYS; the handler says which call
//! and on which thread, then lets SIGSYS end the process. Mode `log` lets
//! every call through and has the kernel log the ones outside the list
//! (`dmesg`, audit); `off` installs nothing.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// The request of `ioctl(fd, KVM_RUN, 0)`: `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;
const PROT_EXEC: u64 = 0x4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// Refused calls end the process with SIGSYS, reported first.
    #[default]
    Kill,
    /// Refused calls are allowed and logged by the kernel.
    Log,
    /// No filters.
    Off,
}

/// The kinds of VMM thread, each with its own allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The thread that built the VM and then runs the device event loop.
    Vmm,
    /// One per vCPU: `KVM_RUN` and its exits.
    Vcpu,
    /// The vsock broker, a process of its own outside the jail: it
    /// connects guest streams to the host's Unix sockets.
    Broker,
    /// A network's hub (`husk network hub`), a process of its own beside
    /// the VMs on that network: it switches the frames their guests send
    /// between its members' sockets.
    Hub,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 4] = [
        ThreadKind::Vmm,
        ThreadKind::Vcpu,
        ThreadKind::Broker,
        ThreadKind::Hub,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Broker => "vsock broker",
            ThreadKind::Hub => "network hub",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the {0} seccomp filter")]
    Build(&'static str, #[source] seccompiler::BackendError),
    #[error("compiling the {0} seccomp filter")]
    Compile(&'static str, #[source] seccompiler::BackendError),
    #[error("installing the {0} seccomp filter")]
    Install(&'static str, #[source] seccompiler::Error),
    #[error("installing the SIGSYS handler")]
    Handler(#[source] std::io::Error),
}

/// One allowed system call: its number, the argument conditions (any rule
/// may match; none means unconditional), and why the thread needs it.
pub struct Allowed {
    pub nr: i64,
    pub rules: Vec<SeccompRule>,
    pub why: &'static str,
}

fn cond(arg: u8, len: Len, op: Op, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, len, op, value).expect("a valid condition")
}

fn rule(conds: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conds).expect("a valid rule")
}

/// `arg == value`, one rule per value.
fn arg_is(arg: u8, values: &[u64]) -> Vec<SeccompRule> {
    values
        .iter()
        .map(|&v| rule(vec![cond(arg, Len::Dword, Op::Eq, v)]))
        .collect()
}

/// Memory that is never executable.
fn no_exec(prot_arg: u8) -> Vec<SeccompRule> {
    vec![rule(vec![cond(
        prot_arg,
        Len::Dword,
        Op::MaskedEq(PROT_EXEC),
        0,
    )])]
}

fn allow(nr: libc::c_long, rules: Vec<SeccompRule>, why: &'static str) -> Allowed {
    Allowed { nr, rules, why }
}

/// `KVM_GET_REGS`: a vCPU's general registers.
fn kvm_get_regs() -> u64 {
    vmm_sys_util::ioctl_ior_nr!(GET_REGS, 0xae, 0x81, kvm_bindings::kvm_regs);
    GET_REGS()
}

/// The ioctls that read a vCPU's state for a snapshot (each vCPU thread
/// saves its own, out of `KVM_RUN`), besides `KVM_GET_REGS`, which a vCPU
/// thread may always call, and the one that tells the guest's kvm-clock it
/// was paused.
fn vcpu_state_reads() -> [u64; 9] {
    use kvm_bindings::*;
    const KVMIO: u32 = 0xae;
    vmm_sys_util::ioctl_ior_nr!(GET_SREGS, KVMIO, 0x83, kvm_sregs);
    vmm_sys_util::ioctl_iowr_nr!(GET_MSRS, KVMIO, 0x88, kvm_msrs);
    vmm_sys_util::ioctl_ior_nr!(GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
    vmm_sys_util::ioctl_ior_nr!(GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
    vmm_sys_util::ioctl_ior_nr!(GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
    vmm_sys_util::ioctl_ior_nr!(GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
    vmm_sys_util::ioctl_ior_nr!(GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
    vmm_sys_util::ioctl_ior_nr!(GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
    vmm_sys_util::ioctl_io_nr!(KVMCLOCK_CTRL, KVMIO, 0xad);
    [
        GET_SREGS(),
        GET_MSRS(),
        GET_LAPIC(),
        GET_MP_STATE(),
        GET_VCPU_EVENTS(),
        GET_DEBUGREGS(),
        GET_XSAVE(),
        GET_XCRS(),
        KVMCLOCK_CTRL(),
    ]
    .map(u64::from)
}

/// The ioctls that read the VM's own state (interrupt controllers, PIT,
/// clock), for a snapshot taken on the vmm thread.
fn vm_state_reads() -> [u64; 3] {
    use kvm_bindings::*;
    const KVMIO: u32 = 0xae;
    vmm_sys_util::ioctl_iowr_nr!(GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
    vmm_sys_util::ioctl_ior_nr!(GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
    vmm_sys_util::ioctl_ior_nr!(GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
    [GET_IRQCHIP(), GET_PIT2(), GET_CLOCK()].map(u64::from)
}

/// The allowlist of `kind` for a VM that takes no snapshot.
pub fn rules(kind: ThreadKind) -> Vec<Allowed> {
    rules_for(kind, false)
}

/// The allowlist of `kind`; with `snapshots`, what saving the VM's state
/// needs as well (the ioctls that read it, sizing the memory file).
pub fn rules_for(kind: ThreadKind, snapshots: bool) -> Vec<Allowed> {
    use libc::*;
    let sigsys = u64::from(SIGSYS.unsigned_abs());
    let kick = u64::from(vmm_sys_util::signal::SIGRTMIN().unsigned_abs());
    // Both kinds: memory for Rust's allocator, locks, signals, leaving.
    let mut list = vec![
        allow(SYS_futex, vec![], "locks shared with the other threads"),
        allow(
            SYS_mmap,
            no_exec(2),
            "the allocator; never executable memory",
        ),
        allow(
            SYS_munmap,
            vec![],
            "the allocator, and thread stacks at exit",
        ),
        allow(SYS_madvise, vec![], "the allocator returns memory"),
        allow(SYS_mremap, vec![], "the allocator grows a large buffer"),
        allow(
            SYS_write,
            vec![],
            "eventfds, the console, log lines on stderr",
        ),
        allow(SYS_close, vec![], "file descriptors dropped at the end"),
        allow(
            SYS_rt_sigreturn,
            vec![],
            "return from the kick signal's handler",
        ),
        allow(SYS_rt_sigprocmask, vec![], "thread exit masks signals"),
        allow(
            SYS_sigaltstack,
            vec![],
            "thread exit drops its signal stack",
        ),
        allow(SYS_exit, vec![], "a thread ends"),
        allow(
            SYS_exit_group,
            vec![],
            "the process ends (also after a refused call, when jailed)",
        ),
        allow(
            SYS_rt_sigaction,
            arg_is(0, &[sigsys]),
            "the SIGSYS report resets SIGSYS",
        ),
        allow(
            SYS_kill,
            arg_is(1, &[sigsys]),
            "the SIGSYS report ends the process",
        ),
    ];
    if cfg!(debug_assertions) {
        // std's debug builds check that a descriptor is open before
        // closing it; release builds do not, and their filters omit this.
        list.push(allow(
            SYS_fcntl,
            arg_is(1, &[F_GETFD as u64]),
            "debug builds: close() check",
        ));
    }
    match kind {
        ThreadKind::Vcpu => {
            // Its registers: where the guest was, when it ran past its
            // timeout.
            let mut ioctls = vec![KVM_RUN, kvm_get_regs()];
            if snapshots {
                ioctls.extend(vcpu_state_reads());
            }
            list.extend([
                allow(
                    SYS_ioctl,
                    arg_is(1, &ioctls),
                    "KVM_RUN and KVM_GET_REGS, nothing else (with snapshots: reading its own state)",
                ),
                allow(SYS_mprotect, no_exec(2), "the allocator grows its arena"),
            ]);
        }
        ThreadKind::Broker => {
            list.extend([
                allow(SYS_recvfrom, vec![], "a request from the VMM"),
                allow(
                    SYS_socket,
                    arg_is(0, &[AF_UNIX as u64]),
                    "a Unix socket to connect to <uds>_PORT, nothing else",
                ),
                allow(SYS_connect, vec![], "to <uds>_PORT"),
                allow(SYS_sendto, vec![], "an error answer to the VMM"),
                allow(SYS_sendmsg, vec![], "the connected socket to the VMM"),
                allow(SYS_statx, vec![], "is the VM's socket file still ours?"),
                allow(SYS_newfstatat, vec![], "the same, where std falls back"),
                allow(SYS_unlink, vec![], "remove the VM's socket file at the end"),
                allow(SYS_brk, vec![], "the allocator"),
            ]);
        }
        ThreadKind::Hub => {
            list.extend([
                allow(SYS_poll, vec![], "wait for members and frames"),
                allow(SYS_accept4, vec![], "a member joining"),
                allow(
                    SYS_ioctl,
                    arg_is(1, &[FIONBIO]),
                    "a member's socket made non-blocking",
                ),
                allow(
                    SYS_recvfrom,
                    vec![],
                    "a member's frames (std reads sockets with recv)",
                ),
                allow(
                    SYS_sendto,
                    vec![],
                    "frames to a member (std writes sockets with send)",
                ),
                allow(
                    SYS_recvmsg,
                    vec![],
                    "a member's hello, with its VM's socket attached",
                ),
                allow(
                    SYS_read,
                    vec![],
                    "frames from the host's tap (a network of root's)",
                ),
                allow(
                    SYS_flock,
                    vec![],
                    "the network's lock, held while the hub decides to leave",
                ),
                allow(
                    SYS_unlink,
                    vec![],
                    "its socket file removed as it leaves (in its own folder only)",
                ),
                allow(SYS_brk, vec![], "the allocator"),
            ]);
        }
        ThreadKind::Vmm => {
            let mut vmm_ioctls = vec![TCGETS, TCSETS, crate::net::TAP_SET_OFFLOAD, FIONBIO];
            if snapshots {
                vmm_ioctls.extend(vm_state_reads());
            }
            list.extend([
                allow(SYS_epoll_wait, vec![], "the event loop"),
                allow(
                    SYS_epoll_ctl,
                    vec![],
                    "the console input timer and the working set recorder's events come and go",
                ),
                allow(
                    SYS_read,
                    vec![],
                    "eventfds, console input, /dev/urandom, network frames",
                ),
                allow(
                    SYS_mprotect,
                    no_exec(2),
                    "the allocator grows the vmm thread's arena",
                ),
                allow(SYS_pread64, vec![], "disk reads"),
                allow(SYS_pwrite64, vec![], "disk writes"),
                allow(SYS_fdatasync, vec![], "the block device's FLUSH"),
                allow(
                    SYS_timerfd_settime,
                    vec![],
                    "console input recheck timer; the working set recorder's timer",
                ),
                allow(SYS_brk, vec![], "the allocator"),
                allow(SYS_getpid, vec![], "pthread_kill, to kick vCPUs"),
                allow(SYS_tgkill, arg_is(2, &[kick]), "kick vCPUs out of KVM_RUN"),
                allow(SYS_clock_nanosleep, vec![], "wait between vCPU kicks"),
                allow(
                    SYS_ioctl,
                    arg_is(1, &vmm_ioctls),
                    "restore the terminal; a tap's offloads once the driver chose them; \
                     a vsock host connection made non-blocking; with snapshots, reading \
                     the interrupt controllers, PIT and clock",
                ),
                allow(
                    SYS_accept4,
                    vec![],
                    "host programs connecting to the VM's vsock socket",
                ),
                allow(
                    SYS_sendto,
                    vec![],
                    "vsock: a connection request to the broker",
                ),
                allow(
                    SYS_recvfrom,
                    vec![],
                    "vsock's host streams and passt's socket (std reads sockets with recv)",
                ),
                allow(
                    SYS_recvmsg,
                    vec![],
                    "vsock: the broker's answer, with the connected socket; \
                     vhost-user: the backend's replies",
                ),
                allow(SYS_shutdown, vec![], "vsock: the guest's half-close"),
                allow(
                    SYS_sendmsg,
                    vec![],
                    "vsock's host streams and passt's socket, with MSG_NOSIGNAL; \
                     vhost-user: the messages that start and stop the backend's rings \
                     (carrying their kick and call eventfds)",
                ),
            ]);
            if snapshots {
                list.extend([
                    allow(
                        SYS_ftruncate,
                        vec![],
                        "a snapshot's memory and disk files sized to the guest's",
                    ),
                    allow(
                        SYS_flock,
                        vec![],
                        "the snapshot's lock given up once it is whole, for restores to read",
                    ),
                ]);
            }
        }
    }
    list
}

/// The compiled filters, one per thread kind, or none in mode `off`.
pub struct Filters {
    mode: SeccompMode,
    vmm: BpfProgram,
    vcpu: BpfProgram,
    broker: BpfProgram,
    hub: BpfProgram,
}

// Which kind the current thread installed (for the SIGSYS report).
thread_local! {
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}
static PID: AtomicI32 = AtomicI32::new(0);

impl Filters {
    /// Builds every filter and, in mode `kill`, the SIGSYS handler; call
    /// before starting any thread.
    pub fn build(mode: SeccompMode) -> Result<Option<Self>, SeccompError> {
        Self::build_for(mode, false)
    }

    /// [`Filters::build`] for a VM that may take a snapshot.
    pub fn build_for(mode: SeccompMode, snapshots: bool) -> Result<Option<Self>, SeccompError> {
        if mode == SeccompMode::Off {
            return Ok(None);
        }
        let mismatch = match mode {
            SeccompMode::Kill => SeccompAction::Trap,
            _ => SeccompAction::Log,
        };
        let compile = |kind: ThreadKind| -> Result<BpfProgram, SeccompError> {
            let map: BTreeMap<i64, Vec<SeccompRule>> = rules_for(kind, snapshots)
                .into_iter()
                .map(|a| (a.nr, a.rules))
                .collect();
            let filter = SeccompFilter::new(
                map,
                mismatch.clone(),
                SeccompAction::Allow,
                TargetArch::x86_64,
            )
            .map_err(|e| SeccompError::Build(kind.name(), e))?;
            filter
                .try_into()
                .map_err(|e| SeccompError::Compile(kind.name(), e))
        };
        let filters = Filters {
            mode,
            vmm: compile(ThreadKind::Vmm)?,
            vcpu: compile(ThreadKind::Vcpu)?,
            broker: compile(ThreadKind::Broker)?,
            hub: compile(ThreadKind::Hub)?,
        };
        if mode == SeccompMode::Kill {
            PID.store(std::process::id() as i32, Ordering::Relaxed);
            vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, sigsys_handler)
                .map_err(|e| SeccompError::Handler(e.into()))?;
        }
        Ok(Some(filters))
    }

    /// Installs `kind`'s filter on the calling thread (and sets
    /// no_new_privs). It cannot be removed.
    pub fn install(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        let bpf = match kind {
            ThreadKind::Vmm => &self.vmm,
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::Broker => &self.broker,
            ThreadKind::Hub => &self.hub,
        };
        KIND.with(|k| k.set(Some(kind)));
        seccompiler::apply_filter(bpf).map_err(|e| SeccompError::Install(kind.name(), e))?;
        tracing::debug!(kind = kind.name(), mode = ?self.mode, "seccomp filter installed");
        Ok(())
    }
}

/// Writes `what` to stderr with `write(2)` only (async-signal-safe).
fn write_stderr(parts: &[&[u8]]) {
    for p in parts {
        // SAFETY: writes bytes from a live slice to fd 2.
        unsafe { libc::write(2, p.as_ptr().cast(), p.len()) };
    }
}

fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Reports the refused call, then lets SIGSYS (blocked while this runs)
/// end the process with its default action.
extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo; for SIGSYS the refused
    // call's number is the int after si_signo, si_errno, si_code, padding
    // and the 8-byte call address (the `_sigsys` member), i.e. int 6.
    let nr = unsafe { *(info as *const i32).offset(6) };
    let name = syscalls::Sysno::new(nr as usize).map_or("unknown", |s| s.name());
    let kind = KIND.with(|k| k.get());
    // `husk run --seccomp` sets the mode of the VM's own threads only.
    let hint: &[u8] = match kind {
        Some(ThreadKind::Vmm | ThreadKind::Vcpu) => {
            b" (run with --seccomp=log to find every missing rule)"
        }
        _ => b"",
    };
    let mut buf = [0u8; 10];
    write_stderr(&[
        b"husk: seccomp refused system call ",
        name.as_bytes(),
        b" (",
        decimal(nr as u32, &mut buf),
        b") on a ",
        kind.map_or("unfiltered", |k| k.name()).as_bytes(),
        b" thread; stopping",
        hint,
        b"\n",
    ]);
    let pid = PID.load(Ordering::Relaxed);
    // SAFETY: resetting a signal to its default action and signalling our
    // own process; both calls are on the allowlists for exactly SIGSYS.
    // The init of a PID namespace (a jailed VMM) ignores a default-action
    // signal from inside: it exits with the status a shell shows for a
    // death by SIGSYS instead.
    unsafe {
        if pid == 1 {
            libc::_exit(128 + libc::SIGSYS);
        }
        libc::signal(libc::SIGSYS, libc::SIG_DFL);
        libc::kill(pid, libc::SIGSYS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_build_and_stay_small() {
        for mode in [SeccompMode::Log, SeccompMode::Kill] {
            assert!(Filters::build(mode).unwrap().is_some());
        }
        assert!(Filters::build(SeccompMode::Off).unwrap().is_none());
        // Firecracker's x86_64 policy: 76 rule entries for its VMM thread,
        // 49 for vCPUs. Each of ours has to stay below.
        let vmm = rules(ThreadKind::Vmm).len();
        let vcpu = rules(ThreadKind::Vcpu).len();
        assert!(vmm < 76 && vcpu < 49, "vmm {vmm}, vcpu {vcpu}");
        // Snapshots add two calls (ftruncate, flock) and widen two ioctl
        // rules.
        assert_eq!(rules_for(ThreadKind::Vmm, true).len(), vmm + 2);
        assert_eq!(rules_for(ThreadKind::Vcpu, true).len(), vcpu);
        assert!(Filters::build_for(SeccompMode::Kill, true)
            .unwrap()
            .is_some());
    }

    #[test]
    fn no_call_is_listed_twice_and_every_one_says_why() {
        for (kind, snapshots) in ThreadKind::ALL
            .into_iter()
            .flat_map(|k| [(k, false), (k, true)])
        {
            let list = rules_for(kind, snapshots);
            let mut nrs: Vec<i64> = list.iter().map(|a| a.nr).collect();
            nrs.sort();
            nrs.dedup();
            assert_eq!(nrs.len(), list.len(), "{kind:?}");
            assert!(list.iter().all(|a| !a.why.is_empty()));
        }
    }

    #[test]
    fn vcpus_and_hubs_may_not_open_exec_or_socket() {
        let vcpu: Vec<i64> = rules(ThreadKind::Vcpu).iter().map(|a| a.nr).collect();
        let vmm: Vec<i64> = rules(ThreadKind::Vmm).iter().map(|a| a.nr).collect();
        let hub: Vec<i64> = rules(ThreadKind::Hub).iter().map(|a| a.nr).collect();
        for nr in [libc::SYS_connect, libc::SYS_sendmsg, libc::SYS_chmod] {
            assert!(!hub.contains(&nr), "{nr}");
        }
        for nr in [
            libc::SYS_execve,
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_clone,
            libc::SYS_clone3,
        ] {
            assert!(
                !vcpu.contains(&nr) && !vmm.contains(&nr) && !hub.contains(&nr),
                "{nr}"
            );
        }
    }

    #[test]
    fn snapshot_ioctls_are_the_kernels_numbers() {
        // From <linux/kvm.h> on x86_64.
        assert_eq!(kvm_get_regs(), 0x8090_ae81, "KVM_GET_REGS");
        let vcpu = vcpu_state_reads();
        assert_eq!(vcpu[0], 0x8138_ae83, "KVM_GET_SREGS");
        assert_eq!(vcpu[1], 0xc008_ae88, "KVM_GET_MSRS");
        assert_eq!(vcpu[2], 0x8400_ae8e, "KVM_GET_LAPIC");
        assert_eq!(vcpu[6], 0x9000_aea4, "KVM_GET_XSAVE");
        let vm = vm_state_reads();
        assert_eq!(vm[0], 0xc208_ae62, "KVM_GET_IRQCHIP");
        assert_eq!(vm[1], 0x8070_ae9f, "KVM_GET_PIT2");
        assert_eq!(vm[2], 0x8030_ae7c, "KVM_GET_CLOCK");
    }

    #[test]
    fn decimals() {
        let mut b = [0u8; 10];
        assert_eq!(decimal(0, &mut b), b"0");
        assert_eq!(decimal(435, &mut b), b"435");
        assert_eq!(decimal(u32::MAX, &mut b), b"4294967295");
    }
}
