"""Campaign caps and budgets in Redis, exact across workers and machines (SPEC §2, §4).

Each cap is a counter per campaign-local period (``exchange.routing.schedule``)::

    {prefix}cap:{<buyer_id>}:<campaign_id>:<period>:<period_id>         leads sold
    {prefix}cap:{<buyer_id>}:<campaign_id>:spend:<period>:<period_id>   cents spent

The ``{buyer_id}`` hash tag puts all of one buyer's counters in one Redis Cluster slot,
so the Lua scripts over one campaign's keys stay atomic and cluster-safe (the prefix
itself must hold no braces). Keys expire ``grace_s`` after their period ends.

The life of a sale: ``capped()`` pre-filters the campaigns before the ping (one round
trip, not atomic); ``reserve()`` atomically takes a slot of every cap and budget for the
winner before its post; ``release()`` gives it back if the post is rejected or fails.
An accepted post keeps its reservation: the counters *are* the usage, so there is no
commit step. Postgres holds the truth and ``rebuild()`` resets the counters from it.

Usage::

    caps = CapStore(redis, prefix)
    reservation = await caps.reserve(target, price_cents, now)
    if reservation is None: ...                     # over a cap: try the next offer
    if not accepted: await caps.release(reservation)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from redis.asyncio import Redis

from exchange.catalog.index import Target
from exchange.catalog.models import Caps
from exchange.routing.schedule import Period, PeriodKeys, period_bounds, period_keys
from exchange.store.db import Conn
from exchange.store.redis_lane import Arg, Lua, execute, pipeline

GRACE_S = 600  # longer than any post can take, so a late release still finds its keys

# KEYS: counters. ARGV per key i: amount (3i-2), limit (3i-1), ttl seconds (3i).
# All or nothing: nothing is incremented unless every counter has room.
# Returns 0 on success, else the 1-based index of the first counter without room.
_RESERVE_LUA = """
for i = 1, #KEYS do
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  if used + tonumber(ARGV[3 * i - 2]) > tonumber(ARGV[3 * i - 1]) then return i end
end
for i = 1, #KEYS do
  redis.call('INCRBY', KEYS[i], ARGV[3 * i - 2])
  redis.call('EXPIRE', KEYS[i], ARGV[3 * i])
end
return 0
"""

# KEYS[1]: a counter, ARGV: the value Postgres holds, ttl seconds. Raised, never lowered.
_RAISE_LUA = """
if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return 1
"""

# KEYS: counters, ARGV[i]: amount to give back. An expired key stays gone (its period is
# over) and no counter goes below zero (a rebuild may have reset it meanwhile).
_RELEASE_LUA = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    if redis.call('DECRBY', KEYS[i], ARGV[i]) < 0 then
      redis.call('SET', KEYS[i], 0, 'KEEPTTL')
    end
  end
end
return 0
"""

# Sales (not test) and posts still unknown (they hold a reservation) per campaign window.
_USAGE_SQL = """
WITH windows AS (
    SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[])
        WITH ORDINALITY AS w(campaign_id, lo, hi, i)
), used AS (
    SELECT s.campaign_id, s.created_at, s.price_cents FROM sales s
     WHERE NOT s.test AND s.campaign_id = ANY($1::text[]) AND s.created_at >= $4
    UNION ALL
    SELECT p.campaign_id, p.created_at, p.price_cents FROM posts p
      JOIN leads l ON l.lead_id = p.lead_id
     WHERE p.state = 'unknown' AND NOT l.test
       AND p.campaign_id = ANY($1::text[]) AND p.created_at >= $4
)
SELECT w.i, count(u.price_cents) AS leads, coalesce(sum(u.price_cents), 0)::bigint AS cents
  FROM windows w
  LEFT JOIN used u ON u.campaign_id = w.campaign_id AND u.created_at >= w.lo AND u.created_at < w.hi
 GROUP BY w.i
 ORDER BY w.i
"""


@dataclass(frozen=True, slots=True)
class Limit:
    """One cap of a campaign: ``name`` is its ``Caps`` field, ``spend`` marks a budget."""

    name: str
    period: Period
    spend: bool
    limit: int


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one ``reserve()`` took: the exact keys and amounts, whatever the clock says later."""

    campaign_id: str
    price_cents: int
    keys: tuple[str, ...] = ()
    amounts: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form, e.g. for ``posts.reservation`` of a post whose answer never came."""
        return {
            "campaign_id": self.campaign_id,
            "price_cents": self.price_cents,
            "keys": list(self.keys),
            "amounts": list(self.amounts),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reservation:
        return cls(
            campaign_id=str(data["campaign_id"]),
            price_cents=int(data["price_cents"]),
            keys=tuple(str(k) for k in data.get("keys", ())),
            amounts=tuple(int(a) for a in data.get("amounts", ())),
        )


_COUNT_CAPS: tuple[tuple[str, Period], ...] = (
    ("hourly", "hour"),
    ("daily", "day"),
    ("weekly", "week"),
    ("monthly", "month"),
)
_BUDGET_CAPS: tuple[tuple[str, Period], ...] = (
    ("daily_budget", "day"),
    ("monthly_budget", "month"),
)


@lru_cache(maxsize=4096)
def limits_of(caps: Caps) -> tuple[Limit, ...]:
    """The caps that are set, counts first; empty for an uncapped campaign."""
    found: list[Limit] = []
    for spend, table in ((False, _COUNT_CAPS), (True, _BUDGET_CAPS)):
        for name, period in table:
            value: int | None = getattr(caps, name)
            if value is not None:
                found.append(Limit(name, period, spend, value))
    return tuple(found)


class CapStore:
    """Caps and budgets of every campaign, shared by all workers through one Redis."""

    def __init__(self, redis: Redis, prefix: str, grace_s: int = GRACE_S) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain braces (they are the hash tag)")
        self._redis = redis
        self._prefix = prefix
        self._grace_s = grace_s
        self._reserve = Lua(redis, _RESERVE_LUA)
        self._release = Lua(redis, _RELEASE_LUA)

    def key(self, target: Target, limit: Limit, period_id: str) -> str:
        """The counter of ``limit`` for the period named ``period_id``."""
        kind = f"spend:{limit.period}" if limit.spend else limit.period
        return f"{self._prefix}cap:{{{target.buyer.id}}}:{target.campaign.id}:{kind}:{period_id}"

    def _current(
        self, target: Target, now: datetime, zones: dict[str, PeriodKeys] | None = None
    ) -> list[tuple[Limit, str, int]]:
        """(limit, key, ttl seconds) of each cap for the periods containing ``now``."""
        limits = limits_of(target.campaign.caps)
        if not limits:
            return []
        tz = target.campaign.tz
        cache = zones if zones is not None else {}
        periods = cache.get(tz)
        if periods is None:
            periods = cache[tz] = period_keys(tz, now)
        return [
            (
                limit,
                self.key(target, limit, periods.key(limit.period)),
                periods.seconds_left(limit.period) + self._grace_s,
            )
            for limit in limits
        ]

    async def capped(
        self, targets: Sequence[Target], now: datetime, floor_cents: int = 0
    ) -> set[str]:
        """Campaign ids at or over any cap or budget: one round trip for all of them.

        A budget with less left than the least the campaign could pay (the vertical's
        ``floor_cents`` or its own price) counts as spent: pinging it would be wasted.
        """
        zones: dict[str, PeriodKeys] = {}
        checks = [(t, slots) for t in targets if (slots := self._current(t, now, zones))]
        if not checks:
            return set()
        # Not a transaction, one MGET per campaign (each within its slot); the exact
        # check is reserve()'s.
        commands = [("MGET", *(key for _, key, _ in slots)) for _, slots in checks]
        results: list[list[Any]] = await pipeline(self._redis, commands)
        return {
            target.campaign.id
            for (target, slots), values in zip(checks, results, strict=True)
            if _over(
                target,
                [(limit, _int(v)) for (limit, _, _), v in zip(slots, values, strict=True)],
                floor_cents,
            )
        }

    async def reserve(self, target: Target, price_cents: int, now: datetime) -> Reservation | None:
        """Take one lead and ``price_cents`` from every cap and budget, all or nothing."""
        if price_cents < 0:
            raise ValueError("price_cents cannot be negative")
        slots = self._current(target, now)
        if not slots:
            return Reservation(target.campaign.id, price_cents)
        keys = tuple(key for _, key, _ in slots)
        amounts = tuple(price_cents if limit.spend else 1 for limit, _, _ in slots)
        args: list[int] = []
        for (limit, _, ttl), amount in zip(slots, amounts, strict=True):
            args += [amount, limit.limit, ttl]
        refused = await self._reserve(keys=keys, args=args)
        if int(refused) != 0:
            return None
        return Reservation(target.campaign.id, price_cents, keys, amounts)

    async def release(self, reservation: Reservation) -> None:
        """Give a reservation back (post rejected or failed); never drives a counter below 0."""
        if reservation.keys:
            await self._release(keys=reservation.keys, args=reservation.amounts)

    async def usage(self, target: Target, now: datetime) -> dict[str, tuple[int, int]]:
        """``{cap name: (used, limit)}`` for the current periods, e.g. ``{"daily": (7, 100)}``."""
        slots = self._current(target, now)
        if not slots:
            return {}
        values = await execute(self._redis, "MGET", *(key for _, key, _ in slots))
        return {
            limit.name: (_int(v), limit.limit)
            for (limit, _, _), v in zip(slots, values, strict=True)
        }

    async def rebuild(
        self, conn: Conn, targets: Sequence[Target], now: datetime, *, only_raise: bool = False
    ) -> int:
        """Reset the current periods' counters from Postgres; returns the keys written.

        Run it before traffic (or with traffic stopped): it overwrites, so a reservation
        taken between the query and the write would be lost. With ``only_raise`` (a Redis
        that lost its data under traffic) a counter is only ever raised to what Postgres
        holds, so the reservations taken since the loss are kept when they count more.
        """
        capped = [t for t in targets if limits_of(t.campaign.caps)]
        if not capped:
            return 0
        windows = _windows(capped)
        bounds = [period_bounds(tz, now, period) for (_, period), tz in windows.items()]
        rows = await conn.fetch(
            _USAGE_SQL,
            [campaign_id for campaign_id, _ in windows],
            [start for start, _ in bounds],
            [end for _, end in bounds],
            min(start for start, _ in bounds),
        )
        totals = {key: (row["leads"], row["cents"]) for key, row in zip(windows, rows, strict=True)}
        writes: list[tuple[Arg, ...]] = []
        for target in capped:
            for limit, key, ttl in self._current(target, now):
                leads, cents = totals[(target.campaign.id, limit.period)]
                value = cents if limit.spend else leads
                if only_raise:
                    writes.append(("EVAL", _RAISE_LUA, 1, key, value, ttl))
                else:
                    writes.append(("SET", key, value, "EX", ttl))
        await pipeline(self._redis, writes)
        return len(writes)

    async def is_empty(self) -> bool:
        """True when no cap counter exists under the prefix (a fresh Redis: rebuild first)."""
        pattern = _glob_escape(self._prefix) + "cap:*"
        cursor: bytes | int = 0
        while True:
            cursor, keys = await execute(
                self._redis, "SCAN", cursor, "MATCH", pattern, "COUNT", 1000
            )
            if keys:
                return False
            if int(cursor) == 0:
                return True


def _windows(targets: Sequence[Target]) -> dict[tuple[str, Period], str]:
    """Each distinct (campaign, period) to count, with the campaign's zone, in query order."""
    windows: dict[tuple[str, Period], str] = {}
    for target in targets:
        for limit in limits_of(target.campaign.caps):
            windows[(target.campaign.id, limit.period)] = target.campaign.tz
    return windows


def _over(target: Target, used: list[tuple[Limit, int]], floor_cents: int = 0) -> bool:
    """At a count cap, or too little budget left for the least the campaign could pay."""
    least = max(floor_cents, target.campaign.price or 0)
    for limit, value in used:
        if limit.spend:
            left = limit.limit - value
            if left <= 0 or left < least:
                return True
        elif value >= limit.limit:
            return True
    return False


def _int(value: Any) -> int:
    return int(value) if value is not None else 0


_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")


def _glob_escape(text: str) -> str:
    return _GLOB_SPECIAL.sub(r"\\\1", text)
