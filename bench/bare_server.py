#!/usr/bin/env python3
"""The bare aiohttp reference server of every benchmark here: runtimed's worker routes, doing only the JSON work.

The benchmarks measure runtimed against it: the same routes, the same response shapes and frames,
the same compact JSON, but no middlewares, no schemas, no domain objects, no store, no backlog
or resume, and no access log. What runtimed spends beyond this server is what its own layers cost.
It never imports runtimed.

- ``GET /v1/runtime``: ``{"runtime": RuntimeSummary}``.
- ``POST /v1/workers``: ``{"worker": WorkerDetail}``.
- ``POST /v1/workers/{id}/input``: appends a ``TranscriptEntry``, answers ``{"ack": …}``, and
  offers the event frame (encoded once) to every subscriber of that worker through a bounded
  ``asyncio.Queue``; a subscriber whose queue is full is dropped with a ``runtime.cursor_expired``
  diagnostic.
- ``GET /v1/workers/{id}/transcript?start=&limit=``: ``{"transcript": TranscriptProjection}``.
- ``GET /v1/workers/{id}/events/ws``: one snapshot-like frame, then live frames of the shape
  runtimed sends (contract §7): ``{"kind":"event","envelope":{"cursor","event_id","worker_id",
  "payload":{"event":"user_message","data":{"sequence","content"}}}}``.

    python bench/bare_server.py --bind 127.0.0.1:0 [--queue 256] [--heartbeat 30]

prints ``bare_server listening on http://HOST:PORT (...)`` on stderr, like ``runtimed serve``,
and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
import sys
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

MAX_TRANSCRIPT_ITEMS = 256
MAX_EVENT_BATCH_ITEMS = 256
DIAGNOSTIC_SEND_SECONDS = 5.0
CLOSE_HANDSHAKE_SECONDS = 3.0


def dumps(data: object) -> str:
    """Compact JSON, like runtimed's bodies and frames."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def respond(data: object, status: int = 200) -> web.Response:
    return web.Response(status=status, text=dumps(data), content_type="application/json")


def error(status: int, code: str, message: str) -> web.Response:
    return respond({"error": {"code": code, "message": message}}, status)


def cursor_of(sequence: int) -> str:
    return f"wo_{sequence:016x}"


class Subscriber:
    __slots__ = ("dropped", "queue")

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(size)
        self.dropped = False


class Worker:
    __slots__ = ("entries", "intent", "last_event_id", "profile", "ref", "status", "subscribers", "worker_id")

    def __init__(self, ref: dict[str, str], intent: Any, profile: Any, event_id: int) -> None:
        self.worker_id = ref["worker_id"]
        self.ref = ref
        self.intent = intent
        self.profile = profile
        self.status = "running"
        self.entries: list[dict[str, Any]] = []
        self.last_event_id = event_id
        self.subscribers: set[Subscriber] = set()


class State:
    """Everything the server knows: workers in creation order, counters, WebSocket sessions."""

    def __init__(self, queue_size: int, heartbeat: float) -> None:
        self.runtime_id = f"runtime-mem-{secrets.token_hex(8)}"
        self.queue_size = queue_size
        self.heartbeat = heartbeat
        self.workers: dict[str, Worker] = {}
        self.last_event_id = 1  # runtime_started
        self.sequence = 0  # one observation sequence for the whole server, like runtimed
        self.diagnostic_count = 0
        self.sessions: set[web.WebSocketResponse] = set()


STATE: web.AppKey[State] = web.AppKey("state", State)


async def read_json(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except ValueError:
        return None


def find_worker(request: web.Request) -> Worker | None:
    return request.app[STATE].workers.get(request.match_info["worker_id"])


def not_found() -> web.Response:
    return error(404, "worker_not_found", "worker was not found")


async def get_runtime(request: web.Request) -> web.Response:
    state = request.app[STATE]
    active = sum(1 for worker in state.workers.values() if worker.status == "running")
    limits = {"max_transcript_projection_items": MAX_TRANSCRIPT_ITEMS, "max_event_batch_items": MAX_EVENT_BATCH_ITEMS}
    return respond(
        {
            "runtime": {
                "runtime_id": state.runtime_id,
                "display_name": None,
                "backend": "memory",
                "status": "running",
                "worker_count": len(state.workers),
                "active_worker_count": active,
                "stopped_worker_count": len(state.workers) - active,
                "cancelled_worker_count": 0,
                "diagnostic_count": state.diagnostic_count,
                "limits": limits,
            }
        }
    )


async def create_worker(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await read_json(request)
    if not isinstance(body, dict) or "intent" not in body or "profile" not in body:
        return error(400, "invalid_json", "expected an object with intent and profile")
    worker_id = f"worker-{len(state.workers) + 1:08x}"
    state.last_event_id += 1
    worker = Worker(
        {"runtime_id": state.runtime_id, "worker_id": worker_id}, body["intent"], body["profile"], state.last_event_id
    )
    state.workers[worker_id] = worker
    state.diagnostic_count += 2
    return respond(
        {
            "worker": {
                "worker_ref": worker.ref,
                "runtime_id": state.runtime_id,
                "worker_id": worker_id,
                "status": worker.status,
                "intent": worker.intent,
                "profile": worker.profile,
                "transcript_len": 0,
                "last_event_id": worker.last_event_id,
            }
        }
    )


async def send_input(request: web.Request) -> web.Response:
    state = request.app[STATE]
    worker = find_worker(request)
    if worker is None:
        return not_found()
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("content"), str) or "kind" not in body:
        return error(400, "invalid_json", "expected an object with kind and a string content")
    state.last_event_id += 1
    state.sequence += 1
    sequence = len(worker.entries) + 1
    entry = {
        "sequence": sequence,
        "worker_ref": worker.ref,
        "role": body["kind"],
        "content": body["content"],
        "event_id": state.last_event_id,
    }
    worker.entries.append(entry)
    worker.last_event_id = state.last_event_id
    if worker.subscribers:
        publish(worker, state.sequence, body)
    return respond(
        {
            "ack": {
                "worker_ref": worker.ref,
                "status": worker.status,
                "transcript_sequence": sequence,
                "event_id": state.last_event_id,
            }
        }
    )


def publish(worker: Worker, sequence: int, body: dict[str, Any]) -> None:
    """Offer the input's event frame, encoded once, to every subscriber; drop those that are full."""
    cursor = cursor_of(sequence)
    kind = "system_item" if body["kind"] == "system" else "user_message"
    payload = {"event": kind, "data": {"sequence": len(worker.entries), "content": body["content"]}}
    envelope = {"cursor": cursor, "event_id": cursor, "worker_id": worker.worker_id, "payload": payload}
    frame = dumps({"kind": "event", "envelope": envelope})
    for subscriber in tuple(worker.subscribers):
        try:
            subscriber.queue.put_nowait(frame)
        except asyncio.QueueFull:
            # Never wait for a slow reader: drop it (its writer says so and closes).
            subscriber.dropped = True
            worker.subscribers.discard(subscriber)
            subscriber.queue.get_nowait()
            subscriber.queue.put_nowait(None)


async def get_transcript(request: web.Request) -> web.Response:
    worker = find_worker(request)
    if worker is None:
        return not_found()
    try:
        start = int(request.query.get("start", 0))
        limit = int(request.query.get("limit", MAX_TRANSCRIPT_ITEMS))
    except ValueError:
        return error(400, "invalid_query", "start and limit must be integers")
    if limit > MAX_TRANSCRIPT_ITEMS:
        return error(400, "limit_too_large", f"limit {limit} exceeds maximum {MAX_TRANSCRIPT_ITEMS}")
    entries = worker.entries
    items = entries[start : start + limit]
    end = start + len(items)
    return respond(
        {
            "transcript": {
                "worker_ref": worker.ref,
                "start": start,
                "limit": limit,
                "total_items": len(entries),
                "items": items,
                "next_start": end if end < len(entries) else None,
            }
        }
    )


async def _end(ws: web.WebSocketResponse, code: str, message: str, close_code: int = WSCloseCode.OK) -> None:
    if ws.closed:
        return
    frame = dumps({"kind": "diagnostic", "diagnostic": {"code": code, "message": message}})
    try:
        await asyncio.wait_for(ws.send_str(frame), DIAGNOSTIC_SEND_SECONDS)
        await asyncio.wait_for(ws.close(code=close_code), CLOSE_HANDSHAKE_SECONDS)
    except (TimeoutError, ConnectionError, RuntimeError):
        if ws._req is not None and ws._req.transport is not None:
            ws._req.transport.abort()


async def _write(ws: web.WebSocketResponse, worker: Worker, subscriber: Subscriber, sequence: int) -> None:
    cursor = cursor_of(sequence)
    data = {"worker": {"worker_id": worker.worker_id}, "status": worker.status, "entries": []}
    await ws.send_str(
        dumps(
            {
                "kind": "event",
                "envelope": {
                    "cursor": cursor,
                    "event_id": f"snapshot:{cursor}",
                    "worker_id": worker.worker_id,
                    "payload": {"event": "snapshot", "data": data},
                },
            }
        )
    )
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
    worker = find_worker(request)
    if worker is None:
        return not_found()
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


def create_app(queue_size: int = 256, heartbeat: float = 30.0) -> web.Application:
    app = web.Application()
    app[STATE] = State(queue_size, heartbeat)
    app.on_shutdown.append(close_sessions)
    app.router.add_routes(
        [
            web.get("/v1/runtime", get_runtime),
            web.post("/v1/workers", create_worker),
            web.post("/v1/workers/{worker_id}/input", send_input),
            web.get("/v1/workers/{worker_id}/transcript", get_transcript),
            web.get("/v1/workers/{worker_id}/events/ws", events_ws),
        ]
    )
    return app


def parse_bind(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


async def serve(host: str, port: int, queue_size: int, heartbeat: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    app = create_app(queue_size, heartbeat)
    # access_log=None: the reference does no per-request logging at all.
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        print(
            f"bare_server listening on http://{shown}:{bound_port} (runtime {app[STATE].runtime_id}, "
            f"reference server, queue {queue_size}, heartbeat {heartbeat:g})",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bind",
        type=parse_bind,
        default=("127.0.0.1", 0),
        metavar="HOST:PORT",
        help="address to listen on [127.0.0.1:0]; port 0 picks one",
    )
    parser.add_argument(
        "--queue",
        type=int,
        default=256,
        help="frames queued per WebSocket subscriber before it is dropped [256, as runtimed]",
    )
    parser.add_argument(
        "--heartbeat", type=float, default=30.0, help="WebSocket ping interval, 0 disables [30, as runtimed]"
    )
    args = parser.parse_args(argv)
    host, port = args.bind
    asyncio.run(serve(host, port, args.queue, args.heartbeat))


if __name__ == "__main__":
    main()
