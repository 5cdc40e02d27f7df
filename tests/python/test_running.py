"""run_forever, run_until_complete, stop, close: the loop's life cycle."""

import asyncio
import sys
import threading

import pytest


def test_run_until_complete_returns_result(loop):
    async def main():
        await asyncio.sleep(0)
        return 42

    assert loop.run_until_complete(main()) == 42
    fut = loop.create_future()
    loop.call_soon(fut.set_result, "done")
    assert loop.run_until_complete(fut) == "done"


def test_run_until_complete_raises_the_exception(loop):
    async def main():
        await asyncio.sleep(0)
        raise ZeroDivisionError("boom")

    with pytest.raises(ZeroDivisionError, match="boom"):
        loop.run_until_complete(main())
    assert not loop.is_running()


def test_run_until_complete_rejects_other_loops_future(loop):
    other = asyncio.SelectorEventLoop()
    try:
        fut = other.create_future()
        with pytest.raises(ValueError, match="different loop"):
            loop.run_until_complete(fut)
    finally:
        other.close()


def test_run_until_complete_stopped_before_done(loop):
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError,
                       match="Event loop stopped before Future completed."):
        loop.run_until_complete(fut)


def test_stop_before_run_forever_runs_one_iteration(loop):
    order = []

    def first():
        order.append("first")
        loop.call_soon(second)

    def second():
        order.append("second")

    loop.call_soon(first)
    loop.stop()
    loop.run_forever()
    assert order == ["first"]
    # The next run picks up what the first iteration queued.
    loop.stop()
    loop.run_forever()
    assert order == ["first", "second"]


def test_stop_before_run_forever_runs_due_timers(loop):
    out = []
    loop.call_at(loop.time() - 1, out.append, "due")
    loop.call_later(10, out.append, "not-due").cancel()
    loop.stop()
    loop.run_forever()
    assert out == ["due"]


def test_stop_before_run_forever_runs_ready_io(loop):
    import socket

    a, b = socket.socketpair()
    try:
        out = []
        b.send(b"x")
        loop.add_reader(a, out.append, "readable")
        # Let the kernel see the byte before the single iteration.
        loop.stop()
        loop.run_forever()
        assert out == ["readable"]
        loop.remove_reader(a)
    finally:
        a.close()
        b.close()


def test_stop_before_run_forever_with_nothing_queued_returns(loop):
    loop.stop()
    loop.run_forever()  # must not block
    assert not loop.is_running()


def test_stop_from_callback_ends_after_current_batch(loop):
    order = []

    def a():
        order.append("a")
        loop.stop()
        loop.call_soon(c)

    def b():
        order.append("b")

    def c():
        order.append("c")

    loop.call_soon(a)
    loop.call_soon(b)
    loop.run_forever()
    assert order == ["a", "b"]
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert order == ["a", "b", "c"]


def test_stop_from_timer_and_io_callbacks(loop):
    calls = []
    loop.call_later(0.01, lambda: (calls.append("timer"), loop.stop()))
    loop.run_forever()
    assert calls == ["timer"]


def test_stop_twice_is_one_stop(loop):
    n = []
    loop.call_soon(loop.stop)
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.call_soon(n.append, 1)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert n == [1]


def test_is_running_and_is_closed(loop):
    seen = []
    loop.call_soon(lambda: seen.append(loop.is_running()))
    loop.call_soon(loop.stop)
    assert not loop.is_running()
    loop.run_forever()
    assert seen == [True]
    assert not loop.is_running()
    assert not loop.is_closed()
    loop.close()
    assert loop.is_closed()
    loop.close()  # idempotent
    assert loop.is_closed()


def test_get_running_loop_inside(loop):
    async def main():
        return asyncio.get_running_loop()

    assert loop.run_until_complete(main()) is loop
    with pytest.raises(RuntimeError, match="no running event loop"):
        asyncio.get_running_loop()


# CPython 3.13.0's run_forever runs its cleanup also when its set-up
# refused a nested run, so asyncio's loop then believes it is not running.
ASYNCIO_NESTED_RUN_BUG = sys.version_info[:3] == (3, 13, 0)


def test_nested_run_forever_raises(loop, impl):
    errors = []

    def nested():
        try:
            loop.run_forever()
        except RuntimeError as exc:
            errors.append(str(exc))
        errors.append(loop.is_running())
        loop.stop()

    loop.call_soon(nested)
    loop.run_forever()
    if impl == "asyncio" and ASYNCIO_NESTED_RUN_BUG:
        errors[1] = True
    assert errors == ["This event loop is already running", True]
    assert not loop.is_running()


def test_nested_run_until_complete_raises(loop):
    errors = []

    def nested():
        coro = asyncio.sleep(0)
        try:
            loop.run_until_complete(coro)
        except RuntimeError as exc:
            errors.append(str(exc))
        finally:
            coro.close()
        errors.append(loop.is_running())
        loop.stop()

    loop.call_soon(nested)
    loop.run_forever()
    assert errors == ["This event loop is already running", True]
    assert not loop.is_running()


def test_running_another_loop_inside_a_running_loop_raises(loop):
    other = asyncio.SelectorEventLoop()
    errors = []

    def nested():
        coro = asyncio.sleep(0)
        try:
            other.run_until_complete(coro)
        except RuntimeError as exc:
            errors.append(str(exc))
        finally:
            coro.close()
        loop.stop()

    try:
        loop.call_soon(nested)
        loop.run_forever()
    finally:
        other.close()
    assert errors == [
        "Cannot run the event loop while another loop is running"]


def test_loop_inside_another_running_loop_raises(loop_factory):
    outer = asyncio.SelectorEventLoop()
    inner = loop_factory()
    errors = []

    def nested():
        coro = asyncio.sleep(0)
        try:
            inner.run_until_complete(coro)
        except RuntimeError as exc:
            errors.append(str(exc))
        finally:
            coro.close()
        outer.stop()

    try:
        outer.call_soon(nested)
        outer.run_forever()
    finally:
        outer.close()
        inner.close()
    assert errors == [
        "Cannot run the event loop while another loop is running"]


def test_run_in_a_non_main_thread(loop_factory):
    result = {}

    def worker():
        lp = loop_factory()
        try:
            async def main():
                await asyncio.sleep(0.01)
                fut = lp.create_future()
                lp.call_later(0.005, fut.set_result, threading.get_ident())
                return await fut

            result["value"] = lp.run_until_complete(main())
        except BaseException as exc:  # reported below
            result["error"] = exc
        finally:
            lp.close()

    t = threading.Thread(target=worker)
    t.start()
    t.join(10)
    assert not t.is_alive()
    assert "error" not in result, result.get("error")
    assert result["value"] == t.ident


def test_two_loops_in_two_threads_at_once(loop_factory):
    barrier = threading.Barrier(2)
    results = []

    def worker(i):
        lp = loop_factory()
        try:
            async def main():
                await lp.run_in_executor(None, barrier.wait, 5)
                await asyncio.sleep(0.01)
                return i
            results.append(lp.run_until_complete(main()))
        finally:
            lp.run_until_complete(lp.shutdown_default_executor())
            lp.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == [0, 1]


def _closed_loop_calls(loop):
    cb = lambda: None  # noqa: E731
    return {
        "call_soon": lambda: loop.call_soon(cb),
        "call_soon_threadsafe": lambda: loop.call_soon_threadsafe(cb),
        "call_later": lambda: loop.call_later(1, cb),
        "call_at": lambda: loop.call_at(loop.time() + 1, cb),
        "run_forever": lambda: loop.run_forever(),
        "run_until_complete": lambda: loop.run_until_complete(
            loop.create_future()),
        "add_reader": lambda: loop.add_reader(0, cb),
        "add_writer": lambda: loop.add_writer(1, cb),
        "run_in_executor": lambda: loop.run_in_executor(None, cb),
    }


@pytest.mark.parametrize("method", list(_closed_loop_calls(None)))
def test_closed_loop_raises(loop, method):
    loop.close()
    with pytest.raises(RuntimeError, match="^Event loop is closed$"):
        _closed_loop_calls(loop)[method]()


def test_closed_loop_create_task_raises(loop):
    loop.close()
    coro = asyncio.sleep(0)
    try:
        with pytest.raises(RuntimeError, match="^Event loop is closed$"):
            loop.create_task(coro)
    finally:
        coro.close()


def test_closed_loop_remove_reader_and_stop(loop):
    loop.close()
    assert loop.remove_reader(0) is False
    assert loop.remove_writer(1) is False
    loop.stop()  # allowed, no effect
    assert loop.time() > 0


def test_close_drops_queued_callbacks_and_timers(loop):
    ran = []
    loop.call_soon(ran.append, 1)
    loop.call_later(0, ran.append, 2)
    loop.close()
    assert ran == []


def test_close_running_loop_raises(loop):
    errors = []

    def try_close():
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.stop()

    loop.call_soon(try_close)
    loop.run_forever()
    assert errors == ["Cannot close a running event loop"]
    assert not loop.is_closed()
    # Still usable.
    assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"


def test_run_forever_again_after_stop(loop):
    for i in range(5):
        box = []
        loop.call_soon(box.append, i)
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert box == [i]


def test_run_until_complete_many_times(loop):
    for i in range(50):
        assert loop.run_until_complete(asyncio.sleep(0, i)) == i


def test_running_loop_is_reset_after_exception(loop):
    def boom():
        raise KeyboardInterrupt

    loop.call_soon(boom)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert not loop.is_running()
    assert asyncio.events._get_running_loop() is None
