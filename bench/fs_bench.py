#!/usr/bin/env python3
"""Filesystem-store benchmark (issue 4): durable input acks, group commit, restore time.

One run measures, and prints as Markdown tables with the goals and a pass/fail for each:

1. ``POST /v1/workers/{id}/input`` acks per second, p50 and p99, at 1, 16 and 64 concurrent
   clients, each client posting to its own worker, plus one row where 64 clients share one
   worker, against ``python -m runtimed serve --store fs`` and ``--store memory``; next to
   the raw rate of ``write + fsync`` of one small line in a loop in the fs root's directory.
2. The same with a simulated slow disk: ``--bench-flush-delay-ms 2`` (a 2 ms sleep in every
   fs store flush).
3. Restore of a root with 10,000 workers x 20 transcript entries: ``Runtime.open(FsStore(root))``
   in a fresh process, and ``runtimed serve --store fs`` from exec to its start-up line.

    python bench/fs_bench.py                # full run: 3 rounds of 8 s per case, 10,000 workers
    python bench/fs_bench.py --quick        # smoke run: 1 round of 2 s per case, 1,000 workers
    python bench/fs_bench.py --output bench/results/fs.md   # also write the report there

The load generator is wrk (``apt-get install wrk``): one C thread drives every connection, so
on a small machine the client takes little CPU from the daemon (an aiohttp client would need
about as much CPU per request as the server). wrk has no per-connection hook, so a Lua
``request()`` hands out the workers round-robin: with c connections and c workers the c
requests in flight go to (nearly always) c different workers, as with one worker per client.

By default the daemons (and the raw fsync loop) are pinned to CPU 0 and wrk to CPU 1
(``--no-pin`` turns this off). Everything lives under a fresh temporary directory that is
deleted at the end; the daemons are stopped with SIGTERM at the end, also on error. All
traffic is to 127.0.0.1. On a shared machine, run it under a lock so benchmarks do not
overlap: ``flock /tmp/runtimed-bench.lock python bench/fs_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
LISTENING = re.compile(r"runtimed listening on (http://\S+) \(runtime (\S+), store (\S+)\)")
RESULT_LINE = re.compile(r"^BENCH_RESULT (\{.*\})$", re.MULTILINE)

START_TIMEOUT_S = 60.0  # a daemon that has not printed its address by then has failed
STOP_TIMEOUT_S = 15.0  # SIGTERM, then SIGKILL after this long
HTTP_TIMEOUT_S = 10.0
WRK_GRACE_S = 30.0  # beyond the wrk duration before wrk is killed
CONCURRENCY = (1, 16, 64)
SHARED_CLIENTS = 64
SLOW_FLUSH_MS = 2.0
RESTORE_REPEATS = 3

INPUT_BODY = '{"kind":"user","content":"benchmark input"}'
CREATE_BODY = '{"intent":{"kind":"assistant","purpose":"benchmark"},"profile":{"kind":"runtime_default"}}'
RAW_LINE = b'{"sequence":1,"role":"user","content":"benchmark input","event_id":1}\n'

# Goals (issue 4).
GOAL_FS_VS_MEMORY = 0.70  # fs acks/s at 64 clients >= 70 % of memory's
GOAL_GROUP_COMMIT = 10.0  # with a 2 ms flush: acks/s at 64 clients >= 10x the 1-client rate
GOAL_RESTORE_S = 5.0

LUA_TEMPLATE = r"""
wrk.method = "POST"
wrk.body = '%(body)s'
wrk.headers["Content-Type"] = "application/json"

local ids = {%(ids)s}
local n = 0
request = function()
  n = n %% #ids + 1
  return wrk.format(nil, "/v1/workers/" .. ids[n] .. "/input")
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%%d,"duration_us":%%d,"p50_us":%%d,"p99_us":%%d,"max_us":%%d,' ..
    '"errors":%%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pin_to(cpus: set[int] | None):
    """A preexec_fn pinning the child (and every thread it starts) to ``cpus``."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


# ------------------------------------------------------------------ daemons


@dataclass
class Daemon:
    name: str
    args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    base_url: str = ""
    own_workers: list[str] = field(default_factory=list)  # one per client
    shared_worker: str = ""


def serve_argv(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "runtimed", "serve", "--bind", "127.0.0.1:0", *args]


def start_daemon(daemon: Daemon, cpus: set[int] | None) -> float:
    """Start ``runtimed serve`` and wait (bounded) for its start-up line; return the seconds
    from exec to that line. stderr goes to a file: nobody has to drain the access log."""
    with open(daemon.log_path, "wb") as out:
        started = time.perf_counter()
        daemon.process = subprocess.Popen(
            serve_argv(daemon.args), cwd=REPO_DIR, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            preexec_fn=pin_to(cpus),
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        match = LISTENING.search(daemon.log_path.read_text(errors="replace"))
        if match:
            elapsed = time.perf_counter() - started
            daemon.base_url = match.group(1)
            if not daemon.base_url.startswith("http://127.0.0.1:"):
                raise RuntimeError(f"{daemon.name} listens on {daemon.base_url}, not 127.0.0.1")
            return elapsed
        if daemon.process.poll() is not None:
            raise RuntimeError(f"{daemon.name} exited with {daemon.process.returncode}:\n{log_tail(daemon)}")
        time.sleep(0.002)
    raise RuntimeError(f"{daemon.name} printed no address within {START_TIMEOUT_S:.0f} s:\n{log_tail(daemon)}")


def stop_daemon(daemon: Daemon) -> None:
    process = daemon.process
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log(f"{daemon.name} ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s; killing it")
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


def log_tail(daemon: Daemon, lines: int = 20) -> str:
    try:
        return "\n".join(daemon.log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def http_json(method: str, url: str, body: str | None = None) -> Any:
    data = body.encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
        return json.loads(response.read())


def create_worker(daemon: Daemon) -> str:
    return http_json("POST", f"{daemon.base_url}/v1/workers", CREATE_BODY)["worker"]["worker_id"]


# ---------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    requests: int
    duration_us: int
    p50_us: int
    p99_us: int
    max_us: int
    errors: int
    cpu_s: float = 0.0  # the daemon's CPU time (user + system, every thread) during the run
    loop_cpu_s: float = 0.0  # the part of it on the event-loop (main) thread
    other_cpu_s: float = 0.0  # CPU the machine spent outside the daemon and wrk meanwhile
    wall_s: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / (self.duration_us / 1e6) if self.duration_us else 0.0


def write_lua(path: Path, worker_ids: list[str]) -> Path:
    ids = ", ".join(f'"{worker_id}"' for worker_id in worker_ids)
    path.write_text(LUA_TEMPLATE % {"body": INPUT_BODY, "ids": ids})
    return path


def daemon_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of the whole process and of its main thread."""
    def ticks(path: str) -> int:
        with open(path) as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)

    hz = os.sysconf("SC_CLK_TCK")
    return ticks(f"/proc/{pid}/stat") / hz, ticks(f"/proc/{pid}/task/{pid}/stat") / hz


def machine_busy_s() -> float:
    """CPU seconds every CPU of the machine has spent busy (not idle, not waiting for I/O)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(daemon: Daemon, script: Path, clients: int, duration_s: float, cpus: set[int] | None,
            raw_log: Path) -> WrkResult:
    assert daemon.process is not None
    cpu_before = daemon_cpu(daemon.process.pid)
    busy_before, children_before, wall_before = machine_busy_s(), children_cpu_s(), time.perf_counter()
    url = f"{daemon.base_url}/v1/workers/{daemon.shared_worker}/input"  # the script sets the path
    argv = ["wrk", "-t1", f"-c{clients}", f"-d{duration_s:g}s", "--timeout", "5s", "--latency", "-s", str(script), url]
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + WRK_GRACE_S,
                               preexec_fn=pin_to(cpus), check=False)
    with raw_log.open("a") as out:
        out.write(f"$ {shlex.join(argv)}\n{completed.stdout}{completed.stderr}\n")
    match = RESULT_LINE.search(completed.stdout)
    if completed.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({completed.returncode}) on {url}:\n{completed.stdout}{completed.stderr}")
    cpu_after = daemon_cpu(daemon.process.pid)
    busy = machine_busy_s() - busy_before
    wrk_cpu = children_cpu_s() - children_before  # wrk: the only child waited for meanwhile
    daemon_cpu_s = cpu_after[0] - cpu_before[0]
    return WrkResult(**json.loads(match.group(1)), cpu_s=daemon_cpu_s, loop_cpu_s=cpu_after[1] - cpu_before[1],
                     other_cpu_s=max(0.0, busy - daemon_cpu_s - wrk_cpu), wall_s=time.perf_counter() - wall_before)


# ------------------------------------------------------------ raw fsync loop


def raw_fsync_loop(directory: Path, duration_s: float, sleep_s: float = 0.0, max_ops: int = 1_000_000) -> dict[str, Any]:
    """``write + fsync`` of one small line, appended to one file, in a loop (bounded in time
    and count); ``sleep_s`` adds the simulated slow disk's sleep before every fsync."""
    path = directory / "raw-fsync.jsonl"
    latencies: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        started = time.perf_counter()
        deadline = started + duration_s
        now = started
        while now < deadline and len(latencies) < max_ops:
            os.write(fd, RAW_LINE)
            if sleep_s:
                time.sleep(sleep_s)
            os.fsync(fd)
            after = time.perf_counter()
            latencies.append(after - now)
            now = after
        elapsed = now - started
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    latencies.sort()
    return {"ops": len(latencies), "rps": len(latencies) / elapsed, "p50_ms": percentile(latencies, 0.5) * 1e3,
            "p99_ms": percentile(latencies, 0.99) * 1e3}


def raw_flush_loop(directory: Path, files: int, duration_s: float, max_ops: int = 100_000) -> dict[str, Any]:
    """What one fs store flush of ``files - 1`` workers' inputs costs the disk at least: one
    line appended to each of ``files - 1`` files, fsynced in parallel on 16 threads, then one
    line to a last file (the event log), fsynced. Flushes per second, bounded in time and count."""
    from concurrent.futures import ThreadPoolExecutor

    paths = [directory / f"raw-{index}.jsonl" for index in range(files)]
    fds = [os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644) for p in paths]
    latencies: list[float] = []
    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            started = time.perf_counter()
            deadline = started + duration_s
            now = started
            while now < deadline and len(latencies) < max_ops:
                for fd in fds[:-1]:
                    os.write(fd, RAW_LINE)
                for future in [pool.submit(os.fsync, fd) for fd in fds[:-1]]:
                    future.result()
                os.write(fds[-1], RAW_LINE)
                os.fsync(fds[-1])
                after = time.perf_counter()
                latencies.append(after - now)
                now = after
            elapsed = now - started
    finally:
        for fd in fds:
            os.close(fd)
        for p in paths:
            p.unlink(missing_ok=True)
    latencies.sort()
    return {"ops": len(latencies), "rps": len(latencies) / elapsed, "p50_ms": percentile(latencies, 0.5) * 1e3,
            "p99_ms": percentile(latencies, 0.99) * 1e3}


def pinned(cpus: set[int] | None, call, *args, **kwargs):
    """Run ``call`` in this thread pinned to ``cpus`` (then unpinned again)."""
    if not cpus:
        return call(*args, **kwargs)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        return call(*args, **kwargs)
    finally:
        os.sched_setaffinity(0, before)


# ----------------------------------------------------- restore: build, open


async def build_root(root: Path, workers: int, entries: int, timeout_s: float) -> dict[str, Any]:
    """Fill ``root`` through the Runtime (so through the store's group commit): ``workers``
    workers, then ``entries`` inputs to each, many requests in flight at once."""
    sys.path.insert(0, str(REPO_DIR))
    from runtimed.domain.catalog import AssistantIntent, CreateWorkerRequest, RuntimeDefaultProfile
    from runtimed.store.fs import FsStore
    from runtimed.domain.interaction import InputKind, WorkerInput
    from runtimed.runtime import Runtime

    started = time.perf_counter()
    deadline = started + timeout_s
    store = FsStore(root)
    runtime = await Runtime.open(store)
    try:
        request = CreateWorkerRequest(intent=AssistantIntent("benchmark"), profile=RuntimeDefaultProfile())
        refs = []
        create_chunk = 1000
        for first in range(0, workers, create_chunk):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"building the root took over {timeout_s:.0f} s")
            details = await asyncio.gather(
                *(runtime.create_worker(request) for _ in range(min(create_chunk, workers - first)))
            )
            refs.extend(detail.worker_ref for detail in details)
        created_s = time.perf_counter() - started
        flushes_after_create = store.flushes
        # Inputs: each chunk sends all of some workers' entries at once (in order per worker),
        # so one flush touches few files but carries many requests.
        group = max(1, 1000 // entries)
        for first in range(0, len(refs), group):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"building the root took over {timeout_s:.0f} s")
            await asyncio.gather(
                *(
                    runtime.send_input(ref, WorkerInput(InputKind.USER, f"entry {index} of {ref.worker_id}"))
                    for ref in refs[first : first + group]
                    for index in range(entries)
                )
            )
        summary = runtime.summary()
    finally:
        await runtime.close()
    return {
        "build_s": time.perf_counter() - started,
        "create_s": created_s,
        "flushes_create": flushes_after_create,
        "flushes_input": store.flushes - flushes_after_create,
        "workers": summary.worker_count,
    }


async def open_root(root: Path, profile_to: Path | None) -> dict[str, Any]:
    """Time ``Runtime.open(FsStore(root))`` (imports done before the clock starts)."""
    sys.path.insert(0, str(REPO_DIR))
    from runtimed.store.fs import FsStore
    from runtimed.runtime import Runtime

    profiler = None
    if profile_to is not None:
        import cProfile

        # The store reads in a worker thread, which cProfile does not see: read on this one.
        async def open_here(self: FsStore, runtime_id: str | None) -> Any:
            return self._open(runtime_id)

        FsStore.open = open_here  # type: ignore[method-assign]
        profiler = cProfile.Profile()
        profiler.enable()
    started = time.perf_counter()
    runtime = await Runtime.open(FsStore(root))
    elapsed = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(str(profile_to))
    summary = runtime.summary()
    events = runtime.events(1, 1).next_cursor
    await runtime.close()
    return {"open_s": elapsed, "workers": summary.worker_count, "events": events}


def child(argv: list[str], timeout_s: float) -> dict[str, Any]:
    """Run this file's hidden subcommand in a fresh interpreter; its last stdout line is JSON."""
    completed = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv], cwd=REPO_DIR,
                               capture_output=True, text=True, timeout=timeout_s, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------- run


@dataclass
class Settings:
    quick: bool
    duration_s: float
    rounds: int
    workers: int
    entries: int
    build_timeout_s: float
    server_cpus: set[int] | None
    client_cpus: set[int] | None
    profile_restore: bool


def measure_acks(tmp: Path, settings: Settings, raw_log: Path) -> dict[str, Any]:
    fs_root = tmp / "fs-root"
    slow_root = tmp / "fs-root-slow"
    fs_root.mkdir()

    log("raw write + fsync loop in the fs root's directory")
    raw_time = min(settings.duration_s, 5.0)
    raw = {
        "fsync": pinned(settings.server_cpus, raw_fsync_loop, fs_root, raw_time),
        "fsync_slow": pinned(settings.server_cpus, raw_fsync_loop, fs_root, raw_time, SLOW_FLUSH_MS / 1000),
        "flush64": pinned(settings.server_cpus, raw_flush_loop, fs_root, 2 * max(CONCURRENCY) + 1, raw_time),
    }

    daemons = [
        Daemon("memory", ["--store", "memory"], tmp / "memory.log"),
        Daemon("fs", ["--store", "fs", "--fs-root", str(fs_root)], tmp / "fs.log"),
        Daemon(f"fs + {SLOW_FLUSH_MS:g} ms flush",
               ["--store", "fs", "--fs-root", str(slow_root), "--bench-flush-delay-ms", f"{SLOW_FLUSH_MS:g}"],
               tmp / "fs-slow.log"),
    ]
    cases = [(f"{c} own", c, False) for c in CONCURRENCY] + [(f"{SHARED_CLIENTS} shared", SHARED_CLIENTS, True)]
    results: dict[str, dict[str, list[WrkResult]]] = {d.name: {key: [] for key, _, _ in cases} for d in daemons}
    try:
        for daemon in daemons:
            start_daemon(daemon, settings.server_cpus)
            daemon.own_workers = [create_worker(daemon) for _ in range(max(CONCURRENCY))]
            daemon.shared_worker = create_worker(daemon)
            log(f"{daemon.name}: {daemon.base_url}, {len(daemon.own_workers) + 1} workers")
        scripts: dict[tuple[str, str], Path] = {}
        for index, daemon in enumerate(daemons):
            for key, clients, shared in cases:
                ids = [daemon.shared_worker] if shared else daemon.own_workers[:clients]
                scripts[daemon.name, key] = write_lua(tmp / f"post-{index}-{key.replace(' ', '-')}.lua", ids)
            # Warm-up: one short run per daemon, not counted.
            run_wrk(daemon, scripts[daemon.name, cases[1][0]], cases[1][1], 1, settings.client_cpus, raw_log)
        for round_index in range(settings.rounds):
            order = daemons if round_index % 2 == 0 else list(reversed(daemons))
            for key, clients, _ in cases:
                for daemon in order:
                    result = run_wrk(daemon, scripts[daemon.name, key], clients, settings.duration_s,
                                     settings.client_cpus, raw_log)
                    results[daemon.name][key].append(result)
                    log(f"round {round_index + 1}/{settings.rounds} {daemon.name:>16} {key:>9}: "
                        f"{result.rps:8,.0f} acks/s  p50 {result.p50_us / 1000:.2f} ms  p99 {result.p99_us / 1000:.2f} ms"
                        + f"  other CPU {result.other_cpu_s / result.wall_s * 100:.0f} %"
                        + (f"  {result.errors} errors" if result.errors else ""))
        # Sanity check: every acknowledged input is in a transcript (wrk counts only answers).
        for daemon in daemons:
            total = sum(http_json("GET", f"{daemon.base_url}/v1/workers/{w}")["worker"]["transcript_len"]
                        for w in daemon.own_workers + [daemon.shared_worker])
            answered = sum(r.requests for runs in results[daemon.name].values() for r in runs)
            log(f"{daemon.name}: {total:,} transcript entries, {answered:,} answers counted by wrk (plus warm-up)")
    finally:
        for daemon in daemons:
            stop_daemon(daemon)
    return {"raw": raw, "cases": cases, "daemons": [d.name for d in daemons], "results": results}


def measure_restore(tmp: Path, settings: Settings) -> dict[str, Any]:
    root = tmp / "restore-root"
    log(f"building a root of {settings.workers:,} workers x {settings.entries} entries")
    build = child(["_build", str(root), str(settings.workers), str(settings.entries), str(settings.build_timeout_s)],
                  settings.build_timeout_s + 60)
    log(f"built in {build['build_s']:.1f} s ({build['flushes_create']} + {build['flushes_input']} flushes)")
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    files = sum(1 for f in root.rglob("*") if f.is_file())
    opens, open_walls, serves = [], [], []
    other: dict[str, list[float]] = {"open": [], "serve": []}  # CPU % of other processes meanwhile
    for repeat in range(RESTORE_REPEATS):
        busy, children, started = machine_busy_s(), children_cpu_s(), time.perf_counter()
        result = child(["_open", str(root)], START_TIMEOUT_S * 2)
        open_walls.append(time.perf_counter() - started)
        opens.append(result["open_s"])
        spent = machine_busy_s() - busy - (children_cpu_s() - children)
        other["open"].append(max(0.0, spent) / open_walls[-1] * 100)
        if result["workers"] != settings.workers:
            raise RuntimeError(f"restored {result['workers']} workers, not {settings.workers}")
        daemon = Daemon("restore", ["--store", "fs", "--fs-root", str(root)], tmp / f"restore-{repeat}.log")
        try:
            busy = machine_busy_s()
            serves.append(start_daemon(daemon, None))
            assert daemon.process is not None
            spent = machine_busy_s() - busy - daemon_cpu(daemon.process.pid)[0]
            other["serve"].append(max(0.0, spent) / serves[-1] * 100)
            summary = http_json("GET", f"{daemon.base_url}/v1/runtime")
            count = summary.get("runtime", summary).get("worker_count")
            if count != settings.workers:
                raise RuntimeError(f"the restored daemon has {count} workers, not {settings.workers}")
        finally:
            stop_daemon(daemon)
        log(f"restore {repeat + 1}/{RESTORE_REPEATS}: Runtime.open {result['open_s']:.2f} s "
            f"(process {open_walls[-1]:.2f} s), serve exec -> listening {serves[-1]:.2f} s; "
            f"other CPU {other['open'][-1]:.0f} % / {other['serve'][-1]:.0f} %")
    profile = None
    if settings.profile_restore:
        profile_path = tmp / "restore.prof"
        child(["_open", str(root), str(profile_path)], START_TIMEOUT_S * 4)
        profile = top_functions(profile_path)
    return {"build": build, "bytes": size, "files": files, "open_s": opens, "open_process_s": open_walls,
            "serve_s": serves, "other": other, "profile": profile}


def top_functions(profile_path: Path, count: int = 15) -> str:
    import io
    import pstats

    out = io.StringIO()
    pstats.Stats(str(profile_path), stream=out).sort_stats("tottime").print_stats(count)
    return out.getvalue()


# ------------------------------------------------------------------ report


def verdict(ok: bool) -> str:
    return "**pass**" if ok else "**FAIL**"


def report(acks: dict[str, Any] | None, restore: dict[str, Any] | None, settings: Settings) -> str:
    lines: list[str] = []
    goals: list[str] = []
    if acks is not None:
        raw, results, cases, names = acks["raw"], acks["results"], acks["cases"], acks["daemons"]
        memory, fs, slow = names

        def summary(name: str, key: str) -> dict[str, float]:
            runs = results[name][key]
            return {"rps": median([r.rps for r in runs]), "p50": median([r.p50_us / 1000 for r in runs]),
                    "p99": median([r.p99_us / 1000 for r in runs]), "errors": sum(r.errors for r in runs),
                    "rounds": [round(r.rps) for r in runs],
                    "cpu_us": median([r.cpu_s / r.requests * 1e6 for r in runs if r.requests]),
                    "loop_us": median([r.loop_cpu_s / r.requests * 1e6 for r in runs if r.requests]),
                    "other": max(r.other_cpu_s / r.wall_s * 100 for r in runs)}

        lines += [
            f"### Durable input acks (`POST /v1/workers/{{id}}/input`, wrk, {settings.rounds} round(s) of "
            f"{settings.duration_s:g} s, median)",
            "",
            "| store | clients | workers | acks/s | vs memory | p50 ms | p99 ms | daemon CPU µs/ack (event-loop thread + other threads) | other CPU % (max) | errors | acks/s per round |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for name in names:
            for key, clients, shared in cases:
                s, m = summary(name, key), summary(memory, key)
                lines.append(
                    f"| {name} | {clients} | {'one shared' if shared else 'one per client'} | {s['rps']:,.0f} "
                    f"| {s['rps'] / m['rps'] * 100:.0f} % | {s['p50']:.2f} | {s['p99']:.2f} "
                    f"| {s['cpu_us']:.0f} ({s['loop_us']:.0f} + {s['cpu_us'] - s['loop_us']:.0f}) | {s['other']:.0f} | {s['errors']} "
                    f"| {', '.join(f'{v:,}' for v in s['rounds'])} |"
                )
        noisy = [f"{key} ({r.other_cpu_s / r.wall_s * 100:.0f} %)" for key, _, _ in cases
                 for r in results[memory][key] if r.other_cpu_s > 0.25 * r.wall_s]
        if noisy:
            lines += ["", f"⚠ Interference: other processes used CPU during memory-store runs {', '.join(noisy)}; "
                          "compare those rounds with care."]
        lines += [
            "",
            "Load: wrk, one thread (`-t1`), c connections; a Lua `request()` hands out the c workers "
            "round-robin (or always the shared one).",
            "",
            "Daemon CPU is user + system time of the whole process per acknowledged input; \"other "
            "threads\" are the fs store's writer and fsync threads. \"Other CPU\" is what the machine "
            "spent outside the daemon and wrk meanwhile, in % of one CPU: for the fs store the kernel's "
            "journal and writeback threads; anywhere, other processes (a high value in a memory row "
            "means interference).",
            "",
            "Raw disk, same directory as the fs root (one thread, " + ("pinned like the daemons" if settings.server_cpus else "unpinned") + "):",
            "",
            "| loop | ops/s | p50 ms | p99 ms |",
            "|---|---:|---:|---:|",
            f"| `write` + `fsync` of one {len(RAW_LINE)}-byte line | {raw['fsync']['rps']:,.0f} | "
            f"{raw['fsync']['p50_ms']:.2f} | {raw['fsync']['p99_ms']:.2f} |",
            f"| same + {SLOW_FLUSH_MS:g} ms sleep (the simulated slow disk) | {raw['fsync_slow']['rps']:,.0f} | "
            f"{raw['fsync_slow']['p50_ms']:.2f} | {raw['fsync_slow']['p99_ms']:.2f} |",
            f"| one line to each of {2 * max(CONCURRENCY)} files, fsynced on 16 threads, then one more "
            f"(the disk work of one fs flush of {max(CONCURRENCY)} workers' inputs) | {raw['flush64']['rps']:,.0f} | "
            f"{raw['flush64']['p50_ms']:.2f} | {raw['flush64']['p99_ms']:.2f} |",
            "",
        ]
        top = max(CONCURRENCY)
        for key, label in ((f"{top} own", "own workers"), (f"{SHARED_CLIENTS} shared", "one shared worker")):
            ratio = summary(fs, key)["rps"] / summary(memory, key)["rps"]
            goals.append(f"| fs acks/s at {top} clients ({label}) vs memory's | {ratio * 100:.0f} % "
                         f"| ≥ {GOAL_FS_VS_MEMORY * 100:.0f} % | {verdict(ratio >= GOAL_FS_VS_MEMORY)} |")
        one = summary(slow, "1 own")["rps"]
        for key, label in ((f"{top} own", "own workers"), (f"{SHARED_CLIENTS} shared", "one shared worker")):
            ratio = summary(slow, key)["rps"] / one
            goals.append(f"| {slow}: acks/s at {top} clients ({label}) vs 1 client | {ratio:.1f}× "
                         f"| ≥ {GOAL_GROUP_COMMIT:g}× | {verdict(ratio >= GOAL_GROUP_COMMIT)} |")
    if restore is not None:
        build = restore["build"]
        lines += [
            f"### Restore: {settings.workers:,} workers × {settings.entries} transcript entries "
            f"({restore['files']:,} files, {restore['bytes'] / 1e6:.0f} MB, warm page cache), {RESTORE_REPEATS} runs",
            "",
            "| what | median s | max s | runs | other CPU % (max) |",
            "|---|---:|---:|---|---:|",
        ]
        for label, values, other in (
            ("(a) `Runtime.open(FsStore(root))` in a fresh process (after imports)", restore["open_s"], restore["other"]["open"]),
            ("(a′) the same process from exec to exit", restore["open_process_s"], restore["other"]["open"]),
            ("(b) `runtimed serve --store fs` from exec to its start-up line", restore["serve_s"], restore["other"]["serve"]),
        ):
            lines.append(f"| {label} | {median(values):.2f} | {max(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} "
                         f"| {max(other):.0f} |")
        lines += [
            "",
            f"Built in-process through `Runtime` (group commit) in {build['build_s']:.1f} s: "
            f"{settings.workers:,} creates in {build['create_s']:.1f} s ({build['flushes_create']:,} flushes), "
            f"{settings.workers * settings.entries:,} inputs in {build['build_s'] - build['create_s']:.1f} s "
            f"({build['flushes_input']:,} flushes).",
            "",
        ]
        for label, values in (("(a) `Runtime.open`", restore["open_s"]), ("(b) `runtimed serve` to listening", restore["serve_s"])):
            worst = max(values)
            goals.append(f"| restore {settings.workers:,} × {settings.entries}: {label}, slowest run | {worst:.2f} s "
                         f"| < {GOAL_RESTORE_S:g} s | {verdict(worst < GOAL_RESTORE_S)} |")
        if restore["profile"]:
            lines += ["Restore profile (cProfile, by own time):", "", "```", restore["profile"].strip(), "```", ""]
    head = ["### Goals", "", "| goal | measured | target | result |", "|---|---:|---:|---|", *goals, ""]
    return "\n".join(head + lines)


def machine_line() -> str:
    try:
        model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    except OSError:
        model = "?"
    return (f"{platform.platform()}, {os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
            f"wrk {subprocess.run(['wrk', '--version'], capture_output=True, text=True).stdout.split()[1]}")


def git_revision() -> str:
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=REPO_DIR, capture_output=True, text=True, check=False).stdout.strip()

    revision = git("rev-parse", "--short", "HEAD") or "?"
    return revision + (" with uncommitted changes in runtimed/" if git("status", "--porcelain", "--", "runtimed") else "")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("_build", "_open"):
        return hidden(sys.argv[1], sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 2 s, 1,000 workers")
    parser.add_argument("--duration", type=float, help="seconds per wrk run [8; quick 2]")
    parser.add_argument("--rounds", type=int, help="rounds over every case [3; quick 1]")
    parser.add_argument("--workers", type=int, help="workers in the restore root [10000; quick 1000]")
    parser.add_argument("--entries", type=int, default=20, help="transcript entries per worker [20]")
    parser.add_argument("--only", choices=["acks", "restore"], help="run one part only")
    parser.add_argument("--no-pin", action="store_true", help="do not pin daemons to CPU 0 and wrk to CPU 1")
    parser.add_argument("--profile-restore", action="store_true", help="also cProfile one Runtime.open")
    parser.add_argument("--output", type=Path, help="also write the report (with date and command) here")
    args = parser.parse_args()
    if shutil.which("wrk") is None and args.only != "restore":
        parser.error("wrk is needed: apt-get install wrk")
    cpus = os.sched_getaffinity(0)
    pin = not args.no_pin and len(cpus) >= 2
    ordered = sorted(cpus)
    settings = Settings(
        quick=args.quick,
        duration_s=args.duration or (2.0 if args.quick else 8.0),
        rounds=args.rounds or (1 if args.quick else 3),
        workers=args.workers or (1000 if args.quick else 10_000),
        entries=args.entries,
        build_timeout_s=300.0 if args.quick else 1800.0,
        server_cpus={ordered[0]} if pin else None,
        client_cpus={ordered[1]} if pin else None,
        profile_restore=args.profile_restore,
    )
    # A SIGTERM to the benchmark still stops the daemons and removes the temporary directory.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = datetime.datetime.now(datetime.timezone.utc)
    tmp = Path(tempfile.mkdtemp(prefix="runtimed-fs-bench-"))
    raw_log = tmp / "wrk.txt"
    try:
        acks = measure_acks(tmp, settings, raw_log) if args.only != "restore" else None
        restore = measure_restore(tmp, settings) if args.only != "acks" else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    body = report(acks, restore, settings)
    print(body)
    if args.output is not None:
        command = shlex.join(["python", "bench/fs_bench.py", *sys.argv[1:]])
        header = [
            "# fs store benchmark (issue 4)",
            "",
            f"Measured {started:%Y-%m-%d %H:%M} UTC on {machine_line()}, runtimed at {git_revision()}.",
            "",
            f"Command (from the repository root): `{command}`"
            + (" (daemons pinned to CPU 0, wrk to CPU 1)" if pin else ""),
            "",
        ]
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("\n".join(header) + body + "\n")
    return 0


def hidden(command: str, argv: list[str]) -> int:
    if command == "_build":
        root, workers, entries, timeout_s = argv
        result = asyncio.run(build_root(Path(root), int(workers), int(entries), float(timeout_s)))
    else:
        result = asyncio.run(open_root(Path(argv[0]), Path(argv[1]) if len(argv) > 1 else None))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
