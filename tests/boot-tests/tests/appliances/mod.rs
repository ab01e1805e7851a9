//! End to end: appliance files and image references built by `husk build`
//! and booted by `husk run` with husk's init; the same images under QEMU.

use std::time::Duration;

use boot_tests::husk::{built_image, husk_run, HuskRun};
use boot_tests::husk_kernel;
use boot_tests::qemu::Microvm;
use libtest_mimic::{Failed, Trial};

const LIMIT: Duration = Duration::from_secs(120);

mod cri;
mod detached;
mod network;
mod networks;
mod oci;
mod service;
mod shares;
mod shim;
mod slots;
mod snapshot;
mod volumes;
mod vsock;
mod warm;

pub fn trials() -> Vec<Trial> {
    let mut all = vec![
        boot_tests::trial("appliance_hello_runs_and_exits_with_its_status", hello),
        boot_tests::trial(
            "appliance_busybox_has_its_user_workdir_hostname_and_env_and_run_overrides_them",
            busybox_run_config,
        ),
        boot_tests::trial(
            "appliance_init_reports_not_found_and_not_executable",
            init_failures,
        ),
        boot_tests::trial(
            "run_sets_ulimits_sysctls_dev_shm_and_capabilities_in_the_guest",
            guest_tuning,
        ),
        boot_tests::trial(
            "image_reference_runs_with_the_image_config_and_stdin",
            image_reference,
        ),
        boot_tests::trial("init_forwards_sigterm_to_the_command", sigterm_forwarded),
        boot_tests::trial(
            "a_run_ends_when_init_is_done_with_all_of_its_output",
            ends_when_done,
        ),
        boot_tests::trial(
            "an_ext4_root_keeps_its_writes_for_one_run_only",
            root_writes_last_one_run,
        ),
        boot_tests::trial(
            "appliance_images_boot_the_same_under_qemu_microvm",
            same_under_qemu,
        ),
        boot_tests::trial(
            "every_vmm_thread_runs_under_seccomp_with_no_new_privs",
            every_thread_filtered,
        ),
        boot_tests::trial(
            "jail_confines_the_vmm_and_leaves_nothing_behind",
            jail_confines_the_vmm,
        ),
    ];
    all.extend(cri::trials());
    all.extend(detached::trials());
    all.extend(network::trials());
    all.extend(networks::trials());
    all.extend(oci::trials());
    all.extend(service::trials());
    all.extend(shares::trials());
    all.extend(shim::trials());
    all.extend(snapshot::trials());
    all.extend(slots::trials());
    all.extend(volumes::trials());
    all.extend(vsock::trials());
    all.extend(warm::trials());
    all
}

/// `husk run ARGS` from the workspace root (appliance paths are relative).
fn run(args: &[&str], stdin: &[u8]) -> Result<HuskRun, Failed> {
    std::env::set_current_dir(boot_tests::workspace_root())?;
    let mut all = vec!["--timeout", "90"];
    all.extend_from_slice(args);
    Ok(husk_run(&all, stdin, LIMIT)?)
}

fn expect(run: &HuskRun, code: i32, lines: &[&str]) -> Result<(), Failed> {
    if run.code != Some(code) {
        return Err(run.explain(&format!("expected exit status {code}")).into());
    }
    for line in lines {
        if !run.stdout.lines().any(|l| l.trim_end() == *line) {
            return Err(run.explain(&format!("no output line {line:?}")).into());
        }
    }
    Ok(())
}

fn hello() -> Result<(), Failed> {
    let r = run(&["examples/hello"], b"")?;
    expect(&r, 0, &[])?;
    if !r.stdout.starts_with("Hello from hello (pid ") {
        return Err(r.explain("the output is not hello's alone").into());
    }
    eprintln!("hello: {:?}", r.elapsed);
    let r = run(
        &["examples/hello", "--", "/bin/hello", "x", "two words"],
        b"",
    )?;
    expect(&r, 3, &["arg 1: x", "arg 2: two words"])
}

fn busybox_run_config() -> Result<(), Failed> {
    let r = run(&["examples/busybox"], b"")?;
    expect(
        &r,
        0,
        &[
            "Welcome to a husk appliance.",
            "1000:1000 in /data on busybox",
        ],
    )?;
    let script = "echo user=$(id -u):$(id -g); echo pwd=$(pwd); echo host=$(hostname); \
                  echo ps1=$PS1; echo extra=$EXTRA; echo path=$PATH; exit 5";
    let r = run(
        &[
            "-e",
            "EXTRA=a b",
            "-e",
            "PS1=over",
            "examples/busybox",
            "--",
            "sh",
            "-c",
            script,
        ],
        b"",
    )?;
    expect(
        &r,
        5,
        &[
            "user=1000:1000",
            "pwd=/data",
            "host=busybox",
            "ps1=over",
            "extra=a b",
            "path=/usr/bin:/bin",
        ],
    )?;
    // docker's -u, -w, --env-file and -e KEY (husk's own value of KEY),
    // on the kernel command line of a cold boot.
    let tmp = tempfile::tempdir()?;
    let env_file = tmp.path().join("app.env");
    std::fs::write(
        &env_file,
        "# settings\n\nFROM_FILE=file value\nEXTRA=from file\n  HUSK_TEST_SECRET\n",
    )?;
    let script = "echo user=$(id -u):$(id -g); echo groups=$(id -G); echo pwd=$(pwd); \
                  echo file=$FROM_FILE; \
                  echo extra=$EXTRA; echo secret=$HUSK_TEST_SECRET; \
                  echo unset=${HUSK_TEST_UNSET-none}";
    let mut cmd = std::process::Command::new(boot_tests::husk::husk_bin()?);
    cmd.args(["run", "--timeout", "90", "-u", "0:0", "-w", "/made/here"])
        .args(["--group-add", "user", "--group-add", "4242"])
        .arg("--env-file")
        .arg(&env_file)
        .args(["-e", "EXTRA=from flag", "-e", "HUSK_TEST_UNSET"])
        .args(["examples/busybox", "--", "sh", "-c", script])
        .env("HUSK_TEST_SECRET", "s3cret")
        .env_remove("HUSK_TEST_UNSET");
    let r = boot_tests::husk::output_within(cmd, b"", LIMIT)?;
    expect(
        &r,
        0,
        &[
            "user=0:0",
            "groups=0 1000 4242",
            "pwd=/made/here",
            "file=file value",
            "extra=from flag",
            "secret=s3cret",
            "unset=none",
        ],
    )?;
    // A group the image does not have: init's setup status, saying so.
    let r = run(
        &["--group-add", "wheel", "examples/busybox", "--", "true"],
        b"",
    )?;
    expect(&r, 125, &[])?;
    if !r
        .stdout
        .contains("--group-add: group \"wheel\" is not in the image's /etc/group")
    {
        return Err(r.explain("init did not name the missing group").into());
    }
    // Refused before boot, each naming its flag.
    for (flag, value, code, says) in [
        ("-w", "relative", 1, "must be an absolute path"),
        ("-u", "a b", 1, "write USER, UID"),
        ("-e", "=x", 1, "no variable name"),
        ("--group-add", "a b", 2, "write one group"),
        ("--group-add", "4294967296", 2, "beyond 4294967295"),
    ] {
        let r = run(&[flag, value, "examples/busybox"], b"")?;
        if r.code != Some(code) || !r.stderr.contains(says) {
            return Err(r
                .explain(&format!("{flag} {value:?} should be refused"))
                .into());
        }
    }
    Ok(())
}

/// `--ulimit`, `--sysctl`, `--shm-size`, `--cap-drop`/`--cap-add` and
/// `--security-opt no-new-privileges`, set by init before the command (on
/// a cold boot's command line and after a warm start's restore); docker's
/// open-files limits and every capability by default; a kernel parameter
/// the guest's kernel lacks fails the run with init's setup status.
fn guest_tuning() -> Result<(), Failed> {
    let script = "grep 'open files' /proc/self/limits | tr -s ' '; \
                  cat /proc/sys/net/core/somaxconn; \
                  grep ' /dev/shm ' /proc/mounts | grep -o 'size=[0-9]*k' || echo no size; \
                  grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status | tr -d '\t'; \
                  echo last=$(cat /proc/sys/kernel/cap_last_cap)";
    let r = run(
        &["-u", "0:0", "examples/busybox", "--", "sh", "-c", script],
        b"",
    )?;
    // Every capability the guest's kernel knows.
    let last: u32 = r
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("last=")?.parse().ok())
        .ok_or_else(|| r.explain("no cap_last_cap from the guest"))?;
    let all = format!("{:016x}", u64::MAX >> (63 - last));
    expect(
        &r,
        0,
        &[
            "Max open files 1024 524288 files",
            "no size",
            &format!("CapBnd:{all}"),
            &format!("CapEff:{all}"),
            "NoNewPrivs:0",
        ],
    )?;
    // Cold, then warm: the bed's own cache is read-only (no snapshots), so
    // the warm runs keep theirs in a folder of their own; the first takes
    // the snapshot, the second restores it and sets everything after.
    let snapshots = tempfile::tempdir()?;
    for kind in ["cold", "snapshot taken", "restored"] {
        let mut args = vec![
            "--ulimit",
            "nofile=4096:8192",
            "--sysctl",
            "net.core.somaxconn=1234",
            "--shm-size",
            "8m",
            "--cap-drop",
            "ALL",
            "--cap-add",
            "net_bind_service",
            "--security-opt",
            "no-new-privileges",
            "-u",
            "0:0",
        ];
        if kind == "cold" {
            args.push("--cold");
        }
        args.extend(["examples/busybox", "--", "sh", "-c", script]);
        let r = if kind == "cold" {
            run(&args, b"")?
        } else {
            warm::run(snapshots.path(), &args, 0)?
        };
        let restored = warm::restored(&r);
        if restored != (kind == "restored") {
            let why = match restored {
                true => format!("the {kind} run restored a snapshot"),
                false => "the second warm run did not restore the first's snapshot".into(),
            };
            return Err(r.explain(&why).into());
        }
        // CAP_NET_BIND_SERVICE is capability 10.
        expect(
            &r,
            0,
            &[
                "Max open files 4096 8192 files",
                "1234",
                "size=8192k",
                "CapBnd:0000000000000400",
                "CapEff:0000000000000400",
                "NoNewPrivs:1",
            ],
        )?;
    }
    let r = run(
        &[
            "--sysctl",
            "kernel.husk_none=1",
            "examples/busybox",
            "--",
            "true",
        ],
        b"",
    )?;
    expect(&r, 125, &[])?;
    if !r.stdout.contains("cannot set kernel.husk_none to \"1\"") {
        return Err(r
            .explain("init did not say which parameter it could not set")
            .into());
    }
    Ok(())
}

fn init_failures() -> Result<(), Failed> {
    let r = run(&["examples/busybox", "--", "no-such-command"], b"")?;
    expect(&r, 127, &[])?;
    if !r.stdout.contains("no-such-command: command not found") {
        return Err(r.explain("init did not say the command is missing").into());
    }
    let r = run(&["examples/busybox", "--", "/etc/motd"], b"")?;
    expect(&r, 126, &[])?;
    if !r.stdout.contains("/etc/motd: cannot execute") {
        return Err(r.explain("init did not say why it cannot execute").into());
    }
    Ok(())
}

fn image_reference() -> Result<(), Failed> {
    // The image's own Cmd is /bin/sh: it reads the script from the console.
    let r = run(
        &["oci:examples/busybox/image:latest"],
        b"echo uid=$(id -u) pwd=$(pwd) path=$PATH; exit 4\n",
    )?;
    expect(&r, 4, &[])?;
    if !r.stdout.contains("uid=0 pwd=/ path=/usr/bin:/bin") {
        return Err(r.explain("the image's config did not apply").into());
    }
    // --entrypoint, with the arguments after -- following it (docker's).
    let r = run(
        &[
            "--entrypoint",
            r#"["/bin/sh", "-c"]"#,
            "oci:examples/busybox/image:latest",
            "--",
            "echo entry \"$0\" $1; exit 5",
            "zero",
            "one",
        ],
        b"",
    )?;
    expect(&r, 5, &["entry zero one"])?;
    // A single host file alone (no folder shared) and a tmpfs: docker's
    // -v FILE:PATH:ro and --tmpfs.
    let dir = shares::folder("tmpfs")?;
    let note = dir.path().join("note");
    std::fs::write(&note, "a note from the host\n")?;
    let volume = format!("{}:/etc/note:ro", note.display());
    let r = run(
        &[
            "-v",
            &volume,
            "--tmpfs",
            "/scratch:size=1m,mode=0750",
            "oci:examples/busybox/image:latest",
            "--",
            "sh",
            "-c",
            "cat /etc/note; grep ' /scratch ' /proc/mounts; echo x > /scratch/f && echo wrote",
        ],
        b"",
    )?;
    expect(&r, 0, &["a note from the host", "wrote"])?;
    let mount = r
        .stdout
        .lines()
        .find(|l| l.starts_with("tmpfs /scratch tmpfs "));
    let shaped = mount.is_some_and(|m| {
        ["rw,", "nosuid", "nodev", "noexec", "size=1024k", "mode=750"]
            .iter()
            .all(|o| m.contains(o))
    });
    if !shaped {
        return Err(r
            .explain("--tmpfs should mount /scratch with its options")
            .into());
    }
    Ok(())
}

fn sigterm_forwarded() -> Result<(), Failed> {
    // The command signals PID 1 (init), which must pass it back down.
    let script = "trap 'echo got-term; exit 7' TERM; kill -TERM 1; \
                  for i in 1 2 3 4 5 6 7 8 9 10; do sleep 1; done; echo no-signal";
    let r = run(
        &[
            "oci:examples/busybox/image:latest",
            "--",
            "sh",
            "-c",
            script,
        ],
        b"",
    )?;
    expect(&r, 7, &["got-term"])
}

/// init says "done" after the status, its console drained; the VMM ends
/// the VM there (no guest power-off) and nothing of the output is lost.
fn ends_when_done() -> Result<(), Failed> {
    // 3,000 lines, each its own write to the console's tty. (10,000 took
    // over the 90 s timeout in a CI rehearsal whose two beds and host
    // checks shared two cores: some 110 lines a second, slow but going.)
    let lines = 3_000;
    let script = format!("seq 1 {lines}; echo end-of-output; exit 4");
    let r = run(
        &["--timings", "examples/busybox", "--", "sh", "-c", &script],
        b"",
    )?;
    expect(&r, 4, &[])?;
    if !r.stderr.lines().any(|l| l.ends_with(" guest done")) {
        return Err(r
            .explain("--timings shows no \"guest done\": the VM ended otherwise")
            .into());
    }
    let out: Vec<&str> = r.stdout.lines().map(str::trim_end).collect();
    let want: Vec<String> = (1..=lines)
        .map(|n| n.to_string())
        .chain(["end-of-output".to_string()])
        .collect();
    if out.len() < want.len() || out[out.len() - want.len()..] != want[..] {
        return Err(format!(
            "the output is not seq's {lines} lines and the end line: {} lines, the last {:?}",
            out.len(),
            out.last()
        )
        .into());
    }
    Ok(())
}

fn sha256_of(path: &std::path::Path) -> Result<String, Failed> {
    let out = std::process::Command::new("sha256sum").arg(path).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into())
}

/// The root disk is the cached image under an overlay: what the guest
/// writes reads back (from the disk, not the page cache) during the run,
/// is gone in the next run, and the image is unchanged.
fn root_writes_last_one_run() -> Result<(), Failed> {
    let target = "oci:examples/busybox/image:latest";
    let image = boot_tests::husk::built_image(target)?;
    let before = sha256_of(&image)?;
    // The image's own command is a root shell reading the console.
    let script = b"test -e /marker && { echo stale; exit 9; }\n\
        dd if=/dev/urandom of=/big bs=64k count=64 2>/dev/null\n\
        one=$(md5sum < /big)\n\
        sync; echo 3 > /proc/sys/vm/drop_caches\n\
        two=$(md5sum < /big)\n\
        [ \"$one\" = \"$two\" ] && echo read-back-same\n\
        echo x > /marker; sync; exit 0\n";
    for round in ["first", "second"] {
        let r = run(&[target], script)?;
        // A line of its own: the shell echoes its input, the test included.
        eprintln!("{round} run");
        expect(&r, 0, &["read-back-same"])?;
    }
    if sha256_of(&image)? != before {
        return Err(format!("the cached image {} changed", image.display()).into());
    }
    Ok(())
}

/// The console lines of a boot, with hello's pid (which depends on how
/// many kernel threads the devices started) masked.
fn command_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            let l = l.trim_end_matches('\r');
            match l.split_once("(pid ") {
                Some((head, _)) => format!("{head}(pid N)"),
                None => l.to_string(),
            }
        })
        .filter(|l| !l.is_empty())
        .collect()
}

fn same_under_qemu() -> Result<(), Failed> {
    let kernel = husk_kernel()?;
    for (target, format) in [
        ("examples/hello", "initramfs"),
        ("examples/busybox", "ext4"),
    ] {
        let husk = run(&[target], b"")?;
        expect(&husk, 0, &[])?;
        let image = built_image(target)?;
        let dir = tempfile::tempdir()?;
        let mut vm = Microvm::new(&kernel.vmlinux());
        vm.memory_mib = 128;
        if format == "ext4" {
            // QEMU writes to its disk; the cached image stays as built.
            let copy = dir.path().join("rootfs.ext4");
            std::fs::copy(&image, &copy)?;
            vm.disks = vec![copy];
            vm.cmdline = "quiet root=/dev/vda rootfstype=ext4 rw init=/.husk/init".into();
        } else {
            vm.initrd = Some(image);
            vm.cmdline = "quiet rdinit=/.husk/init".into();
        }
        let boot = vm.run(dir.path())?;
        let (ours, theirs) = (command_lines(&husk.stdout), command_lines(&boot.console));
        if ours != theirs || boot.exit != Some(0) {
            return Err(format!(
                "{target}: QEMU's console differs from husk run's output\n--- husk:\n{ours:#?}\n--- husk stderr:\n{}\n--- qemu (exit {:?}):\n{theirs:#?}\n--- qemu stderr:\n{}",
                husk.stderr, boot.exit, boot.qemu_stderr
            )
            .into());
        }
        eprintln!(
            "{target}: same output under husk ({:?}) and QEMU ({:?})",
            husk.elapsed, boot.elapsed
        );
    }
    Ok(())
}

/// `husk run` of a guest that prints "ready" and sleeps `secs`, started
/// and waited for until "ready": the husk process and the lines to drain.
fn start_sleeper(cpus: &str, secs: u32) -> Result<(std::process::Child, u32), Failed> {
    start_sleeper_with(cpus, secs, &[])
}

/// [`start_sleeper`] with more of `husk run`'s options.
fn start_sleeper_with(
    cpus: &str,
    secs: u32,
    options: &[&str],
) -> Result<(std::process::Child, u32), Failed> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    std::env::set_current_dir(boot_tests::workspace_root())?;
    let mut child = Command::new(boot_tests::husk::husk_bin()?)
        .args(["run", "--cpus", cpus, "--timeout", "90"])
        .args(options)
        .arg("oci:examples/busybox/image:latest")
        .args(["--", "sh", "-c", &format!("echo ready; sleep {secs}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    if !lines.by_ref().any(|l| l.is_ok_and(|l| l.trim() == "ready")) {
        let _ = child.kill();
        return Err("the guest never printed ready".into());
    }
    std::thread::spawn(move || lines.count());
    let pid = child.id();
    Ok((child, pid))
}

/// Whether process `pid` has a network namespace of its own: not the
/// host's, and with nothing in it but a loopback that is down (an error
/// if it is another namespace with more in it).
fn own_network(pid: u32) -> Result<bool, Failed> {
    let net = std::fs::read_link(format!("/proc/{pid}/ns/net"))?;
    if net == std::fs::read_link("/proc/self/ns/net")? {
        return Ok(false);
    }
    let links = std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "ip", "-o", "link"])
        .output()
        .map_err(|e| format!("nsenter (util-linux) and ip (iproute2) are needed: {e}"))?;
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    let lines: Vec<&str> = links.lines().collect();
    if lines.len() != 1 || !lines[0].contains(": lo: <LOOPBACK>") {
        return Err(format!("the VMM's network namespace is not empty and down: {links:?}").into());
    }
    Ok(true)
}

/// The jailed VMM: the supervisor's child that is husk (passt, for the
/// user-mode network, is another child), or the process itself when husk
/// runs unjailed.
fn vmm_pid(husk: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{husk}/task/{husk}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "husk")
        })
        .unwrap_or(husk)
}

fn status_field(pid: u32, task: Option<&str>, name: &str) -> String {
    let path = match task {
        Some(t) => format!("/proc/{pid}/task/{t}/status"),
        None => format!("/proc/{pid}/status"),
    };
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// While a 2-vCPU guest runs, every thread of the VMM process shows
/// `Seccomp: 2` (filter mode) and `NoNewPrivs: 1`.
fn every_thread_filtered() -> Result<(), Failed> {
    let (mut child, husk) = start_sleeper("2", 3)?;
    let vmm = vmm_pid(husk);
    let mut report = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{vmm}/task"))? {
        let t = task?.file_name().to_string_lossy().into_owned();
        let comm = std::fs::read_to_string(format!("/proc/{vmm}/task/{t}/comm"))?;
        report.push((
            comm.trim().to_string(),
            status_field(vmm, Some(&t), "Seccomp:"),
            status_field(vmm, Some(&t), "NoNewPrivs:"),
        ));
    }
    let status = child.wait()?;
    report.sort();
    eprintln!("VMM threads: {report:?}");
    if !status.success() {
        return Err(format!("the guest did not run as expected ({status})").into());
    }
    let names: Vec<&str> = report.iter().map(|(c, ..)| c.as_str()).collect();
    // The main thread serves the devices' event loop itself: no thread of
    // its own. (KVM adds a task of its own to the process beside them,
    // kvm-nx-lpage-recovery, which the filter check covers too.)
    let ours = ["husk", "vcpu0", "vcpu1"];
    if ours.iter().any(|n| !names.contains(n)) || names.contains(&"vmm") {
        return Err(format!("expected the main thread and two vCPU threads: {report:?}").into());
    }
    if let Some(bad) = report.iter().find(|(_, s, n)| s != "2" || n != "1") {
        return Err(format!("thread {bad:?} is not filtered").into());
    }
    Ok(())
}

/// Run as root, the VMM is jailed: another user, no capabilities, an
/// empty root, a cgroup with its limits; nothing is left after it ends,
/// is SIGKILLed, or its supervisor is SIGKILLed.
fn jail_confines_the_vmm() -> Result<(), Failed> {
    let leftovers = |husk: u32| -> Vec<String> {
        let mut found = Vec::new();
        let jail = format!("{}/{husk}", vmm::jail::JAIL_DIR);
        if std::path::Path::new(&jail).exists() {
            found.push(jail);
        }
        if let Some(c) = vmm::jail::Cgroups::detect() {
            found.extend(
                c.dirs(husk)
                    .into_iter()
                    .filter(|d| d.exists())
                    .map(|d| d.display().to_string()),
            );
        }
        found
    };

    let (mut child, husk) = start_sleeper("1", 2)?;
    let vmm = vmm_pid(husk);
    if vmm == husk {
        return Err("husk ran as root without a jailed child".into());
    }
    let uid = status_field(vmm, None, "Uid:");
    let caps: Vec<String> = ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"]
        .iter()
        .map(|c| status_field(vmm, None, c))
        .collect();
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{vmm}/root"))?.collect();
    let cgroups = vmm::jail::Cgroups::detect().ok_or("no cgroup hierarchy on this host")?;
    let limit = match &cgroups {
        vmm::jail::Cgroups::V2(_) => {
            std::fs::read_to_string(cgroups.dirs(husk)[0].join("memory.max"))?
        }
        vmm::jail::Cgroups::V1 { .. } => {
            std::fs::read_to_string(cgroups.dirs(husk)[0].join("memory.limit_in_bytes"))?
        }
    };
    let procs = std::fs::read_to_string(cgroups.dirs(husk)[0].join("cgroup.procs"))?;
    // Kept from the host's network: by Landlock's scopes in the host's
    // namespace where the kernel has them (what they refuse is the unit
    // test's in vmm::jail::landlock), else by a namespace of its own.
    let fenced = vmm::jail::landlock::can_scope();
    let own_net = own_network(vmm)?;
    let status = child.wait()?;
    eprintln!(
        "jailed VMM: uid {uid}, caps {caps:?}, root entries {}, memory limit {}, \
         network namespace of its own {own_net}, Landlock ABI {}",
        root.len(),
        limit.trim(),
        vmm::jail::landlock::abi()
    );
    if own_net == fenced {
        return Err(match fenced {
            true => "Landlock can scope abstract sockets here, yet the VMM has a network \
                     namespace of its own"
                .into(),
            false => "the VMM is in the host's network namespace, with no Landlock scopes \
                      on this kernel"
                .into(),
        });
    }
    if !uid.split_whitespace().all(|u| u == "65534") {
        return Err(format!("the VMM runs as {uid}").into());
    }
    if caps.iter().any(|c| !c.trim_start_matches('0').is_empty()) {
        return Err(format!("capabilities left: {caps:?}").into());
    }
    if !root.is_empty() {
        return Err("the VMM's root is not empty: host files are visible".into());
    }
    // Default 128 MiB guest + 256 MiB for the VMM.
    if limit.trim() != (384u64 << 20).to_string()
        || !procs.split_whitespace().any(|p| p == vmm.to_string())
    {
        return Err(format!("cgroup limit {} / procs {procs:?}", limit.trim()).into());
    }
    if !status.success() || !leftovers(husk).is_empty() {
        return Err(format!("exit {status}, left behind: {:?}", leftovers(husk)).into());
    }

    // Without seccomp's kill, which Landlock's fence relies on, the VMM
    // gets a network namespace of its own.
    let (mut child, husk) = start_sleeper_with("1", 1, &["--seccomp", "log"])?;
    let own_net = own_network(vmm_pid(husk))?;
    let status = child.wait()?;
    if !own_net || !status.success() || !leftovers(husk).is_empty() {
        return Err(format!(
            "with --seccomp log: a network namespace of its own {own_net}, exit {status}, \
             left behind {:?}",
            leftovers(husk)
        )
        .into());
    }

    // The VMM killed: the supervisor cleans up and says so.
    let (mut child, husk) = start_sleeper("1", 60)?;
    let vmm = vmm_pid(husk);
    std::process::Command::new("kill")
        .args(["-9", &vmm.to_string()])
        .status()?;
    let status = child.wait()?;
    if status.code() != Some(137) || !leftovers(husk).is_empty() {
        return Err(format!(
            "after SIGKILL of the VMM: exit {status}, left {:?}",
            leftovers(husk)
        )
        .into());
    }

    // The supervisor killed: the VMM dies with it; the next run sweeps.
    let (mut child, husk) = start_sleeper("1", 60)?;
    let vmm = vmm_pid(husk);
    child.kill()?;
    child.wait()?;
    // Gone, or a zombie waiting for whoever inherited it to reap it.
    let running = || {
        let state = status_field(vmm, None, "State:");
        !state.is_empty() && !state.starts_with('Z')
    };
    for _ in 0..100 {
        if !running() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if running() {
        return Err("the jailed VMM outlived its supervisor".into());
    }
    let r = run(&["examples/hello"], b"")?;
    expect(&r, 0, &[])?;
    if !leftovers(husk).is_empty() {
        return Err(format!("not swept by the next run: {:?}", leftovers(husk)).into());
    }
    Ok(())
}
