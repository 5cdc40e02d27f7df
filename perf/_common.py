"""Shared pieces of the Python-level benchmarks (perf/py_*.py).

The loops under comparison, how to make one, and the parent side of a
benchmark run: pin to one CPU, run every (benchmark, loop, repetition) in a
fresh child process with the loops interleaved, take medians, print
markdown, write JSON.  The child side (the timed code) stays in each
benchmark script, so that what is measured is read in one place.
"""

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time

# Column order of every table.  qloop is found through the ordinary import
# system: put an in-tree build on PYTHONPATH (PYTHONPATH=build/epoll/inplace)
# or install it.
LOOPS = ("asyncio", "uvloop", "rloop", "qloop")
# Variants of qloop that perf/diag.py measures against "qloop" (the default
# build, diagnostics off): the build without diagnostics (meson
# -Ddiagnostics=false; NODIAG_PATH_ENV names the directory to import it
# from, perf/diag.py builds it) and the default build with the watchdog and
# slow-callback reports on, at DIAG_ON_SECONDS.
QLOOP_VARIANTS = ("qloop-nodiag", "qloop-diag")
# qloop with write batching on (loop.set_write_batching(True), what
# QLOOP_BATCH_WRITES=1 does; off by default): an extra column of the echo
# and HTTP suites, for information -- the targets are judged on "qloop".
BATCH_VARIANT = "qloop-batch"
STREAM_LOOPS = LOOPS + (BATCH_VARIANT,)
NODIAG_PATH_ENV = "QLOOP_NODIAG_PATH"
DIAG_ON_SECONDS = 0.1


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# -- the loops ----------------------------------------------------------------

def new_loop(name):
    """A new event loop of implementation `name` (raises if unavailable)."""
    if name == "asyncio":
        import asyncio
        return asyncio.new_event_loop()
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    if name == "rloop":
        import rloop
        return rloop.new_event_loop()
    if name == "qloop":
        import qloop
        return qloop.new_event_loop()
    if name in QLOOP_VARIANTS:
        return import_qloop_variant(name).new_event_loop()
    if name == BATCH_VARIANT:
        import qloop
        loop = qloop.new_event_loop()
        loop.set_write_batching(True)
        return loop
    raise ValueError(f"unknown loop {name!r}")


def import_qloop_variant(name):
    """The qloop module of variant `name` (QLOOP_VARIANTS), set up; raises
    when the build found is not that variant."""
    if name == "qloop-nodiag":
        path = os.environ.get(NODIAG_PATH_ENV)
        if not path:
            raise RuntimeError(f"{NODIAG_PATH_ENV} is not set (perf/diag.py "
                               "builds the build without diagnostics)")
        if "qloop" in sys.modules:
            raise RuntimeError("qloop is imported already")
        sys.path.insert(0, path)
    import qloop
    has = getattr(qloop, "HAS_DIAGNOSTICS", None)
    if has is None:
        raise RuntimeError("this qloop has no HAS_DIAGNOSTICS: too old")
    if has != (name == "qloop-diag"):
        raise RuntimeError(f"the qloop found for {name} was built "
                           f"{'with' if has else 'without'} diagnostics "
                           f"({os.path.dirname(qloop.__file__)})")
    if name == "qloop-diag":
        qloop.diagnostics(watchdog=DIAG_ON_SECONDS,
                          slow_callback=DIAG_ON_SECONDS)
    return qloop


def loop_description(name):
    """Version (and, for qloop, where it was imported from) of loop `name`."""
    if name == "asyncio":
        return f"CPython {platform.python_version()}"
    if name == BATCH_VARIANT:
        return loop_description("qloop").replace("qloop", name, 1) + \
            ", write batching on"
    if name in QLOOP_VARIANTS:
        mod = import_qloop_variant(name) if "qloop" not in sys.modules \
            else sys.modules["qloop"]
        how = ("diagnostics compiled out" if name == "qloop-nodiag" else
               f"watchdog and slow-callback reports at "
               f"{DIAG_ON_SECONDS * 1e3:g} ms")
        return loop_description("qloop").replace("qloop", name, 1) + \
            f", {how}"
    mod = __import__(name)
    version = getattr(mod, "__version__", None)
    if version is None:
        try:
            from importlib import metadata
            version = metadata.version(name)
        except Exception:  # noqa: BLE001 - only a label
            version = "?"
    desc = f"{name} {version}"
    if name == "qloop":
        desc += f" ({os.path.dirname(os.path.abspath(mod.__file__))}"
        backend = getattr(mod, "backend_name", None)
        if callable(backend):
            desc += f", {backend()}"
        desc += ")"
    return desc


def first_line(exc):
    text = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) \
        else str(exc)
    lines = text.strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# -- child processes ----------------------------------------------------------

def child_env():
    """The environment of a child: the parent's, minus what would change how
    a loop behaves (asyncio debug mode, dev mode) or add noise."""
    env = dict(os.environ)
    for var in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE", "PYTHONMALLOC",
                "PYTHONTRACEMALLOC", "PYTHONPROFILEIMPORTTIME",
                "QLOOP_WATCHDOG_MS", "QLOOP_SLOW_CALLBACK_MS",
                "QLOOP_BATCH_WRITES"):
        env.pop(var, None)
    env["PYTHONHASHSEED"] = "0"
    return env


def emit(doc):
    """Child side: the one result line the parent reads."""
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def run_child(cmd, timeout):
    """Run one child; return (result dict, None) or (None, reason).

    The child prints exactly one JSON object as its last stdout line, with
    "status": "ok" or a reason it could not run ("unavailable", "error").
    """
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=timeout, env=child_env())
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:g} s"
    doc = None
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                pass
            break
    if r.returncode != 0 or doc is None:
        if r.returncode < 0:
            try:
                why = f"killed by {signal.Signals(-r.returncode).name}"
            except ValueError:
                why = f"killed by signal {-r.returncode}"
        else:
            why = f"exit status {r.returncode}, no result"
        tail = r.stderr.strip().splitlines()
        if tail:
            why += f" ({tail[-1].strip()[:200]})"
        return None, why
    if doc.get("status") != "ok":
        return None, doc.get("error", "no reason given")
    return doc, None


def pin_cpu(cpu=None):
    """Pin this process (and so every child) to one CPU; return it.

    Default: the highest-numbered CPU we may use (CPU 0 takes most device
    interrupts on a typical Linux box).
    """
    allowed = sorted(os.sched_getaffinity(0))
    if cpu is None:
        cpu = allowed[-1]
    os.sched_setaffinity(0, {cpu})
    return cpu


# -- numbers ------------------------------------------------------------------

def summarize(values):
    """Median and spread of a list of rates (None when empty)."""
    if not values:
        return None
    med = statistics.median(values)
    return {
        "median": med,
        "min": min(values),
        "max": max(values),
        "spread": (max(values) - min(values)) / med if med else 0.0,
        "n_runs": len(values),
    }


def count_label(n):
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
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


def fmt_ratio(x):
    return "n/a" if x is None else f"{x:.2f}x"


def fmt_ratio_range(stats):
    """A ratio's median and its range over the runs: 1.004 [0.991-1.012]."""
    return (f"{stats['median']:.3f} [{stats['min']:.3f}-"
            f"{stats['max']:.3f}]")


def fmt_met(met):
    """The met? column: yes, **no**, - (no target or no figure), or the
    suite's own word when it gives one (perf/floor.py: "unreachable")."""
    if isinstance(met, str):
        return met
    return {True: "yes", False: "**no**", None: "-"}[met]


def markdown_table(header, rows, align):
    """`align` is one character per column: l, r or c."""
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join(marks[a] for a in align) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def machine_meta(cpu):
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "kernel": platform.release(),
        "cpu": cpu,
        "cpu_model": cpu_model(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def write_json(path, doc):
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


def publish(args, text, doc):
    """A suite's output: its markdown report on stdout and in --markdown,
    and the dict `doc` in --json."""
    sys.stdout.write(text)
    sys.stdout.flush()
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
        log(f"wrote {args.markdown}")
    if args.json:
        write_json(args.json, doc)
        log(f"wrote {args.json}")


# -- helpers for suites written to the contract (perf/http.py, memory.py,
#    footprint.py; usable by any suite) ---------------------------------------

PERF_DIR = os.path.dirname(os.path.abspath(__file__))


def two_cpus():
    """(server CPU, load-generator CPU): two different allowed CPUs, the
    highest-numbered one for the server; the same one twice on a 1-CPU box."""
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[-1], allowed[0]


def probe_loops(loops, timeout=60.0):
    """Make and run each loop in a fresh child: ({loop: description},
    {loop: reason it is unavailable})."""
    code = ("import sys; sys.path.insert(0, %r); import _common; "
            "_common.probe_child(sys.argv[1])" % PERF_DIR)
    descs, unavailable = {}, {}
    for loop in loops:
        doc, why = run_child([sys.executable, "-c", code, loop], timeout)
        if doc is None:
            unavailable[loop] = why
            log(f"skipping {loop}: {why}")
        else:
            descs[loop] = doc["desc"]
            log(f"{loop}: {doc['desc']}")
    return descs, unavailable


def probe_child(loop_name):
    try:
        loop = new_loop(loop_name)
        try:
            loop.call_soon(loop.stop)
            loop.run_forever()
        finally:
            loop.close()
        desc = loop_description(loop_name)
    except BaseException as e:  # noqa: BLE001
        emit({"status": "unavailable", "error": first_line(e)})
        return
    emit({"status": "ok", "desc": desc})


def parse_names(text, known, what):
    """Comma-separated names, checked against `known`, in `known`'s order;
    raises ValueError naming the unknown ones."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in items if x not in known]
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(unknown)} "
                         f"(known: {', '.join(known)})")
    if not items:
        raise ValueError(f"no {what} given")
    return [x for x in known if x in items]


def proc_cpu_seconds(pid):
    """CPU time (user + system) a process has used so far, all its threads,
    in seconds: the scheduler's nanosecond counters when the kernel has
    them, else the clock-tick counters of /proc/PID/stat."""
    total, found = 0, False
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
                    found = True
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        pass
    if found:
        return total / 1e9
    return sum(proc_user_system_seconds(pid))


def proc_user_system_seconds(pid):
    """(user, system) CPU seconds a process has used so far, all threads,
    from the clock-tick counters of /proc/PID/stat (the split the
    scheduler's nanosecond counters do not give)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def rss_bytes(pid="self"):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_row(bench, label, metric, unit, better, cells, target=None,
             ref="uvloop"):
    """One contract row.  `cells`: {loop: {"values": [...], "error": str or
    None, "extra": {...}}}; `target`: (op, factor) against `ref`, op "<=" or
    ">=", e.g. ("<=", 0.85), or None."""
    loops = {}
    for loop, c in cells.items():
        stats = summarize(c.get("values") or [])
        loops[loop] = {"stats": stats,
                       "error": None if stats else (c.get("error") or "no runs"),
                       "extra": c.get("extra") or {}}

    def ratio(a, b):
        sa, sb = loops.get(a, {}).get("stats"), loops.get(b, {}).get("stats")
        if sa and sb and sb["median"]:
            return sa["median"] / sb["median"]
        return None

    vs_ref = ratio("qloop", ref)
    met = None
    if target is not None and vs_ref is not None:
        op, factor = target
        met = vs_ref <= factor if op == "<=" else vs_ref >= factor
    row = {"bench": bench, "label": label, "metric": metric, "unit": unit,
           "better": better, "loops": loops,
           "qloop_vs_uvloop": ratio("qloop", "uvloop"),
           "qloop_vs_asyncio": ratio("qloop", "asyncio"),
           "target": f"{target[0]} {target[1]:g}x {ref}" if target else None,
           "met": met}
    if ref != "uvloop":
        row[f"qloop_vs_{ref}"] = vs_ref
    return row


def fmt_value(x, unit):
    """A median with its unit, short."""
    if x is None:
        return "n/a"
    if unit == "B":
        for div, name in ((1 << 20, "MiB"), (1 << 10, "KiB")):
            if abs(x) >= div:
                return f"{x / div:.1f} {name}"
        return f"{x:.0f} B"
    if unit.endswith("/s"):
        return f"{fmt_rate(x)} {unit}".replace("  ", " ")
    if abs(x) >= 100:
        return f"{x:.0f} {unit}"
    if abs(x) >= 10:
        return f"{x:.1f} {unit}"
    return f"{x:.2f} {unit}"


def contract_markdown(title, doc, notes=()):
    """The markdown report of a contract JSON document: one table, the
    loops, the failures, then `notes` (lines)."""
    loops = list(doc["loops"]) + [l for l in doc["unavailable"]
                                  if l not in doc["loops"]]
    loops = [l for l in LOOPS if l in loops] + \
        [l for l in loops if l not in LOOPS]
    meta = doc["meta"]
    out = [f"## {title} ({meta['implementation']} {meta['python']}, "
           f"{meta['machine']}, Linux {meta['kernel']}: {meta['cpu_model']})",
           ""]
    header = ["benchmark", "metric"] + loops + \
        ["qloop/uvloop", "qloop/asyncio", "target", "met?"]
    rows, failures = [], []
    for r in doc["rows"]:
        cells = []
        for l in loops:
            c = r["loops"].get(l)
            if c and c["stats"]:
                cells.append(fmt_value(c["stats"]["median"], r["unit"]))
            elif c is None:
                cells.append("-")  # does not apply to this loop
            elif l in doc["unavailable"]:
                cells.append("n/a")
            else:
                why = c["error"] or "no runs"
                tag = next((t for t, ll, w in failures
                            if ll == l and w == why), None)
                if tag is None:
                    tag = f"e{len(failures) + 1}"
                    failures.append((tag, l, why))
                cells.append(f"n/a [{tag}]")
        rows.append([r["label"], f"{r['metric']} ({r['better']} is better)"]
                    + cells +
                    [fmt_ratio(r["qloop_vs_uvloop"]),
                     fmt_ratio(r["qloop_vs_asyncio"]), r["target"] or "none",
                     fmt_met(r["met"])])
    out.append(markdown_table(header, rows, "ll" + "r" * len(loops) + "rrrc"))
    out.append("")
    out.append("Loops:")
    out.append("")
    for l in loops:
        desc = doc["loops"].get(l)
        out.append(f"- {l}: {desc or 'not run: ' + doc['unavailable'].get(l, '?')}")
    if failures:
        out.append("")
        out.append("Failures:")
        out.append("")
        out += [f"- [{t}] {l}: {w}" for t, l, w in failures]
    if notes:
        out.append("")
        out += list(notes)
    return "\n".join(out) + "\n"
