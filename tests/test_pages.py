"""Filtered pages of ``GET /v1/workers`` (contract §11): status, limit, after, next_after; the
``after`` chain visits every matching worker once, in creation order; through the real app."""

from __future__ import annotations

import random

import pytest

from runtimed.domain.catalog import WorkerStatus
from runtimed.domain.identity import format_worker_id
from runtimed.domain.management import RuntimeLimits, RuntimeOptions
from runtimed.runtime import Runtime
from runtimed.runtime.pages import WorkerIndex
from runtimed.store import MemoryStore
from runtimed.web.app import create_app

from .helpers import TASK_REQUEST, create_worker


async def catalog(client, count: int, seed: int = 7) -> dict[str, str]:
    """``count`` workers, each left running, stopped, cancelled or deleted at random; their
    statuses by id (deleted ones left out)."""
    chance = random.Random(seed)
    statuses: dict[str, str] = {}
    for _ in range(count):
        worker_id = (await create_worker(client))["worker_id"]
        fate = chance.choice(["running", "stopped", "cancelled", "deleted"])
        if fate in ("stopped", "deleted"):
            await client.post(f"/v1/workers/{worker_id}/stop")
        if fate == "cancelled":
            await client.post(f"/v1/workers/{worker_id}/cancel")
        if fate == "deleted":
            assert (await client.delete(f"/v1/workers/{worker_id}")).status == 200
        else:
            statuses[worker_id] = fate
    return statuses


async def chain(client, params: list[tuple[str, str]]) -> tuple[list[str], int]:
    """Every worker the ``after`` chain visits, and the pages it took (bounded)."""
    seen: list[str] = []
    after: str | None = None
    for pages in range(1, 1000):
        query = [*params, *([("after", after)] if after is not None else [])]
        response = await client.get("/v1/workers", params=query)
        assert response.status == 200
        body = await response.json()
        seen.extend(worker["worker_id"] for worker in body["workers"])
        after = body["next_after"]
        if after is None:
            return seen, pages
        assert after == body["workers"][-1]["worker_id"]
    raise AssertionError("the chain did not end")


@pytest.mark.parametrize(
    "statuses",
    [(), ("running",), ("stopped",), ("cancelled",), ("stopped", "cancelled"), ("running", "stopped", "cancelled")],
)
async def test_the_after_chain_visits_every_matching_worker_once_in_creation_order(client, statuses):
    everyone = await catalog(client, 60)
    expected = [w for w, status in everyone.items() if not statuses or status in statuses]
    seen, pages = await chain(client, [*(("status", s) for s in statuses), ("limit", "7")])
    assert seen == expected
    assert pages == max(1, -(-len(expected) // 7))


async def test_without_parameters_every_worker_is_answered_with_next_after_null(client):
    everyone = await catalog(client, 12)
    body = await (await client.get("/v1/workers")).json()
    assert [w["worker_id"] for w in body["workers"]] == list(everyone)
    assert body["next_after"] is None
    assert [w["status"] for w in body["workers"]] == list(everyone.values())


async def test_limit_defaults_to_max_event_batch_items_when_any_parameter_is_given(aiohttp_client):
    runtime = await Runtime.open(MemoryStore(), RuntimeOptions(limits=RuntimeLimits(max_event_batch_items=3)))
    client = await aiohttp_client(create_app(runtime))
    for _ in range(5):
        await create_worker(client)
    body = await (await client.get("/v1/workers", params={"status": "running"})).json()
    assert [w["worker_id"] for w in body["workers"]] == [format_worker_id(n) for n in (1, 2, 3)]
    assert body["next_after"] == "worker-00000003"
    # Without a parameter, every worker still (the seed's list).
    assert len((await (await client.get("/v1/workers")).json())["workers"]) == 5
    response = await client.get("/v1/workers", params={"limit": "4"})
    assert (response.status, await response.json()) == (
        400,
        {"error": {"code": "limit_too_large", "message": "limit 4 exceeds maximum 3"}},
    )


async def test_after_may_name_a_deleted_or_never_created_worker(client):
    await catalog(client, 0)
    for _ in range(4):
        await create_worker(client)
    await client.post("/v1/workers/worker-00000002/stop")
    await client.delete("/v1/workers/worker-00000002")
    body = await (await client.get("/v1/workers", params={"after": "worker-00000002"})).json()
    assert [w["worker_id"] for w in body["workers"]] == ["worker-00000003", "worker-00000004"]
    body = await (await client.get("/v1/workers", params={"after": "worker-00000000"})).json()
    assert [w["worker_id"] for w in body["workers"]] == ["worker-00000001", "worker-00000003", "worker-00000004"]
    body = await (await client.get("/v1/workers", params={"after": "worker-0000ffff"})).json()
    assert body == {"workers": [], "next_after": None}


async def test_a_page_of_none_moves_no_one_on(client):
    for _ in range(2):
        await create_worker(client)
    body = await (await client.get("/v1/workers", params={"limit": "0"})).json()
    assert body == {"workers": [], "next_after": None}
    body = await (await client.get("/v1/workers", params={"limit": "0", "after": "worker-00000000"})).json()
    assert body == {"workers": [], "next_after": "worker-00000000"}
    body = await (await client.get("/v1/workers", params={"limit": "0", "after": "worker-00000002"})).json()
    assert body == {"workers": [], "next_after": None}


async def test_a_page_ends_with_next_after_null_exactly_when_nothing_more_matches(client):
    for _ in range(4):
        await create_worker(client)
    body = await (await client.get("/v1/workers", params={"limit": "4"})).json()
    assert (len(body["workers"]), body["next_after"]) == (4, None)
    body = await (await client.get("/v1/workers", params={"limit": "3"})).json()
    assert (len(body["workers"]), body["next_after"]) == (3, "worker-00000003")


# (query, message)
# fmt: off
BAD_QUERIES = [
    ([("status", "paused")], "invalid query parameters: status[0]: Must be one of: running, stopped, cancelled."),
    ([("status", "")], "invalid query parameters: status[0]: Must be one of: running, stopped, cancelled."),
    ([("status", "running"), ("status", "idle")], None),
    ([("limit", "-1")], "invalid query parameters: limit: must be a non-negative integer."),
    ([("limit", "2.5")], "invalid query parameters: limit: must be a non-negative integer."),
    ([("limit", "1" * 19)], "invalid query parameters: limit: must have at most 18 digits."),
    ([("after", "w1")], "invalid query parameters: after: must be a worker id: worker-<8 or more lowercase hex digits>."),  # noqa: E501
    ([("after", "worker-0000000G")], None),
    ([("after", "")], None),
]
# fmt: on


@pytest.mark.parametrize(("query", "message"), BAD_QUERIES)
async def test_a_bad_query_is_invalid_query(client, runtime, query, message):
    await create_worker(client)
    response = await client.get("/v1/workers", params=query)
    assert response.status == 400
    body = await response.json()
    assert body["error"]["code"] == "invalid_query"
    if message is not None:
        assert body["error"]["message"] == message


async def test_invalid_query_beats_limit_too_large(client):
    response = await client.get("/v1/workers", params=[("limit", "9999"), ("status", "nope")])
    assert (await response.json())["error"]["code"] == "invalid_query"


async def test_an_unknown_parameter_is_named_in_a_warning(client):
    await create_worker(client)
    response = await client.get("/v1/workers", params={"colour": "blue"})
    assert response.status == 200
    assert response.headers.getall("Warning") == ['299 runtimed "unknown field: colour"']
    assert len((await response.json())["workers"]) == 1
    response = await client.get("/v1/workers", params={"colour": "blue", "limit": "0"})
    assert response.headers.getall("Warning") == ['299 runtimed "unknown field: colour"']
    assert (await response.json())["workers"] == []


def test_the_index_pages_by_creation_order_through_moves_and_removals():
    index = WorkerIndex([(3, WorkerStatus.STOPPED), (1, WorkerStatus.RUNNING), (2, WorkerStatus.RUNNING)])
    index.add(4, WorkerStatus.RUNNING)
    index.move(2, WorkerStatus.RUNNING, WorkerStatus.CANCELLED)
    index.move(1, WorkerStatus.RUNNING, WorkerStatus.STOPPED)
    index.remove(3, WorkerStatus.STOPPED)
    assert index.page(None, 0, 10) == ([1, 2, 4], False)
    assert index.page({WorkerStatus.STOPPED, WorkerStatus.CANCELLED}, 0, 1) == ([1], True)
    assert index.page({WorkerStatus.STOPPED, WorkerStatus.CANCELLED}, 1, 1) == ([2], False)
    assert index.page({WorkerStatus.RUNNING}, 2, 5) == ([4], False)
    assert index.page(set(WorkerStatus), 3, 5) == ([4], False)
    assert index.page(None, 0, 0) == ([], True)


async def test_ids_past_worker_ffffffff_still_page_in_creation_order():
    index = WorkerIndex()
    for sequence in (0xFFFFFFFE, 0xFFFFFFFF, 0x100000000):
        index.add(sequence, WorkerStatus.RUNNING)
    assert index.page(None, 0xFFFFFFFF, 5) == ([0x100000000], False)
    assert format_worker_id(0x100000000) == "worker-100000000"


async def test_a_runtime_pages_the_same_as_its_list():
    runtime = await Runtime.open(MemoryStore())
    client_free = [await runtime.create_worker(_task()) for _ in range(5)]
    await runtime.stop_worker(client_free[1].worker_ref)
    page = runtime.worker_page(frozenset({WorkerStatus.RUNNING}), "worker-00000001", 2)
    assert [w.worker_id for w in page.workers] == ["worker-00000003", "worker-00000004"]
    assert page.next_after == "worker-00000004"
    with pytest.raises(ValueError):
        runtime.worker_page(after="nope")
    assert TASK_REQUEST  # the API tests' request, the same shape


def _task():
    from runtimed.domain.catalog import CreateWorkerRequest, RuntimeDefaultProfile, TaskIntent

    return CreateWorkerRequest(intent=TaskIntent(objective="x"), profile=RuntimeDefaultProfile())
