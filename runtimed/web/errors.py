"""HTTP errors: the one ``code -> status`` table, the error body, and the answer to a failure.

The Runtime raises ``RuntimedError`` subclasses that know nothing of HTTP; this module is the
only place that decides which status each code gets. Errors that only the HTTP layer can
produce (a body that is not JSON, a missing token, an unknown route) are ``RuntimedError``
subclasses too, so every error leaves the process through the same door with the same shape:
``{"error": {"code": …, "message": …}}``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..domain.errors import RuntimedError
from .encoding import dumps
from .keys import SERVER_CONFIG

log = logging.getLogger("runtimed.web")


class InvalidJson(RuntimedError):
    code = "invalid_json"


class InvalidQuery(RuntimedError):
    code = "invalid_query"


class Unauthorized(RuntimedError):
    code = "unauthorized"

    def __init__(self) -> None:
        super().__init__("missing or invalid local Runtime bearer token")


class OriginNotAllowed(RuntimedError):
    code = "origin_not_allowed"


class HostNotAllowed(RuntimedError):
    code = "host_not_allowed"


class NotFound(RuntimedError):
    code = "not_found"


class MethodNotAllowed(RuntimedError):
    code = "method_not_allowed"

    def __init__(self, message: str, allowed: AbstractSet[str]) -> None:
        super().__init__(message)
        self.allowed = allowed


class PayloadTooLarge(RuntimedError):
    code = "payload_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds the limit of {limit} bytes")


class RequestTimeout(RuntimedError):
    """The body did not arrive in time; the answer closes the connection."""

    code = "request_timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the request body did not arrive within {seconds:g} s")


class UpgradeRequired(RuntimedError):
    code = "upgrade_required"


class TooManySessions(RuntimedError):
    code = "too_many_sessions"

    def __init__(self, limit: int) -> None:
        super().__init__(f"too many observation sessions: at most {limit} may be open at once")


class NotReady(RuntimedError):
    code = "not_ready"


class TooManyConnections(RuntimedError):
    """Sent on a connection refused at the connection cap, before its request is even read."""

    code = "too_many_connections"

    def __init__(self) -> None:
        super().__init__("too many open connections; try again later")


class InternalError(RuntimedError):
    code = "internal_error"

    def __init__(self) -> None:
        super().__init__("internal error; the daemon's log has the details")


STATUS_BY_CODE: dict[str, int] = {
    "invalid_json": 400,
    "invalid_query": 400,
    "invalid_worker_id": 400,
    "invalid_request": 400,
    "limit_too_large": 400,
    "wrong_runtime": 400,
    # In the contract, but never raised: an observation cursor (`wo_` + a sequence) names no runtime.
    "wrong_runtime_cursor": 400,
    "unauthorized": 401,
    "origin_not_allowed": 403,
    "host_not_allowed": 403,
    "not_found": 404,
    "worker_not_found": 404,
    "permission_not_found": 404,
    "method_not_allowed": 405,
    "request_timeout": 408,
    "runtime_stopped": 409,
    "worker_not_executing": 409,
    "worker_running": 409,
    "idempotency_key_reused": 409,
    "payload_too_large": 413,
    "upgrade_required": 426,
    "too_many_sessions": 429,
    "input_queue_full": 429,
    "worker_limit_reached": 429,
    "store_io": 500,
    "store_missing": 500,
    "store_corrupt": 500,
    "state_poisoned": 500,
    "internal_error": 500,
    "not_ready": 503,
    "too_many_connections": 503,
}


def error_body(error: RuntimedError) -> dict[str, dict[str, str]]:
    return {"error": {"code": error.code, "message": error.message}}


def error_response(error: RuntimedError) -> web.Response:
    status = STATUS_BY_CODE.get(error.code, 500)
    response = web.Response(status=status, body=dumps(error_body(error)), content_type="application/json")
    if isinstance(error, MethodNotAllowed):
        response.headers["Allow"] = ", ".join(sorted(error.allowed))
    if isinstance(error, Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="runtimed"'
    if isinstance(error, RequestTimeout):
        # The rest of a late body may still be on its way: the connection cannot carry a next request.
        response.force_close()
    return response


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> RuntimedError | None:
    if isinstance(exc, web.HTTPNotFound):
        return NotFound(f"no route for {request.method} {request.path}")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(f"method {request.method} is not allowed on {request.path}", exc.allowed_methods)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge(request.app[SERVER_CONFIG].max_request_body_bytes)
    return None


def http_error_reason(error: BaseException) -> str:
    """What aiohttp found wrong with a request, on one line: its parser's message without the
    status prefix and the caret line that points into the raw bytes."""
    cause = error if isinstance(error, HttpProcessingError) else error.__cause__
    text = cause.message if isinstance(cause, HttpProcessingError) else str(error)
    lines = (line.strip() for line in text.splitlines())
    return " ".join(line for line in lines if line.strip("^~ "))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


#: The status logged and counted for a request whose client went away before its answer (nginx's).
CLIENT_CLOSED_REQUEST = 499


def failure_response(request: web.Request, failure: Exception) -> web.Response:
    """The answer to a request whose handling raised ``failure``: the typed error body, never an
    HTML page or a traceback. An ``HTTPException`` that is not an error runtimed types (a
    redirect) is raised again, for aiohttp to send."""
    if isinstance(failure, RuntimedError):
        return error_response(failure)
    if isinstance(failure, web.HTTPException):
        typed = _from_http_exception(request, failure)
        if typed is None:
            raise failure
        return error_response(typed)
    if isinstance(failure, ConnectionResetError):
        # The client went away mid-request (a body cut off): nothing went wrong here, and there
        # is no one to read an answer. nginx's 499 says so in the access log and the metrics.
        log.info("client went away during %s %s", request.method, request.path)
        return web.Response(status=CLIENT_CLOSED_REQUEST)
    log.error("unexpected error in %s %s", request.method, request.path, exc_info=failure)
    return error_response(InternalError())
