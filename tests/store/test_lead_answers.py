"""The answer a lead got, as Postgres keeps it for the lead's repeats."""

from __future__ import annotations

import uuid

import asyncpg

from exchange.auction.outcome import Outcome
from exchange.store.db import create_pool
from exchange.store.leads import answer_of, find_answer, save_lead
from tests.kit.records import stored_lead


async def test_the_answer_comes_back_as_sent_and_outlives_a_status_change(pg_dsn: str) -> None:
    pool = await create_pool(pg_dsn, min_size=1, max_size=1)
    try:
        lead = stored_lead("ext-1")
        # Key order as the publisher saw it (jsonb would sort the keys).
        sent = {"lead_id": lead.lead_id, "status": "pending", "payout": "0.00", "reason": "r"}
        async with pool.acquire() as conn:
            await save_lead(
                conn, lead, Outcome("pending", "r"), exclusive=True, duration_ms=5, answer=sent
            )
            await conn.execute(
                "UPDATE leads SET status = 'sold', payout_cents = 700 WHERE lead_id = $1",
                uuid.UUID(lead.lead_id),
            )
            by_id = await answer_of(conn, lead.lead_id)
            by_external_id = await find_answer(conn, "pub-1", "ext-1", None)
            assert await answer_of(conn, str(uuid.uuid4())) is None
        assert by_id == by_external_id == sent
        assert by_id is not None and list(by_id) == ["lead_id", "status", "payout", "reason"]
    finally:
        await pool.close()


async def test_a_lead_saved_before_answers_were_kept_gets_one_from_its_state(
    pg_dsn: str,
) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        lead_id = uuid.uuid4()
        await conn.execute(
            """INSERT INTO leads (lead_id, publisher_id, external_id, vertical, status, reason,
                   payout_cents, received_at)
               VALUES ($1, 'pub-1', 'ext-old', 'auto', 'unsold', 'no_bid', 0, now())""",
            lead_id,
        )
        expected = {
            "lead_id": str(lead_id),
            "status": "unsold",
            "payout": "0.00",
            "reason": "no_bid",
        }
        assert await answer_of(conn, str(lead_id)) == expected
        assert await find_answer(conn, "pub-1", "ext-old", None) == expected
    finally:
        await conn.close()
