"""Sales and their double-entry ledger rows, written together.

Each sale writes three rows that sum to zero: the buyer's charge (negative: money
leaves the buyer), the publisher's payout and the exchange's margin. A return or a
correction adds reversing rows; nothing here is ever updated in place. Test leads
record the sale row for the story but move no money: no ledger rows.
"""

from __future__ import annotations

import uuid

from exchange.auction.outcome import SaleResult
from exchange.intake.lead import Lead
from exchange.store.db import Conn


async def record_sale(conn: Conn, lead: Lead, sale: SaleResult, *, exclusive: bool) -> int:
    """Insert one sale and its ledger rows; returns the sale id. Call inside a transaction."""
    lead_uuid = uuid.UUID(lead.lead_id)
    sale_id: int = await conn.fetchval(
        """INSERT INTO sales (lead_id, publisher_id, vertical, buyer_id, campaign_id,
               price_cents, payout_cents, test, exclusive)
           VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) RETURNING sale_id""",
        lead_uuid,
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
            lead_uuid,
            lead.publisher_id,
            sale.buyer_id,
            sale.price_cents,
            sale.payout_cents,
        )
    return sale_id


async def write_entries(
    conn: Conn,
    sale_id: int,
    lead_id: uuid.UUID,
    publisher_id: str,
    buyer_id: str,
    price_cents: int,
    payout_cents: int,
) -> None:
    await conn.executemany(
        """INSERT INTO ledger (sale_id, lead_id, account, kind, amount_cents)
           VALUES ($1, $2, $3, $4, $5)""",
        [
            (sale_id, lead_id, f"buyer:{buyer_id}", "buyer_charge", -price_cents),
            (sale_id, lead_id, f"publisher:{publisher_id}", "publisher_payout", payout_cents),
            (sale_id, lead_id, "exchange", "exchange_margin", price_cents - payout_cents),
        ],
    )
