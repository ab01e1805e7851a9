//! The state KVM keeps for a VM, saved and written back: each vCPU's
//! architectural state, the in-kernel interrupt controllers, the PIT and
//! kvm-clock.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_pit_state2,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs, KVM_CLOCK_REALTIME,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use super::SnapshotError;

/// One vCPU's architectural state.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    /// (index, value) of every MSR KVM lets userspace read for this vCPU.
    pub msrs: Vec<(u32, u64)>,
    pub events: kvm_vcpu_events,
}

/// The MSRs KVM saves and restores: its own list, each kept only where
/// this vCPU can read it (some indexes exist only with features the CPUID
/// leaves off).
pub fn msr_list(kvm: &Kvm) -> Result<Vec<u32>, SnapshotError> {
    Ok(kvm
        .get_msr_index_list()
        .map_err(|e| SnapshotError::Kvm("KVM_GET_MSR_INDEX_LIST", e))?
        .as_slice()
        .to_vec())
}

impl VcpuState {
    /// Reads the state of a stopped vCPU (not inside `KVM_RUN`). The
    /// multiprocessing state first, then the events last, as KVM's own
    /// documentation orders them for migration.
    pub fn save(vcpu: &VcpuFd, msr_indexes: &[u32]) -> Result<VcpuState, SnapshotError> {
        let kvm = |what| move |e| SnapshotError::Kvm(what, e);
        let mp_state = vcpu.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?;
        let regs = vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?;
        let sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
        let xsave = vcpu.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?;
        let xcrs = vcpu.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?;
        let debugregs = vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?;
        let lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
        let mut msrs = Vec::new();
        for &index in msr_indexes {
            let mut one = Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
                index,
                ..Default::default()
            }])
            .expect("one entry fits");
            // Reads 0 entries for an MSR this vCPU does not have.
            if vcpu.get_msrs(&mut one).map_err(kvm("KVM_GET_MSRS"))? == 1 {
                msrs.push((index, one.as_slice()[0].data));
            }
        }
        let events = vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?;
        Ok(VcpuState {
            mp_state,
            regs,
            sregs,
            xsave,
            xcrs,
            debugregs,
            lapic,
            msrs,
            events,
        })
    }

    /// Writes the state into a new vCPU whose CPUID is already set.
    pub fn restore(&self, vcpu: &VcpuFd, id: usize) -> Result<(), SnapshotError> {
        let kvm = |what| move |e| SnapshotError::Kvm(what, e);
        vcpu.set_mp_state(self.mp_state)
            .map_err(kvm("KVM_SET_MP_STATE"))?;
        vcpu.set_regs(&self.regs).map_err(kvm("KVM_SET_REGS"))?;
        let mut sregs = self.sregs;
        if host_is_amd() {
            // KVM on SVM reports the task register as a busy TSS whatever
            // the VMCB holds. AMD's CPUs look at neither the busy bit nor
            // the type when they load TR or check I/O permission, but
            // QEMU's emulated SVM (the KVM test bed) allows a user-mode
            // port access only through an "available" TSS: given back as
            // busy, init's ioperm() ports fault after a restore. Intel's
            // VM entry requires busy, so only on AMD is it cleared.
            sregs.tr.type_ &= !0x2;
        }
        vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
        // SAFETY: the buffer is a whole kvm_xsave as KVM_GET_XSAVE wrote
        // it, and KVM reads no more than the structure's size.
        unsafe { vcpu.set_xsave(&self.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
        vcpu.set_xcrs(&self.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
        vcpu.set_debug_regs(&self.debugregs)
            .map_err(kvm("KVM_SET_DEBUGREGS"))?;
        vcpu.set_lapic(&self.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
        let entries: Vec<_> = self
            .msrs
            .iter()
            .map(|&(index, data)| kvm_bindings::kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        for chunk in entries.chunks(64) {
            let msrs = Msrs::from_entries(chunk).expect("64 entries fit");
            let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
            if set != chunk.len() {
                return Err(SnapshotError::Msrs {
                    vcpu: id,
                    set,
                    wanted: chunk.len(),
                });
            }
        }
        vcpu.set_vcpu_events(&self.events)
            .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }
}

/// Whether this host's CPU is AMD's (CPUID vendor "AuthenticAMD").
fn host_is_amd() -> bool {
    let r = std::arch::x86_64::__cpuid(0);
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&r.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&r.edx.to_le_bytes());
    vendor[8..].copy_from_slice(&r.ecx.to_le_bytes());
    &vendor == b"AuthenticAMD"
}

/// The VM-wide state KVM keeps: both PICs, the IOAPIC, the PIT, the clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    /// Only for a VM given a PIT (`legacy_pit`).
    pub pit: Option<kvm_pit_state2>,
    pub clock: kvm_clock_data,
}

impl VmState {
    pub fn save(vm: &VmFd, pit: bool) -> Result<VmState, SnapshotError> {
        let chip = |id| {
            let mut c = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            vm.get_irqchip(&mut c)
                .map(|()| c)
                .map_err(|e| SnapshotError::Kvm("KVM_GET_IRQCHIP", e))
        };
        Ok(VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: if pit {
                Some(
                    vm.get_pit2()
                        .map_err(|e| SnapshotError::Kvm("KVM_GET_PIT2", e))?,
                )
            } else {
                None
            },
            clock: vm
                .get_clock()
                .map_err(|e| SnapshotError::Kvm("KVM_GET_CLOCK", e))?,
        })
    }

    /// Writes the state into a new VM that has its irqchip, and its PIT
    /// when the saved one had one.
    pub fn restore(&self, vm: &VmFd) -> Result<(), SnapshotError> {
        for chip in [&self.pic_master, &self.pic_slave, &self.ioapic] {
            vm.set_irqchip(chip)
                .map_err(|e| SnapshotError::Kvm("KVM_SET_IRQCHIP", e))?;
        }
        if let Some(pit) = &self.pit {
            vm.set_pit2(pit)
                .map_err(|e| SnapshotError::Kvm("KVM_SET_PIT2", e))?;
        }
        // The guest's clock moves on by the host time since the save (KVM
        // adds what passed since `realtime`), so its wall clock is right;
        // a host without that (before Linux 5.16) resumes it where it was.
        let mut clock = kvm_clock_data {
            clock: self.clock.clock,
            ..Default::default()
        };
        if self.clock.flags & KVM_CLOCK_REALTIME != 0 {
            clock.flags = KVM_CLOCK_REALTIME;
            clock.realtime = self.clock.realtime;
            if vm.set_clock(&clock).is_ok() {
                return Ok(());
            }
            clock.flags = 0;
        }
        vm.set_clock(&clock)
            .map_err(|e| SnapshotError::Kvm("KVM_SET_CLOCK", e))
    }
}
