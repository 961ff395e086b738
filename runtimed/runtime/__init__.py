"""The Runtime facade, its commit/undo journal and durable view (``core``), the observation bus
(``bus``), the table of idempotency keys (``idempotency``), the catalog's page index
(``pages``), and the interface of whatever executes workers (``execution``). This is the only
surface the web layer, the daemon and the agent supervisor call."""

from .bus import Subscription
from .core import Runtime, RuntimeStats, WorkerSnapshot
from .execution import ExecutionBackend, TurnStart
from .idempotency import IdempotencyClaim

__all__ = [
    "ExecutionBackend",
    "IdempotencyClaim",
    "Runtime",
    "RuntimeStats",
    "Subscription",
    "TurnStart",
    "WorkerSnapshot",
]
