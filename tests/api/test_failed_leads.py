"""A lead that fails part-way: retried from scratch if no buyer saw it, never auctioned
again once a post was attempted (a buyer may hold it), whatever failed."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError

import exchange.auction.posting
import exchange.auction.sell
import exchange.intake.submit
from exchange.auction.posting import post_lead
from exchange.intake.submit import UNRECORDED
from tests.api.conftest import Market, OpenMarket
from tests.kit.buyers import Buyer
from tests.kit.exchange import lead_body
from tests.kit.records import count_rows


def _fail_saves(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every save raises as if Postgres were gone; returns the lead ids it refused."""
    refused: list[str] = []

    async def gone(conn: Any, lead: Any, *args: Any, **kwargs: Any) -> None:
        refused.append(lead.lead_id)
        raise asyncpg.PostgresConnectionError("connection lost")

    monkeypatch.setattr(exchange.intake.submit, "save_lead", gone)
    return refused


def _unrecorded() -> float:
    labels = {"vertical": "auto_insurance"}
    return REGISTRY.get_sample_value("exchange_leads_unrecorded_total", labels) or 0.0


def _held(answer: dict[str, Any]) -> None:
    assert answer["status"] == "pending", answer
    assert answer["payout"] == "0.00" and answer["reason"] == UNRECORDED


async def test_a_posted_lead_whose_record_fails_is_pending_and_never_sold_again(
    market: OpenMarket, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = await market(Buyer("acme", "secret-acme-123", price=20))
    refused = _fail_saves(monkeypatch)
    body = lead_body()
    before = _unrecorded()

    first = await m.ex.submit(body)
    assert first.status_code == 200, first.text
    answer = first.json()
    _held(answer)
    assert refused == [answer["lead_id"]] * 2  # retried once, as on any lost connection
    assert m.posts_seen() == {"acme": 1}
    assert _unrecorded() == before + 1

    repeat = await m.ex.submit(body)
    assert repeat.status_code == 200 and repeat.json() == answer
    assert repeat.headers.get("Idempotent-Replayed") == "true"
    # Postgres back: another lead with its phone and email is a duplicate of the one sold.
    monkeypatch.undo()
    other = (await m.ex.submit({**body, "external_id": "another-id"})).json()
    assert other["status"] == "duplicate" and answer["lead_id"] in other["reason"]
    assert m.pings_seen() == {"acme": 1} and m.posts_seen() == {"acme": 1}
    assert await count_rows(m.pg_dsn, "leads") == 1  # the duplicate; the held lead is logged


async def test_a_lead_failing_after_its_post_keeps_its_claim(
    market: OpenMarket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis failing after the post (here: the moment the post returns) leaves no outcome to
    record; the publisher hears 503, and its retry no second auction."""
    m = await market(Buyer("acme", "secret-acme-123", price=20))

    async def post_then_redis_fails(*args: Any, **kwargs: Any) -> Any:
        await post_lead(*args, **kwargs)
        raise RedisConnectionError("Redis went away")

    monkeypatch.setattr(exchange.auction.sell, "post_lead", post_then_redis_fails)
    body = lead_body()
    before = _unrecorded()
    first = await m.ex.submit(body)
    assert first.status_code == 503, first.text
    assert _unrecorded() == before + 1
    monkeypatch.undo()

    retry = await m.ex.submit(body)
    assert retry.status_code == 200, retry.text
    _held(retry.json())
    assert m.pings_seen() == {"acme": 1} and m.posts_seen() == {"acme": 1}


async def _unsold_then_retried(m: Market, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    refused = _fail_saves(monkeypatch)
    body = lead_body()
    first = await m.ex.submit(body)
    assert first.status_code == 503, first.text
    assert len(refused) == 2
    monkeypatch.undo()
    retry = await m.ex.submit(body)
    assert retry.status_code == 200, retry.text
    answer: dict[str, Any] = retry.json()
    assert answer["lead_id"] != refused[0]
    assert retry.headers.get("Idempotent-Replayed") is None
    return answer


async def test_a_lead_failing_before_any_post_runs_again_and_is_not_its_own_duplicate(
    market: OpenMarket, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = await market(Buyer("nope", "secret-nope-123", ping_mode="no_bid"))
    answer = await _unsold_then_retried(m, monkeypatch)
    assert answer["status"] == "unsold", answer
    assert m.pings_seen() == {"nope": 2}  # the retry ran its own auction
    record = await m.record(answer["lead_id"])
    assert record.lead is not None and record.lead["status"] == "unsold"


async def test_a_post_that_could_not_be_built_was_not_sent_and_holds_nothing(
    market: OpenMarket, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unencodable(**kwargs: Any) -> bytes:
        raise TypeError("Recursion limit reached")

    monkeypatch.setattr(exchange.auction.posting, "post_body", unencodable)
    m = await market(Buyer("acme", "secret-acme-123", price=20))
    answer = (await m.ex.submit(lead_body())).json()
    assert answer["status"] == "unsold" and answer["reason"] == "every post was rejected or failed"
    assert m.posts_seen() == {"acme": 0}
    record = await m.record(answer["lead_id"])
    assert [(p["state"], p["reason"]) for p in record.posts] == [
        ("failed", "lead not encodable: Recursion limit reached")
    ]
