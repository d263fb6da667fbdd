"""The Postgres pool and the migration runner."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import asyncpg
import orjson

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Conn: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
    """A connection, pooled or not: what every repository function takes."""
else:
    Conn = asyncpg.Connection

# What Postgres being down, restarting or full raises (a lost connection, an admin
# shutdown, "the database system is starting up", too many connections): the lead route
# answers 503 with Retry-After for these, never 500.
UNAVAILABLE: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    OSError,
)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
# Any two processes that migrate at once serialize on this lock (the value is arbitrary).
_MIGRATION_LOCK = 0x6C656164  # "lead"


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: orjson.dumps(v).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pooled connections never change session state (no SET, LISTEN or advisory locks:
    migrations use a connection of their own), so the default reset query on every
    release is a wasted round trip; asyncpg still rolls back an open transaction."""


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections read and write jsonb as Python objects."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=30,
    )
    assert pool is not None
    return pool


async def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every pending ``NNNN_name.sql`` in order; returns the names applied.

    Safe to run twice and from two processes at once: an advisory lock serializes them
    and each file runs in its own transaction with its bookkeeping row.
    """
    files = sorted(p for p in directory.glob("*.sql") if p.name[:4].isdigit())  # noqa: ASYNC240
    conn = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            for path in files:
                if path.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text(encoding="utf-8"))
                    await conn.execute(
                        "INSERT INTO schema_migrations (name) VALUES ($1)", path.name
                    )
                log.info("migration applied", extra={"migration": path.name})
                applied.append(path.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    finally:
        await conn.close()
    return applied
