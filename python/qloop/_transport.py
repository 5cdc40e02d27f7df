"""The stream transport of qloop: the C StreamTransport, with the parts
asyncio's _SelectorSocketTransport writes in Python that are not hot
(set-up, repr, __del__, the fatal-error and connection_lost paths), kept
as asyncio writes them so that behaviour and messages stay asyncio's.
"""

import socket
import warnings
from asyncio import base_events, constants, futures, transports, trsock
from asyncio.log import logger

from . import _qloop

__all__ = ("StreamTransport",)

# Server._attach()/_detach() take the transport from 3.13 on.
_SERVER_TAKES_TRANSPORT = base_events.Server._attach.__code__.co_argcount == 2

# BaseTransport's `_extra` slot (the C struct's first field), read and
# written past the `_extra` property below.
_raw_extra_get = transports.BaseTransport._extra.__get__
_raw_extra_set = transports.BaseTransport._extra.__set__

# The connections a server accepts share their local address, and often
# (behind a proxy) their peer's host: equal values are kept once, in these
# small caches, instead of once per connection.  Only the accept path uses
# them (a client's local address differs per connection).
_SHARED_MAX = 64
_socknames = {}
_peer_hosts = {}


def _shared(cache, value):
    if len(cache) >= _SHARED_MAX:
        cache.clear()
    try:
        return cache.setdefault(value, value)
    except TypeError:  # unhashable: not an address family we know
        return value


def _shared_peername(peername):
    if type(peername) is not tuple or not peername:
        return peername
    host = peername[0]
    shared = _shared(_peer_hosts, host)
    if shared is host:
        return peername
    return (shared,) + peername[1:]


# The compact form of _extra (see StreamTransport.__init__): the tuple
# (sockname, mode, closed socket or None, *peer).  mode: _PEER_FIRST when
# the caller's extra had the peername (the accept path: asyncio's dict
# then has that key first); _PEER_SPREAD when peer holds the items of the
# peername tuple (one tuple less per connection) rather than the peername.
_PEER_FIRST = 1
_PEER_SPREAD = 2


def _compact_extra(sockname, peername, peer_first):
    mode = _PEER_FIRST if peer_first else 0
    if type(peername) is tuple:
        return (sockname, mode | _PEER_SPREAD, None) + peername
    return (sockname, mode, None, peername)


def _compact_peername(extra):
    return extra[3:] if extra[1] & _PEER_SPREAD else extra[3]


class StreamTransport(_qloop.StreamTransport):
    """asyncio's _SelectorSocketTransport on qloop's C reactor."""

    max_size = 256 * 1024  # what one recv() may read, as asyncio's
    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    def __init__(self, loop, sock, protocol, waiter=None,
                 extra=None, server=None):
        # asyncio's _extra: {'socket': TransportSocket(sock), 'sockname':
        # ..., 'peername': ...} over the caller's extra.  Until someone
        # reads it as a dict (or asks for 'socket'), the slot holds the
        # same values as one tuple (_compact_extra) instead: an idle
        # connection then holds no dict and no socket wrapper.
        try:
            sockname = sock.getsockname()
        except OSError:
            sockname = None
        if extra is None:
            try:
                peername = sock.getpeername()
            except socket.error:
                peername = None
            _raw_extra_set(self, _compact_extra(sockname, peername, False))
        elif len(extra) == 1 and 'peername' in extra:  # the accept path
            _raw_extra_set(self, _compact_extra(
                _shared(_socknames, sockname),
                _shared_peername(extra['peername']), True))
        else:
            extra['socket'] = trsock.TransportSocket(sock)
            extra['sockname'] = sockname
            if 'peername' not in extra:
                try:
                    extra['peername'] = sock.getpeername()
                except socket.error:
                    extra['peername'] = None
            _raw_extra_set(self, extra)
        self._sock = sock
        self._sock_fd = sock.fileno()
        self._attach(loop)
        self._protocol_connected = False
        self.set_protocol(protocol)
        self._server = server
        if server is not None:
            if _SERVER_TAKES_TRANSPORT:
                server._attach(self)
            else:
                server._attach()
        loop._transports[self._sock_fd] = self
        # Disable the Nagle algorithm: small writes go out without waiting
        # for the peer's ACK.
        base_events._set_nodelay(self._sock)
        loop.call_soon(self._protocol.connection_made, self)
        # Start reading only once connection_made() has been called.
        loop.call_soon(self._start_reading)
        if waiter is not None:
            # Wake the waiter only once connection_made() has been called.
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    # -- extra info: asyncio's dict, made on first use -------------------

    @property
    def _extra(self):
        extra = _raw_extra_get(self)
        if type(extra) is tuple:
            sockname, mode, sock = extra[:3]
            peername = _compact_peername(extra)
            if sock is None:
                sock = self._sock
            # The key order of asyncio's dict.
            if mode & _PEER_FIRST:
                extra = {'peername': peername}
            else:
                extra = {}
            extra['socket'] = trsock.TransportSocket(sock)
            extra['sockname'] = sockname
            extra['peername'] = peername
            _raw_extra_set(self, extra)
        return extra

    @_extra.setter
    def _extra(self, value):
        _raw_extra_set(self, value)

    def get_extra_info(self, name, default=None):
        """Get optional transport information."""
        extra = _raw_extra_get(self)
        if type(extra) is tuple:
            if name == 'peername':
                return _compact_peername(extra)
            if name == 'sockname':
                return extra[0]
            if name != 'socket':
                return default
            extra = self._extra
        return extra.get(name, default)

    def __repr__(self):
        info = [self.__class__.__name__]
        if self._sock is None:
            info.append('closed')
        elif self._closing:
            info.append('closing')
        info.append(f'fd={self._sock_fd}')
        loop = self._loop
        if loop is not None and not loop.is_closed():
            reading, writing = self._watching()
            info.append('read=polling' if reading else 'read=idle')
            state = 'polling' if writing else 'idle'
            bufsize = self.get_write_buffer_size()
            info.append(f'write=<{state}, bufsize={bufsize}>')
        return '<{}>'.format(' '.join(info))

    def __del__(self, _warn=warnings.warn):
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._detach()
            self._sock.close()

    # -- flow control: asyncio's _FlowControlMixin ------------------------

    def get_write_buffer_limits(self):
        return (self._low_water, self._high_water)

    def _set_write_buffer_limits(self, high=None, low=None):
        if high is None:
            if low is None:
                high = 64 * 1024
            else:
                high = 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(
                f'high ({high!r}) must be >= low ({low!r}) must be >= 0')
        self._high_water = high
        self._low_water = low

    def set_write_buffer_limits(self, high=None, low=None):
        self._set_write_buffer_limits(high=high, low=low)
        self._maybe_pause_protocol()

    def _flow_control_error(self, message, exc):
        self._loop.call_exception_handler({
            'message': message,
            'exception': exc,
            'transport': self,
            'protocol': self._protocol,
        })

    # -- errors and closing -------------------------------------------------

    def _fatal_error(self, exc, message='Fatal error on transport'):
        # Called from an exception handler only.
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler({
                'message': message,
                'exception': exc,
                'transport': self,
                'protocol': self._protocol,
            })
        self._force_close(exc)

    def _call_connection_lost(self, exc):
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            self._detach()
            extra = _raw_extra_get(self)
            if type(extra) is tuple:
                # get_extra_info('socket') stays the closed socket's wrapper.
                _raw_extra_set(self, extra[:2] + (self._sock,) + extra[3:])
            self._sock.close()
            self._sock = None
            self._protocol = None
            self._loop = None
            server = self._server
            if server is not None:
                if _SERVER_TAKES_TRANSPORT:
                    server._detach(self)
                else:
                    server._detach()
                self._server = None
        if self._empty_waiter is not None:
            self._empty_waiter.set_exception(
                ConnectionError("Connection is closed by peer"))

    def _warn_conn_lost(self):
        logger.warning('socket.send() raised exception.')

    def _log_debug(self, message):
        logger.debug(message, self)

    def _callback_error(self, exc):
        # An exception out of the transport's own I/O callback (not out of
        # the protocol, which _fatal_error handles): as asyncio reports an
        # exception in a reader/writer callback.
        self._loop.call_exception_handler({
            'message': f'Exception in callback {self!r} I/O',
            'exception': exc,
            'transport': self,
        })

    # -- loop.sendfile() ----------------------------------------------------

    def _make_empty_waiter(self):
        if self._empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        self._empty_waiter = self._loop.create_future()
        if not self.get_write_buffer_size():
            self._empty_waiter.set_result(None)
        return self._empty_waiter

    def _reset_empty_waiter(self):
        self._empty_waiter = None
