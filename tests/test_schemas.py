"""The dumpers compiled from the schemas dump exactly what marshmallow dumps, and the schemas of
the store codec's records load and dump as the codec maps them."""

from __future__ import annotations

import pytest
from marshmallow import fields

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
    WorkspaceRef,
)
from runtimed.domain.execution import AgentInfo, ExecutionState, ProcessExit, WorkerExecution
from runtimed.domain.identity import WorkerRef
from runtimed.domain.interaction import InputKind, WorkerInput
from runtimed.domain.observation import (
    EventKind,
    RuntimeDiagnostic,
    RuntimeEvent,
    Severity,
    TranscriptEntry,
    TranscriptRole,
    encode_cursor,
)
from runtimed.runtime import Runtime
from runtimed.store import MemoryStore, codec
from runtimed.web import schemas

from .helpers import FakeBackend, run_turn

REQUESTS = [
    CreateWorkerRequest(AssistantIntent(), RuntimeDefaultProfile()),
    CreateWorkerRequest(AssistantIntent("help"), NamedProfile("careful")),
    CreateWorkerRequest(
        TaskIntent("do it"), BuiltinProfile("builtin:coder"), requested_capabilities=(CapabilityRequest("read", "why"),)
    ),
    CreateWorkerRequest(
        RoleIntent("critic", "review"),
        RuntimeDefaultProfile(),
        config_bundle=ConfigBundleRef("b"),
        requested_capabilities=(CapabilityRequest("write"), CapabilityRequest("read", "r")),
        workspace_refs=(WorkspaceRef("repo", "git:main"),),
        mount_refs=(MountRef("data", "/srv"),),
    ),
]


@pytest.fixture
async def busy_runtime():
    runtime = await Runtime.open(MemoryStore())
    backend = FakeBackend(runtime, default_profile="careful")
    runtime.attach(backend)
    workers = [await runtime.create_worker(request) for request in REQUESTS]
    # Agent-backed workers: a plain one, and one with every optional part of its execution.
    echo = await runtime.create_worker(CreateWorkerRequest(AssistantIntent(), BuiltinProfile("builtin:echo")))
    careful = await runtime.create_worker(CreateWorkerRequest(AssistantIntent(), NamedProfile("careful")))
    await runtime.update_execution(
        careful.worker_ref,
        state=ExecutionState.IDLE,
        pid=99,
        agent=AgentInfo("careful", "2.0"),
        session_id="s",
        exit=ProcessExit(code=1, signal="SIGTERM"),
    )
    await runtime.send_input(careful.worker_ref, WorkerInput(InputKind.USER, "go"))
    await run_turn(runtime, careful.worker_ref)
    await runtime.send_input(careful.worker_ref, WorkerInput(InputKind.USER, "again"))
    await runtime.begin_turn(careful.worker_ref)
    backend.ask(careful.worker_ref, "perm-1")
    backend.ask(careful.worker_ref, "perm-2", turn=None)
    assert echo.execution is not None
    for i, worker in enumerate(workers):
        for j in range(i + 1):
            await runtime.send_input(
                worker.worker_ref, WorkerInput(InputKind.USER if j % 2 else InputKind.SYSTEM, f"m{j} é")
            )
    await runtime.stop_worker(workers[1].worker_ref, "done")
    await runtime.cancel_worker(workers[2].worker_ref)
    return runtime


def assert_same(schema: schemas.BaseSchema, value) -> None:
    assert schemas.compile_dumper(schema)(value) == schema.dump(value)


async def test_every_response_shape_dumps_the_same(busy_runtime):
    runtime = busy_runtime
    workers = runtime.list_workers()
    assert_same(schemas.RuntimeResponseSchema(), {"runtime": runtime.summary()})
    assert_same(schemas.WorkersResponseSchema(), {"workers": workers})
    assert_same(schemas.DiagnosticsResponseSchema(), {"diagnostics": runtime.diagnostics()})
    assert_same(schemas.EventBatchSchema(), runtime.events())
    assert_same(schemas.HealthResponseSchema(), {"status": "ok"})
    assert_same(schemas.ErrorResponseSchema(), {"error": {"code": "x", "message": "y"}})
    for worker in workers:
        ref = worker.worker_ref
        assert_same(schemas.WorkerResponseSchema(), {"worker": runtime.worker_detail(ref)})
        for start, limit in ((0, 256), (1, 1), (9, 2)):
            assert_same(schemas.TranscriptResponseSchema(), {"transcript": runtime.transcript(ref, start, limit)})
        snapshot = runtime.observation_snapshot(ref)
        assert_same(
            schemas.SnapshotDataSchema(),
            {"worker": snapshot.worker, "status": snapshot.worker.status, "entries": snapshot.entries},
        )
    assert any(worker.execution is not None for worker in workers)
    running = workers[0].worker_ref
    ack = await runtime.send_input(running, WorkerInput(InputKind.USER, "x"))
    assert_same(schemas.WorkerInteractionAckResponseSchema(), {"ack": ack})
    assert_same(schemas.WorkerLifecycleAckResponseSchema(), {"ack": await runtime.stop_worker(running)})
    assert_same(schemas.ProfilesResponseSchema(), {"profiles": runtime.profiles()})
    careful = runtime.worker_ref("worker-00000006")
    assert_same(schemas.PermissionsResponseSchema(), {"permissions": runtime.permissions(careful)})
    answer = await runtime.answer_permission(careful, "perm-1", "allow")
    assert_same(schemas.PermissionAnswerResponseSchema(), {"permission": answer})
    assert_same(schemas.InterruptAckResponseSchema(), {"ack": await runtime.interrupt(careful)})
    assert_same(schemas.InterruptAckResponseSchema(), {"ack": await runtime.interrupt(careful)})  # no turn


@pytest.mark.parametrize("data", [None, {"text": "x"}, {}])
def test_frames_dump_the_same(data):
    payload = {"event": "text_delta"} if data is None else {"event": "text_delta", "data": data}
    envelope = {
        "cursor": encode_cursor(3),
        "event_id": encode_cursor(3),
        "worker_id": "worker-00000001",
        "payload": payload,
    }
    assert_same(schemas.EventFrameSchema(), {"kind": "event", "envelope": envelope})
    for diagnostic in ({"code": "c", "message": "m"}, {"code": "c", "message": "m", "resume_from": encode_cursor(1)}):
        assert_same(schemas.DiagnosticFrameSchema(), {"kind": "diagnostic", "diagnostic": diagnostic})


def test_a_field_type_the_compiler_does_not_know_is_refused():
    class Odd(schemas.BaseSchema):
        when = fields.DateTime()

    with pytest.raises(TypeError, match="DateTime"):
        schemas.compile_dumper(Odd())


# ------------------------------------------- the schemas and the store's codec agree

REF = WorkerRef("runtime-mem-00000000000000aa", "worker-00000001")
RECORDS = [
    *[(schemas.CreateWorkerRequestSchema(), request) for request in REQUESTS],
    *[(schemas.TranscriptEntrySchema(), TranscriptEntry(1, REF, role, "hi é", 2)) for role in TranscriptRole],
    *[(schemas.RuntimeEventSchema(), RuntimeEvent(3, kind, "m", REF)) for kind in EventKind],
    (schemas.RuntimeEventSchema(), RuntimeEvent(1, EventKind.RUNTIME_STARTED, "runtime started")),
    *[(schemas.RuntimeDiagnosticSchema(), RuntimeDiagnostic(1, severity, "c", "m", REF)) for severity in Severity],
    (schemas.RuntimeDiagnosticSchema(), RuntimeDiagnostic(2, Severity.INFO, "c", "m")),
    *[(schemas.ExecutionSchema(), WorkerExecution("builtin:echo", state)) for state in ExecutionState],
    (
        schemas.ExecutionSchema(),
        WorkerExecution(
            "gemini",
            ExecutionState.BUSY,
            pid=1,
            agent=AgentInfo("g", "1"),
            session_id="s",
            turns=3,
            turns_started=3,
            queued_inputs=2,
            pending_permissions=1,
            exit=ProcessExit(code=0),
        ),
    ),
    (schemas.ExecutionSchema(), WorkerExecution("x", agent=AgentInfo("g"), exit=ProcessExit(signal="SIGKILL"))),
]


@pytest.mark.parametrize(("schema", "value"), RECORDS, ids=lambda v: type(v).__name__)
def test_a_record_shape_loads_and_dumps_through_its_schema_as_the_codec_maps_it(schema, value):
    encoded = schema.__encode__(value)
    assert schema.dump(value) == encoded  # marshmallow's field walk gives the codec's JSON
    assert schemas.compile_dumper(schema)(value) == encoded
    assert schema.load(encoded) == value  # and the schema's load ends in the codec's decoder


def test_the_tagged_unions_take_their_kinds_from_the_codec():
    create = schemas.CreateWorkerRequestSchema()
    assert list(create.fields["intent"].variants) == list(codec.INTENTS.kinds)
    assert list(create.fields["profile"].variants) == list(codec.PROFILES.kinds)
