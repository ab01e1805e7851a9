//! virtio-console: one port, the appliance's console. What the guest
//! transmits goes to a host writer (husk's stdout); host input waits in a
//! shared buffer until the guest has receive buffers for it.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;
use virtio_queue::{QueueT, Reader, Writer};

use super::{notify, ActivateError, Activation, DeviceError, DeviceState, VirtioDevice};

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// Linux posts a page-sized buffer in every receive slot when it probes
/// the device, so the receive queue's size is paid for at every boot: 256
/// slots took 43 ms of the guest's boot in the test bed, 32 take 17 ms.
/// 32 pages of input in flight are plenty for a console.
const QUEUE_SIZES: &[u16] = &[32, 256];

/// Host input waiting for the guest. The VMM pushes bytes, then processes
/// [`RX_QUEUE`] to deliver them.
pub type ConsoleInput = Arc<Mutex<VecDeque<u8>>>;

pub struct Console {
    output: Box<dyn Write + Send>,
    input: ConsoleInput,
    /// Set once the guest has written to the console.
    transmitted: Arc<AtomicBool>,
    state: DeviceState,
}

impl Console {
    pub fn new(output: Box<dyn Write + Send>) -> Self {
        Console {
            output,
            input: Arc::default(),
            transmitted: Arc::default(),
            state: DeviceState::Inactive,
        }
    }

    /// The buffer the VMM fills with host input.
    pub fn input(&self) -> ConsoleInput {
        self.input.clone()
    }

    /// Becomes true once the guest has written anything to the console.
    pub fn transmitted(&self) -> Arc<AtomicBool> {
        self.transmitted.clone()
    }
}

fn chain_err(head: u16) -> impl FnOnce(virtio_queue::Error) -> DeviceError {
    move |e| DeviceError::Chain {
        head,
        reason: e.to_string(),
    }
}

impl Console {
    fn transmit(
        output: &mut dyn Write,
        transmitted: &AtomicBool,
        a: &mut Activation,
    ) -> Result<(), DeviceError> {
        let mem = a.mem.clone();
        while let Some(chain) = a.queues[TX_QUEUE].pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            let mut r: Reader = chain.reader(&mem).map_err(chain_err(head))?;
            // A host output that fails (closed pipe) drops the bytes; the
            // guest must not stall on it.
            if io::copy(&mut r, output).is_ok_and(|n| n > 0) {
                transmitted.store(true, Ordering::Release);
            }
            a.queues[TX_QUEUE]
                .add_used(&mem, head, 0)
                .map_err(|source| DeviceError::Queue {
                    queue: TX_QUEUE,
                    source,
                })?;
        }
        let _ = output.flush();
        notify(a, TX_QUEUE)
    }

    fn receive(input: &ConsoleInput, a: &mut Activation) -> Result<(), DeviceError> {
        let mem = a.mem.clone();
        let mut input = input.lock().unwrap_or_else(|p| p.into_inner());
        let mut delivered = false;
        while !input.is_empty() {
            let Some(chain) = a.queues[RX_QUEUE].pop_descriptor_chain(&mem) else {
                break; // no buffers: input waits for the next RX kick
            };
            let head = chain.head_index();
            let mut w: Writer = chain.writer(&mem).map_err(chain_err(head))?;
            let n = w.available_bytes().min(input.len());
            let bytes: Vec<u8> = input.drain(..n).collect();
            w.write_all(&bytes).map_err(|e| DeviceError::Chain {
                head,
                reason: e.to_string(),
            })?;
            a.queues[RX_QUEUE]
                .add_used(&mem, head, n as u32)
                .map_err(|source| DeviceError::Queue {
                    queue: RX_QUEUE,
                    source,
                })?;
            delivered = true;
        }
        if delivered {
            notify(a, RX_QUEUE)?;
        }
        Ok(())
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        super::BASE_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows, max_nr_ports, emerg_wr: unused without features.
        super::read_config_bytes(&[0u8; 12], offset, data);
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
        let output = &mut self.output;
        let input = &self.input;
        let transmitted = &self.transmitted;
        self.state
            .with_active(|a| match queue {
                TX_QUEUE => Console::transmit(output.as_mut(), transmitted, a),
                RX_QUEUE => Console::receive(input, a),
                _ => Ok(()),
            })
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::test_util::{irq, mem};
    use crate::virtio::Mem;

    /// A `Write` whose bytes the test can read back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
    }

    fn console<'a>(
        m: &'a Mem,
    ) -> (
        Console,
        Sink,
        MockSplitQueue<'a, Mem>,
        MockSplitQueue<'a, Mem>,
    ) {
        let sink = Sink::default();
        let mut c = Console::new(Box::new(sink.clone()));
        let rx = MockSplitQueue::create(m, GuestAddress(0x1_0000), 16);
        let tx = MockSplitQueue::create(m, GuestAddress(0x2_0000), 16);
        c.activate(Activation {
            mem: m.clone(),
            irq: irq(),
            queues: vec![rx.create_queue().unwrap(), tx.create_queue().unwrap()],
            features: super::super::BASE_FEATURES,
        })
        .unwrap();
        (c, sink, rx, tx)
    }

    #[test]
    fn transmits_a_chain_in_order() {
        let m = mem();
        m.write_slice(b"hello, ", GuestAddress(0x8000)).unwrap();
        m.write_slice(b"world\n", GuestAddress(0x9000)).unwrap();
        let (mut c, sink, _rx, tx) = console(&m);
        tx.add_desc_chains(
            &[desc(0x8000, 7, VRING_DESC_F_NEXT, 1), desc(0x9000, 6, 0, 0)],
            0,
        )
        .unwrap();
        assert!(!c.transmitted().load(Ordering::Acquire));
        c.process_queue(TX_QUEUE).unwrap();
        assert_eq!(&*sink.0.lock().unwrap(), b"hello, world\n");
        assert!(c.transmitted().load(Ordering::Acquire));
    }

    #[test]
    fn input_waits_for_buffers_then_is_delivered() {
        let m = mem();
        let (mut c, _sink, rx, _tx) = console(&m);
        c.input().lock().unwrap().extend(b"typed");
        c.process_queue(RX_QUEUE).unwrap(); // no buffers yet
        assert_eq!(c.input().lock().unwrap().len(), 5);
        rx.add_desc_chains(&[desc(0x8000, 3, VRING_DESC_F_WRITE, 0)], 0)
            .unwrap();
        c.process_queue(RX_QUEUE).unwrap();
        let mut got = [0u8; 3];
        m.read_slice(&mut got, GuestAddress(0x8000)).unwrap();
        assert_eq!(&got, b"typ");
        assert_eq!(rx.used().ring().ref_at(0).unwrap().load().len(), 3);
        assert_eq!(c.input().lock().unwrap().len(), 2, "the rest waits");
    }

    #[test]
    fn rx_buffer_without_writable_space_takes_nothing() {
        let m = mem();
        let (mut c, _sink, rx, _tx) = console(&m);
        c.input().lock().unwrap().extend(b"x");
        rx.add_desc_chains(&[desc(0x8000, 8, 0, 0)], 0).unwrap();
        c.process_queue(RX_QUEUE).unwrap();
        assert_eq!(rx.used().ring().ref_at(0).unwrap().load().len(), 0);
        assert_eq!(c.input().lock().unwrap().len(), 1, "the byte still waits");
    }

    #[test]
    fn looping_chain_ends() {
        let m = mem();
        let (mut c, sink, _rx, tx) = console(&m);
        m.write_slice(b"ab", GuestAddress(0x8000)).unwrap();
        // Two descriptors pointing at each other forever.
        tx.add_desc_chains(
            &[
                desc(0x8000, 1, VRING_DESC_F_NEXT, 1),
                desc(0x8001, 1, VRING_DESC_F_NEXT, 0),
            ],
            0,
        )
        .unwrap();
        let _ = c.process_queue(TX_QUEUE);
        assert!(
            sink.0.lock().unwrap().len() <= 2 * 16,
            "bounded by the queue size"
        );
    }
}
