"""runtimed: a local host for long-lived AI agent workers.

The package is layered: domain values (identity, catalog, interaction, observation,
management) <- store <- Runtime <- web (aiohttp) <- cli (click). Nothing below ``web``
imports aiohttp, click or marshmallow.
"""

__version__ = "0.1.0"
