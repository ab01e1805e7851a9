//! Applying one image layer (a tar, plain or compressed) to the staging
//! root: whiteouts delete, opaque folders hide what lower layers put
//! there, and nothing lands outside the root (see [`crate::rootfs`]).

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tar::EntryType;

use crate::rootfs::{clean, Meta, Root, RootError};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("not a readable tar stream (corrupt or truncated?)")]
    Tar(#[source] io::Error),
    #[error("entry {path}")]
    Entry {
        path: PathBuf,
        #[source]
        source: RootError,
    },
    #[error("entry {0}: hard link with no target")]
    NoLinkTarget(PathBuf),
}

/// What applying a layer did, for the build's notes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LayerStats {
    pub entries: u64,
    pub bytes: u64,
    pub whiteouts: u64,
    /// Device nodes and sockets, which images never need: devtmpfs
    /// provides `/dev` in the guest.
    pub skipped: Vec<PathBuf>,
}

/// Wraps `blob` in the decompressor its first bytes call for: gzip, zstd,
/// or none (a plain tar).
pub fn decompress<'a>(blob: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut reader = BufReader::with_capacity(1 << 16, blob);
    let head = reader.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(reader)?)
    } else {
        Box::new(reader)
    })
}

/// Applies the tar stream `tar` (already decompressed) to `root`.
pub fn apply_layer(root: &mut Root, tar: impl Read) -> Result<LayerStats, UnpackError> {
    let mut archive = tar::Archive::new(tar);
    let mut stats = LayerStats::default();
    // What this layer made, which its own opaque markers must not hide.
    let mut made: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries().map_err(UnpackError::Tar)? {
        let mut entry = entry.map_err(UnpackError::Tar)?;
        let raw = entry.path().map_err(UnpackError::Tar)?.into_owned();
        let at = |source| UnpackError::Entry {
            path: raw.clone(),
            source,
        };
        let rel = clean(&raw).map_err(at)?;
        stats.entries += 1;
        let name = rel.file_name().map(|n| n.to_string_lossy().into_owned());
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if let Some(name) = name.as_deref() {
            if name == OPAQUE_MARKER {
                let keep = |p: &Path| made.contains(p);
                root.clear_dir(&parent, &keep).map_err(at)?;
                stats.whiteouts += 1;
                continue;
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                root.remove_path(&parent.join(hidden)).map_err(at)?;
                stats.whiteouts += 1;
                continue;
            }
        }
        let header = entry.header();
        let meta = Meta {
            mode: header.mode().map_err(UnpackError::Tar)? & 0o7777,
            uid: header.uid().map_err(UnpackError::Tar)? as u32,
            gid: header.gid().map_err(UnpackError::Tar)? as u32,
            mtime: header.mtime().map_err(UnpackError::Tar)? as i64,
            xattrs: xattrs(&mut entry)?,
        };
        match entry.header().entry_type() {
            EntryType::Directory => root.make_dir(&rel, &meta).map_err(at)?,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                stats.bytes += root.write_file(&rel, &mut entry, &meta).map_err(at)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(UnpackError::Tar)?
                    .ok_or_else(|| UnpackError::NoLinkTarget(raw.clone()))?
                    .into_owned();
                root.symlink(&rel, &target, &meta).map_err(at)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(UnpackError::Tar)?
                    .ok_or_else(|| UnpackError::NoLinkTarget(raw.clone()))?;
                let target = clean(&target).map_err(at)?;
                root.hard_link(&rel, &target).map_err(at)?;
            }
            EntryType::Fifo => root.fifo(&rel, &meta).map_err(at)?,
            EntryType::Char | EntryType::Block => {
                stats.skipped.push(rel.clone());
                continue;
            }
            // PAX and GNU long-name headers are folded into the entries
            // they describe by the tar reader; anything else is not a file.
            _ => continue,
        }
        made.insert(rel);
    }
    // Whatever follows the end-of-archive blocks is read too, so the
    // caller's digest check sees the whole blob.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(UnpackError::Tar)?;
    Ok(stats)
}

/// The entry's extended attributes from its PAX header
/// (`SCHILY.xattr.NAME`).
fn xattrs<R: Read>(entry: &mut tar::Entry<R>) -> Result<Vec<(OsString, Vec<u8>)>, UnpackError> {
    let Some(extensions) = entry.pax_extensions().map_err(UnpackError::Tar)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for ext in extensions {
        let ext = ext.map_err(UnpackError::Tar)?;
        if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
            out.push((
                std::ffi::OsStr::from_bytes(name).to_os_string(),
                ext.value_bytes().to_vec(),
            ));
        }
    }
    Ok(out)
}
