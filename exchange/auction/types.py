"""Values that flow through one auction: offers, outcomes and the reasons for each."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class Reason(StrEnum):
    """Why a campaign did or did not get the lead; stored with the lead for operators."""

    FILTERED = "filtered"
    SCHEDULE = "schedule"
    CAPPED = "capped"
    PAUSED = "paused"
    THROTTLED = "throttled"
    NO_TIME = "no_time"  # too little of the deadline left to ping it at all
    BID = "bid"
    FIXED_PRICE = "fixed_price"  # a post-only campaign: not pinged, offers its fixed price
    NO_BID = "no_bid"
    BELOW_FLOOR = "below_floor"
    TIMEOUT = "timeout"
    ERROR = "error"
    OUTBID = "outbid"
    POST_REJECTED = "post_rejected"
    POST_FAILED = "post_failed"
    POST_UNKNOWN = "post_unknown"
    SOLD = "sold"
    DUPLICATE_BUYER = "duplicate_buyer"  # shared lead: this buyer already bought it


Mode = Literal["auction", "priority"]
Pricing = Literal["first_price", "second_price"]


@dataclass(frozen=True, slots=True)
class Offer:
    """One campaign's bid (or a post-only campaign's fixed price), in integer cents."""

    campaign_id: str
    buyer_id: str
    price_cents: int
    tier: int = 1
    weight: int = 1
    min_price_cents: int = 0  # the campaign's own floor (its configured ``price``)
    bid_id: str | None = None
    ping_id: str | None = None


@dataclass(frozen=True, slots=True)
class RankRules:
    """The vertical's rules for ordering offers."""

    mode: Mode = "auction"
    floor_cents: int = 0
    pricing: Pricing = "first_price"
    max_sells: int = 1
