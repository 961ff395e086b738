"""Marshmallow schemas: one per JSON shape of the contract, used both ways.

Request schemas load JSON into the domain's frozen dataclasses (``post_load``); response
schemas dump domain values. Tests validate response bodies with these same schemas, and a
later OpenAPI document is generated from them, so the JSON shapes are written down once.

Where a shape is one of the records of ``runtimed.store.codec`` (a worker's request, its intent
and profile, transcript entries, runtime events, diagnostics, refs), the schema checks the JSON
and the codec maps it: a load ends in the codec's ``decode_*``, the compiled dumpers call its
``encode_*``, and the tagged unions take their kinds from the codec's tables. marshmallow's own
``dump`` still walks the declared fields, and tests check that it agrees with the codec.

Loading checks types only. Whether a value is acceptable (a blank objective, input to a stopped
worker) is the Runtime's business, so that the contract's order of checks holds.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_dump, post_load

from ..domain.catalog import (
    AssistantIntent,
    BuiltinProfile,
    NamedProfile,
    RoleIntent,
    RuntimeDefaultProfile,
    TaskIntent,
    WorkerStatus,
)
from ..domain.execution import ExecutionState, PermissionPolicy, ProfileSource, RestartPolicy
from ..domain.identity import worker_sequence
from ..domain.interaction import InputKind, WorkerInput
from ..domain.management import RuntimeStatus
from ..domain.observation import EventKind, Severity, TranscriptRole
from ..store import codec


class BaseSchema(Schema):
    """Common behaviour: unknown input keys are ignored (and reported by ``unknown_paths``),
    ``None`` and empty optional values are omitted on dump, and loads build ``__model__`` or
    end in ``__decode__``."""

    #: The frozen dataclass a load builds from the loaded fields; ``None`` loads a plain dict.
    __model__: typing.ClassVar[type | None] = None
    #: For the shape of a codec record: the codec's decoder, given the checked JSON. The schemas
    #: nested in such a schema build nothing, so that the codec sees plain JSON.
    __decode__: typing.ClassVar[staticmethod[[dict[str, Any]], Any] | None] = None
    #: For the shape of a codec record: the codec's encoder, which the compiled dumpers call.
    __encode__: typing.ClassVar[staticmethod[[Any], dict[str, Any]] | None] = None
    #: Fields omitted from dumped JSON when ``None`` or empty (the contract's ``?`` fields).
    __omit_when_empty__: typing.ClassVar[frozenset[str]] = frozenset()

    class Meta:
        unknown = EXCLUDE

    @post_load
    def _make_model(self, data: dict[str, Any], **_: Any) -> Any:
        if self.__decode__ is not None:
            return self.__decode__(data)
        if self.__model__ is None:
            return data
        return self.__model__(**data)

    @post_dump
    def _omit_empty(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        for name in self.__omit_when_empty__:
            if name in data and data[name] in (None, [], ()):
                del data[name]
        return data

    def unknown_paths(self, data: Any, prefix: str = "") -> list[str]:
        """Paths of keys in ``data`` (already loaded without error) that this schema does not know."""
        if not isinstance(data, Mapping):
            return []
        paths: list[str] = []
        known = {field.data_key or name: field for name, field in self.load_fields.items()}
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            field = known.get(key)
            if field is None:
                paths.append(path)
            else:
                paths.extend(_unknown_in_field(field, value, path))
        return paths


def _unknown_in_field(field: fields.Field[Any], value: Any, path: str) -> list[str]:
    if isinstance(field, fields.Nested) and isinstance(field.schema, BaseSchema):
        if field.many and isinstance(value, list):
            return [p for i, item in enumerate(value) for p in field.schema.unknown_paths(item, f"{path}[{i}]")]
        return field.schema.unknown_paths(value, path)
    if isinstance(field, fields.List) and isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _unknown_in_field(field.inner, item, f"{path}[{i}]")]
    if isinstance(field, TaggedUnion):
        schema = field.variant_for(value)
        if schema is None:
            return []
        return schema.unknown_paths({k: v for k, v in value.items() if k != "kind"}, path)
    return []


class TaggedUnion(fields.Field[Any]):
    """A JSON object tagged by ``kind``, each kind checked and dumped by its own schema.

    This is the shape serde gives an internally tagged enum: ``{"kind": "task", "objective": …}``.
    The kinds and their domain classes are the codec's ``union``; ``variants`` gives the schema of
    each class. A load gives the checked JSON with its ``kind``, for the codec to decode.
    """

    def __init__(self, union: codec.TaggedUnion[Any], variants: Mapping[type, type[BaseSchema]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        assert set(variants) == set(union.kinds.values()), "one schema for each variant of the union"
        #: The codec of the union: its kinds, and the encoder the compiled dumpers call.
        self.union = union
        self._schemas = {kind: variants[model]() for kind, model in union.kinds.items()}
        self._kinds = ", ".join(union.kinds)

    @property
    def variants(self) -> Mapping[str, BaseSchema]:
        """The schema of each ``kind``."""
        return self._schemas

    def variant_for(self, value: Any) -> BaseSchema | None:
        if isinstance(value, Mapping):
            kind = value.get("kind")
            if isinstance(kind, str):
                return self._schemas.get(kind)
        return None

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, Mapping):
            raise ValidationError("Not a valid object.")
        if "kind" not in value:
            raise ValidationError({"kind": ["Missing data for required field."]})
        schema = self.variant_for(value)
        if schema is None:
            raise ValidationError({"kind": [f"Must be one of: {self._kinds}."]})
        return {"kind": value["kind"], **schema.load({k: v for k, v in value.items() if k != "kind"})}

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        if value is None:
            return None
        return {"kind": value.kind, **self._schemas[value.kind].dump(value)}


class JsonBoolean(fields.Boolean):
    """``true`` or ``false`` only: marshmallow's own field also takes ``"yes"``, ``1`` and the like."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


#: The most digits a query integer may have: every 18-digit number fits in 63 bits.
MAX_QUERY_INT_DIGITS = 18


class NonNegativeQueryInt(fields.Integer):
    """A query parameter that must be written as plain decimal digits (no sign, space or dot),
    at most ``MAX_QUERY_INT_DIGITS`` of them."""

    default_error_messages = {  # noqa: RUF012 - marshmallow's own attribute
        "invalid": "must be a non-negative integer.",
        "too_long": f"must have at most {MAX_QUERY_INT_DIGITS} digits.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if not isinstance(value, str) or not (value.isascii() and value.isdigit()):
            raise self.make_error("invalid")
        if len(value) > MAX_QUERY_INT_DIGITS:
            raise self.make_error("too_long")
        return int(value)


# --------------------------------------------------------------------- identity


class WorkerRefSchema(BaseSchema):
    __encode__ = staticmethod(codec.encode_worker_ref)
    runtime_id = fields.String(required=True)
    worker_id = fields.String(required=True)


# ---------------------------------------------------------------------- catalog


class AssistantIntentSchema(BaseSchema):
    __omit_when_empty__ = frozenset({"purpose"})
    purpose = fields.String()


class TaskIntentSchema(BaseSchema):
    objective = fields.String(required=True)


class RoleIntentSchema(BaseSchema):
    __omit_when_empty__ = frozenset({"purpose"})
    role = fields.String(required=True)
    purpose = fields.String()


class RuntimeDefaultProfileSchema(BaseSchema):
    pass  # no field but the tag


class BuiltinProfileSchema(BaseSchema):
    value = fields.String(required=True)


class NamedProfileSchema(BaseSchema):
    value = fields.String(required=True)


def intent_field(**kwargs: Any) -> TaggedUnion:
    return TaggedUnion(
        codec.INTENTS,
        {AssistantIntent: AssistantIntentSchema, TaskIntent: TaskIntentSchema, RoleIntent: RoleIntentSchema},
        **kwargs,
    )


def profile_field(**kwargs: Any) -> TaggedUnion:
    return TaggedUnion(
        codec.PROFILES,
        {
            RuntimeDefaultProfile: RuntimeDefaultProfileSchema,
            BuiltinProfile: BuiltinProfileSchema,
            NamedProfile: NamedProfileSchema,
        },
        **kwargs,
    )


class ConfigBundleRefSchema(BaseSchema):
    __encode__ = staticmethod(codec.encode_config_bundle)
    id = fields.String(required=True)


class CapabilityRequestSchema(BaseSchema):
    __encode__ = staticmethod(codec.encode_capability)
    __omit_when_empty__ = frozenset({"reason"})
    name = fields.String(required=True)
    reason = fields.String()


class WorkspaceRefSchema(BaseSchema):
    __encode__ = staticmethod(codec.encode_workspace_ref)
    name = fields.String(required=True)
    reference = fields.String(required=True)


class MountRefSchema(BaseSchema):
    __encode__ = staticmethod(codec.encode_mount_ref)
    name = fields.String(required=True)
    reference = fields.String(required=True)


class CreateWorkerRequestSchema(BaseSchema):
    __decode__ = staticmethod(codec.decode_request)
    __encode__ = staticmethod(codec.encode_request)
    __omit_when_empty__ = frozenset({"config_bundle", "requested_capabilities", "workspace_refs", "mount_refs"})
    intent = intent_field(required=True)
    profile = profile_field(required=True)
    config_bundle = fields.Nested(ConfigBundleRefSchema)
    requested_capabilities = fields.List(fields.Nested(CapabilityRequestSchema))
    workspace_refs = fields.List(fields.Nested(WorkspaceRefSchema))
    mount_refs = fields.List(fields.Nested(MountRefSchema))


class AgentInfoSchema(BaseSchema):
    __omit_when_empty__ = frozenset({"version"})
    name = fields.String(required=True)
    version = fields.String()


class ProcessExitSchema(BaseSchema):
    __omit_when_empty__ = frozenset({"code", "signal"})
    code = fields.Integer()
    signal = fields.String()


class ExecutionSchema(BaseSchema):
    """A worker's execution as the API shows it (§9.2): the stored one without its restore
    bookkeeping (``turns_started``, ``delivered_sequence``, ``open_turn``)."""

    __decode__ = staticmethod(codec.decode_execution)
    __encode__ = staticmethod(codec.encode_execution_view)
    __omit_when_empty__ = frozenset({"pid", "agent", "session_id", "exit"})
    profile = fields.String(required=True)
    state = fields.Enum(ExecutionState, by_value=True, required=True)
    pid = fields.Integer()
    agent = fields.Nested(AgentInfoSchema)
    session_id = fields.String()
    turns = fields.Integer(required=True)
    queued_inputs = fields.Integer(required=True)
    pending_permissions = fields.Integer(required=True)
    exit = fields.Nested(ProcessExitSchema)


class _WorkerViewSchema(BaseSchema):
    worker_ref = fields.Nested(WorkerRefSchema, required=True)
    runtime_id = fields.String(required=True)
    worker_id = fields.String(required=True)
    status = fields.Enum(WorkerStatus, by_value=True, required=True)
    intent = intent_field(required=True)
    profile = profile_field(required=True)


class WorkerSummarySchema(_WorkerViewSchema):
    __omit_when_empty__ = frozenset({"execution"})
    requested_capability_count = fields.Integer(required=True)
    has_config_bundle = fields.Boolean(required=True)
    transcript_len = fields.Integer(required=True)
    last_event_id = fields.Integer(required=True)
    execution = fields.Nested(ExecutionSchema)


class WorkerDetailSchema(_WorkerViewSchema):
    __omit_when_empty__ = CreateWorkerRequestSchema.__omit_when_empty__ | {"execution"}
    config_bundle = fields.Nested(ConfigBundleRefSchema)
    requested_capabilities = fields.List(fields.Nested(CapabilityRequestSchema))
    workspace_refs = fields.List(fields.Nested(WorkspaceRefSchema))
    mount_refs = fields.List(fields.Nested(MountRefSchema))
    transcript_len = fields.Integer(required=True)
    last_event_id = fields.Integer(required=True)
    execution = fields.Nested(ExecutionSchema)


class WorkerLifecycleRequestSchema(BaseSchema):
    __omit_when_empty__ = frozenset({"reason"})
    reason = fields.String(allow_none=True)


class WorkerLifecycleAckSchema(BaseSchema):
    worker_ref = fields.Nested(WorkerRefSchema, required=True)
    status = fields.Enum(WorkerStatus, by_value=True, required=True)
    event_id = fields.Integer(required=True)


# ------------------------------------------------------------------ interaction


class WorkerInputSchema(BaseSchema):
    __model__ = WorkerInput
    kind = fields.Enum(InputKind, by_value=True, required=True)
    content = fields.String(required=True)


class WorkerInteractionAckSchema(BaseSchema):
    worker_ref = fields.Nested(WorkerRefSchema, required=True)
    status = fields.Enum(WorkerStatus, by_value=True, required=True)
    transcript_sequence = fields.Integer(required=True)
    event_id = fields.Integer(required=True)


# -------------------------------------------------------------- execution (§9)


class WorkerInterruptRequestSchema(BaseSchema):
    """The optional body of ``POST …/interrupt``."""

    drop_queued = JsonBoolean(load_default=False)


class InterruptAckSchema(BaseSchema):
    __omit_when_empty__ = frozenset({"turn"})
    worker_ref = fields.Nested(WorkerRefSchema, required=True)
    status = fields.Enum(WorkerStatus, by_value=True, required=True)
    turn = fields.Integer()
    dropped_inputs = fields.Integer(required=True)


class ToolCallSchema(BaseSchema):
    tool_call_id = fields.String(required=True)
    title = fields.String(required=True)
    kind = fields.String(required=True)


class PermissionOptionSchema(BaseSchema):
    option_id = fields.String(required=True)
    name = fields.String(required=True)
    kind = fields.String(required=True)


class PermissionRequestSchema(BaseSchema):
    """A pending permission request, as the ``permission_requested`` event carries it (§9.5)."""

    __omit_when_empty__ = frozenset({"turn"})
    turn = fields.Integer()
    request_id = fields.String(required=True)
    tool_call = fields.Nested(ToolCallSchema, required=True)
    options = fields.List(fields.Nested(PermissionOptionSchema), required=True)


class PermissionAnswerRequestSchema(BaseSchema):
    option_id = fields.String(required=True)


class PermissionAnswerSchema(BaseSchema):
    request_id = fields.String(required=True)
    option_id = fields.String(required=True)
    by = fields.String(required=True)


class ProfileSchema(BaseSchema):
    """A profile workers can be created with (§9.1); never its ``env`` values."""

    name = fields.String(required=True)
    source = fields.Enum(ProfileSource, by_value=True, required=True)
    command = fields.List(fields.String(), required=True)
    permissions = fields.Enum(PermissionPolicy, by_value=True, required=True)
    restart = fields.Enum(RestartPolicy, by_value=True, required=True)
    default = fields.Boolean(required=True)


# ------------------------------------------------------------------ observation


class TranscriptEntrySchema(BaseSchema):
    __decode__ = staticmethod(codec.decode_transcript_entry)
    __encode__ = staticmethod(codec.encode_transcript_entry)
    sequence = fields.Integer(required=True)
    worker_ref = fields.Nested(WorkerRefSchema, required=True)
    role = fields.Enum(TranscriptRole, by_value=True, required=True)
    content = fields.String(required=True)
    event_id = fields.Integer(required=True)


class TranscriptProjectionSchema(BaseSchema):
    worker_ref = fields.Nested(WorkerRefSchema, required=True)
    start = fields.Integer(required=True)
    limit = fields.Integer(required=True)
    total_items = fields.Integer(required=True)
    items = fields.List(fields.Nested(TranscriptEntrySchema), required=True)
    next_start = fields.Integer(required=True, allow_none=True)


class TranscriptQuerySchema(BaseSchema):
    start = NonNegativeQueryInt(load_default=0)
    limit = NonNegativeQueryInt(load_default=None)


class RuntimeEventSchema(BaseSchema):
    __decode__ = staticmethod(codec.decode_event)
    __encode__ = staticmethod(codec.encode_event)
    __omit_when_empty__ = frozenset({"worker_ref"})
    id = fields.Integer(required=True)
    worker_ref = fields.Nested(WorkerRefSchema)
    kind = fields.Enum(EventKind, by_value=True, required=True)
    message = fields.String(required=True)


class EventBatchSchema(BaseSchema):
    runtime_id = fields.String(required=True)
    events = fields.List(fields.Nested(RuntimeEventSchema), required=True)
    next_cursor = fields.Integer(required=True)
    has_more = fields.Boolean(required=True)


def _a_worker_id(value: str) -> None:
    if worker_sequence(value) is None:
        raise ValidationError("must be a worker id: worker-<8 or more lowercase hex digits>.")


class WorkersQuerySchema(BaseSchema):
    """``GET /v1/workers``'s page (§11); ``status`` may repeat."""

    status = fields.List(fields.Enum(WorkerStatus, by_value=True), load_default=None)
    limit = NonNegativeQueryInt(load_default=None)
    after = fields.String(load_default=None, validate=_a_worker_id)


class EventsQuerySchema(BaseSchema):
    cursor = NonNegativeQueryInt(load_default=1)
    limit = NonNegativeQueryInt(load_default=None)


class RuntimeDiagnosticSchema(BaseSchema):
    __decode__ = staticmethod(codec.decode_diagnostic)
    __encode__ = staticmethod(codec.encode_diagnostic)
    __omit_when_empty__ = frozenset({"worker_ref"})
    id = fields.Integer(required=True)
    severity = fields.Enum(Severity, by_value=True, required=True)
    code = fields.String(required=True)
    message = fields.String(required=True)
    worker_ref = fields.Nested(WorkerRefSchema)


# ------------------------------------------------------------------- management


class RuntimeLimitsSchema(BaseSchema):
    max_transcript_projection_items = fields.Integer(required=True)
    max_event_batch_items = fields.Integer(required=True)


class RuntimeSummarySchema(BaseSchema):
    runtime_id = fields.String(required=True)
    display_name = fields.String(required=True, allow_none=True)
    backend = fields.String(required=True)
    status = fields.Enum(RuntimeStatus, by_value=True, required=True)
    worker_count = fields.Integer(required=True)
    active_worker_count = fields.Integer(required=True)
    stopped_worker_count = fields.Integer(required=True)
    cancelled_worker_count = fields.Integer(required=True)
    diagnostic_count = fields.Integer(required=True)
    limits = fields.Nested(RuntimeLimitsSchema, required=True)


# -------------------------------------------------------- response envelopes


class RuntimeResponseSchema(BaseSchema):
    runtime = fields.Nested(RuntimeSummarySchema, required=True)


class WorkersResponseSchema(BaseSchema):
    workers = fields.List(fields.Nested(WorkerSummarySchema), required=True)
    next_after = fields.String(required=True, allow_none=True)


class WorkerDeletedResponseSchema(BaseSchema):
    deleted = fields.Nested(WorkerRefSchema, required=True)


class WorkerResponseSchema(BaseSchema):
    worker = fields.Nested(WorkerDetailSchema, required=True)


class WorkerInteractionAckResponseSchema(BaseSchema):
    ack = fields.Nested(WorkerInteractionAckSchema, required=True)


class WorkerLifecycleAckResponseSchema(BaseSchema):
    ack = fields.Nested(WorkerLifecycleAckSchema, required=True)


class InterruptAckResponseSchema(BaseSchema):
    ack = fields.Nested(InterruptAckSchema, required=True)


class PermissionsResponseSchema(BaseSchema):
    permissions = fields.List(fields.Nested(PermissionRequestSchema), required=True)


class PermissionAnswerResponseSchema(BaseSchema):
    permission = fields.Nested(PermissionAnswerSchema, required=True)


class ProfilesResponseSchema(BaseSchema):
    profiles = fields.List(fields.Nested(ProfileSchema), required=True)


class TranscriptResponseSchema(BaseSchema):
    transcript = fields.Nested(TranscriptProjectionSchema, required=True)


class DiagnosticsResponseSchema(BaseSchema):
    diagnostics = fields.List(fields.Nested(RuntimeDiagnosticSchema), required=True)


class HealthResponseSchema(BaseSchema):
    status = fields.String(required=True)


class ErrorDetailSchema(BaseSchema):
    code = fields.String(required=True)
    message = fields.String(required=True)


class ErrorResponseSchema(BaseSchema):
    error = fields.Nested(ErrorDetailSchema, required=True)


def flatten_messages(messages: Any, prefix: str = "") -> list[str]:
    """Turn marshmallow's nested error messages into ``path: message`` lines.

    ``{"intent": {"kind": ["Missing data…"]}, "requested_capabilities": {0: {"name": [...]}}}``
    becomes ``intent.kind: Missing data…`` and ``requested_capabilities[0].name: …``.
    """
    if isinstance(messages, Mapping):
        lines = []
        for key, value in messages.items():
            if isinstance(key, int):
                path = f"{prefix}[{key}]"
            elif key == "_schema":
                path = prefix
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            lines.extend(flatten_messages(value, path))
        return lines
    if isinstance(messages, list):
        return [line for item in messages for line in flatten_messages(item, prefix)]
    return [f"{prefix}: {messages}" if prefix else str(messages)]


# ------------------------------------------------------ observation frames (§7)


class ObservationPayloadSchema(BaseSchema):
    """``{"event": <snake_case name>, "data"?: {…}}`` — the seed protocol's tagged event."""

    __omit_when_empty__ = frozenset({"data"})
    event = fields.String(required=True)
    data = fields.Dict(keys=fields.String())


class ObservationEnvelopeSchema(BaseSchema):
    cursor = fields.String(required=True)
    event_id = fields.String(required=True)
    worker_id = fields.String(required=True)
    payload = fields.Nested(ObservationPayloadSchema, required=True)


class EventFrameSchema(BaseSchema):
    kind = fields.Constant("event", required=True)
    envelope = fields.Nested(ObservationEnvelopeSchema, required=True)


class ObservationDiagnosticSchema(BaseSchema):
    __omit_when_empty__ = frozenset({"resume_from"})
    code = fields.String(required=True)
    message = fields.String(required=True)
    resume_from = fields.String()


class DiagnosticFrameSchema(BaseSchema):
    kind = fields.Constant("diagnostic", required=True)
    diagnostic = fields.Nested(ObservationDiagnosticSchema, required=True)


class SnapshotDataSchema(BaseSchema):
    """The data of the first frame of a session: the worker as it is when it connects."""

    worker = fields.Nested(WorkerDetailSchema, required=True)
    status = fields.Enum(WorkerStatus, by_value=True, required=True)
    entries = fields.List(fields.Nested(TranscriptEntrySchema), required=True)


# ------------------------------------------------------------ compiled dumping

_MISSING = object()


def compile_dumper(schema: BaseSchema) -> Callable[[Any], dict[str, Any]]:
    """A function that dumps like ``schema.dump``, built once from the schema's own fields.

    marshmallow's generic dump costs tens of microseconds an object; a transcript page of 256
    entries took milliseconds. This walks the same declared fields, so the schema stays the one
    description of the shape (tests check the two dumps agree on every response shape), and
    refuses any field type it does not know rather than dump it differently. A schema with a
    codec encoder (``__encode__``) is dumped by that encoder.
    """
    if schema.__encode__ is not None:
        return schema.__encode__
    steps = []
    for name, field in schema.dump_fields.items():
        omit_when_empty = name in schema.__omit_when_empty__
        steps.append((field.data_key or name, field.attribute or name, _converter(field), omit_when_empty))

    def dump(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        is_mapping = isinstance(obj, Mapping)
        for key, attribute, convert, omit_when_empty in steps:
            value = obj.get(attribute, _MISSING) if is_mapping else getattr(obj, attribute, _MISSING)
            if value is _MISSING:
                continue
            if value is not None and convert is not None:
                value = convert(value)
            if omit_when_empty and (value is None or value == []):
                continue
            out[key] = value
        return out

    return dump


def _converter(field: fields.Field[Any]) -> Callable[[Any], Any] | None:
    if isinstance(field, fields.Nested):
        nested = compile_dumper(field.schema)  # type: ignore[arg-type]
        return (lambda items: [nested(item) for item in items]) if field.many else nested
    if isinstance(field, fields.List):
        inner = _converter(field.inner)
        return list if inner is None else (lambda items: [inner(item) for item in items])
    if isinstance(field, TaggedUnion):
        return field.union.encode
    if isinstance(field, fields.Enum):
        assert field.by_value, "enums are dumped by value"
        return lambda value: value.value
    if isinstance(field, fields.Constant):
        constant = field.constant
        return lambda _: constant
    if isinstance(field, fields.Dict):
        return dict
    if isinstance(field, (fields.String, fields.Integer, fields.Boolean)):
        return None  # the domain holds these as str, int and bool already
    raise TypeError(f"compile_dumper does not know how to dump {type(field).__name__}")
