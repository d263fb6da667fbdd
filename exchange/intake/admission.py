"""Admission: refuse a lead at once when this worker cannot answer it in time.

Three signals. Leads in flight are capped. Because under overload requests wait in a
saturated event loop *before* any handler runs (where no in-flight count can see them),
the loop's own lag is measured by a timer every 20 ms: while it runs late, new leads are
refused with 503 instead of being queued past their deadline.

And the cap itself adapts (AIMD, as TCP does with its window). When the machine is
saturated rather than this worker's loop (several workers, Postgres and the buyers sharing
the cores), the loop's lag stays modest while buyers' answers are read too late: measured
on 2 workers at twice the sustained rate, a fifth of the admitted leads went unsold with
every bid lost. The sign is *correlated* timeouts: most of the campaigns that usually
answer in time timing out on the same lead. One buyer going down is not that (its
campaigns are a minority of the lead's), and a buyer that is always slow or hanging is
learnt as such and not counted. On that sign the cap is cut by a quarter (at most once a
window, so one burst of late leads counts once); every lead that heard its buyers adds
back ``1 / cap``, so the cap returns to ``max_in_flight`` once the machine keeps up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

# A campaign whose pings time out at least this often is slow by nature, not by us.
USUAL_TIMEOUT_RATE = 0.5
# How fast each campaign's timeout rate is learnt (per ping). Leads taken as congested
# teach at a quarter of it, so a real outage of most buyers is learnt in seconds too.
LEARN_RATE = 0.02
CONGESTED_LEARN_RATE = LEARN_RATE / 4
CUT = 0.75  # the cap is multiplied by this on a congested lead
CUT_WINDOW_S = 0.25  # at most one cut in this long: about one ping phase
# The cap never falls below this share of max_in_flight (nor below MIN_CAP): a lead
# admitted is cheap to refuse later, a lead refused is lost to the publisher.
FLOOR_SHARE = 0.125
MIN_CAP = 4

Clock = Callable[[], float]


class Admission:
    def __init__(
        self,
        max_in_flight: int,
        max_lag_ms: float,
        tick_s: float = 0.02,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.max_lag_ms = max_lag_ms
        self.in_flight = 0
        self.lag_ms = 0.0
        self.cap = float(max_in_flight)
        self.cuts = 0
        self._max_in_flight = max_in_flight
        self._tick = tick_s
        self._clock = clock
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._last_cut = -CUT_WINDOW_S
        self._timeout_rate: dict[str, float] = {}

    @property
    def max_in_flight(self) -> int:
        return self._max_in_flight

    @max_in_flight.setter
    def max_in_flight(self, value: int) -> None:
        self._max_in_flight = value
        self.cap = min(max(self.cap, self.floor), float(value))

    @property
    def floor(self) -> float:
        return float(min(self._max_in_flight, max(MIN_CAP, self._max_in_flight * FLOOR_SHARE)))

    def start(self) -> None:
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = time.monotonic() + self._tick
        self._handle = loop.call_later(self._tick, self._measure)

    def _measure(self) -> None:
        late_ms = max(0.0, (time.monotonic() - self._due) * 1000)
        # An average, so one collector pause does not shed leads; a loop that stays late
        # (a queue of requests waiting for it) crosses the limit within a few ticks.
        self.lag_ms = self.lag_ms * 0.6 + late_ms * 0.4
        self._schedule()

    def settle(self) -> None:
        """Forget lag measured so far (start-up work is not overload)."""
        self.lag_ms = 0.0

    def refusal(self) -> str | None:
        """Why a new lead must be refused now, or None to admit it."""
        if self.in_flight >= self.cap:
            if self.cap < self._max_in_flight:
                return f"too many leads in flight (buyers answer late: cap {int(self.cap)})"
            return "too many leads in flight"
        if self.lag_ms > self.max_lag_ms:
            return f"worker saturated (event loop {self.lag_ms:.0f} ms late)"
        return None

    def heard(self, pings: Iterable[tuple[str, bool]]) -> bool:
        """After a lead's ping phase, each ``(campaign id, timed out)`` it sent: adapt the
        cap. Returns whether the lead looked congested (no pings: nothing is learnt)."""
        usual = late = 0
        seen: list[tuple[str, bool]] = []
        rates = self._timeout_rate
        for campaign_id, timed_out in pings:
            seen.append((campaign_id, timed_out))
            if rates.get(campaign_id, 0.0) < USUAL_TIMEOUT_RATE:
                usual += 1
                late += timed_out
        if not seen:
            return False
        congested = usual >= 2 and 2 * late > usual
        learn = CONGESTED_LEARN_RATE if congested else LEARN_RATE
        for campaign_id, timed_out in seen:
            rate = rates.get(campaign_id, 0.0)
            rates[campaign_id] = rate + (timed_out - rate) * learn
        if congested:
            now = self._clock()
            if now - self._last_cut >= CUT_WINDOW_S:
                self._last_cut = now
                self.cap = max(self.floor, self.cap * CUT)
                self.cuts += 1
        elif usual:
            self.cap = min(float(self._max_in_flight), self.cap + 1.0 / self.cap)
        return congested
