"""``exchange serve --workers 2`` as a real subprocess: a daily cap of 5 holds exactly under
60 concurrent leads, one /metrics scrape reports the sum over both workers, and a reload
posted to one worker reaches the other."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.kit.buyers import Buyer
from tests.kit.exchange import ADMIN, PUB_KEY, buyer_entry, campaign, free_port
from tests.kit.procs import stop
from tests.routing_e2e.conftest import StartBuyer
from tests.routing_e2e.harness import config, lead, write_config_dir

ROOT = Path(__file__).resolve().parents[2]
LEADS = 60
CAP = 5
PUBLISHER = {"Authorization": f"Bearer {PUB_KEY}"}

# prometheus_client's file reader is untyped; this is what it yields per stored value.
_read_values: Callable[[str], Iterable[tuple[str, float, float, int]]] = (
    MmapedDict.read_all_values_from_file
)


def per_worker(prom_dir: Path, sample: str, **labels: str) -> Counter[int]:
    """One counter's value in each worker's own file, by pid: what each worker counted."""
    found: Counter[int] = Counter()
    for path in prom_dir.glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[-1])
        for key, value, _, _ in _read_values(str(path)):
            _, name, have, _ = json.loads(key)
            if name == sample and all(have.get(k) == v for k, v in labels.items()):
                found[pid] += int(value)
    return found


def scraped(body: str, sample: str) -> dict[str, float]:
    """``{status: value}`` of one status-labelled counter in an exposition body."""
    return {
        s.labels["status"]: s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.name == sample
    }


@contextlib.contextmanager
def serve(
    config_dir: Path, env: dict[str, str], log: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """(url, process) of the server for the block; terminated, then killed, however it ends."""
    port = free_port()
    argv = [sys.executable, "-m", "exchange.cli", "serve", "--workers", "2"]
    argv += ["--port", str(port), "--config", str(config_dir)]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env={**os.environ, **env}, cwd=ROOT, stdout=out, stderr=out)
        try:
            yield f"http://127.0.0.1:{port}", proc
        finally:
            stop(proc)


def server_env(tmp_path: Path, pg_dsn: str, redis_url: str, redis_prefix: str) -> dict[str, str]:
    return {
        "EXCHANGE_DATABASE_URL": pg_dsn,
        "EXCHANGE_REDIS_URL": redis_url,
        "EXCHANGE_REDIS_PREFIX": redis_prefix,
        "EXCHANGE_ADMIN_TOKEN": ADMIN,
        "EXCHANGE_LOG_LEVEL": "WARNING",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
    }


async def wait_for_workers(
    url: str, proc: subprocess.Popen[bytes], prom_dir: Path, log: Path, workers: int = 2
) -> None:
    """/readyz answers, from ``workers`` distinct workers (each one's start-up is done)."""
    give_up = time.monotonic() + 30
    ready = "exchange_http_requests_total"
    while len(per_worker(prom_dir, ready, route="/readyz", status="200")) < workers:
        if proc.poll() is not None:
            pytest.fail(f"exchange serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > give_up:
            pytest.fail(f"{workers} workers not ready after 30 s:\n{log.read_text()[-3000:]}")
        # New connections, several at once, so the kernel hands them to both workers.
        async with httpx.AsyncClient(base_url=url, timeout=2) as client:
            with contextlib.suppress(httpx.TransportError):
                await asyncio.gather(*(client.get("/readyz") for _ in range(4)))
        await asyncio.sleep(0.1)


async def send_leads(url: str, count: int, stagger_s: float = 0.002) -> list[httpx.Response]:
    """``count`` leads in flight together, each on a connection of its own.

    Their starts are a hair apart: a burst of connections at once is drained by whichever
    worker wakes first (it accepts in a loop), and the test needs both workers to serve.
    """
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)

    async def one(client: httpx.AsyncClient, index: int) -> httpx.Response:
        await asyncio.sleep(index * stagger_s)
        return await client.post("/v1/leads", json=lead(), headers=PUBLISHER)

    async with httpx.AsyncClient(base_url=url, timeout=20, limits=limits) as client:
        return list(await asyncio.gather(*(one(client, i) for i in range(count))))


async def test_two_workers_hold_a_cap_exactly_and_sum_their_metrics(
    start_buyer: StartBuyer,
    pg: asyncpg.Connection,
    pg_dsn: str,
    redis_url: str,
    redis_prefix: str,
    redis_client: aioredis.Redis,
    tmp_path: Path,
) -> None:
    buyer = await start_buyer("capped", price="20.00", delay_s=0.02)
    capped = buyer_entry(buyer, [campaign(buyer, caps={"daily": CAP})])
    write_config_dir(tmp_path / "config", config([capped]))
    env = server_env(tmp_path, pg_dsn, redis_url, redis_prefix)
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()  # serve crashes on a metrics dir that does not exist yet: see below
    log = tmp_path / "serve.log"
    with serve(tmp_path / "config", env, log) as (url, proc):
        await wait_for_workers(url, proc, prom_dir, log)

        replies = await send_leads(url, LEADS)
        assert [r.status_code for r in replies] == [200] * LEADS, replies[0].text
        assert Counter(r.json()["status"] for r in replies) == {"sold": CAP, "unsold": LEADS - CAP}

        # Both workers took leads, so no single worker's own count can reach the total.
        by_worker = per_worker(prom_dir, "exchange_leads_total")
        assert sum(by_worker.values()) == LEADS and len(by_worker) == 2, by_worker
        assert max(by_worker.values()) < LEADS
        for _ in range(6):  # fresh connections: the scrapes land on either worker
            async with httpx.AsyncClient(base_url=url, timeout=5) as client:
                body = (await client.get("/metrics")).text
            leads = scraped(body, "exchange_leads_total")
            assert sum(leads.values()) == LEADS and leads["sold"] == CAP, leads

        more = await _reload_reaches_both_workers(url, tmp_path, capped, start_buyer, prom_dir)

    assert await pg.fetchval("SELECT count(*) FROM leads") == LEADS + more
    assert await pg.fetchval("SELECT count(*) FROM sales WHERE buyer_id = 'capped'") == CAP
    assert len(buyer.posts) == CAP  # exactly 5 accepted posts at the buyer
    for pid in by_worker:  # the workers went down with the server
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def _reload_reaches_both_workers(
    url: str, tmp_path: Path, capped: dict[str, object], start_buyer: StartBuyer, prom_dir: Path
) -> int:
    """A buyer added by a reload posted to one worker gets leads from both, a second later.

    Returns how many leads it sent.
    """
    fresh: Buyer = await start_buyer("fresh", price="5.00")
    write_config_dir(tmp_path / "config", config([capped, buyer_entry(fresh)]))
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        resp = await client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"})
    assert resp.status_code == 200 and resp.json()["campaigns"] == 2, resp.text
    await asyncio.sleep(1.5)  # the other worker checks the published version every second
    before = per_worker(prom_dir, "exchange_leads_total", status="sold")
    sent = 0
    while len(per_worker(prom_dir, "exchange_leads_total", status="sold") - before) < 2:
        assert sent < 100, "the leads never reached both workers"
        replies = await send_leads(url, 20)
        sent += 20
        # Whichever worker took it, the lead sells to the buyer only the reload added.
        assert [r.json()["status"] for r in replies] == ["sold"] * 20
    assert len(fresh.posts) == sent
    return sent


async def test_serve_creates_a_missing_metrics_dir(
    pg_dsn: str, redis_url: str, redis_prefix: str, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """PROMETHEUS_MULTIPROC_DIR naming a dir that does not exist yet."""
    write_config_dir(tmp_path / "config", config([]))
    env = server_env(tmp_path, pg_dsn, redis_url, redis_prefix)
    log = tmp_path / "serve.log"
    with serve(tmp_path / "config", env, log) as (url, proc):
        await wait_for_workers(url, proc, tmp_path / "prom", log, workers=1)
