"""What a worker is: its intent, profile, requests, status, and the views of it (contract §2)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from .execution import WorkerExecution
from .identity import WorkerRef


class WorkerStatus(str, Enum):
    RUNNING = "running"
    STOPPED = "stopped"
    CANCELLED = "cancelled"


# Intents: one frozen dataclass per variant; ``kind`` is the JSON tag.


@dataclass(frozen=True, slots=True)
class AssistantIntent:
    kind: ClassVar[str] = "assistant"
    purpose: str | None = None


@dataclass(frozen=True, slots=True)
class TaskIntent:
    kind: ClassVar[str] = "task"
    objective: str


@dataclass(frozen=True, slots=True)
class RoleIntent:
    kind: ClassVar[str] = "role"
    role: str
    purpose: str | None = None


WorkerIntent = AssistantIntent | TaskIntent | RoleIntent


# Profile selectors.


@dataclass(frozen=True, slots=True)
class RuntimeDefaultProfile:
    kind: ClassVar[str] = "runtime_default"


@dataclass(frozen=True, slots=True)
class BuiltinProfile:
    kind: ClassVar[str] = "builtin"
    value: str


@dataclass(frozen=True, slots=True)
class NamedProfile:
    kind: ClassVar[str] = "named"
    value: str


ProfileSelector = RuntimeDefaultProfile | BuiltinProfile | NamedProfile


@dataclass(frozen=True, slots=True)
class ConfigBundleRef:
    id: str


@dataclass(frozen=True, slots=True)
class CapabilityRequest:
    name: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class WorkspaceRef:
    name: str
    reference: str


@dataclass(frozen=True, slots=True)
class MountRef:
    name: str
    reference: str


@dataclass(frozen=True, slots=True)
class CreateWorkerRequest:
    intent: WorkerIntent
    profile: ProfileSelector
    config_bundle: ConfigBundleRef | None = None
    requested_capabilities: tuple[CapabilityRequest, ...] = ()
    workspace_refs: tuple[WorkspaceRef, ...] = ()
    mount_refs: tuple[MountRef, ...] = ()


@dataclass(frozen=True, slots=True)
class WorkerState:
    """Everything the Runtime keeps about a worker except its transcript entries.

    Immutable: a change replaces the whole value, which keeps undo after a failed
    store write a matter of putting the old value back.
    """

    worker_ref: WorkerRef
    request: CreateWorkerRequest
    status: WorkerStatus
    transcript_len: int
    last_event_id: int
    #: The agent that runs the worker (§9); ``None``: a record-only worker.
    execution: WorkerExecution | None = None


class _NamedByRef:
    """Views of a worker repeat its ref's two ids at the top level, as the contract's JSON does."""

    __slots__ = ()
    worker_ref: WorkerRef

    @property
    def runtime_id(self) -> str:
        return self.worker_ref.runtime_id

    @property
    def worker_id(self) -> str:
        return self.worker_ref.worker_id


@dataclass(frozen=True, slots=True)
class WorkerSummary(_NamedByRef):
    worker_ref: WorkerRef
    status: WorkerStatus
    intent: WorkerIntent
    profile: ProfileSelector
    requested_capability_count: int
    has_config_bundle: bool
    transcript_len: int
    last_event_id: int
    execution: WorkerExecution | None = None

    @classmethod
    def of(cls, state: WorkerState) -> WorkerSummary:
        return cls(
            worker_ref=state.worker_ref,
            status=state.status,
            intent=state.request.intent,
            profile=state.request.profile,
            requested_capability_count=len(state.request.requested_capabilities),
            has_config_bundle=state.request.config_bundle is not None,
            transcript_len=state.transcript_len,
            last_event_id=state.last_event_id,
            execution=state.execution,
        )


@dataclass(frozen=True, slots=True)
class WorkerDetail(_NamedByRef):
    worker_ref: WorkerRef
    status: WorkerStatus
    intent: WorkerIntent
    profile: ProfileSelector
    config_bundle: ConfigBundleRef | None
    requested_capabilities: tuple[CapabilityRequest, ...]
    workspace_refs: tuple[WorkspaceRef, ...]
    mount_refs: tuple[MountRef, ...]
    transcript_len: int
    last_event_id: int
    #: The whole stored execution; the API shows it without its restore bookkeeping (§9.2).
    execution: WorkerExecution | None = None

    @classmethod
    def of(cls, state: WorkerState) -> WorkerDetail:
        request = state.request
        return cls(
            worker_ref=state.worker_ref,
            status=state.status,
            intent=request.intent,
            profile=request.profile,
            config_bundle=request.config_bundle,
            requested_capabilities=request.requested_capabilities,
            workspace_refs=request.workspace_refs,
            mount_refs=request.mount_refs,
            transcript_len=state.transcript_len,
            last_event_id=state.last_event_id,
            execution=state.execution,
        )


@dataclass(frozen=True, slots=True)
class WorkerLifecycleAck:
    worker_ref: WorkerRef
    status: WorkerStatus
    event_id: int


@dataclass(frozen=True, slots=True)
class WorkerPage:
    """A page of the catalog (``GET /v1/workers`` with parameters, §11): workers in creation
    order, and ``next_after``, the id to ask the next page ``after`` when more match."""

    workers: list[WorkerSummary]
    next_after: str | None
