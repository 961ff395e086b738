"""What can be observed of a runtime: transcripts, the runtime event log, diagnostics."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .errors import CursorMalformed
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
    #: Executing workers (§9): a turn ended (its assistant entry, if any, names this event), and
    #: an interrupt that ended a turn or dropped queued inputs.
    WORKER_TURN_ENDED = "worker_turn_ended"
    WORKER_INTERRUPTED = "worker_interrupted"
    #: A worker that was not running was deleted (§11).
    WORKER_DELETED = "worker_deleted"


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


_CURSOR = re.compile(r"wo_[0-9a-f]{16}")


def encode_cursor(sequence: int) -> str:
    """The cursor of observation sequence ``n``: ``wo_`` and ``n`` as 16 lowercase hex digits."""
    return f"wo_{sequence:016x}"


def decode_cursor(raw: str) -> int:
    """The sequence a cursor names; ``CursorMalformed`` unless exactly ``wo_`` + 16 lowercase hex."""
    if not _CURSOR.fullmatch(raw):
        raise CursorMalformed(raw)
    return int(raw[3:], 16)


@dataclass(frozen=True, slots=True)
class Observation:
    """One observed worker event: ``event`` is its snake_case name, ``data`` its fields."""

    sequence: int
    worker_ref: WorkerRef
    event: str
    data: Mapping[str, Any] | None = None

    @property
    def cursor(self) -> str:
        return encode_cursor(self.sequence)
