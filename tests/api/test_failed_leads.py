"""A lead that fails part-way: retried from scratch if no buyer saw it, never auctioned
again once a post was attempted (a buyer may hold it), whatever failed."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError

import exchange.auction.posting
import exchange.auction.sell
import exchange.intake.submit
from exchange.auction.posting import post_lead
from exchange.intake.held import UNRECORDED
from exchange.store.leads import save_lead
from tests.api.conftest import Market, OpenMarket
from tests.kit.buyers import Buyer, PingMode
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


async def test_a_lead_failing_after_its_post_is_held(
    market: OpenMarket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis failing the moment the post returns leaves no outcome to record: held all
    the same, and its retry runs no second auction."""
    m = await market(Buyer("acme", "secret-acme-123", price=20))

    async def post_then_redis_fails(*args: Any, **kwargs: Any) -> Any:
        await post_lead(*args, **kwargs)
        raise RedisConnectionError("Redis went away")

    monkeypatch.setattr(exchange.auction.sell, "post_lead", post_then_redis_fails)
    body = lead_body()
    before = _unrecorded()
    first = await m.ex.submit(body)
    assert first.status_code == 200, first.text
    _held(first.json())
    assert _unrecorded() == before + 1
    monkeypatch.undo()

    retry = await m.ex.submit(body)
    assert retry.status_code == 200 and retry.json() == first.json()
    assert m.pings_seen() == {"acme": 1} and m.posts_seen() == {"acme": 1}


async def test_a_held_lead_logs_the_sales_an_operator_must_settle(
    market: OpenMarket, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Sold to one buyer, then Redis fails before the second sale's cap check: the sale
    made is in the ERROR line, with its price and the buyer's own lead id."""
    m = await market(
        Buyer("acme", "secret-acme-123", price=20),
        Buyer("bolt", "secret-bolt-123", price=12),
        vertical={"max_sells": 2},
    )
    caps = m.ex.runtime.auction.caps
    real_reserve = caps.reserve
    calls = 0

    async def second_reserve_fails(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RedisConnectionError("Redis went away")
        return await real_reserve(*args, **kwargs)

    monkeypatch.setattr(caps, "reserve", second_reserve_fails)
    with caplog.at_level("ERROR", logger="exchange.intake.held"):
        answer = (await m.ex.submit(lead_body())).json()
    _held(answer)
    assert m.posts_seen() == {"acme": 1, "bolt": 0}
    [line] = [r for r in caplog.records if r.name == "exchange.intake.held"]
    posts: list[dict[str, Any]] = line.__dict__["posts"]  # the log call's extra
    assert [(p["buyer_id"], p["price_cents"], p["state"], p["buyer_lead_id"]) for p in posts] == [
        ("acme", 2000, "accepted", "acme-L1")
    ]


async def test_a_held_lead_whose_answer_cannot_be_kept_is_still_not_sold_again(
    market: OpenMarket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither Postgres nor Redis keeps the held answer: the claim stays pending, so a
    repeat waits and hears "pending" instead of winning a fresh auction."""
    m = await market(
        Buyer("acme", "secret-acme-123", price=20),
        vertical={"dedupe_days": 0},  # only the claim stands between a repeat and a sale
        settings={"deadline_ms": 1000},
    )
    _fail_saves(monkeypatch)
    monkeypatch.setattr(m.ex.runtime.guard, "finish", _redis_gone)
    body = lead_body()
    _held((await m.ex.submit(body)).json())
    await asyncio.sleep(0.2)  # the follow-up has failed twice
    monkeypatch.undo()

    repeat = (await m.ex.submit(body)).json()
    assert repeat["status"] == "pending", repeat
    assert m.posts_seen() == {"acme": 1}
    assert await count_rows(m.pg_dsn, "leads") == 0


_POSTGRES_DOWN = [
    asyncpg.PostgresConnectionError("connection lost"),
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
]


@pytest.mark.parametrize("error", _POSTGRES_DOWN, ids=lambda e: type(e).__name__)
async def test_a_lead_whose_save_fails_on_postgres_going_down_is_a_503(
    market: OpenMarket, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """No buyer saw it: whatever Postgres going away raises, the publisher hears 503 with
    Retry-After (never 500), and the retry runs."""
    m = await market(Buyer("nope", "secret-nope-123", ping_mode="no_bid"))

    async def down(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(exchange.intake.submit, "save_lead", down)
    body = lead_body()
    first = await m.ex.submit(body)
    assert first.status_code == 503, first.text
    assert first.headers.get("Retry-After") == "1"
    monkeypatch.undo()
    retry = (await m.ex.submit(body)).json()
    assert retry["status"] == "unsold", retry
    assert m.pings_seen() == {"nope": 2}


@pytest.mark.parametrize("error", _POSTGRES_DOWN, ids=lambda e: type(e).__name__)
async def test_a_repeat_hears_a_held_answer_while_postgres_is_down(
    market: OpenMarket, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """A repeat that arrives while the first runs asks Postgres for the saved answer; with
    Postgres down it keeps waiting (not a 503) and hears the held answer from Redis."""
    m = await market(Buyer("acme", "secret-acme-123", price=20, post_delay_s=0.3))
    _fail_saves(monkeypatch)
    reads: list[str] = []

    async def postgres_down(conn: Any, lead_id: str) -> None:
        reads.append(lead_id)
        raise error

    monkeypatch.setattr(exchange.intake.submit, "answer_of", postgres_down)
    body = lead_body()
    first = asyncio.ensure_future(m.ex.submit(body))
    await asyncio.sleep(0.1)  # the first is posting to its buyer now
    repeat, took_ms = await m.timed_submit(body)
    answer = (await first).json()
    _held(answer)
    assert repeat.status_code == 200, repeat.text
    assert repeat.json() == answer and repeat.headers.get("Idempotent-Replayed") == "true"
    assert reads and set(reads) == {answer["lead_id"]}
    assert took_ms < 1500, "heard from Redis once held, not after the whole deadline"
    assert m.posts_seen() == {"acme": 1}


@pytest.mark.parametrize(
    ("error", "calls"),
    [
        (asyncpg.PostgresConnectionError("connection lost after commit"), 2),  # retried
        (RuntimeError("cancelled after the commit"), 1),  # not retried
    ],
)
@pytest.mark.parametrize("ping_mode", ["bid", "no_bid"])
async def test_a_save_that_committed_before_failing_counts_as_saved(
    market: OpenMarket,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    calls: int,
    ping_mode: PingMode,
) -> None:
    """The commit landed, then the call failed: the lead is what Postgres says (sold, or
    unsold), not held and not a 503, and not counted as unrecorded."""
    m = await market(Buyer("acme", "secret-acme-123", price=20, ping_mode=ping_mode))
    made = 0

    async def commit_then_fail(*args: Any, **kwargs: Any) -> None:
        nonlocal made
        made += 1
        await save_lead(*args, **kwargs)
        if made == 1:
            raise error

    monkeypatch.setattr(exchange.intake.submit, "save_lead", commit_then_fail)
    before = _unrecorded()
    body = lead_body()
    resp = await m.ex.submit(body)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    status = "sold" if ping_mode == "bid" else "unsold"
    assert answer["status"] == status, answer
    assert made == calls and _unrecorded() == before
    record = await m.record(answer["lead_id"])
    assert record.lead is not None and record.lead["status"] == status
    repeat = (await m.ex.submit(body)).json()
    assert repeat == answer and m.pings_seen() == {"acme": 1}


async def test_a_failed_lead_frees_its_phone_even_if_its_claim_cannot_be_freed(
    market: OpenMarket, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = await market(Buyer("nope", "secret-nope-123", ping_mode="no_bid"))
    _fail_saves(monkeypatch)
    monkeypatch.setattr(m.ex.runtime.guard, "release", _redis_gone)
    assert (await m.ex.submit(lead_body())).status_code == 503
    assert [k async for k in m.redis.scan_iter(match=f"{m.redis_prefix}dd:*")] == []


async def _redis_gone(*args: Any, **kwargs: Any) -> None:
    raise RedisConnectionError("Redis went away")


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
