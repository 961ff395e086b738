"""Smoke test of the benchmarks in bench/: each runs in its ``--quick`` mode, exits 0, prints its table.

Every run starts real servers (runtimed, the bare reference) on 127.0.0.1 and loads them for a
second per case; wrk drives the REST and fs loads where it is installed, the harness's asyncio
load generator elsewhere. The figures mean nothing here (the machine is shared, the runs short):
what is checked is that every script, the harness, the bare server, ``tests/slow_disk.py`` and
``bench/runtimed_variant.py`` still work against the current runtimed.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.process

REPO_DIR = Path(__file__).resolve().parent.parent
TIMEOUT_S = 120.0  # one run; each takes 5-25 s on a 2-core machine


def run_bench(script: str, *args: str) -> str:
    """Run ``bench/SCRIPT --quick ARGS`` from the repository root (bounded); its stdout, after it exited 0."""
    completed = subprocess.run(
        [sys.executable, str(REPO_DIR / "bench" / script), "--quick", *args],
        cwd=REPO_DIR,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, f"{script} exited {completed.returncode}:\n{completed.stderr[-4000:]}"
    return completed.stdout


def test_rest_bench(tmp_path: Path) -> None:
    out = run_bench("rest_bench.py", "--output-dir", str(tmp_path))
    assert "| case | runtimed req/s | bare req/s | ratio (runtimed/bare) |" in out
    for label in (
        "GET /v1/runtime",
        "POST /v1/workers/{id}/input",
        "POST …/input, a new Idempotency-Key each",
        "POST …/input, one Idempotency-Key (replays)",
        "GET transcript?start=900&limit=256",
    ):
        assert f"| {label}" in out
    assert "- runtimed input, a new Idempotency-Key each: " in out
    assert (tmp_path / "results.md").read_text().strip() in out


def test_rest_bench_python_load_and_variant(tmp_path: Path) -> None:
    """The load generator for machines without wrk, and a third server: runtimed_variant.py."""
    variant = shlex.join([sys.executable, "bench/runtimed_variant.py", "--orjson", "--no-access-log", "serve"])
    out = run_bench(
        "rest_bench.py",
        "--load",
        "python",
        "--cases",
        "runtime",
        "--server",
        f"variant={variant}",
        "--output-dir",
        str(tmp_path),
    )
    assert "load python asyncio loop" in out
    assert "| case | runtimed req/s | bare req/s | variant req/s |" in out


def test_catalog_bench() -> None:
    out = run_bench("catalog_bench.py")
    assert "| 100 workers req/s | 2,000 workers req/s | req/s ratio (big/small) |" in out
    assert "| `/v1/workers?status=stopped&limit=50&after=worker-00000384` |" in out


def test_ws_bench() -> None:
    out = run_bench("ws_bench.py")
    assert "| subscribers | runtimed frames/s | bare frames/s | runtimed / bare |" in out
    assert "| 100 | runtimed | 1 |" in out
    assert "| runtimed, heartbeat off | 100 |" in out


def test_fs_bench() -> None:
    out = run_bench("fs_bench.py")
    assert "| goal | measured | target | result |" in out
    assert "| fs + 2 ms flush | 64 | one shared |" in out  # runtimed through tests/slow_disk.py
    assert "| (b) `runtimed serve --store fs` from exec to its start-up line |" in out


def test_wal_bench() -> None:
    out = run_bench("wal_bench.py")
    assert "| fs observations/s, 64 workers, vs memory's |" in out
    assert "| as the process left it (killed: a log tail past the last checkpoint) |" in out


def test_agents_bench() -> None:
    out = run_bench("agents_bench.py", "--agents", "2", "--turns", "5")
    assert "| store | first delta p50 ms |" in out
    assert "| memory | " in out and "| fs | " in out
    assert "200 / 200 | 0 |" in out  # every chunk of /stream 100 on both agents, no overrun
