"""Prometheus metrics of one application (its own registry: no global state)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.http_requests = Counter(
            "teleconsult_http_requests", "HTTP requests by route and status",
            ["method", "route", "status"], registry=self.registry)
        self.http_latency = Histogram(
            "teleconsult_http_request_seconds", "HTTP request latency by route",
            ["route"], registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
