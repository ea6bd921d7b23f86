"""OpenTelemetry metrics (and spans) over a tokioloop loop's telemetry.

    from tokioloop.exporters import otel
    instrumentation = otel.instrument(loop, slow_callback_threshold=0.05)

Each observable instrument reads a ``loop.metrics()`` snapshot when collected (on the
reader's thread), all with the attribute ``tokioloop.loop`` = ``name`` (names use the ``tokioloop.``
prefix): counters ``turns``, ``callbacks`` (attribute ``origin``: ready, timer, io),
``threadsafe_calls``, ``time.running`` and ``time.parked`` (s); gauges ``utilization`` (over
the window since the previous collection), ``ready_depth``, ``pending_timers``,
``fds.watched`` (``direction``), ``dns.in_flight``, ``executor.jobs_in_flight``, ``open``
(``kind``). The loop's histograms are cumulative bucket counts, which OpenTelemetry's API
cannot observe, so ``timer.lateness.max`` (s) is the gauge of the worst bucket bound reached
in the window, and the Prometheus exporter carries the full histograms.

With ``slow_callback_threshold``, the loop times its callbacks (``report_slow_callbacks``) and
each slow one is recorded in the histogram ``tokioloop.callback.duration`` (s) and, when a
tracer provider is set (given, or the global one), becomes a span ``tokioloop.slow_callback``
whose start and end are the callback's, with the callback, task and coroutine as attributes.
``hook`` is called with each :class:`tokioloop.telemetry.SlowCallback` as well.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation

from .. import telemetry

SCOPE = "tokioloop"


class Instrumentation:
    """What :func:`instrument` set up; :meth:`close` stops the slow-callback timing (the
    observable instruments stay registered with the meter provider, as OpenTelemetry has no
    way to remove them; they observe nothing once the loop is closed)."""

    def __init__(self, loop, name, meter, tracer, hook, threshold):
        self._loop = loop
        self._attributes = {"tokioloop.loop": str(name)}
        self._tracer = tracer
        self._hook = hook
        # The snapshots the windowed gauges (utilization, worst lateness) last saw.
        self._previous = None
        self._lateness_seen = None
        self._register(meter)
        self._duration = None
        if threshold is not None:
            self._duration = meter.create_histogram(
                "tokioloop.callback.duration", unit="s",
                description="Duration of callbacks at or over the slow-callback threshold.")
            telemetry.report_slow_callbacks(loop, threshold, self._on_slow)

    def close(self) -> None:
        if self._duration is not None and not self._loop.is_closed():
            telemetry.report_slow_callbacks(self._loop, None)
        self._duration = None

    # -- observation ---------------------------------------------------------------------

    def _metrics(self):
        """A fresh snapshot for one instrument's callback (a few microseconds each)."""
        if self._loop.is_closed():
            return None
        return self._loop.metrics()

    def _observe(self, read, extra=None):
        def callback(options: CallbackOptions):
            snapshot = self._metrics()
            if snapshot is None:
                return []
            values = read(snapshot)
            if isinstance(values, dict):
                return [Observation(v, {**self._attributes, extra: k}) for k, v in values.items()]
            return [Observation(values, self._attributes)]
        return callback

    def _utilization(self, options: CallbackOptions):
        snapshot = self._metrics()
        if snapshot is None:
            return []
        previous, self._previous = self._previous, snapshot
        return [Observation(snapshot.utilization(previous), self._attributes)]

    def _worst_lateness(self, options: CallbackOptions):
        snapshot = self._metrics()
        if snapshot is None:
            return []
        previous, self._lateness_seen = self._lateness_seen, snapshot
        window = (snapshot.timer_lateness if previous is None
                  else snapshot.timer_lateness.since(previous.timer_lateness))
        return [Observation(window.quantile(1.0) if window.count else 0.0, self._attributes)]

    def _register(self, meter):
        counter = meter.create_observable_counter
        gauge = meter.create_observable_gauge
        counter("tokioloop.turns", [self._observe(lambda m: m.turns)],
                description="Loop iterations run.")
        counter("tokioloop.callbacks", [self._observe(
            lambda m: {"ready": m.callbacks_ready, "timer": m.callbacks_timer,
                       "io": m.callbacks_io}, "origin")], description="Callbacks run.")
        counter("tokioloop.threadsafe_calls", [self._observe(lambda m: m.threadsafe_calls)],
                description="call_soon_threadsafe calls accepted.")
        counter("tokioloop.time.running", [self._observe(lambda m: m.time_running)], unit="s",
                description="Time in run_forever spent running code.")
        counter("tokioloop.time.parked", [self._observe(lambda m: m.time_parked)], unit="s",
                description="Time in run_forever spent waiting for work.")
        gauge("tokioloop.utilization", [self._utilization], unit="1",
              description="Event-loop utilization since the previous collection.")
        gauge("tokioloop.timer.lateness.max", [self._worst_lateness], unit="s",
              description="Upper bound of the latest timer lateness bucket reached.")
        gauge("tokioloop.ready_depth", [self._observe(lambda m: m.ready_depth)],
              description="Callbacks queued for the next turn.")
        gauge("tokioloop.pending_timers", [self._observe(lambda m: m.pending_timers)],
              description="Live timers.")
        gauge("tokioloop.fds.watched", [self._observe(
            lambda m: {"read": m.readers, "write": m.writers}, "direction")],
              description="Descriptors watched.")
        gauge("tokioloop.dns.in_flight", [self._observe(lambda m: m.dns_in_flight)],
              description="Name lookups not yet answered.")
        gauge("tokioloop.executor.jobs_in_flight",
              [self._observe(lambda m: m.executor_jobs_in_flight)],
              description="run_in_executor jobs not yet done.")
        gauge("tokioloop.open", [self._observe(lambda m: dict(m.open), "kind")],
              description="Open transports, servers and subprocesses.")

    # -- slow callbacks ------------------------------------------------------------------

    def _on_slow(self, report: telemetry.SlowCallback) -> None:
        if self._duration is not None:
            self._duration.record(report.duration, self._attributes)
        if self._tracer is not None:
            end = time.time_ns()
            span = self._tracer.start_span(
                "tokioloop.slow_callback", start_time=end - int(report.duration * 1e9),
                attributes={
                    **self._attributes,
                    "tokioloop.callback": repr(report.callback if report.callback is not None
                                               else report.what),
                    "tokioloop.task": report.task.get_name() if report.task is not None else "",
                    "tokioloop.coroutine": getattr(report.coroutine, "__qualname__", ""),
                    "tokioloop.duration": report.duration,
                })
            if report.call_graph:
                span.set_attribute("tokioloop.call_graph", report.call_graph)
            span.end(end_time=end)
        if self._hook is not None:
            self._hook(report)


def instrument(loop, *, name: str = "main", meter_provider=None, tracer_provider=None,
               slow_callback_threshold: float | None = None,
               hook: Callable[[telemetry.SlowCallback], object] | None = None) -> Instrumentation:
    """Observe ``loop`` through OpenTelemetry (see the module's documentation). The providers
    default to OpenTelemetry's global ones."""
    if not hasattr(loop, "metrics"):
        raise TypeError(f"{loop!r} is not a tokioloop loop: it has no metrics()")
    if hook is not None and not callable(hook):
        raise TypeError(f"hook must be callable, got {hook!r}")
    meter = metrics.get_meter(SCOPE, meter_provider=meter_provider)
    tracer = None
    if slow_callback_threshold is not None:
        tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
    return Instrumentation(loop, name, meter, tracer, hook, slow_callback_threshold)
