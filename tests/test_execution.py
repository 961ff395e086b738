"""The Runtime's side of executing workers (contract §9), without HTTP and without processes.

A ``FakeBackend`` (``tests/helpers.py``) stands in for the agent supervisor: it records what the
Runtime asks of it, and the tests play the supervisor's part through the Runtime's backend-facing
methods (``begin_turn``, ``end_turn``, ``update_execution`` …). The end-to-end tests with real
agent processes come with the supervisor (``runtimed.agents``).
"""

from __future__ import annotations

import logging

import pytest

from runtimed.domain.catalog import (
    AssistantIntent,
    BuiltinProfile,
    CapabilityRequest,
    CreateWorkerRequest,
    NamedProfile,
    RuntimeDefaultProfile,
    TaskIntent,
    WorkerStatus,
)
from runtimed.domain.errors import (
    InputQueueFull,
    InvalidRequest,
    PermissionNotFound,
    RuntimeStopped,
    StoreIo,
    WorkerLimitReached,
    WorkerNotExecuting,
    WorkerNotFound,
)
from runtimed.domain.execution import (
    AgentInfo,
    ExecutionState,
    PermissionAnswer,
    ProcessExit,
    ProfileSource,
    StopReason,
    WorkerExecution,
)
from runtimed.domain.identity import WorkerRef
from runtimed.domain.interaction import InputKind, WorkerInput
from runtimed.domain.management import RuntimeLimits, RuntimeOptions
from runtimed.domain.observation import EventKind, Severity, TranscriptRole
from runtimed.runtime import Runtime
from runtimed.runtime.execution import ExecutionBackend
from runtimed.store import MemoryStore

from .helpers import FailingStore, FakeBackend, run_turn

ECHO = CreateWorkerRequest(
    AssistantIntent(), BuiltinProfile("builtin:echo"), requested_capabilities=(CapabilityRequest("read"),)
)
CODER = CreateWorkerRequest(
    AssistantIntent(), BuiltinProfile("builtin:coder"), requested_capabilities=(CapabilityRequest("read"),)
)


def user(content: str) -> WorkerInput:
    return WorkerInput(InputKind.USER, content)


async def executing(store: MemoryStore | None = None, **limits: int) -> tuple[Runtime, FakeBackend]:
    runtime = await Runtime.open(store or MemoryStore(), RuntimeOptions(limits=RuntimeLimits(**limits)))
    backend = FakeBackend(runtime)
    runtime.attach(backend)
    return runtime, backend


def execution_of(runtime: Runtime, ref: WorkerRef) -> WorkerExecution:
    execution = runtime.worker_detail(ref).execution
    assert execution is not None
    return execution


def observed(runtime: Runtime, ref: WorkerRef, after: int = 0) -> list[tuple[str, object]]:
    return [(o.event, o.data) for o in runtime.replay_observations(ref, after)]


def state_of(runtime: Runtime) -> tuple:
    """Everything a client can read, to check that a refusal changed nothing."""
    return (
        runtime.summary(),
        runtime.list_workers(),
        runtime.events(),
        runtime.diagnostics(),
        [runtime.transcript(w.worker_ref).items for w in runtime.list_workers()],
        runtime.observation_sequence,
    )


def test_the_fake_backend_is_an_execution_backend():
    backend: ExecutionBackend = FakeBackend(None)  # type: ignore[arg-type]
    assert backend.ready


# ------------------------------------------------------------------ create


async def test_without_a_backend_every_worker_records_and_nothing_executes(runtime):
    detail = await runtime.create_worker(ECHO)

    assert detail.execution is None
    assert [d.code for d in runtime.diagnostics()] == ["runtime.local_default_resources"]
    assert runtime.profiles() == []
    assert runtime.executing_workers() == []
    with pytest.raises(WorkerNotExecuting):
        await runtime.interrupt(detail.worker_ref)
    with pytest.raises(WorkerNotExecuting):
        runtime.permissions(detail.worker_ref)


@pytest.mark.parametrize(
    ("selector", "shown"),
    [
        (BuiltinProfile("builtin:coder"), "builtin:coder"),
        (NamedProfile("gemini"), "named:gemini"),
        (RuntimeDefaultProfile(), "runtime_default"),
    ],
)
async def test_a_profile_that_names_no_agent_makes_a_record_only_worker_with_an_info_diagnostic(
    runtime, backend, selector, shown
):
    detail = await runtime.create_worker(CreateWorkerRequest(AssistantIntent(), selector))

    assert detail.execution is None
    record_only = runtime.diagnostics()[-1]
    assert (record_only.severity, record_only.code, record_only.worker_ref) == (
        Severity.INFO,
        "worker.record_only",
        detail.worker_ref,
    )
    assert record_only.message == f"profile {shown} names no agent; the worker records input only"
    await runtime.send_input(detail.worker_ref, user("hello"))
    await runtime.stop_worker(detail.worker_ref)
    assert backend.calls == []  # nothing to check, start, wake or stop


async def test_an_agent_profile_makes_an_executing_worker_and_starts_it_once_durable(runtime, backend):
    detail = await runtime.create_worker(ECHO)

    assert detail.execution == WorkerExecution(profile="builtin:echo", state=ExecutionState.STARTING)
    assert backend.calls == [("check_create", "builtin:echo"), ("start", detail.worker_id)]
    assert backend.saw_durable == [True]
    assert "worker.record_only" not in [d.code for d in runtime.diagnostics()]
    assert runtime.list_workers()[0].execution == detail.execution


async def test_runtime_default_selects_the_default_profile():
    runtime = await Runtime.open(MemoryStore())
    backend = FakeBackend(runtime, default_profile="careful")
    runtime.attach(backend)

    detail = await runtime.create_worker(CreateWorkerRequest(AssistantIntent(), RuntimeDefaultProfile()))

    assert detail.execution is not None and detail.execution.profile == "careful"


async def test_a_create_the_backend_refuses_is_invalid_request_and_creates_nothing(runtime, backend):
    backend.refusal = "workspace_refs[0].reference /etc is outside every [execution] workspace_roots"
    before = state_of(runtime)

    with pytest.raises(InvalidRequest, match="outside every"):
        await runtime.create_worker(ECHO)

    assert state_of(runtime) == before
    assert backend.named("start") == []


async def test_a_blank_objective_is_refused_before_the_backend_is_asked(runtime, backend):
    with pytest.raises(InvalidRequest, match="task objective"):
        await runtime.create_worker(CreateWorkerRequest(TaskIntent(" "), BuiltinProfile("builtin:echo")))
    assert backend.calls == []


async def test_past_max_running_agents_an_agent_backed_create_is_refused_and_a_record_only_one_is_not():
    runtime, _ = await executing(max_running_agents=2)
    first = await runtime.create_worker(ECHO)
    await runtime.create_worker(ECHO)
    before = state_of(runtime)

    with pytest.raises(WorkerLimitReached) as caught:
        await runtime.create_worker(ECHO)

    assert caught.value.code == "worker_limit_reached"
    assert "2 agent-backed workers are running" in caught.value.message
    assert state_of(runtime) == before
    await runtime.create_worker(CODER)  # record-only workers do not count
    await runtime.stop_worker(first.worker_ref)  # a stopped one no longer does
    await runtime.create_worker(ECHO)


async def test_an_invalid_request_wins_over_the_worker_limit():
    runtime, backend = await executing(max_running_agents=1)
    await runtime.create_worker(ECHO)
    backend.refusal = "no"

    with pytest.raises(InvalidRequest):
        await runtime.create_worker(ECHO)


async def test_a_failed_create_does_not_count_against_the_limit():
    store = FailingStore()
    runtime, backend = await executing(store, max_running_agents=1)
    store.failing = True
    with pytest.raises(StoreIo):
        await runtime.create_worker(ECHO)
    store.failing = False

    await runtime.create_worker(ECHO)
    assert backend.named("start") == [("worker-00000001",)]


# ------------------------------------------------------------------- input


async def test_input_to_an_executing_worker_is_queued_and_wakes_the_backend_once_durable(runtime, backend):
    ref = (await runtime.create_worker(ECHO)).worker_ref

    ack = await runtime.send_input(ref, user("hello"))

    assert ack.transcript_sequence == 1
    assert execution_of(runtime, ref).queued_inputs == 1
    assert backend.named("wake") == [(ref.worker_id,)]
    assert backend.saw_durable == [True, True]
    await runtime.send_input(ref, WorkerInput(InputKind.SYSTEM, "be brief"))
    assert execution_of(runtime, ref).queued_inputs == 2


async def test_past_max_queued_inputs_input_is_refused_and_nothing_is_accepted():
    runtime, _ = await executing(max_queued_inputs=2)
    ref = (await runtime.create_worker(ECHO)).worker_ref
    await runtime.send_input(ref, user("one"))
    await runtime.send_input(ref, user("two"))
    before = state_of(runtime)

    with pytest.raises(InputQueueFull) as caught:
        await runtime.send_input(ref, user("three"))

    assert caught.value.code == "input_queue_full"
    assert state_of(runtime) == before
    await run_turn(runtime, ref)  # one delivered: room for one more
    await runtime.send_input(ref, user("three"))


async def test_blank_content_and_a_stopped_worker_win_over_a_full_queue():
    runtime, _ = await executing(max_queued_inputs=1)
    ref = (await runtime.create_worker(ECHO)).worker_ref
    await runtime.send_input(ref, user("one"))

    with pytest.raises(InvalidRequest, match="must not be empty"):
        await runtime.send_input(ref, user(" "))
    await runtime.stop_worker(ref)
    with pytest.raises(InvalidRequest, match="is not running"):
        await runtime.send_input(ref, user("two"))


# ------------------------------------------------------------------- turns


async def test_begin_turn_takes_the_oldest_queued_input_and_makes_the_turn_durable(runtime, backend):
    ref = (await runtime.create_worker(ECHO)).worker_ref
    assert await runtime.begin_turn(ref) is None  # nothing queued
    await runtime.send_input(ref, user("first"))
    await runtime.send_input(ref, WorkerInput(InputKind.SYSTEM, "second"))
    cursor = runtime.observation_cursor_now(ref)
    last_event = runtime.worker_detail(ref).last_event_id

    started = await runtime.begin_turn(ref)

    assert started is not None
    assert (started.turn, started.entry.sequence, started.entry.content) == (1, 1, "first")
    execution = execution_of(runtime, ref)
    assert (execution.state, execution.turns_started, execution.open_turn) == (ExecutionState.BUSY, 1, 1)
    assert (execution.delivered_sequence, execution.queued_inputs, execution.turns) == (1, 1, 0)
    assert observed(runtime, ref, cursor) == [("turn_started", {"turn": 1, "input_sequence": 1})]
    assert runtime.worker_detail(ref).last_event_id == last_event  # no runtime event


async def test_a_turn_cannot_begin_while_one_is_open(runtime, backend):
    ref = (await runtime.create_worker(ECHO)).worker_ref
    await runtime.send_input(ref, user("a"))
    await runtime.send_input(ref, user("b"))
    await runtime.begin_turn(ref)

    with pytest.raises(ValueError, match="turn 1 open"):
        await runtime.begin_turn(ref)


async def test_end_turn_makes_the_assistant_entry_of_the_turn_ended_event(runtime, backend):
    ref = (await runtime.create_worker(ECHO)).worker_ref
    await runtime.send_input(ref, user("hi"))
    started = await runtime.begin_turn(ref)
    assert started is not None
    cursor = runtime.observation_cursor_now(ref)

    await runtime.end_turn(ref, started.turn, StopReason.END_TURN, "echo: hi")

    event = runtime.events().events[-1]
    assert (event.kind, event.message, event.worker_ref) == (EventKind.WORKER_TURN_ENDED, "turn 1 ended: end_turn", ref)
    entry = runtime.transcript(ref).items[-1]
    assert (entry.sequence, entry.role, entry.content, entry.event_id) == (
        2,
        TranscriptRole.ASSISTANT,
        "echo: hi",
        event.id,
    )
    detail = runtime.worker_detail(ref)
    assert (detail.transcript_len, detail.last_event_id) == (2, event.id)
    execution = execution_of(runtime, ref)
    assert (execution.state, execution.turns, execution.open_turn) == (ExecutionState.IDLE, 1, None)
    assert observed(runtime, ref, cursor) == [
        ("assistant_message", {"turn": 1, "sequence": 2, "content": "echo: hi"}),
        ("turn_ended", {"turn": 1, "stop_reason": "end_turn"}),
    ]


async def test_a_turn_without_text_makes_no_entry_and_an_error_makes_a_warning(runtime, backend):
    ref = (await runtime.create_worker(ECHO)).worker_ref
    await runtime.send_input(ref, user("hi"))
    started = await runtime.begin_turn(ref)
    assert started is not None
    cursor = runtime.observation_cursor_now(ref)

    await runtime.end_turn(ref, started.turn, StopReason.ERROR, "", error="prompt failed: internal error")

    assert runtime.worker_detail(ref).transcript_len == 1
    assert runtime.events().events[-1].message == "turn 1 ended: error"
    assert observed(runtime, ref, cursor) == [("turn_ended", {"turn": 1, "stop_reason": "error"})]
    failed = runtime.diagnostics()[-1]
    assert (failed.severity, failed.code, failed.message, failed.worker_ref) == (
        Severity.WARNING,
        "worker.turn_failed",
        "turn 1 failed: prompt failed: internal error",
        ref,
    )


async def test_turns_deliver_inputs_in_order_skipping_the_replies_between_them(runtime, backend):
    ref = (await runtime.create_worker(ECHO)).worker_ref
    for text in ("a", "b", "c"):
        await runtime.send_input(ref, user(text))

    assert [await run_turn(runtime, ref) for _ in range(4)] == [1, 2, 3, None]

    assert [(e.role.value, e.content) for e in runtime.transcript(ref).items] == [
        ("user", "a"),
        ("user", "b"),
        ("user", "c"),
        ("assistant", "echo: a"),
        ("assistant", "echo: b"),
        ("assistant", "echo: c"),
    ]
    execution = execution_of(runtime, ref)
    assert (execution.turns, execution.turns_started, execution.queued_inputs) == (3, 3, 0)
    await runtime.send_input(ref, user("d"))
    started = await runtime.begin_turn(ref)
    assert started is not None and (started.turn, started.entry.content, started.entry.sequence) == (4, "d", 7)


async def test_only_the_open_turn_can_end(runtime, backend):
    ref = (await runtime.create_worker(ECHO)).worker_ref
    with pytest.raises(ValueError, match="not open"):
        await runtime.end_turn(ref, 1, StopReason.END_TURN, "x")


async def test_a_turn_still_ends_after_a_stop_and_the_stopped_worker_delivers_nothing_more(runtime, backend):
    ref = (await runtime.create_worker(ECHO)).worker_ref
    await runtime.send_input(ref, user("a"))
    await runtime.send_input(ref, user("b"))
    started = await runtime.begin_turn(ref)
    assert started is not None
    await runtime.stop_worker(ref, "enough")
    await runtime.stop()  # and even on a stopped runtime

    await runtime.end_turn(ref, started.turn, StopReason.CANCELLED, "echo: a (partial)")

    kinds = [e.kind for e in runtime.events().events[-3:]]
    assert kinds == [EventKind.WORKER_STOPPED, EventKind.RUNTIME_STOPPED, EventKind.WORKER_TURN_ENDED]
    execution = execution_of(runtime, ref)
    assert (execution.turns, execution.open_turn, execution.state) == (1, None, ExecutionState.BUSY)
    assert runtime.worker_detail(ref).status is WorkerStatus.STOPPED
    assert await runtime.begin_turn(ref) is None  # "b" is never delivered


async def test_the_runtimes_turn_events_are_reserved(runtime, backend):
    ref = (await runtime.create_worker(ECHO)).worker_ref
    for event in ("turn_started", "assistant_message", "turn_ended"):
        with pytest.raises(ValueError, match="published by the Runtime"):
            await runtime.observe(ref, event, {"turn": 1})
    await runtime.observe(ref, "text_delta", {"turn": 1, "text": "ok"})


async def test_a_failed_begin_turn_delivers_nothing_and_publishes_nothing():
    store = FailingStore()
    runtime, _ = await executing(store)
    ref = (await runtime.create_worker(ECHO)).worker_ref
    await runtime.send_input(ref, user("a"))
    before = state_of(runtime)
    store.failing = True

    with pytest.raises(StoreIo):
        await runtime.begin_turn(ref)

    assert state_of(runtime) == before
    assert execution_of(runtime, ref).delivered_sequence == 0
    store.failing = False
    started = await runtime.begin_turn(ref)
    assert started is not None and started.turn == 1


# ------------------------------------------------------------ update, diagnose


async def test_update_execution_records_the_processes_facts_durably_without_an_event(runtime, backend):
    ref = (await runtime.create_worker(ECHO)).worker_ref
    events = runtime.events().next_cursor

    execution = await runtime.update_execution(
        ref, state=ExecutionState.IDLE, pid=4242, agent=AgentInfo("echo", "1.0"), session_id="s-1"
    )

    assert execution == execution_of(runtime, ref)
    assert (execution.state, execution.pid, execution.agent, execution.session_id) == (
        ExecutionState.IDLE,
        4242,
        AgentInfo("echo", "1.0"),
        "s-1",
    )
    execution = await runtime.update_execution(ref, pid=None, exit=ProcessExit(signal="SIGKILL"))
    assert (execution.pid, execution.session_id, execution.exit) == (None, "s-1", ProcessExit(signal="SIGKILL"))
    assert runtime.events().next_cursor == events


async def test_update_execution_leaves_busy_to_begin_turn_and_idle_to_the_turns_end(runtime, backend):
    ref = (await runtime.create_worker(ECHO)).worker_ref
    with pytest.raises(ValueError, match="begin_turn"):
        await runtime.update_execution(ref, state=ExecutionState.BUSY)
    await runtime.send_input(ref, user("a"))
    await runtime.begin_turn(ref)
    with pytest.raises(ValueError, match="turn 1 open"):
        await runtime.update_execution(ref, state=ExecutionState.IDLE)
    # An agent that went away during the turn: restarting, and the turn ends interrupted.
    await runtime.update_execution(ref, state=ExecutionState.RESTARTING, pid=None)
    await runtime.end_turn(ref, 1, StopReason.INTERRUPTED)
    assert execution_of(runtime, ref).state is ExecutionState.RESTARTING


async def test_the_backend_calls_refuse_a_record_only_worker(runtime, backend):
    ref = (await runtime.create_worker(CODER)).worker_ref
    with pytest.raises(ValueError, match="record-only"):
        await runtime.update_execution(ref, pid=1)
    with pytest.raises(ValueError, match="record-only"):
        await runtime.begin_turn(ref)


async def test_diagnose_records_a_diagnostic_naming_the_worker(runtime, backend):
    ref = (await runtime.create_worker(ECHO)).worker_ref

    diagnostic = await runtime.diagnose(ref, Severity.WARNING, "worker.agent_exited", "agent exited with status 3")

    assert runtime.diagnostics()[-1] == diagnostic
    assert (diagnostic.code, diagnostic.worker_ref) == ("worker.agent_exited", ref)
    await runtime.diagnose(None, Severity.INFO, "runtime.note", "no worker")
    with pytest.raises(WorkerNotFound):
        await runtime.diagnose(WorkerRef(runtime.runtime_id, "worker-0000ffff"), Severity.INFO, "x", "y")


# ---------------------------------------------------------------- stopping


async def test_stop_and_cancel_tell_the_backend_once_durable_without_waiting(runtime, backend):
    stopped = (await runtime.create_worker(ECHO)).worker_ref
    cancelled = (await runtime.create_worker(ECHO)).worker_ref

    await runtime.stop_worker(stopped)
    await runtime.cancel_worker(cancelled)
    await runtime.stop_worker(stopped)  # no longer running: nothing to tell

    assert backend.named("stop") == [(stopped.worker_id, False), (cancelled.worker_id, True)]
    assert backend.saw_durable[-2:] == [True, True]


async def test_runtime_stop_stops_every_running_agent(runtime, backend):
    first = (await runtime.create_worker(ECHO)).worker_ref
    done = (await runtime.create_worker(ECHO)).worker_ref
    await runtime.create_worker(CODER)
    await runtime.cancel_worker(done)

    await runtime.stop()

    assert backend.named("stop") == [(done.worker_id, True), (first.worker_id, False)]


async def test_a_failing_backend_is_logged_and_never_fails_a_durable_change(runtime, backend, caplog):
    def explode(*args, **kwargs):
        raise RuntimeError("supervisor bug")

    backend.start = explode  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="runtimed.runtime"):
        detail = await runtime.create_worker(ECHO)

    assert runtime.worker_detail(detail.worker_ref).status is WorkerStatus.RUNNING
    assert any("supervisor bug" in str(record.exc_info) for record in caplog.records)


# --------------------------------------------------------------- interrupt


async def test_interrupt_checks_runtime_stopped_then_worker_then_execution(runtime, backend):
    record_only = (await runtime.create_worker(CODER)).worker_ref
    with pytest.raises(WorkerNotExecuting) as caught:
        await runtime.interrupt(record_only)
    assert caught.value.code == "worker_not_executing"
    assert caught.value.message == f"worker {record_only.worker_id} runs no agent; it records input only"
    missing = WorkerRef(runtime.runtime_id, "worker-0000ffff")
    with pytest.raises(WorkerNotFound):
        await runtime.interrupt(missing)
    await runtime.stop()
    with pytest.raises(RuntimeStopped):
        await runtime.interrupt(missing)


async def test_interrupt_with_no_turn_and_nothing_queued_changes_nothing(runtime, backend):
    ref = (await runtime.create_worker(ECHO)).worker_ref
    before = state_of(runtime)

    ack = await runtime.interrupt(ref, drop_queued=True)

    assert (ack.worker_ref, ack.status, ack.turn, ack.dropped_inputs) == (ref, WorkerStatus.RUNNING, None, 0)
    assert state_of(runtime) == before
    assert backend.named("interrupt") == [(ref.worker_id,)]


async def test_interrupt_ends_the_running_turn_and_appends_worker_interrupted_after_it(runtime, backend):
    ref = (await runtime.create_worker(ECHO)).worker_ref
    await runtime.send_input(ref, user("a"))
    await runtime.send_input(ref, user("b"))
    await runtime.begin_turn(ref)
    backend.interrupted_text = "echo: a, half"

    ack = await runtime.interrupt(ref)

    assert (ack.status, ack.turn, ack.dropped_inputs) == (WorkerStatus.RUNNING, 1, 0)
    events = runtime.events().events[-2:]
    assert [(e.kind, e.message) for e in events] == [
        (EventKind.WORKER_TURN_ENDED, "turn 1 ended: cancelled"),
        (EventKind.WORKER_INTERRUPTED, "worker interrupted"),
    ]
    assert runtime.worker_detail(ref).last_event_id == events[-1].id
    assert runtime.transcript(ref).items[-1].content == "echo: a, half"
    execution = execution_of(runtime, ref)
    assert (execution.queued_inputs, execution.open_turn) == (1, None)  # "b" is still to come
    started = await runtime.begin_turn(ref)
    assert started is not None and started.entry.content == "b"


async def test_interrupt_dropping_queued_inputs_drops_them_before_the_turn_ends(runtime, backend):
    ref = (await runtime.create_worker(ECHO)).worker_ref
    for text in ("a", "b", "c"):
        await runtime.send_input(ref, user(text))
    await runtime.begin_turn(ref)
    seen: list[int] = []
    interrupt = backend.interrupt

    async def look_then_interrupt(ref: WorkerRef) -> int | None:
        seen.append(execution_of(runtime, ref).queued_inputs)  # what the agent finds once its turn ends
        return await interrupt(ref)

    backend.interrupt = look_then_interrupt  # type: ignore[method-assign]

    ack = await runtime.interrupt(ref, drop_queued=True)

    assert (ack.turn, ack.dropped_inputs) == (1, 2)
    assert seen == [0]
    kinds = [e.kind for e in runtime.events().events[-2:]]
    assert kinds == [EventKind.WORKER_INTERRUPTED, EventKind.WORKER_TURN_ENDED]  # one interrupted event only
    execution = execution_of(runtime, ref)
    assert (execution.queued_inputs, execution.delivered_sequence) == (0, 3)
    assert [e.content for e in runtime.transcript(ref).items] == ["a", "b", "c"]  # dropped, not removed
    assert await runtime.begin_turn(ref) is None
    await runtime.send_input(ref, user("d"))
    started = await runtime.begin_turn(ref)
    assert started is not None and started.entry.content == "d"


async def test_interrupt_dropping_queued_inputs_with_no_turn_running(runtime, backend):
    ref = (await runtime.create_worker(ECHO)).worker_ref
    await runtime.send_input(ref, user("a"))

    ack = await runtime.interrupt(ref, drop_queued=True)

    assert (ack.turn, ack.dropped_inputs) == (None, 1)
    assert runtime.events().events[-1].kind is EventKind.WORKER_INTERRUPTED


async def test_interrupt_of_a_worker_no_longer_running_changes_nothing(runtime, backend):
    ref = (await runtime.create_worker(ECHO)).worker_ref
    await runtime.send_input(ref, user("a"))
    await runtime.cancel_worker(ref)
    before = state_of(runtime)

    ack = await runtime.interrupt(ref, drop_queued=True)

    assert (ack.status, ack.turn, ack.dropped_inputs) == (WorkerStatus.CANCELLED, None, 0)
    assert state_of(runtime) == before
    assert backend.named("interrupt") == []


# ------------------------------------------------------------- permissions


async def test_permissions_and_answers_are_the_backends(runtime, backend):
    ref = (await runtime.create_worker(ECHO)).worker_ref
    request = backend.ask(ref, "perm-1")

    assert runtime.permissions(ref) == [request]
    answer = await runtime.answer_permission(ref, "perm-1", "allow")
    assert answer == PermissionAnswer("perm-1", "allow", "backend")
    assert runtime.permissions(ref) == []
    with pytest.raises(PermissionNotFound) as caught:
        await runtime.answer_permission(ref, "perm-1", "allow")
    assert caught.value.code == "permission_not_found"


async def test_permission_checks_come_in_the_contracts_order(runtime, backend):
    ref = (await runtime.create_worker(ECHO)).worker_ref
    backend.ask(ref, "perm-1")
    record_only = (await runtime.create_worker(CODER)).worker_ref
    with pytest.raises(InvalidRequest, match="not offered"):
        await runtime.answer_permission(ref, "perm-1", "maybe")
    with pytest.raises(PermissionNotFound):
        await runtime.answer_permission(ref, "perm-2", "maybe")
    with pytest.raises(WorkerNotExecuting):
        await runtime.answer_permission(record_only, "perm-1", "allow")
    with pytest.raises(WorkerNotExecuting):
        runtime.permissions(record_only)
    with pytest.raises(WorkerNotFound):
        runtime.permissions(WorkerRef(runtime.runtime_id, "worker-0000ffff"))
    await runtime.stop()
    with pytest.raises(RuntimeStopped):
        await runtime.answer_permission(ref, "perm-1", "allow")
    assert runtime.permissions(ref) != []  # a read keeps working


# ------------------------------------------------------ reads for the backend


async def test_profiles_are_the_backends_with_the_default_marked():
    runtime = await Runtime.open(MemoryStore())
    runtime.attach(FakeBackend(runtime, default_profile="builtin:echo"))

    profiles = runtime.profiles()

    assert [(p.name, p.source, p.default) for p in profiles] == [
        ("builtin:echo", ProfileSource.BUILTIN, True),
        ("careful", ProfileSource.CONFIG, False),
    ]
    assert profiles[1].command == ("careful-agent", "--acp")


async def test_executing_workers_are_the_running_agent_backed_ones(runtime, backend):
    running = (await runtime.create_worker(ECHO)).worker_ref
    stopped = (await runtime.create_worker(ECHO)).worker_ref
    await runtime.create_worker(CODER)
    await runtime.stop_worker(stopped)

    assert [w.worker_ref for w in runtime.executing_workers()] == [running]
    assert runtime.executing_workers()[0].execution == execution_of(runtime, running)


async def test_attaching_twice_is_refused(runtime, backend):
    with pytest.raises(RuntimeError, match="attached already"):
        runtime.attach(FakeBackend(runtime))


async def test_readiness_waits_for_the_backends_restore(runtime, backend):
    backend.ready = False
    assert await runtime.readiness() == "agents of running workers are still being restored"
    backend.ready = True
    assert await runtime.readiness() is None


async def test_close_closes_the_backend_before_the_store():
    order: list[str] = []

    class Store(MemoryStore):
        async def close(self) -> None:
            order.append("store")

    runtime, backend = await executing(Store())
    close = backend.close

    async def close_backend() -> None:
        order.append("backend")
        await close()

    backend.close = close_backend  # type: ignore[method-assign]
    await runtime.close()

    assert order == ["backend", "store"]


async def test_stats_count_agents_by_state_pending_permissions_turns_and_restarts(runtime, backend):
    busy = (await runtime.create_worker(ECHO)).worker_ref
    idle = (await runtime.create_worker(ECHO)).worker_ref
    stopped = (await runtime.create_worker(ECHO)).worker_ref
    await runtime.create_worker(CODER)
    await runtime.update_execution(idle, state=ExecutionState.IDLE, pending_permissions=2)
    await runtime.send_input(busy, user("a"))
    await runtime.send_input(busy, user("b"))
    await run_turn(runtime, busy)
    await run_turn(runtime, busy, reason=StopReason.REFUSAL)
    await runtime.send_input(busy, user("c"))
    await runtime.begin_turn(busy)
    await runtime.update_execution(stopped, state=ExecutionState.RESTARTING)
    await runtime.update_execution(stopped, state=ExecutionState.RESTARTING, pid=7)  # still the same restart
    await runtime.stop_worker(stopped)

    stats = runtime.stats()

    assert {state: n for state, n in stats.agents_by_state.items() if n} == {
        ExecutionState.BUSY: 1,
        ExecutionState.IDLE: 1,
    }
    assert stats.pending_permissions == 2
    assert {reason: n for reason, n in stats.turns_by_stop_reason.items() if n} == {
        StopReason.END_TURN: 1,
        StopReason.REFUSAL: 1,
    }
    assert stats.turn_seconds.count == 2
    assert stats.agent_restarts == 1
