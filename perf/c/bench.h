/*
 * qloop against libuv: the shared part of the C benchmarks.
 *
 * Every workload exists twice, once per loop (bench_qloop.c,
 * bench_libuv.c), written line for line alike.  What the two must agree on
 * lives here: the parameters, the precomputed random inputs (so both sort
 * the very same deadlines), the result record and the ping-pong reader.
 *
 * One process runs one workload on one loop: an untimed warm-up round
 * (grows the timer heap and the ready queue, faults the pages in), then
 * the timed round.  perf/c_compare.py runs the processes, interleaving the
 * implementations, and takes medians.
 */
#ifndef QL_BENCH_H
#define QL_BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

typedef enum bench_workload {
    BENCH_TIMERS_EXPIRE, /* start n timers, run until all fired */
    BENCH_TIMERS_CANCEL, /* start n timers, stop them all */
    BENCH_RING_BATCH,    /* n callbacks, `batch` of them in flight */
    BENCH_RING_CHAIN,    /* n callbacks, one in flight (batch = 1) */
    BENCH_PINGPONG,      /* n round trips over a socketpair */
} bench_workload;

typedef struct bench_params {
    bench_workload workload;
    uint64_t n;          /* timers, callbacks or round trips */
    uint32_t batch;      /* ring: callbacks in flight */
    uint32_t msg_size;   /* ping-pong: bytes per message */
    uint32_t window_ms;  /* timers_expire: delays are 1..window_ms */
    /* Inputs shared by both implementations (bench_main.c fills them). */
    const uint32_t *delay_ms;   /* [n] timer delay, whole milliseconds */
    const uint32_t *stop_order; /* [n] a permutation: cancel order */
} bench_params;

typedef struct bench_result {
    uint64_t ops;          /* operations the rate is computed from */
    int64_t total_ns;      /* the timed span, wall clock */
    int64_t cpu_ns;        /* process CPU time in that span */
    int64_t phase1_ns;     /* timers: init + start of all; else 0 */
    int64_t phase2_ns;     /* timers: the rest (fire or cancel) */
    uint64_t iterations;   /* loop iterations in the timed span, if known */
    uint64_t disorder;     /* timers_expire: fires out of (deadline, start)
                              order; must be 0 */
    int ok;                /* the workload's own checks passed */
} bench_result;

static inline int64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The timed span: bench_begin() where it starts, bench_end() where it
 * ends (in the last callback); both return the wall clock and also note
 * the process CPU time, so that a run preempted by another process shows
 * as wall time well above CPU time. */
extern int64_t bench_cpu_begin, bench_cpu_end;

static inline int64_t bench_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline int64_t bench_begin(void)
{
    bench_cpu_begin = bench_cpu_ns();
    return bench_now_ns();
}

static inline int64_t bench_end(void)
{
    int64_t t = bench_now_ns();
    bench_cpu_end = bench_cpu_ns();
    return t;
}

/* One end of the ping-pong.  Both loops call bench_pp_read() from their
 * readiness callback: it reads what is there (a stream may split a
 * message) and says whether a whole message has now arrived. */
typedef struct bench_pp_end {
    int fd;
    uint32_t got;  /* bytes of the current message received so far */
} bench_pp_end;

/* 1: a whole message arrived (and `got` is reset); 0: not yet (or
 * EAGAIN); -1: error or EOF. */
int bench_pp_read(bench_pp_end *end, uint32_t msg_size);
/* Account `n` bytes delivered by someone else's read (libuv streams). */
int bench_pp_account(bench_pp_end *end, uint32_t msg_size, size_t n);
/* Write one whole message; 0 or -1.  64 bytes always fit an empty
 * AF_UNIX socket buffer, so a short write is an error here. */
int bench_pp_write(int fd, uint32_t msg_size);
/* A nonblocking AF_UNIX SOCK_STREAM socketpair; 0 or -1. */
int bench_socketpair(int fds[2]);

/* Each returns 0 on success, -1 on failure (after a message on stderr). */
int bench_qloop_run(const bench_params *p, bench_result *r);
#ifdef QL_BENCH_HAVE_LIBUV
int bench_libuv_run(const bench_params *p, bench_result *r);
int bench_libuv_stream_run(const bench_params *p, bench_result *r);
#endif

#endif
