//! Where things live in guest physical memory (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT                      0x0000_6000  PVH start info
//! 0x0000_6100  PVH memory map           0x0000_7000  zero page (bzImage)
//! 0x0000_8ff0  boot stack (bzImage)     0x0000_9000  page tables (bzImage)
//! 0x0002_0000  kernel command line      0x0009_fc00  MP table (top of base RAM)
//! 0x0010_0000  kernel (1 MiB)           ...          initrd at the top of low RAM
//! 0xc000_0000  MMIO gap: virtio-mmio windows at 0xd000_0000, IOAPIC, LAPIC
//! 0x1_0000_0000  RAM above 3 GiB continues here
//! ```

pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
pub const PVH_INFO_ADDR: u64 = 0x6000;
pub const PVH_MEMMAP_ADDR: u64 = 0x6100;
pub const PVH_MODLIST_ADDR: u64 = 0x6e00;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const BOOT_STACK_ADDR: u64 = 0x8ff0;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPTE_ADDR: u64 = 0xa000;
pub const PDE_ADDR: u64 = 0xb000;
pub const CMDLINE_ADDR: u64 = 0x20000;
/// x86 Linux keeps at most 2048 bytes of its command line, the final NUL
/// included (`COMMAND_LINE_SIZE`), and silently cuts the rest: a longer
/// one is refused here instead.
pub const CMDLINE_MAX: usize = 2048;
/// The MP table sits in the last KiB of base memory, where Linux looks.
pub const MPTABLE_ADDR: u64 = 0x9fc00;
/// Base RAM ends where the MP table (and the legacy BIOS area) begins.
pub const BASE_RAM_END: u64 = MPTABLE_ADDR;
pub const HIMEM_START: u64 = 0x10_0000;

pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;

/// Device interrupts start here (0-4 are the PIT, keyboard, cascade, ...).
pub const FIRST_DEVICE_IRQ: u32 = 5;
/// IOAPIC pins Linux may use for devices.
pub const LAST_DEVICE_IRQ: u32 = 23;

/// The guest RAM ranges for `size` bytes: below the MMIO gap, and the rest
/// above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    if size <= MMIO_GAP_START {
        vec![(0, size)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, size - MMIO_GAP_START)]
    }
}

/// Usable RAM as the guest's memory map reports it: `(start, len)`.
pub fn e820_ram(size: u64) -> Vec<(u64, u64)> {
    let mut out = vec![(0, BASE_RAM_END)];
    let low_end = size.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        out.push((HIMEM_START, low_end - HIMEM_START));
    }
    if size > MMIO_GAP_START {
        out.push((MMIO_GAP_END, size - MMIO_GAP_START));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_range() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(
            e820_ram(128 << 20),
            vec![(0, BASE_RAM_END), (HIMEM_START, (128 << 20) - HIMEM_START)]
        );
    }

    #[test]
    fn large_guest_skips_the_mmio_gap() {
        let size = 4u64 << 30;
        assert_eq!(
            ram_ranges(size),
            vec![(0, MMIO_GAP_START), (MMIO_GAP_END, size - MMIO_GAP_START)]
        );
        let e820 = e820_ram(size);
        assert_eq!(e820[1], (HIMEM_START, MMIO_GAP_START - HIMEM_START));
        assert_eq!(e820[2], (MMIO_GAP_END, size - MMIO_GAP_START));
        let total: u64 = e820.iter().map(|r| r.1).sum();
        assert!(total < size && total > size - (2 << 20));
    }
}
