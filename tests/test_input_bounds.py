"""Client input is hostile until parsed (house style, rule 12): every parse is bounded where the
input enters. The refusals themselves are walked in ``test_errors.py``; here, the limits are
shown to be exact.
"""

from __future__ import annotations

import json

import pytest

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
