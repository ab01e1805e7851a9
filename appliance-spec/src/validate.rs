//! Checks that span fields or need the host: ranges, required fields,
//! duplicates, and host files that must exist. Each problem is returned with
//! the field path it belongs to; the caller places it in the file.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::diag::{path, FieldPath};
use crate::model::{Appliance, Health, ImageFormat, KernelRef, Ready, Vm};
use crate::values::{ByteSize, ImageSize, Source};

pub(crate) type Problems = Vec<(FieldPath, String)>;

/// Every check that needs only the parsed file.
pub(crate) fn check(a: &Appliance) -> Problems {
    let mut p = Problems::new();
    check_metadata(a, &mut p);
    check_rootfs(a, &mut p);
    check_run(a, &mut p);
    check_vm(&a.vm, &mut p);
    p
}

/// Host files the appliance names must exist (paths already resolved
/// against the appliance file's folder).
pub(crate) fn check_host_paths(a: &Appliance) -> Problems {
    let mut p = Problems::new();
    let mut need = |field: FieldPath, file: &Path, want_dir: bool| {
        let what = if want_dir { "directory" } else { "file" };
        match std::fs::metadata(file) {
            Ok(m) if m.is_dir() == want_dir => {}
            Ok(_) => p.push((field, format!("{} is not a {what}", file.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                p.push((field, format!("{} does not exist", file.display())))
            }
            Err(e) => p.push((field, format!("{}: {e}", file.display()))),
        }
    };
    if let Some(host) = a.rootfs.from.host_path() {
        let is_dir = matches!(a.rootfs.from, Source::OciLayout { .. } | Source::Dir(_));
        need(path("rootfs.from"), host, is_dir);
    }
    for (i, f) in a.rootfs.files.iter().enumerate() {
        if let Some(src) = &f.src {
            need(path("rootfs.files").index(i).key("src"), src, false);
        }
    }
    if let KernelRef::Path(k) = &a.vm.kernel {
        need(path("vm.kernel"), k, false);
    }
    if let Some(initrd) = &a.vm.initrd {
        need(path("vm.initrd"), initrd, false);
    }
    for (i, d) in a.vm.disks.iter().enumerate() {
        need(path("vm.disks").index(i).key("path"), &d.path, false);
    }
    for (i, s) in a.vm.shares.iter().enumerate() {
        if let Some(host) = &s.host {
            need(path("vm.shares").index(i).key("host"), host, true);
        }
    }
    p
}

fn check_metadata(a: &Appliance, p: &mut Problems) {
    let name = &a.appliance.name;
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        p.push((
            path("appliance.name"),
            format!(
                "{name:?} is not a valid name; use 1 to 63 of a-z, 0-9 and '-', \
                 not starting or ending with '-'"
            ),
        ));
    }
}

fn check_rootfs(a: &Appliance, p: &mut Problems) {
    let r = &a.rootfs;
    if matches!(r.from, Source::Dir(_)) {
        // The folder is the root as it is: husk writes nothing into it.
        let added = [
            ("rootfs.files", r.files.is_empty()),
            ("rootfs.dirs", r.dirs.is_empty()),
            ("rootfs.symlinks", r.symlinks.is_empty()),
        ];
        for (field, empty) in added {
            if !empty {
                p.push((
                    path(field),
                    "a root from a folder (from = \"dir:...\") is booted as it is; \
                     put what you would add here into the folder"
                        .into(),
                ));
            }
        }
        if r.format == ImageFormat::Initramfs || r.size != ImageSize::default() {
            p.push((
                path("rootfs.format"),
                "a root from a folder has no image format or size; remove them".into(),
            ));
        }
    }
    if let ImageSize::Fixed(size) = r.size {
        if r.format == ImageFormat::Initramfs {
            p.push((
                path("rootfs.size"),
                "an initramfs has no fixed size; remove size or use format = \"ext4\"".into(),
            ));
        } else if size < ByteSize::mib(1) {
            p.push((
                path("rootfs.size"),
                format!("{size} is too small; an ext4 image needs at least 1MiB"),
            ));
        }
    }

    // Every destination in the image is written once.
    let mut seen = HashMap::new();
    for (i, f) in r.files.iter().enumerate() {
        let at = path("rootfs.files").index(i);
        match (&f.src, &f.content) {
            (Some(_), Some(_)) => p.push((
                at.clone().key("content"),
                "give either src or content, not both".into(),
            )),
            (None, None) => p.push((
                at.clone().key("src"),
                "required; give src = \"host/path\" or content = \"...\"".into(),
            )),
            _ => {}
        }
        claim(&mut seen, at.key("dst"), f.dst.as_path(), p);
    }
    for (i, d) in r.dirs.iter().enumerate() {
        claim(
            &mut seen,
            path("rootfs.dirs").index(i).key("path"),
            d.path.as_path(),
            p,
        );
    }
    for (i, s) in r.symlinks.iter().enumerate() {
        let at = path("rootfs.symlinks").index(i);
        if s.target.is_empty() {
            p.push((at.clone().key("target"), "must not be empty".into()));
        }
        claim(&mut seen, at.key("path"), s.path.as_path(), p);
    }
}

/// Records that `dst` is written by `field`, or reports who wrote it first.
fn claim<'a>(
    seen: &mut HashMap<&'a Path, FieldPath>,
    field: FieldPath,
    dst: &'a Path,
    p: &mut Problems,
) {
    if dst == Path::new("/") {
        p.push((field, "cannot replace the root directory \"/\"".into()));
    } else if let Some(first) = seen.get(dst) {
        let text = format!("{} is already given at {first}", dst.display());
        p.push((field, text));
    } else {
        seen.insert(dst, field);
    }
}

fn check_run(a: &Appliance, p: &mut Problems) {
    let run = &a.run;
    match &run.command {
        None if matches!(a.rootfs.from, Source::Scratch | Source::Dir(_)) => p.push((
            path("run.command"),
            "required when rootfs.from is \"scratch\" or a folder (nothing else says what \
             to run); add command = [\"/bin/app\"]"
                .into(),
        )),
        Some(cmd) if cmd.is_empty() => p.push((
            path("run.command"),
            "must name a program; write e.g. [\"/bin/app\", \"--flag\"]".into(),
        )),
        Some(cmd) if cmd[0].is_empty() => {
            p.push((path("run.command"), "the program name is empty".into()))
        }
        _ => {}
    }
    check_env(&run.env, p);
    if let Some(r) = &run.ready {
        check_probe("run.ready", r.tcp, &r.command, p);
        check_bounds("run.ready.timeout", r.timeout, 1..=Ready::MAX_TIMEOUT, p);
    }
    if let Some(h) = &run.hostname {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if h.len() > 64 || !h.split('.').all(label_ok) {
            p.push((
                path("run.hostname"),
                format!("{h:?} is not a hostname; use letters, digits, '-' and '.', at most 64"),
            ));
        }
    }
    if let Some(t) = run.stop_timeout {
        check_bounds("run.stop_timeout", t, 0..=Health::MAX_INTERVAL, p);
    }
    if let Some(h) = &run.health {
        check_probe("run.health", h.tcp, &h.command, p);
        check_bounds(
            "run.health.interval",
            h.interval,
            1..=Health::MAX_INTERVAL,
            p,
        );
        check_bounds("run.health.timeout", h.timeout, 1..=Health::MAX_TIMEOUT, p);
        check_bounds(
            "run.health.start_period",
            h.start_period,
            0..=Health::MAX_INTERVAL,
            p,
        );
        if !(1..=Health::MAX_RETRIES).contains(&h.retries) {
            p.push((
                path("run.health.retries"),
                format!("{}: give 1 to {}", h.retries, Health::MAX_RETRIES),
            ));
        }
    }
}

/// A check in the guest (`[run.ready]`, `[run.health]`): exactly one of
/// `tcp = PORT` and `command = [...]`.
fn check_probe(table: &str, tcp: Option<u16>, command: &Option<Vec<String>>, p: &mut Problems) {
    match (tcp, command) {
        (Some(_), Some(_)) | (None, None) => p.push((
            path(table),
            "give one check: tcp = PORT, or command = [\"prog\", \"arg\"]".into(),
        )),
        (Some(0), None) => p.push((path(&format!("{table}.tcp")), "port 0 cannot accept".into())),
        (None, Some(c)) if c.first().is_none_or(|p| p.is_empty()) => p.push((
            path(&format!("{table}.command")),
            "must name a program; write e.g. [\"pg_isready\"]".into(),
        )),
        _ => {}
    }
}

/// A number of seconds within `range`.
fn check_bounds(key: &str, secs: u32, range: std::ops::RangeInclusive<u32>, p: &mut Problems) {
    if !range.contains(&secs) {
        p.push((
            path(key),
            format!(
                "{secs} s: give {} to {} seconds",
                range.start(),
                range.end()
            ),
        ));
    }
}

fn check_env(env: &BTreeMap<String, String>, p: &mut Problems) {
    for key in env.keys() {
        let ok =
            key.bytes().enumerate().all(|(i, b)| {
                b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit())
            }) && !key.is_empty();
        if !ok {
            p.push((
                path("run.env").key(key),
                format!("{key:?} is not a valid variable name; use A-Z, a-z, 0-9 and '_', not starting with a digit"),
            ));
        }
    }
}

fn check_vm(vm: &Vm, p: &mut Problems) {
    if !(1..=Vm::MAX_CPUS).contains(&vm.cpus) {
        p.push((
            path("vm.cpus"),
            format!(
                "{} is out of range; husk runs 1 to {} vCPUs",
                vm.cpus,
                Vm::MAX_CPUS
            ),
        ));
    }
    if vm.memory < Vm::MIN_MEMORY {
        p.push((
            path("vm.memory"),
            format!(
                "{} is too small; a guest needs at least {}",
                vm.memory,
                Vm::MIN_MEMORY
            ),
        ));
    } else if !vm.memory.0.is_multiple_of(ByteSize::MIB) {
        p.push((
            path("vm.memory"),
            format!("{} is not a whole number of MiB", vm.memory),
        ));
    }
    if let Some(c) = &vm.cmdline {
        if c.contains(['\0', '\n']) {
            p.push((
                path("vm.cmdline"),
                "must be one line without NUL bytes".into(),
            ));
        }
    }
    let mut disks = HashMap::new();
    for (i, d) in vm.disks.iter().enumerate() {
        let at = path("vm.disks").index(i).key("path");
        if let Some(first) = disks.insert(&d.path, at.clone()) {
            p.push((
                at,
                format!("{} is already attached at {first}", d.path.display()),
            ));
        }
    }
    let mut guests = HashMap::new();
    for (i, s) in vm.shares.iter().enumerate() {
        match (&s.host, &s.volume) {
            (None, None) => p.push((
                path("vm.shares").index(i),
                "give the host folder (host = \"PATH\") or a volume (volume = \"NAME\")".into(),
            )),
            (Some(_), Some(_)) => p.push((
                path("vm.shares").index(i).key("volume"),
                "give host or volume, not both".into(),
            )),
            (None, Some(name)) if !crate::is_volume_name(name) => p.push((
                path("vm.shares").index(i).key("volume"),
                format!(
                    "{name:?} is not a volume name; use two or more of letters, digits, '_', \
                     '.' and '-', starting with a letter or digit"
                ),
            )),
            _ => {}
        }
        let at = path("vm.shares").index(i).key("guest");
        if s.guest.as_path() == Path::new("/") {
            p.push((
                at,
                "cannot share onto \"/\"; boot a folder as the root with \
                 rootfs.from = \"dir:PATH\""
                    .into(),
            ));
        } else if let Some(first) = guests.insert(s.guest.as_path(), at.clone()) {
            p.push((at, format!("{} is already shared at {first}", s.guest)));
        }
    }
    let mut taps = HashMap::new();
    let mut networks = HashMap::new();
    let mut user_mode = None;
    let mut published = HashMap::new();
    for (i, n) in vm.net.iter().enumerate() {
        let at = path("vm.net").index(i);
        if let Some(network) = &n.network {
            // A fixed IPv4 address on it is its own (as run's --ip).
            let ipv6 = n.address.is_some_and(|c| c.addr.is_ipv6());
            let given: Vec<&str> = [
                ("tap", n.tap.is_some()),
                ("address", ipv6),
                ("gateway", n.gateway.is_some()),
                ("ports", !n.ports.is_empty()),
            ]
            .iter()
            .filter(|(_, set)| *set)
            .map(|(key, _)| *key)
            .collect();
            if !crate::is_network_name(network) {
                p.push((
                    at.clone().key("network"),
                    format!(
                        "{network:?} is not a network name; use 1 to 64 letters, digits, '_', \
                         '.' and '-', starting with a letter or digit (not none, user, host, \
                         bridge or default)"
                    ),
                ));
            } else if let Some(first) = networks.insert(network, at.clone()) {
                p.push((
                    at.clone().key("network"),
                    format!("network {network:?} is already joined by {first}"),
                ));
            }
            if let Some(key) = given.first() {
                p.push((
                    at.clone().key(key),
                    "a network gives its members their addresses (or one fixed IPv4 address), \
                     and publishes no port: keep network alone (with mac, mtu or an IPv4 \
                     address), and publish on a user-mode interface"
                        .into(),
                ));
            }
            continue;
        }
        match &n.tap {
            Some(tap) => {
                let tap_ok = !tap.is_empty()
                    && tap.len() <= 15
                    && !tap.contains(|c: char| c == '/' || c.is_whitespace());
                if !tap_ok {
                    p.push((
                        at.clone().key("tap"),
                        format!(
                            "{tap:?} is not an interface name; use 1 to 15 characters without '/' or spaces"
                        ),
                    ));
                } else if let Some(first) = taps.insert(tap, at.clone()) {
                    p.push((
                        at.clone().key("tap"),
                        format!("tap {tap:?} is already used by {first}"),
                    ));
                }
                if !n.ports.is_empty() {
                    p.push((
                        at.clone().key("ports"),
                        "ports are published by the user-mode network; a tap is reached at its own address (remove tap, or ports)".into(),
                    ));
                }
            }
            None => {
                if let Some(first) = user_mode.replace(at.clone()) {
                    p.push((
                        at.clone(),
                        format!("only one interface can be on the user-mode network, and {first} is; give this one a tap"),
                    ));
                }
            }
        }
        if let Some(mtu) = n.mtu {
            if !(68..=65520).contains(&mtu) {
                p.push((
                    at.clone().key("mtu"),
                    format!("{mtu} is not an MTU husk can give; use 68 to 65520"),
                ));
            }
        }
        // A port published on any free host port cannot clash.
        for (j, port) in n.ports.iter().enumerate().filter(|(_, p)| p.host_port != 0) {
            if let Some(first) = published.insert((port.host_ip, port.host_port, port.udp), j) {
                p.push((
                    at.clone().key("ports").index(j),
                    format!(
                        "host port {} is already published by ports[{first}]",
                        port.host_port
                    ),
                ));
            }
        }
        if n.tap.is_none() && n.address.is_some_and(|a| !a.addr.is_ipv4()) {
            p.push((
                at.clone().key("address"),
                "the user-mode network gives the guest an IPv4 address; write one like \"192.0.2.2/24\"".into(),
            ));
        }
        match (&n.address, &n.gateway) {
            (None, Some(_)) => p.push((
                at.key("gateway"),
                "needs an address; add address = \"172.16.0.2/24\"".into(),
            )),
            (Some(a), Some(g)) if a.addr.is_ipv4() != g.is_ipv4() => p.push((
                at.key("gateway"),
                format!("{g} is not of the same IP family as the address {}", a.addr),
            )),
            _ => {}
        }
    }
    if let Some(v) = &vm.vsock {
        if v.cid < 3 || v.cid == u32::MAX {
            p.push((
                path("vm.vsock.cid"),
                format!(
                    "{} is reserved; a guest CID is 3 or more (0, 1, 2 and 2^32-1 are taken)",
                    v.cid
                ),
            ));
        }
    }
}
