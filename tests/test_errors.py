"""Exceptions in callbacks, exception handlers, and BaseExceptions escaping the loop."""

import asyncio
import logging

import pytest


def run_briefly(loop):
    loop.call_soon(loop.stop)
    loop.run_forever()


def test_callback_exception_reaches_handler(loop, exc_contexts):
    out = []
    error = ValueError("callback failed")

    def bad():
        raise error

    h = loop.call_soon(bad)
    loop.call_soon(out.append, "still running")
    run_briefly(loop)
    assert out == ["still running"]
    assert len(exc_contexts) == 1
    ctx = exc_contexts.pop()
    assert ctx["message"].startswith("Exception in callback")
    assert ctx["exception"] is error
    assert ctx["handle"] is h


def test_timer_exception_reaches_handler(loop, exc_contexts):
    def bad():
        raise KeyError("timer")

    h = loop.call_later(0, bad)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert len(exc_contexts) == 1
    ctx = exc_contexts.pop()
    assert ctx["message"].startswith("Exception in callback")
    assert isinstance(ctx["exception"], KeyError)
    assert ctx["handle"] is h


def test_loop_keeps_running_after_many_failures(loop, exc_contexts):
    def bad(i):
        raise RuntimeError(i)

    for i in range(10):
        loop.call_soon(bad, i)

    async def main():
        await asyncio.sleep(0)
        return "alive"

    assert loop.run_until_complete(main()) == "alive"
    assert [c["exception"].args[0] for c in exc_contexts] == list(range(10))
    exc_contexts.clear()


def test_handler_receives_loop(loop):
    seen = []

    def handler(lp, context):
        seen.append((lp, context["message"]))

    loop.set_exception_handler(handler)
    loop.call_soon(lambda: 1 / 0)
    run_briefly(loop)
    assert len(seen) == 1
    assert seen[0][0] is loop
    assert seen[0][1].startswith("Exception in callback")


def test_set_get_exception_handler(loop_factory):
    lp = loop_factory()
    try:
        assert lp.get_exception_handler() is None

        def handler(loop, context):
            pass

        lp.set_exception_handler(handler)
        assert lp.get_exception_handler() is handler
        lp.set_exception_handler(None)
        assert lp.get_exception_handler() is None
        with pytest.raises(TypeError):
            lp.set_exception_handler("not callable")
        with pytest.raises(TypeError):
            lp.set_exception_handler(1)
        assert lp.get_exception_handler() is None
    finally:
        lp.close()


def _asyncio_errors(caplog):
    return [r for r in caplog.records if r.name == "asyncio" and r.levelno == logging.ERROR]


def test_default_handler_logs_callback_error(loop, caplog):
    loop.set_exception_handler(None)
    error = ZeroDivisionError("logged")

    def bad():
        raise error

    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        loop.call_soon(bad)
        run_briefly(loop)
    records = _asyncio_errors(caplog)
    assert len(records) == 1
    rec = records[0]
    assert rec.getMessage().startswith("Exception in callback")
    assert rec.exc_info is not None and rec.exc_info[1] is error


def test_default_exception_handler_direct(loop, caplog):
    error = OSError("direct")
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.default_exception_handler({"message": "custom message", "exception": error,
                                        "extra_key": "extra value"})
    records = _asyncio_errors(caplog)
    assert len(records) == 1
    text = records[0].getMessage()
    assert text.startswith("custom message")
    assert "extra_key: 'extra value'" in text
    assert records[0].exc_info[1] is error


def test_default_exception_handler_without_message_or_exception(loop, caplog):
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.default_exception_handler({})
    records = _asyncio_errors(caplog)
    assert len(records) == 1
    assert records[0].getMessage() == "Unhandled exception in event loop"
    assert not records[0].exc_info


def test_call_exception_handler_uses_default(loop, caplog):
    loop.set_exception_handler(None)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler({"message": "via call_exception_handler"})
    records = _asyncio_errors(caplog)
    assert [r.getMessage() for r in records] == ["via call_exception_handler"]


def test_call_exception_handler_uses_custom(loop, exc_contexts):
    ctx = {"message": "custom", "exception": ValueError()}
    loop.call_exception_handler(ctx)
    assert exc_contexts == [ctx]
    exc_contexts.clear()


def test_failing_custom_handler_logged(loop, caplog):
    handler_error = RuntimeError("handler broke")

    def handler(lp, context):
        raise handler_error

    loop.set_exception_handler(handler)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler({"message": "original problem"})
    records = _asyncio_errors(caplog)
    assert len(records) == 1
    text = records[0].getMessage()
    assert text.startswith("Unhandled error in exception handler")
    assert "original problem" in text
    assert records[0].exc_info[1] is handler_error


def test_failing_custom_handler_in_callback(loop, caplog):
    def handler(lp, context):
        raise RuntimeError("handler broke")

    loop.set_exception_handler(handler)
    out = []
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(lambda: 1 / 0)
        loop.call_soon(out.append, "after")
        run_briefly(loop)
    assert out == ["after"]
    records = _asyncio_errors(caplog)
    assert len(records) == 1
    assert records[0].getMessage().startswith("Unhandled error in exception handler")


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_escapes_run_forever(loop, exc_contexts, exc_type):
    out = []

    def raise_it():
        raise exc_type()

    loop.call_soon(out.append, "before")
    loop.call_soon(raise_it)
    loop.call_soon(out.append, "after")
    with pytest.raises(exc_type):
        loop.run_forever()
    assert not loop.is_running()
    assert out == ["before"]
    assert exc_contexts == []
    # The loop is still usable and the rest of the queue was not lost.
    run_briefly(loop)
    assert out == ["before", "after"]

    async def main():
        await asyncio.sleep(0)
        return "usable"

    assert loop.run_until_complete(main()) == "usable"


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_escapes_run_until_complete(loop, exc_contexts, exc_type):
    def raise_it():
        raise exc_type()

    async def main():
        loop.call_soon(raise_it)
        await asyncio.sleep(3600)

    task = loop.create_task(main())
    with pytest.raises(exc_type):
        loop.run_until_complete(task)
    assert not loop.is_running()
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)
    assert exc_contexts == []


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_from_coroutine(loop, exc_type):
    async def main():
        await asyncio.sleep(0)
        raise exc_type()

    with pytest.raises(exc_type):
        loop.run_until_complete(main())
    assert loop.run_until_complete(asyncio.sleep(0, "again")) == "again"


def test_keyboard_interrupt_from_timer(loop):
    def raise_it():
        raise KeyboardInterrupt

    loop.call_later(0.001, raise_it)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert not loop.is_running()
