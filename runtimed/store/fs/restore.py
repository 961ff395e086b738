"""Restore: load and check a runtime directory, and set aside what a crash left half-written.

``Restorer`` reads the files and hands back a ``Restored``: the state for the Runtime and what
the store must know of the files to write on from there. It keeps nothing of the store's.

Every check runs before anything is changed on disk: what restore would set aside, discard or
rewrite is collected as repairs, applied only once the whole directory has passed, so a
refused start leaves the files exactly as it found them.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import orjson

from ...domain.catalog import WorkerState, WorkerStatus
from ...domain.errors import StoreCorrupt, StoreIo, StoreMissing
from ...domain.idempotency import KeptAnswer
from ...domain.identity import WorkerRef
from ...domain.management import RuntimeStatus
from ...domain.observation import (
    EventKind,
    Observation,
    RuntimeDiagnostic,
    RuntimeEvent,
    TranscriptEntry,
    TranscriptRole,
)
from .. import codec
from ..base import Change, RestoredState
from . import commit, files, wal
from .checkpoint import (
    IDEMPOTENCY_LOG,
    MARKER,
    MARKER_SCHEMA_VERSIONS,
    decode_marker,
    remove_own_files,
    sort_worker_dir,
)
from .commit import COMMIT_LOG, CommitRecord
from .files import RUNTIME_SCHEMA_VERSIONS, WORKER_SCHEMA_VERSION, hex_id, unhex_id

log = logging.getLogger("runtimed.store")

V = TypeVar("V")

#: Why a torn last line is no acknowledged record, by what restore knows of its file.
_TORN_COMMIT = "runtimed leaves such a line only when a commit never finished, and such a commit acknowledged nothing"
_TORN_UNCHECKED = (
    "this store was written before runtimed kept a commit log, so restore cannot tell whether it was acknowledged"
)


_TORN_LOG = (
    "a log line is acknowledged only once it is whole and fsynced, so it is what is left of a write "
    "that was never acknowledged"
)


def _torn_checked(what: str) -> str:
    return f"every acknowledged {what} is present, so it is what is left of a write that was never acknowledged"


@dataclass(slots=True)
class Restored:
    """What restore found: the runtime for the Runtime, and the files as the store left them."""

    state: RestoredState
    #: Per snapshot file, its content on disk (after restore brought it in line with the log).
    snapshots: dict[Path, bytes]
    #: Per worker id, the id of its ``worker_created`` event.
    created_event: dict[str, int]
    #: Per worker id, the status its ``worker.json`` holds.
    snapshot_status: dict[str, WorkerStatus]
    #: Per worker id, the observation lines of its ``observations.jsonl``.
    observation_lines: dict[str, int]
    #: The runtime's status in ``runtime.json`` (the log's, once restore is done).
    runtime_status: RuntimeStatus
    #: What is committed: the commit log's record, or for a store written before the commit
    #: log, what restore found (every observation count included).
    committed: CommitRecord
    #: Lines of the commit log; 0 for a store written before it (or with a write-ahead log).
    commit_lines: int
    #: The ``schema_version`` of ``runtime.json``.
    runtime_schema: int
    #: Whether the store keeps a write-ahead log (``checkpoint.json`` is there); if not, the
    #: store must start one (an upgrade).
    has_log: bool = False
    #: The LSN ``checkpoint.json`` records: what the checkpoint files hold.
    checkpoint_lsn: int = 0
    #: The log's segments, oldest first, once restore has removed those the checkpoint covers.
    segments: list[wal.Segment] = field(default_factory=list)
    #: The LSN the next log line gets.
    next_lsn: int = 1
    #: The changes replayed from the log (after the checkpoint's LSN), and their bytes.
    replayed: list[Change] = field(default_factory=list)
    replayed_bytes: int = 0
    #: Per key, when the newest answer ``idempotency.jsonl`` holds for it was kept (in the
    #: order kept), and its lines (its compaction marker not counted).
    kept: dict[str, float] = field(default_factory=dict)
    idempotency_lines: int = 0


@dataclass(frozen=True, slots=True)
class _Repair:
    """A change restore makes once every check has passed; ``path`` is what it touches."""

    path: Path
    action: Callable[[], None]
    warning: tuple[str, str] | None = None  # (code, message) to report once it is done


def worker_number(worker_id: str) -> int:
    """The sequence in ``worker-0000002a``; 0 for an id of another form."""
    try:
        return int(worker_id.removeprefix("worker-"), 16)
    except ValueError:
        return 0


def _above(record: dict[str, Any], key: str, limit: int) -> bool:
    """Whether ``record[key]`` is a number past ``limit`` (a record the commit did not reach)."""
    value = record.get(key)
    return isinstance(value, int) and value > limit


def _parse_all(body: bytes) -> list[dict[str, Any]] | None:
    """Every line of ``body`` (whole lines) parsed at once, as one JSON array: restore reads
    hundreds of thousands of lines, and one ``orjson.loads`` a file is several times faster
    than one a line. ``None`` when that does not give one object per line (then the lines are
    parsed one by one, which names the bad one)."""
    if not body:
        return []
    try:
        records = orjson.loads(b"[" + body[:-1].replace(b"\n", b",") + b"]")
    except orjson.JSONDecodeError:
        return None
    if len(records) != body.count(b"\n") or set(map(type, records)) != {dict}:
        return None
    return records  # type: ignore[no-any-return]


_ROLES = {role.value: role for role in TranscriptRole}
_KINDS = {kind.value: kind for kind in EventKind}


class _Replay:
    """The state restore builds, advanced by the log's changes past the checkpoint; ``apply``
    checks that each continues where the state is (ids and sequences without a gap)."""

    def __init__(
        self,
        events: list[RuntimeEvent],
        workers: list[WorkerState],
        transcripts: dict[str, list[TranscriptEntry]],
        diagnostics: list[RuntimeDiagnostic],
        observations: list[Observation],
        observation_sequence: int,
        kept: dict[str, KeptAnswer],
        worker_sequence: int,
    ) -> None:
        self.events = events
        self.workers = {state.worker_ref.worker_id: state for state in workers}
        self.transcripts = transcripts
        self.diagnostics = diagnostics
        self.observations = observations
        self.observation_sequence = observation_sequence
        self.kept = kept
        self.worker_sequence = worker_sequence
        #: Workers the replayed lines deleted (their observations are dropped at the end).
        self.deleted: set[str] = set()
        self.status = RuntimeStatus.RUNNING
        self.changes: list[Change] = []

    def apply(self, change: Change) -> str | None:
        """Apply ``change``, or say why it does not follow from the state."""
        event = change.event
        if event is not None:
            if event.id != len(self.events) + 1:
                return f"holds event {event.id} where {len(self.events) + 1} was expected"
            self.events.append(event)
        for state in change.workers:
            worker_id = state.worker_ref.worker_id
            if worker_id not in self.workers:
                if event is None or event.kind is not EventKind.WORKER_CREATED:
                    return f"changes worker {worker_id}, which was never created"
                self.transcripts[worker_id] = []
                self.worker_sequence = max(self.worker_sequence, worker_number(worker_id))
            self.workers[worker_id] = state
        for entry in change.transcript:
            transcript = self.transcripts.get(entry.worker_ref.worker_id)
            if transcript is None:
                return f"holds a transcript entry of worker {entry.worker_ref.worker_id}, which was never created"
            if entry.sequence != len(transcript) + 1:
                return f"holds transcript entry {entry.sequence} where {len(transcript) + 1} was expected"
            transcript.append(entry)
        for diagnostic in change.diagnostics:
            if diagnostic.id != len(self.diagnostics) + 1:
                return f"holds diagnostic {diagnostic.id} where {len(self.diagnostics) + 1} was expected"
            self.diagnostics.append(diagnostic)
        for observation in change.observations:
            if observation.worker_ref.worker_id not in self.workers:
                return f"holds an observation of worker {observation.worker_ref.worker_id}, which was never created"
            if observation.sequence <= self.observation_sequence:
                return f"holds observation {observation.sequence}, not after {self.observation_sequence}"
            self.observation_sequence = observation.sequence
            self.observations.append(observation)
        for answer in change.idempotency:
            self.kept.pop(answer.key, None)  # the newest answer of a key, in the order kept
            self.kept[answer.key] = answer
        for worker_id in change.deleted:
            ref = event.worker_ref if event is not None else None
            if event is None or event.kind is not EventKind.WORKER_DELETED or ref is None or ref.worker_id != worker_id:
                return f"deletes worker {worker_id} without its worker_deleted event"
            if worker_id not in self.workers:
                return f"deletes worker {worker_id}, which does not exist"
            state = self.workers.pop(worker_id)
            if state.status is WorkerStatus.RUNNING:
                return f"deletes worker {worker_id}, which is running"
            del self.transcripts[worker_id]
            self.deleted.add(worker_id)
        self.status = change.runtime_status
        self.changes.append(change)
        return None


class Restorer:
    """Loads and validates the runtime directory ``runtime_dir`` of ``runtime_id``; sets aside
    what a crash left half-written. Runs before the store has opened any of the files.

    With a commit log, the last whole line of ``commits.jsonl`` says what is committed: events
    up to its event id, transcript entries of those events, observations up to its sequence
    (and per worker, how many), diagnostics up to its id. Records beyond it are an unacknowledged
    tail, set aside; a committed record that is missing is corruption. A store written before
    the commit log (``runtime.json`` at schema version 1, no ``commits.jsonl``) is read as it
    always was: the event log commits events and the records that name them, and observations
    and diagnostics are taken as found.
    """

    def __init__(self, runtime_dir: Path, runtime_id: str) -> None:
        self.runtime_id = runtime_id
        self.dir = runtime_dir
        self.warnings: list[tuple[str, str]] = []
        self.repairs: list[_Repair] = []
        self.trimmed: dict[str, int] = {}  # worker id -> newest observation sequence compacted away
        self.refs: dict[str, WorkerRef] = {}
        self.snapshots: dict[Path, bytes] = {}
        self.created_event: dict[str, int] = {}
        self.snapshot_status: dict[str, WorkerStatus] = {}
        self.observation_lines: dict[str, int] = {}
        self.observation_counts: dict[str, int] = {}
        self.commit: CommitRecord | None = None  # None: a store written before the commit log
        #: With a write-ahead log: the checkpoint's LSN (records past its counts are what an
        #: interrupted checkpoint left, cut back with a log line rather than a warning).
        self.checkpoint_lsn: int | None = None
        #: Workers the event log deletes (``worker_deleted``): gone, their files with them.
        self.deleted: set[str] = set()
        #: The newest worker sequence the event log has given (deleted workers included).
        self.worker_sequence = 0

    @property
    def counted_by(self) -> str:
        return "the checkpoint" if self.checkpoint_lsn is not None else "the commit log"

    def _commit_path(self) -> Path:
        """Where the counts restore checks against come from: the marker, or the commit log."""
        return self.dir / (MARKER if self.checkpoint_lsn is not None else COMMIT_LOG)

    def corrupt(self, path: Path, problem: str) -> StoreCorrupt:
        return StoreCorrupt("restore", str(path), problem)

    def short(self, path: Path, problem: str) -> StoreCorrupt | StoreMissing:
        """A log that lacks committed records: missing altogether, or cut short."""
        if not path.exists():
            return StoreMissing("restore", str(path), f"file is missing, but {problem}")
        return self.corrupt(path, problem)

    def warn(self, code: str, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append((code, message))

    def repair(self, path: Path, action: Callable[[], None], warning: tuple[str, str] | None = None) -> None:
        self.repairs.append(_Repair(path, action, warning))

    def restore(self) -> Restored:
        snapshot_path = self.dir / "runtime.json"
        raw, snapshot, schema = self._read_json(snapshot_path, RUNTIME_SCHEMA_VERSIONS)
        try:
            runtime = codec.decode_runtime_record(snapshot)
        except codec.RECORD_ERRORS as error:
            raise self.corrupt(snapshot_path, f"bad runtime snapshot: {codec.record_problem(error)}") from None
        if runtime.runtime_id != self.runtime_id:
            raise self.corrupt(snapshot_path, f"names runtime {runtime.runtime_id!r}, not {self.runtime_id!r}")
        self.snapshots[snapshot_path] = raw
        if schema >= 3 or (self.dir / MARKER).exists():
            # An upgrade writes the marker before it moves runtime.json on: a marker rules.
            self._read_marker()
            commit_lines = 0
        else:
            commit_lines = self._commit_log(schema)
        checked = self.commit is not None

        events_path = self.dir / "events.jsonl"
        workers_dir = self.dir / "workers"
        has_workers = workers_dir.is_dir() and any(workers_dir.iterdir())
        if not checked and not events_path.exists() and (runtime.last_event_id or has_workers):
            # Only a runtime whose first start was cut short has no event log yet; this one
            # has workers or names events, so its log is lost, not unwritten.
            raise StoreMissing("restore", str(events_path), "the runtime event log is missing")
        decode_ref = self._ref_decoder(events_path)
        records = self._read_log(events_path, _torn_checked("event") if checked else _TORN_COMMIT)
        on_disk = len(records)
        if self.commit is not None:
            committed_id = self.commit.event_id
            records = self._discard_uncommitted(
                events_path, records, lambda record: _above(record, "id", committed_id), "event"
            )
        try:
            # The decoder's checks, inlined: the event log is the longest file restore reads.
            events = [
                RuntimeEvent(
                    r["id"],
                    _KINDS[r["kind"]],
                    r["message"],
                    None if (raw_ref := r.get("worker_ref")) is None else decode_ref(raw_ref),
                )
                for r in records
            ]
        except codec.RECORD_ERRORS:
            events = self._decode_each(
                events_path, records, lambda record: codec.decode_event(record, decode_ref), "event"
            )
        if [event.id for event in events] != list(range(1, len(events) + 1)):
            self._require_dense(events_path, events, lambda event: event.id, "event id")
        replies = self._replies(events_path, records)
        last_event = len(events)
        if self.commit is not None and last_event < self.commit.event_id:
            raise self.short(
                events_path,
                f"{self.counted_by} acknowledged event {self.commit.event_id} and the log ends at event {last_event}",
            )
        # A snapshot may run ahead of the commit (written in the flush that never committed),
        # never ahead of the events on disk.
        written = on_disk if checked else last_event
        if runtime.last_event_id > written:
            raise self.corrupt(
                events_path, f"ends at event {written}, but runtime.json was written at event {runtime.last_event_id}"
            )

        diagnostics = self._diagnostics(last_event)
        workers, transcripts, observations = self._workers(events, last_event, replies)
        kept = self._kept_answers()
        idempotency_lines = len(kept)
        kept_by_key: dict[str, KeptAnswer] = {}
        for answer in kept:
            kept_by_key.pop(answer.key, None)  # the newest answer of a key, in the order kept
            kept_by_key[answer.key] = answer
        if self.deleted:
            observations = [o for o in observations if o.worker_ref.worker_id not in self.deleted]

        status = RuntimeStatus.RUNNING
        for event in events:
            if event.kind is EventKind.RUNTIME_STOPPED:
                status = RuntimeStatus.STOPPED
            elif event.kind is EventKind.RUNTIME_STARTED:
                status = RuntimeStatus.RUNNING
        if runtime.status is not status or runtime.last_event_id > last_event:
            # The event log wins; bring the snapshot in line with it (at the version it had:
            # the store upgrades a store written before the commit log once the log is there).
            data = files.snapshot_document(
                codec.encode_runtime_record(codec.RuntimeRecord(self.runtime_id, status, last_event)), schema
            )
            self.repair(snapshot_path, partial(files.replace_atomically, snapshot_path, data))
            self.snapshots[snapshot_path] = data
        observations.sort(key=lambda o: o.sequence)
        if self.commit is not None:
            committed = self.commit
        else:
            committed = CommitRecord(
                last_event,
                observations[-1].sequence if observations else 0,
                len(diagnostics),
                {worker_id: count for worker_id, count in self.observation_counts.items() if count},
            )

        checkpoint_status = status
        replayed: list[Change] = []
        replayed_bytes = 0
        segments: list[wal.Segment] = []
        next_lsn = 1
        worker_sequence = self.worker_sequence
        restored_kept = dict(kept_by_key)
        if self.checkpoint_lsn is not None:
            replay = _Replay(
                events,
                workers,
                transcripts,
                diagnostics,
                observations,
                committed.observation_sequence,
                restored_kept,
                worker_sequence,
            )
            segments, next_lsn, replayed_bytes = self._replay_log(replay)
            replayed = replay.changes
            status = replay.status if replayed else status
            workers = list(replay.workers.values())
            committed_sequence = replay.observation_sequence
            worker_sequence = replay.worker_sequence
            if replay.deleted:
                observations = [o for o in observations if o.worker_ref.worker_id not in replay.deleted]
                for worker_id in replay.deleted:
                    self.trimmed.pop(worker_id, None)
        else:
            committed_sequence = committed.observation_sequence
        for worker_id in self.deleted:
            self.trimmed.pop(worker_id, None)

        self._apply_repairs()
        state = RestoredState(
            runtime_id=self.runtime_id,
            status=status,
            # Past every worker ever created: a deleted worker's id is never given again.
            worker_sequence=worker_sequence,
            observation_sequence=committed_sequence,
            events=events,
            workers=workers,
            transcripts=transcripts,
            diagnostics=diagnostics,
            observations=observations,
            observations_trimmed=self.trimmed,
            idempotency=list(restored_kept.values()),
            warnings=self.warnings,
        )
        return Restored(
            state=state,
            snapshots=self.snapshots,
            created_event=self.created_event,
            snapshot_status=self.snapshot_status,
            observation_lines=self.observation_lines,
            runtime_status=checkpoint_status,
            committed=committed,
            commit_lines=commit_lines,
            runtime_schema=schema,
            has_log=self.checkpoint_lsn is not None,
            checkpoint_lsn=self.checkpoint_lsn or 0,
            segments=segments,
            next_lsn=next_lsn,
            replayed=replayed,
            replayed_bytes=replayed_bytes,
            kept={key: answer.kept_at for key, answer in kept_by_key.items()},
            idempotency_lines=idempotency_lines,
        )

    def _kept_answers(self) -> list[KeptAnswer]:
        """The answers of ``idempotency.jsonl``, in the order kept, checked against the marker's
        count: a leading ``{"trimmed": n}`` (a compaction) accounts for the ones dropped; lines
        past the count are what an interrupted checkpoint left (cut back), fewer is corruption."""
        path = self.dir / IDEMPOTENCY_LOG
        committed = self.commit.idempotency if self.commit is not None else 0
        if not committed and not path.exists():
            return []
        records = self._read_log(path, _torn_checked("kept answer"))
        trimmed = 0
        first_line = 1
        if records and set(records[0]) == {"trimmed"}:
            trimmed = records.pop(0)["trimmed"]
            if not isinstance(trimmed, int) or isinstance(trimmed, bool) or trimmed < 0:
                raise self.corrupt(path, f"bad compaction marker {{'trimmed': {trimmed!r}}}")
            first_line = 2
            if trimmed > committed:
                raise self.corrupt(
                    path, f"has compacted away {trimmed} kept answers, but {self.counted_by} counts {committed}"
                )
        if trimmed + len(records) > committed:
            keep = max(committed - trimmed, 0)
            data = b"".join(files.jsonl_line(record) for record in records[:keep])
            if trimmed:
                data = files.jsonl_line({"trimmed": trimmed}) + data
            self.repair(path, partial(self._cut_back_to, path, data, f"{len(records) - keep} kept answer(s)"))
            records = records[:keep]
        if trimmed + len(records) < committed:
            raise self.short(
                path,
                f"{self.counted_by} acknowledged {committed} kept answers and the file accounts for "
                f"{trimmed + len(records)} ({len(records)} kept, {trimmed} compacted away)",
            )
        return self._decode_each(path, records, wal.decode_kept_answer, "kept answer", first_line=first_line)

    def _read_marker(self) -> None:
        """Read ``checkpoint.json`` into ``self.commit`` and ``self.checkpoint_lsn``."""
        path = self.dir / MARKER
        _, record, _ = self._read_json(path, MARKER_SCHEMA_VERSIONS)
        try:
            self.checkpoint_lsn, self.commit = decode_marker(record)
        except codec.RECORD_ERRORS as error:
            raise self.corrupt(path, f"bad checkpoint marker: {codec.record_problem(error)}") from None

    def _replay_log(self, replay: _Replay) -> tuple[list[wal.Segment], int, int]:
        """Check every segment of the log and replay its lines past the checkpoint onto
        ``replay``; returns the segments kept, the next LSN and the bytes replayed.

        LSNs must run on without a gap from the segment that holds the checkpoint's LSN (or the
        one just past it) to the end, and every line must pass its checksum. Only the newest
        segment's last line may be bad: an incomplete line, or a whole one failing its checksum,
        is a write cut short, set aside with a warning. Segments the checkpoint wholly covers
        are removed."""
        assert self.checkpoint_lsn is not None
        checkpoint_lsn = self.checkpoint_lsn
        log_dir = self.dir / wal.LOG_DIR
        if not log_dir.exists():
            raise StoreMissing("restore", str(log_dir), "the write-ahead log directory is missing")
        if not log_dir.is_dir():
            raise self.corrupt(log_dir, "is a file where a directory should be")
        segments, others = wal.list_segments(log_dir)
        for other in others:
            if not (other.name.endswith(".corrupt") and other.is_file()):
                raise self.corrupt(other, "is not a log segment (<first LSN, 16 digits>.jsonl)")
        if not segments:
            raise StoreMissing("restore", str(log_dir), "the write-ahead log has no segment")
        if segments[0].first_lsn > checkpoint_lsn + 1:
            raise self.corrupt(
                segments[0].path,
                f"the log starts at LSN {segments[0].first_lsn}, but the checkpoint ({self.dir / MARKER}) covers "
                f"only up to LSN {checkpoint_lsn}: the records between are missing",
            )
        expected = segments[0].first_lsn
        context = wal.Context()
        context.requests.update((worker_id, state.request) for worker_id, state in replay.workers.items())
        replayed_bytes = 0
        kept: list[wal.Segment] = []
        for index, segment in enumerate(segments):
            newest = index == len(segments) - 1
            path = segment.path
            if segment.first_lsn != expected:
                raise self.corrupt(
                    path, f"starts at LSN {segment.first_lsn} where {expected} was expected (a segment is missing)"
                )
            try:
                data = path.read_bytes()
            except OSError as error:
                raise StoreIo("read", str(path), error.strerror or str(error)) from None
            lines, tail = wal.split_lines(data)
            if tail and not newest:
                raise self.corrupt(path, "ends in an incomplete line, but a later segment follows")
            context.decode_ref = self._ref_decoder(path)
            for number, line in enumerate(lines, start=1):
                problem = wal.check(line)
                if problem is not None:
                    if newest and number == len(lines) and not tail:
                        tail = line + b"\n"  # a whole last line that fails: a write cut short too
                        break
                    raise self.corrupt(path, f"line {number} {problem}")
                lsn = wal.line_lsn(line)
                if lsn != expected:
                    raise self.corrupt(path, f"line {number} has LSN {lsn} where {expected} was expected")
                expected += 1
                if lsn <= checkpoint_lsn:
                    continue
                try:
                    change = wal.decode_change(files.parse_line(line), context)
                except codec.RECORD_ERRORS as error:
                    problem = codec.record_problem(error)
                    raise self.corrupt(path, f"bad log record on line {number}: {problem}") from None
                problem = replay.apply(change)
                if problem is not None:
                    raise self.corrupt(path, f"line {number} (LSN {lsn}) {problem}")
                replayed_bytes += len(line) + 1
            if tail:
                self._set_aside(path, len(data) - len(tail), tail.rstrip(b"\n"), _TORN_LOG)
            if not newest and segments[index + 1].first_lsn - 1 <= checkpoint_lsn:
                self.repair(path, partial(self._remove_segment, path))
            else:
                kept.append(segment)
        if expected - 1 < checkpoint_lsn:
            raise self.corrupt(
                self.dir / MARKER,
                f"covers the log up to LSN {checkpoint_lsn}, but the log ({log_dir}) ends at LSN {expected - 1}",
            )
        return kept, expected, replayed_bytes

    @staticmethod
    def _remove_segment(path: Path) -> None:
        path.unlink(missing_ok=True)
        files.fsync_path(path.parent)
        log.info("removed %s: the checkpoint covers every record in it", path)

    def _commit_log(self, schema: int) -> int:
        """Read the commit log into ``self.commit``; returns its lines (0: there is none, which
        only a store written before it may lack)."""
        path = self.dir / COMMIT_LOG
        if schema == 1 and not path.exists():
            return 0
        records = self._read_log(path, _TORN_COMMIT)
        if not records:
            if schema == 1:
                return 0  # its first line was being written when the upgrade was cut short
            if not path.exists():
                raise StoreMissing(
                    "restore", str(path), "the commit log is missing (runtime.json says this store keeps one)"
                )
            raise self.corrupt(path, "holds no whole commit record")
        committed = CommitRecord()
        for number, record in enumerate(records, start=1):
            try:
                committed = commit.fold(committed, record)
            except codec.RECORD_ERRORS as error:
                raise self.corrupt(path, f"bad commit record on line {number}: {codec.record_problem(error)}") from None
        self.commit = committed
        return len(records)

    def _apply_repairs(self) -> None:
        for repair in self.repairs:
            try:
                repair.action()
            except OSError as error:
                raise StoreIo("restore", str(error.filename or repair.path), error.strerror or str(error)) from None
            if repair.warning is not None:
                self.warn(*repair.warning)

    # ----------------------------------------------------------- files

    def _read_json(self, path: Path, versions: tuple[int, ...]) -> tuple[bytes, dict[str, Any], int]:
        """A snapshot document: its bytes, its record and its ``schema_version`` (one of ``versions``)."""
        try:
            raw = files.read_bytes(path)
            data = files.parse_line(raw)
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
        version = data.get("schema_version")
        if version not in versions:
            known = " or ".join(map(str, versions))
            raise self.corrupt(path, f"schema_version {version!r} is not one this runtimed knows ({known})")
        return raw, data, version

    def _read_log(self, path: Path, torn: str) -> list[dict[str, Any]]:
        """The records of a ``.jsonl`` log. A torn last line is set aside (``torn`` says why it
        is no acknowledged record); anything else bad is corruption."""
        try:
            data = files.read_bytes(path)
        except FileNotFoundError:
            return []
        except IsADirectoryError:
            raise self.corrupt(path, "is a directory where a file should be") from None
        except OSError as error:
            raise StoreIo("read", str(path), error.strerror or str(error)) from None
        tail = data[data.rfind(b"\n") + 1 :]  # after the last newline: empty unless the last append was torn
        body = data[: len(data) - len(tail)]
        records = _parse_all(body)
        if records is None:
            records = self._parse_each(path, body)
        if tail:
            self._set_aside(path, len(data) - len(tail), tail, torn)
        return records

    def _parse_each(self, path: Path, body: bytes) -> list[dict[str, Any]]:
        """The lines of ``body`` one by one: the slow way, which names the line that is bad."""
        lines = body.split(b"\n")
        lines.pop()
        records = []
        for number, raw in enumerate(lines, start=1):
            try:
                record = files.parse_line(raw)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                raise self.corrupt(path, f"line {number} is not a JSON object")
            records.append(record)
        return records

    def _set_aside(self, path: Path, keep: int, tail: bytes, why: str) -> None:
        if self.checkpoint_lsn is not None and why is not _TORN_LOG:
            # A checkpoint file: the line is what an interrupted checkpoint left, and the log has it.
            self.repair(path, partial(self._cut_back, path, keep, f"an incomplete last line ({len(tail)} bytes)"))
            return
        aside = path.with_name(path.name + ".corrupt")

        def set_aside() -> None:
            files.append_durably(aside, tail + b"\n")
            files.fsync_path(aside.parent)
            files.truncate(path, keep)

        message = f"{path}: an incomplete last line ({len(tail)} bytes) was set aside in {aside.name}; {why}"
        self.repair(path, set_aside, ("store.torn_tail", message))

    def _committed_records(
        self, path: Path, what: str, key: str, committed: int | None, last_event: int
    ) -> list[dict[str, Any]]:
        """The records of a log of observations or diagnostics that a commit reached.

        With the commit log, ``committed`` is the newest ``key`` it covers: a torn tail is known
        to be unacknowledged, and any record past it is discarded. A store written before the
        commit log (``committed`` is ``None``) only tells by the records' event ids."""
        if committed is not None:
            records = self._read_log(path, _torn_checked(what))
            return self._discard_uncommitted(path, records, lambda record: _above(record, key, committed), what)
        records = self._read_log(path, _TORN_UNCHECKED)
        return self._discard_uncommitted(
            path, records, lambda record: _above(record, "event_id", last_event), what, may_interleave=True
        )

    def _discard_uncommitted(
        self,
        path: Path,
        records: list[dict[str, Any]],
        uncommitted: Callable[[dict[str, Any]], bool],
        what: str,
        may_interleave: bool = False,
    ) -> list[dict[str, Any]]:
        """Drop records the commit did not reach; they must close the file (but for records
        with no event id, when ``may_interleave``: how a store written before the commit log
        holds observations and diagnostics that were published alone)."""
        if not records or (not may_interleave and not uncommitted(records[-1])):
            # Records are in order (checked after), so when the last is committed, all are.
            return records
        kept: list[dict[str, Any]] = []
        dropped = 0
        for record in records:
            if uncommitted(record):
                dropped += 1
                continue
            if dropped and not (may_interleave and record.get("event_id") is None):
                raise self.corrupt(path, f"a committed {what} follows one that was never committed")
            kept.append(record)
        if dropped:
            data = b"".join(files.jsonl_line(record) for record in kept)
            if self.checkpoint_lsn is not None:
                self.repair(path, partial(self._cut_back_to, path, data, f"{dropped} {what}(s)"))
                return kept
            message = f"{path}: {dropped} {what}(s) written but never committed, so never acknowledged, were discarded"
            self.repair(path, partial(files.replace_atomically, path, data), ("store.uncommitted_discarded", message))
        return kept

    @staticmethod
    def _cut_back(path: Path, keep: int, what: str) -> None:
        files.truncate(path, keep)
        log.info("%s: cut back %s past the checkpoint, left by an interrupted checkpoint (in the log)", path, what)

    @staticmethod
    def _cut_back_to(path: Path, data: bytes, what: str) -> None:
        files.replace_atomically(path, data)
        log.info("%s: cut back %s past the checkpoint, left by an interrupted checkpoint (in the log)", path, what)

    # --------------------------------------------------------- records

    def _decode_each(
        self,
        path: Path,
        records: list[dict[str, Any]],
        decode: Callable[[dict[str, Any]], V],
        what: str,
        first_line: int = 1,
    ) -> list[V]:
        """The records of one log decoded, or corruption naming the line of the first that is bad."""
        values = []
        for number, record in enumerate(records, start=first_line):
            try:
                values.append(decode(record))
            except codec.RECORD_ERRORS as error:
                raise self.corrupt(path, f"bad {what} record on line {number}: {codec.record_problem(error)}") from None
        return values

    def _require_dense(self, path: Path, values: list[V], number: Callable[[V], Any], what: str) -> None:
        """``values`` numbered 1, 2, 3, … without a gap (event and diagnostic ids, transcript
        sequences), else corruption."""
        for expected, value in enumerate(values, start=1):
            if number(value) != expected:
                raise self.corrupt(path, f"{what} {number(value)!r} where {expected} was expected")

    def _ref_decoder(self, path: Path) -> codec.RefDecoder:
        """Decodes the refs in ``path``: each must name this runtime, and each worker gets one ref
        object however many records name it."""

        refs = self.refs
        runtime_id = self.runtime_id

        def decode(record: Any) -> WorkerRef:
            if type(record) is dict:
                # The common case first: a worker already seen, of this runtime.
                ref = refs.get(record.get("worker_id"))  # type: ignore[arg-type]
                if ref is not None and record.get("runtime_id") == runtime_id and len(record) == 2:
                    return ref
            if not isinstance(record, Mapping) or record.get("runtime_id") != self.runtime_id:
                raise self.corrupt(path, f"names another runtime: {record!r}")
            worker_id = record.get("worker_id")
            ref = self.refs.get(worker_id) if isinstance(worker_id, str) else None
            if ref is None:
                ref = codec.decode_worker_ref(record)
                self.refs[ref.worker_id] = ref
            return ref

        return decode

    def _replies(self, path: Path, records: list[dict[str, Any]]) -> dict[int, int]:
        """Per ``worker_turn_ended`` event that committed an assistant entry, that entry's
        sequence (the store marks such events with ``transcript_sequence``)."""
        replies: dict[int, int] = {}
        marked = [number for number, record in enumerate(records, start=1) if "transcript_sequence" in record]
        for number in marked:
            record = records[number - 1]
            sequence = record["transcript_sequence"]
            if record.get("kind") != EventKind.WORKER_TURN_ENDED.value or not isinstance(sequence, int):
                raise self.corrupt(path, f"bad event record on line {number}: transcript_sequence {sequence!r}")
            replies[record["id"]] = sequence
        return replies

    def _diagnostics(self, last_event: int) -> list[RuntimeDiagnostic]:
        path = self.dir / "diagnostics.jsonl"
        committed = self.commit.diagnostic_id if self.commit is not None else None
        records = self._committed_records(path, "diagnostic", "id", committed, last_event)
        decode_ref = self._ref_decoder(path)
        diagnostics = self._decode_each(path, records, lambda r: codec.decode_diagnostic(r, decode_ref), "diagnostic")
        self._require_dense(path, diagnostics, lambda diagnostic: diagnostic.id, "diagnostic id")
        if self.commit is not None and len(diagnostics) < self.commit.diagnostic_id:
            raise self.short(
                path,
                f"{self.counted_by} acknowledged {self.commit.diagnostic_id} diagnostics and the file holds "
                f"{len(diagnostics)} of them",
            )
        return diagnostics

    def _workers(
        self, events: list[RuntimeEvent], last_event: int, replies: Mapping[int, int]
    ) -> tuple[list[WorkerState], dict[str, list[TranscriptEntry]], list[Observation]]:
        workers_dir = self.dir / "workers"
        if not workers_dir.exists():
            raise StoreMissing("restore", str(workers_dir), "directory is missing")
        if not workers_dir.is_dir():
            raise self.corrupt(workers_dir, "is a file where a directory should be")
        created = {e.worker_ref.worker_id: e.id for e in events if e.kind is EventKind.WORKER_CREATED and e.worker_ref}
        deleted = self.deleted = {
            e.worker_ref.worker_id for e in events if e.kind is EventKind.WORKER_DELETED and e.worker_ref
        }
        self.worker_sequence = max(map(worker_number, created), default=0)
        on_disk: dict[str, Path] = {}
        for directory in workers_dir.iterdir():
            worker_id = unhex_id(directory.name)
            if directory.name.endswith(".tmp") or worker_id is None:
                raise self.corrupt(directory, "is not a worker directory (id-<hex of worker id>)")
            if not directory.is_dir():
                raise self.corrupt(directory, "is a file where a directory should be")
            if worker_id in deleted and worker_id in created:
                # The event log deleted it; a crash came before its directory was removed, or it
                # holds files runtimed did not write (its own were removed, those are left).
                self._leftover(directory, worker_id)
                continue
            if worker_id not in created:
                if worker_number(worker_id) <= max(map(worker_number, created), default=0):
                    # Only the newest workers can be an unacknowledged create; an older one
                    # without its event means the log lost it.
                    raise self.corrupt(
                        directory, f"worker {worker_id} has no worker_created event, but later workers do"
                    )
                if self.checkpoint_lsn is not None:
                    # Written by a checkpoint that was cut short: the log creates it again.
                    self.repair(directory, partial(self._remove_worker_dir, directory, checkpoint=True))
                    continue
                # Created by a request whose worker_created event was never committed.
                self.repair(
                    directory,
                    partial(self._remove_worker_dir, directory),
                    (
                        "store.uncommitted_discarded",
                        f"{directory}: worker {worker_id} was never acknowledged (its worker_created event was "
                        "never committed); removed",
                    ),
                )
                continue
            on_disk[worker_id] = directory
        if self.commit is not None:
            for worker_id in self.commit.observations:
                if worker_id not in created:
                    raise self.corrupt(
                        self._commit_path(), f"counts observations of worker {worker_id}, which was never created"
                    )
                if worker_id in deleted:
                    raise self.corrupt(
                        self._commit_path(), f"counts observations of worker {worker_id}, which was deleted"
                    )
            for worker_id in self.commit.executions:
                if worker_id not in created:
                    raise self.corrupt(
                        self._commit_path(), f"holds the execution of worker {worker_id}, which was never created"
                    )
                if worker_id in deleted:
                    raise self.corrupt(
                        self._commit_path(), f"holds the execution of worker {worker_id}, which was deleted"
                    )
        for worker_id in deleted:
            if worker_id not in created:
                raise self.corrupt(self.dir / "events.jsonl", f"deletes worker {worker_id}, which was never created")
        for worker_id in created:
            if worker_id not in on_disk and worker_id not in deleted:
                raise StoreMissing(
                    "restore", str(workers_dir / hex_id(worker_id)), f"directory of worker {worker_id} is missing"
                )

        # The event log wins: status and last event of each worker come from it.
        status: dict[str, WorkerStatus] = {}
        last: dict[str, int] = {}
        # Per worker, the events that committed its transcript entries, in order: every input,
        # and each turn end that made an assistant entry.
        committing: dict[str, list[int]] = {}
        # Names bound once: this loop runs once per event of the runtime's whole life.
        runtime_stopped, worker_created = EventKind.RUNTIME_STOPPED, EventKind.WORKER_CREATED
        worker_stopped, worker_cancelled = EventKind.WORKER_STOPPED, EventKind.WORKER_CANCELLED
        input_accepted = EventKind.WORKER_INPUT_ACCEPTED
        running, stopped, cancelled = WorkerStatus.RUNNING, WorkerStatus.STOPPED, WorkerStatus.CANCELLED
        for worker_id in created:
            committing[worker_id] = []
        for event in events:
            ref = event.worker_ref
            kind = event.kind
            if kind is runtime_stopped:
                for worker_id, current in status.items():
                    if current is running:
                        status[worker_id] = stopped
                        last[worker_id] = event.id
                continue
            if ref is None:
                continue
            worker_id = ref.worker_id
            if kind is input_accepted:
                inputs = committing.get(worker_id)
                if inputs is not None:
                    inputs.append(event.id)
            elif kind is worker_created:
                status[worker_id] = running
            elif kind is worker_stopped:
                status[worker_id] = stopped
            elif kind is worker_cancelled:
                status[worker_id] = cancelled
            elif event.id in replies and worker_id in committing:
                committing[worker_id].append(event.id)
            if worker_id not in created:
                raise self.corrupt(
                    self.dir / "events.jsonl", f"event {event.id} names worker {worker_id}, which was never created"
                )
            last[worker_id] = event.id

        workers: list[WorkerState] = []
        transcripts: dict[str, list[TranscriptEntry]] = {}
        observations: list[Observation] = []
        for worker_id in sorted(created, key=created.__getitem__):
            if worker_id in deleted:
                continue
            directory = on_disk[worker_id]
            snapshot_path = directory / "worker.json"
            raw, snapshot, _ = self._read_json(snapshot_path, (WORKER_SCHEMA_VERSION,))
            try:
                stored = codec.decode_worker_record(snapshot, self._ref_decoder(snapshot_path))
            except codec.RECORD_ERRORS as error:
                raise self.corrupt(snapshot_path, f"bad worker snapshot: {codec.record_problem(error)}") from None
            ref = stored.worker_ref
            if ref.worker_id != worker_id:
                raise self.corrupt(snapshot_path, f"names worker {ref.worker_id!r}, not {worker_id!r}")
            entries = self._transcript(directory, ref, last_event)
            self._check_entries(directory / "transcript.jsonl", entries, committing[worker_id], replies)
            execution = self.commit.executions.get(worker_id) if self.commit is not None else None
            state = WorkerState(ref, stored.request, status[worker_id], len(entries), last[worker_id], execution)
            self.created_event[worker_id] = created[worker_id]
            self.snapshots[snapshot_path] = raw
            self.snapshot_status[worker_id] = state.status
            if stored.status is not state.status:
                # The event log wins over the snapshot; bring the snapshot in line.
                record = codec.WorkerRecord(ref, created[worker_id], state.status, stored.request)
                data = files.snapshot_document(codec.encode_worker_record(record), WORKER_SCHEMA_VERSION)
                self.repair(snapshot_path, partial(files.replace_atomically, snapshot_path, data))
                self.snapshots[snapshot_path] = data
            workers.append(state)
            transcripts[worker_id] = entries
            worker_observations = self._observations(directory, ref, last_event)
            self.observation_lines[worker_id] = len(worker_observations)
            observations.extend(worker_observations)  # the bus keeps the newest it is configured for
        return workers, transcripts, observations

    def _check_entries(
        self, path: Path, entries: list[TranscriptEntry], committing: list[int], replies: Mapping[int, int]
    ) -> None:
        """Every entry the event log committed is there, each named by the event that committed
        it: an input's ``worker_input_accepted``, an assistant reply's ``worker_turn_ended``."""
        if len(entries) != len(committing):
            answered = sum(1 for event_id in committing if event_id in replies)
            committed = f"accepted {len(committing) - answered} inputs"
            if answered:
                committed += f" and committed {answered} assistant replies"
            raise self.corrupt(path, f"holds {len(entries)} entries, but the event log {committed}")
        # The common case in bulk (entries are densely numbered, so a sequence is a position):
        # each entry names its event, and the assistant entries are exactly the replies.
        if [entry.event_id for entry in entries] == committing:
            assistant = TranscriptRole.ASSISTANT
            said = [entry.sequence for entry in entries if entry.role is assistant]
            replied = [(position, replies[e]) for position, e in enumerate(committing, 1) if e in replies]
            if said == [position for position, _ in replied] == [sequence for _, sequence in replied]:
                return
        for entry, event_id in zip(entries, committing, strict=True):
            reply = replies.get(event_id)
            if entry.event_id != event_id or (reply is not None) != (entry.role is TranscriptRole.ASSISTANT):
                raise self.corrupt(
                    path,
                    f"transcript entry {entry.sequence} ({entry.role.value}, event {entry.event_id}) is not the "
                    f"entry event {event_id} committed",
                )
            if reply is not None and reply != entry.sequence:
                raise self.corrupt(path, f"event {event_id} committed entry {reply}, not {entry.sequence}")

    def _leftover(self, directory: Path, worker_id: str) -> None:
        """A deleted worker's directory is removed if it holds nothing but what runtimed writes
        there; else runtimed's own files are removed and the rest is left, never deleted, with
        a ``store.foreign_files_kept`` warning (a deletion acknowledged never stops a start)."""
        own, foreign = sort_worker_dir(directory)
        if not foreign:
            self.repair(directory, partial(self._remove_deleted_dir, directory, worker_id))
            return
        self.repair(
            directory,
            partial(remove_own_files, directory, own),
            (
                "store.foreign_files_kept",
                f"{directory}: worker {worker_id} was deleted, but its directory holds files runtimed did not "
                f"write ({', '.join(foreign)}); "
                + ("runtimed's own files are removed and these are left" if own else "they are left")
                + ": move them out of the store root",
            ),
        )

    @staticmethod
    def _remove_deleted_dir(directory: Path, worker_id: str) -> None:
        shutil.rmtree(directory)
        files.fsync_path(directory.parent)
        log.info("removed %s: worker %s was deleted; a crash came before its files were removed", directory, worker_id)

    @staticmethod
    def _remove_worker_dir(directory: Path, checkpoint: bool = False) -> None:
        shutil.rmtree(directory)
        files.fsync_path(directory.parent)
        if checkpoint:
            log.info("removed %s: written by an interrupted checkpoint past its marker (the log has it)", directory)

    def _transcript(self, directory: Path, ref: WorkerRef, last_event: int) -> list[TranscriptEntry]:
        path = directory / "transcript.jsonl"
        # Checked: the event log says how many entries the worker has.
        records = self._read_log(path, _torn_checked("transcript entry"))
        records = self._discard_uncommitted(
            path, records, lambda record: _above(record, "event_id", last_event), "transcript entry"
        )
        try:
            # The decoder's checks, inlined: restore builds every entry of every worker.
            entries = [
                TranscriptEntry(r["sequence"], ref, _ROLES[r["role"]], r["content"], r["event_id"]) for r in records
            ]
        except codec.RECORD_ERRORS:
            entries = self._decode_each(path, records, lambda r: codec.decode_transcript_entry(r, ref), "transcript")
        if [entry.sequence for entry in entries] != list(range(1, len(entries) + 1)):
            self._require_dense(path, entries, lambda entry: entry.sequence, "transcript sequence")
        return entries

    def _observations(self, directory: Path, ref: WorkerRef, last_event: int) -> list[Observation]:
        path = directory / "observations.jsonl"
        committed = self.commit.observation_sequence if self.commit is not None else None
        records = self._committed_records(path, "observation", "sequence", committed, last_event)
        previous = 0
        trimmed = 0
        first_line = 1
        if records and "trimmed_through" in records[0] and set(records[0]) <= {"trimmed_through", "trimmed"}:
            # The compaction marker: observations up to this sequence were dropped on purpose,
            # ``trimmed`` of them (a marker written before the commit log does not say).
            marker = records.pop(0)
            previous, trimmed = marker["trimmed_through"], marker.get("trimmed", 0)
            if not isinstance(previous, int) or not isinstance(trimmed, int) or trimmed < 0:
                raise self.corrupt(path, f"bad compaction marker {marker!r}")
            self.trimmed[ref.worker_id] = previous
            first_line = 2
        try:
            observations = [Observation(r["sequence"], ref, r["event"], r.get("data")) for r in records]
            sequences = [observation.sequence for observation in observations]
            if not all(type(sequence) is int for sequence in sequences):
                raise TypeError("a sequence is not an integer")
        except codec.RECORD_ERRORS:
            observations = self._decode_each(
                path, records, lambda r: codec.decode_observation(r, ref), "observation", first_line=first_line
            )
            sequences = [observation.sequence for observation in observations]
        if sequences and (sequences[0] <= previous or sequences != sorted(set(sequences))):
            for number, sequence in enumerate(sequences, start=first_line):
                if sequence <= previous:
                    raise self.corrupt(path, f"observation sequence {sequence!r} out of order on line {number}")
                previous = sequence
        count = trimmed + len(observations)
        if self.commit is not None:
            acknowledged = self.commit.observations.get(ref.worker_id, 0)
            if count != acknowledged:
                raise self.short(
                    path,
                    f"{self.counted_by} acknowledged {acknowledged} observations of worker {ref.worker_id} and the "
                    "file "
                    f"accounts for {count} ({len(observations)} kept, {trimmed} compacted away)",
                )
        self.observation_counts[ref.worker_id] = count
        return observations
