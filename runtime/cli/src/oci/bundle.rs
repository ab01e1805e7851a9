//! An OCI bundle's config.json mapped onto a husk micro-VM: the `husk run`
//! arguments that boot it, and the process `start` hands the guest.
//!
//! The seccomp profile is compiled here (`super::seccomp`) and installed
//! by the guest's init.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::Context;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Spec};

/// Guest memory beyond the container's memory limit: the guest kernel's
/// and init's own share, so the limit is what the container's processes
/// can use.
pub const MEMORY_OVERHEAD_MIB: u64 = 32;
/// Guest memory when neither the spec nor an annotation sets it.
pub const DEFAULT_MEMORY_MIB: u64 = 256;

/// A bundle, read and checked.
#[derive(Debug)]
pub struct Launch {
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub annotations: BTreeMap<String, String>,
    pub process: agent::Process,
    pub network: Network,
    /// The spec's hooks, run on the host (`super::hooks`).
    pub hooks: Option<oci_spec::runtime::Hooks>,
    pub size: super::resources::VmSize,
    /// `husk run -d` arguments after `--name ID --hold` and the network,
    /// the `dir:` root last.
    pub husk_args: Vec<String>,
    /// `linux.cgroupsPath`: where the VM's cgroup goes on the host.
    pub cgroups_path: Option<String>,
}

/// The container's network, from its spec's namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// The host's network (no namespace of its own): user-mode networking.
    User,
    /// A new namespace of its own: only a loopback, so the guest gets none.
    None,
    /// A namespace the caller made (podman, docker, CRI): joined.
    Join(PathBuf),
}

impl Network {
    /// The namespace joined, if one is.
    pub fn joined(&self) -> Option<&Path> {
        match self {
            Network::Join(ns) => Some(ns),
            _ => None,
        }
    }
}

/// Reads `bundle/config.json` and maps it.
pub fn load(bundle: &Path) -> anyhow::Result<Launch> {
    let bundle = std::fs::canonicalize(bundle)
        .with_context(|| format!("bundle {}: no such folder", bundle.display()))?;
    let config = bundle.join("config.json");
    if !config.is_file() {
        anyhow::bail!("bundle {}: it has no config.json", bundle.display());
    }
    let text =
        std::fs::read(&config).with_context(|| format!("cannot read {}", config.display()))?;
    let spec: Spec = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a valid OCI runtime config", config.display()))?;
    map(&spec, &bundle)
}

/// Which processes a container sees, as its spec asks (CRI's modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidMode {
    /// No `pid` namespace listed (CRI's `NODE` mode): the VM's.
    Guest,
    /// A `pid` namespace without a path (CRI's default, `CONTAINER`; `ctr
    /// run`): its own, its process PID 1 in it, as under runc.
    Own,
    /// A path (CRI's `POD` mode: `shareProcessNamespace`): the pod
    /// sandbox's under the shim, where every task's pid is the pod's
    /// keeper, so a path can only name the sandbox (CRI's `TARGET` mode
    /// reads as `POD`). husk-runtime's container is a VM of its own: it
    /// runs in the VM's.
    Path,
}

pub fn pid_namespace(spec: &Spec) -> PidMode {
    match namespace(spec, LinuxNamespaceType::Pid) {
        None => PidMode::Guest,
        Some(n) if n.path().is_none() => PidMode::Own,
        Some(_) => PidMode::Path,
    }
}

/// The spec's namespace of type `typ`, when it lists one.
fn namespace(spec: &Spec, typ: LinuxNamespaceType) -> Option<&LinuxNamespace> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == typ)
}

fn map(spec: &Spec, bundle: &Path) -> anyhow::Result<Launch> {
    let root = spec
        .root()
        .as_ref()
        .context("config.json names no root (root.path)")?;
    let rootfs = bundle.join(root.path());
    if !rootfs.is_dir() {
        anyhow::bail!(
            "config.json's root.path {}: no such folder ({})",
            root.path().display(),
            rootfs.display()
        );
    }
    let rootfs = std::fs::canonicalize(&rootfs)?;
    let mut process = process(
        spec.process()
            .as_ref()
            .context("config.json has no process to run")?,
    )
    .context("config.json's process")?;
    process.seccomp = seccomp(spec)?;
    // The VM is the container, and its cgroup in the guest the
    // container's: limits, figures, the freezer of `pause`.
    process.cgroup = Some(super::resources::of_spec(spec));
    // Its process PID 1 of its own namespace, as runc makes it, where
    // the spec asks for one.
    if pid_namespace(spec) == PidMode::Own {
        process.pid_ns = agent::PidNamespace::Own;
    }
    if let Some(hooks) = spec.hooks() {
        super::hooks::check(hooks)?;
    }

    let annotations: BTreeMap<String, String> = spec
        .annotations()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut husk_args = Vec::new();
    let (cpus, memory_mib) = size_of(spec, &annotations)?;
    husk_args.extend(["--cpus".into(), cpus.to_string()]);
    husk_args.extend(["--memory".into(), format!("{memory_mib}MiB")]);
    if cold_boot(&annotations)? {
        husk_args.push("--cold".into());
    }
    if let Some(hostname) = spec.hostname() {
        if !hostname.is_empty() {
            husk_args.extend(["--hostname".into(), hostname.clone()]);
        }
    }
    if root.readonly().unwrap_or(false) {
        husk_args.push("--read-only".into());
    }
    for volume in volumes(spec)? {
        husk_args.extend(["-v".into(), volume]);
    }
    husk_args.extend(sysctl_args(spec)?);
    husk_args.push(format!("dir:{}", rootfs.display()));
    Ok(Launch {
        bundle: bundle.to_path_buf(),
        rootfs,
        annotations,
        process,
        network: network(spec),
        hooks: spec.hooks().clone(),
        size: super::resources::VmSize { cpus, memory_mib },
        husk_args,
        cgroups_path: cgroups_path(spec),
    })
}

/// The spec's `linux.sysctl` as `husk run --sysctl`s, in the order of
/// their keys: the guest's init sets them before the process starts
/// (podman's `--sysctl` and its default ones, a pod's).
pub fn sysctl_args(spec: &Spec) -> anyhow::Result<Vec<String>> {
    let mut args = Vec::new();
    let sysctls = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref());
    let mut sorted: Vec<(&String, &String)> = sysctls.into_iter().flatten().collect();
    sorted.sort();
    for (key, value) in sorted {
        husk_init::config::sysctl_path(key).context("linux.sysctl")?;
        args.extend(["--sysctl".to_string(), format!("{key}={value}")]);
    }
    Ok(args)
}

/// The spec's `linux.cgroupsPath`, where it has one.
pub fn cgroups_path(spec: &Spec) -> Option<String> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().into_owned())
}

/// The folders husk's init mounts the guest's /proc, /sys and /dev on,
/// made in the container's root where its image has none (runc, too,
/// makes a spec's mount points). Each is one name made in the root's own
/// folder (mkdirat), so a symlink in the image cannot send it elsewhere.
pub fn mount_points(rootfs: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let dir =
        std::fs::File::open(rootfs).with_context(|| format!("cannot open {}", rootfs.display()))?;
    for name in [c"proc", c"sys", c"dev"] {
        // SAFETY: mkdirat with an open directory fd and a NUL-terminated
        // single-component name; it touches no memory of ours.
        let r = unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) };
        let e = std::io::Error::last_os_error();
        if r != 0 && e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e).with_context(|| {
                format!(
                    "cannot make {}/{}",
                    rootfs.display(),
                    name.to_string_lossy()
                )
            });
        }
    }
    Ok(())
}

/// An OCI process as the guest agent starts it: argv, the whole
/// environment, cwd, uid:gid and additional groups, resource limits,
/// capabilities, `noNewPrivileges`, and a terminal or three streams (stdin
/// is always relayed: the caller's, or /dev/null's end).
pub fn process(p: &oci_spec::runtime::Process) -> anyhow::Result<agent::Process> {
    let argv = p.args().clone().unwrap_or_default();
    if argv.is_empty() {
        anyhow::bail!("args is empty: nothing to run");
    }
    let cwd = p.cwd().to_string_lossy().into_owned();
    if !cwd.starts_with('/') {
        anyhow::bail!("cwd {cwd:?} is not an absolute path");
    }
    let user = p.user();
    let tty = p.terminal().unwrap_or(false);
    let size = p.console_size().as_ref().map(|b| agent::WindowSize {
        rows: b.height().min(u64::from(u16::MAX)) as u16,
        cols: b.width().min(u64::from(u16::MAX)) as u16,
    });
    let rlimits = p
        .rlimits()
        .iter()
        .flatten()
        .map(|r| {
            let name = oci_name(&r.typ());
            Ok(agent::Rlimit {
                resource: rlimit_number(&name)
                    .with_context(|| format!("rlimits: {name} is not a resource limit"))?,
                soft: r.soft(),
                hard: r.hard(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let capabilities = p
        .capabilities()
        .as_ref()
        .map(|c| -> anyhow::Result<agent::Capabilities> {
            Ok(agent::Capabilities {
                bounding: capability_mask(c.bounding())?,
                effective: capability_mask(c.effective())?,
                permitted: capability_mask(c.permitted())?,
                inheritable: capability_mask(c.inheritable())?,
                ambient: capability_mask(c.ambient())?,
            })
        })
        .transpose()?;
    Ok(agent::Process {
        argv,
        env: p.env().clone().unwrap_or_default(),
        cwd: Some(cwd),
        user: Some(format!("{}:{}", user.uid(), user.gid())),
        tty,
        size: size.filter(|_| tty),
        stdin: !tty,
        groups: user.additional_gids().clone().unwrap_or_default(),
        rlimits,
        capabilities,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        ..Default::default()
    })
}

/// The spec's seccomp profile as the BPF programs the guest installs
/// (none without a profile).
pub fn seccomp(spec: &Spec) -> anyhow::Result<Vec<Vec<u64>>> {
    match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(profile) => super::seccomp::compile(profile),
        None => Ok(Vec::new()),
    }
}

/// The name a spec value has in config.json (`CAP_CHOWN`, `RLIMIT_NOFILE`).
fn oci_name(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

/// A capability set of the spec as a mask, bit N for capability N.
fn capability_mask(set: &Option<oci_spec::runtime::Capabilities>) -> anyhow::Result<u64> {
    let mut mask = 0;
    for cap in set.iter().flatten() {
        let name = oci_name(cap);
        let known: caps::Capability = name
            .parse()
            .map_err(|_| anyhow::anyhow!("capabilities: {name} is not a capability"))?;
        mask |= known.bitmask();
    }
    Ok(mask)
}

/// Linux's number of the resource limit `name`.
pub(crate) fn rlimit_number(name: &str) -> Option<u32> {
    let n = match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    };
    Some(n)
}

/// vCPUs and MiB: the `io.husk.vm.*` annotations first; then, for a pod's
/// sandbox, the pod's resources as containerd's CRI passes them
/// (`io.kubernetes.cri.sandbox-cpu-quota`/`-period` and
/// `io.kubernetes.cri.sandbox-memory`: the sum of its containers' limits,
/// which the kubelet sends since Kubernetes 1.23); then the spec's own CPU
/// quota and memory limit. A memory limit gets [`MEMORY_OVERHEAD_MIB`]
/// added.
pub fn size_of(spec: &Spec, annotations: &BTreeMap<String, String>) -> anyhow::Result<(u32, u64)> {
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let cpus_of = |quota: i64, period: u64| {
        (quota > 0 && period > 0).then(|| (quota as u64).div_ceil(period).clamp(1, 32) as u32)
    };
    let number = |key: &str| -> anyhow::Result<Option<i64>> {
        annotations
            .get(key)
            .map(|v| {
                v.parse::<i64>()
                    .with_context(|| format!("annotation {key}={v:?}: not a number"))
            })
            .transpose()
    };
    let pod_cpus = match (
        number("io.kubernetes.cri.sandbox-cpu-quota")?,
        number("io.kubernetes.cri.sandbox-cpu-period")?,
    ) {
        (Some(quota), Some(period)) => cpus_of(quota, period.max(0) as u64),
        _ => None,
    };
    let own_cpus = resources
        .and_then(|r| r.cpu().as_ref())
        .and_then(|cpu| cpus_of(cpu.quota()?, cpu.period()?));
    let mut cpus = pod_cpus.or(own_cpus).unwrap_or(1);
    if let Some(v) = annotations.get("io.husk.vm.cpus") {
        cpus = v
            .parse()
            .ok()
            .filter(|n| (1..=32).contains(n))
            .with_context(|| format!("annotation io.husk.vm.cpus={v:?}: a number from 1 to 32"))?;
    }
    let limit_mib =
        |bytes: i64| (bytes > 0).then(|| (bytes as u64).div_ceil(1 << 20) + MEMORY_OVERHEAD_MIB);
    let pod_memory = number("io.kubernetes.cri.sandbox-memory")?.and_then(limit_mib);
    let own_memory = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .and_then(limit_mib);
    let mut memory_mib = pod_memory.or(own_memory).unwrap_or(DEFAULT_MEMORY_MIB);
    if let Some(v) = annotations.get("io.husk.vm.memory") {
        memory_mib = crate::commands::memory_mib(v)
            .with_context(|| format!("annotation io.husk.vm.memory={v:?}"))?;
    }
    Ok((cpus, memory_mib))
}

/// The `io.husk.vm.cold` annotation: `true` boots the VM cold, as `husk
/// run --cold` does (no warm start from a snapshot, none taken).
pub fn cold_boot(annotations: &BTreeMap<String, String>) -> anyhow::Result<bool> {
    match annotations.get("io.husk.vm.cold").map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => anyhow::bail!("annotation io.husk.vm.cold={v:?}: true or false"),
    }
}

pub fn network(spec: &Spec) -> Network {
    match namespace(spec, LinuxNamespaceType::Network) {
        None => Network::User,
        Some(n) => match n.path() {
            Some(path) => Network::Join(path.clone()),
            None => Network::None,
        },
    }
}

/// Bind mounts of folders and of single files (podman's and docker's
/// /etc/hosts, /etc/resolv.conf, /etc/hostname), as `-v HOST:GUEST[:ro]`.
/// The container's proc, sysfs, devpts, tmpfs and the like are the
/// guest's own.
fn volumes(spec: &Spec) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let options = m.options().clone().unwrap_or_default();
        let bind = m.typ().as_deref() == Some("bind")
            || options.iter().any(|o| o == "bind" || o == "rbind");
        if !bind {
            continue;
        }
        let Some(source) = m.source() else { continue };
        if !source.exists() {
            anyhow::bail!(
                "bind mount {} -> {}: no such file or folder",
                source.display(),
                m.destination().display()
            );
        }
        let destination = m.destination().display().to_string();
        let source = source.display().to_string();
        if source.contains(':') || destination.contains(':') {
            anyhow::bail!("bind mount {source} -> {destination}: a path with ':' cannot be shared");
        }
        let ro = options.iter().any(|o| o == "ro");
        out.push(format!(
            "{source}:{destination}{}",
            if ro { ":ro" } else { "" }
        ));
    }
    Ok(out)
}

/// A terminal for the process: a new pty whose master goes to `socket`
/// (SCM_RIGHTS, with the terminal's name, as runc sends it); the slave,
/// raw (the guest's own terminal does the line discipline), comes back.
pub fn console(socket: &Path) -> anyhow::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    let conn = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("--console-socket {}", socket.display()))?;
    let (mut master, mut slave) = (-1, -1);
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: openpty writes two fds and a NUL-terminated name of at most
    // 128 bytes (glibc's own bound is smaller) into what we pass.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            name.as_mut_ptr(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("openpty");
    }
    // SAFETY: both fds were just made by openpty and are owned by nobody else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    // SAFETY: a zeroed termios is a valid buffer for tcgetattr to fill;
    // cfmakeraw and tcsetattr read and write only that struct and the fd.
    unsafe {
        use std::os::fd::AsRawFd;
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(slave.as_raw_fd(), &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t);
        }
    }
    // SAFETY: openpty NUL-terminated the name within the buffer.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    use std::os::fd::AsRawFd;
    conn.send_with_fd(name.to_bytes(), master.as_raw_fd())
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
        .with_context(|| format!("cannot send the terminal to {}", socket.display()))?;
    Ok(slave)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pid_namespace_is_read_as_cri_writes_it() {
        let spec = |namespaces: &str| -> Spec {
            serde_json::from_str(&format!(
                r#"{{"ociVersion":"1.0.2","linux":{{"namespaces":[{namespaces}]}}}}"#
            ))
            .unwrap()
        };
        // NODE: no pid namespace at all.
        assert_eq!(
            pid_namespace(&spec(r#"{"type":"network","path":"/proc/9/ns/net"}"#)),
            PidMode::Guest
        );
        // CONTAINER (and ctr run): a new one.
        assert_eq!(
            pid_namespace(&spec(r#"{"type":"mount"},{"type":"pid"}"#)),
            PidMode::Own
        );
        // POD: the sandbox's, by its path.
        assert_eq!(
            pid_namespace(&spec(r#"{"type":"pid","path":"/proc/9/ns/pid"}"#)),
            PidMode::Path
        );
        let no_linux: Spec = serde_json::from_str(r#"{"ociVersion":"1.0.2"}"#).unwrap();
        assert_eq!(pid_namespace(&no_linux), PidMode::Guest);
    }

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    fn bundle_with_root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        dir
    }

    #[test]
    fn a_spec_becomes_husk_arguments_and_a_process() {
        let dir = bundle_with_root();
        let data = tempfile::tempdir().unwrap();
        let s = spec(&format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs","readonly":true}},
            "hostname":"c1",
            "process":{{"args":["sh","-c","exit 7"],"env":["PATH=/bin","A=b"],"cwd":"/tmp",
              "user":{{"uid":1000,"gid":100,"additionalGids":[10,27]}},
              "rlimits":[{{"type":"RLIMIT_NOFILE","soft":1024,"hard":4096}}],
              "noNewPrivileges":true,
              "capabilities":{{"bounding":["CAP_CHOWN","CAP_NET_BIND_SERVICE"],
                "effective":["CAP_NET_BIND_SERVICE"],"permitted":["CAP_NET_BIND_SERVICE"],
                "ambient":["CAP_NET_BIND_SERVICE"]}}}},
            "mounts":[{{"destination":"/proc","type":"proc","source":"proc"}},
              {{"destination":"/data","type":"bind","source":"{}","options":["rbind","ro"]}},
              {{"destination":"/etc/hosts","type":"bind","source":"/etc/hosts","options":["bind"]}}],
            "linux":{{"namespaces":[{{"type":"network"}},{{"type":"pid"}}],
              "sysctl":{{"net.ipv4.ping_group_range":"0 0","kernel.shmmax":"65536"}},
              "resources":{{"memory":{{"limit":268435456}},"cpu":{{"quota":150000,"period":100000}}}}}}}}"#,
            data.path().display()
        ));
        let launch = map(&s, dir.path()).unwrap();
        assert_eq!(launch.process.argv, ["sh", "-c", "exit 7"]);
        assert_eq!(launch.process.env, ["PATH=/bin", "A=b"]);
        assert_eq!(launch.process.cwd.as_deref(), Some("/tmp"));
        assert_eq!(launch.process.user.as_deref(), Some("1000:100"));
        assert!(!launch.process.tty && launch.process.stdin);
        assert_eq!(launch.process.groups, [10, 27]);
        assert_eq!(
            launch.process.rlimits,
            [agent::Rlimit {
                resource: 7,
                soft: 1024,
                hard: 4096
            }]
        );
        assert!(launch.process.no_new_privileges);
        // CAP_CHOWN is 0, CAP_NET_BIND_SERVICE 10; no inheritable set given.
        assert_eq!(
            launch.process.capabilities,
            Some(agent::Capabilities {
                bounding: 1 | 1 << 10,
                effective: 1 << 10,
                permitted: 1 << 10,
                inheritable: 0,
                ambient: 1 << 10,
            })
        );
        // The limits are the guest cgroup's too, as runc's are the host's.
        let cgroup = launch.process.cgroup.unwrap();
        assert_eq!(cgroup.memory_max, Some(256 << 20));
        assert_eq!(
            (cgroup.cpu_quota, cgroup.cpu_period),
            (Some(150_000), Some(100_000))
        );
        assert_eq!(
            launch.size,
            super::super::resources::VmSize {
                cpus: 2,
                memory_mib: 288
            }
        );
        let args = launch.husk_args.join(" ");
        let root = std::fs::canonicalize(dir.path().join("rootfs")).unwrap();
        assert_eq!(
            args,
            format!(
                "--cpus 2 --memory 288MiB --hostname c1 --read-only -v {}:/data:ro \
                 -v /etc/hosts:/etc/hosts --sysctl kernel.shmmax=65536 \
                 --sysctl net.ipv4.ping_group_range=0 0 dir:{}",
                data.path().display(),
                root.display()
            )
        );
    }

    #[test]
    fn annotations_size_the_vm_and_no_network_namespace_is_user_mode() {
        let dir = bundle_with_root();
        let s = spec(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
            "annotations":{"io.husk.vm.cpus":"3","io.husk.vm.memory":"512MiB"},
            "process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
        );
        let launch = map(&s, dir.path()).unwrap();
        assert_eq!(launch.network, Network::User);
        let args = launch.husk_args.join(" ");
        assert!(args.starts_with("--cpus 3 --memory 512MiB dir:"), "{args}");
        let cold = spec(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
            "annotations":{"io.husk.vm.cold":"true"},
            "process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
        );
        let args = map(&cold, dir.path()).unwrap().husk_args.join(" ");
        assert!(args.contains("MiB --cold dir:"), "{args}");
    }

    #[test]
    fn a_sandbox_is_sized_by_its_pods_resources_from_cri() {
        let dir = bundle_with_root();
        let sized = |annotations: &str, resources: &str| {
            let s = spec(&format!(
                r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},
                "annotations":{{{annotations}}},
                "linux":{{"resources":{{{resources}}}}},
                "process":{{"args":["true"],"cwd":"/","user":{{"uid":0,"gid":0}}}}}}"#
            ));
            let a = map(&s, dir.path()).unwrap().annotations;
            size_of(&s, &a).unwrap()
        };
        // The sum of the pod's containers' limits: 2.5 CPUs, 192 MiB.
        let pod = r#""io.kubernetes.cri.sandbox-cpu-quota":"250000",
            "io.kubernetes.cri.sandbox-cpu-period":"100000",
            "io.kubernetes.cri.sandbox-cpu-shares":"1024",
            "io.kubernetes.cri.sandbox-memory":"201326592""#;
        let own = r#""memory":{"limit":67108864},"cpu":{"quota":100000,"period":100000}"#;
        assert_eq!(sized(pod, ""), (3, 192 + MEMORY_OVERHEAD_MIB));
        // Before the sandbox's own limits (a pause container's, if any).
        assert_eq!(sized(pod, own), (3, 192 + MEMORY_OVERHEAD_MIB));
        assert_eq!(sized("", own), (1, 64 + MEMORY_OVERHEAD_MIB));
        // An unlimited pod (CRI passes 0) is sized as no limit is.
        let unlimited = r#""io.kubernetes.cri.sandbox-cpu-quota":"0",
            "io.kubernetes.cri.sandbox-cpu-period":"100000",
            "io.kubernetes.cri.sandbox-memory":"0""#;
        assert_eq!(sized(unlimited, ""), (1, DEFAULT_MEMORY_MIB));
        // husk's own annotations win.
        let both = format!(r#"{pod},"io.husk.vm.cpus":"1","io.husk.vm.memory":"1GiB""#);
        assert_eq!(sized(&both, own), (1, 1024));
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        let dir = bundle_with_root();
        let cases = [
            (
                r#"{"ociVersion":"1.0.2","process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
                "names no root",
            ),
            (
                r#"{"ociVersion":"1.0.2","root":{"path":"nope"},"process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
                "no such folder",
            ),
            (
                r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#,
                "no process",
            ),
            (
                r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"args":[],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
                "args is empty",
            ),
            (
                r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"args":["true"],"cwd":"tmp","user":{"uid":0,"gid":0}}}"#,
                "not an absolute path",
            ),
            (
                r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"annotations":{"io.husk.vm.cpus":"0"},"process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
                "io.husk.vm.cpus",
            ),
            (
                r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"annotations":{"io.husk.vm.cold":"yes"},"process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
                "io.husk.vm.cold",
            ),
            (
                r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"annotations":{"io.kubernetes.cri.sandbox-memory":"lots"},"process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
                "io.kubernetes.cri.sandbox-memory",
            ),
            (
                r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"linux":{"sysctl":{"../x":"1"}},"process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
                "linux.sysctl: \"../x\" is not a kernel parameter",
            ),
        ];
        for (json, why) in cases {
            let err = format!("{:#}", map(&spec(json), dir.path()).unwrap_err());
            assert!(err.contains(why), "{json}: {err}");
        }
    }
}
