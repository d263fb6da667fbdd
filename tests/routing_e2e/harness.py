"""Shared helpers for the end-to-end routing tests: configs, leads, stories and sales.

The tests drive a real exchange (uvicorn on loopback, real Postgres and Redis) with real
buyer servers; these helpers only shorten what each test asserts.

Usage::

    cfg = config([buyer_entry(a), buyer_entry(b)], vertical={"mode": "priority"})
    ex = await open_exchange(cfg)
    answer = await sell(ex, lead())
    story = await ex.story(answer["lead_id"])
    assert reasons(story) == {"a-c": "sold", "b-c": "outbid"}
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import yaml

from exchange.catalog.models import WEEKDAYS, Config
from tests.kit.exchange import RunningExchange, lead_body, make_config

# Every lead gets a phone and an email of its own, so dedupe never interferes.
_numbers = itertools.count(random.randrange(0, 5_000_000))

NY_CONTACT = {"state": "NY", "zip": "10001", "city": "New York"}

# Bursts of 100 leads must meet no publisher rate limit: that is not what these tests test.
FAST_SETTINGS: dict[str, Any] = {"publisher_rate_per_second": 100_000}


def config(
    buyers: Sequence[dict[str, Any]],
    *,
    vertical: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> Config:
    """``make_config`` with a rate limit no burst of these tests reaches."""
    return make_config(buyers, vertical=vertical, settings={**FAST_SETTINGS, **(settings or {})})


def lead(*, contact: dict[str, Any] | None = None, **profile: Any) -> dict[str, Any]:
    """A valid lead with a unique phone and email; ``profile`` fields override the defaults."""
    n = next(_numbers)
    body = lead_body()
    body["contact"] = {
        **body["contact"],
        "phone": f"+1415{200 + (n // 10_000) % 700:03d}{n % 10_000:04d}",
        "email": f"lead{n}@example.com",
        **(contact or {}),
    }
    body["profile"] = {**body["profile"], **profile}
    return body


async def sell(ex: RunningExchange, body: dict[str, Any]) -> dict[str, Any]:
    """Submit one lead and return its answer, which must be a 200."""
    resp = await ex.submit(body)
    assert resp.status_code == 200, resp.text
    answer: dict[str, Any] = resp.json()
    return answer


async def sell_many(ex: RunningExchange, bodies: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Submit leads concurrently; every answer must be a 200."""
    return list(await asyncio.gather(*(sell(ex, body) for body in bodies)))


def pings_by_campaign(story: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The story's ping records keyed by campaign id (one per campaign considered)."""
    found: dict[str, dict[str, Any]] = {}
    for ping in story["pings"]:
        assert ping["campaign_id"] not in found, f"two records for {ping['campaign_id']}"
        found[ping["campaign_id"]] = ping
    return found


def reasons(story: dict[str, Any]) -> dict[str, str]:
    """``{campaign_id: reason}`` for every campaign the lead's story names."""
    return {cid: ping["reason"] for cid, ping in pings_by_campaign(story).items()}


def outcomes(story: dict[str, Any]) -> dict[str, str]:
    """``{campaign_id: outcome}``: what the ping phase did for each campaign."""
    return {cid: ping["outcome"] for cid, ping in pings_by_campaign(story).items()}


async def sales_of(pg: asyncpg.Connection, lead_id: str) -> list[tuple[str, str, int]]:
    """``(buyer_id, campaign_id, price_cents)`` of every sale of one lead, best price first."""
    rows = await pg.fetch(
        "SELECT buyer_id, campaign_id, price_cents FROM sales WHERE lead_id = $1::uuid "
        "ORDER BY price_cents DESC, buyer_id",
        lead_id,
    )
    return [(r["buyer_id"], r["campaign_id"], r["price_cents"]) for r in rows]


async def sales_per_buyer(pg: asyncpg.Connection) -> dict[str, int]:
    rows = await pg.fetch("SELECT buyer_id, count(*) AS n FROM sales GROUP BY buyer_id")
    return {r["buyer_id"]: int(r["n"]) for r in rows}


def closed_days() -> list[str]:
    """Weekdays (UTC) that exclude today and tomorrow: a schedule closed for this whole test,
    even if it runs across midnight."""
    today = datetime.now(UTC).weekday()
    return [day for i, day in enumerate(WEEKDAYS) if i not in (today, (today + 1) % 7)]


def write_config_dir(directory: Path, cfg: Config) -> None:
    """The config as YAML in two files, the way operators split it: buyers apart.

    Each file is replaced atomically, so a reload never reads half a file.
    """
    data = cfg.model_dump(mode="json", exclude_none=True)
    buyers = {"buyers": data.pop("buyers")}
    directory.mkdir(parents=True, exist_ok=True)
    write_atomically(directory / "exchange.yaml", yaml.safe_dump(data))
    write_atomically(directory / "buyers.yaml", yaml.safe_dump(buyers))


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
