//! Starting processes: the command a held guest waits for, and any other
//! the host asks for, each a child of init under the appliance's
//! configuration and the request's overrides.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::process::Stdio;

use agent::{ErrorKind, Process, Response, MAIN};

use super::{error, Agent, Answer, Main, NewCgroup, PidNs, Proc, MAX_PROCESSES};
use crate::{cgroup, container, pidns, sys};

impl Agent {
    /// Starts the command a held guest waits for, as process [`MAIN`].
    /// A command that cannot start ends the guest with its status.
    pub(super) fn start_main(&self, spec: &Process) -> Answer {
        if self.lock().main != Main::Held {
            return Err(error(
                ErrorKind::BadRequest,
                "this guest was not booted to hold its command (husk run --hold), \
                 or its command already started",
            ));
        }
        let answer = self.start(spec, true);
        if let Err((ErrorKind::StartFailed { status }, _)) = &answer {
            self.lock().main = Main::Failed(*status);
            self.changed.notify_all();
            self.wake_init();
        }
        answer
    }

    /// init's main loop waits in `sigwaitinfo`: a SIGCHLD makes it look
    /// at the command's state again.
    pub(super) fn wake_init(&self) {
        let _ = sys::signal(std::process::id() as libc::pid_t, libc::SIGCHLD);
    }

    /// Starts `spec` as a child of init, with the appliance's
    /// configuration under the request's overrides; as the appliance's
    /// command ([`MAIN`]) when `main`.
    pub(super) fn start(&self, spec: &Process, main: bool) -> Answer {
        if spec.argv.is_empty() {
            return Err(error(ErrorKind::BadRequest, "argv is empty"));
        }
        let mut config = self.config().clone();
        for e in &spec.env {
            config
                .set_env(e)
                .map_err(|e| error(ErrorKind::BadRequest, e.to_string()))?;
        }
        if spec.user.is_some() {
            config.user.clone_from(&spec.user);
        }
        if spec.cwd.is_some() {
            config.workdir.clone_from(&spec.cwd);
        }
        let failed =
            |f: crate::Failure| error(ErrorKind::StartFailed { status: f.status }, f.message);
        let setup_failed = |what: &str, e: io::Error| {
            error(
                ErrorKind::StartFailed {
                    status: crate::STATUS_SETUP_FAILED,
                },
                format!("{what}: {e}"),
            )
        };
        if spec.cgroup.is_some() && (spec.container.is_some() || spec.within.is_some()) {
            return Err(error(
                ErrorKind::BadRequest,
                "only a process in the guest's root takes a cgroup of its own",
            ));
        }
        let own_ns_allowed = match spec.pid_ns {
            agent::PidNamespace::Guest => true,
            agent::PidNamespace::Own => spec.container.is_some() || spec.cgroup.is_some(),
            agent::PidNamespace::Of(_) => spec.container.is_some(),
        };
        if !own_ns_allowed {
            return Err(error(
                ErrorKind::BadRequest,
                "only a new container, or a process with a cgroup of its own, takes a PID namespace",
            ));
        }
        let mut owned_cgroup = None;
        // The PID namespace its process is born in: the guest's unless
        // it is a container's.
        let mut pid_ns = PidNs::Guest;
        let (root, entry) = match (&spec.container, spec.within) {
            (Some(_), Some(_)) => {
                return Err(error(
                    ErrorKind::BadRequest,
                    "a process is either a new container or within one, not both",
                ))
            }
            (Some(c), None) => {
                pid_ns = match spec.pid_ns {
                    agent::PidNamespace::Guest => PidNs::Guest,
                    agent::PidNamespace::Own => PidNs::New,
                    agent::PidNamespace::Of(id) => PidNs::Join(
                        pidns::pid_ns_of(self.running_pid(id)?)
                            .map_err(|e| setup_failed("the PID namespace to share", e))?,
                    ),
                };
                let new =
                    container::NewRoot::prepare(c).map_err(|e| setup_failed("container", e))?;
                let (path, procs) = cgroup::create(&c.resources)
                    .map_err(|e| setup_failed("the container's cgroup", e))?;
                owned_cgroup = Some(path);
                (
                    std::path::PathBuf::from(&c.root),
                    Some(container::Entry::new(new).in_cgroup(procs)),
                )
            }
            (None, Some(id)) => {
                let pid = self.running_pid(id)?;
                let mut entry =
                    container::join(pid).map_err(|e| setup_failed("the container", e))?;
                // Its PID namespace too (the guest's own, for a container
                // in the guest's).
                pid_ns = PidNs::Join(
                    pidns::pid_ns_of(pid).map_err(|e| setup_failed("the container", e))?,
                );
                // A container the agent made has a cgroup to join.
                if let Ok(procs) = cgroup::procs_of(pid) {
                    entry = entry.in_cgroup(procs);
                }
                (format!("/proc/{pid}/root").into(), Some(entry))
            }
            (None, None) => match &spec.cgroup {
                Some(limits) => {
                    let (path, procs) = cgroup::create(limits)
                        .map_err(|e| setup_failed("the container's cgroup", e))?;
                    owned_cgroup = Some(path);
                    let own = spec.pid_ns == agent::PidNamespace::Own;
                    if own {
                        pid_ns = PidNs::New;
                    }
                    ("/".into(), Some(container::Entry::here(procs, own)))
                }
                // The command's cgroup, when it is a container's, and its
                // namespaces when it has its own.
                None => {
                    let (entry, ns) = self
                        .command_entry()
                        .map_err(|e| setup_failed("the command's container", e))?;
                    pid_ns = ns;
                    ("/".into(), entry)
                }
            },
        };
        // Removed again if the process does not start.
        let owned_cgroup = NewCgroup(owned_cgroup);
        // A container's process makes its working directory, as runc does.
        let mut prepared =
            crate::Prepared::new_in(&root, &config, &spec.argv, entry.is_some()).map_err(failed)?;
        prepared.restrict(
            &spec.groups,
            container::Restrictions {
                rlimits: spec.rlimits.clone(),
                capabilities: spec.capabilities,
                no_new_privileges: spec.no_new_privileges,
                seccomp: spec.seccomp.clone(),
            },
        );
        let mut command = prepared.command_entering(entry);
        let mut proc = Proc::new(0);
        let io_failed = |e: io::Error| error(ErrorKind::Failed, format!("stdio: {e}"));
        if spec.tty {
            let (master, slave) =
                sys::open_pty(spec.size.map(|s| (s.rows, s.cols))).map_err(io_failed)?;
            command
                .stdin(slave.try_clone().map_err(io_failed)?)
                .stdout(slave.try_clone().map_err(io_failed)?)
                .stderr(slave);
            proc.tty = Some(master);
        } else if spec.detached {
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            proc.detached = true;
        } else {
            command
                .stdin(if spec.stdin {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        let mut table = self.lock();
        if main && table.main != Main::Held {
            return Err(error(ErrorKind::BadRequest, "the command already started"));
        }
        if table.procs.len() >= MAX_PROCESSES {
            return Err(error(
                ErrorKind::Busy,
                format!("{MAX_PROCESSES} processes not yet waited for"),
            ));
        }
        // Spawned under the table's lock: init's reaper takes it too, so
        // it cannot collect this child (or std's own wait for a child that
        // failed to exec) before the child is in the table.
        let born_in = match &pid_ns {
            PidNs::Guest => None,
            PidNs::New => Some(pidns::BornIn::new_ns()),
            PidNs::Join(ns) => Some(pidns::BornIn::join(ns)),
        }
        .transpose()
        .map_err(|e| setup_failed("the container's PID namespace", e))?;
        let mut child = command
            .spawn()
            .map_err(|e| failed(crate::spawn_failure(&spec.argv[0], &e)))?;
        drop(born_in);
        proc.pid = child.id() as libc::pid_t;
        proc.cgroup = owned_cgroup.keep();
        proc.stdin = child.stdin.take().map(|p| File::from(OwnedFd::from(p)));
        proc.stdout = child.stdout.take().map(|p| File::from(OwnedFd::from(p)));
        proc.stderr = child.stderr.take().map(|p| File::from(OwnedFd::from(p)));
        let id = if main {
            table.main = Main::Running;
            MAIN
        } else {
            let id = table.next_id;
            table.next_id = table.next_id.checked_add(1).unwrap_or(MAIN + 1);
            id
        };
        let pid = proc.pid;
        table.procs.insert(id, proc);
        self.changed.notify_all();
        Ok(Response::Started { id, pid })
    }
}
