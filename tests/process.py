"""Run a real ``runtimed serve`` process for tests that need the daemon over a real socket.

``RuntimedProcess`` starts ``python -m runtimed serve …``, waits (bounded) for the start-up line,
and exposes the base URL, the runtime id and everything the daemon wrote to stderr. A thread
drains stderr for the whole life of the process, so a chatty daemon never blocks on a full pipe.
Use it as a context manager, which always kills the process on the way out:

    with RuntimedProcess("--bind", "127.0.0.1:0") as daemon:
        status, _, body = request_json("GET", daemon.base_url + "/healthz")
        assert daemon.stop() == 0

``run_runtimed`` runs the command to completion, for start-up failures.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

START_LINE = re.compile(
    r"^runtimed listening on (?P<base_url>http://(?P<host>\S+):(?P<port>\d+)) "
    r"\(runtime (?P<runtime_id>\S+), store (?P<store>\S+)\)$"
)


SLOW_DISK = Path(__file__).with_name("slow_disk.py")


def runtimed_command(*args: str, slow_flush_ms: float | None = None, open_file_limit: int | None = None) -> list[str]:
    """``python -m runtimed ARGS``; with ``slow_flush_ms``, every fs store flush sleeps that long;
    with ``open_file_limit``, the process starts with that limit on open files, soft and hard."""
    if slow_flush_ms is not None:
        command = [sys.executable, str(SLOW_DISK), f"{slow_flush_ms:g}", *args]
    else:
        command = [sys.executable, "-m", "runtimed", *args]
    if open_file_limit is not None:
        # The shell sets the limit and execs: the daemon keeps the shell's pid, so signals reach it.
        command = ["sh", "-c", 'ulimit -n "$0" && exec "$@"', str(open_file_limit), *command]
    return command


def run_runtimed(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = START_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``runtimed ARGS`` to completion (bounded) and capture its output."""
    return subprocess.run(
        runtimed_command(*args),
        env=dict(os.environ if env is None else env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class RuntimedProcess:
    """One ``runtimed serve`` child process; start it, talk to it, stop it with a signal."""

    def __init__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        slow_flush_ms: float | None = None,
        open_file_limit: int | None = None,
    ) -> None:
        self.args = args
        self.slow_flush_ms = slow_flush_ms
        self.open_file_limit = open_file_limit
        self.env = dict(os.environ if env is None else env)
        self.process: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.host = ""
        self.port = 0
        self.runtime_id = ""
        self.store = ""
        self.start_line = ""
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._started = threading.Event()  # set at the start-up line, or at EOF
        self._reader: threading.Thread | None = None

    @property
    def stderr(self) -> str:
        """Everything the daemon has written to stderr so far."""
        with self._lock:
            return "".join(self._lines)

    def start(self, timeout: float = START_TIMEOUT) -> RuntimedProcess:
        """Start the daemon and wait until it says where it listens; fail with its stderr otherwise."""
        self.process = subprocess.Popen(
            runtimed_command(
                "serve", *self.args, slow_flush_ms=self.slow_flush_ms, open_file_limit=self.open_file_limit
            ),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        self._reader = threading.Thread(target=self._drain_stderr, name="runtimed-stderr", daemon=True)
        self._reader.start()
        if not self._started.wait(timeout) or not self.start_line:
            exit_code = self.process.poll()
            if exit_code is None and self._started.is_set():
                # stderr closed without the line: the daemon is exiting; let it say with what.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    exit_code = self.process.wait(STOP_TIMEOUT)
            self.close()
            raise AssertionError(
                f"runtimed serve {' '.join(self.args)} did not print its start-up line within {timeout} s "
                f"(exit code {exit_code}); stderr:\n{self.stderr}"
            )
        match = START_LINE.match(self.start_line)
        assert match is not None  # _drain_stderr only accepts a matching line
        self.base_url = match["base_url"]
        self.host = match["host"]
        self.port = int(match["port"])
        self.runtime_id = match["runtime_id"]
        self.store = match["store"]
        return self

    def _drain_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            with self._lock:
                self._lines.append(line)
            if not self._started.is_set() and START_LINE.match(line.rstrip("\n")):
                self.start_line = line.rstrip("\n")
                self._started.set()
        self._started.set()  # EOF: the process is gone; stop waiting for the start-up line

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``signum`` and return the exit code; fail (after killing it) if it does not exit in time."""
        assert self.process is not None, "the daemon was never started"
        self.process.send_signal(signum)
        deadline = time.monotonic() + timeout
        try:
            exit_code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise AssertionError(
                f"runtimed did not exit within {timeout} s of {signal.Signals(signum).name}; stderr:\n{self.stderr}"
            ) from None
        self._join_reader(max(0.1, deadline - time.monotonic()))
        return exit_code

    def close(self) -> None:
        """Kill the daemon if it still runs and release its pipe; safe to call more than once."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(STOP_TIMEOUT)
        finally:
            self._join_reader(STOP_TIMEOUT)
            if self.process.stderr is not None:
                self.process.stderr.close()

    def _join_reader(self, timeout: float) -> None:
        if self._reader is not None:
            self._reader.join(timeout)

    def __enter__(self) -> RuntimedProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# No proxy: the environment's http_proxy must never route a test's request to 127.0.0.1 elsewhere.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def request_json(
    method: str,
    url: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, Mapping[str, str], Any]:
    """One HTTP request; returns status, headers and the JSON body, for errors as for successes."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    try:
        with _opener.open(request, timeout=timeout) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, json.loads(error.read())


def send_raw(host: str, port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` as it is (malformed HTTP included) and read until the server closes."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)
