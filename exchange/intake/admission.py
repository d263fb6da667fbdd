"""Admission: refuse a lead at once when this worker cannot answer it in time.

Two signals. Leads in flight are capped. And because under overload requests wait in a
saturated event loop *before* any handler runs (where no in-flight count can see them),
the loop's own lag is measured by a timer every 20 ms: while it runs late, new leads are
refused with 503 instead of being queued past their deadline.
"""

from __future__ import annotations

import asyncio
import time


class Admission:
    def __init__(self, max_in_flight: int, max_lag_ms: float, tick_s: float = 0.02) -> None:
        self.max_in_flight = max_in_flight
        self.max_lag_ms = max_lag_ms
        self.in_flight = 0
        self.lag_ms = 0.0
        self._tick = tick_s
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

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
        if self.in_flight >= self.max_in_flight:
            return "too many leads in flight"
        if self.lag_ms > self.max_lag_ms:
            return f"worker saturated (event loop {self.lag_ms:.0f} ms late)"
        return None
