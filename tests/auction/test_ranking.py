"""The ranking on every case: floors, ties, tiers, both pricings, shared leads, and properties."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange.auction.ranking import (
    Ranking,
    candidates,
    flatten,
    floor_for,
    order_group,
    price_for,
    rank,
)
from exchange.auction.types import Mode, Offer, RankRules

FIRST = RankRules(floor_cents=200, pricing="first_price")
SECOND = RankRules(floor_cents=200, pricing="second_price")


def offer(
    cid: str, cents: int, buyer: str | None = None, *, tier: int = 1, weight: int = 1, min_: int = 0
) -> Offer:
    return Offer(
        campaign_id=cid,
        buyer_id=buyer or f"b-{cid}",
        price_cents=cents,
        tier=tier,
        weight=weight,
        min_price_cents=min_,
    )


def ids(offers: tuple[Offer, ...] | list[Offer]) -> list[str]:
    return [o.campaign_id for o in offers]


def group_ids(ranking: Ranking) -> list[list[str]]:
    return [ids(g) for g in ranking.groups]


def prices(order: tuple[Offer, ...], rules: RankRules) -> list[int]:
    return [price_for(order, i, rules) for i in range(len(order))]


# ---------------------------------------------------------------- eligibility and order


def test_no_offers_ranks_to_nothing() -> None:
    ranking = rank([], FIRST)
    assert ranking == Ranking(groups=(), below_floor=())
    assert ranking.ties == frozenset()
    assert flatten(ranking.groups) == ()


def test_all_below_the_vertical_floor_win_nothing() -> None:
    ranking = rank([offer("a", 199), offer("b", 50), offer("c", 0)], FIRST)
    assert ranking.groups == ()
    assert ids(ranking.below_floor) == ["a", "b", "c"]


def test_an_offer_exactly_at_the_floor_is_eligible() -> None:
    ranking = rank([offer("a", 200), offer("b", 199)], FIRST)
    assert group_ids(ranking) == [["a"]]
    assert ids(ranking.below_floor) == ["b"]


def test_the_campaign_floor_excludes_a_bid_above_the_vertical_floor() -> None:
    ranking = rank([offer("a", 900, min_=1000), offer("b", 500, min_=500)], FIRST)
    assert group_ids(ranking) == [["b"]]
    assert ids(ranking.below_floor) == ["a"]


def test_the_vertical_floor_excludes_a_bid_above_the_campaign_floor() -> None:
    ranking = rank([offer("a", 150, min_=100)], FIRST)
    assert ranking.groups == ()
    assert ids(ranking.below_floor) == ["a"]


def test_auction_orders_by_price_highest_first_ignoring_tier() -> None:
    offers = [offer("low", 300, tier=1), offer("high", 900, tier=3), offer("mid", 500, tier=2)]
    assert group_ids(rank(offers, FIRST)) == [["high"], ["mid"], ["low"]]


def test_priority_puts_a_better_tier_before_a_higher_price() -> None:
    rules = RankRules(mode="priority", floor_cents=200)
    offers = [
        offer("t2-rich", 5000, tier=2),
        offer("t1-poor", 300, tier=1),
        offer("t1-rich", 800, tier=1),
        offer("t3", 9000, tier=3),
    ]
    assert group_ids(rank(offers, rules)) == [["t1-rich"], ["t1-poor"], ["t2-rich"], ["t3"]]


def test_priority_still_drops_offers_below_the_floor() -> None:
    rules = RankRules(mode="priority", floor_cents=200)
    ranking = rank([offer("t1", 100, tier=1), offer("t2", 300, tier=2)], rules)
    assert group_ids(ranking) == [["t2"]]
    assert ids(ranking.below_floor) == ["t1"]


def test_a_tie_at_the_top_is_one_group_in_canonical_order() -> None:
    offers = [offer("b", 1000, weight=1), offer("a", 1000, weight=1), offer("c", 1000, weight=3)]
    ranking = rank([*offers, offer("d", 500)], FIRST)
    assert group_ids(ranking) == [["c", "a", "b"], ["d"]]
    assert ranking.ties == frozenset({0})


def test_a_tie_in_the_middle_is_its_own_group() -> None:
    offers = [offer("top", 2000), offer("m1", 1000), offer("m2", 1000), offer("low", 300)]
    ranking = rank(offers, FIRST)
    assert group_ids(ranking) == [["top"], ["m1", "m2"], ["low"]]
    assert ranking.ties == frozenset({1})


def test_auction_ties_across_tiers_but_priority_does_not() -> None:
    offers = [offer("a", 1000, tier=1), offer("b", 1000, tier=2)]
    assert group_ids(rank(offers, FIRST)) == [["a", "b"]]
    priority = RankRules(mode="priority", floor_cents=200)
    assert group_ids(rank(offers, priority)) == [["a"], ["b"]]


def test_a_campaign_offered_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="offered twice"):
        rank([offer("a", 500), offer("a", 600)], FIRST)


def test_post_only_fixed_prices_compete_as_plain_offers() -> None:
    fixed = offer("post-only", 2000, "fixedco", min_=2000)
    bidder = offer("bidder", 2500, "bidco")
    low = offer("low-bidder", 1500, "lowco")
    order = flatten(rank([fixed, bidder, low], SECOND).groups)
    assert ids(order) == ["bidder", "post-only", "low-bidder"]
    assert prices(order, SECOND) == [2001, 2000, 200]
    assert prices(order, FIRST) == [2500, 2000, 1500]


def test_a_post_only_offer_always_pays_its_fixed_price_under_second_price() -> None:
    fixed = offer("post-only", 2000, "fixedco", min_=2000)
    alone = flatten(rank([fixed], SECOND).groups)
    assert prices(alone, SECOND) == [2000]
    beaten_below = flatten(rank([fixed, offer("x", 300)], SECOND).groups)
    assert prices(beaten_below, SECOND)[0] == 2000


# ---------------------------------------------------------------- tie groups -> one order


def test_order_group_puts_the_pick_first_then_weight_then_id() -> None:
    group = (offer("a", 1000, weight=1), offer("b", 1000, weight=5), offer("c", 1000, weight=1))
    assert ids(order_group(group, "c")) == ["c", "b", "a"]
    assert ids(order_group(group, "b")) == ["b", "a", "c"]
    assert ids(order_group(group, None)) == ["b", "a", "c"]


def test_order_group_refuses_a_pick_outside_the_group() -> None:
    with pytest.raises(ValueError, match="not in this tie group"):
        order_group((offer("a", 1000),), "zzz")


def test_flatten_applies_each_pick_to_its_own_group() -> None:
    offers = [offer(c, p) for c, p in [("t1", 900), ("t2", 900), ("m", 500), ("l1", 300)]]
    offers.append(offer("l2", 300))
    groups = rank(offers, FIRST).groups
    assert ids(flatten(groups, {0: "t2", 2: "l2"})) == ["t2", "t1", "m", "l2", "l1"]
    assert ids(flatten(groups)) == ["t1", "t2", "m", "l1", "l2"]


def test_flatten_refuses_a_pick_for_a_missing_group() -> None:
    groups = rank([offer("a", 900)], FIRST).groups
    with pytest.raises(ValueError, match="no tie group at index 1"):
        flatten(groups, {1: "a"})


# ---------------------------------------------------------------- pricing


def test_first_price_pays_each_own_bid() -> None:
    order = flatten(rank([offer("a", 2000), offer("b", 1500), offer("c", 200)], FIRST).groups)
    assert prices(order, FIRST) == [2000, 1500, 200]


def test_second_price_pays_the_runner_up_plus_a_cent() -> None:
    order = flatten(rank([offer("a", 2000), offer("b", 1500)], SECOND).groups)
    assert prices(order, SECOND) == [1501, 200]


def test_second_price_with_a_single_bid_pays_the_floor() -> None:
    order = flatten(rank([offer("a", 2000)], SECOND).groups)
    assert prices(order, SECOND) == [200]


def test_second_price_with_a_single_bid_pays_its_own_campaign_floor() -> None:
    order = flatten(rank([offer("a", 2000, min_=1000)], SECOND).groups)
    assert prices(order, SECOND) == [1000]


def test_second_price_with_an_equal_runner_up_pays_its_own_bid() -> None:
    order = flatten(rank([offer("a", 1500), offer("b", 1500)], SECOND).groups)
    assert prices(order, SECOND) == [1500, 200]


def test_second_price_is_lifted_to_the_campaign_floor() -> None:
    order = flatten(rank([offer("a", 2000, min_=1800), offer("b", 500)], SECOND).groups)
    assert prices(order, SECOND) == [1800, 200]


def test_second_price_skips_the_same_buyers_next_campaign() -> None:
    offers = [offer("a1", 2000, "acme"), offer("a2", 1800, "acme"), offer("z", 900, "zeta")]
    order = flatten(rank(offers, SECOND).groups)
    assert ids(order) == ["a1", "a2", "z"]
    assert prices(order, SECOND) == [901, 901, 200]


def test_second_price_with_only_the_same_buyer_after_pays_the_floor() -> None:
    order = flatten(rank([offer("a1", 2000, "acme"), offer("a2", 1800, "acme")], SECOND).groups)
    assert prices(order, SECOND) == [200, 200]


def test_second_price_in_a_ping_tree_is_capped_at_the_winners_bid() -> None:
    rules = RankRules(mode="priority", floor_cents=200, pricing="second_price")
    offers = [offer("t1", 1000, tier=1), offer("t2", 3000, tier=2), offer("t3", 400, tier=3)]
    order = flatten(rank(offers, rules).groups)
    assert ids(order) == ["t1", "t2", "t3"]
    assert prices(order, rules) == [1000, 401, 200]


def test_second_price_follows_the_tie_pick() -> None:
    offers = [offer("a", 1500), offer("b", 1500), offer("c", 700)]
    groups = rank(offers, SECOND).groups
    assert prices(flatten(groups, {0: "b"}), SECOND) == [1500, 701, 200]


def test_floor_for_is_the_higher_of_the_two_floors() -> None:
    assert floor_for(offer("a", 0, min_=150), FIRST) == 200
    assert floor_for(offer("a", 0, min_=250), FIRST) == 250


def test_price_for_refuses_a_position_outside_the_order() -> None:
    order = flatten(rank([offer("a", 900)], FIRST).groups)
    for bad in (-1, 1):
        with pytest.raises(IndexError):
            price_for(order, bad, FIRST)
    with pytest.raises(IndexError):
        price_for((), 0, SECOND)


def test_price_for_refuses_an_offer_below_its_floor() -> None:
    with pytest.raises(ValueError, match="below its floor"):
        price_for((offer("a", 150),), 0, SECOND)


# ---------------------------------------------------------------- shared leads, posting loop


def post_all(
    order: tuple[Offer, ...], rules: RankRules, accepting: set[str]
) -> list[tuple[str, int]]:
    """The posting loop as the caller writes it: sequential, with fallbacks on reject."""
    sold: set[str] = set()
    sales: list[tuple[str, int]] = []
    for i in candidates(order, sold):
        if len(sold) >= rules.max_sells:
            break
        if order[i].campaign_id in accepting:
            sold.add(order[i].buyer_id)
            sales.append((order[i].campaign_id, price_for(order, i, rules)))
    return sales


def test_shared_lead_goes_to_the_best_n_distinct_buyers() -> None:
    rules = RankRules(floor_cents=200, max_sells=3)
    offers = [
        offer("a1", 3000, "acme"),
        offer("a2", 2900, "acme"),
        offer("b1", 2500, "beta"),
        offer("c1", 2000, "gamma"),
        offer("d1", 1000, "delta"),
    ]
    order = flatten(rank(offers, rules).groups)
    sales = post_all(order, rules, accepting={o.campaign_id for o in offers})
    assert sales == [("a1", 3000), ("b1", 2500), ("c1", 2000)]


def test_shared_second_price_each_pays_its_own_price() -> None:
    rules = RankRules(floor_cents=200, max_sells=2, pricing="second_price")
    offers = [offer("a", 3000), offer("b", 2500), offer("c", 1000)]
    order = flatten(rank(offers, rules).groups)
    assert post_all(order, rules, accepting={"a", "b", "c"}) == [("a", 2501), ("b", 1001)]


def test_a_rejected_post_falls_back_to_the_same_buyers_next_campaign() -> None:
    rules = RankRules(floor_cents=200, max_sells=2)
    offers = [offer("a1", 3000, "acme"), offer("a2", 2800, "acme"), offer("b", 1000, "beta")]
    order = flatten(rank(offers, rules).groups)
    assert post_all(order, rules, accepting={"a2", "b"}) == [("a2", 2800), ("b", 1000)]


def test_exclusive_stops_at_the_first_sale() -> None:
    order = flatten(rank([offer("a", 3000), offer("b", 2000)], FIRST).groups)
    assert post_all(order, FIRST, accepting={"a", "b"}) == [("a", 3000)]
    assert post_all(order, FIRST, accepting={"b"}) == [("b", 2000)]
    assert post_all(order, FIRST, accepting=set()) == []


def test_candidates_reads_the_sold_set_as_it_grows() -> None:
    order = (offer("a1", 900, "acme"), offer("b", 800, "beta"), offer("a2", 700, "acme"))
    sold: set[str] = set()
    walk = candidates(order, sold)
    assert next(walk) == 0
    sold.add("acme")
    assert list(walk) == [1]
    assert list(candidates(order, {"beta"})) == [0, 2]


# ---------------------------------------------------------------- properties

Case = tuple[list[Offer], RankRules, Ranking, tuple[Offer, ...]]
BUYERS = ["acme", "beta", "gamma", "delta"]


@st.composite
def offer_sets(draw: st.DrawFn) -> list[Offer]:
    """Small offer sets with few buyers and few distinct prices, so ties and repeats abound."""
    n = draw(st.integers(min_value=0, max_value=8))
    return [
        Offer(
            campaign_id=f"c{i}",
            buyer_id=draw(st.sampled_from(BUYERS)),
            price_cents=draw(st.sampled_from([0, 150, 200, 500, 1000, 1001, 2000])),
            tier=draw(st.integers(min_value=1, max_value=3)),
            weight=draw(st.integers(min_value=1, max_value=4)),
            min_price_cents=draw(st.sampled_from([0, 0, 300, 1000, 2000])),
        )
        for i in range(n)
    ]


def rule_sets(modes: tuple[Mode, ...] = ("auction", "priority")) -> st.SearchStrategy[RankRules]:
    return st.builds(
        RankRules,
        mode=st.sampled_from(modes),
        floor_cents=st.sampled_from([0, 200, 1000]),
        pricing=st.sampled_from(["first_price", "second_price"]),
        max_sells=st.integers(min_value=1, max_value=4),
    )


@st.composite
def final_orders(draw: st.DrawFn, modes: tuple[Mode, ...] = ("auction", "priority")) -> Case:
    """Offers, rules, their ranking and one final order under arbitrary tie picks."""
    offers = draw(offer_sets())
    rules = draw(rule_sets(modes))
    ranking = rank(offers, rules)
    firsts = {
        i: draw(st.sampled_from(ids(group)))
        for i, group in enumerate(ranking.groups)
        if draw(st.booleans())
    }
    return offers, rules, ranking, flatten(ranking.groups, firsts)


def sort_key(o: Offer) -> str:
    return o.campaign_id


@given(final_orders())
def test_prop_order_is_a_permutation_of_the_eligible(case: Case) -> None:
    offers, rules, ranking, order = case
    eligible = [o for o in offers if o.price_cents >= max(rules.floor_cents, o.min_price_cents)]
    assert sorted(order, key=sort_key) == sorted(eligible, key=sort_key)
    below = [o for o in offers if o not in eligible]
    assert sorted(ranking.below_floor, key=sort_key) == sorted(below, key=sort_key)


@given(final_orders())
def test_prop_groups_are_equal_inside_and_strictly_ordered_between(case: Case) -> None:
    _, rules, ranking, _ = case

    def key(o: Offer) -> tuple[int, ...]:
        return (o.tier, -o.price_cents) if rules.mode == "priority" else (-o.price_cents,)

    keys = [{key(o) for o in group} for group in ranking.groups]
    assert all(len(k) == 1 for k in keys)
    flat = [k.pop() for k in keys]
    assert flat == sorted(flat) and len(set(flat)) == len(flat)
    assert ranking.ties == {i for i, g in enumerate(ranking.groups) if len(g) > 1}


@given(final_orders())
def test_prop_prices_stay_between_the_floor_and_the_bid(case: Case) -> None:
    _, rules, _, order = case
    for i, o in enumerate(order):
        price = price_for(order, i, rules)
        assert max(rules.floor_cents, o.min_price_cents) <= price <= o.price_cents
        if rules.pricing == "first_price":
            assert price == o.price_cents


@given(final_orders(modes=("auction",)))
def test_prop_first_price_never_rises_along_an_auction_order(case: Case) -> None:
    _, rules, _, order = case
    first = prices(order, RankRules(mode="auction", floor_cents=rules.floor_cents))
    assert first == sorted(first, reverse=True)


@given(final_orders(modes=("auction",)))
def test_prop_second_price_in_an_auction_beats_every_later_rival(case: Case) -> None:
    """Auction order is by price, so the next rival is the best later rival: pay it + 1."""
    _, rules, _, order = case
    second = RankRules(mode="auction", floor_cents=rules.floor_cents, pricing="second_price")
    for i, o in enumerate(order):
        rivals = [r.price_cents for r in order[i + 1 :] if r.buyer_id != o.buyer_id]
        floor = max(rules.floor_cents, o.min_price_cents)
        expected = max(floor, max(rivals) + 1) if rivals else floor
        assert price_for(order, i, second) == min(o.price_cents, expected)


@given(offer_sets(), rule_sets(), st.randoms(use_true_random=False))
def test_prop_ranking_ignores_input_order(
    offers: list[Offer], rules: RankRules, rnd: random.Random
) -> None:
    shuffled = list(offers)
    rnd.shuffle(shuffled)
    again = rank(shuffled, rules)
    assert again == rank(offers, rules)
    as_sets = [frozenset(g) for g in again.groups]
    assert as_sets == [frozenset(g) for g in rank(reversed(offers), rules).groups]


@given(final_orders(), st.data())
def test_prop_posting_sells_to_distinct_buyers_up_to_max_sells(
    case: Case,
    data: st.DataObject,
) -> None:
    offers, rules, _, order = case
    accepting = data.draw(st.sets(st.sampled_from([o.campaign_id for o in offers] or ["-"])))
    sales = post_all(order, rules, accepting)
    by_id = {o.campaign_id: o for o in order}
    buyers = [by_id[cid].buyer_id for cid, _ in sales]
    assert len(buyers) == len(set(buyers))
    willing = {o.buyer_id for o in order if o.campaign_id in accepting}
    assert len(sales) == min(rules.max_sells, len(willing))
    positions = [ids(order).index(cid) for cid, _ in sales]
    assert positions == sorted(positions)


@given(final_orders())
def test_prop_a_tie_pick_only_reorders_inside_its_group(case: Case) -> None:
    _, _, ranking, order = case
    sizes = [len(g) for g in ranking.groups]
    start = 0
    for group, size in zip(ranking.groups, sizes, strict=True):
        chunk = order[start : start + size]
        assert set(chunk) == set(group)
        assert list(chunk[1:]) == [o for o in group if o != chunk[0]]
        start += size
