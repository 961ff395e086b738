"""The narrow interface between the Runtime and whatever executes its workers.

The Runtime stays the single writer of the catalog and knows nothing of processes or ACP. It
talks to an ``ExecutionBackend`` (the agent supervisor, ``runtimed.agents``, is one) through the
calls below, and the backend speaks back only through the Runtime's own methods, each a durable
change like every other.

**Wiring.** The backend needs the Runtime to call back, so it is built after it and attached:
``runtime = await Runtime.open(store, options)``, then ``backend = Supervisor(runtime, …)``,
``runtime.attach(backend)``, then the backend's restore (it reads ``executing_workers()``), then
serve. ``Runtime.close()`` closes the backend first (its last turn ends still reach the store),
then the store. Without a backend every worker is record-only, as in the seed.

Runtime -> backend (this Protocol)
    ``resolve`` at create (which profile, if any, runs the worker), ``check_create`` (refuse a
    request before anything is created), ``start`` once the create is durable, ``wake`` once an
    input is durable, ``stop`` once a stop or cancel (of the worker, or of the whole runtime) is
    durable, ``interrupt`` and the permission calls on the REST routes of §9, ``profiles`` for
    ``GET /v1/profiles``, ``ready`` for ``/readyz``, and ``close`` at shutdown. ``start``,
    ``wake`` and ``stop`` return at once: the backend does the work in tasks of its own, so a
    status change is answered without waiting for a process (§9.3: "stopped at once").

Backend -> Runtime (methods of ``Runtime``; each awaits durability, then returns)
    ``update_execution(ref, *, state=, pid=, agent=, session_id=, exit=, pending_permissions=)``
        the process's facts; a keyword left out is kept. Never ``busy`` (``begin_turn``'s), nor
        ``idle`` while a turn is open. Returns the new ``WorkerExecution``.
    ``begin_turn(ref) -> TurnStart | None``
        take the oldest undelivered input, number the turn, make it durable
        (``delivered_sequence``, ``open_turn``, state ``busy``) and publish ``turn_started`` — all
        before the prompt is sent; ``None`` when nothing is queued or the worker is not running.
    ``observe(ref, event, data)``
        turn events (``text_delta``, ``tool_call``, ``permission_requested``, ``log`` …).
    ``end_turn(ref, turn, stop_reason, text="", error=None)``
        the assistant entry (when ``text`` is not empty), the ``worker_turn_ended`` event,
        ``assistant_message`` and ``turn_ended``, state ``idle`` (if it was ``busy`` and the
        worker runs); ``error`` becomes a ``worker.turn_failed`` warning. Also after a stop.
    ``stop_worker(ref, reason)``
        the agent exited or failed to start (§9.3, §9.4); the Runtime then calls ``stop`` back,
        which must be harmless for an agent that is gone already. Like the REST stop, it raises
        ``RuntimeStopped`` on a stopped runtime, whose workers are all stopped already.
    ``diagnose(ref, severity, code, message)``
        ``worker.agent_exited``, ``worker.agent_start_failed`` and the like.
    ``executing_workers() -> list[WorkerDetail]``
        at restore: every ``running`` agent-backed worker, with its whole stored execution.
    ``worker_detail(ref)``
        a worker's request (workspace refs, capabilities) and execution, e.g. in ``start``.
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
        until it has ended (``end_turn`` done); the turn's number, or ``None`` when none was running."""
        ...

    def stop(self, ref: WorkerRef, *, kill: bool) -> None:
        """The worker is stopped (``kill=False``: cancel the turn, close stdin, then SIGTERM and
        SIGKILL after the grace) or cancelled (``kill=True``: SIGKILL at once); it is durable.
        Returns at once; the stop sequence runs in the backend's own task. Called for every
        such status change, whoever made it (the backend's own ``stop_worker`` too)."""
        ...

    def delete(self, ref: WorkerRef) -> None:
        """The worker (stopped or cancelled) is deleted, durably (§11): kill what is left of its
        agent, and remove the directory made for it (never a profile ``cwd`` or a workspace).
        Returns at once. The Runtime answers the agent's later calls about it ``WorkerNotFound``."""
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
