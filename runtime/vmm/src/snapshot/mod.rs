//! Saving and restoring a VM's KVM state: each vCPU's architectural state,
//! the in-kernel interrupt controllers, the PIT and kvm-clock, and guest
//! RAM, in a format of husk's own.
//!
//! ```text
//! SNAPSHOT/state.json   Header, then VmState, one VcpuState per vCPU, the
//!                       devices, and each overlay disk's saved blocks
//! SNAPSHOT/memory       guest RAM, its ranges back to back (sparse: pages
//!                       of zeros are holes)
//! SNAPSHOT/diskN        disk N's blocks that differ from its image, at
//!                       their own offsets (sparse), for an overlay disk
//! SNAPSHOT/lock         held (flock) exclusively while a VMM writes the
//!                       snapshot, shared while a restore opens it
//! SNAPSHOT/pages        the pages a warm start's guest touched up to its
//!                       command, read in ahead by later restores (pages.rs)
//! ```
//!
//! A writer removes the old files before it makes new ones, so a VM
//! restored earlier keeps the inodes it mapped; it writes the state last,
//! so a VMM killed while writing leaves a state file that does not parse,
//! which is refused.
//!
//! A restore maps `memory` private (copy-on-write): the guest reads pages
//! from the file as it touches them and its writes never reach the file,
//! so one snapshot serves any number of restores. The header names what
//! the state is only valid for (husk's version, the kernel, the image, the
//! VM's shape and devices); [`Snapshot::read`] refuses any difference, and
//! any file that does not parse, with a message that says which.
//!
//! The virtio devices are saved by their transports (registers, the
//! queues as the driver set them, where the device is in each ring); a
//! device with state outside the VMM refuses (virtio-fs once the guest has
//! used it: virtiofsd holds its rings and open files), as does a disk the
//! guest writes in place. Guest RAM a backend maps is restored by copying
//! (see [`crate::memory::restore`]). An overlay
//! disk's writes are saved with the snapshot and come back as a read-only
//! layer under the restored VM's own overlay.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use devices::virtio::mmio::TransportState;
use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

use crate::GuestRam;

mod blob;
mod kvm;
mod pages;
mod request;
pub mod resume;

pub use kvm::{msr_list, Tsc, VcpuState, VmState};
pub use pages::{
    exact, pre_fault, prefetch, record, save as save_pages, Exact, Pages, Run, WorkingSet,
};
pub use request::{locate, pause, plug, request, request_pair, unplug, Asked, OnRequest, Refused};

/// The format's name in every header.
const MAGIC: &str = "husk-snapshot";
/// Bumped whenever the layout of the state changes.
pub const FORMAT: u32 = 5;
const STATE_FILE: &str = "state.json";
const MEMORY_FILE: &str = "memory";
const LOCK_FILE: &str = "lock";

fn disk_file(index: usize) -> String {
    format!("disk{index}")
}
const PAGE: usize = 4096;
static ZERO_PAGE: [u8; PAGE] = [0; PAGE];

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a husk snapshot of a format this husk reads: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
    #[error(
        "the snapshot was taken for another {what} ({snapshot}) than this VM's ({this}); \
         it cannot be restored here"
    )]
    Mismatch {
        what: &'static str,
        snapshot: String,
        this: String,
    },
    #[error("{} is being written by another VM", path.display())]
    Busy { path: PathBuf },
    #[error("the snapshot was not taken: {0}")]
    Refused(String),
    #[error("KVM set only {set} of the {wanted} MSRs of vCPU {vcpu}")]
    Msrs {
        vcpu: usize,
        set: usize,
        wanted: usize,
    },
}

fn io_at<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What a snapshot is valid for: restoring it anywhere else would run the
/// saved guest against different code, disks or devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub magic: String,
    pub format: u32,
    /// The husk version that wrote it (device state is husk's own).
    pub husk: String,
    /// `sha256:` of the kernel file the guest booted.
    pub kernel: String,
    /// `sha256:` of the root image (empty for none).
    pub image: String,
    pub cpus: u8,
    pub memory_mib: u64,
    /// The devices, in transport order (`console`, `block`, `rng`, ...);
    /// the VMM fills it when it saves and checks it when it restores.
    pub devices: Vec<String>,
}

impl Header {
    pub fn new(
        kernel: &str,
        image: &str,
        cpus: u8,
        memory_mib: u64,
        devices: Vec<String>,
    ) -> Header {
        Header {
            magic: MAGIC.into(),
            format: FORMAT,
            husk: env!("CARGO_PKG_VERSION").into(),
            kernel: kernel.into(),
            image: image.into(),
            cpus,
            memory_mib,
            devices,
        }
    }

    /// Refuses a snapshot taken for anything other than `this`, naming the
    /// first difference.
    pub fn check(&self, this: &Header) -> Result<(), SnapshotError> {
        let differ = |what: &'static str, snapshot: String, this: String| {
            Err(SnapshotError::Mismatch {
                what,
                snapshot,
                this,
            })
        };
        if self.husk != this.husk {
            return differ("husk version", self.husk.clone(), this.husk.clone());
        }
        if self.kernel != this.kernel {
            return differ("kernel", self.kernel.clone(), this.kernel.clone());
        }
        if self.image != this.image {
            return differ("image", self.image.clone(), this.image.clone());
        }
        if self.cpus != this.cpus {
            return differ("vCPU count", self.cpus.to_string(), this.cpus.to_string());
        }
        if self.memory_mib != this.memory_mib {
            return differ(
                "memory size",
                format!("{} MiB", self.memory_mib),
                format!("{} MiB", this.memory_mib),
            );
        }
        Ok(())
    }

    /// Refuses a snapshot whose devices (by type, in transport order)
    /// differ from the VM's: the VMM knows its own list only once it has
    /// built its devices.
    pub fn check_devices(&self, here: &[String]) -> Result<(), SnapshotError> {
        if self.devices != here {
            return Err(SnapshotError::Mismatch {
                what: "device list",
                snapshot: self.devices.join(","),
                this: here.join(","),
            });
        }
        Ok(())
    }
}

/// A device's name in a snapshot's header, by virtio device type.
pub fn device_name(device_type: u32) -> String {
    match device_type {
        0 => "empty slot".into(),
        1 => "net".into(),
        2 => "block".into(),
        3 => "console".into(),
        4 => "rng".into(),
        19 => "vsock".into(),
        26 => "fs".into(),
        other => format!("type-{other}"),
    }
}

/// What a VM is restored from: a snapshot read and checked
/// ([`Snapshot::read`]), its memory file, and for each disk the file of
/// its saved blocks (an overlay's).
#[derive(Debug)]
pub struct Restore {
    pub snapshot: Snapshot,
    pub memory: File,
    pub disks: Vec<Option<File>>,
    /// Its working set: read in ahead, or recorded by this restore.
    pub pages: Pages,
}

impl Restore {
    /// Opens the snapshot in `dir` for a VM like `this`: waits for no
    /// writer (a snapshot being written is [`SnapshotError::Busy`]), reads
    /// and checks the state, opens the memory and disk files. Restores
    /// need no lock after this: a writer replaces files, never changes
    /// them.
    pub fn open(dir: &Path, this: &Header) -> Result<Restore, SnapshotError> {
        Restore::open_with(dir, this, false)
    }

    /// [`Restore::open`] for a warm start: with the snapshot's working set
    /// to read in, or the file to record it in (see [`Pages`]).
    pub fn open_warm(dir: &Path, this: &Header) -> Result<Restore, SnapshotError> {
        Restore::open_with(dir, this, true)
    }

    fn open_with(dir: &Path, this: &Header, warm: bool) -> Result<Restore, SnapshotError> {
        let _lock = lock_existing(dir, Lock::Shared)?;
        let snapshot = Snapshot::read(dir, this)?;
        let memory = Snapshot::memory_file(dir)?;
        let disks = snapshot
            .disks
            .iter()
            .enumerate()
            .map(|(i, runs)| match runs {
                Some(_) => {
                    let path = dir.join(disk_file(i));
                    File::open(&path)
                        .map(Some)
                        .map_err(io_at("cannot open", &path))
                }
                None => Ok(None),
            })
            .collect::<Result<_, _>>()?;
        // Claimed under the lock: a new snapshot removes it only once no
        // restore reads the old one.
        let pages = match warm {
            true => pages::open(dir, (snapshot.header.memory_mib << 20) / PAGE as u64),
            false => Pages::None,
        };
        Ok(Restore {
            snapshot,
            memory,
            disks,
            pages,
        })
    }
}

/// A whole snapshot's state, as `state.json` holds it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub header: Header,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    /// Each virtio-mmio transport with its device's rings, in transport
    /// order ([`MmioTransport::save`](devices::virtio::mmio::MmioTransport::save)).
    pub devices: Vec<TransportState>,
    /// Each disk, in order: an overlay's saved blocks as runs `(first
    /// block, count)`, their data in `diskN`; `None` for a host file.
    pub disks: Vec<Option<Vec<(u64, u64)>>>,
    /// A warm start's: the guest-physical pages of init's resume area,
    /// which each restore writes its run's frame into ([`resume`]); empty
    /// for a snapshot taken on request, whose guest is not waiting there.
    #[serde(default)]
    pub resume_area: Vec<u64>,
}

impl Snapshot {
    /// Writes `dir/state.json` and `dir/memory` (the state last: see
    /// [`Target`]), for a VM without overlay disks.
    pub fn write(&self, mem: &GuestMemoryMmap, dir: &Path) -> Result<(), SnapshotError> {
        let target = Target::create(dir, self.header.clone(), self.disks.len())?;
        target.write(self, mem)
    }

    /// Reads `dir/state.json`, refusing one that does not parse, was taken
    /// for anything but `this`, has the wrong number of vCPUs, or whose
    /// memory file is missing or of the wrong size.
    pub fn read(dir: &Path, this: &Header) -> Result<Snapshot, SnapshotError> {
        let state = dir.join(STATE_FILE);
        let mut text = Vec::new();
        File::open(&state)
            .and_then(|mut f| f.read_to_end(&mut text))
            .map_err(io_at("cannot read", &state))?;
        let corrupt = |why: String| SnapshotError::Corrupt {
            path: state.clone(),
            why,
        };
        // Parsed once (a vCPU's state is thousands of numbers); what is not
        // a snapshot of this format is told apart by its header alone,
        // since one of another format may not parse as this one, and the
        // message should say so, not why.
        let snapshot: Snapshot = match serde_json::from_slice::<Snapshot>(&text) {
            Ok(s) if s.header.magic == MAGIC && s.header.format == FORMAT => s,
            parsed => return Err(corrupt(not_this_format(&text, parsed.err()))),
        };
        snapshot.header.check(this)?;
        if snapshot.devices.len() != snapshot.header.devices.len() {
            return Err(corrupt(format!(
                "{} device states for {} devices",
                snapshot.devices.len(),
                snapshot.header.devices.len()
            )));
        }
        let disk_devices = snapshot
            .header
            .devices
            .iter()
            .filter(|d| *d == "block")
            .count();
        if snapshot.disks.len() != disk_devices {
            return Err(corrupt(format!(
                "{} disk states for {disk_devices} disks",
                snapshot.disks.len()
            )));
        }
        if snapshot.vcpus.len() != usize::from(snapshot.header.cpus) {
            return Err(corrupt(format!(
                "{} vCPU states for {} vCPUs",
                snapshot.vcpus.len(),
                snapshot.header.cpus
            )));
        }
        let memory = dir.join(MEMORY_FILE);
        let len = fs::metadata(&memory)
            .map_err(io_at("cannot read", &memory))?
            .len();
        // The RAM ranges back to back: as long as the RAM, gap or not.
        let want = snapshot.header.memory_mib << 20;
        if len != want {
            return Err(SnapshotError::Corrupt {
                path: memory,
                why: format!("{len} bytes of guest memory, the VM has {want}"),
            });
        }
        Ok(snapshot)
    }

    /// The guest memory file of the snapshot in `dir`.
    pub fn memory_file(dir: &Path) -> Result<File, SnapshotError> {
        let path = dir.join(MEMORY_FILE);
        File::open(&path).map_err(io_at("cannot open", &path))
    }
}

/// Why `text` is not a snapshot this husk reads: no husk header, another
/// format, or (a header of this format) the error that parsing it gave.
fn not_this_format(text: &[u8], parsed: Option<serde_json::Error>) -> String {
    #[derive(Deserialize)]
    struct HeaderOnly {
        header: serde_json::Value,
    }
    let head: HeaderOnly = match serde_json::from_slice(text) {
        Ok(h) => h,
        Err(e) => return e.to_string(),
    };
    if head.header.get("magic").and_then(|m| m.as_str()) != Some(MAGIC) {
        return "no husk snapshot header".into();
    }
    let format = head.header.get("format").and_then(|f| f.as_u64());
    if format != Some(u64::from(FORMAT)) {
        return format!(
            "format {}, this husk reads format {FORMAT}",
            format.map_or("unknown".into(), |f| f.to_string())
        );
    }
    parsed.map_or_else(
        || "a header this husk cannot read".into(),
        |e| e.to_string(),
    )
}

/// Guest RAM of `memory_mib` restored from the snapshot in `dir`, mapped
/// private from its memory file (see [`crate::memory::restore`]).
pub fn restore_memory(dir: &Path, memory_mib: u64) -> Result<GuestRam, SnapshotError> {
    let file = Snapshot::memory_file(dir)?;
    crate::memory::restore(memory_mib << 20, &file, crate::memory::Backing::Private).map_err(|e| {
        SnapshotError::Io {
            what: "cannot map the guest memory of",
            path: dir.to_path_buf(),
            source: io::Error::other(e.to_string()),
        }
    })
}

/// Files a running VMM writes a snapshot into, opened by its caller: the
/// jailed, filtered VMM opens nothing. While it lives it holds the
/// snapshot's lock, which [`Target::write`] gives up once the snapshot is
/// whole.
#[derive(Debug)]
pub struct Target {
    /// What the snapshot is for; the VMM fills in the device list.
    pub header: Header,
    pub state: File,
    pub memory: File,
    /// One per disk, in order (filled only for overlays).
    pub disks: Vec<File>,
    /// `None` in a VMM that was handed the files ([`OnRequest`]): the
    /// caller that made them holds the lock.
    lock: Option<File>,
    /// Named in errors.
    pub dir: PathBuf,
}

impl Target {
    /// Takes `dir`'s lock ([`SnapshotError::Busy`] when another VMM holds
    /// it), removes what an earlier snapshot left there, and makes the new
    /// files, empty: `state.json` (first, so no state ever describes
    /// another memory file), `memory`, and `disk0`.. for `disks` disks.
    pub fn create(dir: &Path, header: Header, disks: usize) -> Result<Target, SnapshotError> {
        // A snapshot holds the guest's memory, secrets and all: its folder
        // and files are the user's alone.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_at("cannot create", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io_at("cannot restrict", dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_at("cannot create", &lock_path))?;
        let lock = try_lock(lock, dir, &lock_path, Lock::Exclusive)?;
        Target::clear(dir)?;
        let make = |name: &str| {
            let p = dir.join(name);
            File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)
                .map_err(io_at("cannot create", &p))
        };
        Ok(Target {
            header,
            state: make(STATE_FILE)?,
            memory: make(MEMORY_FILE)?,
            disks: (0..disks)
                .map(|i| make(&disk_file(i)))
                .collect::<Result<_, _>>()?,
            lock: Some(lock),
            dir: dir.to_path_buf(),
        })
    }

    /// Removes a snapshot's state, memory, disk and working set files from
    /// `dir` (the state first), leaving the folder and its lock.
    fn clear(dir: &Path) -> Result<(), SnapshotError> {
        let mut names = vec![
            STATE_FILE.to_string(),
            MEMORY_FILE.to_string(),
            pages::PAGES_FILE.to_string(),
        ];
        for entry in fs::read_dir(dir).map_err(io_at("cannot read", dir))? {
            let name = entry
                .map_err(io_at("cannot read", dir))?
                .file_name()
                .to_string_lossy()
                .into_owned();
            if name
                .strip_prefix("disk")
                .is_some_and(|n| n.parse::<u32>().is_ok())
            {
                names.push(name);
            }
        }
        for name in names {
            let p = dir.join(name);
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_at("cannot remove", &p)(e)),
            }
        }
        Ok(())
    }

    /// Writes a snapshot through the open files (the disks' blocks are
    /// already in theirs), the state last, all synced; then gives up the
    /// lock.
    pub fn write(&self, snapshot: &Snapshot, mem: &GuestMemoryMmap) -> Result<(), SnapshotError> {
        write_memory(mem, &self.memory, &self.dir)?;
        for disk in &self.disks {
            disk.sync_data()
                .map_err(io_at("cannot sync the disks of", &self.dir))?;
        }
        let text = serde_json::to_vec(snapshot).expect("plain data serializes");
        (&self.state)
            .write_all(&text)
            .and_then(|()| self.state.sync_data())
            .map_err(io_at("cannot write the snapshot's state in", &self.dir))?;
        match &self.lock {
            Some(lock) => lock.unlock().map_err(io_at("cannot unlock", &self.dir)),
            None => Ok(()),
        }
    }
}

impl Target {
    /// Removes the folder of a snapshot that was never taken (its state
    /// file still empty: the VM ended before its snapshot point), under
    /// this target's lock; a taken one (whole, or cut short while its state
    /// was written, which a restore refuses) stays. Returns whether it
    /// removed the folder.
    pub fn discard_untaken(self) -> Result<bool, SnapshotError> {
        let taken = self
            .state
            .metadata()
            .map_err(io_at("cannot read the state file in", &self.dir))?
            .len()
            > 0;
        if taken {
            return Ok(false);
        }
        fs::remove_dir_all(&self.dir).map_err(io_at("cannot remove", &self.dir))?;
        Ok(true)
    }
}

/// Removes the snapshot folder `dir` and everything in it, unless a VMM is
/// writing it ([`SnapshotError::Busy`]). VMs restored from it go on: they
/// hold the files they opened.
pub fn remove(dir: &Path) -> Result<(), SnapshotError> {
    let _lock = lock_existing(dir, Lock::Exclusive)?;
    fs::remove_dir_all(dir).map_err(io_at("cannot remove", dir))
}

#[derive(Clone, Copy)]
enum Lock {
    Shared,
    Exclusive,
}

/// Takes `lock`, without waiting, on the lock file `dir` has (none is
/// needed where it has none): [`SnapshotError::Busy`] while a writer
/// holds it.
fn lock_existing(dir: &Path, kind: Lock) -> Result<Option<File>, SnapshotError> {
    let path = dir.join(LOCK_FILE);
    match File::open(&path) {
        Ok(f) => try_lock(f, dir, &path, kind).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_at("cannot open", &path)(e)),
    }
}

fn try_lock(f: File, dir: &Path, path: &Path, kind: Lock) -> Result<File, SnapshotError> {
    let locked = match kind {
        Lock::Shared => f.try_lock_shared(),
        Lock::Exclusive => f.try_lock(),
    };
    match locked {
        Ok(()) => Ok(f),
        Err(fs::TryLockError::WouldBlock) => Err(SnapshotError::Busy {
            path: dir.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(io_at("cannot lock", path)(e)),
    }
}

/// Whether a VMM is writing the snapshot in `dir` now.
pub fn being_written(dir: &Path) -> bool {
    matches!(
        lock_existing(dir, Lock::Shared),
        Err(SnapshotError::Busy { .. })
    )
}

/// Writes guest RAM into `file`, its regions back to back; pages of zeros
/// are left as holes, so the file takes only what the guest wrote (`path`
/// names it in errors).
fn write_memory(mem: &GuestMemoryMmap, file: &File, path: &Path) -> Result<(), SnapshotError> {
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(total).map_err(io_at("cannot size", path))?;
    let mut offset = 0u64;
    for region in mem.iter() {
        let len = region.len() as usize;
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| SnapshotError::Io {
                what: "cannot address guest memory for",
                path: path.to_path_buf(),
                source: io::Error::other(e.to_string()),
            })?;
        // SAFETY: `host` starts `len` bytes of the region's live mapping,
        // which `mem` keeps mapped for this call; the vCPUs are stopped,
        // so nothing writes to it while the slice exists.
        let bytes = unsafe { std::slice::from_raw_parts(host.cast_const(), len) };
        for (i, page) in bytes.chunks(PAGE).enumerate() {
            // A slice comparison is a memcmp, fast in any build (a byte
            // loop takes seconds for 128 MiB in a debug build).
            if page != &ZERO_PAGE[..page.len()] {
                file.write_all_at(page, offset + (i * PAGE) as u64)
                    .map_err(io_at("cannot write", path))?;
            }
        }
        offset += len as u64;
    }
    file.sync_data().map_err(io_at("cannot sync", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn header() -> Header {
        Header::new(
            "sha256:k",
            "sha256:i",
            2,
            128,
            vec!["console".into(), "block".into()],
        )
    }

    #[test]
    fn header_check_names_the_first_difference() {
        let h = header();
        h.check(&header()).unwrap();
        type Change = fn(&mut Header);
        let cases: [(&str, Change); 5] = [
            ("husk version", |h| h.husk = "0.0.1".into()),
            ("kernel", |h| h.kernel = "sha256:other".into()),
            ("image", |h| h.image = "sha256:other".into()),
            ("vCPU count", |h| h.cpus = 1),
            ("memory size", |h| h.memory_mib = 256),
        ];
        for (what, change) in cases {
            let mut other = header();
            change(&mut other);
            let err = h.check(&other).unwrap_err();
            assert!(
                matches!(&err, SnapshotError::Mismatch { what: w, .. } if *w == what),
                "{what}: {err}"
            );
        }
    }

    #[test]
    fn device_lists_must_match() {
        let h = header();
        h.check_devices(&["console".into(), "block".into()])
            .unwrap();
        let err = h.check_devices(&["console".into()]).unwrap_err();
        assert!(
            matches!(
                err,
                SnapshotError::Mismatch {
                    what: "device list",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn unreadable_state_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join(STATE_FILE);
        for (text, why) in [
            (&b"{\"header\": {\"magic\": \"husk-snap"[..], "EOF"),
            (
                b"{\"header\": {\"magic\": \"other\"}}",
                "no husk snapshot header",
            ),
            (
                b"{\"header\": {\"magic\": \"husk-snapshot\", \"format\": 99}}",
                "format 99, this husk reads format 5",
            ),
            (
                b"{\"header\": {\"magic\": \"husk-snapshot\", \"format\": 5}}",
                "missing field",
            ),
        ] {
            fs::write(&state, text).unwrap();
            let err = Snapshot::read(dir.path(), &header()).unwrap_err();
            assert!(
                matches!(err, SnapshotError::Corrupt { .. }) && err.to_string().contains(why),
                "{why}: {err}"
            );
        }
        fs::remove_file(&state).unwrap();
        assert!(matches!(
            Snapshot::read(dir.path(), &header()).unwrap_err(),
            SnapshotError::Io { .. }
        ));
    }

    #[test]
    fn a_snapshot_never_taken_leaves_no_folder_and_a_taken_one_stays() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("key");
        let t = Target::create(&dir, header(), 1).unwrap();
        assert!(t.discard_untaken().unwrap());
        assert!(!dir.exists(), "an untaken snapshot's folder is left");

        let t = Target::create(&dir, header(), 1).unwrap();
        (&t.state).write_all(b"{").unwrap();
        assert!(!t.discard_untaken().unwrap());
        assert!(dir.join("state.json").exists());
    }

    #[test]
    fn one_writer_at_a_time_and_no_restore_while_it_writes() {
        let dir = tempfile::tempdir().unwrap();
        let t = Target::create(dir.path(), header(), 2).unwrap();
        for name in ["state.json", "memory", "disk0", "disk1", "lock"] {
            assert!(dir.path().join(name).exists(), "{name}");
        }
        assert!(matches!(
            Target::create(dir.path(), header(), 2).unwrap_err(),
            SnapshotError::Busy { .. }
        ));
        assert!(matches!(
            Restore::open(dir.path(), &header()).unwrap_err(),
            SnapshotError::Busy { .. }
        ));
        // The writer gone (its lock with it), the next one starts afresh:
        // the old files are removed, not reused.
        fs::write(dir.path().join("disk1"), b"old").unwrap();
        drop(t);
        let _t = Target::create(dir.path(), header(), 1).unwrap();
        assert!(dir.path().join("disk0").exists());
        assert!(!dir.path().join("disk1").exists());
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(dir.path()).unwrap().mode() & 0o777, 0o700);
        let memory = fs::metadata(dir.path().join("memory")).unwrap();
        assert_eq!(
            memory.mode() & 0o777,
            0o600,
            "guest memory is the user's alone"
        );
        assert_eq!(
            fs::metadata(dir.path().join("state.json")).unwrap().len(),
            0
        );
    }

    #[test]
    fn memory_is_saved_sparse_and_whole() {
        use vm_memory::{Bytes, GuestAddress};
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(4 << 20), 1 << 20),
        ])
        .unwrap();
        mem.write_slice(b"first", GuestAddress(0x1000)).unwrap();
        mem.write_slice(b"second", GuestAddress((4 << 20) + 0x3000))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        write_memory(&mem, &File::create(&path).unwrap(), &path).unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 2 << 20);
        assert_eq!(&bytes[0x1000..0x1005], b"first");
        assert_eq!(&bytes[(1 << 20) + 0x3000..(1 << 20) + 0x3006], b"second");
        use std::os::unix::fs::MetadataExt;
        let allocated = fs::metadata(&path).unwrap().blocks() * 512;
        assert!(
            allocated <= 64 << 10,
            "{allocated} bytes allocated for 2 pages"
        );
    }
}
