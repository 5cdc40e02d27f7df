"""Subprocesses: spawning, pipes, exit order, reaping without a child
watcher, threads, and no zombie/fd growth."""

import asyncio
import gc
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest

from conftest import memory_probe

import qloop
from qloop import _subprocess

PY = sys.executable

# The heavy tests' children without LD_PRELOAD: under tools/test's ASan
# stage every child would start the sanitizer runtime (tens of ms each);
# what is checked is the parent.
LIGHT_ENV = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


@pytest.fixture
def many_fds():
    """Raise RLIMIT_NOFILE for many concurrent children (pidfds, pipes)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192) if hard != resource.RLIM_INFINITY else 8192
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield want
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(params=["pidfd", "fallback"])
def reaping(request, monkeypatch):
    """qloop reaps through a pidfd, or through its fallback (SIGCHLD in the
    main thread, a waitpid thread elsewhere)."""
    if request.param == "pidfd" and not _subprocess.use_pidfd:
        pytest.skip("no os.pidfd_open")
    monkeypatch.setattr(_subprocess, "use_pidfd", request.param == "pidfd")
    return request.param


def no_zombies():
    """True when this process has no unreaped child."""
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return pid == 0 and not _zombie_children()


def _zombie_children():
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] == "Z" and int(fields[1]) == me:
            found.append(int(entry))
    return found


def test_exec_returncode_and_output(loop):
    async def main():
        p = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; print('out'); print('err', file=sys.stderr);"
            " sys.exit(7)",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await p.communicate()
        return p.returncode, out, err

    assert loop.run_until_complete(main()) == (7, b"out\n", b"err\n")


def test_shell_stdin_roundtrip(loop):
    async def main():
        p = await asyncio.create_subprocess_shell(
            "cat; exit 2", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        out, _ = await p.communicate(b"x" * 300000)
        return p.returncode, len(out)

    assert loop.run_until_complete(main()) == (2, 300000)


def test_stdio_variants(loop, tmp_path):
    path = tmp_path / "out.txt"

    async def main():
        with open(path, "wb") as f:
            p = await asyncio.create_subprocess_exec(
                PY, "-c", "import sys; print('a'); print('b', file=sys.stderr)",
                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
            await p.wait()
        r, w = os.pipe()
        p = await asyncio.create_subprocess_exec(
            PY, "-c", f"import os; os.write({w}, b'fd')", pass_fds=(w,))
        os.close(w)
        await p.wait()
        assert os.read(r, 10) == b"fd"
        os.close(r)
        p = await asyncio.create_subprocess_exec(
            PY, "-c", "import os; print(os.getcwd(), os.environ['QX'])",
            cwd=str(tmp_path), env={"QX": "yes"}, stdout=subprocess.PIPE)
        out, _ = await p.communicate()
        return out.decode().split()

    assert loop.run_until_complete(main()) == [str(tmp_path), "yes"]
    assert sorted(path.read_bytes().split()) == [b"a", b"b"]


def test_transport_api(loop):
    events = []

    class Proto(asyncio.SubprocessProtocol):
        def __init__(self):
            self.done = loop.create_future()

        def pipe_data_received(self, fd, data):
            events.append(("data", fd))

        def pipe_connection_lost(self, fd, exc):
            events.append(("pipe_lost", fd))

        def process_exited(self):
            events.append("exited")

        def connection_lost(self, exc):
            events.append("lost")
            self.done.set_result(None)

    async def main():
        tr, proto = await loop.subprocess_exec(
            Proto, PY, "-c", "import sys; sys.stdin.read()",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        assert tr.get_pid() > 0
        assert tr.get_returncode() is None
        assert tr.get_pipe_transport(0) is not None
        assert tr.get_pipe_transport(1) is not None
        assert tr.get_pipe_transport(2) is not None
        tr.send_signal(signal.SIGTERM)
        await proto.done
        rc = tr.get_returncode()
        tr.close()
        return rc

    assert loop.run_until_complete(main()) == -signal.SIGTERM
    # process_exited only after every pipe is gone, connection_lost last.
    assert events[-1] == "lost"
    assert events.index("exited") < events.index("lost")
    assert events.count("exited") == 1 and events.count("lost") == 1
    assert sorted(e for e in events if isinstance(e, tuple)) == [
        ("pipe_lost", 0), ("pipe_lost", 1), ("pipe_lost", 2)]


def test_terminate_and_kill(loop):
    async def main():
        codes = []
        for how in ("terminate", "kill"):
            p = await asyncio.create_subprocess_exec(
                PY, "-c", "import time; time.sleep(30)")
            getattr(p, how)()
            codes.append(await p.wait())
        return codes

    assert loop.run_until_complete(main()) == [-signal.SIGTERM,
                                               -signal.SIGKILL]


def _exit_order(loop, code):
    order = []

    class Proto(asyncio.SubprocessProtocol):
        def __init__(self):
            self.done = loop.create_future()

        def pipe_connection_lost(self, fd, exc):
            order.append(f"pipe{fd}")

        def process_exited(self):
            order.append("exited")

        def connection_lost(self, exc):
            order.append("lost")
            self.done.set_result(None)

    async def main():
        tr, proto = await loop.subprocess_exec(
            Proto, PY, "-c", code, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        await proto.done
        tr.close()
        return tr.get_returncode()

    return loop.run_until_complete(main()), order


def test_child_exits_before_pipes_close(loop):
    # The grandchild keeps stdout open for a while after the child exits.
    code = ("import subprocess, sys; subprocess.Popen([sys.executable, '-c',"
            " 'import time; time.sleep(0.3)'])")
    rc, order = _exit_order(loop, code)
    assert rc == 0
    assert order == ["exited", "pipe1", "lost"]


def test_pipes_close_before_child_exits(loop):
    code = "import os, time; os.close(1); time.sleep(0.3)"
    rc, order = _exit_order(loop, code)
    assert rc == 0
    assert order == ["pipe1", "exited", "lost"]


def test_killpg_new_session(loop):
    async def main():
        p = await asyncio.create_subprocess_exec(
            PY, "-c", "import subprocess, sys, time;"
            "c = subprocess.Popen([sys.executable, '-c', 'import time;"
            " time.sleep(30)']); print(c.pid, flush=True); time.sleep(30)",
            stdout=subprocess.PIPE, start_new_session=True)
        grandchild = int(await p.stdout.readline())
        assert os.getpgid(p.pid) == p.pid
        assert os.getpgid(grandchild) == p.pid
        os.killpg(p.pid, signal.SIGKILL)
        rc = await p.wait()
        await p.stdout.read()
        return rc, grandchild

    rc, grandchild = loop.run_until_complete(main())
    assert rc == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # dead: gone, or a zombie of init's
        try:
            with open(f"/proc/{grandchild}/stat") as f:
                stat = f.read()
        except FileNotFoundError:
            break
        if stat[stat.rindex(")") + 2] == "Z":
            break
        time.sleep(0.01)
    else:
        pytest.fail("grandchild survived killpg")


def test_preexec_fn(loop):
    async def main():
        p = await asyncio.create_subprocess_exec(
            PY, "-c", "import os; print(os.environ.get('PRE'))",
            stdout=subprocess.PIPE, preexec_fn=lambda: os.setpgid(0, 0))
        out, _ = await p.communicate()
        return p.returncode

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # threads + fork
        assert loop.run_until_complete(main()) == 0


def test_spawn_failure(loop):
    async def main():
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec("/nonexistent/qloop-x")

    loop.run_until_complete(main())
    assert no_zombies()


def test_concurrent_1000(loop, many_fds, impl):
    n = 1000

    async def main():
        async def one(i):
            p = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", f"exit {i % 7}", env=LIGHT_ENV)
            return await p.wait()

        return await asyncio.gather(*(one(i) for i in range(n)))

    rcs = loop.run_until_complete(main())
    assert rcs == [i % 7 for i in range(n)]
    assert no_zombies()


def test_reaping_modes(qloop_loop, reaping):
    async def main():
        p = await asyncio.create_subprocess_exec(
            PY, "-c", "print(1)", stdout=subprocess.PIPE)
        out, _ = await p.communicate()
        q = await asyncio.create_subprocess_exec("/bin/sh", "-c", "exit 4")
        return out, p.returncode, await q.wait()

    assert qloop_loop.run_until_complete(main()) == (b"1\n", 0, 4)
    assert no_zombies()


def _spawn_in_thread(factory, results, key, barrier=None):
    def run():
        loop = factory()
        try:
            if barrier is not None:
                barrier.wait()

            async def main():
                ps = [await asyncio.create_subprocess_exec(
                    "/bin/sh", "-c", f"echo {i}; exit {i}",
                    stdout=subprocess.PIPE, env=LIGHT_ENV)
                      for i in range(20)]
                return [(await p.communicate())[0] + bytes([p.returncode])
                        for p in ps]

            results[key] = loop.run_until_complete(main())
        except BaseException as exc:  # reported by the main thread
            results[key] = exc
        finally:
            loop.close()

    t = threading.Thread(target=run)
    t.start()
    return t


def _expected():
    return [f"{i}\n".encode() + bytes([i]) for i in range(20)]


def test_spawn_from_non_main_thread(loop_factory):
    results = {}
    _spawn_in_thread(loop_factory, results, "t").join(60)
    assert results["t"] == _expected()


def test_two_loops_two_threads(loop_factory, reaping):
    results = {}
    barrier = threading.Barrier(2)
    ts = [_spawn_in_thread(loop_factory, results, k, barrier)
          for k in ("a", "b")]
    for t in ts:
        t.join(60)
    assert results == {"a": _expected(), "b": _expected()}


@pytest.mark.skipif(sys.version_info >= (3, 12),
                    reason="3.12+ deprecates child watchers")
def test_policy_child_watcher_is_not_needed(qloop_loop):
    # A 3.10/3.11 policy attaches a watcher to the main thread's loop;
    # qloop neither needs one nor is disturbed by one.
    watcher = asyncio.SafeChildWatcher()
    watcher.attach_loop(qloop_loop)
    asyncio.get_event_loop_policy().set_child_watcher(watcher)
    try:
        async def main():
            p = await asyncio.create_subprocess_exec("/bin/sh", "-c",
                                                     "exit 5")
            return await p.wait()

        assert qloop_loop.run_until_complete(main()) == 5
    finally:
        asyncio.get_event_loop_policy().set_child_watcher(None)
        watcher.close()


def test_no_child_watcher_warnings(qloop_loop):
    async def main():
        p = await asyncio.create_subprocess_exec("/bin/true")
        return await p.wait()

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert qloop_loop.run_until_complete(main()) == 0


def test_no_growth_over_2000_cycles(qloop_loop):
    async def cycles(n):
        for _ in range(n):
            p = await asyncio.create_subprocess_exec("/bin/true",
                                                     env=LIGHT_ENV)
            await p.wait()

    qloop_loop.run_until_complete(cycles(200))  # warm up
    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    memory, _ = memory_probe()
    held = memory()
    qloop_loop.run_until_complete(cycles(2000))
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= fds
    assert no_zombies()
    # 2,000 leaked transports would be several MiB; allow allocator noise.
    assert memory() - held < 2 * 1024 * 1024


def _spawn_while_spinning(loop, n):
    """n spawn+wait of /bin/true while a call_soon callback re-queues
    itself, so the loop never blocks in poll: children's exits must be seen
    by the zero-timeout polls."""
    state = {"on": True, "spins": 0}

    def spin():
        state["spins"] += 1
        if state["on"]:
            loop.call_soon(spin)

    async def main():
        loop.call_soon(spin)
        try:
            rcs = []
            for _ in range(n):
                p = await asyncio.create_subprocess_exec("/bin/true",
                                                         env=LIGHT_ENV)
                rcs.append(await p.wait())
            return rcs
        finally:
            state["on"] = False

    rcs = loop.run_until_complete(asyncio.wait_for(main(), 60))
    return rcs, state["spins"]


def test_spawn_in_busy_loop(loop):
    rcs, spins = _spawn_while_spinning(loop, 20)
    assert rcs == [0] * 20
    assert spins > 20  # the spinner ran between the spawns: never blocked
    assert no_zombies()


def test_spawn_in_busy_loop_reaping_modes(qloop_loop, reaping):
    rcs, spins = _spawn_while_spinning(qloop_loop, 20)
    assert rcs == [0] * 20
    assert spins > 20
    assert no_zombies()
