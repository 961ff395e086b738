"""One agent child process: spawned, read, bounded, signalled and reaped (contract §9.1, §9.3, §9.4).

``AgentProcess`` owns the child and everything attached to it; it knows nothing of ACP beyond
the framing (JSON-RPC 2.0, one message a line). What it guarantees (STYLE rule 11):

- the child runs with exactly the environment it is given (``agent_environment`` builds the one
  of §9.1), in its own session and process group, in the directory it is given, and on Linux it
  is killed (``PR_SET_PDEATHSIG``) if the thread that started it goes away without stopping it;
- its stdout is read all the time, a line at a time: a line that is not one JSON-RPC 2.0 object,
  or a message of more than ``max_message_bytes``, is a protocol error: the listener hears of it
  and the process group is killed. Valid messages wait (a bounded queue: the agent is slowed
  down, never buffered without bound) for ``receive``;
- its stderr is read all the time: each line (cut at 8 KiB) goes to the listener as a ``log``
  event, at most ``log_lines_per_second`` a second, the excess counted and reported in one
  ``log`` event; the last lines are kept for the exit diagnostic (``stderr_tail``);
- it is always reaped, and when its leader exits, whatever is left of its group is killed, so
  that nothing the agent started outlives it. ``wait`` says how it ended (``ProcessExit``).

The listener is called synchronously from the reading tasks; it must not block.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import json
import logging
import os
import resource
import shlex
import signal
import sys
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from ..domain.execution import ProcessExit

log = logging.getLogger("runtimed.agents.process")

#: ``[limits] max_agent_message_bytes``: the longest line (one JSON-RPC message) an agent may write.
DEFAULT_MAX_AGENT_MESSAGE_BYTES = 8 * 1024 * 1024
#: ``[limits] agent_log_lines_per_second``: stderr lines published per agent per second.
DEFAULT_AGENT_LOG_LINES_PER_SECOND = 50.0
#: A stderr line longer than this is cut (the rest of it, up to its newline, is dropped).
MAX_LOG_LINE_BYTES = 8 * 1024
#: Lines of stderr kept for the diagnostic that reports an exit.
STDERR_TAIL_LINES = 20
#: The variables of the daemon's own environment every agent gets (§9.1), besides ``TERM=dumb``.
BASE_ENVIRONMENT = ("PATH", "HOME", "LANG")

#: Valid messages read ahead of ``receive``: beyond this the agent's stdout is not read.
_READ_AHEAD_MESSAGES = 16
_STDERR_CHUNK_BYTES = 64 * 1024
#: How long the pipes may stay open once the whole group has been killed: only a process that
#: left the group (``setsid``) can hold them longer, and it is not waited for.
_PIPE_CLOSE_SECONDS = 2.0
#: How often, and how many times, an exited leader's status is looked for when its pipes stay open.
_STATUS_CHECK_SECONDS = 0.01
_STATUS_CHECKS = 500
_PR_SET_PDEATHSIG = 1


class AgentSpawnError(Exception):
    """The agent's command could not be started (missing, not executable, bad directory)."""


class ProtocolError(Exception):
    """The agent wrote something that is not a JSON-RPC 2.0 message a line (§9.4)."""


@dataclass(frozen=True, slots=True)
class AgentLaunch:
    """How to start an agent: the command, its working directory, its exact environment.

    ``env`` is the child's whole environment, used as given: build it with ``agent_environment``.
    ``die_with_parent`` asks Linux to SIGKILL the agent if the thread that started it dies
    without stopping it (``PR_SET_PDEATHSIG``, set in the child with a ``preexec_fn``).
    ``open_file_limit``, when given, is the child's soft limit on open files (``RLIMIT_NOFILE``,
    at most the hard limit): the daemon raises its own, and gives agents back the one it
    started with (``runtimed.daemon.openfiles``).
    """

    command: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str] = field(default_factory=dict)
    max_message_bytes: int = DEFAULT_MAX_AGENT_MESSAGE_BYTES
    log_lines_per_second: float = DEFAULT_AGENT_LOG_LINES_PER_SECOND
    die_with_parent: bool = True
    open_file_limit: int | None = None

    def __post_init__(self) -> None:
        if not self.command:
            raise ValueError("an agent needs a command")
        if self.max_message_bytes < 1 or self.log_lines_per_second <= 0:
            raise ValueError("an agent's message size and log rate must be positive")
        if self.open_file_limit is not None and self.open_file_limit < 1:
            raise ValueError("an agent's open file limit must be positive")

    def __repr__(self) -> str:
        # The environment may hold an API key (pass_env): never shown.
        command = shlex.join(self.command)
        return f"AgentLaunch(command={command!r}, cwd={str(self.cwd)!r}, env=[{len(self.env)} variables])"


def agent_environment(
    env: Mapping[str, str] | None = None,
    pass_env: Iterable[str] = (),
    *,
    source: Mapping[str, str] | None = None,
    withheld: Collection[str] = (),
) -> dict[str, str]:
    """The whole environment of an agent (§9.1), and nothing of the daemon's beyond it.

    ``PATH``, ``HOME`` and ``LANG`` as ``source`` (the daemon's environment) has them,
    ``TERM=dumb``, then the variables named in ``pass_env`` copied from ``source`` (those it has),
    then the profile's ``env``, which wins over both. Names in ``withheld`` (the variable that
    holds the daemon's token) are never copied from ``source``, whatever ``pass_env`` says.
    """
    source = os.environ if source is None else source
    result = {name: source[name] for name in BASE_ENVIRONMENT if name in source}
    result["TERM"] = "dumb"
    for name in pass_env:
        if name in source and name not in withheld:
            result[name] = source[name]
    result.update(env or {})
    return result


def describe_exit(exit: ProcessExit) -> str:
    """``exited with status 3`` or ``killed by signal SIGKILL``, for reasons and diagnostics."""
    if exit.signal is not None:
        return f"killed by signal {exit.signal}"
    if exit.code is not None:
        return f"exited with status {exit.code}"
    return "exited"


def process_exit(returncode: int | None) -> ProcessExit:
    """A ``ProcessExit`` from a ``returncode`` (negative: the number of the signal that killed it)."""
    if returncode is None:
        return ProcessExit()
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return ProcessExit(signal=name)
    return ProcessExit(code=returncode)


def parse_message(line: bytes) -> dict[str, Any] | None:
    """One line of an agent's stdout as a JSON-RPC 2.0 message; ``None`` for a blank line.

    ``ProtocolError`` when the line is not JSON, not an object, not ``"jsonrpc": "2.0"``, or
    neither a request, a notification nor a response. (Batches, which ACP does not use, are
    arrays, so they are refused too.)
    """
    text = line.strip()
    if not text:
        return None
    try:
        message = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise ProtocolError(f"the agent wrote a line that is not JSON: {_preview(text)}") from None
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        raise ProtocolError(f"the agent wrote a line that is not a JSON-RPC 2.0 object: {_preview(text)}")
    if "id" in message and (isinstance(message["id"], bool) or not isinstance(message["id"], int | str | None)):
        raise ProtocolError(f"the agent wrote a JSON-RPC message with a bad id: {_preview(text)}")
    if "method" in message:
        if not isinstance(message["method"], str) or not isinstance(message.get("params", {}), dict | list):
            raise ProtocolError(f"the agent wrote a JSON-RPC request with a bad method or params: {_preview(text)}")
    elif "id" not in message or ("result" not in message and not isinstance(message.get("error"), dict)):
        raise ProtocolError(
            f"the agent wrote a JSON-RPC object that is neither a request nor a response: {_preview(text)}"
        )
    return message


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _preview(text: bytes, limit: int = 80) -> str:
    """A short, escaped view of a bad line, safe to put in a diagnostic."""
    shown = text[:limit].decode("utf-8", errors="replace")
    return repr(shown) + ("…" if len(text) > limit else "")


class ProcessListener(Protocol):
    """What an ``AgentProcess`` reports while it runs; called synchronously, must not block."""

    def log(self, data: dict[str, Any]) -> None:
        """A ``log`` event: ``{"stream": "stderr", "line"}``, or a count of lines dropped."""
        ...

    def protocol_error(self, message: str) -> None:
        """The agent broke the protocol; its process group is being killed."""
        ...


class LogLimiter:
    """A token bucket for stderr lines: ``rate`` a second, bursts of ``rate``, the rest counted.

    Lines over the rate are dropped and counted; the count is reported as one ``log`` event
    ``{"stream": "stderr", "line": "N lines dropped", "dropped": N}`` a second after the first
    drop (so a flood makes about one report a second, not one per line) and by ``flush``.
    """

    def __init__(
        self,
        rate: float,
        emit: Callable[[dict[str, Any]], None],
        clock: Callable[[], float],
        schedule: Callable[[float, Callable[[], None]], asyncio.TimerHandle] | None = None,
    ) -> None:
        self.rate = rate
        self._emit = emit
        self._clock = clock
        self._schedule = schedule
        self._tokens = rate
        self._last = clock()
        self.dropped = 0
        self._report: asyncio.TimerHandle | None = None

    def offer(self, line: str) -> None:
        now = self._clock()
        self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            self._emit({"stream": "stderr", "line": line})
            return
        self.dropped += 1
        if self._report is None and self._schedule is not None:
            self._report = self._schedule(1.0, self.flush)

    def flush(self) -> None:
        """Report the lines dropped since the last report, if any."""
        if self._report is not None:
            self._report.cancel()
            self._report = None
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            self._emit({"stream": "stderr", "line": f"{dropped} lines dropped", "dropped": dropped})


class AgentProcess:
    """An agent child process and the tasks that read it; see the module's docstring.

    Start one with ``await AgentProcess.spawn(launch, listener)``. Its owner must end it:
    ``terminate`` (close stdin, then SIGTERM, then SIGKILL the group, each after a grace) or
    ``kill`` (SIGKILL the group at once), then ``wait``.
    """

    def __init__(self, launch: AgentLaunch, listener: ProcessListener, process: asyncio.subprocess.Process) -> None:
        self.launch = launch
        self._listener = listener
        self._process = process
        # Valid messages not received yet, then None at the end; stdout is not read while
        # _READ_AHEAD_MESSAGES wait (room is clear), so the agent is slowed down, not buffered.
        self._messages: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._room = asyncio.Event()
        self._room.set()
        self._receive_ended = False
        self._write_lock = asyncio.Lock()
        self._tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        loop = asyncio.get_running_loop()
        self._limiter = LogLimiter(launch.log_lines_per_second, listener.log, loop.time, loop.call_later)
        self._leader_exited = asyncio.Event()
        self._group_gone = False
        self.protocol_error: str | None = None
        self._stdout_task = asyncio.create_task(self._read_stdout(), name=f"agent-{self.pid}-stdout")
        self._stderr_task = asyncio.create_task(self._drain_stderr(), name=f"agent-{self.pid}-stderr")
        self._exit_task = asyncio.create_task(self._watch(), name=f"agent-{self.pid}-exit")

    @classmethod
    async def spawn(cls, launch: AgentLaunch, listener: ProcessListener) -> AgentProcess:
        """Start the agent; ``AgentSpawnError`` (naming the command) when it cannot be started."""
        try:
            process = await asyncio.create_subprocess_exec(
                *launch.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=launch.cwd,
                env=dict(launch.env),
                start_new_session=True,
                preexec_fn=_preexec(launch),
                # The stdout reader's line limit: one message and its newline.
                limit=launch.max_message_bytes + 1,
            )
        except OSError as error:
            where = f" ({error.filename})" if error.filename not in (None, launch.command[0]) else ""
            raise AgentSpawnError(
                f"cannot run {shlex.join(launch.command)} in {launch.cwd}: {error.strerror or error}{where}"
            ) from error
        return cls(launch, listener, process)

    @property
    def pid(self) -> int:
        """The agent's pid, which is also its process group id and session id."""
        return self._process.pid

    @property
    def running(self) -> bool:
        """Whether the agent's leader process has not exited yet."""
        return not self._leader_exited.is_set()

    @property
    def exit(self) -> ProcessExit | None:
        """How the agent ended, once it has been reaped and its output read."""
        return self._exit_task.result() if self._exit_task.done() and not self._exit_task.cancelled() else None

    @property
    def stderr_tail(self) -> tuple[str, ...]:
        """The last lines the agent wrote to stderr (each cut at 8 KiB), oldest first."""
        return tuple(self._tail)

    async def receive(self) -> dict[str, Any] | None:
        """The next valid message the agent wrote; ``None`` once its stdout has ended (or broke)."""
        if self._receive_ended:
            return None
        message = await self._messages.get()
        if self._messages.qsize() < _READ_AHEAD_MESSAGES:
            self._room.set()
        if message is None:
            self._receive_ended = True
        return message

    async def send(self, message: dict[str, Any]) -> None:
        """Write one message as one line to the agent's stdin; ``ConnectionError`` when it is closed."""
        data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"
        stdin = self._process.stdin
        assert stdin is not None
        async with self._write_lock:
            # A closed pipe transport drops writes silently: say so instead.
            if stdin.is_closing():
                raise ConnectionError("the agent's stdin is closed")
            stdin.write(data)
            await stdin.drain()

    def close_stdin(self) -> None:
        """Close the agent's stdin: an agent that honours EOF (the built-ins do) exits."""
        stdin = self._process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()

    def kill(self) -> None:
        """SIGKILL the whole process group at once; ``wait`` then reaps it."""
        self._signal_group(signal.SIGKILL)

    async def terminate(self, grace: float) -> ProcessExit:
        """Stop the agent: close its stdin; after ``grace`` seconds SIGTERM the group; after
        another ``grace`` SIGKILL it. Returns how it ended, once it is reaped."""
        self.close_stdin()
        for next_signal in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._leader_exited.wait(), grace)
            if self._leader_exited.is_set():
                break
            log.info("agent %d did not exit within %g s: sending %s", self.pid, grace, next_signal.name)
            self._signal_group(next_signal)
        return await self.wait()

    async def wait(self) -> ProcessExit:
        """How the agent ended, once it is reaped, its group is gone and its output is read."""
        return await asyncio.shield(self._exit_task)

    def _signal_group(self, signum: signal.Signals) -> None:
        # Once the group is known to be gone its id may be reused: never signal it again.
        if self._group_gone:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def _protocol_error(self, message: str) -> None:
        if self.protocol_error is not None:
            return
        self.protocol_error = message
        log.warning("agent %d broke the protocol: %s", self.pid, message)
        self._listener.protocol_error(message)
        self.kill()

    async def _read_stdout(self) -> None:
        reader = self._process.stdout
        assert reader is not None
        try:
            await self._read_messages(reader)
        finally:
            # Whatever ended the reading (EOF, a protocol error, _watch giving up on the pipe),
            # receive() says so: the end never waits for room.
            self._messages.put_nowait(None)
        # What comes after a protocol error is not read as messages: it is drained and dropped.
        while await reader.read(_STDERR_CHUNK_BYTES):
            pass

    async def _read_messages(self, reader: asyncio.StreamReader) -> None:
        limit = self.launch.max_message_bytes
        while True:
            await self._room.wait()
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as end:
                line = end.partial  # the last line, if it has no newline
            except asyncio.LimitOverrunError:
                self._protocol_error(f"the agent wrote a message of more than {limit} bytes")
                break
            if not line:
                break
            if len(line.rstrip(b"\r\n")) > limit:  # the last line, without its newline
                self._protocol_error(f"the agent wrote a message of more than {limit} bytes")
                break
            try:
                message = parse_message(line)
            except ProtocolError as error:
                self._protocol_error(str(error))
                break
            if message is not None:
                self._messages.put_nowait(message)
                if self._messages.qsize() >= _READ_AHEAD_MESSAGES:
                    self._room.clear()

    async def _drain_stderr(self) -> None:
        reader = self._process.stderr
        assert reader is not None
        pending = bytearray()
        cut = False  # a line was cut at MAX_LOG_LINE_BYTES: drop the rest of it, up to its newline
        while chunk := await reader.read(_STDERR_CHUNK_BYTES):
            start = 0
            while (end := chunk.find(b"\n", start)) >= 0:
                if cut:
                    cut = False
                else:
                    pending += chunk[start:end]
                    self._stderr_line(pending)
                pending.clear()
                start = end + 1
            if not cut:
                pending += chunk[start:]
                if len(pending) >= MAX_LOG_LINE_BYTES:
                    self._stderr_line(pending)
                    pending.clear()
                    cut = True
        if pending:
            self._stderr_line(pending)
        self._limiter.flush()

    def _stderr_line(self, raw: bytes | bytearray) -> None:
        line = bytes(raw[:MAX_LOG_LINE_BYTES]).decode("utf-8", errors="replace").rstrip("\r")
        self._tail.append(line)
        self._limiter.offer(line)

    async def _watch(self) -> ProcessExit:
        await self._leader_exit()
        self._leader_exited.set()
        # The leader is gone: so is whatever it left running in its group, so that nothing the
        # agent started outlives it and the pipes those processes hold get closed.
        self._signal_group(signal.SIGKILL)
        # The readers say when the pipes have closed (they reach their end); Process.wait does not
        # (Python 3.11 returns as soon as the exit is known). A process that left the group may
        # hold the pipes forever: once the readers have waited _PIPE_CLOSE_SECONDS with nothing
        # but the pipes holding them (not a slow receiver), they are stopped.
        readers = {self._stdout_task, self._stderr_task}
        while readers:
            _, readers = await asyncio.wait(readers, timeout=_PIPE_CLOSE_SECONDS)
            if self._room.is_set():
                break
        if readers:
            log.warning("agent %d exited, but a process outside its group keeps its pipes open", self.pid)
            self.close_stdin()
            for task in readers:
                task.cancel()
        self._group_gone = True
        for task in (self._stdout_task, self._stderr_task):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Where Process.wait waits for the pipes too, it would wait for a stray process: bounded.
        exit = process_exit(await self._returncode())
        if readers:
            # Give up on the pipes rather than hold them until that process exits. asyncio's
            # Process has no public way to close its transport; it keeps it in _transport.
            transport = getattr(self._process, "_transport", None)
            if isinstance(transport, asyncio.BaseTransport):
                transport.close()
        log.info("agent %d %s", self.pid, describe_exit(exit))
        return exit

    async def _returncode(self) -> int | None:
        """The leader's exit status, as asyncio's child watcher reports it.

        ``Process.wait`` returns it at once when the watcher has reported it, but otherwise also
        waits for every pipe to close, which a process outside the group may prevent. The
        leader is known to have exited, so the report comes within moments: past the wait for
        the pipes, it is looked for a few times, and the status is unknown if it never comes.
        """
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(asyncio.shield(self._process.wait()), _PIPE_CLOSE_SECONDS)
        for _ in range(_STATUS_CHECKS):
            if self._process.returncode is not None:
                break
            await asyncio.sleep(_STATUS_CHECK_SECONDS)
        return self._process.returncode

    async def _leader_exit(self) -> None:
        """Wait for the leader to exit, whoever holds its pipes.

        ``Process.wait`` may also wait for the pipes to close (it depends on the Python version),
        which a grandchild holding them would delay forever; a pidfd (Linux 5.3+) becomes
        readable as the leader exits.
        """
        if self._process.returncode is not None:
            return
        try:
            pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return
        except (AttributeError, OSError):
            await self._process.wait()
            return
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, readable)
        try:
            await exited
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)


@functools.cache
def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return cast(Callable[..., int], prctl)


def _preexec(launch: AgentLaunch) -> Callable[[], None] | None:
    """The ``preexec_fn`` of an agent: its parent-death signal and its open-file limit, if asked."""
    steps = []
    if launch.die_with_parent and (die := _die_with_parent()) is not None:
        steps.append(die)
    if launch.open_file_limit is not None:
        steps.append(_open_file_limit(launch.open_file_limit))
    if not steps:
        return None

    def preexec() -> None:
        for step in steps:
            step()

    return preexec


def _open_file_limit(limit: int) -> Callable[[], None]:
    """A ``preexec_fn`` step that sets the child's soft ``RLIMIT_NOFILE`` to ``limit`` (at most
    the hard limit, read in the parent beforehand), so that an agent still using ``select()``
    is not handed descriptors past 1024 because the daemon raised its own limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    soft = limit if hard == resource.RLIM_INFINITY else min(limit, hard)

    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return set_limit


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes Linux SIGKILL the child when its parent goes away.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits: asyncio forks in
    the event loop's thread, so this holds as long as the daemon's loop runs in a thread that
    lives as long as the daemon (the main thread, with ``asyncio.run``). A ``preexec_fn`` runs
    between fork and exec, which Python documents as unsafe with threads (a lock held by another
    thread at fork time stays held in the child): this one only calls ``prctl`` (resolved in
    the parent beforehand) and ``getppid``, and takes no lock. If the parent died before
    ``prctl`` took effect, the child exits at once. Elsewhere than Linux there is no such
    guarantee: an agent that exits when its stdin closes still goes away with the daemon.
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec
