"""Check a publisher's lead against its vertical and normalize it (SPEC §3).

Every problem is collected, not just the first, so the publisher fixes a lead in one go.
Phone numbers go through Google's libphonenumber port (``phonenumbers``) to E.164.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import phonenumbers

from exchange.catalog.models import US_STATES, FieldSpec, Vertical
from exchange.intake.lead import FieldError, Lead
from exchange.routing.geo import zip_state

_EMAIL = re.compile(
    r"^[^@\s]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})+$"
)
_ZIP = re.compile(r"^(\d{5})(?:-\d{4})?$")
_CONTACT_TEXT = ("first_name", "last_name", "address", "city")
_CONTACT_KEYS = frozenset((*_CONTACT_TEXT, "email", "phone", "state", "zip", "address2"))
_TOP_KEYS = frozenset(
    ("vertical", "external_id", "test", "contact", "profile", "consent", "source")
)
_MAX_TEXT = 200
_MAX_EXTRA_KEYS = 50
# Objects and arrays within the body (the body is level 1; a lead needs three or four).
# orjson writes no deeper than ~250 levels: a deeper consent would pass here and then fail
# the post and the save.
_MAX_DEPTH = 10
# Profile numbers: beyond this they are typos or attacks (int("1e1000000") takes a minute).
_MAX_NUMBER_DIGITS = 15


class Invalid(Exception):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


def parse_lead(
    body: Any,
    *,
    publisher_id: str,
    verticals: Mapping[str, Vertical],
    received_at: datetime,
    idempotency_key: str | None = None,
    raw: bytes | None = None,
) -> Lead:
    """A normalized Lead, or ``Invalid`` listing every bad field. ``raw``: the JSON text
    ``body`` was parsed from, which spares the search for NUL when it holds none."""
    errors: list[FieldError] = []
    if not isinstance(body, dict):
        raise Invalid([FieldError("(body)", "must be a JSON object")])
    # Counting brackets bounds the depth from above: most bodies need no walk at all.
    if raw is None or raw.count(b"{") + raw.count(b"[") > _MAX_DEPTH:
        deep = _too_deep(body)
        if deep is not None:
            message = f"must not nest objects or arrays more than {_MAX_DEPTH} levels deep"
            raise Invalid([FieldError(deep, message)])
    # Postgres text and jsonb cannot hold NUL: refuse it here, before any buyer sees the lead.
    # JSON can only spell it as the escape \u0000 (a raw control character is not JSON).
    if raw is None or b"\\u0000" in raw:
        paths = _nul_paths(body, "")
        if paths:
            raise Invalid(
                [FieldError(path, "must not contain the NUL character") for path in paths]
            )
    for key in body:
        if key not in _TOP_KEYS:
            errors.append(FieldError(str(key), "unknown field"))
    vertical_name = body.get("vertical")
    vertical = verticals.get(vertical_name) if isinstance(vertical_name, str) else None
    if vertical is None:
        known = ", ".join(sorted(verticals))
        errors.append(FieldError("vertical", f"must be one of: {known}"))
    external_id = _optional_text(body, "external_id", errors, limit=128)
    test = body.get("test", False)
    if not isinstance(test, bool):
        errors.append(FieldError("test", "must be true or false"))
        test = False
    contact = _contact(body.get("contact"), errors)
    profile = _profile(body.get("profile"), vertical, errors) if vertical else {}
    consent = _free_object(body, "consent", errors)
    source = _free_object(body, "source", errors)
    if errors:
        raise Invalid(errors)
    assert vertical is not None and isinstance(vertical_name, str)
    ping_profile = {k: v for k, v in profile.items() if vertical.fields[k].ping}
    return Lead(
        lead_id=str(uuid.uuid4()),
        publisher_id=publisher_id,
        vertical=vertical_name,
        external_id=external_id,
        idempotency_key=idempotency_key,
        test=test,
        received_at=received_at,
        phone=contact["phone"],
        email=contact.get("email"),
        state=contact["state"],
        zip5=contact["zip"],
        contact=contact,
        profile=profile,
        ping_profile=ping_profile,
        consent=consent,
        source=source,
    )


def _contact(raw: Any, errors: list[FieldError]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        errors.append(FieldError("contact", "is required and must be an object"))
        return {}
    out: dict[str, Any] = {}
    for key in raw:
        if key not in _CONTACT_KEYS:
            errors.append(FieldError(f"contact.{key}", "unknown field"))
    for key in (*_CONTACT_TEXT, "address2"):
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip() or len(value) > _MAX_TEXT:
            errors.append(FieldError(f"contact.{key}", f"must be text of 1-{_MAX_TEXT} characters"))
        else:
            out[key] = value.strip()
    _phone(raw.get("phone"), out, errors)
    _email(raw.get("email"), out, errors)
    _state_zip(raw.get("state"), raw.get("zip"), out, errors)
    return out


def _phone(value: Any, out: dict[str, Any], errors: list[FieldError]) -> None:
    if not isinstance(value, str) or not value.strip():
        errors.append(FieldError("contact.phone", "is required"))
        return
    try:
        number = phonenumbers.parse(value, "US")
    except phonenumbers.NumberParseException:
        errors.append(FieldError("contact.phone", "is not a phone number"))
        return
    if not phonenumbers.is_valid_number(number):
        errors.append(FieldError("contact.phone", "is not a valid phone number"))
        return
    out["phone"] = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _email(value: Any, out: dict[str, Any], errors: list[FieldError]) -> None:
    if value is None:
        return
    if not isinstance(value, str) or len(value) > 254 or not _EMAIL.match(value.strip()):
        errors.append(FieldError("contact.email", "is not an email address"))
        return
    out["email"] = value.strip().lower()


def _state_zip(state: Any, zip_raw: Any, out: dict[str, Any], errors: list[FieldError]) -> None:
    code = state.strip().upper() if isinstance(state, str) else None
    if code not in US_STATES:
        errors.append(FieldError("contact.state", "must be a two-letter US state code"))
        code = None
    match = _ZIP.match(zip_raw.strip()) if isinstance(zip_raw, str) else None
    if match is None:
        errors.append(FieldError("contact.zip", "must be a 5-digit US zip code"))
        return
    zip5 = match[1]
    owner = zip_state(zip5)
    if owner is None:
        errors.append(FieldError("contact.zip", f"{zip5} is not a known US zip code"))
        return
    if code is not None and owner != code:
        errors.append(FieldError("contact.zip", f"{zip5} is in {owner}, not {code}"))
        return
    if code is not None:
        out["state"] = code
    out["zip"] = zip5


def _profile(raw: Any, vertical: Vertical, errors: list[FieldError]) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(FieldError("profile", "must be an object"))
        return {}
    out: dict[str, Any] = {}
    for key in raw:
        if key not in vertical.fields:
            errors.append(FieldError(f"profile.{key}", "unknown field for this vertical"))
    for name, spec in vertical.fields.items():
        value = raw.get(name)
        if value is None:
            if spec.required:
                errors.append(FieldError(f"profile.{name}", "is required"))
            continue
        problem, typed = _typed(value, spec)
        if problem:
            errors.append(FieldError(f"profile.{name}", problem))
        else:
            out[name] = typed
    return out


def _typed(value: Any, spec: FieldSpec) -> tuple[str | None, Any]:
    if spec.type == "bool":
        return (None, value) if isinstance(value, bool) else ("must be true or false", None)
    if spec.type in ("str", "enum"):
        if not isinstance(value, str) or not value or len(value) > spec.max_length:
            return f"must be text of 1-{spec.max_length} characters", None
        if spec.values is not None and value not in spec.values:
            return f"must be one of: {', '.join(spec.values)}", None
        return None, value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return "must be a number", None
    try:
        number = Decimal(repr(value) if isinstance(value, float) else str(value))
    except InvalidOperation:
        return "must be a number", None
    if not number.is_finite():
        return "must be a number", None
    if number and number.adjusted() >= _MAX_NUMBER_DIGITS:
        return f"must be less than 10^{_MAX_NUMBER_DIGITS} in size", None
    if spec.type == "int":
        if number != number.to_integral_value():
            return "must be a whole number", None
        number = Decimal(int(number))
    if spec.min is not None and number < spec.min:
        return f"must be at least {spec.min}", None
    if spec.max is not None and number > spec.max:
        return f"must be at most {spec.max}", None
    return None, int(number) if spec.type == "int" else number


def _optional_text(
    body: dict[str, Any], key: str, errors: list[FieldError], limit: int
) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        errors.append(FieldError(key, f"must be text of 1-{limit} characters"))
        return None
    return value


def _free_object(body: dict[str, Any], key: str, errors: list[FieldError]) -> dict[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > _MAX_EXTRA_KEYS:
        errors.append(FieldError(key, f"must be an object of at most {_MAX_EXTRA_KEYS} keys"))
        return {}
    return value


def _too_deep(body: dict[str, Any]) -> str | None:
    """The top-level field holding objects or arrays nested past ``_MAX_DEPTH``; a loop,
    not recursion, because a hostile body can be a thousand levels deep."""
    stack: list[tuple[Any, int, str]] = [(v, 2, str(k)) for k, v in body.items()]
    while stack:
        value, depth, field = stack.pop()
        if isinstance(value, dict | list):
            if depth > _MAX_DEPTH:
                return field
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1, field) for child in children)
    return None


def _nul_paths(value: Any, path: str) -> list[str]:
    """Dotted paths of every key or string value that contains a NUL character."""
    found: list[str] = []
    if isinstance(value, str):
        if "\x00" in value:
            found.append(path or "(body)")
    elif isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                found.append(child)
            else:
                found.extend(_nul_paths(item, child))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found.extend(_nul_paths(item, f"{path}[{i}]"))
    return found
