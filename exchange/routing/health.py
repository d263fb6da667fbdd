"""Per-worker buyer health: stop pinging a buyer that keeps failing, probe it back to health.

A buyer that hangs costs a fresh TCP connection and a timeout slot on every lead, so one
whose recent pings mostly failed is *throttled*: it gets one probe ping per
``probe_every_s`` and is skipped otherwise (the caller records reason ``throttled``).
After ``recover_after`` consecutive good answers it is healthy again, with a fresh window.

Timeouts of a lead that the worker's admission judges congested are not recorded (see
``auction/sell.py``): a saturated exchange must not throttle buyers for its own lateness.

State is in memory per worker on purpose: the decision is on the hot path, needs no
coordination to be correct, and each worker learns a dead buyer within ``min_samples``.

Usage::

    health = BuyerHealth()
    if health.allow(buyer_id):
        ok = await ping(...)          # answered in time, bid or no bid
        health.record(buyer_id, ok)
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _State:
    window: deque[bool]
    failures: int = 0
    throttled: bool = False
    last_probe: float = 0.0
    ok_streak: int = 0


class BuyerHealth:
    """A sliding window of ping outcomes per buyer, with throttling and probe-based recovery."""

    def __init__(
        self,
        window: int = 20,
        min_samples: int = 10,
        fail_ratio: float = 0.5,
        probe_every_s: float = 1.0,
        recover_after: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window < 1 or not 1 <= min_samples <= window:
            raise ValueError("need 1 <= min_samples <= window")
        if not 0.0 < fail_ratio <= 1.0:
            raise ValueError("fail_ratio must be in (0, 1]")
        if recover_after < 1 or probe_every_s < 0:
            raise ValueError("recover_after must be >= 1 and probe_every_s >= 0")
        self._window = window
        self._min_samples = min_samples
        self._fail_ratio = fail_ratio
        self._probe_every_s = probe_every_s
        self._recover_after = recover_after
        self._clock = clock
        self._states: dict[str, _State] = {}
        self._throttled: set[str] = set()

    def _state(self, buyer_id: str) -> _State:
        state = self._states.get(buyer_id)
        if state is None:
            state = _State(window=deque(maxlen=self._window))
            self._states[buyer_id] = state
        return state

    def record(self, buyer_id: str, ok: bool) -> None:
        """One ping's outcome: ``ok`` = answered in time (bid or no bid); not ok = timeout/error."""
        state = self._state(buyer_id)
        if state.throttled:
            self._record_probe(buyer_id, state, ok)
            return
        if len(state.window) == state.window.maxlen and not state.window[0]:
            state.failures -= 1  # the oldest outcome is about to fall out of the window
        state.window.append(ok)
        if not ok:
            state.failures += 1
        samples = len(state.window)
        if samples >= self._min_samples and state.failures >= self._fail_ratio * samples:
            self._throttle(buyer_id, state)

    def _throttle(self, buyer_id: str, state: _State) -> None:
        state.throttled = True
        state.ok_streak = 0
        # The first probe waits a full interval: the buyer has just failed many times.
        state.last_probe = self._clock()
        self._throttled.add(buyer_id)

    def _record_probe(self, buyer_id: str, state: _State, ok: bool) -> None:
        # While throttled only probes are sent, so every outcome here is a probe's
        # (or a straggler from before the throttle, which is as good a sign).
        if not ok:
            state.ok_streak = 0
            return
        state.ok_streak += 1
        if state.ok_streak >= self._recover_after:
            state.throttled = False
            state.window.clear()
            state.failures = 0
            state.ok_streak = 0
            self._throttled.discard(buyer_id)

    def allow(self, buyer_id: str) -> bool:
        """True to ping the buyer now: always if healthy, once per probe interval if throttled."""
        state = self._states.get(buyer_id)
        if state is None or not state.throttled:
            return True
        now = self._clock()
        if now - state.last_probe >= self._probe_every_s:
            state.last_probe = now
            return True
        return False

    def is_throttled(self, buyer_id: str) -> bool:
        return buyer_id in self._throttled

    def throttled(self) -> frozenset[str]:
        """The buyers throttled right now, for metrics and the ops view."""
        return frozenset(self._throttled)
