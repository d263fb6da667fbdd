"""Repository for leads and everything that happened to them. Plain SQL."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from exchange.auction.outcome import Outcome
from exchange.intake.lead import Lead
from exchange.store.db import Conn

# One statement, one round trip, one implicit transaction: the lead, one row per campaign
# considered, its posts, its sales and their ledger rows land together or not at all (so
# ping and post rows need no foreign key: migration 0005). The sales' foreign key is
# checked at the end of the statement, when the lead row exists. Rows go
# as one jsonb array per table: ~40 µs less client CPU a lead than parallel arrays, whose
# encoder runs ABC isinstance checks on every element (loadtests/README).
_SAVE = """
WITH ping_rows AS (
    INSERT INTO pings (ping_id, lead_id, buyer_id, campaign_id, outcome, reason, detail,
                       price_cents, bid_id, latency_ms)
    SELECT p.ping_id, $1, p.buyer_id, p.campaign_id, p.outcome, p.reason, p.detail,
           p.price_cents, p.bid_id, p.latency_ms
    FROM jsonb_to_recordset($21::jsonb)
         AS p(ping_id uuid, buyer_id text, campaign_id text, outcome text, reason text,
              detail text, price_cents bigint, bid_id text, latency_ms int)
), post_rows AS (
    INSERT INTO posts (lead_id, buyer_id, campaign_id, price_cents, state, accepted, reason,
                       buyer_lead_id, latency_ms, reservation)
    SELECT $1, q.buyer_id, q.campaign_id, q.price_cents, q.state, q.accepted, q.reason,
           q.buyer_lead_id, q.latency_ms, q.reservation
    FROM jsonb_to_recordset($22::jsonb)
         AS q(buyer_id text, campaign_id text, price_cents bigint, state text, accepted bool,
              reason text, buyer_lead_id text, latency_ms int, reservation jsonb)
), lead_row AS (
    INSERT INTO leads (lead_id, publisher_id, external_id, idempotency_key, vertical, test,
                       status, reason, payout_cents, received_at, duration_ms, phone, email,
                       state, zip, sub_id, contact, profile, consent, source, answer,
                       timeline)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
            $19, $20, $25, $26)
), sale_rows AS (
    INSERT INTO sales (lead_id, publisher_id, vertical, buyer_id, campaign_id, price_cents,
                       payout_cents, test, exclusive)
    SELECT $1, $2, $5, s.buyer_id, s.campaign_id, s.price_cents, s.payout_cents, $6, $23
    FROM jsonb_to_recordset($24::jsonb)
         AS s(buyer_id text, campaign_id text, price_cents bigint, payout_cents bigint)
    RETURNING sale_id, buyer_id, price_cents, payout_cents
)
INSERT INTO ledger (sale_id, lead_id, account, kind, amount_cents)
SELECT s.sale_id, $1, e.account, e.kind, e.amount
FROM sale_rows s
CROSS JOIN LATERAL (VALUES
    ('buyer:' || s.buyer_id, 'buyer_charge', -s.price_cents),
    ('publisher:' || $2, 'publisher_payout', s.payout_cents),
    ('exchange', 'exchange_margin', s.price_cents - s.payout_cents)) AS e(account, kind, amount)
WHERE NOT $6
"""

_ACCEPTED = {"accepted": True, "rejected": False, "failed": False}


def _ms(value: float | None) -> int | None:
    return None if value is None else round(value)


async def save_lead(
    conn: Conn,
    lead: Lead,
    outcome: Outcome,
    *,
    exclusive: bool,
    duration_ms: int,
    answer: dict[str, Any],
    timeline: Mapping[str, float] | None = None,
) -> None:
    """Insert the lead with its whole story and the publisher's ``answer``, atomically, in
    one round trip. ``timeline``: when each phase ended, ms from arrival (None: unknown).

    Test leads keep their sale rows for the story, with no payout and no ledger rows.
    """
    test = lead.test
    camps, posts, sales = outcome.campaigns, outcome.posts, outcome.sales
    await conn.execute(
        _SAVE,
        uuid.UUID(lead.lead_id),
        lead.publisher_id,
        lead.external_id,
        lead.idempotency_key,
        lead.vertical,
        test,
        outcome.status,
        outcome.reason,
        0 if test else outcome.payout_cents,
        lead.received_at,
        duration_ms,
        lead.phone,
        lead.email,
        lead.state,
        lead.zip5,
        lead.sub_id,
        lead.contact,
        _jsonable(lead.profile),
        lead.consent,
        lead.source,
        [
            {
                "ping_id": c.ping_id,
                "buyer_id": c.buyer_id,
                "campaign_id": c.campaign_id,
                "outcome": c.outcome,
                "reason": c.reason,
                "detail": c.detail,
                "price_cents": c.price_cents,
                "bid_id": c.bid_id,
                "latency_ms": _ms(c.latency_ms),
            }
            for c in camps
        ],
        [
            {
                "buyer_id": p.buyer_id,
                "campaign_id": p.campaign_id,
                "price_cents": p.price_cents,
                "state": p.state,
                "accepted": _ACCEPTED.get(p.state),
                "reason": p.reason,
                "buyer_lead_id": p.buyer_lead_id,
                "latency_ms": _ms(p.latency_ms),
                "reservation": p.reservation,
            }
            for p in posts
        ],
        exclusive,
        [
            {
                "buyer_id": s.buyer_id,
                "campaign_id": s.campaign_id,
                "price_cents": s.price_cents,
                "payout_cents": 0 if test else s.payout_cents,
            }
            for s in sales
        ],
        orjson.dumps(answer).decode(),
        dict(timeline) if timeline else None,
    )


async def lead_exists(conn: Conn, lead_id: str) -> bool:
    found = await conn.fetchval("SELECT 1 FROM leads WHERE lead_id = $1", uuid.UUID(lead_id))
    return found is not None


async def find_answer(
    conn: Conn, publisher_id: str, external_id: str | None, idem_key: str | None
) -> dict[str, Any] | None:
    """The stored answer of an earlier lead with the same external id or idempotency key."""
    row = await conn.fetchrow(
        """SELECT lead_id, status, reason, payout_cents, answer FROM leads
           WHERE publisher_id = $1 AND (external_id = $2 OR idempotency_key = $3)
           ORDER BY received_at LIMIT 1""",
        publisher_id,
        external_id,
        idem_key,
    )
    return answer_from_row(row) if row else None


async def answer_of(conn: Conn, lead_id: str) -> dict[str, Any] | None:
    """The answer lead ``lead_id`` got, once it is saved (None before that)."""
    row = await conn.fetchrow(
        "SELECT lead_id, status, reason, payout_cents, answer FROM leads WHERE lead_id = $1",
        uuid.UUID(lead_id),
    )
    return answer_from_row(row) if row else None


def answer_from_row(row: asyncpg.Record) -> dict[str, Any]:
    """The answer as first given; rebuilt from the lead's state for leads saved without it."""
    from exchange.money import fmt

    first: str | None = row["answer"]
    if first is not None:
        answer_as_sent: dict[str, Any] = orjson.loads(first)
        return answer_as_sent
    answer: dict[str, Any] = {
        "lead_id": str(row["lead_id"]),
        "status": row["status"],
        "payout": fmt(row["payout_cents"]),
    }
    if row["reason"]:
        answer["reason"] = row["reason"]
    return answer


async def lead_story(conn: Conn, lead_id: uuid.UUID) -> dict[str, Any] | None:
    """Everything operators need to see about one lead (SPEC §5)."""
    from exchange.money import fmt

    lead = await conn.fetchrow("SELECT * FROM leads WHERE lead_id = $1", lead_id)
    if lead is None:
        return None
    pings = await conn.fetch(
        "SELECT * FROM pings WHERE lead_id = $1 ORDER BY created_at, campaign_id", lead_id
    )
    posts = await conn.fetch("SELECT * FROM posts WHERE lead_id = $1 ORDER BY post_id", lead_id)
    sales = await conn.fetch("SELECT * FROM sales WHERE lead_id = $1 ORDER BY sale_id", lead_id)

    def money(v: int | None) -> str | None:
        return None if v is None else fmt(v)

    return {
        "lead_id": str(lead["lead_id"]),
        "status": lead["status"],
        "reason": lead["reason"],
        "publisher_id": lead["publisher_id"],
        "external_id": lead["external_id"],
        "vertical": lead["vertical"],
        "test": lead["test"],
        "payout": fmt(lead["payout_cents"]),
        "received_at": _iso(lead["received_at"]),
        "answered_at": _iso(lead["answered_at"]),
        "duration_ms": lead["duration_ms"],
        "timeline_ms": lead["timeline"],
        "contact": lead["contact"],
        "profile": lead["profile"],
        "consent": lead["consent"],
        "source": lead["source"],
        "pings": [
            {
                "buyer_id": p["buyer_id"],
                "campaign_id": p["campaign_id"],
                "outcome": p["outcome"],
                "reason": p["reason"],
                "detail": p["detail"],
                "price": money(p["price_cents"]),
                "bid_id": p["bid_id"],
                "latency_ms": p["latency_ms"],
            }
            for p in pings
        ],
        "posts": [
            {
                "buyer_id": p["buyer_id"],
                "campaign_id": p["campaign_id"],
                "price": money(p["price_cents"]),
                "state": p["state"],
                "accepted": p["accepted"],
                "reason": p["reason"],
                "buyer_lead_id": p["buyer_lead_id"],
                "latency_ms": p["latency_ms"],
                "settled_at": _iso(p["settled_at"]),
            }
            for p in posts
        ],
        "sales": [
            {
                "buyer_id": s["buyer_id"],
                "campaign_id": s["campaign_id"],
                "price": fmt(s["price_cents"]),
                "payout": fmt(s["payout_cents"]),
                "created_at": _iso(s["created_at"]),
            }
            for s in sales
        ],
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _jsonable(profile: dict[str, Any]) -> dict[str, Any]:
    from decimal import Decimal

    return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in profile.items()}
