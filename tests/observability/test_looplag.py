"""The loop lag monitor sees a blocked loop and keeps going when a sampler fails."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import REGISTRY

from exchange.observability.looplag import start_loop_lag_monitor, stop_loop_lag_monitor


def lag_totals() -> tuple[float, float]:
    count = REGISTRY.get_sample_value("exchange_event_loop_lag_seconds_count")
    total = REGISTRY.get_sample_value("exchange_event_loop_lag_seconds_sum")
    assert count is not None and total is not None
    return count, total


async def test_a_blocked_loop_shows_as_lag() -> None:
    ticks: list[int] = []

    def broken() -> None:
        ticks.append(1)
        raise RuntimeError("sampler bug")

    count0, sum0 = lag_totals()
    task = start_loop_lag_monitor(0.02, samplers=[broken])
    await asyncio.sleep(0.05)
    time.sleep(0.2)  # block the loop, as a CPU-bound handler would
    await asyncio.sleep(0.05)
    await stop_loop_lag_monitor(task)
    count1, sum1 = lag_totals()
    assert task.cancelled()
    assert count1 - count0 >= 3
    assert sum1 - sum0 >= 0.15
    assert len(ticks) >= 3  # the failing sampler ran on every tick and did not stop them


async def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        start_loop_lag_monitor(0)
