//! Snapshot and restore of a running guest's KVM state on a real
//! `/dev/kvm` (any would do, PVM included: the guest is a few bytes of
//! real-mode code, no kernel; it runs with the boot tests). The guest counts in memory and reports each count on an I/O
//! port; after five counts its vCPU, interrupt controllers, PIT, clock and
//! memory are saved, and two new VMs restored from that snapshot go on
//! counting from six with the registers the first one had, while the
//! snapshot's memory file stays as it was saved.

use devices::virtio::mmio::{MmioTransport, TransportState};
use devices::virtio::rng::Rng;
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use libtest_mimic::Failed;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};
use vmm::snapshot::{self, Header, Snapshot, SnapshotError, VcpuState, VmState};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const CODE: u64 = 0x1000;
const COUNTER: u64 = 0x8000;
const PORT: u16 = 0x10;
const MEMORY_MIB: u64 = 2;

/// Real mode at 0x1000:
///   mov bx, 0x1234          bb 34 12
/// again:
///   inc word [0x8000]       ff 06 00 80
///   mov ax, [0x8000]        a1 00 80
///   out 0x10, ax            e7 10
///   jmp again               eb f5
const PROGRAM: &[u8] = &[
    0xbb, 0x34, 0x12, 0xff, 0x06, 0x00, 0x80, 0xa1, 0x00, 0x80, 0xe7, 0x10, 0xeb, 0xf5,
];

fn kvm() -> Kvm {
    Kvm::new().unwrap_or_else(|e| {
        panic!("no usable /dev/kvm on this machine ({e}); the snapshot test needs one")
    })
}

/// A VM with the devices husk's VMs have in the kernel (irqchip, PIT),
/// `mem` as its RAM and one vCPU with the host's CPUID.
fn vm_with(kvm: &Kvm, mem: &GuestMemoryMmap) -> (VmFd, VcpuFd) {
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    vm.set_tss_address(0xfffb_d000).unwrap();
    vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).expect("KVM_CREATE_PIT2");
    for (slot, region) in mem.iter().enumerate() {
        let host = region.get_host_address(MemoryRegionAddress(0)).unwrap();
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: `host` maps `region.len()` bytes owned by `mem`, which
        // the caller keeps alive as long as the VM.
        unsafe { vm.set_user_memory_region(r) }.expect("KVM_SET_USER_MEMORY_REGION");
    }
    let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    let cpuid = vmm::cpu::supported_cpuid(kvm).unwrap();
    vcpu.set_cpuid2(&cpuid).expect("KVM_SET_CPUID2");
    (vm, vcpu)
}

/// Runs the guest to its next count.
fn next_count(vcpu: &mut VcpuFd) -> u16 {
    match vcpu.run().expect("KVM_RUN") {
        VcpuExit::IoOut(port, data) if port == PORT => u16::from_le_bytes([data[0], data[1]]),
        other => panic!("unexpected exit {other:?}"),
    }
}

fn header() -> Header {
    Header::new("sha256:none", "", 1, MEMORY_MIB, vec!["rng".into()])
}

/// An entropy device no driver has set up, as a VM has before its guest's
/// drivers run: its state goes through the file with the rest.
fn rng_state(mem: &GuestMemoryMmap) -> TransportState {
    let t = MmioTransport::new(
        mem.clone(),
        Box::new(Rng::new().unwrap()),
        EventFd::new(EFD_NONBLOCK).unwrap(),
    )
    .unwrap();
    t.save().unwrap()
}

pub fn a_restored_guest_goes_on_where_it_was_saved() -> Result<(), Failed> {
    let kvm = kvm();
    let mem = GuestMemoryMmap::<()>::from_ranges(
        &vmm::layout::ram_ranges(MEMORY_MIB << 20)
            .iter()
            .map(|&(start, len)| (GuestAddress(start), len as usize))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    mem.write_slice(PROGRAM, GuestAddress(CODE)).unwrap();
    let (vm, mut vcpu) = vm_with(&kvm, &mem);
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = 0;
    sregs.ds.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = CODE;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    for want in 1..=5 {
        assert_eq!(next_count(&mut vcpu), want);
    }

    // The port write of count 5 is still pending: KVM completes it at the
    // next KVM_RUN, so the state saved now would write 5 again when
    // restored (PVM completes it at once; kvm_amd and kvm_intel do not).
    // As the VMM parks a vCPU: one run with immediate_exit set first.
    vcpu.set_kvm_immediate_exit(1);
    let _ = vcpu.run();
    vcpu.set_kvm_immediate_exit(0);
    let dir = tempfile::tempdir().unwrap();
    let msrs = snapshot::msr_list(&kvm).unwrap();
    let snap = Snapshot {
        header: header(),
        vm: VmState::save(&vm, true).unwrap(),
        vcpus: vec![VcpuState::save(&vcpu, &msrs).unwrap()],
        devices: vec![rng_state(&mem)],
        disks: Vec::new(),
        resume_area: Vec::new(),
    };
    snap.write(&mem, dir.path()).unwrap();
    // Saving does not disturb the running guest.
    assert_eq!(next_count(&mut vcpu), 6);

    for restore in 0..2 {
        let snap = Snapshot::read(dir.path(), &header()).unwrap();
        let mem2 = snapshot::restore_memory(dir.path(), MEMORY_MIB).unwrap();
        let (vm2, mut vcpu2) = vm_with(&kvm, &mem2);
        let mut tsc = snap.vm.restore(&vm2).unwrap();
        let mut rng = MmioTransport::new(
            mem2.clone(),
            Box::new(Rng::new().unwrap()),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        )
        .unwrap();
        rng.restore(&snap.devices[0]).unwrap();
        snap.vcpus[0].restore(&vcpu2, 0, &mut tsc).unwrap();
        // The TSC goes on from where it was saved (this VM is younger than
        // a second: KVM before Linux 6.7 dropped such a value written as
        // IA32_TSC, and the TSC started again near 0).
        let saved = tsc_of(&snap.vcpus[0]);
        let now = read_tsc(&vcpu2);
        assert!(now >= saved, "restore {restore}: TSC {now}, saved {saved}");
        for want in 6..=8 {
            assert_eq!(next_count(&mut vcpu2), want, "restore {restore}");
        }
        assert_eq!(vcpu2.get_regs().unwrap().rbx & 0xffff, 0x1234);
        assert_eq!(mem2.read_obj::<u16>(GuestAddress(COUNTER)).unwrap(), 8);
    }
    // The restored guests wrote to private copies: the file still holds 5.
    let file = std::fs::read(dir.path().join("memory")).unwrap();
    assert_eq!(
        &file[COUNTER as usize..COUNTER as usize + 2],
        &5u16.to_le_bytes()
    );
    Ok(())
}

const MSR_IA32_TSC: u32 = 0x10;

fn tsc_of(state: &VcpuState) -> u64 {
    state
        .msrs
        .iter()
        .find(|(index, _)| *index == MSR_IA32_TSC)
        .expect("the saved MSRs hold the TSC")
        .1
}

fn read_tsc(vcpu: &VcpuFd) -> u64 {
    let mut msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
        index: MSR_IA32_TSC,
        ..Default::default()
    }])
    .unwrap();
    assert_eq!(vcpu.get_msrs(&mut msrs).unwrap(), 1);
    msrs.as_slice()[0].data
}

pub fn a_snapshot_for_another_vm_or_a_damaged_one_is_refused() -> Result<(), Failed> {
    let kvm = kvm();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (MEMORY_MIB << 20) as usize)])
        .unwrap();
    mem.write_slice(PROGRAM, GuestAddress(CODE)).unwrap();
    let (vm, vcpu) = vm_with(&kvm, &mem);
    let dir = tempfile::tempdir().unwrap();
    let snap = Snapshot {
        header: header(),
        vm: VmState::save(&vm, true).unwrap(),
        vcpus: vec![VcpuState::save(&vcpu, &snapshot::msr_list(&kvm).unwrap()).unwrap()],
        devices: vec![rng_state(&mem)],
        disks: Vec::new(),
        resume_area: Vec::new(),
    };
    snap.write(&mem, dir.path()).unwrap();
    Snapshot::read(dir.path(), &header()).unwrap();

    // Another kernel: refused, naming it.
    let other = Header::new("sha256:other", "", 1, MEMORY_MIB, Vec::new());
    let err = Snapshot::read(dir.path(), &other).unwrap_err();
    assert!(
        matches!(err, SnapshotError::Mismatch { what: "kernel", .. }),
        "{err}"
    );

    // A truncated memory file: refused, never mapped short.
    let memory = dir.path().join("memory");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&memory)
        .unwrap();
    f.set_len((MEMORY_MIB << 20) - 4096).unwrap();
    let err = Snapshot::read(dir.path(), &header()).unwrap_err();
    assert!(err.to_string().contains("bytes of guest memory"), "{err}");

    // A truncated state file: refused.
    let state = dir.path().join("state.json");
    let text = std::fs::read(&state).unwrap();
    std::fs::write(&state, &text[..text.len() / 2]).unwrap();
    let err = Snapshot::read(dir.path(), &header()).unwrap_err();
    assert!(matches!(err, SnapshotError::Corrupt { .. }), "{err}");
    Ok(())
}
