#!/usr/bin/env python3
"""What bounds the missed targets: where the server's CPU goes, by DSO.

    python3 perf/floor.py [--quick] [--reps N] [--loops L,L] [--bench B,B]
                          [--json PATH] [--markdown PATH] [--perf PATH]
                          [--freq HZ]

The benchmarks are the servers and loads of the targets qloop misses
against uvloop (server CPU per request, same run), run exactly as their own
suites run them, by those suites' code, imported:
  streams_1k, streams_10k  perf/echo.py, streams (start_server) echo
  sock_100k                perf/echo.py, sock_recv/sock_sendall echo
  httptools                perf/_http.py, the httptools server under wrk
Loops: qloop, uvloop and rloop (asyncio's loop has no module of its own
code apart from the interpreter's, so it cannot be split the same way).

For every (benchmark, loop, repetition), loops interleaved run by run, one
server process does an unprofiled measured run and a profiled one (which
comes first alternates repetition by repetition); in the profiled one, `perf record -e cpu-clock -F <freq> -p <server pid>`
runs inside the measured window (started after the warm-up, stopped with
SIGINT before the window ends, pinned to the load's CPU), and
`perf report --sort dso` gives each DSO's share of the server's samples.
The DSOs are put in buckets:
  kernel       [kernel.*] (and [vdso]: see VDSO_NOTE)
  interpreter  libpython*, the python executable, CPython's extension
               modules (lib-dynload: _asyncio, _socket, select, ...)
  libc         libc, libm, libpthread, libdl, librt, the dynamic loader
  loop         the loop's own code: every file under its package directory
               (qloop's _qloop*.so, uvloop's loop*.so, rloop's _rloop*.so)
               and its wheel's bundled libraries (<package>.libs)
  other        the rest (httptools' parser, [unknown], ...)
A bucket's µs/req is the server CPU per request of that same profiled run
(the load's own measure: /proc/PID/task/*/schedstat over its window)
times the bucket's share.

The bound rows, per repetition and then the median [range] over them:
  floor        (qloop total - qloop's own - qloop's libc) / uvloop total:
               qloop/uvloop if qloop's module and all of libc took no
               time, with the kernel's and the interpreter's time as they
               are.  Against the suite's target: "unreachable" when the
               whole range is above it (no work on qloop's own code alone
               can meet the target; only fewer system calls, or less
               interpreted code, could), "not ruled out" when the whole
               range is at or below it, "unclear" when it holds it.
  kernel only  qloop's kernel µs / uvloop's total, as information.
  perf cost    profiled / unprofiled server CPU per request, same server
               (perf's sampling interrupts count as the server's kernel
               time: a cost c in both loops raises a floor F by
               c (r - F) / (1 + c), r the qloop/uvloop under perf).
The floor is computed from the profile, not asserted: it bounds what
qloop's own code can gain, on this machine, under this load.

When perf is missing or cannot sample (perf_event_paranoid, no
permission), every cell is n/a with the reason.  A benchmark reports
numbers, it does not judge: the exit status is 0 when a target is missed,
unreachable or n/a, and non-zero only on an internal error.
"""

import argparse
import importlib.util
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
import _http  # noqa: E402  the body of perf/http.py
import echo  # noqa: E402
from _common import log  # noqa: E402

LOOPS = ("uvloop", "rloop", "qloop")
ECHO_BENCHES = {"streams_1k": ("streams", "1k"),
                "streams_10k": ("streams", "10k"),
                "sock_100k": ("sock", "100k")}
BENCHES = tuple(ECHO_BENCHES) + ("httptools",)
# max qloop/uvloop of server CPU per request: the suites' own targets
TARGETS = {b: echo.TARGETS[sb][0] for b, sb in ECHO_BENCHES.items()}
TARGETS["httptools"] = _http.TARGETS["httptools"][1]
LABELS = {b: f"{echo.STYLE_LABELS[s]} echo, {z[:-1]} KiB"
          for b, (s, z) in ECHO_BENCHES.items()}
LABELS["httptools"] = "httptools server under wrk"

BUCKETS = ("kernel", "interpreter", "libc", "loop", "other")
BUCKET_LABELS = {
    "kernel": "the kernel's part",
    "interpreter": "the interpreter's part (libpython, CPython's modules)",
    "libc": "libc's part",
    "loop": "the loop's own module",
    "other": "other code (the benchmark's modules, [unknown])",
}
VDSO_NOTE = ("[vdso] runs in user mode but is the kernel's code (the "
             "clock_gettime that replaces a system call), a fraction of a "
             "percent here: it is counted with the kernel")
FREQ = 2999  # Hz: moderate, to keep perf's own cost low (the perf cost row)
LIBC = re.compile(r"^(libc|libm|libpthread|libdl|librt|ld-linux[\w.-]*|"
                  r"ld64)([.-]|$)")

# (warm-up, window) in seconds of one measured echo run; wrk: --duration
ECHO_DURATIONS = {False: (0.5, 2.0), True: (0.2, 0.8)}
WRK_DURATION = {False: 3, True: 1}
WRK_WARMUP = {False: 2, True: 1}
# perf starts this long after the window opens and stops this long before
# it closes, so that it profiles the measured window only
PERF_MARGIN = {"start": 0.1, "stop": 0.1}


# -- perf ----------------------------------------------------------------------

def perf_problem(perf, freq=FREQ):
    """None when `perf record` can sample the CPU clock here, else why not
    (perf missing, perf_event_paranoid, no permission)."""
    exe = shutil.which(perf)
    if exe is None:
        return f"perf is not installed ({perf} not found)"
    with tempfile.TemporaryDirectory(prefix="qloop-floor-") as tmp:
        data = os.path.join(tmp, "probe.data")
        try:
            r = subprocess.run([exe, "record", "-q", "-e", "cpu-clock", "-F",
                                str(freq), "-o", data, "--", "true"],
                               stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               timeout=60, env=echo.tool_env())
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"perf record failed: {_common.first_line(e)}"
        if r.returncode != 0 or not os.path.exists(data):
            return "perf record failed: " + perf_error_text(r.stdout,
                                                            r.returncode)
    return None


def perf_error_text(output, returncode):
    """The line of perf's output that says what went wrong."""
    lines = [l.strip() for l in output.splitlines()
             if l.strip() and l.strip().lower() not in ("error:", "error")]
    for pattern in (r"perf_event_paranoid setting is",
                    r"paranoid|permission|not permitted|denied|limited|"
                    r"not supported|no such|cannot|failed|error"):
        for l in lines:
            if re.search(pattern, l, re.I):
                return l.rstrip(":")[:200]
    return lines[0][:200] if lines else f"exit status {returncode}"


class Profile:
    """perf record on one process, from its creation to stop()."""

    def __init__(self, perf, pid, cpu, freq, path):
        self.path = path
        self.perf = perf
        self.proc = subprocess.Popen(
            [perf, "record", "-q", "-e", "cpu-clock", "-F", str(freq),
             "-p", str(pid), "-o", path],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env=echo.tool_env())
        try:
            os.sched_setaffinity(self.proc.pid, {cpu})
        except OSError:
            pass  # it exited already: stop() says why

    def stop(self):
        """Stop recording; raise RuntimeError when perf failed."""
        early = self.proc.poll() is not None
        if not early:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("perf record did not stop on SIGINT")
        rc = self.proc.returncode
        if early or rc not in (0, -signal.SIGINT, 128 + signal.SIGINT) or \
                not os.path.exists(self.path):
            raise RuntimeError("perf record: " + perf_error_text(out, rc))

    def report(self):
        """[(dso path or [name], samples)] of the recording."""
        r = subprocess.run(
            [self.perf, "report", "-i", self.path, "--stdio", "-v", "-n",
             "--sort", "dso"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            timeout=120, env=echo.tool_env())
        entries = parse_report(r.stdout)
        if r.returncode != 0 or not entries:
            raise RuntimeError(f"perf report: exit status {r.returncode}, "
                               "no samples")
        return entries


REPORT_LINE = re.compile(r"^\s*([0-9.]+)%\s+(\d+)\s+(\S.*?)\s*$")


def parse_report(text):
    """[(dso, samples)] from `perf report --stdio -n --sort dso` (-v: full
    paths), in its order; comment and blank lines skipped."""
    out = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        m = REPORT_LINE.match(line)
        if m:
            out.append((m.group(3), int(m.group(2))))
    return out


# -- buckets -------------------------------------------------------------------

def loop_code(name):
    """(directories, files): where loop `name`'s own code is, real paths,
    found without importing it: its package directory (and the files in
    it, resolved: qloop's in-place build links its extension from the
    build directory), and a wheel's <package>.libs next to it."""
    spec = importlib.util.find_spec(name)
    dirs, files = set(), set()
    if spec is None:
        return dirs, files
    places = list(spec.submodule_search_locations or []) or \
        [os.path.dirname(spec.origin)]
    for d in places:
        dirs.add(os.path.realpath(d))
        dirs.add(os.path.realpath(d.rstrip(os.sep) + ".libs"))
        for root, _, names in os.walk(d):
            for f in names:
                files.add(os.path.realpath(os.path.join(root, f)))
    return dirs, files


def interpreter_code():
    """(directories, files) of the interpreter: the python executable,
    libpython and CPython's own extension modules (lib-dynload)."""
    dirs = {os.path.realpath(d) for d in (
        sysconfig.get_config_var("DESTSHARED"),
        os.path.dirname(getattr(importlib.util.find_spec("_asyncio"),
                                "origin", None) or "")) if d}
    files = {os.path.realpath(sys.executable)}
    return dirs, files


def under(path, dirs):
    return any(path == d or path.startswith(d.rstrip(os.sep) + os.sep)
               for d in dirs)


def bucket_of(dso, loop, interp):
    """The bucket of one DSO of `perf report`; `loop` and `interp` are
    (directories, files) as loop_code() and interpreter_code() give."""
    if dso.startswith("[kernel") or dso in ("[vdso]", "[vsyscall]"):
        return "kernel"  # [vdso]: see VDSO_NOTE
    path = os.path.realpath(dso) if dso.startswith("/") else dso
    base = os.path.basename(path)
    if path in loop[1] or under(path, loop[0]):
        return "loop"
    if (path in interp[1] or under(path, interp[0]) or
            base.startswith("libpython") or
            re.fullmatch(r"python[23](\.\d+)?[a-z]*", base)):
        return "interpreter"
    if LIBC.match(base):
        return "libc"
    return "other"


def bucket_shares(entries, loop, interp):
    """({bucket: share of the samples}, total samples, {dso: share})."""
    total = sum(n for _, n in entries)
    shares = dict.fromkeys(BUCKETS, 0.0)
    dsos = {}
    for dso, n in entries:
        shares[bucket_of(dso, loop, interp)] += n / total
        dsos[dso] = dsos.get(dso, 0.0) + n / total
    return shares, total, dsos


# -- profiled runs ---------------------------------------------------------------

class Profiler:
    """Runs a blocking measurement with perf recording the server inside
    its window; keeps the data in one temporary directory."""

    def __init__(self, perf, freq, cpu, loop_names):
        self.perf, self.freq, self.cpu = perf, freq, cpu
        self.tmp = tempfile.mkdtemp(prefix="qloop-floor-")
        self.n = 0
        self.calls = {}
        self.interp = interpreter_code()
        self.code = {l: loop_code(l) for l in loop_names}

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def during(self, run, pid, start_after, window):
        """run() in a thread; perf on `pid` from start_after seconds after
        it starts, for `window` seconds.  Returns (run's result, [(dso,
        samples)] or None, why there is no profile or None); raises what
        run() raised."""
        result = {}

        def body():
            try:
                result["value"] = run()
            except BaseException as e:  # noqa: BLE001 - re-raised below
                result["error"] = e

        self.n += 1
        path = os.path.join(self.tmp, f"run{self.n}.data")
        t = threading.Thread(target=body, daemon=True)
        t0 = time.monotonic()
        t.start()
        prof, entries, why = None, None, None
        try:
            t.join(max(0.0, t0 + start_after - time.monotonic()))
            if t.is_alive():
                prof = Profile(self.perf, pid, self.cpu, self.freq, path)
                t.join(max(0.0, t0 + start_after + window - time.monotonic()))
                ended = not t.is_alive()
                prof.stop()
                if ended:
                    why = "the measured run ended before perf stopped"
                else:
                    t.join()  # perf report's CPU is not the load's
                    entries = prof.report()
            else:
                why = "the measured run ended before perf started"
        except RuntimeError as e:
            why = _common.first_line(e)
        finally:
            if prof is not None and prof.proc.poll() is None:
                prof.proc.kill()
                prof.proc.wait()
            t.join()
            if os.path.exists(path):
                os.remove(path)
        if "error" in result:
            raise result["error"]
        return result["value"], entries, why

    def twice(self, key, plain, profiled):
        """Both runs of one measurement: (plain(), profiled()), the one
        or the other first in turn, call by call of the same key (so by
        repetition), so that neither always runs on the fresher server."""
        n = self.calls[key] = self.calls.get(key, -1) + 1
        if n % 2:
            p = profiled()
            return plain(), p
        a = plain()
        return a, profiled()

    def figures(self, loop, total_us, unprofiled_us, entries):
        shares, samples, dsos = bucket_shares(entries, self.code[loop],
                                              self.interp)
        return {"total": total_us, "unprofiled": unprofiled_us,
                "samples": samples, "shares": shares,
                "us": {b: total_us * s for b, s in shares.items()},
                "dsos": dict(sorted(dsos.items(), key=lambda kv: -kv[1])[:8])}


def server_loop(pid):
    """The loop of a server of echo.py or _http.py, from its command line
    (`... --server LOOP ...`): their measures get the pid, not the loop."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    return argv[argv.index(b"--server") + 1].decode()


def log_figures(fig):
    log(f"    under perf: {fig['total']:.2f} us/req (unprofiled "
        f"{fig['unprofiled']:.2f}), {fig['samples']} samples: " +
        ", ".join(f"{b} {s * 100:.1f}%" for b, s in fig["shares"].items()))


def echo_cells(prof, loops, benches, reps, quick, cpus, tools):
    """{bench: {loop: {"runs": {rep: figures}, "error": str or None}}}:
    echo.py's servers and load, each measured run done twice."""
    warmup, window = ECHO_DURATIONS[quick]

    def measure(tools_, port, pid, cpu, args, timeout):
        loop = server_loop(pid)

        def run():
            return echo.run_load(tools_, port, pid, cpu, args, timeout)

        (plain, why), ((doc, why2), entries, no_profile) = prof.twice(
            (loop, tuple(args)), run, lambda: prof.during(
                run, pid, warmup + PERF_MARGIN["start"],
                window - PERF_MARGIN["start"] - PERF_MARGIN["stop"]))
        if plain is None or doc is None:
            return None, why or why2
        if no_profile:
            return None, no_profile
        doc["floor"] = prof.figures(
            loop, doc["server_cpu_s"] / doc["requests"] * 1e6,
            plain["server_cpu_s"] / plain["requests"] * 1e6, entries)
        log_figures(doc["floor"])
        return doc, None

    res = echo.run_all(loops, [ECHO_BENCHES[b] for b in benches], reps,
                       quick, cpus, tools, measure=measure, c_server=False,
                       durations=(warmup, window))
    out = {}
    for b in benches:
        out[b] = {}
        for l in loops:
            cell = res[ECHO_BENCHES[b]][l]
            out[b][l] = {"runs": {rep: r["floor"] for rep, r in
                                  zip(cell["rep_of_run"], cell["runs"])},
                         "error": cell["error"]}
    return out


def http_cells(prof, loops, reps, quick, cpus):
    """{loop: {"runs": {rep: figures}, "error": ...}}: the httptools server
    under wrk as _http.run_bench runs it, each measured run done twice."""
    start = 0.2 + PERF_MARGIN["start"]  # after wrk has connected

    def measure(proc, port, duration, connections, cpu):
        loop = server_loop(proc.pid)

        def run():
            return _http.run_wrk(proc, port, duration, connections, cpu)

        plain, (res, entries, no_profile) = prof.twice(
            loop, run, lambda: prof.during(
                run, proc.pid, start, duration - start - PERF_MARGIN["stop"]))
        if no_profile:
            raise RuntimeError(no_profile)
        res["floor"] = prof.figures(loop, res["cpu_us_per_req"],
                                    plain["cpu_us_per_req"], entries)
        log_figures(res["floor"])
        return res

    cells = _http.run_bench("httptools", loops, reps, WRK_DURATION[quick],
                            WRK_WARMUP[quick], _http.CONNECTIONS, cpus,
                            time.monotonic(), measure=measure)
    # a cell's runs are in repetition order until it fails
    return {l: {"runs": dict(enumerate(r["floor"] for r in c["runs"])),
                "error": c["error"]} for l, c in cells.items()}


# -- rows ------------------------------------------------------------------------

def same_rep(a, b):
    """Ratios a[rep] / b[rep] over the repetitions both have ({rep: x})."""
    return [a[k] / b[k] for k in sorted(a) if k in b and b[k]]


def verdict(stats, target):
    """The met? word of a floor against its target (max qloop/uvloop)."""
    if stats is None:
        return None
    if stats["min"] > target:
        return "unreachable"
    if stats["max"] <= target:
        return "not ruled out"
    return "unclear (range holds it)"


def row(bench, label, metric, unit, cells, vs_uvloop=None, target=None,
        met=None):
    """A row in the contract's shape; cells: {loop: (values, error,
    extra)}."""
    loops = {}
    for l, (values, error, extra) in cells.items():
        st = _common.summarize(values)
        loops[l] = {"stats": st, "error": None if st else (error or "no runs"),
                    "extra": extra or {}}
    return {"bench": bench, "label": label, "metric": metric, "unit": unit,
            "better": "lower", "loops": loops, "qloop_vs_uvloop": vs_uvloop,
            "qloop_vs_asyncio": None, "target": target, "met": met}


def bench_rows(bench, cells, loops):
    """The rows of one benchmark from {loop: {"runs": {rep: figures},
    "error": ...}}."""
    label = LABELS[bench]

    def by_rep(loop, key, sub=None):
        runs = cells[loop]["runs"]
        return {k: (r[key][sub] if sub else r[key]) for k, r in runs.items()}

    def err(loop):
        return cells[loop]["error"]

    def median_or_none(values):
        return statistics.median(values) if values else None

    def qv(key, sub=None):
        if "qloop" not in cells or "uvloop" not in cells:
            return None
        return median_or_none(same_rep(by_rep("qloop", key, sub),
                                       by_rep("uvloop", key, sub)))

    def dso_medians(loop):
        runs = list(cells[loop]["runs"].values())
        names = {d for r in runs for d in r["dsos"]}
        med = {d: statistics.median([r["dsos"].get(d, 0.0) for r in runs])
               for d in names}
        return dict(sorted(med.items(), key=lambda kv: -kv[1])[:8])

    rows = [row(f"{bench}_total", f"{label}: server CPU per request under "
                "perf", "server_cpu_us_per_req", "µs/req",
                {l: (list(by_rep(l, "total").values()), err(l), {
                    "unprofiled": _common.summarize(
                        list(by_rep(l, "unprofiled").values())),
                    "samples": list(by_rep(l, "samples").values()),
                    "shares": {b: _common.summarize(
                        list(by_rep(l, "shares", b).values()))
                        for b in BUCKETS},
                    "dsos": dso_medians(l)}) for l in loops},
                vs_uvloop=qv("total"))]
    for b in BUCKETS:
        rows.append(row(f"{bench}_{b}", f"{label}: {BUCKET_LABELS[b]}",
                        f"{b}_us_per_req", "µs/req",
                        {l: (list(by_rep(l, "us", b).values()), err(l), None)
                         for l in loops}, vs_uvloop=qv("us", b)))

    q = {k: r for k, r in cells.get("qloop", {}).get("runs", {}).items()}
    uv = {k: r for k, r in cells.get("uvloop", {}).get("runs", {}).items()}
    reps = [k for k in sorted(q) if k in uv and uv[k]["total"]]
    floors = [(q[k]["total"] - q[k]["us"]["loop"] - q[k]["us"]["libc"]) /
              uv[k]["total"] for k in reps]
    kernel = [q[k]["us"]["kernel"] / uv[k]["total"] for k in reps]
    why = next((c["error"] for c in (cells.get("qloop"), cells.get("uvloop"))
                if c and c["error"]), None) or \
        ("no common repetition" if "uvloop" in cells else "uvloop not run")
    target = TARGETS[bench]
    st = _common.summarize(floors)
    rows.append(row(f"{bench}_floor", f"{label}: floor, qloop/uvloop if "
                    "qloop's own module and libc took no time", "floor_ratio",
                    "x", {"qloop": (floors, why, {"reps": reps,
                                                  "values": floors})},
                    vs_uvloop=st and st["median"],
                    target=f"<= {target:g}x uvloop",
                    met=verdict(st, target)))
    st = _common.summarize(kernel)
    rows.append(row(f"{bench}_kernel_only", f"{label}: the kernel alone, "
                    "qloop's kernel µs / uvloop's total", "kernel_ratio", "x",
                    {"qloop": (kernel, why, {"reps": reps})},
                    vs_uvloop=st and st["median"]))
    rows.append(row(f"{bench}_perf_cost", f"{label}: what perf costs, "
                    "profiled / unprofiled server CPU, same server",
                    "perf_cost_ratio", "x",
                    {l: (same_rep(by_rep(l, "total"),
                                  by_rep(l, "unprofiled")), err(l), None)
                     for l in loops}))
    return rows


# -- the report ------------------------------------------------------------------

def pct(x):
    return f"{x * 100:.1f}%"


def markdown(doc, benches, loops):
    meta = doc["meta"]
    out = [f"## What bounds the missed targets: where the server's CPU goes "
           f"({meta['implementation']} {meta['python']}, {meta['machine']}, "
           f"Linux {meta['kernel']}: {meta['cpu_model']})", ""]
    rows = {r["bench"]: r for r in doc["rows"]}
    problem = doc["perf"]["problem"]
    if problem:
        out += [f"Not measured: {problem}.  Every cell is n/a.", ""]
    for b in benches:
        out += [f"### {LABELS[b]}", ""]
        total = rows[f"{b}_total"]
        table = []
        for l in loops:
            c = total["loops"][l]
            if not c["stats"]:
                table.append([l, f"n/a ({c['error']})"] + [""] * 8)
                continue
            e = c["extra"]
            cost = rows[f"{b}_perf_cost"]["loops"][l]["stats"]
            cells = [l, f"{c['stats']['median']:.2f}",
                     f"{e['unprofiled']['median']:.2f}" if e["unprofiled"]
                     else "n/a",
                     _common.fmt_ratio_range(cost) if cost else "n/a"]
            for bk in BUCKETS:
                us = rows[f"{b}_{bk}"]["loops"][l]["stats"]
                share = e["shares"][bk]
                cells.append(f"{us['median']:.2f} ({pct(share['median'])})")
            cells.append(str(int(statistics.median(e["samples"]))))
            table.append(cells)
        out.append(_common.markdown_table(
            ["loop", "µs/req under perf", "µs/req unprofiled",
             "perf cost"] + [f"{bk} µs (share)" for bk in BUCKETS] +
            ["samples"], table, "l" + "r" * (4 + len(BUCKETS))))
        out.append("")
        fl = rows[f"{b}_floor"]
        st = fl["loops"]["qloop"]["stats"]
        ko = rows[f"{b}_kernel_only"]["loops"]["qloop"]["stats"]
        vs = total["qloop_vs_uvloop"]
        if st:
            out.append(
                f"qloop/uvloop under perf: {vs:.3f} (same-repetition "
                f"median).  Floor, qloop/uvloop if qloop's own module and "
                f"libc took no time: **{_common.fmt_ratio_range(st)}** "
                f"against the target {fl['target']}: **{fl['met']}** "
                f"(by repetition: " + ", ".join(
                    f"{x:.3f}" for x in fl["loops"]["qloop"]["extra"]
                    ["values"]) + ").  "
                f"The kernel alone (qloop's kernel µs / uvloop's total): "
                f"{_common.fmt_ratio_range(ko)}.")
        else:
            out.append(f"Floor: n/a ({fl['loops']['qloop']['error']}).")
        out.append("")
        tops = [(l, total["loops"][l]["extra"].get("dsos") or {})
                for l in loops if total["loops"][l]["stats"]]
        if tops:
            out.append("Largest DSOs (median share of the samples): " +
                       "; ".join(f"{l}: " + ", ".join(
                           f"{os.path.basename(d)} {pct(s)}"
                           for d, s in list(dsos.items())[:6])
                           for l, dsos in tops) + ".")
            out.append("")
    m = doc["method"]
    out += [
        f"Per (benchmark, loop, repetition), loops interleaved run by run: "
        f"one server, run exactly as its own suite runs it (echo: "
        f"perf/echo.py's server and C load, {echo.CONNS} connections, "
        f"{m['echo_warmup_s']:g} s warm-up, {m['echo_window_s']:g} s window; "
        f"httptools: perf/_http.py's server under wrk, {_http.CONNECTIONS} "
        f"connections, {m['wrk_duration_s']:g} s runs after "
        f"{m['wrk_warmup_s']:g} s of warm-up), server on CPU "
        f"{meta['server_cpu']}, load on CPU {meta['load_cpu']}; an "
        f"unprofiled measured run and a profiled one, in turn first: "
        f"`perf record -e "
        f"cpu-clock -F {m['freq']} -p PID` (pinned to CPU {meta['load_cpu']}) "
        f"inside its window, `perf report --sort dso` for the shares.  "
        f"µs/req: the server's CPU (user + system) over the window / "
        f"requests; a bucket's µs/req: that times its share of the "
        f"samples.  Medians of {meta['reps']} repetition(s); ratios: the "
        f"median of same-repetition ratios, [min-max] over them.",
        "",
        "Buckets: kernel = [kernel.*] and [vdso] (" + VDSO_NOTE + "); "
        "interpreter = libpython, the python executable, CPython's "
        "extension modules (lib-dynload); libc = libc, libm, the dynamic "
        "loader; loop = the files of the loop's package directory; other = "
        "the rest.",
        "",
        "The floor is a bound computed from the profile: it assumes the "
        "kernel's and the interpreter's time stay what they are with qloop. "
        "\"unreachable\": even at zero cost for qloop's module and libc the "
        "ratio stays above the target in every repetition, so only fewer "
        "or cheaper system calls, or less interpreted code on the server's "
        "path, could meet it; \"not ruled out\": the floor is at or below "
        "the target in every repetition (the target may still be missed); "
        "\"unclear\": the range holds the target.  perf's own cost (the "
        "perf cost column: its sampling interrupts, in the server's "
        "context) lands in the kernel bucket of every loop; a cost c in "
        "both loops moves a floor F with qloop/uvloop r to (F + c r) / "
        "(1 + c), that is c (r - F) / (1 + c) above it: 0.013 at c = 0.15 "
        "and r - F = 0.1.",
        "", "Loops:", ""]
    for l in loops:
        out.append(f"- {l}: {doc['loops'].get(l) or 'not run: ' + doc['unavailable'].get(l, problem or '?')}")
    out += ["", f"The whole run took {meta['elapsed_s']:.0f} s."]
    return "\n".join(out) + "\n"


# -- main ------------------------------------------------------------------------

def failed_cells(loops, why):
    return {l: {"runs": {}, "error": why} for l in loops}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="benchmarks: " + ", ".join(BENCHES))
    ap.add_argument("--quick", action="store_true",
                    help="1 repetition, shorter windows")
    ap.add_argument("--reps", type=int,
                    help="repetitions (default 3, --quick 1)")
    ap.add_argument("--loops", default=",".join(LOOPS),
                    help="comma-separated, from " + ",".join(LOOPS) +
                    " (asyncio is accepted and left out)")
    ap.add_argument("--bench", help="comma-separated, from " +
                    ",".join(BENCHES) + " (default: all)")
    ap.add_argument("--json", metavar="PATH", help="write results as JSON")
    ap.add_argument("--markdown", metavar="PATH",
                    help="also write the markdown report to PATH")
    ap.add_argument("--perf", default="perf", help="the perf command")
    ap.add_argument("--freq", type=int, default=FREQ,
                    help=f"sampling frequency, Hz (default {FREQ})")
    args = ap.parse_args()
    try:
        loops = _common.parse_names(args.loops, _common.LOOPS, "loop")
        benches = _common.parse_names(args.bench, BENCHES, "benchmark") \
            if args.bench else list(BENCHES)
    except ValueError as e:
        ap.error(str(e))
    if "asyncio" in loops:
        log("asyncio: left out (its loop has no module of its own to "
            "separate from the interpreter)")
    loops = [l for l in LOOPS if l in loops]
    if not loops:
        ap.error("no loop left to profile")
    reps = args.reps or (1 if args.quick else 3)
    if reps < 1:
        ap.error("--reps must be at least 1")

    started = time.monotonic()
    cpus = _common.two_cpus()
    os.sched_setaffinity(0, {cpus[1]})  # the parent sits with the load
    meta = _common.machine_meta(cpus[0])
    meta.update({"server_cpu": cpus[0], "load_cpu": cpus[1], "reps": reps,
                 "quick": args.quick})
    warmup, window = ECHO_DURATIONS[args.quick]
    method = {"freq": args.freq, "echo_warmup_s": warmup,
              "echo_window_s": window,
              "wrk_duration_s": WRK_DURATION[args.quick],
              "wrk_warmup_s": WRK_WARMUP[args.quick]}
    problem = perf_problem(args.perf, args.freq)
    descs, unavailable, cells = {}, {}, {}
    if problem:
        log(f"floor: every cell n/a: {problem}")
        cells = {b: failed_cells(loops, problem) for b in benches}
    else:
        log(f"servers on CPU {cpus[0]}, load and perf on CPU {cpus[1]}; "
            f"{reps} repetition(s), perf at {args.freq} Hz")
        descs, unavailable = _common.probe_loops(loops)
        runnable = [l for l in loops if l in descs]
        prof = Profiler(shutil.which(args.perf), args.freq, cpus[1],
                        runnable)
        try:
            echo_b = [b for b in benches if b in ECHO_BENCHES]
            if echo_b and runnable:
                try:
                    tools = echo.build_tools()
                except (RuntimeError, OSError) as e:
                    log(f"floor.py: {e}")
                    return 1
                cells.update(echo_cells(prof, runnable, echo_b, reps,
                                        args.quick, cpus, tools))
            if "httptools" in benches and runnable:
                missing = _http.missing_tools(["httptools"])
                if missing:
                    log(f"httptools: n/a, {missing['httptools']}")
                    cells["httptools"] = failed_cells(
                        runnable, missing["httptools"])
                else:
                    cells["httptools"] = http_cells(prof, runnable, reps,
                                                    args.quick, cpus)
        finally:
            prof.close()
        for b in benches:
            cells.setdefault(b, {})
            for l in loops:
                if l not in cells[b]:
                    cells[b][l] = {"runs": {}, "error": "not run: " +
                                   unavailable.get(l, "?")}
    rows = [r for b in benches for r in bench_rows(b, cells[b], loops)]
    meta["elapsed_s"] = time.monotonic() - started
    doc = {"suite": "floor", "meta": meta, "loops": descs,
           "unavailable": unavailable, "rows": rows, "method": method,
           "perf": {"command": args.perf, "freq": args.freq,
                    "problem": problem},
           "buckets": dict(BUCKET_LABELS)}
    _common.publish(args, markdown(doc, benches, loops), doc)
    log(f"done in {meta['elapsed_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
