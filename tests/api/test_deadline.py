"""Time limits as SPEC §2 and §4 state them: a buyer's own ``timeout_ms`` within ``tmax_ms``,
and ``deadline_ms`` bounding the publisher's answer, fallback posts included."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tests.api.conftest import OpenMarket
from tests.kit.buyers import Buyer
from tests.kit.exchange import buyer_entry, lead_body

REASON = "duplicate in our CRM"  # what a rejecting test buyer says


def _rejecting(name: str, price: int, post_delay_s: float) -> Buyer:
    return Buyer(
        name, f"secret-{name}-123", price=price, post_mode="reject", post_delay_s=post_delay_s
    )


async def test_fallback_posts_stop_at_the_deadline(market: OpenMarket) -> None:
    """Each post takes 0.4 s to be rejected: the first two fit in a 1 s deadline, the third
    gets what is left (and is not answered in it), the fourth is never sent, and the
    publisher hears by the deadline."""
    m = await market(
        _rejecting("a", 40, 0.4),
        _rejecting("b", 30, 0.4),
        _rejecting("c", 20, 0.4),
        _rejecting("d", 10, 0.4),
        settings={"tmax_ms": 100, "post_timeout_ms": 2000, "deadline_ms": 1000},
    )
    resp, took_ms = await m.timed_submit(lead_body())

    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert took_ms < 1000 + 250, took_ms  # the deadline, plus the save and the HTTP hop
    assert m.posts_seen() == {"a": 1, "b": 1, "c": 1, "d": 0}
    # c may hold the lead (its post was sent and never answered): pending, not sold on.
    assert answer["status"] == "pending" and answer["payout"] == "0.00"
    story = await m.ex.story(answer["lead_id"])
    assert [
        (p["buyer_id"], p["campaign_id"], p["state"], p["accepted"]) for p in story["posts"]
    ] == [
        ("a", "a-c", "rejected", False),
        ("b", "b-c", "rejected", False),
        ("c", "c-c", "unknown", None),
    ]
    assert [p["reason"] for p in story["posts"][:2]] == [REASON, REASON]
    # The story's head, as SPEC §5 lists it.
    assert story["lead_id"] == answer["lead_id"] and story["status"] == "pending"
    assert (story["publisher_id"], story["vertical"]) == ("pub-1", "auto_insurance")
    received = datetime.fromisoformat(story["received_at"])
    assert received.tzinfo is not None
    assert story["sales"] == []


async def test_a_buyers_own_timeout_ends_its_ping_before_tmax(market: OpenMarket) -> None:
    """``timeout_ms: 100`` under ``tmax_ms: 300``: the ping says 100, an answer at 500 ms is
    a timeout, and the lead is sold to the prompt buyer long before tmax."""
    late = Buyer("late", "secret-late-123", price=50, delay_s=0.5)
    prompt = Buyer("prompt", "secret-prompt-123", price=10)

    def entry(b: Buyer) -> dict[str, Any]:
        return buyer_entry(b, timeout_ms=100 if b is late else 250)

    m = await market(late, prompt, entry=entry, settings={"tmax_ms": 300})
    resp, took_ms = await m.timed_submit(lead_body())

    answer = resp.json()
    assert answer["status"] == "sold" and answer["payout"] == "7.00"
    assert [p["tmax_ms"] for p in late.pings] == [100]
    assert [p["tmax_ms"] for p in prompt.pings] == [250]
    assert 100 <= took_ms < 280, took_ms  # ended by late's 100 ms, not by tmax's 300
    story = await m.ex.story(answer["lead_id"])
    outcomes = {p["buyer_id"]: p["outcome"] for p in story["pings"]}
    assert outcomes == {"late": "timeout", "prompt": "bid"}
    assert [(s["buyer_id"], s["campaign_id"], s["price"]) for s in story["sales"]] == [
        ("prompt", "prompt-c", "10.00")
    ]
    assert m.posts_seen() == {"late": 0, "prompt": 1}
