"""call_soon, call_soon_threadsafe, handles and contexts."""

import asyncio
import contextvars
import functools
import sys
import threading

import pytest

var = contextvars.ContextVar("var", default="default")


def ctx_of(handle):
    """handle.get_context() (asyncio's Handle has it from 3.12)."""
    if hasattr(handle, "get_context"):
        return handle.get_context()
    return handle._context


def run_soon(loop):
    """Run everything queued so far, and what it queues, then stop."""
    loop.call_soon(loop.stop)
    loop.run_forever()


def test_call_soon_fifo(loop):
    out = []
    for i in range(1000):
        loop.call_soon(out.append, i)
    run_soon(loop)
    assert out == list(range(1000))


def test_callbacks_queued_by_callbacks_run_next_iteration(loop):
    out = []

    def first():
        out.append("first")
        loop.call_soon(out.append, "queued-by-first")

    loop.call_soon(first)
    loop.call_soon(out.append, "second")
    run_soon(loop)
    # loop.stop ran in the first batch: the callback queued by `first`
    # waits for the next run.
    assert out == ["first", "second"]
    run_soon(loop)
    assert out == ["first", "second", "queued-by-first"]


@pytest.mark.parametrize("nargs", range(0, 8))
def test_call_soon_args(loop, nargs):
    got = []
    args = tuple(object() for _ in range(nargs))
    h = loop.call_soon(lambda *a: got.append(a), *args)
    assert h._args == args
    run_soon(loop)
    assert len(got) == 1
    assert all(x is y for x, y in zip(got[0], args))
    assert len(got[0]) == nargs


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at",
                                    "call_soon_threadsafe"])
def test_args_for_every_scheduler(loop, method):
    got = []
    cb = lambda *a: got.append(a)  # noqa: E731
    args = (1, "two", 3.0, None, b"five", (6,))
    if method == "call_later":
        loop.call_later(0, cb, *args)
    elif method == "call_at":
        loop.call_at(loop.time(), cb, *args)
    else:
        getattr(loop, method)(cb, *args)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert got == [args]


def test_callable_objects(loop):
    got = []

    class Callable:
        def __call__(self, x):
            got.append(("call", x))

    class WithMethod:
        def meth(self, x):
            got.append(("meth", x))

    loop.call_soon(Callable(), 1)
    loop.call_soon(WithMethod().meth, 2)
    loop.call_soon(functools.partial(got.append, ("partial", 3)))
    loop.call_soon(got.append, ("builtin", 4))
    run_soon(loop)
    assert got == [("call", 1), ("meth", 2), ("partial", 3), ("builtin", 4)]


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe",
                                    "call_later", "call_at"])
def test_unexpected_keyword_raises_type_error(loop, method):
    cb = lambda: None  # noqa: E731
    first = [] if method.startswith("call_soon") else [0]
    with pytest.raises(TypeError, match="unexpected keyword argument 'foo'"):
        getattr(loop, method)(*first, cb, foo=1)
    with pytest.raises(TypeError):
        getattr(loop, method)(*first, cb, context=None, bar=2)


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe",
                                    "call_later", "call_at"])
def test_missing_callback_raises_type_error(loop, method):
    with pytest.raises(TypeError):
        getattr(loop, method)()


# ---- contexts ---------------------------------------------------------------


def test_context_argument_is_used(loop):
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in-ctx")
    seen = []
    h = loop.call_soon(lambda: seen.append(var.get()), context=ctx)
    assert ctx_of(h) is ctx
    run_soon(loop)
    assert seen == ["in-ctx"]
    assert var.get() == "default"


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe",
                                    "call_later", "call_at"])
def test_context_argument_every_scheduler(loop, method):
    ctx = contextvars.copy_context()
    ctx.run(var.set, method)
    seen = []
    cb = lambda: seen.append(var.get())  # noqa: E731
    first = [] if method.startswith("call_soon") else [
        loop.time() if method == "call_at" else 0]
    h = getattr(loop, method)(*first, cb, context=ctx)
    assert ctx_of(h) is ctx
    loop.run_until_complete(asyncio.sleep(0.01))
    assert seen == [method]


def test_context_none_means_copy_of_current(loop):
    seen = []
    token = var.set("at-call-time")
    try:
        h = loop.call_soon(lambda: seen.append(var.get()), context=None)
        var.set("changed-after")
        assert isinstance(ctx_of(h), contextvars.Context)
        run_soon(loop)
    finally:
        var.reset(token)
    assert seen == ["at-call-time"]


def test_no_context_sees_a_copy_at_call_time(loop):
    seen = []
    token = var.set("at-call-time")
    try:
        loop.call_soon(lambda: seen.append(var.get()))
        loop.call_later(0, lambda: seen.append(var.get()))
        var.set("changed-after")
        loop.run_until_complete(asyncio.sleep(0.01))
    finally:
        var.reset(token)
    assert seen == ["at-call-time", "at-call-time"]


def test_callback_changes_do_not_leak(loop):
    seen = []

    def setter():
        var.set("set-in-callback")
        seen.append(var.get())

    loop.call_soon(setter)
    loop.call_soon(lambda: seen.append(var.get()))
    run_soon(loop)
    assert seen == ["set-in-callback", "default"]
    assert var.get() == "default"


def test_callback_changes_stay_in_the_given_context(loop):
    """Changes land in the handle's context, and callbacks of other
    contexts in between do not see them."""
    ctx1 = contextvars.copy_context()
    ctx2 = contextvars.copy_context()
    seen = []
    loop.call_soon(var.set, "one", context=ctx1)
    loop.call_soon(lambda: seen.append(("ctx2", var.get())), context=ctx2)
    loop.call_soon(lambda: seen.append(("ctx1", var.get())), context=ctx1)
    loop.call_soon(lambda: seen.append(("fresh", var.get())))
    run_soon(loop)
    assert seen == [("ctx2", "default"), ("ctx1", "one"), ("fresh", "default")]
    assert ctx1[var] == "one"
    assert var not in ctx2
    assert var.get() == "default"


def test_outer_context_untouched_after_run(loop):
    """The caller of run_forever gets its own context back, also when the
    last callback ran in another one."""
    ctx = contextvars.copy_context()
    ctx.run(var.set, "inner")
    outer = contextvars.copy_context()
    loop.call_soon(var.set, "inner-changed", context=ctx)
    run_soon(loop)
    assert var.get() == "default"
    assert dict(contextvars.copy_context()) == dict(outer)


def test_context_is_entered_during_the_callback(loop):
    """As asyncio (ctx.run), the handle's context is the entered one: a
    nested ctx.run of it raises."""
    ctx = contextvars.copy_context()
    errors = []

    def cb():
        try:
            ctx.run(lambda: None)
        except RuntimeError as exc:
            errors.append(str(exc))

    loop.call_soon(cb, context=ctx)
    run_soon(loop)
    assert len(errors) == 1 and "already entered" in errors[0]
    ctx.run(lambda: None)  # exited again afterwards


def test_same_context_across_callbacks_and_runs(loop):
    ctx = contextvars.copy_context()
    seen = []

    def step(i):
        seen.append(var.get())
        var.set(f"step{i}")

    for i in range(3):
        loop.call_soon(step, i, context=ctx)
    run_soon(loop)
    loop.call_soon(step, 3, context=ctx)
    run_soon(loop)
    assert seen == ["default", "step0", "step1", "step2"]
    assert ctx[var] == "step3"
    ctx.run(lambda: None)


def test_task_context(loop):
    async def child():
        return var.get()

    async def main():
        var.set("main")
        inherited = await asyncio.ensure_future(child())
        ctx = contextvars.copy_context()
        ctx.run(var.set, "explicit")
        explicit = None
        if sys.version_info >= (3, 11):
            explicit = await loop.create_task(child(), context=ctx)
        return inherited, explicit

    inherited, explicit = loop.run_until_complete(main())
    assert inherited == "main"
    if sys.version_info >= (3, 11):
        assert explicit == "explicit"
    assert var.get() == "default"


# ---- handles ----------------------------------------------------------------


def test_handle_cancel(loop):
    ran = []
    h = loop.call_soon(ran.append, 1)
    assert not h.cancelled()
    h.cancel()
    assert h.cancelled()
    h.cancel()  # idempotent
    assert h.cancelled()
    run_soon(loop)
    assert ran == []


def test_cancelled_handle_drops_callback_and_args(loop):
    h = loop.call_soon(print, "x")
    assert h._callback is print
    h.cancel()
    assert h._callback is None
    assert h._args is None


def test_handle_cancel_from_inside_the_callback(loop):
    box = {}
    ran = []

    def cb(x):
        ran.append(x)
        box["h"].cancel()
        assert box["h"].cancelled()
        ran.append(x)  # still alive after cancelling itself

    box["h"] = loop.call_soon(cb, "arg")
    run_soon(loop)
    assert ran == ["arg", "arg"]
    assert box["h"].cancelled()


def test_handle_cancel_later_callback_from_earlier_one(loop):
    ran = []
    later = []

    def first():
        ran.append("first")
        later[0].cancel()

    loop.call_soon(first)
    later.append(loop.call_soon(ran.append, "second"))
    loop.call_soon(ran.append, "third")
    run_soon(loop)
    assert ran == ["first", "third"]


def test_handle_get_context(loop):
    ctx = contextvars.copy_context()
    h = loop.call_soon(lambda: None, context=ctx)
    assert ctx_of(h) is ctx
    h2 = loop.call_soon(lambda: None)
    assert isinstance(ctx_of(h2), contextvars.Context)
    assert ctx_of(h2) is not ctx_of(h)


def test_handle_types_are_asyncio_like(loop, impl):
    h = loop.call_soon(lambda: None)
    t = loop.call_later(10, lambda: None)
    names = ["cancel", "cancelled"]
    if sys.version_info >= (3, 12) or impl == "qloop":
        names.append("get_context")
    for name in names:
        assert callable(getattr(h, name))
    assert callable(t.when)
    assert type(h).__name__ == "Handle"
    assert type(t).__name__ == "TimerHandle"
    t.cancel()


def _cb_for_repr():
    pass


def test_handle_repr_contains_callback(loop):
    h = loop.call_soon(_cb_for_repr)
    r = repr(h)
    assert r.startswith("<Handle ")
    assert "_cb_for_repr()" in r
    assert "created at" not in r
    h.cancel()
    assert "cancelled" in repr(h)


def test_handle_repr_equal_to_asyncio(loop_factory):
    """Same callback, same loops' debug flags: the very same repr."""
    for debug in (False, True):
        loops = [asyncio.SelectorEventLoop(), loop_factory()]
        try:
            for lp in loops:
                lp.set_debug(debug)
            handles = [lp.call_soon(_cb_for_repr, 1, "a") for lp in loops]
            assert repr(handles[0]) == repr(handles[1])
            if debug:
                assert "created at" in repr(handles[1])
                assert __file__ in repr(handles[1])
            timers = [lp.call_at(1000.5, _cb_for_repr) for lp in loops]
            assert repr(timers[0]) == repr(timers[1])
            assert "when=1000.5" in repr(timers[1])
            for h in handles + timers:
                h.cancel()
            assert repr(handles[0]) == repr(handles[1])
            assert repr(timers[0]) == repr(timers[1])
        finally:
            for lp in loops:
                lp.close()


def test_handle_repr_in_debug_mode(loop):
    loop.set_debug(True)
    h = loop.call_soon(_cb_for_repr)
    r = repr(h)
    assert "_cb_for_repr()" in r
    assert "created at " + __file__ in r
    assert h._source_traceback
    h.cancel()
    assert "created at" in repr(h)


def test_handle_of_partial_repr(loop):
    h = loop.call_soon(functools.partial(_cb_for_repr))
    assert "_cb_for_repr" in repr(h)


# ---- call_soon_threadsafe ---------------------------------------------------


def test_call_soon_threadsafe_from_many_threads(loop):
    nthreads, per_thread = 4, 2000
    total = nthreads * per_thread
    out = []
    done = loop.create_future()

    def record(tid, i):
        out.append((tid, i))
        if len(out) == total:
            done.set_result(None)

    def producer(tid):
        for i in range(per_thread):
            loop.call_soon_threadsafe(record, tid, i)

    threads = [threading.Thread(target=producer, args=(t,))
               for t in range(nthreads)]

    async def main():
        for t in threads:
            t.start()
        await asyncio.wait_for(done, 20)

    loop.run_until_complete(main())
    for t in threads:
        t.join()
    assert len(out) == total
    for tid in range(nthreads):
        assert [i for t, i in out if t == tid] == list(range(per_thread))


def test_call_soon_threadsafe_wakes_idle_loop(loop):
    fut = loop.create_future()

    def other_thread():
        loop.call_soon_threadsafe(fut.set_result, "woken")

    timer = threading.Timer(0.05, other_thread)

    async def main():
        timer.start()
        return await asyncio.wait_for(fut, 5)

    t0 = loop.time()
    assert loop.run_until_complete(main()) == "woken"
    assert loop.time() - t0 < 2
    timer.join()


def test_call_soon_threadsafe_stop_from_other_thread(loop):
    t = threading.Timer(0.02, loop.call_soon_threadsafe, (loop.stop,))
    t.start()
    loop.run_forever()  # returns only if the stop got through
    t.join()


def test_call_soon_threadsafe_in_loop_thread_is_fifo_with_call_soon(loop):
    out = []
    loop.call_soon(out.append, 1)
    loop.call_soon_threadsafe(out.append, 2)
    loop.call_soon(out.append, 3)
    run_soon(loop)
    assert out == [1, 2, 3]


def test_stop_before_run_forever_runs_threadsafe_callbacks(loop):
    out = []
    loop.call_soon_threadsafe(out.append, 1)
    loop.stop()
    loop.run_forever()
    assert out == [1]


def test_call_soon_threadsafe_handle_cancel(loop):
    out = []
    h = loop.call_soon_threadsafe(out.append, 1)
    h.cancel()
    run_soon(loop)
    assert out == []


def test_handle_run_inside_a_callback_keeps_its_context(loop):
    # In a context of its own: were the callback's context lost, its writes
    # would land in the caller's context, here a throw-away copy.
    contextvars.copy_context().run(_handle_run_inside_a_callback, loop)


def _handle_run_inside_a_callback(loop):
    ctx_a = contextvars.copy_context()
    ctx_a.run(var.set, "a")
    ctx_b = contextvars.copy_context()
    ctx_b.run(var.set, "b")
    seen = []

    def cb_b():
        seen.append(("b", var.get()))

    def cb_a():
        h = loop.call_soon(cb_b, context=ctx_b)
        h._run()
        h.cancel()
        seen.append(("a-after", var.get()))
        var.set("a-changed")

    loop.call_soon(cb_a, context=ctx_a)
    run_soon(loop)
    assert seen == [("b", "b"), ("a-after", "a")]
    assert ctx_a[var] == "a-changed"
    assert var.get() == "default"


def test_handle_run_outside_the_loop(loop):
    ctx = contextvars.copy_context()
    ctx.run(var.set, "handle-ctx")
    seen = []
    h = loop.call_soon(lambda: seen.append(var.get()), context=ctx)
    h._run()
    h.cancel()
    assert seen == ["handle-ctx"]
    assert var.get() == "default"
    run_soon(loop)
    assert seen == ["handle-ctx"]


def test_context_not_a_context_is_reported(loop):
    """A bad context= fails when the callback runs, through the exception
    handler (asyncio: AttributeError from ctx.run; the type may differ)."""
    contexts = []
    loop.set_exception_handler(lambda lp, c: contexts.append(c))
    out = []
    loop.call_soon(out.append, "bad", context=42)
    loop.call_soon(out.append, "next")
    run_soon(loop)
    assert out == ["next"]
    assert len(contexts) == 1
    assert contexts[0]["message"].startswith("Exception in callback ")
    assert isinstance(contexts[0]["exception"], (TypeError, AttributeError))


def test_non_callable_callback_is_reported(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, c: contexts.append(c))
    loop.call_soon(42)
    run_soon(loop)
    assert len(contexts) == 1
    assert contexts[0]["message"] == "Exception in callback 42()"
    assert isinstance(contexts[0]["exception"], TypeError)
    assert str(contexts[0]["exception"]) == "'int' object is not callable"


def test_no_lost_wakeups(loop):
    """call_soon_threadsafe racing the loop's way into a blocking poll:
    every round must end at once, none may wait for the safety timer."""
    import random
    import time

    rng = random.Random(7)
    slow_rounds = []

    async def main():
        for i in range(300):
            fut = loop.create_future()
            delay = rng.choice([0, 0, 1e-5, 5e-5, 2e-4])

            def poke(f=fut, d=delay):
                if d:
                    time.sleep(d)
                loop.call_soon_threadsafe(f.set_result, None)

            t = threading.Thread(target=poke)
            t0 = time.monotonic()
            t.start()
            safety = loop.call_later(2, lambda f=fut: f.done() or
                                     f.set_result("timeout"))
            if await fut == "timeout" or time.monotonic() - t0 > 1:
                slow_rounds.append(i)
            safety.cancel()
            t.join()

    loop.run_until_complete(main())
    assert slow_rounds == []
