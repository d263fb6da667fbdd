"""Idempotency and duplicate checks in Redis, atomic across workers and machines.

Idempotency: the first request for a ``(publisher, external_id)`` or ``Idempotency-Key``
claims it; repeats wait for the first answer and get it verbatim (from Postgres, where it
is saved with the lead; Redis keeps only a held lead's, see ``intake.held``). Dedupe: the same
phone or email in a vertical within ``dedupe_days`` is a duplicate. Keys of one claim
share a hash tag. A lead with ids claims them and its phone and email in one script
(:meth:`Guard.claim` with ``dedupe``): one round trip less a lead, and nothing can slip
between the two. That script spans two hash tags, as the lead path's single-node lane
(``store.redis_lane``) allows; a Redis Cluster would run the two halves as two calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import orjson
from redis.asyncio import Redis

from exchange.store.redis_lane import Lua, execute

_CLAIM = """
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if v then return v end
end
for i, k in ipairs(KEYS) do
  redis.call('SET', k, ARGV[1], 'EX', ARGV[2])
end
return false
"""

_FINISH = """
for i, k in ipairs(KEYS) do
  redis.call('SET', k, ARGV[1], 'EX', ARGV[2])
end
return 1
"""

# Deletes each key that still holds ARGV[1]: gives back only what this lead took.
_RELEASE_OWN = """
local n = 0
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then n = n + redis.call('DEL', k) end
end
return n
"""

# Points each key that holds ARGV[1] at ARGV[2], keeping its expiry.
_HAND_OVER = """
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then redis.call('SET', k, ARGV[2], 'KEEPTTL') end
end
return 1
"""

# KEYS: the idempotency keys (ARGV[1] of them), then the phone and email keys. The claim
# is taken even for a duplicate, so its repeats hear the same "duplicate" answer.
_CLAIM_AND_DEDUPE = """
local n = tonumber(ARGV[1])
for i = 1, n do
  local v = redis.call('GET', KEYS[i])
  if v then return {1, v} end
end
local earlier = false
for i = n + 1, #KEYS do
  earlier = redis.call('GET', KEYS[i])
  if earlier then break end
end
for i = 1, n do
  redis.call('SET', KEYS[i], ARGV[2], 'EX', ARGV[3])
end
if earlier then return {2, earlier} end
for i = n + 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[4], 'EX', ARGV[5])
end
return {0}
"""

PENDING = b"p:"
DONE = b"d:"


@dataclass(frozen=True, slots=True)
class Dedupe:
    """The phone and email a lead would take in its vertical, for ``days``."""

    vertical: str
    phone: str
    email: str | None
    days: int
    test: bool


@dataclass(frozen=True, slots=True)
class Claim:
    """Either ours to run (``first``), or the answer of the request that ran first.

    ``deduped`` says the claim checked the phone and email too; ``earlier`` is then the
    lead that had them (None: they are this lead's now)."""

    first: bool
    lead_id: str | None = None
    answer: dict[str, Any] | None = None
    deduped: bool = False
    earlier: str | None = None


class Guard:
    def __init__(self, redis: Redis, prefix: str, idempotency_ttl_s: int = 30 * 86400) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = idempotency_ttl_s
        self._claim = Lua(redis, _CLAIM)
        self._finish = Lua(redis, _FINISH)
        self._release_own = Lua(redis, _RELEASE_OWN)
        self._claim_and_dedupe = Lua(redis, _CLAIM_AND_DEDUPE)
        self._hand_over = Lua(redis, _HAND_OVER)

    def idempotency_keys(
        self, publisher_id: str, external_id: str | None, idempotency_key: str | None
    ) -> list[str]:
        base = f"{self._prefix}idem:{{{publisher_id}}}:"
        keys = []
        if external_id is not None:
            keys.append(base + "ext:" + external_id)
        if idempotency_key is not None:
            keys.append(base + "key:" + idempotency_key)
        return keys

    async def claim(self, keys: list[str], lead_id: str, dedupe: Dedupe | None = None) -> Claim:
        """Claim the keys for ``lead_id``, or learn who has them; with ``dedupe``, check
        and take the phone and email in the same step (``Claim.deduped``)."""
        if not keys:
            return Claim(first=True)
        pending = PENDING + lead_id.encode()
        if dedupe is None or dedupe.days <= 0:
            found = await self._claim(keys=keys, args=[pending, self._ttl])
            return Claim(first=True) if found is None else _read_claim(_as_bytes(found))
        taken = self.dedupe_keys(dedupe.vertical, dedupe.phone, dedupe.email, dedupe.test)
        args: list[str | bytes | int] = [
            len(keys),
            pending,
            self._ttl,
            lead_id,
            dedupe.days * 86400,
        ]
        reply = await self._claim_and_dedupe(keys=[*keys, *taken], args=args)
        kind = int(reply[0])
        if kind == 1:
            return _read_claim(_as_bytes(reply[1]))
        earlier = _as_bytes(reply[1]).decode() if kind == 2 else None
        return Claim(first=True, deduped=True, earlier=earlier)

    async def peek(self, keys: list[str]) -> Claim:
        """Who holds the claim now, and its answer if Redis keeps one (a held lead's)."""
        # Any of the keys may be the one the first request holds (a repeat can share
        # only its Idempotency-Key, or only its external id).
        found = [v for v in await execute(self._redis, "MGET", *keys) if v is not None]
        return _read_claim(_as_bytes(found[0])) if found else Claim(first=False)

    async def finish(self, keys: list[str], answer: dict[str, Any]) -> None:
        if keys:
            await self._finish(keys=keys, args=[DONE + orjson.dumps(answer), self._ttl])

    async def release(self, keys: list[str], lead_id: str) -> None:
        """Give up a claim whose request failed before answering, so a retry can run."""
        if keys:
            await self._release_own(keys=keys, args=[PENDING + lead_id.encode()])

    async def check_duplicate(
        self, vertical: str, phone: str, email: str | None, lead_id: str, days: int, test: bool
    ) -> str | None:
        """The earlier lead id if this phone or email was seen in the window; else claim them."""
        if days <= 0:
            return None
        keys = self.dedupe_keys(vertical, phone, email, test)
        found = await self._claim(keys=keys, args=[lead_id, days * 86400])
        return cast(bytes, found).decode() if found is not None else None

    async def release_duplicate(
        self, vertical: str, phone: str, email: str | None, lead_id: str, test: bool
    ) -> None:
        """Give back the phone and email this lead claimed, if they are still its own: a lead
        that failed before any buyer saw it must not make its own retry a duplicate."""
        keys = self.dedupe_keys(vertical, phone, email, test)
        await self._release_own(keys=keys, args=[lead_id])

    async def hand_over_duplicate(
        self, vertical: str, phone: str, email: str | None, from_id: str, to_id: str, test: bool
    ) -> None:
        """Point the phone and email ``from_id`` holds at ``to_id``: a repeat whose claim
        took them again after Redis lost its data hands them to the lead that has them."""
        keys = self.dedupe_keys(vertical, phone, email, test)
        await self._hand_over(keys=keys, args=[from_id, to_id])

    def dedupe_keys(
        self, vertical: str, phone: str | None, email: str | None, test: bool
    ) -> list[str]:
        """The keys a lead's phone and email take in its vertical (test leads apart)."""
        space = "test:" if test else ""
        base = f"{self._prefix}dd:{{{vertical}}}:{space}"
        return ([base + "p:" + phone] if phone else []) + ([base + "e:" + email] if email else [])


def _read_claim(raw: bytes) -> Claim:
    if raw.startswith(DONE):
        answer = orjson.loads(raw[len(DONE) :])
        return Claim(first=False, lead_id=answer.get("lead_id"), answer=answer)
    return Claim(first=False, lead_id=raw[len(PENDING) :].decode())


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
