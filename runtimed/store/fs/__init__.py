"""The filesystem store: durable, crash-safe, restorable (contract §8).

Layout under the root (ids are hex-encoded into path components)::

    runtimed.lock                                   the daemon's lock (flock), holding its pid
    runtimes/id-<hex>/runtime.json                  runtime snapshot (schema_version 2)
    runtimes/id-<hex>/commits.jsonl                 the commit record
    runtimes/id-<hex>/events.jsonl                  runtime event log
    runtimes/id-<hex>/diagnostics.jsonl
    runtimes/id-<hex>/workers/id-<hex>/worker.json         worker snapshot (schema_version 1)
    runtimes/id-<hex>/workers/id-<hex>/transcript.jsonl
    runtimes/id-<hex>/workers/id-<hex>/observations.jsonl  retained observation events

**One daemon per root.** ``open`` takes an exclusive ``flock`` on ``<root>/runtimed.lock``
(mode 0600; it holds the holder's pid) before it reads or changes anything, and ``close``
releases it; a second daemon on the root is refused (``StoreLocked``, naming the root and the
holder's pid). The kernel drops the lock with its process, so a lock file left by a killed
daemon is no obstacle and is never removed.

**Private.** The root, the parents the store makes for it, and every directory under it are
mode 0700, every file 0600, whatever the umask; ``open`` tightens an existing root to those
modes (a path it may not change is logged).

**Atomic per request.** A flush writes a batch of changes in two phases: first everything but
the commit record (event lines, transcript entries, diagnostics, observations, worker and
runtime snapshots), fsynced; then one line of ``commits.jsonl``, fsynced. Nothing of the batch
is acknowledged before that line is durable. The line holds, as absolute values, the last event
id, the last observation sequence and the last diagnostic id, and for each worker the batch
observed, how many observations its ``observations.jsonl`` has taken in (``runtimed.store.fs.commit``).
So every acknowledged record is accounted for, observations published by ``Runtime.observe``
(which have no event) included.

**Executions.** An agent-backed worker's ``WorkerExecution`` (§9.2) lives in the commit record
itself: a line holds, under ``executions``, the whole execution of each worker the batch changed
(the checkpoint line, of every such worker), a later one replacing an earlier one. So a change
with no runtime event (``Runtime.begin_turn`` making an input delivered, ``update_execution``) is
durable exactly when its commit line is, and restore never takes an unacknowledged turn for
delivered. ``worker.json`` does not hold it. A ``worker_turn_ended`` event that made an assistant
transcript entry says so in its line of ``events.jsonl`` (``"transcript_sequence": n``, which the
event's JSON elsewhere does not carry), so that a missing assistant entry is told from a turn
that made none.

At restore the commit log's last whole line rules:

- events up to its event id, diagnostics up to its diagnostic id, and transcript entries of those
  events (one per ``worker_input_accepted``, one per marked ``worker_turn_ended``, each naming
  its event) must all be there, densely numbered; observations up to its sequence must be there
  too, each worker's file holding exactly its count (the lines kept plus the ``trimmed`` count of
  its compaction marker); an execution must be of a worker that was created. A committed record
  that is missing — a file deleted, cut to fewer lines, a line dropped — is corruption: restore
  refuses, naming the file (``store_missing``, ``store_corrupt``).
- records past the commit are an unacknowledged tail: discarded, each file's with a
  ``store.uncommitted_discarded`` warning. They can only close a file; anywhere else they are
  corruption. A worker directory whose ``worker_created`` event is past the commit is removed.
- a torn last line (a crash mid-append) is set aside into ``<file>.corrupt``
  (``store.torn_tail``); the warning says why it is no acknowledged record (every committed
  record of its file is present), or that restore cannot tell.
- where a snapshot and the logs disagree, the logs win and the snapshot is rewritten.

Restore changes nothing until every check has passed, so a refused start leaves the files as
they were. The commit log is cut back to a single checkpoint line (every count in it) once it
grows long; the first line always is one.

**Stores written before the commit log** (``runtime.json`` at schema_version 1, no
``commits.jsonl``) still open, read as they were written: the event log commits events and the
records that name an event, observations and diagnostics are taken as found (they cannot be
checked, and a torn tail of theirs is reported as such). ``open`` then writes the commit log (a
checkpoint of what it found) and only after it moves ``runtime.json`` to schema_version 2, from
which on the store is checked fully. A runtimed that knows only version 1 refuses the store
from then on, rather than write past its commit log.

**Start-up leftovers.** Under ``runtimes/``, runtimed's own leftovers — the write probe
``.write-probe`` and a ``.id-<hex>`` directory that creating a runtime builds before renaming it
into place, holding no more than that builds — are removed, with a log line. Any other hidden
entry is refused, naming it, and left alone.

**Group commit.** Changes that arrive while a flush runs wait for the next one, which writes
them all with one fsync per file touched, the fsyncs running in parallel. File I/O runs in a
worker thread, never on the event loop.

**Failure.** If a flush fails, what it wrote is truncated or put back and every pending change
fails with ``store_io`` naming the file; if even that fails, ``StatePoisoned``. Readiness
(``check_writable``) writes, fsyncs and removes a few KiB in the runtime directory, so a full
disk is not ready.

The records are those of ``runtimed.store.codec``. ``files`` holds the file operations, ``commit``
the commit record, ``store`` the ``FsStore`` (open, create, commit), ``restore`` the reading back
at open.
"""

from .files import hex_id, unhex_id
from .store import FsStore

__all__ = ["FsStore", "hex_id", "unhex_id"]
