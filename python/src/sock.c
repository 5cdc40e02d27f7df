/*
 * The sock_* methods in C: sock_recv, sock_recv_into, sock_recvfrom,
 * sock_recvfrom_into, sock_sendall, sock_sendto, sock_connect, sock_accept.
 *
 * They follow asyncio's selector_events.py step for step, messages
 * included.  Two objects do the work:
 *
 *  - SockCoroutine: what the methods return.  asyncio's are `async def`,
 *    so nothing happens before the first send(): the checks and the first
 *    system call run then, and their exceptions surface at the await, as
 *    asyncio's do.  It is a coroutine to asyncio (send/throw/close/__await__
 *    make it a collections.abc.Coroutine), so create_task() takes it.
 *  - SockWaiter: registered with qloop_add_watch() when the call would
 *    block, and as the future's done callback.  Called with no argument,
 *    the fd is ready: it retries and completes the future.  Called with
 *    the future, the future is done (cancelled): it removes the watch.
 *
 * The system call is the socket's own method (sock.recv(n) and so on),
 * called through a cached name: the socket module performs the call and
 * raises the right exceptions, and duck-typed sockets (mocks) keep working.
 * Only BlockingIOError/InterruptedError make us wait.
 *
 * Where we depart from asyncio's code (not from its behaviour): on
 * completion the waiter removes its watch and its done callback at once,
 * instead of leaving the removal to a done callback scheduled for the next
 * iteration; the watch is gone by the time the awaiting task resumes in
 * both.  Immediate results are returned without a future.  One departure
 * in behaviour: asyncio's _sock_accept does not check fut.done(), so a
 * readiness event in the iteration that cancels the future accepts a
 * connection into it (and reports InvalidStateError); ours checks, as
 * every other asyncio sock callback does.
 */
#include <errno.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "qloop_ext.h"

enum sock_op {
    OP_RECV,
    OP_RECV_INTO,
    OP_RECVFROM,
    OP_RECVFROM_INTO,
    OP_SENDALL,
    OP_SENDTO,
    OP_CONNECT,
    OP_ACCEPT,
};

/* Names called through PyObject_VectorcallMethod, interned once into
 * st->sock_names, in this order. */
enum sock_name {
    N_RECV,
    N_RECV_INTO,
    N_RECVFROM,
    N_RECVFROM_INTO,
    N_SEND,
    N_SENDTO,
    N_CONNECT,
    N_ACCEPT,
    N_SETBLOCKING,
    N_GETSOCKOPT,
    N_GETTIMEOUT,
    N_FILENO,
    N_FAMILY,
    N_TYPE,
    N_PROTO,
    N_LOOP,
    N_CREATE_FUTURE,
    N_ENSURE_FD_NO_TRANSPORT,
    N_ENSURE_RESOLVED,
    N_DONE,
    N_SET_RESULT,
    N_SET_EXCEPTION,
    N_ADD_DONE_CALLBACK,
    N_REMOVE_DONE_CALLBACK,
    N_THROW,
    N_CLOSE,
    N_TRANSPORTS,
    N_DATA,
    N_DEBUG,
    N_COUNT
};

static const char *const name_strings[N_COUNT] = {
    "recv",          "recv_into",
    "recvfrom",      "recvfrom_into",
    "send",          "sendto",
    "connect",       "accept",
    "setblocking",   "getsockopt",
    "gettimeout",    "fileno",
    "family",        "type",
    "proto",         "loop",
    "create_future", "_ensure_fd_no_transport",
    "_ensure_resolved", "done",
    "set_result",    "set_exception",
    "add_done_callback", "remove_done_callback",
    "throw",         "close",
    "_transports",   "data",
    "_debug",
};

#define NAME(st, n) PyTuple_GET_ITEM((st)->sock_names, (n))

/* What we compare with or call directly, imported on first use into
 * st->sock_imports, in this order. */
enum sock_import {
    I_SOCKET,                  /* socket.socket */
    I_SSL_SOCKET,              /* ssl.SSLSocket, None without ssl */
    I_FUTURE,                  /* asyncio.futures.Future */
    I_ENSURE_FD_NO_TRANSPORT,  /* BaseSelectorEventLoop._ensure_fd_... */
    I_WEAK_VALUE_DICTIONARY,   /* weakref.WeakValueDictionary */
    I_LOOP_KWNAMES,            /* ("loop",) */
    I_COUNT
};

static const char *const import_paths[I_COUNT][3] = {
    [I_SOCKET] = {"socket", "socket"},
    [I_SSL_SOCKET] = {"ssl", "SSLSocket"},
    [I_FUTURE] = {"asyncio.futures", "Future"},
    [I_ENSURE_FD_NO_TRANSPORT] = {"asyncio.selector_events",
                                  "BaseSelectorEventLoop",
                                  "_ensure_fd_no_transport"},
    [I_WEAK_VALUE_DICTIONARY] = {"weakref", "WeakValueDictionary"},
};

#define IMPORTED(st, i) PyTuple_GET_ITEM((st)->sock_imports, (i))

/* What each method is called, takes, and tries. */
typedef struct {
    const char *name;
    const char *qualname; /* asyncio's, for messages and reprs */
    const char *params[3];
    int nrequired;
    int nparams;
    enum sock_name call; /* the socket method tried */
    int writing;
} sock_op_info;

#define QUAL "BaseSelectorEventLoop."

static const sock_op_info op_info[] = {
    [OP_RECV] = {"sock_recv", QUAL "sock_recv", {"sock", "n"}, 2, 2, N_RECV, 0},
    [OP_RECV_INTO] = {"sock_recv_into", QUAL "sock_recv_into",
                      {"sock", "buf"}, 2, 2, N_RECV_INTO, 0},
    [OP_RECVFROM] = {"sock_recvfrom", QUAL "sock_recvfrom",
                     {"sock", "bufsize"}, 2, 2, N_RECVFROM, 0},
    [OP_RECVFROM_INTO] = {"sock_recvfrom_into", QUAL "sock_recvfrom_into",
                          {"sock", "buf", "nbytes"}, 2, 3, N_RECVFROM_INTO,
                          0},
    [OP_SENDALL] = {"sock_sendall", QUAL "sock_sendall", {"sock", "data"}, 2,
                    2, N_SEND, 1},
    [OP_SENDTO] = {"sock_sendto", QUAL "sock_sendto",
                   {"sock", "data", "address"}, 3, 3, N_SENDTO, 1},
    [OP_CONNECT] = {"sock_connect", QUAL "sock_connect", {"sock", "address"},
                    2, 2, N_CONNECT, 1},
    [OP_ACCEPT] = {"sock_accept", QUAL "sock_accept", {"sock"}, 1, 1,
                   N_ACCEPT, 0},
};

enum coro_state {
    CORO_CREATED,   /* not started: the body runs at the first send() */
    CORO_RESOLVING, /* sock_connect awaiting self._ensure_resolved() */
    CORO_WAITING,   /* awaiting the future */
    CORO_DONE,      /* returned, raised or closed */
};

typedef struct {
    PyObject_HEAD
    LoopObject *loop;
    PyObject *args[3]; /* sock and the method's arguments */
    PyObject *inner;   /* the awaited iterator while RESOLVING/WAITING */
    int fd;            /* the fd a direct call was made on, else -1 */
    unsigned char op;
    unsigned char state;
    char running;
} SockCoroutineObject;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    LoopObject *loop;
    PyObject *fut;    /* NULL once completed */
    PyObject *sock;
    PyObject *arg1;   /* n, buf, data (sendall: a memoryview), address */
    PyObject *arg2;   /* recvfrom_into: nbytes; sendto: address */
    PyObject *handle; /* the watch's handle */
    Py_ssize_t pos;   /* sendall: bytes of the view sent so far */
    Py_ssize_t len;   /* sendall: len(view) */
    int fd;
    unsigned char op;
    unsigned char writing;
} SockWaiterObject;

/* ---- small helpers --------------------------------------------------------- */

/* The current exception, normalised with its traceback; cleared. */
static PyObject *take_exception(void)
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

/* except (BlockingIOError, InterruptedError) */
static int would_block(void)
{
    return PyErr_ExceptionMatches(PyExc_BlockingIOError) ||
           PyErr_ExceptionMatches(PyExc_InterruptedError);
}

/* except (SystemExit, KeyboardInterrupt): raise */
static int is_exit(void)
{
    return PyErr_ExceptionMatches(PyExc_SystemExit) ||
           PyErr_ExceptionMatches(PyExc_KeyboardInterrupt);
}

static PyObject *call_method3(PyObject *name, PyObject *obj, PyObject *a,
                              PyObject *b, PyObject *c)
{
    PyObject *argv[5] = {NULL, obj, a, b, c};
    return PyObject_VectorcallMethod(
        name, argv + 1, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* `a, b, ... = seq` for n items, with the interpreter's messages. */
static int unpack(PyObject *seq, Py_ssize_t n, PyObject **out)
{
    PyObject *fast = PySequence_Fast(seq, "cannot unpack non-iterable object");
    if (!fast) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError,
                         "cannot unpack non-iterable %.200s object",
                         Py_TYPE(seq)->tp_name);
        }
        return -1;
    }
    Py_ssize_t size = PySequence_Fast_GET_SIZE(fast);
    if (size != n) {
        if (size < n)
            PyErr_Format(PyExc_ValueError,
                         "not enough values to unpack (expected %zd, got %zd)",
                         n, size);
        else
            PyErr_Format(PyExc_ValueError,
                         "too many values to unpack (expected %zd)", n);
        Py_DECREF(fast);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        out[i] = Py_NewRef(PySequence_Fast_GET_ITEM(fast, i));
    Py_DECREF(fast);
    return 0;
}

/* The iterator `await obj` drives. */
static PyObject *awaitable_iter(PyObject *obj)
{
    if (PyCoro_CheckExact(obj))
        return Py_NewRef(obj);
    PyAsyncMethods *am = Py_TYPE(obj)->tp_as_async;
    if (!am || !am->am_await) {
        PyErr_Format(PyExc_TypeError,
                     "object %.100s can't be used in 'await' expression",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return am->am_await(obj);
}

/* selectors._fileobj_to_fd, which _add_reader applies to sock.fileno(). */
static int fd_from_fileno(PyObject *fileobj)
{
    PyObject *num;
    if (PyLong_Check(fileobj)) {
        num = Py_NewRef(fileobj);
    } else {
        PyObject *r = PyObject_CallMethod(fileobj, "fileno", NULL);
        num = r ? PyNumber_Long(r) : NULL;
        Py_XDECREF(r);
        if (!num) {
            if (PyErr_ExceptionMatches(PyExc_AttributeError) ||
                PyErr_ExceptionMatches(PyExc_TypeError) ||
                PyErr_ExceptionMatches(PyExc_ValueError)) {
                PyErr_Clear();
                PyErr_Format(PyExc_ValueError, "Invalid file object: %R",
                             fileobj);
            }
            return -1;
        }
    }
    long fd = PyLong_AsLong(num);
    if (fd == -1 && PyErr_Occurred()) {
        Py_DECREF(num);
        return -1;
    }
    if (fd < 0 || fd > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "Invalid file descriptor: %S", num);
        Py_DECREF(num);
        return -1;
    }
    Py_DECREF(num);
    return (int)fd;
}

static PyObject *import_one(const char *const *path)
{
    PyObject *obj = PyImport_ImportModule(path[0]);
    for (int i = 1; i < 3 && path[i] && obj; i++) {
        PyObject *next = PyObject_GetAttrString(obj, path[i]);
        Py_DECREF(obj);
        obj = next;
    }
    return obj;
}

static int load_imports(qloop_state *st)
{
    PyObject *t = PyTuple_New(I_COUNT);
    if (!t)
        return -1;
    for (int i = 0; i < I_COUNT; i++) {
        PyObject *obj;
        if (i == I_LOOP_KWNAMES) {
            obj = PyTuple_Pack(1, NAME(st, N_LOOP));
        } else {
            obj = import_one(import_paths[i]);
            if (!obj && i == I_SSL_SOCKET &&
                PyErr_ExceptionMatches(PyExc_ImportError)) {
                PyErr_Clear();
                obj = Py_NewRef(Py_None); /* asyncio: ssl = None */
            }
        }
        if (!obj) {
            Py_DECREF(t);
            return -1;
        }
        PyTuple_SET_ITEM(t, i, obj);
    }
    Py_XSETREF(st->sock_imports, t);
    return 0;
}

/* The bound method `loop.<name>` when it is asyncio's `func` itself (not
 * overridden on the class or the instance): 1, 0 otherwise, with *meth
 * set to the bound method to call instead. */
static int is_asyncio_method(LoopObject *loop, PyObject *name, PyObject *func,
                             PyObject **meth)
{
    *meth = PyObject_GetAttr((PyObject *)loop, name);
    if (!*meth)
        return -1;
    return PyMethod_Check(*meth) && PyMethod_GET_FUNCTION(*meth) == func &&
           PyMethod_GET_SELF(*meth) == (PyObject *)loop;
}

/* CLoop.create_future(): asyncio's `futures.Future(loop=self)` without
 * its Python frame (every await of a stream or a sleep makes one). */
PyObject *qloop_loop_create_future(LoopObject *loop, PyObject *Py_UNUSED(x))
{
    qloop_state *st = loop->st;
    if (!st->sock_imports && load_imports(st) < 0)
        return NULL;
    PyObject *argv[2] = {NULL, (PyObject *)loop};
    return PyObject_Vectorcall(IMPORTED(st, I_FUTURE), argv + 1,
                               PY_VECTORCALL_ARGUMENTS_OFFSET,
                               IMPORTED(st, I_LOOP_KWNAMES));
}

/* CLoop.get_debug(): asyncio's `return self._debug` without its Python
 * frame (a Future asks for it when it is made). */
PyObject *qloop_loop_get_debug(LoopObject *loop, PyObject *Py_UNUSED(x))
{
    return PyObject_GetAttr((PyObject *)loop, NAME(loop->st, N_DEBUG));
}

/* self.create_future(), ours unless a subclass or the instance replaced
 * it. */
static PyObject *create_future(LoopObject *loop)
{
    qloop_state *st = loop->st;
    PyObject *meth = PyObject_GetAttr((PyObject *)loop,
                                      NAME(st, N_CREATE_FUTURE));
    if (!meth)
        return NULL;
    PyObject *fut;
    if (PyCFunction_Check(meth) &&
        PyCFunction_GET_FUNCTION(meth) ==
            (PyCFunction)qloop_loop_create_future &&
        PyCFunction_GET_SELF(meth) == (PyObject *)loop)
        fut = qloop_loop_create_future(loop, NULL);
    else
        fut = PyObject_CallNoArgs(meth);
    Py_DECREF(meth);
    return fut;
}

/* self._ensure_fd_no_transport(fd).  asyncio's raises only when
 * self._transports[fd] exists, so with its own method, its own
 * WeakValueDictionary and an int fd absent from the dictionary, there is
 * nothing to call (this spares a KeyError raised through two frames). */
static int ensure_fd_no_transport(LoopObject *loop, PyObject *fdobj)
{
    qloop_state *st = loop->st;
    PyObject *meth;
    int own = is_asyncio_method(loop, NAME(st, N_ENSURE_FD_NO_TRANSPORT),
                                IMPORTED(st, I_ENSURE_FD_NO_TRANSPORT),
                                &meth);
    if (own < 0)
        return -1;
    if (own && PyLong_CheckExact(fdobj)) {
        int absent = 0;
        PyObject *transports =
            PyObject_GetAttr((PyObject *)loop, NAME(st, N_TRANSPORTS));
        if (transports &&
            (PyObject *)Py_TYPE(transports) ==
                IMPORTED(st, I_WEAK_VALUE_DICTIONARY)) {
            PyObject *data = PyObject_GetAttr(transports, NAME(st, N_DATA));
            if (data && PyDict_CheckExact(data))
                absent = PyDict_Contains(data, fdobj) == 0;
            Py_XDECREF(data);
        }
        Py_XDECREF(transports);
        PyErr_Clear(); /* the call below meets any error again */
        if (absent) {
            Py_DECREF(meth);
            return 0;
        }
    }
    PyObject *r = PyObject_CallOneArg(meth, fdobj);
    Py_DECREF(meth);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* base_events._check_ssl_socket(sock), then
 * `if self._debug and sock.gettimeout() != 0: raise ValueError(...)`. */
static int check_socket(LoopObject *loop, PyObject *sock)
{
    qloop_state *st = loop->st;
    if (!st->sock_imports && load_imports(st) < 0)
        return -1;
    /* A plain socket.socket is no SSLSocket; anything else may say it is
     * through __class__ (mocks do), so isinstance() it. */
    PyObject *ssl_socket = IMPORTED(st, I_SSL_SOCKET);
    if ((PyObject *)Py_TYPE(sock) != IMPORTED(st, I_SOCKET) &&
        ssl_socket != Py_None) {
        int r = PyObject_IsInstance(sock, ssl_socket);
        if (r < 0)
            return -1;
        if (r) {
            PyErr_SetString(PyExc_TypeError,
                            "Socket cannot be of type SSLSocket");
            return -1;
        }
    }
    if (loop->debug) {
        PyObject *timeout = qloop_call_method0(NAME(st, N_GETTIMEOUT), sock);
        if (!timeout)
            return -1;
        PyObject *zero = PyLong_FromLong(0);
        int ne = zero ? PyObject_RichCompareBool(timeout, zero, Py_NE) : -1;
        Py_XDECREF(zero);
        Py_DECREF(timeout);
        if (ne < 0)
            return -1;
        if (ne) {
            PyErr_SetString(PyExc_ValueError,
                            "the socket must be non-blocking");
            return -1;
        }
    }
    return 0;
}

/* ---- the system calls made here ------------------------------------------ */

char qloop_read_buf[QLOOP_READ_BUF_SIZE];

/* The socket's fd when recv()/send() may be made here rather than through
 * its method: a plain socket.socket (not a subclass, not a mock), open and
 * non-blocking (gettimeout() is 0.0), so that the call is exactly the one
 * socket.recv/socket.send would make.  -1 when the method must be called,
 * -2 with an exception.  The waiter passes `ready`: the fd is ready, so a
 * timeout set since the wait began would not make the call block, and
 * only the fd is looked at. */
static int direct_fd(qloop_state *st, PyObject *sock, int ready)
{
    if ((PyObject *)Py_TYPE(sock) != IMPORTED(st, I_SOCKET))
        return -1;
    if (!ready) {
        PyObject *t = qloop_call_method0(NAME(st, N_GETTIMEOUT), sock);
        if (!t)
            return -2;
        int nonblocking =
            PyFloat_CheckExact(t) && PyFloat_AS_DOUBLE(t) == 0.0;
        Py_DECREF(t);
        if (!nonblocking)
            return -1;
    }
    PyObject *f = qloop_call_method0(NAME(st, N_FILENO), sock);
    if (!f)
        return -2;
    long fd = PyLong_AsLong(f);
    Py_DECREF(f);
    if (fd == -1 && PyErr_Occurred())
        return -2;
    /* Closed (-1): the method raises what it raises. */
    return fd >= 0 && fd <= INT32_MAX ? (int)fd : -1;
}

/* The socket module's sock_call() loop: retry on EINTR once the signal
 * handlers ran.  1 when the call would block (no exception), 0 with the
 * result in *n, -1 with the exception socket.recv/send raise. */
static int direct_result(ssize_t r, ssize_t *n)
{
    if (r >= 0) {
        *n = r;
        return 0;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        return 1;
    if (errno == EINTR)
        return PyErr_CheckSignals() < 0 ? -1 : 2; /* 2: try again */
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
}

/* From this size on, a sock_recv() goes straight into a bytes of what is
 * queued (FIONREAD) when the fd's last one read that much: the ioctl
 * costs less than copying it out of the shared buffer (as stream.c). */
#define SOCK_DIRECT_READ (32 * 1024)

/* The last read on fd was big: the next goes straight into a bytes. */
static int *big_read_slot(LoopObject *loop, int fd)
{
    return loop ? &loop->big_read_fd[fd % QLOOP_BIG_READ_SLOTS] : NULL;
}

/* recv() of what FIONREAD says is queued (at most len), into a bytes of
 * that size: NULL with *handled 0 when less than SOCK_DIRECT_READ is
 * queued (the caller reads into the shared buffer: it tells EOF from
 * nothing yet), else as direct_recv. */
static PyObject *recv_queued(int fd, Py_ssize_t len, int *handled)
{
    int avail = 0;
    *handled = 0;
    if (ioctl(fd, FIONREAD, &avail) < 0 || avail < SOCK_DIRECT_READ)
        return NULL;
    Py_ssize_t want = avail < len ? avail : len;
    PyObject *data = PyBytes_FromStringAndSize(NULL, want);
    *handled = 1;
    if (!data)
        return NULL;
    for (;;) {
        ssize_t n;
        int rc = direct_result(recv(fd, PyBytes_AS_STRING(data), (size_t)want,
                                    0), &n);
        if (rc == 2)
            continue;
        if (rc == 0 && n == want)
            return data;
        PyObject *res = rc == 0 ? PyBytes_FromStringAndSize(
                                      PyBytes_AS_STRING(data), n)
                                : NULL; /* less than FIONREAD said: rare */
        Py_DECREF(data);
        return res;
    }
}

/* sock.recv(n) on a direct socket with a plain int 0 <= n <= the shared
 * read buffer: recv() into the buffer (no 256 KiB bytes allocated and
 * shrunk per call), copied out into an exactly-sized bytes; or, when the
 * fd is ready and its last read was SOCK_DIRECT_READ or more, straight
 * into a bytes of what is queued (not on the first try, which mostly
 * finds nothing: the ioctl would be one more system call).  The result,
 * NULL with an exception, or NULL without one when the call would block;
 * *handled 0 when the method must be called instead. */
static PyObject *direct_recv(LoopObject *loop, int fd, PyObject *nobj,
                             int ready, int *handled)
{
    *handled = 0;
    if (!PyLong_CheckExact(nobj))
        return NULL;
    Py_ssize_t len = PyLong_AsSsize_t(nobj);
    if (len < 0 || len > QLOOP_READ_BUF_SIZE) {
        PyErr_Clear(); /* the method raises its own error */
        return NULL;
    }
    *handled = 1;
    if (len == 0)
        return PyBytes_FromStringAndSize(NULL, 0); /* as socket.recv: no call */
    int *slot = big_read_slot(loop, fd);
    if (ready && slot && *slot == fd && len >= SOCK_DIRECT_READ) {
        int direct;
        PyObject *res = recv_queued(fd, len, &direct);
        if (direct)
            return res;
    }
    for (;;) {
        ssize_t n;
        int rc = direct_result(recv(fd, qloop_read_buf, (size_t)len, 0), &n);
        if (rc == 0) {
            if (slot && n >= SOCK_DIRECT_READ)
                *slot = fd;
            else if (slot && n > 0 && *slot == fd)
                *slot = -1;
            return PyBytes_FromStringAndSize(qloop_read_buf, n);
        }
        if (rc != 2)
            return NULL;
    }
}

/* sock.send(buf[0:len]) on a direct socket: 0 with the bytes sent in
 * *sent, 1 when it would block, -1 with an exception.  The caller holds
 * a buffer export of the data (socket.send's y*), so a signal handler run
 * on EINTR cannot resize it under us. */
static int direct_send(int fd, const char *buf, Py_ssize_t len,
                       Py_ssize_t *sent)
{
    for (;;) {
        int rc = direct_result(send(fd, buf, (size_t)len, 0), sent);
        if (rc != 2)
            return rc;
    }
}

/* Data socket.send would take as it is and we may send directly: a bytes
 * or a bytearray (a memoryview over one of them in the waiter). */
static int direct_data(PyObject *data)
{
    return PyBytes_CheckExact(data) || PyByteArray_CheckExact(data);
}

/* sock.recv(n): directly when we may; NULL without an exception when it
 * would block (directly) -- through the method, BlockingIOError.  *fdp:
 * the fd when the call was made directly, -1 otherwise. */
static PyObject *try_recv(LoopObject *loop, PyObject *sock, PyObject *n,
                          int ready, int *fdp)
{
    qloop_state *st = loop->st;
    int fd = *fdp = direct_fd(st, sock, ready);
    if (fd == -2)
        return NULL;
    if (fd >= 0) {
        int handled;
        PyObject *res = direct_recv(loop, fd, n, ready, &handled);
        if (handled)
            return res;
        *fdp = -1;
    }
    return qloop_call_method1(NAME(st, N_RECV), sock, n);
}

/* `conn, address = sock.accept(); conn.setblocking(False)` */
static PyObject *accept_once(qloop_state *st, PyObject *sock)
{
    PyObject *res = qloop_call_method0(NAME(st, N_ACCEPT), sock);
    if (!res)
        return NULL;
    PyObject *pair[2];
    int rc = unpack(res, 2, pair);
    Py_DECREF(res);
    if (rc < 0)
        return NULL;
    PyObject *r = qloop_call_method1(NAME(st, N_SETBLOCKING), pair[0], Py_False);
    if (!r) {
        Py_DECREF(pair[0]);
        Py_DECREF(pair[1]);
        return NULL;
    }
    Py_DECREF(r);
    PyObject *t = PyTuple_Pack(2, pair[0], pair[1]);
    Py_DECREF(pair[0]);
    Py_DECREF(pair[1]);
    return t;
}

/* One try of a read-side operation (and accept): the same call from the
 * method's body and from the waiter.  NULL without an exception, or with
 * BlockingIOError or InterruptedError, when it would block. */
static PyObject *try_read(LoopObject *loop, int op, PyObject *sock,
                          PyObject *arg1, PyObject *arg2)
{
    qloop_state *st = loop->st;
    switch (op) {
    case OP_RECV: {
        int fd;
        return try_recv(loop, sock, arg1, 1, &fd);
    }
    case OP_ACCEPT:
        return accept_once(st, sock);
    case OP_RECVFROM_INTO:
        return qloop_call_method2(NAME(st, N_RECVFROM_INTO), sock, arg1, arg2);
    default:
        return qloop_call_method1(NAME(st, op_info[op].call), sock, arg1);
    }
}

/* ---- SockWaiter ------------------------------------------------------------ */

static PyObject *waiter_vectorcall(PyObject *self, PyObject *const *args,
                                   size_t nargsf, PyObject *kwnames);

static SockWaiterObject *waiter_new(LoopObject *loop, int op, PyObject *fut,
                                    PyObject *sock, PyObject *arg1,
                                    PyObject *arg2)
{
    SockWaiterObject *w =
        PyObject_GC_New(SockWaiterObject, loop->st->SockWaiterType);
    if (!w)
        return NULL;
    w->vectorcall = waiter_vectorcall;
    w->loop = (LoopObject *)Py_NewRef((PyObject *)loop);
    w->fut = Py_NewRef(fut);
    w->sock = Py_NewRef(sock);
    w->arg1 = Py_XNewRef(arg1);
    w->arg2 = Py_XNewRef(arg2);
    w->handle = NULL;
    w->pos = w->len = 0;
    w->fd = -1;
    w->op = (unsigned char)op;
    w->writing = (unsigned char)op_info[op].writing;
    PyObject_GC_Track(w);
    return w;
}

/* asyncio's _sock_read_done/_sock_write_done: remove the watch unless
 * our handle was replaced (and so cancelled) by another reader/writer. */
static int waiter_unwatch(SockWaiterObject *w)
{
    HandleObject *h = (HandleObject *)w->handle;
    if (h && h->cancelled)
        return 0;
    return qloop_remove_watch(w->loop, w->fd, w->writing) < 0 ? -1 : 0;
}

/* Complete the future with `res` (a new reference) or, when NULL, with
 * `exc` (a new reference). */
static PyObject *waiter_finish(SockWaiterObject *w, PyObject *res,
                               PyObject *exc)
{
    qloop_state *st = w->loop->st;
    PyObject *fut = w->fut;
    w->fut = NULL;
    /* Our done callback would only remove the watch, done here. */
    PyObject *r = qloop_call_method1(NAME(st, N_REMOVE_DONE_CALLBACK), fut,
                               (PyObject *)w);
    int failed = !r;
    Py_XDECREF(r);
    PyObject *pending = failed ? take_exception() : NULL;
    if (waiter_unwatch(w) < 0 && !pending)
        pending = take_exception();
    if (res)
        r = qloop_call_method1(NAME(st, N_SET_RESULT), fut, res);
    else
        r = qloop_call_method1(NAME(st, N_SET_EXCEPTION), fut, exc);
    Py_XDECREF(res);
    Py_XDECREF(exc);
    Py_DECREF(fut);
    /* Drop what the operation held (a sendall's data) now. */
    Py_CLEAR(w->sock);
    Py_CLEAR(w->arg1);
    Py_CLEAR(w->arg2);
    if (!r) {
        Py_XDECREF(pending);
        return NULL;
    }
    Py_DECREF(r);
    if (pending) {
        PyErr_SetObject((PyObject *)Py_TYPE(pending), pending);
        Py_DECREF(pending);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The sendall step: `n = sock.send(view[start:])`.  NULL with an
 * exception, Py_None when the data is all sent, NULL without an
 * exception to keep waiting. */
static PyObject *waiter_send_more(SockWaiterObject *w)
{
    qloop_state *st = w->loop->st;
    Py_ssize_t n;
    /* A view over a bytes or a bytearray: bytes and items are one. */
    int fd = direct_data(PyMemoryView_GET_BASE(w->arg1))
                 ? direct_fd(st, w->sock, 1)
                 : -1;
    if (fd == -2)
        return NULL;
    if (fd >= 0) {
        Py_buffer *b = PyMemoryView_GET_BUFFER(w->arg1);
        int rc = direct_send(fd, (const char *)b->buf + w->pos,
                             b->len - w->pos, &n);
        if (rc != 0)
            return NULL; /* with the exception, or none: wait */
    } else {
        PyObject *view = w->pos ? PySequence_GetSlice(w->arg1, w->pos,
                                                      PY_SSIZE_T_MAX)
                                : Py_NewRef(w->arg1);
        if (!view)
            return NULL;
        PyObject *res = qloop_call_method1(NAME(st, N_SEND), w->sock, view);
        Py_DECREF(view);
        if (!res)
            return NULL;
        n = PyLong_AsSsize_t(res);
        Py_DECREF(res);
        if (n == -1 && PyErr_Occurred())
            return NULL;
    }
    w->pos += n;
    if (w->pos == w->len)
        Py_RETURN_NONE;
    return NULL;
}

/* _sock_connect_cb: the outcome of a connect() in progress. */
static PyObject *waiter_connect_result(SockWaiterObject *w)
{
    qloop_state *st = w->loop->st;
    PyObject *level = PyLong_FromLong(SOL_SOCKET);
    PyObject *opt = PyLong_FromLong(SO_ERROR);
    PyObject *err = level && opt ? qloop_call_method2(NAME(st, N_GETSOCKOPT),
                                                w->sock, level, opt)
                                 : NULL;
    Py_XDECREF(level);
    Py_XDECREF(opt);
    if (!err)
        return NULL;
    PyObject *zero = PyLong_FromLong(0);
    int failed = zero ? PyObject_RichCompareBool(err, zero, Py_NE) : -1;
    Py_XDECREF(zero);
    if (failed <= 0) {
        Py_DECREF(err);
        return failed < 0 ? NULL : Py_NewRef(Py_None);
    }
    /* raise OSError(err, f'Connect call failed {address}') */
    PyObject *msg = PyUnicode_FromFormat("Connect call failed %S", w->arg1);
    PyObject *exc = msg ? PyObject_CallFunctionObjArgs(PyExc_OSError, err,
                                                       msg, NULL)
                        : NULL;
    Py_XDECREF(msg);
    Py_DECREF(err);
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* The fd is ready: asyncio's _sock_recv, _sock_sendall, _sock_connect_cb,
 * _sock_accept, ... */
static PyObject *waiter_ready(SockWaiterObject *w)
{
    qloop_state *st = w->loop->st;
    if (!w->fut)
        Py_RETURN_NONE;
    /* Cancellation can be scheduled on a previous iteration. */
    PyObject *done = qloop_call_method0(NAME(st, N_DONE), w->fut);
    if (!done)
        return NULL;
    int is_done = PyObject_IsTrue(done);
    Py_DECREF(done);
    if (is_done)
        return is_done < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *res;
    switch (w->op) {
    case OP_SENDALL:
        res = waiter_send_more(w);
        if (!res && !PyErr_Occurred())
            Py_RETURN_NONE; /* more to send */
        break;
    case OP_SENDTO: {
        PyObject *flags = PyLong_FromLong(0);
        res = flags ? call_method3(NAME(st, N_SENDTO), w->sock, w->arg1,
                                   flags, w->arg2)
                    : NULL;
        Py_XDECREF(flags);
        break;
    }
    case OP_CONNECT:
        res = waiter_connect_result(w);
        break;
    default:
        res = try_read(w->loop, w->op, w->sock, w->arg1, w->arg2);
        break;
    }
    if (res)
        return waiter_finish(w, res, NULL);
    if (!PyErr_Occurred() || would_block()) {
        PyErr_Clear(); /* try again next time */
        Py_RETURN_NONE;
    }
    if (is_exit())
        return NULL;
    return waiter_finish(w, NULL, take_exception());
}

static PyObject *waiter_vectorcall(PyObject *self, PyObject *const *args,
                                   size_t nargsf, PyObject *kwnames)
{
    SockWaiterObject *w = (SockWaiterObject *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    (void)args;
    if (kwnames && PyTuple_GET_SIZE(kwnames)) {
        PyErr_SetString(PyExc_TypeError,
                        "SockWaiter() takes no keyword arguments");
        return NULL;
    }
    if (nargs == 0)
        return waiter_ready(w);
    if (nargs == 1) {
        /* The future is done: it was cancelled (or completed by someone
         * else), or we would have removed this callback. */
        if (waiter_unwatch(w) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    PyErr_Format(PyExc_TypeError,
                 "SockWaiter() takes 0 or 1 arguments (%zd given)", nargs);
    return NULL;
}

static int waiter_traverse(SockWaiterObject *w, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(w));
    Py_VISIT(w->loop);
    Py_VISIT(w->fut);
    Py_VISIT(w->sock);
    Py_VISIT(w->arg1);
    Py_VISIT(w->arg2);
    Py_VISIT(w->handle);
    return 0;
}

static int waiter_clear(SockWaiterObject *w)
{
    Py_CLEAR(w->fut);
    Py_CLEAR(w->sock);
    Py_CLEAR(w->arg1);
    Py_CLEAR(w->arg2);
    Py_CLEAR(w->handle);
    Py_CLEAR(w->loop);
    return 0;
}

static void waiter_dealloc(SockWaiterObject *w)
{
    PyTypeObject *type = Py_TYPE(w);
    PyObject_GC_UnTrack(w);
    waiter_clear(w);
    PyObject_GC_Del(w);
    Py_DECREF(type);
}

static PyObject *waiter_repr(SockWaiterObject *w)
{
    return PyUnicode_FromFormat("<SockWaiter %s fd=%d>",
                                op_info[w->op].qualname, w->fd);
}

static PyMemberDef waiter_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET,
     offsetof(SockWaiterObject, vectorcall), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot waiter_slots[] = {
    {Py_tp_dealloc, waiter_dealloc},
    {Py_tp_traverse, waiter_traverse},
    {Py_tp_clear, waiter_clear},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_repr, waiter_repr},
    {Py_tp_members, waiter_members},
    {0, NULL},
};

static PyType_Spec waiter_spec = {
    .name = "qloop._qloop.SockWaiter",
    .basicsize = sizeof(SockWaiterObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = waiter_slots,
};

/* ---- SockCoroutine: the method's body ------------------------------------------ */

static PySendResult coro_delegate(SockCoroutineObject *c, PyObject *value,
                                  PyObject *const *throw_args,
                                  Py_ssize_t nthrow, PyObject **result);

/* The call would block: asyncio's
 *     fut = self.create_future()
 *     fd = sock.fileno()
 *     self._ensure_fd_no_transport(fd)
 *     handle = self._add_reader(fd, self._sock_recv, fut, sock, n)
 *     fut.add_done_callback(
 *         functools.partial(self._sock_read_done, fd, handle=handle))
 *     return await fut
 */
static PySendResult coro_wait(SockCoroutineObject *c, PyObject *arg1,
                              PyObject *arg2, Py_ssize_t pos,
                              PyObject **result)
{
    LoopObject *loop = c->loop;
    qloop_state *st = loop->st;
    PyObject *sock = c->args[0];
    SockWaiterObject *w = NULL;
    PyObject *fdobj = NULL, *r;
    PyObject *fut = create_future(loop);
    if (!fut)
        return PYGEN_ERROR;
    /* sock.fileno(): a direct call just made knows it (a plain
     * socket.socket's fileno() is its own). */
    fdobj = c->fd >= 0 ? PyLong_FromLong(c->fd)
                       : qloop_call_method0(NAME(st, N_FILENO), sock);
    if (!fdobj || ensure_fd_no_transport(loop, fdobj) < 0)
        goto fail;
    int fd = c->fd >= 0 ? c->fd : fd_from_fileno(fdobj);
    if (fd < 0)
        goto fail;
    w = waiter_new(loop, c->op, fut, sock, arg1, arg2);
    if (!w)
        goto fail;
    w->fd = fd;
    if (c->op == OP_SENDALL) {
        w->pos = pos;
        w->len = PyObject_Size(arg1);
        if (w->len < 0)
            goto fail;
    }
    w->handle = qloop_add_watch(loop, fd, w->writing, (PyObject *)w, NULL, 0);
    if (!w->handle)
        goto fail;
    r = qloop_call_method1(NAME(st, N_ADD_DONE_CALLBACK), fut, (PyObject *)w);
    if (!r) {
        PyObject *exc = take_exception();
        if (waiter_unwatch(w) < 0)
            PyErr_Clear();
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
        goto fail;
    }
    Py_DECREF(r);
    c->inner = awaitable_iter(fut);
    if (!c->inner)
        goto fail;
    Py_DECREF(w);
    Py_DECREF(fdobj);
    Py_DECREF(fut);
    c->state = CORO_WAITING;
    return coro_delegate(c, Py_None, NULL, 0, result);
fail:
    Py_XDECREF(w);
    Py_XDECREF(fdobj);
    Py_DECREF(fut);
    return PYGEN_ERROR;
}

/* _sock_connect with a resolved address. */
static PySendResult coro_connect(SockCoroutineObject *c, PyObject *address,
                                 PyObject **result)
{
    qloop_state *st = c->loop->st;
    PyObject *r = qloop_call_method1(NAME(st, N_CONNECT), c->args[0], address);
    if (r) {
        Py_DECREF(r);
        *result = Py_NewRef(Py_None);
        return PYGEN_RETURN;
    }
    if (!would_block())
        return PYGEN_ERROR;
    /* Issue #23618: a connect() interrupted by EINTR goes on in the
     * background; wait for writability as for EINPROGRESS. */
    PyErr_Clear();
    return coro_wait(c, address, NULL, 0, result);
}

/* sock_connect on AF_INET/AF_INET6: resolved = await
 * self._ensure_resolved(address, family=sock.family, type=sock.type,
 * proto=sock.proto, loop=self).  Numeric hosts resolve without
 * suspending. */
static PySendResult coro_resolve(SockCoroutineObject *c, PyObject **result)
{
    qloop_state *st = c->loop->st;
    PyObject *sock = c->args[0];
    PyObject *argv[7] = {NULL, (PyObject *)c->loop, c->args[1]};
    PySendResult rc = PYGEN_ERROR;
    PyObject *kwnames = PyTuple_Pack(4, NAME(st, N_FAMILY), NAME(st, N_TYPE),
                                     NAME(st, N_PROTO), NAME(st, N_LOOP));
    if (!kwnames)
        return PYGEN_ERROR;
    argv[3] = PyObject_GetAttr(sock, NAME(st, N_FAMILY));
    argv[4] = argv[3] ? PyObject_GetAttr(sock, NAME(st, N_TYPE)) : NULL;
    argv[5] = argv[4] ? PyObject_GetAttr(sock, NAME(st, N_PROTO)) : NULL;
    argv[6] = (PyObject *)c->loop;
    PyObject *coro = NULL;
    if (argv[5])
        coro = PyObject_VectorcallMethod(NAME(st, N_ENSURE_RESOLVED),
                                         argv + 1,
                                         2 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                         kwnames);
    Py_XDECREF(argv[3]);
    Py_XDECREF(argv[4]);
    Py_XDECREF(argv[5]);
    Py_DECREF(kwnames);
    if (!coro)
        return PYGEN_ERROR;
    c->inner = awaitable_iter(coro);
    Py_DECREF(coro);
    if (c->inner) {
        c->state = CORO_RESOLVING;
        rc = coro_delegate(c, Py_None, NULL, 0, result);
    }
    return rc;
}

/* `_, _, _, _, address = resolved[0]`, then connect. */
static PySendResult coro_resolved(SockCoroutineObject *c, PyObject *resolved,
                                  PyObject **result)
{
    PyObject *first = PySequence_GetItem(resolved, 0);
    if (!first)
        return PYGEN_ERROR;
    PyObject *info[5];
    int rc = unpack(first, 5, info);
    Py_DECREF(first);
    if (rc < 0)
        return PYGEN_ERROR;
    for (int i = 0; i < 4; i++)
        Py_DECREF(info[i]);
    PySendResult r = coro_connect(c, info[4], result);
    Py_DECREF(info[4]);
    return r;
}

static int is_inet_family(qloop_state *st, PyObject *sock)
{
    PyObject *family = PyObject_GetAttr(sock, NAME(st, N_FAMILY));
    if (!family)
        return -1;
    int found = 0;
    const long families[] = {AF_INET, AF_INET6};
    for (size_t i = 0; i < sizeof(families) / sizeof(families[0]) && !found;
         i++) {
        PyObject *f = PyLong_FromLong(families[i]);
        found = f ? PyObject_RichCompareBool(family, f, Py_EQ) : -1;
        Py_XDECREF(f);
        if (found < 0)
            break;
    }
    Py_DECREF(family);
    return found;
}

/* The body, up to the first suspension. */
static PySendResult coro_start(SockCoroutineObject *c, PyObject **result)
{
    LoopObject *loop = c->loop;
    qloop_state *st = loop->st;
    PyObject *sock = c->args[0];
    PyObject *res;
    if (check_socket(loop, sock) < 0)
        return PYGEN_ERROR;
    switch (c->op) {
    case OP_CONNECT: {
        int inet = is_inet_family(st, sock);
        if (inet < 0)
            return PYGEN_ERROR;
        return inet ? coro_resolve(c, result)
                    : coro_connect(c, c->args[1], result);
    }
    case OP_SENDALL: {
        Py_ssize_t n = 0;
        int fd = direct_data(c->args[1]) ? direct_fd(st, sock, 0) : -1;
        if (fd == -2)
            return PYGEN_ERROR;
        if (fd >= 0) {
            Py_buffer b;
            if (PyObject_GetBuffer(c->args[1], &b, PyBUF_SIMPLE) < 0)
                return PYGEN_ERROR;
            int rc = direct_send(fd, b.buf, b.len, &n);
            PyBuffer_Release(&b);
            if (rc < 0)
                return PYGEN_ERROR;
            c->fd = fd;
            if (rc == 1)
                n = 0;
            res = NULL;
        } else if ((res = qloop_call_method1(NAME(st, N_SEND), sock,
                                             c->args[1]))) {
            n = PyLong_AsSsize_t(res);
            Py_DECREF(res);
            if (n == -1 && PyErr_Occurred())
                return PYGEN_ERROR;
        } else if (would_block()) {
            PyErr_Clear();
        } else {
            return PYGEN_ERROR;
        }
        Py_ssize_t len = PyObject_Size(c->args[1]);
        if (len < 0)
            return PYGEN_ERROR;
        if (n == len) {
            *result = Py_NewRef(Py_None); /* all data sent */
            return PYGEN_RETURN;
        }
        PyObject *view = PyMemoryView_FromObject(c->args[1]);
        if (!view)
            return PYGEN_ERROR;
        PySendResult r = coro_wait(c, view, NULL, n, result);
        Py_DECREF(view);
        return r;
    }
    case OP_SENDTO:
        res = qloop_call_method2(NAME(st, N_SENDTO), sock, c->args[1], c->args[2]);
        if (!res && would_block()) {
            PyErr_Clear();
            return coro_wait(c, c->args[1], c->args[2], 0, result);
        }
        break;
    case OP_RECVFROM_INTO: {
        /* if not nbytes: nbytes = len(buf) */
        int given = c->args[2] ? PyObject_IsTrue(c->args[2]) : 0;
        if (given < 0)
            return PYGEN_ERROR;
        if (!given) {
            Py_ssize_t len = PyObject_Size(c->args[1]);
            if (len < 0)
                return PYGEN_ERROR;
            Py_XSETREF(c->args[2], PyLong_FromSsize_t(len));
            if (!c->args[2])
                return PYGEN_ERROR;
        }
    }
        /* fall through */
    default:
        if (c->op == OP_RECV)
            res = try_recv(c->loop, sock, c->args[1], 0, &c->fd);
        else
            res = try_read(c->loop, c->op, sock, c->args[1], c->args[2]);
        if (!res && (!PyErr_Occurred() || would_block())) {
            PyErr_Clear();
            return coro_wait(c, c->args[1], c->args[2], 0, result);
        }
        break;
    }
    if (!res)
        return PYGEN_ERROR;
    *result = res;
    return PYGEN_RETURN;
}

/* Drive the awaited iterator: `await fut` (or the resolver). */
static PySendResult coro_delegate(SockCoroutineObject *c, PyObject *value,
                                  PyObject *const *throw_args,
                                  Py_ssize_t nthrow, PyObject **result)
{
    PySendResult r;
    if (throw_args) {
        PyObject *argv[4] = {c->inner};
        for (Py_ssize_t i = 0; i < nthrow; i++)
            argv[1 + i] = throw_args[i];
        PyObject *res = PyObject_VectorcallMethod(NAME(c->loop->st, N_THROW),
                                                  argv, 1 + nthrow, NULL);
        if (res) {
            *result = res;
            return PYGEN_NEXT;
        }
        r = PYGEN_ERROR;
        if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
            PyObject *exc = take_exception();
            *result = Py_NewRef(((PyStopIterationObject *)exc)->value);
            Py_DECREF(exc);
            r = PYGEN_RETURN;
        }
    } else {
        r = PyIter_Send(c->inner, value, result);
    }
    if (r == PYGEN_NEXT)
        return r;
    Py_CLEAR(c->inner);
    int resolving = c->state == CORO_RESOLVING;
    c->state = CORO_DONE;
    if (resolving && r == PYGEN_RETURN) {
        PyObject *resolved = *result;
        *result = NULL;
        r = coro_resolved(c, resolved, result);
        Py_DECREF(resolved);
    }
    return r;
}

/* Raise what throw() was given, as a coroutine that is not suspended
 * does. */
static void raise_thrown(PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *typ = args[0];
    PyObject *val = nargs > 1 ? args[1] : NULL;
    PyObject *tb = nargs > 2 && args[2] != Py_None ? args[2] : NULL;
    if (PyExceptionInstance_Check(typ)) {
        if (val && val != Py_None) {
            PyErr_SetString(PyExc_TypeError,
                            "instance exception may not have a separate "
                            "value");
            return;
        }
        if (tb)
            PyException_SetTraceback(typ, tb);
        PyErr_SetObject((PyObject *)Py_TYPE(typ), typ);
    } else if (PyExceptionClass_Check(typ)) {
        PyErr_SetObject(typ, val && val != Py_None ? val : NULL);
        if (tb) {
            PyObject *exc = take_exception();
            if (exc) {
                PyException_SetTraceback(exc, tb);
                PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
                Py_DECREF(exc);
            }
        }
    } else {
        PyErr_Format(PyExc_TypeError,
                     "exceptions must be classes or instances deriving "
                     "from BaseException, not %s",
                     Py_TYPE(typ)->tp_name);
    }
}

/* One step: send(value), or throw(*throw_args) when throw_args. */
static PySendResult coro_step(SockCoroutineObject *c, PyObject *value,
                              PyObject *const *throw_args, Py_ssize_t nthrow,
                              PyObject **result)
{
    *result = NULL;
    if (c->running) {
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return PYGEN_ERROR;
    }
    PySendResult r = PYGEN_ERROR;
    c->running = 1;
    switch (c->state) {
    case CORO_CREATED:
        if (throw_args) {
            c->state = CORO_DONE;
            raise_thrown(throw_args, nthrow);
            break;
        }
        if (value != Py_None) {
            PyErr_SetString(PyExc_TypeError, "can't send non-None value to "
                                             "a just-started coroutine");
            break;
        }
        c->state = CORO_DONE;
        r = coro_start(c, result);
        if (r == PYGEN_ERROR && PyErr_ExceptionMatches(PyExc_StopIteration)) {
            /* Only a duck-typed socket can raise it: a coroutine turns
             * it into RuntimeError. */
            PyObject *exc = take_exception();
            PyErr_SetString(PyExc_RuntimeError,
                            "coroutine raised StopIteration");
            PyObject *rt = take_exception();
            PyException_SetCause(rt, Py_NewRef(exc));
            PyException_SetContext(rt, exc);
            PyErr_SetObject((PyObject *)Py_TYPE(rt), rt);
            Py_DECREF(rt);
        }
        break;
    case CORO_RESOLVING:
    case CORO_WAITING:
        r = coro_delegate(c, value, throw_args, nthrow, result);
        break;
    default:
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot reuse already awaited coroutine");
        break;
    }
    c->running = 0;
    return r;
}

/* Return `value` the way tp_iternext and send() do: StopIteration(value).
 * A tuple or an exception must not become StopIteration's arguments. */
static PyObject *stop_iteration(PyObject *value)
{
    if (PyTuple_Check(value) || PyExceptionInstance_Check(value)) {
        PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, value);
        if (exc) {
            PyErr_SetObject(PyExc_StopIteration, exc);
            Py_DECREF(exc);
        }
    } else {
        PyErr_SetObject(PyExc_StopIteration, value);
    }
    Py_DECREF(value);
    return NULL;
}

static PySendResult coro_am_send(PyObject *self, PyObject *value,
                                 PyObject **result)
{
    return coro_step((SockCoroutineObject *)self, value, NULL, 0, result);
}

static PyObject *coro_iternext(PyObject *self)
{
    PyObject *result;
    PySendResult r = coro_step((SockCoroutineObject *)self, Py_None, NULL, 0,
                               &result);
    if (r == PYGEN_NEXT)
        return result;
    if (r == PYGEN_ERROR)
        return NULL;
    if (result == Py_None) {
        Py_DECREF(result); /* exhausted, no exception: returned None */
        return NULL;
    }
    return stop_iteration(result);
}

static PyObject *coro_send(PyObject *self, PyObject *value)
{
    PyObject *result;
    PySendResult r =
        coro_step((SockCoroutineObject *)self, value, NULL, 0, &result);
    if (r == PYGEN_RETURN)
        return stop_iteration(result);
    return r == PYGEN_NEXT ? result : NULL;
}

static PyObject *coro_throw(PyObject *self, PyObject *const *args,
                            Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_Format(PyExc_TypeError,
                     nargs ? "throw expected at most 3 arguments, got %zd"
                           : "throw expected at least 1 argument, got %zd",
                     nargs);
        return NULL;
    }
    PyObject *result;
    PySendResult r =
        coro_step((SockCoroutineObject *)self, NULL, args, nargs, &result);
    if (r == PYGEN_RETURN)
        return stop_iteration(result);
    return r == PYGEN_NEXT ? result : NULL;
}

static PyObject *coro_close(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    SockCoroutineObject *c = (SockCoroutineObject *)self;
    if (c->running) {
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return NULL;
    }
    /* GeneratorExit in `await fut` closes the awaited iterator and ends
     * the body; the future, the watch and the done callback stay, as
     * they do under asyncio. */
    PyObject *inner = c->inner;
    c->inner = NULL;
    c->state = CORO_DONE;
    if (inner) {
        PyObject *r = qloop_call_method0(NAME(c->loop->st, N_CLOSE), inner);
        Py_DECREF(inner);
        if (!r) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError))
                return NULL;
            PyErr_Clear();
        } else {
            Py_DECREF(r);
        }
    }
    Py_RETURN_NONE;
}

static PyObject *coro_await(PyObject *self) { return Py_NewRef(self); }

/* As a coroutine object: "coroutine ... was never awaited". */
static void coro_finalize(PyObject *self)
{
    SockCoroutineObject *c = (SockCoroutineObject *)self;
    if (c->state != CORO_CREATED)
        return;
    c->state = CORO_DONE;
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *saved = PyErr_GetRaisedException();
#else
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
#endif
    if (PyErr_WarnFormat(PyExc_RuntimeWarning, 1,
                         "coroutine '%s' was never awaited",
                         op_info[c->op].qualname) < 0)
        PyErr_WriteUnraisable(self);
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(saved);
#else
    PyErr_Restore(t, v, tb);
#endif
}

static int coro_traverse(SockCoroutineObject *c, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(c));
    Py_VISIT(c->loop);
    Py_VISIT(c->args[0]);
    Py_VISIT(c->args[1]);
    Py_VISIT(c->args[2]);
    Py_VISIT(c->inner);
    return 0;
}

static int coro_clear(SockCoroutineObject *c)
{
    Py_CLEAR(c->inner);
    Py_CLEAR(c->args[0]);
    Py_CLEAR(c->args[1]);
    Py_CLEAR(c->args[2]);
    Py_CLEAR(c->loop);
    return 0;
}

static void coro_dealloc(SockCoroutineObject *c)
{
    PyTypeObject *type = Py_TYPE(c);
    if (c->state == CORO_CREATED &&
        PyObject_CallFinalizerFromDealloc((PyObject *)c) < 0)
        return; /* resurrected */
    PyObject_GC_UnTrack(c);
    coro_clear(c);
    PyObject_GC_Del(c);
    Py_DECREF(type);
}

static PyObject *coro_repr(SockCoroutineObject *c)
{
    return PyUnicode_FromFormat("<coroutine object %s at %p>",
                                op_info[c->op].qualname, c);
}

static PyObject *coro_get_name(SockCoroutineObject *c, void *Py_UNUSED(x))
{
    return PyUnicode_FromString(op_info[c->op].name);
}

static PyObject *coro_get_qualname(SockCoroutineObject *c,
                                   void *Py_UNUSED(x))
{
    return PyUnicode_FromString(op_info[c->op].qualname);
}

static PyObject *coro_get_await(SockCoroutineObject *c, void *Py_UNUSED(x))
{
    return Py_NewRef(c->inner ? c->inner : Py_None);
}

static PyObject *coro_get_running(SockCoroutineObject *c, void *Py_UNUSED(x))
{
    return PyBool_FromLong(c->running);
}

static PyObject *coro_get_suspended(SockCoroutineObject *c,
                                    void *Py_UNUSED(x))
{
    return PyBool_FromLong(!c->running && (c->state == CORO_RESOLVING ||
                                           c->state == CORO_WAITING));
}

static PyObject *coro_get_none(SockCoroutineObject *c, void *Py_UNUSED(x))
{
    (void)c;
    Py_RETURN_NONE;
}

static PyMethodDef coro_methods[] = {
    {"send", (PyCFunction)coro_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))coro_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)coro_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef coro_getset[] = {
    {"__name__", (getter)coro_get_name, NULL, NULL, NULL},
    {"__qualname__", (getter)coro_get_qualname, NULL, NULL, NULL},
    {"cr_await", (getter)coro_get_await, NULL, NULL, NULL},
    {"cr_running", (getter)coro_get_running, NULL, NULL, NULL},
    {"cr_suspended", (getter)coro_get_suspended, NULL, NULL, NULL},
    {"cr_frame", (getter)coro_get_none, NULL, NULL, NULL},
    {"cr_code", (getter)coro_get_none, NULL, NULL, NULL},
    {"cr_origin", (getter)coro_get_none, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot coro_slots[] = {
    {Py_tp_dealloc, coro_dealloc},
    {Py_tp_traverse, coro_traverse},
    {Py_tp_clear, coro_clear},
    {Py_tp_finalize, coro_finalize},
    {Py_tp_repr, coro_repr},
    {Py_tp_iternext, coro_iternext},
    {Py_am_await, coro_await},
    {Py_am_send, coro_am_send},
    {Py_tp_methods, coro_methods},
    {Py_tp_getset, coro_getset},
    {0, NULL},
};

static PyType_Spec coro_spec = {
    .name = "qloop._qloop.SockCoroutine",
    .basicsize = sizeof(SockCoroutineObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = coro_slots,
};

/* ---- the methods ------------------------------------------------------------------ */

/* Bind arguments as a Python `def` would, with its messages. */
static int parse_args(const sock_op_info *info, PyObject *const *args,
                      Py_ssize_t nargsf, PyObject *kwnames, PyObject **out)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    int np = info->nparams;
    for (Py_ssize_t i = 0; i < nargs && i < np; i++)
        out[i] = args[i];
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        int i = 0;
        while (i < np && PyUnicode_CompareWithASCIIString(
                             key, info->params[i]) != 0)
            i++;
        if (i == np) {
            PyErr_Format(PyExc_TypeError,
                         "%s() got an unexpected keyword argument '%S'",
                         info->qualname, key);
            return -1;
        }
        if (out[i] || i < nargs) {
            PyErr_Format(PyExc_TypeError,
                         "%s() got multiple values for argument '%s'",
                         info->qualname, info->params[i]);
            return -1;
        }
        out[i] = args[nargs + k];
    }
    if (nargs > np) {
        if (info->nrequired == np)
            PyErr_Format(PyExc_TypeError,
                         "%s() takes %d positional arguments but %zd were "
                         "given",
                         info->qualname, np + 1, nargs + 1);
        else
            PyErr_Format(PyExc_TypeError,
                         "%s() takes from %d to %d positional arguments but "
                         "%zd were given",
                         info->qualname, info->nrequired + 1, np + 1,
                         nargs + 1);
        return -1;
    }
    const char *missing[3];
    int nmissing = 0;
    for (int i = 0; i < info->nrequired; i++)
        if (!out[i])
            missing[nmissing++] = info->params[i];
    if (!nmissing)
        return 0;
    if (nmissing == 1)
        PyErr_Format(PyExc_TypeError,
                     "%s() missing 1 required positional argument: '%s'",
                     info->qualname, missing[0]);
    else if (nmissing == 2)
        PyErr_Format(PyExc_TypeError,
                     "%s() missing 2 required positional arguments: '%s' "
                     "and '%s'",
                     info->qualname, missing[0], missing[1]);
    else
        PyErr_Format(PyExc_TypeError,
                     "%s() missing 3 required positional arguments: '%s', "
                     "'%s', and '%s'",
                     info->qualname, missing[0], missing[1], missing[2]);
    return -1;
}

static PyObject *sock_method(LoopObject *loop, int op, PyObject *const *args,
                             Py_ssize_t nargsf, PyObject *kwnames)
{
    PyObject *argv[3] = {NULL, NULL, NULL};
    if (parse_args(&op_info[op], args, nargsf, kwnames, argv) < 0)
        return NULL;
    SockCoroutineObject *c =
        PyObject_GC_New(SockCoroutineObject, loop->st->SockCoroutineType);
    if (!c)
        return NULL;
    c->loop = (LoopObject *)Py_NewRef((PyObject *)loop);
    for (int i = 0; i < 3; i++)
        c->args[i] = Py_XNewRef(argv[i]);
    c->inner = NULL;
    c->fd = -1;
    c->op = (unsigned char)op;
    c->state = CORO_CREATED;
    c->running = 0;
    PyObject_GC_Track(c);
    return (PyObject *)c;
}

#define SOCK_METHOD(fn, op)                                                   \
    PyObject *fn(LoopObject *self, PyObject *const *args, Py_ssize_t nargsf,  \
                 PyObject *kwnames)                                           \
    {                                                                         \
        return sock_method(self, op, args, nargsf, kwnames);                  \
    }

SOCK_METHOD(qloop_sock_recv, OP_RECV)
SOCK_METHOD(qloop_sock_recv_into, OP_RECV_INTO)
SOCK_METHOD(qloop_sock_recvfrom, OP_RECVFROM)
SOCK_METHOD(qloop_sock_recvfrom_into, OP_RECVFROM_INTO)
SOCK_METHOD(qloop_sock_sendall, OP_SENDALL)
SOCK_METHOD(qloop_sock_sendto, OP_SENDTO)
SOCK_METHOD(qloop_sock_connect, OP_CONNECT)
SOCK_METHOD(qloop_sock_accept, OP_ACCEPT)

/* ---- module state ------------------------------------------------------------------ */

int qloop_sock_exec(PyObject *module, qloop_state *st)
{
    PyObject *t = PyType_FromModuleAndSpec(module, &coro_spec, NULL);
    if (!t)
        return -1;
    st->SockCoroutineType = (PyTypeObject *)t;
    if (PyModule_AddType(module, st->SockCoroutineType) < 0)
        return -1;
    t = PyType_FromModuleAndSpec(module, &waiter_spec, NULL);
    if (!t)
        return -1;
    st->SockWaiterType = (PyTypeObject *)t;
    if (PyModule_AddType(module, st->SockWaiterType) < 0)
        return -1;
    st->sock_names = PyTuple_New(N_COUNT);
    if (!st->sock_names)
        return -1;
    for (int i = 0; i < N_COUNT; i++) {
        PyObject *s = PyUnicode_InternFromString(name_strings[i]);
        if (!s)
            return -1;
        PyTuple_SET_ITEM(st->sock_names, i, s);
    }
    return 0;
}

int qloop_sock_traverse(qloop_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->SockCoroutineType);
    Py_VISIT(st->SockWaiterType);
    Py_VISIT(st->sock_names);
    Py_VISIT(st->sock_imports);
    return 0;
}

void qloop_sock_clear(qloop_state *st)
{
    Py_CLEAR(st->SockCoroutineType);
    Py_CLEAR(st->SockWaiterType);
    Py_CLEAR(st->sock_names);
    Py_CLEAR(st->sock_imports);
}
