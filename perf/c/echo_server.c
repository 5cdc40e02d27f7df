/* echo_server: the machine's ceiling for perf/echo.py, a TCP echo server in
 * plain C on epoll: one thread, level-triggered, no library.
 *
 *   echo_server [--port 0] [--host 127.0.0.1] [--cpu N] [--corrupt N]
 *
 * Prints "PORT <n>" on stdout once it listens, then serves until its stdin
 * reaches EOF (or SIGTERM/SIGINT).  Each readiness event reads up to 256 KiB
 * into one buffer shared by every connection and writes it straight back;
 * only what the socket does not take is copied into the connection's own
 * buffer, and the connection then waits for EPOLLOUT instead of EPOLLIN
 * until it is written (the same backpressure as a transport that pauses
 * reading).  The shared buffer is what makes this a ceiling: a buffer per
 * connection (10 x 256 KiB) falls out of the cache, and the kernel's copies
 * in and out of it cost more than a Python server's, whose allocator hands
 * the same hot block back on every read.  On EOF from the client it closes
 * after the last byte is out.
 *
 * --corrupt N flips one bit of the echo after every N bytes echoed: a
 * broken server, for testing that the load generator notices.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE (256 * 1024)

struct conn {
    int fd;
    size_t pending;      /* bytes of buf not yet written back */
    size_t offset;
    unsigned char *buf;  /* BUF_SIZE, allocated on the first partial write */
};

static int epfd;
static volatile sig_atomic_t stopping;
static long long corrupt_every, since_corrupt;
static unsigned char rbuf[BUF_SIZE]; /* every connection reads here */

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

static void close_conn(struct conn *c)
{
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->buf);
    free(c);
}

static void set_events(struct conn *c, unsigned events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Send data[0..len); the number of bytes the socket took (len when all),
 * or -1 when the connection is gone (and freed). */
static ssize_t send_all(struct conn *c, const unsigned char *data, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = send(c->fd, data + done, len - done, MSG_NOSIGNAL);
        if (n > 0) {
            done += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            close_conn(c);
            return -1;
        }
    }
    return (ssize_t)done;
}

static void on_readable(struct conn *c)
{
    ssize_t n = recv(c->fd, rbuf, BUF_SIZE, 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    if (n <= 0) {
        if (n == 0) {
            /* orderly: nothing is pending here (we read only when flushed) */
            shutdown(c->fd, SHUT_WR);
        }
        close_conn(c);
        return;
    }
    if (corrupt_every > 0) {
        since_corrupt += n;
        if (since_corrupt >= corrupt_every) {
            since_corrupt = 0;
            rbuf[n / 2] ^= 0x10;
        }
    }
    ssize_t sent = send_all(c, rbuf, (size_t)n);
    if (sent < 0 || sent == n)
        return;
    /* The socket is full: keep the rest, stop reading until it is out. */
    if (!c->buf && !(c->buf = malloc(BUF_SIZE))) {
        close_conn(c);
        return;
    }
    c->offset = 0;
    c->pending = (size_t)(n - sent);
    memcpy(c->buf, rbuf + sent, c->pending);
    set_events(c, EPOLLOUT);
}

static void on_writable(struct conn *c)
{
    ssize_t sent = send_all(c, c->buf + c->offset, c->pending);
    if (sent < 0)
        return;
    c->offset += (size_t)sent;
    c->pending -= (size_t)sent;
    if (c->pending == 0)
        set_events(c, EPOLLIN);
}

static void usage(void)
{
    fprintf(stderr, "usage: echo_server [--port P] [--host ADDR] [--cpu N] "
                    "[--corrupt BYTES]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 0, cpu = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "--host")) host = v;
        else if (!strcmp(a, "--cpu")) cpu = atoi(v);
        else if (!strcmp(a, "--corrupt")) corrupt_every = atoll(v);
        else usage();
    }
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0) {
            perror("echo_server: sched_setaffinity");
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1 ||
        bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 ||
        listen(lfd, 128) < 0) {
        perror("echo_server: listen");
        return 1;
    }
    socklen_t len = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &len);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    /* data.ptr NULL: the listening socket; &lfd: stdin */
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    ev.data.ptr = &lfd;
    int watch_stdin = epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev) == 0;
    (void)watch_stdin; /* stdin a regular file or /dev/null: signals only */

    printf("PORT %d\n", ntohs(addr.sin_port));
    fflush(stdout);

    struct epoll_event events[64];
    while (!stopping) {
        int n = epoll_wait(epfd, events, 64, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("echo_server: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            void *p = events[i].data.ptr;
            if (p == &lfd) {
                char b[256];
                ssize_t r = read(0, b, sizeof b);
                if (r <= 0 && !(r < 0 && errno == EINTR))
                    stopping = 1;
            } else if (p == NULL) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL,
                                     SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0)
                        break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *c = calloc(1, sizeof *c);
                    if (c == NULL) {
                        close(fd);
                        continue;
                    }
                    c->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &cev);
                }
            } else {
                struct conn *c = p;
                /* While data is pending only EPOLLOUT is asked for;
                 * EPOLLERR/EPOLLHUP then go to the write too, which meets
                 * the error (reading would reorder the echo). */
                if (c->pending || (events[i].events & EPOLLOUT))
                    on_writable(c);
                else if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                    on_readable(c);
            }
        }
    }
    close(lfd);
    return 0;
}
