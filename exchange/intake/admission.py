"""Admission: refuse a lead at once when this worker cannot answer it in time.

Three signals. Leads in flight are capped. Because under overload requests wait in a
saturated event loop *before* any handler runs (where no in-flight count can see them),
the loop's own lag is measured by a timer every 20 ms: while it runs late, new leads are
refused with 503 instead of being queued past their deadline.

And the cap itself adapts (AIMD, as TCP does with its window). When the machine is
saturated rather than this worker's loop (several workers, Postgres and the buyers sharing
the cores), the loop's lag stays modest while buyers' answers are read too late: measured
on 2 workers at twice the sustained rate, 8-34% of the admitted leads went unsold with
every bid lost. The sign is *correlated* lateness on a loaded worker: at least half of its
cap in use, and most of the lead's buyers that usually answer well within tmax (three at
least, each counted once however many of its campaigns were pinged) answering far later
than their learnt median, or not at all. One buyer slowing down or going away is a
minority; a buyer slow by nature is not counted; independent buyers' jitter rarely lines
up on one lead; and an idle worker cuts nothing, since refusing leads cannot speed up
answers it is not slowing down. When that sign repeats within a window of tmax (at least
250 ms) on two leads and a tenth of the window's leads, the cap is cut by a quarter, at
most once a window (one burst of late leads counts once), never below an eighth of
``max_in_flight`` or 4. Every other lead that pinged adds back ``1 / cap``, and a cap that
still binds 10 s after its last cut is restored whole.

The auction asks for the verdict at the end of each lead's ping phase (``heard``, as the
worker's ``PingJudge``), and buyer health ignores the timeouts of a congested lead: they
are ours, and throttling healthy buyers for them turned overload into unsold leads.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Collection, Iterable

# Each buyer's usual latency is tracked as its median, by steps of 1% per lead (up when its
# answer took longer, down when shorter): our own overload, which adds the same delay to
# every answer, is cut long before the median follows it; a lasting outage of most buyers
# is learnt as their nature after ln(tmax/2 / median) / ln(1.01) leads (~340 from 5 ms).
STEP = 1.01
MIN_USUAL = 3  # fewer prompt buyers on a lead say too little about us
CUT = 0.75  # the cap is multiplied by this on a congested lead
MIN_WINDOW_S = 0.25  # at most one cut per max(this, tmax): about one ping phase
RECOVER_S = 10.0  # a cap still cut after this long without congestion is restored
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
        on_cut: Callable[[], None] = lambda: None,
    ) -> None:
        self.max_lag_ms = max_lag_ms
        self.in_flight = 0
        self.lag_ms = 0.0
        self.cap = float(max_in_flight)
        self.limit = max_in_flight  # int(cap): what refusal compares in_flight with
        self.cuts = 0
        self._max_in_flight = max_in_flight
        self._tick = tick_s
        self._clock = clock
        self._on_cut = on_cut
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._last_cut = -math.inf
        self._window_start = -math.inf
        self._window_leads = self._window_congested = self._last_window_leads = 0
        self._typical_ms: dict[str, float] = {}

    @property
    def max_in_flight(self) -> int:
        return self._max_in_flight

    @max_in_flight.setter
    def max_in_flight(self, value: int) -> None:
        """A reload: an uncut cap follows the new maximum, a cut one keeps its share of it."""
        old, self._max_in_flight = self._max_in_flight, value
        self._set_cap(float(value) if self.cap >= old else self.cap * value / old)

    @property
    def floor(self) -> float:
        return float(min(self._max_in_flight, max(MIN_CAP, self._max_in_flight * FLOOR_SHARE)))

    def _set_cap(self, cap: float) -> None:
        self.cap = min(float(self._max_in_flight), max(self.floor, cap))
        self.limit = int(self.cap)

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
        if self.in_flight >= self.limit:
            if self.limit >= self._max_in_flight:
                return "too many leads in flight"
            if self._clock() - self._last_cut < RECOVER_S:
                return f"too many leads in flight (buyers answer late: cap {self.limit})"
            # No congestion for a while, yet the cap binds: leads that could grow it back
            # (prompt buyers pinged) may have stopped coming. Start over from the maximum.
            self._set_cap(float(self._max_in_flight))
            return self.refusal()
        if self.lag_ms > self.max_lag_ms:
            return f"worker saturated (event loop {self.lag_ms:.0f} ms late)"
        return None

    def heard(self, pings: Iterable[tuple[str, float | None]], tmax_ms: float) -> bool:
        """After a lead's ping phase, each ``(buyer id, latency ms or None if it timed
        out)`` it sent: adapt the cap. A buyer is usually prompt if its median is under half
        of ``tmax_ms``, and late on this lead if its fastest answer took more than twice its
        median plus a quarter of ``tmax_ms``, or never came. Returns whether the lead was
        congested (and so may have cut the cap)."""
        fastest: dict[str, float] = {}
        for buyer_id, latency in pings:
            ms = math.inf if latency is None else latency
            if buyer_id not in fastest or ms < fastest[buyer_id]:
                fastest[buyer_id] = ms
        usual = late = 0
        typical = self._typical_ms
        prompt_ms, slack_ms = tmax_ms / 2, tmax_ms / 4
        for buyer_id, ms in fastest.items():
            usual_ms = typical.get(buyer_id)
            if usual_ms is not None and usual_ms < prompt_ms:
                usual += 1
                late += ms > 2 * usual_ms + slack_ms
            learnt = min(ms, tmax_ms)
            if usual_ms is None:
                typical[buyer_id] = learnt
            else:
                typical[buyer_id] = usual_ms * STEP if learnt > usual_ms else usual_ms / STEP
        congested = usual >= MIN_USUAL and 2 * late > usual and 2 * self.in_flight >= self.limit
        now = self._clock()
        window_s = max(MIN_WINDOW_S, tmax_ms / 1000)
        if now - self._window_start >= window_s:
            self._last_window_leads = self._window_leads
            self._window_start, self._window_leads, self._window_congested = now, 0, 0
        self._window_leads += 1
        if not congested:
            self._set_cap(self.cap + 1.0 / self.cap)
            return False
        self._window_congested += 1
        # A cut needs the sign to repeat: two congested leads and a tenth of the window's
        # leads (or of the last window's, early in this one), so chance alignments of slow
        # answers (a few per thousand leads with long-tailed buyers) never add up to one.
        leads = max(self._window_leads, self._last_window_leads)
        many = self._window_congested >= 2 and 10 * self._window_congested >= leads
        if many and now - self._last_cut >= window_s:
            self._last_cut = now
            self._set_cap(self.cap * CUT)
            self.cuts += 1
            self._on_cut()
        return True

    def keep_only(self, buyer_ids: Collection[str]) -> None:
        """Forget what was learnt of buyers no longer configured (after a reload)."""
        for buyer_id in [b for b in self._typical_ms if b not in buyer_ids]:
            del self._typical_ms[buyer_id]
