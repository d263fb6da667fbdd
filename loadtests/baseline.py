"""The bare fan-out ceiling: ``POST /v1/leads`` that pings every buyer, posts the best bid, answers.

No validation, dedupe, caps or stores: only what a ping-post exchange cannot skip (signed
orjson bodies on one shared client session, one ``asyncio.wait`` deadline, cancel the
late, post the winner). What the exchange adds on top of this is its own cost.

Usage::

    app = create_app(targets_from_urls(["http://127.0.0.1:9100/b01"]), tmax_ms=300)

CLI: ``python -m loadtests.baseline --port 8100 --buyers-url http://127.0.0.1:9100/b01
--buyers-url …`` or ``--config DIR`` (every campaign of a buyer with a ``ping_url``).
``--workers N`` runs N processes on one port (SO_REUSEPORT). Once up it prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import multiprocessing
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import web

from loadtests.buyer import price_cents, sign_headers
from loadtests.config import buyers_from_config, timing_from_config

REVSHARE_PERCENT = 70  # the publisher's share, only to answer a realistic payout


@dataclass(frozen=True)
class Target:
    """One buyer campaign to ping; ``verticals`` None means it takes every vertical."""

    buyer_id: str
    campaign_id: str
    ping_url: str
    post_url: str
    secret: str | None = None
    timeout_ms: int = 250
    verticals: frozenset[str] | None = None


@dataclass(frozen=True)
class _Bid:
    cents: int
    bid_id: str
    ping_id: str
    target: Target


def targets_from_urls(
    urls: Sequence[str], timeout_ms: int = 250, secret: str | None = None
) -> list[Target]:
    """A target per buyer base URL (``…/ping`` and ``…/post`` under it), for every vertical."""
    targets = []
    for url in urls:
        base = url.rstrip("/")
        buyer_id = urlsplit(base).path.strip("/").replace("/", "-") or urlsplit(base).netloc
        targets.append(
            Target(buyer_id, buyer_id, base + "/ping", base + "/post", secret, timeout_ms)
        )
    return targets


def targets_from_config(config_dir: Path | str) -> list[Target]:
    """A target per campaign of each buyer that has a ``ping_url`` (post-only ones never bid)."""
    return [
        Target(
            b.buyer_id,
            campaign_id,
            b.ping_url,
            b.post_url,
            b.secret,
            b.timeout_ms,
            frozenset({vertical}),
        )
        for b in buyers_from_config(config_dir)
        if b.ping_url and b.post_url
        for campaign_id, vertical in b.campaigns
    ]


class Baseline:
    """The fan-out server's state: targets, timing and the one shared client session."""

    def __init__(
        self, targets: Sequence[Target], tmax_ms: int, post_timeout_ms: int, max_in_flight: int
    ) -> None:
        self.targets = list(targets)
        self.tmax_s = tmax_ms / 1000
        self.post_timeout_s = post_timeout_ms / 1000
        self.max_in_flight = max_in_flight  # 0 = no limit: the bare, collapsible ceiling
        self.in_flight = 0
        self._session: aiohttp.ClientSession | None = None

    async def session_ctx(self, _: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector, skip_auto_headers=("User-Agent",)
        )
        yield
        await self._session.close()

    async def handle_lead(self, request: web.Request) -> web.Response:
        if self.max_in_flight and self.in_flight >= self.max_in_flight:
            return web.Response(status=503, headers={"Retry-After": "1"})
        try:
            lead = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            lead = None
        if not isinstance(lead, dict):
            return web.json_response({"detail": "body must be a JSON object"}, status=422)
        self.in_flight += 1
        try:
            answer = await self._sell(lead, uuid.uuid4().hex)
        finally:
            self.in_flight -= 1
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    async def _sell(self, lead: dict[str, Any], lead_id: str) -> dict[str, Any]:
        bids = await self._ping_all(lead, lead_id)
        answer = {"lead_id": lead_id, "status": "unsold", "payout": "0.00"}
        if not bids:
            return {**answer, "reason": "no_bid"}
        best = max(bids, key=lambda b: b.cents)
        if not await self._post(lead, lead_id, best):
            return {**answer, "reason": "post_rejected"}
        payout = best.cents * REVSHARE_PERCENT // 100
        return {**answer, "status": "sold", "payout": f"{payout // 100}.{payout % 100:02d}"}

    async def _ping_all(self, lead: dict[str, Any], lead_id: str) -> list[_Bid]:
        vertical = str(lead.get("vertical", ""))
        contact = lead.get("contact") or {}
        pings = [
            asyncio.create_task(self._ping(t, lead, contact, f"{lead_id}-{n}"))
            for n, t in enumerate(self.targets)
            if t.verticals is None or vertical in t.verticals
        ]
        if not pings:
            return []
        done, late = await asyncio.wait(pings, timeout=self.tmax_s)
        for task in late:
            task.cancel()  # never awaited: on a busy loop that would stretch the deadline
        return [bid for t in done if not t.cancelled() and (bid := t.result()) is not None]

    async def _ping(
        self, target: Target, lead: dict[str, Any], contact: dict[str, Any], ping_id: str
    ) -> _Bid | None:
        timeout_ms = min(target.timeout_ms, int(self.tmax_s * 1000))
        body = {
            "ping_id": ping_id,
            "campaign_id": target.campaign_id,
            "vertical": lead.get("vertical"),
            "exclusive": True,
            "tmax_ms": timeout_ms,
            "test": bool(lead.get("test")),
            "lead": {
                "state": contact.get("state"),
                "zip": contact.get("zip"),
                "profile": lead.get("profile") or {},
            },
        }
        answer = await self._call(target, target.ping_url, body, timeout_ms / 1000)
        if not answer or answer.get("bid") is not True:
            return None
        cents = price_cents(answer.get("price"))
        return _Bid(cents, str(answer.get("bid_id", "")), ping_id, target) if cents > 0 else None

    async def _post(self, lead: dict[str, Any], lead_id: str, bid: _Bid) -> bool:
        body = {
            "ping_id": bid.ping_id,
            "campaign_id": bid.target.campaign_id,
            "bid_id": bid.bid_id,
            "price": f"{bid.cents // 100}.{bid.cents % 100:02d}",
            "lead_id": lead_id,
            "test": bool(lead.get("test")),
            "lead": {k: lead.get(k) or {} for k in ("contact", "profile", "consent", "source")},
        }
        answer = await self._call(bid.target, bid.target.post_url, body, self.post_timeout_s)
        return bool(answer and answer.get("accepted") is True)

    async def _call(
        self, target: Target, url: str, body: dict[str, Any], timeout_s: float
    ) -> dict[str, Any] | None:
        """POST a signed body; the parsed JSON object, or None for any failure."""
        assert self._session is not None, "the app's cleanup context opens the session"
        raw = orjson.dumps(body)
        headers = {"Content-Type": "application/json"}
        if target.secret is not None:
            headers |= sign_headers(target.secret, raw)
        try:
            async with self._session.post(
                url, data=raw, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                payload = await resp.read()
                if resp.status // 100 != 2:
                    return None
            answer = orjson.loads(payload)
        except (TimeoutError, aiohttp.ClientError, OSError, orjson.JSONDecodeError):
            return None
        return answer if isinstance(answer, dict) else None


def create_app(
    targets: Sequence[Target],
    *,
    tmax_ms: int = 300,
    post_timeout_ms: int = 2000,
    max_in_flight: int = 0,
) -> web.Application:
    """The baseline's aiohttp app: ``POST /v1/leads`` and ``GET /healthz``."""
    baseline = Baseline(targets, tmax_ms, post_timeout_ms, max_in_flight)
    app = web.Application()
    app.cleanup_ctx.append(baseline.session_ctx)
    app.router.add_post("/v1/leads", baseline.handle_lead)
    app.router.add_get("/healthz", _healthz)
    return app


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.baseline", description=__doc__.split("\n")[0]
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--buyers-url", action="append", default=[], help="a buyer base URL; repeat")
    p.add_argument("--config", type=Path, help="ping the buyers of this exchange config dir")
    p.add_argument("--secret", help="sign pings to --buyers-url buyers with this secret")
    p.add_argument("--tmax-ms", type=int, help="ping phase (default: config's, else 300)")
    p.add_argument("--timeout-ms", type=int, default=250, help="each --buyers-url buyer's")
    p.add_argument("--post-timeout-ms", type=int, help="one post (default: config's, else 2000)")
    p.add_argument("--max-in-flight", type=int, default=0, help="503 past this many (0 = none)")
    p.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    return p


def _build(args: argparse.Namespace) -> web.Application:
    tmax_ms, post_timeout_ms = timing_from_config(args.config) if args.config else (300, 2000)
    urls = [u for arg in args.buyers_url for u in arg.split(",") if u]
    targets = targets_from_urls(urls, args.timeout_ms, args.secret)
    if args.config:
        targets += targets_from_config(args.config)
    if not targets:
        raise SystemExit("no buyers: give --buyers-url or --config")
    return create_app(
        targets,
        tmax_ms=args.tmax_ms or tmax_ms,
        post_timeout_ms=args.post_timeout_ms or post_timeout_ms,
        max_in_flight=args.max_in_flight,
    )


def serve(argv: Sequence[str], announce: bool = True) -> None:
    """Run one worker until SIGINT/SIGTERM (workers share the port through SO_REUSEPORT)."""
    args = _parser().parse_args(argv)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(_serve_forever(args, announce))


async def _serve_forever(args: argparse.Namespace, announce: bool) -> None:
    app_runner = web.AppRunner(_build(args), access_log=None)
    await app_runner.setup()
    site = web.TCPSite(app_runner, args.host, args.port, reuse_port=True, backlog=4096)
    await site.start()
    gc.freeze()  # start-up objects never need scanning again: fewer, shorter GC pauses
    gc.set_threshold(50_000, 50, 100)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    if announce:
        line = {"ready": True, "url": f"http://{args.host}:{args.port}", "workers": args.workers}
        sys.stdout.write(orjson.dumps(line).decode() + "\n")
        sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await app_runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    workers = _parser().parse_args(argv).workers
    ctx = multiprocessing.get_context("spawn")
    children = [ctx.Process(target=serve, args=(argv, False)) for _ in range(workers - 1)]
    for child in children:
        child.start()
    try:
        serve(argv)
    finally:
        for child in children:
            child.terminate()
        for child in children:
            with contextlib.suppress(Exception):
                child.join(5)


if __name__ == "__main__":
    main()
