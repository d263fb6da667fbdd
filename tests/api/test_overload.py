"""Overload over HTTP: past max_leads_in_flight the excess is answered 503 at once."""

from __future__ import annotations

import asyncio

from tests.api.conftest import OpenMarket
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
