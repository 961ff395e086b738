"""Where the daemon is, the token to show it, and the one-line failures of reaching it.

``resolve`` turns the connection options (flags, then environment, then defaults) into a
``Connection``; a problem with them is a ``UsageProblem`` (exit status 2). Everything that goes
wrong once the client talks to the daemon is a ``ClientFailure`` (exit status 1) whose message is
the one line the user reads: never a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from yarl import URL

DEFAULT_URL = "http://127.0.0.1:7420"
URL_ENV = "RUNTIMED_URL"
SOCKET_ENV = "RUNTIMED_SOCKET"
TOKEN_ENV = "RUNTIMED_TOKEN"


class UsageProblem(Exception):
    """A connection option that cannot be used (a bad URL, an unset token variable): exit 2."""


class ClientFailure(Exception):
    """The daemon could not be reached, or it said no: exit 1, the message is the one line."""


class Unreachable(ClientFailure):
    """Nobody answered at the address (refused, no such socket, timed out, connection lost)."""


class ApiError(ClientFailure):
    """The API answered with its error body: ``status``, ``code`` and ``message`` as sent."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class Unauthorized(ApiError):
    """401: no token where one is needed, or the wrong one; the message says which and what to do."""

    def __init__(self, message: str, explanation: str) -> None:
        super().__init__(401, "unauthorized", message)
        self.args = (explanation,)


class BadAnswer(ClientFailure):
    """The daemon answered something that is not the contract's shape (a proxy's page, say)."""


@dataclass(frozen=True, slots=True)
class Connection:
    """How to reach one daemon. With ``unix_socket`` the connection goes to the socket and
    ``url`` only supplies the ``Host`` header and the path prefix."""

    url: URL
    unix_socket: str | None = None
    token: str | None = field(default=None, repr=False)
    #: Where the token came from (``$RUNTIMED_TOKEN``), for messages; never the token itself.
    token_source: str | None = None

    @property
    def where(self) -> str:
        """The address as messages name it: the URL, or ``unix:<path>``."""
        return f"unix:{self.unix_socket}" if self.unix_socket is not None else str(self.url)

    def endpoint(self, path: str) -> URL:
        """The URL of an API path such as ``/v1/runtime`` (path segments already quoted)."""
        return self.url.with_path(self.url.path.rstrip("/") + path, encoded=True)


def resolve(
    url: str | None,
    unix_socket: str | None,
    token_env: str | None,
    environ: Mapping[str, str],
) -> Connection:
    """The connection the options ask for: a flag, else its environment variable, else the
    default. A socket given as a flag wins over any URL; one from ``$RUNTIMED_SOCKET`` wins over
    ``$RUNTIMED_URL`` and the default, not over a ``--url`` the user typed."""
    if unix_socket is None and url is None:
        unix_socket = environ.get(SOCKET_ENV) or None
    raw_url = url if url is not None else environ.get(URL_ENV) or DEFAULT_URL
    try:
        parsed = URL(raw_url)
    except (ValueError, TypeError):
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        source = "--url" if url is not None else f"${URL_ENV}"
        raise UsageProblem(f"{source} must be an http:// or https:// URL with a host, not {raw_url!r}")
    if parsed.query_string or parsed.fragment:
        raise UsageProblem(f"the daemon's URL takes no query or fragment: {raw_url!r}")
    if unix_socket == "":
        raise UsageProblem("--unix-socket must not be empty")
    if token_env is not None:
        token = environ.get(token_env, "")
        if not token:
            raise UsageProblem(f"--token-env names {token_env}, which is unset or empty")
        return Connection(parsed, unix_socket, token, f"${token_env}")
    default_token = environ.get(TOKEN_ENV) or None
    return Connection(parsed, unix_socket, default_token, f"${TOKEN_ENV}" if default_token else None)
