//! A run's network: `--net`, `-p` and the appliance's `[[vm.net]]`
//! planned into guest interfaces, then attached on the host (passt
//! started, taps named) with what the guest's init sets up.

use std::net::IpAddr;

use appliance_spec::PortSpec;
use husk_init::config::{is_resolver_word, HostEntry, InterfaceSetup, NetSetup};
use vmm::passt::{GuestNet, Passt, PortMapping};
use vmm::{NetBackendConfig, NetConfig};

use super::Args;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum NetMode {
    None,
    User,
    Tap(Box<PlannedNet>),
    /// A husk network (`husk network create`).
    Network(String),
}

pub(super) fn parse_net(arg: &str) -> Result<NetMode, String> {
    match arg {
        "none" => return Ok(NetMode::None),
        "user" => return Ok(NetMode::User),
        _ => {}
    }
    let usage = || {
        format!("{arg:?}: write none, user, a network's name or tap:NAME[,mac=MAC][,ip=ADDR/PREFIX][,gateway=ADDR][,mtu=N] (ip and gateway once for IPv4, once for IPv6)")
    };
    let Some(tap) = arg.strip_prefix("tap:") else {
        return match crate::networks::check_name(arg) {
            Ok(()) => Ok(NetMode::Network(arg.into())),
            Err(_) => Err(usage()),
        };
    };
    let mut parts = tap.split(',');
    let name = parts.next().unwrap_or_default();
    if name.is_empty() || name.len() > 15 {
        return Err(format!("{arg:?}: a tap's name has 1 to 15 characters"));
    }
    let mut net = PlannedNet {
        tap: Some(name.into()),
        ..PlannedNet::user(Vec::new())
    };
    for part in parts {
        let (key, value) = part.split_once('=').ok_or_else(usage)?;
        let bad = |e: &dyn std::fmt::Display| format!("{arg:?}: {key}={value}: {e}");
        match key {
            "mac" => {
                let mac: appliance_spec::MacAddr = value.parse().map_err(|e| bad(&e))?;
                net.mac = Some(mac.0);
            }
            "ip" => {
                let cidr: appliance_spec::Cidr = value.parse().map_err(|e| bad(&e))?;
                let twice = match cidr.addr {
                    IpAddr::V4(v4) => net.address.replace((v4, cidr.prefix)).is_some(),
                    IpAddr::V6(v6) => net.address6.replace((v6, cidr.prefix)).is_some(),
                };
                if twice {
                    return Err(bad(&"a second address of the same IP family"));
                }
            }
            "gateway" => {
                let twice = match value.parse().map_err(|e| bad(&e))? {
                    IpAddr::V4(v4) => net.gateway.replace(v4).is_some(),
                    IpAddr::V6(v6) => net.gateway6.replace(v6).is_some(),
                };
                if twice {
                    return Err(bad(&"a second gateway of the same IP family"));
                }
            }
            "mtu" => net.mtu = Some(value.parse().map_err(|e| bad(&e))?),
            _ => return Err(usage()),
        }
    }
    Ok(NetMode::Tap(Box::new(net)))
}

/// One guest interface as planned: on passt, or on a tap.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PlannedNet {
    pub(super) tap: Option<String>,
    mac: Option<[u8; 6]>,
    /// The guest's own configuration; for passt, left to the host's.
    address: Option<(std::net::Ipv4Addr, u8)>,
    gateway: Option<std::net::Ipv4Addr>,
    /// A tap's guest may have an IPv6 address and route too.
    address6: Option<(std::net::Ipv6Addr, u8)>,
    gateway6: Option<std::net::Ipv6Addr>,
    mtu: Option<u16>,
    pub(super) ports: Vec<PortSpec>,
    /// On a husk network: its hub is the backend.
    pub(super) network: Option<String>,
}

impl PlannedNet {
    fn user(ports: Vec<PortSpec>) -> Self {
        PlannedNet {
            network: None,
            tap: None,
            mac: None,
            address: None,
            gateway: None,
            address6: None,
            gateway6: None,
            mtu: None,
            ports,
        }
    }
}

/// The network a run gets: `--net` and `-p` over the appliance's own
/// `[[vm.net]]`; an image reference gets the user-mode network, as
/// `docker run` and `podman run` give a container one.
pub(super) fn plan_net(
    args: &Args,
    appliance: Option<&appliance_spec::Appliance>,
    image_ref: bool,
    exposed: &[PortSpec],
) -> anyhow::Result<(Vec<PlannedNet>, Vec<u16>)> {
    let publish: Vec<PortSpec> = args
        .publish
        .iter()
        .flat_map(|p| &p.0)
        .chain(exposed)
        .copied()
        .collect();
    let mut base = None;
    let mut networks = Vec::new();
    for mode in &args.net {
        match mode {
            NetMode::Network(name) => {
                if networks.contains(name) {
                    anyhow::bail!("--net {name} twice");
                }
                networks.push(name.clone());
            }
            other => {
                if base.replace(other).is_some() {
                    anyhow::bail!(
                        "--net: one of none, user and tap:NAME (with any number of networks)"
                    );
                }
            }
        }
    }
    let mut joined = Vec::new();
    let mut internal = true;
    let mut subnets = Vec::new();
    for name in &networks {
        let meta = crate::networks::Network::find(name)?.meta()?;
        internal &= meta.internal;
        subnets.push(meta.subnet);
        joined.push(PlannedNet {
            network: Some(name.clone()),
            mtu: Some(crate::networks::MTU),
            ..PlannedNet::user(Vec::new())
        });
    }
    if let Some(ip) = args.names.ip {
        if networks.is_empty() {
            anyhow::bail!(
                "--ip {ip} is an address on a husk network, and this run joins none: \
                 add --net NAME"
            );
        }
        let Some(at) = subnets
            .iter()
            .position(|s| crate::networks::overlap(*s, (ip, 32)))
        else {
            anyhow::bail!(
                "--ip {ip}: none of this run's networks ({}) has it in its subnet",
                networks.join(", ")
            );
        };
        joined[at].address = Some((ip, subnets[at].1));
    }
    let mut nets = match base {
        Some(NetMode::None) => {
            if !publish.is_empty() {
                anyhow::bail!(
                    "-p and -P publish ports through the user-mode network: drop --net none"
                );
            }
            let mut joined = joined;
            set_mac(&mut joined, args)?;
            return Ok((joined, Vec::new()));
        }
        Some(NetMode::User) => vec![PlannedNet::user(Vec::new())],
        Some(NetMode::Tap(net)) => vec![(**net).clone()],
        Some(NetMode::Network(_)) => unreachable!("networks are taken above"),
        None => match appliance {
            Some(a) => {
                a.vm.net
                    .iter()
                    .map(|n| {
                        // Validation keeps the gateway of the address's
                        // family, and an IPv6 address off passt's network.
                        let mut planned = PlannedNet {
                            tap: n.tap.clone(),
                            mac: n.mac.map(|m| m.0),
                            mtu: n.mtu,
                            ..PlannedNet::user(n.ports.clone())
                        };
                        if let Some(network) = &n.network {
                            planned.network = Some(network.clone());
                            planned.mtu = n.mtu.or(Some(crate::networks::MTU));
                        }
                        match n.address.map(|c| (c.addr, c.prefix)) {
                            Some((IpAddr::V4(a), p)) => planned.address = Some((a, p)),
                            Some((IpAddr::V6(a), p)) => planned.address6 = Some((a, p)),
                            None => {}
                        }
                        match n.gateway {
                            Some(IpAddr::V4(g)) => planned.gateway = Some(g),
                            Some(IpAddr::V6(g)) => planned.gateway6 = Some(g),
                            None => {}
                        }
                        planned
                    })
                    .collect()
            }
            None if image_ref => vec![PlannedNet::user(Vec::new())],
            None => Vec::new(),
        },
    };
    // A network that is not internal has its way out through the
    // user-mode network, as docker's bridge networks NAT theirs.
    if nets.is_empty() && !networks.is_empty() && !internal {
        nets.push(PlannedNet::user(Vec::new()));
    }
    if args.replace_ports {
        for n in &mut nets {
            n.ports.clear();
        }
    }
    if !publish.is_empty() {
        match nets
            .iter_mut()
            .find(|n| n.tap.is_none() && n.network.is_none())
        {
            Some(user) => user.ports.extend(publish),
            None => nets.push(PlannedNet::user(publish)),
        }
    }
    nets.extend(joined);
    set_mac(&mut nets, args)?;
    let chosen = choose_host_ports(&mut nets)?;
    let foreground = !args.detach
        && std::env::var_os(crate::vms::keeper::KEEPER_ENV).is_none()
        && std::env::var_os(crate::vms::keeper::VM_ENV).is_none();
    if foreground {
        for p in &chosen {
            eprintln!("husk: published {}", published(p));
        }
    }
    Ok((nets, chosen.iter().map(|p| p.host_port).collect()))
}

/// `--mac-address`: the first interface's MAC.
fn set_mac(nets: &mut [PlannedNet], args: &Args) -> anyhow::Result<()> {
    if let Some(mac) = args.mac_address {
        match nets.first_mut() {
            Some(first) => first.mac = Some(mac.0),
            None => anyhow::bail!("--mac-address: this run has no network interface"),
        }
    }
    Ok(())
}

/// `--expose PORT[-LAST][/tcp|/udp]`: the ports, at most
/// [`appliance_spec::MAX_PORT_RANGE`] of them.
pub(super) fn parse_expose(s: &str) -> Result<Vec<appliance_spec::ExposedPort>, String> {
    let (ports, proto) = match s.split_once('/') {
        Some((p, proto)) => (p, format!("/{proto}")),
        None => (s, String::new()),
    };
    let (first, last) = ports.split_once('-').unwrap_or((ports, ports));
    let first: appliance_spec::ExposedPort = format!("{first}{proto}").parse()?;
    let last: appliance_spec::ExposedPort = format!("{last}{proto}").parse()?;
    let most = appliance_spec::MAX_PORT_RANGE;
    if last.port < first.port || usize::from(last.port - first.port) >= most {
        return Err(format!(
            "{s:?}: a range is FIRST-LAST, FIRST no higher, of at most {most} ports"
        ));
    }
    Ok((first.port..=last.port)
        .map(|port| appliance_spec::ExposedPort {
            port,
            udp: first.udp,
        })
        .collect())
}

/// With `-P`: the ports the image at `image` exposes (what its build
/// recorded) and `--expose` adds, each to be published on a free host
/// port.
pub(super) fn exposed(args: &Args, image: &std::path::Path) -> anyhow::Result<Vec<PortSpec>> {
    if !args.publish_all {
        return Ok(Vec::new());
    }
    let run = builder::images::run_config_of(image).map_err(|e| anyhow::anyhow!("-P: {e}"))?;
    let mut exposed = run.exposed_ports.clone();
    for port in args.expose.iter().flatten() {
        let port = port.to_string();
        if !exposed.contains(&port) {
            exposed.push(port);
        }
    }
    let ports = exposed_ports(&exposed);
    if ports.is_empty() {
        eprintln!("husk: -P: the image exposes no port (EXPOSE, run.expose)");
    }
    Ok(ports)
}

/// `80/tcp`, `53/udp` as ports published on any free host port; what is
/// not a port is left out.
fn exposed_ports(ports: &[String]) -> Vec<PortSpec> {
    ports
        .iter()
        .filter_map(|p| p.parse::<appliance_spec::ExposedPort>().ok())
        .map(|p| PortSpec {
            host_ip: None,
            host_port: 0,
            guest_port: p.port,
            udp: p.udp,
        })
        .collect()
}

/// Set for a detached VM's keeper and VM child: the host ports chosen for
/// ports published without one, in order, so the keeper's record, its VM
/// and its restarts publish the same ones.
pub(super) const CHOSEN_PORTS_ENV: &str = "HUSK_CHOSEN_PORTS";

/// Gives each port published without a host port (`-p 80`) a free one:
/// those [`CHOSEN_PORTS_ENV`] names, else one the kernel picks now (bound
/// and let go: passt binds it a moment later). The ports given one.
fn choose_host_ports(nets: &mut [PlannedNet]) -> anyhow::Result<Vec<PortSpec>> {
    let mut named = std::env::var(CHOSEN_PORTS_ENV)
        .unwrap_or_default()
        .split(',')
        .filter_map(|p| p.parse::<u16>().ok())
        .collect::<Vec<_>>()
        .into_iter();
    let mut chosen = Vec::new();
    for p in nets
        .iter_mut()
        .flat_map(|n| n.ports.iter_mut())
        .filter(|p| p.host_port == 0)
    {
        p.host_port = match named.next() {
            Some(port) => port,
            None => free_port(p)?,
        };
        chosen.push(*p);
    }
    Ok(chosen)
}

/// A port the kernel has free now on `p`'s host address (any address when
/// it names none), of `p`'s protocol.
fn free_port(p: &PortSpec) -> anyhow::Result<u16> {
    use anyhow::Context;
    let ip = p
        .host_ip
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let port = if p.udp {
        std::net::UdpSocket::bind((ip, 0)).and_then(|s| s.local_addr())
    } else {
        std::net::TcpListener::bind((ip, 0)).and_then(|s| s.local_addr())
    };
    Ok(port
        .with_context(|| format!("no free port on {ip} to publish port {}", p.guest_port))?
        .port())
}

/// A published port as `ps` and `husk port` show it: `[IP:]HOST->GUEST/PROTO`.
/// One `-p`: a port, or a range of them.
#[derive(Debug, Clone)]
pub struct Published(pub Vec<PortSpec>);

impl Published {
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        PortSpec::parse_many(text).map(Published)
    }
}

pub(super) fn published(p: &PortSpec) -> String {
    let ip = match p.host_ip {
        Some(IpAddr::V6(ip)) => format!("[{ip}]:"),
        Some(ip) => format!("{ip}:"),
        None => String::new(),
    };
    let proto = if p.udp { "udp" } else { "tcp" };
    format!("{ip}{}->{}/{proto}", p.host_port, p.guest_port)
}

// The names the guest resolves, as docker's flags set them. (Not a doc
// comment: clap would make it the about text of husk run, whose options
// are built late, when it runs.)
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NameArgs {
    /// A line in the guest's /etc/hosts: NAME:IP, or NAME:host-gateway for
    /// the host (the network's gateway: passt hands the host's loopback
    /// there)
    #[arg(long = "add-host", value_name = "NAME:IP", value_parser = parse_add_host)]
    add_host: Vec<AddHost>,
    /// A name server for the guest's /etc/resolv.conf, in place of the
    /// network's own
    #[arg(long, value_name = "IP")]
    dns: Vec<IpAddr>,
    /// A search domain for the guest's /etc/resolv.conf
    #[arg(long, value_name = "DOMAIN", value_parser = resolver_word)]
    dns_search: Vec<String>,
    /// An option for the guest's /etc/resolv.conf (ndots:2, ...)
    #[arg(long, value_name = "OPTION", value_parser = resolver_word)]
    dns_option: Vec<String>,
    /// The guest's address on the husk network whose subnet holds it,
    /// which no other member may have then (by default the network gives
    /// one)
    #[arg(long, value_name = "IPV4")]
    pub(super) ip: Option<std::net::Ipv4Addr>,
}

impl NameArgs {
    /// `Dns`, `DnsSearch`, `DnsOptions` and `ExtraHosts` as docker
    /// inspect shows them.
    pub(super) fn docker_fields(&self) -> (Vec<String>, Vec<String>, Vec<String>, Vec<String>) {
        let hosts = self
            .add_host
            .iter()
            .map(|h| match h.address {
                Some(ip) => format!("{}:{ip}", h.name),
                None => format!("{}:host-gateway", h.name),
            })
            .collect();
        (
            self.dns.iter().map(ToString::to_string).collect(),
            self.dns_search.clone(),
            self.dns_option.clone(),
            hosts,
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddHost {
    name: String,
    /// `None`: the host (`host-gateway`).
    address: Option<IpAddr>,
}

/// `--add-host NAME:IP` (or `NAME=IP`), as docker takes it.
fn parse_add_host(arg: &str) -> Result<AddHost, String> {
    let (name, address) = match (arg.split_once('='), arg.split_once(':')) {
        (Some(pair), _) | (None, Some(pair)) => pair,
        (None, None) => return Err(format!("{arg:?}: write NAME:IP or NAME:host-gateway")),
    };
    let name = resolver_word(name)?;
    let address = match address {
        "host-gateway" => None,
        ip => Some(
            ip.trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| format!("{arg:?}: {ip:?} is not an IP address or host-gateway"))?,
        ),
    };
    Ok(AddHost { name, address })
}

/// `--network-alias NAME`: a name as containers' are.
pub(crate) fn network_alias(text: &str) -> Result<String, String> {
    crate::vms::check_name(text).map_err(|e| format!("{e:#}"))?;
    Ok(text.to_string())
}

fn resolver_word(text: &str) -> Result<String, String> {
    if !is_resolver_word(text) {
        return Err(format!(
            "{text:?}: give one word of printable characters, without '#'"
        ));
    }
    Ok(text.to_string())
}

/// Puts `names` into what the guest's init sets up: `--dns` in place of
/// the network's name servers, the search domains and options, and the
/// extra hosts, `host-gateway` as the first interface's gateway.
fn add_names(setup: &mut NetSetup, names: &NameArgs) -> anyhow::Result<()> {
    if !names.dns.is_empty() {
        setup.dns = names.dns.clone();
    }
    setup.search = names.dns_search.clone();
    setup.options = names.dns_option.clone();
    let gateway = setup.interfaces.iter().find_map(|i| {
        i.gateway
            .map(IpAddr::from)
            .or_else(|| i.gateway6.map(IpAddr::from))
    });
    for h in &names.add_host {
        let address = match (h.address, gateway) {
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => anyhow::bail!(
                "--add-host {}:host-gateway: the guest has no network with a gateway \
                 (--net user, or a tap with gateway=)",
                h.name
            ),
        };
        setup.hosts.push(HostEntry {
            name: h.name.clone(),
            address,
        });
    }
    Ok(())
}

/// A locally administered unicast MAC address, random per run.
pub(crate) fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut mac))
        .is_err()
    {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        mac[2..].copy_from_slice(&(nanos ^ std::process::id()).to_le_bytes());
    }
    mac[0] = 0x02;
    mac
}

/// The host side of a run's interfaces.
pub(super) struct Attached {
    /// The VMM's side.
    pub configs: Vec<NetConfig>,
    /// passt, when the run has the user-mode network: it lives as long as
    /// this guard, in the process that started it.
    pub passt: Option<Passt>,
    /// What the guest's init sets up.
    pub setup: NetSetup,
    /// The run's places on husk networks: kept (from the process that
    /// stays, after the jail's fork) while the VM runs.
    pub memberships: Vec<crate::networks::Membership>,
}

/// The host side of the planned interfaces: passt started, taps named,
/// networks joined; and what the guest's init sets up.
pub(super) fn attach_net(
    nets: &[PlannedNet],
    names: &NameArgs,
    member: &Member,
) -> anyhow::Result<Attached> {
    let mut configs = Vec::new();
    let mut passt = None;
    let mut setup = NetSetup::default();
    let mut memberships = Vec::new();
    for (i, n) in nets.iter().enumerate() {
        if let Some(name) = &n.network {
            let mac = n.mac.unwrap_or_else(random_mac);
            let joined = member.join(name, mac, n.address.map(|a| a.0))?;
            memberships.push(joined.membership);
            setup.interfaces.push(InterfaceSetup {
                name: format!("eth{i}"),
                address: Some(joined.address),
                prefix: joined.prefix,
                gateway: None,
                mtu: n.mtu,
                mac: Some(mac),
                address6: joined.address6,
                gateway6: None,
                network: Some(name.clone()),
            });
            configs.push(NetConfig {
                mac,
                backend: NetBackendConfig::Stream(joined.socket),
                network: Some(name.clone()),
            });
            continue;
        }
        let mut iface = InterfaceSetup {
            name: format!("eth{i}"),
            address: n.address.map(|a| a.0),
            prefix: n.address.map_or(0, |a| a.1),
            gateway: n.gateway,
            mtu: n.mtu,
            mac: None,
            address6: n.address6,
            gateway6: n.gateway6,
            network: None,
        };
        let backend = match &n.tap {
            Some(name) => NetBackendConfig::Tap(name.clone()),
            None => {
                let host = vmm::passt::guest_net()?;
                let guest = GuestNet {
                    address: n.address.map_or(host.address, |a| a.0),
                    prefix: n.address.map_or(host.prefix, |a| a.1),
                    gateway: n.gateway.unwrap_or(host.gateway),
                    mtu: n.mtu.unwrap_or(host.mtu),
                };
                let ports: Vec<PortMapping> = n
                    .ports
                    .iter()
                    .map(|p| PortMapping {
                        host_ip: p.host_ip,
                        host_port: p.host_port,
                        guest_port: p.guest_port,
                        udp: p.udp,
                    })
                    .collect();
                let (guard, fd) = Passt::start(&guest, &ports)?;
                passt = Some(guard);
                iface.address = Some(guest.address);
                iface.prefix = guest.prefix;
                iface.gateway = Some(guest.gateway);
                iface.mtu = Some(guest.mtu);
                // passt answers DNS sent to the gateway with the host's resolver.
                setup.dns.push(guest.gateway.into());
                NetBackendConfig::Stream(fd)
            }
        };
        let mac = n.mac.unwrap_or_else(random_mac);
        // Set by init too: a VM restored from a snapshot kept the MAC of
        // the run that took it.
        iface.mac = Some(mac);
        setup.interfaces.push(iface);
        configs.push(NetConfig {
            mac,
            backend,
            network: None,
        });
    }
    add_names(&mut setup, names)?;
    Ok(Attached {
        configs,
        passt,
        setup,
        memberships,
    })
}

/// Who this run is on husk networks: the names other members reach it
/// by, and (a detached VM) the folder that remembers its addresses, so a
/// restart asks for the same ones.
pub(crate) struct Member {
    pub(crate) names: Vec<String>,
    pub(crate) vm_dir: Option<std::path::PathBuf>,
}

impl Member {
    /// This run: a detached VM's name, `--network-alias`es and
    /// `--hostname`, each once.
    pub(super) fn of(args: &Args, vm: Option<&crate::vms::VmDir>) -> Self {
        let mut names: Vec<String> = Vec::new();
        let all = vm
            .map(|vm| vm.name.clone())
            .into_iter()
            .chain(args.network_alias.iter().cloned())
            .chain(args.hostname.iter().cloned());
        for name in all {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Member {
            names,
            vm_dir: vm.map(|vm| vm.dir.clone()),
        }
    }

    /// Joins network `name` with `mac`, at address `fixed` when given (or
    /// not at all).
    pub(crate) fn join(
        &self,
        name: &str,
        mac: [u8; 6],
        fixed: Option<std::net::Ipv4Addr>,
    ) -> anyhow::Result<crate::networks::Joined> {
        // By the network's name: its place among the interfaces changes
        // when a network is connected or disconnected.
        let remembered = self
            .vm_dir
            .as_ref()
            .map(|d| d.join(format!("network-{name}.address")));
        let want = fixed.or_else(|| {
            remembered
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .and_then(|a| a.trim().parse().ok())
        });
        let hello = crate::networks::hub::Hello {
            names: self.names.clone(),
            mac,
            want,
            fixed: fixed.is_some(),
            held: Vec::new(),
        };
        let joined = crate::networks::Network::find(name)?.join(&hello)?;
        if let Some(path) = remembered {
            let _ = crate::vms::write_file(&path, joined.address.to_string());
        }
        Ok(joined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_ports_publish_on_any_host_port() {
        let ports = exposed_ports(&["53/udp".into(), "8080/tcp".into(), "x/sctp".into()]);
        let shown: Vec<(u16, u16, bool)> = ports
            .iter()
            .map(|p| (p.host_port, p.guest_port, p.udp))
            .collect();
        assert_eq!(shown, [(0, 53, true), (0, 8080, false)]);
        assert!(ports.iter().all(|p| p.host_ip.is_none()));
    }

    #[test]
    fn names_go_to_the_resolver_files_as_docker_s_flags_say() {
        let names = NameArgs {
            add_host: [
                "db:10.0.0.9",
                "host.docker.internal:host-gateway",
                "v6=[fd00::9]",
            ]
            .iter()
            .map(|a| parse_add_host(a).unwrap())
            .collect(),
            dns: vec!["9.9.9.9".parse().unwrap()],
            dns_search: vec!["example.test".into()],
            dns_option: vec!["ndots:2".into()],
            ip: None,
        };
        let mut setup = NetSetup {
            interfaces: vec![InterfaceSetup {
                name: "eth0".into(),
                address: Some([10, 0, 2, 15].into()),
                prefix: 24,
                gateway: Some([10, 0, 2, 2].into()),
                mtu: None,
                mac: None,
                address6: None,
                gateway6: None,
                network: None,
            }],
            dns: vec![IpAddr::from([10, 0, 2, 2])],
            ..NetSetup::default()
        };
        add_names(&mut setup, &names).unwrap();
        assert_eq!(
            setup.dns,
            vec![IpAddr::from([9, 9, 9, 9])],
            "--dns replaces"
        );
        assert_eq!((setup.search.len(), setup.options.len()), (1, 1));
        let hosts: Vec<String> = setup
            .hosts
            .iter()
            .map(|h| format!("{} {}", h.address, h.name))
            .collect();
        assert_eq!(
            hosts,
            ["10.0.0.9 db", "10.0.2.2 host.docker.internal", "fd00::9 v6"]
        );
        let mut none = NetSetup::default();
        let e = add_names(&mut none, &names).unwrap_err().to_string();
        assert!(e.contains("host-gateway"), "{e}");
        for bad in ["db", "db:", "db:nowhere", "two words:1.2.3.4", ":1.2.3.4"] {
            assert!(parse_add_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_appliance_s_network_entry_joins_beside_its_user_mode_one() {
        let appliance = appliance_spec::Appliance::parse(
            "[appliance]\nname = \"app\"\n[run]\ncommand = [\"/a\"]\n\
             [[vm.net]]\nports = [\"8080:80\"]\n\
             [[vm.net]]\nnetwork = \"backend\"\nmac = \"02:00:00:00:00:01\"\n\
             address = \"10.89.0.10/24\"\n",
            std::path::Path::new("/nowhere/appliance.toml"),
        )
        .unwrap();
        let args =
            crate::parse_run_args(&["run".into(), "--timeout".into(), "9".into(), "x".into()])
                .unwrap();
        let (nets, chosen) = plan_net(&args, Some(&appliance), false, &[]).unwrap();
        assert!(chosen.is_empty());
        assert_eq!(nets.len(), 2);
        assert_eq!((nets[0].network.as_deref(), nets[0].ports.len()), (None, 1));
        assert_eq!(nets[1].network.as_deref(), Some("backend"));
        assert_eq!(nets[1].mac, Some([2, 0, 0, 0, 0, 1]));
        // Its fixed address, which attach_net asks the hub for (or none).
        assert_eq!(nets[1].address, Some(([10, 89, 0, 10].into(), 24)));
        assert_eq!(nets[1].mtu, Some(crate::networks::MTU));
        // -p goes to the user-mode interface, never a network's.
        let args =
            crate::parse_run_args(&["run".into(), "-p".into(), "9090:90".into(), "x".into()])
                .unwrap();
        let (nets, _) = plan_net(&args, Some(&appliance), false, &[]).unwrap();
        assert_eq!((nets[0].ports.len(), nets[1].ports.len()), (2, 0));
        // --net none|user|tap: replace the appliance's entries, networks and all.
        let args =
            crate::parse_run_args(&["run".into(), "--net".into(), "user".into(), "x".into()])
                .unwrap();
        let (nets, _) = plan_net(&args, Some(&appliance), false, &[]).unwrap();
        assert_eq!(nets.len(), 1);
        assert!(nets[0].network.is_none());
        let two = crate::parse_run_args(&[
            "run".into(),
            "--net".into(),
            "user".into(),
            "--net".into(),
            "none".into(),
            "x".into(),
        ])
        .unwrap();
        let e = plan_net(&two, Some(&appliance), false, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("one of none, user and tap:NAME"), "{e}");
    }

    #[test]
    fn a_tap_takes_the_guests_address_mac_gateway_and_mtu() {
        let NetMode::Tap(net) =
            parse_net("tap:husk0,mac=02:00:00:aa:bb:cc,ip=10.88.0.5/16,gateway=10.88.0.1,mtu=1400")
                .unwrap()
        else {
            panic!("not a tap");
        };
        assert_eq!(net.tap.as_deref(), Some("husk0"));
        assert_eq!(net.mac, Some([2, 0, 0, 0xaa, 0xbb, 0xcc]));
        assert_eq!(net.address, Some(([10, 88, 0, 5].into(), 16)));
        assert_eq!(net.gateway, Some([10, 88, 0, 1].into()));
        assert_eq!(net.mtu, Some(1400));
        assert_eq!(net.address6, None);
        let NetMode::Tap(dual) =
            parse_net("tap:t0,ip=fd00:1::5/64,ip=10.0.0.5/24,gateway=fe80::1,gateway=10.0.0.1")
                .unwrap()
        else {
            panic!("not a tap");
        };
        assert_eq!(dual.address, Some(([10, 0, 0, 5].into(), 24)));
        assert_eq!(dual.address6, Some(("fd00:1::5".parse().unwrap(), 64)));
        assert_eq!(dual.gateway, Some([10, 0, 0, 1].into()));
        assert_eq!(dual.gateway6, Some("fe80::1".parse().unwrap()));
        assert_eq!(
            parse_net("backend").unwrap(),
            NetMode::Network("backend".into())
        );
        assert_eq!(
            parse_net("tap:t0").unwrap(),
            NetMode::Tap(Box::new(PlannedNet {
                tap: Some("t0".into()),
                ..PlannedNet::user(Vec::new())
            }))
        );
        for bad in [
            "tap:",
            "tap:a-name-far-too-long",
            "tap:t0,ip=10.0.0.1",
            "tap:t0,ip=fd00::1/129",
            "tap:t0,ip=10.0.0.1/24,ip=10.0.0.2/24",
            "tap:t0,ip=fd00::1/64,ip=fd00::2/64",
            "tap:t0,gateway=fe80::1,gateway=fe80::2",
            "tap:t0,mtu=big",
            "tap:t0,colour=red",
            "tap:t0,mac",
            "bridge",
            "-x",
        ] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
    }
}
