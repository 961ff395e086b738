"""runtimed: a local host for long-lived AI agent workers.

The package is layered: ``domain`` (values and typed errors) <- ``store`` <- ``runtime`` (the
Runtime and its observation bus) <- ``web`` (aiohttp, marshmallow) <- ``daemon`` (config,
logging, serving) <- ``cli`` (click); ``agents`` (agent processes over ACP, and the built-in
agents) sits beside ``web``, above ``runtime``. One exception: the web app takes its ``ServerConfig``
from ``daemon.config``. Nothing below ``web`` imports aiohttp, click or marshmallow.
"""

__version__ = "0.1.0"
