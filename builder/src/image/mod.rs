//! Image writers: one per output format, behind [`ImageWriter`], so a new
//! format needs no change in the callers.

mod ext4;
mod initramfs;

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub use ext4::Ext4;
pub use initramfs::{read_file as initramfs_read_file, Initramfs};

use crate::rootfs::Root;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {what}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        tool: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("the content needs about {need} MiB but rootfs.size is {have} MiB; raise it or use size = \"auto\"")]
    TooSmall { need: u64, have: u64 },
}

/// Writes a staged root filesystem as one image file.
pub trait ImageWriter {
    /// The image's file name in the cache (`rootfs.ext4`, ...).
    fn file_name(&self) -> &'static str;
    /// Writes the image of `root` to `out` (a temporary name; the caller
    /// renames it into place).
    fn write(&self, root: &Root, out: &Path) -> Result<(), ImageError>;
}

/// Runs `cmd` with `input` (if any) on its stdin and collects its output.
/// The input is fed from a thread: a tool such as debugfs fills its output
/// pipe while it is still reading.
pub(crate) fn output_with_input(
    cmd: &mut std::process::Command,
    input: Option<&[u8]>,
) -> io::Result<std::process::Output> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let feeder = input.map(|input| {
        let mut stdin = child.stdin.take().expect("piped");
        let input = input.to_vec();
        std::thread::spawn(move || stdin.write_all(&input))
    });
    let output = child.wait_with_output()?;
    if let Some(f) = feeder {
        f.join().expect("feeder thread")?;
    }
    Ok(output)
}

/// One staged entry, relative to the root, with its `lstat`.
pub struct Entry {
    pub rel: PathBuf,
    pub md: std::fs::Metadata,
}

/// Every entry under the root except the root itself, in a stable order
/// (byte order of paths, parents before children).
pub fn walk(root: &Root) -> Result<Vec<Entry>, ImageError> {
    fn visit(base: &Path, rel: &Path, out: &mut Vec<Entry>) -> io::Result<()> {
        let mut names: Vec<_> = std::fs::read_dir(base.join(rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for name in names {
            let rel = rel.join(name);
            let md = std::fs::symlink_metadata(base.join(&rel))?;
            let is_dir = md.is_dir();
            out.push(Entry {
                rel: rel.clone(),
                md,
            });
            if is_dir {
                visit(base, &rel, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    visit(root.path(), Path::new(""), &mut out).map_err(|e| ImageError::Io {
        path: root.path().to_path_buf(),
        what: "cannot walk the staging folder",
        source: e,
    })?;
    Ok(out)
}

/// Bytes of file data and the number of inodes `entries` need.
pub fn content_size(entries: &[Entry]) -> (u64, u64) {
    let mut seen = std::collections::HashSet::new();
    let mut bytes = 0;
    for e in entries {
        if e.md.nlink() > 1 && !e.md.is_dir() && !seen.insert(e.md.ino()) {
            continue;
        }
        bytes += e.md.len().div_ceil(4096) * 4096;
    }
    (bytes, entries.len() as u64 + 1)
}
