//! Named volumes: folders husk keeps for appliances' data, made on first
//! use and outliving every run, as docker's local volumes.
//!
//! Each volume is a folder under [`root`]: `NAME/_data` is what the guest
//! sees (a shared folder, through virtiofsd), `NAME/volume.json` when it
//! was made, and `NAME/lock` a lock every run using the volume holds
//! shared for its whole life, so `husk volume rm` knows, without a daemon,
//! that a running appliance uses it. A volume appears whole (made under a
//! temporary name and renamed) and goes whole (renamed away, then
//! removed). The guest's init fills a new, empty volume with what the
//! image holds where it is mounted (`husk_init::populate`).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use serde::{Deserialize, Serialize};

const DATA: &str = "_data";
const META: &str = "volume.json";
const LOCK: &str = "lock";

/// The folder of every volume: `volumes` in [`data_dir`].
pub fn root() -> anyhow::Result<PathBuf> {
    Ok(data_dir()?.join("volumes"))
}

/// Where husk keeps what outlives runs and reboots (volumes, networks):
/// `$HUSK_DATA_DIR`; for root `/var/lib/husk`; else `$XDG_DATA_HOME/husk`
/// or `~/.local/share/husk`.
pub fn data_dir() -> anyhow::Result<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("HUSK_DATA_DIR") {
        return Ok(PathBuf::from(dir));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(PathBuf::from("/var/lib/husk"));
    }
    if let Some(dir) = var("XDG_DATA_HOME") {
        return Ok(Path::new(&dir).join("husk"));
    }
    match var("HOME") {
        Some(home) => Ok(Path::new(&home).join(".local/share/husk")),
        None => anyhow::bail!("neither HUSK_DATA_DIR, XDG_DATA_HOME nor HOME is set"),
    }
}

pub use appliance_spec::is_volume_name as is_name;

pub fn check_name(name: &str) -> anyhow::Result<()> {
    if !is_name(name) {
        anyhow::bail!(
            "{name:?} is not a valid volume name: two or more letters, digits, '_', '.' and \
             '-', starting with a letter or digit"
        );
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub created_ms: u64,
}

/// One volume, made or not.
#[derive(Debug, Clone)]
pub struct Volume {
    pub name: String,
    pub dir: PathBuf,
}

impl Volume {
    pub fn at(root: &Path, name: &str) -> Self {
        Volume {
            name: name.to_string(),
            dir: root.join(name),
        }
    }

    /// The volume `name`, which must have been made.
    pub fn find(name: &str) -> anyhow::Result<Self> {
        check_name(name)?;
        let volume = Volume::at(&root()?, name);
        if !volume.dir.join(DATA).is_dir() {
            anyhow::bail!("no such volume: {name} (husk volume ls lists them)");
        }
        Ok(volume)
    }

    /// Every volume, by name.
    pub fn all() -> anyhow::Result<Vec<Self>> {
        let root = root()?;
        Ok(names_in(&root, is_name)?
            .iter()
            .map(|n| Volume::at(&root, n))
            .filter(|v| v.dir.join(DATA).is_dir())
            .collect())
    }

    /// The folder the guest sees.
    pub fn data(&self) -> PathBuf {
        self.dir.join(DATA)
    }

    pub fn meta(&self) -> Option<Meta> {
        serde_json::from_slice(&fs::read(self.dir.join(META)).ok()?).ok()
    }

    /// Makes the volume unless it is there; says whether it made it.
    pub fn create(&self) -> anyhow::Result<bool> {
        if self.dir.join(DATA).is_dir() {
            return Ok(false);
        }
        let root = self
            .dir
            .parent()
            .context("a volume's folder has a parent")?;
        fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
        let tmp = root.join(format!(".{}.tmp-{}", self.name, std::process::id()));
        let made = (|| {
            let mut builder = fs::DirBuilder::new();
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700).create(&tmp)?;
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o755).create(tmp.join(DATA))?;
            let meta = Meta {
                created_ms: crate::vms::now_ms(),
            };
            fs::write(tmp.join(META), serde_json::to_vec(&meta)?)?;
            File::create(tmp.join(LOCK))?;
            fs::rename(&tmp, &self.dir)
        })();
        match made {
            Ok(()) => Ok(true),
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                // Made meanwhile by another run: theirs is as good.
                if self.dir.join(DATA).is_dir() {
                    return Ok(false);
                }
                Err(e).with_context(|| format!("cannot create the volume {}", self.name))
            }
        }
    }

    /// The volume's lock taken exclusively, without waiting; `None` while
    /// a run holds it.
    fn lock_alone(&self) -> anyhow::Result<Option<File>> {
        let path = self.dir.join(LOCK);
        let lock = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        match lock.try_lock() {
            Ok(()) => Ok(Some(lock)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e).context("cannot lock the volume"),
        }
    }

    /// Whether a running appliance (or any process) holds the volume.
    pub fn in_use(&self) -> anyhow::Result<bool> {
        Ok(self.lock_alone()?.is_none())
    }

    /// Removes the volume, unless a running appliance holds it: the
    /// exclusive lock is held while it is renamed away, then removed.
    pub fn remove(&self) -> anyhow::Result<()> {
        let Some(lock) = self.lock_alone()? else {
            anyhow::bail!("the volume {} is in use by a running appliance", self.name)
        };
        remove_whole(&self.dir, lock)
    }
}

/// Removes folder `dir` whole: renamed away while `lock` (its own) is
/// held, so no one sees it half gone, then deleted.
pub fn remove_whole(dir: &Path, lock: File) -> anyhow::Result<()> {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let gone = dir.with_file_name(format!(".{name}.removing-{}", std::process::id()));
    fs::rename(dir, &gone).with_context(|| format!("cannot remove {}", dir.display()))?;
    drop(lock);
    fs::remove_dir_all(&gone).with_context(|| format!("cannot remove {}", gone.display()))
}

/// The names in folder `root` that `valid` takes, sorted; none when
/// `root` is not there yet.
pub fn names_in(root: &Path, valid: impl Fn(&str) -> bool) -> anyhow::Result<Vec<String>> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", root.display())),
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| Some(e.file_name().to_str()?.to_string()))
        .filter(|n| valid(n))
        .collect();
    names.sort();
    Ok(names)
}

/// The locks of the volumes this process uses, held until it exits.
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// The volume `name` for this run: made when missing, and held (its lock
/// shared) until this process exits. Returns its data folder, and whether
/// this call made it.
pub fn take(name: &str) -> anyhow::Result<(PathBuf, bool)> {
    check_name(name)?;
    let volume = Volume::at(&root()?, name);
    // A removal that renamed the volume away under us leaves our lock on
    // a file no longer in it: make it again.
    for _ in 0..3 {
        let made = volume.create()?;
        let lock = match File::open(volume.dir.join(LOCK)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).context("cannot open the volume's lock"),
        };
        lock.lock_shared()
            .with_context(|| format!("cannot lock the volume {name}"))?;
        if volume.dir.join(LOCK).exists() {
            HELD.lock().unwrap_or_else(|e| e.into_inner()).push(lock);
            return Ok((volume.data(), made));
        }
    }
    anyhow::bail!("the volume {name} is being removed: try again")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_docker_s() {
        for good in ["db", "pg-data", "a.b_c", "0x"] {
            assert!(is_name(good), "{good}");
        }
        for bad in ["a", "", "-x", ".x", "a/b", "a b", "a:b", &"x".repeat(129)] {
            assert!(!is_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_volume_is_made_once_listed_and_removed_unless_held() {
        let dir = tempfile::tempdir().unwrap();
        let v = Volume::at(dir.path(), "data");
        assert!(v.create().unwrap());
        assert!(!v.create().unwrap(), "made twice");
        fs::write(v.data().join("f"), "kept").unwrap();
        assert!(!v.create().unwrap());
        assert_eq!(fs::read_to_string(v.data().join("f")).unwrap(), "kept");
        assert!(v.meta().unwrap().created_ms > 0);
        // Nothing of the making is left beside it.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["data"]);

        let held = File::open(v.dir.join(LOCK)).unwrap();
        held.lock_shared().unwrap();
        assert!(v.in_use().unwrap());
        let e = v.remove().unwrap_err();
        assert!(e.to_string().contains("in use"), "{e}");
        assert!(v.data().join("f").exists());
        drop(held);
        assert!(!v.in_use().unwrap());
        v.remove().unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
