"""Smooth weighted round robin in Redis: exact splits, sequential and under concurrency."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
import redis.asyncio as aioredis

from exchange.auction.types import Offer
from exchange.routing import weights
from exchange.routing.weights import pick_first, tie_set_key


def _offers(**weights: int) -> list[Offer]:
    return [
        Offer(campaign_id=cid, buyer_id=f"b-{cid}", price_cents=1000, weight=w)
        for cid, w in weights.items()
    ]


async def test_three_one_one_splits_exactly_sequentially(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    offers = _offers(a=3, b=1, c=1)
    picks = [await pick_first(redis_client, redis_prefix, "auto:1000", offers) for _ in range(100)]
    assert Counter(picks) == {"a": 60, "b": 20, "c": 20}
    # Smooth: within each cycle of five the heavy campaign never takes three in a row.
    assert "aaa" not in "".join(picks)


async def test_three_one_one_splits_exactly_with_concurrent_callers(
    redis_client: aioredis.Redis, redis_prefix: str, redis_url: str
) -> None:
    offers = _offers(a=3, b=1, c=1)
    # Two clients stand in for two workers; each fires 50 picks at once.
    other = aioredis.Redis.from_url(redis_url)
    try:
        calls = [
            pick_first(client, redis_prefix, "auto:1000", offers)
            for client in (redis_client, other)
            for _ in range(50)
        ]
        picks = await asyncio.gather(*calls)
    finally:
        await other.aclose()
    assert Counter(picks) == {"a": 60, "b": 20, "c": 20}


async def test_equal_weights_are_plain_round_robin(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    offers = _offers(x=1, y=1, z=1)
    picks = [await pick_first(redis_client, redis_prefix, "g", offers) for _ in range(9)]
    assert picks == ["x", "y", "z"] * 3


async def test_order_of_offers_does_not_matter(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    offers = _offers(a=2, b=1)
    forward = [await pick_first(redis_client, redis_prefix, "g", offers) for _ in range(3)]
    backward = [
        await pick_first(redis_client, redis_prefix, "g", list(reversed(offers))) for _ in range(3)
    ]
    # One state for the set {a, b}, whatever order the caller lists them in.
    assert Counter(forward + backward) == {"a": 4, "b": 2}


async def test_each_tie_set_has_its_own_state(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    pair = _offers(a=1, b=1)
    trio = _offers(a=1, b=1, c=1)
    assert await pick_first(redis_client, redis_prefix, "g", pair) == "a"
    assert await pick_first(redis_client, redis_prefix, "g", trio) == "a"
    assert await pick_first(redis_client, redis_prefix, "g", pair) == "b"
    assert await pick_first(redis_client, redis_prefix, "other", pair) == "a"
    assert tie_set_key(redis_prefix, "g", ["a", "b"]) != tie_set_key(redis_prefix, "g", ["a", "c"])


async def test_group_of_one_never_touches_redis(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    assert await pick_first(redis_client, redis_prefix, "g", _offers(solo=5)) == "solo"
    assert [k async for k in redis_client.scan_iter(match=redis_prefix + "*")] == []


async def test_state_expires_after_a_day_idle(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    offers = _offers(a=1, b=1)
    await pick_first(redis_client, redis_prefix, "g", offers)
    ttl = await redis_client.ttl(tie_set_key(redis_prefix, "g", ["a", "b"]))
    assert 86_000 < ttl <= 86_400


async def test_falls_back_to_eval_when_the_script_is_not_cached(
    redis_client: aioredis.Redis, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server that never saw the script (a SHA it does not know) answers NOSCRIPT.
    monkeypatch.setattr(weights, "_PICK_SHA", "0" * 40)
    offers = _offers(a=1, b=1)
    picks = [await pick_first(redis_client, redis_prefix, "cold", offers) for _ in range(2)]
    assert picks == ["a", "b"]


async def test_no_offers_is_an_error(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    with pytest.raises(ValueError):
        await pick_first(redis_client, redis_prefix, "g", [])
