//! `containerd-shim-husk-v2` under Debian's containerd 1.6, driven with
//! `ctr` (runtime `io.containerd.husk.v2`): tasks, execs, a terminal,
//! pods of several containers in one VM (CRI's sandbox annotations, as
//! the CRI plugin sets them), and the end of a pod's VM or of the shim
//! itself by `kill -9`. Each test starts a containerd of its own on the
//! bed's tmpfs and checks that nothing of husk's is left after it: no
//! shim, keeper, VMM or virtiofsd, no folder under /run/husk-shim, no
//! mount, no pod cgroup on the host.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use boot_tests::containerd::Containerd;
use boot_tests::husk::output_within;
use libtest_mimic::{Failed, Trial};

use super::oci::processes_naming;

const RUNTIME: &str = "io.containerd.husk.v2";
const LIMIT: Duration = Duration::from_secs(120);
const IMAGE: &str = boot_tests::containerd::IMAGE;
const STATE_ROOT: &str = "/run/husk-shim";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

pub fn trials() -> Vec<Trial> {
    vec![
        boot_tests::trial(
            "shim_ctr_run_exec_stdin_kill_and_a_terminal",
            tasks_and_execs,
        ),
        boot_tests::trial(
            "shim_pod_containers_share_one_vm_and_localhost",
            pod_of_three,
        ),
        boot_tests::trial("shim_kill_9_of_the_vmm_or_the_shim_leaves_nothing", killed),
        boot_tests::trial("shim_pods_made_and_removed_in_a_loop", pod_cycles),
    ]
}

/// A containerd of the test's own, after checking that no earlier test
/// left anything of the shim's.
fn containerd() -> Result<Containerd, Failed> {
    nothing_left("before the test")?;
    Ok(Containerd::start()?)
}

/// Pod VM folders under /run/husk-shim.
pub(super) fn pod_folders() -> Vec<PathBuf> {
    std::fs::read_dir(STATE_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// The host cgroups the tests' pod VMs get: ctr's `/default/ID`, CRI's
/// `/k8s.io/ID` for a pod without a parent, and `/KUBEPODS/POD/ID` below
/// the pod cgroups the CRI tests name as the kubelet does.
fn pod_cgroups() -> Vec<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    let children = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect()
    };
    let mut all: Vec<PathBuf> = ["default", "k8s.io"]
        .iter()
        .flat_map(|n| children(&root.join(n)))
        .collect();
    for pod in children(&root.join(boot_tests::cri::KUBEPODS)) {
        all.extend(children(&pod));
    }
    all
}

/// The pod's VM is in the host cgroup `path` (a cgroupsPath, under the
/// cgroup v2 mount): the keeper that runs it and every process under it
/// (the jail's supervisor and VMM, virtiofsd), not the shim; its limits
/// are the VM's memory and 256 MiB more, and its vCPUs.
pub(super) fn pod_vm_in_cgroup(path: &str) -> Result<(), Failed> {
    let dir = Path::new(CGROUP_ROOT).join(path.trim_start_matches('/'));
    let procs: Vec<u32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .map_err(|e| format!("the pod's cgroup {}: {e}", dir.display()))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    // The keeper: started by the shim, outside the cgroup; its forks (the
    // jail's supervisor and VMM) carry its command line.
    let keepers: Vec<(u32, Vec<String>)> = procs
        .iter()
        .filter(|p| !procs.contains(&super::detached::parent(**p)))
        .filter_map(|p| {
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
            let args: Vec<String> = String::from_utf8_lossy(&cmdline)
                .split('\0')
                .map(str::to_string)
                .collect();
            args.iter()
                .any(|a| a == "--keep-cgroup")
                .then_some((*p, args))
        })
        .collect();
    let [(keeper, args)] = &keepers[..] else {
        return Err(format!("{}: expected one keeper among {procs:?}", dir.display()).into());
    };
    let want = format!("0::/{}", path.trim_start_matches('/'));
    let tree = super::detached::tree(*keeper);
    let named: Vec<String> = tree
        .iter()
        .map(|p| format!("{p} {}", super::network::comm(*p)))
        .collect();
    super::oci::all_in_cgroup(&tree, &dir)?;
    if !tree.iter().any(|p| super::network::comm(*p) == "virtiofsd") || tree.len() < 4 {
        return Err(format!("the pod's VM {named:?}: expected its VMM and virtiofsd").into());
    }
    for shim in processes_naming("containerd-shim-husk-v2 -namespace") {
        let pid = shim.split(':').next().unwrap_or_default();
        let at = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if at.trim() == want {
            return Err(format!("the shim {shim} is in the pod's cgroup {want}").into());
        }
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_default()
    };
    let memory_mib: u64 = value("--memory")
        .trim_end_matches("MiB")
        .parse()
        .map_err(|_| format!("the keeper's --memory in {args:?}"))?;
    let cpus: u64 = value("--cpus")
        .parse()
        .map_err(|_| format!("the keeper's --cpus in {args:?}"))?;
    super::oci::vm_limits(&dir, memory_mib, cpus)
}

/// Nothing of the shim's on the host: processes, folders, mounts, pod
/// cgroups.
pub(super) fn nothing_left(when: &str) -> Result<(), Failed> {
    // What ends asynchronously (a keeper, its VM) gets a moment.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let procs: Vec<String> = ["containerd-shim-husk-v2", "husk-shim", "virtiofsd"]
            .iter()
            .flat_map(|w| processes_naming(w))
            .collect();
        let folders = pod_folders();
        let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")?
            .lines()
            .filter(|l| l.contains(STATE_ROOT))
            .map(str::to_string)
            .collect();
        let cgroups = pod_cgroups();
        if procs.is_empty() && folders.is_empty() && mounts.is_empty() && cgroups.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{when}: left behind: processes {procs:?}, folders {folders:?}, mounts {mounts:?}, \
                 cgroups {cgroups:?}"
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Exit statuses, output, execs (status, output, stdin), a kill's
/// status, and a terminal.
fn tasks_and_execs() -> Result<(), Failed> {
    let c = containerd()?;
    c.expect(
        c.run(
            RUNTIME,
            &["--rm"],
            "t1",
            &["sh", "-c", "echo hi from the shim; exit 3"],
        ),
        3,
        "hi from the shim",
        "ctr run --rm",
    )?;
    // The container's own root, with /proc, /sys and /dev in it.
    c.expect(
        c.run(
            RUNTIME,
            &["--rm"],
            "t2",
            &[
                "sh",
                "-c",
                "test -d /proc/self && test -c /dev/null && ls /bin/busybox",
            ],
        ),
        0,
        "/bin/busybox",
        "the container's root",
    )?;

    c.ok(
        c.run(
            RUNTIME,
            &["-d", "--memory-limit", "100663296"],
            "t3",
            &["sleep", "1000"],
        ),
        "ctr run -d",
    )?;
    c.wait_status("t3", "RUNNING")?;
    // The container's cgroup in the guest, as containerd's cgroup v2
    // metrics: its limit from the spec, what it uses.
    let r = c.ok(
        c.ctr(&["task", "metrics", "--format", "json", "t3"]),
        "ctr task metrics",
    )?;
    let m: serde_json::Value = serde_json::from_str(&r.stdout)
        .map_err(|e| c.explain(&r, &format!("ctr task metrics: not JSON ({e})")))?;
    let field = |path: &[&str]| {
        path.iter()
            .try_fold(&m, |v, k| v.get(k))
            .and_then(|v| v.as_u64())
    };
    if field(&["memory", "usage_limit"]) != Some(100_663_296)
        || field(&["memory", "usage"]).unwrap_or(0) == 0
        || field(&["pids", "current"]).unwrap_or(0) == 0
    {
        return Err(c
            .explain(
                &r,
                "ctr task metrics: expected a 96 MiB limit, memory and a process",
            )
            .into());
    }
    // On the host, the whole VM is in the cgroup the spec names (ctr's
    // `/NAMESPACE/ID`), as runc's container would be.
    pod_vm_in_cgroup("/default/t3")?;
    c.expect(
        c.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            "t3",
            "sh",
            "-c",
            "echo exec here; exit 4",
        ]),
        4,
        "exec here",
        "ctr task exec",
    )?;
    let mut with_stdin = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e2",
        "t3",
        "sh",
        "-c",
        "read x; echo got $x",
    ]);
    with_stdin.stdin(std::process::Stdio::piped());
    let r = output_within(with_stdin, b"hello-stdin\n", LIMIT)?;
    if r.code != Some(0) || !r.stdout.contains("got hello-stdin") {
        return Err(c.explain(&r, "ctr task exec with stdin").into());
    }
    // Its own PID namespace, as under runc: sleep is PID 1 there, and
    // an exec sees nothing of the guest's (husk's init, the agent).
    let r = c.ok(
        c.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e3",
            "t3",
            "sh",
            "-c",
            "echo 1=$(cat /proc/1/comm); cat /proc/[0-9]*/comm | sort -u | tr '\\n' ' '",
        ]),
        "ctr task exec in the container's PID namespace",
    )?;
    let seen: Vec<&str> = r
        .stdout
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    if !r.stdout.starts_with("1=sleep\n")
        || seen
            .iter()
            .any(|p| !["sleep", "sh", "cat", "sort", "tr"].contains(p))
    {
        return Err(c
            .explain(
                &r,
                "expected sleep as PID 1 and only the container's processes",
            )
            .into());
    }
    // SIGTERM to a PID 1 without a handler does nothing (the kernel's
    // rule for a namespace's init, which runc's containers follow too);
    // SIGKILL ends it.
    c.ok(c.ctr(&["task", "kill", "t3"]), "ctr task kill")?;
    std::thread::sleep(Duration::from_secs(2));
    if c.status("t3")? != "RUNNING" {
        return Err("sleep as its PID namespace's init ended by SIGTERM".into());
    }
    c.ok(
        c.ctr(&["task", "kill", "-s", "SIGKILL", "t3"]),
        "ctr task kill -s SIGKILL",
    )?;
    c.wait_status("t3", "STOPPED")?;
    let r = c.ok(c.ctr(&["task", "delete", "t3"]), "ctr task delete")?;
    // 128 + 9, as runc's shim reports it.
    if !r.stderr.contains("137") && !r.stdout.contains("137") {
        return Err(c
            .explain(&r, "ctr task delete: expected exit status 137")
            .into());
    }
    c.ok(c.ctr(&["containers", "rm", "t3"]), "ctr containers rm")?;
    paused(&c)?;
    log_uris(&c)?;

    // A terminal: ctr -t needs one of its own, from script(1).
    let line = format!(
        "ctr --address {} run --snapshotter native --runtime {RUNTIME} -t --rm {IMAGE} t4 sh -c 'tty; exit 5'",
        c.socket.display()
    );
    let mut script = Command::new("script");
    script.args(["-qec", &line, "/dev/null"]);
    c.expect(script, 5, "/dev/pts/", "ctr run -t")?;
    drop(c);
    nothing_left("after the tasks")
}

/// `ctr run --log-uri`: a logging binary gets the output on fd 3, the
/// error output on fd 4, its query as arguments and the container's id
/// and namespace; a `file://` log gets both outputs; a logging binary that
/// is not there refuses the task before a VM boots.
fn log_uris(c: &Containerd) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let logger = dir.path().join("logger");
    std::fs::write(
        &logger,
        "#!/bin/sh
         dir=\"$2\"
         echo \"$1 $CONTAINER_ID $CONTAINER_NAMESPACE\" > \"$dir/who\"
         exec 5>&-
         /bin/cat <&3 > \"$dir/out\" &
         /bin/cat <&4 > \"$dir/err\"
         wait
",
    )?;
    std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let uri = format!("binary://{}?dir={}", logger.display(), dir.path().display());
    let r = output_within(
        c.run(
            RUNTIME,
            &["--rm", "--log-uri", &uri],
            "t6",
            &[
                "sh",
                "-c",
                "echo to the logger; echo also its errors >&2; exit 2",
            ],
        ),
        b"",
        LIMIT,
    )?;
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    if r.code != Some(2)
        || read("out") != "to the logger\n"
        || read("err") != "also its errors\n"
        || read("who") != "dir t6 default\n"
    {
        return Err(c
            .explain(
                &r,
                &format!(
                    "ctr run --log-uri binary://: expected status 2, the outputs in the \
                     logger's files and its arguments and variables; got out {:?}, err {:?}, \
                     who {:?}",
                    read("out"),
                    read("err"),
                    read("who")
                ),
            )
            .into());
    }

    let file = dir.path().join("logs/t7.log");
    let r = output_within(
        c.run(
            RUNTIME,
            &["--rm", "--log-uri", &format!("file://{}", file.display())],
            "t7",
            &["sh", "-c", "echo into the file; echo and this >&2"],
        ),
        b"",
        LIMIT,
    )?;
    let logged = std::fs::read_to_string(&file).unwrap_or_default();
    if r.code != Some(0) || !logged.contains("into the file\n") || !logged.contains("and this\n") {
        return Err(c
            .explain(&r, &format!("ctr run --log-uri file://: got {logged:?}"))
            .into());
    }

    let missing = dir.path().join("no-such-logger");
    let r = output_within(
        c.run(
            RUNTIME,
            &[
                "--rm",
                "--log-uri",
                &format!("binary://{}", missing.display()),
            ],
            "t8",
            &["true"],
        ),
        b"",
        LIMIT,
    )?;
    if r.code == Some(0) || !r.stderr.contains("logging binary") {
        return Err(c
            .explain(
                &r,
                "ctr run --log-uri with no such binary: expected its error",
            )
            .into());
    }
    // ctr --rm removed the container itself.
    nothing_left("after the refused log URI")?;
    Ok(())
}

/// `ctr task pause` freezes the container's processes (its cgroup in the
/// guest) until `resume`; an exec into a paused container is refused, and
/// SIGKILL ends a paused one.
fn paused(c: &Containerd) -> Result<(), Failed> {
    // The longest gap, in seconds, between two turns of a loop that turns
    // five times a second.
    let looping = "prev=$(date +%s); gap=0; while true; do now=$(date +%s); \
                   if [ $((now - prev)) -gt $gap ]; then gap=$((now - prev)); echo $gap > /gap; fi; \
                   prev=$now; sleep 0.2; done";
    c.ok(
        c.run(RUNTIME, &["-d"], "t5", &["sh", "-c", looping]),
        "ctr run -d",
    )?;
    c.wait_status("t5", "RUNNING")?;
    c.ok(c.ctr(&["task", "pause", "t5"]), "ctr task pause")?;
    c.wait_status("t5", "PAUSED")?;
    let exec = |id: &str, script: &str| {
        c.ctr(&["task", "exec", "--exec-id", id, "t5", "sh", "-c", script])
    };
    let refused = output_within(exec("p1", "true"), b"", LIMIT)?;
    if refused.code == Some(0) || !refused.stderr.contains("paused") {
        return Err(c
            .explain(&refused, "an exec into a paused container")
            .into());
    }
    std::thread::sleep(Duration::from_secs(5));
    c.ok(c.ctr(&["task", "resume", "t5"]), "ctr task resume")?;
    c.wait_status("t5", "RUNNING")?;
    std::thread::sleep(Duration::from_secs(1));
    let gap = c.ok(exec("p2", "cat /gap"), "ctr task exec after resume")?;
    let seconds: u64 = gap.stdout.trim().parse().unwrap_or(0);
    if seconds < 4 {
        return Err(c
            .explain(
                &gap,
                "the loop should have stood still for the 5 s it was paused",
            )
            .into());
    }
    c.ok(c.ctr(&["task", "pause", "t5"]), "ctr task pause")?;
    c.ok(
        c.ctr(&["task", "kill", "-s", "SIGKILL", "t5"]),
        "ctr task kill -s SIGKILL of a paused task",
    )?;
    c.wait_status("t5", "STOPPED")?;
    c.ok(c.ctr(&["task", "delete", "t5"]), "ctr task delete")?;
    c.ok(c.ctr(&["containers", "rm", "t5"]), "ctr containers rm")?;
    Ok(())
}

/// A pod as CRI makes one: a sandbox container, then containers naming it
/// (annotations), in one shim and one VM; they reach each other on
/// localhost, each with its own root.
fn pod_of_three() -> Result<(), Failed> {
    let c = containerd()?;
    let pod = |kind: &str| -> Vec<String> {
        vec![
            "--annotation".into(),
            format!("io.kubernetes.cri.container-type={kind}"),
            "--annotation".into(),
            "io.kubernetes.cri.sandbox-id=pod1".into(),
        ]
    };
    let sandbox = pod("sandbox");
    let member = pod("container");
    let sb: Vec<&str> = sandbox.iter().map(String::as_str).collect();
    let mb: Vec<&str> = member.iter().map(String::as_str).collect();
    let mut extra = vec!["-d"];
    extra.extend(&sb);
    c.ok(
        c.run(RUNTIME, &extra, "pod1", &["sleep", "100000"]),
        "the sandbox",
    )?;
    let mut extra = vec!["-d"];
    extra.extend(&mb);
    c.ok(
        c.run(
            RUNTIME,
            &extra,
            "web",
            &[
                "sh",
                "-c",
                "mkdir -p /www && echo pod-page > /www/index.html && exec httpd -f -p 8080 -h /www",
            ],
        ),
        "the web container",
    )?;
    let folders = pod_folders();
    if folders.len() != 1 {
        return Err(
            format!("two containers of a pod: expected one VM folder, found {folders:?}").into(),
        );
    }
    let shims = processes_naming("containerd-shim-husk-v2 -namespace");
    if shims.len() != 1 {
        return Err(format!("two containers of a pod: expected one shim, found {shims:?}").into());
    }
    // The pod's VM is in its sandbox's cgroup; a member container makes
    // none of its own on the host (its cgroup is in the guest).
    pod_vm_in_cgroup("/default/pod1")?;
    if Path::new(CGROUP_ROOT).join("default/web").exists() {
        return Err("a pod's member container got a host cgroup of its own".into());
    }
    let mut extra = vec!["--rm"];
    extra.extend(&mb);
    c.expect(
        c.run(
            RUNTIME,
            &extra,
            "client",
            &[
                "sh",
                "-c",
                "test ! -e /www || exit 9; ! grep -qs httpd /proc/[0-9]*/comm || exit 8; \
                 for i in $(seq 1 100); do wget -qO- http://127.0.0.1:8080/ && exit 0; sleep 0.2; done; exit 1",
            ],
        ),
        0,
        "pod-page",
        "a container reaching its pod's web server on localhost, not seeing its processes",
    )?;
    // A container sharing the pod's processes (a path to the sandbox's
    // PID namespace, as CRI's shareProcessNamespace gives): the sandbox's
    // sleep is its PID 1 (the web container, in one of its own, is not
    // in view).
    let keeper = c
        .ok(c.ctr(&["task", "ls"]), "ctr task ls")?
        .stdout
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&"pod1")).then(|| f.get(1).map(|p| p.to_string()))?
        })
        .ok_or("no pid for the sandbox in ctr task ls")?;
    let with_ns = format!("pid:/proc/{keeper}/ns/pid");
    let mut extra = vec!["--rm", "--with-ns", &with_ns];
    extra.extend(&mb);
    c.expect(
        c.run(
            RUNTIME,
            &extra,
            "peer",
            &[
                "sh",
                "-c",
                "echo 1=$(cat /proc/1/comm); ! grep -qs httpd /proc/[0-9]*/comm",
            ],
        ),
        0,
        "1=sleep",
        "a container in the pod's PID namespace",
    )?;
    c.remove("web")?;
    c.remove("pod1")?;
    drop(c);
    nothing_left("after the pod")
}

/// `kill -9` of a pod's VMM: containerd sees the task end (255); of the
/// shim, after its pod's VM booted or while it boots: containerd cleans up
/// through `containerd-shim-husk-v2 delete`. Nothing is left either way.
fn killed() -> Result<(), Failed> {
    let c = containerd()?;
    c.ok(
        c.run(RUNTIME, &["-d"], "k1", &["sleep", "100000"]),
        "ctr run -d",
    )?;
    c.wait_status("k1", "RUNNING")?;
    // The VMM: the jailed VM process (runs as nobody) of the one pod.
    let vmm = vmm_pids();
    if vmm.is_empty() {
        return Err("no VMM process found for the pod".into());
    }
    for pid in &vmm {
        // SAFETY: kill(2) with a pid just read; it touches no memory.
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
    }
    c.wait_status("k1", "STOPPED")?;
    c.remove("k1")?;
    nothing_left("after kill -9 of the VMM")?;

    c.ok(
        c.run(RUNTIME, &["-d"], "k2", &["sleep", "100000"]),
        "ctr run -d",
    )?;
    c.wait_status("k2", "RUNNING")?;
    kill_the_shim()?;
    forgotten(&c, "k2")?;
    nothing_left("after kill -9 of the shim")?;

    // The shim killed while its pod's VM still boots (cold, so the boot
    // takes long enough to be caught in it): containerd's `shim delete`
    // finds the pod's record in the bundle and removes the VM, its folder
    // and its cgroup. A fast boot can end before the kill lands (then it
    // is the case above again, cleaned up as such): tried up to 3 times,
    // and it must land during the boot once.
    let mut attempt = 1;
    loop {
        let id = format!("k3-{attempt}");
        let during = kill_the_shim_while_it_boots(&c, &id)?;
        forgotten(&c, &id)?;
        match during {
            Ok(()) => break,
            Err(why) if attempt == 3 => return Err(why.into()),
            Err(why) => eprintln!("attempt {attempt}: {why}; again"),
        }
        nothing_left("after kill -9 of the shim just after its pod's VM booted")?;
        attempt += 1;
    }
    drop(c);
    nothing_left("after kill -9 of the shim while its pod's VM booted")
}

/// Starts container `id` cold and kills its shim as soon as its pod's
/// keeper shows; `Err` (inside) where the kill came after the boot.
fn kill_the_shim_while_it_boots(c: &Containerd, id: &str) -> Result<Result<(), String>, Failed> {
    let mut run = c.run(
        RUNTIME,
        &["-d", "--annotation", "io.husk.vm.cold=true"],
        id,
        &["sleep", "100000"],
    );
    let mut ctr = run
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let spawned = Instant::now();
    let deadline = spawned + Duration::from_secs(60);
    let keeper = loop {
        if let Some(k) = processes_naming("--hold").first() {
            break k.clone();
        }
        if Instant::now() > deadline || ctr.try_wait()?.is_some() {
            let _ = ctr.kill();
            let _ = ctr.wait();
            return Err("the pod's keeper never showed while ctr run -d was running".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let showed = spawned.elapsed();
    // The shim is the keeper's parent. Looked for among all processes, it
    // was found two seconds late: reading a booting VM's command line
    // waits on that VM's memory map, and the boot was over.
    let shim = keeper
        .split(':')
        .next()
        .and_then(|pid| pid.parse().ok())
        .map(super::detached::parent);
    let is_shim = |pid: u32| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            String::from_utf8_lossy(&c).contains("containerd-shim-husk-v2\0-namespace")
        })
    };
    match shim {
        Some(pid) if is_shim(pid) => {
            // SAFETY: kill(2) with a pid just read; it touches no memory.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        _ => {
            let _ = ctr.kill();
            let _ = ctr.wait();
            return Err(format!("the keeper's parent is not the shim ({keeper}: {shim:?})").into());
        }
    }
    let killed = spawned.elapsed();
    let booted = c.status(id)? == "RUNNING";
    let status = ctr.wait()?;
    if booted || status.success() {
        return Ok(Err(format!(
            "the shim was killed after the boot, not during it (keeper {keeper}; ctr run \
             {status}; the keeper showed {:.3} s after ctr run started, the shim was killed \
             at {:.3} s)",
            showed.as_secs_f64(),
            killed.as_secs_f64()
        )));
    }
    Ok(Ok(()))
}

/// `kill -9` of the one shim running.
fn kill_the_shim() -> Result<(), Failed> {
    let shims: Vec<u32> = processes_naming("containerd-shim-husk-v2 -namespace")
        .iter()
        .filter_map(|l| l.split(':').next()?.parse().ok())
        .collect();
    let [shim] = shims[..] else {
        return Err(format!("expected one shim, found {shims:?}").into());
    };
    // SAFETY: kill(2) with a pid just read; it touches no memory.
    unsafe { libc::kill(shim as libc::pid_t, libc::SIGKILL) };
    Ok(())
}

/// containerd notices that the shim of container `id` is gone, cleans up
/// and forgets its task (within 60 s); then the container is removed.
fn forgotten(c: &Containerd, id: &str) -> Result<(), Failed> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c.status(id)?.is_empty() {
        if Instant::now() > deadline {
            return Err("containerd still lists the task 60 s after its shim was killed".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = output_within(c.ctr(&["containers", "rm", id]), b"", LIMIT)?;
    Ok(())
}

/// The pid of every process running as nobody whose command line names
/// the pod root: the jailed VMMs.
pub(super) fn vmm_pids() -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    processes_naming(STATE_ROOT)
        .iter()
        .filter_map(|l| l.split(':').next()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}"))
                .map(|m| m.uid() == 65534)
                .unwrap_or(false)
        })
        .collect()
}

/// Pods made and removed one after another (`HUSK_SHIM_PODS`, 50 by
/// default): each leaves nothing. They warm-start: the first pod's VM is
/// snapshotted at init's snapshot point (its root folder shared but not
/// yet mounted), and every later pod's VM restores that snapshot; a last,
/// detached pod shows in its VM's log that it was restored, and runs a
/// `ctr task exec` in its container.
fn pod_cycles() -> Result<(), Failed> {
    let n: usize = std::env::var("HUSK_SHIM_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    nothing_left("before the test")?;
    let snaps = tempfile::Builder::new()
        .prefix("husk-test-snapshots-")
        .tempdir_in("/tmp")?;
    let c = Containerd::start_with_env(&[
        ("HUSK_SNAPSHOT_DIR", snaps.path().as_os_str()),
        ("HUSK_LOG", std::ffi::OsStr::new("info")),
    ])?;
    let taken = |when: &str| -> Result<std::time::SystemTime, Failed> {
        let dirs: Vec<PathBuf> = std::fs::read_dir(snaps.path())?
            .flatten()
            .map(|e| e.path())
            .collect();
        match &dirs[..] {
            [one] => Ok(std::fs::metadata(one.join("state.json"))?.modified()?),
            _ => Err(format!("{when}: one snapshot expected, found {dirs:?}").into()),
        }
    };
    let mut first = None;
    for i in 0..n {
        let id = format!("cycle{i}");
        c.expect(
            c.run(RUNTIME, &["--rm"], &id, &["sh", "-c", "echo cycle; exit 0"]),
            0,
            "cycle",
            &format!("pod {i}"),
        )?;
        nothing_left(&format!("after pod {i}"))?;
        // Taken once, by the first pod; never taken again (a restore that
        // failed would boot cold and take it anew).
        let at = taken(&format!("after pod {i}"))?;
        if *first.get_or_insert(at) != at {
            return Err(format!("pod {i} took the snapshot again").into());
        }
    }
    c.ok(
        c.run(RUNTIME, &["-d"], "restored", &["sleep", "600"]),
        "ctr run -d",
    )?;
    c.wait_status("restored", "RUNNING")?;
    let logs: String = pod_folders()
        .iter()
        .map(|d| std::fs::read_to_string(d.join("console.log")).unwrap_or_default())
        .collect();
    if !logs.contains("warm start: restoring") {
        return Err(format!("the pod's VM was not restored; its log:\n{logs}").into());
    }
    c.expect(
        c.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            "restored",
            "sh",
            "-c",
            "test -x /bin/busybox && echo in-its-root",
        ]),
        0,
        "in-its-root",
        "ctr task exec in a restored pod",
    )?;
    c.remove("restored")?;
    drop(c);
    nothing_left(&format!("after {n} pods and a restored one"))
}
