//! Guest RAM: anonymous memory aligned to 2 MiB, so that KVM can back the
//! guest's 2 MiB frames with host huge pages (transparent huge pages), as
//! QEMU does. A guest's first touch of its memory then faults once per
//! 2 MiB instead of once per 4 KiB, and TLB reach is 512 times larger.

use std::ptr::null_mut;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::layout::ram_ranges;
use crate::VmmError;

const HUGE_PAGE: usize = 2 << 20;

/// Maps `len` bytes of anonymous memory at a 2 MiB-aligned address. The
/// mapping lives as long as the process (a VM's memory is never released
/// before the VMM exits).
fn aligned_anonymous(len: usize) -> Result<*mut u8, VmmError> {
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
    Ok(start as *mut u8)
}

/// Guest RAM of `size` bytes, laid out around the MMIO gap.
pub fn create(size: u64) -> Result<GuestMemoryMmap, VmmError> {
    let mut regions = Vec::new();
    for (start, len) in ram_ranges(size) {
        let len = len as usize;
        let ptr = aligned_anonymous(len)?;
        // SAFETY: `ptr` starts `len` bytes of a live mapping made above,
        // never unmapped while the process runs.
        let builder = unsafe { MmapRegionBuilder::new(len).with_raw_mmap_pointer(ptr) };
        let mapping = builder
            .build()
            .map_err(|e| VmmError::GuestMemory(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or_else(|| VmmError::GuestMemory("region wraps the address space".into()))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| VmmError::GuestMemory(e.to_string()))
}

/// The process's peak resident memory and how much of it is guest RAM the
/// guest has touched, in bytes (from /proc/self/status and smaps).
/// `/proc/self/status` and `/proc/self/smaps`, opened before the seccomp
/// filters forbid opening files and read when the VM has ended.
pub struct UsageFiles {
    status: std::fs::File,
    smaps: std::fs::File,
}

impl UsageFiles {
    pub fn open() -> std::io::Result<Self> {
        Ok(UsageFiles {
            status: std::fs::File::open("/proc/self/status")?,
            smaps: std::fs::File::open("/proc/self/smaps")?,
        })
    }

    /// (peak RSS, guest RAM the guest touched), in bytes.
    pub fn usage(mut self, mem: &GuestMemoryMmap) -> Option<(u64, u64)> {
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

fn usage(mem: &GuestMemoryMmap, status: &str, smaps: &str) -> Option<(u64, u64)> {
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
    let mut guest = 0;
    let mut in_guest = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, _)) = first.split_once('-') {
            if let Ok(lo) = u64::from_str_radix(lo, 16) {
                in_guest = starts.contains(&lo);
                continue;
            }
        }
        if in_guest && line.starts_with("Rss:") {
            guest += kib(line).unwrap_or(0);
        }
    }
    Some((peak, guest))
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

    use super::*;

    #[test]
    fn ram_is_2mib_aligned_and_usable() {
        let mem = create(64 << 20).unwrap();
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

    #[test]
    fn usage_counts_touched_guest_memory() {
        let mem = create(64 << 20).unwrap();
        let (_, before) = UsageFiles::open().unwrap().usage(&mem).unwrap();
        mem.write_slice(&vec![1u8; 8 << 20], GuestAddress(0))
            .unwrap();
        let (peak, after) = UsageFiles::open().unwrap().usage(&mem).unwrap();
        assert!(after >= before + (8 << 20), "{before} -> {after}");
        assert!(peak >= after);
    }
}
