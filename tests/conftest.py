"""Shared fixtures: a real Runtime over the memory store, and the real aiohttp app around it."""

from __future__ import annotations

from typing import Any

import pytest

from runtimed.daemon.config import ServerConfig
from runtimed.runtime import Runtime
from runtimed.store import MemoryStore
from runtimed.web.app import create_app

TASK_REQUEST: dict[str, Any] = {
    "intent": {"kind": "task", "objective": "write the release notes"},
    "profile": {"kind": "builtin", "value": "builtin:coder"},
    "requested_capabilities": [{"name": "read"}],
}


@pytest.fixture
async def runtime() -> Runtime:
    runtime = await Runtime.open(MemoryStore())
    yield runtime
    await runtime.close()


@pytest.fixture
def server_config() -> ServerConfig:
    """Override in a test module to run the app with other settings."""
    return ServerConfig()


@pytest.fixture
async def client(aiohttp_client, runtime, server_config):
    return await aiohttp_client(create_app(runtime, server_config))


async def create_worker(client, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Create a worker through the API and return its WorkerDetail."""
    response = await client.post("/v1/workers", json=body or TASK_REQUEST)
    assert response.status == 200, await response.text()
    return (await response.json())["worker"]
