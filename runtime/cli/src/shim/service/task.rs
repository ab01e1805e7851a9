//! The Task service's ttrpc methods: each maps containerd's request onto
//! the pod's containers and processes ([`super::Inner`]) and its answer back.

use containerd_shim::api;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::ttrpc::Code;
use containerd_shim::protos::types::task::{ProcessInfo, Status as TaskStatus};
use containerd_shim::{TtrpcContext, TtrpcResult};

use super::{cgroup, failed, lock, status, unsupported, Service, Status};
use agent::{Request, Response};

impl containerd_shim::Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let pid = self.0.create(&req).map_err(|e| {
            log::error!("create {}: {e:#}", req.id);
            failed(e)
        })?;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pid = self.0.start(&req.id, &req.exec_id)?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let (c, p) = self.0.process(&req.id, &req.exec_id)?;
        // Before the process's state: `freeze` holds `paused` while it asks
        // the agent, which takes the init's state (one lock order).
        let paused = *lock(&c.paused);
        let s = p.lock();
        let (exit_status, exited_at) = match &s.exit {
            Some((code, at)) => (*code, MessageField::some(at.clone())),
            None => (0, MessageField::none()),
        };
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.clone(),
            pid: self.0.keeper_pid(),
            status: match s.status {
                Status::Created => TaskStatus::CREATED,
                Status::Running if paused => TaskStatus::PAUSED,
                Status::Running => TaskStatus::RUNNING,
                Status::Stopped => TaskStatus::STOPPED,
            }
            .into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status,
            exited_at,
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        self.0.kill(&req)?;
        Ok(api::Empty::default())
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        self.0.delete(&req.id, &req.exec_id)
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        self.0.exec(&req).map_err(failed)?;
        Ok(api::Empty::default())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let (_, p) = self.0.process(&req.id, &req.exec_id)?;
        let (exit_status, exited_at) = p.wait();
        Ok(api::WaitResponse {
            exit_status,
            exited_at: MessageField::some(exited_at),
            ..Default::default()
        })
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let size = agent::WindowSize {
            rows: req.height.min(u32::from(u16::MAX)) as u16,
            cols: req.width.min(u32::from(u16::MAX)) as u16,
        };
        self.0
            .call_running(&req.id, &req.exec_id, |id| Request::Resize { id, size })?;
        Ok(api::Empty::default())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        if req.stdin {
            self.0
                .call_running(&req.id, &req.exec_id, |id| Request::CloseStdin { id })?;
        }
        Ok(api::Empty::default())
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        self.0.container(&req.id)?;
        // The host process that holds the pod's VM: what a host can signal
        // or account. The guest's own pids mean nothing on the host.
        Ok(api::PidsResponse {
            processes: vec![ProcessInfo {
                pid: self.0.keeper_pid(),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.0.keeper_pid(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if !lock(&self.0.containers).is_empty() {
            return Ok(api::Empty::default());
        }
        if let Some(pod) = lock(&self.0.pod).take() {
            pod.teardown();
        }
        self.0.stopped();
        self.0.exit.signal();
        Ok(api::Empty::default())
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let figures = match self
            .0
            .ask_container(&req.id, |aid| Request::Stats { id: aid })?
        {
            Response::Stats(figures) => figures,
            other => return Err(failed(anyhow::anyhow!("unexpected answer {other:?}"))),
        };
        let any = cgroup::metrics(&figures).map_err(failed)?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    /// Freezes the container's cgroup in the guest, its execs with it, as
    /// runc freezes a container's cgroup; the pod's VM and its other
    /// containers run on.
    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.0.freeze(&req.id, true)?;
        Ok(api::Empty::default())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.0.freeze(&req.id, false)?;
        Ok(api::Empty::default())
    }

    /// New limits for a container's cgroup in the guest (the pod's VM
    /// keeps the size it booted with).
    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let any = req
            .resources
            .as_ref()
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, "the update names no resources"))?;
        let resources =
            cgroup::update(any).map_err(|e| status(Code::INVALID_ARGUMENT, format!("{e:#}")))?;
        match self
            .0
            .ask_container(&req.id, |aid| Request::Update { id: aid, resources })?
        {
            Response::Ok => Ok(api::Empty::default()),
            other => Err(failed(anyhow::anyhow!("unexpected answer {other:?}"))),
        }
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(unsupported("checkpoints are not supported"))
    }
}
