"""Profile a running exchange worker with py-spy and name what its CPU goes to.

Two recordings of ``seconds`` each while load runs: a flame graph (``profile.svg``) for
people, and collapsed stacks (``profile.txt``) that :func:`analyze` turns into tables:
CPU share by the inner-most ``exchange/`` frame of each sample (who in our code caused
it), inclusive share per ``exchange/`` function (the hot path), and by library of the leaf
frame. Samples are taken only while the worker holds the GIL (``--gil``), so waiting in
epoll is not counted; shares are of the worker's busy time.

Usage::

    found = await profile_during(pid, 20, Path("out"), leads_per_s=150)
    found["by_owner"][0]   # {"name": "post_lead (exchange/api/publishers.py)", "share": …}

CLI (an exchange already under load): ``python -m loadtests.profile --pid PID --seconds 20
--leads-per-s 150 --out DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
TOP = 25
# Where a sample's CPU belongs: the area of its inner-most frame that has one.
_REDIS = ("redis/", "exchange/intake/guard.py", "exchange/routing/caps.py")
_HTTP_SERVER = ("uvicorn/", "fastapi/", "starlette/", "httptools/", "exchange/api/")
AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Postgres (asyncpg, exchange/store)", ("asyncpg/", "exchange/store/")),
    ("Redis (redis-py, guard, caps, weights)", (*_REDIS, "exchange/routing/weights.py")),
    ("metrics (prometheus_client, observability)", ("prometheus_client/", "exchange/obs")),
    ("buyer HTTP (aiohttp client, transport)", ("aiohttp/", "exchange/transport/")),
    ("validation (parse_lead, phonenumbers)", ("exchange/intake/validate.py", "phonenumbers/")),
    ("publisher rate limiter (limits)", ("limits/",)),
    (
        "auction logic (auction, routing, signing)",
        ("exchange/auction/", "exchange/routing/", "exchange/buyers/"),
    ),
    ("HTTP server and route (uvicorn, FastAPI, exchange/api)", _HTTP_SERVER),
    ("other exchange code (intake orchestration…)", ("exchange/",)),
)
# Frames every sample has (the process's entry points): they say nothing about the cost.
_ROOTS = frozenset(
    {"exchange/cli.py", "uvicorn/main.py", "uvicorn/server.py", "uvicorn/_compat.py"}
)


def py_spy() -> str:
    """The py-spy next to this Python (the venv's), else the one on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    found = str(local) if local.exists() else shutil.which("py-spy")
    if found is None:
        raise FileNotFoundError("py-spy is not installed: pip install py-spy")
    return found


async def record(pid: int, seconds: float, out: Path, fmt: str) -> None:
    """``py-spy record`` of ``pid`` for ``seconds`` into ``out`` (``flamegraph`` or ``raw``)."""
    argv = [py_spy(), "record", "--pid", str(pid), "--duration", str(max(int(seconds), 1))]
    argv += ["--rate", "100", "--gil", "--nonblocking", "--format", fmt, "--output", str(out)]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed ({proc.returncode}): {err.decode()[-500:]}")


async def profile_during(
    pid: int, seconds: float, out_dir: Path, leads_per_s: float = 0.0
) -> dict[str, Any]:
    """Flame graph, then collapsed stacks with the worker's CPU time; the analysis."""
    out_dir.mkdir(parents=True, exist_ok=True)
    svg, raw = out_dir / "profile.svg", out_dir / "profile.txt"
    try:
        await record(pid, seconds, svg, "flamegraph")
        worker = psutil.Process(pid)
        before = sum(worker.cpu_times()[:2])
        await record(pid, seconds, raw, "raw")
        cpu_s = sum(worker.cpu_times()[:2]) - before
    except (OSError, RuntimeError, psutil.Error) as exc:
        return {"error": f"py-spy could not profile pid {pid}: {exc}"}
    leads = leads_per_s * seconds
    cpu_ms_per_lead = cpu_s * 1000 / leads if leads else 0.0
    found = analyze(raw.read_text(encoding="utf-8"), cpu_ms_per_lead)
    return {
        **found,
        "pid": pid,
        "duration_s": seconds,
        "cpu_share_of_core": round(cpu_s / seconds, 3),
        "cpu_ms_per_lead": round(cpu_ms_per_lead, 3),
        "svg": str(svg),
        "raw": str(raw),
    }


def per_lead_run(found: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """``found`` with its ms-per-lead figures over the leads the server actually ran.

    :func:`profile_during` divides the worker's CPU by the *target* rate. A lead refused
    at once (503) costs microseconds and a lagging generator sent fewer, so both make a
    lead look cheaper than it is: rescale to the leads sent minus the 503s. Timeouts and
    errors stay counted, since those leads may have cost their full share."""
    sent, refused = int(summary.get("sent", 0)), int(summary.get("refused_503", 0))
    target_rate = float(summary.get("target_rate", 0))
    achieved = float(summary.get("achieved_rate", 0))
    if "error" in found or sent <= 0 or target_rate <= 0:
        return found
    ran_rate = achieved * (sent - refused) / sent
    out = dict(found)
    out["refused_share"] = round(refused / sent, 4)
    if ran_rate <= 0:
        out["cpu_ms_per_lead_unknown"] = True  # nothing ran: no cost per lead to tell
        return out
    scale = target_rate / ran_rate
    if abs(scale - 1) < 1e-9:
        return out
    out["cpu_ms_per_lead"] = round(found.get("cpu_ms_per_lead", 0.0) * scale, 3)
    for key in ("by_area", "by_owner", "by_function", "by_library"):
        out[key] = [
            {**row, "ms_per_lead": round(row["ms_per_lead"] * scale, 4)}
            for row in found.get(key, [])
        ]
    return out


def parse_frame(frame: str) -> tuple[str, str]:
    """``"func (pkg/mod.py:12)"`` → ``("func", "pkg/mod.py")``."""
    m = _FRAME.match(frame.strip())
    return (m["func"], m["file"]) if m else (frame.strip(), "")


def library(file: str) -> str:
    """The top-level package of a py-spy file path (``asyncpg/pool.py`` → ``asyncpg``)."""
    if not file:
        return "(native)"
    head = file.split("/", 1)[0]
    return head.removesuffix(".py")


def area_of(frames: Sequence[tuple[str, str]]) -> str:
    """The :data:`AREAS` entry of the inner-most frame that has one (else the event loop)."""
    for _, file in reversed(frames):
        if file in _ROOTS:
            continue
        for area, prefixes in AREAS:
            if file.startswith(prefixes):
                return area
    return "event loop and the rest (asyncio, uvloop)"


def _is_ours(file: str) -> bool:
    # cli.py only starts uvicorn: every sample has it, so it would own the server's own work.
    return file.startswith("exchange/") and file != "exchange/cli.py"


def analyze(collapsed: str, cpu_ms_per_lead: float = 0.0) -> dict[str, Any]:
    """Shares of samples by owner (inner-most exchange/ frame), by exchange/ function
    (inclusive) and by leaf library, each with ms of CPU per lead when that is known."""
    owner: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    libs: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [parse_frame(f) for f in stack.split(";")]
        ours = [f"{func} ({file})" for func, file in frames if _is_ours(file)]
        leaf_lib = library(frames[-1][1])
        owner[ours[-1] if ours else f"(no exchange/ frame: {leaf_lib})"] += n
        for name in set(ours):
            inclusive[name] += n
        libs[leaf_lib] += n
        areas[area_of(frames)] += n

    def table(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "share": round(n / total, 4),
                "ms_per_lead": round(n / total * cpu_ms_per_lead, 4),
            }
            for name, n in counter.most_common(TOP)
        ]

    if total == 0:
        return {"samples": 0, "by_area": [], "by_owner": [], "by_function": [], "by_library": []}
    return {
        "samples": total,
        "by_area": table(areas),
        "by_owner": table(owner),
        "by_function": table(inclusive),
        "by_library": table(libs),
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m loadtests.profile", description=__doc__)
    p.add_argument("--pid", type=int, required=True, help="an exchange worker under load")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--leads-per-s", type=float, default=0.0, help="that worker's lead rate")
    p.add_argument("--out", type=Path, default=Path("."))
    args = p.parse_args(argv)
    found = asyncio.run(profile_during(args.pid, args.seconds, args.out, args.leads_per_s))
    print(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
