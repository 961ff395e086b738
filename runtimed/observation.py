"""What can be observed of a runtime: transcripts, the runtime event log, diagnostics."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .identity import WorkerRef


class TranscriptRole(str, Enum):
    USER = "user"
    SYSTEM = "system"
    ASSISTANT = "assistant"


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    sequence: int
    worker_ref: WorkerRef
    role: TranscriptRole
    content: str
    event_id: int


@dataclass(frozen=True, slots=True)
class TranscriptProjection:
    worker_ref: WorkerRef
    start: int
    limit: int
    total_items: int
    items: list[TranscriptEntry]
    next_start: int | None


class EventKind(str, Enum):
    RUNTIME_STARTED = "runtime_started"
    WORKER_CREATED = "worker_created"
    WORKER_INPUT_ACCEPTED = "worker_input_accepted"
    WORKER_STOPPED = "worker_stopped"
    WORKER_CANCELLED = "worker_cancelled"
    RUNTIME_STOPPED = "runtime_stopped"


@dataclass(frozen=True, slots=True)
class RuntimeEvent:
    """One entry of the runtime event log; every mutation appends exactly one."""

    id: int
    kind: EventKind
    message: str
    worker_ref: WorkerRef | None = None


@dataclass(frozen=True, slots=True)
class EventBatch:
    """A page of the runtime event log, for cursor polling (``GET /v1/events``)."""

    runtime_id: str
    events: list[RuntimeEvent]
    next_cursor: int
    has_more: bool


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class RuntimeDiagnostic:
    id: int
    severity: Severity
    code: str
    message: str
    worker_ref: WorkerRef | None = None
