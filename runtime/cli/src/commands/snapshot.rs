//! `husk snapshot create|ls|rm|prune`: the snapshots `husk run` keeps for
//! warm starts (see `run::warm`), and those a user takes of a running
//! detached appliance and names (see `run::named`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::human_size;
use super::run::warm::{self, Meta, META_FILE};

#[derive(clap::Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Snapshot a running detached appliance (paused, saved, resumed);
    /// husk run --from-snapshot NAME restores it, running where it was
    Create {
        /// The detached appliance
        vm: String,
        /// The snapshot's name
        name: String,
    },
    /// List the cached snapshots: what each was taken of, its size on
    /// disk, and whether it can still be restored
    Ls,
    /// Remove snapshots by name or key (or a unique beginning of a key)
    Rm {
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Remove the snapshots no run can restore any more (their kernel or
    /// image changed or is gone, or they were never finished); with --all,
    /// every snapshot
    Prune {
        #[arg(long)]
        all: bool,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    let root = warm::root()?;
    match cmd {
        Command::Create { vm, name } => {
            create(&root, &vm, &name)?;
            println!("{name}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Ls => {
            println!(
                "{:<14} {:<10} {:>4} {:>8} {:>9}  {:<14}  TARGET",
                "KEY", "STATE", "CPUS", "MEMORY", "SIZE", "CREATED"
            );
            let now = crate::vms::now_ms();
            for s in list(&root)? {
                let (target, cpus, memory, created) = match &s.meta {
                    Some(m) => (
                        m.target.as_str(),
                        m.cpus.to_string(),
                        format!("{}MiB", m.memory_mib),
                        format!(
                            "{} ago",
                            crate::vms::human_duration(now.saturating_sub(m.created_ms))
                        ),
                    ),
                    None => ("?", "?".into(), "?".into(), "?".into()),
                };
                // A warm start's key, shortened; a name, whole.
                let named = s.meta.as_ref().is_some_and(|m| m.from.is_some());
                let shown = if named {
                    &s.key
                } else {
                    &s.key[..s.key.len().min(12)]
                };
                println!(
                    "{:<14} {:<10} {:>4} {:>8} {:>9}  {:<14}  {target}",
                    shown,
                    s.state.name(),
                    cpus,
                    memory,
                    human_size(s.bytes),
                    created
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rm { keys } => super::each_name(&keys, |key| {
            let s = find(&root, key)?;
            vmm::snapshot::remove(&s.dir)?;
            println!("{}", s.key);
            Ok(())
        }),
        Command::Prune { all } => Ok(super::prune(doomed(&root, all)?)),
    }
}

/// What the snapshots take: those a run can restore (or a VMM is
/// writing), and those `prune` removes.
pub fn space(root: &Path) -> anyhow::Result<super::Space> {
    let mut space = super::Space::default();
    for s in list(root)? {
        space.total += 1;
        space.bytes += s.bytes;
        match s.state {
            State::Ready | State::Writing => space.active += 1,
            State::Stale | State::Incomplete => space.reclaimable += s.bytes,
        }
    }
    Ok(space)
}

/// What `prune` removes: the snapshots no run can restore (with `all`,
/// every one), never one being written.
pub fn doomed(root: &Path, all: bool) -> anyhow::Result<Vec<super::Doomed<'static>>> {
    let doomed = list(root)?.into_iter().filter(|s| {
        let stale = matches!(s.state, State::Stale | State::Incomplete);
        (all || stale) && s.state != State::Writing
    });
    Ok(doomed
        .map(|s| -> super::Doomed {
            let remove = move || Ok(vmm::snapshot::remove(&s.dir)?);
            (Some(s.key.clone()), s.bytes, Box::new(remove))
        })
        .collect())
}

/// `husk snapshot create VM NAME`: the VM's keeper makes the files and
/// has its VMM write them.
fn create(root: &Path, vm: &str, name: &str) -> anyhow::Result<()> {
    use crate::vms::control::{Control, Request};
    super::run::named::check_name(name)?;
    let dir = root.join(name);
    if dir.exists() {
        anyhow::bail!("a snapshot named {name} exists already (husk snapshot rm {name})");
    }
    let vm = crate::vms::VmDir::find(vm)?;
    let state = vm.current_state()?;
    if state.status != crate::vms::Status::Running {
        anyhow::bail!("{} is not running (see husk ps -a)", vm.name);
    }
    let mut control = Control::connect(&vm.control(), &vm.name)?;
    // The keeper's own limit for the VMM is 120 s.
    control.set_timeout(Some(std::time::Duration::from_secs(150)));
    control.call(&Request::Snapshot { dir })?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A run of the same VM restores it.
    Ready,
    /// A VMM is writing it now.
    Writing,
    /// Its run ended before the snapshot was whole.
    Incomplete,
    /// Its kernel or image changed or is gone: no run restores it.
    Stale,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Writing => "writing",
            State::Incomplete => "incomplete",
            State::Stale => "stale",
        }
    }
}

struct Cached {
    key: String,
    dir: PathBuf,
    meta: Option<Meta>,
    state: State,
    /// Bytes it takes on disk (its files are sparse).
    bytes: u64,
}

/// Every snapshot folder under `root`, by key.
fn list(root: &Path) -> anyhow::Result<Vec<Cached>> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", root.display())),
    };
    let mut all = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", root.display()))?;
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = entry.path();
        let meta: Option<Meta> = fs::read(dir.join(META_FILE))
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok());
        let state = if vmm::snapshot::being_written(&dir) {
            State::Writing
        } else if !fs::metadata(dir.join("state.json")).is_ok_and(|m| m.len() > 0) {
            State::Incomplete
        } else if meta.as_ref().is_some_and(|m| {
            warm::file_id(&m.kernel).ok().as_ref() == Some(&m.kernel_id)
                && warm::file_id(&m.image).ok().as_ref() == Some(&m.image_id)
        }) {
            State::Ready
        } else {
            State::Stale
        };
        all.push(Cached {
            key: entry.file_name().to_string_lossy().into_owned(),
            bytes: builder::cache::disk_usage(&dir),
            dir,
            meta,
            state,
        });
    }
    all.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(all)
}

/// The snapshot whose key is or begins with `key`.
fn find(root: &Path, key: &str) -> anyhow::Result<Cached> {
    if key.is_empty() {
        anyhow::bail!("give a snapshot's key (husk snapshot ls lists them)");
    }
    let all = list(root)?;
    let mut found: Vec<Cached> = match all.iter().position(|s| s.key == key) {
        // A name, or a whole key.
        Some(i) => all.into_iter().skip(i).take(1).collect(),
        None => all.into_iter().filter(|s| s.key.starts_with(key)).collect(),
    };
    match found.len() {
        0 => anyhow::bail!("{key}: no such snapshot (husk snapshot ls lists them)"),
        1 => Ok(found.remove(0)),
        n => anyhow::bail!("{key}: {n} snapshots' keys begin so; give more of the key"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(root: &Path, key: &str, kernel: &Path, image: &Path, state: &[u8]) {
        let dir = root.join(key);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("state.json"), state).unwrap();
        fs::write(dir.join("memory"), vec![1u8; 8192]).unwrap();
        let meta = Meta {
            target: "examples/hello".into(),
            kernel: kernel.into(),
            image: image.into(),
            kernel_id: warm::file_id(kernel).unwrap(),
            image_id: warm::file_id(image).unwrap(),
            cpus: 1,
            memory_mib: 64,
            created_ms: 0,
            args: Vec::new(),
            cwd: None,
            from: None,
        };
        fs::write(dir.join(META_FILE), serde_json::to_vec(&meta).unwrap()).unwrap();
    }

    #[test]
    fn states_keys_and_what_prune_takes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("snapshots");
        let (kernel, image) = (tmp.path().join("k"), tmp.path().join("i"));
        fs::write(&kernel, b"k").unwrap();
        fs::write(&image, b"i").unwrap();
        snapshot(&root, "aaaa1111", &kernel, &image, b"{}");
        snapshot(&root, "aaaa2222", &kernel, &image, b"");
        let other = tmp.path().join("i2");
        fs::write(&other, b"i2").unwrap();
        snapshot(&root, "bbbb3333", &kernel, &other, b"{}");
        fs::remove_file(&other).unwrap();

        let states: Vec<_> = list(&root)
            .unwrap()
            .iter()
            .map(|s| (s.key.clone(), s.state))
            .collect();
        assert_eq!(
            states,
            [
                ("aaaa1111".to_string(), State::Ready),
                ("aaaa2222".to_string(), State::Incomplete),
                ("bbbb3333".to_string(), State::Stale),
            ]
        );
        assert!(list(&root).unwrap()[0].bytes >= 8192);
        assert_eq!(find(&root, "b").unwrap().key, "bbbb3333");
        // A whole name wins over the keys it begins.
        snapshot(&root, "aaaa", &kernel, &image, b"{}");
        assert_eq!(find(&root, "aaaa").unwrap().key, "aaaa");
        fs::remove_dir_all(root.join("aaaa")).unwrap();
        let err = find(&root, "aaaa").err().unwrap().to_string();
        assert!(err.contains("2 snapshots"), "{err}");
        assert!(find(&root, "c").is_err());
        assert!(find(&root, "").is_err());
        assert!(list(&tmp.path().join("none")).unwrap().is_empty());
    }
}
