"""The OpenAPI document: committed and current, valid OpenAPI 3, true to what the app answers,
and fuzzed with schemathesis against a real ``runtimed serve``."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jsonschema_rs
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from runtimed.daemon.config import Secret, ServerConfig
from runtimed.web.app import create_app
from runtimed.web.openapi import build_openapi, render_openapi

from .helpers import TASK_REQUEST, create_worker
from .process import RuntimedProcess, request_json

COMMITTED = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"
WS_ROUTE = "/v1/workers/{worker_id}/events/ws"
PROBES = {"/healthz", "/readyz"}


async def served_document(client) -> dict[str, Any]:
    response = await client.get("/v1/openapi.json")
    assert response.status == 200, await response.text()
    return await response.json()


def offline_schema(document: dict[str, Any]) -> schemathesis.BaseSchema:
    """The document loaded by schemathesis, with an explicit (empty) config, so that no
    ``schemathesis.toml`` found on the way up changes what the tests check."""
    return schemathesis.openapi.from_dict(document, config=schemathesis.Config())


# ------------------------------------------------------------- the committed file


async def test_served_document_is_the_committed_docs_openapi_json(client):
    document = await served_document(client)
    assert COMMITTED.exists(), "docs/openapi.json is missing: run `make openapi`"
    committed = COMMITTED.read_text(encoding="utf-8")
    assert committed == render_openapi(document), "docs/openapi.json is stale: run `make openapi` and commit the result"


async def test_document_describes_every_route_of_the_app_once(client):
    document = await served_document(client)
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in client.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    described = {(method, path) for path, operations in document["paths"].items() for method in operations}
    assert described == routes


async def test_a_route_the_table_does_not_describe_is_an_error(runtime):
    app = create_app(runtime)

    async def undocumented(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/v1/undocumented", undocumented)
    with pytest.raises(LookupError, match="GET /v1/undocumented"):
        build_openapi(app)


# ---------------------------------------------------------------- the document


async def test_document_is_valid_openapi_3(client):
    document = await served_document(client)
    assert document["openapi"].startswith("3.")
    offline_schema(document).validate()  # against the OpenAPI 3 meta-schema


async def test_every_route_but_the_probes_needs_the_bearer_token(client):
    document = await served_document(client)
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert document["security"] == [{"bearer": []}]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path in PROBES:
                assert operation["security"] == [], (method, path)
                assert "401" not in operation["responses"], (method, path)
            else:
                assert "security" not in operation, (method, path)
                assert "401" in operation["responses"], (method, path)


async def test_every_error_response_is_the_error_shape(client):
    document = await served_document(client)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)


async def test_tagged_unions_are_discriminated_one_of_on_kind(client):
    document = await served_document(client)
    components = document["components"]["schemas"]
    intent = components["CreateWorkerRequest"]["properties"]["intent"]
    assert intent["discriminator"]["propertyName"] == "kind"
    assert set(intent["discriminator"]["mapping"]) == {"assistant", "task", "role"}
    for kind, ref in intent["discriminator"]["mapping"].items():
        variant = components[ref.rsplit("/", 1)[1]]
        assert variant["properties"]["kind"] == {"type": "string", "enum": [kind]}
        assert "kind" in variant["required"]
    assert {"$ref": ref} in intent["oneOf"]
    assert components["WorkerDetail"]["properties"]["profile"]["discriminator"]["mapping"]["runtime_default"]


async def test_only_fields_that_allow_none_are_nullable(client):
    document = await served_document(client)
    nullable = {
        (name, field)
        for name, schema in document["components"]["schemas"].items()
        for field, prop in schema.get("properties", {}).items()
        if prop.get("nullable")
    }
    assert nullable == {
        ("RuntimeSummary", "display_name"),
        ("TranscriptProjection", "next_start"),
        ("WorkerLifecycleRequest", "reason"),
        ("WorkersResponse", "next_after"),
    }
    transcript = document["paths"]["/v1/workers/{worker_id}/transcript"]["get"]
    query = {p["name"]: p["schema"] for p in transcript["parameters"] if p.get("in") == "query"}
    largest = 10**18 - 1  # query integers have at most 18 digits
    assert query == {
        "start": {"type": "integer", "minimum": 0, "maximum": largest, "default": 0},
        "limit": {"type": "integer", "minimum": 0, "maximum": largest},
    }


# ------------------------------------------------- real responses against the document


class ConformanceClient:
    """Sends requests through the test client and checks each answer against the document."""

    def __init__(self, client, schema: schemathesis.BaseSchema) -> None:
        self.client = client
        self.schema = schema

    async def __call__(self, method: str, template: str, path: str, status: int, **kwargs: Any) -> Any:
        response = await self.client.request(method, path, **kwargs)
        body = await response.read()
        assert response.status == status, body
        headers: dict[str, list[str]] = {}
        for name, value in response.headers.items():
            headers.setdefault(name, []).append(value)
        sent = requests.Request(method, str(response.url), headers=dict(kwargs.get("headers", {}))).prepare()
        observed = schemathesis.Response(
            status_code=response.status, headers=headers, content=body, request=sent, elapsed=0.0, verify=True
        )
        # The same checks as the fuzzed run: status, content type, headers and body as documented.
        path_parameters = {"worker_id": unquote(path.split("?")[0].split("/")[3])} if "{worker_id}" in template else {}
        case = self.schema[template][method].Case(path_parameters=path_parameters)
        case.validate_response(observed, checks=CHECKS)
        return json.loads(body) if response.content_type == "application/json" else body


async def test_responses_of_the_real_app_conform_to_the_document(client, runtime):
    check = ConformanceClient(client, offline_schema(await served_document(client)))

    await check("GET", "/healthz", "/healthz", 200)
    await check("GET", "/readyz", "/readyz", 200)
    await check("GET", "/metrics", "/metrics", 200)
    await check("GET", "/v1/openapi.json", "/v1/openapi.json", 200)
    await check("GET", "/v1/runtime", "/v1/runtime", 200)
    created = await check("POST", "/v1/workers", "/v1/workers", 200, json={**TASK_REQUEST, "typo": 1})
    wid = created["worker"]["worker_id"]
    await check(
        "POST",
        "/v1/workers",
        "/v1/workers",
        200,
        json={
            "intent": {"kind": "role", "role": "reviewer", "purpose": "review"},
            "profile": {"kind": "runtime_default"},
            "config_bundle": {"id": "bundle"},
            "workspace_refs": [{"name": "ws", "reference": "ref"}],
            "mount_refs": [{"name": "m", "reference": "ref"}],
        },
    )
    await check("GET", "/v1/workers", "/v1/workers", 200)
    await check("GET", "/v1/workers/{worker_id}", f"/v1/workers/{wid}", 200)
    user_input = {"kind": "user", "content": "hi"}
    await check("POST", "/v1/workers/{worker_id}/input", f"/v1/workers/{wid}/input", 200, json=user_input)
    await check("GET", "/v1/workers/{worker_id}/transcript", f"/v1/workers/{wid}/transcript?limit=1&extra=1", 200)
    await check("GET", "/v1/workers/{worker_id}/transcript", f"/v1/workers/{wid}/transcript?start=5", 200)
    await check("GET", "/v1/events", "/v1/events?cursor=0&limit=2", 200)
    await check("GET", "/v1/diagnostics", "/v1/diagnostics", 200)
    await check("POST", "/v1/workers/{worker_id}/stop", f"/v1/workers/{wid}/stop", 200)
    await check("POST", "/v1/workers/{worker_id}/cancel", f"/v1/workers/{wid}/cancel", 200, json={"reason": None})

    # Errors, each with the status the document gives it.
    await check("GET", "/v1/workers/{worker_id}", "/v1/workers/worker-99999999", 404)
    await check("GET", "/v1/workers/{worker_id}", "/v1/workers/%20", 400)
    await check("POST", "/v1/workers", "/v1/workers", 400, data=b"{not json")
    await check("POST", "/v1/workers/{worker_id}/input", f"/v1/workers/{wid}/input", 400, json=user_input)  # stopped
    await check("GET", "/v1/events", "/v1/events?limit=100000", 400)
    await check("GET", "/v1/workers/{worker_id}/transcript", f"/v1/workers/{wid}/transcript?start=-1", 400)
    too_large = io.BytesIO(b" " * (ServerConfig().max_request_body_bytes + 1))
    await check("POST", "/v1/workers", "/v1/workers", 413, data=too_large)
    await check("GET", WS_ROUTE, f"/v1/workers/{wid}/events/ws", 426)
    await check("GET", "/v1/runtime", "/v1/runtime", 403, headers={"Origin": "http://example.com"})
    await check("POST", "/v1/runtime/stop", "/v1/runtime/stop", 200)
    await check("POST", "/v1/workers", "/v1/workers", 409, json=TASK_REQUEST)
    await check("POST", "/v1/runtime/start", "/v1/runtime/start", 200)


async def test_unauthorized_answers_conform_to_the_document(aiohttp_client, runtime):
    client = await aiohttp_client(create_app(runtime, ServerConfig(local_token=Secret("t0k3n"))))
    check = ConformanceClient(client, offline_schema(build_openapi(client.app)))
    await check("GET", "/v1/runtime", "/v1/runtime", 401)
    await check("GET", "/metrics", "/metrics", 401)
    await check("GET", "/healthz", "/healthz", 200)
    await check("GET", "/v1/runtime", "/v1/runtime", 200, headers={"Authorization": "Bearer t0k3n"})


async def test_websocket_frames_conform_to_the_documented_frame_schemas(client):
    document = await served_document(client)

    def validator(name: str) -> jsonschema_rs.Validator:
        # The frame schemas hold no OpenAPI-only keyword that JSON Schema reads otherwise (no nullable).
        root = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
        return jsonschema_rs.validator_for(root)

    worker = await create_worker(client)
    path = f"/v1/workers/{worker['worker_id']}/events/ws"
    async with client.ws_connect(path) as ws:
        snapshot = await ws.receive_json()
    validator("EventFrame").validate(snapshot)
    validator("SnapshotData").validate(snapshot["envelope"]["payload"]["data"])
    async with client.ws_connect(path, params={"cursor": "nope"}) as ws:
        diagnostic = await ws.receive_json()
    validator("DiagnosticFrame").validate(diagnostic)
    assert not validator("EventFrame").is_valid(diagnostic)


# ------------------------------------------------------- schemathesis against a daemon

# The checks of every fuzzed response: no 5xx, and status, content type, headers and body
# as documented.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
SEED = 7420


def committed_operations() -> list[tuple[str, str]]:
    """The operations to fuzz: those of the committed document (the staleness test above holds
    it equal to the served one), but the WebSocket, which has nothing to fuzz."""
    if not COMMITTED.exists():
        return []  # test_served_document_is_the_committed_docs_openapi_json says what to do
    paths = json.loads(COMMITTED.read_text(encoding="utf-8"))["paths"]
    return [(method.upper(), path) for path, operations in paths.items() for method in operations if path != WS_ROUTE]


@pytest.fixture(scope="module")
def daemon() -> Iterator[RuntimedProcess]:
    with RuntimedProcess("--bind", "127.0.0.1:0") as daemon:
        yield daemon


@pytest.fixture(scope="module")
def live_schema(daemon: RuntimedProcess) -> schemathesis.BaseSchema:
    status, _, document = request_json("GET", daemon.base_url + "/v1/openapi.json")
    assert status == 200
    return schemathesis.openapi.from_dict(document, config=schemathesis.Config.from_dict({"base-url": daemon.base_url}))


@pytest.fixture(scope="module")
def http_session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False  # never route a request for 127.0.0.1 through the environment's proxy
        yield session


# Not `schemathesis.pytest.from_fixture(...).parametrize()`: with pytest 9.2 it fails on the
# node id it rewrites (`Function._nodeid` is gone). Hypothesis drives each operation's strategy
# instead, the documented way to use schemathesis in other tests.
@pytest.mark.process
@pytest.mark.parametrize(("method", "path"), committed_operations())
def test_fuzzed_requests_get_documented_answers_from_a_real_daemon(method, path, daemon, live_schema, http_session):
    # Whatever fuzzing an earlier operation did (stopping the runtime, say), start from a running
    # runtime with a running worker, so that requests naming that worker can succeed.
    assert request_json("POST", daemon.base_url + "/v1/runtime/start")[0] == 200
    status, _, created = request_json("POST", daemon.base_url + "/v1/workers", TASK_REQUEST)
    assert status == 200, created
    operation = live_schema[path][method]
    strategies = [operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)]
    if "{worker_id}" in path:
        worker = {"worker_id": created["worker"]["worker_id"]}
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=worker))
    cases = st.one_of(strategies)

    @seed(SEED)
    @settings(max_examples=25, deadline=None, database=None)
    @given(case=cases)
    def answers_as_documented(case: schemathesis.Case) -> None:
        case.call_and_validate(session=http_session, checks=CHECKS, timeout=10)

    answers_as_documented()
