"""Following a worker's observation WebSocket (contract §7) for as long as the user wants.

``Follower.frames()`` yields every frame the daemon sends and keeps the cursor of the last event,
so that a dropped connection, a daemon restart or ``runtime.upstream_closed`` is followed by a
reconnection with that cursor: the daemon then sends exactly the events after it, none missed and
none twice. It retries for up to ``retry_seconds`` after a drop. ``runtime.cursor_expired`` (the
client fell behind) and a too-old ``runtime.cursor_unknown_or_expired`` carry ``resume_from``: the
follower continues from there and reports the gap. The worker's deletion ends the frames
normally; any other diagnostic, or giving up, raises ``ObservationEnded``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from marshmallow import ValidationError

from ..web.schemas import DiagnosticFrameSchema, EventFrameSchema
from .api import Api
from .connection import ApiError, BadAnswer, ClientFailure, Unreachable

#: After a drop: how long to keep trying, and the waits between attempts (doubling up to the last).
RETRY_SECONDS = 60.0
FIRST_RETRY_DELAY = 0.1
MAX_RETRY_DELAY = 2.0

#: Diagnostics after which the follower reconnects with its cursor.
RECONNECT = frozenset({"runtime.upstream_closed"})
#: Diagnostics that carry ``resume_from``: the events up to it are gone from the stream.
EXPIRED = frozenset({"runtime.cursor_expired", "runtime.cursor_unknown_or_expired"})
#: The diagnostic that ends a session because its worker was deleted (§11).
DELETED = "runtime.worker_deleted"

_event_frame = EventFrameSchema()
_diagnostic_frame = DiagnosticFrameSchema()


class ObservationEnded(ClientFailure):
    """The stream ended for good: a diagnostic the follower cannot recover from, or no daemon
    for ``retry_seconds``."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame as the daemon sent it (``text``) and parsed (``data``)."""

    text: str
    data: dict[str, Any]
    #: The snapshot that starts a session after a reconnection: it repeats what the client has.
    repeated_snapshot: bool = False

    @property
    def kind(self) -> str:
        return str(self.data["kind"])

    @property
    def event(self) -> str:
        return str(self.data["envelope"]["payload"]["event"])

    @property
    def event_data(self) -> dict[str, Any]:
        data = self.data["envelope"]["payload"].get("data")
        return data if isinstance(data, dict) else {}

    @property
    def cursor(self) -> str:
        return str(self.data["envelope"]["cursor"])

    @property
    def diagnostic(self) -> dict[str, Any]:
        diagnostic: dict[str, Any] = self.data["diagnostic"]
        return diagnostic


def parse_frame(text: str) -> Frame:
    """A frame, checked with the server's frame schemas; ``BadAnswer`` otherwise."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        schema = _event_frame if data.get("kind") == "event" else _diagnostic_frame
        schema.load(data)
    except (ValueError, ValidationError) as error:
        raise BadAnswer(f"the observation WebSocket sent a frame that is not the contract's: {error}") from None
    return Frame(text, data)


class Follower:
    """Follows one worker's observation WebSocket across drops and restarts."""

    def __init__(
        self,
        api: Api,
        worker_id: str,
        cursor: str | None = None,
        notice: Callable[[str], None] = lambda _: None,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self.api = api
        self.worker_id = worker_id
        #: The cursor of the last event received: everything up to it has been seen.
        self.cursor = cursor
        self.notice = notice
        self.retry_seconds = retry_seconds
        self.sessions = 0
        #: Set when the frames ended because the worker was deleted.
        self.deleted = False
        #: The runtime of the worker, from the first snapshot: a daemon that comes back serving
        #: another runtime (a memory store restarted) has other workers under the same ids.
        self.runtime_id: str | None = None

    async def frames(self) -> AsyncIterator[Frame]:
        lost_since: float | None = None  # when the connection was lost, until one is made again
        delay = FIRST_RETRY_DELAY
        told = False  # whether the user heard of the current outage
        while True:
            try:
                async with self.api.observe(self.worker_id, self.cursor) as ws:
                    if lost_since is not None:
                        self.notice(f"reconnected; continuing after {self.cursor}")
                    lost_since, delay, told = None, FIRST_RETRY_DELAY, False
                    self.sessions += 1
                    first_session = self.sessions == 1
                    async for message in ws:
                        if message.type is not aiohttp.WSMsgType.TEXT:
                            continue
                        frame = parse_frame(message.data)
                        if frame.kind == "event":
                            if frame.event == "snapshot":
                                self._check_runtime(frame)
                                if self.cursor is None:
                                    self.cursor = frame.cursor
                                if not first_session:
                                    frame = Frame(frame.text, frame.data, repeated_snapshot=True)
                            else:
                                self.cursor = frame.cursor
                            yield frame
                            continue
                        yield frame
                        if self._after_diagnostic(frame.diagnostic):
                            return
                        break  # the daemon closes the socket after any diagnostic
                    else:
                        self.notice(f"the connection to {self.api.connection.where} was lost; reconnecting")
                lost_since = time.monotonic()
            except (Unreachable, aiohttp.ClientError, TimeoutError) as error:
                if self.sessions == 0:
                    # No daemon to begin with: that is the answer, not something to wait out.
                    raise error if isinstance(error, Unreachable) else Unreachable(_reason(error)) from None
                if lost_since is None:
                    lost_since = time.monotonic()
                if time.monotonic() - lost_since > self.retry_seconds:
                    raise ObservationEnded(
                        f"gave up after {self.retry_seconds:g} s: {_reason(error)}"
                        + (f" (last cursor {self.cursor})" if self.cursor else "")
                    ) from None
                if not told:
                    told = True
                    self.notice(f"{_reason(error)}; retrying for up to {self.retry_seconds:g} s")
            except ApiError as error:
                if error.status == 404 and self.runtime_id is not None:
                    runtime_id = (await self.api.runtime()).body["runtime"]["runtime_id"]
                    if runtime_id == self.runtime_id:  # worker ids are never given again (§11)
                        self.notice(f"{self.worker_id} was deleted while the connection was down")
                        self.deleted = True
                        return
                    raise self._other_runtime(runtime_id) from None
                raise
            # Never a tight loop: a daemon that accepts and drops at once is retried with waits too.
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)

    def _check_runtime(self, snapshot: Frame) -> None:
        runtime_id = str(snapshot.event_data["worker"]["runtime_id"])
        if self.runtime_id is None:
            self.runtime_id = runtime_id
        elif runtime_id != self.runtime_id:
            raise self._other_runtime(runtime_id)

    def _other_runtime(self, runtime_id: str) -> ObservationEnded:
        return ObservationEnded(
            f"the daemon now serves runtime {runtime_id}, not {self.runtime_id}: "
            f"the {self.worker_id} watched is gone with its runtime"
        )

    def _after_diagnostic(self, diagnostic: dict[str, Any]) -> bool:
        """Decide what follows a diagnostic: True to end, False to reconnect, or raise."""
        code, message = str(diagnostic["code"]), str(diagnostic["message"])
        if code == DELETED:
            self.deleted = True
            return True
        if code in RECONNECT:
            self.notice(f"{code}: {message}; reconnecting after {self.cursor}")
            return False
        resume_from = diagnostic.get("resume_from")
        if code in EXPIRED and isinstance(resume_from, str):
            self.notice(
                f"{code}: {message}; events after {self.cursor or 'the start'} up to {resume_from} are lost, "
                f"continuing from {resume_from}"
            )
            self.cursor = resume_from
            return False
        raise ObservationEnded(f"{code}: {message}")


def _reason(error: BaseException) -> str:
    if isinstance(error, Unreachable):
        return str(error)
    if isinstance(error, TimeoutError):
        return "the daemon did not answer in time"
    return f"connection problem: {error}"
