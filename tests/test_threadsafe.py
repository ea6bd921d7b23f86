"""call_soon_threadsafe and cooperation with other Python threads."""

import asyncio
import sys
import threading
import time

import pytest

THREADS = 8
PER_THREAD = 100_000


@pytest.mark.timeout(120)
def test_threadsafe_flood_nothing_lost_order_kept(loop):
    received = []
    done = loop.create_future()
    remaining = [THREADS]
    start = threading.Event()

    def finished():
        remaining[0] -= 1
        if remaining[0] == 0:
            done.set_result(None)

    def producer(tid):
        start.wait()
        call = loop.call_soon_threadsafe
        append = received.append
        for i in range(PER_THREAD):
            call(append, (tid, i))
        call(finished)

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    loop.call_soon(start.set)
    try:
        loop.run_until_complete(done)
    finally:
        start.set()
        for t in threads:
            t.join()
    assert len(received) == THREADS * PER_THREAD
    per_thread = [[] for _ in range(THREADS)]
    for tid, i in received:
        per_thread[tid].append(i)
    for seq in per_thread:
        assert seq == list(range(PER_THREAD))


def test_threadsafe_returns_handle(loop):
    out = []
    h = loop.call_soon_threadsafe(out.append, 1)
    assert callable(h.cancel) and not h.cancelled()
    h2 = loop.call_soon_threadsafe(out.append, 2)
    h2.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == [1]


def test_threadsafe_from_thread_before_run(loop):
    out = []
    t = threading.Thread(target=loop.call_soon_threadsafe, args=(out.append, "x"))
    t.start()
    t.join()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ["x"]


def test_threadsafe_wakes_idle_loop(loop):
    """The loop has nothing to do but wait; only the other thread's call can wake it."""
    order = []
    fut = loop.create_future()
    go = threading.Event()

    def other():
        go.wait(10)
        loop.call_soon_threadsafe(fut.set_result, "from thread")
        loop.call_soon_threadsafe(order.append, "thread callback")

    def watchdog():
        order.append("watchdog")
        if not fut.done():
            fut.set_result("watchdog")

    t = threading.Thread(target=other)
    t.start()
    loop.call_soon(go.set)
    # A hang guard, not a timing claim: far longer than any wake-up may take.
    guard = loop.call_later(15, watchdog)
    try:
        result = loop.run_until_complete(fut)
    finally:
        go.set()
        t.join()
        guard.cancel()
    assert result == "from thread"
    loop.run_until_complete(asyncio.sleep(0))
    assert order == ["thread callback"]


def test_threadsafe_wakes_loop_waiting_on_far_timer(loop):
    fut = loop.create_future()
    far = loop.call_later(3600, fut.set_result, "timer")

    def other():
        loop.call_soon_threadsafe(fut.set_result, "thread")

    loop.call_soon(lambda: threading.Thread(target=other).start())
    try:
        assert loop.run_until_complete(fut) == "thread"
    finally:
        far.cancel()


def test_other_thread_progresses_while_loop_sleeps(loop):
    counter = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            counter[0] += 1

    async def main():
        t = threading.Thread(target=count)
        t.start()
        try:
            before = counter[0]
            await asyncio.sleep(0.3)
            after = counter[0]
        finally:
            stop.set()
            t.join()
        return before, after

    before, after = loop.run_until_complete(main())
    assert after > before


def test_other_thread_progresses_while_loop_waits_on_executor(loop):
    """The loop thread waits (GIL released) while a worker needs the GIL to finish."""

    def cpu_work():
        total = 0
        for i in range(200_000):
            total += i
        return total

    async def main():
        return await asyncio.gather(*[loop.run_in_executor(None, cpu_work) for _ in range(4)])

    assert loop.run_until_complete(main()) == [sum(range(200_000))] * 4


def test_future_completed_from_thread(loop):
    async def main():
        fut = loop.create_future()

        def worker():
            loop.call_soon_threadsafe(fut.set_result, threading.get_ident())

        t = threading.Thread(target=worker)
        t.start()
        try:
            return await fut
        finally:
            t.join()

    assert loop.run_until_complete(main()) != threading.get_ident()


def test_run_coroutine_threadsafe(loop):
    results = []

    async def square(x):
        await asyncio.sleep(0)
        return x * x

    def worker():
        cfut = asyncio.run_coroutine_threadsafe(square(7), loop)
        results.append(cfut.result(timeout=30))
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=worker)
    loop.call_soon(t.start)
    loop.run_forever()
    t.join()
    assert results == [49]


def test_threadsafe_after_close_raises(loop):
    loop.close()
    errors = []

    def worker():
        try:
            loop.call_soon_threadsafe(print)
        except RuntimeError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert errors == ["Event loop is closed"]


# gh-128340 (3.14): call_soon_threadsafe returns asyncio.events._ThreadSafeHandle, whose lock
# makes cancel() and cancelled() from another thread wait for a callback that is running.
_LOCKED_HANDLES = hasattr(asyncio.events, "_ThreadSafeHandle")
requires_locked_handles = pytest.mark.skipif(
    not _LOCKED_HANDLES, reason="this Python's call_soon_threadsafe handles have no lock (3.14+)"
)


def test_threadsafe_handle_type_follows_version(loop):
    handle = loop.call_soon_threadsafe(lambda: None)
    try:
        if _LOCKED_HANDLES:
            assert isinstance(handle, asyncio.events._ThreadSafeHandle)
        else:
            assert not handle.cancelled()
    finally:
        handle.cancel()
    loop.run_until_complete(asyncio.sleep(0))


@requires_locked_handles
@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", ["cancel", "cancelled"])
def test_threadsafe_cancel_from_other_thread_waits_for_running_callback(loop, call):
    started = threading.Event()
    finished = threading.Event()
    seen = []

    def callback():
        started.set()
        # Gives the other thread every chance to get past cancel() if it did not wait.
        finished.wait(0.2)
        finished.set()

    def other():
        handle = loop.call_soon_threadsafe(callback)
        started.wait()
        result = getattr(handle, call)()
        seen.append((result, finished.is_set()))
        loop.call_soon_threadsafe(loop.stop)

    thread = threading.Thread(target=other)
    thread.start()
    loop.run_forever()
    thread.join()
    # cancel() returned only once the callback had finished; cancelled() said False.
    assert seen == [(None if call == "cancel" else False, True)]


@pytest.mark.timeout(60)
def test_threadsafe_cancel_from_other_thread_before_run(loop):
    ran = []
    cancelled = threading.Event()

    def other():
        handle = loop.call_soon_threadsafe(ran.append, "ran")
        handle.cancel()
        assert handle.cancelled()
        cancelled.set()
        loop.call_soon_threadsafe(loop.stop)

    # The loop is held in a callback until the other thread has queued and cancelled.
    loop.call_soon(cancelled.wait)
    thread = threading.Thread(target=other)
    thread.start()
    loop.run_forever()
    thread.join()
    assert ran == []


@pytest.mark.timeout(60)
def test_threadsafe_cancel_in_own_callback_same_thread(loop):
    holder = []
    ran = []

    def callback():
        holder[0].cancel()  # same thread: no wait, the running callback goes on
        ran.append(holder[0].cancelled())

    holder.append(loop.call_soon_threadsafe(callback))
    loop.run_until_complete(asyncio.sleep(0))
    assert ran == [True]


def test_threadsafe_callback_error_reported(loop, exc_contexts):
    def boom():
        raise ZeroDivisionError

    handle = loop.call_soon_threadsafe(boom)
    loop.run_until_complete(asyncio.sleep(0))
    assert len(exc_contexts) == 1
    context = exc_contexts[0]
    assert context["message"].startswith("Exception in callback ")
    assert isinstance(context["exception"], ZeroDivisionError)
    assert context["handle"] is handle
    exc_contexts.clear()


def test_threadsafe_debug_traceback_ends_at_caller(loop):
    loop.set_debug(True)

    def schedule_here():
        return loop.call_soon_threadsafe(lambda: None)

    handle = schedule_here()
    frame = handle._source_traceback[-1]
    assert frame.name == "schedule_here"
    loop.run_until_complete(asyncio.sleep(0))


def test_debug_mode_call_soon_threadsafe_as_a_threads_first_call(loop):
    """A thread whose first call is the bound method itself (no Python frame under it, as on a
    Rust extension's worker thread) schedules a callback in debug mode: it runs, nothing is
    raised (tokioloop's debug-mode source traceback once raised ValueError there)."""
    import _thread

    loop.set_debug(True)
    ran = threading.Event()
    unraisable = []
    previous_hook = sys.unraisablehook
    # A failure in the thread is only reported as unraisable: collected, it ends the wait.
    sys.unraisablehook = lambda report: unraisable.append(f"{report.exc_type.__name__}: "
                                                         f"{report.exc_value}")
    try:
        _thread.start_new_thread(loop.call_soon_threadsafe, (ran.set,))

        async def main():
            deadline = time.monotonic() + 10
            while not (ran.is_set() or unraisable):
                assert time.monotonic() < deadline, "neither ran nor failed"
                await asyncio.sleep(0.001)

        loop.run_until_complete(main())
    finally:
        sys.unraisablehook = previous_hook
    assert not unraisable
    assert ran.is_set()
