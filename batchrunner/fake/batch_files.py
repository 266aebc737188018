"""What the fake Batch API reads and writes: input files checked as the real API checks them,
and the lines of its output and error files (pure)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from batchrunner.dialects.openai import read_usage

USAGE_FIELDS = (
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
)

ENDED = {  # the message of a line a batch never ran
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_cancelled": "This request was not executed because the batch was cancelled.",
}


def validate_input(
    content: bytes, endpoint: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The input file's lines, or the validation errors the real API would list."""
    lines: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    models: set[str] = set()
    for number, raw in enumerate(content.splitlines(), start=1):
        problem = None
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            line, problem = None, "This line is not parseable as valid JSON."
        if problem is None and not isinstance(line, dict):
            problem = "Each line must be a JSON object."
        elif problem is None and isinstance(line, dict):
            body = line.get("body")
            custom_id = line.get("custom_id")
            if line.get("url") != endpoint or line.get("method") != "POST":
                problem = f"The url must be {endpoint} and the method POST."
            elif not isinstance(custom_id, str) or custom_id in seen:
                problem = "Each custom_id must be a unique string."
            elif not isinstance(body, dict) or not body.get("model"):
                problem = "The body must be an object naming a model."
            elif b"[fake:batch_invalid]" in raw:
                problem = "This line was rejected on purpose ([fake:batch_invalid])."
            else:
                seen.add(custom_id)
                models.add(str(body["model"]))
                lines.append({**line, "raw": raw})
        if problem is not None:
            errors.append(batch_error("invalid_request", problem, number))
    if len(models) > 1:
        errors.append(batch_error("mixed_models", "Every line must use one model.", None))
    return lines, errors


def first_model(content: bytes) -> str:
    """The model the file's first line names (the real API quotes it in its refusals)."""
    for raw in content.splitlines():
        if raw.strip():
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                break
            body = line.get("body") if isinstance(line, dict) else None
            if isinstance(body, dict) and isinstance(body.get("model"), str):
                return str(body["model"])
            break
    return "requested"


def usage_of(body: dict[str, Any]) -> dict[str, int]:
    """One answer's tokens (read as batchrunner reads them, whichever endpoint's shape), under
    the batch usage's names."""
    usage = read_usage(body)
    given, made = usage.input_tokens or 0, usage.output_tokens or 0
    reported = body.get("usage")
    total = reported.get("total_tokens") if isinstance(reported, dict) else None
    return {
        "input_tokens": given,
        "cached_tokens": usage.cached_tokens or 0,
        "output_tokens": made,
        "reasoning_tokens": usage.reasoning_tokens or 0,
        "total_tokens": int(total or given + made),
    }


def batch_error(code: str, message: str, line: int | None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": line}


def token_limit_error(lines: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    model = lines[0]["body"].get("model") if lines else "the model"
    message = (
        f"Enqueued token limit reached for {model} in organization org-fake. Limit: "
        f"{limit:,} enqueued tokens. Please try submitting your batch again later."
    )
    return batch_error("token_limit_exceeded", message, None)


def output_line(
    custom_id: str, response: dict[str, Any] | None, error: dict[str, Any] | None
) -> bytes:
    record = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": custom_id}
    return orjson.dumps({**record, "response": response, "error": error}) + b"\n"


def request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())
