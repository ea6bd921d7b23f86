"""Subprocess lifetimes: wait(), communicate(), signals, close() and cancellation.

The stdlib loop is the oracle; where asyncio changed between versions the test says so:
* 3.10's ``wait()`` resolves at the exit; 3.11+ waits for the exit *and* every pipe's EOF
  (base_subprocess moved the waiter wake-up into ``_call_connection_lost``);
* ``communicate()`` without input closes stdin from 3.12 only (gh-83925), so that case is
  tested on 3.12+ (on older versions it hangs a child that reads stdin; not tested);
* the stdlib's child watcher is a waitpid thread per child before 3.12 and a pidfd from 3.12
  (gh-98023), which decides who wins when the test reaps a child itself.
The grandchild tests gate the grandchild on pipes the test controls, so that what they assert
does not depend on timing (gh-119710 is the timing-dependent part, not asserted).
"""

import asyncio
import asyncio.base_subprocess
import gc
import inspect
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from _proc import (
    RecordingProtocol,
    child_pids,
    eventually,
    is_unreaped_child,
    no_leftover_children,  # noqa: F401 (autouse fixture)
    open_fds,
    run,
    sh,
)

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL

# 3.10's BaseSubprocessTransport wakes wait() in _process_exited; 3.11 moved it to
# _call_connection_lost (exit and all pipes closed); gh-119710 (3.14, and backports) moved it
# back to _process_exited. Both loops use asyncio's BaseSubprocessTransport, so its
# _process_exited says which applies.
WAIT_RETURNS_AT_EXIT = sys.version_info < (3, 11) or "_exit_waiters" in inspect.getsource(
    asyncio.base_subprocess.BaseSubprocessTransport._process_exited
)


def stdlib_watches_with_pidfd():
    """3.12+ use PidfdChildWatcher where pidfd_open works (gh-98023); older versions use
    ThreadedChildWatcher, a thread blocked in waitpid(pid) per child."""
    can = getattr(asyncio.unix_events, "can_use_pidfd", None)
    return sys.version_info >= (3, 12) and can is not None and can()


async def sleeper(**kwargs):
    return await asyncio.create_subprocess_exec("/bin/sleep", "30", **kwargs)


def drop_unretrieved_broken_pipe_310(loop, exc_contexts):
    """3.10's Process leaves a BrokenPipeError set on its stdin-closed future unretrieved, and
    the future's __del__ reports it to the exception handler (3.11 marks that future as not
    to be logged). Whether the error lands on that future depends on when the child's exit
    closes the pipe, so zero or more reports are accepted. That is the stdlib's Process class, on either loop: let the loop finish its
    pending callbacks, collect, and remove those reports on 3.10."""
    run(loop, asyncio.sleep(0.05))
    gc.collect()
    if sys.version_info >= (3, 11):
        return
    unretrieved = [c for c in exc_contexts if c.get("message") == "Future exception was never retrieved"]
    assert all(isinstance(c.get("exception"), BrokenPipeError) for c in unretrieved), unretrieved
    for c in unretrieved:
        exc_contexts.remove(c)


# -- returncodes and signals ----------------------------------------------------------------

@pytest.mark.parametrize(
    "how, expected",
    [("kill", -signal.SIGKILL), ("terminate", -signal.SIGTERM), ("send_signal", -signal.SIGUSR1)],
)
def test_signal_returncodes(loop, how, expected):
    async def main():
        proc = await sleeper()
        assert proc.returncode is None
        if how == "send_signal":
            proc.send_signal(signal.SIGUSR1)
        else:
            getattr(proc, how)()
        return await proc.wait()

    assert run(loop, main()) == expected


def test_exit_status(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(*sh("exit 42"))
        return await proc.wait(), proc.returncode

    assert run(loop, main()) == (42, 42)


def test_signals_after_connection_lost_raise_process_lookup_error(loop):
    async def main():
        transport, proto = await loop.subprocess_exec(
            lambda: RecordingProtocol(loop), "/bin/true", stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL
        )
        try:
            assert await proto.done is None
            assert transport.get_returncode() == 0
            assert not transport.is_closing()  # a natural exit does not close the transport
            for call in (lambda: transport.send_signal(signal.SIGTERM), transport.terminate, transport.kill):
                with pytest.raises(ProcessLookupError):
                    call()
        finally:
            transport.close()
        assert transport.is_closing()
        transport.close()  # idempotent
        assert transport.get_returncode() == 0

    run(loop, main())


def test_close_kills_a_running_child(loop):
    async def main():
        transport, proto = await loop.subprocess_exec(lambda: RecordingProtocol(loop), "/bin/sleep", "30")
        assert not transport.is_closing()
        transport.close()
        assert transport.is_closing()
        assert await proto.exited == -signal.SIGKILL
        assert await proto.done is None
        assert proto.kinds().count("lost") == 1
        assert sorted(e[1] for e in proto.events if e[0] == "pipe_lost") == [0, 1, 2]

    run(loop, main())


def test_close_after_exit_sends_no_kill(loop):
    async def main():
        # Exit noticed first: close() changes nothing.
        transport, proto = await loop.subprocess_exec(lambda: RecordingProtocol(loop), *sh("exit 5"))
        assert await proto.exited == 5
        transport.close()
        await proto.done
        assert transport.get_returncode() == 5

        # Exited but not yet noticed (a zombie the watcher has not reaped): still no SIGKILL.
        # The stdlib's close() calls Popen.poll(), which may reap the zombie first; its
        # watcher then reports 255 (status lost, as with gh-87744). Either way, not -9.
        transport, proto = await loop.subprocess_exec(
            lambda: RecordingProtocol(loop), *sh("exit 5"), stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL
        )
        pid = transport.get_pid()
        for _ in range(1000):  # blocking: the loop must not notice the exit meanwhile
            if not is_unreaped_child(pid):
                break  # a watcher thread (3.10/3.11) got it
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break  # a zombie now
            time.sleep(0.002)
        transport.close()
        await proto.done
        assert transport.get_returncode() in (5, 255)

    run(loop, main())


def test_child_ignoring_sigterm_needs_kill(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            *sh("trap '' TERM; echo ready; exec /bin/sleep 30"), stdout=PIPE
        )
        assert await proc.stdout.readline() == b"ready\n"
        waiter = asyncio.ensure_future(proc.wait())
        proc.terminate()
        done, _ = await asyncio.wait([waiter], timeout=0.3)
        assert not done and proc.returncode is None  # SIGTERM was ignored (also by exec'd sleep)
        proc.kill()
        return await waiter

    assert run(loop, main()) == -signal.SIGKILL


# -- wait() -----------------------------------------------------------------------------------

def test_concurrent_waits_all_get_the_returncode(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(*sh("read x; exit 9"), stdin=PIPE)
        waits = [asyncio.ensure_future(proc.wait()) for _ in range(10)]
        await asyncio.sleep(0.01)
        assert not any(w.done() for w in waits)
        proc.stdin.write(b"go\n")
        return await asyncio.gather(*waits), await proc.wait()

    rcs, again = run(loop, main())
    assert rcs == [9] * 10 and again == 9


def test_wait_after_the_exit_is_known_returns_at_once(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec("/bin/true")
        assert await proc.wait() == 0
        late = asyncio.ensure_future(proc.wait())
        await asyncio.sleep(0)
        assert late.done()
        return late.result()

    assert run(loop, main()) == 0


@pytest.fixture
def gates():
    """Two pipes whose read ends a child and its grandchild block on; writing a line to
    ``release(n)`` lets waiter n go. Closing at teardown releases anything left waiting."""
    pipes = [os.pipe(), os.pipe()]

    class Gates:
        read_fds = tuple(r for r, _ in pipes)

        @staticmethod
        def release(n):
            os.write(pipes[n][1], b"go\n")

    yield Gates
    for r, w in pipes:
        os.close(r)
        os.close(w)


# The child waits for gate 0, starts a grandchild holding stdout until gate 1, says "early"
# and exits; the grandchild then says "late" and exits, closing the pipe.
def _grandchild_script(gates):
    g0, g1 = gates.read_fds
    # (dash's redirections take one-digit fds only, so the gates are opened through /proc.)
    return sh(f"read a </proc/self/fd/{g0}; (read b </proc/self/fd/{g1}; echo late) & echo early")


def test_grandchild_holding_stdout_wait(loop, gates):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            *_grandchild_script(gates), stdin=DEVNULL, stdout=PIPE, pass_fds=gates.read_fds
        )
        first = asyncio.ensure_future(proc.wait())
        await asyncio.sleep(0.01)
        assert not first.done()
        gates.release(0)
        await eventually(lambda: proc.returncode is not None, what="the child's exit")
        assert proc.returncode == 0
        if WAIT_RETURNS_AT_EXIT:
            await eventually(first.done, what="wait() at exit")
        else:
            for _ in range(5):
                await asyncio.sleep(0)
            assert not first.done()  # 3.11+: waits for the grandchild's pipe EOF too
        # Once the exit is known, a new wait() returns at once.
        second = asyncio.ensure_future(proc.wait())
        await asyncio.sleep(0)
        assert second.done() and second.result() == 0
        # Between exit and connection_lost, signals neither raise nor change the status.
        proc.send_signal(signal.SIGTERM)
        proc.terminate()
        gates.release(1)
        assert await first == 0
        return await proc.stdout.read(), proc.returncode

    assert run(loop, main()) == (b"early\nlate\n", 0)


def test_grandchild_holding_stdout_communicate(loop, gates):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            *_grandchild_script(gates), stdin=DEVNULL, stdout=PIPE, pass_fds=gates.read_fds
        )
        talk = asyncio.ensure_future(proc.communicate())
        gates.release(0)
        await eventually(lambda: proc.returncode is not None, what="the child's exit")
        for _ in range(5):
            await asyncio.sleep(0)
        assert not talk.done()  # it reads stdout to EOF, which the grandchild holds back
        gates.release(1)
        return await talk, proc.returncode

    assert run(loop, main()) == ((b"early\nlate\n", None), 0)


def test_grandchild_holding_stdout_callback_order(loop, gates):
    async def main():
        transport, proto = await loop.subprocess_exec(
            lambda: RecordingProtocol(loop), *_grandchild_script(gates),
            stdin=DEVNULL, stderr=DEVNULL, pass_fds=gates.read_fds,
        )
        try:
            gates.release(0)
            assert await proto.exited == 0
            await asyncio.sleep(0.05)
            assert ("pipe_lost", 1, None) not in proto.events and not proto.done.done()
            gates.release(1)
            assert await proto.done is None
        finally:
            transport.close()
        return proto

    proto = run(loop, main())
    kinds = proto.kinds()
    assert [k for k in kinds if k != "data"] == ["made", "exited", "pipe_lost", "lost"]
    # "late" is written only after the exit was reported: some data follows process_exited.
    assert kinds.index("exited") < len(kinds) - 1 - kinds[::-1].index("data")
    assert proto.data[1] == b"early\nlate\n"


# -- communicate() ----------------------------------------------------------------------------

def test_communicate_through_cat(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec("/bin/cat", stdin=PIPE, stdout=PIPE, stderr=PIPE)
        return await proc.communicate(b"hello\x00world"), proc.returncode

    assert run(loop, main()) == ((b"hello\x00world", b""), 0)


def test_communicate_empty_input_closes_stdin(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(*sh("cat; echo eof"), stdin=PIPE, stdout=PIPE)
        return await proc.communicate(b"")

    assert run(loop, main()) == (b"eof\n", None)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="communicate() closes stdin without input from 3.12 (gh-83925)")
def test_communicate_without_input_closes_stdin(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(*sh("cat; echo eof"), stdin=PIPE, stdout=PIPE)
        return await proc.communicate()

    assert run(loop, main()) == (b"eof\n", None)


def test_communicate_ignores_broken_pipe(loop, exc_contexts):
    async def main():
        # The child exits without reading: feeding 4 MiB meets EPIPE, which is ignored.
        proc = await asyncio.create_subprocess_exec(*sh("echo bye"), stdin=PIPE, stdout=PIPE)
        return await proc.communicate(b"x" * (4 << 20)), proc.returncode

    assert run(loop, main()) == ((b"bye\n", None), 0)
    drop_unretrieved_broken_pipe_310(loop, exc_contexts)


def test_ten_mib_both_ways_through_cat(loop):
    data = os.urandom(10 << 20)

    async def main():
        proc = await asyncio.create_subprocess_exec("/bin/cat", stdin=PIPE, stdout=PIPE)
        out, err = await proc.communicate(data)
        return out, err, proc.returncode

    out, err, rc = run(loop, main(), timeout=60)
    assert (len(out), err, rc) == (len(data), None, 0)
    assert out == data


def test_small_limit_pauses_and_resumes_reading(loop):
    data = bytes(range(256)) * 4096  # 1 MiB

    async def main():
        proc = await asyncio.create_subprocess_exec("/bin/cat", stdin=PIPE, stdout=PIPE, limit=4096)

        async def feed():
            proc.stdin.write(data)
            await proc.stdin.drain()
            proc.stdin.close()

        feeder = asyncio.ensure_future(feed())
        await asyncio.sleep(0.05)  # let the reader's buffer pass its limit and pause the pipe
        chunks = []
        while True:
            chunk = await proc.stdout.read(1000)
            if not chunk:
                break
            chunks.append(chunk)
        await feeder
        return b"".join(chunks), await proc.wait()

    assert run(loop, main()) == (data, 0)


# -- cancellation and reaping ---------------------------------------------------------------

def test_cancel_create_subprocess_leaves_nothing(loop):
    async def main():
        outcomes = []
        for turns in range(6):
            kids = child_pids()
            task = asyncio.ensure_future(sleeper(stdin=PIPE, stdout=PIPE, stderr=PIPE))
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            try:
                proc = await asyncio.wait_for(asyncio.shield(task), 10)
            except asyncio.CancelledError:
                outcomes.append("cancelled")
                assert child_pids() == kids, f"cancelled after {turns} turns left a child"
            else:
                outcomes.append("created")  # setup finished before the cancel landed
                proc.kill()
                await proc.wait()
        return outcomes

    run(loop, main())  # warm-up for the fd count
    fds = open_fds()
    outcomes = run(loop, main())
    assert outcomes[0] == "cancelled" and outcomes.count("cancelled") >= 2, outcomes
    run(loop, eventually(lambda: open_fds() == fds, what="fds back to the baseline"))


@pytest.mark.parametrize("what", ["wait", "communicate"])
def test_cancel_wait_or_communicate_then_reap(loop, exc_contexts, what):
    async def main():
        # sleep never reads: communicate() blocks feeding stdin once the pipe is full.
        proc = await sleeper(stdin=PIPE, stdout=PIPE, stderr=PIPE)
        if what == "wait":
            task = asyncio.ensure_future(proc.wait())
        else:
            task = asyncio.ensure_future(proc.communicate(b"y" * (1 << 20)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert proc.returncode is None  # cancelling does not touch the child
        proc.kill()
        assert await proc.wait() == -signal.SIGKILL
        return proc.pid

    run(loop, main())  # warm-up for the fd count
    fds = open_fds()
    pid = run(loop, main())
    assert not is_unreaped_child(pid)
    run(loop, eventually(lambda: open_fds() == fds, what="fds back to the baseline"))
    drop_unretrieved_broken_pipe_310(loop, exc_contexts)


def test_child_reaped_by_someone_else_reports_255(loop, loop_kind, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")
    # A pidfd watcher notices the exit only when the loop runs, so a blocking waitpid in the
    # loop's thread always wins; a waitpid thread (stdlib before 3.12) races it.
    deterministic = loop_kind == "tokioloop" or stdlib_watches_with_pidfd()

    async def main():
        r, w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(*sh("read x; exit 3"), stdin=r)
            os.write(w, b"go\n")
            try:
                os.waitpid(proc.pid, 0)
                stolen = True
            except ChildProcessError:
                stolen = False
            return proc.pid, stolen, await proc.wait()
        finally:
            os.close(r)
            os.close(w)

    pid, stolen, rc = run(loop, main())
    if deterministic:
        assert stolen
    assert rc == (255 if stolen else 3)
    if stolen:
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(str(pid) in m and "255" in m for m in warned), warned


@pytest.mark.parametrize("sender", ["callback", "thread"])
def test_ctrl_c_while_awaiting_wait(loop, sender):
    proc = run(loop, sleeper())
    waiter = loop.create_task(proc.wait())
    helper = None
    if sender == "callback":
        loop.call_later(0.05, signal.raise_signal, signal.SIGINT)
    else:
        main_thread = threading.main_thread().ident
        helper = threading.Timer(0.1, signal.pthread_kill, (main_thread, signal.SIGINT))
        helper.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(waiter)
    finally:
        if helper is not None:
            helper.join()
    assert not waiter.done() and proc.returncode is None
    proc.kill()
    assert run(loop, waiter) == -signal.SIGKILL
    assert not is_unreaped_child(proc.pid)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_spawn_from_a_forked_child(loop, loop_factory):
    # A process forked while this loop runs makes a loop of the same kind and spawns from
    # it (CPython's TestFork.test_fork_asyncio_subprocess does it through multiprocessing).
    # The child reports a failure's repr through a pipe, so the assertion shows it.
    async def main():
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the forked child: never return into pytest
            status = 99
            try:
                child_loop = loop_factory()
                try:
                    proc = child_loop.run_until_complete(asyncio.create_subprocess_exec(*sh("exit 7")))
                    status = child_loop.run_until_complete(asyncio.wait_for(proc.wait(), 10))
                finally:
                    child_loop.close()
            except BaseException as exc:
                os.write(w, repr(exc).encode()[:500])
            finally:
                os._exit(status)
        os.close(w)
        try:
            rc = await reap(pid)
            return rc, os.read(r, 1000).decode()
        finally:
            os.close(r)

    async def reap(pid):
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.01)

    assert run(loop, main()) == (7, "")
