"""Plain counters the Runtime and its stores keep about themselves, for the metrics endpoint.

No metrics library here: the domain counts, the web layer exports (``runtimed.web.metrics``).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

#: Seconds; from a fast fsync (0.1 ms) up to a very slow disk.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class LatencyHistogram:
    """Counts of observed durations per bucket upper bound, with their sum."""

    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))  # last: +Inf
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.buckets) + 1:
            self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``(upper bound, observations at or below it)`` pairs ending with ``+Inf``, as Prometheus wants."""
        pairs, running = [], 0
        for bound, count in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            running += count
            pairs.append((bound, running))
        return pairs
