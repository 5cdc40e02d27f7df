"""qloop's datagram transport: a C type (qloop._qloop.DatagramTransport,
see python/src/datagram.c) under asyncio.Transport and
asyncio.DatagramTransport.

C does sendto() when nothing is buffered and _read_ready(); everything
else is asyncio's own _SelectorDatagramTransport code of the running
Python, attached here to the C type, so messages, close/abort order and
per-version details stay asyncio's.
"""

import collections
import socket
import types
from asyncio import futures, selector_events, transports, trsock

from . import _qloop

__all__ = ("DatagramTransport",)

_ASYNCIO = selector_events._SelectorDatagramTransport
# What C provides itself, or what cannot be borrowed (__init__ uses super()).
_OWN = {"__init__", "sendto", "_read_ready"}

DatagramTransport = _qloop._datagram_type(
    (transports.Transport, transports.DatagramTransport))
DatagramTransport.__module__ = "qloop._qloop"


def _borrow():
    """asyncio's methods, from _SelectorDatagramTransport and the classes
    it inherits them from (first definition in its MRO wins)."""
    ours = (_ASYNCIO, selector_events._SelectorTransport,
            transports._FlowControlMixin)
    done = set()
    for cls in _ASYNCIO.__mro__:
        if cls not in ours:
            continue
        for name, value in vars(cls).items():
            if name in done or name in _OWN:
                continue
            done.add(name)
            if isinstance(value, types.FunctionType):
                setattr(DatagramTransport, name, value)
    DatagramTransport.max_size = _ASYNCIO.max_size
    DatagramTransport._py_sendto = _ASYNCIO.sendto
    DatagramTransport._py_read_ready = _ASYNCIO._read_ready


_borrow()


def _init(self, loop, sock, protocol, address=None, waiter=None, extra=None):
    # transports.BaseTransport and _FlowControlMixin
    self._extra = {} if extra is None else extra
    self._loop = loop
    self._protocol_paused = False
    self._set_write_buffer_limits()
    # selector_events._SelectorTransport
    self._extra["socket"] = trsock.TransportSocket(sock)
    try:
        self._extra["sockname"] = sock.getsockname()
    except OSError:
        self._extra["sockname"] = None
    if "peername" not in self._extra:
        try:
            self._extra["peername"] = sock.getpeername()
        except socket.error:
            self._extra["peername"] = None
    self._sock = sock
    self._sock_fd = sock.fileno()
    self._protocol_connected = False
    self.set_protocol(protocol)
    self._server = None
    self._buffer = collections.deque()
    self._conn_lost = 0
    self._closing = False
    self._paused = False
    loop._transports[self._sock_fd] = self
    # selector_events._SelectorDatagramTransport
    self._address = address
    self._buffer_size = 0
    self._setup()
    loop.call_soon(self._protocol.connection_made, self)
    # only start reading when connection_made() has been called
    loop.call_soon(self._add_reader, self._sock_fd, self._read_ready)
    if waiter is not None:
        loop.call_soon(futures._set_result_unless_cancelled, waiter, None)


_init.__qualname__ = "DatagramTransport.__init__"


def resume_reading(self):
    """asyncio's resume_reading; then what one batch read had read past
    the pause is delivered (the fd need not become readable again)."""
    _ASYNCIO.resume_reading(self)
    if not self._paused and self._has_pending():
        self._loop.call_soon(self._read_ready)


if hasattr(_ASYNCIO, "resume_reading"):
    DatagramTransport.resume_reading = resume_reading
del resume_reading
DatagramTransport.__init__ = _init
del _init
