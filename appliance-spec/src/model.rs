//! The appliance file's tables, as plain serde types with their defaults.
//! `appliance-spec/README.md` is the reference for every field.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::values::{
    ByteSize, Cidr, ExposedPort, GuestPath, ImageSize, MacAddr, Mode, PortSpec, Signal, Source,
    UserSpec,
};

/// A whole appliance file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Appliance {
    pub appliance: Metadata,
    #[serde(default)]
    pub rootfs: Rootfs,
    #[serde(default)]
    pub run: Run,
    #[serde(default)]
    pub vm: Vm,
}

/// `[appliance]`: what the appliance is called.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    pub version: Option<String>,
    pub description: Option<String>,
}

/// `[rootfs]`: what goes into the root filesystem and how it is written.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rootfs {
    #[serde(default)]
    pub from: Source,
    #[serde(default)]
    pub format: ImageFormat,
    #[serde(default)]
    pub size: ImageSize,
    #[serde(default)]
    pub readonly: bool,
    #[serde(default)]
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub dirs: Vec<DirEntry>,
    #[serde(default)]
    pub symlinks: Vec<SymlinkEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    #[default]
    Ext4,
    Initramfs,
}

/// `[[rootfs.files]]`: one file, copied from the host (`src`) or written
/// from the appliance file (`content`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Host path, relative to the appliance file's folder.
    pub src: Option<PathBuf>,
    pub content: Option<String>,
    pub dst: GuestPath,
    pub mode: Option<Mode>,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

/// `[[rootfs.dirs]]`: one directory, created with its parents.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirEntry {
    pub path: GuestPath,
    pub mode: Option<Mode>,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

/// `[[rootfs.symlinks]]`: `path` points at `target` (taken as written).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SymlinkEntry {
    pub path: GuestPath,
    pub target: String,
}

/// `[run]`: the command the appliance runs. Unset fields default to the
/// OCI image's config when `rootfs.from` is an image.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub workdir: Option<GuestPath>,
    pub user: Option<UserSpec>,
    pub hostname: Option<String>,
    pub ready: Option<Ready>,
    pub health: Option<Health>,
    /// What `husk stop` sends the command first (default: the image's
    /// STOPSIGNAL, else SIGTERM), and how long it waits before SIGKILL
    /// (default 10 s).
    pub stop_signal: Option<Signal>,
    pub stop_timeout: Option<u32>,
    /// The ports it listens on, beside the image's EXPOSE (`husk run -P`
    /// publishes them all).
    #[serde(default)]
    pub expose: Vec<ExposedPort>,
    /// What an exported appliance's machine does when the command ends.
    #[serde(default)]
    pub on_exit: OnExit,
}

/// `run.on_exit`: under `husk export`, power the machine off when the
/// command ends, or restart it (a service). Under husk the VM ends with
/// the command either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExit {
    #[default]
    Poweroff,
    Restart,
}

/// `[run.ready]`: when a detached appliance counts as ready (`husk run
/// -d --wait-ready`): a TCP port in the guest that accepts, or a command
/// in the guest that exits 0; checked every 100 ms for `timeout` seconds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ready {
    pub tcp: Option<u16>,
    pub command: Option<Vec<String>>,
    #[serde(default = "Ready::default_timeout")]
    pub timeout: u32,
}

impl Ready {
    pub const MAX_TIMEOUT: u32 = 3600;

    fn default_timeout() -> u32 {
        60
    }
}

/// `[run.health]`: a detached appliance's health check, as docker's
/// HEALTHCHECK: every `interval` seconds, a TCP port in the guest that
/// accepts, or a command in the guest that exits 0, within `timeout`
/// seconds; `retries` failures in a row make it unhealthy; failures in
/// the first `start_period` seconds do not count.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub tcp: Option<u16>,
    pub command: Option<Vec<String>>,
    #[serde(default = "Health::default_interval")]
    pub interval: u32,
    #[serde(default = "Health::default_interval")]
    pub timeout: u32,
    #[serde(default = "Health::default_retries")]
    pub retries: u32,
    #[serde(default)]
    pub start_period: u32,
}

impl Health {
    /// Bounds of `interval` and `start_period` (a day), `timeout` (an
    /// hour) and `retries`.
    pub const MAX_INTERVAL: u32 = 86_400;
    pub const MAX_TIMEOUT: u32 = 3600;
    pub const MAX_RETRIES: u32 = 100;

    /// Docker's: 30 s between checks, 30 s for one.
    fn default_interval() -> u32 {
        30
    }

    fn default_retries() -> u32 {
        3
    }
}

/// `[vm]`: the micro-VM the appliance needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    #[serde(default = "Vm::default_cpus")]
    pub cpus: u32,
    #[serde(default = "Vm::default_memory")]
    pub memory: ByteSize,
    #[serde(default)]
    pub kernel: KernelRef,
    /// Extra kernel command-line arguments, appended to husk's own.
    pub cmdline: Option<String>,
    pub initrd: Option<PathBuf>,
    #[serde(default)]
    pub disks: Vec<Disk>,
    #[serde(default)]
    pub net: Vec<NetInterface>,
    pub vsock: Option<Vsock>,
    #[serde(default)]
    pub shares: Vec<Share>,
}

impl Vm {
    pub const MAX_CPUS: u32 = 32;
    pub const MIN_MEMORY: ByteSize = ByteSize::mib(32);

    fn default_cpus() -> u32 {
        1
    }

    fn default_memory() -> ByteSize {
        ByteSize::mib(128)
    }
}

impl Default for Vm {
    fn default() -> Self {
        Vm {
            cpus: Vm::default_cpus(),
            memory: Vm::default_memory(),
            kernel: KernelRef::Default,
            cmdline: None,
            initrd: None,
            disks: Vec::new(),
            net: Vec::new(),
            vsock: None,
            shares: Vec::new(),
        }
    }
}

/// `vm.kernel`: husk's own guest kernel, or a kernel file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KernelRef {
    #[default]
    Default,
    Path(PathBuf),
}

impl<'de> Deserialize<'de> for KernelRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "default" => KernelRef::Default,
            _ => KernelRef::Path(PathBuf::from(s)),
        })
    }
}

/// `[[vm.disks]]`: an extra block device (`/dev/vdb`, `/dev/vdc`, ...).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    pub path: PathBuf,
    #[serde(default)]
    pub readonly: bool,
}

/// `[[vm.shares]]`: a host folder, or a named volume, the guest sees at
/// `guest` (virtio-fs, served by virtiofsd); the guest's writes land in
/// the folder. One of `host` and `volume` (validation says so).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Share {
    pub host: Option<PathBuf>,
    /// A named volume: made on first use, filled from the image when new.
    pub volume: Option<String>,
    pub guest: GuestPath,
    #[serde(default)]
    pub readonly: bool,
}

/// `[[vm.net]]`: a virtio-net interface: on a host tap device when `tap`
/// is set, on a husk network when `network` is, else on the user-mode
/// network (passt), which can publish ports.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetInterface {
    pub tap: Option<String>,
    /// A husk network (`husk network create NAME`) whose members reach
    /// this appliance by name.
    pub network: Option<String>,
    pub mac: Option<MacAddr>,
    pub address: Option<Cidr>,
    pub gateway: Option<IpAddr>,
    pub mtu: Option<u16>,
    /// Each entry one port or a range (`"8000-8002:8000-8002"`).
    #[serde(default, deserialize_with = "PortSpec::deserialize_list")]
    pub ports: Vec<PortSpec>,
}

/// `[vm.vsock]`: a virtio-vsock device; host side is a Unix socket.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    pub cid: u32,
    pub uds: PathBuf,
}
