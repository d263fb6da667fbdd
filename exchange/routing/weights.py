"""Weighted splits among equal offers, shared by every worker (SPEC §4: 3:1:1 gives 60/20/20).

Smooth weighted round robin, nginx's algorithm: each pick adds every member's weight to
its running score, picks the highest, and takes the group's total weight off the winner.
It is exact over each cycle of ``sum(weights)`` picks and spreads the picks evenly inside
it (3:1:1 gives a, b, a, c, a rather than a, a, a, b, c). The scores live in one Redis
hash per distinct tie set and are updated by one Lua script, so picks made by any number
of worker processes form one sequence and the totals stay exact.

Usage::

    first = await pick_first(redis, prefix, f"{vertical}:{price}", tied_offers)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from exchange.auction.types import Offer
from exchange.store.redis_lane import execute

IDLE_TTL_S = 86_400  # a tie set unseen for a day starts over; nothing of value is lost

# KEYS[1]: hash campaign_id -> current score. ARGV: ttl, then id, weight pairs in a
# stable order (ties in score go to the earlier id, as in nginx).
_PICK_LUA = """
local n = (#ARGV - 1) / 2
local ids = {}
for i = 1, n do ids[i] = ARGV[2 * i] end
local scores = redis.call('HMGET', KEYS[1], unpack(ids))
local total, best = 0, 1
local updated = {}
for i = 1, n do
  local w = tonumber(ARGV[2 * i + 1])
  local s = (tonumber(scores[i]) or 0) + w
  scores[i] = s
  total = total + w
  if s > scores[best] then best = i end
end
scores[best] = scores[best] - total
for i = 1, n do
  updated[2 * i - 1] = ids[i]
  updated[2 * i] = scores[i]
end
redis.call('HSET', KEYS[1], unpack(updated))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return ids[best]
"""
_PICK_SHA = hashlib.sha1(_PICK_LUA.encode()).hexdigest()


def tie_set_key(prefix: str, group_key: str, campaign_ids: Sequence[str]) -> str:
    """The hash holding one tie set's scores: a new set of campaigns gets its own state."""
    digest = hashlib.blake2b("\x00".join(sorted(campaign_ids)).encode(), digest_size=8)
    return f"{prefix}wrr:{group_key}:{digest.hexdigest()}"


async def pick_first(redis: Redis, prefix: str, group_key: str, offers: Sequence[Offer]) -> str:
    """The campaign_id to rank first among ``offers`` (all equal but for their weights)."""
    if not offers:
        raise ValueError("pick_first needs at least one offer")
    if len(offers) == 1:
        return offers[0].campaign_id
    ordered = sorted(offers, key=lambda o: o.campaign_id)
    key = tie_set_key(prefix, group_key, [o.campaign_id for o in ordered])
    args: list[str | int] = [IDLE_TTL_S]
    for offer in ordered:
        args += [offer.campaign_id, max(offer.weight, 1)]
    try:
        picked = await execute(redis, "EVALSHA", _PICK_SHA, 1, key, *args)
    except NoScriptError:
        # First use on this server (or after SCRIPT FLUSH): EVAL caches it for next time.
        picked = await execute(redis, "EVAL", _PICK_LUA, 1, key, *args)
    return picked.decode() if isinstance(picked, bytes) else str(picked)
