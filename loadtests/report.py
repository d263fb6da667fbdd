"""The benchmark's markdown report and latency plot, from a :class:`BenchResult`.

Usage::

    paths = write_report(result, Path("loadtests/results/2026-11-26"))
    # report.md, latency.png, results.json

CLI (render again from a saved run, e.g. after a soak added ``soak.json``):
``python -m loadtests.report loadtests/results/2026-11-26``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server
import matplotlib.pyplot as plt

from loadtests.benchdata import (
    BenchResult,
    CellResult,
    Search,
    Step,
    targets,
)

PLOT_NAME = "latency.png"
REPORT_NAME = "report.md"
RESULTS_NAME = "results.json"
SOAK_NAME = "soak.json"
_COLORS = {
    ("exchange", 1): "C0",
    ("exchange", 2): "C1",
    ("baseline", 1): "C2",
    ("baseline", 2): "C3",
}


def write_report(result: BenchResult, out_dir: Path) -> dict[str, Path]:
    """Write ``results.json``, ``latency.png`` and ``report.md`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "results": out_dir / RESULTS_NAME,
        "plot": out_dir / PLOT_NAME,
        "report": out_dir / REPORT_NAME,
    }
    paths["results"].write_text(json.dumps(result.to_json(), indent=1), encoding="utf-8")
    plot_latency(result, paths["plot"])
    paths["report"].write_text(render_markdown(result, PLOT_NAME), encoding="utf-8")
    return paths


def render_markdown(result: BenchResult, plot_name: str = PLOT_NAME) -> str:
    lines = [
        f"# Exchange benchmark, {result.started}",
        "",
        f"Command: `{result.command}`",
        "",
        _machine_line(result),
        "",
        "## Headline: highest sustained rate (leads/s)",
        "",
        *_headline(result),
        "",
        "CPU per lead is steadier than throughput on a shared machine: server CPU ms per lead "
        "at the highest rate both servers passed (exchange / baseline; the exchange's "
        "Postgres backends and the shared Redis server separately):",
        "",
        *_cpu_table(result),
        "",
        "## Targets",
        "",
        *_targets(result),
        "",
        f"![latency]({plot_name})",
        "",
        "## How a rate is judged",
        "",
        *_method(result),
    ]
    if result.profile:
        lines += ["", *_profile(result.profile)]
    if result.soak:
        lines += ["", *_soak(result.soak)]
    for cell in result.cells:
        lines += ["", *_cell_section(cell)]
    notes = [*result.notes, *_code_notes(result)]
    if notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def _machine_line(result: BenchResult) -> str:
    m = result.machine
    return (
        f"Machine: **{m.get('cpus')} CPU cores** ({m.get('cpu_model', '?')}), "
        f"Python {m.get('python')}, commit `{m.get('commit', '?')}`. Exchange, buyer fleet, "
        "load generator, Postgres and Redis all share these cores; other engineers' test "
        "runs did too (the *background* column is the CPU share of processes not ours)."
    )


def _headline(result: BenchResult) -> list[str]:
    head = "| cell | exchange 1w | baseline 1w | ratio 1w | exchange 2w | baseline 2w | ratio 2w |"
    rows = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for cell in result.cells:
        parts = [cell.cell.label]
        for workers in (1, 2):
            ex, base = cell.search("exchange", workers), cell.search("baseline", workers)
            ratio = cell.ratio(workers)
            parts += [_rate(ex), _rate(base), "–" if ratio is None else f"{ratio:.2f}"]
        rows.append("| " + " | ".join(parts) + " |")
    return rows


def _cpu_table(result: BenchResult) -> list[str]:
    rows = [
        "| cell | workers | at rate | exchange | baseline | × | exchange's Postgres "
        "| Redis (shared) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in result.cells:
        for workers in sorted({s.workers for s in cell.searches}):
            ex, base = cell.search("exchange", workers), cell.search("baseline", workers)
            both = _ok_rates(ex) & _ok_rates(base)
            if ex is None or base is None or not both:
                continue
            rate = max(both)
            ex_cpu, base_cpu = _ok_step_at(ex, rate).cpu, _ok_step_at(base, rate).cpu
            ex_ms = ex_cpu.get("server_ms_per_lead", 0.0)
            base_ms = base_cpu.get("server_ms_per_lead", 0.0)
            times = f"{ex_ms / base_ms:.1f}" if base_ms else "–"
            rows.append(
                f"| {cell.cell.name} | {workers} | {rate:g} | {ex_ms:.2f} | {base_ms:.2f} "
                f"| {times} | {ex_cpu.get('db_ms_per_lead', 0.0):.2f} "
                f"| {ex_cpu.get('redis_ms_per_lead', 0.0):.2f} |"
            )
    return rows


def _ok_rates(search: Search | None) -> set[float]:
    if search is None:
        return set()
    return {s.rate for s in search.steps if s.kind == "search" and s.ok}


def _ok_step_at(search: Search, rate: float) -> Step:
    return next(s for s in search.steps if s.kind == "search" and s.rate == rate and s.ok)


def _rate(search: Search | None) -> str:
    if search is None:
        return "–"
    if search.error:
        return "error"
    return "< lowest" if search.sustained is None else f"{search.sustained:g}"


def _targets(result: BenchResult) -> list[str]:
    rows = ["| target | goal | measured | met |", "|---|---|---|---|"]
    for t in targets(result):
        met = {True: "yes", False: "**no**", None: "–"}[t.met]
        rows.append(f"| {t.name} | {t.goal} | {t.measured} | {met} |")
    return rows


def _method(result: BenchResult) -> list[str]:
    c, t = result.criteria, result.timing
    return [
        f"- Each step sends leads open-loop for {result.step_s:g} s at a fixed rate; latency "
        "counts from each lead's intended send time (HDR histogram).",
        f"- Rates climb the ladder {c.get('ladder')}, then bisect {c.get('refine')}× between "
        "the last sustained and the first failing rate; a failing step is measured once more "
        f"({c.get('confirm')}×) before it counts, because the machine is shared.",
        f"- *Sustained*: achieved ≥ {c.get('min_achieved_share'):.0%} of target, p99 < "
        f"deadline ({t.deadline_ms} ms), no errors (timeouts, connection errors, 5xx), no 503 "
        f"refusals, and ≥ {c.get('min_sold_share'):.0%} of answered leads sold (a lead answered "
        "unsold because the exchange could not hear its buyers in time is not sustained).",
        f"- Settings: tmax {t.tmax_ms} ms, post timeout {t.post_timeout_ms} ms, deadline "
        f"{t.deadline_ms} ms, max leads in flight {t.max_leads_in_flight} per worker; buyers "
        "bid 90% of the time, accept every post, at 0 ms post latency.",
        "- *Half*: the exchange at half its sustained rate (twice as long), for the overhead "
        "above the slowest in-time buyer. *Overload*: at twice the sustained rate.",
    ]


def _profile(profile: dict[str, Any]) -> list[str]:
    lines = [
        "## Profile of the exchange's hot path",
        "",
        f"py-spy, {profile.get('duration_s')} s at {profile.get('rate')} leads/s on the busiest "
        f"worker; {profile.get('cpu_ms_per_lead', 0):.2f} ms of CPU per lead. "
        f"Flame graph: `{profile.get('svg', '?')}`, collapsed stacks: `{profile.get('raw', '?')}`.",
        "",
        "| where (inner-most exchange/ frame) | share of CPU | ms per lead |",
        "|---|---:|---:|",
    ]
    for row in profile.get("by_owner", [])[:15]:
        lines.append(f"| `{row['name']}` | {row['share']:.1%} | {row['ms_per_lead']:.3f} |")
    lines += ["", "| library (leaf frame) | share of CPU |", "|---|---:|"]
    for row in profile.get("by_library", [])[:12]:
        lines.append(f"| {row['name']} | {row['share']:.1%} |")
    return lines


def _code_notes(result: BenchResult) -> list[str]:
    """Say so when the exchange's code changed between server starts of one run."""
    seen = [
        (cell.cell.name, s.label, s.resources["exchange_code"])
        for cell in result.cells
        for s in cell.searches
        if "exchange_code" in s.resources
    ]
    if len({code for _, _, code in seen}) <= 1:
        return []
    runs = ", ".join(f"{name} {label}: `{code}`" for name, label, code in seen)
    return [f"The exchange's code changed during the run (hash of exchange/*.py): {runs}."]


def _soak(soak: dict[str, Any]) -> list[str]:
    start, end = soak["start"], soak["end"]
    lat = soak["load"]["answered_latency_ms"]
    return [
        "## Soak with a hanging buyer",
        "",
        f"`{soak['command']}`: {soak['cell']}, {soak['rate']:g} leads/s for "
        f"{soak['minutes']:g} min, {soak['workers']} worker(s); flat: "
        f"**{'yes' if soak['flat'] else 'no'}**. See `soak.md` and `soak.png`.",
        "",
        "| | start | end | max |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {start[k]} | {end[k]} | {soak['max'][k]} |"
            for k, name in (
                ("rss_mb", "RSS MB"),
                ("fds", "open fds"),
                ("tcp", "TCP sockets"),
                ("time_wait", "TIME_WAIT to the fleet"),
            )
        ),
        "",
        f"Answered latency ms: p50 {lat['p50']:g}, p99 {lat['p99']:g}, p99.9 {lat['p99.9']:g}; "
        f"statuses {soak['load']['statuses']}.",
    ]


def _cell_section(cell: CellResult) -> list[str]:
    lines = [
        f"## {cell.cell.label}",
        "",
        f"Slowest in-time buyer: {cell.buyer_max_ms:g} ms (overhead = latency − that).",
        "",
        "| server | kind | target/s | achieved | goodput | p50 | p90 | p99 | p99.9 | max "
        "| errors | 503 | sold | lag p99 | CPU ms/lead | background | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for search in cell.searches:
        if search.error:
            lines.append(f"| {search.label} | – | | | | | | | | | | | | | | {search.error} |")
        for step in search.steps:
            lines.append(_step_row(search, step))
    for search in cell.searches:
        res = search.resources
        if res:
            lines.append(
                f"\n{search.label}: RSS {res.get('rss_mb_start')} → {res.get('rss_mb_end')} MB, "
                f"open fds {res.get('fds_start')} → {res.get('fds_end')}."
            )
    return lines


def _step_row(search: Search, step: Step) -> str:
    s = step.summary
    lat = s["answered_latency_ms"]
    errors = sum(v for k, v in s["statuses"].items() if k not in ("sold", "unsold", "http_503"))
    sold = s["statuses"].get("sold", 0) / s["answered"] if s["answered"] else 0.0
    verdict = "ok" if step.ok else "; ".join(step.failures)
    cells = [
        search.label,
        step.kind,
        f"{step.rate:g}",
        f"{s['achieved_rate']:g}",
        f"{s['goodput']:g}",
        *(f"{lat[k]:.1f}" for k in ("p50", "p90", "p99", "p99.9", "max")),
        str(errors),
        str(s["refused_503"]),
        f"{sold:.0%}",
        f"{s['send_lag_ms']['p99']:g}",
        f"{step.cpu.get('server_ms_per_lead', 0):.2f}",
        f"{step.cpu.get('background', 0):.0%}",
        verdict,
    ]
    return "| " + " | ".join(cells) + " |"


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
        steps = sorted((s for s in search.steps if s.kind == "search"), key=lambda s: s.rate)
        if not steps:
            continue
        color = _COLORS.get((search.server, search.workers), "C4")
        style = "-" if search.server == "exchange" else "--"
        rates = [s.rate for s in steps]
        p99 = [s.latency("p99", False) for s in steps]
        ax.plot(rates, p99, style, color=color, marker="o", label=f"{search.label} p99")
        ax.plot(rates, [s.latency("p50", False) for s in steps], style, color=color, alpha=0.35)
        failed = [s for s in steps if not s.ok]
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


def rerender(out_dir: Path) -> dict[str, Path]:
    """Render ``out_dir``'s saved results again, picking up a ``soak.json`` written since."""
    result = BenchResult.from_json(json.loads((out_dir / RESULTS_NAME).read_text("utf-8")))
    soak = out_dir / SOAK_NAME
    if soak.exists():
        result.soak = json.loads(soak.read_text("utf-8"))
    return write_report(result, out_dir)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m loadtests.report", description=__doc__)
    p.add_argument("dir", type=Path, help="a bench output dir holding results.json")
    for path in rerender(p.parse_args(argv).dir).values():
        print(path)


if __name__ == "__main__":
    main()
