"""One deadline per lead, counted from the request's arrival (as Prebid Server does)."""

from __future__ import annotations

import time


class Deadline:
    """Monotonic time budget; every step asks it what is left instead of keeping its own."""

    __slots__ = ("_end", "started", "total_ms")

    def __init__(self, total_ms: int, started: float | None = None) -> None:
        self.started = time.monotonic() if started is None else started
        self.total_ms = total_ms
        self._end = self.started + total_ms / 1000

    def remaining_ms(self) -> float:
        return max(0.0, (self._end - time.monotonic()) * 1000)

    def elapsed_ms(self) -> float:
        return (time.monotonic() - self.started) * 1000
