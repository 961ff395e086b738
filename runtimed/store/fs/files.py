"""The fs store's files: hex-encoded names, the framing of records (JSON lines, versioned
snapshot documents), durable appends, atomic replacement, private modes, the root's lock and
the write probe.

Nothing here knows what a record means (that is ``runtimed.store.codec``) or when to write it
(the store's flush and restore). An ``OSError`` raised here names the file it concerns
(``filename``), even where the failing call was given only a descriptor.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import orjson

WORKER_SCHEMA_VERSION = 1  # of worker.json
#: Of runtime.json: 3 since the store keeps a write-ahead log (``log/``, ``checkpoint.json``),
#: 2 when it kept a commit log (``commits.jsonl``), 1 before. Versions 1 and 2 are read and
#: upgraded at open; a runtimed that knows only an older version refuses a newer one, so it
#: never writes past the log it does not know.
RUNTIME_SCHEMA_VERSION = 3
RUNTIME_SCHEMA_VERSIONS = (1, 2, 3)
OPEN_FILES = 128  # append handles kept open at once (an LRU: a runtime may have many workers)
#: Modes of everything the store makes, whatever the umask: only the daemon's user may look.
FILE_MODE = 0o600
DIR_MODE = 0o700
#: The lock on the root (``flock``), held for the daemon's life; it holds the holder's pid.
LOCK_FILE = "runtimed.lock"
#: The write probe's name, and how much it writes: enough to need a free block, unlike an empty file.
PROBE_FILE = ".write-probe"
PROBE_BYTES = 8192
#: Suffix of the temp file ``replace_atomically`` writes beside its target.
TEMP_SUFFIX = ".tmp"


def hex_id(value: str) -> str:
    return "id-" + value.encode("utf-8").hex()


def unhex_id(name: str) -> str | None:
    if not name.startswith("id-"):
        return None
    try:
        return bytes.fromhex(name[3:]).decode("utf-8")
    except ValueError:
        return None


def parse_line(raw: bytes) -> Any:
    """One log line. orjson first (several times faster: restore reads every line), then the
    standard library for what orjson refuses but the store writes on purpose: the ``\\udXXX``
    escape of a lone surrogate a client sent."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def jsonl_line(record: dict[str, Any]) -> bytes:
    """One line of a ``.jsonl`` file: compact JSON in UTF-8 by orjson (the checkpoint writes
    every record), or escaped to ASCII by the standard library for what orjson refuses: a lone
    surrogate a client sent, kept representable on disk as its ``\\udXXX`` escape."""
    try:
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        return (json.dumps(record, separators=(",", ":")) + "\n").encode("ascii")


def snapshot_document(record: dict[str, Any], version: int) -> bytes:
    """A snapshot file's content: ``record`` led by the ``schema_version`` restore checks."""
    return json.dumps({"schema_version": version, **record}, indent=1).encode("ascii")


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Give an ``OSError`` raised inside the file it concerns, when the call that failed knew
    only a descriptor: messages name the file, not just an errno."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            error.filename = str(path)
        raise


class OpenFiles:
    """Append handles: an LRU of open descriptors."""

    def __init__(self) -> None:
        self._handles: OrderedDict[Path, int] = OrderedDict()

    def append_fd(self, path: Path) -> int:
        fd = self._handles.get(path)
        if fd is not None:
            self._handles.move_to_end(path)
            return fd
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
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


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fsync_fd(fd, path)
    finally:
        os.close(fd)


def fsync_fd(fd: int, path: Path) -> None:
    with naming(path):
        os.fsync(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written: a short write (a full disk) must not leave a
    torn line behind an acknowledged request."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def write_file(path: Path, data: bytes, *, sync: bool = False) -> None:
    """Create or truncate ``path`` (mode ``FILE_MODE``) and write ``data`` to it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        with naming(path):
            write_all(fd, data)
            if sync:
                os.fsync(fd)
    finally:
        os.close(fd)


def append_durably(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (created with mode ``FILE_MODE``) and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        with naming(path):
            write_all(fd, data)
            os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new, never half:
    temp file, fsync, rename, fsync of the directory."""
    temp = path.with_name(path.name + TEMP_SUFFIX)
    write_file(temp, data, sync=True)
    os.replace(temp, path)
    fsync_path(path.parent)


def size_of(path: Path) -> int:
    """The size of ``path``, 0 when it does not exist."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def truncate(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        with naming(path):
            os.ftruncate(fd, size)
            os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------- directories and modes


def make_dir(path: Path) -> None:
    """``mkdir`` with mode ``DIR_MODE``, set again afterwards so that no umask can widen it."""
    os.mkdir(path, DIR_MODE)
    os.chmod(path, DIR_MODE)


def make_dirs(path: Path) -> None:
    """``mkdir -p`` whose every new directory gets ``DIR_MODE`` (``Path.mkdir(parents=True)``
    gives the parents the umask's default instead). Existing directories are left as they are."""
    missing: list[Path] = []
    current = path
    while not os.path.lexists(current) and current != current.parent:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            make_dir(directory)
        except FileExistsError:
            if not directory.is_dir():
                raise


def tighten(root: Path) -> list[tuple[Path, OSError]]:
    """Give ``root`` and every directory and regular file under it ``DIR_MODE`` or ``FILE_MODE``
    (symbolic links are neither followed nor changed); returns what could not be changed.

    It walks the whole root at every start (tens of thousands of entries for a large runtime),
    so it works on strings and ``scandir`` entries, never ``Path`` objects."""
    failed: list[tuple[Path, OSError]] = []

    def set_mode(path: str, mode: int) -> None:
        wanted = DIR_MODE if stat.S_ISDIR(mode) else FILE_MODE if stat.S_ISREG(mode) else None
        if wanted is not None and stat.S_IMODE(mode) != wanted:
            try:
                os.chmod(path, wanted)
            except FileNotFoundError:
                pass
            except OSError as error:
                failed.append((Path(path), error))

    try:
        set_mode(str(root), os.lstat(root).st_mode)
    except FileNotFoundError:
        return failed
    except OSError as error:
        return [(root, error)]
    pending = [str(root)]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    try:
                        mode = entry.stat(follow_symlinks=False).st_mode
                    except FileNotFoundError:
                        continue
                    except OSError as error:
                        failed.append((Path(entry.path), error))
                        continue
                    set_mode(entry.path, mode)
                    if stat.S_ISDIR(mode):
                        pending.append(entry.path)
        except FileNotFoundError:
            continue
        except OSError as error:
            failed.append((Path(directory), error))
    return failed


def read_bytes(path: Path) -> bytes:
    """The whole file ``path``: ``Path.read_bytes`` without the buffered reader (restore reads
    every file of the runtime)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        chunk = os.read(fd, size) if size else b""
        if len(chunk) == size and size:
            return chunk  # the common case: one read (the lock keeps every writer out)
        chunks = [chunk]
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


# ------------------------------------------------------------ lock and probe


def lock(path: Path) -> int:
    """Take the exclusive ``flock`` of ``path`` (created with ``FILE_MODE``) and write this
    process's pid into it; returns the descriptor, which holds the lock until it is closed (or
    the process ends: the kernel releases it, so a lock file left by a killed daemon is no
    obstacle). Raises ``BlockingIOError`` when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        with naming(path):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Only once the lock is ours: truncating before would erase the holder's pid.
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_holder(path: Path) -> str:
    """The pid written in the lock file ``path``, or ``"unknown"``."""
    try:
        text = path.read_text("ascii", errors="replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def probe(path: Path) -> None:
    """Write ``PROBE_BYTES`` to ``path``, fsync them and remove the file: a full disk refuses
    this where it would accept an empty file."""
    try:
        write_file(path, b"\0" * PROBE_BYTES, sync=True)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(path)
