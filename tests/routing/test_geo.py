"""The in-memory zip table: states, coordinates and distances from the zipcodes package data."""

from __future__ import annotations

import time

import pytest

from exchange.routing import geo


def test_warm_loads_once_and_then_costs_nothing() -> None:
    first = geo.warm()
    assert first >= 0.0
    started = time.perf_counter()
    assert geo.warm() == 0.0
    assert time.perf_counter() - started < 0.01


@pytest.mark.parametrize("zip5", ["00501", "10001", "94105", "60601", "99950", "00601"])
def test_known_zips_across_all_leading_digits(zip5: str) -> None:
    assert geo.known_zip(zip5)


@pytest.mark.parametrize("zip5", ["99999", "00000", "9410", "941050", "", "abcde"])
def test_unknown_or_malformed_zips(zip5: str) -> None:
    assert not geo.known_zip(zip5)
    assert geo.zip_state(zip5) is None
    assert geo.coordinates(zip5) is None


@pytest.mark.parametrize(
    ("zip5", "state"),
    [("94105", "CA"), ("10001", "NY"), ("89101", "NV"), ("00601", "PR"), ("20001", "DC")],
)
def test_zip_state(zip5: str, state: str) -> None:
    assert geo.zip_state(zip5) == state


def test_distance_san_francisco_to_new_york() -> None:
    miles = geo.distance_miles("94105", "10001")
    assert miles is not None
    assert 2550 < miles < 2580
    assert geo.distance_miles("10001", "94105") == pytest.approx(miles)


def test_distance_between_neighbours_and_to_itself() -> None:
    assert geo.distance_miles("94105", "94105") == 0.0
    near = geo.distance_miles("94105", "94107")
    assert near is not None and 0 < near < 3
    oakland = geo.distance_miles("94105", "94612")
    assert oakland is not None and 5 < oakland < 15


def test_distance_with_an_unknown_zip_is_none() -> None:
    assert geo.distance_miles("94105", "99999") is None
    assert geo.distance_miles("99999", "94105") is None


def test_military_zip_is_known_but_has_no_location() -> None:
    # APO/FPO zips carry (0, 0) in the data: a real zip, but no place to measure from.
    assert geo.known_zip("09001")
    assert geo.zip_state("09001") == "AE"
    assert geo.coordinates("09001") is None
    assert geo.distance_miles("09001", "10001") is None


def test_coordinates_are_latitude_then_longitude() -> None:
    point = geo.coordinates("94105")
    assert point is not None
    lat, lon = point
    assert 37 < lat < 38 and -123 < lon < -122
