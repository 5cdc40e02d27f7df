"""Diagnostics: slow-callback reports outside debug mode and the stall
watchdog (the C side is python/src/diag.c).

Off by default, and then free: nothing is timed per callback and no thread
runs.  qloop.diagnostics(...) or the environment (QLOOP_SLOW_CALLBACK_MS,
QLOOP_WATCHDOG_MS) turns them on for every qloop loop, from its next
run_forever() (run_until_complete and asyncio.run go through it).

A build without diagnostics (meson -Ddiagnostics=false; HAS_DIAGNOSTICS
False) refuses to turn them on: diagnostics() raises RuntimeError, the
environment variables are ignored with a warning, and loop.stats() gives
None for what it does not measure (callback time, longest callback, lag).
"""

import logging
import os
import sys
import traceback

from . import _qloop

logger = logging.getLogger("qloop")

__all__ = ("diagnostics", "SlowCallbackReport", "StallReport",
           "HAS_DIAGNOSTICS")

# False in a build with the diagnostics compiled out (to measure their cost).
HAS_DIAGNOSTICS = bool(_qloop.HAS_DIAGNOSTICS)
_NO_DIAGNOSTICS = ("qloop was built without diagnostics (meson "
                   "-Ddiagnostics=false): no slow-callback reports outside "
                   "debug mode, no stall watchdog")


class SlowCallbackReport:
    """One callback that ran for `duration` seconds or more."""

    __slots__ = ("callback", "duration", "task_name", "await_stack")

    def __init__(self, callback, duration, task_name, await_stack):
        self.callback = callback        # repr of the handle
        self.duration = duration        # seconds
        self.task_name = task_name      # for a Task step, else None
        self.await_stack = await_stack  # [(filename, lineno, name)], outermost first

    def __repr__(self):
        return (f"<SlowCallbackReport {self.callback} "
                f"{self.duration * 1e3:.1f} ms>")


class StallReport:
    """The loop did not come back to poll for `duration` seconds.

    `stack` is the loop thread's Python stack (a traceback.StackSummary,
    outermost first) captured while it was still blocked, or None when it
    could not be (the loop thread held the GIL until the stall was over:
    C code that does not release it).  `site` is the innermost frame of the
    user's code in it (not asyncio's, qloop's, the standard library's or an
    installed package's), or the innermost frame when there is none.
    """

    __slots__ = ("start", "duration", "stack", "site", "thread_id",
                 "gil_wait", "gil_wait_cpu")

    def __init__(self, start, stack, thread_id, gil_wait=0.0,
                 gil_wait_cpu=None):
        self.start = start        # loop.time() when the stall began
        self.duration = None      # seconds, set when it ends
        self.stack = stack
        self.site = _user_site(stack) if stack else None
        self.thread_id = thread_id
        # Seconds the watchdog waited for the GIL before it could look, and
        # the loop thread's CPU seconds meanwhile (None where there is no
        # per-thread CPU clock): a blocked system call uses none, a Python
        # loop a switch interval at most, C code holding the GIL the rest
        # of its call (then the stack shows where that call returned).
        self.gil_wait = gil_wait
        self.gil_wait_cpu = gil_wait_cpu

    @property
    def gil_held(self):
        """True when the loop thread held the GIL through the stall, so
        the stack is late (where a C call returned) or missing."""
        if self.stack is None:
            return True
        held = self.gil_wait if self.gil_wait_cpu is None \
            else self.gil_wait_cpu
        return held > max(0.05, 10 * sys.getswitchinterval())

    def where(self):
        if self.site is None:
            return "an unknown place (the stack could not be captured " \
                   "while blocked: C code holding the GIL)"
        where = f"{self.site.filename}:{self.site.lineno} in {self.site.name}"
        if self.gil_held:
            held = self.gil_wait if self.gil_wait_cpu is None \
                else self.gil_wait_cpu
            where += (f" (after a call that held the GIL for "
                      f"{held:.3f} s more: C code?)")
        return where

    def __repr__(self):
        d = "ongoing" if self.duration is None else \
            f"{self.duration * 1e3:.1f} ms"
        return f"<StallReport {d} at {self.where()}>"


# -- configuration --------------------------------------------------------

_KEEP = object()


class _Config:
    slow_callback = None  # None/False: off; True: the loop's own threshold; seconds
    watchdog = None       # seconds, or None: off
    on_stall = None       # callable(StallReport), called when a stall ends
    on_slow = None        # callable(SlowCallbackReport)
    collector = None      # python -m qloop run's report


_config = _Config()


def _env_ms(name):
    value = os.environ.get(name)
    if not value:
        return None
    try:
        ms = float(value)
    except ValueError:
        logger.warning("ignoring %s=%r: not a number of milliseconds",
                       name, value)
        return None
    return ms / 1000.0 if ms > 0 else None


def diagnostics(*, slow_callback=_KEEP, watchdog=_KEEP, on_stall=_KEEP,
                on_slow=_KEEP):
    """Turn qloop's diagnostics on or off; returns the settings in force.

    slow_callback: True reports each callback that runs for at least the
        loop's slow_callback_duration, outside debug mode too; a number
        of seconds also sets that duration on each loop as it starts
        running; None or False turns the reports off.
    watchdog: seconds; a thread reports every stall (the loop not back to
        poll within that time) with the loop thread's stack captured while
        it is blocked; None or 0 turns it off.
    on_stall, on_slow: callables given each StallReport (when the stall
        ends) or SlowCallbackReport, besides the `qloop` logger.

    Settings apply to each loop from its next run_forever().  A build
    without diagnostics (HAS_DIAGNOSTICS False) raises RuntimeError for
    anything that would turn them on.
    """
    if not HAS_DIAGNOSTICS and (
            slow_callback not in (_KEEP, None) and slow_callback is not False
            or watchdog is not _KEEP and watchdog):
        raise RuntimeError(_NO_DIAGNOSTICS)
    if slow_callback is not _KEEP:
        if slow_callback is None or slow_callback is False:
            _config.slow_callback = None
        elif slow_callback is True:
            _config.slow_callback = True
        else:
            seconds = float(slow_callback)
            if not seconds >= 0:
                raise ValueError("slow_callback must be True, False, None "
                                 "or a number of seconds >= 0")
            _config.slow_callback = seconds
    if watchdog is not _KEEP:
        if watchdog:
            watchdog = float(watchdog)
            if watchdog <= 0:
                raise ValueError("watchdog must be > 0 seconds")
        _config.watchdog = watchdog or None
    for name, value in (("on_stall", on_stall), ("on_slow", on_slow)):
        if value is not _KEEP:
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable or None")
            setattr(_config, name, value)
    return {"slow_callback": _config.slow_callback,
            "watchdog": _config.watchdog,
            "on_stall": _config.on_stall, "on_slow": _config.on_slow}


def _from_environment():
    if not HAS_DIAGNOSTICS:
        for name in ("QLOOP_SLOW_CALLBACK_MS", "QLOOP_WATCHDOG_MS"):
            if os.environ.get(name):
                logger.warning("ignoring %s: %s", name, _NO_DIAGNOSTICS)
        return
    slow = _env_ms("QLOOP_SLOW_CALLBACK_MS")
    if slow is not None:
        _config.slow_callback = slow
    wd = _env_ms("QLOOP_WATCHDOG_MS")
    if wd is not None:
        _config.watchdog = wd


_from_environment()


# -- the loop side -----------------------------------------------------------

class DiagnosticsMixin:
    """What qloop.Loop adds for diagnostics (a base of Loop)."""

    _qloop_slow_cb = 0.1
    _qloop_diag = None

    @property
    def slow_callback_duration(self):
        return self._qloop_slow_cb

    @slow_callback_duration.setter
    def slow_callback_duration(self, value):
        self._qloop_slow_cb = value
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = -1.0  # asyncio compares and fails at report time
        self._diag_slow_threshold(seconds)


def before_run(loop):
    """Called by Loop.run_forever before the C run loop starts."""
    cfg = _config
    slow = cfg.slow_callback
    slow_on = slow is not None and slow is not False
    if not slow_on and not cfg.watchdog:
        if loop._qloop_diag is not None:
            loop._diag_configure(False, None, 0.0, None)
            loop._qloop_diag = None
        return
    diag = loop._qloop_diag
    if diag is None:
        diag = loop._qloop_diag = _LoopDiagnostics()
    if slow_on and slow is not True:
        loop.slow_callback_duration = slow
    if cfg.collector is not None:
        cfg.collector.track(loop)
    # Per-callback timing only for slow-callback reports: the watchdog
    # needs none (it reads the reactor's heartbeat).
    loop._diag_configure(slow_on, diag.on_slow if slow_on else None,
                         cfg.watchdog or 0.0,
                         diag.on_stall if cfg.watchdog else None)


def _await_stack(coro):
    out = []
    seen = 0
    while coro is not None and seen < 100:
        seen += 1
        frame = (getattr(coro, "cr_frame", None) or
                 getattr(coro, "gi_frame", None) or
                 getattr(coro, "ag_frame", None))
        if frame is None:
            break
        out.append((frame.f_code.co_filename, frame.f_lineno,
                    frame.f_code.co_name))
        coro = (getattr(coro, "cr_await", None) or
                getattr(coro, "gi_yieldfrom", None) or
                getattr(coro, "ag_await", None))
    return out


def _task_of(handle):
    cb = handle._callback
    task = getattr(cb, "__self__", None)
    if task is not None and hasattr(task, "get_coro") and \
            hasattr(task, "get_name"):
        return task
    return None


# Frames that are not the user's: asyncio, qloop, the standard library
# and installed packages (site-packages lives under the stdlib prefix on
# most installs, not on all: both are listed).
# Computed on first use: sysconfig is not otherwise imported by asyncio,
# and `import qloop` should not pay for it.
def _library_prefixes():
    import sysconfig
    paths = sysconfig.get_paths()
    out = {os.path.dirname(os.path.abspath(__file__)) + os.sep}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = paths.get(key)
        if p:
            out.add(os.path.abspath(p) + os.sep)
    return tuple(out)


_LIBRARY = None


def _is_library(filename):
    global _LIBRARY
    if filename.startswith("<frozen "):
        return True  # <frozen runpy> and the like
    if _LIBRARY is None:
        _LIBRARY = _library_prefixes()
    return os.path.abspath(filename).startswith(_LIBRARY)


def _user_site(stack):
    for fs in reversed(stack):
        if not _is_library(fs.filename):
            return fs
    return stack[-1] if stack else None


class _LoopDiagnostics:
    """Per loop: the callables the C side calls."""

    def __init__(self):
        self._stall = None

    def on_slow(self, handle, seconds):
        task = _task_of(handle)
        name = stack = None
        if task is not None:
            name = task.get_name()
            stack = _await_stack(task.get_coro())
        report = SlowCallbackReport(repr(handle), seconds, name, stack)
        if task is not None:
            where = "".join(f"\n  {f}:{n} in {fn}" for f, n, fn in stack)
            logger.warning("Executing %s took %.3f seconds (task %r, now "
                           "awaiting at:%s)", report.callback, seconds, name,
                           where or " nothing: it finished")
        else:
            logger.warning("Executing %s took %.3f seconds", report.callback,
                           seconds)
        if _config.collector is not None:
            _config.collector.add_slow(report)
        if _config.on_slow is not None:
            _config.on_slow(report)

    # Called from the watchdog thread, with the GIL.
    def on_stall(self, event, tid, start_ns, t_ns, still, gil_wait_ns,
                 gil_cpu_ns):
        if event == "stall":
            stack = None
            if still:
                frame = sys._current_frames().get(tid)
                if frame is not None:
                    stack = traceback.extract_stack(frame)
                del frame
            report = self._stall = StallReport(
                start_ns / 1e9, stack, tid, gil_wait_ns / 1e9,
                None if gil_cpu_ns < 0 else gil_cpu_ns / 1e9)
            if stack is not None:
                logger.warning(
                    "The event loop has been blocked for %.3f seconds, at "
                    "%s; stack of the loop thread:\n%s",
                    (t_ns - start_ns) / 1e9, report.where(),
                    "".join(stack.format()).rstrip())
            return
        report = self._stall
        self._stall = None
        if report is None or report.start != start_ns / 1e9:
            report = StallReport(start_ns / 1e9, None, tid, gil_wait_ns / 1e9,
                                 None if gil_cpu_ns < 0 else gil_cpu_ns / 1e9)
        report.duration = (t_ns - start_ns) / 1e9
        logger.warning("The event loop was blocked for %.3f seconds at %s",
                       report.duration, report.where())
        if _config.collector is not None:
            _config.collector.add_stall(report)
        if _config.on_stall is not None:
            try:
                _config.on_stall(report)
            except Exception:
                logger.exception("qloop: on_stall callback failed")

