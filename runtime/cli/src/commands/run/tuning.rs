//! What a run asks of the guest's kernel and init beyond its command:
//! `--ulimit`, `--sysctl` and `--shm-size`, as docker takes them. The
//! guest's init applies them before anything of the appliance starts
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

#[cfg(test)]
mod tests {
    use super::*;

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
