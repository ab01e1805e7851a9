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
//!
//! An anonymous volume (docker's: `-v /PATH`, or a VOLUME of the image) is
//! one of these with a name of 64 hex digits, made by the run that needs
//! it and marked so in `volume.json`: a detached appliance keeps its own
//! across restarts and `husk rm -v` removes them with it; a foreground
//! run's go when it ends, by a [`reap_when_done`] child that outlives it.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    /// Made for one run or appliance, not named by the user: `husk rm -v`
    /// and the end of a `--rm` or foreground run remove it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub anonymous: bool,
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

    /// Whether the volume was made as an anonymous one.
    pub fn anonymous(&self) -> bool {
        self.meta().is_some_and(|m| m.anonymous)
    }

    /// Makes the volume unless it is there; says whether it made it.
    pub fn create(&self) -> anyhow::Result<bool> {
        self.create_as(false)
    }

    /// [`Self::create`], the volume marked `anonymous` when this makes it.
    pub fn create_as(&self, anonymous: bool) -> anyhow::Result<bool> {
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
                anonymous,
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
        self.remove_within(Duration::ZERO)
    }

    /// [`Self::remove`], waiting up to `patience` for the volume's holders
    /// to let it go.
    fn remove_within(&self, patience: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        let lock = loop {
            match self.lock_alone()? {
                Some(lock) => break lock,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                None => anyhow::bail!("the volume {} is in use by a running appliance", self.name),
            }
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

/// The locks of the volumes this process uses, by name, held until it
/// exits (or [`remove_anonymous`] lets one go).
static HELD: Mutex<Vec<(String, File)>> = Mutex::new(Vec::new());

/// The volume `name` for this run: made when missing, and held (its lock
/// shared) until this process exits. Returns its data folder, and whether
/// this call made it.
pub fn take(name: &str) -> anyhow::Result<(PathBuf, bool)> {
    take_as(name, false)
}

/// [`take`], the volume made as an anonymous one when missing.
pub fn take_as(name: &str, anonymous: bool) -> anyhow::Result<(PathBuf, bool)> {
    check_name(name)?;
    let volume = Volume::at(&root()?, name);
    // A removal that renamed the volume away under us leaves our lock on
    // a file no longer in it: make it again.
    for _ in 0..3 {
        let made = volume.create_as(anonymous)?;
        let lock = match File::open(volume.dir.join(LOCK)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).context("cannot open the volume's lock"),
        };
        lock.lock_shared()
            .with_context(|| format!("cannot lock the volume {name}"))?;
        if volume.dir.join(LOCK).exists() {
            HELD.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((name.to_string(), lock));
            return Ok((volume.data(), made));
        }
    }
    anyhow::bail!("the volume {name} is being removed: try again")
}

/// A new anonymous volume's name: 64 hex digits, as docker's.
pub fn anonymous_name() -> String {
    crate::vms::random_hex(32)
}

/// Removes volume `name` if it is an anonymous one and nothing else uses
/// it (this process lets its own hold go first). Says what it did: `Ok`
/// when it is gone or was never anonymous, an error naming why it stays.
pub fn remove_anonymous(name: &str) -> anyhow::Result<()> {
    remove_anonymous_in(&root()?, name, Duration::ZERO)
}

/// How long the reaper waits for a volume's holders: the run's processes
/// close the pipe it waits on before the volumes' locks (a lower
/// descriptor, closed first as a process exits), so it can wake while the
/// last of them still holds one.
const REAPER_PATIENCE: Duration = Duration::from_secs(5);

fn remove_anonymous_in(root: &Path, name: &str, patience: Duration) -> anyhow::Result<()> {
    let volume = Volume::at(root, name);
    if !volume.dir.join(DATA).is_dir() || !volume.anonymous() {
        return Ok(());
    }
    HELD.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(held, _)| held != name);
    volume.remove_within(patience)
}

/// The pipe to this process's reaper (see [`reap_when_done`]).
static REAPER: Mutex<Option<std::process::ChildStdin>> = Mutex::new(None);

/// Has volume `name` removed once this process, and every process forked
/// from it without an exec (the jail's), is gone: however it ends,
/// `kill -9` included. The first call starts the reaper, `husk volume
/// reap` in a process group of its own, on a pipe whose writing end only
/// those processes hold (it is close-on-exec); each name goes down the
/// pipe, and the reaper removes them when the pipe's end comes. Called
/// before the volume is made, so no volume is ever left without one.
pub fn reap_when_done(name: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let mut reaper = REAPER.lock().unwrap_or_else(|e| e.into_inner());
    if reaper.is_none() {
        let exe = std::env::current_exe().context("cannot locate the husk binary")?;
        let child = std::process::Command::new(exe)
            .args(["volume", "reap"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .context("cannot start husk volume reap")?;
        *reaper = child.stdin;
    }
    let pipe = reaper.as_mut().context("the reaper's pipe")?;
    writeln!(pipe, "{name}").context("cannot tell the reaper")
}

/// `husk volume reap`: reads volume names from stdin to its end, then
/// removes those that are anonymous and that nothing else holds.
pub fn reap(input: impl io::Read) -> anyhow::Result<()> {
    reap_in(&root()?, input, REAPER_PATIENCE)
}

fn reap_in(root: &Path, input: impl io::Read, patience: Duration) -> anyhow::Result<()> {
    let mut names = String::new();
    io::BufReader::new(input)
        .read_to_string(&mut names)
        .context("cannot read the names of the volumes to remove")?;
    let mut failed = None;
    for name in names.lines().filter(|n| is_name(n)) {
        if let Err(e) = remove_anonymous_in(root, name, patience) {
            eprintln!("husk: the run's volume {name} stays: {e:#}");
            failed = Some(e);
        }
    }
    failed.map_or(Ok(()), Err)
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
    fn the_reaper_removes_only_anonymous_volumes_nothing_holds() {
        let dir = tempfile::tempdir().unwrap();
        let volume = |name: &str, anonymous| {
            let v = Volume::at(dir.path(), name);
            assert!(v.create_as(anonymous).unwrap());
            assert_eq!(v.anonymous(), anonymous);
            fs::write(v.data().join("f"), name).unwrap();
            v
        };
        let (done, named, held) = (
            volume("done", true),
            volume("named", false),
            volume("held", true),
        );
        let lock = File::open(held.dir.join(LOCK)).unwrap();
        lock.lock_shared().unwrap();
        // Names it does not know, or that are no volume's, are passed by;
        // a volume held past its patience stays.
        let names = "done\nnamed\nheld\nnone\n../x\n".as_bytes();
        let e = reap_in(dir.path(), names, Duration::from_millis(50)).unwrap_err();
        assert!(e.to_string().contains("in use"), "{e}");
        assert!(!done.dir.exists(), "the anonymous volume stayed");
        assert!(named.data().join("f").exists(), "a named volume went");
        assert!(held.data().join("f").exists(), "a held volume went");
        // One let go while it waits is removed.
        let letting_go = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(lock);
        });
        reap_in(dir.path(), "held\n".as_bytes(), REAPER_PATIENCE).unwrap();
        letting_go.join().unwrap();
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec!["named"]);
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
