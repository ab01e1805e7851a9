//! virtio-rng: fills the guest's buffers with entropy from the host.

use std::fs::File;
use std::io::{self, Read};

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::{QueueT, Writer};

use super::{notify, ActivateError, Activation, DeviceError, DeviceState, VirtioDevice};

const QUEUE_SIZES: &[u16] = &[256];
/// Most entropy handed out for one buffer; the driver asks again for more.
const MAX_PER_REQUEST: usize = 64 * 1024;

pub struct Rng {
    source: File,
    state: DeviceState,
}

impl Rng {
    /// Entropy from `/dev/urandom`, opened now (before any sandbox).
    pub fn new() -> io::Result<Self> {
        Ok(Self::with_source(File::open("/dev/urandom")?))
    }

    /// Entropy from `source`, an already open `/dev/urandom`.
    pub fn with_source(source: File) -> Self {
        Rng {
            source,
            state: DeviceState::Inactive,
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        super::BASE_FEATURES
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.state.activate(a, QUEUE_SIZES.len())
    }

    fn reset(&mut self) {
        self.state = DeviceState::Inactive;
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.state.queue_states()
    }

    fn process_queue(&mut self, queue: usize) -> Result<(), DeviceError> {
        if queue != 0 {
            return Ok(());
        }
        let source = &mut self.source;
        self.state
            .with_active(|a| {
                let mem = a.mem.clone();
                while let Some(chain) = a.queues[0].pop_descriptor_chain(&mem) {
                    let head = chain.head_index();
                    let mut w: Writer = chain.writer(&mem).map_err(|e| DeviceError::Chain {
                        head,
                        reason: e.to_string(),
                    })?;
                    let want = w.available_bytes().min(MAX_PER_REQUEST);
                    let mut buf = vec![0u8; want];
                    let written = source
                        .read_exact(&mut buf)
                        .and_then(|()| io::Write::write_all(&mut w, &buf))
                        .map(|()| want)
                        .unwrap_or(0);
                    a.queues[0]
                        .add_used(&mem, head, written as u32)
                        .map_err(|source| DeviceError::Queue { queue: 0, source })?;
                }
                notify(a, 0)
            })
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::test_util::{irq, mem};
    use crate::virtio::{IrqLine, Mem, INT_VRING};
    use std::sync::Arc;

    fn active(m: &Mem, q: Queue) -> (Rng, Arc<IrqLine>) {
        let mut rng = Rng::new().unwrap();
        let irq = irq();
        rng.activate(Activation {
            mem: m.clone(),
            irq: irq.clone(),
            queues: vec![q],
            features: super::super::BASE_FEATURES,
        })
        .unwrap();
        (rng, irq)
    }

    #[test]
    fn fills_write_only_buffers() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let descs = [RawDescriptor::from(SplitDescriptor::new(
            0x8000,
            64,
            VRING_DESC_F_WRITE as u16,
            0,
        ))];
        vq.add_desc_chains(&descs, 0).unwrap();
        let (mut rng, irq) = active(&m, vq.create_queue().unwrap());
        rng.process_queue(0).unwrap();
        let used = vq.used().ring().ref_at(0).unwrap().load();
        assert_eq!(used.len(), 64);
        let mut out = [0u8; 64];
        m.read_slice(&mut out, GuestAddress(0x8000)).unwrap();
        assert_ne!(out, [0u8; 64], "64 random bytes are not all zero");
        assert_eq!(irq.status() & INT_VRING, INT_VRING);
    }

    #[test]
    fn buffer_outside_memory_is_an_error_not_a_panic() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let descs = [RawDescriptor::from(SplitDescriptor::new(
            0xffff_0000_0000,
            64,
            VRING_DESC_F_WRITE as u16,
            0,
        ))];
        vq.add_desc_chains(&descs, 0).unwrap();
        let (mut rng, _) = active(&m, vq.create_queue().unwrap());
        assert!(rng.process_queue(0).is_err());
    }

    #[test]
    fn kicks_before_activation_and_on_other_queues_are_ignored() {
        let mut rng = Rng::new().unwrap();
        rng.process_queue(0).unwrap();
        rng.process_queue(5).unwrap();
    }
}
