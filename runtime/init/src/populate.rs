//! Filling a new, empty volume with what the image holds where it is
//! mounted, as docker does the first time a named volume is used: the
//! files, folders and links under that folder, their owners, modes and
//! times, hard links kept, and the folder's own owner and mode given to
//! the volume's root.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What [`copy_tree`] left out: entries that are neither files, folders
/// nor links (devices, FIFOs, sockets), by path under the source.
pub type Skipped = Vec<PathBuf>;

/// Where [`fill`] copies to before it moves the copy into place: a fill
/// cut short (the VM killed) leaves at most this folder, which the next
/// fill removes and starts again.
pub const PARTIAL: &str = ".husk-filling";

/// Fills the folder `volume` with a copy of what is under the folder
/// `from`, as [`copy_tree`] does, when `volume` holds nothing (or only
/// what a fill cut short left); says whether it did. The copy is made in
/// [`PARTIAL`] and its entries then renamed into the volume's root, so a
/// volume is either empty or filled.
pub fn fill(from: &Path, volume: &Path) -> io::Result<Option<Skipped>> {
    let partial = volume.join(PARTIAL);
    let mut entries = fs::read_dir(volume).map_err(|e| at(volume, e))?;
    if entries.any(|e| e.map_or(true, |e| e.file_name() != PARTIAL)) {
        return Ok(None);
    }
    if partial.exists() {
        fs::remove_dir_all(&partial).map_err(|e| at(&partial, e))?;
    }
    fs::create_dir(&partial).map_err(|e| at(&partial, e))?;
    let skipped = copy_tree(from, &partial)?;
    for entry in fs::read_dir(&partial).map_err(|e| at(&partial, e))? {
        let entry = entry.map_err(|e| at(&partial, e))?;
        fs::rename(entry.path(), volume.join(entry.file_name()))
            .map_err(|e| at(&entry.path(), e))?;
    }
    fs::remove_dir(&partial).map_err(|e| at(&partial, e))?;
    let meta = fs::symlink_metadata(from).map_err(|e| at(from, e))?;
    finish(volume, &meta)?;
    Ok(Some(skipped))
}

/// Copies what is under the folder `from` into the folder `to`, and gives
/// `to` the owner and mode of `from`. An owner that cannot be set (an
/// unprivileged file server) leaves the copy's; any other failure ends
/// the copy with the path it failed on.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<Skipped> {
    let mut copy = Copy::default();
    copy.folder(from, to)?;
    let meta = fs::symlink_metadata(from).map_err(|e| at(from, e))?;
    finish(to, &meta)?;
    Ok(copy.skipped)
}

#[derive(Default)]
struct Copy {
    /// Files with more than one link, by (device, inode): where the first
    /// was copied to.
    linked: HashMap<(u64, u64), PathBuf>,
    skipped: Skipped,
}

impl Copy {
    fn folder(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        let mut entries: Vec<_> = fs::read_dir(from)
            .map_err(|e| at(from, e))?
            .collect::<io::Result<_>>()
            .map_err(|e| at(from, e))?;
        // In name order, so two copies of one tree are made alike.
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let (src, dst) = (entry.path(), to.join(entry.file_name()));
            let meta = fs::symlink_metadata(&src).map_err(|e| at(&src, e))?;
            let kind = meta.file_type();
            if kind.is_dir() {
                fs::create_dir(&dst).map_err(|e| at(&dst, e))?;
                self.folder(&src, &dst)?;
                finish(&dst, &meta)?;
            } else if kind.is_symlink() {
                let target = fs::read_link(&src).map_err(|e| at(&src, e))?;
                std::os::unix::fs::symlink(&target, &dst).map_err(|e| at(&dst, e))?;
                own(&dst, &meta)?;
            } else if kind.is_file() {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = self.linked.get(&key).filter(|_| meta.nlink() > 1) {
                    fs::hard_link(first, &dst).map_err(|e| at(&dst, e))?;
                    continue;
                }
                fs::copy(&src, &dst).map_err(|e| at(&src, e))?;
                finish(&dst, &meta)?;
                if meta.nlink() > 1 {
                    self.linked.insert(key, dst);
                }
            } else {
                self.skipped.push(src);
            }
        }
        Ok(())
    }
}

/// Gives the copy `path` the owner, mode and times of `meta` (the mode
/// after the owner: changing the owner clears set-user-ID bits).
fn finish(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    own(path, meta)?;
    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(|e| at(path, e))?;
    let times = fs::FileTimes::new()
        .set_accessed(meta.accessed().map_err(|e| at(path, e))?)
        .set_modified(meta.modified().map_err(|e| at(path, e))?);
    fs::File::open(path)
        .and_then(|f| f.set_times(times))
        .map_err(|e| at(path, e))
}

fn own(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    match std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid())) {
        Err(e) if e.kind() != io::ErrorKind::PermissionDenied => Err(at(path, e)),
        _ => Ok(()),
    }
}

fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_tree_is_copied_with_its_owners_modes_times_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        fs::create_dir_all(from.join("sub/deeper")).unwrap();
        fs::create_dir(&to).unwrap();
        fs::write(from.join("a"), "alpha").unwrap();
        fs::write(from.join("sub/deeper/b"), "beta").unwrap();
        fs::hard_link(from.join("a"), from.join("sub/a-again")).unwrap();
        std::os::unix::fs::symlink("../a", from.join("sub/link")).unwrap();
        fs::set_permissions(from.join("a"), fs::Permissions::from_mode(0o4750)).unwrap();
        fs::set_permissions(&from, fs::Permissions::from_mode(0o710)).unwrap();
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let times = fs::FileTimes::new().set_modified(old).set_accessed(old);
        fs::File::open(from.join("sub/deeper/b"))
            .unwrap()
            .set_times(times)
            .unwrap();
        fs::File::open(from.join("sub"))
            .unwrap()
            .set_times(times)
            .unwrap();
        let owner = (1234, 5678);
        let chowned =
            std::os::unix::fs::chown(from.join("sub/deeper/b"), Some(owner.0), Some(owner.1));

        let skipped = copy_tree(&from, &to).unwrap();
        assert!(skipped.is_empty());

        assert_eq!(fs::read_to_string(to.join("a")).unwrap(), "alpha");
        assert_eq!(fs::read_to_string(to.join("sub/deeper/b")).unwrap(), "beta");
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&to.join("a")), 0o4750);
        assert_eq!(mode(&to), 0o710, "the root takes the folder's mode");
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&to.join("a")), ino(&to.join("sub/a-again")));
        assert_eq!(
            fs::read_link(to.join("sub/link")).unwrap(),
            Path::new("../a")
        );
        let modified = |p: &Path| fs::metadata(p).unwrap().modified().unwrap();
        assert_eq!(modified(&to.join("sub/deeper/b")), old);
        assert_eq!(
            modified(&to.join("sub")),
            old,
            "a folder's time outlives its filling"
        );
        if chowned.is_ok() {
            let m = fs::metadata(to.join("sub/deeper/b")).unwrap();
            assert_eq!((m.uid(), m.gid()), owner);
        }
    }

    #[test]
    fn what_is_no_file_folder_or_link_is_skipped_and_said() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        fs::create_dir(&from).unwrap();
        fs::create_dir(&to).unwrap();
        let socket = std::os::unix::net::UnixListener::bind(from.join("sock")).unwrap();
        fs::write(from.join("kept"), "").unwrap();
        let skipped = copy_tree(&from, &to).unwrap();
        drop(socket);
        assert_eq!(skipped, vec![from.join("sock")]);
        assert!(to.join("kept").exists() && !to.join("sock").exists());
    }

    #[test]
    fn only_an_empty_volume_is_filled_and_a_fill_cut_short_starts_again() {
        let dir = tempfile::tempdir().unwrap();
        let (from, volume) = (dir.path().join("from"), dir.path().join("volume"));
        fs::create_dir_all(from.join("sub")).unwrap();
        fs::write(from.join("sub/f"), "image's").unwrap();
        fs::create_dir_all(volume.join(PARTIAL).join("half")).unwrap();
        assert_eq!(fill(&from, &volume).unwrap(), Some(vec![]));
        assert_eq!(fs::read_to_string(volume.join("sub/f")).unwrap(), "image's");
        assert!(!volume.join(PARTIAL).exists());
        // Filled once: the volume's own files are never replaced.
        fs::write(volume.join("sub/f"), "volume's").unwrap();
        fs::write(from.join("new"), "").unwrap();
        assert_eq!(fill(&from, &volume).unwrap(), None);
        assert_eq!(
            fs::read_to_string(volume.join("sub/f")).unwrap(),
            "volume's"
        );
        assert!(!volume.join("new").exists());
    }

    #[test]
    fn a_failure_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("to");
        fs::create_dir(&to).unwrap();
        let e = copy_tree(&dir.path().join("missing"), &to).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
