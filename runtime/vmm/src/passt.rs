//! passt, the user-mode network: one passt process per VM, started by the
//! husk process before the VMM is built (the VMM itself never execs), and
//! given one end of a socket pair with `--fd`: there is no socket file to
//! find, race for or leave behind. passt runs in the foreground with
//! `--one-off`, so it quits as soon as the last holder of the other end
//! closes it, whichever way husk ends (even `kill -9`); it is a
//! [`Sidecar`], so it also gets SIGKILL when the thread that started it
//! dies, and its drop waits for it: nothing outlives a run.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::sidecar::{as_root, find_program, Sidecar};

/// A published port: `host_ip:host_port` on the host reaches `guest_port`
/// in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host_ip: Option<std::net::IpAddr>,
    pub host_port: u16,
    pub guest_port: u16,
    pub udp: bool,
}

/// The guest's IPv4 configuration on passt's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNet {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum PasstError {
    #[error(
        "passt is not installed: it gives VMs a network without root \
         (Debian: apt-get install passt); or run with --net none"
    )]
    Missing,
    #[error(
        "the host has no IPv4 default route, so passt cannot give the VM a network; \
         run with --net none, or attach a tap (--net tap:NAME)"
    )]
    NoRoute,
    #[error("cannot read the host's routes")]
    Routes(#[source] io::Error),
    #[error("cannot make a socket pair for passt")]
    Socket(#[source] io::Error),
    #[error("cannot start passt")]
    Spawn(#[source] io::Error),
    #[error("passt failed to start: {0}")]
    Failed(String),
}

/// The guest's MTU on passt's network, passt's own default: passt is
/// no wire, and large frames cost it (and the VMM) a fraction of the work
/// per byte that 1500-byte frames do (about twice the guest-to-host
/// throughput under the test bed).
pub const PASST_MTU: u16 = 65520;

/// The guest gets the host's own address, prefix and gateway on its
/// default route, as passt does by default (and as podman's pasta does):
/// the guest's connections leave with the host's address, and the gateway
/// address reaches the host itself (its loopback).
pub fn guest_net() -> Result<GuestNet, PasstError> {
    let routes = std::fs::read_to_string("/proc/net/route").map_err(PasstError::Routes)?;
    let (ifname, gateway) = default_route(&routes).ok_or(PasstError::NoRoute)?;
    let (address, prefix) = interface_ipv4(&ifname).ok_or(PasstError::NoRoute)?;
    Ok(GuestNet {
        address,
        prefix,
        gateway,
        mtu: PASST_MTU,
    })
}

/// The interface and gateway of the first IPv4 default route in
/// `/proc/net/route`'s text.
fn default_route(table: &str) -> Option<(String, Ipv4Addr)> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (iface, dest, gw, mask) = (f.first()?, f.get(1)?, f.get(2)?, f.get(7)?);
        if *dest != "00000000" || *mask != "00000000" {
            return None;
        }
        let gw = u32::from_str_radix(gw, 16).ok()?;
        // The kernel prints the address in host byte order of its bytes.
        Some((iface.to_string(), Ipv4Addr::from(gw.to_le_bytes())))
    })
}

/// The first IPv4 address of `ifname`, and its prefix length.
fn interface_ipv4(ifname: &str) -> Option<(Ipv4Addr, u8)> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, which
        // stays valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_netmask.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: ifa_addr is non-null and points at a sockaddr, whose
        // family field every address kind has first.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        if name.to_bytes() != ifname.as_bytes() || family != libc::AF_INET {
            continue;
        }
        // SAFETY: both are AF_INET sockaddrs (same family as the address).
        let (addr, mask) = unsafe {
            (
                *(ifa.ifa_addr as *const libc::sockaddr_in),
                *(ifa.ifa_netmask as *const libc::sockaddr_in),
            )
        };
        let address = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        let prefix = u32::from_be(mask.sin_addr.s_addr).count_ones() as u8;
        found = Some((address, prefix));
        break;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    found
}

/// A running passt, serving one VM.
pub struct Passt(Sidecar);

/// How long passt has to say it is ready (or why it is not).
const START_LIMIT: Duration = Duration::from_secs(5);

impl Passt {
    /// Starts passt for a guest configured as `net`, publishing `ports`.
    /// Returns it and the VMM's end of the socket.
    pub fn start(net: &GuestNet, ports: &[PortMapping]) -> Result<(Passt, OwnedFd), PasstError> {
        let binary = find_passt().ok_or(PasstError::Missing)?;
        let (ours, theirs) = UnixStream::pair().map_err(PasstError::Socket)?;
        let mut cmd = Command::new(binary);
        cmd.args(["--foreground", "--one-off", "--quiet", "--stderr"])
            .args(["--fd", &theirs.as_raw_fd().to_string()])
            .args(["--address", &net.address.to_string()])
            .args(["--netmask", &net.prefix.to_string()])
            .args(["--gateway", &net.gateway.to_string()])
            .args(["--mtu", &net.mtu.to_string()])
            // DNS queries to the gateway go to the host's resolver.
            .args(["--dns-forward", &net.gateway.to_string()])
            .arg("--ipv4-only");
        let tcp: Vec<String> = ports.iter().filter(|p| !p.udp).map(port_spec).collect();
        let udp: Vec<String> = ports.iter().filter(|p| p.udp).map(port_spec).collect();
        for spec in &tcp {
            cmd.args(["--tcp-ports", spec]);
        }
        for spec in &udp {
            cmd.args(["--udp-ports", spec]);
        }
        let fd = theirs.as_raw_fd();
        // As root, passt would drop to nobody and say so on every start.
        if as_root() {
            cmd.args(["--runas", "65534:65534"]);
        }
        // With --quiet it speaks only of errors: straight to the user.
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let mut passt = Passt(Sidecar::spawn(&mut cmd, fd).map_err(PasstError::Spawn)?);
        drop(theirs);
        passt.wait_ready(ports)?;
        Ok((passt, ours.into()))
    }

    /// passt is ready once its published TCP ports listen (it binds them
    /// before serving the guest); without any there is nothing to wait for.
    /// An early exit is an error (passt said why on stderr).
    fn wait_ready(&mut self, ports: &[PortMapping]) -> Result<(), PasstError> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(status) = self.0.exited() {
                return Err(PasstError::Failed(format!(
                    "it exited ({status}); its message is above"
                )));
            }
            let bound = ports.iter().filter(|p| !p.udp).all(|p| {
                let ip = p
                    .host_ip
                    .unwrap_or(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                port_bound(ip, p.host_port)
            });
            if bound {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(PasstError::Failed(
                    "it did not bind the published ports within 5 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn port_bound(ip: std::net::IpAddr, port: u16) -> bool {
    let table = match ip {
        std::net::IpAddr::V4(_) => "/proc/net/tcp",
        std::net::IpAddr::V6(_) => "/proc/net/tcp6",
    };
    let hex_port = format!(":{port:04X}");
    std::fs::read_to_string(table).is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local_address ends in :PORT, state 0A is LISTEN.
            f.get(1).is_some_and(|a| a.ends_with(&hex_port)) && f.get(3) == Some(&"0A")
        })
    })
}

fn port_spec(p: &PortMapping) -> String {
    match p.host_ip {
        Some(ip) => format!("{ip}/{}:{}", p.host_port, p.guest_port),
        None => format!("{}:{}", p.host_port, p.guest_port),
    }
}

fn find_passt() -> Option<PathBuf> {
    let distro = ["/usr/bin/passt", "/usr/sbin/passt"].map(PathBuf::from);
    find_program("HUSK_PASST", "passt", &distro)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_default_route() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(
            default_route(table),
            Some(("eth0".into(), Ipv4Addr::new(192, 0, 2, 1)))
        );
        assert_eq!(default_route("Iface\tDestination\n"), None);
    }

    #[test]
    fn port_specs_are_passt_syntax() {
        let p = PortMapping {
            host_ip: None,
            host_port: 8080,
            guest_port: 80,
            udp: false,
        };
        assert_eq!(port_spec(&p), "8080:80");
        let p = PortMapping {
            host_ip: Some("127.0.0.1".parse().unwrap()),
            ..p
        };
        assert_eq!(port_spec(&p), "127.0.0.1/8080:80");
    }
}
