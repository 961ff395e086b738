"""Logging set-up: text or JSON lines, to stderr (what journald wants) or to a file that
SIGHUP reopens (what logrotate wants). Nothing here ever sees a token: request lines carry
method, path, route, status and duration only.

A log line must not be forgeable by a client. Paths, stop reasons and whatever else a client
sends reach log messages, so the text format writes every control character in a message as a
backslash escape (and a backslash as ``\\\\``): one record is one line, whatever was sent.
Tracebacks keep their lines, each indented, so that only a record starts in the first column.
JSON lines are safe as they are (JSON escapes control characters), and both formats write what
cannot be encoded (a lone surrogate a client sent) as an escape rather than losing the line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from ..web.errors import http_error_reason
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
    follows on indented lines."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
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

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
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


class ReopenableFileHandler(logging.FileHandler):
    """A file handler whose file can be closed and opened again under the same name."""

    def reopen(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()


def configure_logging(config: LogConfig) -> ReopenableFileHandler | None:
    """Route every log record to one handler; returns the file handler to reopen on SIGHUP."""
    file_handler = None
    handler: logging.Handler
    if config.file is not None:
        handler = file_handler = ReopenableFileHandler(config.file, encoding="utf-8", errors="backslashreplace")
    else:
        handler = logging.StreamHandler(sys.stderr)  # whose errors are "backslashreplace" already
    handler.setFormatter(JsonFormatter() if config.format is LogFormat.JSON else TextFormatter())
    handler.addFilter(MalformedHttpFilter(logging.getLevelNamesMapping()[config.level.name]))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.level.name)
    return file_handler
