"""Signal handlers and Ctrl-C."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import run_python

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"),
                                reason="POSIX signals")


def test_add_signal_handler_runs_as_loop_callback(loop):
    got = []

    def handler(*args):
        got.append((args, asyncio.get_running_loop() is loop,
                    threading.current_thread() is threading.main_thread()))
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, handler, "arg1", 2)
    try:
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        loop.call_later(5, loop.stop)  # safety net
        loop.run_forever()
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert got == [(("arg1", 2), True, True)]
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_signal_wakes_idle_loop(loop):
    got = []
    loop.add_signal_handler(signal.SIGUSR1, lambda: (got.append(1),
                                                     loop.stop()))
    t = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        t0 = time.monotonic()
        t.start()
        loop.call_later(5, loop.stop)
        loop.run_forever()
        assert got == [1]
        assert time.monotonic() - t0 < 2
    finally:
        t.join()
        loop.remove_signal_handler(signal.SIGUSR1)


def test_signal_handler_replaced(loop):
    got = []
    loop.add_signal_handler(signal.SIGUSR2, got.append, "first")
    loop.add_signal_handler(signal.SIGUSR2, got.append, "second")
    try:
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR2)
        loop.run_until_complete(asyncio.sleep(0.05))
    finally:
        loop.remove_signal_handler(signal.SIGUSR2)
    assert got == ["second"]


def test_many_signals(loop):
    got = []
    loop.add_signal_handler(signal.SIGUSR1, got.append, 1)

    async def main():
        for _ in range(20):
            os.kill(os.getpid(), signal.SIGUSR1)
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.02)

    try:
        loop.run_until_complete(main())
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    assert 1 <= len(got) <= 20


def test_signal_handler_errors(loop):
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(signal.SIGKILL, lambda: None)
    with pytest.raises(ValueError):
        loop.add_signal_handler(10000, lambda: None)

    async def coro_fn():
        pass

    with pytest.raises(TypeError):
        loop.add_signal_handler(signal.SIGUSR1, coro_fn)
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_add_signal_handler_outside_main_thread(loop_factory):
    errors = []

    def worker():
        lp = loop_factory()
        try:
            lp.add_signal_handler(signal.SIGUSR1, lambda: None)
        except (RuntimeError, ValueError) as exc:
            errors.append(type(exc))
        finally:
            lp.close()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert errors == [RuntimeError]


def test_close_removes_signal_handlers(loop):
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


CTRL_C_SCRIPT = """
import asyncio, sys
import qloop

async def main():
    print("ready", flush=True)
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        print("main cancelled", flush=True)
        raise
    print("not interrupted", flush=True)

try:
    {run}(main())
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
    sys.exit(42)
print("returned", flush=True)
"""

CTRL_C_UNCAUGHT_SCRIPT = """
import asyncio
import qloop

async def main():
    print("ready", flush=True)
    await asyncio.sleep(30)

{run}(main())
"""

CTRL_C_BUSY_SCRIPT = """
import asyncio, sys, time
import qloop

async def main():
    print("ready", flush=True)
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            # A loop of callbacks that never blocks in the poll.
            await asyncio.sleep(0)
    except asyncio.CancelledError:
        print("main cancelled", flush=True)
        raise

try:
    {run}(main())
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
    sys.exit(42)
"""


def _interrupt(code):
    """Run `code` in a subprocess, send SIGINT once it prints "ready".
    Returns (exit status, stdout, stderr)."""
    import textwrap

    import qloop

    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    env.pop("PYTHONDEVMODE", None)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(qloop.__file__))
    # A terminal's Ctrl-C reaches a process whose SIGINT is at its default;
    # a shell's background job inherits SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler at all.  Start the child as a
    # terminal would, whatever this process inherited.
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stdout.readline()
        assert line == "ready\n", proc.stderr.read()
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, line + out, err


@pytest.mark.parametrize("script", [
    CTRL_C_SCRIPT,
    # Before 3.11's Runner (its SIGINT handler cancels the main task), where
    # KeyboardInterrupt lands in a busy loop is a matter of luck.
    pytest.param(CTRL_C_BUSY_SCRIPT, marks=pytest.mark.skipif(
        sys.version_info < (3, 11), reason="3.11+: asyncio.Runner")),
], ids=["idle", "busy"])
def test_ctrl_c_like_asyncio_run(script):
    ref = _interrupt(script.format(run="asyncio.run"))
    got = _interrupt(script.format(run="qloop.run"))
    assert got[:2] == ref[:2], (got, ref)
    if sys.version_info >= (3, 11):
        assert "main cancelled" in ref[1]
    assert ref[0] == 42


def test_ctrl_c_uncaught_exit_status_like_asyncio_run():
    ref = _interrupt(CTRL_C_UNCAUGHT_SCRIPT.format(run="asyncio.run"))
    got = _interrupt(CTRL_C_UNCAUGHT_SCRIPT.format(run="qloop.run"))
    assert got[:2] == ref[:2], (got, ref)
    assert "KeyboardInterrupt" in got[2]
    assert ref[0] == -signal.SIGINT


@pytest.mark.parametrize("factory", ["asyncio.SelectorEventLoop",
                                     "qloop.new_event_loop"])
def test_ctrl_c_during_run_forever(factory):
    """A plain run_forever() (no Runner, no SIGINT handler of asyncio's)
    gets KeyboardInterrupt, and the loop stays usable."""
    rc, out, err = _interrupt(f"""
        import asyncio, qloop
        loop = {factory}()
        print("ready", flush=True)
        try:
            loop.run_forever()
        except KeyboardInterrupt:
            print("KeyboardInterrupt", loop.is_running(), flush=True)
        print(loop.run_until_complete(asyncio.sleep(0, "usable")), flush=True)
        loop.close()
    """)
    assert rc == 0, err
    assert out == "ready\nKeyboardInterrupt False\nusable\n"


def test_signal_handler_in_subprocess_with_qloop_run():
    proc = run_python("""
        import asyncio, os, signal, qloop
        async def main():
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            loop.add_signal_handler(signal.SIGTERM, fut.set_result, "term")
            os.kill(os.getpid(), signal.SIGTERM)
            return await asyncio.wait_for(fut, 5)
        print(qloop.run(main()))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "term\n"


def test_exception_from_python_signal_handler_while_idle(loop):
    """A Python-level signal handler raising while the loop waits in its
    poll: the exception comes out of run_forever, the loop stays usable."""
    class Alarm(Exception):
        pass

    def on_alarm(signum, frame):
        raise Alarm("alarm")

    old = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        loop.call_later(5, loop.stop)
        with pytest.raises(Alarm, match="alarm"):
            loop.run_forever()
        assert not loop.is_running()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert loop.run_until_complete(asyncio.sleep(0.001, "usable")) == "usable"


FACTORY_EXPR = {"asyncio": "asyncio.SelectorEventLoop",
                "qloop": "qloop.new_event_loop"}


def test_threadsafe_calls_racing_close_do_not_crash(impl):
    proc = run_python(f"""
        import asyncio, threading, time, qloop
        factory = {FACTORY_EXPR[impl]}
        for _ in range(20):
            loop = factory()
            stop = threading.Event()
            errors = []
            def hammer():
                while not stop.is_set():
                    try:
                        loop.call_soon_threadsafe(lambda: None)
                        time.sleep(0)  # let the loop thread have the GIL
                    except RuntimeError as exc:
                        errors.append(str(exc))
                        return
            threads = [threading.Thread(target=hammer) for _ in range(3)]
            for t in threads:
                t.start()
            loop.run_until_complete(asyncio.sleep(0.002))
            loop.close()
            stop.set()
            for t in threads:
                t.join()
            assert all(e == "Event loop is closed" for e in errors), errors
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"
