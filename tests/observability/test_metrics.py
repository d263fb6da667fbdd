"""The metric definitions follow our conventions and sum correctly over worker processes."""

from __future__ import annotations

import multiprocessing
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from exchange.observability import metrics
from tests.observability._spawned import record_leads

METRICS_SOURCE = Path(metrics.__file__).read_text(encoding="utf-8")
FORBIDDEN_LABEL = re.compile(r"lead|sub_?id|phone|email|name|address|ip$|ping_id|bid_id")
UNIT_SUFFIXES = ("_seconds", "_cents_total", "_bytes", "_ratio", "_total", "_info")


def all_metrics() -> dict[str, MetricWrapperBase]:
    return {
        attr: value for attr, value in vars(metrics).items() if isinstance(value, MetricWrapperBase)
    }


def samples(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition body, keyed by name and label set."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_every_metric_follows_the_naming_conventions() -> None:
    found = all_metrics()
    assert len(found) >= 20
    for attr, metric in found.items():
        (family,) = metric.describe()
        assert family.name.startswith("exchange_"), attr
        assert family.documentation.strip(), attr
        labels = metric._labelnames
        assert not [label for label in labels if FORBIDDEN_LABEL.search(label)], attr
        if family.type == "counter":
            # prometheus-client strips "_total" from the family; the source must spell it.
            assert re.search(rf'\(\s*"{family.name}_total"', METRICS_SOURCE), attr
        else:
            assert not family.name.endswith("_total"), attr
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), attr
        if family.type in ("counter", "histogram"):
            exposed = family.name + ("_total" if family.type == "counter" else "")
            assert exposed.endswith(UNIT_SUFFIXES), attr


def test_counters_are_spelled_with_total_and_nothing_else_is() -> None:
    counters = re.findall(r'Counter\(\s*"([a-z_]+)"', METRICS_SOURCE)
    others = re.findall(r'(?:Gauge|Histogram)\(\s*"([a-z_]+)"', METRICS_SOURCE)
    assert len(counters) >= 9 and len(others) >= 10
    assert all(name.endswith("_total") for name in counters)
    assert not any(name.endswith("_total") for name in others)


def test_histograms_use_the_deadline_buckets() -> None:
    histograms = [m for m in all_metrics().values() if isinstance(m, Histogram)]
    assert len(histograms) == 7  # every one is checked below
    for histogram in histograms:
        assert histogram._upper_bounds[:-1] == list(metrics.LATENCY_BUCKETS)
    assert metrics.LATENCY_BUCKETS[0] == 0.0005 and metrics.LATENCY_BUCKETS[-1] == 5.0


def test_store_and_lead_times_are_told_apart_below_five_ms() -> None:
    # A Redis claim (~0.3 ms), a slow one (~2 ms) and a prompt lead (~4 ms) must land in
    # different buckets, or Grafana's quantiles are guesses inside the first one.
    child = metrics.STORE_DURATION.labels(store="redis", op="bucket-probe")
    for seconds in (0.0003, 0.002, 0.004):
        child.observe(seconds)
    bounds = (*metrics.LATENCY_BUCKETS, float("inf"))
    per_bucket = dict(zip(bounds, (b.get() for b in child._buckets), strict=True))
    assert [per_bucket[le] for le in (0.0005, 0.001, 0.0025, 0.005, 0.01)] == [1, 0, 1, 1, 0]


def test_single_process_render_shows_recorded_values() -> None:
    child = metrics.PINGS.labels(buyer="acme", outcome="timeout")
    before = child._value.get()
    child.inc(3)
    body, content_type = metrics.render_metrics()
    assert content_type.startswith("text/plain")
    got = samples(body)
    key = ("exchange_pings_total", frozenset({("buyer", "acme"), ("outcome", "timeout")}))
    assert got[key] == before + 3
    assert ("process_resident_memory_bytes", frozenset()) in got
    assert not any(name.endswith("_created") for name, _ in got)


def test_sample_db_pool_and_deadlines_set_gauges() -> None:
    class Pool:
        def get_size(self) -> int:
            return 7

        def get_idle_size(self) -> int:
            return 2

        def get_max_size(self) -> int:
            return 20

    metrics.sample_db_pool(Pool())
    metrics.record_deadlines(tmax_ms=300, post_timeout_ms=2000, deadline_ms=5000)
    got = samples(metrics.render_metrics()[0])
    pool = {
        dict(labels)["state"]: v for (n, labels), v in got.items() if n.endswith("pool_connections")
    }
    assert pool == {"in_use": 5.0, "idle": 2.0, "max": 20.0}
    assert got[("exchange_deadline_seconds", frozenset({("kind", "tmax")}))] == 0.3


@pytest.fixture
def multiproc_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A metrics directory exported to spawned children; the variable is undone afterwards."""
    directory = tmp_path / "prom"
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(directory))
    metrics.prepare_multiprocess_dir(directory)
    yield directory


def test_prepare_multiprocess_dir_wipes_stale_files(multiproc_dir: Path) -> None:
    stale = multiproc_dir / "counter_999999.db"
    stale.write_bytes(b"stale")
    unrelated = multiproc_dir / "notes.txt"
    unrelated.write_text("not ours")
    metrics.prepare_multiprocess_dir(multiproc_dir)
    assert [p.name for p in multiproc_dir.iterdir()] == ["notes.txt"]
    assert os.environ[metrics.MULTIPROC_ENV] == str(multiproc_dir)


def test_two_worker_processes_sum_exactly(multiproc_dir: Path) -> None:
    ctx = multiprocessing.get_context("spawn")  # like uvicorn: a fresh interpreter per worker
    stop = ctx.Event()
    plan = [(3, 2, 4), (4, 5, 6)]
    readies = [ctx.Event() for _ in plan]
    workers = [
        ctx.Process(target=record_leads, args=(*amounts, ready, stop))
        for amounts, ready in zip(plan, readies, strict=True)
    ]
    for worker in workers:
        worker.start()
    try:
        assert all(ready.wait(30) for ready in readies)
        live = samples(metrics.render_metrics()[0])
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
    assert all(worker.exitcode == 0 for worker in workers)

    sold = ("exchange_leads_total", frozenset({("vertical", "auto_insurance"), ("status", "sold")}))
    unsold = (sold[0], frozenset({("vertical", "auto_insurance"), ("status", "unsold")}))
    revenue = (
        "exchange_revenue_cents_total",
        frozenset({("vertical", "auto_insurance"), ("buyer", "acme")}),
    )
    duration = (
        "exchange_lead_duration_seconds_count",
        frozenset({("vertical", "auto_insurance"), ("status", "sold")}),
    )
    in_flight: tuple[str, frozenset[tuple[str, str]]] = ("exchange_leads_in_flight", frozenset())
    assert live[sold] == 7 and live[unsold] == 7
    assert live[revenue] == 1250 * 7
    assert live[duration] == 7
    assert live[in_flight] == 10  # livesum over the two live workers
    pids = {str(worker.pid) for worker in workers}
    rss_pids = {
        dict(labels).get("pid") for (name, labels) in live if name.endswith("resident_memory_bytes")
    }
    assert pids <= rss_pids

    # Once the workers are gone their counters stay, their live gauges and processes do not.
    after = samples(metrics.render_metrics()[0])
    assert after[sold] == 7 and after[revenue] == 1250 * 7
    assert after.get(in_flight, 0.0) == 0.0
    assert not any(name.startswith("process_") for name, _ in after)


def test_mark_worker_dead_drops_only_live_gauges(multiproc_dir: Path) -> None:
    (multiproc_dir / "gauge_livesum_424242.db").write_bytes(b"")
    (multiproc_dir / "counter_424242.db").write_bytes(b"")
    metrics.mark_worker_dead(424242)
    assert [p.name for p in multiproc_dir.iterdir()] == ["counter_424242.db"]
