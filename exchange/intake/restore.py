"""Put the phone and email dedupe keys back in Redis from Postgres after Redis lost them.

Redis may keep nothing on disk (this machine's does not), and a restarted one forgets every
phone and email of the last ``dedupe_days``: without this, the exchange would sell their
duplicates as new leads, which buyers return. Postgres holds every lead that took its keys
(consented and not a duplicate: sold, unsold or pending), so the keys come back from there,
oldest lead first and each set only if absent (``SET NX``): the lead that took a key first
holds it again, for what is left of its window, and a key a live lead took meanwhile is
never overwritten. That makes a restore safe with traffic running and safe to run twice.

The cap counters went with the keys: the caller may have them rebuilt first, under the
same lock (``caps``). A marker key says this Redis has its keys; it is set when a restore
ends. Every exchange worker checks it at start (before it serves) and every few seconds
after (``Runtime``), and ``exchange restore-redis`` runs a restore by hand. One worker
restores at a time, under a lock key that it renews with every page and that expires if
that worker dies. If the lock is gone mid-restore (Redis lost its data again), the
restore stops without setting the marker, and the next check starts it over.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from exchange.catalog.models import Vertical
from exchange.intake.guard import Guard
from exchange.store.redis_lane import Arg, Lua, execute, pipeline

log = logging.getLogger(__name__)

MARK = "restored:dedupe"  # under the prefix (not dd:*, the keys): this Redis has them
LOCK = "restoring:dedupe"  # under the prefix: held by the one worker restoring
LOCK_TTL_S = 60  # renewed with every page; a dead restorer's lock frees itself
PAGE = 2000  # leads a page: one short query, one pipeline of their SETs

# One page of the leads that hold keys, in (received_at, lead_id) order from a point:
# keyset pages, so no transaction or cursor stays open while Redis is written (a window
# can hold millions of leads). ``received_at >= $3`` lets leads_received serve the range.
_PAGE_SQL = """
SELECT l.lead_id, l.vertical, l.test, l.phone, l.email, l.received_at
FROM leads l
JOIN unnest($1::text[], $2::timestamptz[]) AS w(vertical, lo)
  ON l.vertical = w.vertical AND l.received_at >= w.lo
WHERE l.received_at >= $3 AND (l.received_at, l.lead_id) > ($3, $4)
  AND l.status IN ('sold', 'unsold', 'pending')
ORDER BY l.received_at, l.lead_id
LIMIT $5
"""

# KEYS[1]: the lock, ARGV[1]: our token, ARGV[2]: ttl. 1 if still ours (renewed), else 0.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: the lock, the marker; ARGV: our token, the marker's value. Sets the marker only
# if the lock is still ours: a Redis lost again mid-restore must not be marked restored.
_FINISH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2])
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# KEYS[1]: the lock, ARGV[1]: our token. Frees it only if it is still ours.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Rows(Protocol):
    """Where pages are read: an asyncpg pool (a connection per page) or a connection."""

    async def fetch(self, query: str, *args: Any) -> list[Any]: ...


class RestoreInterrupted(Exception):
    """The lock was lost mid-restore (Redis lost its data again, or the lock expired):
    no marker was set, so the next check restores again."""


def eviction_risk(policy: str, maxmemory: int) -> str | None:
    """Why this Redis may drop our keys on its own, or None. Every cap counter and dedupe
    key has an expiry, so even the ``volatile-*`` policies evict them; an evicted key is
    not a loss the marker shows (a cap would count from zero, a duplicate pass as new)."""
    if maxmemory == 0 or policy == "noeviction":
        return None
    return (
        f"Redis evicts keys when full (maxmemory-policy {policy}, maxmemory {maxmemory}):"
        " cap counters and dedupe keys can vanish; set maxmemory-policy noeviction"
    )


async def check_eviction(redis: Redis) -> str | None:
    """:func:`eviction_risk` of the server's settings; None if it will not say (managed
    services often refuse ``CONFIG``)."""
    settings = await eviction_settings(redis)
    return None if settings is None else eviction_risk(*settings)


async def eviction_settings(redis: Redis) -> tuple[str, int] | None:
    """The server's ``maxmemory-policy`` and ``maxmemory``, or None if ``CONFIG`` is refused."""
    try:
        policy = await execute(redis, "CONFIG", "GET", "maxmemory-policy")
        maxmemory = await execute(redis, "CONFIG", "GET", "maxmemory")
    except ResponseError:
        return None
    return _config_value(policy), int(_config_value(maxmemory) or 0)


def _config_value(reply: Any) -> str:
    """``CONFIG GET``'s one value: a pair list under RESP2, a map under RESP3."""
    values = list(reply.values()) if isinstance(reply, dict) else list(reply)[1::2]
    value = values[0] if values else ""
    return value.decode() if isinstance(value, bytes) else str(value)


async def restore_needed(redis: Redis, prefix: str) -> bool:
    """True when this Redis has not had its dedupe keys restored (a new or emptied one)."""
    return not await execute(redis, "EXISTS", prefix + MARK)


async def restore_dedupe(
    db: Rows,
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
    token = f"{os.getpid()}:{uuid.uuid4().hex}"
    lock, mark = prefix + LOCK, prefix + MARK
    if not await execute(redis, "SET", lock, token, "NX", "EX", LOCK_TTL_S):
        return None
    try:
        if not await restore_needed(redis, prefix):
            return 0  # a restore that ended just before we took the lock
        if caps is not None:
            log.info("cap counters rebuilt from Postgres", extra={"keys": await caps()})
        written = await _restore(db, redis, guard, prefix, token, verticals, now)
        if not await Lua(redis, _FINISH)(keys=[lock, mark], args=[token, now.isoformat()]):
            raise RestoreInterrupted("the restore lock was lost before the marker was set")
        return written
    finally:
        await Lua(redis, _UNLOCK)(keys=[lock], args=[token])


async def _restore(
    db: Rows,
    redis: Redis,
    guard: Guard,
    prefix: str,
    token: str,
    verticals: Mapping[str, Vertical],
    now: datetime,
) -> int:
    windows = {name: v.dedupe_days for name, v in verticals.items() if v.dedupe_days > 0}
    if not windows:
        return 0
    names = list(windows)
    starts = [now - timedelta(days=windows[name]) for name in names]
    after: tuple[datetime, uuid.UUID] = (min(starts), uuid.UUID(int=0))
    renew = Lua(redis, _RENEW)
    written = 0
    while True:
        rows = await db.fetch(_PAGE_SQL, names, starts, *after, PAGE)
        writes: list[tuple[Arg, ...]] = []
        for row in rows:
            vertical: str = row["vertical"]
            age_s = (now - row["received_at"]).total_seconds()
            ttl = int(windows[vertical] * 86400 - age_s)
            if ttl <= 0:
                continue
            lead_id = str(row["lead_id"])
            keys = guard.dedupe_keys(vertical, row["phone"], row["email"], row["test"])
            writes += [("SET", key, lead_id, "EX", ttl, "NX") for key in keys]
        if writes:
            replies = await pipeline(redis, writes)
            written += sum(1 for reply in replies if reply is not None)
        if not await renew(keys=[prefix + LOCK], args=[token, LOCK_TTL_S]):
            raise RestoreInterrupted("the restore lock was lost mid-restore")
        if len(rows) < PAGE:
            return written
        after = (rows[-1]["received_at"], rows[-1]["lead_id"])
