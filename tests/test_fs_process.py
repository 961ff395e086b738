"""The filesystem store behind a real ``runtimed serve`` process: restarts and SIGKILL crashes."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from runtimed.domain.observation import EventKind
from runtimed.runtime import Runtime
from runtimed.store.fs import FsStore

from .process import RuntimedProcess, request_json, run_runtimed

CREATE = {"intent": {"kind": "task", "objective": "x"}, "profile": {"kind": "runtime_default"}}
pytestmark = pytest.mark.process

READS = ["/v1/runtime", "/v1/workers", "/v1/events?limit=256", "/v1/diagnostics"]


def serve_fs(root: Path) -> RuntimedProcess:
    return RuntimedProcess("--bind", "127.0.0.1:0", "--store", "fs", "--fs-root", str(root))


def all_reads(base_url: str) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for path in READS:
        status, _, body[path] = request_json("GET", base_url + path)
        assert status == 200
    for worker in body["/v1/workers"]["workers"]:
        for path in (f"/v1/workers/{worker['worker_id']}", f"/v1/workers/{worker['worker_id']}/transcript"):
            status, _, body[path] = request_json("GET", base_url + path)
            assert status == 200
    return body


def test_a_restarted_daemon_answers_every_read_as_before_and_continues_the_sequences(tmp_path):
    root = tmp_path / "root"
    with serve_fs(root) as daemon:
        ids = [
            request_json("POST", daemon.base_url + "/v1/workers", CREATE)[2]["worker"]["worker_id"] for _ in range(3)
        ]
        for i, worker in enumerate(ids):
            request_json("POST", f"{daemon.base_url}/v1/workers/{worker}/input", {"kind": "user", "content": f"m{i}"})
        request_json("POST", f"{daemon.base_url}/v1/workers/{ids[1]}/stop", {"reason": "done"})
        before = all_reads(daemon.base_url)
        runtime_id = daemon.runtime_id
        assert daemon.store == "fs_store"
        assert daemon.stop() == 0

    with serve_fs(root) as daemon:
        assert daemon.runtime_id == runtime_id
        assert all_reads(daemon.base_url) == before
        status, _, body = request_json("POST", daemon.base_url + "/v1/workers", CREATE)
        assert (status, body["worker"]["worker_id"]) == (200, "worker-00000004")
        assert body["worker"]["last_event_id"] == before["/v1/events?limit=256"]["next_cursor"]
        assert daemon.stop() == 0


def whole_transcript(runtime: Runtime, ref) -> list:
    entries: list = []
    while True:
        page = runtime.transcript(ref, len(entries), 256)
        entries += page.items
        if page.next_start is None:
            return entries


async def _drive(base_url: str, acked: dict[str, list[dict[str, Any]]], stop: asyncio.Event, seed: int) -> None:
    """Create a worker, then send it inputs, recording every acknowledged response, until the
    daemon goes away."""
    rng = random.Random(seed)
    async with aiohttp.ClientSession() as session:
        try:
            async with session.post(base_url + "/v1/workers", json=CREATE) as response:
                worker = (await response.json())["worker"]["worker_id"]
            acked[worker] = []
            while not stop.is_set():
                content = f"{seed}-{rng.random()}"
                async with session.post(
                    f"{base_url}/v1/workers/{worker}/input", json={"kind": "user", "content": content}
                ) as response:
                    ack = (await response.json())["ack"]
                acked[worker].append({"content": content, **ack})
        except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError):
            return  # killed mid-request: that one was never acknowledged


async def test_no_acknowledged_record_is_lost_when_the_daemon_is_killed(tmp_path):
    """Concurrent creates and inputs against a real daemon, SIGKILL at a random moment, restore:
    every acknowledged record is there and every record on disk is whole. Twenty kill points,
    half of them with a checkpoint every 50 ms."""
    rng = random.Random(20261127)
    root = tmp_path / "root"
    total_acked = 0
    for round_ in range(20):
        acked: dict[str, list[dict[str, Any]]] = {}
        if round_ % 2:
            daemon = serve_fs(root).start()
        else:
            # Checkpoints every 50 ms and small log segments (tests/slow_disk.py): kills land
            # inside checkpoints and segment removals too.
            env = {**os.environ, "RUNTIMED_TEST_CHECKPOINT_SECONDS": "0.05", "RUNTIMED_TEST_SEGMENT_BYTES": "16384"}
            daemon = RuntimedProcess(
                "--bind", "127.0.0.1:0", "--store", "fs", "--fs-root", str(root), env=env, slow_flush_ms=0
            ).start()
        try:
            stop = asyncio.Event()
            clients = [asyncio.create_task(_drive(daemon.base_url, acked, stop, round_ * 100 + i)) for i in range(8)]
            await asyncio.sleep(rng.uniform(0.05, 0.4))
            daemon.process.send_signal(signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*clients), 10)
            stop.set()
        finally:
            daemon.close()

        runtime = await Runtime.open(FsStore(root))  # loads cleanly, or raises
        try:
            events = {e.id: e for e in runtime.events(1, 256).events}
            cursor = 257
            while True:
                batch = runtime.events(cursor, 256)
                events.update({e.id: e for e in batch.events})
                if not batch.has_more:
                    break
                cursor = batch.next_cursor
            for worker_id, acks in acked.items():
                transcript = whole_transcript(runtime, runtime.worker_ref(worker_id))
                for ack in acks:
                    entry = transcript[ack["transcript_sequence"] - 1]
                    assert (entry.content, entry.event_id) == (ack["content"], ack["event_id"])
                total_acked += len(acks)
            for worker in runtime.list_workers():
                created = [
                    e
                    for e in events.values()
                    if e.kind is EventKind.WORKER_CREATED and e.worker_ref == worker.worker_ref
                ]
                assert len(created) == 1
                for entry in whole_transcript(runtime, worker.worker_ref):
                    event = events[entry.event_id]
                    assert (event.kind, event.worker_ref) == (EventKind.WORKER_INPUT_ACCEPTED, worker.worker_ref)
        finally:
            await runtime.close()
    assert total_acked > 0, "the load never got an acknowledgement before the kills"


async def test_a_websocket_resumes_across_a_restart_with_exactly_the_missed_events(tmp_path):
    root = tmp_path / "root"
    daemon = serve_fs(root).start()
    try:
        worker = request_json("POST", daemon.base_url + "/v1/workers", CREATE)[2]["worker"]["worker_id"]
        ws_url = f"{daemon.base_url}/v1/workers/{worker}/events/ws"
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(ws_url) as ws:
                await ws.receive_json(timeout=5)  # snapshot
                request_json(
                    "POST", f"{daemon.base_url}/v1/workers/{worker}/input", {"kind": "user", "content": "seen"}
                )
                seen = await ws.receive_json(timeout=5)
            last_cursor = seen["envelope"]["cursor"]
            request_json("POST", f"{daemon.base_url}/v1/workers/{worker}/input", {"kind": "user", "content": "missed"})
            request_json("POST", f"{daemon.base_url}/v1/workers/{worker}/stop")
            assert daemon.stop() == 0
            daemon.close()

            daemon = serve_fs(root).start()
            async with session.ws_connect(
                f"{daemon.base_url}/v1/workers/{worker}/events/ws?cursor={last_cursor}"
            ) as ws:
                snapshot = await ws.receive_json(timeout=5)
                assert snapshot["envelope"]["cursor"] == last_cursor
                missed = [(await ws.receive_json(timeout=5))["envelope"]["payload"] for _ in range(2)]
                assert missed == [
                    {"event": "user_message", "data": {"sequence": 2, "content": "missed"}},
                    {"event": "worker_status", "data": {"status": "stopped", "reason": "worker stopped"}},
                ]
                request_json("POST", f"{daemon.base_url}/v1/workers/{worker}/cancel")  # no change: no event
                request_json("POST", daemon.base_url + "/v1/workers", CREATE)  # another worker's
                try:
                    extra = await ws.receive_json(timeout=0.3)
                except TimeoutError:
                    extra = None
                assert extra is None
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_a_corrupt_root_stops_the_daemon_with_exit_1_naming_the_file(tmp_path):
    root = tmp_path / "root"
    with serve_fs(root) as daemon:
        request_json("POST", daemon.base_url + "/v1/workers", CREATE)
        assert daemon.stop() == 0
    (events,) = root.glob("runtimes/*/events.jsonl")
    lines = events.read_bytes().split(b"\n")
    lines[0] = b"{garbage"
    events.write_bytes(b"\n".join(lines))
    result = run_runtimed("serve", "--bind", "127.0.0.1:0", "--store", "fs", "--fs-root", str(root))
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last == f"runtimed: restore {events}: line 1 is not a JSON object"
    assert "Traceback" not in result.stderr


def test_a_root_that_is_a_file_stops_the_daemon_with_exit_1(tmp_path):
    root = tmp_path / "root"
    root.write_text("not a directory")
    result = run_runtimed("serve", "--bind", "127.0.0.1:0", "--store", "fs", "--fs-root", str(root))
    assert result.returncode == 1
    assert str(root) in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_a_second_daemon_on_the_same_root_exits_1_and_the_first_keeps_serving(tmp_path):
    root = tmp_path / "root"
    with serve_fs(root) as first:
        status, _, body = request_json("POST", first.base_url + "/v1/workers", CREATE)
        assert (status, body["worker"]["worker_id"]) == (200, "worker-00000001")
        result = run_runtimed("serve", "--bind", "127.0.0.1:0", "--store", "fs", "--fs-root", str(root))
        assert result.returncode == 1
        last = result.stderr.splitlines()[-1]
        assert str(root) in last and f"pid {first.process.pid}" in last, result.stderr
        assert "Traceback" not in result.stderr
        # The first daemon is undisturbed: its worker is there and its sequences continue.
        status, _, body = request_json("POST", first.base_url + "/v1/workers", CREATE)
        assert (status, body["worker"]["worker_id"]) == (200, "worker-00000002")
        assert body["worker"]["last_event_id"] == 3
        assert first.stop() == 0
    with serve_fs(root) as third:  # the lock went with the first daemon
        status, _, body = request_json("GET", third.base_url + "/v1/workers")
        assert [w["worker_id"] for w in body["workers"]] == ["worker-00000001", "worker-00000002"]
        assert third.stop() == 0


def test_the_lock_of_a_killed_daemon_does_not_block_a_restart(tmp_path):
    root = tmp_path / "root"
    with serve_fs(root) as daemon:
        request_json("POST", daemon.base_url + "/v1/workers", CREATE)
        pid = daemon.process.pid
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(5)
    assert (root / "runtimed.lock").read_text().strip() == str(pid)  # stale, but flock died with it
    with serve_fs(root) as daemon:
        status, _, body = request_json("GET", daemon.base_url + "/v1/workers")
        assert status == 200
        assert [w["worker_id"] for w in body["workers"]] == ["worker-00000001"]
        assert daemon.stop() == 0


def test_a_lost_acknowledged_observation_stops_the_daemon_with_exit_1_naming_the_file(tmp_path):
    root = tmp_path / "root"
    with serve_fs(root) as daemon:
        worker = request_json("POST", daemon.base_url + "/v1/workers", CREATE)[2]["worker"]["worker_id"]
        request_json("POST", f"{daemon.base_url}/v1/workers/{worker}/input", {"kind": "user", "content": "hi"})
        request_json("POST", f"{daemon.base_url}/v1/workers/{worker}/stop")
        assert daemon.stop() == 0
    (observations,) = root.glob("runtimes/*/workers/*/observations.jsonl")
    observations.write_bytes(b"".join(observations.read_bytes().splitlines(keepends=True)[:-1]))
    result = run_runtimed("serve", "--bind", "127.0.0.1:0", "--store", "fs", "--fs-root", str(root))
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"runtimed: restore {observations}: "), result.stderr
    assert "Traceback" not in result.stderr
