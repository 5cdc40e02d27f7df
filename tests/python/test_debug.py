"""Debug mode: set_debug, PYTHONASYNCIODEBUG, -X dev, slow callbacks,
coroutine origin tracking, the debug-only checks."""

import asyncio
import logging
import re
import socket
import sys
import threading
import time

import pytest

from conftest import run_python

FACTORY = {
    "asyncio": "asyncio.SelectorEventLoop",
    "qloop": "qloop.new_event_loop",
}


def test_default_debug_follows_environment(loop_factory):
    from asyncio import coroutines

    lp = loop_factory()
    try:
        assert lp.get_debug() is coroutines._is_debug_mode()
    finally:
        lp.close()


def test_set_get_debug(loop):
    assert loop.get_debug() is False
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_get_debug_is_the_debug_attribute(loop):
    """get_debug() returns self._debug, whatever set it and whatever it is
    (asyncio's is `return self._debug`)."""
    marker = object()
    loop._debug = marker
    assert loop.get_debug() is marker
    loop.set_debug(1)
    assert loop.get_debug() == 1
    loop.set_debug(False)


def test_create_future_follows_debug_and_overrides(loop):
    """create_future() is futures.Future(loop=self): a Future of this loop,
    with a source traceback in debug mode only; a subclass's or an
    instance's create_future replaces it, for the loop's own users too."""
    fut = loop.create_future()
    assert type(fut) is asyncio.Future
    assert fut.get_loop() is loop and not fut.done()
    assert fut._source_traceback is None
    loop.set_debug(True)
    assert loop.create_future()._source_traceback is not None
    loop.set_debug(False)

    class MyFuture(asyncio.Future):
        pass

    made = []

    def create_future():
        made.append(MyFuture(loop=loop))
        return made[-1]

    loop.create_future = create_future
    a, b = socket.socketpair()
    a.setblocking(False)

    async def main():
        slept = await asyncio.sleep(0.001, "slept")
        assert len(made) == 1
        loop.call_later(0.01, b.send, b"x")
        return slept, await loop.sock_recv(a, 10)

    try:
        assert loop.run_until_complete(main()) == ("slept", b"x")
    finally:
        a.close()
        b.close()
    assert len(made) == 2 and all(type(f) is MyFuture for f in made)


DEBUG_PROBE = """
    import asyncio, qloop
    loop = {factory}()
    h = loop.call_soon(print)
    print(loop.get_debug(), h._source_traceback is not None,
          "created at" in repr(h))
    h.cancel()
    loop.close()
"""


@pytest.mark.parametrize("how", ["env", "dev", "none"])
def test_debug_from_environment(impl, how):
    env, args = {}, ()
    if how == "env":
        env = {"PYTHONASYNCIODEBUG": "1"}
    elif how == "dev":
        args = ("-X", "dev")
    proc = run_python(DEBUG_PROBE.format(factory=FACTORY[impl]),
                      env=env, args=args)
    assert proc.returncode == 0, proc.stderr
    expected = "True True True" if how != "none" else "False False False"
    assert proc.stdout.strip() == expected


def test_qloop_run_debug_from_environment():
    proc = run_python("""
        import asyncio, qloop
        async def main():
            return asyncio.get_running_loop().get_debug()
        print(qloop.run(main()))
    """, env={"PYTHONASYNCIODEBUG": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


def test_debug_source_traceback(loop):
    loop.set_debug(True)
    h = loop.call_soon(print)
    tb = h._source_traceback
    assert tb and tb[-1][0] == __file__
    assert tb[-1][2] == "test_debug_source_traceback"
    t = loop.call_later(1, print)
    assert t._source_traceback[-1][2] == "test_debug_source_traceback"
    h.cancel()
    t.cancel()
    loop.set_debug(False)
    h = loop.call_soon(print)
    assert h._source_traceback is None
    h.cancel()


def slow_callback():
    time.sleep(0.03)


def test_slow_callback_warning(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01
    loop.call_soon(slow_callback)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_forever()
    msgs = [r.getMessage() for r in caplog.records
            if r.name == "asyncio" and r.levelno == logging.WARNING]
    slow = [m for m in msgs if m.startswith("Executing <Handle")]
    assert len(slow) == 1, msgs
    assert re.fullmatch(
        r"Executing <Handle slow_callback\(\) at .*test_debug\.py:\d+ "
        r"created at .*test_debug\.py:\d+> took \d+\.\d{3} seconds", slow[0])


def test_slow_timer_and_task_warning(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01

    async def slow_coro():
        time.sleep(0.03)

    loop.call_later(0, slow_callback)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_until_complete(slow_coro())
        loop.run_until_complete(asyncio.sleep(0.01))
    msgs = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert any(re.match(r"Executing <TimerHandle when=\S+ slow_callback\(\)",
                        m) for m in msgs), msgs
    assert any(re.match(r"Executing <Task .*slow_coro\(\).* took", m)
               for m in msgs), msgs


def test_no_slow_warning_without_debug(loop, caplog):
    loop.slow_callback_duration = 0.001
    loop.call_soon(slow_callback)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_forever()
    assert not [r for r in caplog.records if "Executing" in r.getMessage()]


def test_fast_callback_no_warning(loop, caplog):
    loop.set_debug(True)
    loop.call_soon(lambda: None)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_forever()
    assert not [r for r in caplog.records if "Executing" in r.getMessage()]


def test_coroutine_origin_tracking(loop):
    async def depth():
        return sys.get_coroutine_origin_tracking_depth()

    assert loop.run_until_complete(depth()) == 0
    loop.set_debug(True)
    assert loop.run_until_complete(depth()) > 0
    assert sys.get_coroutine_origin_tracking_depth() == 0
    loop.set_debug(False)
    assert loop.run_until_complete(depth()) == 0


def test_set_debug_while_running_toggles_tracking(loop):
    async def main():
        before = sys.get_coroutine_origin_tracking_depth()
        loop.set_debug(True)
        # asyncio switches tracking from a call_soon_threadsafe callback.
        for _ in range(3):
            await asyncio.sleep(0)
        after = sys.get_coroutine_origin_tracking_depth()
        h = loop.call_soon(print)
        tb = h._source_traceback
        h.cancel()
        loop.set_debug(False)
        return before, after, tb is not None

    before, after, has_tb = loop.run_until_complete(main())
    assert before == 0 and after > 0 and has_tb


def test_debug_call_soon_from_other_thread_raises(loop):
    loop.set_debug(True)
    errors = []

    def other():
        try:
            loop.call_soon(print)
        except RuntimeError as exc:
            errors.append(str(exc))
        try:
            loop.call_later(1, print)
        except RuntimeError as exc:
            errors.append(str(exc))

    async def main():
        t = threading.Thread(target=other)
        t.start()
        await loop.run_in_executor(None, t.join)

    loop.run_until_complete(main())
    assert len(errors) == 2
    assert all("Non-thread-safe operation invoked on an event loop other "
               "than the current one" in e for e in errors)


def test_debug_call_soon_threadsafe_from_other_thread_ok(loop):
    loop.set_debug(True)
    fut = loop.create_future()
    t = threading.Thread(
        target=lambda: loop.call_soon_threadsafe(fut.set_result, 1))

    async def main():
        t.start()
        return await fut

    assert loop.run_until_complete(main()) == 1
    t.join()


def check_rejects_coroutine_functions(loop, method, named):
    loop.set_debug(True)

    async def coro_fn():
        pass

    first = [] if method.startswith("call_soon") else [0]
    with pytest.raises(TypeError) as info:
        getattr(loop, method)(*first, coro_fn)
    assert str(info.value) == f"coroutines cannot be used with {named}()"
    with pytest.raises(TypeError) as info:
        getattr(loop, method)(*first, 42)
    assert str(info.value) == (
        f"a callable object was expected by {named}(), got 42")


@pytest.mark.parametrize("method", ["call_soon", "call_at",
                                    "call_soon_threadsafe"])
def test_debug_rejects_coroutine_functions(loop, method):
    check_rejects_coroutine_functions(loop, method, method)


def test_debug_call_later_rejects_coroutine_functions(loop):
    check_rejects_coroutine_functions(loop, "call_later", "call_at")


def test_debug_blocking_socket_rejected(loop):
    import socket

    loop.set_debug(True)
    a, b = socket.socketpair()
    try:
        async def main():
            with pytest.raises(ValueError, match="the socket must be "
                                                 "non-blocking"):
                await loop.sock_recv(a, 1)

        loop.run_until_complete(main())
    finally:
        a.close()
        b.close()


def test_current_handle_in_debug(loop):
    loop.set_debug(True)
    seen = []
    h = loop.call_soon(lambda: seen.append(loop._current_handle))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [h]
