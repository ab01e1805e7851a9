//! Warm start: the first run of an appliance boots it and snapshots it at
//! init's snapshot point; every later run of the same VM restores that
//! snapshot and goes straight to the command.
//!
//! A snapshot is cached under `CACHE/snapshots/KEY/`, where KEY hashes
//! everything that shapes the saved VM: husk's version, the kernel and
//! image files, the kernel command line, vCPUs, memory, the disks and
//! their access, the network interfaces' backends, the shared folders'
//! tags, the vsock CID. What differs from run to run (the command, `-e`,
//! `--hostname`, the network's addresses, the MAC, which host folders the
//! shares serve and where the guest mounts them) is not in the snapshot:
//! init reads it at its snapshot point from the host
//! ([`agent::RESUME_PORT`]), in the cold run as in every restored one, so
//! one snapshot serves every command line. A shared folder is not yet
//! mounted there, so virtiofsd holds nothing the snapshot lacks; a
//! restored VM gets a virtiofsd of its own for each share.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vmm::snapshot::{Header, Restore, SnapshotError, Target};
use vmm::{DiskAccess, DiskConfig};

/// The folder of every cached snapshot: `$HUSK_SNAPSHOT_DIR`, else the
/// cache's `snapshots/`.
pub fn root() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("HUSK_SNAPSHOT_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    Ok(builder::cache::root()
        .context("cannot find husk's cache folder")?
        .join("snapshots"))
}

/// What a cached snapshot was taken for, for `husk snapshot ls` and
/// `prune` (the state's header is what a restore checks).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// What was run, as the user named it.
    pub target: String,
    pub kernel: PathBuf,
    pub image: PathBuf,
    /// The identities (path, size, time, inode) the key was made of.
    pub kernel_id: String,
    pub image_id: String,
    pub cpus: u8,
    pub memory_mib: u64,
    /// When it was taken, in ms since the epoch.
    pub created_ms: u64,
    /// A named snapshot's (`husk snapshot create`): the `husk run`
    /// command line a restore runs again, the folder it was typed in, and
    /// the detached VM it was taken of. Empty for a warm start's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

pub const META_FILE: &str = "meta.json";

/// What shapes a VM that a snapshot is taken of.
pub struct Shape<'a> {
    pub target: &'a str,
    pub kernel: &'a Path,
    pub image: &'a Path,
    pub cmdline: &'a str,
    pub cpus: u8,
    pub memory_mib: u64,
    pub disks: &'a [DiskConfig],
    /// Each interface's backend (`tap`, `user`): their offloads differ,
    /// and a restored driver goes on with what it negotiated.
    pub nets: &'a [&'static str],
    /// Each shared folder's tag, which the guest's driver read at boot.
    pub shares: &'a [&'a str],
    pub vsock_cid: u32,
    pub legacy_pit: bool,
    /// Empty slots for networks connected while it runs (a detached VM's).
    pub net_slots: u8,
}

/// This run's use of the cache: restore a snapshot, or take one.
pub enum Warm {
    Restore { dir: PathBuf, restore: Box<Restore> },
    Take { dir: PathBuf, target: Target },
}

impl Warm {
    /// The cached snapshot of `shape` to restore, or the files to take it
    /// into. `None` (said on stderr where something was wrong) when
    /// neither can be: the run then boots cold as if there were no cache.
    pub fn prepare(shape: &Shape) -> Option<Warm> {
        match Warm::try_prepare(shape) {
            Ok(w) => w,
            // A cache on a read-only filesystem (a test bed's) is no
            // cache for snapshots: boot cold, as --cold would.
            Err(e) if read_only(&e) => None,
            Err(e) => {
                eprintln!("husk: warm start unavailable, booting cold: {e:#}");
                None
            }
        }
    }

    fn try_prepare(shape: &Shape) -> anyhow::Result<Option<Warm>> {
        let kernel_id = file_id(shape.kernel)?;
        let image_id = file_id(shape.image)?;
        let dir = root()?.join(key(shape, &kernel_id, &image_id)?);
        let header = Header::new(
            &kernel_id,
            &image_id,
            shape.cpus,
            shape.memory_mib,
            Vec::new(),
        );
        let state = dir.join("state.json");
        let whole = fs::metadata(&state).is_ok_and(|m| m.len() > 0);
        if whole {
            match Restore::open_warm(&dir, &header) {
                Ok(restore) => {
                    tracing::info!("warm start: restoring the snapshot in {}", dir.display());
                    return Ok(Some(Warm::Restore {
                        dir,
                        restore: Box::new(restore),
                    }));
                }
                // Another run is taking it: this one boots cold.
                Err(SnapshotError::Busy { .. }) => return Ok(None),
                Err(e) => eprintln!(
                    "husk: the cached snapshot cannot be restored ({e}); booting cold and taking \
                     it again"
                ),
            }
        }
        let disks = shape.disks.len();
        let target = match Target::create(&dir, header, disks) {
            Ok(t) => t,
            Err(SnapshotError::Busy { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let meta = Meta {
            target: shape.target.to_string(),
            kernel: shape.kernel.to_path_buf(),
            image: shape.image.to_path_buf(),
            kernel_id,
            image_id,
            cpus: shape.cpus,
            memory_mib: shape.memory_mib,
            created_ms: crate::vms::now_ms(),
            args: Vec::new(),
            cwd: None,
            from: None,
        };
        let text = serde_json::to_vec_pretty(&meta).expect("plain data serializes");
        crate::vms::write_file(&dir.join(META_FILE), text)
            .with_context(|| format!("cannot write {}", dir.join(META_FILE).display()))?;
        tracing::info!("cold start: taking a snapshot into {}", dir.display());
        Ok(Some(Warm::Take { dir, target }))
    }
}

fn read_only(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EROFS))
    })
}

/// A file's identity without reading it: path, size, modification time
/// and inode (a rebuilt kernel or image differs in one of them).
pub fn file_id(path: &Path) -> anyhow::Result<String> {
    let path = fs::canonicalize(path).with_context(|| format!("{}", path.display()))?;
    let m = fs::metadata(&path).with_context(|| format!("{}", path.display()))?;
    Ok(format!(
        "file:{}:{}:{}.{:09}:{}",
        path.display(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino()
    ))
}

/// The cache key: the first 32 hex digits of the SHA-256 of the shape.
fn key(shape: &Shape, kernel_id: &str, image_id: &str) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Key<'a> {
        husk: &'a str,
        kernel: &'a str,
        image: &'a str,
        cmdline: &'a str,
        cpus: u8,
        memory_mib: u64,
        disks: Vec<(String, &'static str)>,
        nets: &'a [&'static str],
        shares: &'a [&'a str],
        vsock_cid: u32,
        legacy_pit: bool,
        // Left out when none, so the keys of VMs without slots stay.
        #[serde(skip_serializing_if = "is_zero")]
        net_slots: u8,
    }
    fn is_zero(n: &u8) -> bool {
        *n == 0
    }
    let disks = shape
        .disks
        .iter()
        .map(|d| {
            let access = match d.access {
                DiskAccess::ReadOnly => "ro",
                DiskAccess::Overlay => "overlay",
                DiskAccess::ReadWrite => "rw",
            };
            Ok((file_id(&d.path)?, access))
        })
        .collect::<anyhow::Result<_>>()?;
    let key = Key {
        husk: env!("CARGO_PKG_VERSION"),
        kernel: kernel_id,
        image: image_id,
        cmdline: shape.cmdline,
        cpus: shape.cpus,
        memory_mib: shape.memory_mib,
        disks,
        nets: shape.nets,
        shares: shape.shares,
        vsock_cid: shape.vsock_cid,
        legacy_pit: shape.legacy_pit,
        net_slots: shape.net_slots,
    };
    let json = serde_json::to_vec(&key).expect("plain data serializes");
    Ok(builder::oci::hex(&Sha256::digest(json))[..32].to_string())
}

/// Whether a VM can be snapshotted (a warm start's or a named one): husk's
/// init and no disk the guest writes in place; else why not. (A shared
/// folder the guest has mounted is refused when the snapshot is taken.)
pub fn eligible(husk_init: bool, disks: &[DiskConfig]) -> Result<(), &'static str> {
    if !husk_init {
        return Err("its init is not husk's");
    }
    if disks.iter().any(|d| d.access == DiskAccess::ReadWrite) {
        return Err("the guest writes a disk in place");
    }
    Ok(())
}

/// Whether a run may restore (or take) a warm start's snapshot: it could
/// be snapshotted, and no disk keeps writes of an earlier run (a detached
/// appliance's root, once written): a snapshot taken over the bare image
/// would not match that disk, and one taken over it would carry its data
/// to every other run of the image.
pub fn restorable(husk_init: bool, disks: &[DiskConfig]) -> bool {
    eligible(husk_init, disks).is_ok()
        && !disks
            .iter()
            .filter_map(|d| d.upper.as_deref())
            .any(vmm::disk::has_kept_writes)
}

/// 32 bytes from the host's `/dev/urandom`, for a restored guest's
/// random generator.
pub fn host_seed() -> anyhow::Result<Vec<u8>> {
    let mut seed = vec![0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .context("cannot read /dev/urandom")?;
    Ok(seed)
}

/// This run's resume frame: its parameters and a fresh seed.
pub fn resume_frame(params: String) -> anyhow::Result<Vec<u8>> {
    let seed = host_seed()?;
    Ok(agent::encode(&agent::Resume { params, seed }))
}

/// The socket the vsock device hands to init's connection to
/// [`agent::RESUME_PORT`]: `frame`, already written, then the end of the
/// stream.
pub fn resume_socket(frame: &[u8]) -> anyhow::Result<UnixStream> {
    let (mut ours, theirs) = UnixStream::pair().context("cannot make a socket pair")?;
    // Written whole before the VM starts, so it must fit the socket's
    // buffer (about 200 KiB by default); a frame that does not is refused
    // here with its size, where waiting would block the run for good.
    ours.set_nonblocking(true)
        .context("cannot hand this run's parameters to the VM")?;
    match ours.write_all(frame) {
        Ok(()) => Ok(theirs),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => anyhow::bail!(
            "this run's command line and environment ({} KiB) are more than a \
             restored VM takes in: pass large data in a file (a shared folder) instead",
            frame.len() / 1024
        ),
        Err(e) => Err(e).context("cannot hand this run's parameters to the VM"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resume_socket_holds_one_frame_and_its_end() {
        let params = "husk.run=7b7d husk.net=7b7d".to_string();
        let mut s = resume_socket(&resume_frame(params.clone()).unwrap()).unwrap();
        let r: agent::Resume = agent::read(&mut s).unwrap().unwrap();
        assert_eq!(r.params, params);
        assert_eq!(r.seed.len(), 32);
        assert!(agent::read::<agent::Resume>(&mut s).unwrap().is_none());
        let other: agent::Resume =
            agent::read(&mut resume_socket(&resume_frame(String::new()).unwrap()).unwrap())
                .unwrap()
                .unwrap();
        assert_ne!(other.seed, r.seed, "every run gets its own seed");
    }

    #[test]
    fn a_frame_larger_than_the_socket_takes_is_refused_with_its_size() {
        let frame = resume_frame("x".repeat(8 << 20)).unwrap();
        let err = resume_socket(&frame).unwrap_err().to_string();
        assert!(err.contains("(8192 KiB)"), "{err}");
        assert!(err.contains("shared folder"), "{err}");
    }

    #[test]
    fn the_key_follows_every_part_of_the_shape() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        let image = dir.path().join("image");
        fs::write(&kernel, b"k").unwrap();
        fs::write(&image, b"i").unwrap();
        let disks = vec![DiskConfig {
            path: image.clone(),
            access: DiskAccess::Overlay,
            upper: None,
        }];
        let shape = Shape {
            target: "t",
            kernel: &kernel,
            image: &image,
            cmdline: "quiet",
            cpus: 1,
            memory_mib: 64,
            disks: &disks,
            nets: &[],
            shares: &[],
            vsock_cid: 3,
            legacy_pit: false,
            net_slots: 0,
        };
        let k = |s: &Shape| key(s, &file_id(s.kernel).unwrap(), &file_id(s.image).unwrap());
        let base = k(&shape).unwrap();
        assert_eq!(base, k(&shape).unwrap(), "the same shape, the same key");
        let ro = vec![DiskConfig {
            path: image.clone(),
            access: DiskAccess::ReadOnly,
            upper: None,
        }];
        let others = [
            Shape { cpus: 2, ..shape },
            Shape {
                memory_mib: 128,
                ..shape
            },
            Shape {
                cmdline: "quiet x",
                ..shape
            },
            Shape {
                nets: &["user"],
                ..shape
            },
            Shape {
                shares: &["husk-root"],
                ..shape
            },
            Shape {
                nets: &["tap"],
                ..shape
            },
            Shape {
                disks: &ro,
                ..shape
            },
            Shape {
                net_slots: 4,
                ..shape
            },
        ];
        for other in &others {
            assert_ne!(k(other).unwrap(), base);
        }
        // A rebuilt image (another size and time) is another key.
        std::thread::sleep(std::time::Duration::from_millis(10));
        fs::write(&image, b"ii").unwrap();
        assert_ne!(k(&shape).unwrap(), base);
        assert!(eligible(true, &disks).is_ok());
        assert!(eligible(false, &disks).is_err());
        let rw = vec![DiskConfig {
            path: image.clone(),
            access: DiskAccess::ReadWrite,
            upper: None,
        }];
        assert!(eligible(true, &rw).is_err());
        assert!(!restorable(true, &rw));
        // A kept root restores and snapshots only until a block is kept.
        let upper = image.with_file_name("root.upper");
        let kept = vec![DiskConfig {
            path: image,
            access: DiskAccess::Overlay,
            upper: Some(upper.clone()),
        }];
        assert!(restorable(true, &kept), "no journal yet");
        let journal = vmm::disk::journal_path(&upper);
        fs::write(&journal, vmm::disk::journal_bytes(&[])).unwrap();
        assert!(restorable(true, &kept), "an empty journal");
        fs::write(&journal, vmm::disk::journal_bytes(&[(4, 1)])).unwrap();
        assert!(!restorable(true, &kept));
    }
}
