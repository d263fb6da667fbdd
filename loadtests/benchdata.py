"""What a benchmark run found: steps, rate searches, matrix cells, and the issue's targets.

Plain dataclasses that round-trip through JSON (``results.json``), so a report can be
rendered again, or compared with an older run, without re-measuring.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from loadtests.stack import Cell, Timing

# The targets (see loadtests/README.md).
RATIO_MIN, RATIO_AIM = 0.5, 0.8
OVERHEAD_P99_MAX_MS = 10.0
HANG_MARGIN_MS = 20.0
OVERLOAD_GOODPUT_MIN = 0.8
ERROR_STATUSES_OK = frozenset({"sold", "unsold", "pending"})


@dataclass
class Step:
    """One open-loop run at one rate. ``failures`` empty means the rate was sustained."""

    rate: float
    summary: dict[str, Any]  # loadtests.result.LoadResult.summary()
    failures: list[str] = field(default_factory=list)
    kind: str = "search"  # search | half | overload | profile
    cpu: dict[str, float] = field(default_factory=dict)  # busy / ours / background shares
    fleet: dict[str, Any] = field(default_factory=dict)  # the fleet's totals for the step
    percentiles: list[tuple[float, float]] = field(default_factory=list)  # (pct, ms) answered

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def goodput(self) -> float:
        return float(self.summary.get("goodput", 0.0))

    @property
    def sold_rate(self) -> float:
        """Leads sold per second: a lead answered unsold because its pings timed out is
        answered, but it is not the work the exchange exists for."""
        sent = self.summary.get("sent", 0)
        sold = self.summary["statuses"].get("sold", 0)
        return sold * float(self.summary["achieved_rate"]) / sent if sent else 0.0

    def latency(self, key: str, answered: bool = True) -> float:
        table = self.summary["answered_latency_ms" if answered else "latency_ms"]
        return float(table[key])


@dataclass
class Search:
    """One server (exchange or baseline) on N workers: its rate search and extra steps."""

    server: str
    workers: int
    steps: list[Step] = field(default_factory=list)
    sustained: float | None = None
    resources: dict[str, Any] = field(default_factory=dict)  # RSS / fds at start and end
    error: str | None = None  # the server could not be started or measured

    @property
    def label(self) -> str:
        return f"{self.server} {self.workers}w"

    def extra(self, kind: str) -> Step | None:
        return next((s for s in self.steps if s.kind == kind), None)

    @property
    def peak_sold_rate(self) -> float:
        return max((s.sold_rate for s in self.steps if s.kind == "search" and s.ok), default=0.0)


@dataclass
class CellResult:
    cell: Cell
    buyer_max_ms: float
    searches: list[Search] = field(default_factory=list)

    def search(self, server: str, workers: int) -> Search | None:
        return next((s for s in self.searches if s.server == server and s.workers == workers), None)

    def ratio(self, workers: int) -> float | None:
        """The exchange's sustained rate as a share of the baseline's, same cell and workers."""
        ex, base = self.search("exchange", workers), self.search("baseline", workers)
        if ex is None or base is None or not base.sustained:
            return None
        return (ex.sustained or 0.0) / base.sustained


@dataclass
class BenchResult:
    started: str
    command: str
    machine: dict[str, Any]
    timing: Timing
    step_s: float
    criteria: dict[str, Any]
    cells: list[CellResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: dict[str, Any] | None = None
    soak: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> BenchResult:
        cells = [
            CellResult(
                Cell(**c["cell"]),
                c["buyer_max_ms"],
                [
                    Search(
                        **{k: v for k, v in s.items() if k != "steps"},
                        steps=[_step(st) for st in s["steps"]],
                    )
                    for s in c["searches"]
                ],
            )
            for c in doc["cells"]
        ]
        rest = {k: v for k, v in doc.items() if k not in ("cells", "timing")}
        return cls(**rest, timing=Timing(**doc["timing"]), cells=cells)


def _step(doc: dict[str, Any]) -> Step:
    pcts = [(float(p), float(ms)) for p, ms in doc.get("percentiles", [])]
    return Step(**{**doc, "percentiles": pcts})


@dataclass(frozen=True)
class Target:
    """One line of the targets table: what was asked, what was measured, met or not."""

    name: str
    goal: str
    measured: str
    met: bool | None  # None: not measured in this run


def targets(result: BenchResult) -> list[Target]:
    """The issue's targets, judged on this run (the soak's only when it ran)."""
    rows: list[Target] = []
    for cell in result.cells:
        for workers in sorted({s.workers for s in cell.searches}):
            rows += _cell_targets(result, cell, workers)
    if result.soak is not None:
        flat = bool(result.soak.get("flat"))
        rows.append(Target("soak: RSS, fds, sockets", "flat over the run", _soak(result), flat))
    return rows


def _cell_targets(result: BenchResult, cell: CellResult, workers: int) -> list[Target]:
    rows: list[Target] = []
    where = f"{cell.cell.name}, {workers}w"
    ratio = cell.ratio(workers)
    if ratio is not None and cell.cell.name == result.cells[0].cell.name:
        goal = f"≥ {RATIO_MIN} × baseline (aim {RATIO_AIM})"
        rows.append(Target(f"throughput {where}", goal, f"{ratio:.2f}", ratio >= RATIO_MIN))
    ex = cell.search("exchange", workers)
    if ex is None:
        return rows
    half = ex.extra("half")
    if half is not None and not cell.cell.hang:
        p99 = half.latency("p99") - cell.buyer_max_ms
        goal = f"p99 overhead ≤ {OVERHEAD_P99_MAX_MS:g} ms at half rate"
        met = p99 <= OVERHEAD_P99_MAX_MS and half.ok
        measured = f"{p99:.1f} ms" + _baseline_near(cell, workers, half.rate)
        rows.append(Target(f"overhead {where}", goal, measured, met))
    if half is not None and cell.cell.hang:
        bound = result.timing.tmax_ms + float(result.criteria.get("post_ms", 0)) + HANG_MARGIN_MS
        p999 = half.latency("p99.9", answered=False)
        goal = f"p99.9 ≤ {bound:g} ms (tmax + post + {HANG_MARGIN_MS:g})"
        rows.append(Target(f"hanging buyer {where}", goal, f"{p999:.1f} ms", p999 <= bound))
    over = ex.extra("overload")
    if over is not None:
        rows.append(_overload_target(result, where, ex, over))
    return rows


def _baseline_near(cell: CellResult, workers: int, rate: float) -> str:
    """The bare baseline's p99 overhead at the passing rate it ran nearest to ``rate``: what
    this machine allows a fan-out with no stores at all, for reading the exchange's figure."""
    base = cell.search("baseline", workers)
    steps = [s for s in base.steps if s.ok and s.kind == "search"] if base else []
    if not steps:
        return ""
    near = min(steps, key=lambda s: (abs(s.rate - rate), s.rate))
    p99 = near.latency("p99") - cell.buyer_max_ms
    return f" (bare baseline at {near.rate:g}/s: {p99:.1f} ms)"


def _overload_target(result: BenchResult, where: str, ex: Search, over: Step) -> Target:
    peak = ex.peak_sold_rate
    share = over.sold_rate / peak if peak else 0.0
    p99 = over.latency("p99")
    queued = {k: v for k, v in over.summary["statuses"].items() if k not in _REFUSAL_OK}
    # Refused, not queued: no timeouts or dropped connections, only answers and 503s.
    met = share >= OVERLOAD_GOODPUT_MIN and p99 < result.timing.deadline_ms and not queued
    measured = f"sold/s {share:.0%} of peak, answered p99 {p99:.0f} ms"
    measured += f", {over.summary['refused_503']} × 503"
    if queued:
        measured += ", other failures " + ", ".join(f"{k}={v}" for k, v in queued.items())
    goal = (
        f"at 2× sustained: goodput (sold/s) ≥ {OVERLOAD_GOODPUT_MIN:.0%} of peak, answered p99 < "
        "deadline, excess refused (503) not timed out"
    )
    return Target(f"overload {where}", goal, measured, met)


_REFUSAL_OK = ERROR_STATUSES_OK | {"http_503"}


def own(sample: dict[str, Any], key: str) -> float:
    """A soak sample's fds or TCP sockets less those the store pools hold."""
    value: float = sample[key] - sample.get("store_tcp", 0)
    return value


def _soak(result: BenchResult) -> str:
    soak = result.soak or {}
    start, end = soak.get("start", {}), soak.get("end", {})
    under_load = (
        f"RSS {start.get('rss_mb', '?')} → {end.get('rss_mb', '?')} MB, "
        f"fds {start.get('fds', '?')} → {end.get('fds', '?')}, "
        f"sockets {start.get('tcp', '?')} → {end.get('tcp', '?')}"
    )
    before, after = soak.get("idle_before"), soak.get("idle_after")
    if before is None or after is None:  # a soak from before idle samples were taken
        return under_load
    return (
        f"under load {under_load}; idle before → after, less store sockets: fds "
        f"{own(before, 'fds')} → {own(after, 'fds')}, sockets {own(before, 'tcp')} → "
        f"{own(after, 'tcp')}"
    )
