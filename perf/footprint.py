#!/usr/bin/env python3
"""Footprint: qloop's wheel, its stripped extension, and import time,
next to uvloop's and rloop's.

    python3 perf/footprint.py [--quick] [--loops L,L] [--bench B,B]
                              [--json PATH] [--markdown PATH] [--runs N]

- wheel: `pip wheel . --no-deps` into build/footprint-wheel (without build
  isolation when meson-python, meson and ninja are importable here, which
  keeps it offline; --quick reuses a wheel newer than every source file);
  its size in bytes, its Requires-Dist and the shared libraries its
  extension needs (readelf -d), in the row's extra.
- ext_stripped: `strip` of a copy of each loop's extension module (qloop's
  from that wheel, uvloop's loop*.so and rloop's _rloop*.so as installed).
- import_time: `python -X importtime -c "import M"`, the cumulative time of
  M's own line (which includes asyncio, imported by every loop here), in a
  fresh process each run; asyncio's column is `import asyncio`.
- import_wall: wall time of `python -c "import M"` minus that of
  `python -c pass`, run alternately, each a fresh process.

Sizes are exact, so they are measured once; times are medians of --runs
fresh processes (default 20, --quick 4), the loops interleaved, pinned to
one CPU.  qloop is whatever `import qloop` finds (PYTHONPATH or installed).
Before timing, each loop's package is byte-compiled (compileall, as pip
does when it installs a wheel): the in-tree qloop has no .pyc files, and
with PYTHONDONTWRITEBYTECODE set none would be written, so each import
would otherwise time the compiler rather than the import.
"""

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from _common import log  # noqa: E402

ROOT = os.path.dirname(_common.PERF_DIR)
WHEEL_DIR = os.path.join(ROOT, "build", "footprint-wheel")
BENCHES = ("wheel", "ext_stripped", "import_time", "import_wall")
MODULE = {"asyncio": "asyncio", "uvloop": "uvloop", "rloop": "rloop",
          "qloop": "qloop"}
# Extension modules per loop, as glob patterns inside the package.
EXTENSION = {"uvloop": "loop*.so", "rloop": "_rloop*.so",
             "qloop": "_qloop*.so"}


def newest_source_mtime():
    newest = 0.0
    for top in ("src", "include", "python"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                newest = max(newest, os.path.getmtime(os.path.join(dirpath, f)))
    for f in ("meson.build", "meson_options.txt", "pyproject.toml"):
        newest = max(newest, os.path.getmtime(os.path.join(ROOT, f)))
    return newest


def build_wheel(reuse):
    """Path of qloop's wheel, built unless `reuse` and one is up to date."""
    wheels = sorted(glob.glob(os.path.join(WHEEL_DIR, "qloop-*.whl")))
    if reuse and wheels and \
            os.path.getmtime(wheels[-1]) > newest_source_mtime():
        log(f"reusing {os.path.relpath(wheels[-1], ROOT)}")
        return wheels[-1]
    shutil.rmtree(WHEEL_DIR, ignore_errors=True)
    os.makedirs(WHEEL_DIR)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
           "--disable-pip-version-check", "-w", WHEEL_DIR, ROOT]
    try:
        import mesonpy  # noqa: F401
        import mesonbuild  # noqa: F401
        import ninja  # noqa: F401
        cmd.insert(4, "--no-build-isolation")
    except ImportError:
        pass
    log("$ " + " ".join(cmd))
    t0 = time.monotonic()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
    if r.returncode != 0:
        raise RuntimeError("pip wheel failed: " +
                           (r.stdout.strip().splitlines() or ["?"])[-1])
    wheels = glob.glob(os.path.join(WHEEL_DIR, "qloop-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"pip wheel made {len(wheels)} qloop wheels")
    log(f"built {os.path.basename(wheels[0])} in "
        f"{time.monotonic() - t0:.1f} s")
    return wheels[0]


def needed_libs(path):
    r = subprocess.run(["readelf", "-d", path], stdout=subprocess.PIPE,
                       text=True)
    return [line.split("[", 1)[1].split("]", 1)[0]
            for line in r.stdout.splitlines() if "(NEEDED)" in line]


def stripped_size(path, tmp):
    copy = os.path.join(tmp, "stripped-" + os.path.basename(path))
    shutil.copyfile(path, copy)
    subprocess.run(["strip", copy], check=True)
    return os.path.getsize(copy)


def child_output(code):
    """What `python -c code` prints, run in a child so that this process's
    imports stay clean; its last stderr line as a RuntimeError if it fails."""
    r = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True,
                       env=_common.child_env())
    if r.returncode != 0:
        raise RuntimeError((r.stderr.strip().splitlines() or ["?"])[-1])
    return r.stdout.strip()


def installed_extension(loop):
    """Path of the installed extension module of `loop` (imports it in a
    child, so that this process's imports stay clean)."""
    return child_output(
        "import os, glob, %s as m; "
        "print(sorted(glob.glob(os.path.join(os.path.dirname(m.__file__),"
        " %r)))[0])" % (MODULE[loop], EXTENSION[loop]))


def package_dir(module):
    """Directory of `module`'s package (found in a child, as installed_extension)."""
    return child_output(
        f"import os, {module} as m; print(os.path.dirname(m.__file__))")


def byte_compile(module):
    """Write the .pyc files of `module`'s package where they are missing or
    stale, as pip's install does; a no-op for an installed package."""
    r = subprocess.run([sys.executable, "-m", "compileall", "-q",
                        package_dir(module)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True,
                       env=_common.child_env())
    if r.returncode != 0:
        raise RuntimeError("compileall failed: " +
                           (r.stdout.strip().splitlines() or ["?"])[-1])


def import_time_us(module):
    """Cumulative -X importtime of `module`'s own top-level line, in µs."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-c",
                        f"import {module}"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True,
                       env=_common.child_env())
    if r.returncode != 0:
        raise RuntimeError((r.stderr.strip().splitlines() or ["?"])[-1])
    for line in r.stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = [p.strip() for p in line[len("import time:"):].split("|")]
        if len(parts) == 3 and parts[2] == module:  # top level: no indent
            return float(parts[1])
    raise RuntimeError(f"no importtime line for {module}")


def wall_s(code):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       env=_common.child_env())
    t = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError((r.stderr.decode().strip().splitlines() or
                            ["?"])[-1])
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="4 runs of each timing; reuse an up-to-date wheel")
    ap.add_argument("--runs", type=int, help="timing runs (default 20)")
    ap.add_argument("--loops", default=",".join(_common.LOOPS))
    ap.add_argument("--bench", help="comma-separated, from " +
                    ",".join(BENCHES))
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--markdown", metavar="PATH")
    args = ap.parse_args()
    try:
        loops = _common.parse_names(args.loops, _common.LOOPS, "loop")
        benches = _common.parse_names(args.bench, BENCHES, "benchmark") \
            if args.bench else list(BENCHES)
    except ValueError as e:
        ap.error(str(e))
    runs = args.runs or (4 if args.quick else 20)

    started = time.monotonic()
    cpu, _ = _common.two_cpus()
    _common.pin_cpu(cpu)
    meta = _common.machine_meta(cpu)
    descs, unavailable = _common.probe_loops(loops)
    ok = [l for l in loops if l in descs]
    rows = []

    def step(msg):
        log(f"[{time.monotonic() - started:6.1f} s] {msg}")

    with tempfile.TemporaryDirectory() as tmp:
        wheel = qloop_so = None
        wheel_error = None
        if "qloop" in loops and ("wheel" in benches or
                                 "ext_stripped" in benches):
            step("wheel: building qloop's wheel")
            try:
                wheel = build_wheel(reuse=args.quick)
                with zipfile.ZipFile(wheel) as z:
                    names = z.namelist()
                    so = [n for n in names if os.path.basename(n)
                          .startswith("_qloop") and n.endswith(".so")]
                    if len(so) != 1:
                        raise RuntimeError(f"{len(so)} _qloop*.so in wheel")
                    qloop_so = z.extract(so[0], tmp)
                    meta_name = next(n for n in names
                                     if n.endswith(".dist-info/METADATA"))
                    metadata = z.read(meta_name).decode()
            except (RuntimeError, OSError, StopIteration) as e:
                wheel_error = _common.first_line(e)
                step(f"    failed: {wheel_error}")
        if "wheel" in benches:
            cells = {}
            for l in loops:
                if l != "qloop":
                    continue  # only qloop's wheel is built here
                if wheel:
                    requires = [line.split(":", 1)[1].strip()
                                for line in metadata.splitlines()
                                if line.startswith("Requires-Dist:")]
                    cells[l] = {"values": [os.path.getsize(wheel)],
                                "extra": {"file": os.path.basename(wheel),
                                          "requires_dist": requires,
                                          "needed": needed_libs(qloop_so)}}
                    step(f"    {os.path.basename(wheel)}: "
                         f"{os.path.getsize(wheel)} B, Requires-Dist "
                         f"{requires or 'none'}, NEEDED "
                         f"{', '.join(cells[l]['extra']['needed'])}")
                else:
                    cells[l] = {"error": wheel_error}
            rows.append(_common.make_row(
                "wheel", "wheel size (pip wheel . --no-deps)", "wheel_bytes",
                "B", "lower", cells))
        if "ext_stripped" in benches:
            step("ext_stripped: strip a copy of each extension")
            cells = {}
            for l in loops:
                if l not in EXTENSION:
                    continue  # asyncio: no extension module of its own
                if l not in ok:
                    cells[l] = {"error": unavailable.get(l)}
                    continue
                try:
                    path = qloop_so if l == "qloop" else installed_extension(l)
                    if path is None:
                        raise RuntimeError(wheel_error or "no wheel")
                    size = stripped_size(path, tmp)
                    cells[l] = {"values": [size],
                                "extra": {"file": os.path.basename(path),
                                          "unstripped_bytes":
                                          os.path.getsize(path)}}
                    step(f"    {l}: {os.path.basename(path)} "
                         f"{os.path.getsize(path)} B, stripped {size} B")
                except (RuntimeError, OSError,
                        subprocess.CalledProcessError) as e:
                    cells[l] = {"error": _common.first_line(e)}
            rows.append(_common.make_row(
                "ext_stripped", "extension module, stripped",
                "stripped_bytes", "B", "lower", cells, ("<=", 0.25)))

    timed = [b for b in ("import_time", "import_wall") if b in benches]
    values = {b: {l: [] for l in ok} for b in timed}
    errors = {}
    for l in ok:  # warm-up: .pyc files written, page cache filled
        try:
            if timed and l != "asyncio":  # the stdlib ships its .pyc files
                byte_compile(MODULE[l])
            import_time_us(MODULE[l])
            wall_s(f"import {MODULE[l]}")
        except RuntimeError as e:
            errors[l] = _common.first_line(e)
    for rep in range(runs if timed else 0):
        order = ok[rep % len(ok):] + ok[:rep % len(ok)] if ok else []
        step(f"import times: run {rep + 1}/{runs}")
        for l in order:
            if l in errors:
                continue
            try:
                if "import_time" in values:
                    values["import_time"][l].append(import_time_us(MODULE[l]))
                if "import_wall" in values:
                    base = wall_s("pass")
                    values["import_wall"][l].append(
                        (wall_s(f"import {MODULE[l]}") - base) * 1e3)
            except RuntimeError as e:
                errors[l] = _common.first_line(e)
    labels = {"import_time": ("import time (-X importtime, cumulative)",
                              "import_us", "µs"),
              "import_wall": ("import wall time (python -c 'import M' "
                              "minus python -c pass)", "import_ms", "ms")}
    for b in timed:
        label, metric, unit = labels[b]
        cells = {l: {"values": values[b].get(l),
                     "error": errors.get(l) or unavailable.get(l)}
                 for l in loops}
        for l in loops:
            if l in values[b] and values[b][l]:
                log(f"    {b} {l}: {statistics.median(values[b][l]):.1f} {unit}")
        rows.append(_common.make_row(b, label, metric, unit, "lower", cells,
                                     ("<=", 1.0)))

    elapsed = time.monotonic() - started
    doc = {"suite": "footprint", "meta": meta, "loops": descs,
           "unavailable": unavailable, "rows": rows,
           "runs": runs, "quick": args.quick, "elapsed_s": elapsed}
    text = _common.contract_markdown(
        "Footprint", doc,
        [f"Sizes measured once (they are exact); times are medians of {runs} "
         "fresh processes, loops interleaved, pinned to CPU "
         f"{cpu}.  Every loop's import includes asyncio's.  Took "
         f"{elapsed:.0f} s."])
    _common.publish(args, text, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
