//! `husk port NAME [GUEST_PORT[/PROTO]]`: a detached appliance's published
//! ports, as `docker port` lists a container's (the host ports chosen for
//! `-p GUEST_PORT` among them).

use std::process::ExitCode;

use crate::vms::VmDir;

#[derive(clap::Args)]
pub struct Args {
    name: String,
    /// Only this guest port (80, 80/tcp, 53/udp): its host addresses
    #[arg(value_name = "GUEST_PORT[/PROTO]")]
    port: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let vm = VmDir::find(&args.name)?;
    let state = vm.current_state()?;
    let wanted = match &args.port {
        None => None,
        Some(p) => Some(guest_port(p).ok_or_else(|| {
            anyhow::anyhow!("{p:?} is not a port: write e.g. 80, 80/tcp or 53/udp")
        })?),
    };
    let mut found = false;
    for spec in &state.ports {
        let Some((host, guest)) = mapping(spec) else {
            continue;
        };
        match &wanted {
            None => println!("{guest} -> {host}"),
            Some(w) if *w == guest => println!("{host}"),
            Some(_) => continue,
        }
        found = true;
    }
    match (&args.port, found) {
        (Some(p), false) => {
            anyhow::bail!(
                "{} publishes no port {p} (husk port {})",
                args.name,
                args.name
            )
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// `80`, `80/tcp` or `53/udp` as `PORT/PROTO`.
fn guest_port(text: &str) -> Option<String> {
    let port: appliance_spec::ExposedPort = text.parse().ok()?;
    Some(port.to_string())
}

/// A recorded `[IP:]HOST->GUEST/PROTO` as docker shows it: the host
/// address (`0.0.0.0` for every IPv4 address: passt publishes on IPv4)
/// and `GUEST/PROTO`.
pub(super) fn mapping(spec: &str) -> Option<(String, String)> {
    let (host, guest) = spec.split_once("->")?;
    let host = if host.bytes().all(|b| b.is_ascii_digit()) {
        format!("0.0.0.0:{host}")
    } else {
        host.to_string()
    };
    Some((host, guest.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_ports_read_as_docker_shows_them() {
        let m = |s: &str| mapping(s).unwrap();
        assert_eq!(m("8080->80/tcp"), ("0.0.0.0:8080".into(), "80/tcp".into()));
        assert_eq!(
            m("127.0.0.1:5353->53/udp"),
            ("127.0.0.1:5353".into(), "53/udp".into())
        );
        assert_eq!(m("[::1]:8443->443/tcp").0, "[::1]:8443");
        assert_eq!(mapping("8080:80"), None);
        assert_eq!(guest_port("80").as_deref(), Some("80/tcp"));
        assert_eq!(guest_port("53/udp").as_deref(), Some("53/udp"));
        for bad in ["", "0", "80/sctp", "x"] {
            assert_eq!(guest_port(bad), None, "{bad}");
        }
    }
}
