"""The one middleware every request passes, and the access log it writes.

In order, for every request: it is timed; the security checks run (``security.SecurityChecks``:
Origin, Host, token, before the handler and so before a route's answer); the handler answers;
any failure becomes the typed error body (``errors.failure_response``); then the request is
counted (``metrics.Metrics``) and its access line written, whatever its outcome.

This was three middlewares (observation, errors, security). Each one costs an awaited call and
a frame per request, and each looked up what it needed in the app on every request; as one
closure, built once per app, a request costs one of each and no lookups.

The access line is ``METHOD PATH STATUS DURATIONms`` with the method, path, status, duration
and route as structured fields (JSON lines carry them as keys). ``log_access`` writes it as a
record of the ``runtimed.access`` logger; whoever configures logging may give ``create_app``
another ``AccessLog`` that writes the same line more directly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from .errors import Handler, failure_response
from .metrics import Metrics, route_of
from .security import SecurityChecks
from .settings import ServerConfig

ACCESS_LOGGER = "runtimed.access"
access_logger = logging.getLogger(ACCESS_LOGGER)

#: Writes the access line of one request: method, path, status, duration in seconds, route.
AccessLog = Callable[[str, str, int, float, str], None]

#: The access line's message, from method, path, status and milliseconds.
ACCESS_FORMAT = "%s %s %d %.1fms"


def access_fields(method: str, path: str, status: int, seconds: float, route: str) -> dict[str, object]:
    """The access line's structured fields (JSON lines carry them as keys)."""
    return {"method": method, "path": path, "status": status, "duration_ms": round(seconds * 1000, 3), "route": route}


def log_access(method: str, path: str, status: int, seconds: float, route: str) -> None:
    """The access line as an INFO record of the ``runtimed.access`` logger."""
    if access_logger.isEnabledFor(logging.INFO):
        access_logger.info(
            ACCESS_FORMAT,
            method,
            path,
            status,
            seconds * 1000,
            extra=access_fields(method, path, status, seconds, route),
        )


def request_middleware(config: ServerConfig, metrics: Metrics, access_log: AccessLog = log_access) -> Middleware:
    """The middleware of an app with ``config``, counting into ``metrics``."""
    check = SecurityChecks(config).check
    record = metrics.record
    clock = time.perf_counter

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = clock()
        status = 500
        try:
            try:
                check(request)
                response = await handler(request)
            except Exception as failure:
                response = failure_response(request, failure)
            status = response.status
            return response
        except web.HTTPException as exc:  # not an error: a redirect, say (none of runtimed's routes sends one)
            status = exc.status
            raise
        finally:
            seconds = clock() - started
            route = route_of(request)
            record(request.method, route, status, seconds)
            access_log(request.method, request.path, status, seconds, route)

    return middleware
