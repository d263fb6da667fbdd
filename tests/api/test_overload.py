"""Overload over HTTP: past max_leads_in_flight the excess is answered 503 at once."""

from __future__ import annotations

import asyncio

from tests.api.conftest import Market, OpenMarket
from tests.kit.buyers import Buyer
from tests.kit.exchange import lead_body


async def test_excess_leads_are_refused_at_once_with_retry_after(market: OpenMarket) -> None:
    m = await market(
        Buyer("slowbid", "secret-slow-1", price=20, delay_s=0.2),
        settings={"max_leads_in_flight": 2},
    )
    replies = await asyncio.gather(*(m.timed_submit(lead_body()) for _ in range(6)))
    statuses = sorted(r.status_code for r, _ in replies)
    assert statuses.count(200) >= 2 and statuses.count(503) >= 1, statuses
    for resp, ms in replies:
        if resp.status_code == 503:
            assert resp.headers["retry-after"] == "1"
            assert resp.headers["content-type"] == "application/problem+json"
            assert "in flight" in resp.json()["detail"]
            assert ms < 150, ms  # refused before any buyer was pinged, not after waiting
    # Nothing refused reached the buyers or Postgres.
    sold = [r.json()["lead_id"] for r, _ in replies if r.status_code == 200]
    assert len(m.buyers["slowbid"].pings) == len(sold)


async def test_leads_whose_buyers_all_answer_too_late_cut_the_cap(market: OpenMarket) -> None:
    """Most usually prompt buyers timing out on the leads of a loaded worker is the sign of
    a saturated machine: it admits fewer leads until its leads hear their buyers again."""
    late = [Buyer(f"late{i}", f"secret-late-{i}", price=20) for i in range(3)]
    m = await market(*late, settings={"max_leads_in_flight": 8})
    admission = m.ex.runtime.admission
    cuts_before = await _metric(m, "exchange_admission_cuts_total")
    assert (await m.ex.submit(lead_body())).json()["status"] == "sold"  # learnt: prompt
    for buyer in late:
        buyer.delay_s = 0.6  # past their timeout: every bid is lost
    assert (await m.ex.submit(lead_body())).json()["status"] == "unsold"
    assert admission.limit == 8  # one lead in flight: an idle worker cuts nothing
    first = await asyncio.gather(*(m.ex.submit(lead_body()) for _ in range(8)))
    assert [r.json()["status"] for r in first] == ["unsold"] * 8
    assert admission.limit == 6  # 8 cut by a quarter, once for the whole burst
    await asyncio.sleep(0.35)  # the next window (tmax 300 ms)
    replies = await asyncio.gather(*(m.timed_submit(lead_body()) for _ in range(8)))
    statuses = sorted(r.status_code for r, _ in replies)
    assert statuses == [200] * 6 + [503] * 2, statuses
    for resp, ms in replies:
        if resp.status_code == 503:
            assert "buyers answer late: cap 6" in resp.json()["detail"]
            assert resp.headers["retry-after"] == "1"
            assert ms < 150, ms
    assert admission.limit == 4  # 6 x 0.75 = 4.5: four leads admitted at once
    # The refused leads reached no buyer; and the 14 timeouts the congested leads met were
    # not held against the buyers (ten in a window of 20 would have throttled them).
    assert m.pings_seen() == {b.buyer_id: 1 + 1 + 8 + 6 for b in late}
    assert m.ex.runtime.auction.health.throttled() == frozenset()
    # Metrics are per process, shared by every test in it: the cuts are counted as a delta.
    assert await _metric(m, "exchange_admission_cuts_total") == cuts_before + 2
    await asyncio.sleep(0.3)  # the gauge is sampled every 250 ms
    assert await _metric(m, "exchange_admission_cap") == 4


async def _metric(m: Market, name: str) -> float:
    text = (await m.ex.client.get("/metrics")).text
    values = [float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, (name, text[:2000])
    return values[0]


async def test_a_publisher_past_its_rate_hears_429_with_retry_after(market: OpenMarket) -> None:
    m = await market(
        Buyer("acme", "secret-acme-1", price=20), settings={"publisher_rate_per_second": 3}
    )
    replies = [await m.ex.submit(lead_body()) for _ in range(5)]
    assert [r.status_code for r in replies] == [200, 200, 200, 429, 429]
    for resp in replies[3:]:
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json()["detail"] == "publisher rate limit"
        assert 1 <= int(resp.headers["retry-after"]) <= 2
    assert m.pings_seen() == {"acme": 3}  # the refused leads reached no buyer


async def test_leads_refused_for_overload_spend_none_of_the_publishers_rate(
    market: OpenMarket,
) -> None:
    m = await market(
        Buyer("slowbid", "secret-slow-1", price=20, delay_s=0.3),
        settings={"publisher_rate_per_second": 3, "max_leads_in_flight": 1},
    )
    first = asyncio.create_task(m.ex.submit(lead_body()))
    while m.ex.runtime.admission.in_flight == 0:
        await asyncio.sleep(0.005)
    refused = [await m.ex.submit(lead_body()) for _ in range(4)]
    assert [r.status_code for r in refused] == [503] * 4
    assert (await first).status_code == 200
    # 1 lead run + 4 refused: had the refusals counted, the rate (3 a second) was spent.
    later = [await m.ex.submit(lead_body()) for _ in range(2)]  # one at a time: cap 1
    assert [r.status_code for r in later] == [200, 200], [r.text for r in later]
