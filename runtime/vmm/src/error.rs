//! The VMM's errors.

use std::path::PathBuf;

use crate::device_manager::DeviceManagerError;
use crate::layout::CMDLINE_MAX;
use crate::{net, seccomp, snapshot, MAX_CPUS, MAX_MEMORY_MIB};

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error(
        "/dev/kvm does not exist: KVM is not available here (enable virtualization in \
         the firmware and load kvm_intel or kvm_amd)"
    )]
    NoKvm,
    #[error("no permission to open /dev/kvm: add your user to the kvm group, or run as root")]
    KvmPermission,
    #[error("cannot open /dev/kvm")]
    KvmOpen(#[source] kvm_ioctls::Error),
    #[error("{0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error("cannot open the kernel {}", path.display())]
    KernelOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a kernel husk can boot: {why}", path.display())]
    NotAKernel { path: PathBuf, why: String },
    #[error("cannot open the initrd {}", path.display())]
    InitrdOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the initrd ({size} bytes) does not fit in {} MiB of guest memory; give the VM more memory", ram >> 20)]
    InitrdTooLarge { size: u64, ram: u64 },
    #[error("cannot open the disk {}", path.display())]
    DiskOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the disk {} is in use by another VM (it is locked)", path.display())]
    DiskLocked { path: PathBuf },
    #[error("cannot open the kept writes {} of a disk", path.display())]
    DiskKept {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make a file for the writes to the disk {} in {}", disk.display(), dir.display())]
    DiskOverlay {
        disk: PathBuf,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Devices(#[from] DeviceManagerError),
    #[error("network interface {index}")]
    Net {
        index: usize,
        #[source]
        source: net::NetError,
    },
    #[error("network interface {index}, in its slot")]
    NetSlot {
        index: usize,
        #[source]
        source: devices::virtio::slot::SlotError,
    },
    #[error("the vsock device")]
    Vsock(#[source] devices::virtio::vsock::VsockError),
    #[error("the shared folder with tag {tag:?}")]
    Share {
        tag: String,
        #[source]
        source: devices::virtio::fs::FsError,
    },
    #[error("a VM needs 1 to {MAX_CPUS} vCPUs, not {0}")]
    Cpus(u8),
    #[error("{0} MiB of memory is more than husk gives a VM (at most {MAX_MEMORY_MIB} MiB)")]
    MemoryTooLarge(u64),
    #[error(
        "{have_mib} MiB of memory is too small for the kernel, which needs at least \
         {need_mib} MiB to load; give the VM more memory"
    )]
    MemoryTooSmall { have_mib: u64, need_mib: u64 },
    #[error(
        "building the kernel command line (Linux takes at most {} bytes; a long command \
         after -- fits better in a script in the image or a shared folder)",
        CMDLINE_MAX - 1
    )]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("guest memory: {0}")]
    GuestMemory(String),
    #[error("the boot MSRs do not fit KVM's list")]
    BootMsrs,
    #[error("the event loop failed")]
    EventLoop(#[source] event_manager::Error),
    #[error("cannot install the vCPU kick signal handler")]
    KickSignal(#[source] vmm_sys_util::errno::Error),
    #[error("{0}")]
    Guest(String),
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot restore the snapshot")]
    Restore(#[source] snapshot::SnapshotError),
    #[error("cannot restore the snapshot's device {index}")]
    RestoreDevice {
        index: usize,
        #[source]
        source: devices::virtio::mmio::RestoreError,
    },
    #[error("cannot resume the snapshot's device {index}")]
    ResumeDevice {
        index: usize,
        #[source]
        source: devices::virtio::DeviceError,
    },
}

pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}
