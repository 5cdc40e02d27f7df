"""The echo benchmark's tools work: perf/c/echo_load.c and echo_server.c
build with nothing but a C compiler, the generator counts requests and the
server's CPU, checks every byte and notices a server that corrupts the
echo; perf/echo.py runs a cell end to end.

These test the benchmark, not a loop's speed: no timing is asserted.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
sys.path.insert(0, os.path.join(ROOT, "perf"))
import echo  # noqa: E402  perf/echo.py


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
