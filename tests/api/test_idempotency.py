"""Seen before: repeats of one lead run one auction; other leads with its phone or email are
duplicates. Checked against what buyers saw and what Postgres holds, not just the answers."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import orjson
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from exchange.intake.guard import DONE, PENDING
from tests.api.conftest import Market, OpenMarket
from tests.kit.buyers import Buyer
from tests.kit.exchange import PUB2_KEY, buyer_entry, campaign, lead_body
from tests.kit.records import count_rows


def _buyers() -> tuple[Buyer, Buyer]:
    return Buyer("acme", "secret-acme-123", price=20), Buyer("bolt", "secret-bolt-123", price=12)


def _with_contact(body: dict[str, Any], **changes: str) -> dict[str, Any]:
    return {**body, "contact": {**body["contact"], **changes}}


def _answers(resps: list[httpx.Response]) -> list[dict[str, Any]]:
    assert [r.status_code for r in resps] == [200] * len(resps), [r.text for r in resps]
    return [r.json() for r in resps]


def _assert_one_auction(m: Market, answers: list[dict[str, Any]]) -> None:
    assert answers[0]["status"] == "sold" and answers[0]["payout"] == "14.00"
    assert all(a == answers[0] for a in answers), answers
    assert m.pings_seen() == {"acme": 1, "bolt": 1}
    assert m.posts_seen() == {"acme": 1, "bolt": 0}


async def test_concurrent_repeats_of_one_external_id_run_one_auction(market: OpenMarket) -> None:
    m = await market(*_buyers())
    body = lead_body()
    resps = list(await asyncio.gather(*(m.ex.submit(body) for _ in range(5))))
    answers = _answers(resps)
    _assert_one_auction(m, answers)
    assert sorted(str(r.headers.get("Idempotent-Replayed")) for r in resps) == [
        "None",
        "true",
        "true",
        "true",
        "true",
    ]
    assert await count_rows(m.pg_dsn, "leads") == 1
    assert await count_rows(m.pg_dsn, "sales") == 1

    later = await m.ex.submit(body)
    assert later.json() == answers[0]
    assert later.headers.get("Idempotent-Replayed") == "true"
    assert m.pings_seen() == {"acme": 1, "bolt": 1}


async def test_concurrent_repeats_of_one_idempotency_key_run_one_auction(
    market: OpenMarket,
) -> None:
    m = await market(*_buyers())
    body = lead_body()
    del body["external_id"]
    key = {"Idempotency-Key": f"idem-{uuid.uuid4()}"}
    answers = _answers(list(await asyncio.gather(*(m.ex.submit(body, **key) for _ in range(5)))))
    _assert_one_auction(m, answers)
    assert await count_rows(m.pg_dsn, "leads") == 1

    # Later, even with an external id of its own, the key alone names the same lead.
    later = await m.ex.submit(lead_body(), **key)
    assert later.json() == answers[0]
    assert m.pings_seen() == {"acme": 1, "bolt": 1}
    assert await count_rows(m.pg_dsn, "leads") == 1


async def test_concurrent_retries_with_one_key_and_fresh_external_ids_get_the_first_answer(
    market: OpenMarket,
) -> None:
    """A publisher that regenerates its external id on retry but keeps the Idempotency-Key."""
    m = await market(*_buyers(), settings={"deadline_ms": 1000})
    key = {"Idempotency-Key": f"idem-{uuid.uuid4()}"}
    resps = await asyncio.gather(*(m.ex.submit(lead_body(), **key) for _ in range(5)))
    answers = _answers(list(resps))
    _assert_one_auction(m, answers)
    assert await count_rows(m.pg_dsn, "leads") == 1


async def test_repeat_after_redis_lost_its_keys_is_answered_from_postgres(
    market: OpenMarket,
) -> None:
    m = await market(*_buyers())
    by_external_id = lead_body()
    by_key = lead_body()
    del by_key["external_id"]
    key = {"Idempotency-Key": f"idem-{uuid.uuid4()}"}
    first_ext = (await m.ex.submit(by_external_id)).json()
    first_key = (await m.ex.submit(by_key, **key)).json()
    assert first_ext["status"] == first_key["status"] == "sold"
    seen = m.pings_seen()

    idem_keys = await _claims(m, [first_ext["lead_id"], first_key["lead_id"]])
    await m.redis.delete(*idem_keys)

    for _ in range(2):  # from Postgres, then from the Redis key it wrote back
        assert (await m.ex.submit(by_external_id)).json() == first_ext
        assert (await m.ex.submit(by_key, **key)).json() == first_key
    kept = sorted(DONE + orjson.dumps(a) for a in (first_ext, first_key))
    for _ in range(100):  # written back just after answering
        if await _values(m) == kept:
            break
        await asyncio.sleep(0.01)
    assert await _values(m) == kept
    assert m.pings_seen() == seen
    assert await count_rows(m.pg_dsn, "leads") == 2


async def _dedupe_marks(m: Market) -> set[str]:
    """The lead ids the phone and email keys name (a key gone since the scan is skipped)."""
    keys = [k async for k in m.redis.scan_iter(match=f"{m.redis_prefix}dd:*")]
    values = await m.redis.mget(keys) if keys else []
    return {v.decode() if isinstance(v, bytes) else v for v in values if v is not None}


async def test_a_repeat_answered_from_postgres_hands_the_phone_and_email_to_its_lead(
    market: OpenMarket,
) -> None:
    """Redis lost everything: the repeat's claim took the phone and email again, for a lead
    id that never runs; they are handed to the lead Postgres has, so the consumer's next
    lead is that lead's duplicate, not the duplicate of a lead that does not exist."""
    m = await market(*_buyers())
    body = lead_body()
    first = (await m.ex.submit(body)).json()
    assert first["status"] == "sold"
    assert await _dedupe_marks(m) == {first["lead_id"]}
    gone = [k async for k in m.redis.scan_iter(match=f"{m.redis_prefix}*")]
    await m.redis.delete(*gone)  # only this test's prefix: never a flush

    repeat = await m.ex.submit(body)
    assert repeat.json() == first and repeat.headers.get("Idempotent-Replayed") == "true"
    for _ in range(100):  # handed over just after answering
        if await _dedupe_marks(m) == {first["lead_id"]}:
            break
        await asyncio.sleep(0.01)
    assert await _dedupe_marks(m) == {first["lead_id"]}

    later = (await m.ex.submit({**body, "external_id": f"next-{uuid.uuid4()}"})).json()
    assert later["status"] == "duplicate" and first["lead_id"] in later["reason"], later
    assert m.pings_seen() == {"acme": 1, "bolt": 1}
    assert await count_rows(m.pg_dsn, "leads") == 2


async def test_a_claim_whose_reply_was_lost_is_given_back_for_the_retry(
    market: OpenMarket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim script ran but its reply never came: the publisher hears 503, and its
    retry runs at once instead of waiting on a pending claim (or being its own duplicate)."""
    m = await market(*_buyers(), settings={"deadline_ms": 1000})
    guard = m.ex.runtime.guard
    real_claim = guard.claim

    async def claim_then_lose_the_reply(*args: Any, **kwargs: Any) -> Any:
        await real_claim(*args, **kwargs)
        raise RedisConnectionError("Connection reset by peer")

    monkeypatch.setattr(guard, "claim", claim_then_lose_the_reply)
    body = lead_body()
    refused = await m.ex.submit(body)
    assert refused.status_code == 503, refused.text
    monkeypatch.undo()
    for _ in range(100):
        if not await _keys(m) and not await _dedupe_marks(m):
            break
        await asyncio.sleep(0.01)
    assert await _keys(m) == [] and await _dedupe_marks(m) == set()

    retry, took_ms = await m.timed_submit(body)
    answer = retry.json()
    assert answer["status"] == "sold" and answer["payout"] == "14.00", answer
    assert retry.headers.get("Idempotent-Replayed") is None
    assert took_ms < 500, "ran at once, not after waiting out a pending claim"
    assert m.pings_seen() == {"acme": 1, "bolt": 1}
    assert await count_rows(m.pg_dsn, "leads") == 1


async def _keys(m: Market) -> list[bytes]:
    return [k async for k in m.redis.scan_iter(match=f"{m.redis_prefix}idem:*")]


async def _values(m: Market) -> list[bytes]:
    """What the idempotency keys hold, sorted (a key gone since the scan reads b"")."""
    values = await m.redis.mget(await _keys(m))
    return sorted(v if isinstance(v, bytes) else b"" for v in values)


async def _claims(m: Market, lead_ids: list[str]) -> list[bytes]:
    """The idempotency keys, checked to hold these saved leads' claims and nothing more:
    a saved lead's answer is in Postgres, so Redis keeps no copy of it."""
    assert await _values(m) == sorted(PENDING + i.encode() for i in lead_ids)
    return await _keys(m)


async def _redis_gone(*args: Any) -> None:
    raise RedisConnectionError("Connection reset by peer")


async def test_a_saved_leads_repeats_need_no_redis_write_after_the_answer(
    market: OpenMarket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer is saved with the lead: Redis failing once the claim is taken costs a sold
    lead nothing, and its repeats read the answer from Postgres at once, not "pending"."""
    m = await market(*_buyers(), settings={"deadline_ms": 1000})
    monkeypatch.setattr(m.ex.runtime.guard, "finish", _redis_gone)
    monkeypatch.setattr(m.ex.runtime.guard, "release", _redis_gone)
    body = lead_body()
    resp = await m.ex.submit(body)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["status"] == "sold" and answer["payout"] == "14.00"
    record = await m.record(answer["lead_id"])
    assert record.lead is not None and orjson.loads(record.lead["answer"]) == answer
    assert [(s["buyer_id"], s["price_cents"]) for s in record.sales] == [("acme", 2000)]
    await _claims(m, [answer["lead_id"]])

    repeat, took_ms = await m.timed_submit(body)
    assert repeat.json() == answer
    assert repeat.headers.get("Idempotent-Replayed") == "true"
    assert took_ms < 500, "read from Postgres by the claim's lead id, not waited out"
    assert m.pings_seen() == {"acme": 1, "bolt": 1}
    assert await count_rows(m.pg_dsn, "leads") == 1


async def test_same_external_id_from_another_publisher_is_another_lead(
    market: OpenMarket,
) -> None:
    m = await market(*_buyers())
    body = lead_body()
    mine = (await m.ex.submit(body)).json()
    other = _with_contact({**lead_body(), "external_id": body["external_id"]}, phone="+14155550188")
    theirs = (await m.ex.submit(other, PUB2_KEY)).json()
    assert mine["status"] == "sold" and theirs["status"] == "sold"
    assert mine["lead_id"] != theirs["lead_id"]
    assert (mine["payout"], theirs["payout"]) == ("14.00", "8.00")
    assert await count_rows(m.pg_dsn, "leads", "external_id = $1", body["external_id"]) == 2
    assert m.pings_seen() == {"acme": 2, "bolt": 2}


async def _duplicate_of(m: Market, first: dict[str, Any], second: dict[str, Any]) -> None:
    original = (await m.ex.submit(first)).json()
    assert original["status"] == "sold"
    seen = m.pings_seen()
    answer = (await m.ex.submit(second)).json()
    assert answer["status"] == "duplicate" and answer["payout"] == "0.00", answer
    assert answer["lead_id"] != original["lead_id"]
    assert original["lead_id"] in answer["reason"]
    assert m.pings_seen() == seen
    record = await m.record(answer["lead_id"])
    assert record.lead is not None and record.lead["status"] == "duplicate"
    assert record.pings == [] and record.posts == [] and record.sales == []


async def test_same_phone_in_another_format_is_a_duplicate(market: OpenMarket) -> None:
    m = await market(*_buyers())
    first = _with_contact(lead_body(), phone="+14155550142")
    second = _with_contact(lead_body(), phone="(415) 555-0142")
    await _duplicate_of(m, first, second)


async def test_same_email_in_another_case_is_a_duplicate(market: OpenMarket) -> None:
    m = await market(*_buyers())
    first = _with_contact(lead_body(), email="grace.hopper@example.com")
    second = _with_contact(lead_body(), email="  Grace.Hopper@EXAMPLE.com ")
    await _duplicate_of(m, first, second)


async def test_test_leads_do_not_collide_with_real_ones(market: OpenMarket) -> None:
    m = await market(*_buyers())
    contact = {"phone": "+14155550177", "email": "alan.turing@example.com"}
    test_first = (await m.ex.submit(_with_contact(lead_body(test=True), **contact))).json()
    real = (await m.ex.submit(_with_contact(lead_body(), **contact))).json()
    assert test_first["status"] == "sold" and test_first["payout"] == "0.00"
    assert real["status"] == "sold" and real["payout"] == "14.00"
    again_real = (await m.ex.submit(_with_contact(lead_body(), **contact))).json()
    again_test = (await m.ex.submit(_with_contact(lead_body(test=True), **contact))).json()
    assert again_real["status"] == "duplicate" and real["lead_id"] in again_real["reason"]
    assert again_test["status"] == "duplicate" and test_first["lead_id"] in again_test["reason"]
    assert m.pings_seen() == {"acme": 2, "bolt": 2}


SOLAR = {
    "solar": {
        "max_sells": 1,
        "floor": "2.00",
        "dedupe_days": 30,
        "fields": {"homeowner": {"type": "bool", "required": True, "ping": True}},
    }
}


async def test_duplicates_are_per_vertical_and_across_publishers(market: OpenMarket) -> None:
    """SPEC §2: the same phone or email *in this vertical* is a duplicate, whoever sends it;
    in another vertical it is a new consumer need."""

    def both(b: Buyer) -> dict[str, Any]:
        return buyer_entry(b, [campaign(b), {"id": f"{b.buyer_id}-solar", "vertical": "solar"}])

    m = await market(*_buyers(), entry=both, more_verticals=SOLAR)
    phone = {"phone": "+14155550163"}

    def solar() -> dict[str, Any]:
        return _with_contact(lead_body(vertical="solar", profile={"homeowner": True}), **phone)

    auto_first = (await m.ex.submit(_with_contact(lead_body(), **phone))).json()
    solar_first = (await m.ex.submit(solar())).json()
    assert (auto_first["status"], solar_first["status"]) == ("sold", "sold")

    auto_again = (await m.ex.submit(_with_contact(lead_body(), **phone), PUB2_KEY)).json()
    solar_again = (await m.ex.submit(solar(), PUB2_KEY)).json()
    assert auto_again["status"] == "duplicate" and auto_first["lead_id"] in auto_again["reason"]
    assert solar_again["status"] == "duplicate" and solar_first["lead_id"] in solar_again["reason"]
    assert m.pings_seen() == {"acme": 2, "bolt": 2}  # one auction per vertical, no more


async def test_the_dedupe_window_is_the_verticals_dedupe_days(market: OpenMarket) -> None:
    m = await market(*_buyers(), vertical={"dedupe_days": 1})
    first = (await m.ex.submit(lead_body())).json()
    assert first["status"] == "sold"
    keys = [k async for k in m.redis.scan_iter(match=f"{m.redis_prefix}dd:*")]
    assert len(keys) == 2  # the phone and the email
    for key in keys:
        ttl = await m.redis.ttl(key)
        assert 86_400 - 60 < ttl <= 86_400, (key, ttl)  # a day, not the default 30
