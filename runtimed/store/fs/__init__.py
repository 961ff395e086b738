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

The records are those of ``runtimed.store.codec``. ``files`` holds the file operations, ``store``
the ``FsStore`` (open, create, commit), ``restore`` the reading back at open.
"""

from .files import hex_id, unhex_id
from .store import FsStore

__all__ = ["FsStore", "hex_id", "unhex_id"]
