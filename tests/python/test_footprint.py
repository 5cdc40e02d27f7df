"""What `import qloop` and an idle connection cost, as behaviour (which
modules are loaded, which objects a transport holds), not as timings.

The machinery of datagrams, pipes, subprocesses and the diagnostics'
library-path table is imported on first use: `import qloop` should cost
about what `import asyncio` does.  These tests keep that from regressing
silently.
"""

import json

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
