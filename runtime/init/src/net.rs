//! The guest's network, as `husk.net=` describes it: each interface's MTU,
//! address and default route (classic socket ioctls: no netlink, no `ip`
//! binary in the image), then `/etc/resolv.conf` and `/etc/hosts`.

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use husk_init::config::{InterfaceSetup, NetSetup};

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

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() has no memory preconditions; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
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
fn set_up(sock: &OwnedFd, name: &str) -> io::Result<()> {
    let mut req = ifreq(name)?;
    ioctl(sock, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(sock, libc::SIOCSIFFLAGS, &mut req)
}

/// `ip link set lo up`: every guest has loopback, network or not.
pub fn loopback_up() -> io::Result<()> {
    set_up(&socket()?, "lo")
}

/// Sets up one interface: MAC, MTU, address and netmask, up, default
/// route.
fn configure(sock: &OwnedFd, i: &InterfaceSetup) -> io::Result<()> {
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
    set_up(sock, &i.name)?;
    if let Some(gw) = i.gateway {
        let mut dev = std::ffi::CString::new(i.name.as_str())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))?
            .into_bytes_with_nul();
        let mut route = RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
            rt_gateway: sockaddr_in(gw),
            rt_genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
            rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: dev.as_mut_ptr().cast(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        // SAFETY: SIOCADDRT reads the rtentry we own; `dev` (its rt_dev)
        // is a NUL-terminated buffer alive across the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &mut route) } < 0 {
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
    if !net.dns.is_empty() {
        let text: String = net
            .dns
            .iter()
            .map(|a| format!("nameserver {a}\n"))
            .collect();
        if let Err(e) = install("/etc/resolv.conf", &text) {
            say(&format!("cannot write /etc/resolv.conf: {e}"));
        }
    }
    let own = net.interfaces.iter().find_map(|i| i.address);
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let (Some(addr), Some(name)) = (own, hostname) {
        hosts.push_str(&format!("{addr}\t{name}\n"));
    }
    if let Err(e) = install("/etc/hosts", &hosts) {
        say(&format!("cannot write /etc/hosts: {e}"));
    }
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
