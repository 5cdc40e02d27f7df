/*
 * The workloads on libuv, shaped like bench_qloop.c; change both together.
 *
 * Where libuv has no direct counterpart (call_soon), this file builds what
 * libuv users build; see the "ready queue" section.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "bench.h"

static int fail(const char *what, int rc)
{
    fprintf(stderr, "qloop-bench (libuv): %s: %s\n", what, uv_strerror(rc));
    return -1;
}

/* Close `n` handles and run the loop until their close callbacks ran.
 * Never timed. */
static void close_handles(uv_loop_t *loop, uv_handle_t **handles, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!uv_is_closing(handles[i]))
            uv_close(handles[i], NULL);
    uv_run(loop, UV_RUN_DEFAULT);
}

static void close_timers(uv_loop_t *loop, uv_timer_t *timers, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        uv_close((uv_handle_t *)&timers[i], NULL);
    uv_run(loop, UV_RUN_DEFAULT);
}

/* ---- timers_expire ------------------------------------------------------ */

static struct {
    uv_timer_t *base;
    const uint32_t *delay_ms;
    uint64_t n, fired;
    uint64_t prev_key; /* (delay << 32 | start index) of the last fire */
    uint64_t disorder;
    int64_t t_end;
} expire;

static void expire_cb(uv_timer_t *timer)
{
    uint32_t i = (uint32_t)(timer - expire.base);
    uint64_t key = (uint64_t)expire.delay_ms[i] << 32 | i;
    if (key < expire.prev_key)
        expire.disorder++;
    expire.prev_key = key;
    if (++expire.fired == expire.n) {
        expire.t_end = bench_end();
        uv_stop(timer->loop);
    }
}

static int timers_expire(uv_loop_t *loop, const bench_params *p,
                         uv_timer_t *timers, bench_result *r)
{
    memset(&expire, 0, sizeof(expire));
    expire.base = timers;
    expire.delay_ms = p->delay_ms;
    expire.n = p->n;

    int64_t t0 = bench_begin();
    uv_update_time(loop); /* as ql_loop_update_time() on the qloop side */
    for (uint64_t i = 0; i < p->n; i++) {
        uv_timer_init(loop, &timers[i]);
        int rc = uv_timer_start(&timers[i], expire_cb, p->delay_ms[i], 0);
        if (rc < 0)
            return fail("uv_timer_start", rc);
    }
    int64_t t1 = bench_now_ns();
    uv_run(loop, UV_RUN_DEFAULT); /* its result: whether handles remain */

    r->ops = p->n;
    r->total_ns = expire.t_end - t0;
    r->phase1_ns = t1 - t0;
    r->phase2_ns = expire.t_end - t1;
    r->disorder = expire.disorder;
    r->ok = expire.fired == p->n && expire.disorder == 0;
    close_timers(loop, timers, p->n);
    return 0;
}

/* ---- timers_cancel ------------------------------------------------------ */

static void never_cb(uv_timer_t *timer)
{
    uv_stop(timer->loop);
}

static int timers_cancel(uv_loop_t *loop, const bench_params *p,
                         uv_timer_t *timers, bench_result *r)
{
    int64_t t0 = bench_begin();
    uv_update_time(loop);
    for (uint64_t i = 0; i < p->n; i++) {
        uv_timer_init(loop, &timers[i]);
        int rc = uv_timer_start(&timers[i], never_cb, p->delay_ms[i], 0);
        if (rc < 0)
            return fail("uv_timer_start", rc);
    }
    int64_t t1 = bench_now_ns();
    for (uint64_t i = 0; i < p->n; i++)
        uv_timer_stop(&timers[p->stop_order[i]]);
    int64_t t2 = bench_end();

    r->ops = p->n;
    r->total_ns = t2 - t0;
    r->phase1_ns = t1 - t0;
    r->phase2_ns = t2 - t1;
    r->ok = 1;
    for (uint64_t i = 0; i < p->n; i++)
        if (uv_is_active((uv_handle_t *)&timers[i]))
            r->ok = 0;
    close_timers(loop, timers, p->n);
    return 0;
}

/* ---- ready queue ----------------------------------------------------------
 *
 * libuv has no call_soon.  What its users write instead is Node's
 * setImmediate(): a FIFO of (function, argument) drained by a uv_check
 * handle (right after the poll), plus a uv_idle handle started while the
 * FIFO is non-empty so that the poll does not block.  The drain runs only
 * the entries queued before it started, like qloop's ring pass (and
 * asyncio's _run_once).  The FIFO is a power-of-two ring that doubles,
 * like qloop's, so the comparison is of the loops around it.
 *
 * (uv_timer_start(0) per callback would measure the timer heap, and
 * uv_async_send a cross-thread wakeup: neither is a ready queue.)
 */

typedef void (*soon_fn)(uv_loop_t *loop, void *arg);

typedef struct soon_entry {
    soon_fn fn;
    void *arg;
} soon_entry;

static struct {
    soon_entry *buf;
    uint32_t head, count, mask;
    uv_check_t check;
    uv_idle_t idle;
} soon;

static void idle_cb(uv_idle_t *idle)
{
    (void)idle; /* only here to make the poll non-blocking */
}

static int soon_grow(void)
{
    uint32_t cap = soon.mask + 1;
    soon_entry *buf = malloc(2 * (size_t)cap * sizeof(*buf));
    if (!buf)
        return UV_ENOMEM;
    for (uint32_t i = 0; i < soon.count; i++)
        buf[i] = soon.buf[(soon.head + i) & soon.mask];
    free(soon.buf);
    soon.buf = buf;
    soon.head = 0;
    soon.mask = 2 * cap - 1;
    return 0;
}

/* Out of line, as ql_call_soon is (a library call qloop's users make). */
__attribute__((noinline)) static int call_soon(soon_fn fn, void *arg)
{
    if (soon.count > soon.mask && soon_grow() < 0)
        return UV_ENOMEM;
    if (soon.count == 0)
        uv_idle_start(&soon.idle, idle_cb);
    soon_entry *e = &soon.buf[(soon.head + soon.count) & soon.mask];
    e->fn = fn;
    e->arg = arg;
    soon.count++;
    return 0;
}

static void soon_check_cb(uv_check_t *check)
{
    uint32_t n = soon.count; /* what was queued before this pass */
    while (n--) {
        soon_entry e = soon.buf[soon.head];
        soon.head = (soon.head + 1) & soon.mask;
        soon.count--;
        e.fn(check->loop, e.arg);
    }
    if (soon.count == 0)
        uv_idle_stop(&soon.idle);
}

static int soon_init(uv_loop_t *loop)
{
    soon.buf = malloc(64 * sizeof(*soon.buf));
    if (!soon.buf)
        return UV_ENOMEM;
    soon.head = soon.count = 0;
    soon.mask = 63;
    uv_check_init(loop, &soon.check);
    uv_idle_init(loop, &soon.idle);
    return uv_check_start(&soon.check, soon_check_cb);
}

static void soon_close(uv_loop_t *loop)
{
    uv_handle_t *h[] = {(uv_handle_t *)&soon.check,
                        (uv_handle_t *)&soon.idle};
    close_handles(loop, h, 2);
    free(soon.buf);
    soon.buf = NULL;
}

/* ---- ring_batch / ring_chain -------------------------------------------- */

static struct {
    uint64_t n, ran, scheduled;
    int64_t t_end;
    int failed;
} ring;

static void ring_cb(uv_loop_t *loop, void *arg)
{
    if (++ring.ran == ring.n) {
        ring.t_end = bench_end();
        uv_stop(loop);
        return;
    }
    if (ring.scheduled < ring.n) {
        ring.scheduled++;
        if (call_soon(ring_cb, arg) < 0) {
            ring.failed = 1;
            uv_stop(loop);
        }
    }
}

static int ring_run(uv_loop_t *loop, const bench_params *p, uint64_t n,
                    bench_result *r)
{
    memset(&ring, 0, sizeof(ring));
    ring.n = n;

    int64_t t0 = bench_begin();
    for (uint32_t i = 0; i < p->batch; i++) {
        ring.scheduled++;
        int rc = call_soon(ring_cb, NULL);
        if (rc < 0)
            return fail("call_soon", rc);
    }
    uv_run(loop, UV_RUN_DEFAULT);

    r->ops = n;
    r->total_ns = ring.t_end - t0;
    r->ok = !ring.failed && ring.ran == n && soon.count == 0;
    return 0;
}

/* ---- pingpong (uv_poll: the fd-watcher API, like ql_io) ------------------ */

static struct {
    bench_pp_end end[2]; /* end[0] starts and counts, end[1] echoes */
    uv_poll_t poll[2];
    uv_pipe_t pipe[2];   /* the libuv_stream variant */
    uint32_t msg_size;
    uint64_t n, trips;
    int64_t t_end;
    int failed;
} pp;

static void pp_stop(uv_loop_t *loop, int failed)
{
    pp.failed = failed;
    pp.t_end = bench_end();
    uv_stop(loop);
}

static void pp_poll_cb(uv_poll_t *poll, int status, int events)
{
    (void)events;
    bench_pp_end *end = poll->data;
    int rc = status < 0 ? -1 : bench_pp_read(end, pp.msg_size);
    if (rc == 0)
        return;
    if (rc < 0) {
        pp_stop(poll->loop, 1);
        return;
    }
    if (end == &pp.end[0] && ++pp.trips == pp.n) {
        pp_stop(poll->loop, 0);
        return;
    }
    if (bench_pp_write(end->fd, pp.msg_size) < 0)
        pp_stop(poll->loop, 1);
}

static int pingpong(uv_loop_t *loop, const bench_params *p, uint64_t n,
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
        int rc = uv_poll_init(loop, &pp.poll[i], fds[i]);
        if (rc == 0) {
            pp.poll[i].data = &pp.end[i];
            rc = uv_poll_start(&pp.poll[i], UV_READABLE, pp_poll_cb);
        }
        if (rc < 0)
            return fail("uv_poll_start", rc);
    }

    int64_t t0 = bench_begin();
    int rc = bench_pp_write(fds[0], p->msg_size);
    if (rc == 0)
        uv_run(loop, UV_RUN_DEFAULT);

    uv_handle_t *h[] = {(uv_handle_t *)&pp.poll[0],
                        (uv_handle_t *)&pp.poll[1]};
    close_handles(loop, h, 2);
    close(fds[0]);
    close(fds[1]);
    if (rc < 0) {
        perror("write");
        return -1;
    }
    r->ops = n;
    r->total_ns = pp.t_end - t0;
    r->ok = !pp.failed && pp.trips == n;
    return 0;
}

/* ---- pingpong (uv_read_start + uv_try_write: libuv's stream API) -------- */

static char stream_buf[65536];

static void stream_alloc_cb(uv_handle_t *handle, size_t suggested,
                            uv_buf_t *buf)
{
    (void)handle;
    (void)suggested;
    *buf = uv_buf_init(stream_buf, sizeof(stream_buf));
}

static void stream_read_cb(uv_stream_t *stream, ssize_t nread,
                           const uv_buf_t *buf)
{
    (void)buf;
    bench_pp_end *end = stream->data;
    if (nread == 0)
        return; /* EAGAIN */
    int rc = nread < 0 ? -1
                       : bench_pp_account(end, pp.msg_size, (size_t)nread);
    if (rc == 0)
        return;
    if (rc < 0) {
        pp_stop(stream->loop, 1);
        return;
    }
    if (end == &pp.end[0] && ++pp.trips == pp.n) {
        pp_stop(stream->loop, 0);
        return;
    }
    uv_buf_t out = uv_buf_init(stream_buf, pp.msg_size);
    if (uv_try_write(stream, &out, 1) != (int)pp.msg_size)
        pp_stop(stream->loop, 1);
}

static int pingpong_stream(uv_loop_t *loop, const bench_params *p,
                           uint64_t n, bench_result *r)
{
    int fds[2];
    if (bench_socketpair(fds) < 0)
        return -1;
    memset(&pp, 0, sizeof(pp));
    pp.msg_size = p->msg_size;
    pp.n = n;
    for (int i = 0; i < 2; i++) {
        pp.end[i].fd = fds[i];
        uv_pipe_init(loop, &pp.pipe[i], 0);
        pp.pipe[i].data = &pp.end[i];
        int rc = uv_pipe_open(&pp.pipe[i], fds[i]); /* the pipe owns fd */
        if (rc == 0)
            rc = uv_read_start((uv_stream_t *)&pp.pipe[i], stream_alloc_cb,
                               stream_read_cb);
        if (rc < 0)
            return fail("uv_read_start", rc);
    }

    int64_t t0 = bench_begin();
    int rc = bench_pp_write(fds[0], p->msg_size);
    if (rc == 0)
        uv_run(loop, UV_RUN_DEFAULT);

    uv_handle_t *h[] = {(uv_handle_t *)&pp.pipe[0],
                        (uv_handle_t *)&pp.pipe[1]};
    close_handles(loop, h, 2);
    if (rc < 0) {
        perror("write");
        return -1;
    }
    r->ops = n;
    r->total_ns = pp.t_end - t0;
    r->ok = !pp.failed && pp.trips == n;
    return 0;
}

/* ---- driver -------------------------------------------------------------- */

static int round_run(uv_loop_t *loop, const bench_params *p,
                     uv_timer_t *timers, int stream, int warm,
                     bench_result *r)
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
        return (stream ? pingpong_stream : pingpong)(loop, p,
                                                     warm ? 1000 : p->n, r);
    }
    return -1;
}

static int run(const bench_params *p, bench_result *r, int stream)
{
    uv_loop_t loop;
    int rc = uv_loop_init(&loop);
    if (rc < 0)
        return fail("uv_loop_init", rc);
    int ring_workload = p->workload == BENCH_RING_BATCH ||
                        p->workload == BENCH_RING_CHAIN;
    uv_timer_t *timers = NULL;
    if (p->workload == BENCH_TIMERS_EXPIRE ||
        p->workload == BENCH_TIMERS_CANCEL) {
        timers = malloc(p->n * sizeof(*timers));
        if (!timers) {
            uv_loop_close(&loop);
            return fail("malloc", UV_ENOMEM);
        }
        memset(timers, 0xff, p->n * sizeof(*timers)); /* fault pages in */
    }
    if (ring_workload && (rc = soon_init(&loop)) < 0) {
        free(timers);
        return fail("soon_init", rc);
    }

    bench_result warm = {0};
    rc = round_run(&loop, p, timers, stream, 1, &warm);
    if (rc == 0 && !warm.ok) {
        fprintf(stderr, "qloop-bench (libuv): warm-up round failed\n");
        rc = -1;
    }
    if (rc == 0)
        rc = round_run(&loop, p, timers, stream, 0, r);

    if (ring_workload)
        soon_close(&loop);
    free(timers);
    int crc = uv_loop_close(&loop);
    if (crc < 0 && rc == 0)
        return fail("uv_loop_close", crc);
    return rc;
}

int bench_libuv_run(const bench_params *p, bench_result *r)
{
    return run(p, r, 0);
}

int bench_libuv_stream_run(const bench_params *p, bench_result *r)
{
    return run(p, r, 1);
}
