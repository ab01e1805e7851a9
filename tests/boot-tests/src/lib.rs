//! Support for tests that boot real Linux guests: how to reach a KVM that
//! can boot Linux, guest images made on the fly, and a QEMU runner.
//!
//! On a host whose KVM is hardware-backed (`kvm_intel`/`kvm_amd`) the tests
//! run directly. Where it is PVM (`kvm_pvm`) or absent, the test binary runs
//! itself again inside `ci/kvm-testbed`, a level-2 guest with a real KVM.

#![forbid(unsafe_code)]

pub mod containerd;
pub mod cri;
pub mod guest;
pub mod husk;
pub mod qemu;
pub mod vm;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The workspace root (this crate lives in `tests/boot-tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What serves `/dev/kvm` on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    Intel,
    Amd,
    Pvm,
    Absent,
}

impl KvmKind {
    pub fn detect() -> KvmKind {
        let loaded = |m: &str| Path::new("/sys/module").join(m).exists();
        if !Path::new("/dev/kvm").exists() {
            KvmKind::Absent
        } else if loaded("kvm_pvm") {
            KvmKind::Pvm
        } else if loaded("kvm_intel") {
            KvmKind::Intel
        } else if loaded("kvm_amd") {
            KvmKind::Amd
        } else {
            KvmKind::Absent
        }
    }

    fn boots_linux(self) -> bool {
        matches!(self, KvmKind::Intel | KvmKind::Amd)
    }
}

/// How the boot tests reach a KVM that boots Linux.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This host's `/dev/kvm` (hardware-backed, or inside the test bed).
    Direct(KvmKind),
    /// Run again inside the level-2 guest of `ci/kvm-testbed`.
    TestBed { script: PathBuf, host: KvmKind },
}

/// Decides the route. `HUSK_KVM=direct|testbed` overrides the choice.
pub fn route() -> Result<Route, String> {
    let kind = KvmKind::detect();
    let script = workspace_root().join("ci/kvm-testbed");
    let in_testbed = std::env::var_os("HUSK_IN_TESTBED").is_some();
    let forced = std::env::var("HUSK_KVM").ok();
    let direct = |kind: KvmKind| {
        if kind.boots_linux() {
            Ok(Route::Direct(kind))
        } else if in_testbed {
            Err(format!(
                "inside the KVM test bed, /dev/kvm is {kind:?}, not kvm_amd: the test bed is broken"
            ))
        } else {
            Err(format!(
                "/dev/kvm here is {kind:?}, which cannot boot an ordinary Linux guest; \
                 run through ci/kvm-testbed (unset HUSK_KVM=direct)"
            ))
        }
    };
    match forced.as_deref() {
        _ if in_testbed => direct(kind),
        Some("direct") => direct(kind),
        Some("testbed") | None if !kind.boots_linux() || forced.is_some() => {
            if script.is_file() {
                Ok(Route::TestBed { script, host: kind })
            } else {
                Err(format!(
                    "/dev/kvm here is {kind:?} and the test bed script {} is missing",
                    script.display()
                ))
            }
        }
        None => direct(kind),
        Some(other) => Err(format!("HUSK_KVM={other:?}: use \"direct\" or \"testbed\"")),
    }
}

/// Set by [`rerun_in_testbed`] for the tests inside: the file each test
/// that passes appends its name to ([`trial`]).
pub const PASSED_ENV: &str = "HUSK_BOOT_TESTS_PASSED";
/// The test bed's exit status when its own kernel stopped (ci/kvm-testbed).
const BED_FROZE: i32 = 126;
/// Runs of the test bed a frozen bed allows in all: the emulator has
/// stopped the bed three times in one suite (a fresh-clone rehearsal of
/// CI, 2026-11-30); CI's own time limit bounds them anyway.
const BED_ATTEMPTS: usize = 8;

/// A test that, inside the test bed, notes that it passed, so a run the
/// bed's emulator stopped can go on without it.
pub fn trial(
    name: &str,
    test: impl FnOnce() -> Result<(), libtest_mimic::Failed> + Send + 'static,
) -> libtest_mimic::Trial {
    let owned = name.to_string();
    libtest_mimic::Trial::test(name, move || {
        let started = std::time::Instant::now();
        let result = test();
        // Where the suite's time goes (the bed's emulation makes it long).
        eprintln!("{owned}: {:.1} s", started.elapsed().as_secs_f64());
        if let Err(failed) = &result {
            // Also here, beside the test's own lines: a CI excerpt taken
            // around the failing test then shows why (the summary at the
            // end of the run may be cut away).
            // The reason comes first and a console's end last: both kept.
            let why = failed.message().unwrap_or("(no message)");
            let lines: Vec<&str> = why.lines().collect();
            eprintln!("{owned} FAILED:");
            for (i, line) in lines.iter().enumerate() {
                if i < 10 || i + 30 >= lines.len() {
                    eprintln!("  {line}");
                } else if i == 10 {
                    eprintln!("  [{} lines]", lines.len() - 40);
                }
            }
        }
        result?;
        if let Some(path) = std::env::var_os(PASSED_ENV) {
            use std::io::Write;
            let noted = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| writeln!(f, "{owned}"));
            if let Err(e) = noted {
                return Err(format!("cannot note that {owned} passed: {e}").into());
            }
        }
        Ok(())
    })
}

/// Runs the current test binary again inside the test bed with the same
/// arguments, and returns its exit status. When the bed's own kernel
/// stops under the emulator (exit 126: no heartbeat, or a panic), the
/// tests that had not passed yet run in a new bed, up to [`BED_ATTEMPTS`]
/// beds in all; a test's own failure is never run again.
pub fn rerun_in_testbed(script: &Path) -> ExitCode {
    let Some(exe) = test_binary() else {
        return ExitCode::FAILURE;
    };
    let passed = workspace_root().join("target/boot-tests-passed");
    exit_code(bed_runs(script, &exe, &passed, &[], None))
}

/// Test beds the boot tests are shared out among, side by side
/// (`$HUSK_TESTBED_BEDS`, 1 by default): each is one emulated CPU, so a
/// host with two cores runs two, each with half of the tests.
pub const BEDS_ENV: &str = "HUSK_TESTBED_BEDS";

/// [`rerun_in_testbed`] for the tests named `selected` (those this run's
/// arguments select), shared out among `$HUSK_TESTBED_BEDS` beds run at
/// once: bed `i` of `n` runs every `n`th test from the `i`th, in their
/// order (neighbours, often alike in cost, go to different beds). Each
/// bed's lines come out prefixed with `[bed i]`; the exit status is the
/// first failing bed's, else 0.
pub fn rerun_in_testbeds(script: &Path, selected: &[String]) -> ExitCode {
    let beds = match std::env::var(BEDS_ENV) {
        Err(_) => 1,
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => {
                eprintln!("boot tests: {BEDS_ENV}={v:?} is not a number of beds (1 or more)");
                return ExitCode::FAILURE;
            }
        },
    };
    let beds = beds.min(selected.len().max(1));
    if beds == 1 {
        return rerun_in_testbed(script);
    }
    let Some(exe) = test_binary() else {
        return ExitCode::FAILURE;
    };
    eprintln!(
        "boot tests: {} tests shared out among {beds} test beds run side by side ({BEDS_ENV})",
        selected.len()
    );
    let statuses: Vec<i32> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..beds)
            .map(|bed| {
                let others = others_tests(selected, beds, bed);
                let passed = workspace_root().join(format!("target/boot-tests-passed-{bed}"));
                let exe = &exe;
                scope.spawn(move || {
                    let status = bed_runs(script, exe, &passed, &others, Some(bed + 1));
                    eprintln!(
                        "boot tests: bed {} ended with exit status {status}",
                        bed + 1
                    );
                    status
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap_or(101)).collect()
    });
    exit_code(statuses.into_iter().find(|&s| s != 0).unwrap_or(0))
}

/// The tests of `selected` that bed `bed` of `beds` skips: those the
/// others run (every `beds`th from its own index on is its own).
fn others_tests(selected: &[String], beds: usize, bed: usize) -> Vec<String> {
    selected
        .iter()
        .enumerate()
        .filter(|(i, _)| i % beds != bed)
        .map(|(_, name)| name.clone())
        .collect()
}

/// This test binary, to run again in a bed.
fn test_binary() -> Option<std::path::PathBuf> {
    std::env::current_exe()
        .map_err(|e| eprintln!("boot tests: cannot find the test binary to re-run: {e}"))
        .ok()
}

fn exit_code(status: i32) -> ExitCode {
    ExitCode::from(status.clamp(0, 255) as u8)
}

/// One bed's run of the test binary `exe` (with this run's arguments,
/// less the tests in `not_here`), and its runs again after the bed's own
/// kernel stopped. `prefix`: the bed's number, to mark its output lines.
/// Returns the exit status.
fn bed_runs(
    script: &Path,
    exe: &Path,
    passed: &Path,
    not_here: &[String],
    prefix: Option<usize>,
) -> i32 {
    let _ = std::fs::remove_file(passed);
    let mut skip: Vec<String> = Vec::new();
    for attempt in 1..=BED_ATTEMPTS {
        let mut command = Command::new(script);
        command
            .arg("--")
            .arg(exe)
            .args(std::env::args_os().skip(1))
            .env(PASSED_ENV, passed);
        // Test names are whole words apart: none is a part of another
        // (checked by the boot tests' own list), so a skip hits one test.
        for name in not_here.iter().chain(&skip) {
            command.args(["--skip", name]);
        }
        let status = match prefix {
            None => command.status().map(|s| s.code()),
            Some(bed) => run_prefixed(&mut command, &format!("[bed {bed}] ")),
        };
        let code = match status {
            Ok(code) => code,
            Err(e) => {
                eprintln!("boot tests: cannot start {}: {e}", script.display());
                return 1;
            }
        };
        if code != Some(BED_FROZE) || attempt == BED_ATTEMPTS {
            let _ = std::fs::remove_file(passed);
            return code.unwrap_or(1);
        }
        skip = std::fs::read_to_string(passed)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        let bed = prefix.map(|b| format!(" {b}")).unwrap_or_default();
        eprintln!(
            "boot tests: the test bed{bed}'s kernel stopped (run {attempt} of {BED_ATTEMPTS}); \
             {} tests had passed; the others run again in a new bed",
            skip.len()
        );
    }
    1
}

/// Runs `command` with each line of its stdout and stderr copied to ours,
/// `prefix` before it, whole lines at a time (beds side by side interleave
/// lines, never parts of them). Returns its exit code.
fn run_prefixed(command: &mut Command, prefix: &str) -> std::io::Result<Option<i32>> {
    use std::io::Write;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let (out, err) = (child.stdout.take(), child.stderr.take());
    std::thread::scope(|scope| {
        if let Some(out) = out {
            scope.spawn(|| relay(out, prefix, |l| std::io::stdout().lock().write_all(l)));
        }
        if let Some(err) = err {
            scope.spawn(|| relay(err, prefix, |l| std::io::stderr().lock().write_all(l)));
        }
    });
    Ok(child.wait()?.code())
}

/// Each line of `from`, `prefix` before it, to `write` in one call.
fn relay(from: impl std::io::Read, prefix: &str, write: impl Fn(&[u8]) -> std::io::Result<()>) {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(from);
    let mut line = prefix.as_bytes().to_vec();
    while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
        if !line.ends_with(b"\n") {
            line.push(b'\n');
        }
        let _ = write(&line);
        line.truncate(prefix.len());
    }
}

/// husk's cached guest kernel, or why there is none.
pub fn husk_kernel() -> Result<builder::kernel::Kernel, String> {
    let cache = builder::cache::root().map_err(|e| e.to_string())?;
    builder::kernel::find(&cache).map_err(|e| e.to_string())
}

/// (median, min, max) of a non-empty sample.
pub fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (median, s[0], s[n - 1])
}

/// Runs the `N` sides of a bench in rounds, a warm-up round and then
/// `runs` kept ones: `run(side, round)` runs one side once (round 0 is
/// the warm-up). Returns each side's results, in round order.
/// The order changes from round to round ([`round_order`]) so that what
/// a run leaves behind (memory to reclaim, its files in the page cache)
/// falls on every side alike: in the KVM test bed a boot right after the
/// busybox appliance's took about 5% longer than one after the hello
/// appliance's, which a fixed order turned into a 5% difference between
/// two builds that boot alike.
pub fn rounds<T, const N: usize>(
    runs: usize,
    mut run: impl FnMut(usize, usize) -> Result<T, String>,
) -> Result<[Vec<T>; N], String> {
    let mut kept: [Vec<T>; N] = std::array::from_fn(|_| Vec::with_capacity(runs));
    for round in 0..=runs {
        for side in round_order(round, N) {
            let result = run(side, round)?;
            if round > 0 {
                kept[side].push(result);
            }
        }
    }
    Ok(kept)
}

/// The order of `n` sides in `round`: the list turned one place further
/// every other round, and reversed in the rounds between. In every `2n`
/// rounds each side runs first equally often, and with two or three
/// sides each runs right after each other one equally often too.
fn round_order(round: usize, n: usize) -> impl Iterator<Item = usize> {
    let (turn, reversed) = (round / 2, round % 2 == 1);
    (0..n).map(move |k| (turn + if reversed { n - 1 - k } else { k }) % n)
}

/// A bench table's title and column heads (seconds: median, min, max).
pub fn table_header(title: &str) {
    println!("{title}");
    println!(
        "{:<46} {:>8} {:>8} {:>8}",
        "seconds", "median", "min", "max"
    );
}

/// One row of a bench table: `what`, then the median, min and max of `v`;
/// returns the median.
pub fn table_row(what: &str, v: &[f64]) -> f64 {
    let (med, min, max) = stats(v);
    println!("{what:<46} {med:>8.3} {min:>8.3} {max:>8.3}");
    med
}

/// A row of a bench table that states a ratio.
pub fn table_ratio(what: &str, ratio: f64) {
    println!("{what:<46} {ratio:>8.3}x");
}

/// `--runs N` on the command line, else `default`.
pub fn runs_arg(default: usize) -> usize {
    std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// The `main` of a bench over targets given on its command line
/// (`NAME [--runs N] TARGET...`, `runs` by default).
pub fn targets_main(
    name: &str,
    runs: usize,
    bench: impl FnOnce(usize, &[String]) -> Result<(), String>,
) -> ExitCode {
    let mut runs = runs;
    let mut targets = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|n| n.parse().ok()).unwrap_or(runs),
            _ => targets.push(a),
        }
    }
    if targets.is_empty() {
        eprintln!("usage: {name} [--runs N] TARGET...");
        return ExitCode::FAILURE;
    }
    match bench(runs, &targets) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The `main` of a bench that boots Linux: run `bench` where KVM can
/// (directly, or by re-running this binary in the KVM test bed) and say
/// where it measured.
pub fn bench_main(name: &str, bench: impl FnOnce() -> Result<(), String>) -> ExitCode {
    match route() {
        Err(why) => {
            eprintln!("{name}: no usable KVM: {why}");
            ExitCode::FAILURE
        }
        Ok(Route::TestBed { script, host }) => {
            eprintln!("{name}: host /dev/kvm is {host:?}; running inside the KVM test bed");
            rerun_in_testbed(&script)
        }
        Ok(Route::Direct(kind)) => match bench() {
            Ok(()) => {
                println!("(measured on /dev/kvm: {kind:?})");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{name}: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Kills process `pid` if it still runs after `limit`, so a hung guest
/// cannot hang a bench; until then it costs the measured process nothing
/// (no `timeout` process in front of it, whose own start-up would be
/// measured too). Dropping it calls it off.
pub struct Watchdog {
    done: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    pub fn new(pid: u32, limit: std::time::Duration) -> Self {
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
                eprintln!("watchdog: killing process {pid} after {limit:?}");
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        });
        Watchdog {
            done: Some(done),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a bench's first figure waits for in a run's output.
pub enum First<'a> {
    /// The first byte, whatever it is.
    Byte,
    /// The first line containing this marker.
    LineWith(&'a str),
}

/// Spawns `cmd` with its stdout piped (killed by a [`Watchdog`] after 60 s)
/// and returns, in seconds, the time to `first` in its output and the time
/// to its exit. A run that fails or never shows `first` is an error.
pub fn time_run(cmd: &mut Command, first: First) -> Result<(f64, f64), String> {
    use std::io::{BufRead, BufReader};
    let start = std::time::Instant::now();
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let watchdog = Watchdog::new(child.id(), std::time::Duration::from_secs(60));
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut first_at = None;
    let mut line = Vec::new();
    loop {
        // fill_buf returns as soon as any output has arrived.
        if out.fill_buf().map_err(|e| e.to_string())?.is_empty() {
            break;
        }
        if first_at.is_none() && matches!(first, First::Byte) {
            first_at = Some(start.elapsed());
        }
        line.clear();
        out.read_until(b'\n', &mut line)
            .map_err(|e| e.to_string())?;
        if let First::LineWith(mark) = first {
            if first_at.is_none() && String::from_utf8_lossy(&line).contains(mark) {
                first_at = Some(start.elapsed());
            }
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let exit = start.elapsed();
    drop(watchdog);
    match first_at {
        Some(f) if status.success() => Ok((f.as_secs_f64(), exit.as_secs_f64())),
        Some(_) => Err(format!("{cmd:?} failed ({status})")),
        None => Err(format!("{cmd:?} printed no output or marker ({status})")),
    }
}

/// A host program's hybrid-vsock connection to guest `port` through the
/// VM's socket `uds`, with a 60 s read timeout (also for the answer).
pub fn hybrid_vsock_connect(
    uds: &Path,
    port: u32,
) -> Result<std::os::unix::net::UnixStream, String> {
    let minute = std::time::Duration::from_secs(60);
    let s = vmm::vsock::connect_guest(uds, port, minute).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(minute))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// podman with its store in `root` (the bed's tmpfs: vfs, no systemd, no
/// system folders written) and the OCI runtime `runtime` (runc, or a path).
pub fn podman_command(root: &Path, runtime: &std::ffi::OsStr) -> Command {
    let mut c = Command::new("podman");
    c.arg("--root")
        .arg(root.join("root"))
        .arg("--runroot")
        .arg(root.join("run"))
        .arg("--network-config-dir")
        .arg(root.join("net"))
        .arg("--tmpdir")
        .arg(root.join("tmp"))
        .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
        .args(["--events-backend", "file", "--runtime"])
        .arg(runtime)
        .env("TMPDIR", root);
    c
}

/// Runs `cmd` to its end (stdin /dev/null, killed by a [`Watchdog`] after
/// `limit`, so a hung guest cannot hang a bench) and returns its stdout; a
/// failure is an error carrying its output.
pub fn output_within(
    cmd: &mut Command,
    what: &str,
    limit: std::time::Duration,
) -> Result<String, String> {
    use std::process::Stdio;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    let watchdog = Watchdog::new(child.id(), limit);
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{what}: {e}"))?;
    drop(watchdog);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}):\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(text)
}

/// Spawn to exit of `cmd` (stdin /dev/null, output collected), in seconds;
/// a failure is an error carrying its stderr.
pub fn time_command(cmd: &mut Command) -> Result<f64, String> {
    let start = std::time::Instant::now();
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let took = start.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(took)
}

/// Sums of a process's `/proc/PID/smaps_rollup` fields, in KiB.
pub fn rollup(pid: u32, fields: &[&str]) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            fields
                .contains(&k)
                .then(|| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())?
        })
        .sum()
}

/// `pid` and every process under it.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        let children = std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|t| std::fs::read_to_string(t.path().join("children")).unwrap_or_default())
            .collect::<Vec<String>>()
            .join(" ");
        all.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
        i += 1;
    }
    all
}

/// The host memory of the processes `pids` (an idle VM's), measured now:
/// one line per process (PSS of its own, and of the guest RAM it maps),
/// printed under `title` once `measured` has run (the caller's clean-up),
/// then the totals beyond guest RAM and of guest RAM touched.
pub fn print_memory(title: &str, pids: &[u32], measured: impl FnOnce()) {
    let (mut own, mut guest) = (0, 0);
    let mut rows = Vec::new();
    for p in pids {
        let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        let o = rollup(*p, &["Pss_Anon", "Pss_File"]);
        let g = rollup(*p, &["Pss_Shmem"]);
        rows.push(format!(
            "  {:<16} {o:>8} KiB own, {g:>8} KiB of guest RAM",
            comm.trim()
        ));
        own += o;
        guest += g;
    }
    measured();
    println!("{title}, PSS:");
    for r in rows {
        println!("{r}");
    }
    println!(
        "husk's processes beyond guest RAM: {:.1} MiB; guest RAM touched: {:.1} MiB",
        own as f64 / 1024.0,
        guest as f64 / 1024.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beds_side_by_side_run_every_selected_test_once() {
        let selected: Vec<String> = (0..7).map(|i| format!("test_{i}")).collect();
        for beds in 1..=4 {
            let mut runs = vec![0; selected.len()];
            for bed in 0..beds {
                let skipped = others_tests(&selected, beds, bed);
                for (i, name) in selected.iter().enumerate() {
                    if !skipped.contains(name) {
                        runs[i] += 1;
                    }
                }
                // Shared out evenly: each bed its share, give or take one.
                let own = selected.len() - skipped.len();
                assert!(
                    own.abs_diff(selected.len() / beds) <= 1,
                    "{beds} beds: bed {bed} runs {own}"
                );
            }
            assert_eq!(runs, vec![1; selected.len()], "{beds} beds");
        }
    }

    #[test]
    fn rounds_keep_every_side_of_every_round_but_the_warm_up() {
        let mut order = String::new();
        let [a, b] = rounds(4, |side, round| {
            let name = ['a', 'b'][side];
            order.push(name);
            Ok((name, round))
        })
        .unwrap();
        assert_eq!(order, "abbabaabab");
        assert_eq!(a, [('a', 1), ('a', 2), ('a', 3), ('a', 4)]);
        assert_eq!(b, [('b', 1), ('b', 2), ('b', 3), ('b', 4)]);
    }

    #[test]
    fn round_orders_balance_first_places_and_predecessors() {
        for n in 1..=5 {
            let mut first = vec![0; n];
            let mut after = vec![vec![0; n]; n];
            for round in 0..2 * n {
                let order: Vec<usize> = round_order(round, n).collect();
                let mut sorted = order.clone();
                sorted.sort();
                assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "round {round} of {n}");
                first[order[0]] += 1;
                for w in order.windows(2) {
                    after[w[1]][w[0]] += 1;
                }
            }
            assert!(first.iter().all(|&f| f == 2), "{n} sides first: {first:?}");
            if n <= 3 {
                for (i, row) in after.iter().enumerate() {
                    for (j, &c) in row.iter().enumerate() {
                        let want = if i == j { 0 } else { 2 };
                        assert_eq!(c, want, "{n} sides: {i} after {j}");
                    }
                }
            }
        }
    }

    #[test]
    fn rounds_stop_at_the_first_failure() {
        let mut ran = vec![];
        let err = rounds::<(), 2>(5, |side, round| {
            ran.push((side, round));
            if side == 1 && round == 2 {
                return Err(format!("round {round}"));
            }
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err, "round 2");
        // Round 2 starts with the failing side: nothing runs after it.
        assert_eq!(ran, [(0, 0), (1, 0), (1, 1), (0, 1), (1, 2)]);
    }
}
