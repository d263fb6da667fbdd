"""Schedules and cap periods in campaign-local time, across the US DST changes of 2026.

2026 changes: spring forward Sunday March 8 (02:00 -> 03:00 local), fall back Sunday
November 1 (02:00 -> 01:00 local). Los Angeles is UTC-8/-7, New York UTC-5/-4.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.catalog.models import Schedule
from exchange.routing.schedule import PERIODS, Period, is_open, period_bounds, period_keys

LA = "America/Los_Angeles"
NY = "America/New_York"


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    """A UTC instant; hours past 23 roll into the next day, which keeps offset sums readable."""
    start = datetime(year, month, day, tzinfo=UTC)
    return start + timedelta(hours=hour, minutes=minute, seconds=second, microseconds=us)


def sched(**spec: Any) -> Schedule:
    return Schedule.model_validate(spec)


# --- is_open ------------------------------------------------------------------------------


def test_no_schedule_is_always_open() -> None:
    assert is_open(None, utc(2026, 3, 8, 10, 0))


def test_days_and_window_edges() -> None:
    s = sched(tz=LA, days=["mon", "tue", "wed", "thu", "fri"], hours="08:00-20:00")
    # Thursday 2026-11-26 in LA (UTC-8): 08:00 local is 16:00 UTC.
    assert not is_open(s, utc(2026, 11, 26, 15, 59, 59))
    assert is_open(s, utc(2026, 11, 26, 16, 0))  # start inclusive
    assert is_open(s, utc(2026, 11, 27, 3, 59, 59))  # 19:59:59 local
    assert not is_open(s, utc(2026, 11, 27, 4, 0))  # end exclusive
    # Saturday 2026-11-28, noon local.
    assert not is_open(s, utc(2026, 11, 28, 20, 0))


def test_local_day_not_utc_day() -> None:
    # Friday 19:00 in LA is already Saturday in UTC; a fri-only schedule is open.
    s = sched(tz=LA, days=["fri"], hours="18:00-20:00")
    assert is_open(s, utc(2026, 11, 28, 3, 0))
    assert not is_open(sched(tz=LA, days=["sat"], hours="18:00-20:00"), utc(2026, 11, 28, 3, 0))


def test_all_day_window() -> None:
    s = sched(tz=NY, days=["sun"], hours="00:00-24:00")
    assert is_open(s, utc(2026, 11, 29, 5, 0))  # Sunday 00:00 EST
    assert is_open(s, utc(2026, 11, 30, 4, 59, 59))  # Sunday 23:59:59 EST
    assert not is_open(s, utc(2026, 11, 30, 5, 0))  # Monday


def test_non_utc_aware_now_is_converted() -> None:
    s = sched(tz=NY, hours="09:00-10:00")
    tokyo = datetime(2026, 11, 26, 23, 30, tzinfo=ZoneInfo("Asia/Tokyo"))  # 09:30 in NY
    assert is_open(s, tokyo)


def test_naive_now_is_a_bug() -> None:
    with pytest.raises(ValueError):
        is_open(sched(tz=NY), datetime(2026, 11, 26, 12, 0))
    with pytest.raises(ValueError):
        period_keys(NY, datetime(2026, 11, 26, 12, 0))


@pytest.mark.parametrize(("tz", "offset_before"), [(LA, 8), (NY, 5)])
def test_spring_forward_window_in_the_gap(tz: str, offset_before: int) -> None:
    s = sched(tz=tz, hours="01:30-02:30")
    jump = utc(2026, 3, 8, 2 + offset_before)  # 02:00 standard time, the moment of the jump
    assert not is_open(s, jump - timedelta(minutes=31))  # 01:29
    assert is_open(s, jump - timedelta(minutes=30))  # 01:30
    assert is_open(s, jump - timedelta(seconds=1))  # 01:59:59
    assert not is_open(s, jump)  # now 03:00: 02:00-02:30 never happened
    assert not is_open(s, jump + timedelta(minutes=20))


@pytest.mark.parametrize(("tz", "std"), [(LA, 8), (NY, 5)])
def test_business_hours_on_both_sides_of_spring_forward(tz: str, std: int) -> None:
    s = sched(tz=tz, hours="08:00-20:00")
    dst = std - 1
    # Saturday before: standard time; Monday after: daylight time.
    assert is_open(s, utc(2026, 3, 7, 8 + std))
    assert not is_open(s, utc(2026, 3, 7, 8 + std) - timedelta(seconds=1))
    assert is_open(s, utc(2026, 3, 9, 8 + dst))
    assert not is_open(s, utc(2026, 3, 9, 8 + dst) - timedelta(seconds=1))
    # The change day itself opens at 08:00 daylight time, an hour earlier in UTC.
    assert is_open(s, utc(2026, 3, 8, 8 + dst))
    assert not is_open(s, utc(2026, 3, 8, 20 + dst))
    assert is_open(s, utc(2026, 3, 8, 20 + dst) - timedelta(seconds=1))


@pytest.mark.parametrize(("tz", "std"), [(LA, 8), (NY, 5)])
def test_business_hours_on_both_sides_of_fall_back(tz: str, std: int) -> None:
    s = sched(tz=tz, hours="08:00-20:00")
    dst = std - 1
    assert is_open(s, utc(2026, 10, 31, 8 + dst))
    assert not is_open(s, utc(2026, 10, 31, 8 + dst) - timedelta(seconds=1))
    # November 1 is on standard time from 02:00 on.
    assert is_open(s, utc(2026, 11, 1, 8 + std))
    assert not is_open(s, utc(2026, 11, 1, 8 + dst))  # 07:00 standard
    assert not is_open(s, utc(2026, 11, 1, 20 + std))


@pytest.mark.parametrize(("tz", "dst"), [(LA, 7), (NY, 4)])
def test_repeated_fall_back_hour_is_open_twice(tz: str, dst: int) -> None:
    s = sched(tz=tz, hours="01:00-02:00")
    first = utc(2026, 11, 1, 1 + dst)  # 01:00 daylight time
    assert not is_open(s, first - timedelta(seconds=1))
    assert is_open(s, first)
    assert is_open(s, first + timedelta(minutes=59))  # 01:59 daylight
    assert is_open(s, first + timedelta(hours=1))  # 01:00 again, standard time
    assert is_open(s, first + timedelta(hours=1, minutes=59))
    assert not is_open(s, first + timedelta(hours=2))  # 02:00 standard


# --- period keys --------------------------------------------------------------------------


def test_keys_on_an_ordinary_afternoon() -> None:
    keys = period_keys(LA, utc(2026, 11, 26, 22, 15))  # Thursday 14:15 PST
    assert keys.hour == "2026-11-26T14-0800"
    assert keys.day == "2026-11-26"
    assert keys.week == "2026-W48"
    assert keys.month == "2026-11"
    assert keys.hour_seconds_left == 45 * 60
    assert keys.day_seconds_left == (9 * 60 + 45) * 60
    assert keys.week_seconds_left == keys.day_seconds_left + 3 * 86400  # to Monday 00:00
    assert keys.month_seconds_left == keys.day_seconds_left + 4 * 86400
    assert keys.key("week") == keys.week
    assert keys.seconds_left("hour") == keys.hour_seconds_left


def test_keys_use_local_date_not_utc_date() -> None:
    keys = period_keys(LA, utc(2026, 12, 1, 5, 0))  # still 21:00 Nov 30 in LA
    assert keys.day == "2026-11-30"
    assert keys.month == "2026-11"
    assert period_keys("UTC", utc(2026, 12, 1, 5, 0)).month == "2026-12"


def test_iso_week_across_the_new_year() -> None:
    # 2026-12-31 is a Thursday of ISO week 53; 2027-01-01 (Friday) still belongs to it.
    assert period_keys("UTC", utc(2026, 12, 31, 12)).week == "2026-W53"
    assert period_keys("UTC", utc(2027, 1, 1, 12)).week == "2026-W53"
    assert period_keys("UTC", utc(2027, 1, 4, 12)).week == "2027-W01"


def test_seconds_left_rounds_up_and_is_never_zero() -> None:
    keys = period_keys("UTC", utc(2026, 11, 26, 14, 59, 59) + timedelta(microseconds=999_999))
    assert keys.hour_seconds_left == 1
    assert period_keys("UTC", utc(2026, 11, 26, 14, 59, 58, 500_000)).hour_seconds_left == 2


@pytest.mark.parametrize(("tz", "dst", "std"), [(LA, "-0700", "-0800"), (NY, "-0400", "-0500")])
def test_repeated_hour_gets_two_keys(tz: str, dst: str, std: str) -> None:
    hours = 7 if tz == LA else 4
    first = period_keys(tz, utc(2026, 11, 1, 1 + hours, 30))
    second = period_keys(tz, utc(2026, 11, 1, 2 + hours, 30))
    assert first.hour == f"2026-11-01T01{dst}"
    assert second.hour == f"2026-11-01T01{std}"
    assert first.hour_seconds_left == second.hour_seconds_left == 1800
    assert first.day == second.day == "2026-11-01"


def test_spring_forward_skips_an_hour_key() -> None:
    before = period_keys(LA, utc(2026, 3, 8, 9, 59))
    after = period_keys(LA, utc(2026, 3, 8, 10, 0))
    assert before.hour == "2026-03-08T01-0800"
    assert after.hour == "2026-03-08T03-0700"
    assert before.hour_seconds_left == 60


# --- period bounds ------------------------------------------------------------------------


@pytest.mark.parametrize(("tz", "std"), [(LA, 8), (NY, 5)])
def test_spring_forward_day_lasts_23_hours(tz: str, std: int) -> None:
    start, end = period_bounds(tz, utc(2026, 3, 8, 18), "day")
    assert start == utc(2026, 3, 8, std)
    assert end == utc(2026, 3, 9, std - 1)
    assert end - start == timedelta(hours=23)
    assert period_keys(tz, utc(2026, 3, 8, 18)).day_seconds_left == int(
        (end - utc(2026, 3, 8, 18)).total_seconds()
    )


@pytest.mark.parametrize(("tz", "std"), [(LA, 8), (NY, 5)])
def test_fall_back_day_lasts_25_hours(tz: str, std: int) -> None:
    start, end = period_bounds(tz, utc(2026, 11, 1, 18), "day")
    assert start == utc(2026, 11, 1, std - 1)
    assert end == utc(2026, 11, 2, std)
    assert end - start == timedelta(hours=25)


def test_repeated_hour_bounds_do_not_overlap() -> None:
    first = period_bounds(LA, utc(2026, 11, 1, 8, 30), "hour")
    second = period_bounds(LA, utc(2026, 11, 1, 9, 30), "hour")
    assert first == (utc(2026, 11, 1, 8), utc(2026, 11, 1, 9))
    assert second == (utc(2026, 11, 1, 9), utc(2026, 11, 1, 10))


def test_week_and_month_bounds_span_a_dst_change() -> None:
    week = period_bounds(LA, utc(2026, 11, 1, 18), "week")  # Sunday: the week began Mon Oct 26
    assert week == (utc(2026, 10, 26, 7), utc(2026, 11, 2, 8))
    assert week[1] - week[0] == timedelta(days=7, hours=1)
    march = period_bounds(NY, utc(2026, 3, 15), "month")
    assert march == (utc(2026, 3, 1, 5), utc(2026, 4, 1, 4))
    december = period_bounds("UTC", utc(2026, 12, 31, 23, 59), "month")
    assert december == (utc(2026, 12, 1), utc(2027, 1, 1))


def test_half_hour_offset_change_is_cut_exactly() -> None:
    # Lord Howe Island moves 30 minutes: 02:00 +10:30 becomes 02:30 +11:00 on 2026-10-04.
    tz = "Australia/Lord_Howe"
    keys = period_keys(tz, utc(2026, 10, 3, 15, 45))
    assert keys.hour == "2026-10-04T02+1100"
    assert period_bounds(tz, utc(2026, 10, 3, 15, 45), "hour") == (
        utc(2026, 10, 3, 15, 30),
        utc(2026, 10, 3, 16),
    )
    assert period_bounds(tz, utc(2026, 10, 3, 15, 15), "hour") == (
        utc(2026, 10, 3, 14, 30),
        utc(2026, 10, 3, 15, 30),
    )


ZONES = [LA, NY, "America/Phoenix", "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata", "UTC"]
AROUND_CHANGES = st.sampled_from(
    [utc(2026, 3, 8, 10), utc(2026, 11, 1, 9), utc(2026, 3, 29, 1), utc(2026, 10, 3, 15)]
).flatmap(
    lambda centre: st.integers(-3 * 86400, 3 * 86400).map(
        lambda s: centre + timedelta(seconds=s, microseconds=s % 7 * 1000)
    )
)


@settings(max_examples=300, deadline=None)
@given(tz=st.sampled_from(ZONES), now=AROUND_CHANGES, period=st.sampled_from(PERIODS))
def test_bounds_contain_now_and_keys_change_exactly_at_them(
    tz: str, now: datetime, period: Period
) -> None:
    start, end = period_bounds(tz, now, period)
    assert start <= now < end
    key = period_keys(tz, now).key(period)
    assert period_keys(tz, start).key(period) == key
    assert period_keys(tz, end - timedelta(microseconds=1)).key(period) == key
    assert period_keys(tz, start - timedelta(microseconds=1)).key(period) != key
    assert period_keys(tz, end).key(period) != key
    left = period_keys(tz, now).seconds_left(period)
    assert left - 1 < (end - now).total_seconds() <= left
