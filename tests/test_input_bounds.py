"""Client input is hostile until parsed (house style, rule 12): every parse is bounded where the
input enters, and what reaches the log is escaped. The refusals themselves are walked in
``test_errors.py``; here, the limits are shown to be exact and the log to stay one line a record.
"""

from __future__ import annotations

import json
import logging

import pytest
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestPayloadError

from runtimed.daemon.logs import JsonFormatter, MalformedHttpFilter, TextFormatter, escape_controls
from runtimed.web.encoding import MAX_JSON_DEPTH, MAX_JSON_INT_DIGITS, loads

from .helpers import create_worker

TOO_DEEP = "invalid JSON request body: too deeply nested (more than 64 levels of arrays and objects)"


def nested(depth: int) -> str:
    """``depth`` levels of arrays and objects, alternating, around a number."""
    opening = "".join("[" if level % 2 else '{"a": ' for level in range(depth))
    closing = "".join("]" if level % 2 else "}" for level in reversed(range(depth)))
    return opening + "1" + closing


# --------------------------------------------------------------- JSON bodies


def test_the_limits_are_those_of_the_contract():
    assert (MAX_JSON_DEPTH, MAX_JSON_INT_DIGITS) == (64, 64)


@pytest.mark.parametrize("depth", [1, 2, 63, 64])
def test_nesting_up_to_64_levels_is_parsed(depth):
    assert loads(nested(depth).encode()) == json.loads(nested(depth))


@pytest.mark.parametrize("depth", [65, 66, 1000, 100_000])
def test_nesting_deeper_than_64_levels_is_refused(depth):
    with pytest.raises(ValueError, match=r"^too deeply nested \(more than 64 levels of arrays and objects\)$"):
        loads(nested(depth).encode())


@pytest.mark.parametrize(
    "body",
    [
        # Brackets inside strings are text, however many, escaped quotes and backslashes included.
        '{"s": "' + "[{" * 1000 + '"}',
        '{"s": "\\"' + "[" * 1000 + '"}',
        '{"s": "\\\\\\"' + "{" * 1000 + '"}',
        '{"s": "\\u005b' + "[" * 1000 + '", "t": ["' + "]" * 1000 + '"]}',
        # Many containers side by side are not deep.
        "[" + ", ".join(["[[]]"] * 1000) + "]",
    ],
    ids=["brackets", "escaped-quote", "escaped-backslash-quote", "unicode-escape", "wide"],
)
def test_brackets_that_do_not_nest_do_not_count(body):
    assert loads(body.encode()) == json.loads(body)


@pytest.mark.parametrize(
    "body",
    [
        # A string that ends in an escaped backslash ends there: what follows nests.
        '{"s": "x\\\\", "n": ' + nested(64) + "}",
        '["\\\\", ' + "[" * 64 + "]" * 64 + "]",
    ],
    ids=["after-escaped-backslash", "after-string-in-array"],
)
def test_nesting_after_a_string_counts(body):
    with pytest.raises(ValueError, match="too deeply nested"):
        loads(body.encode())


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
def test_nesting_is_bounded_in_every_encoding_the_parser_reads(encoding):
    assert loads(nested(64).encode(encoding)) == json.loads(nested(64))
    with pytest.raises(ValueError, match="too deeply nested"):
        loads(("[" * 100_000).encode(encoding))


def test_an_unterminated_string_full_of_brackets_is_not_mistaken_for_nesting():
    with pytest.raises(ValueError, match="Unterminated string"):
        loads(b'{"s": "' + b"[" * 1000)


@pytest.mark.parametrize("literal", ["1" * 64, "-" + "9" * 64, "0", "-0", "1" * 64 + ".5", "1" * 1000 + "e-999"])
def test_numbers_within_the_limit_are_parsed(literal):
    assert loads(f'{{"n": {literal}}}'.encode()) == json.loads(f'{{"n": {literal}}}')


@pytest.mark.parametrize("literal", ["1" * 65, "-" + "9" * 65, "1" * 5000, "1" * 100_000])
def test_integer_literals_longer_than_64_digits_are_refused(literal):
    with pytest.raises(ValueError, match=r"^integer literal longer than 64 digits$"):
        loads(f'{{"n": [{literal}]}}'.encode())


@pytest.mark.parametrize(
    ("body", "key"),
    [('{"a": 1, "a": 1}', "a"), ('{"x": [{"b": 1, "c": 2, "b": 3}]}', "b"), ('{"\\u0061": 1, "a": 2}', "a")],
)
def test_duplicate_keys_are_refused_naming_the_key(body, key):
    with pytest.raises(ValueError, match=f'^duplicate key "{key}"$'):
        loads(body.encode())


def test_parsed_objects_keep_their_keys_in_order():
    assert list(loads(b'{"b": 1, "a": {"d": 2, "c": 3}}')) == ["b", "a"]


async def test_a_body_at_the_limits_is_accepted(client):
    worker = await create_worker(client)
    body = {"kind": "user", "content": "[" * 5000, "n": int("9" * 64), "deep": json.loads(nested(63))}
    response = await client.post(f"/v1/workers/{worker['worker_id']}/input", data=json.dumps(body))
    assert response.status == 200
    warnings = response.headers.getall("Warning")
    assert warnings == ['299 runtimed "unknown field: n"', '299 runtimed "unknown field: deep"']


async def test_a_body_one_level_too_deep_is_refused(client):
    worker = await create_worker(client)
    body = '{"kind": "user", "content": "x", "deep": ' + nested(64) + "}"
    response = await client.post(f"/v1/workers/{worker['worker_id']}/input", data=body)
    assert response.status == 400
    assert await response.json() == {"error": {"code": "invalid_json", "message": TOO_DEEP}}


# ------------------------------------------------------------- query strings


async def test_query_integers_of_18_digits_are_accepted(client):
    worker = await create_worker(client)
    response = await client.get(f"/v1/workers/{worker['worker_id']}/transcript?start=" + "9" * 18)
    assert response.status == 200
    assert (await response.json())["transcript"]["start"] == int("9" * 18)
    response = await client.get("/v1/events?cursor=" + "0" * 17 + "1")
    assert response.status == 200


# ----------------------------------------------------------------------- log


def record(message: str, *args: object, name: str = "runtimed.access", exc: BaseException | None = None):
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord(name, logging.INFO, __file__, 1, message, args, exc_info)


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain /v1/workers 200", "plain /v1/workers 200"),
        ("a\nb\rc\td", r"a\nb\rc\td"),
        ("\x00\x1b[31m\x1f\x7f", r"\x00\x1b[31m\x1f\x7f"),
        ("\x80\x85\x9f\xa0é", r"\x80\x85\x9f" + "\xa0é"),
        ("\u2028\u2029\u2027", r"\u2028\u2029" + "\u2027"),
        ("back\\slash \\n", r"back\\slash \\n"),
        ("\ud800 lone surrogate", r"\ud800 lone surrogate"),
    ],
)
def test_escape_controls(raw, escaped):
    assert escape_controls(raw) == escaped


def test_escaping_is_reversible_so_nothing_is_lost():
    raw = "".join(chr(code) for code in range(0xA0)) + "\u2028\u2029\\"
    assert escape_controls(raw).encode("ascii").decode("unicode_escape") == raw


def test_a_text_record_is_one_line_whatever_the_client_sent():
    line = TextFormatter().format(record("%s %s %d", "GET", "/v1/workers/a\n2026-01-01 INFO x: FORGED\u2028", 401))
    assert "\n" not in line and "\u2028" not in line
    assert line.endswith(r" INFO runtimed.access: GET /v1/workers/a\n2026-01-01 INFO x: FORGED\u2028 401")


def test_a_text_record_keeps_the_format_of_before():
    entry = record("ok %d", 1)
    assert TextFormatter().format(entry) == logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s").format(
        entry
    )


def test_a_traceback_is_indented_so_no_line_of_it_can_pass_for_a_record():
    try:
        raise KeyError("x\n2026-01-01 00:00:00,000 INFO runtimed.access: FORGED\x1b[2J")
    except KeyError as error:
        text = TextFormatter().format(record("unexpected error in %s", "GET /x\n", exc=error))
    first, *rest = text.split("\n")
    assert first.endswith(r"runtimed.access: unexpected error in GET /x\n")
    assert rest[0] == "  Traceback (most recent call last):"
    assert all(line.startswith("  ") for line in rest)
    assert "\x1b" not in text and r"\x1b[2J" in text


def test_json_records_are_one_line_and_keep_the_value_as_sent():
    line = JsonFormatter().format(record("%s", "/a\n\u2028", exc=None))
    assert "\n" not in line
    assert json.loads(line)["message"] == "/a\n\u2028"


def filtered(message: str, *args: object, exc: BaseException, level: int = logging.ERROR) -> logging.LogRecord | None:
    exc_info = (type(exc), exc, exc.__traceback__)
    entry = logging.LogRecord("aiohttp.server", level, __file__, 1, message, args, exc_info)
    return entry if MalformedHttpFilter().filter(entry) else None


def test_a_malformed_request_becomes_one_warning_line():
    exc = BadHttpMessage("Invalid header token:\n\n  b'Bad\\x1bHeader'\n     ^")
    entry = filtered("Error handling request from %s", "127.0.0.1", exc=exc)
    assert entry is not None
    assert (entry.levelno, entry.levelname, entry.exc_info) == (logging.WARNING, "WARNING", None)
    assert entry.getMessage() == "malformed HTTP request from 127.0.0.1: Invalid header token: b'Bad\\x1bHeader'"
    assert "\n" not in TextFormatter().format(entry)


def test_an_undecodable_body_becomes_one_warning_line():
    exc = RequestPayloadError("400, message:\n  Can not decode content-encoding: gzip")
    exc.__cause__ = BadHttpMessage("Can not decode content-encoding: gzip")
    entry = filtered("Unhandled exception", exc=exc)
    assert entry is not None and entry.levelno == logging.WARNING and entry.exc_info is None
    assert entry.getMessage() == "malformed HTTP request: Can not decode content-encoding: gzip"


def test_a_malformed_request_is_not_logged_when_only_errors_are():
    exc_info = (BadHttpMessage, BadHttpMessage("x"), None)
    entry = logging.LogRecord(
        "aiohttp.server", logging.ERROR, __file__, 1, "Error handling request from %s", ("::1",), exc_info
    )
    assert not MalformedHttpFilter(logging.ERROR).filter(entry)


def test_a_quieter_report_of_aiohttp_stays_as_quiet():
    entry = filtered("Error handling request from %s", "127.0.0.1", exc=BadHttpMessage("x"), level=logging.DEBUG)
    assert entry is not None and entry.levelno == logging.DEBUG and entry.exc_info is None


def test_other_failures_keep_their_level_and_traceback():
    try:
        raise ZeroDivisionError("a bug")
    except ZeroDivisionError as error:
        entry = filtered("Error handling request from %s", "127.0.0.1", exc=error)
    assert entry is not None and entry.levelno == logging.ERROR
    assert entry.exc_info is not None and entry.exc_info[0] is ZeroDivisionError
    assert entry.getMessage() == "Error handling request from 127.0.0.1"
