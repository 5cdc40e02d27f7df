import asyncio
import traceback
from typing import Any, Callable, Coroutine, Literal, TypedDict, TypeVar

_T = TypeVar("_T")

__version__: str

class LoopLag(TypedDict):
    # Timer lag: how late each timer's callback ran against its deadline.
    # buckets_us[0]: under 1 us; buckets_us[k]: [2**(k-1), 2**k) us; the
    # last bucket also holds everything above.
    buckets_us: list[int]
    count: int
    max_ns: int
    p50_ns: int  # interpolated inside its log2 bucket, at most max_ns
    p99_ns: int

class LoopStats(TypedDict):
    iterations: int
    callbacks_run: int
    io_events: int
    timers_fired: int
    poll_ns: int            # time blocked in polls
    # callback_ns, longest_callback_ns, longest_callback and loop_lag are
    # None in a build without diagnostics (HAS_DIAGNOSTICS False).
    callback_ns: int | None # time from each poll's return to its iteration's end
    longest_callback_ns: int | None
    # repr of the longest callback when per-callback timing is on
    # (qloop.diagnostics); else None, and longest_callback_ns is the
    # longest iteration that ran a single callback.
    longest_callback: str | None
    ready: int
    timers: int
    watchers: int
    loop_lag: LoopLag | None

class Loop(asyncio.AbstractEventLoop):
    slow_callback_duration: float
    def __init__(self) -> None: ...
    def stats(self) -> LoopStats: ...
    def _stats(self) -> dict[str, int]: ...
    def set_write_batching(self, enabled: bool) -> None: ...
    def get_write_batching(self) -> bool: ...

class SlowCallbackReport:
    callback: str              # repr of the handle
    duration: float            # seconds
    task_name: str | None      # for a Task step
    await_stack: list[tuple[str, int, str]] | None  # outermost first

class StallReport:
    start: float               # loop.time() when the stall began
    duration: float | None     # seconds; None while it lasts
    stack: traceback.StackSummary | None  # loop thread, captured while blocked
    site: traceback.FrameSummary | None   # innermost frame of the user's code
    thread_id: int
    gil_wait: float            # seconds the watchdog waited for the GIL
    @property
    def gil_held(self) -> bool: ...
    def where(self) -> str: ...

class _Diagnostics(TypedDict):
    slow_callback: float | Literal[True] | None
    watchdog: float | None
    on_stall: Callable[[StallReport], object] | None
    on_slow: Callable[[SlowCallbackReport], object] | None

def diagnostics(
    *,
    slow_callback: bool | float | None = ...,
    watchdog: float | None = ...,
    on_stall: Callable[[StallReport], object] | None = ...,
    on_slow: Callable[[SlowCallbackReport], object] | None = ...,
) -> _Diagnostics: ...

# False in a build with the diagnostics compiled out (-Ddiagnostics=false).
HAS_DIAGNOSTICS: bool

def new_event_loop() -> Loop: ...
def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = ...) -> _T: ...
def backend_name() -> str: ...
def install() -> None: ...

class EventLoopPolicy(asyncio.AbstractEventLoopPolicy):
    def __init__(self) -> None: ...
    def get_event_loop(self) -> asyncio.AbstractEventLoop: ...
    def set_event_loop(self, loop: asyncio.AbstractEventLoop | None) -> None: ...
    def new_event_loop(self) -> Loop: ...
