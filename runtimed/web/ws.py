"""The observation WebSocket (contract §7): a snapshot, then every event of the worker since
the client's cursor, then live events — never one lost, never one twice.

One session is one task writing frames (snapshot, backlog, live tail) while the handler reads
what the client sends, which is only ever pings and a close. The writer subscribes *before*
reading the backlog and drops live events it already sent, so nothing published between the
two is lost or repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import WSCloseCode, WSMsgType, web

from ..domain.errors import CursorError, CursorMalformed, Overrun
from ..domain.identity import WorkerRef
from ..domain.observation import Observation, decode_cursor
from ..runtime import Runtime
from .errors import UpgradeRequired
from .frames import FrameCache, diagnostic_frame, snapshot_frame
from .handlers import worker_ref
from .keys import RUNTIME, SERVER_CONFIG, WS_FRAMES, WS_SESSIONS

log = logging.getLogger("runtimed.ws")

#: How long a diagnostic may wait for a slow peer, and how long a close handshake may take.
DIAGNOSTIC_SEND_SECONDS = 5.0
CLOSE_HANDSHAKE_SECONDS = 3.0


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
        self._tasks: set[asyncio.Task[None]] = set()
        self._ending = False

    async def run(self, raw_cursor: str | None) -> None:
        """Stream until the client leaves, breaks the protocol, or the stream ends."""
        self.writer = asyncio.create_task(self._write(raw_cursor))
        try:
            async for message in self.ws:
                if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await self.end(
                        "runtime.observation_only",
                        "runtime worker event WebSocket is observation-only",
                        WSCloseCode.POLICY_VIOLATION,
                    )
                    break
        finally:
            await self._stop_writer()

    async def _write(self, raw_cursor: str | None) -> None:
        try:
            await self._stream(raw_cursor)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("observation session for %s failed", self.ref.worker_id)
            await self.end(
                "runtime.internal_error",
                "internal error; the daemon's log has the details",
                WSCloseCode.INTERNAL_ERROR,
                from_writer=True,
            )

    async def _stream(self, raw_cursor: str | None) -> None:
        start: int | None = None
        if raw_cursor is not None:
            try:
                start = decode_cursor(raw_cursor)
            except CursorMalformed as error:
                await self.end(error.code, error.message, from_writer=True)
                return
        # Subscribe before reading the backlog, or events published between the two are lost.
        with self.runtime.subscribe(self.ref) as subscription:
            if start is None:
                start = self.runtime.observation_cursor_now(self.ref)
            await self._send(snapshot_frame(self.runtime.observation_snapshot(self.ref), start))
            try:
                backlog = self.runtime.replay_observations(self.ref, start)
            except CursorError as error:
                await self.end(error.code, error.message, resume_from=error.resume_from, from_writer=True)
                return
            self.last_sent = start
            subscription.on_overrun(self._overrun_while_sending)
            for observation in backlog:
                await self._send_event(observation)
            while True:
                try:
                    live = await subscription.get()
                except Overrun:
                    await self.end(*self._overrun_diagnostic(), from_writer=True)
                    return
                if live is None:
                    await self.end(
                        "runtime.upstream_closed",
                        "runtime observation bus closed",
                        WSCloseCode.GOING_AWAY,
                        from_writer=True,
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

    def _overrun_diagnostic(self) -> tuple[str, str, int, int]:
        resume_from = self.runtime.observation_resume_point(self.ref, self.last_sent)
        return "runtime.cursor_expired", "runtime observation backlog was overrun", WSCloseCode.OK, resume_from

    def _overrun_while_sending(self) -> None:
        """The subscription overran. A writer waiting for a peer that stopped reading would
        never get to say so: stop it, and try the diagnostic (with its bounded wait) at once."""
        if self._sending and self.writer is not None and not self.writer.done():
            self.writer.cancel()
            self._tasks.add(task := asyncio.get_running_loop().create_task(self.end(*self._overrun_diagnostic())))
            task.add_done_callback(self._tasks.discard)

    async def _send(self, text: str) -> None:
        # A peer that stops reading blocks this send; its subscription then overruns (the bus
        # never waits), and a peer that stopped answering pings is cut off by the heartbeat.
        await self.ws.send_str(text)

    async def end(
        self,
        code: str,
        message: str,
        close_code: int = WSCloseCode.OK,
        resume_from: int | None = None,
        from_writer: bool = False,
    ) -> None:
        """Send one diagnostic (with a bounded wait), then close the socket with ``close_code``."""
        if self._ending:
            return
        self._ending = True
        if not from_writer:
            await self._stop_writer()
        if self.ws.closed:
            return
        try:
            await asyncio.wait_for(
                self.ws.send_str(diagnostic_frame(code, message, resume_from)), DIAGNOSTIC_SEND_SECONDS
            )
        except (TimeoutError, ConnectionError, RuntimeError):
            # The peer cannot take even one more frame: drop the connection without a handshake.
            self._abort()
            return
        try:
            await asyncio.wait_for(self.ws.close(code=close_code), CLOSE_HANDSHAKE_SECONDS)
        except (TimeoutError, ConnectionError):
            self._abort()

    def _abort(self) -> None:
        transport = self.ws._req.transport if self.ws._req is not None else None
        if transport is not None:
            transport.abort()

    async def _stop_writer(self) -> None:
        writer = self.writer
        if writer is not None and writer is not asyncio.current_task() and not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer


async def worker_events(request: web.Request) -> web.StreamResponse:
    """``GET /v1/workers/{worker_id}/events/ws[?cursor=wo_…]``."""
    heartbeat = request.app[SERVER_CONFIG].ws_heartbeat_seconds
    ws = web.WebSocketResponse(
        heartbeat=heartbeat or None,
        compress=False,  # loopback: compressing each frame per observer would only cost CPU
        timeout=CLOSE_HANDSHAKE_SECONDS,
    )
    if not ws.can_prepare(request).ok:
        raise UpgradeRequired("this route is a WebSocket: connect with an 'Upgrade: websocket' request")
    ref = worker_ref(request)
    runtime = request.app[RUNTIME]
    runtime.worker_detail(ref)  # worker_not_found before the upgrade
    await ws.prepare(request)
    session = ObservationSession(runtime, ref, ws, request.app[WS_FRAMES])
    sessions = request.app[WS_SESSIONS]
    sessions.add(session)
    try:
        await session.run(request.query.get("cursor"))
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
