//! The Task service containerd calls over ttrpc: the containers of one
//! pod, their processes (each container's init and its execs), and the
//! events containerd expects, in its order.
//!
//! A process is started through the guest agent; a thread of its own
//! waits for it on the agent (the process's output relayed to its end
//! first), records how it ended and publishes TaskExit. When the pod's VM
//! ends on its own (its VMM killed), every process still running is
//! reported ended with status 255.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use containerd_shim::api;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Context, ExitSignal, TtrpcResult};
use oci_spec::runtime::Spec;

use super::cgroup;
use super::io::Stdio;
use super::pod::{self, Pod};
use crate::oci::bundle;
use agent::{Request, Response};

mod task;

/// The status a process is given when its VM ended under it.
const VM_GONE: u32 = 255;
/// CRI's annotations: which pod a container is in, and whether it is the
/// pod's sandbox (its first container, which boots the VM).
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Created,
    Running,
    Stopped,
}

/// A container's init or one of its execs.
struct Proc {
    stdio: Stdio,
    process: agent::Process,
    state: Mutex<ProcState>,
    ended: Condvar,
}

struct ProcState {
    status: Status,
    /// Its id with the guest agent, once started.
    agent_id: Option<u32>,
    exit: Option<(u32, Timestamp)>,
}

impl Proc {
    fn new(stdio: Stdio, process: agent::Process) -> Arc<Self> {
        Arc::new(Proc {
            stdio,
            process,
            state: Mutex::new(ProcState {
                status: Status::Created,
                agent_id: None,
                exit: None,
            }),
            ended: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ProcState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the end (once); false when it had ended already.
    fn end(&self, status: u32) -> bool {
        let mut s = self.lock();
        if s.status == Status::Stopped {
            return false;
        }
        s.status = Status::Stopped;
        s.exit = Some((status, now()));
        self.ended.notify_all();
        true
    }

    fn wait(&self) -> (u32, Timestamp) {
        let mut s = self.lock();
        loop {
            if let Some(exit) = &s.exit {
                return exit.clone();
            }
            s = self.ended.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

struct Container {
    bundle: String,
    init: Arc<Proc>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
    /// This container booted the pod's VM: deleting it ends the VM.
    booted_pod: bool,
    /// Paused: its cgroup in the guest frozen, with every process in it.
    paused: Mutex<bool>,
    /// It shares the pod sandbox's PID namespace.
    pod_pids: bool,
}

pub struct Inner {
    namespace: String,
    exit: Arc<ExitSignal>,
    publisher: RemotePublisher,
    pod: Mutex<Option<Arc<Pod>>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Pods being stopped (their teardown threads).
    stopping: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

#[derive(Clone)]
pub struct Service(Arc<Inner>);

impl Service {
    pub fn new(namespace: String, exit: Arc<ExitSignal>, publisher: RemotePublisher) -> Self {
        Service(Arc::new(Inner {
            namespace,
            exit,
            publisher,
            pod: Mutex::new(None),
            containers: Mutex::new(HashMap::new()),
            stopping: Mutex::new(Vec::new()),
        }))
    }
}

fn now() -> Timestamp {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = t.as_secs() as i64;
    ts.nanos = t.subsec_nanos() as i32;
    ts
}

fn status(code: Code, message: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

fn failed(e: anyhow::Error) -> ttrpc::Error {
    status(Code::UNKNOWN, format!("{e:#}"))
}

fn unsupported(what: &str) -> ttrpc::Error {
    status(Code::UNIMPLEMENTED, format!("husk: {what}"))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
        {
            log::warn!("cannot publish {topic}: {e}");
        }
    }

    fn container(&self, id: &str) -> TtrpcResult<Arc<Container>> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| status(Code::NOT_FOUND, format!("container {id} does not exist")))
    }

    fn process(&self, id: &str, exec_id: &str) -> TtrpcResult<(Arc<Container>, Arc<Proc>)> {
        let c = self.container(id)?;
        if exec_id.is_empty() {
            let init = c.init.clone();
            return Ok((c, init));
        }
        let p = lock(&c.execs).get(exec_id).cloned().ok_or_else(|| {
            status(
                Code::NOT_FOUND,
                format!("exec {exec_id} of container {id} does not exist"),
            )
        })?;
        Ok((c, p))
    }

    fn pod(&self) -> TtrpcResult<Arc<Pod>> {
        lock(&self.pod)
            .clone()
            .ok_or_else(|| status(Code::FAILED_PRECONDITION, "the pod's VM is gone"))
    }

    /// The agent's id of the pod sandbox's running process (the
    /// container that booted the VM).
    fn sandbox_process(&self) -> Option<u32> {
        lock(&self.containers)
            .values()
            .filter(|c| c.booted_pod)
            .find_map(|c| match *c.init.lock() {
                ProcState {
                    status: Status::Running,
                    agent_id,
                    ..
                } => agent_id,
                _ => None,
            })
    }

    fn keeper_pid(&self) -> u32 {
        lock(&self.pod).as_ref().map_or(0, |p| p.keeper_pid)
    }

    /// The pod's VM, booted for this container when it is the first.
    fn pod_for(
        self: &Arc<Self>,
        spec: &Spec,
        id: &str,
        annotations: &std::collections::BTreeMap<String, String>,
        record_at: &Path,
    ) -> anyhow::Result<(Arc<Pod>, bool)> {
        let mut pod = lock(&self.pod);
        if let Some(p) = pod.as_ref() {
            return Ok((p.clone(), false));
        }
        if annotations.get(CONTAINER_TYPE).map(String::as_str) == Some("container") {
            anyhow::bail!("the pod's sandbox is not running in this shim");
        }
        let booted = Arc::new(Pod::boot(spec, id, annotations, record_at)?);
        *pod = Some(booted.clone());
        let watcher = (self.clone(), booted.clone());
        std::thread::spawn(move || {
            let (inner, pod) = watcher;
            pod.wait_keeper();
            inner.vm_ended(&pod);
        });
        Ok((booted, true))
    }

    /// The VM ended: what still ran in it ended with it.
    fn vm_ended(&self, pod: &Arc<Pod>) {
        let containers: Vec<(String, Arc<Container>)> = lock(&self.containers)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, c) in containers {
            let execs: Vec<(String, Arc<Proc>)> = lock(&c.execs)
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (exec_id, p) in execs {
                self.ended(&id, &exec_id, &p, VM_GONE);
            }
            self.ended(&id, "", &c.init, VM_GONE);
        }
        let mut current = lock(&self.pod);
        if current.as_ref().is_some_and(|p| Arc::ptr_eq(p, pod)) {
            // It ended on its own (the shim ends it only after taking it).
            log::warn!("the pod's VM ended");
            current.take();
            drop(current);
            pod.teardown();
        }
    }

    /// Records a process's end and tells containerd, once.
    fn ended(&self, id: &str, exec_id: &str, p: &Proc, code: u32) {
        if !p.end(code) {
            return;
        }
        let (exit_status, exited_at) = p.wait();
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: id.to_string(),
                id: if exec_id.is_empty() { id } else { exec_id }.to_string(),
                pid: self.keeper_pid(),
                exit_status,
                exited_at: MessageField::some(exited_at),
                ..Default::default()
            }),
        );
    }

    fn create(self: &Arc<Self>, req: &api::CreateTaskRequest) -> anyhow::Result<u32> {
        use anyhow::Context as _;
        let id = &req.id;
        crate::vms::check_name(id).with_context(|| format!("container id {id:?}"))?;
        if lock(&self.containers).contains_key(id) {
            anyhow::bail!("container {id} already exists");
        }
        if !req.checkpoint.is_empty() {
            anyhow::bail!("husk cannot restore a container from a checkpoint");
        }
        let bundle_dir = Path::new(&req.bundle);
        let config = bundle_dir.join("config.json");
        let text =
            std::fs::read(&config).with_context(|| format!("cannot read {}", config.display()))?;
        let spec: Spec = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a valid OCI runtime config", config.display()))?;
        let annotations: std::collections::BTreeMap<String, String> = spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut process = bundle::process(
            spec.process()
                .as_ref()
                .context("config.json has no process to run")?,
        )
        .context("config.json's process")?;
        process.stdin = !process.tty && !req.stdin.is_empty();
        process.seccomp = bundle::seccomp(&spec)?;
        process.pid_ns = match bundle::pid_namespace(&spec) {
            bundle::PidMode::Guest => agent::PidNamespace::Guest,
            // The pod's is given at Start, once the sandbox runs.
            bundle::PidMode::Own | bundle::PidMode::Path => agent::PidNamespace::Own,
        };
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
            id: id.clone(),
            namespace: self.namespace.clone(),
        };
        stdio.check()?;

        let record_at = bundle_dir.join(pod::RECORD);
        let (pod, booted) = self.pod_for(&spec, id, &annotations, &record_at)?;
        log::info!("container {id}: in the pod VM {}", pod.vm.name);
        let made = (|| {
            let fs = pod::prepare_container(&pod.share, id, bundle_dir, &req.rootfs, &spec)?;
            process.container = Some(fs);
            pod.write_record(&record_at)?;
            anyhow::Ok(())
        })();
        if let Err(e) = made {
            pod::remove_container(&pod.share, id);
            if booted {
                self.end_pod(&pod);
            }
            return Err(e);
        }
        let container = Arc::new(Container {
            bundle: req.bundle.clone(),
            init: Proc::new(stdio, process),
            execs: Mutex::new(HashMap::new()),
            booted_pod: booted,
            paused: Mutex::new(false),
            // The sandbox itself makes the pod's.
            pod_pids: !booted && bundle::pid_namespace(&spec) == bundle::PidMode::Path,
        });
        lock(&self.containers).insert(id.clone(), container);
        log::info!("container {id}: created");
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid: pod.keeper_pid,
                ..Default::default()
            }),
        );
        Ok(pod.keeper_pid)
    }

    /// Asks the agent `request` about container `id`'s running process
    /// (its agent id given to `request`); an agent's error is the answer.
    fn ask_container(
        &self,
        id: &str,
        request: impl FnOnce(u32) -> Request,
    ) -> TtrpcResult<Response> {
        let c = self.container(id)?;
        let aid = match lock(&c.init.state) {
            s if s.status == Status::Running => s.agent_id,
            _ => None,
        }
        .ok_or_else(|| {
            status(
                Code::FAILED_PRECONDITION,
                format!("container {id} is not running"),
            )
        })?;
        let mut conn = self.pod()?.agent().map_err(failed)?;
        match agent::call(&mut conn, &request(aid)) {
            Ok(Response::Error { message, .. }) => {
                Err(status(Code::UNKNOWN, format!("container {id}: {message}")))
            }
            Ok(answer) => Ok(answer),
            Err(e) => Err(failed(e.into())),
        }
    }

    /// Pauses (`frozen`) or resumes container `id`, and says so with
    /// TaskPaused or TaskResumed.
    fn freeze(&self, id: &str, frozen: bool) -> TtrpcResult<()> {
        let c = self.container(id)?;
        let mut paused = lock(&c.paused);
        if *paused == frozen {
            let now = if frozen { "paused" } else { "not paused" };
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("container {id} is already {now}"),
            ));
        }
        match self.ask_container(id, |aid| Request::Freeze { id: aid, frozen })? {
            Response::Ok => {
                *paused = frozen;
                let container_id = id.to_string();
                let (topic, event): (_, Box<dyn MessageDyn>) = if frozen {
                    let e = TaskPaused {
                        container_id,
                        ..Default::default()
                    };
                    (topics::TASK_PAUSED_EVENT_TOPIC, Box::new(e))
                } else {
                    let e = TaskResumed {
                        container_id,
                        ..Default::default()
                    };
                    (topics::TASK_RESUMED_EVENT_TOPIC, Box::new(e))
                };
                self.publish(topic, event);
                Ok(())
            }
            other => Err(failed(anyhow::anyhow!("unexpected answer {other:?}"))),
        }
    }

    fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> TtrpcResult<u32> {
        let (c, p) = self.process(id, exec_id)?;
        let pod = self.pod()?;
        if lock(&p.state).status != Status::Created {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("{} has already started", what(id, exec_id)),
            ));
        }
        let mut process = p.process.clone();
        if exec_id.is_empty() && c.pod_pids {
            let sandbox = self.sandbox_process().ok_or_else(|| {
                status(
                    Code::FAILED_PRECONDITION,
                    format!(
                        "container {id} shares the pod's processes, but its sandbox is not running"
                    ),
                )
            })?;
            process.pid_ns = agent::PidNamespace::Of(sandbox);
        }
        if !exec_id.is_empty() {
            if *lock(&c.paused) {
                // It would join the frozen cgroup and never start, as runc
                // refuses it.
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("container {id} is paused"),
                ));
            }
            let init = lock(&c.init.state);
            match (init.status, init.agent_id) {
                (Status::Running, Some(aid)) => process.within = Some(aid),
                _ => {
                    return Err(status(
                        Code::FAILED_PRECONDITION,
                        format!("container {id} is not running"),
                    ))
                }
            }
        }
        let mut conn = pod.agent().map_err(failed)?;
        let aid = match agent::call(&mut conn, &Request::Start { process }) {
            Ok(Response::Started { id: aid, .. }) => aid,
            Ok(Response::Error { message, .. }) => {
                return Err(status(
                    Code::UNKNOWN,
                    format!("{}: {message}", what(id, exec_id)),
                ))
            }
            Ok(other) => return Err(failed(anyhow::anyhow!("unexpected answer {other:?}"))),
            Err(e) => return Err(failed(e.into())),
        };
        {
            let mut s = p.lock();
            s.status = Status::Running;
            s.agent_id = Some(aid);
        }
        log::info!("{}: started (agent process {aid})", what(id, exec_id));
        let relays = match p.stdio.attach(&pod, aid) {
            Ok(r) => r,
            Err(e) => {
                let _ = agent::call(
                    &mut conn,
                    &Request::Signal {
                        id: aid,
                        signal: libc::SIGKILL,
                    },
                );
                return Err(failed(e));
            }
        };
        let pid = pod.keeper_pid;
        if exec_id.is_empty() {
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: id.to_string(),
                    pid,
                    ..Default::default()
                }),
            );
        } else {
            self.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    pid,
                    ..Default::default()
                }),
            );
        }
        // Published after TaskStart: the waiter starts only now.
        let inner = self.clone();
        let (id, exec_id) = (id.to_string(), exec_id.to_string());
        std::thread::spawn(move || {
            let code = match agent::call(&mut conn, &Request::Wait { id: aid }) {
                Ok(Response::Exited { status }) => u32::from(status.shell_code()),
                _ => VM_GONE,
            };
            relays.join();
            inner.ended(&id, &exec_id, &p, code);
        });
        Ok(pid)
    }

    fn kill(&self, req: &api::KillRequest) -> TtrpcResult<()> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        let signal = req.signal as i32;
        let targets: Vec<Arc<Proc>> = if req.all && req.exec_id.is_empty() {
            let mut all: Vec<Arc<Proc>> = lock(&c.execs).values().cloned().collect();
            all.push(p.clone());
            all
        } else {
            vec![p.clone()]
        };
        let (state, aid) = {
            let s = p.lock();
            (s.status, s.agent_id)
        };
        match (state, aid) {
            (Status::Stopped, _) => {
                return Err(status(Code::NOT_FOUND, "process already finished"))
            }
            (Status::Created, _) => {
                // Nothing runs yet: the process ends as runc's would.
                self.ended(&req.id, &req.exec_id, &p, 128 + req.signal);
                return Ok(());
            }
            (Status::Running, _) => {}
        }
        let pod = self.pod()?;
        let mut conn = pod.agent().map_err(failed)?;
        for t in targets {
            let aid = {
                let s = t.lock();
                s.agent_id.filter(|_| s.status == Status::Running)
            };
            let Some(aid) = aid else {
                continue;
            };
            match agent::call(&mut conn, &Request::Signal { id: aid, signal }) {
                Ok(Response::Ok) => {}
                Ok(Response::Error { message, .. }) => log::warn!("signal {signal}: {message}"),
                Ok(_) => {}
                Err(e) => return Err(failed(e.into())),
            }
        }
        Ok(())
    }

    fn delete(&self, id: &str, exec_id: &str) -> TtrpcResult<api::DeleteResponse> {
        let (c, p) = self.process(id, exec_id)?;
        let (st, exit) = {
            let s = p.lock();
            (s.status, s.exit.clone())
        };
        if st == Status::Running {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("{} is running: kill it first", what(id, exec_id)),
            ));
        }
        let (exit_status, exited_at) = exit.unwrap_or_else(|| (0, now()));
        // A process that never started ends here: containerd waits for a
        // process before it starts it, and that wait must be answered (a
        // request left blocked would keep the shim from exiting).
        let never_started = |p: &Proc| {
            if p.lock().status == Status::Created {
                p.end(exit_status);
            }
        };
        never_started(&p);
        if exec_id.is_empty() {
            lock(&c.execs).values().for_each(|e| never_started(e));
        }
        let pid = self.keeper_pid();
        if !exec_id.is_empty() {
            lock(&c.execs).remove(exec_id);
        } else {
            lock(&self.containers).remove(id);
            let pod = lock(&self.pod).clone();
            if let Some(pod) = &pod {
                pod::remove_container(&pod.share, id);
            }
            let _ = std::fs::remove_file(Path::new(&c.bundle).join(pod::RECORD));
            let empty = lock(&self.containers).is_empty();
            if let Some(pod) = pod.filter(|_| c.booted_pod || empty) {
                self.end_pod(&pod);
            }
            self.publish(
                topics::TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: id.to_string(),
                    pid,
                    exit_status,
                    exited_at: MessageField::some(exited_at.clone()),
                    id: id.to_string(),
                    ..Default::default()
                }),
            );
        }
        Ok(api::DeleteResponse {
            pid,
            exit_status,
            exited_at: MessageField::some(exited_at),
            ..Default::default()
        })
    }

    /// Stops the pod's VM and removes what it had on the host, on a thread
    /// of its own: the task's Delete answers at once, and Shutdown waits
    /// for it before the shim exits.
    fn end_pod(&self, pod: &Arc<Pod>) {
        {
            let mut current = lock(&self.pod);
            if current.as_ref().is_some_and(|p| Arc::ptr_eq(p, pod)) {
                current.take();
            }
        }
        let pod = pod.clone();
        lock(&self.stopping).push(std::thread::spawn(move || pod.teardown()));
    }

    /// Waits for the pods being stopped.
    fn stopped(&self) {
        let stopping: Vec<_> = lock(&self.stopping).drain(..).collect();
        for t in stopping {
            let _ = t.join();
        }
    }

    fn exec(&self, req: &api::ExecProcessRequest) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let c = self
            .container(&req.id)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let spec: oci_spec::runtime::Process = serde_json::from_slice(&req.spec.value)
            .context("the exec's process spec is not valid")?;
        let mut process = bundle::process(&spec).context("the exec's process")?;
        process.stdin = !process.tty && !req.stdin.is_empty();
        // The container's seccomp profile (compiled at Create) holds for
        // what runs in it.
        process.seccomp.clone_from(&c.init.process.seccomp);
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
            id: req.exec_id.clone(),
            namespace: self.namespace.clone(),
        };
        stdio.check()?;
        {
            let mut execs = lock(&c.execs);
            if execs.contains_key(&req.exec_id) {
                anyhow::bail!("exec {} already exists", req.exec_id);
            }
            execs.insert(req.exec_id.clone(), Proc::new(stdio, process));
        }
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(())
    }

    /// Calls the agent about a running process; an error
    /// (FAILED_PRECONDITION) when it is not running.
    fn call_running(
        &self,
        id: &str,
        exec_id: &str,
        request: impl Fn(u32) -> Request,
    ) -> TtrpcResult<()> {
        let (_, p) = self.process(id, exec_id)?;
        let aid = {
            let s = p.lock();
            match (s.status, s.agent_id) {
                (Status::Running, Some(aid)) => aid,
                _ => {
                    return Err(status(
                        Code::FAILED_PRECONDITION,
                        format!("{} is not running", what(id, exec_id)),
                    ))
                }
            }
        };
        let mut conn = self.pod()?.agent().map_err(failed)?;
        match agent::call(&mut conn, &request(aid)) {
            Ok(Response::Ok) => Ok(()),
            Ok(Response::Error { message, .. }) => Err(status(Code::UNKNOWN, message)),
            Ok(other) => Err(failed(anyhow::anyhow!("unexpected answer {other:?}"))),
            Err(e) => Err(failed(e.into())),
        }
    }
}

fn what(id: &str, exec_id: &str) -> String {
    if exec_id.is_empty() {
        format!("container {id}")
    } else {
        format!("exec {exec_id} of container {id}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_ends_once_and_every_waiter_hears_it() {
        let p = Proc::new(Stdio::default(), agent::Process::default());
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || p.wait().0)
        };
        assert!(p.end(137));
        // A later report (the VM ending under it) changes nothing.
        assert!(!p.end(VM_GONE));
        assert_eq!(waiter.join().unwrap(), 137);
        assert_eq!(p.wait().0, 137);
        assert_eq!(p.lock().status, Status::Stopped);
    }

    #[test]
    fn errors_carry_containerds_codes() {
        let code = |e: ttrpc::Error| match e {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("not a status: {other:?}"),
        };
        assert_eq!(code(unsupported("x")), Code::UNIMPLEMENTED);
        assert_eq!(code(failed(anyhow::anyhow!("x"))), Code::UNKNOWN);
        assert_eq!(what("c", ""), "container c");
        assert_eq!(what("c", "e"), "exec e of container c");
    }
}
