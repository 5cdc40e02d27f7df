/*
 * The datagram (UDP, Unix datagram) transport: a C type whose bases are
 * asyncio.Transport and asyncio.DatagramTransport, as asyncio's
 * _SelectorDatagramTransport is an instance of both.
 *
 * Layout.  asyncio.BaseTransport has __slots__ = ('_extra',): its
 * instances are PyObject_HEAD plus one pointer, and the inherited `_extra`
 * member descriptor reads that pointer.  DatagramObject starts with the
 * same two fields, so the descriptor works on ours; make_type() checks the
 * base's size before it trusts that.  After them come a __dict__ (for what
 * asyncio's Python code keeps on a transport that we do not need in C:
 * flow-control water marks, _protocol_connected, _server...) and a weakref
 * list (loop._transports is a WeakValueDictionary).
 *
 * What is C: the hot paths, sendto() when nothing is buffered and
 * _read_ready(), with the system calls made on the fd directly and the
 * addresses converted here (AF_INET, AF_INET6, AF_UNIX; other families go
 * through the socket object).  The last peer address is cached both ways,
 * so an echo's sendto(data, addr) with the addr it was handed needs no
 * parsing.  What is not hot is asyncio's own Python, attached to the type
 * by qloop/_datagram.py (close, abort, _fatal_error, flow control, repr,
 * the buffered _sendto_ready...), so messages, order of connection_lost and
 * the per-version details (empty datagrams, buffer accounting) are those of
 * the running Python.  sendto() hands the cases it does not finish
 * (anything buffered, a full socket, a closed transport, bad arguments, an
 * address it cannot parse) to asyncio's sendto, stored on the type as
 * `_py_sendto`, which re-checks everything itself.
 *
 * The fd is the socket's, which the transport owns as asyncio's does.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

/* recvmmsg() is Linux's (and recent BSDs'); elsewhere one recvfrom() per
 * readiness event, as asyncio. */
#ifdef __linux__
#define USE_RECVMMSG 1
#else
#define USE_RECVMMSG 0
#define recvmmsg(fd, msgs, n, flags, t) (errno = ENOSYS, -1)
struct mmsghdr {
    struct msghdr msg_hdr;
    unsigned int msg_len;
};
#endif

#include "qloop_ext.h"

/* asyncio's _SelectorTransport.max_size. */
#define DGRAM_MAX_SIZE (256 * 1024)

typedef struct {
    PyObject_HEAD
    PyObject *extra;       /* BaseTransport's `_extra` slot: keep first */
    PyObject *dict;
    PyObject *weakreflist;
    PyObject *loop;        /* _loop */
    PyObject *sock;        /* _sock */
    PyObject *protocol;    /* _protocol */
    PyObject *address;     /* _address: the connected peer, or None */
    PyObject *buffer;      /* _buffer: a deque of (bytes, addr) */
    int sock_fd;           /* _sock_fd */
    int conn_lost;         /* _conn_lost */
    char closing;          /* _closing */
    char paused;           /* _paused */
    char connected;        /* extra['peername'] is set: send(), not sendto() */
    char peer_from_recv;   /* peer_obj is what recvfrom() made of peer_sa */
    int family;            /* 0: not one we convert; go through the socket */
    /* The last address object sent to or received from, and its sockaddr. */
    PyObject *peer_obj;
    PyObject *pending; /* list of (data, addr) read but not delivered */
    struct sockaddr_storage peer_sa;
    socklen_t peer_len;
} DatagramObject;

enum {
    S_DATAGRAM_RECEIVED,
    S_ERROR_RECEIVED,
    S_PY_SENDTO,
    S_PY_READ_READY,
    S_FAMILY,
    S_PEERNAME,
    S_COUNT
};
static const char *const str_text[S_COUNT] = {
    "datagram_received", "error_received", "_py_sendto", "_py_read_ready",
    "family", "peername",
};
static PyObject *strs[S_COUNT];

/* One receive buffer for every transport: the GIL serialises them. */
static char recv_buf[DGRAM_MAX_SIZE];

/* ---- addresses ---------------------------------------------------------- */

/* A sockaddr as the socket module's makesockaddr() makes it, for the
 * families we convert. */
static PyObject *make_addr(int family, const struct sockaddr_storage *ss,
                           socklen_t len)
{
    char host[INET6_ADDRSTRLEN];
    if (len == 0)
        Py_RETURN_NONE;
    switch (family) {
    case AF_INET: {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        if (!inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host)))
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(si)", host, (int)ntohs(a->sin_port));
    }
    case AF_INET6: {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        if (!inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host)))
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(siII)", host, (int)ntohs(a->sin6_port),
                             (unsigned int)ntohl(a->sin6_flowinfo),
                             (unsigned int)a->sin6_scope_id);
    }
    default: { /* AF_UNIX */
        const struct sockaddr_un *a = (const struct sockaddr_un *)ss;
        size_t n = (size_t)len - offsetof(struct sockaddr_un, sun_path);
        if ((socklen_t)offsetof(struct sockaddr_un, sun_path) > len)
            n = 0;
        if (n > 0 && a->sun_path[0] == 0) /* Linux abstract namespace */
            return PyBytes_FromStringAndSize(a->sun_path, (Py_ssize_t)n);
        return PyUnicode_DecodeFSDefaultAndSize(a->sun_path,
                                                (Py_ssize_t)strnlen(a->sun_path, n));
    }
    }
}

static int port_of(PyObject *o, unsigned *port)
{
    if (!PyLong_CheckExact(o))
        return 0;
    int overflow;
    long v = PyLong_AsLongAndOverflow(o, &overflow);
    if (overflow || v < 0 || v > 65535)
        return 0;
    *port = (unsigned)v;
    return 1;
}

/* A numeric (host, port[, flowinfo[, scope_id]]) to a sockaddr.  0 when
 * it is anything else: the socket module then parses it (names, "", the
 * "<broadcast>" alias, bad types) and raises what it raises. */
static int parse_addr(int family, PyObject *addr, struct sockaddr_storage *ss,
                      socklen_t *len)
{
    if (!PyTuple_CheckExact(addr) || PyTuple_GET_SIZE(addr) < 2)
        return 0;
    PyObject *host = PyTuple_GET_ITEM(addr, 0);
    unsigned port;
    if (!PyUnicode_CheckExact(host) ||
        !port_of(PyTuple_GET_ITEM(addr, 1), &port))
        return 0;
    const char *h = PyUnicode_AsUTF8(host);
    if (!h) {
        PyErr_Clear();
        return 0;
    }
    memset(ss, 0, sizeof(*ss));
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        if (PyTuple_GET_SIZE(addr) != 2 ||
            inet_pton(AF_INET, h, &a->sin_addr) != 1)
            return 0;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        *len = sizeof(*a);
        return 1;
    }
    if (family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        Py_ssize_t n = PyTuple_GET_SIZE(addr);
        unsigned long flow = 0, scope = 0;
        if (n > 4 || inet_pton(AF_INET6, h, &a->sin6_addr) != 1)
            return 0;
        if (n >= 3) {
            PyObject *f = PyTuple_GET_ITEM(addr, 2);
            if (!PyLong_CheckExact(f))
                return 0;
            flow = PyLong_AsUnsignedLong(f);
            if (PyErr_Occurred() || flow > 0xfffff) {
                PyErr_Clear();
                return 0;
            }
        }
        if (n == 4) {
            PyObject *s = PyTuple_GET_ITEM(addr, 3);
            if (!PyLong_CheckExact(s))
                return 0;
            scope = PyLong_AsUnsignedLong(s);
            if (PyErr_Occurred() || scope > 0xffffffffUL) {
                PyErr_Clear();
                return 0;
            }
        }
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        a->sin6_flowinfo = htonl((uint32_t)flow);
        a->sin6_scope_id = (uint32_t)scope;
        *len = sizeof(*a);
        return 1;
    }
    return 0;
}

/* ---- the hot paths --------------------------------------------------------- */

static PyObject *call_slow(DatagramObject *self, int name, PyObject *const *args,
                           size_t nargs)
{
    PyObject *stack[3] = {(PyObject *)self, NULL, NULL};
    for (size_t i = 0; i < nargs; i++)
        stack[1 + i] = args[i];
    return PyObject_VectorcallMethod(strs[name], stack,
                                     (1 + nargs) | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                     NULL);
}

/* protocol.error_received(OSError from errno). */
static PyObject *report_errno(DatagramObject *self, int err)
{
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (exc && tb)
        PyException_SetTraceback(exc, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    if (!exc)
        return NULL;
    PyObject *protocol = Py_NewRef(self->protocol ? self->protocol : Py_None);
    PyObject *stack[2] = {protocol, exc};
    PyObject *r = PyObject_VectorcallMethod(
        strs[S_ERROR_RECEIVED], stack, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET,
        NULL);
    Py_DECREF(protocol);
    Py_DECREF(exc);
    return r;
}

/* sendto(data, addr=None) */
static PyObject *dgram_sendto(DatagramObject *self, PyObject *const *args,
                              Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *data, *addr = Py_None;
    if (kwnames || nargs < 1 || nargs > 2)
        goto slow;
    data = args[0];
    if (nargs == 2)
        addr = args[1];
    /* Only the plain case here: nothing buffered, open, a bytes-like. */
    if (self->conn_lost || !self->family || !self->buffer ||
        Py_SIZE(self->buffer) != 0 || !self->sock || self->sock == Py_None ||
        !(PyBytes_CheckExact(data) || PyByteArray_CheckExact(data) ||
          PyMemoryView_Check(data)))
        goto slow;
    const struct sockaddr *sa = NULL;
    socklen_t salen = 0;
    if (self->address != Py_None && self->address) {
        /* asyncio compares with == and raises if unequal; it sends to
         * _address, with send() when the socket is connected. */
        if ((addr != Py_None && addr != self->address) || !self->connected)
            goto slow;
    } else if (!self->connected) {
        if (addr == Py_None)
            goto slow;
        if (addr != self->peer_obj) {
            struct sockaddr_storage ss;
            socklen_t len;
            if (!parse_addr(self->family, addr, &ss, &len))
                goto slow;
            self->peer_sa = ss;
            self->peer_len = len;
            self->peer_from_recv = 0;
            Py_XSETREF(self->peer_obj, Py_NewRef(addr));
        }
        sa = (const struct sockaddr *)&self->peer_sa;
        salen = self->peer_len;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        goto slow;
    }
    if (view.len == 0) { /* dropped or sent, depending on the version */
        PyBuffer_Release(&view);
        goto slow;
    }
    ssize_t n;
    if (self->connected)
        n = send(self->sock_fd, view.buf, (size_t)view.len, MSG_DONTWAIT);
    else
        n = sendto(self->sock_fd, view.buf, (size_t)view.len, MSG_DONTWAIT,
                   sa, salen);
    int err = errno;
    PyBuffer_Release(&view);
    if (n >= 0)
        Py_RETURN_NONE;
    if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR)
        goto slow; /* asyncio's sendto retries, then buffers and waits */
    return report_errno(self, err);
slow:
    {
        PyObject *m = PyObject_GetAttr((PyObject *)self, strs[S_PY_SENDTO]);
        if (!m)
            return NULL;
        PyObject *r = PyObject_Vectorcall(m, args, nargsf, kwnames);
        Py_DECREF(m);
        return r;
    }
}

/* The protocol's datagram_received(data, addr) for one datagram. */
static PyObject *deliver(DatagramObject *self, PyObject *data, PyObject *addr)
{
    PyObject *protocol = Py_NewRef(self->protocol ? self->protocol : Py_None);
    PyObject *stack[3] = {protocol, data, addr};
    PyObject *r = PyObject_VectorcallMethod(
        strs[S_DATAGRAM_RECEIVED], stack, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET,
        NULL);
    Py_DECREF(protocol);
    return r;
}

/* The address object of a received sockaddr, the cached one when it is the
 * same peer again. */
static PyObject *recv_addr(DatagramObject *self,
                           const struct sockaddr_storage *ss, socklen_t len)
{
    if (self->peer_obj && self->peer_from_recv && len == self->peer_len &&
        len > 0 && memcmp(ss, &self->peer_sa, len) == 0)
        return Py_NewRef(self->peer_obj);
    PyObject *addr = make_addr(self->family, ss, len);
    if (addr && len > 0 && self->family != AF_UNIX) {
        self->peer_sa = *ss;
        self->peer_len = len;
        self->peer_from_recv = 1;
        Py_XSETREF(self->peer_obj, Py_NewRef(addr));
    }
    return addr;
}

/* Whether to go on delivering what one recvmmsg() returned: not after
 * close() or abort() (asyncio would not have read it), and not while
 * reading is paused (what is left waits in `pending`). */
static int keep_delivering(DatagramObject *self)
{
    return !self->conn_lost && !self->closing && !self->paused;
}

/* Datagrams read but not yet delivered, as a list of (data, addr). */
static int stash(DatagramObject *self, PyObject *data, PyObject *addr)
{
    if (!self->pending && !(self->pending = PyList_New(0)))
        return -1;
    PyObject *t = PyTuple_Pack(2, data, addr);
    if (!t)
        return -1;
    int rc = PyList_Append(self->pending, t);
    Py_DECREF(t);
    return rc;
}

/* After a protocol error with datagrams still stashed: the next iteration
 * delivers them (the fd may not become readable again). */
static void schedule_read(DatagramObject *self)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *m = PyObject_GetAttrString((PyObject *)self, "_read_ready");
    PyObject *r = m && self->loop ? PyObject_CallMethod(self->loop,
                                                        "call_soon", "O", m)
                                  : NULL;
    if (!r)
        PyErr_WriteUnraisable((PyObject *)self);
    Py_XDECREF(r);
    Py_XDECREF(m);
    PyErr_Restore(type, value, tb);
}

/* Deliver what is stashed; 1 when all of it went, 0 when delivery
 * stopped (closed, paused), -1 on a protocol error. */
static int deliver_pending(DatagramObject *self)
{
    while (self->pending && PyList_GET_SIZE(self->pending) > 0) {
        if (!keep_delivering(self)) {
            if (self->conn_lost || self->closing)
                Py_CLEAR(self->pending);
            return 0;
        }
        PyObject *t = Py_NewRef(PyList_GET_ITEM(self->pending, 0));
        if (PyList_SetSlice(self->pending, 0, 1, NULL) < 0) {
            Py_DECREF(t);
            return -1;
        }
        PyObject *r = deliver(self, PyTuple_GET_ITEM(t, 0),
                              PyTuple_GET_ITEM(t, 1));
        Py_DECREF(t);
        if (!r) {
            if (self->pending && PyList_GET_SIZE(self->pending) > 0)
                schedule_read(self);
            return -1;
        }
        Py_DECREF(r);
    }
    Py_CLEAR(self->pending);
    return 1;
}

#define RECV_BATCH 16
#define RECV_SLOT 65536 /* an IP datagram's payload is less */
static char batch_buf[RECV_BATCH][RECV_SLOT];

/* _read_ready(): asyncio reads one datagram per readiness event; we read
 * what is there, up to RECV_BATCH, with one recvmmsg() (IP sockets), and
 * deliver them in order. */
static PyObject *dgram_read_ready(DatagramObject *self,
                                  PyObject *Py_UNUSED(ignored))
{
    if (self->conn_lost)
        Py_RETURN_NONE;
    if (self->pending) {
        int rc = deliver_pending(self);
        if (rc < 0)
            return NULL;
        if (rc == 0)
            Py_RETURN_NONE;
    }
    if (self->paused || self->closing)
        Py_RETURN_NONE; /* a stale event or a call_soon'd read */
    if (!self->family)
        return call_slow(self, S_PY_READ_READY, NULL, 0);
    if (!USE_RECVMMSG || self->family == AF_UNIX) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        memset(&ss, 0, offsetof(struct sockaddr_un, sun_path) + 1);
        ssize_t n = recvfrom(self->sock_fd, recv_buf, sizeof(recv_buf),
                             MSG_DONTWAIT, (struct sockaddr *)&ss, &len);
        if (n < 0) {
            int err = errno;
            if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR)
                Py_RETURN_NONE;
            return report_errno(self, err);
        }
        PyObject *data = PyBytes_FromStringAndSize(recv_buf, n);
        if (!data)
            return NULL;
        PyObject *addr = recv_addr(self, &ss, len);
        if (!addr) {
            Py_DECREF(data);
            return NULL;
        }
        PyObject *r = deliver(self, data, addr);
        Py_DECREF(data);
        Py_DECREF(addr);
        return r;
    }
    struct mmsghdr msgs[RECV_BATCH];
    struct iovec iov[RECV_BATCH];
    struct sockaddr_storage ss[RECV_BATCH];
    for (int i = 0; i < RECV_BATCH; i++) {
        iov[i].iov_base = batch_buf[i];
        iov[i].iov_len = RECV_SLOT;
        memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
        msgs[i].msg_hdr.msg_name = &ss[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(ss[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int got = recvmmsg(self->sock_fd, msgs, RECV_BATCH, MSG_DONTWAIT, NULL);
    if (got < 0) {
        int err = errno;
        if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR)
            Py_RETURN_NONE;
        return report_errno(self, err);
    }
    /* Python objects first: a protocol callback may close the socket, and
     * must not find half-converted buffers. */
    PyObject *items[2 * RECV_BATCH];
    int made = 0;
    for (; made < got; made++) {
        PyObject *data = PyBytes_FromStringAndSize(batch_buf[made],
                                                   (Py_ssize_t)msgs[made].msg_len);
        PyObject *addr = data ? recv_addr(self, &ss[made],
                                          msgs[made].msg_hdr.msg_namelen)
                              : NULL;
        if (!addr) {
            Py_XDECREF(data);
            break;
        }
        items[2 * made] = data;
        items[2 * made + 1] = addr;
    }
    PyObject *result = made == got ? Py_None : NULL;
    int i = 0;
    for (; result && i < made; i++) {
        if (i > 0 && !keep_delivering(self))
            break;
        PyObject *r = deliver(self, items[2 * i], items[2 * i + 1]);
        if (!r)
            result = NULL;
        Py_XDECREF(r);
    }
    /* Undelivered: kept while paused or after a protocol error (asyncio
     * would have read them later), dropped once closing. */
    int keep = !self->conn_lost && !self->closing;
    int stashed = 0;
    for (int k = i; k < made; k++) {
        if (keep) {
            if (stash(self, items[2 * k], items[2 * k + 1]) < 0) {
                PyErr_WriteUnraisable((PyObject *)self);
                keep = 0;
            } else {
                stashed = 1;
            }
        }
    }
    for (int k = 0; k < made; k++) {
        Py_DECREF(items[2 * k]);
        Py_DECREF(items[2 * k + 1]);
    }
    if (!result && stashed)
        schedule_read(self);
    return Py_XNewRef(result);
}

/* _setup(): after the Python __init__ has set _sock and _extra, note how
 * to send (send() when connected, as asyncio's extra['peername'] test) and
 * whether we convert this family's addresses. */
static PyObject *dgram_setup(DatagramObject *self, PyObject *Py_UNUSED(ignored))
{
    self->family = 0;
    self->connected = 0;
    if (!self->sock)
        Py_RETURN_NONE;
    PyObject *fam = PyObject_GetAttr(self->sock, strs[S_FAMILY]);
    if (!fam)
        return NULL;
    long f = PyLong_AsLong(fam);
    Py_DECREF(fam);
    if (f == -1 && PyErr_Occurred())
        return NULL;
    if (f == AF_INET || f == AF_INET6 || f == AF_UNIX)
        self->family = (int)f;
    if (self->extra && PyDict_Check(self->extra)) {
        PyObject *peer = PyDict_GetItemWithError(self->extra, strs[S_PEERNAME]);
        if (!peer && PyErr_Occurred())
            return NULL;
        int t = peer ? PyObject_IsTrue(peer) : 0;
        if (t < 0)
            return NULL;
        self->connected = (char)t;
    }
    Py_RETURN_NONE;
}

/* _has_pending(): datagrams read before a pause wait for resume_reading. */
static PyObject *dgram_has_pending(DatagramObject *self,
                                   PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(self->pending && PyList_GET_SIZE(self->pending));
}

/* ---- object protocol ------------------------------------------------------------ */

static int dgram_traverse(DatagramObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->extra);
    Py_VISIT(self->dict);
    Py_VISIT(self->loop);
    Py_VISIT(self->sock);
    Py_VISIT(self->protocol);
    Py_VISIT(self->address);
    Py_VISIT(self->buffer);
    Py_VISIT(self->peer_obj);
    Py_VISIT(self->pending);
    return 0;
}

static int dgram_clear(DatagramObject *self)
{
    Py_CLEAR(self->extra);
    Py_CLEAR(self->dict);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->sock);
    Py_CLEAR(self->protocol);
    Py_CLEAR(self->address);
    Py_CLEAR(self->buffer);
    Py_CLEAR(self->peer_obj);
    Py_CLEAR(self->pending);
    return 0;
}

static void dgram_dealloc(DatagramObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    /* asyncio's __del__ (attached as tp_finalize): the ResourceWarning of
     * an unclosed transport, and the socket closed. */
    if (type->tp_finalize) {
        if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0)
            return; /* resurrected */
    }
    PyObject_GC_UnTrack(self);
    if (self->weakreflist)
        PyObject_ClearWeakRefs((PyObject *)self);
    dgram_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyMethodDef dgram_methods[] = {
    {"sendto", (PyCFunction)(void (*)(void))dgram_sendto,
     METH_FASTCALL | METH_KEYWORDS,
     "sendto(data, addr=None): send a datagram, or buffer it."},
    {"_read_ready", (PyCFunction)dgram_read_ready, METH_NOARGS, NULL},
    {"_setup", (PyCFunction)dgram_setup, METH_NOARGS, NULL},
    {"_has_pending", (PyCFunction)dgram_has_pending, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef dgram_members[] = {
    {"_loop", T_OBJECT, offsetof(DatagramObject, loop), 0, NULL},
    {"_sock", T_OBJECT, offsetof(DatagramObject, sock), 0, NULL},
    {"_protocol", T_OBJECT, offsetof(DatagramObject, protocol), 0, NULL},
    {"_address", T_OBJECT, offsetof(DatagramObject, address), 0, NULL},
    {"_buffer", T_OBJECT, offsetof(DatagramObject, buffer), 0, NULL},
    {"_sock_fd", T_INT, offsetof(DatagramObject, sock_fd), 0, NULL},
    {"_conn_lost", T_INT, offsetof(DatagramObject, conn_lost), 0, NULL},
    {"_closing", T_BOOL, offsetof(DatagramObject, closing), 0, NULL},
    {"_paused", T_BOOL, offsetof(DatagramObject, paused), 0, NULL},
    {"__dictoffset__", T_PYSSIZET, offsetof(DatagramObject, dict), READONLY,
     NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(DatagramObject, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot dgram_slots[] = {
    {Py_tp_dealloc, dgram_dealloc},
    {Py_tp_traverse, dgram_traverse},
    {Py_tp_clear, dgram_clear},
    {Py_tp_methods, dgram_methods},
    {Py_tp_members, dgram_members},
    {Py_tp_new, PyType_GenericNew},
    {0, NULL},
};

static PyType_Spec dgram_spec = {
    .name = "qloop._qloop.DatagramTransport",
    .basicsize = sizeof(DatagramObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = dgram_slots,
};

/* _datagram_type(bases) -> the type.  The bases are asyncio's transport
 * classes; their instance layout must be BaseTransport's (one slot). */
static PyObject *make_type(PyObject *module, PyObject *bases)
{
    if (!PyTuple_Check(bases) || PyTuple_GET_SIZE(bases) == 0) {
        PyErr_SetString(PyExc_TypeError, "_datagram_type(bases: tuple)");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(bases); i++) {
        PyObject *b = PyTuple_GET_ITEM(bases, i);
        if (!PyType_Check(b) ||
            ((PyTypeObject *)b)->tp_basicsize !=
                (Py_ssize_t)offsetof(DatagramObject, dict) ||
            ((PyTypeObject *)b)->tp_dictoffset != 0 ||
            ((PyTypeObject *)b)->tp_weaklistoffset != 0) {
            PyErr_Format(PyExc_TypeError,
                         "%R does not have asyncio.BaseTransport's layout "
                         "(__slots__ = ('_extra',))", b);
            return NULL;
        }
    }
    for (int i = 0; i < S_COUNT; i++) {
        if (!strs[i] && !(strs[i] = PyUnicode_InternFromString(str_text[i])))
            return NULL;
    }
    return PyType_FromModuleAndSpec(module, &dgram_spec, bases);
}

static PyMethodDef datagram_functions[] = {
    {"_datagram_type", make_type, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

int qloop_datagram_exec(PyObject *module)
{
    return PyModule_AddFunctions(module, datagram_functions);
}
