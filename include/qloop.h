/*
 * qloop reactor: the public C API.
 *
 * A small event loop with no Python in it: a cached monotonic clock, a
 * 4-ary timer heap, a ring buffer of ready callbacks, fd watchers on the
 * platform's poller (epoll or kqueue, chosen by the build) and a
 * thread-safe wakeup.
 *
 * Conventions:
 *  - Functions that can fail return 0 (or a count) on success and a
 *    negative errno value on failure.  The library never aborts and never
 *    prints.
 *  - Time is int64 nanoseconds on the monotonic clock (ql_time_ns()).
 *  - Timers and fd watchers are structs owned by the caller (usually
 *    embedded in a larger object); the loop only keeps pointers to them
 *    while they are active.  Fields marked "private" belong to the loop.
 *  - Everything except ql_loop_wakeup() and ql_call_soon_threadsafe()
 *    must be called from the thread running the loop.
 */
#ifndef QLOOP_H
#define QLOOP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QL_VERSION_MAJOR 0
#define QL_VERSION_MINOR 1
#define QL_VERSION_PATCH 0

typedef struct ql_loop ql_loop;
typedef struct ql_timer ql_timer;
typedef struct ql_io ql_io;

/* A ready callback: a function and its argument, queued by ql_call_soon. */
typedef void (*ql_callback_fn)(ql_loop *loop, void *arg);
typedef void (*ql_timer_fn)(ql_loop *loop, ql_timer *timer);
/* `events` is what the kernel reported, masked by the watcher's interest
 * for QL_READABLE/QL_WRITABLE; QL_ERROR and QL_HANGUP are always passed. */
typedef void (*ql_io_fn)(ql_loop *loop, ql_io *io, unsigned events);
/* Around a poll system call that may block (a timeout other than zero),
 * in the loop thread: where a binding releases its interpreter lock.
 * `leave` returning a negative value ends ql_loop_run at once with that
 * value (the events of that poll are not dispatched; level-triggered
 * watchers see them again). */
typedef void (*ql_poll_enter_fn)(ql_loop *loop, void *data);
typedef int (*ql_poll_leave_fn)(ql_loop *loop, void *data);

enum {
    QL_READABLE = 1u << 0,
    QL_WRITABLE = 1u << 1,
    QL_ERROR = 1u << 2,  /* the kernel reported an error condition */
    QL_HANGUP = 1u << 3, /* the peer hung up (EPOLLHUP/EPOLLRDHUP, EV_EOF) */
};

typedef enum ql_run_mode {
    QL_RUN_DEFAULT = 0, /* iterate until ql_loop_stop() */
    QL_RUN_ONCE = 1,    /* one iteration; may block until something happens */
    QL_RUN_NOWAIT = 2,  /* one iteration; never blocks */
} ql_run_mode;

/* ql_loop_run() returns this when a callback called ql_loop_break(). */
#define QL_BROKEN 1

/* ---- timers ---------------------------------------------------------- */

#define QL_TIMER_INACTIVE UINT32_MAX

struct ql_timer {
    /* private: slot in the heap or QL_TIMER_INACTIVE.  First: a timer
     * embedded after its owner's hot fields then shares their cache line,
     * and stopping a timer reads it (and each heap move writes it). */
    uint32_t heap_index;
    int64_t deadline;    /* absolute, ns; valid while active */
    uint64_t seq;        /* private: start order, breaks deadline ties */
    ql_timer_fn cb;
    void *data;
};

void ql_timer_init(ql_timer *timer, ql_timer_fn cb, void *data);
/* Arm (or re-arm) the timer for an absolute deadline.  A timer armed from a
 * timer callback for a deadline that is already due runs in the next
 * iteration, never in the same pass.  Returns 0 or -ENOMEM. */
int ql_timer_start(ql_loop *loop, ql_timer *timer, int64_t deadline_ns);
/* Disarm; O(log n).  No-op for an inactive timer. */
void ql_timer_stop(ql_loop *loop, ql_timer *timer);
static inline int ql_timer_active(const ql_timer *timer)
{
    return timer->heap_index != QL_TIMER_INACTIVE;
}
/* The timer due first, or NULL. */
ql_timer *ql_loop_next_timer(const ql_loop *loop);
/* Visit every armed timer (in heap order, not deadline order); stops at
 * and returns the first non-zero result of `visit`. */
typedef int (*ql_timer_visit_fn)(ql_timer *timer, void *ctx);
int ql_loop_visit_timers(ql_loop *loop, ql_timer_visit_fn visit, void *ctx);

/* ---- fd watchers ------------------------------------------------------ */

struct ql_io {
    int fd;
    unsigned events; /* current interest: QL_READABLE | QL_WRITABLE */
    ql_io_fn cb;
    void *data;
    uint32_t gen;    /* private: registration generation */
    int active;      /* private */
};

void ql_io_init(ql_io *io, int fd, ql_io_fn cb, void *data);
/* Set the watcher's interest (QL_READABLE and/or QL_WRITABLE).  Costs at
 * most one backend call, none when nothing changes; `events == 0` stops the
 * watcher.  One watcher per fd: -EEXIST if another watcher holds the fd. */
int ql_io_start(ql_loop *loop, ql_io *io, unsigned events);
/* Stop watching.  An fd already closed behind the loop's back is fine, and
 * so is closing it right after.  The epoll backend leaves the kernel's
 * registration in place ("parked") until it reports an event, which then
 * removes it without reaching the watcher, or until the fd is watched
 * again, which takes it over with one call. */
int ql_io_stop(ql_loop *loop, ql_io *io);
static inline int ql_io_active(const ql_io *io) { return io->active; }

/* ---- the loop --------------------------------------------------------- */

int ql_loop_new(ql_loop **out);
/* Frees the loop.  Pending callbacks are dropped: drain them first with
 * ql_loop_pop_ready() if their arguments own resources.  -EBUSY while
 * the loop is running. */
int ql_loop_free(ql_loop *loop);

int ql_loop_run(ql_loop *loop, ql_run_mode mode);
/* End the current run after the iteration in progress.  Called before
 * ql_loop_run(), the next run does one iteration and returns. */
void ql_loop_stop(ql_loop *loop);
/* End the current run right after the callback in progress; what was not
 * run stays queued.  ql_loop_run() returns QL_BROKEN. */
void ql_loop_break(ql_loop *loop);
int ql_loop_is_running(const ql_loop *loop);

/* Cached monotonic time, refreshed around each poll; update on demand. */
int64_t ql_loop_now(const ql_loop *loop);
int64_t ql_loop_update_time(ql_loop *loop);
int64_t ql_time_ns(void);

/* Queue a callback for the next pass of the ready ring.  0 or -ENOMEM. */
int ql_call_soon(ql_loop *loop, ql_callback_fn fn, void *arg);
/* Take the oldest queued callback without running it (for draining at
 * close).  Returns 1 if one was taken, 0 if the ring is empty. */
int ql_loop_pop_ready(ql_loop *loop, ql_callback_fn *fn, void **arg);
size_t ql_loop_ready_count(const ql_loop *loop);
/* Visit every queued callback (the ring, then the thread-safe queue);
 * stops at and returns the first non-zero result of `visit`. */
typedef int (*ql_visit_fn)(ql_callback_fn fn, void *arg, void *ctx);
int ql_loop_visit_ready(ql_loop *loop, ql_visit_fn visit, void *ctx);

/* Thread-safe: wake the loop from any thread.  The loop calls the wakeup
 * callback (if set) in its own thread.  The system call is skipped when the
 * loop is not blocked in poll or about to be. */
int ql_loop_wakeup(ql_loop *loop);
void ql_loop_set_wakeup_cb(ql_loop *loop, ql_callback_fn fn, void *arg);
/* Thread-safe: queue a callback from any thread and wake the loop. */
int ql_call_soon_threadsafe(ql_loop *loop, ql_callback_fn fn, void *arg);

void ql_loop_set_poll_hooks(ql_loop *loop, ql_poll_enter_fn enter,
                            ql_poll_leave_fn leave, void *data);
/* fn(loop, data) runs at the end of every iteration, after the ready pass
 * (libuv's check handles run at that point of theirs), also when a
 * callback broke the run; NULL removes it.  What it queues runs in the
 * next iteration. */
void ql_loop_set_check_hook(ql_loop *loop, ql_callback_fn fn, void *data);

/* In a child after fork(): rebuild the backend and re-register every
 * active watcher. */
int ql_loop_fork(ql_loop *loop);

/* Counts of what the loop holds now. */
size_t ql_loop_timer_count(const ql_loop *loop);
size_t ql_loop_io_count(const ql_loop *loop);

/* QL_DIAG: 1 (the default) builds the diagnostics below, the lag
 * histogram, callback time and the heartbeat; meson -Ddiagnostics=false
 * defines it 0 for a build without them (to measure what they cost).
 * The API stays: there the lag fields and callback_ns/longest_single_ns
 * stay 0, ql_loop_note_timer_lag() does nothing and the heartbeat reads 0
 * ("never busy"), so a watchdog on it never fires.  The plain counts
 * (iterations, callbacks_run, io_events, timers_fired, poll_ns) are kept
 * in both builds. */
#ifndef QL_DIAG
#define QL_DIAG 1
#endif

/* Timer lag histogram: bucket 0 counts lags under 1 us, bucket k (k >= 1)
 * lags in [2^(k-1), 2^k) us, the last bucket everything above. */
#define QL_LAG_BUCKETS 32

typedef struct ql_stats {
    uint64_t iterations;
    uint64_t callbacks_run; /* ready-ring callbacks */
    uint64_t io_events;     /* watcher callbacks dispatched */
    uint64_t timers_fired;
    int64_t poll_ns;        /* time spent in polls that may block */
    /* From each poll's return to the end of its iteration, summed over the
     * iterations that ran anything: I/O dispatch, timers, the ring pass.
     * One clock read per such iteration, none per callback. */
    int64_t callback_ns;
    /* The longest iteration that ran exactly one ring callback (and so an
     * upper bound of that callback's time; no per-callback clock). */
    int64_t longest_single_ns;
    /* Lag: how late each timer fired against its deadline. */
    int64_t lag_max_ns;
    uint64_t lag_hist[QL_LAG_BUCKETS];
} ql_stats;
void ql_loop_stats(const ql_loop *loop, ql_stats *out);
/* The histogram bucket of a lag in ns (see QL_LAG_BUCKETS). */
unsigned ql_lag_bucket(int64_t lag_ns);
/* By default a timer's lag is taken when it fires.  A binding whose timer
 * callbacks only queue the real work (as qloop's asyncio loop queues its
 * TimerHandles on the ready ring, behind what is queued already) turns
 * that off and notes each lag when the work runs: then the lag includes
 * the wait behind a blocking callback of the same iteration. */
void ql_loop_set_lag_at_fire(ql_loop *loop, int on);
void ql_loop_note_timer_lag(ql_loop *loop, int64_t deadline, int64_t now);

/* The heartbeat, readable from any thread without a lock (for a stall
 * watchdog): while the loop runs callbacks, the time (ql_time_ns) its last
 * poll returned; 0 while it is in a poll that may block or not running.
 * ql_loop_idle_since(): when it last entered such a poll or stopped
 * running.  A loop that polls without blocking refreshes busy_since every
 * iteration, so "busy_since older than T" means "has not come back to
 * poll for T". */
int64_t ql_loop_busy_since(const ql_loop *loop);
int64_t ql_loop_idle_since(const ql_loop *loop);

/* "epoll" or "kqueue". */
const char *ql_backend_name(void);

#ifdef __cplusplus
}
#endif
#endif /* QLOOP_H */
