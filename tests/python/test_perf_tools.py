"""The echo benchmark's tools work: perf/c/echo_load.c and echo_server.c
build with nothing but a C compiler, the generator counts requests and the
server's CPU, checks every byte and notices a server that corrupts the
echo; perf/echo.py runs a cell end to end; perf/diag.py pairs its runs,
configures the build without diagnostics like the default one, and runs
end to end on the qloop variants; perf/floor.py reads `perf report`, puts
each DSO in its bucket, computes its bound rows, and is n/a (exit 0) when
perf is missing or cannot sample.

These test the benchmark, not a loop's speed: no timing is asserted.
"""

import json
import os
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
sys.path.insert(0, os.path.join(ROOT, "perf"))
import _common  # noqa: E402
import diag  # noqa: E402  perf/diag.py
import echo  # noqa: E402  perf/echo.py
import floor  # noqa: E402  perf/floor.py

import qloop  # noqa: E402


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    return echo.build_tools(str(tmp_path_factory.mktemp("echo-tools")))


class CServer:
    def __init__(self, tools, *args):
        self.session = echo.Session([tools["echo_server"], *args],
                                    sorted(os.sched_getaffinity(0))[-1],
                                    echo.tool_env())
        self.port = self.session.start(timeout=10)
        self.pid = self.session.proc.pid

    def stop(self):
        self.session.finish(timeout=10)
        self.session.kill()
        return self.session.proc.returncode


def load(tools, server, *args):
    cmd = [tools["echo_load"], "--port", str(server.port),
           "--server-pid", str(server.pid), "--timeout", "5",
           *[str(a) for a in args]]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=30, env=echo.tool_env())
    return r.returncode, json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("size", [1024, 100 * 1024])
def test_load_against_c_server(tools, size):
    server = CServer(tools)
    try:
        rc, doc = load(tools, server, "--conns", 4, "--size", size,
                       "--warmup", 0.05, "--duration", 0.2)
    finally:
        assert server.stop() == 0  # it stopped on stdin's EOF
    assert (rc, doc["status"]) == (0, "ok"), doc
    assert doc["mismatches"] == 0
    assert doc["requests"] > 0
    assert doc["all_requests"] >= doc["requests"]
    assert doc["seconds"] == pytest.approx(0.2, abs=0.1)
    assert doc["server_cpu_s"] > 0
    assert doc["server_cpu_clock"] in ("schedstat", "stat_ticks")
    assert 0 < doc["p50_us"] <= doc["p99_us"] <= doc["max_us"]


def test_fixed_request_count(tools):
    server = CServer(tools)
    try:
        rc, doc = load(tools, server, "--conns", 3, "--size", 10240,
                       "--requests", 50)
    finally:
        server.stop()
    assert (rc, doc["status"]) == (0, "ok"), doc
    assert doc["requests"] == doc["all_requests"] == 150
    assert doc["mismatches"] == 0


def test_load_detects_corrupting_server(tools):
    # One flipped bit after every 20 kB echoed.
    server = CServer(tools, "--corrupt", "20000")
    try:
        rc, doc = load(tools, server, "--conns", 2, "--size", 1024,
                       "--warmup", 0, "--duration", 0.3)
    finally:
        server.stop()
    assert rc == 1
    assert doc["status"] == "error"
    assert doc["mismatches"] > 0
    assert "wrong" in doc["error"]


def test_load_reports_refused_connection(tools):
    server = CServer(tools)
    port = server.port
    server.stop()
    r = subprocess.run([tools["echo_load"], "--port", str(port),
                        "--duration", "0.1"], stdout=subprocess.PIPE,
                       text=True, timeout=30, env=echo.tool_env())
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["status"] == "error" and "connect" in doc["error"]


def test_echo_suite_one_cell(tmp_path):
    out = tmp_path / "echo.json"
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "perf", "echo.py"), "--quick",
         "--reps", "1", "--loops", "qloop", "--bench", "protocol_1k",
         "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        timeout=120)
    assert r.returncode == 0, r.stderr
    assert "asyncio.Protocol echo, 1 KiB" in r.stdout
    doc = json.loads(out.read_text())
    assert doc["suite"] == "echo"
    (row,) = doc["rows"]
    assert row["bench"] == "protocol_1k"
    assert row["metric"] == "server_cpu_us_per_req"
    cell = row["loops"]["qloop"]
    assert cell["error"] is None, cell
    assert cell["stats"]["median"] > 0
    assert cell["extra"]["rps"]["median"] > 0
    assert row["c_server"]["stats"]["median"] > 0
    assert row["qloop_vs_c_server"] > 0


# -- perf/diag.py ----------------------------------------------------------------

def test_diag_ratios_pair_repetitions():
    costs = {"qloop-nodiag": {0: 10.0, 1: 20.0, 2: 10.0},
             "qloop": {0: 10.5, 1: 19.0, 3: 99.0},   # rep 2 lost, 3 unpaired
             "qloop-diag": "server: boom"}
    off, on = diag.ratio_rows("b", "b", costs)
    c = off["loops"]["qloop"]
    assert c["extra"]["ratios"] == pytest.approx([1.05, 0.95])
    assert c["stats"]["median"] == pytest.approx(1.0)
    assert off["met"] is True and off["target"] == "within noise"
    costs["qloop"] = {0: 11.0, 1: 22.0}
    off, _ = diag.ratio_rows("b", "b", costs)
    assert off["met"] is False  # 1.1 both times: not noise
    assert on["loops"]["qloop-diag"]["stats"] is None
    assert on["loops"]["qloop-diag"]["error"] == "server: boom"
    assert on["met"] is None
    _, on = diag.ratio_rows("b", "b", {"qloop": {0: 1.0},
                                       "qloop-diag": {0: 1.02}})
    assert on["met"] is True and on["target"] == "<= 1.03x"


def test_diag_nodiag_build_configured_like_the_default(tmp_path):
    (tmp_path / "meson-info").mkdir()
    (tmp_path / "meson-info" / "intro-buildoptions.json").write_text(
        json.dumps([{"name": "buildtype", "value": "debugoptimized"},
                    {"name": "b_ndebug", "value": "false"},
                    {"name": "poll_backend", "value": "epoll"},
                    {"name": "python_exe", "value": ""},
                    {"name": "diagnostics", "value": True}]))
    opts = diag.nodiag_options(str(tmp_path))
    assert "--buildtype=debugoptimized" in opts
    assert "-Db_ndebug=false" in opts and "-Dpoll_backend=epoll" in opts
    assert f"-Dpython_exe={sys.executable}" in opts
    assert opts[-3:] == ["-Ddiagnostics=false", "-Dtests=disabled",
                         "-Dbench=disabled"]
    assert "--buildtype=release" in diag.nodiag_options(None)


def test_qloop_diag_variant_turns_them_on():
    code = ("import sys; sys.path.insert(0, %r); import _common; "
            "loop = _common.new_loop('qloop-diag'); import qloop; "
            "print(qloop.diagnostics()['watchdog'], "
            "qloop.diagnostics()['slow_callback']); loop.close()"
            % os.path.join(ROOT, "perf"))
    r = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=60,
                       env=_common.child_env())
    if qloop.HAS_DIAGNOSTICS:
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["0.1", "0.1"]
    else:
        assert r.returncode != 0 and "without diagnostics" in r.stderr


def nodiag_inplace():
    """An importable build without diagnostics, if there is one:
    QLOOP_NODIAG_PATH, or tools/test's build/nodiag."""
    path = os.environ.get(_common.NODIAG_PATH_ENV) or \
        os.path.join(ROOT, "build", "nodiag", "inplace")
    ext = sysconfig.get_config_var("EXT_SUFFIX")  # built for this Python?
    return path if os.path.exists(os.path.join(path, "qloop", "_qloop" + ext)) \
        else None


@pytest.mark.skipif(not qloop.HAS_DIAGNOSTICS,
                    reason="qloop and qloop-diag need the default build")
def test_diag_suite_end_to_end(tmp_path):
    """One repetition of call_soon on the three variants.  Without a build
    without diagnostics (tools/test makes build/nodiag before pytest), the
    variant is n/a with the reason and the rest still runs."""
    path = nodiag_inplace() or str(tmp_path / "none")
    out = tmp_path / "diag.json"
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "perf", "diag.py"), "--quick",
         "--reps", "1", "--bench", "call_soon", "--nodiag-path", path,
         "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        timeout=180)
    assert r.returncode == 0, r.stderr
    assert "diagnostics on vs off" in r.stdout
    doc = json.loads(out.read_text())
    assert doc["suite"] == "diag"
    value, off, on = doc["rows"]
    assert value["bench"] == "call_soon" and value["unit"] == "ops/s"
    for l in ("qloop", "qloop-diag"):
        assert value["loops"][l]["stats"]["median"] > 0, value["loops"][l]
    assert on["loops"]["qloop-diag"]["stats"]["n_runs"] == 1
    if nodiag_inplace():
        assert not doc["unavailable"], doc["unavailable"]
        assert value["loops"]["qloop-nodiag"]["stats"]["median"] > 0
        assert off["loops"]["qloop"]["stats"]["n_runs"] == 1
        assert "diagnostics compiled out" in doc["loops"]["qloop-nodiag"]
    else:
        assert "with diagnostics" in doc["unavailable"]["qloop-nodiag"]
        assert off["loops"]["qloop"]["stats"] is None
        assert "not run" in off["loops"]["qloop"]["error"]


# -- perf/floor.py ---------------------------------------------------------------

def fake_loop_package(tmp_path, name):
    """A package `name` laid out as tools/inplace.sh lays qloop out: its
    extension a symlink into a build directory elsewhere."""
    build = tmp_path / "build" / "python"
    build.mkdir(parents=True)
    so = build / f"_{name}.cpython-x.so"
    so.write_bytes(b"")
    pkg = tmp_path / "site" / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / so.name).symlink_to(so)
    (tmp_path / "site" / f"{name}.libs").mkdir()
    return str(tmp_path / "site"), str(so)


def test_floor_buckets_from_a_perf_report(tmp_path, monkeypatch):
    site, so = fake_loop_package(tmp_path, "fakeloop")
    monkeypatch.syspath_prepend(site)
    loop = floor.loop_code("fakeloop")
    assert so in loop[1]  # found through the symlink
    interp = floor.interpreter_code()
    dynload = sysconfig.get_config_var("DESTSHARED")
    exe = os.path.realpath(sys.executable)
    report = f"""\
# To display the perf.data header info, please use --header/--header-only options.
#
# Samples: 10K of event 'cpu-clock'
#
# Overhead       Samples  Shared Object
# ........  ............  .............
#
    60.00%          6000  [kernel.kallsyms]
    10.00%          1000  /opt/py/lib/libpython3.11.so.1.0
     5.00%           500  {exe}
     4.00%           400  {dynload}/_asyncio.cpython-311-x86_64-linux-gnu.so
     6.00%           600  /usr/lib/x86_64-linux-gnu/libc.so.6
     1.00%           100  /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
     5.00%           500  {so}
     2.00%           200  {site}/fakeloop.libs/libuv-1a2b.so.1.0.0
     3.00%           300  /site-packages/httptools/parser/parser.cpython-311.so
     2.00%           200  [unknown]
     1.00%           100  [vdso]
     1.00%           100  /usr/lib/x86_64-linux-gnu/libcrypto.so.3


#
# (Tip: ...)
#
"""
    entries = floor.parse_report(report)
    assert entries[0] == ("[kernel.kallsyms]", 6000)
    assert len(entries) == 12 and sum(n for _, n in entries) == 10000
    shares, total, dsos = floor.bucket_shares(entries, loop, interp)
    assert total == 10000
    assert shares == pytest.approx({"kernel": 0.61, "interpreter": 0.19,
                                    "libc": 0.07, "loop": 0.07,
                                    "other": 0.06})
    assert dsos["[vdso]"] == pytest.approx(0.01)
    # the path perf names may be the link's, too
    assert floor.bucket_of(os.path.join(site, "fakeloop",
                                        os.path.basename(so)),
                           loop, interp) == "loop"
    # the loop's code is its package's, not whatever is named like it
    assert floor.bucket_of("/elsewhere/_fakeloop.cpython-x.so", loop,
                           interp) == "other"
    assert floor.bucket_of("/usr/lib/libm.so.6", loop, interp) == "libc"
    assert floor.bucket_of("/usr/lib/libmagic.so.1", loop, interp) == "other"


def floor_cells(q, uv):
    """{loop: cell} from {rep: (total, loop µs, libc µs, kernel µs)}."""
    def cell(runs):
        out = {}
        for rep, (total, own, libc, kernel) in runs.items():
            us = {"kernel": kernel, "interpreter": total - own - libc - kernel,
                  "libc": libc, "loop": own, "other": 0.0}
            out[rep] = {"total": total, "unprofiled": total / 1.02,
                        "samples": 1000, "us": us,
                        "shares": {b: v / total for b, v in us.items()},
                        "dsos": {"[kernel.kallsyms]": kernel / total}}
        return {"runs": out, "error": None}
    return {"uvloop": cell(uv), "rloop": {"runs": {}, "error": "boom"},
            "qloop": cell(q)}


def floor_rows(cells):
    return {r["bench"][len("sock_100k_"):]: r
            for r in floor.bench_rows("sock_100k", cells, floor.LOOPS)}


def test_floor_bound_rows():
    uv = {0: (50.0, 2.0, 1.0, 40.0), 1: (40.0, 2.0, 1.0, 32.0)}
    q = {0: (30.0, 0.5, 2.5, 25.0), 1: (30.0, 0.5, 2.5, 25.0),
         2: (99.0, 1.0, 1.0, 90.0)}  # rep 2: no uvloop to pair with
    rows = floor_rows(floor_cells(q, uv))
    assert floor.TARGETS["sock_100k"] == 0.5
    fl = rows["floor"]
    # (30 - 0.5 - 2.5) / 50 and / 40
    assert fl["loops"]["qloop"]["extra"]["reps"] == [0, 1]
    assert fl["loops"]["qloop"]["extra"]["values"] == \
        pytest.approx([0.54, 0.675])
    assert fl["loops"]["qloop"]["stats"]["min"] == pytest.approx(0.54)
    assert fl["loops"]["qloop"]["stats"]["max"] == pytest.approx(0.675)
    assert fl["qloop_vs_uvloop"] == pytest.approx((0.54 + 0.675) / 2)
    assert fl["target"] == "<= 0.5x uvloop" and fl["unit"] == "x"
    assert fl["met"] == "unreachable"
    only = rows["kernel_only"]
    assert only["loops"]["qloop"]["stats"]["median"] == \
        pytest.approx((25 / 50 + 25 / 40) / 2)
    assert only["met"] is None
    tot = rows["total"]
    assert tot["qloop_vs_uvloop"] == pytest.approx((30 / 50 + 30 / 40) / 2)
    assert tot["loops"]["qloop"]["stats"]["median"] == 30.0
    assert tot["loops"]["rloop"]["error"] == "boom"
    assert rows["loop"]["loops"]["qloop"]["stats"]["median"] == 0.5
    assert rows["perf_cost"]["loops"]["uvloop"]["stats"]["median"] == \
        pytest.approx(1.02)
    # below the target in every repetition; then one each side
    rows = floor_rows(floor_cells({0: (20.0, 1.0, 1.0, 15.0)}, uv))
    assert rows["floor"]["met"] == "not ruled out"
    rows = floor_rows(floor_cells({0: (20.0, 1.0, 1.0, 15.0),
                                   1: (30.0, 1.0, 1.0, 25.0)}, uv))
    assert rows["floor"]["met"].startswith("unclear")
    # no uvloop: no bound, with the reason
    cells = floor_cells(q, uv)
    cells["uvloop"] = {"runs": {}, "error": "not run: missing"}
    fl = floor_rows(cells)["floor"]
    assert fl["met"] is None and fl["loops"]["qloop"]["stats"] is None
    assert fl["loops"]["qloop"]["error"] == "not run: missing"


def run_floor(tmp_path, *args):
    out = tmp_path / "floor.json"
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "perf", "floor.py"), "--quick",
         "--json", str(out), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        timeout=180)
    assert r.returncode == 0, r.stderr
    return r, json.loads(out.read_text())


def assert_all_na(doc, why):
    assert doc["rows"]
    for row in doc["rows"]:
        for c in row["loops"].values():
            assert c["stats"] is None and why in c["error"], row
        assert row["met"] is None


def test_floor_without_perf(tmp_path):
    r, doc = run_floor(tmp_path, "--perf", str(tmp_path / "no-perf"))
    assert "not installed" in doc["perf"]["problem"]
    assert_all_na(doc, "not installed")
    assert {r["bench"] for r in doc["rows"]} >= {
        "streams_1k_floor", "sock_100k_floor", "httptools_floor"}
    assert "Not measured: perf is not installed" in r.stdout


def test_floor_when_perf_cannot_sample(tmp_path):
    fake = tmp_path / "perf"
    # what perf 6.1 says, shortened
    fake.write_text("#!/bin/sh\ncat >&2 <<EOF\nError:\nAccess to "
                    "performance monitoring and observability operations is "
                    "limited.\nConsider adjusting /proc/sys/kernel/"
                    "perf_event_paranoid setting to open\nperf_event_paranoid "
                    "setting is 3:\n  -1: Allow use of (almost) all events "
                    "by all users\nEOF\nexit 255\n")
    fake.chmod(0o755)
    r, doc = run_floor(tmp_path, "--perf", str(fake), "--bench", "httptools")
    assert_all_na(doc, "perf_event_paranoid setting is 3")
    assert [r["bench"] for r in doc["rows"]][0] == "httptools_total"


@pytest.mark.skipif(floor.perf_problem("perf") is not None,
                    reason="perf cannot sample here")
def test_floor_suite_one_cell(tmp_path):
    """qloop's streams echo under perf: its own module is found in the
    samples (the in-place build's symlinked extension included)."""
    r, doc = run_floor(tmp_path, "--loops", "qloop", "--bench", "streams_1k")
    rows = {r["bench"]: r for r in doc["rows"]}
    total = rows["streams_1k_total"]["loops"]["qloop"]
    assert total["error"] is None, total
    assert total["stats"]["median"] > 0
    assert total["extra"]["samples"][0] > 0
    assert total["extra"]["unprofiled"]["median"] > 0
    for b in ("kernel", "interpreter", "loop"):
        assert rows[f"streams_1k_{b}"]["loops"]["qloop"]["stats"]["median"] \
            > 0, b
    shares = {b: s["median"] for b, s in total["extra"]["shares"].items()}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert rows["streams_1k_floor"]["loops"]["qloop"]["error"] == \
        "uvloop not run"
