"""The native buyer protocol and its signatures, as pure functions: bytes out, answers in."""

from __future__ import annotations

import hashlib
import hmac
from decimal import Decimal
from typing import Any

import orjson
import pytest

from exchange.auction.types import Reason
from exchange.buyers.protocol import ping_body, post_body, read_ping_answer, read_post_answer
from exchange.buyers.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature,
    signed_headers,
    verify,
)

NOW = 1_700_000_000


def _ping(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "ping_id": "p-1",
        "campaign_id": "acme-auto",
        "vertical": "auto_insurance",
        "exclusive": True,
        "tmax_ms": 250,
        "test": False,
        "state": "CA",
        "zip5": "94105",
        "ping_profile": {"age": 34, "credit": "good"},
        **overrides,
    }
    data: dict[str, Any] = orjson.loads(ping_body(**args))
    return data


def test_ping_body_has_the_spec_shape_and_nothing_more() -> None:
    assert _ping() == {
        "ping_id": "p-1",
        "campaign_id": "acme-auto",
        "vertical": "auto_insurance",
        "exclusive": True,
        "tmax_ms": 250,
        "test": False,
        "lead": {"state": "CA", "zip": "94105", "profile": {"age": 34, "credit": "good"}},
    }
    assert _ping(test=True, exclusive=False)["test"] is True


def test_ping_body_writes_decimals_as_json_numbers() -> None:
    profile = {"income": Decimal("52000.50"), "household": Decimal("3")}
    assert _ping(ping_profile=profile)["lead"]["profile"] == {"income": 52000.5, "household": 3}
    # A whole number past 64 bits (a config without a max) goes as a float, not a TypeError.
    huge = _ping(ping_profile={"income": Decimal("1e20")})["lead"]["profile"]
    assert huge == {"income": 1e20}


def test_post_body_carries_the_whole_lead_and_a_two_place_price() -> None:
    lead = {
        "contact": {"phone": "+14155550100"},
        "profile": {"age": 34},
        "consent": {},
        "source": {},
    }
    raw = post_body(
        ping_id="p-1",
        campaign_id="acme-auto",
        bid_id="b-9",
        price_cents=1250,
        lead_id="L-1",
        test=True,
        lead=lead,
    )
    assert orjson.loads(raw) == {
        "ping_id": "p-1",
        "campaign_id": "acme-auto",
        "bid_id": "b-9",
        "price": "12.50",
        "lead_id": "L-1",
        "test": True,
        "lead": lead,
    }
    post_only = orjson.loads(
        post_body(
            ping_id=None,
            campaign_id="c",
            bid_id=None,
            price_cents=500,
            lead_id="L",
            test=False,
            lead={},
        )
    )
    assert (post_only["bid_id"], post_only["price"]) == (None, "5.00")


@pytest.mark.parametrize(
    ("status", "body", "cents", "bid_id"),
    [
        (200, b'{"bid": true, "price": 12.5, "bid_id": "b-991"}', 1250, "b-991"),
        (200, b'{"bid": true, "price": "12.50"}', 1250, None),
        (201, b'{"bid": true, "price": 20, "bid_id": 991}', 2000, "991"),
        (200, b'{"bid": true, "price": 0.1}', 10, None),
        (200, b'{"bid": true, "price": 12.999}', 1299, None),  # cut, never rounded up
        (200, b'{"bid": true, "price": "7", "bid_id": ["x"]}', 700, None),
    ],
)
def test_bids_are_read_in_exact_cents(
    status: int, body: bytes, cents: int, bid_id: str | None
) -> None:
    answer = read_ping_answer(status, body)
    assert (answer.outcome, answer.price_cents, answer.bid_id) == (Reason.BID, cents, bid_id)


def test_long_ids_and_reasons_are_cut() -> None:
    bid = read_ping_answer(200, orjson.dumps({"bid": True, "price": 5, "bid_id": "b" * 500}))
    assert bid.bid_id == "b" * 128
    no = read_ping_answer(200, orjson.dumps({"bid": False, "reason": "r" * 500}))
    assert (no.outcome, no.reason) == (Reason.NO_BID, "r" * 200)


def test_no_bid_is_not_an_error() -> None:
    answer = read_ping_answer(200, b'{"bid": false}')
    assert (answer.outcome, answer.price_cents) == (Reason.NO_BID, None)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, b'{"bid": true, "price": 99}'),
        (302, b'{"bid": true, "price": 99}'),
        (204, b""),
        (200, b"<html>oops</html>"),
        (200, b'[{"bid": true, "price": 5}]'),
        (200, b"null"),
        (200, b'{"price": 5}'),
        (200, b'{"bid": "true", "price": 5}'),
        (200, b'{"bid": 1, "price": 5}'),
        (200, b'{"bid": true}'),
        (200, b'{"bid": true, "price": null}'),
        (200, b'{"bid": true, "price": -5}'),
        (200, b'{"bid": true, "price": 0}'),
        (200, b'{"bid": true, "price": 0.001}'),
        (200, b'{"bid": true, "price": true}'),
        (200, b'{"bid": true, "price": "twelve"}'),
        (200, b'{"bid": true, "price": "NaN"}'),
        (200, b'{"bid": true, "price": "Infinity"}'),
        (200, b'{"bid": true, "price": "1e400"}'),
        (200, b'{"bid": true, "price": 1e12}'),
        (200, b'{"bid": true, "price": {"amount": 5}}'),
    ],
)
def test_unreadable_ping_answers_are_errors(status: int, body: bytes) -> None:
    answer = read_ping_answer(status, body)
    assert answer.outcome is Reason.ERROR and answer.price_cents is None
    assert answer.reason


@pytest.mark.parametrize(
    ("status", "body", "accepted", "reason", "buyer_lead_id"),
    [
        (200, b'{"accepted": true, "buyer_lead_id": "L-7"}', True, None, "L-7"),
        (202, b'{"accepted": true}', True, None, None),
        (200, b'{"accepted": false, "reason": "dup"}', False, "dup", None),
        (200, b"ok!", None, "answer is not {'accepted': true|false}", None),
        (200, b'{"accepted": "yes"}', None, "answer is not {'accepted': true|false}", None),
        (200, b"{}", None, "answer is not {'accepted': true|false}", None),
        (500, b"boom", False, "HTTP 500", None),
        (500, b'{"accepted": true}', False, "HTTP 500", None),
        (409, b'{"accepted": false, "reason": "dup"}', False, "HTTP 409: dup", None),
        (302, b"", False, "HTTP 302", None),
    ],
)
def test_post_answers(
    status: int, body: bytes, accepted: bool | None, reason: str | None, buyer_lead_id: str | None
) -> None:
    answer = read_post_answer(status, body)
    assert (answer.accepted, answer.reason, answer.buyer_lead_id) == (
        accepted,
        reason,
        buyer_lead_id,
    )


# --- signatures --------------------------------------------------------------------------

SECRET = "buyer-secret-1"
BODY = b'{"ping_id":"p1"}'
# openssl: printf '%s' '1700000000.{"ping_id":"p1"}' | openssl dgst -sha256 -hmac buyer-secret-1
KNOWN = "sha256=fe3aa99f9dec2a1610a41c4a90e0e68001ee57f430b33f7540a61f0f182eaffa"


def test_signature_matches_an_independent_hmac() -> None:
    assert signature(SECRET, str(NOW), BODY) == KNOWN
    mac = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert "sha256=" + mac == KNOWN


def test_signed_headers_verify_and_name_the_timestamp() -> None:
    headers = signed_headers(SECRET, BODY, now=NOW + 0.9)
    assert headers[TIMESTAMP_HEADER] == str(NOW)
    assert headers[SIGNATURE_HEADER] == KNOWN
    assert headers["Content-Type"] == "application/json"
    assert verify(SECRET, headers[TIMESTAMP_HEADER], BODY, headers[SIGNATURE_HEADER], now=NOW)


@pytest.mark.parametrize(
    ("secret", "timestamp", "body", "header", "now"),
    [
        ("other-secret", str(NOW), BODY, KNOWN, NOW),
        (SECRET, str(NOW), BODY + b" ", KNOWN, NOW),
        (SECRET, str(NOW + 1), BODY, KNOWN, NOW),
        (SECRET, str(NOW), BODY, KNOWN.removeprefix("sha256="), NOW),
        (SECRET, str(NOW), BODY, KNOWN.upper(), NOW),
        (SECRET, str(NOW), BODY, KNOWN, NOW + 301),  # replayed after the window
        (SECRET, str(NOW), BODY, KNOWN, NOW - 301),  # from the future
        (SECRET, "yesterday", BODY, KNOWN, NOW),
        (SECRET, "", BODY, KNOWN, NOW),
    ],
)
def test_verify_refuses_anything_but_a_fresh_exact_signature(
    secret: str, timestamp: str, body: bytes, header: str, now: int
) -> None:
    assert not verify(secret, timestamp, body, header, now=now)


def test_verify_accepts_within_the_window() -> None:
    assert verify(SECRET, str(NOW), BODY, KNOWN, now=NOW + 300)
    assert verify(SECRET, str(NOW), BODY, KNOWN, now=NOW - 300)
