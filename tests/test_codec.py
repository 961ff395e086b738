"""The codec between domain values and their JSON (contract §2, §8): every intent kind, every
profile kind and every record kind goes to JSON text and back unchanged, in exactly the
contract's shape."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runtimed.domain.catalog import (
    AssistantIntent,
    BuiltinProfile,
    CapabilityRequest,
    ConfigBundleRef,
    CreateWorkerRequest,
    MountRef,
    NamedProfile,
    RoleIntent,
    RuntimeDefaultProfile,
    TaskIntent,
    WorkerStatus,
    WorkspaceRef,
)
from runtimed.domain.execution import AgentInfo, ExecutionState, ProcessExit, WorkerExecution
from runtimed.domain.identity import WorkerRef
from runtimed.domain.management import RuntimeStatus
from runtimed.domain.observation import (
    EventKind,
    Observation,
    RuntimeDiagnostic,
    RuntimeEvent,
    Severity,
    TranscriptEntry,
    TranscriptRole,
)
from runtimed.store import codec

REF = WorkerRef("runtime-fs-00000000000000aa", "worker-00000001")
REF_JSON = {"runtime_id": "runtime-fs-00000000000000aa", "worker_id": "worker-00000001"}


def through_text(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as JSON text and back, as a file or a response body carries it."""
    assert_no_null(record)
    return json.loads(json.dumps(record))


def assert_no_null(value: Any) -> None:
    """Absent optional fields are omitted, never ``null``."""
    if isinstance(value, dict):
        for item in value.values():
            assert item is not None, value
            assert_no_null(item)
    elif isinstance(value, list):
        for item in value:
            assert_no_null(item)


# ----------------------------------------------------------- tagged unions

INTENTS = [
    (AssistantIntent(), {"kind": "assistant"}),
    (AssistantIntent("help out"), {"kind": "assistant", "purpose": "help out"}),
    (TaskIntent("ship it"), {"kind": "task", "objective": "ship it"}),
    (RoleIntent("reviewer"), {"kind": "role", "role": "reviewer"}),
    (RoleIntent("reviewer", "review"), {"kind": "role", "role": "reviewer", "purpose": "review"}),
]
PROFILES = [
    (RuntimeDefaultProfile(), {"kind": "runtime_default"}),
    (BuiltinProfile("builtin:coder"), {"kind": "builtin", "value": "builtin:coder"}),
    (NamedProfile("careful"), {"kind": "named", "value": "careful"}),
]


@pytest.mark.parametrize(("intent", "shape"), INTENTS, ids=lambda v: repr(v))
def test_every_intent_kind_round_trips_in_the_contracts_shape(intent, shape):
    assert codec.encode_intent(intent) == shape
    assert list(codec.encode_intent(intent)) == list(shape)  # the tag first, then the fields in order
    assert codec.decode_intent(through_text(codec.encode_intent(intent))) == intent


@pytest.mark.parametrize(("profile", "shape"), PROFILES, ids=lambda v: repr(v))
def test_every_profile_kind_round_trips_in_the_contracts_shape(profile, shape):
    assert codec.encode_profile(profile) == shape
    assert codec.decode_profile(through_text(codec.encode_profile(profile))) == profile


def test_the_tests_cover_every_kind_the_codec_knows():
    assert list(codec.INTENTS.kinds) == ["assistant", "task", "role"]
    assert list(codec.PROFILES.kinds) == ["runtime_default", "builtin", "named"]
    assert {intent.kind for intent, _ in INTENTS} == set(codec.INTENTS.kinds)
    assert {profile.kind for profile, _ in PROFILES} == set(codec.PROFILES.kinds)


@pytest.mark.parametrize(
    ("union", "record"),
    [
        (codec.INTENTS, {"kind": "wish", "purpose": "x"}),
        (codec.INTENTS, {"kind": 3}),
        (codec.INTENTS, {"purpose": "no kind"}),
        (codec.INTENTS, {"kind": "task"}),  # objective is required
        (codec.PROFILES, {"kind": "builtin"}),  # value is required
        (codec.PROFILES, {"kind": "intent"}),
    ],
)
def test_a_malformed_tagged_record_is_a_record_error(union, record):
    with pytest.raises(codec.RECORD_ERRORS):
        union.decode(record)


# ---------------------------------------------------------------- requests

MINIMAL = CreateWorkerRequest(AssistantIntent(), RuntimeDefaultProfile())
FULL = CreateWorkerRequest(
    intent=RoleIntent("reviewer", "review"),
    profile=NamedProfile("careful"),
    config_bundle=ConfigBundleRef("bundle-1"),
    requested_capabilities=(CapabilityRequest("write"), CapabilityRequest("read", "to read")),
    workspace_refs=(WorkspaceRef("repo", "git:main"),),
    mount_refs=(MountRef("data", "/srv/data"), MountRef("cache", "/var/cache")),
)
FULL_JSON = {
    "intent": {"kind": "role", "role": "reviewer", "purpose": "review"},
    "profile": {"kind": "named", "value": "careful"},
    "config_bundle": {"id": "bundle-1"},
    "requested_capabilities": [{"name": "write"}, {"name": "read", "reason": "to read"}],
    "workspace_refs": [{"name": "repo", "reference": "git:main"}],
    "mount_refs": [{"name": "data", "reference": "/srv/data"}, {"name": "cache", "reference": "/var/cache"}],
}


@pytest.mark.parametrize(
    ("request_", "shape"),
    [
        (MINIMAL, {"intent": {"kind": "assistant"}, "profile": {"kind": "runtime_default"}}),
        (FULL, FULL_JSON),
        *[(CreateWorkerRequest(intent, BuiltinProfile("builtin:echo")), None) for intent, _ in INTENTS],
        *[(CreateWorkerRequest(TaskIntent("x"), profile), None) for profile, _ in PROFILES],
    ],
)
def test_a_create_worker_request_round_trips_with_empty_parts_omitted(request_, shape):
    record = codec.encode_request(request_)
    if shape is not None:
        assert record == shape
        assert list(record) == list(shape)
    assert codec.decode_request(through_text(record)) == request_


def test_the_parts_of_a_request_round_trip():
    for value, encode, decode, shape in [
        (ConfigBundleRef("b"), codec.encode_config_bundle, codec.decode_config_bundle, {"id": "b"}),
        (CapabilityRequest("read"), codec.encode_capability, codec.decode_capability, {"name": "read"}),
        (
            CapabilityRequest("read", "why"),
            codec.encode_capability,
            codec.decode_capability,
            {"name": "read", "reason": "why"},
        ),
        (
            WorkspaceRef("w", "r"),
            codec.encode_workspace_ref,
            codec.decode_workspace_ref,
            {"name": "w", "reference": "r"},
        ),
        (MountRef("m", "/r"), codec.encode_mount_ref, codec.decode_mount_ref, {"name": "m", "reference": "/r"}),
        (REF, codec.encode_worker_ref, codec.decode_worker_ref, REF_JSON),
    ]:
        assert encode(value) == shape
        assert decode(through_text(encode(value))) == value


def test_a_request_as_worker_snapshots_held_it_before_the_codec_still_decodes():
    # Written with null for absent values and every list present, empty or not.
    old = {
        "intent": {"kind": "assistant"},
        "profile": {"kind": "runtime_default"},
        "config_bundle": None,
        "requested_capabilities": [{"name": "write", "reason": None}],
        "workspace_refs": [],
        "mount_refs": [],
    }
    assert codec.decode_request(old) == CreateWorkerRequest(
        AssistantIntent(), RuntimeDefaultProfile(), requested_capabilities=(CapabilityRequest("write"),)
    )


@pytest.mark.parametrize(
    "record", [{"runtime_id": "r", "worker_id": " "}, {"runtime_id": "", "worker_id": "w"}, "w", {}]
)
def test_a_bad_worker_ref_is_a_record_error(record):
    with pytest.raises(codec.RECORD_ERRORS):
        codec.decode_worker_ref(record)


# ------------------------------------------------------------ record kinds


def test_a_worker_record_round_trips():
    worker = codec.WorkerRecord(REF, 2, WorkerStatus.CANCELLED, FULL)
    record = codec.encode_worker_record(worker)
    assert record == {"worker_ref": REF_JSON, "created_event_id": 2, "status": "cancelled", "request": FULL_JSON}
    assert codec.decode_worker_record(through_text(record)) == worker


@pytest.mark.parametrize("status", list(WorkerStatus))
def test_every_worker_status_round_trips(status):
    worker = codec.WorkerRecord(REF, 7, status, MINIMAL)
    assert codec.decode_worker_record(through_text(codec.encode_worker_record(worker))).status is status


@pytest.mark.parametrize("status", list(RuntimeStatus))
def test_a_runtime_record_round_trips(status):
    runtime = codec.RuntimeRecord("runtime-fs-00000000000000aa", status, 12)
    record = codec.encode_runtime_record(runtime)
    assert record == {"runtime_id": "runtime-fs-00000000000000aa", "status": status.value, "last_event_id": 12}
    assert codec.decode_runtime_record(through_text(record)) == runtime


@pytest.mark.parametrize("role", list(TranscriptRole))
def test_a_transcript_entry_round_trips_with_its_ref_or_in_its_workers_file(role):
    content = "héllo 🎉 \ud800 lone"  # a lone surrogate a client sent survives JSON text too
    entry = TranscriptEntry(3, REF, role, content, 9)
    record = codec.encode_transcript_entry(entry)
    shape = {"sequence": 3, "worker_ref": REF_JSON, "role": role.value, "content": content, "event_id": 9}
    assert record == shape
    assert list(record) == list(shape)
    assert codec.decode_transcript_entry(through_text(record)) == entry
    stored = codec.encode_transcript_entry(entry, with_ref=False)
    assert stored == {k: v for k, v in shape.items() if k != "worker_ref"}
    assert codec.decode_transcript_entry(through_text(stored), REF) == entry


@pytest.mark.parametrize("kind", list(EventKind))
@pytest.mark.parametrize("ref", [REF, None])
def test_every_runtime_event_kind_round_trips(kind, ref):
    event = RuntimeEvent(4, kind, "what happened", ref)
    record = codec.encode_event(event)
    shape = {"id": 4, "worker_ref": REF_JSON, "kind": kind.value, "message": "what happened"}
    if ref is None:
        del shape["worker_ref"]
    assert record == shape
    assert list(record) == list(shape)  # RuntimeEvent = {id, worker_ref?, kind, message}
    assert codec.decode_event(through_text(record)) == event


@pytest.mark.parametrize("severity", list(Severity))
@pytest.mark.parametrize("ref", [REF, None])
def test_every_diagnostic_severity_round_trips(severity, ref):
    diagnostic = RuntimeDiagnostic(5, severity, "worker.tools_less", "no tools", ref)
    record = codec.encode_diagnostic(diagnostic)
    shape = {
        "id": 5,
        "severity": severity.value,
        "code": "worker.tools_less",
        "message": "no tools",
        "worker_ref": REF_JSON,
    }
    if ref is None:
        del shape["worker_ref"]
    assert record == shape
    assert list(record) == list(shape)
    assert codec.decode_diagnostic(through_text(record)) == diagnostic


@pytest.mark.parametrize("data", [None, {}, {"sequence": 1, "content": "hi", "nested": {"list": [1, "two", None]}}])
def test_an_observation_round_trips_in_its_workers_file(data):
    observation = Observation(17, REF, "user_message", data)
    record = codec.encode_observation(observation)
    shape: dict[str, Any] = {"sequence": 17, "event": "user_message"}
    if data is not None:
        shape["data"] = data
    assert record == shape
    assert codec.decode_observation(json.loads(json.dumps(record)), REF) == observation


def test_decoders_use_the_ref_decoder_they_are_given():
    seen = []

    def decode_ref(record: Any) -> WorkerRef:
        seen.append(record)
        return REF

    created = codec.encode_event(RuntimeEvent(1, EventKind.WORKER_CREATED, "m", REF))
    started = codec.encode_event(RuntimeEvent(2, EventKind.RUNTIME_STARTED, "m"))
    assert codec.decode_event(created, decode_ref).worker_ref is REF
    assert codec.decode_event(started, decode_ref).worker_ref is None
    assert seen == [REF_JSON]


@pytest.mark.parametrize(
    ("decode", "record"),
    [
        (codec.decode_event, {"id": 1, "kind": "worker_exploded", "message": "m"}),
        (codec.decode_event, {"id": 1, "message": "m"}),
        (codec.decode_diagnostic, {"id": 1, "severity": "fatal", "code": "c", "message": "m"}),
        (
            codec.decode_transcript_entry,
            {"sequence": 1, "role": "robot", "content": "c", "event_id": 2, "worker_ref": REF_JSON},
        ),
        (codec.decode_runtime_record, {"runtime_id": "r", "status": "paused", "last_event_id": 1}),
        (codec.decode_runtime_record, {"runtime_id": "r", "status": "running", "last_event_id": "1"}),
        (codec.decode_worker_record, {"worker_ref": REF_JSON, "created_event_id": 2, "status": "running"}),
        (lambda record: codec.decode_observation(record, REF), {"sequence": "1", "event": "e"}),
        (
            codec.decode_execution,
            {"profile": "p", "state": "asleep", "turns": 0, "queued_inputs": 0, "pending_permissions": 0},
        ),
        (
            codec.decode_execution,
            {"profile": "p", "state": "idle", "turns": "0", "queued_inputs": 0, "pending_permissions": 0},
        ),
        (
            codec.decode_execution,
            {"profile": 7, "state": "idle", "turns": 0, "queued_inputs": 0, "pending_permissions": 0},
        ),
        (codec.decode_execution, {"profile": "p", "state": "idle", "turns": 0, "pending_permissions": 0}),
        (
            codec.decode_execution,
            {
                "profile": "p",
                "state": "idle",
                "turns": 0,
                "queued_inputs": 0,
                "pending_permissions": 0,
                "agent": {"version": "1"},
            },
        ),
        (
            codec.decode_execution,
            {
                "profile": "p",
                "state": "idle",
                "turns": 0,
                "queued_inputs": 0,
                "pending_permissions": 0,
                "exit": {"code": "1"},
            },
        ),
        (
            codec.decode_execution,
            {
                "profile": "p",
                "state": "idle",
                "turns": 0,
                "queued_inputs": 0,
                "pending_permissions": 0,
                "open_turn": True,
            },
        ),
    ],
)
def test_a_malformed_record_is_a_record_error(decode, record):
    with pytest.raises(codec.RECORD_ERRORS) as caught:
        decode(record)
    assert codec.record_problem(caught.value)


# ---------------------------------------------------------------- execution

EXECUTIONS = [
    (
        WorkerExecution("builtin:echo"),
        {"profile": "builtin:echo", "state": "starting", "turns": 0, "queued_inputs": 0, "pending_permissions": 0},
    ),
    (
        WorkerExecution(
            "gemini",
            ExecutionState.BUSY,
            pid=4242,
            agent=AgentInfo("gemini-cli", "0.2.1"),
            session_id="sess-9",
            turns=4,
            turns_started=4,
            queued_inputs=2,
            pending_permissions=1,
            exit=ProcessExit(code=1),
        ),
        {
            "profile": "gemini",
            "state": "busy",
            "pid": 4242,
            "agent": {"name": "gemini-cli", "version": "0.2.1"},
            "session_id": "sess-9",
            "turns": 4,
            "queued_inputs": 2,
            "pending_permissions": 1,
            "exit": {"code": 1},
        },
    ),
    (
        WorkerExecution("x", ExecutionState.EXITED, agent=AgentInfo("a"), exit=ProcessExit(signal="SIGKILL")),
        {
            "profile": "x",
            "state": "exited",
            "agent": {"name": "a"},
            "turns": 0,
            "queued_inputs": 0,
            "pending_permissions": 0,
            "exit": {"signal": "SIGKILL"},
        },
    ),
]


@pytest.mark.parametrize(("execution", "view"), EXECUTIONS, ids=lambda v: getattr(v, "profile", ""))
def test_an_execution_shows_the_contracts_shape_without_its_bookkeeping(execution, view):
    assert codec.encode_execution_view(execution) == view
    assert list(codec.encode_execution_view(execution)) == list(view)  # in the contract's order
    assert codec.decode_execution(through_text(view)) == execution  # the defaults of the bookkeeping


@pytest.mark.parametrize("state", list(ExecutionState))
def test_a_stored_execution_round_trips_with_its_bookkeeping(state):
    execution = WorkerExecution(
        "builtin:echo",
        state,
        turns=2,
        turns_started=3,
        queued_inputs=1,
        delivered_sequence=6,
        open_turn=3,
        pid=9,
    )
    record = codec.encode_execution(execution)
    assert (record["turns_started"], record["delivered_sequence"], record["open_turn"]) == (3, 6, 3)
    assert codec.decode_execution(through_text(record)) == execution
    idle = WorkerExecution("p", turns=1, turns_started=1, delivered_sequence=1)
    assert "open_turn" not in codec.encode_execution(idle)
    assert codec.decode_execution(through_text(codec.encode_execution(idle))) == idle
