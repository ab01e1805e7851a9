//! Guest images made for a test: a busybox initramfs with a given `/init`,
//! and ext4 disks made with `mkfs.ext4 -d`.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The static busybox the guests run (Debian's busybox-static).
const BUSYBOX: &str = "/bin/busybox";

/// Writes an uncompressed newc initramfs in `dir` holding a static busybox
/// and `init` as the body of `/init`, a busybox `sh` script that runs with
/// devtmpfs, proc and sysfs mounted and the console as its stdio when there
/// is one yet (the kernel finds no /dev/console in an initramfs without
/// device nodes, and a kernel with a modular console driver has none).
pub fn busybox_initramfs(dir: &Path, init: &str) -> io::Result<PathBuf> {
    busybox_initramfs_with(dir, init, &[])
}

/// As [`busybox_initramfs`], plus `extra` host files at the given paths
/// (relative to the initramfs root).
pub fn busybox_initramfs_with(
    dir: &Path,
    init: &str,
    extra: &[(PathBuf, String)],
) -> io::Result<PathBuf> {
    let root = dir.join("initramfs-root");
    for d in ["bin", "dev", "proc", "sys", "tmp", "mnt"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::copy(BUSYBOX, root.join("bin/busybox"))?;
    for (src, dst) in extra {
        let dst = root.join(dst);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(src, dst)?;
    }
    let script = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexport PATH=/bin\n\
         mount -t devtmpfs dev /dev\n\
         if (exec </dev/console) 2>/dev/null; then exec </dev/console >/dev/console 2>&1; fi\n\
         mount -t proc proc /proc\nmount -t sysfs sys /sys\n{init}\n"
    );
    let init_path = root.join("init");
    fs::write(&init_path, script)?;
    fs::set_permissions(&init_path, fs::Permissions::from_mode(0o755))?;
    let out = dir.join("initramfs.cpio");
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet > \"$1\"")
        .arg("sh")
        .arg(&out)
        .current_dir(&root)
        .status()?;
    check(status, "cpio")?;
    Ok(out)
}

/// Makes an ext4 image of `size_mib` at `out` holding the files of `from`.
pub fn ext4_image(from: &Path, out: &Path, size_mib: u32) -> io::Result<()> {
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(from)
        .arg(out)
        .arg(format!("{size_mib}M"))
        .status()?;
    check(status, "mkfs.ext4")
}

fn check(status: std::process::ExitStatus, what: &str) -> io::Result<()> {
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("{what} failed: {status}")))
    }
}
