//! The run configuration: what the builder bakes into every image at
//! [`CONFIG_PATH`], and the overrides `husk run` passes on the kernel
//! command line as `husk.run=<hex of JSON>`.
//!
//! The image carries its own configuration so that it boots the same under
//! any VMM with husk's kernel; the command line only changes it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// Where the builder installs the init, and the `init=`/`rdinit=` value.
pub const INIT_PATH: &str = "/.husk/init";
/// Where the builder writes the run configuration.
pub const CONFIG_PATH: &str = "/.husk/run.json";
/// The kernel command-line parameter carrying [`Overrides`]. It has a dot,
/// so the kernel neither passes it to init as an argument nor as an
/// environment variable; init reads it from `/proc/cmdline`.
pub const CMDLINE_KEY: &str = "husk.run";

/// On the command line of an exported disk's kernel (`husk export`): no
/// husk VMM is there, so init writes nothing to husk's control port (an
/// I/O port that is the chipset's power management on a PC), reports the
/// exit status on the console, and ends as `on_exit` says.
pub const PORTABLE_ARG: &str = "husk.portable";

/// On the kernel command line of a VM that takes a snapshot: init stops at
/// its snapshot point (everything mounted, the console open, nothing of the
/// run configuration read yet) and tells the VMM on the control port, which
/// saves the VM there; a VM restored from it goes on from that point.
pub const SNAPSHOT_ARG: &str = "husk.snapshot";

/// Search path when the configuration sets none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the run configuration is not valid JSON")]
    Json(#[source] serde_json::Error),
    #[error("{0}= on the kernel command line is not hex-encoded JSON of the right shape")]
    BadParam(String),
    #[error("environment entry {0:?} is not KEY=VALUE")]
    BadEnv(String),
    #[error("{0:?} is not a kernel parameter: write KEY=VALUE, such as net.core.somaxconn=1024")]
    BadSysctl(String),
}

/// How the appliance's command runs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// argv; a program without a `/` is looked up in `PATH`.
    pub command: Vec<String>,
    /// The image's ENTRYPOINT, the first words of `command`: a run's
    /// `-- ARGS` replace only what follows it (the image's CMD), as
    /// docker's arguments after the image do. Empty for an appliance
    /// whose `run.command` is the whole command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    /// `KEY=VALUE` entries, in order, keys unique.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`, resolved in the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Supplementary groups of every process started from this
    /// configuration, beside its user's (`--group-add`): names in the
    /// image's `/etc/group`, or gids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// What an exported appliance's machine does when the command ends
    /// (under husk the VM always ends with it).
    #[serde(default, skip_serializing_if = "OnExit::is_default")]
    pub on_exit: OnExit,
    /// The signal that asks the command to stop (the image's STOPSIGNAL,
    /// the appliance's `run.stop_signal`); SIGTERM when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<i32>,
    /// The ports it listens on, as `80/tcp` or `53/udp` (the image's
    /// EXPOSE and the appliance's `run.expose`): for `husk run -P`, the
    /// host's side alone reads them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exposed_ports: Vec<String>,
    /// The image's VOLUMEs: absolute guest paths a run gives a volume of
    /// its own (an anonymous one) unless it mounts something else there;
    /// the host's side alone reads them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// The image's LABELs: a detached appliance's labels start from them
    /// (the host's side alone reads them).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The image's HEALTHCHECK (a docker image's): for a detached run's
    /// keeper, when neither `--health-cmd` nor the appliance's
    /// `[run.health]` gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<ImageHealthcheck>,
}

/// A docker image's `HEALTHCHECK`, as husk's keeper runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageHealthcheck {
    /// The argv run in the guest (`CMD-SHELL X` is `/bin/sh -c X`).
    pub command: Vec<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub start_period_ms: u64,
    pub retries: u32,
}

/// `[run] on_exit`: power the machine off, or restart it (a service).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExit {
    #[default]
    Poweroff,
    Restart,
}

impl OnExit {
    fn is_default(&self) -> bool {
        *self == OnExit::default()
    }
}

impl RunConfig {
    pub fn from_json(text: &[u8]) -> Result<Self, ConfigError> {
        let config: RunConfig = serde_json::from_slice(text).map_err(ConfigError::Json)?;
        for entry in &config.env {
            env_key(entry)?;
        }
        Ok(config)
    }

    /// Pretty JSON with a final newline, as the builder writes it.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("plain data serializes");
        text.push('\n');
        text
    }

    /// Sets `KEY=VALUE`, replacing an earlier value of `KEY` in place.
    pub fn set_env(&mut self, entry: &str) -> Result<(), ConfigError> {
        let key = env_key(entry)?;
        match self.env.iter_mut().find(|e| env_key(e).ok() == Some(key)) {
            Some(existing) => *existing = entry.to_string(),
            None => self.env.push(entry.to_string()),
        }
        Ok(())
    }

    /// The value of `key`, if set.
    pub fn env_value(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find_map(|e| e.strip_prefix(key)?.strip_prefix('='))
    }

    pub fn apply(&mut self, overrides: &Overrides) -> Result<(), ConfigError> {
        match (&overrides.entrypoint, &overrides.command) {
            // `--entrypoint` replaces the image's, and its CMD with it.
            (Some(entrypoint), args) => {
                self.entrypoint.clone_from(entrypoint);
                self.command = entrypoint.clone();
                self.command.extend(args.iter().flatten().cloned());
            }
            (None, Some(args)) => {
                self.command = self.entrypoint.clone();
                self.command.extend(args.iter().cloned());
            }
            (None, None) => {}
        }
        for entry in &overrides.env {
            self.set_env(entry)?;
        }
        if overrides.hostname.is_some() {
            self.hostname.clone_from(&overrides.hostname);
        }
        if overrides.user.is_some() {
            self.user.clone_from(&overrides.user);
        }
        for g in &overrides.groups {
            if !self.groups.contains(g) {
                self.groups.push(g.clone());
            }
        }
        if overrides.workdir.is_some() {
            self.workdir.clone_from(&overrides.workdir);
        }
        if overrides.stop_signal.is_some() {
            self.stop_signal = overrides.stop_signal;
        }
        Ok(())
    }
}

fn env_key(entry: &str) -> Result<&str, ConfigError> {
    match entry.split_once('=') {
        Some((key, _)) if !key.is_empty() => Ok(key),
        _ => Err(ConfigError::BadEnv(entry.to_string())),
    }
}

/// What `husk run` changes for one boot: `-- ARGS...`, `--entrypoint`,
/// `-e K=V`, `--hostname`, `-u`, `-w`, `--stop-signal`, `--ulimit`,
/// `--sysctl`, `--shm-size`, `--cap-add`/`--cap-drop`, `--security-opt
/// no-new-privileges` and `--hold`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// `-- ARGS`: after the entrypoint, in place of the image's CMD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// `--entrypoint`: in place of the image's ENTRYPOINT (and its CMD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Set everything up, then wait for the command to come through the
    /// guest agent (`StartMain`) rather than start the image's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hold: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `-u`: the user the command runs as, as [`RunConfig::user`] takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `--group-add`: added to [`RunConfig::groups`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// `-w`: the command's working directory, made when missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// `--stop-signal`, as [`RunConfig::stop_signal`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<i32>,
    /// `--ulimit`: resource limits init takes before it starts anything,
    /// so that the command and every process started later (`husk exec`,
    /// health checks) has them; in place of [`DEFAULT_RLIMITS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<agent::Rlimit>,
    /// `--sysctl`: `KEY=VALUE` kernel parameters set before the network
    /// and the command (the guest's kernel is the VM's own: any key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sysctls: Vec<String>,
    /// `--shm-size`: `/dev/shm`'s size in bytes (else tmpfs's default,
    /// half the guest's memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<u64>,
    /// `--cap-drop` (and `--cap-add` after it): the capabilities, bit N
    /// for capability N, that init keeps in its bounding set, so that no
    /// program it starts from then on (the command, `husk exec`'s, health
    /// checks) gains others, root included; every one when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<u64>,
    /// `--security-opt no-new-privileges`: set on init, so every program
    /// it starts has it (no set-user-ID, no file capabilities gained).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_new_privileges: bool,
}

/// The resource limits every process init starts has unless `--ulimit`
/// says otherwise: docker's for open files (a soft limit of 1024, which
/// programs that loop over every descriptor need, and a hard one of
/// 524288 a program may raise its own to), in place of the kernel's hard
/// 4096.
pub const DEFAULT_RLIMITS: [agent::Rlimit; 1] = [agent::Rlimit {
    resource: libc::RLIMIT_NOFILE,
    soft: 1024,
    hard: 524288,
}];

/// Where `/proc/sys` has sysctl `key` (`net.core.somaxconn`, or with `/`
/// for a part that holds dots, as `net/ipv4/conf/eth0.1/forwarding`).
pub fn sysctl_path(key: &str) -> Result<String, ConfigError> {
    let bad = || ConfigError::BadSysctl(key.to_string());
    let path = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    let valid = |part: &str| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    };
    if !path.split('/').all(valid) {
        return Err(bad());
    }
    Ok(format!("/proc/sys/{path}"))
}

impl Overrides {
    pub fn is_empty(&self) -> bool {
        *self == Overrides::default()
    }

    /// The kernel command-line parameter: hex keeps spaces, quotes and
    /// any byte out of the kernel's own parsing.
    pub fn to_param(&self) -> String {
        hex_param(CMDLINE_KEY, self)
    }

    /// The overrides on a kernel command line, if any (the last one wins).
    pub fn from_cmdline(cmdline: &str) -> Result<Option<Self>, ConfigError> {
        let Some(overrides) = from_hex_param::<Overrides>(cmdline, CMDLINE_KEY)? else {
            return Ok(None);
        };
        for entry in &overrides.env {
            env_key(entry)?;
        }
        for entry in &overrides.sysctls {
            let (key, _) = entry
                .split_once('=')
                .ok_or_else(|| ConfigError::BadSysctl(entry.clone()))?;
            sysctl_path(key)?;
        }
        Ok(Some(overrides))
    }
}

/// `KEY=<hex of JSON>`.
fn hex_param<T: Serialize>(key: &str, value: &T) -> String {
    let json = serde_json::to_vec(value).expect("plain data serializes");
    format!("{key}={}", ::agent::hex::encode(&json))
}

/// The last `KEY=<hex of JSON>` on a kernel command line, decoded.
fn from_hex_param<T: serde::de::DeserializeOwned>(
    cmdline: &str,
    key: &str,
) -> Result<Option<T>, ConfigError> {
    let prefix = format!("{key}=");
    let Some(hex) = cmdline
        .split_ascii_whitespace()
        .filter_map(|word| word.strip_prefix(&prefix))
        .next_back()
    else {
        return Ok(None);
    };
    let bad = || ConfigError::BadParam(key.to_string());
    let bytes = ::agent::hex::decode(hex).ok_or_else(bad)?;
    serde_json::from_slice(&bytes).map(Some).map_err(|_| bad())
}

/// The kernel command-line parameter carrying [`NetSetup`].
pub const NET_CMDLINE_KEY: &str = "husk.net";

/// How init sets up the guest's network before the command starts: each
/// interface's address, route and MTU, and the resolver. `husk run` knows
/// these from the network it attached (passt's, or the appliance file's).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSetup {
    pub interfaces: Vec<InterfaceSetup>,
    /// Name servers for `/etc/resolv.conf`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<IpAddr>,
    /// Its `search` domains and `options` (`--dns-search`, `--dns-option`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// Names `/etc/hosts` gives beside its own (`--add-host`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostEntry>,
}

/// One `/etc/hosts` line: an address and a name for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    pub name: String,
    pub address: IpAddr,
}

/// Whether `text` is one word a resolver file can hold: printable, no
/// blank, no `#` (a comment there).
pub fn is_resolver_word(text: &str) -> bool {
    !text.is_empty() && text.len() <= 253 && text.bytes().all(|b| b.is_ascii_graphic() && b != b'#')
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceSetup {
    /// `eth0`, `eth1`, ... in the order the interfaces were attached.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    #[serde(default)]
    pub prefix: u8,
    /// The default route goes through it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Set as the interface's address before it goes up: a VM restored
    /// from a snapshot kept the MAC of the run that took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<[u8; 6]>,
    /// An IPv6 address and its prefix length, beside or instead of the
    /// IPv4 one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<(Ipv6Addr, u8)>,
    /// The IPv6 default route goes through it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    /// The husk network (`husk network create`) this interface is on: its
    /// hub sends the members' names for `/etc/hosts` on it
    /// ([`NetworkHosts`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

/// The EtherType of the frames a husk network's hub and a guest's init
/// exchange on the network's interface (IEEE's local experimental
/// EtherType 1). A guest's frame of this type asks the hub for the names;
/// the hub never passes one on to another member.
pub const NETWORK_ETHERTYPE: u16 = 0x88b5;

/// What a husk network's hub sends each member whenever one joins or
/// leaves, and when asked: every member's address and names, which init
/// puts in `/etc/hosts` after its own lines.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NetworkHosts {
    pub hosts: Vec<NetworkHost>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkHost {
    pub address: Ipv4Addr,
    /// Its IPv6 address, on a network with IPv6 (`network create --ipv6`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<Ipv6Addr>,
    pub names: Vec<String>,
}

impl NetworkHosts {
    /// The `/etc/hosts` lines: an address and its names, each name a
    /// resolver word (what is not is left out).
    pub fn lines(&self) -> String {
        self.hosts
            .iter()
            .filter_map(|h| {
                let names: Vec<&str> = h
                    .names
                    .iter()
                    .map(String::as_str)
                    .filter(|n| is_resolver_word(n))
                    .collect();
                if names.is_empty() {
                    return None;
                }
                let names = names.join(" ");
                let mut lines = format!("{}\t{names}\n", h.address);
                if let Some(v6) = h.address6 {
                    lines.push_str(&format!("{v6}\t{names}\n"));
                }
                Some(lines)
            })
            .collect()
    }
}

impl NetSetup {
    pub fn to_param(&self) -> String {
        hex_param(NET_CMDLINE_KEY, self)
    }

    /// Nothing to set up: no interface, and nothing for the resolver files.
    pub fn is_empty(&self) -> bool {
        self.interfaces.is_empty()
            && self.dns.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
            && self.hosts.is_empty()
    }

    pub fn from_cmdline(cmdline: &str) -> Result<Option<Self>, ConfigError> {
        let setup = from_hex_param::<NetSetup>(cmdline, NET_CMDLINE_KEY)?;
        if let Some(s) = &setup {
            let words = s.search.iter().chain(&s.options);
            if let Some(w) = words
                .chain(s.hosts.iter().map(|h| &h.name))
                .find(|w| !is_resolver_word(w))
            {
                return Err(ConfigError::BadParam(format!(
                    "{NET_CMDLINE_KEY} ({w:?} is not one word of printable characters)"
                )));
            }
            if let Some(i) = s.interfaces.iter().find(|i| i.prefix > 32) {
                return Err(ConfigError::BadParam(format!(
                    "{NET_CMDLINE_KEY} (prefix /{} of {})",
                    i.prefix, i.name
                )));
            }
            if let Some((i, (_, prefix))) = s
                .interfaces
                .iter()
                .find_map(|i| i.address6.filter(|a| a.1 > 128).map(|a| (i, a)))
            {
                return Err(ConfigError::BadParam(format!(
                    "{NET_CMDLINE_KEY} (IPv6 prefix /{prefix} of {})",
                    i.name
                )));
            }
        }
        Ok(setup)
    }
}

/// The kernel command-line parameter carrying [`FsSetup`].
pub const FS_CMDLINE_KEY: &str = "husk.fs";

/// The shared folders init mounts before the command starts, each a
/// virtio-fs device known by its tag. A mount at `/` is the root itself:
/// the image is then only an initramfs that brings init to it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsSetup {
    pub mounts: Vec<ShareMount>,
    /// Single host files, all served by one virtio-fs device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FileShare>,
    /// `--tmpfs`: memory filesystems, mounted last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<TmpfsMount>,
}

/// A tmpfs at `path` (absolute), with mount options as `mount -o` takes
/// them (`size=64m,mode=1777,exec`); `nosuid`, `nodev` and `noexec` unless
/// they say otherwise, as docker's `--tmpfs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TmpfsMount {
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub options: String,
}

/// The mount flags tmpfs options may name, and whether each sets (`true`)
/// or clears its flag.
pub const TMPFS_FLAGS: [(&str, libc::c_ulong, bool); 14] = [
    ("ro", libc::MS_RDONLY, true),
    ("rw", libc::MS_RDONLY, false),
    ("nosuid", libc::MS_NOSUID, true),
    ("suid", libc::MS_NOSUID, false),
    ("nodev", libc::MS_NODEV, true),
    ("dev", libc::MS_NODEV, false),
    ("noexec", libc::MS_NOEXEC, true),
    ("exec", libc::MS_NOEXEC, false),
    ("sync", libc::MS_SYNCHRONOUS, true),
    ("async", libc::MS_SYNCHRONOUS, false),
    ("noatime", libc::MS_NOATIME, true),
    ("atime", libc::MS_NOATIME, false),
    ("nodiratime", libc::MS_NODIRATIME, true),
    ("diratime", libc::MS_NODIRATIME, false),
];

/// The tmpfs data options `--tmpfs` takes, as `KEY=VALUE`.
pub const TMPFS_DATA: [&str; 7] = [
    "size",
    "mode",
    "uid",
    "gid",
    "nr_inodes",
    "nr_blocks",
    "huge",
];

impl TmpfsMount {
    /// The mount flags and the data string of its options; `Err` names an
    /// option tmpfs does not take.
    pub fn flags_and_data(&self) -> Result<(libc::c_ulong, String), String> {
        let mut flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        let mut data = Vec::new();
        for option in self.options.split(',').filter(|o| !o.is_empty()) {
            if let Some((_, bit, set)) = TMPFS_FLAGS.iter().find(|(n, ..)| *n == option) {
                if *set {
                    flags |= bit;
                } else {
                    flags &= !bit;
                }
                continue;
            }
            let key = option.split_once('=').map_or("", |(k, _)| k);
            let printable = option.bytes().all(|b| b.is_ascii_graphic());
            if !TMPFS_DATA.contains(&key) || !printable {
                return Err(format!("{option:?} is not a tmpfs option"));
            }
            data.push(option);
        }
        Ok((flags, data.join(",")))
    }
}

/// The virtio-fs device that serves single host files: its file `name`
/// is seen at `path`, mounted after the shared folders (so a file may go
/// into one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileShare {
    pub tag: String,
    pub files: Vec<SharedFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedFile {
    /// Its name in the share's root.
    pub name: String,
    /// An absolute path in the guest.
    pub path: String,
    #[serde(default)]
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareMount {
    pub tag: String,
    /// An absolute path in the guest.
    pub path: String,
    #[serde(default)]
    pub readonly: bool,
    /// A volume: when the share is empty, init first fills it with what
    /// the image holds at `path` (see [`crate::populate`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub populate: bool,
}

impl FsSetup {
    pub fn to_param(&self) -> String {
        hex_param(FS_CMDLINE_KEY, self)
    }

    pub fn from_cmdline(cmdline: &str) -> Result<Option<Self>, ConfigError> {
        let setup = from_hex_param::<FsSetup>(cmdline, FS_CMDLINE_KEY)?;
        if let Some(s) = &setup {
            let files = s.files.iter().flat_map(|f| &f.files);
            let paths = s.mounts.iter().map(|m| &m.path);
            if let Some(p) = paths
                .chain(files.clone().map(|f| &f.path))
                .find(|p| !p.starts_with('/'))
            {
                return Err(ConfigError::BadParam(format!(
                    "{FS_CMDLINE_KEY} (mount path {p:?} is not absolute)"
                )));
            }
            if let Some(t) = s.tmpfs.iter().find(|t| !t.path.starts_with('/')) {
                return Err(ConfigError::BadParam(format!(
                    "{FS_CMDLINE_KEY} (tmpfs path {:?} is not absolute)",
                    t.path
                )));
            }
            if let Some(e) = s.tmpfs.iter().find_map(|t| t.flags_and_data().err()) {
                return Err(ConfigError::BadParam(format!("{FS_CMDLINE_KEY} ({e})")));
            }
            if let Some(f) = files.clone().find(|f| {
                f.name.is_empty() || f.name.contains('/') || f.name == "." || f.name == ".."
            }) {
                return Err(ConfigError::BadParam(format!(
                    "{FS_CMDLINE_KEY} (shared file name {:?} is not one name)",
                    f.name
                )));
            }
        }
        Ok(setup)
    }

    /// Nothing to mount.
    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty() && self.files.is_none() && self.tmpfs.is_empty()
    }

    /// The share that is the root, if the root is a host folder.
    pub fn root(&self) -> Option<&ShareMount> {
        self.mounts.iter().find(|m| m.path == "/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RunConfig {
        RunConfig {
            command: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            entrypoint: vec![],
            env: vec!["PATH=/bin".into(), "A=1".into()],
            workdir: Some("/data".into()),
            user: Some("user:user".into()),
            groups: vec!["audio".into()],
            hostname: Some("box".into()),
            on_exit: OnExit::Restart,
            stop_signal: Some(3),
            exposed_ports: vec!["80/tcp".into()],
            volumes: vec!["/var/lib/db".into()],
            labels: [("org.opencontainers.image.title".into(), "db".into())].into(),
            healthcheck: Some(ImageHealthcheck {
                command: vec!["true".into()],
                interval_ms: 1000,
                timeout_ms: 1000,
                start_period_ms: 0,
                retries: 3,
            }),
        }
    }

    #[test]
    fn json_round_trips() {
        let c = config();
        assert_eq!(RunConfig::from_json(c.to_json().as_bytes()).unwrap(), c);
        // The default is left out, so images built before on_exit keep
        // their digest.
        let plain = RunConfig {
            on_exit: OnExit::Poweroff,
            stop_signal: None,
            ..config()
        };
        assert!(!plain.to_json().contains("on_exit"));
        assert!(!plain.to_json().contains("stop_signal"));
        assert!(c.to_json().contains(r#""on_exit": "restart""#));
    }

    #[test]
    fn json_refuses_unknown_fields_and_bad_env() {
        assert!(RunConfig::from_json(br#"{"command":[],"cmd":[]}"#).is_err());
        let err = RunConfig::from_json(br#"{"command":["x"],"env":["NOVALUE"]}"#).unwrap_err();
        assert!(matches!(err, ConfigError::BadEnv(e) if e == "NOVALUE"));
    }

    #[test]
    fn overrides_survive_the_kernel_command_line() {
        let o = Overrides {
            command: Some(vec!["echo".into(), "two words".into(), "\"q\" ' =".into()]),
            entrypoint: Some(vec![]),
            env: vec!["A=x y".into()],
            hold: true,
            hostname: Some("web-1".into()),
            user: Some("1000:1000".into()),
            groups: vec!["video".into(), "4242".into()],
            workdir: Some("/srv/app".into()),
            stop_signal: Some(2),
            ulimits: vec![agent::Rlimit {
                resource: 7,
                soft: 10,
                hard: u64::MAX,
            }],
            sysctls: vec!["net.ipv4.ping_group_range=0 0".into()],
            shm_size: Some(1 << 30),
            capabilities: Some(1 << 10),
            no_new_privileges: true,
        };
        let cmdline = format!("console=hvc0 {} panic=-1", o.to_param());
        assert!(!o.to_param().contains(' '));
        assert_eq!(Overrides::from_cmdline(&cmdline).unwrap(), Some(o));
        assert_eq!(Overrides::from_cmdline("console=hvc0").unwrap(), None);
        // A sysctl that climbs out of /proc/sys is refused, whoever wrote it.
        let climbing = Overrides {
            sysctls: vec!["../../etc/passwd=x".into()],
            ..Overrides::default()
        };
        let err = Overrides::from_cmdline(&climbing.to_param()).unwrap_err();
        assert!(matches!(err, ConfigError::BadSysctl(_)), "{err}");
    }

    #[test]
    fn sysctl_keys_are_paths_under_proc_sys() {
        assert_eq!(
            sysctl_path("net.core.somaxconn").unwrap(),
            "/proc/sys/net/core/somaxconn"
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.1/forwarding").unwrap(),
            "/proc/sys/net/ipv4/conf/eth0.1/forwarding"
        );
        for bad in ["", "net..core", "../x", "net/../x", "a b", ".x", "x/"] {
            assert!(sysctl_path(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn overrides_replace_only_what_they_name() {
        let mut c = config();
        c.apply(&Overrides {
            env: vec!["A=2".into(), "B=3".into()],
            user: Some("nobody".into()),
            groups: vec!["audio".into(), "4242".into()],
            workdir: Some("/tmp".into()),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(c.env, ["PATH=/bin", "A=2", "B=3"]);
        assert_eq!(c.groups, ["audio", "4242"], "added to the image's, once");
        assert_eq!(c.user.as_deref(), Some("nobody"));
        assert_eq!(c.workdir.as_deref(), Some("/tmp"));
        assert_eq!(c.command, config().command);
        assert_eq!(c.hostname, config().hostname);
        assert_eq!(
            c.stop_signal,
            Some(3),
            "the image's, as no override names one"
        );
        c.apply(&Overrides {
            stop_signal: Some(2),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(c.stop_signal, Some(2));
        assert!(Overrides::default().is_empty());
        let only_user = Overrides {
            user: Some("0".into()),
            ..Overrides::default()
        };
        assert!(!only_user.is_empty());
    }

    #[test]
    fn bad_overrides_are_refused() {
        for bad in ["husk.run=abc", "husk.run=zz", "husk.run=7b7d00"] {
            assert!(Overrides::from_cmdline(bad).is_err(), "{bad}");
        }
        let not_kv = Overrides {
            env: vec!["NOEQUALS".into()],
            ..Overrides::default()
        };
        assert!(Overrides::from_cmdline(&not_kv.to_param()).is_err());
    }

    #[test]
    fn network_setup_survives_the_kernel_command_line() {
        let net = NetSetup {
            interfaces: vec![InterfaceSetup {
                name: "eth0".into(),
                address: Some(Ipv4Addr::new(192, 0, 2, 2)),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(192, 0, 2, 1)),
                mtu: Some(1500),
                mac: Some([2, 0, 0, 0, 0, 9]),
                address6: Some(("2001:db8::2".parse().unwrap(), 64)),
                gateway6: Some("fe80::1".parse().unwrap()),
                network: Some("backend".into()),
            }],
            dns: vec![
                Ipv4Addr::new(192, 0, 2, 1).into(),
                "2001:db8::53".parse().unwrap(),
            ],
            search: vec!["example.test".into()],
            options: vec!["ndots:2".into()],
            hosts: vec![HostEntry {
                name: "db.local".into(),
                address: Ipv4Addr::new(192, 0, 2, 9).into(),
            }],
        };
        let cmdline = format!("{} {}", Overrides::default().to_param(), net.to_param());
        assert_eq!(NetSetup::from_cmdline(&cmdline).unwrap(), Some(net.clone()));
        let mut bad = net;
        bad.interfaces[0].prefix = 33;
        assert!(NetSetup::from_cmdline(&bad.to_param()).is_err());
        bad.interfaces[0].prefix = 24;
        bad.interfaces[0].address6 = Some(("2001:db8::2".parse().unwrap(), 129));
        assert!(NetSetup::from_cmdline(&bad.to_param()).is_err());
        assert!(NetSetup::from_cmdline("husk.net=7b").is_err());
        for word in ["two words", "a\nnameserver 1.2.3.4", "", "#x"] {
            let mut bad = NetSetup::default();
            bad.search.push(word.into());
            assert!(NetSetup::from_cmdline(&bad.to_param()).is_err(), "{word:?}");
        }
    }

    #[test]
    fn a_network_s_names_become_hosts_lines_without_what_a_line_cannot_hold() {
        let hosts = NetworkHosts {
            hosts: vec![
                NetworkHost {
                    address: Ipv4Addr::new(10, 89, 0, 2),
                    address6: None,
                    names: vec!["db".into(), "two words".into(), "postgres".into()],
                },
                NetworkHost {
                    address: Ipv4Addr::new(10, 89, 0, 3),
                    address6: Some("fd00::3".parse().unwrap()),
                    names: vec!["#x".into()],
                },
                NetworkHost {
                    address: Ipv4Addr::new(10, 89, 0, 4),
                    address6: Some("fd00::4".parse().unwrap()),
                    names: vec!["web".into()],
                },
            ],
        };
        assert_eq!(
            hosts.lines(),
            "10.89.0.2\tdb postgres\n10.89.0.4\tweb\nfd00::4\tweb\n"
        );
    }

    #[test]
    fn shares_survive_the_kernel_command_line() {
        let setup = FsSetup {
            mounts: vec![
                ShareMount {
                    tag: "husk-root".into(),
                    path: "/".into(),
                    readonly: false,
                    populate: false,
                },
                ShareMount {
                    tag: "husk-fs1".into(),
                    path: "/srv/my data".into(),
                    readonly: true,
                    populate: false,
                },
                ShareMount {
                    tag: "husk-fs2".into(),
                    path: "/var/lib/db".into(),
                    readonly: false,
                    populate: true,
                },
            ],
            files: Some(FileShare {
                tag: "husk-files".into(),
                files: vec![SharedFile {
                    name: "0".into(),
                    path: "/etc/resolv.conf".into(),
                    readonly: true,
                }],
            }),
            tmpfs: vec![TmpfsMount {
                path: "/var/cache/app".into(),
                options: "size=16m,exec".into(),
            }],
        };
        let cmdline = format!("quiet {} rdinit=/.husk/init", setup.to_param());
        let back = FsSetup::from_cmdline(&cmdline).unwrap().unwrap();
        assert_eq!(back, setup);
        assert_eq!(back.root().unwrap().tag, "husk-root");
        assert_eq!(FsSetup::from_cmdline("quiet").unwrap(), None);
        let relative = FsSetup {
            mounts: vec![ShareMount {
                tag: "t".into(),
                path: "data".into(),
                readonly: false,
                populate: false,
            }],
            ..FsSetup::default()
        };
        assert!(FsSetup::from_cmdline(&relative.to_param()).is_err());
        for (name, path) in [
            ("0", "etc/hosts"),
            ("../0", "/etc/hosts"),
            ("", "/etc/hosts"),
        ] {
            let bad = FsSetup {
                mounts: vec![],
                files: Some(FileShare {
                    tag: "husk-files".into(),
                    files: vec![SharedFile {
                        name: name.into(),
                        path: path.into(),
                        readonly: false,
                    }],
                }),
                ..FsSetup::default()
            };
            assert!(
                FsSetup::from_cmdline(&bad.to_param()).is_err(),
                "{name} at {path} was accepted"
            );
        }
    }

    #[test]
    fn arguments_follow_the_entrypoint_which_entrypoint_replaces() {
        let image = || RunConfig {
            command: vec!["/usr/bin/curl".into(), "--help".into()],
            entrypoint: vec!["/usr/bin/curl".into()],
            ..RunConfig::default()
        };
        let with = |o: Overrides| {
            let mut c = image();
            c.apply(&o).unwrap();
            c.command
        };
        let args = Some(vec!["-s".to_string(), "http://x/".to_string()]);
        assert_eq!(
            with(Overrides {
                command: args.clone(),
                ..Overrides::default()
            }),
            ["/usr/bin/curl", "-s", "http://x/"]
        );
        assert_eq!(
            with(Overrides {
                command: args.clone(),
                entrypoint: Some(vec!["/bin/sh".into()]),
                ..Overrides::default()
            }),
            ["/bin/sh", "-s", "http://x/"]
        );
        assert_eq!(
            with(Overrides {
                entrypoint: Some(vec!["/bin/true".into()]),
                ..Overrides::default()
            }),
            ["/bin/true"],
            "the image's CMD goes with its ENTRYPOINT"
        );
        assert_eq!(with(Overrides::default()), ["/usr/bin/curl", "--help"]);
        let back = RunConfig::from_json(image().to_json().as_bytes()).unwrap();
        assert_eq!(back.entrypoint, ["/usr/bin/curl"]);
    }

    #[test]
    fn tmpfs_options_are_flags_or_data_and_nothing_else() {
        let t = |options: &str| {
            TmpfsMount {
                path: "/scratch".into(),
                options: options.into(),
            }
            .flags_and_data()
        };
        let (flags, data) = t("").unwrap();
        assert_eq!(flags, libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC);
        assert_eq!(data, "");
        let (flags, data) = t("exec,ro,size=64m,mode=1777").unwrap();
        assert_eq!(flags, libc::MS_NOSUID | libc::MS_NODEV | libc::MS_RDONLY);
        assert_eq!(data, "size=64m,mode=1777");
        for bad in ["bind", "size", "context=x", "size=1m x"] {
            assert!(t(bad).is_err(), "{bad}");
        }
        let mut setup = FsSetup::default();
        assert!(setup.is_empty());
        setup.tmpfs.push(TmpfsMount {
            path: "rel".into(),
            options: String::new(),
        });
        assert!(!setup.is_empty());
        assert!(FsSetup::from_cmdline(&setup.to_param()).is_err());
    }

    #[test]
    fn overrides_replace_command_and_env_in_place() {
        let mut c = config();
        c.apply(&Overrides {
            command: Some(vec!["true".into()]),
            env: vec!["PATH=/usr/bin".into(), "B=2".into()],
            hostname: Some("other".into()),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(c.command, ["true"]);
        assert_eq!(c.hostname.as_deref(), Some("other"));
        assert_eq!(c.env, ["PATH=/usr/bin", "A=1", "B=2"]);
        assert_eq!(c.env_value("PATH"), Some("/usr/bin"));
        assert_eq!(c.env_value("PAT"), None);
    }
}
