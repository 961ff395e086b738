"""The narrow interface between the Runtime and whatever executes its workers.

The Runtime stays the single writer of the catalog and knows nothing of processes or ACP. It
talks to an ``ExecutionBackend`` (the agent supervisor, ``runtimed.agents``, is one) through the
calls below, and the backend speaks back only through the Runtime's own methods, each a durable
change like every other:

Runtime -> backend (this Protocol)
    ``resolve`` at create (which profile, if any, runs the worker), ``check_create`` (refuse a
    request before anything is created), ``start`` once the create is durable, ``wake`` once an
    input is durable, ``interrupt`` / ``stop`` / permissions on the REST routes of §9, and
    ``close`` at shutdown.

Backend -> Runtime (methods of ``Runtime``)
    ``update_execution(ref, …)``   state, pid, agent info, session id, exit, pending permissions
    ``begin_turn(ref)``            take the next queued input, number the turn, make it durable
                                   (``delivered_sequence``) and publish ``turn_started`` — all
                                   before the prompt is sent; ``None`` when nothing is queued
    ``observe(ref, event, data)``  turn events (``text_delta``, ``tool_call``, ``log`` …)
    ``end_turn(ref, turn, reason, text, error)``  the assistant entry, ``worker_turn_ended``,
                                   ``assistant_message`` and ``turn_ended``, state ``idle``
    ``stop_worker(ref, reason)``   the agent exited or failed to start (§9.3, §9.4)
    ``diagnose(ref, severity, code, message)``  ``worker.agent_exited`` and the like
    ``executing_workers()``        at restore: every running agent-backed worker, its state
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..domain.catalog import CreateWorkerRequest, ProfileSelector
from ..domain.execution import AgentProfile, PermissionAnswer, PermissionRequest
from ..domain.identity import WorkerRef
from ..domain.observation import TranscriptEntry


@dataclass(frozen=True, slots=True)
class TurnStart:
    """A turn the Runtime has made durable: its number and the input it delivers."""

    turn: int
    entry: TranscriptEntry


class ExecutionBackend(Protocol):
    """What the Runtime needs of an executor of workers."""

    def profiles(self) -> list[tuple[AgentProfile, bool]]:
        """Every profile workers can be created with, and whether it is the runtime default."""
        ...

    def resolve(self, selector: ProfileSelector) -> AgentProfile | None:
        """The agent that runs a worker created with ``selector``; ``None``: record-only."""
        ...

    def check_create(self, request: CreateWorkerRequest, profile: AgentProfile) -> None:
        """Refuse (``InvalidRequest``) a request the backend cannot run, before it is created."""
        ...

    def start(self, ref: WorkerRef) -> None:
        """Start the worker's agent in the background; its create is durable."""
        ...

    def wake(self, ref: WorkerRef) -> None:
        """An input of the worker is durable and queued: deliver it when the agent is idle."""
        ...

    async def interrupt(self, ref: WorkerRef) -> int | None:
        """End the running turn (``session/cancel``, pending permissions cancelled) and wait
        until it has ended; the turn's number, or ``None`` when none was running."""
        ...

    async def stop(self, ref: WorkerRef, *, kill: bool) -> None:
        """The worker is stopped (``kill=False``: cancel the turn, close stdin, then SIGTERM and
        SIGKILL after the grace) or cancelled (``kill=True``: SIGKILL at once); it is durable."""
        ...

    def pending_permissions(self, ref: WorkerRef) -> list[PermissionRequest]:
        """The worker's permission requests waiting for the backend's answer, oldest first."""
        ...

    async def answer_permission(self, ref: WorkerRef, request_id: str, option_id: str) -> PermissionAnswer:
        """Answer one (``PermissionNotFound``, or ``InvalidRequest`` for an option not offered)."""
        ...

    @property
    def ready(self) -> bool:
        """Whether every restore has been attempted (``/readyz`` waits for it)."""
        ...

    async def close(self) -> None:
        """Daemon shutdown: cancel running turns, wait (bounded), stop every agent. Workers stay
        ``running`` in the store, to be restored at the next start."""
        ...
