"""Subprocesses on qloop: asyncio's transport, reaped by the loop itself.

asyncio's unix loop hands every child to a process-wide child watcher
(policy-attached on 3.10/3.11, `_PidfdChildWatcher` or a thread per child
on 3.12+).  qloop needs none: each loop watches its own children.

- pidfd (Linux 5.3+): `os.pidfd_open(pid)` becomes readable when the child
  exits; the loop watches it like any fd, so it works in any thread and with
  any number of loops, and touches no signal disposition.
- Fallback where pidfd is missing: in the main thread, a SIGCHLD handler on
  the loop that polls `waitpid(pid, WNOHANG)` for this loop's own children
  only; in another thread (signals are the main thread's), a thread per
  child blocked in `waitpid(pid, 0)`, as asyncio's ThreadedChildWatcher.

Only our own pids are waited for (never `waitpid(-1)`), so a child watcher
that a 3.10/3.11 policy attaches, or other code's children, are unaffected.

Spawning: `subprocess.Popen` (which uses vfork where it can) runs in the
loop thread, as asyncio's does.  The transport is asyncio's own
`_UnixSubprocessTransport`, so pipes, `process_exited` and
`connection_lost` follow the running Python's `base_subprocess.py`.
"""

import os
import signal
import sys
import threading
import warnings
from asyncio import unix_events
from asyncio.log import logger

# 3.10/3.11 let one more iteration pass before _process_exited (pipe data
# read first); 3.12+ schedule it directly.  We do what the running Python's
# own watcher callback does.
_SKIP_ITERATION = sys.version_info < (3, 12)

# Tests turn this off to exercise the fallback.
use_pidfd = hasattr(os, "pidfd_open")


def _exit_code(status):
    return os.waitstatus_to_exitcode(status)


class ChildReaper:
    """The children of one loop, and how each is waited for."""

    def __init__(self, loop):
        self._loop = loop
        self._pidfds = {}      # pid -> (pidfd, transport)
        self._polled = {}      # pid -> transport (SIGCHLD fallback)
        self._sigchld = False  # our SIGCHLD handler is installed

    # -- registering ------------------------------------------------------

    def watch(self, transp):
        pid = transp.get_pid()
        if use_pidfd:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                pass  # ENOSYS (old kernel), EMFILE: fall back
            else:
                self._pidfds[pid] = (pidfd, transp)
                try:
                    self._loop._add_reader(pidfd, self._pidfd_ready, pid)
                except BaseException:
                    del self._pidfds[pid]
                    os.close(pidfd)
                    raise
                return
        if threading.current_thread() is threading.main_thread():
            self._polled[pid] = transp
            if not self._sigchld:
                self._loop.add_signal_handler(signal.SIGCHLD, self._poll)
                self._sigchld = True
            self._poll()  # it may have exited already
        else:
            t = threading.Thread(target=self._wait_thread, args=(pid, transp),
                                 name=f"qloop-waitpid-{pid}", daemon=True)
            t.start()

    # -- reaping ----------------------------------------------------------

    def _pidfd_ready(self, pid):
        pidfd, transp = self._pidfds.pop(pid)
        self._loop._remove_reader(pidfd)
        os.close(pidfd)
        # The pidfd is readable: the child is a zombie, this cannot block.
        self._exited(transp, self._waitpid(pid, transp, 0))

    def _poll(self):
        for pid, transp in list(self._polled.items()):
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                rc = self._reaped_elsewhere(pid, transp)
            else:
                if got == 0:
                    continue
                rc = _exit_code(status)
            del self._polled[pid]
            self._exited(transp, rc)
        if not self._polled and self._sigchld:
            self._sigchld = False
            if not self._loop.is_closed():
                self._loop.remove_signal_handler(signal.SIGCHLD)

    def _wait_thread(self, pid, transp):
        rc = self._waitpid(pid, transp, 0)
        loop = self._loop
        try:
            if _SKIP_ITERATION:
                loop.call_soon_threadsafe(loop.call_soon,
                                          transp._process_exited, rc)
            else:
                loop.call_soon_threadsafe(transp._process_exited, rc)
        except RuntimeError:
            # The loop is closed: asyncio's watchers warn the same way.
            logger.warning("Loop %r that handles pid %r is closed", loop, pid)

    def _waitpid(self, pid, transp, flags):
        try:
            _, status = os.waitpid(pid, flags)
        except ChildProcessError:
            return self._reaped_elsewhere(pid, transp)
        return _exit_code(status)

    @staticmethod
    def _reaped_elsewhere(pid, transp):
        # Popen.poll() (transport.close() calls it) or other code reaped it.
        proc = getattr(transp, "_proc", None)
        if proc is not None and proc.returncode is not None:
            return proc.returncode
        logger.warning("child process pid %d exit status already read: "
                       " will report returncode 255", pid)
        return 255

    def _exited(self, transp, rc):
        loop = self._loop
        if _SKIP_ITERATION:
            loop.call_soon(loop.call_soon, transp._process_exited, rc)
        else:
            loop.call_soon(transp._process_exited, rc)

    # -- loop close ---------------------------------------------------------

    def close(self):
        """The loop closes: stop watching.  Children still running are
        left to their Popen objects (subprocess reaps them later), as they
        are when asyncio's loop closes under them."""
        for pid, (pidfd, transp) in list(self._pidfds.items()):
            try:
                self._loop._remove_reader(pidfd)
            except Exception:
                pass
            os.close(pidfd)
        self._pidfds.clear()
        self._polled.clear()
        self._sigchld = False


async def make_subprocess_transport(loop, protocol, args, shell, stdin,
                                    stdout, stderr, bufsize, extra=None,
                                    **kwargs):
    """unix_events' _make_subprocess_transport without the child watcher."""
    waiter = loop.create_future()
    transp = unix_events._UnixSubprocessTransport(
        loop, protocol, args, shell, stdin, stdout, stderr, bufsize,
        waiter=waiter, extra=extra, **kwargs)
    try:
        loop._child_reaper().watch(transp)
    except BaseException:
        # Not watched: nothing would ever report its exit.
        transp.close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            transp._proc.wait()
        raise
    try:
        await waiter
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:
        transp.close()
        await transp._wait()
        raise
    return transp
