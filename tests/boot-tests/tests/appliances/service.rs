//! A detached appliance as a service, in the KVM test bed: `husk pause`,
//! `unpause` and `top` (a paused guest takes no host CPU and its agent is
//! out of reach: exec, top, snapshot refused with a clear message;
//! unpaused, it runs on; a paused one stops at `husk stop`), `exec -d`,
//! health checks (`--health-cmd`, `[run.health]`), and how it is stopped
//! (`--stop-signal`, `--stop-timeout`, `husk stop -s`).

use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};

use super::detached::{h, ok, tree, vmm_of, Vm};

pub fn trials() -> Vec<Trial> {
    vec![
        boot_tests::trial(
            "detached_pause_stops_the_vcpus_top_lists_the_guests_processes",
            pause_and_top,
        ),
        boot_tests::trial(
            "detached_health_checks_count_failures_timeouts_and_passes_as_docker",
            health,
        ),
        boot_tests::trial(
            "detached_stop_signal_and_timeout_from_the_run_and_husk_stop",
            stop_signal,
        ),
        boot_tests::trial(
            "detached_root_writes_are_kept_across_restarts_and_kill_9_until_rm",
            kept_root,
        ),
        boot_tests::trial(
            "detached_start_at_boot_starts_what_a_host_restart_stopped_as_its_policy_says",
            start_at_boot,
        ),
    ]
}

/// `husk start --at-boot` after every keeper died as a host going down
/// kills them: `always` starts (even one `husk stop` stopped), and
/// `unless-stopped` unless it was stopped; no policy stays down.
fn start_at_boot() -> Result<(), Failed> {
    let sleeper = |policy: &'static str| -> Vec<&'static str> {
        let mut args = if policy.is_empty() {
            vec![]
        } else {
            vec!["--restart", policy]
        };
        args.extend(["examples/busybox", "--", "sleep", "1000"]);
        args
    };
    let vms = [
        Vm::start("boot-always", &sleeper("always"))?,
        Vm::start("boot-unless", &sleeper("unless-stopped"))?,
        Vm::start("boot-stopped", &sleeper("unless-stopped"))?,
        Vm::start("boot-no", &sleeper(""))?,
    ];
    for name in ["boot-always", "boot-stopped"] {
        ok(h(&["stop", "-t", "1", name])?, "husk stop")?;
    }
    // The host goes down: the keepers that still run die at once, their
    // VMs with them.
    let mut trees = Vec::new();
    for vm in [&vms[1], &vms[3]] {
        let keeper = vm.keeper()?;
        trees.extend(tree(keeper));
        // SAFETY: kill(2) with a pid and a signal number has no memory
        // effects.
        unsafe { libc::kill(keeper as i32, libc::SIGKILL) };
    }
    if let Some(pid) = trees.iter().find(|p| !super::network::gone(**p)) {
        return Err(format!("{pid} outlived its keeper's kill -9").into());
    }
    for vm in &vms {
        if !vm.ps_line()?.contains("Exited") {
            return Err(format!("{} should show exited: {}", vm.name, vm.ps_line()?).into());
        }
    }
    let r = ok(h(&["start", "--at-boot"])?, "husk start --at-boot")?;
    let mut started: Vec<&str> = r.stdout.lines().collect();
    started.sort();
    if started != ["boot-always", "boot-unless"] {
        return Err(r
            .explain("--at-boot should start boot-always and boot-unless alone")
            .into());
    }
    for vm in &vms {
        let line = vm.ps_line()?;
        let up = vm.name == "boot-always" || vm.name == "boot-unless";
        if line.contains("Up ") != up {
            return Err(format!("{}: {line}", vm.name).into());
        }
    }
    let again = ok(h(&["start", "--at-boot"])?, "husk start --at-boot again")?;
    if !again.stdout.trim().is_empty() {
        return Err(again
            .explain("a second --at-boot has nothing to start")
            .into());
    }
    for vm in vms {
        let keeper = vm.state()?["keeper_pid"].as_u64().unwrap_or(0) as u32;
        vm.remove(&tree(keeper))?;
    }
    Ok(())
}

/// Waits until the appliance's log has `line` `times` times; the log.
fn log_has(vm: &Vm, line: &str, times: usize, limit: Duration) -> Result<String, Failed> {
    let deadline = Instant::now() + limit;
    loop {
        let log = h(&["logs", &vm.name])?.stdout;
        if log.lines().filter(|l| l.trim_end() == line).count() >= times {
            return Ok(log);
        }
        if Instant::now() > deadline {
            return Err(
                format!("{}: {line:?} not {times} times in the log:\n{log}", vm.name).into(),
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A detached appliance's root keeps what its runs wrote, as a
/// container's writable layer does: across `husk restart`, a restart
/// after `kill -9` of its VMM (what the guest synced is there, and the
/// filesystem mounts), and `husk stop` and `start`; a changed build is
/// refused while writes are kept; `husk rm` removes them.
fn kept_root() -> Result<(), Failed> {
    let script = "n=$(cat /data/kept 2>/dev/null | wc -l); echo run $n; \
                  echo line >> /data/kept; sync; echo written; sleep 600";
    let vm = Vm::start(
        "kept",
        &[
            "--restart",
            "always",
            "examples/busybox",
            "--",
            "sh",
            "-c",
            script,
        ],
    )?;
    let limit = Duration::from_secs(60);
    log_has(&vm, "written", 1, limit)?;
    ok(h(&["restart", "-t", "1", &vm.name])?, "husk restart")?;
    log_has(&vm, "run 1", 1, limit)?;
    log_has(&vm, "written", 2, limit)?;
    // kill -9 of the VMM: the keeper starts it again (--restart always).
    let keeper = vm.keeper()?;
    let vmm = vmm_of(keeper).ok_or("no VMM under the keeper")?;
    // SAFETY: kill(2) with a pid and a signal number has no memory effects.
    unsafe { libc::kill(vmm as i32, libc::SIGKILL) };
    log_has(&vm, "run 2", 1, limit)?;
    log_has(&vm, "written", 3, limit)?;
    ok(h(&["stop", "-t", "1", &vm.name])?, "husk stop")?;
    // Another build of the image under the kept writes is refused.
    let base = std::path::Path::new("/var/lib/husk/vms/kept/root.base");
    let build = std::fs::read_to_string(base)?;
    std::fs::write(base, "sha256:another-build")?;
    let refused = h(&["start", &vm.name])?;
    if refused.code == Some(0) {
        return Err(refused
            .explain("a start over another build should fail")
            .into());
    }
    let log = h(&["logs", &vm.name])?.stdout;
    if !log.contains("over another build") {
        return Err(format!("the log should say why it did not start:\n{log}").into());
    }
    std::fs::write(base, build)?;
    ok(h(&["start", &vm.name])?, "husk start")?;
    let log = log_has(&vm, "run 3", 1, limit)?;
    if log.lines().any(|l| {
        l.starts_with("run ")
            && l.trim_end() != "run 0"
            && l.trim_end() != "run 1"
            && l.trim_end() != "run 2"
            && l.trim_end() != "run 3"
    }) {
        return Err(format!("a run saw another count of lines:\n{log}").into());
    }
    let keeper = vm.keeper()?;
    vm.remove(&tree(keeper))
}

/// The share of one host CPU process `pid` (all its threads) took over
/// `over`.
fn cpu_share(pid: u32, over: Duration) -> Result<f64, Failed> {
    let ticks = || -> Result<u64, Failed> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let f: Vec<u64> = stat
            .rsplit_once(')')
            .ok_or("a malformed /proc/PID/stat")?
            .1
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        // utime and stime: fields 14 and 15, the 12th and 13th after comm.
        Ok(f[11] + f[12])
    };
    let before = ticks()?;
    std::thread::sleep(over);
    // USER_HZ is 100.
    Ok((ticks()? - before) as f64 / 100.0 / over.as_secs_f64())
}

/// The processes the guest agent keeps (running, or ended and not waited
/// for), as `husk inspect` shows them.
fn agent_processes(vm: &Vm) -> Result<u64, Failed> {
    let r = ok(h(&["inspect", &vm.name])?, "husk inspect")?;
    let v: serde_json::Value = serde_json::from_str(&r.stdout)?;
    v[0]["Guest"]["processes"]
        .as_u64()
        .ok_or_else(|| r.explain("inspect shows the agent's processes").into())
}

/// `husk exec -d`: returns at once with nothing printed; the command runs
/// on (top lists it) and, once it ended, the agent has forgotten it.
fn exec_detached(vm: &Vm) -> Result<(), Failed> {
    let before = agent_processes(vm)?;
    let r = ok(
        vm.exec(&["-d", "sh", "-c", "echo unseen; exec sleep 3"])?,
        "exec -d",
    )?;
    if !r.stdout.is_empty() || !r.stderr.is_empty() {
        return Err(r.explain("exec -d prints nothing").into());
    }
    let r = ok(h(&["top", &vm.name])?, "husk top")?;
    if !r.stdout.contains("sleep 3") {
        return Err(r
            .explain("the exec -d command runs in the background")
            .into());
    }
    std::thread::sleep(Duration::from_secs(4));
    let r = ok(h(&["top", &vm.name])?, "husk top")?;
    let after = agent_processes(vm)?;
    if r.stdout.contains("sleep 3") || after != before {
        return Err(r
            .explain(&format!(
                "ended, an exec -d is forgotten: the agent kept {before} processes before, \
                 {after} after"
            ))
            .into());
    }
    Ok(())
}

fn expect_refused(r: boot_tests::husk::HuskRun, what: &str, says: &str) -> Result<(), Failed> {
    if r.code == Some(0) || !r.stderr.contains(says) {
        return Err(r
            .explain(&format!("{what} should fail saying {says:?}"))
            .into());
    }
    Ok(())
}

fn pause_and_top() -> Result<(), Failed> {
    let vm = Vm::start(
        "d-pause",
        &[
            "examples/busybox",
            "-u",
            "65534",
            "--",
            "sh",
            "-c",
            "sleep 1000 & while :; do :; done",
        ],
    )?;
    let keeper = vm.keeper()?;
    let processes = tree(keeper);
    let vmm = vmm_of(keeper).ok_or("no VMM under the keeper")?;
    let name = vm.name.clone();

    // top: init as PID 1, the command and its sleep, as the run's user.
    let r = ok(h(&["top", &name])?, "husk top")?;
    let mut lines = r.stdout.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    let sleep = rows
        .iter()
        .find(|c| c.len() >= 9 && c[7..] == ["sleep", "1000"]);
    let init = rows.iter().find(|c| c.get(1) == Some(&"1"));
    match (sleep, init) {
        (Some(s), Some(i))
            if header
                == [
                    "USER", "PID", "PPID", "STAT", "RSS", "TIME", "ELAPSED", "COMMAND",
                ]
                && s[0] == "65534"
                && i[0] == "root"
                && rows.iter().any(|c| c[0] == "65534" && c[3] == "R") => {}
        _ => {
            return Err(r
                .explain("husk top should list init, the busy sh (running) and its sleep, by user")
                .into())
        }
    }

    exec_detached(&vm)?;

    let busy = cpu_share(vmm, Duration::from_secs(1))?;
    if busy < 0.3 {
        return Err(
            format!("the busy guest's VMM took {busy:.2} CPU, expected most of one").into(),
        );
    }
    let r = ok(h(&["pause", &name])?, "husk pause")?;
    if r.stdout.trim() != name {
        return Err(r.explain("husk pause prints the name").into());
    }
    let line = vm.ps_line()?;
    if !line.contains("(Paused)") {
        return Err(format!("husk ps should show it paused: {line}").into());
    }
    let idle = cpu_share(vmm, Duration::from_secs(1))?;
    if idle > 0.05 {
        return Err(format!(
            "paused, the VMM took {idle:.2} CPU (running it took {busy:.2}): its vCPUs did not stop"
        )
        .into());
    }
    expect_refused(vm.exec(&["true"])?, "exec in a paused guest", "is paused")?;
    expect_refused(h(&["top", &name])?, "top of a paused guest", "is paused")?;
    expect_refused(h(&["pause", &name])?, "a second pause", "paused already")?;
    let snap = format!("{name}-snap");
    expect_refused(
        h(&["snapshot", "create", &name, &snap])?,
        "a snapshot of a paused guest",
        "is paused",
    )?;

    ok(h(&["unpause", &name])?, "husk unpause")?;
    if vm.ps_line()?.contains("(Paused)") {
        return Err("husk ps still shows it paused after unpause".into());
    }
    let again = cpu_share(vmm, Duration::from_secs(1))?;
    if again < 0.3 {
        return Err(format!("unpaused, the busy guest took only {again:.2} CPU").into());
    }
    let r = ok(vm.exec(&["echo", "back"])?, "exec after unpause")?;
    if r.stdout.trim() != "back" {
        return Err(r.explain("exec after unpause").into());
    }
    expect_refused(
        h(&["unpause", &name])?,
        "unpause of a running guest",
        "not paused",
    )?;

    // Stopped while paused: resumed to take the SIGTERM, so the command's
    // status is the signal's.
    ok(h(&["pause", &name])?, "husk pause")?;
    ok(
        h(&["stop", "-t", "5", &name])?,
        "husk stop of a paused appliance",
    )?;
    let line = vm.ps_line()?;
    if !line.contains("Exited (143)") {
        return Err(format!("stopped while paused, it should show Exited (143): {line}").into());
    }
    expect_refused(
        h(&["pause", &name])?,
        "pause of a stopped appliance",
        "not running",
    )?;
    vm.remove(&processes)
}

/// Waits up to `limit` for `husk ps -a`'s line of `vm` to contain `what`.
fn ps_shows(vm: &Vm, what: &str, limit: Duration) -> Result<String, Failed> {
    let deadline = Instant::now() + limit;
    loop {
        let line = vm.ps_line()?;
        if line.contains(what) {
            return Ok(line);
        }
        if Instant::now() > deadline {
            let state = vm.state()?;
            // The log's end says how an appliance that exited did.
            let log = h(&["logs", "--tail", "20", &vm.name])?;
            return Err(format!(
                "husk ps should show {what:?} within {limit:?}: {line}\nhealth: {}\nlog's end:\n{}{}",
                state["health"], log.stdout, log.stderr
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn health() -> Result<(), Failed> {
    // A check on a file the test makes and removes: failures in a row make
    // it unhealthy, a pass healthy again.
    let vm = Vm::start(
        "d-health",
        &[
            "--health-cmd",
            "echo looking; test -e /tmp/ok",
            "--health-interval",
            "1s",
            "--health-retries",
            "3",
            "examples/busybox",
            "--",
            "sleep",
            "1000",
        ],
    )?;
    let processes = tree(vm.keeper()?);
    let line = vm.ps_line()?;
    if !line.contains("(health: starting)") {
        return Err(format!("before a check passes: {line}").into());
    }
    ps_shows(&vm, "(unhealthy)", Duration::from_secs(30))?;
    let health = &vm.state()?["health"];
    let last = &health["log"][health["log"]
        .as_array()
        .map_or(0, Vec::len)
        .saturating_sub(1)];
    if health["failing_streak"].as_u64() < Some(3)
        || last["exit_code"] != 1
        || last["output"] != "looking\n"
    {
        return Err(format!("unhealthy: three failures in a row, each logged: {health}").into());
    }
    ok(vm.exec(&["touch", "/tmp/ok"])?, "exec touch")?;
    ps_shows(&vm, "(healthy)", Duration::from_secs(30))?;
    if vm.state()?["health"]["failing_streak"] != 0 {
        return Err(format!("healthy: {}", vm.state()?["health"]).into());
    }
    ok(vm.exec(&["rm", "/tmp/ok"])?, "exec rm")?;
    ps_shows(&vm, "(unhealthy)", Duration::from_secs(30))?;
    let log_len = vm.state()?["health"]["log"].as_array().map_or(0, Vec::len);
    if log_len != 5 {
        return Err(format!("the last 5 of 7 checks or more are kept, not {log_len}").into());
    }
    vm.remove(&processes)?;

    // A check that takes longer than its timeout fails (-1) and is killed:
    // no sleep piles up in the guest.
    let vm = Vm::start(
        "d-health-slow",
        &[
            "--health-cmd",
            "sleep 30",
            "--health-interval",
            "1s",
            "--health-timeout",
            "1s",
            "--health-retries",
            "2",
            "examples/busybox",
            "--",
            "sleep",
            "1000",
        ],
    )?;
    let processes = tree(vm.keeper()?);
    ps_shows(&vm, "(unhealthy)", Duration::from_secs(30))?;
    let health = vm.state()?["health"].clone();
    let timed_out = health["log"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|c| c["exit_code"] == -1 && c["output"] == "the check took longer than 1s");
    if !timed_out {
        return Err(format!("every check should time out: {health}").into());
    }
    let r = ok(h(&["top", &vm.name])?, "husk top")?;
    let piled = r.stdout.matches("sleep 30").count();
    if piled > 1 {
        return Err(r
            .explain("a check past its timeout should be killed")
            .into());
    }
    vm.remove(&processes)?;

    // --health-on-failure restart: unhealthy, it starts again (a new VM,
    // whose disk no longer has the file that broke it); stop: it ends.
    let broken = [
        "--health-cmd",
        "test ! -e /tmp/broken",
        "--health-interval",
        "1s",
        "--health-retries",
        "1",
        "--stop-timeout",
        "2",
        "--health-on-failure",
    ];
    let restarted = [
        &broken[..],
        &["restart", "examples/busybox", "--", "sleep", "1000"],
    ]
    .concat();
    let vm = Vm::start("d-health-restart", &restarted)?;
    let mut processes = tree(vm.keeper()?);
    ok(vm.exec(&["touch", "/tmp/broken"])?, "exec touch")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while vm.state()?["restart_count"] != 1 || !vm.ps_line()?.contains("Up ") {
        if Instant::now() > deadline {
            return Err(format!("unhealthy, it should start again: {}", vm.state()?).into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    processes.extend(tree(vm.keeper()?));
    ps_shows(&vm, "(healthy)", Duration::from_secs(30))?;
    vm.remove(&processes)?;
    let stopped = [
        &broken[..],
        &["stop", "examples/busybox", "--", "sleep", "1000"],
    ]
    .concat();
    let vm = Vm::start("d-health-stop", &stopped)?;
    let processes = tree(vm.keeper()?);
    ok(vm.exec(&["touch", "/tmp/broken"])?, "exec touch")?;
    ps_shows(&vm, "Exited (143)", Duration::from_secs(30))?;
    vm.remove(&processes)?;

    // --wait-ready without a [run.ready] waits for the health check to pass.
    let vm = Vm::start(
        "d-health-wait",
        &[
            "--health-cmd",
            "test -e /tmp/ok",
            "--wait-ready",
            "examples/busybox",
            "--",
            "sh",
            "-c",
            "sleep 3; touch /tmp/ok; exec sleep 1000",
        ],
    )?;
    let processes = tree(vm.keeper()?);
    let r = vm.exec(&["test", "-e", "/tmp/ok"])?;
    if r.code != Some(0) {
        return Err(r
            .explain("--wait-ready returns once the health check passes")
            .into());
    }
    vm.remove(&processes)?;

    // The web appliance's own [run.health] (tcp = 80), made quicker; and
    // --no-healthcheck.
    let vm = Vm::start(
        "d-health-web",
        &["--health-interval", "1s", "--wait-ready", "examples/web"],
    )?;
    let processes = tree(vm.keeper()?);
    ps_shows(&vm, "(healthy)", Duration::from_secs(30))?;
    vm.remove(&processes)?;
    let vm = Vm::start("d-health-off", &["--no-healthcheck", "examples/web"])?;
    let processes = tree(vm.keeper()?);
    let line = vm.ps_line()?;
    if line.contains("healthy") || line.contains("(health") || !vm.state()?["health"].is_null() {
        return Err(format!("--no-healthcheck: {line}").into());
    }
    let r = h(&["run", "-d", "--health-retries", "2", "examples/busybox"])?;
    if r.code == Some(0) || !r.stderr.contains("give --health-cmd") {
        return Err(r.explain("tuning a health check there is not").into());
    }
    vm.remove(&processes)
}

/// `--stop-signal QUIT --stop-timeout 30`: `husk stop` sends QUIT and would
/// wait 30 s; `husk stop -s INT -t 1` overrides both.
fn stop_signal() -> Result<(), Failed> {
    let vm = Vm::start(
        "d-stopsig",
        &[
            "--stop-signal",
            "SIGQUIT",
            "--stop-timeout",
            "30",
            "examples/busybox",
            "--",
            "sh",
            "-c",
            "trap 'echo got QUIT; exit 3' QUIT; trap 'echo got INT; exit 4' INT; \
             trap 'echo ignored TERM' TERM; while :; do sleep 0.2; done",
        ],
    )?;
    let mut processes = tree(vm.keeper()?);
    if vm.state()?["stop_timeout"] != 30 {
        return Err(format!("state.json keeps the stop timeout: {}", vm.state()?).into());
    }
    let started = Instant::now();
    ok(h(&["stop", &vm.name])?, "husk stop")?;
    let took = started.elapsed();
    let r = ok(h(&["wait", &vm.name])?, "wait")?;
    let logs = ok(h(&["logs", &vm.name])?, "logs")?;
    if r.stdout.trim() != "3" || !logs.stdout.contains("got QUIT") || took > Duration::from_secs(10)
    {
        return Err(logs
            .explain(&format!(
                "husk stop should send SIGQUIT (exit 3) at once, not TERM; took {took:?}, \
                 exit {}",
                r.stdout.trim()
            ))
            .into());
    }
    ok(h(&["start", &vm.name])?, "husk start")?;
    processes.extend(tree(vm.keeper()?));
    ok(
        h(&["stop", "-s", "INT", "-t", "1", &vm.name])?,
        "husk stop -s INT",
    )?;
    let r = ok(h(&["wait", &vm.name])?, "wait")?;
    if r.stdout.trim() != "4" {
        return Err(r
            .explain("husk stop -s INT: the command's INT trap exits 4")
            .into());
    }
    let r = h(&["run", "-d", "--stop-signal", "SIGNOPE", "examples/busybox"])?;
    if r.code == Some(0) || !r.stderr.contains("is not a signal") {
        return Err(r.explain("an unknown stop signal").into());
    }
    vm.remove(&processes)
}
