"""The dedupe claim and its release, on a real Redis."""

from __future__ import annotations

import redis.asyncio as aioredis

from exchange.intake.guard import Dedupe, Guard
from exchange.store.redis_lane import lane_client

PHONE, EMAIL = "+14155550100", "ada@example.com"


async def test_release_gives_back_only_what_the_lead_still_holds(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    guard = Guard(redis_client, redis_prefix)
    assert await guard.check_duplicate("auto", PHONE, EMAIL, "lead-1", 30, False) is None
    assert await guard.check_duplicate("auto", PHONE, None, "lead-2", 30, False) == "lead-1"

    # Another lead's claim is not ours to free: lead-2 took nothing, lead-1 keeps both.
    await guard.release_duplicate("auto", PHONE, EMAIL, "lead-2", False)
    assert await guard.check_duplicate("auto", "+14155550199", EMAIL, "lead-3", 30, False) == (
        "lead-1"
    )
    await guard.release_duplicate("auto", PHONE, EMAIL, "lead-1", False)
    assert [k async for k in redis_client.scan_iter(match=f"{redis_prefix}dd:*")] == []
    # Freed, the phone and email are anyone's again; test leads live apart from real ones.
    assert await guard.check_duplicate("auto", PHONE, EMAIL, "lead-4", 30, False) is None
    assert await guard.check_duplicate("auto", PHONE, EMAIL, "lead-5", 30, True) is None
    await guard.release_duplicate("auto", PHONE, EMAIL, "lead-4", True)
    assert await guard.check_duplicate("auto", PHONE, EMAIL, "lead-6", 30, False) == "lead-4"


async def test_release_frees_only_this_leads_pending_claim(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    guard = Guard(redis_client, redis_prefix)
    keys = guard.idempotency_keys("pub", "ext-1", "key-1")
    assert (await guard.claim(keys, "lead-1")).first
    await guard.release(keys, "lead-2")  # not its claim: nothing changes
    assert (await guard.claim(keys, "lead-3")).lead_id == "lead-1"
    await guard.release(keys, "lead-1")
    assert (await guard.claim(keys, "lead-4")).first
    await guard.finish(keys, {"lead_id": "lead-4", "status": "sold"})
    await guard.release(keys, "lead-4")  # answered: the answer stays for repeats
    assert (await guard.claim(keys, "lead-5")).answer == {"lead_id": "lead-4", "status": "sold"}


async def test_a_lead_without_ids_has_no_claim_to_release() -> None:
    # Nothing to free, so no Redis call: not even an unreachable Redis can slow it down.
    unreachable = lane_client("redis://127.0.0.1:1/0")
    try:
        await Guard(unreachable, "p:").release([], "lead-1")
    finally:
        await unreachable.aclose()


async def test_claim_with_dedupe_takes_ids_phone_and_email_in_one_step(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    guard = Guard(redis_client, redis_prefix)
    dedupe = Dedupe("auto", PHONE, EMAIL, 30, False)
    first = await guard.claim(guard.idempotency_keys("pub", "ext-1", None), "lead-1", dedupe)
    assert (first.first, first.deduped, first.earlier) == (True, True, None)
    # The phone and email are lead-1's now, exactly as check_duplicate would have left them.
    assert await guard.check_duplicate("auto", PHONE, None, "lead-x", 30, False) == "lead-1"
    phone_key = f"{redis_prefix}dd:{{auto}}:p:{PHONE}"
    assert 29 * 86400 < await redis_client.ttl(phone_key) <= 30 * 86400

    # A repeat of lead-1 hears the claim and takes nothing: the phone stays lead-1's.
    repeat = await guard.claim(guard.idempotency_keys("pub", "ext-1", None), "lead-2", dedupe)
    assert (repeat.first, repeat.lead_id, repeat.deduped) == (False, "lead-1", False)
    assert await redis_client.get(phone_key) == b"lead-1"

    # Another lead with lead-1's email is a duplicate of lead-1, and still claims its own
    # id (its repeats hear "duplicate"), but takes no phone or email.
    other = Dedupe("auto", "+14155550199", EMAIL, 30, False)
    dup = await guard.claim(guard.idempotency_keys("pub", "ext-3", None), "lead-3", other)
    assert (dup.first, dup.deduped, dup.earlier) == (True, True, "lead-1")
    assert await redis_client.get(f"{redis_prefix}dd:{{auto}}:p:+14155550199") is None
    again = await guard.claim(guard.idempotency_keys("pub", "ext-3", None), "lead-4")
    assert (again.first, again.lead_id) == (False, "lead-3")


async def test_claim_without_dedupe_days_only_claims(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    guard = Guard(redis_client, redis_prefix)
    off = Dedupe("auto", PHONE, EMAIL, 0, False)
    claim = await guard.claim(guard.idempotency_keys("pub", "ext-1", "k-1"), "lead-1", off)
    assert (claim.first, claim.deduped) == (True, False)
    assert [k async for k in redis_client.scan_iter(match=f"{redis_prefix}dd:*")] == []
