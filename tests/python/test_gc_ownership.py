"""The garbage collector and the handles a loop owns.

qloop keeps a handle untracked by the GC while only its ready ring or timer
heap owns it, and has the loop's traversal stand for it (python/src/
handle.c says why that is sound).  These bodies run on both loops: what
they check is what any correct loop must do.  Objects reachable only
through queued handles must survive collections; cycles through handles
that user code holds must still be collected once the loop lets go; the
contents of queued handles stay intact across gc.collect() during a run.
"""

import asyncio
import contextvars
import gc
import weakref


class Obj:
    def __init__(self):
        self.calls = []
        self.handle = None

    def method(self, *args):
        self.calls.append(args)


def test_queued_callbacks_survive_collection(loop):
    # Objects kept alive only by queued handles (no other reference).
    refs = []
    for i in range(300):
        o = Obj()
        refs.append(weakref.ref(o))
        loop.call_soon(o.method, i, [i])
        del o
    gc.collect()
    assert all(r() is not None for r in refs)
    seen = []

    def check():
        seen.append(sum(1 for r in refs if r() is None))
        loop.stop()

    loop.call_soon(check)
    loop.run_forever()
    gc.collect()
    assert all(r() is None for r in refs)  # freed after their run


def test_armed_timers_survive_collection(loop):
    refs = []
    handles = []
    for i in range(300):
        o = Obj()
        refs.append(weakref.ref(o))
        h = loop.call_later(1000 + i, o.method, i)
        if i % 2:
            handles.append(h)  # some held by the caller too
        del o, h
    for _ in range(3):
        gc.collect()
    assert all(r() is not None for r in refs)
    for h in handles:
        h.cancel()
    handles.clear()
    gc.collect()
    assert sum(r() is None for r in refs) == 150
    # The rest are freed with the loop's heap at close.


def test_gc_collect_inside_callbacks(loop):
    """Collections while the ring and heap hold handles whose arguments are
    reachable only through them: every callback runs with its own args."""
    got = []

    def cb(i, payload, obj):
        if i % 50 == 0:
            gc.collect()
        got.append((i, payload[0], obj.calls))

    def cycle_arg(i):
        o = Obj()
        o.self_ref = o  # garbage-collectable on its own once unreachable
        o.calls = i
        return o

    def schedule():
        for i in range(500):
            loop.call_soon(cb, i, [i], cycle_arg(i))
        for i in range(500, 600):
            loop.call_later(0.001, cb, i, [i], cycle_arg(i))

    loop.call_soon(schedule)
    loop.call_later(0.2, loop.stop)
    loop.run_forever()
    assert sorted(got) == [(i, i, i) for i in range(600)]


def test_cycle_through_held_handle_is_collected(loop):
    o = Obj()
    o.handle = loop.call_soon(o.method, "x")  # o -> handle -> o.method -> o
    r = weakref.ref(o)
    del o
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert r().calls == [("x",)]
    gc.collect()
    assert r() is None


def test_cycle_through_cancelled_timer_handle_is_collected(loop):
    o = Obj()
    o.handle = loop.call_later(1000, o.method)
    r = weakref.ref(o)
    del o
    gc.collect()
    assert r() is not None  # armed: the loop keeps it
    r().handle.cancel()
    gc.collect()
    assert r() is None


def test_cycle_through_fired_timer_handle_is_collected(loop):
    o = Obj()
    o.handle = loop.call_later(0, o.method, 1)
    r = weakref.ref(o)
    del o
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert r().calls == [(1,)]
    gc.collect()
    assert r() is None


def test_held_handle_cycle_while_queued(loop):
    """A handle the caller holds, in a cycle, queued: not collected while
    queued (it must still run), collected after."""
    o = Obj()
    o.handle = loop.call_soon(o.method, 2)
    r = weakref.ref(o)
    del o
    for _ in range(3):
        gc.collect()
    assert r() is not None
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert r().calls == [(2,)]
    for _ in range(2):
        gc.collect()
    assert r() is None


def test_callback_args_reference_the_loop(loop_factory):
    """Queued and armed handles whose arguments reference the loop, the
    loop then dropped unclosed: everything is collected, nothing crashes."""
    import warnings
    lp = loop_factory()
    o = Obj()
    o.loop = lp
    lp.call_soon(o.method, lp)
    lp.call_later(1000, o.method, lp, o)
    h = lp.call_soon(o.method, lp)
    o.handle = h
    rl, ro = weakref.ref(lp), weakref.ref(o)
    del lp, o, h
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        for _ in range(3):
            gc.collect()
    assert rl() is None and ro() is None


def test_get_referents_of_queued_handle(loop):
    """A handle the caller holds reports what it references."""
    o = Obj()
    h = loop.call_soon(o.method, 5)
    refs = gc.get_referents(h)
    assert any(getattr(x, "__self__", None) is o for x in refs) or \
        o.method in refs
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert o.calls == [(5,)]


def test_contexts_isolated_across_collections(loop):
    var = contextvars.ContextVar("v", default=0)
    seen = []

    def cb(i):
        seen.append(var.get())
        var.set(i)
        if i % 7 == 0:
            gc.collect()

    for i in range(1, 100):
        var.set(i * 10)
        loop.call_soon(cb, i)
    var.set(0)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [i * 10 for i in range(1, 100)]
    assert var.get() == 0


def test_fired_timer_left_queued_in_a_dropped_loop(loop_factory):
    """A fired timer still queued when the run ended (an earlier callback
    raised SystemExit), held in a cycle, the loop then dropped unclosed:
    all of it is collected."""
    import warnings
    lp = loop_factory()
    o = Obj()
    when = lp.time()

    def stop_hard():
        raise SystemExit

    lp.call_at(when, stop_hard)
    o.handle = lp.call_at(when, o.method, lp)
    import time
    time.sleep(0.002)
    try:
        lp.run_forever()
    except SystemExit:
        pass
    assert o.calls == []  # queued behind stop_hard, not run
    rl, ro = weakref.ref(lp), weakref.ref(o)
    del lp, o
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        for _ in range(3):
            gc.collect()
    assert rl() is None and ro() is None
