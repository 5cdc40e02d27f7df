/*
 * Contexts of handles scheduled without context=, without a copy each.
 *
 * asyncio's Handle copies the current context when it is made
 * (contextvars.copy_context()) and runs the callback in that copy: the
 * callback sees the variables as they were at scheduling time, and what it
 * sets stays in its own context.  A copy is one allocation of a GC-tracked
 * object (CPython's freelist holds 255), so a burst of callbacks allocates
 * contexts and those allocations trigger collections.  Most callbacks set
 * nothing, and callbacks scheduled one after the other mostly see the same
 * variables.  So:
 *
 *  - Snapshot.  The loop keeps one context it copied, `ctx_snap`, which is
 *    never entered and never handed out, so its variables never change.
 *    A handle scheduled while the current context has the same variables
 *    (the same immutable mapping object) shares it (ctx_shared = 1);
 *    otherwise a fresh copy becomes the new snapshot.
 *  - Work context.  A shared handle runs in the loop's private
 *    `ctx_work`, a copy of a snapshot, entered lazily like any other
 *    (loop.c), as long as its variables are those of the handle's
 *    snapshot; otherwise a new copy of the snapshot becomes ctx_work.
 *  - A callback that changed its context (its variables are no longer the
 *    snapshot's after the run) keeps it: ctx_work becomes the handle's own
 *    context, as asyncio's would be, and the loop makes a new one when
 *    needed.  So no callback ever sees what another one set.
 *  - get_context() on a shared handle gives it its own context: the work
 *    context if asked from inside its callback (the one it runs in), else
 *    a copy of its snapshot; from then on the handle is an ordinary one.
 *    So every handle's context is a distinct object, as with asyncio.
 *  - Before a poll that may block and when a run ends, the loop drops both
 *    (qloop_context_idle): they keep no variable's value alive longer than
 *    asyncio's handles would, and the next handle makes a new snapshot.
 *  - Comparing the variables needs the context's mapping pointer, which
 *    CPython does not expose: the layout of PyContext (the same from 3.7 to
 *    3.13) is mirrored below and checked at start-up against the running
 *    CPython's behaviour (size, weakref offset, copies share the mapping,
 *    a set changes it, entering flags it).  If the check fails, every
 *    handle gets its own copy, as before.
 */
#include "qloop_ext.h"

typedef struct {
    PyObject_HEAD
    PyObject *prev;
    PyObject *vars; /* immutable mapping (HAMT); copies share it */
    PyObject *weakreflist;
    int entered;
} ctx_mirror;

#define CTX_VARS(c) (((ctx_mirror *)(c))->vars)

static int share_state; /* 0 unchecked, 1 usable, -1 not */

static int check_layout(void)
{
    if (PyContext_Type.tp_basicsize != (Py_ssize_t)sizeof(ctx_mirror) ||
        PyContext_Type.tp_weaklistoffset !=
            (Py_ssize_t)offsetof(ctx_mirror, weakreflist))
        return 0;
    int ok = 0;
    PyObject *a = PyContext_New(), *b = NULL, *var = NULL, *tok = NULL;
    if (!a || !(b = PyContext_Copy(a)))
        goto done;
    PyObject *vars = CTX_VARS(a);
    if (!vars || CTX_VARS(b) != vars || ((ctx_mirror *)a)->entered)
        goto done;
    var = PyContextVar_New("qloop_layout_check", NULL);
    if (!var || PyContext_Enter(a) < 0)
        goto done;
    int entered = ((ctx_mirror *)a)->entered == 1 &&
                  PyThreadState_Get()->context == a;
    tok = PyContextVar_Set(var, Py_None);
    if (PyContext_Exit(a) < 0 || !tok)
        goto done;
    ok = entered && CTX_VARS(a) != vars && CTX_VARS(b) == vars &&
         !((ctx_mirror *)a)->entered;
done:
    PyErr_Clear();
    Py_XDECREF(tok);
    Py_XDECREF(var);
    Py_XDECREF(b);
    Py_XDECREF(a);
    return ok;
}

static int sharing(void)
{
    if (share_state == 0)
        share_state = check_layout() ? 1 : -1;
    return share_state > 0;
}

/* At scheduling, `context` not given: h->context and h->ctx_shared. */
int qloop_context_capture(LoopObject *loop, HandleObject *h)
{
    if (sharing()) {
        PyObject *cur = PyThreadState_Get()->context;
        if (cur && loop->ctx_snap &&
            CTX_VARS(cur) == CTX_VARS(loop->ctx_snap)) {
            h->context = Py_NewRef(loop->ctx_snap);
            h->ctx_shared = 1;
            return 0;
        }
    }
    h->context = PyContext_CopyCurrent();
    if (!h->context)
        return -1;
    if (share_state > 0) {
        Py_XSETREF(loop->ctx_snap, Py_NewRef(h->context));
        h->ctx_shared = 1;
    }
    return 0;
}

/* The context to run a shared handle's callback in (borrowed), or NULL
 * with an exception. */
PyObject *qloop_context_for_run(LoopObject *loop, HandleObject *h)
{
    PyObject *w = loop->ctx_work;
    if (w && CTX_VARS(w) == CTX_VARS(h->context))
        return w;
    w = PyContext_Copy(h->context);
    if (!w)
        return NULL;
    Py_XSETREF(loop->ctx_work, w);
    return w;
}

/* After a shared handle's callback ran in `ran_in` (the work context):
 * if it changed its variables, the context is the handle's from now on. */
void qloop_context_after_run(LoopObject *loop, HandleObject *h,
                             PyObject *ran_in)
{
    if (!h->ctx_shared || CTX_VARS(ran_in) == CTX_VARS(h->context))
        return;
    PyObject *snap = h->context;
    h->context = ran_in; /* takes the loop's reference */
    h->ctx_shared = 0;
    if (loop->ctx_work == ran_in)
        loop->ctx_work = NULL;
    else
        Py_INCREF(ran_in);
    Py_DECREF(snap);
}

void qloop_context_idle(LoopObject *loop)
{
    Py_CLEAR(loop->ctx_snap);
    Py_CLEAR(loop->ctx_work);
}

/* Give a shared handle a context of its own (get_context(), _run()). */
int qloop_context_own(HandleObject *h)
{
    if (!h->ctx_shared)
        return 0;
    LoopObject *loop = h->loop;
    PyObject *own;
    if (h->running && loop && loop->ctx_work &&
        loop->cur_ctx == loop->ctx_work) {
        own = loop->ctx_work; /* the loop's reference moves to h */
        loop->ctx_work = NULL;
    } else {
        own = PyContext_Copy(h->context);
        if (!own)
            return -1;
    }
    Py_SETREF(h->context, own);
    h->ctx_shared = 0;
    return 0;
}
