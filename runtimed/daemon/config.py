"""Configuration: dataclasses, TOML loading, precedence and validation.

A value comes from a command-line flag, else the TOML file, else the built-in default. Every
problem raises ``ConfigError`` with a message naming where the bad value came from (the flag,
or the file and ``[section] key``), so the CLI can print one line and exit 2. Unknown keys are
errors: the operator of this very daemon wrote the file, so a typo must stop it.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..domain.management import RuntimeLimits, RuntimeOptions

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7420
DEFAULT_MAX_REQUEST_BODY_BYTES = 1024 * 1024
DEFAULT_WS_HEARTBEAT_SECONDS = 30.0


class ConfigError(Exception):
    """A configuration that runtimed refuses to start with; the message is the whole story."""


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
    #: A Unix socket to serve on (mode 0600), and whether to serve on ``host:port`` as well:
    #: with a socket configured, TCP is off unless ``bind`` is given explicitly.
    unix_socket: Path | None = None
    listen_tcp: bool = True
    metrics_public: bool = False

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def bind(self) -> str:
        return format_host_port(self.host, self.port)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    kind: str = "memory"
    root: Path | None = None


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    format: str = "text"
    #: Log to this file instead of stderr (SIGHUP reopens it, for logrotate).
    file: Path | None = None


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    store: StoreConfig = field(default_factory=StoreConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def limits(self) -> RuntimeLimits:
        return self.runtime.limits


# ----------------------------------------------------------------- addresses


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


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) into its parts; raises ``ValueError``."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"unbalanced brackets in {text!r}")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets, as [{host}]:{port_text}")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port_text!r}")
    if not host.strip() or any(c.isspace() for c in host):
        raise ValueError(f"invalid host in {text!r}")
    return host, int(port_text)


# ---------------------------------------------------------------- TOML keys

Check = Callable[[Any], str | None]  # returns a complaint, or None when the value is fine


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else f"must be a string, not {_type_name(value)}"


def _non_blank(value: Any) -> str | None:
    return _string(value) or (None if value.strip() else "must not be empty")


def _positive_int(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer, not {_type_name(value)}"
    return None if value >= 1 else f"must be at least 1, not {value}"


def _non_negative_number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number, not {_type_name(value)}"
    return None if math.isfinite(value) and value >= 0 else f"must be a finite number, 0 or more, not {value}"


def _string_list(value: Any) -> str | None:
    if not isinstance(value, list):
        return f"must be a list of strings, not {_type_name(value)}"
    for index, item in enumerate(value):
        if not isinstance(item, str):
            return f"must be a list of strings; item {index} is {_type_name(item)}"
    return None


def _store_kind(value: Any) -> str | None:
    return _string(value) or (None if value in ("memory", "fs") else f'must be "memory" or "fs", not {value!r}')


def _bind(value: Any) -> str | None:
    if complaint := _string(value):
        return complaint
    try:
        parse_bind(value)
    except ValueError as error:
        return str(error)
    return None


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, not {_type_name(value)}"


def _one_of(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        if complaint := _string(value):
            return complaint
        return None if value in choices else f"must be one of {', '.join(map(repr, choices))}, not {value!r}"

    return check


def _env_name(value: Any) -> str | None:
    return _non_blank(value) or (None if "=" not in value else "must be an environment variable name")


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


KEYS: dict[str, dict[str, Check]] = {
    "server": {
        "bind": _bind,
        "local_token_env": _env_name,
        "max_request_body_bytes": _positive_int,
        "allowed_origins": _string_list,
        "allowed_hosts": _string_list,
        "ws_heartbeat_seconds": _non_negative_number,
        "unix_socket": _non_blank,
        "metrics_public": _boolean,
    },
    "runtime": {"runtime_id": _non_blank, "display_name": _string},
    "limits": {
        "max_transcript_projection_items": _positive_int,
        "max_event_batch_items": _positive_int,
        "observation_backlog": _positive_int,
        "subscriber_queue": _positive_int,
    },
    "store": {"kind": _store_kind, "root": _non_blank},
    "log": {"level": _one_of(*LOG_LEVELS), "format": _one_of(*LOG_FORMATS), "file": _non_blank},
}

#: Command-line flag -> (section, key) it overrides, for ``load_config``'s ``overrides``.
FLAG_KEYS: dict[str, tuple[str, str]] = {
    "--bind": ("server", "bind"),
    "--local-token-env": ("server", "local_token_env"),
    "--runtime-id": ("runtime", "runtime_id"),
    "--display-name": ("runtime", "display_name"),
    "--max-transcript-projection-items": ("limits", "max_transcript_projection_items"),
    "--max-event-batch-items": ("limits", "max_event_batch_items"),
    "--store": ("store", "kind"),
    "--fs-root": ("store", "root"),
    "--unix-socket": ("server", "unix_socket"),
    "--log-level": ("log", "level"),
    "--log-format": ("log", "format"),
    "--log-file": ("log", "file"),
}


def read_toml(path: Path) -> dict[str, Any]:
    """Read and check a config file: only known sections and keys, each of the right type."""
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config file: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    for section, table in data.items():
        if section not in KEYS:
            raise ConfigError(f"{path}: unknown section [{section}] (known: {', '.join(KEYS)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table, not {_type_name(table)}")
        for key, value in table.items():
            check = KEYS[section].get(key)
            if check is None:
                raise ConfigError(f"{path}: unknown key [{section}] {key} (known: {', '.join(KEYS[section])})")
            if complaint := check(value):
                raise ConfigError(f"{path}: [{section}] {key} {complaint}")
    return data


def load_config(
    path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the config: ``overrides`` (flag -> value, ``None`` = not given) > file > defaults."""
    environ = os.environ if environ is None else environ
    values: dict[tuple[str, str], Any] = {}
    sources: dict[tuple[str, str], str] = {}
    if path is not None:
        for section, table in read_toml(path).items():
            for key, value in table.items():
                values[(section, key)] = value
                sources[(section, key)] = f"{path}: [{section}] {key}"
    for flag, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = FLAG_KEYS[flag]
        if complaint := KEYS[section][key](value):
            raise ConfigError(f"{flag} {complaint}")
        values[(section, key)] = value
        sources[(section, key)] = flag

    def get(section: str, key: str, default: Any = None) -> Any:
        return values.get((section, key), default)

    def where(section: str, key: str) -> str:
        return sources.get((section, key), f"[{section}] {key}")

    host, port = parse_bind(get("server", "bind", format_host_port(DEFAULT_HOST, DEFAULT_PORT)))
    token_env = get("server", "local_token_env")
    token = None
    if token_env is not None:
        raw = environ.get(token_env, "")
        if not raw:
            raise ConfigError(f"{where('server', 'local_token_env')} names {token_env}, which is unset or empty")
        if any(c.isspace() or ord(c) < 32 for c in raw):
            raise ConfigError(
                f"{where('server', 'local_token_env')}: the token in {token_env} contains whitespace or control characters"
            )
        token = Secret(raw)
    server = ServerConfig(
        host=host,
        port=port,
        local_token_env=token_env,
        local_token=token,
        max_request_body_bytes=get("server", "max_request_body_bytes", DEFAULT_MAX_REQUEST_BODY_BYTES),
        allowed_origins=tuple(get("server", "allowed_origins", ())),
        allowed_hosts=tuple(get("server", "allowed_hosts", ())),
        ws_heartbeat_seconds=float(get("server", "ws_heartbeat_seconds", DEFAULT_WS_HEARTBEAT_SECONDS)),
        unix_socket=Path(unix_socket) if (unix_socket := get("server", "unix_socket")) is not None else None,
        listen_tcp=unix_socket is None or ("server", "bind") in values,
        metrics_public=get("server", "metrics_public", False),
    )
    if server.listen_tcp and not server.is_loopback and server.local_token is None:
        raise ConfigError(
            f"{where('server', 'bind')}: binding {server.bind}, which is not a loopback address, "
            "requires a token ([server] local_token_env or --local-token-env)"
        )
    limit_defaults = RuntimeLimits()
    limits = RuntimeLimits(
        **{name: get("limits", name, getattr(limit_defaults, name)) for name in KEYS["limits"]}
    )
    runtime = RuntimeOptions(
        runtime_id=get("runtime", "runtime_id"),
        display_name=get("runtime", "display_name"),
        limits=limits,
    )
    kind = get("store", "kind", "memory")
    root = get("store", "root")
    if kind == "fs" and root is None:
        raise ConfigError(f"{where('store', 'kind')}: the fs store needs a root ([store] root or --fs-root)")
    store = StoreConfig(kind=kind, root=Path(root) if root is not None else None)
    log_file = get("log", "file")
    log = LogConfig(
        level=get("log", "level", "info"),
        format=get("log", "format", "text"),
        file=Path(log_file) if log_file is not None else None,
    )
    return Config(server=server, runtime=runtime, store=store, log=log)
