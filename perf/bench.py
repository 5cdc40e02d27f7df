#!/usr/bin/env python3
"""The whole comparison: every benchmark suite in perf/, one report.

    python3 perf/bench.py [--quick] [--loops L,L] [--only S,S]
                          [--bench [SUITE:]B,...] [--results DIR]
                          [--update-readme]

Runs each suite script perf/<suite>.py that exists (a suite not there yet
is skipped with a message), one after the other, passing on --quick,
--loops and --bench; streams their progress to stderr with the elapsed time
and which suite of how many is running; writes into results/ each suite's
JSON (<suite>.json), its markdown (<suite>.md) and its progress log
(<suite>.log), then the combined results/summary.json, results/summary.md
and the chart results/chart.png (qloop, uvloop, rloop, asyncio normalised
to uvloop = 1, or to libuv for the C level, one panel per suite, targets
marked), and prints the summary table.  --update-readme also rewrites the
section of README.md between the bench markers and copies the chart to
docs/bench.png.

tools/bench is the command to use: it installs what is missing and builds
the release extension that the Python suites import (PYTHONPATH).

Exit status: 0 when every suite ran (a missed target is a result), 1 when a
suite crashed or wrote no usable JSON, 2 on bad arguments.
"""

import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from _common import log  # noqa: E402

ROOT = os.path.dirname(_common.PERF_DIR)

Suite = collections.namedtuple("Suite", "title quick_args full_args timeout")

# In the order they run.  quick_args: what --quick adds beyond the suite's
# own --quick, to keep the whole quick run near a minute (the summary and
# the log's last line say what each suite took; a first run, or one after
# a source change, also builds the C benchmark, the wheel and the build
# without diagnostics).  Every loop and every target row stays; the suites
# whose quick mode is long run one repetition per cell, HTTP only its
# target server (httptools).  floor, whose rows explain other suites'
# targets rather than hold its own, runs only its first benchmark.  A
# --bench here is a default that the command line's --bench for that suite
# replaces.
SUITES = {
    "c_compare": Suite("C level: qloop's reactor vs libuv",
                       ["--reps", "1"], [], 1800),
    "py_micro": Suite("Python micro-benchmarks",
                      ["--reps", "1"], [], 3600),
    "echo": Suite("TCP echo", ["--bench", "1k", "--reps", "1"], [], 1800),
    "udp": Suite("UDP echo", [], [], 1800),
    "process": Suite("Subprocesses and pipes", ["--reps", "1"], [], 1800),
    "http": Suite("HTTP servers under wrk", ["--bench", "httptools"], [],
                  1800),
    "memory": Suite("Memory per idle connection", [], [], 1800),
    "footprint": Suite("Footprint: wheel, extension, import time",
                       [], [], 900),
    # qloop against its build without diagnostics (which it builds) and
    # with them on; its own loops, so no --loops
    "diag": Suite("Diagnostics: their cost, same run", [], [], 1800),
    # the missed targets' servers under perf record, by DSO; quick: the
    # first of them only
    "floor": Suite("What bounds the missed targets: where the server's "
                   "CPU goes", ["--bench", "streams_1k"], [], 1800),
}
# Suites left out of the chart: floor's rows are parts of other suites'
# figures (µs per request by DSO) and bounds, not more comparisons.
NOT_CHARTED = ("floor",)
# The loops a row is normalised to in the chart, in order of preference.
REFERENCES = ("uvloop", "libuv")
# Column order of the tables (the C level compares with libuv).
COLUMNS = ("asyncio", "libuv", "uvloop", "rloop", "qloop-nodiag", "qloop",
           "qloop-batch", "qloop-diag", "c_server")
README_BEGIN = "<!-- bench:begin (tools/bench --update-readme rewrites this section) -->"
README_END = "<!-- bench:end -->"


# -- running the suites -------------------------------------------------------

class Progress:
    """Prefixes every progress line with the elapsed time and the suite."""

    def __init__(self, n_suites):
        self.started = time.monotonic()
        self.n = n_suites
        self.i = 0
        self.name = ""

    def elapsed(self):
        return time.monotonic() - self.started

    def line(self, text):
        log(f"[{self.elapsed():6.1f} s] ({self.i}/{self.n} {self.name}) {text}")


def suite_args(name, args, benches):
    """The command line of suite `name`."""
    script = os.path.join(_common.PERF_DIR, name + ".py")
    cmd = [sys.executable, script,
           "--json", os.path.join(args.results, name + ".json")]
    s = SUITES[name]
    extra = list(s.quick_args) if args.quick else list(s.full_args)
    if benches and "--bench" in extra:
        i = extra.index("--bench")
        del extra[i:i + 2]
    cmd += (["--quick"] if args.quick else []) + extra
    if name == "c_compare":  # qloop's C API against libuv: no loops option
        if benches:
            cmd += ["--only", ",".join(benches)]
        return cmd
    if args.loops and name != "diag":  # diag: qloop's builds, its own loops
        loops = args.loops.split(",")
        if name not in ("echo", "http"):  # the only ones with qloop-batch
            loops = [l for l in loops if l != _common.BATCH_VARIANT]
        cmd += ["--loops", ",".join(loops)]
    if benches:
        cmd += ["--bench", ",".join(benches)]
    return cmd


def run_suite(name, cmd, progress, results_dir, timeout):
    """Run one suite: stream its stderr as progress, keep its stdout (the
    markdown).  Returns (returncode or None on timeout, stdout text)."""
    log_path = os.path.join(results_dir, name + ".log")
    progress.line("$ " + " ".join(os.path.relpath(c, ROOT)
                                  if c.startswith(ROOT) else c for c in cmd))
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT)
        out = []
        reader = threading.Thread(target=lambda: out.append(proc.stdout.read()))
        reader.start()
        deadline = time.monotonic() + timeout
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            for line in proc.stderr:
                logf.write(line)
                progress.line(line.rstrip("\n"))
            proc.wait()
        except BaseException:  # Ctrl-C, SIGTERM: the suite goes too
            proc.kill()
            proc.wait()
            raise
        finally:
            timer.cancel()
        reader.join()
    if proc.returncode != 0 and time.monotonic() >= deadline:
        progress.line(f"timed out after {timeout} s")
        return None, "".join(out)
    return proc.returncode, "".join(out)


# -- reading the suites' JSON into one shape -----------------------------------

def parse_target(text):
    """"<= 0.85x uvloop" -> ("<=", 0.85); None when there is none."""
    if not text:
        return None
    m = re.match(r"\s*(<=|>=|<|>)\s*([0-9.]+)\s*x", str(text))
    return (m.group(1)[:1] + "=", float(m.group(2))) if m else None


def normalise(name, doc):
    """Rows in the contract's shape, whatever the suite wrote, each with
    "ref" (the loop it is normalised to) and "ratio" (qloop / ref)."""
    if name == "c_compare" and "suite" not in doc:
        rows = []
        for r in doc["rows"]:
            loops = {}
            for loop, key in (("libuv", "libuv"), ("qloop", "qloop")):
                s = r.get(key)
                loops[loop] = {
                    "stats": {"median": s["median_ops_per_s"],
                              "min": s["min_ops_per_s"],
                              "max": s["max_ops_per_s"],
                              "spread": s["spread"],
                              "n_runs": len(s["runs"])} if s else None,
                    "error": None if s else "no runs",
                    "extra": {"impl": r[f"{key}_impl"]}}
            rows.append({"bench": r["id"], "label": r["label"],
                         "metric": "ops_per_s", "unit": "ops/s",
                         "better": "higher", "loops": loops,
                         "qloop_vs_libuv": r["ratio"],
                         "qloop_vs_uvloop": None, "qloop_vs_asyncio": None,
                         "target": f">= {r['target']:g}x libuv"
                         if r["target"] else None, "met": r["met"]})
    elif name == "py_micro" and "suite" not in doc:
        rows = []
        for r in doc["rows"]:
            t = r.get("target_vs_uvloop")
            rows.append({"bench": r["bench"], "label": r["label"],
                         "metric": "ops_per_s", "unit": "ops/s",
                         "better": "higher",
                         "loops": {l: {"stats": c["stats"],
                                       "error": c["error"], "extra": {}}
                                   for l, c in r["loops"].items()},
                         "qloop_vs_uvloop": r["qloop_vs_uvloop"],
                         "qloop_vs_asyncio": r["qloop_vs_asyncio"],
                         "target": f">= {t:g}x uvloop" if t else None,
                         "met": r["met"]})
    else:
        rows = [dict(r) for r in doc["rows"]]
        for r in rows:  # echo's pure-C server: a column of its own
            c = r.get("c_server")
            if isinstance(c, dict) and "stats" in c:
                r["loops"] = {**r["loops"], "c_server": c}
    for r in rows:
        # a row may give qloop/ref without a column of ref's own (floor's
        # bound rows are such ratios)
        ref = next((l for l in REFERENCES if l in r["loops"] or
                    r.get(f"qloop_vs_{l}") is not None), None)
        r["ref"] = ref
        r["ratio"] = r.get(f"qloop_vs_{ref}") if ref else None
        if r["ratio"] is None and ref:
            r["ratio"] = ratio_of(r, "qloop", ref)
    return rows


def median(row, loop):
    c = row["loops"].get(loop)
    return c["stats"]["median"] if c and c.get("stats") else None


def ratio_of(row, a, b):
    x, y = median(row, a), median(row, b)
    return x / y if x is not None and y else None


# -- the report ---------------------------------------------------------------

def suite_times(summary):
    """'c_compare 5 s, py_micro 14 s, ...': what each suite took."""
    return ", ".join(f"{name} {s['elapsed_s']:.0f} s"
                     for name, s in summary["suites"].items()
                     if s.get("elapsed_s"))


def summary_markdown(summary):
    meta = summary["meta"]
    if summary.get("composed"):
        how = ("composed by `tools/bench --report-only` from each suite's "
               "latest results (the date of each is under its heading); "
               f"the last run was `{summary['command']}`, "
               f"{'quick' if summary['quick'] else 'full'}")
    else:
        how = (f"`{summary['command']}`, "
               f"{'quick' if summary['quick'] else 'full'} run, "
               f"{summary['elapsed_s']:.0f} s")
        took = suite_times(summary)
        if took:
            how += f" ({took})"
    out = [f"Measured {meta['date']} on {meta['cpu_model']} "
           f"({meta['n_cpus']} CPUs, load average {meta['loadavg']} at the "
           f"start), Linux {meta['kernel']}, {meta['implementation']} "
           f"{meta['python']}; {how}.", ""]
    for name, s in summary["suites"].items():
        title = SUITES[name].title
        if s["status"] != "ok":
            out += [f"### {title} (`{name}`)", "", f"Not run: {s['why']}", ""]
            continue
        rows = s["rows"]
        present = {l for r in rows for l in r["loops"]}
        cols = [l for l in COLUMNS if l in present] + \
            sorted(present - set(COLUMNS))
        ref = next((l for l in REFERENCES if l in present), None)
        header = ["benchmark", "unit"] + cols + \
            ([f"qloop/{ref}"] if ref else []) + ["target", "met?"]
        table = []
        for r in rows:
            cells = []
            for l in cols:
                c = r["loops"].get(l)
                if c is None:
                    cells.append("")
                elif c.get("stats") and r["unit"] == "x":  # a ratio row
                    cells.append(_common.fmt_ratio_range(c["stats"]))
                elif c.get("stats"):
                    cells.append(_common.fmt_value(c["stats"]["median"],
                                                   r["unit"]).rsplit(" ", 1)[0]
                                 if r["unit"] not in ("B",) else
                                 _common.fmt_value(c["stats"]["median"], "B"))
                else:
                    cells.append("n/a")
            unit = r["unit"] if r["unit"] != "B" else "bytes"
            table.append([r["label"], f"{unit} ({'↑' if r['better'] == 'higher' else '↓'})"]
                         + cells +
                         ([_common.fmt_ratio(r["ratio"])] if ref else []) +
                         [r["target"] or "", _common.fmt_met(r["met"])])
        when = s.get("measured")
        if summary.get("composed") and when:
            out += [f"### {title} (`{name}`, measured {when})", ""]
        else:
            out += [f"### {title} (`{name}`)", ""]
        out += [_common.markdown_table(header, table,
                                       "ll" + "r" * len(cols) +
                                       ("r" if ref else "") + "lc"), ""]
        failed = [(r["label"], l, c["error"]) for r in rows
                  for l, c in r["loops"].items()
                  if not c.get("stats") and c.get("error")]
        if failed:
            out.append("n/a: " + "; ".join(
                f"{l} in {label!r}: {why}" for label, l, why in failed[:6]) +
                ("; ..." if len(failed) > 6 else "") +
                f" (details in results/{name}.md)")
            out.append("")
    out.append("↑ higher is better, ↓ lower is better.  Every figure is a "
               "median of several runs with the loops interleaved run by "
               "run; the ratios come from the same run.  Full tables with "
               "spreads and what each row times: results/<suite>.md.")
    return "\n".join(out) + "\n"


def draw_chart(summary, path):
    """One panel per suite: per row, each loop's median / the reference
    loop's (log scale), targets as red marks.  Returns False (and says why)
    when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        log(f"no chart: {e}")
        return False
    panels = []
    for name, s in summary["suites"].items():
        if s["status"] != "ok" or name in NOT_CHARTED:
            continue
        rows = [r for r in s["rows"] if r["ref"] and median(r, r["ref"])]
        if rows:
            panels.append((name, rows))
    if not panels:
        log("no chart: no row has a reference loop")
        return False
    colours = {"asyncio": "#9e9e9e", "libuv": "#4c72b0", "uvloop": "#4c72b0",
               "rloop": "#dd8452", "qloop": "#55a868",
               "qloop-batch": "#a6d8a0", "c_server": "#8172b2"}
    other = "#8172b2"  # a column without a colour of its own
    heights = [max(len(rows), 1) * 0.55 + 0.9 for _, rows in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, sum(heights)),
                             gridspec_kw={"height_ratios": heights},
                             squeeze=False)
    lo, hi = 0.5, 2.0
    shown = set()
    for ax, (name, rows) in zip(axes[:, 0], panels):
        present = {l for r in rows for l in r["loops"]}
        loops = [l for l in COLUMNS if l in present]
        width = 0.8 / len(loops)
        labels = []
        for i, r in enumerate(rows):
            labels.append(textwrap.fill(r["label"], 40) + f"\n({r['unit']}, "
                          f"{'higher' if r['better'] == 'higher' else 'lower'}"
                          " is better)")
            ref = median(r, r["ref"])
            for j, l in enumerate(loops):
                v = median(r, l)
                if v is None:
                    continue
                x = v / ref
                lo, hi = min(lo, x), max(hi, x)
                y = i - 0.4 + width * (j + 0.5)
                ax.barh(y, x, height=width, color=colours.get(l, other))
                shown.add(l)
            t = parse_target(r.get("target"))
            if t:
                ax.plot([t[1], t[1]], [i - 0.45, i + 0.45], color="#c44e52",
                        lw=2)
                lo, hi = min(lo, t[1]), max(hi, t[1])
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", lw=0.8)
        ref_name = rows[0]["ref"]
        ax.set_title(f"{SUITES[name].title}: normalised to {ref_name} = 1 "
                     "(red: qloop's target)", fontsize=9, loc="left")
    for ax, _ in zip(axes[:, 0], panels):
        ax.set_xscale("log")
        ax.set_xlim(lo / 1.3, hi * 1.3)
        ticks = [t for t in (0.1, 0.2, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10,
                             20) if lo / 1.3 <= t <= hi * 1.3]
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks], fontsize=7)
        ax.grid(axis="x", alpha=0.3)
    meta = summary["meta"]
    fig.suptitle(f"qloop vs uvloop, rloop, asyncio ({meta['cpu_model']}, "
                 f"{meta['n_cpus']} CPUs, {meta['implementation']} "
                 f"{meta['python']}, {meta['date'][:10]}"
                 f"{', quick run' if summary['quick'] else ''})", fontsize=9, y=1 - 0.1 / sum(heights))
    from matplotlib.patches import Patch
    legend = [l for l in COLUMNS if l in shown]
    fig.legend([Patch(color=colours.get(l, other)) for l in legend], legend,
               loc="upper center", ncol=len(legend), fontsize=8,
               bbox_to_anchor=(0.5, 1 - 0.35 / sum(heights)), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / sum(heights)))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def update_readme(summary_md, chart_ok, results_dir, root=ROOT):
    readme = os.path.join(root, "README.md")
    with open(readme) as f:
        text = f.read()
    if README_BEGIN not in text or README_END not in text:
        log("README.md has no bench markers; not updated")
        return False
    body = [README_BEGIN, ""]
    if chart_ok:
        os.makedirs(os.path.join(root, "docs"), exist_ok=True)
        shutil.copyfile(os.path.join(results_dir, "chart.png"),
                        os.path.join(root, "docs", "bench.png"))
        body += ["![qloop against uvloop, rloop and asyncio](docs/bench.png)",
                 ""]
    body += [summary_md.rstrip(), "", README_END]
    head, rest = text.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    with open(readme, "w") as f:
        f.write(head + "\n".join(body) + tail)
    log("updated README.md" + (" and docs/bench.png" if chart_ok else ""))
    return True


# -- main ---------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="suites: " + ", ".join(SUITES))
    ap.add_argument("--quick", action="store_true",
                    help="every suite's quick mode (about a minute in all)")
    ap.add_argument("--loops", help="comma-separated, from " +
                    ",".join(_common.LOOPS) + " (default: all)")
    ap.add_argument("--only", help="comma-separated suites (default: all)")
    ap.add_argument("--bench", help="comma-separated benchmarks, each "
                    "SUITE:NAME, or NAME alone when --only names one suite")
    ap.add_argument("--results", default=os.path.join(ROOT, "results"),
                    help="output directory (default results/)")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: remake the summary, the chart (and "
                    "with --update-readme the README section) from the "
                    "suites' JSON already in --results")
    ap.add_argument("--update-readme", action="store_true",
                    help="rewrite README.md's bench section, copy the chart "
                    "to docs/bench.png")
    args = ap.parse_args()
    # SIGTERM unwinds like Ctrl-C, so that the running suite is killed too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

    try:
        if args.loops:
            _common.parse_names(args.loops, _common.STREAM_LOOPS, "loop")
        suites = (_common.parse_names(args.only, tuple(SUITES), "suite")
                  if args.only else list(SUITES))
    except ValueError as e:
        ap.error(str(e))
    benches = {}
    for item in (args.bench or "").split(","):
        item = item.strip()
        if not item:
            continue
        if ":" in item:
            suite, bench = item.split(":", 1)
        elif len(suites) == 1:
            suite, bench = suites[0], item
        else:
            ap.error(f"--bench {item}: say which suite (SUITE:{item}) or "
                     "choose one with --only")
        if suite not in SUITES:
            ap.error(f"--bench {item}: unknown suite {suite}")
        benches.setdefault(suite, []).append(bench)
    if benches:
        suites = [s for s in suites if s in benches]

    args.results = os.path.abspath(args.results)  # the suites run in ROOT
    os.makedirs(args.results, exist_ok=True)
    progress = Progress(len(suites))
    meta = _common.machine_meta(None)
    meta["n_cpus"] = os.cpu_count()
    meta["loadavg"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    del meta["cpu"]
    command = "tools/bench" + "".join(
        f" {a}" for a in sys.argv[1:] if a != "--update-readme")
    summary = {"meta": meta, "command": command, "quick": args.quick,
               "loops": args.loops or ",".join(_common.LOOPS),
               "suites": {}}
    failed = []
    for i, name in enumerate(suites, 1):
        progress.i, progress.name = i, name
        script = os.path.join(_common.PERF_DIR, name + ".py")
        if not os.path.exists(script):
            progress.line(f"skipped: perf/{name}.py is not there (yet)")
            summary["suites"][name] = {"status": "missing",
                                       "why": f"perf/{name}.py not found"}
            continue
        json_path = os.path.join(args.results, name + ".json")
        if args.report_only:
            if not os.path.exists(json_path):
                summary["suites"][name] = {
                    "status": "missing",
                    "why": f"no {os.path.relpath(json_path, ROOT)}"}
                continue
            rc, took = 0, 0.0
        else:
            if os.path.exists(json_path):
                os.remove(json_path)  # never report a stale file
            t0 = time.monotonic()
            rc, out = run_suite(name, suite_args(name, args,
                                                 benches.get(name)),
                                progress, args.results, SUITES[name].timeout)
            took = time.monotonic() - t0
            with open(os.path.join(args.results, name + ".md"), "w") as f:
                f.write(out)
        entry = {"status": "ok", "returncode": rc, "elapsed_s": took,
                 "json": os.path.relpath(json_path, ROOT)}
        why = None
        if rc != 0:
            why = ("timed out" if rc is None else f"exit status {rc}")
        try:
            with open(json_path) as f:
                doc = json.load(f)
            entry["rows"] = normalise(name, doc)
            entry["meta"] = doc.get("meta")
            entry["measured"] = (doc.get("meta") or {}).get("date") or \
                time.strftime("%Y-%m-%d %H:%M:%S %z",
                              time.localtime(os.path.getmtime(json_path)))
            if doc.get("unavailable"):
                entry["unavailable"] = doc["unavailable"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            why = (why + ", " if why else "") + \
                f"no usable JSON ({_common.first_line(e)})"
        if why and args.report_only:
            progress.line(f"unusable {entry['json']}: {why}")
            failed.append(name)
            entry["why"] = why
            if "rows" not in entry:
                entry["status"] = "crashed"
        elif why:
            progress.line(f"FAILED: {why} (log: results/{name}.log)")
            failed.append(name)
            entry["why"] = why
            if "rows" not in entry:
                entry["status"] = "crashed"
        elif args.report_only:
            progress.line(f"read {entry['json']}")
        else:
            progress.line(f"done in {took:.1f} s")
        summary["suites"][name] = entry
    summary["elapsed_s"] = progress.elapsed()
    if args.report_only:  # the run's figures, not this command's
        try:
            with open(os.path.join(args.results, "summary.json")) as f:
                old = json.load(f)
            summary.update({k: old[k] for k in
                            ("meta", "command", "quick", "elapsed_s")})
            summary["composed"] = True
        except (OSError, ValueError, KeyError):
            summary["elapsed_s"] = sum(
                (s.get("meta") or {}).get("elapsed_s", 0) or 0
                for s in summary["suites"].values())
    summary["failed"] = failed

    progress.name = "report"
    md = summary_markdown(summary)
    _common.write_json(os.path.join(args.results, "summary.json"), summary)
    with open(os.path.join(args.results, "summary.md"), "w") as f:
        f.write("# qloop benchmarks\n\n" + md)
    chart_ok = draw_chart(summary, os.path.join(args.results, "chart.png"))
    progress.line("wrote results/summary.json, results/summary.md" +
                  (", results/chart.png" if chart_ok else ""))
    if args.update_readme:
        update_readme(md, chart_ok, args.results)
    sys.stdout.write(md)
    if not args.report_only:
        log(f"took {summary['elapsed_s']:.0f} s: {suite_times(summary)}")
    if failed:
        log(f"suites that failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
