"""BuyerHealth with a fake clock: throttling, spaced probes, recovery, tolerance of noise."""

from __future__ import annotations

import pytest

from exchange.routing.health import BuyerHealth


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_unknown_buyer_is_allowed(clock: FakeClock) -> None:
    health = BuyerHealth(clock=clock)
    assert health.allow("acme")
    assert health.throttled() == frozenset()


def test_throttles_after_mostly_failures(clock: FakeClock) -> None:
    health = BuyerHealth(clock=clock)
    for _ in range(9):
        health.record("acme", False)
    # Nine failures are fewer than min_samples: no verdict yet.
    assert health.allow("acme")
    assert health.throttled() == frozenset()
    health.record("acme", False)
    assert health.throttled() == {"acme"}
    assert not health.allow("acme")
    assert health.is_throttled("acme")


def test_half_failures_throttle_at_the_ratio(clock: FakeClock) -> None:
    health = BuyerHealth(clock=clock)
    for i in range(20):
        health.record("acme", i % 2 == 0)
        if i < 9:
            assert not health.is_throttled("acme")
    assert health.is_throttled("acme")


def test_healthy_buyer_survives_a_few_failures(clock: FakeClock) -> None:
    health = BuyerHealth(clock=clock)
    # 4 failures in every 20 pings, forever: 20% < 50%, never throttled.
    for i in range(500):
        health.record("acme", i % 5 != 0)
        assert health.allow("acme")
    assert health.throttled() == frozenset()


def test_old_failures_slide_out_of_the_window(clock: FakeClock) -> None:
    health = BuyerHealth(clock=clock)
    for _ in range(9):
        health.record("acme", False)
    for _ in range(20):
        health.record("acme", True)
    # The window now holds 20 successes: nine more failures are still a minority.
    for _ in range(9):
        health.record("acme", False)
    assert not health.is_throttled("acme")
    health.record("acme", False)
    assert health.is_throttled("acme")


def test_probes_are_spaced(clock: FakeClock) -> None:
    health = BuyerHealth(clock=clock, probe_every_s=1.0)
    for _ in range(10):
        health.record("acme", False)
    allowed = 0
    for _ in range(50):  # 5 seconds in 0.1 s steps
        clock.advance(0.1)
        if health.allow("acme"):
            allowed += 1
            health.record("acme", False)  # the probe failed again
    assert allowed == 5
    assert health.is_throttled("acme")


def test_no_probe_before_a_full_interval(clock: FakeClock) -> None:
    health = BuyerHealth(clock=clock, probe_every_s=2.0)
    for _ in range(10):
        health.record("acme", False)
    clock.advance(1.9)
    assert not health.allow("acme")
    clock.advance(0.1)
    assert health.allow("acme")
    assert not health.allow("acme")  # the next caller in the same instant is turned away


def test_recovers_after_consecutive_ok_probes(clock: FakeClock) -> None:
    health = BuyerHealth(clock=clock, recover_after=3)
    for _ in range(10):
        health.record("acme", False)
    for _ in range(2):
        clock.advance(1.0)
        assert health.allow("acme")
        health.record("acme", True)
    assert health.is_throttled("acme")
    clock.advance(1.0)
    assert health.allow("acme")
    health.record("acme", True)
    assert health.throttled() == frozenset()
    assert all(health.allow("acme") for _ in range(10))
    # A fresh window: the failures before the throttle no longer count.
    for _ in range(9):
        health.record("acme", False)
    assert not health.is_throttled("acme")


def test_a_failed_probe_restarts_the_streak(clock: FakeClock) -> None:
    health = BuyerHealth(clock=clock, recover_after=3)
    for _ in range(10):
        health.record("acme", False)
    for ok in (True, True, False, True, True):
        clock.advance(1.0)
        assert health.allow("acme")
        health.record("acme", ok)
    assert health.is_throttled("acme")
    clock.advance(1.0)
    assert health.allow("acme")
    health.record("acme", True)
    assert not health.is_throttled("acme")


def test_buyers_are_independent(clock: FakeClock) -> None:
    health = BuyerHealth(clock=clock)
    for _ in range(10):
        health.record("dead", False)
        health.record("fine", True)
    assert health.throttled() == {"dead"}
    assert health.allow("fine")
    assert not health.allow("dead")


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        BuyerHealth(window=5, min_samples=10)
    with pytest.raises(ValueError):
        BuyerHealth(fail_ratio=0.0)
    with pytest.raises(ValueError):
        BuyerHealth(recover_after=0)
