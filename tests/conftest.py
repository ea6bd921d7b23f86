"""Shared fixtures: every behavioural test runs once per loop kind.

Contract
--------
* ``loop_kind``: the string ``"asyncio"`` or ``"tokioloop"`` (these are the test ids, so
  ``pytest -k asyncio`` runs the stdlib oracle only and ``-k tokioloop`` the extension only).
  A test that exists for tokioloop only overrides it with the ``tokioloop_only`` decorator below.
* ``loop_factory``: the zero-argument callable that makes a fresh loop of that kind
  (``asyncio.new_event_loop`` or ``tokioloop.new_event_loop``). Loops made with it are the
  test's own to close; ``new_loop`` is a tracked variant that closes leftovers at teardown.
* ``loop``: a fresh loop of that kind, with a recording exception handler installed.
  ``exc_contexts`` is the list that handler appends each context dict to.
* Teardown of ``loop``: if the test did not close it, run ``shutdown_asyncgens`` on it, count
  what is still pending (ready non-cancelled handles, non-cancelled timers, readers, writers),
  close it and fail if anything was pending. Then, whether or not the test closed the loop,
  collect garbage and fail if the exception handler recorded anything the test did not clear
  (a test that expects handler calls inspects ``exc_contexts`` and clears it).
* If ``import tokioloop`` fails, every tokioloop test errors: nothing is skipped silently.
* ``tokioloop_only`` (decorator): runs a test for the ``tokioloop`` id alone; kept for behaviour
  with no stdlib counterpart (entry points, the 3.11 eager_start refusal).
* ``sockets``: a callable that registers sockets (one or several; returns what it was given,
  a lone socket unwrapped) and closes them all at teardown, even when the test fails.
* ``payload_file``: an open binary file holding ``_netutil.PAYLOAD`` (1 MiB, every byte value).
* ``pending_counts(loop)``: the leak counts above, from the stdlib loop's internals or from
  tokioloop's ``loop._debug_counts()``.
* Hang backstop: a test still running 30 s past its pytest-timeout limit (which needs the main
  thread to get back to Python code to fire) makes faulthandler dump all stacks and exit.
"""

import asyncio
import faulthandler
import gc
import importlib
import os
import socket
import sys

import pytest

from _netutil import PAYLOAD

pytest_plugins = ["_leaks"]

# tests/reliability (soak, Ctrl+C trials, differential fuzzing) runs in its own nox session,
# ``reliability``, which sets this variable; the behavioural suite does not collect it.
collect_ignore = [] if os.environ.get("TOKIOLOOP_RELIABILITY") else ["reliability"]

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = ("asyncio", "tokioloop")


_HANG_STDERR = None


def pytest_configure(config):
    global _HANG_STDERR
    config.addinivalue_line(
        "markers",
        "tokioloop_only: behaviour that exists only for tokioloop (no stdlib counterpart)",
    )
    # pytest captures fd 2 during tests; keep a duplicate for the hang backstop below.
    _HANG_STDERR = os.fdopen(os.dup(sys.stderr.fileno()), "w")


def pytest_unconfigure(config):
    global _HANG_STDERR
    if _HANG_STDERR is not None:
        faulthandler.cancel_dump_traceback_later()
        _HANG_STDERR.close()
        _HANG_STDERR = None


def _test_time_limit(item):
    marker = item.get_closest_marker("timeout")
    if marker is not None:
        value = marker.kwargs.get("timeout", marker.args[0] if marker.args else None)
        if value:
            return float(value)
    value = item.config.getoption("timeout", default=None)  # pytest-timeout's --timeout
    if value is None:
        try:
            value = item.config.getini("timeout")
        except ValueError:
            value = None
    return float(value) if value else 120.0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Backstop for hangs pytest-timeout cannot break.

    pytest-timeout's signal method needs the main thread to run Python code; a loop stuck in
    native code that never checks for signals would hang the whole run. If a test outlives its
    timeout by 30 s, dump every thread's stack and exit the process.
    """
    faulthandler.dump_traceback_later(
        _test_time_limit(item) + 30, exit=True, file=_HANG_STDERR
    )
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def import_tokioloop():
    """Import the extension; any failure propagates so the test errors."""
    return importlib.import_module("tokioloop")


def factory_for(kind):
    if kind == "asyncio":
        def make_stdlib_loop():
            loop = asyncio.new_event_loop()
            # Guard against a test that leaked an installed policy.
            assert isinstance(loop, asyncio.BaseEventLoop), loop
            return loop
        return make_stdlib_loop
    if kind == "tokioloop":
        return import_tokioloop().new_event_loop
    raise ValueError(kind)


def tokioloop_only(func):
    """Run the test on tokioloop alone (for behaviour the stdlib has no counterpart of)."""
    func = pytest.mark.parametrize("loop_kind", ["tokioloop"], indirect=True)(func)
    return pytest.mark.tokioloop_only(func)


def pending_counts(loop):
    """What the loop still holds: ready, timers, readers, writers (see module docstring)."""
    if isinstance(loop, asyncio.BaseEventLoop):
        ready = sum(1 for h in loop._ready if not h.cancelled())
        timers = sum(1 for h in loop._scheduled if not h.cancelled())
        readers = writers = 0
        own = loop._ssock.fileno() if getattr(loop, "_ssock", None) is not None else None
        for fd, key in loop._selector.get_map().items():
            if fd == own:
                continue
            reader, writer = key.data
            if reader is not None and not reader.cancelled():
                readers += 1
            if writer is not None and not writer.cancelled():
                writers += 1
        return {"ready": ready, "timers": timers, "readers": readers, "writers": writers}
    counts = dict(loop._debug_counts())
    return {k: counts[k] for k in ("ready", "timers", "readers", "writers")}


@pytest.fixture(params=KINDS)
def loop_kind(request):
    return request.param


@pytest.fixture
def loop_factory(loop_kind):
    return factory_for(loop_kind)


class _LoopEnv:
    def __init__(self, loop):
        self.loop = loop
        self.contexts = []

    def handler(self, loop, context):
        self.contexts.append(context)


@pytest.fixture
def _loop_env(loop_factory):
    asyncio.set_event_loop(None)
    loop = loop_factory()
    env = _LoopEnv(loop)
    loop.set_exception_handler(env.handler)
    yield env
    problems = []
    try:
        if loop.is_running():
            problems.append("loop is still running at teardown")
        elif not loop.is_closed():
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                leaked = {k: v for k, v in pending_counts(loop).items() if v}
                if leaked:
                    problems.append(f"handles leaked before close: {leaked}")
            finally:
                loop.close()
        gc.collect()
        if env.contexts:
            shown = "\n".join(
                f"  {c.get('message')!r}: {c.get('exception')!r}" for c in env.contexts
            )
            problems.append(f"exception handler called unexpectedly:\n{shown}")
    finally:
        asyncio.set_event_loop(None)
    if problems:
        pytest.fail("loop teardown: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def loop(_loop_env):
    return _loop_env.loop


@pytest.fixture
def exc_contexts(_loop_env):
    """Contexts the recording exception handler of ``loop`` received; clear what you expect."""
    return _loop_env.contexts


@pytest.fixture
def new_loop(loop_factory):
    """Make extra loops of the current kind; any left open are closed at teardown."""
    made = []

    def make():
        lp = loop_factory()
        made.append(lp)
        return lp

    yield make
    for lp in made:
        if not lp.is_closed() and not lp.is_running():
            lp.close()


@pytest.fixture
def sockets():
    """Close every socket a test registers, even when it fails."""
    made = []

    def track(*socks):
        made.extend(socks)
        return socks[0] if len(socks) == 1 else socks

    yield track
    for s in made:
        s.close()


@pytest.fixture
def pair():
    """A connected, non-blocking Unix socket pair, closed after the test."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def payload_file(tmp_path):
    """An open binary file (``rb``) holding ``_netutil.PAYLOAD`` (1 MiB)."""
    path = tmp_path / "payload.bin"
    path.write_bytes(PAYLOAD)
    with open(path, "rb") as f:
        yield f


# 3.14 deprecates the public policy functions (each call warns); the fixture below runs around
# every test, so it uses the stdlib's own non-warning spellings where they exist.
_get_policy = getattr(asyncio.events, "_get_event_loop_policy", asyncio.get_event_loop_policy)
_set_policy = getattr(asyncio.events, "_set_event_loop_policy", asyncio.set_event_loop_policy)


@pytest.fixture(autouse=True)
def _restore_policy():
    policy = _get_policy()
    hooks = sys.get_asyncgen_hooks()
    yield
    _set_policy(policy)
    asyncio.set_event_loop(None)
    sys.set_asyncgen_hooks(*hooks)


# Helpers for child-process tests.

CHILD = os.path.join(HERE, "_child.py")


def child_env(**extra):
    env = dict(os.environ)
    for var in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE", "PYTHONWARNINGS"):
        env.pop(var, None)
    env.update(extra)
    return env
