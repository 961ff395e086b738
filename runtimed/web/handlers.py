"""REST handlers. Each one loads its input with a schema, makes one Runtime call, and dumps
the result with a schema; nothing else happens here."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from marshmallow import ValidationError

from ..domain.errors import InvalidRequest
from ..domain.idempotency import MAX_IDEMPOTENCY_KEY_LENGTH, KeptAnswer, is_idempotency_key
from ..domain.identity import WorkerRef
from ..runtime import IdempotencyClaim
from . import schemas
from .encoding import canonical_json, dumps, loads
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
_deleted_response = schemas.compile_dumper(schemas.WorkerDeletedResponseSchema())

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
_workers_query = schemas.WorkersQuerySchema()

BODY_PREFIX = "invalid JSON request body"
LIFECYCLE_PREFIX = "invalid lifecycle request JSON"
#: The request header of §11, and the header of an answer that is a kept one sent again.
IDEMPOTENCY_KEY = "Idempotency-Key"
IDEMPOTENT_REPLAYED = "Idempotent-Replayed"

# ------------------------------------------------------------------ helpers


def json_response(body: Any, warnings: Sequence[str] = ()) -> web.Response:
    response = web.Response(body=dumps(body), content_type="application/json")
    for path in warnings[:MAX_WARNINGS]:
        response.headers.add("Warning", f'299 runtimed "unknown field: {warning_text(path)}"')
    return response


def warning_values(paths: Sequence[str]) -> tuple[str, ...]:
    """The ``Warning`` header values ``json_response`` sends for the unknown fields ``paths``."""
    return tuple(f'299 runtimed "unknown field: {warning_text(path)}"' for path in paths[:MAX_WARNINGS])


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
    return load_body_bytes(await read_json_body(request, BODY_PREFIX), schema, loader)


#: The JSON of a body not parsed yet (``None`` is a JSON value).
UNPARSED: Any = object()


def load_body_bytes(
    body: bytes, schema: schemas.BaseSchema, loader: Loader | None = None, data: Any = UNPARSED
) -> tuple[Any, list[str]]:
    """A request body that must be a JSON object of ``schema``'s shape (``data``: its JSON,
    when it was parsed already)."""
    if not body.strip():
        raise InvalidJson(f"{BODY_PREFIX}: the body is empty; expected a JSON object")
    if data is UNPARSED:
        data = parse_json(body, BODY_PREFIX)
    return load_object(schema, data, BODY_PREFIX, loader)


def load_lifecycle_bytes(
    body: bytes, schema: schemas.BaseSchema, loader: Loader | None = None, data: Any = UNPARSED
) -> tuple[Any, list[str]]:
    """The optional body of stop, cancel and interrupt: an empty one means every field's default
    (``loader``, compiled from ``schema``, loads it where it can)."""
    if not body.strip():
        return schema.load({}), []
    if data is UNPARSED:
        data = parse_json(body, LIFECYCLE_PREFIX)
    return load_object(schema, data, LIFECYCLE_PREFIX, loader)


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


# ------------------------------------------------------------- idempotency (§11)


def idempotency_key(request: web.Request) -> str | None:
    """The request's ``Idempotency-Key``, if it has one; ``invalid_request`` unless it is one
    header of 1 to 255 visible ASCII characters."""
    values = request.headers.getall(IDEMPOTENCY_KEY, ())
    if not values:
        return None
    if len(values) > 1 or not is_idempotency_key(values[0]):
        raise InvalidRequest(
            f"{IDEMPOTENCY_KEY} must be one header of 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} visible ASCII characters"
        )
    return values[0]


def request_fingerprint(method: str, path: str, body: bytes) -> tuple[str, Any]:
    """What tells one request from another for a key (§11): the method, the path and the body
    as a JSON value (key order and whitespace do not matter); a body that is not JSON counts
    byte for byte, an empty or blank one as no body. Also the body's JSON (``UNPARSED`` when
    it is blank or not JSON), so that it is parsed once."""
    data = UNPARSED
    if not body.strip():
        canonical = b""
    else:
        try:
            data = loads(body)
        except ValueError:  # UnicodeDecodeError included
            canonical = b"bytes:" + body
        else:
            canonical = b"json:" + canonical_json(data)
    digest = hashlib.sha256(f"{method} {path}\n".encode("utf-8", "surrogatepass"))
    digest.update(canonical)
    return digest.hexdigest(), data


def kept_response(answer: KeptAnswer, *, replayed: bool) -> web.Response:
    """The HTTP answer of a kept answer: the first one, or a replay of it."""
    response = web.Response(status=answer.status, body=answer.body, content_type="application/json")
    for warning in answer.warnings:
        response.headers.add("Warning", warning)
    if replayed:
        response.headers[IDEMPOTENT_REPLAYED] = "true"
    return response


#: Loads a request's body (and its JSON, when parsed already, else ``UNPARSED``): the value and
#: the paths of its unknown fields.
BodyLoader = Callable[[bytes, Any], tuple[Any, list[str]]]
#: Makes a request's one Runtime call with the loaded value, under a claim of its key, if any.
RuntimeCall = Callable[[Any, IdempotencyClaim | None], Awaitable[Any]]


async def mutate(
    request: web.Request, body_prefix: str | None, load: BodyLoader, call: RuntimeCall, dump: Callable[[Any], Any]
) -> web.Response:
    """A mutation with an optional ``Idempotency-Key`` (§11): load the body, make the call,
    dump the result. With a key, a request the runtime kept an answer for gets it again (before
    the body is loaded or the runtime asked anything), one with a different request is
    ``idempotency_key_reused``, and otherwise the first 2xx answer is kept with the change the
    call makes. ``body_prefix`` is the prefix of body errors, ``None`` for a route without a body."""
    key = idempotency_key(request)
    body = await read_json_body(request, body_prefix) if body_prefix is not None else b""
    if key is None:
        value, unknown = load(body, UNPARSED)
        return json_response(dump(await call(value, None)), unknown)
    runtime = request.app[RUNTIME]
    warnings: tuple[str, ...] = ()

    def render(result: Any) -> tuple[int, bytes, tuple[str, ...]]:
        return 200, dumps(dump(result)), warnings

    fingerprint, data = request_fingerprint(request.method, request.path, body)
    outcome = await runtime.claim_idempotency_key(key, fingerprint, render)
    if isinstance(outcome, KeptAnswer):
        return kept_response(outcome, replayed=True)
    try:
        value, unknown = load(body, data)
        warnings = warning_values(unknown)
        await call(value, outcome)
    finally:
        runtime.release_idempotency_key(outcome)
    if outcome.kept is None:  # a Runtime call that kept nothing is a bug: say so, keep nothing
        raise AssertionError(f"{request.method} {request.path} answered without keeping its answer")
    return kept_response(outcome.kept, replayed=False)


def _load_nothing(body: bytes, data: Any) -> tuple[None, list[str]]:
    return None, []


# ----------------------------------------------------------------- handlers


async def get_runtime(request: web.Request) -> web.Response:
    return json_response(_runtime_response({"runtime": request.app[RUNTIME].summary()}))


async def list_workers(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    if not request.query:
        return json_response(_workers_response({"workers": runtime.list_workers(), "next_after": None}))
    query: dict[str, Any] = {key: request.query[key] for key in request.query}  # the first of repeated keys
    if "status" in query:
        query["status"] = request.query.getall("status")
    try:
        page_query = _workers_query.load(query)
    except ValidationError as error:
        raise InvalidQuery(f"invalid query parameters: {'; '.join(schemas.flatten_messages(error.messages))}") from None
    unknown = _workers_query.unknown_paths(query)
    if len(unknown) == len(query):  # only unknown parameters: every worker, as without any
        return json_response(_workers_response({"workers": runtime.list_workers(), "next_after": None}), unknown)
    statuses = frozenset(page_query["status"]) if page_query["status"] is not None else None
    page = runtime.worker_page(statuses, page_query["after"], page_query["limit"])
    return json_response(_workers_response({"workers": page.workers, "next_after": page.next_after}), unknown)


def _load_create(body: bytes, data: Any) -> tuple[Any, list[str]]:
    return load_body_bytes(body, _create_request, None, data)


def _dump_worker(worker: Any) -> Any:
    return _worker_response({"worker": worker})


async def create_worker(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]

    def call(create: Any, claim: IdempotencyClaim | None) -> Awaitable[Any]:
        return runtime.create_worker(create, claim=claim)

    return await mutate(request, BODY_PREFIX, _load_create, call, _dump_worker)


async def get_worker(request: web.Request) -> web.Response:
    worker = request.app[RUNTIME].worker_detail(worker_ref(request))
    return json_response(_worker_response({"worker": worker}))


def _load_input(body: bytes, data: Any) -> tuple[Any, list[str]]:
    return load_body_bytes(body, _input_request, _input_loader, data)


def _dump_input_ack(ack: Any) -> Any:
    return _input_ack_response({"ack": ack})


async def send_input(request: web.Request) -> web.Response:
    ref = worker_ref(request)
    runtime = request.app[RUNTIME]

    def call(worker_input: Any, claim: IdempotencyClaim | None) -> Awaitable[Any]:
        return runtime.send_input(ref, worker_input, claim=claim)

    return await mutate(request, BODY_PREFIX, _load_input, call, _dump_input_ack)


def _load_reason(body: bytes, data: Any) -> tuple[str | None, list[str]]:
    """The optional ``reason`` of a stop/cancel body; an empty body means no reason."""
    loaded, unknown = load_lifecycle_bytes(body, _lifecycle_request, _lifecycle_loader, data)
    return loaded.get("reason"), unknown


def _dump_lifecycle_ack(ack: Any) -> Any:
    return _lifecycle_ack_response({"ack": ack})


async def stop_worker(request: web.Request) -> web.Response:
    ref = worker_ref(request)
    runtime = request.app[RUNTIME]

    def call(reason: Any, claim: IdempotencyClaim | None) -> Awaitable[Any]:
        return runtime.stop_worker(ref, reason, claim=claim)

    return await mutate(request, LIFECYCLE_PREFIX, _load_reason, call, _dump_lifecycle_ack)


async def cancel_worker(request: web.Request) -> web.Response:
    ref = worker_ref(request)
    runtime = request.app[RUNTIME]

    def call(reason: Any, claim: IdempotencyClaim | None) -> Awaitable[Any]:
        return runtime.cancel_worker(ref, reason, claim=claim)

    return await mutate(request, LIFECYCLE_PREFIX, _load_reason, call, _dump_lifecycle_ack)


def _load_interrupt(body: bytes, data: Any) -> tuple[Any, list[str]]:
    return load_lifecycle_bytes(body, _interrupt_request, None, data)


def _dump_interrupt_ack(ack: Any) -> Any:
    return _interrupt_ack_response({"ack": ack})


async def interrupt_worker(request: web.Request) -> web.Response:
    ref = worker_ref(request)
    runtime = request.app[RUNTIME]

    def call(data: Any, claim: IdempotencyClaim | None) -> Awaitable[Any]:
        return runtime.interrupt(ref, data["drop_queued"], claim=claim)

    return await mutate(request, LIFECYCLE_PREFIX, _load_interrupt, call, _dump_interrupt_ack)


def _dump_deleted(ref: Any) -> Any:
    return _deleted_response({"deleted": ref})


async def delete_worker(request: web.Request) -> web.Response:
    """``DELETE /v1/workers/{id}`` (§11); takes no body (any body is ignored)."""
    ref = worker_ref(request)
    runtime = request.app[RUNTIME]

    def call(_: None, claim: IdempotencyClaim | None) -> Awaitable[Any]:
        return runtime.delete_worker(ref, claim=claim)

    return await mutate(request, None, _load_nothing, call, _dump_deleted)


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
