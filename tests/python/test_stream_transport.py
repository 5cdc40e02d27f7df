"""The C stream transport (python/src/stream.c): each body runs against
asyncio's own _SelectorSocketTransport and qloop's StreamTransport, except
where it checks what only the C transport has (no copy of queued bytes,
sendmsg batches)."""

import asyncio
import gc
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import warnings
import weakref

import pytest

import qloop
from qloop import _qloop


class Recorder(asyncio.Protocol):
    """Records what the transport tells its protocol."""

    def __init__(self):
        self.transport = None
        self.data = bytearray()
        self.events = []
        self.lost = None
        self.done = asyncio.get_event_loop().create_future()
        self.eof_result = False

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        assert type(data) is bytes
        self.data += data

    def eof_received(self):
        self.events.append("eof")
        return self.eof_result

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost = exc
        if not self.done.done():
            self.done.set_result(exc)


async def connected_pair(loop, client_proto=None, server_proto=None):
    """A transport connected to a plain non-blocking socket (the peer).
    Returns (transport, protocol, peer socket, server)."""
    accepted = loop.create_future()

    def on_accept(sock, addr):
        accepted.set_result(sock)

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    lsock.setblocking(False)
    proto = client_proto or Recorder()
    tr, _ = await loop.create_connection(lambda: proto,
                                         *lsock.getsockname())
    peer, _ = lsock.accept()
    lsock.close()
    peer.setblocking(False)
    return tr, proto, peer


async def recv_all(loop, peer, n):
    got = bytearray()
    while len(got) < n:
        chunk = await loop.sock_recv(peer, 1 << 20)
        if not chunk:
            break
        got += chunk
    return bytes(got)


def test_isinstance_and_type(loop, impl):
    async def main():
        tr, proto, peer = await connected_pair(loop)
        try:
            assert isinstance(tr, asyncio.Transport)
            assert isinstance(tr, asyncio.ReadTransport)
            assert isinstance(tr, asyncio.WriteTransport)
            assert isinstance(tr, asyncio.transports._FlowControlMixin)
            if impl == "qloop":
                assert isinstance(tr, _qloop.StreamTransport)
            assert tr.get_protocol() is proto
            assert tr.can_write_eof()
            assert not tr.is_closing()
            assert tr.is_reading()
        finally:
            tr.close()
            peer.close()
            await proto.done

    loop.run_until_complete(main())


def test_extra_info(loop):
    async def main():
        tr, proto, peer = await connected_pair(loop)
        sock = tr.get_extra_info("socket")
        assert isinstance(sock, asyncio.trsock.TransportSocket)
        assert tr.get_extra_info("sockname") == peer.getpeername()
        assert tr.get_extra_info("peername") == peer.getsockname()
        assert tr.get_extra_info("nothing", 42) == 42
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        tr.close()
        peer.close()
        await proto.done

    loop.run_until_complete(main())


def test_unix_extra_info_and_echo(loop, tmp_path):
    path = str(tmp_path / "s")

    class Echo(asyncio.Protocol):
        def connection_made(self, tr):
            self.tr = tr

        def data_received(self, data):
            self.tr.write(data)

    async def main():
        server = await loop.create_unix_server(Echo, path)
        proto = Recorder()
        tr, _ = await loop.create_unix_connection(lambda: proto, path)
        assert tr.get_extra_info("peername") == path
        assert isinstance(tr.get_extra_info("socket"),
                          asyncio.trsock.TransportSocket)
        tr.write(b"ping")
        while len(proto.data) < 4:
            await asyncio.sleep(0.01)
        tr.close()
        await proto.done
        server.close()
        await server.wait_closed()
        return bytes(proto.data)

    assert loop.run_until_complete(main()) == b"ping"


def test_repr(loop):
    async def main():
        tr, proto, peer = await connected_pair(loop)
        await asyncio.sleep(0)
        r = repr(tr)
        assert re.fullmatch(
            r"<\w+ fd=\d+ read=polling write=<idle, bufsize=0>>", r), r
        tr.pause_reading()
        assert "read=idle" in repr(tr)
        tr.close()
        assert re.fullmatch(r"<\w+ closing fd=\d+ .*>", repr(tr)), repr(tr)
        await proto.done
        assert re.fullmatch(r"<\w+ closed fd=\d+>", repr(tr)), repr(tr)
        peer.close()

    loop.run_until_complete(main())


def test_write_bytearray_is_copied(qloop_loop):
    """A queued bytearray or memoryview is copied: changing it after write()
    does not change what is sent.  (qloop only: asyncio 3.12 and 3.13 queue
    a reference to it, and send what it holds when the socket drains.)"""
    loop = qloop_loop

    async def main():
        tr, proto, peer = await connected_pair(loop)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        tr.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = b"x" * (1 << 20)
        tr.write(big)  # fills the socket: what follows is queued
        ba = bytearray(b"abc")
        mv = memoryview(bytearray(b"def"))
        tr.write(ba)
        tr.write(mv)
        ba[:] = b"XYZ"
        mv[:] = b"UVW"
        assert tr.get_write_buffer_size() > 0
        got = await recv_all(loop, peer, len(big) + 6)
        tr.close()
        await proto.done
        peer.close()
        return got

    got = loop.run_until_complete(main())
    assert got[-6:] == b"abcdef"
    assert len(got) == (1 << 20) + 6


def test_queued_bytes_are_not_copied(qloop_loop):
    loop = qloop_loop

    async def main():
        tr, proto, peer = await connected_pair(loop)
        tr.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        tr.write(b"x" * (1 << 20))
        chunks = [bytes([65 + i % 26]) * 100 for i in range(50)]
        for c in chunks:
            tr.write(c)
        ba = bytearray(b"copied")
        tr.write(ba)
        queued = tr._queued()
        # Each bytes object is queued as itself; the bytearray as a copy.
        assert all(q is c for q, c in zip(queued[1:51], chunks))
        assert queued[51] == b"copied" and queued[51] is not ba
        assert type(queued[51]) is bytes
        got = await recv_all(loop, peer, (1 << 20) + 5000 + 6)
        tr.close()
        await proto.done
        peer.close()
        return got, chunks

    got, chunks = loop.run_until_complete(main())
    assert got[1 << 20:] == b"".join(chunks) + b"copied"


def test_many_queued_writes_keep_order(loop):
    """More queued buffers than one sendmsg takes (IOV_MAX)."""
    async def main():
        tr, proto, peer = await connected_pair(loop)
        tr.set_write_buffer_limits(high=1 << 30)
        tr.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        tr.write(b"-" * (1 << 20))
        parts = [b"%06d," % i for i in range(5000)]
        for p in parts:
            tr.write(p)
        expected = b"-" * (1 << 20) + b"".join(parts)
        got = await recv_all(loop, peer, len(expected))
        assert tr.get_write_buffer_size() == 0
        tr.close()
        await proto.done
        peer.close()
        return got == expected

    assert loop.run_until_complete(main())


class LineServer(asyncio.Protocol):
    """Answers every complete line from inside data_received, as an HTTP
    keep-alive server does; b"close" is answered and then closes."""

    def connection_made(self, transport):
        self.transport = transport
        self.pending = b""

    def data_received(self, data):
        *lines, self.pending = (self.pending + data).split(b"\n")
        for line in lines:
            self.transport.write(b"R:" + line + b"\n")
            if line == b"close":
                self.transport.close()
                return


def test_many_connections_answer_from_data_received(loop):
    """Tens of connections ready at once, each answered from inside
    data_received (one write per request, some pipelined): every answer
    arrives whole and in order, and close() right after the last write
    still delivers it before EOF."""
    nconn, rounds = 60, 25

    async def client(port, c):
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        got, expected = bytearray(), bytearray()
        for r in range(rounds):
            # Every third round pipelines three requests in one send.
            reqs = [b"c%d-r%d-%d" % (c, r, i)
                    for i in range(3 if r % 3 == 0 else 1)]
            await loop.sock_sendall(sock, b"".join(q + b"\n" for q in reqs))
            want = b"".join(b"R:" + q + b"\n" for q in reqs)
            expected += want
            while len(got) < len(expected):
                chunk = await loop.sock_recv(sock, 65536)
                assert chunk, "EOF before every answer"
                got += chunk
        await loop.sock_sendall(sock, b"close\n")
        expected += b"R:close\n"
        while True:
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                break
            got += chunk
        sock.close()
        return bytes(got) == bytes(expected)

    async def main():
        server = await loop.create_server(LineServer, "127.0.0.1", 0,
                                          backlog=nconn)
        port = server.sockets[0].getsockname()[1]
        oks = await asyncio.wait_for(
            asyncio.gather(*(client(port, c) for c in range(nconn))), 30)
        server.close()
        await server.wait_closed()
        return oks

    assert loop.run_until_complete(main()) == [True] * nconn


def test_write_order_across_iterations(loop):
    """Writes spread over many loop iterations, some while the queue holds
    a partial send and some after it drained, leave in the order they were
    made (a write with an empty queue sends at once; one with a queue must
    not overtake it)."""
    async def main():
        tr, proto, peer = await connected_pair(loop)
        tr.set_write_buffer_limits(high=1 << 30)
        tr.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        expected, got = bytearray(), bytearray()

        async def drain_some(n):
            while len(got) < n:
                got.extend(await loop.sock_recv(peer, 1 << 16))

        for step in range(40):
            if step % 4 == 0:
                big = bytes([65 + step % 26]) * (256 * 1024)
                tr.write(big)  # leaves most of it queued
                expected += big
            piece = b"<%d>" % step
            if step % 5 == 0:
                tr.writelines([piece, bytearray(b"|"), memoryview(b"~")])
                piece += b"|~"
            else:
                tr.write(piece)
            expected += piece
            await asyncio.sleep(0)
            if step % 8 == 7:
                # Let the queue drain completely now and then, so the
                # next write finds it empty and sends at once.
                await drain_some(len(expected))
                assert tr.get_write_buffer_size() == 0
        await drain_some(len(expected))
        tr.close()
        await proto.done
        peer.close()
        return bytes(got) == bytes(expected)

    assert loop.run_until_complete(main())


def test_writelines(loop):
    async def main():
        tr, proto, peer = await connected_pair(loop)
        tr.writelines([b"ab", bytearray(b"cd"), memoryview(b"ef")])
        tr.writelines([])
        got = await recv_all(loop, peer, 6)
        with pytest.raises(TypeError):
            tr.writelines(["str"])
        tr.write_eof()
        with pytest.raises(RuntimeError, match=r"after write_eof\(\)"):
            tr.writelines([b"x"])
        with pytest.raises(RuntimeError,
                           match=r"Cannot call write\(\) after write_eof\(\)"):
            tr.write(b"x")
        assert await loop.sock_recv(peer, 10) == b""
        tr.close()
        await proto.done
        peer.close()
        return got

    assert loop.run_until_complete(main()) == b"abcdef"


def test_writelines_empty_items(qloop_loop):
    """Empty items are skipped.  (qloop only: asyncio 3.12 and 3.13 leave an
    empty memoryview queued for ever, so write_eof() never shuts down.)"""
    loop = qloop_loop

    async def main():
        tr, proto, peer = await connected_pair(loop)
        tr.writelines([b"", b"ab", b"", bytearray(), b"c"])
        got = await recv_all(loop, peer, 3)
        assert tr.get_write_buffer_size() == 0
        tr.write_eof()
        assert await loop.sock_recv(peer, 10) == b""
        tr.close()
        await proto.done
        peer.close()
        return got

    assert loop.run_until_complete(main()) == b"abc"


def test_write_type_error(loop):
    async def main():
        tr, proto, peer = await connected_pair(loop)
        with pytest.raises(TypeError, match="data argument must be a "
                           "bytes-like object, not 'str'"):
            tr.write("text")
        tr.write(b"")
        tr.close()
        await proto.done
        peer.close()

    loop.run_until_complete(main())


def test_water_marks(loop):
    async def main():
        tr, proto, peer = await connected_pair(loop)
        assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        with pytest.raises(ValueError, match=r"high \(1\) must be >= low "
                           r"\(2\) must be >= 0"):
            tr.set_write_buffer_limits(high=1, low=2)
        tr.set_write_buffer_limits(high=4000)
        assert tr.get_write_buffer_limits() == (1000, 4000)
        tr.set_write_buffer_limits(low=100)
        assert tr.get_write_buffer_limits() == (100, 400)
        tr.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        tr.write(b"y" * (1 << 20))
        assert proto.events == ["made", "pause"]
        assert tr.get_write_buffer_size() > 400
        tr.write(b"z")
        assert proto.events == ["made", "pause"]  # once
        await recv_all(loop, peer, (1 << 20) + 1)
        while "resume" not in proto.events:
            await asyncio.sleep(0.01)
        assert proto.events == ["made", "pause", "resume"]
        assert tr.get_write_buffer_size() <= 100
        # Raising the limit above the buffered size pauses nothing;
        # lowering it below does.
        tr.close()
        await proto.done
        peer.close()

    loop.run_until_complete(main())


def test_pause_writing_error_is_reported(loop):
    errors = []

    class Bad(Recorder):
        def pause_writing(self):
            raise ZeroDivisionError

    async def main():
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
        tr, proto, peer = await connected_pair(loop, Bad())
        tr.set_write_buffer_limits(high=0)
        tr.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        tr.write(b"q" * (1 << 20))
        assert not tr.is_closing()
        tr.abort()
        await proto.done
        peer.close()

    loop.run_until_complete(main())
    assert len(errors) == 1
    ctx = errors[0]
    assert ctx["message"] == "protocol.pause_writing() failed"
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert ctx["protocol"] is not None and ctx["transport"] is not None


def test_buffered_protocol_reads_into_its_buffer(loop):
    class Buffered(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(10)
            self.got = bytearray()
            self.bufs = set()
            self.done = asyncio.get_event_loop().create_future()

        def get_buffer(self, sizehint):
            self.bufs.add(id(self.buf))
            return self.buf

        def buffer_updated(self, nbytes):
            self.got += self.buf[:nbytes]

        def eof_received(self):
            return False

        def connection_lost(self, exc):
            self.done.set_result(exc)

    async def main():
        proto = Buffered()
        tr, _, peer = await connected_pair(loop, proto)
        data = bytes(range(256)) * 40
        await loop.sock_sendall(peer, data)
        peer.shutdown(socket.SHUT_WR)
        assert await proto.done is None
        peer.close()
        return proto, data

    proto, data = loop.run_until_complete(main())
    assert proto.got == data
    assert len(proto.bufs) == 1


def test_empty_get_buffer_is_fatal(loop):
    errors = []

    class Empty(asyncio.BufferedProtocol):
        def __init__(self):
            self.done = asyncio.get_event_loop().create_future()

        def get_buffer(self, sizehint):
            return bytearray()

        def buffer_updated(self, nbytes):
            pass

        def connection_lost(self, exc):
            self.done.set_result(exc)

    async def main():
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
        proto = Empty()
        tr, _, peer = await connected_pair(loop, proto)
        peer.send(b"x")
        exc = await proto.done
        peer.close()
        return exc

    exc = loop.run_until_complete(main())
    assert isinstance(exc, RuntimeError)
    assert str(exc) == "get_buffer() returned an empty buffer"
    assert errors[0]["message"] == ("Fatal error: protocol.get_buffer() "
                                    "call failed.")


def test_data_received_error_is_fatal(loop):
    errors = []

    class Bad(Recorder):
        def data_received(self, data):
            raise ValueError("boom")

    async def main():
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
        tr, proto, peer = await connected_pair(loop, Bad())
        peer.send(b"x")
        exc = await proto.done
        peer.close()
        return exc

    exc = loop.run_until_complete(main())
    assert isinstance(exc, ValueError)
    assert errors[0]["message"] == ("Fatal error: protocol.data_received() "
                                    "call failed.")


def test_reads_of_every_size_lose_nothing(loop):
    """Reads switch between the shared buffer, FIONREAD-sized bytes (after
    a read of 32 KiB or more) and max_size bytes (after a full read):
    whatever the sizes in turn, paused reading and EOF in any of those
    modes, every byte arrives once, in order, in exactly-sized bytes."""
    sizes = [100, 100 * 1024, 40 * 1024, 10, 300 * 1024, 64 * 1024, 1,
             256 * 1024, 5, 200 * 1024, 33 * 1024]

    async def main():
        tr, proto, peer = await connected_pair(loop)
        chunks = []
        data_received = proto.data_received

        def record(data):
            chunks.append(len(data))
            data_received(data)

        proto.data_received = record
        sent = bytearray()
        for i, size in enumerate(sizes):
            msg = bytes((i * 7 + j) % 251 for j in range(256)) * (size // 256)
            msg += b"x" * (size - len(msg))
            if i % 3 == 2:
                tr.pause_reading()
            await loop.sock_sendall(peer, msg)
            sent += msg
            if i % 3 == 2:
                await asyncio.sleep(0.02)
                assert len(proto.data) == len(sent) - len(msg)
                tr.resume_reading()
            while len(proto.data) < len(sent):
                await asyncio.sleep(0.001)
        tail = b"y" * (50 * 1024)
        await loop.sock_sendall(peer, tail)
        sent += tail
        peer.shutdown(socket.SHUT_WR)
        await proto.done
        peer.close()
        assert bytes(proto.data) == bytes(sent)
        assert proto.events == ["made", "eof", "lost"]
        assert sum(chunks) == len(sent) and 0 not in chunks

    loop.run_until_complete(main())


def test_streams_echo_with_small_limit_loses_nothing(loop):
    """asyncio.start_server with limit=16 KiB: messages of up to 300 KiB
    make StreamReader pause and resume the transport's reading over and
    over (past 2 * limit) while reads are large; the echo is exact."""
    sizes = [1, 100 * 1024, 300 * 1024, 33 * 1024, 10, 256 * 1024, 64 * 1024]

    async def handle(reader, writer):
        while True:
            data = await reader.read(256 * 1024)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0,
                                            limit=16 * 1024)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i, size in enumerate(sizes):
            msg = bytes((i + j) % 253 for j in range(size))
            writer.write(msg)
            assert await reader.readexactly(size) == msg
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_half_close_keeps_writing(loop):
    async def main():
        proto = Recorder()
        proto.eof_result = True
        tr, _, peer = await connected_pair(loop, proto)
        peer.shutdown(socket.SHUT_WR)
        while "eof" not in proto.events:
            await asyncio.sleep(0.01)
        assert not tr.is_closing()
        tr.write(b"after eof")
        got = await recv_all(loop, peer, 9)
        tr.close()
        await proto.done
        peer.close()
        return got

    assert loop.run_until_complete(main()) == b"after eof"


def test_eof_closes_when_protocol_says_so(loop):
    async def main():
        tr, proto, peer = await connected_pair(loop)
        peer.shutdown(socket.SHUT_WR)
        assert await proto.done is None
        assert proto.events == ["made", "eof", "lost"]
        peer.close()

    loop.run_until_complete(main())


def test_close_flushes_then_connection_lost_once(loop):
    async def main():
        tr, proto, peer = await connected_pair(loop)
        tr.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = b"f" * (1 << 20)
        tr.write(data)
        tr.close()
        tr.close()
        assert tr.is_closing()
        got = await recv_all(loop, peer, len(data) + 1)
        await proto.done
        await asyncio.sleep(0.01)
        peer.close()
        return got == data, proto.events.count("lost")

    assert loop.run_until_complete(main()) == (True, 1)


def test_abort_drops_queue(loop):
    async def main():
        tr, proto, peer = await connected_pair(loop)
        tr.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        tr.write(b"a" * (1 << 20))
        assert tr.get_write_buffer_size() > 0
        tr.abort()
        assert tr.get_write_buffer_size() == 0
        assert await proto.done is None
        peer.close()

    loop.run_until_complete(main())


def test_reset_reaches_connection_lost(loop):
    async def main():
        tr, proto, peer = await connected_pair(loop)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                        b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.close()  # RST
        await asyncio.sleep(0.05)
        for _ in range(100):
            if proto.done.done():
                break
            tr.write(b"x" * 65536)
            await asyncio.sleep(0.01)
        return await proto.done

    exc = loop.run_until_complete(main())
    assert isinstance(exc, (ConnectionResetError, BrokenPipeError)), exc


def test_write_after_close_is_counted_and_logged(loop, caplog):
    async def main():
        tr, proto, peer = await connected_pair(loop)
        tr.abort()
        await proto.done
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            for _ in range(7):
                tr.write(b"lost")
        peer.close()
        return tr._conn_lost

    assert loop.run_until_complete(main()) == 8
    warnings_logged = [r for r in caplog.records
                       if r.getMessage() == "socket.send() raised exception."]
    assert len(warnings_logged) == 3


def test_add_reader_on_transport_fd_raises(loop):
    async def main():
        tr, proto, peer = await connected_pair(loop)
        fd = tr.get_extra_info("socket").fileno()
        with pytest.raises(RuntimeError, match="is used by transport"):
            loop.add_reader(fd, lambda: None)
        with pytest.raises(RuntimeError, match="is used by transport"):
            loop.remove_writer(fd)
        tr.write(b"still works")
        got = await recv_all(loop, peer, 11)
        tr.close()
        await proto.done
        peer.close()
        return got

    assert loop.run_until_complete(main()) == b"still works"


def test_unclosed_transport_warns(loop):
    ref = None

    async def main():
        nonlocal ref
        tr, proto, peer = await connected_pair(loop)
        tr.pause_reading()
        await asyncio.sleep(0)
        proto.transport = None
        ref = weakref.ref(tr)
        return peer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peer = loop.run_until_complete(main())
        gc.collect()
        gc.collect()
    peer.close()
    warned = any(issubclass(w.category, ResourceWarning) and
                 "unclosed transport" in str(w.message) for w in caught)
    tr = ref()
    assert warned, tr and [type(r) for r in gc.get_referrers(tr)]


def test_sendfile(loop, tmp_path):
    path = tmp_path / "f"
    data = os.urandom(300_000)
    path.write_bytes(data)

    async def main():
        tr, proto, peer = await connected_pair(loop)
        with open(path, "rb") as f:
            n = await loop.sendfile(tr, f, offset=1000, count=200_000)
        tr.write(b"END")
        got = await recv_all(loop, peer, 200_003)
        tr.close()
        await proto.done
        peer.close()
        return n, got

    n, got = loop.run_until_complete(main())
    assert n == 200_000
    assert got == data[1000:201_000] + b"END"


@pytest.fixture(scope="module")
def tls_contexts(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = tmp_path_factory.mktemp("tls")
    key, cert = d / "key.pem", d / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=localhost"],
        check=True, capture_output=True)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


def test_tls_extra_info_and_sendfile(loop, tls_contexts, tmp_path):
    server_ctx, client_ctx = tls_contexts
    path = tmp_path / "f"
    data = os.urandom(100_000)
    path.write_bytes(data)
    received = bytearray()
    got_all = None

    class Sink(asyncio.Protocol):
        def data_received(self, d):
            received.extend(d)
            if len(received) >= len(data) and not got_all.done():
                got_all.set_result(None)

    async def main():
        nonlocal got_all
        got_all = loop.create_future()
        server = await loop.create_server(Sink, "127.0.0.1", 0,
                                          ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        proto = Recorder()
        tr, _ = await loop.create_connection(
            lambda: proto, "127.0.0.1", port, ssl=client_ctx,
            server_hostname="localhost")
        assert tr.get_extra_info("sslcontext") is client_ctx
        assert isinstance(tr.get_extra_info("ssl_object"), ssl.SSLObject)
        assert tr.get_extra_info("peercert")["subject"]
        assert tr.get_extra_info("cipher") is not None
        assert tr.get_extra_info("compression") is None
        assert isinstance(tr.get_extra_info("socket"),
                          asyncio.trsock.TransportSocket)
        with open(path, "rb") as f:
            n = await loop.sendfile(tr, f)
        await asyncio.wait_for(got_all, 10)
        tr.close()
        await proto.done
        server.close()
        await server.wait_closed()
        return n

    assert loop.run_until_complete(main()) == len(data)
    assert bytes(received) == data
