#!/usr/bin/env python3
"""A bare aiohttp fan-out server: the reference bench/ws_bench.py measures runtimed against.

It has the three routes the WebSocket benchmark uses and does only what a correct fan-out
needs: ``POST /v1/workers`` (answers ``{"worker": {"worker_id": ...}}``),
``POST /v1/workers/{id}/input`` (decodes the JSON body, assigns the next sequence, encodes the
event frame once and offers it to every subscriber of that worker through a bounded
``asyncio.Queue``; a subscriber whose queue is full is dropped with a ``runtime.cursor_expired``
diagnostic) and ``GET /v1/workers/{id}/events/ws`` (one snapshot-like frame, then live frames).
Frames have the shape runtimed sends (contract §7):
``{"kind":"event","envelope":{"cursor","event_id","worker_id","payload":{"event":"user_message",
"data":{"sequence","content"}}}}``. No middlewares, no schemas, no store, no access log, no
backlog or resume: what runtimed spends beyond this server is what its own layers cost.
It never imports runtimed.

    python bench/bare_ws_server.py --bind 127.0.0.1:0 [--queue 256] [--heartbeat 30]

prints ``bare_ws_server listening on http://HOST:PORT (...)`` on stderr, like ``runtimed
serve``, and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

RUNTIME_ID = "bare-ws"
DIAGNOSTIC_SEND_SECONDS = 5.0
CLOSE_HANDSHAKE_SECONDS = 3.0


def dumps(data: object) -> str:
    """Compact JSON, like runtimed's frames and bodies."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def respond(data: object, status: int = 200) -> web.Response:
    return web.Response(status=status, text=dumps(data), content_type="application/json")


def error(status: int, code: str, message: str) -> web.Response:
    return respond({"error": {"code": code, "message": message}}, status)


def cursor_of(sequence: int) -> str:
    return f"wo_{sequence:016x}"


class Subscriber:
    __slots__ = ("queue", "dropped")

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(size)
        self.dropped = False


class Worker:
    __slots__ = ("worker_id", "transcript_len", "subscribers")

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.transcript_len = 0
        self.subscribers: set[Subscriber] = set()


class State:
    def __init__(self, queue_size: int, heartbeat: float) -> None:
        self.queue_size = queue_size
        self.heartbeat = heartbeat
        self.workers: dict[str, Worker] = {}
        self.sequence = 0  # one observation sequence for the whole server, like runtimed
        self.event_id = 0
        self.sessions: set[web.WebSocketResponse] = set()


STATE = web.AppKey("state", State)


async def read_json(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except ValueError:
        return None


async def create_worker(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await read_json(request)  # whatever the body, a worker is made
    worker_id = f"worker-{len(state.workers) + 1:08d}"
    state.workers[worker_id] = Worker(worker_id)
    state.event_id += 1
    return respond({"worker": {"worker_id": worker_id, "worker_ref": {"runtime_id": RUNTIME_ID, "worker_id": worker_id}, "status": "running"}})


async def send_input(request: web.Request) -> web.Response:
    state = request.app[STATE]
    worker = state.workers.get(request.match_info["worker_id"])
    if worker is None:
        return error(404, "worker_not_found", "worker not found")
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("content"), str) or not body["content"].strip():
        return error(400, "invalid_request", "worker input needs a non-empty string content")
    worker.transcript_len += 1
    state.event_id += 1
    state.sequence += 1
    cursor = cursor_of(state.sequence)
    kind = "system_item" if body.get("kind") == "system" else "user_message"
    frame = dumps(
        {
            "kind": "event",
            "envelope": {
                "cursor": cursor,
                "event_id": cursor,
                "worker_id": worker.worker_id,
                "payload": {"event": kind, "data": {"sequence": worker.transcript_len, "content": body["content"]}},
            },
        }
    )  # encoded once, whatever the number of subscribers
    for subscriber in tuple(worker.subscribers):
        try:
            subscriber.queue.put_nowait(frame)
        except asyncio.QueueFull:
            # Never wait for a slow reader: drop it (its writer says so and closes).
            subscriber.dropped = True
            worker.subscribers.discard(subscriber)
            subscriber.queue.get_nowait()
            subscriber.queue.put_nowait(None)
    return respond(
        {
            "ack": {
                "worker_ref": {"runtime_id": RUNTIME_ID, "worker_id": worker.worker_id},
                "status": "running",
                "transcript_sequence": worker.transcript_len,
                "event_id": state.event_id,
            }
        }
    )


async def _end(ws: web.WebSocketResponse, code: str, message: str, close_code: int = WSCloseCode.OK) -> None:
    if ws.closed:
        return
    try:
        await asyncio.wait_for(ws.send_str(dumps({"kind": "diagnostic", "diagnostic": {"code": code, "message": message}})), DIAGNOSTIC_SEND_SECONDS)
        await asyncio.wait_for(ws.close(code=close_code), CLOSE_HANDSHAKE_SECONDS)
    except (asyncio.TimeoutError, ConnectionError, RuntimeError):
        if ws._req is not None and ws._req.transport is not None:  # noqa: SLF001
            ws._req.transport.abort()  # noqa: SLF001


async def _write(ws: web.WebSocketResponse, worker: Worker, subscriber: Subscriber, sequence: int) -> None:
    cursor = cursor_of(sequence)
    snapshot = {
        "kind": "event",
        "envelope": {
            "cursor": cursor,
            "event_id": f"snapshot:{cursor}",
            "worker_id": worker.worker_id,
            "payload": {"event": "snapshot", "data": {"worker": {"worker_id": worker.worker_id}, "status": "running", "entries": []}},
        },
    }
    await ws.send_str(dumps(snapshot))
    queue = subscriber.queue
    while True:
        frame = await queue.get()
        if frame is None:
            if subscriber.dropped:
                await _end(ws, "runtime.cursor_expired", "runtime observation backlog was overrun")
            else:
                await _end(ws, "runtime.upstream_closed", "shutting down", WSCloseCode.GOING_AWAY)
            return
        await ws.send_str(frame)


async def events_ws(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    worker = state.workers.get(request.match_info["worker_id"])
    if worker is None:
        return error(404, "worker_not_found", "worker not found")
    ws = web.WebSocketResponse(heartbeat=state.heartbeat or None, compress=False, timeout=CLOSE_HANDSHAKE_SECONDS)
    await ws.prepare(request)
    subscriber = Subscriber(state.queue_size)
    worker.subscribers.add(subscriber)  # subscribe first; the snapshot is "now"
    state.sessions.add(ws)
    writer = asyncio.create_task(_write(ws, worker, subscriber, state.sequence))
    try:
        async for message in ws:
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                writer.cancel()
                await _end(ws, "runtime.observation_only", "observation-only", WSCloseCode.POLICY_VIOLATION)
                break
    finally:
        worker.subscribers.discard(subscriber)
        state.sessions.discard(ws)
        if not writer.done():
            writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer
    return ws


async def close_sessions(app: web.Application) -> None:
    for worker in app[STATE].workers.values():
        for subscriber in worker.subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                subscriber.queue.put_nowait(None)
        worker.subscribers.clear()
    sessions = list(app[STATE].sessions)
    await asyncio.gather(*(ws.close(code=WSCloseCode.GOING_AWAY) for ws in sessions), return_exceptions=True)


def make_app(queue_size: int, heartbeat: float) -> web.Application:
    app = web.Application()
    app[STATE] = State(queue_size, heartbeat)
    app.on_shutdown.append(close_sessions)
    app.router.add_routes(
        [
            web.post("/v1/workers", create_worker),
            web.post("/v1/workers/{worker_id}/input", send_input),
            web.get("/v1/workers/{worker_id}/events/ws", events_ws),
        ]
    )
    return app


async def serve(host: str, port: int, queue_size: int, heartbeat: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(make_app(queue_size, heartbeat), handle_signals=False, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        print(
            f"bare_ws_server listening on http://{bound_host}:{bound_port} (queue {queue_size}, heartbeat {heartbeat})",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bind", default="127.0.0.1:0", help="HOST:PORT (port 0 picks one) [127.0.0.1:0]")
    parser.add_argument("--queue", type=int, default=256, help="frames queued per subscriber before it is dropped [256, as runtimed]")
    parser.add_argument("--heartbeat", type=float, default=30.0, help="WebSocket ping interval, 0 disables [30, as runtimed]")
    args = parser.parse_args(argv)
    host, _, port = args.bind.rpartition(":")
    asyncio.run(serve(host.strip("[]") or "127.0.0.1", int(port), args.queue, args.heartbeat))


if __name__ == "__main__":
    main()
