"""A job item: one validated request, the unit the ledger tracks and the runners send. The job
file reader (jobfile.py) makes them; the ledger records them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class JobItem:
    position: int  # the line number, so the export keeps the file's order
    custom_id: str
    url: str
    body: bytes  # the request body as JSON, ready to send
    extra: bytes | None  # other top-level keys of a Batch API line, as JSON
    model: str


def request_hash(url: str, body: bytes, parsed: Any = None) -> str:
    """sha256 of the canonical JSON of url and body (sorted keys, no whitespace): the identity
    of a request whatever the key order or spacing of its line, which `--reuse` matches on.
    `parsed`: the body already parsed, when the caller has it."""
    parsed = orjson.loads(body) if parsed is None else parsed
    canonical = orjson.dumps({"url": url, "body": parsed}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()
