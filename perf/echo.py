#!/usr/bin/env python3
"""Echo benchmarks: TCP echo servers on qloop, uvloop, rloop and asyncio.

    python3 perf/echo.py [--quick] [--reps N] [--loops L,L] [--bench B,B]
                         [--json PATH] [--markdown PATH]
                         [--server-cpu N] [--load-cpu N]

qloop is imported as `qloop`: put a build on PYTHONPATH (a release build:
PYTHONPATH=build/release/inplace) or install it.

The servers, one per (loop, style), each in a fresh process pinned to one
CPU, all the same Python code whatever the loop:
  protocol  asyncio.Protocol, data_received -> transport.write
  buffered  asyncio.BufferedProtocol into a 256 KiB bytearray,
            buffer_updated(n) -> transport.write(buf[:n])
  streams   asyncio.start_server, reader.read(256 KiB) -> writer.write,
            await writer.drain()
  sock      loop.sock_accept, then per connection loop.sock_recv(256 KiB)
            -> await loop.sock_sendall
and, as the machine's ceiling, perf/c/echo_server.c: plain C on epoll.

The load comes from perf/c/echo_load.c (C, epoll, one thread), pinned to
the other CPU: 10 connections, each sending a message of 1, 10 or 100 KiB
and waiting for the whole echo before sending the next, after a warm-up,
for a fixed window.  It checks every byte echoed (each message is a window
into one pattern at an offset that changes per request and connection); a
wrong, missing or extra byte makes the cell an error, not a number.  It
records each request's latency in a log-linear histogram (64 sub-buckets
per octave) and reads the server's CPU time, user + system, from
/proc/PID/task/*/schedstat (nanoseconds; utime + stime ticks of
/proc/PID/stat where schedstat is missing) at the two ends of the window:
so the server's CPU per request holds whether the server or the load
generator is the bottleneck.  On loopback the kernel runs the receive path
of a segment in the sender's context, so the server's figure includes part
of TCP's work for the generator's socket (and the other way round): the same
for every server, the pure-C one included, which is why it is the ceiling.
The generator also reports the server's minor page faults over the window.

Every server process is probed with 20 requests of 100 KiB on 2
connections before its measured runs (1, 10, then 100 KiB, in one process):
a loop that cannot run a style (set-up raises, or the probe fails) is n/a
for it, with the reason.

A benchmark reports numbers, it does not judge: the exit status is 0 when
a target is missed or a cell fails, and non-zero only on an internal error.
"""

import argparse
import asyncio
import json
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from _common import log  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS_SRC = os.path.join(ROOT, "perf", "c")
TOOLS_DIR = os.path.join(ROOT, "build", "echo-tools")

STYLES = ("protocol", "buffered", "streams", "sock")
STYLE_LABELS = {
    "protocol": "asyncio.Protocol",
    "buffered": "asyncio.BufferedProtocol",
    "streams": "streams (start_server)",
    "sock": "sock_accept/sock_recv/sock_sendall",
}
SIZES = {"1k": 1024, "10k": 10 * 1024, "100k": 100 * 1024}
CONNS = 10
READ_SIZE = 256 * 1024
C_SERVER = "c"  # the pure-C server's key in results

# (style, size) -> (max qloop/uvloop, max qloop/C server or None)
TARGETS = {}
for _size in SIZES:
    TARGETS[("streams", _size)] = (0.85, None)
    TARGETS[("sock", _size)] = (0.5, None)
for _style in ("protocol", "buffered"):
    TARGETS[(_style, "100k")] = (1.0, None)
TARGETS[("protocol", "1k")] = (0.9, 1.15)
# streams and sock at 100 KiB also have "no worse than uvloop" (1.0): their
# own, stricter, target covers it.

CLOCK_TEXT = {
    "schedstat": "ns from /proc/PID/task/*/schedstat",
    "stat_ticks": "utime + stime of /proc/PID/stat, 10 ms ticks",
}

PROBE = ["--requests", "20", "--conns", "2", "--size", str(100 * 1024),
         "--timeout", "5"]


def bench_id(style, size):
    return f"{style}_{size}"


# -- the servers (child side) -------------------------------------------------

class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = bytearray(READ_SIZE)

    def get_buffer(self, sizehint):
        return self.buffer

    def buffer_updated(self, nbytes):
        # A copy: the transport may keep what the socket did not take,
        # and the next read reuses the buffer.
        self.transport.write(self.buffer[:nbytes])


async def serve_protocol(loop, lsock, errors):
    return await loop.create_server(EchoProtocol, sock=lsock)


async def serve_buffered(loop, lsock, errors):
    return await loop.create_server(EchoBufferedProtocol, sock=lsock)


async def serve_streams(loop, lsock, errors):
    async def handle(reader, writer):
        try:
            read, write, drain = reader.read, writer.write, writer.drain
            while True:
                data = await read(READ_SIZE)
                if not data:
                    break
                write(data)
                await drain()
            writer.close()
        except Exception as e:  # noqa: BLE001 - reported by the parent
            errors.append("streams handler: " + _common.first_line(e))

    return await asyncio.start_server(handle, sock=lsock)


class SockServer:
    """sock_accept + one task per connection; close() like a Server's."""

    def __init__(self, loop, lsock, errors):
        self.loop, self.lsock, self.errors = loop, lsock, errors
        self.tasks = set()
        self.acceptor = loop.create_task(self.accept())

    async def accept(self):
        loop = self.loop
        while True:
            conn, _ = await loop.sock_accept(self.lsock)
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(self.echo(conn))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def echo(self, conn):
        loop = self.loop
        recv, sendall = loop.sock_recv, loop.sock_sendall
        try:
            with conn:
                while True:
                    data = await recv(conn, READ_SIZE)
                    if not data:
                        break
                    await sendall(conn, data)
        except Exception as e:  # noqa: BLE001 - reported by the parent
            self.errors.append("sock echo: " + _common.first_line(e))

    def close(self):
        self.acceptor.cancel()
        for task in self.tasks:
            task.cancel()
        self.lsock.close()

    async def wait_closed(self):
        await asyncio.gather(self.acceptor, *self.tasks,
                             return_exceptions=True)


async def serve_sock(loop, lsock, errors):
    server = SockServer(loop, lsock, errors)
    await asyncio.sleep(0)  # the acceptor is waiting: sock_accept works
    if server.acceptor.done():
        server.acceptor.result()  # raises what sock_accept raised
    return server


SERVE = {"protocol": serve_protocol, "buffered": serve_buffered,
         "streams": serve_streams, "sock": serve_sock}


def context_text(ctx):
    exc = ctx.get("exception")
    msg = ctx.get("message", "error")
    return f"{msg}: {_common.first_line(exc)}" if exc is not None else msg


def server_main(loop_name, style):
    """Serve until stdin reaches EOF; print "PORT n" once listening, and a
    JSON result line at the end."""
    try:
        loop = _common.new_loop(loop_name)
    except BaseException as e:  # noqa: BLE001 - any import failure
        _common.emit({"status": "unavailable", "error": _common.first_line(e)})
        return 0
    errors = []
    loop.set_exception_handler(
        lambda _loop, ctx: errors.append(context_text(ctx)))
    asyncio.set_event_loop(loop)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    lsock.setblocking(False)
    port = lsock.getsockname()[1]
    try:
        server = loop.run_until_complete(SERVE[style](loop, lsock, errors))
    except BaseException as e:  # noqa: BLE001 - the style is not supported
        _common.emit({"status": "unsupported",
                      "error": f"{style} set-up: {_common.first_line(e)}"})
        return 0
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()

    done = loop.create_future()

    def set_done():
        if not done.done():
            done.set_result(None)

    def wait_stdin():
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(set_done)

    threading.Thread(target=wait_stdin, daemon=True).start()
    try:
        loop.run_until_complete(done)
        server.close()
        loop.run_until_complete(
            asyncio.wait_for(server.wait_closed(), timeout=5))
    except BaseException as e:  # noqa: BLE001
        errors.append("shutdown: " + _common.first_line(e))
    finally:
        try:
            loop.close()
        except Exception as e:  # noqa: BLE001
            errors.append("close: " + _common.first_line(e))
    _common.emit({"status": "ok", "n_errors": len(errors),
                  "errors": errors[:5]})
    return 0


# -- the C tools --------------------------------------------------------------

def build_tools(out_dir=TOOLS_DIR):
    """Compile echo_load and echo_server with cc -O2 when missing or older
    than their source; return {name: path}."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (cc or gcc) on PATH")
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    for name in ("echo_load", "echo_server"):
        src = os.path.join(TOOLS_SRC, name + ".c")
        exe = os.path.join(out_dir, name)
        if (not os.path.exists(exe) or
                os.path.getmtime(exe) < os.path.getmtime(src)):
            tmp = f"{exe}.tmp{os.getpid()}"
            r = subprocess.run([cc, "-O2", "-Wall", "-o", tmp, src],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env)
            if r.returncode != 0:
                raise RuntimeError(f"compiling {name}.c failed:\n{r.stdout}")
            os.replace(tmp, exe)  # atomic: a concurrent build is harmless
        paths[name] = exe
    return paths


def tool_env():
    env = _common.child_env()
    env.pop("LD_PRELOAD", None)
    return env


# -- the parent ---------------------------------------------------------------

class Session:
    """One server process: start it pinned, read its port, stop it."""

    def __init__(self, cmd, cpu, env):
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.stderr, env=env)
        try:
            os.sched_setaffinity(self.proc.pid, {cpu})
        except OSError:
            pass  # it exited already: start() says why
        self.port = None

    def start(self, timeout):
        """The port, or raise RuntimeError with the reason."""
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.kill()
                raise RuntimeError(f"no port within {timeout:g} s")
            chunk = os.read(fd, 1)
            if not chunk:
                break
            line += chunk
        if line.startswith(b"PORT "):
            self.port = int(line.split()[1])
            return self.port
        doc, why = self.finish(timeout, first=line)
        raise RuntimeError((doc or {}).get("error") or why or "no port")

    def finish(self, timeout, first=b""):
        """Close stdin, wait; (result dict or None, reason or None)."""
        try:  # closes stdin: the server's signal to stop
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None, f"did not stop within {timeout:g} s"
        text = (first + out).decode(errors="replace")
        doc = None
        for line in reversed(text.splitlines()):
            if line.startswith("{"):
                try:
                    doc = json.loads(line)
                except ValueError:
                    pass
                break
        if doc is not None:
            return doc, None
        self.stderr.seek(0)
        tail = self.stderr.read().strip().splitlines()
        why = f"exit status {self.proc.returncode}, no result"
        if tail:
            why += f" ({tail[-1].strip()[:200]})"
        return None, why

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_load(tools, port, pid, cpu, args, timeout):
    """Run the load generator; (result dict, None) or (None, reason)."""
    cmd = [tools["echo_load"], "--port", str(port), "--server-pid", str(pid),
           "--cpu", str(cpu)] + [str(a) for a in args]
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=timeout, env=tool_env())
    except subprocess.TimeoutExpired:
        return None, f"load generator timed out after {timeout:g} s"
    try:
        doc = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None, (f"load generator: exit status {r.returncode}, "
                      f"no result ({r.stderr.strip()[:200]})")
    if doc.get("status") != "ok":
        return None, doc.get("error", "load generator failed")
    if not doc.get("requests"):
        return None, "no request completed in the window"
    if doc.get("server_cpu_s") is None:
        return None, "could not read the server's CPU time"
    return doc, None


def new_cell():
    return {"runs": [], "error": None, "rep_of_run": []}


def run_all(loops, benches, reps, quick, cpus, tools, measure=run_load,
            c_server=True, durations=None):
    """results[(style, size)][loop or C_SERVER] = cell; cells of the C
    server are under every style, the same object.

    For a suite that measures these servers differently (perf/floor.py):
    `measure` replaces run_load for the measured runs (not the probe), with
    its arguments; c_server=False leaves the pure-C server out (its cells
    stay empty); `durations` = (warm-up, window) in seconds replaces the
    defaults."""
    server_cpu, load_cpu = cpus
    warmup, duration = durations or ((0.1, 0.3) if quick else (0.5, 2.0))
    styles = [s for s in STYLES if any(b[0] == s for b in benches)]
    sizes_of = {s: [z for z in SIZES if (s, z) in benches] for s in styles}
    all_sizes = [z for z in SIZES if any(b[1] == z for b in benches)]
    results = {b: {l: new_cell() for l in loops} for b in benches}
    c_cells = {z: new_cell() for z in all_sizes}
    for b in benches:
        results[b][C_SERVER] = c_cells[b[1]]
    script = os.path.abspath(__file__)
    started = time.monotonic()
    gen_timeout = warmup + duration + 30

    def session(who, style, sizes, cells, rep):
        if who == C_SERVER:
            cmd = [tools["echo_server"]]
            env = tool_env()
        else:
            cmd = [sys.executable, script, "--server", who, style]
            env = _common.child_env()
        s = Session(cmd, server_cpu, env)
        try:
            port = s.start(timeout=30)
        except RuntimeError as e:
            for z in sizes:
                cells[z]["error"] = str(e)
            log(f"    server failed: {e} (no more runs of this cell)")
            return
        measured = []
        try:
            # Every session, so that every server has the same history
            # (allocator state included) when its measured runs start.
            doc, why = run_load(tools, port, s.proc.pid, load_cpu, PROBE,
                                timeout=30)
            if doc is None:
                for z in sizes:
                    cells[z]["error"] = f"probe: {why}"
                log(f"    probe failed: {why} (no more runs of this cell)")
                return
            for z in sizes:
                cell = cells[z]
                if cell["error"]:
                    continue
                doc, why = measure(
                    tools, port, s.proc.pid, load_cpu,
                    ["--conns", CONNS, "--size", SIZES[z], "--warmup", warmup,
                     "--duration", duration], timeout=gen_timeout)
                if doc is None:
                    cell["error"] = why
                    log(f"    {z}: failed: {why} (no more runs of this cell)")
                    continue
                doc["server_cpu_us_per_req"] = (
                    doc["server_cpu_s"] / doc["requests"] * 1e6)
                doc["load_cpu_share"] = doc["load_cpu_s"] / doc["seconds"]
                doc["server_cpu_share"] = doc["server_cpu_s"] / doc["seconds"]
                if doc.get("server_minflt") is not None:
                    doc["server_minflt_per_req"] = (
                        doc["server_minflt"] / doc["requests"])
                measured.append((z, doc))
                log(f"    {z}: {doc['server_cpu_us_per_req']:.1f} us/req, "
                    f"{_common.fmt_rate(doc['rps'])} req/s, p50 "
                    f"{doc['p50_us']:.0f} us, p99 {doc['p99_us']:.0f} us")
        finally:
            doc, why = s.finish(timeout=15)
            s.kill()
        if who != C_SERVER and (doc is None or doc.get("n_errors")):
            why = why or "; ".join(doc.get("errors", [])) or "errors"
            for z, _ in measured:
                cells[z]["error"] = f"server: {why}"
            log(f"    server reported: {why}")
            return
        for z, run in measured:
            cells[z]["runs"].append(run)
            cells[z]["rep_of_run"].append(rep)

    for rep in range(reps):
        for style in styles:
            who_all = list(loops) + \
                ([C_SERVER] if c_server and style == styles[0] else [])
            k = rep % len(who_all)
            order = who_all[k:] + who_all[:k]
            for who in order:
                if who == C_SERVER:
                    cells = c_cells
                    sizes = all_sizes
                else:
                    cells = {z: results[(style, z)][who] for z in sizes_of[style]}
                    sizes = sizes_of[style]
                if all(cells[z]["error"] for z in sizes):
                    continue
                what = "pure-C server" if who == C_SERVER else f"{style}: {who}"
                log(f"[{time.monotonic() - started:6.1f} s] {what} "
                    f"rep {rep + 1}/{reps} ({', '.join(sizes)})")
                session(who, style, sizes, cells, rep)
    return results


def cell_stats(cell, key):
    return _common.summarize([r[key] for r in cell["runs"]
                              if r.get(key) is not None])


def rep_ratio(a, b, key="server_cpu_us_per_req"):
    """Median over repetitions of a's figure / b's figure in the same
    repetition (None without a common repetition)."""
    if a is None or b is None:
        return None
    mine = dict(zip(a["rep_of_run"], (r[key] for r in a["runs"])))
    theirs = dict(zip(b["rep_of_run"], (r[key] for r in b["runs"])))
    ratios = [mine[k] / theirs[k] for k in mine if k in theirs and theirs[k]]
    return statistics.median(ratios) if ratios else None


def build_report(loops, benches, results, descs, unavailable, meta, reps,
                 quick, elapsed, cpus):
    failures = []  # [tag, who, reason, [bench, ...]]

    def fail_tag(bench, who, why):
        for f in failures:
            if f[1] == who and f[2] == why:
                if bench not in f[3]:
                    f[3].append(bench)
                return f[0]
        failures.append([f"e{len(failures) + 1}", who, why, [bench]])
        return failures[-1][0]

    def na(bench, who):
        if who in unavailable:
            return "n/a"
        cell = results[bench][who]
        why = cell["error"] or "no runs"
        return f"n/a [{fail_tag(bench_id(*bench), who, why)}]"

    cols = list(loops) + [C_SERVER]
    cpu_rows, load_rows, spread_rows, json_rows = [], [], [], []
    for bench in benches:
        style, size = bench
        cells = results[bench]
        stats = {w: cell_stats(cells[w], "server_cpu_us_per_req")
                 for w in cols}
        vs_uv = rep_ratio(cells.get("qloop"), cells.get("uvloop"))
        vs_aio = rep_ratio(cells.get("qloop"), cells.get("asyncio"))
        vs_c = rep_ratio(cells.get("qloop"), cells[C_SERVER])
        target = TARGETS.get(bench)
        met, target_text = None, None
        if target:
            uv_max, c_max = target
            target_text = f"<= {uv_max}x uvloop"
            checks = [None if vs_uv is None else vs_uv <= uv_max]
            if c_max is not None:
                target_text += f", <= {c_max}x C"
                checks.append(None if vs_c is None else vs_c <= c_max)
            met = None if None in checks else all(checks)
        label = f"{STYLE_LABELS[style]} echo, {size.upper()[:-1]} KiB"
        cpu_rows.append(
            [label] +
            [f"{stats[w]['median']:.1f}" if stats[w] else na(bench, w)
             for w in cols] +
            [_common.fmt_ratio(vs_uv), _common.fmt_ratio(vs_aio),
             _common.fmt_ratio(vs_c), target_text or "none",
             {True: "yes", False: "**no**", None: "-"}[met]])

        def load_text(w):
            cell = cells[w]
            if not cell["runs"]:
                return na(bench, w)
            rps = cell_stats(cell, "rps")["median"]
            p50 = cell_stats(cell, "p50_us")["median"]
            p99 = cell_stats(cell, "p99_us")["median"]
            flt = cell_stats(cell, "server_minflt_per_req")
            flt = f"{flt['median']:.2f}" if flt else "?"
            return f"{_common.fmt_rate(rps)} / {p50:.0f} / {p99:.0f} / {flt}"

        load_rows.append([label] + [load_text(w) for w in cols])
        spread_rows.append([label] + [
            f"{stats[w]['spread'] * 100:.0f}% ({stats[w]['n_runs']})"
            if stats[w] else "-" for w in cols])

        def loop_json(w):
            cell = cells[w]
            extra = None
            if cell["runs"]:
                extra = {k: cell_stats(cell, k) for k in (
                    "rps", "p50_us", "p99_us", "p999_us", "mean_us",
                    "requests", "server_cpu_share", "load_cpu_share",
                    "server_minflt_per_req")}
                extra["server_cpu_clock"] = sorted(
                    {r["server_cpu_clock"] for r in cell["runs"]})
            error = cell["error"]
            if w in unavailable:
                error = f"not run: {unavailable[w]}"
            elif not cell["runs"] and not error:
                error = "no runs"
            return {"stats": stats[w], "error": error, "extra": extra}

        json_rows.append({
            "bench": bench_id(style, size), "label": label,
            "metric": "server_cpu_us_per_req", "unit": "µs/req",
            "better": "lower",
            "loops": {w: loop_json(w) for w in loops},
            "c_server": loop_json(C_SERVER),
            "qloop_vs_uvloop": vs_uv, "qloop_vs_asyncio": vs_aio,
            "qloop_vs_c_server": vs_c, "target": target_text, "met": met,
            "style": style, "size": SIZES[size], "conns": CONNS})

    out = [f"## Echo servers: server CPU per request ({meta['implementation']} "
           f"{meta['python']}, {meta['machine']}, Linux {meta['kernel']}, "
           f"{meta['cpu_model']})", ""]
    header = (["benchmark (µs of server CPU per request)"] + cols +
              ["qloop/uvloop", "qloop/asyncio", "qloop/C", "target", "met?"])
    out.append(_common.markdown_table(
        header, cpu_rows, "l" + "r" * len(cols) + "rrrlc"))
    out.append("")
    clocks = sorted({r["server_cpu_clock"] for b in benches
                     for c in results[b].values() for r in c["runs"]})
    source = " and ".join(CLOCK_TEXT.get(c, c) for c in clocks) or "n/a"
    out.append(f"Server CPU (user + system, {source}) "
               f"over the measured window / requests completed in it; "
               f"medians of {reps} run(s), loops interleaved run by run, "
               f"ratios the median of same-run ratios.  {CONNS} connections, "
               f"request/response, every byte checked; server on CPU "
               f"{cpus[0]}, load generator on CPU {cpus[1]}"
               f"{', --quick durations' if quick else ''}.  Column c: the "
               f"pure-C epoll server (perf/c/echo_server.c), one measurement "
               f"per size shown under every style.  The whole run took "
               f"{elapsed:.0f} s.")
    out.append("")
    out.append("Requests/s / p50 / p99 latency (µs) / the server's minor "
               "page faults per request, medians.  Faults near 1 or more per "
               "request mean a buffer mapped and unmapped per read: asyncio's "
               "Python transports recv(256 KiB) into a new bytes object, "
               "which glibc serves from mmap until its dynamic mmap "
               "threshold has been raised by an earlier free of a large "
               "block, so the same code costs more in a process whose "
               "history did not raise it:")
    out.append("")
    out.append(_common.markdown_table(
        ["benchmark"] + cols, load_rows, "l" + "r" * len(cols)))
    out.append("")
    out.append("Run-to-run spread of the server CPU per request, "
               "(max - min) / median (runs):")
    out.append("")
    out.append(_common.markdown_table(
        ["benchmark"] + cols, spread_rows, "l" + "r" * len(cols)))
    out.append("")
    out.append("Loops:")
    out.append("")
    for w in loops:
        out.append(f"- {w}: {descs.get(w) or 'not run: ' + unavailable[w]}")
    out.append(f"- {C_SERVER}: perf/c/echo_server.c, cc -O2")
    if failures:
        out.append("")
        out.append("Failures (the cell is n/a; no further runs of it):")
        out.append("")
        for tag, w, why, bs in failures:
            out.append(f"- [{tag}] {w} ({', '.join(bs)}): {why}")
    return "\n".join(out) + "\n", json_rows


def parse_benches(text, ap):
    """Names: a style (all sizes), a size (all styles) or style_size."""
    everything = [(s, z) for s in STYLES for z in SIZES]
    if not text:
        return everything
    chosen = set()
    for item in (x.strip() for x in text.split(",") if x.strip()):
        if item in STYLES:
            chosen.update((item, z) for z in SIZES)
        elif item in SIZES:
            chosen.update((s, item) for s in STYLES)
        elif "_" in item and tuple(item.split("_", 1)) in everything:
            chosen.add(tuple(item.split("_", 1)))
        else:
            ap.error(f"unknown benchmark {item!r} (known: styles "
                     f"{', '.join(STYLES)}, sizes {', '.join(SIZES)}, "
                     "or style_size)")
    return [b for b in everything if b in chosen]


def pick_cpus(args):
    server, load = _common.two_cpus()
    if args.server_cpu is not None:
        server = args.server_cpu
        others = [c for c in sorted(os.sched_getaffinity(0)) if c != server]
        load = others[0] if others else server
    if args.load_cpu is not None:
        load = args.load_cpu
    return server, load


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="2 repetitions, 0.3 s windows (well under a minute)")
    ap.add_argument("--reps", type=int,
                    help="repetitions per cell (default 5, --quick 2)")
    ap.add_argument("--loops", default=",".join(_common.STREAM_LOOPS),
                    help="comma-separated, from " +
                    ",".join(_common.STREAM_LOOPS))
    ap.add_argument("--bench", help="comma-separated: a style (" +
                    ", ".join(STYLES) + "), a size (" + ", ".join(SIZES) +
                    ") or style_size; default: all")
    ap.add_argument("--json", metavar="PATH", help="write results as JSON")
    ap.add_argument("--markdown", metavar="PATH",
                    help="also write the markdown report to PATH")
    ap.add_argument("--server-cpu", type=int, help="CPU of the servers "
                    "(default: the highest-numbered allowed one)")
    ap.add_argument("--load-cpu", type=int, help="CPU of the load generator "
                    "(default: the lowest-numbered allowed one)")
    ap.add_argument("--server", nargs=2, metavar=("LOOP", "STYLE"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.server:
        return server_main(*args.server)

    try:
        loops = _common.parse_names(args.loops, _common.STREAM_LOOPS, "loop")
    except ValueError as e:
        ap.error(str(e))
    benches = parse_benches(args.bench, ap)
    reps = args.reps or (2 if args.quick else 5)
    if reps < 1:
        ap.error("--reps must be at least 1")

    started = time.monotonic()
    cpus = pick_cpus(args)
    if cpus[0] == cpus[1]:
        log(f"warning: one CPU only ({cpus[0]}): server and load generator "
            "share it")
    try:
        tools = build_tools()
    except (RuntimeError, OSError) as e:
        log(f"echo.py: {e}")
        return 1
    meta = _common.machine_meta(cpus[0])
    meta.update({"server_cpu": cpus[0], "load_cpu": cpus[1], "reps": reps,
                 "quick": args.quick, "conns": CONNS})
    log(f"servers on CPU {cpus[0]}, load generator on CPU {cpus[1]}; "
        f"{reps} repetitions; {'quick' if args.quick else 'full'} durations")

    descs, unavailable = _common.probe_loops(loops)
    runnable = [l for l in loops if l in descs]

    results = run_all(runnable, benches, reps, args.quick, cpus, tools)
    for bench in benches:
        for loop in unavailable:
            results[bench][loop] = new_cell()
            results[bench][loop]["error"] = f"not run: {unavailable[loop]}"

    elapsed = time.monotonic() - started
    meta["elapsed_s"] = elapsed
    text, rows = build_report(loops, benches, results, descs, unavailable,
                              meta, reps, args.quick, elapsed, cpus)
    _common.publish(args, text, {
        "suite": "echo", "meta": meta,
        "loops": {l: descs[l] for l in loops if l in descs},
        "unavailable": unavailable,
        "reference": {C_SERVER: "perf/c/echo_server.c (pure C, epoll)"},
        "rows": rows})
    log(f"done in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
