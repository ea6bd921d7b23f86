"""Futures and tasks on the loop: create_future, create_task, task factories, contextvars."""

import asyncio
import contextvars
import gc
import inspect

import pytest
from _stdlib import loop_has, requires


VAR = contextvars.ContextVar("VAR", default="unset")


def test_create_future(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is loop
    assert not fut.done()
    fut.cancel()


def test_future_callbacks_run_via_loop(loop):
    fut = loop.create_future()
    seen = []
    fut.add_done_callback(lambda f: seen.append(f.result()))
    fut.set_result(3)
    # Done callbacks are scheduled, not called synchronously.
    assert seen == []
    loop.run_until_complete(asyncio.sleep(0))
    assert seen == [3]


def test_create_task_basic(loop):
    async def work():
        return asyncio.current_task()

    task = loop.create_task(work())
    assert isinstance(task, asyncio.Task)
    assert task.get_loop() is loop
    assert loop.run_until_complete(task) is task


def test_create_task_name(loop):
    async def work():
        return asyncio.current_task().get_name()

    task = loop.create_task(work(), name="my-task")
    assert task.get_name() == "my-task"
    assert loop.run_until_complete(task) == "my-task"
    unnamed = loop.create_task(work())
    assert unnamed.get_name().startswith("Task-")
    loop.run_until_complete(unnamed)


@requires("create_task", "context")
def test_create_task_context(loop):
    ctx = contextvars.copy_context()
    ctx.run(VAR.set, "task context")

    async def work():
        value = VAR.get()
        VAR.set("changed in task")
        return value

    task = loop.create_task(work(), context=ctx)
    assert loop.run_until_complete(task) == "task context"
    assert ctx[VAR] == "changed in task"
    assert VAR.get() == "unset"


def test_task_copies_current_context(loop):
    async def work():
        before = VAR.get()
        VAR.set("inside task")
        return before

    async def main():
        VAR.set("outer")
        result = await loop.create_task(work())
        return result, VAR.get()

    assert loop.run_until_complete(main()) == ("outer", "outer")
    assert VAR.get() == "unset"


def test_context_flows_to_callbacks_from_task(loop):
    async def main():
        VAR.set("task value")
        fut = loop.create_future()
        loop.call_soon(lambda: fut.set_result(VAR.get()))
        later = loop.create_future()
        loop.call_later(0, lambda: later.set_result(VAR.get()))
        return await fut, await later

    assert loop.run_until_complete(main()) == ("task value", "task value")


def test_create_task_rejects_non_coroutine(loop):
    with pytest.raises(TypeError):
        loop.create_task(42)
    with pytest.raises(TypeError):
        loop.create_task(lambda: None)


def test_task_factory(loop):
    created = []

    def factory(lp, coro, **kwargs):
        created.append((lp, kwargs))
        return asyncio.Task(coro, loop=lp, **kwargs)

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def work():
        return 1

    task = loop.create_task(work(), name="via-factory")
    assert task.get_name() == "via-factory"
    assert loop.run_until_complete(task) == 1
    assert created[0][0] is loop

    if loop_has("create_task", "context"):
        ctx = contextvars.copy_context()
        task2 = loop.create_task(work(), context=ctx)
        assert loop.run_until_complete(task2) == 1
        assert created[1][1] == {"context": ctx}

    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    loop.run_until_complete(loop.create_task(work()))
    assert len(created) == (2 if loop_has("create_task", "context") else 1)


def test_task_factory_used_by_run_until_complete(loop):
    created = []

    def factory(lp, coro, **kwargs):
        task = asyncio.Task(coro, loop=lp, **kwargs)
        created.append(task)
        return task

    loop.set_task_factory(factory)

    async def work():
        return "ok"

    assert loop.run_until_complete(work()) == "ok"
    assert len(created) == 1


def test_task_factory_non_callable(loop):
    with pytest.raises(TypeError):
        loop.set_task_factory(42)
    with pytest.raises(TypeError):
        loop.set_task_factory("factory")
    assert loop.get_task_factory() is None


def test_task_cancel(loop):
    async def forever():
        await asyncio.sleep(3600)

    async def main():
        task = loop.create_task(forever())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert loop.run_until_complete(main()) is True


def test_gather_and_wait_for(loop):
    async def value(x, delay):
        await asyncio.sleep(delay)
        return x

    async def main():
        results = await asyncio.gather(value(1, 0.01), value(2, 0), value(3, 0.005))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(value(4, 3600), 0.01)
        return results

    assert loop.run_until_complete(main()) == [1, 2, 3]


def test_all_tasks_and_current_task(loop):
    async def child():
        await asyncio.sleep(0)

    async def main():
        t = loop.create_task(child())
        tasks = asyncio.all_tasks()
        await t
        return tasks, asyncio.current_task()

    main_task = loop.create_task(main())
    tasks, current = loop.run_until_complete(main_task)
    assert current is main_task
    assert main_task in tasks and len(tasks) == 2


def test_task_exception_never_retrieved_reported(loop, exc_contexts):
    async def fail():
        raise ValueError("lost")

    task = loop.create_task(fail())
    loop.run_until_complete(asyncio.sleep(0))
    loop.run_until_complete(asyncio.sleep(0))
    assert task.done()
    del task
    gc.collect()
    assert len(exc_contexts) == 1
    ctx = exc_contexts.pop()
    assert ctx["message"] == "Task exception was never retrieved"
    assert isinstance(ctx["exception"], ValueError)


def test_timeout_context_manager(loop):
    if not hasattr(asyncio, "timeout"):
        pytest.skip("no asyncio.timeout on this Python")

    async def main():
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(3600)
        except TimeoutError:
            return "timed out"

    assert loop.run_until_complete(main()) == "timed out"


def _stdlib_create_task_has_eager_start():
    params = inspect.signature(asyncio.BaseEventLoop.create_task).parameters
    return "eager_start" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


def test_create_task_eager_start(loop):
    if not _stdlib_create_task_has_eager_start():
        pytest.skip("this Python's loop.create_task() has no eager_start")
    steps = []

    async def work():
        steps.append("started")
        await asyncio.sleep(0)
        return "eager"

    async def main():
        task = loop.create_task(work(), eager_start=True)
        # An eager task runs synchronously up to its first suspension.
        assert steps == ["started"]
        return await task

    assert loop.run_until_complete(main()) == "eager"


def test_eager_start_refused_where_create_task_lacks_it(loop):
    """eager_start= is create_task's from 3.14; below it both loops refuse the keyword."""
    if _stdlib_create_task_has_eager_start():
        pytest.skip("this Python's loop.create_task() has eager_start")

    async def work():
        return 1

    coro = work()
    try:
        with pytest.raises(TypeError, match="eager_start"):
            loop.create_task(coro, eager_start=True)
    finally:
        coro.close()


def _create_task_passes_keywords():
    """3.14's ``create_task(coro, **kwargs)`` hands every keyword on (gh-128307)."""
    params = inspect.signature(asyncio.BaseEventLoop.create_task).parameters
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def test_create_task_keywords_reach_factory(loop):
    seen = []

    def factory(lp, coro, **kwargs):
        seen.append(dict(kwargs))
        kwargs.pop("custom", None)
        return asyncio.Task(coro, loop=lp, **kwargs)

    loop.set_task_factory(factory)

    async def work():
        return 1

    if _create_task_passes_keywords():
        task = loop.create_task(work(), name="n", custom=1)
        # The name goes to the factory; nothing renames the task afterwards.
        assert seen == [{"name": "n", "custom": 1}]
    else:
        coro = work()
        with pytest.raises(TypeError, match="custom"):
            loop.create_task(coro, custom=1)
        coro.close()
        task = loop.create_task(work(), name="n")
        # Before 3.14 the factory gets no name; create_task sets it on the result.
        assert seen == [{}]
    assert task.get_name() == "n"
    assert loop.run_until_complete(task) == 1


@pytest.mark.parametrize("keyword", ["bogus", "loop"])
def test_create_task_keyword_task_refuses(loop, keyword):
    """Without a factory, a keyword Task does not take (or ``loop=``, which create_task
    itself gives) is a TypeError on every version."""

    async def work():
        return 1

    coro = work()
    try:
        with pytest.raises(TypeError, match=keyword):
            loop.create_task(coro, **{keyword: 1})
    finally:
        coro.close()
