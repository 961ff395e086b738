"""Idempotency keys (contract §11): the first 2xx answer is kept with its change, replayed to a
retry, refused for another request, waited for by a concurrent duplicate, and forgotten after
its time; through the real app and the real Runtime."""

from __future__ import annotations

import asyncio
import io
import json
import time
from typing import Any

import pytest

from runtimed.domain.errors import IdempotencyKeyReused
from runtimed.domain.idempotency import KeptAnswer
from runtimed.domain.management import RuntimeLimits, RuntimeOptions, RuntimeStatus
from runtimed.runtime import IdempotencyClaim, Runtime
from runtimed.store import MemoryStore
from runtimed.store.base import Change, RestoredState
from runtimed.web.app import create_app

from .helpers import ECHO_REQUEST, TASK_REQUEST, FailingStore, FakeBackend, create_worker, run_turn, wait_until

W = "worker-00000001"
INPUT = {"kind": "user", "content": "hello"}


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


async def answer(response: Any) -> tuple[int, Any, list[str], str | None]:
    """What a client sees of an answer: status, body, Warning headers, Idempotent-Replayed."""
    return (
        response.status,
        await response.json(),
        response.headers.getall("Warning", []),
        response.headers.get("Idempotent-Replayed"),
    )


def event_count(runtime: Runtime) -> int:
    return len(runtime.events(limit=256).events)


# ------------------------------------------------------------- replays, route by route


async def test_a_create_retried_with_its_key_is_replayed_and_creates_nothing(client, runtime):
    body = {**TASK_REQUEST, "typo": 1}
    first = await answer(await client.post("/v1/workers", json=body, headers=key("create-1")))
    assert first[0] == 200 and first[1]["worker"]["worker_id"] == W
    assert first[2] == ['299 runtimed "unknown field: typo"'] and first[3] is None
    events = event_count(runtime)
    again = await answer(await client.post("/v1/workers", json=body, headers=key("create-1")))
    assert again == (200, first[1], first[2], "true")
    assert [w.worker_id for w in runtime.list_workers()] == [W]
    assert event_count(runtime) == events


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (f"/v1/workers/{W}/input", INPUT),
        (f"/v1/workers/{W}/stop", {"reason": "done"}),
        (f"/v1/workers/{W}/cancel", None),
    ],
)
async def test_each_mutation_of_a_worker_is_replayed_with_the_same_answer(client, runtime, path, body):
    await create_worker(client)
    first = await answer(await client.post(path, json=body, headers=key("k")))
    assert first[0] == 200 and first[3] is None
    state = (runtime.summary(), runtime.list_workers(), event_count(runtime), runtime.transcript(runtime.worker_ref(W)))
    again = await answer(await client.post(path, json=body, headers=key("k")))
    assert again == (*first[:3], "true")
    assert state == (
        runtime.summary(),
        runtime.list_workers(),
        event_count(runtime),
        runtime.transcript(runtime.worker_ref(W)),
    )


async def test_a_delete_is_replayed_after_the_worker_is_gone(client, runtime):
    await create_worker(client)
    await client.post(f"/v1/workers/{W}/stop")
    first = await answer(await client.delete(f"/v1/workers/{W}", headers=key("del")))
    assert first[:2] == (200, {"deleted": {"runtime_id": runtime.runtime_id, "worker_id": W}})
    again = await answer(await client.delete(f"/v1/workers/{W}", headers=key("del")))
    assert again == (*first[:3], "true")
    # Without the key, the worker is gone.
    response = await client.delete(f"/v1/workers/{W}")
    assert (response.status, (await response.json())["error"]["code"]) == (404, "worker_not_found")


async def test_an_interrupt_is_replayed(aiohttp_client):
    runtime = await Runtime.open(MemoryStore())
    backend = FakeBackend(runtime)
    runtime.attach(backend)
    client = await aiohttp_client(create_app(runtime))
    await create_worker(client, ECHO_REQUEST)
    await client.post(f"/v1/workers/{W}/input", json=INPUT)
    started = await runtime.begin_turn(runtime.worker_ref(W))
    assert started is not None
    first = await answer(await client.post(f"/v1/workers/{W}/interrupt", json={}, headers=key("int")))
    assert first[0] == 200 and first[1]["ack"]["turn"] == 1
    events = event_count(runtime)
    again = await answer(await client.post(f"/v1/workers/{W}/interrupt", json={}, headers=key("int")))
    assert again == (*first[:3], "true")
    assert event_count(runtime) == events
    assert backend.named("interrupt") == [(W,)]


async def test_a_request_that_changed_nothing_is_kept_on_its_own(runtime):
    store = FailingStore()
    runtime = await Runtime.open(store)
    worker = await runtime.create_worker(_task())
    await runtime.stop_worker(worker.worker_ref)
    claim = await runtime.claim_idempotency_key("again", "fp", lambda ack: (200, b"{}", ()))
    assert isinstance(claim, IdempotencyClaim)
    try:
        await runtime.stop_worker(worker.worker_ref, claim=claim)
    finally:
        runtime.release_idempotency_key(claim)
    change = store.committed[-1]
    assert change.event is None and change.workers == () and change.observations == ()
    assert [kept.key for kept in change.idempotency] == ["again"]


async def test_the_kept_answer_is_in_the_change_it_guards():
    store = FailingStore()
    runtime = await Runtime.open(store)
    worker = await runtime.create_worker(_task())
    claim = await runtime.claim_idempotency_key("in", "fp", lambda ack: (200, b'{"ack": 1}', ("w",)))
    assert isinstance(claim, IdempotencyClaim)
    try:
        await runtime.send_input(worker.worker_ref, _input())
    finally:
        runtime.release_idempotency_key(claim)
    assert store.committed[-1].idempotency == ()  # no claim passed: nothing kept
    claim = await runtime.claim_idempotency_key("in", "fp", lambda ack: (200, b'{"ack": 1}', ("w",)))
    assert isinstance(claim, IdempotencyClaim)
    try:
        await runtime.send_input(worker.worker_ref, _input(), claim=claim)
    finally:
        runtime.release_idempotency_key(claim)
    change = store.committed[-1]
    assert change.event is not None and change.event.kind.value == "worker_input_accepted"
    assert len(change.transcript) == 1
    (kept,) = change.idempotency
    assert (kept.key, kept.fingerprint, kept.status) == ("in", "fp", 200)
    assert (kept.body, kept.warnings) == (b'{"ack": 1}', ("w",))
    assert abs(kept.kept_at - time.time()) < 60


# ------------------------------------------------------------------ the same request


async def test_key_order_and_whitespace_of_the_body_do_not_matter(client):
    first = await client.post("/v1/workers", json=TASK_REQUEST, headers=key("same"))
    reordered = json.dumps(dict(reversed(list(TASK_REQUEST.items()))), indent=3).encode()
    again = await client.post("/v1/workers", data=reordered, headers=key("same"))
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert await again.json() == await first.json()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", f"/v1/workers/{W}/input", {"kind": "user", "content": "other"}),
        ("POST", f"/v1/workers/{W}/input", {**INPUT, "extra": 1}),
        ("POST", f"/v1/workers/{W}/stop", INPUT),
        ("POST", "/v1/workers/worker-00000002/input", INPUT),
        ("DELETE", f"/v1/workers/{W}", None),
        ("POST", "/v1/workers", TASK_REQUEST),
    ],
)
async def test_the_same_key_for_another_request_is_409_and_changes_nothing(client, runtime, method, path, body):
    await create_worker(client)
    await create_worker(client)
    assert (await client.post(f"/v1/workers/{W}/input", json=INPUT, headers=key("mine"))).status == 200
    state = (runtime.summary(), runtime.list_workers(), event_count(runtime))
    response = await client.request(method, path, json=body, headers=key("mine"))
    assert response.status == 409
    assert await response.json() == {
        "error": {
            "code": "idempotency_key_reused",
            "message": "this Idempotency-Key was used for another request (another method, path or body); "
            "use a new key for a new request",
        }
    }
    assert state == (runtime.summary(), runtime.list_workers(), event_count(runtime))


async def test_reuse_is_checked_before_invalid_json_runtime_stopped_and_worker_not_found(client):
    await create_worker(client)
    await client.post(f"/v1/workers/{W}/input", json=INPUT, headers=key("k"))
    response = await client.post(f"/v1/workers/{W}/input", data=b"{not json", headers=key("k"))
    assert (response.status, (await response.json())["error"]["code"]) == (409, "idempotency_key_reused")
    await client.post(f"/v1/workers/{W}/stop")
    assert (await client.delete(f"/v1/workers/{W}")).status == 200
    await client.post("/v1/runtime/stop")
    # The worker is gone and the runtime stopped: the replay still answers, and so does the 409.
    replay = await client.post(f"/v1/workers/{W}/input", json=INPUT, headers=key("k"))
    assert replay.status == 200 and replay.headers["Idempotent-Replayed"] == "true"
    reused = await client.post("/v1/workers/worker-0000ffff/input", json=INPUT, headers=key("k"))
    assert (reused.status, (await reused.json())["error"]["code"]) == (409, "idempotency_key_reused")
    # A new key is carried out, and refused like any request.
    fresh = await client.post(f"/v1/workers/{W}/input", json=INPUT, headers=key("new"))
    assert (fresh.status, (await fresh.json())["error"]["code"]) == (409, "runtime_stopped")


# ---------------------------------------------------------------------- what is kept


async def test_a_4xx_answer_is_not_kept_and_a_corrected_retry_is_carried_out(client, runtime):
    await create_worker(client)
    blank = await client.post(f"/v1/workers/{W}/input", json={"kind": "user", "content": " "}, headers=key("fix"))
    assert blank.status == 400
    missing = await client.post("/v1/workers/worker-0000ffff/input", json=INPUT, headers=key("fix"))
    assert missing.status == 404
    fixed = await client.post(f"/v1/workers/{W}/input", json=INPUT, headers=key("fix"))
    assert fixed.status == 200 and "Idempotent-Replayed" not in fixed.headers
    assert runtime.worker_detail(runtime.worker_ref(W)).transcript_len == 1


async def test_a_5xx_answer_is_not_kept_and_the_retry_is_carried_out_once(aiohttp_client):
    store = FailingStore()
    runtime = await Runtime.open(store)
    client = await aiohttp_client(create_app(runtime))
    await create_worker(client)
    store.failing = True
    failed = await client.post(f"/v1/workers/{W}/input", json=INPUT, headers=key("retry"))
    assert (failed.status, (await failed.json())["error"]["code"]) == (500, "store_io")
    assert runtime.kept_answers() == []
    store.failing = False
    first = await client.post(f"/v1/workers/{W}/input", json=INPUT, headers=key("retry"))
    again = await client.post(f"/v1/workers/{W}/input", json=INPUT, headers=key("retry"))
    assert first.status == again.status == 200
    assert await first.json() == await again.json()
    assert runtime.worker_detail(runtime.worker_ref(W)).transcript_len == 1


async def test_keys_belong_to_the_runtime_not_to_a_route(client):
    await create_worker(client)
    assert (await client.post("/v1/workers", json=TASK_REQUEST, headers=key("shared"))).status == 200
    response = await client.post(f"/v1/workers/{W}/stop", headers=key("shared"))
    assert (response.status, (await response.json())["error"]["code"]) == (409, "idempotency_key_reused")


# --------------------------------------------------------------------- concurrency


class SlowStore(MemoryStore):
    """Every commit takes 20 ms, like a disk's flush: a storm's duplicates arrive while the
    first create is being made durable."""

    def commit(self, change: Change) -> asyncio.Future[None] | None:
        future = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.02, future.set_result, None)
        return future


async def test_a_retry_storm_of_one_create_makes_one_worker(aiohttp_client):
    runtime = await Runtime.open(SlowStore())
    client = await aiohttp_client(create_app(runtime))
    responses = await asyncio.gather(
        *(client.post("/v1/workers", json=TASK_REQUEST, headers=key("storm")) for _ in range(50))
    )
    answers = [await answer(response) for response in responses]
    assert [w.worker_id for w in runtime.list_workers()] == [W]
    assert {json.dumps(body) for _, body, _, _ in answers} == {json.dumps(answers[0][1])}
    assert all(status == 200 for status, *_ in answers)
    assert sorted(replayed or "" for *_, replayed in answers) == [""] + ["true"] * 49


class GatedStore(MemoryStore):
    """Commits stay pending until the test opens the gate, like a slow disk."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Future[None] | None = None
        self.committed: list[Change] = []

    def commit(self, change: Change) -> asyncio.Future[None] | None:
        self.committed.append(change)
        return self.gate


async def test_a_duplicate_waits_for_the_first_then_gets_its_answer():
    store = GatedStore()
    runtime = await Runtime.open(store)
    worker = await runtime.create_worker(_task())
    store.gate = asyncio.get_running_loop().create_future()

    async def send(body: bytes) -> tuple[str, Any]:
        outcome = await runtime.claim_idempotency_key("dup", "fp", lambda ack: (200, body, ()))
        if isinstance(outcome, KeptAnswer):
            return "replayed", outcome.body
        try:
            ack = await runtime.send_input(worker.worker_ref, _input(), claim=outcome)
        finally:
            runtime.release_idempotency_key(outcome)
        return "carried out", ack.transcript_sequence

    first = asyncio.create_task(send(b"first"))
    await wait_until(lambda: len(store.committed) == 3, what="the first input reaches the store")
    second = asyncio.create_task(send(b"second"))
    await asyncio.sleep(0)
    assert not second.done()  # waiting for the first, not carried out beside it
    store.gate.set_result(None)
    assert await first == ("carried out", 1)
    assert await second == ("replayed", b"first")
    assert len(store.committed) == 3  # started, created, one input


async def test_a_duplicate_of_a_failed_first_request_is_carried_out_itself():
    store = GatedStore()
    runtime = await Runtime.open(store)
    worker = await runtime.create_worker(_task())
    store.gate = asyncio.get_running_loop().create_future()

    async def send() -> int:
        outcome = await runtime.claim_idempotency_key("dup", "fp", lambda ack: (200, b"{}", ()))
        assert isinstance(outcome, IdempotencyClaim)
        try:
            return (await runtime.send_input(worker.worker_ref, _input(), claim=outcome)).transcript_sequence
        finally:
            runtime.release_idempotency_key(outcome)

    first = asyncio.create_task(send())
    await wait_until(lambda: len(store.committed) == 3, what="the first input reaches the store")
    second = asyncio.create_task(send())
    await asyncio.sleep(0)
    from runtimed.domain.errors import StoreIo

    gate, store.gate = store.gate, None
    gate.set_exception(StoreIo("write", "/disk", "I/O error"))
    with pytest.raises(StoreIo):
        await first
    assert await second == 1  # the first was undone, key and all: the second is carried out
    assert [kept.key for kept in runtime.kept_answers()] == ["dup"]


# ----------------------------------------------------------------- keys and their time


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "empty"),
        ("x" * 256, "too long"),
        ("two words", "a space"),
        ("caf\u00e9", "not ASCII"),
        ("tab\tkey", "a control character"),
    ],
)
async def test_a_key_that_is_not_1_to_255_visible_ascii_is_invalid_request(client, runtime, value, why):
    before = event_count(runtime)
    response = await client.post(
        "/v1/workers", json=TASK_REQUEST, headers={"Idempotency-Key": value.encode("utf-8").decode("latin-1")}
    )
    assert response.status == 400, why
    assert await response.json() == {
        "error": {
            "code": "invalid_request",
            "message": "invalid request: Idempotency-Key must be one header of 1 to 255 visible ASCII characters",
        }
    }
    assert event_count(runtime) == before


async def test_the_longest_key_and_every_visible_character_are_accepted(client):
    for value in ("x" * 255, "".join(chr(c) for c in range(0x21, 0x7F))):
        response = await client.post("/v1/workers", json=TASK_REQUEST, headers=key(value))
        assert response.status == 200


async def test_two_key_headers_are_invalid_request(client):
    response = await client.post(
        "/v1/workers", json=TASK_REQUEST, headers=[("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
    )
    assert (response.status, (await response.json())["error"]["code"]) == (400, "invalid_request")


async def test_the_key_is_checked_right_after_the_worker_id(client):
    await create_worker(client)
    bad = key("two words")
    response = await client.post("/v1/workers/%20/input", json=INPUT, headers=bad)
    assert (await response.json())["error"]["code"] == "invalid_worker_id"
    for body in (io.BytesIO(b"x" * (1024 * 1024 + 1)), b"{"):  # before payload_too_large and invalid_json
        response = await client.post(f"/v1/workers/{W}/input", data=body, headers=bad)
        assert (await response.json())["error"]["code"] == "invalid_request"


async def test_a_kept_answer_expires_after_its_time(client, runtime, monkeypatch):
    await create_worker(client)
    assert (await client.post(f"/v1/workers/{W}/input", json=INPUT, headers=key("old"))).status == 200
    ttl = RuntimeLimits().idempotency_key_ttl_seconds
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + ttl - 5)
    replay = await client.post(f"/v1/workers/{W}/input", json=INPUT, headers=key("old"))
    assert replay.headers.get("Idempotent-Replayed") == "true"
    monkeypatch.setattr(time, "time", lambda: now + ttl + 5)
    again = await client.post(f"/v1/workers/{W}/input", json=INPUT, headers=key("old"))
    assert again.status == 200 and "Idempotent-Replayed" not in again.headers
    assert (await again.json())["ack"]["transcript_sequence"] == 2
    # Expired answers are dropped as new ones are kept: only the new one is left.
    assert [kept.body for kept in runtime.kept_answers()] == [await again.read()]


async def test_the_ttl_is_configurable():
    runtime = await Runtime.open(MemoryStore(), RuntimeOptions(limits=RuntimeLimits(idempotency_key_ttl_seconds=30)))
    worker = await runtime.create_worker(_task())
    claim = await runtime.claim_idempotency_key("k", "fp", lambda ack: (200, b"{}", ()))
    assert isinstance(claim, IdempotencyClaim)
    await runtime.send_input(worker.worker_ref, _input(), claim=claim)
    runtime.release_idempotency_key(claim)
    kept_at = runtime.kept_answers()[0].kept_at
    assert isinstance(await runtime.claim_idempotency_key("k", "fp", _never), KeptAnswer)
    import runtimed.runtime.idempotency as table

    original = table.time.time
    try:
        table.time.time = lambda: kept_at + 31  # type: ignore[assignment]
        assert isinstance(await runtime.claim_idempotency_key("k", "fp", _never), IdempotencyClaim)
    finally:
        table.time.time = original  # type: ignore[assignment]


class RestoringStore(MemoryStore):
    """A store that hands back a runtime with kept answers, as the fs store does at start."""

    def __init__(self, answers: list[KeptAnswer]) -> None:
        super().__init__()
        self.answers = answers

    async def open(self, runtime_id: str | None) -> RestoredState | None:
        return RestoredState(
            runtime_id="runtime-mem-0000000000000001",
            status=RuntimeStatus.RUNNING,
            worker_sequence=0,
            idempotency=self.answers,
        )


async def test_kept_answers_handed_back_at_start_are_replayed_and_expired_ones_dropped():
    now = time.time()
    fresh = KeptAnswer("fresh", "fp", 200, b'{"a": 1}', ('299 runtimed "unknown field: x"',), now - 10)
    stale = KeptAnswer("stale", "fp", 200, b"{}", (), now - 86400 - 10)
    runtime = await Runtime.open(RestoringStore([stale, fresh]))
    assert runtime.kept_answers() == [fresh]
    assert await runtime.claim_idempotency_key("fresh", "fp", _never) == fresh
    with pytest.raises(IdempotencyKeyReused):
        await runtime.claim_idempotency_key("fresh", "other", _never)
    assert isinstance(await runtime.claim_idempotency_key("stale", "fp", _never), IdempotencyClaim)


async def test_an_agent_backed_input_is_replayed_and_delivered_once(aiohttp_client):
    runtime = await Runtime.open(MemoryStore())
    backend = FakeBackend(runtime)
    runtime.attach(backend)
    client = await aiohttp_client(create_app(runtime))
    await create_worker(client, ECHO_REQUEST)
    for _ in range(3):
        assert (await client.post(f"/v1/workers/{W}/input", json=INPUT, headers=key("once"))).status == 200
    await run_turn(runtime, runtime.worker_ref(W), "echo: hello")
    assert backend.named("wake") == [(W,)]
    assert runtime.worker_detail(runtime.worker_ref(W)).execution.queued_inputs == 0  # type: ignore[union-attr]


def _never(result: Any) -> tuple[int, bytes, tuple[str, ...]]:
    raise AssertionError("nothing is carried out under this claim")


def _task() -> Any:
    from runtimed.domain.catalog import CreateWorkerRequest, TaskIntent, WorkerIntent
    from runtimed.domain.catalog import RuntimeDefaultProfile as Default

    intent: WorkerIntent = TaskIntent(objective="x")
    return CreateWorkerRequest(intent=intent, profile=Default())


def _input() -> Any:
    from runtimed.domain.interaction import InputKind, WorkerInput

    return WorkerInput(InputKind.USER, "hello")
