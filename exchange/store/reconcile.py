"""Rebuild what Redis holds from Postgres, the truth: cap counters (``exchange
reconcile-caps``) and dedupe keys (``exchange restore-redis``)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime

import asyncpg
from redis.asyncio import Redis

from exchange.catalog import Catalog
from exchange.intake.guard import Guard
from exchange.intake.restore import restore_dedupe
from exchange.routing.caps import CapStore
from exchange.settings import AppSettings
from exchange.store.redis_lane import lane_client


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


async def restore_redis(settings: AppSettings, catalog: Catalog) -> int | None:
    """``exchange restore-redis``: cap counters raised to what Postgres holds, then the
    dedupe keys restored; the keys written, or None when a worker is restoring now."""
    assert settings.database_url and settings.redis_url
    redis = lane_client(settings.redis_url)
    conn = await asyncpg.connect(settings.database_url)
    try:
        prefix = settings.redis_prefix
        now = datetime.now(UTC)
        targets = list(catalog.targets.values())
        caps = functools.partial(
            CapStore(redis, prefix).rebuild, conn, targets, now, only_raise=True
        )
        guard = Guard(redis, prefix)
        return await restore_dedupe(conn, redis, guard, prefix, catalog.verticals, now, caps)
    finally:
        await conn.close()
        await redis.aclose()
