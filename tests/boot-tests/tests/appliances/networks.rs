//! Networks between appliances (`husk network`, `--net NAME`): members
//! reach each other by address and by name through the network's hub, a
//! running member is connected to another network and disconnected, a
//! network that is not internal leaves the way out to the user-mode
//! network, names follow members joining and leaving, a restart keeps its
//! address, the hub leaves with the last member, also after `kill -9`
//! of a member, and a hub killed is replaced by the next, which its
//! members join again with their connections open and their addresses
//! their own, even when a new run joins it first; the host reaches the
//! members by address through the hub's host port. The networks live under `$HUSK_DATA_DIR` on
//! the test's tmpfs (the bed's own root is read-only).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};

use super::detached::{h, ok, tree, Vm};
use super::network::{children, gone, start_until_ready};
use super::shares::folder;
use super::volumes::refused;

pub fn trials() -> Vec<Trial> {
    vec![boot_tests::trial(
        "networks_join_appliances_by_name_and_their_hub_leaves_with_the_last",
        networks,
    )]
}

fn networks() -> Result<(), Failed> {
    let home = folder("networks")?;
    // Every husk this test starts (and only this test uses networks).
    std::env::set_var("HUSK_DATA_DIR", home.path());
    let result = networks_in(&home.path().join("networks"));
    std::env::remove_var("HUSK_DATA_DIR");
    result
}

fn networks_in(root: &Path) -> Result<(), Failed> {
    let made = ok(h(&["network", "create", "backend"])?, "husk network create")?;
    if made.stdout.trim() != "backend" || !made.stderr.contains("10.89.") {
        return Err(made
            .explain("create should print the name, and the subnet on stderr")
            .into());
    }
    refused(h(&["network", "create", "backend"])?, "exists already")?;
    refused(h(&["network", "create", "bridge"])?, "--net word")?;
    refused(
        h(&["run", "--net", "nowhere", "examples/hello"])?,
        "no such network: nowhere",
    )?;

    // A server on the network alone (--net none: no way out), with an
    // alias beside its name.
    let web = Vm::start(
        "netweb",
        &[
            "--net",
            "none",
            "--net",
            "backend",
            "--network-alias",
            "www",
            "--wait-ready",
            "examples/web",
        ],
    )?;
    let keeper = web.keeper()?;
    let address = address_of(&web)?;
    if !address.starts_with("10.89.") {
        return Err(format!("netweb's address on backend: {address:?}").into());
    }
    // The host (root's network) reaches it by address, through the hub's
    // host port: an interface with the network's .1.
    host_reaches(&address)?;
    let ls = ok(h(&["network", "ls"])?, "husk network ls")?;
    if !ls.stdout.lines().any(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        words.len() == 5
            && words[0] == "backend"
            && words[1].starts_with("10.89.")
            && words[3..] == ["yes", "netweb"]
    }) {
        return Err(ls
            .explain("ls should show backend in use, by netweb")
            .into());
    }
    refused(h(&["network", "rm", "backend"])?, "named by netweb")?;
    refused(
        h(&["network", "rm", "-f", "backend"])?,
        "has appliances on it",
    )?;
    // prune takes only what no appliance names.
    ok(h(&["network", "create", "spare"])?, "create spare")?;
    let pruned = ok(h(&["network", "prune", "-f"])?, "husk network prune -f")?;
    if pruned.stdout.trim() != "spare" {
        return Err(pruned.explain("prune should remove spare alone").into());
    }

    // A client on the network (and, by default, the user-mode network for
    // its way out) reaches the server by name and by alias.
    let mut cmd = Command::new(boot_tests::husk::husk_bin()?);
    cmd.args([
        "run",
        "--timeout",
        "120",
        "--net",
        "backend",
        "--hostname",
        "client",
        "examples/busybox",
        "--",
        "sh",
        "-c",
        "wget -q -O- http://netweb/ && wget -q -O- http://www/ && \
         ip route | grep -c '^default' && echo ready && sleep 100",
    ]);
    let (mut client, seen, rest) = start_until_ready(cmd)?;
    let pid = client.id();
    let checked = (|| -> Result<(), Failed> {
        let pages = seen.matches("Hello from a husk appliance").count();
        if pages != 2 || !seen.lines().any(|l| l.trim() == "1") {
            return Err(format!(
                "the client should fetch the page by name and by alias, with one \
                 default route (the user-mode network's); it printed:\n{seen}"
            )
            .into());
        }
        // The server learned the client's name when it joined.
        hosts_until(&web, |hosts| hosts.contains("client"))?;
        ok(
            web.exec(&["ping", "-c", "1", "-W", "5", "client"])?,
            "ping client from netweb",
        )?;
        Ok(())
    })();
    // kill -9 of the client's husk: it leaves the network, and its name
    // goes from the server's /etc/hosts.
    let _ = client.kill();
    let _ = client.wait();
    let _ = rest.join();
    checked?;
    if !gone(pid) {
        return Err(format!("husk {pid} outlived kill -9").into());
    }
    hosts_until(&web, |hosts| !hosts.contains("client"))?;

    // A restart joins again with the address it had.
    ok(h(&["restart", "-t", "1", &web.name])?, "husk restart")?;
    let again = address_of(&web)?;
    if again != address {
        return Err(format!("netweb had {address} before its restart, {again} after").into());
    }

    // --ip: that address or none; web's is taken.
    let (web_ip, prefix) = address.split_once('/').unwrap_or((&address, "24"));
    let fixed = format!("{}.77", &web_ip[..web_ip.rfind('.').unwrap_or(0)]);
    let on = |ip: &str| {
        h(&[
            "run",
            "--net",
            "none",
            "--net",
            "backend",
            "--ip",
            ip,
            "--mac-address",
            "02:42:ac:11:00:99",
            "examples/busybox",
            "--",
            "sh",
            "-c",
            "ip -4 -o addr show eth0; cat /sys/class/net/eth0/address",
        ])
    };
    let r = on(&fixed)?;
    if r.code != Some(0)
        || !r.stdout.contains(&format!(" {fixed}/{prefix} "))
        || !r.stdout.contains("02:42:ac:11:00:99")
    {
        return Err(r
            .explain(&format!(
                "the run should have {fixed} on eth0, with --mac-address's MAC"
            ))
            .into());
    }
    refused(
        on(web_ip)?,
        &format!("{web_ip} is taken by another member (netweb www)"),
    )?;

    ok(
        h(&["network", "create", "--ipv6", "frontend"])?,
        "husk network create --ipv6",
    )?;
    connected_while_running(root, &web)?;

    // Connected to a second network while stopped, it joins it at its
    // start (after backend: its address there stays); disconnected, it
    // is off it at the next.
    let restarted_on = |networks: &str| -> Result<String, Failed> {
        ok(h(&["stop", "-t", "1", &web.name])?, "husk stop")?;
        let verb = if networks == "both" {
            "connect"
        } else {
            "disconnect"
        };
        ok(
            h(&["network", verb, "frontend", &web.name])?,
            "husk network connect",
        )?;
        ok(h(&["start", &web.name])?, "husk start")?;
        address_of(&web)?;
        let r = web.exec(&["sh", "-c", "ip -4 -o addr show | grep -c ' 10\\.'"])?;
        Ok(r.stdout.trim().to_string())
    };
    let two = restarted_on("both")?;
    if two != "2" || address_of(&web)? != address {
        return Err(format!(
            "after connect: {two} addresses on networks (want 2), eth0 {}",
            address_of(&web)?
        )
        .into());
    }
    let one = restarted_on("backend")?;
    if one != "1" {
        return Err(format!("after disconnect: {one} addresses on networks (want 1)").into());
    }
    no_hub(root, "frontend")?;
    ok(h(&["network", "rm", "frontend"])?, "husk network rm")?;

    // kill -9 of the hub, with a TCP connection open across it between
    // two members: their husks start the next hub and join it again with
    // the same addresses and sockets, and the connection goes on.
    ok(
        web.exec(&[
            "sh",
            "-c",
            "(sleep 1000 | nc -l -p 7000 > /tmp/through-the-kill) > /dev/null 2>&1 &",
        ])?,
        "a listener in netweb",
    )?;
    let told = tempfile::NamedTempFile::new()?;
    let mut cmd = on_backend_alone(
        "{ echo one; echo ready >&2; sleep 20; echo two; } | nc netweb 7000; \
         echo nc=$?; wget -q -O- http://netweb/",
    )?;
    cmd.stderr(told.reopen()?);
    let (mut client, _, rest) = start_until_ready(cmd)?;
    let across = (|| -> Result<(), Failed> {
        // The connection is up once the first line is there.
        let deadline = Instant::now() + Duration::from_secs(20);
        while ok(web.exec(&["cat", "/tmp/through-the-kill"])?, "cat")?.stdout != "one\n" {
            if Instant::now() > deadline {
                return Err("netweb never got the client's first line".into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let hubs = hubs_of("backend");
        if hubs.len() != 1 {
            return Err(format!("one hub should serve backend: {hubs:?}").into());
        }
        // It reads what guests send, so it runs confined: seccomp, and its
        // network's folder as its root (in a user namespace of its own).
        let status = std::fs::read_to_string(format!("/proc/{}/status", hubs[0]))?;
        let seen_root = std::fs::read_link(format!("/proc/{}/root", hubs[0]))?;
        if !status.contains("\nSeccomp:\t2\n")
            || seen_root != root.join("backend").canonicalize()?
        {
            return Err(
                format!("the hub is not confined: root {seen_root:?}, status:\n{status}").into(),
            );
        }
        // SAFETY: kill(2) with a pid and a signal number has no memory effects.
        unsafe { libc::kill(hubs[0] as i32, libc::SIGKILL) };
        if !gone(hubs[0]) {
            return Err("the hub outlived kill -9".into());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = hubs_of("backend");
            if now.len() == 1 && now[0] != hubs[0] {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("no new hub serves backend: {now:?}").into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if client.try_wait()?.is_some() {
            return Err("the client finished before the hub was killed: \
                        nothing was open across the kill"
                .into());
        }
        // The next hub has a host port of its own.
        host_reaches(&address)?;
        Ok(())
    })();
    let waited = exited_within(&mut client, Duration::from_secs(90));
    if waited.is_none() {
        let _ = client.kill();
        let _ = client.wait();
    }
    let out = rest.join().unwrap_or_default();
    let said = std::fs::read_to_string(told.path())?;
    across?;
    let got = ok(web.exec(&["cat", "/tmp/through-the-kill"])?, "cat")?.stdout;
    if waited.and_then(|s| s.code()) != Some(0)
        || !out.contains("nc=0")
        || !out.contains("Hello from a husk appliance")
        || got != "one\ntwo\n"
        || !said.contains("joined its next one, at 10.89.")
    {
        return Err(format!(
            "across the hub's kill -9 the connection should go on and the page come \
             by name ({waited:?}); the client printed:\n{out}\nhusk said:\n{said}\n\
             netweb got {got:?}"
        )
        .into());
    }

    rejoin_before_a_new_run(root, &web, &address)?;

    // The network it booted on goes while it runs too, as docker's does:
    // its interface, and its membership (the hub, whose last member it
    // was, leaves); a snapshot, whose restore would bring the interface
    // back, is refused.
    ok(
        h(&["network", "disconnect", "backend", &web.name])?,
        "husk network disconnect of the network netweb booted on",
    )?;
    let r = web.exec(&[
        "sh",
        "-c",
        "ip -4 -o addr show | grep -c ' 10\\.'; ls /sys/class/net",
    ])?;
    if !r.stdout.starts_with("0\n") || r.stdout.contains("eth0") {
        return Err(r
            .explain("netweb should have no interface on a network left")
            .into());
    }
    no_hub(root, "backend")?;
    let ps = ok(
        h(&["ps", "--format", "{{.Networks}}", "-f", "name=netweb"])?,
        "husk ps",
    )?;
    if ps.stdout.contains("backend") {
        return Err(ps.explain("ps should show netweb off backend").into());
    }
    let snapshots = tempfile::tempdir()?;
    let mut snapshot = Command::new(boot_tests::husk::husk_bin()?);
    snapshot
        .args(["snapshot", "create", &web.name, "after-disconnect"])
        .env("HUSK_SNAPSHOT_DIR", snapshots.path());
    refused(
        boot_tests::husk::output_within(snapshot, b"", Duration::from_secs(60))?,
        "disconnected while it ran",
    )?;
    if snapshots.path().join("after-disconnect").exists() {
        return Err("the refused snapshot left its folder behind".into());
    }

    web.remove(&tree(keeper))?;
    no_hub(root, "backend")?;
    // Every member gave its address up: no lease is left.
    let leases: Vec<_> = std::fs::read_dir(root.join("backend/members"))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    if !leases.is_empty() {
        return Err(format!("leases left in backend/members: {leases:?}").into());
    }
    let log = std::fs::read_to_string(root.join("backend/hub.log"))?;
    if log.contains("refused") || !log.contains(" left (") {
        return Err(format!("the hubs' log:\n{log}").into());
    }
    // The host's interfaces went with their hubs.
    let taps: Vec<String> = std::fs::read_dir("/sys/class/net")?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("husk"))
        .collect();
    if !taps.is_empty() {
        return Err(format!("host interfaces left: {taps:?}").into());
    }
    ok(h(&["network", "rm", "backend"])?, "husk network rm")?;
    let left: Vec<String> = std::fs::read_dir(root)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".create.lock")
        .collect();
    if !left.is_empty() {
        return Err(format!("left in the networks' folder: {left:?}").into());
    }
    Ok(())
}

/// Connected to a second network while it runs, a member gets an
/// interface on it at once, and another member there reaches it by name
/// and by the connect's alias; disconnected, the interface goes (and the
/// network's hub with its last member).
fn connected_while_running(root: &Path, web: &Vm) -> Result<(), Failed> {
    let on_networks = |want: &str, when: &str| -> Result<(), Failed> {
        let r = web.exec(&["sh", "-c", "ip -4 -o addr show | grep -c ' 10\\.'"])?;
        let got = r.stdout.trim();
        if got != want {
            return Err(format!("{when}: {got} addresses on networks (want {want})").into());
        }
        Ok(())
    };
    // At an address of its own choosing there (--ip), as docker's.
    let inspected = ok(h(&["network", "inspect", "frontend"])?, "inspect")?;
    let inspected: serde_json::Value = serde_json::from_str(&inspected.stdout)?;
    let subnet = inspected[0]["Subnet"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let at = format!("{}.50", &subnet[..subnet.rfind('.').unwrap_or(0)]);
    // frontend has IPv6 too: netweb's address there is the IPv6 subnet's
    // prefix with its IPv4 address's host part (.50).
    let subnet6 = inspected[0]["IPv6Subnet"].as_str().unwrap_or_default();
    let prefix6: std::net::Ipv6Addr = subnet6
        .split_once('/')
        .and_then(|(a, _)| a.parse().ok())
        .ok_or_else(|| format!("network inspect's IPv6Subnet: {subnet6:?}"))?;
    let at6 = std::net::Ipv6Addr::from(u128::from(prefix6) | 50).to_string();
    ok(
        h(&[
            "network", "connect", "--alias", "front", "--ip", &at, "frontend", &web.name,
        ])?,
        "husk network connect of a running appliance",
    )?;
    let addresses = ok(web.exec(&["ip", "-o", "addr", "show"])?, "ip addr")?;
    if !addresses.stdout.contains(&format!(" {at}/"))
        || !addresses.stdout.contains(&format!(" {at6}/64 "))
    {
        return Err(addresses
            .explain(&format!("netweb should have {at} and {at6} on frontend"))
            .into());
    }
    // The host reaches it over IPv6 too, through the host port's ::1.
    let page = super::network::curl(&format!("http://[{at6}]/"), None)?;
    if !page.contains("Hello from a husk appliance") {
        return Err(format!("curl http://[{at6}]/ from the host got:\n{page}").into());
    }
    refused(
        h(&["network", "connect", "frontend", &web.name])?,
        "netweb is on frontend already",
    )?;
    on_networks("2", "connected while running")?;
    let ps = ok(
        h(&["ps", "--format", "{{.Networks}}", "-f", "name=netweb"])?,
        "husk ps",
    )?;
    if !ps.stdout.contains("frontend") {
        return Err(ps.explain("ps should show netweb on frontend").into());
    }
    // A member of frontend: by name and alias, and over IPv6 (its names
    // in /etc/hosts at both addresses).
    let script = format!(
        "wget -q -O- http://netweb/ && wget -q -O- http://front/ && \
         wget -q -O- 'http://[{at6}]/' && grep -c '^{at6}\tnetweb' /etc/hosts"
    );
    let r = h(&[
        "run",
        "--timeout",
        "120",
        "--net",
        "none",
        "--net",
        "frontend",
        "examples/busybox",
        "--",
        "sh",
        "-c",
        &script,
    ])?;
    if r.code != Some(0)
        || r.stdout.matches("Hello from a husk appliance").count() != 3
        || r.stdout.lines().last() != Some("1")
    {
        return Err(r
            .explain(
                "a member of frontend should fetch netweb's page by name, by alias and at \
                 its IPv6 address, and find it in /etc/hosts at that address",
            )
            .into());
    }
    ok(
        h(&["network", "disconnect", "frontend", &web.name])?,
        "husk network disconnect of a running appliance",
    )?;
    on_networks("1", "disconnected while running")?;
    no_hub(root, "frontend")
}

/// A busybox run on backend alone (no way out), running `script`.
fn on_backend_alone(script: &str) -> Result<Command, Failed> {
    let mut cmd = Command::new(boot_tests::husk::husk_bin()?);
    cmd.args([
        "run",
        "--timeout",
        "120",
        "--net",
        "none",
        "--net",
        "backend",
        "examples/busybox",
        "--",
        "sh",
        "-c",
        script,
    ]);
    Ok(cmd)
}

/// The host reaches the member at `address` (with its prefix): its page
/// by curl, through an interface of the host's with the network's `.1`.
fn host_reaches(address: &str) -> Result<(), Failed> {
    let (ip, prefix) = address.split_once('/').unwrap_or((address, "24"));
    let gateway = format!("{}.1/{prefix}", &ip[..ip.rfind('.').unwrap_or(0)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let out = Command::new("ip")
            .args(["-o", "-4", "addr", "show"])
            .output()?;
        let shown = String::from_utf8_lossy(&out.stdout).into_owned();
        if shown
            .lines()
            .any(|l| l.contains(" husk") && l.contains(&format!(" {gateway} ")))
            || Instant::now() > deadline
        {
            break shown;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if !shown.contains(&format!(" {gateway} ")) {
        return Err(format!("no host interface has {gateway}:\n{shown}").into());
    }
    // network inspect names it.
    let inspect = ok(h(&["network", "inspect", "backend"])?, "network inspect")?;
    let listed: serde_json::Value = serde_json::from_str(&inspect.stdout)?;
    let interface = listed[0]["HostInterface"].as_str().unwrap_or_default();
    if interface.is_empty()
        || !shown
            .lines()
            .any(|l| l.contains(&format!(" {interface} ")) && l.contains(&gateway))
    {
        return Err(format!(
            "network inspect's HostInterface {interface:?} should be the one with {gateway}:\n{shown}"
        )
        .into());
    }
    let page = super::network::curl(&format!("http://{ip}/"), None)?;
    if !page.contains("Hello from a husk appliance") {
        return Err(format!("curl http://{ip}/ from the host got:\n{page}").into());
    }
    Ok(())
}

/// The hub dies while netweb's husk is stopped (so it cannot join the
/// next one yet), and a new run joins first: the run is given another
/// address, since netweb's lease holds its own, and once netweb's husk
/// goes on it joins the new hub at its address and the run reaches it by
/// name.
fn rejoin_before_a_new_run(root: &Path, web: &Vm, address: &str) -> Result<(), Failed> {
    // The husk that holds netweb's place on its networks: its keeper's
    // VM child (the jail's supervisor; the jailed VMM, its child, runs on).
    let keeper = web.keeper()?;
    let holder = children(keeper)
        .into_iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|v| v.starts_with(b"HUSK_VM_DIR="))
            })
        })
        .ok_or("netweb's keeper has no VM child")? as i32;
    let hubs = hubs_of("backend");
    if hubs.len() != 1 {
        return Err(format!("one hub should serve backend: {hubs:?}").into());
    }
    // SAFETY: kill(2) with a pid and a signal number has no memory effects.
    unsafe { libc::kill(holder, libc::SIGSTOP) };
    let result = (|| -> Result<(), Failed> {
        // SAFETY: as above.
        unsafe { libc::kill(hubs[0] as i32, libc::SIGKILL) };
        if !gone(hubs[0]) {
            return Err("the hub outlived kill -9".into());
        }
        let cmd = on_backend_alone(
            "ip -4 -o addr show eth0 | awk '{print \"at \" $4}'; echo ready; \
             for i in $(seq 100); do wget -q -O- http://netweb/ 2>/dev/null && exit 0; sleep 0.3; done; \
             exit 1",
        )?;
        let (mut run, seen, rest) = start_until_ready(cmd)?;
        // SAFETY: as above.
        unsafe { libc::kill(holder, libc::SIGCONT) };
        let waited = exited_within(&mut run, Duration::from_secs(90));
        if waited.is_none() {
            let _ = run.kill();
            let _ = run.wait();
        }
        let out = rest.join().unwrap_or_default();
        let at = seen.lines().find_map(|l| l.strip_prefix("at "));
        if at.is_none() || at == Some(address) {
            return Err(format!(
                "a run joining while netweb (at {address}) was on its way to the next hub \
                 should be given another address; it printed:\n{seen}"
            )
            .into());
        }
        if waited.and_then(|s| s.code()) != Some(0) || !out.contains("Hello from a husk appliance")
        {
            let hubs = std::fs::read_to_string(root.join("backend/hub.log")).unwrap_or_default();
            let said = h(&["logs", &web.name])?;
            return Err(format!(
                "netweb should join the next hub again and the run reach it by name \
                 ({waited:?}); the run printed:\n{seen}{out}\nthe hubs' log:\n{hubs}\n\
                 netweb's log:\n{}{}",
                said.stdout, said.stderr
            )
            .into());
        }
        let now = address_of(web)?;
        if now != address {
            return Err(format!("netweb was at {address}, and at {now} after the rejoin").into());
        }
        Ok(())
    })();
    // SAFETY: as above; a stopped husk is never left behind.
    unsafe { libc::kill(holder, libc::SIGCONT) };
    result
}

/// The IPv4 address (with its prefix) of a detached appliance's first
/// interface, once its agent answers.
fn address_of(vm: &Vm) -> Result<String, Failed> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = vm.exec(&["sh", "-c", "ip -4 -o addr show eth0 | awk '{print $4}'"])?;
        if r.code == Some(0) && !r.stdout.trim().is_empty() {
            return Ok(r.stdout.trim().to_string());
        }
        if Instant::now() > deadline {
            let logs = h(&["logs", &vm.name])?;
            let ps = h(&["ps", "-a"])?;
            let dmesg = Command::new("dmesg").output()?;
            let dmesg = String::from_utf8_lossy(&dmesg.stdout);
            let tail: Vec<&str> = dmesg.lines().rev().take(20).collect();
            return Err(r
                .explain(&format!(
                    "no address on eth0 (at {}); its log:\n{}{}\nps:\n{}\ndmesg:\n{}",
                    std::backtrace::Backtrace::force_capture(),
                    logs.stdout,
                    logs.stderr,
                    ps.stdout,
                    tail.join("\n")
                ))
                .into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits (up to 20 s) for the appliance's /etc/hosts to satisfy `test`.
fn hosts_until(vm: &Vm, test: impl Fn(&str) -> bool) -> Result<(), Failed> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = ok(vm.exec(&["cat", "/etc/hosts"])?, "cat /etc/hosts")?;
        if test(&r.stdout) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(r
                .explain(&format!(
                    "{}'s /etc/hosts never changed as expected",
                    vm.name
                ))
                .into());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// How `child` ended, if it did within `limit`.
fn exited_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// The processes serving as `network`'s hub.
pub(super) fn hubs_of(network: &str) -> Vec<u32> {
    let wanted = format!("network\0hub\0{network}\0");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&wanted))
        })
        .filter(|pid| {
            // Not a zombie: one whose parent has not reaped it yet.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, st)| !st.trim_start().starts_with('Z'))
            })
        })
        .collect()
}

/// No hub serves `network` and its socket is gone.
pub(super) fn no_hub(root: &Path, network: &str) -> Result<(), Failed> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !hubs_of(network).is_empty() || root.join(network).join("hub.sock").exists() {
        if Instant::now() > deadline {
            return Err(format!(
                "the hub of {network} is left with no member: {:?}",
                hubs_of(network)
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
