"""qloop.Loop: the C core under asyncio's own Python code.

The C base class (qloop._qloop.CLoop) implements what is hot: call_soon,
call_soon_threadsafe, call_later, call_at, time, stop, the run loop and the
fd watchers behind add_reader/add_writer.  What is not hot (exception
handlers, executors, shutdown, server and connection set-up) is asyncio's
own code, inherited, so its behaviour and messages are asyncio's.

Datagrams, pipes and subprocesses are imported on first use (`import
qloop` stays about as cheap as `import asyncio`; tests/python/
test_footprint.py checks which modules it loads).
"""

import ipaddress
import os
import selectors
import socket
import sys
import threading
from asyncio import base_events, events, format_helpers, unix_events

from . import _diagnostics, _qloop, _transport

__all__ = ("Loop", "new_event_loop")


class _WatcherView(selectors.BaseSelector):
    """What asyncio code reads from `loop._selector` (reprs of transports),
    answered from qloop's watchers.  Nothing polls through it."""

    def __init__(self, loop):
        self._loop = loop

    def register(self, fileobj, events, data=None):
        raise NotImplementedError("qloop watches fds through its reactor")

    def unregister(self, fileobj):
        raise NotImplementedError("qloop watches fds through its reactor")

    def select(self, timeout=None):
        raise NotImplementedError("qloop polls through its reactor")

    def get_key(self, fileobj):
        loop = self._loop
        watched = loop._watched(fileobj) if loop is not None else None
        if watched is None:
            raise KeyError(f"{fileobj!r} is not registered")
        reader, writer = watched
        mask = (selectors.EVENT_READ if reader is not None else 0) | (
            selectors.EVENT_WRITE if writer is not None else 0)
        try:
            fd = selectors._fileobj_to_fd(fileobj)
        except ValueError:
            fd = -1
        return selectors.SelectorKey(fileobj, fd, mask, (reader, writer))

    def get_map(self):
        return _WatcherMap(self)

    def close(self):
        self._loop = None


class _WatcherMap:
    def __init__(self, view):
        self._view = view

    def get(self, fd, default=None):
        try:
            return self._view.get_key(fd)
        except KeyError:
            return default

    def __getitem__(self, fd):
        return self._view.get_key(fd)


class Loop(_qloop.CLoop, _diagnostics.DiagnosticsMixin,
           unix_events.SelectorEventLoop):
    """An asyncio event loop on qloop's C reactor."""

    def __init__(self):
        super().__init__(selector=_WatcherView(self))
        if os.environ.get("QLOOP_BATCH_WRITES", "0") not in ("", "0"):
            self.set_write_batching(True)

    # -- running ----------------------------------------------------------

    def run_forever(self):
        """Run until stop() is called."""
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        old_agen_hooks = sys.get_asyncgen_hooks()
        try:
            self._thread_id = threading.get_ident()
            sys.set_asyncgen_hooks(
                firstiter=self._asyncgen_firstiter_hook,
                finalizer=self._asyncgen_finalizer_hook)
            events._set_running_loop(self)
            _diagnostics.before_run(self)
            self._run()
        finally:
            self._stopping = False
            self._thread_id = None
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_agen_hooks)

    def close(self):
        """Close the loop: asyncio's close, then the reactor's."""
        super().close()
        reaper = self.__dict__.pop("_qloop_reaper", None)
        if reaper is not None:
            reaper.close()
        self._close_reactor()

    def set_debug(self, enabled):
        super().set_debug(enabled)
        self._set_c_debug(enabled)

    # -- DNS ----------------------------------------------------------------

    async def getaddrinfo(self, host, port, *,
                          family=0, type=0, proto=0, flags=0):
        """asyncio's getaddrinfo; numeric hosts are answered without a
        thread (they cannot block), with IPv6 zone ids kept."""
        if not self._debug and _is_numeric(host, port):
            return socket.getaddrinfo(host, port, family, type, proto,
                                      flags | socket.AI_NUMERICHOST)
        return await super().getaddrinfo(host, port, family=family,
                                          type=type, proto=proto, flags=flags)

    # -- datagrams: a C transport (see _datagram.py) ---------------------

    def _make_datagram_transport(self, sock, protocol, address=None,
                                 waiter=None, extra=None):
        self._ensure_fd_no_transport(sock)
        from . import _datagram
        return _datagram.DatagramTransport(self, sock, protocol, address,
                                           waiter, extra)

    # -- pipes: asyncio's transports, bulk pipes enlarged (_pipes.py) ----

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None,
                                  extra=None):
        from . import _pipes
        return _pipes.ReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None,
                                   extra=None):
        from . import _pipes
        return _pipes.WritePipeTransport(self, pipe, protocol, waiter, extra)

    # -- subprocesses: reaped by the loop itself (see _subprocess.py) ------

    def _child_reaper(self):
        reaper = self.__dict__.get("_qloop_reaper")
        if reaper is None:
            from . import _subprocess
            reaper = self.__dict__["_qloop_reaper"] = _subprocess.ChildReaper(
                self)
        return reaper

    async def _make_subprocess_transport(self, protocol, args, shell, stdin,
                                         stdout, stderr, bufsize, extra=None,
                                         **kwargs):
        from . import _subprocess
        return await _subprocess.make_subprocess_transport(
            self, protocol, args, shell, stdin, stdout, stderr, bufsize,
            extra=extra, **kwargs)

    # -- streams: a C transport (see _transport.py) -----------------------

    def _make_socket_transport(self, sock, protocol, waiter=None, *,
                               extra=None, server=None):
        # TCP and Unix stream sockets get qloop's C transport; the set-up
        # around it (create_connection, create_server, ...) is asyncio's.
        return _transport.StreamTransport(self, sock, protocol, waiter,
                                          extra, server)

    # -- what asyncio's Python code hands to the loop ---------------------

    def _add_callback(self, handle):
        # Signal handlers and other asyncio internals queue asyncio Handles.
        if not handle._cancelled:
            self.call_soon(handle._run)

    def _add_callback_signalsafe(self, handle):
        self._add_callback(handle)
        self._write_to_self()

    def _process_events(self, event_list):
        raise NotImplementedError("qloop dispatches events in C")

    def _run_once(self):
        raise NotImplementedError("qloop runs its iterations in C")


def _is_numeric(host, port):
    """True when getaddrinfo(host, port) needs no resolver: a literal IP
    (IPv6 with or without a %zone) and a numeric or absent port."""
    if isinstance(host, bytes):
        try:
            host = host.decode("ascii")
        except UnicodeDecodeError:
            return False
    if not isinstance(host, str):
        return False
    if not (port is None or isinstance(port, int) or
            (isinstance(port, (str, bytes)) and port.isdigit())):
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def new_event_loop():
    """A new qloop event loop."""
    return Loop()


# -- slow paths the C core calls back into ------------------------------------

# _format_callback_source grew a keyword-only `debug` parameter in 3.13
# (read from its code object: inspect.signature costs more at import).
_code = format_helpers._format_callback_source.__code__
_FORMAT_TAKES_DEBUG = "debug" in _code.co_varnames[
    _code.co_argcount:_code.co_argcount + _code.co_kwonlyargcount]
del _code


def _format_callback(callback, args, loop):
    if _FORMAT_TAKES_DEBUG:
        return format_helpers._format_callback_source(
            callback, args, debug=loop.get_debug())
    return format_helpers._format_callback_source(callback, args)


def _handle_exception(handle, exc):
    """asyncio's Handle._run error path."""
    loop = handle._loop
    cb = _format_callback(handle._callback, handle._args, loop)
    context = {
        "message": f"Exception in callback {cb}",
        "exception": exc,
        "handle": handle,
    }
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    loop.call_exception_handler(context)


def _handle_repr(handle):
    """asyncio's Handle/TimerHandle repr."""
    info = [type(handle).__name__]
    if handle._cancelled:
        info.append("cancelled")
    if handle._callback is not None:
        info.append(_format_callback(handle._callback, handle._args,
                                     handle._loop))
    if handle._source_traceback:
        frame = handle._source_traceback[-1]
        info.append(f"created at {frame[0]}:{frame[1]}")
    if isinstance(handle, _qloop.TimerHandle):
        info.insert(2 if handle._cancelled else 1, f"when={handle._when}")
    return "<{}>".format(" ".join(info))


def _extract_stack():
    # Frame 1 is the caller of call_soon & co. (C functions add no frame).
    return format_helpers.extract_stack(sys._getframe(1))


def _log_slow(handle, seconds):
    base_events.logger.warning("Executing %s took %.3f seconds",
                               base_events._format_handle(handle), seconds)


def _check_callback(loop, callback, method):
    loop._check_callback(callback, method)


_qloop._set_helpers(_handle_exception, _handle_repr, _extract_stack,
                    _log_slow, _check_callback)
