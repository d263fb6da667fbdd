"""Event loop lag: how late a timer fires tells how blocked or saturated the loop is.

The same tick also runs cheap samplers (e.g. the DB pool gauges), so pull-style values
are fresh in every worker without a task of their own.

Usage::

    task = start_loop_lag_monitor(samplers=[lambda: sample_db_pool(pool)])
    ...
    await stop_loop_lag_monitor(task)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from exchange.observability.metrics import LOOP_LAG

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 0.25


async def _monitor(interval: float, samplers: Sequence[Callable[[], None]]) -> None:
    loop = asyncio.get_running_loop()
    failed: set[int] = set()
    while True:
        before = loop.time()
        await asyncio.sleep(interval)
        LOOP_LAG.observe(max(0.0, loop.time() - before - interval))
        for index, sample in enumerate(samplers):
            try:
                sample()
            except Exception:
                # Log a broken sampler once; the lag measurement must keep going.
                if index not in failed:
                    failed.add(index)
                    log.exception("metrics sampler failed", extra={"sampler": repr(sample)})


def start_loop_lag_monitor(
    interval: float = DEFAULT_INTERVAL_S, *, samplers: Sequence[Callable[[], None]] = ()
) -> asyncio.Task[None]:
    """Start measuring the running loop's lag every ``interval`` seconds."""
    if interval <= 0:
        raise ValueError("interval must be positive")
    return asyncio.get_running_loop().create_task(
        _monitor(interval, tuple(samplers)), name="exchange-loop-lag"
    )


async def stop_loop_lag_monitor(task: asyncio.Task[None]) -> None:
    """Cancel the monitor and wait until it has stopped."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # our caller is being cancelled too: do not swallow that
