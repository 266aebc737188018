"""The throttle on its own: parsing the server's words, pausing, learning, fairness."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from batchrunner.dialects import ServerLimits
from batchrunner.dialects.openai import parse_duration, read_server_limits, wait_from_message
from batchrunner.runner.limits import PauseLog, Throttle


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("120ms", 0.12),
        ("1s", 1.0),
        ("0.5s", 0.5),
        ("6m0s", 360.0),
        ("1h2m3.5s", 3723.5),
        ("20ms", 0.02),
        ("soon", None),
        ("", None),
        ("5x", None),
    ],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_wait_from_openai_messages() -> None:
    message = (
        "Rate limit reached for gpt-4o-mini in organization org-x on tokens per min (TPM): "
        "Limit 200000, Used 199000, Requested 1500. Please try again in 150ms. Visit ..."
    )
    assert wait_from_message(message) == pytest.approx(0.15)
    assert wait_from_message("Please try again in 1m30s.") == pytest.approx(90)
    assert wait_from_message("You exceeded your current quota") is None
    assert wait_from_message(None) is None


def test_read_server_limits() -> None:
    limits = read_server_limits(
        {
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-tokens": "bogus",
        }
    )
    assert limits == ServerLimits(500, 499, 0.12, 30000, None, None)
    assert read_server_limits({}).empty


def timed(throttle: Throttle, count: int, tokens: int = 0) -> float:
    async def go() -> float:
        started = time.monotonic()
        with anyio.fail_after(30):
            for _ in range(count):
                await throttle.acquire(tokens)
        return time.monotonic() - started

    return anyio.run(go)


def test_requests_per_minute_is_paced_per_second_not_per_minute() -> None:
    # aiolimiter(600, 60) would let all 600 through at once; ours lets 2.5 + 10/s through.
    elapsed = timed(Throttle(rpm=600, tpm=None), 25)
    assert 1.2 < elapsed < 3.0


def test_no_limits_means_no_waiting() -> None:
    assert timed(Throttle(rpm=None, tpm=None), 10_000) < 1.0


def test_a_server_limit_tightens_the_configured_one_and_applies_when_none_was_set() -> None:
    throttle = Throttle(rpm=6000, tpm=None)
    throttle.observe(ServerLimits(limit_requests=600, remaining_requests=500))
    assert throttle.requests_per_minute == 600
    throttle.observe(ServerLimits(limit_requests=60_000))  # looser: the configured one holds
    assert throttle.requests_per_minute == 6000
    unconfigured = Throttle(rpm=None, tpm=None)
    assert not unconfigured.counts_tokens
    unconfigured.observe(ServerLimits(limit_tokens=120_000))
    assert unconfigured.tokens_per_minute == 120_000 and unconfigured.counts_tokens


def test_a_429_pauses_every_worker_then_ramps_up() -> None:
    throttle = Throttle(rpm=6000, tpm=None)
    finished: list[float] = []

    async def go() -> None:
        started = time.monotonic()
        throttle.rate_limited(0.5)
        async with anyio.create_task_group() as workers:
            for _ in range(5):
                workers.start_soon(worker, started)

    async def worker(started: float) -> None:
        await throttle.acquire(0)
        finished.append(time.monotonic() - started)

    anyio.run(go)
    assert len(finished) == 5 and min(finished) >= 0.45
    assert throttle.requests_per_minute == 3000  # half the rate right after the pause


def test_a_429_without_a_time_still_pauses_and_a_long_one_is_capped() -> None:
    throttle = Throttle(rpm=None, tpm=None)
    throttle.rate_limited(None)
    assert timed(throttle, 1) >= 0.9
    throttle.rate_limited(10_000)
    assert throttle._paused_until - time.monotonic() <= 60.0


def test_an_empty_server_bucket_pauses_before_the_429() -> None:
    throttle = Throttle(rpm=None, tpm=None)
    throttle.observe(ServerLimits(limit_requests=120, remaining_requests=0))  # 0.5 s a request
    assert timed(throttle, 1) >= 0.4


def test_requests_larger_than_the_token_bucket_do_not_raise_and_wait_their_share() -> None:
    throttle = Throttle(rpm=None, tpm=60_000)  # 1,000 tokens/s, a quarter second of burst
    assert timed(throttle, 1, tokens=2500) == pytest.approx(2.25, abs=0.4)


def test_large_requests_are_not_starved_by_small_ones() -> None:
    throttle = Throttle(rpm=None, tpm=60_000)
    order: list[str] = []

    async def take(name: str, tokens: int) -> None:
        await throttle.acquire(tokens)
        order.append(name)

    async def go() -> None:
        with anyio.fail_after(20):
            await throttle.acquire(1000)  # the bucket is now full
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(take, "large", 900)
                await anyio.sleep(0.01)
                for i in range(5):
                    tasks.start_soon(take, f"small-{i}", 100)

    anyio.run(go)
    assert order[0] == "large"  # aiolimiter alone would serve the small ones first


def test_estimates_above_actual_usage_give_capacity_back() -> None:
    throttle = Throttle(rpm=None, tpm=60_000)
    timed(throttle, 1, tokens=1000)
    throttle.settle(estimated=1000, actual=100)  # 900 tokens were reserved for nothing
    assert timed(throttle, 1, tokens=900) < 0.3


def test_a_pause_extended_by_later_429s_is_one_window_and_the_one_under_way_stays() -> None:
    """The run's pause log (what `report` plots): a 429 during a pause extends it, one after
    it is over starts another; taking only finished windows leaves the growing one."""
    now = [datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)]
    log = PauseLog(lambda: now[0])
    log.paused(2.0)
    now[0] += timedelta(seconds=1)
    log.paused(3.0)  # within the first: until 12:00:04
    now[0] += timedelta(seconds=5)  # 12:00:06, the first is over
    log.paused(1.0)
    log.paused(0.0)  # nothing held back: no window
    assert log.take(finished_only=True) == [
        (datetime(2026, 12, 1, 12, 0, 0), datetime(2026, 12, 1, 12, 0, 4))
    ]
    assert log.take(finished_only=True) == []  # the second still lasts
    now[0] += timedelta(seconds=2)  # 12:00:08, the second is over
    assert log.take(finished_only=False) == [
        (datetime(2026, 12, 1, 12, 0, 6), datetime(2026, 12, 1, 12, 0, 7))
    ]


def test_a_pause_still_under_way_when_the_run_ends_ends_with_it() -> None:
    """Review finding: a run that ends (Ctrl-C, stop) during a long pause held nothing back
    after its end, so its window must not run on into the time of the next run (`report`
    would plot a pause that never held a request back)."""
    now = [datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)]
    log = PauseLog(lambda: now[0])
    log.paused(60.0)
    now[0] += timedelta(seconds=5)  # the run ends 5 s into a 60 s pause
    assert log.take(finished_only=False) == [
        (datetime(2026, 12, 1, 12, 0, 0), datetime(2026, 12, 1, 12, 0, 5))
    ]
    log.paused(1.0)  # ended the moment it began: no window
    assert log.take(finished_only=False) == []
