#!/usr/bin/env python3
"""Observation WebSocket benchmark: runtimed's fan-out against a bare aiohttp fan-out server.

One run starts ``python -m runtimed serve --bind 127.0.0.1:0`` and ``bench/bare_server.py``
(same interpreter), reads each one's address from its start-up line, and then:

**Fan-out phase.** For N in (1, 10, 100) subscribers of one worker, on each server (the order
alternates from round to round): a fresh worker, N WebSocket subscribers (aiohttp client, each
reads its snapshot first), a short warm-up, then events published through
``POST /v1/workers/{id}/input`` for a fixed time. Each event's content is the publisher's
``time.monotonic_ns()`` (CLOCK_MONOTONIC, the same clock in every process on the machine), so
every subscriber measures publish→receive latency for every frame. Reported: delivered
frames/s (frames received by all subscribers / time from the first publish to the last frame),
p50/p99 latency over all frames of all subscribers, the CPU the server process and the client
processes used in that window, and runtimed/bare.

The load is closed-loop: at most ``--concurrency`` POSTs are in flight, and a POST is only
sent while the slowest subscriber is fewer than ``--window`` events behind (half the servers'
256-frame subscriber queue), so a saturated server or client slows the publisher down instead
of overrunning subscribers; throughput is what the pair can sustain, and latency is measured at
that load. Subscribers live in ``--client-procs`` extra processes (multiprocessing, spawn), so
their frame parsing does not share a core with the publisher. The publisher is the harness's
minimal keep-alive HTTP/1.1 client on raw asyncio protocols (one request at a time per
connection), cheaper per request than aiohttp's client, so the client side is less likely to
be the limit.

**Memory phase.** On fresh daemons: 100 subscribers connect, read their snapshot and then stop
reading (never call ``receive``), ``--mem-events`` events (default 100,000) are published at
bounded concurrency (and a time bound) while the daemon's VmRSS is sampled from
``/proc/<pid>/status``; then the stalled subscribers read what they got (expected: some events,
then a ``runtime.cursor_expired`` diagnostic with ``resume_from``). Three fresh daemons: a
control with no subscriber (what the memory store itself keeps: transcript, event log), one with
the default config (its 30 s heartbeat may cut stalled peers off first) and one with
``ws_heartbeat_seconds = 0``. The stalled subscribers' cost is their RSS growth minus the control's.
Before each case the bench waits (at most ``--quiet-wait`` s) until no other benchmark of the
project (rest_bench.py, fs_bench.py, wrk) runs, and names any that ran during a case.

    python bench/ws_bench.py                 # full: 10 s per case, 3 rounds, 100,000-event memory test
    python bench/ws_bench.py --quick         # smoke: 1 s per case, 1 round, 500 events, no waiting
    python bench/ws_bench.py --output bench/results/ws.md

Run it under ``flock /tmp/runtimed-bench.lock`` on a shared machine. All traffic is to
127.0.0.1; every loop is bounded in count and time; the servers are stopped with SIGTERM (then
SIGKILL) and the client processes are ended at the end, also on error.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import datetime
import json
import multiprocessing as mp
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import (
    CpuMeter,
    DriveResult,
    Server,
    bare_argv,
    bench_parser,
    by_mode,
    drive,
    exit_on_sigterm,
    http_request,
    log,
    markdown_table,
    median,
    percentile,
    round_order,
    rss_kib,
    runtimed_argv,
    stop_all,
)

CONNECT_TIMEOUT_S = 30.0  # all subscribers of one case connected and snapshot read
DRAIN_TIMEOUT_S = 15.0  # after publishing stops, until every subscriber has every frame
COMMAND_TIMEOUT_S = 120.0  # one command to a client process
MAX_SUBSCRIBERS = 100
DROPPED = 1 << 60  # a subscriber's count once it was cut off: never holds the publisher back


# ------------------------------------------------------------------ other benchmarks


def other_benchmarks() -> list[str]:
    """Other benchmarks of this project running now (they would share our 2 cores)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        for arg in argv[:3]:
            name = os.path.basename(arg.decode(errors="replace"))
            if name in ("rest_bench.py", "fs_bench.py", "wrk"):
                found.append(name)
    return sorted(set(found))


def wait_for_quiet(limit: float) -> list[str]:
    """Wait (polling every 5 s, at most ``limit`` seconds) until no other benchmark runs; say
    which still run if the time is up."""
    deadline = time.monotonic() + limit
    others = other_benchmarks()
    if others and limit > 0:
        log(f"waiting for {', '.join(others)} to finish (at most {limit:g} s)")
    while others and time.monotonic() < deadline:
        time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        others = other_benchmarks()
    return others


def metric(text: str | None, name: str) -> float | None:
    """One unlabelled sample of a Prometheus text exposition, if the daemon has /metrics."""
    if not text:
        return None
    match = re.search(rf"^{re.escape(name)}(?:_total)? ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def ws_url(server: Server, worker_id: str) -> str:
    return f"ws://{server.address}/v1/workers/{worker_id}/events/ws"


# ------------------------------------------------------------------ subscriber processes


class SubscriberHost:
    """Runs in a client process: holds WebSocket subscribers and answers the bench's commands."""

    def __init__(self, conn: Any, counts: Any, last_recv: Any) -> None:
        self.conn = conn
        self.counts = counts  # per slot: event frames received (DROPPED once cut off)
        self.last_recv = last_recv  # per slot: monotonic ns of the last frame
        self.latencies = array.array("q")
        self.subs: list[tuple[int, Any]] = []  # (slot, ws)
        self.readers: list[asyncio.Task[None]] = []
        self.final: dict[int, int] = {}  # slot -> frames received before it was cut off
        self.outcomes: Counter[str] = Counter()
        self.session: Any = None

    async def main(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        loop = asyncio.get_running_loop()
        try:
            while True:
                command, *args = await loop.run_in_executor(None, self.conn.recv)
                try:
                    reply = await getattr(self, "cmd_" + command)(*args)
                except Exception as error:
                    reply = {"error": f"{type(error).__name__}: {error}"}
                self.conn.send(reply)
                if command == "exit":
                    return
        finally:
            await self._close_all()
            await self.session.close()

    async def cmd_connect(self, url: str, first_slot: int, n: int, live: bool) -> dict[str, Any]:
        import aiohttp

        async def one(slot: int) -> None:
            ws = await self.session.ws_connect(
                url, autoping=True, heartbeat=None, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=3.0)
            )
            self.subs.append((slot, ws))
            first = await ws.receive()
            if first.type is not aiohttp.WSMsgType.TEXT or '"snapshot"' not in first.data[:200]:
                raise RuntimeError(f"first frame is not a snapshot: {first.type} {str(first.data)[:200]}")
            self.counts[slot] = 0
            self.last_recv[slot] = 0

        slots = range(first_slot, first_slot + n)
        await asyncio.wait_for(asyncio.gather(*(one(slot) for slot in slots)), CONNECT_TIMEOUT_S)
        if live:
            self.readers = [asyncio.create_task(self._read(ws, slot)) for slot, ws in self.subs]
        return {"connected": len(self.subs)}

    async def _read(self, ws: Any, slot: int) -> None:
        from aiohttp import WSMsgType

        counts, last_recv = self.counts, self.last_recv
        latencies = self.latencies
        mono = time.monotonic_ns
        receive = ws.receive
        text = WSMsgType.TEXT
        outcome = "closed by the bench"
        try:
            while True:
                message = await receive()
                if message.type is text:
                    data = message.data
                    i = data.find('"content":"')
                    if i >= 0:
                        now = mono()
                        i += 11
                        with contextlib.suppress(ValueError):
                            latencies.append(now - int(data[i : data.index('"', i)]))
                        counts[slot] += 1
                        last_recv[slot] = now
                        continue
                    frame = json.loads(data)
                    if frame.get("kind") == "diagnostic":
                        outcome = "diagnostic " + frame["diagnostic"]["code"]
                        return
                    continue  # another kind of event: not ours to time
                outcome = f"socket {message.type.name.lower()} (close code {ws.close_code})"
                return
        finally:
            self.outcomes[outcome] += 1
            self.final[slot] = counts[slot]
            counts[slot] = DROPPED

    async def cmd_reset(self) -> dict[str, Any]:
        del self.latencies[:]
        for slot, _ in self.subs:
            if self.counts[slot] != DROPPED:
                self.counts[slot] = 0
            self.last_recv[slot] = 0
        self.final.clear()
        self.outcomes.clear()
        return {}

    async def cmd_collect(self) -> dict[str, Any]:
        received = sum(self.final.get(slot, self.counts[slot]) for slot, _ in self.subs)
        outcomes = {k: v for k, v in self.outcomes.items() if k != "closed by the bench"}
        return {"latencies": self.latencies.tobytes(), "received": received, "outcomes": outcomes}

    async def cmd_drain(self, timeout: float, published: int, idle: float) -> dict[str, Any]:
        """Stalled subscribers: read everything they were sent, until every event, a diagnostic,
        a close, or ``idle`` seconds without a frame (all within ``timeout``)."""
        from aiohttp import WSMsgType

        async def one(ws: Any) -> dict[str, Any]:
            frames = 0
            last_cursor = None
            result: dict[str, Any] = {"outcome": "still open at the time bound"}
            try:
                while True:
                    try:
                        message = await asyncio.wait_for(ws.receive(), idle)
                    except TimeoutError:
                        if frames >= published:
                            result = {"outcome": "got every event (no overrun), still open"}
                        else:
                            result = {"outcome": f"no diagnostic, silent for {idle:g} s, still open"}
                        break
                    if message.type is WSMsgType.TEXT:
                        frame = json.loads(message.data)
                        if frame.get("kind") == "diagnostic":
                            diagnostic = frame["diagnostic"]
                            result = {"outcome": "diagnostic " + diagnostic["code"], "diagnostic": diagnostic}
                            closing = await asyncio.wait_for(ws.receive(), 5.0)  # then the server closes
                            if closing.type is WSMsgType.CLOSE:
                                result["close"] = f"close frame with code {closing.data}"
                            else:
                                kind = closing.type.name.lower()
                                result["close"] = f"{kind} without a close frame (code {ws.close_code})"
                            break
                        frames += 1
                        last_cursor = frame["envelope"]["cursor"]
                        if frames >= published:  # no overrun: nothing more is coming
                            result = {"outcome": "got every event (no overrun), still open"}
                            break
                        continue
                    kind = message.type.name.lower()
                    result = {"outcome": f"socket {kind} (code {ws.close_code}) without a diagnostic"}
                    break
            except (TimeoutError, asyncio.CancelledError):
                pass
            except Exception as error:
                result = {"outcome": f"error {type(error).__name__}"}
            result["frames"] = frames
            result["last_cursor"] = last_cursor
            return result

        tasks = [asyncio.create_task(one(ws)) for _, ws in self.subs]
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        unfinished = {"outcome": "still open at the time bound", "frames": -1}
        return {"results": [unfinished if task.cancelled() else task.result() for task in tasks]}

    async def cmd_close(self) -> dict[str, Any]:
        await self._close_all()
        return {}

    async def cmd_exit(self) -> dict[str, Any]:
        return {}

    async def _close_all(self) -> None:
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        self.readers = []

        async def close(ws: Any) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 3.0)

        await asyncio.gather(*(close(ws) for _, ws in self.subs), return_exceptions=True)
        self.subs = []


def subscriber_process(conn: Any, counts: Any, last_recv: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bench ends us
    asyncio.run(SubscriberHost(conn, counts, last_recv).main())


class ClientProcs:
    """The extra client processes holding subscribers, and the counters they share with us."""

    def __init__(self, count: int) -> None:
        ctx = mp.get_context("spawn")
        self.counts = ctx.RawArray("q", MAX_SUBSCRIBERS)
        self.last_recv = ctx.RawArray("q", MAX_SUBSCRIBERS)
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        for _ in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=subscriber_process, args=(child, self.counts, self.last_recv), daemon=True)
            proc.start()
            self.procs.append(proc)
            self.conns.append(parent)

    def command(self, indexes: list[int], *command: Any, timeout: float = COMMAND_TIMEOUT_S) -> list[dict[str, Any]]:
        for i in indexes:
            self.conns[i].send(command)
        replies = []
        for i in indexes:
            if not self.conns[i].poll(timeout):
                raise RuntimeError(f"client process {i} did not answer {command[0]} within {timeout} s")
            reply = self.conns[i].recv()
            if "error" in reply:
                raise RuntimeError(f"client process {i}: {command[0]}: {reply['error']}")
            replies.append(reply)
        return replies

    def split(self, n: int) -> list[tuple[int, int, int]]:
        """(process, first slot, count) for n subscribers spread over the processes."""
        used = min(n, len(self.procs))
        plan, slot = [], 0
        for i in range(used):
            k = n // used + (1 if i < n % used else 0)
            plan.append((i, slot, k))
            slot += k
        return plan

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs if proc.pid is not None]

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.send(("exit",))
        for proc in self.procs:
            proc.join(5.0)
            if proc.is_alive():
                proc.terminate()  # SIGTERM
                proc.join(5.0)
            if proc.is_alive():
                proc.kill()
                proc.join(5.0)


# ------------------------------------------------------------------ publisher


async def publish(
    server: Server,
    worker_id: str,
    *,
    concurrency: int,
    duration: float,
    max_events: int = 10**9,
    gate: tuple[Any, int, int] | None = None,
    content: bytes | None = None,
    into: DriveResult | None = None,
) -> DriveResult:
    """POST input events until ``duration`` or ``max_events``; with ``gate`` (counts, n, window),
    only while the slowest of the n subscribers is fewer than window events behind. Without
    ``content``, each event's content is the time it is sent (monotonic ns)."""
    path = f"/v1/workers/{worker_id}/input"

    def request(index: int) -> bytes:
        body = b'{"kind":"user","content":"%d"}' % time.monotonic_ns() if content is None else content
        return http_request("POST", path, server.address, body)

    def under_window(sent: int) -> bool:
        assert gate is not None
        counts, n, window = gate
        return sent - min(counts[0:n]) < window

    return await drive(
        server.address,
        request,
        connections=concurrency,
        duration_s=duration,
        max_requests=max_events,
        ready=under_window if gate is not None else None,
        into=into,
    )


# ------------------------------------------------------------------ fan-out phase


@dataclass
class CaseResult:
    server: str
    subscribers: int
    round: int
    frames: int
    published: int
    elapsed: float
    p50_ms: float
    p99_ms: float
    server_cpu: float
    client_cpu: float
    other_cpu: float
    outcomes: dict[str, int]
    publish_errors: dict[str, int]
    others: list[str]

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.elapsed if self.elapsed > 0 else 0.0


def wait_drained(clients: ClientProcs, n: int, published: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and min(clients.counts[0:n]) < published:
        time.sleep(0.002)


def run_case(server: Server, clients: ClientProcs, n: int, round_no: int, args: argparse.Namespace) -> CaseResult:
    worker_id = server.create_worker()
    plan = clients.split(n)
    used = [p for p, _, _ in plan]
    for i, first, k in plan:  # sequential per process keeps connect storms small
        clients.command([i], "connect", ws_url(server, worker_id), first, k, True)
    gate = (clients.counts, n, args.window)
    try:
        # Warm-up: same load, not counted.
        warm = asyncio.run(publish(server, worker_id, concurrency=args.concurrency, duration=args.warmup, gate=gate))
        wait_drained(clients, n, warm.sent, DRAIN_TIMEOUT_S)
        clients.command(used, "reset")
        others = other_benchmarks()
        profiler = start_profiler(server, n, args)
        meter = CpuMeter(server.pid, clients.pids)
        result = asyncio.run(
            publish(server, worker_id, concurrency=args.concurrency, duration=args.duration, gate=gate)
        )
        wait_drained(clients, n, result.sent, DRAIN_TIMEOUT_S)
        cpu = meter.stop()
        others = sorted(set(others) | set(other_benchmarks()))
        stop_profiler(profiler)
        replies = clients.command(used, "collect")
    finally:
        clients.command(used, "close")
    last = max((clients.last_recv[s] for s in range(n)), default=0)
    elapsed = (max(last, result.ended_ns) - result.started_ns) / 1e9
    latencies = array.array("q")
    frames = 0
    outcomes: Counter[str] = Counter()
    for reply in replies:
        latencies.frombytes(reply["latencies"])
        frames += reply["received"]
        outcomes.update(reply["outcomes"])
    ordered = sorted(latencies)
    return CaseResult(
        server=server.name,
        subscribers=n,
        round=round_no,
        frames=frames,
        published=result.sent,
        elapsed=elapsed,
        p50_ms=percentile(ordered, 0.50) / 1e6,
        p99_ms=percentile(ordered, 0.99) / 1e6,
        server_cpu=cpu.percent(cpu.server_s),
        client_cpu=cpu.percent(cpu.client_s),
        other_cpu=cpu.percent(cpu.other_s),
        outcomes=dict(outcomes),
        publish_errors=dict(result.errors),
        others=others,
    )


def start_profiler(server: Server, n: int, args: argparse.Namespace) -> subprocess.Popen[bytes] | None:
    """With --profile DIR: py-spy records the server during the measured window (it costs CPU:
    never use a profiled run's figures)."""
    if not args.profile:
        return None
    py_spy = Path(sys.executable).with_name("py-spy")
    out = Path(args.profile) / f"{server.name}-{n}-{time.monotonic_ns()}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            str(py_spy),
            "record",
            "-p",
            str(server.pid),
            "-d",
            str(int(args.duration) + 1),
            "-r",
            "200",
            "--nonblocking",
            "--format",
            "raw",
            "-o",
            str(out),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_profiler(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(10)


# ------------------------------------------------------------------ memory phase


@dataclass
class MemoryResult:
    label: str
    subscribers: int
    published: int = 0
    publish_seconds: float = 0.0
    rss_before: int = 0
    rss_samples: list[tuple[int, int]] = field(default_factory=list)  # (events published, VmRSS KiB)
    rss_after_publish: int = 0
    rss_after_drain: int = 0
    hwm: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    frames: list[int] = field(default_factory=list)
    resume_from: Counter[str] = field(default_factory=Counter)
    close: Counter[str] = field(default_factory=Counter)
    publish_errors: dict[str, int] = field(default_factory=dict)
    overruns: float | None = None
    sessions_after: float | None = None
    ended_note: str = ""


async def publish_sampling(server: Server, worker_id: str, args: argparse.Namespace, out: MemoryResult) -> DriveResult:
    result = DriveResult()

    async def sample() -> None:
        while True:
            out.rss_samples.append((result.sent, rss_kib(server.pid)))
            await asyncio.sleep(args.rss_interval)

    sampler = asyncio.create_task(sample())
    try:
        return await publish(
            server,
            worker_id,
            concurrency=args.concurrency,
            duration=args.mem_time_limit,
            max_events=args.mem_events,
            content=b'{"kind":"user","content":"x"}',
            into=result,
        )
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler


def session_ends(server: Server, n: int, started: float, ended: float) -> str:
    """When the daemon's access log says the WebSocket sessions ended, relative to the publish."""
    if not n or not server.name.startswith("runtimed"):
        return ""
    line = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*GET /v1/workers/[^ ]+/events/ws 101 ([0-9.]+)ms")
    ends = []
    with open(server.log_path, encoding="utf-8", errors="replace") as f:
        for text in f:
            match = line.match(text) if "/events/ws" in text else None
            if match:
                when = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                ends.append((when, float(match.group(2)) / 1000))
    if not ends:
        return ""
    first, last = min(e[0] for e in ends), max(e[0] for e in ends)
    lengths = sorted(e[1] for e in ends)
    return (
        f"The daemon's access log: {len(ends)} sessions ended between {first - started:.1f} s and "
        f"{last - started:.1f} s after publishing began (publishing took {ended - started:.1f} s); sessions lasted "
        f"{lengths[0]:.1f}–{lengths[-1]:.1f} s."
    )


def memory_case(label: str, server: Server, clients: ClientProcs, n: int, args: argparse.Namespace) -> MemoryResult:
    out = MemoryResult(label, n)
    worker_id = server.create_worker()
    plan = clients.split(n) if n else []
    used = [p for p, _, _ in plan]
    try:
        for i, first, k in plan:  # stalled: snapshot read, then nothing
            clients.command([i], "connect", ws_url(server, worker_id), first, k, False)
        time.sleep(args.settle)
        out.rss_before = rss_kib(server.pid)
        publish_started_wall = time.time()
        result = asyncio.run(publish_sampling(server, worker_id, args, out))
        publish_ended_wall = time.time()
        out.published = result.sent
        out.publish_seconds = (result.ended_ns - result.started_ns) / 1e9
        out.publish_errors = dict(result.errors)
        time.sleep(args.settle)
        out.rss_after_publish = rss_kib(server.pid)
        if used:
            replies = clients.command(
                used, "drain", args.drain_time_limit, out.published, args.drain_idle, timeout=args.drain_time_limit + 30
            )
            for r in (r for reply in replies for r in reply["results"]):
                out.outcomes[r["outcome"]] += 1
                out.frames.append(r.get("frames", -1))
                if "diagnostic" in r and "resume_from" in r["diagnostic"]:
                    out.resume_from[r["diagnostic"]["resume_from"]] += 1
                if "close" in r:
                    out.close[r["close"]] += 1
        time.sleep(args.settle)
        out.rss_after_drain = rss_kib(server.pid)
        out.hwm = rss_kib(server.pid, "VmHWM")
        text = server.get_text("/metrics")
        out.overruns = metric(text, "runtimed_subscriber_overruns")
        out.sessions_after = metric(text, "runtimed_websocket_sessions")
        out.ended_note = session_ends(server, n, publish_started_wall, publish_ended_wall)
    finally:
        if used:
            clients.command(used, "close")
    return out


# ------------------------------------------------------------------ report


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def fanout_tables(results: list[CaseResult], sizes: list[int]) -> str:
    def med(server: str, n: int, attr: str) -> float:
        return median(getattr(r, attr) for r in results if r.server == server and r.subscribers == n)

    def latency(server: str, n: int) -> str:
        return f"{med(server, n, 'p50_ms'):.2f} / {med(server, n, 'p99_ms'):.2f}"

    rows = []
    for n in sizes:
        rt, bare = med("runtimed", n, "frames_per_s"), med("bare", n, "frames_per_s")
        ratio = rt / bare if bare else float("nan")
        rows.append(
            [
                n,
                f"{rt:,.0f}",
                f"{bare:,.0f}",
                f"{ratio:.0%}",
                "met" if ratio >= 0.7 else "NOT met",
                latency("runtimed", n),
                latency("bare", n),
                f"{med('runtimed', n, 'server_cpu'):.0f}",
                f"{med('bare', n, 'server_cpu'):.0f}",
            ]
        )
    summary = markdown_table(
        [
            "subscribers",
            "runtimed frames/s",
            "bare frames/s",
            "runtimed / bare",
            "goal ≥ 70 %",
            "runtimed p50 / p99 ms",
            "bare p50 / p99 ms",
            "runtimed server CPU %",
            "bare server CPU %",
        ],
        rows,
        "rrrrlrrrr",
    )

    def case_row(r: CaseResult) -> list[object]:
        cut = ", ".join(f"{k}: {v}" for k, v in r.outcomes.items()) or "0"
        if r.publish_errors:
            cut += "; POST errors " + ", ".join(f"{k}: {v}" for k, v in r.publish_errors.items())
        other = f"{r.other_cpu:.0f}" + (f" ({', '.join(r.others)} running)" if r.others else "")
        return [
            r.subscribers,
            r.server,
            r.round,
            f"{r.published:,}",
            f"{r.frames:,}",
            f"{r.frames_per_s:,.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.server_cpu:.0f}",
            f"{r.client_cpu:.0f}",
            other,
            cut,
        ]

    cases = markdown_table(
        [
            "subscribers",
            "server",
            "round",
            "events published",
            "frames delivered",
            "delivered frames/s",
            "p50 ms",
            "p99 ms",
            "server CPU %",
            "client CPU %",
            "other processes CPU %",
            "subscribers cut off",
        ],
        map(case_row, results),
        "rlrrrrrrrrrl",
    )
    return "\n".join(summary) + "\n\nEvery case (medians above are over the rounds):\n\n" + "\n".join(cases)


def rss_at(m: MemoryResult, events: int) -> int:
    """VmRSS of the first sample taken once ``events`` events were published (0: before)."""
    if events == 0:
        return m.rss_before
    for published, kib in m.rss_samples:
        if published >= events:
            return kib
    return m.rss_samples[-1][1] if m.rss_samples else 0


def memory_tables(results: list[MemoryResult], total: int) -> str:
    marks = [0, total // 4, total // 2, 3 * total // 4, total]
    head = " / ".join(f"{k:,}" for k in marks)
    lines = markdown_table(
        [
            "daemon",
            "stalled subscribers",
            "POST/s",
            f"VmRSS MiB after {head} events",
            "after publishing",
            "after the subscribers read",
            "VmHWM",
        ],
        (
            [
                m.label,
                m.subscribers,
                f"{m.published / m.publish_seconds if m.publish_seconds else 0:,.0f}",
                " / ".join(mib(rss_at(m, k)) for k in marks),
                mib(m.rss_after_publish),
                mib(m.rss_after_drain),
                mib(m.hwm),
            ]
            for m in results
        ),
        "lrrlrrr",
    )
    out = "\n".join(lines)
    control = next((m for m in results if not m.subscribers), None)
    if control is not None:

        def growth(m: MemoryResult, k: int) -> str:
            kib = (rss_at(m, k) - m.rss_before) - (rss_at(control, k) - control.rss_before)
            return f"{kib / 1024:+.1f}"

        out += (
            f"\n\nVmRSS growth since the start minus the control's, MiB, after {head} events "
            "(what the stalled subscribers cost):\n\n"
        )
        rows = ([m.label, *(growth(m, k) for k in marks)] for m in results if m is not control)
        out += "\n".join(markdown_table(["daemon", *(f"{k:,}" for k in marks)], rows))
    for m in results:
        if m.subscribers:
            out += stalled_note(m)
    return out


def stalled_note(m: MemoryResult) -> str:
    frames = sorted(f for f in m.frames if f >= 0)
    spread = f"min {frames[0]}, median {median(frames)}, max {frames[-1]}" if frames else "none"
    out = (
        f"\n\nWhat the {m.subscribers} stalled subscribers of `{m.label}` read once they read again "
        f"(event frames each: {spread} of {m.published:,}):\n\n"
    )
    out += "\n".join(markdown_table(["outcome", "subscribers"], m.outcomes.most_common()))
    if m.resume_from:
        out += "\n\n`resume_from` in the diagnostics: " + ", ".join(
            f"`{k}` ×{v}" for k, v in m.resume_from.most_common(5)
        )
    if m.close:
        out += "\n\nThen: " + ", ".join(f"{k} ×{v}" for k, v in m.close.most_common())
    if m.overruns is not None:
        out += (
            f"\n\nThe daemon's `/metrics` afterwards: runtimed_subscriber_overruns = {m.overruns:.0f}, "
            f"runtimed_websocket_sessions = {m.sessions_after or 0:.0f}"
        )
    if m.ended_note:
        out += "\n\n" + m.ended_note
    if m.publish_errors:
        out += "\n\nPOST errors: " + ", ".join(f"{k}: {v}" for k, v in m.publish_errors.items())
    return out


# ------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser(
        __doc__,
        quick="1 s per case, 1 round, 500-event memory test, short settling, no waiting for quiet",
        duration="seconds of publishing per case [10; quick 1]",
        rounds="rounds, server order alternating [3; quick 1]",
    )
    add = parser.add_argument
    add("--subscribers", default="1,10,100", help="subscriber counts [1,10,100]")
    add("--warmup", type=float, help="seconds of warm-up per case [1; quick 0.2]")
    add("--concurrency", type=int, default=16, help="POSTs in flight [16]")
    add("--window", type=int, default=128, help="most events the slowest subscriber may lag [128]")
    add("--client-procs", type=int, default=2, help="client processes holding the subscribers [2]")
    add("--no-fanout", action="store_true", help="skip the fan-out phase")
    add("--no-memory", action="store_true", help="skip the memory phase")
    add("--mem-events", type=int, help="events published in the memory phase [100000; quick 500]")
    add("--mem-subscribers", type=int, default=100, help="stalled subscribers in the memory phase [100]")
    add("--mem-time-limit", type=float, default=600.0, help="time bound of the memory phase's publishing [600 s]")
    add("--drain-time-limit", type=float, default=60.0, help="time bound of the stalled subscribers' final read [60 s]")
    add("--rss-interval", type=float, default=0.25, help="VmRSS sampling interval [0.25 s]")
    add("--output", help="also write the Markdown report to this file")
    add(
        "--profile",
        metavar="DIR",
        help="py-spy the server during every fan-out case (raw stacks into DIR; figures then are not comparable)",
    )
    add(
        "--quiet-wait",
        type=float,
        help="before each case, wait at most this long for other benchmarks "
        "(rest_bench.py, fs_bench.py, wrk) to end [600 s; quick 0]",
    )
    add("--keep-logs", action="store_true", help="keep the servers' logs (their directory is printed)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.duration = by_mode(args.duration, 10.0, 1.0, quick)
    args.warmup = by_mode(args.warmup, 1.0, 0.2, quick)
    args.rounds = by_mode(args.rounds, 3, 1, quick)
    args.mem_events = by_mode(args.mem_events, 100_000, 500, quick)
    args.quiet_wait = by_mode(args.quiet_wait, 600.0, 0.0, quick)
    args.settle = 0.2 if quick else 1.0  # seconds between the memory phase's steps, for VmRSS to settle
    args.drain_idle = 0.5 if quick else 3.0  # a stalled subscriber's final read ends after this long silent
    args.sizes = [int(s) for s in args.subscribers.split(",")]
    if max(args.sizes) > MAX_SUBSCRIBERS or args.mem_subscribers > MAX_SUBSCRIBERS:
        parser.error(f"at most {MAX_SUBSCRIBERS} subscribers")
    return args


def fanout_phase(args: argparse.Namespace, clients: ClientProcs, log_dir: Path) -> list[CaseResult]:
    fanout: list[CaseResult] = []
    servers = [Server("runtimed", runtimed_argv("serve"), log_dir), Server("bare", bare_argv(), log_dir)]
    try:
        for server in servers:
            server.start()
        log(", ".join(f"{s.name} at {s.address} (pid {s.pid})" for s in servers))
        for round_index in range(args.rounds):
            for n in args.sizes:
                for server in round_order(servers, round_index):
                    wait_for_quiet(args.quiet_wait)
                    case = run_case(server, clients, n, round_index + 1, args)
                    fanout.append(case)
                    log(
                        f"round {round_index + 1} n={n:>3} {server.name:<8} {case.frames_per_s:>10,.0f} frames/s "
                        f"p50 {case.p50_ms:6.2f} ms p99 {case.p99_ms:6.2f} ms server CPU {case.server_cpu:3.0f} % "
                        f"client CPU {case.client_cpu:3.0f} % other {case.other_cpu:3.0f} % "
                        f"{case.outcomes or ''} {case.others or ''}"
                    )
    finally:
        stop_all(servers)
    return fanout


def memory_phase(args: argparse.Namespace, clients: ClientProcs, log_dir: Path) -> list[MemoryResult]:
    config = log_dir / "no-heartbeat.toml"
    config.write_text("[server]\nws_heartbeat_seconds = 0\n")
    cases: list[tuple[str, int, list[str]]] = [
        ("runtimed, no subscriber (control)", 0, []),
        ("runtimed, default config (30 s heartbeat)", args.mem_subscribers, []),
        ("runtimed, heartbeat off", args.mem_subscribers, ["--config", str(config)]),
    ]
    memory: list[MemoryResult] = []
    for label, n, options in cases:
        wait_for_quiet(args.quiet_wait)
        with Server("runtimed", runtimed_argv("serve", *options), log_dir) as server:
            server.start()
            m = memory_case(label, server, clients, n, args)
        memory.append(m)
        peak = max((k for _, k in m.rss_samples), default=0)
        log(
            f"memory {label}: {mib(m.rss_before)} -> {mib(peak)} -> {mib(m.rss_after_publish)} -> "
            f"{mib(m.rss_after_drain)} MiB; {dict(m.outcomes)} {m.ended_note}"
        )
    return memory


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "bench/ws_bench.py", *(argv if argv is not None else sys.argv[1:])])
    started = datetime.datetime.now(datetime.UTC)
    fanout: list[CaseResult] = []
    memory: list[MemoryResult] = []
    log_dir = Path(tempfile.mkdtemp(prefix="ws_bench-"))
    exit_on_sigterm()
    clients = ClientProcs(args.client_procs)
    try:
        if not args.no_fanout:
            fanout = fanout_phase(args, clients, log_dir)
        if not args.no_memory:
            memory = memory_phase(args, clients, log_dir)
    finally:
        clients.close()
        if args.keep_logs:
            print(f"server logs kept in {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)

    cpu = platform.processor() or platform.machine()
    report = [
        f"# Observation WebSocket benchmark ({started:%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `flock /tmp/runtimed-bench.lock {command}` (from the repository root, interpreter {sys.executable}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs {cpu}, {platform.system()} {platform.release()}).",
        "",
        f"Fan-out: {args.duration:g} s per case after {args.warmup:g} s warm-up, {args.rounds} round(s); publisher: "
        f"raw keep-alive HTTP/1.1, {args.concurrency} POSTs in flight, gated to ≤ {args.window} events ahead of the "
        f"slowest subscriber; subscribers: aiohttp client in {args.client_procs} extra process(es). Latency = "
        "subscriber's receive time − publisher's send time (CLOCK_MONOTONIC), over every frame of every subscriber. "
        "CPU % = CPU time of the process(es) / wall time of the case (100 % = one core).",
    ]
    if fanout:
        report += ["", "## Fan-out", "", fanout_tables(fanout, args.sizes)]
    if memory:
        report += [
            "",
            f"## Memory with {args.mem_subscribers} stalled subscribers, {args.mem_events:,} events",
            "",
            f"A fresh daemon per line (memory store); {args.concurrency} POSTs in flight, content `x`; VmRSS from "
            f"/proc/<pid>/status every {args.rss_interval:g} s. The subscribers connect, read their snapshot, then "
            "call nothing (the aiohttp client stops reading the socket once its own buffer is full) until every "
            f"event is published; then they read until every event, a diagnostic, a close, or {args.drain_idle:g} s "
            "of silence. The control daemon shows what the memory store itself keeps (the transcript and the event "
            "log grow with every input).",
            "",
            memory_tables(memory, args.mem_events),
        ]
    text = "\n".join(report) + "\n"
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
