"""Write batching: stream transports' sends deferred to the end of the pass.

With loop.set_write_batching(True) (or QLOOP_BATCH_WRITES=1; off by
default), qloop's write() made from a callback, with nothing queued, waits
until the loop has run the pass and then goes out with the pass's other
sends (as uvloop's writes do).  asyncio's write() sends at once, and so
does qloop's by default.  The first tests run against asyncio's loop and
against qloop with batching on: whatever a program can observe -- the
buffer size, what abort(), close() and write_eof() send, flow control, a
run ended by an exception -- must be what asyncio gives.  The qloop-only
tests pin the switch and the deferral itself: that it happens, and where it
does not.
"""

import asyncio
import os
import socket
import subprocess
import sys

import pytest
import qloop

from test_transports import (HOST, KiB, Proto, made, recv_all, run,
                             transport_and_raw_peer)


@pytest.fixture
def loop(loop):
    """The loop under test; a qloop one with write batching on."""
    if isinstance(loop, qloop.Loop):
        loop.set_write_batching(True)
    return loop


@pytest.fixture
def qloop_loop(qloop_loop):
    qloop_loop.set_write_batching(True)
    return qloop_loop


def in_one_callback(loop, fn):
    """Run fn() alone in one callback of the running loop; returns a future
    of its result."""
    fut = loop.create_future()

    def cb():
        try:
            fut.set_result(fn())
        except BaseException as e:  # noqa: BLE001 - the test looks at it
            fut.set_exception(e)

    loop.call_soon(cb)
    return fut


def test_buffer_size_right_after_a_small_write(loop):
    async def main():
        tr, pr, peer = await transport_and_raw_peer(loop)
        with peer:
            sizes = await in_one_callback(
                loop, lambda: (tr.write(b"x" * 100),
                               tr.get_write_buffer_size())[1])
            assert sizes == 0
            tr.close()
            assert await recv_all(loop, peer) == b"x" * 100
    run(loop, main())


@pytest.mark.parametrize("how", ["abort", "close", "write_eof"])
def test_what_was_written_goes_out_before(loop, how):
    """write() then abort()/close()/write_eof() in the same callback: the
    peer gets what write() took, then EOF; connection_lost once (not for
    write_eof, which keeps the transport open)."""
    data = bytes(range(256)) * 40

    async def main():
        tr, pr, peer = await transport_and_raw_peer(loop)
        with peer:
            def both():
                tr.write(data[:5000])
                tr.write(data[5000:])
                getattr(tr, how)()
            await in_one_callback(loop, both)
            assert await recv_all(loop, peer) == data
            if how == "write_eof":
                assert not tr.is_closing()
                tr.close()
            await pr.lost
            await asyncio.sleep(0.01)
            assert pr.lost_calls == 1
            assert pr.exc is None
    run(loop, main())


def test_writes_of_many_transports_in_one_pass(loop):
    """Interleaved writes to several transports from one callback: each
    peer gets its own bytes, in order."""
    async def main():
        pairs = [await transport_and_raw_peer(loop) for _ in range(8)]

        def write_all():
            for i in range(20):
                for k, (tr, _, _) in enumerate(pairs):
                    tr.write(bytes([k]) * (i + 1))
            for tr, _, _ in pairs:
                tr.close()
        await in_one_callback(loop, write_all)
        for k, (_, pr, peer) in enumerate(pairs):
            with peer:
                got = await recv_all(loop, peer)
            assert got == bytes([k]) * sum(range(1, 21))
            await pr.lost
    run(loop, main())


def test_lowering_the_limits_after_a_small_write_does_not_pause(loop):
    """asyncio sent the write at once, so a high-water mark of 0 set right
    after it finds nothing buffered: no pause_writing()."""
    async def main():
        tr, pr, peer = await transport_and_raw_peer(loop)
        with peer:
            def write_then_lower():
                tr.write(b"y" * 1000)
                tr.set_write_buffer_limits(high=0)
                return tr.get_write_buffer_size()
            assert await in_one_callback(loop, write_then_lower) == 0
            assert not pr.paused
            tr.close()
            assert await recv_all(loop, peer) == b"y" * 1000
    run(loop, main())


def test_write_then_keyboardinterrupt_in_the_same_pass(loop):
    """A run that ends on KeyboardInterrupt from the callback after a
    write: the write still went out."""
    async def setup():
        return await transport_and_raw_peer(loop)
    tr, pr, peer = run(loop, setup())
    with peer:
        def interrupt():
            raise KeyboardInterrupt

        loop.call_soon(tr.write, b"z" * 300)
        loop.call_soon(interrupt)
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
        tr.close()
        assert run(loop, recv_all(loop, peer)) == b"z" * 300
        run(loop, pr.lost)


# ---- qloop only: the deferral itself ---------------------------------------


def _not_sent_yet(peer):
    """True when nothing has reached the peer socket yet (loopback
    delivers a send before send() returns)."""
    try:
        peer.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK)
    except BlockingIOError:
        return True
    return False


def test_a_pass_sends_after_its_callbacks(qloop_loop):
    loop = qloop_loop

    async def main():
        tr, pr, peer = await transport_and_raw_peer(loop)
        with peer:
            seen = []

            def first():
                tr.write(b"a" * 10)
                tr.write(b"b" * 10)

            def second():  # same pass: nothing has gone out yet
                seen.append(_not_sent_yet(peer))

            loop.call_soon(first)
            loop.call_soon(second)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert seen == [True]
            tr.close()
            assert await recv_all(loop, peer) == b"a" * 10 + b"b" * 10
    run(loop, main())


def test_no_deferral_past_the_high_water_mark(qloop_loop):
    """A write that would take the queue past the high-water mark goes out
    at once, with what was deferred before it; so does every write when
    the mark is 0."""
    loop = qloop_loop

    async def main():
        tr, pr, peer = await transport_and_raw_peer(loop)
        with peer:
            tr.set_write_buffer_limits(high=4 * KiB)

            def writes():
                tr.write(b"c" * 1000)          # deferred
                before = _not_sent_yet(peer)
                tr.write(b"d" * 4000)          # past 4 KiB: both go now
                return before, _not_sent_yet(peer)
            assert await in_one_callback(loop, writes) == (True, False)
            tr.set_write_buffer_limits(high=0)
            assert await in_one_callback(
                loop, lambda: (tr.write(b"e"), _not_sent_yet(peer))[1]) \
                is False
            tr.close()
            got = await recv_all(loop, peer)
            assert got == b"c" * 1000 + b"d" * 4000 + b"e"
    run(loop, main())


def test_no_deferral_when_the_loop_is_not_running(qloop_loop):
    loop = qloop_loop
    tr, pr, peer = run(loop, transport_and_raw_peer(loop))
    with peer:
        tr.write(b"f" * 10)
        assert not _not_sent_yet(peer)
        tr.close()
        assert run(loop, recv_all(loop, peer)) == b"f" * 10


def test_off_by_default_write_sends_at_once():
    lp = qloop.new_event_loop()
    try:
        assert lp.get_write_batching() is False

        async def main():
            tr, pr, peer = await transport_and_raw_peer(lp)
            with peer:
                sent_at_once = await in_one_callback(
                    lp, lambda: (tr.write(b"g" * 10),
                                 not _not_sent_yet(peer))[1])
                assert sent_at_once
                tr.close()
                assert await recv_all(lp, peer) == b"g" * 10
        run(lp, main())
    finally:
        lp.close()


def test_switch_and_environment():
    lp = qloop.new_event_loop()
    try:
        lp.set_write_batching(1)
        assert lp.get_write_batching() is True
        lp.set_write_batching(False)
        assert lp.get_write_batching() is False
    finally:
        lp.close()
    code = ("import qloop; lp = qloop.new_event_loop(); "
            "print(lp.get_write_batching()); lp.close()")
    for value, want in (("1", "True"), ("0", "False"), ("", "False")):
        env = dict(os.environ, QLOOP_BATCH_WRITES=value)
        out = subprocess.run([sys.executable, "-c", code], env=env,
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == want, (value, out.stderr)
