"""Request bodies loaded by functions compiled from their schemas: the loading side of
``schemas.compile_dumper``.

marshmallow's generic ``load`` costs about 8 µs for the two-field input body, more than the rest
of the request's own checks together, and naming the unknown keys another microsecond. A loader
compiled here walks the schema's own fields, so the schema stays the one description of the
shape, but it only takes what it loads exactly as marshmallow does: a flat object of strings and
enums whose every required field is there with the right type. For anything else (a field
missing, a wrong type, a null where none is allowed) it returns ``None``, and the caller loads
the object with the schema, which gives the error, so errors and ``Warning`` headers stay
marshmallow's. A schema with anything else (nested schemas, validators, defaults, hooks of its
own, other field types) is refused when the loader is compiled. ``tests/test_loaders.py``
checks the two against each other on valid and invalid bodies.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

from marshmallow import fields, missing

from .schemas import BaseSchema

#: Loads a JSON object: the value and the unknown keys, as ``schema.load`` and
#: ``schema.unknown_paths`` give them, or ``None`` for the schema to load it instead.
Loader = Callable[[dict[str, Any]], tuple[Any, list[str]] | None]

#: The hooks a compiled loader reproduces: ``BaseSchema``'s own (the model is built by calling it).
_KNOWN_HOOKS = {"post_load": ["_make_model"], "post_dump": ["_omit_empty"]}

_MISSING = object()


def compile_loader(schema: BaseSchema) -> Loader:
    """A function that loads like ``schema.load`` where it can (see the module); ``TypeError``
    for a schema it cannot load exactly."""
    hooks = {tag: [name for name, *_ in entries] for tag, entries in schema._hooks.items() if entries}
    if any(hooks.get(tag, []) != names for tag, names in _KNOWN_HOOKS.items()) or set(hooks) - set(_KNOWN_HOOKS):
        raise TypeError(f"compile_loader does not know the hooks of {type(schema).__name__}: {hooks}")
    if schema.many or schema.partial:
        raise TypeError(f"compile_loader loads one whole object, not many or partial: {type(schema).__name__}")
    # (JSON key, result key, enum choices or None for a string, required, allow_none)
    steps: list[tuple[str, str, dict[str, Enum] | None, bool, bool]] = []
    for name, field in schema.load_fields.items():
        steps.append(
            (field.data_key or name, field.attribute or name, _choices(field), field.required, field.allow_none)
        )
    known = frozenset(key for key, *_ in steps)
    finish = schema._make_model

    def load(data: dict[str, Any]) -> tuple[Any, list[str]] | None:
        loaded: dict[str, Any] = {}
        for key, attribute, choices, required, allow_none in steps:
            value = data.get(key, _MISSING)
            if value is _MISSING:
                if required:
                    return None
                continue
            if value is None:
                if not allow_none:
                    return None
            elif type(value) is not str:
                return None
            elif choices is not None:
                value = choices.get(value, _MISSING)
                if value is _MISSING:
                    return None
            loaded[attribute] = value
        unknown = [key for key in data if key not in known] if len(data) > len(loaded) else []
        return finish(loaded), unknown

    return load


def _choices(field: fields.Field[Any]) -> dict[str, Enum] | None:
    """``None`` for a plain string field; the members by value for an enum of strings by value."""
    if field.validators or field.load_default is not missing:
        raise TypeError(f"compile_loader does not load fields with validators or defaults: {field!r}")
    if type(field) is fields.String:
        return None
    if type(field) is fields.Enum and field.by_value is True and all(isinstance(m.value, str) for m in field.enum):
        return {member.value: member for member in field.enum}
    raise TypeError(f"compile_loader does not know how to load {type(field).__name__}")
