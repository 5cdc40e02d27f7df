"""loop.sock_* coroutines."""

import asyncio
import errno
import os
import socket
import struct
import sys
import time

import pytest

needs_311 = pytest.mark.skipif(sys.version_info < (3, 11),
                               reason="sock_recvfrom & co. are 3.11+")


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def udp_pair():
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_sock_recv(loop, pair):
    a, b = pair

    async def main():
        task = loop.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0.005)
        assert not task.done()
        await loop.sock_sendall(b, b"hello")
        return await task

    assert loop.run_until_complete(main()) == b"hello"


def test_sock_recv_ready_data(loop, pair):
    a, b = pair
    b.send(b"already-there")
    assert loop.run_until_complete(loop.sock_recv(a, 100)) == b"already-there"


def test_sock_recv_eof(loop, pair):
    a, b = pair
    b.shutdown(socket.SHUT_WR)
    assert loop.run_until_complete(loop.sock_recv(a, 100)) == b""


def test_sock_recv_big_reads_then_small_then_eof(loop):
    """After big reads (qloop reads the next ones, once the socket is ready,
    into a bytes of what is queued), every read still returns exactly what
    arrived, at most n bytes: large ones, smaller ones, small ones, and
    then EOF (b'') when the peer shuts down."""
    pattern = bytes(range(256)) * 1024  # 256 KiB

    async def main():
        with socket.create_server(("127.0.0.1", 0)) as lsock:
            lsock.setblocking(False)
            peer = socket.create_connection(lsock.getsockname())
            conn, _ = await loop.sock_accept(lsock)
        conn.setblocking(False)
        peer.setblocking(False)
        with conn, peer:
            got = bytearray()
            sizes = [100 * 1024, 100 * 1024, 40 * 1024, 50 * 1024, 3000, 10,
                     64 * 1024]
            sent = 0
            async def read_until(want):
                while len(got) < want:
                    data = await loop.sock_recv(conn, 256 * 1024)
                    assert data, "EOF before the peer shut down"
                    got.extend(data)

            for size in sizes:
                # the read waits first, as a server's does
                reader = loop.create_task(read_until(len(got) + size))
                await asyncio.sleep(0.001)
                chunk = pattern[sent % 256:sent % 256 + size]
                await loop.sock_sendall(peer, chunk)
                sent += size
                await reader
                assert len(got) == sent
            # n smaller than what is queued: at most n
            await loop.sock_sendall(peer, pattern[:80 * 1024])
            await asyncio.sleep(0.01)
            part = await loop.sock_recv(conn, 33 * 1024)
            assert 0 < len(part) <= 33 * 1024
            rest = bytearray(part)
            while len(rest) < 80 * 1024:
                rest += await loop.sock_recv(conn, 256 * 1024)
            assert bytes(rest) == pattern[:80 * 1024]
            peer.shutdown(socket.SHUT_WR)
            assert await asyncio.wait_for(
                loop.sock_recv(conn, 256 * 1024), 5) == b""
        expect = b"".join(pattern[off % 256:off % 256 + size]
                          for off, size in zip(
                              [sum(sizes[:i]) for i in range(len(sizes))],
                              sizes))
        assert bytes(got) == expect

    loop.run_until_complete(main())


def test_sock_recv_into(loop, pair):
    a, b = pair
    buf = bytearray(10)

    async def main():
        loop.call_later(0.005, b.send, b"abc")
        n = await loop.sock_recv_into(a, buf)
        return n

    assert loop.run_until_complete(main()) == 3
    assert buf[:3] == b"abc"
    view = memoryview(buf)[5:]
    b.send(b"xyzxyzxyz")
    assert loop.run_until_complete(loop.sock_recv_into(a, view)) == 5
    assert bytes(buf[5:]) == b"xyzxy"


def test_sock_recv_cancel_leaves_socket_usable(loop, pair):
    a, b = pair

    async def main():
        task = loop.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The reader the cancelled recv added is gone.
        b.send(b"after-cancel")
        return await asyncio.wait_for(loop.sock_recv(a, 100), 5)

    assert loop.run_until_complete(main()) == b"after-cancel"


def test_sock_recv_into_cancel_leaves_socket_usable(loop, pair):
    a, b = pair
    buf = bytearray(100)

    async def main():
        task = loop.create_task(loop.sock_recv_into(a, buf))
        await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        b.send(b"later")
        return await asyncio.wait_for(loop.sock_recv_into(a, buf), 5)

    assert loop.run_until_complete(main()) == 5
    assert buf[:5] == b"later"


def test_sock_recv_wait_for_timeout_then_recv(loop, pair):
    a, b = pair

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop.sock_recv(a, 10), 0.01)
        loop.call_later(0.005, b.send, b"x")
        return await asyncio.wait_for(loop.sock_recv(a, 10), 5)

    assert loop.run_until_complete(main()) == b"x"


def test_two_pending_recvs_on_one_socket(loop, pair):
    """asyncio lets a second sock_recv replace the first one's reader."""
    a, b = pair

    async def main():
        t1 = loop.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0)
        t2 = loop.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0)
        b.send(b"one")
        done, pending = await asyncio.wait([t1, t2], timeout=0.05)
        for t in pending:
            t.cancel()
        return sorted(t.result() for t in done), len(pending)

    results, npending = loop.run_until_complete(main())
    assert results == [b"one"] and npending == 1


def test_sock_sendall_large_payload(loop, pair):
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    payload = bytes(range(256)) * (4 * 4096)  # 4 MiB, far beyond the buffer

    async def reader():
        chunks = []
        total = 0
        while total < len(payload):
            data = await loop.sock_recv(b, 65536)
            if not data:
                break
            chunks.append(data)
            total += len(data)
        return b"".join(chunks)

    async def main():
        rt = loop.create_task(reader())
        await loop.sock_sendall(a, payload)
        return await asyncio.wait_for(rt, 20)

    assert loop.run_until_complete(main()) == payload


def test_sock_sendall_memoryview_and_empty(loop, pair):
    a, b = pair

    async def main():
        await loop.sock_sendall(a, memoryview(b"abcdef")[2:])
        await loop.sock_sendall(a, b"")
        return await loop.sock_recv(b, 10)

    assert loop.run_until_complete(main()) == b"cdef"


def test_sock_sendall_cancel(loop, pair):
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    async def main():
        task = loop.create_task(loop.sock_sendall(a, b"x" * (8 << 20)))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # drain what was sent, then the socket still works
        while True:
            try:
                if not b.recv(1 << 20):
                    break
            except BlockingIOError:
                break
        await loop.sock_sendall(a, b"end")
        data = b""
        while not data.endswith(b"end"):
            data += await loop.sock_recv(b, 1 << 20)
        return data[-3:]

    assert loop.run_until_complete(main()) == b"end"


def test_sock_connect_and_accept(loop):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.setblocking(False)
    client = socket.socket()
    client.setblocking(False)
    try:
        async def main():
            accept = loop.create_task(loop.sock_accept(server))
            await asyncio.sleep(0)
            await loop.sock_connect(client, server.getsockname())
            conn, addr = await accept
            try:
                assert addr == client.getsockname()
                assert conn.gettimeout() == 0
                await loop.sock_sendall(client, b"ping")
                got = await loop.sock_recv(conn, 10)
                await loop.sock_sendall(conn, b"pong")
                back = await loop.sock_recv(client, 10)
                return got, back
            finally:
                conn.close()

        assert loop.run_until_complete(main()) == (b"ping", b"pong")
    finally:
        server.close()
        client.close()


def test_sock_connect_refused(loop):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    addr = probe.getsockname()
    probe.close()  # nothing listens there now
    client = socket.socket()
    client.setblocking(False)
    try:
        with pytest.raises(ConnectionRefusedError):
            loop.run_until_complete(loop.sock_connect(client, addr))
    finally:
        client.close()


def test_sock_connect_resolves_names(loop):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.socket()
    client.setblocking(False)
    try:
        port = server.getsockname()[1]
        loop.run_until_complete(loop.sock_connect(client, ("localhost", port)))
        conn, _ = server.accept()
        conn.close()
    finally:
        server.close()
        client.close()


def test_sock_accept_cancel(loop):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.setblocking(False)
    try:
        async def main():
            t = loop.create_task(loop.sock_accept(server))
            await asyncio.sleep(0.005)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            client = socket.socket()
            client.setblocking(False)
            try:
                acc = loop.create_task(loop.sock_accept(server))
                await loop.sock_connect(client, server.getsockname())
                conn, _ = await asyncio.wait_for(acc, 5)
                conn.close()
            finally:
                client.close()

        loop.run_until_complete(main())
    finally:
        server.close()


@needs_311
def test_sock_sendto_and_recvfrom(loop, udp_pair):
    a, b = udp_pair

    async def main():
        recv = loop.create_task(loop.sock_recvfrom(b, 100))
        await asyncio.sleep(0.005)
        assert not recv.done()
        n = await loop.sock_sendto(a, b"datagram", b.getsockname())
        data, addr = await recv
        return n, data, addr

    n, data, addr = loop.run_until_complete(main())
    assert n == 8
    assert data == b"datagram"
    assert addr == a.getsockname()


@needs_311
def test_sock_recvfrom_into(loop, udp_pair):
    a, b = udp_pair
    buf = bytearray(64)

    async def main():
        loop.call_later(0.005, a.sendto, b"into", b.getsockname())
        return await loop.sock_recvfrom_into(b, buf)

    n, addr = loop.run_until_complete(main())
    assert n == 4 and buf[:4] == b"into"
    assert addr == a.getsockname()
    a.sendto(b"0123456789", b.getsockname())
    n, addr = loop.run_until_complete(loop.sock_recvfrom_into(b, buf, 3))
    assert n == 3 and buf[:3] == b"012"


@needs_311
def test_sock_recvfrom_cancel_leaves_socket_usable(loop, udp_pair):
    a, b = udp_pair

    async def main():
        t = loop.create_task(loop.sock_recvfrom(b, 100))
        await asyncio.sleep(0.005)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        a.sendto(b"after", b.getsockname())
        return await asyncio.wait_for(loop.sock_recvfrom(b, 100), 5)

    data, addr = loop.run_until_complete(main())
    assert data == b"after"


@pytest.mark.parametrize("method,args", [
    ("sock_recv", (10,)),
    ("sock_recv_into", (bytearray(10),)),
    ("sock_sendall", (b"x",)),
    ("sock_accept", ()),
])
def test_blocking_socket_in_debug_mode(loop, method, args):
    loop.set_debug(True)
    a, b = socket.socketpair()  # blocking
    try:
        with pytest.raises(ValueError,
                           match="the socket must be non-blocking"):
            loop.run_until_complete(getattr(loop, method)(a, *args))
    finally:
        a.close()
        b.close()


def test_sock_connect_blocking_socket_in_debug_mode(loop):
    loop.set_debug(True)
    s = socket.socket()
    try:
        with pytest.raises(ValueError,
                           match="the socket must be non-blocking"):
            loop.run_until_complete(loop.sock_connect(s, ("127.0.0.1", 1)))
    finally:
        s.close()


def test_streams_roundtrip(loop):
    async def handle(reader, writer):
        data = await reader.readline()
        writer.write(data.upper())
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello streams\n")
        await writer.drain()
        line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return line

    assert loop.run_until_complete(main()) == b"HELLO STREAMS\n"


def test_datagram_endpoint(loop):
    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(data[::-1], addr)

    class Client(asyncio.DatagramProtocol):
        def __init__(self):
            self.got = loop.create_future()

        def datagram_received(self, data, addr):
            self.got.set_result(data)

    async def main():
        st, _ = await loop.create_datagram_endpoint(
            Echo, local_addr=("127.0.0.1", 0))
        ct, cp = await loop.create_datagram_endpoint(
            Client, remote_addr=st.get_extra_info("sockname"))
        ct.sendto(b"abc")
        data = await asyncio.wait_for(cp.got, 5)
        ct.close()
        st.close()
        return data

    assert loop.run_until_complete(main()) == b"cba"


# ---- what the sock_* methods return -----------------------------------------


def test_sock_methods_return_coroutines(loop, pair):
    import collections.abc
    import inspect

    a, b = pair
    coro = loop.sock_recv(a, 10)
    try:
        assert asyncio.iscoroutine(coro)
        assert isinstance(coro, collections.abc.Coroutine)
        assert inspect.isawaitable(coro)
        assert coro.__qualname__ == "BaseSelectorEventLoop.sock_recv"
        assert coro.__name__ == "sock_recv"
    finally:
        coro.close()


def test_sock_coroutine_never_awaited_warns(loop, pair):
    import gc

    a, b = pair
    with pytest.warns(RuntimeWarning,
                      match="coroutine 'BaseSelectorEventLoop.sock_recv' "
                            "was never awaited"):
        loop.sock_recv(a, 10)
        gc.collect()


@pytest.mark.parametrize("call,message", [
    (lambda lp, s: lp.sock_recv(s),
     "BaseSelectorEventLoop.sock_recv() missing 1 required positional "
     "argument: 'n'"),
    (lambda lp, s: lp.sock_recv(s, 1, 2),
     "BaseSelectorEventLoop.sock_recv() takes 3 positional arguments but 4 "
     "were given"),
    (lambda lp, s: lp.sock_recv(s, n=1, x=1),
     "BaseSelectorEventLoop.sock_recv() got an unexpected keyword argument "
     "'x'"),
    (lambda lp, s: lp.sock_sendall(s),
     "BaseSelectorEventLoop.sock_sendall() missing 1 required positional "
     "argument: 'data'"),
    (lambda lp, s: lp.sock_accept(),
     "BaseSelectorEventLoop.sock_accept() missing 1 required positional "
     "argument: 'sock'"),
])
def test_sock_argument_errors_at_call_time(loop, pair, call, message):
    a, b = pair
    with pytest.raises(TypeError) as info:
        call(loop, a)
    assert str(info.value) == message


def test_sock_keyword_arguments(loop, pair):
    a, b = pair
    buf = bytearray(4)

    async def main():
        await loop.sock_sendall(sock=b, data=b"kwargs!")
        got = await loop.sock_recv(sock=a, n=2)
        n = await loop.sock_recv_into(sock=a, buf=buf)
        return got, n

    assert loop.run_until_complete(main()) == (b"kw", 4)
    assert buf == b"args"


def test_sock_recv_zero_bytes(loop, pair):
    a, b = pair
    assert loop.run_until_complete(loop.sock_recv(a, 0)) == b""


def test_sock_errors_surface_at_await(loop, pair):
    a, b = pair
    closed = socket.socket()
    closed.close()
    coro = loop.sock_recv(closed, 10)  # no error yet
    with pytest.raises(OSError) as info:
        loop.run_until_complete(coro)
    assert info.value.errno == 9
    with pytest.raises(ValueError, match="negative buffersize in recv"):
        loop.run_until_complete(loop.sock_recv(a, -1))


def test_sock_coroutine_protocol(loop, pair):
    a, b = pair
    coro = loop.sock_recv(a, 10)
    with pytest.raises(TypeError, match="can't send non-None value to a "
                                        "just-started coroutine"):
        coro.send(1)
    coro.close()
    coro = loop.sock_recv(a, 10)
    with pytest.raises(ValueError, match="thrown"):
        coro.throw(ValueError("thrown"))
    with pytest.raises(RuntimeError, match="cannot reuse already awaited "
                                           "coroutine"):
        coro.send(None)


def test_sock_awaited_directly_and_through_wait_for(loop, pair):
    a, b = pair

    async def main():
        loop.call_later(0.005, b.send, b"1")
        one = await loop.sock_recv(a, 10)
        loop.call_later(0.005, b.send, b"2")
        two = await asyncio.wait_for(loop.sock_recv(a, 10), 5)
        loop.call_later(0.005, b.send, b"3")
        three, = await asyncio.gather(loop.sock_recv(a, 10))
        return one, two, three

    assert loop.run_until_complete(main()) == (b"1", b"2", b"3")


# ---- cancellation racing readiness ------------------------------------------


def _cancel_when_ready(loop, start_op, make_ready, check_after):
    """Start an op that waits; then, in an I/O callback of the very
    iteration in which the op's fd becomes ready, cancel it.  The op must
    not consume anything: `check_after` sees the data."""
    trig_r, trig_w = socket.socketpair()
    trig_r.setblocking(False)
    try:
        async def main():
            task = loop.create_task(start_op())
            await asyncio.sleep(0.005)
            assert not task.done()

            def on_trigger():
                trig_r.recv(10)
                loop.remove_reader(trig_r)
                task.cancel()

            loop.add_reader(trig_r, on_trigger)
            # Trigger first: epoll reports the two fds in the order they
            # got ready, so the cancelling callback runs first.
            trig_w.send(b"t")
            make_ready()
            await asyncio.sleep(0.01)
            assert task.cancelled()
            return await asyncio.wait_for(check_after(), 5)

        return loop.run_until_complete(main())
    finally:
        trig_r.close()
        trig_w.close()


def test_cancel_recv_in_the_iteration_it_gets_ready(loop, pair):
    a, b = pair
    got = _cancel_when_ready(loop, lambda: loop.sock_recv(a, 100),
                             lambda: b.send(b"kept"),
                             lambda: loop.sock_recv(a, 100))
    assert got == b"kept"


def test_cancel_recv_into_in_the_iteration_it_gets_ready(loop, pair):
    a, b = pair
    buf = bytearray(100)
    n = _cancel_when_ready(loop, lambda: loop.sock_recv_into(a, buf),
                           lambda: b.send(b"kept"),
                           lambda: loop.sock_recv(a, 100))
    assert n == b"kept"


@needs_311
def test_cancel_recvfrom_in_the_iteration_it_gets_ready(loop, udp_pair):
    a, b = udp_pair
    data, addr = _cancel_when_ready(
        loop, lambda: loop.sock_recvfrom(b, 100),
        lambda: a.sendto(b"kept", b.getsockname()),
        lambda: loop.sock_recvfrom(b, 100))
    assert data == b"kept"


# ---- many at once -----------------------------------------------------------


def test_many_concurrent_recvs(loop):
    pairs = [socket.socketpair() for _ in range(50)]
    for a, b in pairs:
        a.setblocking(False)
        b.setblocking(False)
    try:
        async def main():
            tasks = [loop.create_task(loop.sock_recv(a, 10))
                     for a, b in pairs]
            await asyncio.sleep(0)
            for i, (a, b) in enumerate(reversed(pairs)):
                b.send(str(i).encode())
            return await asyncio.gather(*tasks)

        got = loop.run_until_complete(main())
        assert got == [str(i).encode() for i in reversed(range(50))]
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_sock_echo_many_rounds(loop, pair):
    a, b = pair

    async def echo():
        while True:
            data = await loop.sock_recv(b, 1024)
            if not data:
                return
            await loop.sock_sendall(b, data)

    async def main():
        server = loop.create_task(echo())
        for i in range(300):
            msg = f"message {i}".encode()
            await loop.sock_sendall(a, msg)
            got = b""
            while len(got) < len(msg):
                got += await loop.sock_recv(a, 1024)
            assert got == msg
        a.shutdown(socket.SHUT_WR)
        await server

    loop.run_until_complete(main())


# ---- the system calls made in C, and the kernel registrations ---------------


def _tcp_pair():
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    a = socket.create_connection(lsock.getsockname())
    b, _ = lsock.accept()
    lsock.close()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def test_sock_recv_waits_again_on_a_reused_fd(loop):
    """Wait on a socket, close it, and wait on a new one that gets the same
    fd number: the kernel dropped the registration with the old file, and
    the new wait must still be woken."""
    async def one_round():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        try:
            task = loop.create_task(loop.sock_recv(a, 100))
            await asyncio.sleep(0.002)
            assert not task.done()
            b.send(b"x")
            assert await asyncio.wait_for(task, 5) == b"x"
            return a.fileno()
        finally:
            a.close()
            b.close()

    async def main():
        fds = [await one_round() for _ in range(20)]
        return fds

    fds = loop.run_until_complete(main())
    assert len(set(fds)) < len(fds)  # fd numbers were reused


def test_sock_recv_unwatched_readable_socket_does_not_spin(loop, pair):
    """Data that arrives once nobody waits on the socket any more must not
    keep the loop busy (a registration left behind would report it on
    every poll), and is there for the next sock_recv."""
    a, b = pair

    async def main():
        task = loop.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0.002)
        b.send(b"first")
        assert await task == b"first"
        b.send(b"second")
        t0 = time.process_time()
        await asyncio.sleep(0.3)
        spent = time.process_time() - t0
        return spent, await loop.sock_recv(a, 100)

    spent, data = loop.run_until_complete(main())
    assert data == b"second"
    assert spent < 0.15


def test_add_reader_after_sock_recv_waited(loop, pair):
    """After a sock_recv that waited, the fd is not watched (remove_reader
    says so) and add_reader on it works as on a fresh fd."""
    a, b = pair

    async def main():
        task = loop.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0.002)
        b.send(b"1")
        assert await task == b"1"
        assert not loop.remove_reader(a.fileno())
        got = loop.create_future()
        loop.add_reader(a.fileno(), lambda: got.set_result(a.recv(100)))
        b.send(b"2")
        try:
            return await asyncio.wait_for(got, 5)
        finally:
            assert loop.remove_reader(a.fileno())

    assert loop.run_until_complete(main()) == b"2"


def test_sock_recv_peer_reset(loop):
    a, b = _tcp_pair()
    try:
        async def main():
            task = loop.create_task(loop.sock_recv(a, 100))
            await asyncio.sleep(0.005)
            assert not task.done()
            b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                         struct.pack("ii", 1, 0))
            b.close()  # RST
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(task, 5)
            # the error is there for a new call too, at once or EOF
            try:
                assert await loop.sock_recv(a, 100) == b""
            except ConnectionResetError:
                pass

        loop.run_until_complete(main())
    finally:
        a.close()
        b.close()


def test_sock_sendall_to_reset_peer(loop):
    a, b = _tcp_pair()
    try:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                     struct.pack("ii", 1, 0))
        b.close()

        async def main():
            await asyncio.sleep(0.005)
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                for _ in range(100):
                    await loop.sock_sendall(a, b"x" * 65536)

        loop.run_until_complete(main())
    finally:
        a.close()


def test_sock_fd_closed_behind_the_loops_back(loop, pair):
    a, b = pair
    os.close(a.fileno())
    try:
        with pytest.raises(OSError) as info:
            loop.run_until_complete(loop.sock_recv(a, 100))
        assert info.value.errno == errno.EBADF
        with pytest.raises(OSError) as info:
            loop.run_until_complete(loop.sock_sendall(a, b"data"))
        assert info.value.errno == errno.EBADF
    finally:
        a.detach()  # its fd is gone: the fixture must not close it again


def test_sock_sendall_bytearray_partial_writes(loop, pair):
    """A bytearray that does not fit: sent in pieces, and it cannot be
    resized while sock_sendall holds it (asyncio's memoryview)."""
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    payload = bytearray(bytes(range(256)) * 4096)  # 1 MiB

    async def reader():
        got = bytearray()
        while len(got) < len(payload):
            data = await loop.sock_recv(b, 65536)
            if not data:
                break
            got += data
        return bytes(got)

    async def main():
        sender = loop.create_task(loop.sock_sendall(a, payload))
        await asyncio.sleep(0)
        assert not sender.done()
        with pytest.raises(BufferError):
            payload.extend(b"more")
        got = await asyncio.wait_for(reader(), 20)
        await sender
        return got

    assert loop.run_until_complete(main()) == bytes(payload)


def test_sock_recv_sizes_and_types(loop, pair):
    """Sizes above the read buffer, an __index__ size, and the errors
    socket.recv gives, whatever path the call takes."""
    a, b = pair

    class Size:
        def __index__(self):
            return 5

    big = bytes(range(256)) * 2048  # 512 KiB
    b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)

    async def main():
        await loop.sock_sendall(b, b"0123456789")
        first = await loop.sock_recv(a, Size())
        rest = await loop.sock_recv(a, 1 << 20)
        with pytest.raises(TypeError):
            await loop.sock_recv(a, 1.5)
        with pytest.raises(OverflowError):
            await loop.sock_recv(a, 1 << 70)
        sender = loop.create_task(loop.sock_sendall(b, big))
        got = b""
        while len(got) < len(big):
            got += await loop.sock_recv(a, 1 << 20)
        await sender
        return first, rest, got

    first, rest, got = loop.run_until_complete(main())
    assert (first, rest) == (b"01234", b"56789")
    assert got == big


def test_sock_methods_of_a_socket_subclass_are_called(loop, pair):
    """A subclass of socket.socket keeps its own recv/send."""
    a, b = pair
    calls = []

    class Traced(socket.socket):
        def recv(self, n, *args):
            calls.append(("recv", n))
            return super().recv(n, *args)

        def send(self, data, *args):
            calls.append(("send", len(data)))
            return super().send(data, *args)

    t = Traced(fileno=a.detach())
    t.setblocking(False)
    try:
        async def main():
            await loop.sock_sendall(t, b"ping")
            task = loop.create_task(loop.sock_recv(t, 100))
            await asyncio.sleep(0.002)
            b.send(b"pong")
            return b.recv(100), await task

        assert loop.run_until_complete(main()) == (b"ping", b"pong")
        assert ("send", 4) in calls
        assert calls.count(("recv", 100)) >= 1
    finally:
        t.close()
        a.close()


def test_sock_awaitables_with_ensure_future_gather_wait_for(loop, pair):
    a, b = pair

    async def main():
        recv = asyncio.ensure_future(loop.sock_recv(b, 100))
        assert isinstance(recv, asyncio.Task)
        sent = asyncio.ensure_future(loop.sock_sendall(a, b"abc"))
        assert await sent is None
        assert await recv == b"abc"
        results = await asyncio.gather(loop.sock_sendall(a, b"def"),
                                       loop.sock_recv(b, 100))
        assert results == [None, b"def"]
        assert await asyncio.wait_for(loop.sock_sendall(a, b"g"), 5) is None
        assert await asyncio.wait_for(loop.sock_recv(b, 100), 5) == b"g"
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop.sock_recv(b, 100), 0.01)
        # the timed-out wait left the socket usable
        await loop.sock_sendall(a, b"h")
        return await loop.sock_recv(b, 100)

    assert loop.run_until_complete(main()) == b"h"
