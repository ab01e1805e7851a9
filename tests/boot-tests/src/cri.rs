//! A small client of Kubernetes' Container Runtime Interface (CRI v1), for
//! the tests and the bench that drive containerd's CRI plugin as the
//! kubelet does: the calls `crictl` makes, over containerd's socket.
//! Debian bookworm has no `crictl` (cri-tools); the API comes from the
//! `k8s-cri` crate (tonic), each call made synchronously on a runtime of
//! the client's own.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1::{
    ContainerState, LinuxContainerConfig, LinuxContainerResources, NamespaceMode, PodSandboxState,
};

/// Every call's limit: a pod's VM boots in a few seconds in the bed.
const CALL_LIMIT: Duration = Duration::from_secs(120);
/// The cgroup (under the cgroup v2 mount) that holds the test pods' own,
/// as the kubelet's `kubepods` holds a node's pods.
pub const KUBEPODS: &str = "husk-test-kubepods";

pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// What a failed call says: the gRPC code and containerd's message.
fn status(call: &str, s: tonic::Status) -> String {
    format!("CRI {call}: {:?}: {}", s.code(), s.message())
}

impl Cri {
    /// Connects to the CRI service on `socket` (containerd's own socket).
    pub fn connect(socket: &Path) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("a runtime for the CRI client: {e}"))?;
        let path: PathBuf = socket.to_path_buf();
        let channel = rt
            .block_on(async move {
                // The URI is not used: every connection is the socket.
                Endpoint::try_from("http://[::]:0")?
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            let s = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(s))
                        }
                    }))
                    .await
            })
            .map_err(|e| format!("cannot connect to CRI on {}: {e}", socket.display()))?;
        Ok(Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    fn call<T, F>(&self, name: &str, f: F) -> Result<T, String>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.rt
            .block_on(async { tokio::time::timeout(CALL_LIMIT, f).await })
            .map_err(|_| format!("CRI {name}: no answer in {CALL_LIMIT:?}"))?
            .map(tonic::Response::into_inner)
            .map_err(|s| status(name, s))
    }

    /// The runtime's name and version (`crictl version`).
    pub fn version(&self) -> Result<VersionResponse, String> {
        let mut c = self.runtime.clone();
        self.call("Version", c.version(VersionRequest::default()))
    }

    /// Whether CRI has `image` (`crictl inspecti`).
    pub fn has_image(&self, image: &str) -> Result<bool, String> {
        let mut c = self.images.clone();
        let r = self.call(
            "ImageStatus",
            c.image_status(ImageStatusRequest {
                image: Some(image_spec(image)),
                verbose: false,
            }),
        )?;
        Ok(r.image.is_some())
    }

    /// `crictl runp`: the pod's id.
    pub fn run_pod(&self, config: &PodSandboxConfig, handler: &str) -> Result<String, String> {
        let mut c = self.runtime.clone();
        let r = self.call(
            "RunPodSandbox",
            c.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.into(),
            }),
        )?;
        Ok(r.pod_sandbox_id)
    }

    pub fn pod_status(&self, pod: &str) -> Result<PodSandboxStatus, String> {
        let mut c = self.runtime.clone();
        let r = self.call(
            "PodSandboxStatus",
            c.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.into(),
                verbose: false,
            }),
        )?;
        r.status
            .ok_or_else(|| format!("CRI PodSandboxStatus: no status for {pod}"))
    }

    /// `crictl stopp`.
    pub fn stop_pod(&self, pod: &str) -> Result<(), String> {
        let mut c = self.runtime.clone();
        self.call(
            "StopPodSandbox",
            c.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.into(),
            }),
        )
        .map(drop)
    }

    /// `crictl rmp`.
    pub fn remove_pod(&self, pod: &str) -> Result<(), String> {
        let mut c = self.runtime.clone();
        self.call(
            "RemovePodSandbox",
            c.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.into(),
            }),
        )
        .map(drop)
    }

    /// The ids of the pods CRI knows (`crictl pods -q`).
    pub fn pods(&self) -> Result<Vec<String>, String> {
        let mut c = self.runtime.clone();
        let r = self.call(
            "ListPodSandbox",
            c.list_pod_sandbox(ListPodSandboxRequest::default()),
        )?;
        Ok(r.items.into_iter().map(|p| p.id).collect())
    }

    /// `crictl create POD CONTAINER.json POD.json`: the container's id.
    pub fn create(
        &self,
        pod: &str,
        config: &ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> Result<String, String> {
        let mut c = self.runtime.clone();
        let r = self.call(
            "CreateContainer",
            c.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(config.clone()),
                sandbox_config: Some(pod_config.clone()),
            }),
        )?;
        Ok(r.container_id)
    }

    /// `crictl start`.
    pub fn start(&self, id: &str) -> Result<(), String> {
        let mut c = self.runtime.clone();
        self.call(
            "StartContainer",
            c.start_container(StartContainerRequest {
                container_id: id.into(),
            }),
        )
        .map(drop)
    }

    /// `crictl stop --timeout SECONDS`.
    pub fn stop(&self, id: &str, timeout: i64) -> Result<(), String> {
        let mut c = self.runtime.clone();
        self.call(
            "StopContainer",
            c.stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout,
            }),
        )
        .map(drop)
    }

    /// `crictl rm`.
    pub fn remove(&self, id: &str) -> Result<(), String> {
        let mut c = self.runtime.clone();
        self.call(
            "RemoveContainer",
            c.remove_container(RemoveContainerRequest {
                container_id: id.into(),
            }),
        )
        .map(drop)
    }

    /// `crictl inspect`.
    pub fn status(&self, id: &str) -> Result<ContainerStatus, String> {
        let mut c = self.runtime.clone();
        let r = self.call(
            "ContainerStatus",
            c.container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            }),
        )?;
        r.status
            .ok_or_else(|| format!("CRI ContainerStatus: no status for {id}"))
    }

    /// `crictl stats ID`: the container's CPU and memory figures.
    pub fn stats(&self, id: &str) -> Result<ContainerStats, String> {
        let mut c = self.runtime.clone();
        let r = self.call(
            "ContainerStats",
            c.container_stats(ContainerStatsRequest {
                container_id: id.into(),
            }),
        )?;
        r.stats
            .ok_or_else(|| format!("CRI ContainerStats: no figures for {id}"))
    }

    /// `crictl update`: new resource limits for a running container.
    pub fn update(&self, id: &str, resources: LinuxContainerResources) -> Result<(), String> {
        let mut c = self.runtime.clone();
        self.call(
            "UpdateContainerResources",
            c.update_container_resources(UpdateContainerResourcesRequest {
                container_id: id.into(),
                linux: Some(resources),
                ..Default::default()
            }),
        )
        .map(drop)
    }

    /// Waits (up to `limit`) until the container is in `state`.
    pub fn wait_state(
        &self,
        id: &str,
        state: ContainerState,
        limit: Duration,
    ) -> Result<ContainerStatus, String> {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.status(id)?;
            if s.state == state as i32 {
                return Ok(s);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "container {} is {:?}, not {state:?}, after {limit:?} ({} {})",
                    s.metadata.map(|m| m.name).unwrap_or_default(),
                    ContainerState::try_from(s.state),
                    s.reason,
                    s.message
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `crictl exec -i [-t] ID CMD...`: the streaming server's URL for
    /// it (open it with `ExecStream::open`).
    pub fn exec(&self, id: &str, cmd: &[&str], tty: bool) -> Result<String, String> {
        let mut c = self.runtime.clone();
        let r = self.call(
            "Exec",
            c.exec(ExecRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                tty,
                stdin: true,
                stdout: true,
                stderr: !tty,
            }),
        )?;
        Ok(r.url)
    }

    /// `crictl exec --sync --timeout SECONDS ID CMD...`: stdout, stderr
    /// and the exit status.
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<(String, String, i32), String> {
        let mut c = self.runtime.clone();
        let r = self.call(
            "ExecSync",
            c.exec_sync(ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            }),
        )?;
        Ok((
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
            r.exit_code,
        ))
    }
}

/// An interactive exec on containerd's streaming server, as `crictl exec
/// -it` and `kubectl exec -it` drive it: a WebSocket speaking Kubernetes'
/// `v4.channel.k8s.io` (each message's first byte names its stream: 0
/// stdin, 1 stdout, 2 stderr, 3 the status, 4 terminal size).
pub struct ExecStream {
    ws: tungstenite::WebSocket<std::net::TcpStream>,
}

impl ExecStream {
    pub fn open(url: &str) -> Result<Self, String> {
        use tungstenite::client::IntoClientRequest;
        let addr = url
            .strip_prefix("http://")
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| format!("an exec URL that is not http://HOST:PORT/...: {url}"))?;
        let stream = std::net::TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
        stream
            .set_read_timeout(Some(CALL_LIMIT))
            .map_err(|e| e.to_string())?;
        let mut request = url
            .replacen("http://", "ws://", 1)
            .into_client_request()
            .map_err(|e| format!("{url}: {e}"))?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            tungstenite::http::HeaderValue::from_static("v4.channel.k8s.io"),
        );
        let (ws, _) =
            tungstenite::client(request, stream).map_err(|e| format!("exec stream {url}: {e}"))?;
        Ok(ExecStream { ws })
    }

    fn send(&mut self, channel: u8, bytes: &[u8]) -> Result<(), String> {
        let mut m = vec![channel];
        m.extend_from_slice(bytes);
        self.ws
            .send(tungstenite::Message::binary(m))
            .map_err(|e| format!("exec stream: {e}"))
    }

    pub fn stdin(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.send(0, bytes)
    }

    /// The terminal's size, as `kubectl` sends it on SIGWINCH.
    pub fn resize(&mut self, width: u16, height: u16) -> Result<(), String> {
        let size = serde_json::json!({ "Width": width, "Height": height });
        self.send(4, size.to_string().as_bytes())
    }

    /// Everything the process wrote (stdout and stderr) until it ended,
    /// and its exit status.
    pub fn finish(mut self) -> Result<(String, i32), String> {
        let mut out = Vec::new();
        let mut status = None;
        loop {
            let m = match self.ws.read() {
                Ok(m) => m,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    break
                }
                Err(e) => return Err(format!("exec stream: {e}")),
            };
            match m {
                tungstenite::Message::Binary(b) if !b.is_empty() => match b[0] {
                    1 | 2 => out.extend_from_slice(&b[1..]),
                    3 => status = Some(exit_status(&b[1..])?),
                    _ => {}
                },
                tungstenite::Message::Close(_) => break,
                _ => {}
            }
        }
        let status = status.ok_or_else(|| {
            format!(
                "the exec stream closed without a status after {:?}",
                String::from_utf8_lossy(&out)
            )
        })?;
        Ok((String::from_utf8_lossy(&out).into_owned(), status))
    }
}

/// The exit status in a `v4.channel.k8s.io` status (a Kubernetes
/// `Status`: "Success", or a failure whose `ExitCode` cause is the code).
fn exit_status(json: &[u8]) -> Result<i32, String> {
    let v: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| format!("exec status {:?}: {e}", String::from_utf8_lossy(json)))?;
    if v["status"] == "Success" {
        return Ok(0);
    }
    v["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["reason"] == "ExitCode")
        .and_then(|c| c["message"].as_str()?.parse().ok())
        .ok_or_else(|| format!("exec failed: {v}"))
}

pub fn image_spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.into(),
        ..Default::default()
    }
}

/// A pod's configuration as the kubelet writes it: its log folder, the
/// network namespace (`Pod`: CNI's; `Node`: the host's), annotations, and
/// its cgroup parent, `/KUBEPODS/pod<uid>` (the kubelet's cgroupfs
/// driver names a pod's cgroup so); the sandbox's cgroup is
/// `<parent>/<sandbox id>`.
pub fn pod_config(
    name: &str,
    log_directory: &Path,
    network: NamespaceMode,
    annotations: &[(&str, &str)],
) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("{name}-uid"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_directory.display().to_string(),
        annotations: owned(annotations),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: network as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            cgroup_parent: pod_cgroup(name),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The cgroup parent [`pod_config`] gives pod `name`.
pub fn pod_cgroup(name: &str) -> String {
    format!("/{KUBEPODS}/pod{name}-uid")
}

/// Removes the pod cgroups below [`KUBEPODS`] and it, as the kubelet
/// removes a pod's cgroup once its sandbox is gone; what still has a
/// child cgroup stays, and is named.
pub fn remove_pod_cgroups() -> Result<(), String> {
    let root = Path::new("/sys/fs/cgroup").join(KUBEPODS);
    let pods = match std::fs::read_dir(&root) {
        Ok(entries) => entries.flatten().filter(|e| e.path().is_dir()),
        Err(_) => return Ok(()),
    };
    for pod in pods {
        std::fs::remove_dir(pod.path()).map_err(|e| format!("{}: {e}", pod.path().display()))?;
    }
    std::fs::remove_dir(&root).map_err(|e| format!("{}: {e}", root.display()))
}

/// A container of `image` running `argv`, its log at `NAME.log` in the
/// pod's log folder (the kubelet's `crictl logs` reads it), with the
/// namespaces the kubelet gives a pod's container by default: the pod's
/// network and IPC, a PID namespace of its own.
pub fn container_config(name: &str, image: &str, argv: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(image_spec(image)),
        command: argv.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Pod as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn owned(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What a container wrote, from the CRI log file (`crictl logs`): each line
/// is `TIME STREAM P|F TEXT`; partial lines (`P`) are joined.
pub fn log_text(path: &Path) -> Result<String, String> {
    let raw = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    for line in raw.lines() {
        let mut f = line.splitn(4, ' ');
        let (_time, _stream, tag) = (f.next(), f.next(), f.next());
        let body = f.next().unwrap_or("");
        text.push_str(body);
        if tag != Some("P") {
            text.push('\n');
        }
    }
    Ok(text)
}
