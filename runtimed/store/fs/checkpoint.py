"""Checkpoints: the seed's per-worker and runtime files, written from what the log made durable.

A checkpoint takes the changes the log has made durable since the last one and writes them into
the files of the seed's layout — event, transcript, observation and diagnostic lines appended,
``worker.json`` and ``runtime.json`` replaced — fsyncs them all, and only then records the LSN it
covers in ``checkpoint.json`` (the marker: temp file, fsync, rename, fsync of the directory),
with the counts restore must find in the files: the last event id, observation sequence and
diagnostic id, each worker's observation count (those compacted away included), the
execution of every agent-backed worker (§9.2), and how many kept ``Idempotency-Key`` answers
``idempotency.jsonl`` has taken in (§11). The directory of a deleted worker is removed only
after the marker that no longer counts it. Records past the marker's counts are what an
interrupted checkpoint left: they are in the log too, and restore cuts them back.

``CheckpointFiles`` keeps what it needs to write on from where the files are (which workers have
a directory, the status in each ``worker.json``, how many lines each observation log has) and
undoes a checkpoint that failed half-way, so the next one starts from a known length.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ...domain.catalog import WorkerState, WorkerStatus
from ...domain.execution import WorkerExecution
from ...domain.idempotency import KeptAnswer
from ...domain.management import RuntimeStatus
from ...domain.observation import EventKind
from .. import codec
from ..base import Change
from . import commit, files, wal
from .commit import CommitRecord
from .files import RUNTIME_SCHEMA_VERSION, TEMP_SUFFIX, WORKER_SCHEMA_VERSION, OpenFiles, hex_id, jsonl_line

log = logging.getLogger("runtimed.store")

#: The marker, beside ``runtime.json``.
MARKER = "checkpoint.json"
#: 2 counts kept ``Idempotency-Key`` answers (§11); a runtimed from before them knows only 1,
#: and refuses 2 rather than drop answers it cannot see.
MARKER_SCHEMA_VERSION = 2
MARKER_SCHEMA_VERSIONS = (1, 2)
#: Kept ``Idempotency-Key`` answers (§11), one a line, beside ``events.jsonl``.
IDEMPOTENCY_LOG = "idempotency.jsonl"
#: ``idempotency.jsonl`` is rewritten to its unexpired answers once the lines of expired (or
#: replaced) ones are as many as those and at least this many: each line is rewritten O(1) times.
IDEMPOTENCY_COMPACT_SLACK = 1024
#: What runtimed puts in a worker's directory (and what a write of them leaves for a moment):
#: a directory holding anything else is not removed when its worker is deleted.
WORKER_FILES = frozenset(
    name + suffix
    for name in ("worker.json", "transcript.jsonl", "observations.jsonl")
    for suffix in ("", TEMP_SUFFIX, ".corrupt")
)


def worker_snapshot(state: WorkerState, created_event_id: int) -> bytes:
    """What a worker was created with and its status. Rewritten only when the status changes;
    the transcript length and last event id live in the logs, which win at restore."""
    record = codec.WorkerRecord(state.worker_ref, created_event_id, state.status, state.request)
    return files.snapshot_document(codec.encode_worker_record(record), WORKER_SCHEMA_VERSION)


def runtime_snapshot(runtime_id: str, status: RuntimeStatus, last_event_id: int) -> bytes:
    record = codec.encode_runtime_record(codec.RuntimeRecord(runtime_id, status, last_event_id))
    return files.snapshot_document(record, RUNTIME_SCHEMA_VERSION)


def encode_marker(lsn: int, committed: CommitRecord) -> bytes:
    """``checkpoint.json``: the LSN the files cover and every count restore checks them against."""
    record = {"lsn": lsn, **commit.encode(committed, committed.observations, committed.executions)}
    return files.snapshot_document(record, MARKER_SCHEMA_VERSION)


def decode_marker(record: Mapping[str, Any]) -> tuple[int, CommitRecord]:
    """The LSN and counts of a marker; raises ``ValueError`` or ``KeyError`` for a bad one."""
    lsn = record["lsn"]
    if not isinstance(lsn, int) or isinstance(lsn, bool) or lsn < 0:
        raise ValueError(f"lsn must be a whole number, not {lsn!r}")
    return lsn, commit.fold(CommitRecord(), record)


@dataclass
class _Batch:
    """What one checkpoint writes, gathered from its changes, and what it takes to undo it."""

    appends: dict[Path, list[bytes]] = field(default_factory=dict)
    new_dirs: list[Path] = field(default_factory=list)
    snapshots: dict[Path, bytes] = field(default_factory=dict)  # path -> new content
    sizes: dict[Path, int] = field(default_factory=dict)  # appended files: size before
    created_files: set[Path] = field(default_factory=set)  # appended files the batch creates
    previous: dict[Path, bytes | None] = field(default_factory=dict)  # replaced files: content before
    # What the files hold once the batch is written (nothing changes if it fails).
    created_event: dict[str, int] = field(default_factory=dict)
    snapshot_status: dict[str, WorkerStatus] = field(default_factory=dict)
    executions: dict[str, WorkerExecution] = field(default_factory=dict)
    runtime_status: RuntimeStatus | None = None
    committed: CommitRecord = field(default_factory=CommitRecord)
    kept: list[KeptAnswer] = field(default_factory=list)  # appended to idempotency.jsonl
    deleted: list[str] = field(default_factory=list)  # workers deleted: directories to remove

    def append(self, path: Path, record: dict[str, Any]) -> None:
        self.appends.setdefault(path, []).append(jsonl_line(record))


class CheckpointFiles:
    """The checkpoint files of one runtime directory, written by one thread at a time."""

    def __init__(
        self,
        runtime_dir: Path,
        runtime_id: str,
        backlog: int,
        fsyncs: ThreadPoolExecutor,
        idempotency_ttl: float = 86400.0,
    ) -> None:
        self.dir = runtime_dir
        self.runtime_id = runtime_id
        self.backlog = backlog
        self.idempotency_ttl = idempotency_ttl
        self._fsyncs = fsyncs
        self._files = OpenFiles()
        self._paths: dict[str, tuple[Path, Path, Path]] = {}
        self.created_event: dict[str, int] = {}  # worker id -> id of its worker_created event
        self.snapshot_status: dict[str, WorkerStatus] = {}  # worker id -> status in worker.json
        self.snapshots: dict[Path, bytes] = {}  # snapshot path -> content on disk
        self.observation_lines: dict[str, int] = {}  # worker id -> observation lines in its file
        self.runtime_status = RuntimeStatus.RUNNING
        #: Per key, when the newest answer ``idempotency.jsonl`` holds for it was kept, in the
        #: order kept (the bodies are the Runtime's to hold; compaction reads them back), and
        #: the file's lines (a compaction marker not counted).
        self.kept: dict[str, float] = {}
        self.idempotency_lines = 0
        #: Deleted workers whose directory is still to be removed (once the marker is durable).
        self.deleting: list[str] = []
        #: What the files hold, as the marker says it (every count).
        self.committed = CommitRecord()
        #: The LSN the marker records.
        self.lsn = 0

    def worker_dir(self, worker_id: str) -> Path:
        return self.worker_paths(worker_id)[0]

    def worker_paths(self, worker_id: str) -> tuple[Path, Path, Path]:
        """A worker's directory, ``transcript.jsonl`` and ``observations.jsonl`` (built once:
        a checkpoint names them for every record it writes)."""
        paths = self._paths.get(worker_id)
        if paths is None:
            directory = self.dir / "workers" / hex_id(worker_id)
            paths = self._paths[worker_id] = (
                directory,
                directory / "transcript.jsonl",
                directory / "observations.jsonl",
            )
        return paths

    # ------------------------------------------------------------ writing

    def write_files(self, changes: list[Change]) -> None:
        """Write ``changes`` into the files, durably: the first step of a checkpoint. On
        failure the files are put back as they were (the ``OSError`` is raised all the same);
        if even that fails, ``CheckpointBroken``."""
        batch = _Batch()
        try:
            self._gather(batch, changes)
            self._write_data(batch)
        except OSError:
            self._undo(batch)
            raise
        finally:
            self._files.trim()
        self._after_write(batch)

    def write_marker(self, lsn: int) -> None:
        """Record that the files hold everything up to ``lsn``: the step that completes a
        checkpoint (before it, restore cuts the files back to the previous marker)."""
        files.replace_atomically(self.dir / MARKER, encode_marker(lsn, self.committed))
        self.lsn = lsn

    def compact(self) -> None:
        """Keep observation logs bounded: rewrite one to its newest lines once it doubles.
        Only after the marker: a file compacted past the marker could not be cut back to it."""
        for worker_id, lines in list(self.observation_lines.items()):
            if lines > 2 * self.backlog:
                try:
                    self._compact_observations(worker_id)
                except OSError:
                    log.warning("could not compact observations of %s; will retry", worker_id, exc_info=True)

    def _gather(self, batch: _Batch, changes: list[Change]) -> None:
        """Encode the batch's records; the bookkeeping changes only once the batch is written
        (``_after_write``), so a failure leaves nothing to undo in memory."""
        runtime_dir = self.dir
        runtime_status = self.runtime_status
        committed = self.committed
        event_id, sequence, diagnostic_id = committed.event_id, committed.observation_sequence, committed.diagnostic_id
        counts: dict[str, int] = {}  # observations per worker, for the workers the batch observes
        executions = committed.executions
        idempotency_path = runtime_dir / IDEMPOTENCY_LOG
        for change in changes:
            change_event = change.event.id if change.event is not None else None
            for state in change.workers:
                worker_id = state.worker_ref.worker_id
                directory = self.worker_dir(worker_id)
                execution = state.execution
                if execution is not None and execution != batch.executions.get(worker_id, executions.get(worker_id)):
                    batch.executions[worker_id] = execution
                created = batch.created_event.get(worker_id, self.created_event.get(worker_id))
                if created is None:
                    assert change_event is not None
                    created = batch.created_event[worker_id] = change_event
                    batch.new_dirs.append(directory)
                elif batch.snapshot_status.get(worker_id, self.snapshot_status.get(worker_id)) is state.status:
                    continue  # input changes no snapshot field: the logs carry it
                batch.snapshot_status[worker_id] = state.status
                batch.snapshots[directory / "worker.json"] = worker_snapshot(state, created)
            for entry in change.transcript:
                batch.append(
                    self.worker_paths(entry.worker_ref.worker_id)[1],
                    codec.encode_transcript_entry(entry, with_ref=False),
                )
            for observation in change.observations:
                record = codec.encode_observation(observation)
                if change_event is not None:
                    record["event_id"] = change_event
                worker_id = observation.worker_ref.worker_id
                batch.append(self.worker_paths(worker_id)[2], record)
                counts[worker_id] = counts.get(worker_id, committed.observations.get(worker_id, 0)) + 1
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
                batch.snapshots[runtime_dir / "runtime.json"] = runtime_snapshot(
                    self.runtime_id, runtime_status, event_id
                )
            for answer in change.idempotency:
                batch.append(idempotency_path, wal.encode_kept_answer(answer))
                batch.kept.append(answer)
            for worker_id in change.deleted:
                # Its files are written on (they are cut back to the marker if the checkpoint is
                # cut short), and the directory goes once the marker no longer counts it.
                batch.deleted.append(worker_id)
                batch.executions.pop(worker_id, None)
                batch.snapshot_status.pop(worker_id, None)
                batch.snapshots.pop(self.worker_dir(worker_id) / "worker.json", None)
        observations = {**committed.observations, **counts}
        all_executions = {**committed.executions, **batch.executions}
        for worker_id in batch.deleted:
            observations.pop(worker_id, None)
            all_executions.pop(worker_id, None)
        batch.committed = CommitRecord(
            event_id,
            sequence,
            diagnostic_id,
            observations,
            all_executions,
            committed.idempotency + len(batch.kept),
        )

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
            batch.previous[path] = self.snapshots.get(path)
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

    def _run_all(self, calls: list[Callable[[], None]]) -> None:
        if len(calls) <= 1:
            for call in calls:
                call()
            return
        for future in [self._fsyncs.submit(call) for call in calls]:
            future.result()

    def _after_write(self, batch: _Batch) -> None:
        self.snapshots.update(batch.snapshots)
        self.created_event.update(batch.created_event)
        self.snapshot_status.update(batch.snapshot_status)
        if batch.runtime_status is not None:
            self.runtime_status = batch.runtime_status
        before = self.committed.observations
        for worker_id, count in batch.committed.observations.items():
            written = count - before.get(worker_id, 0)
            if written:
                self.observation_lines[worker_id] = self.observation_lines.get(worker_id, 0) + written
        for answer in batch.kept:
            self.kept.pop(answer.key, None)  # the newest answer of a key, in the order kept
            self.kept[answer.key] = answer.kept_at
        self.idempotency_lines += len(batch.kept)
        for worker_id in batch.deleted:
            self.created_event.pop(worker_id, None)
            self.snapshot_status.pop(worker_id, None)
            self.snapshots.pop(self.worker_dir(worker_id) / "worker.json", None)
            self.observation_lines.pop(worker_id, None)
            self.deleting.append(worker_id)
        self.committed = batch.committed

    def remove_deleted(self) -> None:
        """Remove the directories of deleted workers: only after the marker, which no longer
        counts them (removed before it, a crash would leave a marker counting a worker that is
        gone). A removal that fails is logged and retried at the next checkpoint; restore
        finishes what a crash cut short."""
        if not self.deleting:
            return
        removed = False
        for worker_id in list(self.deleting):
            directory, transcript, observations = self.worker_paths(worker_id)
            self._files.forget(transcript)
            self._files.forget(observations)
            try:
                remove_worker_dir(directory)
            except OSError:
                log.warning("could not remove %s (worker %s deleted); will retry", directory, worker_id, exc_info=True)
                continue
            self.deleting.remove(worker_id)
            self._paths.pop(worker_id, None)
            removed = True
        if removed:
            try:
                files.fsync_path(self.dir / "workers")
            except OSError:
                log.warning("could not fsync %s", self.dir / "workers", exc_info=True)

    def compact_idempotency(self, now: float | None = None) -> None:
        """Drop expired answers from ``idempotency.jsonl`` once it holds as many lines of them
        as of unexpired ones (``IDEMPOTENCY_COMPACT_SLACK`` at least): rewritten (atomically) to
        those, led by ``{"trimmed": n}``, the answers it has dropped in all, so restore still
        accounts for the marker's count. Only after the marker, like the observation logs."""
        horizon = (time.time() if now is None else now) - self.idempotency_ttl
        kept = self.kept
        # Oldest first, so each expired key is looked at once (a wall clock set back may leave
        # one behind a newer answer for a while: it stays in the file a little longer).
        expired = list(itertools.takewhile(lambda key: kept[key] <= horizon, kept))
        for key in expired:
            del kept[key]
        dead = self.idempotency_lines - len(kept)
        if dead <= 0 or dead < max(len(kept), IDEMPOTENCY_COMPACT_SLACK):
            return
        path = self.dir / IDEMPOTENCY_LOG
        self._files.forget(path)
        try:
            # Each line kept is the newest answer of its key and has not expired: it is read
            # back as it was written.
            live = [line for line in path.read_bytes().splitlines(keepends=True) if _is_live(line, kept)]
            trimmed = self.committed.idempotency - len(live)
            files.replace_atomically(path, jsonl_line({"trimmed": trimmed}) + b"".join(live))
        except (OSError, ValueError):
            log.warning("could not compact %s; will retry", path, exc_info=True)
            return
        self.idempotency_lines = len(live)

    def _compact_observations(self, worker_id: str) -> None:
        """Keep the newest ``backlog`` observations, led by a marker naming the newest one
        dropped, so a restored bus still knows that older cursors have expired, and how many
        the file has dropped in all, so restore can still count every acknowledged one."""
        path = self.worker_dir(worker_id) / "observations.jsonl"
        lines = [line for line in path.read_bytes().splitlines(keepends=True) if b'"trimmed_through"' not in line]
        dropped, keep = lines[: -self.backlog], lines[-self.backlog :]
        if not dropped:
            return
        trimmed = self.committed.observations.get(worker_id, 0) - len(keep)
        marker = jsonl_line({"trimmed_through": json.loads(dropped[-1])["sequence"], "trimmed": trimmed})
        self._files.forget(path)
        files.replace_atomically(path, marker + b"".join(keep))
        self.observation_lines[worker_id] = len(keep)

    def _undo(self, batch: _Batch) -> None:
        """Put the files back as they were before the batch; ``CheckpointBroken`` if that fails."""
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
                    files.replace_atomically(path, previous)
            for directory in batch.new_dirs:
                for name in ("transcript.jsonl", "observations.jsonl"):
                    self._files.forget(directory / name)
                if directory.exists():
                    shutil.rmtree(directory)
            for path in batch.created_files:
                self._files.forget(path)
                path.unlink(missing_ok=True)
        except OSError as error:
            raise CheckpointBroken(str(error)) from None

    def close(self) -> None:
        self._files.close()


def _is_live(line: bytes, kept: Mapping[str, float]) -> bool:
    """Whether a line of ``idempotency.jsonl`` is the newest answer of its key, unexpired."""
    record = files.parse_line(line)
    if not isinstance(record, dict) or "key" not in record:
        return False  # the compaction marker
    kept_at = kept.get(record["key"])
    return kept_at is not None and kept_at == record.get("kept_at")


def sort_worker_dir(directory: Path) -> tuple[list[Path], list[str]]:
    """The entries of a worker's directory: runtimed's own files (regular files of the names in
    ``WORKER_FILES``) and the names of everything else, which runtimed did not write there."""
    own: list[Path] = []
    foreign: list[str] = []
    for entry in directory.iterdir():
        if entry.name in WORKER_FILES and entry.is_file() and not entry.is_symlink():
            own.append(entry)
        else:
            foreign.append(entry.name)
    return own, sorted(foreign)


def remove_own_files(directory: Path, own: list[Path]) -> None:
    """Remove runtimed's own files from a deleted worker's directory that holds others too."""
    for path in own:
        path.unlink(missing_ok=True)
    if own:
        files.fsync_path(directory)


def remove_worker_dir(directory: Path) -> None:
    """Remove a deleted worker's directory, if it is there. One that holds files runtimed did not
    write loses runtimed's own files and is left with the others in it (with a warning): they
    are not runtimed's to remove."""
    if not directory.exists():
        return
    if directory.is_symlink() or not directory.is_dir():
        log.warning("%s is not a worker directory runtimed made; left as it is", directory)
        return
    own, foreign = sort_worker_dir(directory)
    if not foreign:
        shutil.rmtree(directory)
        return
    remove_own_files(directory, own)
    log.warning(
        "%s holds files runtimed did not write (%s); runtimed's own files were removed, the directory is left "
        "with those in it",
        directory,
        ", ".join(foreign),
    )


class CheckpointBroken(Exception):
    """A checkpoint failed and putting the files back failed too: the files are not where the
    bookkeeping says, so no checkpoint is written until a restart (restore cuts them back)."""


def write_first_marker(runtime_dir: Path, committed: CommitRecord) -> None:
    """The marker of a runtime no checkpoint has covered yet (LSN 0)."""
    files.replace_atomically(runtime_dir / MARKER, encode_marker(0, committed))


__all__ = [
    "IDEMPOTENCY_LOG",
    "MARKER",
    "MARKER_SCHEMA_VERSION",
    "MARKER_SCHEMA_VERSIONS",
    "CheckpointBroken",
    "CheckpointFiles",
    "decode_marker",
    "encode_marker",
    "write_first_marker",
]
