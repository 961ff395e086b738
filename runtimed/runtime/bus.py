"""The observation bus: worker events with one runtime-wide sequence, a bounded backlog per
worker for resuming, and bounded subscriptions that report overrun instead of blocking.

Publishing never waits on a subscriber: each subscription has a fixed-size queue, and one that
is full is marked overrun and stops receiving; its reader learns it on the next ``get`` and can
resume from a cursor. The bus knows nothing of WebSockets or JSON.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ..domain.errors import CursorExpired, CursorUnknown, ObservationError, Overrun
from ..domain.identity import WorkerRef
from ..domain.observation import Observation, encode_cursor


class Subscription:
    """A bounded queue of one worker's observations, fed by the bus without ever blocking."""

    def __init__(self, worker_id: str, capacity: int, on_overrun: Callable[[], None] | None = None) -> None:
        self.worker_id = worker_id
        self._capacity = capacity
        self._on_overrun = on_overrun
        self._queue: deque[Observation] = deque()
        self._wakeup = asyncio.Event()
        self._overrun = False
        self._closed = False
        self._ended: ObservationError | None = None  # why the bus ended it, to raise from ``get``
        self._overrun_callbacks: list[Callable[[], None]] = []

    def on_overrun(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (synchronously, from the publisher) when this subscription overruns:
        a reader blocked elsewhere may want to know before its next ``get``."""
        self._overrun_callbacks.append(callback)

    def _offer(self, observation: Observation) -> None:
        if self._overrun or self._closed:
            return
        if len(self._queue) >= self._capacity:
            # Dropping silently would be a gap; say so instead, and stop feeding this reader.
            self._overrun = True
            self._queue.clear()
            if self._on_overrun is not None:
                self._on_overrun()
            for callback in self._overrun_callbacks:
                callback()
        else:
            self._queue.append(observation)
        self._wakeup.set()

    def close(self) -> None:
        """End the subscription: ``get`` returns ``None`` once the queue is drained."""
        self._closed = True
        self._wakeup.set()

    def end(self, error: ObservationError) -> None:
        """End the subscription with ``error``, raised by ``get`` once the queue is drained."""
        self._ended = error
        self.close()

    async def get(self) -> Observation | None:
        """The next observation; ``None`` once closed; raises ``Overrun`` if it fell behind."""
        while True:
            if self._overrun:
                raise Overrun()
            if self._queue:
                return self._queue.popleft()
            if self._ended is not None:
                raise self._ended
            if self._closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()


class ObservationBus:
    """Sequences, retains and fans out worker observations."""

    def __init__(self, backlog: int, subscriber_queue: int) -> None:
        self._backlog_size = backlog
        self._subscriber_queue = subscriber_queue
        self._sequence = 0  # the newest sequence handed out
        self._backlogs: dict[str, deque[Observation]] = {}
        self._latest: dict[str, int] = {}  # per worker: its newest sequence, retained or not
        self._trimmed: dict[str, int] = {}  # per worker: the newest sequence no longer retained
        self._subscribers: dict[str, set[Subscription]] = {}
        #: Observations published, and subscriptions that fell behind, since start.
        self.published = 0
        self.overruns = 0

    @property
    def sequence(self) -> int:
        return self._sequence

    def reserve(self, ref: WorkerRef, event: str, data: Mapping[str, Any] | None = None) -> Observation:
        """Hand out the next sequence for an observation that will be published later."""
        self._sequence += 1
        return Observation(self._sequence, ref, event, data)

    def unreserve(self, sequence: int) -> None:
        """Take back sequences from ``sequence`` on, after the change that reserved them failed."""
        self._sequence = min(self._sequence, sequence - 1)

    def restore(
        self, sequence: int, observations: Iterable[Observation], trimmed: dict[str, int] | None = None
    ) -> None:
        """Load what a store kept: the newest sequence, the retained observations in order,
        and per worker the newest sequence that is no longer kept."""
        self._sequence = sequence
        self._trimmed.update(trimmed or {})
        for observation in observations:
            self._retain(observation)

    def publish(self, observation: Observation) -> None:
        """Retain and fan out one observation (reserved earlier, now durable)."""
        self._retain(observation)
        self.published += 1
        for subscription in self._subscribers.get(observation.worker_ref.worker_id, ()):
            subscription._offer(observation)

    def _retain(self, observation: Observation) -> None:
        worker_id = observation.worker_ref.worker_id
        backlog = self._backlogs.get(worker_id)
        if backlog is None:
            backlog = self._backlogs[worker_id] = deque()
        if len(backlog) >= self._backlog_size:
            self._trimmed[worker_id] = backlog.popleft().sequence
        backlog.append(observation)
        self._latest[worker_id] = observation.sequence

    def cursor_now(self, worker_id: str) -> int:
        """The worker's newest observation sequence (0 if it has none)."""
        return self._latest.get(worker_id, 0)

    def resume_point(self, worker_id: str, after: int = 0) -> int:
        """Where a reader that has seen up to ``after`` should resume to miss nothing retained:
        ``after`` itself when nothing after it was trimmed, else just before the oldest retained."""
        backlog = self._backlogs.get(worker_id)
        oldest = backlog[0].sequence - 1 if backlog else self.cursor_now(worker_id)
        return max(after, oldest)

    def replay(self, worker_id: str, after: int) -> list[Observation]:
        """The retained observations of a worker with sequence > ``after``, in order."""
        if after > self._sequence:
            raise CursorUnknown(
                f"worker observation cursor {encode_cursor(after)} is beyond the newest sequence "
                f"{encode_cursor(self._sequence)} of this runtime"
            )
        if after < self._trimmed.get(worker_id, 0):
            raise CursorExpired(
                f"worker observation cursor {encode_cursor(after)} is older than the retained "
                f"backlog of worker {worker_id}",
                resume_from=self.resume_point(worker_id),
            )
        backlog = self._backlogs.get(worker_id, ())
        # Backlogs are short (bounded) and ordered; walk back from the newest.
        newer: list[Observation] = []
        for observation in reversed(backlog):
            if observation.sequence <= after:
                break
            newer.append(observation)
        newer.reverse()
        return newer

    def forget(self, worker_id: str, error: ObservationError) -> None:
        """The worker is gone (deleted): drop what is retained of it, and end its subscriptions
        with ``error`` once they have taken what was published before."""
        self._backlogs.pop(worker_id, None)
        self._latest.pop(worker_id, None)
        self._trimmed.pop(worker_id, None)
        for subscription in self._subscribers.pop(worker_id, ()):
            subscription.end(error)

    @contextmanager
    def subscribe(self, worker_id: str) -> Iterator[Subscription]:
        """Receive every observation of ``worker_id`` published from now until the block ends."""
        subscription = Subscription(worker_id, self._subscriber_queue, self._count_overrun)
        self._subscribers.setdefault(worker_id, set()).add(subscription)
        try:
            yield subscription
        finally:
            subscription.close()
            subscribers = self._subscribers.get(worker_id)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[worker_id]

    def _count_overrun(self) -> None:
        self.overruns += 1

    def close(self) -> None:
        """End every subscription (their readers see ``None``): the runtime is going away."""
        for subscribers in self._subscribers.values():
            for subscription in subscribers:
                subscription.close()

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())
