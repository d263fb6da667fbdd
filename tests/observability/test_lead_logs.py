"""The logs of real leads: JSON lines that name the lead, and never its phone or email.

Leads of every ending (sold, unsold, duplicate, rejected, test) run through a real
exchange while every logger of the process writes JSON into a captured stream.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest

from exchange.observability.logs import configure_logging
from tests.kit.buyers import Buyer
from tests.kit.exchange import (
    PUB2_KEY,
    RunningExchange,
    buyer_entry,
    lead_body,
    make_config,
    start_exchange,
)

# One person per lead, each phone written the way a publisher might send it.
PEOPLE = [
    ("(415) 555-0132", "Grace.Hopper@Example.org", "4155550132"),
    ("+1 415 555 0171", "alan_turing+leads@example.net", "4155550171"),
    ("415.555.0199", "KATHERINE.JOHNSON@EXAMPLE.COM", "4155550199"),
    ("+14155550143", "edsger@dijkstra.example", "4155550143"),
]


def phone_spellings(digits: str) -> list[str]:
    """Ways ten US digits can appear in text: a line holding any of them leaks the phone."""
    area, exchange, line = digits[:3], digits[3:6], digits[6:]
    return [
        digits,
        "1" + digits,
        f"{area}-{exchange}-{line}",
        f"{area}.{exchange}.{line}",
        f"{area}) {exchange}-{line}",
        f"{area} {exchange} {line}",
        f"{exchange}-{line}",
        f"{exchange}{line}",
    ]


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every record of the process as JSON into a buffer; the logging setup restored after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging("DEBUG", json=True, stream=stream)
    yield stream
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.fixture
async def exchange(
    pg_dsn: str, redis_url: str, redis_prefix: str, redis_client: Any, captured: io.StringIO
) -> AsyncIterator[tuple[RunningExchange, Buyer]]:
    good = await Buyer("logs-good", "secret-logs-good", price="15.00").start()
    junk = await Buyer("logs-junk", "secret-logs-junk", price=40, ping_mode="error500").start()
    ex = await start_exchange(
        make_config([buyer_entry(good), buyer_entry(junk)]), pg_dsn, redis_url, redis_prefix
    )
    yield ex, good
    await ex.close()
    await good.close()
    await junk.close()


def lead_for(phone: str, email: str, **overrides: Any) -> dict[str, Any]:
    body = lead_body(**overrides)
    body["contact"] = {**body["contact"], "phone": phone, "email": email}
    return body


async def answer(
    ex: RunningExchange, body: dict[str, Any], key: str | None = None
) -> dict[str, Any]:
    resp = await (ex.submit(body) if key is None else ex.submit(body, key))
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


async def test_lead_lines_carry_the_lead_id_and_no_contact_data(
    exchange: tuple[RunningExchange, Buyer], captured: io.StringIO
) -> None:
    ex, good = exchange
    (p1, e1, _), (p2, e2, _), (p3, e3, _), (p4, e4, _) = PEOPLE
    answers = [
        await answer(ex, lead_for(p1, e1)),
        await answer(ex, lead_for(p2, e2, consent={"tcpa": False})),
        await answer(ex, lead_for(p1.replace(" ", ""), e3)),  # p1 again: a duplicate
        await answer(ex, lead_for(p4, e4, test=True), PUB2_KEY),
    ]
    good.ping_mode = "no_bid"
    answers.append(await answer(ex, lead_for(p3, "ada.byron@example.com", profile={"age": 40})))
    bad = await ex.submit(lead_for(p2, "not-an-email " + e2, profile={"age": 200}))
    assert bad.status_code == 422
    assert [a["status"] for a in answers] == ["sold", "rejected", "duplicate", "sold", "unsold"]

    text = captured.getvalue()
    lines = [orjson.loads(line) for line in text.splitlines()]
    for a in answers:
        about = [line for line in lines if line.get("lead_id") == a["lead_id"]]
        answered = [line for line in about if line["msg"] == "lead answered"]
        assert len(answered) == 1, (a, about)
        assert answered[0]["status"] == a["status"] and answered[0]["level"] == "INFO"
        mentions = [line for line in lines if a["lead_id"] in orjson.dumps(line).decode()]
        assert all(line.get("lead_id") == a["lead_id"] for line in mentions), mentions

    lowered = text.lower()
    secrets = [e.lower() for _, e, _ in PEOPLE] + ["ada.byron@example.com", "not-an-email"]
    secrets += [s for _, _, digits in PEOPLE for s in phone_spellings(digits)]
    leaked = [s for s in secrets if s in lowered]
    assert not leaked, f"contact data in the logs: {leaked}"
    assert not re.search(r"[\w.+-]+@[\w-]+\.[\w.]+", text), "an email address in the logs"
