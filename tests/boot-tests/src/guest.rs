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
/// devtmpfs, proc and sysfs mounted and the console as its stdio once there
/// is one (the kernel finds no /dev/console in an initramfs without device
/// nodes, a kernel with a modular console driver has none at first, and
/// QEMU's multiport console may register after init starts).
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
    // Under QEMU the multiport console can register after init starts:
    // wait for it (up to 3 s, as husk's init does), else output is lost.
    let script = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexport PATH=/bin\n\
         mount -t devtmpfs dev /dev\n\
         i=0; until (exec </dev/console) 2>/dev/null || [ $i -ge 300 ]; do usleep 10000; i=$((i+1)); done\n\
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
/// Its inode tables are marked zeroed (the new file's holes are), as
/// husk's own images are: the guest kernel would otherwise zero them after
/// mounting, racing the VM's end.
pub fn ext4_image(from: &Path, out: &Path, size_mib: u32) -> io::Result<()> {
    match std::fs::remove_file(out) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let status = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-E",
            "root_owner=0:0,assume_storage_prezeroed=1",
            "-d",
        ])
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

/// Builds the tiny PVH guest (`guest/tiny.S`): it reports status 0 on
/// husk's control port and then triple-faults, or with `spin` spins for
/// hosts (PVM) that cannot emulate the triple fault.
pub fn tiny_guest(dir: &Path, spin: bool) -> Result<PathBuf, String> {
    tiny_guest_with(dir, spin, false)
}

/// [`tiny_guest`], with `snapshot`: its first port write marks init's
/// snapshot point.
pub fn tiny_guest_with(dir: &Path, spin: bool, snapshot: bool) -> Result<PathBuf, String> {
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest");
    let name = match (spin, snapshot) {
        (false, false) => "tiny",
        (true, false) => "tiny-spin",
        (false, true) => "tiny-snapshot",
        (true, true) => "tiny-spin-snapshot",
    };
    let obj = dir.join(format!("{name}.o"));
    let elf = dir.join(format!("{name}.elf"));
    let mut cc = Command::new("cc");
    cc.arg("-c").arg(guest.join("tiny.S")).arg("-o").arg(&obj);
    if spin {
        cc.arg("-DSPIN");
    }
    if snapshot {
        cc.arg("-DSNAPSHOT");
    }
    let compiled = cc
        .status()
        .map_err(|e| format!("cc: {e} (install build-essential: ci/setup)"))?
        .success();
    let linked = compiled
        && Command::new("ld")
            .args(["-m", "elf_x86_64", "-T"])
            .arg(guest.join("tiny.ld"))
            .arg("-o")
            .arg(&elf)
            .arg(&obj)
            .status()
            .map_err(|e| format!("ld: {e}"))?
            .success();
    linked
        .then_some(elf)
        .ok_or_else(|| "building the tiny guest failed".into())
}
