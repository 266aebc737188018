"""Cache-aware sending: the requests of one prefix group go so that the provider's prompt cache
can serve their shared head (prefixes.py says which requests share one, and how long it is).

What OpenAI documents, and what follows from it:

- A machine caches a prompt's prefix once it has processed a request with it. Requests that
  start together all miss: so the first request of a group on a key (its opener) goes alone,
  and the group's next requests wait for its answer (at most OPENER_WAIT_S).
- Requests are routed by a hash of the prompt's first ~256 tokens combined with
  `prompt_cache_key`; beyond about 15 requests per minute for one prefix-and-key pair they
  overflow to other machines, whose caches are cold. So a group's requests are spread over keys
  of its own, each taking at most `key_rpm` requests in any minute: as many keys as the group's
  rate needs, filled one after the other, so a slower rate uses fewer keys.
- A cached prefix is forgotten after 5 to 10 minutes of inactivity: a key unused for KEY_COLD_S
  is opened again, alone.

A request that sets its own `prompt_cache_key` keeps it: its group still gets an opener, but
nothing is spread. Each process names its keys apart (two workers on one key would double its
rate).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from batchrunner.failures import ErrorKind, Verdict
from batchrunner.prefixes import cacheable_tokens

KEY_WINDOW_S = 62.0  # a key's "minute", with a margin for the time a request takes to arrive
KEY_COLD_S = 240.0  # a key unused this long may have lost its cached prefix: open it again
OPENER_WAIT_S = 30.0  # the longest a request waits for its group's opener to answer
FORGET_EVERY = 10_000  # leases between sweeps that forget groups unused for KEY_COLD_S
OWN_KEY = b'"prompt_cache_key"'
ADDED_KEY_BYTES = 64  # what a key adds to a Batch API line, for the planner's size limits


@dataclass(eq=False)
class _Key:
    name: str | None  # what is sent as prompt_cache_key (None: the request's own, or none)
    sends: deque[float] = field(default_factory=deque)
    warm: bool = False  # a request on it was answered: its machine holds the prefix
    opening: bool = False  # its opener is in flight
    last_used: float = float("-inf")

    def usable(self, now: float, cap: float | None) -> bool:
        if not self.warm or self.opening or now - self.last_used > KEY_COLD_S:
            return False
        while self.sends and self.sends[0] <= now - KEY_WINDOW_S:
            self.sends.popleft()
        return cap is None or len(self.sends) < cap


@dataclass(eq=False)
class _Group:
    keys: list[_Key] = field(default_factory=list)
    current: _Key | None = None  # the key being filled
    opening: int = 0  # openers in flight
    waiting: int = 0  # requests waiting for an opener's answer
    changed: anyio.Event = field(default_factory=anyio.Event)  # set when an opener answers
    last_used: float = 0.0


@dataclass(frozen=True, slots=True)
class KeyLease:
    """The key one request goes with; hand it back with `CacheKeys.answered`."""

    group: _Group
    key: _Key
    opener: bool

    def body(self, body: bytes) -> bytes:
        """The request body with this key added."""
        return body if self.key.name is None else with_cache_key(body, self.key.name)


def refuses_cache_key(verdict: Verdict) -> bool:
    """A 400 that names prompt_cache_key: a server that does not take the parameter."""
    return verdict.kind == ErrorKind.INVALID_REQUEST and "prompt_cache_key" in (
        verdict.message or ""
    )


def with_cache_key(body: bytes, key: str) -> bytes:
    """A request body (a JSON object, ending in `}`) with `prompt_cache_key` added, unless it
    has one of its own."""
    if OWN_KEY in body:
        return body
    head = body.rstrip()[:-1].rstrip()
    comma = b"," if not head.endswith(b"{") else b""
    return b'%s%s"prompt_cache_key":"%s"}' % (head, comma, key.encode())


class BatchKeys:
    """Keys for the lines of one Batch API file: each group's lines in runs of `per_key` per
    key, so a key stays under the per-pair rate however fast the batch is worked through."""

    def __init__(self, per_key: float, batch_id: int) -> None:
        self._per_key = max(1, int(per_key))
        self._batch_id = batch_id
        self._lines: dict[str, int] = {}  # group -> its lines so far in this file

    def body(self, body: str, group: str | None, prefix_tokens: int | None) -> str:
        if group is None or not cacheable_tokens(prefix_tokens):
            return body
        number = self._lines.get(group, 0)
        self._lines[group] = number + 1
        key = f"br-{group[:16]}-b{self._batch_id}-{number // self._per_key}"
        return with_cache_key(body.encode(), key).decode()


class CacheKeys:
    """Which key each request of each prefix group carries, and when it may go."""

    def __init__(
        self,
        key_rpm: float,
        namespace: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cap = key_rpm
        self._namespace = namespace  # this process's: its keys are its own
        self._clock = clock
        self._groups: dict[str, _Group] = {}
        self._spread = True
        self._leases = 0

    @property
    def spreading(self) -> bool:
        return self._spread

    def stop_spreading(self) -> None:
        """The server refused prompt_cache_key: send requests as they are from now on."""
        self._spread = False

    async def lease(self, group_id: str, body: bytes) -> KeyLease:
        """The key for a request of `group_id`; waits while the group's opener is out, and
        the keys already opened could take this request once it answers."""
        spread = self._spread and OWN_KEY not in body
        group = self._group(group_id if spread else f"{group_id}:as-sent")
        give_up_at = anyio.current_time() + OPENER_WAIT_S
        while True:
            now = self._clock()
            key = self._usable(group, now, self._cap if spread else None)
            if key is not None:
                return self._send(group, key, now, opener=False)
            room = group.opening * max(0.0, self._cap - 1) if spread else float("inf")
            wait = give_up_at - anyio.current_time()
            if group.opening and group.waiting < room and wait > 0:
                group.waiting += 1
                try:
                    with anyio.move_on_after(wait):
                        await group.changed.wait()
                finally:
                    group.waiting -= 1
                continue
            key = self._to_open(group_id, group, now, spread)
            if key.opening:  # waited long enough for an opener that is still out
                return self._send(group, key, now, opener=False)
            key.opening = True
            group.opening += 1
            return self._send(group, key, now, opener=True)

    def answered(self, lease: KeyLease, warmed: bool) -> None:
        """The request went (and `warmed`: an answer came back, its prefix now cached), or
        was never sent (`warmed` False); an opener's waiters look again."""
        if not lease.opener:
            return
        key, group = lease.key, lease.group
        key.opening = False
        key.warm = key.warm or warmed
        group.opening -= 1
        if warmed:
            group.current = key
        changed, group.changed = group.changed, anyio.Event()
        changed.set()

    def _group(self, group_id: str) -> _Group:
        self._leases += 1
        if self._leases % FORGET_EVERY == 0:
            self._forget_idle_groups()
        group = self._groups.get(group_id)
        if group is None:
            group = self._groups[group_id] = _Group()
        return group

    def _usable(self, group: _Group, now: float, cap: float | None) -> _Key | None:
        """The key being filled while it has room, else the first other one that has."""
        current = group.current
        if current is not None and current.usable(now, cap):
            return current
        for key in group.keys:
            if key is not current and key.usable(now, cap):
                group.current = key
                return key
        return None

    def _to_open(self, group_id: str, group: _Group, now: float, spread: bool) -> _Key:
        """A key to open: one gone cold (or whose opener got no answer), else a new one; with
        no spreading the group's one key."""
        if not spread:
            if not group.keys:
                group.keys.append(_Key(None))
            return group.keys[0]
        for key in group.keys:
            if key.name is not None and not key.opening and not key.usable(now, None):
                key.warm = False
                key.sends.clear()
                return key
        key = _Key(f"br-{group_id[:16]}-{self._namespace}-{len(group.keys)}")
        group.keys.append(key)
        return key

    def _send(self, group: _Group, key: _Key, now: float, opener: bool) -> KeyLease:
        key.sends.append(now)
        key.last_used = group.last_used = now
        return KeyLease(group, key, opener)

    def _forget_idle_groups(self) -> None:
        """Bounded memory on jobs of many small groups."""
        now = self._clock()
        idle = [
            group_id
            for group_id, group in self._groups.items()
            if not group.opening and not group.waiting and now - group.last_used > KEY_COLD_S
        ]
        for group_id in idle:
            del self._groups[group_id]
