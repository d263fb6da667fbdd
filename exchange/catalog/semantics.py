"""Checks that span several parts of the config: references, unique ids, rule types."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from exchange.catalog.models import Config, FieldSpec, Rule
from exchange.routing.geo import coordinates

Loc = tuple[str | int, ...]

_ORDERED_OPS = frozenset({"gt", "gte", "lt", "lte", "between"})


def semantic_errors(config: Config) -> list[tuple[Loc, str]]:
    """Every cross-reference problem, with the location of the offending key."""
    errors: list[tuple[Loc, str]] = []
    errors += _unique("publishers", [p.id for p in config.publishers], "publisher id")
    errors += _unique("publishers", [p.api_key_sha256 for p in config.publishers], "api key")
    errors += _unique("buyers", [b.id for b in config.buyers], "buyer id")
    campaign_ids: dict[str, Loc] = {}
    for bi, buyer in enumerate(config.buyers):
        for ci, campaign in enumerate(buyer.campaigns):
            loc: Loc = ("buyers", bi, "campaigns", ci)
            if campaign.id in campaign_ids:
                errors.append(((*loc, "id"), f"campaign id {campaign.id!r} is used twice"))
            campaign_ids[campaign.id] = loc
            vertical = config.verticals.get(campaign.vertical)
            if vertical is None:
                errors.append(((*loc, "vertical"), f"unknown vertical {campaign.vertical!r}"))
                continue
            radius = campaign.filters.radius
            if radius is not None and not _known_zip(radius.zip):
                errors.append(
                    (
                        (*loc, "filters", "radius", "zip"),
                        f"zip {radius.zip} is unknown or has no location",
                    )
                )
            for ri, rule in enumerate(campaign.filters.rules):
                problem = rule_problem(rule, vertical.fields.get(rule.field))
                if problem:
                    errors.append(((*loc, "filters", "rules", ri), problem))
    return errors


def rule_problem(rule: Rule, spec: FieldSpec | None) -> str | None:
    """Why a rule cannot apply to its field, or None when it can."""
    if spec is None:
        return f"rule on unknown field {rule.field!r}"
    if rule.op == "exists":
        return None
    if rule.op in _ORDERED_OPS and spec.type not in ("int", "number"):
        return f"'{rule.op}' needs a numeric field; {rule.field!r} is {spec.type}"
    values = rule.value if isinstance(rule.value, list) else [rule.value]
    for v in values:
        problem = _value_problem(v, spec)
        if problem:
            return f"rule on {rule.field!r}: {problem}"
    if rule.op == "between":
        low, high = (Decimal(str(x)) for x in rule.value)
        if low > high:
            return "'between' bounds are reversed"
    return None


def _value_problem(value: Any, spec: FieldSpec) -> str | None:
    if spec.type in ("int", "number"):
        if isinstance(value, bool):
            return f"{value!r} is not a number"
        try:
            Decimal(str(value))
        except InvalidOperation:
            return f"{value!r} is not a number"
        return None
    if spec.type == "bool":
        return None if isinstance(value, bool) else f"{value!r} is not true/false"
    if spec.type == "enum":
        assert spec.values is not None
        return None if value in spec.values else f"{value!r} is not one of {list(spec.values)}"
    return None if isinstance(value, str) else f"{value!r} is not a string"


def _unique(section: str, values: list[str], what: str) -> list[tuple[Loc, str]]:
    seen: set[str] = set()
    out: list[tuple[Loc, str]] = []
    for i, v in enumerate(values):
        if v in seen:
            out.append(((section, i), f"{what} {v!r} is used twice"))
        seen.add(v)
    return out


def _known_zip(code: str) -> bool:
    """A radius centre must be a zip we can place on the map."""
    return coordinates(code) is not None
