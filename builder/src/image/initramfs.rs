//! initramfs: a gzip-compressed cpio "newc" archive, written in-process.
//!
//! Entries are in path order with their owners, modes and mtimes; the
//! inode numbers are renumbered from 1 so the archive does not depend on
//! the staging folder. A hard link's data is written with its first name
//! only; the kernel links later names to it. Extended attributes are not
//! kept (cpio has no place for them). `/dev/console` and `/dev/null` are
//! added: the kernel opens the first for init before devtmpfs is mounted,
//! and Rust's runtime needs the second when the first is not there yet.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use flate2::write::GzEncoder;

use super::{walk, ImageError, ImageWriter};
use crate::rootfs::Root;

const TRAILER: &str = "TRAILER!!!";
const S_IFCHR: u32 = 0o020000;

pub struct Initramfs;

struct Header<'a> {
    name: &'a [u8],
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
}

fn write_header(w: &mut impl Write, h: &Header) -> io::Result<()> {
    let fields = [
        h.ino, h.mode, h.uid, h.gid, h.nlink, h.mtime, h.size, 0, 0, h.rdev.0, h.rdev.1,
    ];
    write!(w, "070701")?;
    for f in fields {
        write!(w, "{f:08x}")?;
    }
    write!(w, "{:08x}{:08x}", h.name.len() + 1, 0)?;
    w.write_all(h.name)?;
    w.write_all(&[0])?;
    pad(w, 110 + h.name.len() + 1)
}

fn pad(w: &mut impl Write, len: usize) -> io::Result<()> {
    w.write_all(&[0; 3][..(4 - len % 4) % 4])
}

impl ImageWriter for Initramfs {
    fn file_name(&self) -> &'static str {
        "rootfs.cpio.gz"
    }

    fn write(&self, root: &Root, out: &Path) -> Result<(), ImageError> {
        let entries = walk(root)?;
        let io = |what| {
            move |e| ImageError::Io {
                path: out.to_path_buf(),
                what,
                source: e,
            }
        };
        let file = File::create(out).map_err(io("cannot create image"))?;
        let mut w = GzEncoder::new(BufWriter::new(file), flate2::Compression::default());
        let mut inodes: HashMap<u64, u32> = HashMap::new();
        let mut next_ino = 1u32;
        // The device nodes the kernel and Rust's runtime need before
        // devtmpfs is mounted: init's console, and /dev/null.
        let mut nodes = vec![("dev/console", 0o600, (5, 1)), ("dev/null", 0o666, (1, 3))];
        for e in &entries {
            let md = &e.md;
            let (ino, first) = match inodes.get(&md.ino()) {
                Some(&i) => (i, false),
                None => {
                    inodes.insert(md.ino(), next_ino);
                    next_ino += 1;
                    (next_ino - 1, true)
                }
            };
            let ft = md.file_type();
            if ft.is_char_device() || ft.is_block_device() || ft.is_socket() {
                continue;
            }
            nodes.retain(|(name, ..)| e.rel != Path::new(name));
            let (uid, gid) = root.owner(md.ino(), md.uid(), md.gid());
            let name = e.rel.as_os_str().as_bytes();
            let data: Vec<u8> = if ft.is_symlink() {
                std::fs::read_link(root.path().join(&e.rel))
                    .map_err(io("cannot read staged symlink"))?
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            } else {
                Vec::new()
            };
            let size = if ft.is_file() && first {
                md.len()
            } else {
                data.len() as u64
            };
            let size32 = u32::try_from(size).map_err(|_| ImageError::Io {
                path: e.rel.clone(),
                what: "file too big for an initramfs (4 GiB); use format = \"ext4\"",
                source: io::ErrorKind::FileTooLarge.into(),
            })?;
            write_header(
                &mut w,
                &Header {
                    name,
                    ino,
                    mode: md.mode(),
                    uid,
                    gid,
                    nlink: if md.is_dir() { 2 } else { md.nlink() as u32 },
                    mtime: md.mtime().clamp(0, u32::MAX.into()) as u32,
                    size: size32,
                    rdev: (0, 0),
                },
            )
            .map_err(io("cannot write image"))?;
            if ft.is_file() && first {
                let mut f =
                    File::open(root.path().join(&e.rel)).map_err(io("cannot read staged file"))?;
                let copied =
                    io::copy(&mut (&mut f).take(size), &mut w).map_err(io("cannot write image"))?;
                if copied != size {
                    return Err(io("staged file changed while writing")(
                        io::ErrorKind::UnexpectedEof.into(),
                    ));
                }
            } else {
                w.write_all(&data).map_err(io("cannot write image"))?;
            }
            pad(&mut w, size as usize).map_err(io("cannot write image"))?;
        }
        for (name, perm, rdev) in nodes {
            write_header(
                &mut w,
                &Header {
                    name: name.as_bytes(),
                    ino: next_ino,
                    mode: S_IFCHR | perm,
                    uid: 0,
                    gid: 0,
                    nlink: 1,
                    mtime: 0,
                    size: 0,
                    rdev,
                },
            )
            .map_err(io("cannot write image"))?;
            next_ino += 1;
        }
        write_header(
            &mut w,
            &Header {
                name: TRAILER.as_bytes(),
                ino: 0,
                mode: 0,
                uid: 0,
                gid: 0,
                nlink: 1,
                mtime: 0,
                size: 0,
                rdev: (0, 0),
            },
        )
        .map_err(io("cannot write image"))?;
        w.finish()
            .and_then(|mut b| b.flush())
            .map_err(io("cannot write image"))?;
        Ok(())
    }
}

/// One entry of a (compressed or plain) newc archive, for `husk inspect`.
pub struct CpioEntry {
    pub name: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub data: Option<Vec<u8>>,
}

/// Lists the archive at `path`; the data of `want` is kept.
pub fn read_file(path: &Path, want: Option<&str>) -> io::Result<Vec<CpioEntry>> {
    let file = File::open(path)?;
    let mut r = crate::oci::unpack::decompress(file)?;
    let mut out = Vec::new();
    let mut offset = 0usize;
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, format!("not a newc cpio: {m}"));
    loop {
        let mut head = [0u8; 110];
        r.read_exact(&mut head)?;
        offset += 110;
        if &head[..6] != b"070701" {
            return Err(bad("bad magic"));
        }
        let field = |i: usize| -> io::Result<u32> {
            let s = std::str::from_utf8(&head[6 + i * 8..14 + i * 8]).map_err(|_| bad("field"))?;
            u32::from_str_radix(s, 16).map_err(|_| bad("field"))
        };
        let (mode, uid, gid, size, namesize) =
            (field(1)?, field(2)?, field(3)?, field(6)?, field(11)?);
        let mut name = vec![0u8; namesize as usize];
        r.read_exact(&mut name)?;
        offset += name.len();
        let skip = (4 - offset % 4) % 4;
        io::copy(&mut (&mut r).take(skip as u64), &mut io::sink())?;
        offset += skip;
        name.pop();
        let name = String::from_utf8_lossy(&name).into_owned();
        if name == TRAILER {
            return Ok(out);
        }
        let mut data = Vec::new();
        if want == Some(name.as_str()) {
            (&mut r).take(size.into()).read_to_end(&mut data)?;
        } else {
            io::copy(&mut (&mut r).take(size.into()), &mut io::sink())?;
        }
        offset += size as usize;
        let skip = (4 - offset % 4) % 4;
        io::copy(&mut (&mut r).take(skip as u64), &mut io::sink())?;
        offset += skip;
        let keep = want == Some(name.as_str());
        out.push(CpioEntry {
            name,
            mode,
            uid,
            gid,
            size: size.into(),
            data: keep.then_some(data),
        });
    }
}
