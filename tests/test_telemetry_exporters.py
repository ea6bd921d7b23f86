"""The telemetry exporters (issue 22): Prometheus and OpenTelemetry expose the documented metric
names with values from ``loop.metrics()``. Their libraries are test dependencies, so in CI
these never skip; tokioloop-only, as the stdlib loop has no telemetry."""

import asyncio
import time

import pytest

from conftest import tokioloop_only


def run_some(loop):
    async def main():
        for _ in range(3):
            loop.call_soon(time.sleep, 0.03)
        loop.call_later(0.001, lambda: None)
        await asyncio.sleep(0.05)

    loop.run_until_complete(main())


@tokioloop_only
def test_prometheus_collector_exposes_the_documented_series(loop):
    prometheus_client = pytest.importorskip("prometheus_client")
    from tokioloop.exporters import prometheus

    registry = prometheus_client.CollectorRegistry()
    collector = prometheus.register(loop, name="web", registry=registry)
    run_some(loop)
    text = prometheus_client.generate_latest(registry).decode()
    for series in ("tokioloop_turns_total", 'tokioloop_callbacks_total{loop="web",origin="timer"}',
                   "tokioloop_threadsafe_calls_total", "tokioloop_running_seconds_total",
                   "tokioloop_parked_seconds_total", "tokioloop_timer_lateness_seconds_bucket",
                   'le="+Inf"', "tokioloop_ready_wait_seconds_count",
                   "tokioloop_callback_duration_seconds_sum", "tokioloop_ready_depth",
                   "tokioloop_pending_timers", 'tokioloop_fds_watched{direction="read"',
                   "tokioloop_dns_in_flight", "tokioloop_executor_jobs_in_flight",
                   'tokioloop_open{kind="tcp",loop="web"}'):
        assert series in text, series
    value = registry.get_sample_value("tokioloop_callbacks_total",
                                      {"loop": "web", "origin": "ready"})
    assert value == loop.metrics().callbacks_ready
    lateness = registry.get_sample_value("tokioloop_timer_lateness_seconds_count", {"loop": "web"})
    assert lateness == loop.metrics().timer_lateness.count >= 1
    registry.unregister(collector)


@tokioloop_only
def test_prometheus_collector_refuses_the_stdlib_loop(loop):
    pytest.importorskip("prometheus_client")
    from tokioloop.exporters import prometheus

    stdlib = asyncio.new_event_loop()
    try:
        with pytest.raises(TypeError):
            prometheus.LoopCollector(stdlib)
    finally:
        stdlib.close()


@tokioloop_only
def test_opentelemetry_instruments_and_slow_callback_spans(loop):
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tokioloop.exporters import otel

    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    hooked = []
    instrumentation = otel.instrument(
        loop, name="worker", meter_provider=meter_provider, tracer_provider=tracer_provider,
        slow_callback_threshold=0.02, hook=hooked.append)
    try:
        run_some(loop)
        data = reader.get_metrics_data()
    finally:
        instrumentation.close()
        meter_provider.shutdown()
    names = {metric.name: metric
             for resource in data.resource_metrics
             for scope in resource.scope_metrics
             for metric in scope.metrics}
    for name in ("tokioloop.turns", "tokioloop.callbacks", "tokioloop.threadsafe_calls",
                 "tokioloop.time.running", "tokioloop.time.parked", "tokioloop.utilization",
                 "tokioloop.timer.lateness.max", "tokioloop.ready_depth",
                 "tokioloop.pending_timers", "tokioloop.fds.watched", "tokioloop.dns.in_flight",
                 "tokioloop.executor.jobs_in_flight", "tokioloop.open",
                 "tokioloop.callback.duration"):
        assert name in names, name
    durations = names["tokioloop.callback.duration"].data.data_points
    assert sum(point.count for point in durations) == 3
    assert all(point.attributes == {"tokioloop.loop": "worker"} for point in durations)
    finished = spans.get_finished_spans()
    assert [span.name for span in finished] == ["tokioloop.slow_callback"] * 3
    assert all(span.end_time - span.start_time >= 20_000_000 for span in finished)
    assert "sleep" in finished[0].attributes["tokioloop.callback"]
    assert len(hooked) == 3
    # Closed: the slow-callback timing is off again.
    run_some(loop)
    assert len(hooked) == 3
