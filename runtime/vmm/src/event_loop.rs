//! The VMM thread's own event-loop subscribers (rust-vmm `event-manager`
//! over epoll): host console input, and the stop event a vCPU raises when
//! the guest shuts down. Devices' events are the device manager's.

use std::fs::File;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::virtio::console::{ConsoleInput, RX_QUEUE};
use devices::virtio::mmio::MmioTransport;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::warn;

use crate::snapshot::Asked;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

pub(crate) fn lock(t: &Mutex<MmioTransport>) -> std::sync::MutexGuard<'_, MmioTransport> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// How often held input is looked at again while the guest is not ready.
const RECHECK: Duration = Duration::from_millis(10);

/// Host input for the console (husk's stdin), handed to the device once the
/// guest can take it. Linux's virtio-console drops input that arrives
/// before a console port is connected and its tty open (`in_intr`), and
/// without the multiport control queue the device cannot see that moment;
/// so input waits until `ready()` says the guest has its console open.
/// Stops watching at end of input.
pub struct ConsoleIn {
    input: File,
    buffer: ConsoleInput,
    console: Arc<Mutex<MmioTransport>>,
    ready: Box<dyn Fn() -> bool + Send>,
    /// Input read before the guest was ready.
    pending: Vec<u8>,
    timer: TimerFd,
}

impl ConsoleIn {
    pub fn new(
        input: File,
        buffer: ConsoleInput,
        console: Arc<Mutex<MmioTransport>>,
        ready: Box<dyn Fn() -> bool + Send>,
    ) -> std::io::Result<Self> {
        Ok(ConsoleIn {
            input,
            buffer,
            console,
            ready,
            pending: Vec::new(),
            timer: TimerFd::new()?,
        })
    }

    /// Delivers pending input if the guest is ready, else looks again soon.
    fn deliver(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if !(self.ready)() {
            if let Err(e) = self.timer.reset(RECHECK, None) {
                warn!("cannot arm the console input timer: {e}");
            }
            return;
        }
        self.buffer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(self.pending.drain(..));
        lock(&self.console).process_queue(RX_QUEUE);
    }
}

impl MutEventSubscriber for ConsoleIn {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.timer, TIMER, EventSet::IN)) {
            warn!("cannot watch the console input timer: {e}");
        }
        if ops
            .add(Events::with_data(&self.input, INPUT, EventSet::IN))
            .is_ok()
        {
            return;
        }
        // epoll refuses regular files and /dev/null: such input is all
        // there already, so take it whole.
        match self.input.read_to_end(&mut self.pending) {
            Ok(_) => self.deliver(),
            Err(e) => warn!("cannot read console input: {e}"),
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == TIMER {
            let _ = self.timer.wait();
            self.deliver();
            return;
        }
        let mut buf = [0u8; 4096];
        match self.input.read(&mut buf) {
            Ok(n) if n > 0 => {
                self.pending.extend_from_slice(&buf[..n]);
                self.deliver();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => {
                // End of input (or an error): nothing more will come.
                let _ = ops.remove(events);
            }
        }
    }
}

const INPUT: u32 = 0;
const TIMER: u32 = 1;

/// Watches the stop event raised by a vCPU.
pub struct StopWatch {
    pub evt: EventFd,
    pub stopped: Arc<AtomicBool>,
}

impl MutEventSubscriber for StopWatch {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            warn!("cannot watch the stop event: {e}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.stopped.store(true, Ordering::Release);
    }
}

/// What taking a snapshot needs of the VM, shared by the two ways one is
/// asked for.
pub struct SnapshotSource {
    pub shared: Arc<crate::vcpu::Shared>,
    pub vm: Arc<kvm_ioctls::VmFd>,
    pub mem: vm_memory::GuestMemoryMmap,
    pub cpus: usize,
    pub pit: bool,
    /// Paused on request (`husk pause`) until a resume.
    pub paused: AtomicBool,
}

/// How long the vCPUs may take to stop.
const PARK_LIMIT: Duration = Duration::from_secs(5);

impl SnapshotSource {
    /// Every vCPU parked with its state saved, then, on this thread (so no
    /// device event is served meanwhile), the interrupt controllers, PIT
    /// and clock, every transport, and guest RAM, written through the
    /// target's open files; then the vCPUs run on. `warm`: init's resume
    /// area as its snapshot-point write named it (see
    /// [`crate::snapshot::resume`]) and this run's frame, for the snapshot
    /// a warm start takes at init's snapshot point.
    fn take(
        &self,
        target: &crate::snapshot::Target,
        warm: Option<(Option<crate::snapshot::resume::Named>, Option<&[u8]>)>,
    ) -> Result<(), String> {
        if self.paused.load(Ordering::Acquire) {
            // Its vCPUs' saved state is as old as the pause, while the
            // devices went on: not one moment. Resumed first, it is.
            return Err("the VM is paused: resume it first".into());
        }
        let started = std::time::Instant::now();
        let result = self.take_paused(target, warm);
        self.shared.pause.resume();
        match &result {
            Ok(()) => tracing::info!(took = ?started.elapsed(), "snapshot taken"),
            Err(e) => warn!("the snapshot failed: {e}"),
        }
        result
    }

    /// Parks every vCPU; their saved states.
    fn park(&self) -> Result<Vec<crate::snapshot::VcpuState>, String> {
        let shared = &self.shared;
        shared.pause.request(self.cpus);
        let kick = || {
            let threads = shared
                .vcpu_threads
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for &t in threads.iter() {
                // SAFETY: `t` is a vCPU thread of this process, joined only
                // after the event loop ends; the signal's handler is a no-op
                // that only interrupts KVM_RUN.
                unsafe { libc::pthread_kill(t, vmm_sys_util::signal::SIGRTMIN()) };
            }
        };
        let Some(vcpus) = shared.pause.wait_parked(PARK_LIMIT, kick) else {
            return Err(format!(
                "the vCPUs did not stop within {} s",
                PARK_LIMIT.as_secs()
            ));
        };
        vcpus.into_iter().collect()
    }

    /// `husk pause`: every vCPU stops until [`SnapshotSource::resume`];
    /// devices go on (a frame that arrives meanwhile waits in its queue).
    fn pause(&self) -> Result<(), String> {
        if self.paused.load(Ordering::Acquire) {
            return Err("the VM is paused already".into());
        }
        if let Err(e) = self.park() {
            self.shared.pause.resume();
            return Err(e);
        }
        self.paused.store(true, Ordering::Release);
        tracing::info!("paused");
        Ok(())
    }

    fn resume(&self) -> Result<(), String> {
        if !self.paused.swap(false, Ordering::AcqRel) {
            return Err("the VM is not paused".into());
        }
        self.shared.pause.resume();
        tracing::info!("resumed");
        Ok(())
    }

    fn take_paused(
        &self,
        target: &crate::snapshot::Target,
        warm: Option<(Option<crate::snapshot::resume::Named>, Option<&[u8]>)>,
    ) -> Result<(), String> {
        use crate::snapshot::{device_name, resume, Snapshot, VmState};
        let shared = &self.shared;
        let vcpus = self.park()?;
        let vm = VmState::save(&self.vm, self.pit).map_err(|e| e.to_string())?;
        let mut devices = Vec::new();
        let mut names = Vec::new();
        let mut disks = Vec::new();
        for t in shared.bus.transports() {
            let t = lock(t);
            let name = device_name(t.device_type());
            devices.push(t.save().map_err(|e| e.to_string())?);
            if name == "block" {
                let out = target
                    .disks
                    .get(disks.len())
                    .ok_or_else(|| format!("no file for disk {} of the snapshot", disks.len()))?;
                let saved = t
                    .save_disk(out)
                    .map_err(|e| format!("cannot save disk {}: {e}", disks.len()))?;
                disks.push(saved);
            }
            names.push(name);
        }
        let mut header = target.header.clone();
        header.devices = names;
        let snapshot = Snapshot {
            header,
            vm,
            vcpus,
            devices,
            disks,
            // Found with every vCPU parked: no page of it moves meanwhile.
            resume_area: match warm {
                Some((Some(named), _)) => resume::area(&self.mem, &named.pages(&self.mem)),
                _ => Vec::new(),
            },
        };
        target
            .write(&snapshot, &self.mem)
            .map_err(|e| format!("{e:#}"))?;
        // Only now, so that the snapshot holds no run's frame.
        if let Some((_, Some(frame))) = warm {
            resume::hand_over(&self.mem, &snapshot.resume_area, frame);
        }
        Ok(())
    }
}

/// Takes the VM's snapshot when the guest asks (a vCPU raised `evt`).
/// Once: a second request is ignored.
pub struct SnapshotTaker {
    pub evt: EventFd,
    pub source: Arc<SnapshotSource>,
    pub target: Option<crate::snapshot::Target>,
    /// This run's resume frame, for init's resume area.
    pub frame: Option<Vec<u8>>,
    /// What came of it, for the VM's outcome.
    pub result: Arc<Mutex<Option<Result<(), String>>>>,
}

impl MutEventSubscriber for SnapshotTaker {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            warn!("cannot watch the snapshot request: {e}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        let Some(target) = self.target.take() else {
            self.source.shared.pause.resume();
            return;
        };
        let named = self
            .source
            .shared
            .resume_area
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let result = self
            .source
            .take(&target, Some((named, self.frame.as_deref())));
        *self.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
    }
}

/// How long after its command started a guest's working set is recorded,
/// if the VM has not stopped before: the command's first steps (its
/// program read, its first pages, its first output) are on every warm
/// run's way to its output, as much as init's are.
pub const RECORD_AFTER: Duration = Duration::from_millis(250);

/// Records a warm start's working set (see [`crate::snapshot::Pages`]),
/// once: [`RECORD_AFTER`] after the guest's command started, or when the
/// VM stops before that (a short command's whole run).
pub struct PageRecorder {
    /// Written when the command starts.
    evt: EventFd,
    timer: TimerFd,
    mem: vm_memory::GuestMemoryMmap,
    /// This process's `/proc/self/pagemap`.
    pagemap: std::fs::File,
    /// The claimed file; taken when written.
    out: Option<std::fs::File>,
    /// Fault-around off in the RAM until the set is recorded.
    exact: Option<crate::snapshot::Exact>,
    started: bool,
}

const COMMAND: u32 = 0;

impl PageRecorder {
    pub fn new(
        evt: EventFd,
        mem: vm_memory::GuestMemoryMmap,
        pagemap: std::fs::File,
        out: std::fs::File,
    ) -> std::io::Result<Self> {
        let exact = crate::snapshot::exact(&mem)
            .map_err(|e| {
                tracing::info!(
                    "working set: no userfaultfd ({e}): recorded with the host's fault-around"
                )
            })
            .ok();
        Ok(PageRecorder {
            evt,
            timer: TimerFd::new()?,
            mem,
            pagemap,
            out: Some(out),
            exact,
            started: false,
        })
    }

    /// The VM stopped: records what its command touched, if it started
    /// and the set is not recorded yet.
    pub fn at_stop(&mut self) {
        if self.started {
            self.record();
        }
    }

    fn record(&mut self) {
        let Some(out) = self.out.take() else {
            return;
        };
        let saved = crate::snapshot::record(&self.mem, &self.pagemap)
            .and_then(|set| crate::snapshot::save_pages(&set, &out).map(|()| set.pages()));
        let how = match self.exact.take() {
            Some(_) => "exactly",
            None => "with the host's fault-around",
        };
        match saved {
            Ok(pages) => {
                tracing::info!("warm start: recorded a working set of {pages} pages, {how}")
            }
            Err(e) => warn!("cannot record the warm start's working set: {e}"),
        }
    }
}

impl MutEventSubscriber for PageRecorder {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.evt, COMMAND, EventSet::IN)) {
            warn!("cannot watch for the command's start: {e}");
        }
        if let Err(e) = ops.add(Events::with_data(&self.timer, TIMER, EventSet::IN)) {
            warn!("cannot watch the working set's timer: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == COMMAND {
            let _ = self.evt.read();
            let _ = ops.remove(events);
            self.started = true;
            if let Err(e) = self.timer.reset(RECORD_AFTER, None) {
                warn!("cannot arm the working set's timer ({e}): recording it now");
                self.record();
            }
            return;
        }
        let _ = self.timer.wait();
        let _ = ops.remove(events);
        self.record();
    }
}

/// A slot of the VM's ([`devices::virtio::slot::Slot`]), as the request
/// server knows it.
pub struct ServedSlot {
    /// Its platform device number (`virtio-mmio.N`).
    pub device: u32,
    pub transport: crate::device_manager::Transport,
    /// The husk network the interface in it is on, if any.
    pub network: Option<String>,
}

/// Serves what a process outside the jail asks ([`crate::snapshot::OnRequest`]):
/// takes a snapshot whenever it hands over the files of one, pauses and
/// resumes the vCPUs, puts network interfaces into empty slots, finds
/// them and takes them out; and answers.
pub struct SnapshotServer {
    pub requests: crate::snapshot::OnRequest,
    pub source: Arc<SnapshotSource>,
    /// The VM's slots: its boot-time interfaces', then the empty ones.
    pub slots: Vec<ServedSlot>,
}

impl SnapshotServer {
    /// Puts a virtio-net device on `stream` into the first slot it can go
    /// into (empty, and left alone by the guest's drivers); answers its
    /// platform device number.
    fn plug(
        &mut self,
        mac: [u8; 6],
        stream: std::os::unix::net::UnixStream,
        network: String,
    ) -> Result<String, String> {
        if self.slots.is_empty() {
            return Err("this VM was started without slots for more networks".into());
        }
        for slot in &mut self.slots {
            let mut t = lock(&slot.transport);
            if !t.can_plug() {
                continue;
            }
            let backend = devices::virtio::net::StreamBackend::new(stream);
            let net = devices::virtio::net::Net::new(Box::new(backend), mac);
            t.plug(Box::new(net))
                .map_err(|e| format!("cannot plug the interface: {e}"))?;
            slot.network = Some(network).filter(|n| !n.is_empty());
            return Ok(slot.device.to_string());
        }
        Err(format!(
            "every slot for more networks is taken ({})",
            self.slots.len()
        ))
    }

    /// The platform device number of the slot with the interface on
    /// `network`.
    fn locate(&self, network: &str) -> Result<String, String> {
        self.slots
            .iter()
            .find(|s| s.network.as_deref() == Some(network))
            .map(|s| s.device.to_string())
            .ok_or_else(|| format!("no interface in a slot is on {network}"))
    }

    /// Takes the device out of platform device `device`'s slot.
    fn unplug(&mut self, device: u32) -> Result<String, String> {
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.device == device)
            .ok_or_else(|| format!("virtio-mmio.{device} is not a slot"))?;
        lock(&slot.transport)
            .unplug()
            .map_err(|e| format!("cannot take virtio-mmio.{device} out: {e}"))?;
        slot.network = None;
        Ok(String::new())
    }
}

impl MutEventSubscriber for SnapshotServer {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.requests.socket, EventSet::IN)) {
            warn!("cannot watch the snapshot requests: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.requests.receive() {
            Ok(Some(asked)) => {
                let done = |r: Result<(), String>| r.map(|()| String::new());
                let result = match asked {
                    Asked::Snapshot(target) => done(self.source.take(&target, None)),
                    Asked::Pause => done(self.source.pause()),
                    Asked::Resume => done(self.source.resume()),
                    Asked::Refused(why) => Err(format!("no snapshot can be taken of it: {why}")),
                    Asked::Plug {
                        mac,
                        stream,
                        network,
                    } => self.plug(mac, stream, network),
                    Asked::Unplug { device } => self.unplug(device),
                    Asked::Locate { network } => self.locate(&network),
                };
                self.requests.answer(&result);
            }
            Ok(None) => {}
            // The requester's end closed (its keeper is gone): no more
            // requests, and no busy loop on a hung-up socket.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                let _ = ops.remove(events);
            }
            Err(e) => self.requests.answer(&Err(format!("a bad request: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, Write};
    use std::time::Instant;

    use event_manager::{EventManager, SubscriberOps};

    use super::*;
    use crate::memory::{restore, Backing};
    use crate::snapshot::WorkingSet;

    /// A recorder over 1 MiB of RAM restored private from a file, with the
    /// eventfd that tells it of the command's start, and the file it
    /// writes its set into.
    fn recorder() -> (PageRecorder, EventFd, tempfile::NamedTempFile, File) {
        let mut ram = tempfile::NamedTempFile::new().unwrap();
        ram.write_all(&vec![7u8; 1 << 20]).unwrap();
        let mem = restore(1 << 20, ram.as_file(), Backing::Private).unwrap();
        let out = tempfile::tempfile().unwrap();
        let evt = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let command = evt.try_clone().unwrap();
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        // The recorder's clone outlives `mem`, so this 1 MiB stays mapped
        // for the rest of the tests (as RAM a VMM's thread still held would).
        let r = PageRecorder::new(evt, mem.clone(), pagemap, out.try_clone().unwrap()).unwrap();
        (r, command, ram, out)
    }

    fn written(mut out: &File) -> Option<WorkingSet> {
        let mut bytes = Vec::new();
        out.rewind().unwrap();
        out.read_to_end(&mut bytes).unwrap();
        (!bytes.is_empty()).then(|| WorkingSet::parse(&bytes, 256).unwrap())
    }

    #[test]
    fn the_working_set_is_recorded_a_while_after_the_command_starts() {
        let (r, command, _ram, out) = recorder();
        let mut events = EventManager::<Arc<Mutex<PageRecorder>>>::new().unwrap();
        events.add_subscriber(Arc::new(Mutex::new(r)));
        command.write(1).unwrap();
        let started = Instant::now();
        events.run_with_timeout(1000).unwrap();
        assert!(written(&out).is_none(), "not at the command's start");
        while written(&out).is_none() && started.elapsed() < 10 * RECORD_AFTER {
            events.run_with_timeout(1000).unwrap();
        }
        assert!(written(&out).is_some(), "recorded once its timer ran out");
        assert!(started.elapsed() >= RECORD_AFTER, "not before its time");
    }

    #[test]
    fn a_vm_that_stops_sooner_records_at_its_stop_once_its_command_started() {
        let (mut r, _command, _ram, out) = recorder();
        r.at_stop();
        assert!(
            written(&out).is_none(),
            "no command started: nothing to record"
        );

        let (r, command, _ram, out) = recorder();
        let r = Arc::new(Mutex::new(r));
        let mut events = EventManager::<Arc<Mutex<PageRecorder>>>::new().unwrap();
        events.add_subscriber(r.clone());
        command.write(1).unwrap();
        events.run_with_timeout(1000).unwrap();
        assert!(written(&out).is_none(), "not at the command's start");
        r.lock().unwrap().at_stop();
        assert!(written(&out).is_some(), "recorded at the stop");
    }
}
