//! KVM smoke test in the kvm-ioctls style: a few bytes of real-mode guest
//! code through a vCPU, checking that port I/O to husk's control port,
//! MMIO and HLT come back as the exits the VMM dispatches on.
//!
//! It boots no kernel, so any usable /dev/kvm would do (PVM included); it
//! runs with the boot tests, where they run (the test bed on a host
//! without such a KVM).

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};
use libtest_mimic::Failed;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

const CODE_ADDR: u64 = 0x1000;

pub fn guest_code_reaches_the_control_port_mmio_and_halts() -> Result<(), Failed> {
    let kvm = Kvm::new().unwrap_or_else(|e| {
        panic!("no usable /dev/kvm on this machine ({e}); the KVM smoke test needs one")
    });
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let region = mem.iter().next().unwrap();
    let host = region.get_host_address(MemoryRegionAddress(0)).unwrap();
    let slot = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: region.len(),
        userspace_addr: host as u64,
    };
    // SAFETY: `host` maps `region.len()` bytes owned by `mem`, which lives
    // until the end of this test, after the VM is last used.
    unsafe { vm.set_user_memory_region(slot) }.expect("KVM_SET_USER_MEMORY_REGION");

    // Real mode, at 0x1000:
    //   mov dx, 0x600        ba 00 06
    //   mov eax, 0x0203      66 b8 03 02 00 00   (status 3, as husk's init reports)
    //   out dx, eax          66 ef
    //   mov byte [0x8000], 0x2a   c6 06 00 80 2a  (DS base 0x10000: guest
    //                                             address 0x18000, past RAM,
    //                                             so an MMIO write)
    //   hlt                  f4
    let code: &[u8] = &[
        0xba, 0x00, 0x06, 0x66, 0xb8, 0x03, 0x02, 0x00, 0x00, 0x66, 0xef, 0xc6, 0x06, 0x00, 0x80,
        0x2a, 0xf4,
    ];
    mem.write_slice(code, GuestAddress(CODE_ADDR)).unwrap();

    let mut vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = 0x10000;
    sregs.ds.selector = 0x1000;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = CODE_ADDR;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();

    let mut seen = Vec::new();
    for _ in 0..10 {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(port, data) => seen.push(format!("out {port:#x} {data:02x?}")),
            VcpuExit::MmioWrite(addr, data) => seen.push(format!("mmio {addr:#x} {data:02x?}")),
            VcpuExit::Hlt => {
                seen.push("hlt".into());
                break;
            }
            other => panic!("unexpected exit {other:?} after {seen:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            "out 0x600 [03, 02, 00, 00]".to_string(),
            "mmio 0x18000 [2a]".to_string(),
            "hlt".to_string()
        ]
    );
    // The same bytes, parsed as the VMM does, give status 3.
    let report = vmm::control::GuestReport::new(std::time::Instant::now());
    report.guest_write(&[0x03, 0x02, 0x00, 0x00]);
    assert_eq!(report.status(), Some(3));
    Ok(())
}
