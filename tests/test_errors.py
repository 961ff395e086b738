"""Every error path of the REST API answers with one shape, its exact status and code, and
changes nothing (contract §4 order of checks, §5 errors)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from runtimed.domain import errors as domain_errors
from runtimed.domain.errors import RuntimedError
from runtimed.domain.management import RuntimeLimits, RuntimeOptions
from runtimed.runtime import Runtime
from runtimed.store import MemoryStore
from runtimed.web import errors as web_errors
from runtimed.web import keys as web_keys
from runtimed.web import schemas
from runtimed.web.app import create_app
from runtimed.web.settings import ServerConfig

from .helpers import ECHO_REQUEST, TASK_REQUEST, BrokenStore, FailingStore, FakeBackend, create_worker

W = "worker-00000001"  # created by the fixture below
MISSING = "worker-0000ffff"
BIG = 1024 * 1024 + 1
UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}

# (method, path, body bytes or None, status, code, message or None when it varies)
# One case per line, whatever its length: the formatter leaves this table alone.
# fmt: off
CASES = [
    # invalid_json: not JSON, not an object, not of the shape
    ("POST", "/v1/workers", b"not json", 400, "invalid_json", "invalid JSON request body: Expecting value: line 1 column 1 (char 0)"),
    ("POST", "/v1/workers", b"", 400, "invalid_json", "invalid JSON request body: the body is empty; expected a JSON object"),
    ("POST", "/v1/workers", b"[1, 2]", 400, "invalid_json", "invalid JSON request body: expected a JSON object, got an array"),
    ("POST", "/v1/workers", b'"text"', 400, "invalid_json", "invalid JSON request body: expected a JSON object, got a string"),
    ("POST", "/v1/workers", b"\xff\xfe{}", 400, "invalid_json", None),
    ("POST", "/v1/workers", b'{"intent": NaN}', 400, "invalid_json", "invalid JSON request body: NaN is not valid JSON"),
    ("POST", "/v1/workers", b'{"profile": {"kind": "runtime_default"}}', 400, "invalid_json", "invalid JSON request body: intent: Missing data for required field."),
    ("POST", "/v1/workers", b'{"intent": {"kind": "assistant"}}', 400, "invalid_json", "invalid JSON request body: profile: Missing data for required field."),
    ("POST", "/v1/workers", b'{"intent": 3, "profile": {"kind": "runtime_default"}}', 400, "invalid_json", "invalid JSON request body: intent: Not a valid object."),
    ("POST", "/v1/workers", b'{"intent": {"kind": "robot"}, "profile": {"kind": "runtime_default"}}', 400, "invalid_json", "invalid JSON request body: intent.kind: Must be one of: assistant, task, role."),
    ("POST", "/v1/workers", b'{"intent": {"kind": "task"}, "profile": {"kind": "runtime_default"}}', 400, "invalid_json", "invalid JSON request body: intent.objective: Missing data for required field."),
    ("POST", "/v1/workers", b'{"intent": {"kind": "task", "objective": 7}, "profile": {"kind": "runtime_default"}}', 400, "invalid_json", "invalid JSON request body: intent.objective: Not a valid string."),
    ("POST", "/v1/workers", b'{"intent": {"kind": "assistant"}, "profile": {"kind": "builtin"}}', 400, "invalid_json", "invalid JSON request body: profile.value: Missing data for required field."),
    ("POST", "/v1/workers", b'{"intent": {"kind": "assistant"}, "profile": {"kind": "runtime_default"}, "requested_capabilities": [{"reason": "x"}]}', 400, "invalid_json", "invalid JSON request body: requested_capabilities[0].name: Missing data for required field."),
    ("POST", "/v1/workers", b'{"intent": {"kind": "assistant"}, "profile": {"kind": "runtime_default"}, "requested_capabilities": {"name": "x"}}', 400, "invalid_json", "invalid JSON request body: requested_capabilities: Not a valid list."),
    ("POST", "/v1/workers", b'{"intent": {"kind": "assistant"}, "profile": {"kind": "runtime_default"}, "config_bundle": null}', 400, "invalid_json", "invalid JSON request body: config_bundle: Field may not be null."),
    ("POST", f"/v1/workers/{W}/input", b'{"kind": "user"}', 400, "invalid_json", "invalid JSON request body: content: Missing data for required field."),
    ("POST", f"/v1/workers/{W}/input", b'{"kind": "assistant", "content": "x"}', 400, "invalid_json", "invalid JSON request body: kind: Must be one of: user, system."),
    ("POST", f"/v1/workers/{W}/input", b'{"kind": "user", "content": ["x"]}', 400, "invalid_json", "invalid JSON request body: content: Not a valid string."),
    ("POST", f"/v1/workers/{W}/stop", b"null", 400, "invalid_json", "invalid lifecycle request JSON: expected a JSON object, got null"),
    ("POST", f"/v1/workers/{W}/stop", b"[]", 400, "invalid_json", "invalid lifecycle request JSON: expected a JSON object, got an array"),
    ("POST", f"/v1/workers/{W}/cancel", b"{oops", 400, "invalid_json", None),
    ("POST", f"/v1/workers/{W}/cancel", b'{"reason": 5}', 400, "invalid_json", "invalid lifecycle request JSON: reason: Not a valid string."),
    # invalid_json: bounded parsing (nesting, integer literals) and duplicate keys
    ("POST", "/v1/workers", b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json", "invalid JSON request body: too deeply nested (more than 64 levels of arrays and objects)"),
    ("POST", "/v1/workers", b"[" * 100_000, 400, "invalid_json", "invalid JSON request body: too deeply nested (more than 64 levels of arrays and objects)"),
    ("POST", "/v1/workers", b'{"a": ' * 65 + b"1" + b"}" * 65, 400, "invalid_json", "invalid JSON request body: too deeply nested (more than 64 levels of arrays and objects)"),
    ("POST", "/v1/workers", b'[{"a": ' * 33 + b"1" + b"}]" * 33, 400, "invalid_json", "invalid JSON request body: too deeply nested (more than 64 levels of arrays and objects)"),
    ("POST", f"/v1/workers/{W}/stop", b"[" * 65 + b"]" * 65, 400, "invalid_json", "invalid lifecycle request JSON: too deeply nested (more than 64 levels of arrays and objects)"),
    ("POST", "/v1/workers", b"[" * 64 + b"]" * 64, 400, "invalid_json", "invalid JSON request body: expected a JSON object, got an array"),
    ("POST", f"/v1/workers/{W}/input", b'{"kind": "user", "content": "x", "n": ' + b"1" * 65 + b"}", 400, "invalid_json", "invalid JSON request body: integer literal longer than 64 digits"),
    ("POST", f"/v1/workers/{W}/input", b'{"kind": "user", "content": "x", "n": [-' + b"9" * 65 + b"]}", 400, "invalid_json", "invalid JSON request body: integer literal longer than 64 digits"),
    ("POST", f"/v1/workers/{W}/input", b'{"kind": "user", "content": "x", "n": ' + b"1" * 5000 + b"}", 400, "invalid_json", "invalid JSON request body: integer literal longer than 64 digits"),
    ("POST", f"/v1/workers/{W}/stop", b'{"reason": ' + b"7" * 5000 + b"}", 400, "invalid_json", "invalid lifecycle request JSON: integer literal longer than 64 digits"),
    ("POST", f"/v1/workers/{W}/input", b'{"kind": "user", "kind": "system", "content": "x"}', 400, "invalid_json", 'invalid JSON request body: duplicate key "kind"'),
    ("POST", "/v1/workers", b'{"intent": {"kind": "task", "objective": "a", "objective": "b"}, "profile": {"kind": "runtime_default"}}', 400, "invalid_json", 'invalid JSON request body: duplicate key "objective"'),
    ("POST", "/v1/workers", b'{"intent": {"kind": "assistant"}, "profile": {"kind": "runtime_default"}, "requested_capabilities": [{"name": "a", "typo": 1, "typo": 2}]}', 400, "invalid_json", 'invalid JSON request body: duplicate key "typo"'),
    ("POST", f"/v1/workers/{W}/cancel", b'{"reason": "a", "reason": "b"}', 400, "invalid_json", 'invalid lifecycle request JSON: duplicate key "reason"'),
    # invalid_query
    ("GET", f"/v1/workers/{W}/transcript?start=-1", None, 400, "invalid_query", "invalid query parameters: start: must be a non-negative integer."),
    ("GET", f"/v1/workers/{W}/transcript?limit=abc", None, 400, "invalid_query", "invalid query parameters: limit: must be a non-negative integer."),
    ("GET", f"/v1/workers/{W}/transcript?start=1.5", None, 400, "invalid_query", None),
    ("GET", f"/v1/workers/{W}/transcript?limit=", None, 400, "invalid_query", None),
    ("GET", "/v1/events?cursor=-1", None, 400, "invalid_query", "invalid query parameters: cursor: must be a non-negative integer."),
    ("GET", "/v1/events?limit=%2B5", None, 400, "invalid_query", None),
    # invalid_query: query integers are bounded to 18 digits, whatever Python's own limit
    ("GET", f"/v1/workers/{W}/transcript?start=" + "1" * 19, None, 400, "invalid_query", "invalid query parameters: start: must have at most 18 digits."),
    ("GET", f"/v1/workers/{W}/transcript?start=" + "1" * 5000, None, 400, "invalid_query", "invalid query parameters: start: must have at most 18 digits."),
    ("GET", f"/v1/workers/{W}/transcript?limit=" + "0" * 19, None, 400, "invalid_query", "invalid query parameters: limit: must have at most 18 digits."),
    ("GET", "/v1/events?cursor=" + "9" * 5000, None, 400, "invalid_query", "invalid query parameters: cursor: must have at most 18 digits."),
    ("GET", "/v1/events?limit=" + "9" * 19, None, 400, "invalid_query", "invalid query parameters: limit: must have at most 18 digits."),
    # invalid_worker_id
    ("GET", "/v1/workers/%20", None, 400, "invalid_worker_id", "worker_id must not be empty"),
    ("POST", "/v1/workers//input", b'{"kind": "user", "content": "x"}', 400, "invalid_worker_id", "worker_id must not be empty"),
    ("POST", "/v1/workers/%09/stop", None, 400, "invalid_worker_id", "worker_id must not be empty"),
    ("GET", "/v1/workers/%20%20/transcript", None, 400, "invalid_worker_id", "worker_id must not be empty"),
    # invalid_request
    ("POST", "/v1/workers", b'{"intent": {"kind": "task", "objective": "  "}, "profile": {"kind": "runtime_default"}}', 400, "invalid_request", "invalid request: task objective must not be empty"),
    ("POST", "/v1/workers", b'{"intent": {"kind": "assistant"}, "profile": {"kind": "runtime_default"}, "requested_capabilities": [{"name": ""}]}', 400, "invalid_request", "invalid request: capability name must not be empty"),
    ("POST", f"/v1/workers/{W}/input", b'{"kind": "user", "content": " \\n"}', 400, "invalid_request", "invalid request: worker input content must not be empty"),
    # limit_too_large
    ("GET", f"/v1/workers/{W}/transcript?limit=1000", None, 400, "limit_too_large", "limit 1000 exceeds maximum 256"),
    ("GET", "/v1/events?limit=300", None, 400, "limit_too_large", "limit 300 exceeds maximum 256"),
    # worker_not_found
    ("GET", f"/v1/workers/{MISSING}", None, 404, "worker_not_found", None),
    ("POST", f"/v1/workers/{MISSING}/input", b'{"kind": "user", "content": "x"}', 404, "worker_not_found", None),
    ("POST", f"/v1/workers/{MISSING}/stop", None, 404, "worker_not_found", None),
    ("POST", f"/v1/workers/{MISSING}/cancel", None, 404, "worker_not_found", None),
    ("GET", f"/v1/workers/{MISSING}/transcript", None, 404, "worker_not_found", None),
    # not_found, method_not_allowed
    ("GET", "/nope", None, 404, "not_found", "no route for GET /nope"),
    ("GET", f"/v1/workers/{W}/unknown", None, 404, "not_found", None),
    ("GET", "/v1/workers/", None, 400, "invalid_worker_id", "worker_id must not be empty"),
    ("DELETE", "/v1/runtime", None, 405, "method_not_allowed", "method DELETE is not allowed on /v1/runtime"),
    ("GET", f"/v1/workers/{W}/input", None, 405, "method_not_allowed", None),
    ("PUT", "/v1/workers", b"{}", 405, "method_not_allowed", None),
    # retries, deletion and large catalogs (§11)
    ("DELETE", f"/v1/workers/{W}", None, 409, "worker_running", f"worker {W} is running; stop or cancel it before deleting it"),
    ("DELETE", f"/v1/workers/{MISSING}", None, 404, "worker_not_found", None),
    ("DELETE", "/v1/workers/%20", None, 400, "invalid_worker_id", "worker_id must not be empty"),
    ("GET", "/v1/workers?status=paused", None, 400, "invalid_query", "invalid query parameters: status[0]: Must be one of: running, stopped, cancelled."),
    ("GET", "/v1/workers?status=running&status=", None, 400, "invalid_query", "invalid query parameters: status[1]: Must be one of: running, stopped, cancelled."),
    ("GET", "/v1/workers?limit=-1", None, 400, "invalid_query", "invalid query parameters: limit: must be a non-negative integer."),
    ("GET", "/v1/workers?after=w1", None, 400, "invalid_query", "invalid query parameters: after: must be a worker id: worker-<8 or more lowercase hex digits>."),
    ("GET", "/v1/workers?limit=257", None, 400, "limit_too_large", "limit 257 exceeds maximum 256"),
    # payload_too_large
    ("POST", "/v1/workers", b"x" * BIG, 413, "payload_too_large", "request body exceeds the limit of 1048576 bytes"),
    ("POST", f"/v1/workers/{W}/stop", b" " * BIG, 413, "payload_too_large", None),
]
# fmt: on


def _data(body: bytes | None):
    """Large bodies go as a stream: aiohttp warns about big raw byte strings."""
    return io.BytesIO(body) if body is not None and len(body) > 65536 else body


@pytest.fixture
async def seeded_client(client):
    await create_worker(client)
    return client


def _state(runtime: Runtime):
    return (
        runtime.summary(),
        runtime.list_workers(),
        runtime.events(limit=256),
        runtime.diagnostics(),
        [runtime.transcript(w.worker_ref).items for w in runtime.list_workers()],
    )


@pytest.mark.parametrize(("method", "path", "body", "status", "code", "message"), CASES, ids=lambda v: str(v)[:60])
async def test_error_shape(seeded_client, runtime, caplog, method, path, body, status, code, message):
    before = _state(runtime)
    with caplog.at_level(logging.WARNING):
        response = await seeded_client.request(method, path, data=_data(body))
    assert response.status == status
    assert response.content_type == "application/json"
    payload = await response.json()
    schemas.ErrorResponseSchema().load(payload)
    assert set(payload) == {"error"} and set(payload["error"]) == {"code", "message"}
    assert payload["error"]["code"] == code
    if message is not None:
        assert payload["error"]["message"] == message
    assert payload["error"]["message"]
    assert "set_int_max_str_digits" not in payload["error"]["message"]
    assert _state(runtime) == before
    # A client's mistake is answered, not logged as a failure of the daemon.
    assert [record.getMessage() for record in caplog.records] == []


KEY_MESSAGE = "invalid request: Idempotency-Key must be one header of 1 to 255 visible ASCII characters"
REUSED_MESSAGE = (
    "this Idempotency-Key was used for another request (another method, path or body); use a new key for a new request"
)
# Every route that takes an Idempotency-Key (§11): (method, path, body)
# fmt: off
KEYED_ROUTES = [
    ("POST", "/v1/workers", json.dumps(TASK_REQUEST).encode()),
    ("POST", f"/v1/workers/{W}/input", b'{"kind": "user", "content": "x"}'),
    ("POST", f"/v1/workers/{W}/stop", None),
    ("POST", f"/v1/workers/{W}/cancel", b'{"reason": "r"}'),
    ("POST", f"/v1/workers/{W}/interrupt", None),
    ("DELETE", f"/v1/workers/{W}", None),
]
# (route index, Idempotency-Key header value as bytes, status, code, message)
KEY_CASES = [
    *((route, b"", 400, "invalid_request", KEY_MESSAGE) for route in range(len(KEYED_ROUTES))),
    *((route, b"x" * 256, 400, "invalid_request", KEY_MESSAGE) for route in range(len(KEYED_ROUTES))),
    (1, b"with space", 400, "invalid_request", KEY_MESSAGE),
    (1, b"caf\xc3\xa9", 400, "invalid_request", KEY_MESSAGE),
    (2, b"tab\there", 400, "invalid_request", KEY_MESSAGE),
    *((route, b"used", 409, "idempotency_key_reused", REUSED_MESSAGE) for route in range(len(KEYED_ROUTES))),
]
# fmt: on


@pytest.mark.parametrize(("route", "value", "status", "code", "message"), KEY_CASES, ids=str)
async def test_idempotency_key_errors(seeded_client, runtime, caplog, route, value, status, code, message):
    used = await seeded_client.post("/v1/workers", json={**TASK_REQUEST, "n": 1}, headers={"Idempotency-Key": "used"})
    assert used.status == 200
    before = _state(runtime)
    method, path, body = KEYED_ROUTES[route]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        response = await seeded_client.request(
            method, path, data=body, headers={"Idempotency-Key": value.decode("latin-1")}
        )
    assert response.status == status
    payload = await response.json()
    schemas.ErrorResponseSchema().load(payload)
    assert payload == {"error": {"code": code, "message": message}}
    assert "Idempotent-Replayed" not in response.headers
    assert _state(runtime) == before
    assert [record.getMessage() for record in caplog.records] == []


async def test_too_many_sessions_is_429_before_the_upgrade_and_changes_nothing(aiohttp_client, runtime):
    client = await aiohttp_client(create_app(runtime, ServerConfig(max_observation_sessions=1)))
    await create_worker(client)
    async with client.ws_connect(f"/v1/workers/{W}/events/ws") as ws:
        await ws.receive(timeout=5)  # the snapshot: the one session is open
        before = _state(runtime)
        response = await client.get(f"/v1/workers/{W}/events/ws", headers=UPGRADE)
        assert response.status == 429
        assert response.content_type == "application/json"
        payload = await response.json()
        schemas.ErrorResponseSchema().load(payload)
        assert payload == {
            "error": {
                "code": "too_many_sessions",
                "message": "too many observation sessions: at most 1 may be open at once",
            }
        }
        assert _state(runtime) == before


async def test_worker_not_found_message_names_worker_and_runtime(seeded_client, runtime):
    response = await seeded_client.get(f"/v1/workers/{MISSING}")
    assert (await response.json())["error"]["message"] == (
        f"worker {MISSING} was not found in runtime {runtime.runtime_id}"
    )


async def test_chunked_body_over_the_limit_is_payload_too_large(seeded_client):
    async def chunks():
        for _ in range(20):
            yield b"x" * 65536

    response = await seeded_client.post("/v1/workers", data=chunks())
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("path", "prefix"),
    [
        (f"/v1/workers/{W}/input", "invalid JSON request body"),
        (f"/v1/workers/{W}/stop", "invalid lifecycle request JSON"),
    ],
)
async def test_a_body_that_cannot_be_decoded_is_invalid_json(seeded_client, runtime, caplog, path, prefix):
    before = _state(runtime)
    with caplog.at_level(logging.WARNING):
        response = await seeded_client.post(path, data=b"not gzip at all", headers={"Content-Encoding": "gzip"})
    assert response.status == 400
    assert await response.json() == {
        "error": {
            "code": "invalid_json",
            "message": f"{prefix}: the body cannot be decoded: Can not decode content-encoding: gzip",
        }
    }
    assert _state(runtime) == before
    # aiohttp reports the body once more, as it drains it; the daemon's log makes that one
    # warning line (test_operations), and runtimed itself logs nothing.
    assert [record.getMessage() for record in caplog.records if record.name.startswith("runtimed")] == []


async def test_input_to_a_stopped_worker_is_invalid_request(seeded_client):
    await seeded_client.post(f"/v1/workers/{W}/stop")
    response = await seeded_client.post(f"/v1/workers/{W}/input", json={"kind": "user", "content": "x"})
    assert response.status == 400
    assert await response.json() == {
        "error": {"code": "invalid_request", "message": f"invalid request: worker {W} is not running"}
    }


async def test_method_not_allowed_names_the_allowed_methods(seeded_client):
    response = await seeded_client.delete("/v1/workers")
    assert response.status == 405
    assert response.headers["Allow"] == "GET, HEAD, POST"


# ----------------------------------------------------------- order of checks


# (description, method, path, body bytes or None, status, code)
# fmt: off
ORDER_CASES = [
    ("bad id beats oversized body", "POST", "/v1/workers/%20/input", b"x" * BIG, 400, "invalid_worker_id"),
    ("wrong method beats bad id", "PUT", "/v1/workers/%20", None, 405, "method_not_allowed"),
    ("oversized body beats bad JSON", "POST", f"/v1/workers/{MISSING}/input", b"{" * BIG, 413, "payload_too_large"),
    ("bad JSON beats missing worker", "POST", f"/v1/workers/{MISSING}/input", b"{", 400, "invalid_json"),
    ("bad query beats missing worker", "GET", f"/v1/workers/{MISSING}/transcript?start=x", None, 400, "invalid_query"),
    ("missing worker beats blank content", "POST", f"/v1/workers/{MISSING}/input", b'{"kind":"user","content":""}', 404, "worker_not_found"),
    ("missing worker beats limit too large", "GET", f"/v1/workers/{MISSING}/transcript?limit=9999", None, 404, "worker_not_found"),
]
# fmt: on


@pytest.mark.parametrize(("description", "method", "path", "body", "status", "code"), ORDER_CASES)
async def test_order_of_checks(seeded_client, description, method, path, body, status, code):
    response = await seeded_client.request(method, path, data=_data(body))
    assert (response.status, (await response.json())["error"]["code"]) == (status, code), description


async def test_runtime_stopped_beats_missing_worker_but_not_bad_json(seeded_client):
    await seeded_client.post("/v1/runtime/stop")
    response = await seeded_client.post(f"/v1/workers/{MISSING}/input", json={"kind": "user", "content": ""})
    assert (response.status, (await response.json())["error"]["code"]) == (409, "runtime_stopped")
    response = await seeded_client.post(f"/v1/workers/{MISSING}/input", data=b"{")
    assert (response.status, (await response.json())["error"]["code"]) == (400, "invalid_json")
    response = await seeded_client.post(
        "/v1/workers", json={"intent": {"kind": "task", "objective": ""}, "profile": {"kind": "runtime_default"}}
    )
    assert (response.status, (await response.json())["error"]["code"]) == (409, "runtime_stopped")


# ------------------------------------------------------- executing workers (§9)

A = "worker-00000001"  # agent-backed; its one queued input fills its queue; perm-1 is pending
R = "worker-00000002"  # record-only
ECHO_TASK = {**ECHO_REQUEST, "intent": {"kind": "task", "objective": " "}}
# (method, path, body bytes or None, status, code, message or None when it varies)
# fmt: off
EXECUTION_CASES = [
    ("POST", "/v1/workers", json.dumps(ECHO_REQUEST).encode(), 429, "worker_limit_reached", "2 agent-backed workers are running, the most [limits] max_running_agents allows; stop one or create a worker of a profile that names no agent"),
    ("POST", f"/v1/workers/{A}/input", b'{"kind": "user", "content": "more"}', 429, "input_queue_full", f"worker {A} has 1 inputs waiting to be delivered, the most [limits] max_queued_inputs allows"),
    ("POST", f"/v1/workers/{R}/interrupt", None, 409, "worker_not_executing", f"worker {R} runs no agent; it records input only"),
    ("GET", f"/v1/workers/{R}/permissions", None, 409, "worker_not_executing", f"worker {R} runs no agent; it records input only"),
    ("POST", f"/v1/workers/{R}/permissions/perm-1", b'{"option_id": "allow"}', 409, "worker_not_executing", None),
    ("POST", f"/v1/workers/{A}/permissions/perm-9", b'{"option_id": "allow"}', 404, "permission_not_found", f"worker {A} has no pending permission request perm-9"),
    ("POST", f"/v1/workers/{A}/permissions/perm-1", b'{"option_id": "maybe"}', 400, "invalid_request", "invalid request: option maybe was not offered by permission request perm-1"),
    ("POST", f"/v1/workers/{A}/permissions/perm-1", b"{}", 400, "invalid_json", "invalid JSON request body: option_id: Missing data for required field."),
    ("POST", f"/v1/workers/{A}/permissions/perm-1", b"", 400, "invalid_json", "invalid JSON request body: the body is empty; expected a JSON object"),
    ("POST", f"/v1/workers/{A}/permissions/perm-1", b'{"option_id": 1}', 400, "invalid_json", "invalid JSON request body: option_id: Not a valid string."),
    ("POST", f"/v1/workers/{A}/interrupt", b"null", 400, "invalid_json", "invalid lifecycle request JSON: expected a JSON object, got null"),
    ("POST", f"/v1/workers/{A}/interrupt", b'{"drop_queued": "yes"}', 400, "invalid_json", "invalid lifecycle request JSON: drop_queued: Not a valid boolean."),
    ("POST", f"/v1/workers/{A}/interrupt", b'{"drop_queued": 1}', 400, "invalid_json", "invalid lifecycle request JSON: drop_queued: Not a valid boolean."),
    ("POST", f"/v1/workers/{MISSING}/interrupt", None, 404, "worker_not_found", None),
    ("GET", f"/v1/workers/{MISSING}/permissions", None, 404, "worker_not_found", None),
    ("POST", f"/v1/workers/{MISSING}/permissions/perm-1", b'{"option_id": "allow"}', 404, "worker_not_found", None),
    ("POST", "/v1/workers/%20/interrupt", None, 400, "invalid_worker_id", "worker_id must not be empty"),
    ("GET", "/v1/workers/%20/permissions", None, 400, "invalid_worker_id", "worker_id must not be empty"),
    ("POST", "/v1/profiles", None, 405, "method_not_allowed", None),
    ("GET", f"/v1/workers/{A}/interrupt", None, 405, "method_not_allowed", None),
    ("POST", f"/v1/workers/{A}/interrupt", b" " * BIG, 413, "payload_too_large", None),
    # order of checks (§9.3)
    ("POST", "/v1/workers", json.dumps(ECHO_TASK).encode(), 400, "invalid_request", "invalid request: task objective must not be empty"),
    ("POST", f"/v1/workers/{A}/input", b'{"kind": "user", "content": " "}', 400, "invalid_request", "invalid request: worker input content must not be empty"),
    ("POST", f"/v1/workers/{MISSING}/permissions/perm-9", b'{"option_id": "x"}', 404, "worker_not_found", None),
    ("POST", f"/v1/workers/{R}/permissions/perm-9", b'{"option_id": "x"}', 409, "worker_not_executing", None),
    ("POST", f"/v1/workers/{A}/permissions/perm-9", b'{"option_id": "maybe"}', 404, "permission_not_found", None),
    ("POST", f"/v1/workers/{R}/permissions/perm-1", b"{", 400, "invalid_json", None),
    ("POST", f"/v1/workers/{R}/interrupt", b"[]", 400, "invalid_json", None),
    ("POST", "/v1/workers/%20/permissions/perm-1", b"{", 400, "invalid_worker_id", None),
]
# fmt: on


@pytest.fixture
async def executing_client(aiohttp_client):
    """Two running agent-backed workers (the limit), the first with a full queue and a pending
    permission request, and a record-only worker between them."""
    limits = RuntimeLimits(max_running_agents=2, max_queued_inputs=1)
    runtime = await Runtime.open(MemoryStore(), RuntimeOptions(limits=limits))
    backend = FakeBackend(runtime)
    runtime.attach(backend)
    client = await aiohttp_client(create_app(runtime))
    await create_worker(client, ECHO_REQUEST)
    await create_worker(client, TASK_REQUEST)
    await create_worker(client, ECHO_REQUEST)
    response = await client.post(f"/v1/workers/{A}/input", json={"kind": "user", "content": "queued"})
    assert response.status == 200
    backend.ask(runtime.worker_ref(A), "perm-1")
    yield client
    await runtime.close()


def _executing_state(client) -> tuple:
    runtime = client.app[web_keys.RUNTIME]
    return (*_state(runtime), runtime.permissions(runtime.worker_ref(A)))


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "message"), EXECUTION_CASES, ids=lambda v: str(v)[:60]
)
async def test_execution_error_shape(executing_client, method, path, body, status, code, message):
    before = _executing_state(executing_client)
    response = await executing_client.request(method, path, data=_data(body))
    assert response.status == status
    payload = await response.json()
    schemas.ErrorResponseSchema().load(payload)
    assert payload["error"]["code"] == code
    if message is not None:
        assert payload["error"]["message"] == message
    assert _executing_state(executing_client) == before


async def test_runtime_stopped_beats_the_execution_errors_but_reads_keep_theirs(executing_client):
    await executing_client.post("/v1/runtime/stop")
    for method, path, body in (
        ("POST", f"/v1/workers/{R}/interrupt", None),
        ("POST", f"/v1/workers/{MISSING}/interrupt", None),
        ("POST", f"/v1/workers/{A}/permissions/perm-9", b'{"option_id": "allow"}'),
        ("POST", f"/v1/workers/{R}/permissions/perm-1", b'{"option_id": "allow"}'),
    ):
        response = await executing_client.request(method, path, data=body)
        assert (response.status, (await response.json())["error"]["code"]) == (409, "runtime_stopped"), path
    response = await executing_client.get(f"/v1/workers/{R}/permissions")
    assert (response.status, (await response.json())["error"]["code"]) == (409, "worker_not_executing")
    response = await executing_client.post(f"/v1/workers/{A}/permissions/perm-1", data=b"{")
    assert (response.status, (await response.json())["error"]["code"]) == (400, "invalid_json")


# ------------------------------------------------------------ server errors


async def test_store_failure_is_store_io_and_changes_nothing(aiohttp_client):
    store = FailingStore()
    runtime = await Runtime.open(store)
    client = await aiohttp_client(create_app(runtime))
    await create_worker(client)
    before = _state(runtime)
    store.failing = True
    response = await client.post(f"/v1/workers/{W}/input", json={"kind": "user", "content": "x"})
    assert response.status == 500
    assert await response.json() == {
        "error": {"code": "store_io", "message": "append /tmp/events.jsonl: No space left on device"}
    }
    assert _state(runtime) == before
    store.failing = False
    response = await client.post(f"/v1/workers/{W}/input", json={"kind": "user", "content": "x"})
    assert response.status == 200


async def test_undescribed_store_failure_poisons_the_runtime(aiohttp_client, caplog):
    store = BrokenStore()
    runtime = await Runtime.open(store)
    client = await aiohttp_client(create_app(runtime))
    await create_worker(client)
    store.failing = True
    with caplog.at_level(logging.ERROR, logger="runtimed.web"):
        response = await client.post("/v1/workers", json=TASK_REQUEST)
    assert response.status == 500
    assert (await response.json())["error"]["code"] == "internal_error"
    store.failing = False
    response = await client.post("/v1/workers", json=TASK_REQUEST)
    assert response.status == 500
    assert (await response.json())["error"]["code"] == "state_poisoned"
    assert (await client.get("/v1/runtime")).status == 200  # reads keep working


async def test_unexpected_exception_is_a_generic_500_with_the_traceback_in_the_log(
    client, runtime, monkeypatch, caplog
):
    def explode():
        raise ZeroDivisionError("secret internals")

    monkeypatch.setattr(runtime, "summary", explode)
    with caplog.at_level(logging.ERROR, logger="runtimed.web"):
        response = await client.get("/v1/runtime")
    assert response.status == 500
    body = await response.json()
    assert body == {"error": {"code": "internal_error", "message": "internal error; the daemon's log has the details"}}
    assert "secret internals" not in await response.text()
    assert any(record.exc_info and record.exc_info[0] is ZeroDivisionError for record in caplog.records)


def _all_error_classes(base: type) -> list[type]:
    found = []
    for sub in base.__subclasses__():
        found.append(sub)
        found.extend(_all_error_classes(sub))
    return found


#: Codes the contract lists and the status table keeps, though no error class raises them.
CONTRACT_ONLY_CODES = {"wrong_runtime_cursor"}


def test_every_error_code_has_a_status_and_every_status_a_code():
    classes = _all_error_classes(RuntimedError)
    observation = set(_all_error_classes(domain_errors.ObservationError)) | {domain_errors.ObservationError}
    codes = {cls.code for cls in classes if cls not in observation}
    assert codes.isdisjoint(CONTRACT_ONLY_CODES)
    assert codes | CONTRACT_ONLY_CODES == set(web_errors.STATUS_BY_CODE)
    # Observation errors are diagnostic frames on the WebSocket, never HTTP answers.
    assert {cls.code for cls in observation} - {RuntimedError.code} == {
        "runtime.cursor_unknown_or_expired",
        "runtime.cursor_malformed",
        "runtime.cursor_expired",
        "runtime.worker_deleted",
    }
    assert domain_errors.WrongRuntime.code == "wrong_runtime"
    assert web_errors.STATUS_BY_CODE["wrong_runtime"] == 400
    assert web_errors.STATUS_BY_CODE["wrong_runtime_cursor"] == 400
