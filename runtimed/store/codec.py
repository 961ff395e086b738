"""The one mapping between domain values and their JSON (contract §2), for every record runtimed keeps.

The fs store writes these records into its files; the web schemas build domain values from
validated request bodies with them and dump responses with them; a terminal client reads the
same shapes. Each record kind has an ``encode_*`` that gives a dict ready for ``json.dumps`` and a
``decode_*`` that takes such a dict back. Fields the contract marks ``?`` are omitted when absent,
never written as ``null``; decoders also read the ``null``\\ s and empty lists that runtimed's
worker snapshots held before this codec, so that older stores still restore.

Decoders are not validators: they check what the domain's constructors check, and on a
malformed record raise one of ``RECORD_ERRORS`` (a missing key, a wrong type, an unknown tag or
enum value), leaving it to the caller to say where the record came from. The web layer checks
types with marshmallow first; the fs store turns the error into ``store_corrupt`` naming the file.

Records kept in a worker's own files (transcript entries, observations) may leave out the
``worker_ref`` their location implies; their decoders are then given it. Decoders of records that
name a worker take ``decode_ref``, so that a store can check the ref and share one object per worker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from ..domain.catalog import (
    AssistantIntent,
    BuiltinProfile,
    CapabilityRequest,
    ConfigBundleRef,
    CreateWorkerRequest,
    MountRef,
    NamedProfile,
    ProfileSelector,
    RoleIntent,
    RuntimeDefaultProfile,
    TaskIntent,
    WorkerIntent,
    WorkerStatus,
    WorkspaceRef,
)
from ..domain.errors import InvalidWorkerId
from ..domain.execution import AgentInfo, ExecutionState, ProcessExit, WorkerExecution
from ..domain.identity import WorkerRef
from ..domain.management import RuntimeStatus
from ..domain.observation import (
    EventKind,
    Observation,
    RuntimeDiagnostic,
    RuntimeEvent,
    Severity,
    TranscriptEntry,
    TranscriptRole,
)

#: What a decoder raises on a malformed record.
RECORD_ERRORS: tuple[type[Exception], ...] = (KeyError, TypeError, ValueError)

Record = dict[str, Any]
#: Turns the JSON of a ``worker_ref`` into the ref (and may refuse it with one of ``RECORD_ERRORS``).
RefDecoder = Callable[[Any], WorkerRef]


def record_problem(error: Exception) -> str:
    """What is wrong with a record, from the error its decoder raised, for a message."""
    if isinstance(error, KeyError):
        return f"missing field {error.args[0]!r}"
    return str(error)


# ------------------------------------------------------------------ tagged unions


class _Tagged(Protocol):
    kind: ClassVar[str]


T = TypeVar("T", bound=_Tagged)


class TaggedUnion(Generic[T]):
    """Frozen dataclasses told apart in JSON by ``kind``: ``{"kind": "task", "objective": …}``.

    A variant's ``kind`` class attribute is its tag (the domain defines it, this table gathers
    them); its fields follow the tag in declaration order, each omitted when ``None``. This is
    the shape serde gives an internally tagged enum.
    """

    def __init__(self, name: str, *variants: type[T]) -> None:
        self.name = name
        #: The variant of each tag, in the contract's order.
        self.kinds: Mapping[str, type[T]] = MappingProxyType({variant.kind: variant for variant in variants})
        self._fields: dict[type[T], tuple[str, ...]] = {
            variant: tuple(f.name for f in dataclasses.fields(variant))  # type: ignore[arg-type]
            for variant in variants
        }

    def encode(self, value: T) -> Record:
        record: Record = {"kind": value.kind}
        for name in self._fields[type(value)]:
            field_value = getattr(value, name)
            if field_value is not None:
                record[name] = field_value
        return record

    def decode(self, record: Mapping[str, Any]) -> T:
        kind = record["kind"]
        variant = self.kinds.get(kind) if isinstance(kind, str) else None
        if variant is None:
            raise ValueError(f"{self.name} kind {kind!r} is not one of: {', '.join(self.kinds)}")
        return variant(**{name: record[name] for name in self._fields[variant] if name in record})


INTENTS: TaggedUnion[WorkerIntent] = TaggedUnion("intent", AssistantIntent, TaskIntent, RoleIntent)
PROFILES: TaggedUnion[ProfileSelector] = TaggedUnion("profile", RuntimeDefaultProfile, BuiltinProfile, NamedProfile)


def encode_intent(intent: WorkerIntent) -> Record:
    return INTENTS.encode(intent)


def decode_intent(record: Mapping[str, Any]) -> WorkerIntent:
    return INTENTS.decode(record)


def encode_profile(profile: ProfileSelector) -> Record:
    return PROFILES.encode(profile)


def decode_profile(record: Mapping[str, Any]) -> ProfileSelector:
    return PROFILES.decode(record)


# ------------------------------------------------------------------ identity


def encode_worker_ref(ref: WorkerRef) -> Record:
    return {"runtime_id": ref.runtime_id, "worker_id": ref.worker_id}


def decode_worker_ref(record: Any) -> WorkerRef:
    if not isinstance(record, Mapping):
        raise TypeError(f"worker_ref {record!r} is not an object")
    try:
        return WorkerRef(record["runtime_id"], record["worker_id"])
    except InvalidWorkerId as error:
        raise ValueError(error.message) from None


def _optional_ref(record: Mapping[str, Any], decode_ref: RefDecoder) -> WorkerRef | None:
    raw = record.get("worker_ref")
    return None if raw is None else decode_ref(raw)


# ------------------------------------------------------------------- catalog


def encode_config_bundle(bundle: ConfigBundleRef) -> Record:
    return {"id": bundle.id}


def decode_config_bundle(record: Mapping[str, Any]) -> ConfigBundleRef:
    return ConfigBundleRef(record["id"])


def encode_capability(capability: CapabilityRequest) -> Record:
    if capability.reason is None:
        return {"name": capability.name}
    return {"name": capability.name, "reason": capability.reason}


def decode_capability(record: Mapping[str, Any]) -> CapabilityRequest:
    return CapabilityRequest(record["name"], record.get("reason"))


def encode_workspace_ref(workspace: WorkspaceRef) -> Record:
    return {"name": workspace.name, "reference": workspace.reference}


def decode_workspace_ref(record: Mapping[str, Any]) -> WorkspaceRef:
    return WorkspaceRef(record["name"], record["reference"])


def encode_mount_ref(mount: MountRef) -> Record:
    return {"name": mount.name, "reference": mount.reference}


def decode_mount_ref(record: Mapping[str, Any]) -> MountRef:
    return MountRef(record["name"], record["reference"])


def encode_request(request: CreateWorkerRequest) -> Record:
    """A ``CreateWorkerRequest``: ``config_bundle`` and the three lists are omitted when absent or empty."""
    record: Record = {"intent": INTENTS.encode(request.intent), "profile": PROFILES.encode(request.profile)}
    if request.config_bundle is not None:
        record["config_bundle"] = encode_config_bundle(request.config_bundle)
    if request.requested_capabilities:
        record["requested_capabilities"] = [encode_capability(c) for c in request.requested_capabilities]
    if request.workspace_refs:
        record["workspace_refs"] = [encode_workspace_ref(w) for w in request.workspace_refs]
    if request.mount_refs:
        record["mount_refs"] = [encode_mount_ref(m) for m in request.mount_refs]
    return record


def decode_request(record: Mapping[str, Any]) -> CreateWorkerRequest:
    bundle = record.get("config_bundle")
    return CreateWorkerRequest(
        intent=INTENTS.decode(record["intent"]),
        profile=PROFILES.decode(record["profile"]),
        config_bundle=None if bundle is None else decode_config_bundle(bundle),
        requested_capabilities=tuple(map(decode_capability, record.get("requested_capabilities") or ())),
        workspace_refs=tuple(map(decode_workspace_ref, record.get("workspace_refs") or ())),
        mount_refs=tuple(map(decode_mount_ref, record.get("mount_refs") or ())),
    )


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """What a worker snapshot holds: the worker as created, its status, and the id of the event
    that created it. Its transcript length and last event id are left to the logs."""

    worker_ref: WorkerRef
    created_event_id: int
    status: WorkerStatus
    request: CreateWorkerRequest


def encode_worker_record(worker: WorkerRecord) -> Record:
    return {
        "worker_ref": encode_worker_ref(worker.worker_ref),
        "created_event_id": worker.created_event_id,
        "status": worker.status.value,
        "request": encode_request(worker.request),
    }


def decode_worker_record(record: Mapping[str, Any], decode_ref: RefDecoder = decode_worker_ref) -> WorkerRecord:
    return WorkerRecord(
        worker_ref=decode_ref(record["worker_ref"]),
        created_event_id=_integer(record["created_event_id"], "created_event_id"),
        status=WorkerStatus(record["status"]),
        request=decode_request(record["request"]),
    )


# ---------------------------------------------------------------- execution


def encode_execution(execution: WorkerExecution, *, bookkeeping: bool = True) -> Record:
    """A ``WorkerExecution`` (§9.2): ``{profile, state, pid?, agent? {name, version?}, session_id?,
    turns, queued_inputs, pending_permissions, exit? {code?, signal?}}``, and with
    ``bookkeeping`` (the stored form) ``turns_started``, ``delivered_sequence`` and ``open_turn?``,
    which the API does not show."""
    record: Record = {"profile": execution.profile, "state": execution.state.value}
    if execution.pid is not None:
        record["pid"] = execution.pid
    if execution.agent is not None:
        agent: Record = {"name": execution.agent.name}
        if execution.agent.version is not None:
            agent["version"] = execution.agent.version
        record["agent"] = agent
    if execution.session_id is not None:
        record["session_id"] = execution.session_id
    record["turns"] = execution.turns
    record["queued_inputs"] = execution.queued_inputs
    record["pending_permissions"] = execution.pending_permissions
    if execution.exit is not None:
        record["exit"] = {
            key: value
            for key, value in (("code", execution.exit.code), ("signal", execution.exit.signal))
            if value is not None
        }
    if bookkeeping:
        record["turns_started"] = execution.turns_started
        record["delivered_sequence"] = execution.delivered_sequence
        if execution.open_turn is not None:
            record["open_turn"] = execution.open_turn
    return record


def encode_execution_view(execution: WorkerExecution) -> Record:
    """A ``WorkerExecution`` as the API shows it: without the restore bookkeeping."""
    return encode_execution(execution, bookkeeping=False)


def decode_execution(record: Mapping[str, Any]) -> WorkerExecution:
    """A ``WorkerExecution``, stored or as the API shows it (the bookkeeping then defaults to
    ``turns`` started, nothing delivered, no open turn)."""
    agent = record.get("agent")
    exit_ = record.get("exit")
    turns = _integer(record["turns"], "turns")
    return WorkerExecution(
        profile=_string(record["profile"], "profile"),
        state=ExecutionState(record["state"]),
        pid=_optional(record, "pid", _integer),
        agent=None
        if agent is None
        else AgentInfo(_string(agent["name"], "agent.name"), _optional(agent, "version", _string)),
        session_id=_optional(record, "session_id", _string),
        turns=turns,
        turns_started=_integer(record.get("turns_started", turns), "turns_started"),
        queued_inputs=_integer(record["queued_inputs"], "queued_inputs"),
        pending_permissions=_integer(record["pending_permissions"], "pending_permissions"),
        delivered_sequence=_integer(record.get("delivered_sequence", 0), "delivered_sequence"),
        open_turn=_optional(record, "open_turn", _integer),
        exit=None
        if exit_ is None
        else ProcessExit(_optional(exit_, "code", _integer), _optional(exit_, "signal", _string)),
    )


# --------------------------------------------------------------- management


@dataclass(frozen=True, slots=True)
class RuntimeRecord:
    """What a runtime snapshot holds; the event log has the last word on status at restore."""

    runtime_id: str
    status: RuntimeStatus
    last_event_id: int


def encode_runtime_record(runtime: RuntimeRecord) -> Record:
    return {"runtime_id": runtime.runtime_id, "status": runtime.status.value, "last_event_id": runtime.last_event_id}


def decode_runtime_record(record: Mapping[str, Any]) -> RuntimeRecord:
    return RuntimeRecord(
        runtime_id=record["runtime_id"],
        status=RuntimeStatus(record["status"]),
        last_event_id=_integer(record["last_event_id"], "last_event_id"),
    )


# -------------------------------------------------------------- observation


def encode_transcript_entry(entry: TranscriptEntry, *, with_ref: bool = True) -> Record:
    """A ``TranscriptEntry``; ``with_ref=False`` leaves out the ``worker_ref`` (a worker's own file)."""
    if not with_ref:
        return {
            "sequence": entry.sequence,
            "role": entry.role.value,
            "content": entry.content,
            "event_id": entry.event_id,
        }
    return {
        "sequence": entry.sequence,
        "worker_ref": encode_worker_ref(entry.worker_ref),
        "role": entry.role.value,
        "content": entry.content,
        "event_id": entry.event_id,
    }


def decode_transcript_entry(
    record: Mapping[str, Any], worker_ref: WorkerRef | None = None, decode_ref: RefDecoder = decode_worker_ref
) -> TranscriptEntry:
    """A ``TranscriptEntry``; ``worker_ref``, when given, is the worker whose file the record is in."""
    return TranscriptEntry(
        sequence=record["sequence"],
        worker_ref=decode_ref(record["worker_ref"]) if worker_ref is None else worker_ref,
        role=TranscriptRole(record["role"]),
        content=record["content"],
        event_id=record["event_id"],
    )


def encode_event(event: RuntimeEvent) -> Record:
    """A ``RuntimeEvent``: ``{id, worker_ref?, kind, message}``."""
    if event.worker_ref is None:
        return {"id": event.id, "kind": event.kind.value, "message": event.message}
    return {
        "id": event.id,
        "worker_ref": encode_worker_ref(event.worker_ref),
        "kind": event.kind.value,
        "message": event.message,
    }


def decode_event(record: Mapping[str, Any], decode_ref: RefDecoder = decode_worker_ref) -> RuntimeEvent:
    return RuntimeEvent(
        id=record["id"],
        kind=EventKind(record["kind"]),
        message=record["message"],
        worker_ref=_optional_ref(record, decode_ref),
    )


def encode_diagnostic(diagnostic: RuntimeDiagnostic) -> Record:
    """A ``RuntimeDiagnostic``: ``{id, severity, code, message, worker_ref?}``."""
    record: Record = {
        "id": diagnostic.id,
        "severity": diagnostic.severity.value,
        "code": diagnostic.code,
        "message": diagnostic.message,
    }
    if diagnostic.worker_ref is not None:
        record["worker_ref"] = encode_worker_ref(diagnostic.worker_ref)
    return record


def decode_diagnostic(record: Mapping[str, Any], decode_ref: RefDecoder = decode_worker_ref) -> RuntimeDiagnostic:
    return RuntimeDiagnostic(
        id=record["id"],
        severity=Severity(record["severity"]),
        code=record["code"],
        message=record["message"],
        worker_ref=_optional_ref(record, decode_ref),
    )


def encode_observation(observation: Observation) -> Record:
    """An ``Observation`` as a worker's own file keeps it: ``{sequence, event, data?}``, no ref."""
    if observation.data is None:
        return {"sequence": observation.sequence, "event": observation.event}
    return {"sequence": observation.sequence, "event": observation.event, "data": observation.data}


def decode_observation(record: Mapping[str, Any], worker_ref: WorkerRef) -> Observation:
    """An ``Observation`` of the worker ``worker_ref``, whose file the record is in."""
    return Observation(_integer(record["sequence"], "sequence"), worker_ref, record["event"], record.get("data"))


def _integer(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} {value!r} is not an integer")
    return value


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} {value!r} is not a string")
    return value


V = TypeVar("V")


def _optional(record: Mapping[str, Any], key: str, check: Callable[[Any, str], V]) -> V | None:
    """``record[key]`` checked by ``check``, or ``None`` when absent."""
    if not isinstance(record, Mapping):
        raise TypeError(f"{record!r} is not an object")
    value = record.get(key)
    return None if value is None else check(value, key)
