"""add_reader / remove_reader / add_writer / remove_writer."""

import asyncio
import os
import socket

import pytest


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def run_briefly(loop, seconds=0.01):
    loop.run_until_complete(asyncio.sleep(seconds))


@pytest.mark.parametrize("as_object", [False, True])
def test_add_reader_runs_with_args(loop, pair, as_object):
    a, b = pair
    got = []

    def on_readable(*args):
        got.append(args)
        a.recv(100)

    loop.add_reader(a if as_object else a.fileno(), on_readable, 1, "two",
                    3, 4, 5, 6)
    run_briefly(loop)
    assert got == []
    b.send(b"x")
    run_briefly(loop)
    assert got == [(1, "two", 3, 4, 5, 6)]
    assert loop.remove_reader(a if as_object else a.fileno()) is True
    assert loop.remove_reader(a) is False
    b.send(b"y")
    run_briefly(loop)
    assert len(got) == 1


def test_reader_runs_each_iteration_while_readable(loop, pair):
    a, b = pair
    count = [0]

    def on_readable():
        count[0] += 1
        if count[0] == 5:
            loop.remove_reader(a)

    loop.add_reader(a, on_readable)
    b.send(b"x")
    run_briefly(loop, 0.02)
    assert count[0] == 5


def test_add_writer(loop, pair):
    a, b = pair
    got = []
    loop.add_writer(a, got.append, "writable")
    run_briefly(loop)
    assert loop.remove_writer(a) is True
    assert loop.remove_writer(a) is False
    assert len(got) >= 1 and set(got) == {"writable"}


def test_reader_and_writer_on_one_fd(loop, pair):
    a, b = pair
    got = []

    def on_read():
        got.append("r")
        a.recv(10)

    def on_write():
        got.append("w")
        loop.remove_writer(a)

    loop.add_reader(a, on_read)
    loop.add_writer(a, on_write)
    b.send(b"x")
    run_briefly(loop)
    assert sorted(got) == ["r", "w"]
    assert loop.remove_writer(a) is False
    assert loop.remove_reader(a) is True


def test_remove_reader_keeps_writer(loop, pair):
    a, b = pair
    got = []
    loop.add_reader(a, got.append, "r")
    loop.add_writer(a, got.append, "w")
    assert loop.remove_reader(a) is True
    b.send(b"x")
    run_briefly(loop)
    assert "w" in got and "r" not in got
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is True


def test_replacing_a_reader(loop, pair):
    a, b = pair
    got = []

    def first():
        got.append("first")

    def second():
        got.append("second")
        a.recv(10)

    loop.add_reader(a, first)
    loop.add_reader(a, second)
    b.send(b"x")
    run_briefly(loop)
    assert got == ["second"]
    assert loop.remove_reader(a) is True
    assert loop.remove_reader(a) is False


def test_replacing_cancels_old_handle(loop, pair):
    a, b = pair
    h1 = loop._add_reader(a.fileno(), lambda: None)
    h2 = loop._add_reader(a.fileno(), lambda: None)
    assert h1.cancelled()
    assert not h2.cancelled()
    loop.remove_reader(a)
    assert h2.cancelled()


def test_replacing_reader_from_its_callback(loop, pair):
    a, b = pair
    got = []

    def first():
        got.append("first")
        loop.add_reader(a, second)

    def second():
        got.append("second")
        a.recv(10)
        loop.remove_reader(a)

    loop.add_reader(a, first)
    b.send(b"x")
    run_briefly(loop, 0.02)
    assert got == ["first", "second"]


def test_reader_removed_by_earlier_callback_in_the_batch(loop):
    (a1, b1), (a2, b2) = socket.socketpair(), socket.socketpair()
    try:
        got = []

        def make(mine, other_sock):
            def cb():
                got.append(mine)
                loop.remove_reader(other_sock)
                loop.remove_reader(mine)
            return cb

        loop.add_reader(a1, make(a1, a2))
        loop.add_reader(a2, make(a2, a1))
        b1.send(b"x")
        b2.send(b"x")
        run_briefly(loop, 0.02)
        assert len(got) == 1
    finally:
        for s in (a1, b1, a2, b2):
            s.close()


def test_closing_fd_from_an_earlier_callback_in_the_batch(loop):
    (a1, b1), (a2, b2) = socket.socketpair(), socket.socketpair()
    socks = [a1, b1, a2, b2]
    try:
        got = []

        def make(mine, other):
            def cb():
                got.append(mine)
                loop.remove_reader(other)
                other.close()
                loop.remove_reader(mine)
            return cb

        loop.add_reader(a1, make(a1, a2))
        loop.add_reader(a2, make(a2, a1))
        b1.send(b"x")
        b2.send(b"x")
        run_briefly(loop, 0.02)
        assert len(got) == 1
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("method", ["add_reader", "add_writer",
                                    "remove_reader", "remove_writer"])
def test_invalid_fd(loop, method):
    args = (lambda: None,) if method.startswith("add") else ()
    with pytest.raises(ValueError) as info:
        getattr(loop, method)(-1, *args)
    assert str(info.value) == "Invalid file descriptor: -1"


@pytest.mark.parametrize("method", ["add_reader", "add_writer",
                                    "remove_reader", "remove_writer"])
def test_invalid_file_object(loop, method):
    args = (lambda: None,) if method.startswith("add") else ()
    obj = object()
    with pytest.raises(ValueError) as info:
        getattr(loop, method)(obj, *args)
    assert str(info.value) == f"Invalid file object: {obj!r}"


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_fileno_returning_garbage(loop, method):
    class Bad:
        def fileno(self):
            return "three"

    with pytest.raises(ValueError):
        getattr(loop, method)(Bad(), lambda: None)


def test_add_reader_on_unopened_fd_raises_oserror(loop):
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(OSError):
        loop.add_reader(fd, lambda: None)
    assert loop.remove_reader(fd) is False


def test_add_reader_on_regular_file_raises(loop, tmp_path):
    # epoll refuses regular files (EPERM); asyncio lets it through.
    path = tmp_path / "f"
    path.write_bytes(b"data")
    with open(path, "rb") as f:
        with pytest.raises(PermissionError):
            loop.add_reader(f, lambda: None)
        assert loop.remove_reader(f) is False


def test_fd_closed_behind_the_loops_back(loop):
    a, b = socket.socketpair()
    fd = a.fileno()
    got = []
    loop.add_reader(fd, got.append, "r")
    a.close()  # without remove_reader
    run_briefly(loop)
    assert got == []
    assert loop.remove_reader(fd) is True
    assert loop.remove_reader(fd) is False
    b.close()
    # The loop still works, also for a new socket that may reuse the fd.
    c, d = socket.socketpair()
    try:
        loop.add_reader(c, got.append, "new")
        d.send(b"y")
        run_briefly(loop)
        assert got and set(got) == {"new"}
        assert loop.remove_reader(c) is True
    finally:
        c.close()
        d.close()


def test_fd_closed_behind_the_loops_back_then_loop_closed(loop):
    a, b = socket.socketpair()
    loop.add_reader(a.fileno(), lambda: None)
    loop.add_writer(b.fileno(), lambda: None)
    a.close()
    b.close()
    run_briefly(loop)
    loop.close()


@pytest.mark.parametrize("side", ["reader", "writer"])
def test_remove_closed_socket_object(loop, side):
    a, b = socket.socketpair()
    getattr(loop, "add_" + side)(a, lambda: None)
    a.close()  # its fileno() is -1 now
    b.close()
    run_briefly(loop)
    assert getattr(loop, "remove_" + side)(a) is True
    # Unregistered now: the object no longer maps to anything.
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        getattr(loop, "remove_" + side)(a)


def test_remove_never_registered_closed_socket_raises(loop):
    a, b = socket.socketpair()
    a.close()
    b.close()
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        loop.remove_reader(a)


def test_pipe_reader_and_writer(loop):
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    got = []
    try:
        def on_read():
            data = os.read(r, 100)
            got.append(data)
            if data == b"":
                loop.remove_reader(r)

        loop.add_reader(r, on_read)
        loop.add_writer(w, lambda: (os.write(w, b"hello"),
                                    loop.remove_writer(w)))
        run_briefly(loop)
        assert got == [b"hello"]
        os.close(w)
        w = None
        run_briefly(loop)
        assert got == [b"hello", b""]
    finally:
        os.close(r)
        if w is not None:
            os.close(w)


def test_hangup_wakes_reader(loop, pair):
    a, b = pair
    got = []

    def on_read():
        got.append(a.recv(10))
        loop.remove_reader(a)

    loop.add_reader(a, on_read)
    b.close()
    run_briefly(loop)
    assert got == [b""]


def test_many_fds(loop):
    pairs = [socket.socketpair() for _ in range(200)]
    got = set()
    try:
        for i, (a, b) in enumerate(pairs):
            loop.add_reader(a, lambda i=i, a=a: (got.add(i),
                                                 loop.remove_reader(a)))
        for a, b in pairs[::3]:
            b.send(b"x")
        run_briefly(loop, 0.02)
        assert got == set(range(0, 200, 3))
        for a, b in pairs:
            loop.remove_reader(a)
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_reader_in_use_by_transport_raises(loop):
    async def main():
        a, b = socket.socketpair()
        tr, pr = await loop.connect_accepted_socket(asyncio.Protocol, a)
        try:
            with pytest.raises(RuntimeError, match="is used by transport"):
                loop.add_reader(a.fileno(), lambda: None)
        finally:
            tr.close()
            b.close()
            await asyncio.sleep(0)

    loop.run_until_complete(main())


def test_transport_repr_reads_selector(loop):
    """asyncio's transport reprs ask loop._selector about the fd."""
    async def main():
        a, b = socket.socketpair()
        tr, pr = await loop.connect_accepted_socket(asyncio.Protocol, a)
        try:
            r = repr(tr)
            assert "read=polling" in r
            assert "write=<idle" in r
        finally:
            tr.close()
            b.close()
            await asyncio.sleep(0)

    loop.run_until_complete(main())


def test_writer_gets_errors(loop):
    """A writer-only registration is called when the fd errors (here a
    pipe whose read end is closed), as EpollSelector reports it."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    got = []
    try:
        def fill():
            try:
                while True:
                    os.write(w, b"x" * 65536)
            except BlockingIOError:
                pass

        fill()
        loop.add_writer(w, got.append, "w")
        run_briefly(loop)
        assert got == []  # full: not writable
        os.close(r)
        r = None
        run_briefly(loop)
        assert got and set(got) == {"w"}
        assert loop.remove_writer(w) is True
    finally:
        if r is not None:
            os.close(r)
        os.close(w)


def test_reader_removes_writer_of_same_fd_in_same_iteration(loop, pair):
    a, b = pair
    got = []

    def on_read():
        got.append("r")
        a.recv(10)
        loop.remove_writer(a)
        loop.remove_reader(a)

    loop.add_reader(a, on_read)
    loop.add_writer(a, got.append, "w")
    b.send(b"x")
    run_briefly(loop)
    # The reader runs first and removes the writer: the writer may have
    # run in an earlier iteration (writable at once), never after.
    assert "r" in got
    assert got[-1] == "r"


def test_writer_added_by_reader_waits_for_next_poll(loop, pair):
    a, b = pair
    got = []

    def on_read():
        got.append("r")
        a.recv(10)
        loop.remove_reader(a)
        loop.add_writer(a, on_write)

    def on_write():
        got.append("w")
        loop.remove_writer(a)

    loop.add_reader(a, on_read)
    b.send(b"x")
    run_briefly(loop)
    assert got == ["r", "w"]


def test_no_stale_event_for_a_reused_fd(loop):
    """A callback closes a socket that also has an event in this batch and
    opens a new one on the same fd number: the new reader gets nothing."""
    trig_r, trig_w = socket.socketpair()
    victim_r, victim_w = socket.socketpair()
    new = []
    spurious = []
    try:
        victim_fd = victim_r.fileno()

        def on_trigger():
            trig_r.recv(10)
            loop.remove_reader(trig_r)
            loop.remove_reader(victim_fd)
            victim_r.close()
            s1, s2 = socket.socketpair()
            new.extend([s1, s2])
            if s1.fileno() != victim_fd and s2.fileno() != victim_fd:
                return
            reused = s1 if s1.fileno() == victim_fd else s2
            loop.add_reader(reused, spurious.append, "spurious")

        loop.add_reader(trig_r, on_trigger)
        loop.add_reader(victim_fd, lambda: None)
        trig_w.send(b"t")  # first in the batch
        victim_w.send(b"v")
        run_briefly(loop)
        if not new or victim_fd not in (new[0].fileno(), new[1].fileno()):
            pytest.skip("the fd number was not reused")
        assert spurious == []
        for s in new:
            loop.remove_reader(s)
    finally:
        for s in [trig_r, trig_w, victim_r, victim_w] + new:
            s.close()


def test_io_before_timers_before_callbacks_they_queue(loop, pair):
    """One iteration: callbacks queued earlier, then I/O callbacks, then due
    timers (asyncio's _run_once appends them to _ready in that order)."""
    a, b = pair
    out = []

    def on_read():
        out.append("io")
        a.recv(10)
        loop.remove_reader(a)
        loop.call_soon(out.append, "queued-by-io")

    def first():
        out.append("first")
        b.send(b"x")
        loop.add_reader(a, on_read)
        loop.call_at(loop.time() - 1, out.append, "timer")
        loop.call_soon(out.append, "queued-by-first")

    loop.call_soon(first)
    run_briefly(loop)
    assert out == ["first", "queued-by-first", "io", "timer", "queued-by-io"]


def test_reader_replaced_by_earlier_callback_in_the_batch(loop):
    (a1, b1), (a2, b2) = socket.socketpair(), socket.socketpair()
    got = []
    try:
        def replacement():
            got.append("replacement")
            a2.recv(10)
            loop.remove_reader(a2)

        def on_a1():
            got.append("a1")
            a1.recv(10)
            loop.remove_reader(a1)
            loop.add_reader(a2, replacement)

        loop.add_reader(a1, on_a1)
        loop.add_reader(a2, got.append, "original")
        b1.send(b"x")  # first in the batch
        b2.send(b"y")
        run_briefly(loop)
        assert got == ["a1", "replacement"]
    finally:
        for s in (a1, b1, a2, b2):
            s.close()
