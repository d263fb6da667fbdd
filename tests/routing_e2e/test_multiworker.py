"""``exchange serve --workers 2`` as a real subprocess: a daily cap of 5 holds exactly under
60 concurrent leads, and one /metrics scrape reports the sum over both workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.kit.exchange import ADMIN, PUB_KEY, buyer_entry, campaign, free_port
from tests.routing_e2e.conftest import StartBuyer
from tests.routing_e2e.harness import config, lead, write_config_dir

ROOT = Path(__file__).resolve().parents[2]
LEADS = 60
CAP = 5

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
    """``{status: value}`` of one labelled counter in an exposition body."""
    return {
        s.labels["status"]: s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.name == sample
    }


@contextlib.contextmanager
def serve(config_dir: Path, port: int, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The server for the block; terminated (then killed) however the block ends."""
    argv = [sys.executable, "-m", "exchange.cli", "serve", "--workers", "2", "--port", str(port),
            "--config", str(config_dir)]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env={**os.environ, **env}, cwd=ROOT, stdout=out, stderr=out)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def wait_for_workers(url: str, proc: subprocess.Popen[bytes], prom_dir: Path, log: Path) -> None:
    """/readyz answers, and both workers have served it (each one's lifespan is done)."""
    give_up = time.monotonic() + 30
    while len(per_worker(prom_dir, "exchange_http_requests_total", route="/readyz", status="200")) < 2:
        if proc.poll() is not None:
            pytest.fail(f"exchange serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > give_up:
            pytest.fail(f"two workers not ready after 30 s:\n{log.read_text()[-3000:]}")
        # New connections, several at once, so the kernel hands them to both workers.
        async with httpx.AsyncClient(base_url=url, timeout=2) as client:
            with contextlib.suppress(httpx.TransportError):
                await asyncio.gather(*(client.get("/readyz") for _ in range(4)))
        await asyncio.sleep(0.1)


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
    cfg = config([buyer_entry(buyer, [campaign(buyer, caps={"daily": CAP})])])
    write_config_dir(tmp_path / "config", cfg)
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()  # serve crashes on a metrics dir that does not exist yet: see below
    env = {
        "EXCHANGE_DATABASE_URL": pg_dsn,
        "EXCHANGE_REDIS_URL": redis_url,
        "EXCHANGE_REDIS_PREFIX": redis_prefix,
        "EXCHANGE_ADMIN_TOKEN": ADMIN,
        "EXCHANGE_LOG_LEVEL": "WARNING",
        "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with serve(tmp_path / "config", port, env, log) as proc:
        await wait_for_workers(url, proc, prom_dir, log)

        headers = {"Authorization": f"Bearer {PUB_KEY}"}
        limits = httpx.Limits(max_connections=LEADS, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, timeout=20, limits=limits) as client:
            replies = await asyncio.gather(
                *(client.post("/v1/leads", json=lead(), headers=headers) for _ in range(LEADS))
            )
        assert [r.status_code for r in replies] == [200] * LEADS, replies[0].text
        statuses = Counter(r.json()["status"] for r in replies)
        assert statuses == {"sold": CAP, "unsold": LEADS - CAP}

        # Both workers took leads, so no single worker's own count can reach the total.
        by_worker = per_worker(prom_dir, "exchange_leads_total")
        print("BYWORKER", by_worker)
        assert sum(by_worker.values()) == LEADS and len(by_worker) == 2, by_worker
        assert max(by_worker.values()) < LEADS
        for _ in range(6):  # fresh connections: the scrapes land on either worker
            async with httpx.AsyncClient(base_url=url, timeout=5) as client:
                body = (await client.get("/metrics")).text
            leads = scraped(body, "exchange_leads_total")
            assert sum(leads.values()) == LEADS and leads["sold"] == CAP, leads
    assert proc.returncode is not None
    assert await pg.fetchval("SELECT count(*) FROM leads") == LEADS
    assert await pg.fetchval("SELECT count(*) FROM sales") == CAP
    assert len(buyer.posts) == CAP  # exactly 5 accepted posts at the buyer
    for pid in by_worker:  # the workers went down with the server
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    _ = (signal, Any)
