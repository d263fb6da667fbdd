"""Operators' API: a lead's story, settling unknown posts, campaign pause, config reload."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from exchange.api.auth import admin_or_publisher, require_admin, runtime
from exchange.auction.settle import SettleError, settle
from exchange.money import fmt
from exchange.store.leads import lead_story

router = APIRouter()


class SettleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    buyer_id: str = Field(min_length=1, max_length=64, pattern=r"^[^\x00]+$")  # no NUL in PG
    accepted: bool


def _lead_uuid(lead_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(lead_id)
    except ValueError:
        raise HTTPException(404, "no such lead") from None


@router.get("/v1/leads/{lead_id}", tags=["operators"], summary="A lead's story (admin) or status")
async def get_lead(lead_id: str, request: Request) -> dict[str, Any]:
    rt = runtime(request)
    publisher = admin_or_publisher(rt, request)
    async with rt.pool.acquire() as conn:
        story = await lead_story(conn, _lead_uuid(lead_id))
    if story is None or (publisher is not None and story["publisher_id"] != publisher.id):
        raise HTTPException(404, "no such lead")
    if publisher is None:
        return story
    answer = {"lead_id": story["lead_id"], "status": story["status"], "payout": story["payout"]}
    if story["reason"]:
        answer["reason"] = story["reason"]
    return answer


@router.post("/v1/leads/{lead_id}/settle", tags=["operators"], summary="Settle a pending post")
async def settle_lead(lead_id: str, body: SettleBody, request: Request) -> dict[str, Any]:
    rt = runtime(request)
    require_admin(rt, request)
    try:
        settled = await settle(
            rt.pool,
            rt.auction.caps,
            rt.catalog,
            _lead_uuid(lead_id),
            body.buyer_id,
            body.accepted,
            "operator",
        )
    except SettleError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return {"lead_id": lead_id, "status": settled.status, "payout": fmt(settled.payout_cents)}
