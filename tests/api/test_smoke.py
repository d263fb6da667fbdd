from __future__ import annotations

from tests.kit.buyers import Buyer
from tests.kit.exchange import buyer_entry, lead_body, make_config, start_exchange


async def test_highest_bid_wins_smoke(
    pg_dsn: str, redis_url: str, redis_prefix: str, redis_client
) -> None:
    a = await Buyer("acme", "secret-acme-123", price="12.50").start()
    b = await Buyer("bolt", "secret-bolt-123", price=20).start()
    ex = await start_exchange(
        make_config([buyer_entry(a), buyer_entry(b)]), pg_dsn, redis_url, redis_prefix
    )
    try:
        resp = await ex.submit(lead_body())
        assert resp.status_code == 200, resp.text
        answer = resp.json()
        assert answer["status"] == "sold", answer
        assert answer["payout"] == "14.00"
        story = await ex.story(answer["lead_id"])
        assert [s["buyer_id"] for s in story["sales"]] == ["bolt"]
    finally:
        await ex.close()
        await a.close()
        await b.close()
