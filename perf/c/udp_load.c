/*
 * UDP echo load generator for perf/udp.py.
 *
 *   udp_load HOST PORT SIZE SOCKETS WINDOW WARMUP_S DURATION_S SERVER_PID
 *
 * SOCKETS connected UDP sockets, each keeping WINDOW datagrams of SIZE
 * bytes in flight: every echo received is checked (length, and the pattern
 * after the 8-byte sequence number) and answered with the next datagram.
 * A socket that hears nothing for 20 ms refills its window (loopback drops
 * when a buffer overflows), so losses cannot stall the run.  After WARMUP_S
 * seconds it counts for DURATION_S seconds, reading the server's CPU time
 * (user + system, all threads: /proc/PID/task/* /schedstat) at both ends.
 *
 * Prints one JSON line: {"status": "ok", "echoed": N, "sent": N, "bad": N,
 * "wall_s": x, "server_cpu_s": x} or {"status": "error", "error": "..."}.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SOCKS 64

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double server_cpu(int pid)
{
    char path[256];
    snprintf(path, sizeof(path), "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    double total = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "/proc/%d/task/%s/schedstat", pid,
                 e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        unsigned long long ns;
        if (fscanf(f, "%llu", &ns) == 1)
            total += (double)ns / 1e9;
        fclose(f);
    }
    closedir(d);
    return total;
}

static void fail(const char *what)
{
    printf("{\"status\": \"error\", \"error\": \"%s: %s\"}\n", what,
           strerror(errno));
    exit(1);
}

static unsigned char pattern(uint64_t seq, size_t i)
{
    return (unsigned char)((seq * 31 + i * 7) & 0xff);
}

static void fill(unsigned char *buf, size_t size, uint64_t seq)
{
    memcpy(buf, &seq, sizeof(seq) < size ? sizeof(seq) : size);
    for (size_t i = sizeof(seq); i < size; i++)
        buf[i] = pattern(seq, i);
}

static int check(const unsigned char *buf, size_t n, size_t size)
{
    if (n != size)
        return 0;
    uint64_t seq = 0;
    if (size < sizeof(seq))
        return 1;
    memcpy(&seq, buf, sizeof(seq));
    for (size_t i = sizeof(seq); i < size; i++)
        if (buf[i] != pattern(seq, i))
            return 0;
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 9) {
        fprintf(stderr, "usage: udp_load HOST PORT SIZE SOCKETS WINDOW "
                        "WARMUP_S DURATION_S SERVER_PID\n");
        return 2;
    }
    const char *host = argv[1];
    const char *port = argv[2];
    size_t size = (size_t)atol(argv[3]);
    int nsocks = atoi(argv[4]);
    int window = atoi(argv[5]);
    double warmup = atof(argv[6]), duration = atof(argv[7]);
    int pid = atoi(argv[8]);
    if (nsocks < 1 || nsocks > MAX_SOCKS || window < 1 || size < 1 ||
        size > 65000) {
        fprintf(stderr, "udp_load: bad arguments\n");
        return 2;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_DGRAM}, *ai;
    if (getaddrinfo(host, port, &hints, &ai) != 0) {
        errno = EINVAL;
        fail("getaddrinfo");
    }
    int ep = epoll_create1(0);
    int fds[MAX_SOCKS];
    double last_rx[MAX_SOCKS];
    uint64_t seq = 1;
    unsigned char *buf = malloc(size > 65536 ? size : 65536);
    unsigned char *out = malloc(size);
    for (int i = 0; i < nsocks; i++) {
        fds[i] = socket(ai->ai_family, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (fds[i] < 0)
            fail("socket");
        if (connect(fds[i], ai->ai_addr, ai->ai_addrlen) < 0)
            fail("connect");
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
        last_rx[i] = now();
    }
    freeaddrinfo(ai);

    uint64_t echoed = 0, sent = 0, bad = 0;
    double t0 = now(), start = t0 + warmup, end = start + duration;
    double cpu0 = -1, cpu1 = -1, wall0 = 0, wall1 = 0;
    int counting = 0;
    for (int i = 0; i < nsocks; i++)
        for (int w = 0; w < window; w++) {
            fill(out, size, seq++);
            if (send(fds[i], out, size, 0) == (ssize_t)size)
                sent++;
        }
    struct epoll_event evs[MAX_SOCKS];
    for (;;) {
        double t = now();
        if (!counting && t >= start) {
            counting = 1;
            echoed = sent = bad = 0;
            cpu0 = server_cpu(pid);
            wall0 = t;
        }
        if (t >= end) {
            cpu1 = server_cpu(pid);
            wall1 = t;
            break;
        }
        int n = epoll_wait(ep, evs, MAX_SOCKS, 5);
        if (n < 0 && errno != EINTR)
            fail("epoll_wait");
        for (int k = 0; k < n; k++) {
            int i = (int)evs[k].data.u32;
            for (;;) {
                ssize_t r = recv(fds[i], buf, 65536, 0);
                if (r < 0) {
                    if (errno == ECONNREFUSED) {
                        errno = ECONNREFUSED;
                        fail("recv (server gone)");
                    }
                    break;
                }
                last_rx[i] = now();
                if (check(buf, (size_t)r, size))
                    echoed++;
                else
                    bad++;
                fill(out, size, seq++);
                if (send(fds[i], out, size, 0) == (ssize_t)size)
                    sent++;
            }
        }
        t = now();
        for (int i = 0; i < nsocks; i++) {
            if (t - last_rx[i] > 0.02) { /* lost datagrams: refill */
                for (int w = 0; w < window; w++) {
                    fill(out, size, seq++);
                    if (send(fds[i], out, size, 0) == (ssize_t)size)
                        sent++;
                }
                last_rx[i] = t;
            }
        }
    }
    printf("{\"status\": \"ok\", \"echoed\": %llu, \"sent\": %llu, "
           "\"bad\": %llu, \"wall_s\": %.6f, \"server_cpu_s\": %.6f}\n",
           (unsigned long long)echoed, (unsigned long long)sent,
           (unsigned long long)bad, wall1 - wall0,
           (cpu0 >= 0 && cpu1 >= 0) ? cpu1 - cpu0 : -1.0);
    return 0;
}
