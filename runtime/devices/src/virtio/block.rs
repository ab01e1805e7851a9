//! virtio-blk on a host file or an overlay ([`Storage`]): read, write,
//! flush (`fdatasync`) and get-id. Read-only disks refuse writes; requests
//! past the end of the disk fail with an I/O error status. A request's data
//! may be scattered over up to [`SEG_MAX`] buffers (without the feature,
//! Linux sends one buffer, a page at most of its page cache, per request).

use std::io::{self, Read, Write};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{QueueT, Reader, Writer};

use tracing::warn;

use super::{notify, ActivateError, Activation, DeviceError, DeviceState, LogLimit, VirtioDevice};
use crate::storage::Storage;

const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE];
pub const SECTOR_SIZE: u64 = 512;
/// Largest data transfer of one request (bounds the bounce buffer).
const MAX_REQUEST: usize = 4 << 20;
/// Data buffers a request may have: the queue's descriptors less the
/// header's and the status's (QEMU offers the same). Linux's requests stay
/// under its own 1280 KiB, far from [`MAX_REQUEST`].
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

/// The request header at the start of every chain (little-endian
/// `type: u32, reserved: u32, sector: u64`).
#[derive(Clone, Copy, Debug, Default)]
struct RequestHeader {
    kind: u32,
    sector: u64,
}

impl RequestHeader {
    const SIZE: usize = 16;

    fn read_from(r: &mut Reader) -> io::Result<Self> {
        let mut b = [0u8; Self::SIZE];
        r.read_exact(&mut b)?;
        let (kind, rest) = b.split_at(4);
        Ok(RequestHeader {
            kind: u32::from_le_bytes(kind.try_into().expect("4 bytes")),
            sector: u64::from_le_bytes(rest[4..].try_into().expect("8 bytes")),
        })
    }

    #[cfg(test)]
    fn to_bytes(self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[..4].copy_from_slice(&self.kind.to_le_bytes());
        b[8..].copy_from_slice(&self.sector.to_le_bytes());
        b
    }
}

pub struct Block {
    storage: Storage,
    readonly: bool,
    sectors: u64,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    state: DeviceState,
    host_errors: LogLimit,
}

impl Block {
    /// A disk backed by `storage` (a file already opened with the right
    /// access, or an overlay). `id` is the serial GET_ID returns (truncated
    /// to 20 bytes).
    pub fn new(storage: Storage, readonly: bool, id: &str) -> io::Result<Self> {
        let len = storage.size()?;
        let mut serial = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let n = id.len().min(serial.len());
        serial[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Block {
            storage,
            readonly,
            sectors: len / SECTOR_SIZE,
            id: serial,
            state: DeviceState::Inactive,
            host_errors: LogLimit::default(),
        })
    }

    /// The byte range `[offset, offset + len)` of a request at `sector`,
    /// if it lies within the disk.
    fn range(&self, sector: u64, len: usize) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(len as u64)?;
        (end <= self.sectors * SECTOR_SIZE).then_some(offset)
    }

    /// Performs one request; returns the virtio status byte. A host error
    /// (not the guest's own: a request past the end, a write to a
    /// read-only disk) is logged with its cause, rate-limited: the guest
    /// sees only "I/O error".
    fn execute(&mut self, header: RequestHeader, r: &mut Reader, w: &mut Writer) -> u8 {
        let status = match header.kind {
            VIRTIO_BLK_T_IN => {
                let len = w.available_bytes();
                match self.range(header.sector, len) {
                    Some(offset) if len <= MAX_REQUEST => {
                        let mut buf = vec![0u8; len];
                        match self.storage.read_exact_at(&mut buf, offset) {
                            Ok(()) => w
                                .write_all(&buf)
                                .map_or(VIRTIO_BLK_S_IOERR, |()| VIRTIO_BLK_S_OK),
                            Err(e) => self.host_error("reading", Some((len, offset)), &e),
                        }
                    }
                    _ => VIRTIO_BLK_S_IOERR,
                }
            }
            VIRTIO_BLK_T_OUT if self.readonly => VIRTIO_BLK_S_IOERR,
            VIRTIO_BLK_T_OUT => {
                let len = r.available_bytes();
                match self.range(header.sector, len) {
                    Some(offset) if len <= MAX_REQUEST => {
                        let mut buf = vec![0u8; len];
                        match r.read_exact(&mut buf) {
                            Ok(()) => match self.storage.write_all_at(&buf, offset) {
                                Ok(()) => VIRTIO_BLK_S_OK,
                                Err(e) => self.host_error("writing", Some((len, offset)), &e),
                            },
                            Err(_) => VIRTIO_BLK_S_IOERR,
                        }
                    }
                    _ => VIRTIO_BLK_S_IOERR,
                }
            }
            VIRTIO_BLK_T_FLUSH => match self.storage.flush() {
                Ok(()) => VIRTIO_BLK_S_OK,
                Err(e) => self.host_error("flushing", None, &e),
            },
            VIRTIO_BLK_T_GET_ID => {
                let n = w.available_bytes().min(self.id.len());
                w.write_all(&self.id[..n])
                    .map_or(VIRTIO_BLK_S_IOERR, |()| VIRTIO_BLK_S_OK)
            }
            _ => VIRTIO_BLK_S_UNSUPP,
        };
        status as u8
    }

    /// Logs a failed host read, write or flush (the 1st, 2nd, 4th, ...)
    /// of `place` (bytes, at byte) and returns the status the guest gets.
    fn host_error(&mut self, what: &str, place: Option<(usize, u64)>, e: &io::Error) -> u32 {
        if self.host_errors.hit() {
            let id = String::from_utf8_lossy(&self.id);
            let id = id.trim_end_matches('\0');
            let place = place.map_or(String::new(), |(len, offset)| {
                format!(" {len} bytes at byte {offset}")
            });
            warn!(
                "disk {id}: {what}{place} failed on the host: {e}; the guest sees an I/O error ({} so far)",
                self.host_errors.count()
            );
        }
        VIRTIO_BLK_S_IOERR
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let mut f = super::BASE_FEATURES | 1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX;
        if self.readonly {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // `capacity` (in 512-byte sectors), `size_max` (no limit offered)
        // and `seg_max`; the rest of the layout is for features not
        // offered.
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&self.sectors.to_le_bytes());
        config[12..].copy_from_slice(&SEG_MAX.to_le_bytes());
        super::read_config_bytes(&config, offset, data);
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

    fn snapshot_refusal(&self) -> Option<&'static str> {
        // An overlay's writes are saved with the snapshot; a host file the
        // guest writes in place would go on changing under it.
        (!self.readonly && matches!(self.storage, Storage::File(_)))
            .then_some("a disk the guest writes in place (give it as an overlay or read-only)")
    }

    fn save_disk(&self, out: &std::fs::File) -> io::Result<Option<Vec<(u64, u64)>>> {
        self.storage.save(out)
    }

    fn process_queue(&mut self, queue: usize) -> Result<(), DeviceError> {
        if queue != 0 {
            return Ok(());
        }
        let mut state = std::mem::replace(&mut self.state, DeviceState::Inactive);
        let result = state.with_active(|a| {
            let mem = a.mem.clone();
            while let Some(chain) = a.queues[0].pop_descriptor_chain(&mem) {
                let head = chain.head_index();
                let bad = |reason: String| DeviceError::Chain { head, reason };
                let mut r = chain.clone().reader(&mem).map_err(|e| bad(e.to_string()))?;
                let mut w = chain.writer(&mem).map_err(|e| bad(e.to_string()))?;
                let header = RequestHeader::read_from(&mut r)
                    .map_err(|_| bad("shorter than a request header".into()))?;
                // The status byte is the last writable byte of the chain.
                let data_len = w
                    .available_bytes()
                    .checked_sub(1)
                    .ok_or_else(|| bad("no room for the status byte".into()))?;
                let mut status_w = w.split_at(data_len).map_err(|e| bad(e.to_string()))?;
                let status = self.execute(header, &mut r, &mut w);
                status_w
                    .write_all(&[status])
                    .map_err(|e| bad(e.to_string()))?;
                let used = w.bytes_written() + 1;
                a.queues[0]
                    .add_used(&mem, head, used as u32)
                    .map_err(|source| DeviceError::Queue { queue: 0, source })?;
            }
            notify(a, 0)
        });
        self.state = state;
        result.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::test_util::{irq, mem};
    use crate::virtio::{IrqLine, Mem};

    const HDR: u64 = 0x8000;
    const DATA: u64 = 0x9000;
    const STATUS: u64 = 0xa000;

    fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
    }

    struct Rig<'a> {
        mem: &'a Mem,
        vq: MockSplitQueue<'a, Mem>,
        dev: Block,
        _irq: Arc<IrqLine>,
        file: tempfile::NamedTempFile,
    }

    fn rig(mem: &Mem, readonly: bool) -> Rig<'_> {
        rig_with(mem, readonly, false)
    }

    /// A disk of 8 sectors, sector 1 filled with 0xab; with `overlay`, the
    /// file is the overlay's base, opened read-only.
    fn rig_with(mem: &Mem, readonly: bool, overlay: bool) -> Rig<'_> {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut content = vec![0u8; 8 * 512];
        content[512..1024].fill(0xab); // sector 1
        std::fs::write(file.path(), &content).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(!readonly && !overlay)
            .open(file.path())
            .unwrap();
        let storage = if overlay {
            let upper = tempfile::tempfile().unwrap();
            Storage::Overlay(crate::storage::Overlay::new(f, upper).unwrap())
        } else {
            Storage::File(f)
        };
        let vq = MockSplitQueue::new(mem, 16);
        let mut dev = Block::new(storage, readonly, "husk-disk-0").unwrap();
        let irq = irq();
        dev.activate(Activation {
            mem: mem.clone(),
            irq: irq.clone(),
            queues: vec![vq.create_queue().unwrap()],
            features: dev.features(),
        })
        .unwrap();
        Rig {
            mem,
            vq,
            dev,
            _irq: irq,
            file,
        }
    }

    impl Rig<'_> {
        /// Submits header + data + status and returns (status, used len).
        fn submit(&mut self, kind: u32, sector: u64, data_len: u32, data_flags: u32) -> (u8, u32) {
            let h = RequestHeader { kind, sector };
            self.mem
                .write_slice(&h.to_bytes(), GuestAddress(HDR))
                .unwrap();
            self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            // Each request takes up to 3 descriptors; `next` is absolute.
            let used_idx = self.vq.used().idx().load();
            let base = used_idx * 3;
            let mut descs = vec![desc(HDR, 16, VRING_DESC_F_NEXT, base + 1)];
            if data_len > 0 {
                descs.push(desc(
                    DATA,
                    data_len,
                    data_flags | VRING_DESC_F_NEXT,
                    base + 2,
                ));
            }
            descs.push(desc(STATUS, 1, VRING_DESC_F_WRITE, 0));
            self.vq.add_desc_chains(&descs, base).unwrap();
            self.dev.process_queue(0).unwrap();
            let used = self
                .vq
                .used()
                .ring()
                .ref_at(used_idx as usize)
                .unwrap()
                .load();
            (self.mem.read_obj(GuestAddress(STATUS)).unwrap(), used.len())
        }
    }

    #[test]
    fn reads_a_sector() {
        let m = mem();
        let mut r = rig(&m, false);
        let (status, used) = r.submit(VIRTIO_BLK_T_IN, 1, 512, VRING_DESC_F_WRITE);
        assert_eq!(u32::from(status), VIRTIO_BLK_S_OK);
        assert_eq!(used, 513);
        let mut buf = [0u8; 512];
        m.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        assert!(buf.iter().all(|&b| b == 0xab));
    }

    #[test]
    fn offers_seg_max_and_serves_a_request_scattered_over_buffers() {
        let m = mem();
        let mut r = rig(&m, false);
        assert!(r.dev.features() & (1 << VIRTIO_BLK_F_SEG_MAX) != 0);
        let mut seg_max = [0u8; 4];
        r.dev.read_config(12, &mut seg_max);
        assert_eq!(u32::from_le_bytes(seg_max), SEG_MAX);
        let mut capacity = [0u8; 8];
        r.dev.read_config(0, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 8);
        // A write of sectors 4 and 5 from two buffers apart, then a read
        // of sectors 1 to 5 into three buffers of other sizes.
        let (a, b) = (0x9000u64, 0xb000u64);
        m.write_slice(&[0x11; 512], GuestAddress(a)).unwrap();
        m.write_slice(&[0x22; 512], GuestAddress(b)).unwrap();
        let hdr = RequestHeader {
            kind: VIRTIO_BLK_T_OUT,
            sector: 4,
        };
        m.write_slice(&hdr.to_bytes(), GuestAddress(HDR)).unwrap();
        let descs = [
            desc(HDR, 16, VRING_DESC_F_NEXT, 1),
            desc(a, 512, VRING_DESC_F_NEXT, 2),
            desc(b, 512, VRING_DESC_F_NEXT, 3),
            desc(STATUS, 1, VRING_DESC_F_WRITE, 0),
        ];
        r.vq.add_desc_chains(&descs, 0).unwrap();
        r.dev.process_queue(0).unwrap();
        assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
        let on_disk = std::fs::read(r.file.path()).unwrap();
        assert!(on_disk[4 * 512..5 * 512].iter().all(|&x| x == 0x11));
        assert!(on_disk[5 * 512..6 * 512].iter().all(|&x| x == 0x22));

        let hdr = RequestHeader {
            kind: VIRTIO_BLK_T_IN,
            sector: 1,
        };
        m.write_slice(&hdr.to_bytes(), GuestAddress(HDR)).unwrap();
        let (x, y, z) = (0xc000u64, 0xd000u64, 0xe000u64);
        let w = VRING_DESC_F_WRITE | VRING_DESC_F_NEXT;
        let descs = [
            desc(HDR, 16, VRING_DESC_F_NEXT, 5),
            desc(x, 1024, w, 6),
            desc(y, 1000, w, 7),
            desc(z, 536, w, 8),
            desc(STATUS, 1, VRING_DESC_F_WRITE, 0),
        ];
        r.vq.add_desc_chains(&descs, 4).unwrap();
        r.dev.process_queue(0).unwrap();
        assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
        let used = r.vq.used().ring().ref_at(1).unwrap().load();
        assert_eq!(used.len(), 5 * 512 + 1);
        let mut got = vec![0u8; 1024 + 1000 + 536];
        m.read_slice(&mut got[..1024], GuestAddress(x)).unwrap();
        m.read_slice(&mut got[1024..2024], GuestAddress(y)).unwrap();
        m.read_slice(&mut got[2024..], GuestAddress(z)).unwrap();
        assert_eq!(got, on_disk[512..6 * 512]);
    }

    #[test]
    fn writes_and_flushes_to_the_file() {
        let m = mem();
        let mut r = rig(&m, false);
        m.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
        let (status, _) = r.submit(VIRTIO_BLK_T_OUT, 3, 512, 0);
        assert_eq!(u32::from(status), VIRTIO_BLK_S_OK);
        let (status, _) = r.submit(VIRTIO_BLK_T_FLUSH, 0, 0, 0);
        assert_eq!(u32::from(status), VIRTIO_BLK_S_OK);
        let on_disk = std::fs::read(r.file.path()).unwrap();
        assert!(on_disk[3 * 512..4 * 512].iter().all(|&b| b == 0x5a));
    }

    #[test]
    fn an_overlay_disk_takes_writes_and_leaves_its_base_alone() {
        let m = mem();
        let mut r = rig_with(&m, false, true);
        assert_eq!(r.dev.features() & 1 << VIRTIO_BLK_F_RO, 0);
        m.write_slice(&[0x5a; 1024], GuestAddress(DATA)).unwrap();
        let (status, _) = r.submit(VIRTIO_BLK_T_OUT, 1, 1024, 0);
        assert_eq!(u32::from(status), VIRTIO_BLK_S_OK);
        let (status, _) = r.submit(VIRTIO_BLK_T_FLUSH, 0, 0, 0);
        assert_eq!(u32::from(status), VIRTIO_BLK_S_OK);
        // Sectors 0..3 read back: base, written, written.
        m.write_slice(&[0u8; 1536], GuestAddress(DATA)).unwrap();
        let (status, _) = r.submit(VIRTIO_BLK_T_IN, 0, 1536, VRING_DESC_F_WRITE);
        assert_eq!(u32::from(status), VIRTIO_BLK_S_OK);
        let mut back = [0u8; 1536];
        m.read_slice(&mut back, GuestAddress(DATA)).unwrap();
        assert!(back[..512].iter().all(|&b| b == 0));
        assert!(back[512..].iter().all(|&b| b == 0x5a));
        let on_disk = std::fs::read(r.file.path()).unwrap();
        assert!(on_disk[512..1024].iter().all(|&b| b == 0xab));
        assert!(on_disk[1024..1536].iter().all(|&b| b == 0));
    }

    #[test]
    fn read_only_disk_refuses_writes() {
        let m = mem();
        let mut r = rig(&m, true);
        assert_ne!(r.dev.features() & 1 << VIRTIO_BLK_F_RO, 0);
        m.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
        let (status, _) = r.submit(VIRTIO_BLK_T_OUT, 0, 512, 0);
        assert_eq!(u32::from(status), VIRTIO_BLK_S_IOERR);
        let on_disk = std::fs::read(r.file.path()).unwrap();
        assert!(on_disk[..512].iter().all(|&b| b == 0));
    }

    #[test]
    fn past_the_end_is_an_io_error() {
        let m = mem();
        let mut r = rig(&m, false);
        let (status, _) = r.submit(VIRTIO_BLK_T_IN, 7, 1024, VRING_DESC_F_WRITE);
        assert_eq!(u32::from(status), VIRTIO_BLK_S_IOERR);
        let (status, _) = r.submit(VIRTIO_BLK_T_IN, u64::MAX, 512, VRING_DESC_F_WRITE);
        assert_eq!(u32::from(status), VIRTIO_BLK_S_IOERR, "sector overflow");
    }

    #[test]
    fn a_failed_host_write_is_an_io_error_counted_as_the_hosts() {
        let m = mem();
        let mut r = rig(&m, false);
        // The guest's own mistakes are not the host's.
        r.submit(VIRTIO_BLK_T_IN, 7, 1024, VRING_DESC_F_WRITE);
        assert_eq!(r.dev.host_errors.count(), 0);
        // A writable disk whose host file will not take writes (EBADF).
        let f = std::fs::File::open(r.file.path()).unwrap();
        r.dev.storage = Storage::File(f);
        m.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
        for _ in 0..3 {
            let (status, _) = r.submit(VIRTIO_BLK_T_OUT, 2, 512, 0);
            assert_eq!(u32::from(status), VIRTIO_BLK_S_IOERR);
        }
        assert_eq!(r.dev.host_errors.count(), 3);
        let on_disk = std::fs::read(r.file.path()).unwrap();
        assert!(on_disk[2 * 512..3 * 512].iter().all(|&b| b == 0));
    }

    #[test]
    fn get_id_returns_the_serial() {
        let m = mem();
        let mut r = rig(&m, false);
        let (status, _) = r.submit(VIRTIO_BLK_T_GET_ID, 0, 20, VRING_DESC_F_WRITE);
        assert_eq!(u32::from(status), VIRTIO_BLK_S_OK);
        let mut id = [0u8; 20];
        m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..11], b"husk-disk-0");
    }

    #[test]
    fn unknown_request_is_unsupported() {
        let m = mem();
        let mut r = rig(&m, false);
        let (status, _) = r.submit(99, 0, 0, 0);
        assert_eq!(u32::from(status), VIRTIO_BLK_S_UNSUPP);
    }

    #[test]
    fn hostile_chains_are_errors_not_panics() {
        let m = mem();
        let mut r = rig(&m, false);
        // Header outside guest memory.
        r.vq.add_desc_chains(&[desc(0xffff_0000_0000, 16, 0, 0)], 0)
            .unwrap();
        assert!(r.dev.process_queue(0).is_err());

        let mut r = rig(&m, false);
        // No writable status byte.
        r.vq.add_desc_chains(&[desc(HDR, 16, 0, 0)], 0).unwrap();
        assert!(r.dev.process_queue(0).is_err());

        let mut r = rig(&m, false);
        // A length that overflows the address space.
        r.vq.add_desc_chains(
            &[
                desc(HDR, 16, VRING_DESC_F_NEXT, 1),
                desc(u64::MAX - 8, u32::MAX, VRING_DESC_F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
        assert!(r.dev.process_queue(0).is_err());
    }
}
