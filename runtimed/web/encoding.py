"""How response bodies and WebSocket frames are written as JSON: in one place, so it can be
measured and swapped as a whole.

orjson, because it is an order of magnitude faster than the standard library on the shapes
runtimed sends (a 100-entry transcript page: 8 µs against 130 µs; see bench/README.md).
"""

from __future__ import annotations

import json

import orjson


def dumps(data: object) -> bytes:
    """Compact UTF-8 JSON. A lone surrogate (valid in a JSON string a client sent, not in
    UTF-8) cannot be written as UTF-8, so such a body is written with ``\\u`` escapes instead."""
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError:
        return json.dumps(data, separators=(",", ":")).encode("ascii")
