"""The auction's ranking: offers + the vertical's rules -> tie groups, posting order, prices.

Pure functions over integer cents: no I/O, no clock, no randomness. Ties are returned as
groups, never broken here, because the split among equal offers (by ``weight``) is a
smooth weighted round robin whose state is shared across workers and lives with the caller.

Usage::

    ranking = rank(offers, rules)
    firsts = {i: swrr_pick(g) for i, g in enumerate(ranking.groups) if i in ranking.ties}
    order = flatten(ranking.groups, firsts)
    sold: set[str] = set()
    for i in candidates(order, sold):
        if len(sold) >= rules.max_sells:
            break
        if post(order[i], price_for(order, i, rules)) is accepted:
            sold.add(order[i].buyer_id)
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby

from exchange.auction.types import Offer, RankRules

__all__ = [
    "Ranking",
    "candidates",
    "flatten",
    "floor_for",
    "order_group",
    "price_for",
    "rank",
]


@dataclass(frozen=True, slots=True)
class Ranking:
    """Eligible offers as tie groups (best first) and the offers that can never win.

    Each group holds offers equal under the rules (same price; same tier too in priority
    mode), listed in the canonical order: weight desc, then campaign_id.
    """

    groups: tuple[tuple[Offer, ...], ...]
    below_floor: tuple[Offer, ...]

    @property
    def ties(self) -> frozenset[int]:
        """Indices of the groups holding more than one offer: the ones that need a pick."""
        return frozenset(i for i, group in enumerate(self.groups) if len(group) > 1)

    @property
    def eligible(self) -> tuple[Offer, ...]:
        """Every offer that may win, in canonical order (no tie picks applied)."""
        return tuple(offer for group in self.groups for offer in group)


def floor_for(offer: Offer, rules: RankRules) -> int:
    """The least this offer may pay: the vertical's floor or the campaign's own, the higher."""
    return max(rules.floor_cents, offer.min_price_cents)


def _tie_key(offer: Offer, rules: RankRules) -> tuple[int, ...]:
    """Sorts best first; offers with equal keys are equal offers (one tie group)."""
    if rules.mode == "priority":
        return (offer.tier, -offer.price_cents)
    return (-offer.price_cents,)


def _canonical_key(offer: Offer) -> tuple[int, str]:
    """Within a tie group: heavier campaigns first, campaign_id for a total order."""
    return (-offer.weight, offer.campaign_id)


def rank(offers: Iterable[Offer], rules: RankRules) -> Ranking:
    """Split offers at the floor and group the eligible ones, best first.

    The result depends on the set of offers only, not on their input order. Campaign ids
    must be unique (one ping per campaign); a duplicate is a caller bug and raises.
    """
    offers = tuple(offers)
    seen: set[str] = set()
    for offer in offers:
        if offer.campaign_id in seen:
            raise ValueError(f"campaign {offer.campaign_id!r} offered twice")
        seen.add(offer.campaign_id)
    eligible = [o for o in offers if o.price_cents >= floor_for(o, rules)]
    eligible.sort(key=lambda o: (_tie_key(o, rules), _canonical_key(o)))
    groups = tuple(tuple(g) for _, g in groupby(eligible, key=lambda o: _tie_key(o, rules)))
    below = sorted(
        (o for o in offers if o.price_cents < floor_for(o, rules)),
        key=lambda o: (-o.price_cents, o.campaign_id),
    )
    return Ranking(groups=groups, below_floor=tuple(below))


def order_group(group: Sequence[Offer], first_campaign_id: str | None) -> tuple[Offer, ...]:
    """A tie group in posting order: the chosen campaign first, the rest canonically.

    ``None`` means no pick was made (a lone offer, or the caller has no preference).
    """
    rest = sorted(group, key=_canonical_key)
    if first_campaign_id is None:
        return tuple(rest)
    for i, offer in enumerate(rest):
        if offer.campaign_id == first_campaign_id:
            return (offer, *rest[:i], *rest[i + 1 :])
    raise ValueError(f"campaign {first_campaign_id!r} is not in this tie group")


def flatten(
    groups: Sequence[Sequence[Offer]], firsts: Mapping[int, str] | None = None
) -> tuple[Offer, ...]:
    """The final posting order: groups best first, each led by ``firsts[group index]``."""
    firsts = firsts or {}
    stray = [i for i in firsts if not 0 <= i < len(groups)]
    if stray:
        raise ValueError(f"no tie group at index {stray[0]}")
    return tuple(
        offer for i, group in enumerate(groups) for offer in order_group(group, firsts.get(i))
    )


def price_for(order: Sequence[Offer], index: int, rules: RankRules) -> int:
    """What the offer at ``order[index]`` pays if its post is accepted, in cents.

    ``first_price``: its bid. ``second_price``: the next offer after it in ``order`` from a
    different buyer, plus one cent (its floor when there is none), kept within
    [its floor, its bid]. In priority mode that next offer may bid more; the cap handles it.
    """
    if not 0 <= index < len(order):
        raise IndexError(f"position {index} is outside an order of {len(order)} offers")
    offer = order[index]
    floor = floor_for(offer, rules)
    if offer.price_cents < floor:
        raise ValueError(f"campaign {offer.campaign_id!r} bids below its floor and cannot win")
    if rules.pricing == "first_price":
        return offer.price_cents
    runner_up = next((o for o in order[index + 1 :] if o.buyer_id != offer.buyer_id), None)
    wanted = floor if runner_up is None else runner_up.price_cents + 1
    return min(offer.price_cents, max(floor, wanted))


def candidates(order: Sequence[Offer], sold_buyers: Collection[str]) -> Iterator[int]:
    """Indices of ``order`` to post to, in turn, skipping buyers that already bought.

    ``sold_buyers`` is read lazily before each yield, so the posting loop adds a buyer to
    it after an accepted post and that buyer's later campaigns are skipped. Stopping at
    ``max_sells`` (or on an unknown post) is the loop's call.
    """
    for i, offer in enumerate(order):
        if offer.buyer_id not in sold_buyers:
            yield i
