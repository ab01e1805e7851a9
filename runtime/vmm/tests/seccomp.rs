//! The seccomp policies, each in a child process of this test binary
//! (filters cannot be removed once installed): allowed work goes through,
//! a forbidden call ends the process with SIGSYS after husk names it.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode};

use vmm::seccomp::{rules, Filters, SeccompMode, ThreadKind};

const CASE: &str = "HUSK_SECCOMP_CASE";

fn main() -> ExitCode {
    if let Ok(case) = std::env::var(CASE) {
        child(&case);
        return ExitCode::SUCCESS;
    }
    for kind in ThreadKind::ALL {
        let list = rules(kind);
        eprintln!(
            "{} thread: {} system calls allowed: {}",
            kind.name(),
            list.len(),
            list.iter()
                .map(|a| syscalls::Sysno::new(a.nr as usize).map_or("?", |s| s.name()))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let cases: [(&str, Option<&str>); 14] = [
        ("vcpu-allowed", None),
        ("vmm-allowed", None),
        ("broker-allowed", None),
        ("hub-allowed", None),
        ("hub-socket", Some("socket")),
        ("hub-open", Some("openat")),
        ("broker-inet-socket", Some("socket")),
        ("broker-open", Some("openat")),
        ("vcpu-execve", Some("execve")),
        ("vcpu-open", Some("openat")),
        ("vcpu-socket", Some("socket")),
        ("vcpu-ioctl-other", Some("ioctl")),
        ("vmm-socket", Some("socket")),
        ("log-mode-lets-through", None),
    ];
    let mut failed = 0;
    for (case, refused) in cases {
        let out = Command::new(std::env::current_exe().unwrap())
            .env(CASE, case)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ok = match refused {
            None => out.status.success(),
            Some(name) => {
                out.status.signal() == Some(libc::SIGSYS)
                    && stderr.contains(&format!("seccomp refused system call {name} ("))
            }
        };
        eprintln!("{case}: {}", if ok { "ok" } else { "FAILED" });
        if !ok {
            failed += 1;
            eprintln!("  status {:?}, stderr:\n{stderr}", out.status);
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs `case` on a thread of the kind it names, under that kind's filter.
fn child(case: &str) {
    let mode = if case.starts_with("log-") {
        SeccompMode::Log
    } else {
        SeccompMode::Kill
    };
    let filters = Filters::build(mode).unwrap().unwrap();
    let kind = if case.starts_with("vmm-") {
        ThreadKind::Vmm
    } else if case.starts_with("broker-") {
        ThreadKind::Broker
    } else if case.starts_with("hub-") {
        ThreadKind::Hub
    } else {
        ThreadKind::Vcpu
    };
    let evt = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
    let path = std::ffi::CString::new("/etc/hostname").unwrap();
    // A hub's world, made before its filter: a listening socket with a
    // member waiting, the network's lock file, its socket file.
    // Only where the case ends well: a refused call leaves no cleanup.
    // The folder stays with this thread: removing it is not the hub's.
    let dir = (case == "hub-allowed").then(|| tempfile::tempdir().unwrap());
    let hub = dir.as_ref().map(|dir| {
        let socket = dir.path().join("hub.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let mut member = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        std::io::Write::write_all(&mut member, b"frame").unwrap();
        let lock = std::fs::File::create(dir.path().join("lock")).unwrap();
        (socket, listener, member, lock)
    });
    let case = case.to_string();
    let work = move || {
        filters.install(kind).unwrap();
        match case.as_str() {
            "vcpu-allowed" | "vmm-allowed" => {
                // What both kinds do: signal an eventfd, take a lock,
                // allocate, log to stderr.
                evt.write(1).unwrap();
                let m = std::sync::Mutex::new(vec![0u8; 1 << 20]);
                m.lock().unwrap().push(1);
                eprintln!("allowed work done");
            }
            "broker-allowed" => {
                // A Unix socket to connect, as the broker makes for each
                // guest connection.
                // SAFETY: plain socket(2); the descriptor is closed.
                let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
                assert!(fd >= 0);
                // SAFETY: closing the descriptor just made.
                unsafe { libc::close(fd) };
                eprintln!("allowed work done");
            }
            "hub-allowed" => {
                // What the hub does: wait, take a member, read its frames,
                // lock, remove its socket file, leave.
                let (socket, listener, member, lock) = hub.expect("the hub's world");
                let mut fd = libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(&listener),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one pollfd we own, for the call.
                assert_eq!(unsafe { libc::poll(&mut fd, 1, 1000) }, 1);
                let (mut stream, _) = listener.accept().unwrap();
                stream.set_nonblocking(true).unwrap();
                let mut buf = [0u8; 5];
                std::io::Read::read_exact(&mut stream, &mut buf).unwrap();
                assert_eq!(&buf, b"frame");
                std::io::Write::write_all(&mut stream, b"frame").unwrap();
                lock.lock().unwrap();
                std::fs::remove_file(&socket).unwrap();
                lock.unlock().unwrap();
                drop((stream, member));
                eprintln!("allowed work done");
            }
            "hub-socket" => {
                // SAFETY: plain socket(2).
                unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
            }
            "hub-open" => {
                // SAFETY: a NUL-terminated path.
                unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
            }
            "broker-inet-socket" => {
                // SAFETY: plain socket(2).
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            }
            "broker-open" => {
                // SAFETY: a NUL-terminated path.
                unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
            }
            "vcpu-execve" => {
                let argv = [path.as_ptr(), std::ptr::null()];
                // SAFETY: valid argv; the call is refused before it runs.
                unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), argv.as_ptr().add(1)) };
            }
            "vcpu-open" => {
                // SAFETY: a NUL-terminated path.
                unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
            }
            "vcpu-socket" | "vmm-socket" => {
                // SAFETY: plain socket(2).
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            }
            "vcpu-ioctl-other" => {
                // SAFETY: termios is plain data; all zeroes is valid.
                let mut t: libc::termios = unsafe { std::mem::zeroed() };
                // SAFETY: TCGETS on stdin into a termios we own.
                unsafe { libc::ioctl(0, libc::TCGETS, &mut t) };
            }
            "log-mode-lets-through" => {
                // SAFETY: a NUL-terminated path.
                let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
                assert!(fd >= 0, "log mode must not refuse");
            }
            other => panic!("unknown case {other}"),
        }
    };
    let name = match kind {
        ThreadKind::Vmm => "vmm",
        ThreadKind::Vcpu => "vcpu0",
        ThreadKind::Broker => "husk-vsock",
        ThreadKind::Hub => "husk-hub",
    };
    std::thread::Builder::new()
        .name(name.into())
        .spawn(work)
        .unwrap()
        .join()
        .unwrap();
    drop(dir);
}
