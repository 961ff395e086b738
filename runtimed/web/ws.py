"""The observation WebSocket (contract §7): a snapshot, then every event of the worker since
the client's cursor, then live events — never one lost, never one twice.

One session is two tasks and the handler that owns them. The writer sends frames (snapshot,
backlog, live tail); it subscribes *before* reading the backlog and drops live events it already
sent, so nothing published between the two is lost or repeated. The reader takes what the client
sends, which is only ever pings and a close. Whoever decides the session is over (the writer, the
reader, the bus on an overrun, shutdown) only asks for the end; the handler then stops both tasks
and, alone on the socket, sends the diagnostic and closes.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiohttp import WSCloseCode, WSMsgType, web

from ..domain.errors import CursorError, CursorMalformed, Overrun, WorkerDeleted
from ..domain.identity import WorkerRef
from ..domain.observation import Observation, decode_cursor
from ..runtime import Runtime
from .errors import TooManySessions, UpgradeRequired
from .frames import FrameCache, diagnostic_frame, snapshot_frame
from .handlers import worker_ref
from .keys import RUNTIME, SERVER_CONFIG, WS_FRAMES, WS_SESSIONS
from .masking import ObservationSocket

log = logging.getLogger("runtimed.ws")

#: How long a diagnostic may wait for a slow peer, and how long a close handshake may take.
DIAGNOSTIC_SEND_SECONDS = 5.0
CLOSE_HANDSHAKE_SECONDS = 3.0


@dataclass(frozen=True, slots=True)
class Ending:
    """The diagnostic a session ends with, and the close code after it."""

    code: str
    message: str
    close_code: int = WSCloseCode.OK
    resume_from: int | None = None


class ObservationSession:
    """One client watching one worker."""

    def __init__(self, runtime: Runtime, ref: WorkerRef, ws: web.WebSocketResponse, frames: FrameCache) -> None:
        self.runtime = runtime
        self.ref = ref
        self.ws = ws
        self.frames = frames
        self.writer: asyncio.Task[None] | None = None
        self.last_sent = 0  # the sequence of the last event frame handed to the socket
        self._sending = False
        self._ending: Ending | None = None  # the first end asked for wins
        self._stopping = asyncio.Event()  # set once the session is to end, with or without a diagnostic
        self._done = asyncio.Event()

    async def serve(self, request: web.Request, raw_cursor: str | None) -> None:
        """Upgrade, then stream until the client leaves, breaks the protocol, or the stream ends."""
        try:
            await self.ws.prepare(request)
            await self._run(raw_cursor)
        finally:
            self._done.set()

    async def _run(self, raw_cursor: str | None) -> None:
        self.writer = asyncio.create_task(self._write(raw_cursor))
        reader = asyncio.create_task(self._read())
        try:
            await self._stopping.wait()
            # Nothing may be receiving while the socket closes: aiohttp's close() while another
            # task waits in receive() drops the connection right after sending its close frame,
            # without waiting for the client's, and a client that reads late then sees 1006.
            await _cancel(reader)
            await _cancel(self.writer)
            if self._ending is not None:
                await self._say(self._ending)
        finally:
            await _cancel(reader)
            await _cancel(self.writer)

    async def end(self, code: str, message: str, close_code: int = WSCloseCode.OK) -> None:
        """End the session from outside (shutdown): the diagnostic, then ``close_code``."""
        self._end(Ending(code, message, close_code))
        await self._done.wait()

    def _end(self, ending: Ending | None) -> None:
        """Ask for the end (``None``: the peer is gone, nothing to say). The writer stops at
        once, so that no event frame follows the diagnostic and ``last_sent`` stays put."""
        if not self._stopping.is_set():
            self._ending = ending
            self._stopping.set()
        writer = self.writer
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()

    async def _read(self) -> None:
        # receive() answers pings itself, and ends the iteration on a close or a lost connection.
        async for message in self.ws:
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                self._end(
                    Ending(
                        "runtime.observation_only",
                        "runtime worker event WebSocket is observation-only",
                        WSCloseCode.POLICY_VIOLATION,
                    )
                )
                return
        self._end(None)

    async def _write(self, raw_cursor: str | None) -> None:
        try:
            await self._stream(raw_cursor)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("observation session for %s failed", self.ref.worker_id)
            self._end(
                Ending(
                    "runtime.internal_error",
                    "internal error; the daemon's log has the details",
                    WSCloseCode.INTERNAL_ERROR,
                )
            )

    async def _stream(self, raw_cursor: str | None) -> None:
        start: int | None = None
        if raw_cursor is not None:
            try:
                start = decode_cursor(raw_cursor)
            except CursorMalformed as error:
                self._end(Ending(error.code, error.message))
                return
        # Subscribe before reading the backlog, or events published between the two are lost.
        with self.runtime.subscribe(self.ref) as subscription:
            if start is None:
                start = self.runtime.observation_cursor_now(self.ref)
            await self._send(snapshot_frame(self.runtime.observation_snapshot(self.ref), start))
            try:
                backlog = self.runtime.replay_observations(self.ref, start)
            except CursorError as error:
                self._end(Ending(error.code, error.message, resume_from=error.resume_from))
                return
            self.last_sent = start
            subscription.on_overrun(self._overrun_while_sending)
            for observation in backlog:
                await self._send_event(observation)
            while True:
                try:
                    live = await subscription.get()
                except Overrun:
                    self._end(self._overrun_ending())
                    return
                except WorkerDeleted as deleted:
                    self._end(Ending(deleted.code, deleted.message))
                    return
                if live is None:
                    self._end(
                        Ending("runtime.upstream_closed", "runtime observation bus closed", WSCloseCode.GOING_AWAY)
                    )
                    return
                if live.sequence <= self.last_sent:
                    continue  # already sent as part of the backlog
                await self._send_event(live)

    async def _send_event(self, observation: Observation) -> None:
        # aiohttp hands the whole frame to the transport before it waits for the peer to drain
        # it, so the frame counts as sent from here: a resume point must not repeat it.
        self.last_sent = observation.sequence
        self._sending = True
        try:
            await self._send(self.frames.frame(observation))
        finally:
            self._sending = False

    def _overrun_ending(self) -> Ending:
        resume_from = self.runtime.observation_resume_point(self.ref, self.last_sent)
        return Ending("runtime.cursor_expired", "runtime observation backlog was overrun", resume_from=resume_from)

    def _overrun_while_sending(self) -> None:
        """The subscription overran. A writer waiting for a peer that stopped reading would
        never get to say so: end the session now, which stops the writer, and the diagnostic
        (with its bounded wait) is tried at once."""
        if self._sending:
            self._end(self._overrun_ending())

    async def _send(self, text: str) -> None:
        # A peer that stops reading blocks this send; its subscription then overruns (the bus
        # never waits), and a peer that stopped answering pings is cut off by the heartbeat.
        await self.ws.send_str(text)

    async def _say(self, ending: Ending) -> None:
        """Send the diagnostic (with a bounded wait), then close with its code (a bounded handshake)."""
        if self.ws.closed:
            return
        try:
            await asyncio.wait_for(
                self.ws.send_str(diagnostic_frame(ending.code, ending.message, ending.resume_from)),
                DIAGNOSTIC_SEND_SECONDS,
            )
        except (TimeoutError, ConnectionError, RuntimeError):
            # The peer cannot take even one more frame: drop the connection without a handshake.
            self._abort()
            return
        try:
            await asyncio.wait_for(self.ws.close(code=ending.close_code), CLOSE_HANDSHAKE_SECONDS)
        except (TimeoutError, ConnectionError):
            self._abort()

    def _abort(self) -> None:
        transport = self.ws._req.transport if self.ws._req is not None else None
        if transport is not None:
            transport.abort()


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait for it to finish; a cancellation of the caller still propagates."""
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("observation session task failed while stopping", exc_info=error)


async def worker_events(request: web.Request) -> web.StreamResponse:
    """``GET /v1/workers/{worker_id}/events/ws[?cursor=wo_…]``."""
    config = request.app[SERVER_CONFIG]
    ws = ObservationSocket(
        heartbeat=config.ws_heartbeat_seconds or None,
        compress=False,  # loopback: compressing each frame per observer would only cost CPU
        timeout=CLOSE_HANDSHAKE_SECONDS,
        # A client has nothing to send but pings, pongs and a close; this bounds what the reader
        # buffers of a message, fragmented or not, before it closes the socket with 1009.
        # aiohttp refuses a message of max_msg_size bytes or more, hence the + 1.
        max_msg_size=config.ws_max_message_bytes + 1,
    )
    if not ws.can_prepare(request).ok:
        raise UpgradeRequired("this route is a WebSocket: connect with an 'Upgrade: websocket' request")
    ref = worker_ref(request)
    runtime = request.app[RUNTIME]
    runtime.worker_detail(ref)  # worker_not_found before the upgrade
    sessions = request.app[WS_SESSIONS]
    if len(sessions) >= config.max_observation_sessions:
        raise TooManySessions(config.max_observation_sessions)
    session = ObservationSession(runtime, ref, ws, request.app[WS_FRAMES])
    # The slot is taken before the upgrade's first await, so upgrades at once cannot overshoot.
    sessions.add(session)
    try:
        await session.serve(request, request.query.get("cursor"))
    finally:
        sessions.discard(session)
    return ws


async def close_sessions(app: web.Application) -> None:
    """On shutdown: every open session gets ``runtime.upstream_closed`` and a 1001 close."""
    sessions = app[WS_SESSIONS].copy()  # sessions leave the set as they end
    await asyncio.gather(
        *(
            session.end("runtime.upstream_closed", "runtime is shutting down", WSCloseCode.GOING_AWAY)
            for session in sessions
        ),
        return_exceptions=True,
    )
