"""Admission: a saturated worker refuses at once instead of queueing past the deadline."""

from __future__ import annotations

import asyncio
import math
import random
import time

from exchange.auction.fanout import PingResult, ping_timings
from exchange.auction.types import Reason
from exchange.buyers.protocol import PingAnswer
from exchange.intake.admission import Admission
from tests.routing.test_caps import make_target


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


TMAX_MS = 300.0  # prompt: a median under 150 ms; late: past 2 x median + 75 ms
TEN = tuple(f"b{i}" for i in range(10))
Pings = list[tuple[str, float | None]]


def lead(timed_out: tuple[str, ...] = (), on_time: tuple[str, ...] = (), ms: float = 5.0) -> Pings:
    return [(b, None) for b in timed_out] + [(b, ms) for b in on_time]


def taught(max_in_flight: int = 64, clock: FakeClock | None = None) -> Admission:
    """A loaded worker (every slot in use) that has seen TEN answer in 5 ms."""
    admission = Admission(max_in_flight, max_lag_ms=100, clock=clock or FakeClock())
    assert admission.heard(lead(on_time=TEN), TMAX_MS) is False  # nothing known yet
    admission.in_flight = max_in_flight
    return admission


def test_repeated_correlated_lateness_cuts_the_cap_once_a_window() -> None:
    clock = FakeClock()
    admission = taught(clock=clock)
    assert admission.heard(lead(TEN[:6], TEN[6:]), TMAX_MS) is True
    assert admission.cap == 64, "one congested lead alone is no sign yet"
    assert admission.heard(lead(TEN), TMAX_MS) is True
    assert admission.cap == 48 and admission.limit == 48 and admission.cuts == 1
    # The same burst of late leads counts once: no second cut inside the window (tmax).
    clock.now += 0.2
    assert admission.heard(lead(TEN), TMAX_MS) is True
    assert admission.cap == 48 and admission.cuts == 1
    clock.now += 0.15  # a new window: the sign must repeat in it before the next cut
    admission.heard(lead(TEN), TMAX_MS)
    assert admission.cuts == 1
    admission.heard(lead(TEN), TMAX_MS)
    assert admission.cap == 36 and admission.cuts == 2
    # Never below the floor: an eighth of max_in_flight here.
    for _ in range(20):
        clock.now += 1
        admission.heard(lead(TEN), TMAX_MS)
        admission.heard(lead(TEN), TMAX_MS)
    assert admission.cap == 8 and admission.limit == 8


def test_each_cut_is_reported() -> None:
    cuts: list[int] = []
    admission = Admission(8, max_lag_ms=100, clock=FakeClock(), on_cut=lambda: cuts.append(1))
    admission.heard(lead(on_time=TEN), TMAX_MS)
    admission.in_flight = 8
    for _ in range(3):
        admission.heard(lead(TEN), TMAX_MS)
    assert cuts == [1] and admission.cuts == 1


def test_a_few_congested_leads_among_many_cut_nothing() -> None:
    admission = taught()
    for _ in range(30):
        admission.heard(lead(on_time=TEN), TMAX_MS)
    admission.heard(lead(TEN), TMAX_MS)
    admission.heard(lead(TEN), TMAX_MS)  # 2 of 32 leads in the window: under a tenth
    assert admission.cuts == 0


def test_answers_far_later_than_usual_are_late_before_any_timeout() -> None:
    def twice(admission: Admission, pings: Pings) -> bool:
        return admission.heard(pings, TMAX_MS) and admission.heard(pings, TMAX_MS)

    # Late: past twice the usual 5 ms plus a quarter of tmax, i.e. 85 ms.
    assert twice(taught(), lead(on_time=TEN[:6], ms=90.0) + lead(on_time=TEN[6:]))
    assert not twice(taught(), lead(on_time=TEN[:6], ms=80.0) + lead(on_time=TEN[6:]))
    # Our own saturation: every answer read ~150 ms later than the buyers sent it.
    admission = taught()
    assert twice(admission, lead(on_time=TEN, ms=155.0)) and admission.cuts == 1


def test_an_idle_worker_cuts_nothing() -> None:
    """Refusing leads cannot speed up answers a worker with little in flight is not slowing:
    cold connections after a quiet spell, or buyers slow together, are not our overload."""
    admission = taught()
    admission.in_flight = 31  # under half of the cap in use
    for _ in range(5):
        assert admission.heard(lead(TEN), TMAX_MS) is False
    assert admission.cuts == 0 and admission.cap == 64


def test_half_late_or_fewer_is_not_congestion() -> None:
    admission = taught()
    for _ in range(3):
        assert admission.heard(lead(TEN[:5], TEN[5:]), TMAX_MS) is False
        assert admission.heard(lead(("b0",), TEN[1:]), TMAX_MS) is False  # one buyer down
    assert admission.cap == 64 and admission.cuts == 0


def test_too_few_prompt_buyers_or_unknown_ones_are_not_congestion() -> None:
    admission = taught()
    for _ in range(3):
        assert admission.heard(lead(("b0", "b1")), TMAX_MS) is False  # two say too little
        assert admission.heard(lead(("n1", "n2", "n3")), TMAX_MS) is False  # not learnt yet
        assert admission.heard([], TMAX_MS) is False  # no pings: nothing learnt
    assert admission.cap == 64


def test_a_buyer_counts_once_however_many_campaigns_it_has() -> None:
    admission = taught()
    # b0 (three campaigns) timing out with b1 and b2 prompt is one late buyer of three.
    pings = lead(("b0", "b0", "b0"), ("b1", "b2"))
    for _ in range(3):
        assert admission.heard(pings, TMAX_MS) is False
    assert admission.cuts == 0


def test_the_cap_comes_back_as_leads_hear_their_buyers() -> None:
    admission = taught()
    admission.heard(lead(TEN), TMAX_MS)
    admission.heard(lead(TEN), TMAX_MS)
    assert admission.cap == 48
    clean = 0
    while admission.cap < 64:
        admission.heard([], TMAX_MS)  # any lead not congested, pings or not
        clean += 1
    # Additive: +1 per cap's worth of leads, so ~56 * 16 leads to climb back from 48.
    assert 700 < clean < 1000, clean
    assert admission.cap == 64  # and not past max_in_flight


def test_a_cap_that_still_binds_long_after_its_last_cut_is_restored() -> None:
    clock = FakeClock()
    admission = taught(max_in_flight=8, clock=clock)
    admission.heard(lead(TEN), TMAX_MS)
    admission.heard(lead(TEN), TMAX_MS)
    assert admission.limit == 6
    admission.in_flight = 6
    clock.now += 9
    refusal = admission.refusal()
    assert refusal is not None and "buyers answer late: cap 6" in refusal
    clock.now += 1.5  # no lead has grown it back (none reached a prompt buyer): start over
    assert admission.refusal() is None
    assert admission.limit == 8


def test_buyers_slow_by_nature_are_learnt_and_not_counted() -> None:
    clock = FakeClock()
    admission = Admission(64, max_lag_ms=100, clock=clock)
    admission.in_flight = 64
    prompt = ("a", "b", "c")
    for _ in range(60):  # "h" hangs on every lead, "s" takes 200 ms; a, b and c answer
        admission.heard(lead(("h",), prompt) + lead(on_time=("s",), ms=200.0), TMAX_MS)
    clock.now += 1
    # a timing out with h and s is one of three prompt buyers late: not congestion.
    for _ in range(3):
        assert admission.heard(lead(("a", "h", "s"), ("b", "c")), TMAX_MS) is False
    assert admission.cuts == 0


def test_long_tailed_buyers_on_a_loaded_worker_do_not_cut_the_cap() -> None:
    """Three buyers with a log-normal latency (median 80 ms, sigma 0.6: p99 ~320 ms) and a
    250 ms timeout, 150 leads/s on a loaded worker: slow answers line up on a few leads
    per thousand by chance, never on a tenth of a window's."""
    rng = random.Random(7)
    clock = FakeClock()
    admission = Admission(64, max_lag_ms=100, clock=clock)
    admission.in_flight = 64
    congested = 0
    for _ in range(20_000):
        clock.now += 1 / 150
        pings: Pings = []
        for buyer in ("x", "y", "z"):
            ms = rng.lognormvariate(math.log(80), 0.6)
            pings.append((buyer, None if ms > 250 else ms))
        congested += admission.heard(pings, TMAX_MS)
    assert congested > 10, "the chance alignments this test is about did happen"
    assert admission.cuts == 0 and admission.cap == 64


def test_an_outage_of_most_buyers_is_learnt_and_stops_cutting() -> None:
    clock = FakeClock()
    admission = taught(clock=clock)
    leads = 0
    while admission.heard(lead(TEN[:8], TEN[8:]), TMAX_MS):
        clock.now += 0.01
        leads += 1
        assert leads < 1000, "eight buyers down for good must be learnt"
    # Their median rises 1% a lead, from 5 ms past half of tmax: not in a moment, or our
    # own overload would be mistaken for the buyers' nature.
    assert 300 < leads < 400, leads


def test_a_gradual_slowdown_of_every_buyer_is_still_caught() -> None:
    """Latency creeping up on every lead (a machine filling up) outruns the learnt median."""
    clock = FakeClock()
    admission = taught(clock=clock)
    for k in range(100):
        clock.now += 0.01
        admission.heard(lead(on_time=TEN, ms=5.0 + 1.5 * k), TMAX_MS)
        if admission.cuts:
            break
    assert admission.cuts == 1 and 5.0 + 1.5 * k < 110, k


def test_a_reload_moves_the_cap_with_max_in_flight() -> None:
    admission = Admission(64, max_lag_ms=100)
    admission.max_in_flight = 256  # an uncut cap follows the new maximum at once
    assert admission.cap == 256 and admission.limit == 256
    admission = taught()
    admission.heard(lead(TEN), TMAX_MS)
    admission.heard(lead(TEN), TMAX_MS)
    assert admission.cap == 48
    admission.max_in_flight = 128  # a cut cap keeps its share of it
    assert admission.cap == 96
    admission.max_in_flight = 8  # and never leaves [floor, max]
    assert admission.cap == 6
    admission.max_in_flight = 2
    assert admission.cap == 2 and admission.floor == 2


def test_a_reload_forgets_buyers_no_longer_configured() -> None:
    admission = taught()
    admission.keep_only({"b0", "b1", "b2"})
    admission.in_flight = 64
    # b3..b9 are unknown again: they are learnt anew, not judged by their old medians.
    for _ in range(3):
        assert admission.heard(lead(TEN[3:], TEN[:3]), TMAX_MS) is False
    assert admission.cuts == 0


def test_ping_timings_name_the_buyer_of_each_ping_and_how_long_it_took() -> None:
    def result(buyer: str, outcome: Reason, latency_ms: float | None) -> PingResult:
        target = make_target(campaign_id=f"c-{buyer}", buyer_id=buyer)
        return PingResult(target, f"p-{buyer}", PingAnswer(outcome), latency_ms)

    results = [
        result("fast", Reason.BID, 12.0),
        result("nobid", Reason.NO_BID, 149.9),
        result("hang", Reason.TIMEOUT, 300.2),
        result("broken", Reason.ERROR, 3.0),
        result("bug", Reason.ERROR, None),  # failed before it was timed: says nothing
    ]
    assert list(ping_timings(results)) == [
        ("fast", 12.0),
        ("nobid", 149.9),
        ("hang", None),
        ("broken", 3.0),
    ]
