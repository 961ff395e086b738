"""Drive a real ACP agent process from a test: the SDK's client side, or raw JSON-RPC lines.

``AgentProcess`` starts an agent (the built-in echo agent unless told otherwise) as a child in
its own session, drains its stderr for its whole life, and on the way out closes its stdin,
waits for it (bounded) and kills its process group if it is still there:

    client = RecordingClient()
    async with AgentProcess(client) as agent:
        await agent.connection.initialize(protocol_version=PROTOCOL_VERSION)
        ...
        assert client.message_text() == "echo: hello"

``RecordingClient`` is the client side the SDK calls: it records every session update and
permission request in arrival order, and answers permission requests with a chosen option.
Without a client, ``AgentProcess`` connects no SDK and the test speaks raw lines
(``send`` and ``receive``), to pin down the wire format.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from dataclasses import dataclass
from typing import Any

from acp import connect_to_agent
from acp.core import ClientSideConnection
from acp.schema import AgentMessageChunk, AllowedOutcome, DeniedOutcome, RequestPermissionResponse, TextContentBlock

from .helpers import ECHO_AGENT

#: Bounds waits for a broken test; a passing one never waits this long.
TIMEOUT = 10.0


@dataclass(frozen=True)
class Received:
    """Something the agent sent the client: a session ``update`` or a ``permission`` request."""

    kind: str
    session_id: str
    payload: Any


class RecordingClient:
    """The client side of ACP for tests: records what the agent sends, answers permission requests.

    ``permission_answer`` is the option id to select, or None to answer ``cancelled``. With
    ``hold_permissions``, each answer waits until ``release_permissions`` is set, as a user who
    has not decided yet. Methods a test client does not need (files, terminals) are left out, so
    the SDK answers the agent "method not found".
    """

    def __init__(self, permission_answer: str | None = "allow_once", hold_permissions: bool = False) -> None:
        self.permission_answer = permission_answer
        self.received: list[Received] = []
        self.release_permissions = asyncio.Event()
        if not hold_permissions:
            self.release_permissions.set()

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        self.received.append(Received("update", session_id, update))

    async def request_permission(
        self, session_id: str, tool_call: Any, options: list[Any], **kwargs: Any
    ) -> RequestPermissionResponse:
        self.received.append(Received("permission", session_id, {"tool_call": tool_call, "options": options}))
        await self.release_permissions.wait()
        if self.permission_answer is None:
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        return RequestPermissionResponse(outcome=AllowedOutcome(outcome="selected", option_id=self.permission_answer))

    def updates(self, kind: str | None = None) -> list[Any]:
        """The session updates received so far, of one ``sessionUpdate`` kind if given."""
        return [
            r.payload
            for r in self.received
            if r.kind == "update" and (kind is None or r.payload.session_update == kind)
        ]

    def message_chunks(self) -> list[str]:
        """The text of every ``agent_message_chunk`` received so far."""
        chunks = [u for u in self.updates() if isinstance(u, AgentMessageChunk)]
        return [chunk.content.text for chunk in chunks if isinstance(chunk.content, TextContentBlock)]

    def message_text(self) -> str:
        return "".join(self.message_chunks())

    def clear(self) -> None:
        self.received.clear()


class AgentProcess:
    """One agent child process, connected to a ``RecordingClient`` through the SDK or spoken to raw."""

    def __init__(self, client: RecordingClient | None = None, command: tuple[str, ...] = ECHO_AGENT) -> None:
        self.client = client
        self.command = command
        self.stderr_lines: list[str] = []
        self._process: asyncio.subprocess.Process | None = None
        self._connection: ClientSideConnection | None = None
        self._stderr_task: asyncio.Task[None] | None = None

    @property
    def process(self) -> asyncio.subprocess.Process:
        assert self._process is not None, "the agent process is not started"
        return self._process

    @property
    def connection(self) -> ClientSideConnection:
        assert self._connection is not None, "no SDK connection: the agent was started without a client"
        return self._connection

    async def __aenter__(self) -> AgentProcess:
        self._process = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self._stderr_task = asyncio.create_task(self._drain_stderr())
        if self.client is not None:
            assert self._process.stdin is not None and self._process.stdout is not None
            self._connection = connect_to_agent(self.client, self._process.stdin, self._process.stdout)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._connection is not None:
            await self._connection.close()
        self.close_stdin()
        try:
            await self.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()
        if self._stderr_task is not None:
            await self._stderr_task

    async def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.stderr_lines.append(line.decode(errors="replace").rstrip("\n"))

    def close_stdin(self) -> None:
        """Close the agent's stdin: an agent that honours EOF exits."""
        assert self.process.stdin is not None
        if not self.process.stdin.is_closing():
            self.process.stdin.close()

    async def wait(self, timeout: float = TIMEOUT) -> int:
        """The agent's exit status, once it has exited; TimeoutError if it does not within ``timeout``."""
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def send_line(self, line: bytes) -> None:
        """Write one raw line to the agent's stdin, exactly as given."""
        assert self.process.stdin is not None
        self.process.stdin.write(line)
        await self.process.stdin.drain()

    async def send(self, message: dict[str, Any]) -> None:
        """Write one JSON-RPC message as one line."""
        await self.send_line(json.dumps(message).encode() + b"\n")

    async def receive(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """Read one raw line from the agent's stdout, checked to be one JSON-RPC 2.0 message."""
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        assert line.endswith(b"\n"), f"not a whole line: {line!r}"
        message = json.loads(line)
        assert isinstance(message, dict) and message.get("jsonrpc") == "2.0", line
        return message

    async def receive_until_response(self, request_id: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Read lines until the response to ``request_id``: (what came before it, the response)."""
        before = []
        while (message := await self.receive()).get("id") != request_id or "method" in message:
            before.append(message)
        return before, message
