"""``/readyz`` (SPEC §5: stores reachable) says not ready, and which store, when one is down."""

from __future__ import annotations

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.api.conftest import OpenMarket
from tests.kit.buyers import Buyer
from tests.kit.exchange import free_port, lead_body


async def test_readyz_names_the_store_that_cannot_be_reached(
    market: OpenMarket, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = await market(Buyer("acme", "secret-acme-123", price=20))
    rt = m.ex.runtime
    nothing_there = free_port()  # a real refused connection, not a stand-in
    dead_redis = aioredis.Redis.from_url(f"redis://127.0.0.1:{nothing_there}/0")
    dead_pool = await asyncpg.create_pool(
        f"postgresql://postgres@127.0.0.1:{nothing_there}/none", min_size=0
    )
    try:
        monkeypatch.setattr(rt, "redis", dead_redis)
        resp = await m.ex.client.get("/readyz")
        assert resp.status_code == 503
        assert resp.json()["ready"] is False
        checks = resp.json()["checks"]
        assert checks["postgres"] == "ok" and checks["redis"].startswith("error: "), checks

        monkeypatch.setattr(rt, "pool", dead_pool)
        checks = (await m.ex.client.get("/readyz")).json()["checks"]
        assert checks["postgres"].startswith("error: ") and checks["redis"].startswith("error: ")

        monkeypatch.undo()
        back = await m.ex.client.get("/readyz")
        assert back.status_code == 200 and back.json()["ready"] is True
        assert (await m.ex.submit(lead_body())).json()["status"] == "sold"
    finally:
        await dead_redis.aclose()
        await dead_pool.close()
