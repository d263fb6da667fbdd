"""An open-loop load generator for ``POST /v1/leads``: a fixed arrival rate, whatever the answers.

Lead ``i`` is due at ``t0 + i / rate``. The sender never waits for an answer before the
next send, and every latency counts from the intended send time, so a slow exchange shows
as growing latency instead of a politely slower generator (no coordinated omission). How
late the generator itself sent (its send lag) is measured too: if its p99 is above a few
ms, one core could not keep up; split the rate over ``processes``.

Usage::

    result = await run_open_loop("http://127.0.0.1:8000", "pub-1-demo-key", rate=200,
                                 duration_s=30, make_lead=LeadFactory("auto_insurance"))
    print(result.format())

CLI: ``python -m loadtests.generator --url http://127.0.0.1:8000 --key pub-1-demo-key
--rate 200 --duration 30 [--buyer-max-ms 50] [--processes 2] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from loadtests.buyer import price_cents
from loadtests.leads import LeadFactory
from loadtests.result import ANSWER_STATUSES, LoadResult

MakeLead = Callable[[int], Mapping[str, Any]]
LEADS_PATH = "/v1/leads"
_START_DELAY_S = 0.05  # after building the bodies, so the first send is not already late
_PREBUILD_MAX = 100_000  # ~1 KB each; longer runs build each body as it is sent (~20 µs)


@dataclass(frozen=True)
class _Plan:
    """Everything one sending process needs; picklable for worker processes."""

    url: str
    api_key: str
    rate: float
    duration_s: float
    make_lead: MakeLead
    request_timeout_s: float = 10.0
    connections: int = 2000
    sessions: int = 8
    buyer_max_ms: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    shard: tuple[int, int] = (0, 1)  # this process sends leads i with i % n == k

    @property
    def endpoint(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith(LEADS_PATH) else base + LEADS_PATH


async def run_open_loop(
    url: str,
    api_key: str,
    rate: float,
    duration_s: float,
    make_lead: MakeLead | None = None,
    *,
    request_timeout_s: float = 10.0,
    connections: int = 2000,
    sessions: int = 8,
    processes: int = 1,
    buyer_max_ms: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> LoadResult:
    """Send ``rate × duration_s`` leads to ``url`` (base or full ``/v1/leads`` URL) open-loop.

    ``sessions`` client sessions are used round-robin so at least that many connections
    exist (one keep-alive connection would pin every lead on one server worker);
    ``connections`` caps them all. ``buyer_max_ms`` is the slowest in-time buyer answer,
    which the result subtracts to show the exchange's own overhead. With ``processes`` > 1
    the schedule is split over that many processes (``make_lead`` must then be picklable).
    """
    plan = _Plan(
        url,
        api_key,
        rate,
        duration_s,
        make_lead or LeadFactory(),
        request_timeout_s,
        connections,
        sessions,
        buyer_max_ms,
        dict(headers or {}),
    )
    if processes <= 1:
        return await _send_all(plan)
    return await _send_in_processes(plan, processes)


async def _send_in_processes(plan: _Plan, processes: int) -> LoadResult:
    """Each process builds its bodies, reports ready, then all start at one shared t0."""
    ctx = multiprocessing.get_context("spawn")
    pipes: list[Connection] = []
    workers = []
    for k in range(processes):
        ours, theirs = ctx.Pipe()
        worker = ctx.Process(
            target=_process_main, args=(replace(plan, shard=(k, processes)), theirs)
        )
        worker.start()
        theirs.close()  # so a crashed worker shows as EOF on our end
        pipes.append(ours)
        workers.append(worker)
    try:
        await asyncio.to_thread(_receive_all, pipes)
        start_at = time.time() + _START_DELAY_S
        for pipe in pipes:
            pipe.send(start_at)
        parts: list[LoadResult] = await asyncio.to_thread(_receive_all, pipes)
    finally:
        for worker in workers:
            worker.join(5)
            if worker.is_alive():
                worker.kill()
        for pipe in pipes:
            pipe.close()
    result = parts[0]
    for part in parts[1:]:
        result.merge(part)
    return result


def _receive_all(pipes: list[Connection]) -> list[Any]:
    try:
        return [pipe.recv() for pipe in pipes]
    except EOFError as exc:
        raise RuntimeError("a generator process died; see its stderr") from exc


def _process_main(plan: _Plan, pipe: Connection) -> None:
    with _event_loop_runner() as runner:
        result = runner.run(_send_all(plan, pipe))
    pipe.send(result)


async def _send_all(plan: _Plan, sync: Connection | None = None) -> LoadResult:
    k, n = plan.shard
    total = round(plan.rate * plan.duration_s)
    indexes = range(k, total, n)
    # Bodies are built before the clock starts, so building them never delays a send.
    bodies = [orjson.dumps(plan.make_lead(i)) for i in indexes] if total <= _PREBUILD_MAX else None
    result = LoadResult(plan.endpoint, plan.rate, plan.duration_s, plan.buyer_max_ms)
    loop = asyncio.get_running_loop()
    t0 = loop.time() + (_agree_on_start(sync) - time.time())
    connector_limit = max(plan.connections // max(plan.sessions, 1), 1)
    clients = [_client(plan, connector_limit) for _ in range(max(plan.sessions, 1))]
    pending: set[asyncio.Task[None]] = set()
    try:
        for j, i in enumerate(indexes):
            intended = t0 + i / plan.rate
            wait = intended - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            elif j % 16 == 0:
                await asyncio.sleep(0)  # behind schedule: still let answers be read
            client = clients[j % len(clients)]
            body = bodies[j] if bodies is not None else orjson.dumps(plan.make_lead(i))
            task = asyncio.create_task(_send_one(plan, client, body, intended, t0, result))
            pending.add(task)
            task.add_done_callback(pending.discard)
        result.sent = len(indexes)
        result.send_window_s = loop.time() - t0 + 1 / plan.rate
        if pending:
            await asyncio.wait(pending)
        result.elapsed_s = loop.time() - t0
    finally:
        for client in clients:
            await client.close()
    return result


def _agree_on_start(sync: Connection | None) -> float:
    """The wall-clock t0: soon, or in a worker process the one all workers share."""
    if sync is None:
        return time.time() + _START_DELAY_S
    sync.send("ready")
    return float(sync.recv())


def _client(plan: _Plan, limit: int) -> aiohttp.ClientSession:
    headers = {
        "Authorization": f"Bearer {plan.api_key}",
        "Content-Type": "application/json",
        **plan.headers,
    }
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=plan.request_timeout_s),
        skip_auto_headers=("User-Agent",),
    )


async def _send_one(
    plan: _Plan,
    client: aiohttp.ClientSession,
    body: bytes,
    intended: float,
    t0: float,
    result: LoadResult,
) -> None:
    loop = asyncio.get_running_loop()
    lag = loop.time() - intended
    payout = 0
    try:
        async with client.post(plan.endpoint, data=body) as resp:
            raw = await resp.read()
            status, payout = classify(resp.status, raw)
    except TimeoutError:
        status = "timeout"
    except (aiohttp.ClientError, OSError):
        status = "conn_error"
    result.payout_cents += payout
    result.record(intended - t0, loop.time() - intended, lag, status)


def classify(http_status: int, raw: bytes) -> tuple[str, int]:
    """The lead status of an answer (``sold``…, ``http_503``, ``bad_answer``) and its payout."""
    if http_status != 200:
        return f"http_{http_status}", 0
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "bad_answer", 0
    if not isinstance(answer, dict):
        return "bad_answer", 0
    status = answer.get("status")
    known = status if status in ANSWER_STATUSES else "other_answer"
    return str(known), price_cents(answer.get("payout", 0))


def _event_loop_runner() -> asyncio.Runner:
    """uvloop when installed: the generator must not be the bottleneck it measures."""
    gc.freeze()
    try:
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        return asyncio.Runner()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.generator", description=__doc__.split("\n")[0]
    )
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--key", default="pub-1-demo-key", help="the publisher API key")
    p.add_argument("--rate", type=float, default=100.0, help="leads per second")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of sending")
    p.add_argument("--vertical", default="auto_insurance")
    p.add_argument("--test-leads", action="store_true", help='send "test": true leads')
    p.add_argument("--run-id", help="makes leads repeatable (default: random)")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request total timeout, s")
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--buyer-max-ms", type=float, help="slowest in-time buyer, for the overhead")
    p.add_argument("--json", type=Path, help="also write the summary and timeline here")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    factory = (
        LeadFactory(args.vertical, args.run_id, args.test_leads)
        if args.run_id
        else LeadFactory(args.vertical, test=args.test_leads)
    )
    run = run_open_loop(
        args.url,
        args.key,
        args.rate,
        args.duration,
        factory,
        request_timeout_s=args.timeout,
        connections=args.connections,
        sessions=args.sessions,
        processes=args.processes,
        buyer_max_ms=args.buyer_max_ms,
    )
    with _event_loop_runner() as runner:
        result = runner.run(run)
    print(result.format())
    if args.json:
        doc = {**result.summary(), "timeline": result.timeline}
        args.json.write_text(json.dumps(doc), encoding="utf-8")


if __name__ == "__main__":
    main()
