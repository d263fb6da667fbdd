"""A lead that failed part-way: freed for a retry if no buyer saw it, held if one may have.

Once a post was sent a buyer may hold the lead, so it is never auctioned again, a retry
included: its claim keeps a ``pending`` answer for repeats, and an ERROR log line carries
its posts (buyer, campaign, price, state, the buyer's lead id, any cap reservation still
held) for an operator to settle; ``exchange_leads_unrecorded_total`` counts them.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from redis.exceptions import RedisError

from exchange.auction.outcome import PostResult, Progress
from exchange.intake.lead import Lead
from exchange.money import fmt
from exchange.observability import record
from exchange.runtime import Runtime
from exchange.store.leads import lead_exists

log = logging.getLogger(__name__)
UNRECORDED = "sold to a buyer, but its record could not be saved; held for an operator"


def held_answer(lead_id: str) -> dict[str, Any]:
    return {"lead_id": lead_id, "status": "pending", "payout": fmt(0), "reason": UNRECORDED}


def log_held(lead: Lead, posts: list[PostResult]) -> None:
    """Call inside an ``except`` block: the line carries the error's traceback too."""
    if not lead.test:  # a test lead moves no money: nothing to settle, nothing to alert on
        record.unrecorded(lead.vertical)
    log.error(
        "lead held: posted to a buyer but not recorded",
        exc_info=True,
        extra={
            "publisher_id": lead.publisher_id,
            "external_id": lead.external_id,
            "test": lead.test,
            "posts": [
                {
                    "buyer_id": p.buyer_id,
                    "campaign_id": p.campaign_id,
                    "price_cents": p.price_cents,
                    "state": p.state,
                    "buyer_lead_id": p.buyer_lead_id,
                    "reservation": p.reservation,
                }
                for p in posts
            ],
        },
    )


async def saved_anyway(rt: Runtime, lead: Lead) -> bool:
    """Whether a save that raised had committed after all (a reply lost, a cancellation
    after the commit); False when Postgres cannot tell, which holds the lead."""
    try:
        async with rt.pool.acquire() as conn:
            return await lead_exists(conn, lead.lead_id)
    except Exception:  # Postgres is why we are here: not knowing means held
        return False


async def give_back(
    rt: Runtime, keys: list[str], lead: Lead, progress: Progress
) -> dict[str, Any] | None:
    """After a failure: free the lead's claims so its retry runs anew (and is not its own
    duplicate), or hold it if a buyer may have it; returns the held answer then."""
    if progress.posted and not progress.saved and not await saved_anyway(rt, lead):
        log_held(lead, progress.posts)
        held = held_answer(lead.lead_id)
        with contextlib.suppress(RedisError, OSError):  # else repeats wait, then "pending"
            await rt.guard.finish(keys, held)
        return held
    if progress.posted or progress.saved:  # recorded: a repeat's backstop finds it there
        with contextlib.suppress(RedisError, OSError):
            await rt.guard.release(keys, lead.lead_id)
        return None
    await release_claims(rt, keys, lead)
    return None


async def release_claims(rt: Runtime, keys: list[str], lead: Lead) -> None:
    """Give back whatever of its ids, phone and email this lead still holds (best effort)."""
    # The phone and email first: a retry that wins the freed claim must not find them taken.
    with contextlib.suppress(RedisError, OSError):
        await rt.guard.release_duplicate(
            lead.vertical, lead.phone, lead.email, lead.lead_id, lead.test
        )
    with contextlib.suppress(RedisError, OSError):
        await rt.guard.release(keys, lead.lead_id)
