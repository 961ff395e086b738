"""The filesystem store (contract §8): round trips, crash leftovers, corruption, write failures."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import threading
import time
from pathlib import Path

import pytest

from runtimed.domain.catalog import (
    AssistantIntent,
    BuiltinProfile,
    CapabilityRequest,
    ConfigBundleRef,
    CreateWorkerRequest,
    MountRef,
    RoleIntent,
    RuntimeDefaultProfile,
    TaskIntent,
    WorkerStatus,
    WorkspaceRef,
)
from runtimed.domain.errors import StoreCorrupt, StoreError, StoreIo, StoreMissing
from runtimed.domain.execution import AgentInfo, ExecutionState, ProcessExit, StopReason
from runtimed.domain.interaction import InputKind, WorkerInput
from runtimed.domain.management import RuntimeLimits, RuntimeOptions, RuntimeStatus
from runtimed.runtime import Runtime
from runtimed.store.fs import FsStore, hex_id
from runtimed.web.app import create_app

from .helpers import FakeBackend, crash, reads, run_turn, wait_until

TASK = CreateWorkerRequest(
    intent=TaskIntent("ship it"),
    profile=BuiltinProfile("builtin:coder"),
    requested_capabilities=(CapabilityRequest("read", "to read"),),
)
FULL = CreateWorkerRequest(
    intent=RoleIntent("reviewer", "review"),
    profile=RuntimeDefaultProfile(),
    config_bundle=ConfigBundleRef("bundle-1"),
    requested_capabilities=(CapabilityRequest("write"),),
    workspace_refs=(WorkspaceRef("repo", "git:main"),),
    mount_refs=(MountRef("data", "/srv/data"),),
)


def user(content: str) -> WorkerInput:
    return WorkerInput(InputKind.USER, content)


async def open_runtime(root: Path, runtime_id: str | None = None, **limits: int) -> Runtime:
    options = RuntimeOptions(runtime_id=runtime_id, limits=RuntimeLimits(**limits))
    return await Runtime.open(FsStore(root, options.limits.observation_backlog), options)


def iter_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def runtime_dir(root: Path) -> Path:
    (directory,) = (root / "runtimes").iterdir()
    return directory


def worker_dir(root: Path, worker_id: str) -> Path:
    return runtime_dir(root) / "workers" / hex_id(worker_id)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


def marker(root: Path) -> dict:
    return json.loads((runtime_dir(root) / "checkpoint.json").read_text())


def write_marker(root: Path, record: dict) -> None:
    (runtime_dir(root) / "checkpoint.json").write_text(json.dumps(record, indent=1))


def segments(root: Path) -> list[Path]:
    return sorted((runtime_dir(root) / "log").glob("*.jsonl"))


@pytest.fixture
def no_timed_checkpoints(monkeypatch):
    """Checkpoints only at close (or when a test asks): what the log holds stays in the log."""
    import runtimed.store.fs.store as fs_store

    monkeypatch.setattr(fs_store, "CHECKPOINT_SECONDS", 3600.0)


async def populated(root: Path) -> Runtime:
    runtime = await open_runtime(root)
    first = await runtime.create_worker(TASK)
    second = await runtime.create_worker(FULL)
    third = await runtime.create_worker(CreateWorkerRequest(AssistantIntent(), RuntimeDefaultProfile()))
    await runtime.send_input(first.worker_ref, user("héllo 🎉"))
    await runtime.send_input(first.worker_ref, WorkerInput(InputKind.SYSTEM, "be brief"))
    await runtime.send_input(second.worker_ref, user("review this"))
    await runtime.stop_worker(second.worker_ref, "done")
    await runtime.cancel_worker(third.worker_ref)
    await runtime.observe(first.worker_ref, "text_delta", {"text": "Hi"})
    return runtime


# ---------------------------------------------------------------- round trip


async def test_a_restarted_runtime_answers_every_read_as_before(root):
    runtime = await populated(root)
    before = reads(runtime)
    await runtime.close()

    restored = await open_runtime(root)
    assert reads(restored) == before
    assert restored.runtime_id.startswith("runtime-fs-")
    await restored.close()


async def test_sequences_continue_after_a_restart(root):
    runtime = await populated(root)
    observation_sequence = runtime.observation_sequence
    await runtime.close()

    restored = await open_runtime(root)
    worker = await restored.create_worker(TASK)
    assert worker.worker_id == "worker-00000004"
    assert worker.last_event_id == 10  # 9 events before it
    ack = await restored.send_input(restored.worker_ref("worker-00000001"), user("again"))
    assert (ack.transcript_sequence, ack.event_id) == (3, 11)
    assert restored.observation_sequence == observation_sequence + 1
    assert restored.diagnostics()[-1].id == len(restored.diagnostics())
    await restored.close()


async def test_a_stopped_runtime_stays_stopped_after_a_restart(root):
    runtime = await populated(root)
    await runtime.stop()
    await runtime.close()
    restored = await open_runtime(root)
    assert restored.summary().status is RuntimeStatus.STOPPED
    assert restored.worker_detail(restored.worker_ref("worker-00000001")).status is WorkerStatus.STOPPED
    await restored.start()
    await restored.close()
    again = await open_runtime(root)
    assert again.summary().status is RuntimeStatus.RUNNING
    await again.close()


async def test_observation_backlog_survives_a_restart_and_old_cursors_still_expire(root):
    runtime = await open_runtime(root, observation_backlog=4)
    worker = await runtime.create_worker(TASK)
    for i in range(15):  # enough to compact the file on disk too
        await runtime.send_input(worker.worker_ref, user(f"m{i}"))
    await runtime.close()
    restored = await open_runtime(root, observation_backlog=4)
    assert [o.data["content"] for o in restored.replay_observations(worker.worker_ref, 11)] == [
        "m11",
        "m12",
        "m13",
        "m14",
    ]
    from runtimed.domain.errors import CursorExpired

    with pytest.raises(CursorExpired) as caught:
        restored.replay_observations(worker.worker_ref, 3)
    assert caught.value.resume_from == 11
    await restored.close()


async def test_a_configured_id_is_used_then_kept(root):
    runtime = await open_runtime(root, runtime_id="runtime-a")
    await runtime.close()
    assert runtime_dir(root).name == hex_id("runtime-a")
    restored = await open_runtime(root)  # no id configured: reuse the one on disk
    assert restored.runtime_id == "runtime-a"
    await restored.close()


async def test_a_configured_id_that_differs_from_the_stored_one_is_refused(root):
    await (await open_runtime(root, runtime_id="runtime-a")).close()
    with pytest.raises(StoreCorrupt) as caught:
        await open_runtime(root, runtime_id="runtime-b")
    assert "runtime-a" in caught.value.message and "runtime-b" in caught.value.message


async def test_concurrent_requests_share_flushes(root):
    runtime = await open_runtime(root)
    worker = await runtime.create_worker(TASK)
    store = runtime._store
    flushes = store.flushes
    acks = await asyncio.gather(*(runtime.send_input(worker.worker_ref, user(f"m{i}")) for i in range(50)))
    assert sorted(a.transcript_sequence for a in acks) == list(range(1, 51))
    assert store.flushes - flushes < 50  # group commit: one flush served several requests
    await runtime.close()


async def test_the_files_follow_the_seed_layout(root):
    runtime = await populated(root)
    await runtime.close()
    directory = runtime_dir(root)
    assert directory.name == "id-" + runtime.runtime_id.encode().hex()
    # runtime.json is at schema version 3 since the store keeps a write-ahead log; worker.json at 1.
    assert json.loads((directory / "runtime.json").read_text())["schema_version"] == 3
    assert json.loads((worker_dir(root, "worker-00000001") / "worker.json").read_text())["schema_version"] == 1
    # A clean close checkpoints everything and leaves one empty segment past it.
    assert (marker(root)["event_id"], marker(root)["lsn"]) == (9, 10)
    assert [(p.name, p.read_bytes()) for p in segments(root)] == [("0000000000000011.jsonl", b"")]
    assert not (directory / "commits.jsonl").exists()
    assert [e["kind"] for e in iter_jsonl(directory / "events.jsonl")][:2] == ["runtime_started", "worker_created"]
    first = worker_dir(root, "worker-00000001")
    assert json.loads((first / "worker.json").read_text())["worker_ref"]["worker_id"] == "worker-00000001"
    assert [e["content"] for e in iter_jsonl(first / "transcript.jsonl")] == ["héllo 🎉", "be brief"]


async def test_a_worker_snapshot_holds_the_request_in_the_contracts_shape(root):
    runtime = await populated(root)
    await runtime.close()
    snapshot = json.loads((worker_dir(root, "worker-00000001") / "worker.json").read_text())
    assert snapshot["request"] == {
        "intent": {"kind": "task", "objective": "ship it"},
        "profile": {"kind": "builtin", "value": "builtin:coder"},
        "requested_capabilities": [{"name": "read", "reason": "to read"}],
    }


async def test_worker_snapshots_written_before_the_codec_still_restore(root):
    runtime = await populated(root)
    before = reads(runtime)
    await runtime.close()
    for worker_id in ("worker-00000001", "worker-00000002", "worker-00000003"):
        # As runtimed wrote them before: null for absent values, every list present.
        path = worker_dir(root, worker_id) / "worker.json"
        snapshot = json.loads(path.read_text())
        request = snapshot["request"]
        request.setdefault("config_bundle", None)
        request["requested_capabilities"] = [{"reason": None, **c} for c in request.get("requested_capabilities", [])]
        request.setdefault("workspace_refs", [])
        request.setdefault("mount_refs", [])
        path.write_text(json.dumps(snapshot, indent=1))
    restored = await open_runtime(root)
    assert reads(restored) == before
    await restored.close()


# ------------------------------------------------------- crash leftovers


async def test_a_torn_last_line_of_the_log_is_set_aside_with_a_warning(root, no_timed_checkpoints):
    runtime = await populated(root)
    before = reads(runtime)
    await crash(runtime)
    (segment,) = segments(root)
    with open(segment, "ab") as file:
        file.write(b'{"crc":"00000000","lsn":11,"event":{"id":10,"kind":"worker_inp')

    restored = await open_runtime(root)
    after = reads(restored)
    assert after[1:5] == before[1:5]  # the summary differs only in its diagnostic count
    warnings = [d for d in restored.diagnostics() if d.severity.value == "warning"]
    assert [d.code for d in warnings] == ["store.torn_tail"]
    assert str(segment) in warnings[0].message and "never acknowledged" in warnings[0].message
    aside = segment.with_name(segment.name + ".corrupt")
    assert aside.read_bytes() == b'{"crc":"00000000","lsn":11,"event":{"id":10,"kind":"worker_inp\n'
    assert segment.read_bytes().endswith(b"\n")
    await restored.close()


async def test_records_past_the_checkpoint_are_cut_back_without_a_warning(root, caplog):
    runtime = await populated(root)
    before = reads(runtime)
    await runtime.close()
    # What a checkpoint cut short leaves: records written, the marker never moved (the log has them).
    first = worker_dir(root, "worker-00000001")
    transcript = (first / "transcript.jsonl").read_bytes()
    with open(first / "transcript.jsonl", "ab") as file:
        file.write(b'{"sequence":3,"role":"user","content":"in the log","event_id":10}\n{"seq')
    observations = (first / "observations.jsonl").read_bytes()
    with open(first / "observations.jsonl", "ab") as file:
        file.write(b'{"sequence":99,"event":"user_message","data":{"sequence":3,"content":"x"},"event_id":10}\n')
    orphan = runtime_dir(root) / "workers" / hex_id("worker-00000004")
    orphan.mkdir()
    (orphan / "worker.json").write_text("{}")

    with caplog.at_level("INFO", logger="runtimed.store"):
        restored = await open_runtime(root)
    assert reads(restored) == before
    assert not orphan.exists()
    assert (first / "transcript.jsonl").read_bytes() == transcript
    assert (first / "observations.jsonl").read_bytes() == observations
    assert [d.code for d in restored.diagnostics() if d.severity.value == "warning"] == []
    cut = [r.getMessage() for r in caplog.records if "interrupted checkpoint" in r.getMessage()]
    assert len(cut) == 4, cut  # the orphan, the entry and the torn line, the observation
    await restored.close()


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("middle_line", "line 2 is not a JSON object"),
        ("other_runtime", "names another runtime"),
        ("schema_version", "schema_version 4 is not one this runtimed knows"),
        ("workers_is_a_file", "is a file where a directory should be"),
        ("worker_dir_is_a_file", "is a file where a directory should be"),
        ("missing_transcript_entry", "holds 1 entries, but the event log accepted 2 inputs"),
        ("stray_entry", "is not a worker directory"),
        ("two_runtimes", "a root holds exactly one runtime"),
    ],
)
async def test_corruption_is_refused_naming_the_file_and_the_problem(root, damage, problem):
    runtime = await populated(root)
    await runtime.close()
    directory = runtime_dir(root)
    first = worker_dir(root, "worker-00000001")
    if damage == "middle_line":
        lines = (directory / "events.jsonl").read_bytes().split(b"\n")
        lines[1] = b"{not json"
        (directory / "events.jsonl").write_bytes(b"\n".join(lines))
    elif damage == "other_runtime":
        record = json.loads((first / "worker.json").read_text())
        record["worker_ref"]["runtime_id"] = "runtime-elsewhere"
        (first / "worker.json").write_text(json.dumps(record))
    elif damage == "schema_version":
        record = json.loads((directory / "runtime.json").read_text())
        record["schema_version"] = 4
        (directory / "runtime.json").write_text(json.dumps(record))
    elif damage == "workers_is_a_file":
        import shutil

        shutil.rmtree(directory / "workers")
        (directory / "workers").write_text("")
    elif damage == "worker_dir_is_a_file":
        import shutil

        shutil.rmtree(first)
        first.write_text("")
    elif damage == "missing_transcript_entry":
        lines = (first / "transcript.jsonl").read_bytes().splitlines(keepends=True)
        (first / "transcript.jsonl").write_bytes(lines[0])
    elif damage == "stray_entry":
        (directory / "workers" / "notes.txt").write_text("hello")
    elif damage == "two_runtimes":
        (root / "runtimes" / hex_id("runtime-other")).mkdir()
    with pytest.raises(StoreError) as caught:
        await open_runtime(root)
    assert isinstance(caught.value, (StoreCorrupt, StoreMissing))
    assert problem in caught.value.message
    assert str(root) in caught.value.message


async def test_a_root_that_is_a_file_is_refused(tmp_path):
    file = tmp_path / "root"
    file.write_text("")
    with pytest.raises(StoreError) as caught:
        await open_runtime(file)
    assert str(file) in caught.value.message


async def test_an_unwritable_root_is_refused():
    # /proc refuses new directories even to root, which chmod cannot do for a test run as root.
    with pytest.raises(StoreIo) as caught:
        await open_runtime(Path("/proc/runtimed-test-root"))
    assert "/proc/runtimed-test-root" in caught.value.message


# ---------------------------------------------------------- write failures


class FaultyFsStore(FsStore):
    """An fs store whose next flush fails after writing its log lines, as a full disk would."""

    fail_next = False

    def _append(self, log_writer, data, lines):
        if not self.fail_next:
            super()._append(log_writer, data, lines)
            return
        self.fail_next = False
        with failing_sync(log_writer, errno.ENOSPC, "No space left on device"):
            super()._append(log_writer, data, lines)


@contextlib.contextmanager
def failing_sync(log_writer, code, message):
    """The log's lines are written, then their ``fsync`` fails."""

    def sync(fd):
        raise OSError(code, message, str(log_writer.active.path))

    log_writer.sync = sync
    try:
        yield
    finally:
        del log_writer.sync


async def test_a_failed_write_is_store_io_leaves_nothing_behind_and_the_next_request_works(root, aiohttp_client):
    store = FaultyFsStore(root)
    runtime = await Runtime.open(store)
    client = await aiohttp_client(create_app(runtime))
    response = await client.post(
        "/v1/workers", json={"intent": {"kind": "assistant"}, "profile": {"kind": "runtime_default"}}
    )
    worker = (await response.json())["worker"]["worker_id"]
    await client.post(f"/v1/workers/{worker}/input", json={"kind": "user", "content": "kept"})
    before = reads(runtime)
    files_before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}

    for path, body in (
        (f"/v1/workers/{worker}/input", {"kind": "user", "content": "lost"}),
        ("/v1/workers", {"intent": {"kind": "assistant"}, "profile": {"kind": "runtime_default"}}),
        (f"/v1/workers/{worker}/stop", {"reason": "lost"}),
    ):
        store.fail_next = True
        response = await client.post(path, json=body)
        assert response.status == 500
        error = (await response.json())["error"]
        assert error["code"] == "store_io"
        assert "/log/0000000000000001.jsonl" in error["message"] and "No space left on device" in error["message"]
        assert reads(runtime) == before
        assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == files_before

    response = await client.post(f"/v1/workers/{worker}/input", json={"kind": "user", "content": "after"})
    assert response.status == 200
    assert (await response.json())["ack"]["transcript_sequence"] == 2
    await runtime.close()
    restored = await open_runtime(root)
    assert [e.content for e in restored.transcript(restored.worker_ref(worker)).items] == ["kept", "after"]
    assert restored.diagnostics() == runtime.diagnostics()
    await restored.close()


async def test_a_failed_flush_fails_every_change_built_on_it(root):
    store = FaultyFsStore(root)
    runtime = await Runtime.open(store)
    worker = await runtime.create_worker(TASK)
    before = reads(runtime)
    store.fail_next = True
    results = await asyncio.gather(
        *(runtime.send_input(worker.worker_ref, user(f"m{i}")) for i in range(10)), return_exceptions=True
    )
    failed = [r for r in results if isinstance(r, StoreIo)]
    succeeded = [r for r in results if not isinstance(r, BaseException)]
    assert failed, "the first flush failed"
    assert len(failed) + len(succeeded) == 10
    # Whatever succeeded came after the failure was undone, so sequences have no holes.
    assert sorted(a.transcript_sequence for a in succeeded) == list(range(1, len(succeeded) + 1))
    if not succeeded:
        assert reads(runtime) == before
    await runtime.close()
    restored = await open_runtime(root)
    assert restored.worker_detail(worker.worker_ref).transcript_len == len(succeeded)
    await restored.close()


# ----------------------------------------------- what a cut-short start leaves


async def test_a_missing_event_log_is_refused_not_taken_for_an_empty_runtime(root):
    runtime = await populated(root)
    await runtime.close()
    (runtime_dir(root) / "events.jsonl").rename(root / "events.jsonl.moved")
    with pytest.raises(StoreMissing) as caught:
        await open_runtime(root)
    assert "events.jsonl" in caught.value.message and "missing" in caught.value.message
    assert worker_dir(root, "worker-00000001").exists()  # nothing was deleted


async def test_an_older_worker_without_its_created_event_is_corruption(root):
    runtime = await populated(root)
    await runtime.close()
    events = runtime_dir(root) / "events.jsonl"
    lines = events.read_bytes().splitlines(keepends=True)
    (root / "spare").mkdir()
    # Renumber: keep the log whole but make worker-00000001's creation vanish from it.
    records = [json.loads(line) for line in lines]
    records = [
        r for r in records if not (r["kind"] == "worker_created" and r["worker_ref"]["worker_id"] == "worker-00000001")
    ]
    records = [r for r in records if r.get("worker_ref", {}).get("worker_id") != "worker-00000001"]
    for index, record in enumerate(records, start=1):
        record["id"] = index
    events.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records))
    write_marker(root, {**marker(root), "event_id": len(records)})  # and the checkpoint agrees with it
    with pytest.raises(StoreCorrupt) as caught:
        await open_runtime(root)
    assert "worker-00000001 has no worker_created event, but later workers do" in caught.value.message


async def test_a_first_start_cut_short_leaves_a_root_that_starts_cleanly(root):
    runtimes = root / "runtimes"
    runtimes.mkdir(parents=True)
    (runtimes / ".write-probe").write_bytes(b"")
    half = runtimes / ("." + hex_id("runtime-fs-0000000000000001"))
    (half / "workers").mkdir(parents=True)
    runtime = await open_runtime(root)
    assert [e.kind.value for e in runtime.events().events] == ["runtime_started"]
    assert sorted(p.name for p in runtimes.iterdir()) == [hex_id(runtime.runtime_id)]
    await runtime.close()


async def test_a_runtime_created_but_never_started_gets_its_first_event_on_open(root):
    store = FsStore(root)
    assert await store.open(None) is None
    await store.create("runtime-created")  # and the daemon stopped before its first event
    await store.close()
    restored = await open_runtime(root)
    assert [(e.id, e.kind.value) for e in restored.events().events] == [(1, "runtime_started")]
    await restored.close()


async def test_a_file_created_by_a_flush_has_its_directory_fsynced(root, monkeypatch):
    import runtimed.store.fs.files as fs_files

    runtime = await open_runtime(root)
    worker = await runtime.create_worker(TASK)
    synced: list[Path] = []
    real = fs_files.fsync_path
    monkeypatch.setattr(fs_files, "fsync_path", lambda path: (synced.append(Path(path)), real(path)))
    await runtime.send_input(worker.worker_ref, user("first"))
    await runtime.close()  # the last checkpoint creates transcript.jsonl, and a new log segment
    assert worker_dir(root, worker.worker_id) in synced
    assert runtime_dir(root) / "log" in synced


class SlowFaultyFsStore(FaultyFsStore):
    """Fails its next flush while it is slow, so that more changes queue behind it; or fails
    while appending to the event log, after the data is written."""

    fail_events = False
    flush_delay = 0.05

    def __init__(self, root):
        super().__init__(root)
        self.flush_started = threading.Event()

    def _append(self, log_writer, data, lines):
        self.flush_started.set()
        time.sleep(self.flush_delay)  # in the writer thread, as a slow disk would be
        if self.fail_events:
            self.fail_events = False
            # Half the batch gets out, then the disk gives out.
            with failing_sync(log_writer, errno.EIO, "Input/output error"):
                log_writer.append(data[: len(data) // 2], 0)
        super()._append(log_writer, data, lines)


async def test_changes_queued_behind_a_failing_flush_fail_too_and_the_disk_is_as_before(root):
    store = SlowFaultyFsStore(root)
    runtime = await Runtime.open(store)
    worker = await runtime.create_worker(TASK)
    files_before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    before = reads(runtime)
    store.fail_next = True
    store.flush_started.clear()
    first = asyncio.create_task(runtime.send_input(worker.worker_ref, user("in the failing flush")))
    await wait_until(store.flush_started.is_set, what="the failing flush")  # these queue behind it
    queued = [asyncio.create_task(runtime.send_input(worker.worker_ref, user(f"queued {i}"))) for i in range(5)]
    results = await asyncio.gather(first, *queued, return_exceptions=True)
    assert all(isinstance(r, StoreIo) for r in results), results
    assert reads(runtime) == before
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == files_before
    ack = await runtime.send_input(worker.worker_ref, user("after"))
    assert ack.transcript_sequence == 1
    await runtime.close()


async def test_a_failure_while_appending_to_the_log_is_undone(root):
    store = SlowFaultyFsStore(root)
    runtime = await Runtime.open(store)
    worker = await runtime.create_worker(TASK)
    files_before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    store.fail_events = True
    with pytest.raises(StoreIo):
        await runtime.send_input(worker.worker_ref, user("lost"))
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == files_before
    await runtime.send_input(worker.worker_ref, user("kept"))
    await runtime.close()
    restored = await open_runtime(root)
    assert [e.content for e in restored.transcript(worker.worker_ref).items] == ["kept"]
    assert [d.code for d in restored.diagnostics() if d.severity.value == "warning"] == []
    await restored.close()


async def test_a_lone_surrogate_a_client_sent_survives_a_restart(root):
    runtime = await open_runtime(root)
    worker = await runtime.create_worker(TASK)
    await runtime.send_input(worker.worker_ref, user("lone \ud800 surrogate"))
    await runtime.close()
    restored = await open_runtime(root)
    assert [e.content for e in restored.transcript(worker.worker_ref).items] == ["lone \ud800 surrogate"]
    await restored.close()


# ------------------------------------------------------- one daemon per root


async def test_a_second_store_on_a_held_root_is_refused_naming_the_root_and_the_holder(root):
    import os

    from runtimed.domain.errors import StoreLocked

    first = await open_runtime(root)
    lock = root / "runtimed.lock"
    assert lock.read_text().strip() == str(os.getpid())
    with pytest.raises(StoreLocked) as caught:
        await open_runtime(root)
    assert str(root) in caught.value.message and f"pid {os.getpid()}" in caught.value.message
    worker = await first.create_worker(TASK)  # the holder is undisturbed
    await first.close()
    again = await open_runtime(root)  # closing released the lock
    assert [w.worker_id for w in again.list_workers()] == [worker.worker_id]
    await again.close()


# ------------------------------------- observations and diagnostics are committed


def files_of(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != "runtimed.lock"}


@pytest.mark.parametrize(
    ("damage", "file", "problem"),
    [
        ("drop_last_observation", "observations", "observations"),
        ("drop_middle_observation", "observations", "observations"),
        ("delete_observations", "observations", "missing"),
        ("delete_diagnostics", "diagnostics", "missing"),
        ("cut_diagnostics", "diagnostics", "diagnostics"),
    ],
)
async def test_missing_acknowledged_observations_or_diagnostics_refuse_the_start(root, damage, file, problem):
    runtime = await populated(root)
    await runtime.close()
    first = worker_dir(root, "worker-00000001")
    path = first / "observations.jsonl" if file == "observations" else runtime_dir(root) / "diagnostics.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    if damage in ("drop_last_observation", "cut_diagnostics"):
        path.write_bytes(b"".join(lines[:-1]))
    elif damage == "drop_middle_observation":
        path.write_bytes(b"".join(lines[:1] + lines[2:]))
    else:
        path.unlink()
    before = files_of(root)
    with pytest.raises(StoreError) as caught:
        await open_runtime(root)
    assert isinstance(caught.value, (StoreCorrupt, StoreMissing))
    assert str(path) in caught.value.message
    assert problem in caught.value.message
    assert files_of(root) == before  # refused before anything was repaired


async def test_the_observation_sequence_continues_from_the_commit_record(root):
    runtime = await populated(root)
    first, second = runtime.list_workers()[:2]
    handed_out = runtime.observation_sequence  # the newest: worker 1's text_delta, which has no event
    await runtime.close()
    restored = await open_runtime(root)
    observation = await restored.observe(second.worker_ref, "log", {"line": "x"})
    assert observation.sequence == handed_out + 1
    assert restored.observation_cursor_now(first.worker_ref) == handed_out
    await restored.close()


async def test_observations_past_the_checkpoint_are_cut_back_and_the_sequence_continues(root):
    runtime = await populated(root)
    sequence = runtime.observation_sequence
    await runtime.close()
    path = worker_dir(root, "worker-00000001") / "observations.jsonl"
    with open(path, "ab") as file:
        # A whole line and a torn one: what a checkpoint cut short leaves (the log has them).
        file.write(b'{"sequence":%d,"event":"log","data":{"n":1}}\n' % (sequence + 1))
        file.write(b'{"sequence":%d,"event":"lo' % (sequence + 2))
    restored = await open_runtime(root)
    assert [d.code for d in restored.diagnostics() if d.severity.value == "warning"] == []
    assert restored.observation_sequence == sequence
    assert (await restored.observe(restored.worker_ref("worker-00000001"), "log")).sequence == sequence + 1
    await restored.close()


async def test_a_store_from_a_newer_runtimed_is_refused(root):
    await (await open_runtime(root)).close()
    path = runtime_dir(root) / "runtime.json"
    snapshot = json.loads(path.read_text())
    snapshot["schema_version"] = 4
    path.write_text(json.dumps(snapshot))
    with pytest.raises(StoreCorrupt) as caught:
        await open_runtime(root)
    assert "schema_version 4 is not one this runtimed knows" in caught.value.message


@pytest.mark.parametrize("missing", ["checkpoint.json", "log"])
async def test_a_missing_checkpoint_marker_or_log_is_refused(root, missing):
    import shutil

    runtime = await populated(root)
    await runtime.close()
    path = runtime_dir(root) / missing
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    with pytest.raises(StoreMissing) as caught:
        await open_runtime(root)
    assert str(path) in caught.value.message


# ------------------------------------------------------- what is under runtimes/


async def test_a_foreign_dot_entry_under_runtimes_is_refused_and_kept(root):
    await (await open_runtime(root)).close()
    backup = root / "runtimes" / ".important-backup"
    (backup / "nested").mkdir(parents=True)
    (backup / "nested" / "data").write_text("precious")
    with pytest.raises(StoreCorrupt) as caught:
        await open_runtime(root)
    assert str(backup) in caught.value.message
    assert (backup / "nested" / "data").read_text() == "precious"


@pytest.mark.parametrize("inside", ["notes.txt", "log/0000000000000001.jsonl"])
async def test_a_dot_entry_that_only_looks_like_a_half_made_runtime_is_refused_and_kept(root, inside):
    half = root / "runtimes" / ("." + hex_id("runtime-fs-0000000000000001"))
    (half / "workers").mkdir(parents=True)
    (half / "log").mkdir()
    (half / inside).write_text("mine")  # a log segment that holds something is not what creating leaves
    with pytest.raises(StoreCorrupt) as caught:
        await open_runtime(root)
    assert str(half) in caught.value.message
    assert (half / inside).read_text() == "mine"


async def test_runtimeds_own_leftovers_under_runtimes_are_removed_with_a_log_line(root, caplog):
    runtimes = root / "runtimes"
    runtimes.mkdir(parents=True)
    (runtimes / ".write-probe").write_bytes(b"x" * 100)
    half = runtimes / ("." + hex_id("runtime-fs-0000000000000001"))
    (half / "workers").mkdir(parents=True)
    (half / "runtime.json").write_text("{}")
    (half / "log").mkdir()
    (half / "log" / "0000000000000001.jsonl").write_bytes(b"")
    with caplog.at_level("INFO", logger="runtimed.store"):
        runtime = await open_runtime(root)
    await runtime.close()
    assert sorted(p.name for p in runtimes.iterdir()) == [hex_id(runtime.runtime_id)]
    removed = [r.getMessage() for r in caplog.records if "removed" in r.getMessage()]
    assert any(str(runtimes / ".write-probe") in m for m in removed), removed
    assert any(str(half) in m for m in removed), removed


# ------------------------------------------------------------- file names in errors


async def test_a_write_error_without_a_file_name_still_names_the_file(root, monkeypatch):
    import runtimed.store.fs.files as fs_files

    runtime = await open_runtime(root)
    worker = await runtime.create_worker(TASK)

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fs_files, "write_all", full)
    with pytest.raises(StoreIo) as caught:
        await runtime.send_input(worker.worker_ref, user("lost"))
    assert caught.value.path.startswith(str(runtime_dir(root)) + "/")
    assert Path(caught.value.path).name.endswith(".jsonl"), caught.value.message
    assert "No space left on device" in caught.value.message
    monkeypatch.undo()
    await runtime.close()


async def test_a_failed_repair_at_start_names_the_file(root, monkeypatch):
    import runtimed.store.fs.files as fs_files

    runtime = await populated(root)
    await runtime.close()
    (segment,) = segments(root)
    with open(segment, "ab") as file:
        file.write(b'{"crc":"0000')

    real_write_all = fs_files.write_all

    def full_when_setting_aside(fd, data):
        if data.startswith(b'{"crc":"0000'):  # the disk fills up just as restore sets the tail aside
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_all(fd, data)

    monkeypatch.setattr(fs_files, "write_all", full_when_setting_aside)
    with pytest.raises(StoreIo) as caught:
        await open_runtime(root)
    assert caught.value.path.startswith(str(segment)), caught.value.message
    assert "No space left on device" in caught.value.message


# ------------------------------------------------------------------- file modes


def modes(root: Path) -> dict[str, int]:
    import stat

    return {str(p.relative_to(root.parent)): stat.S_IMODE(p.lstat().st_mode) for p in [root, *root.rglob("*")]}


async def test_a_new_root_is_private_whatever_the_umask(tmp_path):
    import os
    import stat

    root = tmp_path / "made" / "for" / "root"
    previous = os.umask(0o022)
    try:
        runtime = await open_runtime(root)
        worker = await runtime.create_worker(TASK)
        await runtime.send_input(worker.worker_ref, user("private"))
        await runtime.observe(worker.worker_ref, "log", {"n": 1})
        await runtime.stop()
        await runtime.close()
        with open(segments(root)[-1], "ab") as file:
            file.write(b'{"torn')  # restore sets it aside into a new .corrupt file
        await (await open_runtime(root)).close()
    finally:
        os.umask(previous)
    for parent in (tmp_path / "made", tmp_path / "made" / "for"):
        assert stat.S_IMODE(parent.stat().st_mode) == 0o700, parent
    found = modes(root)
    assert any(name.endswith(".corrupt") for name in found)
    for name, mode in found.items():
        path = tmp_path / "made" / "for" / name
        assert mode == (0o700 if path.is_dir() else 0o600), (name, oct(mode))


async def test_an_existing_root_readable_by_others_is_tightened_at_start(root):
    import os

    runtime = await populated(root)
    await runtime.close()
    for path in [root, *root.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    await (await open_runtime(root)).close()
    for name, mode in modes(root).items():
        path = root.parent / name
        assert mode == (0o700 if path.is_dir() else 0o600), (name, oct(mode))


# ------------------------------------------------------ executing workers (§9)

ECHO = CreateWorkerRequest(
    AssistantIntent(), BuiltinProfile("builtin:echo"), requested_capabilities=(CapabilityRequest("read"),)
)


async def open_executing(root: Path, store: FsStore | None = None, **limits: int) -> tuple[Runtime, FakeBackend]:
    if store is None:
        runtime = await open_runtime(root, **limits)
    else:
        runtime = await Runtime.open(store)
    backend = FakeBackend(runtime)
    runtime.attach(backend)
    return runtime, backend


async def with_turns(root: Path) -> Runtime:
    """An executing worker with a turn that made an entry, one that made none, and one still
    open, beside a record-only worker."""
    runtime, _ = await open_executing(root)
    ref = (await runtime.create_worker(ECHO)).worker_ref
    await runtime.create_worker(TASK)
    await runtime.update_execution(
        ref, state=ExecutionState.IDLE, pid=4242, agent=AgentInfo("echo", "0.1"), session_id="sess-1"
    )
    for text in ("a", "b", "c", "d"):
        await runtime.send_input(ref, user(text))
    await run_turn(runtime, ref)
    await run_turn(runtime, ref, text="", reason=StopReason.ERROR)
    await runtime.begin_turn(ref)  # "c", still open when the daemon stops
    await runtime.update_execution(ref, pending_permissions=1)
    return runtime


async def test_an_executing_worker_comes_back_with_its_open_turn_and_what_was_delivered(root):
    runtime = await with_turns(root)
    ref = runtime.worker_ref("worker-00000001")
    before = reads(runtime)
    execution = runtime.worker_detail(ref).execution
    assert execution is not None
    assert (execution.open_turn, execution.delivered_sequence, execution.queued_inputs) == (3, 3, 1)
    await runtime.close()

    restored, _ = await open_executing(root)

    assert reads(restored) == before
    assert restored.worker_detail(ref).execution == execution
    assert restored.worker_detail(restored.worker_ref("worker-00000002")).execution is None
    assert [w.worker_ref for w in restored.executing_workers()] == [ref]
    # What the supervisor does at restore: the open turn ends interrupted, its input is not
    # delivered again, and the input never delivered is next.
    await restored.end_turn(ref, 3, StopReason.INTERRUPTED)
    started = await restored.begin_turn(ref)
    assert started is not None and (started.turn, started.entry.content) == (4, "d")
    await restored.close()


async def test_changes_without_a_runtime_event_are_durable(root):
    runtime, _ = await open_executing(root)
    ref = (await runtime.create_worker(ECHO)).worker_ref
    await runtime.send_input(ref, user("a"))
    await runtime.update_execution(ref, state=ExecutionState.IDLE, pid=7, exit=ProcessExit(code=0))
    await runtime.begin_turn(ref)
    execution = runtime.worker_detail(ref).execution
    await runtime.close()

    restored = await open_runtime(root)

    assert restored.worker_detail(ref).execution == execution
    assert execution is not None and (execution.pid, execution.open_turn, execution.state) == (
        7,
        1,
        ExecutionState.BUSY,
    )
    await restored.close()


async def test_a_begin_turn_whose_log_line_never_finished_delivered_nothing(root, no_timed_checkpoints):
    runtime, _ = await open_executing(root)
    ref = (await runtime.create_worker(ECHO)).worker_ref
    await runtime.send_input(ref, user("a"))
    committed = runtime.worker_detail(ref).execution
    (segment,) = segments(root)
    size = segment.stat().st_size
    await runtime.begin_turn(ref)
    await crash(runtime)
    # A crash in the middle of the flush's write: half its line reached the disk.
    with open(segment, "r+b") as file:
        file.truncate(size + (segment.stat().st_size - size) // 2)

    restored = await open_runtime(root)

    assert restored.worker_detail(ref).execution == committed
    assert [d.code for d in restored.diagnostics()][-1] == "store.torn_tail"
    assert restored.replay_observations(ref, 0)[-1].event == "user_message"
    await restored.close()


async def test_a_failed_flush_of_a_turn_leaves_the_worker_as_it_was_on_disk_too(root):
    store = FaultyFsStore(root)
    runtime, _ = await open_executing(root, store)
    ref = (await runtime.create_worker(ECHO)).worker_ref
    await runtime.send_input(ref, user("a"))
    before = reads(runtime)
    files_before = files_of(root)

    store.fail_next = True
    with pytest.raises(StoreIo):
        await runtime.begin_turn(ref)

    assert reads(runtime) == before
    assert files_of(root) == files_before
    started = await runtime.begin_turn(ref)
    assert started is not None and started.turn == 1
    await runtime.close()
    restored = await open_runtime(root)
    execution = restored.worker_detail(ref).execution
    assert execution is not None and (execution.open_turn, execution.delivered_sequence) == (1, 1)
    await restored.close()


async def test_a_turn_end_that_made_an_entry_says_so_in_the_event_log(root):
    runtime = await with_turns(root)
    await runtime.close()

    ended = [e for e in iter_jsonl(runtime_dir(root) / "events.jsonl") if e["kind"] == "worker_turn_ended"]

    assert [e.get("transcript_sequence") for e in ended] == [5, None]
    assert [e["message"] for e in ended] == ["turn 1 ended: end_turn", "turn 2 ended: error"]


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (
            "drop_assistant_entry",
            "holds 4 entries, but the event log accepted 4 inputs and committed 1 assistant replies",
        ),
        ("wrong_event", "transcript entry 5 (assistant, event 3) is not the entry event"),
        ("wrong_role", "transcript entry 5 (user, event"),
        ("unknown_worker", "holds the execution of worker worker-000000ff, which was never created"),
        ("bad_execution", "bad checkpoint marker: turns 'three' is not an integer"),
    ],
)
async def test_damage_to_what_execution_committed_is_refused(root, damage, problem):
    runtime = await with_turns(root)
    await runtime.close()
    transcript = worker_dir(root, "worker-00000001") / "transcript.jsonl"
    entries = iter_jsonl(transcript)
    if damage == "drop_assistant_entry":
        entries.pop()
    elif damage == "wrong_event":
        entries[-1]["event_id"] = 3
    elif damage == "wrong_role":
        entries[-1]["role"] = "user"
    transcript.write_bytes(b"".join(json.dumps(entry).encode() + b"\n" for entry in entries))
    record = marker(root)
    if damage == "unknown_worker":
        record["executions"] = {"worker-000000ff": record["executions"]["worker-00000001"]}
    elif damage == "bad_execution":
        record["executions"]["worker-00000001"]["turns"] = "three"
    write_marker(root, record)
    before = files_of(root)

    with pytest.raises(StoreCorrupt) as caught:
        await open_runtime(root)

    assert problem in caught.value.message
    assert files_of(root) == before


async def test_the_checkpoint_keeps_every_execution_and_the_log_the_newest(root, no_timed_checkpoints):
    runtime, _ = await open_executing(root)
    quiet = (await runtime.create_worker(ECHO)).worker_ref
    busy = (await runtime.create_worker(ECHO)).worker_ref
    await runtime.update_execution(quiet, session_id="quiet")
    store = runtime._store
    for pid in range(1, 30):
        await runtime.update_execution(busy, pid=pid)
        if pid == 10:  # a checkpoint half-way: the rest stays in the log only
            store._checkpoint(*store._take_pending())
    before = reads(runtime)
    await crash(runtime)
    assert marker(root)["executions"]["worker-00000002"]["pid"] == 10
    assert marker(root)["executions"]["worker-00000001"]["session_id"] == "quiet"

    restored = await open_runtime(root)

    assert reads(restored) == before
    quiet_execution = restored.worker_detail(quiet).execution
    busy_execution = restored.worker_detail(busy).execution
    assert quiet_execution is not None and quiet_execution.session_id == "quiet"
    assert busy_execution is not None and busy_execution.pid == 29
    await restored.close()
