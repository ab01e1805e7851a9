/* husk-vsock: the guest's side of the vsock boot tests (busybox has no
 * AF_VSOCK client). Data is a stream of xorshift64 words from a seed, and
 * streams are compared by their length and FNV-1a 64 digest, which the
 * host side of the tests computes the same way.
 *
 *   husk-vsock sink PORT       accept streams on PORT; for each, read to
 *                              the end and answer "LEN DIGEST\n"
 *   husk-vsock echo PORT       accept streams on PORT; echo each back
 *   husk-vsock send PORT SIZE SEED
 *                              connect to the host's PORT, send SIZE bytes
 *                              from SEED, shut down sending, print what
 *                              the host answers, then "sent LEN DIGEST"
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static uint64_t fnv(uint64_t h, const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

#define FNV_START 0xcbf29ce484222325ull

static void fill(uint64_t *state, unsigned char *buf, size_t n) {
    /* n is a multiple of 8 */
    for (size_t i = 0; i < n; i += 8) {
        uint64_t x = *state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *state = x;
        memcpy(buf + i, &x, 8);
    }
}

static int write_all(int fd, const unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static unsigned char buf[1 << 16];

static void serve(int conn, int echo) {
    uint64_t h = FNV_START, len = 0;
    for (;;) {
        ssize_t n = read(conn, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (echo) {
            if (write_all(conn, buf, (size_t)n) != 0) break;
        } else {
            h = fnv(h, buf, (size_t)n);
            len += (uint64_t)n;
        }
    }
    if (!echo) {
        char line[64];
        int l = snprintf(line, sizeof line, "%llu %016llx\n",
                         (unsigned long long)len, (unsigned long long)h);
        write_all(conn, (unsigned char *)line, (size_t)l);
    }
    close(conn);
}

static int listen_on(unsigned port) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 128) != 0) {
        perror("husk-vsock: listen");
        exit(1);
    }
    return s;
}

int main(int argc, char **argv) {
    if (argc >= 3 && (strcmp(argv[1], "sink") == 0 || strcmp(argv[1], "echo") == 0)) {
        int echo = strcmp(argv[1], "echo") == 0;
        int s = listen_on((unsigned)atoi(argv[2]));
        signal(SIGCHLD, SIG_IGN);
        printf("listening %s\n", argv[2]);
        fflush(stdout);
        for (;;) {
            int c = accept(s, NULL, NULL);
            if (c < 0) {
                if (errno == EINTR) continue;
                perror("husk-vsock: accept");
                return 1;
            }
            if (fork() == 0) {
                close(s);
                serve(c, echo);
                _exit(0);
            }
            close(c);
        }
    }
    if (argc == 5 && strcmp(argv[1], "send") == 0) {
        unsigned port = (unsigned)atoi(argv[2]);
        uint64_t size = strtoull(argv[3], NULL, 0), state = strtoull(argv[4], NULL, 0);
        int s = socket(AF_VSOCK, SOCK_STREAM, 0);
        struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = port};
        if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
            perror("husk-vsock: connect");
            return 1;
        }
        uint64_t h = FNV_START, sent = 0;
        while (sent < size) {
            size_t n = sizeof buf;
            if (size - sent < n) n = (size_t)(size - sent);
            fill(&state, buf, (n + 7) & ~(size_t)7);
            h = fnv(h, buf, n);
            if (write_all(s, buf, n) != 0) {
                perror("husk-vsock: write");
                return 1;
            }
            sent += n;
        }
        shutdown(s, SHUT_WR);
        for (;;) {
            ssize_t n = read(s, buf, sizeof buf);
            if (n <= 0) break;
            write_all(1, buf, (size_t)n);
        }
        printf("sent %llu %016llx\n", (unsigned long long)sent, (unsigned long long)h);
        return 0;
    }
    fprintf(stderr, "usage: husk-vsock sink|echo PORT | husk-vsock send PORT SIZE SEED\n");
    return 2;
}
