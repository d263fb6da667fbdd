"""Turning one lead's outcome into metric updates, so the lead path makes one call."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from exchange.auction.outcome import PINGED, Outcome
from exchange.catalog import Target
from exchange.intake.admission import Admission
from exchange.intake.lead import Lead
from exchange.observability.metrics import (
    ADMISSION_CAP,
    ADMISSION_CUTS,
    AUCTION_DURATION,
    CAP_USAGE,
    LEAD_DURATION,
    LEADS,
    LEADS_IN_FLIGHT,
    LEADS_REFUSED,
    LEADS_UNRECORDED,
    MARGIN,
    PAYOUT,
    PING_LATENCY,
    PINGS,
    POST_LATENCY,
    POSTS,
    REDIS_ERRORS,
    REVENUE,
    STORE_DURATION,
    THROTTLED,
)
from exchange.routing.caps import CapStore


@lru_cache(maxsize=4096)
def _ping(buyer: str, outcome: str) -> Any:
    # labels() takes a lock and builds a key per call; a lead touches ~20 children.
    return PINGS.labels(buyer=buyer, outcome=outcome)


@lru_cache(maxsize=1024)
def _ping_latency(buyer: str) -> Any:
    return PING_LATENCY.labels(buyer=buyer)


@lru_cache(maxsize=1024)
def _post(buyer: str, outcome: str) -> Any:
    return POSTS.labels(buyer=buyer, outcome=outcome)


@lru_cache(maxsize=1024)
def _post_latency(buyer: str) -> Any:
    return POST_LATENCY.labels(buyer=buyer)


@lru_cache(maxsize=64)
def _store(store: str, op: str) -> Any:
    return STORE_DURATION.labels(store=store, op=op)


@lru_cache(maxsize=1024)
def _lead(vertical: str, status: str) -> tuple[Any, Any]:
    return LEADS.labels(vertical=vertical, status=status), LEAD_DURATION.labels(
        vertical=vertical, status=status
    )


@lru_cache(maxsize=256)
def _auction(vertical: str) -> Any:
    return AUCTION_DURATION.labels(vertical=vertical)


@lru_cache(maxsize=256)
def _money(vertical: str) -> tuple[Any, Any]:
    return PAYOUT.labels(vertical=vertical), MARGIN.labels(vertical=vertical)


@lru_cache(maxsize=4096)
def _revenue(vertical: str, buyer: str) -> Any:
    return REVENUE.labels(vertical=vertical, buyer=buyer)


def store_time(store: str, op: str, seconds: float) -> None:
    _store(store, op).observe(seconds)


def lead_done(lead: Lead, outcome: Outcome, duration_s: float) -> None:
    vertical = lead.vertical
    leads, lead_duration = _lead(vertical, outcome.status)
    leads.inc()
    lead_duration.observe(duration_s)
    if outcome.auction_ms is not None:
        _auction(vertical).observe(outcome.auction_ms / 1000)
    for c in outcome.campaigns:
        # below_floor is a bid that could not win: count it as its own outcome.
        label = "below_floor" if c.reason == "below_floor" else str(c.outcome)
        _ping(c.buyer_id, label).inc()
        if c.outcome in PINGED and c.latency_ms is not None:
            _ping_latency(c.buyer_id).observe(c.latency_ms / 1000)
    for p in outcome.posts:
        _post(p.buyer_id, p.state).inc()
        if p.latency_ms is not None:
            _post_latency(p.buyer_id).observe(p.latency_ms / 1000)
    if lead.test:
        return  # test leads move no money
    for s in outcome.sales:
        payout, margin = _money(vertical)
        _revenue(vertical, s.buyer_id).inc(s.price_cents)
        payout.inc(s.payout_cents)
        margin.inc(s.price_cents - s.payout_cents)


def refused(reason: str) -> None:
    LEADS_REFUSED.labels(reason=reason).inc()


def in_flight(count: int) -> None:
    LEADS_IN_FLIGHT.set(count)


def admission_cap(admission: Admission) -> None:
    ADMISSION_CAP.set(admission.limit)


def admission_cut() -> None:
    ADMISSION_CUTS.inc()


def store_error(store: str, op: str) -> None:
    """A store call that failed; Redis ones feed ``exchange_redis_errors_total``."""
    if store == "redis":
        REDIS_ERRORS.labels(op=op).inc()


def unrecorded(vertical: str) -> None:
    LEADS_UNRECORDED.labels(vertical=vertical).inc()


def throttled(buyers: Iterable[str], throttled_now: frozenset[str]) -> None:
    for buyer in buyers:
        THROTTLED.labels(buyer=buyer).set(1 if buyer in throttled_now else 0)


async def sample_caps(caps: CapStore, targets: Iterable[Target]) -> None:
    """Copy each capped campaign's usage share into ``exchange_campaign_cap_usage_ratio``."""
    now = datetime.now(UTC)
    for target in targets:
        if target.campaign.caps.empty:
            continue
        for name, (used, limit) in (await caps.usage(target, now)).items():
            CAP_USAGE.labels(campaign=target.campaign.id, period=name).set(
                used / limit if limit else 1.0
            )
