"""CI form of the Ctrl+C trials (``ctrlc.py``, issue 20 item 5): random-time SIGINT against
``asyncio.Runner`` children, both cores loaded by two spinning processes.

Contract: for each loop (the stdlib loop, the oracle, and tokioloop) and each workload of
``ctrlc.WORKLOADS``, ``IN_PROCESS`` in-process trials (one SIGINT per Runner session, at
U(0, 100 ms) after READY) and ``FRESH`` fresh-process trials (SIGINT at a random moment from
spawn, so some land in start-up, import and loop creation) must score 0 misses, as defined in
``ctrlc.py``'s docstring (no exit within 1 s + the longest callback, a crash, a swallowed signal,
main's ``finally`` not run, an unexpected exit status or traceback). asyncio scoring a miss means
the harness is wrong, not the loop. Each test prints its ``reliability figure:`` line (misses,
exit and cancel latency p50/p99/max) to the terminal. Latency is reported, never asserted beyond
the 1 s miss deadline.

Runs only with ``TOKIOLOOP_RELIABILITY=1`` (the ``reliability`` nox session) on Python 3.11+
(``asyncio.Runner(loop_factory=...)``). The seed is random per run and printed in the figure and
any failure; ``TOKIOLOOP_CTRLC_SEED=N`` replays one (the moments are random, the machine's timing
is not, so a replay is a retry with the same draws, not an exact repeat). 504 trials in all
(0 misses bounds each loop's miss rate below ~1.2 % at 95 %; the long form gives the real figure).
Wall time on the shared 2-core machine: 2 min 8 s (load average ~9 from other work, CPU 60 s);
5 min 2 s while two long runs of this harness shared the cores too. Long form: see ``ctrlc.py`` (``--trials 1000``).
"""

import asyncio
import os
import random
import socket
import sys

import pytest

import ctrlc

pytestmark = [
    pytest.mark.skipif(not os.environ.get("TOKIOLOOP_RELIABILITY"),
                       reason="reliability suite: set TOKIOLOOP_RELIABILITY=1"),
    pytest.mark.skipif(sys.version_info < (3, 11),
                       reason="asyncio.Runner(loop_factory=...) needs Python 3.11+"),
]

IN_PROCESS = 30
FRESH = 6
LOAD = 2  # busy processes: one per core of the CI machine


@pytest.fixture(scope="module")
def certdir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ctrlc-cert")
    ctrlc.make_cert(str(directory))
    return str(directory)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workload", ctrlc.WORKLOADS)
@pytest.mark.parametrize("kind", ["asyncio", "tokioloop"])
def test_ctrlc_trials(kind, workload, certdir, capsys):
    if kind == "tokioloop":
        import tokioloop  # noqa: F401  (a broken build errors here, never skips)
    seed = int(os.environ.get("TOKIOLOOP_CTRLC_SEED") or random.randrange(1 << 32))
    log = []
    with ctrlc.CpuLoad(LOAD):
        tally = ctrlc.run_trials(kind, workload, IN_PROCESS, FRESH, seed=seed,
                                 certdir=certdir, log=log.append)
    with capsys.disabled():
        print(f"\n{tally.figure()} [seed {seed}]", flush=True)
    assert tally.total == IN_PROCESS + FRESH
    assert not tally.misses, (
        f"{len(tally.misses)} misses (seed {seed}):\n"
        + "\n".join(f"{shape}: {reason}: {detail[:1500]}"
                    for shape, reason, detail in tally.misses[:5]))


# -- the race the trials found (ctrlc.py, "shared-with-asyncio races") -------------------------


class _CancelOnCheck(socket.socket):
    """A socket whose ``getsockopt`` cancels ``task`` first: it stands for asyncio.Runner's SIGINT
    handler running at the eval-breaker check right after sock_connect's writer callback has seen
    its future pending, which is where the trials caught it."""

    task = None

    def getsockopt(self, *args):
        if self.task is not None:
            self.task.cancel()
            self.task = None
        return super().getsockopt(*args)


@pytest.mark.xfail(strict=True, reason=(
    "race shared with the stdlib (selector_events _sock_connect_cb has the same window): "
    "sock_connect's writer callback checks fut.done(), reads SO_ERROR, then set_result() on a "
    "future cancelled meanwhile by a signal handler -> InvalidStateError logged by the loop "
    "(tokioloop: SockSupport._sock_connect_done/_settle; _sock_retry has the same shape, where "
    "it also drops received data)"))
def test_cancel_during_sock_connect_callback_logs_nothing(loop_factory):
    loop = loop_factory()
    errors = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context.get("exception")))
    with socket.socket() as srv, _CancelOnCheck() as sock:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        sock.setblocking(False)

        async def connect():
            sock.task = asyncio.current_task()
            await loop.sock_connect(sock, srv.getsockname())

        try:
            with pytest.raises(asyncio.CancelledError):
                loop.run_until_complete(connect())
            loop.run_until_complete(asyncio.sleep(0.05))
        finally:
            loop.close()
    assert errors == []


# -- a loop whose __init__ a KeyboardInterrupt cut short (fresh trials, both loops) ------------


@pytest.mark.xfail(strict=True, reason=(
    "shared with the stdlib: Ctrl+C inside the loop's __init__ (before the self-pipe and "
    "_signal_handlers exist) leaves a half-built loop whose __del__ -> close() -> "
    "_remove_all_signal_handlers raises AttributeError ('no attribute _signal_handlers'), "
    "reported as unraisable (tokioloop: _signals.py _remove_all_signal_handlers / "
    "_loop.py __del__; asyncio: unix_events close)"))
def test_interrupted_loop_init_is_collected_silently(loop_kind, monkeypatch):
    import gc
    if loop_kind == "tokioloop":
        import tokioloop
        cls, hook, factory = tokioloop.Loop, "_open_self_pipe", tokioloop.new_event_loop
    else:
        from asyncio import selector_events
        cls, hook = selector_events.BaseSelectorEventLoop, "_make_self_pipe"
        factory = asyncio.new_event_loop

    def interrupted(self):
        raise KeyboardInterrupt  # where the SIGINT landed in the trials

    reports = []
    monkeypatch.setattr(cls, hook, interrupted)
    monkeypatch.setattr(sys, "unraisablehook", reports.append)
    with pytest.raises(KeyboardInterrupt):
        factory()
    gc.collect()
    assert [type(r.exc_value).__name__ for r in reports] == []


# -- asyncio.Runner's own SIGINT window (fresh trials, both loops) -----------------------------


@pytest.mark.xfail(strict=True, reason=(
    "CPython's asyncio.Runner.run(), whatever the loop: it installs its SIGINT handler, then sets "
    "_interrupt_count = 0. A SIGINT handled between the two (pending handlers run right after "
    "the signal.signal() call returns) cancels the main task and has its count erased, so run() "
    "raises CancelledError, not KeyboardInterrupt, and main() never starts (ctrlc.runner_race)"))
def test_sigint_as_runner_installs_its_handler_is_keyboardinterrupt(loop_factory, monkeypatch):
    import signal
    import types
    from asyncio import runners

    def signal_then_sigint(signum, handler):
        previous = signal.signal(signum, handler)
        if signum == signal.SIGINT and handler is not signal.default_int_handler:
            signal.raise_signal(signal.SIGINT)  # handled as this call returns: the window
        return previous

    patched = types.SimpleNamespace(**{n: getattr(signal, n) for n in dir(signal)
                                       if not n.startswith("__")})
    patched.signal = signal_then_sigint
    monkeypatch.setattr(runners, "signal", patched)
    started = []

    async def main():
        started.append(True)

    try:
        with pytest.raises(KeyboardInterrupt):
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(main())
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert started == []
