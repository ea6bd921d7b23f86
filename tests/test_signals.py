"""Unix signal handlers and KeyboardInterrupt (the latter in child processes)."""

import os
import select
import signal
import subprocess
import sys
import threading
import time

import pytest
from _stdlib import requires_runner

from conftest import CHILD, child_env

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Unix signals")


def test_signal_handler_called(loop):
    calls = []

    def handler(*args):
        calls.append((args, threading.get_ident()))
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, handler, "arg", 1)
    try:
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        loop.run_forever()
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert calls == [(("arg", 1), threading.get_ident())]


def test_signal_handler_wakes_idle_loop(loop):
    fut = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR2, fut.set_result, "signalled")

    def sender():
        os.kill(os.getpid(), signal.SIGUSR2)

    t = threading.Thread(target=sender)
    loop.call_soon(t.start)
    try:
        assert loop.run_until_complete(fut) == "signalled"
    finally:
        t.join()
        loop.remove_signal_handler(signal.SIGUSR2)


def test_signal_handler_called_each_time(loop):
    calls = []

    def handler():
        calls.append(1)
        if len(calls) < 3:
            os.kill(os.getpid(), signal.SIGUSR1)
        else:
            loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, handler)
    try:
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        loop.run_forever()
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    assert calls == [1, 1, 1]


def test_signal_handler_exception_goes_to_handler(loop, exc_contexts):
    def handler():
        loop.stop()
        raise ValueError("in signal handler")

    loop.add_signal_handler(signal.SIGUSR1, handler)
    try:
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        loop.run_forever()
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    assert len(exc_contexts) == 1
    ctx = exc_contexts.pop()
    assert ctx["message"].startswith("Exception in callback")
    assert isinstance(ctx["exception"], ValueError)


def test_signal_handler_replaced(loop):
    calls = []

    def second():
        calls.append("second")
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, calls.append, "first")
    loop.add_signal_handler(signal.SIGUSR1, second)
    try:
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        loop.run_forever()
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert calls == ["second"]


def test_remove_signal_handler_return_values(loop):
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    loop.add_signal_handler(signal.SIGUSR1, print)
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_remove_sigint_handler_restores_default(loop):
    loop.add_signal_handler(signal.SIGINT, print)
    assert loop.remove_signal_handler(signal.SIGINT) is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_close_removes_signal_handlers(loop_factory):
    lp = loop_factory()
    lp.add_signal_handler(signal.SIGUSR1, print)
    lp.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_invalid_signal(loop):
    with pytest.raises(ValueError):
        loop.add_signal_handler(1000, print)
    with pytest.raises(ValueError):
        loop.add_signal_handler(0, print)
    with pytest.raises(ValueError):
        loop.remove_signal_handler(1000)


def test_signal_not_int(loop):
    with pytest.raises(TypeError):
        loop.add_signal_handler("SIGUSR1", print)


def test_uncatchable_signal(loop):
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(signal.SIGKILL, print)
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(signal.SIGSTOP, print)
    assert loop.remove_signal_handler(signal.SIGKILL) is False


def test_signal_handler_rejects_coroutine_function(loop):
    async def handler():
        pass

    with pytest.raises(TypeError):
        loop.add_signal_handler(signal.SIGUSR1, handler)
    coro = handler()
    try:
        with pytest.raises(TypeError):
            loop.add_signal_handler(signal.SIGUSR1, coro)
    finally:
        coro.close()
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_signal_handler_from_other_thread_refused(loop):
    errors = []

    def worker():
        try:
            loop.add_signal_handler(signal.SIGUSR1, print)
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert len(errors) == 1
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_closed_loop_refuses_signal_handler(loop):
    loop.close()
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(signal.SIGUSR1, print)


# KeyboardInterrupt, in a child process so the test runner itself is never interrupted.

def _read_line(proc, timeout):
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 1)
        if not chunk:
            break
        buf += chunk
    return buf.decode()


def _interrupt_child(kind, scenario):
    proc = subprocess.Popen(
        [sys.executable, CHILD, kind, scenario],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(),
    )
    try:
        first = _read_line(proc, 20)
        assert first == "ready\n", (first, proc.poll())
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    except BaseException:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"child did not finish: stdout={out!r} stderr={err!r}")
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scenario", ["sigint-idle", "sigint-busy", "sigint-executor"])
def test_keyboard_interrupt_in_child(loop_kind, scenario):
    rc, out, err = _interrupt_child(loop_kind, scenario)
    assert rc == 0, (out, err)
    assert out.splitlines() == ["got KeyboardInterrupt", "running=False", "closed=True"], (out, err)


@requires_runner
@pytest.mark.timeout(60)
def test_runner_first_sigint_cancels_main_task(loop_kind):
    rc, out, err = _interrupt_child(loop_kind, "sigint-runner")
    assert rc == 0, (out, err)
    assert out.splitlines() == ["main cancelled", "got KeyboardInterrupt", "runner closed"], (out, err)
