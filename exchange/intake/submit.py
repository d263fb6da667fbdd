"""A publisher's lead from request body to answer: the whole intake path in one call.

validate → claim idempotency → consent → dedupe → auction → record → answer. The route
only maps the result to HTTP; everything the publisher relies on happens here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import orjson
from redis.exceptions import RedisError

from exchange.auction.deadline import Deadline
from exchange.auction.outcome import Outcome, Progress
from exchange.auction.sell import Screening, begin_screening, sell
from exchange.catalog import Catalog
from exchange.catalog.models import Publisher
from exchange.intake.guard import Claim, Dedupe
from exchange.intake.held import UNRECORDED, give_back, log_held, release_claims, saved_anyway
from exchange.intake.lead import FieldError, Lead
from exchange.intake.validate import Invalid, parse_lead
from exchange.money import fmt
from exchange.observability import record
from exchange.observability.logs import bind_lead
from exchange.runtime import Runtime
from exchange.store.db import UNAVAILABLE
from exchange.store.leads import answer_of, find_answer, save_lead

log = logging.getLogger(__name__)
T = TypeVar("T")
_POSTGRES_RESERVE_MS = 100
# A repeat's read of the first answer fails soft on these (TimeoutError: asyncpg's own).
_READ_FAILS: tuple[type[Exception], ...] = (*UNAVAILABLE, TimeoutError)


@dataclass(frozen=True, slots=True)
class Answer:
    body: dict[str, Any]
    repeat: bool = False


async def submit_lead(
    rt: Runtime, publisher: Publisher, raw: bytes, idempotency_key: str | None, arrival: float
) -> Answer:
    """Run one lead; raises ``Invalid`` for bad input (nothing is stored then)."""
    catalog = rt.catalog
    deadline = Deadline(catalog.settings.deadline_ms, started=arrival)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Invalid([FieldError("(body)", f"not valid JSON: {exc}")]) from None
    lead = parse_lead(
        body,
        publisher_id=publisher.id,
        verticals=catalog.verticals,
        received_at=datetime.now(UTC),
        idempotency_key=idempotency_key,
        raw=raw,
    )
    keys = rt.guard.idempotency_keys(publisher.id, lead.external_id, idempotency_key)
    # The read of its campaigns' caps runs beside the Redis claim, for a lead that can
    # reach an auction (a repeat or a duplicate wastes that one read). Started first: if
    # screening raises, no backstop read is left running unobserved.
    screening = begin_screening(rt.auction, catalog, lead) if _consented(lead) else None
    # So does the Postgres backstop, read only if this request turns out first: one round
    # trip less on the path of every lead with an id.
    backstop = asyncio.ensure_future(_stored_answer(rt, lead)) if keys else None
    try:
        return await _claim_and_run(
            rt, catalog, publisher, lead, keys, deadline, backstop, screening
        )
    finally:
        if screening is not None:
            _abandon(rt, screening.capped)  # a no-op once the auction has read it


async def _claim_and_run(
    rt: Runtime,
    catalog: Catalog,
    publisher: Publisher,
    lead: Lead,
    keys: list[str],
    deadline: Deadline,
    backstop: asyncio.Future[dict[str, Any] | None] | None,
    screening: Screening | None,
) -> Answer:
    try:
        # No Redis call without keys; with them, the phone and email are checked too.
        claiming = rt.guard.claim(keys, lead.lead_id, _dedupe_of(lead, catalog))
        claim = await (_timed("redis", "claim", claiming) if keys else claiming)
    except BaseException:
        _abandon(rt, backstop)
        if keys:
            # The script may have run before its reply was lost: give back what it took
            # for this lead, or its retry would hear "pending" for the claim's whole TTL.
            rt.after_answer(release_claims(rt, keys, lead))
        raise
    if not claim.first:
        _abandon(rt, backstop)
        return Answer(await _earlier_answer(rt, lead, keys, claim, deadline), repeat=True)
    with bind_lead(lead.lead_id):
        progress = Progress()
        try:
            if backstop is not None:
                stored = await backstop
                if stored is not None:
                    rt.after_answer(_restore(rt, keys, lead, claim, stored))
                    return Answer(stored, repeat=True)
            progress.mark("claimed", deadline.elapsed_ms())
            answer = await _run(rt, catalog, publisher, lead, deadline, progress, claim, screening)
        except BaseException as exc:
            held = await asyncio.shield(give_back(rt, keys, lead, progress))
            if held is not None and isinstance(exc, Exception):
                return Answer(held)  # a buyer may have it: pending, as its repeats hear
            raise
        if keys and not progress.saved:
            # Held, so Postgres has no answer for its repeats: Redis keeps it, off the
            # answer path (repeats that arrive before it lands wait for it). A saved lead's
            # answer was saved with it, where its repeats read it.
            rt.after_answer(_finish(rt, keys, answer))
        return Answer(answer)


def _dedupe_of(lead: Lead, catalog: Catalog) -> Dedupe | None:
    """What the lead's dedupe would take, or None when it is skipped: no consent (rejected
    before dedupe, so a consented retry is not its duplicate) or dedupe off."""
    days = catalog.verticals[lead.vertical].dedupe_days
    if days <= 0 or not _consented(lead):
        return None
    return Dedupe(lead.vertical, lead.phone, lead.email, days, lead.test)


def _consented(lead: Lead) -> bool:
    return lead.consent.get("tcpa") is True


def _abandon(rt: Runtime, task: asyncio.Future[Any] | None) -> None:
    """Let a backstop read finish unobserved (cancelling asyncpg mid-query costs more);
    the runtime still waits for it before closing the pool."""
    if task is None:
        return
    if task.done():  # already read (a sold lead's cap read): nothing left to wait for
        _observe(task)
        return
    task.add_done_callback(_observe)
    rt.track(task)


def _observe(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as lost


async def _finish(rt: Runtime, keys: list[str], answer: dict[str, Any]) -> bool:
    """Keep the answer in Redis for repeats (retried once); if that fails, the claim stays
    pending and repeats hear "pending" after waiting: never a second auction."""
    for attempt in (1, 2):
        try:
            await _timed("redis", "finish", rt.guard.finish(keys, answer))
            return True
        except (RedisError, OSError):
            if attempt == 1:
                await asyncio.sleep(0.05)
    record.store_error("redis", "finish")
    log.warning("answer not stored for repeats", extra={"lead_id": answer.get("lead_id")})
    return False


async def _restore(
    rt: Runtime, keys: list[str], lead: Lead, claim: Claim, stored: dict[str, Any]
) -> None:
    """Redis had lost the claim and Postgres had the lead: put its answer back in place of
    this request's pending claim, and hand the phone and email the claim took to the lead
    that has them (this request's id never runs: nothing could be a duplicate of it)."""
    if claim.deduped and claim.earlier is None:
        with contextlib.suppress(RedisError, OSError):
            await rt.guard.hand_over_duplicate(
                lead.vertical, lead.phone, lead.email, lead.lead_id, stored["lead_id"], lead.test
            )
    if not await _finish(rt, keys, stored):
        # Free the claim rather than leave it pending: the next repeat reads Postgres.
        with contextlib.suppress(RedisError, OSError):
            await rt.guard.release(keys, lead.lead_id)


async def _run(
    rt: Runtime,
    catalog: Catalog,
    publisher: Publisher,
    lead: Lead,
    deadline: Deadline,
    progress: Progress,
    claim: Claim,
    screening: Screening | None,
) -> dict[str, Any]:
    # One catalog for the whole lead: a reload mid-lead must not mix two configs.
    vertical = catalog.verticals[lead.vertical]
    if screening is None:  # no consent: it never reaches an auction
        outcome = Outcome("rejected", "consent.tcpa must be true: no consent, no sale")
    else:
        if claim.deduped:
            earlier = claim.earlier
        else:
            checking = rt.guard.check_duplicate(
                lead.vertical, lead.phone, lead.email, lead.lead_id, vertical.dedupe_days, lead.test
            )
            timed = vertical.dedupe_days > 0  # 0 turns dedupe off: no Redis call to time
            earlier = await (_timed("redis", "dedupe", checking) if timed else checking)
        if earlier is not None:
            outcome = Outcome(
                "duplicate",
                f"same phone or email as lead {earlier} within {vertical.dedupe_days} days",
            )
        else:
            outcome = await sell(
                rt.auction, catalog, publisher, lead, deadline, progress, screening
            )
    duration_ms = round(deadline.elapsed_ms())
    answer = _answer(lead, outcome)
    try:
        await _save(rt, lead, outcome, vertical.exclusive, duration_ms, answer, progress.timeline)
        progress.saved = True
    except Exception:
        if await saved_anyway(rt, lead):  # it committed; only the reply was lost
            progress.saved = True
        elif not outcome.posts:
            raise  # no buyer has seen it: the publisher hears the failure and may retry
        else:
            log_held(lead, outcome.posts)
            outcome = dataclasses.replace(outcome, status="pending", reason=UNRECORDED, sales=[])
            answer = _answer(lead, outcome)
    record.lead_done(lead, outcome, duration_ms / 1000)
    log.info(
        "lead answered",
        extra={
            "status": outcome.status,
            "vertical": lead.vertical,
            "publisher_id": lead.publisher_id,
            "duration_ms": duration_ms,
            "sales": len(outcome.sales),
            "test": lead.test,
            "revenue_cents": 0 if lead.test else outcome.revenue_cents,
        },
    )
    return answer


def _answer(lead: Lead, outcome: Outcome) -> dict[str, Any]:
    """What the publisher hears, and every repeat of the lead after it."""
    answer: dict[str, Any] = {
        "lead_id": lead.lead_id,
        "status": outcome.status,
        "payout": fmt(0 if lead.test else outcome.payout_cents),
    }
    if outcome.reason:
        answer["reason"] = outcome.reason
    return answer


async def _save(
    rt: Runtime,
    lead: Lead,
    outcome: Outcome,
    exclusive: bool,
    duration_ms: int,
    answer: dict[str, Any],
    timeline: dict[str, float],
) -> None:
    """Record the lead and its story in one transaction; retried once on a lost connection,
    because a buyer may already hold the lead and the sale must not go unrecorded."""
    for attempt in (1, 2):
        try:
            # Timed with the wait for a pool connection, as Redis calls are with theirs.
            saving = _save_once(rt, lead, outcome, exclusive, duration_ms, answer, timeline)
            await _timed("postgres", "save", saving)
            return
        except (asyncpg.PostgresConnectionError, OSError):
            if attempt == 2:
                log.exception("lead could not be recorded", extra={"status": outcome.status})
                raise
            await asyncio.sleep(0.05)


async def _save_once(
    rt: Runtime,
    lead: Lead,
    outcome: Outcome,
    exclusive: bool,
    duration_ms: int,
    answer: dict[str, Any],
    timeline: dict[str, float],
) -> None:
    async with rt.pool.acquire() as conn:
        await save_lead(
            conn,
            lead,
            outcome,
            exclusive=exclusive,
            duration_ms=duration_ms,
            answer=answer,
            timeline=timeline,
        )


async def _stored_answer(rt: Runtime, lead: Lead) -> dict[str, Any] | None:
    """Redis had no claim: make sure Postgres has not seen this lead either (keys expire)."""
    return await _timed("postgres", "backstop", _find_answer(rt, lead))


async def _find_answer(rt: Runtime, lead: Lead) -> dict[str, Any] | None:
    async with rt.pool.acquire() as conn:
        return await find_answer(conn, lead.publisher_id, lead.external_id, lead.idempotency_key)


async def _earlier_answer(
    rt: Runtime, lead: Lead, keys: list[str], claim: Claim, deadline: Deadline
) -> dict[str, Any]:
    """The first request's answer: saved with its lead in Postgres, or (held) in Redis;
    waited for while the first request runs, as long as the deadline allows."""
    if claim.answer is not None:
        return claim.answer
    first_id = claim.lead_id
    # Leave time to ask Postgres by external id if the first request never answers. One
    # timer bounds the wait: a full pool or a stalled Postgres cannot hold a repeat.
    wait_s = max(0.0, deadline.remaining_ms() - _POSTGRES_RESERVE_MS) / 1000
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait_s):
            delay = 0.005
            while True:
                if first_id is not None:
                    saved = await _saved_answer(rt, first_id)
                    if saved is not None:
                        return saved
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)  # a retry storm must not crowd out the saves
                now = await rt.guard.peek(keys)  # a held lead's answer, or who holds it now
                if now.answer is not None:
                    return now.answer
                first_id = now.lead_id or first_id
    # Its worker died or could not save it: if the lead was recorded after all, Postgres
    # has the answer; otherwise it is honestly still pending. Bounded too: a full pool
    # must not hold the repeat past its deadline (not knowing is "pending").
    stored = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_POSTGRES_RESERVE_MS / 1000):
            stored = await _stored_answer(rt, lead)
    if stored is not None:
        return stored
    return {
        "lead_id": first_id,
        "status": "pending",
        "payout": "0.00",
        "reason": "the first request with this id is still running",
    }


async def _saved_answer(rt: Runtime, lead_id: str) -> dict[str, Any] | None:
    """The first lead's saved answer, or None: not saved yet, or Postgres not answering
    (then Redis may still hold a held lead's answer, which the wait reads next)."""
    try:
        return await _timed("postgres", "repeat", _answer_of(rt, lead_id))
    except _READ_FAILS:
        record.store_error("postgres", "repeat")
        return None


async def _answer_of(rt: Runtime, lead_id: str) -> dict[str, Any] | None:
    async with rt.pool.acquire() as conn:
        return await answer_of(conn, lead_id)


async def _timed(store: str, op: str, call: Awaitable[T]) -> T:
    """Await a store call and record how long it took (``exchange_store_duration_seconds``)."""
    started = time.perf_counter()
    try:
        return await call
    finally:
        record.store_time(store, op, time.perf_counter() - started)
