"""Loop telemetry: what a tokioloop loop reports about itself, cheaply enough for production.

``loop.metrics()`` returns a :class:`LoopMetrics` snapshot. Counters only grow (compare two
snapshots for a rate); the turn adds its callback counts when it ends, so a snapshot taken
from a callback sees them as of the previous turn; gauges (depths, open objects) are the values at the snapshot; times are
seconds. Taking one costs a few microseconds, so once a second is nothing.

- ``turns``: loop iterations run.
- ``callbacks_ready`` / ``callbacks_timer`` / ``callbacks_io``: callbacks run, by origin:
  ``call_soon`` and ``call_soon_threadsafe`` handles; ``call_later``/``call_at`` timers; fd
  callbacks (``add_reader``/``add_writer``) and the native transports' reads and writes.
  Cancelled handles are not counted.
- ``threadsafe_calls``: ``call_soon_threadsafe`` calls accepted (they join the ready queue: the
  loop has no separate threadsafe queue, so its depth is part of ``ready_depth``).
- ``time_running`` / ``time_parked``: time inside ``run_forever`` spent running code and
  parked waiting for work. :meth:`LoopMetrics.utilization` turns two snapshots into event-loop
  utilization as Node.js defines it: running / (running + parked) over the window.
- ``timer_lateness``: a :class:`Histogram` of how late each timer ran, from its deadline to
  the moment its callback started (loop lag), over the fixed bucket bounds
  :data:`LATENESS_BOUNDS`.
- ``ready_wait`` and ``callback_duration``: histograms (same bounds) filled only while callbacks
  are timed (:func:`report_slow_callbacks` is on): how long each ``call_soon`` handle waited in
  the ready queue before it ran (the other loop-lag measure; ``call_soon_threadsafe`` handles of
  3.14+, which are asyncio's own objects, are not stamped), and how long each callback ran.
- ``ready_depth``, ``pending_timers``, ``readers``, ``writers``: callbacks queued for the next
  turn, live timers, fds watched for reading and for writing (``add_reader``/``add_writer``,
  ``sock_*`` waits and the native transports; not the loop's own signal self-pipe).
- ``dns_in_flight``, ``executor_jobs_in_flight``: getaddrinfo/getnameinfo lookups and
  ``run_in_executor`` jobs not yet finished.
- ``open``: open transports, servers and subprocesses by kind (``tcp``, ``unix``, ``tls``,
  ``datagram``, ``pipe``, ``subprocess``, ``server``; a TLS connection counts as ``tls`` and
  as the ``tcp`` or ``unix`` transport under it). Counting them walks the loop's weak sets of
  such objects, so a snapshot's cost grows with open connections (about 0.1 µs each).

Slow callbacks: :func:`report_slow_callbacks` makes the loop time each callback and hand the
ones at or over a threshold to a hook, as :class:`SlowCallback` (what ran, the task it stepped,
its coroutine, how long, and on 3.14+ the task's call graph). Off by default: no clock is read
per callback until it is on. A loop that stops turning altogether is what :class:`Watchdog`
reports, from its own thread, with the loop thread's Python stack.

The stdlib loop has none of this; importing tokioloop changes nothing in asyncio.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from typing import Any

#: Upper bounds (seconds) of every histogram's buckets; one more, unbounded bucket follows.
#: Fixed: exporters name them.
LATENESS_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0)

#: The kinds :attr:`LoopMetrics.open` counts, always all present.
OPEN_KINDS = ("tcp", "unix", "tls", "datagram", "pipe", "subprocess", "server")


@dataclasses.dataclass(frozen=True)
class Histogram:
    """Counts per bucket: ``counts[i]`` observations ``<= bounds[i]`` (and above the bound
    before it); ``counts[-1]`` those above the last bound. ``sum`` is their total."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    def since(self, earlier: Histogram) -> Histogram:
        """The observations made after ``earlier`` (a snapshot of the same histogram)."""
        return Histogram(self.bounds, tuple(a - b for a, b in zip(self.counts, earlier.counts)),
                         self.sum - earlier.sum)

    def quantile(self, q: float) -> float:
        """The bucket bound under which a fraction ``q`` of the observations fall (``inf``
        when that is the open bucket; 0.0 with no observations)."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be within [0, 1], got {q!r}")
        total = self.count
        if total == 0:
            return 0.0
        seen = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            seen += count
            if seen >= q * total:
                return bound
        return float("inf")


@dataclasses.dataclass(frozen=True)
class LoopMetrics:
    """One snapshot of a loop's telemetry (see the module's documentation for each field)."""

    time: float
    turns: int
    callbacks_ready: int
    callbacks_timer: int
    callbacks_io: int
    threadsafe_calls: int
    time_running: float
    time_parked: float
    timer_lateness: Histogram
    ready_wait: Histogram
    callback_duration: Histogram
    ready_depth: int
    pending_timers: int
    readers: int
    writers: int
    dns_in_flight: int
    executor_jobs_in_flight: int
    open: Mapping[str, int]

    @property
    def callbacks(self) -> int:
        return self.callbacks_ready + self.callbacks_timer + self.callbacks_io

    def utilization(self, since: LoopMetrics | None = None) -> float:
        """Event-loop utilization: the share of time in ``run_forever`` spent running rather
        than parked, since ``since`` (an earlier snapshot of the same loop) or since the loop
        was made. 0.0 when the loop has not run in that window."""
        running, parked = self.time_running, self.time_parked
        if since is not None:
            running -= since.time_running
            parked -= since.time_parked
        total = running + parked
        return running / total if total > 0 else 0.0


def snapshot(loop, native: Mapping[str, Any], executor_jobs: int,
             open_counts: Mapping[str, int]) -> LoopMetrics:
    """Builds :class:`LoopMetrics` from the native half's dict (``LoopCore._metrics``)."""
    def histogram(name):
        native_histogram = native[name]
        return Histogram(tuple(native_histogram["bounds"]), tuple(native_histogram["counts"]),
                         native_histogram["sum"])

    return LoopMetrics(
        time=loop.time(),
        turns=native["turns"],
        callbacks_ready=native["callbacks_ready"],
        callbacks_timer=native["callbacks_timer"],
        callbacks_io=native["callbacks_io"],
        threadsafe_calls=native["threadsafe_calls"],
        time_running=native["time_running"],
        time_parked=native["time_parked"],
        timer_lateness=histogram("timer_lateness"),
        ready_wait=histogram("ready_wait"),
        callback_duration=histogram("callback_duration"),
        ready_depth=native["ready"],
        pending_timers=native["timers"],
        # Not the loop's own self-pipe (signals), which is always watched while it is open.
        readers=native["readers"] - (loop._ssock is not None),
        writers=native["writers"],
        dns_in_flight=native["dns_in_flight"],
        executor_jobs_in_flight=executor_jobs,
        open=open_counts,
    )


# -- slow callbacks --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SlowCallback:
    """A callback that ran at least the threshold. ``what`` is what the loop ran: a handle, or
    for a native transport's read or write, the transport. ``callback`` is the handle's
    callback (None for a transport). ``task`` is the Task whose step it was, if any, and
    ``coroutine`` that task's coroutine. ``call_graph`` (3.14+, for a task) is
    ``asyncio.format_call_graph`` of the task right after the step: where it waits now."""

    what: Any
    callback: Any
    task: asyncio.Task | None
    coroutine: Any
    duration: float
    call_graph: str | None


def _task_of(callback) -> asyncio.Task | None:
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        return owner
    return None


def describe_slow(what, duration: float) -> SlowCallback:
    callback = getattr(what, "_callback", None)
    task = _task_of(callback) if callback is not None else None
    graph = None
    if task is not None and hasattr(asyncio, "format_call_graph") and not task.done():
        try:
            graph = asyncio.format_call_graph(task)
        except Exception:  # a task in a state the graph walker cannot read: no graph
            graph = None
    return SlowCallback(what=what, callback=callback, task=task,
                        coroutine=task.get_coro() if task is not None else None,
                        duration=duration, call_graph=graph)


def report_slow_callbacks(loop, threshold: float | None,
                          hook: Callable[[SlowCallback], object] | None = None) -> None:
    """From now on, hand every callback of ``loop`` that runs ``threshold`` seconds or more
    to ``hook`` (called on the loop thread right after the callback; an exception from it goes
    to the loop's exception handler). ``threshold=None`` turns the timing off again."""
    if threshold is None:
        loop._set_slow_callback_hook(None, None)
        return
    threshold = float(threshold)
    if not threshold > 0.0:
        raise ValueError(f"threshold must be a positive number of seconds, got {threshold!r}")
    if not callable(hook):
        raise TypeError(f"hook must be callable, got {hook!r}")
    loop._set_slow_callback_hook(hook, threshold)


# -- stuck loop ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StuckLoop:
    """The loop ran no turn for ``stuck_for`` seconds while not parked: one callback has been
    running that long. ``stack`` is the loop thread's Python stack at the time (formatted)."""

    loop: Any
    stuck_for: float
    stack: str


class Watchdog:
    """A daemon thread that reports a stuck loop to ``hook`` (called on the watchdog's thread,
    once per stuck episode): one callback running for ``after`` seconds, so that no new turn
    and no other callback began while the loop was not parked.

    It needs the GIL to look, so a callback stuck in C code that holds the GIL is reported only
    once it lets go. Use as a context manager, or call :meth:`start` and :meth:`stop`."""

    def __init__(self, loop, after: float, hook: Callable[[StuckLoop], object]):
        after = float(after)
        if not after > 0.0:
            raise ValueError(f"after must be a positive number of seconds, got {after!r}")
        if not callable(hook):
            raise TypeError(f"hook must be callable, got {hook!r}")
        self._loop = loop
        self._after = after
        self._hook = hook
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Watchdog:
        if self._thread is not None:
            raise RuntimeError("the watchdog is already started")
        self._thread = threading.Thread(target=self._watch, name="tokioloop-watchdog",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> Watchdog:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _watch(self) -> None:
        loop = self._loop
        last_progress = None
        since = None
        reported = False
        while not self._stopped.wait(self._after / 4):
            if loop.is_closed():
                return
            native = loop._metrics()
            ident = loop._thread_id
            now = loop.time()
            # A callback counts before it runs: no count moving means one callback running.
            progress = (native["turns"] + native["callbacks_ready"] + native["callbacks_timer"]
                        + native["callbacks_io"])
            if ident is None or native["parked"] or progress != last_progress:
                last_progress, since, reported = progress, now, False
                continue
            if not reported and now - since >= self._after:
                reported = True
                frame = sys._current_frames().get(ident)
                stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
                self._hook(StuckLoop(loop=loop, stuck_for=now - since, stack=stack))
