"""`exchange demo` end to end: stores, fleet, traffic, and a summary that matches Postgres."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import orjson
import pytest

from exchange.demo.run import PROJECT_CONFIG, demo_config_dir
from tests.kit.exchange import free_port

ROOT = Path(__file__).resolve().parents[2]


async def test_demo_runs_and_its_summary_matches_postgres(
    pg_dsn: str, redis_url: str, redis_prefix: str, redis_client: object, tmp_path: Path
) -> None:
    out = tmp_path / "summary.json"
    env = {
        **os.environ,
        "EXCHANGE_DATABASE_URL": pg_dsn,
        "EXCHANGE_REDIS_URL": redis_url,
        "EXCHANGE_REDIS_PREFIX": redis_prefix,  # the fixture deletes the demo's keys after
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "exchange.cli",
            "demo",
            "--duration",
            "3",
            "--rate",
            "15",
            "--no-live",
            "--port",
            str(free_port()),
            "--summary-json",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = orjson.loads(out.read_bytes())
    assert 40 <= summary["leads"] <= 50  # 3 s at 15/s, open loop: --duration and --rate
    assert summary["sold"] > 0
    assert "http_500" not in summary["statuses"]
    conn = await asyncpg.connect(pg_dsn)
    try:
        revenue = await conn.fetchval("SELECT coalesce(sum(price_cents), 0) FROM sales")
        leads = await conn.fetchval("SELECT count(*) FROM leads")
        ledger = await conn.fetchval("SELECT coalesce(sum(amount_cents), 0) FROM ledger")
        span_s = await conn.fetchval(
            "SELECT extract(epoch FROM max(received_at) - min(received_at)) FROM leads"
        )
    finally:
        await conn.close()
    assert summary["revenue_cents"] == revenue > 0
    assert leads == summary["leads"]
    assert ledger == 0
    assert 2.5 <= float(span_s) <= 3.5, span_s  # sent over the 3 s asked for
    assert "demo summary" in proc.stdout


def test_the_demo_finds_its_config_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert PROJECT_CONFIG == ROOT / "config"
    own = tmp_path / "mine"
    own.mkdir()
    assert demo_config_dir(own, Path("config")) == own  # --config wins
    assert demo_config_dir(tmp_path / "nope", Path("config")) is None  # and must exist
    assert demo_config_dir(None, own) == own  # EXCHANGE_CONFIG_DIR, when set
    assert demo_config_dir(None, tmp_path / "nope") is None  # set, but missing
    # The default ./config, absent in this folder: the project's own.
    monkeypatch.chdir(tmp_path)
    assert demo_config_dir(None, Path("config")) == ROOT / "config"


def test_the_demo_says_which_config_is_missing(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "exchange.cli", "demo", "--config", str(tmp_path / "nope")],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert f"no config directory at {tmp_path / 'nope'}" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_the_demo_shows_its_live_view(
    pg_dsn: str, redis_url: str, redis_prefix: str, redis_client: object
) -> None:
    """Without --no-live the demo draws its live tables (rich's last frame, off a TTY)."""
    env = {
        **os.environ,
        "EXCHANGE_DATABASE_URL": pg_dsn,
        "EXCHANGE_REDIS_URL": redis_url,
        "EXCHANGE_REDIS_PREFIX": redis_prefix,
    }
    argv = [sys.executable, "-m", "exchange.cli", "demo", "--duration", "2", "--rate", "10"]
    argv += ["--port", str(free_port())]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    live = proc.stdout.split("demo summary")[0]
    assert "ping-post exchange — live" in live and "buyers" in live, proc.stdout[-3000:]
    assert "demo summary" in proc.stdout
