"""Input sent to a worker, and its acknowledgement (contract §2)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .catalog import WorkerStatus
from .identity import WorkerRef


class InputKind(str, Enum):
    USER = "user"
    SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class WorkerInput:
    kind: InputKind
    content: str


@dataclass(frozen=True, slots=True)
class WorkerInteractionAck:
    worker_ref: WorkerRef
    status: WorkerStatus
    transcript_sequence: int
    event_id: int
