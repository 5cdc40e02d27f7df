/*
 * CLoop: the C base class of qloop.Loop.
 *
 * It owns the reactor and implements what is hot: call_soon,
 * call_soon_threadsafe, call_later, call_at, time, stop, create_future
 * and get_debug (both in sock.c, next to the imports they use), the run
 * loop itself (_run), and the fd watchers behind add_reader/add_writer
 * (_add_reader, _remove_reader, _add_writer, _remove_writer).  Everything
 * else comes from asyncio's own Python classes, layered in qloop/_loop.py.
 *
 * The GIL is released only around the poll system call (poll hooks); on
 * the way back PyErr_CheckSignals() runs Python signal handlers, so Ctrl-C
 * raises KeyboardInterrupt out of run_forever as it does under asyncio.
 */
#include <errno.h>
#include <math.h>

#include "qloop_ext.h"
#include "diag.h"

/* A poll hook's way to say "a Python exception is set". */
#define QLOOP_EPYERR (-ECANCELED)

/* ---- contexts -------------------------------------------------------------- */

/* Enter `ctx`, leaving the one entered before.  Contexts are left entered
 * between callbacks and exited only when another context is needed, before
 * the poll and when the run ends: "a context is entered only when it is
 * not already the current one".  Nothing but our callbacks runs Python
 * code in between. */
int qloop_enter_context(LoopObject *loop, PyObject *ctx)
{
    if (loop->cur_ctx) {
        PyObject *prev = loop->cur_ctx;
        loop->cur_ctx = NULL;
        int rc = PyContext_Exit(prev);
        Py_DECREF(prev);
        if (rc < 0)
            return -1;
    }
    if (PyContext_Enter(ctx) < 0)
        return -1;
    loop->cur_ctx = Py_NewRef(ctx);
    return 0;
}

void qloop_leave_context(LoopObject *loop)
{
    if (!loop->cur_ctx)
        return;
    PyObject *prev = loop->cur_ctx;
    loop->cur_ctx = NULL;
    if (PyContext_Exit(prev) < 0)
        PyErr_WriteUnraisable(prev);
    Py_DECREF(prev);
}

/* ---- errors from callbacks ----------------------------------------------- */

static PyObject *fetch_exception(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb && value)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

/* SystemExit and KeyboardInterrupt end the run and propagate out of
 * run_forever, as asyncio's Handle._run re-raises them. */
static void stop_with(LoopObject *loop, PyObject *exc)
{
    qloop_stop_with(loop, exc);
}

void qloop_stop_with(LoopObject *loop, PyObject *exc)
{
    if (loop->pending_exc)
        Py_DECREF(exc);
    else
        loop->pending_exc = exc;
    if (loop->ql)
        ql_loop_break(loop->ql);
}

/* With an exception set by handle `h`'s callback: asyncio's
 * "Exception in callback ..." through call_exception_handler. */
void qloop_report_callback_error(LoopObject *loop, HandleObject *h,
                                 int own_context)
{
    PyObject *exc = fetch_exception();
    if (!exc)
        return;
    if (qloop_is_exit_exception(exc)) {
        stop_with(loop, exc);
        return;
    }
    if (own_context)
        qloop_leave_context(loop);
    PyObject *res = PyObject_CallFunctionObjArgs(
        loop->st->handle_exception, (PyObject *)h, exc, NULL);
    Py_DECREF(exc);
    if (res) {
        Py_DECREF(res);
        return;
    }
    exc = fetch_exception();
    if (exc && qloop_is_exit_exception(exc)) {
        stop_with(loop, exc);
        return;
    }
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_XDECREF(exc);
    PyErr_WriteUnraisable((PyObject *)h);
}

/* ---- running handles ------------------------------------------------------- */

/* Debug mode: asyncio's _current_handle and slow-callback warning. */
static void run_handle_debug(LoopObject *loop, HandleObject *h)
{
    qloop_state *st = loop->st;
    if (PyObject_SetAttr((PyObject *)loop, st->str_current_handle,
                         (PyObject *)h) < 0)
        PyErr_Clear();
    int64_t t0 = ql_time_ns();
    qloop_handle_run(loop, h);
    double dt = (ql_time_ns() - t0) / 1e9;
    if (PyObject_SetAttr((PyObject *)loop, st->str_current_handle, Py_None) < 0)
        PyErr_Clear();
    PyObject *slow = PyObject_GetAttr((PyObject *)loop,
                                      st->str_slow_callback_duration);
    double limit = slow ? PyFloat_AsDouble(slow) : 0.1;
    Py_XDECREF(slow);
    if (PyErr_Occurred())
        PyErr_Clear();
    if (dt >= limit) {
        qloop_leave_context(loop);
        PyObject *secs = PyFloat_FromDouble(dt);
        PyObject *res = secs ? PyObject_CallFunctionObjArgs(
                                   st->log_slow, (PyObject *)h, secs, NULL)
                             : NULL;
        Py_XDECREF(secs);
        if (res)
            Py_DECREF(res);
        else
            PyErr_WriteUnraisable((PyObject *)h);
    }
}

static inline void run_handle(LoopObject *loop, HandleObject *h)
{
    if (h->cancelled)
        return;
    if (loop->debug)
        run_handle_debug(loop, h);
    else if (QL_DIAG && loop->timed)
        qloop_diag_run_timed(loop, h);
    else
        qloop_handle_run(loop, h);
}

/* Ring entry: the ring owns one reference to the handle. */
static void ring_run(ql_loop *ql, void *arg)
{
    (void)ql;
    HandleObject *h = arg;
    run_handle(h->loop, h);
    qloop_handle_release(h);
}

/* A fired TimerHandle in the ring: its lag is taken now that it runs, so
 * the wait behind what was queued before it counts (diag.c reads it). */
static void timer_ring_run(ql_loop *ql, void *arg)
{
    TimerHandleObject *t = arg;
    if (QL_DIAG && !t->base.cancelled)
        ql_loop_note_timer_lag(ql, t->timer.deadline, ql_time_ns());
    ring_run(ql, arg);
}

/* Timer: the loop owns one reference while the timer is armed, and hands
 * it to the ring when the timer fires.  Like asyncio's _run_once, a due
 * timer joins the ready queue behind what is already queued instead of
 * overtaking it; the reactor runs the ring first in its next iteration,
 * before polling again, so this costs no extra poll. */
static void timer_fired(ql_loop *ql, ql_timer *timer)
{
    TimerHandleObject *t = timer->data;
    t->base.scheduled = 0;
    if (ql_call_soon(ql, timer_ring_run, t) < 0) {
        /* Out of memory for the ring: run it now rather than lose it. */
        run_handle(t->base.loop, &t->base);
        qloop_handle_release(&t->base);
    }
}

/* ---- poll hooks -------------------------------------------------------------- */

static void poll_enter(ql_loop *ql, void *data)
{
    (void)ql;
    LoopObject *loop = data;
    qloop_leave_context(loop);
    qloop_context_idle(loop);
    loop->saved_tstate = PyEval_SaveThread();
}

/* The end of each iteration's pass: the sends transports deferred. */
static void check_hook(ql_loop *ql, void *data)
{
    (void)ql;
    LoopObject *loop = data;
    if (loop->n_deferred)
        qloop_streams_flush(loop);
}

static int poll_leave(ql_loop *ql, void *data)
{
    (void)ql;
    LoopObject *loop = data;
    PyEval_RestoreThread(loop->saved_tstate);
    loop->saved_tstate = NULL;
    return PyErr_CheckSignals() < 0 ? QLOOP_EPYERR : 0;
}

/* ---- creation and teardown ----------------------------------------------------- */

static PyObject *loop_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    (void)args;
    (void)kw;
    qloop_state *st = qloop_state_from_type(type);
    if (!st)
        return NULL;
    LoopObject *self = (LoopObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->st = st;
    for (int i = 0; i < QLOOP_BIG_READ_SLOTS; i++)
        self->big_read_fd[i] = -1;
    self->watchers = PyDict_New();
    if (!self->watchers) {
        Py_DECREF(self);
        return NULL;
    }
    int rc = ql_loop_new(&self->ql);
    if (rc < 0) {
        self->ql = NULL;
        errno = -rc;
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    ql_loop_set_poll_hooks(self->ql, poll_enter, poll_leave, self);
    ql_loop_set_lag_at_fire(self->ql, 0); /* timer_ring_run notes it */
    return (PyObject *)self;
}

static int visit_ring_entry(ql_callback_fn fn, void *arg, void *ctx)
{
    void **v = ctx;
    visitproc visit = (visitproc)v[0];
    if (fn == ring_run || fn == timer_ring_run)
        return qloop_handle_visit_owned((HandleObject *)arg, visit, v[1],
                                        (int *)v[2]);
    if (fn == qloop_stream_ring_run) /* a transport: always tracked */
        return visit((PyObject *)arg, v[1]);
    return 0;
}

static int visit_timer(ql_timer *timer, void *ctx)
{
    void **v = ctx;
    visitproc visit = (visitproc)v[0];
    return qloop_handle_visit_owned((HandleObject *)timer->data, visit, v[1],
                                    (int *)v[2]);
}

/* Loops whose last traverse met untracked handles held elsewhere too
 * (handle.c, case 3), swept by the gc.callbacks hook below.  A loop
 * leaves the list when swept or deallocated. */
static LoopObject *gc_sweep_list;

static void gc_sweep_unlink(LoopObject *self)
{
    if (!self->gc_sweep_pending)
        return;
    for (LoopObject **p = &gc_sweep_list; *p; p = &(*p)->gc_sweep_next) {
        if (*p == self) {
            *p = self->gc_sweep_next;
            break;
        }
    }
    self->gc_sweep_pending = 0;
    self->gc_sweep_next = NULL;
}

static int sweep_ring_entry(ql_callback_fn fn, void *arg, void *ctx)
{
    (void)ctx;
    if (fn == ring_run || fn == timer_ring_run)
        qloop_handle_track_if_shared((HandleObject *)arg);
    return 0;
}

static int sweep_timer(ql_timer *timer, void *ctx)
{
    (void)ctx;
    qloop_handle_track_if_shared((HandleObject *)timer->data);
    return 0;
}

/* gc.callbacks entry: (phase, info); acts at "stop", outside collection. */
static PyObject *gc_sweep_hook(PyObject *Py_UNUSED(mod), PyObject *const *args,
                               Py_ssize_t nargs)
{
    if (!gc_sweep_list || nargs < 1 || !PyUnicode_Check(args[0]) ||
        PyUnicode_CompareWithASCIIString(args[0], "stop") != 0)
        Py_RETURN_NONE;
    while (gc_sweep_list) {
        LoopObject *loop = gc_sweep_list;
        gc_sweep_list = loop->gc_sweep_next;
        loop->gc_sweep_next = NULL;
        loop->gc_sweep_pending = 0;
        if (loop->ql) {
            ql_loop_visit_ready(loop->ql, sweep_ring_entry, NULL);
            ql_loop_visit_timers(loop->ql, sweep_timer, NULL);
        }
    }
    Py_RETURN_NONE;
}

static PyMethodDef gc_sweep_def = {
    "_qloop_gc_sweep", (PyCFunction)(void (*)(void))gc_sweep_hook,
    METH_FASTCALL, NULL};

int qloop_gc_hook_install(void)
{
    PyObject *gc = PyImport_ImportModule("gc");
    if (!gc)
        return -1;
    PyObject *callbacks = PyObject_GetAttrString(gc, "callbacks");
    Py_DECREF(gc);
    if (!callbacks)
        return -1;
    PyObject *fn = PyCFunction_New(&gc_sweep_def, NULL);
    int rc = fn ? PyList_Append(callbacks, fn) : -1;
    Py_XDECREF(fn);
    Py_DECREF(callbacks);
    return rc;
}

static int loop_traverse(LoopObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->watchers);
    Py_VISIT(self->streams);
    for (Py_ssize_t i = 0; i < self->n_deferred; i++)
        Py_VISIT(self->deferred[i]);
    Py_VISIT(self->pending_exc);
    Py_VISIT(self->cur_ctx);
    Py_VISIT(self->ctx_snap);
    Py_VISIT(self->ctx_work);
    if (qloop_diag_traverse(self, visit, arg))
        return -1;
    if (self->ql) {
        int shared = 0;
        void *v[3] = {(void *)visit, arg, &shared};
        int rc = ql_loop_visit_ready(self->ql, visit_ring_entry, v);
        if (!rc)
            rc = ql_loop_visit_timers(self->ql, visit_timer, v);
        if (shared && !self->gc_sweep_pending) {
            self->gc_sweep_pending = 1;
            self->gc_sweep_next = gc_sweep_list;
            gc_sweep_list = self;
        }
        if (rc)
            return rc;
    }
    return 0;
}

static void watcher_stop(WatcherObject *w);

/* Drop every queued handle, armed timer and watcher; the reactor stays. */
static void loop_release_all(LoopObject *self)
{
    if (self->ql) {
        ql_callback_fn fn;
        void *arg;
        while (ql_loop_pop_ready(self->ql, &fn, &arg))
            if (fn == ring_run || fn == timer_ring_run)
                qloop_handle_release((HandleObject *)arg);
            else if (fn == qloop_stream_ring_run)
                Py_DECREF((PyObject *)arg);
        ql_timer *timer;
        while ((timer = ql_loop_next_timer(self->ql)) != NULL) {
            TimerHandleObject *t = timer->data;
            ql_timer_stop(self->ql, timer);
            t->base.scheduled = 0;
            qloop_handle_release(&t->base);
        }
    }
    if (self->watchers) {
        PyObject *key, *value;
        Py_ssize_t pos = 0;
        while (PyDict_Next(self->watchers, &pos, &key, &value))
            watcher_stop((WatcherObject *)value);
        PyDict_Clear(self->watchers);
    }
    qloop_streams_release(self);
    qloop_streams_drop_deferred(self);
}

static int loop_clear(LoopObject *self)
{
    if (self->ql && ql_loop_is_running(self->ql))
        return 0;
    loop_release_all(self);
    Py_CLEAR(self->watchers);
    Py_CLEAR(self->streams);
    Py_CLEAR(self->pending_exc);
    Py_CLEAR(self->cur_ctx);
    Py_CLEAR(self->ctx_snap);
    Py_CLEAR(self->ctx_work);
    qloop_diag_clear(self);
    return 0;
}

static void loop_dealloc(LoopObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    /* A Python subclass's __del__ (asyncio's unclosed-loop warning) has
     * already run in subtype_dealloc. */
    PyObject_GC_UnTrack(self);
    gc_sweep_unlink(self);
    loop_clear(self);
    qloop_diag_free(self);
    if (self->ql) {
        ql_loop_free(self->ql);
        self->ql = NULL;
    }
    type->tp_free(self);
    Py_DECREF(type);
}

/* ---- argument helpers ------------------------------------------------------------ */

static int closed_error(LoopObject *self)
{
    if (self->closed || !self->ql) {
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return -1;
    }
    return 0;
}

/* Split `context=` from the keywords of a call_* method. */
static PyObject *context_kw_alias;

static int parse_context(LoopObject *self, PyObject *kwnames,
                         PyObject *const *args, Py_ssize_t nargs,
                         const char *fname, PyObject **context)
{
    *context = NULL;
    if (!kwnames)
        return 0;
    Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        /* Keyword names from code objects are interned: identity first
         * (every Task step passes context=).  The C Task's own "context"
         * string is not always the interned one (3.11's static strings),
         * so the first other "context" met is remembered as well. */
        if (name != self->st->str_context && name != context_kw_alias) {
            if (!PyUnicode_Check(name) ||
                PyUnicode_CompareWithASCIIString(name, "context") != 0) {
                PyErr_Format(PyExc_TypeError,
                             "%s() got an unexpected keyword argument '%S'",
                             fname, name);
                return -1;
            }
            if (!context_kw_alias && PyUnicode_CheckExact(name))
                context_kw_alias = Py_NewRef(name); /* kept: one str */
        }
        *context = args[nargs + i];
    }
    return 0;
}

/* Debug mode: asyncio's _check_thread() and _check_callback(). */
static int debug_checks(LoopObject *self, PyObject *callback,
                        const char *method, int check_thread)
{
    qloop_state *st = self->st;
    if (check_thread) {
        PyObject *r = PyObject_CallMethodNoArgs((PyObject *)self,
                                                st->str_check_thread);
        if (!r)
            return -1;
        Py_DECREF(r);
    }
    PyObject *name = PyUnicode_FromString(method);
    if (!name)
        return -1;
    PyObject *r = PyObject_CallFunctionObjArgs(st->check_callback,
                                               (PyObject *)self, callback,
                                               name, NULL);
    Py_DECREF(name);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* ---- scheduling -------------------------------------------------------------------- */

static PyObject *loop_call_soon(LoopObject *self, PyObject *const *args,
                                Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *context;
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError,
                        "call_soon() missing 1 required positional argument: "
                        "'callback'");
        return NULL;
    }
    if (parse_context(self, kwnames, args, nargs, "call_soon", &context) < 0 ||
        closed_error(self) < 0)
        return NULL;
    if (self->debug && debug_checks(self, args[0], "call_soon", 1) < 0)
        return NULL;
    HandleObject *h = qloop_handle_new(self, self->st->HandleType, args[0],
                                       args + 1, nargs - 1, context, 0);
    if (!h)
        return NULL;
    if (ql_call_soon(self->ql, ring_run, h) < 0) {
        Py_DECREF(h);
        return PyErr_NoMemory();
    }
    Py_INCREF(h); /* one for the ring, one for the caller */
    return (PyObject *)h;
}

static PyObject *loop_call_soon_threadsafe(LoopObject *self,
                                           PyObject *const *args,
                                           Py_ssize_t nargsf,
                                           PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *context;
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError,
                        "call_soon_threadsafe() missing 1 required positional "
                        "argument: 'callback'");
        return NULL;
    }
    if (parse_context(self, kwnames, args, nargs, "call_soon_threadsafe",
                      &context) < 0 ||
        closed_error(self) < 0)
        return NULL;
    if (self->debug &&
        debug_checks(self, args[0], "call_soon_threadsafe", 0) < 0)
        return NULL;
    HandleObject *h = qloop_handle_new(self, self->st->HandleType, args[0],
                                       args + 1, nargs - 1, context, 0);
    if (!h)
        return NULL;
    /* Whoever holds the GIL may touch the ring: the loop thread is then
     * either blocked in poll (the GIL is released only around a poll that
     * may block) or waiting for the GIL.  So the handle joins the ring in
     * FIFO order with call_soon, as in asyncio, and only the wakeup is
     * cross-thread.  (A build without the GIL would need the reactor's
     * ql_call_soon_threadsafe instead.) */
    if (ql_call_soon(self->ql, ring_run, h) < 0) {
        Py_DECREF(h);
        return PyErr_NoMemory();
    }
    Py_INCREF(h);
    int rc = ql_loop_wakeup(self->ql);
    if (rc < 0) {
        Py_DECREF(h);
        errno = -rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return (PyObject *)h;
}

/* Seconds on time.monotonic()'s scale to the reactor's nanoseconds,
 * rounded up: a timer never fires before its `when`. */
static int64_t when_to_ns(double when)
{
    if (isnan(when))
        return INT64_MIN; /* asyncio's heap runs it at once, so do we */
    if (!(when < 9.2e9))
        return INT64_MAX;
    if (when < -9.2e9)
        return INT64_MIN;
    /* ceil(when * 1e9) without the libm call: truncate toward zero, then
     * step up once if that fell below. */
    double ns = when * 1e9;
    int64_t deadline = (int64_t)ns;
    if ((double)deadline < ns)
        deadline++;
    if ((double)deadline / 1e9 < when)
        deadline++;
    return deadline;
}

static PyObject *schedule_timer(LoopObject *self, double when,
                                PyObject *const *args, Py_ssize_t nargs,
                                PyObject *context)
{
    HandleObject *h = qloop_handle_new(self, self->st->TimerHandleType,
                                       args[0], args + 1, nargs - 1, context,
                                       0);
    if (!h)
        return NULL;
    TimerHandleObject *t = (TimerHandleObject *)h;
    t->when = when;
    ql_timer_init(&t->timer, timer_fired, t);
    if (ql_timer_start(self->ql, &t->timer, when_to_ns(when)) < 0) {
        Py_DECREF(h);
        return PyErr_NoMemory();
    }
    t->base.scheduled = 1;
    Py_INCREF(h); /* one for the loop, one for the caller */
    return (PyObject *)h;
}

/* call_at(when, ...) and call_later(delay, ...): one body, asyncio's
 * messages.  `relative`: args[0] is a delay from now. */
static PyObject *call_timer(LoopObject *self, PyObject *const *args,
                           Py_ssize_t nargsf, PyObject *kwnames,
                           const char *fname, int relative)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    const char *first = relative ? "delay" : "when";
    PyObject *context;
    if (nargs < 2) {
        if (nargs)
            PyErr_Format(PyExc_TypeError,
                         "%s() missing 1 required positional argument: "
                         "'callback'", fname);
        else
            PyErr_Format(PyExc_TypeError,
                         "%s() missing 2 required positional arguments: "
                         "'%s' and 'callback'", fname, first);
        return NULL;
    }
    context = NULL;
    if (kwnames &&
        parse_context(self, kwnames, args, nargs, fname, &context) < 0)
        return NULL;
    if (args[0] == Py_None) {
        PyErr_SetString(PyExc_TypeError, relative ? "delay must not be None"
                                                  : "when cannot be None");
        return NULL;
    }
    if (closed_error(self) < 0)
        return NULL;
    double when = PyFloat_CheckExact(args[0]) ? PyFloat_AS_DOUBLE(args[0])
                                              : PyFloat_AsDouble(args[0]);
    if (when == -1.0 && PyErr_Occurred())
        return NULL;
    /* asyncio's call_later checks inside call_at, under that name. */
    if (self->debug && debug_checks(self, args[1], "call_at", 1) < 0)
        return NULL;
    if (relative)
        when += (double)ql_time_ns() / 1e9;
    return schedule_timer(self, when, args + 1, nargs - 1, context);
}

static PyObject *loop_call_at(LoopObject *self, PyObject *const *args,
                              Py_ssize_t nargsf, PyObject *kwnames)
{
    return call_timer(self, args, nargsf, kwnames, "call_at", 0);
}

static PyObject *loop_call_later(LoopObject *self, PyObject *const *args,
                                 Py_ssize_t nargsf, PyObject *kwnames)
{
    return call_timer(self, args, nargsf, kwnames, "call_later", 1);
}

static PyObject *loop_time(LoopObject *self, PyObject *Py_UNUSED(ignored))
{
    (void)self;
    return PyFloat_FromDouble((double)ql_time_ns() / 1e9);
}

static PyObject *loop_stop(LoopObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->ql)
        ql_loop_stop(self->ql);
    Py_RETURN_NONE;
}

/* The run loop behind run_forever(): until stop(), or until a callback
 * raises SystemExit/KeyboardInterrupt, or a signal handler raises. */
static PyObject *loop__run(LoopObject *self, PyObject *Py_UNUSED(ignored))
{
    if (closed_error(self) < 0)
        return NULL;
    if (ql_loop_is_running(self->ql)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "This event loop is already running");
        return NULL;
    }
    Py_INCREF(self);
    if (qloop_diag_run_start(self) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    int rc = ql_loop_run(self->ql, QL_RUN_DEFAULT);
    qloop_leave_context(self);
    qloop_diag_run_end(self);
    qloop_context_idle(self);
    PyObject *result = Py_None;
    if (self->pending_exc) {
        PyObject *exc = self->pending_exc;
        self->pending_exc = NULL;
        if (rc == QLOOP_EPYERR)
            PyErr_Clear(); /* the callback's exception wins */
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
        result = NULL;
    } else if (rc == QLOOP_EPYERR) {
        result = NULL;
    } else if (rc < 0) {
        errno = -rc;
        PyErr_SetFromErrno(PyExc_OSError);
        result = NULL;
    }
    Py_DECREF(self);
    return Py_XNewRef(result);
}

/* The reactor's part of close(): drop what is queued, armed or watched. */
static PyObject *loop__close_reactor(LoopObject *self,
                                     PyObject *Py_UNUSED(ignored))
{
    if (self->closed)
        Py_RETURN_NONE;
    if (self->ql && ql_loop_is_running(self->ql)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "Cannot close a running event loop");
        return NULL;
    }
    self->closed = 1;
    loop_release_all(self);
    qloop_diag_keep_stats(self); /* stats() still answers once closed */
    /* The poller's fds go now, not when the object dies; every path that
     * touches self->ql checks it first. */
    ql_loop_free(self->ql);
    self->ql = NULL;
    Py_RETURN_NONE;
}

static PyObject *loop__set_c_debug(LoopObject *self, PyObject *arg)
{
    int v = PyObject_IsTrue(arg);
    if (v < 0)
        return NULL;
    self->debug = (char)v;
    Py_RETURN_NONE;
}

/* set_write_batching(enabled) / get_write_batching(): whether stream
 * transports' writes from callbacks wait for the end of the pass
 * (stream.c).  Off by default: asyncio's write() sends at once. */
static PyObject *loop_set_write_batching(LoopObject *self, PyObject *arg)
{
    int v = PyObject_IsTrue(arg);
    if (v < 0)
        return NULL;
    if (!v && self->n_deferred)
        qloop_streams_flush(self); /* what was deferred goes out now */
    self->batch_writes = (char)v;
    /* The hook only while batching is on: nothing in the poll loop else. */
    if (self->ql)
        ql_loop_set_check_hook(self->ql, v ? check_hook : NULL, self);
    Py_RETURN_NONE;
}

static PyObject *loop_get_write_batching(LoopObject *self,
                                         PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(self->batch_writes);
}

static PyObject *loop__stats(LoopObject *self, PyObject *Py_UNUSED(ignored))
{
    ql_stats s = {0};
    size_t ready = 0, timers = 0, ios = 0;
    if (self->ql) {
        ql_loop_stats(self->ql, &s);
        ready = ql_loop_ready_count(self->ql);
        timers = ql_loop_timer_count(self->ql);
        ios = ql_loop_io_count(self->ql);
    }
    return Py_BuildValue(
        "{s:K,s:K,s:K,s:K,s:L,s:n,s:n,s:n}", "iterations",
        (unsigned long long)s.iterations, "callbacks_run",
        (unsigned long long)s.callbacks_run, "io_events",
        (unsigned long long)s.io_events, "timers_fired",
        (unsigned long long)s.timers_fired, "poll_ns", (long long)s.poll_ns,
        "ready", (Py_ssize_t)ready, "timers", (Py_ssize_t)timers, "watchers",
        (Py_ssize_t)ios);
}

/* ---- fd watchers ------------------------------------------------------------------ */

/* selectors._fileobj_to_fd, with its messages. */
static int fileobj_to_fd(PyObject *fileobj)
{
    long fd;
    if (PyLong_Check(fileobj)) {
        fd = PyLong_AsLong(fileobj);
        if (fd == -1 && PyErr_Occurred())
            return -1;
    } else {
        PyObject *r = PyObject_CallMethod(fileobj, "fileno", NULL);
        if (!r || !PyLong_Check(r)) {
            Py_XDECREF(r);
            if (!PyErr_Occurred() ||
                PyErr_ExceptionMatches(PyExc_AttributeError) ||
                PyErr_ExceptionMatches(PyExc_TypeError) ||
                PyErr_ExceptionMatches(PyExc_ValueError)) {
                PyErr_Clear();
                PyErr_Format(PyExc_ValueError, "Invalid file object: %R",
                             fileobj);
            }
            return -1;
        }
        fd = PyLong_AsLong(r);
        Py_DECREF(r);
        if (fd == -1 && PyErr_Occurred())
            return -1;
    }
    if (fd < 0 || fd > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "Invalid file descriptor: %ld", fd);
        return -1;
    }
    return (int)fd;
}

static void watcher_io(ql_loop *ql, ql_io *io, unsigned events);

static void watcher_stop(WatcherObject *w)
{
    if (w->loop && w->loop->ql && ql_io_active(&w->io))
        ql_io_stop(w->loop->ql, &w->io);
    Py_CLEAR(w->reader);
    Py_CLEAR(w->writer);
}

static int watcher_update(WatcherObject *w)
{
    unsigned ev = (w->reader ? QL_READABLE : 0) | (w->writer ? QL_WRITABLE : 0);
    int rc = ql_io_start(w->loop->ql, &w->io, ev);
    if (rc < 0) {
        errno = -rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static PyObject *add_watch_fileobj(LoopObject *self, int fd,
                                   PyObject *fileobj, int writing,
                                   PyObject *callback, PyObject *const *args,
                                   Py_ssize_t nargs);

PyObject *qloop_add_watch(LoopObject *self, int fd, int writing,
                          PyObject *callback, PyObject *const *args,
                          Py_ssize_t nargs)
{
    return add_watch_fileobj(self, fd, NULL, writing, callback, args, nargs);
}

static PyObject *add_watch_fileobj(LoopObject *self, int fd,
                                   PyObject *fileobj, int writing,
                                   PyObject *callback, PyObject *const *args,
                                   Py_ssize_t nargs)
{
    if (closed_error(self) < 0)
        return NULL;
    HandleObject *h = qloop_handle_new(self, self->st->HandleType, callback,
                                       args, nargs, NULL, 1);
    if (!h)
        return NULL;
    PyObject *key = PyLong_FromLong(fd);
    if (!key) {
        Py_DECREF(h);
        return NULL;
    }
    WatcherObject *w = (WatcherObject *)PyDict_GetItemWithError(self->watchers,
                                                                key);
    int created = 0;
    if (!w) {
        if (PyErr_Occurred())
            goto fail;
        w = PyObject_GC_New(WatcherObject, self->st->WatcherType);
        if (!w)
            goto fail;
        w->loop = (LoopObject *)Py_NewRef((PyObject *)self);
        w->fileobj = NULL;
        w->reader = w->writer = NULL;
        ql_io_init(&w->io, fd, watcher_io, w);
        PyObject_GC_Track(w);
        if (PyDict_SetItem(self->watchers, key, (PyObject *)w) < 0) {
            Py_DECREF(w);
            goto fail;
        }
        Py_DECREF(w); /* the dict holds it */
        created = 1;
    }
    if (fileobj)
        Py_XSETREF(w->fileobj, Py_NewRef(fileobj));
    HandleObject **slot = writing ? &w->writer : &w->reader;
    HandleObject *old = *slot;
    *slot = h; /* takes our reference */
    if (watcher_update(w) < 0) {
        *slot = old;
        if (created)
            PyDict_DelItem(self->watchers, key);
        Py_DECREF(key);
        Py_DECREF(h);
        return NULL;
    }
    if (old) {
        /* asyncio cancels the handle it replaces. */
        if (!old->cancelled) {
            old->cancelled = 1;
            if (!old->running)
                qloop_handle_clear_callback(old);
        }
        Py_DECREF(old);
    }
    Py_DECREF(key);
    return Py_NewRef((PyObject *)h);
fail:
    Py_DECREF(key);
    Py_DECREF(h);
    return NULL;
}

static int remove_watch_fd(LoopObject *self, PyObject *key, int writing);

int qloop_remove_watch(LoopObject *self, int fd, int writing)
{
    if (self->closed || !self->ql)
        return 0;
    PyObject *key = PyLong_FromLong(fd);
    if (!key)
        return -1;
    int rc = remove_watch_fd(self, key, writing);
    Py_DECREF(key);
    return rc;
}

static int remove_watch_fd(LoopObject *self, PyObject *key, int writing)
{
    WatcherObject *w = (WatcherObject *)PyDict_GetItemWithError(self->watchers,
                                                                key);
    if (!w)
        return PyErr_Occurred() ? -1 : 0;
    HandleObject **slot = writing ? &w->writer : &w->reader;
    HandleObject *h = *slot;
    if (!h)
        return 0;
    *slot = NULL;
    if (!h->cancelled) {
        h->cancelled = 1;
        if (!h->running)
            qloop_handle_clear_callback(h);
    }
    Py_DECREF(h);
    if (!w->reader && !w->writer) {
        Py_INCREF(w);
        ql_io_stop(self->ql, &w->io);
        int rc = PyDict_DelItem(self->watchers, key);
        Py_DECREF(w);
        if (rc < 0)
            return -1;
    } else if (watcher_update(w) < 0) {
        /* The fd went away behind our back: nothing is watched now. */
        PyErr_Clear();
    }
    return 1;
}

/* selectors' _fileobj_lookup: the fd, or else (a socket closed since it
 * was registered) the fd it was registered under.  -1 with ValueError. */
static int lookup_fd(LoopObject *self, PyObject *fileobj)
{
    int fd = fileobj_to_fd(fileobj);
    if (fd >= 0 || !PyErr_ExceptionMatches(PyExc_ValueError) ||
        !self->watchers)
        return fd;
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(self->watchers, &pos, &key, &value)) {
        if (((WatcherObject *)value)->fileobj == fileobj) {
            PyErr_Clear();
            return ((WatcherObject *)value)->io.fd;
        }
    }
    return -1;
}

static PyObject *remove_watch(LoopObject *self, PyObject *fileobj,
                              int writing)
{
    if (self->closed || !self->ql)
        Py_RETURN_FALSE;
    int fd = lookup_fd(self, fileobj);
    if (fd < 0)
        return NULL;
    PyObject *key = PyLong_FromLong(fd);
    if (!key)
        return NULL;
    int rc = remove_watch_fd(self, key, writing);
    Py_DECREF(key);
    if (rc < 0)
        return NULL;
    return PyBool_FromLong(rc);
}

static PyObject *add_watch(LoopObject *self, PyObject *const *args,
                           Py_ssize_t nargs, int writing)
{
    if (nargs < 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes at least 2 arguments",
                     writing ? "_add_writer" : "_add_reader");
        return NULL;
    }
    if (closed_error(self) < 0)
        return NULL;
    int fd = fileobj_to_fd(args[0]);
    if (fd < 0)
        return NULL;
    return add_watch_fileobj(self, fd, args[0], writing, args[1], args + 2,
                             nargs - 2);
}

static PyObject *loop__add_reader(LoopObject *self, PyObject *const *args,
                                  Py_ssize_t nargs)
{
    return add_watch(self, args, nargs, 0);
}

static PyObject *loop__add_writer(LoopObject *self, PyObject *const *args,
                                  Py_ssize_t nargs)
{
    return add_watch(self, args, nargs, 1);
}

static PyObject *loop__remove_reader(LoopObject *self, PyObject *fileobj)
{
    return remove_watch(self, fileobj, 0);
}

static PyObject *loop__remove_writer(LoopObject *self, PyObject *fileobj)
{
    return remove_watch(self, fileobj, 1);
}

/* _watched(fd) -> (reader handle or None, writer handle or None) or None:
 * what a selector's get_key() would tell, for asyncio's reprs. */
static PyObject *loop__watched(LoopObject *self, PyObject *fileobj)
{
    if (!self->watchers)
        Py_RETURN_NONE;
    int fd = lookup_fd(self, fileobj);
    if (fd < 0)
        return NULL;
    PyObject *key = PyLong_FromLong(fd);
    if (!key)
        return NULL;
    WatcherObject *w =
        (WatcherObject *)PyDict_GetItemWithError(self->watchers, key);
    Py_DECREF(key);
    if (!w) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(OO)", w->reader ? (PyObject *)w->reader : Py_None,
                         w->writer ? (PyObject *)w->writer : Py_None);
}

/* Readiness: run the reader, then the writer.  Errors and hang-ups go to
 * both, as selectors.EpollSelector reports them.  A handle cancelled while
 * registered is removed instead, as asyncio's _process_events does. */
static void watcher_run_side(WatcherObject *w, int writing)
{
    LoopObject *loop = w->loop;
    HandleObject *h = writing ? w->writer : w->reader;
    if (!h)
        return;
    if (h->cancelled) {
        PyObject *key = PyLong_FromLong(w->io.fd);
        if (!key || remove_watch_fd(loop, key, writing) < 0)
            PyErr_WriteUnraisable((PyObject *)loop);
        Py_XDECREF(key);
        return;
    }
    /* Into the ready queue behind what is already there, as asyncio's
     * _process_events does; the ring owns the new reference. */
    Py_INCREF(h);
    if (ql_call_soon(loop->ql, ring_run, h) < 0) {
        run_handle(loop, h);
        Py_DECREF(h);
    }
}

static void watcher_io(ql_loop *ql, ql_io *io, unsigned events)
{
    WatcherObject *w = io->data;
    Py_INCREF(w);
    if (events & (QL_READABLE | QL_ERROR | QL_HANGUP))
        watcher_run_side(w, 0);
    if ((events & (QL_WRITABLE | QL_ERROR | QL_HANGUP)) && w->loop &&
        !w->loop->pending_exc && ql_io_active(&w->io))
        watcher_run_side(w, 1);
    (void)ql;
    Py_DECREF(w);
}

static int watcher_traverse(WatcherObject *w, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(w));
    Py_VISIT(w->loop);
    Py_VISIT(w->fileobj);
    Py_VISIT(w->reader);
    Py_VISIT(w->writer);
    return 0;
}

static int watcher_clear(WatcherObject *w)
{
    watcher_stop(w);
    Py_CLEAR(w->fileobj);
    Py_CLEAR(w->loop);
    return 0;
}

static void watcher_dealloc(WatcherObject *w)
{
    PyTypeObject *type = Py_TYPE(w);
    PyObject_GC_UnTrack(w);
    watcher_clear(w);
    PyObject_GC_Del(w);
    Py_DECREF(type);
}

static PyType_Slot watcher_slots[] = {
    {Py_tp_dealloc, watcher_dealloc},
    {Py_tp_traverse, watcher_traverse},
    {Py_tp_clear, watcher_clear},
    {0, NULL},
};

PyType_Spec qloop_watcher_spec = {
    .name = "qloop._qloop.Watcher",
    .basicsize = sizeof(WatcherObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = watcher_slots,
};

/* ---- the type ------------------------------------------------------------------------ */

static PyMethodDef loop_methods[] = {
    {"call_soon", (PyCFunction)(void (*)(void))loop_call_soon,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {"call_soon_threadsafe",
     (PyCFunction)(void (*)(void))loop_call_soon_threadsafe,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {"call_later", (PyCFunction)(void (*)(void))loop_call_later,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {"call_at", (PyCFunction)(void (*)(void))loop_call_at,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {"time", (PyCFunction)loop_time, METH_NOARGS, NULL},
    {"stop", (PyCFunction)loop_stop, METH_NOARGS, NULL},
    {"_run", (PyCFunction)loop__run, METH_NOARGS, NULL},
    {"_close_reactor", (PyCFunction)loop__close_reactor, METH_NOARGS, NULL},
    {"_set_c_debug", (PyCFunction)loop__set_c_debug, METH_O, NULL},
    {"set_write_batching", (PyCFunction)loop_set_write_batching, METH_O,
     NULL},
    {"get_write_batching", (PyCFunction)loop_get_write_batching,
     METH_NOARGS, NULL},
    {"get_debug", (PyCFunction)qloop_loop_get_debug, METH_NOARGS, NULL},
    {"create_future", (PyCFunction)qloop_loop_create_future, METH_NOARGS,
     NULL},
    {"_stats", (PyCFunction)loop__stats, METH_NOARGS, NULL},
    {"stats", (PyCFunction)qloop_loop_stats, METH_NOARGS, NULL},
    {"_diag_configure", (PyCFunction)(void (*)(void))qloop_loop__diag_configure,
     METH_FASTCALL, NULL},
    {"_diag_slow_threshold", (PyCFunction)qloop_loop__diag_slow_threshold,
     METH_O, NULL},
    {"_add_reader", (PyCFunction)(void (*)(void))loop__add_reader,
     METH_FASTCALL, NULL},
    {"_add_writer", (PyCFunction)(void (*)(void))loop__add_writer,
     METH_FASTCALL, NULL},
    {"_remove_reader", (PyCFunction)loop__remove_reader, METH_O, NULL},
    {"_remove_writer", (PyCFunction)loop__remove_writer, METH_O, NULL},
    {"_watched", (PyCFunction)loop__watched, METH_O, NULL},
    /* sock.c; recvfrom/recvfrom_into/sendto exist from 3.11, as in asyncio */
    {"sock_recv", (PyCFunction)(void (*)(void))qloop_sock_recv,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {"sock_recv_into", (PyCFunction)(void (*)(void))qloop_sock_recv_into,
     METH_FASTCALL | METH_KEYWORDS, NULL},
#if PY_VERSION_HEX >= 0x030B0000
    {"sock_recvfrom", (PyCFunction)(void (*)(void))qloop_sock_recvfrom,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {"sock_recvfrom_into",
     (PyCFunction)(void (*)(void))qloop_sock_recvfrom_into,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {"sock_sendto", (PyCFunction)(void (*)(void))qloop_sock_sendto,
     METH_FASTCALL | METH_KEYWORDS, NULL},
#endif
    {"sock_sendall", (PyCFunction)(void (*)(void))qloop_sock_sendall,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {"sock_connect", (PyCFunction)(void (*)(void))qloop_sock_connect,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {"sock_accept", (PyCFunction)(void (*)(void))qloop_sock_accept,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot loop_slots[] = {
    {Py_tp_new, loop_new},
    {Py_tp_dealloc, loop_dealloc},
    {Py_tp_traverse, loop_traverse},
    {Py_tp_clear, loop_clear},
    {Py_tp_methods, loop_methods},
    {0, NULL},
};

PyType_Spec qloop_loop_spec = {
    .name = "qloop._qloop.CLoop",
    .basicsize = sizeof(LoopObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = loop_slots,
};
