"""Fixtures of qloop's pytest suite.

`loop` runs one test body twice: against asyncio's own selector loop (the
reference) and against qloop.  When a body passes on 'asyncio' and fails on
'qloop', qloop is wrong; when it fails on both, the test is.  `qloop_loop`
is for what only qloop has (its statistics, its leak behaviour).
"""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

import qloop

LOOP_FACTORIES = {
    "asyncio": asyncio.SelectorEventLoop,
    "qloop": qloop.new_event_loop,
}

# For tests of what a build without diagnostics (meson -Ddiagnostics=false,
# tools/test's build/nodiag) compiles out: lag, callback time, per-callback
# timing, the watchdog.
needs_diagnostics = pytest.mark.skipif(
    not qloop.HAS_DIAGNOSTICS,
    reason="qloop built without diagnostics (-Ddiagnostics=false)")
without_diagnostics = pytest.mark.skipif(
    qloop.HAS_DIAGNOSTICS,
    reason="checks the build without diagnostics (-Ddiagnostics=false)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "qloop_bug(reason): a known qloop bug; the test's qloop run is "
        "xfail(strict=True, reason='qloop bug: ...'); its asyncio run must "
        "pass")


def pytest_collection_modifyitems(config, items):
    """@pytest.mark.qloop_bug(reason) -> xfail(strict=True) on the qloop run
    only (the parametrized 'qloop' id, or a qloop-only test)."""
    for item in items:
        mark = item.get_closest_marker("qloop_bug")
        if mark is None:
            continue
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec else {}
        if "loop_factory" in params and params["loop_factory"] != "qloop":
            continue
        item.add_marker(pytest.mark.xfail(
            strict=True, reason="qloop bug: " + mark.args[0]))


def _close(loop):
    if loop.is_running():  # a failed test left it running: nothing to do
        return
    if not loop.is_closed():
        try:
            loop.run_until_complete(loop.shutdown_default_executor())
        except Exception:
            pass
        loop.close()
    asyncio.set_event_loop(None)


@pytest.fixture(params=list(LOOP_FACTORIES))
def loop_factory(request):
    """The factory of the loop under test: asyncio's or qloop's."""
    return LOOP_FACTORIES[request.param]


@pytest.fixture
def loop(loop_factory):
    """A fresh loop, set as the current one, closed after the test.  Debug
    mode is off whatever the environment says (-X dev,
    PYTHONASYNCIODEBUG): tests that want it turn it on."""
    lp = loop_factory()
    lp.set_debug(False)
    asyncio.set_event_loop(lp)
    yield lp
    _close(lp)


@pytest.fixture
def qloop_loop():
    """A fresh qloop loop, for qloop-only behaviour (debug mode off)."""
    lp = qloop.new_event_loop()
    lp.set_debug(False)
    asyncio.set_event_loop(lp)
    yield lp
    _close(lp)


@pytest.fixture
def impl(loop_factory):
    """'asyncio' or 'qloop': which loop the test runs against."""
    return "qloop" if loop_factory is qloop.new_event_loop else "asyncio"


class TimeLimitExceeded(SystemExit):
    """A test ran too long.  A SystemExit, so that it propagates out of
    both loops' run_forever (an Exception raised in a callback would be
    reported and swallowed) and pytest records a failure, not an abort."""


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_probe():
    """What the process holds, in bytes, as (function, name).  The resident
    set normally; under AddressSanitizer the bytes its allocator has handed
    out and not got back, because there a freed block sits in the
    quarantine (256 MiB by default) and stays resident, so RSS grows with
    what was freed, not with what is held."""
    import ctypes
    try:
        fn = ctypes.CDLL(None).__sanitizer_get_current_allocated_bytes
    except (OSError, AttributeError):
        return _rss_bytes, "RSS"
    fn.restype = ctypes.c_size_t
    return fn, "ASan's allocated bytes"


TEST_TIMEOUT = float(os.environ.get("QLOOP_TEST_TIMEOUT", "30"))


@pytest.fixture(autouse=True)
def _test_timeout():
    """A hung loop fails its test instead of hanging the suite."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise TimeLimitExceeded(f"test still running after {TEST_TIMEOUT} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, TEST_TIMEOUT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(autouse=True)
def _restore_policy_and_loop():
    """No test leaves a policy, a current loop or a running loop behind."""
    policy = asyncio.events._event_loop_policy
    yield
    asyncio.events._set_running_loop(None)
    asyncio.events._event_loop_policy = policy


def run_python(code, *, env=None, timeout=30, args=(), input=None):
    """Run `code` in a fresh interpreter that imports the qloop under test.
    Returns the CompletedProcess (text mode)."""
    full_env = dict(os.environ)
    full_env.pop("PYTHONASYNCIODEBUG", None)
    full_env.pop("PYTHONDEVMODE", None)
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in [os.path.dirname(os.path.dirname(qloop.__file__)),
                    full_env.get("PYTHONPATH", "")] if p)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, *args, "-c", textwrap.dedent(code)],
        env=full_env, capture_output=True, text=True, timeout=timeout,
        input=input)
