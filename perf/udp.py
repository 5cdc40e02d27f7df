#!/usr/bin/env python3
"""UDP echo benchmarks: a datagram echo server on qloop, uvloop, rloop and
asyncio.

    python3 perf/udp.py [--quick] [--reps N] [--loops L,L] [--bench B,B]
                        [--json PATH] [--markdown PATH]
                        [--server-cpu N] [--load-cpu N]

qloop is imported as `qloop`: put a build on PYTHONPATH
(PYTHONPATH=build/epoll/inplace) or install it.

The server, the same Python code on every loop, in a fresh process per
run pinned to one CPU: create_datagram_endpoint on 127.0.0.1, a
DatagramProtocol whose datagram_received(data, addr) calls
transport.sendto(data, addr).  The load, perf/c/udp_load.c (C, epoll),
pinned to the other CPU: 4 connected UDP sockets, each keeping 16
datagrams of 64 B or 1 KiB in flight, every echo checked (length and
content), and a window refilled after 20 ms of silence (loopback drops
datagrams when a buffer overflows).  After a warm-up it counts echoes for
a fixed window and reads the server's CPU time (user + system,
/proc/PID/task/*/schedstat) at both ends.

Rows per size: datagrams echoed per second of the server's CPU time (the
target, >= 1.3x uvloop: the server's capacity, robust on a shared machine
where the wall-clock rate waits for the scheduler), and the wall-clock
echo rate.  Every cell is the median of the repetitions;
loops are interleaved run by run (the order rotates), and each ratio is
taken from medians of the same run.  A loop that cannot run the server is
n/a with the reason.  Exit status 0 when the suite ran, whatever the
numbers.
"""

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from _common import log  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL_SRC = os.path.join(ROOT, "perf", "c", "udp_load.c")
TOOL_DIR = os.path.join(ROOT, "build", "udp-tools")

SIZES = {"64": 64, "1k": 1024}
SOCKETS, WINDOW = 4, 32
# On datagrams echoed per second of server CPU, qloop against uvloop: the
# server's capacity, which on a shared machine the wall-clock rate is not
# (it waits for the scheduler as much as for the loop).
TARGET = (">=", 1.3)


# -- the server (child) ---------------------------------------------------------

class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)

    def error_received(self, exc):
        pass  # a load generator socket that went away


def server_main(loop_name):
    try:
        loop = _common.new_loop(loop_name)
    except BaseException as e:  # noqa: BLE001
        _common.emit({"status": "unavailable", "error": _common.first_line(e)})
        return 0
    errors = []
    loop.set_exception_handler(lambda _l, ctx: errors.append(ctx))
    try:
        tr, _ = loop.run_until_complete(loop.create_datagram_endpoint(
            Echo, local_addr=("127.0.0.1", 0)))
    except BaseException as e:  # noqa: BLE001
        _common.emit({"status": "unavailable",
                      "error": "create_datagram_endpoint: " +
                      _common.first_line(e)})
        return 0
    port = tr.get_extra_info("sockname")[1]
    sys.stdout.write(json.dumps({"status": "ok", "port": port}) + "\n")
    sys.stdout.flush()
    # Runs until the parent closes our stdin.
    done = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: done.done() or
                    done.set_result(None))
    loop.run_until_complete(done)
    loop.remove_reader(sys.stdin.fileno())
    tr.close()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    if errors:
        print(f"errors: {errors[0].get('message')}", file=sys.stderr)
    return 0


# -- the parent -----------------------------------------------------------------

def build_tool():
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (cc or gcc) on PATH")
    os.makedirs(TOOL_DIR, exist_ok=True)
    exe = os.path.join(TOOL_DIR, "udp_load")
    if not os.path.exists(exe) or \
            os.path.getmtime(exe) < os.path.getmtime(TOOL_SRC):
        tmp = f"{exe}.tmp{os.getpid()}"
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        r = subprocess.run([cc, "-O2", "-Wall", "-o", tmp, TOOL_SRC],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"compiling udp_load.c failed:\n{r.stdout}")
        os.replace(tmp, exe)
    return exe


def one_run(tool, loop, size, cpus, warmup, duration):
    """Start a server, load it, stop it: (result dict, None) or (None, why)."""
    server_cpu, load_cpu = cpus
    err = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--server", loop],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
        env=_common.child_env(), text=True)
    try:
        os.sched_setaffinity(proc.pid, {server_cpu})
        line = proc.stdout.readline()
        try:
            doc = json.loads(line)
        except ValueError:
            err.seek(0)
            tail = err.read().strip().splitlines()
            return None, "server did not start" + (
                f" ({tail[-1][:200]})" if tail else "")
        if doc.get("status") != "ok":
            return None, doc.get("error", "server failed")
        env = {k: v for k, v in _common.child_env().items()
               if k != "LD_PRELOAD"}
        r = subprocess.run(
            ["taskset", "-c", str(load_cpu), tool, "127.0.0.1",
             str(doc["port"]), str(size), str(SOCKETS), str(WINDOW),
             str(warmup), str(duration), str(proc.pid)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env, timeout=warmup + duration + 60)
        try:
            res = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return None, f"load generator: no result ({r.stderr.strip()[:200]})"
        if res.get("status") != "ok":
            return None, "load generator: " + res.get("error", "?")
        if res["bad"]:
            return None, f"{res['bad']} wrong echoes"
        if not res["echoed"]:
            return None, "no echo"
        return res, None
    except subprocess.TimeoutExpired:
        return None, "load generator timed out"
    finally:
        try:
            proc.stdin.close()
            proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        err.close()


def run_all(tool, loops, benches, reps, quick, cpus):
    # Quick: 0.5 s windows after 0.2 s of warm-up (each run also costs
    # ~0.25 s of server start-up).
    warmup, duration = (0.2, 0.5) if quick else (0.5, 2.0)
    cells = {b: {l: {"values": [], "cpu": [], "error": None, "runs": []}
                 for l in loops} for b in benches}
    started = time.monotonic()
    for rep in range(reps if loops else 0):
        order = loops[rep % len(loops):] + loops[:rep % len(loops)]
        for bench in benches:
            for loop in order:
                cell = cells[bench][loop]
                if cell["error"]:
                    continue
                log(f"[{time.monotonic() - started:6.1f} s] udp {bench}: "
                    f"{loop} rep {rep + 1}/{reps}")
                res, why = one_run(tool, loop, SIZES[bench], cpus, warmup,
                                   duration)
                if res is None:
                    log(f"    failed: {why} (no more runs of this cell)")
                    cell["error"] = why
                    continue
                rate = res["echoed"] / res["wall_s"]
                cell["values"].append(rate)
                if res["server_cpu_s"] > 0:
                    cell["cpu"].append(res["echoed"] / res["server_cpu_s"])
                cell["runs"].append(res)
                log(f"    {_common.fmt_rate(rate)} datagrams/s, server "
                    f"{res['server_cpu_s'] / res['wall_s'] * 100:.0f}% CPU")
    return cells


def build_doc(loops, benches, cells, descs, unavailable, meta):
    rows = []
    for bench in benches:
        label = f"UDP echo, {SIZES[bench]} B datagrams"
        tput, cpu = {}, {}
        for loop in loops + list(unavailable):
            c = cells.get(bench, {}).get(loop)
            if c is None:
                err = f"not run: {unavailable.get(loop, '?')}"
                tput[loop] = cpu[loop] = {"values": [], "error": err}
                continue
            share = [r["server_cpu_s"] / r["wall_s"] for r in c["runs"]]
            us = sorted(1e6 / v for v in c["cpu"])
            extra = {"server_cpu_share": sorted(share)[len(share) // 2]
                     if share else None,
                     "server_cpu_us_per_dgram": us[len(us) // 2]
                     if us else None,
                     "sent": [r["sent"] for r in c["runs"]]}
            cpu[loop] = {"values": c["cpu"], "error": c["error"],
                         "extra": extra}
            tput[loop] = {"values": c["values"], "error": c["error"]}
        rows.append(_common.make_row(
            f"udp_echo_{bench}", label, "dgrams_per_server_cpu_s",
            "dgram/s", "higher", cpu, target=TARGET))
        rows.append(_common.make_row(
            f"udp_echo_{bench}_wall", label + " (wall clock)",
            "echoed_dgrams_per_s", "dgram/s", "higher", tput))
    return {"suite": "udp", "meta": meta, "loops": descs,
            "unavailable": unavailable, "rows": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="2 repetitions, 0.5 s windows")
    ap.add_argument("--reps", type=int, help="default 5, --quick 2")
    ap.add_argument("--loops", default=",".join(_common.LOOPS))
    ap.add_argument("--bench", help="comma-separated, from " +
                    ",".join(SIZES))
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--markdown", metavar="PATH")
    ap.add_argument("--server-cpu", type=int)
    ap.add_argument("--load-cpu", type=int)
    ap.add_argument("--server", metavar="LOOP", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.server:
        return server_main(args.server)

    try:
        loops = _common.parse_names(args.loops, _common.LOOPS, "loop")
        benches = _common.parse_names(args.bench, tuple(SIZES), "benchmark") \
            if args.bench else list(SIZES)
    except ValueError as e:
        ap.error(str(e))
    reps = args.reps or (2 if args.quick else 5)
    server_cpu, load_cpu = _common.two_cpus()
    if args.server_cpu is not None:
        server_cpu = args.server_cpu
    if args.load_cpu is not None:
        load_cpu = args.load_cpu
    started = time.monotonic()
    tool = build_tool()
    meta = _common.machine_meta(server_cpu)
    meta.update({"server_cpu": server_cpu, "load_cpu": load_cpu,
                 "reps": reps, "quick": args.quick, "sockets": SOCKETS,
                 "window": WINDOW})
    log(f"server on CPU {server_cpu}, load on CPU {load_cpu}; {reps} reps")
    descs, unavailable = _common.probe_loops(loops)
    runnable = [l for l in loops if l in descs]
    cells = run_all(tool, runnable, benches, reps, args.quick,
                    (server_cpu, load_cpu))
    doc = build_doc(runnable, benches, cells, descs, unavailable, meta)
    meta["elapsed_s"] = time.monotonic() - started
    text = _common.contract_markdown("UDP echo", doc, notes=[
        f"Medians of {reps} run(s); server and load generator pinned to "
        f"CPUs {server_cpu} and {load_cpu}; {SOCKETS} sockets x {WINDOW} "
        "datagrams in flight.  The target is on datagrams echoed per second of "
        "the server's CPU time (user + system): its capacity; the wall-clock "
        "rate also measures how soon a shared machine schedules it."])
    _common.publish(args, text, doc)
    log(f"done in {meta['elapsed_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
