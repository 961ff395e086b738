"""The daemon's log writing: lines batched per pass of the event loop and flushed when they must
be (at a stop, on SIGHUP, at exit), the access line written straight to the handler exactly as
its record would be, and the text format's time made once a second exactly as logging makes it.
(What a line says, escaped, is in ``test_input_bounds.py`` and ``test_operations.py``.)"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from runtimed.daemon.logs import (
    MAX_PENDING_LINES,
    BatchingHandler,
    JsonFormatter,
    ReopenableFileHandler,
    TextFormatter,
)
from runtimed.web.middleware import log_access

from .process import RuntimedProcess, request_json

TEXT_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


class CountingStream(io.StringIO):
    """A stream that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def handler() -> Iterator[BatchingHandler]:
    """A text handler on a counting stream, the only handler of the root logger (at INFO)."""
    handler = BatchingHandler(CountingStream())
    handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        handler.stop_batching()
        root.handlers[:], root.level = saved


def written(handler: BatchingHandler) -> list[str]:
    stream = handler.stream
    assert isinstance(stream, CountingStream)
    return stream.getvalue().split("\n")[:-1]  # not splitlines: a JSON line may hold a raw U+2028


def writes(handler: BatchingHandler) -> int:
    stream = handler.stream
    assert isinstance(stream, CountingStream)
    return stream.writes


def messages(lines: list[str]) -> list[str]:
    return [TEXT_TIME.sub("", line) for line in lines]


async def test_the_lines_of_one_pass_of_the_loop_are_written_together_at_the_next(handler):
    handler.start_batching(asyncio.get_running_loop())
    access = handler.access_log()
    logging.getLogger("runtimed.runtime").info("worker %s created", "w-1")
    access("GET", "/v1/runtime", 200, 0.0012, "/v1/runtime")
    logging.getLogger("runtimed.web").warning("a\nb")
    assert written(handler) == [] and writes(handler) == 0
    await asyncio.sleep(0)
    assert messages(written(handler)) == [
        "INFO runtimed.runtime: worker w-1 created",
        "INFO runtimed.access: GET /v1/runtime 200 1.2ms",
        r"WARNING runtimed.web: a\nb",
    ]
    assert writes(handler) == 1


async def test_a_pass_that_logs_much_writes_before_it_ends(handler):
    handler.start_batching(asyncio.get_running_loop())
    log = logging.getLogger("runtimed.x")
    for index in range(MAX_PENDING_LINES + 1):
        log.info("line %d", index)
    assert len(written(handler)) == MAX_PENDING_LINES and writes(handler) == 1
    await asyncio.sleep(0)
    assert len(written(handler)) == MAX_PENDING_LINES + 1


async def test_stopping_the_batching_writes_what_is_pending_and_then_every_line_at_once(handler):
    handler.start_batching(asyncio.get_running_loop())
    logging.getLogger("runtimed.x").info("pending")
    handler.stop_batching()
    assert messages(written(handler)) == ["INFO runtimed.x: pending"]
    logging.getLogger("runtimed.x").info("at once")
    assert messages(written(handler)) == ["INFO runtimed.x: pending", "INFO runtimed.x: at once"]


async def test_a_flush_writes_what_is_pending(handler):
    # What logging.shutdown calls on every handler, at exit and before the second SIGINT's exit.
    handler.start_batching(asyncio.get_running_loop())
    logging.getLogger("runtimed.x").info("pending")
    handler.flush()
    assert messages(written(handler)) == ["INFO runtimed.x: pending"]


async def test_a_line_from_another_thread_is_written_at_once(handler):
    handler.start_batching(asyncio.get_running_loop())
    thread = threading.Thread(target=lambda: logging.getLogger("runtimed.thread").info("from a thread"))
    thread.start()
    thread.join()
    assert messages(written(handler)) == ["INFO runtimed.thread: from a thread"]


async def test_reopening_the_file_writes_what_is_pending_to_the_old_one(tmp_path):
    path = tmp_path / "runtimed.log"
    handler = ReopenableFileHandler(path)
    handler.setFormatter(TextFormatter())
    handler.start_batching(asyncio.get_running_loop())
    try:
        handler.handle(logging.makeLogRecord({"name": "runtimed.x", "msg": "before", "levelname": "INFO"}))
        path.rename(tmp_path / "runtimed.log.1")
        handler.reopen()
        handler.handle(logging.makeLogRecord({"name": "runtimed.x", "msg": "after", "levelname": "INFO"}))
        await asyncio.sleep(0)
    finally:
        handler.close()
    assert messages((tmp_path / "runtimed.log.1").read_text().splitlines()) == ["INFO runtimed.x: before"]
    assert messages(path.read_text().splitlines()) == ["INFO runtimed.x: after"]


class BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError("no space left on device")


async def test_a_failed_write_is_reported_once_and_loses_only_its_lines(handler, capsys, monkeypatch):
    monkeypatch.setattr(logging, "raiseExceptions", True)
    handler.start_batching(asyncio.get_running_loop())
    good = handler.stream
    handler.stream = BrokenStream()
    logging.getLogger("runtimed.x").info("lost one")
    logging.getLogger("runtimed.x").info("lost two")
    await asyncio.sleep(0)
    assert capsys.readouterr().err.count("OSError: no space left on device") == 1
    handler.stream = good
    logging.getLogger("runtimed.x").info("kept")
    await asyncio.sleep(0)
    assert messages(written(handler)) == ["INFO runtimed.x: kept"]


# ------------------------------------------------------------------ the access line


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


REQUESTS = [
    ("GET", "/v1/runtime", 200, 0.0012345, "/v1/runtime"),
    ("POST", "/v1/workers/a\n2026-01-01 00:00:00,000 INFO runtimed.access: FORGED\u2028\\", 404, 2.5, "unmatched"),
    ("GET", "/v1/workers/\ud800\x1b[31m", 401, 0.0, "/v1/workers/{worker_id}"),
]


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
@pytest.mark.parametrize("request_", REQUESTS, ids=["plain", "forged", "controls"])
def test_the_access_line_written_directly_is_the_line_of_its_record(handler, formatter, request_):
    handler.setFormatter(formatter)
    capture = Capture()
    root = logging.getLogger()
    root.handlers[:] = [capture]
    try:
        log_access(*request_)
    finally:
        root.handlers[:] = [handler]
    [record] = capture.records
    handler.access_log()(*request_)
    [direct] = written(handler)
    assert "\n" not in direct
    if isinstance(formatter, TextFormatter):
        assert TEXT_TIME.sub("", direct) == TEXT_TIME.sub("", formatter.format(record))
    else:
        line, expected = json.loads(direct), json.loads(formatter.format(record))
        del line["time"], expected["time"]
        assert line == expected
        assert list(line) == ["level", "logger", "message", "method", "path", "status", "duration_ms", "route"]


def test_the_access_line_follows_the_level_of_its_logger(handler):
    logging.getLogger().setLevel(logging.WARNING)
    handler.access_log()("GET", "/v1/runtime", 200, 0.001, "/v1/runtime")
    assert written(handler) == []


def test_the_text_time_is_loggings_own():
    reference = logging.Formatter()
    formatter = TextFormatter()
    now = time.time()
    moments = [now + step / 7 for step in range(-20, 20)] + [1e9, 1e9 + 0.9995, 1e9 + 0.0001, 1.5e9 + 0.999999]
    for created in moments:
        record = logging.makeLogRecord({})
        record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
        assert formatter.formatTime(record) == reference.formatTime(record), created
        assert formatter.line(created, "INFO", "x", "m").startswith(reference.formatTime(record) + " ")
    record = logging.makeLogRecord({})
    assert formatter.formatTime(record, "%Y") == reference.formatTime(record, "%Y")


# ------------------------------------------------------------------ in the daemon


def access_lines(text: str) -> list[str]:
    lines = text.split("\n")
    assert lines[-1] == ""
    for line in lines[:-1]:
        assert TEXT_TIME.match(line), f"not a log record: {line!r}"
    return [TEXT_TIME.sub("", line) for line in lines[:-1] if " runtimed.access: " in line]


@pytest.mark.process
def test_the_daemon_writes_one_escaped_access_line_per_request_and_all_of_them_by_its_exit(tmp_path):
    log_file = tmp_path / "runtimed.log"
    with RuntimedProcess("--bind", "127.0.0.1:0", "--log-file", str(log_file)) as daemon:
        paths = [f"/v1/workers/w{index}%0aFORGED" for index in range(60)]
        for path in paths:
            assert request_json("GET", daemon.base_url + path)[0] == 404
        assert daemon.stop(signal.SIGTERM) == 0
    access = access_lines(log_file.read_text(encoding="utf-8"))
    assert [line.rsplit(" ", 1)[0] for line in access] == [
        f"INFO runtimed.access: GET /v1/workers/w{index}\\nFORGED 404" for index in range(60)
    ]


@pytest.mark.process
def test_the_daemon_writes_its_lines_while_it_runs_and_the_pending_ones_before_a_sighup(tmp_path):
    log_file = tmp_path / "runtimed.log"
    with RuntimedProcess("--bind", "127.0.0.1:0", "--log-file", str(log_file)) as daemon:
        request_json("GET", daemon.base_url + "/v1/runtime")
        deadline = time.monotonic() + 5
        while "GET /v1/runtime 200" not in log_file.read_text() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "GET /v1/runtime 200" in log_file.read_text()  # written while it serves, not held back
        for _ in range(20):
            request_json("GET", daemon.base_url + "/v1/workers")
        log_file.rename(tmp_path / "runtimed.log.1")
        daemon.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while not log_file.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        request_json("GET", daemon.base_url + "/healthz")
        assert daemon.stop() == 0
    rotated = access_lines((tmp_path / "runtimed.log.1").read_text())
    assert [line.rsplit(" ", 1)[0] for line in rotated] == ["INFO runtimed.access: GET /v1/runtime 200"] + [
        "INFO runtimed.access: GET /v1/workers 200"
    ] * 20
    assert [line.rsplit(" ", 1)[0] for line in access_lines(log_file.read_text())] == [
        "INFO runtimed.access: GET /healthz 200"
    ]
