"""The aiohttp application factory. The daemon and the tests build the app the same way:
``create_app(runtime, server_config)`` with objects that are already built."""

from __future__ import annotations

from aiohttp import web

from ..runtime import Runtime
from . import handlers, openapi, ws
from .frames import FrameCache
from .keys import RUNTIME, SERVER_CONFIG, WS_FRAMES, WS_SESSIONS
from .metrics import METRICS, Metrics, get_metrics
from .middleware import AccessLog, log_access, request_middleware
from .settings import ServerConfig

# A path segment that may be empty, so that `/v1/workers//input` reaches the handler and is
# answered `invalid_worker_id` (contract §1) rather than a bare 404.
WORKER = "/v1/workers/{worker_id:[^/]*}"


def create_app(
    runtime: Runtime, server_config: ServerConfig | None = None, access_log: AccessLog = log_access
) -> web.Application:
    server_config = server_config or ServerConfig()
    app = web.Application(client_max_size=server_config.max_request_body_bytes)
    app[RUNTIME] = runtime
    app[SERVER_CONFIG] = server_config
    app[WS_SESSIONS] = set()
    app[WS_FRAMES] = FrameCache()
    app[METRICS] = Metrics(app)
    # Every request is timed, checked, answered (failures with the error shape), counted and logged.
    app.middlewares.append(request_middleware(server_config, app[METRICS], access_log))
    app.on_shutdown.append(ws.close_sessions)
    app.router.add_routes(
        [
            web.get("/healthz", handlers.healthz),
            web.get("/readyz", handlers.readyz),
            web.get("/metrics", get_metrics),
            web.get("/v1/openapi.json", openapi.get_openapi),
            web.get("/v1/runtime", handlers.get_runtime),
            web.post("/v1/runtime/stop", handlers.stop_runtime),
            web.post("/v1/runtime/start", handlers.start_runtime),
            web.get("/v1/events", handlers.get_events),
            web.get("/v1/diagnostics", handlers.get_diagnostics),
            web.get("/v1/profiles", handlers.get_profiles),
            web.get("/v1/workers", handlers.list_workers),
            web.post("/v1/workers", handlers.create_worker),
            web.get(WORKER, handlers.get_worker),
            web.delete(WORKER, handlers.delete_worker),
            web.post(WORKER + "/input", handlers.send_input),
            web.post(WORKER + "/stop", handlers.stop_worker),
            web.post(WORKER + "/cancel", handlers.cancel_worker),
            web.post(WORKER + "/interrupt", handlers.interrupt_worker),
            web.get(WORKER + "/permissions", handlers.get_permissions),
            web.post(WORKER + "/permissions/{request_id}", handlers.answer_permission),
            web.get(WORKER + "/transcript", handlers.get_transcript),
            web.get(WORKER + "/events/ws", ws.worker_events),
        ]
    )
    return app
