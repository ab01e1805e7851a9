//! Where husk keeps what it builds: `$HUSK_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/husk`, else `~/.cache/husk`.

use std::io;
use std::path::{Path, PathBuf};

/// The root of husk's cache.
pub fn root() -> io::Result<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("HUSK_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Ok(Path::new(&dir).join("husk"));
    }
    match var("HOME") {
        Some(home) => Ok(Path::new(&home).join(".cache/husk")),
        None => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "neither HUSK_CACHE_DIR, XDG_CACHE_HOME nor HOME is set",
        )),
    }
}

/// A temporary sibling name for `dest`, unique to this process and call,
/// for writing something completely before renaming it into place.
pub fn temp_sibling(dest: &Path) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.tmp-{}-{seq}", std::process::id()))
}

/// Bytes the tree under `dir` takes on disk (sparse files count only
/// their blocks); what cannot be read counts nothing.
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => disk_usage(&e.path()),
            _ => e.metadata().map_or(0, |m| m.blocks() * 512),
        })
        .sum()
}

/// Copies `src` to `dest` keeping holes (a fresh ext4 image is mostly
/// holes), through a temporary sibling renamed into place.
pub fn copy_sparse(src: &Path, dest: &Path) -> io::Result<()> {
    let tmp = temp_sibling(dest);
    let result = (|| {
        let to = std::fs::File::create(&tmp)?;
        copy_sparse_into(src, &to)?;
        to.sync_data()?;
        std::fs::rename(&tmp, dest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Copies `src` into the empty file `to`, writing only its data extents.
fn copy_sparse_into(src: &Path, to: &std::fs::File) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::FileExt;

    let mut from = std::fs::File::open(src)?;
    let len = from.metadata()?.len();
    {
        to.set_len(len)?;
        let mut pos = 0;
        let mut buf = vec![0u8; 1 << 20];
        while pos < len {
            let data = match rustix::fs::seek(&from, rustix::fs::SeekFrom::Data(pos)) {
                Ok(d) => d,
                Err(rustix::io::Errno::NXIO) => break, // only a hole is left
                Err(e) => return Err(e.into()),
            };
            let hole = rustix::fs::seek(&from, rustix::fs::SeekFrom::Hole(data))?;
            from.seek(SeekFrom::Start(data))?;
            let mut at = data;
            while at < hole {
                let n = ((hole - at) as usize).min(buf.len());
                std::io::Read::read_exact(&mut from, &mut buf[..n])?;
                to.write_all_at(&buf[..n], at)?;
                at += n as u64;
            }
            pos = hole;
        }
    }
    Ok(())
}

/// How old a file's last change must be before its digest is remembered:
/// on a file system with coarse timestamps, a file changed again within
/// the same tick would keep its times (git calls this "racily clean").
const SETTLED: std::time::Duration = std::time::Duration::from_secs(2);

/// `sha256:HEX` of the file at `path`, an input of a build. The digest is
/// remembered in `cache/digests/`, one small file per input's real path, with the
/// file's size and its modification and change times (as git's index
/// does), so that an unchanged input is not read again: hashing the
/// 1.4 MB guest init was most of a cached `husk run`'s own work. Any change
/// to the file moves its change time (which no user can set back), and a
/// file changed less than [`SETTLED`] ago is hashed but not remembered.
/// Remembering is best effort: a read-only cache just hashes every time.
pub fn input_digest(cache: &Path, path: &Path) -> io::Result<String> {
    input_digest_settled(cache, path, SETTLED)
}

fn input_digest_settled(
    cache: &Path,
    path: &Path,
    settled: std::time::Duration,
) -> io::Result<String> {
    use sha2::{Digest as _, Sha256};
    use std::os::unix::fs::MetadataExt;

    let mut file = std::fs::File::open(path)?;
    let stamp = |m: &std::fs::Metadata| {
        format!(
            "{} {}.{:09} {}.{:09}",
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        )
    };
    let before = file.metadata()?;
    let real = std::fs::canonicalize(path)?;
    let name = crate::oci::hex(&Sha256::digest(real.as_os_str().as_encoded_bytes()));
    let memo = cache.join("digests").join(&name[..32]);
    // "<size> <mtime> <ctime> sha256:HEX"
    if let Ok(text) = std::fs::read_to_string(&memo) {
        if let Some((seen, digest)) = text.trim_end().rsplit_once(' ') {
            if seen == stamp(&before) && digest.starts_with("sha256:") {
                return Ok(digest.to_string());
            }
        }
    }
    let mut hash = Sha256::new();
    io::copy(&mut file, &mut hash)?;
    let digest = format!("sha256:{}", crate::oci::hex(&hash.finalize()));
    let after = file.metadata()?;
    let changed = std::time::SystemTime::UNIX_EPOCH
        + std::time::Duration::new(after.ctime().max(0) as u64, after.ctime_nsec() as u32);
    let old_enough = changed.elapsed().is_ok_and(|age| age >= settled);
    if old_enough && stamp(&after) == stamp(&before) {
        let remember = || -> io::Result<()> {
            std::fs::create_dir_all(memo.parent().expect("in digests/"))?;
            let tmp = temp_sibling(&memo);
            std::fs::write(&tmp, format!("{} {digest}\n", stamp(&after)))
                .and_then(|()| std::fs::rename(&tmp, &memo))
                .inspect_err(|_| {
                    let _ = std::fs::remove_file(&tmp);
                })
        };
        if let Err(e) = remember() {
            tracing::debug!("not remembering the digest of {}: {e}", path.display());
        }
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};
    use std::time::Duration;

    fn sha256_of(bytes: &[u8]) -> String {
        use sha2::{Digest as _, Sha256};
        format!("sha256:{}", crate::oci::hex(&Sha256::digest(bytes)))
    }

    #[test]
    fn input_digest_is_remembered_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let input = dir.path().join("input");
        std::fs::write(&input, b"first").unwrap();
        let d1 = input_digest_settled(&cache, &input, Duration::ZERO).unwrap();
        assert_eq!(d1, sha256_of(b"first"));
        // The memo, not the file, answers the next time: forge it to see.
        let memos: Vec<_> = std::fs::read_dir(cache.join("digests"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(memos.len(), 1);
        let text = std::fs::read_to_string(&memos[0]).unwrap();
        let forged = text.replace(&d1, &sha256_of(b"forged"));
        std::fs::write(&memos[0], forged).unwrap();
        let d2 = input_digest_settled(&cache, &input, Duration::ZERO).unwrap();
        assert_eq!(d2, sha256_of(b"forged"));
        // Same size, new content: the change time moved, the file is read.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&input, b"other").unwrap();
        let d3 = input_digest_settled(&cache, &input, Duration::ZERO).unwrap();
        assert_eq!(d3, sha256_of(b"other"));
        // Still one memo for the one path.
        assert_eq!(std::fs::read_dir(cache.join("digests")).unwrap().count(), 1);
    }

    #[test]
    fn a_recently_changed_input_is_hashed_but_not_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let input = dir.path().join("input");
        std::fs::write(&input, b"fresh").unwrap();
        let d = input_digest(&cache, &input).unwrap();
        assert_eq!(d, sha256_of(b"fresh"));
        assert!(!cache.join("digests").exists());
    }

    #[test]
    fn a_read_only_cache_still_gives_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("input");
        std::fs::write(&input, b"data").unwrap();
        // A cache path under a regular file cannot be created.
        let cache = input.join("cache");
        let d = input_digest_settled(&cache, &input, Duration::ZERO).unwrap();
        assert_eq!(d, sha256_of(b"data"));
    }

    #[test]
    fn sparse_copy_keeps_content_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let f = std::fs::File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(b"middle", 30 << 20).unwrap();
        f.write_all_at(b"end", (64 << 20) - 3).unwrap();
        drop(f);
        let dest = dir.path().join("dest");
        copy_sparse(&src, &dest).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dest).unwrap());
        let blocks = std::fs::metadata(&dest).unwrap().blocks();
        assert!(blocks * 512 < 4 << 20, "{blocks} blocks: holes were filled");
    }
}
