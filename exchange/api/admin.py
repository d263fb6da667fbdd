"""Operator controls: reload the config without a restart, pause and resume campaigns."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request

from exchange.api.auth import require_admin, runtime
from exchange.catalog import ConfigError
from exchange.runtime import ReloadError

router = APIRouter()


@router.post("/v1/admin/reload", tags=["operators"], summary="Reload the config in every worker")
async def reload_config(request: Request) -> dict[str, Any]:
    rt = runtime(request)
    require_admin(rt, request)
    try:
        version = await rt.reload()
    except ConfigError as exc:
        raise HTTPException(422, "; ".join(str(i) for i in exc.issues)) from None
    except ReloadError as exc:
        raise HTTPException(503, str(exc)) from None
    return {"reloaded": True, "version": version, "campaigns": len(rt.catalog.targets)}


@router.post("/v1/campaigns/{campaign_id}/pause", tags=["operators"])
async def pause_campaign(campaign_id: str, request: Request) -> dict[str, Any]:
    return await _set_paused(request, campaign_id, True)


@router.post("/v1/campaigns/{campaign_id}/resume", tags=["operators"])
async def resume_campaign(campaign_id: str, request: Request) -> dict[str, Any]:
    return await _set_paused(request, campaign_id, False)


async def _set_paused(request: Request, campaign_id: str, paused: bool) -> dict[str, Any]:
    rt = runtime(request)
    require_admin(rt, request)
    if campaign_id not in rt.catalog.targets:
        raise HTTPException(404, f"no campaign {campaign_id!r}")
    await rt.set_paused(campaign_id, paused)
    return {"campaign_id": campaign_id, "paused": paused}
