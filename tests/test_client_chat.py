"""``runtimed chat`` through a pseudo-terminal, as a person uses it (issue 13): type a line, see
the answer stream below it, answer a permission request inline, interrupt a long turn with
Ctrl-C, and leave with a second Ctrl-C (status 130) or Ctrl-D (status 0).

The standard library's ``pty.fork`` gives the client a real terminal as its controlling
terminal, so Ctrl-C is the terminal's own: the line discipline turns the byte into SIGINT.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from .client_helpers import CLEAN_ENV, TIMEOUT, api, until_idle
from .process import RuntimedProcess

pytestmark = pytest.mark.process

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Terminal:
    """``runtimed ARGS`` on the far side of a pseudo-terminal: what it wrote so far, and keys."""

    def __init__(self, *args: str) -> None:
        env = {key: value for key, value in os.environ.items() if key not in CLEAN_ENV}
        env["TERM"] = "xterm"
        pid, fd = pty.fork()
        if pid == 0:  # the child: exec at once, nothing else
            try:
                os.execve(sys.executable, [sys.executable, "-m", "runtimed", *args], env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.output = ""
        self.status: int | None = None

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child is gone and the terminal closed
            return False
        if not data:
            return False
        self.output += ANSI.sub("", data.decode(errors="replace")).replace("\r\n", "\n")
        return True

    def expect(self, pattern: str, after: int = 0) -> int:
        """Wait (bounded) until ``pattern`` (a regex) shows after position ``after``; its end."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            match = re.compile(pattern).search(self.output, after)
            if match:
                return match.end()
            if time.monotonic() > deadline or not self._read(min(0.5, max(0.0, deadline - time.monotonic()))):
                match = re.compile(pattern).search(self.output, after)
                if match:
                    return match.end()
                raise AssertionError(f"no {pattern!r} on the terminal; it shows:\n{self.output[after:]}")

    def wait(self) -> int:
        """The exit status (bounded wait), reading the terminal meanwhile."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
            self._read(0.05)
        raise AssertionError(f"runtimed chat did not exit; the terminal shows:\n{self.output}")

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)


@pytest.fixture(scope="module")
def daemon() -> Iterator[RuntimedProcess]:
    with RuntimedProcess("--bind", "127.0.0.1:0") as process:
        yield process


def test_chat_streams_answers_asks_permission_inline_and_ctrl_c_interrupts_then_leaves(daemon):
    terminal = Terminal("chat", "--url", daemon.base_url)
    try:
        at = terminal.expect(r"chatting with (worker-[0-9a-f]{8}) \(builtin:echo\)")
        worker_id = re.search(r"chatting with (worker-[0-9a-f]{8})", terminal.output)[1]  # type: ignore[index]
        at = terminal.expect(r"you> ", at)
        terminal.type("hello through a pty\r")
        at = terminal.expect(r"assistant: echo: hello through a pty\n", at)
        at = terminal.expect(r"── turn 1 ended: end_turn\nyou> ", at)

        terminal.type("/permission edit\r")
        at = terminal.expect(r"permission \S+: /permission edit \(edit\)\n", at)
        at = terminal.expect(r"1\) Allow once \[allow_once\]", at)
        at = terminal.expect(r"answer 1-4: ", at)
        terminal.type("1\r")
        at = terminal.expect(r"permission: allow_once\n", at)
        at = terminal.expect(r"── turn 2 ended: end_turn\nyou> ", at)

        terminal.type("/sleep 30\r")
        at = terminal.expect(r"assistant: \.", at)
        terminal.type("\x03")  # Ctrl-C: the terminal sends SIGINT
        at = terminal.expect(r"interrupting the turn \(Ctrl-C again leaves\)", at)
        at = terminal.expect(r"── turn 3 ended: cancelled\nyou> ", at)
        terminal.type("\x03")
        assert terminal.wait() == 130
    finally:
        terminal.close()
    until_idle(daemon, worker_id, turns=3)
    items = api(daemon, "GET", f"/v1/workers/{worker_id}/transcript")["transcript"]["items"]
    assert [(item["role"], item["content"]) for item in items][:4] == [
        ("user", "hello through a pty"),
        ("assistant", "echo: hello through a pty"),
        ("user", "/permission edit"),
        ("assistant", "permission: allow_once"),
    ]
    assert items[4]["content"] == "/sleep 30"
    assert "Traceback" not in terminal.output


def test_chat_with_an_existing_worker_shows_its_recent_transcript_and_ctrl_d_leaves(daemon):
    request = {"intent": {"kind": "assistant"}, "profile": {"kind": "builtin", "value": "builtin:echo"}}
    worker_id = api(daemon, "POST", "/v1/workers", request)["worker"]["worker_id"]
    api(daemon, "POST", f"/v1/workers/{worker_id}/input", {"kind": "user", "content": "earlier"})
    until_idle(daemon, worker_id, turns=1)
    terminal = Terminal("chat", worker_id, "--url", daemon.base_url)
    try:
        at = terminal.expect(rf"chatting with {worker_id}")
        at = terminal.expect(r"#2 assistant: echo: earlier\nyou> ", at)
        terminal.type("again\r")
        at = terminal.expect(r"assistant: echo: again\n── turn 2 ended: end_turn\nyou> ", at)
        terminal.type("\x04")  # Ctrl-D at the start of a line: the end of input
        assert terminal.wait() == 0
    finally:
        terminal.close()
    # The input typed was shown once, by the terminal: the chat does not print it again.
    assert terminal.output.count("again") == 2  # the typed line and the answer


def test_chat_with_a_worker_that_does_not_exist_is_one_line_and_exit_1(daemon):
    terminal = Terminal("chat", "worker-ffffffff", "--url", daemon.base_url)
    try:
        terminal.expect("runtimed: worker_not_found: worker worker-ffffffff was not found")
        assert terminal.wait() == 1
    finally:
        terminal.close()
    assert terminal.output.strip().count("\n") == 0


def test_chat_reads_lines_from_a_pipe_and_leaves_after_the_last_answer(daemon):
    env = {key: value for key, value in os.environ.items() if key not in CLEAN_ENV}
    result = subprocess.run(
        [sys.executable, "-m", "runtimed", "chat", "--url", daemon.base_url],
        input="first\nsecond\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert "assistant: echo: first\n── turn 1 ended: end_turn\n" in result.stdout
    assert "assistant: echo: second\n── turn 2 ended: end_turn\n" in result.stdout
    assert result.stderr == ""
