//! Loading the guest: kernel (ELF `vmlinux` through PVH, or `bzImage`
//! through the Linux boot protocol), initrd and command line, and the boot
//! information each protocol expects.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{bzimage::BzImage, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::*;
use crate::VmmError;

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// 32-bit protected mode at the PVH entry, `rbx` = start info.
    Pvh(u64),
    /// 64-bit mode at the kernel's 64-bit entry, `rsi` = zero page.
    Linux64(u64),
}

/// Where an initrd was placed.
#[derive(Debug, Clone, Copy)]
pub struct Initrd {
    pub addr: u64,
    pub size: u64,
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const PVH_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;

/// The highest guest-physical address an ELF kernel's loadable segments
/// reach (`p_paddr + p_memsz`, bss included), from its program headers.
/// linux-loader checks only the file bytes against guest memory.
fn elf_load_end(file: &mut File) -> Option<u64> {
    const PT_LOAD: u32 = 1;
    let mut ehdr = [0u8; 64];
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_exact(&mut ehdr).ok()?;
    let phoff = u64::from_le_bytes(ehdr[32..40].try_into().ok()?);
    let phentsize = u64::from(u16::from_le_bytes([ehdr[54], ehdr[55]]));
    let phnum = u16::from_le_bytes([ehdr[56], ehdr[57]]);
    let mut end = 0u64;
    let mut phdr = [0u8; 56];
    for i in 0..u64::from(phnum) {
        file.seek(SeekFrom::Start(
            phoff.checked_add(i.checked_mul(phentsize)?)?,
        ))
        .ok()?;
        file.read_exact(&mut phdr).ok()?;
        if u32::from_le_bytes(phdr[0..4].try_into().ok()?) == PT_LOAD {
            let paddr = u64::from_le_bytes(phdr[24..32].try_into().ok()?);
            let memsz = u64::from_le_bytes(phdr[40..48].try_into().ok()?);
            end = end.max(paddr.checked_add(memsz)?);
        }
    }
    Some(end)
}

/// Opens the kernel (before any sandbox).
pub fn open_kernel(path: &Path) -> Result<File, VmmError> {
    File::open(path).map_err(|source| VmmError::KernelOpen {
        path: path.to_path_buf(),
        source,
    })
}

/// Opens the initrd (before any sandbox).
pub fn open_initrd(path: &Path) -> Result<File, VmmError> {
    File::open(path).map_err(|source| VmmError::InitrdOpen {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads the kernel `file` (found at `path`) into guest memory of `ram`
/// bytes.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    mut file: File,
    path: &Path,
    ram: u64,
) -> Result<(Entry, Option<boot_params>), VmmError> {
    let mut magic = [0u8; 4];
    let is_elf = file.read_exact(&mut magic).is_ok() && &magic == ELF_MAGIC;
    let _ = file.seek(SeekFrom::Start(0));
    let not_a_kernel = |why: String| VmmError::NotAKernel {
        path: path.to_path_buf(),
        why,
    };
    let low_ram = ram.min(MMIO_GAP_START);
    let too_small = |need: u64| VmmError::MemoryTooSmall {
        have_mib: ram >> 20,
        need_mib: need.div_ceil(1 << 20),
    };
    if is_elf {
        match elf_load_end(&mut file) {
            Some(end) if end > low_ram => return Err(too_small(end)),
            _ => {}
        }
        let r = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| not_a_kernel(format!("ELF: {e}")))?;
        return match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(entry) => Ok((Entry::Pvh(entry.raw_value()), None)),
            _ => Err(not_a_kernel(
                "an ELF kernel without a PVH entry note (build it with CONFIG_PVH=y)".into(),
            )),
        };
    }
    let r = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| not_a_kernel(format!("neither an ELF vmlinux nor a bzImage ({e})")))?;
    let header = r
        .setup_header
        .ok_or_else(|| not_a_kernel("bzImage without a setup header".into()))?;
    // The kernel decompresses itself in place: it needs init_size bytes
    // from where it was loaded.
    let need = r.kernel_load.raw_value() + u64::from(header.init_size);
    if need > low_ram {
        return Err(too_small(need));
    }
    let params = boot_params {
        hdr: header,
        ..Default::default()
    };
    // 64-bit entry point: 0x200 past where the protected-mode kernel loads.
    let entry = r.kernel_load.raw_value() + 0x200;
    Ok((Entry::Linux64(entry), Some(params)))
}

/// Copies the initrd to the top of low RAM, page aligned, below 2 GiB (the
/// Linux boot protocol's default `initrd_addr_max`).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mut file: File,
    path: &Path,
    ram: u64,
) -> Result<Initrd, VmmError> {
    let size = file
        .metadata()
        .map_err(|source| VmmError::InitrdOpen {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let top = ram.min(MMIO_GAP_START).min(0x8000_0000);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a > HIMEM_START)
        .ok_or(VmmError::InitrdTooLarge { size, ram })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| VmmError::GuestMemory(format!("loading the initrd: {e}")))?;
    Ok(Initrd { addr, size })
}

/// Writes the command line and the boot information for `entry`.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    entry: Entry,
    zero_page: Option<boot_params>,
    cmdline: &Cmdline,
    initrd: Option<Initrd>,
    ram: u64,
) -> Result<(), VmmError> {
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(VmmError::Cmdline)?
        .as_bytes_with_nul()
        .len();
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_ADDR), cmdline)
        .map_err(|e| VmmError::GuestMemory(format!("writing the command line: {e}")))?;
    let e820 = e820_ram(ram);
    match entry {
        Entry::Pvh(_) => {
            let memmap: Vec<hvm_memmap_table_entry> = e820
                .iter()
                .map(|&(addr, size)| hvm_memmap_table_entry {
                    addr,
                    size,
                    type_: E820_RAM,
                    reserved: 0,
                })
                .collect();
            let start_info = hvm_start_info {
                magic: PVH_MAGIC,
                version: 1,
                cmdline_paddr: CMDLINE_ADDR,
                memmap_paddr: PVH_MEMMAP_ADDR,
                memmap_entries: memmap.len() as u32,
                nr_modules: u32::from(initrd.is_some()),
                modlist_paddr: if initrd.is_some() {
                    PVH_MODLIST_ADDR
                } else {
                    0
                },
                ..Default::default()
            };
            let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_ADDR));
            params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_ADDR));
            if let Some(i) = initrd {
                let module = hvm_modlist_entry {
                    paddr: i.addr,
                    size: i.size,
                    ..Default::default()
                };
                params.set_modules(&[module], GuestAddress(PVH_MODLIST_ADDR));
            }
            PvhBootConfigurator::write_bootparams(&params, mem)
                .map_err(|e| VmmError::GuestMemory(format!("writing the PVH start info: {e}")))
        }
        Entry::Linux64(_) => {
            let mut p = zero_page.unwrap_or_default();
            p.hdr.type_of_loader = 0xff; // undefined loader
            p.hdr.boot_flag = 0xaa55;
            p.hdr.header = 0x5372_6448; // "HdrS"
            p.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
            p.hdr.cmdline_size = cmdline_len as u32;
            if let Some(i) = initrd {
                p.hdr.ramdisk_image = i.addr as u32;
                p.hdr.ramdisk_size = i.size as u32;
            }
            for (n, &(addr, size)) in e820.iter().enumerate() {
                p.e820_table[n].addr = addr;
                p.e820_table[n].size = size;
                p.e820_table[n].r#type = E820_RAM;
            }
            p.e820_entries = e820.len() as u8;
            LinuxBootConfigurator::write_bootparams(
                &BootParams::new(&p, GuestAddress(ZERO_PAGE_ADDR)),
                mem,
            )
            .map_err(|e| VmmError::GuestMemory(format!("writing the zero page: {e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// An ELF64 header and two program headers: a PT_LOAD whose bss runs
    /// past its file bytes, and a PT_NOTE that must not count.
    fn elf_with_segments() -> tempfile::NamedTempFile {
        let mut b = vec![0u8; 64 + 2 * 56];
        b[..4].copy_from_slice(ELF_MAGIC);
        b[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        b[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        b[56..58].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
        let mut phdr = |i: usize, kind: u32, paddr: u64, filesz: u64, memsz: u64| {
            let p = &mut b[64 + i * 56..64 + (i + 1) * 56];
            p[0..4].copy_from_slice(&kind.to_le_bytes());
            p[24..32].copy_from_slice(&paddr.to_le_bytes());
            p[32..40].copy_from_slice(&filesz.to_le_bytes());
            p[40..48].copy_from_slice(&memsz.to_le_bytes());
        };
        phdr(0, 1, 0x100_0000, 0x1000, 0x20_0000);
        phdr(1, 4, 0x900_0000, 0x10, 0x10);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&b).unwrap();
        f
    }

    #[test]
    fn load_end_counts_bss_and_only_loadable_segments() {
        let f = elf_with_segments();
        let mut file = File::open(f.path()).unwrap();
        assert_eq!(elf_load_end(&mut file), Some(0x120_0000));
    }

    #[test]
    fn kernel_past_the_end_of_memory_is_memory_too_small() {
        let f = elf_with_segments();
        let ram = 16 << 20;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), ram as usize)]).unwrap();
        match load_kernel(&mem, open_kernel(f.path()).unwrap(), f.path(), ram) {
            Err(VmmError::MemoryTooSmall { have_mib, need_mib }) => {
                assert_eq!((have_mib, need_mib), (16, 18));
            }
            other => panic!("expected MemoryTooSmall, got {other:?}"),
        }
    }
}
