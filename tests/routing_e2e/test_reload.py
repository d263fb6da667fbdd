"""Config reload under traffic: every lead is answered and recorded once, new leads follow
the new config, and a broken config is refused with its file and key while the old one runs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg
import yaml

from tests.kit.exchange import ADMIN, RunningExchange, buyer_entry, campaign
from tests.routing_e2e.conftest import OpenExchange, StartBuyer
from tests.routing_e2e.harness import (
    config,
    lead,
    reasons,
    sell,
    write_atomically,
    write_config_dir,
)

ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
LEADS = 100
GAP_S = 0.03  # 100 leads over about 3 s


async def _timed_sale(ex: RunningExchange, delay_s: float) -> tuple[float, float, dict[str, Any]]:
    """Wait ``delay_s``, sell one lead; (when it was sent, when answered, the answer)."""
    await asyncio.sleep(delay_s)
    sent = time.monotonic()
    answer = await sell(ex, lead())
    return sent, time.monotonic(), answer


async def test_reload_mid_traffic_loses_nothing(
    start_buyer: StartBuyer, open_exchange: OpenExchange, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    a = await start_buyer("a", price="10.00")
    b = await start_buyer("b", price="8.00")
    c = await start_buyer("c", price="9.00")
    before = config([buyer_entry(a), buyer_entry(b)])
    write_config_dir(tmp_path, before)
    ex = await open_exchange(before, config_dir=tmp_path)

    traffic = [asyncio.create_task(_timed_sale(ex, i * GAP_S)) for i in range(LEADS)]
    await asyncio.sleep(LEADS * GAP_S / 3)
    # a now asks 12.00 of itself (its 10.00 bids fall below its floor) and c joins.
    after = config([buyer_entry(a, [campaign(a, price="12.00")]), buyer_entry(b), buyer_entry(c)])
    write_config_dir(tmp_path, after)
    reload_sent = time.monotonic()
    resp = await ex.client.post("/v1/admin/reload", headers=ADMIN_HEADERS)
    reloaded_at = time.monotonic()
    assert resp.status_code == 200, resp.text
    assert resp.json()["reloaded"] is True and resp.json()["campaigns"] == 3
    results = await asyncio.gather(*traffic)

    answers = [answer for _, _, answer in results]
    assert [answer["status"] for answer in answers] == ["sold"] * LEADS
    lead_ids = {answer["lead_id"] for answer in answers}
    assert len(lead_ids) == LEADS
    rows = await pg.fetch("SELECT lead_id::text AS id, status FROM leads")
    assert sorted(r["id"] for r in rows) == sorted(lead_ids)
    sales = await pg.fetch("SELECT lead_id::text AS id, buyer_id FROM sales")
    assert sorted(s["id"] for s in sales) == sorted(lead_ids)  # one sale per lead, no double
    assert len(a.posts) + len(b.posts) + len(c.posts) == LEADS

    winner = {s["id"]: s["buyer_id"] for s in sales}
    late = [answer["lead_id"] for sent, _, answer in results if sent > reloaded_at]
    early = [answer["lead_id"] for _, done, answer in results if done < reload_sent]
    assert len(late) >= 30 and len(early) >= 10
    assert {winner[lead_id] for lead_id in late} == {"c"}
    assert {winner[lead_id] for lead_id in early} == {"a"}
    story = await ex.story(late[-1])
    assert reasons(story) == {"a-c": "below_floor", "b-c": "outbid", "c-c": "sold"}


async def test_broken_config_is_refused_and_the_old_one_stays(
    start_buyer: StartBuyer, open_exchange: OpenExchange, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    a = await start_buyer("a", price="10.00")
    b = await start_buyer("b", price="8.00")
    cfg = config([buyer_entry(a), buyer_entry(b)])
    write_config_dir(tmp_path, cfg)
    ex = await open_exchange(cfg, config_dir=tmp_path)

    buyers_yaml = tmp_path / "buyers.yaml"
    broken = yaml.safe_load(buyers_yaml.read_text(encoding="utf-8"))
    broken["buyers"][1]["campaigns"][0]["caps"] = {"daily": -1}
    broken["buyers"][0]["campaigns"][0]["price"] = "50.00"  # would shut a out, if it applied
    write_atomically(buyers_yaml, yaml.safe_dump(broken))
    resp = await ex.client.post("/v1/admin/reload", headers=ADMIN_HEADERS)
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert "buyers.yaml" in detail and "buyers[b].campaigns[b-c].caps.daily" in detail, detail

    write_atomically(buyers_yaml, "buyers: [ {id: a\n")
    resp = await ex.client.post("/v1/admin/reload", headers=ADMIN_HEADERS)
    assert resp.status_code == 422 and "buyers.yaml" in resp.json()["detail"], resp.text

    await asyncio.sleep(1.2)  # the workers' background follower must not pick anything up
    answer = await sell(ex, lead())
    assert reasons(await ex.story(answer["lead_id"])) == {"a-c": "sold", "b-c": "outbid"}
    assert await pg.fetchval("SELECT price_cents FROM sales") == 1000
