"""Prometheus metrics (``GET /metrics``): the request metrics (``middleware`` records them for
every request, whatever its outcome) and the Runtime's own figures.

Each app has its own registry (no global state). HTTP metrics are recorded as requests end;
runtime figures (workers, observers, store flushes) are read from the Runtime at scrape time.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
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
        agents = GaugeMetricFamily(
            "runtimed_agents", "Agents of running workers, by execution state.", labels=["state"]
        )
        for state, count in stats.agents_by_state.items():
            agents.add_metric([state.value], count)
        yield agents
        yield GaugeMetricFamily(
            "runtimed_pending_permissions",
            "Permission requests of running workers' agents waiting for the backend's answer.",
            value=stats.pending_permissions,
        )
        yield CounterMetricFamily(
            "runtimed_agent_restarts", "Times an agent was restarted after a failure.", value=stats.agent_restarts
        )
        turns = CounterMetricFamily("runtimed_turns", "Agent turns ended, by stop reason.", labels=["stop_reason"])
        for reason, count in stats.turns_by_stop_reason.items():
            turns.add_metric([reason.value], count)
        yield turns
        turn_seconds = stats.turn_seconds
        yield HistogramMetricFamily(
            "runtimed_turn_duration_seconds",
            "Time from a turn's start to its end.",
            buckets=turn_seconds.cumulative(),
            sum_value=turn_seconds.total,
        )


class HttpMetrics:
    """The request metrics: ``runtimed_http_requests`` (by method, route and status) and
    ``runtimed_http_request_duration_seconds`` (by method and route), exported as
    prometheus-client's ``Counter`` and ``Histogram`` export them, ``_created`` samples included.

    They are kept in plain numbers rather than in prometheus-client's metrics, whose every
    ``inc`` and ``observe`` takes a lock and walks the buckets in Python: a couple of
    microseconds a request. Requests are recorded on the event loop's thread, and the scrape
    (``GET /metrics``) runs there too, so nothing needs a lock.
    """

    def __init__(self, buckets: tuple[float, ...] = REQUEST_BUCKETS) -> None:
        self._bounds = tuple(sorted(buckets))
        # The ``le`` labels as prometheus-client writes them (its floatToGoString, for these bounds).
        self._le = [repr(float(bound)) for bound in self._bounds] + ["+Inf"]
        #: (method, route, status) -> [count, created]
        self._requests: dict[tuple[str, str, int], list[float]] = {}
        #: (method, route) -> [count per bucket (+Inf last, not cumulative), sum, created]
        self._latency: dict[tuple[str, str], tuple[list[int], list[float]]] = {}

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        counter = self._requests.get((method, route, status))
        if counter is None:
            counter = self._requests[(method, route, status)] = [0, time.time()]
        counter[0] += 1
        latency = self._latency.get((method, route))
        if latency is None:
            latency = self._latency[(method, route)] = ([0] * (len(self._bounds) + 1), [0.0, time.time()])
        latency[0][bisect.bisect_left(self._bounds, seconds)] += 1  # the first bucket with seconds <= le
        latency[1][0] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "runtimed_http_requests",
            "HTTP requests answered, by method, route and status.",
            labels=["method", "route", "status"],
        )
        for (method, route, status), (count, created) in self._requests.items():
            requests.add_metric([method, route, str(status)], count, created=created)
        yield requests
        name = "runtimed_http_request_duration_seconds"
        latency = HistogramMetricFamily(
            name,
            "Time to answer HTTP requests (WebSocket sessions: their whole length).",
            labels=["method", "route"],
        )
        for (method, route), (counts, (total, created)) in self._latency.items():
            latency.add_metric([method, route], list(zip(self._le, itertools.accumulate(counts), strict=True)), total)
            latency.add_sample(name + "_created", {"method": method, "route": route}, created)
        yield latency


class Metrics:
    """The registry of one app: the HTTP metrics recorded into it, and the Runtime's own."""

    def __init__(self, app: web.Application) -> None:
        self.registry = CollectorRegistry()
        self.http = HttpMetrics()
        self.registry.register(self.http)
        self.registry.register(RuntimeCollector(app))
        self.record = self.http.record

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
