"""Connections (issue 9): a client that connects and sends nothing, half a request, or nothing
after a response is closed; a body that does not arrive is ``408 request_timeout``; open
connections are capped, and idle ones make room for working ones. Over real sockets, with raw
clients where a well-behaved client library could not misbehave on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from runtimed.daemon import openfiles, serve
from runtimed.daemon.openfiles import AcceptErrors, OpenFileLimit
from runtimed.runtime import Runtime
from runtimed.web import schemas
from runtimed.web.app import create_app
from runtimed.web.connections import Connection, ConnectionGuard, ConnectionRunner
from runtimed.web.settings import ServerConfig

from .helpers import TASK_REQUEST, wait_until
from .process import RuntimedProcess, request_json

#: Timeouts short enough for tests; the config allows fractions of a second.
SHORT = ServerConfig(header_timeout_seconds=0.3, keepalive_timeout_seconds=0.2, body_timeout_seconds=0.3)
#: How long a failing test waits for something that should happen within the timeouts above.
BOUND = 10.0

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Served:
    """A ``ConnectionRunner`` serving the app on a real port, and the raw clients of a test."""

    def __init__(self, runner: ConnectionRunner) -> None:
        self.runner = runner
        self.port: int = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._writers: list[asyncio.StreamWriter] = []

    async def connect(self) -> Stream:
        """A raw connection, once the server has made it its own (counted)."""
        opened = self.runner.guard.open
        replaced, refused = self.runner.guard.replaced, self.runner.guard.refused
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writers.append(writer)
        guard = self.runner.guard
        await wait_until(
            lambda: (guard.open, guard.replaced, guard.refused) != (opened, replaced, refused),
            BOUND,
            "the server to take the connection",
        )
        return reader, writer

    def close_clients(self) -> None:
        # Before the runner's cleanup: a connection whose body never came would keep aiohttp
        # lingering on it for seconds.
        for writer in self._writers:
            writer.close()


@contextlib.asynccontextmanager
async def serving(
    runtime: Runtime, config: ServerConfig = SHORT, max_connections: int | None = None
) -> AsyncIterator[Served]:
    runner = ConnectionRunner(create_app(runtime, config), max_connections=max_connections, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        served = Served(runner)
        try:
            yield served
        finally:
            served.close_clients()
    finally:
        await runner.cleanup()


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    try:
        return await asyncio.wait_for(reader.read(), BOUND)
    except ConnectionResetError:
        return b""


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a ``Content-Length``: status, headers (lower-case names), body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
    status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), BOUND)
    return int(status_line.split()[1]), headers, body


def request_head(method: str, path: str, length: int | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if length is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {length}\r\n"
    return (head + "\r\n").encode()


async def trickle(writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> None:
    """A slow client: one more header line every 50 ms, never the blank line that ends them."""
    for _ in range(int(BOUND / 0.05)):
        if reader.at_eof() or writer.is_closing():
            return
        try:
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(0.05)


def one_session() -> aiohttp.ClientSession:
    """A client that opens a new connection per request: a pooled one could be closed under it."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


# ------------------------------------------------------------------ idle connections


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(runtime):
    async with serving(runtime) as served:
        reader, _ = await served.connect()

        assert await closed_by_server(reader) == b""
        await wait_until(lambda: served.runner.guard.open == 0, BOUND, "the connection to be released")


@pytest.mark.parametrize("after_a_response", [False, True], ids=["first request", "after a response"])
async def test_headers_trickling_in_are_closed_after_the_header_timeout(runtime, after_a_response):
    async with serving(runtime) as served:
        reader, writer = await served.connect()
        if after_a_response:
            writer.write(request_head("GET", "/healthz"))
            status, headers, _ = await read_response(reader)
            assert (status, headers.get("connection", "keep-alive")) == (200, "keep-alive")
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        slow = asyncio.create_task(trickle(writer, reader))

        assert await closed_by_server(reader) == b""
        await slow


async def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(runtime):
    async with serving(runtime) as served:
        reader, writer = await served.connect()
        writer.write(request_head("GET", "/healthz"))
        status, headers, _ = await read_response(reader)
        assert (status, headers.get("connection", "keep-alive")) == (200, "keep-alive")

        assert await closed_by_server(reader) == b""


async def test_a_keep_alive_connection_serves_a_next_request_that_comes_in_time(runtime):
    async with serving(runtime, ServerConfig()) as served:
        reader, writer = await served.connect()
        for _ in range(3):
            writer.write(request_head("GET", "/healthz"))
            status, _, body = await read_response(reader)
            assert (status, json.loads(body)) == (200, {"status": "ok"})


async def test_requests_on_a_keep_alive_connection_set_no_timer_each(runtime, monkeypatch):
    async with serving(runtime, ServerConfig()) as served:
        reader, writer = await served.connect()
        # The first response brings the deadline nearer (keep-alive 20 s < header 30 s): a timer.
        writer.write(request_head("GET", "/healthz"))
        assert (await read_response(reader))[0] == 200
        loop = asyncio.get_running_loop()
        timers: list[Any] = []
        call_at = loop.call_at

        def counting_call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
            if isinstance(getattr(callback, "__self__", None), Connection):
                timers.append(callback)
            return call_at(when, callback, *args, **kwargs)

        monkeypatch.setattr(loop, "call_at", counting_call_at)
        for _ in range(20):
            writer.write(request_head("GET", "/healthz"))
            assert (await read_response(reader))[0] == 200
        assert timers == []  # the one the connection had keeps running; its deadline moves


async def test_a_connection_kept_busy_past_every_timeout_stays_open_and_closes_once_idle(runtime):
    # Each request moves the deadline later than the timer set for it: the timer, when it
    # fires, must wait on for the deadline rather than close the connection.
    async with serving(runtime) as served:
        reader, writer = await served.connect()
        for _ in range(8):  # 0.8 s: past the header (0.3 s) and keep-alive (0.2 s) timeouts
            writer.write(request_head("GET", "/healthz"))
            assert (await read_response(reader))[0] == 200
            await asyncio.sleep(0.1)
        assert await closed_by_server(reader) == b""


async def test_a_request_being_handled_is_not_cut_by_the_header_timeout(runtime):
    config = ServerConfig(header_timeout_seconds=0.2, keepalive_timeout_seconds=0.2, body_timeout_seconds=BOUND)
    async with serving(runtime, config) as served:
        body = json.dumps(TASK_REQUEST).encode()
        reader, writer = await served.connect()
        writer.write(request_head("POST", "/v1/workers", len(body)) + body[:10])
        # A connection opened after this one has been closed for idling: this one, waiting
        # for the rest of its body, is past the header timeout too.
        idle, _ = await served.connect()
        assert await closed_by_server(idle) == b""

        writer.write(body[10:])
        status, _, answer = await read_response(reader)

        assert status == 200, answer
        assert json.loads(answer)["worker"]["worker_id"] == "worker-00000001"


async def test_a_websocket_session_outlives_the_header_and_keepalive_timeouts(runtime):
    async with serving(runtime) as served, one_session() as session:
        async with session.post(served.url + "/v1/workers", json=TASK_REQUEST) as response:
            worker_id = (await response.json())["worker"]["worker_id"]
        async with session.ws_connect(f"{served.url}/v1/workers/{worker_id}/events/ws") as ws:
            snapshot = await ws.receive_json(timeout=BOUND)
            assert snapshot["envelope"]["payload"]["event"] == "snapshot"
            idle, _ = await served.connect()
            assert await closed_by_server(idle) == b""  # the timeouts have passed

            async with session.post(
                f"{served.url}/v1/workers/{worker_id}/input", json={"kind": "user", "content": "still there?"}
            ) as response:
                assert response.status == 200
            frame = await ws.receive_json(timeout=BOUND)

            assert frame["envelope"]["payload"]["event"] == "user_message"
            assert not ws.closed


# ------------------------------------------------------------------------- bodies


async def test_a_body_that_does_not_arrive_in_time_is_408_request_timeout_and_closes(runtime):
    async with serving(runtime) as served:
        body = json.dumps(TASK_REQUEST).encode()
        reader, writer = await served.connect()
        writer.write(request_head("POST", "/v1/workers", len(body)) + body[:10])

        status, headers, answer = await read_response(reader)
        assert await closed_by_server(reader) == b""

    assert (status, headers["connection"]) == (408, "close")
    error = json.loads(answer)
    assert error == {"error": {"code": "request_timeout", "message": "the request body did not arrive within 0.3 s"}}
    assert schemas.ErrorResponseSchema().validate(error) == {}
    assert runtime.list_workers() == []


async def test_a_chunked_body_that_stops_is_408_request_timeout(runtime):
    async with serving(runtime) as served:
        reader, writer = await served.connect()
        writer.write(
            b"POST /v1/workers HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"int\r\n'
        )

        status, _, answer = await read_response(reader)

    assert (status, json.loads(answer)["error"]["code"]) == (408, "request_timeout")


async def test_a_client_that_goes_away_mid_body_is_logged_as_499_without_a_traceback(runtime, caplog):
    caplog.set_level(logging.INFO)
    async with serving(runtime, ServerConfig(body_timeout_seconds=BOUND)) as served:
        _, writer = await served.connect()
        writer.write(
            b"POST /v1/workers HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"int\r\n'
        )
        await writer.drain()
        await wait_until(lambda: served.runner.guard.busy == 1, BOUND, "the handler to start reading")
        writer.transport.abort()
        await wait_until(lambda: "POST /v1/workers 499" in caplog.text, BOUND, "the access line")

    assert "client went away during POST /v1/workers" in caplog.text
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING or record.exc_info]
    assert runtime.list_workers() == []


# ----------------------------------------------------------------------- the cap


async def test_at_the_cap_a_new_connection_takes_the_place_of_the_longest_idle_one(runtime, caplog):
    caplog.set_level(logging.WARNING, "runtimed.connections")
    async with serving(runtime, ServerConfig(), max_connections=3) as served:
        idle = [await served.connect() for _ in range(3)]

        async with one_session() as session, session.get(served.url + "/healthz") as response:
            assert response.status == 200

        assert await closed_by_server(idle[0][0]) == b""  # the longest idle
        guard = served.runner.guard
        await wait_until(lambda: guard.open == 2, BOUND, "the client's connection to be released")
        assert (guard.replaced, guard.refused) == (1, 0)
        (warning,) = [record.getMessage() for record in caplog.records]
        assert "at the cap of 3 open connections: closed 1 idle to make room, refused 0" in warning


async def test_past_the_cap_with_every_connection_busy_a_connection_is_answered_503_and_closed(runtime, caplog):
    caplog.set_level(logging.WARNING, "runtimed.connections")
    async with serving(runtime, ServerConfig(), max_connections=1) as served, one_session() as session:
        worker_id = (await (await session.post(served.url + "/v1/workers", json=TASK_REQUEST)).json())["worker"][
            "worker_id"
        ]
        async with session.ws_connect(f"{served.url}/v1/workers/{worker_id}/events/ws") as ws:
            await ws.receive_json(timeout=BOUND)
            refused = [await served.connect() for _ in range(3)]
            answers = [await closed_by_server(reader) for reader, _ in refused]

            for answer in answers:
                head, _, body = answer.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
                assert b"\r\nConnection: close" in head
                assert json.loads(body) == {
                    "error": {"code": "too_many_connections", "message": "too many open connections; try again later"}
                }
            assert served.runner.guard.refused == 3
            # At most one WARNING per interval: the first refusal is told at once, the others later.
            (warning,) = [record.getMessage() for record in caplog.records]
            assert "refused 1 " in warning
            assert not ws.closed

    # What was not told yet is told at shutdown.
    assert (
        "closed 0 idle to make room, refused 2 (since the start: 0 closed, 3 refused)"
        in caplog.records[-1].getMessage()
    )


def test_a_guard_needs_room_for_one_connection():
    with pytest.raises(ValueError, match="at least 1"):
        ConnectionGuard(0)


# ------------------------------------------------------------- the open-file limit


@pytest.mark.parametrize(
    ("soft", "max_connections", "listeners", "cap"),
    [
        (1024, 1000, 1, 1024 - openfiles.reserved(1)),
        (524288, 1000, 1, 1000),
        (256, 1000, 2, 256 - openfiles.reserved(2)),
    ],
)
def test_the_cap_is_the_configured_maximum_or_what_the_open_file_limit_leaves(soft, max_connections, listeners, cap):
    assert OpenFileLimit(soft, soft).connection_cap(max_connections, listeners) == cap


def test_the_reserve_holds_the_store_and_the_accept_batches_of_each_listener():
    assert openfiles.reserved(1) == openfiles.FD_RESERVE + openfiles.LISTEN_BACKLOG * openfiles.ACCEPT_BATCHES
    assert openfiles.reserved(2) - openfiles.reserved(1) == openfiles.LISTEN_BACKLOG * openfiles.ACCEPT_BATCHES


def test_an_open_file_limit_with_no_room_for_connections_stops_the_daemon():
    limit = OpenFileLimit(100, 100)

    with pytest.raises(serve.StartError, match="the open file limit of 100 leaves no room for connections"):
        serve.connection_cap(ServerConfig(), limit)


def test_the_effective_cap_is_logged(caplog):
    caplog.set_level(logging.INFO, "runtimed")

    assert serve.connection_cap(ServerConfig(max_connections=50), OpenFileLimit(4096, 1024)) == 50
    assert serve.connection_cap(ServerConfig(), OpenFileLimit(256, 256)) == 256 - openfiles.reserved(1)

    configured, reduced = caplog.records
    assert (configured.levelname, configured.getMessage()) == (
        "INFO",
        "open file limit 4096 (raised from 1024): at most 50 connections at once",
    )
    assert (reduced.levelname, reduced.getMessage()) == (
        "INFO",
        f"open file limit 256: at most {256 - openfiles.reserved(1)} connections at once, fewer than "
        f"[server] max_connections = 1000 ({openfiles.reserved(1)} file descriptors are kept for the store, "
        "the log and the listening sockets)",
    )


class FakeLimits:
    """``resource.getrlimit``/``setrlimit`` for ``RLIMIT_NOFILE``, without touching the test process."""

    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        self.limits = (soft, hard)
        self.refuse = refuse

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == openfiles.resource.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        if self.refuse:
            raise ValueError("not allowed to raise maximum limit")
        self.limits = limits


@pytest.mark.parametrize(
    ("soft", "hard", "refuse", "expected"),
    [
        (1024, 524288, False, OpenFileLimit(524288, 1024)),
        (4096, 4096, False, OpenFileLimit(4096, 4096)),
        (1024, 4096, True, OpenFileLimit(1024, 1024)),
    ],
)
def test_the_soft_open_file_limit_is_raised_to_the_hard_limit(monkeypatch, soft, hard, refuse, expected):
    fake = FakeLimits(soft, hard, refuse)
    monkeypatch.setattr(openfiles.resource, "getrlimit", fake.getrlimit)
    monkeypatch.setattr(openfiles.resource, "setrlimit", fake.setrlimit)

    assert openfiles.raise_open_file_limit() == expected
    assert fake.limits == (expected.soft, hard if refuse else expected.soft)


async def test_a_failed_accept_is_one_line_at_most_every_interval_and_other_errors_pass_through(caplog):
    loop = asyncio.get_running_loop()
    now = [0.0]
    passed: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: passed.append(context))
    failed = {"message": AcceptErrors.MESSAGE, "exception": OSError(24, "Too many open files")}
    try:
        with AcceptErrors(loop, clock=lambda: now[0], seconds=10):
            for now[0] in (0.0, 1.0, 2.0, 11.0):
                loop.call_exception_handler(failed)
            loop.call_exception_handler({"message": "something else"})
        assert loop.get_exception_handler() is not None  # the one it replaced is back
    finally:
        loop.set_exception_handler(None)

    lines = [record.getMessage() for record in caplog.records if record.name == "runtimed"]
    assert lines == [
        "cannot accept connections: Too many open files; retrying in a second",
        "cannot accept connections: Too many open files; retrying in a second (2 more since the last warning)",
    ]
    assert all(record.exc_info is None for record in caplog.records)
    assert passed == [{"message": "something else"}]


# -------------------------------------------------------------------- a real daemon


@pytest.mark.process
async def test_a_daemon_short_of_file_descriptors_keeps_serving_past_its_cap_without_tracebacks(tmp_path):
    config = tmp_path / "runtimed.toml"
    config.write_text("[server]\nheader_timeout_seconds = 3\n")
    limit = 256
    with RuntimedProcess("--bind", "127.0.0.1:0", "--config", str(config), open_file_limit=limit) as daemon:
        match = re.search(r"open file limit (\d+): at most (\d+) connections at once", daemon.stderr)
        assert match is not None, daemon.stderr
        assert int(match[1]) == limit
        cap = int(match[2])
        assert 0 < cap < limit

        # More connections than the daemon has file descriptors, each with half a request.
        idle: list[Stream] = []
        for _ in range(limit + 44):
            reader, writer = await asyncio.open_connection(daemon.host, daemon.port)
            writer.write(b"GET /healthz HTTP/1.1\r\n")
            idle.append((reader, writer))

        def closed() -> int:
            return sum(reader.at_eof() or reader.exception() is not None for reader, _ in idle)

        try:
            # The daemon keeps at most `cap` of them: the others are closed at once...
            await wait_until(lambda: closed() >= len(idle) - cap, BOUND, "the connections past the cap to close")
            # ...and a working client still gets in.
            status, _, body = await asyncio.to_thread(request_json, "GET", daemon.base_url + "/healthz")
            assert (status, body) == (200, {"status": "ok"})
            # The header timeout closes the rest.
            await wait_until(lambda: closed() == len(idle), BOUND, "the idle connections to time out")
        finally:
            for _, writer in idle:
                writer.close()
        assert daemon.stop() == 0

    log = daemon.stderr
    assert "Traceback" not in log
    assert "Too many open files" not in log
    warnings = [line for line in log.splitlines() if "WARNING runtimed.connections" in line]
    assert 1 <= len(warnings) <= 3, log
    assert sum(int(n) for n in re.findall(r"closed (\d+) idle to make room", "\n".join(warnings))) > 0
