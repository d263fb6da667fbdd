"""Repository for leads and everything that happened to them. Plain SQL; callers own the
transaction, so a lead, its pings, posts, sales and ledger rows land together or not at all."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from exchange.auction.outcome import Outcome, SaleResult
from exchange.intake.lead import Lead
from exchange.store.db import Conn
from exchange.store.ledger import record_sale

_PING_COLUMNS = (
    "ping_id",
    "lead_id",
    "buyer_id",
    "campaign_id",
    "outcome",
    "reason",
    "detail",
    "price_cents",
    "bid_id",
    "latency_ms",
)


async def save_lead(
    conn: Conn, lead: Lead, outcome: Outcome, *, exclusive: bool, duration_ms: int
) -> None:
    """Insert the lead with its whole story. Call inside a transaction."""
    lead_uuid = uuid.UUID(lead.lead_id)
    await conn.execute(
        """INSERT INTO leads (lead_id, publisher_id, external_id, idempotency_key, vertical, test,
               status, reason, payout_cents, received_at, duration_ms, phone, email, state, zip,
               sub_id, contact, profile, consent, source)
           VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20)""",
        lead_uuid,
        lead.publisher_id,
        lead.external_id,
        lead.idempotency_key,
        lead.vertical,
        lead.test,
        outcome.status,
        outcome.reason,
        0 if lead.test else outcome.payout_cents,
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
    )
    if outcome.campaigns:
        await conn.copy_records_to_table(
            "pings",
            columns=_PING_COLUMNS,
            records=[
                (
                    uuid.UUID(c.ping_id),
                    lead_uuid,
                    c.buyer_id,
                    c.campaign_id,
                    str(c.outcome),
                    str(c.reason),
                    c.detail,
                    c.price_cents,
                    c.bid_id,
                    None if c.latency_ms is None else round(c.latency_ms),
                )
                for c in outcome.campaigns
            ],
        )
    for p in outcome.posts:
        await conn.execute(
            """INSERT INTO posts (lead_id, buyer_id, campaign_id, price_cents, state, accepted,
                   reason, buyer_lead_id, latency_ms, reservation)
               VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)""",
            lead_uuid,
            p.buyer_id,
            p.campaign_id,
            p.price_cents,
            p.state,
            {"accepted": True, "rejected": False, "failed": False}.get(p.state),
            p.reason,
            p.buyer_lead_id,
            None if p.latency_ms is None else round(p.latency_ms),
            p.reservation,
        )
    for sale in outcome.sales:
        await record_sale(conn, lead, sale, exclusive=exclusive)


async def find_answer(
    conn: Conn, publisher_id: str, external_id: str | None, idem_key: str | None
) -> dict[str, Any] | None:
    """The stored answer of an earlier lead with the same external id or idempotency key."""
    row = await conn.fetchrow(
        """SELECT lead_id, status, reason, payout_cents FROM leads
           WHERE publisher_id = $1 AND (external_id = $2 OR idempotency_key = $3)
           ORDER BY received_at LIMIT 1""",
        publisher_id,
        external_id,
        idem_key,
    )
    return answer_from_row(row) if row else None


def answer_from_row(row: asyncpg.Record) -> dict[str, Any]:
    from exchange.money import fmt

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


async def sale_count(conn: Conn, lead_id: uuid.UUID) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM sales WHERE lead_id = $1", lead_id))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _jsonable(profile: dict[str, Any]) -> dict[str, Any]:
    from decimal import Decimal

    return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in profile.items()}


__all__ = ["SaleResult", "answer_from_row", "find_answer", "lead_story", "sale_count", "save_lead"]
