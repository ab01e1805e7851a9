//! The keeper's control socket: `husk exec`, `stop`, `kill`, `snapshot
//! create` and a held command's start reach the VM through it, one thread
//! per connection.

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::super::control::{self, Request, Response};
use super::super::{now_ms, Status};
use super::{Shared, AGENT_TIMEOUT};
use crate::commands::exec::{pump_out, pump_stdin, sigwinch, window_size};

/// The control socket: a thread per connection.
pub(super) fn serve(listener: UnixListener, shared: &Arc<Shared>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let shared = Arc::clone(shared);
        let _ = std::thread::Builder::new()
            .name("control-conn".into())
            .spawn(move || control_connection(conn, &shared));
    }
}

fn control_connection(mut conn: UnixStream, shared: &Arc<Shared>) {
    loop {
        let request = match agent::read::<Request>(&mut conn) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let message = format!("bad request: {e}");
                let _ = agent::write(&mut conn, &Response::Error { message });
                return;
            }
        };
        // The keeper is leaving or running itself again: closed
        // unanswered, the caller asks again or finds it exited.
        let Some(_pass) = shared.gate.enter() else {
            return;
        };
        let sent = match request {
            // Handed over without the keeper's own read timeout (a socket
            // option, so it would travel with the descriptor): the caller
            // may wait on it for as long as a process runs.
            // The connection is the console's stream from here on, held by
            // the keeper's output pump (not by this request's pass).
            Request::Attach { stdin, since_ms } => {
                let stdin = stdin && super::attach::has_input(shared);
                if agent::write(&mut conn, &Response::Attached { stdin }).is_ok() {
                    super::attach::attach(shared, conn, stdin, since_ms);
                }
                return;
            }
            Request::Agent => match shared.agent().and_then(|a| {
                a.set_read_timeout(None)?;
                Ok(a)
            }) {
                Ok(agent) => control::send_with_fd(&conn, &Response::Ok, &agent),
                Err(e) => agent::write(&mut conn, &error(e)).map_err(io::Error::other),
            },
            other => {
                let response = answer(shared, other).unwrap_or_else(error);
                agent::write(&mut conn, &response).map_err(io::Error::other)
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

fn error(e: anyhow::Error) -> Response {
    Response::Error {
        message: format!("{e:#}"),
    }
}

fn answer(shared: &Shared, request: Request) -> anyhow::Result<Response> {
    match request {
        Request::Agent => anyhow::bail!("an agent connection is answered with a descriptor"),
        Request::Attach { .. } => anyhow::bail!("an attach is answered with the console's stream"),
        Request::Info => match shared.agent_call(&agent::Request::Info)? {
            agent::Response::Info(guest) => Ok(Response::Info { guest }),
            other => anyhow::bail!("unexpected answer from the guest agent: {other:?}"),
        },
        Request::Start { process } => start_held(shared, *process),
        Request::Kill { signal } => {
            // A paused guest runs again to take it (as docker does).
            unpause_to_end(shared);
            if super::restart::stops_for_good(signal) {
                shared
                    .stopped
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            if *shared.held.lock().unwrap_or_else(|e| e.into_inner()) {
                // No command yet: the signal ends the guest that waits for it.
                shared.kill_vm();
                shared.wait_exit(Some(Duration::from_secs(5)));
                return Ok(Response::Ok);
            }
            let sent = shared.agent_call(&agent::Request::Signal {
                id: agent::MAIN,
                signal,
            });
            match sent {
                Ok(_) => Ok(Response::Ok),
                // A signal that ends the command can power the guest off
                // before the agent's answer leaves it: delivered all the same.
                Err(_) if shared.wait_exit(Some(Duration::from_secs(2))).is_some() => {
                    Ok(Response::Ok)
                }
                Err(e) => Err(e),
            }
        }
        Request::Wait => Ok(Response::Exited {
            code: shared.wait_exit(None).flatten(),
        }),
        Request::Snapshot { dir } => snapshot(shared, &dir).map(|()| Response::Ok),
        Request::Pause { paused } => set_paused(shared, paused).map(|()| Response::Ok),
        Request::Connect {
            network,
            aliases,
            ip,
        } => connect(shared, &network, &aliases, ip).map(|()| Response::Ok),
        Request::Disconnect { network } => disconnect(shared, &network).map(|()| Response::Ok),
        Request::Stop { grace_ms, signal } => {
            shared
                .stopped
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let grace = Duration::from_millis(grace_ms);
            unpause_to_end(shared);
            if !shared.has_ended() {
                let asked = shared.agent_call(&agent::Request::Shutdown { grace_ms, signal });
                // The guest ends the command after the grace period itself;
                // a guest that does not (or cannot be asked) is stopped
                // from outside a little after that.
                let wait = if asked.is_ok() {
                    grace + Duration::from_secs(5)
                } else {
                    Duration::ZERO
                };
                if shared.wait_exit(Some(wait)).is_none() {
                    shared.kill_vm();
                }
            }
            Ok(Response::Exited {
                code: shared.wait_exit(None).flatten(),
            })
        }
    }
}

/// How long the VMM may take to write a snapshot (the guest is paused
/// meanwhile): its RAM goes to disk.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Snapshots the running VM into the new folder `dir`: its files made
/// here (the VMM opens nothing), handed to the VMM, written while the
/// guest is paused. Nothing is left of a snapshot that failed.
fn snapshot(shared: &Shared, dir: &std::path::Path) -> anyhow::Result<()> {
    use crate::commands::run::named::Offer;
    let name = &shared.vm.name;
    if shared.has_ended() {
        anyhow::bail!("{name} has stopped");
    }
    let offer: Offer = std::fs::read(shared.vm.snapshot_offer())
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok())
        .with_context(|| {
            format!("{name} was started by a husk that takes no snapshots: husk restart {name}")
        })?;
    let (mut meta, header, disks) = match offer {
        Offer::Ready {
            meta,
            header,
            disks,
        } => (*meta, header, disks),
        Offer::Refused { why } => anyhow::bail!("no snapshot can be taken of {name}: {why}"),
    };
    let socket = shared.snapshots.lock().unwrap_or_else(|e| e.into_inner());
    if shared.paused.load(Ordering::SeqCst) {
        anyhow::bail!("{name} is paused: husk unpause {name}, then snapshot it");
    }
    if dir.exists() {
        anyhow::bail!("{} exists already", dir.display());
    }
    let taken = (|| {
        let target = vmm::snapshot::Target::create(dir, header, disks)?;
        meta.created_ms = now_ms();
        let text = serde_json::to_vec_pretty(&meta).expect("plain data serializes");
        let meta_file = dir.join(crate::commands::run::warm::META_FILE);
        super::super::write_file(&meta_file, text)
            .with_context(|| format!("cannot write {}", meta_file.display()))?;
        vmm::snapshot::request(&socket, &target, SNAPSHOT_TIMEOUT)?;
        anyhow::Ok(())
    })();
    if let Err(e) = taken {
        let _ = std::fs::remove_dir_all(dir);
        return Err(e.context(format!("cannot snapshot {name}")));
    }
    Ok(())
}

/// How long the VMM may take to put an interface into a slot or take
/// one out.
const PLUG_TIMEOUT: Duration = Duration::from_secs(10);

/// A network connected while the VM runs: the slot its interface is in,
/// and what says when its membership let the network go.
pub(super) struct Connected {
    network: String,
    device: u32,
    left: crate::networks::Left,
}

/// `husk network connect` of the running VM: joins the network, has the
/// VMM put an interface on it into an empty slot and the guest take it,
/// and records it, so the VM is on it from its next start too (as docker
/// keeps a connected network). Nothing stays of a connect that failed.
fn connect(
    shared: &Shared,
    network: &str,
    aliases: &[String],
    ip: Option<std::net::Ipv4Addr>,
) -> anyhow::Result<()> {
    let name = &shared.vm.name;
    let socket = shared.snapshots.lock().unwrap_or_else(|e| e.into_inner());
    let mut connected = shared.connected.lock().unwrap_or_else(|e| e.into_inner());
    if shared.has_ended() {
        anyhow::bail!("{name} has stopped");
    }
    if shared.paused.load(Ordering::SeqCst) {
        anyhow::bail!("{name} is paused (husk unpause {name})");
    }
    let state = shared.vm.read_state()?;
    if state.networks.iter().any(|n| n == network) {
        anyhow::bail!("{name} is on {network} already");
    }
    state.check_recorded()?;
    let args = crate::commands::run::with_network_at(&state.args, network, aliases, ip)?;
    let mut names = vec![name.clone()];
    names.extend(aliases.iter().filter(|a| *a != name).cloned());
    let member = crate::commands::run::Member {
        names,
        vm_dir: Some(shared.vm.dir.clone()),
    };
    let mac = crate::commands::run::random_mac();
    let joined = member.join(network, mac, ip)?;
    let stream = std::os::unix::net::UnixStream::from(joined.socket);
    // Kept until the VM's end of the socket closes: the VMM's copy, or,
    // should the VMM not take it, ours, just below.
    let left = joined.membership.keep();
    let plugged = vmm::snapshot::plug(&socket, mac, network, &stream, PLUG_TIMEOUT);
    drop(stream);
    let device = match plugged {
        Ok(device) => device,
        Err(e) => {
            left.wait(Instant::now() + LEAVE_TIMEOUT);
            return Err(
                anyhow::Error::from(e).context(format!("cannot connect {name} to {network}"))
            );
        }
    };
    let took = shared.agent_call(&agent::Request::PlugInterface {
        device,
        network: network.to_string(),
        address: joined.address,
        prefix: joined.prefix,
        address6: joined.address6,
    });
    if let Err(e) = took {
        // Out again, whatever the guest did with it.
        let _ = shared.agent_call(&agent::Request::UnplugInterface { device });
        if let Err(out) = vmm::snapshot::unplug(&socket, device, PLUG_TIMEOUT) {
            tracing::warn!(
                "{name}: its interface on {network} stays in virtio-mmio.{device}: {out}"
            );
        }
        left.wait(Instant::now() + LEAVE_TIMEOUT);
        return Err(e.context(format!(
            "{name}'s guest did not take its interface on {network}"
        )));
    }
    connected.push(Connected {
        network: network.to_string(),
        device,
        left,
    });
    let network = network.to_string();
    shared.update_state(move |s| {
        s.args = args;
        s.networks.push(network);
    });
    Ok(())
}

/// How long a membership may take to give its address up.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// `husk network disconnect` of the running VM, from a network it booted
/// on or one connected while it ran: the guest lets the interface go, the
/// VMM takes it out of its slot, and the network is off its recorded
/// command line. The VM's end of the interface's socket closes with it,
/// which ends its membership.
fn disconnect(shared: &Shared, network: &str) -> anyhow::Result<()> {
    let name = &shared.vm.name;
    let socket = shared.snapshots.lock().unwrap_or_else(|e| e.into_inner());
    let mut connected = shared.connected.lock().unwrap_or_else(|e| e.into_inner());
    if shared.paused.load(Ordering::SeqCst) {
        anyhow::bail!("{name} is paused (husk unpause {name})");
    }
    let state = shared.vm.read_state()?;
    if !state.networks.iter().any(|n| n == network) {
        anyhow::bail!("{name} is not on {network}");
    }
    let args = crate::commands::run::without_network(&state.args, network)?.with_context(|| {
        format!(
            "{name} is on {network} through its appliance file ([[vm.net]]), which husk \
                 does not change"
        )
    })?;
    let at = connected.iter().position(|c| c.network == network);
    let device = match at {
        Some(at) => connected[at].device,
        // One it booted on: its slot is the VMM's to say (a VM started
        // by an older husk has none).
        None => vmm::snapshot::locate(&socket, network, PLUG_TIMEOUT).with_context(|| {
            format!("{name} booted on {network} without a slot to take it out of while it runs: husk stop {name}, then disconnect it")
        })?,
    };
    shared
        .agent_call(&agent::Request::UnplugInterface { device })
        .with_context(|| format!("{name}'s guest did not let its interface on {network} go"))?;
    vmm::snapshot::unplug(&socket, device, PLUG_TIMEOUT)
        .with_context(|| format!("cannot take {name}'s interface on {network} out"))?;
    if let Some(at) = at {
        connected
            .remove(at)
            .left
            .wait(Instant::now() + LEAVE_TIMEOUT);
    }
    let network = network.to_string();
    shared.update_state(move |s| {
        s.args = args;
        s.networks.retain(|n| *n != network);
    });
    Ok(())
}

/// Once the VM ended: waits (briefly) for the memberships of the networks
/// connected while it ran to give their addresses up.
pub(super) fn leave_connected(shared: &Shared) {
    let connected =
        std::mem::take(&mut *shared.connected.lock().unwrap_or_else(|e| e.into_inner()));
    let deadline = Instant::now() + LEAVE_TIMEOUT;
    for c in connected {
        c.left.wait(deadline);
    }
}

/// How long the VMM may take to stop or restart its vCPUs.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// `husk pause` and `unpause`: the VMM stops every vCPU, or lets them run
/// on, and `state.json` says so (`ps` shows it). The guest's devices go
/// on meanwhile: what arrives for it waits in their queues, and a
/// published port's connections wait to be accepted.
fn set_paused(shared: &Shared, paused: bool) -> anyhow::Result<()> {
    let name = &shared.vm.name;
    let socket = shared.snapshots.lock().unwrap_or_else(|e| e.into_inner());
    let running = !shared.has_ended()
        && shared
            .vm
            .read_state()
            .is_ok_and(|s| s.status == Status::Running);
    if !running {
        anyhow::bail!("{name} is not running");
    }
    match (paused, shared.paused.load(Ordering::SeqCst)) {
        (true, true) => anyhow::bail!("{name} is paused already"),
        (false, false) => anyhow::bail!("{name} is not paused"),
        _ => {}
    }
    vmm::snapshot::pause(&socket, paused, PAUSE_TIMEOUT).with_context(|| {
        let what = if paused { "pause" } else { "unpause" };
        format!("cannot {what} {name}")
    })?;
    shared.paused.store(paused, Ordering::SeqCst);
    shared.update_state(|s| s.paused = paused);
    Ok(())
}

/// Lets a paused guest run again so that it can be stopped or signalled;
/// one that cannot be resumed is ended from outside by its caller.
fn unpause_to_end(shared: &Shared) {
    if shared.paused.load(Ordering::SeqCst) {
        if let Err(e) = set_paused(shared, false) {
            tracing::warn!("{e:#}");
        }
    }
}

/// Starts the command a held guest waits for, and relays its streams to
/// the keeper's own stdin, stdout and stderr (a terminal's to stdin and
/// stdout, with its size followed).
fn start_held(shared: &Shared, process: agent::Process) -> anyhow::Result<Response> {
    let mut held = shared.held.lock().unwrap_or_else(|e| e.into_inner());
    if !*held {
        anyhow::bail!("the command has already started");
    }
    let mut conn = shared.agent()?;
    let tty = process.tty;
    match agent::call(&mut conn, &agent::Request::StartMain { process })? {
        agent::Response::Started { .. } => {}
        agent::Response::Error { message, .. } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer from the guest agent: {other:?}"),
    }
    *held = false;
    drop(held);
    let attach = |stream| -> anyhow::Result<UnixStream> {
        let mut conn = shared.agent()?;
        match agent::call(
            &mut conn,
            &agent::Request::Attach {
                id: agent::MAIN,
                stream,
            },
        )? {
            agent::Response::Ok => {}
            agent::Response::Error { message, .. } => anyhow::bail!("{message}"),
            other => anyhow::bail!("unexpected answer from the guest agent: {other:?}"),
        }
        conn.set_read_timeout(None)?;
        Ok(conn)
    };
    // The keeper's own stdin, stdout and stderr are the caller's (WORD_FD_ENV).
    let mut relays = shared.relays.lock().unwrap_or_else(|e| e.into_inner());
    if tty {
        let conn = attach(agent::Stream::Tty)?;
        pump_stdin(conn.try_clone()?);
        relays.push(pump_out(conn, io::stdout()));
        follow_window_size(shared)?;
    } else {
        relays.push(pump_out(attach(agent::Stream::Stdout)?, io::stdout()));
        relays.push(pump_out(attach(agent::Stream::Stderr)?, io::stderr()));
        pump_stdin(attach(agent::Stream::Stdin)?);
    }
    shared.update_state(|s| {
        s.status = Status::Running;
        s.started_ms = Some(now_ms());
    });
    Ok(Response::Ok)
}

/// The keeper's stdin is a terminal (the slave of the pty husk-runtime
/// handed to its caller): each size change there (SIGWINCH, which the
/// keeper gets as the terminal's session leader) is passed to the guest's
/// terminal, and the size it has now at once.
fn follow_window_size(shared: &Shared) -> anyhow::Result<()> {
    let resize = move |uds: &std::path::Path| {
        let Some(size) = window_size() else { return };
        if let Ok(mut conn) = vmm::vsock::connect_guest(uds, agent::PORT, AGENT_TIMEOUT) {
            let _ = agent::call(
                &mut conn,
                &agent::Request::Resize {
                    id: agent::MAIN,
                    size,
                },
            );
        }
    };
    resize(&shared.uds);
    let uds = shared.uds.clone();
    std::thread::Builder::new()
        .name("winch".into())
        .spawn(move || loop {
            // SIGWINCH is blocked in every thread (keep() blocked it first).
            let set = sigwinch();
            let mut signal = 0;
            // SAFETY: a valid set, and a valid out-pointer for the signal.
            if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                return;
            }
            resize(&uds);
        })?;
    Ok(())
}
