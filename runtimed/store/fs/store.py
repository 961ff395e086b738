"""``FsStore``: open or create the runtime directory, and commit changes to it.

Writes go through one worker thread (``_write_batch``, once a flush); ``restore`` reads the
directory back at open, and ``files`` holds the file operations both use.
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
from ...domain.errors import StatePoisoned, StoreCorrupt, StoreError, StoreIo
from ...domain.management import RuntimeStatus
from .. import codec
from ..base import Change, RestoredState, Store
from . import files
from .files import OpenFiles, hex_id, jsonl_line, replace_atomically, unhex_id, write_all
from .restore import Restored, Restorer

log = logging.getLogger("runtimed.store")


def _worker_snapshot(state: WorkerState, created_event_id: int) -> bytes:
    """What a worker was created with and its status. Rewritten only when the status changes;
    the transcript length and last event id live in the logs, which win at restore."""
    record = codec.WorkerRecord(state.worker_ref, created_event_id, state.status, state.request)
    return files.snapshot_document(codec.encode_worker_record(record))


def _runtime_snapshot(runtime_id: str, status: RuntimeStatus, last_event_id: int) -> bytes:
    return files.snapshot_document(codec.encode_runtime_record(codec.RuntimeRecord(runtime_id, status, last_event_id)))


@dataclass
class _Batch:
    """What one flush writes, gathered from its changes, and what it takes to undo it."""

    appends: dict[Path, list[bytes]] = field(default_factory=dict)
    events: list[bytes] = field(default_factory=list)
    new_dirs: list[Path] = field(default_factory=list)
    snapshots: dict[Path, bytes] = field(default_factory=dict)  # path -> new content
    sizes: dict[Path, int] = field(default_factory=dict)  # appended files: size before
    created_files: set[Path] = field(default_factory=set)  # appended files the batch creates
    previous: dict[Path, bytes | None] = field(default_factory=dict)  # replaced files: content before
    # What the store will remember once the batch is durable (nothing, if it fails).
    created_event: dict[str, int] = field(default_factory=dict)
    snapshot_status: dict[str, WorkerStatus] = field(default_factory=dict)
    last_event_id: int | None = None
    runtime_status: RuntimeStatus | None = None

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
        self._observation_lines: dict[str, int] = {}  # worker id -> lines in observations.jsonl
        self._runtime_status = RuntimeStatus.RUNNING
        self._last_event_id = 0

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
        runtimes = self.root / "runtimes"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            runtimes.mkdir(exist_ok=True)
        except FileExistsError:
            raise StoreCorrupt("open store root", str(self.root), "exists and is not a directory") from None
        except OSError as error:
            raise StoreIo("create store root", str(self.root), error.strerror or str(error)) from None
        if not runtimes.is_dir():
            raise StoreCorrupt("open", str(runtimes), "is a file where a directory should be")
        self._check_writable(runtimes)
        entries = []
        for entry in sorted(runtimes.iterdir()):
            if entry.name.startswith("."):
                # A write probe or a runtime directory half made when a first start was cut
                # short: nothing was ever acknowledged from either.
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
                continue
            entries.append(entry)
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
        return restored.state

    def _adopt(self, restored: Restored) -> None:
        """Take up the files where restore found them: the store writes on from there."""
        self._snapshots.update(restored.snapshots)
        self._created_event.update(restored.created_event)
        self._snapshot_status.update(restored.snapshot_status)
        self._observation_lines.update(restored.observation_lines)
        self._runtime_status = restored.runtime_status
        self._last_event_id = restored.last_event_id

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
        probe = directory / ".write-probe"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise StoreIo("write to store root", str(directory), error.strerror or str(error)) from None

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
            (building / "workers").mkdir(parents=True)
            replace_atomically(building / "runtime.json", snapshot)
            files.fsync_path(building / "workers")
            os.rename(building, runtime_dir)
            files.fsync_path(runtimes)
        except OSError as error:
            raise StoreIo("create runtime", str(runtime_dir), error.strerror or str(error)) from None
        self._runtime_dir = runtime_dir
        self._runtime_id = runtime_id
        self._snapshots[runtime_dir / "runtime.json"] = snapshot

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
            # Phase 1: everything but the event log, durable before the event log names it.
            self._write_data(batch)
            # Phase 2: the commit record.
            if batch.events:
                events = self.runtime_dir / "events.jsonl"
                created = not events.exists()
                batch.sizes.setdefault(events, files.size_of(events))
                if created:
                    batch.created_files.add(events)
                fd = self._files.append_fd(events)
                write_all(fd, b"".join(batch.events))
                os.fsync(fd)
                if created:
                    files.fsync_path(events.parent)
        except OSError as error:
            path = getattr(error, "filename", None) or str(self.runtime_dir)
            failure = StoreIo("write", str(path), error.strerror or str(error))
            self._undo(batch, failure)
            raise failure from None
        finally:
            self._files.trim()
        self._after_commit(batch, changes)

    def _gather(self, batch: _Batch, changes: list[Change]) -> None:
        """Encode the batch's records; the store's own bookkeeping changes only once the batch
        is durable (``_after_commit``), so a failure leaves nothing to undo in memory."""
        runtime_dir = self.runtime_dir
        runtime_status = self._runtime_status
        for change in changes:
            event_id = change.event.id if change.event is not None else None
            for state in change.workers:
                worker_id = state.worker_ref.worker_id
                directory = self.worker_dir(worker_id)
                created = batch.created_event.get(worker_id, self._created_event.get(worker_id))
                if created is None:
                    assert event_id is not None
                    created = batch.created_event[worker_id] = event_id
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
            # Records that are not events carry the id of the event they belong to, so that
            # restore can tell those of a request that never reached the event log.
            for observation in change.observations:
                record = codec.encode_observation(observation)
                if event_id is not None:
                    record["event_id"] = event_id
                batch.append(self.worker_dir(observation.worker_ref.worker_id) / "observations.jsonl", record)
            for diagnostic in change.diagnostics:
                record = codec.encode_diagnostic(diagnostic)
                if event_id is not None:
                    record["event_id"] = event_id
                batch.append(runtime_dir / "diagnostics.jsonl", record)
            if change.event is not None:
                batch.events.append(jsonl_line(codec.encode_event(change.event)))
                batch.last_event_id = change.event.id
            if change.runtime_status is not runtime_status:
                runtime_status = batch.runtime_status = change.runtime_status
                batch.snapshots[runtime_dir / "runtime.json"] = _runtime_snapshot(
                    self._runtime_id or "", change.runtime_status, batch.last_event_id or self._last_event_id
                )

    def _write_data(self, batch: _Batch) -> None:
        synced_dirs: set[Path] = set()
        for directory in batch.new_dirs:
            directory.mkdir()
            synced_dirs.add(directory.parent)
        for path, lines in batch.appends.items():
            size = batch.sizes[path] = files.size_of(path)
            if size == 0 and not path.exists():
                batch.created_files.add(path)
                synced_dirs.add(path.parent)  # a new file's name is durable once its directory is
            write_all(self._files.append_fd(path), b"".join(lines))
        for path, data in batch.snapshots.items():
            batch.previous[path] = self._snapshots.get(path)
            temp = path.with_name(path.name + ".tmp")
            temp.write_bytes(data)
        # fsync in parallel: the filesystem folds concurrent flushes into few journal commits.
        to_sync: list[Callable[[], None]] = [partial(os.fsync, self._files.append_fd(p)) for p in batch.appends]
        to_sync += [partial(files.fsync_path, path.with_name(path.name + ".tmp")) for path in batch.snapshots]
        self._run_all(to_sync)
        for path in batch.snapshots:
            os.replace(path.with_name(path.name + ".tmp"), path)
            synced_dirs.add(path.parent)
        self._run_all([partial(files.fsync_path, d) for d in synced_dirs])

    def _run_all(self, calls: list[Callable[[], None]]) -> None:
        if len(calls) <= 1:
            for call in calls:
                call()
            return
        for future in [self._fsyncs.submit(call) for call in calls]:
            future.result()

    def _after_commit(self, batch: _Batch, changes: list[Change]) -> None:
        self._snapshots.update(batch.snapshots)
        self._created_event.update(batch.created_event)
        self._snapshot_status.update(batch.snapshot_status)
        if batch.last_event_id is not None:
            self._last_event_id = batch.last_event_id
        if batch.runtime_status is not None:
            self._runtime_status = batch.runtime_status
        for change in changes:
            for observation in change.observations:
                worker_id = observation.worker_ref.worker_id
                self._observation_lines[worker_id] = self._observation_lines.get(worker_id, 0) + 1
        # Keep observation logs bounded: rewrite one to its newest lines once it doubles.
        for worker_id, lines in list(self._observation_lines.items()):
            if lines > 2 * self._backlog:
                try:
                    self._compact_observations(worker_id)
                except OSError:
                    log.warning("could not compact observations of %s; will retry", worker_id, exc_info=True)

    def _compact_observations(self, worker_id: str) -> None:
        """Keep the newest ``backlog`` observations, led by a marker naming the newest one
        dropped, so a restored bus still knows that older cursors have expired."""
        path = self.worker_dir(worker_id) / "observations.jsonl"
        lines = [line for line in path.read_bytes().splitlines(keepends=True) if b'"trimmed_through"' not in line]
        dropped, keep = lines[: -self._backlog], lines[-self._backlog :]
        if not dropped:
            return
        marker = jsonl_line({"trimmed_through": json.loads(dropped[-1])["sequence"]})
        self._files.forget(path)
        replace_atomically(path, marker + b"".join(keep))
        self._observation_lines[worker_id] = len(keep)

    def _undo(self, batch: _Batch, failure: StoreError) -> None:
        """Put the files back as they were before the batch; poison if that fails too."""
        try:
            for path, size in batch.sizes.items():
                if path.exists():
                    fd = self._files.append_fd(path)
                    os.ftruncate(fd, size)
                    os.fsync(fd)
            for path, previous in batch.previous.items():
                path.with_name(path.name + ".tmp").unlink(missing_ok=True)
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
