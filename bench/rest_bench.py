#!/usr/bin/env python3
"""REST benchmark: runtimed against a bare aiohttp server on the same routes, driven by wrk.

One run starts ``python -m runtimed serve --bind 127.0.0.1:0`` and ``bench/bare_server.py``
(same interpreter), reads each one's address from its start-up line, creates three workers on
each (one that takes the POSTed input, one with 100 transcript entries, one with 100,000),
preloads the transcripts through the API, then runs wrk against every case on every server,
interleaved (the order alternates from round to round), and prints a Markdown table.

    python bench/rest_bench.py            # full run: 10 s per case, 3 rounds, 100,000 entries
    python bench/rest_bench.py --quick    # smoke run: 2 s per case, 1 round, 10,000 entries

All traffic is to 127.0.0.1. The servers are stopped with SIGTERM at the end, also on error.
Raw results (JSON, the table, wrk's own output) go to bench/results/<UTC time>/.
wrk is needed: ``apt-get install wrk`` (Debian/Ubuntu), ``brew install wrk`` (macOS).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
LISTENING = re.compile(r"listening on http://(\S+)")
RESULT_LINE = re.compile(r"^BENCH_RESULT (\{.*\})$", re.MULTILINE)

START_TIMEOUT_S = 30.0  # a server that has not printed its address by then has failed
STOP_TIMEOUT_S = 10.0  # SIGTERM, then SIGKILL after this long
HTTP_TIMEOUT_S = 10.0  # one set-up request
WRK_GRACE_S = 30.0  # beyond the wrk duration before wrk is killed
SMALL_ENTRIES = 100
TAIL_ITEMS = 100  # the tail page of the big transcript has as many items as the small one
PAGE_LIMIT = 256

INPUT_BODY = '{"kind":"user","content":"benchmark input"}'
CREATE_BODY = '{"intent":{"kind":"assistant","purpose":"benchmark"},"profile":{"kind":"runtime_default"}}'

# wrk prints this line from done(): exact counts and latencies in microseconds, parsed below.
LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"max_us":%d,"mean_us":%.1f,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""
LUA_POST_INPUT = f"""
wrk.method = "POST"
wrk.body = '{INPUT_BODY}'
wrk.headers["Content-Type"] = "application/json"
"""


# ------------------------------------------------------------------ servers


@dataclass
class Server:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    base_url: str = ""
    workers: dict[str, str] = field(default_factory=dict)  # role -> worker_id


def pin_to(cpus: set[int] | None):
    """A preexec_fn that pins the child (and every thread it starts) to ``cpus``."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def start_server(server: Server, cpus: set[int] | None) -> None:
    """Start the server on 127.0.0.1 port 0 and wait (bounded) for its start-up line."""
    argv = server.argv + ["--bind", "127.0.0.1:0"]
    # stderr goes to a file, not a pipe: runtimed writes an access-log line per request, and a
    # pipe nobody drains would block it.
    log = open(server.log_path, "wb")
    try:
        server.process = subprocess.Popen(
            argv, cwd=REPO_DIR, stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=pin_to(cpus)
        )
    finally:
        log.close()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        match = LISTENING.search(server.log_path.read_text(errors="replace"))
        if match:
            server.base_url = "http://" + match.group(1)
            if not server.base_url.startswith("http://127.0.0.1:"):
                raise RuntimeError(f"{server.name} listens on {server.base_url}, not 127.0.0.1")
            return
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{log_tail(server)}")
        time.sleep(0.05)
    raise RuntimeError(f"{server.name} printed no address within {START_TIMEOUT_S:.0f} s:\n{log_tail(server)}")


def stop_server(server: Server) -> None:
    process = server.process
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"{server.name} ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s; killing it", file=sys.stderr)
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


def log_tail(server: Server, lines: int = 20) -> str:
    try:
        return "\n".join(server.log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ------------------------------------------------------------ HTTP set-up


def http_json(method: str, url: str, body: str | None = None) -> Any:
    data = body.encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
        return json.loads(response.read())


def create_worker(server: Server) -> str:
    return http_json("POST", f"{server.base_url}/v1/workers", CREATE_BODY)["worker"]["worker_id"]


async def preload(base_url: str, worker_id: str, count: int, concurrency: int, timeout_s: float) -> float:
    """POST ``count`` inputs to a worker with at most ``concurrency`` in flight; return the seconds taken."""
    import aiohttp  # runtimed's own dependency; only needed here

    url = f"{base_url}/v1/workers/{worker_id}/input"
    indexes = iter(range(count))  # shared by the senders: each index is sent exactly once
    started = time.monotonic()
    deadline = started + timeout_s

    async def sender(session: aiohttp.ClientSession) -> None:
        for index in indexes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"preloading {count} entries took over {timeout_s:.0f} s")
            body = json.dumps({"kind": "user", "content": f"preloaded entry {index}"})
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                if response.status != 200:
                    raise RuntimeError(f"preload POST {url} answered {response.status}: {await response.text()}")
                await response.read()

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(sender(session) for _ in range(concurrency)))
    return time.monotonic() - started


def transcript(server: Server, role: str, start: int = 0, limit: int = PAGE_LIMIT) -> dict[str, Any]:
    worker_id = server.workers[role]
    url = f"{server.base_url}/v1/workers/{worker_id}/transcript?start={start}&limit={limit}"
    return http_json("GET", url)["transcript"]


# -------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    script: str  # "get" or "post_input"

    def path(self, server: Server, big_entries: int) -> str:
        if self.key == "runtime":
            return "/v1/runtime"
        if self.key == "input":
            return f"/v1/workers/{server.workers['input']}/input"
        if self.key == "transcript_small":
            return f"/v1/workers/{server.workers['small']}/transcript?limit={PAGE_LIMIT}"
        if self.key == "transcript_big":
            return f"/v1/workers/{server.workers['big']}/transcript?limit={PAGE_LIMIT}"
        if self.key == "transcript_big_tail":
            start = big_entries - TAIL_ITEMS
            return f"/v1/workers/{server.workers['big']}/transcript?start={start}&limit={PAGE_LIMIT}"
        raise ValueError(self.key)


def build_cases(big_entries: int) -> list[Case]:
    big = f"{big_entries:,}"
    return [
        Case("runtime", "GET /v1/runtime", "get"),
        Case("input", "POST /v1/workers/{id}/input", "post_input"),
        Case("transcript_small", f"GET transcript?limit=256, {SMALL_ENTRIES} entries ({SMALL_ENTRIES} items)", "get"),
        Case("transcript_big", f"GET transcript?limit=256, {big} entries (256 items)", "get"),
        Case(
            "transcript_big_tail",
            f"GET transcript?start={big_entries - TAIL_ITEMS}&limit=256, {big} entries ({TAIL_ITEMS} items)",
            "get",
        ),
    ]


# ---------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    requests: int
    duration_us: int
    bytes: int
    p50_us: int
    p90_us: int
    p99_us: int
    max_us: int
    mean_us: float
    connect_errors: int
    read_errors: int
    write_errors: int
    status_errors: int
    timeouts: int
    server_cpu_s: float | None = None  # CPU time the server used during the run (Linux /proc)

    @property
    def rps(self) -> float:
        return self.requests / (self.duration_us / 1e6) if self.duration_us else 0.0

    @property
    def cpu_us_per_request(self) -> float | None:
        """Server CPU per request: unlike req/s, hardly moved by other load on a shared machine."""
        if self.server_cpu_s is None or not self.requests:
            return None
        return self.server_cpu_s / self.requests * 1e6

    @property
    def errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.status_errors + self.timeouts


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far, from /proc (None where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def run_wrk(url: str, script: Path, duration_s: int, threads: int, connections: int,
            cpus: set[int] | None, raw_log: Path | None, server_pid: int | None = None) -> WrkResult:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--timeout", "5s", "--latency",
            "-s", str(script), url]
    cpu_before = process_cpu_seconds(server_pid) if server_pid else None
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + WRK_GRACE_S,
                               preexec_fn=pin_to(cpus), check=False)
    cpu_after = process_cpu_seconds(server_pid) if server_pid else None
    if raw_log is not None:
        with raw_log.open("a") as out:
            out.write(f"$ {shlex.join(argv)}\n{completed.stdout}{completed.stderr}\n")
    match = RESULT_LINE.search(completed.stdout)
    if completed.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({completed.returncode}) on {url}:\n{completed.stdout}{completed.stderr}")
    result = WrkResult(**json.loads(match.group(1)))
    if cpu_before is not None and cpu_after is not None:
        result.server_cpu_s = cpu_after - cpu_before
    return result


# ------------------------------------------------------------------ report


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(runs: list[WrkResult], statistic: str) -> dict[str, Any]:
    """One figure per metric over the rounds: the median, or the best round (``best``: the round
    with the most req/s, and the least CPU per request), since other load only ever slows a run."""
    cpu = [r.cpu_us_per_request for r in runs if r.cpu_us_per_request is not None]
    common = {"rps_rounds": [round(r.rps, 1) for r in runs], "errors": sum(r.errors for r in runs)}
    if statistic == "best":
        top = max(runs, key=lambda r: r.rps)
        return {"cpu_us_per_request": min(cpu) if cpu else None, "rps": top.rps,
                "p50_ms": top.p50_us / 1000, "p99_ms": top.p99_us / 1000, **common}
    return {
        "cpu_us_per_request": median(cpu) if cpu else None,
        "rps": median([r.rps for r in runs]),
        "p50_ms": median([r.p50_us / 1000 for r in runs]),
        "p99_ms": median([r.p99_us / 1000 for r in runs]),
        **common,
    }


def fmt_rps(value: float) -> str:
    return f"{value:,.0f}"


def fmt_ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def fmt_latency(summary: dict[str, Any]) -> str:
    flag = f" ⚠ {summary['errors']} errors" if summary["errors"] else ""
    return f"{fmt_ms(summary['p50_ms'])} / {fmt_ms(summary['p99_ms'])} ms{flag}"


def fmt_pct(ratio: float) -> str:
    return f"{ratio * 100:.0f} %"


def report(cases: list[Case], servers: list[Server], results: dict[str, dict[str, dict[str, Any]]],
           big_entries: int, statistic: str = "median") -> str:
    """The Markdown report: the main table, goals, transcript cost, and per-round detail."""
    main, ref = servers[0].name, servers[1].name
    lines = [
        f"| case | {main} req/s | {ref} req/s | ratio ({main}/{ref}) | {main} p50 / p99 | {ref} p50 / p99 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        a, b = results[case.key][main], results[case.key][ref]
        lines.append(
            f"| {case.label} | {fmt_rps(a['rps'])} | {fmt_rps(b['rps'])} | {fmt_pct(a['rps'] / b['rps'])} "
            f"| {fmt_latency(a)} | {fmt_latency(b)} |"
        )

    lines += ["", "Goals:"]
    for key in ("runtime", "input"):
        if key in results:
            ratio = results[key][main]["rps"] / results[key][ref]["rps"]
            verdict = "met" if ratio >= 0.70 else "NOT met"
            label = next(c.label for c in cases if c.key == key)
            lines.append(f"- {label}: {main} at {fmt_pct(ratio)} of {ref} (goal ≥ 70 %): {verdict}")
    if "transcript_small" in results:
        big = f"{big_entries:,}"
        for name in (main, ref):
            small = results["transcript_small"][name]["rps"]
            parts = []
            if "transcript_big" in results:
                parts.append(f"first page (256 items) at {big} entries: "
                             f"{fmt_pct(results['transcript_big'][name]['rps'] / small)} of the req/s at {SMALL_ENTRIES}")
            if "transcript_big_tail" in results:
                parts.append(f"same-size page ({TAIL_ITEMS} items) at {big} entries: "
                             f"{fmt_pct(results['transcript_big_tail'][name]['rps'] / small)}")
            if parts:
                lines.append(f"- transcript cost, {name}: " + "; ".join(parts))

    if all(results[c.key][s.name]["cpu_us_per_request"] for c in cases for s in servers):
        shown = "median" if statistic == "median" else "least of the rounds"
        lines += ["", f"Server CPU time per request ({shown}; less sensitive than req/s to other load on the machine):",
                  "", "| case | " + " | ".join(f"{s.name} µs" for s in servers) + f" | {main}/{ref} |",
                  "|---|" + "---:|" * (len(servers) + 1)]
        for case in cases:
            cpu = {s.name: results[case.key][s.name]["cpu_us_per_request"] for s in servers}
            lines.append(f"| {case.label} | " + " | ".join(f"{cpu[s.name]:,.0f}" for s in servers)
                         + f" | {cpu[main] / cpu[ref]:.1f}× |")

    if len(servers) > 2:
        lines += ["", f"req/s, and in brackets the speed-up over {main} (req/s ratio; CPU-per-request ratio):", "",
                  "| case | " + " | ".join(f"{s.name} req/s" for s in servers) + " |",
                  "|---|" + "---:|" * len(servers)]
        for case in cases:
            row = results[case.key]
            base = row[main]

            def speedup(name: str) -> str:
                other = row[name]
                text = f"{other['rps'] / base['rps']:.2f}×"
                if base["cpu_us_per_request"] and other["cpu_us_per_request"]:
                    text += f"; {base['cpu_us_per_request'] / other['cpu_us_per_request']:.2f}×"
                return f"{fmt_rps(other['rps'])} ({text})"

            cells = [fmt_rps(base["rps"])] + [speedup(s.name) for s in servers[1:]]
            lines.append(f"| {case.label} | " + " | ".join(cells) + " |")

    shown = "the median" if statistic == "median" else "the best round"
    lines += ["", f"Per-round req/s (the tables show {shown}):", ""]
    for case in cases:
        per_server = "; ".join(
            f"{s.name} " + ", ".join(fmt_rps(v) for v in results[case.key][s.name]["rps_rounds"]) for s in servers
        )
        lines.append(f"- {case.label}: {per_server}")
    return "\n".join(lines)


# --------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 s per case, 1 round, 10,000-entry big transcript (unless given)")
    parser.add_argument("--duration", type=int, help="seconds of wrk per case and server [10; --quick 2]")
    parser.add_argument("--warmup", type=int, help="seconds of unrecorded wrk before each measurement [1]")
    parser.add_argument("--rounds", type=int, help="measurements per case and server [3; --quick 1]")
    parser.add_argument("--statistic", choices=("median", "best"), default="median",
                        help="what the tables show of the rounds: the median, or the best round (for A/B "
                             "comparisons on a machine with other load)")
    parser.add_argument("--big-entries", type=int, help="entries of the big transcript [100000; --quick 10000]")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (-t)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (-c)")
    parser.add_argument("--cases", help="comma-separated subset of: runtime,input,transcript_small,"
                                        "transcript_big,transcript_big_tail")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the servers to CPU 0 and wrk/the loader to the other CPUs")
    parser.add_argument("--runtimed-command", default=shlex.join([sys.executable, "-m", "runtimed", "serve"]),
                        help="how to start runtimed (--bind 127.0.0.1:0 is appended)")
    parser.add_argument("--server", action="append", default=[], metavar="NAME=COMMAND",
                        help="another server to measure as well (--bind is appended); repeatable")
    parser.add_argument("--loader-concurrency", type=int, default=16, help="POSTs in flight while preloading")
    parser.add_argument("--preload-timeout", type=float, default=900.0, help="seconds allowed per preload")
    parser.add_argument("--output-dir", type=Path, help="where results go [bench/results/<UTC time>]")
    args = parser.parse_args(argv)
    args.duration = args.duration or (2 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else 1
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.big_entries = args.big_entries or (10_000 if args.quick else 100_000)
    if args.duration < 1 or args.rounds < 1 or args.warmup < 0 or args.big_entries <= TAIL_ITEMS:
        parser.error(f"--duration and --rounds must be ≥ 1, --warmup ≥ 0, --big-entries > {TAIL_ITEMS}")
    if args.threads < 1 or args.connections < args.threads or args.loader_concurrency < 1:
        parser.error("--threads ≥ 1, --connections ≥ --threads and --loader-concurrency ≥ 1 are needed")
    return args


def cpu_plan(no_pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """Servers on the first CPU, wrk and the loader on the rest, so they do not fight over one core."""
    if no_pin or not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def git_state() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "runtimed"], cwd=REPO_DIR,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + (" (runtimed/ has uncommitted changes)" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("rest_bench: wrk is not installed. Install it with `apt-get install wrk` (Debian/Ubuntu), "
              "`dnf install wrk` (Fedora), or `brew install wrk` (macOS); or build it from "
              "https://github.com/wg/wrk.", file=sys.stderr)
        return 2

    all_cases = build_cases(args.big_entries)
    if args.cases:
        wanted = args.cases.split(",")
        unknown = set(wanted) - {c.key for c in all_cases}
        if unknown:
            print(f"rest_bench: unknown case(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        cases = [c for c in all_cases if c.key in wanted]
    else:
        cases = all_cases
    server_cpus, client_cpus = cpu_plan(args.no_pin)

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = args.output_dir or BENCH_DIR / "results" / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="rest_bench-"))  # server logs: large (access log), deleted
    get_lua = out_dir / "get.lua"
    post_lua = out_dir / "post_input.lua"
    get_lua.write_text(LUA_DONE)
    post_lua.write_text(LUA_POST_INPUT + LUA_DONE)
    scripts = {"get": get_lua, "post_input": post_lua}

    servers = [
        Server("runtimed", shlex.split(args.runtimed_command), scratch / "runtimed.log"),
        Server("bare", [sys.executable, str(BENCH_DIR / "bare_server.py")], scratch / "bare.log"),
    ]
    for spec in args.server:
        name, sep, command = spec.partition("=")
        if not sep or not name or not command:
            print(f"rest_bench: --server wants NAME=COMMAND, got {spec!r}", file=sys.stderr)
            return 2
        servers.append(Server(name, shlex.split(command), scratch / f"{name}.log"))

    # SIGTERM (from make, CI, a user) must still run the finally below that stops the servers.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    meta = {
        "date_utc": stamp,
        "command": shlex.join([Path(sys.executable).name, "bench/rest_bench.py", *(argv or sys.argv[1:])]),
        "git": git_state(),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "wrk": f"-t{args.threads} -c{args.connections} -d{args.duration}s --latency, warm-up {args.warmup} s",
        "rounds": args.rounds,
        "statistic": args.statistic,
        "big_entries": args.big_entries,
        "pinning": f"servers on CPU {sorted(server_cpus)}, wrk and loader on {sorted(client_cpus)}"
        if server_cpus else "none",
        "servers": {s.name: shlex.join(s.argv + ["--bind", "127.0.0.1:0"]) for s in servers},
    }
    runs: dict[str, dict[str, list[WrkResult]]] = {c.key: {s.name: [] for s in servers} for c in cases}
    failed = True
    try:
        for server in servers:
            start_server(server, server_cpus)
            print(f"{server.name}: {server.base_url}", file=sys.stderr)

        for server in servers:
            for role in ("input", "small", "big"):
                server.workers[role] = create_worker(server)
            for role, count in (("small", SMALL_ENTRIES), ("big", args.big_entries)):
                seconds = asyncio.run(_pinned(client_cpus, preload(
                    server.base_url, server.workers[role], count, args.loader_concurrency, args.preload_timeout)))
                print(f"{server.name}: preloaded {count:,} entries in {seconds:.1f} s "
                      f"({count / seconds:,.0f}/s)", file=sys.stderr)
            check_workers(server, args.big_entries)

        raw_log = out_dir / "wrk.txt"
        total = len(cases) * len(servers) * args.rounds
        done = 0
        for round_index in range(args.rounds):
            # Alternate the order so that drift (thermal, other load) does not favour one server.
            order = servers if round_index % 2 == 0 else list(reversed(servers))
            for case in cases:
                for server in order:
                    url = server.base_url + case.path(server, args.big_entries)
                    if args.warmup:
                        run_wrk(url, scripts[case.script], args.warmup, args.threads, args.connections,
                                client_cpus, None)
                    result = run_wrk(url, scripts[case.script], args.duration, args.threads, args.connections,
                                     client_cpus, raw_log, server.process.pid if server.process else None)
                    runs[case.key][server.name].append(result)
                    done += 1
                    print(f"[{done}/{total}] round {round_index + 1} {case.key:<20} {server.name:<16} "
                          f"{result.rps:>9,.0f} req/s  p50 {result.p50_us / 1000:.2f} ms  "
                          f"p99 {result.p99_us / 1000:.2f} ms"
                          + (f"  {result.cpu_us_per_request:.0f} µs CPU/req" if result.cpu_us_per_request else "")
                          + (f"  ERRORS {result.errors}" if result.errors else ""),
                          file=sys.stderr)

        for server in servers:  # the measured workers must still hold what was preloaded
            check_workers(server, args.big_entries)
        failed = False
    finally:
        for server in servers:
            stop_server(server)
        if failed:
            for server in servers:
                print(f"--- last lines of {server.name}'s log:\n{log_tail(server)}", file=sys.stderr)
        shutil.rmtree(scratch, ignore_errors=True)

    results = {key: {name: summarize(r, args.statistic) for name, r in per.items()} for key, per in runs.items()}
    table = report(cases, servers, results, args.big_entries, args.statistic)
    header = (f"Measured {meta['date_utc']} with `{meta['command']}` (git {meta['git']}); Python {meta['python']}, "
              f"{meta['machine']}; wrk {meta['wrk']}; {meta['rounds']} round(s), {meta['statistic']} shown; {meta['pinning']}.")
    print(f"\n{header}\n\n{table}")
    (out_dir / "results.md").write_text(f"{header}\n\n{table}\n")
    (out_dir / "results.json").write_text(json.dumps(
        {"meta": meta, "results": results,
         "runs": {k: {n: [asdict(r) for r in rs] for n, rs in per.items()} for k, per in runs.items()}},
        indent=2))
    print(f"\n(results in {out_dir.relative_to(REPO_DIR) if out_dir.is_relative_to(REPO_DIR) else out_dir})",
          file=sys.stderr)
    errors = sum(r["errors"] for per in results.values() for r in per.values())
    if errors:
        print(f"rest_bench: {errors} wrk errors (non-2xx answers or socket errors); see wrk.txt", file=sys.stderr)
        return 1
    return 0


async def _pinned(cpus: set[int] | None, coroutine: Any) -> Any:
    """Run the loader on the client CPUs (this process's only busy thread while it runs)."""
    previous = os.sched_getaffinity(0) if cpus else None
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        return await coroutine
    finally:
        if previous:
            os.sched_setaffinity(0, previous)


def check_workers(server: Server, big_entries: int) -> None:
    """Each transcript worker holds exactly what was preloaded, and every page has its size."""
    expectations = [
        ("small", 0, SMALL_ENTRIES, SMALL_ENTRIES),
        ("big", 0, big_entries, PAGE_LIMIT),
        ("big", big_entries - TAIL_ITEMS, big_entries, TAIL_ITEMS),
    ]
    for role, start, total_items, items in expectations:
        page = transcript(server, role, start)
        if page["total_items"] != total_items or len(page["items"]) != items:
            raise RuntimeError(f"{server.name}: {role} transcript from {start} has {page['total_items']} entries "
                               f"and {len(page['items'])} items; expected {total_items} and {items}")
    runtime = http_json("GET", f"{server.base_url}/v1/runtime")["runtime"]
    if runtime["worker_count"] != 3:
        raise RuntimeError(f"{server.name}: expected 3 workers, found {runtime['worker_count']}")


if __name__ == "__main__":
    sys.exit(main())
