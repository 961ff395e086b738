"""Helpers shared by test modules: request bodies, API shortcuts, stores that fail, waiting.

Test modules import from here (and from ``process``), never from each other or from conftest.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from runtimed.domain.errors import StoreIo
from runtimed.store import Change, MemoryStore

TASK_REQUEST: dict[str, Any] = {
    "intent": {"kind": "task", "objective": "write the release notes"},
    "profile": {"kind": "builtin", "value": "builtin:coder"},
    "requested_capabilities": [{"name": "read"}],
}


async def create_worker(client: Any, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Create a worker through the API and return its WorkerDetail."""
    response = await client.post("/v1/workers", json=body or TASK_REQUEST)
    assert response.status == 200, await response.text()
    return (await response.json())["worker"]


class FailingStore(MemoryStore):
    """A store whose commits fail while ``failing`` is set, as a full disk would."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False
        self.committed: list[Change] = []

    def commit(self, change: Change) -> asyncio.Future[None] | None:
        if self.failing:
            return failed(StoreIo("append", "/tmp/events.jsonl", "No space left on device"))
        self.committed.append(change)
        return None


class BrokenStore(FailingStore):
    """A store that fails in a way it does not describe: memory may no longer match it."""

    def commit(self, change: Change) -> asyncio.Future[None] | None:
        if self.failing:
            return failed(OSError("the disk went away"))
        return super().commit(change)


def failed(error: BaseException) -> asyncio.Future[None]:
    """A future that has already failed with ``error``."""
    future = asyncio.get_running_loop().create_future()
    future.set_exception(error)
    return future


async def wait_until(condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``condition`` until it holds; fail the test if it does not within ``timeout`` seconds.

    The timeout only bounds a broken test: a passing one waits exactly as long as it needs.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        await asyncio.sleep(0.01)
