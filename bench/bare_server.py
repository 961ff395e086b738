#!/usr/bin/env python3
"""A bare aiohttp server with the routes bench/rest_bench.py measures, doing only the JSON work.

It is the reference runtimed is measured against: the same routes, the same response shapes
(``{"runtime": RuntimeSummary}``, ``{"ack": WorkerInteractionAck}``,
``{"transcript": TranscriptProjection}`` with ``TranscriptEntry`` items), the same compact JSON,
but no middlewares, no schemas, no domain objects and no access log. What runtimed spends
beyond this server is what its own layers cost. It never imports runtimed.

    python bench/bare_server.py --bind 127.0.0.1:0

prints ``bare_server listening on http://HOST:PORT (...)`` on stderr, like ``runtimed serve``,
and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import sys
from typing import Any

from aiohttp import web

MAX_TRANSCRIPT_ITEMS = 256
MAX_EVENT_BATCH_ITEMS = 256


def dumps(data: object) -> str:
    """Compact JSON, like runtimed's response bodies."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def respond(data: object, status: int = 200) -> web.Response:
    return web.Response(status=status, text=dumps(data), content_type="application/json")


def error(status: int, code: str, message: str) -> web.Response:
    return respond({"error": {"code": code, "message": message}}, status)


class Worker:
    __slots__ = ("ref", "intent", "profile", "status", "entries", "last_event_id")

    def __init__(self, ref: dict[str, str], intent: Any, profile: Any, event_id: int) -> None:
        self.ref = ref
        self.intent = intent
        self.profile = profile
        self.status = "running"
        self.entries: list[dict[str, Any]] = []
        self.last_event_id = event_id


class State:
    """Everything the server knows: workers in creation order and an event counter."""

    def __init__(self) -> None:
        self.runtime_id = f"runtime-mem-{secrets.token_hex(8)}"
        self.workers: dict[str, Worker] = {}
        self.last_event_id = 1  # runtime_started
        self.diagnostic_count = 0


STATE: web.AppKey[State] = web.AppKey("state", State)


async def read_json(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except ValueError as exc:
        raise web.HTTPBadRequest(text=dumps({"error": {"code": "invalid_json", "message": str(exc)}}),
                                 content_type="application/json") from None


async def get_runtime(request: web.Request) -> web.Response:
    state = request.app[STATE]
    active = sum(1 for worker in state.workers.values() if worker.status == "running")
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
                "limits": {
                    "max_transcript_projection_items": MAX_TRANSCRIPT_ITEMS,
                    "max_event_batch_items": MAX_EVENT_BATCH_ITEMS,
                },
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
    worker = Worker({"runtime_id": state.runtime_id, "worker_id": worker_id}, body["intent"], body["profile"],
                    state.last_event_id)
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


def find_worker(request: web.Request) -> Worker | None:
    return request.app[STATE].workers.get(request.match_info["worker_id"])


async def send_input(request: web.Request) -> web.Response:
    state = request.app[STATE]
    worker = find_worker(request)
    if worker is None:
        return error(404, "worker_not_found", "worker was not found")
    body = await read_json(request)
    if not isinstance(body, dict) or "kind" not in body or "content" not in body:
        return error(400, "invalid_json", "expected an object with kind and content")
    state.last_event_id += 1
    sequence = len(worker.entries) + 1
    worker.entries.append(
        {
            "sequence": sequence,
            "worker_ref": worker.ref,
            "role": body["kind"],
            "content": body["content"],
            "event_id": state.last_event_id,
        }
    )
    worker.last_event_id = state.last_event_id
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


async def get_transcript(request: web.Request) -> web.Response:
    worker = find_worker(request)
    if worker is None:
        return error(404, "worker_not_found", "worker was not found")
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


def create_app() -> web.Application:
    app = web.Application()
    app[STATE] = State()
    app.router.add_routes(
        [
            web.get("/v1/runtime", get_runtime),
            web.post("/v1/workers", create_worker),
            web.post("/v1/workers/{worker_id}/input", send_input),
            web.get("/v1/workers/{worker_id}/transcript", get_transcript),
        ]
    )
    return app


def parse_bind(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


async def serve(host: str, port: int) -> None:
    app = create_app()
    # access_log=None: the reference does no per-request logging at all.
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        print(
            f"bare_server listening on http://{shown}:{bound_port} "
            f"(runtime {app[STATE].runtime_id}, reference server)",
            file=sys.stderr,
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", type=parse_bind, default=("127.0.0.1", 0), metavar="HOST:PORT",
                        help="address to listen on [default: 127.0.0.1:0]; port 0 picks one")
    args = parser.parse_args(argv)
    asyncio.run(serve(*args.bind))


if __name__ == "__main__":
    main()
