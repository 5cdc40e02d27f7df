"""qloop: a drop-in asyncio event loop on a small C reactor (epoll/kqueue).

    import qloop
    qloop.run(main())                      # like asyncio.run
    asyncio.run(main(), loop_factory=qloop.new_event_loop)   # 3.12+
    loop = qloop.new_event_loop()
"""

import asyncio as _asyncio
import sys as _sys
import warnings as _warnings
from asyncio import coroutines as _coroutines
from asyncio import events as _events
from asyncio import unix_events as _unix_events

from ._diagnostics import (HAS_DIAGNOSTICS, SlowCallbackReport, StallReport,
                           diagnostics)
from ._loop import Loop, new_event_loop
from ._qloop import backend_name

__version__ = "0.1.0"
__all__ = ("Loop", "new_event_loop", "run", "EventLoopPolicy", "install",
           "backend_name", "__version__", "diagnostics", "StallReport",
           "SlowCallbackReport", "HAS_DIAGNOSTICS")

_POLICIES_DEPRECATED = _sys.version_info >= (3, 14)


def run(main, *, debug=None):
    """Run coroutine `main` on a new qloop loop and close it, as asyncio.run."""
    if _events._get_running_loop() is not None:
        # asyncio.run checks before it makes a loop; so do we.
        raise RuntimeError(
            "asyncio.run() cannot be called from a running event loop")
    if _sys.version_info >= (3, 11):
        with _asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
            return runner.run(main)
    # 3.10: asyncio.run's body, with a qloop loop.
    from asyncio import runners
    if not _coroutines.iscoroutine(main):
        raise ValueError("a coroutine was expected, got {!r}".format(main))
    loop = new_event_loop()
    try:
        _events.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        return loop.run_until_complete(main)
    finally:
        try:
            runners._cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            _events.set_event_loop(None)
            loop.close()


# asyncio's Unix policy (it carries the child watchers 3.10/3.11 need).
_UnixPolicy = getattr(_unix_events, "_UnixDefaultEventLoopPolicy", None) or \
    _unix_events.DefaultEventLoopPolicy


class EventLoopPolicy(_UnixPolicy):
    """An asyncio event loop policy whose loops are qloop loops.

    Deprecated on Python 3.14+, as asyncio's policies are: use qloop.run()
    or asyncio.run(main(), loop_factory=qloop.new_event_loop).
    """

    _loop_factory = Loop

    def __init__(self):
        if _POLICIES_DEPRECATED:
            _warnings.warn(
                "qloop.EventLoopPolicy is deprecated on Python 3.14+, as "
                "asyncio's policies are; use qloop.run() or asyncio.run(..., "
                "loop_factory=qloop.new_event_loop)",
                DeprecationWarning, stacklevel=2)
        super().__init__()


def install():
    """Make qloop the default: set qloop.EventLoopPolicy as asyncio's policy."""
    if _POLICIES_DEPRECATED:
        _warnings.warn(
            "qloop.install() is deprecated on Python 3.14+, as asyncio's "
            "policies are; use qloop.run() or asyncio.run(..., "
            "loop_factory=qloop.new_event_loop)",
            DeprecationWarning, stacklevel=2)
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore", DeprecationWarning)
            _asyncio.set_event_loop_policy(EventLoopPolicy())
        return
    _asyncio.set_event_loop_policy(EventLoopPolicy())
