"""A build without diagnostics (meson -Ddiagnostics=false; tools/test builds
one in build/nodiag): the loop works, the plain counts are kept, and what is
compiled out says so instead of reporting zeros.  These tests run only
there; test_stats.py and test_diagnostics.py skip what they cannot check.
"""

import asyncio
import logging
import os
import subprocess
import sys
import time

import pytest

import qloop

from conftest import run_python, without_diagnostics

pytestmark = without_diagnostics

NOT_MEASURED = ("callback_ns", "longest_callback_ns", "longest_callback",
                "loop_lag")


def test_stats_has_the_counts_and_none_for_the_rest(qloop_loop):
    lp = qloop_loop
    st = lp.stats()
    assert set(st) == set(lp._stats()) | set(NOT_MEASURED)

    async def main():
        await asyncio.sleep(0.05)        # a poll that blocks, a timer
        time.sleep(0.02)                 # a blocking callback
        lp.call_later(0, lambda: None)   # a timer that is due at once
        await asyncio.sleep(0)

    lp.run_until_complete(main())
    st = lp.stats()
    assert st["iterations"] > 0
    assert st["callbacks_run"] > 0
    assert st["timers_fired"] >= 2
    assert st["poll_ns"] >= 0.04e9
    for key in NOT_MEASURED:
        assert st[key] is None, key
    lp.close()
    assert lp.stats()["timers_fired"] == st["timers_fired"]


@pytest.mark.parametrize("kw", [{"watchdog": 0.1}, {"slow_callback": True},
                                {"slow_callback": 0.1}, {"slow_callback": 0},
                                {"slow_callback": 0.1, "watchdog": 0.1}])
def test_turning_them_on_raises(kw):
    before = qloop.diagnostics()
    with pytest.raises(RuntimeError, match="built without diagnostics"):
        qloop.diagnostics(**kw)
    assert qloop.diagnostics() == before  # nothing half set


def test_turning_them_off_and_callbacks_are_fine():
    saved = qloop.diagnostics()
    try:
        got = qloop.diagnostics(slow_callback=None, watchdog=None,
                                on_stall=print, on_slow=None)
        assert got["slow_callback"] is None and got["watchdog"] is None
        assert qloop.diagnostics(slow_callback=False, watchdog=0)[
            "on_stall"] is print
    finally:
        qloop.diagnostics(on_stall=saved["on_stall"],
                          on_slow=saved["on_slow"])


def test_the_c_side_refuses_too(qloop_loop):
    with pytest.raises(RuntimeError, match="built without diagnostics"):
        qloop_loop._diag_configure(False, None, 0.1, print)
    with pytest.raises(RuntimeError, match="built without diagnostics"):
        qloop_loop._diag_configure(True, print, 0.0, None)
    qloop_loop._diag_configure(False, None, 0.0, None)  # off: fine


def test_environment_is_ignored_with_a_warning():
    code = """
        import asyncio, os, time, qloop
        async def main():
            await asyncio.sleep(0)
            time.sleep(0.3)
            return len(os.listdir("/proc/self/task"))
        print("threads", qloop.run(main()))
    """
    p = run_python(code, env={"QLOOP_WATCHDOG_MS": "100",
                              "QLOOP_SLOW_CALLBACK_MS": "150"})
    assert p.returncode == 0, p.stderr
    assert "ignoring QLOOP_WATCHDOG_MS" in p.stderr
    assert "ignoring QLOOP_SLOW_CALLBACK_MS" in p.stderr
    assert "built without diagnostics" in p.stderr
    assert "blocked" not in p.stderr and "took" not in p.stderr
    assert "threads 1" in p.stdout  # no watchdog thread


def test_qloop_run_says_why_it_cannot(tmp_path):
    script = tmp_path / "app.py"
    script.write_text("print('ran')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        x for x in [os.path.dirname(os.path.dirname(qloop.__file__)),
                    env.get("PYTHONPATH", "")] if x)
    p = subprocess.run([sys.executable, "-m", "qloop", "run", str(script)],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "built without diagnostics" in p.stderr
    assert "ran" not in p.stdout


def test_debug_mode_still_reports_slow_callbacks(qloop_loop, caplog):
    """asyncio's own debug-mode warning is not part of what is compiled
    out."""
    lp = qloop_loop
    lp.set_debug(True)
    lp.slow_callback_duration = 0.05

    def blocker():
        time.sleep(0.08)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        lp.call_soon(blocker)
        lp.call_soon(lp.stop)
        lp.run_forever()
    assert any("blocker" in r.getMessage() and "took" in r.getMessage()
               for r in caplog.records), caplog.text
