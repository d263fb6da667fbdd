"""Every Prometheus metric of the exchange, and the one way to render them.

Names start ``exchange_``, carry their base unit, counters end ``_total``; label values are
bounded (buyer, vertical, campaign, outcome, status, route template), never a lead id.

With ``exchange serve --workers N`` each worker is its own process: ``serve`` calls
:func:`prepare_multiprocess_dir` before the workers start, every worker then writes its
values to memory-mapped files there, and :func:`render_metrics` sums them, so one scrape
of any worker reports the whole server. Process metrics (``process_cpu_seconds_total``,
``process_resident_memory_bytes``, ...) cannot be summed from files, so in that mode they
come from ``/proc`` of every live worker, one series per ``pid`` label; dashboards use
``sum(rate(process_cpu_seconds_total[...]))``, which is right in both modes.

Usage::

    LEADS.labels(vertical="auto_insurance", status="sold").inc()
    body, content_type = render_metrics()
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from exchange import __version__
from exchange.observability.multiproc import MULTIPROC_ENV as MULTIPROC_ENV
from exchange.observability.multiproc import (
    prepare_multiprocess_dir as prepare_multiprocess_dir,
)

# Some prometheus_client helpers are untyped; these are their real signatures.
_disable_created_metrics: Callable[[], None] = disable_created_metrics
_mark_process_dead: Callable[[int, str], None] = multiprocess.mark_process_dead
_MultiProcessCollector: Callable[[CollectorRegistry, str], Collector] = (
    multiprocess.MultiProcessCollector
)

# ``*_created`` series double the output, and multiprocess mode never has them anyway.
_disable_created_metrics()

# Around the deadlines (tmax ~0.3 s, a post ~2 s, the publisher's answer ~5 s) and below
# them: a Redis claim takes ~0.3 ms and a whole lead with prompt buyers ~3 ms, which a first
# bucket of 5 ms would report as anything from 0 to 5 (histogram_quantile interpolates).
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
)

# --- HTTP (recorded by exchange.observability.http.PrometheusMiddleware) -----------------
HTTP_REQUESTS = Counter(
    "exchange_http_requests_total",
    "HTTP requests answered, by route template, method and status code.",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "exchange_http_request_duration_seconds",
    "Time from request arrival to the last byte of the answer.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)

# --- Leads ------------------------------------------------------------------------------
LEADS = Counter(
    "exchange_leads_total",
    "Leads answered, by vertical and final status (sold, unsold, duplicate, rejected, pending).",
    ["vertical", "status"],
)
LEAD_DURATION = Histogram(
    "exchange_lead_duration_seconds",
    "End to end time of one lead, counted from its arrival.",
    ["vertical", "status"],
    buckets=LATENCY_BUCKETS,
)
AUCTION_DURATION = Histogram(
    "exchange_auction_duration_seconds",
    "Duration of the ping phase of one lead.",
    ["vertical"],
    buckets=LATENCY_BUCKETS,
)
LEADS_IN_FLIGHT = Gauge(
    "exchange_leads_in_flight",
    "Leads being processed right now (summed over live workers).",
    multiprocess_mode="livesum",
)
ADMISSION_CAP = Gauge(
    "exchange_admission_cap",
    "Leads the workers admit at once (summed over live workers): max_leads_in_flight each, "
    "less while buyers' answers are read too late (adaptive cap).",
    multiprocess_mode="livesum",
)
ADMISSION_CUTS = Counter(
    "exchange_admission_cuts_total",
    "Times a loaded worker cut its admission cap because most of a lead's usually prompt "
    "buyers answered far later than usual, or not at all.",
)
LEADS_REFUSED = Counter(
    "exchange_leads_refused_total",
    "Leads refused before any work, by reason (overload, rate_limited).",
    ["reason"],
)
DEADLINE = Gauge(
    "exchange_deadline_seconds",
    "Configured time budgets (kind: tmax, post_timeout, lead), drawn next to the latencies.",
    ["kind"],
    multiprocess_mode="mostrecent",
)

# --- Buyers -----------------------------------------------------------------------------
PINGS = Counter(
    "exchange_pings_total",
    "Campaign pings by buyer and outcome (bid, no_bid, timeout, error, below_floor, ...), "
    "including campaigns not pinged and why (filtered, schedule, capped, throttled, ...).",
    ["buyer", "outcome"],
)
PING_LATENCY = Histogram(
    "exchange_ping_latency_seconds",
    "Time for a buyer to answer a ping (timeouts observed at the timeout).",
    ["buyer"],
    buckets=LATENCY_BUCKETS,
)
POST_LATENCY = Histogram(
    "exchange_post_latency_seconds",
    "Time for a buyer to answer a post (failures observed when they failed).",
    ["buyer"],
    buckets=LATENCY_BUCKETS,
)
POSTS = Counter(
    "exchange_posts_total",
    "Posts by buyer and outcome (accepted, rejected, failed, unknown).",
    ["buyer", "outcome"],
)
CAP_USAGE = Gauge(
    "exchange_campaign_cap_usage_ratio",
    "Used share of a campaign cap or budget (period: hourly, daily, monthly, daily_budget).",
    ["campaign", "period"],
    multiprocess_mode="mostrecent",
)
THROTTLED = Gauge(
    "exchange_buyer_throttled",
    "1 while a buyer is throttled for failing pings (in any live worker), else 0.",
    ["buyer"],
    multiprocess_mode="livemax",
)

# --- Money, integer cents ---------------------------------------------------------------
REVENUE = Counter(
    "exchange_revenue_cents_total",
    "What buyers paid for leads, in US cents.",
    ["vertical", "buyer"],
)
PAYOUT = Counter(
    "exchange_publisher_payout_cents_total",
    "What publishers earned, in US cents.",
    ["vertical"],
)
MARGIN = Counter(
    "exchange_margin_cents_total",
    "Revenue minus publisher payout, in US cents.",
    ["vertical"],
)

# --- Infrastructure ---------------------------------------------------------------------
DB_POOL = Gauge(
    "exchange_db_pool_connections",
    "Postgres pool connections by state (in_use, idle, max), summed over live workers.",
    ["state"],
    multiprocess_mode="livesum",
)
REDIS_ERRORS = Counter(
    "exchange_redis_errors_total",
    "Redis calls that failed, by operation.",
    ["op"],
)
LEADS_UNRECORDED = Counter(
    "exchange_leads_unrecorded_total",
    "Leads a buyer may hold whose record could not be saved (held, logged at ERROR to "
    "settle by hand); alert on any.",
    ["vertical"],
)
STORE_DURATION = Histogram(
    "exchange_store_duration_seconds",
    "Store calls of the lead path by store and op: Redis claim (with the dedupe for a "
    "lead with ids), dedupe (a lead without ids) and finish (a held lead's answer, after "
    "it), Postgres backstop, save and repeat (a repeat reading the first answer; with the "
    "wait for a pool connection).",
    ["store", "op"],
    buckets=LATENCY_BUCKETS,
)
LOOP_LAG = Histogram(
    "exchange_event_loop_lag_seconds",
    "How late the event loop ran a timer; high values mean a blocked or saturated loop.",
    buckets=LATENCY_BUCKETS,
)
BUILD_INFO = Gauge(
    "exchange_build_info",
    "Always 1; labels name the running version.",
    ["version", "python"],
    multiprocess_mode="max",
)
BUILD_INFO.labels(version=__version__, python=platform.python_version()).set(1)


class PoolStats(Protocol):
    """What :func:`sample_db_pool` reads; an ``asyncpg.Pool`` has it."""

    def get_size(self) -> int: ...
    def get_idle_size(self) -> int: ...
    def get_max_size(self) -> int: ...


def sample_db_pool(pool: PoolStats) -> None:
    """Copy the pool's connection counts into ``DB_POOL`` (run it periodically)."""
    size, idle = pool.get_size(), pool.get_idle_size()
    DB_POOL.labels(state="in_use").set(size - idle)
    DB_POOL.labels(state="idle").set(idle)
    DB_POOL.labels(state="max").set(pool.get_max_size())


def record_deadlines(*, tmax_ms: int, post_timeout_ms: int, deadline_ms: int) -> None:
    """Publish the configured budgets so dashboards draw them next to the latencies."""
    DEADLINE.labels(kind="tmax").set(tmax_ms / 1000)
    DEADLINE.labels(kind="post_timeout").set(post_timeout_ms / 1000)
    DEADLINE.labels(kind="lead").set(deadline_ms / 1000)


def multiprocess_dir() -> Path | None:
    """The shared metrics directory when running as one of several workers, else None."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (in flight, pool, throttled); counters stay."""
    directory = multiprocess_dir()
    if directory is not None:
        _mark_process_dead(pid, str(directory))


def _pids_with_files(directory: Path) -> set[int]:
    """Every process that ever wrote a value here (files are named ``<kind>_<pid>.db``)."""
    pids: set[int] = set()
    for file in directory.glob("*.db"):
        tail = file.stem.rsplit("_", 1)[-1]
        if tail.isdigit():
            pids.add(int(tail))
    return pids


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited child its parent has not reaped yet still answers kill(0)
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return stat.rsplit(b")", 1)[-1].split()[0] not in (b"Z", b"X")


def _reap_dead_workers(directory: Path) -> None:
    """Mark every worker whose files remain but whose process is gone as dead.

    uvicorn restarts crashed workers without telling us, so each scrape does it.
    """
    for pid in _pids_with_files(directory):
        if not _is_alive(pid):
            _mark_process_dead(pid, str(directory))


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid


class WorkerProcessCollector(Collector):
    """``process_*`` metrics (CPU, RSS, fds) of every live worker, one series per ``pid``.

    In multiprocess mode the stock process collector would report only the worker that
    happens to answer the scrape; per-pid series let ``sum(rate(...))`` cover them all.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def collect(self) -> list[Metric]:
        merged: dict[str, Metric] = {}
        for pid in sorted(_pids_with_files(self._directory)):
            if not _is_alive(pid):
                continue
            one = ProcessCollector(pid=_constant(pid), registry=None)
            for family in one.collect():
                out = merged.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for sample in family.samples:
                    out.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        return list(merged.values())


def render_metrics() -> tuple[bytes, str]:
    """The exposition body and its content type, summed over workers when there are several."""
    directory = multiprocess_dir()
    if directory is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    _reap_dead_workers(directory)
    # A fresh registry per scrape, as prometheus-client advises for multiprocess mode.
    registry = CollectorRegistry()
    _MultiProcessCollector(registry, str(directory))
    registry.register(WorkerProcessCollector(directory))
    return generate_latest(registry), CONTENT_TYPE_LATEST
