"""Campaign schedules and the campaign-local periods that caps count in, DST included.

Schedules are wall-clock rules: "08:00-20:00 mon-fri in America/Los_Angeles" means whatever
the clocks on the wall say there, so a window that falls in the spring-forward gap is shorter
that day and one that covers the repeated fall-back hour is longer.

Cap periods are the campaign's local hour, day, ISO week and month. A local day lasts 23, 24
or 25 hours; the hour key carries the UTC offset, so the repeated fall-back hour counts as two
hours ("2026-11-01T01-0700", then "2026-11-01T01-0800").

    >>> from datetime import UTC, datetime
    >>> period_keys("America/New_York", datetime(2026, 11, 26, 19, 5, tzinfo=UTC)).day
    '2026-11-26'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo

from exchange.catalog.models import WEEKDAYS, Schedule, Weekday

Period = Literal["hour", "day", "week", "month"]
PERIODS: tuple[Period, ...] = ("hour", "day", "week", "month")

_HOUR = timedelta(hours=1)
_SECOND = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class PeriodKeys:
    """The campaign-local periods containing one instant, named for counter keys."""

    hour: str
    day: str
    week: str
    month: str
    hour_seconds_left: int
    day_seconds_left: int
    week_seconds_left: int
    month_seconds_left: int

    def key(self, period: Period) -> str:
        """The period's identifier, e.g. "2026-W48" for "week"."""
        name: str = getattr(self, period)
        return name

    def seconds_left(self, period: Period) -> int:
        """Whole seconds until the period ends, rounded up and at least 1 (a Redis TTL)."""
        left: int = getattr(self, f"{period}_seconds_left")
        return left


def is_open(schedule: Schedule | None, now: datetime) -> bool:
    """Whether the campaign takes leads at ``now`` (tz-aware); no schedule means always."""
    if schedule is None:
        return True
    zone, weekdays, start, end = _plan(schedule.tz, schedule.days, schedule.hours)
    local = _utc(now).astimezone(zone)
    if local.weekday() not in weekdays:
        return False
    minute = local.hour * 60 + local.minute
    return start <= minute < end


def period_keys(tz: str, now: datetime) -> PeriodKeys:
    """The hour/day/week/month keys for ``now`` in zone ``tz`` and the seconds each has left."""
    keys, bounds = _periods(tz, now)
    left = [_seconds_until(end, _utc(now)) for _, end in bounds]
    return PeriodKeys(*keys, *left)


def period_bounds(tz: str, now: datetime, period: Period) -> tuple[datetime, datetime]:
    """[start, end) in UTC of the ``period`` containing ``now``, to rebuild counters from SQL."""
    _, bounds = _periods(tz, now)
    return bounds[PERIODS.index(period)]


# --- internals ---------------------------------------------------------------------------

_Bounds = tuple[datetime, datetime]


@lru_cache(maxsize=1024)
def _plan(
    tz: str, days: tuple[Weekday, ...], hours: str
) -> tuple[ZoneInfo, frozenset[int], int, int]:
    """A schedule as (zone, weekday numbers, start minute, end minute), parsed once."""
    start, end = Schedule(tz=tz, days=days, hours=hours).window_minutes
    return ZoneInfo(tz), frozenset(WEEKDAYS.index(d) for d in days), start, end


def _periods(tz: str, now: datetime) -> tuple[tuple[str, str, str, str], tuple[_Bounds, ...]]:
    local = _utc(now).astimezone(ZoneInfo(tz))
    hour_start = local.replace(minute=0, second=0, microsecond=0, tzinfo=None, fold=0)
    offset = local.utcoffset()
    assert offset is not None
    # Every instant of one local hour (same offset) shares the answer: compute it once.
    return _hour_periods(tz, hour_start, offset)


@lru_cache(maxsize=4096)
def _hour_periods(
    tz: str, hour_start: datetime, offset: timedelta
) -> tuple[tuple[str, str, str, str], tuple[_Bounds, ...]]:
    zone = ZoneInfo(tz)
    day = hour_start.date()
    iso = day.isocalendar()
    monday = day - timedelta(days=day.weekday())
    first = day.replace(day=1)
    next_month = (first + timedelta(days=32)).replace(day=1)
    keys = (
        hour_start.strftime("%Y-%m-%dT%H") + _offset_text(offset),
        day.isoformat(),
        f"{iso.year}-W{iso.week:02d}",
        f"{day.year}-{day.month:02d}",
    )
    bounds = (
        _hour_bounds(zone, hour_start, offset),
        (_midnight(zone, day), _midnight(zone, day + timedelta(days=1))),
        (_midnight(zone, monday), _midnight(zone, monday + timedelta(days=7))),
        (_midnight(zone, first), _midnight(zone, next_month)),
    )
    return keys, bounds


def _midnight(zone: ZoneInfo, day: date) -> datetime:
    """The first instant of a local date, in UTC.

    fold=0 picks the earlier of a repeated midnight and, for a midnight skipped by a DST gap,
    the offset from before the gap, which lands exactly on the instant the gap begins.
    """
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def _hour_bounds(zone: ZoneInfo, hour_start: datetime, offset: timedelta) -> _Bounds:
    """The instants whose wall clock reads this hour at this UTC offset.

    That is [wall start, +1 h) at the fixed offset, cut where the zone leaves the offset;
    the cut only happens in zones whose offsets change off the hour (none in the US).
    """
    start = (hour_start - offset).replace(tzinfo=UTC)
    end = start + _HOUR
    starts_inside = _offset_at(zone, start) == offset
    ends_inside = _offset_at(zone, end - _SECOND) == offset
    if starts_inside and not ends_inside:
        end = _first_change(zone, start, end, offset)
    elif ends_inside and not starts_inside:
        start = _first_change(zone, start, end, _offset_at(zone, start))
    return start, end


def _first_change(zone: ZoneInfo, low: datetime, high: datetime, offset: timedelta) -> datetime:
    """The first whole second in (low, high] where the zone's offset is no longer ``offset``."""
    lo, hi = 0, int((high - low).total_seconds())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset_at(zone, low + timedelta(seconds=mid)) == offset:
            lo = mid
        else:
            hi = mid
    return low + timedelta(seconds=hi)


def _offset_at(zone: ZoneInfo, instant: datetime) -> timedelta:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None  # a ZoneInfo always knows its offset at an aware instant
    return offset


def _offset_text(offset: timedelta) -> str:
    """ "-0700" style, with seconds only for the odd historical offset that has them."""
    total = int(offset.total_seconds())
    sign = "-" if total < 0 else "+"
    hours, rest = divmod(abs(total), 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{sign}{hours:02d}{minutes:02d}" + (f"{seconds:02d}" if seconds else "")


def _seconds_until(end: datetime, now: datetime) -> int:
    return max(1, math.ceil((end - now).total_seconds()))


def _utc(now: datetime) -> datetime:
    """``now`` in UTC; a naive datetime is a caller's bug (whose clock would it be?)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"a time-zone-aware datetime is required, got {now!r}")
    return now.astimezone(UTC)
