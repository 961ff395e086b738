"""Prometheus metrics (``GET /metrics``): the request metrics (``middleware`` records them for
every request, whatever its outcome) and the Runtime's own figures.

Each app has its own registry (no global state). HTTP metrics are recorded as requests end;
runtime figures (workers, observers, store flushes) are read from the Runtime at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric

from .keys import RUNTIME, WS_SESSIONS

REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RuntimeCollector:
    """Reads the Runtime's own counters when Prometheus scrapes."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        stats = self._app[RUNTIME].stats()
        workers = GaugeMetricFamily("runtimed_workers", "Workers by status.", labels=["status"])
        for status, count in stats.workers_by_status.items():
            workers.add_metric([status.value], count)
        yield workers
        yield GaugeMetricFamily(
            "runtimed_websocket_sessions", "Open observation WebSocket sessions.", value=len(self._app[WS_SESSIONS])
        )
        yield CounterMetricFamily(
            "runtimed_observation_events_published",
            "Observation events published to the bus.",
            value=stats.observations_published,
        )
        yield CounterMetricFamily(
            "runtimed_subscriber_overruns",
            "Observation subscribers cut off because they fell behind their queue.",
            value=stats.subscriber_overruns,
        )
        yield CounterMetricFamily(
            "runtimed_store_flushes", "Durable store writes (each may carry many requests).", value=stats.store_flushes
        )
        histogram = stats.store_flush_seconds
        yield HistogramMetricFamily(
            "runtimed_store_flush_seconds",
            "Time each store flush took, fsyncs included.",
            buckets=histogram.cumulative(),
            sum_value=histogram.total,
        )


class Metrics:
    """The registry of one app and the HTTP metrics recorded into it."""

    def __init__(self, app: web.Application) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "runtimed_http_requests",
            "HTTP requests answered, by method, route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "runtimed_http_request_duration_seconds",
            "Time to answer HTTP requests (WebSocket sessions: their whole length).",
            ["method", "route"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(RuntimeCollector(app))
        # The labelled children, looked up once each: prometheus-client's labels() costs more
        # than the rest of the bookkeeping of a small request.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        children = self._children.get((method, route, status))
        if children is None:
            children = self._children[(method, route, status)] = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)


def route_of(request: web.Request) -> str:
    """The route pattern, e.g. ``/v1/workers/{worker_id}``: bounded label values, unlike paths."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


async def get_metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
