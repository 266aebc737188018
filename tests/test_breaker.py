"""The circuit breaker alone, on a clock the test moves."""

from __future__ import annotations

from batchrunner.runner.breaker import PROBE_FIRST_S, PROBE_MAX_S, TRIP_AFTER, Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tripped(breaker: Breaker) -> None:
    opened = [breaker.unreachable(f"refused {i}") for i in range(TRIP_AFTER)]
    assert opened == [False] * (TRIP_AFTER - 1) + [True]


def test_a_streak_of_unreachable_calls_opens_it_and_an_answer_between_resets_it() -> None:
    breaker = Breaker(give_up_s=60, clock=Clock())
    for _ in range(TRIP_AFTER - 1):
        breaker.unreachable("refused")
    assert breaker.answered() is False  # it was closed: nothing to close
    tripped(breaker)
    assert breaker.is_open and breaker.last_failure == f"refused {TRIP_AFTER - 1}"


def test_while_open_one_probe_goes_at_a_time_after_a_doubling_wait() -> None:
    clock = Clock()
    breaker = Breaker(give_up_s=600, clock=clock)
    tripped(breaker)
    assert not breaker.may_call()
    assert breaker.seconds_to_next_probe() == PROBE_FIRST_S
    waits = []
    for _ in range(8):
        clock.now += breaker.seconds_to_next_probe()
        assert breaker.may_call()  # the probe
        assert not breaker.may_call()  # and no second one beside it
        assert breaker.seconds_to_next_probe() == breaker.seconds_to_give_up()  # no polling
        breaker.unreachable("sent before it opened")  # a straggler is not the probe's result
        assert not breaker.may_call()
        breaker.unreachable("still refused", probe=True)
        waits.append(breaker.seconds_to_next_probe())
    assert waits == [min(PROBE_FIRST_S * 2**i, PROBE_MAX_S) for i in range(1, 9)]
    clock.now += breaker.seconds_to_next_probe()
    assert breaker.may_call()
    assert breaker.answered() is True  # the probe was answered: closed, calls go
    assert breaker.may_call() and breaker.may_call()
    tripped(breaker)  # and a new streak starts from the first wait again
    assert breaker.seconds_to_next_probe() == PROBE_FIRST_S


def test_it_gives_up_after_the_wait_it_was_given_and_says_why() -> None:
    clock = Clock()
    breaker = Breaker(give_up_s=30, clock=clock)
    tripped(breaker)
    clock.now += 29.9
    assert not breaker.gave_up()
    clock.now += 0.1
    assert breaker.gave_up()
    assert breaker.stop_reason() == f"unreachable: no answer for 30s: refused {TRIP_AFTER - 1}"
