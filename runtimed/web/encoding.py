"""How response bodies and WebSocket frames are written as JSON: in one place, so it can be
measured and swapped as a whole."""

from __future__ import annotations

import json


def dumps(data: object) -> str:
    """The JSON text of a response body: compact, and readable non-ASCII where it can be."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (valid in a JSON string, not in UTF-8) came in; escape it going out.
        text = json.dumps(data, separators=(",", ":"))
    return text
