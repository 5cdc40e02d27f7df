#!/usr/bin/env python3
"""Server memory per idle TCP connection, per loop.

    python3 perf/memory.py [--quick] [--loops L,L] [--connections N]
                           [--reps N] [--json PATH] [--markdown PATH]

Each run starts a fresh server process for one loop (pinned to one CPU,
RLIMIT_NOFILE raised to its hard limit): loop.create_server on 127.0.0.1
with an asyncio.Protocol that only counts its connections, plus a control
connection on which the parent asks "tell me when exactly K connections
are open" (the server then runs gc.collect() and answers).  The parent,
another process on the other CPU, is the client:

1. warm-up: opens 100 connections and waits until the server has them;
2. reads the server's resident set size (/proc/PID/statm): the baseline;
3. opens --connections more TCP connections (default 10000, --quick 3000)
   in batches of 1000, waiting for the server to have each batch, and
   sends nothing on any of them;
4. reads the server's RSS again.

The figure is (RSS after - baseline) / connections, the median over the
repetitions (default 5, --quick 2), loops interleaved.  The client closes
its sockets with SO_LINGER 0 (a reset, so no TIME_WAIT piles up).
"""

import argparse
import asyncio
import gc
import json
import os
import resource
import selectors
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from _common import log  # noqa: E402

BATCH = 1000
# Connections opened (and kept) before the baseline: first-use costs
# (freelists, lazily imported code, the selector's first resize) stay out.
WARMUP = 100


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = hard if hard != resource.RLIM_INFINITY else max(want, soft)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new


# -- the server (child side) --------------------------------------------------

class State:
    open = 0
    want = None
    control = None

    @classmethod
    def check(cls):
        if cls.want is not None and cls.open == cls.want and cls.control:
            cls.want = None
            gc.collect()
            cls.control.write(b"ok %d\n" % cls.open)


class Idle(asyncio.Protocol):
    def connection_made(self, transport):
        State.open += 1
        State.check()

    def data_received(self, data):
        pass

    def connection_lost(self, exc):
        State.open -= 1
        State.check()


class Control(asyncio.Protocol):
    def __init__(self):
        self.buf = b""

    def connection_made(self, transport):
        State.control = transport

    def data_received(self, data):
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            State.want = int(line.split()[1])  # "wait K"
            State.check()

    def connection_lost(self, exc):
        asyncio.get_event_loop().stop()


def server(loop_name, cpu):
    os.sched_setaffinity(0, {cpu})
    try:
        nofile = raise_nofile(0)
        loop = _common.new_loop(loop_name)
        asyncio.set_event_loop(loop)
        srv = loop.run_until_complete(
            loop.create_server(Idle, "127.0.0.1", 0, backlog=4096))
        ctl = loop.run_until_complete(
            loop.create_server(Control, "127.0.0.1", 0))
    except BaseException as e:  # noqa: BLE001
        _common.emit({"status": "error", "error": _common.first_line(e)})
        return 0
    _common.emit({"status": "ok", "port": srv.sockets[0].getsockname()[1],
                  "control": ctl.sockets[0].getsockname()[1],
                  "nofile": nofile})
    loop.run_forever()
    return 0


# -- the client (parent side) -------------------------------------------------

class Server:
    def __init__(self, loop, cpu, timeout):
        self.timeout = timeout
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--server", loop,
             str(cpu)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True, env=_common.child_env())
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout)
        sel.close()
        line = self.proc.stdout.readline() if ready else ""
        doc = json.loads(line) if line.startswith("{") else None
        if not doc or doc.get("status") != "ok":
            self.stop()
            why = (doc or {}).get("error")
            if not why:
                tail = self.proc.stderr.read().strip().splitlines()
                why = tail[-1] if tail else "no port"
            raise RuntimeError(why)
        self.port = doc["port"]
        self.nofile = doc["nofile"]
        self.ctl = socket.create_connection(("127.0.0.1", doc["control"]),
                                            timeout=timeout)
        self.ctl_file = self.ctl.makefile("rb")

    def wait_open(self, k):
        """Until the server holds exactly k idle connections."""
        self.ctl.sendall(b"wait %d\n" % k)
        try:
            line = self.ctl_file.readline()
        except socket.timeout:
            raise RuntimeError(f"server did not reach {k} connections in "
                               f"{self.timeout:g} s") from None
        if not line.startswith(b"ok"):
            raise RuntimeError(f"server exited (status {self.proc.poll()})")

    def rss(self):
        return _common.rss_bytes(self.proc.pid)

    def stop(self):
        if getattr(self, "ctl", None):
            self.ctl_file.close()
            self.ctl.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


LINGER0 = struct.pack("ii", 1, 0)


def open_conns(port, n, conns):
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        conns.append(s)  # closed by the caller, even if connect fails
        s.connect(("127.0.0.1", port))


def close_conns(conns):
    for s in conns:
        s.close()
    conns.clear()


def one_run(loop, n, cpu, timeout):
    srv = Server(loop, cpu, timeout)
    conns = []
    try:
        if srv.nofile < n + WARMUP + 50:
            raise RuntimeError(f"server RLIMIT_NOFILE {srv.nofile} < {n}")
        open_conns(srv.port, WARMUP, conns)
        srv.wait_open(WARMUP)
        base = srv.rss()
        t0 = time.monotonic()
        while len(conns) < WARMUP + n:
            open_conns(srv.port, min(BATCH, WARMUP + n - len(conns)), conns)
            srv.wait_open(len(conns))
        took = time.monotonic() - t0
        after = srv.rss()
        return {"per_conn": (after - base) / n, "rss_base": base,
                "rss_after": after, "connect_s": took}
    finally:
        close_conns(conns)
        srv.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="3000 connections, 2 repetitions")
    ap.add_argument("--connections", type=int,
                    help="idle connections (default 10000, --quick 3000)")
    ap.add_argument("--reps", type=int, help="default 5, --quick 2")
    ap.add_argument("--loops", default=",".join(_common.LOOPS))
    ap.add_argument("--bench", help="idle_conn (the only one)")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--markdown", metavar="PATH")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--server", nargs=2, metavar=("LOOP", "CPU"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.server:
        return server(args.server[0], int(args.server[1]))
    try:
        loops = _common.parse_names(args.loops, _common.LOOPS, "loop")
        if args.bench:
            _common.parse_names(args.bench, ("idle_conn",), "benchmark")
    except ValueError as e:
        ap.error(str(e))
    n = args.connections or (3000 if args.quick else 10000)
    reps = args.reps or (2 if args.quick else 5)

    started = time.monotonic()
    srv_cpu, client_cpu = _common.two_cpus()
    os.sched_setaffinity(0, {client_cpu})
    nofile = raise_nofile(n + WARMUP + 50)
    if nofile < n + WARMUP + 50:
        n = nofile - WARMUP - 50
        log(f"RLIMIT_NOFILE hard limit {nofile}: only {n} connections")
    meta = _common.machine_meta(srv_cpu)
    meta["client_cpu"] = client_cpu
    log(f"server on CPU {srv_cpu}, client on CPU {client_cpu}; {n} "
        f"connections, {reps} repetitions")
    descs, unavailable = _common.probe_loops(loops)
    live = [l for l in loops if l in descs]
    cells = {l: {"values": [], "error": unavailable.get(l),
                 "extra": {"runs": []}} for l in loops}
    for rep in range(reps):
        order = live[rep % len(live):] + live[:rep % len(live)] if live else []
        for l in order:
            cell = cells[l]
            if cell["error"]:
                continue
            log(f"[{time.monotonic() - started:6.1f} s] idle_conn: {l} rep "
                f"{rep + 1}/{reps} ({_common.count_label(n)} connections)")
            try:
                res = one_run(l, n, srv_cpu, args.timeout)
            except (RuntimeError, OSError) as e:
                cell["error"] = _common.first_line(e)
                log(f"    failed: {cell['error']} (no more runs of this cell)")
                continue
            log(f"    {res['per_conn']:.0f} B per connection (RSS "
                f"{res['rss_base'] / 2**20:.1f} -> "
                f"{res['rss_after'] / 2**20:.1f} MiB, connected in "
                f"{res['connect_s']:.2f} s)")
            cell["values"].append(res["per_conn"])
            cell["extra"]["runs"].append(res)
    row = _common.make_row(
        "idle_conn", f"server RSS per idle TCP connection "
        f"({_common.count_label(n)} connections)", "rss_bytes_per_conn",
        "B", "lower", cells, ("<=", 0.7))
    elapsed = time.monotonic() - started
    doc = {"suite": "memory", "meta": meta, "loops": descs,
           "unavailable": unavailable, "rows": [row], "connections": n,
           "reps": reps, "quick": args.quick, "elapsed_s": elapsed}
    text = _common.contract_markdown(
        "Memory per idle connection", doc,
        [f"(server RSS with {WARMUP} + {n} idle connections - RSS with "
         f"{WARMUP}) / {n}; medians of "
         f"{reps} runs, a fresh server each, loops interleaved; server on "
         f"CPU {srv_cpu}, the client process on CPU {client_cpu}.  Took "
         f"{elapsed:.0f} s."])
    _common.publish(args, text, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
