//! Logging binaries: containerd's `binary:///PATH?KEY=VALUE` output URI
//! (`ctr run --log-uri`, nerdctl's and docker's log drivers), with the
//! contract runc's shim keeps: the program started with the URI's query as
//! arguments (`KEY VALUE`, in the URI's order), only `CONTAINER_ID` and
//! `CONTAINER_NAMESPACE` in its environment, the process's output on fd 3,
//! its error output on fd 4, and fd 5 to close (or write a byte to) once it
//! is ready. When the process ends its pipes close; the logger then has a
//! moment to finish on its own, then SIGTERM and 12 s, as runc's shim gives
//! it, then SIGKILL.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// How long a logger may take to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// How long a logger whose pipes closed may take to end by itself.
const DRAIN_WITHIN: Duration = Duration::from_secs(2);
/// How long it may take after SIGTERM (runc's shim's figure).
const TERM_WITHIN: Duration = Duration::from_secs(12);

/// A `binary://` URI read: the program and its arguments.
#[derive(Debug, PartialEq, Eq)]
pub struct BinaryUri {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl BinaryUri {
    /// Reads `uri` when it is a `binary://` one (None otherwise).
    pub fn parse(uri: &str) -> Option<anyhow::Result<BinaryUri>> {
        let rest = uri.strip_prefix("binary://")?;
        Some(Self::parse_rest(rest).with_context(|| format!("log URI {uri:?}")))
    }

    fn parse_rest(rest: &str) -> anyhow::Result<BinaryUri> {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let path = path.split_once('#').map_or(path, |(p, _)| p);
        let program = PathBuf::from(unescape(path, false)?);
        if !program.is_absolute() || program.as_os_str().len() < 2 {
            anyhow::bail!("the logging binary must be an absolute path (binary:///PATH)");
        }
        let query = query.split_once('#').map_or(query, |(q, _)| q);
        let mut args = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            args.push(unescape(key, true)?);
            let value = unescape(value, true)?;
            if !value.is_empty() {
                args.push(value);
            }
        }
        Ok(BinaryUri { program, args })
    }

    /// The program is there and may be run: checked when a task is
    /// created, so a wrong URI fails there and not at its start.
    pub fn check(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&self.program)
            .with_context(|| format!("the logging binary {}", self.program.display()))?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            anyhow::bail!(
                "the logging binary {} is not an executable file",
                self.program.display()
            );
        }
        Ok(())
    }
}

/// Percent-decoding, as URIs are read (`+` is a space in a query).
fn unescape(text: &str, query: bool) -> anyhow::Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .with_context(|| format!("a bad escape in {text:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' if query => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).with_context(|| format!("{text:?} is not UTF-8 once decoded"))
}

/// A running logging binary.
pub struct Logger {
    child: Option<Child>,
    program: PathBuf,
}

impl Logger {
    /// Starts the logger of `uri` for the process `id` of containerd's
    /// `namespace` and waits until it is ready; returns it with the write
    /// ends of its output and error pipes.
    pub fn start(
        uri: &BinaryUri,
        id: &str,
        namespace: &str,
    ) -> anyhow::Result<(Logger, io::PipeWriter, io::PipeWriter)> {
        Self::start_within(uri, id, namespace, READY_WITHIN)
    }

    fn start_within(
        uri: &BinaryUri,
        id: &str,
        namespace: &str,
        ready_within: Duration,
    ) -> anyhow::Result<(Logger, io::PipeWriter, io::PipeWriter)> {
        let (out_r, out_w) = io::pipe()?;
        let (err_r, err_w) = io::pipe()?;
        let (mut ready_r, ready_w) = io::pipe()?;
        // Above 5, so that placing one on 3, 4 or 5 in the child cannot
        // overwrite another not placed yet.
        let given = [high(&out_r)?, high(&err_r)?, high(&ready_w)?];
        let fds: [RawFd; 3] = [
            given[0].as_raw_fd(),
            given[1].as_raw_fd(),
            given[2].as_raw_fd(),
        ];
        let mut command = Command::new(&uri.program);
        command
            .args(&uri.args)
            .env_clear()
            .env("CONTAINER_ID", id)
            .env("CONTAINER_NAMESPACE", namespace)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: the closure runs in the child between fork and exec and
        // calls only dup2, which is async-signal-safe; the descriptors it
        // reads are the parent's, open until spawn returns (`given` lives
        // past it), and dup2's copies are not close-on-exec.
        unsafe {
            command.pre_exec(move || {
                for (to, from) in (3..).zip(fds) {
                    if libc::dup2(from, to) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command.spawn().with_context(|| {
            format!("cannot start the logging binary {}", uri.program.display())
        })?;
        drop((given, out_r, err_r, ready_w));
        let mut logger = Logger {
            child: Some(child),
            program: uri.program.clone(),
        };
        // Ready: a byte, or fd 5 closed.
        if !readable_within(&ready_r, ready_within)? {
            logger.finish();
            anyhow::bail!(
                "the logging binary {} was not ready within {} s",
                uri.program.display(),
                ready_within.as_secs()
            );
        }
        let _ = ready_r.read(&mut [0u8; 1]);
        // One that failed at once is an error here when its end is
        // already known (else finish says it).
        if let Some(child) = logger.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                logger.child = None;
                anyhow::bail!(
                    "the logging binary {} ended before the process started ({status})",
                    uri.program.display()
                );
            }
        }
        Ok((logger, out_w, err_w))
    }

    /// Waits for the logger to end once its pipes are closed (every write
    /// end dropped): a moment on its own, then SIGTERM, then SIGKILL. A
    /// logger that failed is said in the shim's log; its status is
    /// returned (None when it was already waited for).
    pub fn finish(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let status = match ended_within(&mut child, DRAIN_WITHIN) {
            Some(status) => status,
            None => {
                // SAFETY: kill(2) of our own child, not reaped yet (its
                // pid cannot have been reused); no memory passed.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                match ended_within(&mut child, TERM_WITHIN) {
                    Some(status) => status,
                    None => {
                        log::warn!(
                            "the logging binary {} did not end after SIGTERM: killed",
                            self.program.display()
                        );
                        let _ = child.kill();
                        child.wait().ok()?
                    }
                }
            }
        };
        if !status.success() {
            log::warn!(
                "the logging binary {} ended with {status}",
                self.program.display()
            );
        }
        Some(status)
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// A copy of `fd` numbered 10 or more, closed on exec.
fn high(fd: &impl AsFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl duplicates a descriptor the caller holds open; no
    // memory passed.
    let copy = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `copy` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// Whether `fd` has something to read (or its writers closed) in time.
fn readable_within(fd: &impl AsFd, within: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + within;
    loop {
        let mut p = libc::pollfd {
            fd: fd.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one pollfd on the stack, alive for the call.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n >= 0 {
            return Ok(n > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn ended_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// The parent folder of a `file://` log, made as runc's shim makes it.
pub fn file_target(uri: &str) -> Option<anyhow::Result<PathBuf>> {
    let rest = uri.strip_prefix("file://")?;
    Some((|| {
        let path = rest.split_once('?').map_or(rest, |(p, _)| p);
        let path = PathBuf::from(unescape(path, false)?);
        if !path.is_absolute() {
            anyhow::bail!("log URI {uri:?}: the log file must be an absolute path (file:///PATH)");
        }
        if let Some(parent) = path.parent().filter(|p| p != &Path::new("/")) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot make {}", parent.display()))?;
        }
        Ok(path)
    })())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn uri(text: &str) -> BinaryUri {
        BinaryUri::parse(text)
            .expect("a binary URI")
            .expect("valid")
    }

    #[test]
    fn a_binary_uri_gives_the_program_and_its_query_as_arguments_in_order() {
        assert_eq!(
            uri("binary:///usr/bin/my%20logger?--dir=/var/log/a%20b&-v&level=debug+2"),
            BinaryUri {
                program: "/usr/bin/my logger".into(),
                args: vec![
                    "--dir".into(),
                    "/var/log/a b".into(),
                    "-v".into(),
                    "level".into(),
                    "debug 2".into()
                ],
            }
        );
        assert_eq!(uri("binary:///bin/l").args, Vec::<String>::new());
        assert!(BinaryUri::parse("/run/fifo").is_none());
        assert!(BinaryUri::parse("file:///log").is_none());
        for bad in [
            "binary://relative/logger",
            "binary://",
            "binary:///",
            "binary:///bin/l?x=%zz",
            "binary:///bin/%ff",
        ] {
            let e = BinaryUri::parse(bad).unwrap().unwrap_err();
            assert!(format!("{e:#}").contains("log URI"), "{bad}: {e:#}");
        }
    }

    #[test]
    fn check_refuses_what_cannot_be_run() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        let missing = BinaryUri {
            program: dir.path().join("missing"),
            args: vec![],
        };
        assert!(format!("{:#}", missing.check().unwrap_err()).contains("missing"));
        for program in [plain, dir.path().to_path_buf()] {
            let e = BinaryUri {
                program,
                args: vec![],
            }
            .check()
            .unwrap_err();
            assert!(e.to_string().contains("not an executable file"), "{e}");
        }
        let ok = script(dir.path(), "ok", "exit 0");
        BinaryUri {
            program: ok,
            args: vec![],
        }
        .check()
        .unwrap();
    }

    #[test]
    fn a_logger_gets_both_outputs_its_arguments_and_only_the_two_variables() {
        let dir = tempfile::tempdir().unwrap();
        let program = script(
            dir.path(),
            "logger",
            "out=\"$2\"\n\
             /usr/bin/env > \"$out/env\"\n\
             echo \"$#:$1\" > \"$out/args\"\n\
             exec 5>&-\n\
             /bin/cat <&3 > \"$out/stdout\" &\n\
             /bin/cat <&4 > \"$out/stderr\"\n\
             wait",
        );
        let text = format!(
            "binary://{}?dir={}",
            program.display(),
            dir.path().display()
        );
        let (mut logger, mut out, mut err) = Logger::start(&uri(&text), "c1", "k8s.io").unwrap();
        out.write_all(b"to stdout\n").unwrap();
        err.write_all(b"to stderr\n").unwrap();
        drop((out, err));
        let started = Instant::now();
        assert!(logger.finish().is_some_and(|s| s.success()));
        assert!(started.elapsed() < DRAIN_WITHIN, "it ended by itself");
        assert!(logger.finish().is_none(), "waited for once");
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(read("stdout"), "to stdout\n");
        assert_eq!(read("stderr"), "to stderr\n");
        assert_eq!(read("args"), "2:dir\n");
        let mut env: Vec<String> = read("env")
            .lines()
            .filter(|l| !l.starts_with("PWD="))
            .map(str::to_string)
            .collect();
        env.sort();
        assert_eq!(env, ["CONTAINER_ID=c1", "CONTAINER_NAMESPACE=k8s.io"]);
    }

    #[test]
    fn a_logger_that_ends_at_once_or_is_never_ready_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        // Its end is seen at the start when it is complete by then (the
        // usual case), else when the process's output is done.
        let failing = script(dir.path(), "failing", "exit 3");
        match Logger::start(&uri(&format!("binary://{}", failing.display())), "c", "n") {
            Err(e) => {
                assert!(
                    e.to_string().contains("ended before the process started"),
                    "{e}"
                );
                assert!(e.to_string().contains("exit status: 3"), "{e}");
            }
            Ok((mut logger, out, err)) => {
                drop((out, err));
                assert_eq!(logger.finish().and_then(|s| s.code()), Some(3));
            }
        }

        let slow = script(dir.path(), "slow", "exec /bin/sleep 30");
        let started = Instant::now();
        let e = Logger::start_within(
            &uri(&format!("binary://{}", slow.display())),
            "c",
            "n",
            Duration::from_millis(300),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("was not ready"), "{e}");
        // Ended by SIGTERM after its moment, not waited for 30 s.
        assert!(started.elapsed() < DRAIN_WITHIN + Duration::from_secs(5));

        let e = Logger::start(
            &BinaryUri {
                program: dir.path().join("missing"),
                args: vec![],
            },
            "c",
            "n",
        )
        .err()
        .unwrap();
        assert!(
            e.to_string().contains("cannot start the logging binary"),
            "{e}"
        );
    }

    #[test]
    fn a_logger_that_ignores_the_end_of_its_input_gets_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("termed");
        let program = script(
            dir.path(),
            "stubborn",
            &format!(
                "trap 'echo > {}; exit 0' TERM\nexec 5>&-\nwhile :; do /bin/sleep 0.1; done",
                mark.display()
            ),
        );
        let (mut logger, out, err) =
            Logger::start(&uri(&format!("binary://{}", program.display())), "c", "n").unwrap();
        drop((out, err));
        assert!(logger.finish().is_some_and(|s| s.success()));
        assert!(mark.exists(), "SIGTERM reached it");
    }

    #[test]
    fn a_file_uri_must_be_absolute_and_gets_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a/b/c.log");
        let got = file_target(&format!("file://{}", log.display()))
            .unwrap()
            .unwrap();
        assert_eq!(got, log);
        assert!(dir.path().join("a/b").is_dir());
        assert!(file_target("file://rel/c.log").unwrap().is_err());
        assert!(file_target("/run/fifo").is_none());
    }
}
