#!/usr/bin/env python3
"""Python-level micro-benchmarks: qloop against uvloop, rloop and asyncio.

    python3 perf/py_micro.py [--quick] [--reps N] [--loops L,L] [--bench B,B]
                             [--json PATH] [--markdown PATH] [--cpu N]

qloop is imported as `qloop`: put a build on PYTHONPATH (an in-tree build:
PYTHONPATH=build/epoll/inplace) or install it.  A loop that cannot be
imported is skipped with a message; a benchmark that fails on a loop (an
exception, a missing API, a crash, a timeout) is reported as n/a with the
first line of the reason.

Every (benchmark, loop, repetition) runs in a fresh child process, pinned
with its parent to one CPU; within a repetition the loops run one after the
other, in an order that rotates every repetition; a cell of the table is the
median of the repetitions.  A child makes its loop, does one untimed warm-up
round at a tenth of the size on that same loop, runs gc.collect() and
gc.freeze(), then does the timed round (time.perf_counter).  The garbage
collector stays on: the objects a loop allocates are part of its cost.

The code is the same on every loop, and the harness around the loop is kept
out of the way: callbacks are scheduled from C (map() over a bound
loop.call_soon, drained by a zero-length deque) rather than by a Python
`for`, and the callbacks are cheap C callables (mostly the __next__ of an
itertools.repeat(None, N), which also counts the calls: its length hint
must be 0 at the end), so that what remains is mostly the loop's own work.
The rows built on tasks (sleep0, gather, queue_pingpong) necessarily
include asyncio's Task/Future/Queue code, which is the same C and Python on
every loop here unless a loop brings its own.  What each row times is in
BENCHES below and printed under the table.

A benchmark reports numbers, it does not judge: the exit status is 0 when
a target is missed or a loop fails, and non-zero only on an internal error.
"""

import argparse
import asyncio
import collections
import gc
import itertools
import operator
import os
import random
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from _common import log  # noqa: E402

perf_counter = time.perf_counter
process_time = time.process_time
repeat = itertools.repeat
length_hint = operator.length_hint
consume = collections.deque(maxlen=0).extend  # drains an iterator from C

# Callbacks scheduled per loop iteration by the call_soon / timer drivers.
BATCH = 1000
# Timers that fire are due 0-10 ms after their call_later.
FIRE_WINDOW = 0.010


class BenchError(Exception):
    pass


def check(cond, what):
    if not cond:
        raise BenchError(what)


# -- the timed code (child side) ----------------------------------------------
#
# Each function runs one round of size n on `loop` (not running) and returns
# {"ops": operations, "wall": seconds, "cpu": process CPU seconds,
#  "phases": {name: wall seconds}}; the rate is ops / wall.  The CPU time
# only tells, against the wall time, whether the run was preempted.
# Timing starts after all inputs (delays, coroutines) have been built.

def now():
    return perf_counter(), process_time()


def result(ops, windows, **phases):
    """`windows`: (start, end) pairs of now() stamps, summed."""
    return {"ops": ops,
            "wall": sum(b[0] - a[0] for a, b in windows),
            "cpu": sum(b[1] - a[1] for a, b in windows),
            "phases": phases}


def counting_callback(n):
    """A C callable with no arguments and a way to see it ran n times."""
    calls = repeat(None, n)
    return calls.__next__, (lambda: length_hint(calls))


def bench_call_soon(loop, n, args=()):
    n_batches = max(n // BATCH, 1)
    call_soon = loop.call_soon
    if args:
        # getattr(obj, name, default) on a missing attribute: a C function
        # of three arguments that does little and raises nothing (a
        # `def cb(a, b, c): pass` measured the same; slice() and max() cost
        # more).  map() stops with the first, bounded, iterable.
        cb = getattr
        cb_args = tuple(repeat(a) for a in args)
        left = lambda: 0  # noqa: E731 - counted through the driver instead
    else:
        cb, left = counting_callback(n_batches * BATCH)
        cb_args = ()
    batches_run = 0

    def driver():
        nonlocal batches_run
        if batches_run < n_batches:
            batches_run += 1
            consume(map(call_soon, repeat(cb, BATCH), *cb_args))
            # FIFO: the driver runs again after the whole batch has run.
            call_soon(driver)
        else:
            loop.stop()

    call_soon(driver)
    t0 = now()
    loop.run_forever()
    t1 = now()
    check(batches_run == n_batches, f"{batches_run} of {n_batches} batches")
    check(left() == 0, f"{left()} callbacks did not run")
    return result(n_batches * BATCH, [(t0, t1)])


def bench_call_soon_args(loop, n):
    return bench_call_soon(loop, n, args=(Plain(), "missing", None))


class Plain:
    pass


def bench_call_soon_threadsafe(loop, n):
    n_batches = max(n // BATCH, 1)
    cb, left = counting_callback(n_batches * BATCH)
    call_soon_threadsafe = loop.call_soon_threadsafe

    def produce():
        try:
            for _ in range(n_batches):
                consume(map(call_soon_threadsafe, repeat(cb, BATCH)))
            call_soon_threadsafe(loop.stop)  # FIFO: runs after all of them
        except BaseException as e:  # noqa: BLE001
            # The loop would wait for ever: report and end the child here.
            _common.emit({"status": "error",
                          "error": "in the producer thread: " +
                          _common.first_line(e)})
            os._exit(0)

    producer = threading.Thread(target=produce)
    loop.call_soon(producer.start)
    t0 = now()
    loop.run_forever()
    t1 = now()
    producer.join()
    check(left() == 0, f"{left()} callbacks did not run")
    return result(n_batches * BATCH, [(t0, t1)])


def bench_timers_cancel(loop, n):
    rng = random.Random(12345)
    delays = [rng.uniform(1.0, 1000.0) for _ in range(n)]  # none fires
    cancel_order = list(range(n))
    rng.shuffle(cancel_order)
    call_later = loop.call_later
    cancel = operator.methodcaller("cancel")
    stamps = []

    def work():
        t0 = now()
        handles = list(map(call_later, delays, repeat(tuple)))
        t1 = now()
        handles = [handles[i] for i in cancel_order]  # untimed
        t2 = now()
        consume(map(cancel, handles))
        handles.clear()
        loop.call_soon(finish)  # the next iteration purges the heap
        stamps.extend((t0, t1, t2, now()))

    def finish():
        stamps.append(now())
        loop.stop()

    loop.call_soon(work)
    loop.run_forever()
    t0, t1, t2, t3, t4 = stamps
    return result(n, [(t0, t1), (t2, t4)], schedule=t1[0] - t0[0],
                  cancel=t3[0] - t2[0], next_iteration=t4[0] - t3[0])


def bench_timers_fire(loop, n):
    rng = random.Random(12345)
    n = max(n // BATCH, 1) * BATCH
    delays = [rng.uniform(FIRE_WINDOW / 1000, FIRE_WINDOW) for _ in range(n)]
    chunks = iter([delays[i:i + BATCH] for i in range(0, n, BATCH)])
    cb, left = counting_callback(n)
    call_later = loop.call_later
    call_soon = loop.call_soon
    stamps = []

    def driver():
        chunk = next(chunks, None)
        if chunk is not None:
            consume(map(call_later, chunk, repeat(cb)))
            call_soon(driver)
            return
        if not stamps:
            stamps.append(now())  # all scheduled
        if left():
            call_soon(driver)  # poll once per iteration until all fired
        else:
            stamps.append(now())
            loop.stop()

    call_soon(driver)
    t0 = now()
    loop.run_forever()
    t_scheduled, t_end = stamps
    check(left() == 0, f"{left()} timers did not fire")
    return result(n, [(t0, t_end)],
                  until_all_scheduled=t_scheduled[0] - t0[0],
                  tail=t_end[0] - t_scheduled[0])


def bench_sleep0(loop, n):
    async def sleeper():
        sleep = asyncio.sleep
        t0 = now()
        for _ in range(n):
            await sleep(0)
        return result(n, [(t0, now())])

    return loop.run_until_complete(sleeper())


def bench_gather(loop, n):
    async def trivial():
        return 1

    async def main():
        coros = [trivial() for _ in range(n)]  # untimed
        t0 = now()
        results = await asyncio.gather(*coros)
        t1 = now()
        check(len(results) == n and sum(results) == n, "wrong gather result")
        return result(n, [(t0, t1)])

    return loop.run_until_complete(main())


def bench_queue_pingpong(loop, n):
    async def ping(q_out, q_in):
        put, get = q_out.put_nowait, q_in.get
        for i in range(n):
            put(i)
            check(await get() == i, "out of order")

    async def pong(q_in, q_out):
        get, put = q_in.get, q_out.put_nowait
        for _ in range(n):
            put(await get())

    async def main():
        a, b = asyncio.Queue(), asyncio.Queue()
        t0 = now()
        await asyncio.gather(ping(a, b), pong(a, b))
        return result(n, [(t0, now())])

    return loop.run_until_complete(main())


Bench = collections.namedtuple(
    "Bench", "fn label n quick_n target timed")

# label: "{n}" is the size; target: qloop/uvloop, None for none.
BENCHES = {
    "call_soon": Bench(
        bench_call_soon, "call_soon: {n} callbacks, no args",
        1_000_000, 100_000, 2.5,
        "run_forever() from start to stop: a driver callback schedules "
        f"{BATCH} callbacks with call_soon(cb) and then itself, until N have "
        "been scheduled; so scheduling and running N callbacks, plus N/"
        f"{BATCH} loop iterations.  cb is a C callable counting its calls."),
    "call_soon_args": Bench(
        bench_call_soon_args, "call_soon: {n} callbacks, 3 args",
        1_000_000, 100_000, 2.5,
        "as call_soon, with call_soon(cb, obj, \"missing\", None); cb is "
        "getattr, so each callback is getattr(obj, \"missing\", None)."),
    "call_soon_threadsafe": Bench(
        bench_call_soon_threadsafe,
        "call_soon_threadsafe: {n} callbacks from a thread",
        500_000, 50_000, 1.5,
        "run_forever() from start to stop: a producer thread (started by "
        "the loop's first callback) posts N callbacks with "
        f"call_soon_threadsafe, in batches of {BATCH} issued from C, then "
        "posts loop.stop; the loop runs them as they arrive.  Both threads "
        "share the pinned CPU and the GIL (default switch interval)."),
    "timers_cancel": Bench(
        bench_timers_cancel, "timers: {n} call_later, then cancel all",
        200_000, 50_000, 5.0,
        "inside one callback: N call_later(d, cb) with d uniform in "
        "1-1000 s (timed), then the handles put in another random order "
        "(not timed), then N cancel() and dropping the handles (timed), "
        "then the loop's next iteration, which purges the cancelled timers "
        "(timed, up to the next callback).  One op: one timer scheduled and "
        "cancelled."),
    "timers_fire": Bench(
        bench_timers_fire, "timers: {n} call_later(0-10 ms), all fire",
        500_000, 100_000, 1.5,
        "run_forever() until the last timer has fired: a driver callback "
        f"does {BATCH} call_later(d, cb), d uniform in 0.01-10 ms, and "
        "reschedules itself with call_soon, until N; then it polls once "
        "per iteration until every cb has run.  One op: one timer scheduled "
        "and fired.  The time includes the tail, up to 10 ms after the last "
        "batch until its timers are due, whatever the loop's speed: a few "
        "percent of a full-size run, more with --quick (in the JSON)."),
    "sleep0": Bench(
        bench_sleep0, "await asyncio.sleep(0): {n} iterations, one task",
        300_000, 30_000, 1.4,
        "inside the task, a for loop of N `await asyncio.sleep(0)`: each "
        "one a task step and a loop iteration."),
    "gather": Bench(
        bench_gather, "asyncio.gather of {n} trivial tasks",
        100_000, 20_000, None,
        "inside a task: `await asyncio.gather(*coros)` of N coroutines "
        "that return 1 (created before the clock starts): N create_task, "
        "N steps, N done callbacks, one wake-up."),
    "queue_pingpong": Bench(
        bench_queue_pingpong, "asyncio.Queue ping-pong: {n} round trips",
        100_000, 20_000, None,
        "inside a task: gather of two tasks passing an int back and forth "
        "N times through two unbounded asyncio.Queue (put_nowait, await "
        "get): each round trip, two task wake-ups."),
}


def child(loop_name, bench_name, n):
    fn = BENCHES[bench_name].fn
    try:
        loop = _common.new_loop(loop_name)
    except BaseException as e:  # noqa: BLE001 - any import failure
        _common.emit({"status": "unavailable", "error": _common.first_line(e)})
        return 0
    errors = []
    try:
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        asyncio.set_event_loop(loop)
        fn(loop, max(n // 10 // BATCH * BATCH, BATCH))  # warm-up
        check(not errors, "")
        gc.collect()
        gc.freeze()
        res = fn(loop, n)
        check(not errors, "")
    except BaseException as e:  # noqa: BLE001 - reported, not raised
        if errors:
            ctx = errors[0]
            exc = ctx.get("exception")
            e = exc if exc is not None else ctx.get("message", "error")
        _common.emit({"status": "error", "error": _common.first_line(e)})
        return 0
    finally:
        asyncio.set_event_loop(None)
        try:
            loop.close()
        except Exception:  # noqa: BLE001 - the numbers are taken
            pass
    res["status"] = "ok"
    res["ops_per_s"] = res["ops"] / res["wall"]
    res["cpu_share"] = res["cpu"] / res["wall"]
    _common.emit(res)
    return 0


def probe(loop_name):
    """Child side of the start-up check: can the loop be made and run?"""
    try:
        loop = _common.new_loop(loop_name)
        try:
            loop.call_soon(loop.stop)
            loop.run_forever()
        finally:
            loop.close()
        desc = _common.loop_description(loop_name)
    except BaseException as e:  # noqa: BLE001
        _common.emit({"status": "unavailable", "error": _common.first_line(e)})
        return 0
    _common.emit({"status": "ok", "desc": desc})
    return 0


# -- the parent ---------------------------------------------------------------

def parse_list(text, known, what, ap):
    items = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in items if x not in known]
    if unknown:
        ap.error(f"unknown {what}: {', '.join(unknown)} "
                 f"(known: {', '.join(known)})")
    if not items:
        ap.error(f"no {what} given")
    return [x for x in known if x in items]  # canonical order


def run_all(benches, loops, reps, quick, timeout):
    """results[bench][loop] = {"rates": [...], "runs": [...], "error": str}"""
    script = os.path.abspath(__file__)
    results = {b: {l: {"rates": [], "runs": [], "error": None} for l in loops}
               for b in benches}
    started = time.monotonic()
    for rep in range(reps if loops else 0):
        order = loops[rep % len(loops):] + loops[:rep % len(loops)]
        for bench in benches:
            n = BENCHES[bench].quick_n if quick else BENCHES[bench].n
            for loop in order:
                cell = results[bench][loop]
                if cell["error"]:
                    continue
                log(f"[{time.monotonic() - started:6.1f} s] {bench}: {loop} "
                    f"rep {rep + 1}/{reps} (n={_common.count_label(n)})")
                doc, why = _common.run_child(
                    [sys.executable, script, "--child", loop, bench, str(n)],
                    timeout)
                if doc is None:
                    log(f"    failed: {why} (no more runs of this cell)")
                    cell["error"] = why
                    continue
                log(f"    {_common.fmt_rate(doc['ops_per_s'])} ops/s")
                cell["rates"].append(doc["ops_per_s"])
                cell["runs"].append(doc)
    return results


def build_report(benches, loops, results, descs, unavailable, meta, reps,
                 quick, elapsed):
    """Markdown text and the JSON rows."""
    failures = []  # [tag, loop, reason, [bench, ...]]

    def cell_text(bench, loop, stats):
        if stats:
            return _common.fmt_rate(stats["median"])
        if loop in unavailable:
            return "n/a"
        why = results[bench][loop]["error"] or "no runs"
        for f in failures:
            if f[1] == loop and f[2] == why:
                f[3].append(bench)
                return f"n/a [{f[0]}]"
        failures.append([f"e{len(failures) + 1}", loop, why, [bench]])
        return f"n/a [{failures[-1][0]}]"

    rows, json_rows, spread_rows = [], [], []
    for bench in benches:
        b = BENCHES[bench]
        n = b.quick_n if quick else b.n
        cells = {l: results[bench][l] for l in loops}
        stats = {l: _common.summarize(cells[l]["rates"]) for l in loops}
        med = {l: stats[l]["median"] if stats[l] else None for l in loops}

        def ratio(x, y):
            if med.get(x) and med.get(y):
                return med[x] / med[y]
            return None

        vs_uv, vs_aio = ratio("qloop", "uvloop"), ratio("qloop", "asyncio")
        met = None if b.target is None or vs_uv is None else vs_uv >= b.target
        rows.append(
            [b.label.format(n=_common.count_label(n))] +
            [cell_text(bench, l, stats[l]) for l in loops] +
            [_common.fmt_ratio(vs_uv), _common.fmt_ratio(vs_aio),
             f">= {b.target}x" if b.target else "none",
             {True: "yes", False: "**no**", None: "-"}[met]])

        def spread(l):
            if not stats[l]:
                return "-"
            share = statistics.median(r["cpu_share"] for r in cells[l]["runs"])
            return (f"{stats[l]['spread'] * 100:.0f}% / "
                    f"{min(share, 1.0) * 100:.0f}%")

        spread_rows.append([bench] + [spread(l) for l in loops])
        json_rows.append({
            "bench": bench, "label": b.label.format(n=n), "n": n,
            "timed": b.timed, "target_vs_uvloop": b.target,
            "qloop_vs_uvloop": vs_uv, "qloop_vs_asyncio": vs_aio, "met": met,
            "loops": {l: {"stats": stats[l], "error": cells[l]["error"],
                          "runs": cells[l]["runs"]} for l in loops}})

    header = (["benchmark"] + [f"{l} ops/s" for l in loops] +
              ["qloop/uvloop", "qloop/asyncio", "target", "met?"])
    align = "l" + "r" * len(loops) + "rrrc"
    out = [f"## Python-level micro-benchmarks ({meta['implementation']} "
           f"{meta['python']}, {meta['machine']}, Linux {meta['kernel']}, "
           f"CPU {meta['cpu']}: {meta['cpu_model']})", ""]
    out.append(_common.markdown_table(header, rows, align))
    out.append("")
    out.append(f"Medians of {reps} run(s) per cell, each in a fresh process, "
               f"loops interleaved{', --quick sizes' if quick else ''}; "
               "targets are qloop/uvloop in this run; the whole run took "
               f"{elapsed:.0f} s.  Loops:")
    out.append("")
    for l in loops:
        out.append(f"- {l}: {descs.get(l) or 'not run: ' + unavailable[l]}")
    if failures:
        out.append("")
        out.append("Failures (the cell is n/a; no further runs of it):")
        out.append("")
        for tag, l, why, bs in failures:
            out.append(f"- [{tag}] {l} ({', '.join(bs)}): {why}")
    out.append("")
    out.append("Run-to-run spread, (max - min) / median, and the median "
               "share of the timed wall time the process spent on the CPU "
               "(below ~95%, something else ran on that CPU; 100% does not "
               "rule out a slowed-down machine, e.g. a busy SMT sibling):")
    out.append("")
    out.append(_common.markdown_table(["benchmark"] + list(loops),
                                      spread_rows, "l" + "r" * len(loops)))
    out.append("")
    out.append("What is timed (time.perf_counter):")
    out.append("")
    for bench in benches:
        out.append(f"- {bench}: {BENCHES[bench].timed}")
    return "\n".join(out) + "\n", json_rows


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="benchmarks: " + ", ".join(BENCHES))
    ap.add_argument("--quick", action="store_true",
                    help="3 repetitions and smaller N (about a minute)")
    ap.add_argument("--reps", type=int,
                    help="repetitions per cell (default 5, --quick 3)")
    ap.add_argument("--loops", default=",".join(_common.LOOPS),
                    help="comma-separated, from " + ",".join(_common.LOOPS))
    ap.add_argument("--bench", help="comma-separated benchmark names "
                    "(default: all)")
    ap.add_argument("--json", metavar="PATH", help="write results as JSON")
    ap.add_argument("--markdown", metavar="PATH",
                    help="also write the markdown report to PATH")
    ap.add_argument("--cpu", type=int, help="CPU to pin to (default: the "
                    "highest-numbered allowed one)")
    ap.add_argument("--timeout", type=float,
                    help="seconds per child run before it counts as failed "
                    "(default 300, --quick 60)")
    ap.add_argument("--child", nargs=3, metavar=("LOOP", "BENCH", "N"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--probe", metavar="LOOP", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        loop, bench, n = args.child
        return child(loop, bench, int(n))
    if args.probe:
        return probe(args.probe)

    loops = parse_list(args.loops, _common.LOOPS, "loop", ap)
    benches = parse_list(args.bench, tuple(BENCHES), "benchmark", ap) \
        if args.bench else list(BENCHES)
    reps = args.reps or (3 if args.quick else 5)
    timeout = args.timeout or (60.0 if args.quick else 300.0)
    if reps < 1:
        ap.error("--reps must be at least 1")

    started = time.monotonic()
    try:
        cpu = _common.pin_cpu(args.cpu)
    except OSError as e:
        ap.error(f"cannot pin to CPU {args.cpu}: {e}")
    meta = _common.machine_meta(cpu)
    log(f"pinned to CPU {cpu}; {reps} repetitions; "
        f"{'quick' if args.quick else 'full'} sizes")

    descs, unavailable = {}, {}
    for loop in loops:
        doc, why = _common.run_child(
            [sys.executable, os.path.abspath(__file__), "--probe", loop],
            timeout)
        if doc is None:
            unavailable[loop] = why
            log(f"skipping {loop}: {why}")
        else:
            descs[loop] = doc["desc"]
            log(f"{loop}: {doc['desc']}")
    runnable = [l for l in loops if l in descs]

    results = run_all(benches, runnable, reps, args.quick, timeout)
    for bench in benches:
        for loop in unavailable:
            results[bench][loop] = {"rates": [], "runs": [],
                                    "error": f"not run: {unavailable[loop]}"}

    elapsed = time.monotonic() - started
    text, json_rows = build_report(benches, loops, results, descs,
                                   unavailable, meta, reps, args.quick,
                                   elapsed)
    _common.publish(args, text, {
        "meta": {**meta, "reps": reps, "quick": args.quick,
                 "loops": {l: descs.get(l) for l in loops},
                 "unavailable": unavailable, "batch": BATCH,
                 "elapsed_s": elapsed},
        "rows": json_rows})
    log(f"done in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
