"""Subprocesses a test starts (``exchange serve`` and the like)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def stop(proc: subprocess.Popen[bytes], grace_s: float = 15) -> None:
    """Terminate, then kill if it has not exited within ``grace_s``."""
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_cli(
    *args: str, database_url: str, redis_url: str, redis_prefix: str, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """``exchange <args>`` run to its end against these stores, from the repository root."""
    env = {
        **os.environ,
        "EXCHANGE_DATABASE_URL": database_url,
        "EXCHANGE_REDIS_URL": redis_url,
        "EXCHANGE_REDIS_PREFIX": redis_prefix,
    }
    return subprocess.run(
        [sys.executable, "-m", "exchange.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
