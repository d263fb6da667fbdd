"""What a lead waits for before its pings: the Redis claim, with the read of its campaigns'
caps beside it rather than after it (one round trip less for every capped lead)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.api.conftest import OpenMarket
from tests.kit.buyers import Buyer
from tests.kit.exchange import buyer_entry, campaign, lead_body

DELAY_S = 0.15  # each store call is held this long: in turn they would take twice that


def _capped(buyer: Buyer) -> dict[str, Any]:
    return buyer_entry(buyer, [campaign(buyer, caps={"daily": 5})])


async def test_the_caps_are_read_while_the_claim_runs(
    market: OpenMarket, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = await market(Buyer("acme", "secret-acme-123", price=20), entry=_capped)
    rt = m.ex.runtime
    real_claim, real_capped = rt.guard.claim, rt.auction.caps.capped
    seen: dict[str, float] = {}

    async def slow_claim(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(DELAY_S)
        seen["claim_done"] = time.perf_counter()
        return await real_claim(*args, **kwargs)

    async def slow_capped(*args: Any, **kwargs: Any) -> Any:
        seen["caps_started"] = time.perf_counter()
        await asyncio.sleep(DELAY_S)
        return await real_capped(*args, **kwargs)

    monkeypatch.setattr(rt.guard, "claim", slow_claim)
    monkeypatch.setattr(rt.auction.caps, "capped", slow_capped)
    resp, took_ms = await m.timed_submit(lead_body())

    assert resp.json()["status"] == "sold"
    assert m.pings_seen() == {"acme": 1} and m.posts_seen() == {"acme": 1}
    assert seen["caps_started"] < seen["claim_done"]
    assert took_ms < 2 * DELAY_S * 1000 - 20, took_ms  # not one after the other


async def test_a_capped_campaign_found_by_the_early_read_is_not_pinged(
    market: OpenMarket,
) -> None:
    one = Buyer("acme", "secret-acme-123", price=20)
    m = await market(one, entry=lambda b: buyer_entry(b, [campaign(b, caps={"daily": 1})]))
    first = (await m.ex.submit(lead_body())).json()
    second = (await m.ex.submit(lead_body())).json()
    assert (first["status"], second["status"]) == ("sold", "unsold")
    assert m.pings_seen() == {"acme": 1} and m.posts_seen() == {"acme": 1}
    story = await m.ex.story(second["lead_id"])
    assert [(p["campaign_id"], p["outcome"]) for p in story["pings"]] == [("acme-c", "capped")]


async def test_a_lead_without_consent_reads_no_caps(
    market: OpenMarket, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = await market(Buyer("acme", "secret-acme-123", price=20), entry=_capped)
    caps = m.ex.runtime.auction.caps
    real_capped = caps.capped
    reads = 0

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return await real_capped(*args, **kwargs)

    monkeypatch.setattr(caps, "capped", counted)
    body = lead_body()
    body["consent"] = {**body["consent"], "tcpa": False}
    answer = (await m.ex.submit(body)).json()
    assert answer["status"] == "rejected" and reads == 0
    assert m.pings_seen() == {"acme": 0}


async def test_the_story_shows_when_each_phase_of_the_lead_ended(
    market: OpenMarket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator asking why an answer was slow: a 60 ms claim, 100 ms pings, a 50 ms post."""
    m = await market(Buyer("acme", "secret-acme-123", price=20, delay_s=0.1, post_delay_s=0.05))
    guard = m.ex.runtime.guard
    real_claim = guard.claim

    async def slow_claim(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.06)
        return await real_claim(*args, **kwargs)

    monkeypatch.setattr(guard, "claim", slow_claim)
    answer = (await m.ex.submit(lead_body())).json()
    assert answer["status"] == "sold"
    story = await m.ex.story(answer["lead_id"])
    t = story["timeline_ms"]
    assert set(t) == {"claimed", "pings_sent", "pinged", "posted"}
    assert 60 <= t["claimed"] <= t["pings_sent"] < t["pinged"] < t["posted"]
    assert 100 <= t["pinged"] - t["pings_sent"] < 200, t
    assert t["posted"] - t["pinged"] >= 50, t
    assert t["posted"] <= story["duration_ms"] + 1  # duration is rounded to the ms

    body = lead_body()
    body["consent"] = {**body["consent"], "tcpa": False}
    rejected = (await m.ex.submit(body)).json()
    assert rejected["status"] == "rejected"
    assert set((await m.ex.story(rejected["lead_id"]))["timeline_ms"]) == {"claimed"}


async def test_a_lead_sold_without_pings_has_no_ping_phase_in_its_timeline(
    market: OpenMarket,
) -> None:
    dove = Buyer("dove", "secret-dove-123")
    m = await market(
        dove, entry=lambda b: buyer_entry(b, [campaign(b, price="9.00")], post_only=True)
    )
    answer = (await m.ex.submit(lead_body())).json()
    assert answer["status"] == "sold" and dove.pings == [] and len(dove.posts) == 1
    timeline = (await m.ex.story(answer["lead_id"]))["timeline_ms"]
    assert set(timeline) == {"claimed", "posted"}
    assert timeline["claimed"] <= timeline["posted"]
