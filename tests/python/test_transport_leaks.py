"""Leak checks of stream transports: descriptors, memory, references.

Each body runs against asyncio's loop too: it is the reference, so a
failure there means the test, not the loop, is wrong.  Python
allocations are read with tracemalloc, C allocations (a transport's own
buffers, once it is written in C) with glibc's mallinfo2, descriptors
from /proc/self/fd.
"""

import asyncio
import ctypes
import gc
import os
import socket
import struct
import sys
import weakref

import pytest

HOST = "127.0.0.1"
KiB = 1024
MiB = 1024 * KiB

needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                                reason="needs /proc")


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def full_gc():
    for _ in range(3):
        gc.collect()


def _mallinfo_fn():
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost")]

    fn.restype = Mallinfo2
    return fn


_mallinfo2 = _mallinfo_fn()


def c_heap_in_use():
    """Bytes malloc() has handed out and not got back (glibc)."""
    info = _mallinfo2()
    return info.uordblks + info.hblkhd


class Echo(asyncio.Protocol):
    """Server side: echoes, closes on EOF (eof_received returns None)."""

    lost = 0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        Echo.lost += 1
        self.transport = None


class Client(asyncio.Protocol):
    def __init__(self):
        loop = asyncio.get_running_loop()
        self.answered = loop.create_future()
        self.closed = loop.create_future()
        self.got = b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.got += data
        if self.got == b"ping" and not self.answered.done():
            self.answered.set_result(None)

    def connection_lost(self, exc):
        self.closed.set_result(exc)
        self.transport = None


async def connect_cycles(loop, port, n, batch=100):
    """n connections (batch at a time): connect, ping, pong, close; and
    wait until the server side has seen all of them go."""
    target = Echo.lost + n

    async def one():
        tr, pr = await loop.create_connection(Client, HOST, port)
        tr.write(b"ping")
        await pr.answered
        tr.close()
        assert await pr.closed is None

    for _ in range(n // batch):
        await asyncio.gather(*(one() for _ in range(batch)))
    while Echo.lost < target:
        await asyncio.sleep(0.001)


def run(loop, coro, timeout=25):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


@needs_proc
@pytest.mark.skipif(_mallinfo2 is None, reason="needs glibc mallinfo2")
def test_10k_connect_close_cycles_no_growth(loop):
    """10k connections through one server on one loop: no descriptor, no
    object, no memory growth.  Python's small objects are counted as
    pymalloc blocks (sys.getallocatedblocks: cheap, unlike tracemalloc),
    everything larger and all C allocations as glibc's heap in use.  The
    bounds are per 10k connections: one leaked object per 20 connections
    exceeds the first (500 blocks), a leak of 32 bytes per connection the
    second (256 KiB, which absorbs malloc's own bookkeeping).  The
    baseline is taken after 500 connections, past the one-time growth of
    the loop's tables."""
    n = 10_000

    async def main():
        server = await loop.create_server(Echo, HOST, 0, backlog=200)
        port = server.sockets[0].getsockname()[1]
        await connect_cycles(loop, port, 500)  # warm up every cache
        full_gc()
        fds = fd_count()
        objects = len(gc.get_objects())
        blocks = sys.getallocatedblocks()
        c_heap = c_heap_in_use()
        await connect_cycles(loop, port, n)
        full_gc()
        c_grown = c_heap_in_use() - c_heap
        blocks_grown = sys.getallocatedblocks() - blocks
        objects_grown = len(gc.get_objects()) - objects
        assert fd_count() == fds
        assert objects_grown < 100, f"{objects_grown} more objects"
        assert blocks_grown < 500, f"{blocks_grown} more pymalloc blocks"
        assert c_grown < 256 * KiB, f"C heap grew {c_grown} bytes"
        server.close()
        await server.wait_closed()

    run(loop, main(), timeout=28)


@needs_proc
def test_fds_back_after_server_close(loop):
    full_gc()
    before = fd_count()

    async def main():
        server = await loop.create_server(Echo, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        await connect_cycles(loop, port, 200)
        # A connection still open when the server closes.
        tr, pr = await loop.create_connection(Client, HOST, port)
        server.close()
        tr.close()
        await pr.closed
        await server.wait_closed()
        while Echo.lost < 201:
            await asyncio.sleep(0.001)

    Echo.lost = 0
    run(loop, main())
    full_gc()
    assert fd_count() == before


# ---- objects are released in every way a connection ends ------------------


def _reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                    struct.pack("ii", 1, 0))
    sock.close()


class Watched(asyncio.Protocol):
    def __init__(self):
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if data == b"close me":
            self.transport.close()

    def connection_lost(self, exc):
        self.lost.set_result(exc)
        # keep self.transport: the protocol's own reference must not
        # be what keeps either object alive once both are dropped


@pytest.mark.parametrize("ending", ["close", "abort", "abort_queued",
                                    "peer_eof", "peer_reset",
                                    "close_in_data_received"])
def test_transport_and_protocol_collected(loop, ending):
    async def main():
        with socket.create_server((HOST, 0)) as lsock:
            lsock.setblocking(False)
            (tr, pr), (peer, _) = await asyncio.gather(
                loop.create_connection(Watched, *lsock.getsockname()),
                loop.sock_accept(lsock))
        peer.setblocking(False)
        refs = [weakref.ref(tr), weakref.ref(pr)]
        if ending == "close":
            tr.close()
        elif ending == "abort":
            tr.abort()
        elif ending == "abort_queued":
            tr.set_write_buffer_limits(high=64 * MiB)
            while tr.get_write_buffer_size() < 1 * MiB:
                tr.write(bytes(1 * MiB))
            tr.abort()
        elif ending == "peer_eof":
            peer.close()
        elif ending == "peer_reset":
            _reset(peer)
        elif ending == "close_in_data_received":
            peer.send(b"close me")
        lost = pr.lost
        del tr, pr
        await lost
        for _ in range(5):
            await asyncio.sleep(0)
        peer.close()
        return refs, lost

    refs, lost = run(loop, main())
    del lost
    full_gc()
    assert [r() for r in refs] == [None, None]


def test_server_side_objects_collected(loop):
    refs = []

    class Server(Echo):
        def connection_made(self, transport):
            super().connection_made(transport)
            refs.extend([weakref.ref(transport), weakref.ref(self)])

    async def main():
        server = await loop.create_server(Server, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        target = Echo.lost + 1
        tr, pr = await loop.create_connection(Client, HOST, port)
        tr.write(b"ping")
        await pr.answered
        tr.close()
        await pr.closed
        while Echo.lost < target:
            await asyncio.sleep(0.001)
        server.close()
        await server.wait_closed()
        return weakref.ref(server), weakref.ref(tr), weakref.ref(pr)

    refs.extend(run(loop, main()))
    for _ in range(3):
        loop.run_until_complete(asyncio.sleep(0))
    full_gc()
    assert len(refs) == 5
    assert [r() for r in refs] == [None] * 5


# ---- reference counts of what passes through a transport --------------------


@pytest.mark.parametrize("ending", ["flush", "abort"])
def test_written_data_released(loop, ending):
    """A queued write holds the data (or a copy) only until it is sent or
    dropped: its reference count comes back."""
    payload = bytes(8 * MiB)
    view_source = bytearray(2 * MiB)

    async def main():
        with socket.create_server((HOST, 0)) as lsock:
            lsock.setblocking(False)
            (tr, pr), (peer, _) = await asyncio.gather(
                loop.create_connection(Watched, *lsock.getsockname()),
                loop.sock_accept(lsock))
        peer.setblocking(False)
        tr.set_write_buffer_limits(high=64 * MiB)
        base = (sys.getrefcount(payload), sys.getrefcount(view_source))
        tr.write(payload)
        tr.write(memoryview(view_source)[1:])
        tr.writelines([payload, view_source])
        assert tr.get_write_buffer_size() > 0
        if ending == "flush":
            total = 2 * len(payload) + 2 * len(view_source) - 1
            got = 0
            while got < total:
                got += len(await loop.sock_recv(peer, 1 * MiB))
            while tr.get_write_buffer_size():
                await asyncio.sleep(0.001)
            tr.close()
        else:
            tr.abort()
        await pr.lost
        for _ in range(5):
            await asyncio.sleep(0)
        peer.close()
        del tr, pr
        full_gc()
        assert (sys.getrefcount(payload),
                sys.getrefcount(view_source)) == base
        # a bytearray with no export left can be resized again
        view_source.append(0)

    run(loop, main())


def test_protocol_factory_and_server_refcounts(loop):
    class Factory:
        def __call__(self):
            return Echo()

    factory = Factory()

    async def main():
        base = sys.getrefcount(factory)
        for _ in range(20):
            server = await loop.create_server(factory, HOST, 0)
            port = server.sockets[0].getsockname()[1]
            await connect_cycles(loop, port, 10, batch=10)
            server.close()
            await server.wait_closed()
        del server
        full_gc()
        assert sys.getrefcount(factory) == base

    run(loop, main())
