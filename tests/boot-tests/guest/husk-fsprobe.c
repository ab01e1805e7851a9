/* husk-fsprobe: the guest's side of the shared-folder boot tests, for
 * what busybox has no applet for (extended attributes, shared mmap writes,
 * fsync). Each prints one line the host side checks, or an error naming
 * the call that failed, and exits non-zero on failure.
 *
 *   husk-fsprobe mmap FILE TEXT          write TEXT at offset 4096 of FILE
 *                                        through a shared mapping, msync
 *   husk-fsprobe fsync FILE TEXT         write TEXT to FILE and fsync it
 *   husk-fsprobe setxattr FILE NAME VAL  set an extended attribute
 *   husk-fsprobe getxattr FILE NAME      print an extended attribute
 *   husk-fsprobe now                     print CLOCK_MONOTONIC in seconds
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

static int fail(const char *what) {
    perror(what);
    return 1;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "now") == 0) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        printf("%ld.%09ld\n", (long)t.tv_sec, t.tv_nsec);
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "mmap") == 0) {
        int fd = open(argv[2], O_RDWR | O_CREAT, 0644);
        if (fd < 0) return fail("open");
        if (ftruncate(fd, 8192) != 0) return fail("ftruncate");
        char *p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) return fail("mmap");
        memcpy(p + 4096, argv[3], strlen(argv[3]));
        if (msync(p, 8192, MS_SYNC) != 0) return fail("msync");
        munmap(p, 8192);
        close(fd);
        printf("mmap ok\n");
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "fsync") == 0) {
        int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) return fail("open");
        size_t n = strlen(argv[3]);
        if (write(fd, argv[3], n) != (ssize_t)n) return fail("write");
        if (fsync(fd) != 0) return fail("fsync");
        close(fd);
        printf("fsync ok\n");
        return 0;
    }
    if (argc == 5 && strcmp(argv[1], "setxattr") == 0) {
        if (setxattr(argv[2], argv[3], argv[4], strlen(argv[4]), 0) != 0)
            return fail("setxattr");
        printf("setxattr ok\n");
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "getxattr") == 0) {
        char value[256];
        ssize_t n = getxattr(argv[2], argv[3], value, sizeof value - 1);
        if (n < 0) return fail("getxattr");
        value[n] = 0;
        printf("xattr %s=%s\n", argv[3], value);
        return 0;
    }
    fprintf(stderr, "usage: husk-fsprobe mmap|fsync|setxattr|getxattr ...\n");
    return 2;
}
