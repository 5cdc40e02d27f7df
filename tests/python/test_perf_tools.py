"""The echo benchmark's tools work: perf/c/echo_load.c and echo_server.c
build with nothing but a C compiler, the generator counts requests and the
server's CPU, checks every byte and notices a server that corrupts the
echo; perf/echo.py runs a cell end to end; perf/diag.py pairs its runs,
configures the build without diagnostics like the default one, and runs
end to end on the qloop variants.

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
