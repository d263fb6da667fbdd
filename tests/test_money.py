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
        -1,
        -0.5,
        10_000_001,
        "10000001",
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


@given(st.decimals(0, 10_000_000, places=2, allow_nan=False, allow_infinity=False))
def test_the_plain_string_and_number_paths_agree_with_the_exact_one(amount: Decimal) -> None:
    """Prices like "12.5" skip Decimal; whatever their form, the cents are the same."""
    exact = int(amount * 100)
    forms: list[object] = [str(amount), f"{amount:f}", float(amount), f" {amount} "]
    if amount == int(amount):
        forms += [int(amount), str(int(amount)), f"{int(amount)}."]
    for form in forms:
        assert to_cents(form) == exact, form


@pytest.mark.parametrize("value", ["١٢.٥٠", "12.５", "²", "+5", "5.-1", ".5", "1_000"])
def test_only_plain_ascii_digits_take_the_shortcut(value: str) -> None:
    """Unicode digits and signs go to Decimal, which reads some ("١٢.٥٠" is 12.50)."""
    try:
        expected: int | None = int(Decimal(value.strip()) * 100)
    except ArithmeticError:
        expected = None
    if expected is None:
        with pytest.raises(MoneyError):
            to_cents(value)
    else:
        assert to_cents(value) == expected
