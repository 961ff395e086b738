"""The write-ahead log: one line per ``Change``, in segments, each line checked by a CRC32.

A line is a JSON object that leads with its checksum and its log sequence number (LSN)::

    {"crc":"1c291ca3","lsn":42,"event":{…},"runtime_status":"running","workers":[…],…}

The CRC32 covers the bytes after the fixed-length ``{"crc":"xxxxxxxx",`` prefix, up to (not
including) the newline, so a reader checks a line without serialising it again, and the line
stays plain JSON for ``cat`` and ``jq``. After ``lsn`` come the fields of the ``Change``, each
by the codec of ``CHANGE_FIELDS`` (a field that is empty is left out): everything restore needs
to replay it. LSNs are consecutive, from 1.

The log lives in ``log/`` as segments named by the LSN of their first line
(``log/0000000000000001.jsonl``); a flush appends to the newest, and a new one is started once
it has grown past ``SEGMENT_BYTES``. The checkpoint removes the segments it wholly covers, the
oldest first, never the newest.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import itertools
import json
import os
import threading
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ...domain.catalog import WorkerState, WorkerStatus
from ...domain.idempotency import KeptAnswer
from ...domain.management import RuntimeStatus
from .. import codec
from ..base import Change
from . import files
from .files import FILE_MODE

#: The log's directory, beside ``runtime.json``.
LOG_DIR = "log"
SEGMENT_SUFFIX = ".jsonl"
#: A flush starts a new segment once the newest has grown past this.
SEGMENT_BYTES = 8 << 20
#: ``{"crc":"xxxxxxxx",``: what the checksum does not cover.
PREFIX = b'{"crc":"'
PREFIX_LEN = len(b'{"crc":"00000000",')
_LSN_KEY = b'"lsn":'


def segment_name(first_lsn: int) -> str:
    return f"{first_lsn:016d}{SEGMENT_SUFFIX}"


def segment_lsn(name: str) -> int | None:
    """The first LSN a segment's name gives, or ``None`` for a name that is no segment's."""
    stem = name.removesuffix(SEGMENT_SUFFIX)
    if stem == name or len(stem) != 16 or not stem.isdigit():
        return None
    return int(stem)


# ------------------------------------------------------------------ the change codec


class Context:
    """What the codec of a log line needs beyond the line: on the way in, the workers an earlier
    line has created (their lines leave out the request, which never changes); on the way out,
    the ``RefDecoder`` and the requests of the workers created so far."""

    def __init__(self, decode_ref: codec.RefDecoder = codec.decode_worker_ref) -> None:
        self.decode_ref = decode_ref
        #: Worker id -> its request (decoding); the ids are the workers logged so far (encoding).
        self.requests: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class FieldCodec:
    """How one field of ``Change`` goes into a log line and back.

    ``encode`` takes the field's value (never empty: empty fields are left out of the line) and
    the ``Context``; ``decode`` takes the JSON and the ``Context`` and may raise one of
    ``codec.RECORD_ERRORS``.
    """

    encode: Callable[[Any, Context], Any]
    decode: Callable[[Any, Context], Any]


def encode_worker_state(state: WorkerState, context: Context) -> dict[str, Any]:
    record: dict[str, Any] = {"worker_ref": codec.encode_worker_ref(state.worker_ref)}
    if state.worker_ref.worker_id not in context.requests:
        record["request"] = codec.encode_request(state.request)
    record["status"] = state.status.value
    record["transcript_len"] = state.transcript_len
    record["last_event_id"] = state.last_event_id
    if state.execution is not None:
        record["execution"] = codec.encode_execution(state.execution)
    return record


def decode_worker_state(record: Mapping[str, Any], context: Context) -> WorkerState:
    execution = record.get("execution")
    ref = context.decode_ref(record["worker_ref"])
    raw_request = record.get("request")
    if raw_request is None:
        request = context.requests.get(ref.worker_id)
        if request is None:
            raise ValueError(f"worker {ref.worker_id} has no request (no line created it)")
    else:
        request = context.requests[ref.worker_id] = codec.decode_request(raw_request)
    return WorkerState(
        worker_ref=ref,
        request=request,
        status=WorkerStatus(record["status"]),
        transcript_len=_count(record["transcript_len"], "transcript_len"),
        last_event_id=_count(record["last_event_id"], "last_event_id"),
        execution=None if execution is None else codec.decode_execution(execution),
    )


def _count(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"{name} {value!r} is not a whole number")
    return value


def _observation(record: Mapping[str, Any], context: Context) -> Any:
    return codec.decode_observation(record, context.decode_ref(record["worker_ref"]))


def _encode_observation(observation: Any, _: Context) -> dict[str, Any]:
    record = codec.encode_observation(observation)
    record["worker_ref"] = codec.encode_worker_ref(observation.worker_ref)
    return record


def encode_kept_answer(answer: KeptAnswer, _: Context | None = None) -> dict[str, Any]:
    """A kept ``Idempotency-Key`` answer (§11). The body is the answer's bytes, kept exactly (a
    replay sends them again): as text when they are UTF-8, as they always are (JSON), else in
    base64 under ``body_base64``; ``warnings`` is left out when there are none."""
    record: dict[str, Any] = {"key": answer.key, "fingerprint": answer.fingerprint, "status": answer.status}
    try:
        record["body"] = answer.body.decode()
    except UnicodeDecodeError:
        record["body_base64"] = base64.b64encode(answer.body).decode("ascii")
    if answer.warnings:
        record["warnings"] = list(answer.warnings)
    record["kept_at"] = answer.kept_at
    return record


def decode_kept_answer(record: Mapping[str, Any], _: Context | None = None) -> KeptAnswer:
    if not isinstance(record, Mapping):
        raise TypeError(f"{record!r} is not an object")
    if "body" in record:
        body = _text(record["body"], "body").encode()
    else:
        body = base64.b64decode(_text(record["body_base64"], "body_base64"), validate=True)
    warnings = record.get("warnings", [])
    if not isinstance(warnings, list):
        raise TypeError(f"warnings {warnings!r} is not a list")
    status = record["status"]
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 299:
        raise ValueError(f"status {status!r} is not a 2xx status")
    kept_at = record["kept_at"]
    if not isinstance(kept_at, (int, float)) or isinstance(kept_at, bool):
        raise TypeError(f"kept_at {kept_at!r} is not a number")
    return KeptAnswer(
        key=_text(record["key"], "key"),
        fingerprint=_text(record["fingerprint"], "fingerprint"),
        status=status,
        body=body,
        warnings=tuple(_text(w, "warning") for w in warnings),
        kept_at=float(kept_at),
    )


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} {value!r} is not a string")
    return value


def _encode_deleted(worker_id: str, context: Context) -> str:
    return worker_id


def _decode_deleted(value: Any, context: Context) -> str:
    """A deleted worker's id; the worker must be one the log knows, and is forgotten: a later
    line that names it again is refused (no line creates it again)."""
    worker_id = _text(value, "deleted worker id")
    if worker_id not in context.requests:
        raise ValueError(f"deletes worker {worker_id}, which no line created (or deleted already)")
    del context.requests[worker_id]
    return worker_id


def _many(encode: Callable[[Any, Context], Any], decode: Callable[[Any, Context], Any]) -> FieldCodec:
    """A tuple field: a JSON list of records."""

    def decode_list(value: Any, context: Context) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise TypeError(f"{value!r} is not a list")
        return tuple(decode(item, context) for item in value)

    return FieldCodec(lambda values, context: [encode(v, context) for v in values], decode_list)


#: Every field of ``Change``, in order, with its codec: a field added to ``Change`` needs an
#: entry here (``tests/test_fs_wal.py`` checks), and is then written and replayed with the rest.
CHANGE_FIELDS: Mapping[str, FieldCodec] = {
    "event": FieldCodec(
        lambda event, _: codec.encode_event(event), lambda value, c: codec.decode_event(value, c.decode_ref)
    ),
    "runtime_status": FieldCodec(lambda status, _: status.value, lambda value, _: RuntimeStatus(value)),
    "workers": _many(encode_worker_state, decode_worker_state),
    "transcript": _many(
        lambda entry, _: codec.encode_transcript_entry(entry),
        lambda value, c: codec.decode_transcript_entry(value, decode_ref=c.decode_ref),
    ),
    "diagnostics": _many(
        lambda diagnostic, _: codec.encode_diagnostic(diagnostic),
        lambda value, c: codec.decode_diagnostic(value, c.decode_ref),
    ),
    "observations": _many(_encode_observation, _observation),
    "idempotency": _many(encode_kept_answer, decode_kept_answer),
    "deleted": _many(_encode_deleted, _decode_deleted),
}
_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Change))


def encode_change(change: Change, lsn: int, context: Context) -> dict[str, Any]:
    """The record of ``change`` at ``lsn`` (without its checksum); ``context`` names the workers
    logged before (the caller adds those this change creates once the line is durable)."""
    record: dict[str, Any] = {"lsn": lsn}
    for name in _FIELD_NAMES:
        value = getattr(change, name)
        if value is None or value == ():
            continue
        record[name] = CHANGE_FIELDS[name].encode(value, context)
    return record


def decode_change(record: Mapping[str, Any], context: Context) -> Change:
    """The ``Change`` of a log record; raises one of ``codec.RECORD_ERRORS`` for a bad one,
    a field this runtimed does not know included (a newer runtimed wrote it)."""
    values: dict[str, Any] = {}
    for key, value in record.items():
        if key in ("lsn", "crc"):
            continue
        field_codec = CHANGE_FIELDS.get(key)
        if field_codec is None:
            raise ValueError(f"unknown field {key!r}")
        values[key] = field_codec.decode(value, context)
    if "runtime_status" not in values:
        raise KeyError("runtime_status")
    values.setdefault("event", None)
    return Change(**values)


# ------------------------------------------------------------------ framing


def dumps(record: dict[str, Any]) -> bytes:
    """Compact JSON; the standard library for what orjson refuses but the store keeps on
    purpose (a lone surrogate a client sent, written as its ``\\udXXX`` escape)."""
    try:
        return orjson.dumps(record)
    except orjson.JSONEncodeError:
        return json.dumps(record, separators=(",", ":")).encode("ascii")


def frame(body: bytes) -> bytes:
    """A log line from a record's JSON (``{"lsn":…}``): the checksum put in front, a newline after."""
    rest = body[1:]
    return b'{"crc":"%08x",' % zlib.crc32(rest) + rest + b"\n"


def check(line: bytes) -> str | None:
    """What is wrong with a log line (without its newline), or ``None`` when its checksum holds."""
    if len(line) <= PREFIX_LEN or not line.startswith(PREFIX) or line[16:18] != b'",':
        return "is not a log record (no checksum)"
    try:
        crc = int(line[8:16], 16)
    except ValueError:
        return "is not a log record (bad checksum field)"
    if zlib.crc32(line[PREFIX_LEN:]) != crc:
        return "fails its checksum (the line was changed or damaged)"
    return None


def line_lsn(line: bytes) -> int | None:
    """The LSN of a checked line, read without parsing the rest."""
    if not line.startswith(_LSN_KEY, PREFIX_LEN):
        return None
    start = PREFIX_LEN + len(_LSN_KEY)
    end = start
    while end < len(line) and 48 <= line[end] <= 57:
        end += 1
    return int(line[start:end]) if end > start else None


# ------------------------------------------------------------------ reading


@dataclass(slots=True)
class Segment:
    """One segment file: its first LSN and its path."""

    first_lsn: int
    path: Path


def list_segments(directory: Path) -> tuple[list[Segment], list[Path]]:
    """The segments under ``directory``, by first LSN, and the entries that are not segments."""
    segments: list[Segment] = []
    others: list[Path] = []
    for entry in directory.iterdir():
        lsn = segment_lsn(entry.name)
        if lsn is None or not entry.is_file() or entry.is_symlink():
            others.append(entry)
        else:
            segments.append(Segment(lsn, entry))
    segments.sort(key=lambda s: s.first_lsn)
    return segments, others


def split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """The whole lines of ``data`` (without newlines) and what follows the last newline."""
    lines = data.split(b"\n")
    tail = lines.pop()
    return lines, tail


# ------------------------------------------------------------------ writing


class LogWriter:
    """The log's segments as the store writes them: appends by the flush (one writer thread),
    removals by the checkpoint (another); ``lock`` guards the list of segments between them."""

    def __init__(self, directory: Path, segments: list[Segment], next_lsn: int) -> None:
        self.directory = directory
        self.segments = segments
        self.next_lsn = next_lsn
        self.lock = threading.Lock()
        self._fd: int | None = None
        self._size = files.size_of(segments[-1].path) if segments else 0
        #: Set by ``append``: what ``undo`` needs to put the log back as it was.
        self._undo: tuple[int, bool] | None = None

    @property
    def active(self) -> Segment:
        return self.segments[-1]

    def _open_active(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.active.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        return self._fd

    def append(self, data: bytes, lines: int) -> None:
        """Append ``data`` (``lines`` whole lines, the next LSNs) and make it durable: one
        ``write`` and one ``fsync`` (and the directory's, when a new segment was started).

        On failure, ``undo`` puts the log back as it was before this call, and only this
        call's lines: a failure before anything was written (a new segment that could not be
        created) leaves nothing to undo. ``next_lsn`` moves only once the lines are durable."""
        self._undo = None
        started = False
        if self._size >= SEGMENT_BYTES or not self.segments:
            self._start_segment()  # raises before it creates anything, or the segment is ours
            started = True
            self._undo = (0, True)
        fd = self._open_active()
        self._undo = (self._size, started)
        path = self.active.path
        with files.naming(path):
            files.write_all(fd, data)
            self._size += len(data)
            self.sync(fd)
        if started:
            files.fsync_path(self.directory)  # the new segment's name is durable with its directory
        self.next_lsn += lines
        self._undo = None

    @staticmethod
    def sync(fd: int) -> None:
        """The ``fsync`` that makes an append durable (a test makes it fail)."""
        os.fsync(fd)

    def _start_segment(self) -> None:
        path = self.directory / segment_name(self.next_lsn)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        previous, self._fd = self._fd, fd
        self._size = 0
        with self.lock:
            self.segments.append(Segment(self.next_lsn, path))
        if previous is not None:
            with contextlib.suppress(OSError):  # its lines are durable already: nothing is lost
                os.close(previous)

    def undo(self) -> None:
        """Put the log back as it was before the last ``append``, which failed (nothing when it
        failed before it wrote anything)."""
        if self._undo is None:
            return
        size, started = self._undo
        self._undo = None
        path = self.active.path
        if started:
            self.close()
            with self.lock:
                self.segments.pop()
            path.unlink(missing_ok=True)
            files.fsync_path(self.directory)
            self._size = files.size_of(self.active.path) if self.segments else 0
            return
        fd = self._open_active()
        with files.naming(path):
            if os.fstat(fd).st_size != size:  # a write refused outright left nothing to cut back
                os.ftruncate(fd, size)
                os.fsync(fd)
        self._size = size

    def rotate(self) -> None:
        """Start a new, empty segment at the next LSN (at a clean close: the checkpoint covers
        everything before it, so every older segment can go)."""
        if self.segments and self._size == 0:
            return
        self._start_segment()
        files.fsync_path(self.directory)

    def covered(self, lsn: int) -> list[Segment]:
        """The segments whose every line is at or before ``lsn``, oldest first; never the newest."""
        with self.lock:
            segments = list(self.segments)
        return [s for s, after in itertools.pairwise(segments) if after.first_lsn - 1 <= lsn]

    def remove(self, segment: Segment) -> None:
        """Remove ``segment`` (the oldest: a crash between removals leaves a contiguous log)."""
        with self.lock:
            assert self.segments[0] is segment and len(self.segments) > 1
            self.segments.pop(0)
        segment.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
