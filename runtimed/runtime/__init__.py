"""The Runtime facade, its commit/undo journal and durable view (``core``), and the
observation bus (``bus``). This is the only surface the web layer and the daemon call."""

from .bus import Subscription
from .core import Runtime, RuntimeStats, WorkerSnapshot

__all__ = ["Runtime", "RuntimeStats", "Subscription", "WorkerSnapshot"]
