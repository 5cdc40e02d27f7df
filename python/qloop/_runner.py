"""python -m qloop run: a script's asyncio.run() on qloop, with diagnostics.

    python -m qloop run [--watchdog MS] [--slow MS] [--report FILE]
                        script.py [args...]

The script runs as __main__ (runpy), with sys.argv = [script.py, args...].
Its asyncio.run(...) (and asyncio.new_event_loop()) get qloop loops: by
qloop's event loop policy before Python 3.14, by asyncio.Runner's default
loop factory from 3.14.  At exit a report goes to stderr: the loop lag
percentiles, the slowest callbacks, and each blocking call site the
watchdog caught, grouped by the innermost line of the user's own code,
with its count and total blocked time.  --report FILE also writes it as
JSON to FILE and a PNG timeline of the loop lag next to it (FILE with
.png as suffix; needs matplotlib).
"""

import argparse
import asyncio
import importlib.util
import json
import os
import runpy
import sys
import time
import weakref

from . import _diagnostics

SAMPLE_INTERVAL = 0.1  # seconds between the timeline's samples


def _percentile(buckets, total, max_ns, p):
    """As stats()['loop_lag'] computes p50/p99: interpolated in its bucket."""
    if not total:
        return 0
    target = p * total
    cum = 0
    for k, c in enumerate(buckets):
        if c and cum + c >= target:
            lo = 0 if k == 0 else (1 << (k - 1)) * 1000
            hi = (1 << k) * 1000
            return min(int(lo + (hi - lo) * (target - cum) / c), max_ns)
        cum += c
    return max_ns


class Collector:
    """What the run gathers: loops' stats, slow callbacks, stalls, samples."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.loops = weakref.WeakKeyDictionary()  # loop -> last stats()
        self.samplers = weakref.WeakKeyDictionary()
        self.slow = []
        self.stalls = []
        self.samples = []  # (t since start, sampler's own lag s, interval max lag s)

    def add_slow(self, report):
        self.slow.append(report)

    def add_stall(self, report):
        self.stalls.append(report)

    def track(self, loop):
        """Called as each loop starts running: keep its stats, sample it."""
        if loop in self.samplers:
            return
        self.samplers[loop] = True
        self.loops[loop] = loop.stats()
        state = {"prev": self.loops[loop]["loop_lag"]["buckets_us"]}

        def sample(expected):
            now = loop.time()
            st = loop.stats()
            self.loops[loop] = st
            buckets = st["loop_lag"]["buckets_us"]
            delta = [a - b for a, b in zip(buckets, state["prev"])]
            state["prev"] = buckets
            top = max((k for k, c in enumerate(delta) if c), default=None)
            interval_max = 0.0 if top is None else (
                min((1 << top) * 1e-3, st["loop_lag"]["max_ns"] / 1e6) / 1e3)
            self.samples.append((time.monotonic() - self.t0,
                                 max(0.0, now - expected), interval_max))
            loop.call_at(expected + SAMPLE_INTERVAL, sample,
                         expected + SAMPLE_INTERVAL)

        first = loop.time() + SAMPLE_INTERVAL
        loop.call_at(first, sample, first)

    def finish(self):
        """Last stats of every loop still alive (a closed loop keeps them)."""
        for loop in list(self.loops):
            try:
                self.loops[loop] = loop.stats()
            except Exception:
                pass

    # -- the report ---------------------------------------------------------

    def lag(self):
        buckets = [0] * 32
        max_ns = 0
        for st in self.loops.values():
            lag = st["loop_lag"]
            buckets = [a + b for a, b in zip(buckets, lag["buckets_us"])]
            max_ns = max(max_ns, lag["max_ns"])
        total = sum(buckets)
        out = {"count": total, "max_ms": max_ns / 1e6,
               "buckets_us": buckets}
        for name, p in (("p50", .5), ("p90", .9), ("p99", .99),
                        ("p999", .999)):
            out[name + "_ms"] = _percentile(buckets, total, max_ns, p) / 1e6
        return out

    def sites(self):
        groups = {}
        for r in self.stalls:
            if r.site is not None:
                key = (r.site.filename, r.site.lineno, r.site.name)
                line = r.site.line
            else:
                key, line = ("<not captured>", 0, "?"), None
            g = groups.setdefault(key, {
                "file": key[0], "line": key[1], "function": key[2],
                "code": line, "count": 0, "total_s": 0.0, "max_s": 0.0})
            g["count"] += 1
            g["total_s"] += r.duration or 0.0
            g["max_s"] = max(g["max_s"], r.duration or 0.0)
        return sorted(groups.values(), key=lambda g: -g["total_s"])

    def as_dict(self, script, argv, wd_ms, slow_ms):
        slow = sorted(self.slow, key=lambda r: -r.duration)[:20]
        return {
            "script": script, "argv": argv,
            "watchdog_ms": wd_ms, "slow_callback_ms": slow_ms,
            "wall_s": time.monotonic() - self.t0,
            "start_monotonic_s": self.t0,
            "loop_lag": self.lag(),
            "slowest_callbacks": [
                {"callback": r.callback, "duration_s": r.duration,
                 "task": r.task_name,
                 "await_stack": [list(f) for f in (r.await_stack or [])]}
                for r in slow],
            "blocking_sites": self.sites(),
            "stalls": [
                {"start_s": r.start, "duration_s": r.duration,
                 "site": r.where(),
                 "stack": None if r.stack is None else
                 [[f.filename, f.lineno, f.name, f.line] for f in r.stack]}
                for r in self.stalls],
            "timeline": [{"t_s": t, "sampler_lag_s": lag,
                          "interval_max_lag_s": m}
                         for t, lag, m in self.samples],
        }

    def format(self, d):
        lag = d["loop_lag"]
        out = [f"qloop run report: {d['script']} ({d['wall_s']:.2f} s)"]
        out.append(
            f"loop lag over {lag['count']} timers: p50 {lag['p50_ms']:.3f} ms"
            f", p90 {lag['p90_ms']:.3f} ms, p99 {lag['p99_ms']:.3f} ms, "
            f"max {lag['max_ms']:.3f} ms")
        out.append(f"slowest callbacks (>= {d['slow_callback_ms']} ms):")
        if not d["slowest_callbacks"]:
            out.append("  none")
        for r in d["slowest_callbacks"][:10]:
            where = ""
            if r["task"] is not None:
                st = [f for f in r["await_stack"]
                      if not _diagnostics._is_library(f[0])] or \
                    r["await_stack"]
                where = f"  task {r['task']!r}" + (
                    f" awaiting at {st[-1][0]}:{st[-1][1]}" if st else "")
            out.append(f"  {r['duration_s'] * 1e3:9.1f} ms  {r['callback']}"
                       f"{where}")
        out.append(f"blocking call sites (loop not back to poll within "
                   f"{d['watchdog_ms']} ms):")
        if not d["blocking_sites"]:
            out.append("  none")
        for g in d["blocking_sites"]:
            out.append(f"  {g['count']:4d} x  total {g['total_s'] * 1e3:9.1f}"
                       f" ms  max {g['max_s'] * 1e3:8.1f} ms  "
                       f"{g['file']}:{g['line']} in {g['function']}")
            if g["code"]:
                out.append(f"             {g['code']}")
        return "\n".join(out)


def write_png(path, d):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tl = d["timeline"]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot([p["t_s"] for p in tl], [p["sampler_lag_s"] * 1e3 for p in tl],
            marker=".", label="sampler timer lag")
    ax.plot([p["t_s"] for p in tl],
            [p["interval_max_lag_s"] * 1e3 for p in tl],
            label="max timer lag in interval (bucket bound)", alpha=0.7)
    t0 = d["start_monotonic_s"]
    for s in d["stalls"]:
        if s["duration_s"] is not None:
            start = s["start_s"] - t0
            ax.axvspan(start, start + s["duration_s"], color="red",
                       alpha=0.15)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("loop lag (ms)")
    ax.set_title(f"qloop run: {os.path.basename(d['script'])} "
                 "(red: stalls caught by the watchdog)")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _install_qloop():
    import qloop
    if sys.version_info < (3, 14):
        asyncio.set_event_loop_policy(qloop.EventLoopPolicy())
        return
    # 3.14+: policies are deprecated; asyncio.run() makes its loop with
    # Runner's loop_factory, asyncio.new_event_loop() with the events one.
    from asyncio import events, runners
    init = runners.Runner.__init__

    def __init__(self, *, debug=None, loop_factory=None):
        init(self, debug=debug, loop_factory=loop_factory or
             qloop.new_event_loop)
    runners.Runner.__init__ = __init__
    asyncio.new_event_loop = events.new_event_loop = qloop.new_event_loop


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m qloop",
        description="Run an asyncio script on qloop with diagnostics on.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run script.py on qloop")
    run.add_argument("--watchdog", type=float, default=100.0, metavar="MS",
                     help="report stalls longer than MS ms (default 100)")
    run.add_argument("--slow", type=float, default=100.0, metavar="MS",
                     help="report callbacks of MS ms or more (default 100)")
    run.add_argument("--report", metavar="FILE",
                     help="also write the report as JSON to FILE and a PNG "
                     "timeline of the loop lag to FILE with suffix .png")
    run.add_argument("script")
    run.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    if ns.watchdog <= 0 or ns.slow < 0:
        parser.error("--watchdog must be > 0 and --slow >= 0")
    if ns.report and importlib.util.find_spec("matplotlib") is None:
        print("python -m qloop run: --report draws its lag timeline with "
              "matplotlib, which is not installed (pip install matplotlib)",
              file=sys.stderr)
        return 2
    if not _diagnostics.HAS_DIAGNOSTICS:
        print(f"python -m qloop run: {_diagnostics._NO_DIAGNOSTICS}",
              file=sys.stderr)
        return 2
    if not os.path.exists(ns.script):
        print(f"python -m qloop run: {ns.script}: no such file",
              file=sys.stderr)
        return 2

    import logging
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING,
                            format="%(levelname)s:%(name)s: %(message)s")
    collector = Collector()
    _diagnostics._config.collector = collector
    _diagnostics.diagnostics(slow_callback=ns.slow / 1e3,
                             watchdog=ns.watchdog / 1e3)
    _install_qloop()
    sys.argv = [ns.script, *ns.args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(ns.script)))
    status = 0
    try:
        runpy.run_path(ns.script, run_name="__main__")
    except SystemExit as e:
        status = e.code
    except BaseException:
        import traceback
        traceback.print_exc()
        status = 1
    finally:
        collector.finish()
        _diagnostics._config.collector = None
        d = collector.as_dict(os.path.abspath(ns.script), ns.args,
                              ns.watchdog, ns.slow)
        print(collector.format(d), file=sys.stderr)
        if ns.report:
            with open(ns.report, "w") as f:
                json.dump(d, f, indent=1)
            png = os.path.splitext(ns.report)[0] + ".png"
            write_png(png, d)
            print(f"report: {ns.report}, timeline: {png}", file=sys.stderr)
    return status
