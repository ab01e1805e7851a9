//! The built images in the cache (`images/KEY/`), for `husk image
//! ls|rm|prune`.
//!
//! A build writes `KEY/` whole (beside it first, then renamed into place):
//! the image, its `digest` and `run.json`. Each time an image is built or
//! found for a target, the caller records that use in `KEY/used.json`: what
//! the target was (an appliance file or an image reference, with absolute
//! paths) and when, at most once a minute for the same target (a read
//! costs each run's start less than a write). So an image is **superseded** when another image was
//! used later for the same target (the target changed and builds to a new
//! key), and **orphaned** when its target is a path that is gone (a deleted
//! appliance, a removed container bundle). A build that was killed leaves
//! its temporary folder (`.KEY.tmp-PID-N`) behind; its process is gone.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The file that records an image's latest use.
pub const USED_FILE: &str = "used.json";

/// The latest use of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Used {
    /// The target, with its paths absolute: `/abs/appliance.toml`,
    /// `oci:/abs/layout:tag`, `docker://host/repo:tag`, `dir:/abs/root`.
    pub target: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// A use for the same target this soon after the recorded one is not
/// written again: every `husk run` records its image's use, and a read
/// costs its start less than a write and a rename.
const RECORD_EVERY: Duration = Duration::from_secs(60);

/// The `sha256:HEX` digest the build recorded beside the image at `image`
/// (a file in its `KEY/` folder); `None` for a file outside the cache.
pub fn digest_of(image: &Path) -> Option<String> {
    let text = fs::read_to_string(image.with_file_name("digest")).ok()?;
    Some(text.trim().to_string())
}

/// The run configuration the build recorded beside the image at `image`.
pub fn run_config_of(image: &Path) -> Result<husk_init::config::RunConfig, String> {
    let path = image.with_file_name("run.json");
    let text = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    husk_init::config::RunConfig::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Records that the image at `image` (a file in its `KEY/` folder) was
/// used now for `target`, unless that use is on record from less than
/// [`RECORD_EVERY`] ago. Best effort: a read-only cache keeps no record.
pub fn record_use(image: &Path, target: &str) -> io::Result<()> {
    let dir = image
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "an image path has a folder"))?;
    let used = Used {
        target: target.to_string(),
        at_ms: now_ms(),
    };
    let recorded: Option<Used> = fs::read(dir.join(USED_FILE))
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok());
    if recorded.is_some_and(|r| {
        r.target == used.target
            && used.at_ms.saturating_sub(r.at_ms) < RECORD_EVERY.as_millis() as u64
    }) {
        return Ok(());
    }
    let tmp = crate::cache::temp_sibling(&dir.join(USED_FILE));
    fs::write(&tmp, serde_json::to_vec(&used).expect("plain data"))?;
    fs::rename(&tmp, dir.join(USED_FILE)).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// One image in the cache.
#[derive(Debug, Clone)]
pub struct CachedImage {
    /// The folder's name: 32 hex digits of the build's key.
    pub key: String,
    pub dir: PathBuf,
    /// `ext4` or `initramfs`, from the image file's name.
    pub format: &'static str,
    /// Bytes it takes on disk (an ext4 image is sparse).
    pub bytes: u64,
    /// When it was built.
    pub built: Option<SystemTime>,
    /// Its latest use, where one was recorded.
    pub used: Option<Used>,
}

/// What the image cache holds.
#[derive(Debug, Default)]
pub struct Listing {
    /// Whole images, by key.
    pub images: Vec<CachedImage>,
    /// Temporary folders of builds whose process is gone.
    pub leftovers: Vec<PathBuf>,
}

/// The images under `cache`, and what killed builds left.
pub fn list(cache: &Path) -> io::Result<Listing> {
    let root = cache.join("images");
    let entries = match fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Listing::default()),
        Err(e) => return Err(e),
    };
    let mut listing = Listing::default();
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        if let Some(pid) = temp_owner(&name) {
            if !Path::new("/proc").join(pid.to_string()).exists() {
                listing.leftovers.push(dir);
            }
            continue;
        }
        // A folder without its digest is not an image (the digest is
        // written inside the temporary folder before the rename).
        let Ok(digest) = fs::metadata(dir.join("digest")) else {
            continue;
        };
        let format = if dir.join("rootfs.ext4").exists() {
            "ext4"
        } else {
            "initramfs"
        };
        let used = fs::read(dir.join(USED_FILE))
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok());
        listing.images.push(CachedImage {
            key: name,
            bytes: crate::cache::disk_usage(&dir),
            built: digest.modified().ok(),
            dir,
            format,
            used,
        });
    }
    listing.images.sort_by(|a, b| a.key.cmp(&b.key));
    listing.leftovers.sort();
    Ok(listing)
}

/// Why prune takes an image without `--all`, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unused {
    /// Another image was used later for its target.
    Superseded,
    /// Its target is a path that no longer exists.
    Orphaned,
}

/// For each of `images`, whether it is [`Unused`].
pub fn unused(images: &[CachedImage]) -> Vec<Option<Unused>> {
    images
        .iter()
        .map(|image| {
            let used = image.used.as_ref()?;
            let later = images.iter().any(|other| {
                other.key != image.key
                    && other
                        .used
                        .as_ref()
                        .is_some_and(|o| o.target == used.target && o.at_ms > used.at_ms)
            });
            if later {
                Some(Unused::Superseded)
            } else if target_path(&used.target).is_some_and(|p| !p.exists()) {
                Some(Unused::Orphaned)
            } else {
                None
            }
        })
        .collect()
}

/// The host path a target names, if any: an appliance file, or the path
/// in `oci:`, `oci-archive:`, `docker-archive:` and `dir:` references.
fn target_path(target: &str) -> Option<PathBuf> {
    if target.starts_with("docker://") {
        return None;
    }
    let path = ["oci:", "oci-archive:", "docker-archive:", "dir:"]
        .iter()
        .find_map(|p| target.strip_prefix(p))
        .unwrap_or(target);
    // oci:DIR[:TAG]: the tag is not part of the path.
    let path = match target.strip_prefix("oci:") {
        Some(_) => path.rsplit_once(':').map_or(path, |(dir, _)| dir),
        None => path,
    };
    path.starts_with('/').then(|| PathBuf::from(path))
}

/// Removes an image's (or a leftover's) folder: renamed out of the way
/// first, so no reader sees it half removed.
pub fn remove(dir: &Path) -> io::Result<()> {
    let gone = dir.with_file_name(format!(
        ".{}.rm-{}",
        dir.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    fs::rename(dir, &gone)?;
    fs::remove_dir_all(&gone)
}

/// The pid in a temporary folder's name, `.NAME.tmp-PID-N` or
/// `.NAME.rm-PID`.
fn temp_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (_, tail) = rest
        .rsplit_once(".tmp-")
        .or_else(|| rest.rsplit_once(".rm-"))?;
    tail.split('-').next()?.parse().ok()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_s_digest_and_run_configuration_are_read_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("rootfs.ext4");
        assert_eq!(digest_of(&image), None);
        assert!(run_config_of(&image).unwrap_err().contains("run.json"));
        fs::write(dir.path().join("digest"), "sha256:ab\n").unwrap();
        fs::write(
            dir.path().join("run.json"),
            r#"{"command": ["/a"], "exposed_ports": ["80/tcp"]}"#,
        )
        .unwrap();
        assert_eq!(digest_of(&image).as_deref(), Some("sha256:ab"));
        assert_eq!(run_config_of(&image).unwrap().exposed_ports, ["80/tcp"]);
    }

    /// A whole image folder under `cache`, used for `target` at `at_ms`.
    fn image(cache: &Path, key: &str, target: Option<(&str, u64)>) -> PathBuf {
        let dir = cache.join("images").join(key);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("rootfs.cpio.gz"), vec![1u8; 10_000]).unwrap();
        fs::write(dir.join("digest"), "sha256:00\n").unwrap();
        if let Some((target, at_ms)) = target {
            let used = Used {
                target: target.into(),
                at_ms,
            };
            fs::write(dir.join(USED_FILE), serde_json::to_vec(&used).unwrap()).unwrap();
        }
        dir
    }

    #[test]
    fn lists_whole_images_and_dead_builds_leftovers_only() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path();
        image(cache, "bbbb", None);
        image(cache, "aaaa", None);
        let images = cache.join("images");
        // A folder without a digest, a leftover of a dead process (no pid
        // is 0 in /proc) and a build still running (this process).
        fs::create_dir(images.join("cccc")).unwrap();
        fs::create_dir(images.join(".dddd.tmp-0-1")).unwrap();
        let running = format!(".eeee.tmp-{}-0", std::process::id());
        fs::create_dir(images.join(&running)).unwrap();
        fs::write(images.join("stray-file"), "x").unwrap();
        let l = list(cache).unwrap();
        let keys: Vec<&str> = l.images.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["aaaa", "bbbb"]);
        assert_eq!(l.leftovers, [images.join(".dddd.tmp-0-1")]);
        assert!(l
            .images
            .iter()
            .all(|i| i.bytes >= 8192 && i.format == "initramfs"));
        assert!(l.images[0].built.is_some());
        // No cache yet: nothing, not an error.
        let empty = list(&cache.join("none")).unwrap();
        assert!(empty.images.is_empty() && empty.leftovers.is_empty());
    }

    #[test]
    fn a_use_is_recorded_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = image(tmp.path(), "aaaa", None);
        record_use(&dir.join("rootfs.cpio.gz"), "/apps/web/appliance.toml").unwrap();
        let l = list(tmp.path()).unwrap();
        let used = l.images[0].used.clone().unwrap();
        assert_eq!(used.target, "/apps/web/appliance.toml");
        assert!(now_ms() - used.at_ms < 60_000);
        // A use for the same target a moment later is not written again;
        // one for another target is.
        let before = fs::read(dir.join(USED_FILE)).unwrap();
        record_use(&dir.join("rootfs.cpio.gz"), "/apps/web/appliance.toml").unwrap();
        assert_eq!(fs::read(dir.join(USED_FILE)).unwrap(), before);
        record_use(&dir.join("rootfs.cpio.gz"), "/apps/other/appliance.toml").unwrap();
        let again = list(tmp.path()).unwrap().images[0].used.clone().unwrap();
        assert_eq!(again.target, "/apps/other/appliance.toml");
        // Only the record is left beside the image: no temporary file.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn superseded_and_orphaned_images_are_unused() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let app = tmp.path().join("appliance.toml");
        fs::write(&app, "").unwrap();
        let app = app.to_string_lossy().into_owned();
        let gone = tmp.path().join("gone.toml").to_string_lossy().into_owned();
        let layout = format!("oci:{}:latest", tmp.path().display());
        image(&cache, "a-old", Some((&app, 100)));
        image(&cache, "b-new", Some((&app, 200)));
        image(&cache, "c-gone", Some((&gone, 300)));
        image(&cache, "d-registry", Some(("docker://host/repo:1", 50)));
        image(&cache, "e-layout", Some((&layout, 50)));
        image(&cache, "f-unrecorded", None);
        let l = list(&cache).unwrap();
        let got: Vec<_> = l
            .images
            .iter()
            .map(|i| i.key.as_str())
            .zip(unused(&l.images))
            .collect();
        assert_eq!(
            got,
            [
                ("a-old", Some(Unused::Superseded)),
                ("b-new", None),
                ("c-gone", Some(Unused::Orphaned)),
                ("d-registry", None),
                ("e-layout", None),
                ("f-unrecorded", None),
            ]
        );
    }

    #[test]
    fn target_paths() {
        assert_eq!(
            target_path("/a/appliance.toml"),
            Some("/a/appliance.toml".into())
        );
        assert_eq!(target_path("oci:/a/layout:v1"), Some("/a/layout".into()));
        assert_eq!(target_path("dir:/a/root"), Some("/a/root".into()));
        assert_eq!(
            target_path("docker-archive:/a/x.tar"),
            Some("/a/x.tar".into())
        );
        assert_eq!(target_path("docker://host:5000/repo"), None);
        assert_eq!(target_path("relative/appliance.toml"), None);
    }

    #[test]
    fn remove_takes_the_whole_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = image(tmp.path(), "aaaa", None);
        remove(&dir).unwrap();
        assert_eq!(fs::read_dir(tmp.path().join("images")).unwrap().count(), 0);
        assert_eq!(remove(&dir).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(temp_owner(".aaaa.rm-42"), Some(42));
        assert_eq!(temp_owner(".aaaa.tmp-42-7"), Some(42));
        assert_eq!(temp_owner("aaaa"), None);
    }
}
