"""``python -m runtimed.web``: print the OpenAPI document of a default app.

``make openapi`` writes it to docs/openapi.json; a test fails when that copy is stale.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from ..runtime import Runtime
from ..store import MemoryStore
from .app import create_app
from .openapi import build_openapi, render_openapi


async def document() -> dict[str, Any]:
    """The OpenAPI document of an app over a fresh memory runtime."""
    runtime = await Runtime.open(MemoryStore())
    try:
        return build_openapi(create_app(runtime))
    finally:
        await runtime.close()


def main() -> None:
    sys.stdout.write(render_openapi(asyncio.run(document())))


if __name__ == "__main__":
    main()
