"""Logging set-up: text or JSON lines, to stderr (what journald wants) or to a file that
SIGHUP reopens (what logrotate wants). Nothing here ever sees a token: request lines carry
method, path, route, status and duration only.

Every request writes a line, so writing is batched: a record is formatted when it is logged and
its line is written, together with the others of the same pass of the event loop, at the start
of the next pass (``BatchingHandler``): one ``write`` for many lines. What is pending is written
before a SIGHUP reopens the file, when the daemon stops serving, and at exit. (A thread writing
from a queue would only move the same work onto the same core.) The text format's time stamp is
made once a second, not once a line.

A log line must not be forgeable by a client. Paths, stop reasons and whatever else a client
sends reach log messages, so the text format writes every control character in a message as a
backslash escape (and a backslash as ``\\\\``): one record is one line, whatever was sent.
Tracebacks keep their lines, each indented, so that only a record starts in the first column.
JSON lines are safe as they are (JSON escapes control characters), and both formats write what
cannot be encoded (a lone surrogate a client sent) as an escape rather than losing the line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TextIO

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from ..web.errors import http_error_reason
from ..web.middleware import ACCESS_FORMAT, ACCESS_LOGGER, AccessLog, access_fields, log_access
from .config import LogConfig, LogFormat

#: Extra fields a log call may attach (``extra={...}``) that JSON lines carry as their own keys.
STRUCTURED_FIELDS = ("method", "path", "status", "duration_ms", "route")

# C0, DEL and C1 controls, the Unicode line and paragraph separators, lone surrogates (no
# encoding writes them), and the backslash that starts every escape.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\\\\]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with control characters written as Python-style backslash escapes (``\\n``,
    ``\\x1b``, ``\\u2028``) and a backslash as ``\\\\``, so that it reads back exactly."""
    if _CONTROLS.search(text) is None:
        return text
    return _CONTROLS.sub(_escape, text)


# The same, but for the backslash: a traceback is read by people, not parsed back.
_TRACEBACK_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _indented(text: str) -> str:
    """A traceback's lines, controls escaped and each indented: no line can pass for a record."""
    return "\n".join("  " + _TRACEBACK_CONTROLS.sub(_escape, line) for line in text.split("\n"))


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message>``, the message escaped to one line; a traceback
    follows on indented lines. The time is ``logging.Formatter``'s (local time, ``,`` and
    milliseconds); its date and seconds are made once a second."""

    #: Whether ``line`` writes the structured fields (it does not: the message says it all).
    structured = False

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return self._time(record.created, record.msecs)

    def _time(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self._second:
            self._second_text = time.strftime(self.default_time_format, self.converter(created))
            self._second = second
        return f"{self._second_text},{int(msecs):03d}"

    def line(self, created: float, levelname: str, name: str, message: str, fields: object = None) -> str:
        """The line of a record without traceback, from its parts (its milliseconds as
        ``LogRecord`` computes them)."""
        return f"{self._time(created, (created - int(created)) * 1000)} {levelname} {name}: {escape_controls(message)}"

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record)
        text = f"{record.asctime} {record.levelname} {record.name}: {escape_controls(record.message)}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + _indented(record.exc_text)
        if record.stack_info:
            text += "\n" + _indented(self.formatStack(record.stack_info))
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any structured fields."""

    #: Whether ``line`` writes the structured fields.
    structured = True

    def _object(self, created: float, levelname: str, name: str, message: str) -> dict[str, object]:
        return {
            "time": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
            "level": levelname.lower(),
            "logger": name,
            "message": message,
        }

    def line(
        self, created: float, levelname: str, name: str, message: str, fields: Mapping[str, object] | None = None
    ) -> str:
        """The line of a record without traceback, from its parts."""
        line = self._object(created, levelname, name, message)
        if fields:
            line.update(fields)
        return json.dumps(line, ensure_ascii=False)

    def format(self, record: logging.LogRecord) -> str:
        line = self._object(record.created, record.levelname, record.name, record.getMessage())
        for name in STRUCTURED_FIELDS:
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class MalformedHttpFilter(logging.Filter):
    """aiohttp reports a request it cannot parse (malformed HTTP, a body it cannot decode) as an
    ERROR with a traceback, as though the server had failed. It is the client's mistake: this
    makes it one WARNING line that says what was wrong (never louder than aiohttp made it)."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "aiohttp.server" or not record.exc_info:
            return True
        error = record.exc_info[1]
        if not isinstance(error, (HttpProcessingError, RequestPayloadError)):
            return True
        reason = http_error_reason(error)
        if record.msg == "Error handling request from %s" and isinstance(record.args, tuple) and record.args:
            record.msg, record.args = "malformed HTTP request from %s: %s", (record.args[0], reason)
        else:
            record.msg, record.args = "malformed HTTP request: %s", (reason,)
        record.exc_info = None
        record.exc_text = None
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        # The record passed the logger's level as an ERROR; as a WARNING it must pass it again.
        return record.levelno >= self.level


#: Most lines held for one write: a pass of the event loop that logs more writes them sooner.
MAX_PENDING_LINES = 512


class BatchingHandler(logging.StreamHandler[TextIO]):
    """A stream handler that formats each record as it is logged and, on the event loop's
    thread, writes the lines of one pass of the loop in one ``write`` at the start of the next.

    Batching starts with ``start_batching(loop)`` and ends with ``stop_batching()``, which writes
    what is pending; before, after, and on any other thread, a record is written at once.
    ``flush()`` (which ``logging.shutdown`` calls at exit) writes what is pending too.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._scheduled = False

    def start_batching(self, loop: asyncio.AbstractEventLoop) -> None:
        """Batch the lines logged on ``loop``'s thread (the caller's) from now on."""
        self._loop, self._loop_thread = loop, threading.get_ident()

    def stop_batching(self) -> None:
        """Write what is pending; from now on every line is written as it is logged."""
        self._loop = None
        self.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.write_line(line)

    def write_line(self, line: str) -> None:
        """Write one formatted line (without its line break), batched when on the loop's thread."""
        if self._loop is not None and threading.get_ident() == self._loop_thread:
            self._pending.append(line)
            if len(self._pending) >= MAX_PENDING_LINES:
                self.flush()
            elif not self._scheduled:
                self._scheduled = True
                self._loop.call_soon(self.flush)
            return
        with self.lock:  # type: ignore[union-attr]
            self._write(line + self.terminator, 1)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._scheduled = False
            lines, self._pending = self._pending, []
            if lines:
                lines.append("")  # the last line's break
                self._write(self.terminator.join(lines), len(lines) - 1)
            elif self.stream is not None and not self.stream.closed:
                self.stream.flush()

    def _write(self, text: str, count: int) -> None:
        """Write ``text`` (``count`` lines) and flush the stream; a failure is reported the way
        ``logging`` reports one (on stderr, once) and loses only these lines."""
        try:
            stream = self._open_stream()
            stream.write(text)
            stream.flush()
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": "%d log line(s) could not be written", "args": (count,)}))

    def _open_stream(self) -> TextIO:
        return self.stream

    def access_log(self) -> AccessLog:
        """The web app's access log (``create_app(access_log=…)``) writing straight to this
        handler: the line a ``runtimed.access`` record would give, with no record made. It
        writes when that logger is enabled for INFO; this handler's filters are for aiohttp's
        records, so none applies."""
        formatter = self.formatter
        if not isinstance(formatter, (TextFormatter, JsonFormatter)):
            return log_access
        line, structured, write_line = formatter.line, formatter.structured, self.write_line
        enabled = logging.getLogger(ACCESS_LOGGER).isEnabledFor

        def write(method: str, path: str, status: int, seconds: float, route: str) -> None:
            if enabled(logging.INFO):
                message = ACCESS_FORMAT % (method, path, status, seconds * 1000)
                fields = access_fields(method, path, status, seconds, route) if structured else None
                write_line(line(time.time(), "INFO", ACCESS_LOGGER, message, fields))

        return write


class ReopenableFileHandler(BatchingHandler):
    """A batching handler on a file that ``reopen()`` closes and opens again under the same name
    (what logrotate needs after it has renamed the file): what is pending goes to the old file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(path)
        super().__init__(self._open())

    def _open(self) -> TextIO:
        return open(self.path, "a", encoding="utf-8", errors="backslashreplace")

    def _open_stream(self) -> TextIO:
        if self.stream is None or self.stream.closed:  # closed at exit, and a record came after
            self.stream = self._open()
        return self.stream

    def reopen(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self.flush()
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            try:
                self.flush()
            finally:
                if self.stream is not None:
                    self.stream.close()
                super().close()


def configure_logging(config: LogConfig) -> BatchingHandler:
    """Route every log record to one handler, and return it: the daemon starts its batching
    once the event loop runs, and reopens its file (a ``ReopenableFileHandler``) on SIGHUP."""
    # stderr's errors are "backslashreplace" already, like the file's.
    handler = BatchingHandler(sys.stderr) if config.file is None else ReopenableFileHandler(config.file)
    handler.setFormatter(JsonFormatter() if config.format is LogFormat.JSON else TextFormatter())
    handler.addFilter(MalformedHttpFilter(logging.getLevelNamesMapping()[config.level.name]))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.level.name)
    return handler
