//! What the VMM is told to run ([`VmConfig`]) and what it reports back.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::{snapshot, vsock, MemoryUsage, NetConfig, Phase, SeccompMode};

/// Everything the VMM needs to run one VM.
pub struct VmConfig {
    pub cpus: u8,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Kernel arguments after husk's own (console, reboot, devices).
    pub cmdline: String,
    /// Block devices in order: `/dev/vda`, `/dev/vdb`, ...
    pub disks: Vec<DiskConfig>,
    /// Network interfaces in order: `eth0`, `eth1`, ...
    pub net: Vec<NetConfig>,
    /// Empty slots (device ID 0, which Linux probes and leaves alone),
    /// after every other device, that a network interface can be put into
    /// while the VM runs (through [`VmConfig::snapshot_requests`]); as
    /// many of them as the interrupts left after the other devices allow.
    pub net_slots: u8,
    /// A vsock device and its host side.
    pub vsock: Option<vsock::VsockConfig>,
    /// Shared folders: one virtio-fs device each, served by a vhost-user
    /// backend (virtiofsd) already connected. With any, guest RAM is a
    /// shared memfd the backends map.
    pub shares: Vec<ShareConfig>,
    /// Where the guest's console output goes.
    pub console_output: Box<dyn Write + Send>,
    /// Host input for the guest's console, if any.
    pub console_input: Option<File>,
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
    /// Give the guest a PIT. Kernels without an MP table or ACPI parser
    /// (Debian's cloud kernel) tick on it; husk's kernel ticks on the
    /// TSC-deadline LAPIC timer and boots about 0.1 s sooner without one.
    pub legacy_pit: bool,
    /// Measure the memory use at the end (reads /proc/self/smaps).
    pub report_memory: bool,
    /// Seccomp filters on every VMM thread (default: refused calls kill).
    pub seccomp: SeccompMode,
    /// When the process started, for the timings.
    pub started: Instant,
    /// Take a snapshot into these files when the guest's init reaches its
    /// snapshot point (it asks on the control port).
    pub snapshot: Option<snapshot::Target>,
    /// Start from this snapshot instead of booting the kernel.
    pub restore: Option<snapshot::Restore>,
    /// A warm start's resume frame (an `agent::encode`d `agent::Resume`):
    /// written into init's resume area when the snapshot is taken (after
    /// saving it) and when it is restored (before the vCPUs run).
    pub resume_frame: Option<Vec<u8>>,
    /// Take a snapshot whenever one is asked for on this socket, while the
    /// guest runs (`husk snapshot create` of a detached VM).
    pub snapshot_requests: Option<snapshot::OnRequest>,
}

/// One virtio-fs device: the tag the guest mounts it by, and the
/// connected socket of its vhost-user backend.
#[derive(Debug)]
pub struct ShareConfig {
    pub tag: String,
    pub backend: std::os::unix::net::UnixStream,
}

#[derive(Debug, Clone)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub access: DiskAccess,
    /// With [`DiskAccess::Overlay`]: the file the guest's writes go to
    /// and stay in across runs (with a journal beside it, see
    /// [`crate::disk::journal_path`]), instead of a temporary file.
    pub upper: Option<PathBuf>,
}

/// What the guest may do to a disk, and what reaches the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskAccess {
    /// Writes go to the file (locked against any other VM).
    ReadWrite,
    /// The guest cannot write (the device says so; writes fail).
    ReadOnly,
    /// The guest writes, but its writes go to an unnamed temporary file
    /// that ends with the VM: the file itself is only read (and shared).
    Overlay,
}

/// How a VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// The guest shut down; `status` is what it reported on the control
    /// port, if anything.
    Shutdown { status: Option<u8> },
    /// The guest was still running when the timeout passed.
    Timeout,
}

/// The end of a run and when each phase was reached.
#[derive(Debug)]
pub struct Outcome {
    pub exit: VmExit,
    pub timings: Vec<(Phase, Duration)>,
    /// The process's memory at the end (with [`VmConfig::report_memory`]).
    pub memory: Option<MemoryUsage>,
    /// With [`VmConfig::snapshot`]: whether it was taken (or why not);
    /// None when the guest never asked.
    pub snapshot: Option<Result<(), String>>,
    /// Where a VM stopped at its timeout was: each vCPU's id and
    /// instruction pointer, as it left the guest (empty for any other end).
    pub stuck_at: Vec<(u8, u64)>,
}

/// The most vCPUs a VM can have (the MP table's and CPUID's topology).
pub const MAX_CPUS: u8 = 32;
/// The most memory a VM can have: 1 TiB.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
