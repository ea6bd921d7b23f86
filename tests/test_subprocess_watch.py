"""How a child's exit is noticed, and what that must leave alone.

tokioloop watches each child through a pidfd registered with the loop's reactor and reaps it
with ``waitid(P_PIDFD)``; where pidfds are refused it waits in a thread with ``waitpid(pid)``.
Either way (and on the stdlib loop, whose watchers are pidfd-based from 3.12 and thread-based
before), the rest of the process is untouched: a child started outside asyncio stays its
owner's to reap, and a SIGCHLD handler the application installed keeps being called.
"""

import asyncio
import os
import signal
import subprocess
import threading

import pytest

from _proc import TIMEOUT, no_leftover_children, run, sh  # noqa: F401
from conftest import tokioloop_only


def test_child_started_outside_asyncio_stays_its_owners(loop):
    outsider = subprocess.Popen(sh("exit 7"))
    try:
        async def main():
            proc = await asyncio.create_subprocess_exec(*sh("exit 3"))
            return await proc.wait()

        assert run(loop, main()) == 3
        # Nothing in the loop reaped the other child: its owner still gets its status.
        assert outsider.wait(timeout=TIMEOUT) == 7
    finally:
        if outsider.returncode is None:
            outsider.kill()
            outsider.wait()


def test_application_sigchld_handler_keeps_working(loop):
    calls = []
    previous = signal.signal(signal.SIGCHLD, lambda signum, frame: calls.append(signum))
    try:
        async def main():
            proc = await asyncio.create_subprocess_exec(*sh("exit 4"))
            code = await proc.wait()
            # The handler runs in the main thread between bytecodes; give it a turn.
            for _ in range(100):
                if calls:
                    break
                await asyncio.sleep(0.01)
            return code

        assert run(loop, main()) == 4
        assert calls and set(calls) == {signal.SIGCHLD}
        assert signal.getsignal(signal.SIGCHLD) is not previous
    finally:
        signal.signal(signal.SIGCHLD, previous)


@tokioloop_only
def test_exit_is_watched_through_a_pidfd(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(*sh("read line; exit 0"), stdin=subprocess.PIPE)
        pidfd = proc._transport._pidfd
        assert pidfd is not None
        assert os.readlink(f"/proc/self/fd/{pidfd}") == "anon_inode:[pidfd]"
        proc.stdin.close()
        assert await proc.wait() == 0
        assert proc._transport._pidfd is None  # closed once the child was reaped
        return pidfd

    pidfd = run(loop, main())
    assert not os.path.exists(f"/proc/self/fd/{pidfd}") or (
        os.readlink(f"/proc/self/fd/{pidfd}") != "anon_inode:[pidfd]"
    )


@tokioloop_only
def test_without_pidfd_a_thread_waits_for_each_child(loop, monkeypatch):
    import tokioloop._subprocess as watch

    monkeypatch.setattr(watch, "_pidfd_works", False)

    async def main():
        procs = [await asyncio.create_subprocess_exec(*sh(f"exit {n}")) for n in range(5)]
        killed = await asyncio.create_subprocess_exec(*sh("sleep 30"))
        assert killed._transport._pidfd is None
        killed.kill()
        codes = [await p.wait() for p in procs]
        return codes, await killed.wait()

    codes, killed_code = run(loop, main())
    assert codes == [0, 1, 2, 3, 4]
    assert killed_code == -signal.SIGKILL


@tokioloop_only
def test_signals_go_through_the_pidfd(loop, monkeypatch):
    sent = []
    real = signal.pidfd_send_signal
    monkeypatch.setattr(signal, "pidfd_send_signal",
                        lambda fd, sig, *a: (sent.append(sig), real(fd, sig, *a))[1])

    async def main():
        proc = await asyncio.create_subprocess_exec(*sh("sleep 30"))
        proc.terminate()
        return await proc.wait()

    assert run(loop, main()) == -signal.SIGTERM
    assert sent == [signal.SIGTERM]


def test_signals_arriving_during_spawns(loop):
    """A signal handled by the loop keeps arriving while children are spawned and reaped:
    no spawn fails with EINTR, every child is reaped, every signal reaches the handler."""
    received = []
    loop.add_signal_handler(signal.SIGUSR1, received.append, "usr1")
    stop = threading.Event()

    def pester():
        while not stop.is_set():
            os.kill(os.getpid(), signal.SIGUSR1)
            stop.wait(0.001)

    async def main():
        codes = []
        for n in range(30):
            proc = await asyncio.create_subprocess_exec(*sh(f"exit {n % 7}"))
            codes.append(await proc.wait())
        return codes

    thread = threading.Thread(target=pester)
    thread.start()
    try:
        codes = run(loop, main())
    finally:
        stop.set()
        thread.join()
        run(loop, asyncio.sleep(0.05))
        loop.remove_signal_handler(signal.SIGUSR1)
    assert codes == [n % 7 for n in range(30)]
    assert received and set(received) == {"usr1"}
