"""Money as integer cents: parsed from wire values, formatted as two-place strings.

Floats never carry money here. A JSON number from a buyer arrives as a Python float;
its shortest repr is the literal the buyer wrote, so it goes through ``Decimal(repr(x))``.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_CENT = Decimal("0.01")
MAX_CENTS = 10_000_000_00  # ten million dollars: anything above is a typo, not a price
_MAX_AMOUNT = Decimal(MAX_CENTS) / 100


class MoneyError(ValueError):
    """A value that is not a usable amount of money."""


def to_decimal(value: Any) -> Decimal:
    """Read a wire or config value (``12.5``, ``"12.50"``, ``12``) as an exact Decimal."""
    if isinstance(value, bool):
        raise MoneyError("money must be a number or a decimal string, not a boolean")
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, float):
        amount = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            amount = Decimal(value.strip())
        except InvalidOperation as exc:
            raise MoneyError(f"not a decimal amount: {value!r}") from exc
    else:
        raise MoneyError(f"money must be a number or a decimal string, got {type(value).__name__}")
    if not amount.is_finite():
        raise MoneyError("money must be finite")
    return amount


def to_cents(value: Any) -> int:
    """Whole cents from a wire value; sub-cent digits are cut, never rounded up."""
    kind = type(value)  # exact types: a bool is an int, and is refused below
    if kind is int and 0 <= value <= MAX_CENTS // 100:
        return int(value) * 100
    if kind is str or kind is float:
        cents = _plain_cents(value.strip() if kind is str else repr(value))
        if cents is not None:
            return cents
    amount = to_decimal(value)
    if amount < 0:
        raise MoneyError("money cannot be negative")
    # Compared before any arithmetic: "1e999999" would overflow the division (a buyer's
    # price string must not turn its ping into an exception).
    if amount > _MAX_AMOUNT:
        raise MoneyError("amount is implausibly large")
    return int((amount / _CENT).to_integral_value(rounding=ROUND_DOWN))


def _plain_cents(text: str) -> int | None:
    """``"12.5"`` -> ``1250`` without a Decimal (a bid's price, ten times a lead), or None
    for anything but plain ASCII digits with at most two decimals: the exact path decides."""
    whole, dot, part = text.partition(".")
    if not (whole.isascii() and whole.isdigit() and len(whole) <= 9):
        return None
    if dot and not (part.isascii() and part.isdigit() and len(part) <= 2):
        return None
    cents = int(whole) * 100 + (int(part) * (10 if len(part) == 1 else 1) if dot else 0)
    if cents > MAX_CENTS:
        raise MoneyError("amount is implausibly large")
    return cents


def fmt(cents: int) -> str:
    """``1250`` -> ``"12.50"``: how money leaves our API."""
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    return f"{sign}{whole}.{part:02d}"


def share_of(cents: int, ratio: Decimal) -> int:
    """A ratio of an amount in whole cents, cut down so a share never exceeds its part."""
    return int((Decimal(cents) * ratio).to_integral_value(rounding=ROUND_DOWN))


Cents = Annotated[int, BeforeValidator(to_cents), PlainSerializer(fmt, return_type=str)]
"""A pydantic field holding integer cents, read from dollars, written as ``"12.50"``."""
