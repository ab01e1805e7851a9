//! `husk export`: an appliance's image as a disk that VMware, Hyper-V,
//! VirtualBox, QEMU/KVM and the clouds boot with UEFI firmware.
//!
//! ```text
//! raw disk (GPT, 1 MiB aligned, size a whole number of MiB)
//! ├── 1: EFI system partition, FAT32: EFI/BOOT/BOOTX64.EFI, a unified
//! │      kernel image (systemd's EFI stub + the portable kernel + its
//! │      command line, and the image itself when it is an initramfs)
//! └── 2: the appliance's ext4 root, found by its partition UUID
//! ```
//!
//! The raw disk is assembled in a work folder beside the output
//! ([`disk`]), then converted with `qemu-img` or packed ([`ovf`] for
//! OVA); the result is renamed into place only when complete, and the
//! work folder is removed whatever happens. Every identifier in the disk
//! (GPT and partition UUIDs, the FAT volume id) comes from the image's
//! digest, and every timestamp is fixed, so one image exports to the same
//! raw and qcow2 bytes every time.

pub mod disk;
pub mod ovf;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use appliance_spec::ImageFormat;
use sha2::{Digest, Sha256};

/// What `husk export --format` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OVF 1.0 package: descriptor, manifest, stream-optimized VMDK.
    Ova,
    /// Monolithic sparse VMDK (VMware Workstation, VirtualBox).
    Vmdk,
    /// Fixed VHD, size a whole number of MiB (Hyper-V, Azure).
    Vhd,
    /// Dynamic VHDX (Hyper-V).
    Vhdx,
    Qcow2,
    Raw,
    /// Google Compute Engine's import format: `disk.raw` in a gzipped
    /// GNU tar.
    Gce,
}

impl Format {
    pub const ALL: [Format; 7] = [
        Format::Ova,
        Format::Vmdk,
        Format::Vhd,
        Format::Vhdx,
        Format::Qcow2,
        Format::Raw,
        Format::Gce,
    ];

    /// The name `--format` takes.
    pub fn name(self) -> &'static str {
        match self {
            Format::Ova => "ova",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
            Format::Gce => "gce",
        }
    }

    /// The output file's extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Gce => "tar.gz",
            other => other.name(),
        }
    }

    /// `qemu-img convert` output format and options, where it converts.
    fn qemu_img(self) -> Option<(&'static str, &'static str)> {
        match self {
            Format::Vmdk => Some(("vmdk", "subformat=monolithicSparse,adapter_type=lsilogic")),
            // force_size: the virtual size is exactly the raw disk's (a
            // whole number of MiB, as Azure requires), not rounded to the
            // VHD's cylinder geometry.
            Format::Vhd => Some(("vpc", "subformat=fixed,force_size=on")),
            Format::Vhdx => Some(("vhdx", "subformat=dynamic")),
            Format::Qcow2 => Some(("qcow2", "")),
            Format::Ova => Some(("vmdk", "subformat=streamOptimized,adapter_type=lsilogic")),
            Format::Raw | Format::Gce => None,
        }
    }
}

/// The virtual machine an OVA describes: the appliance's name and `[vm]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub name: String,
    pub version: Option<String>,
    pub description: Option<String>,
    pub cpus: u32,
    pub memory_mib: u64,
}

/// One export.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The built image (ext4 root or initramfs) and its `sha256:` digest.
    pub image: &'a Path,
    pub image_format: ImageFormat,
    pub image_digest: &'a str,
    /// Mount the root read-only.
    pub readonly: bool,
    /// The appliance's own kernel command-line arguments (`vm.cmdline`).
    pub extra_cmdline: Option<&'a str>,
    /// The portable kernel's bzImage.
    pub kernel: &'a Path,
    pub machine: Machine,
    pub format: Format,
    pub output: &'a Path,
    /// Let `qemu-img` draw its progress bar (stderr is a terminal).
    pub progress_bar: bool,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Exported {
    pub path: PathBuf,
    /// Bytes on disk of the output file.
    pub size: u64,
    /// The raw disk's size: the virtual size every format reports.
    pub disk_size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "{tool} is not installed (it is in Debian's {package} package: apt-get install {package})"
    )]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error(
        "not enough free space in {}: this export needs about {need_mib} MiB, {free_mib} MiB are free",
        dir.display()
    )]
    NoSpace {
        dir: PathBuf,
        need_mib: u64,
        free_mib: u64,
    },
    #[error("{step} failed ({status}): {stderr}")]
    Step {
        step: &'static str,
        status: String,
        stderr: String,
    },
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_at<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ExportError + 'a {
    move |source| ExportError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A program export runs, and the Debian package that has it.
struct Tool {
    name: &'static str,
    package: &'static str,
}

const SFDISK: Tool = Tool {
    name: "sfdisk",
    package: "fdisk",
};
const MKFS_VFAT: Tool = Tool {
    name: "mkfs.vfat",
    package: "dosfstools",
};
const MCOPY: Tool = Tool {
    name: "mcopy",
    package: "mtools",
};
const OBJCOPY: Tool = Tool {
    name: "objcopy",
    package: "binutils",
};
const QEMU_IMG: Tool = Tool {
    name: "qemu-img",
    package: "qemu-utils",
};

impl Tool {
    /// Its path: on `PATH`, or in the sbin folders a user's `PATH` may
    /// lack (sfdisk and mkfs.vfat live there).
    fn find(&self) -> Result<PathBuf, ExportError> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
            .map(|dir| dir.join(self.name))
            .find(|p| p.is_file())
            .ok_or(ExportError::MissingTool {
                tool: self.name,
                package: self.package,
            })
    }
}

/// The tools a format needs, found before any work starts.
struct Tools {
    sfdisk: PathBuf,
    mkfs_vfat: PathBuf,
    mcopy: PathBuf,
    objcopy: PathBuf,
    qemu_img: Option<PathBuf>,
}

impl Tools {
    fn find(format: Format) -> Result<Tools, ExportError> {
        let stub = Path::new(disk::EFI_STUB);
        if !stub.is_file() {
            return Err(ExportError::MissingTool {
                tool: "systemd's EFI stub (linuxx64.efi.stub)",
                package: "systemd-boot-efi",
            });
        }
        Ok(Tools {
            sfdisk: SFDISK.find()?,
            mkfs_vfat: MKFS_VFAT.find()?,
            mcopy: MCOPY.find()?,
            objcopy: OBJCOPY.find()?,
            qemu_img: format.qemu_img().map(|_| QEMU_IMG.find()).transpose()?,
        })
    }
}

/// Whether every tool `format` needs is installed (the error names the
/// first missing one and its package): worth knowing before building.
pub fn check_tools(format: Format) -> Result<(), ExportError> {
    Tools::find(format).map(|_| ())
}

/// Runs `cmd`; a failure carries its stderr.
fn run(step: &'static str, cmd: &mut Command) -> Result<(), ExportError> {
    tracing::debug!(?cmd, "running");
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(io_at("cannot run", Path::new(cmd.get_program())))?;
    if out.status.success() {
        return Ok(());
    }
    Err(ExportError::Step {
        step,
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Between the output's name and the exporting process's pid in the name
/// of its work folder: `.NAME.EXT.husk-export-PID`.
const WORK_INFIX: &str = ".husk-export-";

/// Removes the work folders of exports to `file_name` whose process is
/// gone (killed before it could clean up).
fn remove_stale_work(dir: &Path, file_name: &str) {
    let prefix = format!(".{file_name}{WORK_INFIX}");
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // Another user's process (EPERM) is alive too.
        let alive = rustix::process::Pid::from_raw(pid)
            .is_some_and(|p| rustix::process::test_kill_process(p) != Err(rustix::io::Errno::SRCH));
        if !alive {
            tracing::info!(path = %entry.path().display(), "removing a dead export's work folder");
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A work folder beside the output, removed when dropped.
struct Work(PathBuf);

impl Drop for Work {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Exports the image: checks the tools and the free space, assembles the
/// raw disk, converts it, and renames the result to `req.output`.
pub fn export(req: &Request, progress: &mut dyn FnMut(&str)) -> Result<Exported, ExportError> {
    let tools = Tools::find(req.format)?;
    let out_dir = match req.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = req
        .output
        .file_name()
        .ok_or_else(|| ExportError::Io {
            what: "not a file name:",
            path: req.output.to_path_buf(),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        })?
        .to_string_lossy()
        .into_owned();
    remove_stale_work(&out_dir, &file_name);
    check_space(req, &out_dir)?;
    let work = Work(out_dir.join(format!(".{file_name}{WORK_INFIX}{}", std::process::id())));
    let _ = fs::remove_dir_all(&work.0);
    fs::create_dir(&work.0).map_err(io_at("cannot create", &work.0))?;

    progress("assembling the disk (EFI system partition, unified kernel image, root)");
    let raw = disk::assemble(req, &tools, &work.0)?;
    let result = match req.format {
        Format::Raw => raw.path.clone(),
        Format::Gce => {
            progress("packing disk.raw into a gzipped tar");
            let out = work.0.join("gce.tar.gz");
            gce_tarball(&raw.path, &out)?;
            out
        }
        Format::Ova => {
            let base = ovf::file_base(&req.machine.name);
            let vmdk = work.0.join(format!("{base}-disk1.vmdk"));
            progress("converting to a stream-optimized VMDK");
            convert(req, &tools, &raw.path, &vmdk, Format::Ova)?;
            progress("writing the OVF descriptor, manifest and OVA");
            let out = work.0.join("out.ova");
            ovf::package(&req.machine, raw.size, &vmdk, &base, &out)?;
            out
        }
        other => {
            progress(&format!("converting to {}", other.name()));
            let out = work.0.join(format!("out.{}", other.extension()));
            convert(req, &tools, &raw.path, &out, other)?;
            out
        }
    };
    File::open(&result)
        .and_then(|f| f.sync_all())
        .map_err(io_at("cannot sync", &result))?;
    fs::rename(&result, req.output).map_err(io_at("cannot rename into place", req.output))?;
    let size = fs::metadata(req.output)
        .map_err(io_at("cannot stat", req.output))?
        .len();
    Ok(Exported {
        path: req.output.to_path_buf(),
        size,
        disk_size: raw.size,
    })
}

/// Refuses to start where the output's file system cannot hold the work
/// and the result: the raw disk's data (the image, the EFI partition) and
/// a converted copy of about the same size.
fn check_space(req: &Request, dir: &Path) -> Result<(), ExportError> {
    use std::os::unix::fs::MetadataExt;
    let image = fs::metadata(req.image).map_err(io_at("cannot stat", req.image))?;
    let kernel = fs::metadata(req.kernel).map_err(io_at("cannot stat", req.kernel))?;
    let data = image.blocks() * 512 + 2 * kernel.len() + (2 << 20);
    let need = 2 * data + (8 << 20);
    let stat = rustix::fs::statvfs(dir).map_err(|e| ExportError::Io {
        what: "cannot read the free space of",
        path: dir.to_path_buf(),
        source: e.into(),
    })?;
    let free = stat.f_bavail * stat.f_frsize;
    if free < need {
        return Err(ExportError::NoSpace {
            dir: dir.to_path_buf(),
            need_mib: need.div_ceil(1 << 20),
            free_mib: free >> 20,
        });
    }
    Ok(())
}

fn convert(
    req: &Request,
    tools: &Tools,
    raw: &Path,
    out: &Path,
    format: Format,
) -> Result<(), ExportError> {
    let (Some((name, options)), Some(qemu_img)) = (format.qemu_img(), &tools.qemu_img) else {
        unreachable!("Tools::find looked qemu-img up for every format that converts");
    };
    let mut cmd = Command::new(qemu_img);
    cmd.args(["convert", "-f", "raw", "-O", name]);
    if !options.is_empty() {
        cmd.args(["-o", options]);
    }
    cmd.arg(raw).arg(out);
    if req.progress_bar {
        // The bar goes to the terminal; errors still come back.
        cmd.arg("-p");
        let status = cmd
            .stdin(Stdio::null())
            .status()
            .map_err(io_at("cannot run", qemu_img))?;
        if !status.success() {
            return Err(ExportError::Step {
                step: "qemu-img convert",
                status: status.to_string(),
                stderr: "(its messages are above)".into(),
            });
        }
        return Ok(());
    }
    run("qemu-img convert", &mut cmd)
}

/// `disk.raw` alone in a gzipped GNU tar, as Compute Engine imports it;
/// owner, mode and time fixed.
fn gce_tarball(raw: &Path, out: &Path) -> Result<(), ExportError> {
    let file = File::create(out).map_err(io_at("cannot create", out))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut disk = File::open(raw).map_err(io_at("cannot open", raw))?;
    let len = disk.metadata().map_err(io_at("cannot stat", raw))?.len();
    let mut header = fixed_header(tar::Header::new_gnu(), len);
    tar.append_data(&mut header, "disk.raw", &mut disk)
        .map_err(io_at("cannot write", out))?;
    let gz = tar.into_inner().map_err(io_at("cannot write", out))?;
    gz.finish()
        .and_then(|mut f| f.flush())
        .map_err(io_at("cannot write", out))
}

/// A UUID (version 4 layout) derived from `seed` and `what`: stable for
/// one image, different between images and between the disk's parts.
pub fn derived_uuid(seed: &str, what: &str) -> String {
    let d = Sha256::new()
        .chain_update(seed)
        .chain_update([0])
        .chain_update(what)
        .finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The SHA-256 of a file, as lowercase hex (the builder's own digest,
/// without its `sha256:`).
fn sha256_file(path: &Path) -> Result<String, ExportError> {
    let digest = crate::oci::file_digest(path).map_err(io_at("cannot read", path))?;
    Ok(digest.trim_start_matches("sha256:").to_string())
}

/// A tar member's header with owner, mode and time fixed (the bytes of
/// an archive depend on its contents only): GNU format for Compute
/// Engine, ustar for OVF.
fn fixed_header(mut h: tar::Header, len: u64) -> tar::Header {
    h.set_size(len);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

/// `name` with what a file name should not hold replaced by `-`.
fn safe_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_start_matches('.').to_string();
    if s.is_empty() {
        "appliance".into()
    } else {
        s
    }
}

/// The default output file for an appliance name and a format.
pub fn default_output(name: &str, format: Format) -> PathBuf {
    PathBuf::from(format!("{}.{}", safe_name(name), format.extension()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_uuids_are_stable_distinct_and_well_formed() {
        let a = derived_uuid("sha256:aa", "disk");
        assert_eq!(a, derived_uuid("sha256:aa", "disk"));
        assert_ne!(a, derived_uuid("sha256:aa", "root"));
        assert_ne!(a, derived_uuid("sha256:ab", "disk"));
        let parts: Vec<_> = a.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
        assert_eq!(&a[14..15], "4", "version 4 layout: {a}");
        assert!("89ab".contains(&a[19..20]), "RFC 4122 variant: {a}");
    }

    #[test]
    fn output_names_are_safe() {
        assert_eq!(default_output("web", Format::Ova), Path::new("web.ova"));
        assert_eq!(
            default_output("a/b c", Format::Gce),
            Path::new("a-b-c.tar.gz")
        );
        assert_eq!(
            default_output("..", Format::Raw),
            Path::new("appliance.raw")
        );
    }

    #[test]
    fn every_format_has_a_distinct_name_and_extension() {
        let mut names: Vec<_> = Format::ALL.iter().map(|f| f.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Format::ALL.len());
        let mut ext: Vec<_> = Format::ALL.iter().map(|f| f.extension()).collect();
        ext.sort_unstable();
        ext.dedup();
        assert_eq!(ext.len(), Format::ALL.len());
    }
}
