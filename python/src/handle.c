/*
 * Handle and TimerHandle: what call_soon, call_later and call_at return.
 *
 * They mirror asyncio.Handle / asyncio.TimerHandle: cancel(), cancelled(),
 * get_context(), when(), the ordering and hashing of timer handles, and
 * the private attributes (_callback, _args, _cancelled, ...) that asyncio's
 * own helpers read, so asyncio's repr code applies to them unchanged.
 *
 * Freelists: as Cython's @freelist does, a dead handle's memory is kept and
 * re-initialised with PyObject_Init(), never resurrected.
 *
 * Handles owned by the loop alone are not tracked by the garbage collector.
 * Why and when it is sound:
 *
 *  - call_soon/call_soon_threadsafe/call_later/call_at make their handle
 *    untracked (qloop_handle_new with track == 0); the ready ring, or the
 *    timer heap while armed, owns one reference.  Any other reference
 *    (the one call_soon returns, a list the caller keeps) is someone
 *    else's.
 *  - CLoop's tp_traverse, for each queued or armed handle h
 *    (qloop_handle_visit_owned):
 *      tracked             -> visits h itself, as any container does;
 *      untracked, refcnt 1 -> the loop is h's only owner, so h's references
 *                             are in effect the loop's: it visits them
 *                             (handle_traverse on h), each once;
 *      untracked, refcnt>1 -> visits nothing.
 *    The collector subtracts, for each object, the references that the
 *    traversals of the collected objects report; it is correct as long as
 *    no reference is reported that the reporter does not own (a reference
 *    reported twice, or one owned by an outside holder, could make a
 *    reachable object look garbage).  Case 1 is ordinary; in case 2 the
 *    loop owns h exclusively and h's references are counted once (h is
 *    untracked, so no traversal of h itself runs, and visits of h by
 *    others are no-ops since untracked objects are never "collecting");
 *    in case 3 h's references count as external: nothing is freed wrongly,
 *    but a cycle through h would wait until h leaves the loop, for ever if
 *    the loop itself is garbage.  So a traverse that meets case 3 puts the
 *    loop on a list, and a gc.callbacks hook at the end of that collection
 *    tracks those handles (qloop_handle_track_if_shared): from then on
 *    they are case 1 and the next collection sees the cycle.
 *  - A handle leaving the loop's ownership (run, cancelled, dropped at
 *    close) goes through qloop_handle_release(): if someone else still
 *    holds it, it is tracked first, so cycles through it from then on are
 *    collectable as with any tracked object.  An untracked handle is never
 *    held by anything but the loop and its creator's first reference, and
 *    never outside the loop's ring/heap except on the way to being freed.
 *  - Refcounts do not change inside a collection's counting phases (no
 *    Python code runs there), so the three cases are decided consistently.
 *  - Handles made for fd watchers (Watcher holds them) stay tracked.
 */
#include <math.h>
#include <stddef.h>

#include "qloop_ext.h"

/* Larger than a typical burst of handles in flight (uvloop keeps 250):
 * a handle from the freelist skips the allocator and does not advance the
 * GC's allocation count, which is what triggers collections.  At most a
 * few hundred KiB stay cached. */
#define FREELIST_MAX 4096

static HandleObject *handle_freelist[FREELIST_MAX];
static int handle_nfree;
static TimerHandleObject *timer_freelist[FREELIST_MAX];
static int timer_nfree;

void qloop_freelists_clear(void)
{
    while (handle_nfree)
        PyObject_GC_Del(handle_freelist[--handle_nfree]);
    while (timer_nfree)
        PyObject_GC_Del(timer_freelist[--timer_nfree]);
}

static HandleObject *handle_alloc(PyTypeObject *type, int timer)
{
    HandleObject *h = NULL;
    size_t size =
        timer ? sizeof(TimerHandleObject) : sizeof(CallbackHandleObject);
    if (timer && timer_nfree)
        h = (HandleObject *)timer_freelist[--timer_nfree];
    else if (!timer && handle_nfree)
        h = handle_freelist[--handle_nfree];
    if (h) {
        PyObject_Init((PyObject *)h, type);
    } else {
        h = (HandleObject *)_PyObject_GC_New(type);
        if (!h)
            return NULL;
    }
    memset((char *)h + sizeof(PyObject), 0, size - sizeof(PyObject));
    return h;
}

static void handle_clear_args(HandleObject *h)
{
    PyObject **args = h->args;
    Py_ssize_t n = h->nargs;
    h->args = NULL;
    h->nargs = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        Py_XDECREF(args[i]);
    if (args && !h->args_inline)
        PyMem_Free(args - 1);
    h->args_inline = 0;
}

/* Drop the callback and its arguments (asyncio does so at cancel()). */
static inline void clear_callback(HandleObject *h)
{
    Py_CLEAR(h->callback);
    handle_clear_args(h);
}

void qloop_handle_clear_callback(HandleObject *h) { clear_callback(h); }

HandleObject *qloop_handle_new(LoopObject *loop, PyTypeObject *type,
                               PyObject *callback, PyObject *const *args,
                               Py_ssize_t nargs, PyObject *context, int track)
{
    qloop_state *st = loop->st;
    int timer = type == st->TimerHandleType;
    HandleObject *h = handle_alloc(type, timer);
    if (!h)
        return NULL;
    if (timer && nargs <= QLT_INLINE_ARGS) {
        h->args = &((TimerHandleObject *)h)->argbuf[1];
        h->args_inline = 1;
    } else if (!timer && nargs <= QLH_INLINE_ARGS) {
        h->args = &((CallbackHandleObject *)h)->argbuf[1];
        h->args_inline = 1;
    } else {
        PyObject **block = PyMem_Malloc(sizeof(PyObject *) * (nargs + 1));
        if (!block) {
            Py_DECREF(h);
            return (HandleObject *)PyErr_NoMemory();
        }
        h->args = block + 1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        h->args[i] = Py_NewRef(args[i]);
    h->nargs = nargs;
    h->callback = Py_NewRef(callback);
    h->loop = (LoopObject *)Py_NewRef((PyObject *)loop);
    if (context == NULL || context == Py_None) {
        if (qloop_context_capture(loop, h) < 0) {
            Py_DECREF(h);
            return NULL;
        }
    } else {
        h->context = Py_NewRef(context);
    }
    if (timer)
        ((TimerHandleObject *)h)->timer.heap_index = QL_TIMER_INACTIVE;
    if (loop->debug) {
        h->source_traceback = PyObject_CallNoArgs(st->extract_stack);
        if (!h->source_traceback) {
            Py_DECREF(h);
            return NULL;
        }
    }
    if (track)
        PyObject_GC_Track(h);
    return h;
}

/* The loop drops its reference (see the comment at the top). */
void qloop_handle_release(HandleObject *h)
{
    qloop_handle_track_if_shared(h);
    Py_DECREF(h);
}

/* CLoop's tp_traverse for a handle it owns one reference to. */
int qloop_handle_visit_owned(HandleObject *h, visitproc visit, void *arg,
                             int *shared)
{
    if (PyObject_GC_IsTracked((PyObject *)h))
        return visit((PyObject *)h, arg);
    if (Py_REFCNT(h) == 1)
        return Py_TYPE(h)->tp_traverse((PyObject *)h, visit, arg);
    *shared = 1;
    return 0;
}

/* Outside a collection: track the loop's untracked handles that someone
 * else holds too, so that cycles through them become collectable. */
void qloop_handle_track_if_shared(HandleObject *h)
{
    if (Py_REFCNT(h) > 1 && !PyObject_GC_IsTracked((PyObject *)h))
        PyObject_GC_Track(h);
}

/* Run the callback in the handle's context.  Contexts are entered lazily:
 * consecutive callbacks of one Task share its context without an exit and
 * re-enter (see qloop_enter_context). */
void qloop_handle_run(LoopObject *loop, HandleObject *h)
{
    PyObject *cb = h->callback;
    PyObject *ctx = h->context;
    int shared = h->ctx_shared;
    if (shared && !(ctx = qloop_context_for_run(loop, h))) {
        qloop_report_callback_error(loop, h, 1);
        return;
    }
    if (ctx != loop->cur_ctx && qloop_enter_context(loop, ctx) < 0) {
        qloop_report_callback_error(loop, h, 1);
        return;
    }
    /* cancel() from inside the callback must not free what is running. */
    h->running = 1;
    PyObject *res = PyObject_Vectorcall(
        cb, h->args, (size_t)h->nargs | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    h->running = 0;
    if (shared) {
        /* ctx is the entered work context: loop->cur_ctx holds it. */
        qloop_context_after_run(loop, h, ctx);
    }
    if (res)
        Py_DECREF(res);
    else
        qloop_report_callback_error(loop, h, 1);
    if (h->cancelled && h->callback)
        qloop_handle_clear_callback(h);
}

/* ---- type slots ---------------------------------------------------------- */

static int handle_traverse(HandleObject *h, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(h));
    Py_VISIT(h->loop);
    Py_VISIT(h->callback);
    Py_VISIT(h->context);
    Py_VISIT(h->source_traceback);
    Py_VISIT(h->repr);
    for (Py_ssize_t i = 0; i < h->nargs; i++)
        Py_VISIT(h->args[i]);
    return 0;
}

static int handle_clear(HandleObject *h)
{
    clear_callback(h);
    Py_CLEAR(h->context);
    Py_CLEAR(h->source_traceback);
    Py_CLEAR(h->repr);
    Py_CLEAR(h->loop);
    return 0;
}

static void handle_dealloc(HandleObject *h)
{
    PyTypeObject *type = Py_TYPE(h);
    int timer = type->tp_basicsize == (Py_ssize_t)sizeof(TimerHandleObject);
    PyObject_GC_UnTrack(h);
    if (h->weakreflist)
        PyObject_ClearWeakRefs((PyObject *)h);
    handle_clear(h);
    if (timer && timer_nfree < FREELIST_MAX)
        timer_freelist[timer_nfree++] = (TimerHandleObject *)h;
    else if (!timer && handle_nfree < FREELIST_MAX)
        handle_freelist[handle_nfree++] = h;
    else
        PyObject_GC_Del(h);
    Py_DECREF(type);
}

static PyObject *handle_repr(HandleObject *h)
{
    if (h->repr)
        return Py_NewRef(h->repr);
    if (!h->loop)
        return PyUnicode_FromFormat("<%s>", Py_TYPE(h)->tp_name);
    return PyObject_CallOneArg(h->loop->st->handle_repr, (PyObject *)h);
}

static void handle_mark_cancelled(HandleObject *h)
{
    h->cancelled = 1;
    if (h->loop && h->loop->debug && !h->repr) {
        /* Keep the repr for debugging, as asyncio does. */
        h->repr = handle_repr(h);
        if (!h->repr)
            PyErr_Clear();
    }
    if (!h->running)
        clear_callback(h);
}

static PyObject *handle_cancel(HandleObject *h, PyObject *Py_UNUSED(ignored))
{
    if (!h->cancelled)
        handle_mark_cancelled(h);
    Py_RETURN_NONE;
}

static PyObject *handle_cancelled(HandleObject *h,
                                  PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(h->cancelled);
}

static PyObject *handle_get_context(HandleObject *h,
                                    PyObject *Py_UNUSED(ignored))
{
    if (qloop_context_own(h) < 0)
        return NULL;
    return Py_NewRef(h->context ? h->context : Py_None);
}

/* handle._run(): asyncio's entry point, called by Python code (maybe from
 * inside another callback).  It enters and exits the handle's context
 * itself, leaving the loop's lazily entered one alone, and like asyncio's
 * Handle._run re-raises SystemExit and KeyboardInterrupt. */
static PyObject *handle__run(HandleObject *h, PyObject *Py_UNUSED(ignored))
{
    if (h->cancelled || !h->callback || !h->loop)
        Py_RETURN_NONE;
    if (qloop_context_own(h) < 0)
        return NULL;
    LoopObject *loop = h->loop;
    PyObject *res = NULL;
    Py_INCREF(h);
    Py_INCREF(loop);
    if (PyContext_Enter(h->context) == 0) {
        h->running = 1;
        res = PyObject_Vectorcall(h->callback, h->args,
                                  (size_t)h->nargs |
                                      PY_VECTORCALL_ARGUMENTS_OFFSET,
                                  NULL);
        h->running = 0;
        if (PyContext_Exit(h->context) < 0)
            Py_CLEAR(res);
    }
    PyObject *result = Py_None;
    if (res) {
        Py_DECREF(res);
    } else if (PyErr_ExceptionMatches(PyExc_SystemExit) ||
               PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
        result = NULL;
    } else {
        PyObject *exc_saved = loop->pending_exc;
        loop->pending_exc = NULL;
        qloop_report_callback_error(loop, h, 0);
        if (loop->pending_exc) { /* the handler raised SystemExit & co. */
            PyObject *exc = loop->pending_exc;
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
            result = NULL;
        }
        loop->pending_exc = exc_saved;
    }
    if (h->cancelled && h->callback)
        qloop_handle_clear_callback(h);
    Py_DECREF(loop);
    Py_DECREF(h);
    return Py_XNewRef(result);
}

static PyObject *handle_get_callback(HandleObject *h, void *Py_UNUSED(c))
{
    return Py_NewRef(h->callback ? h->callback : Py_None);
}

static PyObject *handle_get_args(HandleObject *h, void *Py_UNUSED(c))
{
    if (!h->args)
        Py_RETURN_NONE;
    PyObject *t = PyTuple_New(h->nargs);
    if (!t)
        return NULL;
    for (Py_ssize_t i = 0; i < h->nargs; i++)
        PyTuple_SET_ITEM(t, i, Py_NewRef(h->args[i]));
    return t;
}

static PyObject *handle_get_cancelled(HandleObject *h, void *Py_UNUSED(c))
{
    return PyBool_FromLong(h->cancelled);
}

static PyObject *handle_get_loop(HandleObject *h, void *Py_UNUSED(c))
{
    return Py_NewRef(h->loop ? (PyObject *)h->loop : Py_None);
}

static PyObject *handle_get_source_traceback(HandleObject *h,
                                             void *Py_UNUSED(c))
{
    return Py_NewRef(h->source_traceback ? h->source_traceback : Py_None);
}

static PyObject *handle_get_repr_cache(HandleObject *h, void *Py_UNUSED(c))
{
    return Py_NewRef(h->repr ? h->repr : Py_None);
}

static PyMethodDef handle_methods[] = {
    {"cancel", (PyCFunction)handle_cancel, METH_NOARGS, NULL},
    {"cancelled", (PyCFunction)handle_cancelled, METH_NOARGS, NULL},
    {"get_context", (PyCFunction)handle_get_context, METH_NOARGS, NULL},
    {"_run", (PyCFunction)handle__run, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef handle_getset[] = {
    {"_callback", (getter)handle_get_callback, NULL, NULL, NULL},
    {"_args", (getter)handle_get_args, NULL, NULL, NULL},
    {"_cancelled", (getter)handle_get_cancelled, NULL, NULL, NULL},
    {"_loop", (getter)handle_get_loop, NULL, NULL, NULL},
    {"_source_traceback", (getter)handle_get_source_traceback, NULL, NULL,
     NULL},
    {"_context", (getter)handle_get_context, NULL, NULL, NULL},
    {"_repr", (getter)handle_get_repr_cache, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef handle_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(HandleObject, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot handle_slots[] = {
    {Py_tp_dealloc, handle_dealloc},
    {Py_tp_traverse, handle_traverse},
    {Py_tp_clear, handle_clear},
    {Py_tp_repr, handle_repr},
    {Py_tp_methods, handle_methods},
    {Py_tp_getset, handle_getset},
    {Py_tp_members, handle_members},
    {0, NULL},
};

PyType_Spec qloop_handle_spec = {
    .name = "qloop._qloop.Handle",
    .basicsize = sizeof(CallbackHandleObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = handle_slots,
};

/* ---- TimerHandle --------------------------------------------------------- */

static PyObject *timer_cancel(TimerHandleObject *t,
                              PyObject *Py_UNUSED(ignored))
{
    HandleObject *h = &t->base;
    if (h->cancelled)
        Py_RETURN_NONE;
    handle_mark_cancelled(h);
    if (t->base.scheduled) {
        /* Out of the heap now: cancelled timers never pile up. */
        t->base.scheduled = 0;
        if (h->loop && h->loop->ql)
            ql_timer_stop(h->loop->ql, &t->timer);
        qloop_handle_release(h); /* the loop's reference */
    }
    Py_RETURN_NONE;
}

static PyObject *timer_when(TimerHandleObject *t, PyObject *Py_UNUSED(ignored))
{
    return PyFloat_FromDouble(t->when);
}

static PyObject *timer_get_scheduled(TimerHandleObject *t, void *Py_UNUSED(c))
{
    return PyBool_FromLong(t->base.scheduled);
}

static Py_hash_t timer_hash(TimerHandleObject *t)
{
    PyObject *w = PyFloat_FromDouble(t->when);
    if (!w)
        return -1;
    Py_hash_t hash = PyObject_Hash(w);
    Py_DECREF(w);
    return hash;
}

static PyObject *timer_richcompare(PyObject *a, PyObject *b, int op)
{
    if (Py_TYPE(b) != Py_TYPE(a))
        Py_RETURN_NOTIMPLEMENTED;
    TimerHandleObject *x = (TimerHandleObject *)a, *y = (TimerHandleObject *)b;
    int eq = -1;
    if (op == Py_EQ || op == Py_NE || op == Py_LE || op == Py_GE) {
        /* As asyncio: same when, callback, args and cancelled state. */
        eq = 0;
        if (x->when == y->when && x->base.cancelled == y->base.cancelled) {
            PyObject *cx = handle_get_callback(&x->base, NULL);
            PyObject *cy = handle_get_callback(&y->base, NULL);
            PyObject *ax = handle_get_args(&x->base, NULL);
            PyObject *ay = handle_get_args(&y->base, NULL);
            if (cx && cy && ax && ay) {
                eq = PyObject_RichCompareBool(cx, cy, Py_EQ);
                if (eq > 0)
                    eq = PyObject_RichCompareBool(ax, ay, Py_EQ);
            } else {
                eq = -1;
            }
            Py_XDECREF(cx);
            Py_XDECREF(cy);
            Py_XDECREF(ax);
            Py_XDECREF(ay);
            if (eq < 0)
                return NULL;
        }
    }
    switch (op) {
    case Py_EQ:
        return PyBool_FromLong(eq);
    case Py_NE:
        return PyBool_FromLong(!eq);
    case Py_LT:
        return PyBool_FromLong(x->when < y->when);
    case Py_GT:
        return PyBool_FromLong(x->when > y->when);
    case Py_LE:
        return PyBool_FromLong(x->when < y->when || eq);
    case Py_GE:
        return PyBool_FromLong(x->when > y->when || eq);
    }
    Py_RETURN_NOTIMPLEMENTED;
}

static PyObject *timer_get_when(TimerHandleObject *t, void *Py_UNUSED(c))
{
    return PyFloat_FromDouble(t->when);
}

static PyMethodDef timer_methods[] = {
    {"cancel", (PyCFunction)timer_cancel, METH_NOARGS, NULL},
    {"when", (PyCFunction)timer_when, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef timer_getset[] = {
    {"_when", (getter)timer_get_when, NULL, NULL, NULL},
    {"_scheduled", (getter)timer_get_scheduled, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot timer_slots[] = {
    {Py_tp_dealloc, handle_dealloc},
    {Py_tp_traverse, handle_traverse},
    {Py_tp_clear, handle_clear},
    {Py_tp_repr, handle_repr},
    {Py_tp_methods, timer_methods},
    {Py_tp_getset, timer_getset},
    {Py_tp_hash, timer_hash},
    {Py_tp_richcompare, timer_richcompare},
    {0, NULL},
};

PyType_Spec qloop_timer_handle_spec = {
    .name = "qloop._qloop.TimerHandle",
    .basicsize = sizeof(TimerHandleObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = timer_slots,
};
