"""connect_read_pipe / connect_write_pipe: pipes, sockets, character
devices, ptys; flow control, EOF, close order, EPIPE."""

import asyncio
import os
import pty
import socket
import subprocess
import sys
import tempfile
import tty

import pytest

# More than a pipe holds, even one qloop enlarged (1 MiB at most).
BIG = 3 << 20


class ReadProto(asyncio.Protocol):
    def __init__(self, loop):
        self.data = bytearray()
        self.events = []
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        self.data += data

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append("lost")
        self.done.set_result(exc)


class WriteProto(asyncio.BaseProtocol):
    def __init__(self, loop):
        self.events = []
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")

    def connection_lost(self, exc):
        self.events.append("lost")
        self.done.set_result(exc)


async def until(cond, timeout=10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.001)


def test_pipe_roundtrip_and_eof(loop):
    r, w = os.pipe()

    async def main():
        rt, rp = await loop.connect_read_pipe(lambda: ReadProto(loop),
                                              os.fdopen(r, "rb", 0))
        wt, wp = await loop.connect_write_pipe(lambda: WriteProto(loop),
                                               os.fdopen(w, "wb", 0))
        assert wt.get_extra_info("pipe") is not None
        wt.write(b"hello ")
        wt.write(bytearray(b"pipe"))
        wt.write(memoryview(b"!!"))
        await until(lambda: len(rp.data) == 12)
        wt.close()
        assert await wp.done is None
        assert await rp.done is None
        return bytes(rp.data), rp.events, wp.events

    data, revents, wevents = loop.run_until_complete(main())
    assert data == b"hello pipe!!"
    assert revents == ["made", "eof", "lost"]
    assert wevents == ["lost"]


def test_bulk_through_pipe(loop):
    # Several MiB in big writes (qloop enlarges bulk pipes): every byte
    # arrives, in order, and the pipe is still a pipe.
    r, w = os.pipe()
    payload = bytes(range(256)) * 4096 * 3  # 3 MiB

    async def main():
        rt, rp = await loop.connect_read_pipe(lambda: ReadProto(loop),
                                              os.fdopen(r, "rb", 0))
        wt, wp = await loop.connect_write_pipe(lambda: WriteProto(loop),
                                               os.fdopen(w, "wb", 0))
        for i in range(0, len(payload), 1 << 20):
            wt.write(payload[i:i + (1 << 20)])
        wt.write(b"tail")
        wt.close()
        await rp.done
        await wp.done
        return bytes(rp.data)

    assert loop.run_until_complete(main()) == payload + b"tail"


def test_write_flow_control(loop):
    r, w = os.pipe()

    async def main():
        wt, wp = await loop.connect_write_pipe(lambda: WriteProto(loop),
                                               os.fdopen(w, "wb", 0))
        wt.set_write_buffer_limits(high=1000, low=100)
        wt.write(b"x" * BIG)  # more than the pipe holds, even enlarged
        assert wt.get_write_buffer_size() > 1000
        assert wp.events == ["pause"]
        got = 0
        os.set_blocking(r, False)
        while got < BIG:
            try:
                got += len(os.read(r, 1 << 20))
            except BlockingIOError:
                await asyncio.sleep(0.001)
        await until(lambda: "resume" in wp.events)
        assert wt.get_write_buffer_size() == 0
        wt.close()
        await wp.done
        os.close(r)
        return wp.events

    assert loop.run_until_complete(main()) == ["pause", "resume", "lost"]


def test_read_pause_resume(loop):
    r, w = os.pipe()

    async def main():
        rt, rp = await loop.connect_read_pipe(lambda: ReadProto(loop),
                                              os.fdopen(r, "rb", 0))
        rt.pause_reading()
        if sys.version_info >= (3, 11):  # 3.10's pipe has no is_reading
            assert not rt.is_reading()
        os.write(w, b"while paused")
        await asyncio.sleep(0.05)
        assert rp.data == b""
        rt.resume_reading()
        await until(lambda: rp.data == b"while paused")
        os.close(w)
        assert await rp.done is None
        return rp.events

    assert loop.run_until_complete(main()) == ["made", "eof", "lost"]


def test_reader_goes_away_mid_write(loop):
    # EPIPE -> connection_lost(BrokenPipeError), as asyncio.
    r, w = os.pipe()

    async def main():
        wt, wp = await loop.connect_write_pipe(lambda: WriteProto(loop),
                                               os.fdopen(w, "wb", 0))
        wt.write(b"y" * BIG)  # blocks part-way: the rest is buffered
        assert wt.get_write_buffer_size() > 0
        os.close(r)
        exc = await wp.done
        wt.write(b"after")  # ignored (counted), as asyncio does
        return exc, wt.is_closing()

    exc, closing = loop.run_until_complete(main())
    assert isinstance(exc, BrokenPipeError)
    assert closing


def test_write_to_closed_reader_at_once(loop):
    r, w = os.pipe()
    os.close(r)

    async def main():
        wt, wp = await loop.connect_write_pipe(lambda: WriteProto(loop),
                                               os.fdopen(w, "wb", 0))
        wt.write(b"nobody")
        return await wp.done

    assert isinstance(loop.run_until_complete(main()), BrokenPipeError)


def test_socket_as_pipes(loop):
    a, b = socket.socketpair()

    async def main():
        rt, rp = await loop.connect_read_pipe(lambda: ReadProto(loop), a)
        wt, wp = await loop.connect_write_pipe(lambda: WriteProto(loop), b)
        wt.write(b"over a socket")
        await until(lambda: rp.data == b"over a socket")
        wt.close()
        await wp.done
        assert await rp.done is None
        return rp.events

    assert loop.run_until_complete(main()) == ["made", "eof", "lost"]


def test_pty(loop):
    # A pty's ends are character devices.
    master, slave = pty.openpty()
    tty.setraw(slave)

    async def main():
        rt, rp = await loop.connect_read_pipe(
            lambda: ReadProto(loop), os.fdopen(master, "rb", 0))
        wt, wp = await loop.connect_write_pipe(
            lambda: WriteProto(loop), os.fdopen(slave, "wb", 0))
        wt.write(b"through a pty")
        await until(lambda: rp.data == b"through a pty")
        wt.close()
        await wp.done
        rt.close()
        await rp.done
        return bytes(rp.data)

    assert loop.run_until_complete(main()) == b"through a pty"


def test_regular_file_rejected(loop):
    with tempfile.TemporaryFile() as f:
        with pytest.raises(ValueError, match="for pipes/sockets only"):
            loop.run_until_complete(loop.connect_read_pipe(
                lambda: ReadProto(loop), f))
        with pytest.raises(ValueError, match="only for pipes, sockets and "
                                             "character devices"):
            loop.run_until_complete(loop.connect_write_pipe(
                lambda: WriteProto(loop), f))


def test_abort_drops_buffer(loop):
    r, w = os.pipe()

    async def main():
        wt, wp = await loop.connect_write_pipe(lambda: WriteProto(loop),
                                               os.fdopen(w, "wb", 0))
        wt.write(b"z" * BIG)
        assert wt.get_write_buffer_size() > 0
        wt.abort()
        assert await wp.done is None
        assert wt.get_write_buffer_size() == 0
        os.close(r)

    loop.run_until_complete(main())


def test_subprocess_pipes_bulk(loop):
    # Through cat: stdin and stdout pipes of a child, 4 MiB both ways.
    payload = os.urandom(1 << 20) * 4

    async def main():
        p = await asyncio.create_subprocess_exec(
            "cat", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        out, _ = await p.communicate(payload)
        return out, p.returncode

    out, rc = loop.run_until_complete(main())
    assert rc == 0 and out == payload


def _drain_fd(fd, n):
    """Read n bytes from the blocking fd, in a thread's worth of calls."""
    out = bytearray()
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        assert chunk
        out += chunk
    return bytes(out)


async def unbounded_write_pipe(loop, w):
    """A write pipe transport on fd `w` that never pauses its protocol, so
    what the pipe refuses stays queued in the transport."""
    wt, wp = await loop.connect_write_pipe(lambda: WriteProto(loop),
                                           os.fdopen(w, "wb", 0))
    wt.set_write_buffer_limits(high=1 << 30)
    return wt, wp


def test_queued_writes_order_and_snapshots(loop):
    # Behind a full pipe, writes queue: a bytes by reference, a bytearray or
    # a memoryview the caller changes or releases afterwards as it was when
    # written; more queued writes than one writev() takes (IOV_MAX); 1 MiB+
    # writes that go out a part at a time.  All arrive, in order.
    r, w = os.pipe()
    big = os.urandom(BIG + 12345)

    async def main():
        wt, wp = await unbounded_write_pipe(loop, w)
        expected = bytearray()
        wt.write(big)
        expected += big
        assert wt.get_write_buffer_size() > 0  # the pipe is full
        mutable = bytearray(b"before")
        wt.write(mutable)
        expected += b"before"
        mutable[:] = b"AFTER!"
        source = bytearray(b"viewed")
        view = memoryview(source)
        wt.write(view)
        expected += b"viewed"
        source[:] = b"VIEWED"
        view.release()
        ro = memoryview(b"read-only view")
        wt.write(ro[5:])
        expected += b"only view"
        ro.release()
        for i in range(3000):
            piece = b"%d," % i
            wt.write(piece)
            expected += piece
        wt.write(big)
        expected += big
        assert wt.get_write_buffer_size() > len(big)
        got = await loop.run_in_executor(None, _drain_fd, r, len(expected))
        await until(lambda: wt.get_write_buffer_size() == 0)
        wt.close()
        assert await wp.done is None
        os.close(r)
        return got, bytes(expected)

    got, expected = loop.run_until_complete(main())
    assert got == expected


def test_write_buffer_size_counts_bytes(loop):
    r, w = os.pipe()

    async def main():
        wt, wp = await unbounded_write_pipe(loop, w)
        wt.write(b"a" * BIG)
        size = wt.get_write_buffer_size()
        assert 0 < size <= BIG
        wt.write(b"b" * 1000)
        wt.write(bytearray(b"c" * 24))
        assert wt.get_write_buffer_size() == size + 1024
        wt.abort()
        assert wt.get_write_buffer_size() == 0
        assert await wp.done is None
        os.close(r)

    loop.run_until_complete(main())


def test_pause_reading_under_fast_writer(loop):
    # A writer far faster than the reader: nothing arrives while reading is
    # paused, everything after it resumes, in order.
    r, w = os.pipe()
    payload = os.urandom(BIG)

    class Pausing(ReadProto):
        def data_received(self, data):
            super().data_received(data)
            self.transport.pause_reading()
            loop.call_later(0.001, self.resume)

        def resume(self):
            if not self.transport.is_closing():
                self.transport.resume_reading()

    async def main():
        rt, rp = await loop.connect_read_pipe(lambda: Pausing(loop),
                                              os.fdopen(r, "rb", 0))
        wt, wp = await loop.connect_write_pipe(lambda: WriteProto(loop),
                                               os.fdopen(w, "wb", 0))
        wt.write(payload)
        rt.pause_reading()
        await asyncio.sleep(0.05)
        seen = len(rp.data)
        await asyncio.sleep(0.05)
        assert len(rp.data) == seen  # paused: nothing more
        rt.resume_reading()
        wt.close()
        assert await wp.done is None
        assert await rp.done is None
        return bytes(rp.data), rp.events

    data, events = loop.run_until_complete(main())
    assert data == payload
    assert events == ["made", "eof", "lost"]


def test_fds_closed_after_close(loop):
    # Both transports close their pipe once connection_lost has run, on
    # every path: close(), abort() with data queued, the peer going away.
    async def main():
        for how in ("close", "abort", "peer"):
            r, w = os.pipe()
            rt, rp = await loop.connect_read_pipe(lambda: ReadProto(loop),
                                                  os.fdopen(r, "rb", 0))
            wt, wp = await loop.connect_write_pipe(lambda: WriteProto(loop),
                                                   os.fdopen(w, "wb", 0))
            rt.pause_reading()
            wt.write(b"q" * BIG)
            if how == "close":
                rt.resume_reading()
                wt.close()
            elif how == "abort":
                wt.abort()
                rt.close()
            else:
                rt.close()
            assert await rp.done is None
            exc = await wp.done
            if how == "peer":
                assert isinstance(exc, BrokenPipeError)
            else:
                assert exc is None
            for fd in (r, w):  # checked before anything could reuse them
                with pytest.raises(OSError):
                    os.fstat(fd)

    loop.run_until_complete(main())


def test_queued_non_contiguous_view_rejected(loop):
    # Behind a full pipe, a view asyncio's bytearray cannot take raises
    # from write() itself, as asyncio's does; what was queued still goes.
    r, w = os.pipe()

    async def main():
        wt, wp = await unbounded_write_pipe(loop, w)
        wt.write(b"n" * BIG)
        size = wt.get_write_buffer_size()
        assert size > 0
        with pytest.raises(TypeError):
            wt.write(memoryview(b"abcdef")[::2])
        assert wt.get_write_buffer_size() == size
        got = await loop.run_in_executor(None, _drain_fd, r, BIG)
        wt.close()
        assert await wp.done is None
        os.close(r)
        return got

    assert loop.run_until_complete(main()) == b"n" * BIG
