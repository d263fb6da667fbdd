"""The benchmark's latency plot: p99 (and p50) against the offered rate for each cell, and
the exchange's answered latency by percentile at half its sustained rate.

Usage::

    plot_latency(result, Path("latency.png"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server
import matplotlib.pyplot as plt

from loadtests.benchdata import BenchResult, CellResult

_COLORS = {
    ("exchange", 1): "C0",
    ("exchange", 2): "C1",
    ("baseline", 1): "C2",
    ("baseline", 2): "C3",
}


def plot_latency(result: BenchResult, path: Path) -> None:
    """Per cell: p99 (and p50) against the offered rate; below, the half-rate percentiles."""
    cells = result.cells or []
    fig, axes = plt.subplots(2, max(len(cells), 1), figsize=(4.2 * max(len(cells), 1), 7.5))
    grid = axes.reshape(2, -1)
    for col, cell in enumerate(cells):
        _plot_rates(grid[0][col], cell, result.timing.deadline_ms)
        _plot_percentiles(grid[1][col], cell)
    fig.suptitle(f"latency from intended send, {result.machine.get('cpus')} cores, shared")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_rates(ax: Any, cell: CellResult, deadline_ms: int) -> None:
    for search in cell.searches:
        measured = [s for s in search.steps if s.kind == "search"]
        if not measured:
            continue
        # The line goes through the step that decided each rate (the last one measured).
        steps = sorted({s.rate: s for s in measured}.values(), key=lambda s: s.rate)
        color = _COLORS.get((search.server, search.workers), "C4")
        style = "-" if search.server == "exchange" else "--"
        rates = [s.rate for s in steps]
        p99 = [s.latency("p99", False) for s in steps]
        ax.plot(rates, p99, style, color=color, marker="o", label=f"{search.label} p99")
        ax.plot(rates, [s.latency("p50", False) for s in steps], style, color=color, alpha=0.35)
        failed = [s for s in measured if not s.ok]
        failed_p99 = [s.latency("p99", False) for s in failed]
        ax.scatter([s.rate for s in failed], failed_p99, marker="x", color="k", zorder=3)
    ax.axhline(deadline_ms, color="r", linewidth=0.8, label="deadline")
    ax.set_yscale("log")
    ax.set_title(cell.cell.label, fontsize=9)
    ax.set_xlabel("offered leads/s (x = not sustained)")
    ax.set_ylabel("ms (p99 bold, p50 faint)")
    ax.legend(fontsize=6)


def _plot_percentiles(ax: Any, cell: CellResult) -> None:
    for search in cell.searches:
        half = search.extra("half")
        if half is None or not half.percentiles:
            continue
        color = _COLORS.get((search.server, search.workers), "C4")
        xs = [1 / (1 - p / 100) for p, _ in half.percentiles]
        label = f"{search.label} at {half.rate:g}/s"
        ax.plot(xs, [ms for _, ms in half.percentiles], color=color, label=label)
    if cell.buyer_max_ms:
        ax.axhline(cell.buyer_max_ms, color="grey", linewidth=0.8, label="slowest buyer")
    ax.set_xscale("log")
    ax.set_xticks([1, 10, 100, 1000], ["0%", "90%", "99%", "99.9%"])
    ax.set_title("answered latency by percentile, half rate", fontsize=9)
    ax.set_ylabel("ms")
    ax.legend(fontsize=6)
