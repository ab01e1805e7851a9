//! The network namespace a container tool made for a container (podman's
//! netavark or CNI, docker, CRI) becomes the VM's network, as Kata and
//! firecracker-containerd do it: a tap in that namespace, joined to the
//! namespace's interface by a tc mirred redirect each way, and the guest
//! given that interface's addresses (IPv4 and IPv6), MAC, gateways and
//! MTU. What the tool
//! set up around the interface (a bridge, NAT, published ports) then
//! reaches the guest unchanged.
//!
//! The namespace's own tools do the work (`ip`, `tc` from iproute2,
//! `nsenter` from util-linux), as a user would type it.

use std::path::Path;
use std::process::Command;

use anyhow::Context;

/// The tap husk makes in a container's namespace.
pub const TAP: &str = "husk0";

/// Joins `ns`'s first interface with an IPv4 or a global IPv6 address to
/// a new tap and returns `husk run`'s `--net` for it; `None` when the
/// namespace has no such interface (only its loopback: the guest gets
/// none either).
pub fn join(ns: &Path) -> anyhow::Result<Option<String>> {
    let links = ip_json(ns, &["addr", "show"])?;
    let found = links.as_array().into_iter().flatten().find_map(|l| {
        let name = l["ifname"].as_str()?;
        if name == "lo" || name == TAP {
            return None;
        }
        let addrs = l["addr_info"].as_array()?;
        // The guest makes its own link-local address from the MAC.
        let of = |family: &str| {
            addrs
                .iter()
                .find(|a| a["family"] == family && a["scope"] == "global")
                .and_then(|a| {
                    Some(format!(
                        "{}/{}",
                        a["local"].as_str()?,
                        a["prefixlen"].as_u64()?
                    ))
                })
        };
        let ips: Vec<String> = [of("inet"), of("inet6")].into_iter().flatten().collect();
        if ips.is_empty() {
            return None;
        }
        Some((
            name.to_string(),
            l["address"].as_str()?.to_string(),
            l["mtu"].as_u64().unwrap_or(1500),
            ips,
        ))
    });
    let Some((iface, mac, mtu, ips)) = found else {
        return Ok(None);
    };
    let mut gateways = Vec::new();
    for family in ["-4", "-6"] {
        let routes = ip_json(ns, &[family, "route", "show", "default"])?;
        gateways.extend(
            routes
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["dev"] == iface.as_str())
                .and_then(|r| r["gateway"].as_str())
                .map(str::to_string),
        );
    }
    let mtu = mtu.to_string();
    run(
        ns,
        &["ip", "tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr"],
    )?;
    let joined = (|| {
        run(ns, &["ip", "link", "set", TAP, "mtu", &mtu, "up"])?;
        for (from, to) in [(iface.as_str(), TAP), (TAP, iface.as_str())] {
            run(ns, &["tc", "qdisc", "add", "dev", from, "ingress"])?;
            run(
                ns,
                &[
                    "tc", "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all",
                    "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect",
                    "dev", to,
                ],
            )?;
        }
        anyhow::Ok(())
    })();
    if let Err(e) = joined {
        leave(ns);
        return Err(e);
    }
    let mut net = format!("tap:{TAP},mac={mac},mtu={mtu}");
    for ip in ips {
        net.push_str(&format!(",ip={ip}"));
    }
    for g in gateways {
        net.push_str(&format!(",gateway={g}"));
    }
    Ok(Some(net))
}

/// Undoes [`join`] in `ns` if it is still there: the tap (its filter goes
/// with it) and the ingress qdisc on the interface it was joined to.
pub fn leave(ns: &Path) {
    if !ns.exists() {
        return;
    }
    let _ = run(ns, &["ip", "link", "del", TAP]);
    let links = ip_json(ns, &["link", "show"]).unwrap_or_default();
    for name in links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| *n != "lo")
    {
        let _ = run(ns, &["tc", "qdisc", "del", "dev", name, "ingress"]);
    }
}

/// Puts this process into a new network namespace of its own, kept at
/// `path` (a bind mount of it, as `ip netns add` keeps one): the namespace
/// a container asked for without a path, which its hooks fill (docker
/// moves the container's interface into it) before it is joined. This
/// thread must be the process's main one, so that `/proc/PID/ns/net` (the
/// path docker's hook derives from the state's pid) is the new namespace.
pub fn own(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    std::fs::File::create(path)
        .with_context(|| format!("cannot make {} to keep a namespace", path.display()))?;
    // SAFETY: unshare with a constant flag; it changes only this thread's
    // network namespace (the caller's only thread).
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error();
        let _ = std::fs::remove_file(path);
        return Err(e).context("cannot make a network namespace for the container");
    }
    let target = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a bind mount of this thread's namespace file onto a file we
    // made; both strings are NUL-terminated and outlive the call.
    let mounted = unsafe {
        libc::mount(
            c"/proc/thread-self/ns/net".as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if mounted != 0 {
        let e = std::io::Error::last_os_error();
        let _ = std::fs::remove_file(path);
        return Err(e).with_context(|| format!("cannot keep the namespace at {}", path.display()));
    }
    Ok(())
}

/// Undoes [`own`] after [`leave`]: the namespace goes with its last user.
pub fn release(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    leave(path);
    if let Ok(target) = std::ffi::CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: umount2 of a path we bind-mounted; the string outlives
        // the call.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = std::fs::remove_file(path);
}

/// Moves this thread (and what it spawns) into the network namespace `ns`.
pub fn enter(ns: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let file =
        std::fs::File::open(ns).with_context(|| format!("network namespace {}", ns.display()))?;
    // SAFETY: setns with an open namespace fd; it changes only this
    // thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot enter the network namespace {}", ns.display()));
    }
    Ok(())
}

fn run(ns: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .arg("--")
        .args(args)
        .output()
        .context("nsenter (util-linux) is needed to join a container's network")?;
    if !out.status.success() {
        anyhow::bail!(
            "in the container's network namespace, {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip_json(ns: &Path, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut all = vec!["ip", "-j"];
    all.extend_from_slice(args);
    let text = run(ns, &all)?;
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    serde_json::from_str(&text).context("ip -j printed something that is not JSON")
}
