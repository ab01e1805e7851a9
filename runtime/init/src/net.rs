//! The guest's network, as `husk.net=` describes it: each interface's MTU,
//! IPv4 and IPv6 addresses and default routes (classic socket ioctls: no
//! netlink, no `ip` binary in the image), then `/etc/resolv.conf` and
//! `/etc/hosts`.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use husk_init::config::{InterfaceSetup, NetSetup, NetworkHosts, NETWORK_ETHERTYPE};

/// `struct rtentry` from `<net/route.h>` (glibc's libc crate lacks it).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16-byte plain C structs;
    // the kernel reads a sockaddr as the family says.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// `struct in6_rtmsg` from `<linux/ipv6_route.h>` (the libc crate's has
/// private fields).
#[repr(C)]
struct In6Rtmsg {
    dst: libc::in6_addr,
    src: libc::in6_addr,
    gateway: libc::in6_addr,
    kind: u32,
    dst_len: u16,
    src_len: u16,
    metric: u32,
    info: libc::c_ulong,
    flags: u32,
    ifindex: libc::c_int,
}

fn in6(addr: Ipv6Addr) -> libc::in6_addr {
    libc::in6_addr {
        s6_addr: addr.octets(),
    }
}

pub(crate) fn socket() -> io::Result<OwnedFd> {
    socket_of(libc::AF_INET)
}

fn socket_of(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket() has no memory preconditions; the result is checked.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an interface name",
        ));
    }
    // SAFETY: an all-zero ifreq is a valid value of this plain C struct.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// `ioctl(sock, request, &req)`, checked.
fn ioctl(sock: &OwnedFd, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: every request used here reads or writes one ifreq, which we
    // own and which outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, req as *mut libc::ifreq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `ip link set NAME up`.
pub(crate) fn set_up(sock: &OwnedFd, name: &str) -> io::Result<()> {
    let mut req = ifreq(name)?;
    ioctl(sock, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(sock, libc::SIOCSIFFLAGS, &mut req)
}

/// Has the kernel tell the network where this guest is whenever an
/// interface comes up or changes its address: a gratuitous ARP (IPv4) and
/// an unsolicited neighbour advertisement (IPv6) from its MAC.
fn notify_peers(name: &str) {
    for (family, key) in [("ipv4", "arp_notify"), ("ipv6", "ndisc_notify")] {
        let _ = fs::write(format!("/proc/sys/net/{family}/conf/{name}/{key}"), "1");
    }
}

/// Tells the network a guest restored from a snapshot is here, as a VM
/// does after a migration: each interface's MAC is set again, to itself,
/// and the kernel announces it ([`notify_peers`]). The host side is new
/// after a restore and has seen no frame of the guest's: passt learns the
/// guest's MAC from its first frame and until then sends to the broadcast
/// address, which the guest's TCP drops; a bridge has forgotten the port.
/// An interface that cannot be announced (one without an Ethernet
/// address, under another kernel) is reported and the others still are.
pub fn announce(say: impl Fn(&str)) {
    let sock = match socket() {
        Ok(s) => s,
        Err(e) => return say(&format!("cannot announce the guest's network: {e}")),
    };
    let names = fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo");
    for name in names {
        notify_peers(&name);
        let announced = ifreq(&name).and_then(|mut req| {
            ioctl(&sock, libc::SIOCGIFHWADDR, &mut req)?;
            ioctl(&sock, libc::SIOCSIFHWADDR, &mut req)
        });
        if let Err(e) = announced {
            say(&format!("cannot announce {name} to the network: {e}"));
        }
    }
}

/// `ip link set lo up`: every guest has loopback, network or not.
pub fn loopback_up() -> io::Result<()> {
    set_up(&socket()?, "lo")
}

/// Sets up one interface: MAC, MTU, address and netmask, up, default
/// route.
pub(crate) fn configure(sock: &OwnedFd, i: &InterfaceSetup) -> io::Result<()> {
    if let Some(mac) = i.mac {
        let mut req = ifreq(&i.name)?;
        // SAFETY: an all-zero sockaddr is a valid value of the plain C
        // struct; the family and the first 6 data bytes are set below.
        let mut hw: libc::sockaddr = unsafe { std::mem::zeroed() };
        hw.sa_family = libc::ARPHRD_ETHER;
        for (dst, src) in hw.sa_data.iter_mut().zip(mac) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_hwaddr = hw;
        ioctl(sock, libc::SIOCSIFHWADDR, &mut req)?;
    }
    if let Some(mtu) = i.mtu {
        let mut req = ifreq(&i.name)?;
        req.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
        ioctl(sock, libc::SIOCSIFMTU, &mut req)?;
    }
    if let Some(addr) = i.address {
        let mut req = ifreq(&i.name)?;
        req.ifr_ifru.ifru_addr = sockaddr_in(addr);
        ioctl(sock, libc::SIOCSIFADDR, &mut req)?;
        let mask = u32::MAX.checked_shl(32 - u32::from(i.prefix)).unwrap_or(0);
        let mut req = ifreq(&i.name)?;
        req.ifr_ifru.ifru_netmask = sockaddr_in(Ipv4Addr::from(mask));
        ioctl(sock, libc::SIOCSIFNETMASK, &mut req)?;
    }
    notify_peers(&i.name);
    set_up(sock, &i.name)?;
    if let Some(gw) = i.gateway {
        add_route(sock, &i.name, Ipv4Addr::UNSPECIFIED, 0, Some(gw), 0)?;
    }
    if i.address6.is_some() || i.gateway6.is_some() {
        configure6(sock, i)?;
    }
    Ok(())
}

/// `ip route add DESTINATION/PREFIX [via GATEWAY] dev NAME metric
/// METRIC`; without a gateway the destination is on the link.
pub(crate) fn add_route(
    sock: &OwnedFd,
    name: &str,
    destination: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
    metric: u16,
) -> io::Result<()> {
    let mut dev = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))?
        .into_bytes_with_nul();
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    let mut flags = libc::RTF_UP;
    if gateway.is_some() {
        flags |= libc::RTF_GATEWAY;
    }
    if prefix == 32 {
        flags |= libc::RTF_HOST;
    }
    let mut route = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_in(destination),
        rt_gateway: sockaddr_in(gateway.unwrap_or(Ipv4Addr::UNSPECIFIED)),
        rt_genmask: sockaddr_in(Ipv4Addr::from(mask)),
        rt_flags: flags,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        // The ioctl's metric is one more than the route's (0: none given).
        rt_metric: metric.saturating_add(1) as libc::c_short,
        rt_dev: dev.as_mut_ptr().cast(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: SIOCADDRT reads the rtentry we own; `dev` (its rt_dev) is a
    // NUL-terminated buffer alive across the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &mut route) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes the interface's IPv4 address off (`ifconfig NAME 0.0.0.0`, the
/// one address a DHCP lease gives); the kernel drops the routes through
/// it with it.
pub(crate) fn clear_addresses(sock: &OwnedFd, name: &str) -> io::Result<()> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    ioctl(sock, libc::SIOCSIFADDR, &mut req)
}

/// The IPv6 address and default route of an interface that is up. The
/// address is the guest's alone (the host side gave it out), so it is
/// used at once, without duplicate address detection, as container
/// networks add theirs.
fn configure6(sock: &OwnedFd, i: &InterfaceSetup) -> io::Result<()> {
    let mut req = ifreq(&i.name)?;
    ioctl(sock, libc::SIOCGIFINDEX, &mut req)?;
    // SAFETY: SIOCGIFINDEX filled the ifindex member of the union.
    let ifindex = unsafe { req.ifr_ifru.ifru_ifindex };
    let sock6 = socket_of(libc::AF_INET6)?;
    if let Some((addr, prefix)) = i.address6 {
        let _ = fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/accept_dad", i.name),
            "0",
        );
        let mut req = libc::in6_ifreq {
            ifr6_addr: in6(addr),
            ifr6_prefixlen: u32::from(prefix),
            ifr6_ifindex: ifindex,
        };
        // SAFETY: SIOCSIFADDR on an AF_INET6 socket reads one in6_ifreq,
        // which we own and which outlives the call.
        if unsafe { libc::ioctl(sock6.as_raw_fd(), libc::SIOCSIFADDR, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if let Some(gw) = i.gateway6 {
        let mut route = In6Rtmsg {
            dst: in6(Ipv6Addr::UNSPECIFIED),
            src: in6(Ipv6Addr::UNSPECIFIED),
            gateway: in6(gw),
            kind: 0,
            dst_len: 0,
            src_len: 0,
            metric: 0,
            info: 0,
            flags: u32::from(libc::RTF_UP | libc::RTF_GATEWAY),
            ifindex,
        };
        // SAFETY: SIOCADDRT on an AF_INET6 socket reads one in6_rtmsg,
        // laid out as the kernel's, which we own for the call.
        if unsafe { libc::ioctl(sock6.as_raw_fd(), libc::SIOCADDRT, &mut route) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets up every interface and the resolver files. Problems are reported
/// and setup goes on: the command still runs, as it would on a host
/// whose network is down.
pub fn setup(net: &NetSetup, hostname: Option<&str>, say: impl Fn(&str)) {
    let sock = match socket() {
        Ok(s) => s,
        Err(e) => return say(&format!("cannot set up the network: {e}")),
    };
    for i in &net.interfaces {
        if let Err(e) = configure(&sock, i) {
            say(&format!("cannot set up {}: {e}", i.name));
        }
    }
    write_files(net, hostname, say);
}

/// `/etc/resolv.conf` (when `net` has anything for it) and `/etc/hosts`.
pub fn write_files(net: &NetSetup, hostname: Option<&str>, say: impl Fn(&str)) {
    if !net.dns.is_empty() || !net.search.is_empty() || !net.options.is_empty() {
        let mut text: String = net
            .dns
            .iter()
            .map(|a| format!("nameserver {a}\n"))
            .collect();
        if !net.search.is_empty() {
            text.push_str(&format!("search {}\n", net.search.join(" ")));
        }
        if !net.options.is_empty() {
            text.push_str(&format!("options {}\n", net.options.join(" ")));
        }
        if let Err(e) = install("/etc/resolv.conf", &text) {
            say(&format!("cannot write /etc/resolv.conf: {e}"));
        }
    }
    let own = own_hosts(net, hostname);
    if let Err(e) = install("/etc/hosts", &own) {
        say(&format!("cannot write /etc/hosts: {e}"));
    }
    hosts().own = own;
}

/// The guest's own `/etc/hosts` lines: localhost, its hostname at its
/// first addresses, `--add-host`'s and, last, the names of its husk
/// networks' members as `husk run` found them.
fn own_hosts(net: &NetSetup, hostname: Option<&str>) -> String {
    let own = net.interfaces.iter().find_map(|i| i.address);
    let own6 = net.interfaces.iter().find_map(|i| i.address6);
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(name) = hostname {
        if let Some(addr) = own {
            hosts.push_str(&format!("{addr}\t{name}\n"));
        }
        if let Some((addr, _)) = own6 {
            hosts.push_str(&format!("{addr}\t{name}\n"));
        }
    }
    for h in &net.hosts {
        hosts.push_str(&format!("{}\t{}\n", h.address, h.name));
    }
    hosts
}

/// What init keeps in `/etc/hosts`: the guest's own lines, then the
/// names of each husk network's members, by interface (`None` until its
/// hub answered). Interfaces come (at boot, and with
/// `husk network connect`) and go (`disconnect`).
struct Hosts {
    own: String,
    networks: Vec<Followed>,
    /// Numbers the followers, so one whose interface went cannot touch an
    /// interface of the same name that came after.
    next: u64,
}

struct Followed {
    id: u64,
    interface: String,
    lines: Option<String>,
}

static HOSTS: Mutex<Hosts> = Mutex::new(Hosts {
    own: String::new(),
    networks: Vec::new(),
    next: 0,
});
static ANSWERED: Condvar = Condvar::new();

fn hosts() -> std::sync::MutexGuard<'static, Hosts> {
    HOSTS.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hosts {
    fn text(&self) -> String {
        let mut text = self.own.clone();
        for f in &self.networks {
            text.push_str(f.lines.as_deref().unwrap_or_default());
        }
        text
    }

    fn rewrite(&self, say: fn(&str)) {
        if let Err(e) = rewrite_hosts(&self.text()) {
            say(&format!("cannot update /etc/hosts: {e}"));
        }
    }
}

/// Keeps `/etc/hosts` up to date with the members of the guest's husk
/// networks: one thread per such interface asks the network's hub for
/// the names and rewrites the file with each answer, and with each list
/// the hub sends when a member joins or leaves. Returns once every hub
/// answered (the command starts knowing the names, as a container on a
/// docker network does), or after a second. Called once the signals init
/// waits for are blocked, so the threads never take them.
pub fn follow_networks(net: &NetSetup, say: fn(&str)) {
    let ids: Vec<u64> = net
        .interfaces
        .iter()
        .filter_map(|i| Some(start_following(&i.name, i.network.as_deref()?, say)))
        .collect();
    if !wait_for_names(&ids) {
        say("a network's hub did not send its names within a second: /etc/hosts follows later");
    }
}

/// Starts following the names of `network` on `interface`; its id.
fn start_following(interface: &str, network: &str, say: fn(&str)) -> u64 {
    let id = {
        let mut all = hosts();
        all.next += 1;
        let id = all.next;
        all.networks.push(Followed {
            id,
            interface: interface.to_string(),
            lines: None,
        });
        id
    };
    let (interface, network) = (interface.to_string(), network.to_string());
    let followed = std::thread::Builder::new()
        .name(format!("hosts-{interface}"))
        .spawn(move || {
            let result = follow(&interface, |lines| {
                let mut all = hosts();
                if let Some(f) = all.networks.iter_mut().find(|f| f.id == id) {
                    f.lines = Some(lines);
                    all.rewrite(say);
                }
                ANSWERED.notify_all();
            });
            // An interface taken out (disconnected) ends its follower.
            let followed = hosts().networks.iter().any(|f| f.id == id);
            if let (Err(e), true) = (result, followed) {
                say(&format!("names of network {network} ({interface}): {e}"));
            }
        });
    if let Err(e) = followed {
        say(&format!("cannot follow network names: {e}"));
    }
    id
}

/// Waits up to a second for the hubs of followers `ids` to answer; true
/// when all did.
fn wait_for_names(ids: &[u64]) -> bool {
    let all = hosts();
    let waiting = |all: &mut Hosts| {
        all.networks
            .iter()
            .any(|f| ids.contains(&f.id) && f.lines.is_none())
    };
    let waited = ANSWERED.wait_timeout_while(all, Duration::from_secs(1), waiting);
    waited.is_ok_and(|(_, t)| !t.timed_out())
}

/// The platform device of slot `device` (`virtio-mmio.N`).
fn slot_device(device: u32) -> std::path::PathBuf {
    Path::new("/sys/bus/platform/devices").join(format!("virtio-mmio.{device}"))
}

/// The network interface of the virtio device behind platform device
/// `platform`, if a driver holds one there.
fn interface_of(platform: &Path) -> Option<String> {
    fs::read_dir(platform)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("virtio"))
        .find_map(|e| {
            let mut names = fs::read_dir(e.path().join("net")).ok()?.flatten();
            Some(names.next()?.file_name().to_string_lossy().into_owned())
        })
}

/// Takes the interface the VMM has put into slot `device`: the kernel
/// probes the slot again and finds it; it gets its address and follows
/// the names of `network`. Its name (`eth1`, ...).
pub fn plug(
    device: u32,
    network: &str,
    (address, prefix): (Ipv4Addr, u8),
    address6: Option<(Ipv6Addr, u8)>,
    say: fn(&str),
) -> io::Result<String> {
    let platform = slot_device(device);
    if !platform.exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("this guest has no device virtio-mmio.{device}"),
        ));
    }
    if interface_of(&platform).is_none() {
        let name = format!("virtio-mmio.{device}");
        fs::write("/sys/bus/platform/drivers_probe", name)?;
    }
    let name = interface_of(&platform).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no network interface came up in virtio-mmio.{device}"),
        )
    })?;
    let setup = InterfaceSetup {
        name: name.clone(),
        address: Some(address),
        prefix,
        gateway: None,
        mtu: None,
        mac: None,
        address6,
        gateway6: None,
        network: Some(network.to_string()),
    };
    configure(&socket()?, &setup)?;
    {
        // A guest booted without husk's network setup has the image's
        // own /etc/hosts: the network's names go after its lines.
        let mut all = hosts();
        if all.own.is_empty() {
            all.own = fs::read_to_string("/etc/hosts")
                .unwrap_or_else(|_| "127.0.0.1\tlocalhost\n".into());
        }
    }
    let id = start_following(&name, network, say);
    if !wait_for_names(&[id]) {
        say(&format!(
            "network {network}'s hub did not send its names within a second: /etc/hosts follows later"
        ));
    }
    Ok(name)
}

/// Lets go of the interface in slot `device`: its network's names leave
/// `/etc/hosts`, and its driver is unbound (the interface goes), so the
/// VMM can take the device out.
pub fn unplug(device: u32, say: fn(&str)) -> io::Result<()> {
    let platform = slot_device(device);
    if let Some(name) = interface_of(&platform) {
        let mut all = hosts();
        all.networks.retain(|f| f.interface != name);
        all.rewrite(say);
    }
    if platform.join("driver").exists() {
        let name = format!("virtio-mmio.{device}");
        fs::write("/sys/bus/platform/drivers/virtio-mmio/unbind", name)?;
    }
    Ok(())
}

/// Asks the hub behind `interface` for the network's names, then hands
/// every list it sends to `update` as `/etc/hosts` lines; returns only on
/// an error.
fn follow(interface: &str, mut update: impl FnMut(String)) -> io::Result<()> {
    let ifindex = {
        let sock = socket()?;
        let mut req = ifreq(interface)?;
        ioctl(&sock, libc::SIOCGIFINDEX, &mut req)?;
        // SAFETY: SIOCGIFINDEX filled the ifindex member of the union.
        unsafe { req.ifr_ifru.ifru_ifindex }
    };
    let proto = NETWORK_ETHERTYPE.to_be();
    // SAFETY: socket() takes no pointers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto)) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_ll is a valid value of the plain C
    // struct; the fields that matter are set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex;
    addr.sll_halen = 6;
    addr.sll_addr[..6].fill(0xff);
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    let at = (&addr as *const libc::sockaddr_ll).cast::<libc::sockaddr>();
    // SAFETY: `addr` is a sockaddr_ll of `len` bytes alive for the call.
    if unsafe { libc::bind(fd.as_raw_fd(), at, len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let ask = b"names?";
    // SAFETY: the buffer and the address are ours and alive for the call.
    if unsafe { libc::sendto(fd.as_raw_fd(), ask.as_ptr().cast(), ask.len(), 0, at, len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 1 << 16];
    loop {
        // SAFETY: `buf` is ours, writable for its length, for the call.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // A frame that is not a list is not the hub's: left alone.
        if let Ok(hosts) = serde_json::from_slice::<NetworkHosts>(&buf[..n as usize]) {
            update(hosts.lines());
        }
    }
}

/// Writes `/etc/hosts` whole: beside it and renamed over it, or, on a
/// read-only root, into the file [`install`] mounted over it.
fn rewrite_hosts(text: &str) -> io::Result<()> {
    let staged = Path::new("/run/husk/hosts");
    if staged.exists() {
        return fs::write(staged, text);
    }
    fs::write("/etc/.hosts.husk", text)?;
    fs::rename("/etc/.hosts.husk", "/etc/hosts")
}

/// Writes `path`, or, on a read-only root, mounts a file with the text
/// over it (as container runtimes bind-mount theirs).
fn install(path: &str, text: &str) -> io::Result<()> {
    let _ = fs::create_dir_all("/etc");
    match fs::write(path, text) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() != Some(libc::EROFS) => return Err(e),
        Err(_) => {}
    }
    if !Path::new(path).exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the root is read-only and the file does not exist to mount over",
        ));
    }
    let name = Path::new(path).file_name().expect("a file path");
    let staged = Path::new("/run/husk").join(name);
    fs::create_dir_all("/run/husk")?;
    fs::write(&staged, text)?;
    let src = std::ffi::CString::new(staged.as_os_str().as_encoded_bytes())
        .map_err(|_| io::ErrorKind::InvalidInput)?;
    let dst = std::ffi::CString::new(path).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: both are NUL-terminated paths alive across the call; a bind
    // mount takes no filesystem type or data.
    let ret = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
