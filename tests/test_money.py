from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange.money import MoneyError, fmt, share_of, to_cents


@pytest.mark.parametrize(
    ("value", "cents"),
    [
        (12.5, 1250),
        ("12.50", 1250),
        (12, 1200),
        ("0.01", 1),
        (0.1 + 0.2, 30),
        ("19.999", 1999),
        (Decimal("7.005"), 700),
        ("  3.10 ", 310),
    ],
)
def test_to_cents(value: object, cents: int) -> None:
    assert to_cents(value) == cents


_OUT_OF_RANGE = ["1e999999", Decimal("9e999999999")]  # dividing by a cent would overflow


@pytest.mark.parametrize(
    "value",
    [
        True,
        None,
        "abc",
        "-1",
        -0.5,
        float("nan"),
        float("inf"),
        [1],
        "1e12",
        "10000000.01",
        *_OUT_OF_RANGE,
    ],
)
def test_to_cents_refuses(value: object) -> None:
    with pytest.raises(MoneyError):
        to_cents(value)


def test_fmt() -> None:
    assert [fmt(0), fmt(5), fmt(1250), fmt(-305)] == ["0.00", "0.05", "12.50", "-3.05"]


@given(st.integers(0, 10**9), st.decimals(0, 1, places=4))
def test_share_never_exceeds_the_part(cents: int, ratio: Decimal) -> None:
    share = share_of(cents, ratio)
    assert 0 <= share <= cents
    assert share <= cents * ratio < share + 1


@given(st.integers(0, 10**9))
def test_fmt_round_trips(cents: int) -> None:
    assert to_cents(fmt(cents)) == cents
