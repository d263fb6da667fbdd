"""The demo's live terminal view and its closing summary."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from prometheus_client import REGISTRY
from rich.console import Group
from rich.table import Table

from exchange.money import fmt


@dataclass
class Tally:
    """What the publisher side saw: answers, statuses, latencies."""

    started: float = field(default_factory=time.monotonic)
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    lead_ids: list[str] = field(default_factory=list)
    payout_cents: int = 0

    def answer(self, http_status: int, body: dict[str, Any] | None, elapsed_s: float) -> None:
        self.latencies.append(elapsed_s)
        if body is None:
            self.statuses[f"http_{http_status}"] += 1
            return
        self.statuses[str(body.get("status"))] += 1
        self.lead_ids.append(str(body["lead_id"]))
        payout = str(body.get("payout", "0.00"))
        whole, _, part = payout.partition(".")
        self.payout_cents += int(whole) * 100 + int((part + "00")[:2])

    @property
    def leads(self) -> int:
        return sum(self.statuses.values())

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    async def summary(self, database_url: str) -> dict[str, Any]:
        """Totals from Postgres for exactly the leads this demo sent."""
        ids = [uuid.UUID(i) for i in self.lead_ids]
        conn = await asyncpg.connect(database_url)
        try:
            row = await conn.fetchrow(
                """SELECT count(*) AS sales, coalesce(sum(price_cents), 0) AS revenue,
                          coalesce(sum(payout_cents), 0) AS payout
                   FROM sales WHERE lead_id = ANY($1::uuid[])""",
                ids,
            )
            sold = await conn.fetchval(
                "SELECT count(*) FROM leads WHERE lead_id = ANY($1::uuid[]) AND status = 'sold'",
                ids,
            )
            buyers = await conn.fetch(
                """SELECT buyer_id, count(*) AS wins, sum(price_cents) AS spend FROM sales
                   WHERE lead_id = ANY($1::uuid[]) GROUP BY buyer_id ORDER BY buyer_id""",
                ids,
            )
        finally:
            await conn.close()
        assert row is not None
        elapsed = time.monotonic() - self.started
        return {
            "leads": self.leads,
            "statuses": dict(self.statuses),
            "sold": int(sold),
            "sales": int(row["sales"]),
            "revenue_cents": int(row["revenue"]),
            "payout_cents": int(row["payout"]),
            "margin_cents": int(row["revenue"]) - int(row["payout"]),
            "publisher_payout_answered_cents": self.payout_cents,
            "p50_ms": round(self.percentile(0.5), 1),
            "p99_ms": round(self.percentile(0.99), 1),
            "seconds": round(elapsed, 1),
            "buyers": {
                r["buyer_id"]: {"wins": int(r["wins"]), "spend_cents": int(r["spend"])}
                for r in buyers
            },
        }


def _metric_sums(name: str, label: str) -> dict[str, float]:
    """Sum a counter by one label straight from this process's registry."""
    out: dict[str, float] = {}
    for metric in REGISTRY.collect():
        if metric.name != name:
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                key = sample.labels.get(label, "")
                out[key] = out.get(key, 0.0) + sample.value
    return out


def _by_buyer_outcome(name: str) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for metric in REGISTRY.collect():
        if metric.name != name:
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[(sample.labels["buyer"], sample.labels["outcome"])] = sample.value
    return out


def render(tally: Tally) -> Group:
    elapsed = max(0.001, time.monotonic() - tally.started)
    revenue = int(sum(_metric_sums("exchange_revenue_cents", "vertical").values()))
    margin = int(sum(_metric_sums("exchange_margin_cents", "vertical").values()))
    sold = tally.statuses.get("sold", 0)
    head = Table(title="ping-post exchange — live", expand=False)
    for col in ("leads", "leads/s", "sold %", "revenue", "margin", "p50 ms", "p99 ms", "statuses"):
        head.add_column(col, justify="right")
    head.add_row(
        str(tally.leads),
        f"{tally.leads / elapsed:.1f}",
        f"{100 * sold / tally.leads:.1f}" if tally.leads else "-",
        "$" + fmt(revenue),
        "$" + fmt(margin),
        f"{tally.percentile(0.5):.0f}",
        f"{tally.percentile(0.99):.0f}",
        " ".join(f"{k}={v}" for k, v in sorted(tally.statuses.items())),
    )
    pings = _by_buyer_outcome("exchange_pings")
    posts = _by_buyer_outcome("exchange_posts")
    buyers = sorted({b for b, _ in pings} | {b for b, _ in posts})
    table = Table(title="buyers", expand=False)
    for col in ("buyer", "bids", "no bid", "timeouts", "errors", "throttled", "wins", "rejects"):
        table.add_column(col, justify="right")
    for b in buyers:
        table.add_row(
            b,
            *(
                str(int(pings.get((b, o), 0)))
                for o in ("bid", "no_bid", "timeout", "error", "throttled")
            ),
            str(int(posts.get((b, "accepted"), 0))),
            str(int(posts.get((b, "rejected"), 0))),
        )
    return Group(head, table)


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title="demo summary (money from Postgres)")
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("leads answered", str(summary["leads"])),
        ("sold", f"{summary['sold']} ({summary['sales']} sales)"),
        ("revenue", "$" + fmt(summary["revenue_cents"])),
        ("publisher payouts", "$" + fmt(summary["payout_cents"])),
        ("margin", "$" + fmt(summary["margin_cents"])),
        ("p50 / p99 latency", f"{summary['p50_ms']} / {summary['p99_ms']} ms"),
        ("statuses", ", ".join(f"{k}={v}" for k, v in sorted(summary["statuses"].items()))),
    ]
    for buyer, data in sorted(summary["buyers"].items()):
        rows.append((f"  {buyer}", f"{data['wins']} wins, ${fmt(data['spend_cents'])}"))
    for what, value in rows:
        table.add_row(what, value)
    return table
