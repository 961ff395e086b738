"""Shared fixtures: a real Runtime over the memory store, and the real aiohttp app around it.

Tests that start processes (a real ``runtimed serve``, a benchmark, ``systemd-analyze``) are
marked ``@pytest.mark.process``; ``make test-fast`` runs the others. An unmarked test that
starts a process fails, so the mark stays true.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from runtimed.daemon.config import ServerConfig
from runtimed.runtime import Runtime
from runtimed.store import MemoryStore
from runtimed.web.app import create_app

from .helpers import FakeBackend


@pytest.fixture
async def runtime() -> Runtime:
    runtime = await Runtime.open(MemoryStore())
    yield runtime
    await runtime.close()


@pytest.fixture
def backend(runtime: Runtime) -> FakeBackend:
    """A ``FakeBackend`` attached to ``runtime`` (and so to ``client``'s app): ``builtin:echo``
    and ``named:careful`` make agent-backed workers, anything else record-only ones."""
    backend = FakeBackend(runtime)
    runtime.attach(backend)
    return backend


@pytest.fixture
def server_config() -> ServerConfig:
    """Override in a test module to run the app with other settings."""
    return ServerConfig()


@pytest.fixture
async def client(aiohttp_client, runtime, server_config):
    return await aiohttp_client(create_app(runtime, server_config))


@pytest.fixture(autouse=True)
def _processes_only_in_marked_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("process") is not None:
        return

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{request.node.nodeid} starts a process: mark it @pytest.mark.process")

    # asyncio's subprocesses go through Popen too.
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
