"""Caps and budgets on a real Redis: exact at the boundary, across tasks and processes.

The concurrency test starts two OS processes, each with its own client, that import
``_contend`` from this module; they wait for a go signal in Redis so the three
contenders (two children and this process) really race each other.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis

from exchange.catalog.index import Target
from exchange.catalog.models import Buyer, Campaign, Caps, Schedule
from exchange.routing.caps import GRACE_S, CapStore, Reservation

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 3, 4, 10, 30, tzinfo=UTC)  # a Wednesday
PRICE = 300


def make_target(
    campaign_id: str = "c1",
    buyer_id: str = "acme",
    tz: str | None = None,
    price: str | None = None,
    limits: dict[str, int | str] | None = None,
    **caps: int | str,
) -> Target:
    campaign = Campaign(
        id=campaign_id,
        vertical="auto",
        price=price,
        schedule=Schedule(tz=tz) if tz else None,
        caps=Caps.model_validate({**caps, **(limits or {})}),
    )
    buyer = Buyer(
        id=buyer_id,
        secret="s" * 16,
        ping_url="http://127.0.0.1:9/ping",
        post_url="http://127.0.0.1:9/post",
        campaigns=(campaign,),
    )
    return Target(buyer, campaign)


@pytest.fixture
def store(redis_client: aioredis.Redis, redis_prefix: str) -> CapStore:
    return CapStore(redis_client, redis_prefix)


async def _reserve_n(store: CapStore, target: Target, n: int, price: int = PRICE) -> list[bool]:
    return [await store.reserve(target, price, NOW) is not None for _ in range(n)]


@pytest.mark.parametrize("cap", ["hourly", "daily", "weekly", "monthly"])
async def test_count_cap_is_exact_at_the_boundary(store: CapStore, cap: str) -> None:
    target = make_target(limits={cap: 5})
    for _ in range(5):
        assert await store.capped([target], NOW) == set()
        assert await store.reserve(target, PRICE, NOW) is not None
    assert await store.capped([target], NOW) == {"c1"}
    assert await store.reserve(target, PRICE, NOW) is None
    assert await store.usage(target, NOW) == {cap: (5, 5)}


@pytest.mark.parametrize("budget", ["daily_budget", "monthly_budget"])
async def test_budget_is_exact_at_the_boundary(store: CapStore, budget: str) -> None:
    target = make_target(limits={budget: "10.00"})
    assert await _reserve_n(store, target, 4) == [True, True, True, False]
    assert await store.usage(target, NOW) == {budget: (900, 1000)}
    # 100 cents left: a bidding campaign may still bid that low, so it is not pre-filtered...
    assert await store.capped([target], NOW) == set()
    assert await store.reserve(target, 100, NOW) is not None
    # ...and with nothing left it is.
    assert await store.capped([target], NOW) == {"c1"}


async def test_budget_below_the_fixed_price_is_capped(store: CapStore) -> None:
    target = make_target(price="3.00", daily_budget="10.00")
    assert await _reserve_n(store, target, 3) == [True, True, True]
    # 100 cents left cannot pay for one more lead at the campaign's 300.
    assert await store.capped([target], NOW) == {"c1"}


async def test_zero_cap_takes_nothing(store: CapStore) -> None:
    target = make_target(daily=0)
    assert await store.capped([target], NOW) == {"c1"}
    assert await store.reserve(target, PRICE, NOW) is None


async def test_all_or_nothing_across_caps(store: CapStore) -> None:
    target = make_target(hourly=2, daily=5, daily_budget="100.00")
    assert await _reserve_n(store, target, 3) == [True, True, False]
    # The refused third reservation took nothing from the daily cap or the budget.
    assert await store.usage(target, NOW) == {
        "hourly": (2, 2),
        "daily": (2, 5),
        "daily_budget": (600, 10_000),
    }


async def test_release_restores(store: CapStore) -> None:
    target = make_target(daily=2, daily_budget="100.00")
    first = await store.reserve(target, PRICE, NOW)
    assert first is not None
    assert await store.reserve(target, PRICE, NOW) is not None
    assert await store.reserve(target, PRICE, NOW) is None
    await store.release(first)
    assert await store.usage(target, NOW) == {"daily": (1, 2), "daily_budget": (300, 10_000)}
    assert await store.capped([target], NOW) == set()
    assert await store.reserve(target, PRICE, NOW) is not None


async def test_reservation_survives_a_json_round_trip(store: CapStore) -> None:
    # An unknown post stores its reservation as JSON; settling it as rejected releases that.
    target = make_target(daily=1, daily_budget="100.00")
    reservation = await store.reserve(target, PRICE, NOW)
    assert reservation is not None
    loaded = Reservation.from_json(orjson.loads(orjson.dumps(reservation.to_json())))
    assert loaded == reservation
    await store.release(loaded)
    assert await store.usage(target, NOW) == {"daily": (0, 1), "daily_budget": (0, 10_000)}


async def test_release_never_goes_below_zero(store: CapStore) -> None:
    target = make_target(daily=2, daily_budget="100.00")
    reservation = await store.reserve(target, PRICE, NOW)
    assert reservation is not None
    await store.release(reservation)
    await store.release(reservation)
    assert await store.usage(target, NOW) == {"daily": (0, 2), "daily_budget": (0, 10_000)}


async def test_release_of_expired_keys_creates_nothing(
    store: CapStore, redis_client: aioredis.Redis
) -> None:
    target = make_target(daily=2)
    reservation = await store.reserve(target, PRICE, NOW)
    assert reservation is not None
    await redis_client.delete(*reservation.keys)  # as if the period ended long ago
    await store.release(reservation)
    assert await redis_client.exists(*reservation.keys) == 0


async def test_release_after_rollover_undoes_the_old_hour(store: CapStore) -> None:
    target = make_target(hourly=1, daily=5)
    before = datetime(2026, 3, 4, 10, 59, 59, tzinfo=UTC)
    after = before + timedelta(seconds=1)
    old = await store.reserve(target, PRICE, before)
    assert old is not None
    assert await store.reserve(target, PRICE, before) is None
    assert await store.reserve(target, PRICE, after) is not None  # a new hour
    await store.release(old)
    assert await store.usage(target, before) == {"hourly": (0, 1), "daily": (1, 5)}
    assert await store.usage(target, after) == {"hourly": (1, 1), "daily": (1, 5)}


async def test_uncapped_campaigns_never_touch_redis() -> None:
    # Nothing listens on port 1: any Redis call would raise.
    dead = aioredis.Redis(host="127.0.0.1", port=1)
    store = CapStore(dead, "t:dead:")
    target = make_target()
    assert await store.capped([target, make_target("c2")], NOW) == set()
    reservation = await store.reserve(target, PRICE, NOW)
    assert reservation == Reservation("c1", PRICE)
    await store.release(reservation)
    assert await store.usage(target, NOW) == {}
    await dead.aclose()


async def test_capped_checks_many_campaigns_at_once(store: CapStore) -> None:
    full = make_target("full", buyer_id="b1", daily=1)
    open_ = make_target("open", buyer_id="b2", daily=1)
    broke = make_target("broke", buyer_id="b1", price="5.00", monthly_budget="5.00")
    free = make_target("free", buyer_id="b3")
    assert await store.reserve(full, PRICE, NOW) is not None
    assert await store.reserve(broke, 500, NOW) is not None
    assert await store.capped([full, open_, broke, free], NOW) == {"full", "broke"}


async def test_keys_carry_the_buyer_hash_tag_and_expire_after_the_period(
    store: CapStore, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    target = make_target(hourly=5, daily_budget="10.00")
    reservation = await store.reserve(target, PRICE, NOW)
    assert reservation is not None
    assert reservation.keys == (
        f"{redis_prefix}cap:{{acme}}:c1:hour:2026-03-04T10+0000",
        f"{redis_prefix}cap:{{acme}}:c1:spend:day:2026-03-04",
    )
    assert reservation.amounts == (1, PRICE)
    hour_ttl = await redis_client.ttl(reservation.keys[0])
    day_ttl = await redis_client.ttl(reservation.keys[1])
    assert 1800 + GRACE_S - 10 < hour_ttl <= 1800 + GRACE_S
    assert 48_600 + GRACE_S - 10 < day_ttl <= 48_600 + GRACE_S


async def test_campaign_local_days(store: CapStore) -> None:
    west = make_target("west", tz="America/Los_Angeles", daily=1)
    utc = make_target("utc", daily=1)
    late_la = datetime(2026, 3, 4, 7, 30, tzinfo=UTC)  # 23:30 on Mar 3 in Los Angeles
    early_la = datetime(2026, 3, 4, 8, 30, tzinfo=UTC)  # 00:30 on Mar 4 in Los Angeles
    next_utc = datetime(2026, 3, 5, 0, 30, tzinfo=UTC)  # 16:30 on Mar 4 in Los Angeles
    for target in (west, utc):
        assert await store.reserve(target, PRICE, late_la) is not None
    assert await store.reserve(west, PRICE, early_la) is not None
    assert await store.reserve(utc, PRICE, early_la) is None
    assert await store.capped([west, utc], early_la) == {"west", "utc"}
    assert await store.capped([west, utc], next_utc) == {"west"}
    assert await store.reserve(utc, PRICE, next_utc) is not None
    assert await store.reserve(west, PRICE, next_utc) is None


async def test_200_concurrent_tasks_get_exactly_the_cap(
    redis_url: str, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    target = make_target(daily=5, daily_budget="1000.00")
    # Two clients (two connection pools) stand in for two workers in one loop.
    other = aioredis.Redis.from_url(redis_url)
    stores = [CapStore(redis_client, redis_prefix), CapStore(other, redis_prefix)]
    try:
        results = await asyncio.gather(
            *(stores[i % 2].reserve(target, PRICE, NOW) for i in range(200))
        )
    finally:
        await other.aclose()
    assert sum(r is not None for r in results) == 5
    assert await stores[0].usage(target, NOW) == {"daily": (5, 5), "daily_budget": (1500, 100_000)}
    assert await stores[0].capped([target], NOW) == {"c1"}


def _contender() -> Target:
    return make_target("race", daily=5)


async def _contend(redis_url: str, prefix: str, calls: int) -> int:
    """A child process: its own client, waits for the go signal, reserves ``calls`` times."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        store = CapStore(client, prefix)
        await client.incr(prefix + "ready")
        while not await client.exists(prefix + "go"):
            await asyncio.sleep(0.002)
        results = await asyncio.gather(
            *(store.reserve(_contender(), PRICE, NOW) for _ in range(calls))
        )
        return sum(r is not None for r in results)
    finally:
        await client.aclose()


_CHILD = (
    "import asyncio, sys\n"
    "from tests.routing.test_caps import _contend\n"
    "print(asyncio.run(_contend(sys.argv[1], sys.argv[2], int(sys.argv[3]))))\n"
)


async def test_two_processes_and_tasks_get_exactly_the_cap(
    redis_url: str, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CHILD,
            redis_url,
            redis_prefix,
            "70",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    async with asyncio.timeout(30):
        while int(await redis_client.get(redis_prefix + "ready") or 0) < 2:
            await asyncio.sleep(0.01)
    store = CapStore(redis_client, redis_prefix)
    await redis_client.set(redis_prefix + "go", 1)
    mine = await asyncio.gather(*(store.reserve(_contender(), PRICE, NOW) for _ in range(60)))
    outputs = [await child.communicate() for child in children]
    assert [child.returncode for child in children] == [0, 0]
    theirs = [int(out.strip()) for out, _ in outputs]
    assert sum(r is not None for r in mine) + sum(theirs) == 5
    assert await store.usage(_contender(), NOW) == {"daily": (5, 5)}
    assert await store.capped([_contender()], NOW) == {"race"}


async def _insert_lead(pg: asyncpg.Connection, test: bool = False) -> uuid.UUID:
    lead_id = uuid.uuid4()
    await pg.execute(
        "INSERT INTO leads (lead_id, publisher_id, vertical, test, status, received_at)"
        " VALUES ($1, 'pub-1', 'auto', $2, 'sold', $3)",
        lead_id,
        test,
        NOW,
    )
    return lead_id


async def _sale(
    pg: asyncpg.Connection, campaign: str, cents: int, at: datetime, test: bool = False
) -> None:
    lead_id = await _insert_lead(pg, test)
    await pg.execute(
        "INSERT INTO sales (lead_id, publisher_id, vertical, buyer_id, campaign_id, price_cents,"
        " payout_cents, test, created_at) VALUES ($1, 'pub-1', 'auto', 'acme', $2, $3, 0, $4, $5)",
        lead_id,
        campaign,
        cents,
        test,
        at,
    )


async def _post(
    pg: asyncpg.Connection, campaign: str, cents: int, at: datetime, state: str, test: bool = False
) -> None:
    lead_id = await _insert_lead(pg, test)
    await pg.execute(
        "INSERT INTO posts (lead_id, buyer_id, campaign_id, price_cents, state, created_at)"
        " VALUES ($1, 'acme', $2, $3, $4, $5)",
        lead_id,
        campaign,
        cents,
        state,
        at,
    )


def _at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


async def test_rebuild_from_postgres(
    store: CapStore, pg: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    every = make_target(
        "c1", hourly=10, daily=10, weekly=10, monthly=10, daily_budget="100", monthly_budget="100"
    )
    other = make_target("c2", daily=2)
    west = make_target("west", tz="America/Los_Angeles", daily=5)
    await _sale(pg, "c1", 500, _at(4, 10, 10))  # this hour
    await _post(pg, "c1", 200, _at(4, 10, 20), "unknown")  # pending: holds its reservation
    await _sale(pg, "c1", 700, _at(4, 8))  # today
    await _sale(pg, "c1", 900, _at(2, 12))  # Monday: this ISO week
    await _sale(pg, "c1", 1100, _at(1, 12))  # Sunday: last week, this month
    await _sale(pg, "c1", 1300, datetime(2026, 2, 28, 12, tzinfo=UTC))  # last month
    await _sale(pg, "c1", 5000, _at(4, 10, 15), test=True)  # test sales move nothing
    await _post(pg, "c1", 5000, _at(4, 10, 25), "rejected")
    await _post(pg, "c1", 5000, _at(4, 10, 26), "unknown", test=True)
    await _sale(pg, "c2", 400, _at(4, 10, 5))
    await _sale(pg, "west", 100, _at(4, 7, 30))  # 23:30 yesterday in Los Angeles
    await _sale(pg, "west", 100, _at(4, 8, 30))  # 00:30 today in Los Angeles
    # A stale counter that the rebuild must overwrite.
    stale = await store.reserve(other, PRICE, NOW)
    assert stale is not None
    await redis_client.set(stale.keys[0], 99)

    assert await store.is_empty() is False
    written = await store.rebuild(pg, [every, other, west, make_target("free")], NOW)
    assert written == 8
    assert await store.usage(every, NOW) == {
        "hourly": (2, 10),
        "daily": (3, 10),
        "weekly": (4, 10),
        "monthly": (5, 10),
        "daily_budget": (1400, 10_000),
        "monthly_budget": (3400, 10_000),
    }
    assert await store.usage(other, NOW) == {"daily": (1, 2)}
    assert await store.usage(west, NOW) == {"daily": (1, 5)}
    # Reservations go on from the rebuilt counters.
    assert await store.reserve(other, PRICE, NOW) is not None
    assert await store.reserve(other, PRICE, NOW) is None


async def test_rebuild_matches_live_counters(
    redis_client: aioredis.Redis, redis_prefix: str, pg: asyncpg.Connection
) -> None:
    target = make_target("c1", hourly=50, daily=50, monthly_budget="500.00")
    live = CapStore(redis_client, redis_prefix + "live:")
    for minute in range(0, 60, 7):
        at = _at(4, 10, minute)
        assert await live.reserve(target, 250 + minute, at) is not None
        await _sale(pg, "c1", 250 + minute, at)
    rebuilt = CapStore(redis_client, redis_prefix + "rebuilt:")
    assert await rebuilt.is_empty()
    assert await rebuilt.rebuild(pg, [target], NOW) == 3
    assert not await rebuilt.is_empty()
    assert await rebuilt.usage(target, NOW) == await live.usage(target, NOW)


async def test_rebuild_with_no_rows_writes_zeros(store: CapStore, pg: asyncpg.Connection) -> None:
    target = make_target(daily=3, daily_budget="9.00")
    assert await store.is_empty()
    assert await store.rebuild(pg, [target], NOW) == 2
    assert await store.usage(target, NOW) == {"daily": (0, 3), "daily_budget": (0, 900)}
    assert not await store.is_empty()


def test_prefix_with_braces_is_refused(redis_client: aioredis.Redis) -> None:
    with pytest.raises(ValueError):
        CapStore(redis_client, "t:{x}:")
