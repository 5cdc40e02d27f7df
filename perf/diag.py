#!/usr/bin/env python3
"""What qloop's diagnostics cost: three builds/settings side by side.

    python3 perf/diag.py [--quick] [--reps N] [--bench B,B] [--json PATH]
                         [--markdown PATH] [--nodiag-path DIR]
                         [--callgrind | --no-callgrind]

The loops, in one run, interleaved run by run:
  qloop-nodiag  the build without diagnostics (meson -Ddiagnostics=false),
                configured like the qloop on PYTHONPATH (its buildtype,
                backend and Python) in build/<its build dir>-nodiag and
                built there when missing or out of date; --nodiag-path
                names an importable one instead
  qloop         the qloop on PYTHONPATH (tools/bench: build/release),
                diagnostics off, as a user gets it
  qloop-diag    the same build with the stall watchdog and slow-callback
                reports on, both at 100 ms (qloop.diagnostics(...), what
                QLOOP_WATCHDOG_MS=100 QLOOP_SLOW_CALLBACK_MS=100 do)

The benchmarks are the other suites' own code, imported, not copied:
  call_soon     perf/py_micro.py's call_soon cell (fresh child per run)
  echo          perf/echo.py's asyncio.Protocol echo, 1 KiB, server CPU
                per request (a fresh server per run, load from C)

Besides each loop's figure, two rows per benchmark give the cost ratios of
the same repetition (so the machine's drift cancels), with their range
over the repetitions: "diagnostics off vs compiled out" (qloop /
qloop-nodiag; met when the range holds 1.0, i.e. the difference is within
the run-to-run noise) and "diagnostics on vs off" (qloop-diag / qloop;
target <= 1.03).  In a full run, when valgrind is there, callgrind also
counts the instructions per call_soon callback of each (n=120k minus
n=20k, so that start-up cancels): deterministic where wall time is not.

A benchmark reports numbers, it does not judge: the exit status is 0 when
a target is missed or a cell fails, and non-zero only on an internal error.
"""

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
import echo  # noqa: E402
import py_micro  # noqa: E402
from _common import log  # noqa: E402

ROOT = os.path.dirname(_common.PERF_DIR)
VARIANTS = ("qloop-nodiag", "qloop", "qloop-diag")
BENCHES = ("call_soon", "echo")
ECHO_BENCH = ("protocol", "1k")
ON_TARGET = 1.03
# callgrind: two sizes of the call_soon cell; the difference is per callback
CALLGRIND_N = (120_000, 20_000)


# -- the build without diagnostics --------------------------------------------

def default_build_dir():
    """The meson build directory of the qloop the children import (found on
    this process's sys.path, which PYTHONPATH sets), or None."""
    import importlib.util
    spec = importlib.util.find_spec("qloop")
    if spec is None or not spec.submodule_search_locations:
        return None
    for d in spec.submodule_search_locations:
        for so in glob.glob(os.path.join(d, "_qloop*.so")):
            build = os.path.dirname(os.path.dirname(os.path.realpath(so)))
            if os.path.isdir(os.path.join(build, "meson-info")):
                return build
    return None


def nodiag_options(build):
    """meson setup options: the default build's, diagnostics off."""
    opts = {"buildtype": "release", "python_exe": sys.executable}
    if build:
        with open(os.path.join(build, "meson-info",
                               "intro-buildoptions.json")) as f:
            have = {o["name"]: o["value"] for o in json.load(f)}
        for k in ("buildtype", "optimization", "debug", "b_ndebug", "b_lto",
                  "poll_backend", "python_exe"):
            if k in have and have[k] != "":
                opts[k] = have[k]
    out = []
    for k, v in sorted(opts.items()):
        v = str(v).lower() if isinstance(v, bool) else str(v)
        out.append(f"--{k}={v}" if k == "buildtype" else f"-D{k}={v}")
    return out + ["-Ddiagnostics=false", "-Dtests=disabled",
                  "-Dbench=disabled"]


def ensure_nodiag_build():
    """(importable directory, None) or (None, why): configure (when the
    options changed) and build (ninja: a no-op when up to date) the build
    without diagnostics next to the default build, then link an in-place
    package as tools/inplace.sh does."""
    base = default_build_dir()
    name = (os.path.basename(base) if base else "release") + "-nodiag"
    build = os.path.join(ROOT, "build", name)
    opts = nodiag_options(base)
    stamp = os.path.join(build, ".qloop-args")
    meson, ninja = shutil.which("meson"), shutil.which("ninja")
    if not meson or not ninja:
        return None, "meson and ninja are needed to build it (tools/bench " \
            "installs them)"
    want = " ".join(opts)
    try:
        with open(stamp) as f:
            same = f.read().strip() == want
    except OSError:
        same = False
    steps = []
    if not same or not os.path.exists(os.path.join(build, "build.ninja")):
        shutil.rmtree(build, ignore_errors=True)
        steps.append([meson, "setup", build, ROOT, *opts])
    steps.append([ninja, "-C", build])
    for cmd in steps:
        log("$ " + " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT)
                            else c for c in cmd))
        r = subprocess.run(cmd, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            tail = r.stdout.strip().splitlines()[-1:] or ["?"]
            return None, f"{os.path.basename(cmd[0])} failed: {tail[0][:200]}"
        if cmd[1] == "setup":
            with open(stamp, "w") as f:
                f.write(want + "\n")
    so = glob.glob(os.path.join(build, "python", "_qloop*.so"))
    if not so:
        return None, f"no extension in {build}/python"
    pkg = os.path.join(build, "inplace", "qloop")
    shutil.rmtree(pkg, ignore_errors=True)
    os.makedirs(pkg)
    src = os.path.join(ROOT, "python", "qloop")
    for f in sorted(os.listdir(src)):
        os.symlink(os.path.join(src, f), os.path.join(pkg, f))
    os.symlink(os.path.abspath(so[0]),
               os.path.join(pkg, os.path.basename(so[0])))
    return os.path.dirname(pkg), None


# -- callgrind -----------------------------------------------------------------

def callbacks_run(n):
    """Callbacks of py_micro's call_soon child of size n, warm-up included."""
    warm = max(n // 10 // py_micro.BATCH * py_micro.BATCH, py_micro.BATCH)
    return n + warm


def callgrind_instructions(loop, n, timeout):
    """Instructions of one py_micro call_soon child under callgrind."""
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
           sys.executable, os.path.join(_common.PERF_DIR, "py_micro.py"),
           "--child", loop, "call_soon", str(n)]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=timeout, env=_common.child_env())
    m = re.search(r"Collected\s*:\s*(\d+)", r.stderr)
    if r.returncode != 0 or not m or '"status": "ok"' not in r.stdout:
        raise RuntimeError(f"callgrind run failed (exit {r.returncode}): "
                           f"{(r.stdout + r.stderr).strip()[-200:]}")
    return int(m.group(1))


def run_callgrind(loops, reps, timeout):
    """{loop: {"values": [instructions per callback], "error": ...}}"""
    big, small = CALLGRIND_N
    per = callbacks_run(big) - callbacks_run(small)
    cells = {l: {"values": [], "error": None} for l in loops}
    for rep in range(reps):
        for loop in loops[rep % len(loops):] + loops[:rep % len(loops)]:
            c = cells[loop]
            if c["error"]:
                continue
            log(f"callgrind: {loop} rep {rep + 1}/{reps}")
            try:
                diff = (callgrind_instructions(loop, big, timeout) -
                        callgrind_instructions(loop, small, timeout))
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                c["error"] = _common.first_line(e)
                log(f"    failed: {c['error']}")
                continue
            c["values"].append(diff / per)
            log(f"    {diff / per:.1f} instructions per callback")
    return cells


# -- rows ----------------------------------------------------------------------

def paired(a, b):
    """Ratios a[i] / b[i] of the same repetitions: {rep: value} each."""
    return [a[k] / b[k] for k in sorted(a) if k in b and b[k]]


def value_row(bench, label, metric, unit, better, cells, extra=None):
    """cells: {loop: {"values": [...], "error": str or None}}"""
    loops = {}
    for l, c in cells.items():
        st = _common.summarize(c.get("values") or [])
        loops[l] = {"stats": st,
                    "error": None if st else (c.get("error") or "no runs"),
                    "extra": (extra or {}).get(l, {})}
    return {"bench": bench, "label": label, "metric": metric, "unit": unit,
            "better": better, "loops": loops, "qloop_vs_uvloop": None,
            "qloop_vs_asyncio": None, "target": None, "met": None}


def ratio_rows(bench, what, costs, noise=True):
    """The two cost-ratio rows of one benchmark.  costs: {loop: {rep:
    cost}} (lower is better), or a loop missing / with an error str.
    noise=False: no "within noise" target (for counts that have none)."""
    out = []
    for num, den, name, target in (
            ("qloop", "qloop-nodiag", "diagnostics off vs compiled out",
             "within noise" if noise else None),
            ("qloop-diag", "qloop", "diagnostics on vs off",
             f"<= {ON_TARGET:g}x")):
        a, b = costs.get(num), costs.get(den)
        ratios = paired(a, b) if isinstance(a, dict) and \
            isinstance(b, dict) else []
        st = _common.summarize(ratios)
        err = None
        if not st:
            err = next((c for c in (a, b) if isinstance(c, str)),
                       "no common repetition")
        met = None
        if st and target == "within noise":
            met = st["min"] <= 1.0 <= st["max"]
        elif st and target:
            met = st["median"] <= ON_TARGET
        out.append({
            "bench": f"{bench}_{'off_vs_nodiag' if den == 'qloop-nodiag' else 'on_vs_off'}",
            "label": f"{what}: {name} ({num} / {den}, same run)",
            "metric": "cost_ratio", "unit": "x", "better": "lower",
            "loops": {num: {"stats": st, "error": err,
                            "extra": {"ratios": ratios}}},
            "qloop_vs_uvloop": None, "qloop_vs_asyncio": None,
            "target": target, "met": met})
    return out


def call_soon_rows(results, loops, quick):
    n = py_micro.BENCHES["call_soon"].quick_n if quick else \
        py_micro.BENCHES["call_soon"].n
    what = f"call_soon, {_common.count_label(n)} callbacks"
    cells = {l: {"values": results[l]["rates"], "error": results[l]["error"]}
             for l in loops}
    rows = [value_row("call_soon", py_micro.BENCHES["call_soon"].label.format(
        n=_common.count_label(n)), "ops_per_s", "ops/s", "higher", cells)]
    # cost: seconds per callback, per repetition (runs are in rep order
    # while a cell has not failed)
    costs = {l: (results[l]["error"] or
                 {i: 1.0 / r for i, r in enumerate(results[l]["rates"])})
             for l in loops}
    return rows + ratio_rows("call_soon", what, costs)


def echo_rows(results, loops):
    res = results[ECHO_BENCH]
    key = "server_cpu_us_per_req"
    cells = {l: {"values": [r[key] for r in res[l]["runs"]],
                 "error": res[l]["error"]} for l in loops}
    extra = {l: {"rps": _common.summarize([r["rps"] for r in res[l]["runs"]])}
             for l in loops}
    label = "asyncio.Protocol echo, 1 KiB: server CPU per request"
    rows = [value_row("echo_protocol_1k", label, key, "µs/req", "lower",
                      cells, extra)]
    costs = {l: (res[l]["error"] or
                 dict(zip(res[l]["rep_of_run"], (r[key] for r in res[l]["runs"]))))
             for l in loops}
    return rows + ratio_rows("echo_protocol_1k", "protocol echo 1 KiB", costs)


def callgrind_rows(cells):
    rows = [value_row("call_soon_instructions",
                      "call_soon: instructions per callback (callgrind, "
                      f"n={_common.count_label(CALLGRIND_N[0])} minus "
                      f"{_common.count_label(CALLGRIND_N[1])})",
                      "instructions", "instr", "lower", cells)]
    costs = {l: (c["error"] or dict(enumerate(c["values"])))
             for l, c in cells.items()}
    return rows + ratio_rows("call_soon_instructions",
                             "call_soon instructions", costs, noise=False)


# -- the report ------------------------------------------------------------------

def fmt_cell(row, loop):
    c = row["loops"].get(loop)
    if c is None:
        return ""
    st = c["stats"]
    if not st:
        return f"n/a ({c['error']})"
    if row["unit"] == "x":
        return _common.fmt_ratio_range(st)
    return _common.fmt_value(st["median"], row["unit"]) + \
        f" (±{st['spread'] * 50:.1f}%)"


def markdown(rows, meta, descs, unavailable, reps, quick, elapsed):
    out = [f"## What the diagnostics cost ({meta['implementation']} "
           f"{meta['python']}, {meta['machine']}, Linux {meta['kernel']}: "
           f"{meta['cpu_model']})", ""]
    header = ["benchmark", "unit"] + list(VARIANTS) + ["target", "met?"]
    table = []
    for r in rows:
        table.append([r["label"], f"{r['unit']} ({r['better']} is better)"] +
                     [fmt_cell(r, l) for l in VARIANTS] +
                     [r["target"] or "", {True: "yes", False: "**no**",
                                          None: "-"}[r["met"]]])
    out.append(_common.markdown_table(header, table,
                                      "ll" + "r" * len(VARIANTS) + "lc"))
    out += ["", f"Medians of {reps} repetition(s), the loops interleaved "
            f"(order rotating each repetition){', --quick sizes' if quick else ''}; "
            "(±x%): half the run-to-run spread, (max - min) / 2 / median.  "
            "Ratio rows: the median over repetitions of the two loops' costs "
            "in the same repetition, [min - max] over them; \"within noise\" "
            "is met when that range holds 1.0.  The whole run took "
            f"{elapsed:.0f} s.  Loops:", ""]
    for l in VARIANTS:
        out.append(f"- {l}: {descs.get(l) or 'not run: ' + unavailable.get(l, '?')}")
    return "\n".join(out) + "\n"


# -- main ------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="benchmarks: " + ", ".join(BENCHES))
    ap.add_argument("--quick", action="store_true",
                    help="2 repetitions, smaller sizes, no callgrind (a few "
                    "seconds once the build without diagnostics exists)")
    ap.add_argument("--reps", type=int,
                    help="repetitions (default 7, --quick 2)")
    ap.add_argument("--bench", help="comma-separated, from " +
                    ",".join(BENCHES) + " (default: all)")
    ap.add_argument("--json", metavar="PATH", help="write results as JSON")
    ap.add_argument("--markdown", metavar="PATH",
                    help="also write the markdown report to PATH")
    ap.add_argument("--nodiag-path", metavar="DIR",
                    help="import qloop-nodiag from DIR (holding qloop/) "
                    "instead of building it")
    cg = ap.add_mutually_exclusive_group()
    cg.add_argument("--callgrind", dest="callgrind", action="store_true",
                    default=None, help="count instructions (default: in a "
                    "full run, when valgrind is installed)")
    cg.add_argument("--no-callgrind", dest="callgrind", action="store_false")
    args = ap.parse_args()
    try:
        benches = _common.parse_names(args.bench, BENCHES, "benchmark") \
            if args.bench else list(BENCHES)
    except ValueError as e:
        ap.error(str(e))
    reps = args.reps or (2 if args.quick else 7)
    if reps < 1:
        ap.error("--reps must be at least 1")
    callgrind = args.callgrind
    if callgrind is None:
        callgrind = not args.quick and shutil.which("valgrind") is not None
    timeout = 60.0 if args.quick else 300.0

    started = time.monotonic()
    cpus = _common.two_cpus()  # before pinning: echo needs both
    unavailable = {}
    if args.nodiag_path:
        path, why = os.path.abspath(args.nodiag_path), None
    else:
        path, why = ensure_nodiag_build()
    if path:
        os.environ[_common.NODIAG_PATH_ENV] = path
    else:
        unavailable["qloop-nodiag"] = why
        log(f"skipping qloop-nodiag: {why}")
    _common.pin_cpu(cpus[0])  # py_micro's children: pinned like its own
    meta = _common.machine_meta(cpus[0])
    meta.update({"server_cpu": cpus[0], "load_cpu": cpus[1], "reps": reps,
                 "quick": args.quick})
    log(f"call_soon on CPU {cpus[0]}; echo servers on CPU {cpus[0]}, load "
        f"on CPU {cpus[1]}; {reps} repetitions")
    descs, more = _common.probe_loops([l for l in VARIANTS
                                       if l not in unavailable])
    unavailable.update(more)
    runnable = [l for l in VARIANTS if l in descs]

    def failed_cells(mk):
        return {l: mk(f"not run: {unavailable[l]}") for l in unavailable}

    rows = []
    if "call_soon" in benches:
        res = py_micro.run_all(["call_soon"], runnable, reps, args.quick,
                               timeout)["call_soon"]
        res.update(failed_cells(lambda e: {"rates": [], "runs": [],
                                           "error": e}))
        rows += call_soon_rows(res, VARIANTS, args.quick)
    if "echo" in benches:
        try:
            tools = echo.build_tools()
        except (RuntimeError, OSError) as e:
            log(f"diag.py: {e}")
            return 1
        res = echo.run_all(runnable, [ECHO_BENCH], reps, args.quick, cpus,
                           tools)
        for l, why in unavailable.items():
            res[ECHO_BENCH][l] = echo.new_cell()
            res[ECHO_BENCH][l]["error"] = f"not run: {why}"
        rows += echo_rows(res, VARIANTS)
    if callgrind and "call_soon" in benches:
        cells = run_callgrind(runnable, max(1, min(reps, 2)), timeout * 4)
        cells.update(failed_cells(lambda e: {"values": [], "error": e}))
        rows += callgrind_rows(cells)

    elapsed = time.monotonic() - started
    meta["elapsed_s"] = elapsed
    text = markdown(rows, meta, descs, unavailable, reps, args.quick, elapsed)
    _common.publish(args, text, {
        "suite": "diag", "meta": meta,
        "loops": {l: descs[l] for l in VARIANTS if l in descs},
        "unavailable": unavailable, "rows": rows})
    log(f"done in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
