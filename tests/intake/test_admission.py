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
