"""Report queries. Each reads an index-backed time range; see README §Reports for the plans.

Test leads are left out: they move no money and would skew sell-through.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from exchange.store.db import Conn

GroupBy = Literal["publisher", "buyer", "campaign", "vertical", "day"]

# Leads per group come from the leads table (publisher, vertical, day) or, for a buyer or a
# campaign, from the leads it was offered (pinged, or bid on as a post-only buyer); money
# always comes from sales.
_LEAD_GROUPS = {
    "publisher": ("l.publisher_id", "s.publisher_id", "publisher_id"),
    "vertical": ("l.vertical", "s.vertical", "vertical"),
    "day": (
        "(l.received_at AT TIME ZONE 'UTC')::date",
        "(l.received_at AT TIME ZONE 'UTC')::date",
        "day",
    ),
}
_PING_GROUPS = {"buyer": "buyer_id", "campaign": "campaign_id"}


def _range(start: date, end: date) -> tuple[datetime, datetime]:
    return (
        datetime.combine(start, time.min, tzinfo=UTC),
        datetime.combine(end + timedelta(days=1), time.min, tzinfo=UTC),
    )


async def sales_report(
    conn: Conn, start: date, end: date, group_by: GroupBy
) -> list[dict[str, Any]]:
    """Rows of leads, sold, revenue, payout and margin (cents) per group; ``end`` inclusive."""
    lo, hi = _range(start, end)
    if group_by in _PING_GROUPS:
        col = _PING_GROUPS[group_by]
        sql = f"""
            WITH considered AS (
                SELECT p.{col} AS grp, count(DISTINCT p.lead_id) AS leads
                FROM pings p JOIN leads l ON l.lead_id = p.lead_id
                WHERE l.received_at >= $1 AND l.received_at < $2 AND NOT l.test
                  AND p.outcome IN ('bid', 'no_bid', 'timeout', 'error', 'fixed_price')
                GROUP BY 1),
            sold AS (
                SELECT s.{col} AS grp, count(*) AS sold, sum(s.price_cents) AS revenue,
                       sum(s.payout_cents) AS payout
                FROM sales s JOIN leads l ON l.lead_id = s.lead_id
                WHERE l.received_at >= $1 AND l.received_at < $2 AND NOT s.test
                GROUP BY 1)
            SELECT coalesce(c.grp, s.grp) AS grp, coalesce(c.leads, 0) AS leads,
                   coalesce(s.sold, 0) AS sold, coalesce(s.revenue, 0) AS revenue,
                   coalesce(s.payout, 0) AS payout
            FROM considered c FULL JOIN sold s ON s.grp = c.grp
            ORDER BY 1"""
        key = f"{group_by}_id"
    else:
        lead_col, _, key = _LEAD_GROUPS[group_by]
        sql = f"""
            SELECT {lead_col} AS grp, count(*) AS leads,
                   count(*) FILTER (WHERE l.status = 'sold') AS sold,
                   coalesce(sum(x.revenue), 0) AS revenue, coalesce(sum(x.payout), 0) AS payout
            FROM leads l
            LEFT JOIN LATERAL (
                SELECT sum(price_cents) AS revenue, sum(payout_cents) AS payout
                FROM sales s WHERE s.lead_id = l.lead_id) x ON true
            WHERE l.received_at >= $1 AND l.received_at < $2 AND NOT l.test
            GROUP BY 1 ORDER BY 1"""
    rows = await conn.fetch(sql, lo, hi)
    return [
        {
            key: str(r["grp"]),
            "leads": int(r["leads"]),
            "sold": int(r["sold"]),
            "revenue_cents": int(r["revenue"]),
            "payout_cents": int(r["payout"]),
            "margin_cents": int(r["revenue"]) - int(r["payout"]),
        }
        for r in rows
    ]


async def buyers_report(conn: Conn, start: date, end: date) -> list[dict[str, Any]]:
    """Per buyer: pings, bids, wins, timeouts, latency percentiles and post rejects."""
    lo, hi = _range(start, end)
    # Leads in range first (index on received_at), then their pings and posts by lead_id:
    # the range means when leads arrived, as in the sales report, and test leads stay out.
    rows = await conn.fetch(
        """
        WITH l AS NOT MATERIALIZED (
            SELECT lead_id FROM leads
            WHERE received_at >= $1 AND received_at < $2 AND NOT test),
        p AS (
            SELECT buyer_id,
                   count(*) FILTER (WHERE outcome IN ('bid','no_bid','timeout','error')) AS pings,
                   count(*) FILTER (WHERE outcome = 'bid') AS bids,
                   count(*) FILTER (WHERE outcome = 'timeout') AS timeouts,
                   count(*) FILTER (WHERE outcome = 'error') AS errors,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms)
                       FILTER (WHERE outcome IN ('bid','no_bid')) AS p50,
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms)
                       FILTER (WHERE outcome IN ('bid','no_bid')) AS p95
            FROM pings JOIN l USING (lead_id)
            GROUP BY buyer_id),
        q AS (
            SELECT buyer_id,
                   count(*) FILTER (WHERE state = 'accepted') AS wins,
                   count(*) FILTER (WHERE state = 'rejected') AS post_rejects,
                   count(*) FILTER (WHERE state = 'failed') AS post_failures,
                   count(*) FILTER (WHERE state = 'unknown') AS post_unknown
            FROM posts JOIN l USING (lead_id)
            -- posts come within a lead's deadline of its arrival: the time range narrows
            -- them by index before the join (a day of slack covers any deadline).
            WHERE posts.created_at >= $1 AND posts.created_at < $2 + interval '1 day'
            GROUP BY buyer_id)
        SELECT coalesce(p.buyer_id, q.buyer_id) AS buyer_id, p.pings, p.bids, p.timeouts, p.errors,
               p.p50, p.p95, q.wins, q.post_rejects, q.post_failures, q.post_unknown
        FROM p FULL JOIN q ON q.buyer_id = p.buyer_id ORDER BY 1""",
        lo,
        hi,
    )
    out = []
    for r in rows:
        pings, bids, wins = int(r["pings"] or 0), int(r["bids"] or 0), int(r["wins"] or 0)
        out.append(
            {
                "buyer_id": r["buyer_id"],
                "pings": pings,
                "bids": bids,
                "bid_rate": round(bids / pings, 4) if pings else 0.0,
                "wins": wins,
                "win_rate": round(wins / bids, 4) if bids else 0.0,
                "timeouts": int(r["timeouts"] or 0),
                "errors": int(r["errors"] or 0),
                "latency_p50_ms": None if r["p50"] is None else round(float(r["p50"]), 1),
                "latency_p95_ms": None if r["p95"] is None else round(float(r["p95"]), 1),
                "post_rejects": int(r["post_rejects"] or 0),
                "post_failures": int(r["post_failures"] or 0),
                "post_unknown": int(r["post_unknown"] or 0),
            }
        )
    return out
