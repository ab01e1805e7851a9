//! Checks the keeper runs in the guest through the agent: the readiness
//! check `husk run -d --wait-ready` waits for (`[run.ready]`), and the
//! health check (`--health-cmd`, `[run.health]`), run every interval for
//! as long as the VM runs, its findings in `state.json` as docker keeps
//! them in `State.Health`.

use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;
use crate::vms::{now_ms, Health, HealthStatus};

/// What a check asks of the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Something accepts on 127.0.0.1:PORT.
    Tcp(u16),
    /// The command exits 0.
    Command(Vec<String>),
}

/// A health check and how often it runs (docker's HEALTHCHECK options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
    /// Failures in a row that make the VM unhealthy.
    pub retries: u32,
    /// Failures this soon after the start do not count, until one passes.
    pub start_period: Duration,
    /// What the keeper does when the VM turns unhealthy.
    pub on_failure: OnFailure,
    /// How long a stop for it waits for the command (its stop timeout).
    pub stop_grace: Duration,
}

/// What the keeper does when a VM turns unhealthy, as podman's
/// `--health-on-failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnFailure {
    /// Nothing: the health is only reported (docker's way).
    #[default]
    None,
    /// SIGKILL to the command: the VM ends, and its restart policy applies.
    Kill,
    /// Stop it (its stop signal, SIGKILL after its stop timeout), then
    /// start it again, whatever its restart policy.
    Restart,
    /// Stop it for good.
    Stop,
}

/// What a command's output a check keeps (docker keeps as much).
const OUTPUT_KEPT: usize = 4096;

/// What one check found: 0 it passed, -1 it took longer than its
/// timeout; and the start of what it printed (or why it failed).
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub output: String,
}

impl Outcome {
    fn failed(why: impl std::fmt::Display) -> Self {
        Outcome {
            code: 1,
            output: why.to_string(),
        }
    }
}

/// Runs `check` once in the guest, allowing it `timeout`.
pub fn probe(shared: &Shared, check: &Check, timeout: Duration) -> Outcome {
    let overdue = || Outcome {
        code: -1,
        output: format!("the check took longer than {}", humane(timeout)),
    };
    let timed_out = |e: &anyhow::Error| {
        e.chain()
            .filter_map(|c| c.downcast_ref::<io::Error>())
            .any(|e| {
                matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                )
            })
    };
    match check {
        Check::Tcp(port) => {
            let asked = shared.agent().and_then(|mut conn| {
                conn.set_read_timeout(Some(timeout))?;
                Ok(agent::call(
                    &mut conn,
                    &agent::Request::ProbeTcp { port: *port },
                )?)
            });
            match asked {
                Ok(agent::Response::Ok) => Outcome {
                    code: 0,
                    output: String::new(),
                },
                Ok(agent::Response::Error { message, .. }) => Outcome::failed(message),
                Ok(other) => Outcome::failed(format!("unexpected answer: {other:?}")),
                Err(e) if timed_out(&e) => overdue(),
                Err(e) => Outcome::failed(format!("{e:#}")),
            }
        }
        Check::Command(argv) => match run(shared, argv, timeout) {
            Ok(outcome) => outcome,
            Err(e) if timed_out(&e) => overdue(),
            Err(e) => Outcome::failed(format!("{e:#}")),
        },
    }
}

/// Runs `argv` in the guest as the appliance's user; its status and the
/// start of its output. Past `timeout` it is killed.
fn run(shared: &Shared, argv: &[String], timeout: Duration) -> anyhow::Result<Outcome> {
    let process = agent::Process {
        argv: argv.to_vec(),
        ..Default::default()
    };
    let mut conn = shared.agent()?;
    let id = match agent::call(&mut conn, &agent::Request::Start { process })? {
        agent::Response::Started { id, .. } => id,
        agent::Response::Error { message, .. } => return Ok(Outcome::failed(message)),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    };
    // Both streams are read (they must not fill), the start of each kept.
    let mut readers = Vec::new();
    for stream in [agent::Stream::Stdout, agent::Stream::Stderr] {
        let mut out = shared.agent()?;
        match agent::call(&mut out, &agent::Request::Attach { id, stream })? {
            agent::Response::Ok => {}
            agent::Response::Error { message, .. } => anyhow::bail!("attach: {message}"),
            other => anyhow::bail!("unexpected answer: {other:?}"),
        }
        out.set_read_timeout(None)?;
        readers.push(std::thread::spawn(move || {
            let mut kept = Vec::new();
            let _ = (&mut out).take(OUTPUT_KEPT as u64).read_to_end(&mut kept);
            let _ = io::copy(&mut out, &mut io::sink());
            kept
        }));
    }
    conn.set_read_timeout(Some(timeout))?;
    let status = match agent::call(&mut conn, &agent::Request::Wait { id }) {
        Ok(agent::Response::Exited { status }) => i32::from(status.shell_code()),
        Ok(other) => anyhow::bail!("unexpected answer: {other:?}"),
        Err(e) => {
            // Overdue (or the connection broke): it goes, and is reaped.
            if let Ok(mut kill) = shared.agent() {
                let signal = libc::SIGKILL;
                let _ = agent::call(&mut kill, &agent::Request::Signal { id, signal });
                let _ = agent::call(&mut kill, &agent::Request::Wait { id });
            }
            return Err(e.into());
        }
    };
    let mut output = Vec::new();
    for reader in readers {
        output.extend(reader.join().unwrap_or_default());
    }
    output.truncate(OUTPUT_KEPT);
    Ok(Outcome {
        code: status,
        output: String::from_utf8_lossy(&output).into_owned(),
    })
}

/// Runs `check` every 100 ms until it passes (`Ok`), the VM ends, or
/// `timeout` passes (`Err`, with what the last check found).
pub fn until_ready(shared: &Shared, check: &Check, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        if shared.has_ended() {
            anyhow::bail!("the VM stopped before it was ready");
        }
        let found = probe(shared, check, super::AGENT_TIMEOUT);
        if found.code == 0 {
            return Ok(());
        }
        last = match check {
            Check::Command(argv) => format!(
                "{} exited with {}: {}",
                argv.join(" "),
                found.code,
                found.output.trim()
            ),
            Check::Tcp(_) => found.output,
        };
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!(
        "not ready after {} s (last check: {last})",
        timeout.as_secs()
    )
}

/// Runs the health check every interval until the VM ends, writing what
/// it finds into `state.json`. A paused guest is not checked.
pub fn watch_health(shared: Arc<Shared>, health: HealthCheck) {
    let started = Instant::now();
    shared.update_state(|s| s.health = Some(Health::default()));
    loop {
        if shared.wait_exit(Some(health.interval)).is_some() {
            return;
        }
        let paused = || shared.paused.load(Ordering::SeqCst);
        if paused() {
            continue;
        }
        let start_ms = now_ms();
        let found = probe(&shared, &health.check, health.timeout);
        // Paused meanwhile: the check could not be answered.
        if found.code != 0 && paused() {
            continue;
        }
        let early = started.elapsed() < health.start_period;
        let mut turned = false;
        shared.update_state(|s| {
            let h = s.health.get_or_insert_with(Health::default);
            let was = h.status;
            record(h, &found, start_ms, early, health.retries);
            turned = was != HealthStatus::Unhealthy && h.status == HealthStatus::Unhealthy;
        });
        if turned && health.on_failure != OnFailure::None {
            act_on_failure(&shared, &health);
            return;
        }
    }
}

/// `--health-on-failure`: the VM turned unhealthy.
fn act_on_failure(shared: &Shared, health: &HealthCheck) {
    let grace_ms = health.stop_grace.as_millis() as u64;
    let asked = match health.on_failure {
        OnFailure::None => return,
        OnFailure::Kill => shared.agent_call(&agent::Request::Signal {
            id: agent::MAIN,
            signal: libc::SIGKILL,
        }),
        OnFailure::Restart => {
            shared.health_restart.store(true, Ordering::SeqCst);
            shared.agent_call(&agent::Request::Shutdown {
                grace_ms,
                signal: None,
            })
        }
        OnFailure::Stop => {
            shared.stopped.store(true, Ordering::SeqCst);
            shared.agent_call(&agent::Request::Shutdown {
                grace_ms,
                signal: None,
            })
        }
    };
    // A guest that cannot be asked is ended from outside, as a stop does.
    let ended = asked.is_ok()
        && shared
            .wait_exit(Some(health.stop_grace + Duration::from_secs(5)))
            .is_some();
    if !ended {
        shared.kill_vm();
    }
}

/// One check's outcome, as docker counts it: a pass makes the VM
/// healthy; `retries` failures in a row unhealthy, where failures in
/// the start period before any pass do not count.
fn record(h: &mut Health, found: &Outcome, start_ms: u64, early: bool, retries: u32) {
    h.log.push(crate::vms::HealthCheck {
        start_ms,
        end_ms: now_ms(),
        exit_code: found.code,
        output: found.output.clone(),
    });
    let excess = h.log.len().saturating_sub(Health::KEPT);
    h.log.drain(..excess);
    if found.code == 0 {
        h.status = HealthStatus::Healthy;
        h.failing_streak = 0;
    } else if !(early && h.status == HealthStatus::Starting) {
        h.failing_streak += 1;
        if h.failing_streak >= retries {
            h.status = HealthStatus::Unhealthy;
        }
    }
}

/// A duration as docker prints one: `30s`, `1.5s`, `2m0s`.
fn humane(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs}s")
    } else {
        format!("{}m{}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(code: i32) -> Outcome {
        Outcome {
            code,
            output: format!("code {code}"),
        }
    }

    #[test]
    fn health_is_counted_as_docker_counts_it() {
        let mut h = Health::default();
        // Failures in the start period do not count...
        record(&mut h, &outcome(1), 1, true, 2);
        record(&mut h, &outcome(1), 2, true, 2);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Starting, 0));
        // ...after it they do; a pass resets them.
        record(&mut h, &outcome(1), 3, false, 2);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Starting, 1));
        record(&mut h, &outcome(0), 4, false, 2);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Healthy, 0));
        // Once it passed, the start period no longer excuses a failure.
        record(&mut h, &outcome(-1), 5, true, 2);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Healthy, 1));
        record(&mut h, &outcome(1), 6, false, 2);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Unhealthy, 2));
        // The last five kept, oldest first.
        assert_eq!(
            h.log.iter().map(|c| c.start_ms).collect::<Vec<_>>(),
            [2, 3, 4, 5, 6]
        );
        assert_eq!(h.log[3].exit_code, -1);
        assert_eq!(h.log[4].output, "code 1");
        record(&mut h, &outcome(0), 7, false, 2);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Healthy, 0));
    }

    #[test]
    fn durations_read_as_docker_prints_them() {
        assert_eq!(humane(Duration::from_secs(30)), "30s");
        assert_eq!(humane(Duration::from_millis(1500)), "1.5s");
        assert_eq!(humane(Duration::from_secs(120)), "2m0s");
    }
}
