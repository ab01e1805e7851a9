//! vCPU threads (`vcpu0`, `vcpu1`, ...): each runs `KVM_RUN` and dispatches
//! its exits. Register accesses to the virtio-mmio windows are answered
//! here; queue notifications never arrive here (they are ioeventfds), so
//! no device work runs on a vCPU thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use devices::virtio::mmio::{MmioTransport, MMIO_SIZE};
use kvm_ioctls::{VcpuExit, VcpuFd};
use tracing::{debug, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::control::{self, GuestReport};
use crate::seccomp::{Filters, ThreadKind};

/// The virtio-mmio windows, by base address.
#[derive(Default)]
pub struct MmioBus {
    windows: Vec<(u64, Arc<Mutex<MmioTransport>>)>,
}

impl MmioBus {
    pub fn insert(&mut self, base: u64, t: Arc<Mutex<MmioTransport>>) {
        self.windows.push((base, t));
    }

    fn find(&self, addr: u64) -> Option<(u64, &Arc<Mutex<MmioTransport>>)> {
        self.windows
            .iter()
            .find(|(base, _)| (*base..*base + MMIO_SIZE).contains(&addr))
            .map(|(base, t)| (addr - base, t))
    }

    fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((off, t)) => t.lock().unwrap_or_else(|p| p.into_inner()).read(off, data),
            None => data.fill(0xff),
        }
    }

    fn write(&self, addr: u64, data: &[u8]) {
        if let Some((off, t)) = self.find(addr) {
            t.lock().unwrap_or_else(|p| p.into_inner()).write(off, data);
        }
    }
}

/// Why the VM stopped, as seen by a vCPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The guest reset or powered off (Linux with `reboot=t` triple-faults).
    Shutdown,
    /// KVM could not run the guest.
    Failed(String),
}

/// What the vCPU threads share with the VMM thread.
pub struct Shared {
    pub bus: MmioBus,
    pub report: GuestReport,
    pub stop: Mutex<Option<Stop>>,
    /// Raised when `stop` is first set; the VMM thread waits on it.
    pub stop_evt: EventFd,
    /// Tells vCPU threads to leave their loop after a kick.
    pub exiting: AtomicBool,
    /// The host's KVM is PVM (known before the filters forbid looking).
    pub pvm: bool,
}

impl Shared {
    pub fn stop(&self, why: Stop) {
        let mut s = self.stop.lock().unwrap_or_else(|p| p.into_inner());
        if s.is_none() {
            *s = Some(why);
            let _ = self.stop_evt.write(1);
        }
    }
}

/// Starts vCPU `id` on its own thread, which installs its seccomp filter
/// before anything else.
pub fn spawn(
    id: u8,
    mut vcpu: VcpuFd,
    shared: Arc<Shared>,
    filters: Option<Arc<Filters>>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || {
            if let Some(f) = &filters {
                if let Err(e) = f.install(ThreadKind::Vcpu) {
                    shared.stop(Stop::Failed(format!("vCPU {id}: {e}")));
                    return;
                }
            }
            if id == 0 {
                shared.report.mark(control::Phase::VcpusStarted);
            }
            run_loop(id, &mut vcpu, &shared);
        })
}

fn run_loop(id: u8, vcpu: &mut VcpuFd, shared: &Shared) {
    loop {
        if shared.exiting.load(Ordering::Acquire) {
            return;
        }
        match vcpu.run() {
            Ok(VcpuExit::MmioRead(addr, data)) => shared.bus.read(addr, data),
            Ok(VcpuExit::MmioWrite(addr, data)) => shared.bus.write(addr, data),
            Ok(VcpuExit::IoOut(port, data)) => {
                if port == control::PORT {
                    shared.report.guest_write(data);
                }
            }
            Ok(VcpuExit::IoIn(_, data)) => data.fill(0xff),
            Ok(VcpuExit::Shutdown) | Ok(VcpuExit::Hlt) => {
                debug!("vcpu{id}: shutdown");
                shared.stop(Stop::Shutdown);
                return;
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                debug!("vcpu{id}: system event {kind}");
                shared.stop(Stop::Shutdown);
                return;
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                shared.stop(Stop::Failed(format!(
                    "vCPU {id} could not enter the guest (hardware reason {reason:#x}, cpu {cpu})"
                )));
                return;
            }
            Ok(VcpuExit::InternalError) => {
                shared.stop(Stop::Failed(internal_error_message(id, shared.pvm)));
                return;
            }
            Ok(other) => {
                warn!("vcpu{id}: unexpected exit {other:?}");
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => {
                shared.stop(Stop::Failed(format!("vCPU {id}: KVM_RUN failed: {e}")));
                return;
            }
        }
    }
}

/// A KVM internal error, explained when the host's KVM is PVM.
fn internal_error_message(id: u8, pvm: bool) -> String {
    let base = format!(
        "vCPU {id}: KVM internal error (the guest hit an instruction KVM could not emulate)"
    );
    if pvm {
        format!(
            "{base}. This host's /dev/kvm is PVM (kvm_pvm), which runs only guest kernels \
             built with PVM guest support; husk's kernel is not. Run husk on hardware KVM \
             (Intel VT-x or AMD-V), or use ci/kvm-testbed on this host."
        )
    } else {
        base
    }
}
