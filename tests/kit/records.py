"""What Postgres holds about a lead, read straight from the tables (never through the API).

Tests compare this with what the exchange answered, so a story that the API tells but
the database does not hold (or the other way round) shows up.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from exchange.intake.lead import Lead


@dataclass(frozen=True)
class LeadRecord:
    lead: dict[str, Any] | None
    pings: list[dict[str, Any]]
    posts: list[dict[str, Any]]
    sales: list[dict[str, Any]]
    ledger: list[dict[str, Any]]

    @property
    def ping_by_buyer(self) -> dict[str, dict[str, Any]]:
        return {p["buyer_id"]: p for p in self.pings}


async def fetch_record(dsn: str, lead_id: str) -> LeadRecord:
    """Every row about one lead, in insertion order."""
    key = uuid.UUID(lead_id)
    conn = await asyncpg.connect(dsn)
    try:
        lead = await conn.fetchrow("SELECT * FROM leads WHERE lead_id = $1", key)
        pings = await conn.fetch("SELECT * FROM pings WHERE lead_id = $1 ORDER BY buyer_id", key)
        posts = await conn.fetch("SELECT * FROM posts WHERE lead_id = $1 ORDER BY post_id", key)
        sales = await conn.fetch("SELECT * FROM sales WHERE lead_id = $1 ORDER BY sale_id", key)
        ledger = await conn.fetch("SELECT * FROM ledger WHERE lead_id = $1 ORDER BY entry_id", key)
    finally:
        await conn.close()
    return LeadRecord(
        dict(lead) if lead is not None else None,
        [dict(r) for r in pings],
        [dict(r) for r in posts],
        [dict(r) for r in sales],
        [dict(r) for r in ledger],
    )


async def count_rows(dsn: str, table: str, where: str = "true", *args: Any) -> int:
    """``SELECT count(*)`` over one of the exchange's tables (names are the tests' own)."""
    assert table in ("leads", "pings", "posts", "sales", "ledger"), table
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {where}", *args))
    finally:
        await conn.close()


def assert_ledger_balanced(record: LeadRecord) -> None:
    """Each sale has exactly three ledger rows summing to zero: the buyer pays its price,
    the publisher earns its payout, the exchange keeps the difference."""
    assert record.lead is not None
    for sale in record.sales:
        rows = [r for r in record.ledger if r["sale_id"] == sale["sale_id"]]
        by_kind = {r["kind"]: r for r in rows}
        assert len(rows) == 3 and set(by_kind) == {
            "buyer_charge",
            "publisher_payout",
            "exchange_margin",
        }, rows
        price, payout = sale["price_cents"], sale["payout_cents"]
        assert by_kind["buyer_charge"]["account"] == f"buyer:{sale['buyer_id']}"
        assert by_kind["buyer_charge"]["amount_cents"] == -price
        assert by_kind["publisher_payout"]["account"] == f"publisher:{sale['publisher_id']}"
        assert by_kind["publisher_payout"]["amount_cents"] == payout
        assert by_kind["exchange_margin"]["account"] == "exchange"
        assert by_kind["exchange_margin"]["amount_cents"] == price - payout
        assert sum(r["amount_cents"] for r in rows) == 0
    assert len(record.ledger) == 3 * len(record.sales)
    assert record.lead["payout_cents"] == sum(s["payout_cents"] for s in record.sales)


def stored_lead(external_id: str) -> Lead:
    """A parsed lead as the store receives it, for tests of the repository functions."""
    return Lead(
        lead_id=str(uuid.uuid4()),
        publisher_id="pub-1",
        vertical="auto",
        external_id=external_id,
        idempotency_key=None,
        test=False,
        received_at=datetime.now(UTC),
        phone="+14155550100",
        email=None,
        state="CA",
        zip5="94105",
        contact={"phone": "+14155550100"},
        profile={},
        ping_profile={},
    )
