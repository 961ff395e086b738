"""Idempotency keys (contract §11): the answers the Runtime keeps for retried requests.

A client sends an ``Idempotency-Key`` with a mutation; the first 2xx answer to it is kept with
the change that request made, and a retry with the same key and the same request gets that
answer again instead of being carried out twice. What an answer is (an HTTP status, a body,
``Warning`` headers) is the web layer's business: here it is an opaque record, so the Runtime and
the stores keep and restore it without knowing HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The length of a key, in characters; each one visible ASCII (``!`` to ``~``).
MAX_IDEMPOTENCY_KEY_LENGTH = 255


def is_idempotency_key(value: str) -> bool:
    """Whether ``value`` is a valid key: 1 to 255 visible ASCII characters."""
    return 0 < len(value) <= MAX_IDEMPOTENCY_KEY_LENGTH and value.isascii() and value.isprintable() and " " not in value


@dataclass(frozen=True, slots=True)
class KeptAnswer:
    """The first 2xx answer to a request that carried an ``Idempotency-Key``.

    ``fingerprint`` identifies the request (its method, path and body as a JSON value), so a
    retry can be told from another request that reuses the key. ``kept_at`` is the wall-clock
    time (seconds since the epoch) of the answer: the key expires ``idempotency_key_ttl_seconds``
    after it, across restarts too.
    """

    key: str
    fingerprint: str
    status: int
    body: bytes
    #: The answer's ``Warning`` header values, in order.
    warnings: tuple[str, ...]
    kept_at: float
