//! husk's VMM: one KVM micro-VM with virtio-mmio devices only.
//!
//! [`run`] builds the VM from a plain [`VmConfig`] (this crate knows no TOML
//! and no OCI), boots it, serves its devices on the calling thread's event
//! loop while one thread per vCPU runs the guest, and returns when the guest
//! shuts down (Linux with `reboot=t` triple-faults, a clean KVM exit).

pub mod boot;
mod config;
pub mod control;
pub mod cpu;
pub mod device_manager;
pub mod disk;
mod error;
mod event_loop;
pub mod jail;
pub mod layout;
mod memory;
pub mod mptable;
pub mod net;
pub mod passt;
pub mod seccomp;
pub mod sidecar;
pub mod snapshot;
mod vcpu;
pub mod virtiofsd;
pub mod vsock;

pub use config::{
    DiskAccess, DiskConfig, Outcome, ShareConfig, VmConfig, VmExit, MAX_CPUS, MAX_MEMORY_MIB,
};
use error::io;
pub use error::VmmError;
pub use memory::{GuestRam, MemoryUsage};

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::storage::Storage;
use devices::virtio::block::Block;
use devices::virtio::console::Console;
use devices::virtio::fs::Fs;
use devices::virtio::net::{Net, NetBackend};
use devices::virtio::rng::Rng;
use devices::virtio::slot::Slot;
use devices::virtio::vsock::{HostSide, Vsock};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

pub use control::Phase;
use device_manager::DeviceManager;
use layout::*;
pub use net::{NetBackendConfig, NetConfig};
pub use seccomp::SeccompMode;
use vcpu::{Shared, Stop};

/// Whether this host's `/dev/kvm` is served by PVM, which cannot boot an
/// ordinary Linux guest.
pub fn host_kvm_is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// The stack of each vCPU thread: a little under 2 MiB, so that no
/// transparent huge page can back it. Where THP is `always` (the test
/// bed's kernel), a stack of a whole 2 MiB that lands aligned (the first
/// thread's lands right under the guest RAM, which is aligned) is faulted
/// in as one huge page at its first touch: 2 MiB resident for a stack
/// that uses a few KiB, measured as the better part of the VMM's memory
/// overhead.
pub(crate) const THREAD_STACK: usize = (2 << 20) - (64 << 10);

/// Husk's own kernel arguments: the console on hvc0, reboot by triple
/// fault (a clean KVM exit), reboot at once on panic, and, for guests given
/// a PIT, no probe of it through the IOAPIC (KVM's PIT is known to work;
/// the probe waits for ticks and costs a good part of a boot).
const BASE_CMDLINE: &str = "console=hvc0 reboot=t panic=-1 no_timer_check";

/// Everything the VM needs from the host's filesystem, opened up front:
/// after [`open_host_files`] the VMM opens nothing, so it can run in a
/// jail with an empty root and as a user who could not open these files.
pub struct HostFiles {
    kvm: Kvm,
    kernel: File,
    initrd: Option<File>,
    /// Opened with the access each needs and locked.
    disks: Vec<Storage>,
    net: Vec<Box<dyn NetBackend>>,
    urandom: File,
    usage: Option<memory::UsageFiles>,
    /// `/proc/self/pagemap`, for a warm start that records its working
    /// set (see [`snapshot::Pages`]).
    pagemap: Option<File>,
    pvm: bool,
}

/// Opens (and locks) what `cfg` names: /dev/kvm, the kernel, the initrd,
/// the disks, /dev/urandom.
pub fn open_host_files(cfg: &VmConfig) -> Result<HostFiles, VmmError> {
    check_shape(cfg)?;
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => VmmError::NoKvm,
        libc::EACCES | libc::EPERM => VmmError::KvmPermission,
        _ => VmmError::KvmOpen(e),
    })?;
    Ok(HostFiles {
        kvm,
        kernel: boot::open_kernel(&cfg.kernel)?,
        initrd: cfg.initrd.as_deref().map(boot::open_initrd).transpose()?,
        disks: cfg
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| disk::open(d, disk::restored_layer(cfg, i, d)?))
            .collect::<Result<_, _>>()?,
        net: cfg
            .net
            .iter()
            .enumerate()
            .map(|(index, n)| {
                net::open_backend(&n.backend).map_err(|source| VmmError::Net { index, source })
            })
            .collect::<Result<_, _>>()?,
        urandom: File::open("/dev/urandom").map_err(io("opening /dev/urandom"))?,
        usage: if cfg.report_memory {
            memory::UsageFiles::open().ok()
        } else {
            None
        },
        pagemap: match records_pages(cfg) {
            true => open_pagemap(),
            false => None,
        },
        pvm: host_kvm_is_pvm(),
    })
}

/// How the VM's RAM is backed: a backend in another process maps the RAM
/// of a VM with shares.
fn backing(cfg: &VmConfig) -> memory::Backing {
    if cfg.shares.is_empty() {
        memory::Backing::Private
    } else {
        memory::Backing::Shared
    }
}

/// Whether the VM is a restore that records its working set: one whose RAM
/// is mapped from the snapshot (shared RAM is a copy, all of it present).
fn records_pages(cfg: &VmConfig) -> bool {
    backing(cfg) == memory::Backing::Private
        && cfg
            .restore
            .as_ref()
            .is_some_and(|r| matches!(r.pages, snapshot::Pages::Record(_)))
}

fn open_pagemap() -> Option<File> {
    File::open("/proc/self/pagemap")
        .map_err(|e| tracing::debug!("cannot open /proc/self/pagemap: {e}"))
        .ok()
}

/// The VMM checks the VM's shape itself rather than trusting its caller.
fn check_shape(cfg: &VmConfig) -> Result<(), VmmError> {
    if cfg.cpus == 0 || cfg.cpus > MAX_CPUS {
        return Err(VmmError::Cpus(cfg.cpus));
    }
    if cfg.memory_mib > MAX_MEMORY_MIB {
        return Err(VmmError::MemoryTooLarge(cfg.memory_mib));
    }
    Ok(())
}

impl HostFiles {
    /// In the process that does not run the VM (the jail's supervisor):
    /// closes its copies of the interfaces' host ends, those opened and
    /// those `cfg` holds, so that the VM's own are the last. Taken out of
    /// the running VM, an interface then closes its socket, and its peer
    /// (a husk network's hub) hears the VM leave.
    pub fn close_interfaces(&mut self, cfg: &mut VmConfig) {
        self.net.clear();
        cfg.net.clear();
    }

    /// Opens again the files that describe this process (`/proc/self/...`):
    /// after a fork, the ones opened before it still describe the parent.
    /// Call in the child while the host's `/proc` is still visible.
    pub fn reopen_own(&mut self) {
        if self.usage.is_some() {
            self.usage = memory::UsageFiles::open().ok();
        }
        if self.pagemap.is_some() {
            self.pagemap = open_pagemap();
        }
    }
}

/// Builds and runs the VM until the guest shuts down or the timeout passes.
pub fn run(cfg: VmConfig) -> Result<Outcome, VmmError> {
    let files = open_host_files(&cfg)?;
    run_with(cfg, files)
}

/// [`run`] with the host files already open (perhaps before entering a
/// jail).
pub fn run_with(mut cfg: VmConfig, files: HostFiles) -> Result<Outcome, VmmError> {
    let started = cfg.started;
    // Every filter exists before any thread starts.
    let snapshots = cfg.snapshot.is_some() || cfg.snapshot_requests.is_some();
    let filters = seccomp::Filters::build_for(cfg.seccomp, snapshots)?.map(Arc::new);
    let mut restore = cfg.restore.take();
    let pages = restore
        .as_mut()
        .map(|r| std::mem::take(&mut r.pages))
        .unwrap_or_default();
    let HostFiles {
        kvm,
        kernel,
        initrd,
        disks,
        net: net_backends,
        urandom,
        usage: usage_files,
        pagemap,
        pvm,
    } = files;
    let vm = Arc::new(
        kvm.create_vm()
            .map_err(|e| VmmError::Kvm("KVM_CREATE_VM", e))?,
    );
    vm.set_tss_address(0xfffb_d000)
        .map_err(|e| VmmError::Kvm("KVM_SET_TSS_ADDR", e))?;
    // In-kernel LAPICs and IOAPIC, and the PIT if asked for; with one,
    // `no_timer_check` on the command line spares the boot Linux's probe of
    // it through the IOAPIC.
    vm.create_irq_chip()
        .map_err(|e| VmmError::Kvm("KVM_CREATE_IRQCHIP", e))?;
    if cfg.legacy_pit {
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit)
            .map_err(|e| VmmError::Kvm("KVM_CREATE_PIT2", e))?;
    }
    let report = control::GuestReport::new(started);
    report.mark(Phase::VmCreated);

    let ram = cfg.memory_mib << 20;
    let backing = backing(&cfg);
    let mem = match &restore {
        // From the snapshot: mapped private, pages coming in as the guest
        // touches them, or copied into shared RAM.
        Some(r) => memory::restore(ram, &r.memory, backing)?,
        None => memory::create(ram, backing)?,
    };
    let (recorder, read_in) = working_set(&mem, backing, pages, pagemap);
    let (recorder, command_evt) = recorder.unzip();
    register_memory(&vm, &mem)?;
    report.mark(Phase::MemoryReady);

    // Devices: the console first (hvc0), then the disks (vda, ...), the
    // network interfaces (eth0, ...), entropy.
    let mut cmdline = Cmdline::new(CMDLINE_MAX).map_err(VmmError::Cmdline)?;
    cmdline
        .insert_str(BASE_CMDLINE)
        .map_err(VmmError::Cmdline)?;
    let mut dm = DeviceManager::default();
    let console = Console::new(std::mem::replace(
        &mut cfg.console_output,
        Box::new(std::io::sink()),
    ));
    let console_buffer = console.input();
    let console_transmitted = console.transmitted();
    let console = dm.attach(&vm, &mem, Box::new(console), &mut cmdline)?;
    for (i, (d, storage)) in cfg.disks.iter().zip(disks).enumerate() {
        let id = format!("husk-vd{}", (b'a' + i as u8) as char);
        let readonly = d.access == DiskAccess::ReadOnly;
        let block = Block::new(storage, readonly, &id).map_err(|source| VmmError::DiskOpen {
            path: d.path.clone(),
            source,
        })?;
        dm.attach(&vm, &mem, Box::new(block), &mut cmdline)?;
    }
    // A VM with slots has its boot-time interfaces in slots too, each
    // holding its device from the start, so that one can be taken out
    // while it runs. The configs go here: the interfaces' own copies of
    // their sockets are the VM's ends, which close when one is taken out.
    let mut slots = Vec::new();
    for (index, (n, backend)) in std::mem::take(&mut cfg.net)
        .into_iter()
        .zip(net_backends)
        .enumerate()
    {
        let net = Box::new(Net::new(backend, n.mac));
        if cfg.net_slots == 0 {
            dm.attach(&vm, &mem, net, &mut cmdline)?;
            continue;
        }
        let device = dm.len() as u32;
        let slot = Slot::holding(net).map_err(|source| VmmError::NetSlot { index, source })?;
        slots.push(event_loop::ServedSlot {
            device,
            transport: dm.attach(&vm, &mem, Box::new(slot), &mut cmdline)?,
            network: n.network,
        });
    }
    if let Some(v) = cfg.vsock.take() {
        let host = HostSide {
            socket: v.socket,
            presets: v.presets,
        };
        let dev = Vsock::new(u64::from(v.cid), host).map_err(VmmError::Vsock)?;
        dm.attach(&vm, &mem, Box::new(dev), &mut cmdline)?;
    }
    for share in std::mem::take(&mut cfg.shares) {
        let dev = Fs::new(share.backend, &share.tag, &mem).map_err(|source| VmmError::Share {
            tag: share.tag.clone(),
            source,
        })?;
        dm.attach(&vm, &mem, Box::new(dev), &mut cmdline)?;
    }
    dm.attach(&vm, &mem, Box::new(Rng::with_source(urandom)), &mut cmdline)?;
    // As many of the slots asked for as the interrupts left allow.
    let room = device_manager::MAX_DEVICES.saturating_sub(dm.len());
    for _ in 0..usize::from(cfg.net_slots).min(room) {
        let device = dm.len() as u32;
        let slot = Slot::new(devices::virtio::net::QUEUE_SIZES)
            .map_err(io("creating a network slot's epoll"))?;
        slots.push(event_loop::ServedSlot {
            device,
            transport: dm.attach(&vm, &mem, Box::new(slot), &mut cmdline)?,
            network: None,
        });
    }
    if !cfg.cmdline.trim().is_empty() {
        cmdline
            .insert_str(cfg.cmdline.trim())
            .map_err(VmmError::Cmdline)?;
    }
    let (device_events, bus) = dm.finish();

    // A restored VM's memory already holds the kernel, and its devices and
    // interrupt controllers are put back as they were; a booted one loads
    // the kernel.
    let (entry, mut tsc) = match &restore {
        Some(r) => {
            let names: Vec<String> = bus
                .transports()
                .map(|t| snapshot::device_name(event_loop::lock(t).device_type()))
                .collect();
            r.snapshot
                .header
                .check_devices(&names)
                .map_err(VmmError::Restore)?;
            for (index, (t, state)) in bus.transports().zip(&r.snapshot.devices).enumerate() {
                event_loop::lock(t)
                    .restore(state)
                    .map_err(|source| VmmError::RestoreDevice { index, source })?;
            }
            if r.snapshot.vm.pit.is_some() != cfg.legacy_pit {
                return Err(VmmError::Restore(snapshot::SnapshotError::Mismatch {
                    what: "PIT",
                    snapshot: r.snapshot.vm.pit.is_some().to_string(),
                    this: cfg.legacy_pit.to_string(),
                }));
            }
            let tsc = r.snapshot.vm.restore(&vm).map_err(VmmError::Restore)?;
            // This run's parameters, where init will look for them first.
            if let Some(frame) = &cfg.resume_frame {
                snapshot::resume::hand_over(&mem, &r.snapshot.resume_area, frame);
            }
            (None, Some(tsc))
        }
        None => {
            let (entry, zero_page) = boot::load_kernel(&mem, kernel, &cfg.kernel, ram)?;
            let initrd = match (initrd, &cfg.initrd) {
                (Some(file), Some(path)) => Some(boot::load_initrd(&mem, file, path, ram)?),
                _ => None,
            };
            boot::write_boot_info(&mem, entry, zero_page, &cmdline, initrd, ram)?;
            mptable::write(&mem, cfg.cpus)
                .map_err(|e| VmmError::GuestMemory(format!("writing the MP table: {e}")))?;
            (Some(entry), None)
        }
    };
    report.mark(Phase::KernelLoaded);

    let stop_evt = EventFd::new(EFD_NONBLOCK).map_err(io("creating an eventfd"))?;
    let snapshot_evt = match &cfg.snapshot {
        Some(_) => Some(EventFd::new(EFD_NONBLOCK).map_err(io("creating an eventfd"))?),
        None => None,
    };
    let shared = Arc::new(Shared {
        bus,
        report,
        stop: Mutex::new(None),
        stop_evt: stop_evt.try_clone().map_err(io("cloning an eventfd"))?,
        exiting: AtomicBool::new(false),
        timed_out: AtomicBool::new(false),
        stuck_at: Mutex::new(Vec::new()),
        pvm,
        snapshots,
        pause: vcpu::Pause::default(),
        msrs: match snapshots {
            true => snapshot::msr_list(&kvm).map_err(VmmError::Restore)?,
            false => Vec::new(),
        },
        snapshot_evt: snapshot_evt
            .as_ref()
            .map(EventFd::try_clone)
            .transpose()
            .map_err(io("cloning an eventfd"))?,
        command_evt,
        vcpu_threads: Mutex::new(Vec::new()),
        resume_area: Mutex::new(None),
    });
    let snapshot_result = Arc::new(Mutex::new(None));

    // The event loop, before any vCPU runs.
    let mut events = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
        .map_err(VmmError::EventLoop)?;
    let stopped = Arc::new(AtomicBool::new(false));
    events.add_subscriber(Arc::new(Mutex::new(event_loop::StopWatch {
        evt: stop_evt,
        stopped: stopped.clone(),
    })));
    for d in device_events {
        events.add_subscriber(Arc::new(Mutex::new(d)));
    }
    let source = Arc::new(event_loop::SnapshotSource {
        shared: shared.clone(),
        vm: vm.clone(),
        mem: mem.clone(),
        cpus: usize::from(cfg.cpus),
        pit: cfg.legacy_pit,
        paused: AtomicBool::new(false),
    });
    if let Some(evt) = snapshot_evt {
        events.add_subscriber(Arc::new(Mutex::new(event_loop::SnapshotTaker {
            evt,
            source: source.clone(),
            target: cfg.snapshot.take(),
            frame: cfg.resume_frame.take(),
            result: snapshot_result.clone(),
        })));
    }
    if let Some(r) = &recorder {
        events.add_subscriber(r.clone());
    }
    if let Some(requests) = cfg.snapshot_requests.take() {
        events.add_subscriber(Arc::new(Mutex::new(event_loop::SnapshotServer {
            requests,
            source,
            slots,
        })));
    }
    if let Some(input) = cfg.console_input.take() {
        // Host input flows once the guest has its console open: husk's init
        // says so on the control port; another init shows it by writing. A
        // restored guest had it open when it was saved (a snapshot is taken
        // at init's snapshot point or of a running appliance), and its init
        // says nothing again: a command that reads before it writes would
        // wait for input held back for ever.
        let guest = shared.clone();
        let restored = restore.is_some();
        let ready = Box::new(move || {
            restored || guest.report.init_running() || console_transmitted.load(Ordering::Acquire)
        });
        let console_in = event_loop::ConsoleIn::new(input, console_buffer, console, ready)
            .map_err(io("creating a timerfd"))?;
        events.add_subscriber(Arc::new(Mutex::new(console_in)));
    }

    // vCPUs: all created and set up, then started.
    register_signal_handler(SIGRTMIN(), kick_handler).map_err(VmmError::KickSignal)?;
    let cpuid = cpu::supported_cpuid(&kvm)?;
    let mut vcpus = Vec::new();
    for id in 0..cfg.cpus {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| VmmError::Kvm("KVM_CREATE_VCPU", e))?;
        let vcpu_cpuid = cpu::cpuid_for(&cpuid, id, cfg.cpus);
        match (entry, &restore, &mut tsc) {
            (Some(entry), _, _) => cpu::setup_vcpu(&fd, &mem, &vcpu_cpuid, id, entry)?,
            (None, Some(r), Some(tsc)) => {
                fd.set_cpuid2(&vcpu_cpuid)
                    .map_err(|e| VmmError::Kvm("KVM_SET_CPUID2", e))?;
                let state = r.snapshot.vcpus.get(usize::from(id)).ok_or_else(|| {
                    VmmError::Restore(snapshot::SnapshotError::Mismatch {
                        what: "vCPU count",
                        snapshot: r.snapshot.vcpus.len().to_string(),
                        this: cfg.cpus.to_string(),
                    })
                })?;
                state
                    .restore(&fd, usize::from(id), tsc)
                    .map_err(VmmError::Restore)?;
            }
            _ => unreachable!("a VM either boots or is restored"),
        }
        vcpus.push(fd);
    }
    if let (Some(set), Some(vcpu)) = (&read_in, vcpus.first()) {
        let at = Instant::now();
        let mapped = snapshot::pre_fault(vcpu, &mem, set);
        tracing::info!(
            "warm start: mapped {mapped} of the working set's pages for the guest in {:.1} ms",
            at.elapsed().as_secs_f64() * 1e3
        );
    }
    if restore.is_some() {
        // Only now: an interrupt raised before the interrupt controllers'
        // and vCPUs' saved state went in would have been overwritten.
        for (index, t) in shared.bus.transports().enumerate() {
            event_loop::lock(t)
                .resume()
                .map_err(|source| VmmError::ResumeDevice { index, source })?;
        }
    }
    drop(restore);
    let mut threads = Vec::new();
    for (id, fd) in vcpus.into_iter().enumerate() {
        let t = vcpu::spawn(id as u8, fd, shared.clone(), filters.clone());
        let t = t.map_err(io("starting a vCPU thread"))?;
        shared
            .vcpu_threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(std::os::unix::thread::JoinHandleExt::as_pthread_t(&t));
        threads.push(t);
    }
    // This thread serves the guest's devices from here on, filtered like
    // the vCPUs: one thread (and one filter's installation) fewer than a
    // thread of its own that this one would wait for.
    let deadline = cfg.timeout.map(|t| Instant::now() + t);
    let served = match &filters {
        Some(f) => f.install(seccomp::ThreadKind::Vmm).map_err(VmmError::from),
        None => Ok(()),
    }
    .and_then(|()| {
        let served = serve(&mut events, &stopped, deadline);
        if let Some(r) = &recorder {
            r.lock().unwrap_or_else(|p| p.into_inner()).at_stop();
        }
        served
    });
    let timed_out = match served {
        Ok(timed_out) => timed_out,
        Err(e) => {
            shared.stop(Stop::Failed(e.to_string()));
            stop_vcpus(&shared, threads);
            return Err(e);
        }
    };

    shared.timed_out.store(timed_out, Ordering::Release);
    stop_vcpus(&shared, threads);
    let mut stuck_at =
        std::mem::take(&mut *shared.stuck_at.lock().unwrap_or_else(|p| p.into_inner()));
    stuck_at.sort_unstable();

    let stop = shared
        .stop
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let exit = match stop {
        _ if timed_out => VmExit::Timeout,
        Some(Stop::Failed(why)) => return Err(VmmError::Guest(why)),
        Some(Stop::Shutdown) | None => VmExit::Shutdown {
            status: shared.report.status(),
        },
    };
    let snapshot = snapshot_result
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    Ok(Outcome {
        exit,
        timings: shared.report.marks(),
        memory: usage_files.and_then(|f| f.usage(&mem)),
        snapshot,
        stuck_at,
    })
}

/// A recording warm start's subscriber, shared with the VMM thread, which
/// has it record at the VM's stop if it has not yet.
type Recorder = Arc<Mutex<event_loop::PageRecorder>>;

/// A warm start's working set (see [`snapshot::Pages`]): read in now
/// (and returned, for the vCPUs' nested page tables), or recorded by the
/// returned subscriber, which the returned eventfd tells of the
/// command's start.
fn working_set(
    mem: &GuestMemoryMmap,
    backing: memory::Backing,
    pages: snapshot::Pages,
    pagemap: Option<File>,
) -> (Option<(Recorder, EventFd)>, Option<snapshot::WorkingSet>) {
    match (pages, backing) {
        (snapshot::Pages::Prefetch(set), memory::Backing::Private) => {
            let read = snapshot::prefetch(mem, &set);
            tracing::info!(
                "warm start: read in {read} of the working set's {} pages",
                set.pages()
            );
            (None, Some(set))
        }
        (snapshot::Pages::Record(out), memory::Backing::Private) => {
            let recorder = (|| {
                let evt = EventFd::new(EFD_NONBLOCK)?;
                let command = evt.try_clone()?;
                let pagemap = pagemap.ok_or_else(|| std::io::Error::other("no pagemap"))?;
                let r = event_loop::PageRecorder::new(evt, mem.clone(), pagemap, out)?;
                Ok::<_, std::io::Error>((Arc::new(Mutex::new(r)), command))
            })();
            match recorder {
                Ok(r) => (Some(r), None),
                Err(e) => {
                    tracing::debug!("no working set recorded: {e}");
                    (None, None)
                }
            }
        }
        // Shared RAM is a copy of the whole file: nothing to read ahead.
        (snapshot::Pages::Record(out), memory::Backing::Shared) => {
            let _ = snapshot::save_pages(&snapshot::WorkingSet::new(Vec::new()), &out);
            (None, None)
        }
        _ => (None, None),
    }
}

/// The event loop, until the guest stops or the deadline passes (true).
fn serve(
    events: &mut EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    stopped: &AtomicBool,
    deadline: Option<Instant>,
) -> Result<bool, VmmError> {
    while !stopped.load(Ordering::Acquire) {
        let wait_ms = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(true);
                }
                left.as_millis().min(i32::MAX as u128) as i32
            }
            None => -1,
        };
        events
            .run_with_timeout(wait_ms)
            .map_err(VmmError::EventLoop)?;
    }
    Ok(false)
}

/// Stops every vCPU thread: flag, then kick each out of KVM_RUN until it
/// has left (a kick can land just before it re-enters the guest).
fn stop_vcpus(shared: &Shared, threads: Vec<std::thread::JoinHandle<()>>) {
    shared.exiting.store(true, Ordering::Release);
    for t in &threads {
        for _ in 0..200 {
            if t.is_finished() {
                break;
            }
            let _ = t.kill(SIGRTMIN());
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for t in threads {
        if t.is_finished() {
            let _ = t.join();
        }
    }
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only interrupts KVM_RUN (EINTR); the vCPU loop then sees `exiting`.
}

/// Registers guest RAM with KVM, slot by slot.
fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| VmmError::GuestMemory(e.to_string()))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: `host` is the start of a live mapping of `region.len()`
        // bytes owned by `mem`, never resized or moved. KVM reaches guest
        // RAM through this process's page tables (as copy_from_user does),
        // never through a kernel pointer kept from this call, so the host
        // is safe while the mapping lives as long as any vCPU runs:
        // `run_with` stops the vCPU threads (kicking each until it has left
        // KVM_RUN) before `mem` is dropped at its end, which unmaps it. A
        // vCPU that ignores 200 kicks is abandoned, still holding the
        // devices and their clones of the memory: then `mem` leaves it
        // mapped (see `memory::GuestRam`).
        unsafe { vm.set_user_memory_region(r) }
            .map_err(|e| VmmError::Kvm("KVM_SET_USER_MEMORY_REGION", e))?;
    }
    Ok(())
}
