"""SPEC §1: ``exchange migrate`` is safe to run twice, and ``exchange serve`` applies pending
migrations at start unless told not to (``--no-migrate``), reads ``./config`` by default and
listens where ``--host`` says. Real commands, blank databases."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx

from tests.kit.db import scratch_database
from tests.kit.exchange import free_port
from tests.kit.procs import stop
from tests.routing_e2e.harness import config, write_config_dir

ROOT = Path(__file__).resolve().parents[2]
CORE_TABLES = {"leads", "pings", "posts", "sales", "ledger"}


def _exchange(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "exchange.cli", *args]
    return subprocess.run(
        argv, env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


async def _tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows}


async def test_migrate_twice_applies_everything_once(pg_admin_dsn: str, redis_url: str) -> None:
    async with scratch_database(pg_admin_dsn, "exchange_blank", "template0") as dsn:
        env = {"EXCHANGE_DATABASE_URL": dsn, "EXCHANGE_REDIS_URL": redis_url}
        first = await asyncio.to_thread(_exchange, env, "migrate")
        assert first.returncode == 0, first.stderr
        applied = re.match(r"applied (\d+) migration\(s\): ", first.stdout)
        assert applied is not None and int(applied[1]) >= 1, first.stdout
        tables = await _tables(dsn)
        assert tables >= CORE_TABLES

        second = await asyncio.to_thread(_exchange, env, "migrate")
        assert second.returncode == 0, second.stderr
        assert second.stdout.strip() == "applied 0 migration(s)"
        assert await _tables(dsn) == tables


async def _answered_again_after(host: str, port: int, idle_s: float) -> bool:
    """Two requests on one connection, ``idle_s`` apart: whether the second was answered
    (False: the server had closed the idle connection)."""
    reader, writer = await asyncio.open_connection(host, port)
    request = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    try:
        for pause in (0.0, idle_s):
            await asyncio.sleep(pause)
            try:
                writer.write(request)
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            except (asyncio.IncompleteReadError, ConnectionError):
                assert pause, "the first request must be answered"
                return False
            assert head.startswith(b"HTTP/1.1 200"), head
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
        return True
    finally:
        writer.close()


async def _serve_until_up_or_gone(
    env: dict[str, str],
    cwd: Path,
    log: Path,
    *flags: str,
    host: str = "127.0.0.1",
    idle_s: float = 0.0,
    keeps_idle: bool = True,
) -> bool:
    """Start ``serve`` in ``cwd``; True once it answers /healthz on ``host``, False if it
    exits first. With ``idle_s``, also check that a connection idle that long is still
    answered (``keeps_idle``) or was closed."""
    port = free_port()
    argv = [sys.executable, "-m", "exchange.cli", "serve", "--port", str(port), *flags]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env={**os.environ, **env}, cwd=cwd, stdout=out, stderr=out)
        try:
            give_up = time.monotonic() + 60
            async with httpx.AsyncClient(timeout=2) as client:
                while time.monotonic() < give_up:
                    if proc.poll() is not None:
                        return False
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get(f"http://{host}:{port}/healthz")).is_success:
                            if idle_s:
                                kept = await _answered_again_after(host, port, idle_s)
                                assert kept == keeps_idle, (idle_s, kept)
                            return True
                    await asyncio.sleep(0.1)
            raise AssertionError(f"serve neither answered nor exited:\n{log.read_text()[-2000:]}")
        finally:
            stop(proc)


async def test_serve_migrates_a_blank_database_unless_told_not_to(
    pg_admin_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    write_config_dir(tmp_path / "config", config([]))  # ./config: serve's default
    async with scratch_database(pg_admin_dsn, "exchange_blank", "template0") as dsn:
        env = {
            "EXCHANGE_DATABASE_URL": dsn,
            "EXCHANGE_REDIS_URL": redis_url,
            "EXCHANGE_REDIS_PREFIX": redis_prefix,
            "EXCHANGE_LOG_LEVEL": "WARNING",
        }
        log = tmp_path / "serve.log"
        await _serve_until_up_or_gone(env, tmp_path, log, "--no-migrate")
        assert await _tables(dsn) == set(), "--no-migrate touched the database"

        # Another loopback address, so --host is seen to choose where it listens.
        # A publisher's pooled connection must outlive a pause longer than uvicorn's
        # default keep-alive (5 s), or its next lead meets a connection closed under it,
        # an error a POST cannot safely retry.
        up = await _serve_until_up_or_gone(
            env, tmp_path, log, "--host", "127.0.0.2", host="127.0.0.2", idle_s=6.0
        )
        assert up, log.read_text()[-2000:]
        # ... and an operator behind a balancer with another idle timeout can set it.
        short = {**env, "EXCHANGE_KEEP_ALIVE_S": "1"}
        up = await _serve_until_up_or_gone(short, tmp_path, log, idle_s=2.5, keeps_idle=False)
        assert up, log.read_text()[-2000:]
        assert await _tables(dsn) >= CORE_TABLES
