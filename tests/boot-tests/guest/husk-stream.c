/* husk-stream: the guest's side of the vsock boot tests and the network
 * bench (busybox has no AF_VSOCK client and no throughput tool). Test data
 * is a stream of xorshift64 words from a seed, compared by length and
 * FNV-1a 64 digest, which the host side computes the same way. FAMILY is
 * vsock or tcp; servers fork one child per stream.
 *
 *   husk-stream sink FAMILY PORT    read each stream to its end, answer
 *                                   "LEN DIGEST\n"
 *   husk-stream echo FAMILY PORT    echo each stream back
 *   husk-stream source FAMILY PORT  read a decimal size and a newline,
 *                                   send that many zero bytes, close
 *   husk-stream send PORT SIZE SEED connect to the host's vsock PORT, send
 *                                   SIZE bytes from SEED, shut down
 *                                   sending, print what the host answers,
 *                                   then "sent LEN DIGEST"
 *   husk-stream bench ADDR SIZE PINGS RUNS
 *                                   against another guest's TCP sink,
 *                                   source and echo (ports 5000-5002): a
 *                                   warm-up, then RUNS runs of SIZE bytes
 *                                   to it, SIZE bytes from it and PINGS
 *                                   one-byte round trips, each printed as
 *                                   "bench RUN TO_MBPS FROM_MBPS RTT_US"
 *                                   (the round trips' median)
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

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

enum mode { SINK, ECHO, SOURCE };

static void source(int conn) {
    char line[32];
    size_t got = 0;
    while (got < sizeof line - 1) {
        ssize_t n = read(conn, line + got, 1);
        if (n <= 0) return;
        if (line[got] == '\n') break;
        got++;
    }
    line[got] = 0;
    uint64_t left = strtoull(line, NULL, 10);
    memset(buf, 0, sizeof buf);
    while (left > 0) {
        size_t n = left < sizeof buf ? (size_t)left : sizeof buf;
        if (write_all(conn, buf, n) != 0) return;
        left -= n;
    }
}

static void serve(int conn, enum mode mode) {
    uint64_t h = FNV_START, len = 0;
    if (mode == SOURCE) {
        source(conn);
        close(conn);
        return;
    }
    for (;;) {
        ssize_t n = read(conn, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (mode == ECHO) {
            if (write_all(conn, buf, (size_t)n) != 0) break;
        } else {
            h = fnv(h, buf, (size_t)n);
            len += (uint64_t)n;
        }
    }
    if (mode == SINK) {
        char line[64];
        int l = snprintf(line, sizeof line, "%llu %016llx\n",
                         (unsigned long long)len, (unsigned long long)h);
        write_all(conn, (unsigned char *)line, (size_t)l);
    }
    close(conn);
}

static int listen_on(const char *family, unsigned port) {
    int s, one = 1;
    if (strcmp(family, "tcp") == 0) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
        s = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0) s = -1;
    } else {
        struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
        s = socket(AF_VSOCK, SOCK_STREAM, 0);
        if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0) s = -1;
    }
    if (s < 0 || listen(s, 128) != 0) {
        perror("husk-stream: listen");
        exit(1);
    }
    return s;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* A TCP connection to ADDR:PORT; the peer may still be starting. */
static int dial(const char *addr, unsigned port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    int one = 1;
    if (inet_pton(AF_INET, addr, &a.sin_addr) != 1) {
        fprintf(stderr, "husk-stream: %s is no IPv4 address\n", addr);
        exit(2);
    }
    for (int tries = 0; tries < 300; tries++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (s >= 0 && connect(s, (struct sockaddr *)&a, sizeof a) == 0) {
            setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            return s;
        }
        if (s >= 0) close(s);
        usleep(100000);
    }
    perror("husk-stream: connect");
    exit(1);
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int bench(const char *addr, uint64_t size, int pings, int runs) {
    static double rtt[10000];
    if (pings < 1 || pings > 10000) pings = 200;
    memset(buf, 0, sizeof buf);
    for (int run = 0; run <= runs; run++) {
        /* To the sink, until it answers its count. */
        double start = now();
        int s = dial(addr, 5000);
        uint64_t left = size;
        while (left > 0) {
            size_t n = left < sizeof buf ? (size_t)left : sizeof buf;
            if (write_all(s, buf, n) != 0) {
                perror("husk-stream: to the sink");
                return 1;
            }
            left -= n;
        }
        shutdown(s, SHUT_WR);
        char answer[64] = {0};
        size_t got = 0;
        for (ssize_t n; got < sizeof answer - 1 && (n = read(s, answer + got, sizeof answer - 1 - got)) > 0;)
            got += (size_t)n;
        double to = now() - start;
        close(s);
        if (strtoull(answer, NULL, 10) != size) {
            fprintf(stderr, "husk-stream: the sink counted %s\n", answer);
            return 1;
        }
        /* From the source, until its end. */
        start = now();
        s = dial(addr, 5001);
        char line[32];
        int l = snprintf(line, sizeof line, "%llu\n", (unsigned long long)size);
        write_all(s, (unsigned char *)line, (size_t)l);
        uint64_t from_bytes = 0;
        for (ssize_t n; (n = read(s, buf, sizeof buf)) > 0;) from_bytes += (uint64_t)n;
        double from = now() - start;
        close(s);
        if (from_bytes != size) {
            fprintf(stderr, "husk-stream: the source sent %llu bytes\n", (unsigned long long)from_bytes);
            return 1;
        }
        /* Round trips. */
        s = dial(addr, 5002);
        unsigned char b = 7;
        for (int i = 0; i < pings; i++) {
            double t = now();
            if (write_all(s, &b, 1) != 0 || read(s, &b, 1) != 1) {
                perror("husk-stream: round trip");
                return 1;
            }
            rtt[i] = now() - t;
        }
        close(s);
        qsort(rtt, (size_t)pings, sizeof rtt[0], by_value);
        if (run > 0)
            printf("bench %d %.1f %.1f %.0f\n", run, (double)size / 1e6 / to,
                   (double)size / 1e6 / from, rtt[pings / 2] * 1e6);
        fflush(stdout);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4) {
        enum mode mode;
        if (strcmp(argv[1], "sink") == 0) mode = SINK;
        else if (strcmp(argv[1], "echo") == 0) mode = ECHO;
        else if (strcmp(argv[1], "source") == 0) mode = SOURCE;
        else goto usage;
        int s = listen_on(argv[2], (unsigned)atoi(argv[3]));
        int tcp = strcmp(argv[2], "tcp") == 0, one = 1;
        signal(SIGCHLD, SIG_IGN);
        for (;;) {
            int c = accept(s, NULL, NULL);
            if (c < 0) {
                if (errno == EINTR) continue;
                perror("husk-stream: accept");
                return 1;
            }
            if (tcp) setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            if (fork() == 0) {
                close(s);
                serve(c, mode);
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
            perror("husk-stream: connect");
            return 1;
        }
        uint64_t h = FNV_START, sent = 0;
        while (sent < size) {
            size_t n = sizeof buf;
            if (size - sent < n) n = (size_t)(size - sent);
            fill(&state, buf, (n + 7) & ~(size_t)7);
            h = fnv(h, buf, n);
            if (write_all(s, buf, n) != 0) {
                perror("husk-stream: write");
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
    if (argc == 6 && strcmp(argv[1], "bench") == 0)
        return bench(argv[2], strtoull(argv[3], NULL, 0), atoi(argv[4]), atoi(argv[5]));
usage:
    fprintf(stderr, "usage: husk-stream sink|echo|source vsock|tcp PORT | husk-stream send PORT SIZE SEED"
                    " | husk-stream bench ADDR SIZE PINGS RUNS\n");
    return 2;
}
