//! virtio-fs whose queues another process serves: a vhost-user frontend
//! for a backend such as virtiofsd.
//!
//! The VMM keeps the device's register file, its config space (the tag
//! the guest mounts) and the vhost-user conversation; the backend maps the
//! guest's RAM (a shared memfd, sent once in `SET_MEM_TABLE`), pops the
//! FUSE requests from the queues and writes the replies itself. The
//! guest's queue notifications are KVM ioeventfds handed to the backend as
//! its kick descriptors, and the backend signals the device's irqfd
//! directly, so a request never passes through the VMM's threads.
//!
//! Because the backend raises the interrupt without the transport, the
//! `VRING` bit of the interrupt status is held set while the backend runs:
//! the driver then looks at its queues on every interrupt of this device
//! (Firecracker does the same for its vhost-user devices).
//!
//! The conversation with the backend is socket I/O, which the vCPU threads
//! may not do (their seccomp filter has no `sendmsg`): `activate` and
//! `reset`, which the transport calls on a vCPU thread, only record what
//! the driver asked and signal an eventfd; the VMM thread then talks to
//! the backend. Kicks the guest makes in between wait in their eventfds
//! until the backend takes them.
//!
//! A snapshot holds the device only while the guest has made no request
//! (before it mounts the share, as at init's snapshot point): the backend
//! then holds nothing but what the transport saves, and a restored device
//! hands a new backend the rings where they were, as at `DRIVER_OK`.
//! After the first request the backend's open files and place in the
//! rings are its own, and a snapshot is refused.
//!
//! A backend that ends is seen at once (its socket hangs up: an error at
//! start, `DEVICE_NEEDS_RESET` later). One that stops answering stalls the
//! VMM thread in the middle of a message, as it would QEMU's: the vhost
//! crate retries a timed-out read forever, so there is no deadline to set.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use tracing::warn;
use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_FS;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    read_config_bytes, ActivateError, Activation, DeviceError, HostEvent, Mem, Ready, VirtioDevice,
    INT_VRING,
};

/// The high-priority queue (FORGET, INTERRUPT) and one request queue.
const QUEUES: usize = 2;
/// Linux sizes its queues from this; 1024 lets a large read or write
/// travel as one request.
const QUEUE_SIZE: u16 = 1024;
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE; QUEUES];
/// The longest tag the config space holds (virtio 1.2, 5.11.4).
pub const MAX_TAG_LEN: usize = 36;

/// Virtio feature bits the guest may get when the backend offers them.
const PASSED_FEATURES: u64 =
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << VIRTIO_RING_F_INDIRECT_DESC);

const TOKEN_REQUEST: u32 = 0;
const TOKEN_BACKEND: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("the tag {0:?} is empty or longer than {MAX_TAG_LEN} bytes")]
    Tag(String),
    #[error("creating an eventfd")]
    EventFd(#[source] io::Error),
    #[error("the backend does not offer virtio 1 (VIRTIO_F_VERSION_1)")]
    NotModern,
    #[error("the backend refused {what}")]
    Backend {
        what: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("guest memory region {0} has no file a backend could map")]
    MemoryNotShared(usize),
}

fn backend(what: &'static str) -> impl FnOnce(vhost::Error) -> FsError {
    move |source| FsError::Backend { what, source }
}

/// What the driver asked for last, for the VMM thread to carry out.
enum Request {
    None,
    Start(Activation),
    Stop,
}

/// A virtio-fs device served by a vhost-user backend.
pub struct Fs {
    frontend: Frontend,
    /// The backend's socket, watched for its hang-up.
    socket: RawFd,
    config: [u8; MAX_TAG_LEN + 4],
    /// Virtio features offered to the driver: the backend's, filtered.
    features: u64,
    /// The backend offered, and so gets, `VHOST_USER_F_PROTOCOL_FEATURES`.
    protocol: bool,
    /// The queues' notification eventfds (KVM ioeventfds), kicks for the
    /// backend.
    kicks: Vec<EventFd>,
    request: Request,
    request_evt: EventFd,
    /// The activation the backend runs with.
    running: Option<Activation>,
}

impl Fs {
    /// Opens the vhost-user conversation on `socket` (connected to the
    /// backend), and gives the backend `mem`, which must be file-backed
    /// (shared), and the guest sees `tag`.
    pub fn new(socket: UnixStream, tag: &str, mem: &Mem) -> Result<Fs, FsError> {
        if tag.is_empty() || tag.len() > MAX_TAG_LEN {
            return Err(FsError::Tag(tag.into()));
        }
        let fd = socket.as_raw_fd();
        let mut frontend = Frontend::from_stream(socket, QUEUES as u64);
        frontend.set_owner().map_err(backend("SET_OWNER"))?;
        let offered = frontend.get_features().map_err(backend("GET_FEATURES"))?;
        if offered & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(FsError::NotModern);
        }
        let protocol = offered & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        if protocol {
            let theirs = frontend
                .get_protocol_features()
                .map_err(backend("GET_PROTOCOL_FEATURES"))?;
            // Only REPLY_ACK: every request is then acknowledged, so a
            // refusal surfaces where it happened.
            let ours = theirs & VhostUserProtocolFeatures::REPLY_ACK;
            frontend
                .set_protocol_features(ours)
                .map_err(backend("SET_PROTOCOL_FEATURES"))?;
            if !ours.is_empty() {
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        let regions = mem
            .iter()
            .enumerate()
            .map(|(i, r)| {
                VhostUserMemoryRegionInfo::from_guest_region(r)
                    .map_err(|_| FsError::MemoryNotShared(i))
            })
            .collect::<Result<Vec<_>, _>>()?;
        frontend
            .set_mem_table(&regions)
            .map_err(backend("SET_MEM_TABLE"))?;
        let mut config = [0u8; MAX_TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[MAX_TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        Ok(Fs {
            frontend,
            socket: fd,
            config,
            features: offered & PASSED_FEATURES,
            protocol,
            kicks: Vec::new(),
            request: Request::None,
            request_evt: EventFd::new(EFD_NONBLOCK).map_err(FsError::EventFd)?,
            running: None,
        })
    }

    /// Hands the backend the queues the driver set up; on the VMM thread.
    fn start(&mut self, a: Activation) -> Result<(), DeviceError> {
        let acked = a.features | (self.protocol_bit());
        self.frontend
            .set_features(acked)
            .map_err(device("SET_FEATURES"))?;
        for (i, q) in a.queues.iter().enumerate() {
            self.start_queue(i, q, &a)?;
        }
        a.irq.hold(INT_VRING);
        self.running = Some(a);
        Ok(())
    }

    /// The activation the driver asked for, whether the VMM thread has
    /// handed it to the backend yet or not.
    fn activation(&self) -> Option<&Activation> {
        match &self.request {
            Request::Start(a) => Some(a),
            Request::Stop => None,
            Request::None => self.running.as_ref(),
        }
    }

    /// Whether the driver has made a request: an available ring's index
    /// moved. Until then (Linux sends its first, `FUSE_INIT`, when the
    /// guest mounts the share) the backend holds nothing a snapshot lacks:
    /// the rings' addresses and the features are the transport's, and a
    /// new backend set up with them at a restore is where this one is.
    fn used(&self) -> bool {
        self.activation().is_some_and(|a| {
            a.queues.iter().any(|q| {
                q.avail_idx(&a.mem, std::sync::atomic::Ordering::Acquire)
                    .map_or(true, |i| i.0 != 0)
            })
        })
    }

    fn protocol_bit(&self) -> u64 {
        if self.protocol {
            VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
        } else {
            0
        }
    }

    fn start_queue(&mut self, i: usize, q: &Queue, a: &Activation) -> Result<(), DeviceError> {
        // The backend finds the rings by this process's addresses, which it
        // translates through the memory table.
        let host = |gpa: GuestAddress| -> Result<u64, DeviceError> {
            a.mem
                .get_host_address(gpa)
                .map(|p| p as u64)
                .map_err(|e| DeviceError::Chain {
                    head: 0,
                    reason: format!("queue {i}: a ring outside guest memory: {e}"),
                })
        };
        let rings = VringConfigData {
            queue_max_size: q.max_size(),
            queue_size: q.size(),
            flags: 0,
            desc_table_addr: host(GuestAddress(q.desc_table()))?,
            used_ring_addr: host(GuestAddress(q.used_ring()))?,
            avail_ring_addr: host(GuestAddress(q.avail_ring()))?,
            log_addr: None,
        };
        let kick = self.kicks.get(i).ok_or_else(|| DeviceError::Chain {
            head: 0,
            reason: format!("queue {i} has no notification eventfd"),
        })?;
        let f = &mut self.frontend;
        f.set_vring_num(i, q.size())
            .map_err(device("SET_VRING_NUM"))?;
        f.set_vring_addr(i, &rings)
            .map_err(device("SET_VRING_ADDR"))?;
        f.set_vring_base(i, q.next_avail())
            .map_err(device("SET_VRING_BASE"))?;
        f.set_vring_call(i, a.irq.eventfd())
            .map_err(device("SET_VRING_CALL"))?;
        f.set_vring_kick(i, kick)
            .map_err(device("SET_VRING_KICK"))?;
        if self.protocol {
            f.set_vring_enable(i, true)
                .map_err(device("SET_VRING_ENABLE"))?;
        }
        Ok(())
    }

    /// Stops the backend's work on the rings (`GET_VRING_BASE` stops a
    /// ring); on the VMM thread.
    fn stop(&mut self) -> Result<(), DeviceError> {
        let Some(a) = self.running.take() else {
            return Ok(());
        };
        a.irq.release(INT_VRING);
        for i in 0..a.queues.len() {
            self.frontend
                .get_vring_base(i)
                .map_err(device("GET_VRING_BASE"))?;
        }
        Ok(())
    }
}

fn device(what: &'static str) -> impl FnOnce(vhost::Error) -> DeviceError {
    move |source| DeviceError::Backend { what, source }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        super::check_queues(&a.queues, QUEUES)?;
        self.request = Request::Start(a);
        // The VMM thread picks it up; if the eventfd cannot count any
        // higher it is already readable.
        let _ = self.request_evt.write(1);
        Ok(())
    }

    fn reset(&mut self) {
        self.request = Request::Stop;
        let _ = self.request_evt.write(1);
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        // Exact only while the rings are unused (see `snapshot_refusal`):
        // where the backend is in them is then where it started.
        self.activation()
            .map(|a| a.queues.iter().map(|q| q.state()).collect())
    }

    fn snapshot_refusal(&self) -> Option<&'static str> {
        self.used().then_some(
            "virtio-fs: the guest has used the shared folder, and virtiofsd cannot hand over \
             what it holds of it (its open files, where it is in the rings)",
        )
    }

    fn process_queue(&mut self, _queue: usize) -> Result<(), DeviceError> {
        // The backend serves the queues; a notification that reached the
        // VMM went around the ioeventfd and is already in the eventfd the
        // backend reads.
        Ok(())
    }

    fn queues_served_elsewhere(&self) -> bool {
        true
    }

    fn take_queue_notifiers(&mut self, evts: Vec<EventFd>) {
        self.kicks = evts;
    }

    fn host_events(&self) -> Vec<HostEvent> {
        vec![
            HostEvent {
                fd: self.request_evt.as_raw_fd(),
                token: TOKEN_REQUEST,
                readable: true,
                writable: false,
            },
            HostEvent {
                fd: self.socket,
                token: TOKEN_BACKEND,
                readable: false,
                writable: false,
            },
        ]
    }

    fn process_host_event(&mut self, token: u32, ready: Ready) -> Result<(), DeviceError> {
        match token {
            TOKEN_REQUEST => {
                let _ = self.request_evt.read();
                match std::mem::replace(&mut self.request, Request::None) {
                    Request::None => Ok(()),
                    Request::Stop => self.stop(),
                    Request::Start(a) => {
                        self.stop()?;
                        self.start(a)
                    }
                }
            }
            TOKEN_BACKEND if ready.closed => {
                warn!("the virtio-fs backend closed its socket: the guest's requests will hang");
                Err(DeviceError::BackendGone)
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
