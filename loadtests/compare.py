"""Before and after: one fixed-rate step against two versions of the exchange, back to back.

The machine's speed drifts between runs, so a change is judged by alternating the two
versions on the same fleet: before, after, before, after. "Before" is a git revision,
checked out into a temporary worktree and run with that tree on ``PYTHONPATH``; "after"
is this checkout. Each start gets fresh stores.

Usage::

    python -m loadtests.compare --before 1991968 --before-in-flight 256 --rate 500 --runs 2
    python -m loadtests.compare --before HEAD --workers 2 --rate 330 --runs 3  # overload
    python -m loadtests.compare --before HEAD --cell 30x0ms --rate 120 --runs 3
    python -m loadtests.compare --before HEAD --daily-cap 10000000 --rate 200  # caps in play
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from loadtests.bench import MATRIX, Options
from loadtests.probe import Prober, loop_runner
from loadtests.procs import Proc
from loadtests.stack import (
    Timing,
    fresh_stores,
    start_exchange,
    start_fleet_for,
    write_config,
)

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """A detached checkout of ``revision``, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="exchange-before-") as tmp:
        tree = Path(tmp) / "tree"
        git = ["git", "-C", str(ROOT), "worktree"]
        subprocess.run([*git, "add", "--detach", str(tree), revision], check=True)
        try:
            yield tree
        finally:
            subprocess.run([*git, "remove", "--force", str(tree)], check=False)
            subprocess.run([*git, "prune"], check=False)


async def one_step(
    args: argparse.Namespace, fleet: Proc, timing: Timing, code_dir: Path | None
) -> dict[str, Any]:
    """Start the exchange from ``code_dir`` (None: this checkout), warm it, run one step."""
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp) / "cfg", fleet.ready, timing)
        async with fresh_stores(args.admin_dsn, args.redis_url) as stores:
            proc = await asyncio.to_thread(
                start_exchange, config, args.workers, stores, 0, code_dir
            )
            prober = Prober(
                proc,
                fleet,
                stores,
                criteria_judge=lambda s: [],
                buyer_max_ms=0.0,
                step_s=args.seconds,
            )
            try:
                await prober.warm_up()
                step = await prober.measure(args.rate)
            finally:
                await prober.close()
                proc.stop()
    summary = step.summary
    return {
        "p50_ms": summary["answered_latency_ms"]["p50"],
        "p99_ms": summary["answered_latency_ms"]["p99"],
        "sold_per_s": round(summary["statuses"].get("sold", 0) / summary["duration_s"], 1),
        "statuses": summary["statuses"],
        "cpu_ms_per_lead": step.cpu["server_ms_per_lead"],
        # Its Postgres backends' CPU, which a change to the schema or the save moves.
        "db_ms_per_lead": step.cpu["db_ms_per_lead"],
    }


async def compare(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    base = Timing(daily_cap=args.daily_cap)
    sides = [
        ("before", replace(base, max_leads_in_flight=args.before_in_flight)),
        ("after", replace(base, max_leads_in_flight=args.after_in_flight)),
    ]
    rows: list[tuple[str, dict[str, Any]]] = []
    cell = next(c for c in MATRIX if c.name == args.cell)
    with worktree(args.before) as tree, start_fleet_for(cell, base) as fleet:
        for _ in range(args.runs):
            for name, timing in sides:
                code_dir = tree if name == "before" else None
                step = await one_step(args, fleet, timing, code_dir)
                rows.append((name, step))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m loadtests.compare", description=__doc__)
    p.add_argument("--before", required=True, help="a git revision")
    help_in_flight = "max_leads_in_flight written into that side's config (default %(default)s)"
    p.add_argument(
        "--before-in-flight", type=int, default=Timing.max_leads_in_flight, help=help_in_flight
    )
    p.add_argument(
        "--after-in-flight", type=int, default=Timing.max_leads_in_flight, help=help_in_flight
    )
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--workers", type=int, default=1, help="exchange workers (both sides)")
    names = [c.name for c in MATRIX]
    p.add_argument("--cell", choices=names, default=names[0], help="the buyer fleet")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument(
        "--daily-cap",
        type=int,
        help="give every campaign this daily cap (never reached), so caps are read and reserved",
    )
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--admin-dsn", default=os.environ.get("BENCH_ADMIN_DSN", Options.admin_dsn))
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", Options.redis_url))
    args = p.parse_args(argv)
    with loop_runner() as runner:
        rows = runner.run(compare(args))
    print(table(rows, args.rate))


def table(rows: Sequence[tuple[str, dict[str, Any]]], rate: float) -> str:
    lines = [
        f"| version ({rate:g} leads/s) | answered p50 ms | p99 ms | sold/s | statuses "
        "| server CPU ms/lead | Postgres CPU ms/lead |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    lines += [
        f"| {name} | {row['p50_ms']} | {row['p99_ms']} | {row['sold_per_s']} | {row['statuses']} "
        f"| {row['cpu_ms_per_lead']} | {row['db_ms_per_lead']} |"
        for name, row in rows
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
