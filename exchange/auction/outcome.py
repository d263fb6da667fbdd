"""What one lead's auction produced, in the shape the store records and the API answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from exchange.auction.types import Reason

Status = Literal["sold", "unsold", "duplicate", "rejected", "pending"]
# The ping-phase outcomes of a campaign that was pinged (a bid under the floor is a BID).
PINGED = frozenset({Reason.BID, Reason.NO_BID, Reason.TIMEOUT, Reason.ERROR})
PostState = Literal["accepted", "rejected", "failed", "unknown"]


@dataclass(slots=True)
class CampaignResult:
    """One campaign considered for the lead: pinged or not, and how it ended."""

    ping_id: str
    buyer_id: str
    campaign_id: str
    outcome: Reason  # the ping phase: BID, NO_BID, TIMEOUT, ERROR, or why it was not pinged
    reason: Reason  # the end: SOLD, OUTBID, POST_REJECTED, ... or the same as outcome
    price_cents: int | None = None
    bid_id: str | None = None
    latency_ms: float | None = None
    detail: str | None = None


@dataclass(slots=True)
class PostResult:
    buyer_id: str
    campaign_id: str
    price_cents: int
    state: PostState
    reason: str | None = None
    buyer_lead_id: str | None = None
    latency_ms: float | None = None
    reservation: dict[str, Any] | None = None


@dataclass(slots=True)
class SaleResult:
    buyer_id: str
    campaign_id: str
    price_cents: int
    payout_cents: int


@dataclass(slots=True)
class Outcome:
    status: Status
    reason: str | None = None
    campaigns: list[CampaignResult] = field(default_factory=list)
    posts: list[PostResult] = field(default_factory=list)
    sales: list[SaleResult] = field(default_factory=list)
    auction_ms: float | None = None

    @property
    def payout_cents(self) -> int:
        return sum(s.payout_cents for s in self.sales)

    @property
    def revenue_cents(self) -> int:
        return sum(s.price_cents for s in self.sales)


@dataclass(slots=True)
class Progress:
    """How far one lead got, read when something fails: once a post has been sent a buyer
    may hold the lead, so it must never be auctioned again (a retry included)."""

    posted: bool = False
    saved: bool = False  # its record is in Postgres (set by intake)
    posts: list[PostResult] = field(default_factory=list)  # the auction's, as they happen
    # When each phase ended, ms from arrival ("claimed", "pings_sent", "pinged", "posted"):
    # saved with the lead, for operators asking where a slow answer's time went.
    timeline: dict[str, float] = field(default_factory=dict)

    def mark(self, phase: str, elapsed_ms: float) -> None:
        self.timeline[phase] = round(elapsed_ms, 1)
