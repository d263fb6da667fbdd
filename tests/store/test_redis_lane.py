"""The lead path's Redis calls: replies, error replies, timeouts and cancellation leave
the pooled connection clean (one connection per pool here, so a stale reply would show)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

from exchange.store import redis_lane
from exchange.store.redis_lane import Lua, execute, lane_client, pipeline


@pytest.fixture
async def one_conn(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[aioredis.Redis]:
    """A lane client with a single connection; ``redis_client`` deletes the test's keys."""
    client = lane_client(redis_url, max_connections=1)
    yield client
    await client.aclose()


def test_the_lane_client_leaves_timing_to_the_lane(redis_url: str) -> None:
    client = lane_client(redis_url)
    assert client.connection_pool.connection_kwargs["socket_timeout"] is None


async def test_a_script_new_to_the_server_is_loaded_and_run(
    one_conn: aioredis.Redis, redis_prefix: str
) -> None:
    # A source no server has seen (its own comment), so the first EVALSHA is NOSCRIPT.
    source = f"-- {uuid.uuid4().hex}\nredis.call('SET', KEYS[1], ARGV[1]) return ARGV[1] .. '!'"
    script = Lua(one_conn, source)
    assert await execute(one_conn, "SCRIPT", "EXISTS", script.sha) == [0]
    assert await script(keys=[redis_prefix + "a"], args=["x"]) == b"x!"
    assert await execute(one_conn, "SCRIPT", "EXISTS", script.sha) == [1]
    assert await script(keys=[redis_prefix + "a"], args=["y"]) == b"y!"
    assert await execute(one_conn, "GET", redis_prefix + "a") == b"y"


async def test_an_error_reply_raises_and_the_connection_stays_clean(
    one_conn: aioredis.Redis, redis_prefix: str
) -> None:
    failing = Lua(one_conn, "return redis.error_reply('NOPE ' .. ARGV[1])")
    with pytest.raises(ResponseError, match="NOPE 7"):
        await failing(keys=[], args=["7"])
    assert await execute(one_conn, "ECHO", "next") == b"next"


async def test_a_pipeline_reads_every_reply_before_raising_the_first_error(
    one_conn: aioredis.Redis, redis_prefix: str
) -> None:
    key = redis_prefix + "n"
    assert await pipeline(one_conn, [("SET", key, "1"), ("INCR", key), ("MGET", key, "nope")]) == [
        b"OK",  # raw replies: the lane applies none of redis-py's response callbacks
        2,
        [b"2", None],
    ]
    await execute(one_conn, "SET", redis_prefix + "s", "text")
    with pytest.raises(ResponseError, match="not an integer"):
        await pipeline(one_conn, [("INCR", redis_prefix + "s"), ("INCR", key), ("INCR", key)])
    # The two INCRs after the error ran, and their replies did not stay on the connection.
    assert await execute(one_conn, "GET", key) == b"4"
    assert await pipeline(one_conn, []) == []


async def test_a_cancelled_call_leaves_no_reply_behind(
    one_conn: aioredis.Redis, redis_prefix: str
) -> None:
    # BLPOP answers nil after 0.3 s; cancelled at 50 ms, that nil must not be the next reply.
    blocked = asyncio.ensure_future(execute(one_conn, "BLPOP", redis_prefix + "empty", "0.3"))
    await asyncio.sleep(0.05)
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    assert await execute(one_conn, "ECHO", "after") == b"after"
    await asyncio.sleep(0.4)
    assert await execute(one_conn, "ECHO", "later") == b"later"


async def test_a_server_that_never_answers_is_a_redis_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # takes the command, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setattr(redis_lane, "TIMEOUT_S", 0.2)
    client = lane_client(f"redis://127.0.0.1:{port}/0")
    try:
        started = time.monotonic()
        with pytest.raises(RedisTimeout) as caught:
            await execute(client, "GET", "k")
        assert 0.2 <= time.monotonic() - started < 1.0
        assert isinstance(caught.value, RedisError)  # what the lead route turns into a 503
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


async def test_a_connection_the_server_closed_while_idle_is_replaced(
    one_conn: aioredis.Redis, redis_client: aioredis.Redis
) -> None:
    # What a Redis restart does to every idle pooled connection, here to the only one.
    own_id = await execute(one_conn, "CLIENT", "ID")
    assert await execute(redis_client, "CLIENT", "KILL", "ID", own_id) == 1
    await asyncio.sleep(0.05)  # the close reaches our side
    assert await execute(one_conn, "ECHO", "again") == b"again"
    assert await execute(one_conn, "CLIENT", "ID") != own_id
