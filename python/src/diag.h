/*
 * Per-callback timing (diag.c): two relaxed loads of a coarse clock that a
 * ticker thread keeps (slow-callback thresholds of 10 ms and more), else
 * two reads of the CPU's counter, around a handle, and two comparisons.
 */
#ifndef QLOOP_DIAG_H
#define QLOOP_DIAG_H

#include <stdatomic.h>

#include "qloop_ext.h"

/* ---- a cheap clock for per-callback timing --------------------------------
 *
 * Two clock_gettime() calls (~20 ns each through the vDSO) are a tenth of
 * a cheap callback; the CPU's counter is a few cycles.  Used where it is
 * invariant (x86 with constant_tsc and nonstop_tsc, aarch64's virtual
 * counter), calibrated against ql_time_ns() once; elsewhere the clock. */
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define QL_HAVE_COUNTER 1
static inline uint64_t qloop_read_counter(void) { return __rdtsc(); }
#elif defined(__aarch64__)
#define QL_HAVE_COUNTER 1
static inline uint64_t qloop_read_counter(void)
{
    uint64_t v;
    __asm__ volatile("mrs %0, cntvct_el0" : "=r"(v));
    return v;
}
#endif

/* Set once calibrated (diag.c); the clock otherwise. */
extern int qloop_use_counter;

static inline uint64_t qloop_ticks(void)
{
#ifdef QL_HAVE_COUNTER
    if (qloop_use_counter)
        return qloop_read_counter();
#endif
    return (uint64_t)ql_time_ns();
}

/* The first member of diag.c's struct qloop_diag. */
typedef struct {
    uint64_t slow_ticks;    /* report at or over this; UINT64_MAX: never */
    uint64_t longest_ticks; /* the longest callback so far */
    /* The coarse clock (ns, ql_time_ns's clock, at most a tick old) that
     * a ticker stores while the loop runs; `coarse` when callbacks are
     * timed with it (the threshold allows), else the counter. */
    _Atomic int64_t now;
    int coarse;
    /* A coarse duration from which a callback may be slow or the longest
     * so far: then look closer.  One comparison on the fast path. */
    int64_t coarse_look;
} qloop_diag_head;

void qloop_diag_after(LoopObject *loop, HandleObject *h, uint64_t dk);
__attribute__((cold)) void qloop_diag_after_coarse(LoopObject *loop,
                                                  HandleObject *h, int64_t t0);

/* Run `h` timed with the counter (out of line: two counter reads cost far
 * more than a call). */
void qloop_diag_run_handle(LoopObject *loop, HandleObject *h);

/* Run `h` timed (the loop's `timed` mode).  The coarse clock's path is
 * inline in the run loop: out of line, its call and saved registers were
 * a third of what timing costs on a ~50 ns callback. */
static inline void qloop_diag_run_timed(LoopObject *loop, HandleObject *h)
{
    const qloop_diag_head *d = (const qloop_diag_head *)loop->diag;
    if (!d->coarse) {
        qloop_diag_run_handle(loop, h);
        return;
    }
    int64_t t0 = atomic_load_explicit(&d->now, memory_order_relaxed);
    qloop_handle_run(loop, h);
    /* Reloaded: the callback may have changed the threshold (the ticker,
     * hence `now`, lives until the run ends). */
    d = (const qloop_diag_head *)loop->diag;
    if (atomic_load_explicit(&d->now, memory_order_relaxed) - t0 >=
        d->coarse_look)
        qloop_diag_after_coarse(loop, h, t0);
}

#endif
