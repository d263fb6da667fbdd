"""A real exchange for tests: uvicorn on a free loopback port, real Postgres and Redis."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from exchange.app import create_app
from exchange.catalog import Catalog
from exchange.catalog.models import Config
from exchange.runtime import Runtime
from exchange.settings import AppSettings
from tests.kit.buyers import Buyer

ADMIN = "admin-token-for-tests"
PUB_KEY = "pub-1-test-key"
PUB2_KEY = "pub-2-test-key"

AUTO_FIELDS = {
    "age": {"type": "int", "min": 16, "max": 100, "required": True, "ping": True},
    "credit": {"type": "enum", "values": ["excellent", "good", "fair", "poor"], "ping": True},
    "vehicle_year": {"type": "int", "min": 1980, "max": 2027, "ping": True},
    "insured": {"type": "bool", "ping": True},
    "notes": {"type": "str"},
}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def campaign(buyer: Buyer, **fields: Any) -> dict[str, Any]:
    return {"id": f"{buyer.buyer_id}-c", "vertical": "auto_insurance", **fields}


def buyer_entry(
    buyer: Buyer,
    campaigns: Sequence[dict[str, Any]] | None = None,
    *,
    post_only: bool = False,
    timeout_ms: int = 250,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": buyer.buyer_id,
        "secret": buyer.secret,
        "post_url": buyer.post_url,
        "timeout_ms": timeout_ms,
        "campaigns": list(campaigns) if campaigns is not None else [campaign(buyer)],
    }
    if not post_only:
        entry["ping_url"] = buyer.ping_url
    return entry


def make_config(
    buyers: Sequence[dict[str, Any]],
    *,
    vertical: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    more_verticals: dict[str, Any] | None = None,
) -> Config:
    return Config.model_validate(
        {
            "settings": {
                "tmax_ms": 300,
                "post_timeout_ms": 1000,
                "deadline_ms": 3000,
                # The exchange shares this process's event loop with the test's buyers and
                # client, so loop lag measures the test, not the exchange: shed on leads in
                # flight only here (tests/intake/test_admission.py covers lag shedding).
                "max_loop_lag_ms": 60_000,
                **(settings or {}),
            },
            "verticals": {
                "auto_insurance": {
                    "mode": "auction",
                    "max_sells": 1,
                    "floor": "2.00",
                    "pricing": "first_price",
                    "dedupe_days": 30,
                    "fields": AUTO_FIELDS,
                    **(vertical or {}),
                },
                **(more_verticals or {}),
            },
            "publishers": [
                {"id": "pub-1", "api_key_sha256": sha(PUB_KEY), "payout": {"revshare": "0.70"}},
                {"id": "pub-2", "api_key_sha256": sha(PUB2_KEY), "payout": {"fixed": "8.00"}},
            ],
            "buyers": list(buyers),
        }
    )


_counter = 0


def lead_body(**overrides: Any) -> dict[str, Any]:
    """A valid auto-insurance lead with a unique phone, email and external id."""
    global _counter
    _counter += 1
    n = _counter
    body: dict[str, Any] = {
        "vertical": "auto_insurance",
        "external_id": f"ext-{n}-{id(object())}",
        "contact": {
            "first_name": "Ada",
            "last_name": "Lovelace",
            "email": f"ada{n}.{id(object())}@example.com",
            "phone": f"+1415555{(n * 7919 + id(object())) % 10000:04d}",
            "address": "1 Main St",
            "city": "San Francisco",
            "state": "CA",
            "zip": "94105",
        },
        "profile": {"age": 34, "credit": "good", "vehicle_year": 2019, "insured": True},
        "consent": {"tcpa": True, "text": "I agree", "jornaya_leadid": "J-1"},
        "source": {"sub_id": "fb-12", "ip": "203.0.113.5"},
    }
    for key, value in overrides.items():
        body[key] = value
    return body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningExchange:
    url: str
    server: uvicorn.Server
    task: asyncio.Task[None]
    client: httpx.AsyncClient

    @property
    def runtime(self) -> Runtime:
        """The exchange's runtime, for tests that break one of its stores on purpose."""
        app = self.server.config.app
        assert isinstance(app, FastAPI)
        rt: Runtime = app.state.runtime
        return rt

    async def submit(self, body: Any, key: str = PUB_KEY, **headers: str) -> httpx.Response:
        return await self.client.post(
            "/v1/leads", json=body, headers={"Authorization": f"Bearer {key}", **headers}
        )

    async def submit_raw(
        self, raw: bytes, key: str | None = PUB_KEY, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """POST bytes as they are (not JSON-encoded); ``key=None`` sends no Authorization."""
        sent = {"Content-Type": "application/json", **(headers or {})}
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        return await self.client.post("/v1/leads", content=raw, headers=sent)

    async def get_lead(self, lead_id: str, key: str) -> httpx.Response:
        return await self.client.get(
            f"/v1/leads/{lead_id}", headers={"Authorization": f"Bearer {key}"}
        )

    async def settle(
        self, lead_id: str, buyer_id: str, accepted: bool, token: str | None = ADMIN
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return await self.client.post(
            f"/v1/leads/{lead_id}/settle",
            json={"buyer_id": buyer_id, "accepted": accepted},
            headers=headers,
        )

    async def story(self, lead_id: str) -> dict[str, Any]:
        resp = await self.client.get(
            f"/v1/leads/{lead_id}", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert resp.status_code == 200, resp.text
        data: dict[str, Any] = resp.json()
        return data

    async def close(self) -> None:
        await self.client.aclose()
        self.server.should_exit = True
        await self.task


async def start_exchange(
    config: Config, pg_dsn: str, redis_url: str, redis_prefix: str, config_dir: str = "config"
) -> RunningExchange:
    settings = AppSettings(
        database_url=pg_dsn,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        admin_token=ADMIN,
        migrate_on_start=False,
        log_json=False,
        config_dir=Path(config_dir),
    )
    app = create_app(settings, Catalog(config))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_keep_alive=settings.keep_alive_s,  # as `exchange serve`: tests idle 5 s
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    client = httpx.AsyncClient(base_url=url, timeout=30)
    return RunningExchange(url, server, task, client)
