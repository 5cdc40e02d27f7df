#!/usr/bin/env python3
"""HTTP/1.1 servers under wrk: the same server code on every loop.

The body of the suite perf/http.py (which is only a shim; see there).

    python3 perf/http.py [--quick] [--loops L,L] [--bench B,B] [--reps N]
                         [--duration S] [--connections N]
                         [--json PATH] [--markdown PATH]

Benchmarks:
- httptools: a keep-alive HTTP/1.1 server written on asyncio.Protocol with
  httptools.HttpRequestParser, answering every request with a fixed
  13-byte "Hello, World!" (what uvloop's own HTTP benchmark does).
- aiohttp: aiohttp.web with one GET handler returning web.Response(text=
  "Hello, World!"), no access log.

Each loop's server runs in its own process pinned to one CPU; wrk (one
thread, --connections keep-alive connections) is pinned to the other.  The
servers of all loops are started first and warmed up (--warmup seconds of
wrk each, concurrently); then every repetition runs wrk for --duration
seconds against each server in turn, the order rotating run by run.  For
every run: requests/s and the p50/p99 latency wrk reports, and the CPU time
(user + system, all threads) the server process used over the run divided
by the requests completed.  On a 2-core machine wrk itself can be the
bottleneck, so that the requests/s of a fast server mostly measure wrk:
server CPU per request is the figure that compares the loops.

The user-space part of that CPU (the clock-tick user time over the run,
per request) is reported too: over loopback most of a server's CPU is the
kernel's (send() also runs the receive path of wrk's socket, in softirq,
on the server's CPU), the same for every loop, and that bounds how far
apart the loops' totals can be.
"""

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from _common import log  # noqa: E402

BENCHES = ("httptools", "aiohttp")
# server CPU per request: (op, max qloop/uvloop)
TARGETS = {"httptools": ("<=", 0.85)}
CONNECTIONS = 50  # wrk's keep-alive connections
BODY = b"Hello, World!"
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
RESPONSE_CLOSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                  b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
                  % (len(BODY), BODY))


# -- the servers (child side) -------------------------------------------------

class HttpProtocol(asyncio.Protocol):
    """Keep-alive HTTP/1.1 on httptools; pipelined requests are answered
    in order, as they complete."""

    def __init__(self, httptools):
        self.httptools = httptools
        self.transport = None
        self.parser = None

    def connection_made(self, transport):
        self.transport = transport
        self.parser = self.httptools.HttpRequestParser(self)

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except self.httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\n"
                                 b"Content-Length: 0\r\n\r\n")
            self.transport.close()

    def on_message_complete(self):
        if self.parser.should_keep_alive():
            self.transport.write(RESPONSE)
        else:
            self.transport.write(RESPONSE_CLOSE)
            self.transport.close()

    def connection_lost(self, exc):
        self.transport = self.parser = None


async def start_httptools():
    import httptools
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpProtocol(httptools),
                                      "127.0.0.1", 0, backlog=1024)
    return server.sockets[0].getsockname()[1]


async def start_aiohttp():
    from aiohttp import web

    async def hello(request):
        return web.Response(text="Hello, World!")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    return runner.addresses[0][1]


def server(loop_name, kind, cpu):
    """Child: serve until killed; the first stdout line says the port."""
    os.sched_setaffinity(0, {cpu})
    try:
        loop = _common.new_loop(loop_name)
        asyncio.set_event_loop(loop)
        start = start_httptools if kind == "httptools" else start_aiohttp
        port = loop.run_until_complete(start())
    except BaseException as e:  # noqa: BLE001 - reported, not raised
        _common.emit({"status": "error", "error": _common.first_line(e)})
        return 0
    _common.emit({"status": "ok", "port": port, "pid": os.getpid()})
    loop.run_forever()
    return 0


# -- the parent ---------------------------------------------------------------

def start_server(loop, kind, cpu, timeout=60.0):
    """(Popen, port) or (None, reason)."""
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--server", loop, kind,
         str(cpu)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, text=True, env=_common.child_env())
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    ready = sel.select(timeout)
    sel.close()
    line = proc.stdout.readline() if ready else ""
    doc = None
    if line.startswith("{"):
        import json
        doc = json.loads(line)
    if not doc or doc.get("status") != "ok":
        stop_server(proc)
        why = (doc or {}).get("error")
        if not why:
            tail = proc.stderr.read().strip().splitlines()
            why = tail[-1] if tail else ("no port after %gs" % timeout
                                         if not ready else "exited")
        return None, why
    return proc, doc["port"]


def stop_server(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait()


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def parse_wrk(out):
    """requests, seconds, req/s, p50 and p99 in ms, errors text or None."""
    res = {}
    m = re.search(r"(\d+) requests in ([0-9.]+)(us|ms|s|m)", out)
    if m:
        res["requests"] = int(m.group(1))
        res["seconds"] = float(m.group(2)) * UNITS[m.group(3)] / 1e3
    m = re.search(r"Requests/sec:\s*([0-9.]+)", out)
    if m:
        res["rps"] = float(m.group(1))
    for pct in ("50", "99"):
        m = re.search(r"^\s*%s(?:\.0+)?%%\s+(\S+)" % pct, out, re.M)
        if m:
            res[f"p{pct}_ms"] = parse_ms(m.group(1))
    errors = []
    m = re.search(r"Socket errors: (.*)", out)
    if m:
        errors.append("socket errors: " + m.group(1).strip())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors.append(f"{m.group(1)} non-2xx/3xx responses")
    res["errors"] = "; ".join(errors) or None
    return res


def wrk_cmd(port, duration, connections, cpu):
    return ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}",
            f"-d{duration}s", "--latency", f"http://127.0.0.1:{port}/"]


def run_wrk(proc, port, duration, connections, cpu):
    """One measured run: a dict of figures, or raises RuntimeError."""
    if proc.poll() is not None:
        raise RuntimeError(f"server exited with status {proc.returncode}")
    cpu0 = _common.proc_cpu_seconds(proc.pid)
    user0, _ = _common.proc_user_system_seconds(proc.pid)
    r = subprocess.run(wrk_cmd(port, duration, connections, cpu),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=duration + 30)
    cpu1 = _common.proc_cpu_seconds(proc.pid)
    user1, _ = _common.proc_user_system_seconds(proc.pid)
    if proc.poll() is not None:
        raise RuntimeError(f"server exited with status {proc.returncode}")
    res = parse_wrk(r.stdout)
    if r.returncode != 0 or "requests" not in res or not res["requests"]:
        tail = r.stdout.strip().splitlines()
        raise RuntimeError("wrk: " + (tail[-1] if tail else
                                      f"exit status {r.returncode}"))
    if res["errors"] and "non-2xx" in res["errors"]:
        raise RuntimeError(res["errors"])
    res["server_cpu_s"] = cpu1 - cpu0
    res["cpu_us_per_req"] = (cpu1 - cpu0) / res["requests"] * 1e6
    res["user_us_per_req"] = (user1 - user0) / res["requests"] * 1e6
    return res


def run_bench(kind, loops, reps, duration, warmup, connections, cpus,
              started, measure=run_wrk):
    """{loop: {"runs": [...], "error": str or None}} for one server kind.
    `measure` replaces run_wrk for the measured runs, with its arguments
    (perf/floor.py profiles the server during them)."""
    srv_cpu, wrk_cpu = cpus
    cells = {l: {"runs": [], "error": None} for l in loops}
    servers = {}
    for l in loops:
        proc, port = start_server(l, kind, srv_cpu)
        if proc is None:
            cells[l]["error"] = port
            log(f"    {kind}: {l} server did not start: {port}")
        else:
            servers[l] = (proc, port)
    try:
        if warmup and servers:
            log(f"[{time.monotonic() - started:6.1f} s] {kind}: warm-up, "
                f"{warmup} s of wrk against each server at once")
            warm = [subprocess.Popen(wrk_cmd(port, warmup, connections,
                                             wrk_cpu),
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
                    for proc, port in servers.values()]
            for w in warm:
                w.wait()
        live = [l for l in loops if l in servers]
        for rep in range(reps):
            order = live[rep % len(live):] + live[:rep % len(live)] \
                if live else []
            for l in order:
                cell = cells[l]
                if cell["error"]:
                    continue
                log(f"[{time.monotonic() - started:6.1f} s] {kind}: {l} "
                    f"rep {rep + 1}/{reps} ({duration} s of wrk, "
                    f"{connections} connections)")
                proc, port = servers[l]
                try:
                    res = measure(proc, port, duration, connections, wrk_cpu)
                except (RuntimeError, subprocess.TimeoutExpired,
                        OSError) as e:
                    cell["error"] = _common.first_line(e)
                    log(f"    failed: {cell['error']} (no more runs of this "
                        "cell)")
                    continue
                log(f"    {res['rps']:.0f} req/s, p50 {res.get('p50_ms')} ms, "
                    f"p99 {res.get('p99_ms')} ms, server "
                    f"{res['cpu_us_per_req']:.1f} µs CPU/req")
                cell["runs"].append(res)
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    return cells


def missing_tools(benches):
    """{benchmark: why it cannot run} for those of `benches` whose tools
    (wrk, the server's Python package) are missing."""
    if not shutil.which("wrk"):
        return {b: "wrk is not installed" for b in benches}
    missing = {}
    for b in benches:
        r = subprocess.run([sys.executable, "-c", f"import {b}"],
                           stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            missing[b] = f"{b} is not installed"
    return missing


def rows_of(kind, cells, unavailable):
    label = {"httptools": "httptools server on asyncio.Protocol",
             "aiohttp": "aiohttp.web, one GET handler"}[kind]

    def pick(key):
        out = {}
        for l, c in cells.items():
            vals = [r[key] for r in c["runs"] if r.get(key) is not None]
            out[l] = {"values": vals, "error": c["error"] or
                      unavailable.get(l), "extra": {}}
        return out

    cpu = pick("cpu_us_per_req")
    for l, c in cells.items():
        runs = c["runs"]
        cpu[l]["extra"] = {
            "requests": [r["requests"] for r in runs],
            "rps": [r["rps"] for r in runs],
            "p50_ms": [r.get("p50_ms") for r in runs],
            "p99_ms": [r.get("p99_ms") for r in runs],
            "server_cpu_s": [r["server_cpu_s"] for r in runs],
            "socket_errors": [r["errors"] for r in runs if r["errors"]]}
    return [
        _common.make_row(f"{kind}_cpu", f"{label}: server CPU per request",
                         "server_cpu_us_per_req", "µs/req", "lower", cpu,
                         TARGETS.get(kind)),
        _common.make_row(f"{kind}_user_cpu",
                         f"{label}: server user-space CPU per request "
                         "(the rest is the kernel's)",
                         "server_user_us_per_req", "µs/req", "lower",
                         pick("user_us_per_req")),
        _common.make_row(f"{kind}_rps", f"{label}: requests/s (wrk)",
                         "requests_per_s", "req/s", "higher", pick("rps")),
        _common.make_row(f"{kind}_p50", f"{label}: latency p50 (wrk)",
                         "latency_p50_ms", "ms", "lower", pick("p50_ms")),
        _common.make_row(f"{kind}_p99", f"{label}: latency p99 (wrk)",
                         "latency_p99_ms", "ms", "lower", pick("p99_ms")),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="2 repetitions of 1 s, 1 s warm-up")
    ap.add_argument("--reps", type=int, help="default 5, --quick 2")
    ap.add_argument("--duration", type=int,
                    help="seconds of wrk per run (default 5, --quick 1)")
    ap.add_argument("--warmup", type=int,
                    help="seconds of warm-up (default 2, --quick 1)")
    ap.add_argument("--connections", type=int, default=CONNECTIONS)
    ap.add_argument("--loops", default=",".join(_common.STREAM_LOOPS))
    ap.add_argument("--bench", help="comma-separated, from " +
                    ",".join(BENCHES))
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--markdown", metavar="PATH")
    ap.add_argument("--server", nargs=3, metavar=("LOOP", "KIND", "CPU"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.server:
        loop, kind, cpu = args.server
        return server(loop, kind, int(cpu))
    try:
        loops = _common.parse_names(args.loops, _common.STREAM_LOOPS, "loop")
        benches = _common.parse_names(args.bench, BENCHES, "benchmark") \
            if args.bench else list(BENCHES)
    except ValueError as e:
        ap.error(str(e))
    reps = args.reps or (2 if args.quick else 5)
    duration = args.duration or (1 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else \
        (1 if args.quick else 2)

    started = time.monotonic()
    cpus = _common.two_cpus()
    os.sched_setaffinity(0, {cpus[1]})  # the parent sits with wrk
    meta = _common.machine_meta(cpus[0])
    meta["wrk_cpu"] = cpus[1]
    log(f"servers on CPU {cpus[0]}, wrk on CPU {cpus[1]}; {reps} "
        f"repetitions of {duration} s")
    descs, unavailable = _common.probe_loops(loops)
    bench_unavailable = missing_tools(benches)
    rows = []
    for b in benches:
        live = [l for l in loops if l in descs]
        if b in bench_unavailable:
            log(f"{b}: n/a, {bench_unavailable[b]}")
            cells = {l: {"runs": [], "error": bench_unavailable[b]}
                     for l in loops}
        else:
            cells = run_bench(b, live, reps, duration, warmup,
                              args.connections, cpus, started)
            for l in loops:
                cells.setdefault(l, {"runs": [], "error": None})
        rows += rows_of(b, cells, unavailable)

    elapsed = time.monotonic() - started
    doc = {"suite": "http", "meta": meta, "loops": descs,
           "unavailable": unavailable, "rows": rows, "reps": reps,
           "duration_s": duration, "warmup_s": warmup,
           "connections": args.connections, "quick": args.quick,
           "elapsed_s": elapsed}
    text = _common.contract_markdown(
        "HTTP servers under wrk", doc,
        [f"Medians of {reps} runs of {duration} s of wrk (1 thread, "
         f"{args.connections} keep-alive connections, pinned to CPU "
         f"{cpus[1]}) per cell, servers pinned to CPU {cpus[0]}, loops "
         f"interleaved, after {warmup} s of warm-up; server CPU is user + "
         "system time of the server process over each run divided by the "
         f"requests it completed.  Took {elapsed:.0f} s."])
    _common.publish(args, text, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
