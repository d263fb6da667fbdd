"""The native buyer protocol (SPEC §4): request bodies out, answers in. No I/O here.

Pings carry the ping fields of the profile plus state and zip, never contact data;
answers are read strictly, and anything unreadable is an error, never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from exchange.auction.types import Reason
from exchange.money import MoneyError, fmt, to_cents

_MAX_ID = 128
_MAX_REASON = 200


@dataclass(frozen=True, slots=True)
class PingAnswer:
    outcome: Reason  # BID, NO_BID or ERROR
    price_cents: int | None = None
    bid_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class PostAnswer:
    accepted: bool | None  # None: unreadable answer
    reason: str | None = None
    buyer_lead_id: str | None = None


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        # A JSON integer must fit 64 bits for orjson; validation keeps profile numbers far
        # below that, and anything else goes as the float a buyer's parser would make of it.
        if value == value.to_integral_value() and abs(value) < _INT64:
            return int(value)
        return float(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


_INT64 = 2**63


def ping_body(
    *,
    ping_id: str,
    campaign_id: str,
    vertical: str,
    exclusive: bool,
    tmax_ms: int,
    test: bool,
    state: str,
    zip5: str,
    ping_profile: Mapping[str, Any],
) -> bytes:
    return orjson.dumps(
        {
            "ping_id": ping_id,
            "campaign_id": campaign_id,
            "vertical": vertical,
            "exclusive": exclusive,
            "tmax_ms": tmax_ms,
            "test": test,
            "lead": {"state": state, "zip": zip5, "profile": ping_profile},
        },
        default=_json_default,
    )


def post_body(
    *,
    ping_id: str | None,
    campaign_id: str,
    bid_id: str | None,
    price_cents: int,
    lead_id: str,
    test: bool,
    lead: Mapping[str, Any],
) -> bytes:
    return orjson.dumps(
        {
            "ping_id": ping_id,
            "campaign_id": campaign_id,
            "bid_id": bid_id,
            "price": fmt(price_cents),
            "lead_id": lead_id,
            "test": test,
            "lead": lead,
        },
        default=_json_default,
    )


def read_ping_answer(status: int, body: bytes) -> PingAnswer:
    """A bid, a no-bid, or an error with what was wrong (non-2xx, not JSON, bad price)."""
    if not 200 <= status < 300:
        return PingAnswer(Reason.ERROR, reason=f"HTTP {status}")
    data = _json_object(body)
    if data is None:
        return PingAnswer(Reason.ERROR, reason="answer is not a JSON object")
    bid = data.get("bid")
    if bid is False:
        return PingAnswer(Reason.NO_BID, reason=_text(data.get("reason"), _MAX_REASON))
    if bid is not True:
        return PingAnswer(Reason.ERROR, reason="'bid' must be true or false")
    try:
        cents = to_cents(data.get("price"))
    except MoneyError as exc:
        return PingAnswer(Reason.ERROR, reason=f"bad price: {exc}")
    if cents <= 0:
        return PingAnswer(Reason.ERROR, reason="bid price must be above zero")
    return PingAnswer(Reason.BID, price_cents=cents, bid_id=_text(data.get("bid_id"), _MAX_ID))


def read_post_answer(status: int, body: bytes) -> PostAnswer:
    """Accepted only on 2xx with ``accepted: true``; anything else is a refusal or unreadable."""
    data = _json_object(body)
    if not 200 <= status < 300:
        reason = _text(data.get("reason"), _MAX_REASON) if data else None
        return PostAnswer(False, reason=f"HTTP {status}" + (f": {reason}" if reason else ""))
    if data is None or not isinstance(data.get("accepted"), bool):
        return PostAnswer(None, reason="answer is not {'accepted': true|false}")
    return PostAnswer(
        data["accepted"],
        reason=_text(data.get("reason"), _MAX_REASON),
        buyer_lead_id=_text(data.get("buyer_lead_id"), _MAX_ID),
    )


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _text(value: Any, limit: int) -> str | None:
    """A buyer's id or reason as storable text: Postgres text cannot hold NUL, and one
    buyer's stray NUL must not cost the lead its record (it would fail the whole save)."""
    if value is None:
        return None
    if isinstance(value, str | int):
        return str(value).replace("\x00", "")[:limit]
    return None
