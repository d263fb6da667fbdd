"""Queries behind settling an unknown post. The caller owns the transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from exchange.auction.outcome import SaleResult
from exchange.store.db import Conn
from exchange.store.ledger import write_entries


@dataclass(frozen=True, slots=True)
class LockedLead:
    lead_id: uuid.UUID
    publisher_id: str
    vertical: str
    test: bool


@dataclass(frozen=True, slots=True)
class UnknownPost:
    post_id: int
    campaign_id: str
    price_cents: int
    reservation: dict[str, Any] | None


async def lock_lead(conn: Conn, lead_id: uuid.UUID) -> LockedLead | None:
    row = await conn.fetchrow(
        "SELECT lead_id, publisher_id, vertical, test FROM leads WHERE lead_id = $1 FOR UPDATE",
        lead_id,
    )
    if row is None:
        return None
    return LockedLead(row["lead_id"], row["publisher_id"], row["vertical"], row["test"])


async def lock_unknown_post(conn: Conn, lead_id: uuid.UUID, buyer_id: str) -> UnknownPost | None:
    row = await conn.fetchrow(
        """SELECT post_id, campaign_id, price_cents, reservation FROM posts
           WHERE lead_id = $1 AND buyer_id = $2 AND state = 'unknown'
           ORDER BY post_id LIMIT 1 FOR UPDATE""",
        lead_id,
        buyer_id,
    )
    if row is None:
        return None
    return UnknownPost(row["post_id"], row["campaign_id"], row["price_cents"], row["reservation"])


async def mark_post(conn: Conn, post_id: int, accepted: bool, by: str) -> None:
    await conn.execute(
        """UPDATE posts SET state = $2, accepted = $3, settled_at = now(), settled_by = $4,
               reason = coalesce(reason || '; ', '') || 'settled by operator'
           WHERE post_id = $1""",
        post_id,
        "accepted" if accepted else "rejected",
        accepted,
        by,
    )


async def sale_count(conn: Conn, lead_id: uuid.UUID) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM sales WHERE lead_id = $1", lead_id))


async def record_settled_sale(
    conn: Conn, lead: LockedLead, sale: SaleResult, *, exclusive: bool
) -> None:
    sale_id: int = await conn.fetchval(
        """INSERT INTO sales (lead_id, publisher_id, vertical, buyer_id, campaign_id,
               price_cents, payout_cents, test, exclusive)
           VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) RETURNING sale_id""",
        lead.lead_id,
        lead.publisher_id,
        lead.vertical,
        sale.buyer_id,
        sale.campaign_id,
        sale.price_cents,
        0 if lead.test else sale.payout_cents,
        lead.test,
        exclusive,
    )
    if not lead.test:
        await write_entries(
            conn,
            sale_id,
            lead.lead_id,
            lead.publisher_id,
            sale.buyer_id,
            sale.price_cents,
            sale.payout_cents,
        )


async def refresh_lead_status(conn: Conn, lead_id: uuid.UUID) -> tuple[str, int]:
    """Status and payout recomputed from the posts and sales Postgres holds."""
    row = await conn.fetchrow(
        """SELECT
             (SELECT count(*) FROM posts WHERE lead_id = $1 AND state = 'unknown') AS unknown,
             (SELECT count(*) FROM sales WHERE lead_id = $1) AS sold,
             (SELECT coalesce(sum(payout_cents), 0) FROM sales WHERE lead_id = $1) AS payout""",
        lead_id,
    )
    assert row is not None
    if row["unknown"]:
        status, reason = "pending", "a buyer has not confirmed its post; settling"
    elif row["sold"]:
        status, reason = "sold", None
    else:
        status, reason = "unsold", "the pending post was settled as rejected"
    payout = int(row["payout"])
    await conn.execute(
        "UPDATE leads SET status = $2, reason = $3, payout_cents = $4 WHERE lead_id = $1",
        lead_id,
        status,
        reason,
        payout,
    )
    return status, payout
