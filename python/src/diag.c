/*
 * Diagnostics of CLoop: stats(), per-callback timing for slow-callback
 * reports outside debug mode, and the stall watchdog thread.
 *
 * Cost when off: nothing per callback.  The reactor counts and times
 * whole iterations (src/loop.c); here only stats() reads them.
 *
 * Per-callback timing ("timed" mode, on while slow-callback reports are
 * on; the watchdog needs none): the longest callback kept with its repr,
 * reports through a Python callable for those at or over
 * slow_callback_duration.  Reading the CPU's counter costs 23-28 ns on a
 * VM, a third of a cheap callback: so for thresholds of COARSE_MIN_NS and
 * more, a ticker thread (no GIL, ever) stores the monotonic clock in an
 * atomic every P = threshold/20 (0.5-5 ms) while the loop runs, and each
 * callback costs two relaxed loads of it.  One that may be slow (coarse
 * duration at least half the threshold, or longer than the longest so
 * far) is measured again from its coarse start to the precise clock now:
 * never shorter than it ran, at most a tick (plus the ticker's scheduling
 * delay) longer.  Below COARSE_MIN_NS, or without a ticker, the counter.
 *
 * The watchdog is a plain pthread that never touches Python while the loop
 * is healthy: it sleeps until the reactor's heartbeat (ql_loop_busy_since,
 * an atomic the loop writes after each poll) would be `threshold` old, and
 * looks again.  Only when the loop has not come back to poll within the
 * threshold does it take the GIL, to let Python capture the loop thread's
 * stack with sys._current_frames() while the loop is still blocked:
 *   - a blocking system call (time.sleep, socket.recv) has released the
 *     GIL, so the watchdog gets it at once and the frame is at the call;
 *   - a busy Python loop hands the GIL over at the switch interval (5 ms);
 *   - C code that holds the GIL throughout hands it over only when it
 *     returns: if the stall is still on then (Python code called it), the
 *     stack is where that call returned to, and the report says how long
 *     the GIL took to come; if the stall is over, there is no stack.
 * It then waits for the heartbeat to move and reports the stall's total
 * duration from the reactor's own timestamps (the poll return that began
 * it, the next poll or the run's end), so the sampling adds no error.
 *
 * A build with QL_DIAG 0 (meson -Ddiagnostics=false, to measure what all
 * this costs) has none of it on the hot paths: the reactor keeps no lag,
 * callback time or heartbeat, loop.c never times a callback.  Here
 * _diag_configure() then refuses to turn anything on (RuntimeError, see
 * NO_DIAG), and stats() gives None for what is not measured.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "diag.h"

#define NO_DIAG                                                             \
    "qloop was built without diagnostics (meson -Ddiagnostics=false): "     \
    "no slow-callback reports outside debug mode, no stall watchdog"

static double ns_per_tick;  /* 0 until calibrated; then > 0 */
int qloop_use_counter;

#ifdef QL_HAVE_COUNTER
static int counter_invariant(void)
{
#if defined(__x86_64__) || defined(__i386__)
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[4096];
    int constant = 0, nonstop = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "flags", 5) != 0)
            continue;
        constant = strstr(line, " constant_tsc") != NULL;
        nonstop = strstr(line, " nonstop_tsc") != NULL;
        break;
    }
    fclose(f);
    return constant && nonstop;
#else
    return 1;
#endif
}
#endif

/* Called with the GIL; releases it for the 20 ms it measures. */
static void calibrate_counter(void)
{
    if (ns_per_tick > 0)
        return;
    ns_per_tick = 1.0;
    qloop_use_counter = 0;
#ifdef QL_HAVE_COUNTER
    if (!counter_invariant())
        return;
    int64_t n0, n1;
    uint64_t k0, k1;
    Py_BEGIN_ALLOW_THREADS
    n0 = ql_time_ns();
    k0 = qloop_read_counter();
    struct timespec ts = {0, 20000000};
    while (nanosleep(&ts, &ts) != 0)
        ;
    n1 = ql_time_ns();
    k1 = qloop_read_counter();
    Py_END_ALLOW_THREADS
    if (k1 > k0 && n1 > n0) {
        double r = (double)(n1 - n0) / (double)(k1 - k0);
        if (r > 0.01 && r < 100.0) {
            ns_per_tick = r;
            qloop_use_counter = 1;
        }
    }
#endif
}


/* The coarse clock of timed mode: a thread that stores ql_time_ns() every
 * `period_ns` until told to stop (at once, through the condition). */
typedef struct qloop_ticker {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
    _Atomic int64_t *out; /* the diag's head.now */
    _Atomic int64_t period_ns;
    pid_t pid; /* a child forked during a run has no ticker thread */
} qloop_ticker;

/* Thresholds from which the coarse clock is precise enough (P <= 5 %). */
#define COARSE_MIN_NS 10000000
#define TICK_MIN_NS 500000
#define TICK_MAX_NS 5000000

typedef struct qloop_watchdog {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
    ql_loop *ql;
    int64_t threshold_ns;
    PyObject *on_stall; /* borrowed from the diag, alive while running */
    unsigned long tid;
    clockid_t loop_cpu; /* the loop thread's CPU clock */
    int have_loop_cpu;
} qloop_watchdog;

struct qloop_diag {
    qloop_diag_head head;  /* first: what the inlined fast path reads */
    int64_t slow_ns;       /* report callbacks at or over this; <= 0: none */
    PyObject *on_slow;     /* (handle, seconds) -> None */
    int64_t longest_ns;    /* timed mode's longest callback */
    int64_t coarse_slow;   /* coarse ns from which one may be slow */
    int64_t tick_ns;       /* the ticker's period */
    PyObject *longest_repr;
    int64_t watchdog_ns;   /* 0: no watchdog */
    PyObject *on_stall;    /* (event, tid, start_ns, t_ns, still, gil_wait_ns,
                            *  loop thread's CPU ns during that wait or -1) */
    qloop_watchdog *wd;    /* while a run is in progress */
    qloop_ticker *ticker;  /* timed mode, while a run is in progress */
    ql_stats final;        /* the reactor's, kept when it is freed */
    char has_final;
};

static qloop_diag *diag_get(LoopObject *loop)
{
    if (!loop->diag) {
        loop->diag = PyMem_Calloc(1, sizeof(qloop_diag));
        if (!loop->diag)
            PyErr_NoMemory();
    }
    return loop->diag;
}

int qloop_diag_traverse(LoopObject *loop, visitproc visit, void *arg)
{
    qloop_diag *d = loop->diag;
    if (d) {
        Py_VISIT(d->on_slow);
        Py_VISIT(d->longest_repr);
        Py_VISIT(d->on_stall);
    }
    return 0;
}

void qloop_diag_clear(LoopObject *loop)
{
    qloop_diag *d = loop->diag;
    if (!d || d->wd) /* a running loop keeps what its watchdog uses */
        return;
    Py_CLEAR(d->on_slow);
    Py_CLEAR(d->longest_repr);
    Py_CLEAR(d->on_stall);
    loop->timed = 0;
}

void qloop_diag_free(LoopObject *loop)
{
    qloop_diag_clear(loop);
    PyMem_Free(loop->diag);
    loop->diag = NULL;
}

void qloop_diag_keep_stats(LoopObject *loop)
{
    if (!loop->ql)
        return;
    qloop_diag *d = diag_get(loop);
    if (!d) {
        PyErr_Clear(); /* stats() of a closed loop will then be zeros */
        return;
    }
    ql_loop_stats(loop->ql, &d->final);
    d->has_final = 1;
}

/* ---- per-callback timing ------------------------------------------------- */

/* Thresholds under COARSE_MIN_NS, or no ticker: the counter. */
void qloop_diag_run_handle(LoopObject *loop, HandleObject *h)
{
    const qloop_diag_head *d = (const qloop_diag_head *)loop->diag;
    uint64_t k0 = qloop_ticks();
    qloop_handle_run(loop, h);
    uint64_t dk = qloop_ticks() - k0;
    if (dk > d->longest_ticks || dk >= d->slow_ticks)
        qloop_diag_after(loop, h, dk);
}

/* The longest is looked at only from two ticks: a callback of any length
 * that straddles one tick has a coarse duration of one, so then the
 * longest would be a cheap callback that happened to; with two, it ran at
 * least a tick.  Shorter than that, stats() gives the reactor's longest
 * (a pass that ran one callback, without its repr). */
static void set_coarse_look(qloop_diag *d)
{
    int64_t longer = d->longest_ns + 1;
    if (longer < 2 * d->tick_ns)
        longer = 2 * d->tick_ns;
    d->head.coarse_look = d->coarse_slow < longer ? d->coarse_slow : longer;
}

/* What both slow paths do for a callback that took `dt` ns. */
static void diag_note(LoopObject *loop, HandleObject *h, int64_t dt,
                      int longest, int slow)
{
    qloop_diag *d = loop->diag;
    /* As asyncio logs slow callbacks: outside the callback's context. */
    qloop_leave_context(loop);
    if (longest) {
        d->longest_ns = dt;
        d->head.longest_ticks =
            ns_per_tick > 0 ? (uint64_t)((double)dt / ns_per_tick)
                            : UINT64_MAX;
        PyObject *r = PyObject_Repr((PyObject *)h);
        if (!r)
            PyErr_WriteUnraisable((PyObject *)h);
        Py_XSETREF(d->longest_repr, r);
        set_coarse_look(d);
    }
    if (slow && d->on_slow) {
        PyObject *secs = PyFloat_FromDouble((double)dt / 1e9);
        PyObject *res = secs ? PyObject_CallFunctionObjArgs(
                                   d->on_slow, (PyObject *)h, secs, NULL)
                             : NULL;
        Py_XDECREF(secs);
        if (res)
            Py_DECREF(res);
        else
            PyErr_WriteUnraisable(d->on_slow);
    }
}

/* The slow path of the counter: a callback that took `dk` ticks, longer
 * than the longest so far or than the threshold. */
void qloop_diag_after(LoopObject *loop, HandleObject *h, uint64_t dk)
{
    qloop_diag *d = loop->diag;
    if (PyErr_Occurred())
        return;
    diag_note(loop, h, (int64_t)((double)dk * ns_per_tick),
              dk > d->head.longest_ticks, dk >= d->head.slow_ticks);
}

/* The slow path of the coarse clock: a callback that started at coarse
 * `t0` (at most a tick before it did) may have been slow or the longest.
 * Measured to the precise clock now, it is never shorter than it ran. */
__attribute__((noinline, cold)) void
qloop_diag_after_coarse(LoopObject *loop, HandleObject *h, int64_t t0)
{
    qloop_diag *d = loop->diag;
    int64_t dt = ql_time_ns() - t0;
    if (PyErr_Occurred())
        return;
    int slow = d->slow_ns > 0 && dt >= d->slow_ns;
    int longest = dt > d->longest_ns;
    if (slow || longest)
        diag_note(loop, h, dt, longest, slow);
}

/* ---- the watchdog thread ------------------------------------------------- */

static void cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu,
                            int64_t deadline)
{
    /* The condition variable waits on CLOCK_MONOTONIC (see wd_start), the
     * clock of the heartbeat. */
    if (deadline <= 0)
        deadline = 0;
    struct timespec ts = {deadline / 1000000000, deadline % 1000000000};
#ifdef __APPLE__
    int64_t rel = deadline - ql_time_ns();
    if (rel < 0)
        rel = 0;
    ts.tv_sec = rel / 1000000000;
    ts.tv_nsec = rel % 1000000000;
    pthread_cond_timedwait_relative_np(cv, mu, &ts);
#else
    pthread_cond_timedwait(cv, mu, &ts);
#endif
}

static void wd_wait_until(qloop_watchdog *wd, int64_t deadline)
{
    cond_wait_until(&wd->cv, &wd->mu, deadline);
}

/* A mutex and a condition that waits on CLOCK_MONOTONIC (ql_time_ns's
 * clock).  0 or an errno. */
static int sync_init(pthread_mutex_t *mu, pthread_cond_t *cv)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
#ifndef __APPLE__
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
#endif
    int rc = pthread_mutex_init(mu, NULL);
    if (rc == 0) {
        rc = pthread_cond_init(cv, &ca);
        if (rc != 0)
            pthread_mutex_destroy(mu);
    }
    pthread_condattr_destroy(&ca);
    return rc;
}

static int interpreter_finalizing(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing();
#else
    return _Py_IsFinalizing();
#endif
}

/* Tell Python; called without wd->mu.  `start` is the heartbeat that
 * began the stall.  For "stall", `t` is now and `still` says whether the
 * loop is still in that stall now that we hold the GIL. */
/* The loop thread's CPU time, or -1. */
static int64_t thread_cpu_ns(qloop_watchdog *wd)
{
    struct timespec ts;
    if (!wd->have_loop_cpu || clock_gettime(wd->loop_cpu, &ts) != 0)
        return -1;
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void wd_report(qloop_watchdog *wd, const char *event, int64_t start,
                      int64_t t)
{
    if (interpreter_finalizing())
        return;
    /* How long the GIL took to come: a loop thread blocked in a system
     * call or running Python hands it over within the switch interval;
     * much longer means C code held it (the stack shows where the loop
     * thread was when it let go). */
    /* Wall time depends on how busy the machine is; the loop thread's CPU
     * time while we wait does not: a thread blocked in a system call uses
     * none, a Python loop at most a switch interval before it lets go, C
     * code holding the GIL all of the rest of its call. */
    int64_t asked = ql_time_ns(), cpu0 = thread_cpu_ns(wd);
    PyGILState_STATE g = PyGILState_Ensure();
    int64_t gil_wait = ql_time_ns() - asked;
    int64_t gil_cpu = cpu0 >= 0 ? thread_cpu_ns(wd) - cpu0 : -1;
    int still = ql_loop_busy_since(wd->ql) == start;
    PyObject *res = PyObject_CallFunction(wd->on_stall, "skLLiLL", event,
                                          wd->tid, (long long)start,
                                          (long long)t, still,
                                          (long long)gil_wait,
                                          (long long)gil_cpu);
    if (res)
        Py_DECREF(res);
    else
        PyErr_WriteUnraisable(wd->on_stall);
    PyGILState_Release(g);
}

static void *wd_main(void *arg)
{
    qloop_watchdog *wd = arg;
    int64_t th = wd->threshold_ns;
    /* While a stall lasts, look for its end this often: it only bounds
     * how late the end is reported, not the duration measured. */
    int64_t fine = th / 10 > 1000000 ? th / 10 : 1000000;
    pthread_mutex_lock(&wd->mu);
    while (!wd->stop) {
        int64_t busy = ql_loop_busy_since(wd->ql);
        int64_t now = ql_time_ns();
        if (busy == 0 || now - busy < th) {
            wd_wait_until(wd, (busy ? busy : now) + th);
            continue;
        }
        pthread_mutex_unlock(&wd->mu);
        wd_report(wd, "stall", busy, now);
        pthread_mutex_lock(&wd->mu);
        int64_t end;
        for (;;) {
            int64_t b = ql_loop_busy_since(wd->ql);
            if (b != busy) {
                end = b ? b : ql_loop_idle_since(wd->ql);
                break;
            }
            if (wd->stop) { /* cannot happen: the run ended first */
                end = ql_time_ns();
                break;
            }
            wd_wait_until(wd, ql_time_ns() + fine);
        }
        pthread_mutex_unlock(&wd->mu);
        wd_report(wd, "end", busy, end);
        pthread_mutex_lock(&wd->mu);
    }
    pthread_mutex_unlock(&wd->mu);
    return NULL;
}

static int wd_start(LoopObject *loop, qloop_diag *d)
{
    qloop_watchdog *wd = PyMem_Calloc(1, sizeof(*wd));
    if (!wd) {
        PyErr_NoMemory();
        return -1;
    }
    wd->ql = loop->ql;
    wd->threshold_ns = d->watchdog_ns;
    wd->on_stall = d->on_stall;
    wd->tid = PyThread_get_thread_ident();
#if defined(_POSIX_THREAD_CPUTIME) && !defined(__APPLE__)
    wd->have_loop_cpu =
        pthread_getcpuclockid(pthread_self(), &wd->loop_cpu) == 0;
#endif
    int rc = sync_init(&wd->mu, &wd->cv);
    if (rc == 0) {
        rc = pthread_create(&wd->thread, NULL, wd_main, wd);
        if (rc != 0) {
            pthread_cond_destroy(&wd->cv);
            pthread_mutex_destroy(&wd->mu);
        }
    }
    if (rc != 0) {
        PyMem_Free(wd);
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    d->wd = wd;
    return 0;
}

static void wd_stop(qloop_diag *d)
{
    qloop_watchdog *wd = d->wd;
    pthread_mutex_lock(&wd->mu);
    wd->stop = 1;
    pthread_cond_signal(&wd->cv);
    pthread_mutex_unlock(&wd->mu);
    /* The watchdog may be waiting for the GIL to report the run's last
     * stall: let it. */
    Py_BEGIN_ALLOW_THREADS
    pthread_join(wd->thread, NULL);
    Py_END_ALLOW_THREADS
    pthread_cond_destroy(&wd->cv);
    pthread_mutex_destroy(&wd->mu);
    PyMem_Free(wd);
    d->wd = NULL;
}

/* ---- the ticker thread (timed mode's coarse clock) ------------------------ */

static void *tick_main(void *arg)
{
    qloop_ticker *t = arg;
    pthread_mutex_lock(&t->mu);
    while (!t->stop) {
        int64_t now = ql_time_ns();
        atomic_store_explicit(t->out, now, memory_order_relaxed);
        cond_wait_until(&t->cv, &t->mu,
                        now + atomic_load_explicit(&t->period_ns,
                                                   memory_order_relaxed));
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

static void set_slow_ticks(qloop_diag *d); /* below: also picks the clock */

/* Not started, on failure or when the threshold is too small for it:
 * the counter times callbacks instead.  Never raises. */
static void tick_start(qloop_diag *d)
{
    qloop_ticker *t = PyMem_Calloc(1, sizeof(*t));
    if (!t)
        return;
    t->out = &d->head.now; /* the diag outlives the run, hence the ticker */
    atomic_store(t->out, ql_time_ns());
    t->pid = getpid();
    atomic_store(&t->period_ns, TICK_MAX_NS);
    if (sync_init(&t->mu, &t->cv) != 0) {
        PyMem_Free(t);
        return;
    }
    if (pthread_create(&t->thread, NULL, tick_main, t) != 0) {
        pthread_cond_destroy(&t->cv);
        pthread_mutex_destroy(&t->mu);
        PyMem_Free(t);
        return;
    }
    d->ticker = t;
    set_slow_ticks(d);
}

static void tick_stop(qloop_diag *d)
{
    qloop_ticker *t = d->ticker;
    d->ticker = NULL;
    set_slow_ticks(d); /* back to the counter (callbacks run at close) */
    /* In a child forked during the run there is no thread, and its mutex
     * may have been copied locked: only free. */
    if (t->pid == getpid()) {
        pthread_mutex_lock(&t->mu);
        t->stop = 1;
        pthread_cond_signal(&t->cv);
        pthread_mutex_unlock(&t->mu);
        pthread_join(t->thread, NULL); /* never waits for the GIL: quick */
        pthread_cond_destroy(&t->cv);
        pthread_mutex_destroy(&t->mu);
    }
    PyMem_Free(t);
}

int qloop_diag_run_start(LoopObject *loop)
{
    qloop_diag *d = loop->diag;
    if (!QL_DIAG || !d)
        return 0;
    if (loop->timed && !d->ticker && d->slow_ns >= COARSE_MIN_NS)
        tick_start(d);
    if (d->watchdog_ns <= 0 || !d->on_stall || d->wd)
        return 0;
    if (wd_start(loop, d) < 0) {
        if (d->ticker)
            tick_stop(d);
        return -1;
    }
    return 0;
}

void qloop_diag_run_end(LoopObject *loop)
{
    qloop_diag *d = loop->diag;
    if (d && d->ticker)
        tick_stop(d);
    if (d && d->wd) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        wd_stop(d);
        PyErr_Restore(type, value, tb);
    }
}

/* ---- methods ------------------------------------------------------------- */

static void set_slow_ticks(qloop_diag *d)
{
    int reports = d->slow_ns > 0 && d->on_slow && ns_per_tick > 0;
    if (!reports)
        d->head.slow_ticks = UINT64_MAX;
    else
        d->head.slow_ticks = (uint64_t)((double)d->slow_ns / ns_per_tick);
    qloop_ticker *t = d->ticker;
    if (t && d->slow_ns >= COARSE_MIN_NS) {
        int64_t p = d->slow_ns / 20;
        p = p < TICK_MIN_NS ? TICK_MIN_NS : p > TICK_MAX_NS ? TICK_MAX_NS : p;
        atomic_store_explicit(&t->period_ns, p, memory_order_relaxed);
        d->tick_ns = p;
        /* Half the threshold: a callback that short is already long
         * enough that the precise clock it then costs is nothing, and a
         * ticker late by up to half the threshold still misses none. */
        d->coarse_slow = reports ? d->slow_ns / 2 : INT64_MAX;
        set_coarse_look(d);
        d->head.coarse = 1;
    } else {
        d->head.coarse = 0;
    }
}

/* _diag_configure(timed, on_slow, watchdog_seconds, on_stall) */
PyObject *qloop_loop__diag_configure(LoopObject *self, PyObject *const *args,
                                     Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "_diag_configure() takes exactly 4 arguments");
        return NULL;
    }
    int timed = PyObject_IsTrue(args[0]);
    if (timed < 0)
        return NULL;
    double wds = PyFloat_AsDouble(args[2]);
    if (wds == -1.0 && PyErr_Occurred())
        return NULL;
    if (!QL_DIAG && (timed || wds > 0)) {
        PyErr_SetString(PyExc_RuntimeError, NO_DIAG);
        return NULL;
    }
    qloop_diag *d = diag_get(self);
    if (!d)
        return NULL;
    if (d->wd) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot change diagnostics of a running loop");
        return NULL;
    }
    Py_XSETREF(d->on_slow, args[1] == Py_None ? NULL : Py_NewRef(args[1]));
    Py_XSETREF(d->on_stall, args[3] == Py_None ? NULL : Py_NewRef(args[3]));
    d->watchdog_ns = wds > 0 ? (int64_t)(wds * 1e9) : 0;
    if (timed)
        calibrate_counter();
    set_slow_ticks(d);
    self->timed = (char)timed;
    Py_RETURN_NONE;
}

/* _diag_slow_threshold(seconds): what slow_callback_duration says. */
PyObject *qloop_loop__diag_slow_threshold(LoopObject *self, PyObject *arg)
{
    double s = PyFloat_AsDouble(arg);
    if (s == -1.0 && PyErr_Occurred())
        return NULL;
    qloop_diag *d = diag_get(self);
    if (!d)
        return NULL;
    /* A threshold of 0 reports every callback, as asyncio's `>=` does. */
    d->slow_ns = s >= 0 ? (int64_t)(s * 1e9) : -1;
    if (d->slow_ns == 0)
        d->slow_ns = 1;
    set_slow_ticks(d);
    Py_RETURN_NONE;
}

/* The p-th percentile (0 < p < 1) of the lag histogram, interpolated
 * linearly inside its log2 bucket and clamped to the maximum. */
static int64_t lag_percentile(const ql_stats *s, uint64_t total, double p)
{
    if (total == 0)
        return 0;
    double target = p * (double)total;
    uint64_t cum = 0;
    for (int k = 0; k < QL_LAG_BUCKETS; k++) {
        uint64_t c = s->lag_hist[k];
        if (c && (double)(cum + c) >= target) {
            double lo = k == 0 ? 0 : (double)(1ull << (k - 1)) * 1000.0;
            double hi = (double)(1ull << k) * 1000.0;
            double v = lo + (hi - lo) * ((target - (double)cum) / (double)c);
            int64_t r = (int64_t)v;
            return r > s->lag_max_ns ? s->lag_max_ns : r;
        }
        cum += c;
    }
    return s->lag_max_ns;
}

PyObject *qloop_loop_stats(LoopObject *self, PyObject *Py_UNUSED(ignored))
{
    ql_stats s;
    memset(&s, 0, sizeof s);
    size_t ready = 0, timers = 0, ios = 0;
    qloop_diag *d = self->diag;
    if (self->ql) {
        ql_loop_stats(self->ql, &s);
        ready = ql_loop_ready_count(self->ql);
        timers = ql_loop_timer_count(self->ql);
        ios = ql_loop_io_count(self->ql);
    } else if (d && d->has_final) {
        s = d->final; /* closed: the counts at close, nothing queued */
    }
    int64_t longest = s.longest_single_ns;
    PyObject *longest_repr = Py_None;
    if (d && d->longest_ns > 0) {
        /* Timed mode measured each callback, with its repr: to the
         * counter's precision under COARSE_MIN_NS, else those of two
         * ticks and more (P = threshold/20, 0.5-5 ms), never shorter than
         * they ran and at most a tick longer (set_coarse_look). */
        longest = d->longest_ns;
        if (d->longest_repr)
            longest_repr = d->longest_repr;
    }
    uint64_t total = 0;
    PyObject *hist = PyList_New(QL_LAG_BUCKETS);
    if (!hist)
        return NULL;
    for (int k = 0; k < QL_LAG_BUCKETS; k++) {
        PyObject *c = PyLong_FromUnsignedLongLong(s.lag_hist[k]);
        if (!c) {
            Py_DECREF(hist);
            return NULL;
        }
        PyList_SET_ITEM(hist, k, c);
        total += s.lag_hist[k];
    }
    PyObject *lag = Py_BuildValue(
        "{s:N,s:K,s:L,s:L,s:L}", "buckets_us", hist, "count",
        (unsigned long long)total, "max_ns", (long long)s.lag_max_ns,
        "p50_ns", (long long)lag_percentile(&s, total, 0.50), "p99_ns",
        (long long)lag_percentile(&s, total, 0.99));
    if (!lag)
        return NULL;
    PyObject *res = Py_BuildValue(
        "{s:K,s:K,s:K,s:K,s:L,s:L,s:L,s:O,s:n,s:n,s:n,s:N}", "iterations",
        (unsigned long long)s.iterations, "callbacks_run",
        (unsigned long long)s.callbacks_run, "io_events",
        (unsigned long long)s.io_events, "timers_fired",
        (unsigned long long)s.timers_fired, "poll_ns", (long long)s.poll_ns,
        "callback_ns", (long long)s.callback_ns, "longest_callback_ns",
        (long long)longest, "longest_callback", longest_repr, "ready",
        (Py_ssize_t)ready, "timers", (Py_ssize_t)timers, "watchers",
        (Py_ssize_t)ios, "loop_lag", lag);
    /* Built without diagnostics: not measured, rather than zero. */
    static const char *const not_measured[] = {
        "callback_ns", "longest_callback_ns", "longest_callback", "loop_lag"};
    for (size_t i = 0; !QL_DIAG && res && i < 4 /* not_measured */; i++)
        if (PyDict_SetItemString(res, not_measured[i], Py_None) < 0)
            Py_CLEAR(res);
    return res;
}
