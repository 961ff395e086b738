"""Typed keys of the aiohttp application's state (no module globals hold state)."""

from __future__ import annotations

from aiohttp import web

from ..config import ServerConfig
from ..runtime import Runtime

RUNTIME = web.AppKey("runtime", Runtime)
SERVER_CONFIG = web.AppKey("server_config", ServerConfig)
