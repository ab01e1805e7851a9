//! ext4 through e2fsprogs: `mkfs.ext4 -d` copies the staged folder, a
//! `debugfs` pass makes the image reproducible (and applies owners the
//! builder could not set without root), `e2fsck -fn` checks the result.
//!
//! What e2fsprogs would otherwise make differ between two builds of the
//! same input: the UUID and directory hash seed (random; here derived from
//! the inputs), superblock and creation times (`E2FSPROGS_FAKE_TIME`, for
//! debugfs too: it stamps the superblock's last write), and
//! each inode's ctime and atime (copied from the staging folder, which the
//! build itself touched; the debugfs pass sets both to the mtime).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use super::{content_size, walk, ImageError, ImageWriter};
use crate::rootfs::Root;

/// The time e2fsprogs stamps on the superblock and on what it creates
/// itself (lost+found): 2000-01-01T00:00:00Z.
const FIXED_TIME: i64 = 946_684_800;
const MIB: u64 = 1 << 20;

pub struct Ext4 {
    /// Image size in bytes; `None` sizes it to the content plus headroom.
    pub size: Option<u64>,
    /// Filesystem UUID, also the directory hash seed.
    pub uuid: [u8; 16],
    pub label: String,
}

impl Ext4 {
    /// Content plus headroom: 10% and 16 MiB free, the inode tables, and
    /// the journal mke2fs will make for that size.
    pub fn auto_size(data: u64, inodes: u64) -> u64 {
        let base = data + data / 10 + inodes * 512 + 16 * MIB;
        let journal = match base / 4096 {
            b if b < 32_768 => 4 * MIB,
            b if b < 256 * 1024 => 16 * MIB,
            b if b < 512 * 1024 => 32 * MIB,
            _ => 64 * MIB,
        };
        (base + journal).div_ceil(MIB) * MIB
    }

    fn uuid_string(&self) -> String {
        let h = crate::oci::hex(&self.uuid);
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

impl ImageWriter for Ext4 {
    fn file_name(&self) -> &'static str {
        "rootfs.ext4"
    }

    fn write(&self, root: &Root, out: &Path) -> Result<(), ImageError> {
        let entries = walk(root)?;
        let (data, inodes) = content_size(&entries);
        let size = match self.size {
            Some(s) => s,
            None => Self::auto_size(data, inodes),
        };
        let need = data + inodes * 256 + 8 * MIB;
        if size < need {
            return Err(ImageError::TooSmall {
                need: need.div_ceil(MIB),
                have: size / MIB,
            });
        }
        // Room for what the appliance creates at run time, too.
        let inode_count = (inodes * 2).max(size / 16_384).max(1024);
        let uuid = self.uuid_string();
        // A new, empty file: mke2fs grows it sparse, so every block it
        // does not write reads as zeros, which the option below relies on.
        std::fs::File::create(out).map_err(|e| ImageError::Io {
            path: out.to_path_buf(),
            what: "cannot create",
            source: e,
        })?;
        let mut mkfs = Command::new("mkfs.ext4");
        mkfs.args([
            "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0",
        ])
        .arg("-N")
        .arg(inode_count.to_string())
        .arg("-U")
        .arg(&uuid)
        .arg("-E")
        // The holes are zeros: mke2fs marks the inode tables zeroed
        // rather than leaving them to the kernel, which otherwise zeroes
        // them from a thread after every mount of a writable root, into
        // the run's overlay, racing the VM's power-off (the guest then
        // logs I/O errors for the writes the shutdown cut off).
        .arg(format!(
            "hash_seed={uuid},root_owner=0:0,assume_storage_prezeroed=1"
        ))
        .arg("-L")
        .arg(&self.label)
        .arg("-d")
        .arg(root.path())
        .arg(out)
        .arg(format!("{}k", size / 1024))
        .env("E2FSPROGS_FAKE_TIME", FIXED_TIME.to_string());
        run("mkfs.ext4", &mut mkfs, None).map_err(|e| match e {
            ImageError::Tool { stderr, .. } if stderr.contains("Could not allocate") => {
                ImageError::TooSmall {
                    need: need.div_ceil(MIB) + 16,
                    have: size / MIB,
                }
            }
            e => e,
        })?;

        tracing::debug!("mkfs.ext4 done");
        // One debugfs session for the whole tree.
        let mut script = String::new();
        let root_md = std::fs::symlink_metadata(root.path()).map_err(|e| ImageError::Io {
            path: root.path().to_path_buf(),
            what: "cannot stat",
            source: e,
        })?;
        let mut fix = |path: &str, md: &std::fs::Metadata| {
            let t = md.mtime();
            script.push_str(&format!(
                "sif \"{path}\" ctime @{t}\nsif \"{path}\" atime @{t}\n"
            ));
            let (uid, gid) = root.owner(md.ino(), md.uid(), md.gid());
            if (uid, gid) != (md.uid(), md.gid()) {
                script.push_str(&format!(
                    "sif \"{path}\" uid {uid}\nsif \"{path}\" gid {gid}\n"
                ));
            }
        };
        fix("/", &root_md);
        for e in &entries {
            let path = format!("/{}", e.rel.display());
            // debugfs's parser has no escapes: such names keep the build's
            // ctime (and, without root, the builder's owner).
            if path.contains(['"', '\n']) || e.rel.to_str().is_none() {
                tracing::warn!(
                    path,
                    "name debugfs cannot quote; its ctime is not normalised"
                );
                continue;
            }
            fix(&path, &e.md);
        }
        let mut debugfs = Command::new("debugfs");
        debugfs
            .args(["-w", "-f", "-"])
            .arg(out)
            .env("E2FSPROGS_FAKE_TIME", FIXED_TIME.to_string());
        run("debugfs", &mut debugfs, Some(script.as_bytes()))?;

        tracing::debug!("debugfs done");
        let mut fsck = Command::new("e2fsck");
        fsck.args(["-f", "-n"]).arg(out);
        run("e2fsck", &mut fsck, None)
    }
}

/// Runs a tool with `input` on stdin; its stderr is the error on failure.
pub(crate) fn run(
    tool: &'static str,
    cmd: &mut Command,
    input: Option<&[u8]>,
) -> Result<(), ImageError> {
    let io = |e| ImageError::Io {
        path: tool.into(),
        what: "cannot run (is e2fsprogs installed?)",
        source: e,
    };
    let output = super::output_with_input(cmd, input).map_err(io)?;
    // debugfs reports a bad command on stderr but exits 0.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let complaint = stderr
        .lines()
        .find(|l| tool == "debugfs" && !l.starts_with("debugfs ") && !l.trim().is_empty());
    if !output.status.success() || complaint.is_some() {
        let mut text = stderr.trim().to_string();
        if text.is_empty() {
            text = String::from_utf8_lossy(&output.stdout).trim().to_string();
        }
        return Err(ImageError::Tool {
            tool,
            status: output.status,
            stderr: text,
        });
    }
    Ok(())
}
