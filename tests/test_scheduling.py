"""call_soon / call_later / call_at, handles and their contexts."""

import asyncio
import contextvars

import pytest
from _stdlib import skip_stdlib_bug

from conftest import pending_counts

VAR = contextvars.ContextVar("VAR", default="unset")


def run_briefly(loop, iterations=1):
    """Run the loop for a given number of iterations."""
    for _ in range(iterations):
        loop.call_soon(loop.stop)
        loop.run_forever()


def test_call_soon_fifo(loop):
    out = []
    for i in range(100):
        loop.call_soon(out.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == list(range(100))


def test_call_soon_passes_args(loop):
    out = []
    loop.call_soon(lambda *a: out.append(a), 1, "two", None)
    run_briefly(loop)
    assert out == [(1, "two", None)]


def test_call_soon_returns_handle(loop):
    h = loop.call_soon(print)
    assert callable(h.cancel) and callable(h.cancelled)
    assert not h.cancelled()
    h.cancel()
    assert h.cancelled()
    run_briefly(loop)


def test_call_soon_from_callback_runs_next_iteration(loop):
    out = []

    def first():
        out.append("first")
        loop.call_soon(out.append, "scheduled by first")
        loop.stop()

    loop.call_soon(first)
    loop.run_forever()
    # stop() ends the run after the current iteration: the new callback waits.
    assert out == ["first"]
    run_briefly(loop)
    assert out == ["first", "scheduled by first"]


def test_callbacks_added_during_iteration_keep_order(loop):
    out = []

    def a():
        out.append("a")
        loop.call_soon(out.append, "a-child")

    def b():
        out.append("b")
        loop.call_soon(out.append, "b-child")

    loop.call_soon(a)
    loop.call_soon(b)
    run_briefly(loop, 2)
    assert out == ["a", "b", "a-child", "b-child"]


def test_call_later_order(loop):
    out = []
    loop.call_later(0.15, out.append, 3)
    loop.call_later(0.05, out.append, 1)
    loop.call_later(0.10, out.append, 2)
    loop.call_later(0.20, loop.stop)
    loop.run_forever()
    assert out == [1, 2, 3]


def test_call_at_order(loop):
    out = []
    now = loop.time()
    loop.call_at(now + 0.02, out.append, "b")
    loop.call_at(now + 0.01, out.append, "a")
    loop.call_at(now + 0.03, out.append, "c")
    loop.call_at(now + 0.04, loop.stop)
    loop.run_forever()
    assert out == ["a", "b", "c"]


def test_two_timers_same_deadline_in_scheduling_order(loop):
    out = []
    when = loop.time() + 0.01
    loop.call_at(when, out.append, "first")
    loop.call_at(when, out.append, "second")
    loop.call_at(when + 0.01, loop.stop)
    loop.run_forever()
    assert out == ["first", "second"]


def test_many_timers_same_deadline_all_run_together(loop):
    # The stdlib keeps timers in a heap, which is not stable: the order among equal
    # deadlines is unspecified. All of them must run, within the same iteration.
    out = []
    when = loop.time() + 0.01

    def record(i):
        out.append(i)
        if len(out) == 1:
            loop.stop()

    for i in range(20):
        loop.call_at(when, record, i)
    loop.run_forever()
    assert sorted(out) == list(range(20))


def test_timers_never_fire_early(loop):
    late = []
    handles = []

    def record(h_index):
        late.append((loop.time(), handles[h_index].when()))

    for i, delay in enumerate([0.001, 0.005, 0.01, 0.02, 0.0005, 0.015]):
        handles.append(loop.call_later(delay, record, i))
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert len(late) == len(handles)
    for fired_at, when in late:
        assert fired_at >= when


def test_call_at_in_future_not_early(loop):
    fired = []
    when = loop.time() + 0.02
    loop.call_at(when, lambda: fired.append(loop.time()))
    loop.call_at(when, loop.stop)
    loop.run_forever()
    assert fired and fired[0] >= when


def test_sleep_not_early_wrt_loop_time(loop):
    async def main():
        t0 = loop.time()
        await asyncio.sleep(0.02)
        return loop.time() - t0

    assert loop.run_until_complete(main()) >= 0.02


def test_loop_time_monotonic(loop):
    samples = [loop.time() for _ in range(1000)]
    assert samples == sorted(samples)
    assert isinstance(samples[0], float)


def test_zero_and_negative_delays(loop):
    out = []
    loop.call_later(0, out.append, "zero")
    loop.call_later(-5, out.append, "negative")
    loop.call_at(loop.time() - 10, out.append, "past")
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert sorted(out) == ["negative", "past", "zero"]
    # Earlier deadlines first.
    assert out.index("past") < out.index("negative") < out.index("zero")


def test_zero_delay_runs_without_waiting_for_other_timer(loop):
    out = []
    far = loop.call_later(3600, out.append, "far")
    loop.call_later(0, out.append, "zero")
    loop.call_later(0, loop.stop)
    loop.run_forever()
    assert out == ["zero"]
    far.cancel()


def test_call_later_none_delay(loop):
    with pytest.raises(TypeError):
        loop.call_later(None, print)


def test_call_at_none_when(loop, loop_kind):
    skip_stdlib_bug(loop_kind, "call_at_none_asserts")
    with pytest.raises(TypeError):
        loop.call_at(None, print)


def test_call_later_int_and_float(loop):
    h1 = loop.call_later(1, print)
    h2 = loop.call_later(1.5, print)
    assert h2.when() > h1.when()
    h1.cancel()
    h2.cancel()


def test_timer_handle_api(loop):
    before = loop.time()
    h = loop.call_later(10, print)
    after = loop.time()
    assert callable(h.when) and callable(h.cancel) and callable(h.cancelled)
    assert before + 10 <= h.when() <= after + 10
    assert not h.cancelled()
    h.cancel()
    assert h.cancelled()
    h.cancel()  # idempotent
    assert h.cancelled()


def test_call_at_when_is_exact(loop):
    when = loop.time() + 123.25
    h = loop.call_at(when, print)
    assert h.when() == when
    h.cancel()


def test_timer_handle_private_when_keeps_type(loop):
    # aiohttp reads TimerHandle._when: asyncio keeps the object given to call_at there.
    at_int = loop.call_at(10**9, print)
    at_float = loop.call_at(12.5, print)
    later = loop.call_later(10, print)
    assert type(at_int._when) is int and at_int._when == 10**9
    assert type(at_float._when) is float and at_float._when == 12.5
    assert later._when == later.when()
    for handle in (at_int, at_float, later):
        handle.cancel()


def test_cancel_handle_before_start(loop):
    out = []
    h = loop.call_soon(out.append, "cancelled")
    t = loop.call_later(0, out.append, "cancelled timer")
    loop.call_soon(out.append, "kept")
    h.cancel()
    t.cancel()
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert out == ["kept"]


def test_cancel_from_earlier_callback(loop):
    out = []
    later = None

    def canceller():
        later.cancel()

    loop.call_soon(canceller)
    later = loop.call_soon(out.append, "never")
    timer = loop.call_later(0.001, out.append, "never timer")
    loop.call_soon(timer.cancel)
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert out == []


def test_cancel_after_run_is_harmless(loop):
    out = []
    h = loop.call_soon(out.append, 1)
    run_briefly(loop)
    h.cancel()
    assert h.cancelled()
    assert out == [1]


def test_handle_get_context(loop):
    if not hasattr(asyncio.Handle, "get_context"):
        pytest.skip("this Python's stdlib Handle has no get_context()")
    ctx = contextvars.copy_context()
    h = loop.call_soon(print, context=ctx)
    assert h.get_context() is ctx
    t = loop.call_later(10, print, context=ctx)
    assert t.get_context() is ctx
    default = loop.call_soon(print)
    assert isinstance(default.get_context(), contextvars.Context)
    h.cancel()
    t.cancel()
    default.cancel()
    run_briefly(loop)


def test_callback_context_argument(loop):
    ctx = contextvars.copy_context()
    ctx.run(VAR.set, "in copied context")
    seen = []
    loop.call_soon(lambda: seen.append(("soon", VAR.get())), context=ctx)
    loop.call_later(0, lambda: seen.append(("later", VAR.get())), context=ctx)
    loop.call_at(loop.time(), lambda: seen.append(("at", VAR.get())), context=ctx)
    loop.call_soon_threadsafe(lambda: seen.append(("threadsafe", VAR.get())), context=ctx)
    loop.call_soon(lambda: seen.append(("plain", VAR.get())))
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert sorted(seen) == sorted([
        ("soon", "in copied context"),
        ("later", "in copied context"),
        ("at", "in copied context"),
        ("threadsafe", "in copied context"),
        ("plain", "unset"),
    ])
    assert VAR.get() == "unset"


def test_callback_sees_context_at_scheduling_time(loop):
    seen = []
    token = VAR.set("before scheduling")
    try:
        loop.call_soon(lambda: seen.append(VAR.get()))
    finally:
        VAR.reset(token)
    token = VAR.set("changed after")
    try:
        run_briefly(loop)
    finally:
        VAR.reset(token)
    assert seen == ["before scheduling"]


def test_callback_context_changes_stay_in_handle_context(loop):
    ctx = contextvars.copy_context()
    loop.call_soon(VAR.set, "set by callback", context=ctx)
    run_briefly(loop)
    assert ctx[VAR] == "set by callback"
    assert VAR.get() == "unset"


def test_many_timers_cancelled_leave_nothing_pending(loop):
    out = []
    handles = [loop.call_later(3600 + i * 0.001, out.append, i) for i in range(100_000)]
    assert pending_counts(loop)["timers"] == 100_000
    for h in handles:
        h.cancel()
    assert all(h.cancelled() for h in handles)
    # The loop must not wait for the cancelled deadlines.
    loop.run_until_complete(asyncio.sleep(0.01))
    run_briefly(loop, 2)
    assert out == []
    assert pending_counts(loop)["timers"] == 0


def test_many_timers_all_fire(loop):
    out = []
    n = 10_000
    for i in range(n):
        loop.call_later((i % 10) * 0.001, out.append, i)
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert sorted(out) == list(range(n))


def test_call_soon_many_and_counts(loop):
    hs = [loop.call_soon(print) for _ in range(10)]
    for h in hs:
        h.cancel()
    run_briefly(loop)
    assert pending_counts(loop)["ready"] == 0


def test_huge_and_infinite_delays(loop):
    out = []
    huge = loop.call_later(1e10, out.append, "huge")
    endless = loop.call_later(float("inf"), out.append, "inf")
    assert endless.when() == float("inf")
    loop.call_later(0.01, out.append, "soon")
    loop.run_until_complete(asyncio.sleep(0.02))
    assert out == ["soon"]
    huge.cancel()
    endless.cancel()


def test_sleep_forever_cancelled(loop):
    async def sleeper():
        await asyncio.sleep(float("inf"))

    async def main():
        task = loop.create_task(sleeper())
        loop.call_later(0.01, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"

    assert loop.run_until_complete(main()) == "cancelled"
