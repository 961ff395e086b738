"""The fs store's write-ahead log: its lines, its replay, its checkpoints, crashes at each step,
and the upgrade of a root written before it."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import os
import shutil
import signal
import time
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import runtimed.store.fs.store as fs_store
from runtimed.domain.catalog import (
    AssistantIntent,
    BuiltinProfile,
    CapabilityRequest,
    CreateWorkerRequest,
    RuntimeDefaultProfile,
    TaskIntent,
)
from runtimed.domain.errors import StoreCorrupt, StoreIo
from runtimed.domain.execution import AgentInfo, ExecutionState
from runtimed.domain.idempotency import KeptAnswer
from runtimed.domain.identity import WorkerRef
from runtimed.domain.interaction import InputKind, WorkerInput
from runtimed.domain.management import RuntimeLimits, RuntimeOptions, RuntimeStatus
from runtimed.domain.observation import EventKind, RuntimeEvent
from runtimed.runtime import IdempotencyClaim, Runtime
from runtimed.store import Change
from runtimed.store.fs import FsStore, wal
from runtimed.store.fs.checkpoint import decode_marker, encode_marker
from runtimed.store.fs.commit import CommitRecord, fold

from .helpers import FakeBackend, crash, reads, run_turn, wait_until
from .process import RuntimedProcess, request_json

FIXTURES = Path(__file__).with_name("fixtures")
TASK = CreateWorkerRequest(TaskIntent("ship it"), RuntimeDefaultProfile())
ECHO = CreateWorkerRequest(
    AssistantIntent(), BuiltinProfile("builtin:echo"), requested_capabilities=(CapabilityRequest("read"),)
)


def user(content: str) -> WorkerInput:
    return WorkerInput(InputKind.USER, content)


async def open_runtime(root: Path, **limits: int) -> Runtime:
    options = RuntimeOptions(limits=RuntimeLimits(**limits))
    return await Runtime.open(FsStore(root, options.limits.observation_backlog), options)


def runtime_dir(root: Path) -> Path:
    (directory,) = (root / "runtimes").iterdir()
    return directory


def segments(root: Path) -> list[Path]:
    return sorted((runtime_dir(root) / "log").glob("*.jsonl"))


def log_records(root: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in segments(root) for line in path.read_bytes().splitlines()]


def marker(root: Path) -> dict[str, Any]:
    return json.loads((runtime_dir(root) / "checkpoint.json").read_text())


def files_of(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != "runtimed.lock"}


def checkpoint_now(runtime: Runtime) -> None:
    """Write the pending checkpoint from the test (the timed ones are off)."""
    store = runtime._store
    assert isinstance(store, FsStore)
    assert store._checkpoint(*store._take_pending())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture(autouse=True)
def no_timed_checkpoints(monkeypatch):
    """Checkpoints only at close or when a test asks: the log keeps what a test put there."""
    import runtimed.store.fs.store as fs_store

    monkeypatch.setattr(fs_store, "CHECKPOINT_SECONDS", 3600.0)


async def busy(root: Path) -> Runtime:
    """A runtime with something of everything: workers, inputs, a stop, observations with and
    without an event, diagnostics, an executing worker with a turn done and one open."""
    runtime = await open_runtime(root, observation_backlog=4)
    backend = FakeBackend(runtime)
    runtime.attach(backend)
    first = await runtime.create_worker(TASK)
    agent = (await runtime.create_worker(ECHO)).worker_ref
    await runtime.update_execution(agent, state=ExecutionState.IDLE, pid=7, agent=AgentInfo("echo", "1"))
    for i in range(6):
        await runtime.send_input(first.worker_ref, user(f"m{i} héllo"))
    await runtime.send_input(agent, user("a"))
    await runtime.send_input(agent, user("b"))
    await run_turn(runtime, agent)
    await runtime.begin_turn(agent)
    await runtime.observe(first.worker_ref, "text_delta", {"text": "Hi"})
    await runtime.stop_worker(first.worker_ref, "done")
    await runtime.create_worker(TASK)
    return runtime


# ---------------------------------------------------------------- the lines


def test_every_field_of_a_change_has_a_codec_in_the_log():
    assert list(wal.CHANGE_FIELDS) == [f.name for f in dataclasses.fields(Change)]


async def test_log_lines_are_json_with_a_checksum_and_consecutive_lsns(root):
    runtime = await busy(root)
    await crash(runtime)
    raw = [line for path in segments(root) for line in path.read_bytes().splitlines()]
    records = [json.loads(line) for line in raw]  # what jq reads
    assert [r["lsn"] for r in records] == list(range(1, len(records) + 1))
    for line, record in zip(raw, records, strict=True):
        assert line.startswith(b'{"crc":"%s","lsn":' % record["crc"].encode())
        assert int(record["crc"], 16) == zlib.crc32(line[len(b'{"crc":"00000000",') :])
    created = [r for r in records if r.get("event", {}).get("kind") == "worker_created"]
    assert created[0]["workers"][0]["request"]["intent"] == {"kind": "task", "objective": "ship it"}


async def test_a_flush_is_one_write_and_one_fsync_however_many_workers_it_touches(root, monkeypatch):
    runtime = await open_runtime(root)
    workers = [await runtime.create_worker(TASK) for _ in range(16)]
    store = runtime._store
    calls: list[str] = []
    real_fsync, real_write = os.fsync, os.write
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "write", lambda fd, data: (calls.append("write"), real_write(fd, data))[1])
    flushes = store.flushes
    await asyncio.gather(*(runtime.send_input(w.worker_ref, user("x")) for w in workers))
    monkeypatch.undo()
    assert calls == ["write", "fsync"] * (store.flushes - flushes)
    assert store.flushes - flushes < 16
    await runtime.close()


# --------------------------------------------------------------- replay


async def test_a_restart_replays_the_log_tail_exactly(root):
    runtime = await busy(root)
    before = reads(runtime)
    assert marker(root)["lsn"] == 0  # nothing checkpointed: everything is in the log only
    await crash(runtime)

    restored = await open_runtime(root, observation_backlog=4)
    assert reads(restored) == before
    execution = restored.worker_detail(restored.worker_ref("worker-00000002")).execution
    assert execution is not None and (execution.open_turn, execution.delivered_sequence) == (2, 2)
    await restored.close()
    assert [p.read_bytes() for p in segments(root)] == [b""]
    assert marker(root)["lsn"] == wal.segment_lsn(segments(root)[0].name) - 1
    again = await open_runtime(root, observation_backlog=4)
    assert reads(again) == before  # from the checkpoint alone this time
    await again.close()


async def test_a_restart_after_a_checkpoint_replays_only_what_follows_it(root):
    runtime = await busy(root)
    checkpoint_now(runtime)
    covered = marker(root)["lsn"]
    for i in range(3):
        await runtime.send_input(runtime.worker_ref("worker-00000003"), user(f"after {i}"))
    await runtime.observe(runtime.worker_ref("worker-00000003"), "log", {"n": 1})
    before = reads(runtime)
    await crash(runtime)
    assert covered > 0 and len(log_records(root)) > covered

    restored = await open_runtime(root, observation_backlog=4)
    assert reads(restored) == before
    assert len(restored._store._pending) == 4  # replayed, for the next checkpoint
    await restored.close()


async def test_a_checkpoint_whose_marker_never_moved_is_cut_back_and_replayed(root):
    runtime = await busy(root)
    checkpoint_now(runtime)
    old_marker = (runtime_dir(root) / "checkpoint.json").read_bytes()
    for i in range(3):
        await runtime.send_input(runtime.worker_ref("worker-00000003"), user(f"after {i}"))
    await runtime.create_worker(TASK)
    checkpoint_now(runtime)
    before = reads(runtime)
    await crash(runtime)
    # As if the daemon died after the checkpoint's files were written, before its marker.
    (runtime_dir(root) / "checkpoint.json").write_bytes(old_marker)

    restored = await open_runtime(root, observation_backlog=4)
    assert reads(restored) == before
    assert not [d for d in restored.diagnostics() if d.severity.value == "warning"]
    await restored.close()


async def test_a_marker_that_points_past_the_log_is_refused(root):
    runtime = await busy(root)
    await runtime.close()
    record = marker(root)
    record["lsn"] += 5
    (runtime_dir(root) / "checkpoint.json").write_text(json.dumps(record))
    before = files_of(root)
    with pytest.raises(StoreCorrupt) as caught:
        await open_runtime(root)
    assert str(runtime_dir(root) / "checkpoint.json") in caught.value.message
    assert "but the log" in caught.value.message
    assert files_of(root) == before


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("flip_a_byte", "line 3 fails its checksum"),
        ("drop_a_line", "line 3 has LSN 4 where 3 was expected"),
        ("not_a_record", "line 3 is not a log record"),
        ("torn_in_the_middle", "line 3 fails its checksum"),
    ],
)
async def test_damage_in_the_middle_of_the_log_is_refused_naming_the_file(root, damage, problem):
    runtime = await busy(root)
    await crash(runtime)
    (segment,) = segments(root)
    lines = segment.read_bytes().splitlines(keepends=True)
    if damage == "flip_a_byte":
        line = bytearray(lines[2])
        line[40] ^= 0x01
        lines[2] = bytes(line)
    elif damage == "drop_a_line":
        del lines[2]
    elif damage == "not_a_record":
        lines[2] = b'{"lsn": 3}\n'
    elif damage == "torn_in_the_middle":
        lines[2] = lines[2][:30] + b"\n"
    segment.write_bytes(b"".join(lines))
    before = files_of(root)
    with pytest.raises(StoreCorrupt) as caught:
        await open_runtime(root)
    assert caught.value.message.startswith(f"restore {segment}: {problem}"), caught.value.message
    assert files_of(root) == before


@pytest.mark.parametrize("how", ["incomplete", "bad_checksum"])
async def test_a_log_that_ends_mid_record_is_repaired_with_a_warning(root, how):
    runtime = await busy(root)
    before = reads(runtime)
    await crash(runtime)
    (segment,) = segments(root)
    data = segment.read_bytes()
    if how == "incomplete":
        segment.write_bytes(data + b'{"crc":"12345678","lsn":999,"event":{"id"')
    else:
        lines = data.splitlines(keepends=True)
        lines[-1] = lines[-1].replace(b'"runtime_status":"running"', b'"runtime_status":"stopped"')
        segment.write_bytes(b"".join(lines))
        before = None  # the last change is the one set aside
    restored = await open_runtime(root, observation_backlog=4)
    if before is not None:
        assert reads(restored)[1:5] == before[1:5]
    (warning,) = [d for d in restored.diagnostics() if d.severity.value == "warning"]
    assert warning.code == "store.torn_tail" and str(segment) in warning.message
    assert segment.with_name(segment.name + ".corrupt").exists()
    await restored.close()
    await (await open_runtime(root)).close()  # and the next start is clean


async def test_a_missing_segment_is_refused(root, monkeypatch):
    monkeypatch.setattr(wal, "SEGMENT_BYTES", 1024)
    runtime = await busy(root)
    await crash(runtime)
    paths = segments(root)
    assert len(paths) >= 3
    paths[1].unlink()
    with pytest.raises(StoreCorrupt) as caught:
        await open_runtime(root)
    assert str(paths[2]) in caught.value.message and "a segment is missing" in caught.value.message


async def test_a_new_segment_that_cannot_be_created_fails_only_its_flush(root, monkeypatch):
    runtime = await open_runtime(root)
    ref = (await runtime.create_worker(TASK)).worker_ref
    for i in range(3):
        await runtime.send_input(ref, user(f"acked-{i}"))
    real_open = os.open

    def no_room_for_a_segment(path, flags, *args, **kwargs):
        if flags & os.O_EXCL and Path(path).parent.name == "log":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(wal, "SEGMENT_BYTES", 1)  # the next flush starts a new segment …
    monkeypatch.setattr(os, "open", no_room_for_a_segment)  # … which cannot be created
    with pytest.raises(StoreIo) as caught:
        await runtime.send_input(ref, user("fails"))
    assert caught.value.code == "store_io" and "No space left on device" in caught.value.message
    monkeypatch.setattr(os, "open", real_open)
    await crash(runtime)
    restored = await open_runtime(root)  # every acknowledged change is there
    assert [e.content for e in restored.transcript(ref, 0, 256).items] == ["acked-0", "acked-1", "acked-2"]
    await restored.send_input(ref, user("after"))
    await crash(restored)
    assert [r["lsn"] for r in log_records(root)] == list(range(1, len(log_records(root)) + 1))
    again = await open_runtime(root)
    assert [e.content for e in again.transcript(ref, 0, 256).items] == ["acked-0", "acked-1", "acked-2", "after"]
    await again.close()


async def test_a_failed_flush_after_a_new_segment_undoes_only_its_own_lines(root, monkeypatch):
    runtime = await open_runtime(root)
    ref = (await runtime.create_worker(TASK)).worker_ref
    for i in range(3):
        await runtime.send_input(ref, user(f"acked-{i}"))
    real_open = os.open

    def no_room_for_a_segment(path, flags, *args, **kwargs):
        if flags & os.O_EXCL and Path(path).parent.name == "log":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(wal, "SEGMENT_BYTES", 1)
    monkeypatch.setattr(os, "open", no_room_for_a_segment)
    with pytest.raises(StoreIo):
        await runtime.send_input(ref, user("fails"))
    monkeypatch.setattr(os, "open", real_open)
    monkeypatch.setattr(wal, "SEGMENT_BYTES", 1 << 30)
    await runtime.send_input(ref, user("after"))  # in the same process: the log goes on densely
    before = reads(runtime)
    await crash(runtime)
    assert [r["lsn"] for r in log_records(root)] == list(range(1, len(log_records(root)) + 1))
    restored = await open_runtime(root)
    assert reads(restored) == before
    assert [e.content for e in restored.transcript(ref, 0, 256).items] == ["acked-0", "acked-1", "acked-2", "after"]
    await restored.close()


async def test_checkpoints_remove_the_segments_they_cover_and_restore_reads_only_the_tail(root, monkeypatch):
    monkeypatch.setattr(wal, "SEGMENT_BYTES", 2048)
    runtime = await open_runtime(root)
    worker = await runtime.create_worker(TASK)
    for round_ in range(5):
        for i in range(20):
            await runtime.send_input(worker.worker_ref, user(f"r{round_} m{i}"))
        checkpoint_now(runtime)
        assert len(segments(root)) <= 2, [p.name for p in segments(root)]
    before = reads(runtime)
    await crash(runtime)
    assert wal.segment_lsn(segments(root)[0].name) > 50  # the history is gone from the log
    restored = await open_runtime(root)
    assert reads(restored) == before
    await restored.close()
    assert [p.read_bytes() for p in segments(root)] == [b""]  # a clean close leaves nothing to replay


async def test_a_failed_checkpoint_is_retried_and_loses_nothing(root, monkeypatch):
    import runtimed.store.fs.files as fs_files

    runtime = await busy(root)
    before = reads(runtime)
    real = fs_files.write_all

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fs_files, "write_all", full)
    store = runtime._store
    assert not store._checkpoint(*store._take_pending())
    assert "No space left on device" in (await store.check_writable() or "")
    assert marker(root)["lsn"] == 0 and store._pending
    monkeypatch.setattr(fs_files, "write_all", real)
    checkpoint_now(runtime)
    assert await store.check_writable() is None
    await crash(runtime)
    restored = await open_runtime(root, observation_backlog=4)
    assert reads(restored) == before
    await restored.close()


async def test_a_checkpoint_whose_marker_fails_retries_only_the_marker(root, monkeypatch):
    runtime = await busy(root)
    store = runtime._store
    before = reads(runtime)
    real = FsStore._write_marker

    def no_room(self, checkpoint, lsn):
        raise OSError(errno.ENOSPC, "No space left on device", str(runtime_dir(root) / "checkpoint.json.tmp"))

    monkeypatch.setattr(FsStore, "_write_marker", no_room)
    changes, lsn, size = store._take_pending()
    assert not store._checkpoint(changes, lsn, size)  # the files are written, the marker is not
    assert "No space left on device" in (await store.check_writable() or "")
    assert marker(root)["lsn"] == 0 and len(segments(root)) == 1
    monkeypatch.setattr(FsStore, "_write_marker", real)
    assert store._checkpoint(*store._take_pending())  # the retry writes the marker alone
    assert marker(root)["lsn"] == lsn and await store.check_writable() is None
    events = [json.loads(line)["id"] for line in (runtime_dir(root) / "events.jsonl").read_text().splitlines()]
    assert events == list(range(1, len(events) + 1))  # each record once
    transcript = runtime_dir(root) / "workers" / store.worker_dir("worker-00000001").name / "transcript.jsonl"
    assert len(transcript.read_text().splitlines()) == 6
    await crash(runtime)
    restored = await open_runtime(root, observation_backlog=4)
    assert reads(restored) == before
    await restored.close()


async def test_the_checkpoint_thread_retries_a_marker_it_owes_with_nothing_new_pending(root, monkeypatch):
    runtime = await busy(root)
    store = runtime._store
    failures = []
    real = FsStore._write_marker

    def fails_once(self, checkpoint, lsn):
        if not failures:
            failures.append(lsn)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, checkpoint, lsn)

    monkeypatch.setattr(FsStore, "_write_marker", fails_once)
    monkeypatch.setattr(fs_store, "CHECKPOINT_RETRY_SECONDS", 0.05)
    monkeypatch.setattr(fs_store, "CHECKPOINT_SECONDS", 0.0)
    with store._pending_changed:
        store._pending_changed.notify()
    await wait_until(lambda: bool(failures) and marker(root)["lsn"] == failures[0], what="the marker, retried")
    await wait_until(lambda: store.checkpoints == 1, what="the checkpoint to finish")
    assert await store.check_writable() is None
    await runtime.close()
    restored = await open_runtime(root, observation_backlog=4)
    assert len(restored.list_workers()) == 3
    await restored.close()


@pytest.mark.parametrize(
    ("step", "error"),
    [
        ("compact", json.JSONDecodeError("Expecting value", "{", 0)),  # a damaged observation line
        ("_after_write", RuntimeError("a bug")),  # the files written, the bookkeeping not
    ],
)
async def test_an_unexpected_error_stops_checkpoints_but_not_commits(root, monkeypatch, caplog, step, error):
    import runtimed.store.fs.checkpoint as fs_checkpoint

    runtime = await busy(root)
    store = runtime._store
    ref = runtime.worker_ref("worker-00000003")

    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(fs_checkpoint.CheckpointFiles, step, fails)
    monkeypatch.setattr(fs_store, "CHECKPOINT_SECONDS", 0.0)
    with caplog.at_level("ERROR", logger="runtimed.store"):
        with store._pending_changed:
            store._pending_changed.notify()
        await wait_until(store.check_writable, what="readiness to report the failed checkpoint")
    problem = await store.check_writable()
    assert problem.startswith("the last checkpoint failed: ") and str(error) in problem
    assert "Traceback" in caplog.text and type(error).__name__ in caplog.text
    assert store._checkpointer.is_alive()
    for i in range(3):  # acknowledged by the log all the same
        await runtime.send_input(ref, user(f"after {i}"))
    assert (await store.check_writable()) == problem
    before = reads(runtime)
    await runtime.close()
    monkeypatch.undo()
    restored = await open_runtime(root, observation_backlog=4)
    assert reads(restored) == before
    assert await restored._store.check_writable() is None
    await restored.close()


async def test_a_checkpoint_in_progress_never_holds_up_a_flush(root, monkeypatch):
    import threading

    runtime = await busy(root)
    store = runtime._store
    writing, release = threading.Event(), threading.Event()
    real = FsStore._write_marker

    def slow_marker(self, checkpoint, lsn):
        writing.set()
        release.wait(10)  # bounded: the test releases it
        real(self, checkpoint, lsn)

    monkeypatch.setattr(FsStore, "_write_marker", slow_marker)
    changes, lsn, size = store._take_pending()
    checkpointing = threading.Thread(target=store._checkpoint, args=(changes, lsn, size))
    checkpointing.start()
    try:
        await wait_until(writing.is_set, what="the checkpoint to reach its marker")
        ack = await asyncio.wait_for(runtime.send_input(runtime.worker_ref("worker-00000003"), user("meanwhile")), 5)
        assert ack.transcript_sequence == 1  # made durable by the log while the checkpoint waits
        assert marker(root)["lsn"] == 0
    finally:
        release.set()
        checkpointing.join(10)
    assert marker(root)["lsn"] == lsn
    await runtime.close()


# --------------------------------------------------------------- upgrade


def copy_fixture(root: Path) -> Path:
    shutil.copytree(FIXTURES / "fs-v2-root", root)
    return runtime_dir(root)


V2_READS = {
    "workers": [("worker-00000001", "running", 3), ("worker-00000002", "stopped", 1)],
    "transcript": ["m0", "m1", "m2"],
    "events": 8,
    "observation_sequence": 10,
}


def fixture_reads(runtime: Runtime) -> dict[str, Any]:
    return {
        "workers": [(w.worker_id, w.status.value, w.transcript_len) for w in runtime.list_workers()],
        "transcript": [e.content for e in runtime.transcript(runtime.worker_ref("worker-00000001")).items],
        "events": len(runtime.events(1, 256).events),
        "observation_sequence": runtime.observation_sequence,
    }


@pytest.mark.parametrize("version", [2, 1])
async def test_a_root_written_before_the_log_opens_and_is_upgraded(root, version):
    directory = copy_fixture(root)
    if version == 1:
        (directory / "commits.jsonl").unlink()
        snapshot = json.loads((directory / "runtime.json").read_text())
        snapshot["schema_version"] = 1
        (directory / "runtime.json").write_text(json.dumps(snapshot, indent=1))

    runtime = await open_runtime(root, observation_backlog=2)
    assert fixture_reads(runtime) == V2_READS
    assert [o.data for o in runtime.replay_observations(runtime.worker_ref("worker-00000001"), 9)] == [{"n": 4}]
    await runtime.send_input(runtime.worker_ref("worker-00000001"), user("after the upgrade"))
    await crash(runtime)  # the new input is in the log only

    assert json.loads((directory / "runtime.json").read_text())["schema_version"] == 3
    assert not (directory / "commits.jsonl").exists()
    assert marker(root)["lsn"] == 0 and marker(root)["event_id"] == 8
    restored = await open_runtime(root, observation_backlog=2)
    assert fixture_reads(restored)["transcript"] == ["m0", "m1", "m2", "after the upgrade"]
    await restored.close()


async def test_an_upgrade_cut_short_after_its_marker_is_finished_at_the_next_start(root):
    directory = copy_fixture(root)
    await (await open_runtime(root, observation_backlog=2)).close()
    # As if it died after writing the marker: runtime.json still at 2, commits.jsonl still there.
    shutil.copy(FIXTURES / "fs-v2-root" / directory.relative_to(root) / "commits.jsonl", directory)
    snapshot = json.loads((directory / "runtime.json").read_text())
    snapshot["schema_version"] = 2
    (directory / "runtime.json").write_text(json.dumps(snapshot, indent=1))

    runtime = await open_runtime(root, observation_backlog=2)
    assert fixture_reads(runtime) == V2_READS
    await runtime.close()
    assert json.loads((directory / "runtime.json").read_text())["schema_version"] == 3
    assert not (directory / "commits.jsonl").exists()


# ------------------------------------------------------ crashes of a real daemon

CREATE = {"intent": {"kind": "task", "objective": "x"}, "profile": {"kind": "runtime_default"}}


async def _drive(base_url: str, acked: dict[str, list[dict[str, Any]]], seed: int) -> None:
    """Create a worker, then send it inputs, recording every acknowledged one, until the daemon
    goes away (bounded: 2,000 inputs)."""
    async with aiohttp.ClientSession() as session:
        try:
            async with session.post(base_url + "/v1/workers", json=CREATE) as response:
                worker = (await response.json())["worker"]["worker_id"]
            acked[worker] = []
            for i in range(2000):
                content = f"{seed}-{i}"
                async with session.post(
                    f"{base_url}/v1/workers/{worker}/input", json={"kind": "user", "content": content}
                ) as response:
                    if response.status != 200:
                        continue  # the injected failure: never acknowledged
                    ack = (await response.json())["ack"]
                acked[worker].append({"content": content, **ack})
        except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError):
            return  # killed mid-request: that one was never acknowledged


async def kill_at(root: Path, step: str, **env: str) -> dict[str, list[dict[str, Any]]]:
    """Load a daemon until its store reaches ``step`` (``tests/slow_disk.py``), SIGKILL it there;
    the inputs it acknowledged."""
    environment = {**os.environ, "RUNTIMED_TEST_PAUSE_AT": step, **env}
    daemon = RuntimedProcess(
        "--bind", "127.0.0.1:0", "--store", "fs", "--fs-root", str(root), env=environment, slow_flush_ms=0
    ).start()
    acked: dict[str, list[dict[str, Any]]] = {}
    try:
        clients = [asyncio.create_task(_drive(daemon.base_url, acked, seed)) for seed in range(4)]
        await wait_until(lambda: f"crash point: {step}" in daemon.stderr, timeout=30, what=f"crash point {step}")
        daemon.process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(asyncio.gather(*clients), 10)
    finally:
        daemon.close()
    return acked


async def check_acknowledged(root: Path, acked: dict[str, list[dict[str, Any]]]) -> Runtime:
    runtime = await open_runtime(root)
    total = 0
    for worker_id, acks in acked.items():
        transcript: list = []
        while True:
            page = runtime.transcript(runtime.worker_ref(worker_id), len(transcript), 256)
            transcript += page.items
            if page.next_start is None:
                break
        for ack in acks:
            entry = transcript[ack["transcript_sequence"] - 1]
            assert (entry.content, entry.event_id) == (ack["content"], ack["event_id"])
        total += len(acks)
    assert total > 0
    return runtime


@pytest.mark.process
async def test_a_kill_during_a_checkpoint_loses_nothing(root):
    acked = await kill_at(root, "checkpoint", RUNTIMED_TEST_CHECKPOINT_SECONDS="0.2")
    events = (runtime_dir(root) / "events.jsonl").read_bytes().splitlines()
    assert len(events) > marker(root)["event_id"]  # the files ran ahead of their marker
    runtime = await check_acknowledged(root, acked)
    assert not [d for d in runtime.diagnostics() if d.code == "store.uncommitted_discarded"]
    await runtime.close()


@pytest.mark.process
async def test_a_kill_while_removing_covered_segments_loses_nothing(root):
    acked = await kill_at(
        root, "segment_removal", RUNTIMED_TEST_CHECKPOINT_SECONDS="0.5", RUNTIMED_TEST_SEGMENT_BYTES="4096"
    )
    left = segments(root)
    assert len(left) >= 2 and wal.segment_lsn(left[1].name) - 1 <= marker(root)["lsn"]  # one covered is left
    runtime = await check_acknowledged(root, acked)
    assert segments(root)[0] not in left[:1]  # restore removed it
    await runtime.close()


@pytest.mark.process
async def test_a_kill_while_a_failed_flush_is_cut_back_loses_nothing(root):
    acked = await kill_at(root, "truncate", RUNTIMED_TEST_FAIL_FLUSH="20")
    runtime = await check_acknowledged(root, acked)
    await runtime.close()


@pytest.mark.process
def test_a_flipped_byte_in_the_log_stops_the_daemon_with_exit_1_naming_the_file(root):
    from .process import run_runtimed

    with RuntimedProcess("--bind", "127.0.0.1:0", "--store", "fs", "--fs-root", str(root)) as daemon:
        worker = request_json("POST", daemon.base_url + "/v1/workers", CREATE)[2]["worker"]["worker_id"]
        for i in range(3):
            request_json("POST", f"{daemon.base_url}/v1/workers/{worker}/input", {"kind": "user", "content": f"{i}"})
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(5)
    (segment,) = segments(root)
    data = bytearray(segment.read_bytes())
    second = data.index(b"\n") + 1
    data[second + 40] ^= 0x02
    segment.write_bytes(bytes(data))
    result = run_runtimed("serve", "--bind", "127.0.0.1:0", "--store", "fs", "--fs-root", str(root))
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"runtimed: restore {segment}: line 2 fails its checksum (the line was changed or damaged)"
    )
    assert "Traceback" not in result.stderr


# ------------------------------------------------- §11: kept answers and deletions


def render_ok(result: Any) -> tuple[int, bytes, tuple[str, ...]]:
    return 200, json.dumps({"ok": str(result)}).encode(), ('299 runtimed "unknown field: x"',)


async def keyed(runtime: Runtime, key: str, call: Any) -> Any:
    """Carry out ``call(claim)`` under ``key``, as the web layer does; the kept answer."""
    claim = await runtime.claim_idempotency_key(key, f"fingerprint of {key}", render_ok)
    assert isinstance(claim, IdempotencyClaim)
    try:
        await call(claim)
    finally:
        runtime.release_idempotency_key(claim)
    return claim.kept


def test_a_log_line_carries_kept_answers_and_deletions_and_reads_them_back():
    ref = WorkerRef("runtime-fs-0000000000000001", "worker-00000002")
    answers = (
        KeptAnswer("k-1", "f" * 64, 200, '{"worker":"héllo"}'.encode(), ('299 runtimed "x"',), 1795000000.125),
        KeptAnswer("k-2", "e" * 64, 201, b"\xff\xfenot utf-8", (), 1795000001.0),
    )
    event = RuntimeEvent(9, EventKind.WORKER_DELETED, "worker worker-00000002 deleted", ref)
    change = Change(event, RuntimeStatus.RUNNING, idempotency=answers, deleted=(ref.worker_id,))
    context = wal.Context()
    context.requests[ref.worker_id] = None
    line = wal.frame(wal.dumps(wal.encode_change(change, 7, context)))
    assert wal.check(line.rstrip(b"\n")) is None
    record = json.loads(line)
    assert record["deleted"] == [ref.worker_id]
    assert record["idempotency"][0]["body"] == '{"worker":"héllo"}'  # readable with jq
    assert "body" not in record["idempotency"][1] and "warnings" not in record["idempotency"][1]
    decoded = wal.decode_change(record, context)
    assert decoded == change
    assert ref.worker_id not in context.requests  # a later line naming it is refused
    with pytest.raises(ValueError, match="deletes worker worker-00000002, which no line created"):
        wal.decode_change(record, context)


def test_the_marker_carries_the_count_of_kept_answers_and_never_goes_back():
    committed = CommitRecord(event_id=4, idempotency=3)
    record = json.loads(encode_marker(5, committed))
    assert record["idempotency"] == 3
    assert decode_marker(record) == (5, committed)
    del record["idempotency"]  # a marker written before §11
    assert decode_marker(record)[1].idempotency == 0
    with pytest.raises(ValueError, match="idempotency 2 goes back from 3"):
        fold(committed, {**record, "idempotency": 2})


async def test_a_marker_written_before_kept_answers_still_opens(root):
    runtime = await busy(root)
    before = reads(runtime)
    await runtime.close()
    record = marker(root)
    assert record["schema_version"] == 2 and "idempotency" not in record  # none kept: left out
    record["schema_version"] = 1
    (runtime_dir(root) / "checkpoint.json").write_text(json.dumps(record))
    restored = await open_runtime(root, observation_backlog=4)
    assert reads(restored) == before and restored.kept_answers() == []
    await restored.close()


async def test_kept_answers_come_back_from_the_checkpoint_and_the_log_and_survive_a_compaction(root, monkeypatch):
    import runtimed.store.fs.checkpoint as fs_checkpoint

    runtime = await busy(root)
    worker = runtime.worker_ref("worker-00000003")
    created = await keyed(runtime, "create", lambda claim: runtime.create_worker(TASK, claim=claim))
    checkpoint_now(runtime)
    assert len((runtime_dir(root) / "idempotency.jsonl").read_bytes().splitlines()) == marker(root)["idempotency"] == 1
    sent = await keyed(runtime, "input", lambda claim: runtime.send_input(worker, user("x"), claim=claim))
    kept = runtime.kept_answers()
    assert kept == [created, sent]
    await crash(runtime)  # "input" is in the log only

    restored = await open_runtime(root, observation_backlog=4)
    assert restored.kept_answers() == kept
    assert await restored.claim_idempotency_key("input", "fingerprint of input", render_ok) == sent
    # Compacted once the file holds more than twice its live answers: the count stays.
    monkeypatch.setattr(fs_checkpoint, "IDEMPOTENCY_COMPACT_SLACK", 0)
    assert sent.kept_at > created.kept_at
    later = (created.kept_at + sent.kept_at) / 2 + 86400  # "create" has expired, "input" not
    monkeypatch.setattr(time, "time", lambda: later)
    await restored.close()
    lines = (runtime_dir(root) / "idempotency.jsonl").read_bytes().splitlines()
    assert json.loads(lines[0]) == {"trimmed": 1} and len(lines) == 2
    assert marker(root)["idempotency"] == 2
    again = await open_runtime(root, observation_backlog=4)
    assert again.kept_answers() == [sent]
    await again.close()


async def test_kept_answers_past_the_marker_are_cut_back_and_a_missing_one_is_refused(root):
    runtime = await open_runtime(root)
    await keyed(runtime, "a", lambda claim: runtime.create_worker(TASK, claim=claim))
    checkpoint_now(runtime)
    old_marker = (runtime_dir(root) / "checkpoint.json").read_bytes()
    await keyed(runtime, "b", lambda claim: runtime.create_worker(TASK, claim=claim))
    checkpoint_now(runtime)
    kept = runtime.kept_answers()
    await crash(runtime)
    path = runtime_dir(root) / "idempotency.jsonl"
    whole = path.read_bytes()
    # As if the daemon died after the checkpoint's files were written, before its marker.
    (runtime_dir(root) / "checkpoint.json").write_bytes(old_marker)
    restored = await open_runtime(root)
    assert restored.kept_answers() == kept  # "b" from the log
    assert not [d for d in restored.diagnostics() if d.severity.value == "warning"]
    await crash(restored)
    assert path.read_bytes() == whole.splitlines(keepends=True)[0]  # cut back to the marker
    # An acknowledged answer missing from the file is corruption, refused naming the file.
    checkpointed = await open_runtime(root)
    await checkpointed.close()
    path.write_bytes(path.read_bytes().splitlines(keepends=True)[0])
    before = files_of(root)
    with pytest.raises(StoreCorrupt) as caught:
        await open_runtime(root)
    assert caught.value.path == str(path) and "acknowledged 2 kept answers" in caught.value.message
    assert files_of(root) == before


async def deleted_worker(root: Path, before_delete: Any = None) -> tuple[Runtime, WorkerRef, Path]:
    """The busy runtime, checkpointed, with its stopped worker deleted (under a key); that
    worker's directory. ``before_delete`` is called just before the delete."""
    runtime = await busy(root)
    ref = runtime.worker_ref("worker-00000001")
    checkpoint_now(runtime)
    directory = runtime._store.worker_dir(ref.worker_id)
    assert directory.is_dir()
    if before_delete is not None:
        before_delete()
    await keyed(runtime, "delete", lambda claim: runtime.delete_worker(ref, claim=claim))
    return runtime, ref, directory


def assert_deleted(runtime: Runtime, ref: WorkerRef, directory: Path) -> None:
    assert not directory.exists()
    assert [w.worker_ref.worker_id for w in runtime.list_workers()] == ["worker-00000002", "worker-00000003"]
    assert runtime.summary().worker_count == 2 and runtime.summary().stopped_worker_count == 0
    assert runtime.events(1, 256).events[-1].kind is EventKind.WORKER_DELETED
    assert [a.key for a in runtime.kept_answers()] == ["delete"]
    assert "worker-00000001" not in marker(directory.parents[3])["observations"]


async def test_a_deleted_worker_is_gone_from_the_files_and_from_memory_after_a_restart(root):
    runtime, ref, directory = await deleted_worker(root)
    assert not directory.exists()  # the delete's answer waited for the checkpoint that removed it
    before = reads(runtime)
    await crash(runtime)
    restored = await open_runtime(root, observation_backlog=4)
    assert reads(restored) == before
    assert_deleted(restored, ref, directory)
    assert (await restored.create_worker(TASK)).worker_ref.worker_id == "worker-00000004"
    await restored.close()


async def test_a_deletion_the_checkpoint_did_not_complete_is_replayed_and_finished_at_open(root, monkeypatch):
    def no_room(self, checkpoint, lsn):
        raise OSError(errno.ENOSPC, "No space left on device")

    runtime, ref, directory = await deleted_worker(root, lambda: monkeypatch.setattr(FsStore, "_write_marker", no_room))
    assert directory.is_dir()  # the checkpoint failed: answered all the same, the log has it
    before = reads(runtime)
    await crash(runtime)
    monkeypatch.undo()
    restored = await open_runtime(root, observation_backlog=4)
    assert_deleted(restored, ref, directory)  # removed before open returned
    assert reads(restored) == before
    await restored.close()


async def test_a_deleted_workers_directory_left_past_the_marker_is_removed_with_a_log_line(root, monkeypatch, caplog):
    runtime, ref, directory = await deleted_worker(
        root, lambda: monkeypatch.setattr(FsStore, "_remove_deleted", lambda self, checkpoint: None)
    )
    assert directory.is_dir() and "worker-00000001" not in marker(root)["observations"]
    await crash(runtime)
    monkeypatch.undo()
    with caplog.at_level("INFO", logger="runtimed.store"):
        restored = await open_runtime(root, observation_backlog=4)
    assert f"removed {directory}: worker {ref.worker_id} was deleted" in caplog.text
    assert_deleted(restored, ref, directory)
    await restored.close()


def assert_only_foreign_left(runtime: Runtime, ref: WorkerRef, directory: Path) -> None:
    """Deleted, but its directory left with the operator's file in it, and only that."""
    assert [p.name for p in directory.iterdir()] == ["notes.txt"]
    assert (directory / "notes.txt").read_text() == "mine"
    assert [w.worker_ref.worker_id for w in runtime.list_workers()] == ["worker-00000002", "worker-00000003"]
    assert runtime.events(1, 256).events[-1].kind is EventKind.WORKER_DELETED
    assert "worker-00000001" not in marker(directory.parents[3])["observations"]


async def test_deleting_a_worker_whose_directory_holds_a_foreign_file_leaves_only_that_file(root, caplog):
    def foreign_file():
        (runtime_dir(root) / "workers" / "id-776f726b65722d3030303030303031" / "notes.txt").write_text("mine")

    with caplog.at_level("WARNING", logger="runtimed.store"):
        runtime, ref, directory = await deleted_worker(root, foreign_file)
    assert_only_foreign_left(runtime, ref, directory)
    assert f"{directory} holds files runtimed did not write (notes.txt)" in caplog.text
    before = reads(runtime)
    await runtime.close()
    restored = await open_runtime(root, observation_backlog=4)  # a deletion never stops a start
    after = reads(restored)  # all but the diagnostics (the warning below is one more)
    assert after[1:5] == before[1:5] and after[6:] == before[6:]
    (warning,) = [d for d in restored.diagnostics() if d.severity.value == "warning"]
    assert warning.code == "store.foreign_files_kept"
    assert str(directory) in warning.message and "(notes.txt)" in warning.message
    assert_only_foreign_left(restored, ref, directory)
    assert (await restored.create_worker(TASK)).worker_ref.worker_id == "worker-00000004"
    await restored.close()


async def test_a_deleted_workers_directory_left_with_a_foreign_file_loses_only_runtimeds_files(root, monkeypatch):
    runtime, ref, directory = await deleted_worker(
        root, lambda: monkeypatch.setattr(FsStore, "_remove_deleted", lambda self, checkpoint: None)
    )
    await crash(runtime)  # as a crash after the marker, before the directory's removal, leaves it
    monkeypatch.undo()
    assert {"worker.json", "transcript.jsonl"} <= {p.name for p in directory.iterdir()}
    (directory / "notes.txt").write_text("mine")
    restored = await open_runtime(root, observation_backlog=4)
    assert_only_foreign_left(restored, ref, directory)
    (warning,) = [d for d in restored.diagnostics() if d.severity.value == "warning"]
    assert warning.code == "store.foreign_files_kept" and str(directory) in warning.message
    await restored.close()


async def test_a_log_line_that_deletes_a_running_worker_is_refused(root):
    runtime = await open_runtime(root)
    ref = (await runtime.create_worker(TASK)).worker_ref
    await crash(runtime)
    (segment,) = segments(root)
    event = RuntimeEvent(3, EventKind.WORKER_DELETED, f"worker {ref.worker_id} deleted", ref)
    context = wal.Context()
    context.requests[ref.worker_id] = None
    change = Change(event, RuntimeStatus.RUNNING, deleted=(ref.worker_id,))
    with segment.open("ab") as file:
        file.write(wal.frame(wal.dumps(wal.encode_change(change, len(log_records(root)) + 1, context))))
    before = files_of(root)
    with pytest.raises(StoreCorrupt) as caught:
        await open_runtime(root)
    assert caught.value.path == str(segment)
    assert "deletes worker worker-00000001, which is running" in caught.value.message
    assert files_of(root) == before
