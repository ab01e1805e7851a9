//! A pod's micro-VM, as the shim keeps it: one VM per pod, booted by the
//! pod's first container (the sandbox), whose root is a host folder shared
//! by virtio-fs. Each container of the pod gets a subfolder of it with its
//! root filesystem (containerd's snapshot, mounted here) and what its spec
//! binds into it; the guest agent starts the container's processes there,
//! each container in a mount namespace of its own.
//!
//! The shared folder is a mount point of its own, made shared (mount
//! propagation) before virtiofsd starts: what the shim mounts under it
//! later reaches virtiofsd's (slave) copy, so a container's root mounted
//! after boot is seen by the guest.

use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use containerd_shim::protos::types::mount::Mount as RootMount;
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::commands::run::{spawn_keeper, KeeperStdio};
use crate::oci::{bundle, host_cgroup, netns, systemd_scope};
use crate::vms::control::{Control, Request};
use crate::vms::{self, VmDir};

/// Where the shim keeps its pods' VM folders (short: sockets live there).
pub const STATE_ROOT: &str = "/run/husk-shim";
/// In each container's bundle: which pod it is in, for `shim delete`
/// after the shim itself was killed.
pub const RECORD: &str = "husk-shim.json";
/// How long a pod's VM may take to come up.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// What a pod's VM is given to end cleanly before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// The folders init needs in a root it switches into.
const ROOT_FOLDERS: [&str; 5] = ["dev", "proc", "sys", "run", "tmp"];

/// What a container's bundle records of its pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The pod VM's folder.
    pub vm: PathBuf,
    /// The keeper's pid and start time (its process, not a reused pid).
    pub keeper_pid: u32,
    pub keeper_start: u64,
    /// The pod's network namespace, joined by a tap.
    pub netns: Option<PathBuf>,
    /// The pod's cgroup on the host, the whole VM in it.
    #[serde(default)]
    pub host_cgroup: Option<PathBuf>,
    /// The systemd scope that cgroup is, where CRI uses systemd's cgroups.
    #[serde(default)]
    pub systemd_scope: Option<systemd_scope::Scope>,
}

pub struct Pod {
    pub vm: VmDir,
    /// The VM's root on the host (`<vm>/pod`), a shared mount point.
    pub share: PathBuf,
    pub keeper_pid: u32,
    keeper_start: u64,
    netns: Option<PathBuf>,
    placement: Option<host_cgroup::Placement>,
    /// The cgroup's folder, once made.
    host_cgroup: Option<PathBuf>,
    keeper: Mutex<Option<Child>>,
}

impl Pod {
    /// Boots the VM of the pod whose first container (`id`, the sandbox
    /// under CRI) has the spec `spec`: its size, hostname, network and
    /// cgroup on the host are the pod's.
    ///
    /// That cgroup is the one the spec's `linux.cgroupsPath` names (under
    /// CRI the sandbox's, below the kubelet's pod cgroup), placed and made
    /// as husk-runtime makes a container's (`oci::host_cgroup`), as Kata
    /// does with `sandbox_cgroup_only`: the keeper, the VMM, virtiofsd and
    /// passt are in it, so the host accounts the pod's VM to the pod.
    ///
    /// The pod's record is written to `record_at` (in the container's
    /// bundle) before anything is made on the host and again once the
    /// keeper runs, so a shim killed mid-boot leaves `shim delete` what it
    /// needs to remove it all; a failed boot removes it with the rest.
    pub fn boot(
        spec: &Spec,
        id: &str,
        annotations: &std::collections::BTreeMap<String, String>,
        record_at: &Path,
    ) -> anyhow::Result<Pod> {
        std::fs::create_dir_all(STATE_ROOT)
            .with_context(|| format!("cannot create {STATE_ROOT}"))?;
        let cgroups_path = bundle::cgroups_path(spec);
        let placement = host_cgroup::for_container(
            cgroups_path.as_deref(),
            id,
            cgroups_path
                .as_deref()
                .is_some_and(host_cgroup::systemd_form),
        )?;
        let vm = loop {
            let vm = VmDir::at(Path::new(STATE_ROOT), &vms::random_name());
            match std::fs::DirBuilder::new().mode(0o700).create(&vm.dir) {
                Ok(()) => break vm,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", vm.dir.display()))
                }
            }
        };
        let share = vm.dir.join("pod");
        let mut pod = Pod {
            vm,
            share,
            keeper_pid: 0,
            keeper_start: 0,
            netns: bundle::network(spec).joined().map(Path::to_path_buf),
            host_cgroup: placement
                .as_ref()
                .and_then(|p| p.dir())
                .map(Path::to_path_buf),
            placement,
            keeper: Mutex::new(None),
        };
        let began = std::time::Instant::now();
        match pod
            .write_record(record_at)
            .and_then(|()| pod.start(spec, annotations, record_at))
        {
            Ok(()) => {
                log::info!("pod VM {}: up in {:?}", pod.vm.name, began.elapsed());
                Ok(pod)
            }
            Err(e) => {
                pod.teardown();
                let _ = std::fs::remove_file(record_at);
                Err(e)
            }
        }
    }

    /// Writes the pod's record (atomically) to `path`.
    pub fn write_record(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_vec_pretty(&self.record())?;
        vms::write_file(path, text).with_context(|| format!("cannot write {}", path.display()))
    }

    fn start(
        &mut self,
        spec: &Spec,
        annotations: &std::collections::BTreeMap<String, String>,
        record_at: &Path,
    ) -> anyhow::Result<()> {
        std::fs::create_dir(&self.share)
            .with_context(|| format!("cannot create {}", self.share.display()))?;
        for name in ROOT_FOLDERS {
            std::fs::create_dir(self.share.join(name))?;
        }
        // Its own mount, shared: later mounts under it reach virtiofsd.
        mount(&self.share, &self.share, libc::MS_BIND)?;
        mount(Path::new(""), &self.share, libc::MS_SHARED)?;

        let (cpus, memory_mib) = bundle::size_of(spec, annotations)?;
        let mut args: Vec<std::ffi::OsString> = vec!["run".into(), "-d".into()];
        args.extend([
            "--name".into(),
            self.vm.name.clone().into(),
            "--hold".into(),
        ]);
        args.extend(["--cpus".into(), cpus.to_string().into()]);
        args.extend(["--memory".into(), format!("{memory_mib}MiB").into()]);
        if bundle::cold_boot(annotations)? {
            args.push("--cold".into());
        }
        if let Some(h) = spec.hostname().as_ref().filter(|h| !h.is_empty()) {
            args.extend(["--hostname".into(), h.into()]);
        }
        let ns = self.netns.clone();
        let net = match bundle::network(spec) {
            bundle::Network::User => "user".to_string(),
            bundle::Network::None => "none".to_string(),
            bundle::Network::Join(ns) => netns::join(&ns)?.unwrap_or_else(|| "none".into()),
        };
        args.extend(["--net".into(), net.into()]);
        // The pod's sysctls (its securityContext's), which the kubelet
        // puts on the sandbox's spec: the VM's kernel is the pod's.
        args.extend(bundle::sysctl_args(spec)?.into_iter().map(Into::into));
        let cgroup = match &self.placement {
            Some(p) => {
                let memory = (memory_mib << 20) + vmm::jail::MEMORY_ROOM;
                let made = host_cgroup::make(p, memory, cpus)?;
                if self.host_cgroup.is_none() {
                    self.host_cgroup = Some(made.dir.clone());
                    self.write_record(record_at)?;
                }
                args.push("--keep-cgroup".into());
                Some(made)
            }
            None => None,
        };
        args.push(format!("dir:{}", self.share.display()).into());

        // The keeper starts in the pod's network namespace (its tap is
        // there): spawned from a thread of its own that enters it, so no
        // thread of the shim's stays in it.
        let (keeper, word) = std::thread::scope(|s| {
            s.spawn(|| {
                if let Some(ns) = &ns {
                    netns::enter(ns)?;
                }
                spawn_keeper(
                    &self.vm,
                    &args,
                    Path::new("/"),
                    None,
                    KeeperStdio::Word,
                    cgroup.as_ref().map(|c| c.dir.as_path()),
                )
            })
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the thread starting the pod's VM panicked")))
        })?;
        // The keeper is in: a systemd scope's placeholder may go.
        drop(cgroup);
        self.keeper_pid = keeper.id();
        self.keeper_start = vms::process_start(self.keeper_pid).unwrap_or(0);
        *self.keeper.lock().unwrap_or_else(|e| e.into_inner()) = Some(keeper);
        self.write_record(record_at)?;
        // What the keeper says before its word is why it failed.
        let said = std::sync::Arc::new(Mutex::new(Vec::new()));
        let lines = said.clone();
        let word = crate::oci::await_word_with(word, BOOT_TIMEOUT, move |line| {
            lines.lock().unwrap_or_else(|e| e.into_inner()).push(line)
        });
        let said = said.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
        match word.map_err(|e| {
            if said.is_empty() {
                e
            } else {
                e.context(said.clone())
            }
        })? {
            None => Ok(()),
            Some(code) => {
                self.reap();
                let tail = vms::log::tail(&self.vm.log(), Some(20)).unwrap_or_default();
                anyhow::bail!(
                    "the pod's VM stopped before it was ready (status {}); its console ends with:\n{}",
                    code.map_or("unknown".into(), |c| c.to_string()),
                    String::from_utf8_lossy(&tail).trim_end()
                );
            }
        }
    }

    pub fn record(&self) -> Record {
        Record {
            vm: self.vm.dir.clone(),
            keeper_pid: self.keeper_pid,
            keeper_start: self.keeper_start,
            netns: self.netns.clone(),
            host_cgroup: self.host_cgroup.clone(),
            systemd_scope: self.placement.as_ref().and_then(|p| p.scope()).cloned(),
        }
    }

    /// A new connection to the guest agent.
    pub fn agent(&self) -> anyhow::Result<UnixStream> {
        Control::connect(&self.vm.control(), &self.vm.name)?.agent()
    }

    /// Waits for the VM's keeper to end (the VM with it), and reaps it;
    /// at once when it was reaped already.
    pub fn wait_keeper(&self) {
        let child = self.keeper.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut child) = child {
            let _ = child.wait();
        }
    }

    fn reap(&self) {
        if let Some(mut child) = self.keeper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the VM (cleanly if it can within a grace period) and removes
    /// everything the pod had on the host.
    pub fn teardown(&self) {
        let began = std::time::Instant::now();
        if self.keeper_pid != 0 && vms::process_alive(self.keeper_pid, self.keeper_start) {
            if let Ok(mut control) = Control::connect(&self.vm.control(), &self.vm.name) {
                control.set_timeout(Some(STOP_GRACE * 3));
                let _ = control.call(&Request::Stop {
                    grace_ms: STOP_GRACE.as_millis() as u64,
                    signal: None,
                });
            }
        }
        self.reap();
        cleanup(&self.record());
        log::info!(
            "pod VM {}: stopped and removed in {:?}",
            self.vm.name,
            began.elapsed()
        );
    }
}

/// Removes what a pod left on the host, its keeper killed if it still
/// runs (after the shim itself was killed, `shim delete` comes here).
pub fn cleanup(record: &Record) {
    if record.keeper_pid != 0 && vms::process_alive(record.keeper_pid, record.keeper_start) {
        // SAFETY: kill(2) on a pid checked to be the keeper's (by its
        // start time); it touches no memory.
        unsafe { libc::kill(record.keeper_pid as libc::pid_t, libc::SIGKILL) };
        for _ in 0..100 {
            if !vms::process_alive(record.keeper_pid, record.keeper_start) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // What the keeper leaves when it is killed (its VMM, virtiofsd) dies
    // with the cgroup, before the share they hold is unmounted.
    let scope = record.systemd_scope.as_ref();
    if let Err(e) = host_cgroup::remove_all(record.host_cgroup.as_deref(), scope) {
        log::warn!("{e:#}");
    }
    let share = record.vm.join("pod");
    if let Some(s) = share.to_str() {
        let _ = containerd_shim::mount::umount_recursive(Some(s), libc::MNT_DETACH);
    }
    if let Some(ns) = &record.netns {
        netns::leave(ns);
    }
    let _ = std::fs::remove_dir_all(&record.vm);
}

/// A container's files in the pod's share: its root filesystem mounted at
/// `<share>/<id>/rootfs`, the host files and folders its spec binds at
/// `<share>/<id>/mounts/<n>`; what the agent needs to start it there.
pub fn prepare_container(
    share: &Path,
    id: &str,
    bundle_dir: &Path,
    rootfs: &[RootMount],
    spec: &Spec,
) -> anyhow::Result<agent::Container> {
    let dir = share.join(id);
    std::fs::create_dir(&dir).with_context(|| format!("container {id} exists in its pod"))?;
    let made = mount_container(&dir, bundle_dir, rootfs, spec, id);
    if made.is_err() {
        remove_container(share, id);
    }
    made
}

fn mount_container(
    dir: &Path,
    bundle_dir: &Path,
    rootfs: &[RootMount],
    spec: &Spec,
    id: &str,
) -> anyhow::Result<agent::Container> {
    let root = dir.join("rootfs");
    std::fs::create_dir(&root)?;
    if rootfs.is_empty() {
        // No snapshot handed over: the bundle's own root folder.
        let path = spec
            .root()
            .as_ref()
            .map(|r| bundle_dir.join(r.path()))
            .context("config.json names no root (root.path) and containerd gave no rootfs")?;
        mount(&path, &root, libc::MS_BIND | libc::MS_REC)?;
    }
    for m in rootfs {
        mount_snapshot(m, &root)
            .with_context(|| format!("cannot mount the container's root ({})", m.type_))?;
    }
    bundle::mount_points(&root)?;
    let guest = |p: &Path| format!("/{id}/{}", p.display());
    let mut mounts = Vec::new();
    for (n, m) in spec.mounts().iter().flatten().enumerate() {
        let target = m.destination().to_string_lossy().into_owned();
        let options = m.options().clone().unwrap_or_default();
        let readonly = options.iter().any(|o| o == "ro");
        match m.typ().as_deref() {
            Some("bind") | None if m.source().is_some() => {
                let source = m.source().as_ref().expect("checked");
                if ["/proc", "/sys", "/dev"].contains(&target.as_str()) {
                    continue;
                }
                let meta = std::fs::metadata(source).with_context(|| {
                    format!("the bind mount of {} onto {target}", source.display())
                })?;
                let inside = PathBuf::from("mounts").join(n.to_string());
                let at = dir.join(&inside);
                if meta.is_dir() {
                    std::fs::create_dir_all(&at)?;
                } else {
                    std::fs::create_dir_all(dir.join("mounts"))?;
                    std::fs::File::create(&at)?;
                }
                mount(source, &at, libc::MS_BIND | libc::MS_REC)?;
                mounts.push(agent::Mount::Bind {
                    source: guest(&inside),
                    target,
                    readonly,
                });
            }
            Some("tmpfs") if !["/dev"].contains(&target.as_str()) => {
                let data: Vec<&str> = options
                    .iter()
                    .map(String::as_str)
                    .filter(|o| o.starts_with("size=") || o.starts_with("mode="))
                    .collect();
                mounts.push(agent::Mount::Tmpfs {
                    target,
                    options: data.join(","),
                });
            }
            // proc, sysfs, devpts, mqueue, cgroup: the agent's own.
            _ => {}
        }
    }
    Ok(agent::Container {
        root: guest(Path::new("rootfs")),
        readonly: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        mounts,
        resources: crate::oci::resources::of_spec(spec),
    })
}

/// Unmounts and removes a container's files from the pod's share.
pub fn remove_container(share: &Path, id: &str) {
    let dir = share.join(id);
    if let Some(d) = dir.to_str() {
        let _ = containerd_shim::mount::umount_recursive(Some(d), libc::MNT_DETACH);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Mounts one of the mounts containerd hands over for a container's root
/// (a snapshot: `bind` from the native snapshotter, `overlay` from the
/// overlayfs one) as mount(8) would: the flag options as flags, the rest
/// as the filesystem's data. (containerd-shim's own helper forks and
/// waits through the crate's reaper, which this shim does not run: it
/// waits for its keepers itself.)
fn mount_snapshot(m: &RootMount, target: &Path) -> anyhow::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let (flags, data) = mount_options(&m.options);
    let c = |s: &str| CString::new(s).context("a NUL in a mount");
    let source = c(&m.source)?;
    let fstype = c(&m.type_)?;
    let data = c(&data)?;
    let target_c = CString::new(target.as_os_str().as_bytes())?;
    let bind = flags & libc::MS_BIND != 0;
    // SAFETY: NUL-terminated strings (or null) that outlive the calls.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            if bind {
                std::ptr::null()
            } else {
                fstype.as_ptr()
            },
            flags & !libc::MS_RDONLY,
            if data.is_empty() {
                std::ptr::null()
            } else {
                data.as_ptr().cast()
            },
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    if flags & libc::MS_RDONLY != 0 {
        // A bind mount takes read-only only on a remount; another
        // filesystem takes it there as well.
        let remount = libc::MS_REMOUNT | libc::MS_RDONLY | (flags & libc::MS_BIND);
        // SAFETY: as above.
        let r = unsafe {
            libc::mount(
                std::ptr::null(),
                target_c.as_ptr(),
                std::ptr::null(),
                remount,
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(())
}

/// mount(8)'s options split into flags and the filesystem's own data.
fn mount_options(options: &[String]) -> (libc::c_ulong, String) {
    let mut flags: libc::c_ulong = 0;
    let mut data = Vec::new();
    for o in options {
        let (set, clear) = match o.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "bind" => (libc::MS_BIND, 0),
            "rbind" => (libc::MS_BIND | libc::MS_REC, 0),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "noatime" => (libc::MS_NOATIME, 0),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            // Propagation is the pod share's business, not a snapshot's.
            "defaults" | "async" | "atime" | "diratime" | "private" | "rprivate" | "shared"
            | "rshared" | "slave" | "rslave" => (0, 0),
            other => {
                data.push(other);
                (0, 0)
            }
        };
        flags = (flags | set) & !clear;
    }
    (flags, data.join(","))
}

fn mount(source: &Path, target: &Path, flags: libc::c_ulong) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes());
    let (src, tgt) = (c(source)?, c(target)?);
    let src_ptr = if source.as_os_str().is_empty() {
        std::ptr::null()
    } else {
        src.as_ptr()
    };
    // SAFETY: NUL-terminated paths (or null) that outlive the call; no
    // filesystem type or data.
    let r = unsafe {
        libc::mount(
            src_ptr,
            tgt.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot mount {} on {}", source.display(), target.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_split_into_flags_and_data() {
        let o = |v: &[&str]| mount_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            o(&["rbind", "ro"]),
            (
                libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY,
                String::new()
            )
        );
        assert_eq!(
            o(&["index=off", "lowerdir=/a:/b", "upperdir=/u", "workdir=/w"]),
            (0, "index=off,lowerdir=/a:/b,upperdir=/u,workdir=/w".into())
        );
        // Later options win, as mount(8) reads them.
        assert_eq!(o(&["ro", "rw", "nosuid"]).0, libc::MS_NOSUID);
    }
}
