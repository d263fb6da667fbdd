"""uvloop with a listener that drains the accept queue on every wake.

libuv (under uvloop) accepts ONE connection per event-loop iteration. On a busy worker an
iteration takes 10-40 ms, so new connections are accepted at 25-100 per second while the
rest wait in the kernel's accept queue, unseen by admission control: measured here at 2x
the sustained rate, 480 connections (each holding a lead) sat in that queue. This listener
accepts up to :data:`MAX_ACCEPTS_PER_WAKE` connections each time the socket is readable,
so an overloaded worker sees the excess at once and answers it with 503. (That took the
answered p99 at 2x from 6.5 s to 3.0 s; capping leads in flight at 64 took it to 0.5 s.)

The cap per wake keeps several workers sharing one socket fair: a saturated worker takes a
batch, an idle one (waking more often) takes the next.

Differences from asyncio's server that uvicorn does not rely on: ``wait_closed`` does not
wait for client connections, and ``close_clients``/``abort_clients`` (3.13) are absent.

Usage (uvicorn's custom loop factory)::

    uvicorn.run(app, loop="exchange.api.accept:new_event_loop")
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

import uvloop

log = logging.getLogger(__name__)

MAX_ACCEPTS_PER_WAKE = 64
_PAUSE_S = 0.1  # after an accept error such as EMFILE
# accept(2): errors of one pending connection, not of the listener; take the next one.
_RETRY_ERRNOS = frozenset(
    {
        errno.ENETDOWN,
        errno.EPROTO,
        errno.ENOPROTOOPT,
        errno.EHOSTDOWN,
        errno.ENONET,
        errno.EHOSTUNREACH,
        errno.EOPNOTSUPP,
        errno.ENETUNREACH,
    }
)

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class Listener(asyncio.AbstractServer):
    """Listening sockets whose readiness callback accepts a batch of connections."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol_factory: ProtocolFactory,
        sockets: Iterable[socket.socket],
        backlog: int,
    ) -> None:
        self._loop = loop
        self._factory = protocol_factory
        self._sockets = list(sockets)
        self._backlog = backlog
        self._serving = False
        self._closed = loop.create_future()
        self._handshakes: set[asyncio.Task[Any]] = set()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        if self._serving or self._closed.done():
            return
        self._serving = True
        for sock in self._sockets:
            sock.setblocking(False)
            sock.listen(self._backlog)
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    async def serve_forever(self) -> None:
        await self.start_serving()
        await asyncio.shield(self._closed)

    def close(self) -> None:
        """Stop listening; connections already accepted carry on (as asyncio's server)."""
        if self._closed.done():
            return
        for sock in self._sockets:
            if self._serving:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._serving = False
        self._closed.set_result(None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(MAX_ACCEPTS_PER_WAKE):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued: nothing to serve
            except OSError as exc:
                if exc.errno in _RETRY_ERRNOS:
                    continue
                # Out of descriptors or buffers, mostly: retrying at once would spin on the
                # same error, so stop listening for a moment (queued clients just wait).
                if self._serving:
                    log.warning("accept failed, pausing the listener: %s", exc)
                    self._loop.remove_reader(sock.fileno())
                    self._loop.call_later(_PAUSE_S, self._resume, sock)
                return
            try:
                conn.setblocking(False)
                if conn.family in (socket.AF_INET, socket.AF_INET6):
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                conn.close()  # reset while queued
                continue
            task = self._loop.create_task(self._attach(conn))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    def _resume(self, sock: socket.socket) -> None:
        if self._serving and sock.fileno() != -1:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    async def _attach(self, conn: socket.socket) -> None:
        if self._closed.done():
            # Accepted just before close(): the server is shutting its connections down.
            conn.close()
            return
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except OSError:
            conn.close()  # the peer reset before the transport existed
        except Exception:
            conn.close()
            log.exception("could not attach an accepted connection")


def bind(host: str | None, port: int) -> list[socket.socket]:
    """Bound sockets for every address of ``host``, as uvloop binds them (not yet listening).

    An address family the kernel lacks (IPv6 disabled) is skipped; a bind error names the
    address. ``getaddrinfo`` blocks, which is fine once at start-up.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:
                continue  # e.g. EAFNOSUPPORT: this family is not available here
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                detail = f"error while binding to {address}: {exc.strerror}"
                raise OSError(exc.errno, detail) from None
    except OSError:
        for sock in bound:
            sock.close()
        raise
    if not bound:
        raise OSError(f"no address of {host!r} could be bound")
    return bound


class Loop(uvloop.Loop):
    """uvloop whose plain TCP servers use :class:`Listener`.

    TLS, unix sockets and any option this override does not name stay uvloop's own.
    """

    async def create_server(  # type: ignore[override]
        self,
        protocol_factory: ProtocolFactory,
        host: str | None = None,
        port: int | None = None,
        *,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        start_serving: bool = True,
        **kwargs: Any,
    ) -> asyncio.AbstractServer:
        plain = ssl is None and not kwargs and (sock is not None or isinstance(host, str | None))
        if not plain or (sock is not None and sock.family == socket.AF_UNIX):
            # uvloop's stubs overload host/port against sock; the arguments pass through.
            create: Any = super().create_server
            return await create(  # type: ignore[no-any-return]
                protocol_factory,
                host,
                port,
                sock=sock,
                backlog=backlog,
                ssl=ssl,
                start_serving=start_serving,
                **kwargs,
            )
        sockets = [sock] if sock is not None else bind(host, port or 0)
        server = Listener(self, protocol_factory, sockets, backlog)
        if start_serving:
            await server.start_serving()
        return server


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvicorn's custom loop factory (``loop="exchange.api.accept:new_event_loop"``)."""
    return Loop()
