"""Redis calls on the lead path, sent straight down one of redis-py's pooled connections.

redis-py's client wraps every command in a retry loop, event dispatch and OpenTelemetry
recorders, its ``Script`` re-imports and re-checks for a pipeline on every call, and with
a socket timeout set every send runs in a task of its own (``asyncio.wait_for``) and every
read in a timeout context. Here one ``asyncio.timeout`` covers the whole call instead, so
the lane's client is made without a socket timeout (``lane_client``); a lead makes three
to five of these calls. The pool, its connections and reply parsing stay redis-py's.

A connection must never go back to the pool with an unread reply: the next call would
read it as its own (a claim answered with another lead's reply). redis-py 8's pool does
not check for that under RESP3, so this module relies on two things: a send or read that
fails or is cancelled disconnects its connection (redis-py does that for any exception),
and an error *reply* is raised only after every reply of the call was read. Before each
call it also drops a connection the server closed while idle (the pool no longer does
that either), so a Redis restart does not fail one lead per pooled connection.

Usage::

    redis = lane_client("redis://127.0.0.1:6379/0")
    claim = Lua(redis, "return redis.call('GET', KEYS[1])")
    value = await claim(keys=["k"], args=[])
    values = await pipeline(redis, [("MGET", "a", "b"), ("MGET", "c")])
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

Arg = str | bytes | int
TIMEOUT_S = 5.0  # a whole call, connecting included (redis-py's socket timeout is 5 s)


def lane_client(url: str, max_connections: int = 512) -> Redis:
    """A client whose connections carry no socket timeout: the lane times each call."""
    return Redis.from_url(url, max_connections=max_connections, socket_timeout=None)


class Lua:
    """A Lua script run by ``EVALSHA``, loaded on the first ``NOSCRIPT`` (a new server)."""

    def __init__(self, redis: Redis, source: str) -> None:
        self._redis = redis
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        try:
            return await execute(self._redis, "EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await execute(self._redis, "SCRIPT", "LOAD", self.source)
            return await execute(self._redis, "EVALSHA", self.sha, len(keys), *keys, *args)


async def execute(redis: Redis, *command: Arg) -> Any:
    """One command's reply; an error reply raises ``ResponseError`` (the connection stays
    clean: the whole reply was read)."""
    replies = await _call(redis, [command], 1)
    return replies[0]


async def pipeline(redis: Redis, commands: Sequence[Sequence[Arg]]) -> list[Any]:
    """Several commands in one round trip, not a transaction."""
    return await _call(redis, commands, len(commands)) if commands else []


async def _call(redis: Redis, commands: Sequence[Sequence[Arg]], count: int) -> list[Any]:
    pool = redis.connection_pool
    conn: AbstractConnection | None = None
    try:
        async with asyncio.timeout(TIMEOUT_S):
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
            await _fresh(conn)
            packed = conn.pack_commands(commands) if count > 1 else conn.pack_command(*commands[0])
            await conn.send_packed_command(packed, check_health=False)
            return await _replies(conn, count)
    except TimeoutError:
        # Cancelled mid-call, the connection disconnected itself (see the module's notes).
        raise RedisTimeout(f"Redis did not answer within {TIMEOUT_S} s") from None
    finally:
        # Outside the deadline: a connection taken is always given back.
        if conn is not None:
            await pool.release(conn)


async def _fresh(conn: AbstractConnection) -> None:
    """Drop a pooled connection the server closed while it sat idle (a Redis restart, its
    ``timeout`` setting, ``CLIENT KILL``), or that holds bytes no call asked for: the send
    below then opens a new one. A check of the buffered stream, no system call."""
    if not conn.is_connected:
        return
    try:
        stale = await conn.can_read()
    except (RedisConnectionError, OSError):
        stale = True
    if stale:
        await conn.disconnect()


async def _replies(conn: AbstractConnection, count: int) -> list[Any]:
    """Every reply is read before the first error reply is raised: the connection goes
    back to the pool clean."""
    replies: list[Any] = []
    error: ResponseError | None = None
    for _ in range(count):
        try:
            replies.append(await conn.read_response())
        except ResponseError as exc:
            error = error or exc
            replies.append(exc)
    if error is not None:
        raise error
    return replies
