"""A local OpenAI-compatible chat endpoint for tests: ``POST /v1/chat/completions`` on 127.0.0.1.

It answers each request with the next ``Reply`` of its script (a default one when the script is
empty: ``you said: <the last message's text>``), streamed as server-sent events the way OpenAI
streams ``chat.completion.chunk`` objects, and records every request it got (body and headers)
and every stream the client closed before its end. It runs in the test's own event loop, so an
agent process started by the test (or by a ``runtimed serve`` the test started) talks to it over
a real socket:

    async with OpenAIServer() as server:
        server.script.append(Reply(pieces=["Hel", "lo"], usage=(12, 2)))
        ... an agent with base_url = server.base_url ...
        assert server.requests[0].body["messages"][-1] == {"role": "user", "content": "hi"}

A ``Reply`` can also be an HTTP error (``status`` and ``message``), a stream that stops and waits
for the client to go away (``hang_after``: after that many pieces), or a reply that sends
nothing at all until the client goes away (``hang_after=-1``). Waiting is bounded
(``HANG_SECONDS``), as every wait of a test.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

#: The longest a hanging reply waits for the client to go away.
HANG_SECONDS = 30.0
#: How often a hanging reply looks whether the client went away.
_POLL_SECONDS = 0.01


@dataclass(frozen=True)
class Reply:
    """What the server answers to one request.

    ``pieces`` are streamed as deltas, one event each, then a chunk with ``finish_reason``, then
    (when the request asked with ``stream_options.include_usage``) a chunk with ``usage``
    ``(prompt_tokens, completion_tokens)`` if one is given, then ``data: [DONE]``. With
    ``status``, the server answers that HTTP status and an OpenAI-style error body instead.
    """

    pieces: tuple[str, ...] | list[str] = ()
    finish_reason: str = "stop"
    usage: tuple[int, int] | None = None
    status: int = 200
    message: str = ""
    #: Stream this many pieces, then wait for the client to close the connection (-1: before
    #: even the response's headers).
    hang_after: int | None = None
    #: Wait this long before each piece (seconds).
    delay: float = 0.0


@dataclass(frozen=True)
class Request:
    """One request the server got."""

    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))


@dataclass
class OpenAIServer:
    """See the module's docstring. ``base_url`` is what an OpenAI client is given (``…/v1``)."""

    script: deque[Reply] = field(default_factory=deque)
    requests: list[Request] = field(default_factory=list)
    #: How many streams the client closed before the server had finished them.
    disconnects: int = 0
    #: Answer a request whose ``Authorization`` is not ``Bearer <api_key>`` with 401 (when set);
    #: the error message quotes the header, as a careless server would.
    api_key: str | None = None
    base_url: str = ""
    _runner: web.AppRunner | None = None

    async def __aenter__(self) -> OpenAIServer:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(Request(body, dict(request.headers)))
        reply = self.script.popleft() if self.script else self._default(body)
        if self.api_key is not None:
            given = request.headers.get("Authorization", "")
            if given != f"Bearer {self.api_key}":
                reply = Reply(status=401, message=f"Incorrect API key provided: {given}")
        if reply.status != 200:
            error = {"error": {"message": reply.message, "type": "invalid_request_error", "code": None}}
            return web.json_response(error, status=reply.status)
        if reply.hang_after == -1:
            await self._until_gone(request)
            return web.Response(status=204)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        model = str(body.get("model", ""))
        try:
            for index, piece in enumerate(reply.pieces):
                if reply.hang_after is not None and index == reply.hang_after:
                    await self._until_gone(request)
                    return response
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                await self._event(response, _chunk(model, {"content": piece}, None))
            if reply.hang_after is not None and reply.hang_after >= len(reply.pieces):
                await self._until_gone(request)
                return response
            await self._event(response, _chunk(model, {}, reply.finish_reason))
            wants_usage = (body.get("stream_options") or {}).get("include_usage") is True
            if wants_usage and reply.usage is not None:
                prompt, completion = reply.usage
                usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
                await self._event(response, {**_chunk(model, None, None), "choices": [], "usage": usage})
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionError:
            self.disconnects += 1
        return response

    async def _event(self, response: web.StreamResponse, data: dict[str, Any]) -> None:
        await response.write(f"data: {json.dumps(data)}\n\n".encode())

    async def _until_gone(self, request: web.Request) -> None:
        """Wait (bounded) until the client has closed the connection; count it."""
        deadline = time.monotonic() + HANG_SECONDS
        while time.monotonic() < deadline:
            transport = request.transport
            if transport is None or transport.is_closing():
                self.disconnects += 1
                return
            await asyncio.sleep(_POLL_SECONDS)

    @staticmethod
    def _default(body: dict[str, Any]) -> Reply:
        messages = body.get("messages") or [{}]
        text = str(messages[-1].get("content", ""))
        return Reply(pieces=["you ", "said: ", text], usage=(len(messages) * 10, 3))


def _chunk(model: str, delta: dict[str, Any] | None, finish_reason: str | None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta or {}, "finish_reason": finish_reason}
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": [choice],
    }
