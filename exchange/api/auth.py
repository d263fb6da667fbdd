"""Who is calling: a publisher by API key, or an operator by the admin token."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request

from exchange.catalog.models import Publisher
from exchange.runtime import Runtime

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def is_admin(rt: Runtime, token: str | None) -> bool:
    expected = rt.settings.admin_token
    if not expected or token is None:
        return False
    return hmac.compare_digest(expected.encode(), token.encode())


def require_publisher(rt: Runtime, request: Request) -> Publisher:
    token = bearer(request)
    publisher = rt.catalog.publisher_for_key(token) if token else None
    if publisher is None:
        raise HTTPException(401, "a valid publisher API key is required", headers=_CHALLENGE)
    return publisher


def require_admin(rt: Runtime, request: Request) -> None:
    if not is_admin(rt, bearer(request)):
        raise HTTPException(401, "the admin token is required", headers=_CHALLENGE)


def admin_or_publisher(rt: Runtime, request: Request) -> Publisher | None:
    """None for an operator; the publisher for a publisher key; 401 otherwise."""
    token = bearer(request)
    if is_admin(rt, token):
        return None
    publisher = rt.catalog.publisher_for_key(token) if token else None
    if publisher is None:
        raise HTTPException(
            401, "the admin token or a publisher API key is required", headers=_CHALLENGE
        )
    return publisher
