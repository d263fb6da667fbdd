"""Real stores for every test: Postgres and Redis over real connections, each test isolated.

The URLs come from EXCHANGE_DATABASE_URL / EXCHANGE_REDIS_URL when set; otherwise the
embedded servers of ``exchange.embedded`` are started under ``.exchange-data/test``.
Each test gets its own database (cloned from a migrated template) and its own Redis key
prefix; nothing is flushed that the test did not create.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from exchange.store.db import Conn, create_pool, migrate
from tests.kit.db import admin_sql, scratch_database, with_db

ROOT = Path(__file__).resolve().parents[1]


def _store_urls() -> tuple[str, str]:
    db = os.environ.get("EXCHANGE_DATABASE_URL")
    rd = os.environ.get("EXCHANGE_REDIS_URL")
    if db and rd:
        return db, rd
    from exchange.embedded import EmbeddedStores

    stores = EmbeddedStores(ROOT / ".exchange-data" / "test")
    urls = stores.start()
    return db or urls.database_url, rd or urls.redis_url


@pytest.fixture(scope="session")
def store_urls() -> tuple[str, str]:
    return _store_urls()


@pytest.fixture(scope="session")
def pg_admin_dsn(store_urls: tuple[str, str]) -> str:
    return store_urls[0]


@pytest.fixture(scope="session")
def redis_url(store_urls: tuple[str, str]) -> str:
    return store_urls[1]


@pytest.fixture(scope="session")
def run_id() -> str:
    return f"{os.getpid()}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
async def pg_template(pg_admin_dsn: str, run_id: str) -> AsyncIterator[str]:
    """A migrated database that each test clones; dropped when the session ends."""
    name = f"exchange_tmpl_{run_id}"
    await admin_sql(pg_admin_dsn, f'CREATE DATABASE "{name}"')
    await migrate(with_db(pg_admin_dsn, name))
    yield name
    await admin_sql(pg_admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def pg_dsn(pg_admin_dsn: str, pg_template: str) -> AsyncIterator[str]:
    """A fresh migrated database of this test's own."""
    async with scratch_database(pg_admin_dsn, "exchange_t", pg_template) as dsn:
        yield dsn


@pytest.fixture
async def pg(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def pg_pooled(pg_dsn: str) -> AsyncIterator[Conn]:
    """A connection set up as the exchange's are (from its pool: jsonb as Python objects)."""
    pool = await create_pool(pg_dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            yield conn
    finally:
        await pool.close()


@pytest.fixture
def redis_prefix() -> str:
    return f"t:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def redis_client(redis_url: str, redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A client for this test; every key under its prefix is deleted afterwards."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    keys = [k async for k in client.scan_iter(match=redis_prefix + "*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()
