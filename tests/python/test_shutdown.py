"""shutdown_asyncgens, executors, shutdown_default_executor."""

import asyncio
import concurrent.futures
import sys
import threading
import time
import warnings

import pytest


def test_shutdown_asyncgens(loop):
    finalized = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            finalized.append("finalized")

    async def start():
        g = agen()
        assert await g.__anext__() == 1
        return g

    g = loop.run_until_complete(start())
    assert finalized == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert finalized == ["finalized"]
    del g


def test_asyncgen_hooks_restored(loop):
    before = sys.get_asyncgen_hooks()

    async def main():
        return sys.get_asyncgen_hooks()

    inside = loop.run_until_complete(main())
    assert inside.firstiter is not None
    assert sys.get_asyncgen_hooks() == before


def test_asyncgen_created_after_shutdown_warns(loop):
    async def agen():
        yield 1

    loop.run_until_complete(loop.shutdown_asyncgens())

    async def main():
        g = agen()
        with pytest.warns(ResourceWarning,
                          match="after loop.shutdown_asyncgens"):
            await g.__anext__()
        await g.aclose()

    loop.run_until_complete(main())


def test_run_in_executor_default(loop):
    async def main():
        tid = await loop.run_in_executor(None, threading.get_ident)
        value = await loop.run_in_executor(None, sum, [1, 2, 3])
        return tid, value

    tid, value = loop.run_until_complete(main())
    assert tid != threading.get_ident()
    assert value == 6


def test_run_in_executor_exception(loop):
    def fail():
        raise ValueError("in thread")

    with pytest.raises(ValueError, match="in thread"):
        loop.run_until_complete(loop.run_in_executor(None, fail))


def test_run_in_executor_many(loop):
    async def main():
        futs = [loop.run_in_executor(None, pow, i, 2) for i in range(200)]
        return await asyncio.gather(*futs)

    assert loop.run_until_complete(main()) == [i * i for i in range(200)]


def test_set_default_executor(loop):
    names = []
    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="custom-exec")
    loop.set_default_executor(executor)

    def who():
        names.append(threading.current_thread().name)

    loop.run_until_complete(loop.run_in_executor(None, who))
    assert names and names[0].startswith("custom-exec")
    loop.run_until_complete(loop.shutdown_default_executor())
    with pytest.raises(RuntimeError):
        executor.submit(who)


@pytest.mark.skipif(sys.version_info < (3, 11),
                    reason="3.10 only warns")
def test_set_default_executor_rejects_non_thread_pool(loop):
    with pytest.raises(TypeError):
        loop.set_default_executor(object())


def test_explicit_executor(loop):
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        assert loop.run_until_complete(
            loop.run_in_executor(ex, max, 3, 9)) == 9


def test_shutdown_default_executor(loop):
    loop.run_until_complete(loop.run_in_executor(None, time.sleep, 0))
    executor = loop._default_executor
    assert executor is not None
    loop.run_until_complete(loop.shutdown_default_executor())
    with pytest.raises(RuntimeError):
        executor.submit(time.sleep, 0)
    with pytest.raises(RuntimeError, match="Executor shutdown has been "
                                           "called"):
        loop.run_in_executor(None, time.sleep, 0)


def test_shutdown_default_executor_without_executor(loop):
    loop.run_until_complete(loop.shutdown_default_executor())


@pytest.mark.skipif(sys.version_info < (3, 12),
                    reason="shutdown_default_executor(timeout) is 3.12+")
def test_shutdown_default_executor_timeout(loop):
    loop.run_in_executor(None, time.sleep, 0.02)
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loop.run_until_complete(loop.shutdown_default_executor(timeout=5))
    assert time.monotonic() - t0 < 4
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    with pytest.raises(RuntimeError, match="Executor shutdown has been "
                                           "called"):
        loop.run_in_executor(None, time.sleep, 0)


def test_close_shuts_down_default_executor(loop):
    loop.run_until_complete(loop.run_in_executor(None, time.sleep, 0))
    executor = loop._default_executor
    loop.close()
    with pytest.raises(RuntimeError):
        executor.submit(time.sleep, 0)


def test_run_pattern_cleanup(loop):
    """asyncio.run's cleanup sequence on the loop under test."""
    from asyncio import runners

    async def forever():
        await asyncio.sleep(100)

    async def main():
        loop.create_task(forever())
        await asyncio.sleep(0)
        return "main"

    assert loop.run_until_complete(main()) == "main"
    runners._cancel_all_tasks(loop)
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.run_until_complete(loop.shutdown_default_executor())
    assert not asyncio.all_tasks(loop)
