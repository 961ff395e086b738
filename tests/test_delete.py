"""Deleting a worker (contract §11): everything of it goes, with a ``worker_deleted`` event; its
observers are told and closed; its id is never given again; through the real app."""

from __future__ import annotations

import json

import aiohttp
import pytest

from runtimed.runtime import Runtime
from runtimed.store import MemoryStore
from runtimed.web.app import create_app

from .helpers import ECHO_REQUEST, FailingStore, FakeBackend, create_worker

W = "worker-00000001"
INPUT = {"kind": "user", "content": "hello"}


async def error_of(response: aiohttp.ClientResponse) -> tuple[int, str]:
    return response.status, (await response.json())["error"]["code"]


async def test_a_stopped_worker_is_deleted_with_everything_of_it(client, runtime):
    await create_worker(client)
    await client.post(f"/v1/workers/{W}/input", json=INPUT)
    await client.post(f"/v1/workers/{W}/stop", json={"reason": "done"})
    diagnostics = runtime.diagnostics()
    response = await client.delete(f"/v1/workers/{W}")
    assert response.status == 200
    assert await response.json() == {"deleted": {"runtime_id": runtime.runtime_id, "worker_id": W}}
    for path in (f"/v1/workers/{W}", f"/v1/workers/{W}/transcript"):
        assert await error_of(await client.get(path)) == (404, "worker_not_found")
    assert await error_of(await client.delete(f"/v1/workers/{W}")) == (404, "worker_not_found")
    assert (await (await client.get("/v1/workers")).json()) == {"workers": [], "next_after": None}
    summary = (await (await client.get("/v1/runtime")).json())["runtime"]
    assert (summary["worker_count"], summary["stopped_worker_count"]) == (0, 0)
    # The event log and the diagnostics keep what names it, ids dense.
    events = (await (await client.get("/v1/events")).json())["events"]
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert [e["kind"] for e in events] == [
        "runtime_started",
        "worker_created",
        "worker_input_accepted",
        "worker_stopped",
        "worker_deleted",
    ]
    assert events[-1]["message"] == f"worker {W} deleted"
    assert events[-1]["worker_ref"] == {"runtime_id": runtime.runtime_id, "worker_id": W}
    assert runtime.diagnostics() == diagnostics and diagnostics


async def test_a_cancelled_worker_is_deleted_and_its_id_is_never_given_again(client):
    await create_worker(client)
    await create_worker(client)
    await client.post("/v1/workers/worker-00000002/cancel")
    assert (await client.delete("/v1/workers/worker-00000002")).status == 200
    created = await create_worker(client)
    assert created["worker_id"] == "worker-00000003"


async def test_a_running_worker_is_not_deleted(client, runtime):
    await create_worker(client)
    before = (runtime.summary(), runtime.list_workers(), len(runtime.events().events))
    response = await client.delete(f"/v1/workers/{W}")
    assert response.status == 409
    assert await response.json() == {
        "error": {
            "code": "worker_running",
            "message": f"worker {W} is running; stop or cancel it before deleting it",
        }
    }
    assert before == (runtime.summary(), runtime.list_workers(), len(runtime.events().events))


async def test_order_of_checks_of_a_delete(client):
    await create_worker(client)
    assert await error_of(await client.delete("/v1/workers/%20")) == (400, "invalid_worker_id")
    assert await error_of(await client.delete("/v1/workers/worker-0000ffff")) == (404, "worker_not_found")
    await client.post("/v1/runtime/stop")  # every worker is stopped now, and so is the runtime
    assert await error_of(await client.delete("/v1/workers/worker-0000ffff")) == (409, "runtime_stopped")
    assert await error_of(await client.delete(f"/v1/workers/{W}")) == (409, "runtime_stopped")
    await client.post("/v1/runtime/start")
    assert (await client.delete(f"/v1/workers/{W}")).status == 200


async def test_a_delete_the_store_fails_changes_nothing(aiohttp_client):
    store = FailingStore()
    runtime = await Runtime.open(store)
    client = await aiohttp_client(create_app(runtime))
    await create_worker(client)
    await client.post(f"/v1/workers/{W}/input", json=INPUT)
    await client.post(f"/v1/workers/{W}/stop")
    before = (runtime.summary(), runtime.list_workers(), runtime.transcript(runtime.worker_ref(W)))
    store.failing = True
    assert await error_of(await client.delete(f"/v1/workers/{W}")) == (500, "store_io")
    store.failing = False
    assert before == (runtime.summary(), runtime.list_workers(), runtime.transcript(runtime.worker_ref(W)))
    assert runtime.worker_page(after="worker-00000000").workers == runtime.list_workers()
    assert (await client.delete(f"/v1/workers/{W}")).status == 200
    assert store.committed[-1].deleted == (W,)
    assert store.committed[-1].event is not None and store.committed[-1].workers == ()


async def test_an_observer_of_a_deleted_worker_is_told_and_closed(client):
    await create_worker(client)
    await client.post(f"/v1/workers/{W}/input", json=INPUT)
    await client.post(f"/v1/workers/{W}/stop")
    async with client.ws_connect(f"/v1/workers/{W}/events/ws?cursor=wo_0000000000000000") as ws:
        frames = [json.loads((await ws.receive(timeout=5)).data) for _ in range(3)]
        assert [f["envelope"]["payload"]["event"] for f in frames] == ["snapshot", "user_message", "worker_status"]
        assert (await client.delete(f"/v1/workers/{W}")).status == 200
        frame = json.loads((await ws.receive(timeout=5)).data)
        assert frame == {
            "kind": "diagnostic",
            "diagnostic": {"code": "runtime.worker_deleted", "message": f"worker {W} was deleted"},
        }
        closing = await ws.receive(timeout=5)
        assert closing.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1000
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(f"/v1/workers/{W}/events/ws")
    assert refused.value.status == 404


async def test_deleting_an_agent_backed_worker_tells_the_backend(aiohttp_client):
    runtime = await Runtime.open(MemoryStore())
    backend = FakeBackend(runtime)
    runtime.attach(backend)
    client = await aiohttp_client(create_app(runtime))
    await create_worker(client, ECHO_REQUEST)
    await client.post(f"/v1/workers/{W}/cancel")
    assert (await client.delete(f"/v1/workers/{W}")).status == 200
    assert backend.named("delete") == [(W,)]
    assert runtime.summary().worker_count == 0


@pytest.mark.parametrize("statuses", [("stopped",), ("cancelled",)])
async def test_counts_drop_a_deleted_worker(client, runtime, statuses):
    await create_worker(client)
    await create_worker(client)
    action = "stop" if statuses == ("stopped",) else "cancel"
    await client.post(f"/v1/workers/{W}/{action}")
    await client.delete(f"/v1/workers/{W}")
    summary = runtime.summary()
    assert (summary.worker_count, summary.active_worker_count) == (1, 1)
    assert (summary.stopped_worker_count, summary.cancelled_worker_count) == (0, 0)
    page = await (await client.get("/v1/workers", params=[("status", statuses[0])])).json()
    assert page == {"workers": [], "next_after": None}
