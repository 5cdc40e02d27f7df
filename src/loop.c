/*
 * The loop core: clock, run modes, the ready ring pass, timers, watcher
 * bookkeeping, the thread-safe wakeup, fork.
 *
 * One iteration, in this order (asyncio's _run_once, deliberately):
 *   1. poll: timeout 0 when anything is queued, a stop was asked for or a
 *      wakeup is pending; otherwise until the first timer, or forever;
 *   2. dispatch the I/O events;
 *   3. fire the timers that are due, except those armed during this pass;
 *   4. run the callbacks that are in the ready ring when this pass begins;
 *      those they queue wait for the next iteration;
 *   5. the check hook (ql_loop_set_check_hook): the binding sends there
 *      what its transports wrote during the pass.
 * So what I/O callbacks and timers queue runs in the same iteration, right
 * after them, and a binding that queues its I/O and timer handles on the
 * ring (as qloop's asyncio loop does) gets asyncio's order exactly: what
 * was queued before, then I/O, then timers.  stop() during the ring pass
 * ends the run after it; stop() before a run gives one iteration that polls
 * without blocking and runs what that poll and the due timers produce.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "loop_internal.h"

#define QL_RING_INITIAL 256

int64_t ql_time_ns(void)
{
    struct timespec ts;
#ifdef __APPLE__
    /* time.monotonic() on macOS is mach_absolute_time(): the same clock. */
    clock_gettime(CLOCK_UPTIME_RAW, &ts);
#else
    clock_gettime(CLOCK_MONOTONIC, &ts);
#endif
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t ql_loop_now(const ql_loop *loop) { return loop->now; }

int64_t ql_loop_update_time(ql_loop *loop)
{
    loop->now = ql_time_ns();
    return loop->now;
}

/* ---- creation ---------------------------------------------------------- */

int ql_loop_new(ql_loop **out)
{
    ql_loop *loop = calloc(1, sizeof(*loop));
    int rc;
    if (!loop)
        return -ENOMEM;
    rc = ql__ring_init(&loop->ready, QL_RING_INITIAL);
    if (rc < 0) {
        free(loop);
        return rc;
    }
    ql__heap_init(&loop->timers);
    loop->stale_fd_prev = loop->stale_fd_cur = -1;
    atomic_init(&loop->polling, 0);
    atomic_init(&loop->wakeup_pending, 0);
    atomic_init(&loop->busy_since, 0);
    atomic_init(&loop->idle_since, 0);
    rc = -pthread_mutex_init(&loop->tsq_lock, NULL);
    if (rc < 0) {
        ql__ring_free(&loop->ready);
        free(loop);
        return rc;
    }
    rc = ql__backend_init(loop);
    if (rc < 0) {
        pthread_mutex_destroy(&loop->tsq_lock);
        ql__ring_free(&loop->ready);
        free(loop);
        return rc;
    }
    loop->now = ql_time_ns();
    *out = loop;
    return 0;
}

int ql_loop_free(ql_loop *loop)
{
    if (!loop)
        return 0;
    if (loop->running)
        return -EBUSY;
    ql__backend_close(loop);
    /* Timers and watchers belong to the caller: leave them inactive, so a
     * later stop on them does not reach into freed memory. */
    for (uint32_t k = 0; k < loop->timers.count; k++)
        loop->timers.slots[QL_HEAP0 + k].timer->heap_index =
            QL_TIMER_INACTIVE;
    for (uint32_t fd = 0; fd < loop->nwatchers; fd++) {
        ql_io *io = loop->watchers[fd];
        if (io) {
            io->active = 0;
            io->events = 0;
        }
    }
    ql__heap_free(&loop->timers);
    ql__ring_free(&loop->ready);
    free(loop->watchers);
    free(loop->parked);
    free(loop->tsq);
    pthread_mutex_destroy(&loop->tsq_lock);
    free(loop);
    return 0;
}

/* ---- ready callbacks ----------------------------------------------------- */

int ql_call_soon(ql_loop *loop, ql_callback_fn fn, void *arg)
{
    return ql__ring_push(&loop->ready, fn, arg);
}

size_t ql_loop_ready_count(const ql_loop *loop) { return loop->ready.count; }

/* Move what other threads queued into the ring, oldest first.  Under the
 * lock so that posters never see a half-moved queue; on ENOMEM what did
 * not fit stays queued for the next try. */
static void splice_threadsafe(ql_loop *loop)
{
    size_t i = 0;
    pthread_mutex_lock(&loop->tsq_lock);
    for (; i < loop->tsq_len; i++)
        if (ql__ring_push(&loop->ready, loop->tsq[i].fn, loop->tsq[i].arg) < 0)
            break;
    if (i < loop->tsq_len)
        memmove(loop->tsq, loop->tsq + i,
                sizeof(*loop->tsq) * (loop->tsq_len - i));
    loop->tsq_len -= i;
    pthread_mutex_unlock(&loop->tsq_lock);
}

int ql_loop_pop_ready(ql_loop *loop, ql_callback_fn *fn, void **arg)
{
    ql__ready_entry e;
    if (loop->ready.count == 0)
        splice_threadsafe(loop);
    if (!ql__ring_pop(&loop->ready, &e))
        return 0;
    *fn = e.fn;
    *arg = e.arg;
    return 1;
}

int ql_loop_visit_ready(ql_loop *loop, ql_visit_fn visit, void *ctx)
{
    int rc = 0;
    for (uint32_t i = 0; i < loop->ready.count && rc == 0; i++) {
        ql__ready_entry *e =
            &loop->ready.buf[(loop->ready.head + i) & loop->ready.mask];
        rc = visit(e->fn, e->arg, ctx);
    }
    if (rc)
        return rc;
    pthread_mutex_lock(&loop->tsq_lock);
    for (size_t i = 0; i < loop->tsq_len && rc == 0; i++)
        rc = visit(loop->tsq[i].fn, loop->tsq[i].arg, ctx);
    pthread_mutex_unlock(&loop->tsq_lock);
    return rc;
}

/* Run exactly the callbacks queued when the pass began; returns how many
 * ran. */
static uint32_t run_ready(ql_loop *loop)
{
    uint32_t n = loop->ready.count, ran = 0;
    ql__ready_entry e;
    while (ran < n && ql__ring_pop(&loop->ready, &e)) {
        ran++;
        e.fn(loop, e.arg);
        if (loop->broken)
            break;
    }
    loop->stats.callbacks_run += ran;
    return ran;
}

/* ---- wakeup -------------------------------------------------------------- */

/*
 * The poster sets `wakeup_pending`, then looks at `polling`; the loop sets
 * `polling`, then looks at `wakeup_pending` before it computes its timeout.
 * Both are sequentially consistent, so at least one side sees the other:
 * either the loop sees the flag and does not block, or the poster sees the
 * loop polling and makes the system call.  When the flag was already set,
 * whoever set it took care of that.  Hence no lost wakeup and no system
 * call while the loop is busy running callbacks.
 */
int ql_loop_wakeup(ql_loop *loop)
{
    if (atomic_exchange(&loop->wakeup_pending, 1) == 0 &&
        atomic_load(&loop->polling))
        return ql__backend_wakeup(loop);
    return 0;
}

void ql_loop_set_wakeup_cb(ql_loop *loop, ql_callback_fn fn, void *arg)
{
    loop->wakeup_cb = fn;
    loop->wakeup_arg = arg;
}

int ql_call_soon_threadsafe(ql_loop *loop, ql_callback_fn fn, void *arg)
{
    pthread_mutex_lock(&loop->tsq_lock);
    if (loop->tsq_len == loop->tsq_cap) {
        size_t cap = loop->tsq_cap ? loop->tsq_cap * 2 : 64;
        ql__ready_entry *q = realloc(loop->tsq, sizeof(*q) * cap);
        if (!q) {
            pthread_mutex_unlock(&loop->tsq_lock);
            return -ENOMEM;
        }
        loop->tsq = q;
        loop->tsq_cap = cap;
    }
    loop->tsq[loop->tsq_len].fn = fn;
    loop->tsq[loop->tsq_len].arg = arg;
    loop->tsq_len++;
    pthread_mutex_unlock(&loop->tsq_lock);
    return ql_loop_wakeup(loop);
}

static void handle_wakeup(ql_loop *loop)
{
    splice_threadsafe(loop);
    if (loop->wakeup_cb)
        loop->wakeup_cb(loop, loop->wakeup_arg);
}

void ql_loop_set_poll_hooks(ql_loop *loop, ql_poll_enter_fn enter,
                            ql_poll_leave_fn leave, void *data)
{
    loop->poll_enter = enter;
    loop->poll_leave = leave;
    loop->poll_hook_data = data;
}

void ql_loop_set_check_hook(ql_loop *loop, ql_callback_fn fn, void *data)
{
    loop->check_hook = fn;
    loop->check_hook_data = data;
}

/* ---- timers -------------------------------------------------------------- */

void ql_timer_init(ql_timer *timer, ql_timer_fn cb, void *data)
{
    timer->deadline = 0;
    timer->cb = cb;
    timer->data = data;
    timer->seq = 0;
    timer->heap_index = QL_TIMER_INACTIVE;
}

int ql_timer_start(ql_loop *loop, ql_timer *timer, int64_t deadline_ns)
{
    /* Armed from a timer callback for a deadline already past: due "now",
     * so it sorts after every timer that was due before it was armed and
     * run_timers() can stop at it without holding one of those back. */
    if (loop->in_timer_pass && deadline_ns < loop->now)
        deadline_ns = loop->now;
    timer->deadline = deadline_ns;
    timer->seq = loop->timer_seq++;
    if (ql_timer_active(timer)) {
        ql__heap_update(&loop->timers, timer);
        return 0;
    }
    return ql__heap_insert(&loop->timers, timer);
}

void ql_timer_stop(ql_loop *loop, ql_timer *timer)
{
    if (ql_timer_active(timer))
        ql__heap_remove(&loop->timers, timer);
}

size_t ql_loop_timer_count(const ql_loop *loop) { return loop->timers.count; }

ql_timer *ql_loop_next_timer(const ql_loop *loop)
{
    return ql__heap_top(&loop->timers);
}

int ql_loop_visit_timers(ql_loop *loop, ql_timer_visit_fn visit, void *ctx)
{
    int rc = 0;
    for (uint32_t k = 0; k < loop->timers.count && rc == 0; k++)
        rc = visit(loop->timers.slots[QL_HEAP0 + k].timer, ctx);
    return rc;
}

/* Fire the due timers.  A timer armed during this pass (seq >= limit) is
 * left for the next iteration even when due, so a callback that re-arms
 * itself for "now" cannot starve the loop.  Stopping at such a timer holds
 * back no timer that was already due: ql_timer_start() gives a timer armed
 * in this pass a deadline no earlier than `now`, and equal deadlines order
 * by seq. */
static void run_timers(ql_loop *loop)
{
    uint64_t limit = loop->timer_seq;
    int64_t now = loop->now;
    if (!loop->timers.count)
        return;
    loop->in_timer_pass = 1;
    while (loop->timers.count) {
        ql__heap_slot *top = &loop->timers.slots[QL_HEAP0];
        if (top->deadline > now || top->seq >= limit)
            break;
        ql_timer *timer = top->timer;
        /* Lag against the clock read after this iteration's poll. */
        if (QL_DIAG && !loop->lag_by_caller)
            ql_loop_note_timer_lag(loop, top->deadline, now);
        ql__heap_remove(&loop->timers, timer);
        loop->stats.timers_fired++;
        timer->cb(loop, timer);
        if (loop->broken)
            break;
    }
    loop->in_timer_pass = 0;
}

/* ---- fd watchers --------------------------------------------------------- */

void ql_io_init(ql_io *io, int fd, ql_io_fn cb, void *data)
{
    io->fd = fd;
    io->events = 0;
    io->cb = cb;
    io->data = data;
    io->gen = 0;
    io->active = 0;
}

static int ensure_watcher_slot(ql_loop *loop, int fd)
{
    uint32_t n = loop->nwatchers;
    if ((uint32_t)fd < n)
        return 0;
    uint32_t cap = n ? n : 64;
    while (cap <= (uint32_t)fd)
        cap *= 2;
    if (ql__backend_parks) {
        ql__parked *p = realloc(loop->parked, sizeof(*p) * cap);
        if (!p)
            return -ENOMEM;
        memset(p + n, 0, sizeof(*p) * (cap - n));
        loop->parked = p;
    }
    ql_io **w = realloc(loop->watchers, sizeof(*w) * cap);
    if (!w)
        return -ENOMEM;
    memset(w + n, 0, sizeof(*w) * (cap - n));
    loop->watchers = w;
    loop->nwatchers = cap;
    return 0;
}

/* A new poller holds only the active watchers. */
static void forget_parked(ql_loop *loop)
{
    if (loop->parked)
        memset(loop->parked, 0, sizeof(*loop->parked) * loop->nwatchers);
}

int ql_io_start(ql_loop *loop, ql_io *io, unsigned events)
{
    int rc;
    events &= QL_READABLE | QL_WRITABLE;
    if (events == 0)
        return ql_io_stop(loop, io);
    if (io->active) {
        if (events == io->events)
            return 0;
        rc = ql__backend_modify(loop, io, io->events, events);
        if (rc < 0)
            return rc;
        io->events = events;
        return 0;
    }
    if (io->fd < 0)
        return -EBADF;
    if ((uint32_t)io->fd < loop->nwatchers && loop->watchers[io->fd])
        return -EEXIST;
    /* The kernel first: only an fd it accepts may size the table (an fd
     * is below RLIMIT_NOFILE; INT_MAX would ask for 16 GiB).  A parked
     * registration is taken over (re-registered with our generation). */
    io->gen = ++loop->io_gen;
    unsigned parked = 0;
    if (loop->parked && (uint32_t)io->fd < loop->nwatchers) {
        parked = loop->parked[io->fd].events;
        loop->parked[io->fd].events = 0;
    }
    rc = ql__backend_modify(loop, io, parked, events);
    if (rc < 0)
        return rc;
    rc = ensure_watcher_slot(loop, io->fd);
    if (rc < 0) {
        ql__backend_modify(loop, io, events, 0);
        return rc;
    }
    loop->watchers[io->fd] = io;
    io->active = 1;
    io->events = events;
    loop->io_count++;
    return 0;
}

int ql_io_stop(ql_loop *loop, ql_io *io)
{
    if (!io->active)
        return 0;
    int rc = 0;
    if (loop->parked) {
        /* Parked: the kernel keeps the registration, so that watching the
         * fd again costs one call instead of a removal now and an addition
         * then.  An event it reports before that removes it
         * (ql__io_dispatch); a close() drops it with the file. */
        loop->parked[io->fd].gen = io->gen;
        loop->parked[io->fd].events = io->events;
    } else {
        /* The backend treats an fd closed behind our back as removed. */
        rc = ql__backend_modify(loop, io, io->events, 0);
    }
    loop->watchers[io->fd] = NULL;
    io->active = 0;
    io->events = 0;
    loop->io_count--;
    return rc;
}

size_t ql_loop_io_count(const ql_loop *loop) { return loop->io_count; }

/* Validate one event before it reaches a watcher: the fd must still be
 * watched by the registration that produced the event (a watcher removed
 * earlier in this batch, or an fd closed and reused, fails that), and it
 * must still want what happened (as Redis ae re-checks the mask). */
void ql__io_dispatch(ql_loop *loop, int fd, uint32_t gen, unsigned events)
{
    ql_io *io = (uint32_t)fd < loop->nwatchers ? loop->watchers[fd] : NULL;
    if (!io && loop->parked && (uint32_t)fd < loop->nwatchers &&
        loop->parked[fd].events && loop->parked[fd].gen == gen) {
        /* Nobody watches the fd now: remove what was parked.  Should the
         * kernel not let us (the file lives on through a dup, its fd
         * closed), the next event is a stale one, handled below. */
        ql_io parked = {.fd = fd, .gen = gen};
        ql__backend_modify(loop, &parked, loop->parked[fd].events, 0);
        loop->parked[fd].events = 0;
        return;
    }
    if (!io || io->gen != gen) {
        if (fd == loop->stale_fd_prev)
            loop->need_rebuild = 1;
        loop->stale_fd_cur = fd;
        return;
    }
    events &= io->events | QL_ERROR | QL_HANGUP;
    if (!events)
        return;
    loop->stats.io_events++;
    io->cb(loop, io, events);
}

/* ---- running ------------------------------------------------------------- */

/* The heartbeat (ql_loop_busy_since): plain atomic stores by the loop
 * thread; with QL_DIAG 0 nothing, and it reads 0 for ever. */
static inline void heartbeat_idle(ql_loop *loop, int64_t t)
{
    if (!QL_DIAG)
        return;
    atomic_store_explicit(&loop->idle_since, t, memory_order_relaxed);
    atomic_store_explicit(&loop->busy_since, 0, memory_order_release);
}

static inline void heartbeat_busy(ql_loop *loop, int64_t t)
{
    if (QL_DIAG)
        atomic_store_explicit(&loop->busy_since, t, memory_order_release);
}

static int iterate(ql_loop *loop, ql_run_mode mode)
{
    /* The clock is read once per iteration, after the poll; before it only
     * when a timer bounds a poll that may block.  The poll hooks (the
     * binding releases the GIL there) run only around a poll that may
     * block: for a zero timeout they would cost more than the poll. */
    int64_t timeout = -1, t0 = 0;
    int may_block = !(mode == QL_RUN_NOWAIT || loop->ready.count ||
                      loop->stop_requested);
    if (may_block) {
        /* The wakeup handshake (see ql_loop_wakeup) only matters for a poll
         * that may block; a full barrier costs as much as a short callback. */
        atomic_store(&loop->polling, 1);
        if (atomic_load(&loop->wakeup_pending)) {
            may_block = 0;
            atomic_store_explicit(&loop->polling, 0, memory_order_release);
        }
    }
    if (!may_block) {
        timeout = 0;
    } else {
        t0 = loop->now = ql_time_ns();
        heartbeat_idle(loop, t0);
        if (loop->timers.count) {
            timeout = loop->timers.slots[QL_HEAP0].deadline - t0;
            if (timeout < 0)
                timeout = 0;
        }
    }

    int hooks = timeout != 0;
    if (hooks && loop->poll_enter)
        loop->poll_enter(loop, loop->poll_hook_data);
    int n = ql__backend_wait(loop, timeout);
    if (may_block)
        atomic_store_explicit(&loop->polling, 0, memory_order_release);
    int hook_rc = hooks && loop->poll_leave
                      ? loop->poll_leave(loop, loop->poll_hook_data)
                      : 0;
    loop->now = ql_time_ns();
    heartbeat_busy(loop, loop->now);
    if (timeout != 0)
        loop->stats.poll_ns += loop->now - t0;
    loop->stats.iterations++;
    if (hook_rc < 0)
        return hook_rc;
    if (n < 0 && n != -EINTR)
        return n;

    if (atomic_load_explicit(&loop->wakeup_pending, memory_order_relaxed) &&
        atomic_exchange(&loop->wakeup_pending, 0))
        handle_wakeup(loop);
    if (loop->broken)
        return QL_BROKEN;

    if (n > 0) {
        ql__backend_dispatch(loop, n);
        loop->stale_fd_prev = loop->stale_fd_cur;
        loop->stale_fd_cur = -1;
        if (loop->need_rebuild) {
            loop->need_rebuild = 0;
            loop->stale_fd_prev = -1;
            int rc = ql__backend_reinit(loop, 0);
            if (rc < 0)
                return rc;
            forget_parked(loop);
        }
        if (loop->broken)
            return QL_BROKEN;
    } else {
        loop->stale_fd_prev = -1;
    }

    uint64_t fired = loop->stats.timers_fired;
    uint32_t ran = 0;
    run_timers(loop);
    if (!loop->broken)
        ran = run_ready(loop);
    /* Even after a callback broke the run: the hook may be what sends
     * what the pass wrote. */
    if (loop->check_hook)
        loop->check_hook(loop, loop->check_hook_data);
    /* Callback time: one clock read per iteration that ran anything. */
    if (QL_DIAG && (ran || n > 0 || fired != loop->stats.timers_fired)) {
        int64_t dt = ql_time_ns() - loop->now;
        loop->stats.callback_ns += dt;
        if (ran == 1 && dt > loop->stats.longest_single_ns)
            loop->stats.longest_single_ns = dt;
    }
    return loop->broken ? QL_BROKEN : 0;
}

int ql_loop_run(ql_loop *loop, ql_run_mode mode)
{
    int rc;
    if (loop->running)
        return -EBUSY;
    loop->running = 1;
    loop->broken = 0;
    do {
        rc = iterate(loop, mode);
    } while (rc == 0 && mode == QL_RUN_DEFAULT && !loop->stop_requested);
    loop->stop_requested = 0;
    loop->broken = 0;
    loop->running = 0;
    if (QL_DIAG)
        heartbeat_idle(loop, ql_time_ns());
    return rc;
}

void ql_loop_stop(ql_loop *loop) { loop->stop_requested = 1; }

void ql_loop_break(ql_loop *loop)
{
    if (loop->running)
        loop->broken = 1;
}

int ql_loop_is_running(const ql_loop *loop) { return loop->running; }

int ql_loop_fork(ql_loop *loop)
{
    /* Another thread may have held the lock at fork(); only this thread
     * survives in the child. */
    pthread_mutex_init(&loop->tsq_lock, NULL);
    atomic_store(&loop->polling, 0);
    loop->stale_fd_prev = loop->stale_fd_cur = -1;
    loop->need_rebuild = 0;
    int rc = ql__backend_reinit(loop, 1);
    if (rc == 0)
        forget_parked(loop);
    return rc;
}

void ql_loop_stats(const ql_loop *loop, ql_stats *out) { *out = loop->stats; }

void ql_loop_set_lag_at_fire(ql_loop *loop, int on)
{
    loop->lag_by_caller = !on;
}

void ql_loop_note_timer_lag(ql_loop *loop, int64_t deadline, int64_t now)
{
    /* Unsigned: a deadline of INT64_MIN (asyncio's "at once") must not
     * overflow; early calls (now < deadline) count as no lag. */
    int64_t lag = 0;
    if (!QL_DIAG)
        return;
    if (now > deadline) {
        uint64_t d = (uint64_t)now - (uint64_t)deadline;
        lag = d > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)d;
    }
    loop->stats.lag_hist[ql_lag_bucket(lag)]++;
    if (lag > loop->stats.lag_max_ns)
        loop->stats.lag_max_ns = lag;
}

unsigned ql_lag_bucket(int64_t lag_ns)
{
    if (lag_ns < 1000)
        return 0;
    uint64_t us = (uint64_t)lag_ns / 1000;
    unsigned k = 64 - (unsigned)__builtin_clzll(us);
    return k < QL_LAG_BUCKETS ? k : QL_LAG_BUCKETS - 1;
}

int64_t ql_loop_busy_since(const ql_loop *loop)
{
    return atomic_load_explicit(&((ql_loop *)loop)->busy_since,
                                memory_order_acquire);
}

int64_t ql_loop_idle_since(const ql_loop *loop)
{
    return atomic_load_explicit(&((ql_loop *)loop)->idle_since,
                                memory_order_acquire);
}
