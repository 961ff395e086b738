"""One method per route of the API, over aiohttp's client; every answer checked against the
schema the server dumps it with.

An ``Answer`` keeps the body exactly as the daemon sent it (``text``, for ``--json``) beside its
parsed JSON (``body``). A 2xx answer that does not load with its schema, or any answer that is
not JSON, is a ``BadAnswer``; an error body becomes an ``ApiError`` (``Unauthorized`` for 401).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from marshmallow import Schema, ValidationError

from ..domain.catalog import CreateWorkerRequest, WorkerStatus
from ..domain.interaction import WorkerInput
from ..store.codec import encode_request
from ..web.schemas import (
    DiagnosticsResponseSchema,
    ErrorResponseSchema,
    InterruptAckResponseSchema,
    PermissionAnswerResponseSchema,
    PermissionsResponseSchema,
    ProfilesResponseSchema,
    RuntimeResponseSchema,
    TranscriptResponseSchema,
    WorkerDeletedResponseSchema,
    WorkerInputSchema,
    WorkerInteractionAckResponseSchema,
    WorkerLifecycleAckResponseSchema,
    WorkerResponseSchema,
    WorkersResponseSchema,
)
from .connection import ApiError, BadAnswer, Connection, Unauthorized, Unreachable

#: How long the daemon may take to accept a connection, and to answer one request.
CONNECT_SECONDS = 10.0
ANSWER_SECONDS = 60.0
#: The client pings the observation WebSocket this often, so a daemon that vanished without
#: closing it (a dead machine, a cut cable) is noticed.
WS_HEARTBEAT_SECONDS = 20.0
#: The largest observation frame the client reads (the server bounds a snapshot to about 1 MiB
#: of content; escaping and the worker's detail come on top).
WS_MAX_FRAME_BYTES = 16 * 1024 * 1024


_schemas: dict[type[Schema], Schema] = {}


def _schema(kind: type[Schema]) -> Schema:
    schema = _schemas.get(kind)
    if schema is None:
        schema = _schemas[kind] = kind()
    return schema


@dataclass(frozen=True, slots=True)
class Answer:
    """A 2xx answer: its body as sent, and parsed."""

    text: str
    body: Any


def worker_path(worker_id: str, *rest: str) -> str:
    """``/v1/workers/<id>/<rest…>``, each segment quoted (an id is the user's text)."""
    segments = [quote(worker_id, safe=""), *(quote(part, safe="") for part in rest)]
    return "/v1/workers/" + "/".join(segments)


class Api:
    """An HTTP session to one daemon; use it as an async context manager."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        connector: aiohttp.BaseConnector
        if self.connection.unix_socket is not None:
            connector = aiohttp.UnixConnector(path=self.connection.unix_socket)
        else:
            connector = aiohttp.TCPConnector()
        headers = {}
        if self.connection.token is not None:
            headers["Authorization"] = f"Bearer {self.connection.token}"
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            # Never a proxy from the environment: the daemon is on this machine.
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_SECONDS, sock_read=ANSWER_SECONDS),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use Api as an async context manager"
        return self._session

    # ------------------------------------------------------------------ the calls

    async def call(
        self,
        method: str,
        path: str,
        schema: type[Schema],
        *,
        params: Sequence[tuple[str, str]] = (),
        body: Any = None,
    ) -> Answer:
        """One request; the answer checked with ``schema``; failures as ``ClientFailure``s."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        url = self.connection.endpoint(path)
        try:
            async with self.session.request(method, url, params=params, data=data, headers=headers) as response:
                raw = await response.read()
                status = response.status
        except aiohttp.ClientError as error:
            raise self.unreachable(error) from None
        except TimeoutError:
            raise Unreachable(f"{self.connection.where} did not answer within {ANSWER_SECONDS:g} s") from None
        text = raw.decode("utf-8", errors="replace")
        try:
            parsed = json.loads(text)
        except ValueError:
            raise BadAnswer(
                f"{self.connection.where} answered {method} {path} with HTTP {status} and a body that is not JSON"
            ) from None
        if status >= 400:
            raise self.api_error(status, parsed)
        try:
            _schema(schema).load(parsed)
        except ValidationError as error:
            raise BadAnswer(
                f"{self.connection.where} answered {method} {path} with a body of an unexpected shape: "
                f"{_first_problem(error.messages)}"
            ) from None
        return Answer(text, parsed)

    def unreachable(self, error: BaseException) -> Unreachable:
        where = self.connection.where
        if isinstance(error, aiohttp.ClientConnectorError):
            os_error = error.os_error
            reason = os.strerror(os_error.errno) if os_error.errno else os_error.strerror or str(os_error)
            return Unreachable(f"cannot reach {where}: {reason.lower()}")
        if isinstance(error, aiohttp.ServerDisconnectedError):
            return Unreachable(f"{where} closed the connection without answering")
        return Unreachable(f"lost the connection to {where}: {error}")

    def api_error(self, status: int, body: Any) -> ApiError:
        try:
            _schema(ErrorResponseSchema).load(body)
        except ValidationError:
            return ApiError(status, f"http_{status}", f"{self.connection.where} answered HTTP {status}")
        code, message = body["error"]["code"], body["error"]["message"]
        if status == 401:
            source = self.connection.token_source
            if source is None:
                explanation = "the daemon needs a token (401 unauthorized): set $RUNTIMED_TOKEN or use --token-env VAR"
            else:
                explanation = f"the daemon refused the token from {source} (401 unauthorized)"
            return Unauthorized(message, explanation)
        return ApiError(status, code, message)

    async def runtime(self) -> Answer:
        return await self.call("GET", "/v1/runtime", RuntimeResponseSchema)

    async def diagnostics(self) -> Answer:
        return await self.call("GET", "/v1/diagnostics", DiagnosticsResponseSchema)

    async def profiles(self) -> Answer:
        return await self.call("GET", "/v1/profiles", ProfilesResponseSchema)

    async def workers(
        self, statuses: Sequence[WorkerStatus] = (), limit: int | None = None, after: str | None = None
    ) -> Answer:
        """One page of ``GET /v1/workers`` (§11); with no argument, every worker (§4)."""
        params = [("status", status.value) for status in statuses]
        if limit is not None:
            params.append(("limit", str(limit)))
        if after is not None:
            params.append(("after", after))
        return await self.call("GET", "/v1/workers", WorkersResponseSchema, params=params)

    async def create(self, request: CreateWorkerRequest) -> Answer:
        return await self.call("POST", "/v1/workers", WorkerResponseSchema, body=encode_request(request))

    async def worker(self, worker_id: str) -> Answer:
        return await self.call("GET", worker_path(worker_id), WorkerResponseSchema)

    async def send(self, worker_id: str, worker_input: WorkerInput) -> Answer:
        body = _schema(WorkerInputSchema).dump(worker_input)
        return await self.call("POST", worker_path(worker_id, "input"), WorkerInteractionAckResponseSchema, body=body)

    async def stop(self, worker_id: str, reason: str | None = None) -> Answer:
        body = {"reason": reason} if reason is not None else None
        return await self.call("POST", worker_path(worker_id, "stop"), WorkerLifecycleAckResponseSchema, body=body)

    async def cancel(self, worker_id: str, reason: str | None = None) -> Answer:
        body = {"reason": reason} if reason is not None else None
        return await self.call("POST", worker_path(worker_id, "cancel"), WorkerLifecycleAckResponseSchema, body=body)

    async def interrupt(self, worker_id: str, drop_queued: bool = False) -> Answer:
        body = {"drop_queued": True} if drop_queued else None
        return await self.call("POST", worker_path(worker_id, "interrupt"), InterruptAckResponseSchema, body=body)

    async def delete(self, worker_id: str) -> Answer:
        return await self.call("DELETE", worker_path(worker_id), WorkerDeletedResponseSchema)

    async def transcript(self, worker_id: str, start: int = 0, limit: int | None = None) -> Answer:
        params = [("start", str(start))]
        if limit is not None:
            params.append(("limit", str(limit)))
        return await self.call("GET", worker_path(worker_id, "transcript"), TranscriptResponseSchema, params=params)

    async def permissions(self, worker_id: str) -> Answer:
        return await self.call("GET", worker_path(worker_id, "permissions"), PermissionsResponseSchema)

    async def answer_permission(self, worker_id: str, request_id: str, option_id: str) -> Answer:
        path = worker_path(worker_id, "permissions", request_id)
        return await self.call("POST", path, PermissionAnswerResponseSchema, body={"option_id": option_id})

    # ------------------------------------------------------------ the WebSocket

    @asynccontextmanager
    async def observe(self, worker_id: str, cursor: str | None) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
        """The worker's observation WebSocket, from ``cursor`` (or from now)."""
        url = self.connection.endpoint(worker_path(worker_id, "events", "ws"))
        params = {"cursor": cursor} if cursor is not None else {}
        try:
            ws = await self.session.ws_connect(
                url, params=params, heartbeat=WS_HEARTBEAT_SECONDS, max_msg_size=WS_MAX_FRAME_BYTES
            )
        except aiohttp.WSServerHandshakeError as error:
            # The refusal's body is gone with aiohttp's exception; asking the worker's REST route
            # gives the same refusal (404 worker_not_found, 401) with its code and message.
            await self.worker(worker_id)
            raise Unreachable(f"{self.connection.where} refused the WebSocket: HTTP {error.status}") from None
        except aiohttp.ClientError as error:
            raise self.unreachable(error) from None
        except TimeoutError:
            raise Unreachable(f"{self.connection.where} did not answer within {CONNECT_SECONDS:g} s") from None
        try:
            yield ws
        finally:
            # Bounded: a daemon that stopped answering must not hold the client up.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)


def _first_problem(messages: Any, path: str = "") -> str:
    if isinstance(messages, dict):
        key, value = next(iter(messages.items()))
        return _first_problem(value, f"{path}.{key}" if path else str(key))
    if isinstance(messages, list) and messages:
        return _first_problem(messages[0], path)
    return f"{path}: {messages}" if path else str(messages)
