//! `containerd-shim-husk-v2`: containerd's shim v2 (runtime type
//! `io.containerd.husk.v2`), serving containerd 1.6's task API over ttrpc
//! with the `containerd-shim` crate. One shim process, and one micro-VM,
//! per pod: containers are grouped by CRI's sandbox id, as runc's v2
//! shim groups them; a container without one (`ctr run`) is a pod of its
//! own.
//!
//! The shim drives its pod's VM through the same keeper and guest agent
//! as `husk run -d` and husk-runtime (`crate::vms`); a keeper it starts
//! is this same program again, with the keeper's environment.

mod cgroup;
pub mod io;
mod logger;
pub mod pod;
mod service;

use std::sync::Arc;

use containerd_shim::{Config, DeleteResponse, ExitSignal, Flags, StartOpts};

use crate::vms::keeper;

/// The runtime type containerd names the shim by.
pub const RUNTIME_ID: &str = "io.containerd.husk.v2";

pub fn main() -> std::process::ExitCode {
    if keeper::from_env(keeper::KEEPER_ENV).is_some() || keeper::from_env(keeper::VM_ENV).is_some()
    {
        return crate::husk_main();
    }
    // The keepers find their VMs' folders where the pods live.
    // SAFETY: the shim has one thread until containerd_shim::run starts more.
    unsafe { std::env::set_var("HUSK_STATE_DIR", pod::STATE_ROOT) };
    // A panic in a request's thread would only close containerd's
    // connection, which containerd takes for a dead shim: say why first,
    // in the shim's log (containerd's own log).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        log::error!("containerd-shim-husk-v2 panicked: {info}");
        default_hook(info);
    }));
    let config = Config {
        // The shim waits for its own children (the keepers); the crate's
        // reaper would take their statuses. Nor is it a subreaper: what a
        // keeper leaves behind goes to init, not to a shim that would
        // leave it a zombie.
        no_reaper: true,
        no_sub_reaper: true,
        ..Config::default()
    };
    containerd_shim::run::<Husk>(RUNTIME_ID, Some(config));
    std::process::ExitCode::SUCCESS
}

struct Husk {
    namespace: String,
    exit: Arc<ExitSignal>,
}

impl containerd_shim::Shim for Husk {
    type T = service::Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Husk {
            namespace: args.namespace.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    /// One shim per pod: the socket is named after the pod's sandbox, so
    /// a second container of the pod finds the shim already serving it.
    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let grouping =
            sandbox_of_bundle(std::path::Path::new(".")).unwrap_or_else(|| opts.id.clone());
        let (_, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    /// containerd's clean-up after a shim that died: the pod's VM and all
    /// it had on the host go (its other containers get the same call).
    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        if let Ok(text) = std::fs::read(pod::RECORD) {
            if let Ok(record) = serde_json::from_slice::<pod::Record>(&text) {
                pod::cleanup(&record);
            }
            let _ = std::fs::remove_file(pod::RECORD);
        }
        let mut response = DeleteResponse::new();
        // As runc's shim reports a process it had to kill.
        response.exit_status = 128 + libc::SIGKILL as u32;
        response.exited_at = containerd_shim::protos::protobuf::MessageField::some(
            containerd_shim::util::timestamp()?,
        );
        Ok(response)
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(
        &self,
        publisher: containerd_shim::publisher::RemotePublisher,
    ) -> Self::T {
        service::Service::new(self.namespace.clone(), self.exit.clone(), publisher)
    }
}

/// The CRI sandbox a bundle's container belongs to, from its config.json.
fn sandbox_of_bundle(bundle: &std::path::Path) -> Option<String> {
    let text = std::fs::read(bundle.join("config.json")).ok()?;
    let spec: serde_json::Value = serde_json::from_slice(&text).ok()?;
    spec["annotations"][service::SANDBOX_ID]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}
