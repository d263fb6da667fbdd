"""The core path end to end: real buyers on loopback, a real exchange, real Postgres and Redis.

Each test checks what a publisher, a buyer and an operator rely on: who won, what each
buyer received, how long the answer took, and what Postgres holds afterwards.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import socket
import time
from typing import Any

import asyncpg
import pytest

from tests.api.conftest import Market, OpenMarket
from tests.kit.buyers import Buyer, PingMode, PostMode
from tests.kit.exchange import PUB2_KEY, PUB_KEY, buyer_entry, campaign, lead_body
from tests.kit.records import LeadRecord, assert_ledger_balanced

PING_KEYS = {"ping_id", "campaign_id", "vertical", "exclusive", "tmax_ms", "test", "lead"}
PING_PROFILE = {"age", "credit", "vehicle_year", "insured"}


def _buyer(name: str, price: Any = "10.00", **kw: Any) -> Buyer:
    return Buyer(name, f"secret-{name}-123", price=price, **kw)


async def _sold_lead(m: Market, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    resp = await (m.ex.submit(body) if key is None else m.ex.submit(body, key))
    assert resp.status_code == 200, resp.text
    answer: dict[str, Any] = resp.json()
    return answer


def _assert_unsold_record(record: LeadRecord) -> None:
    assert record.lead is not None and record.lead["status"] == "unsold"
    assert record.lead["payout_cents"] == 0
    assert record.posts == [] and record.sales == [] and record.ledger == []


async def test_highest_bid_wins_and_gets_the_full_post(market: OpenMarket) -> None:
    m = await market(_buyer("acme", "12.50"), _buyer("bolt", 20))
    body = lead_body()
    answer = await _sold_lead(m, body)
    assert answer == {"lead_id": answer["lead_id"], "status": "sold", "payout": "14.00"}

    acme, bolt = m.buyers["acme"], m.buyers["bolt"]
    assert acme.posts == []
    [ping] = bolt.pings
    [post] = bolt.posts
    assert post["price"] == "20.00"
    assert post["bid_id"] == "bolt-b1" and post["ping_id"] == ping["ping_id"]
    assert post["lead_id"] == answer["lead_id"] and post["campaign_id"] == "bolt-c"
    assert post["test"] is False
    assert post["lead"] == {
        "contact": body["contact"],
        "profile": body["profile"],
        "consent": body["consent"],
        "source": body["source"],
    }
    assert acme.bad_signatures == 0 and bolt.bad_signatures == 0

    story = await m.ex.story(answer["lead_id"])
    assert [(s["buyer_id"], s["price"], s["payout"]) for s in story["sales"]] == [
        ("bolt", "20.00", "14.00")
    ]
    assert {p["buyer_id"]: p["outcome"] for p in story["pings"]} == {"acme": "bid", "bolt": "bid"}

    record = await m.record(answer["lead_id"])
    assert record.lead is not None
    assert (record.lead["status"], record.lead["payout_cents"]) == ("sold", 1400)
    pings = record.ping_by_buyer
    assert (pings["bolt"]["outcome"], pings["bolt"]["reason"]) == ("bid", "sold")
    assert (pings["acme"]["outcome"], pings["acme"]["reason"]) == ("bid", "outbid")
    assert (pings["acme"]["price_cents"], pings["bolt"]["price_cents"]) == (1250, 2000)
    assert all(p["latency_ms"] is not None and p["latency_ms"] >= 0 for p in record.pings)
    [stored_post] = record.posts
    assert (stored_post["buyer_id"], stored_post["state"], stored_post["accepted"]) == (
        "bolt",
        "accepted",
        True,
    )
    assert (stored_post["price_cents"], stored_post["buyer_lead_id"]) == (2000, "bolt-L1")
    [sale] = record.sales
    assert (sale["buyer_id"], sale["price_cents"], sale["payout_cents"]) == ("bolt", 2000, 1400)
    assert sale["exclusive"] is True and sale["test"] is False
    assert_ledger_balanced(record)


async def test_pings_carry_no_personal_values(market: OpenMarket) -> None:
    m = await market(_buyer("acme"), _buyer("bolt", 11))
    body = lead_body(
        contact={
            "first_name": "Zebulon",
            "last_name": "Quixotic",
            "email": "Zebulon.Quixotic@Example.org",
            "phone": "(415) 555-0123",
            "address": "742 Evergreen Terrace",
            "address2": "Apt 9B",
            "city": "Springfield",
            "state": "ca",
            "zip": "94105-1234",
        },
        profile={"age": 34, "credit": "good", "insured": False, "notes": "call after 5pm"},
    )
    await _sold_lead(m, body)
    secrets = [
        "zebulon",
        "quixotic",
        "example.org",
        "4155550123",
        "415-555-0123",
        "415) 555",
        "555-0123",
        "5550123",
        "evergreen",
        "apt 9b",
        "springfield",
        "call after 5pm",
    ]
    for buyer in m.buyers.values():
        [raw] = buyer.raw_pings
        text = raw.decode().lower()
        leaked = [s for s in secrets if s in text]
        assert leaked == [], f"{buyer.buyer_id} saw {leaked} in {raw!r}"
        [ping] = buyer.pings
        assert set(ping) == PING_KEYS
        assert ping["lead"] == {
            "state": "CA",
            "zip": "94105",
            "profile": {"age": 34, "credit": "good", "insured": False},
        }
        assert set(ping["lead"]["profile"]) <= PING_PROFILE
        assert ping["vertical"] == "auto_insurance" and ping["exclusive"] is True
        assert ping["test"] is False and 0 < ping["tmax_ms"] <= 300
    [post] = m.buyers["bolt"].posts
    assert post["lead"]["contact"]["phone"] == "+14155550123"
    assert post["lead"]["contact"]["email"] == "zebulon.quixotic@example.org"
    assert post["lead"]["profile"]["notes"] == "call after 5pm"


async def test_the_publishers_key_is_stored_nowhere(market: OpenMarket) -> None:
    """SPEC §2: only the key's SHA-256 is configured; the key never lands in a store."""
    m = await market(_buyer("acme", 20))
    answer = await _sold_lead(m, lead_body())
    assert answer["status"] == "sold"
    conn = await asyncpg.connect(m.pg_dsn)
    try:
        for table in ("leads", "pings", "posts", "sales", "ledger"):
            rows = await conn.fetch(f"SELECT row_to_json(t)::text AS doc FROM {table} t")
            assert rows, table
            assert not [r for r in rows if PUB_KEY in r["doc"]], table
    finally:
        await conn.close()
    async for key in m.redis.scan_iter(match=f"{m.redis_prefix}*"):
        assert PUB_KEY.encode() not in key
        if await m.redis.type(key) == b"string":
            assert PUB_KEY.encode() not in (await m.redis.get(key) or b"")


async def test_every_request_is_signed_as_spec_section_4_says(market: OpenMarket) -> None:
    """Checked with hashlib and the header names as written in the SPEC, not with the
    exchange's own signing code: a renamed header or a changed message fails here."""
    m = await market(_buyer("acme", 20), _buyer("bolt", 15))
    await _sold_lead(m, lead_body())
    seen = []
    for buyer in m.buyers.values():
        for path, headers, raw in buyer.received:
            ts = headers["X-Exchange-Timestamp"]
            assert ts.isdigit() and abs(int(ts) - time.time()) < 60, ts
            mac = hmac.new(buyer.secret.encode(), ts.encode() + b"." + raw, hashlib.sha256)
            assert headers["X-Exchange-Signature"] == f"sha256={mac.hexdigest()}"
            seen.append((buyer.buyer_id, path))
    assert sorted(seen) == [("acme", "/ping"), ("acme", "/post"), ("bolt", "/ping")]


@pytest.mark.parametrize("mode", ["hang", "trickle"])
async def test_slow_buyer_does_not_delay_the_answer(market: OpenMarket, mode: PingMode) -> None:
    tmax = 300
    m = await market(
        _buyer("fast", 10),
        _buyer("slow", 50, ping_mode=mode),
        entry=lambda b: buyer_entry(b, timeout_ms=2000 if b.buyer_id == "slow" else 250),
        settings={"tmax_ms": tmax, "post_timeout_ms": 1000},
    )
    resp, elapsed_ms = await m.timed_submit(lead_body())
    answer = resp.json()
    assert answer["status"] == "sold" and answer["payout"] == "7.00"
    story = await m.ex.story(answer["lead_id"])
    [post] = story["posts"]
    assert post["buyer_id"] == "fast"
    assert elapsed_ms < tmax + post["latency_ms"] + 250, (elapsed_ms, post)
    pings = {p["buyer_id"]: p for p in story["pings"]}
    assert pings["slow"]["outcome"] == "timeout"
    assert pings["slow"]["latency_ms"] <= tmax + 100
    assert pings["fast"]["outcome"] == "bid"
    assert m.buyers["slow"].posts == []
    stored = (await m.record(answer["lead_id"])).ping_by_buyer["slow"]
    assert (stored["outcome"], stored["reason"], stored["price_cents"]) == (
        "timeout",
        "timeout",
        None,
    )
    assert stored["latency_ms"] is not None and stored["latency_ms"] <= tmax + 100


async def test_unreadable_ping_answers_are_errors_and_never_win(market: OpenMarket) -> None:
    m = await market(
        _buyer("good", 10),
        _buyer("junk", 90, ping_mode="garbage"),
        _buyer("boom", 99, ping_mode="error500"),
        _buyer("huge", 95, ping_mode="oversize"),
        _buyer("vast", "1e999999"),  # a price past Decimal's range
    )
    answer = await _sold_lead(m, lead_body())
    assert answer["status"] == "sold" and answer["payout"] == "7.00"
    assert m.posts_seen() == {"good": 1, "junk": 0, "boom": 0, "huge": 0, "vast": 0}
    story = await m.ex.story(answer["lead_id"])
    assert {p["buyer_id"]: p["outcome"] for p in story["pings"]} == {
        "good": "bid",
        "junk": "error",
        "boom": "error",
        "huge": "error",
        "vast": "error",
    }
    assert [s["buyer_id"] for s in story["sales"]] == ["good"]
    record = await m.record(answer["lead_id"])
    by_buyer = record.ping_by_buyer
    assert all(by_buyer[b]["price_cents"] is None for b in ("junk", "boom", "huge", "vast"))
    assert "500" in (by_buyer["boom"]["detail"] or "")
    assert "bytes" in (by_buyer["huge"]["detail"] or ""), by_buyer["huge"]
    assert "implausibly large" in (by_buyer["vast"]["detail"] or ""), by_buyer["vast"]
    assert_ledger_balanced(record)


async def test_nul_characters_in_a_buyers_answers_are_dropped_not_fatal(
    market: OpenMarket,
) -> None:
    # Postgres text cannot hold NUL: stored verbatim, one buyer's ids would sink the record.
    m = await market(_buyer("liar", 30, ping_mode="nul_text", post_mode="nul_text"), _buyer("good"))
    answer = await _sold_lead(m, lead_body())
    assert answer["status"] == "sold" and answer["payout"] == "21.00"
    assert m.posts_seen() == {"liar": 1, "good": 0}
    record = await m.record(answer["lead_id"])
    assert record.lead is not None and record.lead["status"] == "sold"
    assert record.ping_by_buyer["liar"]["bid_id"] == "hasnul"
    assert [(p["buyer_id"], p["buyer_lead_id"]) for p in record.posts] == [("liar", "hasnul")]
    assert [s["buyer_id"] for s in record.sales] == ["liar"]
    assert_ledger_balanced(record)


@pytest.mark.parametrize(
    ("post_mode", "state", "reason"),
    [("reject", "rejected", "post_rejected"), ("error500", "failed", "post_failed")],
)
async def test_refused_post_passes_the_lead_to_the_next_buyer(
    market: OpenMarket, post_mode: PostMode, state: str, reason: str
) -> None:
    m = await market(_buyer("first", 20, post_mode=post_mode), _buyer("second", 10))
    answer = await _sold_lead(m, lead_body())
    assert answer["status"] == "sold" and answer["payout"] == "7.00"
    assert m.posts_seen() == {"first": 1, "second": 1}
    story = await m.ex.story(answer["lead_id"])
    assert [(p["buyer_id"], p["state"]) for p in story["posts"]] == [
        ("first", state),
        ("second", "accepted"),
    ]
    assert story["posts"][0]["accepted"] is False
    assert [(s["buyer_id"], s["price"]) for s in story["sales"]] == [("second", "10.00")]
    record = await m.record(answer["lead_id"])
    assert record.ping_by_buyer["first"]["reason"] == reason
    assert record.ping_by_buyer["second"]["reason"] == "sold"
    assert_ledger_balanced(record)


async def test_unreachable_post_url_passes_the_lead_on(market: OpenMarket) -> None:
    """A post that never left (connection refused) cannot be held by the buyer."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{closed.getsockname()[1]}/post"

        def entry(b: Buyer) -> dict[str, Any]:
            return (
                {**buyer_entry(b), "post_url": dead_url} if b.buyer_id == "gone" else buyer_entry(b)
            )

        m = await market(_buyer("gone", 30), _buyer("next", 10), entry=entry)
        answer = await _sold_lead(m, lead_body())
    assert answer["status"] == "sold" and answer["payout"] == "7.00"
    story = await m.ex.story(answer["lead_id"])
    assert [(p["buyer_id"], p["state"]) for p in story["posts"]] == [
        ("gone", "failed"),
        ("next", "accepted"),
    ]
    record = await m.record(answer["lead_id"])
    assert record.ping_by_buyer["gone"]["reason"] == "post_failed"
    assert [s["buyer_id"] for s in record.sales] == ["next"]
    assert_ledger_balanced(record)


async def test_no_bids_is_unsold_with_one_ping_row_per_campaign(market: OpenMarket) -> None:
    def entry(b: Buyer) -> dict[str, Any]:
        if b.buyer_id != "acme":
            return buyer_entry(b)
        nevada = {"id": "acme-nv", "vertical": "auto_insurance", "filters": {"states": ["NV"]}}
        return buyer_entry(b, [campaign(b), nevada])

    m = await market(
        _buyer("acme", ping_mode="no_bid"), _buyer("bolt", ping_mode="no_bid"), entry=entry
    )
    answer = await _sold_lead(m, lead_body())
    assert answer["status"] == "unsold" and answer["payout"] == "0.00"
    assert m.pings_seen() == {"acme": 1, "bolt": 1}
    record = await m.record(answer["lead_id"])
    _assert_unsold_record(record)
    rows = {p["campaign_id"]: p for p in record.pings}
    assert {c: (p["outcome"], p["reason"]) for c, p in rows.items()} == {
        "acme-c": ("no_bid", "no_bid"),
        "acme-nv": ("filtered", "filtered"),
        "bolt-c": ("no_bid", "no_bid"),
    }
    assert rows["acme-nv"]["latency_ms"] is None
    assert rows["acme-c"]["latency_ms"] is not None and rows["bolt-c"]["latency_ms"] is not None


async def test_bids_below_the_floor_are_unsold(market: OpenMarket) -> None:
    def entry(b: Buyer) -> dict[str, Any]:
        if b.buyer_id == "cato":  # its own floor is above its bid
            return buyer_entry(b, [campaign(b, price="15.00")])
        return buyer_entry(b)

    m = await market(_buyer("acme", "1.99"), _buyer("bolt", 1.5), _buyer("cato", 12), entry=entry)
    answer = await _sold_lead(m, lead_body())
    assert answer["status"] == "unsold" and answer["payout"] == "0.00"
    assert m.posts_seen() == {"acme": 0, "bolt": 0, "cato": 0}
    record = await m.record(answer["lead_id"])
    _assert_unsold_record(record)
    assert {p["buyer_id"]: (p["outcome"], p["reason"]) for p in record.pings} == {
        "acme": ("bid", "below_floor"),
        "bolt": ("bid", "below_floor"),
        "cato": ("bid", "below_floor"),
    }
    story = await m.ex.story(answer["lead_id"])
    assert {p["reason"] for p in story["pings"]} == {"below_floor"}


async def test_no_tcpa_consent_is_rejected_stored_and_never_pinged(market: OpenMarket) -> None:
    m = await market(_buyer("acme", 20))
    for consent in ({"tcpa": False, "text": "no"}, {"tcpa": "yes"}, None):
        body = lead_body(consent=consent) if consent is not None else lead_body()
        if consent is None:
            del body["consent"]
        answer = await _sold_lead(m, body)
        assert answer["status"] == "rejected" and answer["payout"] == "0.00", answer
        assert "tcpa" in answer["reason"]
        record = await m.record(answer["lead_id"])
        assert record.lead is not None and record.lead["status"] == "rejected"
        assert record.pings == [] and record.sales == [] and record.ledger == []
    assert m.pings_seen() == {"acme": 0}


async def test_fixed_payout_publisher_earns_its_amount(market: OpenMarket) -> None:
    m = await market(_buyer("acme", 20))
    answer = await _sold_lead(m, lead_body(), PUB2_KEY)
    assert answer["status"] == "sold" and answer["payout"] == "8.00"
    record = await m.record(answer["lead_id"])
    assert record.lead is not None and record.lead["publisher_id"] == "pub-2"
    [sale] = record.sales
    assert (sale["price_cents"], sale["payout_cents"]) == (2000, 800)
    assert_ledger_balanced(record)
    assert {r["account"]: r["amount_cents"] for r in record.ledger} == {
        "buyer:acme": -2000,
        "publisher:pub-2": 800,
        "exchange": 1200,
    }


async def test_a_fixed_payout_is_paid_once_however_many_buyers_buy_the_lead(
    market: OpenMarket,
) -> None:
    m = await market(_buyer("acme", 20), _buyer("bolt", 15), vertical={"max_sells": 2})
    answer = await _sold_lead(m, lead_body(), PUB2_KEY)
    assert answer["status"] == "sold" and answer["payout"] == "8.00"
    assert m.posts_seen() == {"acme": 1, "bolt": 1}
    record = await m.record(answer["lead_id"])
    assert record.lead is not None and record.lead["payout_cents"] == 800
    assert sorted((s["buyer_id"], s["price_cents"]) for s in record.sales) == [
        ("acme", 2000),
        ("bolt", 1500),
    ]
    assert sorted(s["payout_cents"] for s in record.sales) == [0, 800]  # once, not per sale
    assert_ledger_balanced(record)
    by_account: dict[str, int] = {}
    for row in record.ledger:
        by_account[row["account"]] = by_account.get(row["account"], 0) + row["amount_cents"]
    assert by_account == {
        "buyer:acme": -2000,
        "buyer:bolt": -1500,
        "publisher:pub-2": 800,
        "exchange": 2700,
    }


async def test_test_lead_runs_through_and_moves_no_money(market: OpenMarket) -> None:
    m = await market(_buyer("acme", 20), _buyer("bolt", 5))
    answer = await _sold_lead(m, lead_body(test=True))
    assert answer["status"] == "sold" and answer["payout"] == "0.00"
    assert [p["test"] for b in m.buyers.values() for p in b.pings] == [True, True]
    [post] = m.buyers["acme"].posts
    assert post["test"] is True and post["price"] == "20.00"
    record = await m.record(answer["lead_id"])
    assert record.lead is not None
    assert (record.lead["test"], record.lead["status"], record.lead["payout_cents"]) == (
        True,
        "sold",
        0,
    )
    [sale] = record.sales
    assert (sale["test"], sale["price_cents"], sale["payout_cents"]) == (True, 2000, 0)
    assert record.ledger == []


async def test_health_readiness_and_metrics(market: OpenMarket) -> None:
    m = await market(_buyer("acme", 20))
    await _sold_lead(m, lead_body())
    client = m.ex.client
    health = await client.get("/healthz")
    assert health.status_code == 200
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "checks": {"postgres": "ok", "redis": "ok"}}
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    sold = re.search(
        r'^exchange_leads_total\{[^}]*status="sold"[^}]*\} (\d+(?:\.\d+)?)$',
        metrics.text,
        re.MULTILINE,
    )
    assert sold is not None and float(sold[1]) >= 1, metrics.text[:2000]
