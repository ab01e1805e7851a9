//! Shared folders and files: `-v HOST:GUEST[:ro]`, the appliance's
//! `[[vm.shares]]` and a root booted from a folder, each folder served to
//! the VM by a virtiofsd of its own, every single file by one more, and
//! mounted by husk's init before the command starts.

use std::path::{Path, PathBuf};

use anyhow::Context;
use husk_init::config::{FileShare, FsSetup, ShareMount, SharedFile as GuestFile};
use vmm::virtiofsd::{Cache, ShareSpec, SharedFile, Virtiofsd};
use vmm::ShareConfig;

/// The virtio-fs tag of a root booted from a folder.
const ROOT_TAG: &str = "husk-root";
/// The virtio-fs tag of the share that serves single files.
const FILES_TAG: &str = "husk-files";

/// One folder as planned: where it is on the host and in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedShare {
    pub host: PathBuf,
    /// An absolute guest path; `/` for the root.
    pub guest: String,
    pub readonly: bool,
}

/// `-v HOST:GUEST[:ro|:rw]`, as `docker run -v` writes it. The host folder
/// is made absolute here (a detached run's keeper starts in the same
/// folder, but the message names what was meant).
pub fn parse_volume(arg: &str) -> Result<PlannedShare, String> {
    let (rest, readonly) = match arg.rsplit_once(':') {
        Some((rest, "ro")) => (rest, true),
        Some((rest, "rw")) => (rest, false),
        _ => (arg, false),
    };
    let Some((host, guest)) = rest.split_once(':') else {
        return Err(format!("{arg:?}: write HOST:GUEST or HOST:GUEST:ro"));
    };
    if host.is_empty() {
        return Err(format!("{arg:?}: the host folder is empty"));
    }
    if guest.starts_with('/') && guest.trim_matches('/').is_empty() {
        return Err(format!(
            "{arg:?}: cannot share onto /; boot a folder as the root with dir:PATH"
        ));
    }
    let guest = guest.trim_end_matches('/');
    if !guest.starts_with('/') || guest.contains(':') {
        return Err(format!(
            "{arg:?}: the guest path must be absolute, such as /data"
        ));
    }
    let host = std::path::absolute(host).map_err(|e| format!("{arg:?}: {e}"))?;
    Ok(PlannedShare {
        host,
        guest: guest.to_string(),
        readonly,
    })
}

/// The root of a run booted from a folder.
pub fn root(folder: &Path, readonly: bool) -> anyhow::Result<PlannedShare> {
    let host = std::path::absolute(folder).with_context(|| format!("dir:{}", folder.display()))?;
    Ok(PlannedShare {
        host,
        guest: "/".into(),
        readonly,
    })
}

/// Checks that no two shares go to one guest path.
pub fn check_unique(shares: &[PlannedShare]) -> anyhow::Result<()> {
    for (i, s) in shares.iter().enumerate() {
        if shares[..i].iter().any(|o| o.guest == s.guest) {
            anyhow::bail!("two shared folders go to {} in the guest", s.guest);
        }
    }
    Ok(())
}

/// virtiofsd's cache mode: `$HUSK_VIRTIOFS_CACHE` (auto, always, never),
/// else auto (see README's Shared folders for the figures behind it).
fn cache() -> anyhow::Result<Cache> {
    match std::env::var("HUSK_VIRTIOFS_CACHE") {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map_err(|e: String| anyhow::anyhow!("HUSK_VIRTIOFS_CACHE: {e}")),
        _ => Ok(Cache::default()),
    }
}

/// Starts one virtiofsd per shared folder and one for all the single
/// files shared (kept alive by the returned guards), and says what the
/// guest's init mounts where.
pub fn attach(
    shares: &[PlannedShare],
) -> anyhow::Result<(Vec<ShareConfig>, Vec<Virtiofsd>, FsSetup)> {
    let mut configs = Vec::new();
    let mut daemons = Vec::new();
    let mut setup = FsSetup::default();
    let cache = cache()?;
    let (files, folders): (Vec<&PlannedShare>, Vec<&PlannedShare>) = shares
        .iter()
        .partition(|s| s.guest != "/" && std::fs::metadata(&s.host).is_ok_and(|m| !m.is_dir()));
    if !files.is_empty() {
        let served: Vec<SharedFile> = files
            .iter()
            .map(|s| SharedFile {
                host: s.host.clone(),
                readonly: s.readonly,
            })
            .collect();
        let (daemon, backend) = Virtiofsd::start_files(&served, cache)
            .context("cannot share single files with the guest")?;
        daemons.push(daemon);
        setup.files = Some(FileShare {
            tag: FILES_TAG.into(),
            files: files
                .iter()
                .enumerate()
                .map(|(i, s)| GuestFile {
                    name: i.to_string(),
                    path: s.guest.clone(),
                    readonly: s.readonly,
                })
                .collect(),
        });
        configs.push(ShareConfig {
            tag: FILES_TAG.into(),
            backend,
        });
    }
    for (i, s) in folders.into_iter().enumerate() {
        let tag = if s.guest == "/" {
            ROOT_TAG.to_string()
        } else {
            format!("husk-fs{i}")
        };
        let spec = ShareSpec {
            folder: s.host.clone(),
            readonly: s.readonly,
            cache,
        };
        let (daemon, backend) = Virtiofsd::start(&spec).with_context(|| {
            format!(
                "cannot share {} with the guest at {}",
                s.host.display(),
                s.guest
            )
        })?;
        daemons.push(daemon);
        setup.mounts.push(ShareMount {
            tag: tag.clone(),
            path: s.guest.clone(),
            readonly: s.readonly,
        });
        configs.push(ShareConfig { tag, backend });
    }
    Ok((configs, daemons, setup))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_parse_as_docker_writes_them() {
        let v = parse_volume("/srv/data:/data").unwrap();
        assert_eq!(v.host, PathBuf::from("/srv/data"));
        assert_eq!(v.guest, "/data");
        assert!(!v.readonly);
        let v = parse_volume("/srv/data:/data/:ro").unwrap();
        assert_eq!(v.guest, "/data");
        assert!(v.readonly);
        assert!(!parse_volume("/a:/b:rw").unwrap().readonly);
        let v = parse_volume("data:/data").unwrap();
        assert!(v.host.is_absolute(), "{}", v.host.display());
        assert!(v.host.ends_with("data"));
        assert!(parse_volume("/a:/").unwrap_err().contains("dir:PATH"));
        for bad in ["/a", ":/b", "/a:b", "/a:/b:rx", "/a:"] {
            assert!(parse_volume(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn one_guest_path_takes_one_share() {
        let a = parse_volume("/a:/d").unwrap();
        let b = parse_volume("/b:/d").unwrap();
        assert!(check_unique(&[a.clone(), parse_volume("/b:/e").unwrap()]).is_ok());
        let e = check_unique(&[a, b]).unwrap_err().to_string();
        assert!(e.contains("/d"), "{e}");
    }
}
