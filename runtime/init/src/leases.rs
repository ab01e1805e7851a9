//! DHCP on an exported appliance's machine (`husk.portable`): one client
//! ([`husk_init::dhcp::Client`]) per Ethernet card, each in a thread of
//! its own that keeps its lease for as long as the machine runs, and the
//! resolver files written from all the leases held.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use husk_init::config::{InterfaceSetup, NetSetup};
use husk_init::dhcp::{self, Action, Client, Destination, Lease};

use crate::net;

/// How long the command waits for every card's first lease, as a
/// service's host waits for its network to be online.
const WAIT: Duration = Duration::from_secs(10);
/// How long a card with no link yet gets before its first DISCOVER (one
/// sent without a link is lost).
const CARRIER_WAIT: Duration = Duration::from_secs(3);
/// Hyper-V's cards appear after init starts (VMBus offers them late);
/// this long for the first.
const LATE_CARD_WAIT: Duration = Duration::from_secs(2);

/// Each card's lease, `None` while it asks.
#[derive(Default)]
struct Shared {
    leases: Mutex<BTreeMap<String, Option<Lease>>>,
    changed: Condvar,
}

/// Starts a client on every Ethernet card and returns once each has its
/// first lease, or after [`WAIT`]: the clients go on either way. Called
/// once the signals init waits for are blocked, so the threads never take
/// them.
pub fn start(hostname: Option<&str>, say: fn(&str)) {
    let shared = Arc::new(Shared::default());
    let began = Instant::now();
    let card_wait = if hyperv() {
        LATE_CARD_WAIT
    } else {
        Duration::ZERO
    };
    let mut started = BTreeSet::new();
    loop {
        for (name, mac) in ethernet_cards() {
            if !started.insert(name.clone()) {
                continue;
            }
            lock(&shared.leases).insert(name.clone(), None);
            let (ours, hostname) = (shared.clone(), hostname.map(str::to_owned));
            let spawned = std::thread::Builder::new()
                .name(format!("dhcp-{name}"))
                .spawn({
                    let name = name.clone();
                    // eth0's routes first: NetworkManager's metrics.
                    let metric = 100 + started.len() as u16 - 1;
                    move || keep_lease(&name, mac, metric, hostname.as_deref(), &ours, say)
                });
            if let Err(e) = spawned {
                say(&format!("{name}: cannot start its DHCP client: {e}"));
                lock(&shared.leases).remove(&name);
            }
        }
        let leases = lock(&shared.leases);
        let asking: Vec<&String> = leases
            .iter()
            .filter(|(_, l)| l.is_none())
            .map(|(n, _)| n)
            .collect();
        if asking.is_empty() && (!leases.is_empty() || began.elapsed() >= card_wait) {
            return;
        }
        if began.elapsed() >= WAIT {
            let names: Vec<&str> = asking.iter().map(|n| n.as_str()).collect();
            say(&format!(
                "no DHCP lease for {} after {} s: the command starts, and the card keeps asking",
                names.join(", "),
                WAIT.as_secs()
            ));
            return;
        }
        drop(asking);
        let _ = shared
            .changed
            .wait_timeout(leases, Duration::from_millis(100));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether this is a Hyper-V (or Azure) machine: it has a VMBus.
fn hyperv() -> bool {
    fs::read_dir("/sys/bus/vmbus/devices").is_ok_and(|mut d| d.next().is_some())
}

/// The Ethernet cards (`/sys/class/net/*/type` 1) and their MACs.
fn ethernet_cards() -> Vec<(String, [u8; 6])> {
    let mut cards = Vec::new();
    for entry in fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let ether = fs::read_to_string(path.join("type")).is_ok_and(|t| t.trim() == "1");
        let mac = fs::read_to_string(path.join("address"))
            .ok()
            .and_then(|a| parse_mac(a.trim()));
        if let (true, Some(mac), false) = (ether, mac, name == "lo") {
            cards.push((name, mac));
        }
    }
    cards.sort();
    cards
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    (parts.next().is_none() && mac != [0; 6]).then_some(mac)
}

/// One card's client, for as long as the machine runs.
fn keep_lease(
    name: &str,
    mac: [u8; 6],
    metric: u16,
    hostname: Option<&str>,
    shared: &Shared,
    say: fn(&str),
) {
    let sock = match net::socket() {
        Ok(s) => s,
        Err(e) => return say(&format!("{name}: DHCP: {e}")),
    };
    if let Err(e) = net::set_up(&sock, name) {
        return say(&format!("{name}: cannot bring it up for DHCP: {e}"));
    }
    let udp = match client_socket(name) {
        Ok(s) => s,
        Err(e) => return say(&format!("{name}: cannot open DHCP's port: {e}")),
    };
    wait_for_carrier(name);
    let seed =
        random_seed() ^ u64::from_be_bytes([0, 0, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]]);
    let mut client = Client::new(mac, hostname, seed, Instant::now());
    let mut buf = vec![0u8; 1 << 16];
    let mut send_failed = false;
    loop {
        let mut actions = client.poll(Instant::now());
        let timeout = client.deadline().map(|d| {
            d.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        });
        if actions.is_empty() {
            if let Err(e) = udp.set_read_timeout(timeout) {
                return say(&format!("{name}: DHCP: {e}"));
            }
            match udp.recv(&mut buf) {
                Ok(n) => {
                    // What is not a reply to this client is dropped.
                    actions = client
                        .receive(&buf[..n], Instant::now())
                        .unwrap_or_default();
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) => {
                    say(&format!("{name}: DHCP: {e}"));
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        for action in actions {
            match action {
                Action::Send { to, packet } => {
                    let at = match to {
                        Destination::Broadcast => Ipv4Addr::BROADCAST,
                        Destination::Server(a) => a,
                    };
                    let sent = udp.send_to(&packet, SocketAddrV4::new(at, dhcp::SERVER_PORT));
                    // Said once, not on every retry: the link may be down.
                    if let (Err(e), false) = (sent, send_failed) {
                        say(&format!(
                            "{name}: cannot send to the DHCP server at {at}: {e}"
                        ));
                        send_failed = true;
                    }
                }
                Action::Bind { lease, previous } => {
                    bind(&sock, name, &lease, previous.as_ref(), metric, say);
                    lock(&shared.leases).insert(name.to_owned(), Some(lease));
                    write_resolver(shared, hostname, say);
                    shared.changed.notify_all();
                }
                Action::Unbind { lease, why } => {
                    say(&format!("{name}: {} given up: {why}", lease.address));
                    if let Err(e) = net::clear_addresses(&sock, name) {
                        say(&format!("{name}: cannot take {} off: {e}", lease.address));
                    }
                    lock(&shared.leases).insert(name.to_owned(), None);
                    write_resolver(shared, hostname, say);
                }
                Action::Refused { server, why } => {
                    let from = server.map_or(String::new(), |s| format!(" at {s}"));
                    say(&format!("{name}: the DHCP server{from} refused: {why}"));
                }
            }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Sets the card up from `lease`; on a renewal that changed nothing of
/// the card's own, leaves it as it is.
fn bind(
    sock: &OwnedFd,
    name: &str,
    lease: &Lease,
    previous: Option<&Lease>,
    metric: u16,
    say: fn(&str),
) {
    if previous.is_some_and(|p| p.same_interface(lease)) {
        return;
    }
    if previous.is_some() {
        if let Err(e) = net::clear_addresses(sock, name) {
            say(&format!("{name}: cannot take the old address off: {e}"));
        }
    }
    let setup = InterfaceSetup {
        name: name.to_owned(),
        address: Some(lease.address),
        prefix: lease.prefix,
        mtu: lease.mtu,
        ..InterfaceSetup::default()
    };
    if let Err(e) = net::configure(sock, &setup) {
        return say(&format!(
            "{name}: cannot set {}/{}: {e}",
            lease.address, lease.prefix
        ));
    }
    let subnet = |a: Ipv4Addr| {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(lease.prefix))
            .unwrap_or(0);
        u32::from(a) & mask == u32::from(lease.address) & mask
    };
    for route in &lease.routes {
        let gateway = Some(route.gateway).filter(|g| !g.is_unspecified());
        // A cloud's /32 lease: its gateway is on the link, outside the
        // subnet, and needs a route of its own first.
        if let Some(gw) = gateway.filter(|g| !subnet(*g)) {
            let _ = net::add_route(sock, name, gw, 32, None, metric);
        }
        let added = net::add_route(sock, name, route.destination, route.prefix, gateway, metric);
        if let Err(e) = added.or_else(exists_is_fine) {
            say(&format!(
                "{name}: cannot add the route to {}/{}: {e}",
                route.destination, route.prefix
            ));
        }
    }
    let lasting = lease
        .duration
        .map_or("for good".into(), |d| format!("for {} s", d.as_secs()));
    say(&format!(
        "{name}: {}/{} from the DHCP server at {}, {lasting}",
        lease.address, lease.prefix, lease.server
    ));
}

fn exists_is_fine(e: io::Error) -> io::Result<()> {
    match e.raw_os_error() {
        Some(libc::EEXIST) => Ok(()),
        _ => Err(e),
    }
}

/// `/etc/resolv.conf` and `/etc/hosts` from every lease held, the cards in
/// name order (eth0's name servers first).
fn write_resolver(shared: &Shared, hostname: Option<&str>, say: fn(&str)) {
    let leases = lock(&shared.leases);
    let mut setup = NetSetup::default();
    for (name, lease) in leases.iter() {
        let Some(lease) = lease else { continue };
        setup.interfaces.push(InterfaceSetup {
            name: name.clone(),
            address: Some(lease.address),
            prefix: lease.prefix,
            ..InterfaceSetup::default()
        });
        for &a in &lease.dns {
            if !setup.dns.contains(&a.into()) {
                setup.dns.push(a.into());
            }
        }
        for s in &lease.search {
            if !setup.search.contains(s) {
                setup.search.push(s.clone());
            }
        }
    }
    net::write_files(&setup, hostname, say);
}

/// UDP port 68 on this card alone, broadcasts allowed: the card has no
/// address yet, so the socket is tied to it rather than to an address.
fn client_socket(name: &str) -> io::Result<UdpSocket> {
    // SAFETY: socket() takes no pointers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    for (option, value, len) in [
        (libc::SO_REUSEADDR, (&one as *const libc::c_int).cast(), 4),
        (libc::SO_BROADCAST, (&one as *const libc::c_int).cast(), 4),
        (libc::SO_BINDTODEVICE, name.as_ptr().cast(), name.len()),
    ] {
        // SAFETY: each value points at `len` readable bytes (`one`, or
        // the name's) alive across the call.
        let ret = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                value,
                len as libc::socklen_t,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: dhcp::CLIENT_PORT.to_be(),
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` is a sockaddr_in of `len` bytes alive for the call.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            len,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(UdpSocket::from(fd))
}

/// Waits until the card has a link, at most [`CARRIER_WAIT`].
fn wait_for_carrier(name: &str) {
    let began = Instant::now();
    let path = format!("/sys/class/net/{name}/carrier");
    while began.elapsed() < CARRIER_WAIT {
        if fs::read_to_string(&path).is_ok_and(|c| c.trim() == "1") {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Eight bytes from the kernel's generator (transaction ids need not be
/// secret, only differ between machines and boots).
fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    u64::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_read_as_sysfs_writes_them() {
        assert_eq!(
            parse_mac("52:54:00:12:34:5f"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x5f])
        );
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "zz:54:00:12:34:56",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
        assert_eq!(parse_mac("00:00:00:00:00:00"), None, "no address at all");
    }
}
