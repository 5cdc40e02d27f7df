#!/usr/bin/env python3
"""Compare qloop's C API with libuv on the same workloads.

Builds a release tree (build/bench-c by default), runs perf/c/qloop-bench
once per (workload, implementation, repetition), interleaving the
implementations so that noise hits both, on one pinned CPU, and prints a
markdown table of median rates.  Progress goes to stderr.

    python3 perf/c_compare.py [--quick] [--reps N] [--json PATH]
                              [--builddir DIR] [--cpu N] [--only W,W]

A benchmark reports numbers, it does not judge: the exit status is 0 even
when a target is missed, and non-zero only when the build fails or a run
crashes.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (row id, workload, qloop impl, libuv impl, label, target ratio or None,
#  n, quick n)
ROWS = [
    ("timers_expire", "timers_expire", "qloop", "libuv",
     "{n} timers started, run until all expired (timers/s)", 1.2,
     1_000_000, 200_000),
    ("timers_cancel", "timers_cancel", "qloop", "libuv",
     "{n} timers started, then all cancelled (timers/s)", 1.5,
     1_000_000, 200_000),
    ("ring_batch", "ring_batch", "qloop", "libuv",
     "{n} ready callbacks, 1024 in flight (callbacks/s) [a]", None,
     20_000_000, 4_000_000),
    ("ring_chain", "ring_chain", "qloop", "libuv",
     "{n} ready callbacks, 1 in flight (callbacks/s) [a]", None,
     5_000_000, 1_000_000),
    ("pingpong", "pingpong", "qloop", "libuv",
     "{n} socketpair ping-pongs, 64 B, ql_io vs uv_poll (round trips/s)", 1.0,
     200_000, 50_000),
    ("pingpong_stream", "pingpong", "qloop", "libuv_stream",
     "{n} socketpair ping-pongs, 64 B, ql_io vs uv_read_start (round trips/s) [b]",
     None, 200_000, 50_000),
]

FOOTNOTES = """\
Medians of {reps} run(s) per cell; each run is a fresh process doing one
untimed warm-up round and one timed round; qloop and libuv runs alternate
(order flipped every repetition) on CPU {cpu}.  Timer deadlines are whole
milliseconds (libuv's resolution) from one seeded generator, so both heaps
sort the same (deadline, start order) set: expiry uses 1..{window} ms from
the start (the span covers init + start of all timers, then the loop until
the last one fired); cancellation uses distinct deadlines >= 1 s, started
in random order and stopped in another random order (one op = one timer
initialised, started and stopped).  Ping-pong: an AF_UNIX SOCK_STREAM
socketpair, both ends in the same loop, read()/write() in the callbacks.

[a] libuv has no call_soon.  The analogue is what libuv users build for
    "run this soon", Node's setImmediate: a FIFO of (function, argument),
    drained by a uv_check handle after each poll, with a uv_idle handle
    active while it is non-empty so the poll does not block; each drain runs
    only what was queued before it started, like qloop's ring pass.  The
    FIFO is a doubling power-of-two ring like qloop's, so the difference is
    the loop around it.  uv_timer_start(0) would measure the timer heap and
    uv_async_send a cross-thread wakeup, neither a ready queue.  With 1 in
    flight every callback costs one loop iteration (one zero-timeout
    epoll_wait on both sides).
[b] Extra row: libuv's stream API (uv_pipe_open + uv_read_start, replies
    with uv_try_write) against the same ql_io numbers (qloop has no stream
    layer in C); no target."""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run_cmd(cmd, **kw):
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, **kw)


def build(builddir, buildtype):
    if not shutil.which("meson"):
        log("meson not found")
        return None
    if not os.path.exists(os.path.join(builddir, "build.ninja")):
        opts = ["-Dtests=disabled", "-Dbench=enabled"]
        with open(os.path.join(ROOT, "meson_options.txt")) as f:
            if "option('python'" in f.read():
                opts.append("-Dpython=disabled")  # not needed here
        r = run_cmd(["meson", "setup", builddir, "--buildtype=" + buildtype]
                    + opts, cwd=ROOT, stdout=sys.stderr)
        if r.returncode != 0:
            log("meson setup failed (is libuv installed? pkg-config libuv)")
            return None
    r = run_cmd(["meson", "compile", "-C", builddir, "qloop-bench"], cwd=ROOT,
                stdout=sys.stderr)
    if r.returncode != 0:
        log("build failed")
        return None
    exe = os.path.join(builddir, "perf", "c", "qloop-bench")
    return exe if os.access(exe, os.X_OK) else None


def meson_buildtype(builddir):
    try:
        r = subprocess.run(["meson", "introspect", "--buildoptions", builddir],
                           stdout=subprocess.PIPE, text=True)
        for opt in json.loads(r.stdout):
            if opt["name"] == "buildtype":
                return opt["value"]
    except (OSError, ValueError, KeyError):
        pass
    return "?"


def bench_once(exe, workload, impl, n, timeout):
    cmd = [exe, workload, impl, "--n", str(n)]
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=sys.stderr,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"  {workload}/{impl}: timed out after {timeout} s")
        return None
    if r.returncode != 0:
        log(f"  {workload}/{impl}: exit status {r.returncode}")
        return None
    for line in reversed(r.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    log(f"  {workload}/{impl}: no result line")
    return None


def count_label(n):
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def fmt_rate(x):
    if x is None:
        return "n/a"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def summarize(runs):
    rates = [r["ops_per_s"] for r in runs]
    if not rates:
        return None
    med = statistics.median(rates)
    out = {
        "median_ops_per_s": med,
        "min_ops_per_s": min(rates),
        "max_ops_per_s": max(rates),
        "spread": (max(rates) - min(rates)) / med if med else 0.0,
        "runs": runs,
    }
    for key in ("ops_per_cpu_s", "phase1_ns", "phase2_ns", "iterations"):
        out["median_" + key] = statistics.median(r[key] for r in runs)
    # > 1 when the run lost the CPU (or slept in the poll, for expiry).
    out["median_wall_per_cpu"] = statistics.median(
        r["total_ns"] / r["cpu_ns"] for r in runs if r["cpu_ns"] > 0) \
        if any(r["cpu_ns"] > 0 for r in runs) else None
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="3 repetitions and smaller N")
    ap.add_argument("--reps", type=int, help="repetitions (default 5)")
    ap.add_argument("--json", metavar="PATH", help="write results as JSON")
    ap.add_argument("--builddir", default=os.path.join("build", "bench-c"),
                    help="build tree, relative to the repository root")
    ap.add_argument("--buildtype", default="release",
                    help="for a new build tree (default release)")
    ap.add_argument("--cpu", type=int, help="CPU to pin to (default: the "
                    "highest-numbered allowed one)")
    ap.add_argument("--only", help="comma-separated row ids: " +
                    ",".join(r[0] for r in ROWS))
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds per run before it counts as a crash")
    args = ap.parse_args()

    reps = args.reps or (3 if args.quick else 5)
    rows = ROWS
    if args.only:
        want = set(args.only.split(","))
        unknown = want - {r[0] for r in ROWS}
        if unknown:
            ap.error("unknown row id(s): " + ", ".join(sorted(unknown)))
        rows = [r for r in ROWS if r[0] in want]

    builddir = os.path.join(ROOT, args.builddir)
    exe = build(builddir, args.buildtype)
    if not exe:
        return 2

    listing = subprocess.run([exe, "--list"], stdout=subprocess.PIPE,
                             text=True)
    if listing.returncode != 0:
        log("qloop-bench --list failed")
        return 2
    info = json.loads(listing.stdout)
    buildtype = meson_buildtype(builddir)
    if "libuv" not in info["impls"]:
        log("qloop-bench was built without libuv: nothing to compare")
        return 2

    allowed = sorted(os.sched_getaffinity(0))
    cpu = args.cpu if args.cpu is not None else allowed[-1]
    os.sched_setaffinity(0, {cpu})  # the children inherit it
    log(f"pinned to CPU {cpu}; {reps} repetitions; "
        f"{'quick' if args.quick else 'full'} sizes")

    # One set of runs per (workload, impl, n); the stream row reuses the
    # qloop ping-pong runs rather than measuring them twice.
    results = {}
    crashed = False
    started = time.monotonic()
    for row_id, workload, q_impl, u_impl, label, target, n, qn in rows:
        n = qn if args.quick else n
        impls = [i for i in (q_impl, u_impl)
                 if (workload, i, n) not in results]
        for i in impls:
            results[(workload, i, n)] = []
        for rep in range(reps):
            order = impls if rep % 2 == 0 else list(reversed(impls))
            for impl in order:
                log(f"[{time.monotonic() - started:6.1f} s] {row_id}: {impl} "
                    f"rep {rep + 1}/{reps} (n={n})")
                res = bench_once(exe, workload, impl, n, args.timeout)
                if res is None:
                    crashed = True
                    continue
                log(f"    {fmt_rate(res['ops_per_s'])} ops/s")
                results[(workload, impl, n)].append(res)

    table = []
    for row_id, workload, q_impl, u_impl, label, target, n, qn in rows:
        n = qn if args.quick else n
        q = summarize(results[(workload, q_impl, n)])
        u = summarize(results[(workload, u_impl, n)])
        ratio = None
        if q and u and u["median_ops_per_s"]:
            ratio = q["median_ops_per_s"] / u["median_ops_per_s"]
        met = None if target is None or ratio is None else ratio >= target
        cpu_ratio = best_ratio = None
        if q and u and u["median_ops_per_cpu_s"]:
            cpu_ratio = q["median_ops_per_cpu_s"] / u["median_ops_per_cpu_s"]
        if q and u and u["max_ops_per_s"]:
            best_ratio = q["max_ops_per_s"] / u["max_ops_per_s"]
        table.append({"id": row_id, "workload": workload,
                      "label": label.format(n=count_label(n)),
                      "n": n, "qloop_impl": q_impl, "libuv_impl": u_impl,
                      "qloop": q, "libuv": u, "ratio": ratio,
                      "ratio_by_cpu_time": cpu_ratio,
                      "ratio_of_best_runs": best_ratio,
                      "target": target, "met": met})

    print(f"## qloop vs libuv {info.get('libuv_version', '?')} "
          f"({info.get('qloop_backend', '?')}, {platform.machine()}, "
          f"{buildtype} build in {args.builddir})")
    print()
    print("| workload | qloop ops/s | libuv ops/s | qloop/libuv | target "
          "| met? |")
    print("|---|---:|---:|---:|---:|:---:|")
    for row in table:
        q, u = row["qloop"], row["libuv"]
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None else "n/a"
        target = f">= {row['target']}x" if row["target"] else "none"
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        print(f"| {row['label']} | "
              f"{fmt_rate(q and q['median_ops_per_s'])} | "
              f"{fmt_rate(u and u['median_ops_per_s'])} | {ratio} | "
              f"{target} | {met} |")
    print()
    print("Details: the ratio of the best runs (least disturbed) and of "
          "median rates by CPU time instead of wall time; medians of "
          "wall/CPU time of the timed span (well above 1.0: the run lost "
          "the CPU to another process; for expiry it also counts time "
          "asleep in the poll), run-to-run spread (max - min) / median, and "
          "the timer phases in ms (init + start of all / the rest).")
    print()
    print("| row | ratio of best runs | ratio by CPU time "
          "| wall/CPU qloop, libuv | spread qloop, libuv | phases qloop "
          "| phases libuv |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in table:
        q, u = row["qloop"], row["libuv"]

        def phases(s):
            if not s or not s["median_phase1_ns"]:
                return "-"
            return (f"{s['median_phase1_ns'] / 1e6:.1f} / "
                    f"{s['median_phase2_ns'] / 1e6:.1f}")

        def spread(s):
            return f"{s['spread'] * 100:.0f}%" if s else "n/a"

        def wall_cpu(s):
            if not s or s["median_wall_per_cpu"] is None:
                return "n/a"
            return f"{s['median_wall_per_cpu']:.2f}"

        cr = row["ratio_by_cpu_time"]
        br = row["ratio_of_best_runs"]
        print(f"| {row['id']} | {f'{br:.2f}x' if br else 'n/a'} | "
              f"{f'{cr:.2f}x' if cr else 'n/a'} | "
              f"{wall_cpu(q)}, {wall_cpu(u)} | {spread(q)}, {spread(u)} | "
              f"{phases(q)} | {phases(u)} |")
    print()
    window = next((r["window_ms"] for rs in results.values() for r in rs
                   if r["workload"] == "timers_expire"), 8)
    print(FOOTNOTES.format(reps=reps, cpu=cpu, window=window))

    if args.json:
        doc = {
            "meta": {"reps": reps, "quick": args.quick, "cpu": cpu,
                     "builddir": args.builddir, "machine": platform.machine(),
                     "kernel": platform.release(), **info},
            "rows": table,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
        log(f"wrote {args.json}")
    if crashed:
        log("some runs failed (see above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
