"""``demo --buyers N``: N more simulated buyers, each with a campaign in every vertical."""

from __future__ import annotations

from typing import Any

from exchange.catalog.models import Buyer, Campaign, Config

SIM_SECRET = "sim-buyer-demo-secret"


def sim_buyer_ids(count: int) -> list[str]:
    return [f"sim-{i:02d}" for i in range(1, count + 1)]


def sim_buyer_specs(count: int) -> list[Any]:
    """Fleet specs for the extra buyers, served on the fleet's shared port."""
    from loadtests.buyer import BuyerSpec, Latency

    return [
        BuyerSpec(bid, secret=SIM_SECRET, latency=Latency.uniform(15, 120), bid_probability=0.7)
        for bid in sim_buyer_ids(count)
    ]


def with_sim_buyers(config: Config, fleet: Any, count: int) -> Config:
    """The config plus the extra buyers, at the URLs the fleet gave them."""
    if count <= 0:
        return config
    extra = [
        Buyer(
            id=bid,
            secret=SIM_SECRET,
            ping_url=fleet.ping_url(bid),
            post_url=fleet.post_url(bid),
            timeout_ms=200,
            campaigns=tuple(
                Campaign(id=f"{bid}-{vertical}", vertical=vertical) for vertical in config.verticals
            ),
        )
        for bid in sim_buyer_ids(count)
    ]
    return config.model_copy(update={"buyers": (*config.buyers, *extra)})
