"""The one outbound HTTP client: every ping and post leaves through here.

aiohttp, because its client costs a fraction of the CPU per request that httpx does
(DESIGN §Measured here). Each request gets a total timeout; answers are read up to a
size limit so a buyer cannot make us buffer megabytes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum

import aiohttp

# Seconds an idle pooled connection to a buyer is kept for its next request.
KEEPALIVE_S = 30


class Failure(StrEnum):
    """How a request failed, which decides what a post failure means for the lead."""

    CONNECT = "connect"  # never reached the buyer: safe to pass the lead on
    TIMEOUT = "timeout"  # sent, no answer in time: the buyer may hold the lead
    DISCONNECT = "disconnect"  # sent, connection dropped before an answer
    OVERSIZE = "oversize"  # answered with more than we read
    PROTOCOL = "protocol"  # the answer was not valid HTTP


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    latency_ms: float


class TransportError(Exception):
    def __init__(self, failure: Failure, detail: str, latency_ms: float) -> None:
        super().__init__(f"{failure}: {detail}")
        self.failure = failure
        self.detail = detail
        self.latency_ms = latency_ms

    @property
    def maybe_delivered(self) -> bool:
        """True unless the request surely never reached the buyer (it may hold the lead).

        Only a failed connect proves that; a reset, a malformed or oversize answer and a
        timeout all come after the buyer could have read the whole request."""
        return self.failure is not Failure.CONNECT


class Transport:
    """A shared aiohttp session with connection limits; ``start`` inside the event loop."""

    def __init__(
        self,
        *,
        max_answer_bytes: int = 64 * 1024,
        limit: int = 2000,
        limit_per_host: int = 200,
        connect_timeout_s: float = 1.0,
    ) -> None:
        self._max_answer = max_answer_bytes
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._connect_timeout = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self._limit,
            limit_per_host=self._limit_per_host,
            ttl_dns_cache=300,
            keepalive_timeout=KEEPALIVE_S,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # buyers' cookies mean nothing to us
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
            headers={"User-Agent": "ping-post-exchange"},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _read_all(self, resp: aiohttp.ClientResponse, started: float) -> bytes:
        """The whole body up to the size limit. ``content.read(n)`` would return whatever
        has arrived, so a buyer trickling bytes must be read to its end (or the timeout)."""
        limit = self._max_answer
        declared = resp.content_length
        if declared is not None and declared > limit:
            raise _oversize(limit, started)
        if declared is not None and resp.headers.get("Content-Encoding", "identity") == "identity":
            # Not compressed, so the parser stops at the declared length and this cannot
            # buffer more; it is the common case and skips the chunk loop (µs per ping). A
            # compressed answer's length says nothing about what it inflates to: counted below.
            return await resp.content.read()
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise _oversize(limit, started)
            chunks.append(chunk)
        return b"".join(chunks)

    async def post(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> Reply:
        """POST ``body``; the whole exchange (connect, send, read) ends by ``timeout_s``."""
        assert self._session is not None, "Transport.start() was not called"
        started = time.perf_counter()
        timeout = aiohttp.ClientTimeout(
            total=timeout_s, sock_connect=min(timeout_s, self._connect_timeout)
        )
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                data = await self._read_all(resp, started)
                return Reply(resp.status, data, (time.perf_counter() - started) * 1000)
        except TransportError:
            raise
        except aiohttp.ConnectionTimeoutError as exc:
            raise _fail(Failure.CONNECT, exc, started) from None
        except TimeoutError as exc:
            raise _fail(Failure.TIMEOUT, exc, started) from None
        except aiohttp.ServerDisconnectedError as exc:
            raise _fail(Failure.DISCONNECT, exc, started) from None
        except aiohttp.ClientConnectorError as exc:
            raise _fail(Failure.CONNECT, exc, started) from None
        except aiohttp.ClientPayloadError as exc:
            raise _fail(Failure.DISCONNECT, exc, started) from None
        except (aiohttp.ClientResponseError, aiohttp.ClientOSError) as exc:
            raise _fail(Failure.PROTOCOL, exc, started) from None
        except aiohttp.ClientError as exc:
            raise _fail(Failure.PROTOCOL, exc, started) from None


def _oversize(limit: int, started: float) -> TransportError:
    elapsed = (time.perf_counter() - started) * 1000
    return TransportError(Failure.OVERSIZE, f"over {limit} bytes", elapsed)


def _fail(failure: Failure, exc: BaseException, started: float) -> TransportError:
    elapsed = (time.perf_counter() - started) * 1000
    # The message may quote what the buyer sent; NUL cannot be stored (see buyers.protocol).
    detail = type(exc).__name__ + (f": {exc}" if str(exc) else "")
    return TransportError(failure, detail.replace("\x00", ""), elapsed)
