//! `husk ps`: the detached appliances, as `docker ps` lists containers,
//! with docker's `--filter` and `--format`.

use std::process::ExitCode;
use std::time::Duration;

use crate::vms::control::{Control, Request, Response};
use crate::vms::{human_duration, now_ms, HealthStatus, State, Status, VmDir};

#[derive(clap::Args)]
pub struct Args {
    /// Also list appliances that have exited
    #[arg(short, long)]
    all: bool,
    /// Only their names, one a line (husk rm $(husk ps -aq))
    #[arg(short, long)]
    quiet: bool,
    /// Only those that match, as docker's: name=PART, status=created|
    /// restarting|running|paused|exited, ancestor=IMAGE, network=NAME,
    /// volume=NAME, health=starting|healthy|unhealthy|none,
    /// label=KEY[=VALUE]; a key given twice matches either value (but
    /// every label must match), different keys must all match
    #[arg(short, long, value_name = "KEY=VALUE")]
    filter: Vec<String>,
    /// Each appliance as TEMPLATE says, as docker's: {{.Names}}
    /// {{.Image}} {{.Status}} {{.State}} {{.Ports}} {{.Networks}}
    /// {{.Addresses}} {{.Labels}}, \t a tab; "table TEMPLATE" adds a header and lines
    /// up the columns; "json" gives a JSON object a line
    #[arg(long, value_name = "TEMPLATE")]
    format: Option<String>,
}

/// The fields a template may name, as docker names them, and their
/// titles.
const COLUMNS: [(&str, &str); 8] = [
    ("Names", "NAMES"),
    ("Image", "IMAGE"),
    ("Status", "STATUS"),
    ("State", "STATE"),
    ("Ports", "PORTS"),
    ("Networks", "NETWORKS"),
    ("Addresses", "ADDRESSES"),
    ("Labels", "LABELS"),
];

/// One appliance as `ps` shows it.
struct Row {
    state: State,
    status: String,
    addresses: String,
}

impl Row {
    /// The row as a template sees it: each field, as text.
    fn doc(&self) -> serde_json::Value {
        super::listing::row(&COLUMNS, |f| self.field(f))
    }

    fn field(&self, name: &str) -> String {
        match name {
            "Names" => self.state.name.clone(),
            "Image" => self.state.image.clone(),
            "Status" => self.status.clone(),
            "State" => state_word(&self.state).into(),
            "Ports" => self.state.ports.join(", "),
            "Networks" => self.state.networks.join(","),
            "Addresses" => self.addresses.clone(),
            "Labels" => self
                .state
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            _ => String::new(),
        }
    }
}

/// docker's one-word state.
pub(super) fn state_word(state: &State) -> &'static str {
    match state.status {
        Status::Running if state.paused => "paused",
        Status::Starting | Status::Running => "running",
        Status::Created => "created",
        Status::Restarting => "restarting",
        Status::Exited if state.never_started() => "created",
        Status::Exited => "exited",
    }
}

/// `--filter`s, as docker takes them: values of one key are alternatives,
/// keys all apply.
struct Filters(Vec<(String, Vec<String>)>);

impl Filters {
    fn parse(given: &[String]) -> anyhow::Result<Self> {
        let mut keys: Vec<(String, Vec<String>)> = Vec::new();
        for f in given {
            let (key, value) = f
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--filter {f:?}: write KEY=VALUE"))?;
            let ok = match key {
                "name" | "ancestor" | "network" | "volume" => true,
                "label" => !value.is_empty() && !value.starts_with('='),
                "status" => {
                    ["created", "restarting", "running", "paused", "exited"].contains(&value)
                }
                "health" => ["starting", "healthy", "unhealthy", "none"].contains(&value),
                _ => anyhow::bail!(
                    "--filter {f:?}: filter by name, status, ancestor, network, volume, health \
                     or label"
                ),
            };
            if !ok && key == "label" {
                anyhow::bail!("--filter {f:?}: write label=KEY or label=KEY=VALUE");
            }
            if !ok {
                anyhow::bail!("--filter {f:?}: no appliance is ever {value:?}");
            }
            // Each label must match (docker's rule): one group each.
            let group = keys.iter_mut().find(|(k, _)| k == key && key != "label");
            match group {
                Some((_, values)) => values.push(value.to_string()),
                None => keys.push((key.to_string(), vec![value.to_string()])),
            }
        }
        Ok(Filters(keys))
    }

    /// Whether a status filter asks for stopped ones (then -a is implied,
    /// as docker does).
    fn wants_exited(&self) -> bool {
        self.0
            .iter()
            .any(|(k, v)| k == "status" && v.iter().any(|v| v == "exited" || v == "created"))
    }

    fn matches(&self, state: &State) -> bool {
        self.0.iter().all(|(key, values)| {
            values.iter().any(|v| match key.as_str() {
                "name" => state.name.contains(v.as_str()),
                "status" => state_word(state) == v,
                "ancestor" => state.image == *v,
                "network" => state.networks.contains(v),
                "volume" => state.volumes.contains(v),
                "label" => match v.split_once('=') {
                    Some((key, value)) => state.labels.get(key).is_some_and(|l| l == value),
                    None => state.labels.contains_key(v.as_str()),
                },
                "health" => state.health.as_ref().map_or("none", |h| h.status.word()) == v,
                _ => false,
            })
        })
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let filters = Filters::parse(&args.filter)?;
    let format = args
        .format
        .as_deref()
        .map(super::listing::Format::parse)
        .transpose()?;
    // The guest is asked for its addresses only when they are shown.
    let wants_addresses = match &format {
        Some(f) => f.shows("Addresses"),
        None => !args.quiet,
    };
    let all = args.all || filters.wants_exited();
    let mut rows = Vec::new();
    for vm in VmDir::all()? {
        let Ok(state) = vm.current_state() else {
            continue;
        };
        if (state.status == Status::Exited && !all) || !filters.matches(&state) {
            continue;
        }
        if args.quiet {
            println!("{}", state.name);
            continue;
        }
        rows.push(row(&vm, state, wants_addresses));
    }
    if args.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(format) = format {
        let docs: Vec<_> = rows.iter().map(Row::doc).collect();
        format.print(&COLUMNS, &docs)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = vec![["NAME", "IMAGE", "STATUS", "PORTS", "ADDRESSES"]
        .map(String::from)
        .to_vec()];
    table.extend(rows.iter().map(|r| {
        ["Names", "Image", "Status", "Ports", "Addresses"]
            .map(|f| r.field(f))
            .to_vec()
    }));
    super::print_columns(&table);
    Ok(ExitCode::SUCCESS)
}

fn row(vm: &VmDir, state: State, wants_addresses: bool) -> Row {
    let (status, addresses) = match state.status {
        Status::Starting => ("Starting".into(), String::new()),
        Status::Created => ("Created".into(), String::new()),
        Status::Running => {
            // A paused guest cannot answer.
            let guest = if state.paused || !wants_addresses {
                None
            } else {
                guest_info(vm)
            };
            let up = guest.as_ref().map_or_else(
                || human_duration(now_ms().saturating_sub(state.started_ms.unwrap_or(0))),
                |g| human_duration(g.uptime_ms),
            );
            let addresses = guest
                .map(|g| {
                    g.addresses
                        .iter()
                        .filter_map(|a| a.split_once(' ').map(|(_, addr)| addr.to_string()))
                        .filter(|a| !a.starts_with("fe80:"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            // As docker shows them: paused over the health check.
            let note = match (&state.paused, state.health.as_ref().map(|h| h.status)) {
                (true, _) => " (Paused)",
                (false, Some(HealthStatus::Starting)) => " (health: starting)",
                (false, Some(HealthStatus::Healthy)) => " (healthy)",
                (false, Some(HealthStatus::Unhealthy)) => " (unhealthy)",
                (false, None) => "",
            };
            (format!("Up {up}{note}"), addresses)
        }
        Status::Restarting => {
            let code = state.exit_code.map_or("?".into(), |c| c.to_string());
            let ago = human_duration(now_ms().saturating_sub(state.finished_ms.unwrap_or(0)));
            (format!("Restarting ({code}) {ago} ago"), String::new())
        }
        Status::Exited if state.never_started() => ("Created".into(), String::new()),
        Status::Exited => {
            let ago = state
                .finished_ms
                .map(|f| format!(" {} ago", human_duration(now_ms().saturating_sub(f))))
                .unwrap_or_default();
            let code = match state.exit_code {
                Some(c) => format!("Exited ({c}){ago}"),
                None => "Exited (unknown: its keeper was killed)".into(),
            };
            (code, String::new())
        }
    };
    Row {
        state,
        status,
        addresses,
    }
}

/// The guest's own view, or `None` when it does not answer in time.
pub fn guest_info(vm: &VmDir) -> Option<agent::GuestInfo> {
    let mut control = Control::connect(&vm.control(), &vm.name).ok()?;
    control.set_timeout(Some(Duration::from_secs(2)));
    match control.call(&Request::Info).ok()? {
        Response::Info { guest } => Some(guest),
        _ => None,
    }
}
