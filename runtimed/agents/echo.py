"""The built-in echo agent: a real ACP agent, built on the SDK's agent side, that echoes its prompts.

Run it as ``python -m runtimed.agents.echo``; it speaks ACP (JSON-RPC 2.0, one message a line)
on stdin and stdout, which must be pipes (or a terminal: the SDK's stdio refuses a regular file),
writes diagnostics to stderr, and exits with status 0 when its stdin closes.
It is the worker that tests, the README and the benchmarks use, and the model for writing an
agent of your own (contract §9.6).

For each prompt whose text is ``T`` it streams ``echo: T`` as two or more
``agent_message_chunk`` updates (a word or so each) and ends the turn with ``end_turn``. A prompt
whose whole text is one of these commands exercises the rest of the protocol instead:

``/permission <kind>``
    reports a ``tool_call`` of that ACP tool kind (``read``, ``edit``, ``execute``, …), asks the
    client for permission with ``session/request_permission`` (options ``allow_once``,
    ``allow_always``, ``reject_once``, ``reject_always``), reports the tool call ``completed``
    (allowed) or ``failed`` (otherwise), and answers ``permission: <option_id or cancelled>``.
``/sleep <seconds>``
    streams a dot a second for that long (up to a day), so that a turn can be interrupted.
``/stream <n>``
    streams ``n`` short chunks (up to 100 000) as fast as it can, for benchmarks.
``/exit <status>``
    exits the process with that status (0 to 255) at once, without answering, for tests of the
    restart policy.

A command with a bad or missing argument (``/sleep abc``) is answered with a readable message,
and the turn ends normally. Any other text starting with ``/`` is echoed like the rest.

``session/cancel`` ends the running turn with ``cancelled``: after it the agent streams nothing
more (it only closes an open tool call) and answers the prompt at once.

A ``system`` input from runtimed (a prompt whose ``_meta`` is ``{"runtimed": {"kind":
"system"}}``) is echoed as ``system: T`` and never run as a command, so that a backend's system
items cannot, say, make the agent exit.

It advertises ``loadSession`` and keeps each session's history (its last 200 messages) in memory;
``session/load`` replays that history as ``user_message_chunk`` and ``agent_message_chunk``
updates. A session it does not know (the process was restarted) is loaded as an empty one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import re
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args
from uuid import uuid4

from acp import (
    PROTOCOL_VERSION,
    Agent,
    Client,
    RequestError,
    run_agent,
    stdio_streams,
    update_agent_message_text,
    update_tool_call,
    update_user_message_text,
)
from acp.core import DEFAULT_STDIO_BUFFER_LIMIT_BYTES
from acp.meta import AGENT_METHODS
from acp.schema import (
    AcpMcpServer,
    AgentCapabilities,
    AllowedOutcome,
    AudioContentBlock,
    AuthenticateResponse,
    ClientCapabilities,
    EmbeddedResourceContentBlock,
    ForkSessionResponse,
    HttpMcpServer,
    ImageContentBlock,
    Implementation,
    InitializeResponse,
    ListSessionsResponse,
    LoadSessionResponse,
    McpServerStdio,
    NewSessionResponse,
    PermissionOption,
    PromptResponse,
    ResourceContentBlock,
    ResumeSessionResponse,
    SetSessionConfigOptionResponse,
    SetSessionModeResponse,
    SseMcpServer,
    TextContentBlock,
    ToolCallStart,
    ToolCallUpdate,
    ToolKind,
)

from runtimed import __version__

log = logging.getLogger("runtimed.agents.echo")

AGENT_NAME = "runtimed-echo"
MAX_SLEEP_SECONDS = 86_400
MAX_STREAM_CHUNKS = 100_000
#: Messages kept per session for ``session/load``: enough to show a conversation, and bounded.
HISTORY_LIMIT = 200
#: A long echo is streamed in at most this many chunks (words grouped), not one chunk per word.
MAX_MESSAGE_CHUNKS = 64
#: The ``_meta`` key under which runtimed marks a ``system`` input: ``{"kind": "system"}``.
RUNTIMED_META_KEY = "runtimed"

TOOL_KINDS: tuple[str, ...] = get_args(ToolKind)
ALLOWING_OPTIONS = ("allow_once", "allow_always")

ContentBlock = (
    TextContentBlock | ImageContentBlock | AudioContentBlock | ResourceContentBlock | EmbeddedResourceContentBlock
)
McpServer = HttpMcpServer | SseMcpServer | AcpMcpServer | McpServerStdio


@dataclass(frozen=True)
class Message:
    """One message of a session's history, as ``session/load`` replays it."""

    role: Literal["user", "agent"]
    text: str
    system: bool = False


@dataclass
class Turn:
    """The prompt turn running in a session: whether it was cancelled, and what it streamed."""

    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    streamed: list[str] = field(default_factory=list)


@dataclass
class Session:
    history: deque[Message] = field(default_factory=lambda: deque(maxlen=HISTORY_LIMIT))
    turn: Turn | None = None


class BadArgument(Exception):
    """A command's argument does not parse; the message says why, for the user to read."""


class BuiltinAgent(Agent):
    """What runtimed's built-in agents (``echo``, ``chat``) share: the handshake (each names itself
    with ``agent_name`` and ``title``; both load sessions), and "method not found" for everything
    they do not do. (A handler left out of a class that subclasses the SDK's ``Agent`` would
    answer with an empty result instead.)"""

    #: The agent's name and title in ``initialize``'s ``agent_info``.
    agent_name: str
    title: str
    _client: Client

    def on_connect(self, conn: Client) -> None:
        self._client = conn

    async def initialize(
        self,
        protocol_version: int,
        client_capabilities: ClientCapabilities | None = None,
        client_info: Implementation | None = None,
        **kwargs: Any,
    ) -> InitializeResponse:
        # Version 1 is the only one these agents speak; when a client asked for another, ACP has
        # the client decide whether to go on.
        return InitializeResponse(
            protocol_version=PROTOCOL_VERSION,
            agent_capabilities=AgentCapabilities(load_session=True),
            agent_info=Implementation(name=self.agent_name, title=self.title, version=__version__),
        )

    async def list_sessions(self, *args: Any, **kwargs: Any) -> ListSessionsResponse:
        raise RequestError.method_not_found(AGENT_METHODS["session_list"])

    async def set_session_mode(self, *args: Any, **kwargs: Any) -> SetSessionModeResponse | None:
        raise RequestError.method_not_found(AGENT_METHODS["session_set_mode"])

    async def set_config_option(self, *args: Any, **kwargs: Any) -> SetSessionConfigOptionResponse | None:
        raise RequestError.method_not_found(AGENT_METHODS["session_set_config_option"])

    async def authenticate(self, *args: Any, **kwargs: Any) -> AuthenticateResponse | None:
        raise RequestError.method_not_found(AGENT_METHODS["authenticate"])

    async def fork_session(self, *args: Any, **kwargs: Any) -> ForkSessionResponse:
        raise RequestError.method_not_found(AGENT_METHODS["session_fork"])

    async def resume_session(self, *args: Any, **kwargs: Any) -> ResumeSessionResponse:
        raise RequestError.method_not_found(AGENT_METHODS["session_resume"])

    async def close_session(self, *args: Any, **kwargs: Any) -> None:
        raise RequestError.method_not_found(AGENT_METHODS["session_close"])

    async def ext_method(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        raise RequestError.method_not_found(f"_{method}")

    async def ext_notification(self, method: str, params: dict[str, Any]) -> None:
        logging.getLogger(type(self).__module__).info("ignoring the extension notification _%s", method)


class EchoAgent(BuiltinAgent):
    """The agent side of one connection: the SDK routes each request to the method of its name."""

    agent_name = AGENT_NAME
    title = "runtimed echo agent"

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._tool_call_ids = itertools.count(1)

    async def new_session(
        self,
        cwd: str,
        additional_directories: list[str] | None = None,
        mcp_servers: list[McpServer] | None = None,
        **kwargs: Any,
    ) -> NewSessionResponse:
        session_id = uuid4().hex
        self._sessions[session_id] = Session()
        return NewSessionResponse(session_id=session_id)

    async def load_session(
        self,
        cwd: str,
        session_id: str,
        mcp_servers: list[McpServer] | None = None,
        additional_directories: list[str] | None = None,
        **kwargs: Any,
    ) -> LoadSessionResponse:
        session = self._sessions.setdefault(session_id, Session())
        for message in list(session.history):
            if message.role == "user":
                update = update_user_message_text(message.text)
                if message.system:
                    update.field_meta = {RUNTIMED_META_KEY: {"kind": "system"}}
                await self._client.session_update(session_id=session_id, update=update)
            else:
                await self._client.session_update(session_id=session_id, update=update_agent_message_text(message.text))
        return LoadSessionResponse()

    async def prompt(self, session_id: str, prompt: list[ContentBlock], **kwargs: Any) -> PromptResponse:
        session = self._sessions.get(session_id)
        if session is None:
            raise RequestError.invalid_params({"sessionId": session_id, "reason": "unknown session"})
        if session.turn is not None:
            raise RequestError.invalid_request({"reason": "a prompt turn is already running in this session"})
        # The turn is registered before the first await, so that a session/cancel following the
        # prompt on the wire always finds it.
        turn = session.turn = Turn()
        # The SDK passes the entries of the request's `_meta` as keyword arguments.
        meta = kwargs.get(RUNTIMED_META_KEY)
        system = isinstance(meta, dict) and meta.get("kind") == "system"
        text = "\n".join(block.text for block in prompt if isinstance(block, TextContentBlock))
        session.history.append(Message("user", text, system))
        try:
            if system:
                await self._say(session_id, turn, f"system: {text}")
            else:
                await self._answer(session_id, turn, text)
        finally:
            session.turn = None
            if turn.streamed:
                session.history.append(Message("agent", "".join(turn.streamed)))
        return PromptResponse(stop_reason="cancelled" if turn.cancelled.is_set() else "end_turn")

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        session = self._sessions.get(session_id)
        if session is not None and session.turn is not None:
            session.turn.cancelled.set()

    # A turn's content.

    async def _answer(self, session_id: str, turn: Turn, text: str) -> None:
        words = text.split()
        command = COMMANDS.get(words[0]) if words else None
        if command is None:
            await self._say(session_id, turn, f"echo: {text}")
        elif len(words) != 2:
            await self._say(session_id, turn, f"usage: {command.usage}")
        else:
            try:
                await command.run(self, session_id, turn, words[1])
            except BadArgument as error:
                await self._say(session_id, turn, f"{error} (usage: {command.usage})")

    async def _permission(self, session_id: str, turn: Turn, argument: str) -> None:
        kind = _tool_kind(argument)
        tool_call_id = f"call-{next(self._tool_call_ids)}"
        title = f"/permission {kind}"
        await self._client.session_update(
            session_id=session_id,
            update=ToolCallStart(
                session_update="tool_call", tool_call_id=tool_call_id, title=title, kind=kind, status="pending"
            ),
        )
        response = await self._client.request_permission(
            session_id=session_id,
            tool_call=ToolCallUpdate(tool_call_id=tool_call_id, title=title, kind=kind, status="pending"),
            options=[
                PermissionOption(option_id="allow_once", name="Allow once", kind="allow_once"),
                PermissionOption(option_id="allow_always", name="Allow always", kind="allow_always"),
                PermissionOption(option_id="reject_once", name="Reject once", kind="reject_once"),
                PermissionOption(option_id="reject_always", name="Reject always", kind="reject_always"),
            ],
        )
        answer = response.outcome.option_id if isinstance(response.outcome, AllowedOutcome) else "cancelled"
        # The tool call is closed even after a cancel, so that no client is left showing it pending.
        status: Literal["completed", "failed"] = "completed" if answer in ALLOWING_OPTIONS else "failed"
        await self._client.session_update(session_id=session_id, update=update_tool_call(tool_call_id, status=status))
        await self._say(session_id, turn, f"permission: {answer}")

    async def _sleep(self, session_id: str, turn: Turn, argument: str) -> None:
        seconds = _seconds(argument)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        # A dot at the start of each second: how many is set by `seconds`, not by the clock.
        for _ in range(math.ceil(seconds)):
            if not await self._stream(session_id, turn, "."):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(turn.cancelled.wait(), timeout=min(1.0, max(0.0, deadline - loop.time())))

    async def _stream_chunks(self, session_id: str, turn: Turn, argument: str) -> None:
        for number in range(1, _bounded_int(argument, 0, MAX_STREAM_CHUNKS, "a number of chunks") + 1):
            if not await self._stream(session_id, turn, f"{number} "):
                return

    async def _exit(self, session_id: str, turn: Turn, argument: str) -> None:
        status = _bounded_int(argument, 0, 255, "an exit status")
        log.info("exiting with status %d, as /exit asked", status)
        os._exit(status)

    async def _say(self, session_id: str, turn: Turn, message: str) -> None:
        for piece in message_chunks(message):
            if not await self._stream(session_id, turn, piece):
                return

    async def _stream(self, session_id: str, turn: Turn, text: str) -> bool:
        """Stream one agent message chunk unless the turn was cancelled; say whether it was sent."""
        if turn.cancelled.is_set():
            return False
        await self._client.session_update(session_id=session_id, update=update_agent_message_text(text))
        turn.streamed.append(text)
        return True


@dataclass(frozen=True)
class Command:
    usage: str
    #: Parses its argument first (raising BadArgument), then does its work.
    run: Callable[[EchoAgent, str, Turn, str], Awaitable[None]]


COMMANDS: dict[str, Command] = {
    "/permission": Command("/permission <kind>", EchoAgent._permission),
    "/sleep": Command("/sleep <seconds>", EchoAgent._sleep),
    "/stream": Command("/stream <n>", EchoAgent._stream_chunks),
    "/exit": Command("/exit <status>", EchoAgent._exit),
}


def _quoted(argument: str) -> str:
    """The argument as a message shows it: quoted, and cut short."""
    return repr(argument if len(argument) <= 40 else argument[:40] + "…")


def _tool_kind(argument: str) -> ToolKind:
    if argument not in TOOL_KINDS:
        raise BadArgument(f"{_quoted(argument)} is not an ACP tool kind ({', '.join(TOOL_KINDS)})")
    return cast(ToolKind, argument)


def _seconds(argument: str) -> float:
    try:
        seconds = float(argument)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= MAX_SLEEP_SECONDS:  # refuses nan too
        raise BadArgument(f"{_quoted(argument)} is not a number of seconds from 0 to {MAX_SLEEP_SECONDS}")
    return seconds


def _bounded_int(argument: str, low: int, high: int, what: str) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", argument) or not low <= int(argument) <= high:
        raise BadArgument(f"{_quoted(argument)} is not {what} from {low} to {high}")
    return int(argument)


def message_chunks(message: str) -> list[str]:
    """``message`` cut into two or more chunks that concatenate to it: a word each, or a few."""
    pieces = re.findall(r"\S+\s*|\s+", message)
    if len(pieces) < 2:
        middle = max(1, len(message) // 2)
        return [message[:middle], message[middle:]]
    size = math.ceil(len(pieces) / MAX_MESSAGE_CHUNKS)
    return ["".join(pieces[start : start + size]) for start in range(0, len(pieces), size)]


async def serve() -> None:
    """Speak ACP on stdin and stdout until stdin closes."""
    await serve_agent(EchoAgent())


async def serve_agent(agent: Agent) -> None:
    """Speak ACP on stdin and stdout as ``agent`` until stdin closes (the chat agent's too)."""
    # The protocol keeps the real stdout; file descriptor 1 and sys.stdout then point at stderr,
    # so that a stray print (ours or a library's) becomes a diagnostic instead of a line that
    # breaks the protocol. stdio_streams connects to whatever sys.stdout is when it is called.
    sys.stdout.flush()
    sys.stdout = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        reader, writer = await stdio_streams(limit=DEFAULT_STDIO_BUFFER_LIMIT_BYTES)
    finally:
        sys.stdout = sys.stderr
    # run_agent returns once stdin reaches its end, after cancelling the turns still running:
    # that is what makes the agent go away with the process that started it.
    await run_agent(agent, writer, reader)


def main() -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format=f"{AGENT_NAME}: %(levelname)s %(message)s")
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
