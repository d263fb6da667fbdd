"""The outbound client against real sockets: what each way a buyer can fail turns into.

``maybe_delivered`` decides whether an exclusive lead may go to the next buyer, so every
failure after the request left is checked for it, not just the failure's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from exchange.transport import Failure, Reply, Transport, TransportError

LIMIT = 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _echo(request: web.Request) -> web.StreamResponse:
    return web.Response(body=await request.read(), headers={"X-Seen": request.headers["X-Test"]})


async def _status(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.Response(status=int(request.query["code"]), body=b"nope", headers={"Location": "/"})


async def _hang(request: web.Request) -> web.StreamResponse:
    await request.read()
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def _stream(request: web.Request) -> web.StreamResponse:
    """``pieces`` parts of ``size`` bytes, ``gap`` seconds apart, after headers sent at once."""
    await request.read()
    pieces, size = int(request.query["pieces"]), int(request.query["size"])
    gap = float(request.query["gap"])
    resp = web.StreamResponse()
    await resp.prepare(request)
    with contextlib.suppress(ConnectionError):
        for i in range(pieces):
            await resp.write(b"x" * size if size else str(i).encode())
            await asyncio.sleep(gap)
        await resp.write_eof()
    return resp


async def _sized(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.Response(body=b"y" * int(request.query["n"]))


async def _split_json(request: web.Request) -> web.StreamResponse:
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    await resp.write(b'{"bid": true, ')
    await asyncio.sleep(0.05)
    await resp.write(b'"price": 12.5}')
    await resp.write_eof()
    return resp


async def _gzip_bomb(request: web.Request) -> web.StreamResponse:
    """A small gzip body (with its Content-Length) that inflates to ``n`` bytes."""
    await request.read()
    packed = gzip.compress(b"z" * int(request.query["n"]))
    return web.Response(body=packed, headers={"Content-Encoding": "gzip"})


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    routes: dict[str, Handler] = {
        "/echo": _echo,
        "/status": _status,
        "/hang": _hang,
        "/stream": _stream,
        "/sized": _sized,
        "/split": _split_json,
        "/gzip": _gzip_bomb,
    }
    for path, handler in routes.items():
        app.router.add_post(path, handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    srv = site._server
    assert isinstance(srv, asyncio.Server)
    yield f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    await runner.cleanup()


@pytest.fixture
async def transport() -> AsyncIterator[Transport]:
    client = Transport(max_answer_bytes=LIMIT)
    await client.start()
    yield client
    await client.close()


async def _fail(
    transport: Transport, url: str, timeout_s: float = 1.0
) -> tuple[TransportError, float]:
    started = time.perf_counter()
    with pytest.raises(TransportError) as caught:
        await transport.post(url, b'{"ping": true}', {}, timeout_s)
    return caught.value, (time.perf_counter() - started) * 1000


async def test_answer_comes_back_with_status_body_and_latency(
    transport: Transport, server: str
) -> None:
    reply = await transport.post(server + "/echo", b'{"ping": 1}', {"X-Test": "yes"}, 1.0)
    assert isinstance(reply, Reply)
    assert (reply.status, reply.body) == (200, b'{"ping": 1}')
    assert 0 < reply.latency_ms < 1000


@pytest.mark.parametrize("code", [500, 404, 302])
async def test_non_2xx_is_an_answer_and_redirects_are_not_followed(
    transport: Transport, server: str, code: int
) -> None:
    reply = await transport.post(f"{server}/status?code={code}", b"{}", {}, 1.0)
    assert (reply.status, reply.body) == (code, b"nope")


async def test_refused_connection_is_connect_and_never_delivered(transport: Transport) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: the port refuses
        error, elapsed = await _fail(transport, f"http://127.0.0.1:{port}/ping")
    assert error.failure is Failure.CONNECT
    assert error.maybe_delivered is False
    assert elapsed < 500


async def test_hanging_server_times_out_within_the_timeout(
    transport: Transport, server: str
) -> None:
    error, elapsed = await _fail(transport, server + "/hang", timeout_s=0.2)
    assert error.failure is Failure.TIMEOUT
    assert error.maybe_delivered is True
    assert 190 <= elapsed < 200 + 100, elapsed


async def test_trickling_server_times_out_within_the_timeout(
    transport: Transport, server: str
) -> None:
    """Headers at once, then one byte every 50 ms: per-read timeouts would never fire."""
    error, elapsed = await _fail(transport, server + "/stream?pieces=100&size=0&gap=0.05", 0.2)
    assert error.failure is Failure.TIMEOUT
    assert elapsed < 200 + 100, elapsed


async def test_answer_sent_in_two_parts_is_read_whole(transport: Transport, server: str) -> None:
    reply = await transport.post(server + "/split", b"{}", {}, 1.0)
    assert reply.body == b'{"bid": true, "price": 12.5}'


@pytest.mark.parametrize(("size", "ok"), [(LIMIT, True), (LIMIT + 1, False), (50 * LIMIT, False)])
async def test_answer_over_the_limit_is_oversize(
    transport: Transport, server: str, size: int, ok: bool
) -> None:
    url = f"{server}/sized?n={size}"
    if ok:
        assert (await transport.post(url, b"{}", {}, 1.0)).body == b"y" * size
        return
    error, _ = await _fail(transport, url)
    assert error.failure is Failure.OVERSIZE


async def test_compressed_answer_is_limited_by_what_it_inflates_to(
    transport: Transport, server: str
) -> None:
    small = await transport.post(f"{server}/gzip?n={LIMIT}", b"{}", {}, 1.0)
    assert small.body == b"z" * LIMIT
    error, _ = await _fail(transport, f"{server}/gzip?n={200 * LIMIT}")
    assert error.failure is Failure.OVERSIZE


async def test_streamed_answer_over_the_limit_is_oversize(
    transport: Transport, server: str
) -> None:
    error, _ = await _fail(transport, f"{server}/stream?pieces=8&size={LIMIT // 2}&gap=0.01")
    assert error.failure is Failure.OVERSIZE


@contextlib.asynccontextmanager
async def _raw_server(end: Callable[[asyncio.StreamWriter], None]) -> AsyncIterator[str]:
    """A bare TCP server that reads one whole request, then ends the connection with ``end``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        end(writer)

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/post"
    finally:
        srv.close()
        await srv.wait_closed()


def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_server_closing_after_reading_is_disconnect(transport: Transport) -> None:
    async with _raw_server(_close) as url:
        error, elapsed = await _fail(transport, url)
    assert error.failure is Failure.DISCONNECT
    assert error.maybe_delivered is True
    assert elapsed < 500


async def test_server_resetting_after_reading_may_hold_the_request(transport: Transport) -> None:
    """The buyer read the whole post before the reset: it may hold the lead."""
    async with _raw_server(_reset) as url:
        error, _ = await _fail(transport, url)
    assert error.maybe_delivered is True, error.failure
