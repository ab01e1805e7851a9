//! `husk stats`: what running detached appliances use, as `docker stats`
//! shows it for containers.
//!
//! CPU is the host's: the time the VM's processes (the VMM with its vCPU
//! threads, passt, virtiofsd) ran over the sampling interval, 100% being
//! one host CPU. Memory, network, disk and processes are the guest's own
//! counters, through the guest agent (`Usage`); the host's resident
//! memory of the VM's processes is shown beside them.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::vms::control::Control;
use crate::vms::{stat_fields, Status, VmDir};

#[derive(clap::Args)]
pub struct Args {
    /// Print the figures once instead of every 2 seconds
    #[arg(long)]
    no_stream: bool,
    /// Each as TEMPLATE says, as docker's: {{.Name}} {{.CPUPerc}}
    /// {{.MemUsage}} {{.MemPerc}} {{.NetIO}} {{.BlockIO}} {{.PIDs}}
    /// {{.HostRSS}}; "table TEMPLATE"; "json"
    #[arg(long, value_name = "TEMPLATE")]
    format: Option<String>,
    /// Appliances to show (default: every running one)
    names: Vec<String>,
}

/// The fields, as docker names them, and their titles.
const COLUMNS: [(&str, &str); 9] = [
    ("Name", "NAME"),
    ("Container", "CONTAINER"),
    ("CPUPerc", "CPU %"),
    ("MemUsage", "MEM USAGE / LIMIT"),
    ("MemPerc", "MEM %"),
    ("NetIO", "NET I/O"),
    ("BlockIO", "BLOCK I/O"),
    ("PIDs", "PIDS"),
    ("HostRSS", "HOST RSS"),
];

/// What `husk stats` shows without `--format`.
const DEFAULT: &str =
    "table {{.Name}}\\t{{.CPUPerc}}\\t{{.MemUsage}}\\t{{.MemPerc}}\\t{{.NetIO}}\\t\
                       {{.BlockIO}}\\t{{.PIDs}}\\t{{.HostRSS}}";

/// How long CPU time is sampled for.
const INTERVAL: Duration = Duration::from_secs(1);
/// How long a guest agent has to answer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(2);

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let format = super::listing::Format::parse(args.format.as_deref().unwrap_or(DEFAULT))?;
    let vms = if args.names.is_empty() {
        VmDir::all()?
    } else {
        args.names
            .iter()
            .map(|n| VmDir::find(n))
            .collect::<anyhow::Result<_>>()?
    };
    let clear = !args.no_stream && std::io::stdout().is_terminal();
    loop {
        let running: Vec<(VmDir, u32)> = vms
            .iter()
            .filter_map(|vm| {
                let state = vm.current_state().ok()?;
                (state.status == Status::Running).then(|| (vm.clone(), state.keeper_pid))
            })
            .collect();
        let before: Vec<(u64, Instant)> = running
            .iter()
            .map(|(_, keeper)| (cpu_ticks(*keeper), Instant::now()))
            .collect();
        std::thread::sleep(INTERVAL);
        let mut rows = Vec::new();
        for ((vm, keeper), (ticks, at)) in running.iter().zip(before) {
            let cpu = (cpu_ticks(*keeper).saturating_sub(ticks)) as f64
                / ticks_per_second()
                / at.elapsed().as_secs_f64()
                * 100.0;
            // The guest's figures: "--" when its agent does not answer.
            let guest: [String; 5] = match guest_usage(vm) {
                Some(u) => {
                    let used = u.memory_total.saturating_sub(u.memory_available);
                    let pct = used as f64 * 100.0 / u.memory_total.max(1) as f64;
                    [
                        format!("{} / {}", binary(used), binary(u.memory_total)),
                        format!("{pct:.1}%"),
                        format!("{} / {}", decimal(u.net_rx), decimal(u.net_tx)),
                        format!("{} / {}", decimal(u.block_read), decimal(u.block_write)),
                        u.pids.to_string(),
                    ]
                }
                None => std::array::from_fn(|_| "--".to_string()),
            };
            let rss = binary(resident(*keeper));
            rows.push(super::listing::row(&COLUMNS, |field| match field {
                "Name" | "Container" => vm.name.clone(),
                "CPUPerc" => format!("{cpu:.1}%"),
                "MemUsage" => guest[0].clone(),
                "MemPerc" => guest[1].clone(),
                "NetIO" => guest[2].clone(),
                "BlockIO" => guest[3].clone(),
                "PIDs" => guest[4].clone(),
                _ => rss.clone(),
            }));
        }
        if clear {
            // As docker stats does: the table in place of the last one.
            print!("\x1b[2J\x1b[H");
        }
        format.print(&COLUMNS, &rows)?;
        if args.no_stream {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_secs(2).saturating_sub(INTERVAL));
    }
}

/// The guest's own figures, or `None` when its agent does not answer.
fn guest_usage(vm: &VmDir) -> Option<agent::Usage> {
    let mut control = Control::connect(&vm.control(), &vm.name).ok()?;
    control.set_timeout(Some(AGENT_TIMEOUT));
    let mut conn = control.agent().ok()?;
    conn.set_read_timeout(Some(AGENT_TIMEOUT)).ok()?;
    match agent::call(&mut conn, &agent::Request::Usage).ok()? {
        agent::Response::Usage(u) => Some(u),
        _ => None,
    }
}

/// The VM's processes: the keeper's descendants (the keeper itself, which
/// only relays, left out).
fn vm_processes(keeper: u32) -> Vec<u32> {
    let mut all = children(keeper);
    let mut i = 0;
    while i < all.len() {
        let more = children(all[i]);
        all.extend(more);
        i += 1;
    }
    all
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|task| {
            std::fs::read_to_string(task.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// CPU time (user and system, every thread) of the VM's processes, in
/// clock ticks.
fn cpu_ticks(keeper: u32) -> u64 {
    vm_processes(keeper)
        .into_iter()
        // utime and stime.
        .filter_map(|pid| stat_fields(pid, [14, 15]))
        .map(|[user, system]| user + system)
        .sum()
}

/// Resident memory of the VM's processes, in bytes.
fn resident(keeper: u32) -> u64 {
    vm_processes(keeper)
        .into_iter()
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()?;
            Some(kib * 1024)
        })
        .sum()
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// Memory as docker shows it: KiB, MiB, GiB.
fn binary(bytes: u64) -> String {
    scaled(bytes, 1024.0, &["B", "KiB", "MiB", "GiB", "TiB"])
}

/// Traffic as docker shows it: kB, MB, GB.
fn decimal(bytes: u64) -> String {
    scaled(bytes, 1000.0, &["B", "kB", "MB", "GB", "TB"])
}

fn scaled(bytes: u64, step: f64, units: &[&str]) -> String {
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= step && unit + 1 < units.len() {
        value /= step;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}{}", units[0])
    } else {
        format!("{value:.1}{}", units[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_docker_prints_them() {
        assert_eq!(binary(512), "512B");
        assert_eq!(binary(64 << 20), "64.0MiB");
        assert_eq!(binary(1536), "1.5KiB");
        assert_eq!(decimal(1500), "1.5kB");
        assert_eq!(decimal(2_000_000), "2.0MB");
        assert_eq!(decimal(0), "0B");
    }

    #[test]
    fn a_process_tree_is_found_and_measured() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        // The shell starts its sleep.
        let me = std::process::id();
        let deadline = Instant::now() + Duration::from_secs(5);
        while vm_processes(me).len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let tree = vm_processes(me);
        assert!(tree.contains(&child.id()) && tree.len() >= 2, "{tree:?}");
        assert!(resident(me) > 0);
        // The shell's own tree goes whole: its sleep, then the shell.
        for pid in vm_processes(child.id()) {
            // SAFETY: kill(2) of a pid this test's shell started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
