//! Kubernetes' way in: containerd 1.6's CRI plugin with husk as the runtime
//! handler `husk` (what a RuntimeClass with `handler: husk` selects),
//! driven as the kubelet drives it (`boot_tests::cri`, the calls `crictl`
//! makes). Pods get their network from CNI (`ptp`), as on a node. Each
//! test starts a containerd of its own and checks that nothing is left
//! after it: none of husk's processes, folders or mounts, no network
//! namespace, host veth or address lease.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use boot_tests::containerd::{Containerd, IMAGE, POD_SUBNET};
use boot_tests::cri::{
    container_config, log_text, pod_config, ContainerState, Cri, LinuxContainerResources,
    NamespaceMode,
};
use boot_tests::husk::output_within;
use libtest_mimic::{Failed, Trial};

use super::shim::{nothing_left, vmm_pids};

const HANDLER: &str = "husk";
const LIMIT: Duration = Duration::from_secs(120);

pub fn trials() -> Vec<Trial> {
    vec![
        boot_tests::trial(
            "cri_pod_of_containers_on_localhost_in_one_restored_vm_with_its_cni_network",
            || with_containerd(Start::Warm, pod_of_containers),
        ),
        boot_tests::trial("cri_bad_requests_and_a_killed_vmm_leave_nothing", || {
            with_containerd(Start::Cold, failures)
        }),
    ]
}

/// How the test's pod VMs start: cold (the bed's cache is read-only), or
/// warm, with a snapshot folder of the test's own.
#[derive(Clone, Copy, PartialEq)]
enum Start {
    Cold,
    Warm,
}

/// Runs `test` on a containerd of its own set up for CRI; a failure
/// carries the end of containerd's log (the shim's lines are in it).
fn with_containerd(
    start: Start,
    test: fn(&Containerd, &Cri, &Path) -> Result<(), Failed>,
) -> Result<(), Failed> {
    nothing_left("before the test")?;
    let snaps = tempfile::Builder::new()
        .prefix("husk-test-snapshots-")
        .tempdir_in("/tmp")?;
    let warm = [
        ("HUSK_SNAPSHOT_DIR", snaps.path().as_os_str()),
        ("HUSK_LOG", std::ffi::OsStr::new("info")),
    ];
    let c = Containerd::start_cri_with_env(if start == Start::Warm { &warm } else { &[] })?;
    let before = network_state(&c);
    if before != Default::default() {
        return Err(format!("network state before the test: {before:?}").into());
    }
    let (cri, logs) = connect(&c).map_err(|e| c.with_log(&e))?;
    let tested = test(&c, &cri, &logs).map_err(|e| {
        let text = e.message().map(str::to_string).unwrap_or_default();
        let text = c.with_log(&text);
        // What the failed test left goes, so that the next test starts
        // clean (its own check would fail otherwise).
        for pod in cri.pods().unwrap_or_default() {
            let _ = cri.stop_pod(&pod);
            let _ = cri.remove_pod(&pod);
        }
        Failed::from(text)
    });
    // The pods' cgroups go, as the kubelet removes them.
    let removed = boot_tests::cri::remove_pod_cgroups();
    tested?;
    Ok(removed?)
}

/// What a pod leaves on the host besides husk's own: CNI's network
/// namespaces, host ends of veth pairs, address leases.
fn network_state(c: &Containerd) -> (Vec<String>, Vec<String>, Vec<String>) {
    let names = |dir: &Path, keep: &dyn Fn(&str) -> bool| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| keep(n))
            .collect();
        v.sort();
        v
    };
    (
        names(Path::new("/run/netns"), &|n| n.starts_with("cni-")),
        names(Path::new("/sys/class/net"), &|n| n.starts_with("veth")),
        // host-local keeps a file named by each address it gave out.
        names(&c.dir.path().join("ipam/husk-test"), &|n| {
            n.starts_with(POD_SUBNET.trim_end_matches("0/24"))
        }),
    )
}

/// The CRI client, once CRI answers and sees the imported images, and a
/// folder for pods' logs.
fn connect(c: &Containerd) -> Result<(Cri, PathBuf), String> {
    let cri = Cri::connect(&c.socket)?;
    let v = cri.version()?;
    if v.runtime_name != "containerd" {
        return Err(format!(
            "CRI says it is {:?}, not containerd",
            v.runtime_name
        ));
    }
    for image in [IMAGE, boot_tests::containerd::PAUSE_IMAGE] {
        if !cri.has_image(image)? {
            return Err(format!("CRI does not see the imported {image}"));
        }
    }
    let logs = c.dir.path().join("pods");
    std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
    Ok((cri, logs))
}

/// After the pods are gone: nothing of husk's, and the pod network undone.
fn all_gone(c: &Containerd, cri: &Cri, when: &str) -> Result<(), Failed> {
    let pods = cri.pods()?;
    if !pods.is_empty() {
        return Err(format!("{when}: CRI still lists pods {pods:?}").into());
    }
    nothing_left(when)?;
    let (netns, veths, leases) = network_state(c);
    if !(netns.is_empty() && veths.is_empty() && leases.is_empty()) {
        return Err(format!(
            "{when}: network left: namespaces {netns:?}, veths {veths:?}, leases {leases:?}"
        )
        .into());
    }
    Ok(())
}

/// A pod (the sandbox boots its VM; `io.husk.vm.memory` sizes it) with a
/// web server, a client that reaches it on localhost, and a container
/// that fails; its CNI address served from the host; exec, logs, exit
/// statuses; stop and removal leave nothing. Its VM is restored from the
/// snapshot a first pod of the same shape took (on a tap in another
/// network namespace, with another address).
fn pod_of_containers(c: &Containerd, cri: &Cri, logs: &Path) -> Result<(), Failed> {
    let pod_logs = logs.join("web");
    std::fs::create_dir_all(&pod_logs)?;
    let annotations = [("io.husk.vm.memory", "256MiB")];
    let first = pod_config("first", &pod_logs, NamespaceMode::Pod, &annotations);
    let taker = cri.run_pod(&first, HANDLER)?;
    cri.stop_pod(&taker)?;
    cri.remove_pod(&taker)?;
    let pc = pod_config("web", &pod_logs, NamespaceMode::Pod, &annotations);
    let pod = cri.run_pod(&pc, HANDLER)?;
    let vm_logs: String = super::shim::pod_folders()
        .iter()
        .map(|d| std::fs::read_to_string(d.join("console.log")).unwrap_or_default())
        .collect();
    if !vm_logs.contains("warm start: restoring") {
        return Err(format!("the pod's VM was not restored; its log:\n{vm_logs}").into());
    }
    let status = cri.pod_status(&pod)?;
    let ip = status
        .network
        .as_ref()
        .map(|n| n.ip.clone())
        .unwrap_or_default();
    if status.state != boot_tests::cri::PodSandboxState::SandboxReady as i32
        || !ip.starts_with(POD_SUBNET.trim_end_matches("0/24"))
    {
        return Err(format!("pod not ready with an address in {POD_SUBNET}: {status:?}").into());
    }
    let shims = super::oci::processes_naming("containerd-shim-husk-v2 -namespace k8s.io");
    if shims.len() != 1 {
        return Err(format!("expected one shim for the pod, found {shims:?}").into());
    }
    // The pod's VM is in its sandbox's cgroup on the host, below the pod
    // cgroup the kubelet named.
    super::shim::pod_vm_in_cgroup(&format!("{}/{pod}", boot_tests::cri::pod_cgroup("web")))?;

    let mut web_config = container_config(
        "web",
        IMAGE,
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo hello from the pod > /www/index.html \
             && echo serving && exec httpd -f -p 8080 -h /www",
        ],
    );
    // Limits, as the kubelet sets them from the pod spec: the
    // container's cgroup in the guest holds them.
    if let Some(linux) = web_config.linux.as_mut() {
        linux.resources = Some(LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            ..Default::default()
        });
    }
    let web = cri.create(&pod, &web_config, &pc)?;
    cri.start(&web)?;
    cri.wait_state(&web, ContainerState::ContainerRunning, LIMIT)?;

    let client = cri.create(
        &pod,
        &container_config(
            "client",
            IMAGE,
            &[
                "sh",
                "-c",
                "test ! -e /www || echo sees the files of the web container; \
                 ! grep -qs httpd /proc/[0-9]*/comm || echo sees the processes of the web container; \
                 [ $(cat /proc/1/comm) = sh ] || echo sees the PID 1 of another; \
                 for i in $(seq 100); do \
                 wget -q -O - http://127.0.0.1:8080/ && exit 0; sleep 0.2; done; exit 1",
            ],
        ),
        &pc,
    )?;
    cri.start(&client)?;
    let done = cri.wait_state(&client, ContainerState::ContainerExited, LIMIT)?;
    let said = log_text(&pod_logs.join("client.log"))?;
    if done.exit_code != 0 || !said.contains("hello from the pod") || said.contains("sees the") {
        return Err(format!(
            "the client ended with {} and wrote {said:?}: expected status 0 and the page, \
             from its own root and PID namespace",
            done.exit_code
        )
        .into());
    }
    // One VM for the pod: one jailed VMM.
    let vmms = vmm_pids();
    if vmms.len() != 1 {
        return Err(format!("expected one VMM for the pod, found {vmms:?}").into());
    }

    // The pod's address (CNI's, in its network namespace) reaches the
    // server in the VM: the namespace's interface is the guest's.
    let mut curl = Command::new("curl");
    curl.args(["-s", "--max-time", "20", &format!("http://{ip}:8080/")]);
    let page = output_within(curl, b"", LIMIT)?;
    if !page.stdout.contains("hello from the pod") {
        return Err(page
            .explain(&format!("curl of the pod's address {ip}"))
            .into());
    }

    let (out, err, code) = cri.exec_sync(
        &web,
        &[
            "sh",
            "-c",
            "cat /www/index.html; echo to stderr >&2; exit 3",
        ],
        30,
    )?;
    if code != 3 || !out.contains("hello from the pod") || err.trim() != "to stderr" {
        return Err(format!("exec: status {code}, stdout {out:?}, stderr {err:?}").into());
    }
    // `crictl exec -it`: a terminal, its size from the client, the status.
    let url = cri.exec(&web, &["sh"], true)?;
    let mut session = boot_tests::cri::ExecStream::open(&url)?;
    session.resize(100, 33)?;
    session.stdin(
        b"for i in $(seq 100); do [ \"$(stty size)\" = '33 100' ] && break; sleep 0.1; done; \
          tty; stty size; exit 5\n",
    )?;
    let (seen, code) = session.finish()?;
    let lines: Vec<&str> = seen.lines().map(str::trim).collect();
    if code != 5 || !lines.contains(&"33 100") || !lines.iter().any(|l| l.starts_with("/dev/pts/"))
    {
        return Err(format!("exec -it: status {code}, terminal showed {seen:?}").into());
    }
    cgroup_limits_stats_and_update(cri, &web)?;
    // The pod annotation sized the VM.
    let (meminfo, _, _) = cri.exec_sync(&web, &["grep", "MemTotal", "/proc/meminfo"], 30)?;
    let kib: u64 = meminfo
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("MemTotal from {meminfo:?}"))?;
    if !(128 * 1024..=256 * 1024).contains(&kib) {
        return Err(format!("the VM of a 256 MiB pod has MemTotal {kib} kB").into());
    }

    // This one shares the pod's processes (shareProcessNamespace: CRI's
    // POD mode): the sandbox's process is its PID 1.
    let mut failing_config = container_config(
        "failing",
        IMAGE,
        &[
            "sh",
            "-c",
            "echo failing; echo pid 1 is $(cat /proc/1/comm); exit 3",
        ],
    );
    if let Some(ns) = failing_config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|c| c.namespace_options.as_mut())
    {
        ns.pid = NamespaceMode::Pod as i32;
    }
    let failing = cri.create(&pod, &failing_config, &pc)?;
    cri.start(&failing)?;
    let failed = cri.wait_state(&failing, ContainerState::ContainerExited, LIMIT)?;
    let said = log_text(&pod_logs.join("failing.log"))?;
    if failed.exit_code != 3 || !said.contains("failing") || !said.contains("pid 1 is sleep") {
        return Err(format!(
            "the failing container, in the pod's PID namespace: {failed:?}, wrote {said:?}"
        )
        .into());
    }

    if !log_text(&pod_logs.join("web.log"))?.contains("serving") {
        return Err("the web container's log lacks its output".into());
    }
    cri.stop(&web, 10)?;
    let stopped = cri.wait_state(&web, ContainerState::ContainerExited, LIMIT)?;
    if stopped.exit_code == 0 {
        return Err(format!("httpd stopped by SIGTERM ended with 0: {stopped:?}").into());
    }
    for id in [&web, &client, &failing] {
        cri.remove(id)?;
    }
    cri.stop_pod(&pod)?;
    cri.remove_pod(&pod)?;
    all_gone(c, cri, "after the pod")
}

/// The web container's cgroup in the guest: its execs join it, its
/// memory limit (32 MiB) ends a process that goes past it (OOM-killed:
/// 137) while the server goes on, `UpdateContainerResources` raises the
/// limit so the same process fits, and `ContainerStats` gives the
/// container's CPU time and memory, as the kubelet reads them. The sizes
/// are small: each page a process first touches is a nested page fault,
/// slow under the bed's emulation (with 112 MiB past a 96 MiB limit the
/// container had used 42 s of CPU by the stats check).
fn cgroup_limits_stats_and_update(cri: &Cri, web: &str) -> Result<(), Failed> {
    let (cgroup, _, code) = cri.exec_sync(web, &["cat", "/proc/self/cgroup"], 30)?;
    if code != 0 || !cgroup.trim().starts_with("0::/container-") {
        return Err(format!("an exec's cgroup: {cgroup:?} (status {code})").into());
    }
    // 48 MiB touched at once by dd's buffer.
    let big = ["dd", "if=/dev/zero", "of=/dev/null", "bs=48M", "count=1"];
    let (_, err, code) = cri.exec_sync(web, &big, 120)?;
    if code != 137 {
        return Err(format!(
            "48 MiB under a 32 MiB limit: status {code} (expected 137, OOM-killed), {err:?}"
        )
        .into());
    }
    let (out, _, code) = cri.exec_sync(
        web,
        &["wget", "-q", "-O", "-", "http://127.0.0.1:8080/"],
        30,
    )?;
    if code != 0 || !out.contains("hello from the pod") {
        return Err(format!("the server after the OOM kill: status {code}, {out:?}").into());
    }
    cri.update(
        web,
        LinuxContainerResources {
            memory_limit_in_bytes: 96 << 20,
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            ..Default::default()
        },
    )?;
    let (_, err, code) = cri.exec_sync(web, &big, 120)?;
    if code != 0 {
        return Err(
            format!("48 MiB under a limit raised to 96 MiB: status {code}, {err:?}").into(),
        );
    }
    let stats = cri.stats(web)?;
    let cpu = stats
        .cpu
        .and_then(|c| c.usage_core_nano_seconds)
        .map_or(0, |v| v.value);
    let memory = stats.memory.unwrap_or_default();
    let working_set = memory.working_set_bytes.map_or(0, |v| v.value);
    let usage = memory.usage_bytes.map_or(0, |v| v.value);
    eprintln!("ContainerStats of web: cpu {cpu} ns, working set {working_set} B, usage {usage} B");
    // httpd, a shell and two dd runs took CPU time and hold memory.
    if cpu == 0 || working_set == 0 || usage < working_set {
        return Err(format!(
            "ContainerStats: cpu {cpu} ns, working set {working_set}, usage {usage}"
        )
        .into());
    }
    Ok(())
}

/// An unknown handler, an image that does not exist, a program that does
/// not exist: clear errors and nothing left. Then the pod's VMM killed:
/// its containers end (status 255) and the pod can be removed.
fn failures(c: &Containerd, cri: &Cri, logs: &Path) -> Result<(), Failed> {
    let mut pc = pod_config("bad", logs, NamespaceMode::Pod, &[]);
    // The pod's resources, as the kubelet sends the sum of its containers'
    // limits: 1.5 CPUs and 320 MiB size its VM (2 vCPUs, 320 + 32 MiB).
    if let Some(linux) = pc.linux.as_mut() {
        linux.resources = Some(LinuxContainerResources {
            memory_limit_in_bytes: 320 << 20,
            cpu_period: 100_000,
            cpu_quota: 150_000,
            ..Default::default()
        });
    }
    match cri.run_pod(&pc, "no-such-handler") {
        Err(e) if e.contains("no-such-handler") => {}
        other => return Err(format!("an unknown handler: {other:?}").into()),
    }
    all_gone(c, cri, "after an unknown handler")?;

    let pod = cri.run_pod(&pc, HANDLER)?;
    let missing = "husk.test/no-such-image:1";
    match cri.create(&pod, &container_config("m", missing, &["true"]), &pc) {
        Err(e) if e.contains(missing) => {}
        other => return Err(format!("an image that does not exist: {other:?}").into()),
    }
    let nowhere = cri.create(
        &pod,
        &container_config("n", IMAGE, &["/no/such/program"]),
        &pc,
    )?;
    match cri.start(&nowhere) {
        Err(e) if e.contains("/no/such/program") => {}
        Err(e) => return Err(format!("starting a missing program: {e}").into()),
        Ok(()) => {
            let s = cri.wait_state(&nowhere, ContainerState::ContainerExited, LIMIT)?;
            if s.exit_code != 127 {
                return Err(format!("a missing program ended with {}", s.exit_code).into());
            }
        }
    }
    cri.remove(&nowhere)?;

    let sleeper = cri.create(
        &pod,
        &container_config("sleeper", IMAGE, &["sleep", "100000"]),
        &pc,
    )?;
    cri.start(&sleeper)?;
    cri.wait_state(&sleeper, ContainerState::ContainerRunning, LIMIT)?;
    let (size, _, _) = cri.exec_sync(
        &sleeper,
        &["sh", "-c", "nproc; grep MemTotal /proc/meminfo"],
        30,
    )?;
    let words: Vec<&str> = size.split_whitespace().collect();
    let kib: u64 = words.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
    if words.first() != Some(&"2") || !(288 * 1024..=352 * 1024).contains(&kib) {
        return Err(format!("a pod of 1.5 CPUs and 320 MiB has a VM of {size:?}").into());
    }
    let vmm = vmm_pids();
    if vmm.len() != 1 {
        return Err(format!("expected one VMM for the pod, found {vmm:?}").into());
    }
    // SAFETY: kill(2) with a pid just read; it touches no memory.
    unsafe { libc::kill(vmm[0] as libc::pid_t, libc::SIGKILL) };
    let ended = cri.wait_state(&sleeper, ContainerState::ContainerExited, LIMIT)?;
    if ended.exit_code != 255 {
        return Err(format!("a container whose VM was killed: {ended:?}").into());
    }
    cri.remove(&sleeper)?;
    cri.stop_pod(&pod)?;
    cri.remove_pod(&pod)?;
    all_gone(c, cri, "after the failures")
}
