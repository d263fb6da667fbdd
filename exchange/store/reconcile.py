"""Rebuild Redis cap counters from Postgres, the truth (``exchange reconcile-caps``)."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
from redis.asyncio import Redis

from exchange.catalog import Catalog
from exchange.routing.caps import CapStore
from exchange.settings import AppSettings


async def reconcile_caps(settings: AppSettings, catalog: Catalog) -> int:
    assert settings.database_url and settings.redis_url
    redis = Redis.from_url(settings.redis_url)
    conn = await asyncpg.connect(settings.database_url)
    try:
        caps = CapStore(redis, settings.redis_prefix)
        return await caps.rebuild(conn, list(catalog.targets.values()), datetime.now(UTC))
    finally:
        await conn.close()
        await redis.aclose()
