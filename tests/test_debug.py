"""Debug mode: the flag, slow callback warnings and the extra checks it enables."""

import asyncio
import logging
import subprocess
import sys
import threading
import time

import pytest

from conftest import CHILD, child_env


def test_get_set_debug(loop):
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_set_debug_while_running(loop):
    seen = []

    def toggle():
        loop.set_debug(True)
        seen.append(loop.get_debug())
        loop.set_debug(False)
        seen.append(loop.get_debug())

    loop.call_soon(toggle)
    loop.run_until_complete(asyncio.sleep(0.001))
    assert seen == [True, False]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("env_value, expected", [("1", "debug=True"), (None, "debug=False")])
def test_debug_env_var(loop_kind, env_value, expected):
    extra = {} if env_value is None else {"PYTHONASYNCIODEBUG": env_value}
    proc = subprocess.run(
        [sys.executable, CHILD, loop_kind, "debug-flag"],
        env=child_env(**extra), capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected


def test_slow_callback_warning(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.001

    def slow():
        time.sleep(0.05)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(slow)
        loop.call_soon(loop.stop)
        loop.run_forever()
    messages = [r.getMessage() for r in caplog.records
                if r.name == "asyncio" and r.levelno == logging.WARNING]
    slow_msgs = [m for m in messages if m.startswith("Executing") and "took" in m]
    assert slow_msgs, messages
    assert "slow" in slow_msgs[0]
    assert slow_msgs[0].endswith("seconds")


def test_no_slow_callback_warning_without_debug(loop, caplog):
    loop.set_debug(False)
    loop.slow_callback_duration = 0.001
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(time.sleep, 0.02)
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert not [r for r in caplog.records if r.getMessage().startswith("Executing")]


def test_debug_coroutine_origin_tracking(loop):
    """In debug mode the loop turns on coroutine origin tracking while it runs."""
    before = sys.get_coroutine_origin_tracking_depth()
    seen = []
    loop.set_debug(True)
    loop.call_soon(lambda: seen.append(sys.get_coroutine_origin_tracking_depth()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen[0] > 0
    assert sys.get_coroutine_origin_tracking_depth() == before
    loop.set_debug(False)
    loop.call_soon(lambda: seen.append(sys.get_coroutine_origin_tracking_depth()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen[1] == before


def test_slow_callback_duration_attribute(loop):
    assert loop.slow_callback_duration == 0.1
    loop.slow_callback_duration = 0.5
    assert loop.slow_callback_duration == 0.5


def test_debug_call_soon_from_other_thread_raises(loop):
    loop.set_debug(True)
    errors = []

    def from_thread():
        for method, args in (("call_soon", (print,)),
                             ("call_later", (1, print)),
                             ("call_at", (loop.time() + 1, print))):
            try:
                getattr(loop, method)(*args)
            except RuntimeError as exc:
                errors.append((method, str(exc)))

    def in_loop():
        t = threading.Thread(target=from_thread)
        t.start()
        t.join()
        loop.stop()

    loop.call_soon(in_loop)
    loop.run_forever()
    assert [m for m, _ in errors] == ["call_soon", "call_later", "call_at"]
    for _, msg in errors:
        assert "Non-thread-safe operation" in msg


def test_debug_call_soon_threadsafe_from_other_thread_ok(loop):
    loop.set_debug(True)
    out = []

    def from_thread():
        loop.call_soon_threadsafe(out.append, "ok")

    def in_loop():
        t = threading.Thread(target=from_thread)
        t.start()
        t.join()

    loop.call_soon(in_loop)
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.run_until_complete(asyncio.sleep(0))
    assert out == ["ok"]


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later", "call_at"])
def test_debug_rejects_coroutine_function(loop, method):
    loop.set_debug(True)

    async def coro_func():
        pass

    args = {"call_soon": (), "call_soon_threadsafe": (), "call_later": (0,),
            "call_at": (loop.time(),)}[method]
    with pytest.raises(TypeError):
        getattr(loop, method)(*args, coro_func)
    coro = coro_func()
    try:
        with pytest.raises(TypeError):
            getattr(loop, method)(*args, coro)
    finally:
        coro.close()


def test_debug_rejects_non_callable(loop):
    loop.set_debug(True)
    with pytest.raises(TypeError):
        loop.call_soon(42)
    with pytest.raises(TypeError):
        loop.call_later(0, "not callable")


def test_debug_run_in_executor_rejects_coroutine_function(loop):
    loop.set_debug(True)

    async def coro_func():
        pass

    with pytest.raises(TypeError):
        loop.run_in_executor(None, coro_func)


def test_debug_mode_runs_normally(loop):
    loop.set_debug(True)

    async def main():
        await asyncio.sleep(0)
        return await loop.run_in_executor(None, sum, [1, 1])

    assert loop.run_until_complete(main()) == 2
