"""The YAML config as typed models (SPEC §2). Validation here is what check-config reports."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from exchange.money import Cents

Ident = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]

FieldType = Literal["int", "number", "str", "enum", "bool"]
RuleOp = Literal["eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "between", "exists"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

US_STATES = frozenset(
    [
        "AL",
        "AK",
        "AZ",
        "AR",
        "CA",
        "CO",
        "CT",
        "DE",
        "DC",
        "FL",
        "GA",
        "HI",
        "ID",
        "IL",
        "IN",
        "IA",
        "KS",
        "KY",
        "LA",
        "ME",
        "MD",
        "MA",
        "MI",
        "MN",
        "MS",
        "MO",
        "MT",
        "NE",
        "NV",
        "NH",
        "NJ",
        "NM",
        "NY",
        "NC",
        "ND",
        "OH",
        "OK",
        "OR",
        "PA",
        "RI",
        "SC",
        "SD",
        "TN",
        "TX",
        "UT",
        "VT",
        "VA",
        "WA",
        "WV",
        "WI",
        "WY",
        "PR",
    ]
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HealthSettings(_Strict):
    """When a buyer that keeps failing pings is throttled, and how it earns its way back."""

    window: int = Field(20, ge=2, le=10_000)  # recent pings looked at
    min_samples: int = Field(10, ge=1, le=10_000)
    fail_ratio: float = Field(0.5, gt=0, le=1)  # timeouts + errors share that throttles
    probe_every_ms: int = Field(1000, ge=10, le=600_000)  # one probe ping this often
    recover_after: int = Field(3, ge=1, le=1000)  # good probes in a row to recover


class ExchangeSettings(_Strict):
    tmax_ms: int = Field(300, ge=10, le=10_000)
    post_timeout_ms: int = Field(2000, ge=10, le=60_000)
    deadline_ms: int = Field(5000, ge=50, le=120_000)
    # Time kept back from the ping phase so the winner's post still fits in the deadline.
    min_ping_ms: int = Field(20, ge=1, le=10_000)
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=4 * 1024 * 1024)
    # Per worker. At ~4 ms of CPU per lead, 64 leads in flight queue at most ~250 ms of
    # work, 256 about a second: at 2x the sustained rate the answered p99 was 3.0 s with
    # 256 and 0.5 s with 64 (loadtests, accept queue drained). It also caps a worker at
    # 64 / lead time: raise it for slow buyers when the CPU is idle.
    max_leads_in_flight: int = Field(64, ge=1, le=100_000)
    # A worker whose event loop runs this late on average is saturated: new leads are
    # refused (503) rather than queued past their deadline.
    max_loop_lag_ms: int = Field(100, ge=5, le=60_000)
    publisher_rate_per_second: int = Field(200, ge=1, le=1_000_000)
    buyer_health: HealthSettings = HealthSettings()

    @model_validator(mode="after")
    def _ordered(self) -> ExchangeSettings:
        if self.tmax_ms >= self.deadline_ms:
            raise ValueError("tmax_ms must be shorter than deadline_ms")
        return self


class FieldSpec(_Strict):
    type: FieldType
    required: bool = False
    ping: bool = False
    min: Decimal | None = None
    max: Decimal | None = None
    values: tuple[str, ...] | None = None
    max_length: int = Field(200, ge=1, le=10_000)

    @model_validator(mode="after")
    def _consistent(self) -> FieldSpec:
        if self.type == "enum" and not self.values:
            raise ValueError("an enum field needs a non-empty 'values' list")
        if self.type != "enum" and self.values is not None:
            raise ValueError("'values' belongs to enum fields only")
        if (self.min is not None or self.max is not None) and self.type not in ("int", "number"):
            raise ValueError("'min'/'max' belong to int and number fields only")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("'min' is greater than 'max'")
        return self


class Vertical(_Strict):
    mode: Literal["auction", "priority"] = "auction"
    max_sells: int = Field(1, ge=1, le=20)
    floor: Cents = 0
    pricing: Literal["first_price", "second_price"] = "first_price"
    dedupe_days: int = Field(30, ge=0, le=3650)
    fields: dict[Ident, FieldSpec] = Field(default_factory=dict)

    @property
    def exclusive(self) -> bool:
        return self.max_sells == 1


class Payout(_Strict):
    revshare: Decimal | None = Field(None, ge=0, le=1)
    fixed: Cents | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Payout:
        if (self.revshare is None) == (self.fixed is None):
            raise ValueError("payout takes exactly one of 'revshare' or 'fixed'")
        return self


class Publisher(_Strict):
    id: Ident
    name: str | None = None
    api_key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    payout: Payout
    rate_per_second: int | None = Field(None, ge=1, le=1_000_000)


class Radius(_Strict):
    zip: str = Field(pattern=r"^\d{5}$")
    miles: Decimal = Field(gt=0, le=3000)


class Rule(_Strict):
    field: Ident
    op: RuleOp
    value: Any = None

    @model_validator(mode="after")
    def _value_shape(self) -> Rule:
        if self.op == "exists":
            if self.value not in (None, True, False):
                raise ValueError("'exists' takes true, false or no value")
        elif self.op in ("in", "not_in"):
            if not isinstance(self.value, list) or not self.value:
                raise ValueError(f"'{self.op}' takes a non-empty list")
        elif self.op == "between":
            if not isinstance(self.value, list) or len(self.value) != 2:
                raise ValueError("'between' takes a list of two bounds [low, high]")
        elif self.value is None or isinstance(self.value, list | dict):
            raise ValueError(f"'{self.op}' takes a single value")
        return self


class Filters(_Strict):
    states: tuple[str, ...] | None = None
    zips: tuple[str, ...] | None = None
    radius: Radius | None = None
    rules: tuple[Rule, ...] = ()

    @field_validator("states")
    @classmethod
    def _known_states(cls, states: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if states is None:
            return None
        upper = tuple(s.upper() for s in states)
        unknown = [s for s in upper if s not in US_STATES]
        if unknown:
            raise ValueError(f"unknown state code(s): {', '.join(unknown)}")
        return upper

    @field_validator("zips")
    @classmethod
    def _zip_patterns(cls, zips: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for z in zips or ():
            if not re.fullmatch(r"\d{5}|\d{1,4}\*", z):
                raise ValueError(f"zip pattern {z!r} must be 5 digits or a prefix ending in '*'")
        return zips


_HOURS = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


class Schedule(_Strict):
    tz: str = "UTC"
    days: tuple[Weekday, ...] = WEEKDAYS
    hours: str = "00:00-24:00"

    @field_validator("tz")
    @classmethod
    def _known_tz(cls, tz: str) -> str:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {tz!r}") from exc
        return tz

    @field_validator("hours")
    @classmethod
    def _hours_window(cls, hours: str) -> str:
        m = _HOURS.match(hours)
        if not m:
            raise ValueError("hours must look like '08:00-20:00'")
        start = int(m[1]) * 60 + int(m[2])
        end = int(m[3]) * 60 + int(m[4])
        if start >= end or end > 24 * 60:
            raise ValueError("hours must be an increasing window within one day")
        return hours

    @property
    def window_minutes(self) -> tuple[int, int]:
        """(start, end) minutes after local midnight; end is exclusive."""
        m = _HOURS.match(self.hours)
        assert m is not None
        return int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])


class Caps(_Strict):
    hourly: int | None = Field(None, ge=0)
    daily: int | None = Field(None, ge=0)
    weekly: int | None = Field(None, ge=0)
    monthly: int | None = Field(None, ge=0)
    daily_budget: Cents | None = None
    monthly_budget: Cents | None = None

    @property
    def empty(self) -> bool:
        return all(v is None for v in self.model_dump().values())


class Campaign(_Strict):
    id: Ident
    vertical: Ident
    tier: int = Field(1, ge=1, le=100)
    weight: int = Field(1, ge=1, le=1000)
    price: Cents | None = None
    filters: Filters = Filters()
    schedule: Schedule | None = None
    caps: Caps = Caps()
    paused: bool = False

    @property
    def tz(self) -> str:
        """The zone that counts the campaign's days and hours (its schedule's, else UTC)."""
        return self.schedule.tz if self.schedule else "UTC"


class Buyer(_Strict):
    id: Ident
    name: str | None = None
    secret: str = Field(min_length=8)
    ping_url: str | None = Field(None, pattern=r"^https?://")
    post_url: str = Field(pattern=r"^https?://")
    timeout_ms: int = Field(250, ge=1, le=10_000)
    campaigns: tuple[Campaign, ...] = ()

    @model_validator(mode="after")
    def _post_only_has_price(self) -> Buyer:
        if self.ping_url is None:
            for c in self.campaigns:
                if c.price is None:
                    raise ValueError(
                        f"campaign {c.id!r}: a post-only buyer (no ping_url) needs a fixed 'price'"
                    )
        return self


class Config(_Strict):
    settings: ExchangeSettings = ExchangeSettings()
    verticals: dict[Ident, Vertical] = Field(default_factory=dict)
    publishers: tuple[Publisher, ...] = ()
    buyers: tuple[Buyer, ...] = ()
