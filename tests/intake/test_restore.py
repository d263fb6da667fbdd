"""The dedupe keys come back from Postgres after Redis lost them (``intake.restore``), and
``exchange restore-dedupe`` runs that by hand."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from exchange.catalog import Catalog
from exchange.catalog.models import Vertical
from exchange.intake.guard import Guard
from exchange.intake.restore import LOCK, MARK, restore_dedupe, restore_needed
from exchange.store.db import Conn, create_pool

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC)
DAY = 86_400


@pytest.fixture
async def pg(pg_dsn: str) -> AsyncIterator[Conn]:
    pool = await create_pool(pg_dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            yield conn
    finally:
        await pool.close()


async def _lead(
    pg: Conn,
    *,
    phone: str | None,
    email: str | None = None,
    status: str = "sold",
    days_ago: float = 1.0,
    vertical: str = "auto",
    test: bool = False,
) -> str:
    lead_id = uuid.uuid4()
    await pg.execute(
        """INSERT INTO leads (lead_id, publisher_id, vertical, test, status, received_at,
                              phone, email)
           VALUES ($1, 'pub-1', $2, $3, $4, $5, $6, $7)""",
        lead_id,
        vertical,
        test,
        status,
        NOW - timedelta(days=days_ago),
        phone,
        email,
    )
    return str(lead_id)


def _verticals(**days: int) -> dict[str, Vertical]:
    return {name: Vertical(dedupe_days=d) for name, d in days.items()}


async def _held(redis: aioredis.Redis, guard: Guard, **lead: Any) -> list[tuple[str, int]]:
    """What each of a lead's dedupe keys names, with its TTL (seconds; -2 if absent)."""
    keys = guard.dedupe_keys(lead["vertical"], lead["phone"], lead.get("email"), lead["test"])
    out = []
    for key in keys:
        value = await redis.get(key)
        holder = value.decode() if isinstance(value, bytes) else (value or "")
        out.append((holder, await redis.ttl(key)))
    return out


def _about(ttl: int, seconds: float) -> bool:
    return seconds - 120 < ttl <= seconds


async def test_keys_come_back_for_the_leads_that_took_them_with_what_is_left_of_the_window(
    pg: Conn, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    guard = Guard(redis_client, redis_prefix)
    sold = await _lead(pg, phone="+14155550101", email="a@example.com", days_ago=10)
    unsold = await _lead(pg, phone="+14155550102", status="unsold", days_ago=1)
    pending = await _lead(pg, phone="+14155550103", status="pending", days_ago=2)
    # These never took keys: a duplicate and a lead without consent.
    await _lead(pg, phone="+14155550104", status="duplicate")
    await _lead(pg, phone="+14155550105", status="rejected")
    await _lead(pg, phone="+14155550106", days_ago=31)  # its window has passed
    test_lead = await _lead(pg, phone="+14155550107", test=True)
    await _lead(pg, phone="+14155550108", vertical="solar")  # solar: dedupe off
    # Two holders of one phone (an earlier loss let the second in): the first keeps it.
    older = await _lead(pg, phone="+14155550109", days_ago=5)
    await _lead(pg, phone="+14155550109", days_ago=3)
    # A live lead took this phone after the loss and before the restore: it stays its.
    await _lead(pg, phone="+14155550110", days_ago=4)
    live_key = guard.dedupe_keys("auto", "+14155550110", None, False)[0]
    await redis_client.set(live_key, "live-lead", ex=30 * DAY)

    assert await restore_needed(redis_client, redis_prefix)
    written = await restore_dedupe(
        pg, redis_client, guard, redis_prefix, _verticals(auto=30, solar=0), NOW
    )

    assert written == 6  # sold (phone, email), unsold, pending, test, older
    auto = {"vertical": "auto", "test": False}
    phone_and_email = await _held(
        redis_client, guard, phone="+14155550101", email="a@example.com", **auto
    )
    assert [v for v, _ in phone_and_email] == [sold, sold]
    assert all(_about(ttl, 20 * DAY) for _, ttl in phone_and_email)
    assert [v for v, _ in await _held(redis_client, guard, phone="+14155550102", **auto)] == [
        unsold
    ]
    [(holder, ttl)] = await _held(redis_client, guard, phone="+14155550103", **auto)
    assert holder == pending and _about(ttl, 28 * DAY)
    for phone in ("+14155550104", "+14155550105", "+14155550106"):
        assert await _held(redis_client, guard, phone=phone, **auto) == [("", -2)]
    test_only = {"vertical": "auto", "phone": "+14155550107"}
    assert (await _held(redis_client, guard, test=True, **test_only))[0][0] == test_lead
    assert await _held(redis_client, guard, test=False, **test_only) == [("", -2)]
    solar = {"vertical": "solar", "test": False}
    assert await _held(redis_client, guard, phone="+14155550108", **solar) == [("", -2)]
    assert (await _held(redis_client, guard, phone="+14155550109", **auto))[0][0] == older
    assert (await _held(redis_client, guard, phone="+14155550110", **auto))[0][0] == "live-lead"

    assert not await restore_needed(redis_client, redis_prefix)
    assert not await redis_client.exists(redis_prefix + LOCK)
    # Safe to run again: every key is there, nothing is overwritten.
    again = await restore_dedupe(pg, redis_client, guard, redis_prefix, _verticals(auto=30), NOW)
    assert again == 0


async def test_a_restore_in_progress_elsewhere_is_not_run_twice(
    pg: Conn, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    guard = Guard(redis_client, redis_prefix)
    await _lead(pg, phone="+14155550111")
    await redis_client.set(redis_prefix + LOCK, "another-worker", ex=60)
    assert (
        await restore_dedupe(pg, redis_client, guard, redis_prefix, _verticals(auto=30), NOW)
        is None
    )
    assert await _held(redis_client, guard, phone="+14155550111", vertical="auto", test=False) == [
        ("", -2)
    ]
    assert await restore_needed(redis_client, redis_prefix)
    assert await redis_client.get(redis_prefix + LOCK) == b"another-worker"  # not ours to free


async def test_a_failed_restore_leaves_no_marker_and_frees_its_lock(
    pg: Conn, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    guard = Guard(redis_client, redis_prefix)
    await pg.execute("DROP TABLE leads CASCADE")  # Postgres cannot answer the read
    with pytest.raises(asyncpg.UndefinedTableError):
        await restore_dedupe(pg, redis_client, guard, redis_prefix, _verticals(auto=30), NOW)
    assert await restore_needed(redis_client, redis_prefix)  # the next check tries again
    assert not await redis_client.exists(redis_prefix + LOCK)


async def test_the_command_restores_from_the_configured_database(
    pg: Conn, pg_dsn: str, redis_url: str, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    catalog = Catalog.load(ROOT / "config")
    days = catalog.verticals["auto_insurance"].dedupe_days
    assert days > 2
    lead_id = await _lead(pg, phone="+14155550112", vertical="auto_insurance", days_ago=2)
    env = {
        **os.environ,
        "EXCHANGE_DATABASE_URL": pg_dsn,
        "EXCHANGE_REDIS_URL": redis_url,
        "EXCHANGE_REDIS_PREFIX": redis_prefix,
    }
    done = subprocess.run(
        [sys.executable, "-m", "exchange.cli", "restore-dedupe", "--config", str(ROOT / "config")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "1 key(s) written" in done.stdout
    guard = Guard(redis_client, redis_prefix)
    [(holder, ttl)] = await _held(
        redis_client, guard, phone="+14155550112", vertical="auto_insurance", test=False
    )
    assert holder == lead_id and _about(ttl, (days - 2) * DAY)
    assert await redis_client.get(redis_prefix + MARK) is not None
