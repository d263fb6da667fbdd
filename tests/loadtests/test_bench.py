"""The benchmark's rate search, its verdicts, its report, and one tiny real run.

The search and the report are tested with fake measurements (exact, fast); the real run
checks the wiring against a real exchange, Postgres and Redis, never the exchange's speed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from loadtests.bench import (
    Criteria,
    Options,
    find_sustained,
    judge,
    options_from_args,
    run_bench,
    speed_probe,
)
from loadtests.benchdata import BenchResult, CellResult, Search, Step, targets
from loadtests.profile import analyze, per_lead_run
from loadtests.report import render_markdown, write_report
from loadtests.result import LoadResult
from loadtests.soak import is_flat
from loadtests.soak import render as render_soak
from loadtests.stack import Cell, Timing, fresh_stores

LADDER = (50.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0)


def _summary(
    rate: float = 100.0,
    statuses: dict[str, int] | None = None,
    latency_ms: float = 20.0,
    sent: int | None = None,
    buyer_max_ms: float = 0.0,
) -> dict[str, Any]:
    """A real LoadResult's summary for one second at ``rate``."""
    result = LoadResult("http://x/v1/leads", rate, 1.0, buyer_max_ms)
    result.sent = int(rate) if sent is None else sent
    result.send_window_s = 1.0
    for status, count in (statuses or {"sold": int(rate)}).items():
        for i in range(count):
            result.record(i / rate, latency_ms / 1000, 0.0, status)
    return result.summary()


def _step(rate: float, ok: bool, kind: str = "search", **summary: Any) -> Step:
    return Step(rate, _summary(rate, **summary), [] if ok else ["too slow"], kind)


def _capacity(limit: float, noisy: Iterator[bool] | None = None) -> Any:
    """A fake measure: rates up to ``limit`` pass; ``noisy`` yields extra failures."""
    calls: list[float] = []

    async def measure(rate: float) -> Step:
        calls.append(rate)
        glitch = next(noisy, False) if noisy is not None else False
        return _step(rate, rate <= limit and not glitch)

    measure.calls = calls  # type: ignore[attr-defined]
    return measure


async def test_search_climbs_to_the_first_confirmed_failure_then_bisects() -> None:
    measure = _capacity(430)
    best, steps = await find_sustained(measure, LADDER, refine=2, confirm=1)
    # 500 fails twice (confirmed), 450 fails twice, 425 passes.
    assert measure.calls == [50, 100, 200, 300, 400, 500, 500, 450, 450, 425]
    assert best == 425
    assert [s.rate for s in steps] == measure.calls
    assert [s.ok for s in steps][-1] is True


async def test_one_failure_that_passes_when_measured_again_counts_as_sustained() -> None:
    measure = _capacity(1000, noisy=iter([False, False, True]))  # the 200 step glitches once
    best, steps = await find_sustained(measure, (50, 100, 200, 300), refine=0, confirm=1)
    assert measure.calls == [50, 100, 200, 200, 300]
    assert best == 300 and not steps[2].ok and steps[3].ok


def test_the_search_bisects_twice_unless_told_otherwise() -> None:
    assert options_from_args([]).refine == 2
    assert options_from_args(["--quick"]).refine == 1
    assert options_from_args(["--quick", "--refine", "3"]).refine == 3
    assert options_from_args(["--refine", "0"]).refine == 0  # 0 is a value, not "unset"


async def test_when_even_the_lowest_rate_fails_it_bisects_towards_zero() -> None:
    measure = _capacity(30)
    best, _ = await find_sustained(measure, (50, 100), refine=1, confirm=0)
    assert measure.calls == [50, 25]
    assert best == 25
    best, _ = await find_sustained(_capacity(10), (50, 100), refine=1, confirm=0)
    assert best is None


async def test_the_top_of_the_ladder_ends_the_search_without_bisecting() -> None:
    measure = _capacity(10_000)
    best, steps = await find_sustained(measure, (50, 100), refine=3, confirm=1)
    assert best == 100 and len(steps) == 2


def test_judge_names_every_reason_a_rate_is_not_sustained() -> None:
    criteria = Criteria(deadline_ms=5000)
    assert judge(_summary(100), criteria) == []
    assert judge(_summary(100, statuses={"sold": 96, "unsold": 4}), criteria) == []
    why = judge(_summary(100, statuses={"sold": 90, "http_503": 10}), criteria)
    assert why == ["10 × 503"]
    why = judge(_summary(100, statuses={"sold": 97, "timeout": 2, "http_500": 1}), criteria)
    assert why == ["errors http_500=1, timeout=2"]
    assert judge(_summary(100, sent=90), criteria) == ["achieved 90/s"]
    (slow,) = judge(_summary(100, latency_ms=6000), criteria)
    assert slow.startswith("p99 6") and slow.endswith(" ms")
    why = judge(_summary(100, statuses={"sold": 80, "unsold": 20}), criteria)
    assert why == ["sold 80%"]


def _result(ex_sustained: float, base_sustained: float, over: Step, half_ms: float) -> BenchResult:
    ex = Search("exchange", 1, sustained=ex_sustained)
    ex.steps = [
        _step(ex_sustained, True),
        _step(ex_sustained * 1.5, False),
        _step(ex_sustained / 2, True, "half", latency_ms=half_ms),
        over,
    ]
    ex.steps[2].percentiles = [(50.0, half_ms / 2), (99.0, half_ms)]
    base = Search("baseline", 1, sustained=base_sustained)
    base.steps = [
        _step(ex_sustained / 2 + 10, True, latency_ms=6.0),
        _step(ex_sustained / 2 - 10, False, latency_ms=1.0),  # failed: not a reference
        _step(base_sustained, True),
    ]
    cell = CellResult(Cell("10x0ms", 10), 0.0, [base, ex])
    return BenchResult(
        started="2026-01-01 00:00:00 UTC",
        command="python -m loadtests.bench --quick",
        machine={
            "cpus": 2,
            "cpu_model": "test",
            "python": "3.11",
            "commit": "abc",
            "speed_probe_s": 0.25,
            "speed_probe_s_end": 0.31,
        },
        timing=Timing(),
        step_s=3.0,
        criteria={"min_achieved_share": 0.95, "min_sold_share": 0.95, "ladder": [50]},
        cells=[cell],
        notes=["a note"],
    )


def test_targets_judge_ratio_overhead_and_overload() -> None:
    good_over = _step(400, True, "overload", statuses={"sold": 180, "http_503": 220})
    result = _result(200, 300, good_over, half_ms=8.0)
    by_name = {t.name: t for t in targets(result)}
    assert by_name["throughput 10x0ms, 1w"].measured == "0.67"
    assert by_name["throughput 10x0ms, 1w"].met is True
    assert by_name["overhead 10x0ms, 1w"].met is True
    # The bare baseline's p99 at the passing rate nearest the half rate, for context.
    assert by_name["overhead 10x0ms, 1w"].measured == "8.0 ms (bare baseline at 110/s: 6.0 ms)"
    assert by_name["overload 10x0ms, 1w"].met is True  # 180/s of a 200/s peak, rest refused

    queued = _step(400, False, "overload", statuses={"sold": 100, "timeout": 300})
    result = _result(100, 300, queued, half_ms=15.0)
    by_name = {t.name: t for t in targets(result)}
    assert by_name["throughput 10x0ms, 1w"].met is False
    assert by_name["overhead 10x0ms, 1w"].met is False
    assert by_name["overload 10x0ms, 1w"].met is False
    assert "timeout=300" in by_name["overload 10x0ms, 1w"].measured


def test_report_writes_markdown_png_and_json_that_round_trips(tmp_path: Path) -> None:
    over = _step(400, True, "overload", statuses={"sold": 180, "http_503": 220})
    result = _result(200, 300, over, half_ms=8.0)
    paths = write_report(result, tmp_path)
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = paths["report"].read_text()
    assert "| 10 buyers at 0 ms | 200 | 300 | 0.67 |" in text
    assert "![latency](latency.png)" in text and "2 CPU cores" in text
    assert "took 0.25 s of CPU at the start, 0.31 s at the end" in text
    again = BenchResult.from_json(json.loads(paths["results"].read_text()))
    assert again == result
    assert render_markdown(again) == text


async def test_fresh_stores_drop_the_database_and_only_their_own_keys(
    pg_admin_dsn: str, redis_url: str
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with fresh_stores(pg_admin_dsn, redis_url) as stores:
            other = stores.redis_prefix.replace("bench:", "bench-other:")
            await client.set(stores.redis_prefix + "k1", 1)
            await client.set(other + "k1", 1)
            conn = await asyncpg.connect(stores.database_url)
            await conn.close()  # the database exists while the block runs
        name = stores.database_url.rsplit("/", 1)[1]
        admin = await asyncpg.connect(pg_admin_dsn)
        try:
            exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        finally:
            await admin.close()
        assert exists is None
        assert await client.exists(stores.redis_prefix + "k1") == 0
        assert await client.exists(other + "k1") == 1
    finally:
        await client.delete(other + "k1")
        await client.aclose()


async def test_a_tiny_matrix_against_a_real_exchange_and_baseline(
    tmp_path: Path, pg_admin_dsn: str, redis_url: str
) -> None:
    opts = Options(
        cells=(Cell("tiny", 2),),
        workers=(1,),
        ladder=(20.0,),
        step_s=0.5,
        warm_up_s=0.5,
        settle_s=0.2,
        refine=0,
        confirm=0,
        quiet_wait_s=0.0,
        admin_dsn=pg_admin_dsn,
        redis_url=redis_url,
        out=tmp_path,
    )
    result = await run_bench(opts)
    (cell,) = result.cells
    assert [(s.server, s.error) for s in cell.searches] == [("baseline", None), ("exchange", None)]
    ex = cell.search("exchange", 1)
    assert ex is not None
    kinds = [s.kind for s in ex.steps]
    assert kinds == (["search", "half", "overload"] if ex.sustained else ["search"])
    first = ex.steps[0]
    assert first.summary["sent"] == 10
    assert set(first.summary["statuses"]) <= {"sold", "unsold", "http_503"}
    # Every lead pinged both buyers, signed, with no personal data in the ping.
    assert first.fleet["pings"] == 2 * first.summary["answered"]
    assert first.fleet["bad_signatures"] == 0 and first.fleet["pii_pings"] == 0
    assert first.cpu["server_s"] > 0
    assert ex.resources["rss_mb_start"] > 0
    text = write_report(result, tmp_path)["report"].read_text()
    assert "## 2 buyers at 0 ms" in text and "| exchange 1w | search | 20 |" in text


def test_profile_analysis_charges_each_sample_to_its_inner_most_owner() -> None:
    root = (
        "<module> (exchange/cli.py:6);run (uvicorn/main.py:632);Runner.run (asyncio/runners.py:118)"
    )
    route = f"{root};post_lead (exchange/api/publishers.py:61);submit_lead (exchange/intake/submit.py:69)"
    collapsed = "\n".join(
        [
            f"{route};_save (exchange/intake/submit.py:127);save_lead (exchange/store/leads.py:80);"
            "Connection.execute (asyncpg/connection.py:377) 6",
            f"{route};parse_lead (exchange/intake/validate.py:40);parse (phonenumbers/x.py:9) 2",
            f"{root};ResponseHandler.data_received (aiohttp/client_proto.py:359) 1",
            f"{root} 1",
        ]
    )
    found = analyze(collapsed, cpu_ms_per_lead=5.0)
    assert found["samples"] == 10
    areas = {r["name"]: (r["share"], r["ms_per_lead"]) for r in found["by_area"]}
    assert areas["Postgres (asyncpg, exchange/store)"] == (0.6, 3.0)
    assert areas["validation (parse_lead, phonenumbers)"] == (0.2, 1.0)
    assert areas["buyer HTTP (aiohttp client, transport)"] == (0.1, 0.5)
    assert areas["event loop and the rest (asyncio, uvloop)"] == (0.1, 0.5)
    owners = {r["name"]: r["share"] for r in found["by_owner"]}
    assert owners["save_lead (exchange/store/leads.py)"] == 0.6
    assert owners["(no exchange/ frame: aiohttp)"] == 0.1
    inclusive = {r["name"]: r["share"] for r in found["by_function"]}
    assert inclusive["submit_lead (exchange/intake/submit.py)"] == 0.8
    assert "<module> (exchange/cli.py)" not in inclusive  # the entry point owns nothing


def test_profile_cost_per_lead_counts_only_the_leads_the_worker_ran() -> None:
    # Overloaded, half the leads were refused 503 in microseconds: dividing the CPU by
    # the target rate would halve the cost of a lead (a run here said 4.3 ms, it was 7).
    collapsed = (
        "run (uvicorn/main.py:1);save_lead (exchange/store/leads.py:80) 3\n"
        "run (uvicorn/main.py:1) 1"
    )
    found = analyze(collapsed, cpu_ms_per_lead=2.0) | {"cpu_ms_per_lead": 2.0}
    load = {"target_rate": 100.0, "achieved_rate": 100.0, "sent": 1000, "refused_503": 500}
    scaled = per_lead_run(found, load)
    assert scaled["cpu_ms_per_lead"] == 4.0
    assert scaled["refused_share"] == 0.5
    areas = {r["name"]: r["ms_per_lead"] for r in scaled["by_area"]}
    assert areas["Postgres (asyncpg, exchange/store)"] == 3.0  # 75% of 4 ms
    assert found["by_area"][0]["ms_per_lead"] == 1.5  # the input is left as it was

    # Timeouts cost their share: only 503s are taken out; a lagging generator counts too.
    timeouts = {"target_rate": 100.0, "achieved_rate": 80.0, "sent": 800, "refused_503": 0}
    assert per_lead_run(found, timeouts)["cpu_ms_per_lead"] == 2.5
    assert per_lead_run(found, load | {"refused_503": 0})["cpu_ms_per_lead"] == 2.0
    every = per_lead_run(found, load | {"refused_503": 1000})
    assert every["cpu_ms_per_lead_unknown"] is True and every["refused_share"] == 1.0


def _samples(rss: list[float], fds: list[int]) -> list[dict[str, float]]:
    return [
        {"rss_mb": r, "fds": f, "tcp": f - 13, "store_tcp": 12, "time_wait": 60}
        for r, f in zip(rss, fds, strict=True)
    ]


def test_soak_tells_a_leak_from_a_pool_that_breathes_with_load() -> None:
    steady = [138.0] * 12
    idle = {"rss_mb": 138.0, "fds": 57, "tcp": 44, "store_tcp": 12}
    breathing = _samples(steady, [109, 72, 62, 62, 62, 62, 99, 121, 168, 120, 90, 101])
    assert is_flat(breathing, idle, idle)
    # Idle again after the run but with 26 fds more than idle before it: a leak, though
    # the last sample under load is below the first (the old rule compared those).
    assert not is_flat(breathing, idle, idle | {"fds": 83, "tcp": 70})
    assert is_flat(breathing, idle, idle | {"fds": 67, "tcp": 54})  # 10% + 10 is noise
    # Sockets leaked while fds stayed put (a leak counted on one of the two still fails).
    assert not is_flat(breathing, idle, idle | {"tcp": 80})
    # Store pools keep idle connections (asyncpg 300 s, redis-py for good): 30 more
    # sockets to Postgres and Redis after the run are the pools, not a leak.
    grown_pools = {"rss_mb": 138.0, "fds": 87, "tcp": 74, "store_tcp": 42}
    assert is_flat(breathing, idle, grown_pools)
    climbing = _samples(steady, [60, 70, 80, 90, 100, 110, 120, 130, 140, 150, 160, 170])
    assert not is_flat(climbing, idle, idle | {"fds": 170, "tcp": 157})  # kept it all
    # Given back at the end, but the floor climbed all along: still a leak.
    assert not is_flat(climbing, idle, idle)
    growing = _samples([100.0 + 5 * i for i in range(12)], [62] * 12)
    assert not is_flat(growing, idle, idle)


def test_the_soak_report_shows_idle_before_and_after_next_to_the_load() -> None:
    def at(fds: int, store: int = 10) -> dict[str, float]:
        return {
            "t_s": 0.0,
            "rss_mb": 140.0,
            "fds": fds,
            "tcp": fds - 13,
            "store_tcp": store,
            "time_wait": 7,
        }

    samples = [at(fds) for fds in (139, 301, 250, 180, 210, 200, 170, 165)]
    soak: dict[str, Any] = {
        "started": "2026-11-26 10:00:00 UTC",
        "command": "python -m loadtests.soak --minutes 10",
        "minutes": 10,
        "rate": 100.0,
        "workers": 1,
        "cell": "10 buyers at 0 ms + 1 hanging",
        "samples": samples,
        "start": samples[0],
        "end": samples[-1],
        "idle_before": at(41),
        "idle_after": at(49, store=16),
        "idle_s": 65.0,
        "max": at(301),
        "flat": is_flat(samples, at(41), at(49, store=16)),
        "load": {
            "sent": 60000,
            "statuses": {"sold": 60000},
            "answered_latency_ms": {"p50": 9.0, "p99": 30.0, "p99.9": 310.0, "max": 320.0},
        },
        "fleet": {"hangs": 12, "pings": 660000},
        "cpu": {"background": 0.01},
    }
    md = render_soak(soak)
    assert "**Flat: yes**" in md
    assert "| open fds | 41 | 139 | 165 | 301 | 49 |" in md
    assert "| of which to Postgres and Redis | 10 | 10 | 10 | 10 | 16 |" in md
    assert "after 65 s without load" in md
    result = _result(200, 300, _step(400, True, "overload"), half_ms=8.0)
    result.soak = soak
    report = render_markdown(result)
    assert "idle before → after, less store sockets: fds 31 → 33, sockets 18 → 20" in report
    assert "| open fds | 41 | 139 | 165 | 301 | 49 |" in report
    # A soak saved before idle samples existed still renders, with dashes for them.
    old = {k: v for k, v in soak.items() if not k.startswith("idle")}
    old["start"] = old["end"] = old["max"] = {k: 1 for k in ("rss_mb", "fds", "tcp", "time_wait")}
    result.soak = old
    report = render_markdown(result)
    assert "| open fds | – | 1 | 1 | 1 | – |" in report
    assert "RSS 1 → 1 MB, fds 1 → 1, sockets 1 → 1" in report


def test_the_speed_probe_measures_cpu_time_of_a_fixed_loop() -> None:
    small, large = speed_probe(loops=50_000, rounds=1), speed_probe(loops=1_000_000, rounds=1)
    assert 0 < small < large  # twenty times the work takes longer on any machine
