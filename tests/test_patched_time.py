"""A ``time`` patched on the loop instance decides when timers are due, as on asyncio.

Test suites (aiohttp's keep-alive and timeout tests among them) freeze or move the loop's clock
with ``mock.patch.object(loop, "time")``; asyncio reads ``self.time()`` for ``call_later`` and
for each iteration's due check, so the patched clock governs. Unpatched, the native clock is
used again.
"""

import threading
from unittest import mock


def run_briefly(loop):
    loop.call_soon(loop.stop)
    loop.run_forever()


def test_call_later_and_due_check_follow_the_patched_clock(loop):
    fired = []
    with mock.patch.object(loop, "time", return_value=1000.0):
        assert loop.time() == 1000.0
        handle = loop.call_later(10, fired.append, "late")
        assert handle.when() == 1010.0
        run_briefly(loop)
        assert fired == []
        loop.time.return_value = 1010.5
        run_briefly(loop)
        assert fired == ["late"]
    # The method again, and the native clock with it.
    assert "time" not in vars(loop)
    assert abs(loop.time() - 1000.0) > 1
    loop.call_later(0, fired.append, "now")
    run_briefly(loop)
    run_briefly(loop)
    assert fired == ["late", "now"]


def test_a_frozen_clock_keeps_a_timer_from_firing(loop):
    fired = []
    stopper = threading.Timer(0.2, loop.call_soon_threadsafe, (loop.stop,))
    with mock.patch.object(loop, "time", return_value=50.0):
        loop.call_later(0.01, fired.append, "never")
        stopper.start()
        try:
            loop.run_forever()
        finally:
            stopper.join()
    assert fired == []


def test_patched_clock_moving_past_a_timer_wakes_the_parked_loop(loop):
    now = [0.0]
    fired = []
    with mock.patch.object(loop, "time", side_effect=lambda: now[0]):
        loop.call_later(5.0, fired.append, "t")
        # Real time passes; only the patched clock's jump makes the timer due.
        loop.call_later(0.0, lambda: now.__setitem__(0, 6.0))
        loop.call_later(5.0, loop.stop)
        loop.run_forever()
    assert fired == ["t"]
