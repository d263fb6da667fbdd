"""A lead after intake: validated, normalized, and ready to route."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class FieldError:
    """One bad input field, named by its dotted path in the request body."""

    field: str
    message: str


@dataclass(slots=True)
class Lead:
    lead_id: str
    publisher_id: str
    vertical: str
    external_id: str | None
    idempotency_key: str | None
    test: bool
    received_at: datetime
    phone: str  # E.164
    email: str | None  # lowercased
    state: str
    zip5: str
    contact: dict[str, Any]
    profile: dict[str, Any]
    ping_profile: dict[str, Any]
    consent: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def sub_id(self) -> str | None:
        value = self.source.get("sub_id")
        return str(value) if value is not None else None

    def full(self) -> dict[str, Any]:
        """The whole lead as posted to a winning buyer."""
        return {
            "contact": self.contact,
            "profile": self.profile,
            "consent": self.consent,
            "source": self.source,
        }
