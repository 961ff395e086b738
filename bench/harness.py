"""What every benchmark in bench/ shares: servers, load, CPU time, statistics, tables, run notes.

- **Servers.** ``Server`` is one child process, ``runtimed serve`` (``runtimed_argv``, or with
  ``slow_flush_ms`` a simulated slow disk through ``tests/slow_disk.py``) or the bare reference
  (``bare_argv``). ``start`` appends ``--bind 127.0.0.1:0``, sends stdout and stderr to a log file
  (never a pipe: runtimed writes an access-log line per request), waits (bounded) for the
  ``… listening on http://HOST:PORT`` start-up line and returns the seconds from exec to it;
  ``stop`` sends SIGTERM, then SIGKILL. A ``Server`` is a context manager.
- **Load.** ``run_load`` drives one ``Load`` (a method, a body, paths taken round-robin) over c
  keep-alive connections for a time, with wrk (one C thread; ``apt-get install wrk``) or, where
  wrk is missing or ``--load python`` asks for it, ``drive``: the same closed loop on raw asyncio
  connections in this process. ``drive`` is also the preloader and the WebSocket publisher.
- **CPU time.** ``CpuMeter`` takes the CPU time of the server (all threads, and its main thread),
  of the client side (this process, the children it waited for, extra client processes) and of
  the whole machine around a measurement; what is left is ``other``: other processes, the kernel.
  ``pinned`` / ``pin_to`` / ``cpu_plan`` keep servers and clients on different CPUs.
- **Statistics and tables.** ``median``, ``percentile``, ``markdown_table`` and the formatters.
- **Run notes.** ``git_revision``, ``machine_description``, ``exit_on_sigterm``.

Linux: the CPU and memory figures come from /proc. All traffic is to 127.0.0.1; every wait and
loop here is bounded in time (and the load in count, where a count is given).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
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
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SLOW_DISK = REPO_DIR / "tests" / "slow_disk.py"
BIND = "127.0.0.1:0"
LISTENING = re.compile(r"listening on http://(\S+)")
T = TypeVar("T")

START_TIMEOUT_S = 60.0  # a server that has not printed its address by then has failed
STOP_TIMEOUT_S = 10.0  # SIGTERM, then SIGKILL after this long
HTTP_TIMEOUT_S = 10.0  # one set-up request
LOAD_GRACE_S = 30.0  # beyond a load run's duration before it is stopped as hung

CREATE_BODY = '{"intent":{"kind":"assistant","purpose":"benchmark"},"profile":{"kind":"runtime_default"}}'
INPUT_BODY = '{"kind":"user","content":"benchmark input"}'


def log(message: str) -> None:
    """A progress line on stderr (stdout is for the report)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ commands


def runtimed_argv(*args: str, slow_flush_ms: float | None = None) -> list[str]:
    """``python -m runtimed ARGS``; with ``slow_flush_ms``, every fs store flush first sleeps that long."""
    if slow_flush_ms is not None:
        return [sys.executable, str(SLOW_DISK), f"{slow_flush_ms:g}", *args]
    return [sys.executable, "-m", "runtimed", *args]


def bare_argv(*args: str) -> list[str]:
    """The bare aiohttp reference server (REST routes and the WebSocket fan-out)."""
    return [sys.executable, str(BENCH_DIR / "bare_server.py"), *args]


# ------------------------------------------------------------------ CPU and memory

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time of a process (every thread), or of one of its threads; 0 without /proc."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        with open(path) as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15 of stat)


def machine_busy_seconds() -> float:
    """CPU time every CPU of the machine has spent busy so far (not idle, not waiting for I/O)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:9]]
    except OSError:
        return 0.0
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK  # all but idle and iowait


def own_cpu_seconds() -> float:
    """CPU time of this process and of the children it has waited for (wrk, helper runs)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    """A memory figure of /proc/PID/status (VmRSS, VmHWM), in KiB; 0 where there is none."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class CpuUsage:
    """CPU seconds spent during one measurement, by whom; ``wall_s`` is how long it took."""

    wall_s: float
    server_s: float  # the server process, every thread
    server_main_s: float  # its main (event-loop) thread
    client_s: float  # this process, its waited-for children, the extra client processes
    other_s: float  # the rest of the machine: other processes, kernel threads

    def percent(self, seconds: float) -> float:
        """``seconds`` of CPU in % of one core over the measurement."""
        return seconds / self.wall_s * 100 if self.wall_s > 0 else 0.0


class CpuMeter:
    """Takes the CPU times at ``start`` and turns the difference at ``stop`` into a ``CpuUsage``."""

    def __init__(self, server_pid: int | None, client_pids: Sequence[int] = ()) -> None:
        self.server_pid = server_pid
        self.client_pids = tuple(client_pids)
        self._before = self._sample()

    def _sample(self) -> tuple[float, ...]:
        pid = self.server_pid
        server = (cpu_seconds(pid), cpu_seconds(pid, pid)) if pid else (0.0, 0.0)
        client = own_cpu_seconds() + sum(cpu_seconds(p) for p in self.client_pids)
        return time.perf_counter(), *server, client, machine_busy_seconds()

    def stop(self) -> CpuUsage:
        wall, server, main, client, machine = (a - b for a, b in zip(self._sample(), self._before, strict=True))
        return CpuUsage(wall, server, main, client, max(0.0, machine - server - client))


def pin_to(cpus: set[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` pinning the child (and every thread it starts) to ``cpus``."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Run this process on ``cpus`` for a while (an in-process load generator), then as before."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def cpu_plan(no_pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """Servers on the first CPU, the load on the others, so that they do not fight over one core."""
    if no_pin or not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


# ------------------------------------------------------------------ servers


class Server:
    """One server child process on 127.0.0.1, its log file and its address."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path) -> None:
        self.name = name
        self.argv = [*argv, "--bind", BIND]
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
        self.log_path = log_dir / f"{slug}-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.address = ""  # HOST:PORT

    @property
    def base_url(self) -> str:
        return f"http://{self.address}"

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    def start(self, cpus: set[int] | None = None, timeout: float = START_TIMEOUT_S) -> float:
        """Start it, wait (bounded) for its start-up line; return the seconds from exec to that line."""
        with open(self.log_path, "wb") as out:
            started = time.perf_counter()
            self.process = subprocess.Popen(
                self.argv, cwd=REPO_DIR, stdin=subprocess.DEVNULL, stdout=out, stderr=out, preexec_fn=pin_to(cpus)
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as text:
                match = LISTENING.search(text.read(64 * 1024).decode("utf-8", "replace"))
            if match:
                elapsed = time.perf_counter() - started
                self.address = match.group(1)
                if not self.address.startswith("127.0.0.1:"):
                    raise RuntimeError(f"{self.name} listens on {self.address}, not 127.0.0.1")
                return elapsed
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            time.sleep(0.002)
        raise RuntimeError(f"{self.name} printed no address within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_S; safe to call again."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log(f"{self.name} ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s; killing it")
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def request_json(self, method: str, path: str, body: str | bytes | None = None) -> Any:
        """One set-up request (not measured); the JSON answer. No proxy: 127.0.0.1 only."""
        data = body.encode() if isinstance(body, str) else body
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with _OPENER.open(request, timeout=HTTP_TIMEOUT_S) as response:
            return json.loads(response.read())

    def get_text(self, path: str) -> str | None:
        """A GET's body as text, or None if it fails (for optional figures such as /metrics)."""
        try:
            with _OPENER.open(self.base_url + path, timeout=HTTP_TIMEOUT_S) as response:
                return response.read().decode()
        except OSError:
            return None

    def create_worker(self) -> str:
        return self.request_json("POST", "/v1/workers", CREATE_BODY)["worker"]["worker_id"]


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def stop_all(servers: Iterable[Server]) -> None:
    """Stop every server, also when stopping one of them fails."""
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.callback(server.stop)


# ------------------------------------------------------------------ load


@dataclass(frozen=True)
class Load:
    """One kind of request: a method, a JSON body or none, and the paths it goes to, round-robin;
    ``headers`` sent with each; ``unique_header``, a header whose value differs in every request
    of every run (an ``Idempotency-Key`` that is never a replay)."""

    method: str
    paths: tuple[str, ...]
    body: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    unique_header: str | None = None

    def wrk_script(self) -> str:
        lines = [f'wrk.method = "{self.method}"']
        if self.body is not None:
            lines += [f"wrk.body = '{self.body}'", 'wrk.headers["Content-Type"] = "application/json"']
        lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in self.headers]
        if self.unique_header is not None:
            # A prefix new in every run (wrk's counters start again), then each thread's id and
            # its own count: no two requests of any run share a value.
            lines += [
                f'local prefix = "{os.urandom(8).hex()}"',
                "local threads = 0",
                "setup = function(thread)",
                "  threads = threads + 1",
                "  thread:set('tid', threads)",
                "end",
                f"local paths = {{{', '.join(f'{chr(34)}{path}{chr(34)}' for path in self.paths)}}}",
                "local n = 0",
                "request = function()",
                "  n = n + 1",
                f'  wrk.headers["{self.unique_header}"] = prefix .. "-" .. tostring(tid) .. "-" .. n',
                "  return wrk.format(nil, paths[n % #paths + 1])",
                "end",
            ]
        elif len(self.paths) > 1:  # else the path is in the URL, and wrk sends one prepared request
            paths = ", ".join(f'"{path}"' for path in self.paths)
            lines += [
                f"local paths = {{{paths}}}",
                "local n = 0",
                "request = function()",
                "  n = n % #paths + 1",
                "  return wrk.format(nil, paths[n])",
                "end",
            ]
        return "\n".join(lines) + WRK_DONE


# wrk prints this line from done(): exact counts and latencies in microseconds, parsed by run_load.
WRK_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"mean_us":%.1f,"errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect + e.read + e.write + e.status + e.timeout))
end
"""
WRK_RESULT = re.compile(r"^BENCH_RESULT (\{.*\})$", re.MULTILINE)


@dataclass
class LoadResult:
    requests: int
    duration_us: int
    p50_us: int
    p90_us: int
    p99_us: int
    max_us: int
    mean_us: float
    errors: int  # socket errors, timeouts and non-2xx answers
    cpu: CpuUsage | None = None

    @property
    def rps(self) -> float:
        return self.requests / (self.duration_us / 1e6) if self.duration_us else 0.0

    def per_request_us(self, cpu_s: float) -> float:
        """CPU seconds spread over the requests, in µs per request."""
        return cpu_s / self.requests * 1e6 if self.requests else float("nan")


LOAD_TOOLS = ("auto", "wrk", "python")


def add_load_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--load",
        choices=LOAD_TOOLS,
        default="auto",
        help="load generator: wrk, or python (an asyncio closed loop in this process, for a "
        "machine without wrk); auto takes wrk where it is installed [auto]",
    )


def load_tool(choice: str) -> str:
    """``wrk`` or ``python`` for a ``--load`` choice; exits 2 when wrk is asked for and missing."""
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if choice == "wrk" and shutil.which("wrk") is None:
        sys.exit(
            "wrk is not installed: `apt-get install wrk` (Debian/Ubuntu), `dnf install wrk`, `brew install wrk`;"
            " or run with --load python"
        )
    return choice


def load_version(tool: str) -> str:
    if tool != "wrk":
        return "python asyncio loop"
    completed = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10, check=False)
    return " ".join(completed.stdout.split()[:2]) or "wrk"


def run_load(
    server: Server,
    load: Load,
    *,
    connections: int,
    duration_s: float,
    tool: str,
    threads: int = 1,
    cpus: set[int] | None = None,
    raw_log: Path | None = None,
) -> LoadResult:
    """Keep ``connections`` requests of ``load`` in flight for ``duration_s`` (wrk takes whole
    seconds), measuring the server's CPU and the machine's meanwhile."""
    url = server.base_url + load.paths[0]
    meter = CpuMeter(server.pid)
    if tool == "wrk":
        result = _run_wrk(url, load, connections, duration_s, threads, cpus, raw_log)
    else:
        with pinned(cpus):
            run = asyncio.run(
                drive(
                    server.address, load_requests(load, server.address), connections=connections, duration_s=duration_s
                )
            )
        result = run.result()
    result.cpu = meter.stop()
    return result


def _run_wrk(
    url: str, load: Load, connections: int, duration_s: float, threads: int, cpus: set[int] | None, raw_log: Path | None
) -> LoadResult:
    seconds = max(1, round(duration_s))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="bench-") as script:
        script.write(load.wrk_script())
        script.flush()
        argv = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "--latency",
            "-s",
            script.name,
            url,
        ]
        completed = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + LOAD_GRACE_S, preexec_fn=pin_to(cpus), check=False
        )
    if raw_log is not None:
        with raw_log.open("a") as out:
            out.write(f"$ {shlex.join(argv)}\n{completed.stdout}{completed.stderr}\n")
    match = WRK_RESULT.search(completed.stdout)
    if completed.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({completed.returncode}) on {url}:\n{completed.stdout}{completed.stderr}")
    return LoadResult(**json.loads(match.group(1)))


def http_request(
    method: str, path: str, address: str, body: bytes | None = None, headers: tuple[tuple[str, str], ...] = ()
) -> bytes:
    """One HTTP/1.1 keep-alive request, as bytes."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {address}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    if body is None:
        return (head + "\r\n").encode()
    return (head + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def load_requests(load: Load, address: str) -> Callable[[int], bytes]:
    """The requests of ``load``, prepared once (but for a unique header), the i-th for ``drive``."""
    body = load.body.encode() if load.body is not None else None
    if load.unique_header is not None:
        prefix, header = os.urandom(8).hex(), load.unique_header
        return lambda index: http_request(
            load.method,
            load.paths[index % len(load.paths)],
            address,
            body,
            (*load.headers, (header, f"{prefix}-{index}")),
        )
    prepared = [http_request(load.method, path, address, body, load.headers) for path in load.paths]
    return lambda index: prepared[index % len(prepared)]


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with one request at a time: the cheapest Python client.
    Answers must have a Content-Length (runtimed's and aiohttp's do)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        i = head.find(b"\r\ncontent-length:")
        if i < 0:
            waiter.set_exception(RuntimeError(f"no content-length in {head[:200]!r}"))
            return
        j = head.find(b"\r\n", i + 2)
        total = end + 4 + int(head[i + 17 : j if j >= 0 else len(head)])
        if len(self.buffer) >= total:
            status = int(self.buffer[9:12])
            del self.buffer[:total]
            waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    async def request(self, data: bytes) -> int:
        """Send one request; its answer's status."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


@dataclass
class DriveResult:
    """What ``drive`` did: requests sent (all answered), errors by kind, when, and every latency in ns."""

    sent: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    started_ns: int = 0
    ended_ns: int = 0
    latencies_ns: array.array[int] = field(default_factory=lambda: array.array("q"))

    def result(self) -> LoadResult:
        ordered = sorted(self.latencies_ns)

        def us(fraction: float) -> int:
            return int(percentile(ordered, fraction) / 1000) if ordered else 0

        return LoadResult(
            requests=len(ordered),  # like wrk's count: every answer, non-2xx ones too
            duration_us=(self.ended_ns - self.started_ns) // 1000,
            p50_us=us(0.5),
            p90_us=us(0.9),
            p99_us=us(0.99),
            max_us=ordered[-1] // 1000 if ordered else 0,
            mean_us=statistics.fmean(ordered) / 1000 if ordered else 0.0,
            errors=sum(self.errors.values()),
        )


async def drive(
    address: str,
    request_for: Callable[[int], bytes],
    *,
    connections: int,
    duration_s: float,
    max_requests: int = 10**9,
    ready: Callable[[int], bool] | None = None,
    into: DriveResult | None = None,
) -> DriveResult:
    """A closed loop of requests over ``connections`` keep-alive connections: the i-th request is
    ``request_for(i)``, made when it is sent; it stops after ``max_requests`` or ``duration_s``.
    With ``ready``, a request is only sent while ``ready(requests sent so far)`` holds."""
    host, port = address.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    conns = [(await loop.create_connection(HttpConnection, host, int(port)))[1] for _ in range(connections)]
    run = into if into is not None else DriveResult()
    run.started_ns = now_ns = time.monotonic_ns()
    deadline_ns = now_ns + int(duration_s * 1e9)
    clock, latencies = time.monotonic_ns, run.latencies_ns

    async def one(conn: HttpConnection) -> None:
        while run.sent < max_requests and clock() < deadline_ns:
            if ready is not None and not ready(run.sent):
                await asyncio.sleep(0.0005)
                continue
            index = run.sent
            run.sent += 1
            sent = clock()
            status = await conn.request(request_for(index))
            latencies.append(clock() - sent)
            if not 200 <= status < 300:
                run.errors[f"HTTP {status}"] += 1

    try:
        await asyncio.wait_for(asyncio.gather(*(one(conn) for conn in conns)), duration_s + LOAD_GRACE_S)
    finally:
        run.ended_ns = clock()
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()
    return run


# ------------------------------------------------------------------ options


def bench_parser(doc: str | None, *, quick: str, duration: str, rounds: str) -> argparse.ArgumentParser:
    """A parser with the options every benchmark has: ``--quick`` (a smoke run, well under a
    minute), ``--duration`` and ``--rounds``; the help texts say what each means there."""
    parser = argparse.ArgumentParser(
        description=(doc or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {quick}")
    parser.add_argument("--duration", type=float, help=duration)
    parser.add_argument("--rounds", type=int, help=rounds)
    return parser


def by_mode(value: T | None, full: T, quick: T, is_quick: bool) -> T:
    """An option's value: as given, else its default for a full or a ``--quick`` run."""
    if value is not None:
        return value
    return quick if is_quick else full


# ------------------------------------------------------------------ statistics and tables


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The value at ``fraction`` (0.5, 0.99) of values sorted in ascending order."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def round_order(items: Sequence[Any], round_index: int) -> list[Any]:
    """The order of the servers in a round, reversed every other one, so drift favours none."""
    return list(items) if round_index % 2 == 0 else list(reversed(items))


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> list[str]:
    """A Markdown table's lines. ``align`` has an ``l`` or ``r`` a column; the default: the first
    column left, the others right."""
    align = align or "l" + "r" * (len(columns) - 1)
    lines = ["| " + " | ".join(columns) + " |", "|" + "".join("---|" if a == "l" else "---:|" for a in align)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def fmt_count(value: float) -> str:
    return f"{value:,.0f}"


def fmt_ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def fmt_pct(ratio: float) -> str:
    return f"{ratio * 100:.0f} %"


# ------------------------------------------------------------------ run notes


def git_revision() -> str:
    """The commit of the checkout, and whether runtimed/ has uncommitted changes."""

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", *argv], cwd=REPO_DIR, capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()

    try:
        revision = git("rev-parse", "--short", "HEAD") or "unknown"
        dirty = git("status", "--porcelain", "--", "runtimed")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return revision + (" (runtimed/ has uncommitted changes)" if dirty else "")


def machine_description() -> str:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    return f"{platform.platform()}, {os.cpu_count()} CPUs ({model}), Python {platform.python_version()}"


def exit_on_sigterm() -> None:
    """SIGTERM (from make, CI, a user) ends the run through its ``finally`` blocks, which stop the servers."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
