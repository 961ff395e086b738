"""``FsStore``: open or create the runtime directory, commit changes to its log, checkpoint.

A flush (one writer thread) appends the batch's changes to the write-ahead log (``wal``) with
one ``write`` and one ``fsync``; then the changes are durable and handed to the checkpoint
thread, which writes them into the files of the seed's layout (``checkpoint``) every
``CHECKPOINT_SECONDS`` or ``CHECKPOINT_BYTES`` of log, records the LSN it covers and removes
the segments it wholly covers. ``restore`` reads the directory back at open; ``files`` holds the
file operations all of them use.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ...domain.errors import StatePoisoned, StoreCorrupt, StoreError, StoreIo, StoreLocked
from ...domain.management import RuntimeStatus
from ..base import Change, RestoredState, Store
from . import files, wal
from .checkpoint import MARKER, CheckpointBroken, CheckpointFiles, runtime_snapshot, write_first_marker
from .commit import COMMIT_LOG
from .files import LOCK_FILE, PROBE_FILE, TEMP_SUFFIX, hex_id, replace_atomically, unhex_id
from .restore import Restored, Restorer

log = logging.getLogger("runtimed.store")

#: A checkpoint is written once the log holds this much past the last one …
CHECKPOINT_BYTES = 16 << 20
#: … or once the oldest change not yet checkpointed is this old.
CHECKPOINT_SECONDS = 1.0
#: After a checkpoint failed (a full disk), the next try waits this long.
CHECKPOINT_RETRY_SECONDS = 5.0
#: What ``create`` puts in the hidden directory it builds a runtime in, before renaming it into
#: place; a directory of that name holding no more than this is a start that was cut short.
_BUILT_BY_CREATE = frozenset(
    {
        "workers",
        "runtime.json",
        "runtime.json" + TEMP_SUFFIX,
        MARKER,
        MARKER + TEMP_SUFFIX,
        wal.LOG_DIR,
        COMMIT_LOG,
        COMMIT_LOG + TEMP_SUFFIX,
    }
)


def _io_error(operation: str, error: OSError, fallback: Path) -> StoreIo:
    """``StoreIo`` naming the file ``error`` concerns (``fallback`` when it names none)."""
    return StoreIo(operation, str(error.filename or fallback), error.strerror or str(error))


# ------------------------------------------------------------------ store


class FsStore(Store):
    """Everything under ``root``; see ``runtimed.store.fs`` for the layout and guarantees."""

    backend = "fs_store"
    id_prefix = "fs"

    def __init__(self, root: Path, observation_backlog: int = 1024, idempotency_ttl: float = 86400.0) -> None:
        super().__init__()
        self.root = Path(root)
        self._backlog = observation_backlog
        #: ``[limits] idempotency_key_ttl_seconds``: checkpoints drop answers older than this.
        self._idempotency_ttl = idempotency_ttl
        self._runtime_dir: Path | None = None
        self._runtime_id: str | None = None
        self._lock_fd: int | None = None
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runtimed-store")
        self._fsyncs = ThreadPoolExecutor(max_workers=16, thread_name_prefix="runtimed-fsync")
        self._queue: list[tuple[Change, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self._log: wal.LogWriter | None = None
        #: The workers the log knows (its lines after a worker's first leave the request out).
        self._log_context = wal.Context()
        self._checkpoint_files: CheckpointFiles | None = None
        # The checkpoint thread and what it has yet to write (guarded by ``_pending_changed``).
        self._checkpointer: threading.Thread | None = None
        self._pending_changed = threading.Condition()
        self._pending: list[Change] = []
        self._pending_lsn = 0  # the LSN of the newest pending change
        self._pending_bytes = 0
        self._pending_since = 0.0  # monotonic time the oldest pending change was made durable
        self._pending_deletes = False  # a pending change deletes a worker: checkpoint now
        # The commits of deletions wait for the checkpoint that removes the workers' directories
        # (§11: "its files are gone when the answer is sent"): (LSN, future), on the loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._removal_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._removed_through = 0  # the LSN through which deletions have been carried out
        self._closing = False
        self._checkpoint_failed: str | None = None  # why the last checkpoint failed, until one works
        #: No more checkpoints until a restart (their files are not where the bookkeeping says,
        #: or an unexpected error): the log keeps every change, restore cuts the files back.
        self._checkpoints_stopped = False
        #: The LSN of a checkpoint whose files (and bookkeeping) are written but whose marker is
        #: not: the next try writes that marker and nothing else of it.
        self._marker_owed: int | None = None
        #: Checkpoints written (each covering many flushes).
        self.checkpoints = 0

    # ----------------------------------------------------------- paths

    @property
    def runtime_dir(self) -> Path:
        assert self._runtime_dir is not None, "the store is not open"
        return self._runtime_dir

    def worker_dir(self, worker_id: str) -> Path:
        return self.runtime_dir / "workers" / hex_id(worker_id)

    @property
    def log_dir(self) -> Path:
        return self.runtime_dir / wal.LOG_DIR

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
        # Restore builds a few objects per record and frees none: the cyclic collector would
        # walk them again and again (a fifth of the time), for no garbage.
        collecting = gc.isenabled()
        gc.disable()
        try:
            restored = Restorer(runtime_dir, stored_id).restore()
        finally:
            if collecting:
                gc.enable()
        self._adopt(restored)
        try:
            self._upgrade(restored)
        except OSError as error:
            raise _io_error("upgrade", error, runtime_dir) from None
        if any(change.deleted for change in self._pending):
            # A crash after a worker_deleted line was logged and before its files were removed:
            # finished now, before the Runtime starts (a checkpoint of the replayed tail).
            self._checkpoint(*self._take_pending())
        self._start_checkpointer()
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
            if inner.name == wal.LOG_DIR:
                # The log's first segment, empty: nothing was ever committed to it.
                if not inner.is_dir() or any(
                    p.name != wal.segment_name(1) or p.is_symlink() or not p.is_file() or p.stat().st_size
                    for p in inner.iterdir()
                ):
                    return None
            elif inner.name != "workers" and not inner.is_file():
                return None
        return "a runtime directory whose creation was cut short"

    async def check_writable(self) -> str | None:
        if self._failed is not None:
            return f"the last write failed: {getattr(self._failed, 'message', self._failed)}"
        if self._checkpoint_failed is not None:
            return f"the last checkpoint failed: {self._checkpoint_failed}"
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

    def _adopt(self, restored: Restored) -> None:
        """Take up the files where restore found them: the store writes on from there."""
        checkpoint = self._new_checkpoint_files()
        checkpoint.snapshots.update(restored.snapshots)
        checkpoint.created_event.update(restored.created_event)
        checkpoint.snapshot_status.update(restored.snapshot_status)
        checkpoint.observation_lines.update(restored.observation_lines)
        checkpoint.runtime_status = restored.runtime_status
        checkpoint.committed = restored.committed
        checkpoint.kept.update(restored.kept)
        checkpoint.idempotency_lines = restored.idempotency_lines
        checkpoint.lsn = restored.checkpoint_lsn
        self._log_context.requests.update(dict.fromkeys(w.worker_ref.worker_id for w in restored.state.workers))
        if restored.has_log:
            self._log = wal.LogWriter(self.log_dir, restored.segments, restored.next_lsn)
            if restored.replayed:
                # Replayed from the log: the next checkpoint writes them into the files.
                self._pending = list(restored.replayed)
                self._pending_lsn = restored.next_lsn - 1
                self._pending_bytes = restored.replayed_bytes
                self._pending_since = time.monotonic()

    def _new_checkpoint_files(self) -> CheckpointFiles:
        self._checkpoint_files = CheckpointFiles(
            self.runtime_dir, self._runtime_id or "", self._backlog, self._fsyncs, self._idempotency_ttl
        )
        return self._checkpoint_files

    def _upgrade(self, restored: Restored) -> None:
        """Bring a store written before the write-ahead log up to date: first the log's first
        segment, then the marker (a checkpoint of what restore found, at LSN 0), then
        ``runtime.json`` at the schema version that says the log exists, and only then is
        ``commits.jsonl`` removed. A crash in between leaves a store restore reads by its
        marker (once it exists), and the next open finishes the upgrade."""
        checkpoint = self._checkpoint_files
        assert checkpoint is not None
        if not restored.has_log:
            log_dir = self.log_dir
            if log_dir.exists():
                # Only an upgrade cut short before its marker makes one: it holds segments only.
                for entry in log_dir.iterdir():
                    if wal.segment_lsn(entry.name) is None:
                        raise StoreCorrupt("upgrade", str(entry), "is not runtimed's; move it out of the store root")
                shutil.rmtree(log_dir)
            files.make_dir(log_dir)
            first = log_dir / wal.segment_name(1)
            files.write_file(first, b"", sync=True)
            files.fsync_path(log_dir)
            files.fsync_path(self.runtime_dir)
            write_first_marker(self.runtime_dir, checkpoint.committed)
            self._log = wal.LogWriter(log_dir, [wal.Segment(1, first)], 1)
        if restored.runtime_schema < files.RUNTIME_SCHEMA_VERSION:
            path = self.runtime_dir / "runtime.json"
            data = runtime_snapshot(self._runtime_id or "", checkpoint.runtime_status, checkpoint.committed.event_id)
            replace_atomically(path, data)
            checkpoint.snapshots[path] = data
            log.info("upgraded the fs store at %s to keep a write-ahead log", self.runtime_dir)
        for name in (COMMIT_LOG, COMMIT_LOG + TEMP_SUFFIX):
            path = self.runtime_dir / name
            if path.exists():
                path.unlink()
                files.fsync_path(self.runtime_dir)
                log.info("removed %s: the write-ahead log replaces it", path)

    async def create(self, runtime_id: str) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._io, self._create, runtime_id)
        self._start_checkpointer()

    def _create(self, runtime_id: str) -> None:
        """Make the runtime's directory whole under a hidden name, then rename it into place:
        a first start cut short leaves either nothing or a complete directory."""
        runtimes = self.root / "runtimes"
        runtime_dir = runtimes / hex_id(runtime_id)
        building = runtimes / ("." + runtime_dir.name)
        snapshot = runtime_snapshot(runtime_id, RuntimeStatus.RUNNING, 0)
        try:
            files.make_dir(building)
            files.make_dir(building / "workers")
            files.make_dir(building / wal.LOG_DIR)
            files.write_file(building / wal.LOG_DIR / wal.segment_name(1), b"", sync=True)
            files.fsync_path(building / wal.LOG_DIR)
            replace_atomically(building / "runtime.json", snapshot)
            # The first marker: nothing checkpointed yet. A store with this runtime.json has one.
            self._runtime_dir = building
            write_first_marker(building, self._new_checkpoint_files().committed)
            files.fsync_path(building / "workers")
            os.rename(building, runtime_dir)
            files.fsync_path(runtimes)
        except OSError as error:
            raise _io_error("create runtime", error, runtime_dir) from None
        self._runtime_dir = runtime_dir
        self._runtime_id = runtime_id
        checkpoint = self._new_checkpoint_files()
        checkpoint.snapshots[runtime_dir / "runtime.json"] = snapshot
        first = runtime_dir / wal.LOG_DIR / wal.segment_name(1)
        self._log = wal.LogWriter(runtime_dir / wal.LOG_DIR, [wal.Segment(1, first)], 1)

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
        loop = self._loop = asyncio.get_running_loop()
        while self._queue:
            batch, self._queue = self._queue, []
            changes = [change for change, _ in batch]
            started = time.perf_counter()
            assert self._log is not None
            first_lsn = self._log.next_lsn  # only this loop's writes move it
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
            for lsn, (change, future) in enumerate(batch, start=first_lsn):
                if future.done():
                    continue
                if change.deleted and lsn > self._removed_through:
                    # Durable now; answered once the checkpoint has removed its files.
                    self._removal_waiters.append((lsn, future))
                else:
                    future.set_result(None)

    def _write_batch(self, changes: list[Change]) -> None:
        """Append ``changes`` to the log, one line each, with one write and one fsync: once
        that returns, they are durable (the commit). Then the checkpoint may have them."""
        log_writer = self._log
        assert log_writer is not None
        lsn = log_writer.next_lsn
        context = self._log_context
        lines = []
        created: list[str] = []
        deleted: list[str] = []
        for number, change in enumerate(changes, start=lsn):
            lines.append(wal.frame(wal.dumps(wal.encode_change(change, number, context))))
            for state in change.workers:
                if state.worker_ref.worker_id not in context.requests:
                    # Later lines of this worker leave its request out: this one has it.
                    context.requests[state.worker_ref.worker_id] = None
                    created.append(state.worker_ref.worker_id)
            for worker_id in change.deleted:
                # As replay forgets it: no later line names a deleted worker.
                if context.requests.pop(worker_id, False) is None:
                    deleted.append(worker_id)
        data = b"".join(lines)
        try:
            self._append(log_writer, data, len(changes))
        except OSError as error:
            for worker_id in deleted:
                context.requests[worker_id] = None
            for worker_id in created:
                context.requests.pop(worker_id, None)  # their lines are gone: the next must carry the request
            failure = _io_error("write", error, log_writer.active.path)
            self._undo(log_writer, failure)
            raise failure from None
        self._hand_over(changes, lsn + len(changes) - 1, len(data))

    def _append(self, log_writer: wal.LogWriter, data: bytes, lines: int) -> None:
        log_writer.append(data, lines)

    def _undo(self, log_writer: wal.LogWriter, failure: StoreError) -> None:
        """Cut the log back to its length before the failed flush; poison if that fails too."""
        try:
            log_writer.undo()
        except OSError as error:
            log.error("could not undo a failed flush (%s): %s", failure.message, error)
            raise StatePoisoned(
                f"a store write failed ({failure.message}) and undoing it failed too ({error}); restart the daemon"
            ) from None

    # ------------------------------------------------------- checkpoint

    def _hand_over(self, changes: list[Change], lsn: int, size: int) -> None:
        """Give the checkpoint thread changes the log has made durable (up to ``lsn``)."""
        with self._pending_changed:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.extend(changes)
            self._pending_lsn = lsn
            self._pending_bytes += size
            deletes = any(change.deleted for change in changes)
            self._pending_deletes = self._pending_deletes or deletes
            if deletes or self._pending_bytes >= CHECKPOINT_BYTES or len(self._pending) == len(changes):
                self._pending_changed.notify()  # due now, or a timer to start

    def _start_checkpointer(self) -> None:
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="runtimed-checkpoint", daemon=True)
        self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        """The checkpoint thread: write what is pending once it is due, and once more at close."""
        retry_at = 0.0
        while True:
            with self._pending_changed:
                while True:
                    now = time.monotonic()
                    if self._closing:
                        break
                    if self._marker_owed is not None and now >= retry_at:
                        break
                    if self._pending and now >= retry_at:
                        due = self._pending_since + CHECKPOINT_SECONDS
                        if self._pending_deletes or self._pending_bytes >= CHECKPOINT_BYTES or now >= due:
                            break
                        self._pending_changed.wait(due - now)
                    else:
                        self._pending_changed.wait(max(retry_at - now, 0.0) or None)
                closing = self._closing
                changes, lsn, size = self._take_pending()
            if (changes or self._marker_owed is not None) and not self._checkpoint(changes, lsn, size):
                retry_at = time.monotonic() + CHECKPOINT_RETRY_SECONDS
                if closing:
                    return
                continue
            if closing:
                return

    def _take_pending(self) -> tuple[list[Change], int, int]:
        self._pending_deletes = False
        changes, self._pending = self._pending, []
        size, self._pending_bytes = self._pending_bytes, 0
        return changes, self._pending_lsn, size

    def _checkpoint(self, changes: list[Change], lsn: int, size: int) -> bool:
        """Write one checkpoint (first a marker an earlier one owes); on a disk's failure say
        so: ``False`` — changes no file holds yet go back in front (the log keeps them), a
        marker that failed after its files is owed. An unexpected error stops checkpoints.
        Then the deletions it covers are answered, whatever happened: they are durable in the
        log, and a checkpoint that failed leaves their directories to the next one (or to the
        next start)."""
        try:
            return self._write_checkpoint(changes, lsn, size)
        except Exception as error:
            # Not a disk's failure (a bug, a damaged file): the thread must go on, and nothing
            # tells where the files were left, so no more checkpoints until a restart.
            log.exception(
                "a checkpoint failed unexpectedly; no more checkpoints until a restart: the log keeps every "
                "change, and restore cuts the files back"
            )
            self._stop_checkpoints(f"{type(error).__name__}: {error}")
            return True
        finally:
            if any(change.deleted for change in changes):
                self._deletions_done(lsn)

    def _write_checkpoint(self, changes: list[Change], lsn: int, size: int) -> bool:
        """The files, then the marker. Once the files are written the bookkeeping has moved on
        with them, so a marker that fails is owed: the next try writes the marker alone (the
        changes are never handed back, which would write their records twice)."""
        checkpoint = self._checkpoint_files
        assert checkpoint is not None
        if self._checkpoints_stopped:
            return True  # no more checkpoints until a restart; the log has everything
        owed = self._marker_owed
        if owed is not None:
            try:
                self._write_marker(checkpoint, owed)
            except OSError as error:
                self._checkpoint_io_failed(error, "writing its marker (still owed)")
                self._hand_back(changes, lsn, size)  # not written: the next try writes them
                return False
            self._marker_owed = None
            self._after_marker(checkpoint, owed)
        if not changes:
            self._checkpoint_failed = None
            return True
        try:
            checkpoint.write_files(changes)
        except CheckpointBroken as error:
            self._stop_checkpoints(str(error))
            log.error(
                "a checkpoint failed and its files could not be put back (%s); no more checkpoints until a "
                "restart: the log keeps every change, and restore cuts the files back",
                error,
            )
            return True
        except OSError as error:
            self._checkpoint_io_failed(error, "writing its files (put back as they were)")
            self._hand_back(changes, lsn, size)
            return False
        # The files hold the changes and the bookkeeping says so: only the marker is left.
        self._marker_owed = lsn
        try:
            self._write_marker(checkpoint, lsn)
        except OSError as error:
            self._checkpoint_io_failed(error, "writing its marker (its files are written; the marker is retried)")
            return False
        self._marker_owed = None
        self._after_marker(checkpoint, lsn)
        return True

    def _stop_checkpoints(self, problem: str) -> None:
        self._checkpoints_stopped = True
        self._marker_owed = None  # nothing more is written: the thread must not wait on it
        self._checkpoint_failed = f"{problem} (no more checkpoints until a restart; the log keeps every change)"

    def _checkpoint_io_failed(self, error: OSError, step: str) -> None:
        self._checkpoint_failed = str(_io_error("checkpoint", error, self.runtime_dir))
        log.warning("a checkpoint failed %s; the log keeps every change, will retry: %s", step, self._checkpoint_failed)

    def _hand_back(self, changes: list[Change], lsn: int, size: int) -> None:
        """Put changes no file holds back in front of those pending (the next try writes them)."""
        with self._pending_changed:
            self._pending[:0] = changes
            self._pending_bytes += size
            self._pending_lsn = max(self._pending_lsn, lsn)

    def _after_marker(self, checkpoint: CheckpointFiles, lsn: int) -> None:
        """What follows a durable marker at ``lsn``: the deleted workers' directories, the
        compactions, the covered segments. Each step that fails is logged and retried by the
        next checkpoint; none of them is undone or written twice."""
        self._checkpoint_failed = None
        self.checkpoints += 1
        self._remove_deleted(checkpoint)
        checkpoint.compact()
        checkpoint.compact_idempotency()
        self._remove_covered(lsn)

    def _remove_deleted(self, checkpoint: CheckpointFiles) -> None:
        checkpoint.remove_deleted()

    def _deletions_done(self, lsn: int) -> None:
        """From the checkpoint thread: answer the deletions up to ``lsn`` (on the loop)."""
        loop = self._loop
        if loop is None:
            return  # at open: nobody waits
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to answer
            loop.call_soon_threadsafe(self._answer_deletions, lsn)

    def _answer_deletions(self, lsn: int) -> None:
        self._removed_through = max(self._removed_through, lsn)
        waiting = []
        for waiter_lsn, future in self._removal_waiters:
            if waiter_lsn <= lsn:
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((waiter_lsn, future))
        self._removal_waiters = waiting

    def _write_marker(self, checkpoint: CheckpointFiles, lsn: int) -> None:
        checkpoint.write_marker(lsn)

    def _remove_covered(self, lsn: int) -> None:
        """Remove the log segments the checkpoint at ``lsn`` wholly covers, oldest first."""
        log_writer = self._log
        assert log_writer is not None
        try:
            removed = False
            for segment in log_writer.covered(lsn):
                self._remove_segment(log_writer, segment)
                removed = True
            if removed:
                files.fsync_path(log_writer.directory)
        except OSError:
            log.warning("could not remove a log segment the checkpoint covers; will retry", exc_info=True)

    def _remove_segment(self, log_writer: wal.LogWriter, segment: wal.Segment) -> None:
        log_writer.remove(segment)

    # ------------------------------------------------------------ close

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._io, self._close)
        for _, future in self._removal_waiters:
            if not future.done():
                future.set_result(None)  # durable in the log: the next start removes the files
        self._removal_waiters = []
        self._io.shutdown(wait=True)
        self._fsyncs.shutdown(wait=True)
        self._unlock()

    def _close(self) -> None:
        """The last checkpoint (everything the log holds), then an empty segment past it, so
        the next start replays nothing."""
        with self._pending_changed:
            self._closing = True
            self._pending_changed.notify()
        if self._checkpointer is not None:
            self._checkpointer.join()
        checkpoint, log_writer = self._checkpoint_files, self._log
        if checkpoint is not None and log_writer is not None and not self._pending and self._failed is None:
            try:
                if checkpoint.lsn == log_writer.next_lsn - 1:
                    log_writer.rotate()
                    self._remove_covered(checkpoint.lsn)
            except OSError:
                log.warning("could not start a new log segment at close", exc_info=True)
        if log_writer is not None:
            log_writer.close()
        if checkpoint is not None:
            checkpoint.close()
