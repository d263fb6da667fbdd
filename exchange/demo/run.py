"""``exchange demo``: the whole exchange on one machine, watched live.

Stores (embedded unless URLs are set), the simulated buyer fleet of ``config/``, the
exchange itself on uvicorn, and open-loop publisher traffic, all in one process. The
summary's money comes from Postgres, so it shows what was recorded, not what was hoped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvicorn
from rich.console import Console
from rich.live import Live

from exchange.app import create_app
from exchange.catalog import Catalog
from exchange.demo.extra import sim_buyer_specs, with_sim_buyers
from exchange.demo.view import Tally, render, summary_table
from exchange.settings import AppSettings
from exchange.store.db import migrate

# The project's own config, beside the package (as migrations/ is): the demo's buyers and
# publisher keys live there, so the demo finds it from any working directory.
PROJECT_CONFIG = Path(__file__).resolve().parents[2] / "config"
# Publisher keys of config/publishers.yaml (demo keys, never for production).
DEMO_KEYS = ("pub-1-demo-key", "pub-2-demo-key")
VERTICAL_MIX = (("auto_insurance", 0.5), ("mortgage", 0.2), ("solar", 0.15), ("debt", 0.15))


def run_demo(args: argparse.Namespace) -> int:
    from exchange.cli import resolve_stores
    from exchange.observability.logs import configure_logging

    settings = AppSettings()
    config_dir = demo_config_dir(args.config, settings.config_dir)
    if config_dir is None:
        missing = args.config or settings.config_dir
        print(
            f"exchange demo: no config directory at {missing} (pass --config DIR)", file=sys.stderr
        )
        return 2
    settings.config_dir = config_dir
    if args.data_dir is not None:
        settings.data_dir = args.data_dir
    configure_logging("WARNING", json=False)
    resolve_stores(settings)
    # A prefix of its own per run (under the configured one): caps, dedupe and idempotency
    # start clean every demo, and a shared Redis keeps its other keys apart.
    settings.redis_prefix = f"{settings.redis_prefix}demo:{secrets.token_hex(4)}:"
    settings.admin_token = settings.admin_token or "demo-admin-token"
    settings.migrate_on_start = False
    summary = asyncio.run(_demo(settings, args))
    if args.summary_json:
        Path(args.summary_json).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    return 0 if summary["leads"] > 0 else 1


def demo_config_dir(chosen: Path | None, configured: Path) -> Path | None:
    """``--config`` if given; else the configured dir (``./config`` unless
    ``EXCHANGE_CONFIG_DIR`` says otherwise), or the project's own when run from another
    folder; None when the one asked for does not exist."""
    if chosen is not None:
        return chosen if chosen.is_dir() else None
    if configured.is_dir():
        return configured
    if configured == Path("config") and PROJECT_CONFIG.is_dir():
        return PROJECT_CONFIG
    return None


async def _demo(settings: AppSettings, args: argparse.Namespace) -> dict[str, Any]:
    from loadtests.fleet import FleetSpec, specs_from_config, start_fleet
    from loadtests.leads import LeadFactory

    console = Console()
    assert settings.database_url
    await migrate(settings.database_url)
    specs = specs_from_config(settings.config_dir)
    fleet = await start_fleet(FleetSpec(specs + sim_buyer_specs(args.buyers or 0), seed=7))
    base_config = Catalog.load(settings.config_dir).config
    catalog = Catalog(with_sim_buyers(base_config, fleet, args.buyers or 0))
    app = create_app(settings, catalog)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=args.port, log_config=None, access_log=False)
    )
    server_task = asyncio.create_task(server.serve())
    while not server.started:
        if server_task.done():
            server_task.result()
            raise SystemExit("the exchange did not start")
        await asyncio.sleep(0.02)
    base = f"http://127.0.0.1:{args.port}"
    console.print(
        f"[bold]exchange demo[/] — API {base}/docs · lead story: GET {base}/v1/leads/<id> "
        f"with 'Authorization: Bearer {settings.admin_token}' · metrics {base}/metrics"
    )
    tally = Tally()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    factories = {v: LeadFactory(vertical=v) for v, _ in VERTICAL_MIX}
    try:
        async with aiohttp.ClientSession(base_url=base) as session:
            traffic = asyncio.create_task(
                _traffic(session, factories, args.rate, args.duration, tally, stop)
            )
            if args.no_live:
                await traffic
            else:
                with Live(render(tally), console=console, refresh_per_second=4) as live:
                    while not traffic.done():
                        await asyncio.sleep(0.25)
                        live.update(render(tally))
                    await traffic
            summary = await tally.summary(settings.database_url)
            console.print(summary_table(summary))
    finally:
        server.should_exit = True
        await server_task
        await fleet.close()
    return summary


async def _traffic(
    session: aiohttp.ClientSession,
    factories: dict[str, Any],
    rate: float,
    duration: float,
    tally: Tally,
    stop: asyncio.Event,
) -> None:
    """Open loop: lead i goes out at start + i/rate whatever the earlier ones are doing."""
    rng = random.Random(11)
    verticals = [v for v, _ in VERTICAL_MIX]
    weights = [w for _, w in VERTICAL_MIX]
    start = time.monotonic()
    tasks: set[asyncio.Task[None]] = set()
    i = 0
    while not stop.is_set():
        due = start + i / rate
        if due - start >= duration:
            break
        delay = due - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                break
        vertical = rng.choices(verticals, weights)[0]
        body = factories[vertical](i)
        key = DEMO_KEYS[i % len(DEMO_KEYS)]
        task = asyncio.create_task(_send(session, body, key, due, tally))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    if tasks:
        await asyncio.wait(tasks, timeout=30)


async def _send(
    session: aiohttp.ClientSession, body: dict[str, Any], key: str, due: float, tally: Tally
) -> None:
    try:
        async with session.post(
            "/v1/leads",
            data=orjson.dumps(body),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=30),
        ) as resp:
            data = await resp.read()
            elapsed = time.monotonic() - due
            tally.answer(resp.status, orjson.loads(data) if resp.status == 200 else None, elapsed)
    except (aiohttp.ClientError, TimeoutError):
        tally.answer(0, None, time.monotonic() - due)
