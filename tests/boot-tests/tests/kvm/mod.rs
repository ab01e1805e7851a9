//! KVM itself, with a few bytes of real-mode guest code and no kernel:
//! the exits the VMM dispatches on, and snapshot and restore of a running
//! guest's state.

use libtest_mimic::Trial;

mod smoke;
mod snapshot;

pub fn trials() -> Vec<Trial> {
    vec![
        boot_tests::trial(
            "kvm_guest_code_reaches_the_control_port_mmio_and_halts",
            smoke::guest_code_reaches_the_control_port_mmio_and_halts,
        ),
        boot_tests::trial(
            "kvm_a_restored_guest_goes_on_where_it_was_saved",
            snapshot::a_restored_guest_goes_on_where_it_was_saved,
        ),
        boot_tests::trial(
            "kvm_a_snapshot_for_another_vm_or_a_damaged_one_is_refused",
            snapshot::a_snapshot_for_another_vm_or_a_damaged_one_is_refused,
        ),
    ]
}
