"""Scriptable buyers: real aiohttp servers on 127.0.0.1 that bid, stall, lie or fail on cue."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web

from exchange.buyers.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

PingMode = Literal[
    "bid", "no_bid", "hang", "garbage", "error500", "oversize", "trickle", "late", "nul_text"
]
PostMode = Literal["accept", "reject", "hang", "error500", "garbage2xx", "nul_text"]
NUL_TEXT = "has\x00nul"  # what a lying buyer puts in its ids and reasons (Postgres refuses NUL)


@dataclass
class Buyer:
    buyer_id: str
    secret: str
    price: Any = "10.00"
    ping_mode: PingMode = "bid"
    post_mode: PostMode = "accept"
    delay_s: float = 0.0
    post_delay_s: float = 0.0
    pings: list[dict[str, Any]] = field(default_factory=list)
    posts: list[dict[str, Any]] = field(default_factory=list)
    raw_pings: list[bytes] = field(default_factory=list)
    # Every request as it came: (path, headers, raw body), to check the wire independently.
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    bad_signatures: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def ping_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ping"

    @property
    def post_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/post"

    def _check(self, request: web.Request, body: bytes) -> None:
        self.received.append((request.path, dict(request.headers), body))
        ts = request.headers.get(TIMESTAMP_HEADER, "")
        sig = request.headers.get(SIGNATURE_HEADER, "")
        if not verify(self.secret, ts, body, sig):
            self.bad_signatures += 1

    async def _ping(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self._check(request, body)
        self.raw_pings.append(body)
        self.pings.append(orjson.loads(body))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        mode = self.ping_mode
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "garbage":
            return web.Response(body=b"<html>oops</html>", content_type="text/html")
        if mode == "error500":
            return web.Response(status=500, body=b'{"bid": true, "price": 99}')
        if mode == "oversize":
            return web.Response(body=b'{"bid": true, "price": 5, "pad": "' + b"x" * 200_000 + b'"}')
        if mode == "trickle":
            resp = web.StreamResponse()
            await resp.prepare(request)
            for _ in range(1000):
                await resp.write(b" ")
                await asyncio.sleep(0.05)
            return resp
        if mode == "no_bid":
            return web.json_response({"bid": False, "reason": "not interested"})
        if mode == "nul_text":
            return web.json_response({"bid": True, "price": self.price, "bid_id": NUL_TEXT})
        bid_id = f"{self.buyer_id}-b{len(self.pings)}"
        return web.Response(
            body=orjson.dumps({"bid": True, "price": self.price, "bid_id": bid_id}),
            content_type="application/json",
        )

    async def _post(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self._check(request, body)
        self.posts.append(orjson.loads(body))
        if self.post_delay_s:
            await asyncio.sleep(self.post_delay_s)
        mode = self.post_mode
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "error500":
            return web.Response(status=500, text="boom")
        if mode == "garbage2xx":
            return web.Response(text="ok!")
        if mode == "reject":
            return web.json_response({"accepted": False, "reason": "duplicate in our CRM"})
        if mode == "nul_text":
            return web.json_response(
                {"accepted": True, "buyer_lead_id": NUL_TEXT, "reason": NUL_TEXT}
            )
        return web.json_response(
            {"accepted": True, "buyer_lead_id": f"{self.buyer_id}-L{len(self.posts)}"}
        )

    async def start(self) -> Buyer:
        app = web.Application()
        app.router.add_post("/ping", self._ping)
        app.router.add_post("/post", self._post)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server) and server.sockets
        self.port = int(server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
