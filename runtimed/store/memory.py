"""The memory store: nothing is kept beyond the process, and every commit is durable at once."""

from __future__ import annotations

from .base import Change, RestoredState, Store


class MemoryStore(Store):
    """Keeps nothing beyond the Runtime's own in-memory state: a new process starts empty."""

    backend = "memory"
    id_prefix = "mem"

    async def open(self, runtime_id: str | None) -> RestoredState | None:
        return None

    def commit(self, change: Change) -> None:
        return None
