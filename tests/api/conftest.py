"""A market per test: scripted buyers on loopback and a real exchange in front of them.

``market`` is a factory so each test names its own buyers and config, while the fixture
owns the closing, whatever the test does::

    async def test_x(market: OpenMarket) -> None:
        m = await market(Buyer("acme", "secret-acme-1", price=20))
        answer = (await m.ex.submit(lead_body())).json()
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import pytest
import redis.asyncio as aioredis

from tests.kit.buyers import Buyer
from tests.kit.exchange import (
    PUB_KEY,
    RunningExchange,
    buyer_entry,
    make_config,
    start_exchange,
)
from tests.kit.records import LeadRecord, fetch_record

EntryFor = Callable[[Buyer], dict[str, Any]]


@dataclass
class Market:
    ex: RunningExchange
    buyers: dict[str, Buyer]
    pg_dsn: str
    redis: aioredis.Redis
    redis_prefix: str

    async def record(self, lead_id: str) -> LeadRecord:
        return await fetch_record(self.pg_dsn, lead_id)

    def pings_seen(self) -> dict[str, int]:
        return {b.buyer_id: len(b.pings) for b in self.buyers.values()}

    def posts_seen(self) -> dict[str, int]:
        return {b.buyer_id: len(b.posts) for b in self.buyers.values()}

    async def timed_submit(
        self, body: Any, key: str = PUB_KEY, **headers: str
    ) -> tuple[httpx.Response, float]:
        """The answer and the wall time it took, in milliseconds."""
        started = time.perf_counter()
        resp = await self.ex.submit(body, key, **headers)
        return resp, (time.perf_counter() - started) * 1000


class OpenMarket(Protocol):
    async def __call__(
        self,
        *buyers: Buyer,
        entry: EntryFor = ...,
        vertical: dict[str, Any] | None = ...,
        settings: dict[str, Any] | None = ...,
        more_verticals: dict[str, Any] | None = ...,
    ) -> Market: ...


@pytest.fixture
async def market(
    pg_dsn: str, redis_url: str, redis_prefix: str, redis_client: aioredis.Redis
) -> AsyncIterator[OpenMarket]:
    """Start buyers and an exchange on demand; everything started is closed afterwards."""
    started: list[Buyer] = []
    exchanges: list[RunningExchange] = []

    async def open_market(
        *buyers: Buyer,
        entry: EntryFor = buyer_entry,
        vertical: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
        more_verticals: dict[str, Any] | None = None,
    ) -> Market:
        for buyer in buyers:
            started.append(await buyer.start())
        entries = [entry(b) for b in buyers]
        config = make_config(
            entries, vertical=vertical, settings=settings, more_verticals=more_verticals
        )
        ex = await start_exchange(config, pg_dsn, redis_url, redis_prefix)
        exchanges.append(ex)
        return Market(ex, {b.buyer_id: b for b in buyers}, pg_dsn, redis_client, redis_prefix)

    yield open_market
    for ex in exchanges:
        await ex.close()
    for buyer in started:
        await buyer.close()
