"""Admission: a saturated worker refuses at once instead of queueing past the deadline."""

from __future__ import annotations

import asyncio
import random
import time

from exchange.auction.outcome import CampaignResult, Outcome
from exchange.auction.types import Reason
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


LATE_MS = 150.0  # half of tmax 300
TEN = tuple(f"c{i}" for i in range(10))
Pings = list[tuple[str, float | None]]


def lead(timed_out: tuple[str, ...] = (), on_time: tuple[str, ...] = (), ms: float = 5.0) -> Pings:
    return [(c, None) for c in timed_out] + [(c, ms) for c in on_time]


def taught(max_in_flight: int = 64, clock: FakeClock | None = None) -> Admission:
    """An admission that has seen TEN answer in 5 ms."""
    admission = Admission(max_in_flight, max_lag_ms=100, clock=clock or FakeClock())
    assert admission.heard(lead(on_time=TEN), LATE_MS) is False  # nothing known yet
    return admission


def test_most_usual_buyers_late_at_once_cuts_the_cap_once_a_window() -> None:
    clock = FakeClock()
    admission = taught(clock=clock)
    assert admission.heard(lead(TEN[:6], TEN[6:]), LATE_MS) is True
    assert admission.cap == 48 and admission.cuts == 1
    # The same burst of late leads counts once: no second cut inside the window.
    clock.now += 0.1
    assert admission.heard(lead(TEN), LATE_MS) is True
    assert admission.cap == 48 and admission.cuts == 1
    clock.now += 0.2
    assert admission.heard(lead(TEN), LATE_MS) is True
    assert admission.cap == 36 and admission.cuts == 2
    # Never below the floor: an eighth of max_in_flight here.
    for _ in range(20):
        clock.now += 1
        admission.heard(lead(TEN), LATE_MS)
    assert admission.cap == 8


def test_answers_far_later_than_usual_are_late_before_any_timeout() -> None:
    # Late: past twice the usual 5 ms plus half of LATE_MS, i.e. 85 ms.
    assert taught().heard(lead(on_time=TEN[:6], ms=90.0) + lead(on_time=TEN[6:]), LATE_MS)
    assert not taught().heard(lead(on_time=TEN[:6], ms=80.0) + lead(on_time=TEN[6:]), LATE_MS)
    # Our own saturation: every answer read ~150 ms later than the buyers sent it.
    admission = taught()
    assert admission.heard(lead(on_time=TEN, ms=155.0), LATE_MS) is True


def test_half_late_or_fewer_is_not_congestion() -> None:
    admission = taught()
    assert admission.heard(lead(TEN[:5], TEN[5:]), LATE_MS) is False
    assert admission.heard(lead(("c0",), TEN[1:]), LATE_MS) is False  # one buyer down
    assert admission.cap == 64 and admission.cuts == 0


def test_one_late_campaign_alone_or_unknown_campaigns_are_not_congestion() -> None:
    admission = taught()
    assert admission.heard(lead(("c0",)), LATE_MS) is False  # one buyer says nothing of us
    assert admission.heard(lead(("new1", "new2", "new3")), LATE_MS) is False  # not learnt
    assert admission.heard([], LATE_MS) is False  # no pings: nothing learnt
    assert admission.cap == 64


def test_the_cap_comes_back_as_leads_hear_their_buyers() -> None:
    admission = taught()
    admission.heard(lead(TEN), LATE_MS)
    assert admission.cap == 48
    clean = 0
    while admission.cap < 64:
        admission.heard(lead(on_time=TEN), LATE_MS)
        clean += 1
    # Additive: +1 per cap's worth of leads, so ~56 * 16 leads to climb back from 48.
    assert 700 < clean < 1000, clean
    assert admission.cap == 64  # and not past max_in_flight


def test_buyers_slow_by_nature_are_learnt_and_not_counted() -> None:
    clock = FakeClock()
    admission = Admission(64, max_lag_ms=100, clock=clock)
    for _ in range(60):  # "h" hangs on every lead, "s" takes 200 ms; "a" and "b" answer
        admission.heard(lead(("h",), ("a", "b")) + lead(on_time=("s",), ms=200.0), LATE_MS)
    clock.now += 1
    # a timing out with h and s is one of two usual campaigns late: not congestion.
    assert admission.heard(lead(("a", "h", "s"), ("b",)), LATE_MS) is False
    assert admission.cuts == 0


def test_independent_jitter_does_not_cut_the_cap() -> None:
    """Ten buyers answering anywhere in 60-200 ms (usual ~130 ms), 1% of pings timing out:
    a real vertical on a healthy exchange never loses admission to chance."""
    rng = random.Random(7)
    clock = FakeClock()
    admission = Admission(64, max_lag_ms=100, clock=clock)
    for _ in range(5000):
        clock.now += 0.01
        pings: Pings = [(c, None if rng.random() < 0.01 else rng.uniform(60, 200)) for c in TEN]
        admission.heard(pings, LATE_MS)
    assert admission.cuts == 0 and admission.cap == 64


def test_an_outage_of_most_buyers_is_learnt_and_stops_cutting() -> None:
    clock = FakeClock()
    admission = taught(clock=clock)
    leads = 0
    while admission.heard(lead(TEN[:8], TEN[8:]), LATE_MS):
        clock.now += 0.01
        leads += 1
        assert leads < 1000, "eight buyers down for good must be learnt"
    # Their median rises 1% a ping, from 5 ms past half the ping phase: not in a moment,
    # or our own overload would be mistaken for the buyers' nature.
    assert 300 < leads < 400, leads


def test_a_gradual_slowdown_of_every_buyer_is_still_caught() -> None:
    """Latency creeping up on every lead (a machine filling up) outruns the learnt median."""
    clock = FakeClock()
    admission = taught(clock=clock)
    for k in range(100):
        clock.now += 0.01
        if admission.heard(lead(on_time=TEN, ms=5.0 + 1.5 * k), LATE_MS):
            break
    assert admission.cuts == 1 and 5.0 + 1.5 * k < 110, k


def test_refusal_says_the_cap_was_cut_and_max_in_flight_bounds_it() -> None:
    admission = taught(max_in_flight=8)
    admission.heard(lead(TEN), LATE_MS)
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


def test_an_outcome_names_each_pinged_campaign_and_how_long_it_took() -> None:
    def camp(cid: str, outcome: Reason, latency_ms: float | None) -> CampaignResult:
        return CampaignResult(f"p-{cid}", "b", cid, outcome, outcome, latency_ms=latency_ms)

    outcome = Outcome(
        "sold",
        campaigns=[
            camp("fast", Reason.BID, 12.0),
            camp("nobid", Reason.NO_BID, 149.9),
            camp("hang", Reason.TIMEOUT, 300.2),
            camp("broken", Reason.ERROR, 3.0),
            camp("capped", Reason.CAPPED, None),  # never pinged: says nothing
            camp("fixed", Reason.FIXED_PRICE, None),
        ],
    )
    assert list(outcome.pings()) == [
        ("fast", 12.0),
        ("nobid", 149.9),
        ("hang", None),
        ("broken", 3.0),
    ]
