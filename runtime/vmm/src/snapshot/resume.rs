//! The VMM's side of init's resume area (`agent::resume_area`): at the
//! snapshot point the vCPU that wrote finds the area's pages in the
//! guest's page tables; a warm start's snapshot keeps their guest-physical
//! addresses, and each run's resume frame is written into them while the
//! guest is stopped.
//!
//! What the guest names is checked as such: an area of more pages than
//! the protocol has, a page its tables do not map present and writable,
//! one outside guest RAM, gives no area (init then reads its frame over
//! vsock); a table outside guest RAM ends the walk. The worst a hostile
//! guest gets is its own frame written into its own memory.

use agent::resume_area::{self, DATA_PAGES, PAGE};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// The area the snapshot-point write named (RSI: its virtual address,
/// RDI: its pages), with the paging it is mapped in: read from the
/// registers of the vCPU that wrote, on its own thread.
#[derive(Debug, Clone, Copy)]
pub struct Named {
    address: u64,
    pages: u64,
    paging: Paging,
}

impl Named {
    /// `None` where the write named no area or the guest is not in long
    /// mode.
    pub fn by(vcpu: &VcpuFd) -> Option<Named> {
        let (regs, sregs) = (vcpu.get_regs().ok()?, vcpu.get_sregs().ok()?);
        let named = regs.rsi != 0 && regs.rdi != 0 && regs.rdi <= DATA_PAGES as u64;
        (named && sregs.efer & EFER_LMA != 0).then_some(Named {
            address: regs.rsi,
            pages: regs.rdi,
            paging: Paging {
                cr3: sregs.cr3,
                five_levels: sregs.cr4 & CR4_LA57 != 0,
            },
        })
    }

    /// The guest-physical address of each page, found through the guest's
    /// page tables; empty unless each is mapped present and writable.
    pub fn pages(&self, mem: &GuestMemoryMmap) -> Vec<u64> {
        (0..self.pages)
            .map(|i| {
                self.paging
                    .walk(mem, self.address.wrapping_add(i * PAGE as u64))
            })
            .collect::<Option<Vec<u64>>>()
            .unwrap_or_default()
    }
}

const EFER_LMA: u64 = 1 << 10;
const CR4_LA57: u64 = 1 << 12;

/// A guest's long-mode paging, as its vCPU's registers set it.
#[derive(Debug, Clone, Copy)]
struct Paging {
    cr3: u64,
    five_levels: bool,
}

impl Paging {
    /// The guest-physical address virtual `va` maps to, where every level
    /// maps it present and writable (a 1 GiB or 2 MiB page included).
    fn walk(&self, mem: &GuestMemoryMmap, va: u64) -> Option<u64> {
        const PRESENT: u64 = 1;
        const WRITABLE: u64 = 1 << 1;
        const LARGE: u64 = 1 << 7;
        const ADDRESS: u64 = 0x000f_ffff_ffff_f000;
        let top = if self.five_levels { 4 } else { 3 };
        let mut table = self.cr3 & ADDRESS;
        for level in (0..=top).rev() {
            let shift = 12 + 9 * level;
            let index = (va >> shift) & 0x1ff;
            let entry: u64 = mem.read_obj(GuestAddress(table + index * 8)).ok()?;
            if entry & PRESENT == 0 || entry & WRITABLE == 0 {
                return None;
            }
            let within = (1u64 << shift) - 1;
            if level == 0 || (entry & LARGE != 0 && level <= 2) {
                return Some((entry & ADDRESS & !within) | (va & within));
            }
            table = entry & ADDRESS;
        }
        None
    }
}

/// `pages` where each is a whole page of guest RAM, else none.
pub fn area(mem: &GuestMemoryMmap, pages: &[u64]) -> Vec<u64> {
    let in_ram = |gpa: &u64| {
        gpa.is_multiple_of(PAGE as u64)
            && mem.address_in_range(GuestAddress(*gpa))
            && gpa
                .checked_add(PAGE as u64 - 1)
                .is_some_and(|last| mem.address_in_range(GuestAddress(last)))
    };
    if pages.len() <= DATA_PAGES && pages.iter().all(in_ram) {
        pages.to_vec()
    } else {
        Vec::new()
    }
}

/// Hands `frame` to init: written across `pages`, or left to vsock (where
/// there is no area or the frame does not fit), and says which.
pub fn hand_over(mem: &GuestMemoryMmap, pages: &[u64], frame: &[u8]) {
    if write_frame(mem, pages, frame) {
        tracing::info!("warm start: this run's parameters written into init's resume area");
    } else {
        tracing::info!(
            bytes = frame.len(),
            pages = pages.len(),
            "warm start: this run's parameters do not fit init's resume area; init reads them over vsock"
        );
    }
}

/// Writes `frame` across `pages`; false (and nothing written) where there
/// is no area or the frame does not fit, and init asks over vsock.
fn write_frame(mem: &GuestMemoryMmap, pages: &[u64], frame: &[u8]) -> bool {
    let Some(chunks) = resume_area::split(frame, pages.len()) else {
        return false;
    };
    chunks
        .zip(pages)
        .all(|(chunk, &gpa)| mem.write_slice(chunk, GuestAddress(gpa)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn a_frame_goes_into_the_pages_in_their_order() {
        let mem = ram();
        let pages = area(&mem, &[0x5000, 0x2000, 0x9000]);
        assert_eq!(pages, [0x5000, 0x2000, 0x9000]);
        let resume = agent::Resume {
            params: format!("husk.run={}", "a".repeat(PAGE)),
            seed: vec![1; 32],
        };
        let frame = agent::encode(&resume);
        assert!(write_frame(&mem, &pages, &frame));
        // Read back as init does: the pages joined in order.
        let mut data = vec![0u8; pages.len() * PAGE];
        for (i, &gpa) in pages.iter().enumerate() {
            mem.read_slice(&mut data[i * PAGE..(i + 1) * PAGE], GuestAddress(gpa))
                .unwrap();
        }
        let mut held = resume_area::frame_in(&data).unwrap();
        assert_eq!(agent::read(&mut held).unwrap(), Some(resume));
    }

    #[test]
    fn pages_anywhere_but_the_guests_ram_give_no_area() {
        let mem = ram();
        assert!(area(&mem, &[0x2000, 1 << 20]).is_empty(), "past the RAM");
        assert!(area(&mem, &[0x2000, u64::MAX - 0xfff]).is_empty());
        assert!(area(&mem, &[0x2000, 0x3001]).is_empty(), "not a page");
        assert!(area(&mem, &[0x2000; DATA_PAGES + 1]).is_empty());
        assert_eq!(area(&mem, &[0xff000]), [0xff000]);
    }

    /// Long-mode tables at 0x10000.. mapping 0x7f00_0000_0000 to 0x5000
    /// (4 KiB), 0x7f00_0020_0000 to 0x20_0000 (2 MiB page), and
    /// 0x7f00_0000_1000 to 0x6000 read-only.
    fn tables(mem: &GuestMemoryMmap) -> Paging {
        let (pml4, pdpt, pd, pt) = (0x10000u64, 0x11000u64, 0x12000u64, 0x13000u64);
        let w = |at: u64, entry: u64| mem.write_obj(entry, GuestAddress(at)).unwrap();
        let va: u64 = 0x7f00_0000_0000;
        w(pml4 + ((va >> 39) & 0x1ff) * 8, pdpt | 3);
        w(pdpt + ((va >> 30) & 0x1ff) * 8, pd | 3);
        w(pd, pt | 3);
        w(pd + 8, 0x20_0000 | 0x83);
        w(pt, 0x5000 | 3);
        w(pt + 8, 0x6000 | 1);
        Paging {
            cr3: pml4,
            five_levels: false,
        }
    }

    #[test]
    fn the_walk_follows_the_guests_tables() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let paging = tables(&mem);
        assert_eq!(paging.walk(&mem, 0x7f00_0000_0000), Some(0x5000));
        assert_eq!(paging.walk(&mem, 0x7f00_0000_0123), Some(0x5123));
        assert_eq!(paging.walk(&mem, 0x7f00_0021_2345), Some(0x21_2345));
        assert_eq!(paging.walk(&mem, 0x7f00_0000_1000), None, "read-only");
        assert_eq!(paging.walk(&mem, 0x7f00_0000_2000), None, "not present");
        assert_eq!(paging.walk(&mem, 0x1000), None, "no table for it");
        // Tables outside the guest's RAM end the walk.
        let far = Paging {
            cr3: 1 << 40,
            five_levels: false,
        };
        assert_eq!(far.walk(&mem, 0x7f00_0000_0000), None);
    }

    #[test]
    fn a_frame_larger_than_the_area_is_not_written() {
        let mem = ram();
        assert!(!write_frame(&mem, &[0x2000], &vec![9u8; PAGE + 1]));
        assert!(!write_frame(&mem, &[], &[9u8; 8]));
        let mut first = [1u8; 4];
        mem.read_slice(&mut first, GuestAddress(0x2000)).unwrap();
        assert_eq!(first, [0; 4], "nothing was written");
        assert!(write_frame(&mem, &[0x2000], &[9u8; 8]));
    }
}
