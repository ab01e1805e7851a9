//! The Intel MultiProcessor table (MP spec 1.4), which tells a kernel
//! without ACPI about its CPUs, the IOAPIC and how ISA interrupts are
//! wired. It costs no boot time: Linux finds it in the last KiB of base RAM.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_ADDR};

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_PINS: u8 = 24;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
// Family 6, and FPU + APIC in the feature flags, as QEMU and Firecracker do.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

/// Everything the table needs: byte builder with little-endian helpers.
#[derive(Default)]
struct Table(Vec<u8>);

impl Table {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
}

/// Makes every byte of `b` sum to zero by setting `b[at]`.
fn set_checksum(b: &mut [u8], at: usize) {
    b[at] = 0;
    let sum = b.iter().fold(0u8, |s, &x| s.wrapping_add(x));
    b[at] = sum.wrapping_neg();
}

/// The floating pointer and configuration table for `cpus` CPUs (APIC IDs
/// 0..cpus, CPU 0 the bootstrap processor), as bytes to place at
/// [`MPTABLE_ADDR`].
pub fn build(cpus: u8) -> Vec<u8> {
    let ioapic_id = cpus; // the first ID after the CPUs'
    let mut entries = Table::default();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
        entries
            .u8(ENTRY_PROCESSOR)
            .u8(id)
            .u8(APIC_VERSION)
            .u8(flags)
            .u32(CPU_SIGNATURE)
            .u32(CPU_FEATURES)
            .bytes(&[0; 8]);
        count += 1;
    }
    entries.u8(ENTRY_BUS).u8(0).bytes(b"ISA   ");
    entries
        .u8(ENTRY_IOAPIC)
        .u8(ioapic_id)
        .u8(IOAPIC_VERSION)
        .u8(1) // enabled
        .u32(IOAPIC_ADDR as u32);
    count += 2;
    // ISA IRQ n arrives on IOAPIC pin n, with the bus's default polarity.
    for irq in 0..IOAPIC_PINS {
        entries
            .u8(ENTRY_IO_INTERRUPT)
            .u8(INT_TYPE_INT)
            .u16(0)
            .u8(0)
            .u8(irq)
            .u8(ioapic_id)
            .u8(irq);
        count += 1;
    }
    // LINT0 is ExtINT on the BSP, LINT1 NMI on every CPU.
    entries
        .u8(ENTRY_LOCAL_INTERRUPT)
        .u8(INT_TYPE_EXTINT)
        .u16(0)
        .u8(0)
        .u8(0)
        .u8(0)
        .u8(0);
    entries
        .u8(ENTRY_LOCAL_INTERRUPT)
        .u8(INT_TYPE_NMI)
        .u16(0)
        .u8(0)
        .u8(0)
        .u8(0xff)
        .u8(1);
    count += 2;

    const FLOATING_LEN: usize = 16;
    const HEADER_LEN: usize = 44;
    let config_addr = MPTABLE_ADDR as u32 + FLOATING_LEN as u32;
    let mut header = Table::default();
    header
        .bytes(b"PCMP")
        .u16((HEADER_LEN + entries.0.len()) as u16)
        .u8(4) // spec revision 1.4
        .u8(0) // checksum, below
        .bytes(b"HUSK    ")
        .bytes(b"MICROVM     ")
        .u32(0) // OEM table
        .u16(0)
        .u16(count)
        .u32(LAPIC_ADDR as u32)
        .u16(0) // extended table
        .u8(0)
        .u8(0);
    let mut config = header.0;
    config.extend_from_slice(&entries.0);
    set_checksum(&mut config, 7);

    let mut floating = Table::default();
    floating
        .bytes(b"_MP_")
        .u32(config_addr)
        .u8(1) // length in 16-byte units
        .u8(4)
        .u8(0) // checksum, below
        .bytes(&[0; 5]); // feature bytes: 0 = a configuration table follows
    let mut out = floating.0;
    set_checksum(&mut out, 10);
    out.extend_from_slice(&config);
    out
}

/// Writes the MP table for `cpus` CPUs into guest memory.
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), vm_memory::GuestMemoryError> {
    mem.write_slice(&build(cpus), GuestAddress(MPTABLE_ADDR))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, &x| s.wrapping_add(x))
    }

    #[test]
    fn checksums_and_lengths_hold() {
        for cpus in [1u8, 2, 32] {
            let t = build(cpus);
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
            let config = &t[16..];
            assert_eq!(&config[..4], b"PCMP");
            let len = u16::from_le_bytes([config[4], config[5]]) as usize;
            assert_eq!(len, config.len());
            assert_eq!(sum(config), 0, "config table checksum");
            let count = u16::from_le_bytes([config[34], config[35]]);
            assert_eq!(count, u16::from(cpus) + 2 + 24 + 2);
            // Fits between the MP table address and the end of base memory.
            assert!(MPTABLE_ADDR + t.len() as u64 <= 0xa0000);
        }
    }

    #[test]
    fn only_cpu_0_is_the_bsp() {
        let t = build(3);
        let entries = &t[16 + 44..];
        let flags: Vec<u8> = (0..3).map(|i| entries[i * 20 + 3]).collect();
        assert_eq!(flags, [CPU_ENABLED | CPU_BSP, CPU_ENABLED, CPU_ENABLED]);
    }
}
