"""Helpers shared by test modules: request bodies, API shortcuts, stores that fail, waiting, the
process table (``alive``, ``group_members``), and ``FakeBackend``, an execution backend that
runs nothing.

Test modules import from here (and from ``process``), never from each other or from conftest.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from runtimed.domain.catalog import CreateWorkerRequest, ProfileSelector
from runtimed.domain.errors import CursorExpired, InvalidRequest, PermissionNotFound, StoreIo
from runtimed.domain.execution import (
    AgentProfile,
    ExecutionConfig,
    PermissionAnswer,
    PermissionOption,
    PermissionRequest,
    ProfileSource,
    StopReason,
    ToolCallInfo,
)
from runtimed.domain.identity import WorkerRef
from runtimed.runtime import Runtime
from runtimed.store import Change, FsStore, MemoryStore

#: The agents the tests run: the built-in echo agent, and the two in tests/agents/.
AGENTS_DIR = Path(__file__).with_name("agents")
ECHO_AGENT = (sys.executable, "-m", "runtimed.agents.echo")
SDK_AGENT = (sys.executable, str(AGENTS_DIR / "sdk_agent.py"))
RAW_AGENT = (sys.executable, str(AGENTS_DIR / "raw_agent.py"))

TASK_REQUEST: dict[str, Any] = {
    "intent": {"kind": "task", "objective": "write the release notes"},
    "profile": {"kind": "builtin", "value": "builtin:coder"},
    "requested_capabilities": [{"name": "read"}],
}


#: A create request whose profile names the built-in echo agent (``FakeBackend`` resolves it).
ECHO_REQUEST: dict[str, Any] = {
    "intent": {"kind": "assistant"},
    "profile": {"kind": "builtin", "value": "builtin:echo"},
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


# ------------------------------------------------------------ processes


def group_members(pgid: int) -> list[int]:
    """The live processes of process group ``pgid``, from /proc.

    Zombies do not count: a grandchild whose parent died is reaped by init, and in a container
    whose init does not reap, ``os.killpg(pgid, 0)`` would still find it.
    """
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp …: comm may hold spaces and parentheses, so split after it.
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# ------------------------------------------------------------ execution (§9)

ECHO = AgentProfile("builtin:echo", ProfileSource.BUILTIN, ("python", "-m", "runtimed.agents.echo"))
CAREFUL = AgentProfile("careful", ProfileSource.CONFIG, ("careful-agent", "--acp"), env={"SECRET": "not shown"})


class FakeBackend:
    """An ``ExecutionBackend`` in the process that runs nothing: it resolves ``builtin:echo`` and
    ``named:careful``, records every call the Runtime makes (``calls``), and lets a test play the
    agent supervisor through the Runtime's backend-facing methods (``run_turn``). Its
    ``interrupt`` ends the open turn ``cancelled`` as an agent honouring ``session/cancel`` would.

    The real supervisor (``runtimed.agents``) brings its own end-to-end tests with real agent
    processes; these test the Runtime's side of the interface only.
    """

    def __init__(self, runtime: Runtime, default_profile: str | None = None) -> None:
        self.runtime = runtime
        self.config = ExecutionConfig(profiles=(ECHO, CAREFUL), default_profile=default_profile)
        self.calls: list[tuple[Any, ...]] = []
        self.ready = True
        self.closed = False
        #: When set, ``check_create`` refuses every create with this reason.
        self.refusal: str | None = None
        #: What the turn an interrupt ends had streamed, made its assistant entry.
        self.interrupted_text = ""
        self.pending: dict[str, list[PermissionRequest]] = {}
        #: Whether each ``start``, ``wake`` and ``stop`` found its change durable already.
        self.saw_durable: list[bool] = []

    def named(self, name: str) -> list[tuple[Any, ...]]:
        """The calls of one kind, without their name: ``named("stop")`` -> ``[(worker_id, kill)]``."""
        return [call[1:] for call in self.calls if call[0] == name]

    def _durable(self, ref: WorkerRef) -> bool:
        detail = self.runtime.worker_detail(ref)  # reads answer only what is durable
        return detail.execution is not None

    def profiles(self) -> list[tuple[AgentProfile, bool]]:
        return self.config.listing()

    def resolve(self, selector: ProfileSelector) -> AgentProfile | None:
        return self.config.resolve(selector)

    def check_create(self, request: CreateWorkerRequest, profile: AgentProfile) -> None:
        self.calls.append(("check_create", profile.name))
        if self.refusal is not None:
            raise InvalidRequest(self.refusal)

    def start(self, ref: WorkerRef) -> None:
        self.saw_durable.append(self._durable(ref))
        self.calls.append(("start", ref.worker_id))

    def wake(self, ref: WorkerRef) -> None:
        detail = self.runtime.worker_detail(ref)
        self.saw_durable.append(detail.execution is not None and detail.transcript_len > 0)
        self.calls.append(("wake", ref.worker_id))

    def stop(self, ref: WorkerRef, *, kill: bool) -> None:
        self.saw_durable.append(self.runtime.worker_detail(ref).status.value != "running")
        self.calls.append(("stop", ref.worker_id, kill))

    def delete(self, ref: WorkerRef) -> None:
        self.calls.append(("delete", ref.worker_id))

    async def interrupt(self, ref: WorkerRef) -> int | None:
        self.calls.append(("interrupt", ref.worker_id))
        execution = self.runtime.worker_detail(ref).execution
        assert execution is not None
        if execution.open_turn is None:
            return None
        await self.runtime.end_turn(ref, execution.open_turn, StopReason.CANCELLED, self.interrupted_text)
        return execution.open_turn

    def ask(self, ref: WorkerRef, request_id: str, turn: int | None = 1) -> PermissionRequest:
        """Make a permission request of the worker's agent pending, as the supervisor would."""
        request = PermissionRequest(
            ref,
            request_id,
            turn,
            ToolCallInfo("call-1", "rm -rf build", "delete"),
            (PermissionOption("allow", "Allow", "allow_once"), PermissionOption("reject", "Reject", "reject_once")),
        )
        self.pending.setdefault(ref.worker_id, []).append(request)
        return request

    def pending_permissions(self, ref: WorkerRef) -> list[PermissionRequest]:
        return list(self.pending.get(ref.worker_id, ()))

    async def answer_permission(self, ref: WorkerRef, request_id: str, option_id: str) -> PermissionAnswer:
        self.calls.append(("answer_permission", ref.worker_id, request_id, option_id))
        pending = self.pending.get(ref.worker_id, [])
        request = next((r for r in pending if r.request_id == request_id), None)
        if request is None:
            raise PermissionNotFound(ref.worker_id, request_id)
        if option_id not in [option.option_id for option in request.options]:
            raise InvalidRequest(f"option {option_id} was not offered by permission request {request_id}")
        pending.remove(request)
        return PermissionAnswer(request_id, option_id)

    async def close(self) -> None:
        self.calls.append(("close",))
        self.closed = True


async def run_turn(
    runtime: Runtime, ref: WorkerRef, text: str | None = None, reason: StopReason = StopReason.END_TURN
) -> int | None:
    """Deliver the worker's next queued input and end its turn, as the supervisor does with an
    echo agent (``text`` defaults to ``echo: <input>``); the turn's number, or ``None`` when
    nothing was queued."""
    started = await runtime.begin_turn(ref)
    if started is None:
        return None
    await runtime.end_turn(ref, started.turn, reason, f"echo: {started.entry.content}" if text is None else text)
    return started.turn


# ------------------------------------------------------------ the fs store


def reads(runtime: Runtime) -> tuple:
    """Everything a client reads, observations and executions included."""
    workers = runtime.list_workers()
    return (
        runtime.summary(),
        workers,
        [runtime.worker_detail(w.worker_ref) for w in workers],
        [runtime.transcript(w.worker_ref, 0, 256) for w in workers],
        runtime.events(1, 256),
        runtime.diagnostics(),
        [retained(runtime, w.worker_ref) for w in workers],
        runtime.observation_sequence,
    )


def retained(runtime: Runtime, ref: WorkerRef) -> tuple[int, list]:
    """The observations the bus keeps for ``ref`` and the cursor older ones expired at."""
    try:
        return 0, runtime.replay_observations(ref, 0)
    except CursorExpired as expired:
        return expired.resume_from, runtime.replay_observations(ref, expired.resume_from)


async def crash(runtime: Runtime) -> None:
    """Leave the store as a killed daemon would: every acknowledged change in the log, no final
    checkpoint; the lock released as the kernel would."""
    store = runtime._store
    assert isinstance(store, FsStore)
    if store._flusher is not None:
        await asyncio.gather(store._flusher, return_exceptions=True)
    with store._pending_changed:
        store._pending.clear()
        store._closing = True
        store._pending_changed.notify()
    if store._checkpointer is not None:
        store._checkpointer.join()
    store._log.close()
    store._checkpoint_files.close()
    store._io.shutdown()
    store._fsyncs.shutdown()
    store._unlock()
