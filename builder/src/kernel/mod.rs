//! husk's guest kernel: built from a Linux source tarball (Debian's
//! `linux-source-6.1` by default) or tree with the configuration fragment in
//! `builder/kernel/`, and cached by source version and configuration hash:
//!
//! ```text
//! ~/.cache/husk/kernels/<source version>-<config hash>/{vmlinux,bzImage,config}
//! ~/.cache/husk/kernels/build/<source version>/{src,obj}   (kept for rebuilds)
//! ```
//!
//! A cache entry appears under its final name only once complete.

pub mod config;

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::oci::hex;

/// The source a default build uses.
pub const DEFAULT_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";

/// Bumped whenever the build steps change in a way that changes the output
/// (`kernel/recipe`, read by the build script too).
#[cfg(test)]
const RECIPE: &str = include_str!("../../kernel/recipe");

// MICROVM_CONFIG_HASH and PORTABLE_CONFIG_HASH, from the build script.
include!(concat!(env!("OUT_DIR"), "/config_hash.rs"));

/// Where a kernel is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A `.tar.xz` (or any tar that `tar -xf` reads) with one top folder.
    Tarball(PathBuf),
    /// An unpacked, clean Linux source tree (built out of tree).
    Tree(PathBuf),
}

impl Source {
    /// A tarball or a tree, by what is at `path`.
    pub fn at(path: &Path) -> Source {
        if path.is_dir() {
            Source::Tree(path.to_path_buf())
        } else {
            Source::Tarball(path.to_path_buf())
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "no Linux source at {}; install Debian's linux-source-6.1 \
         (apt-get install linux-source-6.1, or run ci/setup) or pass --source",
        path.display()
    )]
    NoSource { path: PathBuf },
    #[error(
        "no husk kernel is built for this configuration (hash {hash}) in {}; \
         run `husk kernel build{flag}` (it needs Debian's linux-source-6.1: run ci/setup)",
        dir.display()
    )]
    NotBuilt {
        hash: String,
        dir: PathBuf,
        flag: &'static str,
    },
    #[error("{} has no VERSION/PATCHLEVEL/SUBLEVEL; is it a Linux source tree?", path.display())]
    NotLinux { path: PathBuf },
    #[error("{step} failed ({status}); the log is {}\n{tail}", log.display())]
    Step {
        step: &'static str,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "the kernel source dropped options husk's configuration asks for \
         (a dependency is missing or the option does not exist in this version):\n{}",
        list.join("\n")
    )]
    ConfigDropped { list: Vec<String> },
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> KernelError + 'p {
    move |source| KernelError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Which kernel: the micro-VM one husk boots, or the portable one an
/// exported disk boots under other hypervisors (`husk export`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavor {
    #[default]
    MicroVm,
    Portable,
}

impl Flavor {
    /// The whole configuration fragment: the portable one is the micro-VM
    /// fragment with its own lines after (a later line wins).
    pub fn fragment(self) -> String {
        match self {
            Flavor::MicroVm => config::X86_64.to_string(),
            Flavor::Portable => format!("{}{}", config::X86_64, config::X86_64_PORTABLE),
        }
    }

    /// Its object folder beside the source, kept for incremental rebuilds.
    fn obj(self) -> &'static str {
        match self {
            Flavor::MicroVm => "obj",
            Flavor::Portable => "obj-portable",
        }
    }

    fn build_flag(self) -> &'static str {
        match self {
            Flavor::MicroVm => "",
            Flavor::Portable => " --flavor portable",
        }
    }
}

/// A built kernel in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub dir: PathBuf,
}

impl Kernel {
    /// The uncompressed ELF kernel with its PVH entry note.
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }

    /// The compressed kernel, for the Linux boot protocol.
    pub fn bz_image(&self) -> PathBuf {
        self.dir.join("bzImage")
    }

    /// The full `.config` it was built with.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config")
    }
}

/// What a build is doing, for a progress display.
#[derive(Debug)]
pub enum Progress<'a> {
    Step(&'a str),
    /// `count` objects compiled so far; `file` the latest.
    Compiled {
        count: usize,
        file: &'a str,
    },
}

/// A kernel build request.
#[derive(Debug, Clone)]
pub struct Build {
    pub source: Source,
    pub flavor: Flavor,
    pub jobs: usize,
    /// Cache root (`builder::cache::root()` by default).
    pub cache: PathBuf,
}

/// First 12 hex digits of the SHA-256 of the recipe and a flavour's
/// configuration (computed by the build script).
pub fn config_hash(flavor: Flavor) -> String {
    match flavor {
        Flavor::MicroVm => MICROVM_CONFIG_HASH,
        Flavor::Portable => PORTABLE_CONFIG_HASH,
    }
    .to_string()
}

/// The cached default kernel: the newest build of husk's current
/// configuration. Only the cache is read (no package queries), since every
/// `husk run` looks it up; `husk kernel build` is what ties a build to a
/// source version.
pub fn find(cache: &Path) -> Result<Kernel, KernelError> {
    find_flavor(cache, Flavor::MicroVm)
}

/// The newest cached build of a flavour.
pub fn find_flavor(cache: &Path, flavor: Flavor) -> Result<Kernel, KernelError> {
    let kernels = cache.join("kernels");
    let hash = config_hash(flavor);
    let suffix = format!("-{hash}");
    let newest = fs::read_dir(&kernels)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(&suffix))
        .map(|e| Kernel { dir: e.path() })
        .filter(|k| k.vmlinux().is_file())
        .max_by_key(|k| fs::metadata(k.vmlinux()).and_then(|m| m.modified()).ok());
    newest.ok_or(KernelError::NotBuilt {
        hash,
        dir: kernels,
        flag: flavor.build_flag(),
    })
}

/// A name for the source's version: Debian's package version for a
/// packaged tarball, the content hash for another tarball, the Makefile's
/// version and the path's hash for a tree.
pub fn source_version(source: &Source) -> Result<String, KernelError> {
    match source {
        Source::Tarball(path) => {
            if !path.is_file() {
                return Err(KernelError::NoSource { path: path.clone() });
            }
            if let Some(v) = debian_package_version(path) {
                return Ok(v);
            }
            let mut hasher = Sha256::new();
            let mut f = File::open(path).map_err(io_err("open", path))?;
            io::copy(&mut f, &mut hasher).map_err(io_err("read", path))?;
            let d = hasher.finalize();
            Ok(format!("tar-{}", hex(&d[..6])))
        }
        Source::Tree(path) => {
            let makefile = path.join("Makefile");
            let text = fs::read_to_string(&makefile)
                .map_err(|_| KernelError::NotLinux { path: path.clone() })?;
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().strip_prefix('='))
                    .map(|v| v.trim().to_string())
            };
            let (Some(v), Some(p), Some(s)) =
                (field("VERSION"), field("PATCHLEVEL"), field("SUBLEVEL"))
            else {
                return Err(KernelError::NotLinux { path: path.clone() });
            };
            let canon = fs::canonicalize(path).map_err(io_err("resolve", path))?;
            let d = Sha256::digest(canon.as_os_str().as_encoded_bytes());
            Ok(format!("{v}.{p}.{s}-tree-{}", hex(&d[..4])))
        }
    }
}

/// `6.1.192-2` when dpkg owns `path`.
fn debian_package_version(path: &Path) -> Option<String> {
    let out = Command::new("dpkg-query")
        .arg("-S")
        .arg(path)
        .output()
        .ok()?;
    let owner = String::from_utf8(out.stdout).ok()?;
    let package = owner.split_once(':')?.0.trim().to_string();
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", &package])
        .output()
        .ok()?;
    let version = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !version.is_empty()).then_some(version)
}

impl Build {
    /// Builds the kernel, or returns the cached one at once.
    pub fn run(&self, progress: &mut dyn FnMut(Progress)) -> Result<Kernel, KernelError> {
        let version = source_version(&self.source)?;
        let kernels = self.cache.join("kernels");
        let kernel = Kernel {
            dir: kernels.join(format!("{version}-{}", config_hash(self.flavor))),
        };
        if kernel.vmlinux().is_file() {
            return Ok(kernel);
        }

        let work = kernels.join("build").join(&version);
        fs::create_dir_all(&work).map_err(io_err("create", &work))?;
        // One build per work folder at a time; a second waits here.
        let lock_path = work.join("lock");
        let lock = File::create(&lock_path).map_err(io_err("create", &lock_path))?;
        lock.lock().map_err(io_err("lock", &lock_path))?;
        if kernel.vmlinux().is_file() {
            return Ok(kernel); // built by whoever held the lock
        }

        let src = match &self.source {
            Source::Tree(tree) => tree.clone(),
            Source::Tarball(tarball) => unpack(tarball, &work, progress)?,
        };
        let obj = work.join(self.flavor.obj());
        fs::create_dir_all(&obj).map_err(io_err("create", &obj))?;
        let log = obj.join("husk-build.log");
        configure(&src, &obj, &self.flavor.fragment(), &log, progress)?;
        compile(&src, &obj, &log, self.jobs, progress)?;
        publish(&obj, &kernel)?;
        Ok(kernel)
    }
}

/// Unpacks the tarball into `work/src` (once; kept for later rebuilds).
fn unpack(
    tarball: &Path,
    work: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf, KernelError> {
    let src = work.join("src");
    if src.join("Makefile").is_file() {
        return Ok(src);
    }
    progress(Progress::Step("unpacking the kernel source"));
    let tmp = crate::cache::temp_sibling(&src);
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
    let log = work.join("unpack.log");
    run_logged(
        "unpacking the source",
        Command::new("tar")
            .arg("-xf")
            .arg(tarball)
            .arg("-C")
            .arg(&tmp)
            .arg("--strip-components=1"),
        &log,
        &mut |_| {},
    )?;
    fs::rename(&tmp, &src).map_err(io_err("rename into place", &src))?;
    Ok(src)
}

fn make(src: &Path, obj: &Path) -> Command {
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(src)
        .arg(format!("O={}", obj.display()))
        .arg("ARCH=x86_64")
        // Fixed build identity, so the same inputs give the same kernel.
        .env("KBUILD_BUILD_USER", "husk")
        .env("KBUILD_BUILD_HOST", "husk")
        .env("KBUILD_BUILD_TIMESTAMP", "1970-01-01")
        .env("KBUILD_BUILD_VERSION", "1");
    cmd
}

/// `allnoconfig` with husk's fragment, `olddefconfig`, then the check that
/// every option asked for is really set.
fn configure(
    src: &Path,
    obj: &Path,
    wanted: &str,
    log: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), KernelError> {
    progress(Progress::Step("configuring"));
    let fragment = obj.join("husk.config");
    fs::write(&fragment, wanted).map_err(io_err("write", &fragment))?;
    let all = format!("KCONFIG_ALLCONFIG={}", fragment.display());
    run_logged(
        "make allnoconfig",
        make(src, obj).args(["allnoconfig", &all]),
        log,
        &mut |_| {},
    )?;
    run_logged(
        "make olddefconfig",
        make(src, obj).arg("olddefconfig"),
        log,
        &mut |_| {},
    )?;
    let dot_config = obj.join(".config");
    let have = fs::read_to_string(&dot_config).map_err(io_err("read", &dot_config))?;
    let dropped = config::missing(&config::parse(wanted), &config::parse(&have));
    if dropped.is_empty() {
        return Ok(());
    }
    Err(KernelError::ConfigDropped {
        list: dropped
            .into_iter()
            .map(|(name, want, found)| format!("  {name}: asked {want}, got {found}"))
            .collect(),
    })
}

fn compile(
    src: &Path,
    obj: &Path,
    log: &Path,
    jobs: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), KernelError> {
    progress(Progress::Step("compiling"));
    let mut count = 0;
    run_logged(
        "make vmlinux bzImage",
        make(src, obj)
            .arg(format!("-j{}", jobs.max(1)))
            .args(["vmlinux", "bzImage"]),
        log,
        &mut |line| {
            // Kbuild's short output: "  CC      fs/ext4/inode.o".
            if let Some(file) = line.strip_prefix("  CC ") {
                count += 1;
                progress(Progress::Compiled {
                    count,
                    file: file.trim(),
                });
            }
        },
    )
}

/// Copies the results into a temporary folder and renames it into place.
fn publish(obj: &Path, kernel: &Kernel) -> Result<(), KernelError> {
    let tmp = crate::cache::temp_sibling(&kernel.dir);
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
    for (from, to) in [
        ("vmlinux", "vmlinux"),
        ("arch/x86/boot/bzImage", "bzImage"),
        (".config", "config"),
    ] {
        let from = obj.join(from);
        fs::copy(&from, tmp.join(to)).map_err(io_err("copy", &from))?;
    }
    fs::rename(&tmp, &kernel.dir).map_err(io_err("rename into place", &kernel.dir))
}

/// Runs `cmd`, appending its output to `log` and passing each stdout line
/// to `on_line`; on failure the error carries the log's last lines.
fn run_logged(
    step: &'static str,
    cmd: &mut Command,
    log: &Path,
    on_line: &mut dyn FnMut(&str),
) -> Result<(), KernelError> {
    tracing::debug!(?cmd, "running");
    let mut out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err("open", log))?;
    let _ = writeln!(out, "$ {cmd:?}");
    let err = out.try_clone().map_err(io_err("open", log))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .map_err(|source| KernelError::Io {
            op: step,
            path: PathBuf::from(cmd.get_program()),
            source,
        })?;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.map_err(io_err("read output of", Path::new(step)))?;
            let _ = writeln!(out, "{line}");
            on_line(&line);
        }
    }
    let status = child.wait().map_err(io_err("wait for", Path::new(step)))?;
    if status.success() {
        return Ok(());
    }
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    Err(KernelError::Step {
        step,
        status: status.to_string(),
        log: log.to_path_buf(),
        tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_hash_is_stable_and_short() {
        assert_eq!(config_hash(Flavor::MicroVm), config_hash(Flavor::MicroVm));
        assert_eq!(config_hash(Flavor::MicroVm).len(), 12);
        assert_ne!(config_hash(Flavor::MicroVm), config_hash(Flavor::Portable));
    }

    /// The build script's hashes are those of the recipe and each
    /// flavour's fragment as the crate embeds them.
    #[test]
    fn config_hash_is_the_recipe_and_fragment_hashed() {
        for flavor in [Flavor::MicroVm, Flavor::Portable] {
            let digest = Sha256::new()
                .chain_update(RECIPE.trim())
                .chain_update(flavor.fragment())
                .finalize();
            assert_eq!(config_hash(flavor), hex(&digest[..6]), "{flavor:?}");
        }
    }

    #[test]
    fn tree_version_comes_from_the_makefile() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("Makefile"),
            "VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 99\nEXTRAVERSION =\n",
        )
        .unwrap();
        let v = source_version(&Source::Tree(dir.path().into())).unwrap();
        assert!(v.starts_with("6.1.99-tree-"), "{v}");
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            source_version(&Source::Tree(empty.path().into())),
            Err(KernelError::NotLinux { .. })
        ));
    }

    #[test]
    fn missing_tarball_says_how_to_get_one() {
        let err = source_version(&Source::Tarball("/nonexistent.tar.xz".into())).unwrap_err();
        assert!(err.to_string().contains("apt-get install linux-source-6.1"));
    }

    #[test]
    fn find_reports_not_built_with_the_command_to_run() {
        let cache = tempfile::tempdir().unwrap();
        let err = find(cache.path()).unwrap_err();
        assert!(err.to_string().contains("run `husk kernel build`"), "{err}");
    }

    #[test]
    fn find_takes_a_cached_build_of_this_config() {
        let cache = tempfile::tempdir().unwrap();
        let dir = cache
            .path()
            .join("kernels")
            .join(format!("6.1.1-1-{}", config_hash(Flavor::MicroVm)));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("vmlinux"), b"\x7fELF").unwrap();
        // Another configuration's build is not taken.
        let other = cache.path().join("kernels/6.1.1-1-000000000000");
        fs::create_dir_all(&other).unwrap();
        fs::write(other.join("vmlinux"), b"\x7fELF").unwrap();
        let k = find(cache.path()).unwrap();
        assert_eq!(k.dir, dir);
        // The portable flavour is another configuration, not built here.
        let err = find_flavor(cache.path(), Flavor::Portable).unwrap_err();
        assert!(
            err.to_string()
                .contains("husk kernel build --flavor portable"),
            "{err}"
        );
    }
}
