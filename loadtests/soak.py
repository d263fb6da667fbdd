"""The soak: the exchange for ten minutes with a hanging buyer; memory, fds and sockets flat?

10 buyers at 0 ms plus one that never answers, a steady open-loop rate, and every
``--sample-s`` seconds the exchange's RSS, open fds and TCP sockets (its whole process
tree), plus the machine's TIME_WAIT sockets towards the fleet: a hanging buyer costs a
new connection per ping unless the exchange stops pinging it.

Fds and sockets under load rise and fall with the keep-alive pools, so a sample taken
under load says how busy the pools were that second, not whether anything leaked. The
leak test compares the exchange *idle* before and after the run: each idle sample is
taken once the connections to buyers and from publishers have outlived their keep-alive.
The store pools (asyncpg keeps an idle connection 300 s, redis-py for good) hold theirs,
so sockets to Postgres and Redis are counted apart and the idle rule judges the rest:
what is open then is the exchange's fixed set plus whatever leaked.

Usage::

    python -m loadtests.soak [--minutes 10] [--rate 100] [--workers 1] [--out DIR]

Writes ``soak.json``, ``soak.md`` and ``soak.png`` into ``--out`` (default
``loadtests/results/<date>/``); ``python -m loadtests.report DIR`` then adds the soak to
that dir's benchmark report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import matplotlib
import psutil

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from exchange.transport.client import KEEPALIVE_S
from loadtests.bench import ROOT, Criteria, judge
from loadtests.benchdata import own
from loadtests.probe import Prober, loop_runner, resources
from loadtests.procs import Proc
from loadtests.stack import (
    Cell,
    Stores,
    Timing,
    fresh_stores,
    start_exchange,
    start_fleet_for,
    write_config,
)

SOAK_CELL = Cell("10x0ms+hang", 10, hang=1)
GROWTH_SHARE = 0.10  # what "within" means in is_flat, plus the slack below
SLACK = {"rss_mb": 5.0, "fds": 10.0, "tcp": 10.0}
# aiohttp closes a pooled connection idle for KEEPALIVE_S in a sweep that runs every
# KEEPALIVE_S (rounded up to whole seconds), so one can live ~2 × that; inbound: 5 s.
IDLE_S = 2.0 * KEEPALIVE_S + 5


@dataclass(frozen=True)
class SoakOptions:
    minutes: float = 10.0
    rate: float = 100.0
    workers: int = 1
    sample_s: float = 15.0
    idle_s: float = IDLE_S
    admin_dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    redis_url: str = "redis://127.0.0.1:6379/0"
    command: str = "python -m loadtests.soak"


def time_wait_to(port: int) -> int:
    """Sockets in TIME_WAIT towards ``port`` on this machine (the fleet's)."""
    return sum(
        1
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_TIME_WAIT and c.raddr and c.raddr.port == port
    )


def is_flat(
    samples: Sequence[dict[str, float]],
    idle_before: dict[str, float],
    idle_after: dict[str, float],
) -> bool:
    """No leak. RSS: the second half's peak within 10% + 5 MB of the first half's (memory
    is rarely given back, so a leak shows as a later, higher peak). Fds and sockets rise
    and fall with load (keep-alive pools), so: idle after the run, those not held by the
    store pools within 10% + 10 of idle before it; and under load, all of them, the last
    quarter's floor no higher than the first quarter's peak (a leak the pools hide, or
    one in the store pools, grows the floor)."""
    half, quarter = max(len(samples) // 2, 1), max(len(samples) // 4, 1)
    first, second = samples[:half], samples[half:] or samples[-1:]
    rss_ok = max(s["rss_mb"] for s in second) <= _allow(max(s["rss_mb"] for s in first), "rss_mb")
    for key in ("fds", "tcp"):
        if own(idle_after, key) > _allow(own(idle_before, key), key):
            return False
        floor = min(s[key] for s in samples[-quarter:])
        if floor > _allow(max(s[key] for s in samples[:quarter]), key):
            return False
    return rss_ok


def _allow(value: float, key: str) -> float:
    return value * (1 + GROWTH_SHARE) + SLACK[key]


def store_ports(stores: Stores) -> tuple[int, int]:
    """The Postgres and Redis ports the exchange's pools connect to."""
    return (
        urlsplit(stores.database_url).port or 5432,
        urlsplit(stores.redis_url).port or 6379,
    )


async def _sample(
    proc: Proc, fleet_port: int, t0: float, stores: tuple[int, int]
) -> dict[str, float]:
    found = await asyncio.to_thread(resources, proc, stores)
    tw = await asyncio.to_thread(time_wait_to, fleet_port)
    return {"t_s": round(time.monotonic() - t0, 1), **found, "time_wait": tw}


async def run_soak(opts: SoakOptions) -> dict[str, Any]:
    """Run the soak; the JSON-ready result (samples, start, end, flat, the load's summary)."""
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    timing = Timing()
    duration = opts.minutes * 60
    warm_s = min(30.0, duration / 10)
    with (
        tempfile.TemporaryDirectory(prefix="soak-") as tmp,
        start_fleet_for(SOAK_CELL, timing) as fleet,
    ):
        fleet_port = int(str(fleet.ready["stats_url"]).rsplit(":", 1)[1].split("/")[0])
        config = write_config(Path(tmp) / "cfg", fleet.ready, timing)
        async with fresh_stores(opts.admin_dsn, opts.redis_url) as stores:
            proc = await asyncio.to_thread(start_exchange, config, opts.workers, stores)
            criteria = Criteria(timing.deadline_ms)
            prober = Prober(
                proc,
                fleet,
                stores,
                criteria_judge=lambda s: judge(s, criteria),
                buyer_max_ms=float(fleet.ready["max_in_time_latency_ms"]),
                step_s=duration,
            )
            ports = store_ports(stores)
            try:
                await prober.warm_up()
                await prober.load(opts.rate, warm_s)  # pools sized for this rate
                await asyncio.sleep(opts.idle_s)
                t0 = time.monotonic()
                idle_before = await _sample(proc, fleet_port, t0, ports)
                step_task = asyncio.create_task(prober.measure(opts.rate, "soak", duration))
                load_ends = time.monotonic() + duration
                # Only while the load runs: the idle samples bracket it, so "start" and
                # "end" are the first and last under load (one at least, however short).
                samples: list[dict[str, float]] = []
                while not step_task.done():
                    await asyncio.wait({step_task}, timeout=opts.sample_s)
                    if time.monotonic() < load_ends or not samples:
                        samples.append(await _sample(proc, fleet_port, t0, ports))
                step = step_task.result()
                await asyncio.sleep(opts.idle_s)
                idle_after = await _sample(proc, fleet_port, t0, ports)
            finally:
                await prober.close()
                await asyncio.to_thread(proc.stop)
    start, end = samples[0], samples[-1]
    return {
        "command": opts.command,
        "started": started,
        "minutes": opts.minutes,
        "rate": opts.rate,
        "workers": opts.workers,
        "cell": SOAK_CELL.label,
        "samples": samples,
        "start": start,
        "end": end,
        "idle_before": idle_before,
        "idle_after": idle_after,
        "idle_s": opts.idle_s,
        "max": {
            k: max(s[k] for s in samples)
            for k in ("rss_mb", "fds", "tcp", "store_tcp", "time_wait")
        },
        "flat": is_flat(samples, idle_before, idle_after),
        "load": step.summary,
        "failures": step.failures,
        "fleet": step.fleet,
        "cpu": step.cpu,
    }


def render(soak: dict[str, Any], plot_name: str = "soak.png") -> str:
    start, end, peak = soak["start"], soak["end"], soak["max"]
    load = soak["load"]
    lat = load["answered_latency_ms"]
    rows = [
        f"# Soak, {soak['started']}",
        "",
        f"Command: `{soak['command']}`",
        "",
        f"{soak['cell']}, {soak['rate']:g} leads/s for {soak['minutes']:g} min on "
        f"{soak['workers']} worker(s). **Flat: {'yes' if soak['flat'] else 'no'}**: RSS's second "
        f"half peaks within {GROWTH_SHARE:.0%} + 5 MB of its first half; fds and sockets, "
        "which rise and fall with load (keep-alive pools), are back within "
        f"{GROWTH_SHARE:.0%} + 10 of *idle before* once idle again (less the sockets the "
        "Postgres and Redis pools keep), and their floor under load does not climb. *Idle* "
        f"samples are taken after {soak['idle_s']:g} s without load, when the connections to "
        "buyers and from publishers have expired; *start* and *end* are the first and last "
        "samples under load.",
        "",
        "| | idle before | start | end | max | idle after |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    before, after = soak["idle_before"], soak["idle_after"]
    for key, name in (
        ("rss_mb", "RSS MB"),
        ("fds", "open fds"),
        ("tcp", "TCP sockets"),
        ("store_tcp", "of which to Postgres and Redis"),
        ("time_wait", "TIME_WAIT to fleet"),
    ):
        rows.append(
            f"| {name} | {before[key]} | {start[key]} | {end[key]} | {peak[key]} | {after[key]} |"
        )
    rows += [
        "",
        f"Load: sent {load['sent']}, statuses {load['statuses']}, answered latency ms p50 "
        f"{lat['p50']:g} p99 {lat['p99']:g} p99.9 {lat['p99.9']:g} max {lat['max']:g}. "
        f"The hanging buyer got {soak['fleet'].get('hangs', 0)} pings of "
        f"{soak['fleet'].get('pings', 0)} (the exchange throttles a buyer that keeps timing out). "
        f"Background CPU (other processes): {soak['cpu'].get('background', 0):.0%}.",
        "",
        f"![soak]({plot_name})",
    ]
    return "\n".join(rows) + "\n"


def plot(soak: dict[str, Any], path: Path) -> None:
    samples = soak["samples"]
    ts = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    for ax, key, title in zip(
        axes,
        ("rss_mb", "fds", "tcp", "time_wait"),
        ("RSS MB", "open fds", "TCP sockets", "TIME_WAIT to fleet"),
        strict=True,
    ):
        ax.plot(ts, [s[key] for s in samples], marker=".", label="under load")
        idle = [soak[k] for k in ("idle_before", "idle_after") if k in soak]
        ax.plot([s["t_s"] / 60 for s in idle], [s[key] for s in idle], "x", label="idle")
        if key == "tcp":
            store = [s.get("store_tcp", 0) for s in samples]
            ax.plot(ts, store, linestyle=":", label="to Postgres and Redis")
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("minutes")
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(soak: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "soak.json", out_dir / "soak.md", out_dir / "soak.png"]
    paths[0].write_text(json.dumps(soak, indent=1), encoding="utf-8")
    paths[1].write_text(render(soak), encoding="utf-8")
    plot(soak, paths[2])
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m loadtests.soak", description=__doc__)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--sample-s", type=float, default=15.0)
    p.add_argument(
        "--idle-s", type=float, default=IDLE_S, help="idle wait before and after the load"
    )
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    opts = SoakOptions(
        args.minutes,
        args.rate,
        args.workers,
        args.sample_s,
        args.idle_s,
        command="python -m loadtests.soak " + shlex.join(argv),
    )
    with loop_runner() as runner:
        soak = runner.run(run_soak(opts))
    out = args.out or ROOT / "loadtests" / "results" / time.strftime("%Y-%m-%d")
    for path in write(soak, out):
        print(path)


if __name__ == "__main__":
    main()
