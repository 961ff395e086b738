"""The hot request bodies' fast paths give exactly what the full ones give.

Two shortcuts sit in front of the full parsing of a request body: orjson for a flat JSON object
(``encoding._flat_object``, in front of the bounded standard-library parser) and a loader
compiled from the schema (``loaders.compile_loader``, in front of marshmallow). Each may decline
a body, which then goes the full way; what each accepts must be what the full way gives, value,
types, key order and unknown fields alike, and so the answers over HTTP (errors, ``Warning``
headers) must be the same with and without them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import Schema, ValidationError, fields, pre_load, validate

from runtimed.domain.interaction import InputKind, WorkerInput
from runtimed.web import encoding, handlers, schemas
from runtimed.web.encoding import _flat_object, _parse, loads
from runtimed.web.loaders import compile_loader

from .helpers import create_worker

INPUT = schemas.WorkerInputSchema()
LIFECYCLE = schemas.WorkerLifecycleRequestSchema()
LOADERS = {"input": (INPUT, compile_loader(INPUT)), "lifecycle": (LIFECYCLE, compile_loader(LIFECYCLE))}


def typed(value: Any) -> Any:
    """``value`` with the type of every part spelled out, so that ``1 == True`` and
    ``InputKind.USER == "user"`` compare unequal, and key order counts."""
    if isinstance(value, dict):
        return ("dict", [(typed(k), typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [typed(v) for v in value])
    if isinstance(value, WorkerInput):
        return ("WorkerInput", typed(value.kind), typed(value.content))
    return (type(value).__name__, value)


# ------------------------------------------------------------------ compiled loader


def marshmallow_load(schema: schemas.BaseSchema, data: dict[str, Any]) -> tuple[Any, list[str]] | ValidationError:
    try:
        return schema.load(data), schema.unknown_paths(data)
    except ValidationError as error:
        return error


def check_loader(which: str, data: dict[str, Any]) -> tuple[Any, list[str]] | None:
    """The compiled loader's answer, checked against marshmallow's: the same value and unknown
    fields when it loads, and a decline on everything marshmallow refuses."""
    schema, loader = LOADERS[which]
    fast = loader(data)
    full = marshmallow_load(schema, data)
    if fast is not None:
        assert not isinstance(full, ValidationError), (data, full.messages)
        assert typed(fast[0]) == typed(full[0]) and fast[1] == full[1], (data, fast, full)
    else:
        assert isinstance(full, ValidationError) or which == "never", (data, full)
    return fast


VALID_INPUTS = [
    {"kind": "user", "content": "hello"},
    {"kind": "system", "content": ""},
    {"content": "order does not matter", "kind": "user"},
    {"kind": "user", "content": "unknown fields are named", "extra": 1, "more": {"nested": True}},
    {"kind": "user", "content": "\u2028\ud800 \x00 é"},
]
INVALID_INPUTS = [
    {},
    {"kind": "user"},
    {"content": "no kind"},
    {"kind": "USER", "content": "by value, not by name"},
    {"kind": "bot", "content": "x"},
    {"kind": None, "content": "x"},
    {"kind": "user", "content": None},
    {"kind": "user", "content": 1},
    {"kind": "user", "content": True},
    {"kind": "user", "content": ["x"]},
    {"kind": "user", "content": {"text": "x"}},
    {"kind": 1, "content": "x"},
    {"kind": ["user"], "content": "x"},
]
VALID_LIFECYCLE = [{}, {"reason": "done"}, {"reason": None}, {"reason": ""}, {"reason": "x", "other": [1]}, {"x": 1}]
INVALID_LIFECYCLE = [{"reason": 1}, {"reason": False}, {"reason": ["x"]}, {"reason": {"why": "x"}}]


@pytest.mark.parametrize("data", VALID_INPUTS)
def test_the_input_loader_loads_what_marshmallow_loads(data):
    loaded = check_loader("input", data)
    assert loaded is not None  # the fast path takes every valid input body
    assert isinstance(loaded[0], WorkerInput) and type(loaded[0].kind) is InputKind


@pytest.mark.parametrize("data", INVALID_INPUTS)
def test_the_input_loader_leaves_what_marshmallow_refuses_to_marshmallow(data):
    assert check_loader("input", data) is None


@pytest.mark.parametrize("data", VALID_LIFECYCLE)
def test_the_lifecycle_loader_loads_what_marshmallow_loads(data):
    assert check_loader("lifecycle", data) is not None


@pytest.mark.parametrize("data", INVALID_LIFECYCLE)
def test_the_lifecycle_loader_leaves_what_marshmallow_refuses_to_marshmallow(data):
    assert check_loader("lifecycle", data) is None


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.sampled_from(["user", "system", "USER", ""]),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
KEYS = st.sampled_from(["kind", "content", "reason", "Kind", "content ", "extra"]) | st.text(max_size=6)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(KEYS, JSON_VALUES, max_size=4), st.sampled_from(["input", "lifecycle"]))
def test_the_compiled_loaders_agree_with_marshmallow_on_any_object(data, which):
    check_loader(which, data)


class WithValidator(schemas.BaseSchema):
    name = fields.String(required=True, validate=validate.Length(max=3))


class WithDefault(schemas.BaseSchema):
    name = fields.String(load_default="x")


class WithHook(schemas.BaseSchema):
    name = fields.String()

    @pre_load
    def _strip(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        return data


class WithInteger(schemas.BaseSchema):
    count = fields.Integer()


class NotABaseSchema(Schema):
    name = fields.String()


@pytest.mark.parametrize(
    "schema",
    [
        schemas.CreateWorkerRequestSchema(),
        WithValidator(),
        WithDefault(),
        WithHook(),
        WithInteger(),
        WithInteger(many=True),
    ],
    ids=lambda schema: type(schema).__name__,
)
def test_a_schema_the_loader_cannot_load_exactly_is_refused_when_compiling(schema):
    with pytest.raises(TypeError, match="compile_loader"):
        compile_loader(schema)


# ------------------------------------------------------------------ flat JSON


def check_flat(body: bytes) -> Any:
    """``_flat_object``'s answer, checked against the full parser: what it reads, the full
    parser reads the same (types and key order included); ``loads`` gives the full parser's."""
    flat = _flat_object(body)
    try:
        full: Any = _parse(body)
    except ValueError as error:  # UnicodeDecodeError included
        full = error
    if flat is not None:
        assert not isinstance(full, ValueError), (body, full)
        assert typed(flat) == typed(full), (body, flat, full)
    try:
        assert typed(loads(body)) == typed(full), body
    except ValueError as error:
        assert isinstance(full, ValueError) and type(error) is type(full) and str(error) == str(full), body
    return flat


FLAT_BODIES = [
    b'{"kind":"user","content":"benchmark input"}',
    b' { "kind" : "user" , "content" : "spaces" } \n',
    b'{"kind": "user", "content": "colons: in: strings"}',
    b'{"content":"a \\" quote, a \\\\ backslash and a \\\\\\" both","kind":"user"}',
    b'{"content":"\\u00e9\\ud83d\\ude00 escapes","kind":"system"}',
    '{"content":"é raw UTF-8 \u2028","kind":"user"}'.encode(),
    b'{"a":1,"b":-0,"c":true,"d":false,"e":null,"f":18446744073709551615,"g":-9223372036854775808}',
    b"{}",
    b'{"":""}',
]
NOT_FLAT_BODIES = [
    b'{"a":1,"a":2}',  # a repeated key: the full parser refuses it, orjson keeps the last
    b'{"a":"x:y","a":"z"}',
    b'{"a\\"":1,"a\\"":2}',
    b'{"a":"\\\\","a":"\\\\"}',
    b'{"a":1.5}',  # floats go the full way
    b'{"a":1e400}',
    b'{"a":18446744073709551616}',  # beyond 64 bits
    b'{"a":' + b"9" * 65 + b"}",  # beyond the digit limit: refused by the full parser
    b'{"a":NaN}',
    b'{"a":Infinity}',
    b'{"a":"\\ud800"}',  # a lone surrogate: the full parser keeps it
    b'{"a":"\xed\xa0\x80"}',  # an encoded surrogate: read with surrogatepass
    b'\xef\xbb\xbf{"a":"BOM"}',
    '{"a":"UTF-16"}'.encode("utf-16"),
    '{"a":"UTF-16-LE"}'.encode("utf-16-le"),
    '{"a":"UTF-32"}'.encode("utf-32"),
    b'{"a":"\xff"}',  # not UTF-8
    b'{"a":"raw \x01 control"}',
    b'{"a":[1]}',
    b'{"a":{"b":1}}',
    b'["a"]',
    b'"a"',
    b"1",
    b"null",
    b'{"a":1',
    b'{"a":1}}',
    b'{"a":1} x',
    b'{"a":01}',
    b"",
    b"   ",
]


@pytest.mark.parametrize("body", FLAT_BODIES)
def test_a_flat_object_is_read_by_orjson_as_the_full_parser_reads_it(body):
    assert check_flat(body) is not None


@pytest.mark.parametrize("body", NOT_FLAT_BODIES)
def test_anything_but_a_flat_object_goes_the_full_way(body):
    assert check_flat(body) is None


FLAT_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10))


@st.composite
def json_texts(draw: st.DrawFn) -> bytes:
    """JSON texts of (mostly) flat objects, written in the many ways clients write them, with
    repeated keys, stray bytes and other mistakes mixed in."""
    members = draw(st.lists(st.tuples(st.text(max_size=5), FLAT_SCALARS | JSON_VALUES), max_size=5))
    if members and draw(st.booleans()):
        members.append(draw(st.sampled_from(members)))  # a key twice
    ensure_ascii = draw(st.booleans())
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")]))
    parts = [
        json.dumps(key, ensure_ascii=ensure_ascii) + separators[1] + json.dumps(value, ensure_ascii=ensure_ascii)
        for key, value in members
    ]
    text = "{" + separators[0].join(parts) + "}"
    body = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.binary(max_size=2)) + body[at:]
    return body


@settings(max_examples=600, deadline=None)
@given(json_texts())
def test_the_flat_object_path_agrees_with_the_full_parser_on_any_text(body):
    check_flat(body)


# ------------------------------------------------------------------ over HTTP


@pytest.fixture
def full_way(monkeypatch):
    """Turn both shortcuts off (while set) so that every body goes the full way."""

    class Switch:
        def on(self) -> None:
            monkeypatch.setattr(encoding, "_flat_object", lambda body: None)
            monkeypatch.setattr(handlers, "_input_loader", None)
            monkeypatch.setattr(handlers, "_lifecycle_loader", None)

        def off(self) -> None:
            monkeypatch.undo()

    return Switch()


HTTP_BODIES = [
    b'{"kind":"user","content":"hi"}',
    b'{"kind": "user", "content": "hi", "extra": 1, "\\u00e9\\n": {"deep": [1]}}',
    b'{"kind":"user","content":"hi","zzz":"unknown, on the fast path"}',
    b'{"kind":"user","content":"   "}',  # blank: the Runtime's error
    b'{"kind":"bot","content":"hi"}',
    b'{"kind":"user","content":null}',
    b'{"kind":"user"}',
    b'{"kind":"user","content":"a","content":"b"}',
    b'{"kind":"user","content":1.5}',
    b'{"kind":"user","content":"\\ud800"}',
    b'{"kind":"user","content":"x"',
    b'["kind","user"]',
    b"null",
    b"",
    b"\xff",
    '{"kind":"user","content":"UTF-16"}'.encode("utf-16"),
]
LIFECYCLE_BODIES = [
    b"",
    b"{}",
    b'{"reason":"done"}',
    b'{"reason":null,"x":1}',
    b'{"reason":1}',
    b'{"reason":"a","reason":"b"}',
]


async def answer(client, path: str, body: bytes) -> tuple[int, list[str], Any]:
    response = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    payload = await response.json()
    if response.status == 200:
        payload = {"status": payload["ack"]["status"]}  # the worker, the sequence and the ids differ
    return response.status, response.headers.getall("Warning", []), payload


@pytest.mark.parametrize("body", HTTP_BODIES)
async def test_input_answers_are_the_same_with_and_without_the_fast_paths(client, full_way, body):
    path = f"/v1/workers/{(await create_worker(client))['worker_id']}/input"
    fast = await answer(client, path, body)
    full_way.on()
    assert await answer(client, path, body) == fast


@pytest.mark.parametrize("body", LIFECYCLE_BODIES)
@pytest.mark.parametrize("action", ["stop", "cancel"])
async def test_lifecycle_answers_are_the_same_with_and_without_the_fast_paths(client, full_way, body, action):
    fast = await answer(client, f"/v1/workers/{(await create_worker(client))['worker_id']}/{action}", body)
    full_way.on()
    assert await answer(client, f"/v1/workers/{(await create_worker(client))['worker_id']}/{action}", body) == fast
