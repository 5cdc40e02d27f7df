/*
 * StreamTransport: the stream transport (TCP and Unix sockets) in C.
 *
 * It replaces asyncio's _SelectorSocketTransport; qloop/_transport.py
 * subclasses it with what is not hot (set-up, repr, __del__, the fatal
 * error and connection_lost paths), written as asyncio writes them.
 *
 * Layout: a real subclass of asyncio.Transport, through asyncio's
 * transports._FlowControlMixin (asyncio's sendfile fallback insists on
 * isinstance(transport, _FlowControlMixin)).  asyncio.BaseTransport has
 * `__slots__ = ('_extra',)`, the classes up to Transport add nothing and
 * _FlowControlMixin adds four slots, so such an instance is a PyObject
 * header and five pointers.  Our struct starts with five pointers at
 * those places, so the base's `_extra` descriptor reads our field (the
 * other four are ours: see StreamObject); the module checks the base's
 * size when it creates the type.
 *
 * The fd: the transport owns its ql_io.  While the fd is watched the loop
 * holds a reference to the transport in loop->streams (asyncio's selector
 * holds the reader/writer handles, which hold the transport), so an idle
 * transport nobody references is collected and warns as asyncio's does.
 * asyncio's own bookkeeping (loop._transports, _ensure_fd_no_transport)
 * is kept by the Python layer.  A readiness event queues one ring entry
 * (qloop_stream_ring_run) behind what is already queued, as asyncio's
 * _process_events queues the reader and writer handles; the entry checks
 * again, when it runs, that reading or writing is still wanted, as a
 * cancelled handle would be skipped.
 *
 * Reading: one recv() per event of up to asyncio's max_size (256 KiB)
 * into a buffer shared by every transport (the GIL is held from recv until
 * the bytes are made), copied into an exactly-sized bytes; after a read
 * that filled it, reads go straight into a bytes of max_size, handed over
 * without a copy while reads keep filling it; after a read of 32 KiB or
 * more, FIONREAD sizes a bytes that the next read goes into, also without
 * a copy (a memcpy of that size costs more than the ioctl).  A
 * BufferedProtocol is read into its get_buffer() without a copy.
 *
 * Writing: with nothing queued, write() sends at once (with write
 * batching on, a write from a callback waits for the end of the pass: see
 * "sends deferred to the end of the pass").  What is left is
 * queued: a bytes object by reference (it is immutable), anything else
 * copied once into a new bytes.  The queue goes out with sendmsg() in
 * batches of up to IOV_MAX buffers; writelines() is one system call when
 * nothing is queued.  Flow control is asyncio's _FlowControlMixin.
 */
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "qloop_ext.h"

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif
#define STREAM_IOV_BATCH (IOV_MAX < 1024 ? IOV_MAX : 1024)
#define STREAM_MAX_READ (256 * 1024) /* asyncio's max_size */
/* From this size on, a read goes straight into an exactly-sized bytes
 * (FIONREAD tells the size): the ioctl costs less than copying that much
 * out of the shared buffer. */
#define STREAM_DIRECT_READ (32 * 1024)
/* asyncio.constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES */
#define LOG_THRESHOLD_FOR_CONNLOST_WRITES 5

/* The buffer small reads land in before they are copied into a bytes
 * (qloop_read_buf, shared with sock.c). */
#define read_buf qloop_read_buf
_Static_assert(STREAM_MAX_READ <= QLOOP_READ_BUF_SIZE, "read_buf too small");

enum stream_name {
    S_DATA_RECEIVED,
    S_GET_BUFFER,
    S_BUFFER_UPDATED,
    S_EOF_RECEIVED,
    S_PAUSE_WRITING,
    S_RESUME_WRITING,
    S_FATAL_ERROR,
    S_CALL_CONNECTION_LOST,
    S_FLOW_CONTROL_ERROR,
    S_LOG_DEBUG,
    S_WARN_CONN_LOST,
    S_CALLBACK_ERROR,
    S_CALL_SOON,
    S_SET_RESULT,
    S_SET_EXCEPTION,
    S_SHUTDOWN,
    S_BUFFERED_PROTOCOL, /* not a name: asyncio.BufferedProtocol, see exec */
    S_COUNT
};

static const char *const stream_name_strings[S_COUNT] = {
    "data_received",     "get_buffer",         "buffer_updated",
    "eof_received",      "pause_writing",      "resume_writing",
    "_fatal_error",      "_call_connection_lost", "_flow_control_error",
    "_log_debug",        "_warn_conn_lost",    "_callback_error",
    "call_soon",         "set_result",         "set_exception",
    "shutdown",          NULL,
};

typedef struct {
    PyObject *obj;    /* a bytes object: the caller's, or our copy */
    const char *data; /* what is left to send of it */
    Py_ssize_t len;
} wentry;

typedef struct {
    PyObject_HEAD
    PyObject *extra; /* asyncio.BaseTransport's `_extra` slot: first */
    /* Where _FlowControlMixin's four slots lie (_loop, _protocol_paused,
     * _high_water, _low_water).  Our own descriptors of those names, on
     * our type, shadow the base's, so nothing reads that storage as the
     * base's: it holds four of our references instead of four NULLs (32
     * bytes less per connection).  Our traverse and clear handle them;
     * the base's slots are never traversed or cleared (a type's slots
     * are, by subtype_traverse/subtype_dealloc, only down to the first
     * base with a tp_traverse/tp_dealloc of its own: ours). */
    PyObject *sock;
    PyObject *protocol;
    PyObject *server;
    PyObject *empty_waiter;
    /* The base's layout ends here (checked in qloop_stream_exec). */
    PyObject *weakreflist;
    LoopObject *loop; /* NULL once `_loop = None` (connection lost) */
    PyObject *context; /* protocol callbacks run in it, as a handle's would */
    wentry *wq;        /* write queue: entries [wq_head, wq_tail) */
    Py_ssize_t wq_head, wq_tail, wq_cap;
    Py_ssize_t wsize; /* bytes queued */
    Py_ssize_t high_water, low_water;
    Py_ssize_t conn_lost;
    ql_io io;
    int sock_fd;
    unsigned pending_events; /* gathered while a ring entry is queued */
    char ring_pending;
    char want_read, want_write; /* the ql_io's interest */
    char closing, paused, eof, protocol_paused, protocol_connected;
    char buffered; /* the protocol is an asyncio.BufferedProtocol */
    char big_reads;
    char direct_reads; /* the last read was at least STREAM_DIRECT_READ */
    char deferred; /* in the loop's list of sends deferred to the pass end */
} StreamObject;

static int flush_deferred(StreamObject *self);

#define SNAME(st, n) PyTuple_GET_ITEM((st)->stream_names, (n))

static qloop_state *stream_state(StreamObject *self)
{
    return self->loop ? self->loop->st : qloop_state_from_type(Py_TYPE(self));
}

/* ---- small helpers --------------------------------------------------------- */

static PyObject *take_exc(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb && value)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

static void restore_exc(PyObject *exc)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc,
                  PyException_GetTraceback(exc));
#endif
}

/* Call and drop the result: 0, or -1 with the exception set. */
static int drop(PyObject *res)
{
    if (!res)
        return -1;
    Py_DECREF(res);
    return 0;
}

static int would_block(int err)
{
    return err == EAGAIN || err == EWOULDBLOCK || err == EINTR;
}

/* type(obj).__name__ */
static const char *short_type_name(PyObject *obj)
{
    const char *name = Py_TYPE(obj)->tp_name;
    if (!(Py_TYPE(obj)->tp_flags & Py_TPFLAGS_HEAPTYPE)) {
        const char *dot = strrchr(name, '.');
        if (dot)
            return dot + 1;
    }
    return name;
}

/* ---- the fd watch ------------------------------------------------------------ */

static void stream_io(ql_loop *ql, ql_io *io, unsigned events);

/* Apply want_read/want_write to the ql_io; loop->streams holds the
 * transport while the fd is watched. */
static int update_watch(StreamObject *self)
{
    LoopObject *loop = self->loop;
    unsigned ev = (self->want_read ? QL_READABLE : 0) |
                  (self->want_write ? QL_WRITABLE : 0);
    int was = ql_io_active(&self->io);
    if (!loop || !loop->ql || loop->closed) {
        if (!ev && !was)
            return 0;
        if (was && loop && loop->ql)
            ql_io_stop(loop->ql, &self->io);
        else
            self->io.active = 0;
        if (ev) {
            PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
            return -1;
        }
        goto update_set;
    }
    if (!loop->streams) {
        loop->streams = PySet_New(NULL);
        if (!loop->streams)
            return -1;
    }
    int rc = ql_io_start(loop->ql, &self->io, ev);
    /* Stopping always stops (an fd closed behind our back included). */
    if (rc < 0 && ev) {
        errno = -rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
update_set:;
    int now = ql_io_active(&self->io);
    if (now && !was) {
        if (PySet_Add(loop->streams, (PyObject *)self) < 0) {
            ql_io_stop(loop->ql, &self->io);
            return -1;
        }
    } else if (!now && was && loop && loop->streams) {
        /* The caller holds a reference: discarding cannot free us. */
        if (PySet_Discard(loop->streams, (PyObject *)self) < 0)
            return -1;
    }
    return 0;
}

static int set_want(StreamObject *self, int writing, int on)
{
    char *flag = writing ? &self->want_write : &self->want_read;
    if (*flag == on)
        return 0;
    *flag = (char)on;
    if (update_watch(self) < 0) {
        if (on)
            *flag = 0;
        return -1;
    }
    return 0;
}

/* Stop watching, whatever the wants; for teardown.  Never fails. */
static void stop_watch(StreamObject *self)
{
    self->want_read = self->want_write = 0;
    if (update_watch(self) < 0)
        PyErr_WriteUnraisable((PyObject *)self);
}

void qloop_streams_release(LoopObject *loop)
{
    if (!loop->streams)
        return;
    PyObject *items = PySequence_List(loop->streams);
    if (!items) {
        PyErr_WriteUnraisable((PyObject *)loop);
        return;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        StreamObject *s = (StreamObject *)PyList_GET_ITEM(items, i);
        s->want_read = s->want_write = 0;
        if (loop->ql && ql_io_active(&s->io))
            ql_io_stop(loop->ql, &s->io);
        s->io.active = 0;
    }
    PySet_Clear(loop->streams);
    Py_DECREF(items);
}

/* ---- write queue ----------------------------------------------------------------- */

static void wq_clear(StreamObject *self)
{
    wentry *wq = self->wq;
    Py_ssize_t head = self->wq_head, tail = self->wq_tail;
    self->wq_head = self->wq_tail = 0;
    self->wsize = 0;
    for (Py_ssize_t i = head; i < tail; i++)
        Py_DECREF(wq[i].obj);
}

static void wq_free(StreamObject *self)
{
    wq_clear(self);
    PyMem_Free(self->wq);
    self->wq = NULL;
    self->wq_cap = 0;
}

/* Queue len bytes at data, which belong to obj (a bytes: referenced) or
 * to a buffer we must copy (obj NULL). */
static int wq_push(StreamObject *self, PyObject *obj, const char *data,
                   Py_ssize_t len)
{
    if (self->wq_tail == self->wq_cap) {
        Py_ssize_t n = self->wq_tail - self->wq_head;
        if (self->wq_head > 0 && n < self->wq_cap / 2) {
            memmove(self->wq, self->wq + self->wq_head, n * sizeof(wentry));
        } else {
            Py_ssize_t cap = self->wq_cap ? self->wq_cap * 2 : 8;
            wentry *nq = PyMem_Malloc(cap * sizeof(wentry));
            if (!nq) {
                PyErr_NoMemory();
                return -1;
            }
            if (n)
                memcpy(nq, self->wq + self->wq_head, n * sizeof(wentry));
            PyMem_Free(self->wq);
            self->wq = nq;
            self->wq_cap = cap;
        }
        self->wq_head = 0;
        self->wq_tail = n;
    }
    if (obj) {
        Py_INCREF(obj);
    } else {
        obj = PyBytes_FromStringAndSize(data, len);
        if (!obj)
            return -1;
        data = PyBytes_AS_STRING(obj);
    }
    wentry *e = &self->wq[self->wq_tail++];
    e->obj = obj;
    e->data = data;
    e->len = len;
    self->wsize += len;
    return 0;
}

/* Drop n sent bytes from the head of the queue. */
static void wq_consume(StreamObject *self, Py_ssize_t n)
{
    self->wsize -= n;
    while (n > 0 && self->wq_head < self->wq_tail) {
        wentry *e = &self->wq[self->wq_head];
        if (e->len <= n) {
            n -= e->len;
            self->wq_head++;
            Py_DECREF(e->obj);
        } else {
            e->data += n;
            e->len -= n;
            n = 0;
        }
    }
    if (self->wq_head == self->wq_tail)
        self->wq_head = self->wq_tail = 0;
}

static ssize_t send_iov(int fd, struct iovec *iov, int cnt)
{
    ssize_t n;
    if (cnt == 1) {
        /* send(): no msghdr and iovec for the kernel to copy in. */
        do
            n = send(fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
        while (n < 0 && errno == EINTR);
        return n;
    }
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = iov;
    msg.msg_iovlen = (size_t)cnt;
    do
        n = sendmsg(fd, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n;
}

/* ---- the slow paths, in the Python subclass ------------------------------------- */

/* self._fatal_error(exc, message); steals exc. */
static int fatal_error(StreamObject *self, PyObject *exc, const char *message)
{
    qloop_state *st = stream_state(self);
    if (!st) {
        Py_DECREF(exc);
        return -1;
    }
    PyObject *msg = PyUnicode_FromString(message);
    if (!msg) {
        Py_DECREF(exc);
        return -1;
    }
    int rc = drop(qloop_call_method2(SNAME(st, S_FATAL_ERROR), (PyObject *)self, exc, msg));
    Py_DECREF(msg);
    Py_DECREF(exc);
    return rc;
}

static int fatal_errno(StreamObject *self, int err, const char *message)
{
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);
    return fatal_error(self, take_exc(), message);
}

/* With a protocol callback's exception set: SystemExit and
 * KeyboardInterrupt propagate (-1); the rest goes to _fatal_error. */
static int protocol_failed(StreamObject *self, const char *message)
{
    PyObject *exc = take_exc();
    if (!exc)
        return 0;
    if (qloop_is_exit_exception(exc)) {
        restore_exc(exc);
        return -1;
    }
    return fatal_error(self, exc, message);
}

static int log_debug(StreamObject *self, const char *fmt)
{
    qloop_state *st = stream_state(self);
    PyObject *msg = st ? PyUnicode_FromString(fmt) : NULL;
    if (!msg)
        return -1;
    int rc = drop(qloop_call_method1(SNAME(st, S_LOG_DEBUG), (PyObject *)self, msg));
    Py_DECREF(msg);
    return rc;
}

/* _FlowControlMixin._maybe_pause_protocol / _maybe_resume_protocol. */
static int flow_call(StreamObject *self, int name, const char *message)
{
    qloop_state *st = stream_state(self);
    if (!st)
        return -1;
    PyObject *proto = Py_XNewRef(self->protocol);
    PyObject *res = proto ? qloop_call_method0(SNAME(st, name), proto)
                          : qloop_call_method0(SNAME(st, name), Py_None);
    Py_XDECREF(proto);
    if (res) {
        Py_DECREF(res);
        return 0;
    }
    PyObject *exc = take_exc();
    if (qloop_is_exit_exception(exc)) {
        restore_exc(exc);
        return -1;
    }
    PyObject *msg = PyUnicode_FromString(message);
    int rc = msg ? drop(qloop_call_method2(SNAME(st, S_FLOW_CONTROL_ERROR),
                              (PyObject *)self, msg, exc))
                 : -1;
    Py_XDECREF(msg);
    Py_DECREF(exc);
    return rc;
}

static int maybe_pause(StreamObject *self)
{
    if (self->wsize <= self->high_water || self->protocol_paused)
        return 0;
    self->protocol_paused = 1;
    return flow_call(self, S_PAUSE_WRITING, "protocol.pause_writing() failed");
}

static int maybe_resume(StreamObject *self)
{
    if (!self->protocol_paused || self->wsize > self->low_water)
        return 0;
    self->protocol_paused = 0;
    return flow_call(self, S_RESUME_WRITING,
                     "protocol.resume_writing() failed");
}

/* self._loop.call_soon(self._call_connection_lost, exc) */
static int schedule_connection_lost(StreamObject *self, PyObject *exc)
{
    qloop_state *st = stream_state(self);
    if (!st)
        return -1;
    if (!self->loop) {
        PyErr_SetString(PyExc_AttributeError,
                        "'NoneType' object has no attribute 'call_soon'");
        return -1;
    }
    PyObject *cb = PyObject_GetAttr((PyObject *)self,
                                    SNAME(st, S_CALL_CONNECTION_LOST));
    if (!cb)
        return -1;
    int rc = drop(qloop_call_method2(SNAME(st, S_CALL_SOON), (PyObject *)self->loop, cb,
                        exc ? exc : Py_None));
    Py_DECREF(cb);
    return rc;
}

/* ---- closing ---------------------------------------------------------------------- */

static int do_close(StreamObject *self)
{
    if (self->closing)
        return 0;
    if (flush_deferred(self) < 0)
        return -1;
    self->closing = 1;
    if (set_want(self, 0, 0) < 0)
        return -1;
    if (self->wsize == 0) {
        self->conn_lost++;
        if (set_want(self, 1, 0) < 0)
            return -1;
        return schedule_connection_lost(self, NULL);
    }
    return 0;
}

static int force_close(StreamObject *self, PyObject *exc)
{
    if (self->conn_lost)
        return 0;
    if (self->wsize) {
        wq_clear(self);
        if (set_want(self, 1, 0) < 0)
            return -1;
    }
    if (!self->closing) {
        self->closing = 1;
        if (set_want(self, 0, 0) < 0)
            return -1;
    }
    self->conn_lost++;
    return schedule_connection_lost(self, exc);
}

/* ---- reading ------------------------------------------------------------------------ */

static int on_eof(StreamObject *self)
{
    qloop_state *st = stream_state(self);
    if (!st)
        return -1;
    if (self->loop && self->loop->debug &&
        log_debug(self, "%r received EOF") < 0)
        return -1;
    PyObject *proto = Py_NewRef(self->protocol ? self->protocol : Py_None);
    PyObject *res = qloop_call_method0(SNAME(st, S_EOF_RECEIVED), proto);
    Py_DECREF(proto);
    if (!res)
        return protocol_failed(self,
                               "Fatal error: protocol.eof_received() call "
                               "failed.");
    int keep_open = PyObject_IsTrue(res);
    Py_DECREF(res);
    if (keep_open < 0)
        return -1;
    if (keep_open)
        /* Keep writing; nothing more can be received. */
        return set_want(self, 0, 0);
    return do_close(self);
}

/* `*data` received n of its bytes (n <= 0: none): replace it by a bytes of
 * exactly those n, or by NULL when there are none; errno is kept for the
 * caller.  A copy, not _PyBytes_Resize: shrinking a block glibc mapped with
 * mmap is an mremap, and the block never returns through free(), which is
 * what raises glibc's mmap threshold (page faults on every later read). */
static int exact_bytes(PyObject **data, ssize_t n)
{
    int err = errno;
    PyObject *whole = *data;
    *data = n > 0 ? PyBytes_FromStringAndSize(PyBytes_AS_STRING(whole), n)
                  : NULL;
    Py_DECREF(whole);
    errno = err;
    return n > 0 && !*data ? -1 : 0;
}

static int read_data(StreamObject *self)
{
    qloop_state *st = stream_state(self);
    if (!st)
        return -1;
    PyObject *data = NULL;
    ssize_t n;
    if (self->big_reads) {
        /* The last read filled the shared buffer: read straight into a
         * bytes of max_size, which a full read hands over as it is. */
        data = PyBytes_FromStringAndSize(NULL, STREAM_MAX_READ);
        if (!data)
            return -1;
        do
            n = recv(self->sock_fd, PyBytes_AS_STRING(data), STREAM_MAX_READ,
                     0);
        while (n < 0 && errno == EINTR);
        if (n < STREAM_MAX_READ) {
            /* A short read: an exactly-sized copy (see exact_bytes). */
            self->big_reads = 0;
            self->direct_reads = n >= STREAM_DIRECT_READ;
            if (exact_bytes(&data, n) < 0)
                return -1;
        }
    } else {
        int avail = 0;
        if (self->direct_reads &&
            (ioctl(self->sock_fd, FIONREAD, &avail) < 0 ||
             avail < STREAM_DIRECT_READ)) {
            self->direct_reads = 0;
            avail = 0;
        }
        if (avail) {
            /* What is queued, straight into a bytes of its size. */
            Py_ssize_t want = avail < STREAM_MAX_READ ? avail : STREAM_MAX_READ;
            data = PyBytes_FromStringAndSize(NULL, want);
            if (!data)
                return -1;
            do
                n = recv(self->sock_fd, PyBytes_AS_STRING(data), want, 0);
            while (n < 0 && errno == EINTR);
            /* Less than FIONREAD said (it cannot be more): rare. */
            if (n != want && exact_bytes(&data, n) < 0)
                return -1;
        } else {
            do
                n = recv(self->sock_fd, read_buf, STREAM_MAX_READ, 0);
            while (n < 0 && errno == EINTR);
            if (n > 0) {
                int err = errno;
                data = PyBytes_FromStringAndSize(read_buf, n);
                if (!data)
                    return -1;
                errno = err;
            }
        }
        if (n == STREAM_MAX_READ)
            self->big_reads = 1;
        else if (n >= STREAM_DIRECT_READ)
            self->direct_reads = 1;
    }
    if (n < 0) {
        if (would_block(errno))
            return 0;
        return fatal_errno(self, errno, "Fatal read error on socket transport");
    }
    if (n == 0)
        return on_eof(self);
    PyObject *proto = Py_NewRef(self->protocol ? self->protocol : Py_None);
    PyObject *res = qloop_call_method1(SNAME(st, S_DATA_RECEIVED), proto, data);
    Py_DECREF(proto);
    Py_DECREF(data);
    if (!res)
        return protocol_failed(
            self, "Fatal error: protocol.data_received() call failed.");
    Py_DECREF(res);
    return 0;
}

static int read_buffered(StreamObject *self)
{
    qloop_state *st = stream_state(self);
    if (!st)
        return -1;
    static const char get_buffer_failed[] =
        "Fatal error: protocol.get_buffer() call failed.";
    PyObject *proto = Py_NewRef(self->protocol ? self->protocol : Py_None);
    PyObject *minus_one = PyLong_FromLong(-1);
    PyObject *buf = minus_one ? qloop_call_method1(SNAME(st, S_GET_BUFFER), proto, minus_one)
                              : NULL;
    Py_XDECREF(minus_one);
    if (!buf) {
        Py_DECREF(proto);
        return protocol_failed(self, get_buffer_failed);
    }
    Py_ssize_t len = PyObject_Size(buf);
    if (len == 0)
        PyErr_SetString(PyExc_RuntimeError,
                        "get_buffer() returned an empty buffer");
    if (len <= 0) {
        Py_DECREF(buf);
        Py_DECREF(proto);
        return protocol_failed(self, get_buffer_failed);
    }
    Py_buffer view;
    if (PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE) < 0) {
        /* What sock.recv_into() raises for it. */
        Py_DECREF(buf);
        Py_DECREF(proto);
        return protocol_failed(self, "Fatal read error on socket transport");
    }
    ssize_t n;
    do
        n = recv(self->sock_fd, view.buf, (size_t)view.len, 0);
    while (n < 0 && errno == EINTR);
    int err = errno;
    PyBuffer_Release(&view);
    Py_DECREF(buf);
    if (n < 0) {
        Py_DECREF(proto);
        if (would_block(err))
            return 0;
        return fatal_errno(self, err, "Fatal read error on socket transport");
    }
    if (n == 0) {
        Py_DECREF(proto);
        return on_eof(self);
    }
    PyObject *nb = PyLong_FromSsize_t(n);
    PyObject *res = nb ? qloop_call_method1(SNAME(st, S_BUFFER_UPDATED), proto, nb) : NULL;
    Py_XDECREF(nb);
    Py_DECREF(proto);
    if (!res)
        return protocol_failed(
            self, "Fatal error: protocol.buffer_updated() call failed.");
    Py_DECREF(res);
    return 0;
}

static int read_ready(StreamObject *self)
{
    if (self->conn_lost)
        return 0;
    return self->buffered ? read_buffered(self) : read_data(self);
}

/* ---- writing ------------------------------------------------------------------------ */

static int set_future(StreamObject *self, int name, PyObject *arg)
{
    qloop_state *st = stream_state(self);
    if (!st)
        return -1;
    PyObject *w = Py_NewRef(self->empty_waiter);
    int rc = drop(qloop_call_method1(SNAME(st, name), w, arg));
    Py_DECREF(w);
    return rc;
}

/* The head of the write queue as an iovec of up to STREAM_IOV_BATCH. */
static int wq_iov(StreamObject *self, struct iovec *iov)
{
    int cnt = 0;
    for (Py_ssize_t i = self->wq_head;
         i < self->wq_tail && cnt < STREAM_IOV_BATCH; i++, cnt++) {
        iov[cnt].iov_base = (void *)self->wq[i].data;
        iov[cnt].iov_len = (size_t)self->wq[i].len;
    }
    return cnt;
}

static int has_empty_waiter(StreamObject *self)
{
    return self->empty_waiter && self->empty_waiter != Py_None;
}

static int write_ready(StreamObject *self)
{
    qloop_state *st = stream_state(self);
    if (!st)
        return -1;
    if (self->conn_lost)
        return 0;
    if (self->wq_head == self->wq_tail)
        return set_want(self, 1, 0);
    struct iovec iov[STREAM_IOV_BATCH];
    ssize_t n = send_iov(self->sock_fd, iov, wq_iov(self, iov));
    if (n < 0) {
        int err = errno;
        if (would_block(err))
            return 0;
        if (set_want(self, 1, 0) < 0)
            return -1;
        wq_clear(self);
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        PyObject *exc = take_exc();
        if (fatal_error(self, Py_NewRef(exc),
                        "Fatal write error on socket transport") < 0) {
            Py_DECREF(exc);
            return -1;
        }
        int rc = 0;
        if (has_empty_waiter(self))
            rc = set_future(self, S_SET_EXCEPTION, exc);
        Py_DECREF(exc);
        return rc;
    }
    wq_consume(self, n);
    if (maybe_resume(self) < 0) /* may append to the queue */
        return -1;
    if (self->wsize)
        return 0;
    if (set_want(self, 1, 0) < 0)
        return -1;
    if (has_empty_waiter(self) && set_future(self, S_SET_RESULT, Py_None) < 0)
        return -1;
    if (self->closing)
        return drop(qloop_call_method1(SNAME(st, S_CALL_CONNECTION_LOST), (PyObject *)self,
                          Py_None));
    if (self->eof && self->sock) {
        PyObject *how = PyLong_FromLong(SHUT_WR);
        PyObject *sock = Py_NewRef(self->sock);
        int rc = how ? drop(qloop_call_method1(SNAME(st, S_SHUTDOWN), sock, how)) : -1;
        Py_XDECREF(how);
        Py_DECREF(sock);
        return rc;
    }
    return 0;
}

/* What write() and writelines() check first, with asyncio's messages. */
static int write_checks(StreamObject *self, const char *what)
{
    if (self->eof) {
        PyErr_Format(PyExc_RuntimeError, "Cannot call %s() after write_eof()",
                     what);
        return -1;
    }
    if (has_empty_waiter(self)) {
        PyErr_Format(PyExc_RuntimeError,
                     "unable to %s; sendfile is in progress", what);
        return -1;
    }
    return 0;
}

/* A write after the connection was lost is counted, and logged past
 * asyncio's threshold. */
static PyObject *write_after_lost(StreamObject *self)
{
    if (self->conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES) {
        qloop_state *st = stream_state(self);
        if (!st || drop(qloop_call_method0(SNAME(st, S_WARN_CONN_LOST),
                              (PyObject *)self)) < 0)
            return NULL;
    }
    self->conn_lost++;
    Py_RETURN_NONE;
}

/* Send at once what can go; returns bytes sent, or -1 after the fatal
 * error path ran (-2 if that raised). */
static Py_ssize_t send_now(StreamObject *self, struct iovec *iov, int cnt)
{
    ssize_t n = send_iov(self->sock_fd, iov, cnt);
    if (n >= 0)
        return n;
    if (would_block(errno))
        return 0;
    return fatal_errno(self, errno, "Fatal write error on socket transport") < 0
               ? -2
               : -1;
}

static void ring_error(StreamObject *self, LoopObject *loop);

/* ---- sends deferred to the end of the pass -------------------------------- */

/*
 * With loop.set_write_batching(True) (off by default: asyncio's write()
 * sends at once, and so does ours), a write() made while the loop runs
 * its callbacks, with nothing else queued, is not sent at once: it waits
 * in the queue, and the transport in the loop's list, until the loop has
 * run the pass (qloop_streams_flush, the reactor's check hook), and all of
 * the pass's sends then go out one after another, as uvloop sends its
 * writes.  The price: a callback that blocks later in the pass holds back
 * the sends made before it.  Back to back, the kernel's
 * send path (over half of a streams echo server's CPU on loopback) stays
 * in the CPU's caches: about 12% cheaper, 5% less CPU per request in that
 * echo.  Several writes of one pass go out as one sendmsg().
 * Nothing else can tell: every other entry point that reads or changes
 * the queue (writelines, close, abort, write_eof, get_write_buffer_size,
 * set_write_buffer_limits) sends it first, as write() would have; and a
 * write is deferred only while what is queued stays within the high-water
 * mark, so pause_writing() comes when it would have.
 */
static int can_defer(StreamObject *self, Py_ssize_t len)
{
    LoopObject *loop = self->loop;
    return loop && loop->batch_writes &&
           (self->deferred || self->wsize == 0) && !self->closing &&
           self->wsize + len <= self->high_water && loop->ql &&
           ql_loop_is_running(loop->ql);
}

static int defer(StreamObject *self)
{
    LoopObject *loop = self->loop;
    if (self->deferred)
        return 0;
    if (loop->n_deferred == loop->deferred_cap) {
        Py_ssize_t cap = loop->deferred_cap ? 2 * loop->deferred_cap : 64;
        PyObject **items = PyMem_Realloc(loop->deferred, cap * sizeof(*items));
        if (!items) {
            PyErr_NoMemory();
            return -1;
        }
        loop->deferred = items;
        loop->deferred_cap = cap;
    }
    loop->deferred[loop->n_deferred++] = Py_NewRef(self);
    self->deferred = 1;
    return 0;
}

/* Send what write() deferred, as it would have sent it then: 0, or -1
 * with an exception (the fatal-error path ran when the send failed). */
static int flush_deferred(StreamObject *self)
{
    if (!self->deferred)
        return 0;
    self->deferred = 0;
    if (self->conn_lost || !self->wsize)
        return 0;
    struct iovec iov[STREAM_IOV_BATCH];
    Py_ssize_t n = send_now(self, iov, wq_iov(self, iov));
    if (n < 0)
        return n == -1 ? 0 : -1;
    wq_consume(self, n);
    if (self->wsize && (set_want(self, 1, 1) < 0 || maybe_pause(self) < 0))
        return -1;
    return 0;
}

void qloop_streams_flush(LoopObject *loop)
{
    /* The pass may have ended on an exception that ends the run. */
    PyObject *exc = PyErr_Occurred() ? take_exc() : NULL;
    /* What a send's error path runs may write again: hence the index. */
    for (Py_ssize_t i = 0; i < loop->n_deferred; i++) {
        StreamObject *self = (StreamObject *)loop->deferred[i];
        if (self->deferred && !self->conn_lost && self->wsize) {
            /* Only a failed send runs Python code, in the transport's
             * context as its ring entry would. */
            if (self->context && self->context != loop->cur_ctx &&
                qloop_enter_context(loop, self->context) < 0)
                ring_error(self, loop);
            else if (flush_deferred(self) < 0)
                ring_error(self, loop);
        }
        self->deferred = 0;
    }
    Py_ssize_t n = loop->n_deferred;
    loop->n_deferred = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        Py_DECREF(loop->deferred[i]);
    if (exc)
        restore_exc(exc);
}

void qloop_streams_drop_deferred(LoopObject *loop)
{
    Py_ssize_t n = loop->n_deferred;
    loop->n_deferred = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        ((StreamObject *)loop->deferred[i])->deferred = 0;
        Py_DECREF(loop->deferred[i]);
    }
    PyMem_Free(loop->deferred);
    loop->deferred = NULL;
    loop->deferred_cap = 0;
}

static PyObject *stream_write(StreamObject *self, PyObject *data)
{
    if (!PyBytes_Check(data) && !PyByteArray_Check(data) &&
        !PyMemoryView_Check(data)) {
        PyErr_Format(PyExc_TypeError,
                     "data argument must be a bytes-like object, not '%.200s'",
                     short_type_name(data));
        return NULL;
    }
    if (write_checks(self, "write") < 0)
        return NULL;
    Py_buffer view;
    int is_bytes = PyBytes_CheckExact(data);
    if (is_bytes) {
        view.buf = PyBytes_AS_STRING(data);
        view.len = PyBytes_GET_SIZE(data);
    } else if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *ret = NULL;
    const char *p = view.buf;
    Py_ssize_t len = view.len;
    if (len == 0) {
        ret = Py_NewRef(Py_None);
        goto done;
    }
    if (self->conn_lost) {
        ret = write_after_lost(self);
        goto done;
    }
    if (can_defer(self, len)) {
        if (wq_push(self, is_bytes ? data : NULL, p, len) < 0 ||
            defer(self) < 0)
            goto done;
        ret = Py_NewRef(Py_None);
        goto done;
    }
    if (flush_deferred(self) < 0)
        goto done;
    if (self->conn_lost) { /* the deferred send failed */
        ret = write_after_lost(self);
        goto done;
    }
    if (self->wsize == 0) {
        struct iovec iov = {(void *)p, (size_t)len};
        Py_ssize_t n = send_now(self, &iov, 1);
        if (n < 0) {
            ret = n == -1 ? Py_NewRef(Py_None) : NULL;
            goto done;
        }
        if (n == len) {
            ret = Py_NewRef(Py_None);
            goto done;
        }
        p += n;
        len -= n;
        if (set_want(self, 1, 1) < 0)
            goto done;
    }
    if (wq_push(self, is_bytes ? data : NULL, p, len) < 0 ||
        maybe_pause(self) < 0)
        goto done;
    ret = Py_NewRef(Py_None);
done:
    if (!is_bytes)
        PyBuffer_Release(&view);
    return ret;
}

static PyObject *stream_writelines(StreamObject *self, PyObject *list)
{
#if PY_VERSION_HEX >= 0x030C0000
    if (write_checks(self, "writelines") < 0)
        return NULL;
    int truth = PyObject_IsTrue(list);
    if (truth <= 0)
        return truth < 0 ? NULL : Py_NewRef(Py_None);
#endif
    PyObject *seq = PySequence_Fast(list, "can only join an iterable");
    if (!seq)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    Py_buffer *views = PyMem_Calloc(count ? count : 1, sizeof(Py_buffer));
    PyObject *ret = NULL;
    Py_ssize_t got = 0, total = 0;
    if (!views) {
        PyErr_NoMemory();
        goto out;
    }
    for (; got < count; got++) {
        if (PyObject_GetBuffer(items[got], &views[got], PyBUF_SIMPLE) < 0) {
#if PY_VERSION_HEX < 0x030C0000
            /* b''.join()'s message */
            PyErr_Format(PyExc_TypeError,
                         "sequence item %zd: expected a bytes-like object, "
                         "%.80s found",
                         got, short_type_name(items[got]));
#else
            PyErr_Format(PyExc_TypeError,
                         "memoryview: a bytes-like object is required, not "
                         "'%.200s'",
                         short_type_name(items[got]));
#endif
            goto out;
        }
        total += views[got].len;
    }
#if PY_VERSION_HEX < 0x030C0000
    /* WriteTransport.writelines: self.write(b''.join(list_of_data)) */
    if (write_checks(self, "write") < 0)
        goto out;
#endif
    if (total == 0) {
        ret = Py_NewRef(Py_None);
        goto out;
    }
    if (self->conn_lost) {
        ret = write_after_lost(self);
        goto out;
    }
    Py_ssize_t first = 0, sent = 0;
    int deferring = can_defer(self, total);
    if (!deferring) {
        if (flush_deferred(self) < 0)
            goto out;
        if (self->conn_lost) { /* the deferred send failed */
            ret = write_after_lost(self);
            goto out;
        }
    }
    if (!deferring && self->wsize == 0) {
        /* One system call for as much as fits in one batch. */
        struct iovec iov[STREAM_IOV_BATCH];
        int cnt = 0;
        for (Py_ssize_t i = 0; i < count && cnt < STREAM_IOV_BATCH; i++) {
            if (views[i].len == 0)
                continue;
            iov[cnt].iov_base = views[i].buf;
            iov[cnt].iov_len = (size_t)views[i].len;
            cnt++;
        }
        Py_ssize_t n = send_now(self, iov, cnt);
        if (n < 0) {
            ret = n == -1 ? Py_NewRef(Py_None) : NULL;
            goto out;
        }
        if (n == total) {
            ret = Py_NewRef(Py_None);
            goto out;
        }
        sent = n;
        if (set_want(self, 1, 1) < 0)
            goto out;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t len = views[i].len;
        const char *p = views[i].buf;
        if (first + len <= sent) {
            first += len;
            continue;
        }
        Py_ssize_t skip = sent > first ? sent - first : 0;
        first += len;
        if (wq_push(self, PyBytes_CheckExact(items[i]) ? items[i] : NULL,
                    p + skip, len - skip) < 0)
            goto out;
    }
    if (deferring ? defer(self) < 0 : maybe_pause(self) < 0)
        goto out;
    ret = Py_NewRef(Py_None);
out:
    for (Py_ssize_t i = 0; i < got; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    Py_DECREF(seq);
    return ret;
}

/* ---- the ring entry ------------------------------------------------------------------ */

static void stream_io(ql_loop *ql, ql_io *io, unsigned events)
{
    StreamObject *self = io->data;
    self->pending_events |= events;
    if (self->ring_pending)
        return;
    Py_INCREF(self);
    if (ql_call_soon(ql, qloop_stream_ring_run, self) < 0) {
        /* Out of memory for the ring: run it now rather than lose it. */
        self->ring_pending = 1;
        qloop_stream_ring_run(ql, self);
        return;
    }
    self->ring_pending = 1;
}

/* An error out of a ring entry: SystemExit/KeyboardInterrupt end the run;
 * anything else is reported as asyncio reports a failed callback. */
static void ring_error(StreamObject *self, LoopObject *loop)
{
    PyObject *exc = take_exc();
    if (!exc)
        return;
    if (qloop_is_exit_exception(exc)) {
        qloop_stop_with(loop, exc);
        return;
    }
    qloop_leave_context(loop);
    qloop_state *st = loop->st;
    PyObject *res = qloop_call_method1(SNAME(st, S_CALLBACK_ERROR), (PyObject *)self, exc);
    Py_DECREF(exc);
    if (res) {
        Py_DECREF(res);
        return;
    }
    exc = take_exc();
    if (exc && qloop_is_exit_exception(exc)) {
        qloop_stop_with(loop, exc);
        return;
    }
    if (exc)
        restore_exc(exc);
    PyErr_WriteUnraisable((PyObject *)self);
}

void qloop_stream_ring_run(ql_loop *ql, void *arg)
{
    (void)ql;
    StreamObject *self = arg;
    unsigned ev = self->pending_events;
    self->pending_events = 0;
    self->ring_pending = 0;
    LoopObject *loop = self->loop ? (LoopObject *)Py_NewRef(self->loop) : NULL;
    if (!loop)
        goto out;
    if (self->context && self->context != loop->cur_ctx &&
        qloop_enter_context(loop, self->context) < 0) {
        ring_error(self, loop);
        goto out;
    }
    if ((ev & (QL_READABLE | QL_ERROR | QL_HANGUP)) && self->want_read &&
        read_ready(self) < 0)
        ring_error(self, loop);
    if ((ev & (QL_WRITABLE | QL_ERROR | QL_HANGUP)) && self->want_write &&
        !loop->pending_exc && write_ready(self) < 0)
        ring_error(self, loop);
out:
    Py_XDECREF(loop);
    Py_DECREF(self);
}

/* ---- methods ---------------------------------------------------------------------------- */

static PyObject *none_or_null(int rc)
{
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* _attach(loop): take the loop and the fd (self._sock_fd) to watch. */
static PyObject *stream__attach(StreamObject *self, PyObject *loop)
{
    qloop_state *st = qloop_state_from_type(Py_TYPE(self));
    if (!st)
        return NULL;
    if (!PyObject_TypeCheck(loop, st->LoopType)) {
        PyErr_SetString(PyExc_TypeError,
                        "a qloop StreamTransport needs a qloop loop");
        return NULL;
    }
    if (ql_io_active(&self->io)) {
        PyErr_SetString(PyExc_RuntimeError, "transport already attached");
        return NULL;
    }
    Py_XSETREF(self->loop, (LoopObject *)Py_NewRef(loop));
    ql_io_init(&self->io, self->sock_fd, stream_io, self);
    PyObject *ctx = PyContext_CopyCurrent();
    if (!ctx)
        return NULL;
    Py_XSETREF(self->context, ctx);
    Py_RETURN_NONE;
}

/* _detach(): stop watching the fd (before the socket is closed). */
static PyObject *stream__detach(StreamObject *self, PyObject *Py_UNUSED(x))
{
    self->want_read = self->want_write = 0;
    return none_or_null(update_watch(self));
}

static PyObject *stream__start_reading(StreamObject *self,
                                       PyObject *Py_UNUSED(x))
{
    /* _add_reader(): only while is_reading() */
    if (self->closing || self->paused)
        Py_RETURN_NONE;
    return none_or_null(set_want(self, 0, 1));
}

static PyObject *stream_pause_reading(StreamObject *self,
                                      PyObject *Py_UNUSED(x))
{
    if (self->closing || self->paused)
        Py_RETURN_NONE;
    self->paused = 1;
    if (set_want(self, 0, 0) < 0)
        return NULL;
    if (self->loop && self->loop->debug &&
        log_debug(self, "%r pauses reading") < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *stream_resume_reading(StreamObject *self,
                                       PyObject *Py_UNUSED(x))
{
    if (self->closing || !self->paused)
        Py_RETURN_NONE;
    self->paused = 0;
    if (set_want(self, 0, 1) < 0)
        return NULL;
    if (self->loop && self->loop->debug &&
        log_debug(self, "%r resumes reading") < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *stream_is_reading(StreamObject *self, PyObject *Py_UNUSED(x))
{
    return PyBool_FromLong(!self->closing && !self->paused);
}

static PyObject *stream_is_closing(StreamObject *self, PyObject *Py_UNUSED(x))
{
    return PyBool_FromLong(self->closing);
}

static PyObject *stream_close(StreamObject *self, PyObject *Py_UNUSED(x))
{
    return none_or_null(do_close(self));
}

static PyObject *stream_abort(StreamObject *self, PyObject *Py_UNUSED(x))
{
    /* What write() deferred would have gone out before abort(). */
    if (flush_deferred(self) < 0)
        return NULL;
    return none_or_null(force_close(self, NULL));
}

static PyObject *stream__force_close(StreamObject *self, PyObject *exc)
{
    return none_or_null(force_close(self, exc == Py_None ? NULL : exc));
}

static PyObject *stream_set_protocol(StreamObject *self, PyObject *protocol)
{
    qloop_state *st = qloop_state_from_type(Py_TYPE(self));
    if (!st)
        return NULL;
    int buffered = PyObject_IsInstance(
        protocol, PyTuple_GET_ITEM(st->stream_names, S_BUFFERED_PROTOCOL));
    if (buffered < 0)
        return NULL;
    self->buffered = (char)buffered;
    Py_XSETREF(self->protocol, Py_NewRef(protocol));
    self->protocol_connected = 1;
    Py_RETURN_NONE;
}

static PyObject *stream_get_protocol(StreamObject *self,
                                     PyObject *Py_UNUSED(x))
{
    return Py_NewRef(self->protocol ? self->protocol : Py_None);
}

static PyObject *stream_write_eof(StreamObject *self, PyObject *Py_UNUSED(x))
{
    if (self->closing || self->eof)
        Py_RETURN_NONE;
    if (flush_deferred(self) < 0)
        return NULL;
    self->eof = 1;
    if (self->wsize)
        Py_RETURN_NONE;
    qloop_state *st = qloop_state_from_type(Py_TYPE(self));
    if (!st)
        return NULL;
    PyObject *sock = Py_NewRef(self->sock ? self->sock : Py_None);
    PyObject *how = PyLong_FromLong(SHUT_WR);
    PyObject *res = how ? qloop_call_method1(SNAME(st, S_SHUTDOWN), sock, how) : NULL;
    Py_XDECREF(how);
    Py_DECREF(sock);
    return none_or_null(drop(res));
}

static PyObject *stream_can_write_eof(StreamObject *self,
                                      PyObject *Py_UNUSED(x))
{
    (void)self;
    Py_RETURN_TRUE;
}

static PyObject *stream_get_write_buffer_size(StreamObject *self,
                                              PyObject *Py_UNUSED(x))
{
    if (flush_deferred(self) < 0)
        return NULL;
    return PyLong_FromSsize_t(self->wsize);
}

static PyObject *stream__maybe_pause_protocol(StreamObject *self,
                                              PyObject *Py_UNUSED(x))
{
    if (flush_deferred(self) < 0)
        return NULL;
    return none_or_null(maybe_pause(self));
}

static PyObject *stream__maybe_resume_protocol(StreamObject *self,
                                               PyObject *Py_UNUSED(x))
{
    return none_or_null(maybe_resume(self));
}

static PyObject *stream__read_ready(StreamObject *self, PyObject *Py_UNUSED(x))
{
    return none_or_null(read_ready(self));
}

static PyObject *stream__write_ready(StreamObject *self,
                                     PyObject *Py_UNUSED(x))
{
    return none_or_null(write_ready(self));
}

/* _watching() -> (reading, writing): what the fd is polled for. */
static PyObject *stream__watching(StreamObject *self, PyObject *Py_UNUSED(x))
{
    int active = ql_io_active(&self->io);
    return Py_BuildValue("(OO)",
                         active && self->want_read ? Py_True : Py_False,
                         active && self->want_write ? Py_True : Py_False);
}

/* _queued() -> number of buffers queued (for tests of batching). */
static PyObject *stream__queued(StreamObject *self, PyObject *Py_UNUSED(x))
{
    PyObject *list = PyList_New(0);
    if (!list)
        return NULL;
    for (Py_ssize_t i = self->wq_head; i < self->wq_tail; i++)
        if (PyList_Append(list, self->wq[i].obj) < 0) {
            Py_DECREF(list);
            return NULL;
        }
    return list;
}

static PyObject *stream_get_loop(StreamObject *self, void *Py_UNUSED(x))
{
    return Py_NewRef(self->loop ? (PyObject *)self->loop : Py_None);
}

static int stream_set_loop(StreamObject *self, PyObject *value,
                           void *Py_UNUSED(x))
{
    qloop_state *st = qloop_state_from_type(Py_TYPE(self));
    if (!st)
        return -1;
    if (value && value != Py_None && !PyObject_TypeCheck(value, st->LoopType)) {
        PyErr_SetString(PyExc_TypeError, "_loop must be a qloop loop or None");
        return -1;
    }
    if (value == (PyObject *)self->loop)
        return 0;
    /* Another loop (or none): stop watching on this one first. */
    stop_watch(self);
    Py_XSETREF(self->loop, value && value != Py_None
                               ? (LoopObject *)Py_NewRef(value)
                               : NULL);
    return 0;
}

static PyMethodDef stream_methods[] = {
    {"write", (PyCFunction)stream_write, METH_O, NULL},
    {"writelines", (PyCFunction)stream_writelines, METH_O, NULL},
    {"write_eof", (PyCFunction)stream_write_eof, METH_NOARGS, NULL},
    {"can_write_eof", (PyCFunction)stream_can_write_eof, METH_NOARGS, NULL},
    {"get_write_buffer_size", (PyCFunction)stream_get_write_buffer_size,
     METH_NOARGS, NULL},
    {"pause_reading", (PyCFunction)stream_pause_reading, METH_NOARGS, NULL},
    {"resume_reading", (PyCFunction)stream_resume_reading, METH_NOARGS, NULL},
    {"is_reading", (PyCFunction)stream_is_reading, METH_NOARGS, NULL},
    {"is_closing", (PyCFunction)stream_is_closing, METH_NOARGS, NULL},
    {"close", (PyCFunction)stream_close, METH_NOARGS, NULL},
    {"abort", (PyCFunction)stream_abort, METH_NOARGS, NULL},
    {"_force_close", (PyCFunction)stream__force_close, METH_O, NULL},
    {"set_protocol", (PyCFunction)stream_set_protocol, METH_O, NULL},
    {"get_protocol", (PyCFunction)stream_get_protocol, METH_NOARGS, NULL},
    {"_maybe_pause_protocol", (PyCFunction)stream__maybe_pause_protocol,
     METH_NOARGS, NULL},
    {"_maybe_resume_protocol", (PyCFunction)stream__maybe_resume_protocol,
     METH_NOARGS, NULL},
    {"_read_ready", (PyCFunction)stream__read_ready, METH_NOARGS, NULL},
    {"_write_ready", (PyCFunction)stream__write_ready, METH_NOARGS, NULL},
    {"_attach", (PyCFunction)stream__attach, METH_O, NULL},
    {"_detach", (PyCFunction)stream__detach, METH_NOARGS, NULL},
    {"_start_reading", (PyCFunction)stream__start_reading, METH_NOARGS, NULL},
    {"_watching", (PyCFunction)stream__watching, METH_NOARGS, NULL},
    {"_queued", (PyCFunction)stream__queued, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef stream_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(StreamObject, weakreflist),
     READONLY, NULL},
    {"_sock", T_OBJECT, offsetof(StreamObject, sock), 0, NULL},
    {"_sock_fd", T_INT, offsetof(StreamObject, sock_fd), 0, NULL},
    {"_protocol", T_OBJECT, offsetof(StreamObject, protocol), 0, NULL},
    {"_server", T_OBJECT, offsetof(StreamObject, server), 0, NULL},
    {"_empty_waiter", T_OBJECT, offsetof(StreamObject, empty_waiter), 0,
     NULL},
    {"_conn_lost", T_PYSSIZET, offsetof(StreamObject, conn_lost), 0, NULL},
    {"_high_water", T_PYSSIZET, offsetof(StreamObject, high_water), 0, NULL},
    {"_low_water", T_PYSSIZET, offsetof(StreamObject, low_water), 0, NULL},
    {"_closing", T_BOOL, offsetof(StreamObject, closing), 0, NULL},
    {"_paused", T_BOOL, offsetof(StreamObject, paused), 0, NULL},
    {"_eof", T_BOOL, offsetof(StreamObject, eof), 0, NULL},
    {"_protocol_paused", T_BOOL, offsetof(StreamObject, protocol_paused), 0,
     NULL},
    {"_protocol_connected", T_BOOL,
     offsetof(StreamObject, protocol_connected), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef stream_getset[] = {
    {"_loop", (getter)stream_get_loop, (setter)stream_set_loop, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* ---- type slots ---------------------------------------------------------------------------- */

static PyObject *stream_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    (void)args;
    (void)kw;
    StreamObject *self = (StreamObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->sock_fd = -1;
    self->high_water = 64 * 1024;
    self->low_water = 16 * 1024;
    ql_io_init(&self->io, -1, stream_io, self);
    return (PyObject *)self;
}

static int stream_traverse(StreamObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->extra);
    Py_VISIT(self->loop);
    Py_VISIT(self->sock);
    Py_VISIT(self->protocol);
    Py_VISIT(self->server);
    Py_VISIT(self->empty_waiter);
    Py_VISIT(self->context);
    /* The queue holds only bytes, which cannot be part of a cycle. */
    return 0;
}

static int stream_clear(StreamObject *self)
{
    if (ql_io_active(&self->io))
        stop_watch(self);
    wq_free(self);
    Py_CLEAR(self->extra);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->sock);
    Py_CLEAR(self->protocol);
    Py_CLEAR(self->server);
    Py_CLEAR(self->empty_waiter);
    Py_CLEAR(self->context);
    return 0;
}

static void stream_dealloc(StreamObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist)
        PyObject_ClearWeakRefs((PyObject *)self);
    stream_clear(self);
    type->tp_free(self);
    Py_DECREF(type);
}

static PyType_Slot stream_slots[] = {
    {Py_tp_new, stream_new},
    {Py_tp_dealloc, stream_dealloc},
    {Py_tp_traverse, stream_traverse},
    {Py_tp_clear, stream_clear},
    {Py_tp_methods, stream_methods},
    {Py_tp_members, stream_members},
    {Py_tp_getset, stream_getset},
    {0, NULL},
};

static PyType_Spec stream_spec = {
    .name = "qloop._qloop.StreamTransport",
    .basicsize = sizeof(StreamObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = stream_slots,
};

/* ---- module state -------------------------------------------------------------------------- */

int qloop_stream_exec(PyObject *module, qloop_state *st)
{
    PyObject *asyncio = PyImport_ImportModule("asyncio");
    if (!asyncio)
        return -1;
    PyObject *transports = PyObject_GetAttrString(asyncio, "transports");
    PyObject *base = transports ? PyObject_GetAttrString(transports,
                                                         "_FlowControlMixin")
                                : NULL;
    Py_XDECREF(transports);
    PyObject *buffered = base ? PyObject_GetAttrString(asyncio,
                                                       "BufferedProtocol")
                              : NULL;
    Py_DECREF(asyncio);
    if (!buffered) {
        Py_XDECREF(base);
        return -1;
    }
    /* The layout argument in the comment at the top of this file. */
    PyTypeObject *bt = (PyTypeObject *)base;
    if (!PyType_Check(base) ||
        bt->tp_basicsize != (Py_ssize_t)offsetof(StreamObject, weakreflist) ||
        bt->tp_itemsize != 0 || bt->tp_dictoffset != 0 ||
        bt->tp_weaklistoffset != 0) {
        PyErr_SetString(PyExc_ImportError,
                        "asyncio's _FlowControlMixin layout is not the one "
                        "qloop's "
                        "StreamTransport extends");
        Py_DECREF(base);
        Py_DECREF(buffered);
        return -1;
    }
    PyObject *t = PyType_FromModuleAndSpec(module, &stream_spec, base);
    Py_DECREF(base);
    if (!t) {
        Py_DECREF(buffered);
        return -1;
    }
    st->StreamTransportType = (PyTypeObject *)t;
    if (PyModule_AddType(module, st->StreamTransportType) < 0) {
        Py_DECREF(buffered);
        return -1;
    }
    st->stream_names = PyTuple_New(S_COUNT);
    if (!st->stream_names) {
        Py_DECREF(buffered);
        return -1;
    }
    PyTuple_SET_ITEM(st->stream_names, S_BUFFERED_PROTOCOL, buffered);
    for (int i = 0; i < S_COUNT; i++) {
        if (!stream_name_strings[i])
            continue;
        PyObject *s = PyUnicode_InternFromString(stream_name_strings[i]);
        if (!s)
            return -1;
        PyTuple_SET_ITEM(st->stream_names, i, s);
    }
    return 0;
}

int qloop_stream_traverse(qloop_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->StreamTransportType);
    Py_VISIT(st->stream_names);
    return 0;
}

void qloop_stream_clear(qloop_state *st)
{
    Py_CLEAR(st->StreamTransportType);
    Py_CLEAR(st->stream_names);
}
