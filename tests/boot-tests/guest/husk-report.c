/* husk-report STATUS [MARK]: tell husk's VMM the guest's exit status on the
 * control port (see runtime/vmm/src/control.rs), as husk's init will. With
 * "mark", report "init reached" instead. Test guests run it from a busybox
 * init, which cannot do port I/O itself. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>

#define HUSK_CONTROL_PORT 0x600

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: husk-report STATUS | husk-report mark\n");
        return 2;
    }
    if (ioperm(HUSK_CONTROL_PORT, 4, 1) != 0) {
        perror("husk-report: ioperm");
        return 1;
    }
    unsigned value = strcmp(argv[1], "mark") == 0
        ? (1u << 8) | 1u
        : (2u << 8) | ((unsigned)atoi(argv[1]) & 0xffu);
    outl(value, HUSK_CONTROL_PORT);
    return 0;
}
