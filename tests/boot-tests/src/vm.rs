//! husk's VMM driven in this process (`vmm::run`), for what `husk run`
//! cannot do yet (snapshots).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use husk_init::config::INIT_PATH;
use vmm::{Outcome, SeccompMode, VmConfig};

/// husk's kernel with an initramfs image and its init, 1 vCPU and
/// `memory_mib`, seccomp filters on; `extra` after the `rdinit=` argument.
pub fn initramfs(
    kernel: &Path,
    image: &Path,
    memory_mib: u64,
    extra: &str,
    console: Box<dyn Write + Send>,
) -> VmConfig {
    VmConfig {
        cpus: 1,
        memory_mib,
        kernel: kernel.to_path_buf(),
        initrd: Some(image.to_path_buf()),
        cmdline: format!("rdinit={INIT_PATH} {extra}"),
        disks: Vec::new(),
        net: Vec::new(),
        net_slots: 0,
        vsock: None,
        shares: Vec::new(),
        console_output: console,
        console_input: None,
        timeout: Some(Duration::from_secs(120)),
        legacy_pit: false,
        report_memory: false,
        seccomp: SeccompMode::Kill,
        started: Instant::now(),
        snapshot: None,
        restore: None,
        snapshot_requests: None,
        resume_frame: None,
    }
}

/// `vmm::run` on a thread of its own: the VMM installs its seccomp filter
/// on the thread that calls it, which must not be the caller's. The error
/// carries its whole chain of causes.
pub fn run(cfg: VmConfig) -> Result<Outcome, String> {
    std::thread::spawn(move || {
        vmm::run(cfg).map_err(|e| {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg = format!("{msg}: {s}");
                source = s.source();
            }
            msg
        })
    })
    .join()
    .map_err(|_| "the VMM's thread panicked".to_string())?
}
