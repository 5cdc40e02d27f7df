"""Pipe transports: asyncio's own (unix_events), with bigger pipes for
bulk transfers.

A Linux pipe holds 64 KiB by default, so asyncio moves bulk data through
it 64 KiB per system call and per loop iteration on each side.  When a
transport shows it carries bulk data (a write of more than that, or a read
that took a full pipe's worth), its pipe is enlarged once with
F_SETPIPE_SZ, up to 1 MiB (or fs.pipe-max-size if lower), so each
iteration moves more.  The capacity is not part of what a pipe means to
either end; a refusal (EPERM past the per-user limit, not a FIFO) is
ignored.  Only bulk pipes grow: enlarging every pipe of 1,000 children
would exhaust the per-user pipe allowance (fs.pipe-user-pages-soft) and
shrink the next pipes everyone makes to one page.

The write side queues without copying: asyncio appends what a write()
could not send at once to a bytearray and deletes what went out from its
front, so a 1 MiB chunk that a pipe takes 128 KiB at a time (cat's read
size) is copied into the bytearray once and again each time its shrinking
bytearray halves.  Here a bytes object is queued by reference (it is
immutable), anything else copied once into a bytes, as asyncio copies it;
what went out is skipped with a memoryview; several queued writes go out
with one writev().  The bytes written, their order and every message and
callback are asyncio's.

Everything else, including messages and the order of connection_lost, is
asyncio's code of the running Python.
"""

import collections
import fcntl
import os
import stat
from asyncio import constants, unix_events
from asyncio.log import logger

_DEFAULT_CAPACITY = 64 * 1024
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") \
    else 16


def _max_capacity():
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return min(int(f.read()), 1 << 20)
    except (OSError, ValueError):
        return 1 << 20


_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", None)
_GROWN = _max_capacity()


def _grow(fd):
    """Enlarge the pipe `fd`; True if it is one and now holds _GROWN."""
    if _F_SETPIPE_SZ is None:
        return False
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            return fcntl.fcntl(fd, _F_SETPIPE_SZ, _GROWN) >= _GROWN
    except OSError:
        pass
    return False


class ReadPipeTransport(unix_events._UnixReadPipeTransport):
    _qloop_grown = False

    def _read_ready(self):
        # asyncio's _read_ready (the same in 3.10-3.13), plus the growth.
        try:
            data = os.read(self._fileno, self.max_size)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._fatal_error(exc, 'Fatal read error on pipe transport')
        else:
            if data:
                if len(data) >= _DEFAULT_CAPACITY and not self._qloop_grown:
                    self._qloop_grown = True
                    _grow(self._fileno)
                self._protocol.data_received(data)
            else:
                if self._loop.get_debug():
                    logger.info("%r was closed by peer", self)
                self._closing = True
                self._loop._remove_reader(self._fileno)
                self._loop.call_soon(self._protocol.eof_received)
                self._loop.call_soon(self._call_connection_lost, None)


class _WriteQueue:
    """What a write pipe has yet to send: memoryviews of bytes objects.

    It has what asyncio's transport code does with its bytearray outside
    write() and _write_ready(): truth, len() and clear()."""

    __slots__ = ("_views", "_size")

    def __init__(self):
        self._views = collections.deque()
        self._size = 0

    def __len__(self):
        return self._size

    def __bool__(self):
        return self._size != 0

    def clear(self):
        self._views.clear()
        self._size = 0

    def append(self, data):
        """Queue `data`, a non-empty bytes-like object; by reference if it
        is immutable, else a copy (the caller may change it after write()
        returns, asyncio's bytearray copy ignores that)."""
        if type(data) is memoryview:
            if not data.c_contiguous:
                # What asyncio's `bytearray += data` raises.
                raise TypeError("can't concat memoryview to bytearray")
            # A view of our own: the caller may release theirs.
            if not (data.readonly and type(data.obj) is bytes):
                data = memoryview(bytes(data))
            elif data.ndim != 1 or data.itemsize != 1:
                data = data.cast("B")
            else:
                data = memoryview(data)
        else:
            data = memoryview(data if type(data) is bytes else bytes(data))
        self._views.append(data)
        self._size += len(data)

    def send(self, fd):
        """One write() (writev() for several entries); what it returned."""
        views = self._views
        if len(views) == 1:
            n = os.write(fd, views[0])
        else:
            n = os.writev(fd, [views[i] for i in
                               range(min(len(views), _IOV_MAX))])
        self._consume(n)
        return n

    def _consume(self, n):
        self._size -= n
        views = self._views
        while n:
            head = views[0]
            if n < len(head):
                views[0] = head[n:]
                return
            n -= len(head)
            views.popleft()


class WritePipeTransport(unix_events._UnixWritePipeTransport):
    _qloop_grown = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._buffer = _WriteQueue()

    # write() and _write_ready() are asyncio's (the same in 3.10-3.13) but
    # for the queue: see the module's docstring.
    def write(self, data):
        assert isinstance(data, (bytes, bytearray, memoryview)), repr(data)
        if isinstance(data, bytearray):
            data = memoryview(data)
        if not data:
            return

        if self._conn_lost or self._closing:
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning('pipe closed by peer or '
                               'os.write(pipe, data) raised exception.')
            self._conn_lost += 1
            return

        if not self._qloop_grown and len(data) > _DEFAULT_CAPACITY:
            self._qloop_grown = True
            _grow(self._fileno)

        if not self._buffer:
            # Attempt to send it right away first.
            try:
                n = os.write(self._fileno, data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._conn_lost += 1
                self._fatal_error(exc, 'Fatal write error on pipe transport')
                return
            if n == len(data):
                return
            elif n > 0:
                data = memoryview(data)[n:]
            self._loop._add_writer(self._fileno, self._write_ready)

        self._buffer.append(data)
        self._maybe_pause_protocol()

    def _write_ready(self):
        assert self._buffer, 'Data should not be empty'

        try:
            self._buffer.send(self._fileno)
        except (BlockingIOError, InterruptedError):
            pass
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._buffer.clear()
            self._conn_lost += 1
            # Remove writer here, _fatal_error() doesn't it
            # because _buffer is empty.
            self._loop._remove_writer(self._fileno)
            self._fatal_error(exc, 'Fatal write error on pipe transport')
        else:
            if not self._buffer:
                self._loop._remove_writer(self._fileno)
                self._maybe_resume_protocol()  # May append to buffer.
                if self._closing:
                    self._loop._remove_reader(self._fileno)
                    self._call_connection_lost(None)
