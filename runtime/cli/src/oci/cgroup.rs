//! What husk-runtime does to a running container through its cgroup in
//! the guest (the agent's `Freeze`, `Update` and `Stats` of the command's
//! cgroup): `pause` and `resume`, `update --resources`, `events`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::{container, oci_status, record, resources, PAUSED_FILE};
use crate::vms::control::Control;
use crate::vms::{Status, VmDir};

/// `--interval`: a number and a unit (ms, s, m).
pub(super) fn parse_interval(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?}: a duration such as 5s, 500ms or 1m");
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |i| text.split_at(i));
    let n: u64 = number.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(bad());
    }
    Ok(d)
}

/// Asks the guest agent of running container `id` about its command (the
/// container's process, in the container's cgroup).
fn ask_agent(vm: &VmDir, id: &str, request: &agent::Request) -> anyhow::Result<agent::Response> {
    let state = vm.current_state()?;
    if state.status != Status::Running {
        anyhow::bail!("container {id} is {}, not running", oci_status(vm, &state));
    }
    let mut conn = Control::connect(&vm.control(), id)?.agent()?;
    match agent::call(&mut conn, request)? {
        agent::Response::Error { message, .. } => anyhow::bail!("container {id}: {message}"),
        answer => Ok(answer),
    }
}

/// `pause` (`frozen`) or `resume`: the freezer of the container's cgroup
/// in the guest, as runc's of its cgroup on the host. The VM runs on (its
/// agent answers); every process of the container stops.
pub(super) fn pause(root: &Path, id: &str, frozen: bool) -> anyhow::Result<ExitCode> {
    let vm = container(root, id)?;
    let marker = vm.dir.join(PAUSED_FILE);
    match (frozen, marker.exists()) {
        (true, true) => anyhow::bail!("container {id} is already paused"),
        (false, false) => anyhow::bail!("container {id} is not paused"),
        _ => {}
    }
    ask_agent(
        &vm,
        id,
        &agent::Request::Freeze {
            id: agent::MAIN,
            frozen,
        },
    )?;
    if frozen {
        crate::vms::write_file(&marker, "")?;
    } else {
        std::fs::remove_file(&marker)
            .with_context(|| format!("cannot remove {}", marker.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `update --resources FILE|-`: new limits of the container's cgroup in
/// its VM, within the VM's size.
pub(super) fn update(root: &Path, id: &str, resources: Option<&Path>) -> anyhow::Result<ExitCode> {
    let vm = container(root, id)?;
    let Some(path) = resources else {
        anyhow::bail!("update: give the new limits as --resources FILE (or - for stdin)");
    };
    let text = if path == Path::new("-") {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut text).context("stdin")?;
        text
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    let asked: oci_spec::runtime::LinuxResources = serde_json::from_slice(&text)
        .with_context(|| format!("--resources {}: not OCI linux resources", path.display()))?;
    let size = record(&vm)?
        .size
        .with_context(|| format!("container {id} was created by an older husk-runtime"))?;
    let limits = resources::update(&asked, size).with_context(|| format!("container {id}"))?;
    ask_agent(
        &vm,
        id,
        &agent::Request::Update {
            id: agent::MAIN,
            resources: limits,
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `events`: the container's cgroup figures as runc prints them, once
/// (`--stats`) or every `interval` until it stops, with an `oom` line for
/// each process the kernel killed for its memory limit.
pub(super) fn events(
    root: &Path,
    id: &str,
    once: bool,
    interval: Duration,
) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let vm = container(root, id)?;
    let figures = |vm: &VmDir| match ask_agent(vm, id, &agent::Request::Stats { id: agent::MAIN })?
    {
        agent::Response::Stats(s) => Ok(s),
        other => anyhow::bail!("unexpected answer from the agent: {other:?}"),
    };
    let mut out = std::io::stdout().lock();
    let first = figures(&vm)?;
    writeln!(out, "{}", resources::stats_event(id, &first))?;
    if once {
        return Ok(ExitCode::SUCCESS);
    }
    let oom_kills = |s: &agent::CgroupStats| s.memory_events.get("oom_kill").copied().unwrap_or(0);
    let mut kills = oom_kills(&first);
    loop {
        std::thread::sleep(interval);
        let now = match figures(&vm) {
            Ok(now) => now,
            // The container's end (or its delete) is the end of the
            // stream; any other failure is an error.
            Err(_) if ends_within(&vm, Duration::from_secs(2)) => return Ok(ExitCode::SUCCESS),
            Err(e) => return Err(e),
        };
        for _ in kills..oom_kills(&now) {
            writeln!(out, "{}", serde_json::json!({ "type": "oom", "id": id }))?;
        }
        kills = oom_kills(&now);
        writeln!(out, "{}", resources::stats_event(id, &now))?;
        out.flush()?;
    }
}

/// Whether the container stops (or is deleted) within `limit`: its
/// keeper records the end a moment after the agent is gone.
fn ends_within(vm: &VmDir, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if vm
            .current_state()
            .map_or(true, |s| s.status != Status::Running)
        {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_take_a_unit_and_refuse_zero_and_nonsense() {
        assert_eq!(parse_interval("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_interval("2m"), Ok(Duration::from_secs(120)));
        for bad in [
            "",
            "5",
            "0s",
            "s",
            "1h",
            "-1s",
            "1.5s",
            "307445734561825861m",
        ] {
            assert!(parse_interval(bad).is_err(), "{bad:?}");
        }
    }
}
