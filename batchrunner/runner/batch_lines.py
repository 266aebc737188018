"""What one line of a batch's output or error file means for its item (pure).

| line                                         | item                                        |
|----------------------------------------------|---------------------------------------------|
| response.status_code 200                     | succeeded, with its usage                   |
| response.status_code not 200                 | failed, with response.body.error            |
| top-level error (batch_expired, cancelled)   | pending again: it was never run             |
| unparsable                                   | ignored; the item goes back to pending       |
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from batchrunner.runner.retry import api_error
from batchrunner.usage import Usage, read_finish_reason, read_usage

SUCCEEDED = "succeeded"
FAILED = "failed"
PENDING = "pending"


@dataclass(frozen=True, slots=True)
class LineOutcome:
    custom_id: str
    state: str
    http_status: int | None = None
    response: str | None = None
    error_kind: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None


def read_line(raw: bytes) -> LineOutcome | None:
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
        return None
    custom_id = line["custom_id"]
    response = line.get("response")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        status = response["status_code"]
        body = response.get("body")
        body_json = orjson.dumps(body).decode()
        if status == 200 and isinstance(body, dict):
            return LineOutcome(
                custom_id,
                SUCCEEDED,
                http_status=status,
                response=body_json,
                usage=read_usage(body),
                finish_reason=read_finish_reason(body),
            )
        kind, code, message = api_error(body_json.encode())
        return LineOutcome(
            custom_id,
            FAILED,
            http_status=status,
            error_kind="invalid_request" if status < 500 else "server_error",
            error_code=code or kind,
            error_message=message or f"HTTP {status}",
        )
    error = line.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        return LineOutcome(
            custom_id,
            PENDING,
            error_kind="batch",
            error_code=str(code) if code is not None else None,
            error_message=error.get("message"),
        )
    return None
