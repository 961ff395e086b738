"""Loopback safety and the bearer token (contract §5)."""

from __future__ import annotations

import logging

import pytest

from runtimed.daemon.config import Secret, ServerConfig
from runtimed.web.app import create_app
from runtimed.web.errors import HostNotAllowed
from runtimed.web.security import HOST_DECISIONS, SecurityChecks, host_allowed, host_name, token_matches

TOKEN = "s3cret-Token-value"


def error_code(body: dict) -> str:
    return body["error"]["code"]


# ------------------------------------------------------------------ origins


async def test_a_request_with_an_origin_is_refused(client):
    response = await client.get("/v1/runtime", headers={"Origin": "http://evil.example"})
    assert response.status == 403
    body = await response.json()
    assert error_code(body) == "origin_not_allowed"
    assert "http://evil.example" in body["error"]["message"]


async def test_origin_check_applies_to_healthz_and_to_null_origins(client):
    for path, origin in (("/healthz", "http://localhost:3000"), ("/v1/workers", "null")):
        response = await client.get(path, headers={"Origin": origin})
        assert response.status == 403
        assert error_code(await response.json()) == "origin_not_allowed"


async def test_a_configured_origin_is_allowed(aiohttp_client, runtime):
    client = await aiohttp_client(create_app(runtime, ServerConfig(allowed_origins=("https://backend.example",))))
    response = await client.get("/v1/runtime", headers={"Origin": "https://backend.example"})
    assert response.status == 200
    response = await client.get("/v1/runtime", headers={"Origin": "https://other.example"})
    assert response.status == 403


# -------------------------------------------------------------------- hosts


FOREIGN_HOSTS = [
    "evil.example",
    "evil.example:7420",
    "127.0.0.1.evil.example",
    "localhost.evil",
    "[::2]:80",
    "10.0.0.1",
]
#: Host values that a loose parse would read as loopback: each is refused, not guessed at.
MALFORMED_HOSTS = [
    "127.0.0.1:80@evil.com",
    "localhost@evil.com",
    "[::1]evil.com",
    "[::1]:80evil.com",
    "[::1",
    "[::1]:",
    "localhost:abc",
    "localhost:",
    "localhost:7420:80",
    "localhost:123456",
    "localhost:-1",
    "localhost: 80",
    "local host",
    "localhost/evil",
    "localhost%2Eevil.com",
    "[localhost]",
    "[127.0.0.1]",
    "127.0.0.1\\evil.com",
    "",
]


@pytest.mark.parametrize("host", FOREIGN_HOSTS + MALFORMED_HOSTS)
async def test_a_foreign_host_is_refused_while_bound_to_loopback(client, host):
    response = await client.get("/healthz", headers={"Host": host})
    assert response.status == 403
    assert error_code(await response.json()) == "host_not_allowed"


@pytest.mark.parametrize("host", MALFORMED_HOSTS)
async def test_a_malformed_host_is_refused_even_when_its_name_is_configured(aiohttp_client, runtime, host):
    client = await aiohttp_client(create_app(runtime, ServerConfig(allowed_hosts=("evil.com", "localhost"))))
    response = await client.get("/healthz", headers={"Host": host})
    assert response.status == 403


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "LOCALHOST",
        "localhost:7420",
        "LocalHost:7420",
        "127.0.0.1",
        "127.0.0.1:80",
        "127.1.2.3:9",
        "[::1]:7420",
        "[::1]",
        "[0:0:0:0:0:0:0:1]:1",
        "localhost:65535",
    ],
)
async def test_loopback_hosts_are_accepted_with_any_port(client, host):
    response = await client.get("/healthz", headers={"Host": host})
    assert response.status == 200


async def test_configured_hosts_are_accepted(aiohttp_client, runtime):
    client = await aiohttp_client(create_app(runtime, ServerConfig(allowed_hosts=("Runtimed.Internal",))))
    assert (await client.get("/v1/runtime", headers={"Host": "runtimed.internal:7420"})).status == 200
    assert (await client.get("/v1/runtime", headers={"Host": "other.internal"})).status == 403


async def test_any_host_is_accepted_when_not_bound_to_loopback(aiohttp_client, runtime):
    config = ServerConfig(host="0.0.0.0", local_token=Secret(TOKEN))
    client = await aiohttp_client(create_app(runtime, config))
    response = await client.get("/v1/runtime", headers={"Host": "runtimed.lan", "Authorization": f"Bearer {TOKEN}"})
    assert response.status == 200


def test_host_name_strips_port_and_brackets():
    assert [host_name(h) for h in ("LOCALHOST:1", "[::1]:80", "[::1]", "127.0.0.1")] == [
        "localhost",
        "::1",
        "::1",
        "127.0.0.1",
    ]


@pytest.mark.parametrize("host", MALFORMED_HOSTS)
def test_host_name_of_a_malformed_host_is_none(host):
    assert host_name(host) is None


# -------------------------------------------------------------------- token


@pytest.fixture
def server_config() -> ServerConfig:
    """Every ``client`` in this module runs with a token; the tests above only need /healthz."""
    return ServerConfig(local_token=Secret(TOKEN))


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong-token-value-",  # same length, wrong
        "Bearer short",
        f"Bearer {TOKEN}x",
        "Bearer",
        "Bearer ",
        TOKEN,  # no scheme
        f"Basic {TOKEN}",
        f"Token {TOKEN}",
    ],
    ids=["missing", "wrong", "shorter", "longer", "scheme-only", "scheme-space", "no-scheme", "basic", "other-scheme"],
)
async def test_requests_without_the_right_bearer_token_are_unauthorized(client, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await client.get("/v1/runtime", headers=headers)
    assert response.status == 401
    assert await response.json() == {
        "error": {"code": "unauthorized", "message": "missing or invalid local Runtime bearer token"}
    }
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="runtimed"'


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_the_bearer_scheme_is_case_insensitive(client, scheme):
    response = await client.get("/v1/runtime", headers={"Authorization": f"{scheme} {TOKEN}"})
    assert response.status == 200


async def test_healthz_needs_no_token(client):
    response = await client.get("/healthz")
    assert (response.status, await response.json()) == (200, {"status": "ok"})


async def test_every_other_route_needs_the_token(client):
    routes = [
        ("GET", "/v1/runtime"), ("GET", "/v1/workers"), ("POST", "/v1/workers"),
        ("GET", "/v1/workers/worker-00000001"), ("POST", "/v1/workers/worker-00000001/input"),
        ("POST", "/v1/workers/worker-00000001/stop"), ("POST", "/v1/workers/worker-00000001/cancel"),
        ("GET", "/v1/workers/worker-00000001/transcript"), ("GET", "/v1/events"), ("GET", "/v1/diagnostics"),
        ("POST", "/v1/runtime/stop"), ("POST", "/v1/runtime/start"),
    ]  # fmt: skip
    for method, path in routes:
        response = await client.request(method, path)
        assert response.status == 401, (method, path)


async def test_order_origin_then_host_then_token_then_route(client):
    response = await client.get("/nope", headers={"Origin": "http://x", "Host": "evil.example"})
    assert error_code(await response.json()) == "origin_not_allowed"
    response = await client.get("/nope", headers={"Host": "evil.example"})
    assert error_code(await response.json()) == "host_not_allowed"
    response = await client.get("/nope")
    assert error_code(await response.json()) == "unauthorized"
    response = await client.delete("/v1/runtime")
    assert error_code(await response.json()) == "unauthorized"
    response = await client.get("/nope", headers={"Authorization": f"Bearer {TOKEN}"})
    assert error_code(await response.json()) == "not_found"


async def test_the_token_never_appears_in_logs_or_error_bodies(client, caplog):
    with caplog.at_level(logging.DEBUG):
        bodies = []
        for headers in (
            {"Authorization": f"Bearer {TOKEN}"},
            {"Authorization": f"Bearer {TOKEN}-wrong"},
            {"Authorization": f"Basic {TOKEN}"},
        ):
            for path in ("/v1/runtime", "/v1/workers/nope", "/nope"):
                response = await client.get(path, headers=headers)
                bodies.append(await response.text())
    assert caplog.records, "expected the access log to have recorded the requests"
    assert not any(TOKEN in body for body in bodies)
    assert not any(TOKEN in record.getMessage() for record in caplog.records)


def test_the_token_is_redacted_in_reprs():
    config = ServerConfig(local_token=Secret(TOKEN))
    assert TOKEN not in repr(config)
    assert TOKEN not in str(config.local_token)


def test_token_matches_is_strict_about_the_token_and_lenient_about_the_scheme():
    assert token_matches(TOKEN, f"bearer {TOKEN}")
    assert token_matches(TOKEN, f"Bearer  {TOKEN} ")
    assert not token_matches(TOKEN, f"Bearer {TOKEN.upper()}")
    assert not token_matches(TOKEN, None)


class HeadersOnly:
    """As much of a request as the checks read."""

    def __init__(self, host: str) -> None:
        self.headers = {"Host": host}
        self.path = "/v1/runtime"


@pytest.mark.parametrize("config", [ServerConfig(allowed_hosts=("Mine.Internal",)), ServerConfig(host="0.0.0.0")])
def test_the_remembered_host_decisions_are_the_decisions_and_stay_bounded(config):
    checks = SecurityChecks(config)
    hosts = ["localhost", "mine.internal:80", "evil.example", "[::1]:7420", "127.0.0.1:1:2", "LOCALHOST"]
    hosts += [f"h{index}.example" for index in range(3 * HOST_DECISIONS)]
    for _ in range(2):  # decided, then remembered
        for host in hosts:
            try:
                checks.check(HeadersOnly(host))  # type: ignore[arg-type]
                allowed = True
            except HostNotAllowed:
                allowed = False
            assert allowed == host_allowed(config, host), host
            assert len(checks._hosts) <= HOST_DECISIONS
