#!/usr/bin/env python3
"""Catalog benchmark: a page of ``GET /v1/workers`` costs the same from a catalog of 100 workers
as from one of 100,000 (contract §11: a page costs O(limit), not O(workers)).

One run starts two ``python -m runtimed serve --bind 127.0.0.1:0`` (same interpreter, memory
store): one given 100 workers, the other 100,000, created through the API, every second one then
stopped. Then wrk loads each case on each server, interleaved (the order alternates from round to
round), and the report compares the big catalog with the small one, by req/s and by the server's
CPU time per request, in the same run:

- ``first_page``: ``?limit=100`` — the first 100 workers;
- ``last_page``: ``?limit=100&after=<the id 100 before the newest>`` — the newest 100;
- ``stopped_page``: ``?status=stopped&limit=50&after=<the middle>`` — 50 of the stopped ones.

    python bench/catalog_bench.py            # 5 s per case, 3 rounds, catalogs of 100 and 100,000
    python bench/catalog_bench.py --quick    # smoke run: 1 s per case, 1 round, 100 and 2,000

All traffic is to 127.0.0.1; every wait is bounded; the servers are stopped (SIGTERM) at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from harness import (
    Load,
    LoadResult,
    Server,
    add_load_option,
    bench_parser,
    by_mode,
    cpu_plan,
    drive,
    exit_on_sigterm,
    fmt_count,
    fmt_pct,
    git_revision,
    http_request,
    load_tool,
    load_version,
    log,
    machine_description,
    markdown_table,
    median,
    pinned,
    round_order,
    run_load,
    runtimed_argv,
    stop_all,
)

SMALL = 100
PAGE = 100
CREATE = b'{"intent":{"kind":"task","objective":"catalog"},"profile":{"kind":"runtime_default"}}'


def worker_id(sequence: int) -> str:
    return f"worker-{sequence:08x}"


def cases(size: int) -> dict[str, str]:
    """The path of each case on a catalog of ``size`` workers."""
    return {
        "first_page": f"/v1/workers?limit={PAGE}",
        "last_page": f"/v1/workers?limit={PAGE}&after={worker_id(size - PAGE)}",
        "stopped_page": f"/v1/workers?status=stopped&limit={PAGE // 2}&after={worker_id(size // 2 - PAGE)}"
        if size >= 2 * PAGE
        else f"/v1/workers?status=stopped&limit={PAGE // 2}",
    }


def fill(server: Server, size: int, cpus: set[int] | None, timeout: float) -> None:
    """Create ``size`` workers, then stop every second one (the even sequences)."""

    def create(_: int) -> bytes:
        return http_request("POST", "/v1/workers", server.address, CREATE)

    def stop(index: int) -> bytes:
        return http_request("POST", f"/v1/workers/{worker_id(2 * (index + 1))}/stop", server.address, b"")

    for what, request, count in (("created", create, size), ("stopped", stop, size // 2)):
        with pinned(cpus):
            run = asyncio.run(drive(server.address, request, connections=16, duration_s=timeout, max_requests=count))
        if run.errors or run.sent < count:
            raise RuntimeError(f"{server.name}: {what} {run.sent} of {count} workers, errors {dict(run.errors)}")
        log(f"{server.name}: {what} {count:,} workers in {(run.ended_ns - run.started_ns) / 1e9:.1f} s")
    summary = server.request_json("GET", "/v1/runtime")["runtime"]
    if (summary["worker_count"], summary["stopped_worker_count"]) != (size, size // 2):
        raise RuntimeError(f"{server.name}: the catalog is not as built: {summary}")


def check_pages(server: Server, size: int) -> None:
    """Every case answers a full page."""
    expected = {"first_page": PAGE, "last_page": PAGE, "stopped_page": PAGE // 2}
    for case, path in cases(size).items():
        page = server.request_json("GET", path)
        statuses = {worker["status"] for worker in page["workers"]}
        if len(page["workers"]) != expected[case] or (case == "stopped_page" and statuses != {"stopped"}):
            raise RuntimeError(f"{server.name}: {path} answered {len(page['workers'])} workers ({statuses})")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser(
        __doc__,
        quick="1 s per case, 1 round, no warm-up, catalogs of 100 and 2,000",
        duration="seconds of load per case and server [5; quick 1]",
        rounds="measurements per case and server [3; quick 1]",
    )
    parser.add_argument("--big", type=int, help="workers of the big catalog [100000; quick 2000]")
    parser.add_argument("--warmup", type=float, help="seconds of unrecorded load before each measurement [1; quick 0]")
    parser.add_argument("--connections", type=int, default=50, help="connections (wrk -c) [50]")
    parser.add_argument("--fill-timeout", type=float, default=600.0, help="seconds allowed to build a catalog [600]")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the servers to CPU 0 and the load elsewhere")
    add_load_option(parser)
    args = parser.parse_args(argv)
    args.duration = by_mode(args.duration, 5.0, 1.0, args.quick)
    args.rounds = by_mode(args.rounds, 3, 1, args.quick)
    args.warmup = by_mode(args.warmup, 1.0, 0.0, args.quick)
    args.big = by_mode(args.big, 100_000, 2_000, args.quick)
    if args.duration < 1 or args.rounds < 1 or args.big < 2 * PAGE:
        parser.error(f"--duration and --rounds must be ≥ 1, --big ≥ {2 * PAGE}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tool = load_tool(args.load)
    server_cpus, client_cpus = cpu_plan(args.no_pin)
    exit_on_sigterm()
    scratch = Path(tempfile.mkdtemp(prefix="catalog_bench-"))
    sizes = {f"{SMALL:,} workers": SMALL, f"{args.big:,} workers": args.big}
    servers = {name: Server(name, runtimed_argv("serve"), scratch) for name in sizes}
    runs: dict[str, dict[str, list[LoadResult]]] = {case: {name: [] for name in sizes} for case in cases(SMALL)}
    try:
        for name, server in servers.items():
            server.start(server_cpus)
            fill(server, sizes[name], client_cpus, args.fill_timeout)
            check_pages(server, sizes[name])
        total, done = len(runs) * len(servers) * args.rounds, 0
        for round_index in range(args.rounds):
            for case in runs:
                for name in round_order(list(servers), round_index):
                    load = Load("GET", (cases(sizes[name])[case],))

                    def load_run(seconds: float, name: str = name, load: Load = load) -> LoadResult:
                        return run_load(
                            servers[name],
                            load,
                            connections=args.connections,
                            duration_s=seconds,
                            tool=tool,
                            cpus=client_cpus,
                        )

                    if args.warmup:
                        load_run(args.warmup)
                    result = load_run(args.duration)
                    runs[case][name].append(result)
                    done += 1
                    cpu = result.per_request_us(result.cpu.server_s) if result.cpu and result.cpu.server_s else None
                    log(
                        f"[{done}/{total}] round {round_index + 1} {case:<13} {name:<16} {result.rps:>9,.0f} req/s"
                        + (f"  {cpu:.0f} µs CPU/req" if cpu else "")
                        + (f"  ERRORS {result.errors}" if result.errors else "")
                    )
    finally:
        stop_all(servers.values())

    small, big = list(sizes)
    rows = []
    errors = 0
    for case, per in runs.items():
        rps = {name: median(r.rps for r in per[name]) for name in sizes}
        cpu = {
            name: median(r.per_request_us(r.cpu.server_s) for r in per[name] if r.cpu and r.cpu.server_s)
            for name in sizes
        }
        errors += sum(r.errors for results in per.values() for r in results)
        rows.append(
            [
                f"`{cases(args.big)[case]}`",
                fmt_count(rps[small]),
                fmt_count(rps[big]),
                fmt_pct(rps[big] / rps[small]),
                fmt_count(cpu[small]),
                fmt_count(cpu[big]),
                fmt_pct(cpu[small] / cpu[big]),
            ]
        )
    header = (
        f"Measured with `python bench/catalog_bench.py {' '.join(argv or sys.argv[1:])}` (git {git_revision()}); "
        f"{machine_description()}; load {load_version(tool)} -c{args.connections} -d{args.duration}s; "
        f"{args.rounds} round(s), median shown."
    )
    table = markdown_table(
        [
            f"case (on {big}; the small catalog's `after` scaled to it)",
            f"{small} req/s",
            f"{big} req/s",
            "req/s ratio (big/small)",
            f"{small} CPU µs",
            f"{big} CPU µs",
            "CPU ratio (small/big)",
        ],
        rows,
    )
    print("\n".join([header, "", *table]))
    if errors:
        print(f"catalog_bench: {errors} errors (non-2xx answers or socket errors)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
