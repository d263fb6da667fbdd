"""`exchange reconcile-caps`: Redis cap counters rebuilt from the sales Postgres holds."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from exchange.catalog import Catalog
from exchange.routing.caps import CapStore
from tests.kit.procs import run_cli

ROOT = Path(__file__).resolve().parents[2]


async def test_reconcile_caps_sets_counters_from_postgres(
    pg_dsn: str, redis_url: str, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    catalog = Catalog.load(ROOT / "config")
    target = catalog.targets["acme-auto-west"]  # caps: hourly, daily, monthly, daily budget
    conn = await asyncpg.connect(pg_dsn)
    try:
        for price in (1500, 2250, 900):
            lead_id = uuid.uuid4()
            await conn.execute(
                """INSERT INTO leads (lead_id, publisher_id, vertical, status, received_at)
                   VALUES ($1, 'pub-1', 'auto_insurance', 'sold', now())""",
                lead_id,
            )
            await conn.execute(
                """INSERT INTO sales (lead_id, publisher_id, vertical, buyer_id, campaign_id,
                       price_cents, payout_cents) VALUES ($1, 'pub-1', 'auto_insurance', 'acme',
                       'acme-auto-west', $2, 0)""",
                lead_id,
                price,
            )
    finally:
        await conn.close()
    done = run_cli(
        "reconcile-caps",
        "--config",
        str(ROOT / "config"),
        database_url=pg_dsn,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
    )
    assert done.returncode == 0, done.stderr
    assert "key(s) written" in done.stdout
    usage = await CapStore(redis_client, redis_prefix).usage(target, datetime.now(UTC))
    assert usage["daily"] == (3, 2000)
    assert usage["hourly"] == (3, 200)
    assert usage["daily_budget"] == (4650, 3_000_000)
