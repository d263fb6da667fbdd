"""Settling a post whose answer never came: an operator says whether the buyer kept the lead.

Accepted: the sale and its ledger rows are written now, and the cap reservation the post
held stays spent. Rejected: the reservation is released. The lead's status and payout are
then recomputed from what Postgres holds.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from exchange.auction.outcome import SaleResult
from exchange.auction.sell import payout_for
from exchange.catalog import Catalog
from exchange.routing.caps import CapStore, Reservation
from exchange.store import settlements


class SettleError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Settled:
    status: str
    payout_cents: int


async def settle(
    pool: asyncpg.Pool,
    caps: CapStore,
    catalog: Catalog,
    lead_id: uuid.UUID,
    buyer_id: str,
    accepted: bool,
    settled_by: str,
) -> Settled:
    release: Reservation | None = None
    async with pool.acquire() as conn, conn.transaction():
        lead = await settlements.lock_lead(conn, lead_id)
        if lead is None:
            raise SettleError(404, "no such lead")
        post = await settlements.lock_unknown_post(conn, lead_id, buyer_id)
        if post is None:
            raise SettleError(409, f"lead has no unsettled post to buyer {buyer_id!r}")
        await settlements.mark_post(conn, post.post_id, accepted, settled_by)
        if accepted:
            publisher = catalog.publishers.get(lead.publisher_id)
            first = await settlements.sale_count(conn, lead_id) == 0
            payout = payout_for(publisher, post.price_cents, first=first) if publisher else 0
            sale = SaleResult(buyer_id, post.campaign_id, post.price_cents, payout)
            vertical = catalog.verticals.get(lead.vertical)
            exclusive = vertical.exclusive if vertical is not None else True
            await settlements.record_settled_sale(conn, lead, sale, exclusive=exclusive)
        elif post.reservation is not None:
            release = Reservation.from_json(post.reservation)
        status, payout_cents = await settlements.refresh_lead_status(conn, lead_id)
    if release is not None and not lead.test:
        await caps.release(release)
    return Settled(status, payout_cents)
