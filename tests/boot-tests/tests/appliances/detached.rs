//! Detached appliances: `husk run -d` and the commands that reach a
//! running VM through its keeper and the guest agent in husk's init. Each
//! test names its own VMs; each checks that `husk rm` leaves no process,
//! no state folder, no jail folder and no cgroup behind, also after
//! `kill -9` of the VMM or of the keeper.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use boot_tests::husk::{husk, husk_bin, HuskRun};
use libtest_mimic::{Failed, Trial};

use super::network::{children, comm, gone};
use super::volumes::refused;

pub fn trials() -> Vec<Trial> {
    vec![
        boot_tests::trial(
            "detached_outlives_the_cli_exec_streams_statuses_signals_and_logs",
            outlives_the_cli,
        ),
        boot_tests::trial(
            "detached_exec_with_a_tty_sees_its_size_and_a_resize",
            exec_tty,
        ),
        boot_tests::trial(
            "detached_100_execs_leak_no_fds_threads_or_processes_on_either_side",
            hundred_execs,
        ),
        boot_tests::trial(
            "detached_stop_ends_a_command_that_ignores_sigterm_after_the_grace_period",
            stop_after_grace,
        ),
        boot_tests::trial(
            "detached_kill_9_of_the_vmm_or_the_keeper_shows_exited_and_rm_leaves_nothing",
            kill_9,
        ),
        boot_tests::trial(
            "detached_two_at_once_a_name_in_use_refused_and_a_users_state_apart",
            names_and_users,
        ),
        boot_tests::trial(
            "detached_web_appliance_waits_ready_and_serves_a_published_port",
            web_wait_ready,
        ),
        boot_tests::trial(
            "detached_guest_agent_answers_garbage_and_keeps_serving",
            agent_garbage,
        ),
        boot_tests::trial(
            "detached_guest_agent_close_stdin_signal_wait_info_and_clock",
            agent_protocol,
        ),
        boot_tests::trial(
            "detached_restart_policies_start_the_command_again_until_stopped",
            restart_policies,
        ),
        boot_tests::trial("detached_stats_shows_cpu_memory_disk_and_processes", stats),
        boot_tests::trial(
            "detached_cp_copies_files_and_folders_both_ways_as_docker_does",
            cp,
        ),
        boot_tests::trial(
            "detached_attach_takes_the_console_both_ways_detaches_and_ends_with_its_status",
            attach,
        ),
        boot_tests::trial(
            "detached_created_appliance_boots_on_start_with_its_volume_and_label",
            created,
        ),
        boot_tests::trial(
            "detached_start_attach_shows_each_run_whole_takes_input_and_ends_with_its_status",
            start_attached,
        ),
    ]
}

/// `husk create`, then `husk start`: nothing runs before the start (no
/// keeper, no VM); the start boots it with what create was given (an
/// anonymous volume, a label), it exits with its command's status, and
/// `rm -v` leaves nothing.
fn created() -> Result<(), Failed> {
    let r = ok(
        h(&[
            "create",
            "--name",
            "d-made",
            "-l",
            "made=yes",
            "-v",
            "/scratch",
            "examples/busybox",
            "--",
            "sh",
            "-c",
            "grep -c ' /scratch ' /proc/mounts; exit 4",
        ])?,
        "husk create",
    )?;
    let vm = Vm {
        name: r.stdout.trim().to_string(),
        removed: false,
    };
    if vm.name != "d-made" || !vm.ps_line()?.contains("Created") || vm.keeper()? != 0 {
        return Err(format!("created, not started: {}", vm.ps_line()?).into());
    }
    let status = "{{.State.Status}} {{.State.ExitCode}} {{index .Config.Labels \"made\"}}";
    let before = ok(h(&["inspect", "-f", status, &vm.name])?, "inspect -f")?;
    ok(h(&["start", &vm.name])?, "husk start")?;
    let keeper = vm.keeper()?;
    let all = tree(keeper);
    let waited = ok(h(&["wait", &vm.name])?, "husk wait")?;
    let logs = ok(h(&["logs", &vm.name])?, "husk logs")?;
    let labelled = ok(h(&["ps", "-aq", "-f", "label=made=yes"])?, "ps -f label")?;
    let after = ok(h(&["inspect", "-f", status, &vm.name])?, "inspect -f")?;
    if before.stdout != "created 0 yes\n" || after.stdout != "exited 4 yes\n" {
        return Err(format!(
            "inspect -f before the start {:?}, after it ended {:?}",
            before.stdout, after.stdout
        )
        .into());
    }
    if waited.stdout.trim() != "4"
        || !logs.stdout.lines().any(|l| l.trim() == "1")
        || labelled.stdout.trim() != "d-made"
    {
        return Err(format!(
            "started: status {:?}, console {:?}, by label {:?}",
            waited.stdout, logs.stdout, labelled.stdout
        )
        .into());
    }
    let volumes = vm.state()?["volumes"].clone();
    let mut vm = vm;
    vm.removed = true;
    ok(h(&["rm", "-v", &vm.name])?, "husk rm -v")?;
    nothing_left(&vm.dir(), &all)?;
    let listed = ok(h(&["volume", "ls", "-q"])?, "volume ls")?;
    let volume = volumes[0].as_str().unwrap_or_default();
    if volume.len() != 64 || listed.stdout.contains(volume) {
        return Err(format!(
            "its anonymous volume {volumes} after rm -v: {}",
            listed.stdout
        )
        .into());
    }
    Ok(())
}

/// `husk start -a` of a created appliance: all of the run's console
/// (what it said before the attach too, from the log) and its status; a
/// second start shows its own run alone. `start -ai` sends its input to
/// one created with `-i`.
fn start_attached() -> Result<(), Failed> {
    let script = "echo first; sleep 1; echo second; exit 5";
    let r = h(&[
        "create",
        "--name",
        "d-sa",
        "examples/busybox",
        "--",
        "sh",
        "-c",
        script,
    ])?;
    let vm = Vm {
        name: ok(r, "husk create")?.stdout.trim().to_string(),
        removed: false,
    };
    let lines = |r: &HuskRun| -> Vec<String> {
        r.stdout
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    };
    for run in ["first", "second"] {
        let r = h(&["start", "-a", &vm.name])?;
        if r.code != Some(5) || lines(&r) != ["first", "second"] {
            return Err(r
                .explain(&format!(
                    "{run} start -a: the run's two lines, once each, and status 5"
                ))
                .into());
        }
    }
    let r = h(&[
        "create",
        "-i",
        "--name",
        "d-si",
        "examples/busybox",
        "--",
        "sh",
        "-c",
        "read x; echo got $x; exit 2",
    ])?;
    let input = Vm {
        name: ok(r, "husk create -i")?.stdout.trim().to_string(),
        removed: false,
    };
    let r = h_in(&["start", "-ai", &input.name], b"hello\n")?;
    if r.code != Some(2) || !lines(&r).iter().any(|l| l == "got hello") {
        // What the keeper saw, for a failure that did not show itself here.
        let logs = h(&["logs", &input.name])?;
        return Err(format!(
            "{}\n  --- ps: {}\n  --- husk logs: {:?} {:?}",
            r.explain("start -ai: the input read, status 2"),
            input.ps_line()?,
            logs.stdout,
            logs.stderr
        )
        .into());
    }
    refused(
        h(&["start", "-a", &vm.name, &input.name])?,
        "take one appliance",
    )?;
    // Both have ended: rm must leave no folder, jail or cgroup.
    vm.remove(&[])?;
    input.remove(&[])
}

const LIMIT: Duration = Duration::from_secs(120);
const STATE_ROOT: &str = "/var/lib/husk/vms";

/// `husk ARGS` from the workspace root.
pub(super) fn h(args: &[&str]) -> Result<HuskRun, Failed> {
    h_in(args, b"")
}

fn h_in(args: &[&str], stdin: &[u8]) -> Result<HuskRun, Failed> {
    std::env::set_current_dir(boot_tests::workspace_root())?;
    Ok(husk(args, stdin, LIMIT)?)
}

pub(super) fn ok(r: HuskRun, what: &str) -> Result<HuskRun, Failed> {
    if r.code != Some(0) {
        return Err(r.explain(&format!("{what}: expected success")).into());
    }
    Ok(r)
}

/// A detached VM, removed with `husk rm -f` when dropped (on any way out
/// of a test); [`Vm::remove`] removes it and checks what is left.
pub(super) struct Vm {
    pub(super) name: String,
    removed: bool,
}

impl Vm {
    /// `husk run -d --name NAME ARGS`: the name printed, the VM running.
    pub(super) fn start(name: &str, args: &[&str]) -> Result<Self, Failed> {
        let mut all = vec!["run", "-d", "--name", name];
        all.extend_from_slice(args);
        let r = h(&all)?;
        let vm = Vm {
            name: name.into(),
            removed: false,
        };
        if r.code != Some(0) || r.stdout.trim() != name {
            return Err(r
                .explain("husk run -d should print the name and succeed")
                .into());
        }
        Ok(vm)
    }

    fn dir(&self) -> PathBuf {
        Path::new(STATE_ROOT).join(&self.name)
    }

    pub(super) fn state(&self) -> Result<serde_json::Value, Failed> {
        let text = std::fs::read(self.dir().join("state.json"))?;
        Ok(serde_json::from_slice(&text)?)
    }

    pub(super) fn keeper(&self) -> Result<u32, Failed> {
        self.state()?["keeper_pid"]
            .as_u64()
            .map(|p| p as u32)
            .ok_or_else(|| "state.json has no keeper_pid".into())
    }

    pub(super) fn exec(&self, args: &[&str]) -> Result<HuskRun, Failed> {
        let mut all = vec!["exec", &self.name];
        all.extend_from_slice(args);
        h(&all)
    }

    /// The `husk ps -a` line of this VM.
    pub(super) fn ps_line(&self) -> Result<String, Failed> {
        let r = ok(h(&["ps", "-a"])?, "husk ps -a")?;
        r.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&self.name))
            .map(str::to_string)
            .ok_or_else(|| {
                r.explain(&format!("{} is not in husk ps -a", self.name))
                    .into()
            })
    }

    /// `husk rm -f`, then: no process of the keeper's tree, no state
    /// folder, no jail folder or cgroup of any of them.
    pub(super) fn remove(mut self, tree: &[u32]) -> Result<(), Failed> {
        self.removed = true;
        ok(h(&["rm", "-f", &self.name])?, "husk rm -f")?;
        nothing_left(&self.dir(), tree)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if !self.removed {
            let _ = h(&["rm", "-f", &self.name]);
        }
    }
}

/// `husk logs -t`, `--since` and `--until` of a guest printing "started",
/// then a tick a second.
fn logs_by_time(vm: &Vm) -> Result<(), Failed> {
    let plain = ok(h(&["logs", &vm.name])?, "logs")?;
    let stamped = ok(h(&["logs", "-t", &vm.name])?, "logs -t")?;
    // Each line after its time: 2026-12-02T04:20:00.123456789Z, in order.
    let mut stamps = Vec::new();
    for (with, without) in stamped.stdout.lines().zip(plain.stdout.lines()) {
        let (stamp, rest) = with.split_at_checked(31).unwrap_or_default();
        let shaped = stamp.len() == 31
            && stamp.as_bytes()[10] == b'T'
            && stamp.ends_with("Z ")
            && stamp[..4].parse::<u32>().is_ok_and(|y| y >= 2024);
        if !shaped || rest != without {
            return Err(stamped
                .explain(&format!(
                    "husk logs -t: {with:?} should be a time, then {without:?}"
                ))
                .into());
        }
        stamps.push(stamp.trim_end().to_string());
    }
    if stamps.len() < 3 || !stamps.is_sorted() {
        return Err(stamped.explain("husk logs -t: times in order").into());
    }
    // Up to the first line's time: that line alone.
    let r = ok(
        h(&["logs", "--until", &stamps[0], &vm.name])?,
        "logs --until",
    )?;
    if r.stdout.trim_end() != "started" {
        return Err(r.explain("husk logs --until the first line's time").into());
    }
    // The last 2.5 s: a tick or a few, not the start.
    let r = ok(h(&["logs", "--since", "2500ms", &vm.name])?, "logs --since")?;
    let ticks = r.stdout.lines().filter(|l| l.starts_with("tick ")).count();
    if !(1..=3).contains(&ticks) || r.stdout.contains("started") {
        return Err(r.explain("husk logs --since 2500ms").into());
    }
    let r = h(&["logs", "--since", "yesterday", &vm.name])?;
    if r.code == Some(0) || !r.stderr.contains("expected a duration") {
        return Err(r.explain("a --since husk cannot read").into());
    }
    Ok(())
}

/// The parent of process `pid` (0 where it is gone).
pub(super) fn parent(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The keepers of the VM in `dir`: the processes whose environment names
/// it as theirs to keep.
fn keepers_of(dir: &Path) -> Vec<u32> {
    let wanted = format!("HUSK_KEEPER_DIR={}", dir.display());
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == wanted.as_bytes()))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Every descendant of `pid`, and `pid`.
pub(super) fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        all.extend(children(all[i]));
        i += 1;
    }
    all
}

pub(super) fn nothing_left(dir: &Path, tree: &[u32]) -> Result<(), Failed> {
    let alive: Vec<String> = tree
        .iter()
        .filter(|p| !gone(**p))
        .map(|p| format!("{p} ({})", comm(*p)))
        .collect();
    if !alive.is_empty() {
        return Err(format!("processes left after husk rm: {alive:?}").into());
    }
    if dir.exists() {
        return Err(format!("{} is left after husk rm", dir.display()).into());
    }
    for pid in tree {
        let jail = Path::new("/run/husk/jail").join(pid.to_string());
        let cgroup = Path::new("/sys/fs/cgroup").join(format!("husk-{pid}"));
        for p in [jail, cgroup] {
            if p.exists() {
                return Err(format!("{} is left after husk rm", p.display()).into());
            }
        }
    }
    Ok(())
}

fn expect_code(r: &HuskRun, code: i32, what: &str) -> Result<(), Failed> {
    if r.code != Some(code) {
        return Err(r
            .explain(&format!("{what}: expected exit status {code}"))
            .into());
    }
    Ok(())
}

const TICKER: &str = "echo started; i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done";

fn outlives_the_cli() -> Result<(), Failed> {
    let vm = Vm::start("d-basic", &["examples/busybox", "--", "sh", "-c", TICKER])?;
    // The CLI has returned; the appliance runs on.
    if !vm.ps_line()?.contains("Up ") {
        return Err(format!("husk ps: {}", vm.ps_line()?).into());
    }
    let keeper = vm.keeper()?;
    let processes = tree(keeper);
    let r = ok(vm.exec(&["echo", "hello", "from", "exec"])?, "exec echo")?;
    if r.stdout != "hello from exec\n" {
        return Err(r.explain("exec's output").into());
    }
    // The appliance's user, workdir and env; and -u, -w, -e over them.
    let r = ok(
        vm.exec(&["sh", "-c", "echo $(id -u) $(pwd) $HOSTNAME"])?,
        "exec id",
    )?;
    if r.stdout.trim() != "1000 /data busybox" {
        return Err(r
            .explain("exec should run as the appliance's user in its workdir")
            .into());
    }
    let env_dir = tempfile::tempdir()?;
    let env_file = env_dir.path().join("exec.env");
    std::fs::write(&env_file, "# for exec\nFROM_FILE=f v\nFOO=from file\n")?;
    let r = h(&[
        "exec",
        "-u",
        "0",
        "-w",
        "/tmp",
        "--env-file",
        &env_file.to_string_lossy(),
        "-e",
        "FOO=bar",
        &vm.name,
        "sh",
        "-c",
        "echo $(id -u) $(pwd) $FOO $FROM_FILE",
    ])?;
    if r.stdout.trim() != "0 /tmp bar f v" {
        return Err(r
            .explain("exec -u 0 -w /tmp --env-file F -e FOO=bar")
            .into());
    }
    // stdout and stderr apart; statuses; a signal; not found.
    let r = vm.exec(&["sh", "-c", "echo out; echo err >&2; exit 7"])?;
    expect_code(&r, 7, "exit 7")?;
    if r.stdout != "out\n" || r.stderr != "err\n" {
        return Err(r.explain("stdout and stderr should arrive apart").into());
    }
    expect_code(
        &vm.exec(&["sh", "-c", "kill -9 $$"])?,
        137,
        "a command killed by SIGKILL",
    )?;
    let r = vm.exec(&["no-such-program"])?;
    expect_code(&r, 127, "a program that is not there")?;
    if !r.stderr.contains("no-such-program: command not found") {
        return Err(r.explain("not found should say so").into());
    }
    // Quiet for longer than the keeper's own 10 s agent timeout: the
    // connections it hands over must not carry that timeout.
    let r = vm.exec(&["sh", "-c", "sleep 12; echo woke"])?;
    expect_code(&r, 0, "a command quiet for 12 s")?;
    if r.stdout != "woke\n" {
        return Err(r.explain("a command quiet for 12 s").into());
    }
    expect_code(
        &vm.exec(&["-w", "/nope", "true"])?,
        125,
        "exec -w into a missing folder",
    )?;
    // 1 MiB through stdin, counted in the guest; and stdin's end reaches it.
    let input = vec![b'x'; 1 << 20];
    let r = h_in(
        &["exec", "-i", &vm.name, "sh", "-c", "wc -c; echo end"],
        &input,
    )?;
    if r.code != Some(0) || r.stdout.split_whitespace().collect::<Vec<_>>() != ["1048576", "end"] {
        return Err(r.explain("1 MiB piped through exec -i").into());
    }
    // Without -i the command reads nothing.
    let r = h_in(&["exec", &vm.name, "sh", "-c", "wc -c"], b"ignored")?;
    if r.stdout.trim() != "0" {
        return Err(r.explain("exec without -i should read /dev/null").into());
    }
    // The console log, whole and its tail; -f ends when the VM does.
    std::thread::sleep(Duration::from_millis(2500));
    let r = ok(h(&["logs", &vm.name])?, "logs")?;
    // The console is a terminal: its lines end in \r\n.
    let lines: Vec<&str> = r.stdout.lines().map(str::trim_end).collect();
    if !lines.starts_with(&["started", "tick 0", "tick 1"]) {
        return Err(r
            .explain("husk logs should show the console from the start")
            .into());
    }
    let r = ok(h(&["logs", "--tail", "1", &vm.name])?, "logs --tail 1")?;
    if r.stdout.lines().count() != 1 || !r.stdout.starts_with("tick ") {
        return Err(r.explain("husk logs --tail 1").into());
    }
    logs_by_time(&vm)?;
    let follower = Command::new(husk_bin()?)
        .args(["logs", "-f", "-n", "0", &vm.name])
        .stdout(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1500));
    let r = ok(h(&["kill", "-s", "SIGUSR1", &vm.name])?, "kill SIGUSR1")?;
    let _ = r;
    let out = follower.wait_with_output()?;
    let followed = String::from_utf8_lossy(&out.stdout);
    if !followed.contains("tick ") || followed.contains("started") {
        return Err(format!("husk logs -f -n 0 printed {followed:?}").into());
    }
    let r = ok(h(&["wait", &vm.name])?, "wait")?;
    if r.stdout.trim() != "138" {
        return Err(r
            .explain("the command died of SIGUSR1: wait prints 138")
            .into());
    }
    if !vm.ps_line()?.contains("Exited (138)") {
        return Err(format!("husk ps -a: {}", vm.ps_line()?).into());
    }
    let r = vm.exec(&["true"])?;
    if r.code == Some(0) || !r.stderr.contains("not running") {
        return Err(r.explain("exec into a stopped appliance").into());
    }
    vm.remove(&processes)?;
    log_opts_bound_the_log()
}

/// `--log-opt max-size` and `max-file`: the log's files never grow past
/// the size, no more of them are kept, and `husk logs` reads them as one,
/// its newest lines last.
fn log_opts_bound_the_log() -> Result<(), Failed> {
    let script = "i=0; while [ $i -lt 60 ]; do echo line $i; i=$((i+1)); done; sleep 1000";
    let vm = Vm::start(
        "d-logopt",
        &[
            "--log-opt",
            "max-size=300",
            "--log-opt",
            "max-file=3",
            "examples/busybox",
            "--",
            "sh",
            "-c",
            script,
        ],
    )?;
    let processes = tree(vm.keeper()?);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let shown = loop {
        let r = ok(h(&["logs", &vm.name])?, "logs")?;
        if r.stdout.contains("line 59") || std::time::Instant::now() > deadline {
            break r.stdout;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let lines: Vec<&str> = shown.lines().map(str::trim_end).collect();
    let sizes: Vec<u64> = ["console.log", "console.log.1", "console.log.2"]
        .iter()
        .map(|f| std::fs::metadata(vm.dir().join(f)).map_or(0, |m| m.len()))
        .collect();
    if lines.last() != Some(&"line 59")
        || lines.contains(&"line 0")
        || sizes.iter().any(|s| *s == 0 || *s > 300)
        || vm.dir().join("console.log.3").exists()
    {
        return Err(format!(
            "with max-size=300 max-file=3: files of {sizes:?} bytes, a fourth: {}; logs {lines:?}",
            vm.dir().join("console.log.3").exists()
        )
        .into());
    }
    // inspect shows the driver and the options as docker writes them.
    let config = ok(
        h(&["inspect", "-f", "{{json .HostConfig.LogConfig}}", &vm.name])?,
        "inspect",
    )?;
    if config.stdout.trim() != r#"{"Config":{"max-file":"3","max-size":"300"},"Type":"json-file"}"# {
        return Err(config.explain("inspect's LogConfig").into());
    }
    vm.remove(&processes)?;

    // --log-driver none: no log at all; logs says so, the VM runs. And
    // inspect's Config and HostConfig say what the run asked for (the
    // image's environment, then -e's).
    let vm = Vm::start(
        "d-nolog",
        &[
            "--log-driver",
            "none",
            "-e",
            "FOO=bar",
            "-w",
            "/tmp",
            "--hostname",
            "quiet",
            "--stop-signal",
            "QUIT",
            "-m",
            "192m",
            "--group-add",
            "user",
            "examples/busybox",
            "--",
            "sh",
            "-c",
            "echo said-to-nobody; sleep 1000",
        ],
    )?;
    let processes = tree(vm.keeper()?);
    refused(
        h(&["logs", &vm.name])?,
        "d-nolog keeps no log: it runs with --log-driver none",
    )?;
    ok(vm.exec(&["true"])?, "exec in d-nolog")?;
    let shown = ok(
        h(&[
            "inspect",
            "-f",
            "{{.HostConfig.LogConfig.Type}} path={{.LogPath}}",
            &vm.name,
        ])?,
        "inspect",
    )?;
    let files: Vec<_> = std::fs::read_dir(vm.dir())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("console.log"))
        .collect();
    if shown.stdout.trim() != "none path=" || !files.is_empty() {
        return Err(shown
            .explain(&format!("no log should be kept; console files {files:?}"))
            .into());
    }
    let config = ok(
        h(&[
            "inspect",
            "-f",
            "{{json .Config.Cmd}} {{.Config.WorkingDir}} {{.Config.Hostname}} \
             {{.Config.StopSignal}} {{json .Config.Env}} {{.HostConfig.Memory}} \
             {{json .HostConfig.GroupAdd}}",
            &vm.name,
        ])?,
        "inspect",
    )?;
    let want = r#"["sh","-c","echo said-to-nobody; sleep 1000"] /tmp quiet SIGQUIT ["PATH=/usr/bin:/bin","PS1=husk$ ","FOO=bar"] 201326592 ["user"]"#;
    if config.stdout.trim() != want {
        return Err(config
            .explain(&format!(
                "inspect's Config and HostConfig should read {want}"
            ))
            .into());
    }
    ok(
        vm.exec(&[
            "sh",
            "-c",
            "[ \"$(hostname):$FOO:$(pwd)\" = quiet:bar:/tmp ]",
        ])?,
        "the guest runs as inspect says",
    )?;
    vm.remove(&processes)
}

fn exec_tty() -> Result<(), Failed> {
    let vm = Vm::start("d-tty", &["examples/busybox", "--", "sleep", "1000"])?;
    let (master, slave) = openpty(24, 80)?;
    let mut cmd = Command::new(husk_bin()?);
    cmd.args([
        "exec",
        "-it",
        &vm.name,
        "sh",
        "-c",
        "stty size; tty >/dev/null && echo is-a-tty; read line; stty size; echo got:$line",
    ]);
    // husk exec gets the pty as its terminal, so a resize sends it SIGWINCH.
    on_terminal(&mut cmd, slave)?;
    let mut child = cmd.spawn()?;
    // Only the child holds the terminal now: the master reads EIO if it dies.
    drop(cmd);
    let watchdog = boot_tests::Watchdog::new(child.id(), LIMIT);
    let mut term = std::fs::File::from(master);
    let mut seen = String::new();
    wait_for(&mut term, &mut seen, "is-a-tty")?;
    if !seen.contains("24 80") {
        return Err(
            format!("stty size in exec -t should be the host terminal's 24 80: {seen:?}").into(),
        );
    }
    set_size(&term, 50, 132)?;
    // The resize travels while the guest waits for a line.
    std::thread::sleep(Duration::from_millis(500));
    term.write_all(b"typed\r")?;
    wait_for(&mut term, &mut seen, "got:typed")?;
    let status = child.wait()?;
    drop(watchdog);
    if !seen.contains("50 132") {
        return Err(format!("the resize did not reach the guest's terminal: {seen:?}").into());
    }
    if !status.success() {
        return Err(format!("husk exec -it ended with {status}; terminal: {seen:?}").into());
    }
    let tree = tree(vm.keeper()?);
    vm.remove(&tree)
}

/// `husk attach` on a terminal (a pty of the test's, its controlling
/// terminal): a line typed reaches the shell, whose answer comes back;
/// the terminal is raw while attached (no echo, no line editing, so the
/// keys reach the guest as typed); Ctrl-P Ctrl-Q typed detaches with
/// status 0, and the terminal's modes are as they were.
fn attach_on_a_terminal(vm: &Vm) -> Result<(), Failed> {
    let modes = |fd: &OwnedFd| -> Result<libc::tcflag_t, Failed> {
        // SAFETY: termios is plain data, filled by tcgetattr on our fd.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: a valid fd and a valid out-pointer.
        if unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) } != 0 {
            return Err(format!("tcgetattr: {}", std::io::Error::last_os_error()).into());
        }
        Ok(t.c_lflag)
    };
    let (master, slave) = openpty(24, 80)?;
    let ours = slave.try_clone()?;
    let before = modes(&ours)?;
    let mut cmd = Command::new(husk_bin()?);
    cmd.args(["attach", &vm.name]);
    on_terminal(&mut cmd, slave)?;
    let mut child = cmd.spawn()?;
    drop(cmd);
    let watchdog = boot_tests::Watchdog::new(child.id(), LIMIT);
    let mut term = std::fs::File::from(master);
    let mut seen = String::new();
    term.write_all(b"echo tty-$((2+3))\r")?;
    wait_for(&mut term, &mut seen, "tty-5")?;
    let during = modes(&ours)?;
    term.write_all(b"\x10\x11")?;
    let status = child.wait()?;
    drop(watchdog);
    let after = modes(&ours)?;
    let raw = libc::ICANON | libc::ECHO;
    if !status.success() || during & raw != 0 || after != before || before & raw != raw {
        return Err(format!(
            "attach on a terminal ended with {status}, its modes {before:o} before, \
             {during:o} while attached, {after:o} after; it showed {seen:?}"
        )
        .into());
    }
    Ok(())
}

/// Reads the terminal until `what` has appeared.
/// `cmd`'s stdin, stdout and stderr on the pty `slave`, which becomes its
/// controlling terminal (a session of its own).
fn on_terminal(cmd: &mut Command, slave: OwnedFd) -> Result<(), Failed> {
    cmd.stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    // SAFETY: setsid and TIOCSCTTY in the forked child, both
    // async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    Ok(())
}

fn wait_for(term: &mut std::fs::File, seen: &mut String, what: &str) -> Result<(), Failed> {
    let mut buf = [0u8; 4096];
    while !seen.contains(what) {
        match term.read(&mut buf) {
            Ok(0) | Err(_) => {
                return Err(format!("terminal closed before {what:?}; saw {seen:?}").into())
            }
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    Ok(())
}

fn openpty(rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd), Failed> {
    let (mut m, mut s) = (0, 0);
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: valid out-pointers and a valid winsize; no name wanted.
    let ret = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    if ret != 0 {
        return Err(format!("openpty: {}", std::io::Error::last_os_error()).into());
    }
    // SAFETY: two new fds from openpty, owned from here on.
    Ok(unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) })
}

fn set_size(term: &std::fs::File, rows: u16, cols: u16) -> Result<(), Failed> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
    if unsafe { libc::ioctl(term.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
        return Err(format!("TIOCSWINSZ: {}", std::io::Error::last_os_error()).into());
    }
    Ok(())
}

/// Open fds and threads of a host process.
fn fds_and_threads(pid: u32) -> (usize, usize) {
    let count =
        |what: &str| std::fs::read_dir(format!("/proc/{pid}/{what}")).map_or(0, |d| d.count());
    (count("fd"), count("task"))
}

fn hundred_execs() -> Result<(), Failed> {
    // The appliance's own command counts init's fds and threads and
    // init's children five times a second (it runs as root: the image
    // reference has no user), so the counting is no exec of its own. The
    // processes the agent starts are init's children, and so is what
    // they leave running: a leak, or a zombie, adds to that count; the
    // counting's own processes are the command's children, not init's.
    // fds and threads are counted by the shell's glob, which only reads
    // the folders: `ls` also stats each entry, and printed an error into
    // the log when one of init's fds closed in between.
    let count = "while true; do set -- /proc/1/fd/*; f=$#; set -- /proc/1/task/*; \
                 echo count $f $# \
                 $(grep -l '^PPid:[[:space:]]*1$' /proc/[0-9]*/status 2>/dev/null | wc -l); \
                 sleep 0.2; done";
    let vm = Vm::start(
        "d-loop",
        &["oci:examples/busybox/image:latest", "--", "sh", "-c", count],
    )?;
    let keeper = vm.keeper()?;
    let processes = tree(keeper);
    // The least of each over the last second: the counting's own
    // processes come and go.
    let guest = |vm: &Vm| -> Result<Vec<usize>, Failed> {
        let r = ok(h(&["logs", "--tail", "5", &vm.name])?, "logs")?;
        let mut least = vec![usize::MAX; 3];
        for line in r.stdout.lines() {
            let n: Vec<usize> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|n| n.parse().ok())
                .collect();
            if n.len() != 3 || !line.starts_with("count ") {
                return Err(r.explain("a line of counts").into());
            }
            for (l, v) in least.iter_mut().zip(n) {
                *l = (*l).min(v);
            }
        }
        Ok(least)
    };
    let host = || -> Vec<(u32, (usize, usize))> {
        processes
            .iter()
            .map(|p| (*p, fds_and_threads(*p)))
            .collect()
    };
    let settle = || std::thread::sleep(Duration::from_millis(1500));
    let _ = ok(vm.exec(&["true"])?, "warm-up exec")?;
    settle();
    let (guest_before, host_before) = (guest(&vm)?, host());
    for i in 0..100 {
        let r = vm.exec(&["sh", "-c", &format!("echo {i}; echo e{i} >&2")])?;
        if r.code != Some(0)
            || r.stdout.trim() != i.to_string()
            || r.stderr.trim() != format!("e{i}")
        {
            return Err(r.explain(&format!("exec {i} of 100")).into());
        }
    }
    // A leak stays; what is still ending (the last exec's process being
    // reaped, on a slow bed) goes within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (guest_after, host_after) = loop {
        settle();
        let now = (guest(&vm)?, host());
        if (now.0 == guest_before && now.1 == host_before) || Instant::now() > deadline {
            break now;
        }
    };
    if guest_after != guest_before {
        return Err(format!(
            "after 100 execs the guest has init fds, init threads, processes {guest_after:?}; before {guest_before:?}"
        )
        .into());
    }
    if host_after != host_before {
        return Err(format!(
            "after 100 execs the host's processes (pid, (fds, threads)) are {host_after:?}, before {host_before:?}"
        )
        .into());
    }
    vm.remove(&processes)
}

fn stop_after_grace() -> Result<(), Failed> {
    let vm = Vm::start(
        "d-stubborn",
        &[
            "examples/busybox",
            "--",
            "sh",
            "-c",
            "trap 'echo ignored TERM' TERM; while true; do sleep 0.2; done",
        ],
    )?;
    let processes = tree(vm.keeper()?);
    let start = Instant::now();
    let r = ok(h(&["stop", "-t", "2", &vm.name])?, "stop -t 2")?;
    let took = start.elapsed();
    if r.stdout.trim() != vm.name {
        return Err(r.explain("stop prints the name").into());
    }
    // At least the grace period; less than the default one (10 s), which
    // a stop that ignored -t would have waited. (What follows the grace,
    // the VM's power-off, takes seconds of its own in an emulated bed.)
    if took < Duration::from_secs(2) || took >= Duration::from_secs(10) {
        return Err(format!("stop -t 2 of a command ignoring SIGTERM took {took:?}").into());
    }
    let r = ok(h(&["wait", &vm.name])?, "wait")?;
    if r.stdout.trim() != "137" {
        return Err(r.explain("killed after the grace period: 137").into());
    }
    let logs = ok(h(&["logs", &vm.name])?, "logs")?;
    if !logs.stdout.contains("ignored TERM") {
        return Err(logs
            .explain("the command should have seen SIGTERM first")
            .into());
    }
    // Stopping a stopped appliance is fine, as with docker.
    ok(h(&["stop", &vm.name])?, "stop again")?;
    // Started again, it runs its command line again, with its log kept;
    // restart stops it and starts it once more. Two starts at once start
    // one keeper, and both succeed, as docker's do: the other start finds
    // it running, or its keeper is refused under the state lock and the
    // start finds the first one's running.
    let starts: Vec<_> = (0..2)
        .map(|_| {
            let name = vm.name.clone();
            std::thread::spawn(move || h(&["start", &name]))
        })
        .collect();
    let starts: Vec<HuskRun> = starts
        .into_iter()
        .map(|t| t.join().expect("a start thread"))
        .collect::<Result<_, _>>()?;
    let refused = starts
        .iter()
        .filter(|r| {
            r.stderr
                .contains(&format!("{} is running already", vm.name))
        })
        .count();
    if starts
        .iter()
        .any(|r| r.code != Some(0) || r.stdout.trim() != vm.name)
        || !vm.ps_line()?.contains("Up ")
    {
        let r = &starts[0];
        return Err(r
            .explain(&format!(
                "two husk starts at once; the other: {:?}",
                starts[1]
            ))
            .into());
    }
    eprintln!("two husk starts at once: {refused} of their keepers refused");
    let keepers = keepers_of(&vm.dir());
    if keepers != [vm.keeper()?] {
        return Err(format!("two husk starts at once left keepers {keepers:?}").into());
    }
    let mut all = processes.clone();
    all.extend(tree(vm.keeper()?));
    ok(h(&["restart", "-t", "0", &vm.name])?, "restart")?;
    all.extend(tree(vm.keeper()?));
    let r = ok(vm.exec(&["echo", "again"])?, "exec after restart")?;
    if r.stdout.trim() != "again" {
        return Err(r.explain("exec after restart").into());
    }
    let logs = ok(h(&["logs", &vm.name])?, "logs")?;
    if !logs.stdout.contains("ignored TERM") {
        return Err(logs
            .explain("the log of the first run should be kept")
            .into());
    }
    vm.remove(&all)?;

    // A command that honours SIGTERM ends at once with 143.
    let vm = Vm::start("d-polite", &["examples/busybox", "--", "sleep", "1000"])?;
    let processes = tree(vm.keeper()?);
    let start = Instant::now();
    ok(h(&["stop", &vm.name])?, "stop")?;
    // Sooner than the grace period (10 s), after which SIGKILL would end
    // it (137, checked below too).
    if start.elapsed() >= Duration::from_secs(10) {
        return Err(format!("stop of sleep took {:?}", start.elapsed()).into());
    }
    let r = ok(h(&["wait", &vm.name])?, "wait")?;
    if r.stdout.trim() != "143" {
        return Err(r.explain("sleep ended by SIGTERM: 143").into());
    }
    vm.remove(&processes)?;

    // With --rm, stopping it removes it.
    let mut vm = Vm::start("d-rm", &["--rm", "examples/busybox", "--", "sleep", "1000"])?;
    let processes = tree(vm.keeper()?);
    ok(h(&["stop", &vm.name])?, "stop of a --rm appliance")?;
    vm.removed = true;
    let deadline = Instant::now() + Duration::from_secs(15);
    while vm.dir().exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    nothing_left(&vm.dir(), &processes)
}

/// The deepest process of the keeper's tree: the (jailed) VMM.
pub(super) fn vmm_of(keeper: u32) -> Option<u32> {
    let mut pid = keeper;
    loop {
        let kids: Vec<u32> = children(pid)
            .into_iter()
            .filter(|p| comm(*p) == "husk")
            .collect();
        match kids.first() {
            Some(k) => pid = *k,
            None => return (pid != keeper).then_some(pid),
        }
    }
}

fn kill_9() -> Result<(), Failed> {
    for target in ["vmm", "keeper"] {
        let vm = Vm::start(
            &format!("d-kill-{target}"),
            &["examples/busybox", "--", "sleep", "1000"],
        )?;
        let keeper = vm.keeper()?;
        let processes = tree(keeper);
        let victim = match target {
            "vmm" => vmm_of(keeper).ok_or("no VMM process under the keeper")?,
            _ => keeper,
        };
        Command::new("kill")
            .args(["-9", &victim.to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let line = loop {
            let line = vm.ps_line()?;
            if line.contains("Exited") || Instant::now() > deadline {
                break line;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let want = if target == "vmm" {
            "Exited (137)"
        } else {
            "Exited (unknown"
        };
        if !line.contains(want) {
            return Err(format!(
                "after kill -9 of the {target}, husk ps -a shows {line:?}, not {want}"
            )
            .into());
        }
        let r = vm.exec(&["true"])?;
        if r.code == Some(0) {
            return Err(r.explain("exec into a killed appliance").into());
        }
        let mut all = processes.clone();
        if target == "keeper" {
            // Its keeper's socket is left behind; a new keeper replaces it.
            ok(
                h(&["start", &vm.name])?,
                "start after kill -9 of the keeper",
            )?;
            all.extend(tree(vm.keeper()?));
            ok(vm.exec(&["true"])?, "exec after starting again")?;
        }
        vm.remove(&all)?;
    }
    Ok(())
}

fn names_and_users() -> Result<(), Failed> {
    use std::os::unix::fs::PermissionsExt;
    let a = Vm::start("d-one", &["examples/busybox", "--", "sleep", "1000"])?;
    let b = Vm::start(
        "d-two",
        &["oci:examples/busybox/image:latest", "--", "sleep", "1000"],
    )?;
    for vm in [&a, &b] {
        if !vm.ps_line()?.contains("Up ") {
            return Err(format!("{} should be up: {}", vm.name, vm.ps_line()?).into());
        }
        let r = ok(vm.exec(&["hostname"])?, "hostname")?;
        let _ = r;
    }
    // -q: the names alone.
    let r = ok(h(&["ps", "-q"])?, "husk ps -q")?;
    let names: Vec<&str> = r.stdout.lines().collect();
    if !names.contains(&"d-one")
        || !names.contains(&"d-two")
        || names.iter().any(|n| n.contains(' '))
    {
        return Err(r.explain("husk ps -q lists the names alone").into());
    }
    let r = h(&["run", "-d", "--name", "d-one", "examples/busybox"])?;
    if r.code == Some(0) || !r.stderr.contains("in use by a running appliance") {
        return Err(r.explain("a name in use must be refused").into());
    }
    for bad in ["-x", "a/b", ".."] {
        let r = h(&["run", "-d", &format!("--name={bad}"), "examples/busybox"])?;
        if r.code == Some(0) || !r.stderr.contains("is not a valid name") {
            return Err(r.explain(&format!("--name {bad} must be refused")).into());
        }
    }
    let r = h(&["exec", "d-nope", "true"])?;
    if r.code == Some(0) || !r.stderr.contains("no appliance named \"d-nope\"") {
        return Err(r.explain("an unknown name").into());
    }

    // A user's appliances live under their own XDG_DATA_HOME: nobody runs
    // one (its own image cache: a copy of root's busybox image and kernel)
    // and neither sees the other's.
    let home = tempfile::tempdir()?;
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755))?;
    let run = home.path().join("run");
    std::fs::create_dir(&run)?;
    let data = home.path().join("data");
    std::fs::create_dir(&data)?;
    let cache = home.path().join("cache");
    let kernel = boot_tests::husk_kernel()?.vmlinux();
    let image = boot_tests::husk::built_image("examples/busybox")?;
    let dir_of = |p: &Path| -> Result<PathBuf, Failed> {
        Ok(p.parent()
            .ok_or("a cache file without a folder")?
            .to_path_buf())
    };
    let (kernel_dir, image_dir) = (dir_of(&kernel)?, dir_of(&image)?);
    let name_of = |p: &Path| p.file_name().unwrap_or_default().to_owned();
    let kernel_copy = cache.join("kernels").join(name_of(&kernel_dir));
    let image_copy = cache.join("images").join(name_of(&image_dir));
    std::fs::create_dir_all(&kernel_copy)?;
    std::fs::create_dir_all(image_copy.parent().ok_or("no parent")?)?;
    std::fs::copy(&kernel, kernel_copy.join("vmlinux"))?;
    let copy = Command::new("sh")
        .arg("-c")
        .arg(
            "cp -a \"$1\" \"$2\" && chown -R 65534:65534 \"$3\" \"$4\" \"$5\" \
             && chmod 700 \"$4\" \"$5\"",
        )
        .args(["sh"])
        .arg(&image_dir)
        .arg(&image_copy)
        .arg(&cache)
        .arg(&run)
        .arg(&data)
        .status()?;
    if !copy.success() {
        return Err("cannot copy husk's kernel and busybox image for nobody".into());
    }
    let _kvm = super::network::KvmForNobody::grant()?;
    let nobody = |args: &[&str]| -> Result<HuskRun, Failed> {
        let mut all = vec!["--reuid=65534", "--regid=65534", "--clear-groups", "--"];
        let bin = husk_bin()?;
        let bin = bin.to_str().ok_or("husk's path is not UTF-8")?.to_string();
        all.push(&bin);
        all.extend_from_slice(args);
        let out = Command::new("setpriv")
            .args(&all)
            .current_dir(boot_tests::workspace_root())
            .env("HUSK_CACHE_DIR", &cache)
            .env("XDG_RUNTIME_DIR", &run)
            .env("XDG_DATA_HOME", &data)
            .env("HOME", home.path())
            .stdin(Stdio::null())
            .output()?;
        Ok(HuskRun {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
            elapsed: Duration::ZERO,
        })
    };
    let example = home.path().join("busybox");
    let copied = Command::new("sh")
        .arg("-c")
        .arg("cp -a examples/busybox \"$1\" && chmod -R a+rX \"$1\"")
        .args(["sh"])
        .arg(&example)
        .current_dir(boot_tests::workspace_root())
        .status()?;
    if !copied.success() {
        return Err("cannot copy examples/busybox for nobody".into());
    }
    let example = example
        .to_str()
        .ok_or("a temporary path that is not UTF-8")?;
    // On a network of its own: its hub runs as nobody, from nobody's
    // data folder.
    ok(
        nobody(&["network", "create", "mine"])?,
        "nobody's network create",
    )?;
    let r = nobody(&[
        "run", "-d", "--name", "d-one", "--net", "none", "--net", "mine", example, "--", "sleep",
        "1000",
    ])?;
    let result = (|| -> Result<(), Failed> {
        if r.code != Some(0) {
            return Err(r
                .explain("nobody's husk run -d of a name root uses too")
                .into());
        }
        let mine = nobody(&["ps"])?;
        if !mine.stdout.contains("d-one") || mine.stdout.contains("d-two") {
            return Err(mine
                .explain("nobody's ps shows its own appliances only")
                .into());
        }
        let r = ok(nobody(&["exec", "d-one", "id", "-u"])?, "nobody's exec")?;
        if r.stdout.trim() != "1000" {
            return Err(r
                .explain("nobody's appliance runs its command as uid 1000 in the guest")
                .into());
        }
        let r = ok(
            nobody(&["exec", "d-one", "ip", "-4", "-o", "addr", "show", "eth0"])?,
            "nobody's exec",
        )?;
        let hubs = super::networks::hubs_of("mine");
        let uid = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("Uid:").map(str::to_string))
                .unwrap_or_default()
        };
        if !r.stdout.contains("10.89.")
            || hubs.len() != 1
            || uid(hubs[0]).split_whitespace().any(|u| u != "65534")
            || !data.join("husk/networks/mine/hub.sock").exists()
        {
            return Err(r
                .explain(&format!(
                    "nobody's appliance should be on its network, served by a hub of \
                     nobody's: hubs {hubs:?}"
                ))
                .into());
        }
        if !data.join("husk/vms/d-one/state.json").exists() {
            return Err("nobody's state is not under its XDG_DATA_HOME".into());
        }
        let mode = std::fs::metadata(data.join("husk/vms/d-one/control.sock"))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(format!("the control socket is mode {:o}, not 0600", mode & 0o777).into());
        }
        let roots = ok(h(&["ps"])?, "root's ps")?;
        if roots.stdout.matches("d-one").count() != 1 {
            return Err(roots.explain("root's ps shows root's d-one only").into());
        }
        Ok(())
    })();
    let keeper = std::fs::read(data.join("husk/vms/d-one/state.json"))
        .ok()
        .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
        .and_then(|v| v["keeper_pid"].as_u64());
    let nobody_tree = keeper.map(|k| tree(k as u32)).unwrap_or_default();
    let removed = nobody(&["rm", "-f", "d-one"])?;
    result?;
    ok(removed, "nobody's husk rm -f")?;
    nothing_left(&data.join("husk/vms/d-one"), &nobody_tree)?;
    super::networks::no_hub(&data.join("husk/networks"), "mine")?;
    let (ta, tb) = (tree(a.keeper()?), tree(b.keeper()?));
    a.remove(&ta)?;
    b.remove(&tb)
}

fn web_wait_ready() -> Result<(), Failed> {
    let port = 18_090;
    let publish = format!("127.0.0.1:{port}:80");
    // A range, as docker takes one: 18091 to the guest's 80, 18092 to 81.
    let range = format!("127.0.0.1:{}-{}:80-81", port + 1, port + 2);
    let vm = Vm::start(
        "d-web",
        &[
            "--wait-ready",
            "--net",
            "user",
            "-p",
            &publish,
            "-p",
            &range,
            "examples/web",
        ],
    )?;
    let processes = tree(vm.keeper()?);
    // Ready means serving: no retry here.
    let page = super::network::curl(&format!("http://127.0.0.1:{port}/"), None)?;
    if !page.contains("Hello from a husk appliance") {
        return Err(format!("the published port served {page:?}").into());
    }
    let line = vm.ps_line()?;
    if !line.contains(&format!("127.0.0.1:{port}->80/tcp")) {
        return Err(format!("husk ps should show the published port: {line:?}").into());
    }
    let inspect = ok(h(&["inspect", &vm.name])?, "inspect")?;
    let v: serde_json::Value = serde_json::from_str(&inspect.stdout)?;
    let addresses = v[0]["Guest"]["addresses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if v[0]["Guest"]["hostname"] != "web"
        || !addresses
            .iter()
            .any(|a| a.as_str().is_some_and(|a| a.starts_with("eth0 ")))
    {
        return Err(inspect
            .explain("inspect should show the guest's hostname and eth0's address")
            .into());
    }
    let r = ok(h(&["port", &vm.name])?, "husk port")?;
    let want = format!(
        "80/tcp -> 127.0.0.1:{port}\n80/tcp -> 127.0.0.1:{}\n81/tcp -> 127.0.0.1:{}\n",
        port + 1,
        port + 2
    );
    if r.stdout != want {
        return Err(r.explain("husk port lists what is published").into());
    }
    let page = super::network::curl(&format!("http://127.0.0.1:{}/", port + 1), None)?;
    if !page.contains("Hello from a husk appliance") {
        return Err(format!("the range's first port served {page:?}").into());
    }
    vm.remove(&processes)?;

    // Published on any free host port (-p 127.0.0.1::80, and -P for
    // the appliance's run.expose = [80]): husk port says which, and it
    // serves there; a foreground run says it on stderr.
    let vm = Vm::start(
        "d-web-any",
        &[
            "--wait-ready",
            "--net",
            "user",
            "-p",
            "127.0.0.1::80",
            "-P",
            "examples/web",
        ],
    )?;
    let processes = tree(vm.keeper()?);
    let r = ok(h(&["port", &vm.name, "80"])?, "husk port NAME 80")?;
    let chosen_on = |ip: &str| -> Result<(String, u16), Failed> {
        let host = r
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{ip}:")))
            .map(str::to_string)
            .ok_or_else(|| r.explain(&format!("husk port NAME 80 names no port on {ip}")))?;
        let port = host[ip.len() + 1..]
            .parse()
            .map_err(|_| r.explain("husk port NAME 80 prints the host address"))?;
        Ok((host, port))
    };
    let (host, chosen) = chosen_on("127.0.0.1")?;
    let (_, all) = chosen_on("0.0.0.0")?;
    for url in [
        format!("http://{host}/"),
        format!("http://127.0.0.1:{all}/"),
    ] {
        let page = super::network::curl(&url, None)?;
        if chosen == 0 || all == 0 || !page.contains("Hello from a husk appliance") {
            return Err(format!("the chosen port {url} served {page:?}").into());
        }
    }
    if !vm.ps_line()?.contains(&format!("{host}->80/tcp")) {
        return Err(format!("husk ps should show {host}: {}", vm.ps_line()?).into());
    }
    let r = h(&["port", &vm.name, "81"])?;
    if r.code == Some(0) || !r.stderr.contains("publishes no port 81") {
        return Err(r.explain("a port it does not publish").into());
    }
    vm.remove(&processes)?;
    let r = ok(
        h(&[
            "run",
            "--net",
            "user",
            "-p",
            "80",
            "examples/busybox",
            "--",
            "true",
        ])?,
        "a foreground run with -p 80",
    )?;
    let said = r
        .stderr
        .lines()
        .any(|l| l.starts_with("husk: published ") && l.ends_with("->80/tcp"));
    if !said {
        return Err(r.explain("a foreground run says the port it chose").into());
    }
    Ok(())
}

fn agent_garbage() -> Result<(), Failed> {
    let vm = Vm::start("d-garbage", &["examples/busybox", "--", "sleep", "1000"])?;
    let processes = tree(vm.keeper()?);
    let uds = vm.dir().join("vsock.sock");
    let frame = |body: &[u8]| {
        let mut f = (body.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(body);
        f
    };
    let inputs = [
        frame(b"not json at all!"),
        b"\xff\xff\xff\xff".to_vec(),
        frame(br#"{"v":9,"op":"ping"}"#),
        frame(br#"{"v":1,"op":"format_disk"}"#),
        frame(br#"{"v":1,"op":"wait","id":"x"}"#),
        b"\x05\x00".to_vec(),
    ];
    for input in &inputs {
        let mut conn = boot_tests::hybrid_vsock_connect(&uds, agent::PORT)?;
        conn.write_all(input)?;
        conn.shutdown(std::net::Shutdown::Write)?;
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        let want = if input.len() <= 4 {
            ""
        } else {
            "\"re\":\"error\""
        };
        if !answer.contains(want) {
            return Err(format!("garbage {input:?} got {answer:?}").into());
        }
    }
    let r = ok(vm.exec(&["echo", "still", "here"])?, "exec after garbage")?;
    if r.stdout.trim() != "still here" {
        return Err(r.explain("the agent should serve after garbage").into());
    }
    vm.remove(&processes)
}

/// The agent protocol itself, on the VM's vsock socket as the keeper uses
/// it: stdin closed early, a signal, waiting (once), errors, the guest's
/// view of itself, and its clock set from the host.
fn agent_protocol() -> Result<(), Failed> {
    use agent::{ErrorKind, ExitStatus, Process, Request, Response, Stream};
    let vm = Vm::start(
        "d-agent",
        &["oci:examples/busybox/image:latest", "--", "sleep", "1000"],
    )?;
    let processes = tree(vm.keeper()?);
    let uds = vm.dir().join("vsock.sock");
    let conn = || -> Result<std::os::unix::net::UnixStream, Failed> {
        Ok(boot_tests::hybrid_vsock_connect(&uds, agent::PORT)?)
    };
    let call = |c: &mut std::os::unix::net::UnixStream, r: &Request| -> Result<Response, Failed> {
        agent::call(c, r).map_err(|e| Failed::from(format!("{r:?}: {e}")))
    };
    let mut c = conn()?;
    if call(&mut c, &Request::Ping)? != Response::Pong {
        return Err("ping".into());
    }
    let start = |c: &mut std::os::unix::net::UnixStream, argv: &[&str], stdin: bool| {
        let process = Process {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            stdin,
            ..Default::default()
        };
        match call(c, &Request::Start { process })? {
            Response::Started { id, .. } => Ok::<u32, Failed>(id),
            other => Err(format!("start {argv:?}: {other:?}").into()),
        }
    };
    let attach = |id: u32, stream: Stream| -> Result<std::os::unix::net::UnixStream, Failed> {
        let mut s = conn()?;
        match call(&mut s, &Request::Attach { id, stream })? {
            Response::Ok => Ok(s),
            other => Err(format!("attach {stream:?}: {other:?}").into()),
        }
    };
    // cat: what goes in comes out; closing stdin ends it.
    let id = start(&mut c, &["cat"], true)?;
    let mut input = attach(id, Stream::Stdin)?;
    let mut output = attach(id, Stream::Stdout)?;
    input.write_all(b"abc")?;
    let mut got = [0u8; 3];
    output.read_exact(&mut got)?;
    if call(&mut c, &Request::CloseStdin { id })? != Response::Ok {
        return Err("close_stdin".into());
    }
    let mut rest = Vec::new();
    output.read_to_end(&mut rest)?;
    let status = call(&mut c, &Request::Wait { id })?;
    if &got != b"abc"
        || !rest.is_empty()
        || status
            != (Response::Exited {
                status: ExitStatus::Code(0),
            })
    {
        return Err(format!("cat gave {got:?} then {rest:?} and {status:?}").into());
    }
    // Collected once; then unknown, as is any id never given.
    for id in [id, 9999] {
        match call(&mut c, &Request::Wait { id })? {
            Response::Error {
                kind: ErrorKind::NoSuchProcess,
                ..
            } => {}
            other => return Err(format!("wait {id} again: {other:?}").into()),
        }
    }
    if let Response::Error { kind, .. } = call(
        &mut c,
        &Request::Attach {
            id: 9999,
            stream: Stream::Stdout,
        },
    )? {
        if kind != ErrorKind::NoSuchProcess {
            return Err(format!("attach to nothing: {kind:?}").into());
        }
    } else {
        return Err("attach to an unknown process must fail".into());
    }
    // A signal ends a process; its status says which.
    let id = start(&mut c, &["sleep", "100"], false)?;
    match call(
        &mut c,
        &Request::Resize {
            id,
            size: agent::WindowSize { rows: 1, cols: 1 },
        },
    )? {
        Response::Error {
            kind: ErrorKind::NotAttachable,
            ..
        } => {}
        other => return Err(format!("resize of a process without a terminal: {other:?}").into()),
    }
    call(
        &mut c,
        &Request::Signal {
            id,
            signal: libc::SIGTERM,
        },
    )?;
    let status = call(&mut c, &Request::Wait { id })?;
    if status
        != (Response::Exited {
            status: ExitStatus::Signal(libc::SIGTERM),
        })
    {
        return Err(format!("sleep after SIGTERM: {status:?}").into());
    }
    match call(
        &mut c,
        &Request::Start {
            process: Process {
                argv: vec!["/nope".into()],
                ..Default::default()
            },
        },
    )? {
        Response::Error {
            kind: ErrorKind::StartFailed { status: 127 },
            ..
        } => {}
        other => return Err(format!("start of a missing program: {other:?}").into()),
    }
    // The guest's view of itself.
    match call(&mut c, &Request::Info)? {
        Response::Info(info) if info.uptime_ms > 0 && !info.hostname.is_empty() => {}
        other => return Err(format!("info: {other:?}").into()),
    }
    // The clock: set to 2030, read back in the guest, set back to now.
    call(
        &mut c,
        &Request::SetTime {
            secs: 1_893_456_000,
            nanos: 0,
        },
    )?;
    let year = ok(vm.exec(&["date", "+%Y"])?, "date")?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    call(
        &mut c,
        &Request::SetTime {
            secs: now.as_secs(),
            nanos: now.subsec_nanos(),
        },
    )?;
    if year.stdout.trim() != "2030" {
        return Err(year
            .explain("the guest's clock after set_time to 2030")
            .into());
    }
    let guest_now = ok(vm.exec(&["date", "+%s"])?, "date")?;
    let guest_secs: u64 = guest_now.stdout.trim().parse()?;
    if guest_secs.abs_diff(now.as_secs()) > 30 {
        return Err(format!(
            "the guest's clock is {guest_secs}, the host's {}",
            now.as_secs()
        )
        .into());
    }
    drop(c);
    vm.remove(&processes)
}

/// Polls `vm`'s state until `done` holds for it (within `limit`).
fn state_until(
    vm: &Vm,
    limit: Duration,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value, Failed> {
    let deadline = Instant::now() + limit;
    loop {
        let state = vm.state()?;
        if done(&state) {
            return Ok(state);
        }
        if Instant::now() > deadline {
            return Err(format!("{}: {what} within {limit:?}; state: {state}", vm.name).into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `--restart`: on-failure starts a failing command again at most N
/// times, keeping one log; always starts even a clean exit again, until
/// `husk stop`, which a restart in progress also hears; nothing is left.
fn restart_policies() -> Result<(), Failed> {
    for (bad, says) in [
        (&["--restart", "sometimes"][..], "write no, always"),
        (&["--restart", "always", "--rm"][..], "cannot be used with"),
    ] {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(bad);
        all.push("examples/busybox");
        let r = h(&all)?;
        if r.code != Some(2) || !r.stderr.contains(says) {
            return Err(r.explain(&format!("{bad:?} should be refused")).into());
        }
    }

    let script = "echo run; sleep 1; exit 3";
    let vm = Vm::start(
        "d-on-failure",
        &[
            "--restart",
            "on-failure:2",
            "examples/busybox",
            "--",
            "sh",
            "-c",
            script,
        ],
    )?;
    let mut processes = tree(vm.keeper()?);
    let state = state_until(
        &vm,
        Duration::from_secs(150),
        "exited after 2 restarts",
        |s| s["status"] == "exited",
    )?;
    if state["restart_count"] != 2 || state["exit_code"] != 3 || state["restart"] != "on-failure:2"
    {
        return Err(format!("on-failure:2 of a command exiting 3: {state}").into());
    }
    let logs = ok(h(&["logs", &vm.name])?, "logs")?;
    if logs.stdout.lines().filter(|l| l.trim() == "run").count() != 3 {
        return Err(logs.explain("three runs, one log").into());
    }
    if !vm.ps_line()?.contains("Exited (3)") {
        return Err("ps -a should show it exited with 3".into());
    }
    processes.extend(tree(vm.keeper()?));
    vm.remove(&processes)?;

    // husk update --restart while it runs: the keeper takes the new
    // policy when the command ends, and keeps it across the restart.
    let vm = Vm::start(
        "d-updated",
        &[
            "examples/busybox",
            "--",
            "sh",
            "-c",
            "echo run; sleep 3; exit 3",
        ],
    )?;
    let mut processes = tree(vm.keeper()?);
    ok(
        h(&["update", "--restart", "on-failure:1", &vm.name])?,
        "husk update --restart",
    )?;
    refused(
        h(&["update", "--memory", "256m", &vm.name])?,
        "d-updated is running, and a VM's vCPUs and memory are fixed while it runs",
    )?;
    let state = state_until(
        &vm,
        Duration::from_secs(150),
        "exited after 1 restart",
        |s| s["status"] == "exited",
    )?;
    if state["restart_count"] != 1 || state["restart"] != "on-failure:1" {
        return Err(format!("on-failure:1 set by husk update: {state}").into());
    }
    processes.extend(tree(vm.keeper()?));
    vm.remove(&processes)?;

    // always: a clean exit starts it again too; stop ends that, also
    // while a restart waits or boots.
    let vm = Vm::start(
        "d-always",
        &[
            "--restart",
            "always",
            "examples/busybox",
            "--",
            "sh",
            "-c",
            "echo up; sleep 2",
        ],
    )?;
    let mut processes = tree(vm.keeper()?);
    state_until(&vm, Duration::from_secs(90), "restarted twice", |s| {
        s["restart_count"].as_u64() >= Some(2)
    })?;
    processes.extend(tree(vm.keeper()?));
    let r = ok(
        h(&["stop", "-t", "1", &vm.name])?,
        "stop of an always-restarting appliance",
    )?;
    if r.stdout.trim() != vm.name {
        return Err(r.explain("stop prints the name").into());
    }
    let stopped = state_until(&vm, Duration::from_secs(30), "exited after stop", |s| {
        s["status"] == "exited"
    })?;
    std::thread::sleep(Duration::from_secs(3));
    let later = vm.state()?;
    if later["status"] != "exited" || later["restart_count"] != stopped["restart_count"] {
        return Err(format!("stopped, it must stay stopped: {stopped} then {later}").into());
    }
    vm.remove(&processes)?;

    // husk kill: a HUP the command ends on keeps the policy (it starts
    // again); a KILL ends it for good.
    let script = "trap 'echo hup; exit 5' HUP; echo up; while :; do sleep 1; done";
    let vm = Vm::start(
        "d-kill",
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
    let mut processes = tree(vm.keeper()?);
    ok(h(&["kill", "--signal", "HUP", &vm.name])?, "kill HUP")?;
    state_until(
        &vm,
        Duration::from_secs(60),
        "running again after HUP",
        |s| s["restart_count"] == 1 && s["status"] == "running",
    )?;
    processes.extend(tree(vm.keeper()?));
    ok(h(&["kill", &vm.name])?, "kill KILL")?;
    state_until(&vm, Duration::from_secs(30), "exited after KILL", |s| {
        s["status"] == "exited"
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let later = vm.state()?;
    if later["status"] != "exited" || later["restart_count"] != 1 || later["exit_code"] != 137 {
        return Err(format!("killed with KILL, it must stay exited (137): {later}").into());
    }
    vm.remove(&processes)
}

/// `husk stats`: a busy appliance's CPU is its VMM's (far above an idle
/// one's), its memory, disk writes and processes the guest's own.
fn stats() -> Result<(), Failed> {
    let busy = Vm::start(
        "d-busy",
        &[
            "examples/busybox",
            "--",
            "sh",
            "-c",
            "dd if=/dev/zero of=/data/f bs=1M count=4 conv=fsync 2>/dev/null; \
             sleep 1000 & while :; do :; done",
        ],
    )?;
    let idle = Vm::start("d-idle", &["examples/busybox", "--", "sleep", "1000"])?;
    let (busy_tree, idle_tree) = (tree(busy.keeper()?), tree(idle.keeper()?));
    // The dd is done once its file is whole.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = busy.exec(&[
            "sh",
            "-c",
            "test $(stat -c %s /data/f) = 4194304 && echo whole",
        ])?;
        if r.stdout.trim() == "whole" {
            break;
        }
        if Instant::now() > deadline {
            return Err(r.explain("the guest's dd did not finish").into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let r = ok(h(&["stats", "--no-stream"])?, "husk stats --no-stream")?;
    let row = |name: &str| -> Result<Vec<String>, Failed> {
        let line = r
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .ok_or_else(|| r.explain(&format!("{name} is not in husk stats")))?;
        Ok(line
            .split("   ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect())
    };
    let (b, i) = (row(&busy.name)?, row(&idle.name)?);
    let cpu = |row: &[String]| -> f64 { row[1].trim_end_matches('%').parse().unwrap_or(-1.0) };
    let pids = |row: &[String]| -> u32 { row[6].parse().unwrap_or(0) };
    let written = b[5].split(" / ").nth(1).unwrap_or("0B");
    if b.len() != 8 || cpu(&b) < 20.0 || cpu(&b) <= cpu(&i) || cpu(&i) < 0.0 {
        return Err(r
            .explain("a busy guest's CPU % should be high, above an idle one's")
            .into());
    }
    if !b[2].ends_with("MiB") || !b[2].contains(" / ") || pids(&b) < 3 || pids(&i) < 2 {
        return Err(r
            .explain("memory used / total and the guest's processes")
            .into());
    }
    if written == "0B" || !written.ends_with("MB") {
        return Err(r.explain("the guest wrote 4 MiB to its disk").into());
    }
    // One name: that row alone.
    let r = ok(h(&["stats", "--no-stream", &idle.name])?, "husk stats NAME")?;
    if r.stdout.lines().count() != 2 || !r.stdout.contains(&idle.name) {
        return Err(r.explain("stats of one appliance").into());
    }
    // docker's --format: a template a line, and json.
    let r = ok(
        h(&[
            "stats",
            "--no-stream",
            "--format",
            "{{.Name}} {{.PIDs}}",
            &idle.name,
        ])?,
        "husk stats --format",
    )?;
    let shown: Vec<&str> = r.stdout.split_whitespace().collect();
    if shown.len() != 2 || shown[0] != idle.name || shown[1].parse::<u32>().unwrap_or(0) < 2 {
        return Err(r.explain("stats --format {{.Name}} {{.PIDs}}").into());
    }
    let r = ok(
        h(&["stats", "--no-stream", "--format", "json", &busy.name])?,
        "husk stats --format json",
    )?;
    let row: serde_json::Value = serde_json::from_str(r.stdout.trim())?;
    if row["Name"] != busy.name.as_str()
        || !row["CPUPerc"].as_str().is_some_and(|c| c.ends_with('%'))
    {
        return Err(r.explain("stats --format json").into());
    }
    busy.remove(&busy_tree)?;
    idle.remove(&idle_tree)
}

/// SHA-256 of a host file, as `sha256sum` prints it.
fn sha256(path: &Path) -> Result<String, Failed> {
    let out = Command::new("sha256sum").arg(path).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// `husk cp` both ways: a folder with a file, an 8 MiB file checked by
/// digest and a link; into a new folder, an existing one, by `DIR/.`, as
/// a tar stream; owners kept with -a; docker's refusals.
fn cp() -> Result<(), Failed> {
    let vm = Vm::start("d-cp", &["examples/busybox", "--", "sleep", "1000"])?;
    let processes = tree(vm.keeper()?);
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub"))?;
    std::fs::write(src.join("a.txt"), "alpha")?;
    let big = src.join("sub/big.bin");
    let status = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "count=8", "status=none"])
        .arg(format!("of={}", big.display()))
        .status()?;
    if !status.success() {
        return Err("dd".into());
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(src.join("a.txt"), std::fs::Permissions::from_mode(0o640))?;
    std::os::unix::fs::symlink("a.txt", src.join("link"))?;
    std::os::unix::fs::chown(src.join("a.txt"), Some(1234), Some(4321))?;
    let digest = sha256(&big)?;
    let src_arg = src.to_string_lossy().into_owned();
    let at = |p: &str| format!("{}:{p}", vm.name);

    // In: a new folder (made), then a file into it with -a.
    ok(
        h(&["cp", &src_arg, &at("/tmp/in")])?,
        "cp into a new folder",
    )?;
    // As root: the 0640 file is root's in the guest.
    let r = ok(
        h(&[
            "exec",
            "-u",
            "0",
            &vm.name,
            "sh",
            "-c",
            "cat /tmp/in/a.txt; echo; sha256sum /tmp/in/sub/big.bin; readlink /tmp/in/link; \
             stat -c '%u:%g %a' /tmp/in/a.txt",
        ])?,
        "exec",
    )?;
    let want = format!("alpha\n{digest}  /tmp/in/sub/big.bin\na.txt\n0:0 640\n");
    if r.stdout != want {
        return Err(r
            .explain(&format!("the copy in the guest: want {want:?}"))
            .into());
    }
    let a_txt = src.join("a.txt").to_string_lossy().into_owned();
    ok(
        h(&["cp", "-a", &a_txt, &at("/tmp/in/sub/")])?,
        "cp -a into a folder",
    )?;
    let r = ok(
        vm.exec(&["stat", "-c", "%u:%g", "/tmp/in/sub/a.txt"])?,
        "stat",
    )?;
    if r.stdout.trim() != "1234:4321" {
        return Err(r.explain("-a keeps the owners").into());
    }

    // Out: a new folder, a file into an existing folder, DIR/., a tar.
    let back = tmp.path().join("back");
    ok(
        h(&["cp", &at("/tmp/in"), &back.to_string_lossy()])?,
        "cp out",
    )?;
    if sha256(&back.join("sub/big.bin"))? != digest
        || std::fs::read_to_string(back.join("a.txt"))? != "alpha"
        || std::fs::read_link(back.join("link"))? != Path::new("a.txt")
    {
        return Err("the copy out differs".into());
    }
    let dir = tmp.path().join("dir");
    std::fs::create_dir(&dir)?;
    ok(
        h(&["cp", &at("/etc/motd"), &dir.to_string_lossy()])?,
        "cp a file out",
    )?;
    if !std::fs::read_to_string(dir.join("motd"))?.contains("husk") {
        return Err("motd should land in the folder".into());
    }
    let spread = tmp.path().join("spread");
    ok(
        h(&["cp", &at("/tmp/in/."), &spread.to_string_lossy()])?,
        "cp DIR/.",
    )?;
    if !spread.join("sub/big.bin").exists() || spread.join("in").exists() {
        return Err("DIR/. copies what the folder holds".into());
    }
    let r = ok(h(&["cp", &at("/tmp/in/a.txt"), "-"])?, "cp to stdout")?;
    if !r.stdout.contains("a.txt") || !r.stdout.contains("alpha") {
        return Err(r.explain("a tar archive on stdout").into());
    }

    // docker's refusals, and an appliance that is not there.
    let dir_arg = dir.to_string_lossy().into_owned();
    let (nowhere, onto, no_folder) = (at("/nowhere"), at("/tmp/in/a.txt"), at("/no/such/"));
    let cases: [([&str; 3], &str); 5] = [
        (["cp", &nowhere, &dir_arg], "No such file"),
        (["cp", &src_arg, &onto], "onto a file"),
        (["cp", &a_txt, &no_folder], "no such folder"),
        (["cp", &a_txt, "d-absent:/x"], "d-absent"),
        (["cp", &a_txt, &dir_arg], "NAME:PATH"),
    ];
    for (args, says) in cases {
        let r = h(&args)?;
        if r.code != Some(1) || !r.stderr.contains(says) {
            return Err(r
                .explain(&format!("husk {args:?} should fail saying {says:?}"))
                .into());
        }
    }
    vm.remove(&processes)
}

/// `husk attach` to a shell run with `-d -i`: what is sent reaches the
/// shell and its output comes back, and attach ends with the shell's
/// status; Ctrl-P Ctrl-Q detaches and leaves it running, also typed on a
/// terminal, which is raw while attached and as it was after; a
/// `--no-stdin` attach ends when `husk stop` stops it, with the status
/// `husk wait` says; nothing is left after `rm`.
fn attach() -> Result<(), Failed> {
    let vm = Vm::start("d-attach", &["-i", "examples/busybox", "--", "sh"])?;
    let mut all = tree(vm.keeper()?);
    let r = h_in(&["attach", &vm.name], b"echo attached-$((6*7))\nexit 3\n")?;
    if r.code != Some(3) || !r.stdout.contains("attached-42") {
        return Err(r
            .explain("attach: the shell's answer, then its status 3")
            .into());
    }
    if !vm.ps_line()?.contains("Exited (3)") {
        return Err(format!("after exit 3: {}", vm.ps_line()?).into());
    }

    ok(h(&["start", &vm.name])?, "start")?;
    all.extend(tree(vm.keeper()?));
    let r = h_in(&["attach", &vm.name], b"echo one-$((1+1))\n\x10\x11")?;
    if r.code != Some(0) || !r.stderr.contains("detached from d-attach") {
        return Err(r.explain("attach: Ctrl-P Ctrl-Q detaches").into());
    }
    if !vm.ps_line()?.contains("Up ") {
        return Err(format!("running on after a detach: {}", vm.ps_line()?).into());
    }
    attach_on_a_terminal(&vm)?;

    let name = vm.name.clone();
    let attached = std::thread::spawn(move || h(&["attach", "--no-stdin", &name]));
    std::thread::sleep(Duration::from_secs(2));
    ok(h(&["stop", "-t", "1", &vm.name])?, "stop")?;
    let r = attached.join().expect("the attach thread")?;
    let waited = ok(h(&["wait", &vm.name])?, "wait")?;
    if r.code.map(|c| c.to_string()) != Some(waited.stdout.trim().to_string()) {
        return Err(r
            .explain(&format!(
                "attach --no-stdin should end with the status husk wait says ({})",
                waited.stdout.trim()
            ))
            .into());
    }
    let r = h(&["attach", &vm.name])?;
    if r.code == Some(0) || !r.stderr.contains("d-attach is not running") {
        return Err(r.explain("attach to a stopped appliance").into());
    }
    vm.remove(&all)
}
