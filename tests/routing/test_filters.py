"""Campaign filters: every kind in and out, every rule op both ways, missing fields, mismatches."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from exchange.catalog.models import Filters
from exchange.routing import filters as filters_module
from exchange.routing.filters import compile_filters, filter_failure

PROFILE: dict[str, object] = {
    "age": 34,
    "income": Decimal("52000.50"),
    "credit": "good",
    "insured": True,
}


def make(**spec: Any) -> Filters:
    return Filters.model_validate(spec)


def rule(field: str, op: str, value: Any = None) -> Filters:
    return make(rules=[{"field": field, "op": op, "value": value}])


def check(filters: Filters, profile: dict[str, object] | None = None) -> str | None:
    return filter_failure(filters, "CA", "94105", PROFILE if profile is None else profile)


def test_no_filters_pass_everything() -> None:
    assert filter_failure(Filters(), "NY", "10001", {}) is None


# --- states and zips ---------------------------------------------------------------------


def test_states_in_and_out() -> None:
    f = make(states=["CA", "NV"])
    assert filter_failure(f, "CA", "94105", {}) is None
    assert filter_failure(f, "NV", "89101", {}) is None
    assert filter_failure(f, "NY", "10001", {}) == "state NY not in [CA, NV]"


def test_states_compare_case_insensitively() -> None:
    assert filter_failure(make(states=["ca"]), "ca", "94105", {}) is None


def test_exact_zip_in_and_out() -> None:
    f = make(zips=["94105", "10001"])
    assert filter_failure(f, "CA", "94105", {}) is None
    assert filter_failure(f, "NY", "10001", {}) is None
    assert filter_failure(f, "CA", "94107", {}) == "zip 94107 not matched"


def test_prefix_zip_in_and_out() -> None:
    f = make(zips=["941*", "8*"])
    assert filter_failure(f, "CA", "94107", {}) is None
    assert filter_failure(f, "NV", "89101", {}) is None
    assert filter_failure(f, "CA", "94205", {}) == "zip 94205 not matched"
    assert filter_failure(f, "NY", "10001", {}) == "zip 10001 not matched"


def test_exact_and_prefix_zips_together() -> None:
    f = make(zips=["941*", "90210"])
    assert filter_failure(f, "CA", "90210", {}) is None
    assert filter_failure(f, "CA", "94133", {}) is None
    assert filter_failure(f, "CA", "90211", {}) == "zip 90211 not matched"


# --- radius ------------------------------------------------------------------------------


def test_radius_inside() -> None:
    f = make(radius={"zip": "94105", "miles": 50})
    assert filter_failure(f, "CA", "94105", {}) is None  # the centre itself
    assert filter_failure(f, "CA", "94612", {}) is None  # Oakland, ~8 mi


def test_radius_outside_names_the_distance() -> None:
    reason = filter_failure(make(radius={"zip": "94105", "miles": 50}), "NY", "10001", {})
    assert reason is not None
    assert reason.startswith("zip 10001 is 256")
    assert reason.endswith("mi from 94105 (max 50)")


def test_radius_boundary_is_inclusive_and_fractional_miles_count() -> None:
    # San Jose 95113 is 41.499 mi from 94105: 41.5 admits it, 41.4 does not.
    assert filter_failure(make(radius={"zip": "94105", "miles": "41.5"}), "CA", "95113", {}) is None
    reason = filter_failure(make(radius={"zip": "94105", "miles": "41.4"}), "CA", "95113", {})
    assert reason == "zip 95113 is 41.5 mi from 94105 (max 41.4)"


def test_radius_unknown_lead_zip_fails() -> None:
    f = make(radius={"zip": "94105", "miles": 3000})
    assert filter_failure(f, "CA", "99999", {}) == (
        "zip 99999 has no known location (radius 3000 mi of 94105)"
    )
    # A real zip without coordinates (military mail) cannot be shown to be inside either.
    assert filter_failure(f, "NY", "09001", {}) is not None


def test_radius_centre_without_location_fails_every_lead() -> None:
    f = make(radius={"zip": "09001", "miles": 3000})
    assert filter_failure(f, "CA", "94105", {}) == "radius centre 09001 has no known location"


# --- rules: every op true and false ------------------------------------------------------

RULE_CASES: list[tuple[str, str, Any, bool]] = [
    ("age", "eq", 34, True),
    ("age", "eq", 35, False),
    ("age", "ne", 35, True),
    ("age", "ne", 34, False),
    ("credit", "eq", "good", True),
    ("credit", "eq", "fair", False),
    ("credit", "ne", "fair", True),
    ("credit", "ne", "good", False),
    ("insured", "eq", True, True),
    ("insured", "eq", False, False),
    ("insured", "ne", False, True),
    ("credit", "in", ["excellent", "good"], True),
    ("credit", "in", ["fair", "poor"], False),
    ("credit", "not_in", ["fair", "poor"], True),
    ("credit", "not_in", ["good", "poor"], False),
    ("age", "in", [30, 34], True),
    ("age", "in", [30, 35], False),
    ("age", "not_in", [30, 35], True),
    ("age", "not_in", [34], False),
    ("age", "gt", 33, True),
    ("age", "gt", 34, False),
    ("age", "gte", 34, True),
    ("age", "gte", 35, False),
    ("age", "lt", 35, True),
    ("age", "lt", 34, False),
    ("age", "lte", 34, True),
    ("age", "lte", 33, False),
    ("age", "between", [34, 40], True),  # inclusive low
    ("age", "between", [21, 34], True),  # inclusive high
    ("age", "between", [35, 40], False),
    ("age", "between", [21, 33], False),
    ("income", "gte", 52000.5, True),
    ("income", "gt", 52000.5, False),
    ("income", "eq", "52000.50", True),
    ("income", "between", [52000.5, 52000.5], True),
    ("income", "lt", 52000.49, False),
    ("credit", "exists", None, True),
    ("credit", "exists", True, True),
    ("credit", "exists", False, False),
    ("missing_field", "exists", False, True),
    ("missing_field", "exists", True, False),
]


@pytest.mark.parametrize(("field", "op", "value", "passes"), RULE_CASES)
def test_rule_ops(field: str, op: str, value: Any, passes: bool) -> None:
    reason = check(rule(field, op, value))
    assert (reason is None) is passes, reason


def test_failure_reasons_read_well() -> None:
    assert check(rule("age", "gte", 35)) == "age 34 fails gte 35"
    assert check(rule("credit", "in", ["excellent", "fair"])) == (
        "credit good fails in [excellent, fair]"
    )
    assert check(rule("age", "between", [40, 50])) == "age 34 fails between [40, 50]"
    assert check(rule("insured", "eq", False)) == "insured true fails eq false"
    assert check(rule("credit", "exists", False)) == "credit present (must be absent)"


def test_numbers_compare_exactly_not_as_binary_floats() -> None:
    # 0.1 as a float is not exactly 1/10; read through str() it is.
    profile: dict[str, object] = {"rate": Decimal("0.1")}
    assert check(rule("rate", "eq", 0.1), profile) is None
    assert check(rule("rate", "lte", 0.1), profile) is None
    assert check(rule("rate", "gt", 0.1), profile) == "rate 0.1 fails gt 0.1"
    # An int profile value equals a Decimal or float rule value of the same number.
    assert check(rule("age", "eq", 34.0)) is None
    assert check(rule("age", "in", [Decimal("34.00")])) is None


def test_numeric_strings_in_yaml_count_as_numbers() -> None:
    # check-config accepts age: {gte: "21"}; the runtime must honour it.
    assert check(rule("age", "gte", "21")) is None
    assert check(rule("age", "between", ["30", "40"])) is None
    assert check(rule("age", "in", ["33", "34"])) is None


def test_ints_in_decimal_profile_and_exact_boundaries() -> None:
    profile: dict[str, object] = {"income": Decimal("50000")}
    assert check(rule("income", "gte", 50000), profile) is None
    assert check(rule("income", "gt", 50000), profile) is not None
    assert check(rule("income", "between", ["49999.99", "50000.00"]), profile) is None


# --- missing fields ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "value"),
    [
        ("eq", 1),
        ("ne", 1),
        ("in", [1, 2]),
        ("not_in", [1, 2]),
        ("gt", 1),
        ("gte", 1),
        ("lt", 1),
        ("lte", 1),
        ("between", [1, 2]),
        ("exists", True),
        ("exists", None),
    ],
)
def test_missing_field_fails_every_op_but_exists_false(op: str, value: Any) -> None:
    assert check(rule("vehicle_year", op, value)) == "vehicle_year missing"
    assert check(rule("vehicle_year", op, value), {"vehicle_year": None}) == (
        "vehicle_year missing"
    )


def test_none_counts_as_absent_for_exists_false() -> None:
    assert check(rule("vehicle_year", "exists", False), {"vehicle_year": None}) is None


# --- type mismatches fail, never raise ---------------------------------------------------

MISMATCHES: list[tuple[str, str, Any]] = [
    ("credit", "gt", 3),  # text against a number
    ("credit", "between", [1, 5]),
    ("credit", "eq", 3),
    ("credit", "ne", 3),  # ne fails too: the value is not shown to differ in kind
    ("credit", "not_in", [1, 2]),
    ("age", "eq", "thirty-four"),
    ("age", "ne", "thirty-four"),
    ("age", "in", ["old", "young"]),
    ("age", "not_in", ["old", "young"]),
    ("age", "gt", "old"),
    ("age", "between", ["low", 50]),
    ("age", "eq", True),  # bools are not numbers, though Python's True == 1
    ("insured", "eq", 1),
    ("insured", "in", [1, 0]),
    ("insured", "gte", 0),
    ("insured", "eq", "true"),
]


@pytest.mark.parametrize(("field", "op", "value"), MISMATCHES)
def test_type_mismatch_fails(field: str, op: str, value: Any) -> None:
    reason = check(rule(field, op, value))
    assert reason is not None
    assert reason.endswith("(type mismatch)")


@pytest.mark.parametrize(
    "odd",
    [
        [1, 2],
        {"a": 1},
        object(),
        Decimal("NaN"),
        Decimal("sNaN"),
        b"34",
        "34",
    ],
)
def test_odd_profile_values_never_raise(odd: object) -> None:
    for op, value in [("eq", 34), ("ne", 34), ("gte", 1), ("between", [1, 50]), ("in", [34])]:
        reason = check(rule("age", op, value), {"age": odd})
        assert reason is not None and "type mismatch" in reason


def test_nan_rule_value_never_matches() -> None:
    assert check(rule("age", "lt", float("nan"))) is not None
    assert check(rule("age", "ne", float("nan"))) is not None


def test_text_profile_value_is_not_read_as_a_number() -> None:
    # Intake types the profile: "34" in a str field is text, whatever it looks like.
    assert check(rule("zip_code_text", "gte", 1), {"zip_code_text": "34"}) is not None
    assert check(rule("zip_code_text", "eq", "34"), {"zip_code_text": "34"}) is None


# --- combined and cached -----------------------------------------------------------------


def test_all_kinds_together_report_the_first_failure() -> None:
    f = make(
        states=["CA", "NV", "OR"],
        zips=["941*", "94105"],
        radius={"zip": "94105", "miles": 50},
        rules=[
            {"field": "age", "op": "gte", "value": 21},
            {"field": "credit", "op": "in", "value": ["excellent", "good"]},
        ],
    )
    assert filter_failure(f, "CA", "94107", PROFILE) is None
    assert filter_failure(f, "NY", "10001", PROFILE) == "state NY not in [CA, NV, OR]"
    assert filter_failure(f, "CA", "90210", PROFILE) == "zip 90210 not matched"
    assert filter_failure(f, "CA", "94107", {**PROFILE, "age": 19}) == "age 19 fails gte 21"
    assert filter_failure(f, "CA", "94107", {"age": 40}) == "credit missing"


def test_compiled_once_per_filters_object() -> None:
    f = make(states=["CA"])
    filter_failure(f, "CA", "94105", {})
    compiled = filters_module._cache[id(f)][1]
    filter_failure(f, "NY", "10001", {})
    assert filters_module._cache[id(f)][1] is compiled
    # An equal but distinct object (a reloaded config) gets its own entry.
    g = make(states=["CA"])
    assert filter_failure(g, "NY", "10001", {}) == "state NY not in [CA]"
    assert filters_module._cache[id(g)][0] is g


def test_compile_filters_matches_filter_failure() -> None:
    f = make(states=["CA"], rules=[{"field": "age", "op": "lt", "value": 30}])
    compiled = compile_filters(f)
    assert compiled("CA", "94105", PROFILE) == filter_failure(f, "CA", "94105", PROFILE)
    assert compiled("CA", "94105", {"age": 29}) is None
