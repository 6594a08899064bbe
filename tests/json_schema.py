"""A small JSON Schema validator for the tests (``jsonschema`` is not a dependency).

It checks what the tests' schemas use: ``type`` (one or a list), ``properties``,
``required``, ``additionalProperties`` (``false`` or a schema), ``items``,
``prefixItems``, ``minItems``, ``maxItems``, ``enum``, ``const``, ``anyOf``,
``oneOf``, ``allOf``, local ``$ref``, ``minLength``, ``maxLength``, ``minimum``,
``maximum``. Anything else in a schema is ignored, as JSON Schema ignores unknown
keywords. :func:`errors` lists every violation with its JSON path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "null": (type(None),),
}


def _is(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES[kind])


def errors(
    value: Any, schema: Mapping[str, Any], root: Mapping[str, Any] | None = None, path: str = "$"
) -> list[str]:
    """Every way ``value`` fails ``schema``; empty when it is an instance."""
    root = schema if root is None else root
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#").split("/")[1:]:
            target = target[part]
        return errors(value, target, root, path)
    found: list[str] = []
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_is(value, k) for k in kinds):
            return [f"{path}: {value!r} is not of type {kind}"]
    if "const" in schema and value != schema["const"]:
        found.append(f"{path}: {value!r} is not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{path}: {value!r} is not one of {schema['enum']}")
    for key in ("anyOf", "oneOf"):
        if key in schema:
            fits = [not errors(value, s, root, path) for s in schema[key]]
            if not any(fits) or (key == "oneOf" and sum(fits) != 1):
                found.append(f"{path}: {value!r} fits {sum(fits)} of {key}")
    for part in schema.get("allOf", ()):
        found += errors(value, part, root, path)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                found.append(f"{path}: missing required property {name!r}")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                found += errors(item, properties[name], root, f"{path}.{name}")
            elif extra is False:
                found.append(f"{path}: unexpected property {name!r}")
            elif isinstance(extra, Mapping):
                found += errors(item, extra, root, f"{path}.{name}")
    if isinstance(value, list):
        prefix = schema.get("prefixItems", [])
        for i, item in enumerate(value):
            sub = prefix[i] if i < len(prefix) else schema.get("items")
            if isinstance(sub, Mapping):
                found += errors(item, sub, root, f"{path}[{i}]")
        if len(value) < schema.get("minItems", 0):
            found.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            found.append(f"{path}: more than {schema['maxItems']} items")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            found.append(f"{path}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            found.append(f"{path}: longer than {schema['maxLength']}")
    if _is(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            found.append(f"{path}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            found.append(f"{path}: {value} > {schema['maximum']}")
    return found


def check(value: Any, schema: Mapping[str, Any]) -> None:
    """Assert that ``value`` is an instance of ``schema``."""
    problems = errors(value, schema)
    assert not problems, problems


def self_test() -> None:
    """The validator on cases whose answers are known (run by tests/sansio/test_tools.py)."""
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "minimum": 1},
            "b": {"enum": ["x", "y"]},
            "c": {"type": "array", "items": {"$ref": "#/$defs/s"}, "minItems": 1},
        },
        "required": ["a", "c"],
        "additionalProperties": False,
        "$defs": {"s": {"type": "string", "maxLength": 2}},
    }
    assert errors({"a": 1, "c": ["ok"]}, schema) == []
    assert len(errors({"a": 0, "b": "z", "c": ["long"], "d": 1}, schema)) == 4
    assert errors({"a": True, "c": []}, schema) == [
        "$.a: True is not of type integer",
        "$.c: fewer than 1 items",
    ]
    assert errors([], {"anyOf": [{"type": "object"}, {"type": "string"}]})
