"""Logging set-up: text or JSON lines, to stderr (what journald wants) or to a file that
SIGHUP reopens (what logrotate wants). Nothing here ever sees a token: request lines carry
method, path, route, status and duration only."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from .config import LogConfig, LogFormat

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Extra fields a log call may attach (``extra={...}``) that JSON lines carry as their own keys.
STRUCTURED_FIELDS = ("method", "path", "status", "duration_ms", "route")


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
        handler = file_handler = ReopenableFileHandler(config.file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format is LogFormat.JSON else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.level.name)
    return file_handler
