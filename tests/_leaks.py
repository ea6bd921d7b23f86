"""Nothing left behind: every test's open fds, native threads and children are back to what
they were before it, once it and its fixtures are done.

Loaded by conftest.py for the whole suite. Around each test (setup, call and teardown) it takes
three counts from /proc: this process's open descriptors (``/proc/self/fd``), its native threads
(``/proc/self/task``: tokio's worker and blocking-pool threads are invisible to ``threading``) and
its children, zombies included (``_proc.child_pids``). After teardown it collects garbage and
waits up to ``SETTLE`` seconds for each to return to the starting set: a closed executor's
threads and a just-killed child take a moment to go, and that is not a leak.

What is left after that is listed in the terminal summary and fails the session
(``--leaks=fail``, the default), is only listed (``--leaks=report``) or is not looked at
(``--leaks=off``). The check runs after pytest has dropped the test's fixture values, so an
object the test merely still references at teardown is not counted; it cannot fail the test
itself, which pytest has reported by then. A descriptor is named by what it
points at and a thread by its ``comm``, so the report says what leaked, not just how much.

At the end the terminal summary prints the figure: tests checked, and leaks found.
"""

import gc
import os
import time

import pytest

import _proc

SETTLE = 2.0  # seconds to wait for threads, fds and children to go after teardown


def pytest_addoption(parser):
    parser.addoption(
        "--leaks", choices=("fail", "report", "off"), default="fail",
        help="per-test fd/thread/child accounting: fail a leaking test, report it, or skip",
    )


def _fds():
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listdir's own descriptor, closed by now
            pass
    return found


def _threads():
    found = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                found[int(tid)] = f.read().strip()
        except OSError:
            pass
    return found


class _Snapshot:
    def __init__(self):
        self.fds = _fds()
        self.threads = _threads()
        self.children = _proc.child_pids()

    def left_since(self, before):
        """What is here now and was not in ``before``: {kind: [description, ...]}."""
        left = {}
        # 0-2 are pytest's capture, redirected per phase.
        fds = [f"fd {fd} -> {target}" for fd, target in self.fds.items()
               if fd > 2 and before.fds.get(fd) != target]
        threads = [f"thread {tid} ({name})" for tid, name in self.threads.items()
                   if tid not in before.threads]
        children = [f"child {pid}" for pid in self.children - before.children]
        for kind, items in (("fds", fds), ("threads", threads), ("children", children)):
            if items:
                left[kind] = sorted(items)
        return left


class _Accounting:
    def __init__(self, mode):
        self.mode = mode
        self.checked = 0
        self.leaks = {}  # nodeid -> {kind: [...]}
        self.unchecked = set()  # failed or xfailed: pytest keeps their tracebacks' frames

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        # Measured around the whole protocol: pytest drops the test's fixture values only after
        # teardown, and a loop the test closed may hold its reactor until it is collected.
        before = _Snapshot()
        result = yield
        if item.nodeid in self.unchecked:
            return result
        self.checked += 1
        left = self._settle(before)
        if left:
            self.leaks[item.nodeid] = left
        return result

    def pytest_runtest_logreport(self, report):
        if report.failed or hasattr(report, "wasxfail"):
            self.unchecked.add(report.nodeid)

    def pytest_sessionfinish(self, session):
        if self.leaks and self.mode == "fail" and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @staticmethod
    def _settle(before):
        deadline = time.monotonic() + SETTLE
        while True:
            gc.collect()
            left = _Snapshot().left_since(before)
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.02)

    def pytest_terminal_summary(self, terminalreporter):
        write = terminalreporter.write_line
        write(f"nothing left behind: {self.checked} tests checked, "
              f"{len(self.leaks)} left fds, threads or children behind "
              f"({len(self.unchecked)} failed or xfailed not checked: their tracebacks, which "
              f"pytest keeps, hold the test's objects)")
        for nodeid, left in sorted(self.leaks.items()):
            write(f"  {nodeid}")
            for kind, items in left.items():
                write(f"    {kind}: {', '.join(items)}")


def pytest_configure(config):
    mode = config.getoption("--leaks")
    if mode != "off":
        config.pluginmanager.register(_Accounting(mode), "tokioloop-leaks")
