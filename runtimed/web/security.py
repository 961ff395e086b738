"""Who may talk to the daemon: browsers never, foreign Host names never, and only with the token.

runtimed serves a trusted backend on loopback. A browser page could still reach a loopback port
(cross-origin requests, DNS rebinding), so requests carrying an ``Origin`` are refused unless the
origin is configured, and while bound to loopback the ``Host`` must name loopback. These checks
come first, before the token and before routing (contract §4, order of checks).
"""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from .errors import Handler, HostNotAllowed, OriginNotAllowed, Unauthorized
from .keys import SERVER_CONFIG
from .settings import ServerConfig, is_loopback_host

#: Routes that answer without the token: probes (systemd, a supervisor) hold no secrets.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})


def public_paths(config: ServerConfig) -> frozenset[str]:
    return PROBE_PATHS | {"/metrics"} if config.metrics_public else PROBE_PATHS


def host_name(host_header: str) -> str:
    """The name part of a ``Host`` header: ``[::1]:7420`` -> ``::1``, ``LocalHost:80`` -> ``localhost``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end != -1 else host
    name, _, _ = host.partition(":")
    return name


def host_allowed(config: ServerConfig, host_header: str | None) -> bool:
    if host_header is None:
        # No Host at all (HTTP/1.0): no browser sends such a request, so it is no rebinding.
        return True
    name = host_name(host_header)
    if name in (allowed.lower() for allowed in config.allowed_hosts):
        return True
    return not config.is_loopback or is_loopback_host(name)


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def token_matches(expected: str, authorization: str | None) -> bool:
    """Whether ``Authorization`` is ``Bearer <expected>`` (scheme case-insensitive, RFC 7235).

    Both sides are hashed before the constant-time compare, so neither the content nor the
    length of the token leaks through timing.
    """
    if authorization is None:
        return False
    scheme, _, supplied = authorization.strip().partition(" ")
    supplied = supplied.strip()
    if scheme.lower() != "bearer" or not supplied:
        return False
    return hmac.compare_digest(_digest(supplied), _digest(expected))


@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    config = request.app[SERVER_CONFIG]
    origin = request.headers.get("Origin")
    if origin is not None and origin.lower() not in (allowed.lower() for allowed in config.allowed_origins):
        raise OriginNotAllowed(
            f"requests from origin {origin!r} are not allowed; runtimed serves a backend, not browsers"
        )
    host = request.headers.get("Host")
    if not host_allowed(config, host):
        raise HostNotAllowed(
            f"host {host!r} is not allowed while bound to loopback; add it to [server] allowed_hosts if it is yours"
        )
    token = config.local_token
    if (
        token is not None
        and request.path not in public_paths(config)
        and not token_matches(token.reveal(), request.headers.get("Authorization"))
    ):
        raise Unauthorized()
    return await handler(request)
