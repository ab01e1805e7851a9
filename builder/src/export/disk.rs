//! The raw disk: a GPT with an EFI system partition that holds a unified
//! kernel image, and the appliance's ext4 root.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use appliance_spec::ImageFormat;
use husk_init::config::{INIT_PATH, PORTABLE_ARG};

use super::{derived_uuid, io_at, run, ExportError, Request, Tools};

/// Debian's systemd EFI stub (package systemd-boot-efi): the EFI program
/// a unified kernel image is made of.
pub const EFI_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;
/// The smallest EFI system partition: FAT32 needs 65,525 clusters, and
/// some firmware reads nothing smaller as an ESP.
const ESP_MIN: u64 = 64 * MIB;
/// Every file in the EFI partition carries this time (2000-01-01), so the
/// partition's bytes do not depend on when it was made.
const FIXED_TIME: i64 = 946_684_800;

/// GPT partition types: the EFI system partition, and the x86-64 root of
/// the Discoverable Partitions Specification.
const TYPE_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const TYPE_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

/// Section addresses in the unified image: after the stub's own sections
/// (which end below 0x20000 in systemd 252's stub), as systemd documents
/// for objcopy; the kernel at 32 MiB, an initramfs after it.
const VMA_OSREL: u64 = 0x20000;
const VMA_CMDLINE: u64 = 0x30000;
const VMA_LINUX: u64 = 0x200_0000;

/// The assembled raw disk.
pub struct Raw {
    pub path: PathBuf,
    pub size: u64,
}

/// The kernel command line of an exported disk: the root by partition
/// UUID (or the initramfs in the kernel image), husk's init, the serial
/// console last so that it is `/dev/console` (where init reports), and
/// the appliance's own arguments.
pub fn cmdline(req: &Request, root_uuid: &str) -> String {
    let mut parts = vec![match req.image_format {
        ImageFormat::Ext4 => format!(
            "root=PARTUUID={root_uuid} rootfstype=ext4 rootwait {} init={INIT_PATH}",
            if req.readonly { "ro" } else { "rw" }
        ),
        ImageFormat::Initramfs => format!("rdinit={INIT_PATH}"),
    }];
    parts.push(format!(
        "{PORTABLE_ARG} console=tty0 console=ttyS0,115200 panic=10"
    ));
    if let Some(extra) = req.extra_cmdline.filter(|e| !e.trim().is_empty()) {
        parts.push(extra.trim().to_string());
    }
    parts.join(" ")
}

/// Assembles `work/disk.raw`.
pub(super) fn assemble(req: &Request, tools: &Tools, work: &Path) -> Result<Raw, ExportError> {
    let seed = req.image_digest;
    let root_uuid = derived_uuid(seed, "root partition");
    let uki = work.join("BOOTX64.EFI");
    unified_image(req, tools, &cmdline(req, &root_uuid), &uki)?;
    let esp = work.join("esp.img");
    let uki_len = fs::metadata(&uki)
        .map_err(io_at("cannot stat", &uki))?
        .len();
    let esp_size = ESP_MIN.max((uki_len + 8 * MIB).next_multiple_of(MIB));
    efi_partition(tools, &uki, esp_size, seed, work, &esp)?;

    let root_size = match req.image_format {
        ImageFormat::Ext4 => fs::metadata(req.image)
            .map_err(io_at("cannot stat", req.image))?
            .len()
            .next_multiple_of(MIB),
        ImageFormat::Initramfs => 0,
    };
    // 1 MiB before the first partition (protective MBR, GPT, alignment),
    // 1 MiB after the last (the backup GPT), so the size stays whole MiB.
    let size = MIB + esp_size + root_size + MIB;
    let path = work.join("disk.raw");
    let disk = File::create(&path).map_err(io_at("cannot create", &path))?;
    disk.set_len(size).map_err(io_at("cannot size", &path))?;

    let mut script = format!(
        "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: 2048\n\
         start=2048, size={}, type={TYPE_ESP}, uuid={}, name=\"EFI system partition\"\n",
        derived_uuid(seed, "disk"),
        esp_size / SECTOR,
        derived_uuid(seed, "EFI system partition"),
    );
    if root_size > 0 {
        script.push_str(&format!(
            "start={}, size={}, type={TYPE_ROOT_X86_64}, uuid={root_uuid}, name=\"root\"\n",
            (MIB + esp_size) / SECTOR,
            root_size / SECTOR,
        ));
    }
    partition(tools, &path, &script)?;
    copy_into(&disk, MIB, &esp, &path)?;
    if root_size > 0 {
        copy_into(&disk, MIB + esp_size, req.image, &path)?;
    }
    // Not synced here: for most formats it is only the converter's input;
    // export() syncs whatever becomes the output.
    fs::remove_file(&esp).map_err(io_at("cannot remove", &esp))?;
    Ok(Raw { path, size })
}

/// systemd's stub with the kernel, its command line, an os-release that
/// names the appliance, and the initramfs image when the root is one.
fn unified_image(
    req: &Request,
    tools: &Tools,
    cmdline: &str,
    out: &Path,
) -> Result<(), ExportError> {
    let dir = out.parent().expect("the work folder");
    let cmdline_file = dir.join("cmdline");
    fs::write(&cmdline_file, cmdline).map_err(io_at("cannot write", &cmdline_file))?;
    let osrel = dir.join("os-release");
    let m = &req.machine;
    let text = format!(
        "NAME=\"husk appliance\"\nID=husk\nPRETTY_NAME=\"{} {}\"\nVERSION_ID=\"{}\"\n",
        m.name.replace('"', ""),
        m.version.as_deref().unwrap_or("").replace('"', ""),
        m.version.as_deref().unwrap_or("").replace('"', ""),
    );
    fs::write(&osrel, text).map_err(io_at("cannot write", &osrel))?;
    let section = |name: &str, file: &Path, vma: u64| {
        [
            "--add-section".to_string(),
            format!("{name}={}", file.display()),
            "--change-section-vma".to_string(),
            format!("{name}={vma:#x}"),
        ]
    };
    let mut cmd = Command::new(&tools.objcopy);
    cmd.args(section(".osrel", &osrel, VMA_OSREL))
        .args(section(".cmdline", &cmdline_file, VMA_CMDLINE))
        .args(section(".linux", req.kernel, VMA_LINUX));
    if req.image_format == ImageFormat::Initramfs {
        let kernel_len = fs::metadata(req.kernel)
            .map_err(io_at("cannot stat", req.kernel))?
            .len();
        let vma = VMA_LINUX + kernel_len.next_multiple_of(MIB);
        cmd.args(section(".initrd", req.image, vma));
    }
    cmd.arg(EFI_STUB).arg(out);
    run("objcopy (the unified kernel image)", &mut cmd)?;
    fix_pe_time(out)
}

/// objcopy stamps a PE file with the time it wrote it (binutils 2.40 has
/// no switch against it): the COFF header's time becomes [`FIXED_TIME`],
/// and the optional header's checksum is computed again to match.
fn fix_pe_time(path: &Path) -> Result<(), ExportError> {
    let mut bytes = fs::read(path).map_err(io_at("cannot read", path))?;
    let not_pe = || ExportError::Io {
        what: "objcopy did not write a PE file:",
        path: path.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidData),
    };
    let pe = bytes
        .get(0x3c..0x40)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or_else(not_pe)?;
    // "PE\0\0", the COFF header (time at +8), the optional header (its
    // checksum at +64 from its start, 24 bytes in).
    let checksum_at = pe + 24 + 64;
    if bytes.get(pe..pe + 4) != Some(b"PE\0\0") || bytes.len() < checksum_at + 4 {
        return Err(not_pe());
    }
    bytes[pe + 8..pe + 12].copy_from_slice(&(FIXED_TIME as u32).to_le_bytes());
    bytes[checksum_at..checksum_at + 4].fill(0);
    let checksum = pe_checksum(&bytes);
    bytes[checksum_at..checksum_at + 4].copy_from_slice(&checksum.to_le_bytes());
    fs::write(path, bytes).map_err(io_at("cannot write", path))
}

/// The PE image checksum: 16-bit one's-complement-style sum of the file
/// (its checksum field zero), folded, plus the file's length.
fn pe_checksum(bytes: &[u8]) -> u32 {
    let mut sum: u64 = 0;
    for pair in bytes.chunks(2) {
        let word = u16::from_le_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u64::from(word);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(bytes.len() as u32)
}

/// A FAT32 file system of `size` bytes holding `EFI/BOOT/BOOTX64.EFI`,
/// made without mounting: mkfs.vfat with fixed identifiers, then mtools.
fn efi_partition(
    tools: &Tools,
    uki: &Path,
    size: u64,
    seed: &str,
    work: &Path,
    out: &Path,
) -> Result<(), ExportError> {
    // The tree mcopy copies, every time stamp fixed (`-m` keeps them).
    let tree = work.join("esp");
    let boot = tree.join("EFI/BOOT");
    fs::create_dir_all(&boot).map_err(io_at("cannot create", &boot))?;
    let target = boot.join("BOOTX64.EFI");
    fs::rename(uki, &target).map_err(io_at("cannot move", uki))?;
    let fixed = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: FIXED_TIME,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: FIXED_TIME,
            tv_nsec: 0,
        },
    };
    for p in [&target, &boot, &tree.join("EFI")] {
        rustix::fs::utimensat(rustix::fs::CWD, p, &fixed, rustix::fs::AtFlags::empty()).map_err(
            |e| ExportError::Io {
                what: "cannot set the time of",
                path: p.to_path_buf(),
                source: e.into(),
            },
        )?;
    }
    let volume_id = derived_uuid(seed, "FAT volume").replace('-', "")[..8].to_string();
    run(
        "mkfs.vfat (the EFI system partition)",
        Command::new(&tools.mkfs_vfat)
            .args(["-C", "--invariant", "-F", "32", "-n", "HUSK-EFI", "-i"])
            .arg(&volume_id)
            .arg(out)
            .arg((size / 1024).to_string()),
    )?;
    run(
        "mcopy (the unified kernel image into the EFI partition)",
        Command::new(&tools.mcopy)
            .args(["-s", "-m", "-i"])
            .arg(out)
            .arg(tree.join("EFI"))
            .arg("::/"),
    )
}

/// Writes the partition table with sfdisk, from a script.
fn partition(tools: &Tools, disk: &Path, script: &str) -> Result<(), ExportError> {
    let mut child = Command::new(&tools.sfdisk)
        .args([
            "--quiet",
            "--no-reread",
            "--no-tell-kernel",
            "--wipe",
            "never",
        ])
        .arg(disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_at("cannot run", &tools.sfdisk))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(script.as_bytes())
        .map_err(io_at("cannot write to sfdisk for", disk))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(io_at("cannot wait for sfdisk on", disk))?;
    if out.status.success() {
        return Ok(());
    }
    Err(ExportError::Step {
        step: "sfdisk (the partition table)",
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Copies `src` into `disk` at `offset`, leaving blocks of zeros as holes
/// (the disk file is sparse; so stays a sparse ext4 image).
fn copy_into(disk: &File, offset: u64, src: &Path, disk_path: &Path) -> Result<(), ExportError> {
    let mut from = File::open(src).map_err(io_at("cannot open", src))?;
    let mut buf = vec![0u8; MIB as usize];
    let mut at = offset;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = from
                .read(&mut buf[filled..])
                .map_err(io_at("cannot read", src))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(());
        }
        let chunk = &buf[..filled];
        if chunk.iter().any(|&b| b != 0) {
            disk.write_all_at(chunk, at)
                .map_err(io_at("cannot write", disk_path))?;
        }
        at += filled as u64;
        if filled < buf.len() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checksum agrees with the one objcopy itself writes: take its
    /// output, zero the field, compute it again.
    #[test]
    fn pe_checksum_matches_objcopy() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("stub.efi");
        let data = dir.path().join("data");
        fs::write(&data, vec![7u8; 4097]).unwrap();
        let status = Command::new("objcopy")
            .args(["--add-section"])
            .arg(format!(".data2={}", data.display()))
            .args(["--change-section-vma", ".data2=0x30000"])
            .arg(EFI_STUB)
            .arg(&out)
            .status()
            .expect("objcopy (binutils) and systemd-boot-efi's stub: run ci/setup");
        assert!(status.success());
        let mut bytes = fs::read(&out).unwrap();
        let pe = u32::from_le_bytes(bytes[0x3c..0x40].try_into().unwrap()) as usize;
        let at = pe + 24 + 64;
        let written = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_ne!(written, 0, "objcopy writes a checksum");
        bytes[at..at + 4].fill(0);
        assert_eq!(pe_checksum(&bytes), written);

        fix_pe_time(&out).unwrap();
        let fixed = fs::read(&out).unwrap();
        assert_eq!(
            u32::from_le_bytes(fixed[pe + 8..pe + 12].try_into().unwrap()),
            FIXED_TIME as u32
        );
        let mut zeroed = fixed.clone();
        zeroed[at..at + 4].fill(0);
        assert_eq!(
            u32::from_le_bytes(fixed[at..at + 4].try_into().unwrap()),
            pe_checksum(&zeroed)
        );
        // Not a PE file: a clear error, not a panic.
        fs::write(&data, b"MZ").unwrap();
        assert!(fix_pe_time(&data).is_err());
    }
}
