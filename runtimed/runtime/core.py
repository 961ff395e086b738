"""The Runtime: every operation of the contract, over one in-memory state and a store.

The Runtime is the only object the web layer calls. It knows nothing of HTTP: it takes and
returns domain values and raises ``RuntimedError`` subclasses.

Every mutation follows one path (``_commit``): check, build a ``Change`` (around the one
runtime event a mutation of the contract appends; published observations and restore warnings
append none), apply it to memory, then wait for the store to make it durable.
Applying and building happen without an ``await`` in between, so concurrent mutations never
interleave half-way; if the store fails, the change is undone and the caller gets the error.

Executing workers (§9): an attached ``ExecutionBackend`` (``runtime.execution``) runs the workers
whose profile names an agent. The Runtime keeps their ``WorkerExecution`` (turns, queued inputs,
what was delivered) in the worker's state and tells the backend, once a change is durable, what
to start, wake or stop; the backend reports back through ``update_execution``, ``begin_turn``,
``observe``, ``end_turn``, ``stop_worker`` and ``diagnose``, each a durable change.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..domain.catalog import (
    BuiltinProfile,
    CreateWorkerRequest,
    NamedProfile,
    ProfileSelector,
    TaskIntent,
    WorkerDetail,
    WorkerLifecycleAck,
    WorkerPage,
    WorkerState,
    WorkerStatus,
    WorkerSummary,
)
from ..domain.errors import (
    InputQueueFull,
    InvalidRequest,
    LimitTooLarge,
    RuntimeStopped,
    StatePoisoned,
    StoreError,
    WorkerDeleted,
    WorkerLimitReached,
    WorkerNotExecuting,
    WorkerNotFound,
    WorkerRunning,
    WrongRuntime,
)
from ..domain.execution import (
    AgentInfo,
    ExecutionState,
    InterruptAck,
    PermissionAnswer,
    PermissionRequest,
    ProcessExit,
    ProfileSummary,
    StopReason,
    WorkerExecution,
)
from ..domain.idempotency import KeptAnswer
from ..domain.identity import WorkerRef, format_worker_id, generate_runtime_id, worker_sequence
from ..domain.interaction import InputKind, WorkerInput, WorkerInteractionAck
from ..domain.management import RuntimeOptions, RuntimeStatus, RuntimeSummary
from ..domain.observation import (
    EventBatch,
    EventKind,
    Observation,
    RuntimeDiagnostic,
    RuntimeEvent,
    Severity,
    TranscriptEntry,
    TranscriptProjection,
    TranscriptRole,
)
from ..domain.stats import LatencyHistogram
from ..store.base import Change, RestoredState, Store
from .bus import ObservationBus, Subscription
from .execution import ExecutionBackend, TurnStart
from .idempotency import IdempotencyClaim, IdempotencyTable, Render
from .pages import WorkerIndex

log = logging.getLogger("runtimed.runtime")

DIAG_LOCAL_DEFAULT_RESOURCES = "runtime.local_default_resources"
DIAG_TOOLS_LESS = "worker.tools_less"
DIAG_RECORD_ONLY = "worker.record_only"
DIAG_TURN_FAILED = "worker.turn_failed"

#: Snapshot entries are bounded in count (the projection limit) and in content bytes.
SNAPSHOT_CONTENT_BYTES = 1024 * 1024
#: Event names the Runtime publishes itself, or that the WebSocket protocol reserves.
RESERVED_OBSERVATIONS = frozenset(
    {"snapshot", "user_message", "system_item", "worker_status", "turn_started", "assistant_message", "turn_ended"}
)
#: Seconds; from a quick echo to a long agent turn.
TURN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: The input roles a turn delivers (an assistant entry is a turn's reply, never its input).
INPUT_ROLES = frozenset({TranscriptRole.USER, TranscriptRole.SYSTEM})
#: Per input kind: its transcript role and the observation that publishes it.
_INPUT_ROLES = {
    InputKind.USER: (TranscriptRole.USER, "user_message"),
    InputKind.SYSTEM: (TranscriptRole.SYSTEM, "system_item"),
}


class _Keep(Enum):
    """``update_execution``'s "leave this field as it is" (``None`` is a value of several)."""

    KEEP = "keep"


KEEP = _Keep.KEEP


def describe_selector(selector: ProfileSelector) -> str:
    """How a diagnostic names a profile selector: ``builtin:coder`` (a built-in selector's value
    as given), ``named:<name>``, or ``runtime_default``."""
    if isinstance(selector, BuiltinProfile):
        return selector.value
    if isinstance(selector, NamedProfile):
        return f"named:{selector.value}"
    return "runtime_default"


@dataclass(frozen=True, slots=True)
class RuntimeStats:
    """Counters for the metrics endpoint, read at scrape time."""

    workers_by_status: Mapping[WorkerStatus, int]
    observations_published: int
    subscriber_overruns: int
    observers: int
    store_flushes: int
    store_flush_seconds: LatencyHistogram
    #: Running agent-backed workers by their execution state.
    agents_by_state: Mapping[ExecutionState, int]
    #: Permission requests of running workers waiting for the backend's answer.
    pending_permissions: int
    #: Turns ended since start, by how they ended, and how long they took (turns still open
    #: when the daemon last stopped are not timed).
    turns_by_stop_reason: Mapping[StopReason, int]
    turn_seconds: LatencyHistogram
    #: Times an agent went ``restarting`` since start.
    agent_restarts: int


@dataclass(frozen=True, slots=True)
class WorkerSnapshot:
    """A worker as it is now, with its newest transcript entries (the WebSocket's first frame)."""

    worker: WorkerDetail
    entries: list[TranscriptEntry]


@dataclass(frozen=True, slots=True)
class _Undo:
    """What ``_apply`` needs to put memory back as it was before one change."""

    events_len: int
    diagnostics_len: int
    worker_sequence: int
    observation_sequence: int
    status: RuntimeStatus
    workers: tuple[tuple[str, WorkerState | None, int], ...]  # (id, previous state, transcript length)
    deleted: tuple[tuple[str, WorkerState, list[TranscriptEntry]], ...] = ()
    kept: tuple[tuple[str, KeptAnswer | None], ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class _Inflight:
    """A change applied to memory and not yet durable; ``index`` orders changes."""

    index: int
    change: Change
    undo: _Undo


class _DurableView:
    """The runtime as of the last change the store has made durable: what reads answer from.

    Mutations build on the newest state (changes not yet durable included, so concurrent
    requests can share a flush); reads must not show what a failed flush or a crash could still
    take back, or a poller could keep an event id that is later given to another event.
    Transcript entries and the event and diagnostic logs are shared with the newest state and
    read up to the lengths recorded here.
    """

    __slots__ = ("diagnostics", "events", "index", "status", "workers")

    def __init__(self) -> None:
        self.workers: dict[str, WorkerState] = {}  # insertion order is creation order
        self.index = WorkerIndex()  # also the count of workers of each status
        self.events = 0
        self.diagnostics = 0
        self.status = RuntimeStatus.STOPPED

    def advance(self, change: Change) -> None:
        if change.event is not None:
            self.events = change.event.id
        if change.diagnostics:
            self.diagnostics = change.diagnostics[-1].id
        self.status = change.runtime_status
        for state in change.workers:
            worker_id = state.worker_ref.worker_id
            previous = self.workers.get(worker_id)
            if previous is None:
                self.index.add(_sequence_of(worker_id), state.status)
            elif previous.status is not state.status:
                self.index.move(_sequence_of(worker_id), previous.status, state.status)
            self.workers[worker_id] = state
        for worker_id in change.deleted:
            deleted = self.workers.pop(worker_id)
            self.index.remove(_sequence_of(worker_id), deleted.status)


class Runtime:
    """A runtime of workers: create, observe, talk to, stop and cancel them."""

    def __init__(self, store: Store, options: RuntimeOptions, runtime_id: str) -> None:
        """Prefer ``await Runtime.open(store, options)``, which restores and starts the runtime."""
        self._store = store
        self._options = options
        self._limits = options.limits
        self._runtime_id = runtime_id
        self._status = RuntimeStatus.STOPPED
        self._worker_sequence = 0
        self._events: list[RuntimeEvent] = []
        self._diagnostics: list[RuntimeDiagnostic] = []
        self._workers: dict[str, WorkerState] = {}  # insertion order is creation order
        self._transcripts: dict[str, list[TranscriptEntry]] = {}
        self._status_counts: Counter[WorkerStatus] = Counter()
        self._bus = ObservationBus(self._limits.observation_backlog, self._limits.subscriber_queue)
        # Changes applied to memory that the store has not yet made durable, oldest first.
        self._inflight: deque[_Inflight] = deque()
        self._change_numbers = itertools.count(1)
        self._durable = _DurableView()
        self._poisoned = False
        self._backend: ExecutionBackend | None = None
        self._running_agents = 0  # running agent-backed workers, changes not yet durable included
        self._turns_ended: Counter[StopReason] = Counter()
        self._turn_seconds = LatencyHistogram(TURN_BUCKETS)
        self._turn_started_at: dict[str, float] = {}  # worker id -> when its open turn started
        self._agent_restarts = 0
        self._idempotency = IdempotencyTable(self._limits.idempotency_key_ttl_seconds)

    @classmethod
    async def open(cls, store: Store, options: RuntimeOptions | None = None) -> Runtime:
        """Build a Runtime over ``store``: restore what it holds, or start a new runtime."""
        options = options or RuntimeOptions()
        restored = await store.open(options.runtime_id)
        if restored is None:
            runtime = cls(store, options, options.runtime_id or generate_runtime_id(store.id_prefix))
            await store.create(runtime.runtime_id)
            await runtime._append_runtime_started()
        else:
            # A restart is not an event: every read answers as it did before the restart.
            runtime = cls(store, options, restored.runtime_id)
            runtime._restore(restored)
            if not restored.events:
                # Created, but stopped before its first event was written: start it now.
                await runtime._append_runtime_started()
            if restored.warnings:
                await runtime._record_restore_warnings(restored.warnings)
        return runtime

    def _restore(self, restored: RestoredState) -> None:
        self._status = restored.status
        self._events = list(restored.events)
        self._diagnostics = list(restored.diagnostics)
        # The event log is the commit record (§8), so it settles two things whatever a store
        # restored (§11): a worker it says was deleted stays gone, even if a store still holds
        # it (a crash before its files were removed), and no id it ever named is given again,
        # even once the newest worker is deleted and its files are gone.
        sequence = restored.worker_sequence
        deleted: set[str] = set()
        for event in self._events:
            if event.worker_ref is None:
                continue
            if event.kind is EventKind.WORKER_CREATED:
                sequence = max(sequence, worker_sequence(event.worker_ref.worker_id) or 0)
            elif event.kind is EventKind.WORKER_DELETED:
                deleted.add(event.worker_ref.worker_id)
        self._worker_sequence = sequence
        for state in restored.workers:
            if state.worker_ref.worker_id in deleted:
                continue
            self._workers[state.worker_ref.worker_id] = state
            self._status_counts[state.status] += 1
            self._running_agents += _runs_an_agent(state)
        self._transcripts = {wid: list(restored.transcripts.get(wid, ())) for wid in self._workers}
        durable = self._durable
        durable.workers = dict(self._workers)
        durable.index = WorkerIndex((_sequence_of(wid), state.status) for wid, state in self._workers.items())
        durable.events = len(self._events)
        durable.diagnostics = len(self._diagnostics)
        durable.status = self._status
        observations = restored.observations
        if deleted:
            observations = [o for o in observations if o.worker_ref.worker_id not in deleted]
        self._bus.restore(restored.observation_sequence, observations, restored.observations_trimmed)
        self._idempotency.restore(restored.idempotency)

    async def _record_restore_warnings(self, warnings: list[tuple[str, str]]) -> None:
        first_id = len(self._diagnostics) + 1
        diagnostics = tuple(
            RuntimeDiagnostic(first_id + i, Severity.WARNING, code, message)
            for i, (code, message) in enumerate(warnings)
        )
        await self._commit(Change(event=None, runtime_status=self._status, diagnostics=diagnostics))

    def attach(self, backend: ExecutionBackend) -> None:
        """Let ``backend`` execute the workers whose profile names an agent (§9).

        Attach once, before serving and before the backend restores its workers: the backend is
        built after the Runtime, since it calls the Runtime back. ``close`` closes it.
        """
        if self._backend is not None:
            raise RuntimeError("an execution backend is attached already")
        self._backend = backend

    async def close(self) -> None:
        """Close the execution backend (its last turn ends are still recorded), then end
        observation subscriptions and release the store."""
        try:
            if self._backend is not None:
                await self._backend.close()
        finally:
            self._bus.close()
            await self._store.close()

    # ------------------------------------------------------------------ reads

    @property
    def runtime_id(self) -> str:
        return self._runtime_id

    def worker_ref(self, worker_id: str) -> WorkerRef:
        """The ref of ``worker_id`` in this runtime (raises ``InvalidWorkerId`` when blank)."""
        state = self._workers.get(worker_id)
        if state is not None:
            return state.worker_ref  # built and checked once, when the worker was created
        return WorkerRef(self._runtime_id, worker_id)

    def summary(self) -> RuntimeSummary:
        durable = self._durable
        count = durable.index.count
        return RuntimeSummary(
            runtime_id=self._runtime_id,
            display_name=self._options.display_name,
            backend=self._store.backend,
            status=durable.status,
            worker_count=len(durable.workers),
            active_worker_count=count(WorkerStatus.RUNNING),
            stopped_worker_count=count(WorkerStatus.STOPPED),
            cancelled_worker_count=count(WorkerStatus.CANCELLED),
            diagnostic_count=durable.diagnostics,
            limits=self._limits,
        )

    def list_workers(self) -> list[WorkerSummary]:
        return [WorkerSummary.of(state) for state in self._durable.workers.values()]

    def worker_page(
        self, statuses: frozenset[WorkerStatus] | None = None, after: str | None = None, limit: int | None = None
    ) -> WorkerPage:
        """Workers with one of ``statuses`` (``None``: any) created after the worker ``after``
        (which need not exist any more), at most ``limit`` (default and maximum
        ``max_event_batch_items``), in creation order; O(limit), whatever the catalog's size.

        ``next_after`` is the id of the last worker returned when more match, else ``None``;
        with ``limit`` 0 it is ``after`` itself while any match (a page of none moves no one on),
        ``worker-00000000`` (before every worker) when no ``after`` was given.
        Raises ``ValueError`` for an ``after`` that is no worker id of this runtime's making.
        """
        maximum = self._limits.max_event_batch_items
        if limit is None:
            limit = maximum
        if limit > maximum:
            raise LimitTooLarge(limit, maximum)
        start = 0
        if after is not None:
            sequence = worker_sequence(after)
            if sequence is None:
                raise ValueError(f"after must be a worker id (worker-<8 hex digits>), not {after!r}")
            start = sequence
        durable = self._durable
        sequences, more = durable.index.page(statuses, start, limit)
        workers = [WorkerSummary.of(durable.workers[format_worker_id(sequence)]) for sequence in sequences]
        if not more:
            next_after = None
        elif workers:
            next_after = workers[-1].worker_id
        else:
            # A page of none moves no one on: the next page starts where this one did (before
            # the first worker when no ``after`` was given), never ``None`` while any match.
            next_after = after if after is not None else format_worker_id(0)
        return WorkerPage(workers, next_after)

    def worker_detail(self, ref: WorkerRef) -> WorkerDetail:
        return WorkerDetail.of(self._read_worker(ref))

    def transcript(self, ref: WorkerRef, start: int = 0, limit: int | None = None) -> TranscriptProjection:
        """Transcript entries ``[start, start+limit)``; the cost grows with ``limit`` only."""
        state = self._read_worker(ref)
        maximum = self._limits.max_transcript_projection_items
        if limit is None:
            limit = min(256, maximum)
        if limit > maximum:
            raise LimitTooLarge(limit, maximum)
        total = state.transcript_len  # entries past it are not durable yet
        items = self._transcripts[ref.worker_id][start : min(start + limit, total)]
        end = start + len(items)
        return TranscriptProjection(
            worker_ref=state.worker_ref,
            start=start,
            limit=limit,
            total_items=total,
            items=items,
            next_start=end if end < total else None,
        )

    def events(self, cursor: int = 1, limit: int | None = None) -> EventBatch:
        """Runtime events with ids ``>= cursor`` (0 means 1), at most ``limit`` of them."""
        maximum = self._limits.max_event_batch_items
        if limit is None:
            limit = maximum
        if limit > maximum:
            raise LimitTooLarge(limit, maximum)
        cursor = max(cursor, 1)
        durable = self._durable.events
        # Event ids are dense from 1, so id n sits at index n-1.
        events = self._events[cursor - 1 : min(cursor - 1 + limit, durable)]
        next_cursor = events[-1].id + 1 if events else cursor
        return EventBatch(
            runtime_id=self._runtime_id,
            events=events,
            next_cursor=next_cursor,
            has_more=next_cursor <= durable,
        )

    def diagnostics(self) -> list[RuntimeDiagnostic]:
        return self._diagnostics[: self._durable.diagnostics]

    async def readiness(self) -> str | None:
        """Why the runtime cannot serve writes now, or ``None`` when it is ready."""
        if self._poisoned:
            return "runtime state is unusable after a failed store write; restart the daemon"
        if self._backend is not None and not self._backend.ready:
            return "agents of running workers are still being restored"
        return await self._store.check_writable()

    def stats(self) -> RuntimeStats:
        """The counters of the metrics endpoint (the agent figures walk the workers: a scrape is rare)."""
        agents: Counter[ExecutionState] = Counter()
        pending = 0
        for state in self._durable.workers.values():
            if state.execution is not None and state.status is WorkerStatus.RUNNING:
                agents[state.execution.state] += 1
                pending += state.execution.pending_permissions
        return RuntimeStats(
            workers_by_status={status: self._durable.index.count(status) for status in WorkerStatus},
            observations_published=self._bus.published,
            subscriber_overruns=self._bus.overruns,
            observers=self._bus.subscriber_count(),
            store_flushes=self._store.flushes,
            store_flush_seconds=self._store.flush_seconds,
            agents_by_state={state: agents[state] for state in ExecutionState},
            pending_permissions=pending,
            turns_by_stop_reason={reason: self._turns_ended[reason] for reason in StopReason},
            turn_seconds=self._turn_seconds,
            agent_restarts=self._agent_restarts,
        )

    def profiles(self) -> list[ProfileSummary]:
        """The profiles workers can be created with (none without an execution backend)."""
        if self._backend is None:
            return []
        return [ProfileSummary.of(profile, default) for profile, default in self._backend.profiles()]

    def permissions(self, ref: WorkerRef) -> list[PermissionRequest]:
        """The worker's permission requests waiting for an answer, oldest first (§9.5)."""
        return self._executing(self._read_worker(ref)).pending_permissions(ref)

    def executing_workers(self) -> list[WorkerDetail]:
        """Every ``running`` agent-backed worker with its whole stored execution: what the
        backend restores at start (§9.4)."""
        return [
            WorkerDetail.of(state)
            for state in self._durable.workers.values()
            if state.execution is not None and state.status is WorkerStatus.RUNNING
        ]

    # ------------------------------------------------------------ observation

    def observation_cursor_now(self, ref: WorkerRef) -> int:
        """The sequence of the worker's newest observation (0 if none): "seen everything"."""
        self._read_worker(ref)
        return self._bus.cursor_now(ref.worker_id)

    @property
    def observation_sequence(self) -> int:
        """The newest observation sequence of the whole runtime."""
        return self._bus.sequence

    def observation_snapshot(self, ref: WorkerRef) -> WorkerSnapshot:
        """The worker now, with its newest transcript entries: at most the projection limit,
        and at most ``SNAPSHOT_CONTENT_BYTES`` of content, dropping the oldest first."""
        state = self._read_worker(ref)
        entries: list[TranscriptEntry] = []
        budget = SNAPSHOT_CONTENT_BYTES
        for entry in reversed(self._transcripts[ref.worker_id][: state.transcript_len]):
            if len(entries) >= self._limits.max_transcript_projection_items:
                break
            budget -= len(entry.content.encode("utf-8", "surrogatepass"))
            if budget < 0:
                break
            entries.append(entry)
        entries.reverse()
        return WorkerSnapshot(WorkerDetail.of(state), entries)

    def replay_observations(self, ref: WorkerRef, after: int) -> list[Observation]:
        """Retained observations of the worker after sequence ``after``; raises ``CursorError``."""
        self._read_worker(ref)
        return self._bus.replay(ref.worker_id, after)

    def observation_resume_point(self, ref: WorkerRef, after: int) -> int:
        """Where a reader that saw up to ``after`` and then lost events should resume."""
        return self._bus.resume_point(ref.worker_id, after)

    @contextmanager
    def subscribe(self, ref: WorkerRef) -> Iterator[Subscription]:
        """Receive the worker's observations published from now on, until the block ends.

        Subscribe *before* replaying the backlog, or events published between the two are lost.
        """
        self._read_worker(ref)
        with self._bus.subscribe(ref.worker_id) as subscription:
            yield subscription

    async def observe(self, ref: WorkerRef, event: str, data: Mapping[str, Any] | None = None) -> Observation:
        """Publish an event of a worker (``text_delta``, ``log``, …) to its observers.

        This is how code beyond the contract's mutations (executing workers, an embedding
        program) speaks to observers. It appends no runtime event.
        """
        self._worker(ref)
        if not event or not event.replace("_", "").isalnum() or event != event.lower():
            raise ValueError(f"observation event names are snake_case, not {event!r}")
        if event in RESERVED_OBSERVATIONS:
            raise ValueError(f"observation event {event!r} is published by the Runtime itself")
        try:
            # Observations go over the wire and into the store as JSON: refuse what is not.
            json.dumps(data, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(f"observation data must be JSON: {error}") from None
        observation = self._bus.reserve(ref, event, dict(data) if data is not None else None)
        await self._commit(Change(event=None, runtime_status=self._status, observations=(observation,)))
        return observation

    # ---------------------------------------------------------- idempotency (§11)

    async def claim_idempotency_key(self, key: str, fingerprint: str, render: Render) -> KeptAnswer | IdempotencyClaim:
        """Look up ``key`` for a request identified by ``fingerprint``: the kept answer to
        replay, or a claim to carry the request out under (pass it to the mutation as
        ``claim=``, and ``release_idempotency_key`` it when the call is over, whatever its
        outcome). A request that finds the key claimed waits for that claim's release first.
        Raises ``IdempotencyKeyReused`` when the key was kept for another request.

        Checked before anything else (a stopped runtime, a deleted worker): a replay answers
        whatever has happened since. ``render`` turns the mutation's result into the answer to
        keep (status, body, warnings); the mutation keeps it with its change, atomically.
        """
        return await self._idempotency.claim(key, fingerprint, render)

    def release_idempotency_key(self, claim: IdempotencyClaim) -> None:
        self._idempotency.release(claim)

    def kept_answers(self) -> list[KeptAnswer]:
        """Every kept answer that has not expired, oldest first."""
        return self._idempotency.answers()

    async def _keep_only(self, claim: IdempotencyClaim | None, result: Any) -> None:
        """Keep the answer of a request that changed nothing: a change of its own, no event."""
        if claim is not None:
            await self._commit(
                Change(event=None, runtime_status=self._status, idempotency=self._idempotency.answer(claim, result))
            )

    # -------------------------------------------------------------- mutations

    async def create_worker(
        self, request: CreateWorkerRequest, *, claim: IdempotencyClaim | None = None
    ) -> WorkerDetail:
        self._require_running()
        if isinstance(request.intent, TaskIntent) and not request.intent.objective.strip():
            raise InvalidRequest("task objective must not be empty")
        for capability in request.requested_capabilities:
            if not capability.name.strip():
                raise InvalidRequest("capability name must not be empty")
        backend = self._backend
        profile = backend.resolve(request.profile) if backend is not None else None
        if backend is not None and profile is not None:
            backend.check_create(request, profile)
            if self._running_agents >= self._limits.max_running_agents:
                raise WorkerLimitReached(self._limits.max_running_agents)

        worker_id = format_worker_id(self._worker_sequence + 1)
        ref = WorkerRef(self._runtime_id, worker_id)
        event = self._next_event(EventKind.WORKER_CREATED, f"worker {worker_id} created", ref)
        state = WorkerState(
            worker_ref=ref,
            request=request,
            status=WorkerStatus.RUNNING,
            transcript_len=0,
            last_event_id=event.id,
            execution=WorkerExecution(profile=profile.name) if profile is not None else None,
        )
        diagnostics: list[tuple[str, str]] = []
        if request.config_bundle is None:
            diagnostics.append(
                (
                    DIAG_LOCAL_DEFAULT_RESOURCES,
                    "worker created without ConfigBundleRef; runtime-local defaults are assumed",
                )
            )
        if not request.requested_capabilities:
            diagnostics.append((DIAG_TOOLS_LESS, "worker created without requested tool capabilities"))
        if backend is not None and profile is None:
            # Without a backend nothing can execute, and the worker is the seed's: no diagnostic.
            diagnostics.append(
                (
                    DIAG_RECORD_ONLY,
                    f"profile {describe_selector(request.profile)} names no agent; the worker records input only",
                )
            )
        first_id = len(self._diagnostics) + 1
        detail = WorkerDetail.of(state)
        change = Change(
            event=event,
            runtime_status=self._status,
            workers=(state,),
            diagnostics=tuple(
                RuntimeDiagnostic(first_id + i, Severity.INFO, code, message, ref)
                for i, (code, message) in enumerate(diagnostics)
            ),
            idempotency=self._idempotency.answer(claim, detail),
        )
        await self._commit(change)
        log.info("worker %s created", worker_id)
        if backend is not None and profile is not None:
            self._tell_backend(backend.start, ref)
        return detail

    async def send_input(
        self, ref: WorkerRef, worker_input: WorkerInput, *, claim: IdempotencyClaim | None = None
    ) -> WorkerInteractionAck:
        # The hot path of the API: each value is built once, directly (``dataclasses.replace``
        # costs several times a constructor call).
        self._require_running()
        state = self._worker(ref)
        content = worker_input.content
        if not content.strip():
            raise InvalidRequest("worker input content must not be empty")
        if state.status is not WorkerStatus.RUNNING:
            raise InvalidRequest(f"worker {ref.worker_id} is not running")
        execution = state.execution
        if execution is not None:
            if execution.queued_inputs >= self._limits.max_queued_inputs:
                raise InputQueueFull(ref.worker_id, self._limits.max_queued_inputs)
            execution = dataclasses.replace(execution, queued_inputs=execution.queued_inputs + 1)

        worker_ref = state.worker_ref
        event_id = len(self._events) + 1
        sequence = state.transcript_len + 1
        event = RuntimeEvent(event_id, EventKind.WORKER_INPUT_ACCEPTED, "worker input accepted", worker_ref)
        role, kind = _INPUT_ROLES[worker_input.kind]
        entry = TranscriptEntry(sequence, worker_ref, role, content, event_id)
        new_state = WorkerState(worker_ref, state.request, state.status, sequence, event_id, execution)
        ack = WorkerInteractionAck(worker_ref, WorkerStatus.RUNNING, sequence, event_id)
        kept = self._idempotency.answer(claim, ack) if claim is not None else ()
        observation = self._bus.reserve(worker_ref, kind, {"sequence": sequence, "content": content})
        await self._commit(Change(event, self._status, (new_state,), (entry,), (), (observation,), kept))
        if execution is not None and self._backend is not None:
            self._tell_backend(self._backend.wake, ref)
        return ack

    async def stop_worker(
        self, ref: WorkerRef, reason: str | None = None, *, claim: IdempotencyClaim | None = None
    ) -> WorkerLifecycleAck:
        """Move a running worker to ``stopped``; on any other worker, change nothing."""
        return await self._end_worker(
            ref, WorkerStatus.STOPPED, EventKind.WORKER_STOPPED, reason, "worker stopped", claim
        )

    async def cancel_worker(
        self, ref: WorkerRef, reason: str | None = None, *, claim: IdempotencyClaim | None = None
    ) -> WorkerLifecycleAck:
        """Move a running worker to ``cancelled``; on any other worker, change nothing."""
        return await self._end_worker(
            ref, WorkerStatus.CANCELLED, EventKind.WORKER_CANCELLED, reason, "worker cancelled", claim
        )

    async def _end_worker(
        self,
        ref: WorkerRef,
        status: WorkerStatus,
        kind: EventKind,
        reason: str | None,
        default_reason: str,
        claim: IdempotencyClaim | None,
    ) -> WorkerLifecycleAck:
        self._require_running()
        state = self._worker(ref)
        if state.status is not WorkerStatus.RUNNING:
            ack = WorkerLifecycleAck(state.worker_ref, state.status, state.last_event_id)
            await self._keep_only(claim, ack)
            return ack
        # A blank reason says nothing, so the event gets the default message instead.
        message = reason if reason is not None and reason.strip() else default_reason
        event = self._next_event(kind, message, state.worker_ref)
        new_state = dataclasses.replace(state, status=status, last_event_id=event.id)
        ack = WorkerLifecycleAck(new_state.worker_ref, new_state.status, event.id)
        observation = self._bus.reserve(state.worker_ref, "worker_status", {"status": status.value, "reason": message})
        await self._commit(
            Change(
                event=event,
                runtime_status=self._status,
                workers=(new_state,),
                observations=(observation,),
                idempotency=self._idempotency.answer(claim, ack),
            )
        )
        log.info("worker %s %s: %s", ref.worker_id, status.value, message)
        if state.execution is not None and self._backend is not None:
            # Told once the status change is durable, and not waited for: the status changes at
            # once (§9.3), while the process gets its grace in the backend's own task.
            self._tell_backend(self._backend.stop, ref, kill=status is WorkerStatus.CANCELLED)
        return ack

    async def delete_worker(self, ref: WorkerRef, *, claim: IdempotencyClaim | None = None) -> WorkerRef:
        """Delete a worker that is not ``running`` (§11): its state, transcript and retained
        observations go, with a ``worker_deleted`` event; its observers are told
        (``runtime.worker_deleted``) and their sessions end; its id is never given again (the
        worker sequence stays). The event log and the diagnostics keep what names it."""
        self._require_running()
        state = self._worker(ref)
        if state.status is WorkerStatus.RUNNING:
            raise WorkerRunning(ref.worker_id)
        worker_ref = state.worker_ref
        event = self._next_event(EventKind.WORKER_DELETED, f"worker {worker_ref.worker_id} deleted", worker_ref)
        await self._commit(
            Change(
                event=event,
                runtime_status=self._status,
                deleted=(worker_ref.worker_id,),
                idempotency=self._idempotency.answer(claim, worker_ref),
            )
        )
        log.info("worker %s deleted", worker_ref.worker_id)
        if state.execution is not None and self._backend is not None:
            self._tell_backend(self._backend.delete, worker_ref)
        return worker_ref

    async def stop(self) -> RuntimeSummary:
        """Stop the runtime: running workers become ``stopped`` and mutations are refused."""
        if self._status is RuntimeStatus.STOPPED:
            return self.summary()
        event = self._next_event(EventKind.RUNTIME_STOPPED, f"runtime {self._runtime_id} stopped")
        stopped = tuple(
            dataclasses.replace(state, status=WorkerStatus.STOPPED, last_event_id=event.id)
            for state in self._workers.values()
            if state.status is WorkerStatus.RUNNING
        )
        observations = tuple(
            self._bus.reserve(state.worker_ref, "worker_status", {"status": "stopped", "reason": "runtime stopped"})
            for state in stopped
        )
        await self._commit(
            Change(event=event, runtime_status=RuntimeStatus.STOPPED, workers=stopped, observations=observations)
        )
        log.info("runtime %s stopped (%d running workers stopped)", self._runtime_id, len(stopped))
        if self._backend is not None:
            for state in stopped:
                if state.execution is not None:
                    self._tell_backend(self._backend.stop, state.worker_ref, kill=False)
        return self.summary()

    async def start(self) -> RuntimeSummary:
        """Reopen a stopped runtime; workers stay as they are. On a running runtime, nothing."""
        if self._status is RuntimeStatus.RUNNING:
            return self.summary()
        await self._append_runtime_started()
        return self.summary()

    async def _append_runtime_started(self) -> None:
        event = self._next_event(EventKind.RUNTIME_STARTED, "runtime started")
        await self._commit(Change(event=event, runtime_status=RuntimeStatus.RUNNING))
        log.info("runtime %s started", self._runtime_id)

    # ------------------------------------------------------------ execution (§9)

    async def interrupt(
        self, ref: WorkerRef, drop_queued: bool = False, *, claim: IdempotencyClaim | None = None
    ) -> InterruptAck:
        """End the worker's running turn, if any; with ``drop_queued``, drop its queued inputs
        first (they stay in the transcript and are never delivered).

        Appends ``worker_interrupted`` when it dropped an input or ended a turn, else changes
        nothing. The drop is made durable before the backend is asked, so the agent, once its
        turn has ended, finds nothing queued to deliver next. On a worker that is no longer
        running it changes nothing (its stop ended the turn already).
        """
        self._require_running()
        state = self._worker(ref)
        backend = self._executing(state)
        if state.status is not WorkerStatus.RUNNING:
            ack = InterruptAck(state.worker_ref, state.status, None, 0)
            await self._keep_only(claim, ack)
            return ack
        execution = self._execution_of(state)
        dropped = execution.queued_inputs if drop_queued else 0
        if dropped:
            event = self._next_event(EventKind.WORKER_INTERRUPTED, "worker interrupted", state.worker_ref)
            # Every input entry up to the transcript's end is consumed, so begin_turn finds none.
            drained = dataclasses.replace(execution, delivered_sequence=state.transcript_len, queued_inputs=0)
            new_state = dataclasses.replace(state, last_event_id=event.id, execution=drained)
            await self._commit(Change(event=event, runtime_status=self._status, workers=(new_state,)))
            log.info("worker %s: %d queued inputs dropped", ref.worker_id, dropped)
        turn = await backend.interrupt(ref)
        if turn is not None and not dropped:
            # The answer is kept with the event of the turn it ended.
            state = self._worker(ref)
            event = self._next_event(EventKind.WORKER_INTERRUPTED, "worker interrupted", state.worker_ref)
            new_state = dataclasses.replace(state, last_event_id=event.id)
            ack = InterruptAck(state.worker_ref, state.status, turn, dropped)
            await self._commit(
                Change(
                    event=event,
                    runtime_status=self._status,
                    workers=(new_state,),
                    idempotency=self._idempotency.answer(claim, ack),
                )
            )
        else:
            # Nothing changed after the drop (if any), which had to be durable before the
            # backend was asked: the answer is kept on its own, once it is known.
            state = self._worker(ref)
            ack = InterruptAck(state.worker_ref, state.status, turn, dropped)
            await self._keep_only(claim, ack)
        if turn is not None:
            log.info("worker %s: turn %d interrupted", ref.worker_id, turn)
        return ack

    async def answer_permission(self, ref: WorkerRef, request_id: str, option_id: str) -> PermissionAnswer:
        """Answer a pending permission request of the worker's agent (§9.5)."""
        self._require_running()
        backend = self._executing(self._worker(ref))
        return await backend.answer_permission(ref, request_id, option_id)

    async def update_execution(
        self,
        ref: WorkerRef,
        *,
        state: ExecutionState | _Keep = KEEP,
        pid: int | _Keep | None = KEEP,
        agent: AgentInfo | _Keep | None = KEEP,
        session_id: str | _Keep | None = KEEP,
        exit: ProcessExit | _Keep | None = KEEP,
        pending_permissions: int | _Keep = KEEP,
    ) -> WorkerExecution:
        """Record what the backend knows of the worker's agent: a keyword left out is kept.

        A durable change with no runtime event (the worker's ``last_event_id`` stays); allowed
        whatever the worker's status, so an exit is recorded after a stop too. ``busy`` is
        ``begin_turn``'s to set, and ``idle`` waits for the open turn to end (§9.2).
        """
        worker = self._worker(ref)
        execution = self._execution_of(worker)
        if state is ExecutionState.BUSY:
            raise ValueError("an execution becomes busy by begin_turn, which makes its turn durable first")
        if state is ExecutionState.IDLE and execution.open_turn is not None:
            raise ValueError(f"worker {ref.worker_id} has turn {execution.open_turn} open; end it before going idle")
        if isinstance(pending_permissions, int) and pending_permissions < 0:
            raise ValueError(f"pending_permissions must not be negative, not {pending_permissions}")
        # A field left out keeps its value (``None`` is a value of several, hence ``KEEP``).
        updated = WorkerExecution(
            profile=execution.profile,
            state=execution.state if state is KEEP else state,
            pid=execution.pid if pid is KEEP else pid,
            agent=execution.agent if agent is KEEP else agent,
            session_id=execution.session_id if session_id is KEEP else session_id,
            turns=execution.turns,
            turns_started=execution.turns_started,
            queued_inputs=execution.queued_inputs,
            pending_permissions=execution.pending_permissions if pending_permissions is KEEP else pending_permissions,
            delivered_sequence=execution.delivered_sequence,
            open_turn=execution.open_turn,
            exit=execution.exit if exit is KEEP else exit,
        )
        if updated == execution:
            return execution
        await self._commit(
            Change(
                event=None,
                runtime_status=self._status,
                workers=(dataclasses.replace(worker, execution=updated),),
            )
        )
        if updated.state is ExecutionState.RESTARTING and execution.state is not ExecutionState.RESTARTING:
            self._agent_restarts += 1
        return updated

    async def begin_turn(self, ref: WorkerRef) -> TurnStart | None:
        """Take the worker's oldest undelivered input and start turn ``turns_started + 1``.

        One durable change, made before the prompt is sent: ``delivered_sequence`` (so the input
        reaches the agent at most once, across a crash too), ``open_turn``, state ``busy``, one
        input fewer queued, and the ``turn_started`` observation. ``None`` when nothing is
        queued or the worker is no longer running (queued inputs of a stopped worker are never
        delivered).
        """
        state = self._worker(ref)
        execution = self._execution_of(state)
        if execution.open_turn is not None:
            raise ValueError(f"worker {ref.worker_id} has turn {execution.open_turn} open already")
        if state.status is not WorkerStatus.RUNNING or execution.queued_inputs == 0:
            return None
        transcript = self._transcripts[ref.worker_id]
        # Entries past delivered_sequence are queued inputs, and the replies of turns that ended.
        entry = next(
            (e for e in transcript[execution.delivered_sequence : state.transcript_len] if e.role in INPUT_ROLES),
            None,
        )
        if entry is None:
            raise AssertionError(f"worker {ref.worker_id} counts {execution.queued_inputs} queued inputs, and has none")
        turn = execution.turns_started + 1
        started = dataclasses.replace(
            execution,
            state=ExecutionState.BUSY,
            turns_started=turn,
            delivered_sequence=entry.sequence,
            open_turn=turn,
            queued_inputs=execution.queued_inputs - 1,
        )
        observation = self._bus.reserve(
            state.worker_ref, "turn_started", {"turn": turn, "input_sequence": entry.sequence}
        )
        await self._commit(
            Change(
                event=None,
                runtime_status=self._status,
                workers=(dataclasses.replace(state, execution=started),),
                observations=(observation,),
            )
        )
        self._turn_started_at[ref.worker_id] = time.monotonic()
        return TurnStart(turn, entry)

    async def end_turn(
        self, ref: WorkerRef, turn: int, stop_reason: StopReason, text: str = "", error: str | None = None
    ) -> None:
        """End the worker's open turn ``turn``, however it ended (§9.3).

        One durable change around the ``worker_turn_ended`` event ("turn <n> ended: <reason>"),
        the worker's new ``last_event_id``: the assistant entry holding ``text`` (none when it is
        empty), whose ``event_id`` the event is; ``turns`` + 1, no open turn, state ``idle`` (if
        it was ``busy`` and the worker still runs: an agent that went away keeps the state the
        backend gave it); with ``error``, a warning diagnostic ``worker.turn_failed``; then the
        observations ``assistant_message`` (with the entry) and ``turn_ended``. Allowed on a
        stopped or cancelled worker and on a stopped runtime: a turn still ends after a stop.
        """
        state = self._worker(ref)
        execution = self._execution_of(state)
        if execution.open_turn != turn:
            raise ValueError(f"turn {turn} of worker {ref.worker_id} is not open (open: {execution.open_turn})")
        event = self._next_event(
            EventKind.WORKER_TURN_ENDED, f"turn {turn} ended: {stop_reason.value}", state.worker_ref
        )
        entries: tuple[TranscriptEntry, ...] = ()
        observations: list[Observation] = []
        if text:
            entry = TranscriptEntry(
                state.transcript_len + 1, state.worker_ref, TranscriptRole.ASSISTANT, text, event.id
            )
            entries = (entry,)
            observations.append(
                self._bus.reserve(
                    state.worker_ref, "assistant_message", {"turn": turn, "sequence": entry.sequence, "content": text}
                )
            )
        observations.append(
            self._bus.reserve(state.worker_ref, "turn_ended", {"turn": turn, "stop_reason": stop_reason.value})
        )
        running = state.status is WorkerStatus.RUNNING and execution.state is ExecutionState.BUSY
        ended = dataclasses.replace(
            execution,
            turns=execution.turns + 1,
            open_turn=None,
            state=ExecutionState.IDLE if running else execution.state,
        )
        diagnostics: tuple[RuntimeDiagnostic, ...] = ()
        if error is not None:
            diagnostics = (
                RuntimeDiagnostic(
                    len(self._diagnostics) + 1,
                    Severity.WARNING,
                    DIAG_TURN_FAILED,
                    f"turn {turn} failed: {error}",
                    state.worker_ref,
                ),
            )
        new_state = dataclasses.replace(
            state, transcript_len=state.transcript_len + len(entries), last_event_id=event.id, execution=ended
        )
        await self._commit(
            Change(
                event=event,
                runtime_status=self._status,
                workers=(new_state,),
                transcript=entries,
                diagnostics=diagnostics,
                observations=tuple(observations),
            )
        )
        self._turns_ended[stop_reason] += 1
        started_at = self._turn_started_at.pop(ref.worker_id, None)
        if started_at is not None:
            self._turn_seconds.observe(time.monotonic() - started_at)
        log.info("worker %s: turn %d ended: %s", ref.worker_id, turn, stop_reason.value)

    async def diagnose(self, ref: WorkerRef | None, severity: Severity, code: str, message: str) -> RuntimeDiagnostic:
        """Record a diagnostic (``worker.agent_exited`` …), naming the worker ``ref`` if given.
        A durable change with no runtime event, like a restore warning."""
        worker_ref = self._worker(ref).worker_ref if ref is not None else None
        diagnostic = RuntimeDiagnostic(len(self._diagnostics) + 1, severity, code, message, worker_ref)
        await self._commit(Change(event=None, runtime_status=self._status, diagnostics=(diagnostic,)))
        return diagnostic

    # ---------------------------------------------------------------- helpers

    def _require_running(self) -> None:
        if self._status is not RuntimeStatus.RUNNING:
            raise RuntimeStopped(self._runtime_id)

    def _worker(self, ref: WorkerRef) -> WorkerState:
        """The newest state of a worker, for mutations to build on."""
        return self._lookup(self._workers, ref)

    def _read_worker(self, ref: WorkerRef) -> WorkerState:
        """The durable state of a worker, for reads."""
        return self._lookup(self._durable.workers, ref)

    def _lookup(self, workers: Mapping[str, WorkerState], ref: WorkerRef) -> WorkerState:
        if ref.runtime_id != self._runtime_id:
            raise WrongRuntime(ref.runtime_id, self._runtime_id)
        try:
            return workers[ref.worker_id]
        except KeyError:
            raise WorkerNotFound(ref.worker_id, self._runtime_id) from None

    def _executing(self, state: WorkerState) -> ExecutionBackend:
        """The backend that runs the worker; ``WorkerNotExecuting`` for a record-only worker (or
        any worker, when no backend is attached: nothing in this process runs it)."""
        if state.execution is None or self._backend is None:
            raise WorkerNotExecuting(state.worker_ref.worker_id)
        return self._backend

    @staticmethod
    def _execution_of(state: WorkerState) -> WorkerExecution:
        """The worker's execution, for the backend's calls: asking of a record-only worker is a bug."""
        if state.execution is None:
            raise ValueError(f"worker {state.worker_ref.worker_id} is record-only: it has no execution")
        return state.execution

    def _tell_backend(self, call: Callable[..., None], ref: WorkerRef, **kwargs: Any) -> None:
        """Hand the backend a change that is durable already: its failure is logged, never the
        client's answer (what the client asked for has happened)."""
        try:
            call(ref, **kwargs)
        except Exception:
            log.exception("the execution backend failed in %s for worker %s", call.__name__, ref.worker_id)

    def _next_event(self, kind: EventKind, message: str, ref: WorkerRef | None = None) -> RuntimeEvent:
        return RuntimeEvent(id=len(self._events) + 1, kind=kind, message=message, worker_ref=ref)

    async def _commit(self, change: Change) -> None:
        """The one path of every mutation: apply to memory, wait until the store has it, then
        publish its observations — so an observer never sees what was not made durable.

        The store is handed the change first: a store that answers ``None`` has made it durable
        already (the memory store always does), and when no earlier change is still pending,
        nothing can take it back, so it is applied without an undo record and is durable at
        once. Otherwise it is applied with one, before the store answers, so that the next
        mutation can build on it while the store writes both in one flush (group commit). If
        the store fails, it fails this change and every later one (they were built on it), and
        they are undone newest first.
        """
        if self._poisoned:
            if change.observations:
                self._bus.unreserve(change.observations[0].sequence)
            raise StatePoisoned()
        pending = self._store.commit(change)
        if pending is None and not self._inflight:
            self._apply(change)
            self._made_durable(change)
            return
        undo = self._undo_record(change)
        try:
            self._apply(change)
        except BaseException:
            # The store has the change and memory does not: they no longer agree.
            self._poisoned = True
            raise
        item = _Inflight(next(self._change_numbers), change, undo)
        self._inflight.append(item)
        if pending is not None:
            try:
                # Shielded: a caller that goes away must not abandon a change that is already
                # in memory; whatever the store answers is settled when it answers.
                await asyncio.shield(pending)
            except asyncio.CancelledError:
                pending.add_done_callback(lambda _: self._settle_quietly(item, pending))
                raise
            except BaseException:
                pass  # settled below, with the store's own error
        self._settle(item, pending)

    def _settle(self, item: _Inflight, pending: asyncio.Future[None] | None) -> None:
        error = pending.exception() if pending is not None else None
        if error is None:
            # Changes become durable in order: every change before this one is durable too.
            while self._inflight and self._inflight[0].index <= item.index:
                self._made_durable(self._inflight.popleft().change)
            return
        if isinstance(error, StoreError):
            self._rollback_from(item)
            raise error
        # The store failed in a way it did not describe: memory and disk may now disagree,
        # so refuse further mutations until a restart.
        self._poisoned = True
        raise error

    def _made_durable(self, change: Change) -> None:
        """Reads see ``change`` from now on, and its observations are published."""
        self._durable.advance(change)
        publish = self._bus.publish
        for observation in change.observations:
            publish(observation)
        for worker_id in change.deleted:
            self._bus.forget(worker_id, WorkerDeleted(worker_id))

    def _settle_quietly(self, item: _Inflight, pending: asyncio.Future[None]) -> None:
        # The caller is gone: the change is kept or undone all the same; only its error has
        # nobody left to hear it.
        with contextlib.suppress(BaseException):
            self._settle(item, pending)

    def _rollback_from(self, item: _Inflight) -> None:
        """Undo ``item`` and every change applied after it, newest first."""
        if item not in self._inflight:
            return  # undone already, with an earlier change it was built on
        while self._inflight and self._inflight[-1].index >= item.index:
            self._revert(self._inflight.pop().undo)
        if not self._inflight:
            self._store.resume()

    def _undo_record(self, change: Change) -> _Undo:
        """What puts memory back as it is now, should ``change`` (not yet applied) fail."""
        return _Undo(
            events_len=len(self._events),
            diagnostics_len=len(self._diagnostics),
            worker_sequence=self._worker_sequence,
            observation_sequence=change.observations[0].sequence - 1 if change.observations else self._bus.sequence,
            status=self._status,
            workers=tuple(
                (
                    state.worker_ref.worker_id,
                    self._workers.get(state.worker_ref.worker_id),
                    len(self._transcripts.get(state.worker_ref.worker_id, ())),
                )
                for state in change.workers
            ),
            deleted=tuple(
                (worker_id, self._workers[worker_id], self._transcripts[worker_id]) for worker_id in change.deleted
            ),
            kept=self._idempotency.current(change.idempotency),
        )

    def _apply(self, change: Change) -> None:
        if change.event is not None:
            self._events.append(change.event)
        self._status = change.runtime_status
        for state in change.workers:
            worker_id = state.worker_ref.worker_id
            previous = self._workers.get(worker_id)
            if previous is None:
                self._worker_sequence += 1
                self._transcripts[worker_id] = []
            else:
                self._status_counts[previous.status] -= 1
                self._running_agents -= _runs_an_agent(previous)
            self._status_counts[state.status] += 1
            self._running_agents += _runs_an_agent(state)
            self._workers[worker_id] = state
        for entry in change.transcript:
            self._transcripts[entry.worker_ref.worker_id].append(entry)
        if change.diagnostics:
            self._diagnostics.extend(change.diagnostics)
        for worker_id in change.deleted:
            deleted = self._workers.pop(worker_id)
            del self._transcripts[worker_id]
            self._status_counts[deleted.status] -= 1
            self._running_agents -= _runs_an_agent(deleted)
        if change.idempotency:
            self._idempotency.apply(change.idempotency)

    def _revert(self, undo: _Undo) -> None:
        self._idempotency.revert(undo.kept)
        if undo.deleted:
            for worker_id, state, transcript in undo.deleted:
                self._workers[worker_id] = state
                self._transcripts[worker_id] = transcript
                self._status_counts[state.status] += 1
                self._running_agents += _runs_an_agent(state)
            # Back in creation order, which the dict's order is.
            self._workers = dict(sorted(self._workers.items(), key=lambda item: _sequence_of(item[0])))
        del self._events[undo.events_len :]
        del self._diagnostics[undo.diagnostics_len :]
        self._worker_sequence = undo.worker_sequence
        self._bus.unreserve(undo.observation_sequence + 1)
        self._status = undo.status
        for worker_id, previous, transcript_len in reversed(undo.workers):
            current = self._workers[worker_id]
            self._status_counts[current.status] -= 1
            self._running_agents -= _runs_an_agent(current)
            if previous is None:
                del self._workers[worker_id]
                del self._transcripts[worker_id]
            else:
                self._status_counts[previous.status] += 1
                self._running_agents += _runs_an_agent(previous)
                self._workers[worker_id] = previous
                del self._transcripts[worker_id][transcript_len:]


def _runs_an_agent(state: WorkerState) -> int:
    """1 for a running agent-backed worker (what ``[limits] max_running_agents`` counts), else 0."""
    return int(state.execution is not None and state.status is WorkerStatus.RUNNING)


def _sequence_of(worker_id: str) -> int:
    """The creation sequence of a worker id this runtime made (``worker-0000002a``: 42)."""
    sequence = worker_sequence(worker_id)
    if sequence is None:
        raise ValueError(f"worker id {worker_id!r} is not of the form worker-<hex sequence>")
    return sequence
