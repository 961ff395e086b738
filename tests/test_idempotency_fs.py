"""§11 with the fs store across restarts: kept answers survive a SIGKILL and a checkpoint, an
expired one does not come back; a deleted worker's files are gone when the answer is sent, it
stays gone after a restart, and a crash between its ``worker_deleted`` line and the removal of
its files is finished at the next start. Real ``runtimed serve`` processes on a real root, and
the Runtime over the real fs store where a clock must be set forward."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from runtimed.domain.management import RuntimeLimits, RuntimeOptions
from runtimed.runtime import Runtime
from runtimed.store.fs import FsStore
from runtimed.web.app import create_app

from .helpers import wait_until
from .process import RuntimedProcess, request_json

CREATE = {"intent": {"kind": "task", "objective": "x"}, "profile": {"kind": "runtime_default"}}
INPUT = {"kind": "user", "content": "hello"}
#: How long a test waits for a checkpoint (about one a second) to have written something.
CHECKPOINT_WAIT_S = 10.0


def serve_fs(root: Path, env: dict[str, str] | None = None) -> RuntimedProcess:
    if env is None:
        return RuntimedProcess("--bind", "127.0.0.1:0", "--store", "fs", "--fs-root", str(root))
    return RuntimedProcess(
        "--bind", "127.0.0.1:0", "--store", "fs", "--fs-root", str(root), env={**os.environ, **env}, slow_flush_ms=0
    )


def keyed(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


def runtime_dir(root: Path) -> Path:
    (directory,) = (root / "runtimes").iterdir()
    return directory


def worker_dir(root: Path, worker_id: str) -> Path:
    return runtime_dir(root) / "workers" / f"id-{worker_id.encode().hex()}"


def wait_for(condition: Any, what: str, timeout: float = CHECKPOINT_WAIT_S) -> None:
    """Poll ``condition`` (bounded) from a test that talks to a daemon synchronously."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def all_events(url: str) -> list[dict[str, Any]]:
    status, _, body = request_json("GET", url + "/v1/events?limit=256")
    assert status == 200 and body["has_more"] is False
    return body["events"]


def counts(url: str) -> tuple[int, int, int, int]:
    runtime = request_json("GET", url + "/v1/runtime")[2]["runtime"]
    return (
        runtime["worker_count"],
        runtime["active_worker_count"],
        runtime["stopped_worker_count"],
        runtime["cancelled_worker_count"],
    )


# ----------------------------------------------------------- kept answers


@pytest.mark.process
def test_a_create_answered_before_a_sigkill_is_replayed_after_the_restart(tmp_path):
    root = tmp_path / "root"
    with serve_fs(root) as daemon:
        status, headers, first = request_json("POST", daemon.base_url + "/v1/workers", CREATE, keyed("create-1"))
        assert (status, headers.get("Idempotent-Replayed")) == (200, None)
        daemon.stop(signal.SIGKILL)
    with serve_fs(root) as daemon:
        url = daemon.base_url
        status, headers, again = request_json("POST", url + "/v1/workers", CREATE, keyed("create-1"))
        assert (status, again, headers.get("Idempotent-Replayed")) == (200, first, "true")
        assert [w["worker_id"] for w in request_json("GET", url + "/v1/workers")[2]["workers"]] == ["worker-00000001"]
        other = {**CREATE, "intent": {"kind": "task", "objective": "y"}}
        status, _, reused = request_json("POST", url + "/v1/workers", other, keyed("create-1"))
        assert (status, reused["error"]["code"]) == (409, "idempotency_key_reused")
        status, _, created = request_json("POST", url + "/v1/workers", CREATE)
        assert (status, created["worker"]["worker_id"]) == (200, "worker-00000002")
        assert daemon.stop() == 0


@pytest.mark.process
def test_an_input_and_a_stop_that_changed_nothing_are_replayed_after_a_sigkill(tmp_path):
    root = tmp_path / "root"
    with serve_fs(root) as daemon:
        url = daemon.base_url
        worker = request_json("POST", url + "/v1/workers", CREATE)[2]["worker"]["worker_id"]
        _, _, sent = request_json("POST", f"{url}/v1/workers/{worker}/input", INPUT, keyed("in-1"))
        request_json("POST", f"{url}/v1/workers/{worker}/stop")
        # A stop of a stopped worker changes nothing: its answer is kept on its own.
        status, _, unchanged = request_json("POST", f"{url}/v1/workers/{worker}/stop", None, keyed("stop-again"))
        assert status == 200
        events = all_events(url)
        daemon.stop(signal.SIGKILL)
    with serve_fs(root) as daemon:
        url = daemon.base_url
        status, headers, again = request_json("POST", f"{url}/v1/workers/{worker}/input", INPUT, keyed("in-1"))
        assert (status, again, headers.get("Idempotent-Replayed")) == (200, sent, "true")
        status, headers, again = request_json("POST", f"{url}/v1/workers/{worker}/stop", None, keyed("stop-again"))
        assert (status, again, headers.get("Idempotent-Replayed")) == (200, unchanged, "true")
        status, _, reused = request_json("POST", f"{url}/v1/workers/{worker}/cancel", None, keyed("in-1"))
        assert (status, reused["error"]["code"]) == (409, "idempotency_key_reused")
        # Replayed, not carried out again: one entry, no new event.
        transcript = request_json("GET", f"{url}/v1/workers/{worker}/transcript")[2]
        assert [entry["content"] for entry in transcript["transcript"]["items"]] == ["hello"]
        assert all_events(url) == events
        assert daemon.stop() == 0


@pytest.mark.process
def test_kept_answers_survive_a_checkpoint_and_a_clean_restart(tmp_path):
    root = tmp_path / "root"
    with serve_fs(root) as daemon:
        url = daemon.base_url
        _, _, first = request_json("POST", url + "/v1/workers", CREATE, keyed("create-1"))
        worker = first["worker"]["worker_id"]
        _, _, sent = request_json("POST", f"{url}/v1/workers/{worker}/input", INPUT, keyed("in-1"))
        assert daemon.stop() == 0  # the last checkpoint: everything is in the files, the log is empty
    kept = [json.loads(line) for line in (runtime_dir(root) / "idempotency.jsonl").read_text().splitlines()]
    assert [record["key"] for record in kept] == ["create-1", "in-1"]
    assert json.loads(kept[0]["body"]) == first
    assert [p.read_bytes() for p in (runtime_dir(root) / "log").iterdir()] == [b""]
    with serve_fs(root) as daemon:
        url = daemon.base_url
        status, headers, again = request_json("POST", url + "/v1/workers", CREATE, keyed("create-1"))
        assert (status, again, headers.get("Idempotent-Replayed")) == (200, first, "true")
        status, headers, again = request_json("POST", f"{url}/v1/workers/{worker}/input", INPUT, keyed("in-1"))
        assert (status, again, headers.get("Idempotent-Replayed")) == (200, sent, "true")
        assert counts(url) == (1, 1, 0, 0)
        assert daemon.stop() == 0


async def test_an_expired_answer_is_gone_after_a_restart_and_dropped_from_the_files(
    tmp_path, aiohttp_client, monkeypatch
):
    import runtimed.store.fs.checkpoint as fs_checkpoint

    monkeypatch.setattr(fs_checkpoint, "IDEMPOTENCY_COMPACT_SLACK", 0)
    root = tmp_path / "root"
    options = RuntimeOptions(limits=RuntimeLimits(idempotency_key_ttl_seconds=60))

    async def open_client() -> Any:
        runtime = await Runtime.open(FsStore(root, idempotency_ttl=60), options)
        return runtime, await aiohttp_client(create_app(runtime))

    runtime, client = await open_client()
    for key in ("old", "gone"):
        response = await client.post("/v1/workers", json=CREATE, headers=keyed(key))
        assert response.status == 200
    await client.close()
    await runtime.close()

    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 61)  # the Runtime's table and the checkpoint read it
    runtime, client = await open_client()
    assert runtime.kept_answers() == []
    response = await client.post("/v1/workers", json=CREATE, headers=keyed("old"))
    assert (response.status, "Idempotent-Replayed" in response.headers) == (200, False)
    assert (await response.json())["worker"]["worker_id"] == "worker-00000003"  # carried out again
    await client.close()
    await runtime.close()
    # The last checkpoint compacted the file: the expired answer is gone from disk too.
    lines = (runtime_dir(root) / "idempotency.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"trimmed": 2}
    assert [json.loads(line)["key"] for line in lines[1:]] == ["old"]
    runtime, client = await open_client()
    assert [answer.key for answer in runtime.kept_answers()] == ["old"]
    assert runtime.kept_answers()[0].kept_at >= now + 61
    await client.close()
    await runtime.close()


# --------------------------------------------------------------- deletion


@pytest.mark.process
def test_a_deleted_workers_files_are_gone_when_the_answer_is_sent_and_stay_gone(tmp_path):
    root = tmp_path / "root"
    with serve_fs(root) as daemon:
        url = daemon.base_url
        first = request_json("POST", url + "/v1/workers", CREATE)[2]["worker"]["worker_id"]
        worker = request_json("POST", url + "/v1/workers", CREATE)[2]["worker"]["worker_id"]
        request_json("POST", f"{url}/v1/workers/{worker}/input", INPUT)
        request_json("POST", f"{url}/v1/workers/{worker}/stop")
        directory = worker_dir(root, worker)
        wait_for(lambda: (directory / "transcript.jsonl").exists(), "the checkpoint to write the worker's files")
        status, _, deleted = request_json("DELETE", f"{url}/v1/workers/{worker}", None, keyed("delete-1"))
        assert (status, deleted["deleted"]["worker_id"]) == (200, worker)
        assert not directory.exists()  # gone when the answer is sent, not a checkpoint later
        assert worker_dir(root, first).is_dir()
        events = all_events(url)
        assert events[-1]["kind"] == "worker_deleted"
        daemon.stop(signal.SIGKILL)
    with serve_fs(root) as daemon:
        url = daemon.base_url
        assert request_json("GET", f"{url}/v1/workers/{worker}")[0] == 404
        assert not directory.exists()
        assert counts(url) == (1, 1, 0, 0)
        assert all_events(url) == events  # the records that name it stay, ids dense
        status, headers, again = request_json("DELETE", f"{url}/v1/workers/{worker}", None, keyed("delete-1"))
        assert (status, again, headers.get("Idempotent-Replayed")) == (200, deleted, "true")
        # Its id is never given again, though it was the newest worker and its files are gone.
        status, _, created = request_json("POST", url + "/v1/workers", CREATE)
        assert (status, created["worker"]["worker_id"]) == (200, "worker-00000003")
        assert daemon.stop() == 0
    with serve_fs(root) as daemon:  # from the checkpoint files alone
        url = daemon.base_url
        assert request_json("GET", f"{url}/v1/workers/{worker}")[0] == 404
        assert [w["worker_id"] for w in request_json("GET", url + "/v1/workers")[2]["workers"]] == [
            first,
            "worker-00000003",
        ]
        assert request_json("POST", url + "/v1/workers", CREATE)[2]["worker"]["worker_id"] == "worker-00000004"
        assert daemon.stop() == 0


@pytest.mark.process
@pytest.mark.parametrize("step", ["deletion_checkpoint", "worker_removal"])
async def test_a_crash_before_a_deleted_workers_files_were_removed_is_finished_at_the_next_start(tmp_path, step):
    """Killed after the ``worker_deleted`` line is in the log: before the checkpoint that
    deletes the worker has its marker, or after it and before the directory is removed."""
    root = tmp_path / "root"
    daemon = serve_fs(root, {"RUNTIMED_TEST_PAUSE_AT": step}).start()
    try:
        url = daemon.base_url
        worker = request_json("POST", url + "/v1/workers", CREATE)[2]["worker"]["worker_id"]
        request_json("POST", f"{url}/v1/workers/{worker}/stop")
        directory = worker_dir(root, worker)
        await wait_until(lambda: (directory / "worker.json").exists(), CHECKPOINT_WAIT_S, "the worker's files")
        async with aiohttp.ClientSession() as session:
            deleting = asyncio.create_task(session.delete(f"{url}/v1/workers/{worker}"))
            await wait_until(lambda: f"crash point: {step}" in daemon.stderr, 30, f"crash point {step}")
            assert not deleting.done()  # the answer waits for the files to be gone
            daemon.process.send_signal(signal.SIGKILL)
            with pytest.raises(aiohttp.ClientError):
                await asyncio.wait_for(deleting, 10)
    finally:
        daemon.close()
    assert directory.is_dir()
    segments = sorted((runtime_dir(root) / "log").glob("*.jsonl"))
    log_lines = [json.loads(line) for path in segments for line in path.read_bytes().splitlines()]
    assert [record["deleted"] for record in log_lines if "deleted" in record] == [[worker]]

    with serve_fs(root) as daemon:
        url = daemon.base_url
        assert not directory.exists()  # finished before the daemon listens
        assert request_json("GET", f"{url}/v1/workers/{worker}")[0] == 404
        assert counts(url) == (0, 0, 0, 0)
        assert [event["kind"] for event in all_events(url)][-1] == "worker_deleted"
        assert request_json("POST", url + "/v1/workers", CREATE)[2]["worker"]["worker_id"] == "worker-00000002"
        diagnostics = request_json("GET", url + "/v1/diagnostics")[2]["diagnostics"]
        assert not [d for d in diagnostics if d["severity"] == "warning"]
        if step == "worker_removal":
            assert f"worker {worker} was deleted; a crash came before its files were removed" in daemon.stderr
        assert daemon.stop() == 0
