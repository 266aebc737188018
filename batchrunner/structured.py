"""Structured outputs: what a request asked its answer to be (a JSON object, or JSON that
matches a JSON schema), and whether an answer is it (pure).

The dialect finds the format in a request (chat's `response_format`, the responses API's
`text.format`) and the texts in an answer (each choice's content, or the responses API's
output_text; a refusal is no answer); this module judges the texts. A schema is compiled once
per checker (one per run), found again by its canonical JSON: a million items that share three
schemas compile three. The draft is the schema's own `$schema`, else Draft 2020-12 (the one
OpenAI's structured outputs follow).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import orjson

if TYPE_CHECKING:  # jsonschema takes a tenth of a second to import: only once a schema is met
    from jsonschema.protocols import Validator

JSON_OBJECT: Final = "json_object"
JSON_SCHEMA: Final = "json_schema"
SCHEMA_BROKEN: Final = "the request's schema is not a valid JSON schema"
REASON_LIMIT = 300  # characters: a schema error may quote the whole answer

# How often each schema (by its canonical JSON) was compiled in this process: what shows that a
# run compiles a schema once, however many answers it checks.
COMPILED: Counter[str] = Counter()


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """What a request asked its answer to be: a JSON object, or JSON matching `schema`."""

    kind: str  # json_object | json_schema
    schema: Mapping[str, Any] | None = None  # json_schema's; None: any JSON
    key: str = ""  # the schema's canonical JSON (sorted keys): one compilation per key

    @classmethod
    def of(cls, kind: Any, schema: Any = None) -> OutputFormat | None:
        """The format a request's `type` (and schema) name; None for text or anything else."""
        if kind == JSON_OBJECT:
            return cls(JSON_OBJECT)
        if kind != JSON_SCHEMA:
            return None
        if not isinstance(schema, Mapping):
            return cls(JSON_SCHEMA)
        return cls(JSON_SCHEMA, schema, orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode())


class Answer(NamedTuple):
    """One answer's text (a chat choice, or a response's output_text), or its refusal."""

    text: str | None
    refusal: str | None = None


@dataclass(frozen=True, slots=True)
class Check:
    """An answer judged: valid, or why not, and whether asking again could help."""

    valid: bool
    reason: str | None = None
    retryable: bool = True  # False: the request's own schema is broken


VALID: Final = Check(True)


def _invalid(reason: str) -> Check:
    cut = reason if len(reason) <= REASON_LIMIT else reason[: REASON_LIMIT - 3] + "..."
    return Check(False, cut)


def json_type(value: Any) -> str:
    """What JSON calls a parsed value's type."""
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "string" if isinstance(value, str) else "null"


class OutputChecker:
    """Checks answers against their formats; compiles each distinct schema once."""

    def __init__(self) -> None:
        self._validators: dict[str, Validator | str] = {}  # key -> validator, or its error

    def check(self, wanted: OutputFormat, answers: Sequence[Answer]) -> Check:
        """Every answer must parse as JSON (an object for json_object) and match the schema."""
        if not answers:
            return _invalid("no answer text")
        for index, answer in enumerate(answers):
            where = f"choice {index}: " if len(answers) > 1 else ""
            if answer.text is None:
                said = f"refused: {answer.refusal}" if answer.refusal else "no answer text"
                return _invalid(where + said)
            try:
                value = orjson.loads(answer.text)
            except orjson.JSONDecodeError as exc:
                return _invalid(f"{where}not JSON: {exc}")
            if wanted.kind == JSON_OBJECT or wanted.schema is None:
                if wanted.kind == JSON_OBJECT and not isinstance(value, dict):
                    return _invalid(f"{where}not a JSON object: {json_type(value)}")
                continue
            validator = self._validator(wanted)
            if isinstance(validator, str):
                return Check(False, validator[:REASON_LIMIT], retryable=False)
            from jsonschema.exceptions import best_match

            error = best_match(validator.iter_errors(value))
            if error is not None:
                return _invalid(f"{where}{error.json_path}: {error.message}")
        return VALID

    def _validator(self, wanted: OutputFormat) -> Validator | str:
        found = self._validators.get(wanted.key)
        if found is None:
            found = compile_schema(wanted)
            self._validators[wanted.key] = found
        return found


def compile_schema(wanted: OutputFormat) -> Validator | str:
    """The schema's validator, or what is wrong with the schema itself."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    COMPILED[wanted.key] += 1
    schema = dict(wanted.schema or {})
    validator_class = validator_for(schema, default=Draft202012Validator)
    try:
        validator_class.check_schema(schema)
    except SchemaError as exc:
        return f"{SCHEMA_BROKEN}: {exc.message}"
    return validator_class(schema)


@functools.lru_cache(maxsize=256)
def schema_problem(key: str) -> str | None:
    """What is wrong with a schema (by its canonical JSON) as a JSON schema, or None: what
    `submit` refuses before anything is paid for."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    schema = orjson.loads(key)
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as exc:
        return f"{SCHEMA_BROKEN}: {exc.message} (at {exc.json_path})"
    return None
