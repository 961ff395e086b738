"""What the web app is built with: ``ServerConfig`` and the address helpers it needs.

The daemon's config loader fills these in from flags and TOML; the web layer only reads them,
so it imports nothing of the daemon.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7420
DEFAULT_MAX_REQUEST_BODY_BYTES = 1024 * 1024
DEFAULT_WS_HEARTBEAT_SECONDS = 30.0
#: The observation WebSocket only ever expects pings, pongs and a close from a client.
DEFAULT_WS_MAX_MESSAGE_BYTES = 4096
DEFAULT_MAX_OBSERVATION_SESSIONS = 256
#: How long a connection may take to send a request's headers, counted from when it opened or
#: from the end of its previous response.
DEFAULT_HEADER_TIMEOUT_SECONDS = 30.0
#: How long a connection may sit after a response before the first byte of a next request. Above
#: the 15 s aiohttp's client keeps an idle pooled connection, so such a client closes it first.
DEFAULT_KEEPALIVE_TIMEOUT_SECONDS = 20.0
#: How long a request's body may take to arrive, once its handler starts reading it.
DEFAULT_BODY_TIMEOUT_SECONDS = 60.0
#: The most of any of the timeouts above: each one bounds how long a client holds a connection.
MAX_TIMEOUT_SECONDS = 60.0
#: Connections open at once; the daemon may allow fewer when its open-file limit is lower.
DEFAULT_MAX_CONNECTIONS = 1000


class Secret:
    """A value that must never be printed: its ``repr`` and ``str`` are redacted."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('<redacted>')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    local_token_env: str | None = None
    local_token: Secret | None = None
    max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    ws_heartbeat_seconds: float = DEFAULT_WS_HEARTBEAT_SECONDS
    #: A client message larger than this closes its observation WebSocket with 1009.
    ws_max_message_bytes: int = DEFAULT_WS_MAX_MESSAGE_BYTES
    #: Observation sessions open at once; past it, ``429 too_many_sessions`` before the upgrade.
    max_observation_sessions: int = DEFAULT_MAX_OBSERVATION_SESSIONS
    #: A Unix socket to serve on (mode 0600), and whether to serve on ``host:port`` as well:
    #: with a socket configured, TCP is off unless ``bind`` is given explicitly.
    unix_socket: Path | None = None
    listen_tcp: bool = True
    metrics_public: bool = False
    header_timeout_seconds: float = DEFAULT_HEADER_TIMEOUT_SECONDS
    keepalive_timeout_seconds: float = DEFAULT_KEEPALIVE_TIMEOUT_SECONDS
    body_timeout_seconds: float = DEFAULT_BODY_TIMEOUT_SECONDS
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def bind(self) -> str:
        return format_host_port(self.host, self.port)


@functools.lru_cache(maxsize=1024)
def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP address (any ``127.x.y.z``, ``::1``).

    Memoised (bounded): the Host check asks it on every request, and parsing an address costs
    more than the rest of a small request's checks together."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
