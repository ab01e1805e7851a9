//! Networks between appliances, as docker's user-defined networks: the
//! appliances on one reach each other by address and by name, with no
//! root and no daemon; on a network of root's, the host reaches them by
//! address through the hub's host port (a tap).
//!
//! A network is a folder under `networks` in husk's data folder
//! ([`crate::volumes::data_dir`]): `NAME/network.json` (its IPv4 subnet,
//! its IPv6 one if it has IPv6, whether it is internal, when it was
//! made), `NAME/lock`, while any appliance is on it `NAME/hub.sock` and
//! `NAME/hub.log`, and a lease in
//! `NAME/members/` for each member's address, locked by the member's
//! husk while it lives ([`Lease`]).
//!
//! Each VM on the network gets an interface whose backend is a socket
//! to the network's hub ([`hub`]): one process per network, started by
//! the first run that joins it and gone when the last VM leaves (a hub
//! that dies before is replaced by the next, which its members join
//! again: [`Membership`]). The hub is the network's switch: frames in passt's stream
//! framing, each sent to the member whose MAC it is for, or to all for
//! broadcast and multicast. It gives each member its address and tells
//! every member's init the members' names for `/etc/hosts`. A network
//! that is not internal leaves the way out to the user-mode network
//! (passt) each VM also gets, as docker's bridge networks NAT theirs.

pub mod hub;
mod membership;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use hub::{Held, Hello, Reply};
pub use membership::{Left, Membership};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const META: &str = "network.json";
const LOCK: &str = "lock";
const SOCKET: &str = "hub.sock";
const LOG: &str = "hub.log";
const MEMBERS: &str = "members";

/// The MTU of a network's interfaces: as passt's, the largest frame the
/// stream framing carries less its Ethernet header.
pub const MTU: u16 = 65_520;

/// The folder of every network.
pub fn root() -> anyhow::Result<PathBuf> {
    Ok(crate::volumes::data_dir()?.join("networks"))
}

pub fn check_name(name: &str) -> anyhow::Result<()> {
    if !appliance_spec::is_network_name(name) {
        anyhow::bail!(
            "{name:?} is not a network name: use 1 to 64 letters, digits, '_', '.' and '-', \
             starting with a letter or digit (none, user, host, bridge and default are --net \
             words of their own)"
        );
    }
    Ok(())
}

/// `network.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// The network's own address and prefix length (`10.89.0.0/24`).
    pub subnet: (Ipv4Addr, u8),
    /// Its IPv6 subnet, when it has IPv6 (`network create --ipv6`): a
    /// member's IPv6 address is this prefix with its IPv4 address's host
    /// part (`10.89.0.5` is `fd..::5`), so its lease holds both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<(Ipv6Addr, u8)>,
    /// No way out: its VMs get no user-mode network for it.
    #[serde(default)]
    pub internal: bool,
    pub created_ms: u64,
}

impl Meta {
    /// The first and last address a member may have: the subnet's own
    /// address, `.1` (kept for a gateway) and the broadcast address are
    /// no member's.
    pub fn hosts(&self) -> (u32, u32) {
        let (base, prefix) = self.subnet;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        let base = u32::from(base) & mask;
        (base + 2, (base | !mask) - 1)
    }

    /// The IPv6 address and prefix of the member (or the gateway) at
    /// `address`, on a network with IPv6.
    pub fn address6(&self, address: Ipv4Addr) -> Option<(Ipv6Addr, u8)> {
        let (base6, prefix6) = self.subnet6?;
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.subnet.1))
            .unwrap_or(0);
        let host = u32::from(address) & !mask;
        Some((
            Ipv6Addr::from(u128::from(base6) | u128::from(host)),
            prefix6,
        ))
    }
}

/// A VM on a network, as [`Network::join`] put it there.
pub struct Joined {
    /// The VM's end of its socket pair with the hub: its interface's
    /// backend.
    pub socket: OwnedFd,
    pub address: Ipv4Addr,
    pub prefix: u8,
    /// Its IPv6 address and prefix, on a network with IPv6.
    pub address6: Option<(Ipv6Addr, u8)>,
    /// What keeps it on the network should the hub go.
    pub membership: Membership,
}

/// One network, made or not.
#[derive(Debug, Clone)]
pub struct Network {
    pub name: String,
    pub dir: PathBuf,
}

impl Network {
    pub fn at(root: &Path, name: &str) -> Self {
        Network {
            name: name.to_string(),
            dir: root.join(name),
        }
    }

    /// The network `name`, which must have been made.
    pub fn find(name: &str) -> anyhow::Result<Self> {
        check_name(name)?;
        let network = Network::at(&root()?, name);
        if network.meta().is_err() {
            anyhow::bail!(
                "no such network: {name} (husk network create {name} makes it; \
                 husk network ls lists them)"
            );
        }
        Ok(network)
    }

    /// Every network, by name.
    pub fn all() -> anyhow::Result<Vec<Self>> {
        let root = root()?;
        Ok(crate::volumes::names_in(&root, |n| check_name(n).is_ok())?
            .iter()
            .map(|n| Network::at(&root, n))
            .filter(|n| n.dir.join(META).is_file())
            .collect())
    }

    pub fn meta(&self) -> anyhow::Result<Meta> {
        let path = self.dir.join(META);
        let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let meta: Meta = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is damaged", path.display()))?;
        if !(8..=30).contains(&meta.subnet.1) {
            anyhow::bail!("{}: a subnet of /8 to /30", path.display());
        }
        if let Some(s6) = meta.subnet6 {
            check_subnet6(s6, meta.subnet.1).with_context(|| path.display().to_string())?;
        }
        Ok(meta)
    }

    /// Makes the network with `subnet` (else the first free `10.89.N.0/24`),
    /// and with `ipv6` IPv6 too: `subnet6`, else a unique local `/64` of
    /// its own (RFC 4193: `fd` and 40 random bits).
    pub fn create(
        &self,
        subnet: Option<(Ipv4Addr, u8)>,
        ipv6: bool,
        subnet6: Option<(Ipv6Addr, u8)>,
        internal: bool,
    ) -> anyhow::Result<Meta> {
        let root = self
            .dir
            .parent()
            .context("a network's folder has a parent")?;
        fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
        // One creation at a time, so two never pick the same subnet.
        let lock = File::create(root.join(".create.lock"))?;
        lock.lock().context("cannot lock the networks' folder")?;
        if self.dir.join(META).exists() {
            anyhow::bail!("a network named {} exists already", self.name);
        }
        let others: Vec<Meta> = Network::all()?
            .iter()
            .filter_map(|n| n.meta().ok())
            .collect();
        let taken: Vec<(Ipv4Addr, u8)> = others.iter().map(|m| m.subnet).collect();
        let subnet = match subnet {
            Some(s) => {
                if let Some(t) = taken.iter().find(|t| overlap(**t, s)) {
                    anyhow::bail!(
                        "--subnet {}/{}: another husk network has {}/{}",
                        s.0,
                        s.1,
                        t.0,
                        t.1
                    );
                }
                s
            }
            None => free_subnet(&taken, &host_routes())?,
        };
        let created_ms = crate::vms::now_ms();
        let subnet6 = match (ipv6, subnet6) {
            (false, None) => None,
            (false, Some(s)) => anyhow::bail!(
                "--subnet {}/{}: an IPv6 subnet needs --ipv6, as docker's",
                s.0,
                s.1
            ),
            (true, Some(s)) => {
                check_subnet6(s, subnet.1)?;
                if let Some(t) = others
                    .iter()
                    .filter_map(|m| m.subnet6)
                    .find(|t| overlap6(*t, s))
                {
                    anyhow::bail!(
                        "--subnet {}/{}: another husk network has {}/{}",
                        s.0,
                        s.1,
                        t.0,
                        t.1
                    );
                }
                Some(s)
            }
            (true, None) => Some(unique_local(&self.name, created_ms)),
        };
        let meta = Meta {
            subnet,
            subnet6,
            internal,
            created_ms,
        };
        let tmp = root.join(format!(".{}.tmp-{}", self.name, std::process::id()));
        let made = (|| {
            let mut builder = fs::DirBuilder::new();
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700).create(&tmp)?;
            fs::write(tmp.join(META), serde_json::to_vec_pretty(&meta)?)?;
            File::create(tmp.join(LOCK))?;
            fs::rename(&tmp, &self.dir)
        })();
        if let Err(e) = made {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e).with_context(|| format!("cannot create the network {}", self.name));
        }
        Ok(meta)
    }

    /// Whether a hub serves the network now (some VM is on it).
    pub fn in_use(&self) -> bool {
        UnixStream::connect(self.dir.join(SOCKET)).is_ok()
    }

    /// Removes the network, unless a VM is on it.
    pub fn remove(&self) -> anyhow::Result<()> {
        let lock = self.lock()?;
        if self.in_use() {
            anyhow::bail!(
                "the network {} has appliances on it: stop them first",
                self.name
            );
        }
        crate::volumes::remove_whole(&self.dir, lock)
    }

    /// The network's lock, held exclusively: starting its hub, joining it
    /// and the hub's leaving are one at a time.
    fn lock(&self) -> anyhow::Result<File> {
        let path = self.dir.join(LOCK);
        let lock = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        lock.lock().context("cannot lock the network")?;
        Ok(lock)
    }

    /// Joins the network as `hello` says: connects to its hub (starting
    /// one when none serves it), hands it one end of a new socket pair and
    /// is given an address, which a lease then holds for as long as this
    /// process lives.
    pub fn join(&self, hello: &Hello) -> anyhow::Result<Joined> {
        let meta = self.meta()?;
        let (vm, member) = vmm::vsock::seqpacket_pair().context("socketpair")?;
        let (control, address) = self
            .reach_hub(hello, &member)?
            .map_err(|reason| anyhow::anyhow!("network {}: {reason}", self.name))?;
        let lease = self.lease(hello.mac, address)?;
        Ok(Joined {
            socket: vm,
            address,
            prefix: meta.subnet.1,
            address6: meta.address6(address),
            membership: Membership::new(self.clone(), hello, address, control, member, lease),
        })
    }

    /// Writes this process's lease on `address` and locks it. Under the
    /// network's lock, so a joiner reads none half-written.
    fn lease(&self, mac: [u8; 6], address: Ipv4Addr) -> anyhow::Result<Lease> {
        let _lock = self.lock()?;
        let dir = self.dir.join(MEMBERS);
        let made = (|| {
            fs::create_dir_all(&dir)?;
            // A living member's address is no other living member's, so
            // the name is this process's alone; a dead one's is reused.
            let path = dir.join(format!("{address}-{}", std::process::id()));
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)?;
            file.try_lock().map_err(io::Error::from)?;
            file.set_len(0)?;
            file.write_all(&serde_json::to_vec(&Held { mac, address })?)?;
            io::Result::Ok(Lease { path, _file: file })
        })();
        made.with_context(|| format!("cannot write a lease in {}", dir.display()))
    }

    /// The addresses living members hold, from their leases; a lease whose
    /// husk is gone (its lock free) is removed. Under the network's lock.
    fn held(&self) -> Vec<Held> {
        let dir = self.dir.join(MEMBERS);
        let mut held = Vec::new();
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let Ok(mut file) = File::open(&path) else {
                continue;
            };
            match file.try_lock() {
                Ok(()) => {
                    let _ = fs::remove_file(&path);
                }
                Err(fs::TryLockError::WouldBlock) => {
                    let mut text = Vec::new();
                    if file.read_to_end(&mut text).is_ok() {
                        held.extend(serde_json::from_slice::<Held>(&text).ok());
                    }
                }
                Err(fs::TryLockError::Error(_)) => {}
            }
        }
        // Within a hello, whatever the subnet.
        held.truncate(1000);
        held
    }

    /// Connects to the hub (starting one when none serves), sends it
    /// `hello` with `member` (the hub's end of the VM's socket pair) and
    /// reads its answer: the connection and the address, or why the hub
    /// refused.
    fn reach_hub(
        &self,
        hello: &Hello,
        member: &OwnedFd,
    ) -> anyhow::Result<Result<(UnixStream, Ipv4Addr), String>> {
        let lock = self.lock()?;
        let hello = &Hello {
            held: self.held(),
            ..hello.clone()
        };
        let socket = self.dir.join(SOCKET);
        let mut stream = match UnixStream::connect(&socket) {
            Ok(s) => s,
            Err(_) => {
                self.start_hub()?;
                UnixStream::connect(&socket)
                    .with_context(|| format!("cannot reach the hub of network {}", self.name))?
            }
        };
        // Connected (in the hub's backlog): the hub cannot leave now.
        drop(lock);
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let frame = hub::control_frame(hub::BROADCAST, hello.mac, &serde_json::to_vec(hello)?);
        let sent = stream
            .send_with_fd(&frame[..], member.as_raw_fd())
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
            .with_context(|| format!("cannot reach the hub of network {}", self.name))?;
        if sent < frame.len() {
            stream.write_all(&frame[sent..])?;
        }
        let reply = read_frame(&mut stream)
            .with_context(|| format!("the hub of network {} did not answer", self.name))?;
        let reply: Reply = serde_json::from_slice(hub::payload(&reply).unwrap_or_default())
            .with_context(|| format!("the hub of network {} answered nonsense", self.name))?;
        stream.set_read_timeout(None)?;
        Ok(match reply {
            Reply::Welcome { address } => Ok((stream, address)),
            Reply::Refused { reason } => Err(reason),
        })
    }

    /// Starts the network's hub: its socket made and listening here, then
    /// handed to a new session's `husk network hub NAME`, which outlives
    /// this process and leaves when the last VM does. Started by root, it
    /// gets the host's port too ([`Network::host_tap`]).
    fn start_hub(&self) -> anyhow::Result<()> {
        let socket = self.dir.join(SOCKET);
        let _ = fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket)
            .with_context(|| format!("cannot make {}", socket.display()))?;
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(LOG))?;
        let exe = std::env::current_exe().context("cannot find husk's own binary")?;
        let mut command = std::process::Command::new(exe);
        command.args(["network", "hub", &self.name]);
        // SAFETY: geteuid(2) cannot fail.
        let tap = if unsafe { libc::geteuid() } == 0 {
            match self.host_tap() {
                Ok((tap, mac)) => {
                    command.args(["--host-port", &appliance_spec::MacAddr(mac).to_string()]);
                    Some(tap)
                }
                Err(e) => {
                    let _ = writeln!(
                        log,
                        "husk: no host port ({e:#}): the host does not reach the members"
                    );
                    None
                }
            }
        } else {
            None
        };
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .env_remove(crate::vms::keeper::KEEPER_ENV)
            .env_remove(crate::vms::keeper::VM_ENV);
        hub::hand_listener(&mut command, &listener, tap.as_ref(), true);
        let mut child = command.spawn().context("cannot start the network's hub")?;
        // The hub outlives us; a thread reaps it should it end first.
        std::thread::spawn(move || child.wait());
        Ok(())
    }

    /// The host interface that reaches the network's members:
    /// `huskXXXXXXXX` (a hash of the network's folder), a tap with the
    /// gateway's address (`.1`) and the network's MTU, and its MAC. The
    /// hub holds the only descriptor: the interface goes with the hub.
    fn host_tap(&self) -> anyhow::Result<(File, [u8; 6])> {
        let meta = self.meta()?;
        let name = self.interface();
        let tap = vmm::net::plain_tap(&name).with_context(|| format!("tap {name}"))?;
        let (base, prefix) = meta.subnet;
        let gateway = Ipv4Addr::from(u32::from(base) + 1);
        let address = format!("{gateway}/{prefix}");
        // The IPv6 gateway (`::1`), used at once: no member has it.
        let address6 = meta
            .address6(gateway)
            .map(|(a, p)| format!("{a}/{p}"))
            .unwrap_or_default();
        let mtu = MTU.to_string();
        ip(&["addr", "add", &address, "dev", &name])?;
        // A host without IPv6 (disabled) still reaches the members by
        // their IPv4 addresses.
        if !address6.is_empty() {
            if let Err(e) = ip(&["-6", "addr", "add", &address6, "dev", &name, "nodad"]) {
                tracing::warn!(
                    "network {}: the host reaches its members by IPv4 only: {e:#}",
                    self.name
                );
            }
        }
        ip(&["link", "set", "dev", &name, "mtu", &mtu, "up"])?;
        let path = format!("/sys/class/net/{name}/address");
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let mac: appliance_spec::MacAddr = text
            .trim()
            .parse()
            .map_err(|e: String| anyhow::anyhow!("{path}: {e}"))?;
        Ok((tap, mac.0))
    }

    /// The host's interface on the network, while a hub started by root
    /// serves it.
    pub fn interface(&self) -> String {
        // FNV-1a: the same name for the same folder, in 15 bytes.
        let hash = self
            .dir
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .fold(0x811c_9dc5u32, |h, b| {
                (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
            });
        format!("husk{hash:08x}")
    }

    /// Run by the hub process: serves until the last member left and no
    /// other is joining; `host` is the host's port, when it was handed one.
    pub fn serve(&self, listener: UnixListener, host: Option<hub::HostPort>) -> anyhow::Result<()> {
        let meta = self.meta()?;
        let path = self.dir.join(LOCK);
        let lock = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let socket = hub::confine(&self.dir)?.join(SOCKET);
        let mut hub = hub::Hub::new(meta.hosts());
        if meta.subnet6.is_some() {
            hub = hub.with_ipv6(move |a| meta.address6(a).map(|(v6, _)| v6));
        }
        if let Some(host) = host {
            hub = hub.with_host(host);
        }
        hub.run(&listener, || {
            // Joiners connect under the lock: with it held and nothing in
            // the backlog, none is on its way.
            if lock.lock().is_err() {
                return true;
            }
            let leave = !hub::pending(&listener);
            if leave {
                let _ = fs::remove_file(&socket);
            }
            let _ = lock.unlock();
            leave
        })
    }
}

/// `ip ARGS` (iproute2), its complaint the error when it fails.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip (iproute2)")?;
    if !out.status.success() {
        anyhow::bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A member's hold on its address: `members/ADDRESS-PID` in the
/// network's folder, locked while the file is open, so while the husk
/// that joined lives (a killed one's lock goes with it). Every joiner
/// reads the leases and tells the hub, which gives a held address to no
/// other MAC: a member whose hub died finds its address its own when it
/// joins the next hub, however many runs joined that one first.
pub struct Lease {
    path: PathBuf,
    _file: File,
}

impl Lease {
    /// Gives the address up: the member left.
    pub fn release(self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// One frame in passt's framing (a 4-byte big-endian length first).
fn read_frame(stream: &mut UnixStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > hub::MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too long"));
    }
    let mut frame = vec![0u8; len];
    stream.read_exact(&mut frame)?;
    Ok(frame)
}

/// Whether two IPv4 networks share an address (an address is a /32).
pub fn overlap(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let prefix = a.1.min(b.1);
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    u32::from(a.0) & mask == u32::from(b.0) & mask
}

/// The host's IPv4 routes but the default one (`/proc/net/route`): a
/// network over one would hide it from the guests' way out.
fn host_routes() -> Vec<(Ipv4Addr, u8)> {
    let text = fs::read_to_string("/proc/net/route").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            route(fields.get(1)?, fields.get(7)?)
        })
        .filter(|r| r.1 != 0)
        .collect()
}

/// One route of `/proc/net/route`: its destination and mask as the kernel
/// prints them, the bytes in network order read as a number of this host.
fn route(dest: &str, mask: &str) -> Option<(Ipv4Addr, u8)> {
    let dest = u32::from_str_radix(dest, 16).ok()?;
    let mask = u32::from_str_radix(mask, 16).ok()?;
    Some((Ipv4Addr::from(dest.to_ne_bytes()), mask.count_ones() as u8))
}

/// The first `10.89.N.0/24` no husk network and no host route has.
fn free_subnet(
    taken: &[(Ipv4Addr, u8)],
    routes: &[(Ipv4Addr, u8)],
) -> anyhow::Result<(Ipv4Addr, u8)> {
    (0..=255u8)
        .map(|n| (Ipv4Addr::new(10, 89, n, 0), 24))
        .find(|s| !taken.iter().chain(routes).any(|t| overlap(*t, *s)))
        .context("every 10.89.N.0/24 is taken: give one with --subnet")
}

/// A network's subnet, as `--subnet` gives it: IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subnet {
    V4(Ipv4Addr, u8),
    V6(Ipv6Addr, u8),
}

/// `--subnet 10.90.0.0/24` (an IPv4 network of /8 to /30) or `--subnet
/// fd00:1::/64` (an IPv6 one), the address taken down to the network's.
pub fn parse_subnet(text: &str) -> anyhow::Result<Subnet> {
    let cidr: appliance_spec::Cidr = text.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    match cidr.addr {
        std::net::IpAddr::V4(addr) => {
            if !(8..=30).contains(&cidr.prefix) {
                anyhow::bail!("--subnet {text}: an IPv4 prefix of /8 to /30");
            }
            let mask = u32::MAX << (32 - u32::from(cidr.prefix));
            Ok(Subnet::V4(
                Ipv4Addr::from(u32::from(addr) & mask),
                cidr.prefix,
            ))
        }
        std::net::IpAddr::V6(addr) => {
            if !(8..=120).contains(&cidr.prefix) {
                anyhow::bail!("--subnet {text}: an IPv6 prefix of /8 to /120");
            }
            let mask = u128::MAX << (128 - u32::from(cidr.prefix));
            Ok(Subnet::V6(
                Ipv6Addr::from(u128::from(addr) & mask),
                cidr.prefix,
            ))
        }
    }
}

/// An IPv6 subnet must hold every IPv4 host part of the network's
/// (`v4_prefix`), which members' IPv6 addresses are made of.
fn check_subnet6((addr, prefix): (Ipv6Addr, u8), v4_prefix: u8) -> anyhow::Result<()> {
    let room = 128 - u32::from(prefix.min(128));
    let needed = 32 - u32::from(v4_prefix.min(32));
    if room < needed {
        anyhow::bail!(
            "{addr}/{prefix} leaves {room} bits for hosts; the IPv4 subnet's /{v4_prefix} needs {needed}"
        );
    }
    Ok(())
}

/// Whether two IPv6 networks share an address.
fn overlap6(a: (Ipv6Addr, u8), b: (Ipv6Addr, u8)) -> bool {
    let prefix = a.1.min(b.1);
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    u128::from(a.0) & mask == u128::from(b.0) & mask
}

/// A unique local `/64` (RFC 4193: `fd`, a 40-bit global ID, subnet 0)
/// for network `name`: the ID is a hash of its name, the time it is made,
/// this host's boot ID and the creating process's ID, as random as the RFC
/// asks.
fn unique_local(name: &str, created_ms: u64) -> (Ipv6Addr, u8) {
    use sha2::{Digest, Sha256};
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let digest = Sha256::new()
        .chain_update(name)
        .chain_update(created_ms.to_le_bytes())
        .chain_update(boot.trim())
        .chain_update(std::process::id().to_le_bytes())
        .finalize();
    let mut octets = [0u8; 16];
    octets[0] = 0xfd;
    octets[1..6].copy_from_slice(&digest[..5]);
    (Ipv6Addr::from(octets), 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_chosen_clear_of_husk_s_other_networks_and_the_host_s_routes() {
        let taken = [(Ipv4Addr::new(10, 89, 0, 0), 24)];
        let routes = [(Ipv4Addr::new(10, 89, 1, 0), 24)];
        assert_eq!(
            free_subnet(&taken, &routes).unwrap(),
            (Ipv4Addr::new(10, 89, 2, 0), 24)
        );
        assert!(free_subnet(&[(Ipv4Addr::new(10, 0, 0, 0), 8)], &[]).is_err());
        assert!(overlap(
            (Ipv4Addr::new(10, 89, 0, 0), 16),
            (Ipv4Addr::new(10, 89, 7, 0), 24)
        ));
        assert!(!overlap(
            (Ipv4Addr::new(10, 89, 0, 0), 24),
            (Ipv4Addr::new(10, 89, 1, 0), 24)
        ));
        assert_eq!(
            parse_subnet("10.90.3.7/16").unwrap(),
            Subnet::V4(Ipv4Addr::new(10, 90, 0, 0), 16)
        );
        assert_eq!(
            parse_subnet("fd00:1:2:3:4::9/64").unwrap(),
            Subnet::V6("fd00:1:2:3::".parse().unwrap(), 64)
        );
        for bad in [
            "10.0.0.0",
            "fd00::",
            "10.0.0.0/31",
            "10.0.0.0/4",
            "x/24",
            "fd00::/121",
        ] {
            assert!(parse_subnet(bad).is_err(), "{bad}");
        }
        let meta = Meta {
            subnet: (Ipv4Addr::new(10, 89, 5, 0), 24),
            subnet6: None,
            internal: false,
            created_ms: 0,
        };
        let (first, last) = meta.hosts();
        assert_eq!(
            (Ipv4Addr::from(first), Ipv4Addr::from(last)),
            (Ipv4Addr::new(10, 89, 5, 2), Ipv4Addr::new(10, 89, 5, 254))
        );
        assert_eq!(meta.address6(Ipv4Addr::new(10, 89, 5, 7)), None);
    }

    /// A member's IPv6 address is the IPv6 prefix with its IPv4 address's
    /// host part; an IPv6 subnet too small for the IPv4 one's hosts is
    /// refused, and a network's own is unique local and a /64.
    #[test]
    fn ipv6_addresses_follow_the_ipv4_host_part() {
        let meta = Meta {
            subnet: (Ipv4Addr::new(10, 89, 0, 0), 16),
            subnet6: Some(("fd12:3456:789a::".parse().unwrap(), 64)),
            internal: false,
            created_ms: 0,
        };
        assert_eq!(
            meta.address6(Ipv4Addr::new(10, 89, 1, 5)),
            Some(("fd12:3456:789a::105".parse().unwrap(), 64))
        );
        assert_eq!(
            meta.address6(Ipv4Addr::new(10, 89, 0, 1)),
            Some(("fd12:3456:789a::1".parse().unwrap(), 64))
        );
        check_subnet6(("fd00::".parse().unwrap(), 112), 16).unwrap();
        assert!(check_subnet6(("fd00::".parse().unwrap(), 120), 16).is_err());
        let (a, p) = unique_local("web", 1);
        assert_eq!(
            (a.octets()[0], &a.octets()[6..], p),
            (0xfd, &[0u8; 10][..], 64)
        );
        assert_ne!(unique_local("web", 2).0, a, "a network's own");
        assert!(overlap6(
            ("fd00::".parse().unwrap(), 48),
            ("fd00:0:0:5::".parse().unwrap(), 64)
        ));
        assert!(!overlap6(
            ("fd00::".parse().unwrap(), 64),
            ("fd00:0:0:5::".parse().unwrap(), 64)
        ));
    }

    /// `--ipv6` alone gives the network a unique local /64 of its own,
    /// kept in network.json; an IPv6 subnet needs `--ipv6` and room for
    /// the IPv4 subnet's hosts, and a refused create leaves no network.
    #[test]
    fn a_network_with_ipv6_keeps_its_subnet_and_a_bad_one_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let v4 = Some((Ipv4Addr::new(10, 91, 0, 0), 16));
        let made = Network::at(tmp.path(), "six");
        let meta = made.create(v4, true, None, false).unwrap();
        let (prefix, len) = meta.subnet6.expect("an IPv6 subnet");
        assert_eq!((prefix.octets()[0], len), (0xfd, 64));
        assert_eq!(made.meta().unwrap().subnet6, meta.subnet6, "read back");
        let given = Some(("fd00:9::".parse().unwrap(), 64));
        let err = Network::at(tmp.path(), "no6")
            .create(v4, false, given, false)
            .unwrap_err();
        assert!(err.to_string().contains("needs --ipv6"), "{err:#}");
        let small = Some(("fd00:9::".parse().unwrap(), 120));
        let err = Network::at(tmp.path(), "small")
            .create(v4, true, small, false)
            .unwrap_err();
        assert!(err.to_string().contains("needs 16"), "{err:#}");
        for name in ["no6", "small"] {
            assert!(!tmp.path().join(name).exists(), "{name} was made");
        }
    }

    #[test]
    fn names_that_mean_something_else_to_net_are_refused() {
        for bad in ["none", "user", "host", "bridge", "-x", ""] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        check_name("backend").unwrap();
    }

    #[test]
    fn the_host_s_routes_are_read_in_network_byte_order() {
        // 10.0.2.0/24 as /proc/net/route prints it on a little-endian host.
        if cfg!(target_endian = "little") {
            assert_eq!(
                route("0002000A", "00FFFFFF"),
                Some((Ipv4Addr::new(10, 0, 2, 0), 24))
            );
        }
        assert_eq!(route("x", "0"), None);
    }
}
