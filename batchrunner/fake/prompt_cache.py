"""Prompt caching as OpenAI documents it, simulated by the fake server (`FakeConfig.prompt_cache`),
so tests and bench/cache.py can measure what a sending order does to the cached share.

What OpenAI documents (the prompt caching guide): caching is automatic for prompts of 1,024
tokens or more; hits are reported in 128-token steps (`usage.prompt_tokens_details.cached_tokens`
on chat, `usage.input_tokens_details.cached_tokens` on responses); a request is routed to a
machine by a hash of the prompt's first ~256 tokens combined with `prompt_cache_key`; above about
15 requests per minute for one prefix-and-key pair, requests overflow to other machines and hit
less; cached prefixes stay after 5-10 minutes of inactivity (up to an hour off-peak), or up to
24 hours with `prompt_cache_retention: "24h"`; tools, schemas and images are part of the prefix.

What is simulated here, and how (the parts OpenAI does not document are choices, named so):

- the prompt is the token sequence a provider would cache, in this order: `tools`, then the
  structured-output format (`response_format`, or responses' `text.format`), then `instructions`
  (responses) and the messages in their order, each framed as tokens.py counts them (3 framing
  tokens, the role, the content, a name). Texts are encoded with the model's real encoding;
  tools and formats as their JSON; an image part as IMAGE_TOKENS tokens named by its content.
  Only /v1/chat/completions and /v1/responses cache; embeddings and the rest never do.
- a pool of `machines` (4,096 by default: OpenAI's fleet is large against any one job, and with
  a small pool random overflow soon warms every machine). A request goes to machine
  hash(model, `prompt_cache_key` or "", first 256 tokens) mod pool; when that pair has already
  had `pair_rpm` requests admitted there in the last 60 s, it overflows to a uniformly random
  other machine (a seeded RNG), and is not counted against the pair.
- each machine caches the prompt's prefixes in 128-token blocks (a hash chain of cumulative
  blocks, with the model). A request's cached tokens are its longest cached block prefix, 0 below
  1,024 tokens, never more than its prompt tokens rounded down to 128. Its blocks are written
  when its answer is produced: requests that arrive before the first of their prefix was answered
  miss (in a Batch API file, lines are answered one after the other in file order).
- a block expires `ttl_s` seconds after it was last used (300 s; `ttl_24h_s`, a day, for requests
  with `prompt_cache_retention: "24h"`); any other retention value is refused with a 400, as the
  API refuses it. Memory is bounded: at most `max_blocks` blocks over the whole pool, the least
  recently used evicted first.

It also keeps what bench/cache.py compares against: the ideal, every cacheable token of every
request after the first of its prefix and key (an unbounded, never-expiring cache per model and
key, written on arrival), and the distinct keys and prefix-and-key pairs it was sent.
"""

from __future__ import annotations

import functools
import hashlib
import random
import threading
import time
from array import array
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from batchrunner.fake.answers import error_body
from batchrunner.tokens import IMAGE_PART_TYPES, IMAGE_TOKENS, TEXT_PART_TYPES, text_token_ids

MIN_CACHED_TOKENS = 1024
BLOCK_TOKENS = 128
ROUTE_TOKENS = 256
PAIR_WINDOW_S = 60.0
RETENTIONS = ("in_memory", "24h")
PURGE_PER_VISIT = 32  # expired blocks dropped from the cold end on each arrival, at most

# Framing in the token sequence: not real token ids (those are >= 0), only ever hashed.
_START, _MESSAGE, _END, _NAME, _TOOLS, _FORMAT, _IMAGE, _PART, _REPLY = range(-1, -10, -1)


@dataclass(frozen=True, slots=True)
class CacheSettings:
    machines: int = 4096
    pair_rpm: int = 15
    ttl_s: float = 300.0
    ttl_24h_s: float = 86400.0
    max_blocks: int = 250_000
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.machines < 1 or self.pair_rpm < 0 or self.max_blocks < 1:
            raise ValueError(f"prompt cache settings out of range: {self}")
        if self.ttl_s <= 0 or self.ttl_24h_s <= 0:
            raise ValueError(f"prompt cache TTLs must be positive: {self}")


@dataclass(frozen=True, slots=True)
class Visit:
    """Where a request was routed and what it found; its blocks are written when answered."""

    machine: int
    blocks: tuple[bytes, ...]  # the storage keys of the prompt's full blocks, on that machine
    ttl_s: float
    cached_tokens: int


NO_VISIT = Visit(-1, (), 0.0, 0)  # a prompt too short to cache: nothing to read or write


def applies_to(url: str) -> bool:
    """Whether requests to `url` are cached (chat and responses; never embeddings)."""
    return url.endswith(("/chat/completions", "/responses"))


def retention_refusal(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The API's 400 body for a `prompt_cache_retention` it does not take, else None."""
    value = body.get("prompt_cache_retention")
    if value is None or value in RETENTIONS:
        return None
    message = f"Invalid value: {value!r}. Supported values are: 'in_memory' and '24h'."
    return error_body(message, "invalid_request_error", "invalid_value", "prompt_cache_retention")


class PromptCache:
    """The pool's state. Thread-safe: online answers come from the server's event loop, Batch
    API lines also from the threads of fake/in_process.py."""

    def __init__(self, settings: CacheSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._random = random.Random(settings.seed)
        # (block digest + machine) -> expiry time, least recently used first
        self._blocks: OrderedDict[bytes, float] = OrderedDict()
        self._admitted: dict[bytes, deque[float]] = {}  # pair -> its admissions in the window
        self._ideal: set[bytes] = set()  # (model and key digest + block digest)
        self._pairs: set[bytes] = set()
        self._keys: set[str] = set()
        self._visits = 0
        self.counts = dict.fromkeys(
            ("requests", "cacheable_requests", "prompt_tokens", "cached_tokens", "hits"), 0
        )
        self.counts.update(overflowed=0, ideal_cached_tokens=0, evicted_blocks=0)
        self.ideal_exact = True  # False once the ideal's own store reached max_blocks

    def arrive(self, url: str, body: Mapping[str, Any], prompt_tokens: int) -> Visit:
        """Route a request that is about to be answered and read its machine's cache."""
        model = str(body.get("model") or "")
        key = body.get("prompt_cache_key")
        key = key if isinstance(key, str) else ""
        with self._lock:
            self.counts["requests"] += 1
            self.counts["prompt_tokens"] += prompt_tokens
            self._track_key(key)
        if prompt_tokens < MIN_CACHED_TOKENS:
            return NO_VISIT
        sequence = prompt_sequence(url, body)
        packed = array("q", sequence).tobytes()
        pair = _digest(model.encode(), key.encode(), packed[: ROUTE_TOKENS * 8], size=8)
        chain = _block_chain(model, packed)
        usable = min(len(sequence), prompt_tokens) // BLOCK_TOKENS
        retention = body.get("prompt_cache_retention")
        ttl = self.settings.ttl_24h_s if retention == "24h" else self.settings.ttl_s
        now = time.monotonic()
        with self._lock:
            self.counts["cacheable_requests"] += 1
            self._count_ideal(model, key, chain, usable)
            self._purge(now)
            machine = self._route(pair, now)
            suffix = machine.to_bytes(4, "big")
            blocks = tuple(digest + suffix for digest in chain)
            found = 0
            for stored in blocks[:usable]:
                expiry = self._blocks.get(stored)
                if expiry is None or expiry < now:
                    break
                found += 1
            self._touch(blocks[:found], now + ttl)
            cached = found * BLOCK_TOKENS if found * BLOCK_TOKENS >= MIN_CACHED_TOKENS else 0
            self.counts["cached_tokens"] += cached
            self.counts["hits"] += int(cached > 0)
        return Visit(machine, blocks, ttl, cached)

    def answered(self, visit: Visit) -> None:
        """The request's answer is produced: its prefix is now on its machine."""
        if not visit.blocks:
            return
        with self._lock:
            self._touch(visit.blocks, time.monotonic() + visit.ttl_s)
            while len(self._blocks) > self.settings.max_blocks:
                self._blocks.popitem(last=False)
                self.counts["evicted_blocks"] += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                **self.counts,
                "keys": len(self._keys),
                "pairs": len(self._pairs),
                "blocks": len(self._blocks),
                "ideal_exact": self.ideal_exact,
            }

    # -- inside the lock -----------------------------------------------------------------------

    def _route(self, pair: bytes, now: float) -> int:
        """The pair's home machine, or a random other one above the per-pair rate."""
        settings = self.settings
        home = int.from_bytes(pair, "big") % settings.machines
        admitted = self._admitted.setdefault(pair, deque())
        while admitted and admitted[0] <= now - PAIR_WINDOW_S:
            admitted.popleft()
        self._visits += 1
        if self._visits % 1024 == 0:  # forget pairs not seen for a window
            idle = [p for p, times in self._admitted.items() if not times or times[-1] < now - 60]
            for stale in idle:
                del self._admitted[stale]
            self._admitted[pair] = admitted
        if len(self._pairs) < settings.max_blocks:
            self._pairs.add(pair)
        if len(admitted) < settings.pair_rpm or settings.machines < 2:
            admitted.append(now)
            return home
        self.counts["overflowed"] += 1
        other = self._random.randrange(settings.machines - 1)
        return other + 1 if other >= home else other

    def _touch(self, blocks: tuple[bytes, ...], expiry: float) -> None:
        """Mark blocks used, the first block last: it is then the last of them to be evicted
        (a chain is only usable from its start)."""
        for stored in reversed(blocks):
            self._blocks[stored] = max(expiry, self._blocks.get(stored, 0.0))
            self._blocks.move_to_end(stored)

    def _purge(self, now: float) -> None:
        for _ in range(PURGE_PER_VISIT):
            if not self._blocks:
                return
            oldest, expiry = next(iter(self._blocks.items()))
            if expiry >= now:
                return
            del self._blocks[oldest]

    def _count_ideal(self, model: str, key: str, chain: list[bytes], usable: int) -> None:
        owner = _digest(model.encode(), key.encode(), size=8)
        entries = [owner + digest for digest in chain]
        found = 0
        for entry in entries[:usable]:
            if entry not in self._ideal:
                break
            found += 1
        if found * BLOCK_TOKENS >= MIN_CACHED_TOKENS:
            self.counts["ideal_cached_tokens"] += found * BLOCK_TOKENS
        if len(self._ideal) + len(entries) > self.settings.max_blocks:
            self.ideal_exact = False
            return
        self._ideal.update(entries)

    def _track_key(self, key: str) -> None:
        if len(self._keys) < self.settings.max_blocks:
            self._keys.add(key)


def _digest(*parts: bytes, size: int = 16) -> bytes:
    hasher = hashlib.blake2b(digest_size=size)
    for part in parts:
        hasher.update(len(part).to_bytes(8, "big"))
        hasher.update(part)
    return hasher.digest()


def _block_chain(model: str, packed: bytes) -> list[bytes]:
    """Each full 128-token block's digest, chained: block i's names blocks 0..i and the model."""
    step = BLOCK_TOKENS * 8
    digest = _digest(model.encode())
    chain = []
    for start in range(0, len(packed) - step + 1, step):
        digest = _digest(digest, packed[start : start + step])
        chain.append(digest)
    return chain


# -- the sequence a provider caches ------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _text(text: str, model: str) -> tuple[int, ...]:
    """A text's ids, remembered: a job's shared system prompt is encoded once."""
    return tuple(text_token_ids(text, model))


def _mark(value: Any) -> int:
    """One framing id standing for a non-text value (an image, a file): named by its content."""
    digest = _digest(orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str), size=6)
    return -1000 - int.from_bytes(digest, "big")


def prompt_sequence(url: str, body: Mapping[str, Any]) -> list[int]:
    """The prompt as the token sequence a provider caches: tools, the output format, then the
    instructions and messages in order, framed as tokens.py counts them, then the reply's
    priming."""
    model = str(body.get("model") or "")
    sequence: list[int] = []
    tools = body.get("tools")
    if tools:
        sequence += [
            _TOOLS,
            *_text(orjson.dumps(tools, option=orjson.OPT_SORT_KEYS).decode(), model),
        ]
    if url.endswith("/responses"):
        text = body.get("text")
        output_format = text.get("format") if isinstance(text, Mapping) else None
    else:
        output_format = body.get("response_format")
    if output_format:
        dumped = orjson.dumps(output_format, option=orjson.OPT_SORT_KEYS).decode()
        sequence += [_FORMAT, *_text(dumped, model)]
    if url.endswith("/responses"):
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            sequence += _message({"role": "developer", "content": instructions}, model)
        given = body.get("input")
        if isinstance(given, str):
            sequence += _message({"role": "user", "content": given}, model)
        elif isinstance(given, list):
            for item in given:
                sequence += _responses_item(item, model)
    else:
        messages = body.get("messages")
        for message in messages if isinstance(messages, list) else ():
            sequence += _message(message, model)
    return [*sequence, _REPLY, _REPLY, _REPLY]


def _message(message: Any, model: str) -> list[int]:
    if not isinstance(message, Mapping):
        return []
    ids = [_START]
    for key, value in message.items():
        if key == "content":
            ids += [_MESSAGE, *_content(value, model)]
        elif key == "tool_calls" and isinstance(value, list):
            for call in value:
                function = call.get("function") if isinstance(call, Mapping) else None
                if isinstance(function, Mapping):
                    for field in ("name", "arguments"):
                        if isinstance(function.get(field), str):
                            ids += _text(function[field], model)
        elif isinstance(value, str):
            ids += _text(value, model)
            if key == "name":
                ids.append(_NAME)
    return [*ids, _END]


def _content(content: Any, model: str) -> list[int]:
    if isinstance(content, str):
        return list(_text(content, model))
    ids: list[int] = []
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        if kind in TEXT_PART_TYPES and isinstance(part.get("text"), str):
            ids += _text(part["text"], model)
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            ids += _text(part["refusal"], model)
        elif kind in IMAGE_PART_TYPES:
            ids += [_mark(part)] + [_IMAGE] * (IMAGE_TOKENS - 1)
        else:
            ids += [_PART, _mark(part)]
    return ids


def _responses_item(item: Any, model: str) -> list[int]:
    if not isinstance(item, Mapping):
        return []
    if "role" in item:
        return _message(item, model)
    ids = [_START]
    for field in ("name", "arguments", "output", "text"):
        if isinstance(item.get(field), str):
            ids += _text(item[field], model)
    return [*ids, _END]
