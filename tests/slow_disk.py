"""``runtimed`` with a simulated slow or failing disk, and crash points for tests.

    python tests/slow_disk.py FLUSH_DELAY_MS serve --store fs --fs-root DIR …

Every fs store flush first sleeps ``FLUSH_DELAY_MS`` (0: none). For tests (a request kept in
flight while a signal arrives; a kill at a chosen step of the store) and benchmarks (group
commit under a slow fsync). The product has no such knobs: they are injected here, by a store
subclass, from the environment:

- ``RUNTIMED_TEST_CHECKPOINT_SECONDS`` / ``RUNTIMED_TEST_SEGMENT_BYTES``: checkpoint that often,
  start a new log segment past that size (so tests reach those steps quickly);
- ``RUNTIMED_TEST_FAIL_FLUSH=N``: the Nth flush fails after its log lines are written (its
  ``fsync`` raises EIO);
- ``RUNTIMED_TEST_PAUSE_AT=checkpoint|truncate|segment_removal|deletion_checkpoint|worker_removal``:
  at that step — a checkpoint's files written but not its marker; a failed flush's lines written
  but not yet cut back; the first of several covered segments removed; the files of a checkpoint
  that deletes a worker written but not its marker; a deleting checkpoint's marker written but
  the deleted worker's directory not yet removed — print ``crash point: STEP`` to stderr and stop
  there (the test kills the daemon).
"""

from __future__ import annotations

import errno
import os
import sys
import time

import runtimed.cli
import runtimed.store.fs.checkpoint as fs_checkpoint
import runtimed.store.fs.store as fs_store
import runtimed.store.fs.wal as fs_wal
from runtimed.daemon import serve
from runtimed.daemon.config import Config
from runtimed.store import Change, FsStore, Store

#: Written to stderr as each flush begins.
FLUSH_STARTED = "slow disk: flush started"
#: Written to stderr when the store reaches ``RUNTIMED_TEST_PAUSE_AT``, followed by the step.
CRASH_POINT = "crash point: "
#: How long a paused store thread waits for the kill before it gives up (bounded, never forever).
PAUSE_LIMIT_S = 60.0


class SlowFsStore(FsStore):
    """An fs store whose every flush sleeps ``flush_delay`` seconds before it writes, and which
    fails or stops where the environment says."""

    def __init__(self, *args: object, flush_delay: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.flush_delay = flush_delay
        self.pause_at = os.environ.get("RUNTIMED_TEST_PAUSE_AT", "")
        self.fail_flush = int(os.environ.get("RUNTIMED_TEST_FAIL_FLUSH", "0"))
        self.appends = 0
        self.covering = 0  # segments the checkpoint being written covers
        self.deleting = False  # the checkpoint being written deletes a worker

    def _pause(self, step: str) -> None:
        print(CRASH_POINT + step, file=sys.stderr, flush=True)
        time.sleep(PAUSE_LIMIT_S)

    def _write_batch(self, changes: list[Change]) -> None:
        # Tests wait for this line to know a request is in flight, instead of sleeping.
        print(FLUSH_STARTED, file=sys.stderr, flush=True)
        if self.flush_delay:
            time.sleep(self.flush_delay)  # in the store's writer thread, as a slow fsync would be
        super()._write_batch(changes)

    def _append(self, log_writer: fs_wal.LogWriter, data: bytes, lines: int) -> None:
        self.appends += 1
        if self.appends != self.fail_flush:
            super()._append(log_writer, data, lines)
            return

        def failing_sync(fd: int) -> None:  # the lines are written; their fsync fails
            raise OSError(errno.EIO, "Input/output error (injected)", str(log_writer.active.path))

        log_writer.sync = failing_sync  # type: ignore[method-assign]
        try:
            super()._append(log_writer, data, lines)
        finally:
            del log_writer.sync

    def _undo(self, log_writer: fs_wal.LogWriter, failure: object) -> None:
        if self.pause_at == "truncate":
            self._pause("truncate")
        super()._undo(log_writer, failure)  # type: ignore[arg-type]

    def _write_checkpoint(self, changes: list[Change], lsn: int, size: int) -> bool:
        self.deleting = any(change.deleted for change in changes)
        return super()._write_checkpoint(changes, lsn, size)

    def _write_marker(self, checkpoint: object, lsn: int) -> None:
        if self.pause_at == "checkpoint" or (self.pause_at == "deletion_checkpoint" and self.deleting):
            self._pause(self.pause_at)
        super()._write_marker(checkpoint, lsn)  # type: ignore[arg-type]

    def _remove_deleted(self, checkpoint: fs_checkpoint.CheckpointFiles) -> None:
        if self.pause_at == "worker_removal" and checkpoint.deleting:
            self._pause("worker_removal")
        super()._remove_deleted(checkpoint)

    def _remove_covered(self, lsn: int) -> None:
        assert self._log is not None
        self.covering = len(self._log.covered(lsn))
        super()._remove_covered(lsn)

    def _remove_segment(self, log_writer: fs_wal.LogWriter, segment: fs_wal.Segment) -> None:
        super()._remove_segment(log_writer, segment)
        if self.pause_at == "segment_removal" and self.covering >= 2:
            self._pause("segment_removal")


def main() -> None:
    flush_delay = float(sys.argv.pop(1)) / 1000
    if "RUNTIMED_TEST_CHECKPOINT_SECONDS" in os.environ:
        fs_store.CHECKPOINT_SECONDS = float(os.environ["RUNTIMED_TEST_CHECKPOINT_SECONDS"])
    if "RUNTIMED_TEST_SEGMENT_BYTES" in os.environ:
        fs_wal.SEGMENT_BYTES = int(os.environ["RUNTIMED_TEST_SEGMENT_BYTES"])

    def build_store(config: Config) -> Store:
        store = serve.build_store(config)
        if isinstance(store, FsStore):
            return SlowFsStore(
                store.root,
                config.limits.observation_backlog,
                config.limits.idempotency_key_ttl_seconds,
                flush_delay=flush_delay,
            )
        return store

    runtimed.cli.build_store = build_store  # type: ignore[attr-defined]
    runtimed.cli.main(prog_name="runtimed")


if __name__ == "__main__":
    main()
