"""Realistic, varied publisher leads (SPEC §3), each with its own phone, email and external id.

Lead ``i`` of a run is a pure function of ``(run_id, i)``, so a multi-process generator
builds disjoint leads without talking to itself. Phones are unique within a run by
construction (a bijection of ``i``), so dedupe never fires on the generator's own leads.

Usage::

    make_lead = LeadFactory("auto_insurance")
    body = make_lead(0)   # {"vertical": "auto_insurance", "external_id": "lt-…-0", …}
"""

from __future__ import annotations

import hashlib
import random
import secrets
from dataclasses import dataclass, field
from typing import Any

# (city, state, zip, area code): real, consistent places, weighted to where buyers buy.
LOCATIONS: tuple[tuple[str, str, str, str], ...] = (
    ("San Francisco", "CA", "94105", "415"),
    ("San Francisco", "CA", "94110", "415"),
    ("Oakland", "CA", "94607", "510"),
    ("San Jose", "CA", "95112", "408"),
    ("Sacramento", "CA", "95814", "916"),
    ("Los Angeles", "CA", "90012", "213"),
    ("Los Angeles", "CA", "90028", "323"),
    ("San Diego", "CA", "92101", "619"),
    ("Fresno", "CA", "93721", "559"),
    ("Las Vegas", "NV", "89101", "702"),
    ("Reno", "NV", "89501", "775"),
    ("Portland", "OR", "97205", "503"),
    ("Seattle", "WA", "98101", "206"),
    ("Phoenix", "AZ", "85004", "602"),
    ("Tucson", "AZ", "85701", "520"),
    ("Denver", "CO", "80202", "303"),
    ("Austin", "TX", "78701", "512"),
    ("Houston", "TX", "77002", "713"),
    ("Dallas", "TX", "75201", "214"),
    ("Miami", "FL", "33131", "305"),
    ("Orlando", "FL", "32801", "407"),
    ("Atlanta", "GA", "30303", "404"),
    ("Chicago", "IL", "60601", "312"),
    ("New York", "NY", "10001", "212"),
    ("Brooklyn", "NY", "11201", "718"),
    ("Newark", "NJ", "07102", "973"),
    ("Boston", "MA", "02108", "617"),
    ("Philadelphia", "PA", "19103", "215"),
    ("Charlotte", "NC", "28202", "704"),
    ("Columbus", "OH", "43215", "614"),
)
FIRST_NAMES = (
    "Ada", "Grace", "Alan", "Linus", "Maria", "James", "Sofia", "Wei", "Priya", "Diego",
    "Fatima", "Noah", "Olivia", "Liam", "Emma", "Mateo", "Aisha", "Kenji", "Chloe", "Omar",
)  # fmt: skip
LAST_NAMES = (
    "Lovelace", "Hopper", "Turing", "Torvalds", "Garcia", "Smith", "Nguyen", "Patel", "Kim",
    "Johnson", "Martinez", "Brown", "Okafor", "Rossi", "Tanaka", "Cohen", "Silva", "Khan",
)  # fmt: skip
STREETS = ("Main St", "Oak Ave", "Market St", "Pine St", "Maple Dr", "Cedar Ln", "Elm St")
CARRIERS = ("State Farm", "GEICO", "Progressive", "Allstate", "USAA", "Liberty Mutual")
USER_AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/126.0 Mobile Safari/537.36",
)
TCPA_TEXT = (
    "By clicking Submit I agree to be contacted by up to 4 partners by phone, text and email, "
    "including by autodialer, about my request. Consent is not a condition of purchase."
)
# Exchange codes (NXX) a real US number can have: 2-9 first, no N11, not the fictional 555.
_NXX = tuple(n for n in range(200, 1000) if n % 100 != 11 and n != 555)
_PHONE_SPACE = len(_NXX) * 10_000
_PHONE_STRIDE = 1_000_003  # a prime, coprime with the space: i -> number is a bijection


def _profile(vertical: str, rng: random.Random) -> dict[str, Any]:
    credit = rng.choices(("excellent", "good", "fair", "poor"), (25, 40, 25, 10))[0]
    if vertical == "auto_insurance":
        return {
            "age": rng.randint(18, 80),
            "credit": credit,
            "vehicle_year": rng.randint(2005, 2026),
            "insured": rng.random() < 0.75,
            "current_carrier": rng.choice(CARRIERS),
        }
    if vertical == "mortgage":
        value = rng.randrange(150_000, 1_500_000, 5_000)
        return {
            "loan_amount": rng.randrange(60_000, int(value * 0.9), 1_000),
            "property_value": value,
            "loan_type": rng.choice(("purchase", "refinance", "heloc")),
            "credit": credit,
        }
    if vertical == "solar":
        return {
            "homeowner": rng.random() < 0.85,
            "monthly_bill": rng.randint(60, 450),
            "roof_shade": rng.choice(("none", "some", "heavy")),
        }
    if vertical == "debt":
        return {
            "debt_amount": rng.randrange(3_000, 80_000, 250),
            "debt_type": rng.choice(("credit_card", "medical", "personal_loan", "student")),
            "employed": rng.random() < 0.8,
        }
    return {}


@dataclass(frozen=True)
class LeadFactory:
    """Builds lead ``i`` of a run as a SPEC §3 request body. Picklable, for worker processes."""

    vertical: str = "auto_insurance"
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    test: bool = False

    def phone(self, i: int, area_code: str) -> str:
        nonce = int.from_bytes(hashlib.sha256(self.run_id.encode()).digest()[:8], "big")
        n = (nonce + i * _PHONE_STRIDE) % _PHONE_SPACE
        return f"+1{area_code}{_NXX[n // 10_000]}{n % 10_000:04d}"

    def __call__(self, i: int) -> dict[str, Any]:
        rng = random.Random(f"{self.run_id}:{i}")
        city, state, zip_code, area = rng.choice(LOCATIONS)
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        return {
            "vertical": self.vertical,
            "external_id": f"lt-{self.run_id}-{i}",
            "test": self.test,
            "contact": {
                "first_name": first,
                "last_name": last,
                "email": f"{first}.{last}.{self.run_id}.{i}@example.com".lower(),
                "phone": self.phone(i, area),
                "address": f"{rng.randint(1, 9999)} {rng.choice(STREETS)}",
                "city": city,
                "state": state,
                "zip": zip_code,
            },
            "profile": _profile(self.vertical, rng),
            "consent": {
                "tcpa": True,
                "text": TCPA_TEXT,
                "trustedform_cert_url": f"https://cert.trustedform.com/{rng.randbytes(20).hex()}",
                "jornaya_leadid": rng.randbytes(16).hex().upper(),
            },
            "source": {
                "sub_id": rng.choice(("fb-12", "google-3", "native-7", "email-1")),
                "ip": f"203.0.113.{rng.randint(1, 254)}",
                "user_agent": rng.choice(USER_AGENTS),
                "landing_page": f"https://quotes.example.com/{self.vertical}?v={rng.randint(1, 9)}",
            },
        }
