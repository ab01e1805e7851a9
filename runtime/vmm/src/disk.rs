//! Opening a VM's disks: a host file read and written in place, or an
//! overlay over a read-only image whose writes go to an unnamed temporary
//! file, or are kept across runs (a detached appliance's root: see
//! [`devices::storage::Overlay::kept`]), with a snapshot's saved blocks
//! under them on a restore.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use devices::storage::{self, Bitmap, Layer, Overlay, Storage};

pub use devices::storage::journal_bytes;

use crate::error::io;
use crate::{snapshot, DiskAccess, DiskConfig, VmConfig, VmmError};

/// The journal beside a kept overlay's file `upper`: `UPPER.blocks`.
pub fn journal_path(upper: &Path) -> PathBuf {
    let mut name = upper.as_os_str().to_owned();
    name.push(".blocks");
    PathBuf::from(name)
}

/// Whether the kept writes at `upper` hold any block: a VM that has them
/// cannot restore a snapshot taken over the bare image (the guest's
/// caches would not match its disk).
pub fn has_kept_writes(upper: &Path) -> bool {
    fs::metadata(journal_path(upper)).is_ok_and(|m| m.len() > storage::JOURNAL_MAGIC.len() as u64)
}

/// A kept overlay over `base`: `upper` made (the disk's size, sparse) on
/// the first run and locked against a second VM; its journal read back
/// (none: no block kept yet), refused when it is not one, and written
/// again as runs (a temporary file renamed over it), then opened to
/// append.
fn open_kept(base: File, upper: &Path, layer: Option<Layer>) -> io::Result<Storage> {
    let len = base.metadata()?.len();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(upper)?;
    if file.try_lock().is_err() {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "another VM writes to it",
        ));
    }
    let journal = journal_path(upper);
    let written = match fs::read(&journal) {
        Ok(bytes) => storage::read_journal(&bytes, len).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is not a journal of this disk's blocks",
                    journal.display()
                ),
            )
        })?,
        // The first run (or one killed before it wrote the journal): no
        // block is trusted, whatever the file holds.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Bitmap::new(len),
        Err(e) => return Err(e),
    };
    if file.metadata()?.len() == 0 {
        file.set_len(len)?;
    }
    let tmp = journal.with_extension("blocks.tmp");
    let compacted = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    io::Write::write_all(&mut &compacted, &storage::journal_bytes(&written.runs()))?;
    compacted.sync_all()?;
    fs::rename(&tmp, &journal)?;
    let appender = OpenOptions::new().append(true).open(&journal)?;
    Overlay::kept(base, file, appender, written, layer).map(Storage::Overlay)
}

/// A snapshot's saved blocks of one disk: their file and their runs
/// `(first block, count)`.
type SavedBlocks = (File, Vec<(u64, u64)>);

/// Disk `index`'s saved blocks in the snapshot being restored: the file
/// and its runs, for an overlay disk of a snapshot that has them. A disk
/// an overlay in one and not in the other is refused.
pub(crate) fn restored_layer(
    cfg: &VmConfig,
    index: usize,
    d: &DiskConfig,
) -> Result<Option<SavedBlocks>, VmmError> {
    let Some(r) = &cfg.restore else {
        return Ok(None);
    };
    let saved = r.snapshot.disks.get(index).cloned().flatten();
    let file = r.disks.get(index).and_then(Option::as_ref);
    let overlay = d.access == DiskAccess::Overlay;
    match (saved, file) {
        (Some(runs), Some(f)) if overlay => {
            let f = f
                .try_clone()
                .map_err(io("duplicating a snapshot's disk file"))?;
            Ok(Some((f, runs)))
        }
        (None, _) if !overlay => Ok(None),
        (saved, _) => Err(VmmError::Restore(snapshot::SnapshotError::Mismatch {
            what: "disk access",
            snapshot: format!(
                "disk {index} {}",
                if saved.is_some() {
                    "an overlay"
                } else {
                    "a file"
                }
            ),
            this: format!("{:?}", d.access),
        })),
    }
}

/// Opens a disk with the access it needs and locks it: exclusively when
/// the file is written, shared when it is only read; an overlay's writes
/// go to an unnamed temporary file, or to the disk's kept writes.
pub(crate) fn open(d: &DiskConfig, layer: Option<SavedBlocks>) -> Result<Storage, VmmError> {
    let writable = d.access == DiskAccess::ReadWrite;
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .open(&d.path)
        .map_err(|source| VmmError::DiskOpen {
            path: d.path.clone(),
            source,
        })?;
    // Writers exclude everyone; readers (and overlays) only writers.
    let locked = if writable {
        file.try_lock()
    } else {
        file.try_lock_shared()
    };
    if locked.is_err() {
        return Err(VmmError::DiskLocked {
            path: d.path.clone(),
        });
    }
    if d.access != DiskAccess::Overlay {
        return Ok(Storage::File(file));
    }
    let layer = match layer {
        None => None,
        Some((layer, runs)) => {
            let len = file.metadata().map_err(io("reading a disk's size"))?.len();
            let blocks = Bitmap::from_runs(len, &runs).ok_or_else(|| {
                VmmError::Restore(snapshot::SnapshotError::Corrupt {
                    path: d.path.clone(),
                    why: "the snapshot's saved blocks reach past the end of this disk".into(),
                })
            })?;
            Some(Layer {
                file: layer,
                blocks,
            })
        }
    };
    if let Some(upper) = &d.upper {
        return open_kept(file, upper, layer).map_err(|source| VmmError::DiskKept {
            path: upper.clone(),
            source,
        });
    }
    let dir = std::env::temp_dir();
    let overlay_error = |source| VmmError::DiskOverlay {
        disk: d.path.clone(),
        dir: dir.clone(),
        source,
    };
    let upper = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(&dir)
        .map_err(overlay_error)?;
    let overlay = match layer {
        None => Overlay::new(file, upper),
        Some(layer) => Overlay::with_layer(file, upper, layer),
    };
    overlay.map(Storage::Overlay).map_err(overlay_error)
}
