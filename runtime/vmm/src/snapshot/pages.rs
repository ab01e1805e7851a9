//! A warm start's working set: the pages of guest RAM a restored guest
//! touches between its resume and its command's first 250 ms (or its end,
//! if sooner: see [`crate::event_loop::PageRecorder`]). The first restore
//! of a snapshot records them; every later restore reads them in before
//! its vCPUs start.
//!
//! A restore maps the memory file private (see [`crate::memory::restore`]),
//! so each page the guest touches first costs a host page fault (a page
//! cache lookup, and a copy for a write) and then a nested-paging fault
//! for KVM to map it. A restored guest touches a few thousand pages on its
//! way to the command, each on the critical path. Populated ahead with one
//! `madvise` per run of pages (`MADV_POPULATE_WRITE` for the pages the
//! guest wrote, `MADV_POPULATE_READ` for those it only read), the host's
//! faults are gone, taken in the kernel in a batch. Where KVM can
//! (`KVM_PRE_FAULT_MEMORY`, Linux 6.10), the same pages are then mapped
//! into the VM's nested page tables before its vCPUs run, so the guest's
//! first touch of each is no exit either: in the KVM test bed that took a
//! restored hello guest from 55-65 ms to 10-25 ms between its resume and
//! its command, for some 11 ms of mapping 2,400 pages (each exit costs the
//! emulator far more than the kernel's own loop over the pages).
//!
//! ```text
//! SNAPSHOT/pages   "huskset2", then per run of pages, little-endian:
//!                  first page (u64), pages | written << 63 (u64)
//! ```
//!
//! Pages are counted in the memory file (the RAM ranges back to back, as
//! the snapshot saves them). Binary, since every warm restore reads it:
//! a hello guest's set as JSON (a list of `[first, pages, written]`, the
//! first format) took 237,000 instructions to parse (callgrind), 12,500
//! now.
//!
//! The file is a hint: populating a private mapping reads the same file
//! the guest would, so a wrong set costs time, never a wrong guest. A set
//! that does not parse, or names pages past the RAM, is replaced by the
//! next restore's record; so is the empty file of a recorder that died. A
//! new snapshot in the folder removes it.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

use super::PAGE;

pub(super) const PAGES_FILE: &str = "pages";
/// The file's first bytes: what it is, and its format's number.
const MAGIC: &[u8; 8] = b"huskset2";
/// A run's bytes in the file.
const RUN: usize = 16;
/// A run's page count's top bit: its pages were written.
const WRITTEN: u64 = 1 << 63;
/// `/proc/self/pagemap`: page present in memory.
const PM_PRESENT: u64 = 1 << 63;
/// `/proc/self/pagemap`: a file page (or shared anonymous): for a private
/// file mapping, a page the guest only read; its writes made anonymous
/// copies.
const PM_FILE: u64 = 1 << 61;
/// Pagemap entries read at a time (256 KiB).
const CHUNK: usize = 32 << 10;

/// Pages `first..first + pages` of the memory file, all written by the
/// guest or all only read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run(pub u64, pub u64, pub bool);

impl Run {
    fn end(&self) -> Option<u64> {
        self.0.checked_add(self.1)
    }
}

/// The pages one restore touched on its way to the command and in its
/// first moments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkingSet {
    pub runs: Vec<Run>,
}

impl WorkingSet {
    pub fn new(runs: Vec<Run>) -> WorkingSet {
        WorkingSet { runs }
    }

    /// Parses a set and checks it against RAM of `ram_pages` pages: runs
    /// non-empty, in order, not overlapping, inside the RAM.
    pub fn parse(bytes: &[u8], ram_pages: u64) -> Result<WorkingSet, String> {
        let body = bytes
            .strip_prefix(MAGIC)
            .ok_or("not a working set of this husk's format")?;
        if !body.len().is_multiple_of(RUN) {
            return Err(format!("{} bytes of runs, {RUN} a run", body.len()));
        }
        let mut runs = Vec::with_capacity(body.len() / RUN);
        let mut next = 0;
        for bytes in body.chunks_exact(RUN) {
            let (first, count) = bytes.split_at(8);
            let first = u64::from_le_bytes(first.try_into().expect("8 bytes"));
            let count = u64::from_le_bytes(count.try_into().expect("8 bytes"));
            let run = Run(first, count & !WRITTEN, count & WRITTEN != 0);
            let end = run.end().filter(|&end| run.1 > 0 && end <= ram_pages);
            match end {
                Some(end) if run.0 >= next => next = end,
                _ => return Err(format!("run {run:?} is out of order or past the RAM")),
            }
            runs.push(run);
        }
        Ok(WorkingSet { runs })
    }

    /// The set in the file's format.
    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(MAGIC.len() + self.runs.len() * RUN);
        bytes.extend_from_slice(MAGIC);
        for &Run(first, pages, written) in &self.runs {
            bytes.extend_from_slice(&first.to_le_bytes());
            bytes.extend_from_slice(&(pages | if written { WRITTEN } else { 0 }).to_le_bytes());
        }
        bytes
    }

    /// The pages of all runs.
    pub fn pages(&self) -> u64 {
        self.runs.iter().map(|r| r.1).sum()
    }
}

/// What a restore does with the working set.
#[derive(Debug, Default)]
pub enum Pages {
    /// Neither reads nor records one (a named snapshot's restore: it goes
    /// on where it was, with no command start to record up to).
    #[default]
    None,
    /// Read these pages in before the vCPUs start.
    Prefetch(WorkingSet),
    /// Record the set into this file, claimed for this restore, once the
    /// command has run a while.
    Record(File),
}

/// The working set of the snapshot in `dir`, for RAM of `ram_pages`
/// pages: the one recorded, or, when there is none yet or it is not
/// usable, the file to record it in (claimed with `O_EXCL`: one recorder
/// at a time). Never an error: without a set a restore only runs slower.
pub(super) fn open(dir: &Path, ram_pages: u64) -> Pages {
    let path = dir.join(PAGES_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => match WorkingSet::parse(&bytes, ram_pages) {
            Ok(set) => return Pages::Prefetch(set),
            Err(why) => {
                if !bytes.is_empty() {
                    tracing::warn!("{}: {why}; recording it again", path.display());
                }
                // Empty: its recorder died, or records now, in which
                // case it writes to a file no longer named: harmless.
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::debug!("cannot remove {}: {e}", path.display());
                    return Pages::None;
                }
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::debug!("cannot read {}: {e}", path.display());
            return Pages::None;
        }
    }
    match File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(f) => Pages::Record(f),
        Err(e) => {
            tracing::debug!("cannot claim {}: {e}", path.display());
            Pages::None
        }
    }
}

/// A region of guest RAM, where its pages are in the memory file.
struct Region {
    host: usize,
    guest: u64,
    len: usize,
    /// Its first page in the memory file.
    first: u64,
}

impl Region {
    /// Whether `run` lies whole in this region.
    fn holds(&self, run: &Run) -> bool {
        let last = self.first + (self.len / PAGE) as u64;
        run.0 >= self.first && run.end().is_some_and(|end| end <= last)
    }
}

/// Each region of `mem`, in the memory file's order.
fn regions(mem: &GuestMemoryMmap) -> Vec<Region> {
    let mut out = Vec::new();
    let mut page = 0;
    for region in mem.iter() {
        let Ok(host) = region.get_host_address(MemoryRegionAddress(0)) else {
            continue;
        };
        let len = region.len() as usize;
        out.push(Region {
            host: host as usize,
            guest: region.start_addr().0,
            len,
            first: page,
        });
        page += (len / PAGE) as u64;
    }
    out
}

/// Held while a working set is recorded: guest RAM registered with a
/// userfaultfd for asynchronous write protection (Linux 6.7). It protects
/// no page (none is ever marked) and has no handler; what it does is turn
/// off the host's fault-around in that RAM, which maps up to 16 of the
/// file's pages around each one read, present in `pagemap` as if the
/// guest had read them (a hello guest's set was 2,370 pages with them,
/// 977 without). So a page is present only where the guest, KVM for it,
/// or a device touched it, and every later restore reads and maps only
/// those. Dropped (the descriptor closed), the registration goes, and
/// with it the effect.
pub struct Exact {
    _uffd: OwnedFd,
}

/// `userfaultfd(2)`: faults from user mode only, which needs no privilege
/// (Linux 5.11); KVM's own faults on the RAM are the kernel's, and there
/// is nothing to handle anyway.
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
const UFFD_API: u64 = 0xaa;
/// Write-protect faults resolved by the kernel, with no handler.
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;

/// `struct uffdio_api`.
#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_register` (its range's start and length first).
#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

vmm_sys_util::ioctl_iowr_nr!(UFFDIO_API, 0xaa, 0x3f, UffdioApi);
vmm_sys_util::ioctl_iowr_nr!(UFFDIO_REGISTER, 0xaa, 0x00, UffdioRegister);

/// Registers all of `mem` (see [`Exact`]). An error where the kernel has
/// no asynchronous write protection (before 6.7) or refuses userfaultfd:
/// the set is then recorded with the fault-around's neighbours, as before.
pub fn exact(mem: &GuestMemoryMmap) -> io::Result<Exact> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY;
    // SAFETY: userfaultfd takes only flags and returns a new descriptor
    // or -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just made, and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let mut api = UffdioApi {
        api: UFFD_API,
        features: UFFD_FEATURE_WP_ASYNC,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes the structure, which lives
    // through the call; it follows no address of ours.
    if unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(&fd, UFFDIO_API(), &mut api) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for region in regions(mem) {
        let mut register = UffdioRegister {
            start: region.host as u64,
            len: region.len as u64,
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes the structure, which
        // lives through the call. The range is a guest RAM mapping this
        // process made and keeps while `mem` lives; registering it for
        // write protection changes none of its bytes and, with nothing
        // ever protected, no access to it.
        let r = unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ref(&fd, UFFDIO_REGISTER(), &mut register)
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(Exact { _uffd: fd })
}

/// The pages of `mem` present now, read from `pagemap` (this process's
/// `/proc/self/pagemap`, opened before any jail): a page the guest wrote
/// is an anonymous copy, one it only read is the file's.
pub fn record(mem: &GuestMemoryMmap, pagemap: &File) -> io::Result<WorkingSet> {
    let mut runs: Vec<Run> = Vec::new();
    let mut entries = vec![0u8; CHUNK * 8];
    for Region {
        host, len, first, ..
    } in regions(mem)
    {
        let pages = len / PAGE;
        let mut done = 0;
        // A run never spans two regions: their pages are adjacent in the
        // file but not in the host's address space.
        let mut open: Option<Run> = None;
        while done < pages {
            let n = CHUNK.min(pages - done);
            let buf = &mut entries[..n * 8];
            pagemap.read_exact_at(buf, ((host / PAGE + done) * 8) as u64)?;
            for (i, e) in buf.chunks_exact(8).enumerate() {
                let e = u64::from_le_bytes(e.try_into().expect("8 bytes"));
                let page = first + (done + i) as u64;
                if e & PM_PRESENT == 0 {
                    runs.extend(open.take());
                    continue;
                }
                let written = e & PM_FILE == 0;
                match &mut open {
                    Some(run) if run.2 == written => run.1 += 1,
                    _ => {
                        runs.extend(open.take());
                        open = Some(Run(page, 1, written));
                    }
                }
            }
            done += n;
        }
        runs.extend(open);
    }
    Ok(WorkingSet::new(runs))
}

/// Records the working set into `out` (one write of the whole set).
pub fn save(set: &WorkingSet, mut out: &File) -> io::Result<()> {
    out.write_all(&set.to_bytes())
}

/// Reads the pages of `set` into `mem`, mapped private from the snapshot's
/// memory file: written pages copied, read ones mapped. Returns the pages
/// populated; stops at the first refusal (a kernel before 5.14 knows
/// neither advice), since the set is only a hint.
pub fn prefetch(mem: &GuestMemoryMmap, set: &WorkingSet) -> u64 {
    let regions = regions(mem);
    let mut populated = 0;
    for run in &set.runs {
        let Some(region) = regions.iter().find(|r| r.holds(run)) else {
            tracing::debug!("working set: run {run:?} is in no region");
            continue;
        };
        let at = region.host + ((run.0 - region.first) as usize) * PAGE;
        let advice = match run.2 {
            true => libc::MADV_POPULATE_WRITE,
            false => libc::MADV_POPULATE_READ,
        };
        // SAFETY: the range lies inside a guest RAM mapping this process
        // made and keeps for its life (the region found above holds it
        // whole); populating changes no byte of it, only which pages are
        // present.
        let r = unsafe { libc::madvise(at as *mut libc::c_void, run.1 as usize * PAGE, advice) };
        if r != 0 {
            tracing::debug!(
                "working set: madvise: {}; reading the rest on demand",
                io::Error::last_os_error()
            );
            break;
        }
        populated += run.1;
    }
    populated
}

vmm_sys_util::ioctl_iowr_nr!(
    KVM_PRE_FAULT_MEMORY,
    kvm_bindings::KVMIO,
    0xd5,
    kvm_bindings::kvm_pre_fault_memory
);

/// Maps the pages of `set` into the VM's nested page tables through
/// `vcpu` before any vCPU runs (`KVM_PRE_FAULT_MEMORY`, Linux 6.10), so
/// that the guest's first touch of each is not an exit to the host. With
/// the pages populated by [`prefetch`], each is mapped as the guest's own
/// fault would have mapped it (a page only read stays read-only, and its
/// first write faults as before). Returns the pages mapped: 0 where the
/// kernel does not have the ioctl, or refuses it for this VM.
pub fn pre_fault(vcpu: &kvm_ioctls::VcpuFd, mem: &GuestMemoryMmap, set: &WorkingSet) -> u64 {
    let mut mapped = 0;
    for (gpa, pages) in guest_ranges(mem, set) {
        let mut range = kvm_bindings::kvm_pre_fault_memory {
            gpa,
            size: pages * PAGE as u64,
            ..Default::default()
        };
        while range.size > 0 {
            // SAFETY: KVM_PRE_FAULT_MEMORY reads and updates the range
            // structure, which lives through the call; it follows no
            // address of this process (the range is guest-physical).
            let r = unsafe {
                vmm_sys_util::ioctl::ioctl_with_mut_ref(vcpu, KVM_PRE_FAULT_MEMORY(), &mut range)
            };
            if r != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                tracing::debug!("working set: KVM_PRE_FAULT_MEMORY: {e}; the guest maps the rest");
                return mapped;
            }
        }
        mapped += pages;
    }
    mapped
}

/// The runs of `set` as guest-physical ranges (address, pages), runs next
/// to each other in guest-physical memory made one whether written or
/// not: each range is one call into KVM, whose every call loads and puts
/// the vCPU (a hello guest's set is some 280 runs, 100 ranges).
fn guest_ranges(mem: &GuestMemoryMmap, set: &WorkingSet) -> Vec<(u64, u64)> {
    let regions = regions(mem);
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for run in &set.runs {
        let Some(region) = regions.iter().find(|r| r.holds(run)) else {
            continue;
        };
        let gpa = region.guest + (run.0 - region.first) * PAGE as u64;
        match ranges.last_mut() {
            Some((at, pages)) if *at + *pages * PAGE as u64 == gpa => *pages += run.1,
            _ => ranges.push((gpa, run.1)),
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{restore, Backing};
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn runs_next_to_each_other_are_one_range_written_or_not() {
        let (_file, mem) = restored();
        let set = WorkingSet::new(vec![
            Run(0, 2, true),
            Run(2, 3, false),
            Run(7, 1, false),
            Run(8, 1, true),
            Run(1023, 1, false),
            Run(1024, 1, false),
        ]);
        let page = PAGE as u64;
        assert_eq!(
            guest_ranges(&mem, &set),
            vec![(0, 5), (7 * page, 2), (1023 * page, 1)],
            "the run past the RAM is no range"
        );
    }

    fn pagemap() -> File {
        File::open("/proc/self/pagemap").unwrap()
    }

    /// 4 MiB of RAM restored private from a file of non-zero bytes.
    fn restored() -> (tempfile::NamedTempFile, crate::GuestRam) {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().write_all(&vec![7u8; 4 << 20]).unwrap();
        let mem = restore(4 << 20, file.as_file(), Backing::Private).unwrap();
        (file, mem)
    }

    #[test]
    fn records_what_the_guest_wrote_and_read() {
        let (_file, mem) = restored();
        let mut byte = [0u8; 1];
        mem.write_slice(&[1], GuestAddress(3 * PAGE as u64))
            .unwrap();
        mem.write_slice(&[1], GuestAddress(4 * PAGE as u64))
            .unwrap();
        mem.read_slice(&mut byte, GuestAddress(10 * PAGE as u64))
            .unwrap();
        assert_eq!(byte[0], 7, "the file's data");
        let set = record(&mem, &pagemap()).unwrap();
        // A read fault maps the file's pages around the one read too (the
        // kernel's fault-around): those are in the set as read.
        let written: Vec<Run> = set.runs.iter().filter(|r| r.2).copied().collect();
        assert_eq!(written, vec![Run(3, 2, true)], "the two written pages");
        assert!(covers(&set, 10, false), "the page read: {set:?}");
        assert!(set.pages() < 1024, "only what was touched and around it");
    }

    #[test]
    fn an_exact_record_holds_only_the_pages_touched() {
        let (_file, mem) = restored();
        let exact = exact(&mem).expect(
            "userfaultfd's asynchronous write protection (Linux 6.7) for an exact working set",
        );
        let mut byte = [0u8; 1];
        mem.write_slice(&[1], GuestAddress(3 * PAGE as u64))
            .unwrap();
        mem.read_slice(&mut byte, GuestAddress(10 * PAGE as u64))
            .unwrap();
        mem.read_slice(&mut byte, GuestAddress(11 * PAGE as u64 + 5))
            .unwrap();
        mem.write_slice(&[2], GuestAddress(4 * PAGE as u64))
            .unwrap();
        assert_eq!(byte[0], 7, "the file's data");
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(4 * PAGE as u64)).unwrap(),
            2
        );
        let set = record(&mem, &pagemap()).unwrap();
        assert_eq!(
            set.runs,
            vec![Run(3, 2, true), Run(10, 2, false)],
            "the pages written, then those read, and no neighbour"
        );
        // Gone with the descriptor: a read maps its neighbours again.
        drop(exact);
        mem.read_slice(&mut byte, GuestAddress(100 * PAGE as u64))
            .unwrap();
        let set = record(&mem, &pagemap()).unwrap();
        assert!(set.pages() > 5, "fault-around is back: {set:?}");
    }

    /// Whether `page` is in a run of `set` that is `written` or not.
    fn covers(set: &WorkingSet, page: u64, written: bool) -> bool {
        set.runs
            .iter()
            .any(|r| r.2 == written && (r.0..r.0 + r.1).contains(&page))
    }

    #[test]
    fn prefetch_makes_the_recorded_pages_present_and_keeps_their_data() {
        let (_file, mem) = restored();
        let set = WorkingSet::new(vec![Run(0, 2, true), Run(5, 3, false)]);
        assert_eq!(prefetch(&mem, &set), 5);
        // Runs outside the RAM, or wrapping, are skipped, never advised.
        let outside = WorkingSet::new(vec![Run(1023, 2, true), Run(u64::MAX, 2, false)]);
        assert_eq!(prefetch(&mem, &outside), 0);
        let after = record(&mem, &pagemap()).unwrap();
        for page in [0, 1] {
            assert!(covers(&after, page, true), "page {page} copied: {after:?}");
        }
        for page in [5, 6, 7] {
            assert!(covers(&after, page, false), "page {page} mapped: {after:?}");
        }
        let mut byte = [0u8; 1];
        mem.read_slice(&mut byte, GuestAddress(1)).unwrap();
        assert_eq!(byte[0], 7, "a populated copy holds the file's data");
    }

    #[test]
    fn round_trips_and_refuses_bad_sets() {
        let set = WorkingSet::new(vec![Run(0, 2, true), Run(5, 3, false)]);
        let out = tempfile::tempfile().unwrap();
        save(&set, &out).unwrap();
        let bytes = std::fs::read(format!("/proc/self/fd/{}", {
            use std::os::fd::AsRawFd;
            out.as_raw_fd()
        }))
        .unwrap();
        assert_eq!(WorkingSet::parse(&bytes, 8).unwrap(), set);
        assert_eq!(bytes.len(), 8 + 2 * 16, "the magic and 16 bytes a run");
        // Runs written as they are, the magic before them.
        let runs = |runs: &[(u64, u64)]| {
            let mut b = MAGIC.to_vec();
            for (first, count) in runs {
                b.extend_from_slice(&first.to_le_bytes());
                b.extend_from_slice(&count.to_le_bytes());
            }
            b
        };
        assert_eq!(
            WorkingSet::parse(&runs(&[(0, 2 | WRITTEN), (5, 3)]), 8).unwrap(),
            set,
            "the written bit is the count's top bit"
        );
        let mut other = bytes.clone();
        other[7] = b'1';
        for (bad, why) in [
            (&bytes[..bytes.len() - 1], "truncated"),
            (b"".as_slice(), "empty: a recorder that died"),
            (&other[..], "another format"),
            (
                br#"{"format":1,"runs":[]}"#.as_slice(),
                "the JSON of format 1",
            ),
            (&runs(&[(0, 0)]), "an empty run"),
            (&runs(&[(0, WRITTEN)]), "an empty written run"),
            (&runs(&[(4, 2), (0, 1)]), "out of order"),
            (&runs(&[(0, 2), (1, 1)]), "overlapping"),
            (&runs(&[(6, 3)]), "past the RAM"),
            (&runs(&[(u64::MAX, 2)]), "wrapping"),
            (&runs(&[(0, u64::MAX >> 1)]), "a count past the RAM"),
        ] {
            assert!(WorkingSet::parse(bad, 8).is_err(), "{why} was taken");
        }
        assert!(
            WorkingSet::parse(&bytes, 7).is_err(),
            "RAM smaller than the set"
        );
    }

    #[test]
    fn a_set_recorded_once_is_read_and_a_bad_one_recorded_again() {
        let dir = tempfile::tempdir().unwrap();
        let Pages::Record(first) = open(dir.path(), 8) else {
            panic!("no set yet: this restore records it");
        };
        // An empty set (its recorder still at work, or dead) is claimed
        // again; the first recorder then writes to a file no longer named.
        let Pages::Record(second) = open(dir.path(), 8) else {
            panic!("an empty set is recorded again");
        };
        save(&WorkingSet::new(vec![Run(0, 8, true)]), &first).unwrap();
        save(&WorkingSet::new(vec![Run(1, 1, false)]), &second).unwrap();
        match open(dir.path(), 8) {
            Pages::Prefetch(set) => assert_eq!(set.runs, vec![Run(1, 1, false)]),
            other => panic!("the recorded set is read: {other:?}"),
        }
        // RAM of another size: the set does not fit, and is taken again.
        assert!(matches!(open(dir.path(), 1), Pages::Record(_)));
        assert!(matches!(open(dir.path(), 1), Pages::Record(_)));
    }
}
