"""Errors in callbacks: exception handlers, logging, KeyboardInterrupt and
SystemExit."""

import asyncio
import inspect
import logging
import socket
from asyncio import format_helpers

import pytest


def failing(x):
    raise ZeroDivisionError(f"failing {x}")


_SOURCE_HAS_DEBUG = "debug" in inspect.signature(
    format_helpers._format_callback_source).parameters


def callback_source(callback, args, loop):
    """How asyncio formats a handle's callback (arguments are hidden
    outside debug mode from 3.12.x/3.13)."""
    if _SOURCE_HAS_DEBUG:
        return format_helpers._format_callback_source(
            callback, args, debug=loop.get_debug())
    return format_helpers._format_callback_source(callback, args)


def expected_message(callback, args, loop):
    return f"Exception in callback {callback_source(callback, args, loop)}"


def collect_contexts(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append((lp, ctx)))
    return contexts


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("how", ["call_soon", "call_later", "call_at",
                                 "call_soon_threadsafe"])
def test_callback_error_context(loop, how, debug):
    loop.set_debug(debug)
    contexts = collect_contexts(loop)
    if how == "call_soon":
        h = loop.call_soon(failing, 1)
    elif how == "call_soon_threadsafe":
        h = loop.call_soon_threadsafe(failing, 1)
    elif how == "call_later":
        h = loop.call_later(0, failing, 1)
    else:
        h = loop.call_at(loop.time(), failing, 1)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert len(contexts) == 1
    lp, ctx = contexts[0]
    assert lp is loop
    expected_keys = {"message", "exception", "handle"}
    if debug:
        expected_keys.add("source_traceback")
    assert set(ctx) == expected_keys
    assert ctx["handle"] is h
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert str(ctx["exception"]) == "failing 1"
    assert ctx["exception"].__traceback__ is not None
    assert ctx["message"] == expected_message(failing, (1,), loop)


def test_reader_callback_error_context(loop):
    contexts = collect_contexts(loop)
    a, b = socket.socketpair()
    try:
        # _add_reader returns the handle (add_reader does not, before 3.13)
        h = loop._add_reader(a.fileno(), failing, "reader")
        b.send(b"x")
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.remove_reader(a)
    finally:
        a.close()
        b.close()
    assert contexts
    ctx = contexts[0][1]
    assert set(ctx) == {"message", "exception", "handle"}
    assert ctx["message"] == expected_message(failing, ("reader",), loop)
    assert str(ctx["exception"]) == "failing reader"
    assert ctx["handle"] is h


def test_loop_continues_after_callback_error(loop):
    collect_contexts(loop)
    out = []
    loop.call_soon(failing, 1)
    loop.call_soon(out.append, "next")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ["next"]


def test_exception_handler_api(loop):
    assert loop.get_exception_handler() is None

    def handler(lp, ctx):
        pass

    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    with pytest.raises(TypeError):
        loop.set_exception_handler(42)
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


def test_exception_handler_runs_outside_the_callback_context(loop):
    import contextvars

    var = contextvars.ContextVar("v", default="outer")
    seen = []

    def handler(lp, ctx):
        seen.append(var.get())

    def cb():
        var.set("inner")
        raise ValueError

    loop.set_exception_handler(handler)
    ctx = contextvars.copy_context()
    loop.call_soon(cb, context=ctx)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(seen) == 1
    assert ctx[var] == "inner"


def test_failing_exception_handler_is_logged(loop, caplog):
    def bad_handler(lp, ctx):
        raise RuntimeError("handler failed")

    loop.set_exception_handler(bad_handler)
    loop.call_soon(failing, 2)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.run_forever()
    text = caplog.text
    assert "Unhandled error in exception handler" in text
    assert "handler failed" in text


def test_default_exception_handler_logs(loop, caplog):
    loop.call_soon(failing, 3)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.run_forever()
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 1
    rec = records[0]
    assert rec.levelno == logging.ERROR
    msg = rec.getMessage()
    assert msg.startswith(expected_message(failing, (3,), loop))
    src = callback_source(failing, (3,), loop)
    assert f"handle: <Handle {src}>" in msg
    assert rec.exc_info and rec.exc_info[0] is ZeroDivisionError


def test_call_exception_handler_directly(loop, caplog):
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler({"message": "custom message"})
    assert "custom message" in caplog.text


def test_unretrieved_task_exception_reported(loop):
    contexts = collect_contexts(loop)

    async def bad():
        raise KeyError("lost")

    task = loop.create_task(bad())
    loop.run_until_complete(asyncio.sleep(0.01))
    del task
    import gc
    gc.collect()
    assert any("exception was never retrieved" in c["message"]
               for _, c in contexts)


# ---- KeyboardInterrupt / SystemExit -----------------------------------------


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_callback_propagates(loop, exc_type):
    contexts = collect_contexts(loop)
    out = []

    def raiser():
        raise exc_type("from callback")

    loop.call_soon(raiser)
    loop.call_soon(out.append, "after")
    with pytest.raises(exc_type, match="from callback"):
        loop.run_forever()
    assert contexts == []
    assert not loop.is_running()
    # The rest of the batch runs on the next run, once.
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ["after"]
    assert loop.run_until_complete(asyncio.sleep(0, "usable")) == "usable"


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_timer_propagates(loop, exc_type):
    def raiser():
        raise exc_type

    loop.call_later(0.001, raiser)
    with pytest.raises(exc_type):
        loop.run_forever()
    assert loop.run_until_complete(asyncio.sleep(0, "usable")) == "usable"


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_reader_propagates(loop, exc_type):
    a, b = socket.socketpair()
    try:
        def raiser():
            raise exc_type

        loop.add_reader(a, raiser)
        b.send(b"x")
        with pytest.raises(exc_type):
            loop.run_forever()
        loop.remove_reader(a)
        assert loop.run_until_complete(asyncio.sleep(0, "usable")) == "usable"
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_coroutine_propagates(loop, exc_type):
    async def main():
        await asyncio.sleep(0)
        raise exc_type("from task")

    with pytest.raises(exc_type, match="from task"):
        loop.run_until_complete(main())
    assert not loop.is_running()
    assert loop.run_until_complete(asyncio.sleep(0, "usable")) == "usable"


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_exception_handler_propagates(loop, exc_type):
    def handler(lp, ctx):
        raise exc_type("from handler")

    loop.set_exception_handler(handler)
    loop.call_soon(failing, 1)
    with pytest.raises(exc_type, match="from handler"):
        loop.run_forever()
    assert loop.run_until_complete(asyncio.sleep(0, "usable")) == "usable"


def test_keyboard_interrupt_keeps_traceback(loop):
    def raiser():
        raise KeyboardInterrupt

    loop.call_soon(raiser)
    with pytest.raises(KeyboardInterrupt) as info:
        loop.run_forever()
    names = [entry.name for entry in info.traceback]
    assert "raiser" in names


def test_error_in_context_run_callback_with_args(loop):
    contexts = collect_contexts(loop)
    args = tuple(range(7))
    loop.call_soon(lambda *a: 1 / 0, *args)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(contexts) == 1
    assert isinstance(contexts[0][1]["exception"], ZeroDivisionError)


@pytest.mark.parametrize("exc_type", [GeneratorExit, asyncio.CancelledError,
                                      StopIteration, MemoryError])
def test_other_base_exceptions_are_reported(loop, exc_type):
    """Only SystemExit and KeyboardInterrupt end the run; every other
    exception of a callback goes to the exception handler."""
    contexts = collect_contexts(loop)

    def raiser():
        raise exc_type("reported")

    loop.call_soon(raiser)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(contexts) == 1
    assert type(contexts[0][1]["exception"]) is exc_type
    assert contexts[0][1]["message"] == expected_message(raiser, (), loop)
