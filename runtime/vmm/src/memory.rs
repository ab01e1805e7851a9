//! Guest RAM: memory aligned to 2 MiB, so that KVM can back the guest's
//! 2 MiB frames with host huge pages (transparent huge pages), as QEMU
//! does. A guest's first touch of its memory then faults once per 2 MiB
//! instead of once per 4 KiB, and TLB reach is 512 times larger.
//!
//! Private anonymous memory, unless another process must map the guest's
//! RAM too (a vhost-user backend such as virtiofsd): then it is one sealed
//! `memfd`, mapped shared, whose descriptor the backend receives.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::ptr::null_mut;
use std::sync::{Arc, Weak};

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::layout::ram_ranges;
use crate::VmmError;

const HUGE_PAGE: usize = 2 << 20;

/// Guest RAM: the guest's memory and the host mappings under it. Devices
/// and vCPUs hold clones of the memory (this derefs to it). vm-memory
/// never unmaps a mapping it was handed, so these are unmapped here, when
/// this is dropped after every clone (a VMM that runs VMs one after
/// another in one process would otherwise keep the RAM of each).
pub struct GuestRam {
    // Dropped before the mappings (fields drop in order).
    mem: GuestMemoryMmap,
    _mappings: Vec<Mapping>,
}

impl std::ops::Deref for GuestRam {
    type Target = GuestMemoryMmap;

    fn deref(&self) -> &GuestMemoryMmap {
        &self.mem
    }
}

impl GuestRam {
    /// Guest RAM of `parts`: regions, each with the mapping it is made of.
    fn of(parts: Vec<(GuestRegionMmap, Mapping)>) -> Result<Self, VmmError> {
        let mut mappings = Vec::new();
        let mut regions = Vec::new();
        for (region, mut mapping) in parts {
            let region = Arc::new(region);
            mapping.region = Some(Arc::downgrade(&region));
            mappings.push(mapping);
            regions.push(region);
        }
        // On failure `regions` is gone before `mappings` drops, which then
        // unmaps them all.
        let mem = GuestMemoryMmap::from_arc_regions(regions)
            .map_err(|e| VmmError::GuestMemory(e.to_string()))?;
        Ok(GuestRam {
            mem,
            _mappings: mappings,
        })
    }
}

/// One mapping under guest RAM, unmapped when dropped unless the region
/// made of it is still alive somewhere (a clone of the memory held by a
/// thread that was left running): then it stays mapped, as it must.
struct Mapping {
    at: *mut u8,
    len: usize,
    region: Option<Weak<GuestRegionMmap>>,
}

impl Mapping {
    /// A region of guest RAM at `start` in the guest, made of this mapping
    /// (which maps `file` where there is one), returned with it: a pair
    /// dropped drops the region first.
    fn region(
        self,
        start: u64,
        file: Option<FileOffset>,
    ) -> Result<(GuestRegionMmap, Mapping), VmmError> {
        // SAFETY: `at` starts `len` bytes of a live mapping, which stays
        // mapped while the region lives: this mapping is unmapped only once
        // no region made of it is left (see `Drop`).
        let mut builder =
            unsafe { MmapRegionBuilder::new(self.len).with_raw_mmap_pointer(self.at) };
        if let Some(f) = file {
            builder = builder.with_file_offset(f);
        }
        let mapping = builder
            .build()
            .map_err(|e| VmmError::GuestMemory(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or_else(|| VmmError::GuestMemory("region wraps the address space".into()))?;
        Ok((region, self))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.region.as_ref().is_some_and(|r| r.strong_count() > 0) {
            return;
        }
        // SAFETY: our own mapping of `len` bytes at `at`. No region made of
        // it is left (or none was made), and the memory is reached only
        // through regions: no reference into it remains. KVM, which has
        // its address, goes through this process's page tables and runs
        // no vCPU here any more (a vCPU thread left running holds the
        // region through the devices' clones, and the check above keeps
        // the mapping).
        unsafe { libc::munmap(self.at.cast(), self.len) };
    }
}

/// Maps `len` bytes of anonymous memory at a 2 MiB-aligned address.
fn aligned_anonymous(len: usize) -> Result<Mapping, VmmError> {
    let total = len + HUGE_PAGE;
    // SAFETY: a new private anonymous mapping at an address of the kernel's
    // choosing; it aliases no memory this process uses.
    let base = unsafe {
        libc::mmap(
            null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(VmmError::GuestMemory(format!(
            "cannot map {} MiB: {}",
            len >> 20,
            std::io::Error::last_os_error()
        )));
    }
    let base = base as usize;
    let start = (base + HUGE_PAGE - 1) & !(HUGE_PAGE - 1);
    let head = start - base;
    let tail = total - head - len;
    // SAFETY: both ranges lie inside the mapping made above, outside
    // [start, start + len), and nothing refers to them.
    unsafe {
        if head > 0 {
            libc::munmap(base as *mut libc::c_void, head);
        }
        if tail > 0 {
            libc::munmap((start + len) as *mut libc::c_void, tail);
        }
    }
    // SAFETY: advice on our own mapping; failure (THP off) is harmless.
    unsafe {
        libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    Ok(Mapping {
        at: start as *mut u8,
        len,
        region: None,
    })
}

/// How guest RAM is backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Private anonymous memory: only this process maps it.
    Private,
    /// A sealed memfd mapped shared, for backends in other processes.
    Shared,
}

/// A memfd of `size` bytes that can neither shrink nor grow (a backend that
/// mapped it can never fault on a truncated page), and whose seals are
/// themselves sealed.
fn sealed_memfd(size: u64) -> Result<File, VmmError> {
    let fail =
        |what: &str| VmmError::GuestMemory(format!("{what}: {}", std::io::Error::last_os_error()));
    // SAFETY: the name is a NUL-terminated literal; memfd_create returns a
    // new descriptor or -1.
    let fd = unsafe {
        libc::memfd_create(
            c"husk-guest-ram".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(fail("memfd_create"));
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|e| VmmError::GuestMemory(format!("sizing the guest RAM file: {e}")))?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on our own memfd; no memory is touched.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } != 0 {
        return Err(fail("sealing the guest RAM file"));
    }
    Ok(file)
}

/// Maps `file` from `offset` over all of `over`, an aligned reservation
/// from [`aligned_anonymous`] not yet made a region; `flags` say shared or
/// private.
fn map_file(
    over: Mapping,
    file: &File,
    offset: u64,
    flags: libc::c_int,
) -> Result<Mapping, VmmError> {
    use std::os::fd::AsRawFd;
    let (at, len) = (over.at, over.len);
    // SAFETY: MAP_FIXED replaces exactly [at, at + len), which is our own
    // reservation made by aligned_anonymous and not yet made a region;
    // no reference points into it.
    let addr = unsafe {
        libc::mmap(
            at.cast(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags | libc::MAP_FIXED | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if addr == libc::MAP_FAILED {
        let e = std::io::Error::last_os_error();
        // A failed MAP_FIXED may have unmapped part of the reservation,
        // where another thread's mapping could now be: never unmapped.
        std::mem::forget(over);
        return Err(VmmError::GuestMemory(format!(
            "cannot map the guest RAM file: {e}"
        )));
    }
    // SAFETY: advice on our own mapping; failure (shmem THP off) is harmless.
    unsafe {
        libc::madvise(at.cast(), len, libc::MADV_HUGEPAGE);
    }
    Ok(over)
}

/// Guest RAM of `size` bytes, laid out around the MMIO gap.
pub fn create(size: u64, backing: Backing) -> Result<GuestRam, VmmError> {
    let ranges = ram_ranges(size);
    let file = match backing {
        Backing::Private => None,
        Backing::Shared => Some(Arc::new(sealed_memfd(
            ranges.iter().map(|(_, len)| len).sum(),
        )?)),
    };
    let mut parts = Vec::new();
    let mut offset = 0;
    for (start, len) in ranges {
        let mapping = aligned_anonymous(len as usize)?;
        let part = match &file {
            Some(file) => {
                let mapping = map_file(mapping, file, offset, libc::MAP_SHARED)?;
                let at = FileOffset::from_arc(file.clone(), offset);
                offset += len;
                mapping.region(start, Some(at))?
            }
            None => mapping.region(start, None)?,
        };
        parts.push(part);
    }
    GuestRam::of(parts)
}

/// Guest RAM of `size` bytes restored from a snapshot's memory file (the
/// ranges back to back, as a snapshot writes them).
///
/// Private RAM is mapped private from the file: the guest reads a page
/// from the file when it first touches it and its writes go to private
/// copies, never to the file. Shared RAM (a VM with a vhost-user backend,
/// which must see the guest's writes and the guest its) cannot be the
/// file: it is a new memfd, as at boot, with the file's data copied in
/// (its holes, pages of zeros, are skipped: the memfd reads zeros there).
pub fn restore(size: u64, file: &File, backing: Backing) -> Result<GuestRam, VmmError> {
    if backing == Backing::Shared {
        let mem = create(size, Backing::Shared)?;
        copy_in(&mem, file, size)?;
        return Ok(mem);
    }
    let mut parts = Vec::new();
    let mut offset = 0;
    for (start, len) in ram_ranges(size) {
        let mapping = aligned_anonymous(len as usize)?;
        let mapping = map_file(mapping, file, offset, libc::MAP_PRIVATE)?;
        offset += len;
        parts.push(mapping.region(start, None)?);
    }
    GuestRam::of(parts)
}

/// Copies the data of a snapshot's memory file into `mem`, range by range,
/// one run of data (between holes) at a time.
fn copy_in(mem: &GuestMemoryMmap, file: &File, size: u64) -> Result<(), VmmError> {
    use std::io::{Seek, SeekFrom};
    use std::os::fd::AsRawFd;
    use vm_memory::Bytes;
    let fail = |e: &dyn std::fmt::Display| {
        VmmError::GuestMemory(format!("copying the snapshot's memory in: {e}"))
    };
    let mut src = file;
    let mut offset = 0u64;
    for (start, len) in ram_ranges(size) {
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let Some((data, hole)) = next_data(file.as_raw_fd(), at, end).map_err(|e| fail(&e))?
            else {
                break;
            };
            src.seek(SeekFrom::Start(data)).map_err(|e| fail(&e))?;
            mem.read_exact_volatile_from(
                GuestAddress(start + (data - offset)),
                &mut src,
                (hole - data) as usize,
            )
            .map_err(|e| fail(&e))?;
            at = hole;
        }
        offset = end;
    }
    Ok(())
}

/// The next run of data in `fd` at or after `at` and before `end`, as
/// `(first byte, end)`: `None` when only holes are left.
fn next_data(fd: std::os::fd::RawFd, at: u64, end: u64) -> std::io::Result<Option<(u64, u64)>> {
    // SAFETY: lseek on a descriptor this process holds open; it moves the
    // file's offset, which the caller sets again before reading.
    let data = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
    if data < 0 {
        let e = std::io::Error::last_os_error();
        // ENXIO: no data after `at`.
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    let data = data as u64;
    if data >= end {
        return Ok(None);
    }
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
    if hole < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Some((data, (hole as u64).min(end))))
}

/// The process's memory at the end of a run: its peak resident size (the
/// kernel's `VmHWM`), what is resident now and how much of that is guest
/// RAM the guest touched, read from `/proc/self/status` and
/// `/proc/self/smaps`, opened before the seccomp filters forbid opening
/// files and read when the VM has ended.
pub struct UsageFiles {
    status: std::fs::File,
    smaps: std::fs::File,
}

/// What [`UsageFiles::usage`] found, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUsage {
    /// `VmHWM`. On kernels before 6.2 it is an estimate: each thread
    /// counts up to 64 pages before the process's total hears of them.
    pub peak: u64,
    /// Every resident page of every mapping (smaps walks the page tables:
    /// exact).
    pub resident: u64,
    /// The resident part of guest RAM.
    pub guest: u64,
}

impl MemoryUsage {
    /// What the VMM itself holds: everything resident but guest RAM.
    pub fn overhead(&self) -> u64 {
        self.resident.saturating_sub(self.guest)
    }
}

impl UsageFiles {
    pub fn open() -> std::io::Result<Self> {
        Ok(UsageFiles {
            status: std::fs::File::open("/proc/self/status")?,
            smaps: std::fs::File::open("/proc/self/smaps")?,
        })
    }

    pub fn usage(mut self, mem: &GuestMemoryMmap) -> Option<MemoryUsage> {
        let status = read_all(&mut self.status)?;
        let smaps = read_all(&mut self.smaps)?;
        usage(mem, &status, &smaps)
    }
}

/// Plain `read` calls only: `read_to_string` would `statx` the file first
/// for a size hint, which the VMM thread's seccomp filter refuses.
fn read_all(f: &mut std::fs::File) -> Option<String> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return String::from_utf8(out).ok(),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

fn usage(mem: &GuestMemoryMmap, status: &str, smaps: &str) -> Option<MemoryUsage> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
    let kib = |line: &str| -> Option<u64> {
        line.split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|k| k << 10)
    };
    let peak = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(kib)?;
    let starts: Vec<u64> = mem
        .iter()
        .filter_map(|r| r.get_host_address(MemoryRegionAddress(0)).ok())
        .map(|p| p as u64)
        .collect();
    let (mut resident, mut guest) = (0, 0);
    let mut in_guest = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, _)) = first.split_once('-') {
            if let Ok(lo) = u64::from_str_radix(lo, 16) {
                in_guest = starts.contains(&lo);
                continue;
            }
        }
        if line.starts_with("Rss:") {
            let n = kib(line).unwrap_or(0);
            resident += n;
            if in_guest {
                guest += n;
            }
        }
    }
    Some(MemoryUsage {
        peak,
        resident,
        guest,
    })
}

#[cfg(test)]
mod tests {
    use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

    use super::*;

    #[test]
    fn ram_is_2mib_aligned_and_usable() {
        for backing in [Backing::Private, Backing::Shared] {
            ram_works(backing);
        }
    }

    fn ram_works(backing: Backing) {
        let mem = create(64 << 20, backing).unwrap();
        for r in mem.iter() {
            let host = r.get_host_address(MemoryRegionAddress(0)).unwrap() as usize;
            assert_eq!(host % HUGE_PAGE, 0);
        }
        mem.write_obj(0xdead_beef_u32, GuestAddress((64 << 20) - 4))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress((64 << 20) - 4)).unwrap(),
            0xdead_beef
        );
        assert!(mem.read_obj::<u32>(GuestAddress(64 << 20)).is_err());
    }

    /// How many of this process's mappings map `path`.
    fn mappings_of(path: &std::path::Path) -> usize {
        let path = path.to_str().unwrap();
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter(|l| l.ends_with(path))
            .count()
    }

    #[test]
    fn ram_is_unmapped_when_dropped_after_its_clones_and_kept_while_one_lives() {
        use std::os::unix::fs::FileExt;
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(64 << 20).unwrap();
        file.as_file().write_all_at(&[5], 4096).unwrap();
        let ram = restore(64 << 20, file.as_file(), Backing::Private).unwrap();
        assert_eq!(mappings_of(file.path()), 1);
        let clone: GuestMemoryMmap = (*ram).clone();
        assert_eq!(clone.read_obj::<u8>(GuestAddress(4096)).unwrap(), 5);
        drop(clone);
        drop(ram);
        assert_eq!(mappings_of(file.path()), 0, "unmapped after its last clone");

        // Dropped while a clone (a thread left running) still reads it: the
        // mapping stays, and stays for good (no owner is left to unmap it).
        let ram = restore(64 << 20, file.as_file(), Backing::Private).unwrap();
        let clone: GuestMemoryMmap = (*ram).clone();
        drop(ram);
        assert_eq!(mappings_of(file.path()), 1);
        assert_eq!(clone.read_obj::<u8>(GuestAddress(4096)).unwrap(), 5);
    }

    #[test]
    fn usage_counts_touched_guest_memory() {
        let mem = create(64 << 20, Backing::Private).unwrap();
        let before = UsageFiles::open().unwrap().usage(&mem).unwrap();
        mem.write_slice(&vec![1u8; 8 << 20], GuestAddress(0))
            .unwrap();
        let after = UsageFiles::open().unwrap().usage(&mem).unwrap();
        assert!(
            after.guest >= before.guest + (8 << 20),
            "{before:?} -> {after:?}"
        );
        assert!(after.peak >= after.guest, "{after:?}");
        // Memory of the process that is not guest RAM counts as the
        // VMM's: 4 MiB touched and held is in the overhead.
        let held = std::hint::black_box(vec![1u8; 4 << 20]);
        let with = UsageFiles::open().unwrap().usage(&mem).unwrap();
        assert!(with.overhead() >= 4 << 20, "{with:?}");
        assert!(with.resident >= with.guest + (4 << 20), "{with:?}");
        drop(held);
    }

    #[test]
    fn shared_ram_is_one_sealed_file_another_mapping_sees() {
        use std::os::fd::AsRawFd;
        // Above the MMIO gap too, so there are two regions in one file.
        let size = 4u64 << 30;
        let mem = create(size, Backing::Shared).unwrap();
        let offsets: Vec<_> = mem
            .iter()
            .map(|r| r.file_offset().unwrap().start())
            .collect();
        assert_eq!(offsets.len(), 2);
        assert_eq!(offsets[0], 0);
        assert_eq!(offsets[1], mem.iter().next().unwrap().len());
        let region = mem.iter().last().unwrap();
        let file = region.file_offset().unwrap().file();
        // SAFETY: F_GET_SEALS only reads the descriptor's seals.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(
            seals,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL
        );
        assert!(
            file.set_len(1 << 20).is_err(),
            "a sealed file cannot shrink"
        );
        // What the guest writes is in the file, where a backend reads it.
        let at = region.start_addr().unchecked_add(4096);
        mem.write_obj(0x1234_5678_u32, at).unwrap();
        let mut word = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(
            file,
            &mut word,
            region.file_offset().unwrap().start() + 4096,
        )
        .unwrap();
        assert_eq!(u32::from_le_bytes(word), 0x1234_5678);
    }

    #[test]
    fn restoring_shared_ram_copies_the_snapshot_in_and_leaves_the_file_alone() {
        use std::os::unix::fs::FileExt;
        // Two ranges (4 GiB crosses the MMIO gap); the file is sparse with
        // data at the start, in the middle of the first range and at the
        // start of the second.
        let size = 4u64 << 30;
        let ranges = ram_ranges(size);
        let total: u64 = ranges.iter().map(|(_, l)| l).sum();
        let file = tempfile::tempfile().unwrap();
        file.set_len(total).unwrap();
        let first = ranges[0].1;
        file.write_all_at(&[7u8; 4096], 0).unwrap();
        file.write_all_at(&[8u8; 8192], 64 << 20).unwrap();
        file.write_all_at(&[9u8; 4096], first).unwrap();
        let mem = restore(size, &file, Backing::Shared).unwrap();
        let read = |gpa: u64| mem.read_obj::<u8>(GuestAddress(gpa)).unwrap();
        assert_eq!(read(0), 7);
        assert_eq!(read(4095), 7);
        assert_eq!(read(4096), 0, "a hole reads zeros");
        assert_eq!(read((64 << 20) + 8191), 8);
        assert_eq!(read(ranges[1].0), 9, "the second range from its offset");
        // Backed by a memfd a backend can map, not by the snapshot: the
        // guest's writes stay out of the file.
        assert!(mem.iter().all(|r| r.file_offset().is_some()));
        mem.write_obj(1u8, GuestAddress(0)).unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, 0).unwrap();
        assert_eq!(byte, [7]);
        // Private RAM is the file, copy-on-write: no descriptor to hand out.
        let private = restore(size, &file, Backing::Private).unwrap();
        assert_eq!(private.read_obj::<u8>(GuestAddress(64 << 20)).unwrap(), 8);
        assert!(private.iter().all(|r| r.file_offset().is_none()));
    }
}
