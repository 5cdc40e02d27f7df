/*
 * The CPython binding over the reactor: shared declarations.
 *
 * Objects:
 *  - Handle / TimerHandle: what call_soon / call_at return.  Arguments are
 *    kept inline (no tuple) behind one spare slot for vectorcall's
 *    PY_VECTORCALL_ARGUMENTS_OFFSET; a TimerHandle embeds its ql_timer, so
 *    the heap node lives inside the handle.  Both come from freelists.
 *  - CLoop: the C base of qloop.Loop.  It owns the ql_loop and implements
 *    the hot paths; qloop/_loop.py layers asyncio's own Python code on top.
 *  - Watcher: one per watched fd, holding the reader and writer handles.
 *
 * Ownership: the ready ring owns one reference to each queued handle, the
 * loop one to each armed TimerHandle, the watcher table one to each
 * Watcher.  All of them are visited by CLoop's tp_traverse; handles the
 * loop alone owns are not tracked by the GC (see handle.c).
 */
#ifndef QLOOP_EXT_H
#define QLOOP_EXT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "qloop.h"

/* Arguments kept inside a Handle / a TimerHandle (more: a heap block). */
#define QLH_INLINE_ARGS 4
#define QLT_INLINE_ARGS 2

typedef struct {
    /* Types */
    PyTypeObject *LoopType;
    PyTypeObject *HandleType;
    PyTypeObject *TimerHandleType;
    PyTypeObject *WatcherType;
    /* Python helpers from qloop._loop, registered by _set_helpers():
     * the slow paths that asyncio itself writes in Python. */
    PyObject *handle_exception; /* (handle, exc) -> None */
    PyObject *handle_repr;      /* (handle) -> str */
    PyObject *extract_stack;    /* () -> list, debug mode only */
    PyObject *log_slow;         /* (handle, seconds) -> None */
    PyObject *check_callback;   /* (loop, callback, method_name) -> None */
    PyObject *str_check_thread;
    PyObject *str_current_handle;
    PyObject *str_slow_callback_duration;
    PyObject *str_context;
    /* sock.c */
    PyTypeObject *SockCoroutineType;
    PyTypeObject *SockWaiterType;
    PyObject *sock_names;   /* tuple of interned method names */
    PyObject *sock_imports; /* tuple of classes and functions, on first use */
    /* stream.c */
    PyTypeObject *StreamTransportType;
    PyObject *stream_names; /* tuple of interned names */
} qloop_state;

/* SystemExit and KeyboardInterrupt end a run instead of being reported,
 * as asyncio's Handle._run re-raises them. */
static inline int qloop_is_exit_exception(PyObject *exc)
{
    return PyErr_GivenExceptionMatches(exc, PyExc_SystemExit) ||
           PyErr_GivenExceptionMatches(exc, PyExc_KeyboardInterrupt);
}

/* One buffer every read lands in before it is copied into an exactly-sized
 * bytes (the GIL is held from recv() until the bytes are made): stream.c's
 * transports and sock.c's sock_recv.  Defined in sock.c. */
#define QLOOP_READ_BUF_SIZE (256 * 1024) /* asyncio's max_size */
extern char qloop_read_buf[QLOOP_READ_BUF_SIZE];

/* obj.name(...) through vectorcall: no bound method, no tuple. */
static inline PyObject *qloop_call_method0(PyObject *name, PyObject *obj)
{
    PyObject *argv[2] = {NULL, obj};
    return PyObject_VectorcallMethod(
        name, argv + 1, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static inline PyObject *qloop_call_method1(PyObject *name, PyObject *obj,
                                           PyObject *a)
{
    PyObject *argv[3] = {NULL, obj, a};
    return PyObject_VectorcallMethod(
        name, argv + 1, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static inline PyObject *qloop_call_method2(PyObject *name, PyObject *obj,
                                           PyObject *a, PyObject *b)
{
    PyObject *argv[4] = {NULL, obj, a, b};
    return PyObject_VectorcallMethod(
        name, argv + 1, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

typedef struct LoopObject LoopObject;
#define QLOOP_BIG_READ_SLOTS 64
typedef struct qloop_diag qloop_diag; /* diag.c */

/* The fields every handle has.  Handle and TimerHandle each append their
 * own inline argument slots, so a timer handle, of which a program may hold
 * hundreds of thousands, stays small (176 bytes with the GC header): what
 * schedule, cancel() and dealloc touch comes first, debug-only and
 * rarely-set fields after it. */
typedef struct HandleObject {
    PyObject_HEAD
    LoopObject *loop;           /* strong */
    PyObject *callback;         /* NULL once cancelled (unless running) */
    PyObject *context;
    PyObject **args;            /* past a spare slot: inline, or a heap block */
    Py_ssize_t nargs;
    char cancelled;
    char running;
    char ctx_shared;            /* context is a shared snapshot: context.c */
    char args_inline;           /* args points into the handle itself */
    char scheduled;             /* TimerHandle: armed in the loop's heap */
    PyObject *weakreflist;
    PyObject *source_traceback; /* debug mode only */
    PyObject *repr;             /* kept at cancel in debug mode */
} HandleObject;

/* What call_soon returns. */
typedef struct {
    HandleObject base;
    PyObject *argbuf[1 + QLH_INLINE_ARGS];
} CallbackHandleObject;

typedef struct {
    HandleObject base;
    ql_timer timer;
    double when;
    /* Fewer than a Handle: call_later(delay, cb, fut, result), as
     * asyncio.sleep() does, is the common case. */
    PyObject *argbuf[1 + QLT_INLINE_ARGS];
} TimerHandleObject;

typedef struct {
    PyObject_HEAD
    LoopObject *loop;
    PyObject *fileobj; /* as registered last (a selector key's fileobj) */
    ql_io io;
    HandleObject *reader;
    HandleObject *writer;
} WatcherObject;

struct LoopObject {
    PyObject_HEAD
    ql_loop *ql;
    qloop_state *st;
    PyThreadState *saved_tstate; /* while polling */
    PyObject *cur_ctx;           /* context entered lazily, see enter_context */
    PyObject *pending_exc;       /* SystemExit/KeyboardInterrupt ending a run */
    PyObject *watchers;          /* dict: fd -> Watcher */
    PyObject *streams;           /* set: StreamTransports whose fd is watched */
    /* StreamTransports whose sends wait for the end of the pass (strong;
     * stream.c) */
    PyObject **deferred;
    Py_ssize_t n_deferred, deferred_cap;
    char closed;
    char debug;
    char batch_writes; /* set_write_batching(): see stream.c */
    /* sock.c: fds whose last direct sock_recv() read 32 KiB or more, by
     * fd % QLOOP_BIG_READ_SLOTS (a slot holds the fd, or -1) */
    int big_read_fd[QLOOP_BIG_READ_SLOTS];
    /* Its traverse met handles it does not own alone: see handle.c. */
    char gc_sweep_pending;
    LoopObject *gc_sweep_next;
    PyObject *ctx_snap;          /* shared context snapshot: context.c */
    PyObject *ctx_work;          /* where shared-snapshot handles run */
    char timed;        /* diag.c: time each callback */
    qloop_diag *diag;  /* diag.c: NULL until diagnostics are used */
};

/* handle.c */
extern PyType_Spec qloop_handle_spec;
extern PyType_Spec qloop_timer_handle_spec;
HandleObject *qloop_handle_new(LoopObject *loop, PyTypeObject *type,
                               PyObject *callback, PyObject *const *args,
                               Py_ssize_t nargs, PyObject *context, int track);
/* Untracked handles owned by the loop: see handle.c. */
void qloop_handle_release(HandleObject *h);
void qloop_handle_track_if_shared(HandleObject *h);
int qloop_handle_visit_owned(HandleObject *h, visitproc visit, void *arg,
                             int *shared);
void qloop_handle_run(LoopObject *loop, HandleObject *h);
void qloop_handle_clear_callback(HandleObject *h);
void qloop_freelists_clear(void);

/* context.c: contexts of handles scheduled without context= */
int qloop_context_capture(LoopObject *loop, HandleObject *h);
PyObject *qloop_context_for_run(LoopObject *loop, HandleObject *h);
void qloop_context_after_run(LoopObject *loop, HandleObject *h,
                             PyObject *ran_in);
int qloop_context_own(HandleObject *h);
/* Idle (about to block, or the run ended): drop the snapshot and work
 * context, so that they hold no context variable's value longer than the
 * handles that need it. */
void qloop_context_idle(LoopObject *loop);

/* loop.c */
extern PyType_Spec qloop_loop_spec;
extern PyType_Spec qloop_watcher_spec;
int qloop_enter_context(LoopObject *loop, PyObject *ctx);
/* Appends the sweep of untracked shared handles to gc.callbacks. */
int qloop_gc_hook_install(void);
/* add_reader/add_writer from C: `callback(*args)` runs on readiness (any
 * callable; a C type with vectorcall is cheapest).  Returns a new reference
 * to the handle, or NULL with an exception.  Replaces (and cancels) a
 * previous reader/writer of the fd, as asyncio does. */
PyObject *qloop_add_watch(LoopObject *loop, int fd, int writing,
                          PyObject *callback, PyObject *const *args,
                          Py_ssize_t nargs);
/* remove_reader/remove_writer from C: 1 if removed, 0 if none, -1 on error. */
int qloop_remove_watch(LoopObject *loop, int fd, int writing);
void qloop_leave_context(LoopObject *loop);
/* With the callback's exception set: asyncio's "Exception in callback"
 * report.  `own_context`: the loop entered h's context lazily and the
 * report is made outside it, as asyncio's is. */
void qloop_report_callback_error(LoopObject *loop, HandleObject *h,
                                 int own_context);

/* sock.c: the sock_* methods of CLoop (METH_FASTCALL | METH_KEYWORDS),
 * returning coroutines; the SockCoroutine and SockWaiter types. */
PyObject *qloop_sock_recv(LoopObject *self, PyObject *const *args,
                          Py_ssize_t nargsf, PyObject *kwnames);
/* sock.c also has CLoop.create_future and CLoop.get_debug (METH_NOARGS). */
PyObject *qloop_loop_create_future(LoopObject *loop, PyObject *unused);
PyObject *qloop_loop_get_debug(LoopObject *loop, PyObject *unused);
PyObject *qloop_sock_recv_into(LoopObject *self, PyObject *const *args,
                               Py_ssize_t nargsf, PyObject *kwnames);
PyObject *qloop_sock_recvfrom(LoopObject *self, PyObject *const *args,
                              Py_ssize_t nargsf, PyObject *kwnames);
PyObject *qloop_sock_recvfrom_into(LoopObject *self, PyObject *const *args,
                                   Py_ssize_t nargsf, PyObject *kwnames);
PyObject *qloop_sock_sendall(LoopObject *self, PyObject *const *args,
                             Py_ssize_t nargsf, PyObject *kwnames);
PyObject *qloop_sock_sendto(LoopObject *self, PyObject *const *args,
                            Py_ssize_t nargsf, PyObject *kwnames);
PyObject *qloop_sock_connect(LoopObject *self, PyObject *const *args,
                             Py_ssize_t nargsf, PyObject *kwnames);
PyObject *qloop_sock_accept(LoopObject *self, PyObject *const *args,
                            Py_ssize_t nargsf, PyObject *kwnames);
int qloop_sock_exec(PyObject *module, qloop_state *st);
int qloop_sock_traverse(qloop_state *st, visitproc visit, void *arg);
void qloop_sock_clear(qloop_state *st);

/* datagram.c: adds _datagram_type() to the module. */
int qloop_datagram_exec(PyObject *module);
/* stream.c: the C stream transport (TCP and Unix sockets).  Its ql_io
 * callback queues qloop_stream_ring_run(transport) in the ready ring; the
 * ring entry owns one reference to the transport. */
void qloop_stream_ring_run(ql_loop *ql, void *arg);
/* Stop watching every transport of the loop and empty loop->streams. */
void qloop_streams_release(LoopObject *loop);
/* The reactor's check hook: send what write() deferred during the pass. */
void qloop_streams_flush(LoopObject *loop);
/* Teardown: forget the deferred list (its transports are being dropped). */
void qloop_streams_drop_deferred(LoopObject *loop);
int qloop_stream_exec(PyObject *module, qloop_state *st);
int qloop_stream_traverse(qloop_state *st, visitproc visit, void *arg);
void qloop_stream_clear(qloop_state *st);
/* loop.c: end the run with SystemExit/KeyboardInterrupt `exc` (stolen). */
void qloop_stop_with(LoopObject *loop, PyObject *exc);

/* diag.c: stats(), slow-callback timing, the stall watchdog */
int qloop_diag_run_start(LoopObject *loop);
void qloop_diag_run_end(LoopObject *loop);
int qloop_diag_traverse(LoopObject *loop, visitproc visit, void *arg);
void qloop_diag_clear(LoopObject *loop);
void qloop_diag_free(LoopObject *loop);
void qloop_diag_keep_stats(LoopObject *loop);
PyObject *qloop_loop_stats(LoopObject *self, PyObject *ignored);
PyObject *qloop_loop__diag_configure(LoopObject *self, PyObject *const *args,
                                     Py_ssize_t nargs);
PyObject *qloop_loop__diag_slow_threshold(LoopObject *self, PyObject *arg);

/* module.c */
qloop_state *qloop_state_from_type(PyTypeObject *type);

#endif
