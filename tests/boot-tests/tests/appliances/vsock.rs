//! vsock through husk's hybrid Unix socket, both ways, in a jailed and
//! seccomp-filtered VMM: 64 MiB each way checked by digest, 100 streams at
//! once, a port nobody listens on, a guest that powers off mid-transfer.
//! After each run the broker is gone and the socket files are removed,
//! also after `kill -9` of husk.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use boot_tests::guest;
use boot_tests::husk::{guest_tool, husk_bin};
use libtest_mimic::{Failed, Trial};

use super::network::{children, comm, gone, start_until_ready};

pub fn trials() -> Vec<Trial> {
    vec![
        boot_tests::trial(
            "vsock_64mib_both_ways_100_streams_a_host_leaving_and_nothing_left_after_kill_9",
            both_ways,
        ),
        boot_tests::trial(
            "vsock_unjailed_a_host_leaving_and_a_guest_powering_off_mid_transfer",
            guest_exits_mid_transfer,
        ),
    ]
}

const MIB64: u64 = 64 << 20;

/// The stream `guest/husk-stream.c` sends: xorshift64 words from `seed`.
struct Data(u64);

impl Data {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            chunk.copy_from_slice(&x.to_ne_bytes()[..chunk.len()]);
        }
    }
}

/// FNV-1a 64, as the guest computes it.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// `LEN DIGEST` of `len` bytes of [`Data`] from `seed`.
fn expected(len: u64, seed: u64) -> String {
    let mut data = Data(seed);
    let mut fnv = Fnv::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        data.fill(&mut buf[..n]);
        fnv.update(&buf[..n]);
        left -= n as u64;
    }
    format!("{len} {:016x}", fnv.0)
}

/// A busybox initramfs running `script`, with `husk-stream` and
/// `husk-report` on its PATH.
fn initramfs(dir: &Path, script: &str) -> Result<PathBuf, Failed> {
    let tools = [
        (
            guest_tool(dir, "husk-stream")?,
            "bin/husk-stream".to_string(),
        ),
        (
            guest_tool(dir, "husk-report")?,
            "bin/husk-report".to_string(),
        ),
    ];
    Ok(guest::busybox_initramfs_with(dir, script, &tools)?)
}

fn connect(uds: &Path, port: u32) -> Result<UnixStream, String> {
    boot_tests::hybrid_vsock_connect(uds, port)
}

/// The broker husk started (a child named husk-vsock).
fn broker_of(husk: u32) -> Vec<u32> {
    children(husk)
        .into_iter()
        .filter(|p| comm(*p) == "husk-vsock")
        .collect()
}

/// Waits up to 10 s for `path` to be gone.
fn removed(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    !path.exists()
}

/// The host's listener for guest port 6000: reads one stream to its end
/// and answers `LEN DIGEST`; the thread returns what it read.
fn host_sink(listener: UnixListener) -> std::thread::JoinHandle<Result<String, String>> {
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().map_err(|e| e.to_string())?;
        let mut fnv = Fnv::new();
        let mut len = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    fnv.update(&buf[..n]);
                    len += n as u64;
                }
                // A guest that powered off resets the stream.
                Err(e) => return Err(format!("after {len} bytes: {e}")),
            }
        }
        let summary = format!("{len} {:016x}", fnv.0);
        let _ = writeln!(s, "{summary}");
        Ok(summary)
    })
}

fn both_ways() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let uds = dir.path().join("vm.sock");
    let sink = host_sink(UnixListener::bind(dir.path().join("vm.sock_6000"))?);
    let initrd = initramfs(
        dir.path(),
        &format!(
            "husk-stream sink vsock 5000 & husk-stream echo vsock 5001 & sleep 1\necho ready\n\
             husk-stream send 6000 {MIB64} 42\necho guest-send-done\nsleep 3600"
        ),
    )?;
    let mut cmd = Command::new(husk_bin()?);
    cmd.args(["run", "--timeout", "600", "--vsock"])
        .arg(&uds)
        .arg("--initrd")
        .arg(&initrd);
    let (mut husk, _before, rest) = start_until_ready(cmd)?;
    let broker = broker_of(husk.id());
    let checks = (|| -> Result<(), String> {
        // Host to guest: 64 MiB, the guest answers its digest.
        let mut s = connect(&uds, 5000)?;
        let mut data = Data(7);
        let mut buf = vec![0u8; 1 << 16];
        for _ in 0..MIB64 / buf.len() as u64 {
            data.fill(&mut buf);
            s.write_all(&buf)
                .map_err(|e| format!("host to guest: {e}"))?;
        }
        s.shutdown(std::net::Shutdown::Write)
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        BufReader::new(&s)
            .read_line(&mut answer)
            .map_err(|e| format!("the guest's digest: {e}"))?;
        if answer.trim() != expected(MIB64, 7) {
            return Err(format!(
                "host to guest: the guest got {answer:?}, sent {}",
                expected(MIB64, 7)
            ));
        }
        // 100 streams at once, each echoed.
        let streams: Vec<_> = (0..100u64)
            .map(|i| {
                let uds = uds.clone();
                std::thread::spawn(move || -> Result<(), String> {
                    let mut s = connect(&uds, 5001)?;
                    let mut out = vec![0u8; 64 << 10];
                    Data(1000 + i).fill(&mut out);
                    let mut w = s.try_clone().map_err(|e| e.to_string())?;
                    let sent = out.clone();
                    let writer = std::thread::spawn(move || w.write_all(&sent));
                    let mut back = vec![0u8; out.len()];
                    s.read_exact(&mut back)
                        .map_err(|e| format!("stream {i}: {e}"))?;
                    let _ = writer.join();
                    if back != out {
                        return Err(format!("stream {i} came back different"));
                    }
                    Ok(())
                })
            })
            .collect();
        for t in streams {
            t.join().map_err(|_| "a stream thread panicked")??;
        }
        // A host program that leaves while the guest still echoes to it:
        // husk's writes meet a closed socket (EPIPE, never SIGPIPE), the
        // stream is reset, and everything else carries on.
        {
            let mut s = connect(&uds, 5001)?;
            s.set_write_timeout(Some(Duration::from_secs(30)))
                .map_err(|e| e.to_string())?;
            s.write_all(&vec![5u8; 256 << 10])
                .map_err(|e| format!("a stream to leave: {e}"))?;
        }
        std::thread::sleep(Duration::from_millis(500));
        let mut s = connect(&uds, 5000)?;
        s.write_all(b"still here").map_err(|e| e.to_string())?;
        s.shutdown(std::net::Shutdown::Write)
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        BufReader::new(&s)
            .read_line(&mut answer)
            .map_err(|e| format!("after a host program left: {e}"))?;
        if !answer.starts_with("10 ") {
            return Err(format!(
                "after a host program left, the sink said {answer:?}"
            ));
        }
        // A port nobody listens on: the stream ends without an OK.
        if connect(&uds, 7777).is_ok() {
            return Err("a port nobody listens on answered OK".into());
        }
        // Guest to host: 64 MiB to the host's listener on port 6000.
        let got = sink.join().map_err(|_| "the host sink panicked")??;
        if got != expected(MIB64, 42) {
            return Err(format!(
                "guest to host: the host got {got}, the guest sent {}",
                expected(MIB64, 42)
            ));
        }
        Ok(())
    })();
    let _ = husk.kill();
    let _ = husk.wait();
    let out = rest.join().unwrap_or_default();
    checks.map_err(|e| format!("{e}\nthe guest printed:\n{out}"))?;
    if !out.contains(&format!("sent {}", expected(MIB64, 42))) {
        return Err(format!("the guest did not finish sending:\n{out}").into());
    }
    if broker.len() != 1 {
        return Err(format!("husk should have started one broker, saw {broker:?}").into());
    }
    if !gone(broker[0]) {
        return Err(format!("the broker ({}) outlived kill -9 of husk", broker[0]).into());
    }
    if !removed(&uds) {
        return Err(format!("{} is left after kill -9 of husk", uds.display()).into());
    }
    Ok(())
}

fn guest_exits_mid_transfer() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let uds = dir.path().join("vm.sock");
    let sink = host_sink(UnixListener::bind(dir.path().join("vm.sock_6000"))?);
    // A host program that reads 1 MiB and leaves while the guest still
    // sends: husk's next writes meet a closed socket.
    let leaver = UnixListener::bind(dir.path().join("vm.sock_6001"))?;
    let leaver = std::thread::spawn(move || -> Result<(), String> {
        let (mut s, _) = leaver.accept().map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1 << 20];
        s.read_exact(&mut buf).map_err(|e| e.to_string())
    });
    let initrd = initramfs(
        dir.path(),
        "husk-stream send 6000 1099511627776 1 &\nhusk-stream send 6001 1099511627776 2 &\n\
         sleep 3\nhusk-report 0\nreboot -f",
    )?;
    // Unjailed, where SIGPIPE would end husk (a jailed VMM is its PID
    // namespace's init, which ignores it).
    let run = boot_tests::husk::husk_run(
        &[
            "--no-jail",
            "--timeout",
            "120",
            "--vsock",
            uds.to_str().ok_or("a UTF-8 temp path")?,
            "--initrd",
            initrd.to_str().ok_or("a UTF-8 temp path")?,
        ],
        b"",
        Duration::from_secs(180),
    )?;
    if run.code != Some(0) {
        return Err(run
            .explain("the guest should power off with status 0")
            .into());
    }
    leaver
        .join()
        .map_err(|_| "the leaving host program panicked")?
        .map_err(|e| format!("the leaving host program read nothing: {e}"))?;
    // The host's end sees the stream end (a reset) rather than hanging.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sink.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !sink.is_finished() {
        return Err("the host's stream is still open after the VM ended".into());
    }
    match sink.join().map_err(|_| "the host sink panicked")? {
        Err(e) if e.contains("after 0 bytes") => {
            return Err(format!("nothing arrived before the guest stopped: {e}").into())
        }
        Ok(summary) if summary.starts_with("0 ") => {
            return Err("nothing arrived before the guest stopped".into())
        }
        _ => {}
    }
    if !removed(&uds) {
        return Err(format!("{} is left after the VM ended", uds.display()).into());
    }
    Ok(())
}
