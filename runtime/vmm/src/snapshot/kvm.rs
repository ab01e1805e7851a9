//! The state KVM keeps for a VM, saved and written back: each vCPU's
//! architectural state, the in-kernel interrupt controllers, the PIT and
//! kvm-clock.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_device_attr, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs, KVMIO,
    KVM_CLOCK_HOST_TSC, KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use vmm_sys_util::ioctl::ioctl_with_ref;

use super::SnapshotError;

/// One vCPU's architectural state.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    #[serde(with = "super::blob")]
    pub mp_state: kvm_mp_state,
    #[serde(with = "super::blob")]
    pub regs: kvm_regs,
    #[serde(with = "super::blob")]
    pub sregs: kvm_sregs,
    #[serde(with = "super::blob")]
    pub xsave: kvm_xsave,
    #[serde(with = "super::blob")]
    pub xcrs: kvm_xcrs,
    #[serde(with = "super::blob")]
    pub debugregs: kvm_debugregs,
    #[serde(with = "super::blob")]
    pub lapic: kvm_lapic_state,
    /// (index, value) of every MSR KVM lets userspace read for this vCPU.
    #[serde(with = "super::blob::msrs")]
    pub msrs: Vec<(u32, u64)>,
    #[serde(with = "super::blob")]
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

    /// Writes the state into a new vCPU whose CPUID is already set; its
    /// TSC follows the VM's restored clock (`tsc`).
    pub fn restore(&self, vcpu: &VcpuFd, id: usize, tsc: &mut Tsc) -> Result<(), SnapshotError> {
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
        // The TSC before the MSRs: KVM arms a TSC-deadline timer when
        // IA32_TSC_DEADLINE is written, against the TSC as it then is.
        // Armed against another, the guest's next tick comes late, and
        // until it comes its coarse clock (time(), what `date` reads)
        // stays where it was saved.
        let saved_tsc = self
            .msrs
            .iter()
            .find(|(index, _)| *index == MSR_IA32_TSC)
            .map(|&(_, value)| value);
        let tsc_set = tsc.apply(vcpu, saved_tsc)?;
        let entries: Vec<_> = self
            .msrs
            .iter()
            // Written as IA32_TSC, the TSC would take another offset.
            .filter(|&&(index, _)| !(tsc_set && index == MSR_IA32_TSC))
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
        // The guest's clock moved on by the time the snapshot waited,
        // which its kernel would take at its first tick for a CPU stuck
        // that long: an RCU stall report (a page of "rcu: INFO: rcu_sched
        // self-detected stall" on the console, 30-80 ms of the bed's
        // guest time) for a snapshot older than the stall timeout (21 s), and
        // soft-lockup warnings. KVM_KVMCLOCK_CTRL marks its kvm-clock
        // "stopped by the host", which both watchdogs check before they
        // complain, as they do after QEMU or Firecracker resume a paused
        // VM. A guest without kvm-clock refuses (EINVAL): nothing to mark.
        let _ = vcpu.kvmclock_ctrl();
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
    #[serde(with = "super::blob")]
    pub pic_master: kvm_irqchip,
    #[serde(with = "super::blob")]
    pub pic_slave: kvm_irqchip,
    #[serde(with = "super::blob")]
    pub ioapic: kvm_irqchip,
    /// Only for a VM given a PIT (`legacy_pit`).
    #[serde(with = "super::blob::option")]
    pub pit: Option<kvm_pit_state2>,
    #[serde(with = "super::blob")]
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
            clock: stamped(
                vm.get_clock()
                    .map_err(|e| SnapshotError::Kvm("KVM_GET_CLOCK", e))?,
                realtime_ns(),
            ),
        })
    }

    /// Writes the state into a new VM that has its irqchip, and its PIT
    /// when the saved one had one; the clock as it now stands, for the
    /// vCPUs' TSCs to follow.
    pub fn restore(&self, vm: &VmFd) -> Result<Tsc, SnapshotError> {
        self.put_back(vm)?;
        let now = vm
            .get_clock()
            .map_err(|e| SnapshotError::Kvm("KVM_GET_CLOCK", e))?;
        Ok(Tsc {
            moved_ns: now.clock.saturating_sub(self.clock.clock),
            host_tsc: if now.flags & KVM_CLOCK_HOST_TSC != 0 {
                now.host_tsc
            } else {
                // KVM gives the host's TSC only with its stable clock
                // (the host's clock source the TSC): read here instead,
                // just after the clock, as KVM would.
                // SAFETY: RDTSC reads the time-stamp counter into
                // registers; it touches no memory (x86_64 always has it).
                unsafe { std::arch::x86_64::_rdtsc() }
            },
            offset: None,
        })
    }

    /// The interrupt controllers, the PIT and the clock, as saved.
    fn put_back(&self, vm: &VmFd) -> Result<(), SnapshotError> {
        for chip in [&self.pic_master, &self.pic_slave, &self.ioapic] {
            vm.set_irqchip(chip)
                .map_err(|e| SnapshotError::Kvm("KVM_SET_IRQCHIP", e))?;
        }
        if let Some(pit) = &self.pit {
            vm.set_pit2(pit)
                .map_err(|e| SnapshotError::Kvm("KVM_SET_PIT2", e))?;
        }
        // The guest's clock moves on by the host time since the save (KVM
        // adds what passed since `realtime`), so its wall clock is right.
        // A kernel that takes no `realtime` (before Linux 5.16) is given
        // the clock moved on here, a few microseconds less exact.
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
            clock.realtime = 0;
            clock.clock = moved_on(&self.clock, realtime_ns());
        }
        vm.set_clock(&clock)
            .map_err(|e| SnapshotError::Kvm("KVM_SET_CLOCK", e))
    }
}

/// IA32_TSC, the time-stamp counter.
const MSR_IA32_TSC: u32 = 0x10;

vmm_sys_util::ioctl_iow_nr!(KVM_SET_DEVICE_ATTR, KVMIO, 0xe1, kvm_device_attr);
vmm_sys_util::ioctl_iow_nr!(KVM_HAS_DEVICE_ATTR, KVMIO, 0xe3, kvm_device_attr);

/// The restored VM's clock, which the vCPUs' TSCs follow: each moves on
/// from its saved value by as much as the guest's kvm-clock did, so a
/// guest reading either (kvm-clock, or the TSC as its clock source) sees
/// the time that passed.
///
/// Written as the vCPU's TSC offset (Linux 5.16's `KVM_VCPU_TSC_OFFSET`,
/// KVM's own way for migration), not only through IA32_TSC: KVM before
/// Linux 6.7 takes a host's IA32_TSC write that lands within a second of
/// what a newly made vCPU counts from as that vCPU being put in step with
/// its siblings, and drops the value. A VM saved within its first second
/// (a warm start's snapshot, taken at init) came back with its TSC near 0
/// and its clock where it was saved. A kernel without the attribute keeps
/// the IA32_TSC write.
#[derive(Debug)]
pub struct Tsc {
    /// How far the guest's kvm-clock moved on from the save, in ns.
    moved_ns: u64,
    /// The host's TSC as that was read.
    host_tsc: u64,
    /// The offset of every vCPU, worked out once (from the first vCPU's
    /// saved TSC; they counted in step): vCPUs with one offset are in
    /// step for KVM too, which keeps its stable kvm-clock.
    offset: Option<u64>,
}

impl Tsc {
    /// Sets the vCPU's TSC offset; whether it did (it does not on a
    /// kernel without the attribute, or for a vCPU saved without its
    /// TSC: IA32_TSC is written then, as the other MSRs are).
    fn apply(&mut self, vcpu: &VcpuFd, saved: Option<u64>) -> Result<bool, SnapshotError> {
        let attr = |addr: u64| kvm_device_attr {
            group: KVM_VCPU_TSC_CTRL,
            attr: u64::from(KVM_VCPU_TSC_OFFSET),
            addr,
            flags: 0,
        };
        // SAFETY: KVM_HAS_DEVICE_ATTR reads the attribute structure, which
        // lives through the call; it follows no address.
        if unsafe { ioctl_with_ref(vcpu, KVM_HAS_DEVICE_ATTR(), &attr(0)) } != 0 {
            return Ok(false);
        }
        let offset = match (self.offset, saved) {
            (Some(offset), _) => offset,
            (None, Some(saved)) => {
                let khz = vcpu
                    .get_tsc_khz()
                    .map_err(|e| SnapshotError::Kvm("KVM_GET_TSC_KHZ", e))?;
                let offset = tsc_offset(saved, self.moved_ns, khz, self.host_tsc);
                self.offset = Some(offset);
                offset
            }
            (None, None) => return Ok(false),
        };
        // SAFETY: KVM_SET_DEVICE_ATTR reads the attribute structure and,
        // through its address, the u64 `offset`; both live through the call.
        let set = unsafe {
            ioctl_with_ref(
                vcpu,
                KVM_SET_DEVICE_ATTR(),
                &attr(std::ptr::from_ref(&offset) as u64),
            )
        };
        if set != 0 {
            return Err(SnapshotError::Kvm(
                "KVM_SET_DEVICE_ATTR (TSC offset)",
                kvm_ioctls::Error::last(),
            ));
        }
        Ok(true)
    }
}

/// The TSC offset that makes a vCPU's TSC, at host TSC `host_tsc`, the
/// saved `saved` moved on by `moved_ns` at `khz`: what KVM adds to the
/// host's TSC (modulo 2^64).
fn tsc_offset(saved: u64, moved_ns: u64, khz: u32, host_tsc: u64) -> u64 {
    let moved = u128::from(moved_ns) * u128::from(khz) / 1_000_000;
    saved
        .wrapping_add(u64::try_from(moved).unwrap_or(u64::MAX))
        .wrapping_sub(host_tsc)
}

/// The host's wall clock (`CLOCK_REALTIME`, KVM's `realtime`), in
/// nanoseconds since the epoch.
fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The saved clock with the host's wall clock at the save. KVM gives it
/// only while the host's own clock source is the TSC; a host on another
/// (a VM whose TSC is unstable, a nested or emulated host) gets `now_ns`,
/// read just after the clock, so every restore moves the guest's clock
/// on by the time since, as KVM would. Without it the guest's clock
/// resumed where it was saved, behind by that time.
fn stamped(mut clock: kvm_clock_data, now_ns: u64) -> kvm_clock_data {
    if clock.flags & KVM_CLOCK_REALTIME == 0 {
        clock.flags |= KVM_CLOCK_REALTIME;
        clock.realtime = now_ns;
    }
    clock
}

/// The guest's clock at host time `now_ns`: the saved one moved on by
/// the host time since the save, never back.
fn moved_on(saved: &kvm_clock_data, now_ns: u64) -> u64 {
    saved
        .clock
        .saturating_add(now_ns.saturating_sub(saved.realtime))
}

#[cfg(test)]
mod tests {
    use super::{moved_on, stamped, tsc_offset, KVM_CLOCK_REALTIME};
    use kvm_bindings::{kvm_clock_data, KVM_CLOCK_TSC_STABLE};

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_clock_without_the_hosts_wall_time_gets_it_and_moves_on_by_the_time_since() {
        let saved = stamped(
            kvm_clock_data {
                clock: 5 * SECOND,
                flags: KVM_CLOCK_TSC_STABLE,
                ..Default::default()
            },
            1_000 * SECOND,
        );
        assert_eq!(saved.flags, KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME);
        assert_eq!(saved.realtime, 1_000 * SECOND);
        assert_eq!(saved.clock, 5 * SECOND);
        assert_eq!(moved_on(&saved, 1_004 * SECOND), 9 * SECOND);
        // A host clock set back since the save: the guest's never goes back.
        assert_eq!(moved_on(&saved, 900 * SECOND), 5 * SECOND);
    }

    #[test]
    fn kvms_own_wall_time_is_kept() {
        let kvm = kvm_clock_data {
            clock: 7,
            flags: KVM_CLOCK_REALTIME,
            realtime: 42,
            ..Default::default()
        };
        let saved = stamped(kvm, 99);
        assert_eq!(
            (saved.clock, saved.flags, saved.realtime),
            (7, KVM_CLOCK_REALTIME, 42)
        );
    }

    #[test]
    fn the_tsc_moves_on_with_the_clock_whatever_the_hosts_tsc() {
        // 4 s at 2.6 GHz on from a saved 2.4e9, with the host's TSC at 1e12:
        // the vCPU reads host + offset.
        let offset = tsc_offset(2_400_000_000, 4 * SECOND, 2_600_000, 1_000_000_000_000);
        assert_eq!(
            1_000_000_000_000u64.wrapping_add(offset),
            2_400_000_000 + 10_400_000_000
        );
        // A host TSC below the guest's (another boot of the host): the
        // offset wraps, the sum does not.
        let offset = tsc_offset(50_000_000_000, 0, 2_600_000, 7);
        assert_eq!(7u64.wrapping_add(offset), 50_000_000_000);
    }
}
