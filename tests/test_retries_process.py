"""Retries, deletion and pages (contract §11) against a real ``runtimed serve`` over a real socket."""

from __future__ import annotations

import asyncio
import json
import signal

import aiohttp
import pytest

from .process import RuntimedProcess, request_json

pytestmark = pytest.mark.process

CREATE = {"intent": {"kind": "task", "objective": "x"}, "profile": {"kind": "runtime_default"}}
INPUT = {"kind": "user", "content": "hello"}


def serve(*args: str) -> RuntimedProcess:
    return RuntimedProcess("--bind", "127.0.0.1:0", *args)


async def test_a_retried_create_and_input_are_replayed_by_a_real_daemon():
    with serve() as daemon:
        url = daemon.base_url
        async with aiohttp.ClientSession() as session:
            creates = await asyncio.gather(
                *(session.post(url + "/v1/workers", json=CREATE, headers={"Idempotency-Key": "c1"}) for _ in range(20))
            )
            bodies = {json.dumps(await response.json()) for response in creates}
            assert [response.status for response in creates] == [200] * 20
            assert len(bodies) == 1
            assert sorted(r.headers.get("Idempotent-Replayed", "") for r in creates) == [""] + ["true"] * 19
            worker = json.loads(bodies.pop())["worker"]["worker_id"]
            for _ in range(3):
                response = await session.post(
                    f"{url}/v1/workers/{worker}/input", json=INPUT, headers={"Idempotency-Key": "i1"}
                )
                assert response.status == 200
            other = {**INPUT, "content": "other"}
            key = {"Idempotency-Key": "i1"}
            reused = await session.post(f"{url}/v1/workers/{worker}/input", json=other, headers=key)
            assert reused.status == 409
            assert (await reused.json())["error"]["code"] == "idempotency_key_reused"
        status, _, body = request_json("GET", url + "/v1/workers")
        assert status == 200 and len(body["workers"]) == 1 and body["workers"][0]["transcript_len"] == 1
        assert daemon.stop() == 0


async def test_a_real_daemon_deletes_a_worker_under_an_open_session_and_pages_its_catalog():
    with serve() as daemon:
        url = daemon.base_url
        ids = [request_json("POST", url + "/v1/workers", CREATE)[2]["worker"]["worker_id"] for _ in range(5)]
        for worker in ids[:3]:
            request_json("POST", f"{url}/v1/workers/{worker}/stop")
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"{url}/v1/workers/{ids[0]}/events/ws") as ws,
        ):
            assert json.loads((await ws.receive(timeout=5)).data)["envelope"]["payload"]["event"] == "snapshot"
            status, _, body = request_json("DELETE", f"{url}/v1/workers/{ids[0]}")
            assert (status, body["deleted"]["worker_id"]) == (200, ids[0])
            frame = json.loads((await ws.receive(timeout=5)).data)
            assert frame["diagnostic"]["code"] == "runtime.worker_deleted"
            assert (await ws.receive(timeout=5)).type is aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 1000
        assert request_json("GET", f"{url}/v1/workers/{ids[0]}")[0] == 404
        assert request_json("DELETE", f"{url}/v1/workers/{ids[3]}")[2]["error"]["code"] == "worker_running"
        status, _, page = request_json("GET", f"{url}/v1/workers?status=stopped&limit=1")
        assert (status, [w["worker_id"] for w in page["workers"]], page["next_after"]) == (200, [ids[1]], ids[1])
        status, _, page = request_json("GET", f"{url}/v1/workers?status=stopped&limit=1&after={ids[1]}")
        assert ([w["worker_id"] for w in page["workers"]], page["next_after"]) == ([ids[2]], None)
        status, _, page = request_json("GET", f"{url}/v1/workers?after={ids[0]}&status=running")
        assert [w["worker_id"] for w in page["workers"]] == ids[3:]
        assert request_json("GET", f"{url}/v1/workers?status=paused")[0] == 400
        assert daemon.stop() == 0


def test_a_deleted_worker_stays_gone_and_its_id_unused_after_a_restart_and_a_kill(tmp_path):
    root = tmp_path / "root"
    args = ("--store", "fs", "--fs-root", str(root))
    with serve(*args) as daemon:
        url = daemon.base_url
        ids = [request_json("POST", url + "/v1/workers", CREATE)[2]["worker"]["worker_id"] for _ in range(3)]
        request_json("POST", f"{url}/v1/workers/{ids[0]}/input", INPUT)
        request_json("POST", f"{url}/v1/workers/{ids[0]}/stop")
        request_json("POST", f"{url}/v1/workers/{ids[2]}/cancel")
        assert request_json("DELETE", f"{url}/v1/workers/{ids[0]}")[0] == 200
        assert request_json("DELETE", f"{url}/v1/workers/{ids[2]}")[0] == 200  # the newest
        assert daemon.stop() == 0
    for stop in (signal.SIGTERM, signal.SIGKILL):
        with serve(*args) as daemon:
            url = daemon.base_url
            assert request_json("GET", f"{url}/v1/workers/{ids[0]}")[0] == 404
            assert [w["worker_id"] for w in request_json("GET", url + "/v1/workers")[2]["workers"]][:1] == [ids[1]]
            summary = request_json("GET", url + "/v1/runtime")[2]["runtime"]
            assert (summary["worker_count"], summary["stopped_worker_count"]) == (
                1 if stop is signal.SIGTERM else 2,
                0,
            )
            created = request_json("POST", url + "/v1/workers", CREATE)[2]["worker"]["worker_id"]
            assert created not in ids
            ids.append(created)
            events = request_json("GET", url + "/v1/events")[2]["events"]
            assert [e["kind"] for e in events].count("worker_deleted") == 2
            daemon.stop(stop)
