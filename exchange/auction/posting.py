"""Posting the full lead to one buyer, and what its answer means for the lead.

A post that never reached the buyer (refused, reset before sending) or that the buyer
refused passes the lead on. A post that was sent but not answered is *unknown*: the
buyer may hold the lead, so it keeps its cap reservation until an operator settles it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exchange.auction.outcome import PostState, Progress
from exchange.auction.types import Offer, Reason
from exchange.buyers.protocol import post_body, read_post_answer
from exchange.buyers.signing import signed_headers
from exchange.catalog import Target
from exchange.intake.lead import Lead
from exchange.transport import Failure, Transport, TransportError


@dataclass(frozen=True, slots=True)
class PostAttempt:
    state: PostState
    reason: Reason  # SOLD, POST_REJECTED, POST_FAILED or POST_UNKNOWN
    detail: str | None
    buyer_lead_id: str | None
    latency_ms: float | None


async def post_lead(
    transport: Transport,
    target: Target,
    offer: Offer,
    price_cents: int,
    lead: Lead,
    full_lead: dict[str, Any],
    timeout_ms: float,
    progress: Progress,
) -> PostAttempt:
    try:
        body = post_body(
            ping_id=offer.ping_id,
            campaign_id=offer.campaign_id,
            bid_id=offer.bid_id,
            price_cents=price_cents,
            lead_id=lead.lead_id,
            test=lead.test,
            lead=full_lead,
        )
    except (TypeError, ValueError) as exc:  # validation should make this unreachable
        return PostAttempt("failed", Reason.POST_FAILED, f"lead not encodable: {exc}", None, None)
    headers = signed_headers(target.buyer.secret, body)
    progress.posted = True  # from here the buyer may get the lead, whatever happens next
    try:
        reply = await transport.post(target.buyer.post_url, body, headers, timeout_ms / 1000)
    except TransportError as exc:
        if exc.maybe_delivered:
            return PostAttempt("unknown", Reason.POST_UNKNOWN, exc.detail, None, exc.latency_ms)
        detail = f"{exc.failure}: {exc.detail}"
        return PostAttempt("failed", Reason.POST_FAILED, detail, None, exc.latency_ms)
    answer = read_post_answer(reply.status, reply.body)
    if answer.accepted is True:
        return PostAttempt("accepted", Reason.SOLD, None, answer.buyer_lead_id, reply.latency_ms)
    if answer.accepted is False:
        state: PostState = "rejected" if 200 <= reply.status < 300 else "failed"
        reason = Reason.POST_REJECTED if state == "rejected" else Reason.POST_FAILED
        return PostAttempt(state, reason, answer.reason, None, reply.latency_ms)
    # A 2xx we cannot read: the buyer may well have taken the lead.
    return PostAttempt("unknown", Reason.POST_UNKNOWN, answer.reason, None, reply.latency_ms)


__all__ = ["Failure", "PostAttempt", "post_lead"]
