"""Mask secrets before they are kept anywhere.

Two uses, one set of patterns:

- always: API keys in whatever batchrunner stores or prints that came from elsewhere (error
  messages and error bodies from servers, log lines, tracebacks). Servers and proxies do echo
  keys back ("Incorrect API key provided: sk-..."), and a ledger or a log is kept and shared.
- with `submit --redact`: card numbers (Luhn-checked) and keys in the prompts themselves, before
  they are stored or sent.

A masked key keeps its last four characters, as the providers' dashboards show keys, so a
reader can still tell which key was used.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import replace
from types import TracebackType
from typing import Any

import orjson

from batchrunner.dialects.openai import API_KEY_ENV
from batchrunner.items import JobItem
from batchrunner.terminal import printable

# sk-..., sk-proj-..., sk-svcacct-..., sk-ant-...: the shape of OpenAI-style secret keys.
KEY = re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{16,}")
BEARER = re.compile(r"\b(Bearer)\s+[A-Za-z0-9._~+/=\-]{8,}")  # an Authorization header
# 13 to 19 digits, optionally grouped by spaces or dashes, not inside a longer run of digits.
CARD = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")
MIN_KNOWN_KEY = 8  # a placeholder key such as "EMPTY" (vLLM's habit) is no secret
KEY_ENV = API_KEY_ENV  # the key the provider takes: masked wherever it shows


def _masked_key(key: str) -> str:
    return f"{'sk-' if key.startswith('sk-') else ''}***{key[-4:]}"


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


# Values this process was given that must never show, besides the key: a header's value (a
# gateway's key), a proxy's password, a secret query parameter. Added by `treat_as_secret`;
# masked whole (a short password's last four characters are most of it).
_SECRETS: set[str] = set()
MIN_SECRET = 4  # shorter values would mask ordinary words


def treat_as_secret(value: str) -> None:
    """Mask `value` wherever batchrunner stores or prints text from now on."""
    if len(value) >= MIN_SECRET:
        _SECRETS.add(value)


def _mask_known(text: str) -> tuple[str, int]:
    """`text` with the configured key and the secrets given to this process masked (plain
    substring searches: cheap enough for every answer)."""
    count = 0
    known = os.environ.get(KEY_ENV) or ""
    if len(known) >= MIN_KNOWN_KEY and known in text:
        count += text.count(known)
        text = text.replace(known, _masked_key(known))
    for secret in sorted(_SECRETS, key=len, reverse=True) if _SECRETS else ():
        if secret in text:
            count += text.count(secret)
            text = text.replace(secret, "***")
    return text, count


def mask_secrets(text: str, *, cards: bool = False) -> tuple[str, int]:
    """`text` with API keys (the configured one, whatever its shape, and anything shaped like
    one), the other secrets given to this process and `Bearer` tokens masked, and with `cards`
    card numbers too; and how many."""
    text, count = _mask_known(text)

    def key(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return _masked_key(match.group())

    def bearer(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"{match.group(1)} ***"

    def card(match: re.Match[str]) -> str:
        nonlocal count
        digits = re.sub(r"[ -]", "", match.group())
        if not _luhn(digits):
            return match.group()
        count += 1
        return f"[card ***{digits[-4:]}]"

    text = BEARER.sub(bearer, KEY.sub(key, text))
    if cards:
        text = CARD.sub(card, text)
    return text, count


def mask(text: str) -> str:
    """`text` with every key masked: for messages and logs."""
    return mask_secrets(text)[0]


def mask_answer(
    error_message: str | None, response: str | None, http_status: int | None
) -> tuple[str | None, str | None]:
    """What a server sent back, ready to store: keys masked in the error message and in a
    non-200 body. A 200 body is the answer itself: kept exactly as sent but for this job's
    own key and secrets, should it quote them (a leaky gateway's echo, a model repeating its
    prompt); other key-shaped text in it is the model's and stays."""
    if error_message:
        error_message = mask(error_message)
    if response:
        response = mask(response) if http_status != 200 else _mask_known(response)[0]
    return error_message, response


class Redactor:
    """`submit --redact`: every string of each item's body and extra keys, with card numbers and
    keys masked, so the ledger and the API only ever see the masked prompt."""

    def __init__(self) -> None:
        self.masked = 0

    def items(self, items: Iterable[JobItem]) -> Iterator[JobItem]:
        for item in items:
            body = self._json(item.body)
            extra = self._json(item.extra) if item.extra is not None else None
            if body is not item.body or extra is not item.extra:
                item = replace(item, body=body, extra=extra)
            yield item

    def _json(self, raw: bytes) -> bytes:
        """The same JSON with its strings masked; `raw` itself when nothing was masked."""
        before = self.masked
        value = self._walk(orjson.loads(raw))
        return orjson.dumps(value) if self.masked != before else raw

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            text, count = mask_secrets(value, cards=True)
            self.masked += count
            return text
        if isinstance(value, list):
            return [self._walk(v) for v in value]
        if isinstance(value, dict):
            return {k: self._walk(v) for k, v in value.items()}
        return value


def install_excepthook() -> None:
    """Tracebacks of unexpected errors are printed with keys masked and control characters
    escaped, like everything else."""

    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        sys.stderr.write(printable(mask("".join(traceback.format_exception(kind, exc, tb)))))

    sys.excepthook = hook
