"""Loop telemetry (issue 22): ``loop.metrics()``, slow-callback reports, the stuck-loop watchdog.

The stdlib loop has no telemetry, so these are tokioloop-only tests (``tokioloop_only``),
except the check that asyncio's loop is left untouched. Counter tests run a workload whose
counts are known exactly and compare two snapshots; time-based figures (utilization, lateness)
are checked against generous bounds that a loaded 2-core machine still meets, never against
how fast anything ran.
"""

import asyncio
import socket
import sys
import threading
import time

import pytest

from conftest import tokioloop_only


def noop():
    pass


@tokioloop_only
def test_counters_move_by_exactly_what_ran(loop):
    from tokioloop.telemetry import LoopMetrics

    a, b = socket.socketpair()
    def reader():
        a.recv(10)
        loop.remove_reader(a)

    def producer():
        for _ in range(5):
            loop.call_soon_threadsafe(noop)

    def start():
        for _ in range(100):
            loop.call_soon(noop)
        for handle in [loop.call_soon(noop) for _ in range(3)]:
            handle.cancel()  # cancelled handles never run and are not counted
        for _ in range(7):
            loop.call_later(0, noop)
        loop.call_later(10, noop).cancel()
        thread = threading.Thread(target=producer)
        thread.start()
        thread.join()
        loop.add_reader(a, reader)
        b.send(b"x")
        loop.call_later(0.05, finish)

    def finish():
        loop.stop()

    try:
        # Counters are added once per turn: snapshots around the run see whole turns.
        before = loop.metrics()
        loop.call_soon(start)
        loop.run_forever()
        after = loop.metrics()
    finally:
        a.close()
        b.close()
    assert isinstance(after, LoopMetrics)
    assert after.callbacks_ready - before.callbacks_ready == 1 + 100 + 5  # start, noops, threadsafe
    assert after.callbacks_timer - before.callbacks_timer == 7 + 1  # + finish
    assert after.callbacks_io - before.callbacks_io == 1
    assert after.threadsafe_calls - before.threadsafe_calls == 5
    assert after.callbacks - before.callbacks == 106 + 8 + 1
    assert after.turns > before.turns
    assert after.timer_lateness.count - before.timer_lateness.count == 8
    assert (after.ready_depth, after.pending_timers, after.readers, after.writers) == (0, 0, 0, 0)
    assert after.dns_in_flight == 0 and after.executor_jobs_in_flight == 0
    # Not timed (no slow-callback threshold): these two stay empty, and no clock was read.
    assert after.callback_duration.count == 0 and after.ready_wait.count == 0


@tokioloop_only
def test_counters_never_go_back_and_survive_runs(loop):
    first = loop.metrics()
    loop.run_until_complete(asyncio.sleep(0))
    second = loop.metrics()
    loop.run_until_complete(asyncio.sleep(0))
    third = loop.metrics()
    for name in ("turns", "callbacks_ready", "callbacks_timer", "callbacks_io",
                 "threadsafe_calls", "time_running", "time_parked"):
        assert getattr(first, name) <= getattr(second, name) <= getattr(third, name), name
    assert third.turns > first.turns


@tokioloop_only
def test_utilization_of_an_idle_and_a_busy_loop(loop):
    start = loop.metrics()
    loop.run_until_complete(asyncio.sleep(0.3))
    idle = loop.metrics()

    def spin():
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            pass

    loop.call_soon(spin)
    loop.run_until_complete(asyncio.sleep(0))
    busy = loop.metrics()
    assert idle.utilization(start) < 0.5
    assert busy.utilization(idle) > 0.5
    assert 0.0 <= busy.utilization() <= 1.0
    assert idle.time_parked - start.time_parked > 0.1


@tokioloop_only
def test_lateness_histogram_catches_a_blocking_callback(loop):
    from tokioloop.telemetry import LATENESS_BOUNDS

    before = loop.metrics()

    async def main():
        loop.call_later(0.001, noop)
        loop.call_soon(time.sleep, 0.08)  # runs before the timer can: it is at least 79 ms late
        await asyncio.sleep(0.1)

    loop.run_until_complete(main())
    window = loop.metrics().timer_lateness.since(before.timer_lateness)
    assert window.bounds == LATENESS_BOUNDS
    late = LATENESS_BOUNDS.index(0.05) + 1  # first bucket holding more than 50 ms
    assert sum(window.counts[late:]) >= 1
    assert window.sum >= 0.05
    assert window.quantile(1.0) > 0.05


def test_histogram_quantile_and_since():
    from tokioloop.telemetry import Histogram

    earlier = Histogram((0.1, 1.0), (1, 0, 0), 0.05)
    later = Histogram((0.1, 1.0), (1, 2, 1), 4.0)
    window = later.since(earlier)
    assert window.counts == (0, 2, 1) and window.count == 3
    assert window.quantile(0.5) == 1.0
    assert window.quantile(1.0) == float("inf")
    assert Histogram((0.1,), (0, 0), 0.0).quantile(0.5) == 0.0
    with pytest.raises(ValueError):
        window.quantile(1.5)


@tokioloop_only
def test_gauges_count_open_objects_by_kind(loop):
    release = threading.Event()

    accepted = []

    async def main():
        server = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        job = loop.run_in_executor(None, release.wait, 10)
        await asyncio.sleep(0.05)  # the server side's transport is made
        during = loop.metrics()
        release.set()
        await job
        for w in (writer, *accepted):
            w.close()
            await w.wait_closed()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)
        return during, loop.metrics()

    during, after = loop.run_until_complete(main())
    assert during.open["server"] == 1
    assert during.open["tcp"] == 2  # the client's and the server's side
    assert during.executor_jobs_in_flight == 1
    assert after.executor_jobs_in_flight == 0
    assert after.open["server"] == 0 and after.open["tcp"] == 0
    assert set(after.open) == {"tcp", "unix", "tls", "datagram", "pipe", "subprocess", "server"}


@tokioloop_only
def test_metrics_from_another_thread(loop):
    results = []

    def sample():
        results.append(loop.metrics())

    async def main():
        await asyncio.sleep(0)  # a turn or two done before the sample
        await asyncio.sleep(0)
        await asyncio.to_thread(sample)

    loop.run_until_complete(main())
    assert results and results[0].turns >= 1


@tokioloop_only
def test_slow_callback_hook_names_the_callback_and_the_task(loop):
    from tokioloop import telemetry

    reports = []
    gate = loop.create_future()

    def blocker():
        time.sleep(0.06)

    async def inner():
        time.sleep(0.06)
        await gate

    async def outer():
        await inner()

    async def main():
        telemetry.report_slow_callbacks(loop, 0.05, reports.append)
        loop.call_soon(blocker)
        loop.call_soon(noop)  # fast: not reported
        task = asyncio.ensure_future(outer())
        await asyncio.sleep(0.01)
        gate.set_result(None)
        await task
        telemetry.report_slow_callbacks(loop, None)
        loop.call_soon(blocker)  # timing is off again: not reported
        await asyncio.sleep(0.1)
        return task

    before = loop.metrics()
    task = loop.run_until_complete(main())
    after = loop.metrics()
    assert [r.callback for r in reports if r.task is None] == [blocker]
    # Timed while the threshold was set: every callback's duration, the queued handles' waits.
    durations = after.callback_duration.since(before.callback_duration)
    assert durations.count >= 3 and durations.sum >= 0.1
    assert after.ready_wait.since(before.ready_wait).count >= 2
    stepped = [r for r in reports if r.task is not None]
    assert len(stepped) == 1
    assert stepped[0].task is task
    assert stepped[0].coroutine is task.get_coro()
    assert all(r.duration >= 0.05 for r in reports)
    if sys.version_info >= (3, 14):
        assert "inner" in stepped[0].call_graph and "outer" in stepped[0].call_graph
    else:
        assert stepped[0].call_graph is None


@tokioloop_only
def test_slow_callback_hook_errors_go_to_the_exception_handler(loop):
    from tokioloop import telemetry

    contexts = []
    loop.set_exception_handler(lambda loop, context: contexts.append(context))

    def hook(report):
        raise ValueError("hook failed")

    telemetry.report_slow_callbacks(loop, 0.01, hook)
    loop.call_soon(time.sleep, 0.02)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert contexts and contexts[0]["message"] == "Exception in the slow-callback hook"
    assert isinstance(contexts[0]["exception"], ValueError)


@tokioloop_only
def test_slow_callback_arguments_are_checked(loop):
    from tokioloop import telemetry

    with pytest.raises(ValueError):
        telemetry.report_slow_callbacks(loop, 0, print)
    with pytest.raises(ValueError):
        telemetry.report_slow_callbacks(loop, -1.0, print)
    with pytest.raises(TypeError):
        telemetry.report_slow_callbacks(loop, 0.1, None)


@tokioloop_only
def test_watchdog_reports_a_stuck_loop_with_its_stack(loop):
    from tokioloop import telemetry

    reports = []

    def stuck_here():
        time.sleep(0.8)

    with telemetry.Watchdog(loop, 0.2, reports.append):
        loop.run_until_complete(asyncio.sleep(0.3))  # idle: parked, never "stuck"
        idle_reports = len(reports)
        loop.call_soon(stuck_here)
        loop.run_until_complete(asyncio.sleep(0))
    assert idle_reports == 0
    assert len(reports) == 1
    assert reports[0].loop is loop
    assert reports[0].stuck_for >= 0.2
    assert "stuck_here" in reports[0].stack


@tokioloop_only
def test_watchdog_arguments_are_checked(loop):
    from tokioloop import telemetry

    with pytest.raises(ValueError):
        telemetry.Watchdog(loop, 0, print)
    with pytest.raises(TypeError):
        telemetry.Watchdog(loop, 1.0, "print")


def test_the_stdlib_loop_is_untouched():
    import tokioloop.telemetry  # noqa: F401

    loop = asyncio.new_event_loop()
    try:
        assert not hasattr(loop, "metrics")
    finally:
        loop.close()


@tokioloop_only
def test_lateness_bounds_match_the_native_ones(loop):
    from tokioloop.telemetry import LATENESS_BOUNDS

    assert tuple(loop._metrics()["timer_lateness"]["bounds"]) == LATENESS_BOUNDS
