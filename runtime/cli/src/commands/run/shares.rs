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
    /// A volume the guest's init fills from the image when it is empty.
    pub populate: bool,
    /// The named volume shared, if it is one.
    pub volume: Option<String>,
}

/// What `-v` shares: a host folder (or file), a named volume, or a new
/// anonymous volume (`-v /PATH`: see [`anonymous`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Folder(PathBuf),
    Volume(String),
    Anonymous,
}

/// One `-v`, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeArg {
    pub source: Source,
    pub guest: String,
    pub readonly: bool,
    /// `nocopy`: a new volume is not filled from the image.
    pub nocopy: bool,
}

/// `-v HOST:GUEST[:OPTIONS]` as `docker run -v` writes it: HOST is a
/// path (absolute, or `./` and `../` for one relative to here, made
/// absolute here: a detached run's keeper starts in the same folder, but
/// the message names what was meant) or a volume's name; OPTIONS are `ro`,
/// `rw`, `nocopy`, and podman's SELinux `z` and `Z` (taken, and nothing to
/// do: virtiofsd serves the files). `-v /GUEST` alone: a new anonymous
/// volume there.
pub fn parse_volume(arg: &str) -> Result<VolumeArg, String> {
    let (host, guest, options) = match arg.split(':').collect::<Vec<_>>()[..] {
        [host, guest] => (host, guest, ""),
        [host, guest, options] => (host, guest, options),
        [guest] if guest.starts_with('/') => {
            return Ok(VolumeArg {
                source: Source::Anonymous,
                guest: guest_path(arg, guest)?,
                readonly: false,
                nocopy: false,
            })
        }
        _ => {
            return Err(format!(
                "{arg:?}: write HOST:GUEST, HOST:GUEST:ro or /GUEST"
            ))
        }
    };
    let (mut readonly, mut nocopy) = (false, false);
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option {
            "ro" => readonly = true,
            "rw" => readonly = false,
            "nocopy" => nocopy = true,
            "z" | "Z" => {}
            _ => {
                return Err(format!(
                    "{arg:?}: unknown option {option:?} (ro, rw, nocopy, z, Z)"
                ))
            }
        }
    }
    if host.is_empty() {
        return Err(format!("{arg:?}: the host folder is empty"));
    }
    let guest = guest_path(arg, guest)?;
    let source = if host.starts_with('/') || host.starts_with('.') {
        Source::Folder(std::path::absolute(host).map_err(|e| format!("{arg:?}: {e}"))?)
    } else if crate::volumes::is_name(host) {
        Source::Volume(host.to_string())
    } else {
        return Err(format!(
            "{arg:?}: {host:?} is neither a path nor a volume's name: write ./{host} for a \
             folder here, or name a volume with two or more letters, digits, '_', '.' and '-'"
        ));
    };
    Ok(VolumeArg {
        source,
        guest,
        readonly,
        nocopy,
    })
}

/// `-v`'s GUEST: absolute, not the root, without a trailing `/`.
fn guest_path(arg: &str, guest: &str) -> Result<String, String> {
    if guest.starts_with('/') && guest.trim_matches('/').is_empty() {
        return Err(format!(
            "{arg:?}: cannot share onto /; boot a folder as the root with dir:PATH"
        ));
    }
    let guest = guest.trim_end_matches('/');
    if !guest.starts_with('/') {
        return Err(format!(
            "{arg:?}: the guest path must be absolute, such as /data"
        ));
    }
    Ok(guest.to_string())
}

/// `--anonymous-volume NAME:/PATH`, which `husk run -d` records for its
/// keeper: the appliance's anonymous volume at PATH is NAME.
pub fn parse_anonymous(arg: &str) -> Result<(String, String), String> {
    match arg.split_once(':') {
        Some((name, path)) if crate::volumes::is_name(name) => {
            Ok((name.to_string(), guest_path(arg, path)?))
        }
        _ => Err(format!("{arg:?}: write NAME:/PATH")),
    }
}

/// `--volumes-from NAME[:ro|:rw]`, as docker's: the shares of detached
/// appliance NAME (running or not) as its recorded command line gives
/// them: its folders and named volumes, and its anonymous volumes by
/// their names, each at the same guest path; all read-only with `:ro`,
/// each as the appliance has it otherwise. Its tmpfs mounts are its own.
pub fn volumes_from(spec: &str) -> anyhow::Result<Vec<VolumeArg>> {
    let (name, readonly) = match spec.rsplit_once(':') {
        Some((name, "ro")) => (name, Some(true)),
        Some((name, "rw")) => (name, Some(false)),
        Some(_) => anyhow::bail!("--volumes-from {spec:?}: write NAME, NAME:ro or NAME:rw"),
        None => (spec, None),
    };
    let vm = crate::vms::VmDir::find(name).with_context(|| format!("--volumes-from {name}"))?;
    let state = vm.read_state()?;
    // Its relative folders are relative to where it was made.
    let here = std::env::current_dir().context("the current folder")?;
    let there = state.cwd.clone().unwrap_or_else(|| here.clone());
    std::env::set_current_dir(&there)
        .with_context(|| format!("--volumes-from {name}: its folder {}", there.display()))?;
    let parsed = crate::parse_run_args(&state.args);
    std::env::set_current_dir(&here).context("the current folder")?;
    let mut parsed = parsed.with_context(|| format!("--volumes-from {name}: its command line"))?;
    super::merge_mounts(&mut parsed);
    let anonymous = parsed
        .anonymous_volume
        .iter()
        .map(|(volume, guest)| VolumeArg {
            source: Source::Volume(volume.clone()),
            guest: guest.clone(),
            readonly: false,
            nocopy: true,
        });
    Ok(parsed
        .volumes
        .into_iter()
        // Named by --anonymous-volume, taken above.
        .filter(|v| v.source != Source::Anonymous)
        .chain(anonymous)
        .map(|v| VolumeArg {
            readonly: readonly.unwrap_or(v.readonly),
            // A volume exists: nothing to fill.
            nocopy: matches!(v.source, Source::Volume(_)),
            ..v
        })
        .collect())
}

/// What `args`' `--volumes-from` stand for (merged mounts), less what
/// its own `-v`, `--mount` and `--tmpfs` put at the same guest path, as
/// docker lets a container's own mounts win.
pub fn all_volumes_from(args: &super::Args) -> anyhow::Result<Vec<VolumeArg>> {
    let own: Vec<&str> = args
        .volumes
        .iter()
        .map(|v| v.guest.as_str())
        .chain(args.tmpfs.iter().map(|t| t.path.as_str()))
        .collect();
    let mut taken: Vec<VolumeArg> = Vec::new();
    for spec in &args.volumes_from {
        for v in volumes_from(spec)? {
            if !own.contains(&v.guest.as_str()) && !taken.iter().any(|t| t.guest == v.guest) {
                taken.push(v);
            }
        }
    }
    Ok(taken)
}

/// A share as `--mount` writes it, for a recorded command line.
pub fn mount_option(v: &VolumeArg) -> String {
    let mut out = match &v.source {
        Source::Folder(path) => format!("type=bind,source={},target={}", path.display(), v.guest),
        Source::Volume(name) => format!("type=volume,source={name},target={}", v.guest),
        Source::Anonymous => format!("type=volume,target={}", v.guest),
    };
    if v.readonly {
        out.push_str(",readonly");
    }
    if v.nocopy && !matches!(v.source, Source::Folder(_)) {
        out.push_str(",volume-nocopy");
    }
    out
}

/// One `--mount`: a share as `-v` gives one, or a tmpfs as `--tmpfs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountArg {
    Share(VolumeArg),
    Tmpfs(husk_init::config::TmpfsMount),
}

/// `--mount type=bind|volume|tmpfs,...` as docker writes it: `source`
/// (`src`), `target` (`destination`, `dst`), `readonly` (`ro`, with an
/// optional `=true|false|1|0`); for a bind mount a folder or file that
/// must be there, and `bind-propagation`, `bind-nonrecursive` and
/// `consistency` taken (nothing to do across a VM's boundary); for a
/// volume a name (none: an anonymous one), `volume-nocopy`, and only the
/// `local` driver; for a tmpfs `tmpfs-size` and `tmpfs-mode`. docker's
/// default type is a volume.
pub fn parse_mount(arg: &str) -> Result<MountArg, String> {
    let (mut kind, mut source, mut target, mut readonly) = ("volume", None, None, false);
    let (mut nocopy, mut size, mut mode) = (false, None, None);
    let bool_of = |key: &str, value: Option<&str>| match value {
        None | Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(v) => Err(format!("{arg:?}: {key}={v}: write true or false")),
    };
    for field in arg.split(',') {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim_matches('"'))),
            None => (field.trim(), None),
        };
        let value_of = || value.ok_or_else(|| format!("{arg:?}: {key} needs a value"));
        match key {
            "type" => kind = value_of()?,
            "source" | "src" => source = Some(value_of()?),
            "target" | "destination" | "dst" => target = Some(value_of()?),
            "readonly" | "ro" => readonly = bool_of(key, value)?,
            "volume-nocopy" => nocopy = bool_of(key, value)?,
            "volume-driver" if value == Some("local") => {}
            "tmpfs-size" => size = Some(value_of()?),
            "tmpfs-mode" => mode = Some(value_of()?),
            "bind-propagation" | "bind-nonrecursive" | "consistency" => {}
            _ => {
                return Err(format!(
                    "{arg:?}: husk does not take {field:?} (type, source, target, readonly, \
                     volume-nocopy, tmpfs-size, tmpfs-mode)"
                ))
            }
        }
    }
    let target = target.ok_or_else(|| format!("{arg:?}: say where: target=/PATH"))?;
    let guest = guest_path(arg, target)?;
    let only = |what: &str, given: bool| match given {
        true => Err(format!("{arg:?}: {what} is not for a {kind} mount")),
        false => Ok(()),
    };
    match kind {
        "bind" => {
            only("volume-nocopy", nocopy)?;
            only("tmpfs-size or tmpfs-mode", size.is_some() || mode.is_some())?;
            let host = source.ok_or_else(|| format!("{arg:?}: a bind mount needs source=PATH"))?;
            let path = std::path::absolute(host).map_err(|e| format!("{arg:?}: {e}"))?;
            if !path.exists() {
                return Err(format!(
                    "{arg:?}: the bind source {} does not exist",
                    path.display()
                ));
            }
            Ok(MountArg::Share(VolumeArg {
                source: Source::Folder(path),
                guest,
                readonly,
                nocopy: false,
            }))
        }
        "volume" => {
            only("tmpfs-size or tmpfs-mode", size.is_some() || mode.is_some())?;
            let source = match source {
                None | Some("") => Source::Anonymous,
                Some(name) if crate::volumes::is_name(name) => Source::Volume(name.to_string()),
                Some(name) => {
                    return Err(format!(
                        "{arg:?}: {name:?} is not a volume's name (type=bind mounts a path)"
                    ))
                }
            };
            Ok(MountArg::Share(VolumeArg {
                source,
                guest,
                readonly,
                nocopy,
            }))
        }
        "tmpfs" => {
            only("source", source.is_some())?;
            only("volume-nocopy", nocopy)?;
            let mut options = Vec::new();
            if let Some(size) = size {
                options.push(format!("size={size}"));
            }
            if let Some(mode) = mode {
                options.push(format!("mode={mode}"));
            }
            if readonly {
                options.push("ro".to_string());
            }
            parse_tmpfs(&format!("{guest}:{}", options.join(","))).map(MountArg::Tmpfs)
        }
        other => Err(format!(
            "{arg:?}: type={other}: husk mounts bind, volume and tmpfs"
        )),
    }
}

/// `--tmpfs PATH[:OPTIONS]`, as docker takes it.
pub fn parse_tmpfs(arg: &str) -> Result<husk_init::config::TmpfsMount, String> {
    let (path, options) = arg.split_once(':').unwrap_or((arg, ""));
    if !path.starts_with('/') || path.trim_matches('/').is_empty() {
        return Err(format!(
            "{arg:?}: the path must be absolute, such as /scratch, and not /"
        ));
    }
    let mount = husk_init::config::TmpfsMount {
        path: path.trim_end_matches('/').to_string(),
        options: options.to_string(),
    };
    mount.flags_and_data().map_err(|e| {
        format!(
            "{arg:?}: {e}; give flags ({}) and {}=VALUE",
            husk_init::config::TMPFS_FLAGS.map(|f| f.0).join(", "),
            husk_init::config::TMPFS_DATA.join("=, ")
        )
    })?;
    Ok(mount)
}

/// The shares of `-v`s: each volume made when missing (see
/// [`crate::volumes::take`]) and held while this process lives. Not the
/// anonymous ones, which [`anonymous`] plans.
pub fn resolve(args: &[VolumeArg]) -> anyhow::Result<Vec<PlannedShare>> {
    args.iter()
        .filter(|a| a.source != Source::Anonymous)
        .map(|a| {
            let (host, volume) = match &a.source {
                Source::Folder(path) => (path.clone(), None),
                Source::Volume(name) => (crate::volumes::take(name)?.0, Some(name.clone())),
                Source::Anonymous => unreachable!("filtered out above"),
            };
            Ok(PlannedShare {
                host,
                guest: a.guest.clone(),
                readonly: a.readonly,
                populate: volume.is_some() && !a.nocopy,
                volume,
            })
        })
        .collect()
}

/// The shares of the appliance's `[[vm.shares]]` (validated: each a
/// host folder or a volume), the volumes taken as [`resolve`] takes them.
pub fn from_spec(shares: &[appliance_spec::Share]) -> anyhow::Result<Vec<PlannedShare>> {
    shares
        .iter()
        .map(|s| {
            let host = match (&s.host, &s.volume) {
                (Some(host), _) => host.clone(),
                (None, Some(name)) => crate::volumes::take(name)?.0,
                (None, None) => anyhow::bail!("vm.shares: {} names no host folder", s.guest),
            };
            Ok(PlannedShare {
                host,
                guest: s.guest.to_string(),
                readonly: s.readonly,
                populate: s.host.is_none(),
                volume: s.host.is_none().then(|| s.volume.clone()).flatten(),
            })
        })
        .collect()
}

/// Where a run gets anonymous volumes, as docker gives them: at each
/// `-v /PATH` (one where something else is mounted too is for
/// [`check_unique`] to refuse), then at each of the image's VOLUMEs
/// (`image`) where nothing else is (`mounted`: the other shares' and the
/// tmpfs' paths, or an anonymous one's).
pub fn anonymous_paths(args: &[VolumeArg], image: &[String], mounted: &[&str]) -> Vec<String> {
    let mut paths: Vec<String> = args
        .iter()
        .filter(|a| a.source == Source::Anonymous)
        .map(|a| a.guest.clone())
        .collect();
    for path in image {
        if !mounted.contains(&path.as_str()) && !paths.contains(path) {
            paths.push(path.clone());
        }
    }
    paths
}

/// How a run's new anonymous volumes are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MakeAnonymous {
    /// A foreground run's: made now, removed when the run is done
    /// (`kill -9` of it included: [`crate::volumes::reap_when_done`]).
    ForThisRun,
    /// `husk run -d`'s: only named, for the keeper's command line, which
    /// makes them and keeps them with the appliance.
    NameOnly,
}

/// The anonymous volumes at `paths`, each made and filled from the image
/// as a new named volume is, as `make` says.
pub fn anonymous(paths: &[String], make: MakeAnonymous) -> anyhow::Result<Vec<PlannedShare>> {
    let root = crate::volumes::root()?;
    paths
        .iter()
        .map(|path| {
            let name = crate::volumes::anonymous_name();
            let host = match make {
                MakeAnonymous::NameOnly => crate::volumes::Volume::at(&root, &name).data(),
                MakeAnonymous::ForThisRun => {
                    crate::volumes::reap_when_done(&name)?;
                    crate::volumes::take_as(&name, true)?.0
                }
            };
            Ok(volume_share(host, path, name))
        })
        .collect()
}

/// The anonymous volumes a detached appliance's command line names
/// (`--anonymous-volume`), made again if they went while it was stopped.
pub fn recorded_anonymous(recorded: &[(String, String)]) -> anyhow::Result<Vec<PlannedShare>> {
    recorded
        .iter()
        .map(|(name, path)| {
            let host = crate::volumes::take_as(name, true)?.0;
            Ok(volume_share(host, path, name.clone()))
        })
        .collect()
}

/// A writable volume's share at `guest`, filled from the image when new.
fn volume_share(host: PathBuf, guest: &str, name: String) -> PlannedShare {
    PlannedShare {
        host,
        guest: guest.to_string(),
        readonly: false,
        populate: true,
        volume: Some(name),
    }
}

/// The root of a run booted from a folder.
pub fn root(folder: &Path, readonly: bool) -> anyhow::Result<PlannedShare> {
    let host = std::path::absolute(folder).with_context(|| format!("dir:{}", folder.display()))?;
    Ok(PlannedShare {
        host,
        guest: "/".into(),
        readonly,
        populate: false,
        volume: None,
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
            populate: s.populate,
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
        let folder = |arg: &str| match parse_volume(arg).unwrap() {
            VolumeArg {
                source: Source::Folder(path),
                guest,
                readonly,
                ..
            } => (path, guest, readonly),
            other => panic!("{arg}: {other:?}"),
        };
        assert_eq!(
            folder("/srv/data:/data"),
            (PathBuf::from("/srv/data"), "/data".into(), false)
        );
        assert_eq!(
            folder("/srv/data:/data/:ro"),
            (PathBuf::from("/srv/data"), "/data".into(), true)
        );
        assert!(!folder("/a:/b:rw").2);
        assert!(folder("/a:/b:ro,Z").2);
        let (here, ..) = folder("./data:/data");
        assert!(
            here.is_absolute() && here.ends_with("data"),
            "{}",
            here.display()
        );
        assert_eq!(
            parse_volume("pg-data:/var/lib/db:ro,nocopy").unwrap(),
            VolumeArg {
                source: Source::Volume("pg-data".into()),
                guest: "/var/lib/db".into(),
                readonly: true,
                nocopy: true,
            }
        );
        assert!(parse_volume("/a:/").unwrap_err().contains("dir:PATH"));
        assert_eq!(
            parse_volume("/data/").unwrap(),
            VolumeArg {
                source: Source::Anonymous,
                guest: "/data".into(),
                readonly: false,
                nocopy: false,
            }
        );
        assert!(parse_volume("/").unwrap_err().contains("dir:PATH"));
        assert_eq!(
            parse_anonymous(&format!("{}:/var/db/", "ab".repeat(32))).unwrap(),
            ("ab".repeat(32), "/var/db".to_string())
        );
        for bad in ["x:/a", "ab", "ab:rel", "ab:/"] {
            assert!(parse_anonymous(bad).is_err(), "{bad} was accepted");
        }
        assert!(parse_volume("a/b:/b").unwrap_err().contains("./a/b"));
        for bad in [":/b", "/a:b", "/a:/b:rx", "/a:", "x:/b", "/a:/b:ro:x"] {
            assert!(parse_volume(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn mounts_parse_as_docker_writes_them() {
        let here = std::env::current_dir().unwrap();
        let share = |arg: &str| match parse_mount(arg).unwrap() {
            MountArg::Share(v) => v,
            other => panic!("{arg}: {other:?}"),
        };
        assert_eq!(
            share(&format!(
                "type=bind,source={},target=/src,readonly,bind-propagation=rprivate",
                here.display()
            )),
            VolumeArg {
                source: Source::Folder(here.clone()),
                guest: "/src".into(),
                readonly: true,
                nocopy: false,
            }
        );
        assert_eq!(
            share("src=pg-data,dst=/var/lib/db,volume-nocopy,ro=false").source,
            Source::Volume("pg-data".into())
        );
        let anonymous = share("type=volume,destination=/cache");
        assert_eq!(
            (anonymous.source, anonymous.readonly),
            (Source::Anonymous, false)
        );
        match parse_mount("type=tmpfs,target=/scratch,tmpfs-size=64m,tmpfs-mode=1770").unwrap() {
            MountArg::Tmpfs(t) => {
                assert_eq!(
                    (t.path.as_str(), t.options.as_str()),
                    ("/scratch", "size=64m,mode=1770")
                )
            }
            other => panic!("{other:?}"),
        }
        for (bad, why) in [
            ("type=bind,target=/x", "needs source"),
            (
                "type=bind,source=/no/such/husk/path,target=/x",
                "does not exist",
            ),
            ("type=volume,source=a/b,target=/x", "not a volume's name"),
            ("type=tmpfs,source=x,target=/x", "source is not for a tmpfs"),
            ("type=volume,target=/x,tmpfs-size=1m", "not for a volume"),
            ("type=npipe,target=/x", "bind, volume and tmpfs"),
            ("type=volume,source=v", "target=/PATH"),
            ("type=volume,target=x", "must be absolute"),
            ("type=volume,target=/x,readonly=maybe", "true or false"),
            ("type=volume,target=/x,volume-opt=o=1", "does not take"),
            ("type=volume,target=/x,volume-driver=nfs", "does not take"),
        ] {
            let e = parse_mount(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn tmpfs_mounts_parse_as_docker_writes_them() {
        let t = parse_tmpfs("/scratch/:size=1m,mode=1777,exec").unwrap();
        assert_eq!(
            (t.path.as_str(), t.options.as_str()),
            ("/scratch", "size=1m,mode=1777,exec")
        );
        assert_eq!(parse_tmpfs("/run").unwrap().options, "");
        for bad in ["scratch", "/", "/x:bind", "/x:size"] {
            assert!(parse_tmpfs(bad).is_err(), "{bad}");
        }
        assert!(parse_tmpfs("/x:bind").unwrap_err().contains("noexec"));
    }

    #[test]
    fn anonymous_volumes_go_where_nothing_else_is_mounted() {
        let args: Vec<VolumeArg> = ["/cache", "db:/var/lib/db"]
            .iter()
            .map(|a| parse_volume(a).unwrap())
            .collect();
        let image = ["/srv", "/var/lib/db", "/tmp", "/cache"].map(String::from);
        // -v /cache, then the image's, less what a share (the named
        // volume), a tmpfs or -v /cache takes.
        assert_eq!(
            anonymous_paths(&args, &image, &["/var/lib/db", "/tmp"]),
            ["/cache", "/srv"]
        );
        // -v /x twice, or where a share goes: both kept, for check_unique.
        let twice: Vec<VolumeArg> = ["/x", "/x"]
            .iter()
            .map(|a| parse_volume(a).unwrap())
            .collect();
        assert_eq!(anonymous_paths(&twice, &[], &["/x"]), ["/x", "/x"]);
        assert!(anonymous_paths(&[], &[], &[]).is_empty());
        assert!(
            resolve(&args[..1]).unwrap().is_empty(),
            "-v /cache resolved"
        );
    }

    #[test]
    fn one_guest_path_takes_one_share() {
        let share = |arg| resolve(&[parse_volume(arg).unwrap()]).unwrap().remove(0);
        let (a, b) = (share("/a:/d"), share("/b:/d"));
        assert!(check_unique(&[a.clone(), share("/b:/e")]).is_ok());
        let e = check_unique(&[a, b]).unwrap_err().to_string();
        assert!(e.contains("/d"), "{e}");
    }
}
