"""Running, stopping and closing a loop; async generator finalization."""

import asyncio
import gc
import inspect
import os
import socket
import sys
import threading
import warnings
import weakref

import pytest
from _stdlib import requires_runner, skip_stdlib_bug

CLOSED = "Event loop is closed"


def test_new_loop_state(loop):
    assert isinstance(loop, asyncio.AbstractEventLoop)
    assert not loop.is_running()
    assert not loop.is_closed()


def test_run_forever_until_stop(loop):
    calls = []

    def first():
        calls.append(("first", loop.is_running()))
        loop.call_soon(second)

    def second():
        calls.append(("second", loop.is_running()))
        loop.stop()

    loop.call_soon(first)
    loop.run_forever()
    assert calls == [("first", True), ("second", True)]
    assert not loop.is_running()


def test_stop_runs_rest_of_iteration(loop):
    calls = []
    loop.call_soon(calls.append, "a")
    loop.call_soon(loop.stop)
    loop.call_soon(calls.append, "b")
    loop.run_forever()
    assert calls == ["a", "b"]


def test_stop_before_run_runs_one_iteration(loop):
    calls = []

    def first():
        calls.append("first")
        loop.call_soon(calls.append, "second")

    loop.call_soon(first)
    loop.stop()
    loop.run_forever()
    assert calls == ["first"]
    # The loop is not left stopping: the next run goes on until stopped again.
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ["first", "second"]


def test_stop_before_run_with_nothing_ready_returns(loop):
    loop.stop()
    loop.run_forever()
    assert not loop.is_running()


def test_run_forever_can_be_repeated(loop):
    for i in range(3):
        seen = []
        loop.call_soon(seen.append, i)
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert seen == [i]


def test_run_until_complete_coroutine(loop):
    async def compute(x):
        await asyncio.sleep(0)
        return x * 2

    assert loop.run_until_complete(compute(21)) == 42
    assert not loop.is_running()


def test_run_until_complete_future(loop):
    fut = loop.create_future()
    loop.call_soon(fut.set_result, "done")
    assert loop.run_until_complete(fut) == "done"


def test_run_until_complete_task(loop):
    async def work():
        return "task result"

    task = loop.create_task(work())
    assert loop.run_until_complete(task) == "task result"
    assert task.done()


def test_run_until_complete_awaitable_object(loop):
    class Awaitable:
        def __await__(self):
            yield from asyncio.sleep(0).__await__()
            return "awaited"

    assert loop.run_until_complete(Awaitable()) == "awaited"


def test_run_until_complete_raises_exception(loop):
    async def fail():
        raise ValueError("bad value")

    with pytest.raises(ValueError, match="bad value"):
        loop.run_until_complete(fail())


def test_run_until_complete_future_exception(loop):
    fut = loop.create_future()
    loop.call_soon(fut.set_exception, KeyError("k"))
    with pytest.raises(KeyError):
        loop.run_until_complete(fut)


def test_run_until_complete_cancelled(loop):
    fut = loop.create_future()
    loop.call_soon(fut.cancel)
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(fut)


def test_run_until_complete_stopped_early(loop):
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError) as info:
        loop.run_until_complete(fut)
    assert str(info.value) == "Event loop stopped before Future completed."
    assert not fut.done()
    # The loop is still usable and the future can still complete.
    loop.call_soon(fut.set_result, 5)
    assert loop.run_until_complete(fut) == 5


def test_run_until_complete_rejects_non_awaitable(loop):
    with pytest.raises(TypeError):
        loop.run_until_complete(42)


def test_run_until_complete_foreign_future(loop, new_loop):
    other = new_loop()
    fut = other.create_future()
    with pytest.raises(ValueError):
        loop.run_until_complete(fut)


def test_is_running_inside_callback(loop):
    seen = []
    loop.call_soon(lambda: seen.append(loop.is_running()))
    loop.call_soon(loop.stop)
    assert not loop.is_running()
    loop.run_forever()
    assert seen == [True]
    assert not loop.is_running()


def test_run_until_complete_already_done_future(loop):
    fut = loop.create_future()
    fut.set_result("early")
    assert loop.run_until_complete(fut) == "early"


def test_get_running_loop_in_callback(loop):
    seen = []
    loop.call_soon(lambda: seen.append(asyncio.get_running_loop()))
    loop.call_soon(lambda: seen.append(asyncio.get_event_loop()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [loop, loop]


def test_get_running_loop_inside(loop):
    async def probe():
        return asyncio.get_running_loop()

    assert loop.run_until_complete(probe()) is loop
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_close_while_running_refused(loop):
    errors = []

    def try_close():
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.stop()

    loop.call_soon(try_close)
    loop.run_forever()
    assert errors == ["Cannot close a running event loop"]
    assert not loop.is_closed()


def test_double_close(loop):
    loop.close()
    assert loop.is_closed()
    loop.close()
    assert loop.is_closed()


def _closed_calls(loop):
    return {
        "call_soon": lambda: loop.call_soon(print),
        "call_soon_threadsafe": lambda: loop.call_soon_threadsafe(print),
        "call_later": lambda: loop.call_later(1, print),
        "call_at": lambda: loop.call_at(loop.time() + 1, print),
        "run_forever": loop.run_forever,
        "run_in_executor": lambda: loop.run_in_executor(None, print),
    }


@pytest.mark.parametrize(
    "method",
    ["call_soon", "call_soon_threadsafe", "call_later", "call_at", "run_forever",
     "run_in_executor"],
)
def test_closed_loop_refuses(loop, method):
    loop.close()
    with pytest.raises(RuntimeError) as info:
        _closed_calls(loop)[method]()
    assert str(info.value) == CLOSED


def test_closed_loop_refuses_run_until_complete(loop):
    async def coro():
        pass

    loop.close()
    c = coro()
    try:
        with pytest.raises(RuntimeError) as info:
            loop.run_until_complete(c)
        assert str(info.value) == CLOSED
    finally:
        c.close()


def test_closed_loop_refuses_create_task(loop):
    async def coro():
        pass

    loop.close()
    c = coro()
    try:
        with pytest.raises(RuntimeError) as info:
            loop.create_task(c)
        assert str(info.value) == CLOSED
    finally:
        c.close()


def test_closed_loop_refuses_readers_and_writers(loop):
    import socket

    a, b = socket.socketpair()
    try:
        loop.close()
        with pytest.raises(RuntimeError, match=CLOSED):
            loop.add_reader(a, print)
        with pytest.raises(RuntimeError, match=CLOSED):
            loop.add_writer(a, print)
        # Removing from a closed loop reports that nothing was removed.
        assert loop.remove_reader(a) is False
        assert loop.remove_writer(a) is False
    finally:
        a.close()
        b.close()


def test_nested_run_refused(loop, loop_kind):
    skip_stdlib_bug(loop_kind, "refused_run_forever_clears_running_loop")
    errors = []

    async def coro():
        pass

    def nested():
        try:
            loop.run_forever()
        except RuntimeError as exc:
            errors.append(str(exc))
        c = coro()
        try:
            loop.run_until_complete(c)
        except RuntimeError as exc:
            errors.append(str(exc))
        finally:
            c.close()
        loop.stop()

    loop.call_soon(nested)
    loop.run_forever()
    assert errors == ["This event loop is already running"] * 2
    assert not loop.is_running()


def test_other_loop_inside_callback_refused(loop, new_loop, loop_kind):
    skip_stdlib_bug(loop_kind, "refused_run_forever_clears_running_loop")
    other = new_loop()
    errors = []

    def nested():
        try:
            other.run_forever()
        except RuntimeError as exc:
            errors.append(str(exc))
        other.call_soon(print)
        try:
            other.run_until_complete(other.create_future())
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.stop()

    loop.call_soon(nested)
    loop.run_forever()
    assert errors == ["Cannot run the event loop while another loop is running"] * 2
    assert not other.is_running()
    # Once the outer loop returned, the other loop runs normally.
    other.call_soon(other.stop)
    other.run_forever()
    other.close()


def test_loop_runs_in_another_thread(loop):
    results = []

    def in_thread():
        async def work():
            await asyncio.sleep(0)
            return threading.get_ident()

        results.append(loop.run_until_complete(work()))

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert results and results[0] != threading.get_ident()


def test_close_discards_pending_callbacks(loop):
    ran = []
    loop.call_soon(ran.append, "soon")
    loop.call_later(0, ran.append, "later")
    loop.call_soon_threadsafe(ran.append, "threadsafe")
    loop.close()
    assert loop.is_closed()
    assert ran == []


def test_close_with_pending_task(loop, exc_contexts):
    started = []

    async def forever():
        started.append(True)
        await asyncio.sleep(3600)

    task = loop.create_task(forever())
    loop.run_until_complete(asyncio.sleep(0))
    assert started == [True]
    loop.close()
    assert not task.done()
    del task
    gc.collect()
    # close() drops what the loop held, so the task is collected, and the stdlib Task
    # reports its destruction while pending through the exception handler.
    messages = [c.get("message") for c in exc_contexts]
    exc_contexts.clear()
    assert messages == ["Task was destroyed but it is pending!"]


def test_unclosed_loop_resource_warning(loop_factory):
    lp = loop_factory()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del lp
        gc.collect()
    found = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert found, [str(w.message) for w in caught]
    assert any("unclosed" in str(w.message) for w in found)


def test_closed_loop_no_resource_warning(loop_factory):
    lp = loop_factory()
    lp.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del lp
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_shutdown_asyncgens_finalizes(loop):
    log = []

    async def agen():
        try:
            log.append("start")
            yield 1
            yield 2
        finally:
            log.append("finally")

    gen = agen()

    async def first():
        return await gen.__anext__()

    assert loop.run_until_complete(first()) == 1
    assert log == ["start"]
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert log == ["start", "finally"]


def test_shutdown_asyncgens_reports_errors(loop, exc_contexts):
    async def agen():
        try:
            yield 1
        finally:
            raise ZeroDivisionError("in finally")

    gen = agen()

    async def first():
        return await gen.__anext__()

    loop.run_until_complete(first())
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert len(exc_contexts) == 1
    ctx = exc_contexts.pop()
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert ctx["asyncgen"] is gen
    assert "asynchronous generator" in ctx["message"]


def test_shutdown_asyncgens_nothing_to_do(loop):
    loop.run_until_complete(loop.shutdown_asyncgens())


def test_asyncgen_finalizer_hook_closes_abandoned_generator(loop):
    log = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            log.append("finally")

    async def abandon():
        g = agen()
        assert await g.__anext__() == 1
        del g
        gc.collect()
        for _ in range(5):
            await asyncio.sleep(0)

    loop.run_until_complete(abandon())
    assert log == ["finally"]


def test_asyncgen_hooks_installed_and_restored(loop):
    def my_firstiter(agen):
        pass

    def my_finalizer(agen):
        pass

    saved = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(firstiter=my_firstiter, finalizer=my_finalizer)
    try:
        inside = []
        loop.call_soon(lambda: inside.append(sys.get_asyncgen_hooks()))
        loop.call_soon(loop.stop)
        loop.run_forever()
        firstiter, finalizer = inside[0]
        assert firstiter is not None and firstiter is not my_firstiter
        assert finalizer is not None and finalizer is not my_finalizer
        after = sys.get_asyncgen_hooks()
        assert after.firstiter is my_firstiter
        assert after.finalizer is my_finalizer
    finally:
        sys.set_asyncgen_hooks(*saved)


def test_asyncgen_hooks_restored_after_exception(loop):
    saved = sys.get_asyncgen_hooks()
    sentinel = lambda agen: None  # noqa: E731
    sys.set_asyncgen_hooks(firstiter=sentinel, finalizer=sentinel)
    try:
        async def fail():
            raise ValueError

        with pytest.raises(ValueError):
            loop.run_until_complete(fail())
        assert sys.get_asyncgen_hooks().firstiter is sentinel
    finally:
        sys.set_asyncgen_hooks(*saved)


def test_shutdown_default_executor(loop):
    async def main():
        await loop.run_in_executor(None, sum, [1, 2])
        await loop.shutdown_default_executor()

    loop.run_until_complete(main())
    with pytest.raises(RuntimeError) as info:
        loop.run_in_executor(None, print)
    assert str(info.value) == "Executor shutdown has been called"


def test_shutdown_default_executor_waits_for_jobs(loop):
    done = threading.Event()
    gate = threading.Event()

    def job():
        gate.wait(10)
        done.set()

    async def main():
        fut = loop.run_in_executor(None, job)
        loop.call_soon(gate.set)
        await loop.shutdown_default_executor()
        assert done.is_set()
        await fut

    loop.run_until_complete(main())


def test_shutdown_default_executor_unused(loop):
    loop.run_until_complete(loop.shutdown_default_executor())


def test_shutdown_default_executor_timeout(loop):
    params = inspect.signature(asyncio.BaseEventLoop.shutdown_default_executor).parameters
    if "timeout" not in params:
        pytest.skip("this Python's stdlib shutdown_default_executor has no timeout=")

    async def main():
        await loop.run_in_executor(None, sum, [1])
        await loop.shutdown_default_executor(timeout=30)

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        loop.run_until_complete(main())


def test_explicit_executor_after_default_shutdown(loop):
    import concurrent.futures

    async def main():
        await loop.shutdown_default_executor()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return await loop.run_in_executor(pool, sum, [4, 5])

    assert loop.run_until_complete(main()) == 9


def test_set_event_loop_and_get_event_loop(loop):
    asyncio.set_event_loop(loop)
    try:
        assert asyncio.get_event_loop() is loop
    finally:
        asyncio.set_event_loop(None)


@requires_runner
def test_runner_uses_factory(loop_factory):
    seen = {}

    async def main():
        lp = asyncio.get_running_loop()
        seen["loop"] = lp
        seen["debug"] = lp.get_debug()
        await asyncio.sleep(0)
        return "runner result"

    with asyncio.Runner(loop_factory=loop_factory, debug=True) as runner:
        assert runner.run(main()) == "runner result"
        assert runner.get_loop() is seen["loop"]
    probe = loop_factory()
    probe.close()
    assert type(seen["loop"]) is type(probe)
    assert seen["debug"] is True
    assert seen["loop"].is_closed()


def _open_fd_count():
    return len(os.listdir("/proc/self/fd"))


def test_close_releases_descriptors_while_loop_is_referenced(loop_factory):
    """close() gives back the loop's own descriptors at once (asyncio closes its selector and
    self-pipe there), not when the loop object is finally collected."""
    before = _open_fd_count()
    loop = loop_factory()
    loop.run_until_complete(asyncio.sleep(0))
    assert _open_fd_count() > before
    loop.close()
    assert _open_fd_count() == before
    assert loop.is_closed()  # still referenced, still answering


def test_closed_loop_is_collectable_after_cancelled_fd_waits(loop_factory):
    """Cancelled sock_recv/sock_sendall waits leave nothing that keeps the loop alive: removing
    a reader lets go of its callback at once, as asyncio's handle.cancel() does."""
    loop = loop_factory()
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        b.setblocking(False)
        # Fill a's send buffer, so sock_sendall has to wait too.
        try:
            while True:
                a.send(b"x" * 65536)
        except BlockingIOError:
            pass

        async def main():
            recv = asyncio.ensure_future(loop.sock_recv(a, 10))
            send = asyncio.ensure_future(loop.sock_sendall(a, b"y" * 65536))
            await asyncio.sleep(0)
            for task in (recv, send):
                task.cancel()
            await asyncio.gather(recv, send, return_exceptions=True)

        loop.run_until_complete(main())
    finally:
        a.close()
        b.close()
    loop.close()
    ref = weakref.ref(loop)
    del loop
    gc.collect()
    assert ref() is None
