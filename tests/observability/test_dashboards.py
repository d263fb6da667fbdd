"""The Grafana dashboards only query metrics and labels that the exchange really exports.

This catches typos in PromQL now; a later test runs the queries against a real Prometheus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import Counter, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.process_collector import ProcessCollector

from exchange.observability import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
# Labels Prometheus adds, and the worker pid the process metrics carry in multiprocess mode.
TARGET_LABELS = frozenset({"job", "instance"})
NAME = re.compile(r"\b((?:exchange|process)_[a-z0-9_]+)\b")
SELECTOR = re.compile(r"\b((?:exchange|process)_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
LABEL_VALUES = re.compile(r"label_values\(\s*([a-z0-9_]+)\s*,\s*([a-zA-Z0-9_]+)\s*\)")
LEGEND = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def exported_series() -> dict[str, frozenset[str]]:
    """Every series name the exchange exposes, with the labels each may carry."""
    series: dict[str, frozenset[str]] = {}
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        (family,) = value.describe()
        labels = frozenset(value._labelnames)
        if isinstance(value, Counter):
            series[family.name + "_total"] = labels
        elif isinstance(value, Histogram):
            series[family.name + "_bucket"] = labels | {"le"}
            series[family.name + "_sum"] = labels
            series[family.name + "_count"] = labels
        else:
            series[family.name] = labels
    for family in ProcessCollector(registry=None).collect():
        for sample in family.samples:
            series[sample.name] = frozenset({"pid"})
    return series


SERIES = exported_series()


def load(path: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return board


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels folded inside a row


def queries(board: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(where, expr, legend) for every panel target and every templating query."""
    for panel in panels(board):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"], target.get("legendFormat", "")
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("query")
        expr = query.get("query", "") if isinstance(query, dict) else str(query or "")
        yield f"${variable['name']}", expr, ""


def check_query(expr: str, legend: str) -> list[str]:
    """What is wrong with one query: unknown series, or labels its series do not have."""
    problems: list[str] = []
    names = NAME.findall(expr)
    if not names:
        problems.append("queries no exchange metric")
    unknown = [name for name in names if name not in SERIES]
    problems += [f"unknown series {name}" for name in unknown]
    known = [name for name in names if name in SERIES]
    allowed = TARGET_LABELS.union(*(SERIES[name] for name in known))
    for name, matchers in SELECTOR.findall(expr):
        if name in SERIES:
            extra = set(MATCHER_LABEL.findall(matchers)) - SERIES[name] - TARGET_LABELS
            problems += [f"{name} has no label {label}" for label in sorted(extra)]
    for group in GROUPING.findall(expr):
        used = {label.strip() for label in group.split(",") if label.strip()}
        problems += [f"grouping by unknown label {label}" for label in sorted(used - allowed)]
    for name, label in LABEL_VALUES.findall(expr):
        if label not in SERIES.get(name, frozenset()):
            problems.append(f"label_values of unknown label {label}")
    return problems + [
        f"legend uses unknown label {label}"
        for label in LEGEND.findall(legend)
        if label not in allowed
    ]


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboard_is_well_formed(path: Path) -> None:
    board = load(path)
    assert board["uid"].startswith("exchange-") and board["title"]
    assert 36 <= board["schemaVersion"] <= 41
    found = list(panels(board))
    ids = [panel["id"] for panel in found]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"
    for panel in found:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_every_query_uses_exported_metrics_and_labels(path: Path) -> None:
    problems = [
        f"{path.name} / {where}: {problem}"
        for where, expr, legend in queries(load(path))
        for problem in check_query(expr, legend)
    ]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_typos() -> None:
    assert check_query("sum(rate(exchange_leads_totl[1m]))", "")
    assert check_query('sum(rate(exchange_leads_total{vertcal="x"}[1m]))', "")
    assert check_query("sum by (buyer_id) (rate(exchange_pings_total[1m]))", "")
    assert check_query("sum(rate(exchange_pings_total[1m]))", "{{campaign}}")
    assert check_query("label_values(exchange_pings_total, buyer_id)", "")
    assert not check_query(
        'sum by (buyer, le) (rate(exchange_ping_latency_seconds_bucket{buyer=~"$buyer"}[5m]))',
        "{{buyer}}",
    )


def test_the_three_dashboards_cover_what_operators_need() -> None:
    by_stem = {path.stem: load(path) for path in DASHBOARDS}
    assert set(by_stem) == {"overview", "buyers", "infrastructure"}
    used = {
        stem: " ".join(expr for _, expr, _ in queries(board)) for stem, board in by_stem.items()
    }
    for name in ("exchange_leads_total", "exchange_lead_duration_seconds_bucket"):
        assert name in used["overview"]
    for name in ("exchange_pings_total", "exchange_posts_total", "exchange_ping_latency_seconds"):
        assert name in used["buyers"]
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "exchange_db_pool"):
        assert name in used["infrastructure"]


def test_provisioning_points_at_the_dashboards_and_prometheus() -> None:
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["uid"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "exchange.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    path = providers["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in mounts
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    (job,) = scrape["scrape_configs"]
    assert job["job_name"] == "exchange"  # the dashboards select job="exchange"
    assert job["static_configs"][0]["targets"] == ["exchange:8000"]
