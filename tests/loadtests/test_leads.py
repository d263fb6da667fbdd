"""Generated leads are realistic, valid and never duplicates of each other."""

from __future__ import annotations

from typing import Any

import phonenumbers
import pytest
import zipcodes

from loadtests.leads import LOCATIONS, LeadFactory

# Required profile fields of the example config's verticals (config/verticals.yaml).
REQUIRED = {
    "auto_insurance": {"age"},
    "mortgage": {"loan_amount", "loan_type"},
    "solar": {"homeowner"},
    "debt": {"debt_amount"},
}


def _place(zip_code: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = zipcodes.matching(zip_code)  # type: ignore[no-untyped-call]
    return found[0]


def test_phones_emails_and_external_ids_are_unique_within_a_run() -> None:
    make = LeadFactory(run_id="uniq")
    leads = [make(i) for i in range(5000)]
    for key in ("phone", "email"):
        assert len({lead["contact"][key] for lead in leads}) == 5000, key
    assert len({lead["external_id"] for lead in leads}) == 5000


def test_runs_differ_and_a_run_repeats() -> None:
    assert LeadFactory(run_id="a")(3) == LeadFactory(run_id="a")(3)
    assert (
        LeadFactory(run_id="a")(3)["contact"]["phone"]
        != LeadFactory(run_id="b")(3)["contact"]["phone"]
    )
    assert LeadFactory().run_id != LeadFactory().run_id


def test_contacts_are_real_places_and_valid_phones() -> None:
    make = LeadFactory(run_id="valid")
    for i in range(300):
        contact = make(i)["contact"]
        phone = phonenumbers.parse(contact["phone"])
        assert phonenumbers.is_valid_number(phone), contact["phone"]
        assert contact["phone"][5:8] != "555"
        place = _place(contact["zip"])
        assert place["state"] == contact["state"]
        assert "@" in contact["email"] and contact["address"]


@pytest.mark.parametrize("location", LOCATIONS)
def test_each_location_is_consistent(location: tuple[str, str, str, str]) -> None:
    city, state, zip_code, area = location
    place = _place(zip_code)
    assert (place["city"], place["state"]) == (city, state)
    assert area in place["area_codes"]
    assert phonenumbers.is_valid_number(phonenumbers.parse(f"+1{area}2345678"))


@pytest.mark.parametrize("vertical", sorted(REQUIRED))
def test_each_vertical_has_its_required_fields(vertical: str) -> None:
    lead = LeadFactory(vertical, run_id="v")(1)
    assert lead["vertical"] == vertical
    assert REQUIRED[vertical] <= set(lead["profile"])
    assert lead["consent"]["tcpa"] is True
    assert lead["source"]["ip"].startswith("203.0.113.")


def test_auto_profile_ranges() -> None:
    make = LeadFactory(run_id="ranges")
    profiles = [make(i)["profile"] for i in range(500)]
    assert all(18 <= p["age"] <= 80 and 2005 <= p["vehicle_year"] <= 2026 for p in profiles)
    assert {p["credit"] for p in profiles} == {"excellent", "good", "fair", "poor"}
