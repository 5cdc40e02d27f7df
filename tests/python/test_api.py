"""The qloop package's public API."""

import asyncio
import os
import re
import sys
import warnings

import pytest

import qloop
from conftest import run_python


def test_version():
    assert isinstance(qloop.__version__, str)
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)?", qloop.__version__)
    pyproject = os.path.join(os.path.dirname(__file__), "..", "..",
                             "pyproject.toml")
    if os.path.exists(pyproject):
        with open(pyproject) as f:
            m = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M)
        if m:
            assert qloop.__version__ == m.group(1)


def test_all_names_exist():
    for name in qloop.__all__:
        assert hasattr(qloop, name), name


def test_backend_name():
    assert qloop.backend_name() in ("epoll", "kqueue")
    if sys.platform.startswith("linux"):
        assert qloop.backend_name() == "epoll"


def test_run_returns_value():
    async def main(x):
        await asyncio.sleep(0)
        return x * 2

    assert qloop.run(main(21)) == 42


def test_run_uses_a_qloop_loop_and_closes_it():
    async def main():
        return asyncio.get_running_loop()

    loop = qloop.run(main())
    assert isinstance(loop, qloop.Loop)
    assert loop.is_closed()


def test_run_debug():
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert qloop.run(main(), debug=True) is True
    assert qloop.run(main(), debug=False) is False


def test_run_propagates_exceptions():
    async def main():
        raise LookupError("from main")

    with pytest.raises(LookupError, match="from main"):
        qloop.run(main())


def test_run_cancels_leftover_tasks():
    cancelled = []

    async def forever():
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        asyncio.get_running_loop().create_task(forever())
        await asyncio.sleep(0)

    qloop.run(main())
    assert cancelled == [True]


def test_run_finalizes_asyncgens():
    finalized = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            finalized.append(True)

    async def main():
        g = agen()
        await g.__anext__()
        main.g = g  # keep it alive past main

    qloop.run(main())
    assert finalized == [True]
    del main.g


def test_run_inside_running_loop_raises():
    async def inner():
        pass

    async def main():
        coro = inner()
        try:
            qloop.run(coro)
        finally:
            coro.close()

    try:
        with pytest.raises(RuntimeError, match="^asyncio.run\\(\\) cannot be "
                                               "called from a running event "
                                               "loop"):
            qloop.run(main())
    finally:
        import gc
        with warnings.catch_warnings():  # what a failed cleanup left behind
            warnings.simplefilter("ignore", RuntimeWarning)
            gc.collect()


def test_run_rejects_non_coroutine():
    with pytest.raises((ValueError, TypeError)):
        qloop.run(42)


def test_new_event_loop():
    loop = qloop.new_event_loop()
    try:
        assert isinstance(loop, qloop.Loop)
        assert isinstance(loop, asyncio.AbstractEventLoop)
        assert isinstance(loop, asyncio.BaseEventLoop)
        assert not loop.is_running() and not loop.is_closed()
        assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
    finally:
        loop.close()


def test_loop_repr():
    loop = qloop.new_event_loop()
    try:
        loop.set_debug(False)
        assert repr(loop) == "<Loop running=False closed=False debug=False>"
    finally:
        loop.close()


def test_loop_subclass():
    class MyLoop(qloop.Loop):
        def __init__(self, tag, *, extra=None):
            super().__init__()
            self.tag = tag
            self.extra = extra
            self.soon_calls = 0

        def call_soon(self, *args, **kwargs):
            self.soon_calls += 1
            return super().call_soon(*args, **kwargs)

    loop = MyLoop("mine", extra=1)
    try:
        assert loop.tag == "mine" and loop.extra == 1

        async def main():
            await asyncio.sleep(0)
            return asyncio.get_running_loop()

        assert loop.run_until_complete(main()) is loop
        assert loop.soon_calls > 0  # tasks schedule through the override
        assert isinstance(loop, asyncio.AbstractEventLoop)
    finally:
        loop.close()


def test_loop_subclass_with_slots_and_dict():
    class Sub(qloop.Loop):
        pass

    loop = Sub()
    loop.anything = 1
    try:
        assert loop.run_until_complete(asyncio.sleep(0, 2)) == 2
    finally:
        loop.close()


@pytest.mark.skipif(sys.version_info >= (3, 14),
                    reason="policies are deprecated on 3.14+")
def test_event_loop_policy():
    old = asyncio.get_event_loop_policy()
    try:
        policy = qloop.EventLoopPolicy()
        asyncio.set_event_loop_policy(policy)
        loop = asyncio.new_event_loop()
        try:
            assert isinstance(loop, qloop.Loop)
        finally:
            loop.close()
    finally:
        asyncio.set_event_loop_policy(old)
    assert asyncio.get_event_loop_policy() is old


def test_install():
    old = asyncio.get_event_loop_policy()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            qloop.install()
            assert isinstance(asyncio.get_event_loop_policy(),
                              qloop.EventLoopPolicy)
            loop = asyncio.new_event_loop()
        try:
            assert isinstance(loop, qloop.Loop)
        finally:
            loop.close()
    finally:
        asyncio.set_event_loop_policy(old)


def test_install_then_asyncio_run():
    old = asyncio.get_event_loop_policy()

    async def main():
        return type(asyncio.get_running_loop())

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            qloop.install()
            assert asyncio.run(main()) is qloop.Loop
    finally:
        asyncio.set_event_loop_policy(old)


@pytest.mark.skipif(sys.version_info < (3, 12),
                    reason="asyncio.run(loop_factory=) is 3.12+")
def test_asyncio_run_with_loop_factory():
    async def main():
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop())

    assert asyncio.run(main(), loop_factory=qloop.new_event_loop) is qloop.Loop


@pytest.mark.skipif(sys.version_info < (3, 11),
                    reason="asyncio.Runner is 3.11+")
def test_asyncio_runner_with_loop_factory():
    async def main(x):
        return x

    with asyncio.Runner(loop_factory=qloop.new_event_loop) as runner:
        assert runner.run(main(1)) == 1
        assert runner.run(main(2)) == 2
        assert isinstance(runner.get_loop(), qloop.Loop)


def test_get_event_loop_in_a_fresh_process():
    proc = run_python("""
        import asyncio, warnings, qloop
        warnings.simplefilter("ignore", DeprecationWarning)
        qloop.install()
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        print(type(asyncio.get_event_loop()).__name__)
        loop.close()
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "Loop"


def test_unclosed_loop_resource_warning():
    import gc

    with warnings.catch_warnings():  # earlier tests' garbage, not ours
        warnings.simplefilter("ignore")
        gc.collect()
    loop = qloop.new_event_loop()
    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        del loop
        gc.collect()


def test_stats_keys(qloop_loop):
    stats = qloop_loop._stats()
    assert {"iterations", "callbacks_run", "timers", "ready",
            "watchers"} <= set(stats)
    qloop_loop.run_until_complete(asyncio.sleep(0))
    assert qloop_loop._stats()["iterations"] > 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("factory", ["asyncio.SelectorEventLoop",
                                     "qloop.new_event_loop"])
def test_fresh_loop_in_a_forked_child(factory):
    proc = run_python(f"""
        import asyncio, os, qloop
        loop = {factory}()
        loop.run_until_complete(asyncio.sleep(0))
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                child = {factory}()
                ok = child.run_until_complete(asyncio.sleep(0.01, "child"))
                child.close()
                code = 0 if ok == "child" else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status),
              loop.run_until_complete(asyncio.sleep(0.01, "parent")))
        loop.close()
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "0 parent\n"
