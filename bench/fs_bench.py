#!/usr/bin/env python3
"""Filesystem-store benchmark (issue 4): durable input acks, group commit, restore time.

One run measures, and prints as Markdown tables with the goals and a pass/fail for each:

1. ``POST /v1/workers/{id}/input`` acks per second, p50 and p99, at 1, 16 and 64 concurrent
   clients, each client posting to its own worker, plus one row where 64 clients share one
   worker, against ``python -m runtimed serve --store fs`` and ``--store memory``; next to
   the raw rate of ``write + fsync`` of one small line in a loop in the fs root's directory.
2. The same with a simulated slow disk: ``python tests/slow_disk.py 2 serve --store fs …``
   (runtimed with a 2 ms sleep in every fs store flush).
3. Restore of a root with 10,000 workers x 20 transcript entries: ``Runtime.open(FsStore(root))``
   in a fresh process, and ``runtimed serve --store fs`` from exec to its start-up line.

    python bench/fs_bench.py                # full run: 3 rounds of 8 s per case, 10,000 workers
    python bench/fs_bench.py --quick        # smoke run: 1 round of 1 s per case, 200 workers, 1 restore
    python bench/fs_bench.py --output bench/results/fs.md   # also write the report there

The load generator is wrk (``apt-get install wrk``): one C thread drives every connection, so
on a small machine the client takes little CPU from the daemon (an aiohttp client would need
about as much CPU per request as the server). wrk has no per-connection hook, so a Lua
``request()`` hands out the workers round-robin: with c connections and c workers the c
requests in flight go to (nearly always) c different workers, as with one worker per client.
Without wrk (or with ``--load python``) an asyncio loop in this process does the same, for a
smoke run rather than for figures.

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
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import (
    INPUT_BODY,
    REPO_DIR,
    START_TIMEOUT_S,
    CpuMeter,
    Load,
    LoadResult,
    Server,
    add_load_option,
    bench_parser,
    by_mode,
    cpu_plan,
    cpu_seconds,
    exit_on_sigterm,
    git_revision,
    load_tool,
    load_version,
    log,
    machine_description,
    markdown_table,
    median,
    percentile,
    pinned,
    round_order,
    run_load,
    runtimed_argv,
    stop_all,
)

CONCURRENCY = (1, 16, 64)
SHARED_CLIENTS = 64
SLOW_FLUSH_MS = 2.0
RAW_LINE = b'{"sequence":1,"role":"user","content":"benchmark input","event_id":1}\n'

# Goals (issue 4).
GOAL_FS_VS_MEMORY = 0.70  # fs acks/s at 64 clients >= 70 % of memory's
GOAL_GROUP_COMMIT = 10.0  # with a 2 ms flush: acks/s at 64 clients >= 10x the 1-client rate
GOAL_RESTORE_S = 2.0  # issue 11 (issue 4 had 5 s)


@dataclass
class Settings:
    quick: bool
    duration_s: float
    rounds: int
    workers: int
    entries: int
    restore_repeats: int
    build_timeout_s: float
    server_cpus: set[int] | None
    client_cpus: set[int] | None
    profile_restore: bool
    load: str  # wrk or python


# ------------------------------------------------------------ raw disk loops


def timed_loop(operation: Callable[[], None], duration_s: float, max_ops: int) -> dict[str, Any]:
    """Run ``operation`` again and again (bounded in time and count); its rate and latencies."""
    latencies: list[float] = []
    started = now = time.perf_counter()
    deadline = started + duration_s
    while now < deadline and len(latencies) < max_ops:
        operation()
        after = time.perf_counter()
        latencies.append(after - now)
        now = after
    latencies.sort()
    return {
        "ops": len(latencies),
        "rps": len(latencies) / (now - started),
        "p50_ms": percentile(latencies, 0.5) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
    }


def raw_disk_loop(directory: Path, files: int, duration_s: float, sleep_s: float = 0.0) -> dict[str, Any]:
    """With one file: ``write + fsync`` of one small line, appended to it, in a loop (``sleep_s``
    adds the simulated slow disk's sleep before every fsync). With more: what one fs store flush
    of ``files - 1`` workers' inputs costs the disk at least: one line appended to each of
    ``files - 1`` files, fsynced in parallel on 16 threads, then one line to a last file (the
    event log), fsynced. Operations per second, bounded in time and count."""
    paths = [directory / f"raw-{index}.jsonl" for index in range(files)]
    fds = [os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644) for p in paths]
    *parallel, last = fds
    try:
        with ThreadPoolExecutor(max_workers=16) as pool:

            def flush() -> None:
                for fd in parallel:
                    os.write(fd, RAW_LINE)
                for future in [pool.submit(os.fsync, fd) for fd in parallel]:
                    future.result()
                os.write(last, RAW_LINE)
                if sleep_s:
                    time.sleep(sleep_s)
                os.fsync(last)

            return timed_loop(flush, duration_s, 1_000_000 if files == 1 else 100_000)
    finally:
        for fd in fds:
            os.close(fd)
        for path in paths:
            path.unlink(missing_ok=True)


# ----------------------------------------------------- restore: build, open


async def build_root(root: Path, workers: int, entries: int, timeout_s: float) -> dict[str, Any]:
    """Fill ``root`` through the Runtime (so through the store's group commit): ``workers``
    workers, then ``entries`` inputs to each, many requests in flight at once."""
    sys.path.insert(0, str(REPO_DIR))
    from runtimed.domain.catalog import AssistantIntent, CreateWorkerRequest, RuntimeDefaultProfile
    from runtimed.domain.interaction import InputKind, WorkerInput
    from runtimed.runtime import Runtime
    from runtimed.store.fs import FsStore

    started = time.perf_counter()
    deadline = started + timeout_s
    store = FsStore(root)
    runtime = await Runtime.open(store)
    try:
        request = CreateWorkerRequest(intent=AssistantIntent("benchmark"), profile=RuntimeDefaultProfile())
        refs: list[Any] = []
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
    from runtimed.runtime import Runtime
    from runtimed.store.fs import FsStore

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
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *argv],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ acks


@dataclass
class Daemon:
    server: Server
    own_workers: list[str] = field(default_factory=list)  # one per client
    shared_worker: str = ""

    @property
    def name(self) -> str:
        return self.server.name


CASES = [(f"{c} own", c, False) for c in CONCURRENCY] + [(f"{SHARED_CLIENTS} shared", SHARED_CLIENTS, True)]


def measure_acks(tmp: Path, settings: Settings, raw_log: Path) -> dict[str, Any]:
    fs_root = tmp / "fs-root"
    fs_root.mkdir()
    log("raw write + fsync loops in the fs root's directory")
    raw_time = 0.3 if settings.quick else min(settings.duration_s, 5.0)
    with pinned(settings.server_cpus):
        raw = {
            "fsync": raw_disk_loop(fs_root, 1, raw_time),
            "fsync_slow": raw_disk_loop(fs_root, 1, raw_time, SLOW_FLUSH_MS / 1000),
            "flush64": raw_disk_loop(fs_root, 2 * max(CONCURRENCY) + 1, raw_time),
        }

    daemons = [
        Daemon(Server("memory", runtimed_argv("serve", "--store", "memory"), tmp)),
        Daemon(Server("fs", runtimed_argv("serve", "--store", "fs", "--fs-root", str(fs_root)), tmp)),
        Daemon(
            Server(
                f"fs + {SLOW_FLUSH_MS:g} ms flush",
                runtimed_argv(
                    "serve", "--store", "fs", "--fs-root", str(tmp / "fs-root-slow"), slow_flush_ms=SLOW_FLUSH_MS
                ),
                tmp,
            )
        ),
    ]
    results: dict[str, dict[str, list[LoadResult]]] = {d.name: {key: [] for key, _, _ in CASES} for d in daemons}

    def load(daemon: Daemon, key: str, clients: int, shared: bool, duration_s: float) -> LoadResult:
        ids = [daemon.shared_worker] if shared else daemon.own_workers[:clients]
        return run_load(
            daemon.server,
            Load("POST", tuple(f"/v1/workers/{w}/input" for w in ids), INPUT_BODY),
            connections=clients,
            duration_s=duration_s,
            tool=settings.load,
            cpus=settings.client_cpus,
            raw_log=raw_log,
        )

    try:
        for daemon in daemons:
            daemon.server.start(settings.server_cpus)
            daemon.own_workers = [daemon.server.create_worker() for _ in range(max(CONCURRENCY))]
            daemon.shared_worker = daemon.server.create_worker()
            log(f"{daemon.name}: {daemon.server.base_url}, {len(daemon.own_workers) + 1} workers")
            if not settings.quick:
                load(daemon, *CASES[1], 1)  # warm-up: one short run per daemon, not counted
        for round_index in range(settings.rounds):
            for key, clients, shared in CASES:
                for daemon in round_order(daemons, round_index):
                    result = load(daemon, key, clients, shared, settings.duration_s)
                    results[daemon.name][key].append(result)
                    cpu = result.cpu
                    log(
                        f"round {round_index + 1}/{settings.rounds} {daemon.name:>16} {key:>9}: "
                        f"{result.rps:8,.0f} acks/s  p50 {result.p50_us / 1000:.2f} ms  "
                        f"p99 {result.p99_us / 1000:.2f} ms  other CPU {cpu.percent(cpu.other_s) if cpu else 0:.0f} %"
                        + (f"  {result.errors} errors" if result.errors else "")
                    )
        # Sanity check: every acknowledged input is in a transcript (the load counts only answers).
        for daemon in daemons:
            total = sum(
                daemon.server.request_json("GET", f"/v1/workers/{w}")["worker"]["transcript_len"]
                for w in [*daemon.own_workers, daemon.shared_worker]
            )
            answered = sum(r.requests for runs in results[daemon.name].values() for r in runs)
            log(f"{daemon.name}: {total:,} transcript entries, {answered:,} answers counted (plus warm-up)")
    finally:
        stop_all(d.server for d in daemons)
    return {"raw": raw, "daemons": [d.name for d in daemons], "results": results}


# ------------------------------------------------------------------ restore


def measure_restore(tmp: Path, settings: Settings) -> dict[str, Any]:
    root = tmp / "restore-root"
    log(f"building a root of {settings.workers:,} workers x {settings.entries} entries")
    build = child(
        ["_build", str(root), str(settings.workers), str(settings.entries), str(settings.build_timeout_s)],
        settings.build_timeout_s + 60,
    )
    log(f"built in {build['build_s']:.1f} s ({build['flushes_create']} + {build['flushes_input']} flushes)")
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    files = sum(1 for f in root.rglob("*") if f.is_file())
    opens, open_walls, serves = [], [], []
    other: dict[str, list[float]] = {"open": [], "serve": []}  # CPU % of other processes meanwhile
    for repeat in range(settings.restore_repeats):
        meter = CpuMeter(None)  # the _open child is waited for: client time
        result = child(["_open", str(root)], START_TIMEOUT_S * 2)
        usage = meter.stop()
        open_walls.append(usage.wall_s)
        opens.append(result["open_s"])
        other["open"].append(usage.percent(usage.other_s))
        if result["workers"] != settings.workers:
            raise RuntimeError(f"restored {result['workers']} workers, not {settings.workers}")
        with Server("restore", runtimed_argv("serve", "--store", "fs", "--fs-root", str(root)), tmp) as server:
            meter = CpuMeter(None)
            serves.append(server.start())
            usage = meter.stop()
            other["serve"].append(max(0.0, usage.percent(usage.other_s - cpu_seconds(server.pid))))
            count = server.request_json("GET", "/v1/runtime")["runtime"]["worker_count"]
            if count != settings.workers:
                raise RuntimeError(f"the restored daemon has {count} workers, not {settings.workers}")
        log(
            f"restore {repeat + 1}/{settings.restore_repeats}: Runtime.open {result['open_s']:.2f} s "
            f"(process {open_walls[-1]:.2f} s), serve exec -> listening {serves[-1]:.2f} s; "
            f"other CPU {other['open'][-1]:.0f} % / {other['serve'][-1]:.0f} %"
        )
    profile = None
    if settings.profile_restore:
        profile_path = tmp / "restore.prof"
        child(["_open", str(root), str(profile_path)], START_TIMEOUT_S * 4)
        profile = top_functions(profile_path)
    return {
        "build": build,
        "bytes": size,
        "files": files,
        "open_s": opens,
        "open_process_s": open_walls,
        "serve_s": serves,
        "other": other,
        "profile": profile,
    }


def top_functions(profile_path: Path, count: int = 15) -> str:
    import io
    import pstats

    out = io.StringIO()
    pstats.Stats(str(profile_path), stream=out).sort_stats("tottime").print_stats(count)
    return out.getvalue()


# ------------------------------------------------------------------ report


def verdict(ok: bool) -> str:
    return "**pass**" if ok else "**FAIL**"


def summary(runs: list[LoadResult]) -> dict[str, Any]:
    """The median over the rounds of one daemon and case."""
    cpu = [r.cpu for r in runs if r.cpu is not None]
    return {
        "rps": median(r.rps for r in runs),
        "p50": median(r.p50_us / 1000 for r in runs),
        "p99": median(r.p99_us / 1000 for r in runs),
        "errors": sum(r.errors for r in runs),
        "rounds": [round(r.rps) for r in runs],
        "cpu_us": median(r.per_request_us(r.cpu.server_s) for r in runs if r.cpu),
        "loop_us": median(r.per_request_us(r.cpu.server_main_s) for r in runs if r.cpu),
        "other": max((c.percent(c.other_s) for c in cpu), default=0.0),
    }


def acks_report(acks: dict[str, Any], settings: Settings, goals: list[str]) -> list[str]:
    raw, results, names = acks["raw"], acks["results"], acks["daemons"]
    memory, fs, slow = names
    sums = {name: {key: summary(results[name][key]) for key, _, _ in CASES} for name in names}
    lines = [
        f"### Durable input acks (`POST /v1/workers/{{id}}/input`, {settings.load}, {settings.rounds} round(s) "
        f"of {settings.duration_s:g} s, median)",
        "",
    ]
    rows = []
    for name in names:
        for key, clients, shared in CASES:
            s, m = sums[name][key], sums[memory][key]
            rows.append(
                [
                    name,
                    clients,
                    "one shared" if shared else "one per client",
                    f"{s['rps']:,.0f}",
                    f"{s['rps'] / m['rps'] * 100:.0f} %",
                    f"{s['p50']:.2f}",
                    f"{s['p99']:.2f}",
                    f"{s['cpu_us']:.0f} ({s['loop_us']:.0f} + {s['cpu_us'] - s['loop_us']:.0f})",
                    f"{s['other']:.0f}",
                    s["errors"],
                    ", ".join(f"{v:,}" for v in s["rounds"]),
                ]
            )
    lines += markdown_table(
        [
            "store",
            "clients",
            "workers",
            "acks/s",
            "vs memory",
            "p50 ms",
            "p99 ms",
            "daemon CPU µs/ack (event-loop thread + other threads)",
            "other CPU % (max)",
            "errors",
            "acks/s per round",
        ],
        rows,
        "lrlrrrrrrrl",
    )
    noisy = [
        f"{key} ({r.cpu.percent(r.cpu.other_s):.0f} %)"
        for key, _, _ in CASES
        for r in results[memory][key]
        if r.cpu and r.cpu.other_s > 0.25 * r.cpu.wall_s
    ]
    if noisy:
        lines += [
            "",
            f"⚠ Interference: other processes used CPU during memory-store runs {', '.join(noisy)}; "
            "compare those rounds with care.",
        ]
    lines += [
        "",
        "Load: one thread, c connections; requests go to the c workers round-robin (or always to the shared one).",
        "",
        'Daemon CPU is user + system time of the whole process per acknowledged input; "other '
        'threads" are the fs store\'s writer and fsync threads. "Other CPU" is what the machine '
        "spent outside the daemon and the load generator meanwhile, in % of one CPU: for the fs store the "
        "kernel's journal and writeback threads; anywhere, other processes (a high value in a memory row "
        "means interference).",
        "",
        "Raw disk, same directory as the fs root (one thread, "
        + ("pinned like the daemons" if settings.server_cpus else "unpinned")
        + "):",
        "",
    ]
    top = max(CONCURRENCY)
    loops = [
        ("fsync", f"`write` + `fsync` of one {len(RAW_LINE)}-byte line"),
        ("fsync_slow", f"same + {SLOW_FLUSH_MS:g} ms sleep (the simulated slow disk)"),
        (
            "flush64",
            f"one line to each of {2 * top} files, fsynced on 16 threads, then one more "
            f"(the disk work of one fs flush of {top} workers' inputs)",
        ),
    ]
    lines += markdown_table(
        ["loop", "ops/s", "p50 ms", "p99 ms"],
        ([label, f"{raw[k]['rps']:,.0f}", f"{raw[k]['p50_ms']:.2f}", f"{raw[k]['p99_ms']:.2f}"] for k, label in loops),
    )
    lines.append("")
    pairs = ((f"{top} own", "own workers"), (f"{SHARED_CLIENTS} shared", "one shared worker"))
    for key, label in pairs:
        ratio = sums[fs][key]["rps"] / sums[memory][key]["rps"]
        goals.append(
            f"| fs acks/s at {top} clients ({label}) vs memory's | {ratio * 100:.0f} % "
            f"| ≥ {GOAL_FS_VS_MEMORY * 100:.0f} % | {verdict(ratio >= GOAL_FS_VS_MEMORY)} |"
        )
    for key, label in pairs:
        ratio = sums[slow][key]["rps"] / sums[slow]["1 own"]["rps"]
        goals.append(
            f"| {slow}: acks/s at {top} clients ({label}) vs 1 client | {ratio:.1f}× "
            f"| ≥ {GOAL_GROUP_COMMIT:g}× | {verdict(ratio >= GOAL_GROUP_COMMIT)} |"
        )
    return lines


def restore_report(restore: dict[str, Any], settings: Settings, goals: list[str]) -> list[str]:
    build = restore["build"]
    lines = [
        f"### Restore: {settings.workers:,} workers × {settings.entries} transcript entries "
        f"({restore['files']:,} files, {restore['bytes'] / 1e6:.0f} MB, warm page cache), "
        f"{settings.restore_repeats} runs",
        "",
    ]
    parts = [
        ("(a) `Runtime.open(FsStore(root))` in a fresh process (after imports)", "open_s", "open"),
        ("(a2) the same process from exec to exit", "open_process_s", "open"),
        ("(b) `runtimed serve --store fs` from exec to its start-up line", "serve_s", "serve"),
    ]
    lines += markdown_table(
        ["what", "median s", "max s", "runs", "other CPU % (max)"],
        (
            [
                label,
                f"{median(restore[key]):.2f}",
                f"{max(restore[key]):.2f}",
                ", ".join(f"{v:.2f}" for v in restore[key]),
                f"{max(restore['other'][other]):.0f}",
            ]
            for label, key, other in parts
        ),
        "lrrlr",
    )
    lines += [
        "",
        f"Built in-process through `Runtime` (group commit) in {build['build_s']:.1f} s: "
        f"{settings.workers:,} creates in {build['create_s']:.1f} s ({build['flushes_create']:,} flushes), "
        f"{settings.workers * settings.entries:,} inputs in {build['build_s'] - build['create_s']:.1f} s "
        f"({build['flushes_input']:,} flushes).",
        "",
    ]
    for label, key in (("(a) `Runtime.open`", "open_s"), ("(b) `runtimed serve` to listening", "serve_s")):
        worst = max(restore[key])
        goals.append(
            f"| restore {settings.workers:,} × {settings.entries}: {label}, slowest run | {worst:.2f} s "
            f"| < {GOAL_RESTORE_S:g} s | {verdict(worst < GOAL_RESTORE_S)} |"
        )
    if restore["profile"]:
        lines += ["Restore profile (cProfile, by own time):", "", "```", restore["profile"].strip(), "```", ""]
    return lines


def report(acks: dict[str, Any] | None, restore: dict[str, Any] | None, settings: Settings) -> str:
    goals: list[str] = []
    lines = acks_report(acks, settings, goals) if acks is not None else []
    if restore is not None:
        lines += restore_report(restore, settings, goals)
    head = ["### Goals", "", *markdown_table(["goal", "measured", "target", "result"], [], "lrrl"), *goals, ""]
    return "\n".join(head + lines)


# ------------------------------------------------------------------ main


def parse_args() -> tuple[argparse.Namespace, Settings]:
    parser = bench_parser(
        __doc__,
        quick="1 round of 1 s, no warm-up, 200 workers, 1 restore",
        duration="seconds per load run [8; quick 1]",
        rounds="rounds over every case [3; quick 1]",
    )
    parser.add_argument("--workers", type=int, help="workers in the restore root [10000; quick 200]")
    parser.add_argument("--entries", type=int, default=20, help="transcript entries per worker [20]")
    parser.add_argument("--only", choices=["acks", "restore"], help="run one part only")
    parser.add_argument("--no-pin", action="store_true", help="do not pin daemons to CPU 0 and the load to CPU 1")
    parser.add_argument("--profile-restore", action="store_true", help="also cProfile one Runtime.open")
    parser.add_argument("--output", type=Path, help="also write the report (with date and command) here")
    add_load_option(parser)
    args = parser.parse_args()
    server_cpus, client_cpus = cpu_plan(args.no_pin)
    settings = Settings(
        quick=args.quick,
        duration_s=by_mode(args.duration, 8.0, 1.0, args.quick),
        rounds=by_mode(args.rounds, 3, 1, args.quick),
        workers=by_mode(args.workers, 10_000, 200, args.quick),
        entries=args.entries,
        restore_repeats=1 if args.quick else 3,
        build_timeout_s=300.0 if args.quick else 1800.0,
        server_cpus=server_cpus,
        client_cpus=client_cpus,
        profile_restore=args.profile_restore,
        load=load_tool(args.load) if args.only != "restore" else "none",
    )
    return args, settings


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("_build", "_open"):
        return hidden(sys.argv[1], sys.argv[2:])
    args, settings = parse_args()
    exit_on_sigterm()  # a SIGTERM to the benchmark still stops the daemons and removes the temporary directory
    started = datetime.datetime.now(datetime.UTC)
    tmp = Path(tempfile.mkdtemp(prefix="runtimed-fs-bench-"))
    try:
        acks = measure_acks(tmp, settings, tmp / "load.txt") if args.only != "restore" else None
        restore = measure_restore(tmp, settings) if args.only != "acks" else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    body = report(acks, restore, settings)
    print(body)
    if args.output is not None:
        command = shlex.join(["python", "bench/fs_bench.py", *sys.argv[1:]])
        load = load_version(settings.load) if settings.load != "none" else "no load"
        pinning = " (daemons pinned to CPU 0, the load to CPU 1)" if settings.server_cpus else ""
        header = [
            "# fs store benchmark (issue 4)",
            "",
            f"Measured {started:%Y-%m-%d %H:%M} UTC on {machine_description()}, {load}, runtimed at {git_revision()}.",
            "",
            f"Command (from the repository root): `{command}`{pinning}",
            "",
        ]
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("\n".join(header) + "\n" + body + "\n")
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
