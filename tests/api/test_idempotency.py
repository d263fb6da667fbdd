"""Seen before: repeats of one lead run one auction; other leads with its phone or email are
duplicates. Checked against what buyers saw and what Postgres holds, not just the answers."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError

from exchange.intake.guard import DONE
from tests.api.conftest import Market, OpenMarket
from tests.kit.buyers import Buyer
from tests.kit.exchange import PUB2_KEY, lead_body
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

    idem_keys = await _answers_kept(m, 2)
    await m.redis.delete(*idem_keys)

    for _ in range(2):  # from Postgres, then from the Redis key it wrote back
        assert (await m.ex.submit(by_external_id)).json() == first_ext
        assert (await m.ex.submit(by_key, **key)).json() == first_key
    assert m.pings_seen() == seen
    assert await count_rows(m.pg_dsn, "leads") == 2


async def _answers_kept(m: Market, count: int) -> list[bytes]:
    """The idempotency keys once ``count`` of them hold answers (stored just after answering)."""
    for _ in range(200):
        keys = [k async for k in m.redis.scan_iter(match=f"{m.redis_prefix}idem:*")]
        values = await m.redis.mget(keys) if keys else []
        if len(keys) == count and all(isinstance(v, bytes) and v.startswith(DONE) for v in values):
            return keys
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {count} answers kept, found {keys}")


async def _redis_gone(*args: Any) -> None:
    raise RedisConnectionError("Connection reset by peer")


def _finish_failures() -> float:
    return REGISTRY.get_sample_value("exchange_redis_errors_total", {"op": "finish"}) or 0.0


async def test_a_sold_lead_is_answered_when_its_answer_cannot_be_kept_for_repeats(
    market: OpenMarket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis failing after the sale must not turn a sold, saved lead into a 503, and its
    repeats then get the answer from Postgres (the claim is released), not "pending"."""
    m = await market(*_buyers())
    monkeypatch.setattr(m.ex.runtime.guard, "finish", _redis_gone)
    failed_before = _finish_failures()
    body = lead_body()
    resp = await m.ex.submit(body)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["status"] == "sold" and answer["payout"] == "14.00"
    record = await m.record(answer["lead_id"])
    assert record.lead is not None and record.lead["status"] == "sold"
    assert [(s["buyer_id"], s["price_cents"]) for s in record.sales] == [("acme", 2000)]
    for _ in range(100):
        if _finish_failures() > failed_before:
            break
        await asyncio.sleep(0.01)
    assert _finish_failures() == failed_before + 1
    assert [k async for k in m.redis.scan_iter(match=f"{m.redis_prefix}idem:*")] == []

    repeat, took_ms = await m.timed_submit(body)
    assert repeat.json() == answer
    assert repeat.headers.get("Idempotent-Replayed") == "true"
    assert took_ms < 1000, "answered from Postgres, not after waiting out the deadline"
    assert m.pings_seen() == {"acme": 1, "bolt": 1}


async def test_repeat_of_a_lead_whose_claim_is_stuck_gets_the_answer_from_postgres(
    market: OpenMarket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis kept neither the answer nor the release: after waiting, Postgres answers."""
    m = await market(*_buyers(), settings={"deadline_ms": 1000})
    monkeypatch.setattr(m.ex.runtime.guard, "finish", _redis_gone)
    monkeypatch.setattr(m.ex.runtime.guard, "release", _redis_gone)
    body = lead_body()
    answer = (await m.ex.submit(body)).json()
    assert answer["status"] == "sold"
    await asyncio.sleep(0.2)  # the follow-up has failed and left the claim pending

    repeat, took_ms = await m.timed_submit(body)
    assert repeat.json() == answer
    assert 800 <= took_ms < 1500, took_ms  # waited for the first request, then asked Postgres
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
