"""One simulated buyer: its behaviour spec, its counters and its ping/post handlers (SPEC §4).

A buyer answers ``POST …/ping`` with a bid or no bid and ``POST …/post`` with accepted or
rejected, after a sampled latency. Its ``mode`` makes it misbehave the ways real buyers
do, so the exchange's deadline, parsing and fallback can be measured against them.

Usage::

    spec = BuyerSpec("acme", secret="s3cret", latency=Latency.uniform(20, 50))
    buyer = SimBuyer(spec, random.Random(1), asyncio.Event())
    app.router.add_post("/acme/ping", buyer.handle_ping)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import random
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, get_args

import orjson
from aiohttp import web

Mode = Literal["normal", "hang", "trickle", "garbage", "error", "slow", "flaky"]
MODES: tuple[str, ...] = get_args(Mode)

# Realistic per-lead prices per vertical, in cents (low, high), drawn uniformly.
VERTICAL_PRICES_CENTS: Mapping[str, tuple[int, int]] = {
    "auto_insurance": (800, 3500),
    "mortgage": (1500, 6000),
    "solar": (2000, 9000),
    "debt": (1000, 4500),
}
# Keys that must never reach a buyer in a ping; any of them at any depth flags the ping.
PII_KEYS = frozenset(
    {"name", "first_name", "last_name", "full_name", "email", "phone", "phone_number"}
    | {"address", "street", "street_address", "address1", "address2"}
)
SIGNATURE_MAX_SKEW_S = 300  # a timestamp further off than this is a replay, not a signature
_JSON = "application/json"


@dataclass(frozen=True)
class Latency:
    """A latency distribution: ``fixed``, ``uniform`` (low..high) or ``lognormal``.

    For ``lognormal`` ``low_ms`` is the median and ``high_ms`` an optional cap (0 = none).
    """

    kind: Literal["fixed", "uniform", "lognormal"] = "fixed"
    low_ms: float = 0.0
    high_ms: float = 0.0
    sigma: float = 0.5

    @classmethod
    def fixed(cls, ms: float) -> Latency:
        return cls("fixed", ms, ms)

    @classmethod
    def uniform(cls, low_ms: float, high_ms: float) -> Latency:
        return cls("uniform", low_ms, high_ms)

    @classmethod
    def lognormal(cls, median_ms: float, sigma: float = 0.5, cap_ms: float = 0.0) -> Latency:
        return cls("lognormal", median_ms, cap_ms, sigma)

    @classmethod
    def parse(cls, text: str) -> Latency:
        """``"20"`` fixed, ``"20-50"`` uniform, ``"ln:40:0.5[:250]"`` lognormal median:sigma:cap."""
        if text.startswith("ln:"):
            parts = [float(p) for p in text[3:].split(":")]
            return cls.lognormal(parts[0], *parts[1:3])
        if "-" in text:
            low, high = (float(p) for p in text.split("-", 1))
            return cls.uniform(low, high)
        return cls.fixed(float(text))

    def sample_s(self, rng: random.Random) -> float:
        if self.kind == "uniform":
            return rng.uniform(self.low_ms, self.high_ms) / 1000
        if self.kind == "lognormal":
            ms = rng.lognormvariate(math.log(max(self.low_ms, 0.001)), self.sigma)
            return (min(ms, self.high_ms) if self.high_ms > 0 else ms) / 1000
        return self.low_ms / 1000

    def upper_ms(self) -> float:
        """The slowest answer this distribution can give (``inf`` for an uncapped lognormal)."""
        if self.kind == "lognormal" and self.high_ms <= 0:
            return math.inf
        return self.high_ms


@dataclass(frozen=True)
class BuyerSpec:
    """How one simulated buyer behaves. Rates and probabilities are shares in [0, 1].

    ``port=None`` serves the buyer on the fleet's shared port under ``/<buyer_id>/ping``;
    an int gives it a listener of its own (0 = any free port), where ``ping_path`` /
    ``post_path`` (e.g. ``/ping`` from a config's URLs) work too.
    """

    buyer_id: str
    secret: str | None = None  # verify our signatures with it; None = count nothing
    mode: Mode = "normal"
    bid_probability: float = 0.9
    prices_cents: Mapping[str, tuple[int, int]] = field(
        default_factory=lambda: dict(VERTICAL_PRICES_CENTS)
    )
    latency: Latency = Latency()
    post_latency: Latency = Latency()
    reject_rate: float = 0.0  # share of posts answered accepted=false
    error_rate: float = 0.3  # flaky: share of requests answered 500
    late_rate: float = 1.0  # slow: share of answers sent after timeout_ms
    timeout_ms: int = 250  # the exchange's ping timeout for this buyer (slow mode exceeds it)
    enforce_signatures: bool = False  # answer 401 to a bad signature, not only count it
    trickle_interval_ms: int = 50
    trickle_bytes: int = 200  # whitespace bytes trickled before the bid body
    host: str | None = None
    port: int | None = None
    ping_path: str | None = None
    post_path: str | None = None


@dataclass
class BuyerStats:
    """What one buyer saw; ``pii_pings`` > 0 means a ping carried personal data."""

    pings: int = 0
    bids: int = 0
    no_bids: int = 0
    posts: int = 0
    accepts: int = 0
    rejects: int = 0
    accepted_cents: int = 0
    test_leads: int = 0
    bad_signatures: int = 0
    pii_pings: int = 0
    injected_errors: int = 0
    garbage: int = 0
    hangs: int = 0
    trickles: int = 0
    late: int = 0

    @property
    def pii_in_ping(self) -> bool:
        return self.pii_pings > 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "pii_in_ping": self.pii_in_ping}


def sign_headers(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The exchange's signature headers for ``body`` (SPEC §4)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Exchange-Timestamp": ts, "X-Exchange-Signature": f"sha256={digest}"}


def signature_ok(secret: str, headers: Mapping[str, str], body: bytes) -> bool:
    """True when the headers sign ``body`` with ``secret`` and the timestamp is fresh."""
    ts = headers.get("X-Exchange-Timestamp", "")
    given = headers.get("X-Exchange-Signature", "")
    if not ts.isdigit() or abs(time.time() - int(ts)) > SIGNATURE_MAX_SKEW_S:
        return False
    return hmac.compare_digest(given, sign_headers(secret, body, int(ts))["X-Exchange-Signature"])


def has_pii(value: Any) -> bool:
    """True when any mapping inside ``value`` has a personal-data key."""
    if isinstance(value, dict):
        return any(k in PII_KEYS or has_pii(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_pii(v) for v in value)
    return False


def price_cents(value: Any) -> int:
    """A wire price (JSON number or decimal string) in cents; 0 when unreadable."""
    try:
        return int((Decimal(str(value)) * 100).to_integral_value())
    except (InvalidOperation, ValueError):
        return 0


def _price_json(cents: int) -> orjson.Fragment:
    # A JSON number written from integer cents, so no float ever holds the price.
    return orjson.Fragment(f"{cents // 100}.{cents % 100:02d}".encode())


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=_JSON)


class SimBuyer:
    """Serves one :class:`BuyerSpec`; ``closing`` releases hung handlers at shutdown."""

    def __init__(self, spec: BuyerSpec, rng: random.Random, closing: asyncio.Event) -> None:
        self.spec = spec
        self.stats = BuyerStats()
        self._rng = rng
        self._closing = closing
        self._seq = 0

    def reset_stats(self) -> None:
        self.stats = BuyerStats()

    async def handle_ping(self, request: web.Request) -> web.StreamResponse:
        self.stats.pings += 1
        body, refused = await self._receive(request)
        if refused is not None:
            return refused
        if has_pii(body):
            self.stats.pii_pings += 1
        misbehaved = await self._misbehave(request)
        if misbehaved is not None:
            return misbehaved
        await self._delay(self.spec.latency)
        return _json(self._decide(body))

    async def handle_post(self, request: web.Request) -> web.StreamResponse:
        self.stats.posts += 1
        body, refused = await self._receive(request)
        if refused is not None:
            return refused
        misbehaved = await self._misbehave(request)
        if misbehaved is not None:
            return misbehaved
        await self._delay(self.spec.post_latency)
        if self._rng.random() < self.spec.reject_rate:
            self.stats.rejects += 1
            return _json({"accepted": False, "reason": "not a fit"})
        self.stats.accepts += 1
        self.stats.accepted_cents += price_cents(body.get("price"))
        self._seq += 1
        return _json({"accepted": True, "buyer_lead_id": f"{self.spec.buyer_id}-L{self._seq}"})

    async def _receive(self, request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
        """Read, verify and parse the body; a refusal response when it cannot be used."""
        raw = await request.read()
        secret = self.spec.secret
        if secret is not None and not signature_ok(secret, request.headers, raw):
            self.stats.bad_signatures += 1
            if self.spec.enforce_signatures:
                return {}, _json({"error": "bad signature"}, 401)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return {}, _json({"error": "body is not JSON"}, 400)
        if not isinstance(body, dict):
            return {}, _json({"error": "body is not an object"}, 400)
        if body.get("test"):
            self.stats.test_leads += 1
        return body, None

    def _decide(self, ping: dict[str, Any]) -> dict[str, Any]:
        prices = self.spec.prices_cents.get(str(ping.get("vertical")))
        if prices is None or self._rng.random() >= self.spec.bid_probability:
            self.stats.no_bids += 1
            reason = "vertical not bought" if prices is None else "not interested"
            return {"bid": False, "reason": reason}
        self.stats.bids += 1
        self._seq += 1
        cents = self._rng.randint(*prices)
        return {
            "bid": True,
            "price": _price_json(cents),
            "bid_id": f"{self.spec.buyer_id}-{self._seq}",
        }

    async def _delay(self, latency: Latency) -> None:
        seconds = latency.sample_s(self._rng)
        if self.spec.mode == "slow" and self._rng.random() < self.spec.late_rate:
            self.stats.late += 1
            seconds += self.spec.timeout_ms / 1000 + 0.05  # past the timeout, whatever it drew
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def _misbehave(self, request: web.Request) -> web.StreamResponse | None:
        """The mode's broken answer, or None to answer normally."""
        mode = self.spec.mode
        if mode == "error" or (mode == "flaky" and self._rng.random() < self.spec.error_rate):
            self.stats.injected_errors += 1
            return _json({"error": "internal"}, 500)
        if mode == "garbage":
            self.stats.garbage += 1
            return web.Response(body=b"<html>502 upstream hiccup", content_type=_JSON)
        if mode == "hang":
            self.stats.hangs += 1
            await self._closing.wait()  # never answers while the fleet runs
            return _json({"error": "closing"}, 503)
        if mode == "trickle":
            self.stats.trickles += 1
            return await self._trickle(request)
        return None

    async def _trickle(self, request: web.Request) -> web.StreamResponse:
        """Headers at once, then one byte per interval: defeats per-read timeouts."""
        resp = web.StreamResponse(headers={"Content-Type": _JSON})
        await resp.prepare(request)
        bid = {"bid": True, "price": _price_json(9900), "bid_id": f"{self.spec.buyer_id}-trickle"}
        payload = b" " * self.spec.trickle_bytes + orjson.dumps(bid)
        try:
            for i in range(len(payload)):
                if self._closing.is_set():
                    break
                await resp.write(payload[i : i + 1])
                await asyncio.sleep(self.spec.trickle_interval_ms / 1000)
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client gave up, which is the point
        return resp
