"""Who may talk to the daemon: browsers never, foreign Host names never, and only with the token.

runtimed serves a trusted backend on loopback. A browser page could still reach a loopback port
(cross-origin requests, DNS rebinding), so requests carrying an ``Origin`` are refused unless the
origin is configured, and while bound to loopback the ``Host`` must name loopback. These checks
come first, before the token and before routing (contract §4, order of checks).
"""

from __future__ import annotations

import hashlib
import hmac
import re

from aiohttp import web

from .errors import HostNotAllowed, OriginNotAllowed, Unauthorized
from .settings import ServerConfig, is_loopback_host

#: Routes that answer without the token: probes (systemd, a supervisor) hold no secrets.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})


def public_paths(config: ServerConfig) -> frozenset[str]:
    return PROBE_PATHS | {"/metrics"} if config.metrics_public else PROBE_PATHS


# ``name[:port]`` or ``[IPv6][:port]``, lower-cased; a port has 1 to 5 digits. Anything else
# (userinfo, a path, a second port, text after the brackets, percent-escapes) is not a Host this
# daemon answers to, however loopback its beginning looks.
_HOST = re.compile(r"(?:\[(?P<ipv6>[0-9a-f.]*:[0-9a-f:.]*)\]|(?P<name>[a-z0-9._-]+))(?::(?P<port>[0-9]{1,5}))?")


def host_name(host_header: str) -> str | None:
    """The name part of a ``Host`` header (``[::1]:7420`` -> ``::1``, ``LocalHost:80`` ->
    ``localhost``), or ``None`` when the header is not of that form."""
    match = _HOST.fullmatch(host_header.lower())
    if match is None or (match["port"] is not None and int(match["port"]) > 65535):
        return None
    return match["ipv6"] or match["name"]


def host_allowed(config: ServerConfig, host_header: str | None) -> bool:
    if host_header is None:
        # No Host at all (HTTP/1.0): no browser sends such a request, so it is no rebinding.
        return True
    if not config.is_loopback:
        return True
    name = host_name(host_header)
    if name is None:
        return False
    return is_loopback_host(name) or name in (allowed.lower() for allowed in config.allowed_hosts)


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def _digest_matches(expected_digest: bytes, authorization: str | None) -> bool:
    if authorization is None:
        return False
    scheme, _, supplied = authorization.strip().partition(" ")
    supplied = supplied.strip()
    if scheme.lower() != "bearer" or not supplied:
        return False
    return hmac.compare_digest(_digest(supplied), expected_digest)


def token_matches(expected: str, authorization: str | None) -> bool:
    """Whether ``Authorization`` is ``Bearer <expected>`` (scheme case-insensitive, RFC 7235).

    Both sides are hashed before the constant-time compare, so neither the content nor the
    length of the token leaks through timing.
    """
    return _digest_matches(_digest(expected), authorization)


#: Host headers whose decision is remembered; past it the memory starts over (a client sending
#: ever new names costs a parse each, as without the memory).
HOST_DECISIONS = 256


class SecurityChecks:
    """The checks of every request, in the contract's order (§4): ``Origin``, ``Host``, then
    the token, except on the public paths. What the config decides is worked out once: the
    lower-cased origins and hosts, the public paths, the token's digest; a ``Host`` header's
    decision is remembered (``HOST_DECISIONS`` of them)."""

    __slots__ = ("_config", "_hosts", "_origins", "_public", "_token_digest")

    def __init__(self, config: ServerConfig) -> None:
        self._config = config
        self._origins = frozenset(allowed.lower() for allowed in config.allowed_origins)
        self._public = public_paths(config)
        token = config.local_token
        self._token_digest = None if token is None else _digest(token.reveal())
        self._hosts: dict[str, bool] = {}

    def check(self, request: web.BaseRequest) -> None:
        """Raise the typed error of the first check ``request`` fails."""
        headers = request.headers
        origin = headers.get("Origin")
        if origin is not None and origin.lower() not in self._origins:
            raise OriginNotAllowed(
                f"requests from origin {origin!r} are not allowed; runtimed serves a backend, not browsers"
            )
        host = headers.get("Host")
        if host is not None:
            allowed = self._hosts.get(host)
            if allowed is None:
                if len(self._hosts) >= HOST_DECISIONS:
                    self._hosts.clear()
                allowed = self._hosts[host] = host_allowed(self._config, host)
            if not allowed:
                raise HostNotAllowed(
                    f"host {host!r} is not allowed while bound to loopback; "
                    "add it to [server] allowed_hosts if it is yours"
                )
        if (
            self._token_digest is not None
            and request.path not in self._public
            and not _digest_matches(self._token_digest, headers.get("Authorization"))
        ):
            raise Unauthorized()
