"""Admission: refuse a lead at once when this worker cannot answer it in time.

Three signals. Leads in flight are capped. Because under overload requests wait in a
saturated event loop *before* any handler runs (where no in-flight count can see them),
the loop's own lag is measured by a timer every 20 ms: while it runs late, new leads are
refused with 503 instead of being queued past their deadline.

And the cap itself adapts (AIMD, as TCP does with its window). When the machine is
saturated rather than this worker's loop (several workers, Postgres and the buyers sharing
the cores), the loop's lag stays modest while buyers' answers are read too late: measured
on 2 workers at twice the sustained rate, a fifth of the admitted leads went unsold with
every bid lost. The sign is *correlated* lateness: most of the campaigns that usually
answer well within the ping phase answering far later than they usually do, on the same
lead. Each campaign's usual (median) latency is learnt; one buyer slowing down or going away is
not that sign (it is a minority of the lead's campaigns), a buyer slow by nature is not
counted, and independent buyers' jitter rarely lines up on one lead. On that sign the cap
is cut by a quarter (at most once a window, so one burst of late leads counts once);
every lead that heard its buyers adds back ``1 / cap``, so the cap returns to
``max_in_flight`` once the machine keeps up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

# Each campaign's usual latency is tracked as its median, by steps of 1% per ping (up when
# a ping took longer, down when shorter): our own overload, which adds the same delay to
# every answer, is cut long before the median follows it; a lasting outage of most buyers
# (every ping a timeout) takes ~340 of their pings to be learnt as their nature.
STEP = 1.01
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
        self._typical_ms: dict[str, float] = {}

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

    def heard(self, pings: Iterable[tuple[str, float | None]], late_ms: float) -> bool:
        """After a lead's ping phase, each ``(campaign id, latency ms or None if it timed
        out)`` it sent: adapt the cap. ``late_ms`` is half the ping phase: campaigns usually
        slower than that are not counted, and a ping is late past twice its campaign's
        usual latency plus half of ``late_ms``. Returns whether the lead was congested."""
        usual = late = 0
        seen: list[tuple[str, float]] = []
        typical = self._typical_ms
        slack = late_ms / 2
        for campaign_id, latency in pings:
            ms = 2 * late_ms if latency is None else latency
            seen.append((campaign_id, ms))
            usual_ms = typical.get(campaign_id)
            if usual_ms is not None and usual_ms < late_ms:
                usual += 1
                late += latency is None or latency > 2 * usual_ms + slack
        if not seen:
            return False
        congested = usual >= 2 and 2 * late > usual
        for campaign_id, ms in seen:
            usual_ms = typical.get(campaign_id)
            if usual_ms is None:
                typical[campaign_id] = ms
            else:
                typical[campaign_id] = usual_ms * STEP if ms > usual_ms else usual_ms / STEP
        if congested:
            now = self._clock()
            if now - self._last_cut >= CUT_WINDOW_S:
                self._last_cut = now
                self.cap = max(self.floor, self.cap * CUT)
                self.cuts += 1
        elif usual:
            self.cap = min(float(self._max_in_flight), self.cap + 1.0 / self.cap)
        return congested
