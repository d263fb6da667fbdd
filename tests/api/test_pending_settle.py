"""A post sent but never answered: the buyer may hold the lead, so an exclusive lead goes
nowhere else, the publisher hears ``pending``, and an operator settles it later."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from tests.api.conftest import Market, OpenMarket
from tests.kit.buyers import Buyer, PostMode
from tests.kit.exchange import ADMIN, PUB2_KEY, PUB_KEY, lead_body
from tests.kit.records import assert_ledger_balanced

TMAX_MS = 250
POST_TIMEOUT_MS = 500
SETTINGS = {"tmax_ms": TMAX_MS, "post_timeout_ms": POST_TIMEOUT_MS, "deadline_ms": 3000}


async def _pending_market(market: OpenMarket, post_mode: PostMode = "hang") -> Market:
    return await market(
        Buyer("acme", "secret-acme-123", price=20, post_mode=post_mode),
        Buyer("bolt", "secret-bolt-123", price=10),
        settings=SETTINGS,
    )


async def _pending_lead(m: Market) -> dict[str, Any]:
    resp, elapsed_ms = await m.timed_submit(lead_body())
    assert resp.status_code == 200, resp.text
    answer: dict[str, Any] = resp.json()
    assert answer["status"] == "pending" and answer["payout"] == "0.00", answer
    assert elapsed_ms < TMAX_MS + POST_TIMEOUT_MS + 400, elapsed_ms
    return answer


@pytest.mark.parametrize("post_mode", ["hang", "garbage2xx"])
async def test_unanswered_post_is_pending_and_goes_to_no_one_else(
    market: OpenMarket, post_mode: PostMode
) -> None:
    m = await _pending_market(market, post_mode)
    posts_before = m.posts_seen()
    answer = await _pending_lead(m)
    assert m.posts_seen() == {"acme": posts_before["acme"] + 1, "bolt": 0}
    story = await m.ex.story(answer["lead_id"])
    assert story["status"] == "pending"
    assert [(p["buyer_id"], p["state"], p["accepted"]) for p in story["posts"]] == [
        ("acme", "unknown", None)
    ]
    assert story["sales"] == []
    record = await m.record(answer["lead_id"])
    assert record.lead is not None and record.lead["status"] == "pending"
    assert record.sales == [] and record.ledger == []
    assert record.ping_by_buyer["bolt"]["reason"] != "sold"


async def test_settled_as_accepted_becomes_a_sale(market: OpenMarket) -> None:
    m = await _pending_market(market)
    answer = await _pending_lead(m)
    lead_id = answer["lead_id"]

    assert (await m.ex.settle(lead_id, "acme", True, token=None)).status_code == 401
    assert (await m.ex.settle(lead_id, "acme", True, token=PUB_KEY)).status_code == 401
    assert (await m.ex.settle(lead_id, "bolt", True)).status_code == 409  # never posted to
    assert (await m.ex.settle(lead_id, "ac\x00me", True)).status_code == 422  # not storable
    assert (await m.ex.settle(str(uuid.uuid4()), "acme", True)).status_code == 404
    assert (await m.ex.get_lead(lead_id, PUB_KEY)).json()["status"] == "pending"

    # Two operators at once: one settles, the other learns it is already settled.
    racing = await asyncio.gather(*(m.ex.settle(lead_id, "acme", True) for _ in range(2)))
    assert sorted(r.status_code for r in racing) == [200, 409], [r.text for r in racing]
    [settled] = [r for r in racing if r.status_code == 200]
    assert settled.json() == {"lead_id": lead_id, "status": "sold", "payout": "14.00"}

    record = await m.record(lead_id)
    assert record.lead is not None
    assert (record.lead["status"], record.lead["payout_cents"]) == ("sold", 1400)
    [post] = record.posts
    assert (post["state"], post["accepted"]) == ("accepted", True)
    assert post["settled_at"] is not None
    [sale] = record.sales
    assert (sale["buyer_id"], sale["price_cents"], sale["payout_cents"]) == ("acme", 2000, 1400)
    assert_ledger_balanced(record)

    own = await m.ex.get_lead(lead_id, PUB_KEY)
    assert own.status_code == 200
    assert own.json() == {"lead_id": lead_id, "status": "sold", "payout": "14.00"}
    assert (await m.ex.get_lead(lead_id, PUB2_KEY)).status_code == 404
    assert (await m.ex.get_lead(lead_id, "not-a-key")).status_code == 401
    assert (await m.ex.get_lead("not-a-uuid", PUB_KEY)).status_code == 404

    again = await m.ex.settle(lead_id, "acme", True)
    assert again.status_code == 409
    assert len((await m.record(lead_id)).ledger) == 3
    assert m.posts_seen()["bolt"] == 0


async def test_settled_as_rejected_is_unsold(market: OpenMarket) -> None:
    m = await _pending_market(market)
    answer = await _pending_lead(m)
    lead_id = answer["lead_id"]

    settled = await m.ex.settle(lead_id, "acme", False)
    assert settled.status_code == 200, settled.text
    assert settled.json() == {"lead_id": lead_id, "status": "unsold", "payout": "0.00"}
    record = await m.record(lead_id)
    assert record.lead is not None
    assert (record.lead["status"], record.lead["payout_cents"]) == ("unsold", 0)
    [post] = record.posts
    assert (post["state"], post["accepted"]) == ("rejected", False)
    assert record.sales == [] and record.ledger == []
    own = (await m.ex.get_lead(lead_id, PUB_KEY)).json()
    assert (own["status"], own["payout"]) == ("unsold", "0.00")

    assert (await m.ex.settle(lead_id, "acme", False)).status_code == 409
    assert (await m.ex.settle(lead_id, "acme", True)).status_code == 409
    assert (await m.record(lead_id)).sales == []


async def test_settle_body_is_validated(market: OpenMarket) -> None:
    m = await _pending_market(market)
    answer = await _pending_lead(m)
    bodies: list[Any] = [{"buyer_id": "acme"}, {"buyer_id": "acme", "accepted": "maybe"}, [], {}]
    for body in bodies:
        resp = await m.ex.client.post(
            f"/v1/leads/{answer['lead_id']}/settle",
            json=body,
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        assert resp.status_code == 422, (body, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")
    record = await m.record(answer["lead_id"])
    assert record.lead is not None and record.lead["status"] == "pending"


async def test_a_repeat_after_settlement_still_hears_the_first_answer(market: OpenMarket) -> None:
    """The publisher reads the final status with GET; a repeat of the lead gets what the
    first request got (SPEC §3), which the lead's record keeps apart from its status."""
    m = await _pending_market(market)
    body = lead_body()
    first = (await m.ex.submit(body)).json()
    assert first["status"] == "pending", first
    assert (await m.ex.settle(first["lead_id"], "acme", True)).status_code == 200
    assert (await m.ex.get_lead(first["lead_id"], PUB_KEY)).json()["status"] == "sold"

    repeat = await m.ex.submit(body)
    assert repeat.json() == first
    assert repeat.headers.get("Idempotent-Replayed") == "true"
    await m.redis.delete(*[k async for k in m.redis.scan_iter(match=f"{m.redis_prefix}idem:*")])
    assert (await m.ex.submit(body)).json() == first  # by external id, Redis gone too
    assert m.posts_seen() == {"acme": 1, "bolt": 0}
