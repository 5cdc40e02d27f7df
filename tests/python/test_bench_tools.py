"""tools/bench's machinery works: the report from the suites' JSON (both
the contract's shape and the older c_compare/py_micro shapes), the exit
status when a suite's output is unusable, the README rewrite, wrk's output
parsed, perf/http.py harmless as `http`, perf/memory.py end to end, the
diag suite's ratio rows in the report.

These test the benchmarks' tools, not a loop's speed: no timing is asserted.
"""

import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
PERF = os.path.join(ROOT, "perf")
sys.path.insert(0, PERF)
import _common  # noqa: E402
import _http  # noqa: E402
import bench  # noqa: E402


def cell(*values):
    return {"values": list(values)}


def contract_doc():
    rows = [_common.make_row("b_cpu", "server CPU", "cpu", "µs/req", "lower",
                             {"asyncio": cell(10.0, 12.0),
                              "uvloop": cell(8.0, 8.0),
                              "qloop": cell(6.0, 6.0),
                              "qloop-batch": cell(5.5, 5.6),
                              "rloop": {"error": "boom"}},
                             ("<=", 0.85))]
    return {"suite": "http", "meta": _common.machine_meta(0),
            "loops": {"asyncio": "a", "uvloop": "u", "qloop": "q",
                      "qloop-batch": "qb", "rloop": "r"},
            "unavailable": {}, "rows": rows}


def py_micro_doc():
    stats = _common.summarize
    return {"meta": {}, "rows": [{
        "bench": "call_soon", "label": "call_soon: 1k", "n": 1000,
        "timed": "", "target_vs_uvloop": 2.5, "qloop_vs_uvloop": 3.0,
        "qloop_vs_asyncio": 6.0, "met": True,
        "loops": {"asyncio": {"stats": stats([1.0]), "error": None},
                  "uvloop": {"stats": stats([2.0]), "error": None},
                  "qloop": {"stats": stats([6.0]), "error": None}}}]}


def run_report(results, *extra):
    return subprocess.run(
        [sys.executable, os.path.join(PERF, "bench.py"), "--report-only",
         "--results", str(results), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)


def test_make_row_ratios_and_target():
    row = contract_doc()["rows"][0]
    assert row["qloop_vs_uvloop"] == pytest.approx(0.75)
    assert row["qloop_vs_asyncio"] == pytest.approx(6.0 / 11.0)
    assert row["target"] == "<= 0.85x uvloop" and row["met"] is True
    assert row["loops"]["rloop"]["stats"] is None
    assert row["loops"]["rloop"]["error"] == "boom"
    assert bench.parse_target(row["target"]) == ("<=", 0.85)
    assert bench.parse_target(">= 2.5x uvloop") == (">=", 2.5)
    assert bench.parse_target(None) is None


def test_report_only(tmp_path):
    _common.write_json(str(tmp_path / "http.json"), contract_doc())
    _common.write_json(str(tmp_path / "py_micro.json"), py_micro_doc())
    r = run_report(tmp_path, "--only", "py_micro,http")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    http = summary["suites"]["http"]
    assert http["status"] == "ok"
    assert http["rows"][0]["ratio"] == pytest.approx(0.75)
    micro = summary["suites"]["py_micro"]["rows"][0]
    assert micro["ratio"] == pytest.approx(3.0)
    assert micro["target"] == ">= 2.5x uvloop" and micro["unit"] == "ops/s"
    md = (tmp_path / "summary.md").read_text()
    assert "| server CPU |" in md and "0.75x" in md and "call_soon: 1k" in md
    assert "| server CPU |" in r.stdout  # the table is printed too
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "chart.png").stat().st_size > 1000


def diag_doc():
    import diag
    cells = {"qloop-nodiag": cell(100.0, 102.0), "qloop": cell(101.0, 100.0),
             "qloop-diag": cell(104.0, 105.0)}
    rows = [diag.value_row("echo_protocol_1k", "echo 1k", "cpu", "µs/req",
                           "lower", cells)]
    costs = {l: dict(enumerate(c["values"])) for l, c in cells.items()}
    rows += diag.ratio_rows("echo_protocol_1k", "echo 1k", costs)
    return {"suite": "diag", "meta": _common.machine_meta(0),
            "loops": {l: l for l in cells}, "unavailable": {}, "rows": rows}


def test_report_only_diag(tmp_path):
    _common.write_json(str(tmp_path / "diag.json"), diag_doc())
    r = run_report(tmp_path, "--only", "diag")
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "summary.md").read_text()
    header = next(l for l in md.splitlines() if l.startswith("| benchmark"))
    assert header.index("qloop-nodiag") < header.index("| qloop |") < \
        header.index("qloop-diag")
    # the ratio rows show their range: 101/100 and 100/102 -> [0.980-1.010]
    assert "0.995 [0.980-1.010]" in md
    assert "within noise" in md and "<= 1.03x" in md
    rows = json.loads((tmp_path / "summary.json").read_text())[
        "suites"]["diag"]["rows"]
    assert [r["met"] for r in rows] == [None, True, False]


def test_report_only_floor(tmp_path):
    """The floor suite's own word in the met? column; no chart panel."""
    import floor
    rows = [floor.row("b_total", "b: server CPU under perf", "cpu", "µs/req",
                      {"uvloop": ([10.0], None, None),
                       "qloop": ([9.0], None, None)}, vs_uvloop=0.9),
            floor.row("b_floor", "b: floor", "floor_ratio", "x",
                      {"qloop": ([0.88, 0.87, 0.9], None, None)},
                      vs_uvloop=0.88, target="<= 0.85x uvloop",
                      met=floor.verdict(_common.summarize([0.88, 0.87, 0.9]),
                                        0.85))]
    _common.write_json(str(tmp_path / "floor.json"), {
        "suite": "floor", "meta": _common.machine_meta(0),
        "loops": {"uvloop": "u", "qloop": "q"}, "unavailable": {},
        "rows": rows})
    r = run_report(tmp_path, "--only", "floor")
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "summary.md").read_text()
    line = next(l for l in md.splitlines() if l.startswith("| b: floor"))
    assert "0.880 [0.870-0.900]" in line and "0.88x" in line
    assert line.endswith("| <= 0.85x uvloop | unreachable |")
    assert "floor" in bench.NOT_CHARTED and "floor" in bench.SUITES


def test_diag_suite_gets_no_loops_option():
    class Args:
        results, quick, loops = "/tmp/r", True, "qloop,uvloop"
    cmd = bench.suite_args("diag", Args, ["call_soon"])
    assert "--loops" not in cmd
    assert cmd[-2:] == ["--bench", "call_soon"] and "--quick" in cmd
    assert "diag" in bench.SUITES


def test_unusable_json_fails(tmp_path):
    (tmp_path / "memory.json").write_text("{not json")
    r = run_report(tmp_path, "--only", "memory")
    assert r.returncode == 1
    assert "memory" in r.stderr


def test_update_readme(tmp_path):
    (tmp_path / "README.md").write_text(
        f"# x\n\nbefore\n{bench.README_BEGIN}\nold table\n{bench.README_END}"
        "\nafter\n")
    (tmp_path / "chart.png").write_bytes(b"png")
    assert bench.update_readme("| new | table |\n", True, str(tmp_path),
                               root=str(tmp_path))
    text = (tmp_path / "README.md").read_text()
    assert "old table" not in text and "| new | table |" in text
    assert text.startswith("# x\n\nbefore\n") and text.endswith("\nafter\n")
    assert "docs/bench.png" in text
    assert (tmp_path / "docs" / "bench.png").read_bytes() == b"png"


WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:40000/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.07ms  350.00us   9.00ms   90.00%
    Req/Sec    46.10k     2.00k   50.00k    80.00%
  Latency Distribution
     50%  715.00us
     75%    1.10ms
     90%    1.50ms
     99%    7.89ms
  46100 requests in 1.00s, 4.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 0
Requests/sec:  46098.12
Transfer/sec:      4.00MB
"""


def test_parse_wrk():
    res = _http.parse_wrk(WRK_OUTPUT)
    assert res["requests"] == 46100 and res["seconds"] == pytest.approx(1.0)
    assert res["rps"] == pytest.approx(46098.12)
    assert res["p50_ms"] == pytest.approx(0.715)
    assert res["p99_ms"] == pytest.approx(7.89)
    assert "read 3" in res["errors"]


def test_http_suite_does_not_shadow_stdlib_http():
    # perf/ is on sys.path here: `import http` must still be the stdlib's.
    r = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, %r); "
         "import http.client, urllib.request; print(http.__file__)" % PERF],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not r.stdout.strip().startswith(PERF)


def test_memory_suite_end_to_end(tmp_path):
    out = tmp_path / "memory.json"
    r = subprocess.run(
        [sys.executable, os.path.join(PERF, "memory.py"), "--connections",
         "300", "--reps", "1", "--loops", "asyncio,qloop", "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["suite"] == "memory" and not doc["unavailable"], doc
    row = doc["rows"][0]
    for loop in ("asyncio", "qloop"):
        c = row["loops"][loop]
        assert c["error"] is None and c["stats"]["n_runs"] == 1, c
        run = c["extra"]["runs"][0]
        assert run["rss_after"] > 0 and run["rss_base"] > 0
    assert "server RSS per idle TCP connection" in r.stdout


def test_proc_user_system_seconds_split():
    # Busy user-space work shows as user time, and the split adds up to
    # about what proc_cpu_seconds reports (ticks against nanoseconds).
    u0, s0 = _common.proc_user_system_seconds(os.getpid())
    c0 = _common.proc_cpu_seconds(os.getpid())
    end = time.process_time() + 0.3
    while time.process_time() < end:  # a system call: seldom
        sum(range(200000))
    u1, s1 = _common.proc_user_system_seconds(os.getpid())
    c1 = _common.proc_cpu_seconds(os.getpid())
    assert u1 - u0 >= 0.15
    assert s1 >= s0
    assert (u1 - u0) + (s1 - s0) == pytest.approx(c1 - c0, abs=0.1)


def test_quick_args_keep_every_loop_and_target():
    # --quick trims repetitions and the non-target HTTP server, never the
    # loops nor a suite; a --bench on the command line replaces the default.
    class Args:
        results, quick, loops = "/tmp/r", True, "asyncio,uvloop,rloop,qloop"
    for name in bench.SUITES:
        cmd = bench.suite_args(name, Args, None)
        assert "--quick" in cmd
        if name not in ("c_compare", "diag"):
            assert cmd[cmd.index("--loops") + 1] == Args.loops
    http = bench.suite_args("http", Args, None)
    assert http[http.index("--bench") + 1] == "httptools"  # the target row
    assert bench.suite_args("http", Args, ["aiohttp"])[-2:] == \
        ["--bench", "aiohttp"]
    assert "httptools" in _http.BENCHES

    class Full(Args):
        quick = False
    assert "--reps" not in bench.suite_args("process", Full, None)


def test_summary_says_what_each_suite_took():
    doc = contract_doc()
    meta = dict(_common.machine_meta(None), n_cpus=2, loadavg="0.10")
    summary = {"meta": meta, "command": "tools/bench --quick",
               "quick": True, "elapsed_s": 61.0,
               "suites": {"http": {"status": "ok", "elapsed_s": 12.4,
                                   "rows": bench.normalise("http", doc)},
                          "memory": {"status": "ok", "elapsed_s": 7.2,
                                     "rows": []}}}
    md = bench.summary_markdown(summary)
    assert "quick run, 61 s (http 12 s, memory 7 s)" in md
