//! A vCPU's architectural state at boot: CPUID, MSRs, segment and control
//! registers, FPU and local APIC (x86_64).

use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::Entry;
use crate::layout::*;
use crate::VmmError;

/// The host's supported CPUID, read once per VM, plus the TSC-deadline
/// timer: KVM emulates it but leaves it out of `KVM_GET_SUPPORTED_CPUID`.
/// Without it Linux calibrates its LAPIC timer against the PIT (slow, and
/// under nested virtualization it fails and the guest ticks on the PIT).
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, VmmError> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| VmmError::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
    if kvm.check_extension(Cap::TscDeadlineTimer) {
        for e in cpuid.as_mut_slice().iter_mut().filter(|e| e.function == 1) {
            e.ecx |= 1 << 24;
        }
    }
    filter_xsave_components(&mut cpuid);
    Ok(cpuid)
}

/// Keeps in leaf 0xD only the XSAVE state components whose CPU features are
/// advertised (AVX state without AVX makes Linux warn about inconsistent
/// XSAVE sizes and fall back), and recomputes the largest save area.
fn filter_xsave_components(cpuid: &mut CpuId) {
    let find = |cpuid: &CpuId, f: u32, i: u32| {
        cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .copied()
    };
    let (Some(leaf1), Some(leaf7)) = (find(cpuid, 1, 0), find(cpuid, 7, 0)) else {
        return;
    };
    // x87 and SSE always; the rest by their feature bits.
    let mut allowed: u64 = 0b11;
    if leaf1.ecx & (1 << 28) != 0 {
        allowed |= 1 << 2; // AVX
    }
    if leaf7.ebx & (1 << 14) != 0 {
        allowed |= 0b11 << 3; // MPX bounds and config
    }
    if leaf7.ebx & (1 << 16) != 0 {
        allowed |= 0b111 << 5; // AVX-512 opmask, ZMM_Hi256, Hi16_ZMM
    }
    if leaf7.ecx & (1 << 3) != 0 {
        allowed |= 1 << 9; // PKRU
    }
    let Some(leaf_d0) = find(cpuid, 0xd, 0) else {
        return;
    };
    let supported = (u64::from(leaf_d0.edx) << 32 | u64::from(leaf_d0.eax)) & allowed;
    // Legacy area (512) + XSAVE header (64), then each component's end.
    let mut max_size = 576;
    for e in cpuid.as_mut_slice() {
        if e.function != 0xd || e.index < 2 || e.index >= 64 {
            continue;
        }
        if supported & (1 << e.index) == 0 {
            (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
        } else if e.ecx & 1 == 0 {
            // A user state component: offset EBX, size EAX.
            max_size = max_size.max(e.ebx + e.eax);
        }
    }
    for e in cpuid.as_mut_slice() {
        if e.function == 0xd && e.index == 0 {
            e.eax = supported as u32;
            e.edx = (supported >> 32) as u32;
            e.ebx = max_size;
            e.ecx = max_size;
        }
    }
}

/// CPUID for vCPU `id` of `count`: the host's supported features, marked
/// as running under a hypervisor, with this vCPU's APIC ID and a topology
/// of `count` single-threaded cores in one package.
pub fn cpuid_for(base: &CpuId, id: u8, count: u8) -> CpuId {
    let mut cpuid = base.clone();
    let cores_bits = u32::BITS - u32::from(count.max(1) - 1).leading_zeros();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // APIC ID, logical processor count; keep CLFLUSH size.
                e.ebx = (u32::from(id) << 24) | (u32::from(count) << 16) | (e.ebx & 0xffff);
                e.ecx |= 1 << 31; // hypervisor present
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: the count above is meaningful
                }
            }
            4 => {
                // Cores per package - 1 in EAX[31:26]; one thread per cache.
                e.eax = (e.eax & 0x3fff) | (u32::from(count - 1) << 26);
            }
            0xb | 0x1f => {
                e.edx = u32::from(id);
                match e.index {
                    0 => {
                        // SMT level: one thread per core.
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        // Core level: `count` cores.
                        e.eax = cores_bits;
                        e.ebx = u32::from(count);
                        e.ecx = 1 | (2 << 8);
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            _ => {}
        }
    }
    cpuid
}

/// MSRs a booting kernel expects zeroed or set (as Firecracker does).
fn boot_msrs() -> Result<Msrs, VmmError> {
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    Msrs::from_entries(&[
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, 1),          // fast strings
        entry(MSR_MTRR_DEF_TYPE, (1 << 11) | 6), // MTRRs on, write-back
    ])
    .map_err(|_| VmmError::BootMsrs)
}

/// A GDT entry from access/flags (`0xF0FF` mask: flags nibble, access byte),
/// base and limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
        | ((limit & 0xf_0000) << 32)
        | (((flags as u64) & 0xf0ff) << 40)
}

fn segment(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

const X86_CR0_PE: u64 = 1;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Sets up every register of the boot vCPU (`id` 0) or an application
/// processor (which waits for INIT/SIPI in the in-kernel LAPIC).
pub fn setup_vcpu(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    cpuid: &CpuId,
    id: u8,
    entry: Entry,
) -> Result<(), VmmError> {
    let kvm = |what| move |e| VmmError::Kvm(what, e);
    vcpu.set_cpuid2(cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
    vcpu.set_msrs(&boot_msrs()?).map_err(kvm("KVM_SET_MSRS"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))?;
    set_lint(vcpu)?;
    if id != 0 {
        return Ok(());
    }

    let long = matches!(entry, Entry::Linux64(_));
    let code = if long {
        gdt_entry(0xa09b, 0, 0xfffff) // 64-bit code
    } else {
        gdt_entry(0xc09b, 0, 0xfffff) // 32-bit code
    };
    let gdt = [
        0,
        code,
        gdt_entry(0xc093, 0, 0xfffff), // data
        gdt_entry(0x008b, 0, 0x67),    // TSS
    ];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + i as u64 * 8))
            .map_err(|e| VmmError::GuestMemory(format!("writing the GDT: {e}")))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(|e| VmmError::GuestMemory(format!("writing the IDT: {e}")))?;

    let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    let data = segment(gdt[2], 0x10);
    sregs.cs = segment(gdt[1], 0x08);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(gdt[3], 0x18);

    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        Entry::Pvh(rip) => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = rip;
            regs.rbx = PVH_INFO_ADDR;
        }
        Entry::Linux64(rip) => {
            write_identity_page_tables(mem)?;
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = rip;
            regs.rsp = BOOT_STACK_ADDR;
            regs.rbp = BOOT_STACK_ADDR;
            regs.rsi = ZERO_PAGE_ADDR;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))?;
    Ok(())
}

/// Identity-maps the first GiB with 2 MiB pages, for the 64-bit entry.
fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), VmmError> {
    let w = |v: u64, at: u64| {
        mem.write_obj(v, GuestAddress(at))
            .map_err(|e| VmmError::GuestMemory(format!("writing page tables: {e}")))
    };
    w(PDPTE_ADDR | 0x3, PML4_ADDR)?;
    w(PDE_ADDR | 0x3, PDPTE_ADDR)?;
    for i in 0..512u64 {
        w((i << 21) | 0x83, PDE_ADDR + i * 8)?;
    }
    Ok(())
}

/// LINT0 delivers ExtINT and LINT1 NMI, as the MP table says.
fn set_lint(vcpu: &VcpuFd) -> Result<(), VmmError> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const MODE_EXTINT: u32 = 0x7 << 8;
    const MODE_NMI: u32 = 0x4 << 8;
    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| VmmError::Kvm("KVM_GET_LAPIC", e))?;
    for (reg, mode) in [(APIC_LVT0, MODE_EXTINT), (APIC_LVT1, MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
        let v = (u32::from_le_bytes(bytes) & !0x700) | mode;
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic)
        .map_err(|e| VmmError::Kvm("KVM_SET_LAPIC", e))
}

#[cfg(test)]
mod tests {
    use kvm_bindings::kvm_cpuid_entry2;

    use super::*;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn xsave_components_follow_the_features() {
        // AVX state offered in leaf 0xD, but no AVX in leaf 1.
        let mut cpuid = CpuId::from_entries(&[
            entry(1, 0, 0, 0, 0, 0),
            entry(7, 0, 0, 0, 0, 0),
            entry(0xd, 0, 0b111, 832, 832, 0),
            entry(0xd, 2, 256, 576, 0, 0),
        ])
        .unwrap();
        filter_xsave_components(&mut cpuid);
        let d0 = cpuid.as_slice()[2];
        assert_eq!((d0.eax, d0.ebx, d0.ecx), (0b11, 576, 576));
        assert_eq!(cpuid.as_slice()[3].eax, 0, "AVX component hidden");

        // With AVX advertised, it stays and the area covers it.
        let mut cpuid = CpuId::from_entries(&[
            entry(1, 0, 0, 0, 1 << 28, 0),
            entry(7, 0, 0, 0, 0, 0),
            entry(0xd, 0, 0b111, 576, 832, 0),
            entry(0xd, 2, 256, 576, 0, 0),
        ])
        .unwrap();
        filter_xsave_components(&mut cpuid);
        let d0 = cpuid.as_slice()[2];
        assert_eq!((d0.eax, d0.ecx), (0b111, 832));
    }

    #[test]
    fn gdt_entries_decode_to_the_expected_segments() {
        let code = segment(gdt_entry(0xc09b, 0, 0xfffff), 8);
        assert_eq!((code.base, code.limit), (0, 0xffff_ffff));
        assert_eq!(
            (code.type_, code.s, code.db, code.l, code.g),
            (0xb, 1, 1, 0, 1)
        );
        assert_eq!(code.present, 1);
        let code64 = segment(gdt_entry(0xa09b, 0, 0xfffff), 8);
        assert_eq!((code64.l, code64.db), (1, 0));
        let tss = segment(gdt_entry(0x008b, 0, 0x67), 0x18);
        assert_eq!((tss.limit, tss.type_, tss.s, tss.g), (0x67, 0xb, 0, 0));
    }
}
