"""The fs store's files: hex-encoded names, the framing of records (JSON lines, versioned
snapshot documents), durable appends and atomic replacement.

Nothing here knows what a record means (that is ``runtimed.store.codec``) or when to write it
(the store's flush and restore).
"""

from __future__ import annotations

import errno
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import orjson

SCHEMA_VERSION = 1  # of snapshot documents (runtime.json, worker.json)
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


def parse_line(raw: bytes) -> Any:
    """One log line. orjson first (several times faster: restore reads every line), then the
    standard library for what orjson refuses but the store writes on purpose: the ``\\udXXX``
    escape of a lone surrogate a client sent."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def jsonl_line(record: dict[str, Any]) -> bytes:
    # ensure_ascii keeps any lone surrogate a client sent representable on disk.
    return (json.dumps(record, separators=(",", ":")) + "\n").encode("ascii")


def snapshot_document(record: dict[str, Any]) -> bytes:
    """A snapshot file's content: ``record`` led by the ``schema_version`` restore checks."""
    return json.dumps({"schema_version": SCHEMA_VERSION, **record}, indent=1).encode("ascii")


class OpenFiles:
    """Append handles: an LRU of open descriptors."""

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


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
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
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    fsync_path(path.parent)


def size_of(path: Path) -> int:
    """The size of ``path``, 0 when it does not exist."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as file:
        file.truncate(size)
        file.flush()
        os.fsync(file.fileno())
