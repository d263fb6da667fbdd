"""Before/after: the "before" exchange really runs from a checkout of the revision."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from loadtests import compare
from loadtests.procs import Proc
from loadtests.stack import Stores, start_exchange


async def test_before_runs_from_a_worktree_of_the_revision_and_after_from_here(
    pg_admin_dsn: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[Path | None, bool]] = []

    def spy(config: Path, workers: int, stores: Stores, port: int, code_dir: Path | None) -> Proc:
        checkout = code_dir is not None and (code_dir / "exchange" / "cli.py").is_file()
        started.append((code_dir, checkout))
        return start_exchange(config, workers, stores, port, code_dir)

    monkeypatch.setattr(compare, "start_exchange", spy)
    args = argparse.Namespace(
        before="HEAD",
        before_in_flight=32,
        after_in_flight=64,
        rate=20.0,
        seconds=0.5,
        runs=1,
        admin_dsn=pg_admin_dsn,
        redis_url=redis_url,
    )
    rows = await compare.compare(args)

    assert [name for name, _ in rows] == ["before", "after"]
    (before_dir, was_checkout), (after_dir, _) = started
    assert was_checkout and after_dir is None
    for _, row in rows:
        assert row["statuses"].get("sold", 0) > 0, row
        assert row["cpu_ms_per_lead"] > 0
    assert "| before |" in compare.table(rows, 20.0)
    worktrees = subprocess.run(
        ["git", "-C", str(compare.ROOT), "worktree", "list"], capture_output=True, text=True
    ).stdout
    assert str(before_dir) not in worktrees  # removed afterwards
