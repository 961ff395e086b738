"""Operating the daemon: systemd, signals, the Unix socket, metrics, logs, readiness."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from runtimed.daemon.config import Secret, ServerConfig
from runtimed.daemon.systemd import notify
from runtimed.domain.execution import ExecutionState, StopReason
from runtimed.runtime import Runtime
from runtimed.store import MemoryStore
from runtimed.store.fs import FsStore
from runtimed.web.app import create_app
from runtimed.web.metrics import REQUEST_BUCKETS, HttpMetrics

from .helpers import ECHO_REQUEST, TASK_REQUEST, BrokenStore, create_worker, run_turn, wait_until
from .process import RuntimedProcess, request_json, run_runtimed, send_raw
from .slow_disk import FLUSH_STARTED

REPO = Path(__file__).resolve().parent.parent
TOKEN = "tok-operations-never-logged"


# ------------------------------------------------------------------ systemd


@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(10)
    yield sock, str(path)
    sock.close()


@pytest.mark.process
def test_the_daemon_tells_systemd_when_it_is_ready_and_when_it_stops(notify_socket):
    sock, path = notify_socket
    with RuntimedProcess("--bind", "127.0.0.1:0", env={**os.environ, "NOTIFY_SOCKET": path}) as daemon:
        ready = sock.recv(4096).decode().split("\n")
        assert ready[0] == "READY=1"
        assert ready[1] == f"STATUS=listening on {daemon.base_url}"
        assert daemon.stop(signal.SIGTERM) == 0
    stopping = sock.recv(4096).decode().split("\n")
    assert stopping == ["STOPPING=1", "STATUS=shutting down"]


def test_notify_speaks_to_abstract_sockets_and_is_silent_without_one(monkeypatch):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"runtimed-test-{os.getpid()}"
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("READY=1")
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notify("READY=1") is False


@pytest.mark.process
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_the_service_unit_passes_systemd_analyze_verify(tmp_path):
    unit = (REPO / "contrib" / "runtimed.service").read_text()
    assert "ExecStart=/opt/runtimed/bin/runtimed serve" in unit
    # verify checks that ExecStart's program exists: point it at this test run's runtimed,
    # the one change made to the unit.
    runtimed = Path(sys.executable).parent / "runtimed"
    assert runtimed.exists(), "the runtimed console script is installed beside the interpreter"
    (tmp_path / "runtimed.service").write_text(unit.replace("/opt/runtimed/bin/runtimed", str(runtimed)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "runtimed.service")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
    for directive in (
        "Type=notify",
        "StateDirectory=runtimed",
        "EnvironmentFile=",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "LimitNOFILE=",
    ):
        assert directive in unit


# ------------------------------------------------------------------ signals


@pytest.mark.process
async def test_sigterm_lets_an_in_flight_request_finish_and_closes_sessions(tmp_path):
    root = tmp_path / "root"
    # A simulated slow disk keeps the input request in flight while the signal arrives.
    daemon = RuntimedProcess(
        "--bind", "127.0.0.1:0", "--store", "fs", "--fs-root", str(root), slow_flush_ms=800
    ).start()
    try:
        _, _, created = request_json("POST", daemon.base_url + "/v1/workers", TASK_REQUEST, timeout=10)
        worker = created["worker"]["worker_id"]
        async with aiohttp.ClientSession() as session:
            sockets = [await session.ws_connect(f"{daemon.base_url}/v1/workers/{worker}/events/ws") for _ in range(2)]
            for ws in sockets:
                await ws.receive_json(timeout=5)

            async def read_to_the_end(ws) -> list:
                return [json.loads(message.data) async for message in ws]

            # The observers keep reading, as real ones do: the close handshake needs them.
            readers = [asyncio.create_task(read_to_the_end(ws)) for ws in sockets]
            flushes = daemon.stderr.count(FLUSH_STARTED)
            in_flight = asyncio.create_task(
                session.post(
                    f"{daemon.base_url}/v1/workers/{worker}/input", json={"kind": "user", "content": "finish me"}
                )
            )
            await wait_until(lambda: daemon.stderr.count(FLUSH_STARTED) > flushes, what="the input's flush")
            daemon.process.send_signal(signal.SIGTERM)
            response = await asyncio.wait_for(in_flight, 10)
            assert response.status == 200
            assert (await response.json())["ack"]["transcript_sequence"] == 1
            for ws, reader in zip(sockets, readers, strict=True):
                frames = await asyncio.wait_for(reader, 10)
                assert frames[-1]["diagnostic"]["code"] == "runtime.upstream_closed"
                assert ws.close_code == 1001
        exit_code = await asyncio.to_thread(daemon.process.wait, 5)
        assert exit_code == 0
    finally:
        daemon.close()
    restored = await Runtime.open(FsStore(root))
    assert [e.content for e in restored.transcript(restored.worker_ref(worker)).items] == ["finish me"]
    await restored.close()


@pytest.mark.process
async def test_a_second_sigint_exits_at_once(tmp_path):
    root = tmp_path / "root"
    daemon = RuntimedProcess(
        "--bind", "127.0.0.1:0", "--store", "fs", "--fs-root", str(root), slow_flush_ms=4000
    ).start()
    try:
        _, _, created = request_json("POST", daemon.base_url + "/v1/workers", TASK_REQUEST, timeout=10)
        worker = created["worker"]["worker_id"]
        async with aiohttp.ClientSession() as session:
            flushes = daemon.stderr.count(FLUSH_STARTED)
            in_flight = asyncio.create_task(
                session.post(f"{daemon.base_url}/v1/workers/{worker}/input", json={"kind": "user", "content": "slow"})
            )
            await wait_until(lambda: daemon.stderr.count(FLUSH_STARTED) > flushes, what="the input's flush")
            daemon.process.send_signal(signal.SIGINT)
            await wait_until(lambda: "SIGINT: shutting down" in daemon.stderr, what="the first SIGINT")
            assert daemon.process.poll() is None  # the first one waits for the in-flight request
            daemon.process.send_signal(signal.SIGINT)
            exit_code = await asyncio.to_thread(daemon.process.wait, 5)
            assert exit_code == 130
            in_flight.cancel()
        assert "second interrupt" in daemon.stderr
    finally:
        daemon.close()
    # It exited without waiting for the slow flush: the input never reached the disk.
    restored = await Runtime.open(FsStore(root))
    assert restored.transcript(restored.worker_ref(worker)).total_items == 0
    await restored.close()


@pytest.mark.process
def test_sighup_reopens_the_log_file(tmp_path):
    log_file = tmp_path / "runtimed.log"
    with RuntimedProcess("--bind", "127.0.0.1:0", "--log-file", str(log_file)) as daemon:
        request_json("GET", daemon.base_url + "/v1/runtime")
        rotated = tmp_path / "runtimed.log.1"
        log_file.rename(rotated)  # what logrotate does
        daemon.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while not log_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        request_json("GET", daemon.base_url + "/v1/workers")
        assert daemon.stop() == 0
    assert "GET /v1/runtime 200" in rotated.read_text()
    fresh = log_file.read_text()
    assert "SIGHUP: reopened the log file" in fresh
    assert "GET /v1/workers 200" in fresh
    assert "GET /v1/runtime 200" not in fresh


# -------------------------------------------------------------- Unix socket


@pytest.fixture
def short_tmp():
    # Unix socket paths are limited to about 100 bytes; pytest's tmp_path can be longer.
    directory = Path(f"/tmp/rtd-{os.getpid()}-{time.monotonic_ns()}")
    directory.mkdir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def start_on_unix_socket(path: Path, *args: str, env=None) -> RuntimedProcess:
    daemon = RuntimedProcess("--unix-socket", str(path), *args, env=env)
    daemon.process = subprocess.Popen(
        [sys.executable, "-m", "runtimed", "serve", "--unix-socket", str(path), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ if env is None else env),
    )
    # Unix-only mode prints a unix: start-up line, which RuntimedProcess does not parse.
    deadline = time.monotonic() + 10
    line = ""
    while time.monotonic() < deadline:
        line = daemon.process.stderr.readline()
        if line.startswith("runtimed listening on unix:") or not line:
            break
    assert line.startswith(f"runtimed listening on unix:{path} "), line
    return daemon


@pytest.mark.process
async def test_the_api_is_served_on_a_unix_socket_only_this_user_can_use(short_tmp):
    path = short_tmp / "runtimed.sock"
    daemon = start_on_unix_socket(path)
    try:
        mode = path.stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as session:
            async with session.post("http://localhost/v1/workers", json=TASK_REQUEST) as response:
                assert response.status == 200
                worker = (await response.json())["worker"]["worker_id"]
            async with session.get(f"http://localhost/v1/workers/{worker}") as response:
                assert (await response.json())["worker"]["status"] == "running"
        if shutil.which("curl"):
            result = subprocess.run(
                ["curl", "-s", "--unix-socket", str(path), "http://localhost/v1/runtime"],
                capture_output=True, text=True, timeout=10,
            )  # fmt: skip
            assert json.loads(result.stdout)["runtime"]["worker_count"] == 1
        # With only a socket configured, nothing listens on TCP.
        assert daemon.process.poll() is None
        daemon.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(daemon.process.wait, 5) == 0
        assert not path.exists()  # removed on the way out
    finally:
        daemon.close()


@pytest.mark.process
def test_a_stale_socket_file_is_replaced(short_tmp):
    path = short_tmp / "runtimed.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays; nobody listens
    daemon = start_on_unix_socket(path)
    try:
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(5) == 0
    finally:
        daemon.close()


@pytest.mark.process
def test_a_socket_another_daemon_listens_on_is_refused(short_tmp):
    path = short_tmp / "runtimed.sock"
    first = start_on_unix_socket(path)
    try:
        result = run_runtimed("serve", "--unix-socket", str(path))
        assert result.returncode == 1
        assert result.stderr.splitlines()[-1] == f"runtimed: another process is listening on {path}"
        assert first.process.poll() is None  # the first daemon is untouched
    finally:
        first.close()


@pytest.mark.process
def test_tcp_and_a_unix_socket_together_when_bind_is_given(short_tmp):
    path = short_tmp / "runtimed.sock"
    with RuntimedProcess("--bind", "127.0.0.1:0", "--unix-socket", str(path)) as daemon:
        assert request_json("GET", daemon.base_url + "/healthz")[0] == 200
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert f"runtimed listening on unix:{path} " in daemon.stderr
        assert daemon.stop() == 0


# ------------------------------------------------------------------ metrics


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``text``."""
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(label_text) + r"\}" if labels else "") + r" (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    assert match is not None, f"no sample {name}{{{label_text}}} in:\n{text}"
    return float(match.group(1))


async def test_metrics_count_requests_workers_sessions_and_observations(client, runtime):
    worker = (await create_worker(client))["worker_id"]
    await client.post(f"/v1/workers/{worker}/input", json={"kind": "user", "content": "x"})
    await client.get("/v1/workers/worker-0000ffff")
    async with client.ws_connect(f"/v1/workers/{worker}/events/ws") as ws:
        await ws.receive_json(timeout=5)
        response = await client.get("/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = await response.text()
    assert metric(text, "runtimed_http_requests_total", method="POST", route="/v1/workers", status="200") == 1
    assert (
        metric(text, "runtimed_http_requests_total", method="POST", route="/v1/workers/{worker_id}/input", status="200")
        == 1
    )
    assert (
        metric(text, "runtimed_http_requests_total", method="GET", route="/v1/workers/{worker_id}", status="404") == 1
    )
    assert metric(text, "runtimed_http_request_duration_seconds_count", method="POST", route="/v1/workers") == 1
    assert metric(text, "runtimed_workers", status="running") == 1
    assert metric(text, "runtimed_workers", status="stopped") == 0
    assert metric(text, "runtimed_websocket_sessions") == 1
    assert metric(text, "runtimed_observation_events_published_total") == 1
    assert metric(text, "runtimed_subscriber_overruns_total") == 0
    assert metric(text, "runtimed_store_flushes_total") == 0  # the memory store never flushes


def test_the_http_metrics_are_exported_as_prometheus_clients_own_metrics_would_be():
    # HttpMetrics keeps plain numbers where prometheus-client's Counter and Histogram take locks.
    reference = CollectorRegistry()
    requests = Counter(
        "runtimed_http_requests",
        "HTTP requests answered, by method, route and status.",
        ["method", "route", "status"],
        registry=reference,
    )
    latency = Histogram(
        "runtimed_http_request_duration_seconds",
        "Time to answer HTTP requests (WebSocket sessions: their whole length).",
        ["method", "route"],
        buckets=REQUEST_BUCKETS,
        registry=reference,
    )
    registry = CollectorRegistry()
    http = HttpMetrics()
    registry.register(http)
    seconds = [0.0, 0.0005, 0.00051, 0.001, 0.003, 0.0999, 0.1, 7.5, 10.0, 10.5, 1e6, *REQUEST_BUCKETS]
    for index, value in enumerate(seconds):
        method, route, status = ("GET", "/v1/runtime", 200) if index % 3 else ("POST", "unmatched", 404)
        requests.labels(method, route, str(status)).inc()
        latency.labels(method, route).observe(value)
        http.record(method, route, status, value)

    def without_created(text: bytes) -> list[str]:
        return [re.sub(r"_created(\{.*\})? \S+$", r"_created\1", line) for line in text.decode().splitlines()]

    assert without_created(generate_latest(registry)) == without_created(generate_latest(reference))


async def test_metrics_count_agents_pending_permissions_turns_and_restarts(client, runtime, backend):
    busy = runtime.worker_ref((await create_worker(client, ECHO_REQUEST))["worker_id"])
    idle = runtime.worker_ref((await create_worker(client, ECHO_REQUEST))["worker_id"])
    await runtime.update_execution(idle, state=ExecutionState.IDLE, pending_permissions=3)
    await runtime.update_execution(idle, state=ExecutionState.RESTARTING)
    await runtime.update_execution(idle, state=ExecutionState.IDLE)
    for text in ("a", "b"):
        await client.post(f"/v1/workers/{busy.worker_id}/input", json={"kind": "user", "content": text})
    await run_turn(runtime, busy, reason=StopReason.MAX_TOKENS)
    await runtime.begin_turn(busy)

    text = await (await client.get("/metrics")).text()

    assert metric(text, "runtimed_agents", state="busy") == 1
    assert metric(text, "runtimed_agents", state="idle") == 1
    assert metric(text, "runtimed_agents", state="starting") == 0
    assert metric(text, "runtimed_pending_permissions") == 3
    assert metric(text, "runtimed_agent_restarts_total") == 1
    assert metric(text, "runtimed_turns_total", stop_reason="max_tokens") == 1
    assert metric(text, "runtimed_turns_total", stop_reason="end_turn") == 0
    assert metric(text, "runtimed_turn_duration_seconds_count") == 1
    assert metric(text, "runtimed_turn_duration_seconds_bucket", le="+Inf") == 1


async def test_metrics_count_fs_store_flushes_and_their_latency(tmp_path, aiohttp_client):
    runtime = await Runtime.open(FsStore(tmp_path / "root"))
    client = await aiohttp_client(create_app(runtime))
    await create_worker(client)
    text = await (await client.get("/metrics")).text()
    flushes = metric(text, "runtimed_store_flushes_total")
    assert flushes >= 2  # runtime_started, then the create
    assert metric(text, "runtimed_store_flush_seconds_count") == flushes
    assert metric(text, "runtimed_store_flush_seconds_bucket", le="+Inf") == flushes
    assert metric(text, "runtimed_store_flush_seconds_sum") > 0
    await runtime.close()


async def test_metrics_need_the_token_unless_made_public(aiohttp_client):
    runtime = await Runtime.open(MemoryStore())
    private = await aiohttp_client(create_app(runtime, ServerConfig(local_token=Secret(TOKEN))))
    assert (await private.get("/metrics")).status == 401
    assert (await private.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).status == 200
    public = await aiohttp_client(create_app(runtime, ServerConfig(local_token=Secret(TOKEN), metrics_public=True)))
    assert (await public.get("/metrics")).status == 200
    assert (await public.get("/v1/runtime")).status == 401


# --------------------------------------------------------------------- logs


@pytest.mark.process
def test_json_logs_have_one_line_per_request_and_no_token(tmp_path):
    env = {**os.environ, "RUNTIMED_TEST_TOKEN": TOKEN}
    with RuntimedProcess(
        "--bind", "127.0.0.1:0", "--log-format", "json", "--local-token-env", "RUNTIMED_TEST_TOKEN", env=env
    ) as daemon:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        request_json("POST", daemon.base_url + "/v1/workers", TASK_REQUEST, headers=headers)
        request_json("GET", daemon.base_url + "/v1/runtime", headers={"Authorization": f"Bearer {TOKEN}x"})
        request_json("POST", daemon.base_url + "/v1/workers/worker-00000001/stop", headers=headers)
        assert daemon.stop() == 0
    lines = [json.loads(line) for line in daemon.stderr.splitlines() if line.startswith("{")]
    requests = [(rec["method"], rec["path"], rec["status"]) for rec in lines if rec["logger"] == "runtimed.access"]
    assert requests == [
        ("POST", "/v1/workers", 200),
        ("GET", "/v1/runtime", 401),
        ("POST", "/v1/workers/worker-00000001/stop", 200),
    ]
    assert all(isinstance(rec["duration_ms"], float) for rec in lines if rec["logger"] == "runtimed.access")
    lifecycle = [rec["message"] for rec in lines if rec["logger"] == "runtimed.runtime"]
    assert "worker worker-00000001 created" in lifecycle
    assert "worker worker-00000001 stopped: worker stopped" in lifecycle
    assert TOKEN not in daemon.stderr


#: A text log record: time, level, logger, message.
RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<logger>[\w.]+): (?P<message>.*)")
#: A worker id that tries to forge a log line: newline, carriage return, an ANSI escape, C1 and
#: DEL, the Unicode line and paragraph separators, and a backslash, percent-encoded in the path.
FORGED_ID = "a%0a2026-01-01%2000:00:00,000%20INFO%20runtimed.access:%20FORGED%0d%1b[31m%C2%85%7F%E2%80%A8%E2%80%A9%5Cx"
FORGED_ID_ESCAPED = r"a\n2026-01-01 00:00:00,000 INFO runtimed.access: FORGED\r\x1b[31m\x85\x7f\u2028\u2029\\x"
RAW_CONTROLS = ["\r", "\x1b", "\x85", "\x7f", "\u2028", "\u2029"]


def text_log_records(text: str) -> list[tuple[str, str, str]]:
    """(level, logger, message) of each line of a text log, each line checked to be a record."""
    lines = text.split("\n")
    assert lines[-1] == ""
    records = []
    for line in lines[:-1]:
        match = RECORD.fullmatch(line)
        assert match is not None, f"not a log record: {line!r}"
        records.append((match["level"], match["logger"], match["message"]))
    return records


@pytest.mark.process
def test_client_values_are_escaped_in_the_text_log(tmp_path):
    log_file = tmp_path / "runtimed.log"
    env = {**os.environ, "RUNTIMED_TEST_TOKEN": TOKEN}
    args = ("--bind", "127.0.0.1:0", "--local-token-env", "RUNTIMED_TEST_TOKEN", "--log-file", str(log_file))
    with RuntimedProcess(*args, env=env) as daemon:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert request_json("GET", f"{daemon.base_url}/v1/workers/{FORGED_ID}")[0] == 401
        assert request_json("GET", f"{daemon.base_url}/v1/workers/{FORGED_ID}", headers=headers)[0] == 404
        assert request_json("POST", f"{daemon.base_url}/nope/{FORGED_ID}", headers=headers)[0] == 404
        assert request_json("POST", daemon.base_url + "/v1/workers", TASK_REQUEST, headers=headers)[0] == 200
        reason = "done\n2026-01-01 00:00:00,000 INFO runtimed.access: FORGED\u2028\ud800"
        stop = daemon.base_url + "/v1/workers/worker-00000001/stop"
        assert request_json("POST", stop, {"reason": reason}, headers=headers)[0] == 200
        assert daemon.stop() == 0
    text = log_file.read_text(encoding="utf-8")
    records = text_log_records(text)
    for control in RAW_CONTROLS:
        assert control not in text
    access = [message.rsplit(" ", 1)[0] for _, logger, message in records if logger == "runtimed.access"]
    assert access == [
        f"GET /v1/workers/{FORGED_ID_ESCAPED} 401",
        f"GET /v1/workers/{FORGED_ID_ESCAPED} 404",
        f"POST /nope/{FORGED_ID_ESCAPED} 404",
        "POST /v1/workers 200",
        "POST /v1/workers/worker-00000001/stop 200",
    ]
    assert (
        "INFO",
        "runtimed.runtime",
        r"worker worker-00000001 stopped: done\n2026-01-01 00:00:00,000 INFO runtimed.access: FORGED\u2028\ud800",
    ) in records
    assert not any(message.startswith("FORGED") for _, _, message in records)
    assert "Logging error" not in daemon.stderr  # a lone surrogate cannot be written as UTF-8


@pytest.mark.process
def test_json_logs_keep_what_a_client_sent_as_json_escapes(tmp_path):
    log_file = tmp_path / "runtimed.log"
    with RuntimedProcess("--bind", "127.0.0.1:0", "--log-format", "json", "--log-file", str(log_file)) as daemon:
        request_json("POST", daemon.base_url + "/v1/workers", TASK_REQUEST)
        reason = "done\n\x1b[31m\u2028\ud800"
        stop = daemon.base_url + "/v1/workers/worker-00000001/stop"
        assert request_json("POST", stop, {"reason": reason})[0] == 200
        assert request_json("GET", f"{daemon.base_url}/v1/workers/{FORGED_ID}")[0] == 404
        assert daemon.stop() == 0
    lines = log_file.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    records = [json.loads(line) for line in lines[:-1]]
    assert f"worker worker-00000001 stopped: {reason}" in [record["message"] for record in records]
    paths = [record["path"] for record in records if record["logger"] == "runtimed.access"]
    assert paths[-1] == "/v1/workers/" + urllib.parse.unquote(FORGED_ID)
    assert "Logging error" not in daemon.stderr


@pytest.mark.process
def test_a_malformed_http_request_is_one_warning_line(tmp_path):
    log_file = tmp_path / "runtimed.log"
    with RuntimedProcess("--bind", "127.0.0.1:0", "--log-file", str(log_file)) as daemon:
        bad_header = b"GET /v1/runtime HTTP/1.1\r\nHost: localhost\r\nBad\x1bHeader\r\n\r\n"
        assert send_raw(daemon.host, daemon.port, bad_header).startswith(b"HTTP/1.0 400 Bad Request\r\n")
        bad_path = b"GET /v1/runtime\x1b[31m HTTP/1.1\r\nHost: localhost\r\n\r\n"
        assert send_raw(daemon.host, daemon.port, bad_path).startswith(b"HTTP/1.0 400 Bad Request\r\n")
        assert request_json("GET", daemon.base_url + "/v1/runtime")[0] == 200  # still serving
        assert daemon.stop() == 0
    text = log_file.read_text(encoding="utf-8")
    records = text_log_records(text)
    assert "Traceback" not in text and "\x1b" not in text
    assert [(level, logger) for level, logger, _ in records if logger.startswith("aiohttp")] == [
        ("WARNING", "aiohttp.server"),
        ("WARNING", "aiohttp.server"),
    ]
    server = [message for _, logger, message in records if logger == "aiohttp.server"]
    # aiohttp's parser writes the bytes as a Python bytes literal; the log escapes its backslash.
    assert server[0] == r"malformed HTTP request from 127.0.0.1: Invalid header token: b'Bad\\x1bHeader'"
    assert server[1].startswith(r"malformed HTTP request from 127.0.0.1: Invalid char in url path: b'GET /v1/")
    assert r"\\x1b[31m" in server[1]
    assert not any(level == "ERROR" for level, _, _ in records)


@pytest.mark.process
def test_a_body_in_an_unknown_encoding_is_a_400_and_one_warning_line(tmp_path):
    log_file = tmp_path / "runtimed.log"
    with RuntimedProcess("--bind", "127.0.0.1:0", "--log-file", str(log_file)) as daemon:
        request_json("POST", daemon.base_url + "/v1/workers", TASK_REQUEST)
        body = b"not gzip at all"
        request = (
            b"POST /v1/workers/worker-00000001/input HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        answer = send_raw(daemon.host, daemon.port, request)
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert b'"code":"invalid_json"' in answer
        assert daemon.stop() == 0
    text = log_file.read_text(encoding="utf-8")
    records = text_log_records(text)
    assert "Traceback" not in text
    assert ("INFO", "runtimed.access") in [(level, logger) for level, logger, message in records if " 400 " in message]
    assert [(level, message) for level, _, message in records if level in ("WARNING", "ERROR")] == [
        ("WARNING", "malformed HTTP request: Can not decode content-encoding: gzip")
    ]


@pytest.mark.process
def test_the_log_level_filters_lines():
    with RuntimedProcess("--bind", "127.0.0.1:0", "--log-level", "warning") as daemon:
        request_json("GET", daemon.base_url + "/v1/runtime")
        assert daemon.stop() == 0
    assert "runtimed.access" not in daemon.stderr
    assert "runtimed listening on" in daemon.stderr  # the start-up line is not a log line


# ---------------------------------------------------------------- readiness


async def test_readyz_is_ready_with_a_loaded_writable_store_and_needs_no_token(tmp_path, aiohttp_client):
    runtime = await Runtime.open(FsStore(tmp_path / "root"))
    client = await aiohttp_client(create_app(runtime, ServerConfig(local_token=Secret(TOKEN))))
    response = await client.get("/readyz")
    assert (response.status, await response.json()) == (200, {"status": "ready"})
    await runtime.close()


async def test_readyz_is_503_until_every_agent_restore_has_been_attempted(client, backend):
    backend.ready = False
    response = await client.get("/readyz")
    assert response.status == 503
    assert await response.json() == {
        "error": {"code": "not_ready", "message": "not ready: agents of running workers are still being restored"}
    }
    backend.ready = True
    assert (await client.get("/readyz")).status == 200


@pytest.mark.process
@pytest.mark.skipif(shutil.which("chattr") is None, reason="chattr is not installed here")
async def test_readyz_is_503_while_the_store_cannot_write_and_200_again_after(tmp_path, aiohttp_client):
    runtime = await Runtime.open(FsStore(tmp_path / "root"))
    client = await aiohttp_client(create_app(runtime))
    (runtime_dir,) = (tmp_path / "root" / "runtimes").iterdir()
    # The immutable flag refuses writes even to root, which the test suite runs as in CI: the
    # runtime directory (where the probe writes) and the log segment (where a commit appends).
    (segment,) = (runtime_dir / "log").iterdir()
    made_immutable = subprocess.run(["chattr", "+i", str(runtime_dir), str(segment)], capture_output=True, text=True)
    if made_immutable.returncode != 0:
        pytest.skip(f"this filesystem has no immutable flag: {made_immutable.stderr.strip()}")
    try:
        response = await client.get("/readyz")
        assert response.status == 503
        body = await response.json()
        assert body["error"]["code"] == "not_ready"
        assert str(runtime_dir) in body["error"]["message"]
        response = await client.post("/v1/workers", json=TASK_REQUEST)
        assert (response.status, (await response.json())["error"]["code"]) == (500, "store_io")
    finally:
        subprocess.run(["chattr", "-i", str(runtime_dir), str(segment)], check=True)
    assert (await client.get("/readyz")).status == 200
    assert (await client.post("/v1/workers", json=TASK_REQUEST)).status == 200
    await runtime.close()


async def test_readyz_is_503_on_a_full_disk_and_200_again_after(tmp_path, aiohttp_client, monkeypatch):
    import errno

    import runtimed.store.fs.files as fs_files

    runtime = await Runtime.open(FsStore(tmp_path / "root"))
    client = await aiohttp_client(create_app(runtime))
    (runtime_dir,) = (tmp_path / "root" / "runtimes").iterdir()
    real_write_all = fs_files.write_all

    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")  # an empty file would still fit

    monkeypatch.setattr(fs_files, "write_all", full_disk)
    response = await client.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["error"]["code"] == "not_ready"
    assert "No space left on device" in body["error"]["message"]
    assert str(runtime_dir) + "/" in body["error"]["message"]  # names the file, not only the directory
    response = await client.post("/v1/workers", json=TASK_REQUEST)
    assert response.status == 500
    error = (await response.json())["error"]
    assert error["code"] == "store_io" and "No space left on device" in error["message"]
    assert ".jsonl" in error["message"]
    assert (await client.get("/readyz")).status == 503

    monkeypatch.setattr(fs_files, "write_all", real_write_all)
    assert (await client.get("/readyz")).status == 200
    assert (await client.post("/v1/workers", json=TASK_REQUEST)).status == 200
    assert list(runtime_dir.glob(".*")) == []  # the probe removes what it wrote
    await runtime.close()


async def test_readyz_is_503_when_the_runtime_is_poisoned(aiohttp_client):
    store = BrokenStore()
    runtime = await Runtime.open(store)
    client = await aiohttp_client(create_app(runtime))
    store.failing = True
    await client.post("/v1/workers", json=TASK_REQUEST)
    response = await client.get("/readyz")
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "not_ready"
