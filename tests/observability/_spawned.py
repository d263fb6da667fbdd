"""Code run in spawned worker processes by the multiprocess tests (kept import-light)."""

from __future__ import annotations

from multiprocessing.synchronize import Event


def record_leads(sold: int, unsold: int, in_flight: int, ready: Event, stop: Event) -> None:
    """Act as one worker: record known amounts, then stay alive until told to stop."""
    from exchange.observability import metrics

    metrics.LEADS.labels(vertical="auto_insurance", status="sold").inc(sold)
    metrics.LEADS.labels(vertical="auto_insurance", status="unsold").inc(unsold)
    metrics.REVENUE.labels(vertical="auto_insurance", buyer="acme").inc(1250 * sold)
    metrics.LEADS_IN_FLIGHT.set(in_flight)
    for _ in range(sold):
        metrics.LEAD_DURATION.labels(vertical="auto_insurance", status="sold").observe(0.12)
    ready.set()
    stop.wait(30)
