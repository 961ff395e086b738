"""The Runtime facade, its commit/undo journal and durable view (``core``), the observation bus
(``bus``), and the interface of whatever executes workers (``execution``). This is the only
surface the web layer, the daemon and the agent supervisor call."""

from .bus import Subscription
from .core import Runtime, RuntimeStats, WorkerSnapshot
from .execution import ExecutionBackend, TurnStart

__all__ = ["ExecutionBackend", "Runtime", "RuntimeStats", "Subscription", "TurnStart", "WorkerSnapshot"]
