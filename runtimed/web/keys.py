"""Typed keys of the aiohttp application's state (no module globals hold state)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ..runtime import Runtime
from .frames import FrameCache
from .settings import ServerConfig

if TYPE_CHECKING:
    from .ws import ObservationSession  # ws imports these keys

RUNTIME = web.AppKey("runtime", Runtime)
SERVER_CONFIG = web.AppKey("server_config", ServerConfig)
#: Open observation sessions (``ws.ObservationSession``), counted against
#: ``max_observation_sessions`` from before their upgrade, and closed on shutdown.
WS_SESSIONS: web.AppKey[set[ObservationSession]] = web.AppKey("ws_sessions", set)
#: Encoded event frames shared by every session (``frames.FrameCache``).
WS_FRAMES = web.AppKey("ws_frames", FrameCache)
