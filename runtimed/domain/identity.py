"""Identity of runtimes and workers (contract §1).

A ``WorkerRef`` is the authority for every worker operation: a worker id means nothing
without the runtime it belongs to.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from .errors import InvalidWorkerId


def _require_non_blank(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must not be empty")
    return value


def generate_runtime_id(backend: str) -> str:
    """A fresh ``runtime-<backend>-<16 hex>`` id (``mem`` or ``fs``)."""
    return f"runtime-{backend}-{secrets.token_hex(8)}"


def format_worker_id(sequence: int) -> str:
    """The id of the ``sequence``-th worker of a runtime: ``worker-00000001``."""
    return f"worker-{sequence:08x}"


@dataclass(frozen=True, slots=True)
class WorkerRef:
    runtime_id: str
    worker_id: str

    def __post_init__(self) -> None:
        _require_non_blank(self.runtime_id, "runtime_id")
        if not isinstance(self.worker_id, str) or not self.worker_id.strip():
            raise InvalidWorkerId()


def worker_sequence(worker_id: str) -> int | None:
    """The sequence ``format_worker_id`` made ``worker_id`` from, or ``None`` for an id it does
    not make. Worker ids order by creation as their sequences do (not as strings: past
    ``worker-ffffffff`` the hex part grows a digit)."""
    if not worker_id.startswith("worker-") or len(worker_id) < 15:
        return None
    digits = worker_id[7:]
    if not all(c in "0123456789abcdef" for c in digits) or (len(digits) > 8 and digits[0] == "0"):
        return None
    return int(digits, 16)
