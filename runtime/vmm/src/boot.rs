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
use vm_memory::{Address, GuestAddress, GuestMemoryMmap};

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

/// Loads the kernel at `path` into guest memory.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
) -> Result<(Entry, Option<boot_params>), VmmError> {
    let mut file = File::open(path).map_err(|source| VmmError::KernelOpen {
        path: path.to_path_buf(),
        source,
    })?;
    let mut magic = [0u8; 4];
    let is_elf = file.read_exact(&mut magic).is_ok() && &magic == ELF_MAGIC;
    let _ = file.seek(SeekFrom::Start(0));
    let not_a_kernel = |why: String| VmmError::NotAKernel {
        path: path.to_path_buf(),
        why,
    };
    if is_elf {
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
pub fn load_initrd(mem: &GuestMemoryMmap, path: &Path, ram: u64) -> Result<Initrd, VmmError> {
    let mut file = File::open(path).map_err(|source| VmmError::InitrdOpen {
        path: path.to_path_buf(),
        source,
    })?;
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
    use vm_memory::Bytes;
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
        .map_err(|e| VmmError::Cmdline(e.to_string()))?
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
