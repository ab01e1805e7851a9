//! The guest's network, driven by real clients: curl against a published
//! port, busybox wget in the guest against a server on the host's
//! loopback, and a tap in a network namespace the test makes. Every test
//! checks that nothing it started (passt, the tap, the namespace) is left,
//! also after `kill -9` of husk.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};

const IMAGE: &str = "oci:examples/busybox/image:latest";

pub fn trials() -> Vec<Trial> {
    vec![
        boot_tests::trial(
            "network_published_port_and_the_host_by_name_through_passt",
            published_port,
        ),
        boot_tests::trial(
            "network_tap_in_a_namespace_both_ways_and_removed_after",
            tap_in_namespace,
        ),
        boot_tests::trial(
            "network_published_port_without_root",
            published_port_without_root,
        ),
    ]
}

/// Serves `body` over HTTP on `listener` to every connection, until the
/// process ends (a thread of the test).
fn serve(listener: TcpListener, body: &'static str) {
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut req = [0u8; 1024];
            let _ = conn.read(&mut req);
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

pub(super) type Started = (Child, String, std::thread::JoinHandle<String>);

/// Starts `cmd` (a husk run) and waits for the guest to print `ready`:
/// the process, its output until then, and a thread collecting the rest.
/// Its stderr is what `cmd` says (the test's own, unless it chose).
pub(super) fn start_until_ready(mut cmd: Command) -> Result<Started, Failed> {
    std::env::set_current_dir(boot_tests::workspace_root())?;
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).spawn()?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap_or_default();
        seen.push_str(&line);
        seen.push('\n');
        if line.trim() == "ready" {
            let rest = std::thread::spawn(move || {
                let mut more = String::new();
                for l in lines.map_while(Result::ok) {
                    more.push_str(&l);
                    more.push('\n');
                }
                more
            });
            return Ok((child, seen, rest));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(format!("the guest never printed ready; it printed:\n{seen}").into())
}

/// curl, the real client, with a bounded wait.
pub(super) fn curl(url: &str, netns: Option<&str>) -> Result<String, Failed> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "curl"]);
            c
        }
        None => Command::new("curl"),
    };
    let out = cmd
        .args(["-sS", "--max-time", "10", url])
        .output()
        .map_err(|e| format!("cannot run curl (ci/setup installs it): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "curl {url} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The processes `pid` started (its main thread's children).
/// The children of process `pid`, of all its threads (a child's parent
/// is the thread that forked it).
pub(super) fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|task| {
            std::fs::read_to_string(task.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

pub(super) fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Waits up to 10 s (of an emulated bed, busy with the test's other
/// work) for `pid` to be gone: for a process that should be ending.
pub(super) fn gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ended(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Whether `pid` is gone, or a zombie nobody reaps yet (it runs no
/// more), now: no waiting, for a process that may well be running.
pub(super) fn ended(pid: u32) -> bool {
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    state.is_empty()
        || state
            .rsplit_once(')')
            .is_some_and(|(_, s)| s.trim_start().starts_with('Z'))
}

fn published_port() -> Result<(), Failed> {
    let host = TcpListener::bind("127.0.0.1:0")?;
    let host_port = host.local_addr()?.port();
    serve(host, "hello from the host loopback");
    // The host by the name --add-host gave it (host-gateway: the
    // gateway, where passt hands the host's loopback), as docker users
    // write host.docker.internal.
    let guest_script = format!(
        "gw=$(ip route | awk '/^default/ {{print $3}}'); \
         host=$(awk '$2 == \"hostbox\" {{print $1}}' /etc/hosts); \
         echo \"hostbox is $host, gateway $gw\"; grep -v '^#' /etc/resolv.conf; \
         echo guest-page > /tmp/index.html; httpd -p 8080 -h /tmp; \
         wget -q -O - http://$host:{host_port}/; echo; echo ready; sleep 60"
    );
    let mut cmd = Command::new(boot_tests::husk::husk_bin()?);
    cmd.args([
        "run",
        "--timeout",
        "90",
        "-p",
        "127.0.0.1:18081:8080",
        "--add-host",
        "hostbox:host-gateway",
        "--dns-search",
        "example.test",
        IMAGE,
    ])
    .args(["--", "sh", "-c", &guest_script]);
    let (mut husk, before, rest) = start_until_ready(cmd)?;
    let passt: Vec<u32> = children(husk.id())
        .into_iter()
        .filter(|p| comm(*p).starts_with("passt"))
        .collect();
    let page = curl("http://127.0.0.1:18081/index.html", None);
    // kill -9 of husk, whatever curl said: passt must go with it.
    let _ = husk.kill();
    let _ = husk.wait();
    let _ = rest.join();
    let page = page?;
    if page.trim() != "guest-page" {
        return Err(format!("curl through -p got {page:?}").into());
    }
    let named = before
        .lines()
        .find_map(|l| l.strip_prefix("hostbox is "))
        .and_then(|l| l.split_once(", gateway "))
        .is_some_and(|(host, gw)| !host.is_empty() && host == gw);
    let resolver = format!(
        "nameserver {}",
        before
            .lines()
            .find_map(|l| l.split_once(", gateway "))
            .map_or("", |(_, gw)| gw)
    );
    if !named || !before.contains("search example.test") || !before.contains(&resolver) {
        return Err(format!(
            "/etc/hosts should name the gateway hostbox, and resolv.conf have the \
             gateway as its name server and example.test as its search domain:\n{before}"
        )
        .into());
    }
    if !before.contains("hello from the host loopback") {
        return Err(format!("the guest did not reach the host's loopback:\n{before}").into());
    }
    if passt.len() != 1 {
        return Err(format!("husk should have started one passt, saw {passt:?}").into());
    }
    if !gone(passt[0]) {
        return Err(format!("passt ({}) outlived kill -9 of husk", passt[0]).into());
    }
    Ok(())
}

pub(super) fn ip(args: &[&str]) -> Result<(), Failed> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// A network namespace for one test, deleted when dropped.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn tap_in_namespace() -> Result<(), Failed> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("this test makes a network namespace and a tap: it needs root".into());
    }
    let ns = Netns(format!("husk-test-{}", std::process::id()));
    ip(&["netns", "add", &ns.0])?;
    ip(&["netns", "exec", &ns.0, "ip", "link", "set", "lo", "up"])?;
    // A server in the namespace for the guest to reach.
    let www = tempfile::tempdir()?;
    std::fs::write(www.path().join("index.html"), "namespace-page\n")?;
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", &ns.0, "busybox", "httpd", "-f", "-p", "8000", "-h",
        ])
        .arg(www.path())
        .spawn()?;
    // husk makes the tap (it does not exist yet) inside the namespace.
    let guest_script = "ip addr add 198.51.100.2/24 dev eth0 && ip link set eth0 up; \
         echo guest-page > /tmp/index.html; httpd -p 8080 -h /tmp; echo ready; \
         for i in $(seq 1 100); do wget -q -O - http://198.51.100.1:8000/ && break; sleep 0.2; done; \
         sleep 60";
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0])
        .arg(boot_tests::husk::husk_bin()?)
        .args(["run", "--timeout", "90", "--net", "tap:htap0", IMAGE])
        .args(["--", "sh", "-c", guest_script]);
    let result = (|| -> Result<(), Failed> {
        let (mut husk, _, rest) = start_until_ready(cmd)?;
        let setup = ip(&[
            "netns",
            "exec",
            &ns.0,
            "ip",
            "addr",
            "add",
            "198.51.100.1/24",
            "dev",
            "htap0",
        ]);
        let page = setup.and_then(|()| curl("http://198.51.100.2:8080/index.html", Some(&ns.0)));
        // Give the guest's wget time to reach the namespace's server.
        std::thread::sleep(Duration::from_secs(3));
        let _ = husk.kill();
        let _ = husk.wait();
        let out = rest.join().unwrap_or_default();
        let page = page?;
        if page.trim() != "guest-page" {
            return Err(format!("curl in the namespace got {page:?}").into());
        }
        if !out.lines().any(|l| l.trim() == "namespace-page") {
            return Err(format!("the guest did not reach the namespace's server:\n{out}").into());
        }
        // The tap husk made ends with it, even after kill -9.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let links = Command::new("ip")
                .args(["netns", "exec", &ns.0, "ip", "-o", "link"])
                .output()?;
            if !String::from_utf8_lossy(&links.stdout).contains("htap0") {
                break;
            }
            if Instant::now() > deadline {
                return Err("the tap husk made outlived it".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    result
}

/// Gives the user `nobody` read and write access to `/dev/kvm` for as long
/// as it lives (the test bed's node is root's alone), then restores it.
pub(super) struct KvmForNobody(Option<u32>);

impl KvmForNobody {
    pub(super) fn grant() -> Result<Self, Failed> {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata("/dev/kvm")?.permissions().mode() & 0o7777;
        if mode & 0o006 == 0o006 {
            return Ok(KvmForNobody(None));
        }
        std::fs::set_permissions("/dev/kvm", std::fs::Permissions::from_mode(mode | 0o006))?;
        Ok(KvmForNobody(Some(mode)))
    }
}

impl Drop for KvmForNobody {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if let Some(mode) = self.0 {
            let _ = std::fs::set_permissions("/dev/kvm", std::fs::Permissions::from_mode(mode));
        }
    }
}

/// `husk run -p` as an unprivileged user (nobody, with access to
/// /dev/kvm and nothing else): passt runs as that user, curl reaches the
/// guest, and passt is gone after kill -9 of husk.
fn published_port_without_root() -> Result<(), Failed> {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("this test drops from root to nobody: run it as root".into());
    }
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    // Without husk's init (nobody cannot read root's image cache) the
    // guest sets its address itself, the one husk gives passt, and waits
    // for the kernel to bring the link up (linkwatch).
    let net = vmm::passt::guest_net().map_err(|e| format!("the host's route: {e}"))?;
    let script = format!(
        "ip link set eth0 up && ip addr add {}/{} dev eth0 && ip route add default via {}; \
         while ip link show eth0 | grep -q NO-CARRIER; do usleep 50000; done; \
         echo unprivileged-page > /tmp/index.html; httpd -p 8080 -h /tmp; echo ready; sleep 120",
        net.address, net.prefix, net.gateway
    );
    let initrd = boot_tests::guest::busybox_initramfs(dir.path(), &script)?;
    let kernel = dir.path().join("vmlinux");
    std::fs::copy(boot_tests::husk_kernel()?.vmlinux(), &kernel)?;
    for f in [&initrd, &kernel] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644))?;
    }
    let _kvm = KvmForNobody::grant()?;
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(boot_tests::husk::husk_bin()?)
        .args([
            "run",
            "--timeout",
            "90",
            "-p",
            "127.0.0.1:18083:8080",
            "--kernel",
        ])
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .env("HOME", dir.path());
    let (mut husk, _before, rest) = start_until_ready(cmd)?;
    let uid = status_uid(husk.id());
    let passt: Vec<u32> = children(husk.id())
        .into_iter()
        .filter(|p| comm(*p).starts_with("passt"))
        .collect();
    let passt_uid = passt.first().map(|p| status_uid(*p));
    let page = curl("http://127.0.0.1:18083/index.html", None);
    let _ = husk.kill();
    let _ = husk.wait();
    let _ = rest.join();
    if uid.as_deref() != Some("65534") || passt_uid.clone().flatten().as_deref() != Some("65534") {
        return Err(
            format!("husk ran as uid {uid:?} and passt as {passt_uid:?}, not nobody").into(),
        );
    }
    let page = page?;
    if page.trim() != "unprivileged-page" {
        return Err(format!("curl through -p without root got {page:?}").into());
    }
    if passt.len() != 1 || !gone(passt[0]) {
        return Err(format!("passt {passt:?} outlived kill -9 of an unprivileged husk").into());
    }
    Ok(())
}

/// The real uid of process `pid`.
fn status_uid(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next().map(str::to_string))
}
