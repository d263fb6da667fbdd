"""The ping phase: every eligible campaign pinged at once, ended by one timer.

``asyncio.wait(..., timeout=)`` ends the phase whatever the sockets do; what has not
answered is a timeout and its task is cancelled without being awaited (awaiting
cancelled children under load is what made ``asyncio.timeout`` around ``gather`` slow).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from exchange.auction.types import Reason
from exchange.buyers.protocol import PingAnswer, ping_body, read_ping_answer
from exchange.buyers.signing import signed_headers
from exchange.catalog import Target
from exchange.transport import Transport, TransportError


@dataclass(frozen=True, slots=True)
class PingRequest:
    target: Target
    timeout_ms: int
    ping_id: str


@dataclass(frozen=True, slots=True)
class PingResult:
    target: Target
    ping_id: str
    answer: PingAnswer
    latency_ms: float | None

    @property
    def outcome(self) -> Reason:
        return self.answer.outcome


def ping_timings(results: Iterable[PingResult]) -> Iterator[tuple[str, float | None]]:
    """The buyer of each ping and how long its answer took (None: it timed out); a ping
    that failed before it was timed says nothing and is left out."""
    for r in results:
        if r.answer.outcome is Reason.TIMEOUT:
            yield r.target.buyer.id, None
        elif r.latency_ms is not None:
            yield r.target.buyer.id, r.latency_ms


class PingJudge(Protocol):
    """Told each lead's ping timings; says whether they show this worker congested (its
    buyers answering late because of us, not of them). Admission is the one in use."""

    def heard(self, pings: Iterable[tuple[str, float | None]], tmax_ms: float) -> bool: ...


@dataclass(frozen=True, slots=True)
class LeadPingView:
    """What a ping may show of a lead: no name, email, phone or street, ever."""

    vertical: str
    exclusive: bool
    test: bool
    state: str
    zip5: str
    profile: Mapping[str, Any]


class PingIds:
    """One lead's ping ids: random UUID4s as hex, all drawn from one ``getrandom`` call.

    ``uuid.uuid4()`` per campaign cost ~8 µs each here (a syscall, a UUID object and its
    hex), about 1% of a lead's CPU with ten buyers; this is ~1.5 µs an id.
    """

    __slots__ = ("_at", "_raw")

    def __init__(self, expected: int) -> None:
        self._raw = bytearray(os.urandom(16 * max(expected, 1)))
        self._at = 0

    def __call__(self) -> str:
        at = self._at
        if at + 16 > len(self._raw):
            self._raw += os.urandom(16 * 8)  # more campaigns than expected
        raw = self._raw
        raw[at + 6] = (raw[at + 6] & 0x0F) | 0x40  # version 4
        raw[at + 8] = (raw[at + 8] & 0x3F) | 0x80  # the RFC 4122 variant
        self._at = at + 16
        return raw[at : at + 16].hex()


async def ping_all(
    transport: Transport, requests: Sequence[PingRequest], lead: LeadPingView, phase_ms: float
) -> list[PingResult]:
    """Ping every request concurrently; the phase ends after ``phase_ms`` at the latest."""
    if not requests:
        return []
    tasks = {asyncio.ensure_future(_ping_one(transport, req, lead)): req for req in requests}
    started = time.perf_counter()
    done, pending = await asyncio.wait(tasks, timeout=phase_ms / 1000)
    results: list[PingResult] = []
    for task in done:
        results.append(task.result())
    late_ms = (time.perf_counter() - started) * 1000
    for task in pending:
        task.cancel()
        req = tasks[task]
        results.append(
            PingResult(
                req.target,
                req.ping_id,
                PingAnswer(Reason.TIMEOUT, reason="no answer by tmax"),
                late_ms,
            )
        )
    return results


async def _ping_one(transport: Transport, req: PingRequest, lead: LeadPingView) -> PingResult:
    target = req.target
    assert target.buyer.ping_url is not None
    try:
        body = ping_body(
            ping_id=req.ping_id,
            campaign_id=target.campaign.id,
            vertical=lead.vertical,
            exclusive=lead.exclusive,
            tmax_ms=req.timeout_ms,
            test=lead.test,
            state=lead.state,
            zip5=lead.zip5,
            ping_profile=lead.profile,
        )
        headers = signed_headers(target.buyer.secret, body)
        reply = await transport.post(target.buyer.ping_url, body, headers, req.timeout_ms / 1000)
        answer = read_ping_answer(reply.status, reply.body)
    except TransportError as exc:
        outcome = Reason.TIMEOUT if exc.failure == "timeout" else Reason.ERROR
        return PingResult(
            target, req.ping_id, PingAnswer(outcome, reason=exc.detail), exc.latency_ms
        )
    except Exception as exc:  # a bug or an unforeseen answer in one ping must not sink the others
        return PingResult(
            target, req.ping_id, PingAnswer(Reason.ERROR, reason=repr(exc)[:200]), None
        )
    return PingResult(target, req.ping_id, answer, reply.latency_ms)
