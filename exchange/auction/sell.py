"""One lead's auction: screen, ping all at once, rank, post down the order, and account.

The deadline made at the request's arrival bounds every step: the ping phase gets
``min(tmax_ms, what is left − the post reserve)``, each buyer its own timeout within
that, and each post ``min(post_timeout_ms, what is left)``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from exchange.auction.deadline import Deadline
from exchange.auction.fanout import (
    LeadPingView,
    PingIds,
    PingJudge,
    PingRequest,
    PingResult,
    ping_all,
    ping_timings,
)
from exchange.auction.outcome import CampaignResult, Outcome, PostResult, Progress, SaleResult
from exchange.auction.posting import post_lead
from exchange.auction.ranking import flatten, order_group, price_for, rank
from exchange.auction.types import Offer, RankRules, Reason
from exchange.catalog import Catalog, Target
from exchange.catalog.models import Publisher, Vertical
from exchange.intake.lead import Lead
from exchange.money import share_of
from exchange.routing.caps import CapStore, Reservation, limits_of
from exchange.routing.eligibility import Eligibility, screen
from exchange.routing.health import BuyerHealth
from exchange.routing.weights import pick_first
from exchange.transport import Transport

_MIN_POST_MS = 20  # below this a post cannot complete; the offer is recorded as no_time


@dataclass
class AuctionDeps:
    """The long-lived things an auction needs; built once per worker."""

    transport: Transport
    caps: CapStore
    redis: Redis
    prefix: str
    health: BuyerHealth
    paused: Collection[str] = frozenset()
    judge: PingJudge | None = None  # the worker's admission, once it exists


@dataclass
class _State:
    """The running tally of one lead's auction."""

    lead: Lead
    vertical: Vertical
    rules: RankRules
    results: dict[str, CampaignResult]
    ids: PingIds  # every campaign considered gets one, pinged or not
    progress: Progress
    posts: list[PostResult] = dataclasses.field(default_factory=list)
    sales: list[SaleResult] = dataclasses.field(default_factory=list)
    holders: set[str] = dataclasses.field(default_factory=set)  # buyers that have (or may have) it
    unknown: bool = False
    stopped: bool = False

    def needs_more(self) -> bool:
        return not self.stopped and len(self.holders) < self.rules.max_sells


@dataclass(frozen=True, slots=True)
class Screening:
    """Who may be pinged (no I/O) and the read of their caps, begun before the lead's
    claim is settled: the read then costs no round trip of its own on the lead's path."""

    screened: Eligibility  # against the time of screening (schedules, cap periods)
    capped: asyncio.Future[set[str]] | None  # None: no campaign here has a cap to read


def begin_screening(deps: AuctionDeps, catalog: Catalog, lead: Lead) -> Screening:
    """Screen the lead's campaigns and start reading their caps (one pipelined MGET)."""
    now = datetime.now(UTC)
    candidates = catalog.by_vertical.get(lead.vertical, ())
    screened = screen(candidates, lead, now, deps.paused)
    capped = None
    if any(limits_of(t.campaign.caps) for t in screened.eligible):
        floor = catalog.verticals[lead.vertical].floor
        capped = asyncio.ensure_future(deps.caps.capped(screened.eligible, now, floor))
    return Screening(screened, capped)


async def sell(
    deps: AuctionDeps,
    catalog: Catalog,
    publisher: Publisher,
    lead: Lead,
    deadline: Deadline,
    progress: Progress | None = None,
    screening: Screening | None = None,
) -> Outcome:
    """Run the lead's auction; ``screening`` is :func:`begin_screening`'s, begun earlier
    with this catalog (None: screen now)."""
    vertical = catalog.verticals[lead.vertical]
    settings = catalog.settings
    if screening is None:
        screening = begin_screening(deps, catalog, lead)
    screened = screening.screened
    rules = RankRules(vertical.mode, vertical.floor, vertical.pricing, vertical.max_sells)
    candidates = catalog.by_vertical.get(lead.vertical, ())
    state = _State(lead, vertical, rules, {}, PingIds(len(candidates)), progress or Progress())
    state.posts = state.progress.posts  # so a failure later in the auction still knows them
    for ex in screened.excluded:
        _note(state, ex.target, ex.reason, ex.reason, detail=ex.detail)
    capped = await screening.capped if screening.capped is not None else set()

    reserve = min(settings.post_timeout_ms, settings.deadline_ms - settings.tmax_ms)
    phase_ms = min(float(settings.tmax_ms), deadline.remaining_ms() - reserve)
    requests: list[PingRequest] = []
    offers: list[Offer] = []
    for target in screened.eligible:
        campaign, buyer = target.campaign, target.buyer
        if campaign.id in capped:
            _note(state, target, Reason.CAPPED, Reason.CAPPED, detail="at a cap or budget")
        elif buyer.ping_url is None:
            assert campaign.price is not None
            offer = _offer(target, campaign.price, None, state.ids())
            offers.append(offer)
            _note(
                state,
                target,
                Reason.FIXED_PRICE,
                Reason.FIXED_PRICE,
                ping_id=offer.ping_id,  # the id its post carries is the one recorded
                price=campaign.price,
            )
        elif not deps.health.allow(buyer.id):
            _note(state, target, Reason.THROTTLED, Reason.THROTTLED, detail="recent pings failing")
        else:
            timeout = int(min(buyer.timeout_ms, phase_ms))
            if timeout < settings.min_ping_ms:
                _note(state, target, Reason.NO_TIME, Reason.NO_TIME, detail=f"{timeout} ms left")
            else:
                requests.append(PingRequest(target, timeout, state.ids()))

    view = LeadPingView(
        lead.vertical, vertical.exclusive, lead.test, lead.state, lead.zip5, lead.ping_profile
    )
    started = deadline.elapsed_ms()
    pinged = await ping_all(deps.transport, requests, view, phase_ms) if requests else []
    auction_ms = deadline.elapsed_ms() - started
    if requests:
        state.progress.mark("pings_sent", started)
        state.progress.mark("pinged", started + auction_ms)
    # Timeouts on a lead that shows this worker congested are ours, not the buyers': they
    # must not throttle healthy buyers (before this, 1,000-11,000 pings were skipped in a
    # 12 s run at twice the sustained rate; loadtests/README). A test lead's sandbox
    # buyers say nothing about us.
    congested = False
    if deps.judge is not None and pinged and not lead.test:
        congested = deps.judge.heard(ping_timings(pinged), settings.tmax_ms)
    for result in pinged:
        offers.extend(_record_ping(state, deps.health, result, congested))

    ranking = rank(offers, rules)
    for offer in ranking.below_floor:
        state.results[offer.campaign_id].reason = Reason.BELOW_FLOOR
    # Reservations count in the period of the post, not of the screening: the claim (and
    # a slow backstop read) came between them, perhaps across an hour or a day.
    posted_at = datetime.now(UTC)
    await _post_down_the_order(deps, catalog, publisher, state, ranking.groups, deadline, posted_at)
    if state.posts:
        state.progress.mark("posted", deadline.elapsed_ms())
    return _finish(state, publisher, auction_ms)


def _record_ping(
    state: _State, health: BuyerHealth, result: PingResult, congested: bool
) -> list[Offer]:
    answer = result.answer
    target = result.target
    ok = answer.outcome in (Reason.BID, Reason.NO_BID)
    if ok or not congested:
        health.record(target.buyer.id, ok)
    _note(
        state,
        target,
        answer.outcome,
        answer.outcome,
        ping_id=result.ping_id,
        price=answer.price_cents,
        bid_id=answer.bid_id,
        latency=result.latency_ms,
        detail=answer.reason,
    )
    if answer.outcome is Reason.BID and answer.price_cents is not None:
        return [_offer(target, answer.price_cents, answer.bid_id, result.ping_id)]
    return []


async def _post_down_the_order(
    deps: AuctionDeps,
    catalog: Catalog,
    publisher: Publisher,
    state: _State,
    groups: tuple[tuple[Offer, ...], ...],
    deadline: Deadline,
    now: datetime,
) -> None:
    order = list(flatten(groups))
    full_lead = state.lead.full()
    position = 0
    for group in groups:
        if len(group) > 1 and state.needs_more():
            # Equal offers share the leads by weight; the pick is shared across workers.
            group_key = f"{state.lead.vertical}:{state.rules.mode}"
            first = await pick_first(deps.redis, deps.prefix, group_key, group)
            order[position : position + len(group)] = order_group(group, first)
        for index in range(position, position + len(group)):
            await _try_offer(deps, catalog, state, order, index, full_lead, deadline, now)
        position += len(group)


async def _try_offer(
    deps: AuctionDeps,
    catalog: Catalog,
    state: _State,
    order: list[Offer],
    index: int,
    full_lead: dict[str, Any],
    deadline: Deadline,
    now: datetime,
) -> None:
    offer = order[index]
    result = state.results[offer.campaign_id]
    if not state.needs_more():
        result.reason = Reason.OUTBID
        return
    if offer.buyer_id in state.holders:
        result.reason = Reason.DUPLICATE_BUYER
        return
    remaining = deadline.remaining_ms()
    if remaining < _MIN_POST_MS:
        result.reason = Reason.NO_TIME
        result.detail = "deadline reached before its post"
        return
    target = catalog.targets[offer.campaign_id]
    price = price_for(order, index, state.rules)
    reservation: Reservation | None = None
    if not state.lead.test:
        reservation = await deps.caps.reserve(target, price, now)
        if reservation is None:
            result.reason = Reason.CAPPED
            result.detail = "cap or budget reached before its post"
            return
    timeout = min(float(catalog.settings.post_timeout_ms), remaining)
    attempt = await post_lead(
        deps.transport, target, offer, price, state.lead, full_lead, timeout, state.progress
    )
    result.reason = attempt.reason
    if attempt.detail:
        result.detail = attempt.detail
    held = attempt.state == "unknown"
    state.posts.append(
        PostResult(
            offer.buyer_id,
            offer.campaign_id,
            price,
            attempt.state,
            attempt.detail,
            attempt.buyer_lead_id,
            attempt.latency_ms,
            reservation.to_json() if (held and reservation is not None) else None,
        )
    )
    if attempt.state == "accepted":
        state.holders.add(offer.buyer_id)
        state.sales.append(SaleResult(offer.buyer_id, offer.campaign_id, price, 0))
    elif held:
        state.holders.add(offer.buyer_id)
        state.unknown = True
        if state.vertical.exclusive:
            state.stopped = True  # the buyer may hold it: an exclusive lead goes nowhere else
    elif reservation is not None:
        await deps.caps.release(reservation)


def _finish(state: _State, publisher: Publisher, auction_ms: float) -> Outcome:
    lead = state.lead
    sales = [
        dataclasses.replace(s, payout_cents=payout_for(publisher, s.price_cents, first=(i == 0)))
        for i, s in enumerate(state.sales)
    ]
    if lead.test:
        sales = [dataclasses.replace(s, payout_cents=0) for s in sales]
    campaigns = list(state.results.values())
    if state.unknown:
        status, reason = "pending", "a buyer has not confirmed its post; settling"
    elif sales:
        status, reason = "sold", None
    else:
        status, reason = "unsold", _unsold_reason(campaigns)
    return Outcome(status, reason, campaigns, state.posts, sales, auction_ms)  # type: ignore[arg-type]


def payout_for(publisher: Publisher, price_cents: int, *, first: bool) -> int:
    """The publisher's share of one sale: a revshare of each, or a fixed amount once per lead."""
    if publisher.payout.revshare is not None:
        return share_of(price_cents, publisher.payout.revshare)
    return (publisher.payout.fixed or 0) if first else 0


def _unsold_reason(campaigns: list[CampaignResult]) -> str:
    reasons = {c.reason for c in campaigns}
    if not campaigns:
        return "no buyer campaigns in this vertical"
    if reasons & {Reason.POST_REJECTED, Reason.POST_FAILED}:
        return "every post was rejected or failed"
    if Reason.BELOW_FLOOR in reasons:
        return "no bid at or above the floor"
    if reasons <= {Reason.FILTERED, Reason.SCHEDULE, Reason.PAUSED, Reason.CAPPED}:
        return "no eligible buyer"
    return "no bids"


def _offer(target: Target, price: int, bid_id: str | None, ping_id: str) -> Offer:
    c = target.campaign
    return Offer(c.id, target.buyer.id, price, c.tier, c.weight, c.price or 0, bid_id, ping_id)


def _note(
    state: _State,
    target: Target,
    outcome: Reason,
    reason: Reason,
    *,
    ping_id: str | None = None,
    price: int | None = None,
    bid_id: str | None = None,
    latency: float | None = None,
    detail: str | None = None,
) -> None:
    state.results[target.campaign.id] = CampaignResult(
        ping_id or state.ids(),
        target.buyer.id,
        target.campaign.id,
        outcome,
        reason,
        price,
        bid_id,
        latency,
        detail,
    )
