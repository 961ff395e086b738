"""Executing workers: echo agents behind a real ``runtimed serve``, memory and fs store.

Four figures, each for the memory store and the fs store (a fresh daemon for each store):

1. **First delta.** One echo worker, one WebSocket observer: the time from sending an input
   (``POST …/input``) to the observer receiving the turn's first ``text_delta``, over
   sequential turns (each waits for ``turn_ended``). p50 and p99.
2. **Streaming.** N echo workers each run ``/stream <chunks>`` at once, each watched by one
   observer: every chunk must arrive (``text_delta`` count per worker) and no observer may be
   told it overran; chunks per second over all workers.
3. **Create → idle.** N creates sent at once; per worker the time from its create request to
   its ``execution.state`` reading ``idle`` (polled every 5 ms); p50 / p99 and creates per
   second (N over the time until the last is idle).
4. **Memory.** The daemon's RSS before the agents and with N idle agents: the growth per agent
   (the goal: under 1 MiB), and each agent process's own RSS.

    python bench/agents_bench.py --quick      # smoke: 4 agents, 100 chunks, 20 turns
    python bench/agents_bench.py              # 64 agents, /stream 1000, 200 turns
    python bench/agents_bench.py --output bench/results/agents.md

All traffic is to 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from harness import (
    Server,
    bench_parser,
    by_mode,
    exit_on_sigterm,
    fmt_count,
    fmt_ms,
    git_revision,
    log,
    markdown_table,
    median,
    percentile,
    rss_kib,
    runtimed_argv,
)

ECHO_WORKER = {
    "intent": {"kind": "assistant", "purpose": "benchmark"},
    "profile": {"kind": "builtin", "value": "builtin:echo"},
}
WAIT_S = 120.0  # the longest any one phase may wait for the daemon or its agents
POLL_S = 0.005


@dataclass
class StoreResult:
    store: str
    first_delta_ms: list[float] = field(default_factory=list)
    stream_chunks: int = 0
    stream_expected: int = 0
    stream_seconds: float = 0.0
    overruns: int = 0
    create_idle_ms: list[float] = field(default_factory=list)
    create_seconds: float = 0.0
    rss_before_kib: int = 0
    rss_after_kib: int = 0
    agent_rss_kib: list[int] = field(default_factory=list)


def config_file(directory: Path, agents: int) -> Path:
    path = directory / "agents-bench.toml"
    path.write_text(
        f"[limits]\nmax_running_agents = {agents + 8}\nmax_queued_inputs = 64\nsubscriber_queue = 4096\n"
        f"[server]\nmax_connections = {4 * agents + 64}\n"
    )
    return path


async def wait_idle(session: aiohttp.ClientSession, base: str, worker: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        async with session.get(f"{base}/v1/workers/{worker}") as response:
            detail = (await response.json())["worker"]
        state = detail.get("execution", {}).get("state")
        if state == "idle":
            return detail
        if detail["status"] != "running":
            raise RuntimeError(f"worker {worker} is {detail['status']} before it became idle")
        await asyncio.sleep(POLL_S)
    raise RuntimeError(f"worker {worker} did not become idle within {WAIT_S:.0f} s")


async def create_agents(
    session: aiohttp.ClientSession, base: str, count: int, result: StoreResult
) -> list[dict[str, Any]]:
    async def one() -> dict[str, Any]:
        started = time.perf_counter()
        async with session.post(f"{base}/v1/workers", json=ECHO_WORKER) as response:
            body = await response.json()
            if response.status != 200:
                raise RuntimeError(f"create answered {response.status}: {body}")
        detail = await wait_idle(session, base, body["worker"]["worker_id"])
        result.create_idle_ms.append((time.perf_counter() - started) * 1000)
        return detail

    started = time.perf_counter()
    details = await asyncio.gather(*(one() for _ in range(count)))
    result.create_seconds = time.perf_counter() - started
    return details


async def watch_turn(
    ws: aiohttp.ClientWebSocketResponse, first_delta: asyncio.Future[float] | None = None
) -> tuple[int, bool]:
    """Read frames until the turn ends: the number of ``text_delta`` frames, and whether the
    observer was told it overran."""
    deltas = 0
    while True:
        message = await ws.receive(timeout=WAIT_S)
        if message.type is not aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"the observation socket ended: {message.type!r}")
        frame = json.loads(message.data)
        if frame["kind"] == "diagnostic":
            return deltas, frame["diagnostic"]["code"] == "runtime.cursor_expired"
        event = frame["envelope"]["payload"]["event"]
        if event == "text_delta":
            deltas += 1
            if first_delta is not None and not first_delta.done():
                first_delta.set_result(time.perf_counter())
        elif event == "turn_ended":
            return deltas, False


async def first_delta_phase(
    session: aiohttp.ClientSession, base: str, worker: str, turns: int, result: StoreResult
) -> None:
    async with session.ws_connect(f"{base}/v1/workers/{worker}/events/ws") as ws:
        await ws.receive(timeout=WAIT_S)  # the snapshot
        for i in range(turns):
            first: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            reader = asyncio.create_task(watch_turn(ws, first))
            sent = time.perf_counter()
            async with session.post(
                f"{base}/v1/workers/{worker}/input", json={"kind": "user", "content": f"hi {i}"}
            ) as r:
                if r.status != 200:
                    raise RuntimeError(f"input answered {r.status}: {await r.text()}")
            await asyncio.wait_for(reader, WAIT_S)
            result.first_delta_ms.append((await first - sent) * 1000)


async def stream_phase(
    session: aiohttp.ClientSession, base: str, workers: list[str], chunks: int, result: StoreResult
) -> None:
    sockets = [await session.ws_connect(f"{base}/v1/workers/{w}/events/ws") for w in workers]
    try:
        for ws in sockets:
            await ws.receive(timeout=WAIT_S)  # the snapshot
        readers = [asyncio.create_task(watch_turn(ws)) for ws in sockets]
        started = time.perf_counter()
        for worker in workers:
            async with session.post(
                f"{base}/v1/workers/{worker}/input", json={"kind": "user", "content": f"/stream {chunks}"}
            ) as r:
                if r.status != 200:
                    raise RuntimeError(f"input answered {r.status}: {await r.text()}")
        outcomes = await asyncio.wait_for(asyncio.gather(*readers), WAIT_S)
        result.stream_seconds = time.perf_counter() - started
    finally:
        for ws in sockets:
            await ws.close()
    result.stream_chunks = sum(deltas for deltas, _ in outcomes)
    result.stream_expected = chunks * len(workers)
    result.overruns = sum(1 for _, overran in outcomes if overran)


async def run_store(server: Server, args: argparse.Namespace, result: StoreResult) -> None:
    timeout = aiohttp.ClientTimeout(total=WAIT_S)
    connector = aiohttp.TCPConnector(limit=4 * args.agents + 16)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        result.rss_before_kib = rss_kib(server.pid)
        details = await create_agents(session, server.base_url, args.agents, result)
        await asyncio.sleep(1.0)  # let the daemon settle before reading its memory
        result.rss_after_kib = rss_kib(server.pid)
        result.agent_rss_kib = [rss_kib(d["execution"]["pid"]) for d in details if "pid" in d["execution"]]
        workers = [d["worker_id"] for d in details]
        await first_delta_phase(session, server.base_url, workers[0], args.turns, result)
        await stream_phase(session, server.base_url, workers, args.chunks, result)


def measure(store: str, args: argparse.Namespace, log_dir: Path) -> StoreResult:
    result = StoreResult(store)
    root = log_dir / f"root-{store}"
    argv = ["serve", "--config", str(config_file(log_dir, args.agents)), "--store", store]
    if store == "fs":
        argv += ["--fs-root", str(root)]
    with Server(f"runtimed-{store}", runtimed_argv(*argv), log_dir) as server:
        server.start()
        log(f"{store}: {args.agents} echo agents")
        asyncio.run(run_store(server, args, result))
    return result


def report(results: list[StoreResult], args: argparse.Namespace, command: str, started: datetime.datetime) -> str:
    lines = [
        f"# Executing workers: echo agents ({started:%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `{command}` (from the repository root; revision {git_revision()}; Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs {platform.processor() or platform.machine()}).",
        "",
        f"{args.agents} echo agents per store; first delta over {args.turns} sequential turns; "
        f"`/stream {args.chunks}` on every agent at once, one observer each.",
        "",
    ]
    rows = []
    for r in results:
        ordered = sorted(r.first_delta_ms)
        created = sorted(r.create_idle_ms)
        growth = (r.rss_after_kib - r.rss_before_kib) / max(1, args.agents) / 1024
        rows.append(
            [
                r.store,
                fmt_ms(percentile(ordered, 0.5)),
                fmt_ms(percentile(ordered, 0.99)),
                f"{r.stream_chunks:,} / {r.stream_expected:,}",
                str(r.overruns),
                fmt_count(r.stream_chunks / r.stream_seconds if r.stream_seconds else 0),
                fmt_ms(percentile(created, 0.5)),
                fmt_ms(percentile(created, 0.99)),
                f"{args.agents / r.create_seconds:.1f}" if r.create_seconds else "-",
                f"{growth:.2f}",
                f"{median(r.agent_rss_kib) / 1024:.1f}",
            ]
        )
    lines += markdown_table(
        [
            "store",
            "first delta p50 ms",
            "p99 ms",
            "chunks delivered",
            "overruns",
            "chunks/s",
            "create→idle p50 ms",
            "p99 ms",
            "creates/s",
            "daemon RSS MiB per agent",
            "agent RSS MiB (median)",
        ],
        rows,
    )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser(
        __doc__,
        quick="4 agents, /stream 100, 20 turns",
        duration="(unused: every figure here is a count of events, not a time window)",
        rounds="(unused: one measurement per store)",
    )
    parser.add_argument("--agents", type=int, help="echo agents per store [64; quick 4]")
    parser.add_argument("--chunks", type=int, help="chunks per agent in the streaming phase [1000; quick 100]")
    parser.add_argument("--turns", type=int, help="sequential turns for the first-delta latency [200; quick 20]")
    parser.add_argument("--stores", default="memory,fs", help="stores to measure, comma-separated [memory,fs]")
    parser.add_argument("--output", help="also write the Markdown report to this file")
    args = parser.parse_args(argv)
    args.agents = by_mode(args.agents, 64, 4, args.quick)
    args.chunks = by_mode(args.chunks, 1000, 100, args.quick)
    args.turns = by_mode(args.turns, 200, 20, args.quick)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "bench/agents_bench.py", *(argv if argv is not None else sys.argv[1:])])
    started = datetime.datetime.now(datetime.UTC)
    exit_on_sigterm()
    log_dir = Path(tempfile.mkdtemp(prefix="agents_bench-"))
    try:
        results = [measure(store, args, log_dir) for store in args.stores.split(",")]
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    text = report(results, args, command, started)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    missing = [r.store for r in results if r.stream_chunks != r.stream_expected or r.overruns]
    if missing:
        log(f"chunks lost or observers overran with the {', '.join(missing)} store")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
