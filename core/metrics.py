"""Prometheus metrics of one application (its own registry: no global state).

Besides the HTTP counters and the process figures (RSS, open fds, CPU), the gauge
``teleconsult_asyncio_tasks`` counts the live asyncio tasks of the serving event loop
when ``/metrics`` is read: a task that outlives what spawned it (a leak the soak bench
looks for) shows as growth. ``teleconsult_gc_frozen_objects`` counts the objects kept out of
the garbage collector's passes (``teleconsult serve`` freezes what its start made).
"""

from __future__ import annotations

import asyncio
import gc
from dataclasses import dataclass, field
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class RuntimeCollector(Collector):
    """Figures of the running process read at scrape time: the live asyncio tasks of the running
    loop (none outside a loop) and the objects in the garbage collector's permanent generation
    (``gc.freeze``)."""

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        frozen = GaugeMetricFamily("teleconsult_gc_frozen_objects",
                                   "Objects kept out of the garbage collector's passes (frozen at start)")
        frozen.add_metric([], gc.get_freeze_count())
        yield frozen
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # read outside the serving loop (a test, a tool): nothing to count
            return
        gauge = GaugeMetricFamily("teleconsult_asyncio_tasks", "Live asyncio tasks of the serving event loop")
        gauge.add_metric([], tasks)
        yield gauge


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(RuntimeCollector())
        self.http_requests = Counter(
            "teleconsult_http_requests", "HTTP requests by route and status",
            ["method", "route", "status"], registry=self.registry)
        self.http_latency = Histogram(
            "teleconsult_http_request_seconds", "HTTP request latency by route",
            ["route"], registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
