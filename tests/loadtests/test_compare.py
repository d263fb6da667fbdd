"""Before/after: the "before" exchange really runs the revision's code, from its worktree."""

from __future__ import annotations

import argparse
import subprocess
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from loadtests import compare
from loadtests.procs import Proc
from loadtests.stack import Cell, Stores, Timing, start_exchange, start_fleet_for

# An old commit, long before the admission-cap gauge: its /metrics cannot name it. (The
# gauge is set at start-up, so it shows even in the 2-worker, multiprocess /metrics.)
WITHOUT_CAP_METRIC = "c3a00e1"


@pytest.mark.skipif(not (compare.ROOT / ".git").exists(), reason="needs a git checkout")
async def test_before_runs_the_revision_and_after_runs_this_checkout(
    pg_admin_dsn: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[Path | None, bool, int]] = []

    def spy(config: Path, workers: int, stores: Stores, port: int, code_dir: Path | None) -> Proc:
        proc = start_exchange(config, workers, stores, port, code_dir)
        metrics = httpx.get(f"{proc.ready['url']}/metrics").text
        started.append((code_dir, "exchange_admission_cap" in metrics, workers))
        return proc

    monkeypatch.setattr(compare, "start_exchange", spy)
    fleets: list[str] = []
    real_fleet = start_fleet_for

    def fleet_spy(cell: Cell, timing: Timing) -> AbstractContextManager[Proc]:
        fleets.append(cell.name)
        return real_fleet(cell, timing)

    monkeypatch.setattr(compare, "start_fleet_for", fleet_spy)
    args = argparse.Namespace(
        before=WITHOUT_CAP_METRIC,
        before_in_flight=32,
        after_in_flight=64,
        rate=20.0,
        seconds=0.5,
        runs=1,
        workers=2,
        cell="10x0ms+hang",
        daily_cap=None,
        admin_dsn=pg_admin_dsn,
        redis_url=redis_url,
    )
    rows = await compare.compare(args)

    assert [name for name, _ in rows] == ["before", "after"]
    assert fleets == ["10x0ms+hang"]  # one fleet, the cell asked for, for both sides
    (before_dir, before_has_it, before_n), (after_dir, after_has_it, after_n) = started
    assert before_n == after_n == 2
    assert before_dir is not None and after_dir is None
    assert not before_has_it, "the before side ran this checkout's code"
    assert after_has_it
    for _, row in rows:
        assert row["statuses"].get("sold", 0) > 0 and row["sold_per_s"] > 0, row
        assert row["cpu_ms_per_lead"] > 0
        # Reported; a 0.5 s step can fall within one 10 ms CPU tick of a backend: may be 0.
        assert row["db_ms_per_lead"] >= 0
    assert "| before |" in compare.table(rows, 20.0)
    assert "Postgres CPU ms/lead" in compare.table(rows, 20.0)
    worktrees = subprocess.run(
        ["git", "-C", str(compare.ROOT), "worktree", "list", "--porcelain"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(before_dir.resolve()) not in worktrees  # removed afterwards
