"""pytest plugin: reference and memory-block leak hunting, CPython regrtest's ``-R`` rule
(issue 20 item 6).

    python -m pytest -p refleaks --refleaks 3:3 -k tokioloop tests/test_sock.py
    (tests/reliability on PYTHONPATH; ``memsafety.py refleaks`` does all of it)

Contract: with ``--refleaks N:M`` every test runs N warm-up times and M counted times (its whole
protocol: setup, call, teardown of its function-scoped fixtures; wider fixtures stay up), then
once more as the run pytest reports. Around each counted run the plugin collects garbage and reads
the interpreter's total reference count (``sys.gettotalrefcount``, debug CPython only; on a
release build that column is absent), its allocated memory blocks (``sys.getallocatedblocks``,
pymalloc's count: meaningless under ``PYTHONMALLOC=malloc``) and the number of open descriptors.
A test leaks a quantity when that quantity grew in every one of the M counted runs (refs and
blocks: by at least 1 each time; CPython's rule, which tolerates a one-off cache fill or a
run that happens to free something); fds leak when they changed in every counted run. Warm-up
runs exist to fill the caches a first call fills (imports, interned strings, warnings
registries, asyncio's and pytest's lazily built tables).

A test that fails, errors or skips in a repetition is not repeated further and not judged; its
reported run shows what went wrong. Leaking tests are listed in the terminal summary with their
per-run deltas and fail the session; the summary ends with the figure line
``reliability figure: memsafety refleaks ...``.
"""

import functools
import gc
import os
import sys
import time
import warnings

import pytest
from _pytest.runner import runtestprotocol


def pytest_addoption(parser):
    parser.addoption("--refleaks", metavar="N:M", default=None,
                     help="run each test N warm-up + M counted times and report growth in every "
                          "counted run (CPython's -R rule)")


def _parse(spec):
    try:
        warmups, counted = (int(part) for part in spec.split(":"))
    except ValueError:
        raise pytest.UsageError(f"--refleaks wants N:M (two integers), got {spec!r}") from None
    if warmups < 0 or counted < 1:
        raise pytest.UsageError("--refleaks N:M needs N >= 0 and M >= 1")
    return warmups, counted


def _counts():
    gc.collect()
    # 3.13 renamed it (and deprecated the old name, whose warning would itself be a "leak").
    (getattr(sys, "_clear_internal_caches", None) or sys._clear_type_cache)()
    refs = sys.gettotalrefcount() if hasattr(sys, "gettotalrefcount") else None
    return refs, sys.getallocatedblocks(), len(os.listdir("/proc/self/fd"))


def _drop_stale_finalizers(item):
    """pytest appends ``partial(finish)`` of each function-scoped fixture to the finalizers of
    every wider-scoped fixture it uses, and removes them only when that wider fixture ends (a
    growth of O(tests) in any session, not the test's): after a repetition, when the function
    fixtures are finished already, drop those entries, or every test using ``tmp_path`` leaks."""
    for defs in item._fixtureinfo.name2fixturedefs.values():
        for fixturedef in defs:
            if fixturedef.scope == "function":
                continue
            fixturedef._finalizers[:] = [
                fin for fin in fixturedef._finalizers
                if not (isinstance(fin, functools.partial)
                        and getattr(fin.func, "__name__", "") == "finish"
                        and getattr(getattr(fin.func, "__self__", None), "scope", "") == "function")]


class RefLeaks:
    KINDS = ("refs", "blocks", "fds")

    def __init__(self, warmups, counted):
        self.warmups, self.counted = warmups, counted
        self.judged = 0
        self.unjudged = 0
        self.leaks = {}  # nodeid -> {kind: deltas}
        self.start = time.monotonic()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item, nextitem):
        deltas = {kind: [] for kind in self.KINDS}
        judged = True
        # The parent as "next item": teardown drops the test's own fixtures, keeps the wider ones.
        # Each run's "after" is the next run's "before": one collection per run.
        after = _counts()
        for run in range(self.warmups + self.counted):
            before = after
            # pytest records warnings around the whole protocol hook, this loop included: each
            # repetition's go to a list of its own, dropped with it.
            with warnings.catch_warnings(record=True):
                reports = runtestprotocol(item, nextitem=item.parent, log=False)
            passed = all(r.passed for r in reports)
            del reports
            item._report_sections.clear()  # captured output, appended to on every run
            _drop_stale_finalizers(item)
            after = _counts()
            if not passed:
                judged = False
                break
            if run >= self.warmups:
                for kind, b, a in zip(self.KINDS, before, after):
                    if b is not None:
                        deltas[kind].append(a - b)
        if judged:
            self.judged += 1
            leaked = {kind: d for kind, d in deltas.items() if d and (
                all(x != 0 for x in d) if kind == "fds" else all(x >= 1 for x in d))}
            if leaked:
                self.leaks[item.nodeid] = leaked
        else:
            self.unjudged += 1
        # The run pytest reports, with the real next item.
        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        runtestprotocol(item, nextitem=nextitem, log=True)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    def figure(self):
        what = "refs, blocks, fds" if hasattr(sys, "gettotalrefcount") else "blocks, fds"
        build = "debug" if hasattr(sys, "gettotalrefcount") else "release"
        return (f"reliability figure: memsafety refleaks {sys.version_info[0]}.{sys.version_info[1]} "
                f"({build}, {what}; {self.warmups}:{self.counted}): {len(self.leaks)}/{self.judged} "
                f"tests leaking ({self.unjudged} failed/skipped, not judged) in "
                f"{time.monotonic() - self.start:.0f} s")

    def pytest_terminal_summary(self, terminalreporter):
        write = terminalreporter.write_line
        for nodeid, leaked in sorted(self.leaks.items()):
            write(f"refleak: {nodeid}: " + "; ".join(
                f"{kind} {deltas}" for kind, deltas in leaked.items()))
        write(self.figure())

    def pytest_sessionfinish(self, session):
        if self.leaks and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_configure(config):
    spec = config.getoption("--refleaks")
    if spec:
        config.pluginmanager.register(RefLeaks(*_parse(spec)), "tokioloop-refleaks")
