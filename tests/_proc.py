"""Helpers for the subprocess and pipe tests (test_subprocess*.py, test_pipes.py).

* Child programs: ``sh(script)`` and ``py(code)`` build argv lists; ``/bin/sh`` starts in about
  a millisecond, ``sys.executable -c`` in tens, so the shell is preferred where it can say the
  same thing.
* ``run(loop, coro)``: ``run_until_complete`` with a timeout, so a hang fails instead of
  waiting for pytest-timeout.
* ``child_pids()``: the live and zombie children of this process (from /proc), to check that a
  test reaped everything it started; ``open_fds()``: this process's open fd numbers.
* ``no_leftover_children`` (autouse where imported): kills and reaps any child a test left
  behind (including zombies) and fails the test if there was one.
* ``eventually(predicate)``: await a condition with a deadline (outcomes, not timings).
"""

import asyncio
import os
import signal
import sys
import time

import pytest

PY = sys.executable
SH = "/bin/sh"
TIMEOUT = 20.0


def sh(script, *args):
    """argv running ``script`` with /bin/sh; ``args`` become $0, $1..."""
    return [SH, "-c", script, *(args or ("sh",))]


def py(code, *args):
    """argv running ``code`` with this interpreter (isolated from the user's site and env)."""
    return [PY, "-I", "-c", code, *args]


def run(loop, coro, timeout=TIMEOUT):
    """Run ``coro`` on ``loop`` to completion, failing with TimeoutError after ``timeout``."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


async def eventually(predicate, timeout=5.0, what="condition"):
    """Await until ``predicate()`` is true; fail if it is still false after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not become true within {timeout} s")
        await asyncio.sleep(0.01)


def _stat_fields(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    # The command name is in parentheses and may itself hold spaces or parentheses.
    return raw[raw.rindex(b")") + 2:].split()


def proc_stat(pid):
    """(state, ppid, pgrp, session) of ``pid`` from /proc (state a 1-char str)."""
    fields = _stat_fields(pid)
    return fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3])


def child_pids():
    """PIDs whose parent is this process, zombies included."""
    me = os.getpid()
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if int(_stat_fields(name)[1]) == me:
                found.add(int(name))
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
    return found


def is_unreaped_child(pid):
    """True if ``pid`` is still our child, running or a zombie (checked without reaping it)."""
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def open_fds():
    """The fd numbers this process has open (the listing's own fd excluded)."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            os.fstat(fd)
        except OSError:
            continue  # the directory fd listdir used, closed by now
        fds.add(fd)
    return fds


def kill_and_reap(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


@pytest.fixture(autouse=True)
def no_leftover_children():
    """Fail a test that leaves a child of ours (running or zombie); kill and reap it first."""
    before = child_pids()
    yield
    left = set()
    deadline = time.monotonic() + 2.0
    while True:
        # A watcher thread (3.10/3.11's ThreadedChildWatcher) may be reaping right now.
        left = child_pids() - before
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if left:
        states = {pid: _state_or_gone(pid) for pid in left}
        kill_and_reap(left)
        pytest.fail(f"test left child processes behind: {states}", pytrace=False)


def _state_or_gone(pid):
    try:
        return proc_stat(pid)[0]
    except OSError:
        return "gone"


class RecordingProtocol(asyncio.SubprocessProtocol):
    """A low-level SubprocessProtocol recording every callback, in order.

    ``events`` holds tuples: ("made",), ("data", fd, bytes), ("pipe_lost", fd, exc),
    ("exited",), ("lost", exc). ``done`` resolves at connection_lost, ``exited`` at
    process_exited. ``data[fd]`` joins what each fd delivered.
    """

    def __init__(self, loop):
        self.loop = loop
        self.events = []
        self.data = {1: b"", 2: b""}
        self.transport = None
        self.done = loop.create_future()
        self.exited = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append(("made",))

    def pipe_data_received(self, fd, data):
        self.events.append(("data", fd, data))
        self.data[fd] += data

    def pipe_connection_lost(self, fd, exc):
        self.events.append(("pipe_lost", fd, exc))

    def process_exited(self):
        self.events.append(("exited",))
        self.exited.set_result(self.transport.get_returncode())

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        self.done.set_result(exc)

    def kinds(self):
        return [e[0] for e in self.events]
