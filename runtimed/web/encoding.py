"""How JSON is read from clients and written to them: in one place, so it can be measured and
swapped as a whole.

Writing uses orjson, because it is an order of magnitude faster than the standard library on the
shapes runtimed sends (a 100-entry transcript page: 8 µs against 130 µs; see bench/README.md).

Reading uses the standard library's parser, which has the hooks a hostile body needs: every
integer literal and every object passes through a check, and nesting is measured before the
parser (which recurses once per level) sees the text. So a body is refused, never a crash, when
it nests deeper than ``MAX_JSON_DEPTH`` levels, writes an integer longer than
``MAX_JSON_INT_DIGITS`` digits (Python's own limit would give a ``ValueError`` that talks about
``sys.set_int_max_str_digits``), repeats a key in one object, or writes ``NaN``/``Infinity``.

The common body is a flat object (``{"kind": "user", "content": "…"}``), for which all that costs
more than the rest of the request's parsing: such a body is parsed by orjson first, and its
result taken only where the full parser would give the same (``_flat_object``); anything else,
and anything orjson refuses, goes the full way, which gives the error where there is one.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

#: The deepest nesting of arrays and objects a client may send.
MAX_JSON_DEPTH = 64
#: The longest integer literal a client may send, in digits (the sign aside).
MAX_JSON_INT_DIGITS = 64

TOO_DEEP = f"too deeply nested (more than {MAX_JSON_DEPTH} levels of arrays and objects)"
INT_TOO_LONG = f"integer literal longer than {MAX_JSON_INT_DIGITS} digits"


def dumps(data: object) -> bytes:
    """Compact UTF-8 JSON. A lone surrogate (valid in a JSON string a client sent, not in
    UTF-8) cannot be written as UTF-8, so such a body is written with ``\\u`` escapes instead."""
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError:
        return json.dumps(data, separators=(",", ":")).encode("ascii")


def canonical_json(value: object) -> bytes:
    """``value`` as one JSON text whatever the key order or whitespace it was written with: what
    tells two requests' bodies apart (``Idempotency-Key``, §11). A value ``dumps`` writes with
    ``\\u`` escapes (a lone surrogate) or the standard library alone can write (an integer
    beyond 64 bits) is written by the standard library; the same value always takes the same way."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("ascii")


def loads(body: bytes) -> Any:
    """Parse a client's JSON body, in the encodings ``json.loads`` reads (UTF-8, with or without
    a BOM; UTF-16 and UTF-32). Raises ``UnicodeDecodeError`` when the bytes do not decode, and
    ``ValueError`` with a message fit for the client for everything else."""
    # One opening bracket and no array: an object that may be flat (a bracket in a string only
    # sends the body the full way).
    if body.count(b"{") == 1 and b"[" not in body:
        flat = _flat_object(body)
        if flat is not None:
            return flat
    return _parse(body)


def _parse(body: bytes) -> Any:
    """``loads`` the full way: any body, every bound checked."""
    text = body.decode(json.detect_encoding(body), "surrogatepass")
    # Only a text with more than MAX_JSON_DEPTH opening brackets can nest that deep, so the
    # common small body costs two counts; the scan below is for the others.
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _nests_too_deep(text):
        raise ValueError(TOO_DEEP)
    try:
        return _DECODER.decode(text)
    except RecursionError:  # unreachable after the scan; a backstop, so never a 500
        raise ValueError(TOO_DEEP) from None


#: The values a flat object may hold. Not floats: this parser and orjson might round one differently.
_FLAT_VALUES = frozenset({str, int, bool, type(None)})


def _flat_object(body: bytes) -> dict[str, Any] | None:
    """``body``'s object when it is a flat one (no array or object inside, no float), as the full
    parser would give it; ``None`` otherwise.

    orjson reads UTF-8 only, without a BOM, refuses lone surrogates, ``NaN`` and ``Infinity``,
    and reads integers beyond 64 bits as floats (refused here): what it reads of such an object,
    the full parser reads the same, nested no deeper than one level, its integers far shorter
    than the limit. It keeps the last of a repeated key where the full parser refuses it, so the
    members are counted: each has the one colon outside strings.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict or not _FLAT_VALUES.issuperset(map(type, data.values())):
        return None
    if body.count(b":") != len(data) and _members(body) != len(data):
        return None  # a key repeated
    return data


def _members(flat_object: bytes) -> int:
    """How many members the valid JSON text of a flat object has: its colons outside strings."""
    if b"\\" in flat_object:  # escaped backslashes, then escaped quotes: left are the quotes of strings
        flat_object = flat_object.replace(b"\\\\", b"").replace(b'\\"', b"")
    return b"".join(flat_object.split(b'"')[::2]).count(b":")


# Brackets as bytes, every other byte deleted: an opening bracket is ``(``, a closing one ``)``.
_BRACKETS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[{]}"))


def _nests_too_deep(text: str) -> bool:
    """Whether the parser would go deeper than ``MAX_JSON_DEPTH`` levels on ``text``.

    Linear, and all in C: the brackets outside strings become a string of ``(`` and ``)``, and
    each pass of ``replace("()", "")`` takes one level off every nest (it removes exactly the
    innermost pairs), so more than ``MAX_JSON_DEPTH`` passes are needed only for a nest that deep.
    Closers appended at the end stand for those an unterminated body lacks. (An unmatched closer
    can only make the count too high, for a body the parser refuses at that closer anyway.)
    """
    # Outside strings a backslash is not JSON; inside, it starts a two-character escape. Taking
    # out the escaped backslashes, then the escaped quotes, leaves only the quotes of strings.
    if "\\" in text:
        text = text.replace("\\\\", "").replace('\\"', "")
    # Strings are what lies between the 1st and 2nd quote, the 3rd and 4th, …; an unterminated
    # one runs to the end. What remains is the structure.
    structure = "".join(text.split('"')[::2]).encode("utf-8", "surrogatepass")
    brackets = structure.translate(_BRACKETS, _NOT_BRACKETS)
    openers = brackets.count(b"(")
    if openers <= MAX_JSON_DEPTH:
        return False
    brackets += b")" * openers
    for _ in range(MAX_JSON_DEPTH):
        brackets = brackets.replace(b"()", b"")
        if b"(" not in brackets:
            return False
    return True


def _parse_int(literal: str) -> int:
    if len(literal) > MAX_JSON_INT_DIGITS and len(literal) - literal.startswith("-") > MAX_JSON_INT_DIGITS:
        raise ValueError(INT_TOO_LONG)
    return int(literal)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object, refused when a key repeats: which of two values counts is guesswork that a
    client, a proxy and runtimed could each do differently."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f'duplicate key "{key}"')
            seen.add(key)
    return obj


# Built once: ``json.loads`` with any option builds a new decoder (and scanner) on every call.
_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_constant=_reject_constant, object_pairs_hook=_object)
