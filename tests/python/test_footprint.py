"""What `import qloop` and an idle connection cost, as behaviour (which
modules are loaded, which objects a transport holds), not as timings.

The machinery of datagrams, pipes, subprocesses and the diagnostics'
library-path table is imported on first use: `import qloop` should cost
about what `import asyncio` does.  These tests keep that from regressing
silently.
"""

import asyncio
import gc
import json
import socket

import pytest

from conftest import run_python

# Imported on first use only (qloop's own, and what only they need).
LAZY = ("qloop._datagram", "qloop._pipes", "qloop._subprocess", "sysconfig")

CENSUS = """
import asyncio, json, sys
before = set(sys.modules)
import qloop
after_import = sorted(set(sys.modules) - before)
{body}
print(json.dumps({{"import": after_import,
                  "run": sorted(set(sys.modules) - before)}}))
"""


def new_modules(body="pass"):
    r = run_python(CENSUS.format(body=body))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_import_loads_no_lazy_module():
    mods = new_modules()
    for name in LAZY:
        assert name not in mods["import"], mods["import"]
    # What it does load: the package, the loop and the stream transport.
    for name in ("qloop._qloop", "qloop._loop", "qloop._transport"):
        assert name in mods["import"]


def test_running_a_loop_and_tcp_load_no_lazy_module():
    # Creating and running a loop, with a TCP connection, needs none of them.
    mods = new_modules("""
async def main():
    async def echo(r, w):
        w.write(await r.read(100))
        await w.drain()
        w.close()
    srv = await asyncio.start_server(echo, "127.0.0.1", 0)
    r, w = await asyncio.open_connection(*srv.sockets[0].getsockname())
    w.write(b"hi")
    assert await r.read(100) == b"hi"
    w.close()
    srv.close()
    await srv.wait_closed()
qloop.run(main())
""")
    for name in LAZY:
        assert name not in mods["run"], mods["run"]


@pytest.mark.parametrize("use, module", [
    ("""
async def main():
    loop = asyncio.get_running_loop()
    t, p = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    t.close()
qloop.run(main())
""", "qloop._datagram"),
    ("""
async def main():
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "pass", stdout=asyncio.subprocess.PIPE)
    await p.communicate()
    assert p.returncode == 0
qloop.run(main())
""", "qloop._subprocess"),
    ("""
import os
async def main():
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    t, p = await loop.connect_read_pipe(asyncio.Protocol, os.fdopen(r, "rb"))
    t.close()
    os.close(w)
qloop.run(main())
""", "qloop._pipes"),
    ("""
from qloop import _diagnostics
assert not _diagnostics._is_library("/nowhere/user.py")
assert _diagnostics._is_library(asyncio.__file__)
""", "sysconfig"),
], ids=["datagram", "subprocess", "pipes", "diagnostics"])
def test_first_use_imports_it(use, module):
    mods = new_modules(use)
    assert module not in mods["import"]
    assert module in mods["run"], mods["run"]


# -- what an idle connection holds --------------------------------------------

class _Rec(asyncio.Protocol):
    def __init__(self):
        self.transport = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.lost.set_result(exc)


async def _accepted_pair(loop, n=1):
    """A server, n client transports and the n transports it accepted."""
    accepted = []

    def factory():
        p = _Rec()
        accepted.append(p)
        return p

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clients = [await loop.create_connection(_Rec, "127.0.0.1", port)
               for _ in range(n)]
    while len(accepted) < n or any(p.transport is None for p in accepted):
        await asyncio.sleep(0.001)
    return server, clients, accepted


def test_extra_info_as_asyncio_before_and_after_close(loop):
    # The extra info of both ends, asked for the first time before and
    # after the connection is lost, is asyncio's.
    async def main():
        server, [(ctr, cpr)], [spr] = await _accepted_pair(loop)
        str_ = spr.transport
        port = server.sockets[0].getsockname()[1]
        assert str_.get_extra_info("sockname") == ("127.0.0.1", port)
        assert ctr.get_extra_info("peername") == ("127.0.0.1", port)
        assert str_.get_extra_info("peername") == \
            ctr.get_extra_info("sockname")
        assert str_.get_extra_info("nothing", 42) == 42
        assert str_.get_extra_info("nothing") is None
        tsock = ctr.get_extra_info("socket")
        assert isinstance(tsock, asyncio.trsock.TransportSocket)
        assert tsock.getpeername() == ("127.0.0.1", port)
        assert ctr.get_extra_info("socket") is tsock
        # asyncio's dict and key order: the accept path's extra first.
        assert list(ctr._extra) == ["socket", "sockname", "peername"]
        assert list(str_._extra) == ["peername", "socket", "sockname"]
        assert str_._extra["socket"] is str_.get_extra_info("socket")
        # A transport closed before anyone asked for its socket.
        server2, [(ctr2, cpr2)], [spr2] = await _accepted_pair(loop)
        str2 = spr2.transport
        peername = str2.get_extra_info("peername")
        ctr2.close()
        await spr2.lost
        await cpr2.lost
        tsock2 = str2.get_extra_info("socket")
        assert isinstance(tsock2, asyncio.trsock.TransportSocket)
        assert tsock2.fileno() == -1
        assert str2.get_extra_info("peername") == peername
        assert str2.get_extra_info("sockname") == \
            server2.sockets[0].getsockname()
        assert list(str2._extra) == ["peername", "socket", "sockname"]
        for t in (ctr, str_):
            t.close()
        await spr.lost
        for s in (server, server2):
            s.close()
            await s.wait_closed()

    loop.run_until_complete(asyncio.wait_for(main(), 10))


def test_extra_info_with_callers_extra(loop):
    # A caller's extra beyond peername (connect_accepted_socket & co. pass
    # none today, but _make_socket_transport takes one) is kept.
    async def main():
        server, [(ctr, cpr)], [spr] = await _accepted_pair(loop)
        a, b = socket.socketpair()
        try:
            tr = loop._make_socket_transport(
                a, asyncio.Protocol(), extra={"mine": 1})
            await asyncio.sleep(0)
            assert tr.get_extra_info("mine") == 1
            assert tr.get_extra_info("socket").fileno() == a.fileno()
            assert "sockname" in tr._extra and "peername" in tr._extra
            tr.close()
            await asyncio.sleep(0.01)
        finally:
            b.close()
        ctr.close()
        await spr.lost
        server.close()
        await server.wait_closed()

    loop.run_until_complete(asyncio.wait_for(main(), 10))


def test_idle_transport_holds_no_extra_dict(qloop_loop):
    # An idle accepted connection holds no extra-info dict and no socket
    # wrapper until someone asks for one, and the connections of one server
    # share one sockname tuple and one peer-host string.
    loop = qloop_loop

    async def main():
        server, clients, accepted = await _accepted_pair(loop, 3)
        trs = [p.transport for p in accepted]
        for tr in trs:
            refs = gc.get_referents(tr)
            assert not any(isinstance(o, dict) for o in refs), refs
            assert not any(isinstance(o, asyncio.trsock.TransportSocket)
                           for o in refs), refs
        names = [tr.get_extra_info("sockname") for tr in trs]
        assert names[0] is names[1] is names[2]
        peers = [tr.get_extra_info("peername") for tr in trs]
        assert peers[0][0] is peers[1][0] is peers[2][0]
        assert len({p[1] for p in peers}) == 3
        # Asking for these did not make the dict either.
        assert not any(isinstance(o, dict) for o in gc.get_referents(trs[0]))
        for ctr, _ in clients:
            ctr.close()
        for p in accepted:
            await p.lost
        server.close()
        await server.wait_closed()

    loop.run_until_complete(asyncio.wait_for(main(), 10))
