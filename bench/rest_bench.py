#!/usr/bin/env python3
"""REST benchmark: runtimed against a bare aiohttp server on the same routes, driven by wrk.

One run starts ``python -m runtimed serve --bind 127.0.0.1:0`` and ``bench/bare_server.py``
(same interpreter), reads each one's address from its start-up line, creates three workers on
each (one that takes the POSTed input, one with 100 transcript entries, one with 100,000),
preloads the transcripts through the API, then runs wrk against every case on every server,
interleaved (the order alternates from round to round), and prints a Markdown table.

    python bench/rest_bench.py            # full run: 10 s per case, 3 rounds, 100,000 entries
    python bench/rest_bench.py --quick    # smoke run: 1 s per case, 1 round, 1,000 entries, no warm-up

All traffic is to 127.0.0.1. The servers are stopped with SIGTERM at the end, also on error.
Raw results (JSON, the table, wrk's own output) go to bench/results/<UTC time>/.
wrk is the load generator (``apt-get install wrk``); without it (or with ``--load python``) an
asyncio loop in this process drives the same load, for a smoke run rather than for figures.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import shlex
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import (
    BENCH_DIR,
    INPUT_BODY,
    REPO_DIR,
    Load,
    LoadResult,
    Server,
    add_load_option,
    bare_argv,
    bench_parser,
    by_mode,
    cpu_plan,
    drive,
    exit_on_sigterm,
    fmt_count,
    fmt_ms,
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

SMALL_ENTRIES = 100
TAIL_ITEMS = 100  # the tail page of the big transcript has as many items as the small one
PAGE_LIMIT = 256
GOAL_RATIO = 0.70  # runtimed's req/s against bare's, for GET /v1/runtime and POST …/input


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    role: str  # which worker it reads or writes: "" (none), "input", "small", "big"
    query: str = ""
    #: ``Idempotency-Key`` of each input: none, a new one per request, or one for all (replays).
    idempotency: str = ""  # "" | "unique" | "replayed"

    def load(self, workers: dict[str, str]) -> Load:
        if not self.role:
            return Load("GET", ("/v1/runtime",))
        if self.role == "input":
            path = (f"/v1/workers/{workers['input']}/input",)
            if self.idempotency == "unique":
                return Load("POST", path, INPUT_BODY, unique_header="Idempotency-Key")
            if self.idempotency == "replayed":
                return Load("POST", path, INPUT_BODY, headers=(("Idempotency-Key", "bench-replayed"),))
            return Load("POST", path, INPUT_BODY)
        return Load("GET", (f"/v1/workers/{workers[self.role]}/transcript?{self.query}",))


def build_cases(big_entries: int) -> list[Case]:
    big = f"{big_entries:,}"
    tail = big_entries - TAIL_ITEMS
    return [
        Case("runtime", "GET /v1/runtime", ""),
        Case("input", "POST /v1/workers/{id}/input", "input"),
        Case("input_keyed", "POST …/input, a new Idempotency-Key each", "input", idempotency="unique"),
        Case("input_replayed", "POST …/input, one Idempotency-Key (replays)", "input", idempotency="replayed"),
        Case(
            "transcript_small",
            f"GET transcript?limit=256, {SMALL_ENTRIES} entries ({SMALL_ENTRIES} items)",
            "small",
            f"limit={PAGE_LIMIT}",
        ),
        Case("transcript_big", f"GET transcript?limit=256, {big} entries (256 items)", "big", f"limit={PAGE_LIMIT}"),
        Case(
            "transcript_big_tail",
            f"GET transcript?start={tail}&limit=256, {big} entries ({TAIL_ITEMS} items)",
            "big",
            f"start={tail}&limit={PAGE_LIMIT}",
        ),
    ]


@dataclass
class Target:
    """A server under test and the workers it was given."""

    server: Server
    workers: dict[str, str] = field(default_factory=dict)  # role -> worker_id

    @property
    def name(self) -> str:
        return self.server.name


def preload(target: Target, role: str, count: int, args: argparse.Namespace, cpus: set[int] | None) -> None:
    """POST ``count`` numbered inputs to the worker of ``role``, ``--loader-concurrency`` in flight."""
    server = target.server
    path = f"/v1/workers/{target.workers[role]}/input"

    def request(index: int) -> bytes:
        body = f'{{"kind":"user","content":"preloaded entry {index}"}}'
        return http_request("POST", path, server.address, body.encode())

    with pinned(cpus):
        run = asyncio.run(
            drive(
                server.address,
                request,
                connections=min(args.loader_concurrency, count),
                duration_s=args.preload_timeout,
                max_requests=count,
            )
        )
    seconds = (run.ended_ns - run.started_ns) / 1e9
    if run.errors or run.sent < count:
        raise RuntimeError(
            f"{server.name}: preloading sent {run.sent} of {count} entries in {seconds:.0f} s, "
            f"errors {dict(run.errors)}"
        )
    log(f"{server.name}: preloaded {count:,} entries in {seconds:.1f} s ({count / seconds:,.0f}/s)")


def check_workers(target: Target, big_entries: int) -> None:
    """Each transcript worker holds exactly what was preloaded, and every page has its size."""
    expectations = [
        ("small", 0, SMALL_ENTRIES, SMALL_ENTRIES),
        ("big", 0, big_entries, PAGE_LIMIT),
        ("big", big_entries - TAIL_ITEMS, big_entries, TAIL_ITEMS),
    ]
    for role, start, total_items, items in expectations:
        if role not in target.workers:
            continue
        path = f"/v1/workers/{target.workers[role]}/transcript?start={start}&limit={PAGE_LIMIT}"
        page = target.server.request_json("GET", path)["transcript"]
        if page["total_items"] != total_items or len(page["items"]) != items:
            raise RuntimeError(
                f"{target.name}: {role} transcript from {start} has {page['total_items']} entries "
                f"and {len(page['items'])} items; expected {total_items} and {items}"
            )
    runtime = target.server.request_json("GET", "/v1/runtime")["runtime"]
    if runtime["worker_count"] != len(target.workers):
        raise RuntimeError(f"{target.name}: expected {len(target.workers)} workers, found {runtime['worker_count']}")


# ------------------------------------------------------------------ report


def summarize(runs: list[LoadResult], statistic: str) -> dict[str, Any]:
    """One figure per metric over the rounds: the median, or the best round (``best``: the round
    with the most req/s, and the least CPU per request), since other load only ever slows a run."""
    cpu = [r.per_request_us(r.cpu.server_s) for r in runs if r.cpu is not None and r.cpu.server_s]
    common = {"rps_rounds": [round(r.rps, 1) for r in runs], "errors": sum(r.errors for r in runs)}
    if statistic == "best":
        top = max(runs, key=lambda r: r.rps)
        return {
            "cpu_us_per_request": min(cpu) if cpu else None,
            "rps": top.rps,
            "p50_ms": top.p50_us / 1000,
            "p99_ms": top.p99_us / 1000,
            **common,
        }
    return {
        "cpu_us_per_request": median(cpu) if cpu else None,
        "rps": median(r.rps for r in runs),
        "p50_ms": median(r.p50_us / 1000 for r in runs),
        "p99_ms": median(r.p99_us / 1000 for r in runs),
        **common,
    }


def fmt_latency(summary: dict[str, Any]) -> str:
    flag = f" ⚠ {summary['errors']} errors" if summary["errors"] else ""
    return f"{fmt_ms(summary['p50_ms'])} / {fmt_ms(summary['p99_ms'])} ms{flag}"


def report(
    cases: list[Case],
    names: list[str],
    results: dict[str, dict[str, dict[str, Any]]],
    big_entries: int,
    statistic: str = "median",
) -> str:
    """The Markdown report: the main table, goals, transcript cost, CPU per request, per-round detail."""
    main, ref = names[0], names[1]
    lines = markdown_table(
        ["case", f"{main} req/s", f"{ref} req/s", f"ratio ({main}/{ref})", f"{main} p50 / p99", f"{ref} p50 / p99"],
        (
            [
                case.label,
                fmt_count(a["rps"]),
                fmt_count(b["rps"]),
                fmt_pct(a["rps"] / b["rps"]),
                fmt_latency(a),
                fmt_latency(b),
            ]
            for case in cases
            for a, b in [(results[case.key][main], results[case.key][ref])]
        ),
    )

    lines += ["", "Goals:"]
    for case in cases:
        if case.key in ("runtime", "input"):
            ratio = results[case.key][main]["rps"] / results[case.key][ref]["rps"]
            verdict = "met" if ratio >= GOAL_RATIO else "NOT met"
            lines.append(
                f"- {case.label}: {main} at {fmt_pct(ratio)} of {ref} (goal ≥ {fmt_pct(GOAL_RATIO)}): {verdict}"
            )
    if "transcript_small" in results:
        big = f"{big_entries:,}"
        for name in (main, ref):
            small = results["transcript_small"][name]["rps"]
            parts = []
            if "transcript_big" in results:
                ratio = results["transcript_big"][name]["rps"] / small
                parts.append(
                    f"first page (256 items) at {big} entries: {fmt_pct(ratio)} of the req/s at {SMALL_ENTRIES}"
                )
            if "transcript_big_tail" in results:
                parts.append(
                    f"same-size page ({TAIL_ITEMS} items) at {big} entries: "
                    f"{fmt_pct(results['transcript_big_tail'][name]['rps'] / small)}"
                )
            if parts:
                lines.append(f"- transcript cost, {name}: " + "; ".join(parts))

    if "input" in results:
        for key, what in (("input_keyed", "a new Idempotency-Key each"), ("input_replayed", "replayed")):
            if key not in results:
                continue
            plain, keyed = results["input"][main], results[key][main]
            text = f"- {main} input, {what}: {fmt_pct(keyed['rps'] / plain['rps'])} of the plain input's req/s"
            if plain["cpu_us_per_request"] and keyed["cpu_us_per_request"]:
                extra = keyed["cpu_us_per_request"] / plain["cpu_us_per_request"] - 1
                text += f", {extra:+.0%} CPU per request"
                if key == "input_keyed":
                    text += f" (goal ≤ +10 %: {'met' if extra <= 0.10 else 'NOT met'})"
            lines.append(text)

    if all(results[c.key][name]["cpu_us_per_request"] for c in cases for name in names):
        shown = "median" if statistic == "median" else "least of the rounds"
        cpu = {c.key: {name: results[c.key][name]["cpu_us_per_request"] for name in names} for c in cases}
        lines += [
            "",
            f"Server CPU time per request ({shown}; less sensitive than req/s to other load on the machine):",
            "",
        ]
        lines += markdown_table(
            ["case", *(f"{name} µs" for name in names), f"{main}/{ref}"],
            (
                [
                    c.label,
                    *(fmt_count(cpu[c.key][name]) for name in names),
                    f"{cpu[c.key][main] / cpu[c.key][ref]:.1f}×",
                ]
                for c in cases
            ),
        )

    if len(names) > 2:

        def speedup(row: dict[str, dict[str, Any]], name: str) -> str:
            base, other = row[main], row[name]
            text = f"{other['rps'] / base['rps']:.2f}×"
            if base["cpu_us_per_request"] and other["cpu_us_per_request"]:
                text += f"; {base['cpu_us_per_request'] / other['cpu_us_per_request']:.2f}×"
            return f"{fmt_count(other['rps'])} ({text})"

        lines += ["", f"req/s, and in brackets the speed-up over {main} (req/s ratio; CPU-per-request ratio):", ""]
        lines += markdown_table(
            ["case", *(f"{name} req/s" for name in names)],
            (
                [
                    c.label,
                    fmt_count(results[c.key][main]["rps"]),
                    *(speedup(results[c.key], name) for name in names[1:]),
                ]
                for c in cases
            ),
        )

    shown = "the median" if statistic == "median" else "the best round"
    lines += ["", f"Per-round req/s (the tables show {shown}):", ""]
    for case in cases:
        per_server = "; ".join(
            f"{name} " + ", ".join(fmt_count(v) for v in results[case.key][name]["rps_rounds"]) for name in names
        )
        lines.append(f"- {case.label}: {per_server}")
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser(
        __doc__,
        quick="1 s per case, 1 round, no warm-up, 1,000-entry big transcript (unless given)",
        duration="seconds of load per case and server, whole seconds for wrk [10; quick 1]",
        rounds="measurements per case and server [3; quick 1]",
    )
    parser.add_argument("--warmup", type=float, help="seconds of unrecorded load before each measurement [1; quick 0]")
    parser.add_argument(
        "--statistic",
        choices=("median", "best"),
        default="median",
        help="what the tables show of the rounds: the median, or the best round (for A/B "
        "comparisons on a machine with other load)",
    )
    parser.add_argument("--big-entries", type=int, help="entries of the big transcript [100000; quick 1000]")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (-t) [1]")
    parser.add_argument("--connections", type=int, default=50, help="connections (wrk -c) [50]")
    parser.add_argument(
        "--cases",
        help="comma-separated subset of: runtime,input,input_keyed,input_replayed,transcript_small,transcript_big,"
        "transcript_big_tail",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the servers to CPU 0 and wrk/the loader to the other CPUs"
    )
    parser.add_argument(
        "--runtimed-command",
        default=shlex.join(runtimed_argv("serve")),
        help="how to start runtimed (--bind 127.0.0.1:0 is appended) [python -m runtimed serve]",
    )
    parser.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="another server to measure as well (--bind is appended); repeatable",
    )
    parser.add_argument("--loader-concurrency", type=int, default=16, help="POSTs in flight while preloading [16]")
    parser.add_argument("--preload-timeout", type=float, default=900.0, help="seconds allowed per preload [900]")
    parser.add_argument("--output-dir", type=Path, help="where results go [bench/results/<UTC time>]")
    add_load_option(parser)
    args = parser.parse_args(argv)
    args.duration = by_mode(args.duration, 10.0, 1.0, args.quick)
    args.warmup = by_mode(args.warmup, 1.0, 0.0, args.quick)
    args.rounds = by_mode(args.rounds, 3, 1, args.quick)
    args.big_entries = by_mode(args.big_entries, 100_000, 1_000, args.quick)
    if args.duration < 1 or args.rounds < 1 or args.warmup < 0 or args.big_entries <= TAIL_ITEMS:
        parser.error(f"--duration and --rounds must be ≥ 1, --warmup ≥ 0, --big-entries > {TAIL_ITEMS}")
    if args.threads < 1 or args.connections < args.threads or args.loader_concurrency < 1:
        parser.error("--threads ≥ 1, --connections ≥ --threads and --loader-concurrency ≥ 1 are needed")
    all_cases = build_cases(args.big_entries)
    wanted = args.cases.split(",") if args.cases else [c.key for c in all_cases]
    unknown = set(wanted) - {c.key for c in all_cases}
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    args.case_list = [c for c in all_cases if c.key in wanted]
    args.servers = [("runtimed", shlex.split(args.runtimed_command)), ("bare", bare_argv())]
    for spec in args.server:
        name, sep, command = spec.partition("=")
        if not sep or not name or not command:
            parser.error(f"--server wants NAME=COMMAND, got {spec!r}")
        args.servers.append((name, shlex.split(command)))
    return args


def measure(
    args: argparse.Namespace,
    targets: list[Target],
    tool: str,
    cpus: tuple[set[int] | None, set[int] | None],
    out_dir: Path,
) -> dict[str, dict[str, list[LoadResult]]]:
    """Start the servers, give them their workers, run every case interleaved; stop them in any case."""
    server_cpus, client_cpus = cpus
    cases: list[Case] = args.case_list
    roles = {case.role for case in cases} - {""}
    runs: dict[str, dict[str, list[LoadResult]]] = {c.key: {t.name: [] for t in targets} for c in cases}
    failed = True
    try:
        for target in targets:
            target.server.start(server_cpus)
            log(f"{target.name}: {target.server.base_url}")
        for target in targets:
            for role in sorted(roles):
                target.workers[role] = target.server.create_worker()
            for role, count in (("small", SMALL_ENTRIES), ("big", args.big_entries)):
                if role in roles:
                    preload(target, role, count, args, client_cpus)
            check_workers(target, args.big_entries)

        raw_log = out_dir / "wrk.txt"  # wrk's own output (the Python load writes none)
        total, done = len(cases) * len(targets) * args.rounds, 0
        for round_index in range(args.rounds):
            for case in cases:
                for target in round_order(targets, round_index):
                    load = case.load(target.workers)

                    def load_run(
                        seconds: float, raw: Path | None = None, target: Target = target, load: Load = load
                    ) -> LoadResult:
                        return run_load(
                            target.server,
                            load,
                            connections=args.connections,
                            duration_s=seconds,
                            tool=tool,
                            threads=args.threads,
                            cpus=client_cpus,
                            raw_log=raw,
                        )

                    if args.warmup:
                        load_run(args.warmup)
                    result = load_run(args.duration, raw_log)
                    runs[case.key][target.name].append(result)
                    done += 1
                    cpu = result.per_request_us(result.cpu.server_s) if result.cpu and result.cpu.server_s else None
                    log(
                        f"[{done}/{total}] round {round_index + 1} {case.key:<20} {target.name:<16} "
                        f"{result.rps:>9,.0f} req/s  p50 {result.p50_us / 1000:.2f} ms  "
                        f"p99 {result.p99_us / 1000:.2f} ms"
                        + (f"  {cpu:.0f} µs CPU/req" if cpu else "")
                        + (f"  ERRORS {result.errors}" if result.errors else "")
                    )
        for target in targets:  # the measured workers must still hold what was preloaded
            check_workers(target, args.big_entries)
        failed = False
    finally:
        stop_all(t.server for t in targets)
        if failed:
            for target in targets:
                print(f"--- last lines of {target.name}'s log:\n{target.server.log_tail()}", file=sys.stderr)
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tool = load_tool(args.load)
    cpus = cpu_plan(args.no_pin)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = args.output_dir or BENCH_DIR / "results" / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="rest_bench-"))  # server logs: large (access log), deleted
    targets = [Target(Server(name, argv_, scratch)) for name, argv_ in args.servers]
    exit_on_sigterm()
    meta = {
        "date_utc": stamp,
        "command": shlex.join([Path(sys.executable).name, "bench/rest_bench.py", *(argv or sys.argv[1:])]),
        "git": git_revision(),
        "machine": machine_description(),
        "load": f"{load_version(tool)} -t{args.threads} -c{args.connections} -d{args.duration}s, "
        f"warm-up {args.warmup} s",
        "rounds": args.rounds,
        "statistic": args.statistic,
        "big_entries": args.big_entries,
        "pinning": f"servers on CPU {sorted(cpus[0])}, load and loader on {sorted(cpus[1] or ())}"
        if cpus[0]
        else "none",
        "servers": {t.name: shlex.join(t.server.argv) for t in targets},
    }
    try:
        runs = measure(args, targets, tool, cpus, out_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    results = {key: {name: summarize(r, args.statistic) for name, r in per.items()} for key, per in runs.items()}
    table = report(args.case_list, [t.name for t in targets], results, args.big_entries, args.statistic)
    header = (
        f"Measured {meta['date_utc']} with `{meta['command']}` (git {meta['git']}); {meta['machine']}; "
        f"load {meta['load']}; {meta['rounds']} round(s), {meta['statistic']} shown; {meta['pinning']}."
    )
    print(f"\n{header}\n\n{table}")
    (out_dir / "results.md").write_text(f"{header}\n\n{table}\n")
    (out_dir / "results.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "results": results,
                "runs": {k: {n: [asdict(r) for r in rs] for n, rs in per.items()} for k, per in runs.items()},
            },
            indent=2,
        )
    )
    resolved = out_dir.resolve()
    shown = resolved.relative_to(REPO_DIR) if resolved.is_relative_to(REPO_DIR) else resolved
    print(f"\n(results in {shown})", file=sys.stderr)
    errors = sum(r["errors"] for per in results.values() for r in per.values())
    if errors:
        print(f"rest_bench: {errors} errors (non-2xx answers or socket errors); see wrk.txt", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
