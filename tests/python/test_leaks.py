"""Leak checks (qloop only): file descriptors, references, memory.

No debug build of CPython is needed: reference counts are read with
sys.getrefcount on objects the test owns, Python allocations with
tracemalloc, C allocations (the reactor's arrays) with glibc's mallinfo2,
and object growth with gc.get_objects().
"""

import asyncio
import contextvars
import ctypes
import gc
import os
import signal
import socket
import sys
import threading
import tracemalloc
import weakref

import pytest

import qloop


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def full_gc():
    for _ in range(3):
        gc.collect()


def _mallinfo_fn():
    try:
        libc = ctypes.CDLL(None)
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost")]

    fn.restype = Mallinfo2
    return fn


_mallinfo2 = _mallinfo_fn()


def c_heap_in_use():
    """Bytes malloc() has handed out and not got back (glibc)."""
    info = _mallinfo2()
    return info.uordblks + info.hblkhd


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                                reason="needs /proc")
needs_mallinfo = pytest.mark.skipif(_mallinfo2 is None,
                                    reason="needs glibc mallinfo2")


class Obj:
    """An object whose reference count the tests watch."""


def noop(*args):
    pass


# ---- one full life cycle ----------------------------------------------------


def busy_cycle():
    """Create a loop, use every hot path once, run, close."""
    loop = qloop.new_event_loop()
    a, b = socket.socketpair()
    try:
        async def main():
            lp = asyncio.get_running_loop()
            fut = lp.create_future()
            lp.add_reader(a, lambda: (a.recv(10), lp.remove_reader(a),
                                      fut.set_result(None)))
            lp.call_soon(b.send, b"x")
            lp.call_later(0, noop, 1, 2, 3, 4, 5, 6)
            lp.call_at(lp.time() + 100, noop).cancel()
            lp.call_soon_threadsafe(noop)
            h = lp.call_soon(noop)
            h.cancel()
            await fut
            await asyncio.sleep(0)
            return 1

        loop.run_until_complete(main())
        loop.call_soon(noop)  # pending at close
        loop.call_later(100, noop, Obj())  # armed at close
        loop.add_writer(b, noop)  # watched at close
    finally:
        loop.close()
        a.close()
        b.close()


def quiet_cycle():
    loop = qloop.new_event_loop()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()


@needs_proc
@pytest.mark.parametrize("cycle", [quiet_cycle, busy_cycle])
def test_no_fd_leak_over_200_cycles(cycle):
    cycle()
    full_gc()
    before = fd_count()
    for _ in range(200):
        cycle()
    full_gc()
    assert fd_count() == before


@needs_proc
def test_no_fd_leak_unclosed_loops_collected(loop_factory, monkeypatch):
    import warnings

    # An unclosed loop is collected as a cycle; its __del__ -> close() can
    # fail (on both loops) when its self-pipe socket was finalized first.
    # Keep no reference to such errors: they would keep the loop alive.
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: None)
    full_gc()
    before = fd_count()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        for _ in range(50):
            loop = loop_factory()
            loop.run_until_complete(asyncio.sleep(0))
            del loop
        full_gc()
    # The selector's sockets close with the loop, the reactor's fds in its
    # dealloc.
    assert fd_count() == before


@needs_proc
def test_no_fd_leak_with_signal_handler():
    full_gc()
    before = fd_count()
    for _ in range(20):
        loop = qloop.new_event_loop()
        loop.add_signal_handler(signal.SIGUSR1, noop)
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        del loop
    full_gc()
    assert fd_count() == before


@needs_proc
def test_close_releases_fds(loop_factory):
    full_gc()
    before = fd_count()
    loops = []
    for _ in range(20):
        lp = loop_factory()
        lp.run_until_complete(asyncio.sleep(0))
        lp.close()
        loops.append(lp)  # still referenced, e.g. by a future or a handle
    assert fd_count() == before


def test_no_memory_growth_over_cycles():
    for _ in range(50):
        busy_cycle()
    full_gc()
    objs_before = len(gc.get_objects())
    tracemalloc.start()
    try:
        for _ in range(20):
            busy_cycle()
        full_gc()
        m1 = tracemalloc.get_traced_memory()[0]
        for _ in range(200):
            busy_cycle()
        full_gc()
        m2 = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    objs_after = len(gc.get_objects())
    # 200 cycles: anything leaked per cycle (a loop is kilobytes) shows.
    assert m2 - m1 < 64 * 1024, f"grew {m2 - m1} bytes over 200 cycles"
    assert objs_after - objs_before < 200


@needs_mallinfo
def test_no_c_heap_growth_over_cycles():
    for _ in range(100):
        busy_cycle()
    full_gc()
    before = c_heap_in_use()
    for _ in range(1000):
        busy_cycle()
    full_gc()
    grown = c_heap_in_use() - before
    assert grown < 256 * 1024, f"C heap grew {grown} bytes over 1000 cycles"


def test_closed_loop_is_collected():
    loop = qloop.new_event_loop()
    ref = weakref.ref(loop)
    busy = loop.call_later(100, noop)  # noqa: F841  (a handle outliving it)
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    del loop
    full_gc()
    assert ref() is None or busy._loop is ref()
    del busy
    full_gc()
    assert ref() is None


def test_busy_closed_loop_is_collected():
    holder = {}

    def make():
        busy_cycle()
        loop = qloop.new_event_loop()
        loop.run_until_complete(asyncio.sleep(0.001))
        loop.set_debug(True)
        loop.call_soon(noop)
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        holder["ref"] = weakref.ref(loop)

    make()
    full_gc()
    assert holder["ref"]() is None


def test_run_loop_is_collected():
    refs = []

    async def main():
        refs.append(weakref.ref(asyncio.get_running_loop()))
        await asyncio.sleep(0)

    qloop.run(main())
    full_gc()
    assert refs[0]() is None


# ---- reference counts -------------------------------------------------------


def _run_all(loop):
    loop.run_until_complete(asyncio.sleep(0.002))


@pytest.mark.parametrize("nargs", [0, 1, 4, 5, 7])
@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe",
                                    "call_later", "call_at"])
def test_refcounts_after_run(qloop_loop, method, nargs):
    loop = qloop_loop
    cb = noop
    arg = Obj()
    ctx = contextvars.copy_context()
    first = [] if method.startswith("call_soon") else [
        loop.time() if method == "call_at" else 0]
    _run_all(loop)
    base = (sys.getrefcount(cb), sys.getrefcount(arg), sys.getrefcount(ctx))
    for _ in range(100):
        getattr(loop, method)(*first, cb, *([arg] * nargs), context=ctx)
    _run_all(loop)
    assert (sys.getrefcount(cb), sys.getrefcount(arg),
            sys.getrefcount(ctx)) == base


@pytest.mark.parametrize("nargs", [0, 4, 6])
@pytest.mark.parametrize("method", ["call_soon", "call_later"])
def test_refcounts_after_cancel(qloop_loop, method, nargs):
    loop = qloop_loop
    arg = Obj()
    first = [] if method == "call_soon" else [10]
    base = sys.getrefcount(arg)
    hs = [getattr(loop, method)(*first, noop, *([arg] * nargs))
          for _ in range(100)]
    for h in hs:
        h.cancel()
    assert sys.getrefcount(arg) == base  # cancel drops the arguments
    del hs
    _run_all(loop)
    assert sys.getrefcount(arg) == base


def test_refcounts_after_close(qloop_loop):
    loop = qloop_loop
    arg = Obj()
    base = sys.getrefcount(arg)
    for _ in range(50):
        loop.call_soon(noop, arg, arg, arg, arg, arg)
        loop.call_later(100, noop, arg)
        loop.call_soon_threadsafe(noop, arg)
    loop.close()
    assert sys.getrefcount(arg) == base


def test_refcounts_reader_add_replace_remove(qloop_loop):
    loop = qloop_loop
    arg = Obj()
    a, b = socket.socketpair()
    try:
        base = sys.getrefcount(arg)
        for _ in range(50):
            loop.add_reader(a, noop, arg)
            loop.add_writer(a, noop, arg, arg)
        b.send(b"x")
        _run_all(loop)
        loop.remove_reader(a)
        loop.remove_writer(a)
        assert sys.getrefcount(arg) == base
        loop.add_reader(a, noop, arg)
        loop.close()
        assert sys.getrefcount(arg) == base
    finally:
        a.close()
        b.close()


def test_refcounts_of_callback_exceptions(qloop_loop):
    loop = qloop_loop
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(1))
    arg = Obj()

    def fail(x):
        raise ValueError(x)

    _run_all(loop)
    base = sys.getrefcount(arg)
    for _ in range(100):
        loop.call_soon(fail, arg)
    _run_all(loop)
    full_gc()
    assert len(errors) == 100
    assert sys.getrefcount(arg) == base


def test_refcounts_of_cancel_inside_callback(qloop_loop):
    loop = qloop_loop
    arg = Obj()
    base = sys.getrefcount(arg)
    box = []

    def cb(x):
        box[-1].cancel()

    for _ in range(100):
        box.append(loop.call_soon(cb, arg))
    _run_all(loop)
    del box[:]
    assert sys.getrefcount(arg) == base


def test_handle_released_after_run(qloop_loop):
    loop = qloop_loop
    h = loop.call_soon(noop)
    t = loop.call_later(0, noop)
    refs = [weakref.ref(h), weakref.ref(t)]
    del h, t
    _run_all(loop)
    assert [r() for r in refs] == [None, None]


def test_base_exception_leaves_no_references(qloop_loop):
    loop = qloop_loop
    arg = Obj()
    base = sys.getrefcount(arg)

    def interrupt(x):
        raise KeyboardInterrupt

    for _ in range(20):
        loop.call_soon(interrupt, arg)
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
    sys.last_value = sys.last_traceback = None
    full_gc()
    assert sys.getrefcount(arg) == base


# ---- one long-lived loop ----------------------------------------------------


def churn(loop, n):
    """n call_soon/call_later/call_at/cancel cycles, with contexts and
    argument counts beyond the inline ones."""
    ctx = contextvars.copy_context()
    for i in range(n):
        loop.call_soon(noop, i)
        loop.call_soon(noop, 1, 2, 3, 4, 5, 6, context=ctx)
        loop.call_later(100, noop, i).cancel()
        loop.call_at(0, noop)
        loop.call_soon(noop).cancel()
        if i % 1000 == 999:
            loop.run_until_complete(asyncio.sleep(0))
    loop.run_until_complete(asyncio.sleep(0))


def test_memory_plateaus_over_call_soon_cycles(qloop_loop):
    loop = qloop_loop
    churn(loop, 10000)
    full_gc()
    tracemalloc.start()
    try:
        churn(loop, 2000)
        full_gc()
        m1 = tracemalloc.get_traced_memory()[0]
        churn(loop, 10000)
        full_gc()
        m2 = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert m2 - m1 < 32 * 1024, f"grew {m2 - m1} bytes over 10k cycles"
    assert loop._stats()["timers"] == 0
    assert loop._stats()["ready"] == 0


@needs_mallinfo
def test_c_heap_plateaus_over_call_soon_cycles(qloop_loop):
    loop = qloop_loop
    churn(loop, 10000)
    full_gc()
    before = c_heap_in_use()
    churn(loop, 10000)
    full_gc()
    grown = c_heap_in_use() - before
    assert grown < 128 * 1024, f"C heap grew {grown} bytes over 10k cycles"


def test_memory_plateaus_in_debug_mode(qloop_loop):
    loop = qloop_loop
    loop.set_debug(True)
    loop.slow_callback_duration = 100
    churn(loop, 300)
    full_gc()
    tracemalloc.start()
    try:
        churn(loop, 100)
        full_gc()
        m1 = tracemalloc.get_traced_memory()[0]
        churn(loop, 300)
        full_gc()
        m2 = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert m2 - m1 < 32 * 1024, f"grew {m2 - m1} bytes over 300 cycles"


def test_memory_plateaus_with_threadsafe_calls(qloop_loop):
    loop = qloop_loop

    def burst(n):
        done = loop.create_future()

        def producer():
            for _ in range(n - 1):
                loop.call_soon_threadsafe(noop, 1, 2)
            loop.call_soon_threadsafe(done.set_result, None)

        t = threading.Thread(target=producer)
        t.start()
        loop.run_until_complete(done)
        t.join()

    burst(5000)
    full_gc()
    tracemalloc.start()
    try:
        burst(1000)
        full_gc()
        m1 = tracemalloc.get_traced_memory()[0]
        burst(5000)
        full_gc()
        m2 = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert m2 - m1 < 32 * 1024


def test_memory_plateaus_with_readers(qloop_loop):
    loop = qloop_loop
    a, b = socket.socketpair()
    a.setblocking(False)

    def rounds(n):
        for _ in range(n):
            fut = loop.create_future()

            def on_read(f=fut):
                a.recv(10)
                loop.remove_reader(a)
                f.set_result(None)

            loop.add_reader(a, on_read)
            b.send(b"x")
            loop.run_until_complete(fut)

    try:
        rounds(1000)
        full_gc()
        tracemalloc.start()
        try:
            rounds(200)
            full_gc()
            m1 = tracemalloc.get_traced_memory()[0]
            rounds(2000)
            full_gc()
            m2 = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert m2 - m1 < 32 * 1024
        assert loop._stats()["watchers"] == 1  # the self-pipe only
    finally:
        a.close()
        b.close()


# ---- sock_* -----------------------------------------------------------------


def test_memory_plateaus_with_sock_ops(qloop_loop):
    loop = qloop_loop
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    buf = bytearray(16)

    async def rounds(n):
        for i in range(n):
            # waits, then completes
            t = loop.create_task(loop.sock_recv(a, 16))
            await asyncio.sleep(0)
            await loop.sock_sendall(b, b"x")
            await t
            # completes at once
            b.send(b"y")
            await loop.sock_recv_into(a, buf)
            # waits, then is cancelled
            t = loop.create_task(loop.sock_recv(a, 16))
            await asyncio.sleep(0)
            t.cancel()
            try:
                await t
            except asyncio.CancelledError:
                pass
            # fails
            try:
                await loop.sock_recv(a, -1)
            except ValueError:
                pass

    try:
        loop.run_until_complete(rounds(300))
        full_gc()
        base_refs = (sys.getrefcount(a), sys.getrefcount(buf))
        tracemalloc.start()
        try:
            loop.run_until_complete(rounds(100))
            full_gc()
            m1 = tracemalloc.get_traced_memory()[0]
            loop.run_until_complete(rounds(1000))
            full_gc()
            m2 = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert m2 - m1 < 32 * 1024, f"grew {m2 - m1} bytes over 1000 rounds"
        assert (sys.getrefcount(a), sys.getrefcount(buf)) == base_refs
        assert loop._stats()["watchers"] == 1  # the self-pipe only
    finally:
        a.close()
        b.close()


def test_no_leak_sock_connect_accept(qloop_loop):
    loop = qloop_loop
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.setblocking(False)
    addr = server.getsockname()

    async def rounds(n):
        for _ in range(n):
            client = socket.socket()
            client.setblocking(False)
            acc = loop.create_task(loop.sock_accept(server))
            await loop.sock_connect(client, addr)
            conn, _ = await acc
            conn.close()
            client.close()

    try:
        loop.run_until_complete(rounds(100))
        full_gc()
        fds = fd_count()
        tracemalloc.start()
        try:
            loop.run_until_complete(rounds(50))
            full_gc()
            m1 = tracemalloc.get_traced_memory()[0]
            loop.run_until_complete(rounds(300))
            full_gc()
            m2 = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert m2 - m1 < 32 * 1024, f"grew {m2 - m1} bytes over 300 rounds"
        assert fd_count() == fds
    finally:
        server.close()


def test_abandoned_sock_coroutine_collected(qloop_loop):
    import warnings

    loop = qloop_loop
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        base = sys.getrefcount(a)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # never awaited
            for _ in range(100):
                loop.sock_recv(a, 10)
                loop.sock_sendall(a, b"x")
            gc.collect()
        assert sys.getrefcount(a) == base
    finally:
        a.close()
        b.close()
