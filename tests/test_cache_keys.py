"""Cache-aware sending's key plan (runner/cache_keys.py): who opens a group, who waits for it,
and how a group's requests spread over prompt_cache_key values. A clock the test moves stands in
for time's passing between minutes; the waits are real (and short)."""

from __future__ import annotations

import anyio
import orjson
import pytest

from batchrunner.runner import cache_keys
from batchrunner.runner.cache_keys import KEY_COLD_S, KEY_WINDOW_S, CacheKeys, KeyLease

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


BODY = b'{"model":"gpt-5-mini","messages":[{"role":"user","content":"hi"}]}'


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key_of(lease: KeyLease, body: bytes = BODY) -> str | None:
    key = orjson.loads(lease.body(body)).get("prompt_cache_key")
    return str(key) if key is not None else None


async def test_a_groups_first_request_goes_alone_and_the_rest_follow_its_answer() -> None:
    keys = CacheKeys(15, "run1", Clock())
    opener = await keys.lease("g", BODY)
    assert opener.opener
    got: list[KeyLease] = []

    async def follower() -> None:
        got.append(await keys.lease("g", BODY))

    async with anyio.create_task_group() as tasks:
        for _ in range(3):
            tasks.start_soon(follower)
        await anyio.sleep(0.05)
        assert got == []  # they wait for the opener's answer
        keys.answered(opener, warmed=True)
    assert len(got) == 3
    assert {key_of(lease) for lease in got} == {key_of(opener)}
    assert not any(lease.opener for lease in got)


async def test_a_key_takes_at_most_key_rpm_requests_a_minute_then_another_opens() -> None:
    clock = Clock()
    keys = CacheKeys(15, "run1", clock)
    first = await keys.lease("g", BODY)
    keys.answered(first, warmed=True)
    same = [await keys.lease("g", BODY) for _ in range(14)]  # 15 in the minute with the opener
    assert {key_of(lease) for lease in same} == {key_of(first)}
    second = await keys.lease("g", BODY)
    assert second.opener and key_of(second) != key_of(first)
    keys.answered(second, warmed=True)
    clock.now += KEY_WINDOW_S + 0.1  # the first key's minute is over: it is filled again first
    again = await keys.lease("g", BODY)
    assert not again.opener and key_of(again) in {key_of(first), key_of(second)}


async def test_while_an_opener_is_out_only_what_its_key_can_take_waits() -> None:
    keys = CacheKeys(4, "run1", Clock())
    opener = await keys.lease("g", BODY)
    waiting: list[KeyLease] = []

    async def follower() -> None:
        waiting.append(await keys.lease("g", BODY))

    async with anyio.create_task_group() as tasks:
        for _ in range(3):  # what the opened key can take besides its opener
            tasks.start_soon(follower)
        await anyio.sleep(0.02)
        assert waiting == []
        more = await keys.lease("g", BODY)  # a fourth does not wait: it opens a second key
        assert more.opener and key_of(more) != key_of(opener)
        keys.answered(opener, warmed=True)
        keys.answered(more, warmed=True)
    assert len(waiting) == 3 and not any(lease.opener for lease in waiting)
    assert {key_of(lease) for lease in waiting} <= {key_of(opener), key_of(more)}


async def test_an_opener_without_an_answer_hands_the_opening_on() -> None:
    keys = CacheKeys(15, "run1", Clock())
    opener = await keys.lease("g", BODY)
    got: list[KeyLease] = []

    async def follower() -> None:
        got.append(await keys.lease("g", BODY))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(follower)
        await anyio.sleep(0.02)
        keys.answered(opener, warmed=False)  # a 429, a timeout: nothing was cached
    assert got[0].opener and key_of(got[0]) == key_of(opener)


async def test_a_key_unused_for_long_is_opened_again_alone() -> None:
    clock = Clock()
    keys = CacheKeys(15, "run1", clock)
    first = await keys.lease("g", BODY)
    keys.answered(first, warmed=True)
    clock.now += KEY_COLD_S + 1
    again = await keys.lease("g", BODY)
    assert again.opener and key_of(again) == key_of(first)


async def test_the_wait_for_an_opener_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_keys, "OPENER_WAIT_S", 0.05)
    keys = CacheKeys(15, "run1", Clock())
    await keys.lease("g", BODY)  # never answers
    with anyio.fail_after(2):
        late = await keys.lease("g", BODY)
    assert late.opener  # it opens a key of its own rather than wait on


async def test_groups_and_processes_get_keys_of_their_own() -> None:
    one, two = CacheKeys(15, "run1", Clock()), CacheKeys(15, "run2", Clock())
    a, b, c = await one.lease("a" * 32, BODY), await one.lease("b" * 32, BODY), None
    c = await two.lease("a" * 32, BODY)
    assert a.opener and b.opener and c.opener  # none waits for another group's opener
    assert len({key_of(a), key_of(b), key_of(c)}) == 3


async def test_a_requests_own_key_is_kept_and_its_group_still_opens_alone() -> None:
    own = b'{"model":"m","prompt_cache_key":"mine","messages":[]}'
    keys = CacheKeys(15, "run1", Clock())
    opener = await keys.lease("g", own)
    assert opener.opener and opener.body(own) == own
    with anyio.move_on_after(0.05) as waited:
        await keys.lease("g", own)
    assert waited.cancelled_caught  # it waits for the opener, whose key it shares
    keys.answered(opener, warmed=True)
    for _ in range(40):  # no cap: the key is the user's, nothing to spread
        assert (await keys.lease("g", own)).body(own) == own


async def test_once_the_server_refuses_the_parameter_bodies_go_as_they_are() -> None:
    keys = CacheKeys(15, "run1", Clock())
    keys.answered(await keys.lease("g", BODY), warmed=True)
    keys.stop_spreading()
    lease = await keys.lease("g", BODY)
    assert lease.body(BODY) == BODY


def test_the_key_is_added_to_any_json_object() -> None:
    keys = CacheKeys(15, "run1", Clock())
    lease = anyio.run(keys.lease, "g", BODY)
    for body in (BODY, b"{}", b'{"a": 1}\n'):
        sent = orjson.loads(lease.body(body))
        assert sent["prompt_cache_key"].startswith("br-g-run1-")
        assert {k: v for k, v in sent.items() if k != "prompt_cache_key"} == orjson.loads(body)
