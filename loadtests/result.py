"""What one open-loop run measured: latencies from the intended send time, statuses, lag.

Histograms are HDR (microseconds, 3 significant digits), so the tail is exact enough to
compare p99.9 across runs and histograms from several generator processes add up.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
ANSWER_STATUSES = ("sold", "unsold", "duplicate", "rejected", "pending")
LAG_WARN_MS = 5.0  # a p99 send lag above this means the generator itself fell behind


def new_histogram() -> HdrHistogram:
    """1 µs to 10 min at 3 significant digits."""
    return HdrHistogram(1, 600_000_000, 3)


def _ms(hist: HdrHistogram, percentile: float | None) -> float:
    if hist.get_total_count() == 0:
        return 0.0
    us = hist.get_max_value() if percentile is None else hist.get_value_at_percentile(percentile)
    return round(int(us) / 1000, 3)


def latency_ms(hist: HdrHistogram) -> dict[str, float]:
    """``{"p50": …, "p90": …, "p99": …, "p99.9": …, "max": …}`` in milliseconds."""
    out = {f"p{p:g}": _ms(hist, p) for p in PERCENTILES}
    out["max"] = _ms(hist, None)
    return out


@dataclass
class LoadResult:
    """One run (or the sum of a run's generator processes).

    ``latency_us`` holds every request, errors and timeouts included, measured from its
    intended send time; ``ok_latency_us`` only those answered 200; ``send_lag_us`` how late
    the generator itself sent each one. ``timeline`` is ``(intended offset s, latency ms,
    status)`` per request, for plots of latency over time.
    """

    url: str
    target_rate: float
    duration_s: float
    buyer_max_ms: float | None = None
    sent: int = 0
    send_window_s: float = 0.0
    elapsed_s: float = 0.0
    payout_cents: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latency_us: HdrHistogram = field(default_factory=new_histogram)
    ok_latency_us: HdrHistogram = field(default_factory=new_histogram)
    send_lag_us: HdrHistogram = field(default_factory=new_histogram)
    timeline: list[tuple[float, float, str]] = field(default_factory=list)

    def record(self, offset_s: float, latency_s: float, lag_s: float, status: str) -> None:
        us = max(int(latency_s * 1_000_000), 1)
        self.latency_us.record_value(us)
        if status in ANSWER_STATUSES or status == "other_answer":
            self.ok_latency_us.record_value(us)
        self.send_lag_us.record_value(max(int(lag_s * 1_000_000), 1))
        self.statuses[status] += 1
        self.timeline.append((round(offset_s, 6), round(latency_s * 1000, 3), status))

    @property
    def completed(self) -> int:
        return sum(self.statuses.values())

    @property
    def answered(self) -> int:
        """Requests the exchange answered 200 with a lead status."""
        return int(self.ok_latency_us.get_total_count())

    @property
    def achieved_rate(self) -> float:
        """Sends per second over the send window; below target when the generator lagged."""
        return self.sent / self.send_window_s if self.send_window_s > 0 else 0.0

    @property
    def goodput(self) -> float:
        """Leads answered 200 per second of the send window."""
        return self.answered / self.send_window_s if self.send_window_s > 0 else 0.0

    def overhead_ms(self) -> dict[str, float] | None:
        """Answered latency minus the slowest in-time buyer: what the exchange itself adds."""
        if self.buyer_max_ms is None:
            return None
        return {
            k: round(v - self.buyer_max_ms, 3) for k, v in latency_ms(self.ok_latency_us).items()
        }

    def summary(self) -> dict[str, Any]:
        """A JSON-ready digest of the run."""
        lag = latency_ms(self.send_lag_us)
        return {
            "url": self.url,
            "target_rate": self.target_rate,
            "achieved_rate": round(self.achieved_rate, 2),
            "goodput": round(self.goodput, 2),
            "duration_s": self.duration_s,
            "sent": self.sent,
            "completed": self.completed,
            "answered": self.answered,
            "statuses": dict(sorted(self.statuses.items())),
            "refused_503": self.statuses.get("http_503", 0),
            "timeouts": self.statuses.get("timeout", 0),
            "payout": f"{self.payout_cents // 100}.{self.payout_cents % 100:02d}",
            "latency_ms": latency_ms(self.latency_us),
            "answered_latency_ms": latency_ms(self.ok_latency_us),
            "buyer_max_ms": self.buyer_max_ms,
            "overhead_ms": self.overhead_ms(),
            "send_lag_ms": lag,
            "generator_behind": lag["p99"] > LAG_WARN_MS,
        }

    def format(self) -> str:
        """A few human-readable lines."""
        s = self.summary()
        lines = [
            f"target {s['target_rate']:g}/s  achieved {s['achieved_rate']:g}/s  "
            f"goodput {s['goodput']:g}/s  sent {s['sent']}  answered {s['answered']}",
            "statuses  " + "  ".join(f"{k}={v}" for k, v in s["statuses"].items()),
            "latency ms (from intended send)  "
            + "  ".join(f"{k}={v:g}" for k, v in s["answered_latency_ms"].items()),
        ]
        if s["overhead_ms"] is not None:
            lines.append(
                f"overhead ms above slowest in-time buyer ({s['buyer_max_ms']:g} ms)  "
                + "  ".join(f"{k}={v:g}" for k, v in s["overhead_ms"].items())
            )
        lag = s["send_lag_ms"]
        warn = "  GENERATOR FELL BEHIND: add --processes" if s["generator_behind"] else ""
        lines.append(
            f"send lag ms  p50={lag['p50']:g}  p99={lag['p99']:g}  max={lag['max']:g}{warn}"
        )
        return "\n".join(lines)

    def merge(self, other: LoadResult) -> None:
        """Add another process's part of the same run into this one."""
        self.sent += other.sent
        self.send_window_s = max(self.send_window_s, other.send_window_s)
        self.elapsed_s = max(self.elapsed_s, other.elapsed_s)
        self.payout_cents += other.payout_cents
        self.statuses.update(other.statuses)
        self.latency_us.add(other.latency_us)
        self.ok_latency_us.add(other.ok_latency_us)
        self.send_lag_us.add(other.send_lag_us)
        self.timeline = sorted(self.timeline + other.timeline)

    def __getstate__(self) -> dict[str, Any]:
        # HDR histograms travel between processes in their compact encoded form.
        state = dict(self.__dict__)
        for name in ("latency_us", "ok_latency_us", "send_lag_us"):
            state[name] = state[name].encode()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name in ("latency_us", "ok_latency_us", "send_lag_us"):
            hist = new_histogram()
            hist.decode_and_add(state[name])
            state[name] = hist
        self.__dict__.update(state)
