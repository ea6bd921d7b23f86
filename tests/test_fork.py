"""Fork safety: a loop does not survive fork(), and the child can make a working one.

The stdlib loop has no equivalent guard (using a parent's loop in a child is undefined there),
so the guard test is tokioloop's own; the fresh-loop test runs on both loops.
"""

import asyncio
import os
import sys

import pytest

from conftest import tokioloop_only

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _in_child(body):
    """Run ``body()`` in a forked child; return its exit status (0 = body returned True)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if body() else 2
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_new_loop_in_forked_child_works(loop, loop_factory):
    loop.run_until_complete(asyncio.sleep(0))

    def body():
        child_loop = loop_factory()
        try:
            return child_loop.run_until_complete(asyncio.sleep(0.01, result=7)) == 7
        finally:
            child_loop.close()

    sys.stdout.flush()
    sys.stderr.flush()
    assert _in_child(body) == 0


@tokioloop_only
def test_parent_loop_refuses_to_run_in_child(loop):
    loop.run_until_complete(asyncio.sleep(0))

    def body():
        try:
            loop.run_until_complete(asyncio.sleep(0))
        except RuntimeError as exc:
            return "fork" in str(exc)
        return False

    sys.stdout.flush()
    sys.stderr.flush()
    assert _in_child(body) == 0


def test_child_forked_inside_running_loop_runs_its_own(loop, loop_kind):
    """What ProcessPoolExecutor's fork start method does: fork from inside a callback. The
    child runs a new loop with the entry point of its kind (asyncio.run / tokioloop.run)."""
    import tokioloop

    run = asyncio.run if loop_kind == "asyncio" else tokioloop.run

    async def child_work():
        await asyncio.sleep(0.01)
        return 5

    async def main():
        sys.stdout.flush()
        sys.stderr.flush()
        return _in_child(lambda: run(child_work()) == 5)

    assert loop.run_until_complete(main()) == 0


def test_parent_keeps_its_fds_when_child_discards_its_copy(loop, loop_kind):
    """The child shares the parent's epoll instance: whatever it does with its copy of the
    parent's loop must not unregister the parent's fds."""
    r, w = os.pipe()
    try:
        fired = []
        loop.add_reader(r, lambda: fired.append(os.read(r, 1)))

        def body():
            try:
                loop.close()  # tokioloop: allowed in the child; asyncio: the loop is "running"
            except RuntimeError:
                pass
            return True

        async def main():
            sys.stdout.flush()
            sys.stderr.flush()
            assert _in_child(body) == 0
            os.write(w, b"x")
            for _ in range(200):
                if fired:
                    return fired
                await asyncio.sleep(0.01)
            return fired

        assert loop.run_until_complete(main()) == [b"x"]
        loop.remove_reader(r)
    finally:
        os.close(r)
        os.close(w)


@tokioloop_only
def test_forked_worker_exits(loop_kind):
    """A worker forked from a running loop that leaves with sys.exit finalizes and exits.

    tokioloop-only: on the stdlib loop this program hangs, in the parent. The worker's
    ``loop.close()`` of its copy of the parent's loop unregisters the self-pipe from the epoll
    instance the two processes share, so the parent never hears its executor's wake-up
    (seen on 3.11 with py-spy). tokioloop's child never deregisters the parent's fds."""
    import subprocess

    child = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_child.py")
    proc = subprocess.run(
        [sys.executable, child, loop_kind, "fork-worker"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    if sys.version_info >= (3, 14):
        # 3.14's C task step checks, when it ends, that its loop is the thread's running
        # loop; in a child forked from inside the step, the running loop was reset at the
        # fork, so the worker's sys.exit is replaced by asyncio's RuntimeError (the stdlib
        # loop's worker shows the same) and the worker does not exit 0.
        assert "is not the running loop" in proc.stderr, proc.stderr
        assert "worker exit 1" in proc.stdout, (proc.stdout, proc.stderr)
    else:
        assert "worker exit 0" in proc.stdout, (proc.stdout, proc.stderr)
