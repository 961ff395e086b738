"""Runtime-wide options, limits and the runtime summary (contract §2, §10)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class RuntimeStatus(str, Enum):
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class RuntimeLimits:
    """Bounds the Runtime enforces on what one call may return or retain."""

    max_transcript_projection_items: int = 256
    max_event_batch_items: int = 256
    observation_backlog: int = 1024
    subscriber_queue: int = 256
    #: Agent-backed workers that may be ``running`` at once; one more create is ``worker_limit_reached``.
    max_running_agents: int = 32
    #: Inputs of an agent-backed worker accepted and not yet delivered; one more is ``input_queue_full``.
    max_queued_inputs: int = 64
    #: Seconds a kept ``Idempotency-Key`` answer is replayed, from the first answer (§11).
    idempotency_key_ttl_seconds: int = 86400

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """What a Runtime is built with, besides its store."""

    runtime_id: str | None = None
    display_name: str | None = None
    limits: RuntimeLimits = field(default_factory=RuntimeLimits)


@dataclass(frozen=True, slots=True)
class RuntimeSummary:
    runtime_id: str
    display_name: str | None
    backend: str
    status: RuntimeStatus
    worker_count: int
    active_worker_count: int
    stopped_worker_count: int
    cancelled_worker_count: int
    diagnostic_count: int
    limits: RuntimeLimits
