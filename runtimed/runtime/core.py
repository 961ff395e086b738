"""The Runtime: every operation of the contract, over one in-memory state and a store.

The Runtime is the only object the web layer calls. It knows nothing of HTTP: it takes and
returns domain values and raises ``RuntimedError`` subclasses.

Every mutation follows one path (``_commit``): check, build a ``Change`` (around the one
runtime event a mutation of the contract appends; published observations and restore warnings
append none), apply it to memory, then wait for the store to make it durable.
Applying and building happen without an ``await`` in between, so concurrent mutations never
interleave half-way; if the store fails, the change is undone and the caller gets the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..domain.catalog import (
    CreateWorkerRequest,
    TaskIntent,
    WorkerDetail,
    WorkerLifecycleAck,
    WorkerState,
    WorkerStatus,
    WorkerSummary,
)
from ..domain.errors import (
    InvalidRequest,
    LimitTooLarge,
    RuntimeStopped,
    StatePoisoned,
    StoreError,
    WorkerNotFound,
    WrongRuntime,
)
from ..domain.identity import WorkerRef, format_worker_id, generate_runtime_id
from ..domain.interaction import WorkerInput, WorkerInteractionAck
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

log = logging.getLogger("runtimed.runtime")

DIAG_LOCAL_DEFAULT_RESOURCES = "runtime.local_default_resources"
DIAG_TOOLS_LESS = "worker.tools_less"

#: Snapshot entries are bounded in count (the projection limit) and in content bytes.
SNAPSHOT_CONTENT_BYTES = 1024 * 1024
#: Event names the Runtime publishes itself, or that the WebSocket protocol reserves.
RESERVED_OBSERVATIONS = frozenset({"snapshot", "user_message", "system_item", "worker_status"})


@dataclass(frozen=True, slots=True)
class RuntimeStats:
    """Counters for the metrics endpoint, read at scrape time."""

    workers_by_status: Mapping[WorkerStatus, int]
    observations_published: int
    subscriber_overruns: int
    observers: int
    store_flushes: int
    store_flush_seconds: LatencyHistogram


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

    __slots__ = ("counts", "diagnostics", "events", "status", "workers")

    def __init__(self) -> None:
        self.workers: dict[str, WorkerState] = {}  # insertion order is creation order
        self.counts: Counter[WorkerStatus] = Counter()
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
            previous = self.workers.get(state.worker_ref.worker_id)
            if previous is not None:
                self.counts[previous.status] -= 1
            self.counts[state.status] += 1
            self.workers[state.worker_ref.worker_id] = state


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
        self._worker_sequence = restored.worker_sequence
        self._events = list(restored.events)
        self._diagnostics = list(restored.diagnostics)
        for state in restored.workers:
            self._workers[state.worker_ref.worker_id] = state
            self._status_counts[state.status] += 1
        self._transcripts = {wid: list(restored.transcripts.get(wid, ())) for wid in self._workers}
        durable = self._durable
        durable.workers = dict(self._workers)
        durable.counts = Counter(self._status_counts)
        durable.events = len(self._events)
        durable.diagnostics = len(self._diagnostics)
        durable.status = self._status
        self._bus.restore(restored.observation_sequence, restored.observations, restored.observations_trimmed)

    async def _record_restore_warnings(self, warnings: list[tuple[str, str]]) -> None:
        first_id = len(self._diagnostics) + 1
        diagnostics = tuple(
            RuntimeDiagnostic(first_id + i, Severity.WARNING, code, message)
            for i, (code, message) in enumerate(warnings)
        )
        await self._commit(Change(event=None, runtime_status=self._status, diagnostics=diagnostics))

    async def close(self) -> None:
        """End observation subscriptions and release the store."""
        self._bus.close()
        await self._store.close()

    # ------------------------------------------------------------------ reads

    @property
    def runtime_id(self) -> str:
        return self._runtime_id

    def worker_ref(self, worker_id: str) -> WorkerRef:
        """The ref of ``worker_id`` in this runtime (raises ``InvalidWorkerId`` when blank)."""
        return WorkerRef(self._runtime_id, worker_id)

    def summary(self) -> RuntimeSummary:
        durable = self._durable
        counts = durable.counts
        return RuntimeSummary(
            runtime_id=self._runtime_id,
            display_name=self._options.display_name,
            backend=self._store.backend,
            status=durable.status,
            worker_count=len(durable.workers),
            active_worker_count=counts[WorkerStatus.RUNNING],
            stopped_worker_count=counts[WorkerStatus.STOPPED],
            cancelled_worker_count=counts[WorkerStatus.CANCELLED],
            diagnostic_count=durable.diagnostics,
            limits=self._limits,
        )

    def list_workers(self) -> list[WorkerSummary]:
        return [WorkerSummary.of(state) for state in self._durable.workers.values()]

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
        return await self._store.check_writable()

    def stats(self) -> RuntimeStats:
        return RuntimeStats(
            workers_by_status={status: self._durable.counts[status] for status in WorkerStatus},
            observations_published=self._bus.published,
            subscriber_overruns=self._bus.overruns,
            observers=self._bus.subscriber_count(),
            store_flushes=self._store.flushes,
            store_flush_seconds=self._store.flush_seconds,
        )

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

    # -------------------------------------------------------------- mutations

    async def create_worker(self, request: CreateWorkerRequest) -> WorkerDetail:
        self._require_running()
        if isinstance(request.intent, TaskIntent) and not request.intent.objective.strip():
            raise InvalidRequest("task objective must not be empty")
        for capability in request.requested_capabilities:
            if not capability.name.strip():
                raise InvalidRequest("capability name must not be empty")

        worker_id = format_worker_id(self._worker_sequence + 1)
        ref = WorkerRef(self._runtime_id, worker_id)
        event = self._next_event(EventKind.WORKER_CREATED, f"worker {worker_id} created", ref)
        state = WorkerState(
            worker_ref=ref,
            request=request,
            status=WorkerStatus.RUNNING,
            transcript_len=0,
            last_event_id=event.id,
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
        first_id = len(self._diagnostics) + 1
        change = Change(
            event=event,
            runtime_status=self._status,
            workers=(state,),
            diagnostics=tuple(
                RuntimeDiagnostic(first_id + i, Severity.INFO, code, message, ref)
                for i, (code, message) in enumerate(diagnostics)
            ),
        )
        await self._commit(change)
        log.info("worker %s created", worker_id)
        return WorkerDetail.of(state)

    async def send_input(self, ref: WorkerRef, worker_input: WorkerInput) -> WorkerInteractionAck:
        self._require_running()
        state = self._worker(ref)
        if not worker_input.content.strip():
            raise InvalidRequest("worker input content must not be empty")
        if state.status is not WorkerStatus.RUNNING:
            raise InvalidRequest(f"worker {ref.worker_id} is not running")

        event = self._next_event(EventKind.WORKER_INPUT_ACCEPTED, "worker input accepted", state.worker_ref)
        entry = TranscriptEntry(
            sequence=state.transcript_len + 1,
            worker_ref=state.worker_ref,
            role=TranscriptRole(worker_input.kind.value),
            content=worker_input.content,
            event_id=event.id,
        )
        new_state = dataclasses.replace(state, transcript_len=entry.sequence, last_event_id=event.id)
        kind = "user_message" if entry.role is TranscriptRole.USER else "system_item"
        observation = self._bus.reserve(state.worker_ref, kind, {"sequence": entry.sequence, "content": entry.content})
        await self._commit(
            Change(
                event=event,
                runtime_status=self._status,
                workers=(new_state,),
                transcript=(entry,),
                observations=(observation,),
            )
        )
        return WorkerInteractionAck(
            worker_ref=new_state.worker_ref,
            status=new_state.status,
            transcript_sequence=entry.sequence,
            event_id=event.id,
        )

    async def stop_worker(self, ref: WorkerRef, reason: str | None = None) -> WorkerLifecycleAck:
        """Move a running worker to ``stopped``; on any other worker, change nothing."""
        return await self._end_worker(ref, WorkerStatus.STOPPED, EventKind.WORKER_STOPPED, reason, "worker stopped")

    async def cancel_worker(self, ref: WorkerRef, reason: str | None = None) -> WorkerLifecycleAck:
        """Move a running worker to ``cancelled``; on any other worker, change nothing."""
        return await self._end_worker(
            ref, WorkerStatus.CANCELLED, EventKind.WORKER_CANCELLED, reason, "worker cancelled"
        )

    async def _end_worker(
        self, ref: WorkerRef, status: WorkerStatus, kind: EventKind, reason: str | None, default_reason: str
    ) -> WorkerLifecycleAck:
        self._require_running()
        state = self._worker(ref)
        if state.status is not WorkerStatus.RUNNING:
            return WorkerLifecycleAck(state.worker_ref, state.status, state.last_event_id)
        # A blank reason says nothing, so the event gets the default message instead.
        message = reason if reason is not None and reason.strip() else default_reason
        event = self._next_event(kind, message, state.worker_ref)
        new_state = dataclasses.replace(state, status=status, last_event_id=event.id)
        observation = self._bus.reserve(state.worker_ref, "worker_status", {"status": status.value, "reason": message})
        await self._commit(
            Change(event=event, runtime_status=self._status, workers=(new_state,), observations=(observation,))
        )
        log.info("worker %s %s: %s", ref.worker_id, status.value, message)
        return WorkerLifecycleAck(new_state.worker_ref, new_state.status, event.id)

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

    def _next_event(self, kind: EventKind, message: str, ref: WorkerRef | None = None) -> RuntimeEvent:
        return RuntimeEvent(id=len(self._events) + 1, kind=kind, message=message, worker_ref=ref)

    async def _commit(self, change: Change) -> None:
        """The one path of every mutation: apply to memory, wait until the store has it, then
        publish its observations — so an observer never sees what was not made durable.

        Applying before the store answers lets the next mutation build on this one while the
        store writes both in one flush (group commit). If the store fails, it fails this change
        and every later one (they were built on it), and they are undone newest first.
        """
        if self._poisoned:
            if change.observations:
                self._bus.unreserve(change.observations[0].sequence)
            raise StatePoisoned()
        item = _Inflight(next(self._change_numbers), change, self._apply(change))
        self._inflight.append(item)
        pending = self._store.commit(change)
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
                done = self._inflight.popleft()
                self._durable.advance(done.change)
                for observation in done.change.observations:
                    self._bus.publish(observation)
            return
        if isinstance(error, StoreError):
            self._rollback_from(item)
            raise error
        # The store failed in a way it did not describe: memory and disk may now disagree,
        # so refuse further mutations until a restart.
        self._poisoned = True
        raise error

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

    def _apply(self, change: Change) -> _Undo:
        undo = _Undo(
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
        )
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
            self._status_counts[state.status] += 1
            self._workers[worker_id] = state
        for entry in change.transcript:
            self._transcripts[entry.worker_ref.worker_id].append(entry)
        self._diagnostics.extend(change.diagnostics)
        return undo

    def _revert(self, undo: _Undo) -> None:
        del self._events[undo.events_len :]
        del self._diagnostics[undo.diagnostics_len :]
        self._worker_sequence = undo.worker_sequence
        self._bus.unreserve(undo.observation_sequence + 1)
        self._status = undo.status
        for worker_id, previous, transcript_len in reversed(undo.workers):
            current = self._workers[worker_id]
            self._status_counts[current.status] -= 1
            if previous is None:
                del self._workers[worker_id]
                del self._transcripts[worker_id]
            else:
                self._status_counts[previous.status] += 1
                self._workers[worker_id] = previous
                del self._transcripts[worker_id][transcript_len:]
