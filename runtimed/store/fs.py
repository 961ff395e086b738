"""The filesystem store: durable, crash-safe, restorable (contract §8).

Layout under the root (ids are hex-encoded into path components)::

    runtimes/id-<hex>/runtime.json                 runtime snapshot (schema_version 1)
    runtimes/id-<hex>/events.jsonl                 runtime event log: the commit record
    runtimes/id-<hex>/diagnostics.jsonl
    runtimes/id-<hex>/workers/id-<hex>/worker.json         worker snapshot
    runtimes/id-<hex>/workers/id-<hex>/transcript.jsonl
    runtimes/id-<hex>/workers/id-<hex>/observations.jsonl  retained observation events

**Atomic per request.** A flush writes a batch of changes in two phases: first everything but
the event log (transcript entries, diagnostics, observations, worker snapshots), fsynced;
then the batch's lines of ``events.jsonl``, fsynced. Every line of the first phase names the
event it belongs to, so after a crash restore keeps exactly what the event log committed and
discards the rest, which can only sit at the ends of files. The event log wins over snapshots:
worker status and counters are derived from it at restore.

**Group commit.** Changes that arrive while a flush runs wait for the next one, which writes
them all with one fsync per file touched, the fsyncs running in parallel. File I/O runs in a
worker thread, never on the event loop.

**Failure.** If a flush fails, what it wrote is truncated or put back and every pending change
fails with ``store_io``; if even that fails, ``StatePoisoned``.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..domain.observation import Observation
from ..domain.catalog import (
    AssistantIntent,
    BuiltinProfile,
    CapabilityRequest,
    ConfigBundleRef,
    CreateWorkerRequest,
    MountRef,
    NamedProfile,
    RoleIntent,
    RuntimeDefaultProfile,
    TaskIntent,
    WorkerState,
    WorkerStatus,
    WorkspaceRef,
)
from ..domain.errors import StatePoisoned, StoreCorrupt, StoreError, StoreIo, StoreMissing
from ..domain.identity import WorkerRef
from ..domain.management import RuntimeStatus
from ..domain.observation import EventKind, RuntimeDiagnostic, RuntimeEvent, Severity, TranscriptEntry, TranscriptRole
from .base import Change, RestoredState, Store

log = logging.getLogger("runtimed.store")

SCHEMA_VERSION = 1
OPEN_FILES = 128  # append handles kept open at once (an LRU: a runtime may have many workers)


def hex_id(value: str) -> str:
    return "id-" + value.encode("utf-8").hex()


def unhex_id(name: str) -> str | None:
    if not name.startswith("id-"):
        return None
    try:
        return bytes.fromhex(name[3:]).decode("utf-8")
    except ValueError:
        return None


def _loads(raw: bytes) -> Any:
    """One log line. orjson first (several times faster: restore reads every line), then the
    standard library for what orjson refuses but the store writes on purpose: the ``\\udXXX``
    escape of a lone surrogate a client sent."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _worker_number(worker_id: str) -> int:
    """The sequence in ``worker-0000002a``; 0 for an id of another form."""
    try:
        return int(worker_id.removeprefix("worker-"), 16)
    except ValueError:
        return 0


def _line(record: dict[str, Any]) -> bytes:
    # ensure_ascii keeps any lone surrogate a client sent representable on disk.
    return (json.dumps(record, separators=(",", ":")) + "\n").encode("ascii")


# --------------------------------------------------------------- encoding


def _ref(ref: WorkerRef | None) -> dict[str, str] | None:
    return None if ref is None else {"runtime_id": ref.runtime_id, "worker_id": ref.worker_id}


def _request_record(request: CreateWorkerRequest) -> dict[str, Any]:
    def intent(value: Any) -> dict[str, Any]:
        fields = {k: getattr(value, k) for k in value.__dataclass_fields__ if getattr(value, k) is not None}
        return {"kind": value.kind, **fields}

    return {
        "intent": intent(request.intent),
        "profile": intent(request.profile),
        "config_bundle": None if request.config_bundle is None else {"id": request.config_bundle.id},
        "requested_capabilities": [{"name": c.name, "reason": c.reason} for c in request.requested_capabilities],
        "workspace_refs": [{"name": w.name, "reference": w.reference} for w in request.workspace_refs],
        "mount_refs": [{"name": m.name, "reference": m.reference} for m in request.mount_refs],
    }


_INTENTS = {"assistant": AssistantIntent, "task": TaskIntent, "role": RoleIntent}
_PROFILES = {"runtime_default": RuntimeDefaultProfile, "builtin": BuiltinProfile, "named": NamedProfile}


def _tagged(table: dict[str, type], record: dict[str, Any]) -> Any:
    record = dict(record)
    return table[record.pop("kind")](**record)


def _request_from(record: dict[str, Any]) -> CreateWorkerRequest:
    bundle = record.get("config_bundle")
    return CreateWorkerRequest(
        intent=_tagged(_INTENTS, record["intent"]),
        profile=_tagged(_PROFILES, record["profile"]),
        config_bundle=None if bundle is None else ConfigBundleRef(bundle["id"]),
        requested_capabilities=tuple(CapabilityRequest(c["name"], c.get("reason")) for c in record["requested_capabilities"]),
        workspace_refs=tuple(WorkspaceRef(w["name"], w["reference"]) for w in record["workspace_refs"]),
        mount_refs=tuple(MountRef(m["name"], m["reference"]) for m in record["mount_refs"]),
    )


def _worker_snapshot(state: WorkerState, created_event_id: int) -> bytes:
    """What a worker was created with and its status. Rewritten only when the status changes;
    the transcript length and last event id live in the logs, which win at restore."""
    return json.dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "worker_ref": _ref(state.worker_ref),
            "created_event_id": created_event_id,
            "status": state.status.value,
            "request": _request_record(state.request),
        },
        indent=1,
    ).encode("ascii")


def _runtime_snapshot(runtime_id: str, status: RuntimeStatus, last_event_id: int) -> bytes:
    return json.dumps(
        {"schema_version": SCHEMA_VERSION, "runtime_id": runtime_id, "status": status.value, "last_event_id": last_event_id},
        indent=1,
    ).encode("ascii")


# ------------------------------------------------------------ file writes


class _Files:
    """Append handles (an LRU of open descriptors) and atomic replacement, with the sizes
    and contents needed to undo a failed flush."""

    def __init__(self) -> None:
        self._handles: OrderedDict[Path, int] = OrderedDict()

    def append_fd(self, path: Path) -> int:
        fd = self._handles.get(path)
        if fd is not None:
            self._handles.move_to_end(path)
            return fd
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._handles[path] = fd
        return fd

    def trim(self) -> None:
        """Close the least recently used handles over the limit (between flushes only, so a
        flush never loses a descriptor it is about to fsync)."""
        while len(self._handles) > OPEN_FILES:
            _, old = self._handles.popitem(last=False)
            os.close(old)

    def forget(self, path: Path) -> None:
        fd = self._handles.pop(path, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for fd in self._handles.values():
            os.close(fd)
        self._handles.clear()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written: a short write (a full disk) must not leave a
    torn line behind an acknowledged request."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def replace_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new, never half:
    temp file, fsync, rename, fsync of the directory."""
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    _fsync_path(path.parent)


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
        self.appends.setdefault(path, []).append(_line(record))


# ------------------------------------------------------------------ store


class FsStore(Store):
    """Everything under ``root``; see the module docstring for the layout and guarantees."""

    backend = "fs_store"
    id_prefix = "fs"

    def __init__(self, root: Path, observation_backlog: int = 1024) -> None:
        super().__init__()
        self.root = Path(root)
        self._backlog = observation_backlog
        self._runtime_dir: Path | None = None
        self._runtime_id: str | None = None
        self._files = _Files()
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
            raise StoreCorrupt(
                "open", str(runtimes), f"holds {len(entries)} entries; a root holds exactly one runtime"
            )
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
        return _Restorer(self, stored_id).restore()

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
            _fsync_path(building / "workers")
            os.rename(building, runtime_dir)
            _fsync_path(runtimes)
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
            except BaseException as error:  # noqa: BLE001 - every waiter must hear of it
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
                batch.sizes.setdefault(events, self._size(events))
                if created:
                    batch.created_files.add(events)
                fd = self._files.append_fd(events)
                _write_all(fd, b"".join(batch.events))
                os.fsync(fd)
                if created:
                    _fsync_path(events.parent)
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
                batch.append(
                    self.worker_dir(entry.worker_ref.worker_id) / "transcript.jsonl",
                    {"sequence": entry.sequence, "role": entry.role.value, "content": entry.content, "event_id": entry.event_id},
                )
            for observation in change.observations:
                record: dict[str, Any] = {"sequence": observation.sequence, "event": observation.event}
                if observation.data is not None:
                    record["data"] = observation.data
                if event_id is not None:
                    record["event_id"] = event_id
                batch.append(self.worker_dir(observation.worker_ref.worker_id) / "observations.jsonl", record)
            for diagnostic in change.diagnostics:
                record = {
                    "id": diagnostic.id,
                    "severity": diagnostic.severity.value,
                    "code": diagnostic.code,
                    "message": diagnostic.message,
                }
                if diagnostic.worker_ref is not None:
                    record["worker_ref"] = _ref(diagnostic.worker_ref)
                if event_id is not None:
                    record["event_id"] = event_id
                batch.append(runtime_dir / "diagnostics.jsonl", record)
            if change.event is not None:
                event = change.event
                record = {"id": event.id, "kind": event.kind.value, "message": event.message}
                if event.worker_ref is not None:
                    record["worker_ref"] = _ref(event.worker_ref)
                batch.events.append(_line(record))
                batch.last_event_id = event.id
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
            size = batch.sizes[path] = self._size(path)
            if size == 0 and not path.exists():
                batch.created_files.add(path)
                synced_dirs.add(path.parent)  # a new file's name is durable once its directory is
            _write_all(self._files.append_fd(path), b"".join(lines))
        for path, data in batch.snapshots.items():
            batch.previous[path] = self._snapshots.get(path)
            temp = path.with_name(path.name + ".tmp")
            temp.write_bytes(data)
        # fsync in parallel: the filesystem folds concurrent flushes into few journal commits.
        to_sync: list[Callable[[], None]] = [
            (lambda fd=self._files.append_fd(p): os.fsync(fd)) for p in batch.appends
        ]
        to_sync += [(lambda p=path: _fsync_path(p.with_name(p.name + ".tmp"))) for path in batch.snapshots]
        self._run_all(to_sync)
        for path in batch.snapshots:
            os.replace(path.with_name(path.name + ".tmp"), path)
            synced_dirs.add(path.parent)
        self._run_all([(lambda d=d: _fsync_path(d)) for d in synced_dirs])

    def _run_all(self, calls: list[Callable[[], None]]) -> None:
        if len(calls) <= 1:
            for call in calls:
                call()
            return
        for future in [self._fsyncs.submit(call) for call in calls]:
            future.result()

    def _size(self, path: Path) -> int:
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            return 0

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
        marker = _line({"trimmed_through": json.loads(dropped[-1])["sequence"]})
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


# ---------------------------------------------------------------- restore


class _Restorer:
    """Loads and validates a runtime directory; sets aside what a crash left half-written."""

    def __init__(self, store: FsStore, runtime_id: str) -> None:
        self.store = store
        self.runtime_id = runtime_id
        self.dir = store.runtime_dir
        self.warnings: list[tuple[str, str]] = []
        self.trimmed: dict[str, int] = {}  # worker id -> newest observation sequence compacted away
        self.refs: dict[str, WorkerRef] = {}

    def corrupt(self, path: Path, problem: str) -> StoreCorrupt:
        return StoreCorrupt("restore", str(path), problem)

    def warn(self, code: str, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append((code, message))

    def restore(self) -> RestoredState:
        snapshot_path = self.dir / "runtime.json"
        snapshot = self._read_json(snapshot_path)
        if snapshot.get("runtime_id") != self.runtime_id:
            raise self.corrupt(snapshot_path, f"names runtime {snapshot.get('runtime_id')!r}, not {self.runtime_id!r}")
        self.store._snapshots[snapshot_path] = snapshot_path.read_bytes()

        events_path = self.dir / "events.jsonl"
        workers_dir = self.dir / "workers"
        has_workers = workers_dir.is_dir() and any(workers_dir.iterdir())
        if not events_path.exists() and (snapshot.get("last_event_id") or has_workers):
            # Only a runtime whose first start was cut short has no event log yet; this one
            # has workers or names events, so its log is lost, not unwritten.
            raise StoreMissing("restore", str(events_path), "the runtime event log is missing")
        events = [self._event(record, path) for record, path in self._read_log(events_path)]
        for index, event in enumerate(events):
            if event.id != index + 1:
                raise self.corrupt(self.dir / "events.jsonl", f"event id {event.id} where {index + 1} was expected")
        last_event = len(events)
        if isinstance(snapshot.get("last_event_id"), int) and snapshot["last_event_id"] > last_event:
            raise self.corrupt(
                events_path, f"ends at event {last_event}, but runtime.json was written at event {snapshot['last_event_id']}"
            )

        diagnostics = self._diagnostics(last_event)
        workers, transcripts, observations = self._workers(events, last_event)

        status = RuntimeStatus.RUNNING
        for event in events:
            if event.kind is EventKind.RUNTIME_STOPPED:
                status = RuntimeStatus.STOPPED
            elif event.kind is EventKind.RUNTIME_STARTED:
                status = RuntimeStatus.RUNNING
        self.store._runtime_status = RuntimeStatus(snapshot.get("status", "running"))
        self.store._last_event_id = last_event
        if self.store._runtime_status is not status:
            # The event log wins; bring the snapshot in line with it.
            self.store._runtime_status = status
            data = _runtime_snapshot(self.runtime_id, status, last_event)
            replace_atomically(snapshot_path, data)
            self.store._snapshots[snapshot_path] = data
        observations.sort(key=lambda o: o.sequence)
        return RestoredState(
            runtime_id=self.runtime_id,
            status=status,
            worker_sequence=len(workers),
            observation_sequence=observations[-1].sequence if observations else 0,
            events=events,
            workers=workers,
            transcripts=transcripts,
            diagnostics=diagnostics,
            observations=observations,
            observations_trimmed=self.trimmed,
            warnings=self.warnings,
        )

    # ----------------------------------------------------------- files

    def _read_json(self, path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise StoreMissing("restore", str(path), "file is missing") from None
        except IsADirectoryError:
            raise self.corrupt(path, "is a directory where a file should be") from None
        except ValueError as error:
            raise self.corrupt(path, f"not valid JSON: {error}") from None
        except OSError as error:
            raise StoreIo("read", str(path), error.strerror or str(error)) from None
        if not isinstance(data, dict):
            raise self.corrupt(path, "is not a JSON object")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise self.corrupt(path, f"schema_version {data.get('schema_version')!r} is not one this runtimed knows ({SCHEMA_VERSION})")
        return data

    def _read_log(self, path: Path) -> list[tuple[dict[str, Any], Path]]:
        """The records of a ``.jsonl`` log; a torn last line is set aside, anything else bad is
        corruption."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        except IsADirectoryError:
            raise self.corrupt(path, "is a directory where a file should be") from None
        except OSError as error:
            raise StoreIo("read", str(path), error.strerror or str(error)) from None
        lines = data.split(b"\n")
        tail = lines.pop()  # after the last newline: empty unless the last append was torn
        records = []
        for number, raw in enumerate(lines, start=1):
            try:
                record = _loads(raw)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                raise self.corrupt(path, f"line {number} is not a JSON object")
            records.append((record, path))
        if tail:
            self._set_aside(path, len(data) - len(tail), tail)
        return records

    def _set_aside(self, path: Path, keep: int, tail: bytes) -> None:
        aside = path.with_name(path.name + ".corrupt")
        with open(aside, "ab") as file:
            file.write(tail + b"\n")
            file.flush()
            os.fsync(file.fileno())
        self._truncate(path, keep)
        self.warn(
            "store.torn_tail",
            f"{path}: an incomplete last line ({len(tail)} bytes, from a write the daemon did not "
            f"acknowledge) was set aside in {aside.name}",
        )

    def _truncate(self, path: Path, size: int) -> None:
        with open(path, "r+b") as file:
            file.truncate(size)
            file.flush()
            os.fsync(file.fileno())

    def _discard_uncommitted(
        self, path: Path, records: list[tuple[dict[str, Any], Path]], last_event: int, what: str, may_interleave: bool = False
    ) -> list[dict[str, Any]]:
        """Drop records written for events past the log's end; they must close the file."""
        kept: list[dict[str, Any]] = []
        dropped = 0
        for record, _ in records:
            event_id = record.get("event_id")
            if isinstance(event_id, int) and event_id > last_event:
                dropped += 1
                continue
            if dropped and not (may_interleave and event_id is None):
                raise self.corrupt(path, f"a {what} of a committed event follows one of an uncommitted event")
            kept.append(record)
        if dropped:
            data = b"".join(_line(record) for record in kept)
            replace_atomically(path, data)
            self.store._files.forget(path)
            self.warn(
                "store.uncommitted_discarded",
                f"{path}: {dropped} {what}(s) written for a request that was never acknowledged were discarded",
            )
        return kept

    # --------------------------------------------------------- records

    def _event(self, record: dict[str, Any], path: Path) -> RuntimeEvent:
        try:
            return RuntimeEvent(
                id=record["id"],
                kind=EventKind(record["kind"]),
                message=record["message"],
                worker_ref=self._worker_ref(record.get("worker_ref"), path),
            )
        except (KeyError, ValueError, TypeError) as error:
            raise self.corrupt(path, f"bad event record {record!r}: {error}") from None

    def _worker_ref(self, record: Any, path: Path) -> WorkerRef | None:
        if record is None:
            return None
        if not isinstance(record, dict) or record.get("runtime_id") != self.runtime_id:
            raise self.corrupt(path, f"names another runtime: {record!r}")
        # One ref object per worker, however many records name it.
        worker_id = record["worker_id"]
        ref = self.refs.get(worker_id)
        if ref is None:
            ref = self.refs[worker_id] = WorkerRef(self.runtime_id, worker_id)
        return ref

    def _diagnostics(self, last_event: int) -> list[RuntimeDiagnostic]:
        path = self.dir / "diagnostics.jsonl"
        records = self._discard_uncommitted(path, self._read_log(path), last_event, "diagnostic", may_interleave=True)
        diagnostics = []
        for index, record in enumerate(records):
            try:
                diagnostic = RuntimeDiagnostic(
                    id=record["id"],
                    severity=Severity(record["severity"]),
                    code=record["code"],
                    message=record["message"],
                    worker_ref=self._worker_ref(record.get("worker_ref"), path),
                )
            except (KeyError, ValueError, TypeError) as error:
                raise self.corrupt(path, f"bad diagnostic record {record!r}: {error}") from None
            if diagnostic.id != index + 1:
                raise self.corrupt(path, f"diagnostic id {diagnostic.id} where {index + 1} was expected")
            diagnostics.append(diagnostic)
        return diagnostics

    def _workers(
        self, events: list[RuntimeEvent], last_event: int
    ) -> tuple[list[WorkerState], dict[str, list[TranscriptEntry]], list[Observation]]:
        workers_dir = self.dir / "workers"
        if not workers_dir.exists():
            raise StoreMissing("restore", str(workers_dir), "directory is missing")
        if not workers_dir.is_dir():
            raise self.corrupt(workers_dir, "is a file where a directory should be")
        created = {e.worker_ref.worker_id: e.id for e in events if e.kind is EventKind.WORKER_CREATED and e.worker_ref}
        on_disk: dict[str, Path] = {}
        for directory in workers_dir.iterdir():
            worker_id = unhex_id(directory.name)
            if directory.name.endswith(".tmp") or worker_id is None:
                raise self.corrupt(directory, "is not a worker directory (id-<hex of worker id>)")
            if not directory.is_dir():
                raise self.corrupt(directory, "is a file where a directory should be")
            if worker_id not in created:
                if _worker_number(worker_id) <= max(map(_worker_number, created), default=0):
                    # Only the newest workers can be an unacknowledged create; an older one
                    # without its event means the log lost it.
                    raise self.corrupt(directory, f"worker {worker_id} has no worker_created event, but later workers do")
                # Created by a request whose worker_created event never reached the log.
                shutil.rmtree(directory)
                _fsync_path(workers_dir)
                self.warn(
                    "store.uncommitted_discarded",
                    f"{directory}: worker {worker_id} was never acknowledged (no worker_created event); removed",
                )
                continue
            on_disk[worker_id] = directory
        for worker_id in created:
            if worker_id not in on_disk:
                raise StoreMissing("restore", str(workers_dir / hex_id(worker_id)), f"directory of worker {worker_id} is missing")

        # The event log wins: status and last event of each worker come from it.
        status: dict[str, WorkerStatus] = {}
        last: dict[str, int] = {}
        inputs: dict[str, int] = {}
        for event in events:
            ref = event.worker_ref
            if event.kind is EventKind.RUNTIME_STOPPED:
                for worker_id, current in status.items():
                    if current is WorkerStatus.RUNNING:
                        status[worker_id] = WorkerStatus.STOPPED
                        last[worker_id] = event.id
                continue
            if ref is None:
                continue
            if event.kind is EventKind.WORKER_CREATED:
                status[ref.worker_id] = WorkerStatus.RUNNING
            elif event.kind is EventKind.WORKER_STOPPED:
                status[ref.worker_id] = WorkerStatus.STOPPED
            elif event.kind is EventKind.WORKER_CANCELLED:
                status[ref.worker_id] = WorkerStatus.CANCELLED
            elif event.kind is EventKind.WORKER_INPUT_ACCEPTED:
                inputs[ref.worker_id] = inputs.get(ref.worker_id, 0) + 1
            if ref.worker_id not in created:
                raise self.corrupt(self.dir / "events.jsonl", f"event {event.id} names worker {ref.worker_id}, which was never created")
            last[ref.worker_id] = event.id

        workers: list[WorkerState] = []
        transcripts: dict[str, list[TranscriptEntry]] = {}
        observations: list[Observation] = []
        for worker_id in sorted(created, key=created.__getitem__):
            directory = on_disk[worker_id]
            snapshot_path = directory / "worker.json"
            snapshot = self._read_json(snapshot_path)
            ref = self._worker_ref(snapshot.get("worker_ref"), snapshot_path)
            if ref is None or ref.worker_id != worker_id:
                raise self.corrupt(snapshot_path, f"names worker {snapshot.get('worker_ref')!r}, not {worker_id!r}")
            try:
                request = _request_from(snapshot["request"])
            except (KeyError, ValueError, TypeError) as error:
                raise self.corrupt(snapshot_path, f"bad worker request: {error}") from None
            entries = self._transcript(directory, ref, last_event)
            if len(entries) != inputs.get(worker_id, 0):
                raise self.corrupt(
                    directory / "transcript.jsonl",
                    f"holds {len(entries)} entries, but the event log accepted {inputs.get(worker_id, 0)} inputs",
                )
            state = WorkerState(ref, request, status[worker_id], len(entries), last[worker_id])
            self.store._created_event[worker_id] = created[worker_id]
            self.store._snapshots[snapshot_path] = snapshot_path.read_bytes()
            self.store._snapshot_status[worker_id] = state.status
            if snapshot.get("status") != state.status.value:
                # The event log wins over the snapshot; bring the snapshot in line.
                data = _worker_snapshot(state, created[worker_id])
                replace_atomically(snapshot_path, data)
                self.store._snapshots[snapshot_path] = data
            workers.append(state)
            transcripts[worker_id] = entries
            worker_observations = self._observations(directory, ref, last_event)
            self.store._observation_lines[worker_id] = len(worker_observations)
            observations.extend(worker_observations)  # the bus keeps the newest it is configured for
        return workers, transcripts, observations

    def _transcript(self, directory: Path, ref: WorkerRef, last_event: int) -> list[TranscriptEntry]:
        path = directory / "transcript.jsonl"
        records = self._discard_uncommitted(path, self._read_log(path), last_event, "transcript entry")
        entries = []
        for index, record in enumerate(records):
            try:
                entry = TranscriptEntry(
                    sequence=record["sequence"],
                    worker_ref=ref,
                    role=TranscriptRole(record["role"]),
                    content=record["content"],
                    event_id=record["event_id"],
                )
            except (KeyError, ValueError, TypeError) as error:
                raise self.corrupt(path, f"bad transcript record on line {index + 1}: {error}") from None
            if entry.sequence != index + 1:
                raise self.corrupt(path, f"sequence {entry.sequence} on line {index + 1}")
            entries.append(entry)
        return entries

    def _observations(self, directory: Path, ref: WorkerRef, last_event: int) -> list[Observation]:
        path = directory / "observations.jsonl"
        records = self._discard_uncommitted(path, self._read_log(path), last_event, "observation", may_interleave=True)
        observations = []
        previous = 0
        for index, record in enumerate(records):
            if index == 0 and set(record) == {"trimmed_through"}:
                previous = record["trimmed_through"]
                if not isinstance(previous, int):
                    raise self.corrupt(path, f"bad compaction marker {record!r}")
                self.trimmed[ref.worker_id] = previous
                continue
            try:
                observation = Observation(record["sequence"], ref, record["event"], record.get("data"))
            except (KeyError, TypeError) as error:
                raise self.corrupt(path, f"bad observation record on line {index + 1}: {error}") from None
            if not isinstance(observation.sequence, int) or observation.sequence <= previous:
                raise self.corrupt(path, f"observation sequence {observation.sequence!r} out of order on line {index + 1}")
            previous = observation.sequence
            observations.append(observation)
        return observations

