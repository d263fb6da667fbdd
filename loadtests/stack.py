"""The system under test for the benchmark and soak runs: config, fresh stores, processes.

Each matrix cell gets a simulated fleet (one process), a config dir pointing the exchange at
it, and, per server start, a fresh Postgres database and Redis key prefix that are dropped
afterwards. The exchange (``exchange serve``) and the bare baseline run as subprocesses, so
fleet, server and load generator each have their own process and event loop.

Usage::

    cell = Cell("10x0ms", buyers=10)
    with start_fleet_for(cell, timing) as fleet:
        config = write_config(tmp / "cfg", fleet.ready, timing)
        async with fresh_stores(ADMIN_DSN, REDIS_URL) as stores:
            exchange = await asyncio.to_thread(start_exchange, config, 1, stores)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil
import redis.asyncio as aioredis
import yaml

from loadtests.procs import Proc, free_port, start_command, start_module

BENCH_SECRET = "bench-buyer-secret"
BENCH_KEY = "bench-publisher-key"
VERTICAL = "auto_insurance"
AUTO_FIELDS: dict[str, Any] = {
    "age": {"type": "int", "min": 16, "max": 100, "required": True, "ping": True},
    "credit": {"type": "enum", "values": ["excellent", "good", "fair", "poor"], "ping": True},
    "vehicle_year": {"type": "int", "min": 1980, "max": 2027, "ping": True},
    "insured": {"type": "bool", "ping": True},
    "current_carrier": {"type": "str", "max_length": 60},
}


@dataclass(frozen=True)
class Cell:
    """One matrix cell: ``buyers`` answering buyers with ``latency`` plus ``hang`` silent ones."""

    name: str
    buyers: int
    latency: str = "0"  # loadtests.buyer.Latency.parse syntax: "0", "20-80", …
    hang: int = 0

    @property
    def label(self) -> str:
        text = f"{self.buyers} buyers at {self.latency} ms"
        return text + (f" + {self.hang} hanging" if self.hang else "")


@dataclass(frozen=True)
class Timing:
    """The exchange settings every cell runs with (SPEC §2 plus the overload guard)."""

    tmax_ms: int = 300
    post_timeout_ms: int = 2000
    deadline_ms: int = 5000
    max_leads_in_flight: int = 64  # the exchange's default
    # High enough that the publisher rate limit never decides a benchmark.
    publisher_rate_per_second: int = 100_000
    # A daily cap on every campaign, set high enough never to bind, so each lead reads its
    # caps and reserves its sale in Redis as in production (None: uncapped, as the matrix).
    daily_cap: int | None = None


@dataclass(frozen=True)
class Stores:
    """A fresh database and Redis prefix of one server start."""

    database_url: str
    redis_url: str
    redis_prefix: str


def fleet_args(cell: Cell, timing: Timing, port: int, seed: int | None = None) -> list[str]:
    """``python -m loadtests.fleet`` arguments for the cell, all buyers on one shared port."""
    args = [
        "--buyers",
        str(cell.buyers + cell.hang),
        "--latency",
        cell.latency,
        "--port",
        str(port),
        "--shared-port",
        "--secret",
        BENCH_SECRET,
        "--timeout-ms",
        str(timing.tmax_ms),
    ]
    if cell.hang:
        args += ["--mix", f"hang={cell.hang}"]
    return args + (["--seed", str(seed)] if seed is not None else [])


@contextlib.contextmanager
def start_fleet_for(cell: Cell, timing: Timing, seed: int | None = None) -> Iterator[Proc]:
    """The cell's fleet as a subprocess; its ``ready`` line lists every buyer's URLs."""
    fleet = start_module("loadtests.fleet", fleet_args(cell, timing, free_port(), seed))
    try:
        yield fleet
    finally:
        fleet.stop()


def config_doc(fleet_ready: dict[str, Any], timing: Timing) -> dict[str, Any]:
    """One vertical, one publisher keyed by :data:`BENCH_KEY`, every fleet buyer uncapped."""
    key_hash = hashlib.sha256(BENCH_KEY.encode()).hexdigest()
    buyers = [
        {
            "id": buyer_id,
            "secret": BENCH_SECRET,
            "ping_url": urls["ping_url"],
            "post_url": urls["post_url"],
            # Each buyer may use the whole ping phase: a hanging one holds a lead for tmax.
            "timeout_ms": timing.tmax_ms,
            "campaigns": [_campaign(buyer_id, timing)],
        }
        for buyer_id, urls in fleet_ready["buyers"].items()
    ]
    return {
        "settings": {
            "tmax_ms": timing.tmax_ms,
            "post_timeout_ms": timing.post_timeout_ms,
            "deadline_ms": timing.deadline_ms,
            "max_leads_in_flight": timing.max_leads_in_flight,
            "publisher_rate_per_second": timing.publisher_rate_per_second,
        },
        "verticals": {
            VERTICAL: {
                "mode": "auction",
                "max_sells": 1,
                "floor": "2.00",
                "pricing": "first_price",
                "dedupe_days": 30,
                "fields": AUTO_FIELDS,
            }
        },
        "publishers": [
            {"id": "pub-bench", "api_key_sha256": key_hash, "payout": {"revshare": "0.70"}}
        ],
        "buyers": buyers,
    }


def _campaign(buyer_id: str, timing: Timing) -> dict[str, Any]:
    campaign: dict[str, Any] = {"id": f"{buyer_id}-auto", "vertical": VERTICAL}
    if timing.daily_cap is not None:
        campaign["caps"] = {"daily": timing.daily_cap}
    return campaign


def write_config(directory: Path, fleet_ready: dict[str, Any], timing: Timing) -> Path:
    """Write the cell's config dir (one ``exchange.yaml``) and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_doc(fleet_ready, timing), sort_keys=False)
    (directory / "exchange.yaml").write_text(text, encoding="utf-8")
    return directory


def _with_db(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


@contextlib.asynccontextmanager
async def fresh_stores(admin_dsn: str, redis_url: str) -> AsyncIterator[Stores]:
    """A new database and key prefix; the database is dropped and the keys deleted after."""
    run = f"{time.strftime('%Y%m%d_%H%M%S')}_{secrets.token_hex(3)}"
    name = f"bench_{run}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    stores = Stores(_with_db(admin_dsn, name), redis_url, f"bench:{run}:")
    try:
        yield stores
    finally:
        await drop_stores(admin_dsn, stores)


async def drop_stores(admin_dsn: str, stores: Stores) -> None:
    """Drop the run's database and delete only the keys under its prefix (never a flush)."""
    name = urlsplit(stores.database_url).path.lstrip("/")
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    client = aioredis.Redis.from_url(stores.redis_url)
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=stores.redis_prefix + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()


def start_exchange(
    config_dir: Path, workers: int, stores: Stores, port: int = 0, code_dir: Path | None = None
) -> Proc:
    """``exchange serve`` on the stores; with several workers their metrics files go into a
    dir next to the config (one worker keeps prometheus' cheaper in-process mode).
    ``code_dir``: run the exchange package found there (another checkout) instead."""
    port = port or free_port()
    argv = [sys.executable, "-m", "exchange.cli", "serve", "--workers", str(workers)]
    argv += ["--port", str(port), "--config", str(config_dir)]
    env = {
        "EXCHANGE_DATABASE_URL": stores.database_url,
        "EXCHANGE_REDIS_URL": stores.redis_url,
        "EXCHANGE_REDIS_PREFIX": stores.redis_prefix,
        "EXCHANGE_LOG_LEVEL": "WARNING",
    }
    cwd = None
    if code_dir is not None:
        # `python -m` puts the working directory first on sys.path: run from that checkout,
        # or this one's package would shadow it.
        env["PYTHONPATH"] = str(code_dir)
        cwd = str(code_dir)
    if workers > 1:
        metrics_dir = config_dir.parent / f"metrics-{port}"
        metrics_dir.mkdir(parents=True, exist_ok=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    proc = start_command(argv, ready_url=f"http://127.0.0.1:{port}/healthz", env=env, cwd=cwd)
    proc.ready = {"url": f"http://127.0.0.1:{port}", "workers": workers}
    return proc


def start_baseline(config_dir: Path, workers: int, port: int = 0) -> Proc:
    """The bare fan-out baseline on the same config's buyers."""
    args = ["--port", str(port or free_port()), "--config", str(config_dir)]
    return start_module("loadtests.baseline", [*args, "--workers", str(workers)])


def tree(proc: Proc) -> list[psutil.Process]:
    """The process and its live descendants (uvicorn's or the baseline's workers)."""
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(proc.popen.pid)
        return [root, *root.children(recursive=True)]
    return []


def busiest_worker(proc: Proc, sample_s: float = 0.5) -> int:
    """The pid in the server's tree using the most CPU now: the one worth profiling."""
    procs = tree(proc)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    time.sleep(sample_s)
    usage: list[tuple[float, int]] = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            usage.append((p.cpu_percent(None), p.pid))
    return max(usage)[1] if usage else proc.popen.pid


def cpu_seconds(procs: Sequence[psutil.Process]) -> float:
    """User + system CPU time of these processes (gone ones count 0)."""
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def postgres_backends(database: str) -> list[psutil.Process]:
    """The Postgres backends serving ``database`` (their title names it): our own DB load."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or ())
        if cmd.startswith("postgres:") and f" {database} " in f"{cmd} ":
            found.append(p)
    return found


def redis_servers() -> list[psutil.Process]:
    """The machine's redis-server processes (shared with other users of that Redis)."""
    return [p for p in psutil.process_iter(["name"]) if p.info["name"] == "redis-server"]


Groups = Callable[[], dict[str, list[psutil.Process]]]


@dataclass
class CpuMeter:
    """How busy the machine was during a step, and how much of that was somebody else.

    ``groups()`` names our processes by role (server, its DB backends, fleet, generator…);
    it is asked again at :meth:`stop`, so a DB connection opened mid-step counts from its
    start. What the machine was busy with beyond the groups is *background*: other
    engineers' runs on this box.
    """

    groups: Groups
    _cpu: dict[tuple[str, int], float] = field(default_factory=dict)
    _busy: float = 0.0
    _wall: float = 0.0
    _epoch: float = 0.0

    def start(self) -> None:
        self._cpu = self._per_process()
        self._busy, self._wall, self._epoch = _busy_s(), time.monotonic(), time.time()

    def stop(self) -> dict[str, float]:
        """Per group CPU seconds (``<group>_s``) and shares of the whole machine (1.0 = every
        core busy) since :meth:`start`, with ``busy`` and ``background`` shares."""
        spent: dict[str, float] = {}
        for (name, pid), now in self._per_process().items():
            before = self._cpu.get((name, pid))
            if before is None and not self._born_since_start(pid):
                continue  # unknown before the step: its time cannot be split
            spent[name] = spent.get(name, 0.0) + now - (before or 0.0)
        capacity = max(time.monotonic() - self._wall, 1e-6) * (psutil.cpu_count() or 1)
        busy = _busy_s() - self._busy
        out = {f"{k}_s": round(v, 3) for k, v in spent.items()}
        out |= {k: round(v / capacity, 3) for k, v in spent.items()}
        out["busy"] = round(busy / capacity, 3)
        out["background"] = round(max(busy - sum(spent.values()), 0.0) / capacity, 3)
        return out

    def _per_process(self) -> dict[tuple[str, int], float]:
        return {
            (name, p.pid): cpu_seconds([p]) for name, procs in self.groups().items() for p in procs
        }

    def _born_since_start(self, pid: int) -> bool:
        with contextlib.suppress(psutil.Error):
            return psutil.Process(pid).create_time() >= self._epoch - 0.5
        return False


def _busy_s() -> float:
    t = psutil.cpu_times()
    return t.user + t.system + t.nice + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


async def wait_quiet(groups: Groups, max_background: float, max_wait_s: float) -> dict[str, float]:
    """Wait (up to ``max_wait_s``) until other processes use at most ``max_background`` of
    the machine over a 2 s window; the last window's shares and how long it waited."""
    waited = 0.0
    while True:
        meter = CpuMeter(groups)
        meter.start()
        await asyncio.sleep(2.0)
        waited += 2.0
        shares = meter.stop()
        if shares["background"] <= max_background or waited >= max_wait_s:
            return {"background": shares["background"], "waited_s": waited}
