//! Small value types that check their own syntax while being deserialized,
//! so a malformed value is reported at its own line and column.

use std::fmt;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer};

/// Implements `Deserialize` for a type through its `FromStr`, whose error
/// text becomes the message shown to the user.
macro_rules! deserialize_from_str {
    ($ty:ty, $what:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl de::Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: de::Error>(self, s: &str) -> Result<$ty, E> {
                        s.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

/// A size in bytes, written as `"128MiB"`, `"1G"`, `"512K"` or `"4096"`.
/// K/M/G/T and KiB/MiB/GiB/TiB are all binary multiples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const KIB: u64 = 1 << 10;
    pub const MIB: u64 = 1 << 20;
    pub const GIB: u64 = 1 << 30;

    pub const fn mib(n: u64) -> Self {
        ByteSize(n * Self::MIB)
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a size; write e.g. \"128MiB\"");
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        if digits.is_empty() {
            return Err(bad());
        }
        let shift = match unit.trim() {
            "" | "B" => 0,
            "K" | "KiB" => 10,
            "M" | "MiB" => 20,
            "G" | "GiB" => 30,
            "T" | "TiB" => 40,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        n.checked_mul(1 << shift)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let n = self.0;
        for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if n != 0 && n.is_multiple_of(1u64 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}B")
    }
}

deserialize_from_str!(ByteSize, "a size such as \"128MiB\"");

/// Size of a built root filesystem image: fitted to its content, or fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageSize {
    #[default]
    Auto,
    Fixed(ByteSize),
}

impl FromStr for ImageSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(ImageSize::Auto);
        }
        s.parse().map(ImageSize::Fixed).map_err(|_| {
            format!("{s:?} is not an image size; write \"auto\" or a size such as \"256MiB\"")
        })
    }
}

deserialize_from_str!(ImageSize, "\"auto\" or a size such as \"256MiB\"");

/// A file mode written as an octal string, e.g. `"0755"` or `"644"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        match u32::from_str_radix(digits, 8) {
            Ok(m) if !digits.is_empty() && m <= 0o7777 => Ok(Mode(m)),
            _ => Err(format!(
                "{s:?} is not a file mode; write an octal string such as \"0644\""
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Mode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an octal string such as \"0644\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Mode, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Mode, E> {
                Err(E::custom(format!(
                    "{n} is a number; write the mode as an octal string such as \"0644\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// An absolute, normalised path inside the guest (no `..`, no `.`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestPath(PathBuf);

impl GuestPath {
    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl FromStr for GuestPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let p = Path::new(s);
        if !p.is_absolute() {
            return Err(format!(
                "{s:?} is not an absolute path; write e.g. \"/{}\"",
                s.trim_start_matches("./")
            ));
        }
        if s.contains('\0') {
            return Err(format!("{s:?} contains a NUL byte"));
        }
        let mut out = PathBuf::from("/");
        for c in p.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(n) => out.push(n),
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(format!("{s:?} contains \"..\"; write the path without it"));
                }
            }
        }
        Ok(GuestPath(out))
    }
}

impl fmt::Display for GuestPath {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.display().fmt(f)
    }
}

deserialize_from_str!(GuestPath, "an absolute path such as \"/etc/hosts\"");

/// Where the root filesystem starts from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Source {
    /// An empty filesystem: only what the appliance file adds.
    #[default]
    Scratch,
    /// `oci-archive:PATH`: a tar of an OCI image layout (`skopeo copy ... oci-archive:`).
    OciArchive(PathBuf),
    /// `docker-archive:PATH`: a `docker save` tarball.
    DockerArchive(PathBuf),
    /// `oci:DIR[:TAG]`: an OCI image layout directory.
    OciLayout { dir: PathBuf, tag: Option<String> },
    /// `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`: a registry reference.
    Registry(String),
    /// `dir:PATH`: a host folder the guest boots from as it is (through
    /// virtio-fs), its writes landing in the folder; nothing is copied.
    Dir(PathBuf),
}

impl Source {
    /// The host path this source reads, if it reads one.
    pub fn host_path(&self) -> Option<&Path> {
        match self {
            Source::OciArchive(p) | Source::DockerArchive(p) | Source::Dir(p) => Some(p),
            Source::OciLayout { dir, .. } => Some(dir),
            Source::Scratch | Source::Registry(_) => None,
        }
    }

    /// The host folder a `dir:` root boots from.
    pub fn folder(&self) -> Option<&Path> {
        match self {
            Source::Dir(p) => Some(p),
            _ => None,
        }
    }

    pub(crate) fn host_path_mut(&mut self) -> Option<&mut PathBuf> {
        match self {
            Source::OciArchive(p) | Source::DockerArchive(p) | Source::Dir(p) => Some(p),
            Source::OciLayout { dir, .. } => Some(dir),
            Source::Scratch | Source::Registry(_) => None,
        }
    }
}

impl FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let nonempty = |rest: &str, form: &str| {
            if rest.is_empty() {
                Err(format!("{s:?} names no path; write {form}"))
            } else {
                Ok(PathBuf::from(rest))
            }
        };
        if s == "scratch" {
            Ok(Source::Scratch)
        } else if let Some(rest) = s.strip_prefix("oci-archive:") {
            nonempty(rest, "\"oci-archive:image.tar\"").map(Source::OciArchive)
        } else if let Some(rest) = s.strip_prefix("docker-archive:") {
            nonempty(rest, "\"docker-archive:image.tar\"").map(Source::DockerArchive)
        } else if let Some(rest) = s.strip_prefix("dir:") {
            nonempty(rest, "\"dir:PATH\"").map(Source::Dir)
        } else if let Some(rest) = s.strip_prefix("docker://") {
            registry_reference(rest).map(Source::Registry).ok_or_else(|| {
                format!(
                    "{s:?} is not a registry reference; write \"docker://[HOST[:PORT]/]REPO[:TAG]\" \
                     (\"docker://busybox\" is docker.io/library/busybox:latest)"
                )
            })
        } else if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((dir, tag)) if !tag.contains('/') => (dir, Some(tag.to_string())),
                _ => (rest, None),
            };
            let dir = nonempty(dir, "\"oci:DIR\" or \"oci:DIR:TAG\"")?;
            Ok(Source::OciLayout { dir, tag })
        } else {
            Err(format!(
                "{s:?} is not a rootfs source; write \"scratch\", \"oci:DIR[:TAG]\", \
                 \"oci-archive:PATH\", \"docker-archive:PATH\", \"docker://HOST/REPO[:TAG]\" \
                 or \"dir:PATH\""
            ))
        }
    }
}

deserialize_from_str!(Source, "a rootfs source such as \"scratch\"");

/// An image reference as docker and podman take one, in full: a first
/// part without a dot, a colon or `localhost` is a path on Docker Hub
/// (`busybox` is `docker.io/library/busybox`), and no tag or digest is
/// `:latest`. `None` for what is no reference (repository paths are
/// lowercase letters, digits and `._-` between slashes).
pub fn registry_reference(text: &str) -> Option<String> {
    let (name, digest) = match text.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (text, None),
    };
    let (host, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest)
        }
        _ => ("docker.io".to_string(), name),
    };
    let (path, tag) = match path.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') => (path, Some(tag)),
        _ => (path, None),
    };
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.as_bytes()[0].is_ascii_alphanumeric()
    };
    let tag_ok = tag.is_none_or(|t| {
        !t.is_empty()
            && t.len() <= 128
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    });
    let digest_ok = digest.is_none_or(|d| {
        d.split_once(':').is_some_and(|(algo, hex)| {
            !algo.is_empty() && !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())
        })
    });
    let host_ok = host
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'[')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if !(host_ok && tag_ok && digest_ok && path.split('/').all(component_ok)) {
        return None;
    }
    let path = if host == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_string()
    };
    let mut full = format!("{host}/{path}");
    match (tag, digest) {
        (Some(t), _) => full.push_str(&format!(":{t}")),
        (None, None) => full.push_str(":latest"),
        (None, Some(_)) => {}
    }
    if let Some(d) = digest {
        full.push_str(&format!("@{d}"));
    }
    Some(full)
}

/// `uid[:gid]` or `name[:group]` (names resolved in the image at build time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    pub user: IdOrName,
    pub group: Option<IdOrName>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdOrName {
    Id(u32),
    Name(String),
}

impl FromStr for IdOrName {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        if s.is_empty() {
            return Err(());
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse().map(IdOrName::Id).map_err(|_| ());
        }
        let valid = s.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase() || b == b'_' || (i > 0 && (b.is_ascii_digit() || b == b'-'))
        });
        if valid && s.len() <= 32 {
            Ok(IdOrName::Name(s.to_string()))
        } else {
            Err(())
        }
    }
}

impl FromStr for UserSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a user; write \"UID[:GID]\" or \"NAME[:GROUP]\"");
        let (user, group) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        Ok(UserSpec {
            user: user.parse().map_err(|_| bad())?,
            group: group.map(str::parse).transpose().map_err(|_| bad())?,
        })
    }
}

deserialize_from_str!(UserSpec, "a user such as \"1000:1000\" or \"nobody\"");

/// A unicast Ethernet MAC address, `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            *byte = parts
                .next()
                .filter(|p| p.len() == 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| {
                    format!("{s:?} is not a MAC address; write e.g. \"52:54:00:12:34:56\"")
                })?;
        }
        if parts.next().is_some() {
            return Err(format!(
                "{s:?} is not a MAC address; write e.g. \"52:54:00:12:34:56\""
            ));
        }
        if mac[0] & 1 != 0 {
            return Err(format!(
                "{s:?} is a multicast address; a NIC needs a unicast one (even first byte)"
            ));
        }
        Ok(MacAddr(mac))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

deserialize_from_str!(MacAddr, "a MAC address such as \"52:54:00:12:34:56\"");

/// An interface address with its prefix length, e.g. `172.16.0.2/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an address with prefix; write e.g. \"172.16.0.2/24\"");
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("{s:?}: prefix /{prefix} is longer than {max}"));
        }
        Ok(Cidr { addr, prefix })
    }
}

deserialize_from_str!(Cidr, "an address with prefix such as \"172.16.0.2/24\"");

/// A published port: `[HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp]` (an IPv6
/// host address in brackets), as `docker run -p` writes it; without a
/// host port (`GUEST_PORT`, `HOST_IP::GUEST_PORT`), a free one is chosen
/// when the VM starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    pub host_ip: Option<IpAddr>,
    /// 0: any free port, chosen at the start.
    pub host_port: u16,
    pub guest_port: u16,
    pub udp: bool,
}

/// The most ports one range publishes.
pub const MAX_PORT_RANGE: usize = 1024;

impl PortSpec {
    /// One published port or a range of them, as `docker run -p` takes
    /// it: `8000-8002:9000-9002` pairs the ranges' ports in order,
    /// `8000-8002` (or `IP::8000-8002`) gives each a free host port; `/tcp`
    /// or `/udp` after it applies to all.
    pub fn parse_many(s: &str) -> Result<Vec<PortSpec>, String> {
        let bad = || {
            format!(
                "{s:?} is not a published port; write HOST_PORT:GUEST_PORT, \
                 e.g. \"8080:80\", \"127.0.0.1:8080:80\", \"5353:53/udp\" or a range \
                 \"8000-8002:8000-8002\" (or GUEST_PORT alone for any free host port)"
            )
        };
        let (spec, udp) = match s.rsplit_once('/') {
            Some((spec, "tcp")) => (spec, false),
            Some((spec, "udp")) => (spec, true),
            Some(_) => return Err(bad()),
            None => (s, false),
        };
        let (host, guest) = spec.rsplit_once(':').unwrap_or(("", spec));
        let (host_ip, host_ports) = match host.rsplit_once(':') {
            Some((ip, port)) => {
                let ip = ip
                    .strip_prefix('[')
                    .and_then(|i| i.strip_suffix(']'))
                    .unwrap_or(ip);
                (Some(ip.parse::<IpAddr>().map_err(|_| bad())?), port)
            }
            None => (None, host),
        };
        let port = |p: &str| match p.parse::<u16>() {
            Ok(0) => Err(format!("{s:?}: port 0 cannot be published; use 1 to 65535")),
            Ok(n) => Ok(n),
            Err(_) => Err(bad()),
        };
        // `A` or `A-B`, as its first port and how many.
        let range = |p: &str| -> Result<(u16, usize), String> {
            match p.split_once('-') {
                None => Ok((port(p)?, 1)),
                Some((first, last)) => {
                    let (first, last) = (port(first)?, port(last)?);
                    if last < first {
                        return Err(format!("{s:?}: the range {first}-{last} runs backwards"));
                    }
                    let count = usize::from(last - first) + 1;
                    if count > MAX_PORT_RANGE {
                        return Err(format!(
                            "{s:?}: {count} ports in one range; at most {MAX_PORT_RANGE}"
                        ));
                    }
                    Ok((first, count))
                }
            }
        };
        let (guest_first, count) = range(guest)?;
        let host_first = match host_ports {
            "" => None,
            h => {
                let (first, host_count) = range(h)?;
                if host_count != count {
                    return Err(format!(
                        "{s:?}: {host_count} host port{} for {count} guest port{}; \
                         give as many of each",
                        if host_count == 1 { "" } else { "s" },
                        if count == 1 { "" } else { "s" }
                    ));
                }
                Some(first)
            }
        };
        Ok((0..count as u16)
            .map(|i| PortSpec {
                host_ip,
                host_port: host_first.map_or(0, |h| h + i),
                guest_port: guest_first + i,
                udp,
            })
            .collect())
    }

    /// A list of them as an appliance file writes it (`ports = [...]`),
    /// each entry one port or a range.
    pub fn deserialize_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PortSpec>, D::Error> {
        // Each entry read on its own, so that an error is placed at it.
        let entries: Vec<PortRange> = Deserialize::deserialize(d)?;
        Ok(entries.into_iter().flat_map(|r| r.0).collect())
    }
}

/// One entry of a `ports` list: a port or a range of them.
struct PortRange(Vec<PortSpec>);

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PortSpec::parse_many(s).map(PortRange)
    }
}

deserialize_from_str!(PortRange, "a published port such as \"8080:80\" or a range");

impl FromStr for PortSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match PortSpec::parse_many(s)?.as_slice() {
            [one] => Ok(*one),
            _ => Err(format!("{s:?}: one port here, not a range")),
        }
    }
}

deserialize_from_str!(PortSpec, "a published port such as \"8080:80\"");

/// A port the appliance listens on (`[run] expose`, a Dockerfile's
/// EXPOSE): `80`, `"80"`, `"80/tcp"` or `"53/udp"`. `husk run -P`
/// publishes each on a free host port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExposedPort {
    pub port: u16,
    pub udp: bool,
}

impl fmt::Display for ExposedPort {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", self.port, if self.udp { "udp" } else { "tcp" })
    }
}

impl FromStr for ExposedPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a port; write e.g. 80, \"80/tcp\" or \"53/udp\"");
        let (port, udp) = match s.split_once('/') {
            Some((p, "tcp")) => (p, false),
            Some((p, "udp")) => (p, true),
            Some(_) => return Err(bad()),
            None => (s, false),
        };
        match port.parse::<u16>() {
            Ok(0) | Err(_) => Err(bad()),
            Ok(port) => Ok(ExposedPort { port, udp }),
        }
    }
}

impl<'de> Deserialize<'de> for ExposedPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ExposedPort;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port such as 80 or \"53/udp\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ExposedPort, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<ExposedPort, E> {
                match u16::try_from(n) {
                    Ok(port) if port != 0 => Ok(ExposedPort { port, udp: false }),
                    _ => Err(E::custom(format!("{n} is not a port: give 1 to 65535"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A signal, by name (`SIGQUIT`, `QUIT`, any case; `SIGRTMIN+3`) or by
/// number, as a Dockerfile's STOPSIGNAL and `docker kill` take it; Linux's
/// numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal(pub i32);

/// Linux's signal names, from 1.
const SIGNAL_NAMES: [&str; 31] = [
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
    "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];
/// The real-time signals' range.
const SIGRTMIN: i32 = 34;
const SIGRTMAX: i32 = 64;

impl FromStr for Signal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let unknown = || {
            format!(
                "{s:?} is not a signal: write a name (TERM, SIGQUIT, SIGRTMIN+3) or a number \
                 from 1 to {SIGRTMAX}"
            )
        };
        if let Ok(n) = s.parse::<i32>() {
            return (1..=SIGRTMAX)
                .contains(&n)
                .then_some(Signal(n))
                .ok_or_else(unknown);
        }
        let upper = s.to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        if let Some(i) = SIGNAL_NAMES.iter().position(|n| *n == name) {
            return Ok(Signal(i as i32 + 1));
        }
        let offset = |rest: &str| -> Option<i32> {
            if rest.is_empty() {
                Some(0)
            } else {
                rest.parse().ok()
            }
        };
        let n = if let Some(rest) = name.strip_prefix("RTMIN") {
            rest.strip_prefix('+')
                .or(rest.is_empty().then_some(""))
                .and_then(offset)
                .map(|k| SIGRTMIN + k)
        } else if let Some(rest) = name.strip_prefix("RTMAX") {
            rest.strip_prefix('-')
                .or(rest.is_empty().then_some(""))
                .and_then(offset)
                .map(|k| SIGRTMAX - k)
        } else {
            None
        };
        n.filter(|n| (SIGRTMIN..=SIGRTMAX).contains(n))
            .map(Signal)
            .ok_or_else(unknown)
    }
}

impl fmt::Display for Signal {
    /// Its name as a Dockerfile's STOPSIGNAL writes it (`SIGQUIT`,
    /// `SIGRTMIN+3`); a number beyond Linux's signals as a number.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            n @ 1..=31 => write!(f, "SIG{}", SIGNAL_NAMES[n as usize - 1]),
            SIGRTMIN => f.write_str("SIGRTMIN"),
            n @ SIGRTMIN..=SIGRTMAX => write!(f, "SIGRTMIN+{}", n - SIGRTMIN),
            n => write!(f, "{n}"),
        }
    }
}

deserialize_from_str!(Signal, "a signal such as \"SIGQUIT\"");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!("128MiB".parse::<ByteSize>(), Ok(ByteSize(128 << 20)));
        assert_eq!("1G".parse::<ByteSize>(), Ok(ByteSize(1 << 30)));
        assert_eq!("512K".parse::<ByteSize>(), Ok(ByteSize(512 << 10)));
        assert_eq!("4096".parse::<ByteSize>(), Ok(ByteSize(4096)));
        assert!("12x".parse::<ByteSize>().is_err());
        assert!("MiB".parse::<ByteSize>().is_err());
        assert!("99999999999T".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(128 << 20).to_string(), "128MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }

    #[test]
    fn signals_are_named_as_they_are_read() {
        for name in [
            "SIGQUIT",
            "SIGTERM",
            "SIGSYS",
            "SIGRTMIN",
            "SIGRTMIN+3",
            "SIGHUP",
        ] {
            assert_eq!(name.parse::<Signal>().unwrap().to_string(), name);
        }
        assert_eq!(Signal(64).to_string(), "SIGRTMIN+30");
        assert_eq!(Signal(99).to_string(), "99");
    }

    #[test]
    fn modes() {
        assert_eq!("0755".parse::<Mode>(), Ok(Mode(0o755)));
        assert_eq!("644".parse::<Mode>(), Ok(Mode(0o644)));
        assert!("0788".parse::<Mode>().is_err());
        assert!("17777".parse::<Mode>().is_err());
        assert!("".parse::<Mode>().is_err());
    }

    #[test]
    fn guest_paths_are_normalised() {
        let p: GuestPath = "/usr//bin/./x".parse().unwrap();
        assert_eq!(p.as_path(), Path::new("/usr/bin/x"));
        assert!("usr/bin".parse::<GuestPath>().is_err());
        assert!("/usr/../etc".parse::<GuestPath>().is_err());
    }

    #[test]
    fn sources() {
        assert_eq!("scratch".parse::<Source>(), Ok(Source::Scratch));
        assert_eq!(
            "oci:img:v1".parse::<Source>(),
            Ok(Source::OciLayout {
                dir: "img".into(),
                tag: Some("v1".into())
            })
        );
        assert_eq!(
            "oci:./a/b".parse::<Source>(),
            Ok(Source::OciLayout {
                dir: "./a/b".into(),
                tag: None
            })
        );
        assert_eq!(
            "docker://127.0.0.1:5000/busybox:1".parse::<Source>(),
            Ok(Source::Registry("127.0.0.1:5000/busybox:1".into()))
        );
        for (short, full) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("bitnami/redis:7", "docker.io/bitnami/redis:7"),
            ("quay.io/podman/hello", "quay.io/podman/hello:latest"),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/a/b:v1", "localhost:5000/a/b:v1"),
            (
                "alpine@sha256:0123abcd",
                "docker.io/library/alpine@sha256:0123abcd",
            ),
            ("ghcr.io/o/r:v2@sha256:ff", "ghcr.io/o/r:v2@sha256:ff"),
        ] {
            assert_eq!(
                format!("docker://{short}").parse::<Source>(),
                Ok(Source::Registry(full.into())),
                "{short}"
            );
            assert_eq!(
                registry_reference(full).as_deref(),
                Some(full),
                "{full} stays"
            );
        }
        for bad in [
            "",
            "Busybox",
            "a//b",
            "a b",
            "x:",
            "/abs",
            "./rel",
            "a@sha256",
            "-x",
            "examples/hello/",
        ] {
            assert_eq!(registry_reference(bad), None, "{bad:?}");
        }
        assert!("oci-archive:".parse::<Source>().is_err());
        assert!("ubuntu".parse::<Source>().is_err());
    }

    #[test]
    fn signals_by_name_and_number() {
        let sig = |s: &str| s.parse::<Signal>().map(|s| s.0);
        assert_eq!(sig("9"), Ok(9));
        assert_eq!(sig("KILL"), Ok(9));
        assert_eq!(sig("sigterm"), Ok(15));
        assert_eq!(sig("SIGQUIT"), Ok(3));
        assert_eq!(sig("SIGWINCH"), Ok(28));
        assert_eq!(sig("SIGRTMIN+3"), Ok(37));
        assert_eq!(sig("RTMIN"), Ok(34));
        assert_eq!(sig("SIGRTMAX-1"), Ok(63));
        for bad in [
            "0", "65", "-1", "SIGNOPE", "", "SIG", "RTMIN+31", "RTMIN-1", "RTMAX+1",
        ] {
            assert!(sig(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn published_ports() {
        let p: PortSpec = "8080:80".parse().unwrap();
        assert_eq!(
            (p.host_ip, p.host_port, p.guest_port, p.udp),
            (None, 8080, 80, false)
        );
        let p: PortSpec = "127.0.0.1:5353:53/udp".parse().unwrap();
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert!(p.udp);
        let p: PortSpec = "[::1]:8443:443/tcp".parse().unwrap();
        assert_eq!(p.host_ip, Some("::1".parse().unwrap()));
        // No host port: any free one.
        let p: PortSpec = "80".parse().unwrap();
        assert_eq!((p.host_ip, p.host_port, p.guest_port), (None, 0, 80));
        let p: PortSpec = "53/udp".parse().unwrap();
        assert_eq!((p.host_port, p.guest_port, p.udp), (0, 53, true));
        let p: PortSpec = "127.0.0.1::80".parse().unwrap();
        assert_eq!(
            (p.host_ip, p.host_port),
            (Some("127.0.0.1".parse().unwrap()), 0)
        );
        for bad in [
            "x:80",
            "80/",
            "8080:80/sctp",
            "0:80",
            "70000:80",
            "nothost:1:2",
            "",
        ] {
            assert!(bad.parse::<PortSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn published_port_ranges() {
        let pairs = |s: &str| -> Vec<(u16, u16, bool)> {
            PortSpec::parse_many(s)
                .unwrap()
                .iter()
                .map(|p| (p.host_port, p.guest_port, p.udp))
                .collect()
        };
        assert_eq!(
            pairs("8000-8002:9000-9002/udp"),
            [(8000, 9000, true), (8001, 9001, true), (8002, 9002, true)]
        );
        assert_eq!(pairs("7000-7001"), [(0, 7000, false), (0, 7001, false)]);
        let all = PortSpec::parse_many("127.0.0.1::7000-7001").unwrap();
        assert!(all
            .iter()
            .all(|p| p.host_ip == Some("127.0.0.1".parse().unwrap())));
        assert_eq!(pairs("8080:80"), [(8080, 80, false)]);
        let refused = |s: &str| PortSpec::parse_many(s).unwrap_err();
        assert!(refused("8000-8001:80").contains("2 host ports for 1 guest port"));
        assert!(refused("8000:80-81").contains("1 host port for 2 guest ports"));
        assert!(refused("90-80").contains("runs backwards"));
        assert!(refused("1-2000").contains("at most 1024"));
        assert!(refused("0-5").contains("port 0"));
        assert!(refused("8000-:80").contains("not a published port"));
        // One where a single port is asked for.
        assert!("80-81"
            .parse::<PortSpec>()
            .unwrap_err()
            .contains("not a range"));
    }

    #[test]
    fn users_macs_cidrs() {
        let u: UserSpec = "1000:100".parse().unwrap();
        assert_eq!(u.user, IdOrName::Id(1000));
        assert_eq!(u.group, Some(IdOrName::Id(100)));
        assert!("nobody".parse::<UserSpec>().is_ok());
        assert!("Bad User".parse::<UserSpec>().is_err());
        assert!("52:54:00:12:34:56".parse::<MacAddr>().is_ok());
        assert!("53:54:00:12:34:56".parse::<MacAddr>().is_err());
        assert!("52:54:00:12:34".parse::<MacAddr>().is_err());
        assert!("fd00::2/64".parse::<Cidr>().is_ok());
        assert!("10.0.0.1/33".parse::<Cidr>().is_err());
        assert!("10.0.0.1".parse::<Cidr>().is_err());
    }
}
