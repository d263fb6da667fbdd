"""Structured logs: one JSON object per line, the current lead's id on each, no contact data.

Every line has ``ts``, ``level``, ``logger``, ``msg``, the ``extra`` fields of the call and,
inside :func:`bind_lead`, ``lead_id``. We never log emails or phone numbers on purpose; the
scrubber masks anything that looks like one anyway (defence in depth), in the message,
the extras and tracebacks alike.

Usage::

    configure_logging("INFO", json=True)
    with bind_lead(lead_id):
        log.info("auction done", extra={"bids": 3, "vertical": "auto_insurance"})
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
import phonenumbers

lead_id_var: ContextVar[str | None] = ContextVar("lead_id", default=None)

EMAIL_MASK = "[email]"
PHONE_MASK = "[phone]"
REDACTED = "[redacted]"
# Contact fields whose values are masked whatever they look like.
SENSITIVE_KEYS = frozenset(
    {"email", "phone", "phone_number", "first_name", "last_name", "address", "street"}
)

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
# A candidate: an optional "+" and 7-15 digits with single separators, not inside a word
# (so hex ids and UUID parts never qualify); phonenumbers then decides.
_PHONE_CANDIDATE = re.compile(
    r"(?<![\w+.-])\+?\(?\d(?:(?:[ .-]?\(|\)[ .-]?|[ .-])?\d){6,14}(?![\w@])"
)
_DATE_LIKE = re.compile(r"\d{4}-\d\d-\d\d")
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


@contextmanager
def bind_lead(lead_id: str) -> Iterator[None]:
    """Tag every line logged inside (and in tasks started inside) with ``lead_id``."""
    token = lead_id_var.set(lead_id)
    try:
        yield
    finally:
        lead_id_var.reset(token)


def _looks_like_phone(candidate: str) -> bool:
    if _DATE_LIKE.match(candidate):
        return False
    try:
        number = phonenumbers.parse(candidate, "US")
    except phonenumbers.NumberParseException:
        return False
    # "+..." is how we store phones (E.164): mask whatever could be one.
    if candidate.startswith("+"):
        return bool(phonenumbers.is_possible_number(number))
    return bool(phonenumbers.is_valid_number(number))


def _mask_phone(match: re.Match[str]) -> str:
    return PHONE_MASK if _looks_like_phone(match.group(0)) else match.group(0)


def scrub_text(text: str) -> str:
    """``text`` with emails and phone numbers masked."""
    if "@" in text:
        text = _EMAIL.sub(EMAIL_MASK, text)
    return _PHONE_CANDIDATE.sub(_mask_phone, text)


def scrub(value: Any) -> Any:
    """A JSON-ready copy of ``value`` with contact data masked at any depth."""
    if isinstance(value, str):
        return scrub_text(value)
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return PHONE_MASK if _looks_like_phone(str(value)) else value
    if isinstance(value, Mapping):
        return {
            str(k): REDACTED if str(k).lower() in SENSITIVE_KEYS else scrub(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub(v) for v in value]
    return scrub_text(str(value))


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One scrubbed JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(self.fields(record), default=str).decode()

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """The line as a dict: base fields, ``lead_id``, extras, then any traceback."""
        extras = {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}
        lead_id = lead_id_var.get()
        if lead_id is not None:
            extras.setdefault("lead_id", lead_id)
        line: dict[str, Any] = scrub(extras)
        # Base fields last, so an extra cannot pass itself off as one of them.
        line.update(
            ts=_timestamp(record),
            level=record.levelname,
            logger=record.name,
            msg=scrub_text(record.getMessage()),
        )
        if record.exc_info:
            line["exc"] = scrub_text(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = scrub_text(self.formatStack(record.stack_info))
        return line


class TextFormatter(JsonFormatter):
    """The same scrubbed fields as a readable line, for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        line = self.fields(record)
        head = f"{line.pop('ts')} {line.pop('level'):<8} {line.pop('logger')}: {line.pop('msg')}"
        tail = line.pop("exc", None)
        pairs = " ".join(f"{k}={v}" for k, v in line.items())
        text = f"{head} {pairs}" if pairs else head
        return f"{text}\n{tail}" if tail else text


class _ExchangeHandler(logging.StreamHandler[TextIO]):
    """Marks the handler we installed, so configuring again replaces it."""


def configure_logging(
    level: str = "INFO", json: bool = True, *, stream: TextIO | None = None
) -> None:
    """Send every logger's records, uvicorn's included, through one scrubbing handler."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ExchangeHandler)]:
        root.removeHandler(old)
    handler = _ExchangeHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn installs its own plain handlers; route its lines through ours instead.
    for name in _UVICORN_LOGGERS:
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    logging.captureWarnings(True)
