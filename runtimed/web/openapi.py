"""The OpenAPI 3 document of the HTTP API, generated from the app's routes and the same
marshmallow schemas the handlers load and dump with (apispec and its MarshmallowPlugin).

``build_openapi(app)`` walks the app's route table and describes each route from the table of
operations below; a route the table does not describe is an error, so the document cannot
silently fall behind the routes. Error responses come from the codes each route can give,
grouped by the one ``code -> status`` table of ``errors.py``. ``GET /v1/openapi.json`` serves
the document, and ``python -m runtimed.web`` prints it for ``make openapi``, which writes the
committed ``docs/openapi.json`` (a test fails when that file is stale).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from types import MappingProxyType
from typing import Any

from aiohttp import hdrs, web
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.openapi import OpenAPIConverter
from marshmallow import fields

import runtimed

from . import schemas
from .errors import STATUS_BY_CODE
from .handlers import json_response

OPENAPI_VERSION = "3.0.3"
SECURITY_SCHEME = "bearer"
COMPONENT_PREFIX = "#/components/schemas/"

DESCRIPTION = """\
runtimed hosts a runtime of workers for a trusted backend on the same machine: a REST command \
API and, per worker, an observation WebSocket.

Every error is `{"error": {"code", "message"}}`; its status follows from the code. Request \
bodies are JSON (the `Content-Type` header is not required). Unknown fields in a request body \
and unknown query parameters are ignored, but each is named in a \
`Warning: 299 runtimed "unknown field: <path>"` response header (at most 20).

Requests carrying an `Origin` header are refused (`403 origin_not_allowed`) unless the origin is \
configured; while bound to loopback, a `Host` that is not a loopback name is refused \
(`403 host_not_allowed`). When the daemon is configured with a token, every route but the probes \
needs `Authorization: Bearer <token>`; without one, no route does. An unknown route is \
`404 not_found`, a wrong method `405 method_not_allowed` (with an `Allow` header), and every GET \
also answers HEAD.
"""

#: What each error code means, for the descriptions of error responses.
CODE_MEANINGS: Mapping[str, str] = MappingProxyType(
    {
        "invalid_json": "the body is not JSON, or not of the shape, or past a bound (nesting, digits, a repeated key)",
        "invalid_query": (
            "a query parameter is not of its type (a non-negative integer of at most 18 digits, a worker status, "
            "a worker id)"
        ),
        "invalid_worker_id": "the `worker_id` path segment is empty or blank",
        "invalid_request": (
            "a value the runtime refuses (a blank objective, input to a worker that is not running, an "
            "`Idempotency-Key` that is not 1 to 255 visible ASCII characters, …)"
        ),
        "limit_too_large": "`limit` exceeds the configured maximum",
        "unauthorized": "a token is configured and the bearer token is missing or wrong",
        "origin_not_allowed": "the request carries an `Origin` that is not configured",
        "host_not_allowed": "bound to loopback, and the `Host` is not a loopback name",
        "worker_not_found": "no worker of this runtime has this id",
        "runtime_stopped": "the runtime is stopped; `POST /v1/runtime/start` reopens it",
        "payload_too_large": "the body exceeds `[server] max_request_body_bytes`",
        "request_timeout": "the body did not arrive within `[server] body_timeout_seconds`; the connection is closed",
        "too_many_connections": (
            "the connection came at the cap of open connections while every one was handling a request; "
            "answered before the request is read, and closed"
        ),
        "upgrade_required": "a plain GET on the WebSocket route",
        "too_many_sessions": "`[limits] max_observation_sessions` observation sessions are open",
        "worker_not_executing": "the worker runs no agent (a record-only worker)",
        "worker_running": "the worker is `running`: stop or cancel it before deleting it",
        "idempotency_key_reused": (
            "the `Idempotency-Key` was kept for another request (another method, path or body); use a new key"
        ),
        "input_queue_full": "`[limits] max_queued_inputs` inputs of the worker wait to be delivered; nothing accepted",
        "worker_limit_reached": "`[limits] max_running_agents` agent-backed workers are running; nothing created",
        "permission_not_found": "the worker has no pending permission request of this id (unknown, or answered)",
        "not_ready": "the store is not loaded or does not take writes",
        "store_io": "the filesystem store failed to write (the message names the operation and the path)",
        "state_poisoned": "a failed write could not be undone; the daemon must be restarted",
        "internal_error": "an unexpected error (logged with a traceback)",
    }
)

#: Codes any route can give: the loopback safety checks, an unexpected failure, and the
#: connection cap.
COMMON_CODES = ("origin_not_allowed", "host_not_allowed", "internal_error", "too_many_connections")
#: Codes of a request that writes to the store.
WRITE_CODES = ("runtime_stopped", "store_io", "state_poisoned")
#: Codes of a route with a JSON body.
BODY_CODES = ("invalid_json", "payload_too_large", "request_timeout")

#: Codes of a route that takes an ``Idempotency-Key`` (§11).
IDEMPOTENCY_CODES = ("invalid_request", "idempotency_key_reused")

IDEMPOTENT_REPLAYED_HEADER = {
    "description": (
        "`true` on an answer kept for an earlier request with the same `Idempotency-Key` and sent again; "
        "absent on the first answer."
    ),
    "schema": {"type": "string", "enum": ["true"]},
}

IDEMPOTENCY_DESCRIPTION = (
    " Takes an `Idempotency-Key` header: the first 2xx answer is kept with the change it made, and a retry with "
    "the same key, method, path and body gets it again (`Idempotent-Replayed: true`) without changing anything."
)

WARNING_HEADER = {
    "description": (
        'One `299 runtimed "unknown field: <path>"` per ignored unknown field (at most 20), the path '
        'written with dots and list indexes, `"` and `\\` escaped with a backslash.'
    ),
    "schema": {"type": "string"},
}

FRAMES_DESCRIPTION = """\
The worker's observation stream: a snapshot, then every event of the worker since `cursor`, \
then live events — none lost, none repeated. The worker must exist before the upgrade.

Every frame the server sends is one JSON text message, tagged by `kind` \
(`x-frames` below holds their schemas):

- `{"kind": "event", "envelope": {"cursor", "event_id", "worker_id", "payload": {"event", "data"?}}}` \
(`EventFrame`). The first frame is a `snapshot` event whose cursor is the start point, whose \
`event_id` is `snapshot:<cursor>`, and whose data is `SnapshotData`. Then come `user_message` and \
`system_item` (`{"sequence", "content"}`), `worker_status` (`{"status", "reason"?}`), an executing \
worker's turns (`turn_started` `{"turn", "input_sequence"}`, its streamed events, \
`assistant_message` `{"turn", "sequence", "content"}` and `turn_ended` `{"turn", "stop_reason"}`) \
and whatever else is published for the worker.
- `{"kind": "diagnostic", "diagnostic": {"code", "message", "resume_from"?}}` \
(`DiagnosticFrame`), after which the server closes the socket: `runtime.cursor_malformed`, \
`runtime.cursor_unknown_or_expired`, `runtime.cursor_expired` (the client fell behind; reconnect \
with `resume_from`), `runtime.observation_only` (the client sent a data frame), \
`runtime.worker_deleted` (the worker was deleted), `runtime.upstream_closed` (shutdown).

The socket is observation-only: anything but ping/pong/close ends the session, and a message \
larger than `[server] ws_max_message_bytes` closes it with 1009, and an unmasked or otherwise \
malformed frame with 1002 (no diagnostic for either). The server pings \
every `[server] ws_heartbeat_seconds`. Close codes: 1001 on shutdown, 1008 after \
`runtime.observation_only`, 1011 after an internal error, 1000 otherwise.
"""


# ------------------------------------------------------------- field conversions


def tagged_union2properties(self: OpenAPIConverter, field: fields.Field[Any], **kwargs: Any) -> dict[str, Any]:
    """A ``TaggedUnion`` is a ``oneOf`` of its variants with a discriminator on ``kind``.

    The variant schemas do not declare ``kind`` (the union reads and writes it), so each variant's
    component gets a required ``kind`` property with its one value here.
    """
    if not isinstance(field, schemas.TaggedUnion):
        return {}
    mapping: dict[str, str] = {}
    # The union's variant schemas, by kind; TaggedUnion keeps them to load and dump with.
    for kind, variant in field.variants.items():
        ref = self.resolve_nested_schema(variant)["$ref"]
        _require_kind(self.spec.components.schemas[ref.removeprefix(COMPONENT_PREFIX)], kind)
        mapping[kind] = ref
    return {
        "oneOf": [{"$ref": ref} for ref in mapping.values()],
        "discriminator": {"propertyName": "kind", "mapping": mapping},
    }


def _require_kind(component: dict[str, Any], kind: str) -> None:
    properties = component.setdefault("properties", {})
    if "kind" not in properties:
        properties["kind"] = {"type": "string", "enum": [kind]}
        component["required"] = ["kind", *component.get("required", ())]


def query_int2properties(
    self: OpenAPIConverter, field: fields.Field[Any], ret: dict[str, Any], **kwargs: Any
) -> dict[str, Any]:
    """A ``NonNegativeQueryInt`` is an integer from 0, of at most 18 digits. Its
    ``load_default=None`` means "the configured maximum", not a null value (a query string
    cannot hold one): drop the ``null`` default and the ``nullable`` that marshmallow's implicit
    ``allow_none`` would document."""
    if not isinstance(field, schemas.NonNegativeQueryInt):
        return {}
    if "default" in ret and ret["default"] is None:
        del ret["default"]
    ret.pop("nullable", None)
    return {"minimum": 0, "maximum": 10**schemas.MAX_QUERY_INT_DIGITS - 1}


def constant2properties(
    self: OpenAPIConverter, field: fields.Field[Any], ret: dict[str, Any], **kwargs: Any
) -> dict[str, Any]:
    """A ``Constant`` (the ``kind`` tag of a WebSocket frame) is an enum of its one value (and
    the default marshmallow gives it says nothing more)."""
    if not isinstance(field, fields.Constant) or not isinstance(field.constant, str):
        return {}
    ret.pop("default", None)
    return {"type": "string", "enum": [field.constant]}


def string_enum2properties(
    self: OpenAPIConverter, field: fields.Field[Any], ret: dict[str, Any], **kwargs: Any
) -> dict[str, Any]:
    """An ``Enum`` dumped by value gets no type from apispec; these enums are all strings."""
    if not isinstance(field, fields.Enum) or "type" in ret:
        return {}
    if all(isinstance(value, str) for value in ret.get("enum", ())):
        return {"type": "string"}
    return {}


# ------------------------------------------------------------------ operations


def _json(schema: Any, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _with_warning(response: dict[str, Any]) -> dict[str, Any]:
    return {**response, "headers": {"Warning": WARNING_HEADER}}


def _idempotent(response: dict[str, Any]) -> dict[str, Any]:
    return {**response, "headers": {**response.get("headers", {}), "Idempotent-Replayed": IDEMPOTENT_REPLAYED_HEADER}}


def _body(schema: type[schemas.BaseSchema], description: str, required: bool = True) -> dict[str, Any]:
    return {"required": required, "description": description, "content": {"application/json": {"schema": schema}}}


def _error_responses(codes: Iterable[str]) -> dict[str, dict[str, Any]]:
    """One response per status the codes map to, its description listing the codes."""
    by_status: dict[int, list[str]] = {}
    for code in dict.fromkeys(codes):
        by_status.setdefault(STATUS_BY_CODE[code], []).append(code)
    responses: dict[str, dict[str, Any]] = {}
    for status in sorted(by_status):
        lines = "\n".join(f"- `{code}`: {CODE_MEANINGS[code]}" for code in by_status[status])
        response = _json(schemas.ErrorResponseSchema, f"{HTTPStatus(status).phrase}:\n\n{lines}")
        if status == 401:
            response["headers"] = {
                "WWW-Authenticate": {
                    "description": 'Always `Bearer realm="runtimed"`.',
                    "required": True,
                    "schema": {"type": "string"},
                }
            }
        responses[str(status)] = response
    return responses


def _operation(
    operation_id: str,
    tag: str,
    summary: str,
    description: str,
    ok: dict[str, Any],
    codes: Iterable[str] = (),
    *,
    secured: bool = True,
    ok_status: str = "200",
    **extra: Any,
) -> dict[str, Any]:
    all_codes = [*COMMON_CODES, *(("unauthorized",) if secured else ()), *codes]
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "description": description,
        "responses": {ok_status: ok, **_error_responses(all_codes)},
        **extra,
    }
    if not secured:
        operation["security"] = []
    return operation


def _operations(converter: OpenAPIConverter) -> dict[tuple[str, str], dict[str, Any]]:
    """Every operation of the API, by method and canonical path (built afresh on each call:
    apispec resolves the schemas in place)."""
    worker = ["WorkerId"]
    key = ["IdempotencyKey"]
    workers_query = _query(
        converter,
        schemas.WorkersQuerySchema,
        {
            "status": "Only workers of these statuses (repeat the parameter for several).",
            "limit": (
                "The most workers wanted (0 allowed); defaults to, and may not exceed, `max_event_batch_items` "
                "(256 unless configured)."
            ),
            "after": (
                "Only workers created after this one (a worker id, which need not exist any more: ids order by "
                "creation); `next_after` of the previous page."
            ),
        },
    )
    transcript_query = _query(
        converter,
        schemas.TranscriptQuerySchema,
        {
            "start": "The sequence index of the first entry wanted (0 is the first entry).",
            "limit": (
                "The most entries wanted; defaults to, and may not exceed, `max_transcript_projection_items` "
                "(256 unless configured)."
            ),
        },
    )
    events_query = _query(
        converter,
        schemas.EventsQuerySchema,
        {
            "cursor": "The first event id wanted (0 means 1).",
            "limit": (
                "The most events wanted (0 allowed); defaults to, and may not exceed, `max_event_batch_items` "
                "(256 unless configured)."
            ),
        },
    )
    lifecycle_body = _body(
        schemas.WorkerLifecycleRequestSchema,
        "Optional: an empty (or only whitespace) body means no reason; `null` or a non-object is `invalid_json`.",
        required=False,
    )
    runtime_response = _json(schemas.RuntimeResponseSchema, "The runtime summary.")
    lifecycle_codes = ("invalid_worker_id", *IDEMPOTENCY_CODES, *BODY_CODES, *WRITE_CODES, "worker_not_found")
    interrupt_body = _body(
        schemas.WorkerInterruptRequestSchema,
        "Optional: an empty (or only whitespace) body drops nothing; `null` or a non-object is `invalid_json`.",
        required=False,
    )
    frames = {"event": COMPONENT_PREFIX + "EventFrame", "diagnostic": COMPONENT_PREFIX + "DiagnosticFrame"}
    # The table keeps each operation's id, tag and summary on one line; the formatter would
    # give every argument a line of its own.
    # fmt: off
    return {
        ("GET", "/healthz"): _operation(
            "getHealth", "operations", "Liveness", "Answers while the process runs; never needs the token.",
            _json(schemas.HealthResponseSchema, '`{"status": "ok"}`.'), secured=False,
        ),
        ("GET", "/readyz"): _operation(
            "getReadiness", "operations", "Readiness",
            "Answers once the store is loaded and takes writes; never needs the token.",
            _json(schemas.HealthResponseSchema, '`{"status": "ready"}`.'), ("not_ready",), secured=False,
        ),
        ("GET", "/metrics"): _operation(
            "getMetrics", "operations", "Prometheus metrics",
            "HTTP requests by route and status, request latency, workers by status, WebSocket sessions, observation "
            "events, subscriber overruns and store flushes, in the Prometheus text format. Needs the token "
            "(when one is configured) unless `[server] metrics_public` is set.",
            {"description": "The metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}},
        ),
        ("GET", "/v1/openapi.json"): _operation(
            "getOpenApi", "operations", "This document", "The OpenAPI document of this daemon's API.",
            _json({"type": "object"}, "The OpenAPI 3 document."),
        ),
        ("GET", "/v1/runtime"): _operation(
            "getRuntime", "runtime", "The runtime summary",
            "The runtime's id, status, worker counts by status, diagnostic count and limits.", runtime_response,
        ),
        ("POST", "/v1/runtime/stop"): _operation(
            "stopRuntime", "runtime", "Stop the runtime",
            "Marks running workers `stopped` (their agents get the stop sequence) and appends `runtime_stopped`; from "
            "then on create, input, stop, cancel, interrupt and permission answers get `409 runtime_stopped`, while "
            "reads keep working. On a stopped runtime it changes nothing. "
            "Takes no body (any body is ignored).",
            runtime_response, ("store_io", "state_poisoned"),
        ),
        ("POST", "/v1/runtime/start"): _operation(
            "startRuntime", "runtime", "Reopen a stopped runtime",
            "Appends `runtime_started`; workers stay as they are. On a running runtime it changes nothing. "
            "Takes no body (any body is ignored).",
            runtime_response, ("store_io", "state_poisoned"),
        ),
        ("GET", "/v1/events"): _operation(
            "getEvents", "runtime", "Poll the runtime event log",
            "Events from `cursor` on. `next_cursor` is one past the last returned id (or the given cursor when none); "
            "`has_more` says whether events at or after `next_cursor` exist.",
            _with_warning(_json(schemas.EventBatchSchema, "A batch of runtime events.")),
            ("invalid_query", "limit_too_large"), parameters=events_query,
        ),
        ("GET", "/v1/diagnostics"): _operation(
            "getDiagnostics", "runtime", "Diagnostics", "What the runtime noticed, oldest first.",
            _json(schemas.DiagnosticsResponseSchema, "The runtime's diagnostics."),
        ),
        ("GET", "/v1/workers"): _operation(
            "listWorkers", "workers", "List workers",
            "Workers' summaries, in creation order. Without a parameter, every worker (`next_after` is `null`); with "
            "any, a page of at most `limit` of those of the given statuses created after `after`: `next_after` is "
            "the id of the last worker returned when more match, else `null` (with `limit` 0, the given `after`). "
            "A page costs O(limit), however many workers there are.",
            _with_warning(_json(schemas.WorkersResponseSchema, "The workers.")),
            ("invalid_query", "limit_too_large"), parameters=workers_query,
        ),
        ("POST", "/v1/workers"): _operation(
            "createWorker", "workers", "Create a worker",
            "Creates a `running` worker. Without `config_bundle` it gets diagnostic `runtime.local_default_resources`; "
            "without requested capabilities, `worker.tools_less`. When its profile names an agent, the agent starts "
            "once the worker is created (its `execution` shows it); otherwise it records input only "
            "(`worker.record_only`)." + IDEMPOTENCY_DESCRIPTION,
            _idempotent(_with_warning(_json(schemas.WorkerResponseSchema, "The new worker's detail."))),
            (*IDEMPOTENCY_CODES, *BODY_CODES, *WRITE_CODES, "invalid_request", "worker_limit_reached"),
            parameters=key, requestBody=_body(schemas.CreateWorkerRequestSchema, "The worker to create."),
        ),
        ("GET", "/v1/workers/{worker_id}"): _operation(
            "getWorker", "workers", "A worker's detail", "One worker's detail.",
            _json(schemas.WorkerResponseSchema, "The worker's detail."),
            ("invalid_worker_id", "worker_not_found"), parameters=worker,
        ),
        ("DELETE", "/v1/workers/{worker_id}"): _operation(
            "deleteWorker", "workers", "Delete a worker",
            "Deletes a worker that is not `running`: its transcript, observations and the directory runtimed made "
            "for it go, with a `worker_deleted` event; its observation sessions get diagnostic "
            "`runtime.worker_deleted` and close. Its id is never given again; afterwards it is `404 "
            "worker_not_found`. The event log and the diagnostics keep what names it. Takes no body (any body is "
            "ignored)." + IDEMPOTENCY_DESCRIPTION,
            _idempotent(_json(schemas.WorkerDeletedResponseSchema, "The deleted worker's ref.")),
            ("invalid_worker_id", *IDEMPOTENCY_CODES, *WRITE_CODES, "worker_not_found", "worker_running"),
            parameters=[*worker, *key],
        ),
        ("POST", "/v1/workers/{worker_id}/input"): _operation(
            "sendInput", "workers", "Send input to a worker",
            "Appends a transcript entry (its role is the input's kind) to a `running` worker; an agent-backed "
            "worker's agent gets it as a prompt turn, in order, once it is idle." + IDEMPOTENCY_DESCRIPTION,
            _idempotent(_with_warning(
                _json(schemas.WorkerInteractionAckResponseSchema, "The transcript sequence and event id of the input.")
            )),
            (
                "invalid_worker_id", *IDEMPOTENCY_CODES, *BODY_CODES, *WRITE_CODES, "worker_not_found",
                "invalid_request", "input_queue_full",
            ),
            parameters=[*worker, *key], requestBody=_body(schemas.WorkerInputSchema, "The input."),
        ),
        ("POST", "/v1/workers/{worker_id}/stop"): _operation(
            "stopWorker", "workers", "Stop a worker",
            "Moves a `running` worker to `stopped`, with one event whose message is the reason "
            "(or \"worker stopped\"); its agent, if any, gets the stop sequence in the background. "
            "On a worker that is no longer running it changes nothing and answers its current status."
            + IDEMPOTENCY_DESCRIPTION,
            _idempotent(
                _with_warning(_json(schemas.WorkerLifecycleAckResponseSchema, "The worker's status and last event id."))
            ),
            lifecycle_codes, parameters=[*worker, *key], requestBody=lifecycle_body,
        ),
        ("POST", "/v1/workers/{worker_id}/cancel"): _operation(
            "cancelWorker", "workers", "Cancel a worker",
            "Moves a `running` worker to `cancelled`, with one event whose message is the reason "
            "(or \"worker cancelled\"); its agent, if any, is killed in the background. "
            "On a worker that is no longer running it changes nothing and answers its current status."
            + IDEMPOTENCY_DESCRIPTION,
            _idempotent(
                _with_warning(_json(schemas.WorkerLifecycleAckResponseSchema, "The worker's status and last event id."))
            ),
            lifecycle_codes, parameters=[*worker, *key], requestBody=lifecycle_body,
        ),
        ("POST", "/v1/workers/{worker_id}/interrupt"): _operation(
            "interruptWorker", "workers", "Interrupt a worker's turn",
            "Ends the agent's running turn, if any (it ends `cancelled`, or `interrupted` if the agent does not end it "
            "within its `stop_grace_seconds`), and with `drop_queued` first drops the inputs waiting to be delivered "
            "(they stay in the transcript). Appends `worker_interrupted` when it ended a turn or dropped an input, "
            "else changes nothing; on a worker that is no longer running it changes nothing."
            + IDEMPOTENCY_DESCRIPTION,
            _idempotent(
                _with_warning(
                    _json(schemas.InterruptAckResponseSchema, "The turn ended, if any, and the inputs dropped.")
                )
            ),
            (*lifecycle_codes, "worker_not_executing"), parameters=[*worker, *key], requestBody=interrupt_body,
        ),
        ("GET", "/v1/workers/{worker_id}/permissions"): _operation(
            "getPermissions", "workers", "A worker's pending permission requests",
            "The permission requests of the worker's agent waiting for an answer, oldest first.",
            _json(schemas.PermissionsResponseSchema, "The pending requests."),
            ("invalid_worker_id", "worker_not_found", "worker_not_executing"), parameters=worker,
        ),
        ("POST", "/v1/workers/{worker_id}/permissions/{request_id}"): _operation(
            "answerPermission", "workers", "Answer a permission request",
            "Answers a pending permission request with one of the options it offered (`invalid_request` for another).",
            _with_warning(_json(schemas.PermissionAnswerResponseSchema, "The answer given.")),
            (
                "invalid_worker_id", *BODY_CODES, *WRITE_CODES, "worker_not_found", "worker_not_executing",
                "permission_not_found", "invalid_request",
            ),
            parameters=[
                *worker,
                {
                    "name": "request_id", "in": "path", "required": True, "schema": {"type": "string"},
                    "description": "The `request_id` of a pending permission request.",
                },
            ],
            requestBody=_body(schemas.PermissionAnswerRequestSchema, "The option chosen."),
        ),
        ("GET", "/v1/profiles"): _operation(
            "getProfiles", "workers", "Profiles",
            "The profiles workers can be created with: the built-in agents (`builtin:<name>`) and the configured "
            "`[profiles.<name>]`, with which one `runtime_default` selects. A selector that names none of them makes "
            "a record-only worker.",
            _json(schemas.ProfilesResponseSchema, "The profiles."),
        ),
        ("GET", "/v1/workers/{worker_id}/transcript"): _operation(
            "getTranscript", "workers", "A page of a worker's transcript",
            "Entries `[start, start+limit)`; `next_start` is where the next page starts, or `null` when none remain. "
            "`start` past the end gives no items.",
            _with_warning(_json(schemas.TranscriptResponseSchema, "The page.")),
            ("invalid_worker_id", "invalid_query", "worker_not_found", "limit_too_large"),
            parameters=[*worker, *transcript_query],
        ),
        ("GET", "/v1/workers/{worker_id}/events/ws"): _operation(
            "watchWorker", "observation", "Watch a worker (WebSocket)", FRAMES_DESCRIPTION,
            {
                "description": "Switching Protocols: the WebSocket session.",
                "x-frames": {
                    "oneOf": [{"$ref": frame} for frame in frames.values()],
                    "discriminator": {"propertyName": "kind", "mapping": frames},
                },
            },
            ("invalid_worker_id", "worker_not_found", "upgrade_required", "too_many_sessions"),
            ok_status="101",
            parameters=[
                *worker,
                {
                    "name": "cursor",
                    "in": "query",
                    "required": False,
                    "description": (
                        "The last cursor seen: `wo_` + 16 lowercase hex digits. Without it, the stream starts at the "
                        "worker's latest event. A malformed cursor is answered, after the upgrade, with diagnostic "
                        "`runtime.cursor_malformed`."
                    ),
                    "schema": {"type": "string", "pattern": "^wo_[0-9a-f]{16}$"},
                },
            ],
        ),
    }
    # fmt: on


def _query(
    converter: OpenAPIConverter, schema: type[schemas.BaseSchema], descriptions: Mapping[str, str]
) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = converter.schema2parameters(schema, location="query")
    for parameter in parameters:
        parameter["description"] = descriptions[parameter["name"]]
        # A parameter left out is absent, never null (a query string cannot hold one).
        value: dict[str, Any] = parameter["schema"]
        if "default" in value and value["default"] is None:
            del value["default"]
        value.pop("nullable", None)
    return parameters


# ---------------------------------------------------------------------- document


def build_openapi(app: web.Application) -> dict[str, Any]:
    """The OpenAPI document of ``app``: one operation per route (HEAD aside).

    Raises ``LookupError`` for a route that the table of operations does not describe.
    """
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="runtimed",
        version=runtimed.__version__,
        openapi_version=OPENAPI_VERSION,
        plugins=[plugin],
        info={"description": DESCRIPTION, "license": {"name": "Apache-2.0"}},
        security=[{SECURITY_SCHEME: []}],
        tags=[
            {"name": "runtime", "description": "The runtime: its summary, lifecycle, event log and diagnostics."},
            {"name": "workers", "description": "Create, inspect, talk to, stop and cancel workers."},
            {"name": "observation", "description": "The observation WebSocket of a worker."},
            {"name": "operations", "description": "Probes, metrics and this document."},
        ],
    )
    converter = plugin.converter
    assert converter is not None  # set by APISpec's init_spec
    for function in (tagged_union2properties, query_int2properties, constant2properties, string_enum2properties):
        converter.add_attribute_function(function)

    spec.components.security_scheme(
        SECURITY_SCHEME,
        {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "The token of `[server] local_token_env`; needed only when the daemon is configured with one."
            ),
        },
    )
    spec.components.parameter(
        "WorkerId",
        "path",
        {
            "name": "worker_id",
            "description": "The worker's id, e.g. `worker-00000001` (the server supplies its own runtime id).",
            "schema": {"type": "string"},
        },
    )
    spec.components.parameter(
        "IdempotencyKey",
        "header",
        {
            "name": "Idempotency-Key",
            "required": False,
            "description": (
                "1 to 255 visible ASCII characters naming this request for retries (§11 of the contract): the first "
                "2xx answer is kept, atomically with the change it made, for `[limits] idempotency_key_ttl_seconds` "
                "(a day unless configured), and a request with the same key, method, path and body (the same JSON "
                "value) gets it again with `Idempotent-Replayed: true` instead of being carried out, even after the "
                "runtime stopped or the worker was deleted. The same key with another request is `409 "
                "idempotency_key_reused`; one that arrives while the first is carried out waits for it. Keys belong "
                "to the runtime; 4xx and 5xx answers are not kept."
            ),
            "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
        },
    )
    # The WebSocket frames are no HTTP body; register their shapes for the route's description.
    for frame in (schemas.EventFrameSchema, schemas.DiagnosticFrameSchema, schemas.SnapshotDataSchema):
        converter.resolve_nested_schema(frame)

    described = _operations(converter)
    paths: dict[str, dict[str, dict[str, Any]]] = {}
    for route in app.router.routes():
        if route.method == hdrs.METH_HEAD or route.resource is None:
            continue
        key = (route.method, route.resource.canonical)
        if key not in described:
            raise LookupError(f"route {key[0]} {key[1]} is not described in runtimed/web/openapi.py")
        paths.setdefault(key[1], {})[route.method.lower()] = described[key]
    for path in sorted(paths):
        spec.path(path=path, operations=paths[path])
    return spec.to_dict()


def render_openapi(document: Mapping[str, Any]) -> str:
    """The committed form of the document: sorted keys, indented, with a final newline."""
    return json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


async def get_openapi(request: web.Request) -> web.Response:
    """``GET /v1/openapi.json``.

    Built per request: the app is frozen once it serves, and aiohttp warns on state stored in
    it then. Building takes a few milliseconds, and the document is rarely fetched.
    """
    return json_response(build_openapi(request.app))
