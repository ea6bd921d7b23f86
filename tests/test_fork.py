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
