"""Admission: a saturated worker refuses at once instead of queueing past the deadline."""

from __future__ import annotations

import asyncio
import time

from exchange.intake.admission import Admission


async def test_in_flight_cap() -> None:
    admission = Admission(max_in_flight=2, max_lag_ms=1000)
    assert admission.refusal() is None
    admission.in_flight = 2
    assert admission.refusal() == "too many leads in flight"
    admission.in_flight = 1
    assert admission.refusal() is None


async def test_a_blocked_loop_is_refused_until_it_recovers() -> None:
    admission = Admission(max_in_flight=100, max_lag_ms=30, tick_s=0.01)
    admission.start()
    try:
        await asyncio.sleep(0.05)
        assert admission.refusal() is None
        time.sleep(0.15)  # the loop is stuck, as under a flood of requests
        await asyncio.sleep(0.015)  # the next tick runs ~150 ms late
        refusal = admission.refusal()
        assert refusal is not None and "saturated" in refusal, admission.lag_ms
        deadline = time.monotonic() + 1.0
        while admission.refusal() is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert admission.refusal() is None, admission.lag_ms
    finally:
        admission.stop()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lead(*late: str, answered: tuple[str, ...] = ()) -> list[tuple[str, bool]]:
    return [(c, True) for c in late] + [(c, False) for c in answered]


TEN = tuple(f"c{i}" for i in range(10))


def test_most_usual_buyers_late_at_once_cuts_the_cap_once_a_window() -> None:
    clock = FakeClock()
    admission = Admission(max_in_flight=64, max_lag_ms=100, clock=clock)
    assert admission.heard(lead(*TEN[:6], answered=TEN[6:])) is True
    assert admission.cap == 48 and admission.cuts == 1
    # The same burst of late leads counts once: no second cut inside the window.
    clock.now += 0.1
    assert admission.heard(lead(*TEN)) is True
    assert admission.cap == 48 and admission.cuts == 1
    clock.now += 0.2
    assert admission.heard(lead(*TEN)) is True
    assert admission.cap == 36 and admission.cuts == 2
    # Never below the floor: an eighth of max_in_flight here.
    for _ in range(20):
        clock.now += 1
        admission.heard(lead(*TEN))
    assert admission.cap == 8


def test_half_late_or_fewer_is_not_congestion() -> None:
    admission = Admission(max_in_flight=64, max_lag_ms=100, clock=FakeClock())
    assert admission.heard(lead(*TEN[:5], answered=TEN[5:])) is False
    assert admission.heard(lead("c0", answered=TEN[1:])) is False  # one buyer down
    assert admission.cap == 64 and admission.cuts == 0


def test_one_late_of_a_single_usual_campaign_is_not_congestion() -> None:
    admission = Admission(max_in_flight=64, max_lag_ms=100, clock=FakeClock())
    assert admission.heard(lead("only")) is False  # one buyer says nothing about us
    assert admission.heard([]) is False  # no pings: nothing learnt
    assert admission.cap == 64


def test_the_cap_comes_back_as_leads_hear_their_buyers() -> None:
    clock = FakeClock()
    admission = Admission(max_in_flight=64, max_lag_ms=100, clock=clock)
    admission.heard(lead(*TEN))
    assert admission.cap == 48
    clean = 0
    while admission.cap < 64:
        admission.heard(lead(answered=TEN))
        clean += 1
    # Additive: +1 per cap's worth of leads, so ~56 * 16 leads to climb back from 48.
    assert 700 < clean < 1000, clean
    assert admission.cap == 64  # and not past max_in_flight


def test_a_campaign_that_always_times_out_is_learnt_and_not_counted() -> None:
    clock = FakeClock()
    admission = Admission(max_in_flight=64, max_lag_ms=100, clock=clock)
    # Before anything is learnt, "a" and the hanging "h" late of three is congestion.
    assert admission.heard(lead("a", "h", answered=("b",))) is True
    for _ in range(60):  # h hangs on every lead; a and b answer
        admission.heard(lead("h", answered=("a", "b")))
    cuts = admission.cuts
    clock.now += 1
    assert admission.heard(lead("a", "h", answered=("b",))) is False
    assert admission.cuts == cuts


def test_an_outage_of_most_buyers_is_learnt_and_stops_cutting() -> None:
    clock = FakeClock()
    admission = Admission(max_in_flight=64, max_lag_ms=100, clock=clock)
    leads = 0
    while admission.heard(lead(*TEN[:8], answered=TEN[8:])):
        clock.now += 0.05
        leads += 1
        assert leads < 300, "eight buyers down for good must be learnt"
    # Learnt at a quarter of the usual rate: long enough not to mistake our own overload.
    assert leads > 100, leads


def test_refusal_says_the_cap_was_cut_and_max_in_flight_bounds_it() -> None:
    clock = FakeClock()
    admission = Admission(max_in_flight=8, max_lag_ms=100, clock=clock)
    admission.heard(lead(*TEN))
    assert admission.cap == 6
    admission.in_flight = 6
    refusal = admission.refusal()
    assert refusal is not None and "buyers answer late" in refusal and "cap 6" in refusal
    admission.in_flight = 5
    assert admission.refusal() is None
    admission.max_in_flight = 4  # a reload below the cut cap: the cap follows
    assert admission.cap == 4
    admission.max_in_flight = 100  # a reload above: up to its floor, then climbs by itself
    assert admission.cap == 12.5
