"""Datagram endpoints: create_datagram_endpoint and its transport."""

import asyncio
import gc
import os
import socket
import sys
import tempfile
import warnings

import pytest

import qloop


class Proto(asyncio.DatagramProtocol):
    def __init__(self, loop, echo=False):
        self.loop = loop
        self.echo = echo
        self.transport = None
        self.received = []
        self.errors = []
        self.events = []
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def datagram_received(self, data, addr):
        self.received.append((data, addr))
        if self.echo:
            self.transport.sendto(data, addr)

    def error_received(self, exc):
        self.errors.append(exc)

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")

    def connection_lost(self, exc):
        self.events.append("lost")
        self.done.set_result(exc)


async def until(cond, timeout=5.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.001)


def endpoint(loop, echo=False, **kw):
    return loop.run_until_complete(loop.create_datagram_endpoint(
        lambda: Proto(loop, echo=echo), **kw))


@pytest.mark.parametrize("host,family", [("127.0.0.1", socket.AF_INET),
                                         ("::1", socket.AF_INET6)])
def test_echo_and_addresses(loop, host, family, impl):
    st, sp = endpoint(loop, local_addr=(host, 0), echo=True)
    server_addr = st.get_extra_info("sockname")
    ct, cp = endpoint(loop, remote_addr=server_addr[:2])

    async def main():
        for i in range(20):
            ct.sendto(b"d%d" % i)
        await until(lambda: len(cp.received) == 20)

    loop.run_until_complete(main())
    client_addr = ct.get_extra_info("sockname")
    assert [d for d, _ in sp.received] == [b"d%d" % i for i in range(20)]
    assert {a for _, a in sp.received} == {client_addr}
    assert [d for d, _ in cp.received] == [b"d%d" % i for i in range(20)]
    assert {a for _, a in cp.received} == {server_addr}
    assert ct.get_extra_info("peername") == server_addr
    # asyncio's is a DatagramTransport from 3.13 on; qloop's always.
    if impl == "qloop" or sys.version_info >= (3, 13):
        assert isinstance(st, asyncio.DatagramTransport)
    assert isinstance(st, asyncio.Transport)
    sock = st.get_extra_info("socket")
    assert sock.family == family and sock.type == socket.SOCK_DGRAM
    assert st.get_extra_info("nothing", 42) == 42
    ct.close()
    st.close()
    assert loop.run_until_complete(cp.done) is None
    assert loop.run_until_complete(sp.done) is None
    assert cp.events == ["made", "lost"]


def test_unconnected_sendto_many_peers(loop):
    st, sp = endpoint(loop, local_addr=("127.0.0.1", 0))
    peers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
             for _ in range(3)]
    for p in peers:
        p.bind(("127.0.0.1", 0))
        p.settimeout(5)
    try:
        for i, p in enumerate(peers):
            st.sendto(b"to%d" % i, p.getsockname())
            st.sendto(bytearray(b"ba"), p.getsockname())
            st.sendto(memoryview(b"xmv")[1:], p.getsockname())
        for i, p in enumerate(peers):
            assert p.recvfrom(100) == (b"to%d" % i, st.get_extra_info(
                "sockname"))
            assert p.recv(100) == b"ba"
            assert p.recv(100) == b"mv"
        # Names are resolved as the socket module resolves them.
        st.sendto(b"byname", ("localhost", peers[0].getsockname()[1]))
        assert peers[0].recv(100) == b"byname"
    finally:
        for p in peers:
            p.close()
        st.close()
        loop.run_until_complete(sp.done)


def test_sendto_errors_match_asyncio(loop):
    st, sp = endpoint(loop, local_addr=("127.0.0.1", 0))
    ct, cp = endpoint(loop, remote_addr=st.get_extra_info("sockname"))
    with pytest.raises(TypeError, match="bytes-like object, not 'str'"):
        ct.sendto("text")
    with pytest.raises(ValueError, match="Invalid address: must be None or"):
        ct.sendto(b"x", ("127.0.0.1", 1))
    ct.sendto(b"same", st.get_extra_info("sockname"))  # the peer is fine

    reported = []
    loop.set_exception_handler(lambda lp, ctx: reported.append(ctx))
    st.sendto(b"x", "not-an-address")  # TypeError: a fatal write error
    exc = loop.run_until_complete(sp.done)
    assert isinstance(exc, TypeError)
    assert reported[0]["message"] == "Fatal write error on datagram transport"
    assert st.is_closing()
    ct.close()
    loop.run_until_complete(cp.done)


def test_empty_datagram_as_asyncio(loop):
    # 3.13 sends empty datagrams; earlier versions drop them.
    st, sp = endpoint(loop, local_addr=("127.0.0.1", 0))
    ct, cp = endpoint(loop, remote_addr=st.get_extra_info("sockname"))

    async def main():
        ct.sendto(b"")
        ct.sendto(b"end")
        await until(lambda: sp.received and sp.received[-1][0] == b"end")

    loop.run_until_complete(main())
    data = [d for d, _ in sp.received]
    assert data == ([b"", b"end"] if sys.version_info >= (3, 13)
                    else [b"end"])
    ct.close()
    st.close()


def test_connection_refused_is_error_received(loop):
    # A connected UDP socket gets ICMP port-unreachable as ECONNREFUSED.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    dead = probe.getsockname()
    probe.close()
    ct, cp = endpoint(loop, remote_addr=dead)

    async def main():
        for _ in range(50):
            ct.sendto(b"anyone?")
            await asyncio.sleep(0.002)
            if cp.errors:
                break

    loop.run_until_complete(main())
    assert cp.errors
    assert all(isinstance(e, ConnectionRefusedError) for e in cp.errors)
    assert not ct.is_closing()
    ct.close()
    assert loop.run_until_complete(cp.done) is None


def test_udp_flood_to_dead_port(loop):
    # Thousands of datagrams at nobody: no crash, every socket error goes to
    # error_received, the transport stays usable.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    dead = probe.getsockname()
    probe.close()
    ct, cp = endpoint(loop, remote_addr=dead)

    async def main():
        for i in range(5000):
            ct.sendto(b"x" * 512)
            if i % 100 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0.05)

    loop.run_until_complete(main())
    assert cp.errors
    assert all(isinstance(e, OSError) for e in cp.errors)
    ct.close()
    loop.run_until_complete(cp.done)


def unix_pair_endpoint(loop, sndbuf=None):
    # Bound and connected by path: a socketpair's peername is '', which
    # asyncio takes for "not connected".
    d = tempfile.mkdtemp()
    a = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.bind(os.path.join(d, "a"))
    b.bind(os.path.join(d, "b"))
    a.connect(os.path.join(d, "b"))
    b.connect(os.path.join(d, "a"))
    for name in ("a", "b"):
        os.unlink(os.path.join(d, name))
    os.rmdir(d)
    if sndbuf:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    a.setblocking(False)
    tr, pr = loop.run_until_complete(loop.create_datagram_endpoint(
        lambda: Proto(loop), sock=a))
    return tr, pr, b


def test_full_buffer_flow_control(loop):
    tr, pr, peer = unix_pair_endpoint(loop, sndbuf=4096)
    # low leaves room for 3.13's 8-byte header count, which its
    # _sendto_ready does not take back (asyncio's accounting, kept).
    tr.set_write_buffer_limits(high=8000, low=2000)
    assert tr.get_write_buffer_limits() == (2000, 8000)
    n = 200
    try:
        for i in range(n):
            tr.sendto(b"%04d" % i + b"." * 96)
        assert tr.get_write_buffer_size() > 0  # the socket filled up
        assert "pause" in pr.events

        async def drain():
            got = []
            while len(got) < n:
                try:
                    got.append(peer.recv(200))
                except BlockingIOError:
                    await asyncio.sleep(0.001)
            return got

        peer.setblocking(False)
        got = loop.run_until_complete(drain())
        assert [g[:4] for g in got] == [b"%04d" % i for i in range(n)]
        assert pr.events[-1] == "resume"
        if sys.version_info < (3, 13):
            assert tr.get_write_buffer_size() == 0
        assert not pr.errors
    finally:
        tr.close()
        loop.run_until_complete(pr.done)
        peer.close()


def test_abort_drops_buffer_close_waits_for_it(loop):
    tr, pr, peer = unix_pair_endpoint(loop, sndbuf=4096)
    for i in range(100):
        tr.sendto(b"z" * 100)
    assert tr.get_write_buffer_size() > 0
    tr.abort()
    assert loop.run_until_complete(pr.done) is None
    assert pr.events[-1] == "lost"
    peer.close()

    tr, pr, peer = unix_pair_endpoint(loop, sndbuf=4096)
    for i in range(100):
        tr.sendto(b"%03d" % i)
    tr.close()
    tr.close()  # twice is fine
    assert tr.is_closing()
    assert not pr.done.done()

    async def drain():
        got = []
        while not pr.done.done():
            try:
                got.append(peer.recv(100))
            except BlockingIOError:
                await asyncio.sleep(0.001)
        return got

    peer.setblocking(False)
    got = loop.run_until_complete(drain())
    while True:
        try:
            got.append(peer.recv(100))
        except BlockingIOError:
            break
    assert got == [b"%03d" % i for i in range(100)]
    assert pr.events.count("lost") == 1
    peer.close()


def test_unix_datagram_endpoint(loop):
    with tempfile.TemporaryDirectory() as d:
        spath = os.path.join(d, "s")
        cpath = os.path.join(d, "c")
        st, sp = endpoint(loop, family=socket.AF_UNIX, local_addr=spath,
                          echo=True)
        ct, cp = endpoint(loop, family=socket.AF_UNIX, local_addr=cpath,
                          remote_addr=spath)

        async def main():
            ct.sendto(b"unix")
            await until(lambda: cp.received)

        loop.run_until_complete(main())
        assert sp.received == [(b"unix", cpath)]
        assert cp.received == [(b"unix", spath)]
        # An unbound sender has an empty address.
        anon = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        anon.sendto(b"anon", spath)
        loop.run_until_complete(until(lambda: len(sp.received) == 2))
        anon.close()
        assert sp.received[1][0] == b"anon"
        st.close()
        ct.close()
        loop.run_until_complete(sp.done)
        loop.run_until_complete(cp.done)
    # What the reference loop reports for the unbound sender, qloop too.
    return sp.received[1][1]


def test_unbound_unix_sender_address_equal(loop_factory):
    got = {}
    for name, factory in (("asyncio", asyncio.SelectorEventLoop),
                          ("qloop", qloop.new_event_loop)):
        lp = factory()
        try:
            got[name] = test_unix_datagram_endpoint(lp)
        finally:
            lp.close()
    assert got["asyncio"] == got["qloop"]


def test_endpoint_options(loop):
    st, sp = endpoint(loop, local_addr=("127.0.0.1", 0), reuse_port=True,
                      allow_broadcast=True)
    sock = st.get_extra_info("socket")
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    st.close()
    loop.run_until_complete(sp.done)


def test_reuse_address_rejected_as_asyncio(loop):
    async def main():
        await loop.create_datagram_endpoint(
            lambda: Proto(loop), local_addr=("127.0.0.1", 0),
            reuse_address=True)

    if sys.version_info >= (3, 11):
        with pytest.raises(TypeError):
            loop.run_until_complete(main())
    else:
        with pytest.raises(ValueError, match="reuse_address"):
            loop.run_until_complete(main())


def test_protocol_error_goes_to_exception_handler(loop):
    class Bad(Proto):
        def datagram_received(self, data, addr):
            raise ZeroDivisionError("from the protocol")

    st, sp = loop.run_until_complete(loop.create_datagram_endpoint(
        lambda: Bad(loop), local_addr=("127.0.0.1", 0)))
    reported = []
    loop.set_exception_handler(lambda lp, ctx: reported.append(ctx))
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.sendto(b"x", st.get_extra_info("sockname"))
    loop.run_until_complete(until(lambda: reported))
    c.close()
    assert isinstance(reported[0]["exception"], ZeroDivisionError)
    assert not st.is_closing()
    st.close()
    loop.run_until_complete(sp.done)


def test_set_protocol_and_pause_reading(loop):
    st, sp = endpoint(loop, local_addr=("127.0.0.1", 0))
    other = Proto(loop)
    st.set_protocol(other)
    assert st.get_protocol() is other
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.sendto(b"1", st.get_extra_info("sockname"))
    loop.run_until_complete(until(lambda: other.received))
    if hasattr(st, "pause_reading") and sys.version_info >= (3, 11):
        st.pause_reading()
        c.sendto(b"2", st.get_extra_info("sockname"))
        loop.run_until_complete(asyncio.sleep(0.05))
        assert len(other.received) == 1
        st.resume_reading()
        loop.run_until_complete(until(lambda: len(other.received) == 2))
    c.close()
    assert "fd=" in repr(st)
    st.close()
    loop.run_until_complete(other.done)


def test_no_fd_or_object_growth(qloop_loop):
    loop = qloop_loop

    async def cycle():
        st, sp = await loop.create_datagram_endpoint(
            lambda: Proto(loop, echo=True), local_addr=("127.0.0.1", 0))
        ct, cp = await loop.create_datagram_endpoint(
            lambda: Proto(loop), remote_addr=st.get_extra_info("sockname"))
        ct.sendto(b"ping")
        await until(lambda: cp.received)
        ct.close()
        st.close()
        await cp.done
        await sp.done

    async def cycles(n):
        for _ in range(n):
            await cycle()

    loop.run_until_complete(cycles(50))
    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    objs = len(gc.get_objects())
    loop.run_until_complete(cycles(500))
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= fds
    assert len(gc.get_objects()) < objs + 200


@pytest.mark.skipif(sys.version_info < (3, 11),
                    reason="datagram pause_reading is 3.11+")
def test_pause_reading_inside_datagram_received(loop):
    # Ten datagrams wait in the socket; the protocol pauses after the
    # first: nothing more arrives until resume_reading, then all, in order.
    class Pausing(Proto):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if len(self.received) == 1:
                self.transport.pause_reading()

    st, sp = loop.run_until_complete(loop.create_datagram_endpoint(
        lambda: Pausing(loop), local_addr=("127.0.0.1", 0)))
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(10):
        c.sendto(b"%d" % i, st.get_extra_info("sockname"))
    loop.run_until_complete(until(lambda: sp.received))
    loop.run_until_complete(asyncio.sleep(0.05))
    assert [d for d, _ in sp.received] == [b"0"]
    assert not st.is_reading()
    st.resume_reading()
    loop.run_until_complete(until(lambda: len(sp.received) == 10))
    assert [d for d, _ in sp.received] == [b"%d" % i for i in range(10)]
    c.close()
    st.close()
    loop.run_until_complete(sp.done)


def test_close_inside_datagram_received(loop):
    class Closing(Proto):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            self.transport.close()

    st, sp = loop.run_until_complete(loop.create_datagram_endpoint(
        lambda: Closing(loop), local_addr=("127.0.0.1", 0)))
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(10):
        c.sendto(b"%d" % i, st.get_extra_info("sockname"))
    assert loop.run_until_complete(sp.done) is None
    assert [d for d, _ in sp.received] == [b"0"]
    assert sp.events == ["made", "lost"]
    c.close()


def test_protocol_error_keeps_later_datagrams(loop):
    class Raising(Proto):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            raise RuntimeError("boom")

    st, sp = loop.run_until_complete(loop.create_datagram_endpoint(
        lambda: Raising(loop), local_addr=("127.0.0.1", 0)))
    reported = []
    loop.set_exception_handler(lambda lp, ctx: reported.append(ctx))
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(5):
        c.sendto(b"%d" % i, st.get_extra_info("sockname"))
    loop.run_until_complete(until(lambda: len(sp.received) == 5))
    assert [d for d, _ in sp.received] == [b"%d" % i for i in range(5)]
    assert len(reported) == 5
    c.close()
    st.close()
    loop.run_until_complete(sp.done)
