//! vCPU threads (`vcpu0`, `vcpu1`, ...): each runs `KVM_RUN` and dispatches
//! its exits. Register accesses to the virtio-mmio windows are answered
//! here; queue notifications never arrive here (they are ioeventfds), so
//! no device work runs on a vCPU thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::virtio::mmio::{MmioTransport, MMIO_SIZE};
use kvm_ioctls::{VcpuExit, VcpuFd};
use tracing::{debug, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::control::{self, GuestReport};
use crate::seccomp::{Filters, ThreadKind};
use crate::snapshot::VcpuState;

/// The virtio-mmio windows, by base address.
#[derive(Default)]
pub struct MmioBus {
    windows: Vec<(u64, Arc<Mutex<MmioTransport>>)>,
}

impl MmioBus {
    pub fn insert(&mut self, base: u64, t: Arc<Mutex<MmioTransport>>) {
        self.windows.push((base, t));
    }

    /// The transports in the order they were attached.
    pub fn transports(&self) -> impl Iterator<Item = &Arc<Mutex<MmioTransport>>> {
        self.windows.iter().map(|(_, t)| t)
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

/// Pausing every vCPU for a snapshot: the VMM thread asks, each vCPU
/// thread leaves `KVM_RUN`, saves its own state (only its thread may use
/// its descriptor) and waits here until the VMM thread resumes them.
#[derive(Default)]
pub struct Pause {
    /// Checked after every exit; set while a snapshot is being taken.
    pub requested: AtomicBool,
    state: Mutex<Parked>,
    cv: Condvar,
}

#[derive(Default)]
struct Parked {
    /// Each vCPU's saved state (or why it could not be read), by id.
    saved: Vec<Option<Result<VcpuState, String>>>,
    /// Bumped at each resume; a parked vCPU waits for it to change.
    generation: u64,
}

impl Pause {
    /// Asks `cpus` vCPUs to park. The one whose guest asked may have
    /// parked already: what it saved stays.
    pub fn request(&self, cpus: usize) {
        let mut p = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if p.saved.len() < cpus {
            p.saved.resize_with(cpus, || None);
        }
        self.requested.store(true, Ordering::Release);
    }

    /// Waits until every vCPU has parked, up to `limit`; their states.
    pub fn wait_parked(
        &self,
        limit: Duration,
        kick: impl Fn(),
    ) -> Option<Vec<Result<VcpuState, String>>> {
        let deadline = Instant::now() + limit;
        let mut p = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if p.saved.iter().all(Option::is_some) {
                return Some(
                    p.saved
                        .iter_mut()
                        .map(|s| s.take().expect("all some"))
                        .collect(),
                );
            }
            if Instant::now() >= deadline {
                return None;
            }
            drop(p);
            // A kick can land just before a vCPU re-enters the guest:
            // kick again until each has parked.
            kick();
            p = self.state.lock().unwrap_or_else(|p| p.into_inner());
            p = self
                .cv
                .wait_timeout(p, Duration::from_millis(1))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Lets every parked vCPU run again.
    pub fn resume(&self) {
        let mut p = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.requested.store(false, Ordering::Release);
        p.generation += 1;
        p.saved.clear();
        self.cv.notify_all();
    }

    /// On a vCPU thread: saves this vCPU's state and waits for the resume
    /// (or the VM's end).
    fn park(&self, id: u8, vcpu: &mut VcpuFd, msrs: &[u32], exiting: &AtomicBool) {
        // An exit still pending (the port write that asked for this, an
        // MMIO access) is completed by KVM at the next KVM_RUN: run once
        // with immediate_exit set, so the saved state is past it.
        vcpu.set_kvm_immediate_exit(1);
        let _ = vcpu.run();
        vcpu.set_kvm_immediate_exit(0);
        let state = VcpuState::save(vcpu, msrs).map_err(|e| e.to_string());
        // Tells a guest using kvm-clock that it was stopped, so the time
        // that passes meanwhile is not taken for a CPU stuck in the kernel
        // (soft lockup warnings, RCU stalls) once it runs on. A guest
        // without kvm-clock refuses (EINVAL), which changes nothing.
        let _ = vcpu.kvmclock_ctrl();
        let mut p = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let generation = p.generation;
        let id = usize::from(id);
        if p.saved.len() <= id {
            p.saved.resize_with(id + 1, || None);
        }
        p.saved[id] = Some(state);
        self.cv.notify_all();
        while p.generation == generation && !exiting.load(Ordering::Acquire) {
            p = self
                .cv
                .wait_timeout(p, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
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
    /// Set before `exiting` when the VM ran past its timeout: each vCPU
    /// then notes its instruction pointer in `stuck_at` as it leaves.
    pub timed_out: AtomicBool,
    pub stuck_at: Mutex<Vec<(u8, u64)>>,
    /// The host's KVM is PVM (known before the filters forbid looking).
    pub pvm: bool,
    /// Snapshots: whether this VM takes any (at the guest's asking or on
    /// request), the pause handshake, the MSRs each vCPU saves, and the
    /// eventfd that tells the VMM thread the guest asked for its snapshot
    /// (None: the guest's asking is ignored).
    pub snapshots: bool,
    pub pause: Pause,
    pub msrs: Vec<u32>,
    pub snapshot_evt: Option<EventFd>,
    /// init's resume area, as its snapshot-point write named it.
    pub resume_area: Mutex<Option<crate::snapshot::resume::Named>>,
    /// Tells the VMM thread the command started (a warm start recording
    /// its working set; None otherwise).
    pub command_evt: Option<EventFd>,
    /// The vCPU threads, for kicks from the VMM thread.
    pub vcpu_threads: Mutex<Vec<libc::pthread_t>>,
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
        .stack_size(crate::THREAD_STACK)
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
            if shared.timed_out.load(Ordering::Acquire) {
                if let Ok(regs) = vcpu.get_regs() {
                    let mut at = shared.stuck_at.lock().unwrap_or_else(|p| p.into_inner());
                    at.push((id, regs.rip));
                }
            }
            return;
        }
        match vcpu.run() {
            Ok(VcpuExit::MmioRead(addr, data)) => shared.bus.read(addr, data),
            Ok(VcpuExit::MmioWrite(addr, data)) => shared.bus.write(addr, data),
            Ok(VcpuExit::IoOut(port, data)) => {
                if port == control::PORT {
                    match shared.report.guest_write(data) {
                        control::Reached::SnapshotPoint => {
                            if let Some(evt) = &shared.snapshot_evt {
                                let area = crate::snapshot::resume::Named::by(vcpu);
                                *shared.resume_area.lock().unwrap_or_else(|p| p.into_inner()) =
                                    area;
                                // The VMM thread pauses every vCPU, this one
                                // too (the pause flag is seen right below).
                                shared.pause.requested.store(true, Ordering::Release);
                                let _ = evt.write(1);
                            }
                        }
                        control::Reached::Command => {
                            if let Some(evt) = &shared.command_evt {
                                let _ = evt.write(1);
                            }
                        }
                        control::Reached::Done => {
                            shared.report.mark(control::Phase::GuestDone);
                            shared.stop(Stop::Shutdown);
                            return;
                        }
                        control::Reached::Nothing => {}
                    }
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
        if shared.snapshots && shared.pause.requested.load(Ordering::Acquire) {
            shared.pause.park(id, vcpu, &shared.msrs, &shared.exiting);
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
