"""Each callback runs in its own copy of the context current at scheduling.

qloop shares one snapshot between handles scheduled in an unchanged
context and runs them in one private work context until a callback
changes it (python/src/context.c).  These bodies, run on both loops, pin
down the asyncio semantics that must survive that: isolation between
callbacks, what get_context() returns before, during and after the run,
identity, threads, nested Context.run, reader handles.
"""

import asyncio
import contextvars
import socket
import threading

import pytest

var = contextvars.ContextVar("var", default="unset")


def ctx_of(handle):
    """handle.get_context() (3.12+), or asyncio's attribute before it."""
    get = getattr(handle, "get_context", None)
    return get() if get else handle._context


def run_soon_then_stop(loop):
    loop.call_soon(loop.stop)
    loop.run_forever()


def test_a_change_stays_in_its_callback(loop):
    seen = []

    def setter():
        seen.append(("setter", var.get()))
        var.set("changed")

    def reader():
        seen.append(("reader", var.get()))

    var.set("base")
    h1 = loop.call_soon(setter)
    h2 = loop.call_soon(reader)
    h3 = loop.call_soon(setter)
    h4 = loop.call_soon(reader)
    var.set("unset")
    run_soon_then_stop(loop)
    assert seen == [("setter", "base"), ("reader", "base"),
                    ("setter", "base"), ("reader", "base")]
    assert ctx_of(h1)[var] == "changed"
    assert ctx_of(h2)[var] == "base"
    assert ctx_of(h3)[var] == "changed"
    assert ctx_of(h4)[var] == "base"
    contexts = [ctx_of(h) for h in (h1, h2, h3, h4)]
    assert len({id(c) for c in contexts}) == 4
    assert all(ctx_of(h) is c for h, c in zip((h1, h2, h3, h4),
                                                   contexts))


def test_context_taken_before_the_run_is_the_one_used(loop):
    def setter(v):
        var.set(v)

    var.set("base")
    h1 = loop.call_soon(setter, "one")
    h2 = loop.call_soon(setter, "two")
    c1 = ctx_of(h1)
    assert c1[var] == "base"
    assert c1 is not ctx_of(h2)
    var.set("unset")
    run_soon_then_stop(loop)
    assert c1[var] == "one" and ctx_of(h1) is c1
    assert ctx_of(h2)[var] == "two"


def test_get_context_inside_the_callback(loop):
    out = {}
    holder = []

    def cb():
        var.set("inside")
        ctx = ctx_of(holder[0])
        out["value"] = ctx[var]
        try:
            ctx.run(lambda: None)
        except RuntimeError as e:
            out["error"] = str(e)
        var.set("after")
        out["ctx"] = ctx

    var.set("base")
    holder.append(loop.call_soon(cb))
    loop.call_soon(lambda: out.setdefault("next", var.get()))
    var.set("unset")
    run_soon_then_stop(loop)
    assert out["value"] == "inside"
    assert "already entered" in out["error"]
    assert out["ctx"] is ctx_of(holder[0])
    assert out["ctx"][var] == "after"
    assert out["next"] == "base"


def test_scheduled_from_a_callback_sees_its_changes(loop):
    seen = []

    def first():
        loop.call_soon(lambda: seen.append(var.get()))
        var.set("first")
        loop.call_soon(lambda: seen.append(var.get()))
        var.set("first again")
        loop.call_soon(lambda: seen.append(var.get()))

    var.set("base")
    loop.call_soon(first)
    loop.call_soon(lambda: seen.append(("plain", var.get())))
    var.set("unset")
    loop.call_soon(lambda: seen.append(("later", var.get())))
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert seen == [("plain", "base"), ("later", "unset"), "base", "first",
                    "first again"]


def test_setting_the_same_value_and_resetting(loop):
    seen = []
    obj = object()

    def same():
        var.set(obj)  # the same value: equal mapping

    def reset():
        tok = var.set("tmp")
        var.reset(tok)

    def reader():
        seen.append(var.get())

    var.set(obj)
    for cb in (same, reader, reset, reader):
        loop.call_soon(cb)
    var.set("unset")
    run_soon_then_stop(loop)
    assert seen == [obj, obj]


def test_equal_but_not_identical_values(loop):
    seen = []

    def setter():
        var.set(1.0)  # == 1, but a different value

    var.set(1)
    loop.call_soon(setter)
    loop.call_soon(lambda: seen.append(var.get()))
    var.set("unset")
    run_soon_then_stop(loop)
    assert seen == [1] and type(seen[0]) is int


def test_nested_context_run_inside_a_callback(loop):
    seen = []
    other = contextvars.Context()

    def inner():
        var.set("in other")
        loop.call_soon(lambda: seen.append(("from other", var.get())))

    def cb():
        other.run(inner)
        seen.append(("cb", var.get()))

    var.set("base")
    loop.call_soon(cb)
    loop.call_soon(lambda: seen.append(("next", var.get())))
    var.set("unset")
    # Stop one iteration after "from other" is queued, not on a timer: a
    # 10 ms timer already due when the loop starts (a loaded machine) ran
    # before it.
    loop.call_soon(loop.call_soon, loop.stop)
    loop.run_forever()
    assert seen == [("cb", "base"), ("next", "base"),
                    ("from other", "in other")]
    assert other[var] == "in other"


def test_threadsafe_from_another_context(loop):
    seen = []
    done = threading.Event()

    def thread():
        var.set("thread")
        loop.call_soon_threadsafe(lambda: seen.append(var.get()))
        ctx = contextvars.copy_context()
        loop.call_soon_threadsafe(lambda: seen.append(var.get()),
                                  context=ctx)
        var.set("thread 2")
        loop.call_soon_threadsafe(lambda: seen.append(var.get()))
        loop.call_soon_threadsafe(loop.stop)
        done.set()

    var.set("loop")
    loop.call_soon(lambda: seen.append(var.get()))
    t = threading.Thread(target=thread)
    t.start()
    loop.run_forever()
    t.join()
    if len(seen) < 4:  # stop came before the rest: run them
        run_soon_then_stop(loop)
    assert seen == ["loop", "thread", "thread", "thread 2"]


def test_timers_get_their_copies(loop):
    seen = []

    def setter(v):
        seen.append(var.get())
        var.set(v)

    var.set("base")
    handles = [loop.call_later(0, setter, i) for i in range(5)]
    handles.append(loop.call_soon(setter, "soon"))
    var.set("unset")
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert seen == ["base"] * 6
    assert [ctx_of(h)[var] for h in handles] == [0, 1, 2, 3, 4, "soon"]


def test_reader_context_persists_across_runs(loop):
    """A reader handle runs each time in the same context (asyncio copies
    once, at add_reader): what one run sets, the next run sees."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    seen = []

    def on_read():
        a.recv(100)
        seen.append(var.get())
        var.set(len(seen))
        if len(seen) < 3:
            b.send(b"x")
        else:
            loop.stop()

    try:
        var.set("base")
        loop.add_reader(a, on_read)
        var.set("unset")
        b.send(b"x")
        loop.run_forever()
        loop.remove_reader(a)
    finally:
        a.close()
        b.close()
    assert seen == ["base", 1, 2]


def test_handle_run_of_a_queued_handle(loop):
    seen = []

    def setter():
        seen.append(var.get())
        var.set("ran")

    var.set("base")
    h = loop.call_soon(setter)
    h2 = loop.call_soon(setter)
    var.set("outside")
    h._run()  # asyncio's private entry point, as some libraries call it
    assert var.get() == "outside"
    assert ctx_of(h)[var] == "ran"
    run_soon_then_stop(loop)
    # Still queued: the loop runs it again, in its context, as asyncio does.
    assert seen == ["base", "ran", "base"]
    assert ctx_of(h2)[var] == "ran"


@pytest.mark.parametrize("n", [1, 300, 2000])
def test_many_callbacks_each_isolated(loop, n):
    seen = []

    def cb(i):
        seen.append(var.get())
        if i % 3 == 0:
            var.set(("changed", i))

    var.set("base")
    for i in range(n):
        loop.call_soon(cb, i)
    var.set("unset")
    run_soon_then_stop(loop)
    assert seen == ["base"] * n


def test_task_step_between_shared_callbacks(loop):
    seen = []

    async def task():
        var.set("task")
        await asyncio.sleep(0)
        seen.append(("task", var.get()))

    var.set("base")
    loop.call_soon(lambda: seen.append(("a", var.get())))
    t = loop.create_task(task())
    loop.call_soon(lambda: seen.append(("b", var.get())))
    var.set("unset")
    loop.run_until_complete(t)
    assert ("a", "base") in seen and ("b", "base") in seen
    assert ("task", "task") in seen


def test_context_values_released_once_callbacks_ran(loop):
    """A value only scheduled contexts hold dies with the last of them."""
    import gc
    import weakref

    class Big:
        pass

    big = Big()
    ref = weakref.ref(big)
    tok = var.set(big)
    loop.call_soon(lambda: None)
    h = loop.call_later(0, lambda: None)
    var.reset(tok)
    del big, h
    loop.run_until_complete(asyncio.sleep(0.01))
    gc.collect()
    assert ref() is None
