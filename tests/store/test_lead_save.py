"""A lead's save is one statement: its ping, post, sale and ledger rows land with it or
not at all. Ping and post rows carry no foreign key to their lead (migration 0005), so
this atomicity is what keeps them from existing without it."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from exchange.auction.outcome import CampaignResult, Outcome, PostResult, SaleResult
from exchange.auction.types import Reason
from exchange.store.db import Conn
from exchange.store.leads import save_lead
from tests.kit.records import stored_lead


def _sold(buyers: tuple[str, ...] = ("acme", "bolt")) -> Outcome:
    camps = [
        CampaignResult(
            str(uuid.uuid4()), b, f"{b}-c", Reason.BID, Reason.SOLD, 1500, f"bid-{b}", 3.0
        )
        for b in buyers
    ]
    posts = [PostResult(b, f"{b}-c", 1500, "accepted", latency_ms=2.0) for b in buyers]
    sales = [SaleResult(b, f"{b}-c", 1500, 1000) for b in buyers]
    return Outcome("sold", campaigns=camps, posts=posts, sales=sales)


async def _rows(pg_pooled: Conn, lead_id: str) -> dict[str, int]:
    key = uuid.UUID(lead_id)
    return {
        table: await pg_pooled.fetchval(f"SELECT count(*) FROM {table} WHERE lead_id = $1", key)
        for table in ("leads", "pings", "posts", "sales", "ledger")
    }


async def test_a_sold_lead_lands_with_every_row_of_its_story(pg_pooled: Conn) -> None:
    lead = stored_lead("ext-1")
    await save_lead(pg_pooled, lead, _sold(), exclusive=False, duration_ms=4, answer={})
    assert await _rows(pg_pooled, lead.lead_id) == {
        "leads": 1,
        "pings": 2,
        "posts": 2,
        "sales": 2,
        "ledger": 6,  # buyer charge, publisher payout, exchange margin per sale
    }
    ledger = await pg_pooled.fetchval(
        "SELECT sum(amount_cents) FROM ledger WHERE lead_id = $1", uuid.UUID(lead.lead_id)
    )
    assert ledger == 0


@pytest.mark.parametrize(
    "why",
    [
        "the same external id",  # a second worker's lead after Redis lost the claim
        "an exclusive lead sold to two buyers",  # the sales part of the statement fails
    ],
)
async def test_a_failed_save_leaves_no_row_of_the_lead(pg_pooled: Conn, why: str) -> None:
    first = stored_lead("ext-1")
    await save_lead(pg_pooled, first, _sold(("acme",)), exclusive=True, duration_ms=4, answer={})
    second = stored_lead("ext-1" if why == "the same external id" else "ext-2")
    with pytest.raises(asyncpg.UniqueViolationError):
        await save_lead(pg_pooled, second, _sold(), exclusive=True, duration_ms=4, answer={})
    assert await _rows(pg_pooled, second.lead_id) == dict.fromkeys(
        ("leads", "pings", "posts", "sales", "ledger"), 0
    )
    # The first lead's story is untouched.
    assert (await _rows(pg_pooled, first.lead_id))["pings"] == 1


async def test_ping_rows_keep_the_index_reports_read_and_money_keeps_its_keys(
    pg_pooled: Conn,
) -> None:
    """What migration 0005 took away, and what it kept: the money's foreign keys."""
    indexes = {
        r["indexname"]
        for r in await pg_pooled.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'pings'")
    }
    assert indexes == {"pings_pkey", "pings_lead"}
    fks = {
        (r["table"], r["target"])
        for r in await pg_pooled.fetch(
            """SELECT conrelid::regclass::text AS table, confrelid::regclass::text AS target
               FROM pg_constraint WHERE contype = 'f'"""
        )
    }
    assert fks == {("sales", "leads"), ("ledger", "sales")}
