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
    raise ValueError(f"unknown loop {name!r}")


def loop_description(name):
    """Version (and, for qloop, where it was imported from) of loop `name`."""
    if name == "asyncio":
        return f"CPython {platform.python_version()}"
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
                "PYTHONTRACEMALLOC", "PYTHONPROFILEIMPORTTIME"):
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
