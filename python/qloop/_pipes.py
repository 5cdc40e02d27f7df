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

Everything else, including messages and the order of connection_lost, is
asyncio's code of the running Python.
"""

import fcntl
import os
import stat
from asyncio import unix_events
from asyncio.log import logger

_DEFAULT_CAPACITY = 64 * 1024


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


class WritePipeTransport(unix_events._UnixWritePipeTransport):
    _qloop_grown = False

    def write(self, data):
        if not self._qloop_grown and len(data) > _DEFAULT_CAPACITY and \
                self._pipe is not None:
            self._qloop_grown = True
            _grow(self._fileno)
        super().write(data)
