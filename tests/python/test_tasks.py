"""Futures and tasks on the loop: create_future, create_task, factories."""

import asyncio
import contextvars
import sys

import pytest

var = contextvars.ContextVar("task_var", default="default")


def test_create_future(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is loop
    assert not fut.done()
    loop.call_soon(fut.set_result, 7)
    assert loop.run_until_complete(fut) == 7


def test_future_callbacks_run_on_the_loop(loop):
    fut = loop.create_future()
    seen = []
    fut.add_done_callback(lambda f: seen.append(
        (f.result(), asyncio.get_running_loop() is loop)))
    fut.set_result(1)
    assert seen == []  # scheduled, not called synchronously
    loop.run_until_complete(asyncio.sleep(0))
    assert seen == [(1, True)]


def test_create_task_name(loop):
    async def coro():
        return asyncio.current_task().get_name()

    task = loop.create_task(coro(), name="my-task")
    assert task.get_name() == "my-task"
    assert isinstance(task, asyncio.Task)
    assert task.get_loop() is loop
    assert loop.run_until_complete(task) == "my-task"
    task2 = loop.create_task(coro())
    assert task2.get_name().startswith("Task-")
    loop.run_until_complete(task2)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="context= is 3.11+")
def test_create_task_context(loop):
    ctx = contextvars.copy_context()
    ctx.run(var.set, "task-ctx")

    async def coro():
        seen = var.get()
        var.set("changed-in-task")
        await asyncio.sleep(0)
        return seen, var.get()

    task = loop.create_task(coro(), context=ctx)
    assert loop.run_until_complete(task) == ("task-ctx", "changed-in-task")
    assert ctx[var] == "changed-in-task"
    assert var.get() == "default"


def test_tasks_have_separate_contexts(loop):
    async def worker(name):
        var.set(name)
        for _ in range(3):
            await asyncio.sleep(0)
            assert var.get() == name
        return var.get()

    async def main():
        return await asyncio.gather(*(worker(f"w{i}") for i in range(10)))

    assert loop.run_until_complete(main()) == [f"w{i}" for i in range(10)]
    assert var.get() == "default"


def test_task_factory(loop):
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append((lp, kwargs))
        return asyncio.Task(coro, loop=lp, **kwargs)

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def coro():
        return 5

    task = loop.create_task(coro(), name="factory-made")
    assert task.get_name() == "factory-made"
    assert loop.run_until_complete(task) == 5
    assert calls and calls[0][0] is loop
    with pytest.raises(TypeError):
        loop.set_task_factory(42)
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None


def test_task_cancel(loop):
    async def sleeper():
        await asyncio.sleep(10)

    async def main():
        task = loop.create_task(sleeper())
        await asyncio.sleep(0)
        task.cancel("reason")
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert loop.run_until_complete(main()) is True


def test_gather_and_wait_for(loop):
    async def value(x, delay):
        await asyncio.sleep(delay)
        return x

    async def main():
        got = await asyncio.gather(*(value(i, 0.001 * (5 - i))
                                     for i in range(5)))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(value(0, 1), 0.01)
        return got

    assert loop.run_until_complete(main()) == [0, 1, 2, 3, 4]


def test_current_task_and_all_tasks(loop):
    async def child():
        await asyncio.sleep(0.01)

    async def main():
        me = asyncio.current_task()
        t = loop.create_task(child())
        tasks = asyncio.all_tasks()
        await t
        return me, t, tasks

    me, t, tasks = loop.run_until_complete(main())
    assert {me, t} <= tasks


def test_run_coroutine_threadsafe(loop):
    import threading

    async def double(x):
        await asyncio.sleep(0)
        return 2 * x

    results = []

    def from_thread():
        fut = asyncio.run_coroutine_threadsafe(double(21), loop)
        results.append(fut.result(5))
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=from_thread)
    t.start()
    loop.run_forever()
    t.join()
    assert results == [42]


def test_wrap_future(loop):
    import concurrent.futures

    cf = concurrent.futures.Future()

    async def main():
        fut = asyncio.wrap_future(cf)
        loop.call_later(0.005, cf.set_result, "cf")
        return await fut

    assert loop.run_until_complete(main()) == "cf"


@pytest.mark.skipif(not hasattr(asyncio, "eager_task_factory"),
                    reason="eager tasks are 3.12+")
def test_eager_task_factory(loop):
    order = []

    async def coro(tag):
        order.append(f"{tag}-start")
        await asyncio.sleep(0)
        order.append(f"{tag}-end")
        return tag

    async def no_await():
        order.append("sync")
        return "sync-result"

    async def main():
        t = loop.create_task(coro("eager"))
        order.append("after-create")
        done = loop.create_task(no_await())
        assert done.done()
        assert done.result() == "sync-result"
        return await t

    loop.set_task_factory(asyncio.eager_task_factory)
    assert loop.run_until_complete(main()) == "eager"
    assert order == ["eager-start", "after-create", "sync", "eager-end"]


@pytest.mark.skipif(sys.version_info < (3, 14),
                    reason="create_task(eager_start=) is 3.14+")
def test_create_task_eager_start(loop):
    order = []

    async def coro():
        order.append("start")
        await asyncio.sleep(0)
        return "ok"

    async def main():
        t = loop.create_task(coro(), eager_start=True)
        order.append("after")
        return await t

    assert loop.run_until_complete(main()) == "ok"
    assert order == ["start", "after"]


def test_asyncgen_finalized_by_loop(loop):
    finalized = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            finalized.append(True)

    async def main():
        g = agen()
        assert await g.__anext__() == 1
        await g.aclose()

    loop.run_until_complete(main())
    assert finalized == [True]


def test_async_context_and_iteration(loop):
    class CM:
        async def __aenter__(self):
            await asyncio.sleep(0)
            return "cm"

        async def __aexit__(self, *exc):
            await asyncio.sleep(0)

    async def agen():
        for i in range(3):
            await asyncio.sleep(0)
            yield i

    async def main():
        async with CM() as v:
            return v, [i async for i in agen()]

    assert loop.run_until_complete(main()) == ("cm", [0, 1, 2])


def test_queue_and_event(loop):
    async def main():
        q = asyncio.Queue()
        ev = asyncio.Event()

        async def producer():
            for i in range(100):
                await q.put(i)
                if i % 10 == 0:
                    await asyncio.sleep(0)
            ev.set()

        p = loop.create_task(producer())
        await ev.wait()
        await p
        return [q.get_nowait() for _ in range(q.qsize())]

    assert loop.run_until_complete(main()) == list(range(100))
