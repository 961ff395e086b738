#!/usr/bin/env python3
"""Start ``runtimed`` with speed-ups applied (or taken away) from outside, to measure each one.

    python bench/runtimed_variant.py [--uvloop] [--orjson | --stdlib-json] [--no-access-log] \\
        serve --bind 127.0.0.1:0

Nothing in runtimed's source changes:

- ``--uvloop`` installs uvloop's event loop policy before the CLI's ``asyncio.run``;
- ``--orjson`` / ``--stdlib-json`` replace the response-body encoder ``dumps`` (of
  ``runtimed.web.encoding``, or of ``runtimed.web.errors`` in trees from before it existed) in
  every runtimed module that imported it by name, with one based on orjson / on the standard
  library's ``json`` (compact, non-ASCII kept, a lone surrogate escaped), returning what the
  original returns (``str`` or ``bytes``);
- ``--no-access-log`` raises the per-request loggers (``aiohttp.access`` and ``runtimed.access``)
  above INFO, so no access line is formatted or written.

The remaining arguments go to ``runtimed`` unchanged. Use it with
``rest_bench.py --server NAME="python bench/runtimed_variant.py --uvloop serve"``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

# Import runtimed from this checkout, as ``python -m runtimed`` run from its root does.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FLAGS = ("--uvloop", "--orjson", "--stdlib-json", "--no-access-log")
ACCESS_LOGGERS = ("aiohttp.access", "runtimed.access")


def orjson_text(data: object) -> str:
    import orjson

    try:
        return orjson.dumps(data).decode("utf-8")
    except orjson.JSONEncodeError:  # lone surrogates, integers beyond 64 bits
        return stdlib_text(data)


def stdlib_text(data: object) -> str:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(data, separators=(",", ":"))
    return text


def patch_dumps(encode: Callable[[object], str]) -> list[str]:
    """Replace runtimed's ``dumps`` wherever it was imported by name; return the modules patched."""
    import runtimed.web.app  # noqa: F401  (imports every web module, so each has bound its dumps)

    home = "runtimed.web.encoding" if importlib.util.find_spec("runtimed.web.encoding") else "runtimed.web.errors"
    original = importlib.import_module(home).dumps
    returns_bytes = isinstance(original({}), bytes)

    def dumps(data: object) -> str | bytes:
        text = encode(data)
        return text.encode("utf-8") if returns_bytes else text

    patched = [
        name
        for name, module in list(sys.modules.items())
        if name.startswith("runtimed") and getattr(module, "dumps", None) is original
    ]
    if not patched:
        raise SystemExit("runtimed_variant: found no runtimed module using dumps; cannot replace the encoder")
    for name in patched:
        sys.modules[name].dumps = dumps
    return patched


def main() -> None:
    args = sys.argv[1:]
    flags = set()
    while args and args[0] in FLAGS:
        flags.add(args.pop(0))
    if {"--orjson", "--stdlib-json"} <= flags:
        raise SystemExit("runtimed_variant: --orjson and --stdlib-json exclude each other")

    if "--uvloop" in flags:
        import uvloop

        uvloop.install()
    if "--orjson" in flags:
        patch_dumps(orjson_text)
    if "--stdlib-json" in flags:
        patch_dumps(stdlib_text)
    if "--no-access-log" in flags:
        # runtimed configures the root logger later; a level set on the logger itself still wins.
        for name in ACCESS_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)

    from runtimed.cli import main as runtimed_main

    runtimed_main(args=args, prog_name="runtimed")


if __name__ == "__main__":
    main()
