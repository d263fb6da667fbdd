"""The operators' reports against the raw tables: every row re-added with SQL of our own.

A varied market runs first (two publishers, two verticals, five buyers with seven
campaigns, shared and exclusive leads, refused posts, timeouts, test leads, duplicates);
some leads are then moved to earlier days, so day grouping and date ranges have
something to tell apart. Each report row must equal the sums over leads, pings, posts
and sales that this file computes itself, test leads left out.
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from itertools import product
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import orjson
import pytest

from exchange.catalog.models import Config
from exchange.store.reports import GroupBy, buyers_report, sales_report
from tests.kit.buyers import Buyer
from tests.kit.exchange import (
    ADMIN,
    AUTO_FIELDS,
    PUB2_KEY,
    PUB_KEY,
    RunningExchange,
    buyer_entry,
    lead_body,
    sha,
    start_exchange,
)

GROUPS: tuple[GroupBy, ...] = ("publisher", "buyer", "campaign", "vertical", "day")
KEY = {g: g if g in ("vertical", "day") else f"{g}_id" for g in GROUPS}
SOLAR_FIELDS = {"homeowner": {"type": "bool", "required": True, "ping": True}}


def market_config(acme: Buyer, bolt: Buyer, cedar: Buyer, dove: Buyer, slow: Buyer) -> Config:
    def camp(cid: str, vertical: str, **extra: Any) -> dict[str, Any]:
        return {"id": cid, "vertical": vertical, **extra}

    buyers = [
        buyer_entry(acme, [camp("acme-auto", "auto_insurance"), camp("acme-solar", "solar")]),
        buyer_entry(
            bolt,
            [
                camp("bolt-auto-ca", "auto_insurance", filters={"states": ["CA"]}),
                camp("bolt-auto-ny", "auto_insurance", filters={"states": ["NY"]}),
            ],
        ),
        buyer_entry(cedar, [camp("cedar-solar", "solar")]),
        buyer_entry(dove, [camp("dove-auto", "auto_insurance", price="9.00")], post_only=True),
        buyer_entry(slow, [camp("slow-auto", "auto_insurance")]),
    ]
    return Config.model_validate(
        {
            "settings": {
                "tmax_ms": 120,
                "post_timeout_ms": 1000,
                "deadline_ms": 3000,
                "max_loop_lag_ms": 60_000,  # in-process: the loop is shared with the test
            },
            "verticals": {
                "auto_insurance": {"max_sells": 1, "floor": "2.00", "fields": AUTO_FIELDS},
                "solar": {"max_sells": 2, "floor": "10.00", "fields": SOLAR_FIELDS},
            },
            "publishers": [
                {"id": "pub-1", "api_key_sha256": sha(PUB_KEY), "payout": {"revshare": "0.70"}},
                {"id": "pub-2", "api_key_sha256": sha(PUB2_KEY), "payout": {"fixed": "8.00"}},
            ],
            "buyers": buyers,
        }
    )


@dataclass
class Market:
    ex: RunningExchange
    dsn: str
    buyers: dict[str, Buyer]

    async def get(self, path: str, token: str | None = ADMIN, **params: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.ex.client.get(path, params=params, headers=headers)


@pytest.fixture
async def market(
    pg_dsn: str, redis_url: str, redis_prefix: str, redis_client: Any
) -> AsyncIterator[Market]:
    buyers = {
        "acme": Buyer("acme", "secret-acme-123", price="20.00"),
        "bolt": Buyer("bolt", "secret-bolt-123", price="15.50"),
        "cedar": Buyer("cedar", "secret-cedar-123", price="25.00"),
        "dove": Buyer("dove", "secret-dove-123"),
        "slow": Buyer("slow", "secret-slow-123", price="99.00", ping_mode="hang"),
    }
    for buyer in buyers.values():
        await buyer.start()
    config = market_config(*buyers.values())
    ex = await start_exchange(config, pg_dsn, redis_url, redis_prefix)
    yield Market(ex, pg_dsn, buyers)
    await ex.close()
    for buyer in buyers.values():
        await buyer.close()


def auto(state: str = "CA", zip_code: str = "94105", **kw: Any) -> dict[str, Any]:
    body = lead_body(**kw)
    body["contact"] = {**body["contact"], "state": state, "zip": zip_code}
    return body


def solar(**kw: Any) -> dict[str, Any]:
    return lead_body(vertical="solar", profile={"homeowner": True}, **kw)


async def send(m: Market, body: dict[str, Any], key: str = PUB_KEY) -> str:
    resp = await m.ex.submit(body, key)
    assert resp.status_code == 200, resp.text
    lead_id: str = resp.json()["lead_id"]
    return lead_id


async def play(m: Market) -> dict[int, list[str]]:
    """The market's leads, by how many days back each will be moved."""
    acme, bolt, cedar = m.buyers["acme"], m.buyers["bolt"], m.buyers["cedar"]
    days: dict[int, list[str]] = {0: [], 1: [], 2: []}
    first = auto()
    days[0] += [await send(m, first), await send(m, auto("NY", "10001"), PUB2_KEY)]
    days[0] += [await send(m, solar()), await send(m, solar(), PUB2_KEY)]  # shared: 2 sales each
    days[0] += [await send(m, auto(test=True)), await send(m, solar(test=True), PUB2_KEY)]
    days[0].append(await send(m, auto(contact=first["contact"])))  # duplicate
    days[0].append(await send(m, auto(consent={"tcpa": False}), PUB2_KEY))  # rejected
    acme.post_mode = "reject"  # acme refuses: bolt or dove gets the auto lead
    days[1] += [await send(m, auto()), await send(m, auto("NY", "10001"))]
    days[1].append(await send(m, solar(), PUB2_KEY))
    acme.post_mode = "accept"
    cedar.post_mode = "error500"
    days[1] += [await send(m, solar()), await send(m, auto(test=True), PUB2_KEY)]
    cedar.post_mode = "accept"
    acme.ping_mode = bolt.ping_mode = "no_bid"
    days[2] += [await send(m, auto("TX", "73301"), PUB2_KEY), await send(m, auto("NY", "10001"))]
    acme.ping_mode = cedar.ping_mode = "no_bid"
    days[2].append(await send(m, solar()))  # nobody bids: unsold
    return days


STAMPS = {
    "leads": "received_at",
    **{t: "created_at" for t in ("pings", "posts", "sales", "ledger")},
}


async def move_to_earlier_days(dsn: str, days: dict[int, list[str]]) -> None:
    """Shift whole stories (lead, pings, posts, sales, ledger) back by whole days."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            for (back, ids), (table, column) in product(days.items(), STAMPS.items()):
                await conn.execute(
                    f"UPDATE {table} SET {column} = {column} - $2::interval "
                    "WHERE lead_id = ANY($1::uuid[])",
                    ids,
                    timedelta(days=back),
                )
    finally:
        await conn.close()


MONEY = re.compile(r"-?\d+\.\d{2}")


def cents(money: str) -> int:
    return int(Decimal(money) * 100)


SALES_FIELDS = ("leads", "sold", "revenue", "payout")


def as_number(value: int | str) -> int:
    """Counts as they are, money strings in cents."""
    return value if isinstance(value, int) else cents(value)


# --- the expected numbers, from the raw tables ------------------------------------------

LEAD_GROUP_SQL = {
    "publisher": "l.publisher_id",
    "vertical": "l.vertical",
    "day": "to_char(l.received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}
IN_RANGE = "NOT l.test AND l.received_at >= $1::date AND l.received_at < $2::date + 1"


async def expected_sales(
    conn: asyncpg.Connection, group_by: str, lo: date, hi: date
) -> dict[str, dict[str, int]]:
    """``{group: {leads, sold, revenue, payout}}``: leads and sold leads counted on leads
    (publisher, vertical, day) or on the campaigns considered and the sales made (buyer,
    campaign); money always summed over sales."""
    if group_by in LEAD_GROUP_SQL:
        grp = LEAD_GROUP_SQL[group_by]
        counted = f"""SELECT {grp} AS grp, count(*) AS leads, count(*) FILTER (WHERE l.status = 'sold') AS sold
                      FROM leads l WHERE {IN_RANGE} GROUP BY 1"""
        money = f"""SELECT {grp} AS grp, sum(s.price_cents) AS revenue, sum(s.payout_cents) AS payout
                    FROM sales s JOIN leads l USING (lead_id) WHERE {IN_RANGE} GROUP BY 1"""
    else:
        grp = f"p.{group_by}_id"
        counted = f"""SELECT {grp} AS grp, count(DISTINCT p.lead_id) AS leads, 0 AS sold
                      FROM pings p JOIN leads l USING (lead_id)
                      WHERE {IN_RANGE}
                        AND p.outcome IN ('bid', 'no_bid', 'timeout', 'error', 'fixed_price')
                      GROUP BY 1"""
        money = f"""SELECT s.{group_by}_id AS grp, sum(s.price_cents) AS revenue,
                           sum(s.payout_cents) AS payout, count(*) AS sold
                    FROM sales s JOIN leads l USING (lead_id) WHERE {IN_RANGE} GROUP BY 1"""
    out: dict[str, dict[str, int]] = {}
    for r in await conn.fetch(counted, lo, hi):
        out[r["grp"]] = {"leads": r["leads"], "sold": r["sold"], "revenue": 0, "payout": 0}
    for r in await conn.fetch(money, lo, hi):
        row = out.setdefault(r["grp"], {"leads": 0, "sold": 0, "revenue": 0, "payout": 0})
        row.update(revenue=int(r["revenue"]), payout=int(r["payout"]))
        if "sold" in r:
            row["sold"] = r["sold"]
    return out


POST_NAMES = {"accepted": "wins", "rejected": "post_rejects", "failed": "post_failures"}
POST_NAMES["unknown"] = "post_unknown"


async def expected_buyers(
    conn: asyncpg.Connection, lo: date, hi: date
) -> dict[str, dict[str, Any]]:
    """Per buyer, over the non-test leads received in range: pings sent and how they ended,
    answer latencies, and the posts by state."""
    pings = await conn.fetch(
        f"""SELECT p.buyer_id,
                   count(*) FILTER (WHERE p.outcome IN ('no_bid', 'timeout', 'error')
                                    OR p.outcome = 'bid' AND p.latency_ms IS NOT NULL) AS pings,
                   count(*) FILTER (WHERE p.outcome = 'bid') AS bids,
                   count(*) FILTER (WHERE p.outcome = 'timeout') AS timeouts,
                   count(*) FILTER (WHERE p.outcome = 'error') AS errors,
                   percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY p.latency_ms)
                       FILTER (WHERE p.outcome IN ('bid', 'no_bid')) AS pct
            FROM pings p JOIN leads l USING (lead_id) WHERE {IN_RANGE} GROUP BY 1""",
        lo,
        hi,
    )
    posts = await conn.fetch(
        f"""SELECT q.buyer_id, q.state, count(*) AS n
            FROM posts q JOIN leads l USING (lead_id) WHERE {IN_RANGE} GROUP BY 1, 2""",
        lo,
        hi,
    )
    out: dict[str, dict[str, Any]] = {}
    for r in pings:
        pct = r["pct"] or [None, None]
        out[r["buyer_id"]] = {k: r[k] for k in ("pings", "bids", "timeouts", "errors")}
        for name, value in zip(("latency_p50_ms", "latency_p95_ms"), pct, strict=True):
            out[r["buyer_id"]][name] = None if value is None else round(value, 1)
    for r in posts:
        out.setdefault(r["buyer_id"], {})[POST_NAMES[r["state"]]] = r["n"]
    return out


async def ledger_total(conn: asyncpg.Connection, name: str) -> int:
    """Revenue, payout or margin as the double-entry ledger holds it (test leads have none)."""
    kind = {"revenue": "buyer_charge", "payout": "publisher_payout", "margin": "exchange_margin"}
    total = await conn.fetchval("SELECT sum(amount_cents) FROM ledger WHERE kind = $1", kind[name])
    return abs(int(total))


# --- the tests ---------------------------------------------------------------------------


@pytest.fixture
async def played(market: Market) -> tuple[Market, date]:
    days = await play(market)
    await move_to_earlier_days(market.dsn, days)
    conn = await asyncpg.connect(market.dsn)
    try:
        today: date = await conn.fetchval(
            "SELECT (max(received_at) AT TIME ZONE 'UTC')::date FROM leads"
        )
        assert await conn.fetchval("SELECT count(*) FROM leads WHERE test") == 3
        assert await conn.fetchval("SELECT count(*) FROM sales WHERE test") >= 3
        assert await conn.fetchval("SELECT count(DISTINCT lead_id) FROM sales WHERE NOT test") >= 6
    finally:
        await conn.close()
    return market, today


async def test_sales_report_rows_equal_the_raw_tables(played: tuple[Market, date]) -> None:
    m, today = played
    week, yesterday = (today - timedelta(days=2), today), (today - timedelta(days=1),) * 2
    conn = await asyncpg.connect(m.dsn)
    try:
        for (lo, hi), group_by in ((r, g) for r in (week, yesterday) for g in GROUPS):
            params = {"from": str(lo), "to": str(hi), "group_by": group_by}
            resp = await m.get("/v1/reports/sales", **params)
            assert resp.status_code == 200, resp.text
            rows = resp.json()["rows"]
            got = {r[KEY[group_by]]: {k: as_number(r[k]) for k in SALES_FIELDS} for r in rows}
            assert len(rows) == len(got), f"a {group_by} appears twice"
            assert got == await expected_sales(conn, group_by, lo, hi), params
            for r in rows:
                for name in ("revenue", "payout", "margin"):  # SPEC: decimal strings
                    assert isinstance(r[name], str) and MONEY.fullmatch(r[name]), r
                assert isinstance(r["leads"], int) and isinstance(r["sold"], int), r
                assert cents(r["margin"]) == cents(r["revenue"]) - cents(r["payout"])
                assert r["sell_through"] == (
                    round(r["sold"] / r["leads"], 4) if r["leads"] else 0.0
                )
            if (lo, hi) == week:  # every sale of the market: the ledger's totals
                for name in ("revenue", "payout", "margin"):
                    total = sum(cents(r[name]) for r in rows)
                    assert total == await ledger_total(conn, name), (group_by, name)
    finally:
        await conn.close()
    days = await m.get("/v1/reports/sales", **{"from": str(week[0]), "to": str(week[1])})
    assert [r["day"] for r in days.json()["rows"]] == [
        str(week[0] + timedelta(d)) for d in range(3)
    ]


async def test_buyers_report_rows_equal_the_raw_tables(played: tuple[Market, date]) -> None:
    m, today = played
    lo, hi = today - timedelta(days=2), today
    resp = await m.get("/v1/reports/buyers", **{"from": str(lo), "to": str(hi)})
    assert resp.status_code == 200, resp.text
    rows = {r["buyer_id"]: r for r in resp.json()["rows"]}
    conn = await asyncpg.connect(m.dsn)
    try:
        want = await expected_buyers(conn, lo, hi)
    finally:
        await conn.close()
    assert set(rows) == set(want) == set(m.buyers)
    for buyer_id, expected in want.items():
        row = rows[buyer_id]
        for name, value in expected.items():
            assert row[name] == value, (buyer_id, name, row)
        for name in ("wins", "post_rejects", "post_failures", "post_unknown"):
            assert row[name] == expected.get(name, 0), (buyer_id, name, row)
        assert row["bid_rate"] == (round(row["bids"] / row["pings"], 4) if row["pings"] else 0.0)
        assert row["win_rate"] == (round(row["wins"] / row["bids"], 4) if row["bids"] else 0.0)
    assert rows["slow"]["timeouts"] > 0 and rows["cedar"]["post_failures"] > 0
    assert rows["acme"]["post_rejects"] > 0


async def test_csv_has_the_same_rows_as_json(played: tuple[Market, date]) -> None:
    m, today = played
    params = {"from": str(today - timedelta(days=2)), "to": str(today)}
    asked = [("/v1/reports/sales", {"group_by": g}) for g in GROUPS] + [("/v1/reports/buyers", {})]
    for path, extra in asked:
        as_json = (await m.get(path, **params, **extra)).json()["rows"]
        resp = await m.get(path, format="csv", **params, **extra)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
        as_csv = list(csv.DictReader(io.StringIO(resp.text)))
        assert as_json, (path, extra)
        assert as_csv == [{k: "" if v is None else str(v) for k, v in r.items()} for r in as_json]


async def test_reports_need_the_admin_token_and_a_sane_range(market: Market) -> None:
    params = {"from": "2025-01-02", "to": "2025-01-31"}
    for path in ("/v1/reports/sales", "/v1/reports/buyers"):
        assert (await market.get(path, token=None, **params)).status_code == 401
        assert (await market.get(path, token=PUB_KEY, **params)).status_code == 401
        assert (await market.get(path, token="wrong", **params)).status_code == 401
        assert (await market.get(path, **params)).status_code == 200
        backwards = await market.get(path, **{"from": "2025-01-31", "to": "2025-01-02"})
        assert backwards.status_code == 422
        assert (
            await market.get(path, **{"from": "2025-13-01", "to": "2025-01-02"})
        ).status_code == 422
    bad_group = await market.get("/v1/reports/sales", group_by="zip", **params)
    assert bad_group.status_code == 422


# --- query plans on a realistic volume --------------------------------------------------

# 200k leads over ~400 days (one every 173 s), a ping each, a sale and a post for every
# fifth lead: enough rows that reading a day's leads sequentially would be a real cost.
SYNTHETIC = [
    """INSERT INTO leads (lead_id, publisher_id, vertical, test, status, received_at)
       SELECT gen_random_uuid(), 'pub-' || (i % 2 + 1), (ARRAY['auto_insurance', 'solar', 'debt'])[i % 3 + 1],
              i % 20 = 0, CASE WHEN i % 5 = 0 THEN 'sold' ELSE 'unsold' END,
              now() - make_interval(secs => i * 173)
       FROM generate_series(1, 200000) AS i""",
    """INSERT INTO pings (ping_id, lead_id, buyer_id, campaign_id, outcome, reason, latency_ms, created_at)
       SELECT gen_random_uuid(), lead_id, b, b || '-c', 'bid', 'outbid', 40, received_at
       FROM (SELECT *, CASE WHEN random() < 0.5 THEN 'acme' ELSE 'bolt' END AS b FROM leads) AS l""",
    """INSERT INTO sales (lead_id, publisher_id, vertical, buyer_id, campaign_id, price_cents, payout_cents, test, created_at)
       SELECT lead_id, publisher_id, vertical, 'acme', 'acme-c', 2000, 1400, test, received_at
       FROM leads WHERE status = 'sold'""",
    """INSERT INTO posts (lead_id, buyer_id, campaign_id, price_cents, state, accepted, created_at)
       SELECT lead_id, 'acme', 'acme-c', 2000, 'accepted', true, received_at FROM leads WHERE status = 'sold'""",
    "ANALYZE",
]


class Explainer:
    """Stands in for a connection: answers each report query with its plan instead of rows."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.nodes: list[tuple[str, str | None, str | None]] = []

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        plan = await self.conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
        self._walk(orjson.loads(plan)[0]["Plan"])
        return []

    def _walk(self, node: dict[str, Any]) -> None:
        self.nodes.append((node["Node Type"], node.get("Relation Name"), node.get("Index Name")))
        for child in node.get("Plans", []):
            self._walk(child)

    def seq_scans(self) -> set[str]:
        return {str(rel) for kind, rel, _ in self.nodes if kind == "Seq Scan"}

    def indexes(self) -> set[str]:
        return {str(index) for _, _, index in self.nodes if index}


@pytest.fixture(scope="module")
async def big(
    pg_admin_dsn: str, pg_template: str
) -> AsyncIterator[tuple[asyncpg.Connection, date]]:
    """A migrated database of this module's own, loaded once for the plan tests."""
    name = f"exchange_plans_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
        conn = await asyncpg.connect(urlunsplit(urlsplit(pg_admin_dsn)._replace(path="/" + name)))
        for statement in SYNTHETIC:
            await conn.execute(statement)
        yield conn, await conn.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
        await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_sales_reports_read_leads_by_the_received_index(
    big: tuple[asyncpg.Connection, date],
) -> None:
    conn, today = big
    yesterday = today - timedelta(days=1)
    for days, group_by in ((d, g) for d in (1, 7) for g in GROUPS):
        plan = Explainer(conn)
        await sales_report(cast(Any, plan), today - timedelta(days=days), yesterday, group_by)
        assert "leads_received" in plan.indexes(), (group_by, days, plan.nodes)
        assert "leads" not in plan.seq_scans(), (group_by, days, plan.nodes)
        if days == 1:  # a day's pings by lead; a week's (1.75% here) the planner may scan
            assert "pings" not in plan.seq_scans(), (group_by, days, plan.nodes)


async def test_buyers_report_reads_a_time_range_by_index(
    big: tuple[asyncpg.Connection, date],
) -> None:
    conn, today = big
    plan = Explainer(conn)
    yesterday = today - timedelta(days=1)
    await buyers_report(cast(Any, plan), yesterday, yesterday)
    assert not plan.seq_scans() & {"pings", "posts"}, plan.nodes
