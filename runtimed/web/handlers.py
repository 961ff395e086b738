"""REST handlers. Each one loads its input with a schema, makes one Runtime call, and dumps
the result with a schema; nothing else happens here."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from marshmallow import ValidationError

from ..domain.identity import WorkerRef
from . import schemas
from .encoding import dumps, loads
from .errors import InvalidJson, InvalidQuery, NotReady, PayloadTooLarge, RequestTimeout, http_error_reason
from .keys import RUNTIME, SERVER_CONFIG
from .loaders import Loader, compile_loader

MAX_WARNINGS = 20

# Responses are dumped by functions compiled from their schemas (see ``compile_dumper``).
_runtime_response = schemas.compile_dumper(schemas.RuntimeResponseSchema())
_workers_response = schemas.compile_dumper(schemas.WorkersResponseSchema())
_worker_response = schemas.compile_dumper(schemas.WorkerResponseSchema())
_input_ack_response = schemas.compile_dumper(schemas.WorkerInteractionAckResponseSchema())
_lifecycle_ack_response = schemas.compile_dumper(schemas.WorkerLifecycleAckResponseSchema())
_transcript_response = schemas.compile_dumper(schemas.TranscriptResponseSchema())
_events_response = schemas.compile_dumper(schemas.EventBatchSchema())
_diagnostics_response = schemas.compile_dumper(schemas.DiagnosticsResponseSchema())
_health_response = schemas.compile_dumper(schemas.HealthResponseSchema())
_interrupt_ack_response = schemas.compile_dumper(schemas.InterruptAckResponseSchema())
_permissions_response = schemas.compile_dumper(schemas.PermissionsResponseSchema())
_permission_answer_response = schemas.compile_dumper(schemas.PermissionAnswerResponseSchema())
_profiles_response = schemas.compile_dumper(schemas.ProfilesResponseSchema())

_create_request = schemas.CreateWorkerRequestSchema()
_input_request = schemas.WorkerInputSchema()
_lifecycle_request = schemas.WorkerLifecycleRequestSchema()
_interrupt_request = schemas.WorkerInterruptRequestSchema()
_permission_answer_request = schemas.PermissionAnswerRequestSchema()
# The hot bodies are loaded by functions compiled from their schemas (see ``compile_loader``).
_input_loader = compile_loader(_input_request)
_lifecycle_loader = compile_loader(_lifecycle_request)
_transcript_query = schemas.TranscriptQuerySchema()
_events_query = schemas.EventsQuerySchema()

# ------------------------------------------------------------------ helpers


def json_response(body: Any, warnings: Sequence[str] = ()) -> web.Response:
    response = web.Response(body=dumps(body), content_type="application/json")
    for path in warnings[:MAX_WARNINGS]:
        response.headers.add("Warning", f'299 runtimed "unknown field: {warning_text(path)}"')
    return response


def warning_text(text: str) -> str:
    """``text`` as the quoted string of a ``Warning`` header: ``"`` and ``\\`` get a backslash,
    and anything outside printable ASCII (control characters, which HTTP forbids in a header,
    and non-ASCII, which it would garble) is written ``\\uXXXX`` (``\\UXXXXXXXX`` past U+FFFF)."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif " " <= char <= "~":
            out.append(char)
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return "".join(out)


def worker_ref(request: web.Request) -> WorkerRef:
    """The ref of the path's ``worker_id`` in this runtime; ``invalid_worker_id`` when blank."""
    return request.app[RUNTIME].worker_ref(request.match_info["worker_id"])


async def read_body(request: web.Request) -> bytes:
    """The request body, refused with ``payload_too_large`` past the configured limit and with
    ``request_timeout`` when it has not all arrived within ``[server] body_timeout_seconds``."""
    config = request.app[SERVER_CONFIG]
    limit = config.max_request_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(limit)
    if request.content.is_eof():  # all of it has arrived: reading it waits for nothing
        return await request.read()
    try:
        async with asyncio.timeout(config.body_timeout_seconds):
            # aiohttp enforces client_max_size (set to the same limit) while reading a chunked body.
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(config.body_timeout_seconds) from None


async def read_json_body(request: web.Request, error_prefix: str) -> bytes:
    """The body of a request that carries JSON; ``invalid_json`` when aiohttp cannot decode it
    (a ``Content-Encoding`` it does not know, a gzip stream that is not one)."""
    try:
        return await read_body(request)
    except RequestPayloadError as error:
        raise InvalidJson(f"{error_prefix}: the body cannot be decoded: {http_error_reason(error)}") from None


def parse_json(body: bytes, error_prefix: str) -> Any:
    """A client's JSON, bounded (see ``encoding.loads``); every failure is ``invalid_json``."""
    try:
        return loads(body)
    except UnicodeDecodeError as error:
        raise InvalidJson(f"{error_prefix}: body is not UTF-8 ({error.reason} at byte {error.start})") from None
    except ValueError as error:
        raise InvalidJson(f"{error_prefix}: {error}") from None


def load_object(
    schema: schemas.BaseSchema, data: Any, error_prefix: str, loader: Loader | None = None
) -> tuple[Any, list[str]]:
    """Load a JSON object with ``schema`` (with ``loader``, compiled from it, where that can);
    return the value and the paths of unknown fields."""
    if not isinstance(data, dict):
        raise InvalidJson(f"{error_prefix}: expected a JSON object, got {_json_type(data)}")
    if loader is not None:
        loaded = loader(data)
        if loaded is not None:
            return loaded
    try:
        value = schema.load(data)
    except ValidationError as error:
        raise InvalidJson(f"{error_prefix}: {'; '.join(schemas.flatten_messages(error.messages))}") from None
    return value, schema.unknown_paths(data)


async def load_body(
    request: web.Request, schema: schemas.BaseSchema, loader: Loader | None = None
) -> tuple[Any, list[str]]:
    prefix = "invalid JSON request body"
    body = await read_json_body(request, prefix)
    if not body.strip():
        raise InvalidJson(f"{prefix}: the body is empty; expected a JSON object")
    return load_object(schema, parse_json(body, prefix), prefix, loader)


def load_query(request: web.Request, schema: schemas.BaseSchema) -> tuple[Any, list[str]]:
    query = {key: request.query[key] for key in request.query}  # the first of repeated keys
    try:
        value = schema.load(query)
    except ValidationError as error:
        raise InvalidQuery(f"invalid query parameters: {'; '.join(schemas.flatten_messages(error.messages))}") from None
    return value, schema.unknown_paths(query)


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "null" if value is None else type(value).__name__


# ----------------------------------------------------------------- handlers


async def get_runtime(request: web.Request) -> web.Response:
    return json_response(_runtime_response({"runtime": request.app[RUNTIME].summary()}))


async def list_workers(request: web.Request) -> web.Response:
    return json_response(_workers_response({"workers": request.app[RUNTIME].list_workers()}))


async def create_worker(request: web.Request) -> web.Response:
    create, unknown = await load_body(request, _create_request)
    worker = await request.app[RUNTIME].create_worker(create)
    return json_response(_worker_response({"worker": worker}), unknown)


async def get_worker(request: web.Request) -> web.Response:
    worker = request.app[RUNTIME].worker_detail(worker_ref(request))
    return json_response(_worker_response({"worker": worker}))


async def send_input(request: web.Request) -> web.Response:
    ref = worker_ref(request)
    worker_input, unknown = await load_body(request, _input_request, _input_loader)
    ack = await request.app[RUNTIME].send_input(ref, worker_input)
    return json_response(_input_ack_response({"ack": ack}), unknown)


async def _lifecycle_body(
    request: web.Request, schema: schemas.BaseSchema, loader: Loader | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The optional body of stop, cancel and interrupt: an empty one means every field's default
    (``loader``, compiled from ``schema``, loads it where it can)."""
    prefix = "invalid lifecycle request JSON"
    body = await read_json_body(request, prefix)
    if not body.strip():
        return schema.load({}), []
    data, unknown = load_object(schema, parse_json(body, prefix), prefix, loader)
    return data, unknown


async def _lifecycle_reason(request: web.Request) -> tuple[str | None, list[str]]:
    """The optional ``reason`` of a stop/cancel body; an empty body means no reason."""
    data, unknown = await _lifecycle_body(request, _lifecycle_request, _lifecycle_loader)
    return data.get("reason"), unknown


async def stop_worker(request: web.Request) -> web.Response:
    ref = worker_ref(request)
    reason, unknown = await _lifecycle_reason(request)
    ack = await request.app[RUNTIME].stop_worker(ref, reason)
    return json_response(_lifecycle_ack_response({"ack": ack}), unknown)


async def cancel_worker(request: web.Request) -> web.Response:
    ref = worker_ref(request)
    reason, unknown = await _lifecycle_reason(request)
    ack = await request.app[RUNTIME].cancel_worker(ref, reason)
    return json_response(_lifecycle_ack_response({"ack": ack}), unknown)


async def interrupt_worker(request: web.Request) -> web.Response:
    ref = worker_ref(request)
    data, unknown = await _lifecycle_body(request, _interrupt_request)
    ack = await request.app[RUNTIME].interrupt(ref, data["drop_queued"])
    return json_response(_interrupt_ack_response({"ack": ack}), unknown)


async def get_permissions(request: web.Request) -> web.Response:
    permissions = request.app[RUNTIME].permissions(worker_ref(request))
    return json_response(_permissions_response({"permissions": permissions}))


async def answer_permission(request: web.Request) -> web.Response:
    ref = worker_ref(request)
    data, unknown = await load_body(request, _permission_answer_request)
    answer = await request.app[RUNTIME].answer_permission(ref, request.match_info["request_id"], data["option_id"])
    return json_response(_permission_answer_response({"permission": answer}), unknown)


async def get_profiles(request: web.Request) -> web.Response:
    return json_response(_profiles_response({"profiles": request.app[RUNTIME].profiles()}))


async def get_transcript(request: web.Request) -> web.Response:
    ref = worker_ref(request)
    query, unknown = load_query(request, _transcript_query)
    transcript = request.app[RUNTIME].transcript(ref, query["start"], query["limit"])
    return json_response(_transcript_response({"transcript": transcript}), unknown)


async def get_events(request: web.Request) -> web.Response:
    query, unknown = load_query(request, _events_query)
    batch = request.app[RUNTIME].events(query["cursor"], query["limit"])
    return json_response(_events_response(batch), unknown)


async def get_diagnostics(request: web.Request) -> web.Response:
    return json_response(_diagnostics_response({"diagnostics": request.app[RUNTIME].diagnostics()}))


async def stop_runtime(request: web.Request) -> web.Response:
    summary = await request.app[RUNTIME].stop()
    return json_response(_runtime_response({"runtime": summary}))


async def start_runtime(request: web.Request) -> web.Response:
    summary = await request.app[RUNTIME].start()
    return json_response(_runtime_response({"runtime": summary}))


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return json_response(_health_response({"status": "ok"}))


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the store is loaded and takes writes (``503 not_ready`` otherwise)."""
    problem = await request.app[RUNTIME].readiness()
    if problem is not None:
        raise NotReady(f"not ready: {problem}")
    return json_response(_health_response({"status": "ready"}))
