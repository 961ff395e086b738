"""Helpers for the tests of the terminal client (``tests/test_client*.py``).

``cli`` runs ``runtimed ARGS`` in this process with click's ``CliRunner`` (fast: no interpreter
to start), in an environment without the client's variables unless a test sets them.
``ClientProcess`` runs a client command as a real child process (for ``watch``, ``transcript
--follow``: they end on a signal), its stdout and stderr going to files the test reads.
``api`` calls the daemon directly, to check what the client printed against the API's own answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import aiohttp
from click.testing import CliRunner, Result

from runtimed.cli import main

from .process import RuntimedProcess, request_json, runtimed_command

#: Bounds waits for a broken test; a passing one never waits this long.
TIMEOUT = 20.0

#: The client's variables, unset: a developer's own $RUNTIMED_URL must not steer the tests.
CLEAN_ENV: dict[str, str | None] = {"RUNTIMED_URL": None, "RUNTIMED_SOCKET": None, "RUNTIMED_TOKEN": None}


def cli(*args: str, env: Mapping[str, str | None] | None = None, input: str | None = None) -> Result:
    """``runtimed ARGS`` in-process; an exception the client did not turn into a message fails."""
    return CliRunner().invoke(main, list(args), env={**CLEAN_ENV, **(env or {})}, input=input, catch_exceptions=False)


def until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``condition`` (bounded) until it holds; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def api(daemon: RuntimedProcess, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    """One API call straight to the daemon; asserts the status and returns the JSON body."""
    got, _, answer = request_json(method, daemon.base_url + path, body)
    assert got == status, answer
    return answer


def worker(daemon: RuntimedProcess, worker_id: str) -> dict[str, Any]:
    detail: dict[str, Any] = api(daemon, "GET", f"/v1/workers/{worker_id}")["worker"]
    return detail


def until_idle(daemon: RuntimedProcess, worker_id: str, turns: int | None = None) -> None:
    """Wait until the worker's agent is idle (with ``turns`` turns ended, if given)."""

    def idle() -> bool:
        execution = worker(daemon, worker_id).get("execution", {})
        return execution.get("state") == "idle" and (turns is None or execution.get("turns") == turns)

    until(idle, f"{worker_id} idle" + (f" after {turns} turns" if turns is not None else ""))


def until_busy(daemon: RuntimedProcess, worker_id: str) -> None:
    until(lambda: worker(daemon, worker_id).get("execution", {}).get("state") == "busy", f"{worker_id} busy")


def replay(daemon_url: str, worker_id: str, cursor: str, count: int) -> list[str]:
    """The raw frames a fresh observation session from ``cursor`` sends, up to ``count`` events
    after its snapshot (read with a real WebSocket client, synchronously for these tests)."""

    async def read() -> list[str]:
        frames: list[str] = []
        async with aiohttp.ClientSession() as session:
            url = f"{daemon_url}/v1/workers/{worker_id}/events/ws"
            async with session.ws_connect(url, params={"cursor": cursor}) as ws:
                while len(frames) < count + 1:
                    message = await asyncio.wait_for(ws.receive(), TIMEOUT)
                    assert message.type is aiohttp.WSMsgType.TEXT, message
                    frames.append(message.data)
        return frames[1:]

    return asyncio.run(read())


def snapshot(daemon_url: str, worker_id: str) -> dict[str, Any]:
    """The first frame of a fresh observation session without a cursor: the worker now, under
    the cursor of its newest event."""

    async def read() -> dict[str, Any]:
        url = f"{daemon_url}/v1/workers/{worker_id}/events/ws"
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            message = await asyncio.wait_for(ws.receive(), TIMEOUT)
            frame: dict[str, Any] = json.loads(message.data)
            return frame

    return asyncio.run(read())


@contextlib.contextmanager
def short_tmp() -> Iterator[Path]:
    """A directory with a short path: Unix socket paths are limited to about 100 bytes."""
    directory = Path(tempfile.mkdtemp(prefix="rtc-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class ClientProcess:
    """A ``runtimed`` client command as a child process, its output in files under ``directory``."""

    def __init__(self, directory: Path, *args: str, env: Mapping[str, str | None] | None = None) -> None:
        environment = dict(os.environ)
        for key, value in {**CLEAN_ENV, **(env or {})}.items():
            if value is None:
                environment.pop(key, None)
            else:
                environment[key] = value
        self.args = args
        self._out_path = directory / f"client-{time.monotonic_ns()}.out"
        self._err_path = self._out_path.with_suffix(".err")
        self._out: IO[bytes] = self._out_path.open("wb")
        self._err: IO[bytes] = self._err_path.open("wb")
        self.process = subprocess.Popen(
            runtimed_command(*args), stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err, env=environment
        )

    @property
    def stdout(self) -> str:
        return self._out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self._err_path.read_text(errors="replace")

    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def frames(self) -> list[dict[str, Any]]:
        """stdout as JSON lines (``--json``): only complete lines."""
        return [json.loads(line) for line in self.stdout.split("\n")[:-1]]

    def wait_for(self, text: str, timeout: float = TIMEOUT, stream: str = "stdout") -> None:
        def seen() -> bool:
            if self.process.poll() is not None and text not in getattr(self, stream):
                raise AssertionError(
                    f"runtimed {' '.join(self.args)} exited {self.process.returncode} before writing {text!r};\n"
                    f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
                )
            return text in getattr(self, stream)

        until(seen, f"{text!r} on the {stream} of runtimed {' '.join(self.args)}", timeout)

    def stop(self, signum: int = signal.SIGINT) -> int:
        """Send ``signum``; the exit status (bounded wait)."""
        self.process.send_signal(signum)
        return self.wait()

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise AssertionError(
                f"runtimed {' '.join(self.args)} did not exit within {timeout} s;\n"
                f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
            ) from None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self._out.close()
        self._err.close()

    def __enter__(self) -> ClientProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
