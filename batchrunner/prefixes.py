"""Prefix groups: which requests of a job share the part a provider's prompt cache can serve.

OpenAI caches the longest prompt prefix it has seen, from 1,024 tokens, in 128-token steps, and
bills the cached part at a fraction of the input price. A job's requests usually share a long
head (tools, a structured output's schema, system and developer messages, few-shot examples)
and differ at the end. That head is what this module finds, per request, without looking at
the others: everything of the request but its last message (and, in a last message made of
content parts, all parts but the last). Requests whose heads are equal fall into one group;
the head's token count says how much of each request the cache can serve.

Text shared at the start of one string (a long instruction and the question in one user
message) is not found: put the instruction in a system message, or in a content part of its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from batchrunner.tokens import prompt_tokens

CACHE_MIN_TOKENS = 1024  # OpenAI caches prompts from this length
CACHE_STEP = 128  # ... in steps of this many tokens
# Fields of a request that come before its messages in the prompt a provider caches.
CHAT_HEAD_FIELDS = ("tools", "response_format", "functions")
RESPONSES_HEAD_FIELDS = ("tools", "text", "instructions")
KNOWN_HEADS = 1_000  # heads remembered (a job has few; each may be kilobytes)


@dataclass(frozen=True, slots=True)
class Prefix:
    group: str  # a hash of the model, the endpoint and the shared head
    tokens: int  # the head's length in prompt tokens (counted offline: an estimate)


def cacheable_tokens(prefix_tokens: int | None) -> int:
    """The tokens of a head the cache can serve: rounded down to CACHE_STEP, none below
    CACHE_MIN_TOKENS."""
    if not prefix_tokens or prefix_tokens < CACHE_MIN_TOKENS:
        return 0
    return prefix_tokens - prefix_tokens % CACHE_STEP


class PrefixFinder:
    """Finds each request's prefix; hashes and counts each distinct head once.

    A job has few heads, repeated on every line: a head seen lately is looked up by its JSON
    (no hash of its kilobytes, no token count). Keys are not sorted: two lines whose head has
    its keys in another order fall into two groups, which costs a cache miss, not a wrong
    answer."""

    def __init__(self) -> None:
        self._known: dict[bytes, Prefix] = {}

    def find(self, url: str, body: Mapping[str, Any]) -> Prefix | None:
        head = shared_head(url, body)
        if head is None:
            return None
        canonical = orjson.dumps([url, head])
        found = self._known.get(canonical)
        if found is None:
            group = hashlib.sha1(canonical, usedforsecurity=False).hexdigest()[:32]
            found = Prefix(group, prompt_tokens(url, head))
            if len(self._known) >= KNOWN_HEADS:
                self._known.clear()
            self._known[canonical] = found
        return found


def shared_head(url: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The request without its last message (as a request body, so it can be counted), or
    None when nothing would be left of it (a lone message, an embedding, a moderation)."""
    if url.endswith("/chat/completions"):
        return _head(body, "messages", CHAT_HEAD_FIELDS)
    if url.endswith("/responses"):
        return _head(body, "input", RESPONSES_HEAD_FIELDS)
    return None


def _head(
    body: Mapping[str, Any], turns_field: str, head_fields: tuple[str, ...]
) -> dict[str, Any] | None:
    head: dict[str, Any] = {f: body[f] for f in head_fields if body.get(f) is not None}
    turns = body.get(turns_field)
    if isinstance(turns, list) and turns:
        leading = list(turns[:-1])
        last = turns[-1]
        content = last.get("content") if isinstance(last, Mapping) else None
        if isinstance(content, list) and len(content) > 1:
            leading.append({**last, "content": content[:-1]})
        if leading:
            head[turns_field] = leading
    if not head:
        return None
    head["model"] = body.get("model")
    return head
