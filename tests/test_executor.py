"""run_in_executor and the default executor."""

import asyncio
import concurrent.futures
import sys
import threading

import pytest


def test_run_in_executor_default(loop):
    async def main():
        return await loop.run_in_executor(None, lambda a, b: (a + b, threading.get_ident()), 2, 3)

    value, ident = loop.run_until_complete(main())
    assert value == 5
    assert ident != threading.get_ident()


def test_run_in_executor_returns_future(loop):
    fut = loop.run_in_executor(None, sum, [1, 2, 3])
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is loop
    assert loop.run_until_complete(fut) == 6


def test_run_in_executor_custom(loop):
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="custom-pool"
    ) as pool:
        async def main():
            return await loop.run_in_executor(pool, lambda: threading.current_thread().name)

        assert loop.run_until_complete(main()).startswith("custom-pool")


def test_run_in_executor_non_thread_executor(loop):
    class InlineExecutor(concurrent.futures.Executor):
        def submit(self, fn, *args, **kwargs):
            f = concurrent.futures.Future()
            f.set_result(fn(*args, **kwargs))
            return f

    assert loop.run_until_complete(loop.run_in_executor(InlineExecutor(), max, 4, 9)) == 9


def test_run_in_executor_many(loop):
    async def main():
        return await asyncio.gather(*[loop.run_in_executor(None, pow, i, 2) for i in range(50)])

    assert loop.run_until_complete(main()) == [i * i for i in range(50)]


def test_run_in_executor_exception(loop):
    def boom():
        raise ValueError("from worker")

    async def main():
        await loop.run_in_executor(None, boom)

    with pytest.raises(ValueError, match="from worker"):
        loop.run_until_complete(main())


def test_run_in_executor_cancel_waiter(loop):
    gate = threading.Event()

    async def main():
        fut = loop.run_in_executor(None, gate.wait, 10)
        await asyncio.sleep(0)
        fut.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fut
        gate.set()

    try:
        loop.run_until_complete(main())
    finally:
        gate.set()


def test_set_default_executor(loop):
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="my-default")
    try:
        loop.set_default_executor(pool)

        async def main():
            return await loop.run_in_executor(None, lambda: threading.current_thread().name)

        assert loop.run_until_complete(main()).startswith("my-default")
    finally:
        pool.shutdown(wait=True)


def test_set_default_executor_rejects_other_executors(loop):
    class OtherExecutor(concurrent.futures.Executor):
        def submit(self, fn, *args, **kwargs):
            raise AssertionError("must not be used")

    if sys.version_info >= (3, 11):
        with pytest.raises(TypeError):
            loop.set_default_executor(OtherExecutor())
    else:
        with pytest.warns(DeprecationWarning):
            loop.set_default_executor(OtherExecutor())
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(1))


def test_set_default_executor_rejects_none_and_garbage(loop):
    if sys.version_info < (3, 11):
        pytest.skip("older stdlib only warns")
    with pytest.raises(TypeError):
        loop.set_default_executor(None)
    with pytest.raises(TypeError):
        loop.set_default_executor(object())


def test_close_after_default_executor_used(loop_factory):
    lp = loop_factory()
    try:
        assert lp.run_until_complete(lp.run_in_executor(None, abs, -3)) == 3
    finally:
        lp.close()
    assert lp.is_closed()
    with pytest.raises(RuntimeError):
        lp.run_in_executor(None, print)


def test_to_thread_uses_loop_and_context(loop):
    import contextvars

    var = contextvars.ContextVar("to_thread_var")

    async def main():
        var.set("copied")
        return await asyncio.to_thread(lambda x: (x, var.get(), threading.get_ident()), 5)

    x, value, ident = loop.run_until_complete(main())
    assert (x, value) == (5, "copied")
    assert ident != threading.get_ident()
