"""``FsStore``: open or create the runtime directory, and commit changes to it.

Writes go through one worker thread (``_write_batch``, once a flush); ``restore`` reads the
directory back at open, ``commit`` holds the commit record's format, and ``files`` holds the file
operations all of them use.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ...domain.catalog import WorkerState, WorkerStatus
from ...domain.errors import StatePoisoned, StoreCorrupt, StoreError, StoreIo, StoreLocked
from ...domain.execution import WorkerExecution
from ...domain.management import RuntimeStatus
from ...domain.observation import EventKind
from .. import codec
from ..base import Change, RestoredState, Store
from . import commit, files
from .commit import COMMIT_LOG, CommitRecord
from .files import (
    LOCK_FILE,
    PROBE_FILE,
    RUNTIME_SCHEMA_VERSION,
    TEMP_SUFFIX,
    WORKER_SCHEMA_VERSION,
    OpenFiles,
    hex_id,
    jsonl_line,
    replace_atomically,
    unhex_id,
)
from .restore import Restored, Restorer

log = logging.getLogger("runtimed.store")

#: The commit log is cut back to one checkpoint line once it has this many lines more than
#: the runtime has workers with observations or executions (so a checkpoint costs little per flush).
COMMIT_LOG_LINES = 4096
#: What ``create`` puts in the hidden directory it builds a runtime in, before renaming it into
#: place; a directory of that name holding no more than this is a start that was cut short.
_BUILT_BY_CREATE = frozenset(
    {"workers", "runtime.json", "runtime.json" + TEMP_SUFFIX, COMMIT_LOG, COMMIT_LOG + TEMP_SUFFIX}
)


def _worker_snapshot(state: WorkerState, created_event_id: int) -> bytes:
    """What a worker was created with and its status. Rewritten only when the status changes;
    the transcript length and last event id live in the logs, which win at restore."""
    record = codec.WorkerRecord(state.worker_ref, created_event_id, state.status, state.request)
    return files.snapshot_document(codec.encode_worker_record(record), WORKER_SCHEMA_VERSION)


def _runtime_snapshot(runtime_id: str, status: RuntimeStatus, last_event_id: int) -> bytes:
    record = codec.encode_runtime_record(codec.RuntimeRecord(runtime_id, status, last_event_id))
    return files.snapshot_document(record, RUNTIME_SCHEMA_VERSION)


def _io_error(operation: str, error: OSError, fallback: Path) -> StoreIo:
    """``StoreIo`` naming the file ``error`` concerns (``fallback`` when it names none)."""
    return StoreIo(operation, str(error.filename or fallback), error.strerror or str(error))


@dataclass
class _Batch:
    """What one flush writes, gathered from its changes, and what it takes to undo it."""

    appends: dict[Path, list[bytes]] = field(default_factory=dict)
    commit_line: bytes = b""
    new_dirs: list[Path] = field(default_factory=list)
    snapshots: dict[Path, bytes] = field(default_factory=dict)  # path -> new content
    sizes: dict[Path, int] = field(default_factory=dict)  # appended files: size before
    created_files: set[Path] = field(default_factory=set)  # appended files the batch creates
    previous: dict[Path, bytes | None] = field(default_factory=dict)  # replaced files: content before
    # What the store will remember once the batch is durable (nothing, if it fails).
    created_event: dict[str, int] = field(default_factory=dict)
    snapshot_status: dict[str, WorkerStatus] = field(default_factory=dict)
    executions: dict[str, WorkerExecution] = field(default_factory=dict)  # changed by the batch
    runtime_status: RuntimeStatus | None = None
    #: What the batch's commit record says (observation counts: of the workers it observes).
    committed: CommitRecord = field(default_factory=CommitRecord)

    def append(self, path: Path, record: dict[str, Any]) -> None:
        self.appends.setdefault(path, []).append(jsonl_line(record))


# ------------------------------------------------------------------ store


class FsStore(Store):
    """Everything under ``root``; see ``runtimed.store.fs`` for the layout and guarantees."""

    backend = "fs_store"
    id_prefix = "fs"

    def __init__(self, root: Path, observation_backlog: int = 1024) -> None:
        super().__init__()
        self.root = Path(root)
        self._backlog = observation_backlog
        self._runtime_dir: Path | None = None
        self._runtime_id: str | None = None
        self._lock_fd: int | None = None
        self._files = OpenFiles()
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runtimed-store")
        self._fsyncs = ThreadPoolExecutor(max_workers=16, thread_name_prefix="runtimed-fsync")
        self._queue: list[tuple[Change, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        # What the store writes itself, kept to write snapshots and to undo a failed flush.
        self._created_event: dict[str, int] = {}  # worker id -> id of its worker_created event
        self._snapshot_status: dict[str, WorkerStatus] = {}  # worker id -> status in worker.json
        self._snapshots: dict[Path, bytes] = {}  # snapshot path -> content on disk
        self._observation_lines: dict[str, int] = {}  # worker id -> observation lines in its file
        self._runtime_status = RuntimeStatus.RUNNING
        # What the last commit record says, and how many lines the commit log has.
        self._last_event_id = 0
        self._observation_sequence = 0
        self._diagnostic_id = 0
        self._observation_counts: dict[str, int] = {}  # worker id -> observations its file took in
        self._executions: dict[str, WorkerExecution] = {}  # worker id -> its committed execution
        self._commit_lines = 0

    # ----------------------------------------------------------- paths

    @property
    def runtime_dir(self) -> Path:
        assert self._runtime_dir is not None, "the store is not open"
        return self._runtime_dir

    def worker_dir(self, worker_id: str) -> Path:
        return self.runtime_dir / "workers" / hex_id(worker_id)

    # ------------------------------------------------------------ open

    async def open(self, runtime_id: str | None) -> RestoredState | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, self._open, runtime_id)

    def _open(self, configured_id: str | None) -> RestoredState | None:
        try:
            files.make_dirs(self.root)
        except OSError as error:
            raise _io_error("create store root", error, self.root) from None
        if not self.root.is_dir():
            raise StoreCorrupt("open store root", str(self.root), "exists and is not a directory")
        self._lock()
        try:
            return self._open_locked(configured_id)
        except BaseException:
            self._unlock()
            raise

    def _lock(self) -> None:
        """One daemon per root: a second one would hand out the same ids and undo the first's
        writes. The lock is held until ``close`` (or the process ends)."""
        path = self.root / LOCK_FILE
        try:
            self._lock_fd = files.lock(path)
        except BlockingIOError:
            raise StoreLocked(
                "lock",
                str(self.root),
                f"the store root is in use by another runtimed (pid {files.lock_holder(path)}, which holds "
                f"{path}); one root serves one daemon at a time",
            ) from None
        except OSError as error:
            raise _io_error("lock", error, path) from None

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _open_locked(self, configured_id: str | None) -> RestoredState | None:
        for path, error in files.tighten(self.root):
            log.warning("could not make %s private to this user: %s", path, error.strerror or error)
        runtimes = self.root / "runtimes"
        try:
            files.make_dir(runtimes)
        except FileExistsError:
            pass
        except OSError as error:
            raise _io_error("create", error, runtimes) from None
        if not runtimes.is_dir():
            raise StoreCorrupt("open", str(runtimes), "is a file where a directory should be")
        entries = self._runtime_entries(runtimes)
        self._check_writable(runtimes)
        if not entries:
            return None
        if len(entries) > 1:
            raise StoreCorrupt("open", str(runtimes), f"holds {len(entries)} entries; a root holds exactly one runtime")
        runtime_dir = entries[0]
        stored_id = unhex_id(runtime_dir.name)
        if stored_id is None or not runtime_dir.is_dir():
            raise StoreCorrupt("open", str(runtime_dir), "is not a runtime directory (id-<hex of runtime id>)")
        if configured_id is not None and configured_id != stored_id:
            raise StoreCorrupt(
                "open",
                str(runtime_dir),
                f"holds runtime {stored_id}, but runtime {configured_id} is configured; a root holds one "
                "runtime (remove the configured runtime_id, or use another root)",
            )
        self._runtime_dir = runtime_dir
        self._runtime_id = stored_id
        restored = Restorer(runtime_dir, stored_id).restore()
        self._adopt(restored)
        try:
            self._upgrade(restored)
        except OSError as error:
            raise _io_error("upgrade", error, runtime_dir) from None
        return restored.state

    def _runtime_entries(self, runtimes: Path) -> list[Path]:
        """The entries of ``runtimes/`` but runtimed's own leftovers, which are removed (and
        logged); a hidden entry that runtimed did not make is refused, never deleted."""
        entries: list[Path] = []
        leftovers: list[tuple[Path, str]] = []
        for entry in sorted(runtimes.iterdir()):
            if not entry.name.startswith("."):
                entries.append(entry)
                continue
            what = self._leftover(entry)
            if what is None:
                raise StoreCorrupt(
                    "open",
                    str(entry),
                    "is not runtimed's: neither a runtime directory (id-<hex of runtime id>) nor what an "
                    "interrupted runtimed leaves; move it out of the store root",
                )
            leftovers.append((entry, what))
        for entry, what in leftovers:
            try:
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            except OSError as error:
                raise _io_error("remove", error, entry) from None
            log.warning("removed %s: %s, left by an interrupted runtimed", entry, what)
        return entries

    @staticmethod
    def _leftover(entry: Path) -> str | None:
        """What runtimed left ``entry`` as (a write probe, a runtime created only half), or
        ``None`` when it is not runtimed's. Names and contents must both match."""
        if entry.is_symlink():
            return None
        if entry.name == PROBE_FILE and entry.is_file():
            return "a write probe"
        if not (entry.is_dir() and unhex_id(entry.name[1:]) is not None):
            return None
        for inner in entry.iterdir():
            if inner.name not in _BUILT_BY_CREATE or inner.is_symlink():
                return None
            if inner.name == "workers" and (not inner.is_dir() or any(inner.iterdir())):
                return None
            if inner.name != "workers" and not inner.is_file():
                return None
        return "a runtime directory whose creation was cut short"

    def _adopt(self, restored: Restored) -> None:
        """Take up the files where restore found them: the store writes on from there."""
        self._snapshots.update(restored.snapshots)
        self._created_event.update(restored.created_event)
        self._snapshot_status.update(restored.snapshot_status)
        self._observation_lines.update(restored.observation_lines)
        self._runtime_status = restored.runtime_status
        committed = restored.committed
        self._last_event_id = committed.event_id
        self._observation_sequence = committed.observation_sequence
        self._diagnostic_id = committed.diagnostic_id
        self._observation_counts = dict(committed.observations)
        self._executions = dict(committed.executions)
        self._commit_lines = restored.commit_lines

    def _upgrade(self, restored: Restored) -> None:
        """Bring a store written before the commit log up to date: first the commit log (a
        checkpoint of what restore found), then ``runtime.json`` at the schema version that
        says a commit log must exist. A crash between the two leaves a store restore reads by
        its commit log, and the next open finishes the upgrade."""
        if self._commit_lines == 0:
            self._write_checkpoint()
        if restored.runtime_schema < RUNTIME_SCHEMA_VERSION:
            path = self.runtime_dir / "runtime.json"
            data = _runtime_snapshot(self._runtime_id or "", self._runtime_status, self._last_event_id)
            replace_atomically(path, data)
            self._snapshots[path] = data
            log.info("upgraded the fs store at %s to keep a commit log", self.runtime_dir)

    def _write_checkpoint(self) -> None:
        """Cut the commit log back to one line holding every count (or start it with one)."""
        path = self.runtime_dir / COMMIT_LOG
        now = CommitRecord(self._last_event_id, self._observation_sequence, self._diagnostic_id)
        self._files.forget(path)
        replace_atomically(path, jsonl_line(commit.encode(now, self._observation_counts, self._executions)))
        self._commit_lines = 1

    async def check_writable(self) -> str | None:
        if self._failed is not None:
            return f"the last write failed: {getattr(self._failed, 'message', self._failed)}"
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._io, self._check_writable, self.runtime_dir)
        except StoreError as error:
            return error.message
        return None

    def _check_writable(self, directory: Path) -> None:
        """A real write of a few KiB, fsynced, then removed: an empty file fits on a full disk."""
        try:
            files.probe(directory / PROBE_FILE)
        except OSError as error:
            raise _io_error("write", error, directory / PROBE_FILE) from None

    async def create(self, runtime_id: str) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._io, self._create, runtime_id)

    def _create(self, runtime_id: str) -> None:
        """Make the runtime's directory whole under a hidden name, then rename it into place:
        a first start cut short leaves either nothing or a complete directory."""
        runtimes = self.root / "runtimes"
        runtime_dir = runtimes / hex_id(runtime_id)
        building = runtimes / ("." + runtime_dir.name)
        snapshot = _runtime_snapshot(runtime_id, RuntimeStatus.RUNNING, 0)
        try:
            files.make_dir(building)
            files.make_dir(building / "workers")
            replace_atomically(building / "runtime.json", snapshot)
            # The first commit record: nothing yet. A store with this runtime.json has one.
            replace_atomically(building / COMMIT_LOG, jsonl_line(commit.encode(CommitRecord(), {})))
            files.fsync_path(building / "workers")
            os.rename(building, runtime_dir)
            files.fsync_path(runtimes)
        except OSError as error:
            raise _io_error("create runtime", error, runtime_dir) from None
        self._runtime_dir = runtime_dir
        self._runtime_id = runtime_id
        self._snapshots[runtime_dir / "runtime.json"] = snapshot
        self._commit_lines = 1

    # ---------------------------------------------------------- commit

    def commit(self, change: Change) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._failed is not None:
            # Built on a change that failed: fail it too until the Runtime has undone them all.
            future.set_exception(self._failed)
            return future
        self._queue.append((change, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop())
        return future

    def resume(self) -> None:
        self._failed = None

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch, self._queue = self._queue, []
            changes = [change for change, _ in batch]
            started = time.perf_counter()
            try:
                await loop.run_in_executor(self._io, self._write_batch, changes)
            except BaseException as error:
                if not isinstance(error, (StoreError, StatePoisoned)):
                    log.exception("store flush failed unexpectedly")
                    error = StatePoisoned(f"store flush failed unexpectedly: {error}")
                self._failed = error
                for _, future in batch + self._queue:
                    if not future.done():
                        future.set_exception(error)
                self._queue = []
                return
            self.flushes += 1
            self.flush_seconds.observe(time.perf_counter() - started)
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    def _write_batch(self, changes: list[Change]) -> None:
        batch = _Batch()
        try:
            self._gather(batch, changes)
            # Phase 1: everything but the commit record, durable before the commit record names it.
            self._write_data(batch)
            # Phase 2: the commit record. Once it is durable, the batch is.
            self._write_commit(batch)
        except OSError as error:
            failure = _io_error("write", error, self.runtime_dir)
            self._undo(batch, failure)
            raise failure from None
        finally:
            self._files.trim()
        self._after_commit(batch)

    def _gather(self, batch: _Batch, changes: list[Change]) -> None:
        """Encode the batch's records; the store's own bookkeeping changes only once the batch
        is durable (``_after_commit``), so a failure leaves nothing to undo in memory."""
        runtime_dir = self.runtime_dir
        runtime_status = self._runtime_status
        event_id, sequence, diagnostic_id = self._last_event_id, self._observation_sequence, self._diagnostic_id
        counts: dict[str, int] = {}  # observations per worker, for the workers the batch observes
        for change in changes:
            change_event = change.event.id if change.event is not None else None
            for state in change.workers:
                worker_id = state.worker_ref.worker_id
                directory = self.worker_dir(worker_id)
                execution = state.execution
                if execution is not None and execution != batch.executions.get(
                    worker_id, self._executions.get(worker_id)
                ):
                    # The commit line carries it: durable exactly when the batch is.
                    batch.executions[worker_id] = execution
                created = batch.created_event.get(worker_id, self._created_event.get(worker_id))
                if created is None:
                    assert change_event is not None
                    created = batch.created_event[worker_id] = change_event
                    batch.new_dirs.append(directory)
                elif batch.snapshot_status.get(worker_id, self._snapshot_status.get(worker_id)) is state.status:
                    continue  # input changes no snapshot field: the logs carry it
                batch.snapshot_status[worker_id] = state.status
                batch.snapshots[directory / "worker.json"] = _worker_snapshot(state, created)
            for entry in change.transcript:
                # A worker's own file: the ref is its directory.
                batch.append(
                    self.worker_dir(entry.worker_ref.worker_id) / "transcript.jsonl",
                    codec.encode_transcript_entry(entry, with_ref=False),
                )
            # Observations and diagnostics are committed by their numbers in the commit record;
            # the event id, where there is one, says which request wrote them.
            for observation in change.observations:
                record = codec.encode_observation(observation)
                if change_event is not None:
                    record["event_id"] = change_event
                worker_id = observation.worker_ref.worker_id
                batch.append(self.worker_dir(worker_id) / "observations.jsonl", record)
                counts[worker_id] = counts.get(worker_id, self._observation_counts.get(worker_id, 0)) + 1
                sequence = max(sequence, observation.sequence)
            for diagnostic in change.diagnostics:
                record = codec.encode_diagnostic(diagnostic)
                if change_event is not None:
                    record["event_id"] = change_event
                batch.append(runtime_dir / "diagnostics.jsonl", record)
                diagnostic_id = max(diagnostic_id, diagnostic.id)
            if change.event is not None:
                event = codec.encode_event(change.event)
                if change.event.kind is EventKind.WORKER_TURN_ENDED and change.transcript:
                    # Not every turn makes an entry: the event says which one it committed, so
                    # restore can tell a missing assistant entry from a turn that had none.
                    event["transcript_sequence"] = change.transcript[0].sequence
                batch.append(runtime_dir / "events.jsonl", event)
                event_id = change.event.id
            if change.runtime_status is not runtime_status:
                runtime_status = batch.runtime_status = change.runtime_status
                batch.snapshots[runtime_dir / "runtime.json"] = _runtime_snapshot(
                    self._runtime_id or "", change.runtime_status, event_id
                )
        batch.committed = CommitRecord(event_id, sequence, diagnostic_id, counts, batch.executions)
        batch.commit_line = jsonl_line(commit.encode(batch.committed, counts, batch.executions))

    def _write_data(self, batch: _Batch) -> None:
        synced_dirs: set[Path] = set()
        for directory in batch.new_dirs:
            files.make_dir(directory)
            synced_dirs.add(directory.parent)
        for path, lines in batch.appends.items():
            size = batch.sizes[path] = files.size_of(path)
            if size == 0 and not path.exists():
                batch.created_files.add(path)
                synced_dirs.add(path.parent)  # a new file's name is durable once its directory is
            with files.naming(path):
                files.write_all(self._files.append_fd(path), b"".join(lines))
        for path, data in batch.snapshots.items():
            batch.previous[path] = self._snapshots.get(path)
            files.write_file(path.with_name(path.name + TEMP_SUFFIX), data)
        # fsync in parallel: the filesystem folds concurrent flushes into few journal commits.
        to_sync: list[Callable[[], None]] = [
            partial(files.fsync_fd, self._files.append_fd(path), path) for path in batch.appends
        ]
        to_sync += [partial(files.fsync_path, path.with_name(path.name + TEMP_SUFFIX)) for path in batch.snapshots]
        self._run_all(to_sync)
        for path in batch.snapshots:
            os.replace(path.with_name(path.name + TEMP_SUFFIX), path)
            synced_dirs.add(path.parent)
        self._run_all([partial(files.fsync_path, d) for d in synced_dirs])

    def _write_commit(self, batch: _Batch) -> None:
        path = self.runtime_dir / COMMIT_LOG
        created = not path.exists()  # only a store whose commit log was removed under it
        batch.sizes.setdefault(path, files.size_of(path))
        if created:
            batch.created_files.add(path)
        fd = self._files.append_fd(path)
        with files.naming(path):
            files.write_all(fd, batch.commit_line)
            os.fsync(fd)
        if created:
            files.fsync_path(path.parent)

    def _run_all(self, calls: list[Callable[[], None]]) -> None:
        if len(calls) <= 1:
            for call in calls:
                call()
            return
        for future in [self._fsyncs.submit(call) for call in calls]:
            future.result()

    def _after_commit(self, batch: _Batch) -> None:
        self._snapshots.update(batch.snapshots)
        self._created_event.update(batch.created_event)
        self._snapshot_status.update(batch.snapshot_status)
        self._executions.update(batch.executions)
        if batch.runtime_status is not None:
            self._runtime_status = batch.runtime_status
        committed = batch.committed
        for worker_id, count in committed.observations.items():
            written = count - self._observation_counts.get(worker_id, 0)
            self._observation_lines[worker_id] = self._observation_lines.get(worker_id, 0) + written
            self._observation_counts[worker_id] = count
        self._last_event_id = committed.event_id
        self._observation_sequence = committed.observation_sequence
        self._diagnostic_id = committed.diagnostic_id
        self._commit_lines += 1
        # Keep observation logs bounded: rewrite one to its newest lines once it doubles.
        for worker_id, lines in list(self._observation_lines.items()):
            if lines > 2 * self._backlog:
                try:
                    self._compact_observations(worker_id)
                except OSError:
                    log.warning("could not compact observations of %s; will retry", worker_id, exc_info=True)
        # And the commit log: only its last line matters, once the counts are all in one line.
        if self._commit_lines > COMMIT_LOG_LINES + len(self._observation_counts) + len(self._executions):
            try:
                self._write_checkpoint()
            except OSError:
                log.warning("could not cut back the commit log; will retry", exc_info=True)

    def _compact_observations(self, worker_id: str) -> None:
        """Keep the newest ``backlog`` observations, led by a marker naming the newest one
        dropped, so a restored bus still knows that older cursors have expired, and how many
        the file has dropped in all, so restore can still count every acknowledged one."""
        path = self.worker_dir(worker_id) / "observations.jsonl"
        lines = [line for line in path.read_bytes().splitlines(keepends=True) if b'"trimmed_through"' not in line]
        dropped, keep = lines[: -self._backlog], lines[-self._backlog :]
        if not dropped:
            return
        trimmed = self._observation_counts.get(worker_id, 0) - len(keep)
        marker = jsonl_line({"trimmed_through": json.loads(dropped[-1])["sequence"], "trimmed": trimmed})
        self._files.forget(path)
        replace_atomically(path, marker + b"".join(keep))
        self._observation_lines[worker_id] = len(keep)

    def _undo(self, batch: _Batch, failure: StoreError) -> None:
        """Put the files back as they were before the batch; poison if that fails too."""
        try:
            for path, size in batch.sizes.items():
                if path.exists():
                    fd = self._files.append_fd(path)
                    with files.naming(path):
                        os.ftruncate(fd, size)
                        os.fsync(fd)
            for path, previous in batch.previous.items():
                path.with_name(path.name + TEMP_SUFFIX).unlink(missing_ok=True)
                if previous is not None and path.exists() and path.read_bytes() != previous:
                    replace_atomically(path, previous)
            for directory in batch.new_dirs:
                for file in ("transcript.jsonl", "observations.jsonl"):
                    self._files.forget(directory / file)
                if directory.exists():
                    shutil.rmtree(directory)
            for path in batch.created_files:
                # Created by this batch, now empty again: remove it, as if never written.
                self._files.forget(path)
                path.unlink(missing_ok=True)
        except OSError as error:
            log.error("could not undo a failed flush (%s): %s", failure.message, error)
            raise StatePoisoned(
                f"a store write failed ({failure.message}) and undoing it failed too ({error}); restart the daemon"
            ) from None

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._io, self._files.close)
        self._io.shutdown(wait=True)
        self._fsyncs.shutdown(wait=True)
        self._unlock()
