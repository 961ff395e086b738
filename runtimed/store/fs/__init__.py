"""The filesystem store: durable, crash-safe, restorable (contract §8).

Layout under the root (ids are hex-encoded into path components)::

    runtimed.lock                                   the daemon's lock (flock), holding its pid
    runtimes/id-<hex>/runtime.json                  runtime snapshot (schema_version 3)
    runtimes/id-<hex>/log/<first LSN>.jsonl         the write-ahead log, in segments: the commit record
    runtimes/id-<hex>/checkpoint.json               the checkpoint marker: what the files below hold
    runtimes/id-<hex>/events.jsonl                  runtime event log          ┐
    runtimes/id-<hex>/diagnostics.jsonl                                        │
    runtimes/id-<hex>/idempotency.jsonl             kept answers (§11)         │ checkpoint files:
    runtimes/id-<hex>/workers/id-<hex>/worker.json         worker snapshot     │ the seed's layout,
    runtimes/id-<hex>/workers/id-<hex>/transcript.jsonl                        │ written from what
    runtimes/id-<hex>/workers/id-<hex>/observations.jsonl  retained ones       ┘ the log made durable

Every file is JSON: ``cat`` and ``jq`` read them all.

**The log is the commit.** A flush (one writer thread; group commit: changes that arrive while
one runs wait for the next) appends one line per ``Change`` to the newest segment of ``log/``
with one ``write`` and one ``fsync``, however many workers the batch touches; nothing of the
batch is acknowledged before that ``fsync`` returns. A line is one request, whole
(``runtimed.store.fs.wal``)::

    {"crc":"1c291ca3","lsn":42,"event":{…},"runtime_status":"running","workers":[…],
     "transcript":[…],"observations":[…],"diagnostics":[…],"idempotency":[…],"deleted":[…]}

``crc`` is the CRC32 (8 hex digits) of the bytes after the fixed 18-byte ``{"crc":"xxxxxxxx",``
prefix, up to the newline; ``lsn`` numbers lines 1, 2, 3, … without a gap across segments; the
other keys are the ``Change``'s fields, each by the codec of ``wal.CHANGE_FIELDS`` and left out
when empty: the event, the whole state of each worker the change touched (its execution
included: agents' records, ``begin_turn`` and ``update_execution`` with no event, go through
the log like the rest; a worker's first line carries its creation request, later ones leave it
out), transcript entries, observations and diagnostics with their worker refs, the runtime's
status, the ``Idempotency-Key`` answers the change keeps (§11: key, request fingerprint,
status, body as text — ``body_base64`` for bytes that are not UTF-8 —, ``Warning`` values,
``kept_at``; a stop that changed nothing is a line of its own holding only its answer), and the
ids of the workers it deletes (with their ``worker_deleted`` event; no later line names them).
A segment is named by the LSN of its first line; a flush starts a new one once the newest has
grown past ``wal.SEGMENT_BYTES``.

**Checkpoints** (``runtimed.store.fs.checkpoint``). A thread of their own, never the event loop
and never the flush, takes the changes the log has made durable, every ``CHECKPOINT_SECONDS``
(or ``CHECKPOINT_BYTES`` of log), and writes them into the seed's files: event, transcript,
observation and diagnostic lines appended, ``worker.json`` and ``runtime.json`` replaced
atomically, then all fsynced (in parallel). Only then does it record the LSN it covers in
``checkpoint.json`` (temp file, fsync, rename, fsync of the directory), with what restore must
find in the files, as in the commit record before the log::

    {"schema_version": 2, "lsn": 9, "event_id": 9, "observation_sequence": 5, "diagnostic_id": 0,
     "observations": {"worker-00000001": 3, …},      per worker: observations its file took in
     "executions": {"worker-00000002": {…}},         every agent-backed worker's execution
     "idempotency": 4}                               answers idempotency.jsonl took in

(``schema_version`` 1, written before §11, has no ``idempotency``: still read; a runtimed
that knows only 1 refuses 2) and removes the segments it wholly covers, oldest first (never the
newest). Observation logs are compacted after the marker (to the newest ``backlog`` lines, led
by a ``trimmed_through`` / ``trimmed`` marker), so a compacted file always accounts for the
marker's count. ``close``
writes a last checkpoint and starts an empty segment past it: the next start replays nothing.
A checkpoint whose files fail (a full disk) is undone (files cut back to their length before it)
and retried. Once its files are written, their records are never written again: a marker that
fails is owed, and the next try writes that marker alone (then the rest); the segments it
covers are removed only once it is durable. A step after the marker that fails (removing a
deleted worker's directory, a compaction, removing segments) is logged and retried by the next
checkpoint. An unexpected error (not an ``OSError``) stops checkpoints until a restart, logged
with its traceback; commits go on (the log is the source of truth). Meanwhile the log keeps
everything, and readiness reports the failure.
``idempotency.jsonl`` takes one line per kept answer; once as many of its lines are expired
(``[limits] idempotency_key_ttl_seconds`` after ``kept_at``, by the wall clock) or replaced as
are live, it is rewritten after the marker to the live ones, led by ``{"trimmed": n}`` (the
answers dropped in all), like an observation log. A
``worker_turn_ended`` event that made an assistant entry says so in ``events.jsonl``
(``"transcript_sequence": n``), so that a missing assistant entry is told from a turn that made
none.

**Deleting a worker** (§11). A checkpoint that covers a ``deleted`` line drops the worker from
the marker (its observation count and execution), and only once that marker is durable
removes ``workers/id-<hex>/`` — the directory the store made for it; a workspace or a profile
``cwd`` is never the store's. A directory that also holds files runtimed did not write loses
runtimed's own (``checkpoint.WORKER_FILES``: ``worker.json``, ``transcript.jsonl``,
``observations.jsonl`` and their ``.tmp`` / ``.corrupt`` files) and is left with the others in
it, once, with a log warning: runtimed never deletes a file it did not create. Removed
before the marker, a crash would leave a marker counting a worker that is gone. A line that
deletes makes the checkpoint due at once, and the delete's commit waits for it: the answer is
sent once the directory is gone. (If that checkpoint fails, the answer is sent anyway — the
deletion is durable in the log — and the next checkpoint, or the next start, removes it.) The
runtime event log keeps the worker's events and the diagnostics theirs; its id is never given
again (restore puts the worker sequence past every ``worker_created`` event).

**Restore** reads ``checkpoint.json``, then the checkpoint files, checked against it as strictly
as against the commit record before: events up to its event id, diagnostics up to its id, the
transcript entries of those events (one per ``worker_input_accepted``, one per marked
``worker_turn_ended``, each naming its event) and, per worker, exactly its count of observations
must all be there, densely numbered; an execution must be of a worker that was created. A
committed record that is missing (a file deleted, cut short, a line dropped) is corruption:
restore refuses, naming the file (``store_missing``, ``store_corrupt``). Records past the
marker's counts, a torn last line of a checkpoint file, and a worker directory whose
``worker_created`` event is past the marker are what an interrupted checkpoint left; the log has
them, so they are cut back (removed) with a log line, no warning. A worker with a
``worker_deleted`` event is gone: the marker must not count it, and its directory, left by a
crash before its removal, is removed (with a log line) when it holds only the store's files;
one that holds others too (or only others: a deletion left them) loses the store's files and is
left with the others, with a ``store.foreign_files_kept`` warning diagnostic naming them, at
every start until they are moved out. An acknowledged deletion never stops a start.
``idempotency.jsonl`` must account for the marker's count of kept answers (``trimmed`` plus its
lines); lines past it are cut back. Where a snapshot and the event log disagree, the event log
wins and the snapshot is rewritten.

Then restore replays the log: segments in LSN order, without a gap from the one holding the
marker's LSN (or the one just past it) to the end; every line must pass its CRC and carry the
next LSN; lines past the marker's LSN are decoded and applied (ids and sequences must continue
where the state is; a deleted worker must exist and not be running, and the line's event must
be its ``worker_deleted``). A deletion replayed from the log (a crash before the checkpoint that
would have removed its directory) is checkpointed before ``open`` returns, so the directory is
gone before the daemon serves. Only the newest segment's last line may be bad — incomplete (no
newline) or failing its CRC: a write cut short, never acknowledged; it is set aside into
``<segment>.corrupt`` with a ``store.torn_tail`` warning diagnostic. A bad line anywhere else (a
flipped byte, a line dropped or duplicated), a missing segment, a marker past the end of the
log: corruption, refused naming the file and the problem. Segments the marker wholly covers are
removed (a removal cut short leaves them). Restore time is the state's size (the checkpoint
files) plus the log's tail, not the history; replayed changes are checkpointed by the next
checkpoint. Restore changes nothing until every check has passed, so a refused start leaves the
files as they were.

**Failure.** If a flush fails, the log is cut back to its length before it and every pending
change fails with ``store_io`` naming the segment; if even that fails, ``StatePoisoned``. A
daemon killed between the failed write and the cut-back had answered none of those requests:
whatever of their lines is whole on disk is replayed, as for any request in flight at a crash.
Readiness (``check_writable``) writes, fsyncs and removes a few KiB in the runtime directory,
so a full disk is not ready.

**One daemon per root.** ``open`` takes an exclusive ``flock`` on ``<root>/runtimed.lock``
(mode 0600; it holds the holder's pid) before it reads or changes anything, and ``close``
releases it; a second daemon on the root is refused (``StoreLocked``, naming the root and the
holder's pid). The kernel drops the lock with its process, so a lock file left by a killed
daemon is no obstacle and is never removed.

**Private.** The root, the parents the store makes for it, and every directory under it are
mode 0700, every file 0600, whatever the umask; ``open`` tightens an existing root to those
modes (a path it may not change is logged).

**Start-up leftovers.** Under ``runtimes/``, runtimed's own leftovers — the write probe
``.write-probe`` and a ``.id-<hex>`` directory that creating a runtime builds before renaming it
into place, holding no more than that builds — are removed, with a log line. Any other hidden
entry is refused, naming it, and left alone. In ``log/``, only segments and their ``.corrupt``
files may be; anything else is refused.

**Stores written before the log.** ``runtime.json`` at schema_version 2 (with ``commits.jsonl``,
the commit record of each flush) or 1 (before that) still opens: it is read and checked as
before (``commit``, the commit record's format, is kept for that), then upgraded: the log's
first segment, then ``checkpoint.json`` (LSN 0, the counts restore found), then ``runtime.json``
at schema_version 3, and only then is ``commits.jsonl`` removed. A crash in between leaves a
store restore reads by its marker once the marker exists, and the next open finishes the
upgrade. A runtimed that knows only version 1 or 2 refuses version 3, rather than write past
the log.

The records are those of ``runtimed.store.codec``. ``files`` holds the file operations, ``wal``
the log's lines and segments, ``checkpoint`` the checkpoint files and marker, ``commit`` the
commit record of stores written before the log, ``store`` the ``FsStore`` (open, create,
commit, checkpoint thread, close), ``restore`` the reading back at open.
"""

from .files import hex_id, unhex_id
from .store import FsStore

__all__ = ["FsStore", "hex_id", "unhex_id"]
