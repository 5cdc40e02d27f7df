/* echo_load: a request/response load generator for TCP echo servers.
 *
 *   echo_load --port P [--host 127.0.0.1] [--conns 10] [--size 1024]
 *             [--warmup 0.5] [--duration 2] | [--requests N]
 *             [--server-pid PID] [--cpu N] [--timeout 10]
 *
 * One thread, epoll, level-triggered.  Each of the connections sends one
 * message, waits until the whole message has come back, checks every byte,
 * and only then sends the next one.  With --duration, requests completed in
 * the warm-up are not counted; the measured window starts when the warm-up
 * ends and stops `duration` seconds later; then every connection finishes
 * the request it has in flight and closes: nothing is left unread, so the
 * server sees an orderly EOF, never a reset.  With --requests,
 * each connection does N requests and everything is counted (a probe).
 *
 * The server's CPU time over the window is read from /proc/PID/task/
 * (star)/schedstat, the nanoseconds each thread ran (user + system), at the
 * two ends of the window: the load generator knows them exactly, and the
 * figure holds whether the server or the generator is the bottleneck.
 * Without schedstat it falls back to utime + stime of /proc/PID/stat (clock
 * ticks, 10 ms); "server_cpu_clock" says which.
 *
 * Every message is a window into one fixed byte pattern at an offset that
 * changes with the request and the connection, so a byte that comes back
 * wrong, late (from an earlier request), twice or not at all is a mismatch:
 * the connection is dropped and the run reported as an error.
 *
 * Output: one JSON object on stdout.  Exit status 0 when the run was clean,
 * 1 on a mismatch or a network error, 2 on bad usage.
 */

#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Offsets into the pattern: fewer than its 256-byte period, so that two
 * different offsets disagree on every byte of the low term. */
#define PATTERN_OFFSETS 251
#define READ_CHUNK (256 * 1024)

/* -- latency histogram: log2 octaves of 64 linear sub-buckets (~1.6%) -- */

#define SUB_BITS 6
#define SUB_COUNT (1 << SUB_BITS)
#define HIST_SIZE ((64 - SUB_BITS + 1) * SUB_COUNT)

struct histogram {
    uint64_t count[HIST_SIZE];
    uint64_t n, max;
    double sum;
};

static int hist_index(uint64_t v)
{
    if (v < SUB_COUNT)
        return (int)v;
    int msb = 63 - __builtin_clzll(v);
    uint64_t mantissa = v >> (msb - SUB_BITS); /* in [64, 128) */
    return (msb - SUB_BITS + 1) * SUB_COUNT + (int)(mantissa - SUB_COUNT);
}

/* The middle of bucket i. */
static double hist_value(int i)
{
    if (i < SUB_COUNT)
        return i;
    int msb = i / SUB_COUNT + SUB_BITS - 1;
    uint64_t mantissa = (uint64_t)(i % SUB_COUNT) + SUB_COUNT;
    uint64_t width = 1ull << (msb - SUB_BITS);
    return (double)(mantissa << (msb - SUB_BITS)) + (double)(width - 1) / 2.0;
}

static void hist_record(struct histogram *h, uint64_t v)
{
    h->count[hist_index(v)]++;
    h->n++;
    h->sum += (double)v;
    if (v > h->max)
        h->max = v;
}

static double hist_quantile(const struct histogram *h, double q)
{
    if (h->n == 0)
        return 0.0;
    uint64_t rank = (uint64_t)(q * (double)h->n);
    if (rank >= h->n)
        rank = h->n - 1;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_SIZE; i++) {
        seen += h->count[i];
        if (seen > rank) {
            double v = hist_value(i);
            return v > (double)h->max ? (double)h->max : v;
        }
    }
    return (double)h->max;
}

/* -- clocks ------------------------------------------------------------- */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t own_cpu_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ((int64_t)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000 +
           ((int64_t)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000;
}

/* CPU time of process `pid` in ns, or -1; *clock names the source. */
static int64_t server_cpu_ns(int pid, const char **clock)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *dir = opendir(path);
    if (dir != NULL) {
        int64_t total = 0;
        int found = 0;
        struct dirent *de;
        while ((de = readdir(dir)) != NULL) {
            if (de->d_name[0] == '.')
                continue;
            char file[300];
            snprintf(file, sizeof file, "/proc/%d/task/%s/schedstat", pid,
                     de->d_name);
            FILE *f = fopen(file, "r");
            if (f == NULL)
                continue; /* a thread that just exited */
            long long ns;
            if (fscanf(f, "%lld", &ns) == 1) {
                total += ns;
                found = 1;
            }
            fclose(f);
        }
        closedir(dir);
        if (found) {
            *clock = "schedstat";
            return total;
        }
    }
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    char buf[1024];
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    unsigned long long utime, stime;
    if (p == NULL ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
               &utime, &stime) != 2)
        return -1;
    *clock = "stat_ticks";
    return (int64_t)((utime + stime) * (1000000000.0 / sysconf(_SC_CLK_TCK)));
}

/* Minor page faults of process `pid` so far, or -1: a server that maps and
 * unmaps a buffer per read (malloc above glibc's mmap threshold) shows one
 * or more per request. */
static long long server_minflt(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = '\0';
    char *p = strrchr(buf, ')');
    unsigned long long minflt;
    if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %llu",
                            &minflt) != 1)
        return -1;
    return (long long)minflt;
}

/* -- the pattern -------------------------------------------------------- */

static unsigned char *pattern;

static void make_pattern(size_t size)
{
    pattern = malloc(size + PATTERN_OFFSETS);
    if (pattern == NULL) {
        perror("echo_load: malloc");
        exit(2);
    }
    for (size_t i = 0; i < size + PATTERN_OFFSETS; i++)
        pattern[i] = (unsigned char)(i * 131 + (i >> 8) * 29 + 7);
}

/* -- connections -------------------------------------------------------- */

enum state { ACTIVE, DONE };

struct conn {
    int fd;
    int id;
    enum state state;
    uint64_t seq;            /* requests started on this connection */
    const unsigned char *msg; /* the message in flight */
    size_t sent, received;
    int64_t started;
    int want_out;
};

static size_t size = 1024;
static int epfd;
static struct conn *conns;
static int n_conns = 10;
static int open_conns;

static uint64_t counted;       /* requests completed inside the window */
static uint64_t total_done;    /* all completed requests */
static uint64_t mismatches;    /* requests with a wrong byte */
static char first_error[256];
static struct histogram hist;

static void set_error(const char *fmt, ...)
{
    if (first_error[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(first_error, sizeof first_error, fmt, ap);
    va_end(ap);
}

static void watch(struct conn *c, int out)
{
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0),
                             .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
        perror("echo_load: epoll_ctl");
        exit(1);
    }
    c->want_out = out;
}

static void drop(struct conn *c)
{
    if (c->state == DONE)
        return;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->state = DONE;
    open_conns--;
}

static void flush(struct conn *c)
{
    while (c->sent < size) {
        ssize_t n = send(c->fd, c->msg + c->sent, size - c->sent, MSG_NOSIGNAL);
        if (n > 0) {
            c->sent += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->want_out)
                watch(c, 1);
            return;
        }
        set_error("send on connection %d: %s", c->id, strerror(errno));
        drop(c);
        return;
    }
    if (c->want_out)
        watch(c, 0);
}

static void start_request(struct conn *c, int64_t now)
{
    size_t offset = (size_t)((c->seq * 37 + (uint64_t)c->id * 101) %
                             PATTERN_OFFSETS);
    c->seq++;
    c->msg = pattern + offset;
    c->sent = c->received = 0;
    c->started = now;
    flush(c);
}

/* Returns 1 when a request completed. */
static int on_readable(struct conn *c, unsigned char *buf, int counting,
                       int more, int64_t *now)
{
    for (;;) {
        size_t want = READ_CHUNK;
        if (size - c->received < want)
            want = size - c->received;
        ssize_t n = recv(c->fd, buf, want, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (n < 0) {
            set_error("recv on connection %d: %s", c->id, strerror(errno));
            drop(c);
            return 0;
        }
        if (n == 0) {
            set_error("connection %d: the server closed it mid-run "
                      "(%zu of %zu bytes echoed)", c->id, c->received, size);
            drop(c);
            return 0;
        }
        if (c->received + (size_t)n > c->sent ||
            memcmp(buf, c->msg + c->received, (size_t)n) != 0) {
            mismatches++;
            size_t at = 0;
            while (at < (size_t)n && buf[at] == c->msg[c->received + at])
                at++;
            set_error("connection %d, request %llu: byte %zu of the echo is "
                      "wrong", c->id, (unsigned long long)c->seq,
                      c->received + at);
            drop(c);
            return 0;
        }
        c->received += (size_t)n;
        if (c->received == size) {
            *now = now_ns();
            total_done++;
            if (counting) {
                counted++;
                hist_record(&hist, (uint64_t)(*now - c->started));
            }
            if (more)
                start_request(c, *now);
            else
                drop(c); /* nothing unread: a FIN, not a reset */
            return 1;
        }
    }
}

static int connect_one(const char *host, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        errno = EINVAL;
        close(fd);
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: echo_load --port P [--host ADDR] [--conns N] [--size BYTES]\n"
            "                 [--warmup S] [--duration S | --requests N]\n"
            "                 [--server-pid PID] [--cpu N] [--timeout S]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = -1, server_pid = 0, cpu = -1;
    double warmup = 0.5, duration = 2.0, timeout = 10.0;
    long long requests = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "--host")) host = v;
        else if (!strcmp(a, "--conns")) n_conns = atoi(v);
        else if (!strcmp(a, "--size")) size = (size_t)atoll(v);
        else if (!strcmp(a, "--warmup")) warmup = atof(v);
        else if (!strcmp(a, "--duration")) duration = atof(v);
        else if (!strcmp(a, "--requests")) requests = atoll(v);
        else if (!strcmp(a, "--server-pid")) server_pid = atoi(v);
        else if (!strcmp(a, "--cpu")) cpu = atoi(v);
        else if (!strcmp(a, "--timeout")) timeout = atof(v);
        else usage();
    }
    if (port <= 0 || port > 65535 || n_conns < 1 || size < 1 || duration <= 0 ||
        warmup < 0 || requests < 0 || timeout <= 0)
        usage();
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0) {
            perror("echo_load: sched_setaffinity");
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    make_pattern(size);
    unsigned char *buf = malloc(READ_CHUNK);
    conns = calloc((size_t)n_conns, sizeof *conns);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (buf == NULL || conns == NULL || epfd < 0) {
        perror("echo_load: set-up");
        return 1;
    }

    int64_t t_begin = now_ns();
    for (int i = 0; i < n_conns; i++) {
        struct conn *c = &conns[i];
        c->id = i;
        c->fd = connect_one(host, port);
        if (c->fd < 0) {
            printf("{\"status\": \"error\", \"error\": \"connect to %s:%d: %s\"}\n",
                   host, port, strerror(errno));
            return 1;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
        c->state = ACTIVE;
        open_conns++;
    }

    /* Phases: warm-up (not counted), window (counted), drain. */
    int64_t t_start = now_ns();
    int64_t t_window = requests ? t_start : t_start + (int64_t)(warmup * 1e9);
    int64_t t_end = requests ? INT64_MAX : t_window + (int64_t)(duration * 1e9);
    int counting = requests ? 1 : 0, in_window = requests ? 1 : 0;
    const char *clock = "none";
    int64_t srv0 = 0, srv1 = 0, own0 = 0, own1 = 0, w0 = t_start, w1 = 0;
    long long flt0 = -1, flt1 = -1;
    if (requests && server_pid) {
        srv0 = server_cpu_ns(server_pid, &clock);
        flt0 = server_minflt(server_pid);
    }
    own0 = own_cpu_ns();

    for (int i = 0; i < n_conns; i++)
        start_request(&conns[i], now_ns());

    int64_t last_progress = now_ns();
    int64_t timeout_ns = (int64_t)(timeout * 1e9);
    struct epoll_event events[64];
    int draining = 0;
    while (open_conns > 0) {
        int64_t now = now_ns();
        if (!in_window && !draining && now >= t_window) {
            if (server_pid) {
                srv0 = server_cpu_ns(server_pid, &clock);
                flt0 = server_minflt(server_pid);
            }
            own0 = own_cpu_ns();
            w0 = now_ns();
            in_window = counting = 1;
        }
        if (in_window && !draining && now >= t_end) {
            w1 = now_ns();
            if (server_pid) {
                srv1 = server_cpu_ns(server_pid, &clock);
                flt1 = server_minflt(server_pid);
            }
            own1 = own_cpu_ns();
            counting = 0;
            draining = 1;
        }
        if (now - last_progress > timeout_ns) {
            set_error("no progress for %.1f s (%d connections open)", timeout,
                      open_conns);
            break;
        }
        int64_t next = last_progress + timeout_ns;
        if (!in_window && t_window < next)
            next = t_window;
        else if (in_window && !draining && t_end < next)
            next = t_end;
        int ms = (int)((next - now) / 1000000) + 1;
        int n = epoll_wait(epfd, events, 64, ms);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            perror("echo_load: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c->state == DONE)
                continue;
            if (events[i].events & EPOLLOUT && c->state == ACTIVE)
                flush(c);
            if (c->state == DONE)
                continue;
            if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                int more = !draining && (!requests || (long long)c->seq < requests);
                int64_t t = now;
                on_readable(c, buf, counting, more, &t);
                last_progress = now_ns();
            }
        }
    }
    if (w1 == 0) { /* --requests, or every connection dropped early */
        w1 = now_ns();
        if (server_pid) {
            srv1 = server_cpu_ns(server_pid, &clock);
            flt1 = server_minflt(server_pid);
        }
        own1 = own_cpu_ns();
    }
    for (int i = 0; i < n_conns; i++)
        drop(&conns[i]);

    if (mismatches && !first_error[0])
        set_error("%llu mismatched echoes", (unsigned long long)mismatches);
    double window = w1 > w0 ? (double)(w1 - w0) / 1e9 : 0.0;
    printf("{\"status\": \"%s\"", first_error[0] ? "error" : "ok");
    if (first_error[0]) {
        printf(", \"error\": \"");
        for (const char *p = first_error; *p; p++)
            if (*p != '"' && *p != '\\')
                putchar(*p);
        printf("\"");
    }
    printf(", \"conns\": %d, \"size\": %zu, \"requests\": %llu, "
           "\"all_requests\": %llu, \"mismatches\": %llu, \"seconds\": %.6f, "
           "\"rps\": %.1f",
           n_conns, size, (unsigned long long)counted,
           (unsigned long long)total_done, (unsigned long long)mismatches,
           window, window > 0 ? (double)counted / window : 0.0);
    printf(", \"p50_us\": %.2f, \"p90_us\": %.2f, \"p99_us\": %.2f, "
           "\"p999_us\": %.2f, \"max_us\": %.2f, \"mean_us\": %.2f",
           hist_quantile(&hist, 0.50) / 1e3, hist_quantile(&hist, 0.90) / 1e3,
           hist_quantile(&hist, 0.99) / 1e3, hist_quantile(&hist, 0.999) / 1e3,
           (double)hist.max / 1e3, hist.n ? hist.sum / (double)hist.n / 1e3 : 0.0);
    if (server_pid && srv0 >= 0 && srv1 >= 0)
        printf(", \"server_cpu_s\": %.6f", (double)(srv1 - srv0) / 1e9);
    else
        printf(", \"server_cpu_s\": null");
    if (flt0 >= 0 && flt1 >= 0)
        printf(", \"server_minflt\": %lld", flt1 - flt0);
    else
        printf(", \"server_minflt\": null");
    printf(", \"server_cpu_clock\": \"%s\", \"load_cpu_s\": %.6f, "
           "\"total_seconds\": %.3f}\n",
           clock, (double)(own1 - own0) / 1e9,
           (double)(now_ns() - t_begin) / 1e9);
    return first_error[0] ? 1 : 0;
}
