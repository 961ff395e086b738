"""The Runtime's table of ``Idempotency-Key`` answers (contract §11).

Keys belong to the runtime. A request with a key first ``claim``s it: it gets the kept answer
back (a replay), ``IdempotencyKeyReused`` (the key was kept for another request), or the claim,
which it holds while it is carried out. A request that finds the key claimed waits for the
holder to release it, then looks again: a replay, a 409, or — when the first request's answer
was not kept (it failed) — a claim of its own.

The answer itself is rendered by whoever answers the request (the web layer: status, body,
``Warning`` headers) through the claim's ``render``, and the Runtime puts it into the very
``Change`` the request makes, so the store makes both durable as one unit. The claim is released
once that change has settled, so a waiting duplicate never sees an answer a failed write can
still take back.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from ..domain.errors import IdempotencyKeyReused
from ..domain.idempotency import KeptAnswer

#: Turns the result of a Runtime call into the answer kept for it: status, body, warnings.
Render = Callable[[Any], tuple[int, bytes, tuple[str, ...]]]


class IdempotencyClaim:
    """The right to carry out the first request with a key; ``IdempotencyTable.release`` it
    once the request has its answer (or failed)."""

    __slots__ = ("_released", "fingerprint", "kept", "key", "render")

    def __init__(self, key: str, fingerprint: str, render: Render) -> None:
        self.key = key
        self.fingerprint = fingerprint
        self.render = render
        #: The answer kept with the request's change, once the Runtime has rendered it.
        self.kept: KeptAnswer | None = None
        self._released: asyncio.Event | None = None  # made only when a duplicate waits

    async def wait_released(self) -> None:
        if self._released is None:
            self._released = asyncio.Event()
        await self._released.wait()


class IdempotencyTable:
    """Kept answers by key (each until ``ttl`` seconds after it was kept, by ``clock``, the
    wall clock), and the keys claimed by requests being carried out."""

    def __init__(self, ttl: float, clock: Callable[[], float] | None = None) -> None:
        self._ttl = ttl
        self._clock = clock if clock is not None else _wall_clock
        self._kept: dict[str, KeptAnswer] = {}
        # Every answer kept, oldest first, for pruning; one replaced or undone since stays here
        # until it expires (it is no longer the answer ``_kept`` holds for its key).
        self._order: deque[KeptAnswer] = deque()
        self._claims: dict[str, IdempotencyClaim] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def restore(self, answers: Iterable[KeptAnswer]) -> None:
        """Load what a store kept, oldest first; expired answers are dropped."""
        for answer in answers:
            self._kept[answer.key] = answer
            self._order.append(answer)
        self._prune()

    def get(self, key: str) -> KeptAnswer | None:
        """The unexpired answer kept for ``key``, if any."""
        answer = self._kept.get(key)
        if answer is not None and self._clock() - answer.kept_at >= self._ttl:
            return None
        return answer

    def answers(self) -> list[KeptAnswer]:
        """Every unexpired kept answer, oldest first (what a store's checkpoint holds)."""
        self._prune()
        return list(self._kept.values())

    async def claim(self, key: str, fingerprint: str, render: Render) -> KeptAnswer | IdempotencyClaim:
        """The kept answer to replay, or the claim to carry the request out under; raises
        ``IdempotencyKeyReused`` when the key was kept for another request."""
        while (holder := self._claims.get(key)) is not None:
            await holder.wait_released()
        kept = self.get(key)
        if kept is not None:
            if kept.fingerprint != fingerprint:
                raise IdempotencyKeyReused()
            return kept
        claim = self._claims[key] = IdempotencyClaim(key, fingerprint, render)
        return claim

    def release(self, claim: IdempotencyClaim) -> None:
        """The claimed request is over (its change settled, or it failed): waiters look again."""
        if self._claims.get(claim.key) is claim:
            del self._claims[claim.key]
        if claim._released is not None:
            claim._released.set()

    def answer(self, claim: IdempotencyClaim | None, result: Any) -> tuple[KeptAnswer, ...]:
        """The answer to keep for ``result`` under ``claim`` (none without a claim)."""
        if claim is None:
            return ()
        status, body, warnings = claim.render(result)
        claim.kept = KeptAnswer(claim.key, claim.fingerprint, status, body, warnings, self._clock())
        return (claim.kept,)

    def current(self, answers: tuple[KeptAnswer, ...]) -> tuple[tuple[str, KeptAnswer | None], ...]:
        """What keeping ``answers`` would replace: the undo record of an ``apply``."""
        return tuple((answer.key, self._kept.get(answer.key)) for answer in answers)

    def apply(self, answers: tuple[KeptAnswer, ...]) -> None:
        """Keep ``answers`` (each replaces an expired answer of its key, if any)."""
        for answer in answers:
            self._kept[answer.key] = answer
            self._order.append(answer)
        self._prune()

    def revert(self, previous: tuple[tuple[str, KeptAnswer | None], ...]) -> None:
        """Undo an ``apply`` whose change failed, with what ``current`` said before it."""
        for key, answer in reversed(previous):
            if answer is None:
                self._kept.pop(key, None)
            else:
                self._kept[key] = answer

    def _prune(self) -> None:
        """Drop expired answers, oldest first: each is looked at once, so keeping an answer
        costs O(1), amortised. (A wall clock set back can leave an expired answer behind a newer
        one for a while; ``get`` never answers with it.)"""
        order = self._order
        horizon = self._clock() - self._ttl
        while order and order[0].kept_at <= horizon:
            answer = order.popleft()
            if self._kept.get(answer.key) is answer:
                del self._kept[answer.key]


def _wall_clock() -> float:
    # Looked up at each call, so that a test can set the clock (``time.time``) forward.
    return time.time()
