"""Every Grafana panel returns data from a real Prometheus scraping a real exchange under traffic.

A real ``exchange serve`` (its own process, so its metrics are its own) runs the example
config against the simulated fleet on loopback, publisher traffic flows at ~15 leads/s,
and the Debian ``prometheus`` binary scrapes it every second. Each panel query of each
dashboard, with Grafana's variables filled in, must parse and return a finite sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from exchange.demo.run import DEMO_KEYS
from loadtests.fleet import FleetSpec, specs_from_config, start_fleet
from loadtests.leads import LeadFactory
from tests.kit.exchange import free_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
PROMETHEUS = shutil.which("prometheus")
ADMIN = "admin-token-prometheus-test"
# Grafana's built-in interval variables, at values that fit a 1 s scrape and a short run.
BUILTINS = {"$__rate_interval": "15s", "$__interval": "5s", "$__range": "1m"}
VERTICALS = ("auto_insurance", "mortgage", "solar", "debt")
SCRAPE_SECONDS = 12.0
RATE = 15.0

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="the prometheus binary is not installed (apt install prometheus)"
)


def config_on_free_ports(dest: Path) -> Path:
    """A copy of config/ whose simulated buyers listen on free ports, not 9101-9107.

    Fixed ports would collide with a demo or another test run on the same machine.
    """
    dest.mkdir()
    ports: dict[str, str] = {}
    for source in (ROOT / "config").glob("*.yaml"):
        text = source.read_text(encoding="utf-8")
        text = re.sub(
            r"127\.0\.0\.1:(\d+)",
            lambda m: "127.0.0.1:" + ports.setdefault(m[1], str(free_port())),
            text,
        )
        (dest / source.name).write_text(text, encoding="utf-8")
    return dest


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


async def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        for _ in range(300):
            if proc.poll() is not None:
                pytest.fail(f"{proc.args!r} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    pytest.fail(f"{url} never answered 200:\n{log.read_text()[-3000:]}")


@contextlib.asynccontextmanager
async def exchange_serving(
    config: Path, pg_dsn: str, redis_url: str, redis_prefix: str, tmp: Path
) -> AsyncIterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "EXCHANGE_DATABASE_URL": pg_dsn,
        "EXCHANGE_REDIS_URL": redis_url,
        "EXCHANGE_REDIS_PREFIX": redis_prefix,
        "EXCHANGE_ADMIN_TOKEN": ADMIN,
        "EXCHANGE_LOG_LEVEL": "WARNING",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp / "exchange.log"
    args = [sys.executable, "-m", "exchange.cli", "serve", "--config", str(config)]
    proc = spawn([*args, "--port", str(port), "--no-migrate"], log, env)
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_ready(base + "/readyz", proc, log)
        yield base
    finally:
        stop(proc)


@contextlib.asynccontextmanager
async def prometheus_scraping(target: str, tmp: Path) -> AsyncIterator[str]:
    assert PROMETHEUS is not None
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML: no templating of a YAML document by hand
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "exchange", "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    log = tmp / "prometheus.log"
    proc = spawn(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        log,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_ready(base + "/-/ready", proc, log)
        yield base
    finally:
        stop(proc)


async def publisher_traffic(base: str, stop_at: asyncio.Event) -> int:
    """Open loop at RATE leads/s over the example verticals and both publishers."""
    factories = [LeadFactory(vertical=v) for v in VERTICALS]
    sent = 0
    tasks: set[asyncio.Task[httpx.Response]] = set()
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        start = time.monotonic()
        while not stop_at.is_set():
            body = factories[sent % len(factories)](sent)
            headers = {"Authorization": f"Bearer {DEMO_KEYS[sent % 2]}"}
            task = asyncio.create_task(client.post("/v1/leads", json=body, headers=headers))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_at.wait(), start + sent / RATE - time.monotonic())
        if tasks:
            await asyncio.wait(tasks, timeout=10)
    return sent


def panel_targets(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield inner["title"], target["expr"]


def variable_values(board: dict[str, Any]) -> dict[str, str]:
    """Each dashboard variable at its default: "All" becomes its allValue (a regex)."""
    values: dict[str, str] = {}
    for variable in board.get("templating", {}).get("list", []):
        current = variable.get("current", {}).get("value", [])
        chosen = current if isinstance(current, list) else [current]
        if "$__all" in chosen or not chosen:
            values[variable["name"]] = variable.get("allValue") or ".*"
        else:
            values[variable["name"]] = "|".join(chosen)
    return values


def grafana_substitute(expr: str, variables: dict[str, str]) -> str:
    for name, value in BUILTINS.items():
        expr = expr.replace(name, value)
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    assert "$" not in expr, f"a variable was left unfilled: {expr}"
    return expr


async def instant_query(client: httpx.AsyncClient, expr: str) -> dict[str, Any]:
    resp = await client.get("/api/v1/query", params={"query": expr})
    body: dict[str, Any] = resp.json()
    return body


def finite_values(result: dict[str, Any]) -> list[float]:
    data = result.get("data", {})
    samples = data.get("result", []) if data.get("resultType") == "vector" else []
    values = [float(s["value"][1]) for s in samples]
    return [v for v in values if math.isfinite(v)]


async def check_dashboards(prom: str) -> list[str]:
    """Every panel query that fails to parse or returns no finite sample, as a message."""
    problems: list[str] = []
    async with httpx.AsyncClient(base_url=prom, timeout=10) as client:
        up = await instant_query(client, 'up{job="exchange"}')
        assert finite_values(up) == [1.0], f"Prometheus does not reach the exchange: {up}"
        for path in DASHBOARDS:
            board = json.loads(path.read_text(encoding="utf-8"))
            variables = variable_values(board)
            for title, raw in panel_targets(board):
                expr = grafana_substitute(raw, variables)
                result = await instant_query(client, expr)
                if result.get("status") != "success":
                    problems.append(f"{path.stem} / {title}: {result.get('error')} in {expr}")
                elif not finite_values(result):
                    problems.append(f"{path.stem} / {title}: no data for {expr}")
            problems += await check_variables(client, path.stem, board)
    return problems


async def check_variables(client: httpx.AsyncClient, stem: str, board: dict[str, Any]) -> list[str]:
    """A ``label_values(metric, label)`` variable must offer at least one value."""
    problems = []
    for variable in board.get("templating", {}).get("list", []):
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]["query"])
        assert match, f"{stem}: unsupported variable query {variable['query']}"
        metric, label = match.groups()
        resp = await client.get(f"/api/v1/label/{label}/values", params={"match[]": metric})
        if not resp.json().get("data"):
            problems.append(f"{stem} / ${variable['name']}: no values of {label} on {metric}")
    return problems


async def test_every_dashboard_panel_returns_data_under_traffic(
    pg_dsn: str, redis_url: str, redis_prefix: str, redis_client: Any, tmp_path: Path
) -> None:
    config = config_on_free_ports(tmp_path / "config")
    fleet = await start_fleet(FleetSpec(specs_from_config(config), seed=7))
    try:
        async with (
            exchange_serving(config, pg_dsn, redis_url, redis_prefix, tmp_path) as base,
            prometheus_scraping(base.removeprefix("http://"), tmp_path) as prom,
        ):
            stop_at = asyncio.Event()
            traffic = asyncio.create_task(publisher_traffic(base, stop_at))
            await asyncio.sleep(SCRAPE_SECONDS)
            # Queried while the traffic still flows, so short-window rates are not zero.
            problems = await check_dashboards(prom)
            stop_at.set()
            sent = await traffic
    finally:
        await fleet.close()
    assert sent >= RATE * SCRAPE_SECONDS * 0.8
    assert not problems, "\n".join(problems)
