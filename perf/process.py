#!/usr/bin/env python3
"""Subprocess and pipe benchmarks: qloop against uvloop, rloop and asyncio.

    python3 perf/process.py [--quick] [--reps N] [--loops L,L] [--bench B,B]
                            [--json PATH] [--markdown PATH]
                            [--cpu N] [--other-cpu N]

qloop is imported as `qloop`: put a build on PYTHONPATH
(PYTHONPATH=build/epoll/inplace) or install it.

Every (benchmark, loop, repetition) runs in a fresh child process pinned
to one CPU, loops interleaved with a rotating order; a cell is the median
of the repetitions; ratios are of medians of the same run.  The same code
on every loop (asyncio.create_subprocess_exec and its Process/streams):

  spawn   N times in a row: create_subprocess_exec('/bin/true') and
          await wait(); spawns+waits per second (target >= 1.0x uvloop).
          Meanwhile a heartbeat (a 1 ms call_later re-arming itself)
          records, per spawn, the longest lateness of a tick (gap between
          two ticks minus 1 ms): how long the loop was held while a child
          started (reported, no target).
  spawn_busy  the same spawns while a callback re-queues itself with
          call_soon (the loop never blocks in poll); spawns+waits per
          second (reported, no target).  The child inherits the loop's CPU
          pin, so it shares that CPU with the spinning parent and the
          scheduler's time slices stretch its run, on every loop alike;
          the loop's own part, from the child's exit (its pidfd readable)
          to wait() returning, is a small share of it.
  pipe    1 MiB chunks through `cat` (pinned to the other CPU): one task
          writes them to stdin with drain(), another reads stdout with
          read(1 MiB) to EOF, checking the byte count; MiB per second
          (target >= 1.0x uvloop), and MiB per CPU second of the loop's
          process (user + system; reported, no target; the JSON row
          also has the two apart, in ms per GiB).

A loop that cannot run a benchmark is n/a with the reason.  Exit status 0
when the suite ran, whatever the numbers.
"""

import argparse
import asyncio
import gc
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from _common import log  # noqa: E402

CHUNK = 1 << 20
HEARTBEAT = 0.001  # s between the ticks of the spawn benchmark's heartbeat
BENCHES = {
    # name: (full n, quick n)
    "spawn": (1000, 200),
    "spawn_busy": (300, 100),
    "pipe": (512, 96),  # MiB
}


async def spawn_busy(n):
    loop = asyncio.get_running_loop()
    state = {"on": True, "spins": 0}

    def spin():
        state["spins"] += 1
        if state["on"]:
            loop.call_soon(spin)

    loop.call_soon(spin)
    t0 = time.perf_counter()
    try:
        for _ in range(n):
            p = await asyncio.create_subprocess_exec("/bin/true")
            rc = await p.wait()
            if rc != 0:
                raise RuntimeError(f"/bin/true exited {rc}")
    finally:
        state["on"] = False
    wall = time.perf_counter() - t0
    await asyncio.sleep(0)
    return {"value": n / wall, "wall": wall,
            "spins_per_spawn": state["spins"] / n}


async def spawn(n):
    loop = asyncio.get_running_loop()
    gaps = []
    state = {"last": time.perf_counter(), "max": 0.0, "on": True}

    def tick():
        t = time.perf_counter()
        gap = t - state["last"] - HEARTBEAT
        if gap > state["max"]:
            state["max"] = gap
        state["last"] = t
        if state["on"]:
            loop.call_later(HEARTBEAT, tick)

    loop.call_later(HEARTBEAT, tick)
    t0 = time.perf_counter()
    for _ in range(n):
        state["max"] = 0.0
        p = await asyncio.create_subprocess_exec("/bin/true")
        rc = await p.wait()
        if rc != 0:
            raise RuntimeError(f"/bin/true exited {rc}")
        gaps.append(state["max"])
    wall = time.perf_counter() - t0
    state["on"] = False
    await asyncio.sleep(0)
    gaps.sort()
    return {"value": n / wall, "wall": wall,
            "gap_p50_ms": gaps[len(gaps) // 2] * 1e3,
            "gap_p99_ms": gaps[int(len(gaps) * 0.99)] * 1e3,
            "gap_max_ms": gaps[-1] * 1e3}


async def pipe(n, other_cpu):
    cmd = ["cat"] if other_cpu is None else \
        ["taskset", "-c", str(other_cpu), "cat"]
    p = await asyncio.create_subprocess_exec(
        *cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    chunk = b"q" * CHUNK

    async def write():
        for _ in range(n):
            p.stdin.write(chunk)
            await p.stdin.drain()
        p.stdin.close()

    async def read():
        total = 0
        while True:
            data = await p.stdout.read(CHUNK)
            if not data:
                return total
            total += len(data)

    t0, c0 = time.perf_counter(), time.process_time()
    u0 = resource.getrusage(resource.RUSAGE_SELF)
    _, total = await asyncio.gather(write(), read())
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    u1 = resource.getrusage(resource.RUSAGE_SELF)
    rc = await p.wait()
    if total != n * CHUNK or rc != 0:
        raise RuntimeError(f"cat echoed {total} of {n * CHUNK} bytes, "
                           f"exit {rc}")
    # user and system CPU apart: the kernel's share is what the pipes (or
    # uvloop's socketpairs) cost, the user share what the loop does.
    return {"value": n / wall, "wall": wall, "cpu": cpu,
            "cpu_user": u1.ru_utime - u0.ru_utime,
            "cpu_sys": u1.ru_stime - u0.ru_stime,
            "per_cpu_s": n / cpu if cpu > 0 else None}


def child(loop_name, bench, n, other_cpu):
    try:
        loop = _common.new_loop(loop_name)
    except BaseException as e:  # noqa: BLE001
        _common.emit({"status": "unavailable", "error": _common.first_line(e)})
        return 0
    errors = []
    loop.set_exception_handler(lambda _l, ctx: errors.append(ctx))
    asyncio.set_event_loop(loop)
    try:
        def run(size):
            if bench == "spawn":
                return loop.run_until_complete(spawn(size))
            if bench == "spawn_busy":
                return loop.run_until_complete(spawn_busy(size))
            return loop.run_until_complete(pipe(size, other_cpu))

        run(max(n // 10, 4))  # warm-up
        gc.collect()
        res = run(n)
        if errors:
            raise RuntimeError(errors[0].get("message"))
    except BaseException as e:  # noqa: BLE001 - reported, not raised
        if errors and errors[0].get("exception") is not None:
            e = errors[0]["exception"]
        _common.emit({"status": "error", "error": _common.first_line(e)})
        return 0
    finally:
        asyncio.set_event_loop(None)
        try:
            loop.close()
        except Exception:  # noqa: BLE001
            pass
    res["status"] = "ok"
    _common.emit(res)
    return 0


def run_all(loops, benches, reps, quick, cpu, other_cpu):
    cells = {b: {l: {"values": [], "runs": [], "error": None} for l in loops}
             for b in benches}
    started = time.monotonic()
    for rep in range(reps if loops else 0):
        order = loops[rep % len(loops):] + loops[:rep % len(loops)]
        for bench in benches:
            n = BENCHES[bench][1 if quick else 0]
            for loop in order:
                cell = cells[bench][loop]
                if cell["error"]:
                    continue
                log(f"[{time.monotonic() - started:6.1f} s] {bench}: {loop} "
                    f"rep {rep + 1}/{reps} (n={n})")
                cmd = [sys.executable, os.path.abspath(__file__), "--child",
                       loop, bench, str(n),
                       "" if other_cpu is None else str(other_cpu)]
                doc, why = _common.run_child(cmd, 600)
                if doc is None:
                    log(f"    failed: {why} (no more runs of this cell)")
                    cell["error"] = why
                    continue
                unit = "MiB/s" if bench == "pipe" else "spawns/s"
                log(f"    {doc['value']:.1f} {unit}")
                cell["values"].append(doc["value"])
                cell["runs"].append(doc)
    return cells


def build_doc(loops, benches, cells, descs, unavailable, meta, quick):
    rows = []
    for bench in benches:
        n = BENCHES[bench][1 if quick else 0]
        main, gap = {}, {}
        for loop in loops + list(unavailable):
            c = cells[bench].get(loop)
            if c is None:
                err = f"not run: {unavailable.get(loop, '?')}"
                main[loop] = gap[loop] = {"values": [], "error": err}
                continue
            main[loop] = {"values": c["values"], "error": c["error"]}
            if bench == "spawn":
                runs = c["runs"]
                gap[loop] = {
                    "values": [r["gap_p50_ms"] for r in runs],
                    "error": c["error"],
                    "extra": {
                        "gap_p99_ms": statistics.median(
                            r["gap_p99_ms"] for r in runs) if runs else None,
                        "gap_max_ms": max(
                            (r["gap_max_ms"] for r in runs), default=None)}}
        if bench == "spawn":
            rows.append(_common.make_row(
                "spawn", f"spawn + wait /bin/true, {n} in a row",
                "spawns_per_s", "spawn/s", "higher", main,
                target=(">=", 1.0)))
            rows.append(_common.make_row(
                "spawn_loop_blocked", "loop held per spawn (median of each "
                "spawn's latest 1 ms heartbeat tick)", "heartbeat_late_p50_ms",
                "ms", "lower", gap))
        elif bench == "spawn_busy":
            rows.append(_common.make_row(
                "spawn_busy", f"spawn + wait /bin/true, {n} in a row, "
                "while a call_soon callback keeps the loop busy",
                "spawns_per_s_busy_loop", "spawn/s", "higher", main))
        else:
            rows.append(_common.make_row(
                "pipe", f"1 MiB chunks through cat, {n} MiB",
                "pipe_mib_per_s", "MiB/s", "higher", main,
                target=(">=", 1.0)))
            per_cpu = {}
            for loop, c in main.items():
                runs = cells[bench].get(loop, {}).get("runs", [])
                per_cpu[loop] = {"values": [r["per_cpu_s"] for r in runs
                                            if r.get("per_cpu_s")],
                                 "error": c["error"],
                                 "extra": {
                                     f"{k}_ms_per_gib": statistics.median(
                                         r[f"cpu_{k}"] * 1024e3 / n
                                         for r in runs) if runs else None
                                     for k in ("user", "sys")}}
            rows.append(_common.make_row(
                "pipe_cpu", f"1 MiB chunks through cat, {n} MiB, per CPU "
                "second of the loop's process", "pipe_mib_per_cpu_s",
                "MiB/s", "higher", per_cpu))
    return {"suite": "process", "meta": meta, "loops": descs,
            "unavailable": unavailable, "rows": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="2 repetitions, smaller N")
    ap.add_argument("--reps", type=int, help="default 5, --quick 2")
    ap.add_argument("--loops", default=",".join(_common.LOOPS))
    ap.add_argument("--bench", help="comma-separated, from " +
                    ",".join(BENCHES))
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--markdown", metavar="PATH")
    ap.add_argument("--cpu", type=int, help="CPU of the loop under test")
    ap.add_argument("--other-cpu", type=int, help="CPU of cat")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        loop, bench, n, other = args.child
        return child(loop, bench, int(n), int(other) if other else None)

    try:
        loops = _common.parse_names(args.loops, _common.LOOPS, "loop")
        benches = _common.parse_names(args.bench, tuple(BENCHES),
                                      "benchmark") \
            if args.bench else list(BENCHES)
    except ValueError as e:
        ap.error(str(e))
    reps = args.reps or (2 if args.quick else 5)
    cpu, other = _common.two_cpus()
    if args.cpu is not None:
        cpu = args.cpu
    if args.other_cpu is not None:
        other = args.other_cpu
    other_cpu = other if other != cpu else None
    started = time.monotonic()
    _common.pin_cpu(cpu)
    meta = _common.machine_meta(cpu)
    meta.update({"other_cpu": other_cpu, "reps": reps, "quick": args.quick})
    log(f"loops on CPU {cpu}, cat on CPU {other_cpu}; {reps} reps")
    descs, unavailable = _common.probe_loops(loops)
    runnable = [l for l in loops if l in descs]
    cells = run_all(runnable, benches, reps, args.quick, cpu, other_cpu)
    doc = build_doc(runnable, benches, cells, descs, unavailable, meta,
                    args.quick)
    meta["elapsed_s"] = time.monotonic() - started
    text = _common.contract_markdown("Subprocesses and pipes", doc, notes=[
        f"Medians of {reps} run(s), loops interleaved, each run a fresh "
        f"process pinned to CPU {cpu}; cat pinned to CPU {other_cpu}."])
    _common.publish(args, text, doc)
    log(f"done in {meta['elapsed_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
