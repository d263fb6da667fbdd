"""One server under test, measured step by step: open-loop load, fleet counters, CPU shares.

Usage::

    prober = Prober(exchange_proc, fleet_proc, stores, criteria_judge=judge_fn,
                    buyer_max_ms=0.0, step_s=8.0)
    await prober.warm_up()
    step = await prober.measure(200)          # a Step, judged
    await prober.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from hdrh.histogram import HdrHistogram

from loadtests.benchdata import Step
from loadtests.generator import run_open_loop
from loadtests.leads import LeadFactory
from loadtests.procs import Proc
from loadtests.result import LoadResult
from loadtests.stack import (
    BENCH_KEY,
    CpuMeter,
    Stores,
    busiest_worker,
    postgres_backends,
    redis_servers,
    tree,
)

PERCENTILES = (0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99)
FLEET_COUNTERS = ("pings", "bids", "posts", "accepts", "bad_signatures", "pii_pings", "hangs")
WARM_UP_RATE, WARM_UP_S = 20.0, 2.0
SETTLE_S = 1.0  # between steps: sockets close, the server's loop goes quiet


def loop_runner() -> asyncio.Runner:
    """uvloop when installed, start-up objects frozen: the generator must not be the limit."""
    gc.freeze()
    try:
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        return asyncio.Runner()


@dataclass(frozen=True)
class Leads:
    """Leads ``offset + i`` of one factory: every step of a server start sends fresh leads,
    so dedupe (same phone or email within the vertical) never fires on the bench's own."""

    factory: LeadFactory
    offset: int

    def __call__(self, i: int) -> dict[str, Any]:
        return self.factory(self.offset + i)


def percentiles(hist: HdrHistogram) -> list[tuple[float, float]]:
    """``(percentile, ms)`` points of a histogram, for the percentile plot."""
    if hist.get_total_count() == 0:
        return []
    return [(p, int(hist.get_value_at_percentile(p)) / 1000) for p in PERCENTILES]


def resources(proc: Proc, store_ports: Collection[int] = ()) -> dict[str, float]:
    """RSS (MB), open fds and TCP sockets of a server's whole process tree; ``store_tcp``
    of those sockets go to ``store_ports`` (Postgres, Redis: pools that keep them open)."""
    rss = fds = tcp = store_tcp = 0
    for p in tree(proc):
        with contextlib.suppress(psutil.Error):
            rss += p.memory_info().rss
            fds += p.num_fds()
            conns = p.net_connections(kind="tcp")
            tcp += len(conns)
            store_tcp += sum(1 for c in conns if c.raddr and c.raddr.port in store_ports)
    return {"rss_mb": round(rss / 2**20, 1), "fds": fds, "tcp": tcp, "store_tcp": store_tcp}


class Prober:
    """Runs steps against one started server and judges them."""

    def __init__(
        self,
        server: Proc,
        fleet: Proc,
        stores: Stores | None,
        *,
        criteria_judge: Callable[[dict[str, Any]], list[str]],
        buyer_max_ms: float,
        step_s: float,
        warm_up_s: float = WARM_UP_S,
        settle_s: float = SETTLE_S,
    ) -> None:
        self.server = server
        self.fleet = fleet
        self.stores = stores
        self.url = str(server.ready["url"])
        self.judge = criteria_judge
        self.buyer_max_ms = buyer_max_ms
        self.step_s = step_s
        self.warm_up_s = warm_up_s
        self.settle_s = settle_s
        self._factory = LeadFactory(run_id=secrets.token_hex(4))
        self._offset = 0
        self._http = aiohttp.ClientSession()

    async def close(self) -> None:
        await self._http.close()

    async def load(self, rate: float, duration_s: float) -> LoadResult:
        """One open-loop run of fresh leads against the server."""
        leads = Leads(self._factory, self._offset)
        self._offset += math.ceil(rate * duration_s) + 1
        return await run_open_loop(
            self.url, BENCH_KEY, rate, duration_s, leads, buyer_max_ms=self.buyer_max_ms
        )

    async def warm_up(self) -> None:
        """Pools, connections and caches filled before anything counts."""
        await self.load(WARM_UP_RATE, self.warm_up_s)
        await asyncio.sleep(self.settle_s)

    async def measure(self, rate: float, kind: str = "search", duration_s: float = 0.0) -> Step:
        await self._fleet_call("POST", "/_reset")
        meter = CpuMeter(self.process_groups)
        meter.start()
        result = await self.load(rate, duration_s or self.step_s)
        cpu = meter.stop()
        answered = max(result.answered, 1)
        for group in ("server", "db", "redis"):
            cpu[f"{group}_ms_per_lead"] = round(cpu.get(f"{group}_s", 0.0) * 1000 / answered, 3)
        stats = await self._fleet_call("GET", "/_stats")
        totals = stats.get("totals", {}) if isinstance(stats, dict) else {}
        summary = result.summary()
        step = Step(
            rate=rate,
            summary=summary,
            failures=self.judge(summary),
            kind=kind,
            cpu=cpu,
            fleet={k: totals.get(k, 0) for k in FLEET_COUNTERS},
            percentiles=percentiles(result.ok_latency_us),
        )
        await asyncio.sleep(self.settle_s)
        return step

    async def profile(self, rate: float, seconds: float, out_dir: Path | None) -> dict[str, Any]:
        """py-spy the busiest worker while the server takes ``rate`` (see loadtests.profile)."""
        from loadtests.profile import per_lead_run, profile_during

        target = Path(out_dir or ".")
        load = asyncio.create_task(self.load(rate, seconds * 2 + 4))
        await asyncio.sleep(1.5)
        pid = await asyncio.to_thread(busiest_worker, self.server)
        per_worker = rate / max(int(self.server.ready.get("workers", 1)), 1)
        try:
            found = await profile_during(pid, seconds, target, per_worker)
        finally:
            result = await load
        summary = result.summary()
        # Overloaded, a worker refuses leads in microseconds: count only the leads it ran.
        found = per_lead_run(found, summary)
        found["rate"] = rate
        found["load"] = summary
        return found

    def process_groups(self) -> dict[str, list[psutil.Process]]:
        """Our processes by role; whatever else keeps the machine busy is background."""
        db = self.stores.database_url.rsplit("/", 1)[-1] if self.stores else None
        return {
            "server": tree(self.server),
            "db": postgres_backends(db) if db else [],
            "fleet": tree(self.fleet),
            "generator": [psutil.Process()],
            "redis": redis_servers(),  # shared: other users' commands count here too
        }

    async def _fleet_call(self, method: str, path: str) -> Any:
        base = str(self.fleet.ready["stats_url"]).removesuffix("/_stats")
        async with self._http.request(method, base + path) as resp:
            return await resp.json() if resp.status == 200 else None
