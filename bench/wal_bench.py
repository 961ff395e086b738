#!/usr/bin/env python3
"""The fs store's write-ahead log (issue 11): observations per second, and restore after a long history.

1. Observations per second: 64 workers, each publishing small events (``text_delta``) through
   ``Runtime.observe`` as fast as it can, in one process, for a time; the memory store and the
   fs store, rounds interleaved. Every observation the fs store acknowledges is durable first.
2. Restore after a long history: 10 workers take ``--inputs`` inputs (1,000,000) through the
   Runtime over the fs store, checkpointed as it runs; the process then ends without closing
   the store (as a kill would: the log keeps a tail past the last checkpoint). ``Runtime.open``
   of that root, in a fresh process, against the same root once a clean close has checkpointed
   everything (the same state, no history in the log), rounds interleaved.

    python bench/wal_bench.py                # full run: 3 rounds of 5 s, 1,000,000 inputs
    python bench/wal_bench.py --quick        # smoke run: 1 round of 1 s, 20,000 inputs
    python bench/wal_bench.py --output bench/results/wal.md

The measuring processes are pinned to CPU 0 (``--no-pin`` turns this off). Everything lives under
a fresh temporary directory that is deleted at the end. On a shared machine, run it under a lock
so benchmarks do not overlap: ``flock /tmp/runtimed-bench.lock python bench/wal_bench.py``.
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
from pathlib import Path
from typing import Any

from harness import (
    REPO_DIR,
    bench_parser,
    by_mode,
    cpu_plan,
    git_revision,
    log,
    machine_description,
    markdown_table,
    median,
    pin_to,
    round_order,
)

WORKERS = 64
HISTORY_WORKERS = 10
GOAL_OBSERVE_VS_MEMORY = 0.70
GOAL_HISTORY_RESTORE_S = 3.0
CHILD_TIMEOUT_S = 1800.0


# ------------------------------------------------------------ in the child


async def observe_rate(store_kind: str, root: Path, duration_s: float) -> dict[str, Any]:
    """Observations per second: ``WORKERS`` tasks, each on its own worker, ``observe`` in a loop."""
    sys.path.insert(0, str(REPO_DIR))
    from runtimed.domain.catalog import AssistantIntent, CreateWorkerRequest, RuntimeDefaultProfile
    from runtimed.runtime import Runtime
    from runtimed.store import FsStore, MemoryStore, Store

    store: Store = FsStore(root) if store_kind == "fs" else MemoryStore()
    runtime = await Runtime.open(store)
    request = CreateWorkerRequest(intent=AssistantIntent("benchmark"), profile=RuntimeDefaultProfile())
    refs = [(await runtime.create_worker(request)).worker_ref for _ in range(WORKERS)]
    counts = [0] * WORKERS
    flushes = store.flushes
    cpu_started = time.process_time()
    started = time.perf_counter()
    deadline = started + duration_s

    async def publish(index: int) -> None:
        ref = refs[index]
        n = 0
        while time.perf_counter() < deadline:
            await runtime.observe(ref, "text_delta", {"text": "x"})
            n += 1
            if n % 64 == 0:
                await asyncio.sleep(0)  # a store that never suspends (memory) still shares the loop
        counts[index] = n

    await asyncio.gather(*(publish(i) for i in range(WORKERS)))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    total = sum(counts)
    await runtime.close()
    return {
        "rate": total / elapsed,
        "total": total,
        "flushes": store.flushes - flushes,
        "cpu_us": cpu / max(total, 1) * 1e6,
    }


async def build_history(root: Path, inputs: int) -> dict[str, Any]:
    """``inputs`` inputs on ``HISTORY_WORKERS`` workers through the Runtime over the fs store
    (checkpointed as it runs); then the process ends without closing the store, as a kill would."""
    sys.path.insert(0, str(REPO_DIR))
    from runtimed.domain.catalog import AssistantIntent, CreateWorkerRequest, RuntimeDefaultProfile
    from runtimed.domain.interaction import InputKind, WorkerInput
    from runtimed.runtime import Runtime
    from runtimed.store import FsStore

    store = FsStore(root)
    runtime = await Runtime.open(store)
    request = CreateWorkerRequest(intent=AssistantIntent("benchmark"), profile=RuntimeDefaultProfile())
    refs = [(await runtime.create_worker(request)).worker_ref for _ in range(HISTORY_WORKERS)]
    started = time.perf_counter()
    batch = 1000
    sent = 0
    while sent < inputs:
        count = min(batch, inputs - sent)
        await asyncio.gather(
            *(
                runtime.send_input(refs[(sent + i) % HISTORY_WORKERS], WorkerInput(InputKind.USER, f"input {sent + i}"))
                for i in range(count)
            )
        )
        sent += count
    return {
        "build_s": time.perf_counter() - started,
        "checkpoints": store.checkpoints,
        "flushes": store.flushes,
        "pending": len(store._pending),
    }


async def open_only(root: Path) -> dict[str, Any]:
    """Time ``Runtime.open``, then end the process without closing (the root stays as it was)."""
    sys.path.insert(0, str(REPO_DIR))
    import runtimed.store.fs.store as fs_store
    from runtimed.runtime import Runtime
    from runtimed.store import FsStore

    fs_store.CHECKPOINT_SECONDS = 3600.0  # no checkpoint while measuring: the root must stay as it is
    store = FsStore(root)
    cpu_started = time.process_time()
    started = time.perf_counter()
    runtime = await Runtime.open(store)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return {
        "open_s": elapsed,
        "cpu_s": cpu,
        "events": len(runtime._events),
        "replayed": len(store._pending),
        "segments": len(store._log.segments) if store._log else 0,
    }


async def close_cleanly(root: Path) -> dict[str, Any]:
    sys.path.insert(0, str(REPO_DIR))
    from runtimed.runtime import Runtime
    from runtimed.store import FsStore

    runtime = await Runtime.open(FsStore(root))
    await runtime.close()
    return {}


def hidden(command: str, argv: list[str]) -> int:
    if command == "_observe":
        result = asyncio.run(observe_rate(argv[0], Path(argv[1]), float(argv[2])))
    elif command == "_history":
        result = asyncio.run(build_history(Path(argv[0]), int(argv[1])))
    elif command == "_open":
        result = asyncio.run(open_only(Path(argv[0])))
    else:
        result = asyncio.run(close_cleanly(Path(argv[0])))
    print(json.dumps(result), flush=True)
    os._exit(0)  # no close, no final checkpoint: the root stays as a kill would leave it


def child(argv: list[str], cpus: set[int] | None) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, __file__, *argv],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        preexec_fn=pin_to(cpus),
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


# ------------------------------------------------------------ the parent


def measure_observe(tmp: Path, args: argparse.Namespace, cpus: set[int] | None) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {"memory": [], "fs": []}
    for round_index in range(args.rounds):
        for kind in round_order(["memory", "fs"], round_index):
            root = tmp / f"observe-{kind}-{round_index}"
            result = child(["_observe", kind, str(root), str(args.duration)], cpus)
            shutil.rmtree(root, ignore_errors=True)
            results[kind].append(result)
            log(
                f"round {round_index + 1}/{args.rounds} {kind:>6}: {result['rate']:,.0f} observations/s, "
                f"{result['cpu_us']:.0f} µs CPU each, {result['flushes']:,} flushes"
            )
    return results


def measure_history(tmp: Path, args: argparse.Namespace, cpus: set[int] | None) -> dict[str, Any]:
    killed = tmp / "history-killed"
    log(f"building a history of {args.inputs:,} inputs on {HISTORY_WORKERS} workers")
    build = child(["_history", str(killed), str(args.inputs)], cpus)
    log(f"built in {build['build_s']:.1f} s: {build['checkpoints']} checkpoints, {build['flushes']:,} flushes")
    clean = tmp / "history-clean"
    shutil.copytree(killed, clean)
    child(["_close", str(clean)], cpus)
    sizes = {
        name: sum(p.stat().st_size for p in (tmp / f"history-{name}").rglob("*") if p.is_file())
        for name in ("killed", "clean")
    }
    runs: dict[str, list[dict[str, Any]]] = {"killed": [], "clean": []}
    for round_index in range(args.rounds):
        for name in round_order(["killed", "clean"], round_index):
            result = child(["_open", str(tmp / f"history-{name}")], cpus)
            runs[name].append(result)
            log(
                f"round {round_index + 1}/{args.rounds} {name:>7}: open {result['open_s']:.2f} s "
                f"({result['cpu_s']:.2f} s CPU), {result['events']:,} events, {result['replayed']:,} replayed"
            )
    return {"build": build, "runs": runs, "bytes": sizes}


def report(observe: dict[str, Any] | None, history: dict[str, Any] | None, args: argparse.Namespace) -> str:
    goals: list[str] = []
    lines: list[str] = []
    if observe is not None:
        memory = median(r["rate"] for r in observe["memory"])
        fs = median(r["rate"] for r in observe["fs"])
        ratio = fs / memory
        goals.append(
            f"| fs observations/s, {WORKERS} workers, vs memory's | {ratio * 100:.0f} % "
            f"| ≥ {GOAL_OBSERVE_VS_MEMORY * 100:.0f} % | {'met' if ratio >= GOAL_OBSERVE_VS_MEMORY else '**FAIL**'} |"
        )
        lines += [
            f"### Observations per second ({WORKERS} workers, `Runtime.observe` in a loop each, in-process, "
            f"{args.rounds} round(s) of {args.duration:g} s, median)",
            "",
            *markdown_table(
                ["store", "observations/s", "vs memory", "process CPU µs each", "flushes (last round)", "per round"],
                [
                    [
                        kind,
                        f"{median(r['rate'] for r in observe[kind]):,.0f}",
                        f"{median(r['rate'] for r in observe[kind]) / memory * 100:.0f} %",
                        f"{median(r['cpu_us'] for r in observe[kind]):.0f}",
                        f"{observe[kind][-1]['flushes']:,}",
                        ", ".join(f"{r['rate']:,.0f}" for r in observe[kind]),
                    ]
                    for kind in ("memory", "fs")
                ],
                "lrrrrl",
            ),
            "",
        ]
    if history is not None:
        runs = history["runs"]
        killed = max(r["open_s"] for r in runs["killed"])
        clean = median(r["open_s"] for r in runs["clean"])
        killed_median = median(r["open_s"] for r in runs["killed"])
        goals.append(
            f"| restore after {args.inputs:,} inputs on {HISTORY_WORKERS} workers, slowest run | {killed:.2f} s "
            f"| < {GOAL_HISTORY_RESTORE_S:g} s | {'met' if killed < GOAL_HISTORY_RESTORE_S else '**FAIL**'} |"
        )
        goals.append(
            f"| the same vs the same state with no history in the log (medians) | {killed_median / clean:.2f}× "
            f"| ≤ 1.1× | {'met' if killed_median <= 1.1 * clean else '**FAIL**'} |"
        )
        build = history["build"]
        lines += [
            f"### Restore after {args.inputs:,} inputs on {HISTORY_WORKERS} workers ({args.rounds} round(s))",
            "",
            *markdown_table(
                ["root", "MB", "`Runtime.open` s (median)", "CPU s (median)", "runs", "changes replayed", "segments"],
                [
                    [
                        label,
                        f"{history['bytes'][name] / 1e6:.0f}",
                        f"{median(r['open_s'] for r in runs[name]):.2f}",
                        f"{median(r['cpu_s'] for r in runs[name]):.2f}",
                        ", ".join(f"{r['open_s']:.2f}" for r in runs[name]),
                        f"{runs[name][-1]['replayed']:,}",
                        runs[name][-1]["segments"],
                    ]
                    for name, label in (
                        ("killed", "as the process left it (killed: a log tail past the last checkpoint)"),
                        ("clean", "the same after a clean close (everything checkpointed)"),
                    )
                ],
                "lrrrlrr",
            ),
            "",
            f"Built in-process through `Runtime.send_input` (1,000 in flight) in {build['build_s']:.0f} s: "
            f"{build['flushes']:,} flushes, {build['checkpoints']:,} checkpoints, "
            f"{build['pending']:,} changes past the last one when the process ended.",
            "",
        ]
    head = ["### Goals", "", *markdown_table(["goal", "measured", "target", "result"], [], "lrrl"), *goals, ""]
    return "\n".join(head + lines)


def parse_args() -> argparse.Namespace:
    parser = bench_parser(
        __doc__,
        quick="1 round of 1 s, 20,000 inputs",
        duration="seconds per observation run [5; quick 1]",
        rounds="rounds [3; quick 1]",
    )
    parser.add_argument("--inputs", type=int, help="inputs in the history [1,000,000; quick 20,000]")
    parser.add_argument("--only", choices=["observe", "history"], help="run one part only")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the measuring processes to CPU 0")
    parser.add_argument("--output", type=Path, help="also write the report (with date and command) here")
    args = parser.parse_args()
    args.duration = by_mode(args.duration, 5.0, 1.0, args.quick)
    args.rounds = by_mode(args.rounds, 3, 1, args.quick)
    args.inputs = by_mode(args.inputs, 1_000_000, 20_000, args.quick)
    return args


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("_observe", "_history", "_open", "_close"):
        return hidden(sys.argv[1], sys.argv[2:])
    args = parse_args()
    cpus, _ = cpu_plan(args.no_pin)
    started = datetime.datetime.now(datetime.UTC)
    tmp = Path(tempfile.mkdtemp(prefix="runtimed-wal-bench-"))
    try:
        observe = measure_observe(tmp, args, cpus) if args.only != "history" else None
        history = measure_history(tmp, args, cpus) if args.only != "observe" else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    body = report(observe, history, args)
    print(body)
    if args.output is not None:
        command = shlex.join(["python", "bench/wal_bench.py", *sys.argv[1:]])
        pinning = " (measuring processes pinned to CPU 0)" if cpus else ""
        header = [
            "# fs store write-ahead log benchmark (issue 11)",
            "",
            f"Measured {started:%Y-%m-%d %H:%M} UTC on {machine_description()}, runtimed at {git_revision()}.",
            "",
            f"Command (from the repository root): `{command}`{pinning}",
            "",
        ]
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("\n".join(header) + "\n" + body + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
