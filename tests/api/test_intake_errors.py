"""Bad input never reaches an auction and never earns a 5xx: each class of mistake gets a 4xx
``application/problem+json`` naming every bad field, and random bodies cannot break intake.

One exchange (and one database) serves the whole module: these requests are cheap and
each test checks the rows it could have changed before and after.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.kit.buyers import Buyer
from tests.kit.db import scratch_database
from tests.kit.exchange import (
    ADMIN,
    PUB_KEY,
    RunningExchange,
    buyer_entry,
    lead_body,
    make_config,
    start_exchange,
)
from tests.kit.records import count_rows

PROBLEM = "application/problem+json"
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
async def intake_db(pg_admin_dsn: str, pg_template: str) -> AsyncIterator[str]:
    async with scratch_database(pg_admin_dsn, "exchange_intake", pg_template) as dsn:
        yield dsn


@pytest.fixture(scope="module")
async def intake(intake_db: str, redis_url: str) -> AsyncIterator[tuple[RunningExchange, Buyer]]:
    """An exchange with one buyer that bids and accepts, so a valid lead is really sold."""
    prefix = f"t:{uuid.uuid4().hex[:12]}:"
    buyer = await Buyer("acme", "secret-acme-123", price=20).start()
    config = make_config([buyer_entry(buyer)], settings={"publisher_rate_per_second": 100_000})
    ex = await start_exchange(config, intake_db, redis_url, prefix)
    yield ex, buyer
    await ex.close()
    await buyer.close()
    client = aioredis.Redis.from_url(redis_url)
    keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def _problem(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM), resp.headers
    body: dict[str, Any] = resp.json()
    assert body["status"] == status and body["title"]
    return body


def _edit(**changes: Any) -> Callable[[dict[str, Any]], None]:
    """Set dotted paths in a lead; the value ``...`` deletes the path."""

    def apply(body: dict[str, Any]) -> None:
        for path, value in changes.items():
            *parents, last = path.split("__")
            node = body
            for part in parents:
                node = node[part]
            if value is ...:
                del node[last]
            else:
                node[last] = value

    return apply


BAD_LEADS: dict[str, tuple[Callable[[dict[str, Any]], None], set[str]]] = {
    "unknown vertical": (_edit(vertical="boat_insurance"), {"vertical"}),
    "missing contact": (_edit(contact=...), {"contact"}),
    "bad phone": (_edit(contact__phone="12345"), {"contact.phone"}),
    "bad email": (_edit(contact__email="ada@"), {"contact.email"}),
    "bad state": (_edit(contact__state="XX"), {"contact.state"}),
    "zip not in state": (_edit(contact__state="NY"), {"contact.zip"}),
    "unknown zip": (_edit(contact__zip="00000"), {"contact.zip"}),
    "missing required profile field": (_edit(profile__age=...), {"profile.age"}),
    "wrong type": (
        _edit(profile__age="thirty", profile__insured="yes", contact__first_name=5),
        {"profile.age", "profile.insured", "contact.first_name"},
    ),
    "out of range": (
        _edit(profile__age=12, profile__vehicle_year=2100),
        {"profile.age", "profile.vehicle_year"},
    ),
    "enum not in values": (_edit(profile__credit="superb"), {"profile.credit"}),
    "unknown profile field": (_edit(profile__shoe_size=44), {"profile.shoe_size"}),
    "unknown top-level field": (_edit(color="red"), {"color"}),
    "unknown contact field": (_edit(contact__ssn="123-45-6789"), {"contact.ssn"}),
    "bad top-level types": (
        _edit(test="yes", external_id=5, consent="x", profile__age=[34]),
        {"test", "external_id", "consent", "profile.age"},
    ),
    "every contact mistake at once": (
        _edit(contact__phone="call me", contact__email="a b@c", contact__state="ZZ"),
        {"contact.phone", "contact.email", "contact.state"},
    ),
}


async def _no_new_rows(ex: RunningExchange, dsn: str, send: Callable[[], Any]) -> Any:
    before = await count_rows(dsn, "leads")
    result = await send()
    assert await count_rows(dsn, "leads") == before, "bad input must store nothing"
    return result


@pytest.mark.parametrize("case", list(BAD_LEADS))
async def test_bad_lead_names_each_bad_field(
    intake: tuple[RunningExchange, Buyer], intake_db: str, case: str
) -> None:
    ex, buyer = intake
    edit, fields = BAD_LEADS[case]
    body = lead_body()
    edit(body)
    pings = len(buyer.pings)
    resp = await _no_new_rows(ex, intake_db, lambda: ex.submit(body))
    problem = _problem(resp, 422)
    named = {e["field"] for e in problem["errors"]}
    assert fields <= named, (fields, problem)
    assert all(e["message"] for e in problem["errors"])
    assert len(buyer.pings) == pings


@pytest.mark.parametrize(
    "raw", [b'{"vertical": ', b"[1, 2]", b"", b"\xff\xfe", b'"just a string"', b"null"]
)
async def test_body_that_is_not_a_json_object_is_422(
    intake: tuple[RunningExchange, Buyer], intake_db: str, raw: bytes
) -> None:
    ex, _ = intake
    resp = await _no_new_rows(ex, intake_db, lambda: ex.submit_raw(raw))
    problem = _problem(resp, 422)
    assert [e["field"] for e in problem["errors"]] == ["(body)"]


async def test_body_too_large_is_413_declared_or_streamed(
    intake: tuple[RunningExchange, Buyer], intake_db: str
) -> None:
    ex, _ = intake
    big = json.dumps(lead_body(source={"pad": "x" * (MAX_BODY + 10)})).encode()
    declared = await _no_new_rows(ex, intake_db, lambda: ex.submit_raw(big))
    _problem(declared, 413)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    streamed = await ex.client.post(
        "/v1/leads",
        content=chunks(),
        headers={"Authorization": f"Bearer {PUB_KEY}", "Content-Type": "application/json"},
    )
    assert "content-length" not in streamed.request.headers
    _problem(streamed, 413)


@pytest.mark.parametrize("idem", ["", "k" * 129])
async def test_bad_idempotency_key_is_400(
    intake: tuple[RunningExchange, Buyer], intake_db: str, idem: str
) -> None:
    ex, _ = intake
    resp = await _no_new_rows(
        ex, intake_db, lambda: ex.submit(lead_body(), **{"Idempotency-Key": idem})
    )
    problem = _problem(resp, 400)
    assert "Idempotency-Key" in problem["detail"]


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-key", f"Bearer {ADMIN}", f"Basic {PUB_KEY}", "Bearer", PUB_KEY],
)
async def test_missing_or_wrong_key_is_401(
    intake: tuple[RunningExchange, Buyer], intake_db: str, authorization: str | None
) -> None:
    ex, _ = intake
    headers = {} if authorization is None else {"Authorization": authorization}
    resp = await _no_new_rows(
        ex, intake_db, lambda: ex.client.post("/v1/leads", json=lead_body(), headers=headers)
    )
    _problem(resp, 401)
    assert resp.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "path",
    ["external_id", "contact__first_name", "contact__city", "profile__notes", "source__sub_id"],
)
async def test_nul_character_in_text_is_refused_or_stored_never_5xx(
    intake: tuple[RunningExchange, Buyer], intake_db: str, path: str
) -> None:
    """Postgres text and jsonb cannot hold U+0000; the lead must not be sold unrecorded."""
    ex, buyer = intake
    body = lead_body()
    _edit(**{path: "Ada\u0000Lovelace"})(body)
    posts = len(buyer.posts)
    resp = await ex.submit(body)
    delivered = len(buyer.posts) > posts
    assert resp.status_code in (200, 422), (resp.text, f"the buyer got the post: {delivered}")
    if resp.status_code == 422:
        assert path.replace("__", ".") in {e["field"] for e in resp.json()["errors"]}
        assert not delivered, "a refused lead must not reach a buyer"
        return
    answer = resp.json()
    sold = await count_rows(intake_db, "sales", "lead_id = $1", uuid.UUID(answer["lead_id"]))
    assert sold == (1 if answer["status"] == "sold" else 0)


async def _refused(
    intake: tuple[RunningExchange, Buyer], dsn: str, send: Callable[[], Any]
) -> list[dict[str, Any]]:
    """The errors of a 422 that stored nothing and posted nothing."""
    posts = len(intake[1].posts)
    resp = await _no_new_rows(intake[0], dsn, send)
    errors: list[dict[str, Any]] = _problem(resp, 422)["errors"]
    assert len(intake[1].posts) == posts, "a refused lead must not reach a buyer"
    return errors


async def test_nul_character_in_a_key_is_refused(
    intake: tuple[RunningExchange, Buyer], intake_db: str
) -> None:
    body = lead_body()
    body["source"]["sub\u0000id"] = "x"
    errors = await _refused(intake, intake_db, lambda: intake[0].submit(body))
    assert [e["field"].startswith("source.sub") for e in errors] == [True]


def _nested_raw(depth: int, leaf: bytes = b'"x"') -> bytes:
    """JSON text of ``leaf`` inside ``depth`` arrays (deeper than JSON encoders will write)."""
    return b"[" * depth + leaf + b"]" * depth


@pytest.mark.parametrize(
    ("field", "deep"),
    [
        ("consent", _nested_raw(300)),  # orjson could not re-encode it for the post
        ("source", _nested_raw(1000, b'"a\\u0000b"')),  # the NUL walk would recurse
        ("source", _nested_raw(9)),  # the first level too deep: 11 with body and source
    ],
)
async def test_deeply_nested_objects_are_refused(
    intake: tuple[RunningExchange, Buyer], intake_db: str, field: str, deep: bytes
) -> None:
    ex = intake[0]
    body = lead_body()
    body[field] = {"tcpa": True, "proof": "DEEP"} if field == "consent" else {"trail": "DEEP"}
    raw = orjson.dumps(body).replace(b'"DEEP"', deep)
    errors = await _refused(intake, intake_db, lambda: ex.submit_raw(raw))
    assert [e["field"] for e in errors] == [field]
    assert "levels deep" in errors[0]["message"]
    fine = orjson.dumps(body).replace(b'"DEEP"', _nested_raw(8))  # ten levels in all
    assert (await ex.submit_raw(fine)).status_code == 200


async def test_a_huge_number_is_refused_at_once(
    intake: tuple[RunningExchange, Buyer], intake_db: str
) -> None:
    """int("1e1000000") would hold the worker's event loop for about a minute."""
    body = lead_body()
    body["profile"]["age"] = "1e1000000"
    started = time.perf_counter()
    errors = await _refused(intake, intake_db, lambda: intake[0].submit(body))
    assert time.perf_counter() - started < 1.0
    assert [(e["field"], e["message"]) for e in errors] == [
        ("profile.age", "must be less than 10^15 in size")
    ]


# --- random bodies -------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_json = st.recursive(
    _scalars,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=10,
)
_PATHS = [
    "vertical",
    "external_id",
    "test",
    "contact",
    "contact__phone",
    "contact__email",
    "contact__state",
    "contact__zip",
    "contact__first_name",
    "profile",
    "profile__age",
    "profile__credit",
    "profile__vehicle_year",
    "profile__insured",
    "consent",
    "consent__tcpa",
    "source",
]


@st.composite
def _mutated_lead(draw: st.DrawFn) -> bytes:
    """A valid lead with a few parts replaced by random JSON (or removed)."""
    body = lead_body()
    for path in draw(st.lists(st.sampled_from(_PATHS), min_size=1, max_size=3, unique=True)):
        value = draw(_json | st.just(...))
        try:
            _edit(**{path: value})(body)
        except (KeyError, TypeError):
            continue  # a parent was replaced by a scalar earlier
    return json.dumps(body).encode()


_bodies = (
    _mutated_lead()
    | _json.map(lambda v: json.dumps(v).encode())
    | st.fixed_dictionaries({k: _json for k in ("vertical", "contact", "profile")}).map(
        lambda v: json.dumps(v).encode()
    )
    | st.binary(max_size=64)
)


@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=_bodies)
async def test_random_bodies_never_get_a_5xx(
    intake: tuple[RunningExchange, Buyer], raw: bytes
) -> None:
    ex, _ = intake
    resp = await ex.submit_raw(raw)
    assert resp.status_code < 500, (raw, resp.status_code, resp.text)
    if resp.status_code == 200:
        assert resp.json()["status"] in {"sold", "unsold", "duplicate", "rejected", "pending"}
    else:
        _problem(resp, 422)
