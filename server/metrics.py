"""Prometheus metrics of one app: requests by site and status, latency, models loaded.

With several worker processes each keeps its own counters, so a scrape (answered by one of
them) would see a fraction of the traffic. ``capserve serve --workers N`` therefore sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start; prometheus_client then keeps every
value in a memory-mapped file there, and ``render`` sums the files of all workers.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from capserve.model_registry.registry import AVAILABLE, FAILED, LOADING, Registry

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROCESS_ENV) or None


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: Registry) -> None:
        self.collectors = CollectorRegistry()
        self.requests = Counter(
            "capserve_requests", "Recognition requests by site and HTTP status.", ("site", "status"),
            registry=self.collectors,
        )
        self.latency = Histogram(
            "capserve_request_seconds", "Time to answer a recognition request.", ("site",),
            buckets=LATENCY_BUCKETS, registry=self.collectors,
        )
        # Every worker loads the same registry: the worker answering the scrape sets the
        # gauge just before it renders, so the most recent value is the current one.
        self.models = Gauge(
            "capserve_models", "Registry entries by state.", ("state",), registry=self.collectors,
            multiprocess_mode="livemostrecent",
        )
        self._registry = registry
        self._children: dict[tuple[str, int], tuple] = {}

    def observe(self, site: str | None, status: int, seconds: float) -> None:
        """Count one request; ``site`` is None when it named no served site, so junk names
        cannot grow the number of series."""
        key = (site or "_unknown", status)
        children = self._children.get(key)
        if children is None:
            # labels() takes a lock and builds a tuple each call; a site's children never change.
            children = self._children[key] = (self.requests.labels(key[0], str(status)), self.latency.labels(key[0]))
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        states = [entry.state for entry in self._registry.entries()]
        for state in (AVAILABLE, LOADING, FAILED):
            self.models.labels(state).set(states.count(state))
        if multiprocess_dir() is None:
            return generate_latest(self.collectors)
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged)

    def close(self) -> None:
        """Drop this process's live gauges from the shared files (a worker that stops)."""
        if multiprocess_dir() is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())
