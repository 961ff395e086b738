"""The Runtime's semantics (contract §1–§3, §6), without HTTP."""

from __future__ import annotations

import asyncio
import re

import pytest

from runtimed.domain.catalog import (
    AssistantIntent,
    BuiltinProfile,
    CapabilityRequest,
    ConfigBundleRef,
    CreateWorkerRequest,
    RuntimeDefaultProfile,
    TaskIntent,
    WorkerStatus,
)
from runtimed.domain.errors import (
    InvalidRequest,
    InvalidWorkerId,
    LimitTooLarge,
    RuntimeStopped,
    StoreIo,
    WorkerNotFound,
    WrongRuntime,
)
from runtimed.domain.identity import WorkerRef
from runtimed.domain.interaction import InputKind, WorkerInput
from runtimed.domain.management import RuntimeLimits, RuntimeOptions, RuntimeStatus
from runtimed.domain.observation import EventKind, Observation, Severity, TranscriptRole
from runtimed.runtime import Runtime, Subscription
from runtimed.store import Change, MemoryStore

from .helpers import FailingStore

TASK = CreateWorkerRequest(
    intent=TaskIntent("ship it"),
    profile=BuiltinProfile("builtin:coder"),
    requested_capabilities=(CapabilityRequest("read"),),
)


def user(content: str) -> WorkerInput:
    return WorkerInput(InputKind.USER, content)


async def test_generated_runtime_id_is_mem_prefix_and_sixteen_hex(runtime):
    assert re.fullmatch(r"runtime-mem-[0-9a-f]{16}", runtime.runtime_id)


async def test_each_memory_runtime_gets_a_new_id():
    first = await Runtime.open(MemoryStore())
    second = await Runtime.open(MemoryStore())
    assert first.runtime_id != second.runtime_id


async def test_configured_runtime_id_and_display_name_are_used():
    runtime = await Runtime.open(MemoryStore(), RuntimeOptions(runtime_id="runtime-a", display_name="dev"))
    summary = runtime.summary()
    assert (summary.runtime_id, summary.display_name, summary.backend) == ("runtime-a", "dev", "memory")


async def test_first_event_is_runtime_started(runtime):
    batch = runtime.events()
    assert [(e.id, e.kind, e.message, e.worker_ref) for e in batch.events] == [
        (1, EventKind.RUNTIME_STARTED, "runtime started", None)
    ]


async def test_worker_ids_count_up_in_eight_hex_digits(runtime):
    ids = [(await runtime.create_worker(TASK)).worker_id for _ in range(17)]
    assert ids[0] == "worker-00000001"
    assert ids[15] == "worker-00000010"
    assert ids[16] == "worker-00000011"


async def test_create_returns_running_detail_with_ref_of_this_runtime(runtime):
    detail = await runtime.create_worker(TASK)
    assert detail.status is WorkerStatus.RUNNING
    assert detail.worker_ref == WorkerRef(runtime.runtime_id, "worker-00000001")
    assert (detail.transcript_len, detail.last_event_id) == (0, 2)
    assert runtime.events(2).events[0].message == "worker worker-00000001 created"


async def test_worker_without_bundle_or_capabilities_gets_both_info_diagnostics(runtime):
    detail = await runtime.create_worker(CreateWorkerRequest(intent=AssistantIntent(), profile=RuntimeDefaultProfile()))
    diagnostics = runtime.diagnostics()
    assert [(d.id, d.severity, d.code, d.worker_ref) for d in diagnostics] == [
        (1, Severity.INFO, "runtime.local_default_resources", detail.worker_ref),
        (2, Severity.INFO, "worker.tools_less", detail.worker_ref),
    ]
    assert diagnostics[0].message == "worker created without ConfigBundleRef; runtime-local defaults are assumed"
    assert diagnostics[1].message == "worker created without requested tool capabilities"


async def test_worker_with_bundle_and_capabilities_gets_no_diagnostics(runtime):
    await runtime.create_worker(
        CreateWorkerRequest(
            intent=TaskIntent("x"),
            profile=RuntimeDefaultProfile(),
            config_bundle=ConfigBundleRef("bundle-1"),
            requested_capabilities=(CapabilityRequest("read"),),
        )
    )
    assert runtime.diagnostics() == []
    assert runtime.summary().diagnostic_count == 0


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (CreateWorkerRequest(TaskIntent("   "), RuntimeDefaultProfile()), "task objective must not be empty"),
        (
            CreateWorkerRequest(
                TaskIntent("x"), RuntimeDefaultProfile(), requested_capabilities=(CapabilityRequest(" \t"),)
            ),
            "capability name must not be empty",
        ),
    ],
)
async def test_blank_create_values_are_invalid_requests_that_change_nothing(runtime, request_, message):
    with pytest.raises(InvalidRequest) as caught:
        await runtime.create_worker(request_)
    assert caught.value.message == f"invalid request: {message}"
    assert runtime.summary().worker_count == 0
    assert len(runtime.events().events) == 1


async def test_input_appends_entries_with_sequences_from_one_per_worker(runtime):
    first = await runtime.create_worker(TASK)
    second = await runtime.create_worker(TASK)
    a1 = await runtime.send_input(first.worker_ref, user("a1"))
    b1 = await runtime.send_input(second.worker_ref, WorkerInput(InputKind.SYSTEM, "b1"))
    a2 = await runtime.send_input(first.worker_ref, user("a2"))
    assert (a1.transcript_sequence, b1.transcript_sequence, a2.transcript_sequence) == (1, 1, 2)
    assert (a1.event_id, b1.event_id, a2.event_id) == (4, 5, 6)
    entries = runtime.transcript(first.worker_ref).items
    assert [(e.sequence, e.role, e.content, e.event_id) for e in entries] == [
        (1, TranscriptRole.USER, "a1", 4),
        (2, TranscriptRole.USER, "a2", 6),
    ]
    assert runtime.transcript(second.worker_ref).items[0].role is TranscriptRole.SYSTEM
    detail = runtime.worker_detail(first.worker_ref)
    assert (detail.transcript_len, detail.last_event_id) == (2, 6)


async def test_blank_input_is_refused_and_changes_nothing(runtime):
    worker = await runtime.create_worker(TASK)
    with pytest.raises(InvalidRequest, match="worker input content must not be empty"):
        await runtime.send_input(worker.worker_ref, user(" \n "))
    assert runtime.worker_detail(worker.worker_ref).transcript_len == 0


async def test_input_to_a_stopped_worker_is_refused(runtime):
    worker = await runtime.create_worker(TASK)
    await runtime.stop_worker(worker.worker_ref)
    with pytest.raises(InvalidRequest) as caught:
        await runtime.send_input(worker.worker_ref, user("hello"))
    assert caught.value.message == "invalid request: worker worker-00000001 is not running"


async def test_stop_then_cancel_keeps_worker_stopped(runtime):
    worker = await runtime.create_worker(TASK)
    stop = await runtime.stop_worker(worker.worker_ref)
    cancel = await runtime.cancel_worker(worker.worker_ref, "too late")
    assert (stop.status, stop.event_id) == (WorkerStatus.STOPPED, 3)
    assert (cancel.status, cancel.event_id) == (WorkerStatus.STOPPED, 3)
    assert len(runtime.events().events) == 3


async def test_cancel_then_stop_keeps_worker_cancelled(runtime):
    worker = await runtime.create_worker(TASK)
    await runtime.cancel_worker(worker.worker_ref)
    ack = await runtime.stop_worker(worker.worker_ref)
    assert ack.status is WorkerStatus.CANCELLED


async def test_stop_and_cancel_events_carry_the_reason_or_the_default(runtime):
    a = await runtime.create_worker(TASK)
    b = await runtime.create_worker(TASK)
    c = await runtime.create_worker(TASK)
    await runtime.stop_worker(a.worker_ref, "done for today")
    await runtime.cancel_worker(b.worker_ref)
    await runtime.stop_worker(c.worker_ref, "   ")
    messages = [(e.kind, e.message) for e in runtime.events(5).events]
    assert messages == [
        (EventKind.WORKER_STOPPED, "done for today"),
        (EventKind.WORKER_CANCELLED, "worker cancelled"),
        (EventKind.WORKER_STOPPED, "worker stopped"),
    ]


async def test_unknown_worker_is_not_found_naming_worker_and_runtime(runtime):
    with pytest.raises(WorkerNotFound) as caught:
        runtime.worker_detail(runtime.worker_ref("worker-0000ffff"))
    assert caught.value.message == f"worker worker-0000ffff was not found in runtime {runtime.runtime_id}"


async def test_ref_of_another_runtime_is_wrong_runtime(runtime):
    await runtime.create_worker(TASK)
    with pytest.raises(WrongRuntime):
        runtime.worker_detail(WorkerRef("runtime-other", "worker-00000001"))
    with pytest.raises(WrongRuntime):
        await runtime.send_input(WorkerRef("runtime-other", "worker-00000001"), user("x"))


@pytest.mark.parametrize("blank", ["", " ", "\t\n"])
async def test_blank_worker_id_is_invalid(runtime, blank):
    with pytest.raises(InvalidWorkerId):
        runtime.worker_ref(blank)


async def test_summary_counts_workers_by_status(runtime):
    workers = [await runtime.create_worker(TASK) for _ in range(4)]
    await runtime.stop_worker(workers[0].worker_ref)
    await runtime.cancel_worker(workers[1].worker_ref)
    await runtime.cancel_worker(workers[2].worker_ref)
    summary = runtime.summary()
    assert (
        summary.worker_count,
        summary.active_worker_count,
        summary.stopped_worker_count,
        summary.cancelled_worker_count,
    ) == (4, 1, 1, 2)


async def test_list_is_in_creation_order(runtime):
    for _ in range(3):
        await runtime.create_worker(TASK)
    assert [w.worker_id for w in runtime.list_workers()] == ["worker-00000001", "worker-00000002", "worker-00000003"]


# ----------------------------------------------------------- transcript paging


@pytest.fixture
async def small_limits_runtime():
    return await Runtime.open(MemoryStore(), RuntimeOptions(limits=RuntimeLimits(max_transcript_projection_items=4)))


async def _worker_with_entries(runtime: Runtime, count: int) -> WorkerRef:
    worker = await runtime.create_worker(TASK)
    for i in range(count):
        await runtime.send_input(worker.worker_ref, user(f"m{i + 1}"))
    return worker.worker_ref


async def test_transcript_pages_through_with_next_start(small_limits_runtime):
    ref = await _worker_with_entries(small_limits_runtime, 6)
    page = small_limits_runtime.transcript(ref, 0, 4)
    assert ([e.sequence for e in page.items], page.total_items, page.next_start) == ([1, 2, 3, 4], 6, 4)
    page = small_limits_runtime.transcript(ref, page.next_start, 4)
    assert ([e.sequence for e in page.items], page.next_start) == ([5, 6], None)


async def test_transcript_start_past_the_end_is_empty(small_limits_runtime):
    ref = await _worker_with_entries(small_limits_runtime, 2)
    page = small_limits_runtime.transcript(ref, 10, 4)
    assert (page.items, page.start, page.total_items, page.next_start) == ([], 10, 2, None)


async def test_transcript_limit_zero_returns_no_items(small_limits_runtime):
    ref = await _worker_with_entries(small_limits_runtime, 2)
    page = small_limits_runtime.transcript(ref, 0, 0)
    assert (page.items, page.limit, page.next_start) == ([], 0, 0)


async def test_transcript_limit_equal_to_max_is_allowed(small_limits_runtime):
    ref = await _worker_with_entries(small_limits_runtime, 5)
    assert len(small_limits_runtime.transcript(ref, 0, 4).items) == 4


async def test_transcript_limit_above_max_is_limit_too_large(small_limits_runtime):
    ref = await _worker_with_entries(small_limits_runtime, 1)
    with pytest.raises(LimitTooLarge) as caught:
        small_limits_runtime.transcript(ref, 0, 5)
    assert caught.value.message == "limit 5 exceeds maximum 4"


async def test_transcript_default_limit_is_the_smaller_of_256_and_max(small_limits_runtime, runtime):
    ref = await _worker_with_entries(small_limits_runtime, 1)
    assert small_limits_runtime.transcript(ref).limit == 4
    other = await _worker_with_entries(runtime, 1)
    assert runtime.transcript(other).limit == 256


# ------------------------------------------------------------------ event log


async def test_events_poll_with_cursor_and_limit(runtime):
    for _ in range(3):
        await runtime.create_worker(TASK)
    batch = runtime.events(cursor=2, limit=2)
    assert ([e.id for e in batch.events], batch.next_cursor, batch.has_more) == ([2, 3], 4, True)
    batch = runtime.events(cursor=batch.next_cursor, limit=2)
    assert ([e.id for e in batch.events], batch.next_cursor, batch.has_more) == ([4], 5, False)
    batch = runtime.events(cursor=5)
    assert (batch.events, batch.next_cursor, batch.has_more) == ([], 5, False)


async def test_events_cursor_zero_means_one_and_limit_zero_returns_nothing(runtime):
    await runtime.create_worker(TASK)
    assert runtime.events(cursor=0).events[0].id == 1
    batch = runtime.events(cursor=0, limit=0)
    assert (batch.events, batch.next_cursor, batch.has_more) == ([], 1, True)


async def test_events_limit_above_max_is_limit_too_large(runtime):
    with pytest.raises(LimitTooLarge, match="limit 257 exceeds maximum 256"):
        runtime.events(limit=257)


# --------------------------------------------------------------- runtime stop


async def test_runtime_stop_stops_running_workers_and_refuses_mutations(runtime):
    running = await runtime.create_worker(TASK)
    cancelled = await runtime.create_worker(TASK)
    await runtime.cancel_worker(cancelled.worker_ref)
    summary = await runtime.stop()
    assert summary.status is RuntimeStatus.STOPPED
    stop_event = runtime.events(5).events[0]
    assert (stop_event.kind, stop_event.message) == (EventKind.RUNTIME_STOPPED, f"runtime {runtime.runtime_id} stopped")
    assert runtime.worker_detail(running.worker_ref).status is WorkerStatus.STOPPED
    assert runtime.worker_detail(running.worker_ref).last_event_id == stop_event.id
    assert runtime.worker_detail(cancelled.worker_ref).status is WorkerStatus.CANCELLED
    for mutation in (
        runtime.create_worker(TASK),
        runtime.send_input(running.worker_ref, user("x")),
        runtime.stop_worker(running.worker_ref),
        runtime.cancel_worker(running.worker_ref),
    ):
        with pytest.raises(RuntimeStopped, match=f"runtime {runtime.runtime_id} is stopped"):
            await mutation
    assert runtime.summary().worker_count == 2  # reads keep working


async def test_runtime_stopped_wins_over_worker_not_found(runtime):
    await runtime.stop()
    with pytest.raises(RuntimeStopped):
        await runtime.send_input(runtime.worker_ref("worker-0000ffff"), user("x"))


async def test_second_runtime_stop_changes_nothing(runtime):
    await runtime.stop()
    events = len(runtime.events().events)
    await runtime.stop()
    assert len(runtime.events().events) == events


async def test_runtime_start_reopens_a_stopped_runtime_leaving_workers_as_they_are(runtime):
    worker = await runtime.create_worker(TASK)
    await runtime.stop()
    summary = await runtime.start()
    assert summary.status is RuntimeStatus.RUNNING
    assert runtime.events().events[-1].kind is EventKind.RUNTIME_STARTED
    assert runtime.worker_detail(worker.worker_ref).status is WorkerStatus.STOPPED
    await runtime.create_worker(TASK)  # mutations work again
    events = len(runtime.events().events)
    await runtime.start()  # on a running runtime: nothing
    assert len(runtime.events().events) == events


# ------------------------------------------------------------ failing stores


async def test_failed_commit_leaves_memory_as_it_was_and_the_next_call_works():
    store = FailingStore()
    runtime = await Runtime.open(store)
    worker = await runtime.create_worker(TASK)
    await runtime.send_input(worker.worker_ref, user("kept"))
    before = (runtime.summary(), runtime.list_workers(), runtime.events(), runtime.diagnostics())

    store.failing = True
    with pytest.raises(StoreIo):
        await runtime.create_worker(TASK)
    with pytest.raises(StoreIo):
        await runtime.send_input(worker.worker_ref, user("lost"))
    with pytest.raises(StoreIo):
        await runtime.stop_worker(worker.worker_ref)
    with pytest.raises(StoreIo):
        await runtime.stop()
    assert (runtime.summary(), runtime.list_workers(), runtime.events(), runtime.diagnostics()) == before
    assert [e.content for e in runtime.transcript(worker.worker_ref).items] == ["kept"]

    store.failing = False
    second = await runtime.create_worker(TASK)
    assert second.worker_id == "worker-00000002"
    ack = await runtime.send_input(worker.worker_ref, user("after"))
    assert (ack.transcript_sequence, ack.event_id) == (2, 5)


async def everything_received(subscription: Subscription) -> list[Observation]:
    """What a subscription was given, in order: close it, then read until it says it is done."""
    subscription.close()
    received = []
    while (observation := await subscription.get()) is not None:
        received.append(observation)
    return received


async def test_a_failed_commit_publishes_nothing_and_leaves_no_gap_in_sequences():
    store = FailingStore()
    runtime = await Runtime.open(store)
    worker = await runtime.create_worker(TASK)
    with runtime.subscribe(worker.worker_ref) as subscription:
        store.failing = True
        with pytest.raises(StoreIo):
            await runtime.send_input(worker.worker_ref, user("lost"))
        with pytest.raises(StoreIo):
            await runtime.observe(worker.worker_ref, "text_delta", {"text": "lost"})
        store.failing = False
        await runtime.send_input(worker.worker_ref, user("kept"))
        assert [(o.sequence, o.event, o.data) for o in await everything_received(subscription)] == [
            (1, "user_message", {"sequence": 1, "content": "kept"})
        ]


@pytest.mark.parametrize("event", ["", "TextDelta", "text-delta", "snapshot", "user_message", "worker_status"])
async def test_observe_refuses_bad_or_reserved_event_names(runtime, event):
    worker = await runtime.create_worker(TASK)
    with pytest.raises(ValueError):
        await runtime.observe(worker.worker_ref, event)
    assert runtime.observation_sequence == 0


class GatedStore(MemoryStore):
    """A store whose commits stay pending until the test settles them, like a slow disk."""

    def __init__(self) -> None:
        super().__init__()
        self.gated = False
        self.pending: list[asyncio.Future[None]] = []
        self.resumed = 0

    def commit(self, change: Change) -> asyncio.Future[None] | None:
        if not self.gated:
            return None
        future = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        return future

    def resume(self) -> None:
        self.resumed += 1

    def fail_all(self) -> None:
        for future in self.pending:
            if not future.done():
                future.set_exception(StoreIo("write", "/disk", "I/O error"))
        self.pending.clear()

    def succeed_all(self) -> None:
        for future in self.pending:
            if not future.done():
                future.set_result(None)
        self.pending.clear()


async def test_reads_show_only_what_the_store_has_made_durable():
    store = GatedStore()
    runtime = await Runtime.open(store)
    worker = await runtime.create_worker(TASK)
    store.gated = True
    created = asyncio.create_task(runtime.create_worker(TASK))
    sent = asyncio.create_task(runtime.send_input(worker.worker_ref, user("pending")))
    await asyncio.sleep(0)
    # Both changes are in memory (and could share a flush) but not durable: reads do not see them.
    assert [w.worker_id for w in runtime.list_workers()] == ["worker-00000001"]
    assert runtime.summary().worker_count == 1
    assert [e.id for e in runtime.events().events] == [1, 2]
    assert runtime.transcript(worker.worker_ref).total_items == 0
    assert runtime.observation_snapshot(worker.worker_ref).entries == []
    with pytest.raises(WorkerNotFound):
        runtime.worker_detail(runtime.worker_ref("worker-00000002"))
    store.succeed_all()
    await asyncio.gather(created, sent)
    assert [w.worker_id for w in runtime.list_workers()] == ["worker-00000001", "worker-00000002"]
    assert [e.id for e in runtime.events().events] == [1, 2, 3, 4]
    assert [e.content for e in runtime.transcript(worker.worker_ref).items] == ["pending"]


async def test_a_poller_never_keeps_an_event_id_that_a_failure_gives_to_another_event():
    store = GatedStore()
    runtime = await Runtime.open(store)
    store.gated = True
    failing = asyncio.create_task(runtime.create_worker(TASK))
    await asyncio.sleep(0)
    batch = runtime.events()
    assert batch.next_cursor == 2  # event 2 is not durable, so not handed out
    store.fail_all()
    with pytest.raises(StoreIo):
        await failing
    store.gated = False
    await runtime.stop()
    assert [(e.id, e.kind) for e in runtime.events(batch.next_cursor).events] == [(2, EventKind.RUNTIME_STOPPED)]


async def test_a_rollback_never_undoes_a_change_made_after_the_store_resumed():
    store = GatedStore()
    runtime = await Runtime.open(store)
    store.gated = True
    first = asyncio.create_task(runtime.create_worker(TASK))
    second = asyncio.create_task(runtime.create_worker(TASK))
    await asyncio.sleep(0)
    first_write, second_write = store.pending
    first.cancel()  # its caller went away; the outcome is still settled when the store answers
    await asyncio.sleep(0)
    first_write.set_exception(StoreIo("write", "/disk", "I/O error"))
    await asyncio.sleep(0)  # the orphaned change settles: it and the one built on it are undone
    assert store.resumed == 1
    # Built after the resume, on the undone state, and still being written when the second
    # caller hears of its own failure: that must not undo it.
    third = asyncio.create_task(runtime.create_worker(TASK))
    await asyncio.sleep(0)
    second_write.set_exception(StoreIo("write", "/disk", "I/O error"))
    with pytest.raises(StoreIo):
        await second
    store.succeed_all()
    detail = await third
    assert detail.worker_id == "worker-00000001"
    assert [w.worker_id for w in runtime.list_workers()] == ["worker-00000001"]
    assert runtime.worker_detail(detail.worker_ref).status is WorkerStatus.RUNNING


@pytest.mark.parametrize("data", [{"line": b"bytes"}, {"value": float("nan")}, {"when": object()}])
async def test_observe_refuses_data_that_is_not_json(runtime, data):
    worker = await runtime.create_worker(TASK)
    with pytest.raises(ValueError, match="observation data must be JSON"):
        await runtime.observe(worker.worker_ref, "log", data)
    assert runtime.observation_sequence == 0
    await runtime.observe(worker.worker_ref, "log", {"stream": "stdout", "line": "fine"})  # the runtime goes on
