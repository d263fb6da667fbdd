"""Fixtures: buyer servers and a running exchange, each closed when its test ends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from exchange.catalog.models import Config
from tests.kit.buyers import Buyer
from tests.kit.exchange import RunningExchange, start_exchange

StartBuyer = Callable[..., Awaitable[Buyer]]
OpenExchange = Callable[..., Awaitable[RunningExchange]]


@pytest.fixture
async def start_buyer() -> AsyncIterator[StartBuyer]:
    """``await start_buyer("acme", price="12.50", ping_mode="no_bid")``: a live buyer server."""
    started: list[Buyer] = []

    async def start(buyer_id: str, price: Any = "10.00", **fields: Any) -> Buyer:
        buyer = await Buyer(buyer_id, f"secret-{buyer_id}-0123", price=price, **fields).start()
        started.append(buyer)
        return buyer

    yield start
    for buyer in started:
        await buyer.close()


@pytest.fixture
async def open_exchange(
    pg_dsn: str, redis_url: str, redis_prefix: str, redis_client: aioredis.Redis
) -> AsyncIterator[OpenExchange]:
    """``await open_exchange(config, config_dir=...)``: the exchange on this test's stores.

    Depends on ``redis_client`` so that every key under the test's prefix is deleted after.
    """
    running: list[RunningExchange] = []

    async def open_(cfg: Config, config_dir: Path | str = "config") -> RunningExchange:
        ex = await start_exchange(cfg, pg_dsn, redis_url, redis_prefix, config_dir=str(config_dir))
        running.append(ex)
        return ex

    yield open_
    for ex in running:
        await ex.close()
