#!/usr/bin/env python3
"""In-process A/B of request handling: what an ``Idempotency-Key`` adds to ``POST …/input``.

The REST benchmark (``rest_bench.py``, wrk over loopback) measures whole requests, and on a
shared machine its figures move by more than the difference looked for here. This drives the
real app (``create_app`` over a real Runtime and the memory store, every middleware, the access
log into a null writer) with requests built in the process (``aiohttp.test_utils``), so no socket,
HTTP parsing or response writing is measured: those are the same for both cases. Batches of each
case alternate, and the median batch gives each case's time per request; the difference is what
the key costs, to be read against a whole request's server CPU time from ``rest_bench.py``.

    python bench/inprocess_bench.py           # 30 batches of 2,000 requests per case
    python bench/inprocess_bench.py --quick   # 3 batches of 200
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request

from runtimed.runtime import Runtime
from runtimed.store import MemoryStore
from runtimed.web.app import create_app

BODY = b'{"kind":"user","content":"benchmark input"}'
CREATE = b'{"intent":{"kind":"task","objective":"x"},"profile":{"kind":"runtime_default"}}'


def no_access_log(method: str, path: str, status: int, seconds: float, route: str) -> None:
    return None


def request(app: web.Application, method: str, path: str, body: bytes, headers: dict[str, str]) -> web.Request:
    protocol: Any = mock.Mock(_reading_paused=False, transport=None)
    payload = StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())
    payload.feed_data(body)
    payload.feed_eof()
    all_headers = {"Host": "127.0.0.1", "Content-Length": str(len(body)), **headers}
    return make_mocked_request(method, path, headers=all_headers, app=app, payload=payload)


async def main(batches: int, size: int) -> int:
    runtime = await Runtime.open(MemoryStore())
    app = create_app(runtime, access_log=no_access_log)
    created = await app._handle(request(app, "POST", "/v1/workers", CREATE, {}))
    assert created.status == 200
    path = "/v1/workers/worker-00000001/input"
    counter = iter(range(10**9))
    cases = {
        "plain": dict,
        "a new key each": lambda: {"Idempotency-Key": f"bench-{next(counter)}"},
        "replayed key": lambda: {"Idempotency-Key": "bench-replayed"},
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for batch in range(batches):
        for name, headers in cases.items() if batch % 2 == 0 else reversed(cases.items()):
            requests = [request(app, "POST", path, BODY, headers()) for _ in range(size)]
            gc.collect()
            started = time.perf_counter_ns()
            for one in requests:
                response = await app._handle(one)
                if response.status != 200:
                    raise RuntimeError(f"{name}: {response.status} {response.text}")
            times[name].append((time.perf_counter_ns() - started) / size / 1000)
    plain = statistics.median(times["plain"])
    print(f"in-process handling of POST …/input, median of {batches} batches of {size:,} (µs per request):")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"- {name}: {median:.1f} µs ({median - plain:+.1f} µs against plain)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 batches of 200 requests per case")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(3, 200) if args.quick else main(30, 2000)))
