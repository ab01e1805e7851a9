/* The tiny guest for ci/bench-start: a PVH ELF whose first instructions
 * report "command exited, status 0" on husk's control port (0x600: husk
 * records when), then leave by triple fault as Linux does with reboot=t,
 * which ends husk and QEMU alike. Built with -DSPIN it spins instead, for
 * hosts whose KVM (PVM) cannot emulate the triple fault; with -DSNAPSHOT
 * it first marks a snapshot point (ci/bench-snapshot --tiny). */
        .section .note.pvh, "a"
        .align 4
        .long 4                 /* name size */
        .long 4                 /* desc size */
        .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz "Xen"
        .long _start
        .text
        .code32
        .globl _start
_start:
        mov $0x600, %dx
#ifdef SNAPSHOT
        /* init's snapshot point: a VMM asked to snapshot saves the VM here */
        mov $0x103, %eax
        out %eax, (%dx)
#endif
        mov $0x200, %eax
        out %eax, (%dx)
#ifdef SPIN
1:      jmp 1b
#else
        lidt null_idt
        int3
        .align 8
null_idt:
        .word 0
        .long 0
#endif
