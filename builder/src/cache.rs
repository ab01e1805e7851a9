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

/// A copy of `src` in a file with no name in folder `dir` (`O_TMPFILE`):
/// it vanishes with its last file descriptor, however the process ends.
pub fn anonymous_copy(src: &Path, dir: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::TMPFILE.bits() as i32)
        .open(dir)?;
    copy_sparse_into(src, &file)?;
    Ok(file)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};

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
