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

from loadtests.benchdata import (
    BenchResult,
    CellResult,
    Search,
    Step,
    targets,
)
from loadtests.plots import plot_latency
from loadtests.profile import analyze

PLOT_NAME = "latency.png"
REPORT_NAME = "report.md"
RESULTS_NAME = "results.json"
SOAK_NAME = "soak.json"
KNEE_MS = 100.0


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
        f"The *knee*: the highest rate that passed with p99 ≤ the slowest in-time buyer (tmax "
        f"with a hanging one) + {KNEE_MS:g} ms, from the same steps; the sustained rates above "
        "allow p99 up to the deadline:",
        "",
        *_knee_table(result),
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
        "runs did too (the *background* column is the CPU share of processes not ours)." + _speed(m)
    )


def _speed(m: dict[str, Any]) -> str:
    start, end = m.get("speed_probe_s"), m.get("speed_probe_s_end")
    if start is None:
        return ""
    ends = f", {end} s at the end" if end is not None else ""
    return (
        f" Machine speed: a fixed pure-Python loop (`bench.speed_probe`) took {start} s of CPU "
        f"at the start{ends}; lower is faster, and figures from two reports compare only as "
        "far as these do."
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


def _knee_table(result: BenchResult) -> list[str]:
    rows = ["| cell | exchange 1w | baseline 1w | exchange 2w | baseline 2w |"]
    rows.append("|---|---:|---:|---:|---:|")
    for cell in result.cells:
        parts = [cell.cell.label]
        # A hanging buyer holds every lead it is pinged for until tmax.
        slowest = float(result.timing.tmax_ms) if cell.cell.hang else cell.buyer_max_ms
        for workers in (1, 2):
            for server in ("exchange", "baseline"):
                search = cell.search(server, workers)
                parts.append("–" if search is None else _knee(search, slowest))
        rows.append("| " + " | ".join(parts) + " |")
    return rows


def _knee(search: Search, buyer_max_ms: float) -> str:
    bound = buyer_max_ms + KNEE_MS
    rates = [
        s.rate
        for s in search.steps
        if s.kind == "search" and s.ok and s.latency("p99", answered=False) <= bound
    ]
    return f"{max(rates):g}" if rates else "–"


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


def _refused(profile: dict[str, Any]) -> str:
    share = float(profile.get("refused_share", 0.0))
    if profile.get("cpu_ms_per_lead_unknown"):
        return " (unknown: every lead sent was refused 503)"
    return f" it ran ({share:.0%} of the leads sent were refused 503)" if share else ""


def _profile(profile: dict[str, Any]) -> list[str]:
    if "error" in profile:
        return ["## Profile of the exchange's hot path", "", str(profile["error"])]
    svg, raw = (Path(str(profile.get(k, "?"))).name for k in ("svg", "raw"))
    lines = [
        "## Profile of the exchange's hot path",
        "",
        f"py-spy (`--gil`: CPU only), {profile.get('duration_s')} s at {profile.get('rate')} "
        f"leads/s on the busiest worker; {profile.get('cpu_ms_per_lead', 0):.2f} ms of that "
        f"worker's CPU per lead{_refused(profile)}. Flame graph `{svg}`, collapsed stacks "
        f"`{raw}` (next to this "
        "report). Ping and post tasks are asyncio tasks of their own, so their cost shows "
        "under `_ping_one`/`Transport.post`, not under `sell`.",
        "",
        "| area (of the inner-most frame that has one) | share of CPU | ms per lead |",
        "|---|---:|---:|",
    ]
    for row in profile.get("by_area", []):
        lines.append(f"| {row['name']} | {row['share']:.1%} | {row['ms_per_lead']:.3f} |")
    lines += [
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
    none: dict[str, Any] = {}
    before, after = soak.get("idle_before", none), soak.get("idle_after", none)
    lat = soak["load"]["answered_latency_ms"]
    return [
        "## Soak with a hanging buyer",
        "",
        f"`{soak['command']}`: {soak['cell']}, {soak['rate']:g} leads/s for "
        f"{soak['minutes']:g} min, {soak['workers']} worker(s); flat: "
        f"**{'yes' if soak['flat'] else 'no'}**. See `soak.md` and `soak.png`; *idle* is "
        "the exchange with no load, once its connections to buyers and from publishers have "
        "expired (the Postgres and Redis pools keep theirs).",
        "",
        "| | idle before | start | end | max | idle after |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {name} | {before.get(k, '–')} | {start.get(k, '–')} | {end.get(k, '–')} "
            f"| {soak['max'].get(k, '–')} | {after.get(k, '–')} |"
            for k, name in (
                ("rss_mb", "RSS MB"),
                ("fds", "open fds"),
                ("tcp", "TCP sockets"),
                ("store_tcp", "of which to Postgres and Redis"),
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


def rerender(out_dir: Path) -> dict[str, Path]:
    """Render ``out_dir``'s saved results again, picking up a ``soak.json`` written since."""
    result = BenchResult.from_json(json.loads((out_dir / RESULTS_NAME).read_text("utf-8")))
    raw = out_dir / "profile.txt"
    if result.profile and "error" not in result.profile and raw.exists():
        # Analyse the stacks again: the tables may have grown since the run.
        per_lead = float(result.profile.get("cpu_ms_per_lead", 0.0))
        result.profile |= analyze(raw.read_text("utf-8"), per_lead)
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
