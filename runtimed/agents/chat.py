"""The built-in chat agent: an ACP agent that talks to an OpenAI-compatible chat endpoint.

Run it as ``python -m runtimed.agents.chat`` (runtimed does, for ``builtin:chat`` and for a
``[profiles.<name>]`` table with ``builtin = "chat"``); it speaks ACP on stdin and stdout like
the echo agent (``runtimed.agents.echo``, whose ``serve`` it shares), writes diagnostics to stderr,
and exits with status 0 when its stdin closes.

For each prompt it sends the session's conversation (the system prompt, then every earlier
message, then the prompt) to the endpoint's ``chat.completions`` in one streaming request,
through the official ``openai`` library's async client, and relays each streamed piece of text as
an ``agent_message_chunk``. The turn ends ``end_turn``; ``max_tokens`` when the model stopped on
its length; ``refusal`` on the server's content filter; ``cancelled`` on ``session/cancel``, which
closes the HTTP stream at once. One request per turn (no retries): runtimed's user decides
whether to try again. When the server reports token usage (it is asked to, with
``stream_options.include_usage``), the agent sends it as a ``usage_update`` before it answers.

A ``system`` input is not a question: it becomes a ``system`` message of the conversation, sent
with the next prompts, and its turn ends ``end_turn`` at once, without a request.

Errors are answers: a server that cannot be reached, does not answer within the timeout, or
answers an HTTP error makes the agent answer the prompt with a JSON-RPC error whose message
names what happened (the status and the server's own message), and the agent goes on. The API
key is written ``***`` in everything the agent reports (errors and log lines).

**Settings** come from the environment, which runtimed builds from the profile
(``runtimed.agents.supervisor.setting_environment``): ``RUNTIMED_AGENT_MODEL`` (required: without
it every prompt fails "no model configured"), ``RUNTIMED_AGENT_BASE_URL`` (else the ``openai``
library's default), ``RUNTIMED_AGENT_API_KEY``, ``RUNTIMED_AGENT_SYSTEM_PROMPT``,
``RUNTIMED_AGENT_MAX_TOKENS``, ``RUNTIMED_AGENT_TIMEOUT_SECONDS`` (default 120: for connecting,
then for each wait between streamed pieces) and ``RUNTIMED_AGENT_INTENT`` (the worker's intent,
as JSON; it becomes part of the system prompt).

**Sessions survive restarts.** It advertises ``loadSession``: each session's conversation is a
JSON lines file in the session's working directory (the worker's directory),
``.runtimed-chat-<session id>.jsonl``, one ``{"role", "content"}`` object a line, made at
``session/new`` and appended (and flushed to disk) when a turn ends, before the prompt is
answered. A turn enters it when it ends ``end_turn`` or ``max_tokens``, or produced text.
``session/load`` reads it back; a session whose file is missing or unreadable fails to load,
and runtimed then reports the context lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import sys
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from uuid import uuid4

import openai
from acp import RequestError, update_agent_message_text
from acp.schema import (
    LoadSessionResponse,
    NewSessionResponse,
    PromptResponse,
    TextContentBlock,
    UsageUpdate,
)

from .echo import RUNTIMED_META_KEY, BuiltinAgent, ContentBlock, McpServer, serve_agent

log = logging.getLogger("runtimed.agents.chat")

AGENT_NAME = "runtimed-chat"
#: The prefix of the variables that carry a built-in agent's settings (``RUNTIMED_AGENT_MODEL`` …).
SETTING_PREFIX = "RUNTIMED_AGENT_"
DEFAULT_TIMEOUT_SECONDS = 120.0
#: The history file of a session, in its working directory.
HISTORY_FILE = ".runtimed-chat-{session_id}.jsonl"
#: A history file larger than this is not loaded (the session is lost rather than the agent's memory).
MAX_HISTORY_BYTES = 64 * 1024 * 1024
#: How much of a server's error message a JSON-RPC error quotes.
MAX_SERVER_MESSAGE_CHARS = 500
REDACTED = "***"
#: What the client sends as its key when it has none: local servers (Ollama, llama.cpp) need none,
#: but the library insists on one.
NO_KEY = "no-key"

_SESSION_ID = re.compile(r"[0-9a-f]{32}")
#: The JSON-RPC error code of a failed turn (the implementation-defined server error range).
TURN_FAILED = -32000

Role = Literal["system", "user", "assistant"]
StopReason = Literal["end_turn", "max_tokens", "refusal", "cancelled"]


class SettingsError(Exception):
    """A setting in the environment that does not parse; the message says which."""


@dataclass(frozen=True)
class Settings:
    """What the agent was configured with (see the module's docstring)."""

    model: str | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)  # never in a repr, a log line or a traceback
    system_prompt: str | None = None
    max_tokens: int | None = None
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    intent: str | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Settings:
        def get(name: str) -> str | None:
            value = environ.get(SETTING_PREFIX + name)
            return value if value else None

        max_tokens = get("MAX_TOKENS")
        if max_tokens is not None and not (re.fullmatch(r"[0-9]{1,9}", max_tokens) and int(max_tokens) > 0):
            raise SettingsError(f"{SETTING_PREFIX}MAX_TOKENS must be a whole number above 0, not {max_tokens!r}")
        timeout = get("TIMEOUT_SECONDS")
        seconds = DEFAULT_TIMEOUT_SECONDS
        if timeout is not None:
            try:
                seconds = float(timeout)
            except ValueError:
                seconds = math.nan
            if not (math.isfinite(seconds) and seconds > 0):
                raise SettingsError(f"{SETTING_PREFIX}TIMEOUT_SECONDS must be a number above 0, not {timeout!r}")
        return cls(
            model=get("MODEL"),
            base_url=get("BASE_URL"),
            api_key=get("API_KEY"),
            system_prompt=get("SYSTEM_PROMPT"),
            max_tokens=int(max_tokens) if max_tokens is not None else None,
            timeout_seconds=seconds,
            intent=intent_text(get("INTENT")),
        )

    def system_message(self) -> str | None:
        """The system prompt the model gets: the profile's, then the worker's intent."""
        parts = [part for part in (self.system_prompt, self.intent) if part]
        return "\n\n".join(parts) if parts else None

    def redact(self, text: str) -> str:
        """``text`` with the API key written ``***``."""
        return text.replace(self.api_key, REDACTED) if self.api_key else text


def intent_text(intent: str | None) -> str | None:
    """The worker's intent (JSON: ``{"kind": "task", "objective": …}``) as a sentence for the
    system prompt; ``None`` when it says nothing (an assistant without a purpose)."""
    if intent is None:
        return None
    try:
        value = json.loads(intent)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None

    def text(key: str) -> str | None:
        item = value.get(key)
        return item.strip() if isinstance(item, str) and item.strip() else None

    kind = value.get("kind")
    if kind == "task" and text("objective"):
        return f"Your task: {text('objective')}"
    if kind == "role" and text("role"):
        sentence = f"Your role: {text('role')}."
        return sentence + (f" Its purpose: {text('purpose')}" if text("purpose") else "")
    if text("purpose"):
        return f"Your purpose: {text('purpose')}"
    return None


class TurnFailed(Exception):
    """The model server did not give the turn an answer; the message says why, for the user."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Turn:
    """The prompt turn running in a session: its request, whether it was cancelled, what it streamed."""

    cancelled: bool = False
    request: asyncio.Task[StopReason] | None = None
    streamed: list[str] = field(default_factory=list)


@dataclass
class Session:
    """A conversation: its messages (as the history file holds them) and the file."""

    path: Path
    messages: list[dict[str, str]] = field(default_factory=list)
    turn: Turn | None = None

    def append(self, *messages: dict[str, str]) -> None:
        """Add messages to the conversation and its file, flushed to disk before returning."""
        lines = "".join(json.dumps(message, ensure_ascii=False) + "\n" for message in messages)
        # Private (0600) whatever the umask: the file holds the whole conversation, and a profile
        # ``cwd`` or a workspace may be readable by others.
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with open(descriptor, "a", encoding="utf-8") as file:
            file.write(lines)
            file.flush()
            os.fsync(file.fileno())
        self.messages.extend(messages)


def history_path(cwd: str, session_id: str) -> Path:
    """The history file of a session in ``cwd``, which ACP wants absolute (a relative one would be
    read from the agent's own directory, a different place from where the client meant)."""
    if not os.path.isabs(cwd):
        raise RequestError.invalid_params({"cwd": cwd, "reason": "the session's cwd must be an absolute path"})
    return Path(cwd) / HISTORY_FILE.format(session_id=session_id)


def read_history(path: Path) -> list[dict[str, str]]:
    """The messages of a history file; ``OSError`` or ``ValueError`` when it cannot be used. A
    last line cut short (a crash while writing it) is left out."""
    if path.stat().st_size > MAX_HISTORY_BYTES:
        raise ValueError(f"it is larger than {MAX_HISTORY_BYTES} bytes")
    lines = path.read_text(encoding="utf-8").split("\n")
    messages = []
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            message = json.loads(line)
        except ValueError:
            if number == len(lines):  # the last line, without its newline
                log.warning("%s: leaving out its last line, which was cut short", path)
                break
            raise ValueError(f"line {number} is not JSON") from None
        if not (
            isinstance(message, dict)
            and message.get("role") in ("system", "user", "assistant")
            and isinstance(message.get("content"), str)
        ):
            raise ValueError(f"line {number} is not a message")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


class ChatAgent(BuiltinAgent):
    """The agent side of one connection: the SDK routes each request to the method of its name."""

    agent_name = AGENT_NAME
    title = "runtimed chat agent"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._sessions: dict[str, Session] = {}
        self.openai_client = openai.AsyncOpenAI(
            api_key=settings.api_key or NO_KEY,
            base_url=settings.base_url,  # None: the library's default
            max_retries=0,  # one request per turn: whether to try again is the user's call
            # Every phase: connecting, and then each wait for the next piece of the stream.
            timeout=settings.timeout_seconds,
        )
        # How failures name the server: without credentials written into the URL.
        self.endpoint = without_credentials(str(self.openai_client.base_url).rstrip("/"))

    async def new_session(
        self,
        cwd: str,
        additional_directories: list[str] | None = None,
        mcp_servers: list[McpServer] | None = None,
        **kwargs: Any,
    ) -> NewSessionResponse:
        session_id = uuid4().hex
        session = Session(history_path(cwd, session_id))
        try:
            session.append()  # the file exists from now on: an empty conversation can be loaded
        except OSError as error:
            raise RequestError.internal_error({"reason": f"cannot write the history file: {error}"}) from None
        self._sessions[session_id] = session
        return NewSessionResponse(session_id=session_id)

    async def load_session(
        self,
        cwd: str,
        session_id: str,
        mcp_servers: list[McpServer] | None = None,
        additional_directories: list[str] | None = None,
        **kwargs: Any,
    ) -> LoadSessionResponse:
        if not _SESSION_ID.fullmatch(session_id):
            raise RequestError.invalid_params({"sessionId": session_id, "reason": "not a session of this agent"})
        path = history_path(cwd, session_id)
        try:
            messages = read_history(path)
        except FileNotFoundError:
            raise RequestError.invalid_params(
                {"sessionId": session_id, "reason": f"no history file {path}: the conversation is lost"}
            ) from None
        except (OSError, ValueError) as error:
            raise RequestError.invalid_params(
                {"sessionId": session_id, "reason": f"cannot read the history file {path}: {error}"}
            ) from None
        # The history is not replayed as updates: runtimed drops them, and its transcript has it all.
        self._sessions[session_id] = Session(path, messages)
        return LoadSessionResponse()

    async def prompt(self, session_id: str, prompt: list[ContentBlock], **kwargs: Any) -> PromptResponse:
        session = self._sessions.get(session_id)
        if session is None:
            raise RequestError.invalid_params({"sessionId": session_id, "reason": "unknown session"})
        if session.turn is not None:
            raise RequestError.invalid_request({"reason": "a prompt turn is already running in this session"})
        # Registered before the first await: a session/cancel that follows on the wire finds it.
        turn = session.turn = Turn()
        meta = kwargs.get(RUNTIMED_META_KEY)
        system = isinstance(meta, dict) and meta.get("kind") == "system"
        text = "\n".join(block.text for block in prompt if isinstance(block, TextContentBlock))
        try:
            if system:
                self._record(session, {"role": "system", "content": text})
                return PromptResponse(stop_reason="end_turn")
            if self.settings.model is None:
                raise self._failure(
                    TurnFailed(
                        'no model configured: give the worker a profile with builtin = "chat" and '
                        'model = "<model name>" (builtin:chat alone has none)'
                    )
                )
            question = {"role": "user", "content": text}
            stop_reason: StopReason = "cancelled"
            failure: TurnFailed | None = None
            if not turn.cancelled:
                turn.request = asyncio.create_task(self._complete(session_id, turn, [*session.messages, question]))
                # Waited for with wait(): a cancel of the request must not look like our own.
                await asyncio.wait({turn.request})
                if turn.request.cancelled():
                    stop_reason = "cancelled"
                elif isinstance(turn.request.exception(), TurnFailed):
                    failure = cast(TurnFailed, turn.request.exception())
                else:
                    stop_reason = turn.request.result()
            answer = "".join(turn.streamed)
            if (failure is None and stop_reason in ("end_turn", "max_tokens")) or answer:
                self._record(session, question, *([{"role": "assistant", "content": answer}] if answer else []))
            if failure is not None:
                raise self._failure(failure)
            return PromptResponse(stop_reason=stop_reason)
        finally:
            if turn.request is not None and not turn.request.done():
                turn.request.cancel()  # our own prompt was cancelled: the stream goes with it
            session.turn = None

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        session = self._sessions.get(session_id)
        if session is not None and session.turn is not None:
            session.turn.cancelled = True
            if session.turn.request is not None:
                session.turn.request.cancel()  # closes the HTTP stream at once

    # The request.

    async def _complete(self, session_id: str, turn: Turn, conversation: list[dict[str, str]]) -> StopReason:
        """Stream one completion of ``conversation`` into the turn; its stop reason, or ``TurnFailed``."""
        settings = self.settings
        assert settings.model is not None
        system = settings.system_message()
        messages = ([{"role": "system", "content": system}] if system else []) + conversation
        extra: dict[str, Any] = {} if settings.max_tokens is None else {"max_tokens": settings.max_tokens}
        finish: str | None = None
        usage: Any = None
        try:
            stream = await self.openai_client.chat.completions.create(
                model=settings.model,
                messages=cast(Any, messages),
                stream=True,
                stream_options={"include_usage": True},
                **extra,
            )
            try:
                async for chunk in stream:
                    if chunk.usage is not None:
                        usage = chunk.usage
                    for choice in (chunk.choices or [])[:1]:
                        piece = choice.delta.content if choice.delta is not None else None
                        if piece:
                            turn.streamed.append(piece)
                            await self._client.session_update(
                                session_id=session_id, update=update_agent_message_text(piece)
                            )
                        if choice.finish_reason is not None:
                            finish = choice.finish_reason
            finally:
                # Closing the response closes the connection when the stream was not read to its
                # end (a cancel): the server sees the client go away.
                await stream.close()
        except openai.APIStatusError as error:
            raise TurnFailed(self._status_message(error), error.status_code) from None
        except openai.APITimeoutError:
            raise self._timed_out() from None
        except openai.APIConnectionError as error:
            cause = error.__cause__ or error
            raise TurnFailed(f"cannot connect to the model server at {self.endpoint}: {_describe(cause)}") from None
        except openai.OpenAIError as error:
            raise TurnFailed(f"the model server at {self.endpoint} failed: {_describe(error)}") from None
        except Exception as error:
            # What the library lets through: the HTTP library's own errors (older openai versions
            # do not wrap a timeout while streaming; the HTTP library is httpx or httpx2,
            # depending on the version, so it is known by name), or an answer in a shape it
            # does not expect (a server's own dialect).
            if "Timeout" in type(error).__name__:
                raise self._timed_out() from None
            raise TurnFailed(
                f"the answer of the model server at {self.endpoint} could not be read: "
                f"{type(error).__name__}: {_describe(error)}"
            ) from None
        if usage is not None:
            await self._report_usage(session_id, usage)
        if finish == "length":
            return "max_tokens"
        if finish == "content_filter":
            return "refusal"
        return "end_turn"

    def _timed_out(self) -> TurnFailed:
        seconds = self.settings.timeout_seconds
        return TurnFailed(f"the model server at {self.endpoint} did not answer within {seconds:g} s (timeout_seconds)")

    async def _report_usage(self, session_id: str, usage: Any) -> None:
        """ACP ``usage_update``: ``used`` is the request's ``total_tokens`` (the conversation the
        model read plus what it wrote: what is in its context now); ``size`` is 0, as an
        OpenAI-compatible server does not say how large the context window is; ``_meta.openai``
        has the server's counts as it sent them."""
        counts = usage.model_dump(exclude_none=True)
        try:
            update = UsageUpdate(
                session_update="usage_update",
                used=max(0, int(usage.total_tokens)),
                size=0,
                field_meta={"openai": counts},
            )
        except (TypeError, ValueError) as error:
            log.warning("leaving out usage the server reported in a shape not understood: %s", error)
            return
        await self._client.session_update(session_id=session_id, update=update)

    def _status_message(self, error: openai.APIStatusError) -> str:
        reason = error.response.reason_phrase
        status = f"{error.status_code} {reason}".strip()
        return f"the model server at {self.endpoint} answered HTTP {status}: {_server_message(error)}"

    def _record(self, session: Session, *messages: dict[str, str]) -> None:
        try:
            session.append(*messages)
        except OSError as error:
            # The conversation goes on in memory; a restart will not find these messages.
            log.warning("cannot append to %s: %s", session.path, error)
            session.messages.extend(messages)

    def _failure(self, failure: TurnFailed) -> RequestError:
        message = self.settings.redact(str(failure))
        log.warning("turn failed: %s", message)
        return RequestError(TURN_FAILED, message, {"status": failure.status} if failure.status is not None else None)


def without_credentials(url: str) -> str:
    """``url`` with a user and password written into it (``http://user:secret@host/v1``) as
    ``***`` (``http://***@host/v1``); any other URL as it is."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{REDACTED}@{host}"))


def _server_message(error: openai.APIStatusError) -> str:
    """The server's own message in an error answer: OpenAI's ``{"error": {"message": …}}``, or
    whatever text it sent; bounded."""
    body = error.body
    message: Any = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
    elif isinstance(body, str):
        message = body
    if not isinstance(message, str) or not message.strip():
        with contextlib.suppress(Exception):
            message = error.response.text
    text = " ".join(str(message or "no message").split())
    return text if len(text) <= MAX_SERVER_MESSAGE_CHARS else text[:MAX_SERVER_MESSAGE_CHARS] + "…"


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return text if text else type(error).__name__


class Redacting(logging.Formatter):
    """Writes the API key ``***`` in every line the agent logs, whoever logs it (this agent or a
    library): the whole formatted record, its traceback and stack included."""

    def __init__(self, fmt: str, secret: str | None) -> None:
        super().__init__(fmt)
        self.secret = secret

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text.replace(self.secret, REDACTED) if self.secret else text


def main() -> int:
    handler = logging.StreamHandler(sys.stderr)
    log_format = f"{AGENT_NAME}: %(levelname)s %(message)s"
    handler.setFormatter(logging.Formatter(log_format))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    # The HTTP libraries log every request at INFO: the agent reports what matters itself.
    for name in ("openai", "httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        settings = Settings.from_environment(os.environ)
    except SettingsError as error:
        log.error("%s", error)
        return 2
    handler.setFormatter(Redacting(log_format, settings.api_key))
    if settings.model is None:
        log.warning("no model configured: every prompt will fail until the profile sets model")
    try:
        agent = ChatAgent(settings)
    except Exception as error:  # the openai library refuses its settings (a malformed base_url …)
        log.error("cannot make the OpenAI client: %s", settings.redact(_describe(error)))
        return 2
    try:
        asyncio.run(serve_agent(agent))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
