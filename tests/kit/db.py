"""Databases of a test's own on the shared Postgres server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg


def with_db(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


async def admin_sql(admin_dsn: str, sql: str) -> None:
    """Run one statement (CREATE/DROP DATABASE) on the server's admin database."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


@asynccontextmanager
async def scratch_database(admin_dsn: str, prefix: str, template: str) -> AsyncIterator[str]:
    """A database cloned from ``template`` for as long as the block runs; its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    await admin_sql(admin_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield with_db(admin_dsn, name)
    finally:
        await admin_sql(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
