"""A ``prometheus_client`` collector over ``loop.metrics()``.

    from tokioloop.exporters import prometheus
    prometheus.register(loop)            # on prometheus_client's default registry
    # ... prometheus_client.start_http_server(9000), or your framework's /metrics route

Each scrape takes one snapshot (from the scraping thread; ``metrics()`` allows that). Every
series carries a ``loop`` label (``name``), so several loops of one process can be told apart.
Series (``tokioloop_`` prefix):

- counters: ``turns_total``, ``callbacks_total{origin=ready|timer|io}``,
  ``threadsafe_calls_total``, ``running_seconds_total``, ``parked_seconds_total``;
- histograms (seconds, buckets ``tokioloop.telemetry.LATENESS_BOUNDS``):
  ``timer_lateness_seconds``, ``ready_wait_seconds``, ``callback_duration_seconds`` (the last
  two fill only while slow-callback timing is on);
- gauges: ``ready_depth``, ``pending_timers``, ``fds_watched{direction=read|write}``,
  ``dns_in_flight``, ``executor_jobs_in_flight``, ``open{kind=...}``.

A closed loop yields nothing.
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import REGISTRY, Collector

PREFIX = "tokioloop"


def _histogram(name, documentation, histogram, label_values):
    family = HistogramMetricFamily(name, documentation, labels=["loop"])
    cumulative = 0
    buckets = []
    for bound, count in zip(histogram.bounds, histogram.counts):
        cumulative += count
        buckets.append((repr(bound), cumulative))
    buckets.append(("+Inf", histogram.count))
    family.add_metric(label_values, buckets, sum_value=histogram.sum)
    return family


class LoopCollector(Collector):
    """Collects one loop's telemetry under the label ``loop=name``."""

    def __init__(self, loop, name: str = "main"):
        if not hasattr(loop, "metrics"):
            raise TypeError(f"{loop!r} is not a tokioloop loop: it has no metrics()")
        self._loop = loop
        self._name = str(name)

    def collect(self):
        if self._loop.is_closed():
            return
        m = self._loop.metrics()
        loop = [self._name]

        def counter(name, documentation, value):
            family = CounterMetricFamily(f"{PREFIX}_{name}", documentation, labels=["loop"])
            family.add_metric(loop, value)
            return family

        def gauge(name, documentation, value, label=None, values=None):
            labels = ["loop"] + ([label] if label else [])
            family = GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=labels)
            if label:
                for key, item in values.items():
                    family.add_metric(loop + [key], item)
            else:
                family.add_metric(loop, value)
            return family

        yield counter("turns", "Loop iterations run.", m.turns)
        callbacks = CounterMetricFamily(f"{PREFIX}_callbacks", "Callbacks run, by origin.",
                                        labels=["loop", "origin"])
        for origin, value in (("ready", m.callbacks_ready), ("timer", m.callbacks_timer),
                              ("io", m.callbacks_io)):
            callbacks.add_metric(loop + [origin], value)
        yield callbacks
        yield counter("threadsafe_calls", "call_soon_threadsafe calls accepted.",
                      m.threadsafe_calls)
        yield counter("running_seconds", "Time in run_forever spent running code.",
                      m.time_running)
        yield counter("parked_seconds", "Time in run_forever spent waiting for work.",
                      m.time_parked)
        yield _histogram(f"{PREFIX}_timer_lateness_seconds",
                         "How late timers ran after their deadline.", m.timer_lateness, loop)
        yield _histogram(f"{PREFIX}_ready_wait_seconds",
                         "How long call_soon handles waited to run (while timed).",
                         m.ready_wait, loop)
        yield _histogram(f"{PREFIX}_callback_duration_seconds",
                         "How long callbacks ran (while timed).", m.callback_duration, loop)
        yield gauge("ready_depth", "Callbacks queued for the next turn.", m.ready_depth)
        yield gauge("pending_timers", "Live timers.", m.pending_timers)
        yield gauge("fds_watched", "Descriptors watched, by direction.", None, "direction",
                    {"read": m.readers, "write": m.writers})
        yield gauge("dns_in_flight", "Name lookups not yet answered.", m.dns_in_flight)
        yield gauge("executor_jobs_in_flight", "run_in_executor jobs not yet done.",
                    m.executor_jobs_in_flight)
        yield gauge("open", "Open transports, servers and subprocesses, by kind.", None, "kind",
                    dict(m.open))


def register(loop, name: str = "main", registry=REGISTRY) -> LoopCollector:
    """Registers a :class:`LoopCollector` for ``loop`` on ``registry`` and returns it (pass it
    to ``registry.unregister`` when the loop is done)."""
    collector = LoopCollector(loop, name)
    registry.register(collector)
    return collector
