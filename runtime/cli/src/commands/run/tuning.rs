//! What a run asks of the guest's kernel and init beyond its command:
//! `--ulimit`, `--sysctl`, `--shm-size`, `--cap-add`/`--cap-drop`,
//! `--privileged` and `--security-opt`, as docker takes them. The guest's
//! init applies them before anything of the appliance starts
//! (`husk_init::config::Overrides`).

use husk_init::config::sysctl_path;

/// `--ulimit NAME=SOFT[:HARD]` (docker's names: `nofile`, `nproc`,
/// `memlock`, ...; `-1` for no limit); HARD is SOFT when not given.
pub fn parse_ulimit(arg: &str) -> Result<agent::Rlimit, String> {
    let (name, values) = arg
        .split_once('=')
        .ok_or_else(|| format!("{arg:?}: write NAME=SOFT[:HARD], such as nofile=1024:65536"))?;
    let resource =
        crate::oci::bundle::rlimit_number(&format!("RLIMIT_{}", name.to_ascii_uppercase()))
            .ok_or_else(|| {
                format!(
                    "{arg:?}: {name:?} is not a resource limit (core, cpu, data, fsize, locks, \
                     memlock, msgqueue, nice, nofile, nproc, rss, rtprio, rttime, sigpending, \
                     stack, as)"
                )
            })?;
    let value = |v: &str| match v {
        "-1" => Ok(libc::RLIM_INFINITY),
        _ => v
            .parse::<u64>()
            .map_err(|_| format!("{arg:?}: {v:?} is not a number (or -1 for no limit)")),
    };
    let (soft, hard) = match values.split_once(':') {
        Some((soft, hard)) => (value(soft)?, value(hard)?),
        None => (value(values)?, value(values)?),
    };
    if soft > hard {
        return Err(format!("{arg:?}: the soft limit is above the hard one"));
    }
    Ok(agent::Rlimit {
        resource,
        soft,
        hard,
    })
}

/// `--sysctl KEY=VALUE`: any kernel parameter, the guest's kernel being
/// the VM's own (docker allows only those a namespace holds).
pub fn parse_sysctl(arg: &str) -> Result<String, String> {
    let (key, _) = arg
        .split_once('=')
        .ok_or_else(|| format!("{arg:?}: write KEY=VALUE, such as net.core.somaxconn=1024"))?;
    sysctl_path(key).map_err(|e| e.to_string())?;
    Ok(arg.to_string())
}

/// `--shm-size SIZE` (`64m`, `1g`, or bytes) in bytes: at least a page.
pub fn parse_shm_size(arg: &str) -> Result<u64, String> {
    let bytes = match arg.parse::<u64>() {
        Ok(bytes) => Some(bytes),
        Err(_) => super::super::docker_size(arg)?,
    };
    match bytes {
        Some(b) if b >= 4096 => Ok(b),
        Some(_) => Err(format!("{arg:?}: /dev/shm needs at least 4k")),
        None => Err(format!("{arg:?}: too large")),
    }
}

/// `--cap-add`/`--cap-drop`'s value: a capability (`NET_ADMIN`,
/// `CAP_NET_ADMIN`, any case) or `ALL`; `None` for ALL.
pub fn parse_capability(arg: &str) -> Result<Option<caps::Capability>, String> {
    let upper = arg.to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(None);
    }
    let name = match upper.starts_with("CAP_") {
        true => upper,
        false => format!("CAP_{upper}"),
    };
    name.parse()
        .map(Some)
        .map_err(|_| format!("{arg:?} is not a capability (NET_ADMIN, SYS_PTRACE, ..., ALL)"))
}

/// The bounding set `--cap-add` and `--cap-drop` leave, as docker
/// reckons it, but from every capability (the VM's root has them all: the
/// VM is the boundary) rather than docker's 14: `--cap-drop ALL` empties
/// it, other drops take theirs away, then adds put theirs back (`ALL`:
/// every one). `None` when nothing is dropped.
pub fn capabilities(
    add: &[Option<caps::Capability>],
    drop: &[Option<caps::Capability>],
) -> Option<u64> {
    if drop.is_empty() {
        return None;
    }
    let mask = |caps: &[Option<caps::Capability>]| {
        caps.iter()
            .map(|c| c.map_or(u64::MAX, |c| c.bitmask()))
            .fold(0, |all, bits| all | bits)
    };
    Some(!mask(drop) | mask(add))
}

/// What `--security-opt` asks: `no-new-privileges` (also `=true`) is kept,
/// `false` turns it off; SELinux and AppArmor labels, and `seccomp=
/// unconfined`, are taken with nothing to do (the host's security module
/// never sees inside the VM, and husk run filters no guest system calls).
/// Says whether it asks for no_new_privs.
pub fn parse_security_opt(arg: &str) -> Result<Option<bool>, String> {
    let (key, value) = arg
        .split_once(['=', ':'])
        .map_or((arg, None), |(k, v)| (k, Some(v)));
    match (key, value) {
        ("no-new-privileges", None | Some("true")) => Ok(Some(true)),
        ("no-new-privileges", Some("false")) => Ok(Some(false)),
        ("label" | "apparmor", Some(_)) | ("seccomp", Some("unconfined")) => Ok(None),
        _ => Err(format!(
            "{arg:?}: husk run takes no-new-privileges[=true|false], label=..., apparmor=... \
             and seccomp=unconfined"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_reckoned_as_docker_does_from_all() {
        let caps = |list: &[&str]| -> Vec<Option<caps::Capability>> {
            list.iter().map(|c| parse_capability(c).unwrap()).collect()
        };
        let bind = caps::Capability::CAP_NET_BIND_SERVICE.bitmask();
        let admin = caps::Capability::CAP_SYS_ADMIN.bitmask();
        assert_eq!(capabilities(&caps(&["NET_ADMIN"]), &[]), None);
        assert_eq!(
            capabilities(&caps(&["net_bind_service"]), &caps(&["ALL"])),
            Some(bind)
        );
        assert_eq!(capabilities(&[], &caps(&["CAP_SYS_ADMIN"])), Some(!admin));
        assert_eq!(
            capabilities(&caps(&["ALL"]), &caps(&["ALL"])),
            Some(u64::MAX)
        );
        assert!(parse_capability("NET_NOTHING")
            .unwrap_err()
            .contains("not a capability"));
        assert_eq!(parse_security_opt("no-new-privileges"), Ok(Some(true)));
        assert_eq!(
            parse_security_opt("no-new-privileges:false"),
            Ok(Some(false))
        );
        assert_eq!(parse_security_opt("label=disable"), Ok(None));
        assert_eq!(parse_security_opt("seccomp=unconfined"), Ok(None));
        for bad in [
            "seccomp=profile.json",
            "nonsense",
            "no-new-privileges=maybe",
        ] {
            assert!(parse_security_opt(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ulimits_parse_as_docker_writes_them() {
        let nofile = parse_ulimit("nofile=1024:65536").unwrap();
        assert_eq!(
            (nofile.resource, nofile.soft, nofile.hard),
            (libc::RLIMIT_NOFILE, 1024, 65536)
        );
        let memlock = parse_ulimit("memlock=-1").unwrap();
        assert_eq!(
            (memlock.soft, memlock.hard),
            (libc::RLIM_INFINITY, libc::RLIM_INFINITY)
        );
        assert_eq!(parse_ulimit("AS=1").unwrap().resource, libc::RLIMIT_AS);
        for (bad, why) in [
            ("nofile", "NAME=SOFT"),
            ("files=1", "not a resource limit"),
            ("nofile=x", "not a number"),
            ("nofile=10:5", "above the hard"),
            ("nofile=1:", "not a number"),
        ] {
            let e = parse_ulimit(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn sysctls_and_shm_sizes_are_checked() {
        assert_eq!(
            parse_sysctl("net.core.somaxconn=1024").unwrap(),
            "net.core.somaxconn=1024"
        );
        assert!(parse_sysctl("net/ipv4/conf/eth0.1/forwarding=1").is_ok());
        for bad in ["vm.max_map_count", "../x=1", "net..core=1", "a b=1", "=1"] {
            assert!(parse_sysctl(bad).is_err(), "{bad} was accepted");
        }
        assert_eq!(parse_shm_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_shm_size("8192").unwrap(), 8192);
        assert!(parse_shm_size("1").unwrap_err().contains("at least"));
        assert!(parse_shm_size("lots").is_err());
    }
}
