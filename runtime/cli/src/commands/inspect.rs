//! `husk inspect`: what a built image runs and what it holds, and a
//! detached appliance's state as docker inspect shows a container's, with
//! docker's `--format`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{json, Map, Value};

use super::target::{boot_cmdline, Pull, Target};
use crate::template::Template;
use crate::vms::{Status, VmDir};

#[derive(clap::Args)]
pub struct Args {
    /// Built images (ext4 or initramfs), appliance files, image
    /// references (built first, from the cache when they can be), or the
    /// names of detached appliances
    #[arg(required = true, value_name = "NAME|IMAGE")]
    targets: Vec<String>,
    /// List every file of an image with its mode, owner and size
    #[arg(long)]
    files: bool,
    /// Each as TEMPLATE (Go's text/template, as docker's: {{.State.Status}},
    /// {{json .Config}}, {{range ...}}{{end}}, {{index .Config.Labels
    /// "KEY"}}), one line each
    #[arg(short, long, value_name = "TEMPLATE")]
    format: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let template = match &args.format {
        Some(t) => Some(Template::parse(t).map_err(|e| anyhow::anyhow!("--format: {e}"))?),
        None => None,
    };
    // Without --format, appliances as docker prints containers: one JSON
    // list of them all, after the rest.
    let mut listed = Vec::new();
    let code = super::each_name(&args.targets, |target| {
        let doc = match appliance(target) {
            Some(vm) => appliance_doc(&vm)?,
            None => {
                let path = image(target)?;
                if template.is_none() {
                    return print_image(&path, args.files);
                }
                image_doc(&path)?
            }
        };
        match &template {
            Some(t) => {
                let line = t
                    .render(&doc)
                    .map_err(|e| anyhow::anyhow!("--format: {e}"))?;
                println!("{line}");
            }
            None => listed.push(doc),
        }
        Ok(())
    })?;
    if !listed.is_empty() {
        println!("{}", serde_json::to_string_pretty(&listed)?);
    }
    Ok(code)
}

/// A detached appliance's name, as docker inspect takes a container's
/// (a file or folder of that name is not one).
fn appliance(target: &str) -> Option<VmDir> {
    if Path::new(target).exists() || crate::vms::check_name(target).is_err() {
        return None;
    }
    VmDir::find(target).ok()
}

/// The image `target` names: built, or built now.
fn image(target: &str) -> anyhow::Result<PathBuf> {
    if Path::new(target).is_file() && builder::inspect::format_of(Path::new(target)).is_ok() {
        return Ok(target.into());
    }
    let parsed = Target::parse(target)?;
    // As docker inspect, which never pulls: a bare word is a detached
    // appliance's name or an image pulled already.
    if parsed.bare_word().is_some() && parsed.pull(Pull::Never).is_err() {
        anyhow::bail!(
            "no appliance named {0:?}, no file {0}, and no pulled image {0} \
             (husk pull {0} pulls it)",
            target
        );
    }
    Ok(parsed.build()?.path)
}

/// An image as docker inspect shows one (the parts husk has), for
/// `--format`.
fn image_doc(path: &Path) -> anyhow::Result<Value> {
    let run = builder::inspect::run_config(path)?;
    let set = |items: &[String]| -> Map<String, Value> {
        items.iter().map(|i| (i.clone(), json!({}))).collect()
    };
    Ok(json!({
        "Id": path,
        "Format": format_name(builder::inspect::format_of(path)?),
        "Config": {
            "Entrypoint": run.entrypoint,
            "Cmd": run.command.get(run.entrypoint.len()..).unwrap_or_default(),
            "Env": run.env,
            "WorkingDir": run.workdir.unwrap_or_default(),
            "User": run.user.unwrap_or_default(),
            "Hostname": run.hostname.unwrap_or_default(),
            "ExposedPorts": set(&run.exposed_ports),
            "Volumes": set(&run.volumes),
            "Labels": run.labels,
        },
    }))
}

fn format_name(format: appliance_spec::ImageFormat) -> &'static str {
    match format {
        appliance_spec::ImageFormat::Ext4 => "ext4",
        appliance_spec::ImageFormat::Initramfs => "initramfs",
    }
}

/// An image as husk shows one: what it runs, and with --files its files.
fn print_image(path: &Path, files: bool) -> anyhow::Result<()> {
    let format = builder::inspect::format_of(path)?;
    let run = builder::inspect::run_config(path)?;
    let fmt_name = format_name(format);
    println!("image:    {} ({fmt_name})", path.display());
    println!("command:  {}", shell_words(&run.command));
    for e in &run.env {
        println!("env:      {e}");
    }
    println!("workdir:  {}", run.workdir.as_deref().unwrap_or("/"));
    println!("user:     {}", run.user.as_deref().unwrap_or("0:0 (root)"));
    if let Some(h) = &run.hostname {
        println!("hostname: {h}");
    }
    if !run.exposed_ports.is_empty() {
        println!("ports:    {}", run.exposed_ports.join(" "));
    }
    for (key, value) in &run.labels {
        println!("label:    {key}={value}");
    }
    if !run.volumes.is_empty() {
        println!(
            "volumes:  {} (each run gets anonymous volumes there)",
            run.volumes.join(" ")
        );
    }
    println!(
        "boot:     husk's kernel with \"{}\"{}",
        boot_cmdline(format, false),
        match format {
            appliance_spec::ImageFormat::Ext4 => " and the image as the first virtio disk",
            appliance_spec::ImageFormat::Initramfs => " and the image as its initrd",
        }
    );
    if files {
        println!();
        for f in builder::inspect::files(path)? {
            println!(
                "{} {:>5} {:>5} {:>10} {}",
                f.mode_string(),
                f.uid,
                f.gid,
                f.size,
                f.path
            );
        }
    }
    Ok(())
}

/// argv as a shell would need it typed.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/-_.=:,+@%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A detached appliance as docker inspect shows a container: `Name`,
/// `Created`, `State` (with `Health`), `Config` (what its init runs:
/// [`container_config`]), `HostConfig` (what its command line asked for:
/// [`crate::commands::run::Args::host_config`]), `NetworkSettings`
/// (`IPAddress`, `Ports`, `Networks`), `Mounts` (its volumes),
/// `RestartCount` and `LogPath`;
/// then husk's own: `Guest` (the guest's view, while it runs) and `Husk`
/// (its `state.json` as it is, and its folder).
fn appliance_doc(vm: &VmDir) -> anyhow::Result<Value> {
    let state = vm.current_state()?;
    let running = state.status == Status::Running;
    let guest = if running && !state.paused {
        super::ps::guest_info(vm)
    } else {
        None
    };
    let word = super::ps::state_word(&state);
    let health = state.health.as_ref().map(|h| {
        json!({
            "Status": h.status.word(),
            "FailingStreak": h.failing_streak,
            "Log": h.log.iter().map(|c| json!({
                "Start": time(Some(c.start_ms)),
                "End": time(Some(c.end_ms)),
                "ExitCode": c.exit_code,
                "Output": c.output,
            })).collect::<Vec<_>>(),
        })
    });
    let (policy_name, retries) = match state.restart_policy() {
        crate::vms::restart::Policy::OnFailure { max } => {
            ("on-failure".to_string(), max.unwrap_or(0))
        }
        other => (other.to_string(), 0),
    };
    // docker's map of guest ports to the host's.
    let mut ports = Map::new();
    for (host, guest) in state.ports.iter().filter_map(|p| super::port::mapping(p)) {
        let (ip, port) = host.rsplit_once(':').unwrap_or(("", &host));
        let bound = json!({"HostIp": ip.trim_matches(['[', ']']), "HostPort": port});
        match ports.entry(guest).or_insert_with(|| json!([])) {
            Value::Array(a) => a.push(bound),
            _ => unreachable!("made a list just above"),
        }
    }
    let networks: Map<String, Value> = state
        .networks
        .iter()
        .map(|n| {
            let file = vm.dir.join(format!("network-{n}.address"));
            let address = std::fs::read_to_string(file).unwrap_or_default();
            // On a network with IPv6, the address that goes with it.
            let v6 = address
                .trim()
                .parse()
                .ok()
                .and_then(|a| {
                    crate::networks::Network::find(n)
                        .ok()?
                        .meta()
                        .ok()?
                        .address6(a)
                })
                .map(|(a, _)| a.to_string())
                .unwrap_or_default();
            (
                n.clone(),
                json!({"IPAddress": address.trim(), "GlobalIPv6Address": v6}),
            )
        })
        .collect();
    // The guest's first IPv4 address, as docker's IPAddress (its bridge's).
    let address = guest
        .iter()
        .flat_map(|g| &g.addresses)
        .filter_map(|a| a.split_once(' ')?.1.split_once('/'))
        .map(|(ip, _)| ip)
        .find(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        .unwrap_or_default()
        .to_string();
    let mut husk = serde_json::to_value(&state)?;
    husk["dir"] = vm.dir.display().to_string().into();
    // What its command line asked for (an older husk's state may keep
    // none: then the restart policy alone).
    let restart = json!({"Name": policy_name, "MaximumRetryCount": retries});
    let run = crate::parse_run_args(&state.args).ok();
    let keeps_log = run.as_ref().is_none_or(|a| a.keeps_log());
    let host_config = match &run {
        Some(a) => a.host_config(restart),
        None => json!({ "RestartPolicy": restart }),
    };
    Ok(json!({
        "Name": state.name,
        "Created": time(Some(state.created_ms)),
        "Image": state.image,
        "RestartCount": state.restart_count,
        "State": {
            "Status": word,
            "Running": running,
            "Paused": state.paused,
            "Restarting": state.status == Status::Restarting,
            "OOMKilled": false,
            "Dead": false,
            "Pid": if running { state.keeper_pid } else { 0 },
            "ExitCode": state.exit_code.unwrap_or(0),
            "Error": if state.status == Status::Exited && state.exit_code.is_none() && !state.never_started() {
                "its keeper was killed: the exit status is unknown"
            } else {
                ""
            },
            "StartedAt": time(state.started_ms),
            "FinishedAt": time(state.finished_ms),
            "Health": health,
        },
        "Config": container_config(&state, run.as_ref()),
        "HostConfig": host_config,
        "NetworkSettings": {
            "IPAddress": address,
            "Ports": ports,
            "Networks": networks,
        },
        "Mounts": state.volumes.iter().map(|v| json!({"Type": "volume", "Name": v})).collect::<Vec<_>>(),
        "LogPath": if keeps_log { vm.log().display().to_string() } else { String::new() },
        "Guest": guest,
        "Husk": husk,
    }))
}

/// docker inspect's `Config` of an appliance: what its init runs (the
/// image's run configuration under the run's flags, recorded when it was
/// made), its image and labels, and how it is stopped.
fn container_config(state: &crate::vms::State, run: Option<&super::run::Args>) -> Value {
    let set = |items: &[String]| -> Map<String, Value> {
        items.iter().map(|i| (i.clone(), json!({}))).collect()
    };
    let none = husk_init::config::RunConfig::default();
    let c = state.config.as_ref().unwrap_or(&none);
    let signal = c.stop_signal.map(|n| appliance_spec::Signal(n).to_string());
    json!({
        "Hostname": c.hostname.clone().unwrap_or_default(),
        "User": c.user.clone().unwrap_or_default(),
        "Env": c.env,
        "Entrypoint": c.entrypoint,
        "Cmd": c.command.get(c.entrypoint.len()..).unwrap_or_default(),
        "WorkingDir": c.workdir.clone().unwrap_or_default(),
        "ExposedPorts": set(&c.exposed_ports),
        "Volumes": set(&c.volumes),
        "Tty": run.is_some_and(|a| a.tty()),
        "OpenStdin": run.is_some_and(|a| a.interactive()),
        "Image": state.image,
        "Labels": state.labels,
        "StopSignal": signal,
        "StopTimeout": state.stop_timeout.unwrap_or(10),
    })
}

/// A time as docker writes one (RFC 3339, UTC); never is Go's zero time.
fn time(ms: Option<u64>) -> String {
    use time::format_description::well_known::Rfc3339;
    ms.and_then(|ms| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
    })
    .and_then(|t| t.format(&Rfc3339).ok())
    .unwrap_or_else(|| "0001-01-01T00:00:00Z".into())
}
