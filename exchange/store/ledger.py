"""Double-entry ledger rows for a sale (the lead path writes them inside ``save_lead``).

Each sale writes three rows that sum to zero: the buyer's charge (negative: money
leaves the buyer), the publisher's payout and the exchange's margin. A return or a
correction adds reversing rows; nothing here is ever updated in place. Test leads
record the sale row for the story but move no money: no ledger rows.
"""

from __future__ import annotations

import uuid

from exchange.store.db import Conn


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
