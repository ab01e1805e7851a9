//! From an appliance (or an image reference) to a cached, bootable image.
//!
//! The cache key is a hash of every input: the builder's format version,
//! the init binary, the base image's manifest digest, the run
//! configuration, the output format and size, and each added file's
//! content and metadata. A hit costs reading a few small files and
//! hashing the inputs; a miss stages the root in the cache folder, writes
//! the image under a temporary name and renames the finished folder into
//! place, so a half-built image never appears under its final name.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use appliance_spec::{Appliance, IdOrName, ImageFormat, ImageSize, Source, UserSpec};
use husk_init::config::{RunConfig, CONFIG_PATH, INIT_PATH};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::image::{Ext4, ImageError, ImageWriter, Initramfs};
use crate::oci::{self, hex, Image, OciError};
use crate::rootfs::{clean, Meta, Root, RootError};

/// Bump when the same inputs should produce a different image.
const FORMAT_VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error("{context}")]
    Root {
        context: String,
        #[source]
        source: RootError,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{path}: {what}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: the guest init must be a static executable; build it with ci/setup (cargo rustc -p husk-init --release --target x86_64-unknown-linux-gnu -- -C target-feature=+crt-static)")]
    InitNotStatic(PathBuf),
    #[error("no husk-init binary found (looked for {0}); set HUSK_INIT or build it with ci/setup")]
    NoInit(String),
    #[error(
        "nothing to run: the appliance sets no run.command and the image has no Entrypoint or Cmd"
    )]
    NoCommand,
}

/// What to build.
pub enum Input<'a> {
    Appliance(&'a Appliance),
    /// An image on its own: its own command, an ext4 root sized to fit.
    Image(&'a Source),
}

/// A built image in the cache.
#[derive(Debug, Clone)]
pub struct Built {
    pub path: PathBuf,
    pub format: ImageFormat,
    pub size: u64,
    /// `sha256:HEX` of the image file.
    pub digest: String,
    /// Found in the cache rather than built now.
    pub cached: bool,
    pub run: RunConfig,
}

/// Everything the image depends on, hashed into the cache key.
#[derive(Serialize)]
struct Key<'a> {
    version: u32,
    init: String,
    base: &'a str,
    run: &'a RunConfig,
    format: &'static str,
    size: Option<u64>,
    entries: Vec<KeyEntry>,
}

#[derive(Serialize)]
struct KeyEntry {
    kind: &'static str,
    path: String,
    content: String,
    mode: Option<u32>,
    uid: u32,
    gid: u32,
}

fn user_string(u: &UserSpec) -> String {
    let part = |p: &IdOrName| match p {
        IdOrName::Id(n) => n.to_string(),
        IdOrName::Name(s) => s.clone(),
    };
    match &u.group {
        Some(g) => format!("{}:{}", part(&u.user), part(g)),
        None => part(&u.user),
    }
}

/// The run configuration: the image's defaults under the appliance's
/// `[run]` (a command replaces Entrypoint and Cmd; env entries are added
/// or replace the image's).
/// What the image runs: the OCI image's config, then the appliance's.
/// Only a root from a folder may have no command yet (`husk run dir:PATH
/// -- COMMAND` gives it at run time).
fn run_config(
    appliance: Option<&Appliance>,
    image: Option<&Image>,
    folder: bool,
) -> Result<RunConfig, BuildError> {
    let mut run = RunConfig::default();
    if let Some(c) = image.and_then(|i| i.config.config().as_ref()) {
        run.entrypoint = c.entrypoint().clone().unwrap_or_default();
        run.command = run.entrypoint.clone();
        run.command.extend(c.cmd().clone().unwrap_or_default());
        run.env = c.env().clone().unwrap_or_default();
        run.workdir = c.working_dir().clone().filter(|w| !w.is_empty());
        run.user = c.user().clone().filter(|u| !u.is_empty());
        // A STOPSIGNAL husk cannot read leaves SIGTERM, as it would be
        // without one.
        run.stop_signal = c
            .stop_signal()
            .as_deref()
            .and_then(|s| s.parse::<appliance_spec::Signal>().ok())
            .map(|s| s.0);
        // What husk cannot read as a port is left out, as a STOPSIGNAL is.
        run.exposed_ports = c
            .exposed_ports()
            .iter()
            .flatten()
            .filter_map(|p| p.parse::<appliance_spec::ExposedPort>().ok())
            .map(|p| p.to_string())
            .collect();
        run.volumes = image_volumes(c.volumes().iter().flatten());
        run.labels = c.labels().clone().unwrap_or_default().into_iter().collect();
    }
    run.healthcheck = image.and_then(|i| i.healthcheck.clone());
    if let Some(a) = appliance {
        if let Some(command) = &a.run.command {
            run.command = command.clone();
            run.entrypoint.clear();
        }
        for (k, v) in &a.run.env {
            run.set_env(&format!("{k}={v}"))
                .map_err(|e| BuildError::Io {
                    path: k.into(),
                    what: "bad environment entry",
                    source: std::io::Error::other(e.to_string()),
                })?;
        }
        if let Some(w) = &a.run.workdir {
            run.workdir = Some(w.to_string());
        }
        if let Some(u) = &a.run.user {
            run.user = Some(user_string(u));
        }
        run.hostname = Some(
            a.run
                .hostname
                .clone()
                .unwrap_or_else(|| a.appliance.name.clone()),
        );
        if let Some(signal) = a.run.stop_signal {
            run.stop_signal = Some(signal.0);
        }
        run.exposed_ports
            .extend(a.run.expose.iter().map(|p| p.to_string()));
        run.on_exit = match a.run.on_exit {
            appliance_spec::OnExit::Poweroff => husk_init::config::OnExit::Poweroff,
            appliance_spec::OnExit::Restart => husk_init::config::OnExit::Restart,
        };
    }
    run.exposed_ports.sort();
    run.exposed_ports.dedup();
    if run.command.is_empty() && !folder {
        return Err(BuildError::NoCommand);
    }
    Ok(run)
}

/// An image's VOLUMEs as runs mount them: absolute paths, without a
/// trailing `/`, sorted, each once. The root and paths that are not
/// absolute or climb with `..` are left out, as docker refuses them at
/// run time (a volume is mounted at a path of the image's root).
fn image_volumes<'a>(paths: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut out: Vec<String> = paths
        .filter(|p| p.starts_with('/') && !p.split('/').any(|part| part == ".."))
        .map(|p| p.trim_end_matches('/').to_string())
        .filter(|p| !p.is_empty())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn io_at<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> BuildError + 'a {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// Builds `input` (or finds it in `cache`) with the init binary `init`.
/// `progress` hears about each slow step.
pub fn build(
    input: Input,
    init: &Path,
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Built, BuildError> {
    check_static(init)?;
    let (appliance, source) = match input {
        Input::Appliance(a) => (Some(a), &a.rootfs.from),
        Input::Image(s) => (None, s),
    };
    // A root from a folder is booted as it is: what is built is only the
    // initramfs that brings husk's init and the run configuration to it.
    let folder = matches!(source, Source::Dir(_));
    let image = match source {
        Source::Scratch | Source::Dir(_) => None,
        s => Some(Image::open(s, cache)?),
    };
    let run = run_config(appliance, image.as_ref(), folder)?;
    let format = match appliance {
        _ if folder => ImageFormat::Initramfs,
        Some(a) => a.rootfs.format,
        None => ImageFormat::Ext4,
    };
    let size = match appliance.map(|a| a.rootfs.size) {
        Some(ImageSize::Fixed(s)) => Some(s.0),
        _ => None,
    };
    let mut entries = Vec::new();
    if let Some(a) = appliance {
        for d in &a.rootfs.dirs {
            entries.push(KeyEntry {
                kind: "dir",
                path: d.path.to_string(),
                content: String::new(),
                mode: d.mode.map(|m| m.0),
                uid: d.uid,
                gid: d.gid,
            });
        }
        for f in &a.rootfs.files {
            let content = match (&f.src, &f.content) {
                (Some(src), _) => crate::cache::input_digest(cache, src)
                    .map_err(io_at(src, "cannot read rootfs.files source"))?,
                (None, Some(text)) => hex(&Sha256::digest(text.as_bytes())),
                (None, None) => String::new(),
            };
            entries.push(KeyEntry {
                kind: "file",
                path: f.dst.to_string(),
                content,
                mode: f.mode.map(|m| m.0),
                uid: f.uid,
                gid: f.gid,
            });
        }
        for s in &a.rootfs.symlinks {
            entries.push(KeyEntry {
                kind: "symlink",
                path: s.path.to_string(),
                content: s.target.clone(),
                mode: None,
                uid: 0,
                gid: 0,
            });
        }
    }
    let key = Key {
        version: FORMAT_VERSION,
        init: crate::cache::input_digest(cache, init)
            .map_err(io_at(init, "cannot read the init binary"))?,
        base: match &image {
            Some(i) => i.id.as_str(),
            None if folder => "folder",
            None => "scratch",
        },
        run: &run,
        format: match format {
            ImageFormat::Ext4 => "ext4",
            ImageFormat::Initramfs => "initramfs",
        },
        size,
        entries,
    };
    let key_hash = Sha256::digest(serde_json::to_vec(&key).expect("plain data"));
    let key_hex = hex(&key_hash);
    let writer: Box<dyn ImageWriter> = match format {
        // The inputs' hash names the filesystem: reproducible, yet unique.
        ImageFormat::Ext4 => Box::new(Ext4 {
            size,
            uuid: key_hash[..16].try_into().expect("16 bytes"),
            label: appliance
                .map_or("husk", |a| a.appliance.name.as_str())
                .chars()
                .take(16)
                .collect(),
        }),
        ImageFormat::Initramfs => Box::new(Initramfs),
    };
    let dir = cache.join("images").join(&key_hex[..32]);
    let path = dir.join(writer.file_name());
    if let Ok(digest) = std::fs::read_to_string(dir.join("digest")) {
        let size = std::fs::metadata(&path)
            .map_err(io_at(&path, "cached image vanished"))?
            .len();
        return Ok(Built {
            path,
            format,
            size,
            digest: digest.trim().to_string(),
            cached: true,
            run,
        });
    }

    let started = std::time::Instant::now();
    // Build into a temporary folder beside the final one.
    let tmp = crate::cache::temp_sibling(&dir);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io_at(&tmp, "cannot create build folder"))?;
    let estimate = image.as_ref().map_or(0, |i| {
        i.layers
            .iter()
            .filter_map(|l| std::fs::metadata(&l.path).ok())
            .map(|m| m.len() * 4)
            .sum()
    });
    let result = (|| {
        let staging = Staging::new(estimate, &tmp)?;
        let mut root = Root::open(&staging.0).map_err(|source| BuildError::Root {
            context: "staging".into(),
            source,
        })?;
        if let Some(image) = &image {
            let n = image.layers.len();
            let stats = image.unpack(&mut root, |i, l| {
                progress(&format!("unpacking layer {}/{n} {}", i + 1, l.digest))
            })?;
            let skipped: Vec<String> = stats
                .iter()
                .flat_map(|s| &s.skipped)
                .map(|p| format!("/{}", p.display()))
                .collect();
            if !skipped.is_empty() {
                progress(&format!(
                    "note: skipped {} device node(s) ({}); the guest's devtmpfs provides /dev",
                    skipped.len(),
                    skipped.join(", ")
                ));
            }
        }
        if let Some(a) = appliance {
            add_appliance_entries(&mut root, a)?;
        }
        tracing::debug!(
            ms = started.elapsed().as_millis(),
            "staged the image's layers"
        );
        install_husk(&mut root, init, &run)?;
        root.finish().map_err(|source| BuildError::Root {
            context: "staging".into(),
            source,
        })?;
        progress(&format!("writing {}", writer.file_name()));
        let out = tmp.join(writer.file_name());
        writer.write(&root, &out)?;
        tracing::debug!(ms = started.elapsed().as_millis(), "wrote the image");
        drop(staging);
        let digest = oci::file_digest(&out).map_err(io_at(&out, "cannot read image"))?;
        tracing::debug!(ms = started.elapsed().as_millis(), "hashed the image");
        std::fs::write(tmp.join("digest"), format!("{digest}\n"))
            .map_err(io_at(&tmp, "cannot write"))?;
        std::fs::write(tmp.join("run.json"), run.to_json()).map_err(io_at(&tmp, "cannot write"))?;
        let size = std::fs::metadata(&out)
            .map_err(io_at(&out, "cannot stat"))?
            .len();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(io_at(&dir, "cannot store the image in the cache"))?;
        Ok(Built {
            path: path.clone(),
            format,
            size,
            digest,
            cached: false,
            run: run.clone(),
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// The staging folder, removed when dropped. It goes to `/dev/shm` when
/// that is a tmpfs with room to spare and extended attributes (staging is thousands of small
/// metadata operations, which a disk filesystem journals: 2 s against
/// 0.3 s for Debian's minbase on the CI machine), else beside the image
/// in the cache; `$HUSK_STAGING_DIR` chooses the parent folder.
struct Staging(PathBuf);

impl Staging {
    const SHM: &str = "/dev/shm";
    const TMPFS_MAGIC: i64 = 0x0102_1994;

    fn new(estimate: u64, build_dir: &Path) -> Result<Self, BuildError> {
        let parent = match std::env::var_os("HUSK_STAGING_DIR").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None if Self::shm_has_room(estimate) => PathBuf::from(Self::SHM),
            None => build_dir.to_path_buf(),
        };
        // Leftovers of builds that were killed.
        if let Ok(entries) = std::fs::read_dir(&parent) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name
                    .strip_prefix("husk-staging-")
                    .and_then(|r| r.split('-').next());
                if let Some(pid) = pid {
                    if !Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = parent.join(format!("husk-staging-{}-{seq}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io_at(&dir, "cannot create staging folder"))?;
        tracing::debug!(dir = %dir.display(), estimate, "staging");
        Ok(Staging(dir))
    }

    /// A tmpfs with room for twice the estimate, that keeps `user.*`
    /// extended attributes (tmpfs does since Linux 6.6; images carry them).
    fn shm_has_room(estimate: u64) -> bool {
        let room = match rustix::fs::statfs(Self::SHM) {
            Ok(st) => {
                let free = st.f_bavail * st.f_bsize as u64;
                st.f_type == Self::TMPFS_MAGIC && free > 2 * estimate + (256 << 20)
            }
            Err(_) => false,
        };
        room && {
            let probe =
                Path::new(Self::SHM).join(format!("husk-xattr-probe-{}", std::process::id()));
            let kept = std::fs::File::create(&probe).is_ok_and(|f| {
                rustix::fs::fsetxattr(&f, "user.husk", b"1", rustix::fs::XattrFlags::empty())
                    .is_ok()
            });
            let _ = std::fs::remove_file(&probe);
            kept
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn add_appliance_entries(root: &mut Root, a: &Appliance) -> Result<(), BuildError> {
    let at = |field: String| {
        move |source| BuildError::Root {
            context: field,
            source,
        }
    };
    for (i, d) in a.rootfs.dirs.iter().enumerate() {
        let rel = clean(d.path.as_path()).map_err(at(format!("rootfs.dirs[{i}]")))?;
        let meta = Meta {
            mode: d.mode.map_or(0o755, |m| m.0),
            uid: d.uid,
            gid: d.gid,
            ..Meta::root(0)
        };
        root.make_dir(&rel, &meta)
            .map_err(at(format!("rootfs.dirs[{i}]")))?;
    }
    for (i, f) in a.rootfs.files.iter().enumerate() {
        let field = format!("rootfs.files[{i}] ({})", f.dst);
        let rel = clean(f.dst.as_path()).map_err(at(field.clone()))?;
        let (mut reader, default_mode): (Box<dyn Read>, u32) = match (&f.src, &f.content) {
            (Some(src), _) => {
                let file =
                    File::open(src).map_err(io_at(src, "cannot read rootfs.files source"))?;
                let mode = std::os::unix::fs::PermissionsExt::mode(
                    &file
                        .metadata()
                        .map_err(io_at(src, "cannot stat"))?
                        .permissions(),
                );
                (Box::new(file), mode & 0o7777)
            }
            (None, Some(text)) => (
                Box::new(std::io::Cursor::new(text.clone().into_bytes())),
                0o644,
            ),
            (None, None) => (Box::new(std::io::empty()), 0o644),
        };
        let meta = Meta {
            mode: f.mode.map_or(default_mode, |m| m.0),
            uid: f.uid,
            gid: f.gid,
            ..Meta::root(0)
        };
        root.write_file(&rel, &mut reader, &meta)
            .map_err(at(field))?;
    }
    for (i, s) in a.rootfs.symlinks.iter().enumerate() {
        let field = format!("rootfs.symlinks[{i}] ({})", s.path);
        let rel = clean(s.path.as_path()).map_err(at(field.clone()))?;
        root.symlink(&rel, Path::new(&s.target), &Meta::root(0o777))
            .map_err(at(field))?;
    }
    Ok(())
}

/// The init, its configuration, and the folders init mounts on (so a
/// read-only root works).
fn install_husk(root: &mut Root, init: &Path, run: &RunConfig) -> Result<(), BuildError> {
    let at = |source| BuildError::Root {
        context: "installing husk-init".into(),
        source,
    };
    for (dir, mode) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("tmp", 0o1777),
        ("run", 0o755),
    ] {
        if root.dir(Path::new(dir), false).map_err(at)?.is_none() {
            root.make_dir(Path::new(dir), &Meta::root(mode))
                .map_err(at)?;
        }
    }
    let init_rel = clean(Path::new(INIT_PATH)).map_err(at)?;
    root.make_dir(init_rel.parent().expect("in a folder"), &Meta::root(0o755))
        .map_err(at)?;
    let mut file = File::open(init).map_err(io_at(init, "cannot read the init binary"))?;
    root.write_file(&init_rel, &mut file, &Meta::root(0o755))
        .map_err(at)?;
    let config_rel = clean(Path::new(CONFIG_PATH)).map_err(at)?;
    root.write_file(
        &config_rel,
        &mut run.to_json().as_bytes(),
        &Meta::root(0o644),
    )
    .map_err(at)?;
    Ok(())
}

/// Refuses an init that needs a dynamic loader (it would not start in an
/// image without one): an ELF with a `PT_INTERP` program header.
fn check_static(init: &Path) -> Result<(), BuildError> {
    // The ELF header and program headers sit at the start of the file.
    let mut bytes = Vec::new();
    File::open(init)
        .and_then(|f| f.take(8192).read_to_end(&mut bytes))
        .map_err(io_at(init, "cannot read the init binary"))?;
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
    };
    let not_static = || BuildError::InitNotStatic(init.to_path_buf());
    if !bytes.starts_with(b"\x7fELF\x02\x01") {
        return Err(not_static());
    }
    let (phoff, phentsize, phnum) = (
        u64_at(0x20).ok_or_else(not_static)?,
        u16_at(0x36).ok_or_else(not_static)?,
        u16_at(0x38).ok_or_else(not_static)?,
    );
    for i in 0..phnum {
        let p_type = bytes
            .get(phoff + i * phentsize..phoff + i * phentsize + 4)
            .ok_or_else(not_static)?;
        if p_type == 3u32.to_le_bytes() {
            return Err(not_static());
        }
    }
    Ok(())
}

/// The static init: `$HUSK_INIT`, else `husk-init` beside `exe`, else the
/// static build in a cargo target folder (`target/x86_64-unknown-linux-gnu/
/// release/husk-init` next to `target/<profile>/`).
pub fn find_init(exe: &Path) -> Result<PathBuf, BuildError> {
    if let Some(p) = std::env::var_os("HUSK_INIT").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let dir = exe.parent().unwrap_or(Path::new("."));
    let mut candidates = vec![dir.join("husk-init")];
    for up in dir.ancestors().skip(1).take(2) {
        candidates.push(up.join("x86_64-unknown-linux-gnu/release/husk-init"));
    }
    let mut first_dynamic = None;
    for c in &candidates {
        if c.is_file() {
            match check_static(c) {
                Ok(()) => return Ok(c.clone()),
                Err(_) => {
                    first_dynamic.get_or_insert(c.clone());
                }
            }
        }
    }
    match first_dynamic {
        Some(p) => Err(BuildError::InitNotStatic(p)),
        None => Err(BuildError::NoInit(
            candidates
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}
