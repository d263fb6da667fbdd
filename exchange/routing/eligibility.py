"""Which campaigns of a vertical may be pinged for a lead, and a named reason for the rest.

Everything here is in memory except the cap pre-check, one Redis round trip for all
campaigns of the lead. The pre-check only spares pointless pings; the exact cap test is
the reservation made before a post.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from exchange.auction.types import Reason
from exchange.catalog import Target
from exchange.intake.lead import Lead
from exchange.routing.filters import filter_failure
from exchange.routing.schedule import is_open


@dataclass(frozen=True, slots=True)
class Excluded:
    target: Target
    reason: Reason
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Eligibility:
    eligible: tuple[Target, ...]
    excluded: tuple[Excluded, ...]


def screen(
    targets: Sequence[Target], lead: Lead, now: datetime, paused: Collection[str]
) -> Eligibility:
    """Apply pause, filters and schedules: the checks that need no I/O."""
    eligible: list[Target] = []
    excluded: list[Excluded] = []
    for target in targets:
        campaign = target.campaign
        if campaign.paused or campaign.id in paused:
            excluded.append(Excluded(target, Reason.PAUSED))
            continue
        failure = filter_failure(campaign.filters, lead.state, lead.zip5, lead.profile)
        if failure is not None:
            excluded.append(Excluded(target, Reason.FILTERED, failure))
            continue
        if not is_open(campaign.schedule, now):
            excluded.append(Excluded(target, Reason.SCHEDULE, "outside its schedule"))
            continue
        eligible.append(target)
    return Eligibility(tuple(eligible), tuple(excluded))
