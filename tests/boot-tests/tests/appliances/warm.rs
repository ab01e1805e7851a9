//! Warm start through `husk run` itself (issue #17): the first run of an
//! appliance boots it and snapshots it at init's snapshot point; later
//! runs of the same VM restore that snapshot and run this run's command,
//! environment and network. Each test keeps its snapshots in a folder of
//! its own (`HUSK_SNAPSHOT_DIR`); the other tests, on the bed's read-only
//! cache, boot cold.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use boot_tests::husk::{husk_bin, output_within, HuskRun};
use libtest_mimic::{Failed, Trial};

use super::network::{children, comm, curl, gone};

const LIMIT: Duration = Duration::from_secs(120);

pub fn trials() -> Vec<Trial> {
    vec![
        boot_tests::trial(
            "warm_start_restores_with_this_runs_command_and_refuses_a_bad_snapshot",
            warm_hello,
        ),
        boot_tests::trial(
            "warm_start_keeps_disk_writes_per_run_differs_in_randomness_and_runs_2_vcpus",
            warm_disks_randomness_cpus,
        ),
        boot_tests::trial(
            "warm_start_serves_http_through_a_published_port_and_leaves_nothing_after_kill_9",
            warm_published_port,
        ),
        boot_tests::trial(
            "warm_start_runs_a_detached_appliance_with_exec_and_stop",
            warm_detached,
        ),
        boot_tests::trial(
            "warm_start_restores_shared_folders_and_a_root_from_a_folder_and_leaves_nothing_after_kill_9",
            warm_shares,
        ),
        boot_tests::trial(
            "snapshot_create_of_a_running_appliance_restores_where_it_was_twice_and_in_the_foreground",
            named_snapshot,
        ),
    ]
}

/// `husk ARGS` from the workspace root with snapshots in `snapshots`.
fn husk(snapshots: &Path, args: &[&str]) -> Result<HuskRun, Failed> {
    husk_in(snapshots, args, b"")
}

/// [`husk`] with `stdin` as its input.
fn husk_in(snapshots: &Path, args: &[&str], stdin: &[u8]) -> Result<HuskRun, Failed> {
    std::env::set_current_dir(boot_tests::workspace_root())?;
    let mut cmd = Command::new(husk_bin()?);
    cmd.args(args)
        .env("HUSK_SNAPSHOT_DIR", snapshots)
        .env("HUSK_LOG", "info");
    Ok(output_within(cmd, stdin, LIMIT)?)
}

/// `husk run --timeout 90 ARGS`, which must exit with `code`.
pub(super) fn run(snapshots: &Path, args: &[&str], code: i32) -> Result<HuskRun, Failed> {
    let mut all = vec!["run", "--timeout", "90"];
    all.extend_from_slice(args);
    let r = husk(snapshots, &all)?;
    if r.code != Some(code) {
        return Err(r
            .explain(&format!("husk {} should exit {code}", all.join(" ")))
            .into());
    }
    Ok(r)
}

/// Whether the run restored a snapshot.
pub(super) fn restored(r: &HuskRun) -> bool {
    r.stderr.contains("warm start: restoring")
}

/// Whether the run recorded its snapshot's working set.
fn recorded(r: &HuskRun) -> bool {
    r.stderr.contains("warm start: recorded a working set of")
}

/// The number the run's log gives right after `said`, if it does.
fn logged_count(r: &HuskRun, said: &str) -> Option<u64> {
    r.stderr.split(said).nth(1)?.split(' ').next()?.parse().ok()
}

/// The pages of the working set the run read in ahead, if it did.
fn read_ahead(r: &HuskRun) -> Option<u64> {
    logged_count(r, "warm start: read in ")
}

/// The pages of the working set the run mapped into the guest's nested
/// page tables ahead of its vCPUs, if it said.
fn mapped_ahead(r: &HuskRun) -> Option<u64> {
    logged_count(r, "warm start: mapped ")
}

/// Whether this host's kernel lets a recording restore turn the host's
/// fault-around off (userfaultfd's asynchronous write protection, Linux
/// 6.7: the test bed's kernel has it), tried on memory of this process.
fn records_exactly() -> Result<bool, Failed> {
    let mem =
        vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 16)])
            .map_err(|e| format!("cannot map memory: {e}"))?;
    Ok(vmm::snapshot::exact(&mem).is_ok())
}

/// Whether this host's KVM maps guest memory ahead on request
/// (`KVM_PRE_FAULT_MEMORY`, Linux 6.10: the test bed's kernel has it).
fn kvm_pre_faults() -> Result<bool, Failed> {
    let kvm = kvm_ioctls::Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    Ok(kvm.check_extension_raw(kvm_bindings::KVM_CAP_PRE_FAULT_MEMORY.into()) > 0)
}

/// Whether the VMM wrote the run's parameters into init's resume area.
fn in_area(r: &HuskRun) -> bool {
    r.stderr
        .contains("this run's parameters written into init's resume area")
}

fn took(r: &HuskRun) -> bool {
    r.stderr.contains("cold start: taking a snapshot")
}

/// The helpers a `husk run` (pid `pid`) with a user-mode network and a
/// vsock device started: passt and the vsock broker.
fn helpers(pid: u32) -> Vec<u32> {
    children(pid)
        .into_iter()
        .filter(|p| comm(*p).starts_with("passt") || comm(*p) == "husk-vsock")
        .collect()
}

/// The vsock sockets of `husk run` `pid`'s own in the temporary folder.
fn vsock_sockets(pid: u32) -> Vec<String> {
    fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("husk-{pid}.vsock")))
        .collect()
}

/// After kill -9 of `husk run` `pid`: `helpers` and `sockets`, seen while
/// it ran, are gone. Expected while it ran: passt, and where `broker`,
/// the vsock broker and its socket (a named snapshot's restore); a plain
/// run's warm start has a vsock device with neither.
fn nothing_left_after_kill(
    what: &str,
    pid: u32,
    (helpers, sockets): (Vec<u32>, Vec<String>),
    broker: bool,
) -> Result<(), Failed> {
    let expected = match broker {
        true => (2, 1),
        false => (1, 0),
    };
    if (helpers.len(), sockets.len()) != expected {
        return Err(format!(
            "{what}: expected passt{}: {helpers:?} {sockets:?}",
            match broker {
                true => ", the vsock broker and its socket",
                false => " alone (no vsock broker, no socket)",
            }
        )
        .into());
    }
    for p in helpers {
        if !gone(p) {
            return Err(format!("{what}: {} ({p}) outlived kill -9 of husk", comm(p)).into());
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    if !vsock_sockets(pid).is_empty() {
        return Err(format!("{what}: the run's vsock socket outlived it").into());
    }
    Ok(())
}

/// The snapshot folders under `root`.
fn snapshot_dirs(root: &Path) -> Result<Vec<std::path::PathBuf>, Failed> {
    let mut dirs: Vec<_> = fs::read_dir(root)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn warm_hello() -> Result<(), Failed> {
    let tmp = tempfile::tempdir()?;
    let snaps = tmp.path().join("snapshots");

    // A run stopped long before its snapshot point (the guest's init)
    // leaves no snapshot folder behind: the next run takes it afresh.
    let cut = husk(&snaps, &["run", "--timeout", "0.2", "examples/hello"])?;
    if cut.code != Some(124) || (snaps.exists() && !snapshot_dirs(&snaps)?.is_empty()) {
        return Err(format!(
            "{} left {:?}",
            cut.explain("a run stopped by --timeout 0.2 before its snapshot point"),
            snapshot_dirs(&snaps).unwrap_or_default()
        )
        .into());
    }

    // Cold: boots, takes the snapshot, runs the image's command.
    let cold = run(&snaps, &["examples/hello"], 0)?;
    if !took(&cold) || restored(&cold) || !cold.stdout.contains("Hello from hello") {
        return Err(cold
            .explain("the first run should boot cold and snapshot")
            .into());
    }
    let dirs = snapshot_dirs(&snaps)?;
    if dirs.len() != 1 || fs::metadata(dirs[0].join("state.json"))?.len() == 0 {
        return Err(format!("one whole snapshot expected, found {dirs:?}").into());
    }

    // Warm: this run's environment and command, not the snapshot's.
    let warm = run(
        &snaps,
        &["--timings", "-e", "GREETING=Warm", "examples/hello"],
        0,
    )?;
    if !restored(&warm) || !warm.stdout.contains("Warm from hello") || !in_area(&warm) {
        return Err(warm
            .explain("the second run should restore, with -e, handed over in init's resume area")
            .into());
    }
    // An environment too large for the resume area (hex-encoded, 80 KiB)
    // comes over vsock.
    let big = "W".repeat(40 << 10);
    let large = run(
        &snaps,
        &["-e", &format!("GREETING={big}"), "examples/hello"],
        0,
    )?;
    if !restored(&large)
        || !large.stdout.contains(&format!("{big} from hello"))
        || !large.stderr.contains("init reads them over vsock")
    {
        return Err(format!(
            "a restore with a 40 KiB environment should hand it over by vsock \
             (stderr: {}; {} bytes of output)",
            large.stderr,
            large.stdout.len()
        )
        .into());
    }
    if warm.stderr.contains("guest reached init") {
        return Err(warm
            .explain("a restored VM does not boot its kernel")
            .into());
    }
    // The first restore recorded its working set (jailed: through the
    // pagemap it opened before entering the jail), exactly where the
    // kernel can turn the host's fault-around off meanwhile.
    let pages = dirs[0].join("pages");
    if !recorded(&warm) || fs::metadata(&pages).map(|m| m.len()).unwrap_or(0) == 0 {
        return Err(warm
            .explain("the first restore should record its working set")
            .into());
    }
    let how = match records_exactly()? {
        true => " pages, exactly",
        false => " pages, with the host's fault-around",
    };
    if !warm.stderr.contains(how) {
        return Err(warm
            .explain(&format!(
                "the jailed VMM should record its working set as this kernel can:{how}"
            ))
            .into());
    }
    // Without the jail too (the VMM is then this very process); it reads
    // the working set in ahead.
    let unjailed = run(&snaps, &["--no-jail", "examples/hello"], 0)?;
    if !restored(&unjailed) || !unjailed.stdout.contains("Hello from hello") {
        return Err(unjailed
            .explain("a run without the jail should restore too")
            .into());
    }
    if read_ahead(&unjailed).is_none_or(|n| n == 0) || recorded(&unjailed) {
        return Err(unjailed
            .explain("a later restore should read the working set in, not record it")
            .into());
    }
    // And maps it for the guest ahead of its vCPUs where KVM can (all of
    // it), else leaves the guest to fault each page in (none).
    let all = match kvm_pre_faults()? {
        true => read_ahead(&unjailed),
        false => Some(0),
    };
    if mapped_ahead(&unjailed) != all {
        return Err(unjailed
            .explain(&format!(
                "the restore should map {all:?} pages of its working set ahead (KVM_PRE_FAULT_MEMORY)"
            ))
            .into());
    }
    // A damaged working set is only a hint: the run goes on, and records
    // it again.
    fs::write(&pages, b"{\"format\":1,\"runs\":[[0,99999999,true]]}")?;
    let hint = run(&snaps, &["--no-jail", "examples/hello"], 0)?;
    if !hint.stderr.contains("recording it again")
        || !recorded(&hint)
        || read_ahead(&hint).is_some()
    {
        return Err(hint
            .explain("a working set past the RAM should be recorded again")
            .into());
    }
    let ls = husk(&snaps, &["snapshot", "ls"])?;
    if ls.code != Some(0) || !ls.stdout.contains("ready") || !ls.stdout.contains("examples/hello") {
        return Err(ls.explain("husk snapshot ls should list it, ready").into());
    }

    // A damaged snapshot is refused, never run: this run boots cold and
    // takes it again; the next one restores the new one.
    let state = dirs[0].join("state.json");
    let text = fs::read(&state)?;
    fs::write(&state, &text[..text.len() / 2])?;
    let redo = run(&snaps, &["examples/hello"], 0)?;
    if !redo.stderr.contains("cannot be restored") || !took(&redo) || restored(&redo) {
        return Err(redo
            .explain("a truncated snapshot must be refused and taken again")
            .into());
    }
    if pages.exists() {
        return Err("a new snapshot should remove the old one's working set".into());
    }
    let again = run(&snaps, &["examples/hello"], 0)?;
    if !restored(&again) || !again.stdout.contains("Hello from hello") || !recorded(&again) {
        return Err(again
            .explain("the snapshot taken again should restore, and record its working set")
            .into());
    }

    // Another kernel (a copy, then the copy changed): boots cold each
    // time under a new key; the old snapshot is stale and pruned.
    let kernel = tmp.path().join("vmlinux");
    fs::copy(boot_tests::husk_kernel()?.vmlinux(), &kernel)?;
    let kernel_arg = kernel.to_string_lossy().into_owned();
    let args = ["--kernel", kernel_arg.as_str(), "examples/hello"];
    let first = run(&snaps, &args, 0)?;
    let second = run(&snaps, &args, 0)?;
    if !took(&first) || !restored(&second) {
        return Err(second
            .explain("a run with --kernel should snapshot, then restore")
            .into());
    }
    std::thread::sleep(Duration::from_millis(20));
    let bytes = fs::read(&kernel)?;
    fs::write(&kernel, &bytes)?;
    let changed = run(&snaps, &args, 0)?;
    if !took(&changed) || restored(&changed) {
        return Err(changed.explain("a changed kernel must not restore").into());
    }
    if snapshot_dirs(&snaps)?.len() != 3 {
        return Err(format!("three snapshots expected: {:?}", snapshot_dirs(&snaps)?).into());
    }
    let ls = husk(&snaps, &["snapshot", "ls"])?;
    if ls.stdout.matches("stale").count() != 1 {
        return Err(ls
            .explain("the old kernel's snapshot should be stale")
            .into());
    }
    let prune = husk(&snaps, &["snapshot", "prune"])?;
    if prune.code != Some(0) || snapshot_dirs(&snaps)?.len() != 2 {
        return Err(prune
            .explain("prune should remove the stale snapshot")
            .into());
    }
    let key = snapshot_dirs(&snaps)?[0]
        .file_name()
        .map(|n| n.to_string_lossy()[..8].to_string())
        .unwrap_or_default();
    let rm = husk(&snaps, &["snapshot", "rm", &key])?;
    if rm.code != Some(0) || snapshot_dirs(&snaps)?.len() != 1 {
        return Err(rm.explain("rm should remove it").into());
    }
    let missing = husk(&snaps, &["snapshot", "rm", "ffffffffff"])?;
    if missing.code != Some(1) || !missing.stderr.contains("no such snapshot") {
        return Err(missing.explain("rm of an unknown key").into());
    }
    // --cold neither restores nor takes one.
    let cold = run(&snaps, &["--cold", "examples/hello"], 0)?;
    if took(&cold) || restored(&cold) {
        return Err(cold.explain("--cold should bypass the snapshots").into());
    }
    Ok(())
}

fn warm_disks_randomness_cpus() -> Result<(), Failed> {
    let tmp = tempfile::tempdir()?;
    let snaps = tmp.path().join("snapshots");

    // The web appliance's root is a writable ext4 overlay: what the cold
    // run writes after the snapshot point stays in that run.
    let cold = run(
        &snaps,
        &[
            "examples/web",
            "--",
            "sh",
            "-c",
            "echo data > /written; cat /written; exit 3",
        ],
        3,
    )?;
    if !took(&cold) || !cold.stdout.contains("data") {
        return Err(cold.explain("the cold web run").into());
    }
    let script = "test -e /written && echo leaked; echo fresh > /other; cat /other; \
                  cat /sys/class/net/eth0/address; exit 4";
    let mut macs = Vec::new();
    for _ in 0..2 {
        let warm = run(&snaps, &["examples/web", "--", "sh", "-c", script], 4)?;
        if !restored(&warm) || warm.stdout.contains("leaked") || !warm.stdout.contains("fresh") {
            return Err(warm
                .explain("a restored run writes its own overlay only")
                .into());
        }
        macs.push(warm.stdout.lines().last().unwrap_or_default().to_string());
    }
    if macs[0] == macs[1] || !macs.iter().all(|m| m.starts_with("02:")) {
        return Err(format!("each run gets its own MAC: {macs:?}").into());
    }
    // -i: this run's input reaches a restored command that reads before
    // it writes anything (its init said it was running before the snapshot,
    // and says nothing after the restore).
    let script = "read x; echo got $x; exit 5";
    let typed = husk_in(
        &snaps,
        &[
            "run",
            "--timeout",
            "60",
            "-i",
            "examples/web",
            "--",
            "sh",
            "-c",
            script,
        ],
        b"typed\n",
    )?;
    if typed.code != Some(5) || !restored(&typed) || !typed.stdout.contains("got typed") {
        return Err(typed
            .explain("a restored run with -i should read its input and exit 5")
            .into());
    }

    // Two vCPUs; two restores of one snapshot differ in their random
    // state, and each has the host's time and this run's hostname.
    let script = "echo cpus=$(nproc); echo boot=$(cat /proc/sys/kernel/random/boot_id); \
                  echo rand=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'); \
                  echo time=$(date +%s); echo host=$(hostname); \
                  echo user=$(id -u):$(id -g); echo pwd=$(pwd); echo from=$FROM_RUN";
    let args = ["--cpus", "2", "examples/busybox", "--", "sh", "-c", script];
    let cold = run(&snaps, &args, 0)?;
    let mut seen = Vec::new();
    for round in 0..2 {
        let name = format!("restored-{round}");
        let mut all = vec!["--hostname", name.as_str()];
        // The second restore has docker's -u, -w and -e too; the first
        // the appliance's own user and folder.
        let (user, pwd, from) = if round == 1 {
            all.extend(["-u", "1:1", "-w", "/var/made", "-e", "FROM_RUN=warm"]);
            ("1:1", "/var/made", "warm")
        } else {
            ("1000:1000", "/data", "")
        };
        all.extend_from_slice(&args);
        let warm = run(&snaps, &all, 0)?;
        if warm.field("host").as_deref() != Some(name.as_str()) {
            return Err(warm
                .explain(&format!("the hostname should be {name}"))
                .into());
        }
        let got = (warm.field("user"), warm.field("pwd"), warm.field("from"));
        if got != (Some(user.into()), Some(pwd.into()), Some(from.into())) {
            return Err(warm
                .explain(&format!(
                    "a restore runs as {user} in {pwd} with FROM_RUN={from:?}"
                ))
                .into());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let time: u64 = warm.field("time").and_then(|t| t.parse().ok()).unwrap_or(0);
        if !restored(&warm) || warm.field("cpus").as_deref() != Some("2") || now.abs_diff(time) > 5
        {
            return Err(warm
                .explain(&format!(
                    "a restored 2-vCPU VM with the host's time ({now})"
                ))
                .into());
        }
        seen.push((warm.field("boot"), warm.field("rand")));
    }
    if !took(&cold) || seen[0].0 == seen[1].0 || seen[0].1 == seen[1].1 || seen[0].0.is_none() {
        return Err(format!("two restores must differ in boot_id and urandom: {seen:?}").into());
    }
    Ok(())
}

/// A snapshot taken at init's snapshot point holds a shared folder's
/// device before the guest mounted it: each restore gets virtiofsd serving
/// this run's folder, at this run's guest path and access.
fn warm_shares() -> Result<(), Failed> {
    use super::shares::{busybox_root, folder, virtiofsd_serving};
    let tmp = tempfile::tempdir()?;
    let snaps = tmp.path().join("snapshots");
    let (one, two) = (folder("warm-one")?, folder("warm-two")?);
    for (dir, text) in [(&one, "the first folder"), (&two, "the second folder")] {
        fs::write(dir.path().join("in"), format!("{text}\n"))?;
        // The busybox appliance runs as 1000:1000.
        std::os::unix::fs::chown(dir.path(), Some(1000), Some(1000))?;
    }
    let volume = |dir: &Path, at: &str| format!("{}:{at}", dir.display());
    let busybox = |v: &str, script: &str| -> Result<HuskRun, Failed> {
        let script = format!("{script}; true");
        run(
            &snaps,
            &["-v", v, "examples/busybox", "--", "sh", "-c", &script],
            0,
        )
    };
    let cold = busybox(
        &volume(one.path(), "/data"),
        "cat /data/in; echo cold > /data/out",
    )?;
    if !took(&cold) || !cold.stdout.contains("the first folder") {
        return Err(cold
            .explain("a cold run with a share takes a snapshot")
            .into());
    }
    let warm = busybox(
        &volume(two.path(), "/elsewhere"),
        "cat /elsewhere/in; echo warm > /elsewhere/out; test -e /data/in && echo leaked",
    )?;
    if !restored(&warm)
        || !warm.stdout.contains("the second folder")
        || warm.stdout.contains("leaked")
    {
        return Err(warm
            .explain("a restore mounts this run's folder where this run says")
            .into());
    }
    let ro = busybox(
        &format!("{}:/ro:ro", one.path().display()),
        "cat /ro/in; echo x > /ro/new 2>&1 || echo refused",
    )?;
    if !restored(&ro) || !ro.stdout.contains("the first folder") || !ro.stdout.contains("refused") {
        return Err(ro
            .explain("a restore shares read-only where this run says")
            .into());
    }
    let text = |p: std::path::PathBuf| fs::read_to_string(p).unwrap_or_default();
    if text(one.path().join("out")) != "cold\n"
        || text(two.path().join("out")) != "warm\n"
        || one.path().join("new").exists()
    {
        return Err("each run's writes belong in its own folder, none in the read-only one".into());
    }
    for dir in [&one, &two] {
        if !virtiofsd_serving(dir.path()).is_empty() {
            return Err(format!("a virtiofsd still serves {}", dir.path().display()).into());
        }
    }

    // A root booted from a folder: the folder is shared from the start,
    // and mounted as the root only after the snapshot point.
    let root = folder("warm-root")?;
    busybox_root(root.path())?;
    let target = format!("dir:{}", root.path().display());
    for round in ["cold", "warm"] {
        let r = run(
            &snaps,
            &[
                "--net",
                "none",
                &target,
                "--",
                "/bin/sh",
                "-c",
                &format!("cat /etc/marker; echo {round} > /{round}"),
            ],
            0,
        )?;
        let right = if round == "cold" {
            took(&r)
        } else {
            restored(&r)
        };
        if !right || !r.stdout.contains("from-the-folder") {
            return Err(r
                .explain(&format!("the {round} run of a folder root"))
                .into());
        }
        if text(root.path().join(round)) != format!("{round}\n") {
            return Err(r
                .explain("the guest's write did not land in the folder")
                .into());
        }
    }

    // kill -9 of a restored run: its virtiofsd goes with it.
    std::env::set_current_dir(boot_tests::workspace_root())?;
    let log = tmp.path().join("killed.log");
    let mut cmd = Command::new(husk_bin()?);
    cmd.args(["run", "--timeout", "90", "-v"])
        .arg(volume(two.path(), "/data"))
        .args(["examples/busybox", "--", "sh", "-c"])
        .arg("cat /data/in; echo ready; sleep 60")
        .env("HUSK_SNAPSHOT_DIR", &snaps)
        .env("HUSK_LOG", "info")
        .stderr(fs::File::create(&log)?);
    let (mut husk, seen, rest) = super::network::start_until_ready(cmd)?;
    let daemons: Vec<u32> = children(husk.id())
        .into_iter()
        .filter(|p| comm(*p) == "virtiofsd")
        .collect();
    let _ = husk.kill();
    let _ = husk.wait();
    let _ = rest.join();
    let said = fs::read_to_string(&log)?;
    if !said.contains("warm start: restoring") || !seen.contains("the second folder") {
        return Err(format!("the killed run should be a restore:\n{seen}\n{said}").into());
    }
    if daemons.len() != 1 {
        return Err(format!("one virtiofsd should serve the restored run: {daemons:?}").into());
    }
    if !gone(daemons[0]) || !virtiofsd_serving(two.path()).into_iter().all(gone) {
        return Err(format!("virtiofsd {} outlived kill -9 of husk", daemons[0]).into());
    }
    if snapshot_dirs(&snaps)?.len() != 2 {
        return Err("one snapshot per shape: the busybox one and the folder root's".into());
    }
    Ok(())
}

fn warm_published_port() -> Result<(), Failed> {
    let tmp = tempfile::tempdir()?;
    let snaps = tmp.path().join("snapshots");
    let script = "httpd -p 80 -h /www; echo ready; sleep 60";
    for round in ["cold", "warm"] {
        std::env::set_current_dir(boot_tests::workspace_root())?;
        let log = tmp.path().join(format!("{round}.log"));
        let mut husk = Command::new(husk_bin()?)
            .args(["run", "--timeout", "90", "-p", "127.0.0.1:18082:80"])
            .args(["examples/web", "--", "sh", "-c", script])
            .env("HUSK_SNAPSHOT_DIR", &snaps)
            .env("HUSK_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log)?)
            .spawn()?;
        let mut out = husk.stdout.take().expect("piped");
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !String::from_utf8_lossy(&seen).contains("ready") {
            match out.read(&mut byte) {
                Ok(1) => seen.push(byte[0]),
                _ => break,
            }
        }
        let pid = husk.id();
        let (helpers, during) = (helpers(pid), vsock_sockets(pid));
        let page = curl("http://127.0.0.1:18082/", None);
        // kill -9 of husk, whatever curl said: nothing may be left.
        let _ = husk.kill();
        let _ = husk.wait();
        let stderr = fs::read_to_string(&log)?;
        let page = page.map_err(|e| format!("{round}: {e:?}\n{stderr}"))?;
        if !page.contains("Hello from a husk appliance") {
            return Err(format!("{round}: curl through -p got {page:?}\n{stderr}").into());
        }
        let warm = stderr.contains("warm start: restoring");
        if warm != (round == "warm") {
            return Err(format!("{round} run, but its log says:\n{stderr}").into());
        }
        nothing_left_after_kill(round, pid, (helpers, during), false)?;
    }
    Ok(())
}

fn warm_detached() -> Result<(), Failed> {
    let tmp = tempfile::tempdir()?;
    let snaps = tmp.path().join("snapshots");
    for round in ["cold", "warm"] {
        let name = format!("warm-test-{round}");
        let started = husk(
            &snaps,
            &[
                "run",
                "-d",
                "--name",
                &name,
                "--wait-ready",
                "-p",
                "127.0.0.1:18083:80",
                "examples/web",
            ],
        )?;
        let checked = (|| -> Result<(), Failed> {
            if started.code != Some(0) {
                return Err(started.explain("husk run -d").into());
            }
            let page = curl("http://127.0.0.1:18083/", None)?;
            if !page.contains("Hello from a husk appliance") {
                return Err(format!("{round}: curl got {page:?}").into());
            }
            let exec = husk(&snaps, &["exec", &name, "hostname"])?;
            if exec.code != Some(0) || exec.stdout.trim() != "web" {
                return Err(exec.explain("husk exec into the appliance").into());
            }
            let logs = husk(&snaps, &["logs", &name])?;
            let restored = logs.stdout.contains("warm start: restoring");
            if restored != (round == "warm") {
                return Err(logs
                    .explain(&format!("{round}: the appliance's log"))
                    .into());
            }
            Ok(())
        })();
        let stop = husk(&snaps, &["stop", &name])?;
        let rm = husk(&snaps, &["rm", &name])?;
        checked?;
        if stop.code != Some(0) || rm.code != Some(0) {
            return Err(format!("{}\n{}", stop.explain("stop"), rm.explain("rm")).into());
        }
    }
    Ok(())
}

/// `husk snapshot create` of a running detached appliance, and `husk run
/// --from-snapshot` of it: restored twice at once and in the foreground,
/// each goes on where the snapshot was (a file the guest wrote before it,
/// not one written after; its web server serving through this run's own
/// `-p`), with random bytes of its own; the original goes on too. Bad
/// names and a damaged snapshot are refused; nothing is left behind.
fn named_snapshot() -> Result<(), Failed> {
    let tmp = tempfile::tempdir()?;
    let snaps = tmp.path().join("snapshots");
    let ok = |r: HuskRun, what: &str| -> Result<HuskRun, Failed> {
        match r.code {
            Some(0) => Ok(r),
            _ => Err(r.explain(what).into()),
        }
    };
    let names = ["named-src", "named-a", "named-b"];
    let checked = (|| -> Result<(), Failed> {
        let source = ok(
            husk(
                &snaps,
                &[
                    "run",
                    "-d",
                    "--name",
                    names[0],
                    "--wait-ready",
                    "-p",
                    "127.0.0.1:18084:80",
                    "examples/web",
                ],
            )?,
            "husk run -d of the source",
        )?;
        ok(
            husk(
                &snaps,
                &[
                    "exec",
                    names[0],
                    "sh",
                    "-c",
                    "echo before > /tmp/mark; echo disk > /on-disk",
                ],
            )?,
            "exec before the snapshot",
        )?;
        // A stream open at the snapshot: the restores must drop it (a
        // vsock transport reset) and still take the host's reseed, which
        // arrives right after.
        let sh = |name: &str, script: &str, what: &str| -> Result<HuskRun, Failed> {
            ok(husk(&snaps, &["exec", name, "sh", "-c", script])?, what)
        };
        // The agent's stream threads, by thread id: ids only grow, so a
        // thread from before the snapshot keeps its id in a restore and
        // one made after it has a greater one. A look is an exec: its
        // output's threads come after its shell (`$$`) and are left out;
        // its own request connection's thread came just before.
        let agent_streams = |name: &str| -> Result<BTreeSet<u32>, Failed> {
            let r = sh(
                name,
                "for t in /proc/1/task/*; do i=${t##*/}; [ $i -lt $$ ] || continue; \
                 read c < $t/comm; [ \"$c\" = agent-conn ] && echo $i; done; true",
                &format!("listing the agent's stream threads in {name}"),
            )?;
            r.stdout
                .lines()
                .map(|l| l.trim().parse::<u32>())
                .collect::<Result<_, _>>()
                .map_err(|_| r.explain("thread ids").into())
        };
        // An exec's connections end in the guest a moment after husk exec
        // returns, so a look can hold the last one's thread on its way
        // out. What stays: two looks in a row that differ only in their
        // own connection's thread.
        let steady = |name: &str| -> Result<BTreeSet<u32>, Failed> {
            let mut last = agent_streams(name)?;
            for _ in 0..8 {
                std::thread::sleep(Duration::from_millis(250));
                let now = agent_streams(name)?;
                let both: BTreeSet<u32> = last.intersection(&now).copied().collect();
                if both.len() + 1 == now.len() && last.len() == now.len() {
                    return Ok(both);
                }
                last = now;
            }
            Err(format!("{name}: the agent's stream threads do not settle ({last:?})").into())
        };
        let quiet = steady(names[0])?;
        // An agent connection between two requests: its thread in the
        // guest waits for the next one.
        let uds = Path::new("/var/lib/husk/vms")
            .join(names[0])
            .join("vsock.sock");
        let mut in_flight = boot_tests::hybrid_vsock_connect(&uds, agent::PORT)?;
        match agent::call(&mut in_flight, &agent::Request::Ping) {
            Ok(agent::Response::Pong) => {}
            other => return Err(format!("ping on a held agent connection: {other:?}").into()),
        }
        let mut held = BTreeSet::new();
        for _ in 0..40 {
            held = steady(names[0])?.difference(&quiet).copied().collect();
            if !held.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        if held.len() != 1 {
            return Err(format!(
                "a held connection should hold one agent thread in the source \
                 (threads {quiet:?} without it, {held:?} more with it)"
            )
            .into());
        }
        let created = ok(
            husk(&snaps, &["snapshot", "create", names[0], "snap1"])?,
            "husk snapshot create",
        )?;
        if created.stdout.trim() != "snap1" {
            return Err(created
                .explain("snapshot create should print the name")
                .into());
        }
        // The source was resumed: it serves, and takes an exec.
        let page = curl("http://127.0.0.1:18084/", None)?;
        if !page.contains("Hello from a husk appliance") {
            return Err(format!("the source after its snapshot: curl got {page:?}").into());
        }
        ok(
            husk(
                &snaps,
                &["exec", names[0], "sh", "-c", "echo after > /tmp/mark"],
            )?,
            "exec after the snapshot",
        )?;
        let again = husk(&snaps, &["snapshot", "create", names[0], "snap1"])?;
        if again.code == Some(0) || !again.stderr.contains("exists already") {
            return Err(again
                .explain("a second snapshot of one name must be refused")
                .into());
        }
        let ls = ok(husk(&snaps, &["snapshot", "ls"])?, "husk snapshot ls")?;
        if !ls
            .stdout
            .lines()
            .any(|l| l.starts_with("snap1 ") && l.contains("ready"))
        {
            return Err(ls.explain("snapshot ls should list snap1, ready").into());
        }

        // Two restores at once, each with its own port.
        let mut urandom = Vec::new();
        for (name, port) in [(names[1], 18085), (names[2], 18086)] {
            let publish = format!("127.0.0.1:{port}:80");
            let restored = ok(
                husk(
                    &snaps,
                    &[
                        "run",
                        "-d",
                        "--name",
                        name,
                        "--wait-ready",
                        "-p",
                        &publish,
                        "--from-snapshot",
                        "snap1",
                    ],
                )?,
                &format!("husk run -d --from-snapshot snap1 as {name}"),
            )?;
            eprintln!(
                "named snapshot: husk run -d --wait-ready {:.1} s booted, snapshot create {:.1} s, \
                 restored ({name}) {:.1} s",
                source.elapsed.as_secs_f64(),
                created.elapsed.as_secs_f64(),
                restored.elapsed.as_secs_f64()
            );
            let page = curl(&format!("http://127.0.0.1:{port}/"), None)?;
            if !page.contains("Hello from a husk appliance") {
                return Err(format!("{name}: curl through its -p got {page:?}").into());
            }
            let seen = sh(
                name,
                "cat /tmp/mark /on-disk; hostname; od -An -tx1 -N16 /dev/urandom",
                &format!("exec in {name}"),
            )?;
            let lines: Vec<&str> = seen.stdout.lines().collect();
            if lines.len() != 4 || lines[..3] != ["before", "disk", "web"] {
                return Err(seen
                    .explain(&format!("{name} must go on from the snapshot"))
                    .into());
            }
            urandom.push(lines[3].to_string());
            // The restore's own reseed connection stays open (its husk
            // holds it until the VM ends): one steady thread made after
            // the restore. The connection held across the snapshot must
            // be reset: its thread, with its id from the source, goes.
            let mut streams = steady(name)?;
            for _ in 0..20 {
                if streams.is_disjoint(&held) && streams.len() == quiet.len() + 1 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
                streams = steady(name)?;
            }
            if !streams.is_disjoint(&held) || streams.len() != quiet.len() + 1 {
                let logs = husk(&snaps, &["logs", name])?;
                return Err(format!(
                    "{name}: the agent connection open at the snapshot must be reset, and \
                     the reseed's stay: agent stream threads {streams:?}; in the source \
                     {quiet:?} without it and {held:?} more with it\n{}",
                    logs.explain("its log")
                )
                .into());
            }
        }
        drop(in_flight);
        if urandom[0] == urandom[1] {
            return Err(format!("two restores read the same random bytes: {urandom:?}").into());
        }
        // Different bytes alone do not show the host's seed arrived (the
        // guest gathers entropy of its own): its agent says so.
        for name in &names[1..] {
            let logs = ok(husk(&snaps, &["logs", name])?, "husk logs of a restore")?;
            if !logs.stdout.contains("random generator is reseeded") {
                return Err(logs.explain(&format!("{name} must be reseeded")).into());
            }
        }
        // The source still has what it wrote after the snapshot.
        let src = ok(
            husk(&snaps, &["exec", names[0], "cat", "/tmp/mark"])?,
            "exec in the source",
        )?;
        if src.stdout.trim() != "after" {
            return Err(src.explain("the source must keep its own writes").into());
        }

        // In the foreground: serves through -p until killed; nothing left.
        std::env::set_current_dir(boot_tests::workspace_root())?;
        let log = tmp.path().join("foreground.log");
        let mut fg = Command::new(husk_bin()?)
            .args([
                "run",
                "-p",
                "127.0.0.1:18087:80",
                "--from-snapshot",
                "snap1",
            ])
            .env("HUSK_SNAPSHOT_DIR", &snaps)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()?;
        let mut page = Err(Failed::from("not tried"));
        for _ in 0..60 {
            page = curl("http://127.0.0.1:18087/", None);
            if page.as_ref().is_ok_and(|p| p.contains("Hello")) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let pid = fg.id();
        let (helpers, during) = (helpers(pid), vsock_sockets(pid));
        let _ = fg.kill();
        let _ = fg.wait();
        let stderr = fs::read_to_string(&log)?;
        let page = page.map_err(|e| format!("foreground restore: {e:?}\n{stderr}"))?;
        if !page.contains("Hello from a husk appliance") {
            return Err(format!("foreground restore: curl got {page:?}\n{stderr}").into());
        }
        nothing_left_after_kill("foreground restore", pid, (helpers, during), true)?;

        // Refused: no such name, a bad name, a damaged snapshot.
        for (args, says) in [
            (
                &["run", "--from-snapshot", "nosuch"][..],
                "no snapshot named nosuch",
            ),
            (&["run", "--from-snapshot", "../x"][..], "name"),
            (
                &[
                    "snapshot",
                    "create",
                    names[0],
                    "0123456789abcdef0123456789abcdef",
                ][..],
                "warm-start",
            ),
        ] {
            let r = husk(&snaps, args)?;
            if r.code == Some(0) || !r.stderr.contains(says) {
                return Err(r
                    .explain(&format!("husk {} must be refused ({says})", args.join(" ")))
                    .into());
            }
        }
        let state = snaps.join("snap1").join("state.json");
        let whole = fs::read(&state)?;
        fs::write(&state, &whole[..whole.len() / 2])?;
        let r = husk(
            &snaps,
            &[
                "run",
                "-p",
                "127.0.0.1:18088:80",
                "--from-snapshot",
                "snap1",
            ],
        )?;
        if r.code == Some(0) || !r.stderr.contains("not a husk snapshot") {
            return Err(r.explain("a damaged snapshot must be refused").into());
        }
        ok(husk(&snaps, &["snapshot", "rm", "snap1"])?, "snapshot rm")?;
        if snaps.join("snap1").exists() {
            return Err("snapshot rm left its folder".into());
        }
        Ok(())
    })();
    let mut ends = Vec::new();
    for name in names {
        ends.push(husk(&snaps, &["stop", name])?);
        ends.push(husk(&snaps, &["rm", name])?);
    }
    checked?;
    if let Some(bad) = ends.iter().find(|r| r.code != Some(0)) {
        return Err(bad.explain("stop or rm of a restored appliance").into());
    }
    Ok(())
}
