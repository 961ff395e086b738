"""Where a Runtime's state is kept beyond the Runtime object itself.

The Runtime holds its whole state in memory and is the only reader of it. A store is the
Runtime's journal: every mutation reaches it as one ``Change`` — the single runtime event the
mutation appends (the commit record) plus everything that event changed — and ``commit``
returns only once that change is as durable as the store makes it. At start, ``open`` hands
back what an earlier process left, so a Runtime can continue where it was.
"""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass, field

from ..domain.catalog import WorkerState
from ..domain.idempotency import KeptAnswer
from ..domain.management import RuntimeStatus
from ..domain.observation import Observation, RuntimeDiagnostic, RuntimeEvent, TranscriptEntry
from ..domain.stats import LatencyHistogram


@dataclass(frozen=True, slots=True)
class Change:
    """What one mutation of the Runtime changed, to be made durable as one unit.

    A mutation of the contract appends exactly one runtime ``event``; observations published
    by other code (``Runtime.observe``) make a change of their own with no event.

    ``idempotency`` holds the answers kept for ``Idempotency-Key`` requests (§11): made durable
    with the change that request made, in the same unit, so that no crash can leave a change
    carried out without its key recorded. A request that changed nothing makes a change of its
    own with no event that holds only its kept answer. ``deleted`` names the workers this change
    deletes (with a ``worker_deleted`` event): a store drops everything it keeps of them —
    worker state, transcript, observations and the directory it made — but never their kept
    answers, which expire by themselves, and never their place in the worker sequence (an id is
    never given twice).
    """

    event: RuntimeEvent | None
    runtime_status: RuntimeStatus
    workers: tuple[WorkerState, ...] = ()
    transcript: tuple[TranscriptEntry, ...] = ()
    diagnostics: tuple[RuntimeDiagnostic, ...] = ()
    observations: tuple[Observation, ...] = ()
    idempotency: tuple[KeptAnswer, ...] = ()
    deleted: tuple[str, ...] = ()


@dataclass(slots=True)
class RestoredState:
    """A runtime as an earlier process left it, handed to the Runtime at start."""

    runtime_id: str
    status: RuntimeStatus
    worker_sequence: int
    observation_sequence: int = 0
    events: list[RuntimeEvent] = field(default_factory=list)
    workers: list[WorkerState] = field(default_factory=list)
    transcripts: dict[str, list[TranscriptEntry]] = field(default_factory=dict)
    diagnostics: list[RuntimeDiagnostic] = field(default_factory=list)
    #: Retained observations of every worker, in sequence order.
    observations: list[Observation] = field(default_factory=list)
    #: Per worker: the newest observation sequence the store no longer keeps.
    observations_trimmed: dict[str, int] = field(default_factory=dict)
    #: Kept ``Idempotency-Key`` answers, in the order they were kept (the Runtime drops the
    #: expired ones; a store may drop them earlier).
    idempotency: list[KeptAnswer] = field(default_factory=list)
    #: What restore found out of place and set aside; each becomes a warning diagnostic.
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (code, message)


class Store(abc.ABC):
    """The interface a Runtime persists through."""

    #: The ``backend`` reported in the runtime summary.
    backend: str
    #: The middle part of generated runtime ids: ``runtime-<prefix>-<hex>``.
    id_prefix: str

    def __init__(self) -> None:
        #: Durable writes done (each may carry many changes) and how long each took.
        self.flushes = 0
        self.flush_seconds = LatencyHistogram()

    @abc.abstractmethod
    async def open(self, runtime_id: str | None) -> RestoredState | None:
        """Load what is stored, or ``None`` when there is nothing yet (then ``create`` follows).

        ``runtime_id`` is the configured id, if any; a store holding another runtime refuses it.
        """

    async def create(self, runtime_id: str) -> None:  # noqa: B027 - optional, empty by default
        """Prepare to hold a new runtime; the default needs nothing."""

    @abc.abstractmethod
    def commit(self, change: Change) -> asyncio.Future[None] | None:
        """Start making ``change`` durable.

        ``None`` means it already is. Otherwise the future resolves once it is, or fails with a
        ``StoreError`` (keeping nothing of it) or ``StatePoisoned`` (when even cleaning up
        failed). Changes become durable in the order ``commit`` was called, so when a change is
        durable every change committed before it is too. A failure fails every change not yet
        durable, and every change committed after it, until the Runtime has undone them all
        and calls ``resume``: those were built on top of the failed one.
        """

    def resume(self) -> None:  # noqa: B027 - optional, empty by default
        """Accept changes again after a failure; the Runtime has undone every failed change."""

    async def check_writable(self) -> str | None:
        """Why the store cannot take writes now, or ``None`` when it can (for readiness)."""
        return None

    async def close(self) -> None:  # noqa: B027 - optional, empty by default
        """Finish pending writes and release files; the default has none."""
