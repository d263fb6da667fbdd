"""Put the phone and email dedupe keys back in Redis from Postgres after Redis lost them.

Redis may keep nothing on disk (this machine's does not), and a restarted one forgets every
phone and email of the last ``dedupe_days``: without this, the exchange would sell their
duplicates as new leads, which buyers return. Postgres holds every lead that took its keys
(consented and not a duplicate: sold, unsold or pending), so the keys come back from there,
oldest lead first and each set only if absent (``SET NX``): the lead that took a key first
holds it again, for what is left of its window, and a key a live lead took meanwhile is
never overwritten. That makes a restore safe with traffic running and safe to run twice.

The cap counters went with the keys: the runtime has them rebuilt first, under the same
lock (``caps``). A marker key says this Redis has its keys; it is set when a restore
ends. Every exchange worker checks it at start (before it serves) and every few seconds
after (``Runtime``), and ``exchange restore-dedupe`` runs a restore by hand. One worker
restores at a time (a lock key with an expiry, in case that worker dies).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta

from redis.asyncio import Redis

from exchange.catalog.models import Vertical
from exchange.intake.guard import Guard
from exchange.store.db import Conn
from exchange.store.redis_lane import Arg, execute, pipeline

log = logging.getLogger(__name__)

MARK = "restored:dedupe"  # under the prefix (not dd:*, the keys): this Redis has them
LOCK = "restoring:dedupe"  # under the prefix: held by the one worker restoring
LOCK_TTL_S = 900  # a dead restorer's lock frees itself; a live one renews it per batch
BATCH = 2000  # rows per cursor fetch, and about the SETs per pipeline

# Each vertical's window, oldest first; the range on received_at lets leads_received serve.
_KEY_HOLDERS = """
SELECT l.lead_id, l.vertical, l.test, l.phone, l.email, l.received_at
FROM leads l
JOIN unnest($1::text[], $2::timestamptz[]) AS w(vertical, lo)
  ON l.vertical = w.vertical AND l.received_at >= w.lo
WHERE l.received_at >= $3 AND l.status IN ('sold', 'unsold', 'pending')
ORDER BY l.received_at, l.lead_id
"""


async def restore_needed(redis: Redis, prefix: str) -> bool:
    """True when this Redis has not had its dedupe keys restored (a new or emptied one)."""
    return not await execute(redis, "EXISTS", prefix + MARK)


async def restore_dedupe(
    conn: Conn,
    redis: Redis,
    guard: Guard,
    prefix: str,
    verticals: Mapping[str, Vertical],
    now: datetime,
    caps: Callable[[], Awaitable[int]] | None = None,
) -> int | None:
    """Restore the keys and set the marker; the keys written, or None when another
    worker holds the lock (it is restoring; the marker appears when it is done).

    ``caps``, if given, rebuilds the cap counters first, under the same lock: a Redis that
    lost its dedupe keys lost its counters too (see README §When Redis loses its data)."""
    token = f"{os.getpid()}:{now.timestamp()}"
    if not await execute(redis, "SET", prefix + LOCK, token, "NX", "EX", LOCK_TTL_S):
        return None
    try:
        if caps is not None:
            log.info("cap counters rebuilt from Postgres", extra={"keys": await caps()})
        written = await _restore(conn, redis, guard, prefix, verticals, now)
        await execute(redis, "SET", prefix + MARK, now.isoformat())
    finally:
        # Only our own lock: one that expired and went to another worker stays its.
        if await execute(redis, "GET", prefix + LOCK) == token.encode():
            await execute(redis, "DEL", prefix + LOCK)
    return written


async def _restore(
    conn: Conn,
    redis: Redis,
    guard: Guard,
    prefix: str,
    verticals: Mapping[str, Vertical],
    now: datetime,
) -> int:
    windows = {name: v.dedupe_days for name, v in verticals.items() if v.dedupe_days > 0}
    if not windows:
        return 0
    names = list(windows)
    starts = [now - timedelta(days=windows[name]) for name in names]
    written = 0
    writes: list[tuple[Arg, ...]] = []
    async with conn.transaction():  # a server-side cursor lives in a transaction
        rows = conn.cursor(_KEY_HOLDERS, names, starts, min(starts), prefetch=BATCH)
        async for row in rows:
            vertical: str = row["vertical"]
            age_s = (now - row["received_at"]).total_seconds()
            ttl = int(windows[vertical] * 86400 - age_s)
            if ttl <= 0:
                continue
            lead_id = str(row["lead_id"])
            keys = guard.dedupe_keys(vertical, row["phone"], row["email"], row["test"])
            writes += [("SET", key, lead_id, "EX", ttl, "NX") for key in keys]
            if len(writes) >= BATCH:
                written += await _write(redis, prefix, writes)
                writes = []
        if writes:
            written += await _write(redis, prefix, writes)
    return written


async def _write(redis: Redis, prefix: str, writes: list[tuple[Arg, ...]]) -> int:
    """One pipeline of ``SET NX``; the lock's expiry renewed with it. Returns keys set."""
    replies = await pipeline(redis, [*writes, ("EXPIRE", prefix + LOCK, LOCK_TTL_S)])
    return sum(1 for reply in replies[:-1] if reply is not None)
