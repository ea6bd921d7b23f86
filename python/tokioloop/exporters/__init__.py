"""Exporters of ``loop.metrics()`` to monitoring systems, each needing its library as an
optional extra: ``tokioloop.exporters.prometheus`` (``pip install tokioloop[prometheus]``) and
``tokioloop.exporters.otel`` (``pip install tokioloop[opentelemetry]``). Nothing here is
imported by ``import tokioloop``."""
