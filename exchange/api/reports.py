"""GET /v1/reports/sales and /v1/reports/buyers, as JSON or CSV (``format=csv``)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from starlette.responses import JSONResponse, Response

from exchange.api.auth import require_admin, runtime
from exchange.money import fmt
from exchange.store.db import Conn
from exchange.store.reports import GroupBy, buyers_report, sales_report

router = APIRouter()

_MONEY = ("revenue", "payout", "margin")


@router.get("/v1/reports/sales", tags=["reports"])
async def sales(
    request: Request,
    from_: date = Query(alias="from"),
    to: date = Query(),
    group_by: GroupBy = Query("day"),
    format: Literal["json", "csv"] = Query("json"),
) -> Response:
    async with _report_connection(request, from_, to) as conn:
        raw = await sales_report(conn, from_, to, group_by)
    rows = []
    for r in raw:
        row: dict[str, Any] = {k: v for k, v in r.items() if not k.endswith("_cents")}
        row["sell_through"] = round(r["sold"] / r["leads"], 4) if r["leads"] else 0.0
        for name in _MONEY:
            row[name] = fmt(r[f"{name}_cents"])
        rows.append(row)
    return _answer(rows, format, {"from": str(from_), "to": str(to), "group_by": group_by})


@router.get("/v1/reports/buyers", tags=["reports"])
async def buyers(
    request: Request,
    from_: date = Query(alias="from"),
    to: date = Query(),
    format: Literal["json", "csv"] = Query("json"),
) -> Response:
    async with _report_connection(request, from_, to) as conn:
        rows = await buyers_report(conn, from_, to)
    return _answer(rows, format, {"from": str(from_), "to": str(to)})


@asynccontextmanager
async def _report_connection(request: Request, start: date, end: date) -> AsyncIterator[Conn]:
    """Admin only, a sane range, then a pooled connection for the report's query."""
    rt = runtime(request)
    require_admin(rt, request)
    _check_range(start, end)
    async with rt.pool.acquire() as conn:
        yield conn


def _check_range(start: date, end: date) -> None:
    if end < start:
        raise HTTPException(422, "'to' is before 'from'")
    if (end - start).days > 366:
        raise HTTPException(422, "a report covers at most 366 days")


def _answer(rows: list[dict[str, Any]], format: str, meta: dict[str, Any]) -> Response:
    if format == "json":
        return JSONResponse({**meta, "rows": rows})
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return Response(out.getvalue(), media_type="text/csv")
