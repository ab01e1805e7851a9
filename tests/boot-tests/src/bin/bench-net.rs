//! Network and vsock bench: husk against QEMU's `microvm` with
//! `virtio-net-device`, side by side, on the same kernel, initramfs and
//! guest program (`guest/husk-stream.c`), 1 vCPU, 128 MiB. Run it through
//! `ci/bench-net`.
//!
//!   bench-net [--runs N] [--only tap|passt|slot|vsock|pair|boot]
//!
//! - tap: a host tap for each VMM (QEMU with vhost off);
//! - passt: one passt per VM started the same way (husk's own supervisor
//!   code), each publishing the guest's ports on its own host ports; QEMU
//!   takes its socket as `-netdev stream`;
//! - slot: husk on a tap with its interface in a virtio-mmio slot, as a
//!   detached appliance's are (`--net-slots`: served through the slot's
//!   own epoll), against husk without.
//!
//! The VMs compared run at the same time, each on its own tap or passt,
//! and are measured in rounds of changing order (`boot_tests::rounds`):
//! what a run leaves behind in the machine falls on each alike.
//!
//! Per run, all timed on the host: host to guest (SIZE bytes to a guest
//! sink until it answers its count), guest to host (SIZE bytes from a
//! guest source until the end), and the median round trip of 200 one-byte
//! ping-pongs (TCP_NODELAY). Then husk's vsock the same way (no peer here
//! runs vsock in userspace), its connect latency (connect to `OK`); two
//! guests on one network (`pair`: a second guest times the same transfers
//! to the first), husk's two VMs on a `husk network` (its hub between
//! them) against two QEMU microvms joined by `-netdev stream` (one
//! listening, one connecting: a wire, no switch); and husk's boot with the
//! network off, on a tap, and on passt.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use boot_tests::husk::{bench_husk_bin, guest_tool};
use boot_tests::{guest, husk_kernel, stats};
use vmm::passt::{GuestNet, Passt, PortMapping};

const SIZE: u64 = 32 << 20;
const PINGS: usize = 200;
/// Guest ports: sink, source, echo (TCP and vsock alike).
const PORTS: [u16; 3] = [5000, 5001, 5002];

/// The bench's tap `i` (one for each VM of a comparison, the boots use
/// the first): its name and the host's and the guest's addresses.
fn tap_name(i: usize) -> String {
    format!("hbench{i}")
}

fn tap_host(i: usize) -> String {
    format!("10.97.{i}.1")
}

fn tap_guest(i: usize) -> String {
    format!("10.97.{i}.2")
}

/// Where the passt of the `i`th VM of a comparison publishes the guest's
/// ports on the host's loopback.
fn published_ports(i: usize) -> [u16; 3] {
    let base = 15000 + 10 * i as u16;
    [base, base + 1, base + 2]
}
const MARK: &str = "HUSK-NET-READY";

fn main() -> ExitCode {
    let runs = boot_tests::runs_arg(10);
    boot_tests::bench_main("bench-net", || bench(runs))
}

/// The guest: its address and MTU from `bench.ip=ADDR/PREFIX,GATEWAY`
/// and `bench.mtu=N` on the kernel command line (what husk's init does
/// from `husk.net=`), the servers, then the marker. With `bench.peer=ADDR
/// bench.runs=N` it times the transfers to that guest's servers instead,
/// prints them, and powers off.
const SCRIPT: &str = r#"
for a in $(cat /proc/cmdline); do case $a in bench.ip=*) ip=${a#bench.ip=};; bench.mtu=*) mtu=${a#bench.mtu=};; bench.peer=*) peer=${a#bench.peer=};; bench.runs=*) runs=${a#bench.runs=};; esac; done
ip link set lo up
ip link set eth0 mtu $mtu up
ip addr add ${ip%,*} dev eth0
ip route add default via ${ip#*,}
if [ -n "$peer" ]; then husk-stream bench $peer 33554432 200 $runs; echo HUSK-PAIR-DONE; reboot -f; fi
husk-stream sink tcp 5000 & husk-stream source tcp 5001 & husk-stream echo tcp 5002 &
if [ -e /dev/vsock ]; then husk-stream sink vsock 5000 & husk-stream source vsock 5001 & husk-stream echo vsock 5002 & fi
sleep 1
echo HUSK-NET-READY
sleep 3600
"#;

struct Env {
    bin: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    boot_initrd: PathBuf,
    dir: PathBuf,
    passt_net: GuestNet,
}

fn bench(runs: usize) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let tools = vec![
        (
            guest_tool(dir.path(), "husk-stream")?,
            "bin/husk-stream".into(),
        ),
        (
            guest_tool(dir.path(), "husk-report")?,
            "bin/husk-report".into(),
        ),
    ];
    let serve_dir = dir.path().join("serve");
    let boot_dir = dir.path().join("boot");
    for d in [&serve_dir, &boot_dir] {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    let env = Env {
        bin: bench_husk_bin(dir.path())?,
        kernel: husk_kernel()?.vmlinux(),
        initrd: guest::busybox_initramfs_with(&serve_dir, SCRIPT, &tools)
            .map_err(|e| e.to_string())?,
        boot_initrd: guest::busybox_initramfs_with(
            &boot_dir,
            "husk-report mark\necho HUSK-BOOT-MARK\nhusk-report 0\nreboot -f",
            &tools,
        )
        .map_err(|e| e.to_string())?,
        dir: dir.path().to_owned(),
        passt_net: vmm::passt::guest_net().map_err(|e| format!("passt's network: {e}"))?,
    };
    let _taps = [Tap::create(0)?, Tap::create(1)?];

    println!("Network under KVM, husk's kernel + busybox initramfs, 1 vCPU, 128 MiB,");
    println!(
        "{runs} runs each of {} MiB transfers and {PINGS} one-byte round trips:",
        SIZE >> 20
    );
    println!(
        "{:<34} {:>24} {:>24} {:>22}",
        "", "host->guest MB/s", "guest->host MB/s", "round trip us"
    );
    println!(
        "{:<34} {:>24} {:>24} {:>22}",
        "", "median (min-max)", "median (min-max)", "median (min-max)"
    );
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    let wanted = |part: &str| only.as_deref().is_none_or(|o| o == part);
    for backend in [Backend::Tap, Backend::Passt] {
        if !wanted(backend.name()) {
            continue;
        }
        let [h, q] = compare(&env, [(Vmm::Husk, backend), (Vmm::Qemu, backend)], runs)?;
        h.print(&format!("husk, {}", backend.name()));
        q.print(&format!("QEMU microvm, {}", backend.name()));
        h.print_ratio(&q, &format!("husk/QEMU, {}", backend.name()));
    }
    if wanted("slot") {
        let [s, h] = compare(
            &env,
            [(Vmm::HuskInSlot, Backend::Tap), (Vmm::Husk, Backend::Tap)],
            runs,
        )?;
        s.print("husk, tap, in a slot");
        h.print("husk, tap");
        s.print_ratio(&h, "in a slot/not, tap");
    }
    if wanted("vsock") {
        let [v] = compare(&env, [(Vmm::Husk, Backend::Vsock)], runs)?;
        v.print("husk, vsock (hybrid socket)");
        let (m, lo, hi) = stats(&v.connect);
        println!("husk vsock connect (connect to OK): median {m:.0} us, min {lo:.0}, max {hi:.0}");
    }
    if wanted("pair") {
        pair(&env, runs)?;
    }
    if wanted("boot") {
        boot(&env, runs)?;
    }
    Ok(())
}

/// The guests' subnet on the pair's network.
const PAIR_SUBNET: &str = "10.96.0";

/// Two guests on one network, husk's and QEMU's, as the module says.
fn pair(env: &Env, runs: usize) -> Result<(), String> {
    let h = pair_runs(env, Vmm::Husk, runs).map_err(|e| format!("husk: {e}"))?;
    let q = pair_runs(env, Vmm::Qemu, runs).map_err(|e| format!("QEMU: {e}"))?;
    println!(
        "{:<34} {:>24} {:>24} {:>22}",
        "guest to guest", "to the other MB/s", "from the other MB/s", "round trip us"
    );
    h.print("husk, on a husk network");
    q.print("QEMU microvm, -netdev stream");
    println!(
        "{:<34} {:>24} {:>24} {:>22}",
        "husk/QEMU, guest to guest",
        format!("{:.2}x", stats(&h.h2g).0 / stats(&q.h2g).0),
        format!("{:.2}x", stats(&h.g2h).0 / stats(&q.g2h).0),
        format!("{:.2}x", stats(&h.rtt).0 / stats(&q.rtt).0),
    );
    Ok(())
}

/// Boots the serving guest, then the one that times `runs` runs against
/// it (after its warm-up), and reads its figures.
fn pair_runs(env: &Env, vmm: Vmm, runs: usize) -> Result<Figures, String> {
    const NETWORK: &str = "hbench";
    const PORT: u16 = 15100;
    let data = env.dir.join("data");
    let vm = |n: u8, peer: &str| {
        // The MTU of husk's networks and of passt.
        let cmdline =
            format!("quiet bench.ip={PAIR_SUBNET}.{n}/24,{PAIR_SUBNET}.1 bench.mtu=65520 {peer}");
        match vmm {
            Vmm::Husk | Vmm::HuskInSlot => {
                let mut c = Command::new(&env.bin);
                c.env("HUSK_DATA_DIR", &data)
                    .arg("run")
                    .arg("--initrd")
                    .arg(&env.initrd)
                    .args(["--cmdline", &cmdline, "--cpus", "1", "--memory", "128"])
                    .args(["--timeout", "3600", "--net", "none", "--net", NETWORK]);
                c
            }
            Vmm::Qemu => {
                let mut c = boot_tests::qemu::microvm_stdio(&env.kernel, &cmdline);
                let server = if peer.is_empty() { "on" } else { "off" };
                c.arg("-initrd").arg(&env.initrd).args([
                    "-netdev",
                    &format!(
                        "stream,id=n0,server={server},addr.type=inet,\
                         addr.host=127.0.0.1,addr.port={PORT}"
                    ),
                    "-device",
                    "virtio-net-device,netdev=n0",
                ]);
                c
            }
        }
    };
    if vmm == Vmm::Husk && !data.join("networks").join(NETWORK).exists() {
        let out = Command::new(&env.bin)
            .env("HUSK_DATA_DIR", &data)
            .args([
                "network",
                "create",
                "--subnet",
                &format!("{PAIR_SUBNET}.0/24"),
                NETWORK,
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "husk network create: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let mut server = until_marked(vm(2, ""), "the serving guest")?;
    let peer = format!("bench.peer={PAIR_SUBNET}.2 bench.runs={runs}");
    let result = (|| {
        let mut client = vm(3, &peer)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| e.to_string())?;
        let out = client.stdout.take().expect("piped");
        let mut f = Figures::default();
        let mut done = false;
        for line in BufReader::new(out).lines() {
            let line = line.unwrap_or_default();
            eprint!("\rbench-net: {} pair: {line:<40}", vmm.name());
            let words: Vec<&str> = line.split_whitespace().collect();
            if let ["bench", _, to, from, rtt] = words[..] {
                let value = |w: &str| w.parse::<f64>().map_err(|e| format!("{line:?}: {e}"));
                f.h2g.push(value(to)?);
                f.g2h.push(value(from)?);
                f.rtt.push(value(rtt)?);
            }
            done |= line.contains("HUSK-PAIR-DONE");
        }
        eprintln!();
        let _ = client.wait();
        if !done || f.rtt.len() != runs {
            return Err(format!(
                "the timing guest gave {} of {runs} runs",
                f.rtt.len()
            ));
        }
        Ok(f)
    })();
    let _ = server.kill();
    let _ = server.wait();
    result
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Vmm {
    Husk,
    /// husk with its interfaces in slots, as a detached appliance's.
    HuskInSlot,
    Qemu,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::Husk => "husk",
            Vmm::HuskInSlot => "husk (in a slot)",
            Vmm::Qemu => "QEMU",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Tap,
    Passt,
    Vsock,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Tap => "tap",
            Backend::Passt => "passt",
            Backend::Vsock => "vsock",
        }
    }
}

#[derive(Default)]
struct Figures {
    h2g: Vec<f64>,
    g2h: Vec<f64>,
    rtt: Vec<f64>,
    connect: Vec<f64>,
}

/// One run's figures: the two transfers (MB/s), the median round trip
/// (µs), and on vsock the connect latencies (µs).
struct Run {
    h2g: f64,
    g2h: f64,
    rtt: f64,
    connect: Vec<f64>,
}

impl Figures {
    fn of(runs: Vec<Run>) -> Figures {
        let mut f = Figures::default();
        for r in runs {
            f.h2g.push(r.h2g);
            f.g2h.push(r.g2h);
            f.rtt.push(r.rtt);
            f.connect.extend(r.connect);
        }
        f
    }

    /// One row of medians' ratios, these over `other`.
    fn print_ratio(&self, other: &Figures, name: &str) {
        let ratio = |a: &[f64], b: &[f64]| format!("{:.2}x", stats(a).0 / stats(b).0);
        println!(
            "{name:<34} {:>24} {:>24} {:>22}",
            ratio(&self.h2g, &other.h2g),
            ratio(&self.g2h, &other.g2h),
            ratio(&self.rtt, &other.rtt),
        );
    }

    fn print(&self, name: &str) {
        let cell = |v: &[f64]| {
            let (m, lo, hi) = stats(v);
            format!("{m:.1} ({lo:.1}-{hi:.1})")
        };
        println!(
            "{name:<34} {:>24} {:>24} {:>22}",
            cell(&self.h2g),
            cell(&self.g2h),
            cell(&self.rtt)
        );
    }
}

/// How the host reaches one of the guest's servers.
enum Reach {
    /// An address, and the ports of the sink, source and echo there.
    Tcp(String, [u16; 3]),
    Vsock(PathBuf),
}

trait Stream: Read + Write {
    fn shut_write(&self) -> std::io::Result<()>;
}

impl Stream for TcpStream {
    fn shut_write(&self) -> std::io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl Stream for UnixStream {
    fn shut_write(&self) -> std::io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl Reach {
    /// Connects to server `i` (sink, source, echo).
    fn open(&self, i: usize) -> Result<Box<dyn Stream>, String> {
        match self {
            Reach::Tcp(host, ports) => {
                let port = ports[i];
                let s = TcpStream::connect((host.as_str(), port))
                    .map_err(|e| format!("connect {host}:{port}: {e}"))?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_secs(60)))
                    .map_err(|e| e.to_string())?;
                s.set_write_timeout(Some(Duration::from_secs(60)))
                    .map_err(|e| e.to_string())?;
                Ok(Box::new(s))
            }
            Reach::Vsock(uds) => Ok(Box::new(vsock_connect(uds, PORTS[i])?.0)),
        }
    }
}

/// Connects through husk's hybrid vsock; also the time to its `OK`.
fn vsock_connect(uds: &Path, port: u16) -> Result<(UnixStream, Duration), String> {
    let start = Instant::now();
    let s = boot_tests::hybrid_vsock_connect(uds, u32::from(port))?;
    Ok((s, start.elapsed()))
}

/// Boots a VM for each side, each serving on its backend on a tap or a
/// passt of its own, measures them in `runs` rounds of changing order
/// (after a warm-up round), and stops them.
fn compare<const N: usize>(
    env: &Env,
    sides: [(Vmm, Backend); N],
    runs: usize,
) -> Result<[Figures; N], String> {
    let mut vms = Vec::with_capacity(N);
    for (i, &(vmm, backend)) in sides.iter().enumerate() {
        let uds = env.dir.join(format!("vm{i}.sock"));
        let (child, passt) =
            start(env, vmm, backend, i, &uds).map_err(|e| format!("{}: {e}", vmm.name()))?;
        let reach = match backend {
            Backend::Tap => Reach::Tcp(tap_guest(i), PORTS),
            Backend::Passt => Reach::Tcp("127.0.0.1".into(), published_ports(i)),
            Backend::Vsock => Reach::Vsock(uds),
        };
        vms.push(Serving {
            child,
            _passt: passt,
            reach,
            name: format!("{} {}", vmm.name(), backend.name()),
        });
    }
    let mut buf = vec![0u8; 1 << 16];
    let kept: [Vec<Run>; N] = boot_tests::rounds(runs, |side, round| {
        let vm = &vms[side];
        eprint!("\rbench-net: {}, round {round} of {runs}   ", vm.name);
        one_run(vm, &mut buf).map_err(|e| format!("{}: {e}", vm.name))
    })?;
    eprintln!();
    Ok(kept.map(Figures::of))
}

/// A VM of a comparison, stopped when dropped.
struct Serving {
    child: Child,
    _passt: Option<Passt>,
    reach: Reach,
    name: String,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One run against `vm`: both transfers, the round trips, and on vsock
/// ten connects.
fn one_run(vm: &Serving, buf: &mut [u8]) -> Result<Run, String> {
    let reach = &vm.reach;
    // Host to guest.
    let _watch = StallReport::arm("host to guest", vm.child.id());
    let start = Instant::now();
    let mut s = reach.open(0)?;
    let mut left = SIZE;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..n])
            .map_err(|e| format!("sending: {e}"))?;
        left -= n as u64;
    }
    s.shut_write().map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(&mut s)
        .read_line(&mut answer)
        .map_err(|e| e.to_string())?;
    let h2g = start.elapsed();
    if !answer.starts_with(&format!("{SIZE} ")) {
        return Err(format!("the guest's sink counted {answer:?}"));
    }
    // Guest to host.
    let _watch = StallReport::arm("guest to host", vm.child.id());
    let start = Instant::now();
    let mut s = reach.open(1)?;
    writeln!(s, "{SIZE}").map_err(|e| e.to_string())?;
    let mut got = 0u64;
    loop {
        match s.read(buf) {
            Ok(0) => break,
            Ok(n) => got += n as u64,
            Err(e) => return Err(format!("receiving: {e}")),
        }
    }
    let g2h = start.elapsed();
    if got != SIZE {
        return Err(format!("the guest's source sent {got} bytes"));
    }
    // Round trips.
    let mut s = reach.open(2)?;
    let mut rtts = Vec::with_capacity(PINGS);
    let mut b = [7u8; 1];
    for _ in 0..PINGS {
        let t = Instant::now();
        s.write_all(&b).map_err(|e| e.to_string())?;
        s.read_exact(&mut b).map_err(|e| e.to_string())?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let mut connect = Vec::new();
    if let Reach::Vsock(uds) = reach {
        for _ in 0..10 {
            let (_, t) = vsock_connect(uds, PORTS[2])?;
            connect.push(t.as_secs_f64() * 1e6);
        }
    }
    let mb = |d: Duration| SIZE as f64 / 1e6 / d.as_secs_f64();
    Ok(Run {
        h2g: mb(h2g),
        g2h: mb(g2h),
        rtt: stats(&rtts).0,
        connect,
    })
}

/// Prints what the sockets hold when a transfer takes longer than a
/// healthy one ever does (30 s), so a stall can be told apart: bytes
/// waiting in the VMM's socket to passt, in passt's, or in TCP.
struct StallReport(Option<std::sync::mpsc::Sender<()>>);

impl StallReport {
    fn arm(phase: &'static str, vmm: u32) -> Self {
        let (done, wait) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if wait.recv_timeout(Duration::from_secs(30)).is_ok() {
                return;
            }
            eprintln!("\nbench-net: {phase} has taken 30 s; the VMM is pid {vmm}");
            for cmd in ["ss -xpnm", "ss -tnpmi", "cat /proc/%/status | grep -i ctxt"] {
                let cmd = cmd.replace('%', &vmm.to_string());
                if let Ok(out) = Command::new("sh").args(["-c", &cmd]).output() {
                    eprintln!("--- {cmd}\n{}", String::from_utf8_lossy(&out.stdout));
                }
            }
        });
        StallReport(Some(done))
    }
}

impl Drop for StallReport {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = d.send(());
        }
    }
}

/// Starts the VM of side `i` of a comparison (on tap `i`, or publishing
/// on that side's ports) and waits for the guest's marker.
fn start(
    env: &Env,
    vmm: Vmm,
    backend: Backend,
    i: usize,
    uds: &Path,
) -> Result<(Child, Option<Passt>), String> {
    let (ip, passt_fd, passt) = match backend {
        Backend::Tap | Backend::Vsock => (
            format!("{}/24,{} bench.mtu=1500", tap_guest(i), tap_host(i)),
            None,
            None,
        ),
        Backend::Passt => {
            let n = &env.passt_net;
            let ip = format!(
                "{}/{},{} bench.mtu={}",
                n.address, n.prefix, n.gateway, n.mtu
            );
            if vmm != Vmm::Qemu {
                (ip, None, None)
            } else {
                let (p, fd) = Passt::start(n, &published(i)).map_err(|e| e.to_string())?;
                (ip, Some(fd), Some(p))
            }
        }
    };
    let cmdline = format!("quiet bench.ip={ip}");
    let mut cmd = match vmm {
        Vmm::Husk | Vmm::HuskInSlot => {
            let mut c = Command::new(&env.bin);
            c.arg("run")
                .arg("--initrd")
                .arg(&env.initrd)
                .args(["--cmdline", &cmdline, "--cpus", "1", "--memory", "128"])
                .args(["--timeout", "3600"]);
            if vmm == Vmm::HuskInSlot {
                c.args(["--net-slots", "1"]);
            }
            match backend {
                Backend::Tap => {
                    c.args(["--net", &format!("tap:{}", tap_name(i))]);
                }
                Backend::Passt => {
                    for (h, g) in published_ports(i).iter().zip(PORTS) {
                        c.args(["-p", &format!("127.0.0.1:{h}:{g}")]);
                    }
                }
                Backend::Vsock => {
                    c.args(["--net", "none", "--vsock"]).arg(uds);
                }
            }
            c
        }
        Vmm::Qemu => {
            let mut c = boot_tests::qemu::microvm_stdio(&env.kernel, &cmdline);
            c.arg("-initrd").arg(&env.initrd);
            match backend {
                Backend::Tap => {
                    c.args([
                        "-netdev",
                        &format!(
                            "tap,id=n0,ifname={},script=no,downscript=no,vhost=off",
                            tap_name(i)
                        ),
                    ]);
                }
                _ => {
                    c.args(["-netdev", "stream,id=n0,addr.type=fd,addr.str=3"]);
                }
            }
            c.args(["-device", "virtio-net-device,netdev=n0"]);
            c
        }
    };
    if let Some(fd) = &passt_fd {
        pass_fd_as_3(&mut cmd, fd);
    }
    let child = until_marked(cmd, &format!("the guest on {}", backend.name()));
    // QEMU holds passt's socket now; passt ends when QEMU closes it.
    drop(passt_fd);
    Ok((child?, passt))
}

/// Spawns `cmd`, a VM, and waits for its guest's marker.
fn until_marked(mut cmd: Command, what: &str) -> Result<Child, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let out = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(out).lines();
    let deadline = Instant::now() + Duration::from_secs(120);
    for line in lines.by_ref() {
        let line = line.unwrap_or_default();
        if line.contains(MARK) {
            // Keep draining the console so the guest never blocks on it.
            std::thread::spawn(move || for _ in lines {});
            return Ok(child);
        }
        if Instant::now() > deadline {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(format!("{what} never got ready"))
}

fn published(i: usize) -> Vec<PortMapping> {
    published_ports(i)
        .iter()
        .zip(PORTS)
        .map(|(&host_port, guest_port)| PortMapping {
            host_ip: Some([127, 0, 0, 1].into()),
            host_port,
            guest_port,
            udp: false,
        })
        .collect()
}

/// Hands `fd` to the child as its descriptor 3 (QEMU's `addr.str=3`);
/// the caller keeps `fd` open until the child is spawned.
fn pass_fd_as_3(cmd: &mut Command, fd: &OwnedFd) {
    let raw = fd.as_raw_fd();
    // SAFETY: between fork and exec the closure only calls dup2, which is
    // async-signal-safe, on a descriptor the caller keeps open until the
    // spawn.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Boot to the command's output with the network off, on a tap, on passt,
/// and the VMM's memory overhead with each.
fn boot(env: &Env, runs: usize) -> Result<(), String> {
    let configs: [(&str, Vec<String>); 3] = [
        ("husk, --net none", vec!["--net".into(), "none".into()]),
        (
            "husk, --net tap",
            vec!["--net".into(), format!("tap:{}", tap_name(0))],
        ),
        (
            "husk, --net user (passt)",
            vec!["--net".into(), "user".into()],
        ),
    ];
    let times: [_; 3] = boot_tests::rounds(runs, |i, _| {
        let mut c = Command::new(&env.bin);
        c.arg("run")
            .arg("--initrd")
            .arg(&env.boot_initrd)
            .args(["--cmdline", "quiet", "--cpus", "1", "--memory", "128"])
            .args(["--timeout", "60"])
            .args(&configs[i].1);
        let (first, _) =
            boot_tests::time_run(&mut c, boot_tests::First::LineWith("HUSK-BOOT-MARK"))?;
        Ok(first)
    })?;
    println!("Boot to the command's output, {runs} runs each, seconds:");
    let off = stats(&times[0]).0;
    for ((name, args), t) in configs.iter().zip(&times) {
        let (m, lo, hi) = stats(t);
        let (overhead, phases) = timings(env, args)?;
        println!(
            "{name:<28} median {m:.3} (min {lo:.3}, max {hi:.3}), {:+.1}% against off; VMM overhead {overhead}",
            (m / off - 1.0) * 100.0
        );
        println!("  --timings (one run): {}", phases.join(", "));
    }
    Ok(())
}

/// husk's own report (`--timings`) of one run: its memory overhead, and
/// when each phase was reached.
fn timings(env: &Env, args: &[String]) -> Result<(String, Vec<String>), String> {
    let out = Command::new(&env.bin)
        .arg("run")
        .arg("--initrd")
        .arg(&env.boot_initrd)
        .args(["--cmdline", "quiet", "--cpus", "1", "--memory", "128"])
        .args(["--timeout", "60", "--timings"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&out.stderr);
    let overhead = err
        .lines()
        .find_map(|l| l.split_once("VMM overhead ").map(|(_, v)| v.to_string()))
        .ok_or_else(|| format!("no memory report in:\n{err}"))?;
    // "husk:   123.456 ms  phase" -> "phase 123 ms"
    let phases = err
        .lines()
        .filter_map(|l| {
            let (ms, phase) = l.strip_prefix("husk: ")?.trim().split_once(" ms  ")?;
            Some(format!("{phase} {:.0} ms", ms.parse::<f64>().ok()?))
        })
        .collect();
    Ok((overhead, phases))
}

/// The bench's tap `i`, removed when dropped.
struct Tap(String);

impl Tap {
    fn create(i: usize) -> Result<Tap, String> {
        let name = tap_name(i);
        let _ = ip(&["link", "del", &name]);
        ip(&["tuntap", "add", "dev", &name, "mode", "tap"])?;
        let tap = Tap(name);
        ip(&["addr", "add", &format!("{}/24", tap_host(i)), "dev", &tap.0])?;
        ip(&["link", "set", &tap.0, "up"])?;
        Ok(tap)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.0]);
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
