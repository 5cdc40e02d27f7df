"""call_later, call_at, TimerHandle, time()."""

import asyncio
import sys
import time

import pytest


def noop(*args):
    pass


def test_time_is_monotonic_scale(loop):
    for _ in range(5):
        before = time.monotonic()
        t = loop.time()
        after = time.monotonic()
        assert before - 0.005 <= t <= after + 0.005
    assert isinstance(loop.time(), float)


def test_time_never_goes_back(loop):
    last = loop.time()
    for _ in range(10000):
        now = loop.time()
        assert now >= last
        last = now


def test_call_later_order(loop):
    out = []
    for delay in (0.03, 0.01, 0.02, 0.0, 0.015):
        loop.call_later(delay, out.append, delay)
    loop.run_until_complete(asyncio.sleep(0.06))
    assert out == [0.0, 0.01, 0.015, 0.02, 0.03]


def test_call_at_order(loop):
    out = []
    now = loop.time()
    for offset in (0.02, 0.005, 0.01):
        loop.call_at(now + offset, out.append, offset)
    loop.run_until_complete(asyncio.sleep(0.05))
    assert out == [0.005, 0.01, 0.02]


def test_call_at_in_the_past_runs(loop):
    out = []
    loop.call_at(loop.time() - 100, out.append, "past")
    loop.call_at(0, out.append, "zero")
    loop.call_at(-1e9, out.append, "very-past")
    loop.run_until_complete(asyncio.sleep(0.01))
    assert sorted(out) == ["past", "very-past", "zero"]


def test_call_later_negative_delay_runs(loop):
    out = []
    loop.call_later(-5, out.append, 1)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert out == [1]


def test_timer_accepts_int_and_float_subclasses(loop):
    class F(float):
        pass

    out = []
    loop.call_later(0, out.append, "int")
    loop.call_later(F(0.001), out.append, "float-subclass")
    loop.call_at(int(loop.time()), out.append, "int-at")
    loop.run_until_complete(asyncio.sleep(0.01))
    assert sorted(out) == ["float-subclass", "int", "int-at"]


def test_timer_with_non_number_raises_type_error(loop, impl):
    with pytest.raises(TypeError):
        loop.call_later("1", noop)
    if impl == "qloop":
        # asyncio accepts any `when` and fails later, in its heap.
        with pytest.raises(TypeError):
            loop.call_at("1", noop)


def test_delay_none_raises_type_error(loop):
    with pytest.raises(TypeError) as info:
        loop.call_later(None, noop)
    if sys.version_info >= (3, 11):  # 3.10's asyncio has no such checks
        assert str(info.value) == "delay must not be None"
        with pytest.raises(TypeError) as info_at:
            loop.call_at(None, noop)
        assert str(info_at.value) == "when cannot be None"


def test_timer_in_the_far_future_does_not_fire(loop):
    out = []
    h = loop.call_later(1e10, out.append, 1)
    h2 = loop.call_at(float("inf"), out.append, 2)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert out == []
    assert h.when() > loop.time()
    h.cancel()
    h2.cancel()


def test_equal_deadlines_all_run(loop):
    out = []
    when = loop.time() + 0.01
    for i in range(100):
        loop.call_at(when, out.append, i)
    loop.run_until_complete(asyncio.sleep(0.03))
    assert sorted(out) == list(range(100))


def test_equal_deadlines_fifo(qloop_loop):
    """qloop guarantees FIFO for equal deadlines (asyncio's heapq does not)."""
    loop = qloop_loop
    out = []
    late = loop.time() + 0.01
    early = late - 0.005
    for i in range(100):
        loop.call_at(late, out.append, i)
        loop.call_at(early, out.append, 100 + i)
    loop.run_until_complete(asyncio.sleep(0.03))
    assert out == list(range(100, 200)) + list(range(100))


def test_timer_handle_when(loop):
    h = loop.call_at(1234.5, noop)
    assert h.when() == 1234.5
    before = loop.time()
    h2 = loop.call_later(10, noop)
    after = loop.time()
    assert before + 10 <= h2.when() <= after + 10
    h.cancel()
    h2.cancel()


def test_timer_handle_comparisons(loop):
    a = loop.call_at(100.0, noop, 1)
    b = loop.call_at(200.0, noop, 1)
    a2 = loop.call_at(100.0, noop, 1)
    a3 = loop.call_at(100.0, noop, 2)
    assert a < b and b > a
    assert a <= b and b >= a
    assert a <= a2 and a >= a2
    assert a == a2 and not (a != a2)
    assert a != a3 and not (a == a3)
    assert a != b
    assert not (a < a2) and not (a > a2)
    assert sorted([b, a3, a]) [-1] is b
    assert hash(a) == hash(a2) == hash(100.0)
    assert hash(b) == hash(200.0)
    # Against other types: == falls back to identity, ordering raises.
    assert a != 100.0
    assert not (a == object())
    with pytest.raises(TypeError):
        a < 1  # noqa: B015
    h = loop.call_soon(noop)
    assert a != h
    a.cancel()
    assert a != a2
    a2.cancel()
    a3.cancel()
    assert a == a2  # both cancelled: callback and args dropped
    b.cancel()
    h.cancel()


@pytest.mark.parametrize("nargs", range(0, 6))
def test_timer_args_inline_and_spilled(loop, nargs):
    """qloop keeps a timer's first arguments inside its handle and more in
    a separate block: either way they reach the callback, show as _args,
    and are dropped at cancel()."""
    import weakref

    class Arg:
        pass

    got = []
    args = tuple(Arg() for _ in range(nargs))
    refs = [weakref.ref(a) for a in args]
    h = loop.call_later(0, lambda *a: got.append(a), *args)
    h2 = loop.call_at(loop.time() + 1000, noop, *args)
    assert h._args == args and h2._args == args
    loop.run_until_complete(asyncio.sleep(0.01))
    assert len(got) == 1 and len(got[0]) == nargs
    assert all(x is y for x, y in zip(got[0], args))
    h2.cancel()
    assert h2._args is None and h2.cancelled()
    del args, got, h
    assert all(r() is None for r in refs)


def test_timer_handles_in_a_set_and_dict(loop):
    hs = [loop.call_at(float(i), noop, i) for i in range(10)]
    assert len(set(hs)) == 10
    d = {h: i for i, h in enumerate(hs)}
    assert all(d[h] == i for i, h in enumerate(hs))
    for h in hs:
        h.cancel()


def test_timer_cancel(loop):
    out = []
    h = loop.call_later(0.001, out.append, 1)
    h2 = loop.call_later(0.002, out.append, 2)
    h.cancel()
    assert h.cancelled()
    loop.run_until_complete(asyncio.sleep(0.02))
    assert out == [2]
    assert not h2.cancelled()


def test_timer_cancel_from_inside(loop):
    box = {}
    out = []

    def cb():
        out.append(1)
        box["h"].cancel()
        out.append(2)

    box["h"] = loop.call_later(0, cb)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert out == [1, 2]
    assert box["h"].cancelled()


def test_timer_cancels_other_due_timer(loop):
    out = []
    box = {}
    when = loop.time()
    loop.call_at(when, lambda: (out.append("a"), box["b"].cancel()))
    box["b"] = loop.call_at(when + 1e-6, out.append, "b")
    loop.call_at(when + 2e-6, out.append, "c")
    loop.run_until_complete(asyncio.sleep(0.01))
    assert out == ["a", "c"]


def test_cancel_10k_timers_empties_the_heap(qloop_loop):
    loop = qloop_loop
    hs = [loop.call_later(100 + i * 0.001, noop) for i in range(10000)]
    assert loop._stats()["timers"] == 10000
    for h in hs[::2]:
        h.cancel()
    assert loop._stats()["timers"] == 5000
    for h in hs[1::2]:
        h.cancel()
    assert loop._stats()["timers"] == 0
    loop.run_until_complete(asyncio.sleep(0))
    assert loop._stats()["timers"] == 0


def test_cancelled_timer_released(qloop_loop):
    """A cancelled timer leaves the heap at once: its handle and arguments
    are not kept alive by the loop."""
    import weakref

    class Arg:
        pass

    arg = Arg()
    ref = weakref.ref(arg)
    h = qloop_loop.call_later(1000, noop, arg)
    del arg
    assert ref() is not None
    h.cancel()
    assert ref() is None


def test_timers_never_fire_early(loop, impl):
    # asyncio allows firing up to its clock resolution early; qloop never.
    slack = loop._clock_resolution if impl == "asyncio" else 0.0
    early = []
    fired = []

    def cb(h_box):
        now = loop.time()
        fired.append(1)
        if now < h_box[0].when() - slack:
            early.append((h_box[0].when(), now))

    for i in range(60):
        box = []
        box.append(loop.call_later(0.0005 * i + 1e-7 * i, cb, box))
    for i in range(20):
        box = []
        box.append(loop.call_at(loop.time() + 0.001 * i + 0.0003, cb, box))
    loop.run_until_complete(asyncio.sleep(0.06))
    assert len(fired) == 80
    assert early == []


def test_sleep_duration_not_short(loop):
    async def main():
        for d in (0.001, 0.005, 0.02):
            t0 = time.monotonic()
            await asyncio.sleep(d)
            assert time.monotonic() - t0 >= d - 0.001

    loop.run_until_complete(main())


def test_timer_rearming_itself_does_not_starve(loop):
    """A timer re-armed for 'now' by its callback runs once per iteration:
    call_soon callbacks still get their turn."""
    count = {"timer": 0, "soon": 0}

    def timer():
        count["timer"] += 1
        if count["timer"] < 1000:
            loop.call_later(0, timer)

    def soon():
        count["soon"] += 1
        if count["timer"] < 1000:
            loop.call_soon(soon)

    loop.call_later(0, timer)
    loop.call_soon(soon)

    async def main():
        while count["timer"] < 1000:
            await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert count["soon"] >= 100


def test_many_timers_in_random_order(loop):
    import random

    rng = random.Random(1)
    out = []
    base = loop.time() + 0.005
    offsets = [rng.randrange(0, 20000) * 1e-6 for _ in range(2000)]
    hs = [loop.call_at(base + off, out.append, base + off) for off in offsets]
    cancelled = set(rng.sample(range(len(hs)), 500))
    for i in cancelled:
        hs[i].cancel()
    loop.run_until_complete(asyncio.sleep(0.04))
    assert len(out) == 1500
    assert out == sorted(out)


def test_call_soon_then_call_later_zero_fifo(loop):
    out = []

    async def main():
        loop.call_soon(out.append, "soon")
        loop.call_later(0, out.append, "later")
        await asyncio.sleep(0)
        out.append("resumed")
        await asyncio.sleep(0.01)

    loop.run_until_complete(main())
    assert out == ["soon", "resumed", "later"]


def test_timer_and_soon_ordering_in_one_iteration(loop):
    """A due timer runs after callbacks already queued."""
    out = []

    def first():
        loop.call_at(loop.time() - 1, out.append, "timer")
        loop.call_soon(out.append, "soon")

    loop.call_soon(first)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert out == ["soon", "timer"]
