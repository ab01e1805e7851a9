//! `husk network create|ls|inspect|rm|prune`: networks appliances reach
//! each other on by name, as `docker network` manages user-defined ones.
//! See `crate::networks` for how they work.

use std::os::fd::FromRawFd;
use std::process::ExitCode;

use anyhow::Context;

use super::volume::Users;
use crate::networks::{self, Network};

#[derive(clap::Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Make a network and print its name
    Create {
        /// Its IPv4 subnet (default: the first free 10.89.N.0/24), and
        /// with --ipv6 its IPv6 one (default: a unique local /64 of its
        /// own): give --subnet once for each
        #[arg(long, value_name = "CIDR")]
        subnet: Vec<String>,
        /// IPv6 too: each appliance gets an IPv6 address beside its IPv4
        /// one (the IPv6 subnet's prefix and the IPv4 address's host
        /// part), and its names resolve to both
        #[arg(long)]
        ipv6: bool,
        /// No way out: appliances on it get no user-mode network for it,
        /// only each other
        #[arg(long)]
        internal: bool,
        name: String,
    },
    /// List the networks: subnet, internal or not, whether appliances are
    /// on it now
    Ls {
        /// Only the names
        #[arg(short, long)]
        quiet: bool,
        /// Each as TEMPLATE says, as docker's: {{.Name}} {{.Driver}}
        /// {{.Subnet}} {{.IPv6Subnet}} {{.Internal}} {{.InUse}}
        /// {{.Appliances}};
        /// "table TEMPLATE"; "json"
        #[arg(long, value_name = "TEMPLATE")]
        format: Option<String>,
    },
    /// Show networks as JSON: name, subnets, internal, in use, the
    /// appliances on it and their addresses, folder
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove networks no appliance is on, running or not (with --force,
    /// also one only stopped appliances name: they cannot start again
    /// until it is made again)
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove every network no appliance is on, running or not
    Prune {
        /// Do not ask first
        #[arg(short, long)]
        force: bool,
    },
    /// Put a detached appliance on a network: a running one gets an
    /// interface on it at once, and every one joins it at each start
    Connect {
        /// Another name it answers to on its networks, as run's
        /// --network-alias
        #[arg(long = "alias", value_name = "NAME", value_parser = super::run::network_alias)]
        aliases: Vec<String>,
        /// Its address on the network (in its subnet), as run's --ip: that
        /// one or none (a run takes one --ip)
        #[arg(long, value_name = "ADDRESS")]
        ip: Option<std::net::Ipv4Addr>,
        network: String,
        appliance: String,
    },
    /// Take a detached appliance off a network: a running one loses its
    /// interface on it at once (one it booted with too), and none joins it
    /// at its next start
    Disconnect { network: String, appliance: String },
    /// A network's hub (started by the first appliance that joins it)
    #[command(hide = true)]
    Hub {
        name: String,
        /// Its descriptor 4 is the host's tap, whose host side has this MAC
        #[arg(long, value_name = "MAC")]
        host_port: Option<appliance_spec::MacAddr>,
    },
}

/// A network's IPv6 subnet, if it has IPv6, as `fd00:1::/64`.
fn subnet6(meta: &networks::Meta) -> Option<String> {
    meta.subnet6.map(|(a, p)| format!("{a}/{p}"))
}

/// The networks no appliance is on or names (what prune removes).
pub fn doomed() -> anyhow::Result<Vec<super::Doomed<'static>>> {
    let users = Users::naming_by(|s| s.networks)?;
    Ok(Network::all()?
        .into_iter()
        .filter(|n| !n.in_use() && users.naming(&n.name).is_empty())
        .map(|n| -> super::Doomed<'static> {
            (Some(n.name.clone()), 0, Box::new(move || n.remove()))
        })
        .collect())
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Create {
            subnet,
            ipv6,
            internal,
            name,
        } => {
            networks::check_name(&name)?;
            let (mut v4, mut v6) = (None, None);
            for text in &subnet {
                match networks::parse_subnet(text)? {
                    networks::Subnet::V4(a, p) if v4.is_none() => v4 = Some((a, p)),
                    networks::Subnet::V6(a, p) if v6.is_none() => v6 = Some((a, p)),
                    _ => anyhow::bail!(
                        "--subnet {text}: one IPv4 subnet and one IPv6 subnet at most"
                    ),
                }
            }
            let meta = Network::at(&networks::root()?, &name).create(v4, ipv6, v6, internal)?;
            let v6 = meta
                .subnet6
                .map(|(a, p)| format!(" and {a}/{p}"))
                .unwrap_or_default();
            eprintln!(
                "husk: network {name}: {}/{}{v6}",
                meta.subnet.0, meta.subnet.1
            );
            println!("{name}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Ls { quiet, format } => {
            let format = format
                .as_deref()
                .map(super::listing::Format::parse)
                .transpose()?;
            let all = Network::all()?;
            if quiet {
                all.iter().for_each(|n| println!("{}", n.name));
                return Ok(ExitCode::SUCCESS);
            }
            const COLUMNS: [(&str, &str); 7] = [
                ("Name", "NAME"),
                ("Driver", "DRIVER"),
                ("Subnet", "SUBNET"),
                ("IPv6Subnet", "IPV6 SUBNET"),
                ("Internal", "INTERNAL"),
                ("InUse", "IN USE"),
                ("Appliances", "APPLIANCES"),
            ];
            let users = Users::naming_by(|s| s.networks)?;
            let mut rows = Vec::new();
            for n in &all {
                let Ok(meta) = n.meta() else { continue };
                let in_use = n.in_use();
                rows.push(super::listing::row(&COLUMNS, |field| match field {
                    "Name" => n.name.clone(),
                    "Driver" => "husk".into(),
                    "Subnet" => format!("{}/{}", meta.subnet.0, meta.subnet.1),
                    "IPv6Subnet" => subnet6(&meta).unwrap_or_default(),
                    "Internal" => meta.internal.to_string(),
                    "InUse" => in_use.to_string(),
                    _ => users.naming(&n.name).join(", "),
                }));
            }
            if let Some(format) = format {
                format.print(&COLUMNS, &rows)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut table = vec![["NAME", "SUBNET", "INTERNAL", "IN USE", "APPLIANCES"]
                .map(String::from)
                .to_vec()];
            let yes_no = |text: &str| if text == "true" { "yes" } else { "no" }.to_string();
            for r in &rows {
                let cell = |f: &str| r[f].as_str().unwrap_or_default().to_string();
                let subnets = [cell("Subnet"), cell("IPv6Subnet")]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(", ");
                table.push(vec![
                    cell("Name"),
                    subnets,
                    yes_no(&cell("Internal")),
                    yes_no(&cell("InUse")),
                    cell("Appliances"),
                ]);
            }
            super::print_columns(&table);
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { names } => {
            let users = Users::naming_by(|s| s.networks)?;
            let mut shown = Vec::new();
            let code = super::each_name(&names, |name| {
                let n = Network::find(name)?;
                let meta = n.meta()?;
                // Each appliance's address on it: the one it has now, or
                // had when it last ran (and asks for again).
                let addresses: serde_json::Map<String, serde_json::Value> = users
                    .naming(&n.name)
                    .iter()
                    .filter_map(|app| {
                        let dir = crate::vms::VmDir::find(app).ok()?.dir;
                        let file = dir.join(format!("network-{}.address", n.name));
                        let address = std::fs::read_to_string(file).ok()?;
                        Some((app.clone(), address.trim().into()))
                    })
                    .collect();
                shown.push(serde_json::json!({
                    "Name": n.name,
                    "Subnet": format!("{}/{}", meta.subnet.0, meta.subnet.1),
                    "EnableIPv6": meta.subnet6.is_some(),
                    "IPv6Subnet": subnet6(&meta),
                    "Internal": meta.internal,
                    "InUse": n.in_use(),
                    // The host's interface on it, while its hub has one.
                    "HostInterface": Some(n.interface())
                        .filter(|i| std::path::Path::new("/sys/class/net").join(i).exists()),
                    "Appliances": users.naming(&n.name),
                    "Addresses": addresses,
                    "Folder": n.dir,
                    "CreatedMs": meta.created_ms,
                }));
                Ok(())
            })?;
            println!("{}", serde_json::to_string_pretty(&shown)?);
            Ok(code)
        }
        Command::Rm { force, names } => {
            let users = Users::naming_by(|s| s.networks)?;
            super::each_name(&names, |name| {
                let network = Network::find(name)?;
                let naming = users.naming(name);
                if !force && !naming.is_empty() {
                    anyhow::bail!(
                        "the network {name} is named by {} (husk rm them first, or rm -f)",
                        naming.join(", ")
                    );
                }
                network.remove()?;
                println!("{name}");
                Ok(())
            })
        }
        Command::Prune { force } => {
            let doomed = doomed()?;
            if doomed.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            if !force && !super::confirm("remove every network no appliance is on")? {
                return Ok(ExitCode::FAILURE);
            }
            let (_, failed) = super::remove_each(doomed);
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Connect {
            aliases,
            ip,
            network,
            appliance,
        } => {
            Network::find(&network)?;
            if let Some(mut keeper) = running(&appliance)? {
                keeper.call(&crate::vms::control::Request::Connect {
                    network,
                    aliases,
                    ip,
                })?;
                return Ok(ExitCode::SUCCESS);
            }
            change_stopped(&appliance, |state| {
                if state.networks.contains(&network) {
                    anyhow::bail!("{appliance} is on {network} already");
                }
                state.args = super::run::with_network_at(&state.args, &network, &aliases, ip)?;
                state.networks.push(network.clone());
                Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Disconnect { network, appliance } => {
            if let Some(mut keeper) = running(&appliance)? {
                keeper.call(&crate::vms::control::Request::Disconnect { network })?;
                return Ok(ExitCode::SUCCESS);
            }
            change_stopped(&appliance, |state| {
                if !state.networks.contains(&network) {
                    anyhow::bail!("{appliance} is not on {network}");
                }
                state.args =
                    super::run::without_network(&state.args, &network)?.with_context(|| {
                        format!(
                            "{appliance} is on {network} through its appliance file ([[vm.net]]), \
                             which husk does not change"
                        )
                    })?;
                state.networks.retain(|n| *n != network);
                Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Hub { name, host_port } => {
            let network = Network::find(&name)?;
            // SAFETY: the run that started this hub passed its listening
            // socket as this descriptor (`Network::start_hub`), and
            // nothing else here owns it.
            let listener = unsafe {
                std::os::unix::net::UnixListener::from_raw_fd(networks::hub::LISTENER_FD)
            };
            let host = host_port
                .map(|mac| {
                    // SAFETY: with --host-port, the run that started this
                    // hub passed the host's tap as this descriptor, owned
                    // by nothing else here.
                    let tap = unsafe { std::fs::File::from_raw_fd(networks::hub::HOST_TAP_FD) };
                    networks::hub::HostPort::new(tap, mac.0)
                })
                .transpose()
                .context("the host's tap")?;
            network
                .serve(listener, host)
                .with_context(|| format!("the hub of network {name}"))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The keeper of detached appliance `name` while its VM runs (a running
/// VM's interfaces come and go through it); `None` once it has stopped.
fn running(name: &str) -> anyhow::Result<Option<crate::vms::control::Control>> {
    let vm = crate::vms::VmDir::find(name)?;
    if vm.current_state()?.status == crate::vms::Status::Exited {
        return Ok(None);
    }
    crate::vms::control::Control::connect(&vm.control(), name).map(Some)
}

/// Changes the state of detached appliance `name` by `change`, which
/// must leave its recorded command line one `husk start` runs. Only while
/// it is stopped (a running one's keeper changes it, see [`running`]).
fn change_stopped(
    name: &str,
    change: impl FnOnce(&mut crate::vms::State) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let vm = crate::vms::VmDir::find(name)?;
    let _held = vm.lock_state()?;
    let mut state = vm.current_state()?;
    if state.status != crate::vms::Status::Exited {
        anyhow::bail!("{name} started meanwhile: try again");
    }
    state.check_recorded()?;
    change(&mut state)?;
    vm.write_state(&state)
        .with_context(|| format!("cannot write {}", vm.state_file().display()))
}
