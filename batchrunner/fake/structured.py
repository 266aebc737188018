"""The fake server's structured answers: a request that asks for a JSON schema gets the smallest
JSON the schema accepts; one that asks for a JSON object gets {"echo": ...}.

The instance is built from the schema alone: `const`, else the first of `enum`, else the first
branch of `anyOf` / `oneOf`, the first of `allOf`, `$ref` into the schema's own `$defs` (or
`definitions`); by type, an object holds its required properties (none else), an array its
`minItems` items, a string is the echo of the prompt (cut or padded to `maxLength` /
`minLength`; `pattern` and `format` are not honoured), a number its `minimum` (or 0, within
`maximum`), a boolean false. Strict schemas (every property required, no other) answer in full.

Markers (`[fake:NAME]`, see answers.find_trigger) break it on purpose: `invalid_json` answers
the echo text itself (not JSON), `invalid_schema` answers JSON the schema refuses (the
instance without its first required property, or `null` when nothing is required).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from batchrunner.structured import JSON_OBJECT, OutputFormat

MAX_DEPTH = 8  # a recursive schema's required nesting stops here


def structured_text(wanted: OutputFormat, echo: str, trigger: str | None) -> str:
    """The answer's text for a structured request (and a marker that may break it)."""
    if trigger == "invalid_json":
        return echo
    if wanted.kind == JSON_OBJECT or wanted.schema is None:
        return "null" if trigger == "invalid_schema" else _dumps({"echo": echo})
    schema = wanted.schema
    instance = minimal_instance(schema, schema, echo)
    if trigger == "invalid_schema":
        required = schema.get("required")
        if isinstance(instance, dict) and isinstance(required, list) and required:
            instance.pop(required[0], None)
        else:
            instance = None
    return _dumps(instance)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def minimal_instance(schema: Any, root: Mapping[str, Any], echo: str, depth: int = 0) -> Any:
    """The smallest value `schema` accepts, as the module's docstring says."""
    if not isinstance(schema, Mapping) or depth > MAX_DEPTH:
        return None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return minimal_instance(_resolve(ref, root), root, echo, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            return minimal_instance(branches[0], root, echo, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        properties = schema.get("properties") or {}
        required = schema.get("required") or []
        return {
            name: minimal_instance(properties.get(name, {}), root, echo, depth + 1)
            for name in required
            if isinstance(name, str)
        }
    if kind == "array":
        items = schema.get("items", {})
        count = schema.get("minItems", 0)
        return [minimal_instance(items, root, echo, depth + 1) for _ in range(int(count))]
    if kind == "string":
        text = echo[: schema["maxLength"]] if isinstance(schema.get("maxLength"), int) else echo
        return text.ljust(int(schema.get("minLength", 0)), ".")
    if kind in ("integer", "number"):
        low, high = schema.get("minimum"), schema.get("maximum")
        value = low if isinstance(low, (int, float)) else 0
        if isinstance(schema.get("exclusiveMinimum"), (int, float)):
            value = schema["exclusiveMinimum"] + 1
        if isinstance(high, (int, float)) and value > high:
            value = high
        return int(value) if kind == "integer" else value
    if kind == "boolean":
        return False
    return None


def _resolve(ref: str, root: Mapping[str, Any]) -> Any:
    """A `#/...` pointer into the schema itself; anything else resolves to nothing."""
    if not ref.startswith("#"):
        return None
    node: Any = root
    for part in ref.lstrip("#").split("/"):
        if not part:
            continue
        if not isinstance(node, Mapping):
            return None
        node = node.get(part.replace("~1", "/").replace("~0", "~"))
    return node
