"""Filters and schedules through the running exchange: a campaign that fails one is never
pinged (its buyer sees nothing) and its story names why."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from exchange.catalog.models import WEEKDAYS
from tests.kit.exchange import buyer_entry, campaign
from tests.routing_e2e.conftest import OpenExchange, StartBuyer
from tests.routing_e2e.harness import (
    NY_CONTACT,
    closed_days,
    config,
    lead,
    pings_by_campaign,
    reasons,
    sales_of,
    sell,
)

# buyer id -> (its bid, its campaign's filters or schedule). "_in" campaigns admit the
# default lead (CA 94105, age 34, credit good); "_out" ones admit the NY lead below.
CAMPAIGNS: dict[str, tuple[str, dict[str, object]]] = {
    "st_in": ("11.00", {"filters": {"states": ["CA", "NV"]}}),
    "st_out": ("50.00", {"filters": {"states": ["NY"]}}),
    "zip_in": ("12.00", {"filters": {"zips": ["941*"]}}),
    "zip_out": ("51.00", {"filters": {"zips": ["100*", "90210"]}}),
    "rad_in": ("13.00", {"filters": {"radius": {"zip": "94612", "miles": 25}}}),
    "rad_out": ("52.00", {"filters": {"radius": {"zip": "10001", "miles": 100}}}),
    "rule_in": (
        "14.00",
        {
            "filters": {
                "rules": [
                    {"field": "age", "op": "gte", "value": 21},
                    {"field": "credit", "op": "in", "value": ["excellent", "good"]},
                ]
            }
        },
    ),
    "rule_out": ("53.00", {"filters": {"rules": [{"field": "age", "op": "gte", "value": 50}]}}),
    "sch_in": (
        "15.00",
        {"schedule": {"tz": "America/Los_Angeles", "days": list(WEEKDAYS), "hours": "00:00-24:00"}},
    ),
}
CA_ADMITS = {"st_in", "zip_in", "rad_in", "rule_in", "sch_in"}
# The NY lead is 55 with fair credit: the geographic "_out" campaigns and rule_out admit it.
NY_ADMITS = {"st_out", "zip_out", "rad_out", "rule_out", "sch_in"}


async def test_each_filter_kind_admits_or_excludes_without_a_ping(
    start_buyer: StartBuyer, open_exchange: OpenExchange, pg: asyncpg.Connection
) -> None:
    buyers = {bid: await start_buyer(bid, price=price) for bid, (price, _) in CAMPAIGNS.items()}
    closed = await start_buyer("sch_out", price="99.00")
    entries = [
        buyer_entry(buyers[bid], [campaign(buyers[bid], **fields)])
        for bid, (_, fields) in CAMPAIGNS.items()
    ]
    schedule = {"tz": "UTC", "days": closed_days(), "hours": "00:00-24:00"}
    entries.append(buyer_entry(closed, [campaign(closed, schedule=schedule)]))
    ex = await open_exchange(config(entries))

    ca = await sell(ex, lead())
    assert ca["status"] == "sold", ca
    ca_story = await ex.story(ca["lead_id"])
    assert await sales_of(pg, ca["lead_id"]) == [("sch_in", "sch_in-c", 1500)]
    expected = {f"{bid}-c": "filtered" for bid in CAMPAIGNS if bid not in CA_ADMITS}
    expected |= {f"{bid}-c": "outbid" for bid in CA_ADMITS} | {"sch_in-c": "sold"}
    expected["sch_out-c"] = "schedule"
    assert reasons(ca_story) == expected
    pings = pings_by_campaign(ca_story)
    assert pings["st_out-c"]["detail"] and "CA" in pings["st_out-c"]["detail"]
    assert pings["rule_in-c"]["outcome"] == "bid" and pings["rule_in-c"]["price"] == "14.00"

    ny = await sell(ex, lead(contact=NY_CONTACT, age=55, credit="fair"))
    assert ny["status"] == "sold", ny
    assert await sales_of(pg, ny["lead_id"]) == [("rule_out", "rule_out-c", 5300)]
    ny_reasons = reasons(await ex.story(ny["lead_id"]))
    assert {cid for cid, r in ny_reasons.items() if r == "filtered"} == {
        f"{bid}-c" for bid in CAMPAIGNS if bid not in NY_ADMITS
    }
    assert ny_reasons["sch_out-c"] == "schedule"

    # What the buyers saw: a ping only for the lead their campaign admits, never otherwise.
    for bid, buyer in buyers.items():
        seen = [p["lead"]["state"] for p in buyer.pings]
        wanted = [s for s, admits in (("CA", CA_ADMITS), ("NY", NY_ADMITS)) if bid in admits]
        assert seen == wanted, bid
    assert closed.pings == [] and closed.posts == []
    assert buyers["rule_out"].pings[0]["lead"]["profile"]["age"] == 55


async def test_schedule_open_hours_exclude_the_current_hour(
    start_buyer: StartBuyer, open_exchange: OpenExchange, pg: asyncpg.Connection
) -> None:
    """A window on every day but hours away from now: the hours check, not just the days."""
    hours = "20:00-23:00" if datetime.now(UTC).hour < 12 else "02:00-05:00"
    later = await start_buyer("later", price="40.00")
    open_ = await start_buyer("open", price="10.00")
    entries = [
        buyer_entry(later, [campaign(later, schedule={"tz": "UTC", "hours": hours})]),
        buyer_entry(open_),
    ]
    ex = await open_exchange(config(entries))
    answer = await sell(ex, lead())
    assert reasons(await ex.story(answer["lead_id"])) == {"later-c": "schedule", "open-c": "sold"}
    assert await sales_of(pg, answer["lead_id"]) == [("open", "open-c", 1000)]
    assert later.pings == [] and len(open_.pings) == 1
