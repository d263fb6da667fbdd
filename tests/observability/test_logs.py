"""JSON log lines carry the lead id and never an email or a phone number."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from exchange.observability.logs import bind_lead, configure_logging, lead_id_var, scrub_text

EMAIL = "ada.lovelace@example.com"
PHONES = ["+14155550100", "(415) 555-0100", "415-555-0100", "+44 20 7946 0958"]


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Our handler on a buffer; the root logger's previous state is restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buffer = io.StringIO()
    configure_logging("DEBUG", json=True, stream=buffer)
    yield buffer
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in buffer.getvalue().splitlines()]


def test_lines_are_json_with_base_and_extra_fields(stream: io.StringIO) -> None:
    logging.getLogger("exchange.test").info(
        "auction %s", "done", extra={"bids": 3, "vertical": "auto_insurance"}
    )
    (line,) = lines(stream)
    assert line["msg"] == "auction done" and line["level"] == "INFO"
    assert line["logger"] == "exchange.test" and line["ts"].endswith("Z")
    assert line["bids"] == 3 and line["vertical"] == "auto_insurance"
    assert "lead_id" not in line


def test_no_email_or_phone_reaches_the_output(stream: io.StringIO) -> None:
    log = logging.getLogger("exchange.test")
    extra = {
        "contact": {"email": EMAIL, "note": f"call {PHONES[1]}"},
        "raw": f"{EMAIL} / {PHONES[0]}",
        "phones": PHONES,
        "digits": 4155550100,
        "lead_ref": "550e8400-e29b-41d4-a716-446655440000",
        "count": 1718000000,
    }
    log.warning("got %s from %s", EMAIL, PHONES[2], extra=extra)
    try:
        raise ValueError(f"bad phone {PHONES[0]} for {EMAIL}")
    except ValueError:
        log.exception("failed")
    output = stream.getvalue()
    assert EMAIL not in output and "@" not in output
    for digits in ("4155550100", "415) 555", "555-0100", "7946"):
        assert digits not in output
    first, second = lines(stream)
    assert first["msg"] == "got [email] from [phone]"
    assert first["lead_ref"] == extra["lead_ref"] and first["count"] == 1718000000
    assert "ValueError: bad phone [phone] for [email]" in second["exc"]


async def test_lead_id_is_on_every_line_inside_bind_lead(stream: io.StringIO) -> None:
    log = logging.getLogger("exchange.test")
    log.info("before")
    with bind_lead("lead-42"):
        log.info("inside")
        # Tasks started inside inherit the binding, as the ping fan-out does.
        await asyncio.create_task(_log_later(log))
    log.info("after")
    by_msg = {line["msg"]: line for line in lines(stream)}
    assert by_msg["inside"]["lead_id"] == "lead-42"
    assert by_msg["in task"]["lead_id"] == "lead-42"
    assert "lead_id" not in by_msg["before"] and "lead_id" not in by_msg["after"]
    assert lead_id_var.get() is None


async def _log_later(log: logging.Logger) -> None:
    await asyncio.sleep(0)
    log.info("in task")


def test_text_mode_is_scrubbed_too() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buffer = io.StringIO()
    try:
        configure_logging("INFO", json=False, stream=buffer)
        with bind_lead("lead-7"):
            logging.getLogger("exchange.test").info("to %s", EMAIL, extra={"phone": "x"})
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    text = buffer.getvalue()
    assert "INFO" in text and "to [email]" in text and "lead_id=lead-7" in text
    assert EMAIL not in text and "phone=[redacted]" in text


def test_scrub_leaves_ordinary_text_alone() -> None:
    for text in ("price 12.50 for 3 bids", "at 2024-06-01 12:00:00", "id 9f8e7d6c5b4a39281706"):
        assert scrub_text(text) == text
