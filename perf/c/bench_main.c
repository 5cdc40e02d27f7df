/*
 * qloop-bench: run one workload on one loop and print one JSON line.
 *
 *   qloop-bench WORKLOAD IMPL [--n N] [--batch B] [--msg-size S]
 *               [--window-ms W] [--seed S]
 *   qloop-bench --list
 *
 * WORKLOAD: timers_expire timers_cancel ring_batch ring_chain pingpong
 * IMPL:     qloop libuv libuv_stream (the last for pingpong only)
 *
 * The random inputs are made here, from a fixed seed, before anything is
 * timed, so both loops get the same deadlines in the same start order.
 * Exit status: 0 with a JSON line, 1 when the run failed, 2 on bad usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench.h"
#include "qloop.h"

#ifdef QL_BENCH_HAVE_LIBUV
#include <uv.h>
#endif

static const struct {
    const char *name;
    bench_workload workload;
    uint64_t default_n;
} workloads[] = {
    {"timers_expire", BENCH_TIMERS_EXPIRE, 1000000},
    {"timers_cancel", BENCH_TIMERS_CANCEL, 1000000},
    {"ring_batch", BENCH_RING_BATCH, 20000000},
    {"ring_chain", BENCH_RING_CHAIN, 5000000},
    {"pingpong", BENCH_PINGPONG, 200000},
};
#define NWORKLOADS (sizeof(workloads) / sizeof(workloads[0]))

int64_t bench_cpu_begin, bench_cpu_end;

/* ---- ping-pong helpers, shared so both loops do the same reads -------- */

static char pp_buf[65536];

int bench_pp_account(bench_pp_end *end, uint32_t msg_size, size_t n)
{
    end->got += (uint32_t)n;
    if (end->got < msg_size)
        return 0;
    if (end->got > msg_size)
        return -1; /* the peer never sends ahead of the reply */
    end->got = 0;
    return 1;
}

int bench_pp_read(bench_pp_end *end, uint32_t msg_size)
{
    ssize_t n = read(end->fd, pp_buf, msg_size - end->got);
    if (n > 0)
        return bench_pp_account(end, msg_size, (size_t)n);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    return -1;
}

int bench_pp_write(int fd, uint32_t msg_size)
{
    ssize_t n = write(fd, pp_buf, msg_size);
    return n == (ssize_t)msg_size ? 0 : -1;
}

int bench_socketpair(int fds[2])
{
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
                   fds) < 0) {
        perror("socketpair");
        return -1;
    }
    return 0;
}

/* ---- inputs ------------------------------------------------------------ */

static uint64_t rng_state;

static uint64_t rng_next(void) /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static uint32_t *make_permutation(uint64_t n)
{
    uint32_t *perm = malloc(n * sizeof(*perm));
    if (!perm)
        return NULL;
    for (uint64_t i = 0; i < n; i++)
        perm[i] = (uint32_t)i;
    for (uint64_t i = n - 1; i > 0; i--) { /* Fisher-Yates */
        uint64_t j = rng_next() % (i + 1);
        uint32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    return perm;
}

static int make_inputs(bench_params *p, uint32_t **delay, uint32_t **order)
{
    *delay = NULL;
    *order = NULL;
    if (p->workload == BENCH_TIMERS_EXPIRE) {
        /* Whole milliseconds within a short window: libuv's resolution,
         * so both heaps hold the same (deadline, start order) set. */
        *delay = malloc(p->n * sizeof(**delay));
        if (!*delay)
            return -1;
        for (uint64_t i = 0; i < p->n; i++)
            (*delay)[i] = 1 + (uint32_t)(rng_next() % p->window_ms);
    } else if (p->workload == BENCH_TIMERS_CANCEL) {
        /* Distinct deadlines, 1 s and more away, started in random
         * order; cancelled in another random order. */
        *delay = make_permutation(p->n);
        *order = make_permutation(p->n);
        if (!*delay || !*order)
            return -1;
        for (uint64_t i = 0; i < p->n; i++)
            (*delay)[i] += 1000;
    }
    p->delay_ms = *delay;
    p->stop_order = *order;
    return 0;
}

/* ---- main ---------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr,
            "usage: qloop-bench WORKLOAD IMPL [--n N] [--batch B] "
            "[--msg-size S] [--window-ms W] [--seed S]\n"
            "       qloop-bench --list\n");
}

static void list(void)
{
    printf("{\"workloads\": [");
    for (size_t i = 0; i < NWORKLOADS; i++)
        printf("%s{\"name\": \"%s\", \"default_n\": %" PRIu64 "}",
               i ? ", " : "", workloads[i].name, workloads[i].default_n);
    printf("], \"impls\": [\"qloop\"");
#ifdef QL_BENCH_HAVE_LIBUV
    printf(", \"libuv\", \"libuv_stream\"");
#endif
    printf("], \"qloop_backend\": \"%s\"", ql_backend_name());
#ifdef QL_BENCH_HAVE_LIBUV
    printf(", \"libuv_version\": \"%s\"", uv_version_string());
#endif
    printf("}\n");
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--list") == 0) {
        list();
        return 0;
    }
    if (argc < 3) {
        usage();
        return 2;
    }
    bench_params p = {.batch = 1024, .msg_size = 64, .window_ms = 8};
    size_t w;
    for (w = 0; w < NWORKLOADS; w++)
        if (strcmp(argv[1], workloads[w].name) == 0)
            break;
    if (w == NWORKLOADS) {
        fprintf(stderr, "qloop-bench: unknown workload %s\n", argv[1]);
        return 2;
    }
    p.workload = workloads[w].workload;
    p.n = workloads[w].default_n;
    const char *impl = argv[2];
    uint64_t seed = 12345;

    for (int i = 3; i < argc; i++) {
        const char *opt = argv[i];
        if (i + 1 >= argc) {
            usage();
            return 2;
        }
        uint64_t v = strtoull(argv[++i], NULL, 10);
        if (strcmp(opt, "--n") == 0)
            p.n = v;
        else if (strcmp(opt, "--batch") == 0)
            p.batch = (uint32_t)v;
        else if (strcmp(opt, "--msg-size") == 0)
            p.msg_size = (uint32_t)v;
        else if (strcmp(opt, "--window-ms") == 0)
            p.window_ms = (uint32_t)v;
        else if (strcmp(opt, "--seed") == 0)
            seed = v;
        else {
            usage();
            return 2;
        }
    }
    if (p.workload == BENCH_RING_CHAIN)
        p.batch = 1;
    if (p.n == 0 || p.n > UINT32_MAX || p.batch == 0 || p.msg_size == 0 ||
        p.msg_size > sizeof(pp_buf) || p.window_ms == 0) {
        fprintf(stderr, "qloop-bench: parameter out of range\n");
        return 2;
    }
    if (p.batch > p.n)
        p.batch = (uint32_t)p.n;

    int (*run)(const bench_params *, bench_result *) = NULL;
    if (strcmp(impl, "qloop") == 0)
        run = bench_qloop_run;
#ifdef QL_BENCH_HAVE_LIBUV
    else if (strcmp(impl, "libuv") == 0)
        run = bench_libuv_run;
    else if (strcmp(impl, "libuv_stream") == 0 &&
             p.workload == BENCH_PINGPONG)
        run = bench_libuv_stream_run;
#endif
    if (!run) {
        fprintf(stderr, "qloop-bench: implementation %s is not available "
                        "for %s\n", impl, argv[1]);
        return 2;
    }

    rng_state = seed;
    uint32_t *delay, *order;
    if (make_inputs(&p, &delay, &order) < 0) {
        fprintf(stderr, "qloop-bench: out of memory\n");
        return 1;
    }

    bench_result r = {0};
    int rc = run(&p, &r);
    r.cpu_ns = bench_cpu_end - bench_cpu_begin;
    free(delay);
    free(order);
    if (rc < 0 || !r.ok || r.total_ns <= 0) {
        fprintf(stderr, "qloop-bench: %s on %s failed\n", argv[1], impl);
        return 1;
    }
    printf("{\"workload\": \"%s\", \"impl\": \"%s\", \"n\": %" PRIu64
           ", \"ops\": %" PRIu64 ", \"total_ns\": %" PRId64
           ", \"ops_per_s\": %.1f, \"cpu_ns\": %" PRId64
           ", \"ops_per_cpu_s\": %.1f, \"phase1_ns\": %" PRId64
           ", \"phase2_ns\": %" PRId64 ", \"iterations\": %" PRIu64
           ", \"disorder\": %" PRIu64 ", \"batch\": %u, \"msg_size\": %u"
           ", \"window_ms\": %u}\n",
           argv[1], impl, p.n, r.ops, r.total_ns,
           (double)r.ops * 1e9 / (double)r.total_ns, r.cpu_ns,
           r.cpu_ns > 0 ? (double)r.ops * 1e9 / (double)r.cpu_ns : 0.0,
           r.phase1_ns,
           r.phase2_ns, r.iterations, r.disorder, p.batch, p.msg_size,
           p.window_ms);
    return 0;
}
