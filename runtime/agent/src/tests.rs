use super::*;

fn round_trip<T>(message: &T) -> T
where
    T: Serialize + for<'de> Deserialize<'de>,
{
    let frame = encode(message);
    let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 4);
    read(&mut &frame[..]).unwrap().unwrap()
}

#[test]
fn every_request_round_trips() {
    let requests = [
        Request::Ping,
        Request::MainStarted,
        Request::Start {
            process: Process {
                argv: vec!["sleep".into(), "100".into()],
                detached: true,
                ..Process::default()
            },
        },
        Request::Start {
            process: Process {
                argv: vec!["sh".into(), "-c".into(), "echo \"hi\"\n".into()],
                env: vec!["A=b c".into()],
                cwd: Some("/tmp".into()),
                user: Some("1000:1000".into()),
                tty: true,
                size: Some(WindowSize { rows: 24, cols: 80 }),
                stdin: true,
                detached: false,
                container: Some(Container {
                    root: "/pod/web/rootfs".into(),
                    readonly: true,
                    mounts: vec![
                        Mount::Bind {
                            source: "/pod/web/mounts/0".into(),
                            target: "/etc/hosts".into(),
                            readonly: true,
                        },
                        Mount::Tmpfs {
                            target: "/run".into(),
                            options: "mode=755".into(),
                        },
                    ],
                    resources: Resources {
                        memory_max: Some(64 << 20),
                        cpu_quota: Some(50_000),
                        cpu_period: Some(100_000),
                        cpu_weight: Some(100),
                        pids_max: Some(64),
                    },
                }),
                pid_ns: PidNamespace::Of(3),
                within: None,
                groups: vec![10, 27],
                rlimits: vec![Rlimit {
                    resource: 7,
                    soft: 1024,
                    hard: 4096,
                }],
                capabilities: Some(Capabilities {
                    bounding: 0x8004_05fb,
                    effective: 1 << 10,
                    permitted: 1 << 10,
                    inheritable: 0,
                    ambient: 1 << 10,
                }),
                no_new_privileges: true,
                seccomp: vec![vec![
                    pack_bpf(0x20, 0, 0, 4),
                    pack_bpf(0x15, 1, 0, 0xc000_003e),
                ]],
                cgroup: None,
            },
        },
        Request::StartMain {
            process: Process {
                argv: vec!["/bin/sh".into()],
                env: vec!["PATH=/bin".into()],
                within: Some(3),
                ..Process::default()
            },
        },
        Request::StartMain {
            process: Process {
                argv: vec!["/bin/true".into()],
                cgroup: Some(Resources {
                    pids_max: Some(crate::NO_LIMIT),
                    ..Resources::default()
                }),
                ..Process::default()
            },
        },
        Request::Attach {
            id: 7,
            stream: Stream::Stderr,
        },
        Request::Signal { id: 0, signal: 15 },
        Request::Wait { id: u32::MAX },
        Request::CloseStdin { id: 3 },
        Request::Resize {
            id: 3,
            size: WindowSize {
                rows: 50,
                cols: 132,
            },
        },
        Request::Info,
        Request::SetTime {
            secs: 1_800_000_000,
            nanos: 999_999_999,
        },
        Request::Reseed {
            seed: vec![0, 7, 255],
        },
        Request::ProbeTcp { port: 8080 },
        Request::Stats { id: 4 },
        Request::Usage,
        Request::Processes,
        Request::CopyOut {
            path: "/data/.".into(),
            contents: true,
        },
        Request::CopyIn {
            path: "/srv/".into(),
            contents: false,
            owners: true,
        },
        Request::Update {
            id: 4,
            resources: Resources {
                memory_max: Some(1 << 30),
                ..Resources::default()
            },
        },
        Request::Shutdown {
            grace_ms: 10_000,
            signal: None,
        },
        Request::Shutdown {
            grace_ms: 0,
            signal: Some(3),
        },
    ];
    for r in &requests {
        assert_eq!(&round_trip(r), r);
    }
}

#[test]
fn every_response_round_trips() {
    let responses = [
        Response::Ok,
        Response::Pong,
        Response::Started { id: 1, pid: 42 },
        Response::Exited {
            status: ExitStatus::Code(3),
        },
        Response::Exited {
            status: ExitStatus::Signal(9),
        },
        Response::Usage(Usage {
            memory_total: 128 << 20,
            memory_available: 100 << 20,
            net_rx: 1,
            net_tx: u64::MAX,
            block_read: 512,
            block_write: 0,
            pids: 3,
        }),
        Response::Processes {
            processes: vec![GuestProcess {
                pid: 1,
                ppid: 0,
                user: "root".into(),
                state: "S".into(),
                rss: 1 << 20,
                cpu_ms: 20,
                elapsed_ms: 5_000,
                command: "/.husk/init".into(),
            }],
        },
        Response::Info(GuestInfo {
            hostname: "web".into(),
            uptime_ms: 1234,
            addresses: vec!["eth0 10.0.2.15/24".into()],
            processes: 2,
        }),
        Response::Stats(CgroupStats {
            memory_current: 3 << 20,
            memory_max: None,
            memory_peak: Some(4 << 20),
            memory_stat: [("anon".to_string(), 1 << 20), ("file".to_string(), 2 << 20)].into(),
            memory_events: [("oom_kill".to_string(), 0)].into(),
            cpu_stat: [("usage_usec".to_string(), 1234)].into(),
            pids_current: 2,
            pids_max: Some(64),
        }),
        Response::Error {
            kind: ErrorKind::StartFailed { status: 127 },
            message: "nope: command not found".into(),
        },
        Response::Error {
            kind: ErrorKind::NoSuchProcess,
            message: String::new(),
        },
    ];
    for r in &responses {
        assert_eq!(&round_trip(r), r);
    }
}

#[test]
fn the_wire_form_is_the_documented_one() {
    let frame = encode(&Request::Signal { id: 2, signal: 9 });
    let json = r#"{"v":1,"op":"signal","id":2,"signal":9}"#;
    assert_eq!(frame[..4], (json.len() as u32).to_le_bytes());
    assert_eq!(std::str::from_utf8(&frame[4..]).unwrap(), json);
}

#[test]
fn frames_follow_each_other_and_a_clean_end_is_none() {
    let mut wire = encode(&Request::Ping);
    wire.extend(encode(&Request::Info));
    let mut r = &wire[..];
    assert_eq!(read::<Request>(&mut r).unwrap(), Some(Request::Ping));
    assert_eq!(read::<Request>(&mut r).unwrap(), Some(Request::Info));
    assert_eq!(read::<Request>(&mut r).unwrap(), None);
}

#[test]
fn a_cut_frame_is_truncated() {
    let frame = encode(&Request::Info);
    for cut in 1..frame.len() {
        let err = read::<Request>(&mut &frame[..cut]).unwrap_err();
        assert!(matches!(err, FrameError::Truncated), "cut at {cut}: {err}");
    }
}

#[test]
fn a_huge_length_is_refused_before_reading_it() {
    let wire = u32::MAX.to_le_bytes();
    assert!(matches!(
        read::<Request>(&mut &wire[..]),
        Err(FrameError::TooLarge(n)) if n == u32::MAX as usize
    ));
}

#[test]
fn another_version_is_named() {
    let body = br#"{"v":2,"op":"ping"}"#;
    assert!(matches!(
        decode::<Request>(body),
        Err(FrameError::Version(2))
    ));
    let body = br#"{"op":"ping"}"#;
    assert!(matches!(decode::<Request>(body), Err(FrameError::Json(_))));
}

#[test]
fn unknown_ops_and_fields_are_refused() {
    for body in [
        &br#"{"v":1,"op":"format_disk"}"#[..],
        br#"{"v":1,"op":"wait","id":1,"extra":true}"#,
        br#"{"v":1,"op":"wait","id":-1}"#,
        br#"{"v":1,"op":"start","process":{"argv":["x"],"privileged":true}}"#,
        b"\xff\xfe",
        b"",
    ] {
        assert!(decode::<Request>(body).is_err(), "{body:?}");
    }
}

#[test]
fn shell_codes() {
    assert_eq!(ExitStatus::Code(0).shell_code(), 0);
    assert_eq!(ExitStatus::Code(255).shell_code(), 255);
    assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
    assert_eq!(ExitStatus::Signal(15).shell_code(), 143);
}

#[test]
fn call_sends_and_reads() {
    struct Pipe {
        sent: Vec<u8>,
        answer: std::io::Cursor<Vec<u8>>,
    }
    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.answer.read(buf)
        }
    }
    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.sent.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut pipe = Pipe {
        sent: Vec::new(),
        answer: std::io::Cursor::new(encode(&Response::Pong)),
    };
    assert_eq!(call(&mut pipe, &Request::Ping).unwrap(), Response::Pong);
    assert_eq!(pipe.sent, encode(&Request::Ping));
}

#[test]
fn bpf_instructions_pack_and_unpack() {
    for (code, jt, jf, k) in [
        (0x06, 0, 0, 0x7fff_0000),
        (0x15, 255, 7, u32::MAX),
        (0, 0, 0, 0),
    ] {
        assert_eq!(unpack_bpf(pack_bpf(code, jt, jf, k)), (code, jt, jf, k));
    }
}

#[test]
fn a_process_in_the_guests_pid_namespace_says_nothing_of_it() {
    let process = |pid_ns| Process {
        argv: vec!["x".into()],
        pid_ns,
        ..Default::default()
    };
    let json = |p: &Process| serde_json::to_string(p).unwrap();
    // The wire form from before PID namespaces, unchanged.
    assert!(!json(&process(PidNamespace::Guest)).contains("pid_ns"));
    assert_eq!(
        serde_json::from_str::<Process>(r#"{"argv":["x"]}"#)
            .unwrap()
            .pid_ns,
        PidNamespace::Guest
    );
    assert!(json(&process(PidNamespace::Own)).contains(r#""pid_ns":"Own""#));
    assert!(json(&process(PidNamespace::Of(7))).contains(r#""pid_ns":{"Of":7}"#));
    assert!(serde_json::from_str::<Process>(r#"{"argv":["x"],"pid_ns":"Host"}"#).is_err());
}
