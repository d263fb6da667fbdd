"""Campaign filters (SPEC §2 ``filters``) checked in memory for every campaign on every lead.

Each ``Filters`` object is compiled once into a chain of small checks (sets, a prefix tuple,
pre-parsed Decimal bounds, the radius centre's coordinates) and kept in a cache keyed by its
identity, so the per-lead cost is a few dict and set lookups.

Rule semantics, chosen so that a buyer never gets a lead its filter did not clearly admit:

* A field is *missing* when the profile lacks it or holds None. A missing field fails every
  op except ``exists: false``, including ``ne`` and ``not_in``.
* Numbers compare exactly as Decimal (rule floats and numeric strings go through
  ``Decimal(str(x))``); bools compare only with bools and strings only with strings.
* A type mismatch (``age`` holding "x", a number against ``in: [good]``) fails, never raises.
  ``not_in`` passes only when the list holds values of the field's kind and the value is not
  among them. ``between`` is inclusive at both ends.

    >>> filter_failure(Filters(states=("CA",)), "NY", "10001", {})
    'state NY not in [CA]'
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation

from exchange.catalog.models import Filters, Radius, Rule
from exchange.routing import geo

LeadCheck = Callable[[str, str, Mapping[str, object]], str | None]
"""(state, zip5, profile) -> None when the lead passes, else a short reason."""

_ProfileCheck = Callable[[Mapping[str, object]], str | None]

# A config reload brings new Filters objects; past this many the cache is simply rebuilt.
_CACHE_LIMIT = 10_000
_cache: dict[int, tuple[Filters, LeadCheck]] = {}


def filter_failure(
    filters: Filters, state: str, zip5: str, profile: Mapping[str, object]
) -> str | None:
    """None when the lead passes ``filters``, else why it does not (first failing check)."""
    entry = _cache.get(id(filters))
    if entry is None or entry[0] is not filters:
        if len(_cache) >= _CACHE_LIMIT:
            _cache.clear()
        entry = (filters, compile_filters(filters))
        _cache[id(filters)] = entry
    return entry[1](state, zip5, profile)


def compile_filters(filters: Filters) -> LeadCheck:
    """The filters as one callable; cheapest checks first, the radius last."""
    checks: list[LeadCheck] = []
    if filters.states is not None:
        checks.append(_state_check(filters.states))
    if filters.zips is not None:
        checks.append(_zip_check(filters.zips))
    if filters.rules:
        checks.append(_rules_check([_compile_rule(rule) for rule in filters.rules]))
    if filters.radius is not None:
        checks.append(_radius_check(filters.radius))
    if not checks:
        return _always_pass
    if len(checks) == 1:
        return checks[0]

    def run_all(state: str, zip5: str, profile: Mapping[str, object]) -> str | None:
        for check in checks:
            reason = check(state, zip5, profile)
            if reason is not None:
                return reason
        return None

    return run_all


def _always_pass(state: str, zip5: str, profile: Mapping[str, object]) -> str | None:
    return None


def _state_check(states: tuple[str, ...]) -> LeadCheck:
    allowed = frozenset(states)
    listed = _listing(states)

    def check(state: str, zip5: str, profile: Mapping[str, object]) -> str | None:
        return None if state.upper() in allowed else f"state {state} not in {listed}"

    return check


def _zip_check(patterns: tuple[str, ...]) -> LeadCheck:
    exact = frozenset(p for p in patterns if not p.endswith("*"))
    prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))

    def check(state: str, zip5: str, profile: Mapping[str, object]) -> str | None:
        if zip5 in exact or (prefixes and zip5.startswith(prefixes)):
            return None
        return f"zip {zip5} not matched"

    return check


def _radius_check(radius: Radius) -> LeadCheck:
    centre = geo.coordinates(radius.zip)
    max_miles = float(radius.miles)
    limit = f"{radius.miles} mi of {radius.zip}"

    def check(state: str, zip5: str, profile: Mapping[str, object]) -> str | None:
        if centre is None:
            return f"radius centre {radius.zip} has no known location"
        point = geo.coordinates(zip5)
        if point is None:
            return f"zip {zip5} has no known location (radius {limit})"
        miles = geo.haversine_miles(centre, point)
        if miles <= max_miles:
            return None
        return f"zip {zip5} is {miles:.1f} mi from {radius.zip} (max {radius.miles})"

    return check


def _rules_check(rules: list[_ProfileCheck]) -> LeadCheck:
    def check(state: str, zip5: str, profile: Mapping[str, object]) -> str | None:
        for rule in rules:
            reason = rule(profile)
            if reason is not None:
                return reason
        return None

    return check


# --- rules -------------------------------------------------------------------------------


def _compile_rule(rule: Rule) -> _ProfileCheck:
    if rule.op == "exists":
        return _exists_rule(rule.field, rule.value is not False)
    if rule.op in ("in", "not_in"):
        return _membership_rule(rule.field, rule.value, negate=rule.op == "not_in")
    if rule.op == "between":
        return _between_rule(rule.field, rule.value)
    if rule.op in ("eq", "ne"):
        return _membership_rule(rule.field, [rule.value], negate=rule.op == "ne", op=rule.op)
    return _ordered_rule(rule.field, rule.op, rule.value)


def _exists_rule(field: str, must_exist: bool) -> _ProfileCheck:
    def check(profile: Mapping[str, object]) -> str | None:
        present = profile.get(field) is not None
        if present == must_exist:
            return None
        return f"{field} missing" if must_exist else f"{field} present (must be absent)"

    return check


class _ValueSet:
    """A rule's list split by kind, so membership is one set lookup whatever the list's size."""

    def __init__(self, values: Sequence[object]) -> None:
        self.strings = frozenset(v for v in values if isinstance(v, str))
        self.bools = frozenset(v for v in values if isinstance(v, bool))
        numbers = (_rule_number(v) for v in values)
        # Equal int and Decimal values hash alike, so a profile int finds Decimal("21").
        self.numbers = frozenset(n for n in numbers if n is not None)

    def lookup(self, value: object) -> bool | None:
        """Whether ``value`` is in the list; None when the list holds nothing of its kind."""
        if isinstance(value, bool):
            kind: frozenset[object] = self.bools
        elif isinstance(value, str):
            kind = self.strings
        else:
            number = _profile_number(value)
            if number is None:
                return None
            kind, value = self.numbers, number
        return value in kind if kind else None


def _membership_rule(
    field: str, listed: Sequence[object], negate: bool, op: str | None = None
) -> _ProfileCheck:
    """eq/ne/in/not_in: ``ne`` is ``not_in`` of one value, ``eq`` is ``in`` of one."""
    value_set = _ValueSet(listed)
    shown = _show(listed[0]) if op is not None else _listing(listed)
    op_name = op or ("not_in" if negate else "in")

    def check(profile: Mapping[str, object]) -> str | None:
        actual = profile.get(field)
        if actual is None:
            return f"{field} missing"
        found = value_set.lookup(actual)
        if found is None:
            return f"{field} {_show(actual)} fails {op_name} {shown} (type mismatch)"
        if found != negate:
            return None
        return f"{field} {_show(actual)} fails {op_name} {shown}"

    return check


_ORDERED: dict[str, Callable[[Decimal, Decimal], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


def _ordered_rule(field: str, op: str, value: object) -> _ProfileCheck:
    bound = _rule_number(value)
    compare = _ORDERED[op]
    shown = _show(value)

    def check(profile: Mapping[str, object]) -> str | None:
        actual = profile.get(field)
        if actual is None:
            return f"{field} missing"
        number = _profile_number(actual)
        if number is None or bound is None:
            return f"{field} {_show(actual)} fails {op} {shown} (type mismatch)"
        return None if compare(number, bound) else f"{field} {_show(actual)} fails {op} {shown}"

    return check


def _between_rule(field: str, bounds: list[object]) -> _ProfileCheck:
    low, high = _rule_number(bounds[0]), _rule_number(bounds[1])
    shown = _listing(bounds)

    def check(profile: Mapping[str, object]) -> str | None:
        actual = profile.get(field)
        if actual is None:
            return f"{field} missing"
        number = _profile_number(actual)
        if number is None or low is None or high is None:
            return f"{field} {_show(actual)} fails between {shown} (type mismatch)"
        if low <= number <= high:
            return None
        return f"{field} {_show(actual)} fails between {shown}"

    return check


def _profile_number(value: object) -> Decimal | None:
    """A profile value as an exact number; text is never a number here (intake typed it)."""
    if isinstance(value, str):
        return None
    return _rule_number(value)


def _rule_number(value: object) -> Decimal | None:
    """The exact numeric reading of a YAML value ("21" too, as check-config allows), or None.

    None for bools, non-numeric text and NaN (NaN equals nothing and raises when ordered).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, float | str):
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            return None
    else:
        return None
    return None if number.is_nan() else number


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _listing(values: Iterable[object]) -> str:
    return "[" + ", ".join(_show(v) for v in values) + "]"
