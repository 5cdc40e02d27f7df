/*
 * The workloads on qloop.  bench_libuv.c holds the same workloads on
 * libuv, in the same order and shape; change both together.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "qloop.h"

#define MS_NS INT64_C(1000000)

static int fail(const char *what, int rc)
{
    fprintf(stderr, "qloop-bench (qloop): %s: %s\n", what, strerror(-rc));
    return -1;
}

/* ---- timers_expire ------------------------------------------------------ */

static struct {
    ql_timer *base;
    const uint32_t *delay_ms;
    uint64_t n, fired;
    uint64_t prev_key; /* (delay << 32 | start index) of the last fire */
    uint64_t disorder;
    int64_t t_end;
} expire;

static void expire_cb(ql_loop *loop, ql_timer *timer)
{
    uint32_t i = (uint32_t)(timer - expire.base);
    uint64_t key = (uint64_t)expire.delay_ms[i] << 32 | i;
    if (key < expire.prev_key)
        expire.disorder++;
    expire.prev_key = key;
    if (++expire.fired == expire.n) {
        expire.t_end = bench_end();
        ql_loop_stop(loop);
    }
}

static int timers_expire(ql_loop *loop, const bench_params *p,
                         ql_timer *timers, bench_result *r)
{
    memset(&expire, 0, sizeof(expire));
    expire.base = timers;
    expire.delay_ms = p->delay_ms;
    expire.n = p->n;
    ql_stats s0, s1;
    ql_loop_stats(loop, &s0);

    int64_t t0 = bench_begin();
    int64_t now = ql_loop_update_time(loop);
    for (uint64_t i = 0; i < p->n; i++) {
        ql_timer_init(&timers[i], expire_cb, NULL);
        int rc = ql_timer_start(loop, &timers[i],
                                now + (int64_t)p->delay_ms[i] * MS_NS);
        if (rc < 0)
            return fail("ql_timer_start", rc);
    }
    int64_t t1 = bench_now_ns();
    int rc = ql_loop_run(loop, QL_RUN_DEFAULT);
    if (rc < 0)
        return fail("ql_loop_run", rc);

    ql_loop_stats(loop, &s1);
    r->ops = p->n;
    r->total_ns = expire.t_end - t0;
    r->phase1_ns = t1 - t0;
    r->phase2_ns = expire.t_end - t1;
    r->iterations = s1.iterations - s0.iterations;
    r->disorder = expire.disorder;
    r->ok = expire.fired == p->n && expire.disorder == 0 &&
            ql_loop_timer_count(loop) == 0;
    return 0;
}

/* ---- timers_cancel ------------------------------------------------------ */

static void never_cb(ql_loop *loop, ql_timer *timer)
{
    (void)timer;
    ql_loop_stop(loop);
}

static int timers_cancel(ql_loop *loop, const bench_params *p,
                         ql_timer *timers, bench_result *r)
{
    int64_t t0 = bench_begin();
    int64_t now = ql_loop_update_time(loop);
    for (uint64_t i = 0; i < p->n; i++) {
        ql_timer_init(&timers[i], never_cb, NULL);
        int rc = ql_timer_start(loop, &timers[i],
                                now + (int64_t)p->delay_ms[i] * MS_NS);
        if (rc < 0)
            return fail("ql_timer_start", rc);
    }
    int64_t t1 = bench_now_ns();
    for (uint64_t i = 0; i < p->n; i++)
        ql_timer_stop(loop, &timers[p->stop_order[i]]);
    int64_t t2 = bench_end();

    r->ops = p->n;
    r->total_ns = t2 - t0;
    r->phase1_ns = t1 - t0;
    r->phase2_ns = t2 - t1;
    r->ok = ql_loop_timer_count(loop) == 0;
    return 0;
}

/* ---- ring_batch / ring_chain -------------------------------------------- */

static struct {
    uint64_t n, ran, scheduled;
    int64_t t_end;
    int failed;
} ring;

/* Each callback re-queues itself until n have been queued, so `batch`
 * stay in flight and every pass of the ring runs `batch` of them. */
static void ring_cb(ql_loop *loop, void *arg)
{
    if (++ring.ran == ring.n) {
        ring.t_end = bench_end();
        ql_loop_stop(loop);
        return;
    }
    if (ring.scheduled < ring.n) {
        ring.scheduled++;
        if (ql_call_soon(loop, ring_cb, arg) < 0) {
            ring.failed = 1;
            ql_loop_stop(loop);
        }
    }
}

static int ring_run(ql_loop *loop, const bench_params *p, uint64_t n,
                    bench_result *r)
{
    memset(&ring, 0, sizeof(ring));
    ring.n = n;
    ql_stats s0, s1;
    ql_loop_stats(loop, &s0);

    int64_t t0 = bench_begin();
    for (uint32_t i = 0; i < p->batch; i++) {
        ring.scheduled++;
        int rc = ql_call_soon(loop, ring_cb, NULL);
        if (rc < 0)
            return fail("ql_call_soon", rc);
    }
    int rc = ql_loop_run(loop, QL_RUN_DEFAULT);
    if (rc < 0)
        return fail("ql_loop_run", rc);

    ql_loop_stats(loop, &s1);
    r->ops = n;
    r->total_ns = ring.t_end - t0;
    r->iterations = s1.iterations - s0.iterations;
    r->ok = !ring.failed && ring.ran == n && ql_loop_ready_count(loop) == 0;
    return 0;
}

/* ---- pingpong ------------------------------------------------------------ */

static struct {
    bench_pp_end end[2]; /* end[0] starts and counts, end[1] echoes */
    ql_io io[2];
    uint32_t msg_size;
    uint64_t n, trips;
    int64_t t_end;
    int failed;
} pp;

static void pp_stop(ql_loop *loop, int failed)
{
    pp.failed = failed;
    pp.t_end = bench_end();
    ql_loop_stop(loop);
}

static void pp_cb(ql_loop *loop, ql_io *io, unsigned events)
{
    (void)events;
    bench_pp_end *end = io->data;
    int rc = bench_pp_read(end, pp.msg_size);
    if (rc == 0)
        return;
    if (rc < 0) {
        pp_stop(loop, 1);
        return;
    }
    if (end == &pp.end[0] && ++pp.trips == pp.n) {
        pp_stop(loop, 0);
        return;
    }
    if (bench_pp_write(end->fd, pp.msg_size) < 0)
        pp_stop(loop, 1);
}

static int pingpong(ql_loop *loop, const bench_params *p, uint64_t n,
                    bench_result *r)
{
    int fds[2];
    if (bench_socketpair(fds) < 0)
        return -1;
    memset(&pp, 0, sizeof(pp));
    pp.msg_size = p->msg_size;
    pp.n = n;
    for (int i = 0; i < 2; i++) {
        pp.end[i].fd = fds[i];
        ql_io_init(&pp.io[i], fds[i], pp_cb, &pp.end[i]);
        int rc = ql_io_start(loop, &pp.io[i], QL_READABLE);
        if (rc < 0)
            return fail("ql_io_start", rc);
    }
    ql_stats s0, s1;
    ql_loop_stats(loop, &s0);

    int64_t t0 = bench_begin();
    int rc = bench_pp_write(fds[0], p->msg_size);
    if (rc == 0)
        rc = ql_loop_run(loop, QL_RUN_DEFAULT);

    ql_loop_stats(loop, &s1);
    for (int i = 0; i < 2; i++) {
        ql_io_stop(loop, &pp.io[i]);
        close(fds[i]);
    }
    if (rc < 0)
        return fail("ql_loop_run", rc);
    r->ops = n;
    r->total_ns = pp.t_end - t0;
    r->iterations = s1.iterations - s0.iterations;
    r->ok = !pp.failed && pp.trips == n && ql_loop_io_count(loop) == 0;
    return 0;
}

/* ---- driver -------------------------------------------------------------- */

/* One round of the workload; `warm` is the untimed first round. */
static int round_run(ql_loop *loop, const bench_params *p, ql_timer *timers,
                     int warm, bench_result *r)
{
    switch (p->workload) {
    case BENCH_TIMERS_EXPIRE:
        return timers_expire(loop, p, timers, r);
    case BENCH_TIMERS_CANCEL:
        return timers_cancel(loop, p, timers, r);
    case BENCH_RING_BATCH:
    case BENCH_RING_CHAIN: {
        uint64_t n = warm ? (p->n + 9) / 10 : p->n;
        return ring_run(loop, p, n < p->batch ? p->batch : n, r);
    }
    case BENCH_PINGPONG:
        return pingpong(loop, p, warm ? 1000 : p->n, r);
    }
    return -1;
}

int bench_qloop_run(const bench_params *p, bench_result *r)
{
    ql_loop *loop;
    int rc = ql_loop_new(&loop);
    if (rc < 0)
        return fail("ql_loop_new", rc);
    ql_timer *timers = NULL;
    if (p->workload == BENCH_TIMERS_EXPIRE ||
        p->workload == BENCH_TIMERS_CANCEL) {
        timers = malloc(p->n * sizeof(*timers));
        if (!timers) {
            ql_loop_free(loop);
            return fail("malloc", -ENOMEM);
        }
        memset(timers, 0xff, p->n * sizeof(*timers)); /* fault pages in */
    }

    bench_result warm = {0};
    rc = round_run(loop, p, timers, 1, &warm);
    if (rc == 0 && !warm.ok) {
        fprintf(stderr, "qloop-bench (qloop): warm-up round failed\n");
        rc = -1;
    }
    if (rc == 0)
        rc = round_run(loop, p, timers, 0, r);

    free(timers);
    int frc = ql_loop_free(loop);
    if (frc < 0 && rc == 0)
        return fail("ql_loop_free", frc);
    return rc;
}
